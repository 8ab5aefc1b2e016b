//! `mesh-node status` and `mesh-node peers [--watch]`.

use anyhow::Context;
use atmosphere::{PeerInfo, Status};

use crate::{
    cli::PeersArgs,
    client::{Client, PeerWatch},
    output,
    proto::WatchFrame,
};

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

/// Prints known and connected peers, or watches them with `--watch`.
pub async fn peers(client: &Client, args: PeersArgs) -> anyhow::Result<()> {
    if args.watch {
        return watch(client.watch_peers().await?, args.json).await;
    }
    let peers: Vec<PeerInfo> = client.get(&["peers"]).await?;
    if args.json {
        println!("{}", output::pretty_json(&peers));
    } else {
        println!("{}", output::peers_table(&peers, output::now_ms()));
    }
    Ok(())
}

/// Prints the peers, then one line per change, until Ctrl-C (exit 0) or the
/// daemon closes the socket (an error). With `json`, every frame is printed
/// as one JSON line.
async fn watch(mut watch: PeerWatch, json: bool) -> anyhow::Result<()> {
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut started = false;
    loop {
        let next = tokio::select! {
            next = watch.next() => next?,
            signal = &mut interrupted => {
                signal.context("cannot listen for Ctrl-C")?;
                break;
            }
        };
        let Some((frame, text)) = next else {
            anyhow::bail!("the daemon closed the peer watch (did it shut down?)");
        };
        if !started {
            started = true;
            eprintln!("watching peers (Ctrl-C to stop)");
        }
        if json {
            println!("{text}");
            continue;
        }
        match frame {
            WatchFrame::Peers { peers } => {
                println!("{}", output::peers_table(&peers, output::now_ms()));
            }
            WatchFrame::Event(event) => println!("{}", output::peer_event_line(&event)),
            WatchFrame::Lagged { missed } => {
                eprintln!("warning: {missed} changes were missed; the peers now:");
            }
        }
    }
    watch.close().await;
    Ok(())
}
