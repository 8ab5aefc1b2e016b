//! `mesh-node status` and `mesh-node peers`.

use atmosphere::{PeerInfo, Status};

use crate::{client::Client, output};

/// Prints the daemon's status.
pub async fn status(client: &Client, json: bool) -> anyhow::Result<()> {
    let status: Status = client.get(&["status"]).await?;
    if json {
        println!("{}", output::pretty_json(&status));
    } else {
        println!("{}", output::status_text(&status));
    }
    Ok(())
}

/// Prints known and connected peers.
pub async fn peers(client: &Client, json: bool) -> anyhow::Result<()> {
    let peers: Vec<PeerInfo> = client.get(&["peers"]).await?;
    if json {
        println!("{}", output::pretty_json(&peers));
    } else {
        println!("{}", output::peers_table(&peers));
    }
    Ok(())
}
