//! Joining a mesh with an invite. The admitting node's endpoints are tried
//! group by group, local, then public, then relay: each group is dialled
//! with a head start ([`head_start`]) before the next one is dialled as
//! well, and a group whose dial fails hands over at once. The first
//! connection wins; the join request goes over it, and the answer reports
//! which endpoint connected and which path the train ended on.

use std::{
    collections::{HashSet, VecDeque},
    time::{Duration, Instant},
};

use libp2p::{
    core::ConnectedPoint,
    multiaddr::Protocol,
    swarm::{
        dial_opts::{DialOpts, PeerCondition},
        ConnectionId,
    },
    Multiaddr, PeerId,
};
use tokio::sync::oneshot;

use atmosphere_behaviours::{
    membership::{cert::MeshId, protocol::JoinRequest},
    train::PathClass,
};

use super::{saved::without_peer, Runtime, JOIN_TIMEOUT};
use crate::{
    error::Error,
    invite::{self, EndpointGroup, InviteUri},
    types::{JoinReport, MeshInfo},
};

/// How long a group of endpoints may try alone before the next group is
/// dialled too. A LAN answers in milliseconds; a public address may cross
/// a continent; the relay is the last resort and has the rest of the join's
/// time.
pub(super) fn head_start(group: EndpointGroup) -> Duration {
    match group {
        EndpointGroup::Local => Duration::from_millis(1500),
        EndpointGroup::Public => Duration::from_secs(3),
        EndpointGroup::Relay => JOIN_TIMEOUT,
    }
}

/// A join in progress, keyed by the admitting peer.
pub(super) struct PendingJoin {
    /// The mesh asked for.
    pub mesh: MeshId,
    reply: oneshot::Sender<Result<JoinReport, Error>>,
    /// When the join is given up (or answered, if already admitted).
    pub deadline: Instant,
    request: JoinRequest,
    /// Waiting for a stale connection to the peer to close first.
    deferred: bool,
    /// Admitted and saved: the answer goes out once the founder is verified
    /// (and saved as a member, so that a restart finds it), or at the deadline.
    pub admitted: Option<MeshInfo>,
    /// Endpoint groups not dialled yet, in order.
    stages: VecDeque<(EndpointGroup, Vec<Multiaddr>)>,
    /// When the next group is dialled even if the current one is still trying.
    next_stage_at: Option<Instant>,
    /// This join's dials, started and not finished (other dials to the
    /// same peer, by mDNS or reconnection, do not count).
    dials: HashSet<ConnectionId>,
    /// The invite's relays: exempt from membership checks while joining
    /// (they need not be members), remembered once the join succeeds.
    relays: Vec<Multiaddr>,
    /// Groups dialled, in order.
    tried: Vec<EndpointGroup>,
    /// Every endpoint of the invite with its group.
    endpoints: Vec<(EndpointGroup, Multiaddr)>,
    /// The address our connection to the peer was dialled on.
    connected_via: Option<Multiaddr>,
    /// The last dial error, for the failure message.
    last_error: Option<String>,
    started: Instant,
}

/// The invite group of a connected address: the endpoint it matches, else
/// the group its class belongs to.
fn group_of(endpoints: &[(EndpointGroup, Multiaddr)], addr: &Multiaddr) -> EndpointGroup {
    let bare = without_peer(addr);
    endpoints
        .iter()
        .find(|(_, e)| without_peer(e) == bare)
        .map(|(g, _)| *g)
        .unwrap_or_else(|| EndpointGroup::of(addr))
}

impl Runtime {
    /// Starts a join: the request goes to the invite's peer once connected.
    pub(super) fn join(
        &mut self,
        invite: InviteUri,
        reply: oneshot::Sender<Result<JoinReport, Error>>,
    ) {
        let started = Instant::now();
        if self.meshes.contains_key(&invite.mesh) {
            let report = self.mesh_info(&invite.mesh).map(|mesh| JoinReport {
                mesh,
                endpoint: None,
                endpoint_group: None,
                path: None,
                tried: Vec::new(),
                elapsed_ms: 0,
            });
            let _ = reply.send(report);
            return;
        }
        // Every endpoint of one invite names the admitting peer.
        let Some(peer) = invite.endpoints.all().find_map(invite::peer_of) else {
            let _ = reply.send(Err(Error::Invite(invite::InviteError::NoEndpoints)));
            return;
        };
        if peer == self.local_peer() {
            let _ = reply.send(Err(Error::Join(
                "this invite was issued by this node".into(),
            )));
            return;
        }
        let of_peer = |addrs: &[Multiaddr]| -> Vec<Multiaddr> {
            addrs
                .iter()
                .filter(|a| invite::peer_of(a) == Some(peer))
                .cloned()
                .collect()
        };
        let stages: VecDeque<(EndpointGroup, Vec<Multiaddr>)> = invite
            .endpoints
            .groups()
            .into_iter()
            .map(|(group, addrs)| (group, of_peer(addrs)))
            .filter(|(_, addrs)| !addrs.is_empty())
            .collect();
        let endpoints = stages
            .iter()
            .flat_map(|(g, addrs)| addrs.iter().map(|a| (*g, a.clone())))
            .collect();
        if let Some(previous) = self.joins.remove(&peer) {
            let _ = previous
                .reply
                .send(Err(Error::Join("superseded by a newer join".into())));
        }
        self.rejected.remove(&peer);
        // The invite's relays serve our own reservations too.
        let relays: Vec<Multiaddr> = invite
            .endpoints
            .relay
            .iter()
            .filter_map(super::relays::relay_of)
            .collect();
        for relay in &relays {
            if let Some(Protocol::P2p(relay_peer)) = relay.iter().last() {
                self.swarm.behaviour_mut().membership.add_exempt(relay_peer);
            }
        }
        let verified = self.swarm.behaviour().membership.verified(&peer).is_some();
        let stale = self.swarm.is_connected(&peer) && !verified;
        self.joins.insert(
            peer,
            PendingJoin {
                mesh: invite.mesh,
                reply,
                deadline: started + JOIN_TIMEOUT,
                request: JoinRequest {
                    mesh: invite.mesh,
                    token: invite.token,
                },
                deferred: stale,
                admitted: None,
                stages,
                next_stage_at: None,
                dials: HashSet::new(),
                relays,
                tried: Vec::new(),
                endpoints,
                connected_via: None,
                last_error: None,
                started,
            },
        );
        if stale {
            // A connection that is not verified may be one being closed after a
            // refusal: start afresh once it is gone.
            let _ = self.swarm.disconnect_peer_id(peer);
            return;
        }
        self.send_join(peer);
    }

    /// Sends the join on the existing verified connection, or dials for it.
    fn send_join(&mut self, peer: PeerId) {
        let Some(join) = self.joins.get(&peer) else {
            return;
        };
        let request = join.request.clone();
        self.swarm
            .behaviour_mut()
            .membership
            .request_join(peer, request);
        if !self.swarm.is_connected(&peer) {
            self.dial_next_stage(peer);
        }
    }

    /// Dials the next group of endpoints; groups that cannot be dialled at
    /// all are skipped. Fails the join when nothing is left to try.
    fn dial_next_stage(&mut self, peer: PeerId) {
        loop {
            let Some(join) = self.joins.get_mut(&peer) else {
                return;
            };
            let Some((group, addrs)) = join.stages.pop_front() else {
                join.next_stage_at = None;
                if join.dials.is_empty() {
                    // Admitted (and saved) already: the join stands.
                    let answer = join.admitted.clone().ok_or_else(|| {
                        let reason = join
                            .last_error
                            .clone()
                            .unwrap_or_else(|| "no endpoint could be dialled".into());
                        Error::Join(format!("could not reach {peer}: {reason}"))
                    });
                    self.finish_join(peer, answer);
                }
                return;
            };
            let opts = DialOpts::peer_id(peer)
                .addresses(addrs)
                .condition(PeerCondition::Disconnected)
                .build();
            let dial = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => {
                    tracing::debug!(%peer, %group, "join: dialling endpoints");
                    if let Some(join) = self.joins.get_mut(&peer) {
                        join.tried.push(group);
                        join.dials.insert(dial);
                        join.next_stage_at =
                            (!join.stages.is_empty()).then(|| Instant::now() + head_start(group));
                    }
                    return;
                }
                Err(e) => {
                    tracing::debug!(%peer, %group, error = %e, "join: cannot dial group");
                    if let Some(join) = self.joins.get_mut(&peer) {
                        join.tried.push(group);
                        join.last_error = Some(e.to_string());
                    }
                }
            }
        }
    }

    /// Starts a join that waited for the last connection to `peer` to close.
    pub(super) fn start_deferred_join(&mut self, peer: PeerId) {
        let deferred = self.joins.get_mut(&peer).is_some_and(|j| {
            let was = j.deferred;
            j.deferred = false;
            was
        });
        if deferred {
            self.send_join(peer);
        }
    }

    /// A connection to a peer we are joining through came up.
    pub(super) fn on_join_connection(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        endpoint: &ConnectedPoint,
    ) {
        let Some(join) = self.joins.get_mut(&peer) else {
            return;
        };
        let ours = join.dials.remove(&connection);
        if let ConnectedPoint::Dialer { address, .. } = endpoint {
            // Our dial's address first; another dial's if it won the race.
            if ours || join.connected_via.is_none() {
                join.connected_via = Some(address.clone());
            }
        }
        join.stages.clear();
        join.next_stage_at = None;
    }

    /// A dial towards a peer we are joining through failed.
    pub(super) fn on_join_dial_failed(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        error: String,
    ) {
        let Some(join) = self.joins.get_mut(&peer) else {
            return;
        };
        if !join.dials.remove(&connection) {
            return;
        }
        join.last_error = Some(error);
        if !self.swarm.is_connected(&peer) && !join.deferred {
            self.dial_next_stage(peer);
        }
    }

    /// Once a second: groups whose head start is over hand over to the next
    /// one; joins past their deadline are answered.
    pub(super) fn advance_joins(&mut self) {
        let now = Instant::now();
        let due: Vec<PeerId> = self
            .joins
            .iter()
            .filter(|(_, j)| j.next_stage_at.is_some_and(|t| t <= now))
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            if !self.swarm.is_connected(&peer) {
                self.dial_next_stage(peer);
            }
        }
        let expired: Vec<PeerId> = self
            .joins
            .iter()
            .filter(|(_, j)| j.deadline <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in expired {
            let admitted = self.joins.get(&peer).and_then(|j| j.admitted.clone());
            // Admitted, but the founder did not verify us in time: the mesh is
            // saved, reconnection takes over.
            let answer = admitted.ok_or_else(|| {
                Error::Join(format!("no answer from {peer} within {JOIN_TIMEOUT:?}"))
            });
            self.finish_join(peer, answer);
        }
    }

    /// Answers the join through `peer` (if one is pending).
    pub(super) fn finish_join(&mut self, peer: PeerId, result: Result<MeshInfo, Error>) {
        let Some(join) = self.joins.remove(&peer) else {
            return;
        };
        // The invite's relays: kept (and used for reservations) once in the
        // mesh; otherwise no longer exempt.
        if result.is_ok() {
            self.learn_relays(join.relays.iter());
        } else {
            for relay in &join.relays {
                if let Some(Protocol::P2p(relay_peer)) = relay.iter().last() {
                    if !self.relays.contains_key(&relay_peer) {
                        self.swarm
                            .behaviour_mut()
                            .membership
                            .remove_exempt(&relay_peer);
                    }
                }
            }
        }
        let report = result.map(|mesh| {
            let endpoint_group = join
                .connected_via
                .as_ref()
                .map(|a| group_of(&join.endpoints, a));
            let path = self
                .path_statuses(&peer)
                .into_iter()
                .find(|p| p.role == "active")
                .map(|p| p.class)
                .or_else(|| {
                    join.connected_via
                        .as_ref()
                        .map(|a| PathClass::classify(a).to_string())
                });
            JoinReport {
                mesh,
                endpoint: join.connected_via.as_ref().map(ToString::to_string),
                endpoint_group,
                path,
                tried: join.tried.clone(),
                elapsed_ms: join.started.elapsed().as_millis() as u64,
            }
        });
        if let Ok(report) = &report {
            tracing::info!(
                %peer,
                endpoint = ?report.endpoint,
                group = ?report.endpoint_group,
                path = ?report.path,
                "join complete"
            );
        }
        let _ = join.reply.send(report);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    const PEER: &str = "12D3KooWGzs4Ywc1A4FbzGGXfYWmdYy1ZQZ3ZS8JSqULEWDJAVLA";
    const RELAY: &str = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo";

    #[test]
    fn connected_addresses_map_to_their_invite_group() {
        let endpoints = vec![
            (
                EndpointGroup::Local,
                addr(&format!("/ip4/192.168.1.2/tcp/1/p2p/{PEER}")),
            ),
            (
                EndpointGroup::Relay,
                addr(&format!(
                    "/ip4/198.51.100.2/tcp/2/p2p/{RELAY}/p2p-circuit/p2p/{PEER}"
                )),
            ),
        ];
        // With or without the final /p2p/<peer>.
        assert_eq!(
            group_of(&endpoints, &addr("/ip4/192.168.1.2/tcp/1")),
            EndpointGroup::Local
        );
        assert_eq!(
            group_of(
                &endpoints,
                &addr(&format!(
                    "/ip4/198.51.100.2/tcp/2/p2p/{RELAY}/p2p-circuit/p2p/{PEER}"
                ))
            ),
            EndpointGroup::Relay
        );
        // Not in the invite (a dial from another source): by class.
        assert_eq!(
            group_of(&endpoints, &addr("/ip4/198.51.100.9/udp/3/quic-v1")),
            EndpointGroup::Public
        );
        assert_eq!(
            group_of(&endpoints, &addr("/ip4/10.0.0.9/tcp/3")),
            EndpointGroup::Local
        );
    }

    #[test]
    fn groups_get_shorter_head_starts_the_closer_they_are() {
        assert!(head_start(EndpointGroup::Local) < head_start(EndpointGroup::Public));
        assert!(head_start(EndpointGroup::Public) < head_start(EndpointGroup::Relay));
    }
}
