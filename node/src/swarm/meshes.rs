//! Mesh operations of the swarm task: create, invite, join, admit, forget.

use std::time::Duration;

use libp2p::{gossipsub::IdentTopic, PeerId};

use atmosphere_behaviours::membership::{
    cert::{Acl, Certificate, CertificateBody, MeshDescriptor, MeshId, Permissions, Role},
    protocol::JoinRequest,
    JoinResponder,
};

use super::{unix_now, MeshState, Runtime};
use crate::{
    error::Error,
    invite::{self, EndpointGroup, Endpoints, InviteUri},
    shared::write,
    store::{InviteRecord, MeshRecord},
    types::{Invite, InviteOptions, MeshInfo},
    wire,
};

/// The gossipsub topic carrying a mesh's network state.
pub(crate) fn state_topic(mesh: &MeshId) -> IdentTopic {
    IdentTopic::new(format!("atmosphere/{mesh}/state"))
}

/// Longest invite lifetime accepted.
const MAX_INVITE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

impl Runtime {
    /// Loads saved meshes into the membership behaviour and gossipsub.
    pub(super) fn load_meshes(&mut self) -> Result<(), Error> {
        for record in self.store.meshes()? {
            match self.mesh_from_record(&record) {
                Ok(()) => {}
                Err(e) => tracing::warn!(mesh = %record.id, error = %e, "saved mesh skipped"),
            }
        }
        self.refresh_own_acl();
        Ok(())
    }

    fn mesh_from_record(&mut self, record: &MeshRecord) -> Result<(), Error> {
        let id: MeshId = record.id.parse()?;
        let nonce: [u8; 16] = record
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| Error::UnknownMesh(format!("{}: bad nonce", record.id)))?;
        let descriptor = MeshDescriptor {
            id,
            name: record.name.clone(),
            founder_key: record.founder_key.clone(),
            nonce,
        };
        let certificate = Certificate::from_cbor(&record.certificate)?;
        self.install_mesh(descriptor, certificate, record.is_founder)
    }

    /// Makes a mesh live: membership trust, gossipsub topic, ACL.
    fn install_mesh(
        &mut self,
        descriptor: MeshDescriptor,
        certificate: Certificate,
        is_founder: bool,
    ) -> Result<(), Error> {
        let founder = descriptor.verify()?;
        let body = certificate.verify(&founder, unix_now().max(0) as u64)?;
        let acl = body.permissions.compile()?;
        let topic = state_topic(&descriptor.id);
        if let Err(e) = self.swarm.behaviour_mut().gossipsub.subscribe(&topic) {
            tracing::warn!(error = %e, "could not subscribe to the mesh state topic");
        }
        self.topics.insert(topic.hash(), descriptor.id);
        self.swarm
            .behaviour_mut()
            .membership
            .add_mesh(descriptor.id, founder, certificate.clone());
        self.meshes.insert(
            descriptor.id,
            MeshState {
                descriptor,
                is_founder,
                certificate,
                acl,
                topic,
            },
        );
        // A new mesh may make recently refused peers acceptable.
        self.forget_member_hints();
        self.rejected.clear();
        self.rejected_order.clear();
        Ok(())
    }

    /// Recomputes our own ACL: the union over our meshes, or everything when
    /// we are in none (then only local delivery exists).
    pub(super) fn refresh_own_acl(&mut self) {
        let acl = if self.meshes.is_empty() {
            Acl::all()
        } else {
            self.meshes
                .values()
                .fold(Acl::default(), |acc, m| acc.union(&m.acl))
        };
        *write(&self.shared.own_acl) = acl;
    }

    pub(super) fn create_mesh(&mut self, name: &str) -> Result<MeshInfo, Error> {
        let nonce: [u8; 16] = rand::random();
        let descriptor = MeshDescriptor::new(name, &self.keypair.public(), nonce)?;
        let now = unix_now();
        let body = CertificateBody {
            mesh: descriptor.id,
            peer: self.local_peer(),
            role: Role::Founder,
            permissions: Permissions::all(),
            issued_at: now.max(0) as u64,
            expires_at: None,
        };
        let certificate = Certificate::sign(&body, &self.keypair)?;
        self.store.save_mesh(&MeshRecord {
            id: descriptor.id.to_string(),
            name: descriptor.name.clone(),
            founder_key: descriptor.founder_key.clone(),
            nonce: descriptor.nonce.to_vec(),
            is_founder: true,
            certificate: certificate.to_cbor(),
            joined_at: now,
        })?;
        self.save_self_member(&descriptor.id, &body)?;
        let id = descriptor.id;
        self.install_mesh(descriptor, certificate, true)?;
        self.refresh_own_acl();
        tracing::info!(mesh = %id, %name, "mesh created");
        self.mesh_info(&id)
    }

    fn save_self_member(&mut self, mesh: &MeshId, body: &CertificateBody) -> Result<(), Error> {
        let mut cbor = Vec::new();
        wire::encode(body, &mut cbor);
        self.store.save_member(
            &mesh.to_string(),
            &self.local_peer().to_string(),
            &cbor,
            unix_now(),
        )?;
        Ok(())
    }

    /// Finds a mesh by id or name; `None` means "the only mesh".
    pub(super) fn resolve_mesh(&self, mesh: Option<&str>) -> Result<MeshId, Error> {
        match mesh {
            None => {
                let mut ids = self.meshes.keys();
                match (ids.next(), ids.next()) {
                    (Some(id), None) => Ok(*id),
                    (None, _) => Err(Error::Invalid(
                        "this node is in no mesh: create or join one first".into(),
                    )),
                    (Some(_), Some(_)) => Err(Error::Invalid(
                        "this node is in several meshes: name one (id or name)".into(),
                    )),
                }
            }
            Some(text) => {
                if let Ok(id) = text.parse::<MeshId>() {
                    if self.meshes.contains_key(&id) {
                        return Ok(id);
                    }
                }
                let named: Vec<MeshId> = self
                    .meshes
                    .values()
                    .filter(|m| m.descriptor.name == text)
                    .map(|m| m.descriptor.id)
                    .collect();
                match named.as_slice() {
                    [id] => Ok(*id),
                    [] => Err(Error::UnknownMesh(text.to_owned())),
                    _ => Err(Error::AmbiguousMesh(text.to_owned())),
                }
            }
        }
    }

    pub(super) fn invite(
        &mut self,
        mesh: Option<&str>,
        options: InviteOptions,
    ) -> Result<Invite, Error> {
        let id = self.resolve_mesh(mesh)?;
        let Some(state) = self.meshes.get(&id) else {
            return Err(Error::UnknownMesh(id.to_string()));
        };
        if !state.is_founder {
            return Err(Error::NotFounder(id.to_string()));
        }
        if options.uses == 0 {
            return Err(Error::Invalid("an invite needs at least one use".into()));
        }
        if options.ttl.is_zero() || options.ttl > MAX_INVITE_TTL {
            return Err(Error::Invalid(format!(
                "invite lifetime must be between 1 s and {} days",
                MAX_INVITE_TTL.as_secs() / 86400
            )));
        }
        options.permissions.compile()?;
        let name = state.descriptor.name.clone();
        let token = invite::new_token();
        let now = unix_now();
        let expires_at = now + options.ttl.as_secs() as i64;
        let mut permissions = Vec::new();
        wire::encode(&options.permissions, &mut permissions);
        self.store.create_invite(&InviteRecord {
            secret_hash: invite::token_hash(&token),
            mesh_id: id.to_string(),
            uses_left: options.uses,
            expires_at,
            created_at: now,
            permissions,
        })?;
        let local = self.local_peer();
        let mut endpoints = Endpoints::default();
        let mut loopback = Vec::new();
        for addr in self.advertised_addrs() {
            let with_peer = addr.with_p2p(local).unwrap_or_else(|a| a);
            let is_loopback = with_peer.iter().any(|p| {
                matches!(p, libp2p::multiaddr::Protocol::Ip4(ip) if ip.is_loopback())
                    || matches!(p, libp2p::multiaddr::Protocol::Ip6(ip) if ip.is_loopback())
            });
            match EndpointGroup::of(&with_peer) {
                EndpointGroup::Relay => endpoints.relay.push(with_peer),
                EndpointGroup::Public => endpoints.public.push(with_peer),
                EndpointGroup::Local if is_loopback => loopback.push(with_peer),
                EndpointGroup::Local => endpoints.local.push(with_peer),
            }
        }
        // Loopback last: useful for nodes on the same machine, tried after the LAN.
        endpoints.local.extend(loopback);
        endpoints.local.truncate(invite::MAX_ENDPOINTS_PER_GROUP);
        endpoints.public.truncate(invite::MAX_ENDPOINTS_PER_GROUP);
        endpoints.relay.truncate(invite::MAX_ENDPOINTS_PER_GROUP);
        let uri = InviteUri {
            token,
            mesh: id,
            name: Some(name.clone()),
            endpoints,
        };
        Ok(Invite {
            uri: uri.to_uri(),
            mesh_id: id.to_string(),
            mesh_name: name,
            uses: options.uses,
            expires_at,
        })
    }

    /// A peer redeems an invite with us (we are the founder).
    pub(super) fn on_join_request(
        &mut self,
        peer: PeerId,
        request: JoinRequest,
        responder: JoinResponder,
    ) {
        let outcome = self.admit(peer, &request);
        let membership = &mut self.swarm.behaviour_mut().membership;
        match outcome {
            Ok((descriptor, certificate)) => {
                tracing::info!(%peer, mesh = %request.mesh, "member admitted");
                membership.accept_join(responder, descriptor, certificate);
            }
            Err(reason) => {
                tracing::info!(%peer, mesh = %request.mesh, %reason, "join refused");
                membership.refuse_join(responder, reason);
            }
        }
    }

    fn admit(
        &mut self,
        peer: PeerId,
        request: &JoinRequest,
    ) -> Result<(MeshDescriptor, Certificate), String> {
        let state = self
            .meshes
            .get(&request.mesh)
            .ok_or_else(|| format!("unknown mesh {}", request.mesh))?;
        if !state.is_founder {
            return Err("this node is not the mesh's founder".into());
        }
        let descriptor = state.descriptor.clone();
        invite::check_token(&request.token).map_err(|e| e.to_string())?;
        let now = unix_now();
        let record = match self.store.redeem_invite(
            &request.mesh.to_string(),
            &invite::token_hash(&request.token),
            now,
        ) {
            Ok(Ok(record)) => record,
            Ok(Err(refusal)) => return Err(refusal.to_string()),
            Err(e) => {
                tracing::warn!(error = %e, "store failed while redeeming an invite");
                return Err("the founder could not record the join; try again".into());
            }
        };
        let permissions: Permissions =
            wire::decode(&record.permissions).unwrap_or_else(|_| Permissions::all());
        let body = CertificateBody {
            mesh: request.mesh,
            peer,
            role: Role::Member,
            permissions,
            issued_at: now.max(0) as u64,
            expires_at: None,
        };
        let certificate = Certificate::sign(&body, &self.keypair).map_err(|e| e.to_string())?;
        let mut cbor = Vec::new();
        wire::encode(&body, &mut cbor);
        if let Err(e) =
            self.store
                .save_member(&request.mesh.to_string(), &peer.to_string(), &cbor, now)
        {
            tracing::warn!(error = %e, "could not save the new member");
        }
        Ok((descriptor, certificate))
    }

    /// Our invite was accepted.
    pub(super) fn on_joined(
        &mut self,
        peer: PeerId,
        descriptor: MeshDescriptor,
        certificate: Certificate,
    ) {
        let id = descriptor.id;
        let result = (|| -> Result<MeshInfo, Error> {
            let now = unix_now();
            self.store.save_mesh(&MeshRecord {
                id: id.to_string(),
                name: descriptor.name.clone(),
                founder_key: descriptor.founder_key.clone(),
                nonce: descriptor.nonce.to_vec(),
                is_founder: false,
                certificate: certificate.to_cbor(),
                joined_at: now,
            })?;
            let body = certificate.body()?;
            self.save_self_member(&id, &body)?;
            self.install_mesh(descriptor, certificate, false)?;
            self.refresh_own_acl();
            self.mesh_info(&id)
        })();
        match &result {
            Ok(_) => tracing::info!(mesh = %id, %peer, "joined mesh"),
            Err(e) => tracing::warn!(mesh = %id, error = %e, "joined but could not save the mesh"),
        }
        match self.joins.get_mut(&peer) {
            Some(join) if join.mesh == id && result.is_ok() => {
                // Answered once the founder is verified (see `on_verified`).
                join.admitted = result.ok();
            }
            Some(join) => {
                let answer = if join.mesh == id {
                    result
                } else {
                    Err(Error::Join("admitted to another mesh".into()))
                };
                self.finish_join(peer, answer);
            }
            None => {}
        }
    }

    pub(super) fn list_meshes(&self) -> Result<Vec<MeshInfo>, Error> {
        let mut list: Vec<MeshInfo> = self
            .meshes
            .keys()
            .map(|id| self.mesh_info(id))
            .collect::<Result<_, _>>()?;
        list.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        Ok(list)
    }

    pub(super) fn forget(&mut self, mesh: &str) -> Result<(), Error> {
        let id = self.resolve_mesh(Some(mesh))?;
        self.store.delete_mesh(&id.to_string())?;
        if let Some(state) = self.meshes.remove(&id) {
            self.topics.remove(&state.topic.hash());
            self.swarm
                .behaviour_mut()
                .gossipsub
                .unsubscribe(&state.topic);
        }
        let dropped = self.swarm.behaviour_mut().membership.remove_mesh(&id);
        for peer in dropped {
            self.shared.remove_remote(&peer);
            self.swarm.behaviour_mut().train.unwatch(&peer);
            self.swarm.behaviour_mut().kad.remove_peer(&peer);
        }
        // Peers still sharing other meshes keep only those meshes' grants.
        let membership = &self.swarm.behaviour().membership;
        for (peer, remote) in write(&self.shared.remotes).iter_mut() {
            if let Some(meshes) = membership.verified(peer) {
                remote.acl = super::acl_of(peer, meshes);
            }
        }
        for entry in self.directory.values_mut() {
            entry.meshes.remove(&id);
        }
        self.refresh_own_acl();
        self.forget_member_hints();
        tracing::info!(mesh = %id, "mesh forgotten");
        Ok(())
    }
}
