//! [`BleTransport`]: libp2p `Transport` over a [`BleLink`].

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::{self, BoxFuture, Ready};
use futures::{FutureExt, Stream};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::transport::{DialOpts, ListenerId, Transport, TransportError, TransportEvent};
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::{noise, yamux, Multiaddr, PeerId};

use super::addr::{BleAddr, DeviceAddress};
use super::{BleError, BleLink};

/// `BleTransport` over `link` with the standard upgrade: multistream-select
/// V1, noise (authenticated with `key`) and yamux, boxed, ready for
/// `SwarmBuilder::with_other_transport` (hence the boxed error: the noise
/// key cannot be derived from `key`).
pub fn upgraded<L: BleLink>(
    link: L,
    key: &Keypair,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Box<dyn std::error::Error + Send + Sync>> {
    Ok(BleTransport::new(link)
        .upgrade(Version::V1)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .boxed())
}

/// A libp2p transport over Bluetooth LE L2CAP channels.
///
/// Addresses are `/memory/<u64>` (see [`super::addr`]). The output is a plain
/// byte stream; upgrade it as usual:
/// `transport.upgrade(Version::V1).authenticate(noise).multiplex(yamux)`.
pub struct BleTransport<L: BleLink> {
    link: L,
    listeners: VecDeque<Listener<L>>,
}

struct Listener<L: BleLink> {
    id: ListenerId,
    addr: BleAddr,
    inbound: L::Listener,
    tell_listen_addr: bool,
}

impl<L: BleLink> BleTransport<L> {
    /// A transport over `link`.
    pub fn new(link: L) -> Self {
        Self {
            link,
            listeners: VecDeque::new(),
        }
    }

    /// The radio this transport uses.
    pub fn link(&self) -> &L {
        &self.link
    }
}

impl<L: BleLink> Transport for BleTransport<L> {
    type Output = L::Stream;
    type Error = BleError;
    type ListenerUpgrade = Ready<Result<Self::Output, Self::Error>>;
    type Dial = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        let Some(requested) = BleAddr::from_multiaddr(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let local = self.link.local_address();
        if requested.device.value() != 0 && requested.device != local {
            return Err(TransportError::Other(BleError::NotLocalAddress(
                requested.device,
            )));
        }
        let psm = (requested.psm != 0).then_some(requested.psm);
        let (psm, inbound) = self.link.listen(psm).map_err(TransportError::Other)?;
        let addr = BleAddr { device: local, psm };
        tracing::debug!(%addr, "BLE listening");
        self.listeners.push_back(Listener {
            id,
            addr,
            inbound,
            tell_listen_addr: true,
        });
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        let before = self.listeners.len();
        // Dropping the backend's listener stops listening on its PSM.
        self.listeners.retain(|l| l.id != id);
        before != self.listeners.len()
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        _opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        let Some(target) = BleAddr::from_multiaddr(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        if target.device.value() == 0 || target.psm == 0 {
            return Err(TransportError::Other(BleError::InvalidDialTarget(target)));
        }
        tracing::debug!(%target, "BLE dialing");
        Ok(self.link.dial(target.device, target.psm).boxed())
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        let this = &mut *self;
        for _ in 0..this.listeners.len() {
            let Some(mut listener) = this.listeners.pop_front() else {
                break;
            };
            if listener.tell_listen_addr {
                listener.tell_listen_addr = false;
                let event = TransportEvent::NewAddress {
                    listener_id: listener.id,
                    listen_addr: listener.addr.to_multiaddr(),
                };
                this.listeners.push_back(listener);
                return Poll::Ready(event);
            }
            match Pin::new(&mut listener.inbound).poll_next(cx) {
                Poll::Pending => this.listeners.push_back(listener),
                Poll::Ready(Some((stream, remote))) => {
                    let event = TransportEvent::Incoming {
                        listener_id: listener.id,
                        upgrade: future::ready(Ok(stream)),
                        local_addr: listener.addr.to_multiaddr(),
                        send_back_addr: remote_addr(remote),
                    };
                    this.listeners.push_back(listener);
                    return Poll::Ready(event);
                }
                Poll::Ready(None) => {
                    tracing::debug!(addr = %listener.addr, "BLE listener closed");
                    return Poll::Ready(TransportEvent::ListenerClosed {
                        listener_id: listener.id,
                        reason: Ok(()),
                    });
                }
            }
        }
        Poll::Pending
    }
}

/// The address of an inbound channel's remote end: its device address; the
/// PSM is 0 because the dialer has no listening PSM for this channel.
fn remote_addr(device: DeviceAddress) -> Multiaddr {
    BleAddr { device, psm: 0 }.to_multiaddr()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ble::sim::{Position, SimRadio};
    use libp2p::core::transport::PortUse;
    use libp2p::core::Endpoint;

    fn dial_opts() -> DialOpts {
        DialOpts {
            role: Endpoint::Dialer,
            port_use: PortUse::New,
        }
    }

    fn transport() -> BleTransport<crate::ble::sim::SimNode> {
        BleTransport::new(SimRadio::default().add_node(Position::new(0.0, 0.0), 10.0))
    }

    #[test]
    fn other_multiaddrs_are_not_supported() {
        let mut t = transport();
        for s in [
            "/ip4/127.0.0.1/tcp/0",
            "/ip6/::1/udp/0/quic-v1",
            "/memory/1/tcp/2",
        ] {
            let ma: Multiaddr = s.parse().expect("multiaddr");
            assert!(matches!(
                t.listen_on(ListenerId::next(), ma.clone()),
                Err(TransportError::MultiaddrNotSupported(a)) if a == ma
            ));
            assert!(matches!(
                t.dial(ma.clone(), dial_opts()),
                Err(TransportError::MultiaddrNotSupported(a)) if a == ma
            ));
        }
    }

    #[test]
    fn bad_targets_are_refused() {
        let mut t = transport();
        let no_psm = BleAddr::unpack(0xC000_0000_0009_0000).to_multiaddr();
        assert!(matches!(
            t.dial(no_psm, dial_opts()),
            Err(TransportError::Other(BleError::InvalidDialTarget(_)))
        ));
        let foreign = BleAddr::unpack(0xC000_0000_0009_0080).to_multiaddr();
        assert!(matches!(
            t.listen_on(ListenerId::next(), foreign),
            Err(TransportError::Other(BleError::NotLocalAddress(_)))
        ));
    }

    #[tokio::test]
    async fn listen_reports_the_packed_address_and_can_be_removed() {
        let mut t = transport();
        let local = t.link().local_address();
        let id = ListenerId::next();
        t.listen_on(id, "/memory/0".parse().expect("multiaddr"))
            .expect("listen");
        let event = futures::future::poll_fn(|cx| Pin::new(&mut t).poll(cx)).await;
        match event {
            TransportEvent::NewAddress {
                listener_id,
                listen_addr,
            } => {
                assert_eq!(listener_id, id);
                let a = BleAddr::from_multiaddr(&listen_addr).expect("BLE address");
                assert_eq!(a.device, local);
                assert_eq!(a.psm, crate::ble::DYNAMIC_PSM_MIN);
            }
            other => panic!("unexpected event {other:?}"),
        }
        assert!(t.remove_listener(id));
        assert!(!t.remove_listener(id));
        // The PSM is free again.
        let (psm, _l) = t.link().listen(None).expect("listen");
        assert_eq!(psm, crate::ble::DYNAMIC_PSM_MIN);
    }
}
