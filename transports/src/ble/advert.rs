//! What an Atmosphere advertisement carries.
//!
//! A node advertises, connectable, the service [`SERVICE_UUID`] with
//! [`SERVICE_DATA_LEN`] bytes of service data ([`Advert`]):
//!
//! | bytes | field                                                    |
//! |-------|----------------------------------------------------------|
//! | 0     | format version, [`ADVERT_VERSION`]                        |
//! | 1..7  | peer-id hint: `SHA-256("atmosphere-ble-hint" ‖ peer id)[..6]` |
//! | 7..9  | L2CAP PSM the node listens on, little endian             |
//!
//! The hint only lets a scanner skip itself and peers it already has, and
//! decide which side dials (the lower hint dials); it is never an identity:
//! the peer id is proven by the noise handshake on the channel. A full
//! Ed25519 peer id (38 bytes) would not fit a legacy 31-byte advertisement
//! next to the flags and a 128-bit service UUID; these 9 bytes do
//! (3 + 2 + 16 + 9 = 30). The BlueZ backend also publishes the PSM in the
//! GATT characteristic [`PSM_CHARACTERISTIC_UUID`].

use libp2p::PeerId;
use sha2::{Digest, Sha256};

/// Atmosphere's 128-bit GATT service UUID (random, not SIG-assigned).
pub const SERVICE_UUID: u128 = 0x5c1f_7d3e_8a44_4f0b_9d6e_2b7a_a7e0_0001;
/// GATT characteristic of [`SERVICE_UUID`] holding the PSM (2 bytes, little
/// endian).
pub const PSM_CHARACTERISTIC_UUID: u128 = 0x5c1f_7d3e_8a44_4f0b_9d6e_2b7a_a7e0_0002;
/// Version byte of the service data format.
pub const ADVERT_VERSION: u8 = 1;
/// Length of the peer-id hint.
pub const PEER_HINT_LEN: usize = 6;
/// Length of the service data.
pub const SERVICE_DATA_LEN: usize = 1 + PEER_HINT_LEN + 2;

/// A short, non-authenticated hint of a peer id, carried in advertisements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerHint(pub [u8; PEER_HINT_LEN]);

impl PeerHint {
    /// The hint of `peer`.
    pub fn of(peer: &PeerId) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"atmosphere-ble-hint");
        hasher.update(peer.to_bytes());
        let digest = hasher.finalize();
        let mut hint = [0u8; PEER_HINT_LEN];
        hint.copy_from_slice(&digest[..PEER_HINT_LEN]);
        Self(hint)
    }
}

/// The service data of an Atmosphere advertisement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advert {
    /// Hint of the advertiser's peer id.
    pub peer_hint: PeerHint,
    /// PSM the advertiser listens on.
    pub psm: u16,
}

/// Why service data is not a valid [`Advert`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdvertError {
    /// Wrong length.
    #[error("service data is {0} bytes, expected {SERVICE_DATA_LEN}")]
    Length(usize),
    /// A format version this code does not know.
    #[error("unknown advertisement version {0}")]
    Version(u8),
    /// PSM outside the LE dynamic range.
    #[error("PSM {0:#06x} is not an LE dynamic PSM")]
    Psm(u16),
}

impl Advert {
    /// Encodes the service data.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SERVICE_DATA_LEN);
        out.push(ADVERT_VERSION);
        out.extend_from_slice(&self.peer_hint.0);
        out.extend_from_slice(&self.psm.to_le_bytes());
        out
    }

    /// Decodes service data; rejects anything malformed.
    pub fn decode(data: &[u8]) -> Result<Self, AdvertError> {
        if data.len() != SERVICE_DATA_LEN {
            return Err(AdvertError::Length(data.len()));
        }
        if data[0] != ADVERT_VERSION {
            return Err(AdvertError::Version(data[0]));
        }
        let mut hint = [0u8; PEER_HINT_LEN];
        hint.copy_from_slice(&data[1..1 + PEER_HINT_LEN]);
        let psm = u16::from_le_bytes([data[1 + PEER_HINT_LEN], data[2 + PEER_HINT_LEN]]);
        if !(super::DYNAMIC_PSM_MIN..=super::DYNAMIC_PSM_MAX).contains(&psm) {
            return Err(AdvertError::Psm(psm));
        }
        Ok(Self {
            peer_hint: PeerHint(hint),
            psm,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let advert = Advert {
            peer_hint: PeerHint::of(&PeerId::random()),
            psm: 0x0081,
        };
        let data = advert.encode();
        assert_eq!(data.len(), SERVICE_DATA_LEN);
        assert_eq!(Advert::decode(&data), Ok(advert));
    }

    #[test]
    fn rejects_malformed_service_data() {
        let good = Advert {
            peer_hint: PeerHint([1; PEER_HINT_LEN]),
            psm: 0x0080,
        }
        .encode();
        assert_eq!(Advert::decode(&good[..8]), Err(AdvertError::Length(8)));
        let mut bad_version = good.clone();
        bad_version[0] = 9;
        assert_eq!(Advert::decode(&bad_version), Err(AdvertError::Version(9)));
        let mut bad_psm = good;
        bad_psm[7] = 0x01;
        bad_psm[8] = 0x00;
        assert_eq!(Advert::decode(&bad_psm), Err(AdvertError::Psm(1)));
    }

    #[test]
    fn hints_differ_between_peers_and_are_stable() {
        let a = PeerId::random();
        let b = PeerId::random();
        assert_eq!(PeerHint::of(&a), PeerHint::of(&a));
        assert_ne!(PeerHint::of(&a), PeerHint::of(&b));
    }
}
