//! `mesh-node mesh create|invite|join|list|forget`.

use atmosphere::{Invite, MeshInfo};

use crate::{
    cli::{InviteArgs, MeshCommand},
    client::Client,
    output,
    proto::{CreateMeshRequest, InviteRequest, JoinRequest},
};

/// Runs one `mesh` subcommand.
pub async fn run(client: &Client, command: MeshCommand) -> anyhow::Result<()> {
    match command {
        MeshCommand::Create { name } => create(client, name).await,
        MeshCommand::Invite(args) => invite(client, args).await,
        MeshCommand::Join { uri } => join(client, uri).await,
        MeshCommand::List(flag) => list(client, flag.json).await,
        MeshCommand::Forget { mesh } => forget(client, &mesh).await,
    }
}

/// Creates a mesh; stdout gets its id only.
async fn create(client: &Client, name: String) -> anyhow::Result<()> {
    let mesh: MeshInfo = client
        .post(&["meshes"], &CreateMeshRequest { name }, None)
        .await?;
    eprintln!("created mesh {}", mesh.name);
    println!("{}", mesh.id);
    Ok(())
}

/// Creates an invite; the URI is the last stdout line (after the QR code).
async fn invite(client: &Client, args: InviteArgs) -> anyhow::Result<()> {
    let request = InviteRequest {
        mesh: args.mesh,
        uses: Some(args.uses),
        ttl_secs: Some(args.ttl.as_secs().max(1)),
        permissions: None,
    };
    let invite: Invite = client.post(&["invites"], &request, None).await?;
    eprintln!(
        "invite to mesh {} ({}): {} use{}, valid for {}",
        invite.mesh_name,
        invite.mesh_id,
        invite.uses,
        if invite.uses == 1 { "" } else { "s" },
        humantime::format_duration(args.ttl)
    );
    if args.qr {
        match output::qr_code(&invite.uri) {
            Ok(qr) => println!("{qr}"),
            Err(error) => eprintln!("warning: cannot draw a QR code for this URI: {error}"),
        }
    }
    println!("{}", invite.uri);
    Ok(())
}

/// Joins a mesh with an invite URI.
async fn join(client: &Client, uri: String) -> anyhow::Result<()> {
    let mesh: MeshInfo = client.post(&["join"], &JoinRequest { uri }, None).await?;
    println!("joined mesh {} ({})", mesh.name, mesh.id);
    Ok(())
}

/// Lists our meshes.
async fn list(client: &Client, json: bool) -> anyhow::Result<()> {
    let meshes: Vec<MeshInfo> = client.get(&["meshes"]).await?;
    if json {
        println!("{}", output::pretty_json(&meshes));
    } else {
        println!("{}", output::meshes_table(&meshes));
    }
    Ok(())
}

/// Leaves a mesh.
async fn forget(client: &Client, mesh: &str) -> anyhow::Result<()> {
    client.delete(&["meshes", mesh]).await?;
    println!("forgot mesh {mesh}");
    Ok(())
}
