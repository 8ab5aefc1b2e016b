//! Command-line syntax (clap derive). Parsing only; the commands live in
//! [`crate::commands`] and [`crate::daemon`].

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use libp2p::Multiaddr;

/// Default address of the local API.
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:11452";

/// Atmosphere mesh node: a daemon (`run`) and a CLI that talks to it over
/// the local API.
#[derive(Debug, Parser)]
#[command(name = "mesh-node", version, about, propagate_version = true)]
pub struct Cli {
    /// Options shared by every command.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every command.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Data directory (identity, meshes, API token) [default: ~/.atmosphere]
    #[arg(long, global = true, env = "ATMOSPHERE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the daemon's local API (HTTP + WebSocket)
    #[arg(
        long,
        global = true,
        env = "ATMOSPHERE_API",
        value_name = "ADDR",
        default_value = DEFAULT_API_ADDR
    )]
    pub api: SocketAddr,
}

impl GlobalArgs {
    /// The data directory: the flag, else `ATMOSPHERE_DATA_DIR`, else `~/.atmosphere`.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(atmosphere::default_data_dir)
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: join the network and serve the local API until SIGINT/SIGTERM
    Run(RunArgs),
    /// Commands that talk to a running daemon.
    #[command(flatten)]
    Client(ClientCommand),
}

/// Commands that talk to a running daemon over the local API.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Create, share, join and leave meshes
    #[command(subcommand)]
    Mesh(MeshCommand),
    /// List known members and connected peers with how each is reachable
    Peers(PeersArgs),
    /// Publish a message
    Pub(PubArgs),
    /// Subscribe to a topic pattern and print `TOPIC PAYLOAD` lines as messages arrive
    /// (backslashes and line breaks in payloads are escaped)
    Sub(SubArgs),
    /// Call an RPC and print its result as JSON
    ///
    /// Exit codes: 2 invalid input, 3 daemon unreachable, 4 no provider, 5 timeout,
    /// 6 denied, 7 remote handler error, 8 transport failure.
    Call(CallArgs),
    /// Serve an RPC URI from this terminal (or a shell command) until interrupted
    Reply(ReplyArgs),
    /// Show the daemon's status
    Status(JsonFlag),
    /// List devices nearby (advertising over Bluetooth LE, or found on the LAN
    /// by mDNS) that `pair` can pair with
    Nearby(JsonFlag),
    /// Pair with a device nearby: both screens show a 6-digit code to compare
    ///
    /// `pair DEVICE` asks DEVICE (an id from `nearby`, a peer id, or a
    /// multiaddr with /p2p/PEER_ID) to pair and, once confirmed on both
    /// sides, joins its mesh. `pair --accept` (on the mesh's founder) turns
    /// pairing mode on and answers requests until Ctrl-C (or the first
    /// finished session with --once); pairing mode is turned off on exit.
    /// `pair` alone lists the devices nearby.
    ///
    /// Exit codes: 0 paired, 1 failed or rejected, 5 timed out, 6 not the
    /// mesh's founder (others as for every command).
    Pair(PairArgs),
}

/// `mesh-node run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Listen address (repeatable; replaces the configured ones) [default: TCP and QUIC on port 11451]
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<Multiaddr>,
    /// Node name shown to peers [default: the host name]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Disable mDNS discovery on the LAN
    #[arg(long)]
    pub no_mdns: bool,
    /// Address (with /p2p/PEER_ID) to dial at start (repeatable; added to the configured ones)
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<Multiaddr>,
    /// Run a relay server for the mesh's members (on a publicly reachable node)
    #[arg(long)]
    pub relay_server: bool,
    /// With --relay-server: relay for peers that are not members too
    #[arg(long, requires = "relay_server")]
    pub relay_open: bool,
    /// Relay (with /p2p/PEER_ID) to reserve a slot on (repeatable; added to the configured ones)
    #[arg(long = "relay", value_name = "MULTIADDR")]
    pub relays: Vec<Multiaddr>,
    /// Ask the home router for a port mapping over UPnP, so that peers can dial this node directly
    #[arg(long)]
    pub upnp: bool,
    /// Configuration file [default: DATA_DIR/atmosphere.toml if it exists]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Use this Bluetooth adapter (e.g. hci0) through BlueZ: advertise, scan,
    /// and connect to members and pair over Bluetooth LE (needs a binary
    /// built with `--features bluez`)
    #[arg(long, value_name = "ADAPTER")]
    pub ble: Option<String>,
}

/// `mesh-node mesh …`.
#[derive(Debug, Subcommand)]
pub enum MeshCommand {
    /// Create a mesh founded by this node; prints its id
    Create {
        /// The mesh's name
        name: String,
    },
    /// Create an invite; the last line printed is the URI to hand to the joiner
    Invite(InviteArgs),
    /// Create an invite and print it as a token document: the token, the
    /// mesh, the endpoints by group (local, public, relay), this node's
    /// network (local and public IP, NAT) and the URI
    Token(TokenArgs),
    /// Join a mesh with an invite URI; says which endpoint and path it went through
    Join(JoinArgs),
    /// List the meshes this node belongs to, with their state, when a member
    /// was last seen and whether auto-reconnect is on
    List(JsonFlag),
    /// Show one mesh and the saved endpoints of its members
    Show(ShowArgs),
    /// Turn reconnection to a mesh's members on or off
    ///
    /// Off: connections that exist stay, lost ones are not re-dialled, and a
    /// restart does not dial the mesh's members.
    AutoReconnect(AutoReconnectArgs),
    /// Leave a mesh and forget its members
    Forget {
        /// Mesh id or name
        mesh: String,
    },
}

/// `mesh-node mesh invite`.
#[derive(Debug, Clone, Args)]
pub struct InviteArgs {
    /// Mesh id or name [default: the node's only mesh]
    pub mesh: Option<String>,
    /// How many nodes may join with it
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub uses: u32,
    /// How long it is valid (10m, 1h, 2d)
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Also render the URI as a QR code in the terminal
    #[arg(long)]
    pub qr: bool,
}

/// `mesh-node mesh token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// What the invite allows.
    #[command(flatten)]
    pub invite: InviteArgs,
    /// Print the token document as JSON (with --qr the QR code goes to stderr)
    #[arg(long)]
    pub json: bool,
}

/// `mesh-node mesh join`.
#[derive(Debug, Clone, Args)]
pub struct JoinArgs {
    /// The atmosphere://join?… URI
    pub uri: String,
    /// Print the join report as JSON
    #[arg(long)]
    pub json: bool,
}

/// `mesh-node mesh show`.
#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    /// Mesh id or name
    pub mesh: String,
    /// Print the mesh as JSON
    #[arg(long)]
    pub json: bool,
}

/// `mesh-node mesh auto-reconnect`.
#[derive(Debug, Clone, Args)]
pub struct AutoReconnectArgs {
    /// Mesh id or name
    pub mesh: String,
    /// `on` or `off`
    #[arg(value_enum)]
    pub setting: OnOff,
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// Turn it on.
    On,
    /// Turn it off.
    Off,
}

impl OnOff {
    /// `true` for `on`.
    pub fn enabled(self) -> bool {
        self == Self::On
    }
}

/// A `--json` flag.
#[derive(Debug, Clone, Copy, Args)]
pub struct JsonFlag {
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

/// `mesh-node peers`.
#[derive(Debug, Clone, Copy, Args)]
pub struct PeersArgs {
    /// Print JSON instead of text (with --watch: one JSON object per line)
    #[arg(long)]
    pub json: bool,
    /// Keep running: print the peers, then one line per status change, until Ctrl-C
    #[arg(long)]
    pub watch: bool,
}

/// `mesh-node pair`.
#[derive(Debug, Clone, Args)]
pub struct PairArgs {
    /// The device to pair with: an id from `nearby` (12 hex digits), a peer
    /// id, or a multiaddr with /p2p/PEER_ID; omitted: list the devices nearby
    #[arg(conflicts_with = "accept")]
    pub device: Option<String>,
    /// Founder side: turn pairing mode on and answer pairing requests
    #[arg(long)]
    pub accept: bool,
    /// With --accept: the mesh to pair devices into (id or name) [default: the node's only mesh]
    #[arg(
        long,
        value_name = "MESH",
        requires = "accept",
        conflicts_with = "device"
    )]
    pub mesh: Option<String>,
    /// With --accept: stop after the first session that completes or fails
    #[arg(long, requires = "accept", conflicts_with = "device")]
    pub once: bool,
    /// Confirm the code without asking (for scripts)
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Print the final session as JSON (with --accept: one JSON line per finished session)
    #[arg(long)]
    pub json: bool,
    /// How long to wait in all [default: 150s for a request; no limit with --accept]
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
}

/// `mesh-node pub`.
#[derive(Debug, Clone, Args)]
pub struct PubArgs {
    /// Topic (dot-separated, e.g. home.kitchen.temp)
    pub topic: String,
    /// Payload (sent as its UTF-8 bytes)
    pub payload: String,
}

/// `mesh-node sub`.
#[derive(Debug, Clone, Args)]
pub struct SubArgs {
    /// Topic pattern: `*` matches one segment, `**` zero or more
    pub pattern: String,
    /// Exit after this many messages
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Print each message as a JSON object
    #[arg(long)]
    pub json: bool,
}

/// `mesh-node call`.
#[derive(Debug, Clone, Args)]
pub struct CallArgs {
    /// RPC URI (e.g. node.echo)
    pub uri: String,
    /// Arguments as JSON (sent as these exact UTF-8 bytes) [default: null]
    pub args: Option<String>,
    /// Call this peer only
    #[arg(long, value_name = "PEER_ID")]
    pub peer: Option<String>,
    /// How long to wait for the answer (500ms, 5s, 1m)
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// `mesh-node reply`.
#[derive(Debug, Clone, Args)]
pub struct ReplyArgs {
    /// RPC URI to serve
    pub uri: String,
    /// Shell command run for each call (`sh -c CMD`): args on stdin, result
    /// from stdout (JSON if it parses, else a string); without it, echo the args
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// Calls handled at once, at most
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    /// How long one call may take (the command is killed after it)
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Parses `10m`, `5s`, `1h 30m`, … and rejects zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration like 5s, 10m or 1h: {e}"))?;
    if duration.is_zero() {
        return Err("the duration must be positive".to_owned());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn mesh_subcommands_parse() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|cli| cli.command);
        let parsed = parse(&["mesh-node", "mesh", "auto-reconnect", "home", "off"]);
        assert!(
            matches!(
                parsed,
                Ok(Command::Client(ClientCommand::Mesh(MeshCommand::AutoReconnect(
                    AutoReconnectArgs { ref mesh, setting: OnOff::Off }
                )))) if mesh == "home"
            ),
            "{parsed:?}"
        );
        assert!(parse(&["mesh-node", "mesh", "auto-reconnect", "home", "maybe"]).is_err());
        let parsed = parse(&[
            "mesh-node",
            "mesh",
            "token",
            "home",
            "--uses",
            "3",
            "--ttl",
            "1h",
            "--json",
            "--qr",
        ]);
        assert!(
            matches!(
                &parsed,
                Ok(Command::Client(ClientCommand::Mesh(MeshCommand::Token(TokenArgs {
                    invite: InviteArgs { mesh: Some(mesh), uses: 3, qr: true, ttl },
                    json: true,
                })))) if mesh == "home" && ttl.as_secs() == 3600
            ),
            "{parsed:?}"
        );
        let parsed = parse(&["mesh-node", "mesh", "join", "atmosphere://join?x", "--json"]);
        assert!(
            matches!(
                &parsed,
                Ok(Command::Client(ClientCommand::Mesh(MeshCommand::Join(
                    JoinArgs { json: true, .. }
                ))))
            ),
            "{parsed:?}"
        );
        let parsed = parse(&["mesh-node", "pair", "--accept", "--mesh", "home", "--once"]);
        assert!(
            matches!(
                &parsed,
                Ok(Command::Client(ClientCommand::Pair(PairArgs {
                    device: None,
                    accept: true,
                    mesh: Some(mesh),
                    once: true,
                    yes: false,
                    ..
                }))) if mesh == "home"
            ),
            "{parsed:?}"
        );
        let parsed = parse(&[
            "mesh-node",
            "pair",
            "0a1b2c3d4e5f",
            "--yes",
            "--timeout",
            "1m",
        ]);
        assert!(
            matches!(
                &parsed,
                Ok(Command::Client(ClientCommand::Pair(PairArgs {
                    device: Some(device),
                    accept: false,
                    yes: true,
                    timeout: Some(timeout),
                    ..
                }))) if device == "0a1b2c3d4e5f" && timeout.as_secs() == 60
            ),
            "{parsed:?}"
        );
        assert!(parse(&["mesh-node", "pair", "0a1b2c3d4e5f", "--accept"]).is_err());
        assert!(parse(&["mesh-node", "pair", "0a1b2c3d4e5f", "--once"]).is_err());
        assert!(parse(&["mesh-node", "pair", "0a1b2c3d4e5f", "--mesh", "home"]).is_err());
        assert!(parse(&["mesh-node", "pair", "--mesh", "home"]).is_err());
        assert!(parse(&["mesh-node", "pair", "--once"]).is_err());
        let parsed = parse(&["mesh-node", "run", "--ble", "hci0"]);
        assert!(
            matches!(&parsed, Ok(Command::Run(RunArgs { ble: Some(adapter), .. })) if adapter == "hci0"),
            "{parsed:?}"
        );
        let parsed = parse(&["mesh-node", "run", "--upnp"]);
        assert!(
            matches!(&parsed, Ok(Command::Run(RunArgs { upnp: true, .. }))),
            "{parsed:?}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
