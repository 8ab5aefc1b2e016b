//! Mesh identities and membership certificates.
//!
//! A mesh is identified by a [`MeshId`] bound to its founder's public key: the
//! id is the first 16 bytes of `SHA-256("atmosphere-mesh-v1" ‖ founder key ‖ nonce)`.
//! Anyone holding the [`MeshDescriptor`] can check that binding, so a joiner who
//! knows the mesh id from an invite cannot be handed a different founder.
//!
//! A [`Certificate`] says that a peer is a member of a mesh, with a role and
//! permissions, and is signed by the founder's libp2p identity key. The signed
//! bytes are kept as they were signed (CBOR), so verification never depends on
//! re-encoding.

use std::{fmt, str::FromStr};

use libp2p::{
    identity::{Keypair, PublicKey},
    PeerId,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::pattern::{Pattern, PatternError};

/// The longest mesh name accepted, in bytes.
pub const MAX_MESH_NAME_LEN: usize = 64;

/// Largest number of patterns in one permission list.
pub const MAX_PERMISSION_PATTERNS: usize = 64;

const MESH_DOMAIN: &[u8] = b"atmosphere-mesh-v1";
const CERT_DOMAIN: &[u8] = b"atmosphere-cert-v1";

/// Errors about meshes and certificates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// A mesh id string is not 32 hex digits.
    #[error("`{0}` is not a mesh id (32 hex digits)")]
    InvalidMeshId(String),
    /// The mesh name is empty or too long.
    #[error("a mesh name must be 1 to {MAX_MESH_NAME_LEN} bytes")]
    InvalidMeshName,
    /// The founder key in a descriptor cannot be decoded.
    #[error("the mesh's founder key cannot be decoded")]
    InvalidFounderKey,
    /// The mesh id does not match the founder key and nonce.
    #[error("the mesh id does not belong to this founder key")]
    MeshIdMismatch,
    /// The certificate's bytes are not a certificate.
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// The signature does not verify under the mesh founder's key.
    #[error("certificate signature is invalid")]
    BadSignature,
    /// The certificate has expired.
    #[error("certificate expired")]
    Expired,
    /// The certificate is for another mesh or another peer.
    #[error("certificate is for {0}")]
    WrongSubject(&'static str),
    /// A permission pattern is invalid.
    #[error("invalid permission pattern: {0}")]
    Permission(#[from] PatternError),
    /// Too many patterns in a permission list.
    #[error("at most {MAX_PERMISSION_PATTERNS} patterns per permission list")]
    TooManyPatterns,
    /// Signing failed.
    #[error("signing failed: {0}")]
    Signing(String),
}

/// A mesh's id: 16 bytes, shown as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MeshId(#[serde(with = "serde_bytes")] [u8; 16]);

impl MeshId {
    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The id bound to `founder` and `nonce`.
    pub fn derive(founder: &PublicKey, nonce: &[u8; 16]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(MESH_DOMAIN);
        hasher.update(founder.encode_protobuf());
        hasher.update(nonce);
        let digest = hasher.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        Self(id)
    }
}

impl fmt::Display for MeshId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for MeshId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MeshId({self})")
    }
}

impl FromStr for MeshId {
    type Err = CertError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || CertError::InvalidMeshId(s.chars().take(40).collect());
        if s.len() != 32 || !s.is_ascii() {
            return Err(bad());
        }
        let mut id = [0u8; 16];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(id))
    }
}

/// Everything needed to recognise a mesh: id, name, founder key and nonce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshDescriptor {
    /// The mesh id (bound to `founder_key` and `nonce`).
    pub id: MeshId,
    /// The human-readable name given by the founder.
    pub name: String,
    /// The founder's public key, protobuf-encoded (libp2p's encoding).
    #[serde(with = "serde_bytes")]
    pub founder_key: Vec<u8>,
    /// The random nonce chosen at creation.
    #[serde(with = "serde_bytes")]
    pub nonce: [u8; 16],
}

impl MeshDescriptor {
    /// A descriptor for a new mesh founded by `founder` with a fresh `nonce`.
    pub fn new(name: &str, founder: &PublicKey, nonce: [u8; 16]) -> Result<Self, CertError> {
        check_mesh_name(name)?;
        Ok(Self {
            id: MeshId::derive(founder, &nonce),
            name: name.to_owned(),
            founder_key: founder.encode_protobuf(),
            nonce,
        })
    }

    /// Checks the name and the id's binding to the founder key; returns the key.
    pub fn verify(&self) -> Result<PublicKey, CertError> {
        check_mesh_name(&self.name)?;
        let key = PublicKey::try_decode_protobuf(&self.founder_key)
            .map_err(|_| CertError::InvalidFounderKey)?;
        if MeshId::derive(&key, &self.nonce) != self.id {
            return Err(CertError::MeshIdMismatch);
        }
        Ok(key)
    }

    /// The founder's peer id, if the key decodes.
    pub fn founder(&self) -> Option<PeerId> {
        PublicKey::try_decode_protobuf(&self.founder_key)
            .ok()
            .map(|k| k.to_peer_id())
    }
}

/// Checks a mesh name: 1 to [`MAX_MESH_NAME_LEN`] bytes, no control characters.
pub fn check_mesh_name(name: &str) -> Result<(), CertError> {
    if name.trim().is_empty()
        || name.len() > MAX_MESH_NAME_LEN
        || name.chars().any(|c| c.is_control())
    {
        return Err(CertError::InvalidMeshName);
    }
    Ok(())
}

/// A member's role in a mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Created the mesh; signs certificates.
    Founder,
    /// May administer the mesh (reserved for delegated signing).
    Admin,
    /// An ordinary member.
    Member,
}

/// Topic ACLs: which topics a member may publish to, subscribe to, and which
/// RPC URIs it may call. Each list holds patterns (see [`crate::pattern`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permissions {
    /// Patterns of topics the member may publish to.
    pub publish: Vec<String>,
    /// Patterns of topics the member may subscribe to.
    pub subscribe: Vec<String>,
    /// Patterns of RPC URIs the member may call.
    pub call: Vec<String>,
}

impl Permissions {
    /// Everything allowed (`**` in each list): the default for invites.
    pub fn all() -> Self {
        let all = vec!["**".to_owned()];
        Self {
            publish: all.clone(),
            subscribe: all.clone(),
            call: all,
        }
    }

    /// Parses every pattern, for fast checks.
    pub fn compile(&self) -> Result<Acl, CertError> {
        fn list(patterns: &[String]) -> Result<Vec<Pattern>, CertError> {
            if patterns.len() > MAX_PERMISSION_PATTERNS {
                return Err(CertError::TooManyPatterns);
            }
            patterns
                .iter()
                .map(|p| Pattern::parse(p).map_err(CertError::from))
                .collect()
        }
        Ok(Acl {
            publish: list(&self.publish)?,
            subscribe: list(&self.subscribe)?,
            call: list(&self.call)?,
        })
    }
}

impl Default for Permissions {
    fn default() -> Self {
        Self::all()
    }
}

/// Compiled [`Permissions`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    publish: Vec<Pattern>,
    subscribe: Vec<Pattern>,
    call: Vec<Pattern>,
}

impl Acl {
    /// Everything allowed.
    pub fn all() -> Self {
        Permissions::all().compile().unwrap_or_default() // ok: `**` always parses
    }
    /// Whether publishing to `topic` is allowed.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|p| p.matches(topic))
    }
    /// Whether subscribing to `topic` is allowed (checked per delivered message).
    pub fn may_subscribe(&self, topic: &str) -> bool {
        self.subscribe.iter().any(|p| p.matches(topic))
    }
    /// Whether calling `uri` is allowed.
    pub fn may_call(&self, uri: &str) -> bool {
        self.call.iter().any(|p| p.matches(uri))
    }
    /// The union of two ACLs (a peer sharing several meshes gets every grant).
    pub fn union(mut self, other: &Acl) -> Acl {
        self.publish.extend(other.publish.iter().cloned());
        self.subscribe.extend(other.subscribe.iter().cloned());
        self.call.extend(other.call.iter().cloned());
        self
    }
}

/// The signed content of a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateBody {
    /// The mesh this certificate admits to.
    pub mesh: MeshId,
    /// The member.
    pub peer: PeerId,
    /// Its role.
    pub role: Role,
    /// Its permissions.
    pub permissions: Permissions,
    /// Unix seconds when issued.
    pub issued_at: u64,
    /// Unix seconds after which it is no longer valid; `None` for no expiry.
    pub expires_at: Option<u64>,
}

/// A membership certificate: CBOR of a [`CertificateBody`] and the founder's
/// signature over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// The CBOR-encoded body, exactly as signed.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// The founder's signature over `"atmosphere-cert-v1" ‖ body`.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl Certificate {
    /// Signs `body` with the founder's `keypair`.
    pub fn sign(body: &CertificateBody, keypair: &Keypair) -> Result<Self, CertError> {
        let mut bytes = Vec::new();
        ciborium::into_writer(body, &mut bytes).map_err(|e| CertError::Signing(e.to_string()))?;
        let signature = keypair
            .sign(&signed_message(&bytes))
            .map_err(|e| CertError::Signing(e.to_string()))?;
        Ok(Self {
            body: bytes,
            signature,
        })
    }

    /// Decodes the body without checking the signature.
    pub fn body(&self) -> Result<CertificateBody, CertError> {
        ciborium::from_reader(self.body.as_slice()).map_err(|e| CertError::Malformed(e.to_string()))
    }

    /// Checks the signature under `founder` and the expiry at `now` (unix
    /// seconds); returns the body.
    pub fn verify(&self, founder: &PublicKey, now: u64) -> Result<CertificateBody, CertError> {
        if !founder.verify(&signed_message(&self.body), &self.signature) {
            return Err(CertError::BadSignature);
        }
        let body = self.body()?;
        if body.expires_at.is_some_and(|t| t <= now) {
            return Err(CertError::Expired);
        }
        Ok(body)
    }

    /// Encodes the certificate as CBOR (for storage).
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // ok: writing to a Vec cannot fail and the struct always serialises.
        let _ = ciborium::into_writer(self, &mut out);
        out
    }

    /// Decodes a certificate stored with [`Certificate::to_cbor`].
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, CertError> {
        ciborium::from_reader(bytes).map_err(|e| CertError::Malformed(e.to_string()))
    }
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(CERT_DOMAIN.len() + body.len());
    msg.extend_from_slice(CERT_DOMAIN);
    msg.extend_from_slice(body);
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(mesh: MeshId, peer: PeerId, expires_at: Option<u64>) -> CertificateBody {
        CertificateBody {
            mesh,
            peer,
            role: Role::Member,
            permissions: Permissions::all(),
            issued_at: 100,
            expires_at,
        }
    }

    #[test]
    fn descriptor_binds_id_to_founder() {
        let founder = Keypair::generate_ed25519();
        let mesh = MeshDescriptor::new("home", &founder.public(), [7; 16]).unwrap();
        assert_eq!(mesh.verify().unwrap(), founder.public());
        assert_eq!(mesh.founder(), Some(founder.public().to_peer_id()));
        let other = Keypair::generate_ed25519();
        let forged = MeshDescriptor {
            founder_key: other.public().encode_protobuf(),
            ..mesh.clone()
        };
        assert_eq!(forged.verify(), Err(CertError::MeshIdMismatch));
        assert_eq!(mesh.id.to_string().parse::<MeshId>().unwrap(), mesh.id);
        assert!("xyz".parse::<MeshId>().is_err());
        assert!("zz".repeat(16).parse::<MeshId>().is_err());
        assert!(MeshDescriptor::new("", &founder.public(), [0; 16]).is_err());
    }

    #[test]
    fn certificate_verifies_only_under_founder_and_before_expiry() {
        let founder = Keypair::generate_ed25519();
        let mesh = MeshDescriptor::new("home", &founder.public(), [1; 16]).unwrap();
        let member = PeerId::random();
        let cert = Certificate::sign(&body(mesh.id, member, Some(1_000)), &founder).unwrap();
        let decoded = cert.verify(&founder.public(), 500).unwrap();
        assert_eq!(decoded.peer, member);
        assert_eq!(
            cert.verify(&founder.public(), 1_000),
            Err(CertError::Expired)
        );
        let stranger = Keypair::generate_ed25519();
        assert_eq!(
            cert.verify(&stranger.public(), 500),
            Err(CertError::BadSignature)
        );
        let mut tampered = cert.clone();
        tampered.body[5] ^= 1;
        assert_eq!(
            tampered.verify(&founder.public(), 500),
            Err(CertError::BadSignature)
        );
        assert_eq!(Certificate::from_cbor(&cert.to_cbor()).unwrap(), cert);
        assert!(Certificate::from_cbor(b"\xff\x00garbage").is_err());
    }

    #[test]
    fn acl_checks_patterns() {
        let acl = Permissions {
            publish: vec!["home.**".into()],
            subscribe: vec!["**".into()],
            call: vec!["node.*".into()],
        }
        .compile()
        .unwrap();
        assert!(acl.may_publish("home.kitchen"));
        assert!(!acl.may_publish("office.kitchen"));
        assert!(acl.may_call("node.info"));
        assert!(!acl.may_call("admin.reset"));
        assert!(Acl::all().may_call("anything.at.all"));
        let bad = Permissions {
            publish: vec!["a..b".into()],
            ..Permissions::all()
        };
        assert!(bad.compile().is_err());
    }
}
