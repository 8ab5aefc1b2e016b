//! The pairing code: six decimal digits both screens show, derived from an
//! X25519 exchange and both peer ids.
//!
//! ```text
//! digest = SHA-256(shared_secret ‖ "atmosphere-pair" ‖ requester_id ‖ acceptor_id)
//! code   = u64::from_be_bytes(digest[0..8]) mod 1_000_000, shown zero-padded
//! ```
//!
//! `shared_secret` is the 32-byte X25519 output of the two ephemeral keys,
//! `requester_id` and `acceptor_id` are the peer ids' bytes
//! ([`PeerId::to_bytes`], self-delimiting multihashes, so the concatenation is
//! unambiguous). The code is never sent: each side computes it and its user
//! compares the two screens.
//!
//! # Why the peer ids are in the code
//!
//! The product seed derives the code from `shared_secret ‖ "atmosphere-pair"`
//! only. That lets a man in the middle win without breaking anything: a node
//! M that holds one libp2p connection to the requester A (which believes it
//! reached the acceptor B) and another to B, and simply *relays* the two
//! public keys unchanged, leaves A and B with the same shared secret, hence
//! the same code on both screens; both users confirm, and B hands its
//! credentials to M. Each libp2p connection is authenticated only to whichever
//! peer id it reached, so nothing else tells A and B apart from M.
//!
//! With the peer ids bound in, A computes its code for (A, M) and B for
//! (M, B): the relayed secret no longer yields matching codes, and a man in the
//! middle that substitutes its own keys gets two unrelated codes anyway. Only
//! a peer that really is at the other end of each side's connection can make
//! the screens agree (up to the 10⁻⁶ chance of guessing six digits, per
//! attempt; a failed comparison ends the session).
//!
//! The modulo bias of `2⁶⁴ mod 10⁶` is below 10⁻¹³ and ignored.

use std::fmt;

use libp2p::PeerId;
use sha2::{Digest, Sha256};
use x25519_dalek::{EphemeralSecret, PublicKey};

/// The domain label hashed between the shared secret and the peer ids.
pub const CODE_DOMAIN: &[u8] = b"atmosphere-pair";

/// Number of distinct codes (six decimal digits).
pub const CODE_SPACE: u64 = 1_000_000;

/// A six-digit pairing code. [`Display`](fmt::Display) shows it zero-padded
/// (`"004217"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PairingCode(u32);

impl PairingCode {
    /// The code as a number below 1 000 000.
    pub fn value(self) -> u32 {
        self.0
    }

    /// The code derived from a 32-byte X25519 `shared_secret` and the two
    /// peers' ids (see the [module docs](self)).
    pub fn derive(shared_secret: &[u8; 32], requester: &PeerId, acceptor: &PeerId) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(shared_secret);
        hasher.update(CODE_DOMAIN);
        hasher.update(requester.to_bytes());
        hasher.update(acceptor.to_bytes());
        let digest = hasher.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        // Below 10⁶, so it fits a u32.
        let code = u64::from_be_bytes(first) % CODE_SPACE;
        Self(u32::try_from(code).unwrap_or_default())
    }
}

impl fmt::Display for PairingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:06}", self.0)
    }
}

/// The remote's public key gave no usable shared secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the peer's X25519 public key is a low-order point")]
pub struct WeakKey;

/// One side's fresh X25519 key for one session.
///
/// The secret is consumed by [`EphemeralKey::derive_code`] and wiped
/// (x25519-dalek zeroizes it, and the shared secret, on drop); neither is
/// kept after the code is derived.
pub struct EphemeralKey {
    secret: EphemeralSecret,
    public: PublicKey,
}

impl fmt::Debug for EphemeralKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EphemeralKey")
            .field("public", &self.public.as_bytes())
            .finish_non_exhaustive()
    }
}

impl EphemeralKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Self {
        let secret = EphemeralSecret::random();
        let public = PublicKey::from(&secret);
        Self { secret, public }
    }

    /// The public half, sent to the peer.
    pub fn public(&self) -> [u8; 32] {
        self.public.to_bytes()
    }

    /// Consumes the key: the code for the exchange with `their_public`.
    ///
    /// Refuses a low-order `their_public` (the shared secret would not depend
    /// on our key), which only a misbehaving peer sends.
    pub fn derive_code(
        self,
        their_public: &[u8; 32],
        requester: &PeerId,
        acceptor: &PeerId,
    ) -> Result<PairingCode, WeakKey> {
        let shared = self.secret.diffie_hellman(&PublicKey::from(*their_public));
        if !shared.was_contributory() {
            return Err(WeakKey);
        }
        Ok(PairingCode::derive(shared.as_bytes(), requester, acceptor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_is_deterministic_and_six_digits() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let secret = [7u8; 32];
        let code = PairingCode::derive(&secret, &a, &b);
        assert_eq!(code, PairingCode::derive(&secret, &a, &b));
        assert!(code.value() < 1_000_000);
        assert_eq!(code.to_string().len(), 6);
        assert!(code.to_string().chars().all(|c| c.is_ascii_digit()));
        assert_eq!(code.to_string().parse::<u32>().unwrap(), code.value());
    }

    #[test]
    fn display_is_zero_padded() {
        assert_eq!(PairingCode(42).to_string(), "000042");
        assert_eq!(PairingCode(0).to_string(), "000000");
        assert_eq!(PairingCode(999_999).to_string(), "999999");
        // Over many secrets, some codes are below 100 000 and still show six
        // digits.
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut small = 0;
        for i in 0..200u8 {
            let code = PairingCode::derive(&[i; 32], &a, &b);
            assert_eq!(code.to_string().len(), 6, "{code}");
            if code.value() < 100_000 {
                small += 1;
            }
        }
        assert!(small > 0, "no code below 100000 in 200 tries");
    }

    #[test]
    fn the_code_follows_the_documented_formula() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let secret = [0xabu8; 32];
        let mut input = secret.to_vec();
        input.extend_from_slice(b"atmosphere-pair");
        input.extend_from_slice(&a.to_bytes());
        input.extend_from_slice(&b.to_bytes());
        let digest = Sha256::digest(&input);
        let expected = u64::from_be_bytes(digest[..8].try_into().unwrap()) % 1_000_000;
        assert_eq!(
            u64::from(PairingCode::derive(&secret, &a, &b).value()),
            expected
        );
    }

    /// The relaying man in the middle: the same secret reaches both victims,
    /// but each computes the code for the peer ids of its own connection.
    #[test]
    fn different_peer_ids_give_different_codes_for_the_same_secret() {
        let (a, b, m) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut differ = 0;
        for i in 0..50u8 {
            let secret = [i; 32];
            let honest = PairingCode::derive(&secret, &a, &b);
            // A requested from M; M requested from B.
            let at_a = PairingCode::derive(&secret, &a, &m);
            let at_b = PairingCode::derive(&secret, &m, &b);
            // Roles are bound too.
            let swapped = PairingCode::derive(&secret, &b, &a);
            if at_a != at_b && at_a != honest && at_b != honest && swapped != honest {
                differ += 1;
            }
        }
        // Each comparison collides with probability 10⁻⁶.
        assert_eq!(differ, 50);
    }

    #[test]
    fn both_sides_of_an_exchange_derive_the_same_code() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let (ka, kb) = (EphemeralKey::generate(), EphemeralKey::generate());
        let (pa, pb) = (ka.public(), kb.public());
        assert_ne!(pa, pb, "fresh keys per session");
        let at_a = ka.derive_code(&pb, &a, &b).unwrap();
        let at_b = kb.derive_code(&pa, &a, &b).unwrap();
        assert_eq!(at_a, at_b);
    }

    #[test]
    fn low_order_keys_are_refused() {
        let (a, b) = (PeerId::random(), PeerId::random());
        assert_eq!(
            EphemeralKey::generate().derive_code(&[0; 32], &a, &b),
            Err(WeakKey)
        );
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(
            EphemeralKey::generate().derive_code(&one, &a, &b),
            Err(WeakKey)
        );
    }
}
