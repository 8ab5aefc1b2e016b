//! `mesh-node mesh create|invite|token|join|list|show|auto-reconnect|forget`.

use anyhow::Context;
use atmosphere::{Invite, JoinReport, MeshInfo, Status};

use crate::{
    cli::{AutoReconnectArgs, InviteArgs, JoinArgs, MeshCommand, ShowArgs, TokenArgs},
    client::Client,
    output,
    proto::{AutoReconnectRequest, CreateMeshRequest, InviteRequest, InviteToken, JoinRequest},
};

/// Runs one `mesh` subcommand.
pub async fn run(client: &Client, command: MeshCommand) -> anyhow::Result<()> {
    match command {
        MeshCommand::Create { name } => create(client, name).await,
        MeshCommand::Invite(args) => invite(client, args).await,
        MeshCommand::Token(args) => token(client, args).await,
        MeshCommand::Join(args) => join(client, args).await,
        MeshCommand::List(flag) => list(client, flag.json).await,
        MeshCommand::Show(args) => show(client, args).await,
        MeshCommand::AutoReconnect(args) => auto_reconnect(client, args).await,
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

/// `POST /v1/invites` with the command line's options.
async fn create_invite(client: &Client, args: &InviteArgs) -> anyhow::Result<Invite> {
    let request = InviteRequest {
        mesh: args.mesh.clone(),
        uses: Some(args.uses),
        ttl_secs: Some(args.ttl.as_secs().max(1)),
        permissions: None,
    };
    Ok(client.post(&["invites"], &request, None).await?)
}

/// `invite to mesh NAME (ID): N uses, valid for D` on stderr.
fn describe_invite(invite: &Invite, args: &InviteArgs) {
    eprintln!(
        "invite to mesh {} ({}): {} use{}, valid for {}",
        invite.mesh_name,
        invite.mesh_id,
        invite.uses,
        if invite.uses == 1 { "" } else { "s" },
        humantime::format_duration(args.ttl)
    );
}

/// The URI as a QR code, or a warning on stderr when it cannot be drawn.
fn qr(uri: &str) -> Option<String> {
    match output::qr_code(uri) {
        Ok(qr) => Some(qr),
        Err(error) => {
            eprintln!("warning: cannot draw a QR code for this URI: {error}");
            None
        }
    }
}

/// Creates an invite; the URI is the last stdout line (after the QR code).
async fn invite(client: &Client, args: InviteArgs) -> anyhow::Result<()> {
    let invite = create_invite(client, &args).await?;
    describe_invite(&invite, &args);
    if args.qr {
        if let Some(qr) = qr(&invite.uri) {
            println!("{qr}");
        }
    }
    println!("{}", invite.uri);
    Ok(())
}

/// Creates an invite and prints it as a token document, with this node's
/// network as `status` reports it.
async fn token(client: &Client, args: TokenArgs) -> anyhow::Result<()> {
    let invite = create_invite(client, &args.invite).await?;
    let status: Status = client.get(&["status"]).await?;
    let token = InviteToken::new(&invite, &status.network)
        .context("the daemon made an invite URI it cannot read back")?;
    describe_invite(&invite, &args.invite);
    let qr = if args.invite.qr { qr(&token.uri) } else { None };
    if args.json {
        println!("{}", output::pretty_json(&token));
        // Keep stdout valid JSON.
        if let Some(qr) = qr {
            eprintln!("{qr}");
        }
    } else {
        println!("{}", output::token_text(&token, output::now_secs()));
        if let Some(qr) = qr {
            println!("{qr}");
        }
    }
    Ok(())
}

/// Joins a mesh with an invite URI and says how.
async fn join(client: &Client, args: JoinArgs) -> anyhow::Result<()> {
    let report: JoinReport = client
        .post(&["join"], &JoinRequest { uri: args.uri }, None)
        .await?;
    if args.json {
        println!("{}", output::pretty_json(&report));
    } else {
        println!("{}", output::join_summary(&report));
    }
    Ok(())
}

/// Lists our meshes.
async fn list(client: &Client, json: bool) -> anyhow::Result<()> {
    let meshes: Vec<MeshInfo> = client.get(&["meshes"]).await?;
    if json {
        println!("{}", output::pretty_json(&meshes));
    } else {
        println!("{}", output::meshes_table(&meshes, output::now_secs()));
    }
    Ok(())
}

/// Shows one mesh with its saved endpoints.
async fn show(client: &Client, args: ShowArgs) -> anyhow::Result<()> {
    let mesh: MeshInfo = client.get(&["meshes", &args.mesh]).await?;
    if args.json {
        println!("{}", output::pretty_json(&mesh));
    } else {
        println!("{}", output::mesh_text(&mesh, output::now_secs()));
    }
    Ok(())
}

/// Turns auto-reconnect on or off.
async fn auto_reconnect(client: &Client, args: AutoReconnectArgs) -> anyhow::Result<()> {
    let enabled = args.setting.enabled();
    let mesh: MeshInfo = client
        .put(
            &["meshes", &args.mesh, "auto-reconnect"],
            &AutoReconnectRequest { enabled },
        )
        .await?;
    if enabled {
        println!(
            "auto-reconnect on for mesh {} ({}): lost members are re-dialled",
            mesh.name, mesh.id
        );
    } else {
        println!(
            "auto-reconnect off for mesh {} ({}): open connections stay, lost ones are not re-dialled",
            mesh.name, mesh.id
        );
    }
    Ok(())
}

/// Leaves a mesh.
async fn forget(client: &Client, mesh: &str) -> anyhow::Result<()> {
    client.delete(&["meshes", mesh]).await?;
    println!("forgot mesh {mesh}");
    Ok(())
}
