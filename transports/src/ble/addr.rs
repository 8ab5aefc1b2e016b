//! The BLE multiaddr form.
//!
//! Multiaddr has no Bluetooth protocol code, so (as rust-libp2p PR #6191 did)
//! a BLE endpoint is written `/memory/<u64>` where the `u64` is
//! `(device_address << 16) | psm`: the 48-bit device address in the high
//! bits, the 16-bit L2CAP PSM in the low bits. A trailing `/p2p/<peer id>` is
//! accepted. Anything else is not a BLE address.
//!
//! Address 0 means "this radio" and PSM 0 means "pick a dynamic PSM"; both are
//! only meaningful in `listen_on`.
//!
//! Caveat: libp2p's own `MemoryTransport` uses the same form; do not put both
//! in one swarm.

use libp2p::multiaddr::{Multiaddr, Protocol};

/// A 48-bit Bluetooth device address, stored in the low 48 bits of a `u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceAddress(u64);

impl DeviceAddress {
    /// Largest valid address value (48 bits).
    pub const MAX: u64 = (1 << 48) - 1;

    /// Builds an address from its 48-bit value; `None` if it does not fit.
    pub fn new(value: u64) -> Option<Self> {
        (value <= Self::MAX).then_some(Self(value))
    }

    /// Builds an address from six bytes, most significant first (the order
    /// addresses are printed in).
    pub fn from_bytes(bytes: [u8; 6]) -> Self {
        let mut v = [0u8; 8];
        v[2..].copy_from_slice(&bytes);
        Self(u64::from_be_bytes(v))
    }

    /// The six bytes, most significant first.
    pub fn to_bytes(self) -> [u8; 6] {
        let v = self.0.to_be_bytes();
        let mut out = [0u8; 6];
        out.copy_from_slice(&v[2..]);
        out
    }

    /// The 48-bit value.
    pub fn value(self) -> u64 {
        self.0
    }
}

/// A BLE endpoint: device address + L2CAP PSM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BleAddr {
    /// Device address (0: this radio, in `listen_on`).
    pub device: DeviceAddress,
    /// L2CAP PSM (0: pick a dynamic PSM, in `listen_on`).
    pub psm: u16,
}

impl BleAddr {
    /// Packs into the `u64` carried by `/memory/<u64>`.
    pub fn pack(self) -> u64 {
        (self.device.0 << 16) | u64::from(self.psm)
    }

    /// Unpacks a `u64` from `/memory/<u64>`. Every `u64` is valid.
    pub fn unpack(value: u64) -> Self {
        Self {
            device: DeviceAddress(value >> 16),
            psm: (value & 0xFFFF) as u16,
        }
    }

    /// The multiaddr `/memory/<packed>`.
    pub fn to_multiaddr(self) -> Multiaddr {
        Multiaddr::empty().with(Protocol::Memory(self.pack()))
    }

    /// Parses `/memory/<u64>` optionally followed by `/p2p/<peer id>`;
    /// `None` for any other multiaddr.
    pub fn from_multiaddr(addr: &Multiaddr) -> Option<Self> {
        let mut it = addr.iter();
        let value = match it.next() {
            Some(Protocol::Memory(v)) => v,
            _ => return None,
        };
        match (it.next(), it.next()) {
            (None, _) | (Some(Protocol::P2p(_)), None) => Some(Self::unpack(value)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::PeerId;

    #[test]
    fn pack_unpack_round_trip() {
        let cases = [
            (0u64, 0u16),
            (1, 0x80),
            (0xC0FF_EE12_3456, 0x00FF),
            (DeviceAddress::MAX, u16::MAX),
        ];
        for (dev, psm) in cases {
            let a = BleAddr {
                device: DeviceAddress::new(dev).expect("48-bit"),
                psm,
            };
            assert_eq!(BleAddr::unpack(a.pack()), a);
            let ma = a.to_multiaddr();
            assert_eq!(BleAddr::from_multiaddr(&ma), Some(a));
            let parsed: Multiaddr = ma.to_string().parse().expect("valid multiaddr");
            assert_eq!(BleAddr::from_multiaddr(&parsed), Some(a));
        }
    }

    #[test]
    fn packing_layout() {
        let a = BleAddr {
            device: DeviceAddress::from_bytes([0xC0, 0x11, 0x22, 0x33, 0x44, 0x55]),
            psm: 0x0081,
        };
        assert_eq!(a.pack(), 0xC011_2233_4455_0081);
        assert_eq!(a.to_multiaddr().to_string(), "/memory/13839880733471342721");
        assert_eq!(
            a.to_multiaddr().to_string(),
            format!("/memory/{}", 0xC011_2233_4455_0081u64)
        );
        assert_eq!(a.device.to_string(), "C0:11:22:33:44:55");
        assert_eq!(a.device.to_bytes(), [0xC0, 0x11, 0x22, 0x33, 0x44, 0x55]);
    }

    #[test]
    fn device_address_bounds() {
        assert!(DeviceAddress::new(1 << 48).is_none());
        assert!(DeviceAddress::new(DeviceAddress::MAX).is_some());
    }

    #[test]
    fn trailing_peer_id_accepted() {
        let a = BleAddr::unpack(0xC000_0000_0001_0080);
        let ma = a.to_multiaddr().with(Protocol::P2p(PeerId::random()));
        assert_eq!(BleAddr::from_multiaddr(&ma), Some(a));
    }

    #[test]
    fn other_multiaddrs_rejected() {
        for s in [
            "/ip4/127.0.0.1/tcp/1234",
            "/ip6/::1/udp/1/quic-v1",
            "/memory/5/memory/6",
            "/memory/5/tcp/1",
            "/dns/example.com/tcp/1",
        ] {
            let ma: Multiaddr = s.parse().expect("valid multiaddr");
            assert_eq!(BleAddr::from_multiaddr(&ma), None, "{s}");
        }
        assert_eq!(BleAddr::from_multiaddr(&Multiaddr::empty()), None);
        let p2p_then_more = Multiaddr::empty()
            .with(Protocol::Memory(1))
            .with(Protocol::P2p(PeerId::random()))
            .with(Protocol::Memory(2));
        assert_eq!(BleAddr::from_multiaddr(&p2p_then_more), None);
    }
}
