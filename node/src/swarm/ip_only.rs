//! [`IpOnly`]: hides BLE addresses from a behaviour that only makes sense on
//! IP networks (AutoNAT).
//!
//! A BLE address (`/memory/<u64>`) is a radio's address and PSM; it cannot be
//! "reachable from the internet". Without this filter, identify's observed
//! address on a BLE connection becomes an external-address candidate, AutoNAT
//! asks members to dial it back, and every dial-back is a new BLE connection
//! that competes with the live one.

use std::task::{Context, Poll};

use libp2p::{
    core::{transport::PortUse, Endpoint},
    swarm::{
        ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
        THandlerOutEvent, ToSwarm,
    },
    Multiaddr, PeerId,
};

use super::ble::is_ble_addr;

/// `B` without BLE listen or external addresses (see the [module docs](self)).
pub(crate) struct IpOnly<B>(pub B);

impl<B: NetworkBehaviour> NetworkBehaviour for IpOnly<B> {
    type ConnectionHandler = B::ConnectionHandler;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.0
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.0
            .handle_established_inbound_connection(connection_id, peer, local_addr, remote_addr)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.0.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.0.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        let hidden = match &event {
            FromSwarm::NewListenAddr(e) => is_ble_addr(e.addr),
            FromSwarm::ExpiredListenAddr(e) => is_ble_addr(e.addr),
            FromSwarm::NewExternalAddrCandidate(e) => is_ble_addr(e.addr),
            FromSwarm::ExternalAddrConfirmed(e) => is_ble_addr(e.addr),
            FromSwarm::ExternalAddrExpired(e) => is_ble_addr(e.addr),
            _ => false,
        };
        if !hidden {
            self.0.on_swarm_event(event);
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.0
            .on_connection_handler_event(peer_id, connection_id, event)
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.0.poll(cx)
    }
}
