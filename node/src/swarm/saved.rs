//! Saved meshes as `mesh list` shows them: whether the node is connected to
//! each and how, when a member was last seen, the saved endpoints of its
//! members, and the `auto_reconnect` switch that decides whether the node
//! keeps trying to reach them.

use std::collections::{HashMap, HashSet};

use libp2p::{Multiaddr, PeerId};

use atmosphere_behaviours::membership::cert::MeshId;

use super::{unix_now, Runtime};
use crate::{
    error::Error,
    invite::EndpointGroup,
    shared::read,
    types::{MeshInfo, SavedEndpoint},
};

/// Saved endpoints listed per mesh, at most.
pub(super) const MAX_LISTED_ENDPOINTS: usize = 64;

/// `addr` without a final `/p2p/<peer>`.
pub(super) fn without_peer(addr: &Multiaddr) -> Multiaddr {
    let mut addr = addr.clone();
    if matches!(
        addr.iter().last(),
        Some(libp2p::multiaddr::Protocol::P2p(_))
    ) {
        addr.pop();
    }
    addr
}

/// How an endpoint is saved: the address without a final `/p2p/<peer>`
/// (the peer is saved beside it), so one address is one row.
pub(super) fn endpoint_key(addr: &Multiaddr) -> String {
    without_peer(addr).to_string()
}

impl Runtime {
    /// Saved members of `id` other than us.
    fn mesh_members(&self, id: &MeshId) -> Result<Vec<String>, Error> {
        let local = self.local_peer().to_string();
        Ok(self
            .store
            .members(&id.to_string())?
            .into_iter()
            .map(|m| m.peer_id)
            .filter(|p| *p != local)
            .collect())
    }

    pub(super) fn mesh_info(&self, id: &MeshId) -> Result<MeshInfo, Error> {
        let state = self
            .meshes
            .get(id)
            .ok_or_else(|| Error::UnknownMesh(id.to_string()))?;
        let members = self.mesh_members(id)?;
        let membership = &self.swarm.behaviour().membership;
        let connected: Vec<PeerId> = read(&self.shared.remotes)
            .iter()
            .filter(|(_, r)| r.connected)
            .filter(|(p, _)| membership.verified(p).is_some_and(|m| m.contains_key(id)))
            .map(|(p, _)| *p)
            .collect();
        // Best path class per connected member, most common first.
        let mut via: HashMap<String, usize> = HashMap::new();
        for peer in &connected {
            if let Some(active) = self
                .path_statuses(peer)
                .into_iter()
                .find(|p| p.role == "active")
            {
                *via.entry(active.class).or_default() += 1;
            }
        }
        let mut connected_via: Vec<(String, usize)> = via.into_iter().collect();
        connected_via.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let last_seen = if connected.is_empty() {
            members
                .iter()
                .filter_map(|p| self.store.peer(p).ok().flatten())
                .map(|p| p.last_seen)
                .max()
        } else {
            Some(unix_now())
        };
        let auto_reconnect = self.store.auto_reconnect(&id.to_string())?.unwrap_or(true);
        let mut endpoints = Vec::new();
        for peer in &members {
            for endpoint in self.store.endpoints(peer)? {
                let Ok(addr) = endpoint.addr.parse::<Multiaddr>() else {
                    continue;
                };
                endpoints.push(SavedEndpoint {
                    peer_id: peer.clone(),
                    kind: EndpointGroup::of(&addr),
                    addr: endpoint.addr,
                    last_success: endpoint.last_success,
                    latency_ms: endpoint.latency_ms,
                });
            }
        }
        endpoints.sort_by(|a, b| {
            b.last_success
                .cmp(&a.last_success)
                .then_with(|| a.addr.cmp(&b.addr))
        });
        endpoints.truncate(MAX_LISTED_ENDPOINTS);
        let state_name = if !connected.is_empty() {
            "connected"
        } else if members.is_empty() {
            "alone"
        } else if auto_reconnect {
            "reconnecting"
        } else {
            "paused"
        };
        Ok(MeshInfo {
            id: id.to_string(),
            name: state.descriptor.name.clone(),
            founder: state
                .descriptor
                .founder()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            is_founder: state.is_founder,
            members: members.len() + 1,
            connected: connected.len(),
            state: state_name.to_owned(),
            connected_via: connected_via.into_iter().map(|(c, _)| c).collect(),
            last_seen,
            auto_reconnect,
            endpoints,
        })
    }

    /// Members we keep reconnecting to: those of a mesh with
    /// `auto_reconnect` on.
    pub(super) fn members_to_watch(&self) -> Result<HashSet<PeerId>, Error> {
        let mut peers = HashSet::new();
        for id in self.meshes.keys() {
            if self.store.auto_reconnect(&id.to_string())? == Some(false) {
                continue;
            }
            peers.extend(
                self.mesh_members(id)?
                    .iter()
                    .filter_map(|p| p.parse::<PeerId>().ok()),
            );
        }
        Ok(peers)
    }

    /// Whether `peer` is a saved member of ours whose meshes all have
    /// `auto_reconnect` off (mDNS and member hints do not dial it then).
    pub(super) fn is_paused_member(&self, peer: &PeerId) -> bool {
        let peer_str = peer.to_string();
        let mut member = false;
        for id in self.meshes.keys() {
            let Ok(members) = self.mesh_members(id) else {
                continue;
            };
            if members.contains(&peer_str) {
                member = true;
                if self.store.auto_reconnect(&id.to_string()).ok().flatten() != Some(false) {
                    return false;
                }
            }
        }
        member
    }

    /// Turns reconnection to a mesh's members on or off.
    pub(super) fn set_auto_reconnect(&mut self, mesh: &str, on: bool) -> Result<MeshInfo, Error> {
        let id = self.resolve_mesh(Some(mesh))?;
        self.store.set_auto_reconnect(&id.to_string(), on)?;
        let watch = self.members_to_watch()?;
        for peer in self.mesh_members(&id)? {
            let Ok(peer) = peer.parse::<PeerId>() else {
                continue;
            };
            if watch.contains(&peer) {
                self.watch_member(peer);
            } else {
                // Connections that exist stay; lost ones are not re-dialled.
                self.swarm.behaviour_mut().train.unwatch(&peer);
            }
        }
        self.forget_member_hints();
        tracing::info!(mesh = %id, on, "auto-reconnect set");
        self.mesh_info(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_saved_without_the_final_peer_id() {
        let peer = "12D3KooWGzs4Ywc1A4FbzGGXfYWmdYy1ZQZ3ZS8JSqULEWDJAVLA";
        let relay = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo";
        let key = |s: String| endpoint_key(&s.parse().unwrap_or_else(|e| panic!("{s}: {e}")));
        assert_eq!(
            key(format!("/ip4/10.0.0.1/tcp/1/p2p/{peer}")),
            "/ip4/10.0.0.1/tcp/1"
        );
        assert_eq!(key("/ip4/10.0.0.1/tcp/1".into()), "/ip4/10.0.0.1/tcp/1");
        // A relayed address keeps the relay's id.
        assert_eq!(
            key(format!(
                "/ip4/10.0.0.1/tcp/1/p2p/{relay}/p2p-circuit/p2p/{peer}"
            )),
            format!("/ip4/10.0.0.1/tcp/1/p2p/{relay}/p2p-circuit")
        );
    }

    #[test]
    fn endpoints_are_grouped_like_invites() {
        let kind = |s: &str| EndpointGroup::of(&s.parse().unwrap_or_else(|e| panic!("{s}: {e}")));
        assert_eq!(kind("/ip4/192.168.1.2/tcp/1"), EndpointGroup::Local);
        assert_eq!(
            kind("/ip4/198.51.100.2/udp/1/quic-v1"),
            EndpointGroup::Public
        );
        assert_eq!(
            kind("/ip4/198.51.100.2/tcp/1/p2p/12D3KooWGzs4Ywc1A4FbzGGXfYWmdYy1ZQZ3ZS8JSqULEWDJAVLA/p2p-circuit"),
            EndpointGroup::Relay
        );
    }
}
