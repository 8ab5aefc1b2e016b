//! `mesh-node run`: build the configuration, start the node, serve the local
//! API, stop cleanly on SIGINT/SIGTERM.

use std::{path::Path, time::Duration};

use anyhow::Context;
use tokio::{net::TcpListener, sync::watch};

use atmosphere::{transports::ble::BoxedLink, Config, Node, NodeBuilder};

use crate::{
    api::{self, ApiState},
    cli::{GlobalArgs, RunArgs},
    exit::UsageError,
    token::{load_or_create_token, token_path},
};

/// Name of the optional configuration file in the data directory.
pub const CONFIG_FILE: &str = "atmosphere.toml";

/// How long open API connections get to finish at shutdown.
const API_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the first listen address before printing.
const LISTEN_WAIT: Duration = Duration::from_secs(3);

/// Runs the daemon until a termination signal.
pub async fn run(global: &GlobalArgs, args: RunArgs) -> anyhow::Result<()> {
    let config = build_config(global, &args)?;
    let ble_adapter = ble_adapter(&args)?;
    let api_addr = global.api;
    if !api_addr.ip().is_loopback() {
        tracing::warn!(%api_addr, "the local API listens on a non-loopback address");
    }
    let listener = TcpListener::bind(api_addr).await.with_context(|| {
        format!("cannot serve the local API on {api_addr} (is another mesh-node running? pick another with --api)")
    })?;

    let mut builder = NodeBuilder::new(config.clone());
    if let Some(adapter) = ble_adapter {
        builder = builder.ble(ble_link(adapter).await?);
        tracing::info!(%adapter, "Bluetooth LE on");
    }
    let node = builder.build().await.context("cannot start the node")?;
    let token = load_or_create_token(&config.data_dir)?;
    if config.data_dir != global.data_dir() {
        tracing::warn!(
            data_dir = %config.data_dir.display(),
            "the config file moved the data dir; CLI commands need --data-dir to find the API token"
        );
    }
    print_banner(&node, &config.data_dir, api_addr).await;

    let (stop, stopping) = watch::channel(false);
    let state = ApiState::new(node.clone(), token, config.max_payload, stopping.clone());
    let mut server_stopping = stopping.clone();
    let mut server = tokio::spawn(async move {
        axum::serve(listener, api::router(state))
            .with_graceful_shutdown(async move {
                let _ = server_stopping.wait_for(|s| *s).await;
            })
            .await
    });

    let outcome = tokio::select! {
        signal = termination_signal() => {
            let name = signal.context("cannot install signal handlers")?;
            tracing::info!(signal = name, "shutting down");
            Ok(())
        }
        served = &mut server => match served {
            Ok(Ok(())) => Err(anyhow::anyhow!("the local API stopped unexpectedly")),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("the local API failed")),
            Err(e) => Err(anyhow::Error::new(e).context("the local API task failed")),
        },
    };

    let _ = stop.send(true);
    if tokio::time::timeout(API_DRAIN_TIMEOUT, &mut server)
        .await
        .is_err()
    {
        tracing::warn!("API connections did not close in time; dropping them");
        server.abort();
    }
    node.shutdown().await;
    tracing::info!("stopped");
    outcome
}

/// The Bluetooth adapter of `--ble`, checked: an error right away when the
/// binary has no BlueZ support.
fn ble_adapter(args: &RunArgs) -> Result<Option<&str>, UsageError> {
    let Some(adapter) = args.ble.as_deref() else {
        return Ok(None);
    };
    let adapter = adapter.trim();
    if adapter.is_empty() {
        return Err(UsageError(
            "--ble needs a Bluetooth adapter name, e.g. hci0 (`bluetoothctl list` shows them)"
                .to_owned(),
        ));
    }
    if !cfg!(feature = "bluez") {
        return Err(UsageError(format!(
            "--ble {adapter}: this mesh-node was built without Bluetooth support (the `bluez` \
             feature); rebuild it with `cargo build --release -p atmosphere-examples --features \
             bluez` (needs libdbus-1-dev) and run bluetoothd"
        )));
    }
    Ok(Some(adapter))
}

/// The BlueZ radio on `adapter`.
#[cfg(feature = "bluez")]
async fn ble_link(adapter: &str) -> anyhow::Result<BoxedLink> {
    use atmosphere::transports::ble::bluez::BluezLink;
    let link = BluezLink::new(Some(adapter)).await.with_context(|| {
        format!("cannot use the Bluetooth adapter {adapter} (is bluetoothd running? `bluetoothctl list` shows the adapters)")
    })?;
    Ok(BoxedLink::new(link))
}

/// Without the `bluez` feature there is no radio ([`ble_adapter`] says so first).
#[cfg(not(feature = "bluez"))]
async fn ble_link(adapter: &str) -> anyhow::Result<BoxedLink> {
    Err(UsageError(format!(
        "--ble {adapter}: this mesh-node was built without the `bluez` feature"
    ))
    .into())
}

/// Defaults, then the config file, then environment variables, then flags.
pub fn build_config(global: &GlobalArgs, args: &RunArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(file) => Config::from_toml_file(file)?,
        None => {
            let file = global.data_dir().join(CONFIG_FILE);
            if file.is_file() {
                Config::from_toml_file(&file)?
            } else {
                Config::default()
            }
        }
    };
    config.apply_env()?;
    if let Some(dir) = &global.data_dir {
        config.data_dir = dir.clone();
    }
    if !args.listen.is_empty() {
        config.listen = args.listen.clone();
    }
    if let Some(name) = &args.name {
        config.name = Some(name.clone());
    }
    if args.no_mdns {
        config.mdns = false;
    }
    for addr in &args.bootstrap {
        if !config.bootstrap.contains(addr) {
            config.bootstrap.push(addr.clone());
        }
    }
    if args.relay_server {
        config.relay_server = true;
    }
    if args.relay_open {
        config.relay_open = true;
    }
    for addr in &args.relays {
        if !config.relays.contains(addr) {
            config.relays.push(addr.clone());
        }
    }
    if args.upnp {
        config.upnp = true;
    }
    config.validate()?;
    Ok(config)
}

/// Prints who we are and where to reach us (stdout), once listening.
async fn print_banner(node: &Node, data_dir: &Path, api_addr: std::net::SocketAddr) {
    let deadline = tokio::time::Instant::now() + LISTEN_WAIT;
    let mut addrs = Vec::new();
    while tokio::time::Instant::now() < deadline {
        match node.listen_addrs().await {
            Ok(found) if !found.is_empty() => {
                addrs = found;
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(error) => {
                tracing::warn!(%error, "cannot read listen addresses");
                break;
            }
        }
    }
    println!("peer id: {}", node.peer_id());
    println!("name: {}", node.name());
    if addrs.is_empty() {
        println!("listening on: (no address yet)");
    }
    for addr in addrs {
        println!("listening on: {addr}");
    }
    println!(
        "local API: http://{api_addr} (token: {})",
        token_path(data_dir).display()
    );
}

/// Resolves with the signal's name on SIGINT or SIGTERM.
async fn termination_signal() -> std::io::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = interrupt.recv() => Ok("SIGINT"),
            _ = terminate.recv() => Ok("SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await?;
        Ok("Ctrl-C")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Option<(GlobalArgs, RunArgs)> {
        let cli = Cli::try_parse_from(args).ok()?;
        match cli.command {
            Command::Run(run) => Some((cli.global, run)),
            _ => None,
        }
    }

    #[test]
    fn flags_override_the_config_file() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "name = \"from-file\"\nmax_payload = 2048\n",
        )?;
        let data_dir = dir.path().to_string_lossy().into_owned();
        let (global, run) = parse(&[
            "mesh-node",
            "--data-dir",
            &data_dir,
            "run",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .ok_or_else(|| anyhow::anyhow!("parse failed"))?;
        let config = build_config(&global, &run)?;
        assert_eq!(config.name.as_deref(), Some("from-file"));
        assert_eq!(config.max_payload, 2048);
        assert!(!config.mdns);
        assert_eq!(config.listen.len(), 1);
        assert_eq!(config.data_dir, dir.path());
        assert!(!config.upnp, "UPnP is off unless asked for");
        Ok(())
    }

    #[test]
    fn ble_needs_an_adapter_and_the_bluez_feature() {
        let ble = |args: &[&str]| {
            parse(args).map(|(_, run)| ble_adapter(&run).map(|a| a.map(str::to_owned)))
        };
        assert!(matches!(ble(&["mesh-node", "run"]), Some(Ok(None))));
        assert!(matches!(
            ble(&["mesh-node", "run", "--ble", " "]),
            Some(Err(_))
        ));
        let chosen = ble(&["mesh-node", "run", "--ble", "hci0"]);
        if cfg!(feature = "bluez") {
            assert!(
                matches!(&chosen, Some(Ok(Some(a))) if a == "hci0"),
                "{chosen:?}"
            );
        } else {
            let message = match chosen {
                Some(Err(e)) => e.to_string(),
                other => panic!("{other:?}"),
            };
            assert!(message.contains("--features bluez"), "{message}");
        }
    }

    #[test]
    fn upnp_comes_from_the_flag_or_the_file() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let data_dir = dir.path().to_string_lossy().into_owned();
        let (global, run) = parse(&["mesh-node", "--data-dir", &data_dir, "run", "--upnp"])
            .ok_or_else(|| anyhow::anyhow!("parse failed"))?;
        assert!(build_config(&global, &run)?.upnp);
        std::fs::write(dir.path().join(CONFIG_FILE), "upnp = true\n")?;
        let (global, run) = parse(&["mesh-node", "--data-dir", &data_dir, "run"])
            .ok_or_else(|| anyhow::anyhow!("parse failed"))?;
        assert!(build_config(&global, &run)?.upnp);
        Ok(())
    }
}
