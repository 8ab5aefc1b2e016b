//! Node configuration: documented defaults, a TOML file, environment variables.
//!
//! Precedence, lowest first: [`Config::default`], a TOML file
//! ([`Config::from_toml_file`]), environment variables
//! ([`Config::apply_env`]), then whatever the embedding program sets (the
//! `mesh-node` CLI applies its flags last).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use atmosphere_behaviours::train::{PathClass, Policy};
use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

/// What kind of device a node runs on; it chooses the path policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceProfile {
    /// Plugged in: LAN > direct > BLE > relayed.
    #[default]
    MainsPowered,
    /// On a battery: BLE first, then LAN, direct, relayed.
    LowPower,
}

/// Default TCP and UDP port of the mesh.
pub const DEFAULT_PORT: u16 = 11451;

/// Errors loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for a [`Config`].
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file (or `<string>`).
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// An environment variable has an invalid value.
    #[error("invalid value for {var}: {message}")]
    Env {
        /// The variable.
        var: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A value is out of its allowed range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// How a node runs. Every field has a documented default; see `docs/operations.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Human-readable node name shown to peers. Default: `None` (the host
    /// name, else `node-` and the end of the peer id).
    pub name: Option<String>,
    /// Where the identity, meshes and peers are stored. Default `~/.atmosphere`
    /// (env `ATMOSPHERE_DATA_DIR`).
    pub data_dir: PathBuf,
    /// Listen addresses. Default: TCP and QUIC on port 11451, all IPv4 interfaces.
    pub listen: Vec<Multiaddr>,
    /// Zero-configuration discovery on the LAN. Default `true`.
    pub mdns: bool,
    /// Addresses (with `/p2p/…`) dialed at start. Default none.
    pub bootstrap: Vec<Multiaddr>,
    /// Largest pub/sub or RPC payload, in bytes. Default 4 MiB.
    pub max_payload: usize,
    /// Messages buffered per subscription before new ones are dropped
    /// (at-most-once delivery). Default 1024.
    pub subscription_buffer: usize,
    /// Unacknowledged frames held per peer (the outbox) before senders wait,
    /// or, while the peer is unreachable, before new frames are refused.
    /// Default 8192.
    pub outbox_frames: usize,
    /// Unacknowledged payload bytes held per peer. Default 32 MiB.
    pub outbox_bytes: usize,
    /// Seconds an unreachable member's outbox is kept before its frames are
    /// dropped and its pending calls fail. Default 120.
    pub outbox_linger_secs: u64,
    /// Lower bound of the acknowledgement timeout, in ms: a path is given up
    /// when an app frame stays unacknowledged for max(4 × SRTT, this).
    /// Default 250.
    pub ack_timeout_floor_ms: u64,
    /// Device profile choosing the path policy: `mains-powered` (LAN >
    /// direct > BLE > relayed, the default) or `low-power` (BLE first).
    pub device_profile: DeviceProfile,
    /// Explicit path order overriding the profile's, e.g. `["lan", "ble",
    /// "direct", "relayed"]`. Default: none.
    pub path_order: Option<Vec<String>>,
    /// Heartbeat interval on an idle LAN path, in seconds. Default 15.
    pub heartbeat_lan_secs: u64,
    /// Heartbeat interval on a direct path over the internet, seconds. Default 15.
    pub heartbeat_direct_secs: u64,
    /// Heartbeat interval on a BLE path, seconds. Default 30.
    pub heartbeat_ble_secs: u64,
    /// Heartbeat interval on a relayed path, seconds. Default 60.
    pub heartbeat_relay_secs: u64,
    /// Heartbeat interval on each peer's active path, in ms, so that an idle
    /// peer's loss is seen within `heartbeat_max_missed` of these. Default 750 (3 missed: under 3 s).
    pub heartbeat_active_ms: u64,
    /// Heartbeats missed in a row before a path is declared dead. Default 3.
    pub heartbeat_max_missed: u32,
    /// Least wait for a heartbeat answer on a BLE path, in ms. Default 4000:
    /// a BLE link busy with a bulk transfer holds up to a yamux window
    /// (256 KiB, about 2 s at 1 Mbit/s) ahead of a beat, and a lost BLE
    /// link is reported by the radio's supervision timeout anyway.
    pub heartbeat_ble_wait_ms: u64,
    /// Seconds between probes of a LAN address that could become a better
    /// path or the standby. Default 10 (×6 while the member has both an
    /// active path and a standby; ×2 per failed probe, up to ×4).
    pub probe_lan_secs: u64,
    /// Seconds between probes of a public (direct) address. Default 10.
    pub probe_direct_secs: u64,
    /// Seconds between probes of a BLE address. Default 5.
    pub probe_ble_secs: u64,
    /// Seconds between probes of a relayed address. Default 30.
    pub probe_relay_secs: u64,
    /// RPC calls awaiting an answer, at most. Default 10,000.
    pub max_pending_calls: usize,
    /// RPC handlers running at once for remote callers, at most. Default 1024.
    pub max_concurrent_handlers: usize,
    /// Seconds between network-state announcements. Default 30.
    pub state_interval_secs: u64,
    /// First reconnection delay after a member's last path is gone, seconds;
    /// it doubles per failed attempt up to `reconnect_max_secs`. Default 1.
    pub reconnect_min_secs: u64,
    /// Longest reconnection delay, seconds. Default 60.
    pub reconnect_max_secs: u64,
    /// Seconds a connection with no protocol keeping it alive stays open. Default 60.
    pub idle_timeout_secs: u64,
    /// Run a circuit relay v2 server for the mesh (a node with a public
    /// address). Default `false`.
    pub relay_server: bool,
    /// Let peers that are not mesh members reserve and open circuits on our
    /// relay too. Default `false` (members only).
    pub relay_open: bool,
    /// Reservations our relay holds at once. Default 128.
    pub relay_max_reservations: usize,
    /// Circuits our relay carries at once. Default 256.
    pub relay_max_circuits: usize,
    /// Relays (multiaddrs ending in `/p2p/<peer id>`) to reserve a slot on,
    /// so that members can reach us through them. Default none: members that
    /// run a relay server are used automatically.
    pub relays: Vec<Multiaddr>,
    /// Ask the home router for a port mapping over UPnP IGD, so that peers
    /// can dial us directly. Default `false` (it opens a port on the router).
    pub upnp: bool,
}

/// The user's home-based default data directory, `~/.atmosphere`.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".atmosphere")
}

/// The default listen addresses: TCP and QUIC on [`DEFAULT_PORT`].
pub fn default_listen() -> Vec<Multiaddr> {
    listen_on_port(DEFAULT_PORT)
}

/// TCP and QUIC listen addresses on all IPv4 interfaces at `port` (0: any free port).
pub fn listen_on_port(port: u16) -> Vec<Multiaddr> {
    [
        format!("/ip4/0.0.0.0/tcp/{port}"),
        format!("/ip4/0.0.0.0/udp/{port}/quic-v1"),
    ]
    .iter()
    .filter_map(|a| a.parse().ok())
    .collect()
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: None,
            data_dir: default_data_dir(),
            listen: default_listen(),
            mdns: true,
            bootstrap: Vec::new(),
            max_payload: 4 * 1024 * 1024,
            subscription_buffer: 1024,
            outbox_frames: 8192,
            outbox_bytes: 32 * 1024 * 1024,
            outbox_linger_secs: 120,
            ack_timeout_floor_ms: 250,
            device_profile: DeviceProfile::MainsPowered,
            path_order: None,
            heartbeat_lan_secs: 15,
            heartbeat_direct_secs: 15,
            heartbeat_ble_secs: 30,
            heartbeat_relay_secs: 60,
            heartbeat_active_ms: 750,
            heartbeat_max_missed: 3,
            heartbeat_ble_wait_ms: 4000,
            probe_lan_secs: 10,
            probe_direct_secs: 10,
            probe_ble_secs: 5,
            probe_relay_secs: 30,
            max_pending_calls: 10_000,
            max_concurrent_handlers: 1024,
            state_interval_secs: 30,
            reconnect_min_secs: 1,
            reconnect_max_secs: 60,
            idle_timeout_secs: 60,
            relay_server: false,
            relay_open: false,
            upnp: false,
            relay_max_reservations: 128,
            relay_max_circuits: 256,
            relays: Vec::new(),
        }
    }
}

impl Config {
    /// A configuration for tests and embedded use: data in `data_dir`, loopback
    /// TCP on a free port, no mDNS.
    pub fn ephemeral(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen: ["/ip4/127.0.0.1/tcp/0"]
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
            mdns: false,
            ..Self::default()
        }
    }

    /// Parses a TOML document; missing keys keep their defaults.
    pub fn from_toml_str(toml: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(toml).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<string>"),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a TOML file; missing keys keep their defaults.
    pub fn from_toml_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Applies `ATMOSPHERE_DATA_DIR`, `ATMOSPHERE_NAME`, `ATMOSPHERE_LISTEN`
    /// (comma-separated multiaddrs), `ATMOSPHERE_BOOTSTRAP` (likewise) and
    /// `ATMOSPHERE_MDNS` (`true`/`false`).
    pub fn apply_env(&mut self) -> Result<(), ConfigError> {
        self.apply_vars(|name| std::env::var(name).ok())
    }

    fn apply_vars(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(dir) = get("ATMOSPHERE_DATA_DIR").filter(|d| !d.is_empty()) {
            self.data_dir = PathBuf::from(dir);
        }
        if let Some(name) = get("ATMOSPHERE_NAME").filter(|n| !n.is_empty()) {
            self.name = Some(name);
        }
        if let Some(list) = get("ATMOSPHERE_LISTEN") {
            self.listen = parse_addrs("ATMOSPHERE_LISTEN", &list)?;
        }
        if let Some(list) = get("ATMOSPHERE_BOOTSTRAP") {
            self.bootstrap = parse_addrs("ATMOSPHERE_BOOTSTRAP", &list)?;
        }
        if let Some(flag) = get("ATMOSPHERE_MDNS") {
            self.mdns = match flag.trim() {
                "1" | "true" | "on" | "yes" => true,
                "0" | "false" | "off" | "no" => false,
                other => {
                    return Err(ConfigError::Env {
                        var: "ATMOSPHERE_MDNS",
                        message: format!("`{other}` is not true or false"),
                    })
                }
            };
        }
        self.validate()
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_payload", self.max_payload),
            ("subscription_buffer", self.subscription_buffer),
            ("outbox_frames", self.outbox_frames),
            ("outbox_bytes", self.outbox_bytes),
            ("heartbeat_lan_secs", self.heartbeat_lan_secs as usize),
            ("heartbeat_direct_secs", self.heartbeat_direct_secs as usize),
            ("heartbeat_ble_secs", self.heartbeat_ble_secs as usize),
            ("heartbeat_relay_secs", self.heartbeat_relay_secs as usize),
            ("heartbeat_active_ms", self.heartbeat_active_ms as usize),
            ("heartbeat_max_missed", self.heartbeat_max_missed as usize),
            ("probe_lan_secs", self.probe_lan_secs as usize),
            ("probe_direct_secs", self.probe_direct_secs as usize),
            ("probe_ble_secs", self.probe_ble_secs as usize),
            ("probe_relay_secs", self.probe_relay_secs as usize),
            ("relay_max_reservations", self.relay_max_reservations),
            ("relay_max_circuits", self.relay_max_circuits),
            ("ack_timeout_floor_ms", self.ack_timeout_floor_ms as usize),
            ("max_pending_calls", self.max_pending_calls),
            ("max_concurrent_handlers", self.max_concurrent_handlers),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
        }
        if self.max_payload > 64 * 1024 * 1024 {
            return Err(ConfigError::Invalid(
                "max_payload must be at most 64 MiB".into(),
            ));
        }
        if self.state_interval_secs == 0 || self.reconnect_min_secs == 0 {
            return Err(ConfigError::Invalid(
                "state_interval_secs and reconnect_min_secs must be at least 1".into(),
            ));
        }
        if self.reconnect_max_secs < self.reconnect_min_secs {
            return Err(ConfigError::Invalid(
                "reconnect_max_secs must be at least reconnect_min_secs".into(),
            ));
        }
        self.path_order()?;
        Ok(())
    }

    /// The path preference order: `path_order` if set, else the profile's.
    pub fn path_order(&self) -> Result<Vec<PathClass>, ConfigError> {
        match &self.path_order {
            None => Ok(match self.device_profile {
                DeviceProfile::MainsPowered => Policy::MainsPowered.order(),
                DeviceProfile::LowPower => Policy::LowPower.order(),
            }),
            Some(names) => names
                .iter()
                .map(|n| {
                    n.parse::<PathClass>().map_err(|_| {
                        ConfigError::Invalid(format!(
                            "path_order: `{n}` is not one of ble, lan, direct, relayed"
                        ))
                    })
                })
                .collect(),
        }
    }

    /// The heartbeat interval of an idle (non-active) path of `class`.
    pub fn heartbeat_interval(&self, class: PathClass) -> Duration {
        Duration::from_secs(match class {
            PathClass::Ble => self.heartbeat_ble_secs,
            PathClass::LanDirect => self.heartbeat_lan_secs,
            PathClass::Direct => self.heartbeat_direct_secs,
            PathClass::Relayed => self.heartbeat_relay_secs,
        })
    }

    /// The state announcement interval.
    pub fn state_interval(&self) -> Duration {
        Duration::from_secs(self.state_interval_secs)
    }
}

fn parse_addrs(var: &'static str, list: &str) -> Result<Vec<Multiaddr>, ConfigError> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse().map_err(|e| ConfigError::Env {
                var,
                message: format!("`{s}` is not a multiaddr: {e}"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_documented_values() {
        let c = Config::default();
        assert!(c.mdns);
        assert_eq!(c.listen.len(), 2);
        assert!(c.listen[0].to_string().ends_with("/tcp/11451"));
        assert_eq!(c.max_payload, 4 * 1024 * 1024);
        assert!(c.data_dir.ends_with(".atmosphere"));
    }

    #[test]
    fn toml_overrides_and_rejects_unknown_keys() {
        let c = Config::from_toml_str("name = \"kitchen\"\nmdns = false\nmax_payload = 1024\n")
            .unwrap();
        assert_eq!(c.name.as_deref(), Some("kitchen"));
        assert!(!c.mdns);
        assert_eq!(c.max_payload, 1024);
        assert!(matches!(
            Config::from_toml_str("nmae = \"typo\""),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            Config::from_toml_str("max_payload = 0"),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn env_overrides() {
        let mut c = Config::default();
        let vars = |name: &str| match name {
            "ATMOSPHERE_DATA_DIR" => Some("/tmp/x".to_owned()),
            "ATMOSPHERE_LISTEN" => Some("/ip4/127.0.0.1/tcp/1, /ip4/127.0.0.1/tcp/2".to_owned()),
            "ATMOSPHERE_MDNS" => Some("off".to_owned()),
            _ => None,
        };
        c.apply_vars(vars).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.listen.len(), 2);
        assert!(!c.mdns);
        let bad = |name: &str| (name == "ATMOSPHERE_MDNS").then(|| "maybe".to_owned());
        assert!(matches!(
            Config::default().apply_vars(bad),
            Err(ConfigError::Env { .. })
        ));
    }
}
