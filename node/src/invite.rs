//! Invite tokens and `atmosphere://join` URIs.
//!
//! v2 (what [`InviteUri::to_uri`] writes):
//! `atmosphere://join?token=ATM-…&mesh=<mesh id>&name=<mesh name>&endpoints=<JSON>`
//! where the JSON is `{"local":[multiaddr…],"public":[…],"relay":[…]}`
//! (percent-encoded). Each group may also be a single string.
//!
//! v1 (legacy, accepted): `atmosphere://join?token=…&mesh=<mesh id>&endpoint=<multiaddr>`.
//!
//! Every endpoint is a multiaddr ending in `/p2p/<peer id>` of the node that
//! admits the joiner (the founder). See `docs/wire-format.md`.

use base64::Engine;
use libp2p::{multiaddr::Protocol, Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use url::Url;

use atmosphere_behaviours::{membership::cert::MeshId, train::PathClass};

/// Prefix of every invite token.
pub const TOKEN_PREFIX: &str = "ATM-";
/// Longest invite URI accepted, in bytes.
pub const MAX_URI_LEN: usize = 8 * 1024;
/// Most endpoints accepted per group.
pub const MAX_ENDPOINTS_PER_GROUP: usize = 16;

/// Why an invite URI or token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InviteError {
    /// Not an `atmosphere://join?…` URI.
    #[error("not an invite URI (expected atmosphere://join?token=…&mesh=…): {0}")]
    NotAnInvite(String),
    /// A required parameter is missing.
    #[error("invite URI has no `{0}` parameter")]
    Missing(&'static str),
    /// The token is malformed.
    #[error("malformed invite token (expected ATM- and 22 characters)")]
    InvalidToken,
    /// The mesh id is malformed.
    #[error("malformed mesh id in invite: {0}")]
    InvalidMesh(String),
    /// The endpoints are malformed.
    #[error("malformed endpoints in invite: {0}")]
    InvalidEndpoints(String),
    /// No endpoint to try.
    #[error("the invite lists no endpoint to connect to")]
    NoEndpoints,
    /// Longer than [`MAX_URI_LEN`].
    #[error("invite URI longer than {MAX_URI_LEN} bytes")]
    TooLong,
}

/// The ways into a mesh listed in an invite, in the order they are tried.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    /// LAN addresses.
    #[serde(default)]
    pub local: Vec<Multiaddr>,
    /// Public addresses.
    #[serde(default)]
    pub public: Vec<Multiaddr>,
    /// Relayed addresses.
    #[serde(default)]
    pub relay: Vec<Multiaddr>,
}

impl Endpoints {
    /// All endpoints: local, then public, then relay.
    pub fn all(&self) -> impl Iterator<Item = &Multiaddr> {
        self.local.iter().chain(&self.public).chain(&self.relay)
    }

    /// The groups in the order a join tries them, each with its endpoints.
    pub fn groups(&self) -> [(EndpointGroup, &[Multiaddr]); 3] {
        [
            (EndpointGroup::Local, &self.local),
            (EndpointGroup::Public, &self.public),
            (EndpointGroup::Relay, &self.relay),
        ]
    }
}

/// The group an invite endpoint belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointGroup {
    /// A LAN address of the admitting node.
    Local,
    /// A public address of the admitting node.
    Public,
    /// A relayed address (`…/p2p-circuit/p2p/<node>`).
    Relay,
}

impl EndpointGroup {
    /// The group an address belongs to, by its path class: relayed
    /// addresses are `relay`, other internet addresses `public`, LAN (and
    /// BLE) addresses `local`.
    pub fn of(addr: &Multiaddr) -> Self {
        match PathClass::classify(addr) {
            PathClass::Relayed => EndpointGroup::Relay,
            PathClass::Direct => EndpointGroup::Public,
            PathClass::LanDirect | PathClass::Ble => EndpointGroup::Local,
        }
    }
}

impl std::fmt::Display for EndpointGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EndpointGroup::Local => "local",
            EndpointGroup::Public => "public",
            EndpointGroup::Relay => "relay",
        })
    }
}

/// A parsed invite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteUri {
    /// The secret token (`ATM-…`).
    pub token: String,
    /// The mesh to join.
    pub mesh: MeshId,
    /// The mesh's name, for display.
    pub name: Option<String>,
    /// Where to connect.
    pub endpoints: Endpoints,
}

/// A fresh random token.
pub fn new_token() -> String {
    let secret: [u8; 16] = rand::random();
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    )
}

/// Checks a token's shape.
pub fn check_token(token: &str) -> Result<(), InviteError> {
    let body = token
        .strip_prefix(TOKEN_PREFIX)
        .ok_or(InviteError::InvalidToken)?;
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| InviteError::InvalidToken)?;
    if decoded.len() != 16 {
        return Err(InviteError::InvalidToken);
    }
    Ok(())
}

/// The hash under which a token is stored.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The peer id a multiaddr ends in (`…/p2p/<peer>`), if any. For a relayed
/// address (`…/p2p/<relay>/p2p-circuit/p2p/<peer>`) that is the target, not the relay.
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct RawEndpoints {
    #[serde(default)]
    local: Option<OneOrMany>,
    #[serde(default)]
    public: Option<OneOrMany>,
    #[serde(default)]
    relay: Option<OneOrMany>,
}

fn parse_group(group: Option<OneOrMany>) -> Result<Vec<Multiaddr>, InviteError> {
    let list = match group {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    };
    if list.len() > MAX_ENDPOINTS_PER_GROUP {
        return Err(InviteError::InvalidEndpoints(format!(
            "more than {MAX_ENDPOINTS_PER_GROUP} endpoints in a group"
        )));
    }
    list.iter()
        .filter(|s| !s.is_empty())
        .map(|s| parse_endpoint(s))
        .collect()
}

fn parse_endpoint(s: &str) -> Result<Multiaddr, InviteError> {
    let addr: Multiaddr = s
        .parse()
        .map_err(|e| InviteError::InvalidEndpoints(format!("`{s}`: {e}")))?;
    if peer_of(&addr).is_none() {
        return Err(InviteError::InvalidEndpoints(format!(
            "`{s}` does not end in /p2p/<peer id>"
        )));
    }
    Ok(addr)
}

impl InviteUri {
    /// Parses a v2 or v1 invite URI.
    pub fn parse(uri: &str) -> Result<Self, InviteError> {
        let uri = uri.trim();
        if uri.len() > MAX_URI_LEN {
            return Err(InviteError::TooLong);
        }
        let short = || uri.chars().take(60).collect::<String>();
        let url = Url::parse(uri).map_err(|_| InviteError::NotAnInvite(short()))?;
        if url.scheme() != "atmosphere" || url.host_str() != Some("join") {
            return Err(InviteError::NotAnInvite(short()));
        }
        let (mut token, mut mesh, mut name, mut endpoints_json, mut endpoint) =
            (None, None, None, None, None);
        for (key, value) in url.query_pairs() {
            let value = value.into_owned();
            match key.as_ref() {
                "token" => token = Some(value),
                "mesh" => mesh = Some(value),
                "name" => name = Some(value),
                "endpoints" => endpoints_json = Some(value),
                "endpoint" => endpoint = Some(value),
                _ => {}
            }
        }
        let token = token.ok_or(InviteError::Missing("token"))?;
        check_token(&token)?;
        let mesh_str = mesh.ok_or(InviteError::Missing("mesh"))?;
        let mesh: MeshId = mesh_str
            .parse()
            .map_err(|_| InviteError::InvalidMesh(mesh_str.chars().take(40).collect()))?;
        let mut endpoints = match endpoints_json {
            Some(json) => {
                let raw: RawEndpoints = serde_json::from_str(&json)
                    .map_err(|e| InviteError::InvalidEndpoints(e.to_string()))?;
                Endpoints {
                    local: parse_group(raw.local)?,
                    public: parse_group(raw.public)?,
                    relay: parse_group(raw.relay)?,
                }
            }
            None => Endpoints::default(),
        };
        if let Some(single) = endpoint.filter(|e| !e.is_empty()) {
            // v1 had one ungrouped endpoint: group it by its address.
            let addr = parse_endpoint(&single)?;
            match EndpointGroup::of(&addr) {
                EndpointGroup::Relay => endpoints.relay.push(addr),
                EndpointGroup::Public => endpoints.public.push(addr),
                EndpointGroup::Local => endpoints.local.push(addr),
            }
        }
        if endpoints.all().next().is_none() {
            return Err(InviteError::NoEndpoints);
        }
        Ok(Self {
            token,
            mesh,
            name: name.filter(|n| !n.is_empty()),
            endpoints,
        })
    }

    /// Writes the v2 URI.
    pub fn to_uri(&self) -> String {
        let endpoints = serde_json::json!({
            "local": self.endpoints.local.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "public": self.endpoints.public.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "relay": self.endpoints.relay.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        });
        let mut url = match Url::parse("atmosphere://join") {
            Ok(url) => url,
            Err(_) => return String::new(), // ok: a constant URL always parses
        };
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("token", &self.token);
            query.append_pair("mesh", &self.mesh.to_string());
            if let Some(name) = &self.name {
                query.append_pair("name", name);
            }
            query.append_pair("endpoints", &endpoints.to_string());
        }
        url.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> InviteUri {
        let peer = PeerId::random();
        InviteUri {
            token: new_token(),
            mesh: "00112233445566778899aabbccddeeff".parse().unwrap(),
            name: Some("Home mesh".into()),
            endpoints: Endpoints {
                local: vec![format!("/ip4/192.168.1.2/tcp/11451/p2p/{peer}")
                    .parse()
                    .unwrap()],
                public: vec![],
                relay: vec![],
            },
        }
    }

    #[test]
    fn v2_round_trips() {
        let invite = sample();
        let uri = invite.to_uri();
        assert!(uri.starts_with("atmosphere://join?token=ATM-"));
        assert_eq!(InviteUri::parse(&uri).unwrap(), invite);
    }

    #[test]
    fn v1_single_endpoint_is_accepted() {
        let invite = sample();
        let addr = &invite.endpoints.local[0];
        let uri = format!(
            "atmosphere://join?token={}&mesh={}&endpoint={}",
            invite.token, invite.mesh, addr
        );
        let parsed = InviteUri::parse(&uri).unwrap();
        // Grouped by its address: a LAN address is a local endpoint.
        assert_eq!(parsed.endpoints.local, vec![addr.clone()]);
        assert!(parsed.endpoints.public.is_empty() && parsed.endpoints.relay.is_empty());
    }

    #[test]
    fn malformed_uris_are_refused_with_reasons() {
        let good = sample();
        let mesh = good.mesh;
        let token = good.token.clone();
        type Check = fn(&InviteError) -> bool;
        let cases: Vec<(String, Check)> = vec![
            ("http://join?token=x".into(), |e| {
                matches!(e, InviteError::NotAnInvite(_))
            }),
            ("not a uri".into(), |e| {
                matches!(e, InviteError::NotAnInvite(_))
            }),
            (format!("atmosphere://join?mesh={mesh}"), |e| {
                matches!(e, InviteError::Missing("token"))
            }),
            (
                format!("atmosphere://join?token=ATM-short&mesh={mesh}"),
                |e| matches!(e, InviteError::InvalidToken),
            ),
            (
                format!("atmosphere://join?token={token}&mesh=nothex"),
                |e| matches!(e, InviteError::InvalidMesh(_)),
            ),
            (
                format!("atmosphere://join?token={token}&mesh={mesh}"),
                |e| matches!(e, InviteError::NoEndpoints),
            ),
            (
                format!("atmosphere://join?token={token}&mesh={mesh}&endpoints=%7Bbad"),
                |e| matches!(e, InviteError::InvalidEndpoints(_)),
            ),
            (
                format!("atmosphere://join?token={token}&mesh={mesh}&endpoint=/ip4/1.2.3.4/tcp/1"),
                |e| matches!(e, InviteError::InvalidEndpoints(_)),
            ),
            (
                format!(
                    "atmosphere://join?token={token}&mesh={mesh}&x={}",
                    "a".repeat(9000)
                ),
                |e| matches!(e, InviteError::TooLong),
            ),
        ];
        for (uri, check) in cases {
            let err = InviteUri::parse(&uri).unwrap_err();
            assert!(check(&err), "{uri}: unexpected {err:?}");
        }
    }

    #[test]
    fn peer_of_takes_the_final_p2p_component() {
        let (relay, target) = (PeerId::random(), PeerId::random());
        let relayed: Multiaddr = format!("/ip4/1.2.3.4/tcp/1/p2p/{relay}/p2p-circuit/p2p/{target}")
            .parse()
            .unwrap();
        assert_eq!(peer_of(&relayed), Some(target));
        let to_relay: Multiaddr = format!("/ip4/1.2.3.4/tcp/1/p2p/{relay}/p2p-circuit")
            .parse()
            .unwrap();
        assert_eq!(peer_of(&to_relay), None);
    }

    #[test]
    fn token_hash_is_stable_and_tokens_are_unique() {
        let a = new_token();
        assert!(check_token(&a).is_ok());
        assert_ne!(a, new_token());
        assert_eq!(token_hash(&a), token_hash(&a));
    }
}
