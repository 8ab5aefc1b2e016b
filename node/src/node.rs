//! [`Node`] and [`NodeBuilder`]: the embeddable API.

use std::{sync::Arc, time::Duration};

use atmosphere_transports::ble::{upgraded, BleLink, BoxedLink};
use bytes::Bytes;
use libp2p::{
    core::transport::OptionalTransport, identity::Keypair, noise, tcp, yamux, Multiaddr, PeerId,
};
use tokio::sync::{mpsc, oneshot};

use atmosphere_behaviours::pattern::validate_topic;

use crate::{
    config::Config,
    error::{Error, RpcError},
    invite::InviteUri,
    pubsub::{self, Subscription},
    rpc::{self, Handler, HandlerError},
    session::OutboxLimits,
    shared::{write, Limits, Shared},
    store::Store,
    swarm::{Command, MeshBehaviour, Runtime},
    types::{
        CallOptions, Invite, InviteOptions, JoinReport, MeshInfo, NearbyDevice, PairingMode,
        PairingSession, PeerInfo, Request, Status, VERSION,
    },
};

/// Commands queued to the swarm task, at most.
const COMMAND_QUEUE: usize = 1024;
/// File name of the SQLite store inside the data directory.
pub const STORE_FILE: &str = "atmosphere.db";

/// Builds a [`Node`] from a [`Config`].
#[derive(Debug, Clone)]
pub struct NodeBuilder {
    config: Config,
    ble: Option<BoxedLink>,
}

impl NodeBuilder {
    /// A builder for `config`.
    pub fn new(config: Config) -> Self {
        Self { config, ble: None }
    }

    /// Gives the node a Bluetooth LE radio (the simulated one of
    /// [`atmosphere_transports::ble::sim`], or BlueZ with the transports
    /// crate's `bluez` feature). The node then listens on an L2CAP PSM,
    /// advertises, scans, and members it sees become `ble` path candidates
    /// (see `docs/ble.md`).
    pub fn ble(mut self, link: BoxedLink) -> Self {
        self.ble = Some(link);
        self
    }

    /// Opens the store, loads or creates the identity, starts listening and
    /// spawns the swarm task. Must run inside a tokio runtime.
    pub async fn build(self) -> Result<Node, Error> {
        let config = self.config;
        let ble = self.ble;
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            Error::Identity(format!(
                "cannot create data dir {}: {e}",
                config.data_dir.display()
            ))
        })?;
        let store_path = config.data_dir.join(STORE_FILE);
        let store = Store::open(&store_path)?;
        // The store holds the private key: owner-only access.
        restrict_permissions(&config.data_dir, 0o700);
        restrict_permissions(&store_path, 0o600);
        let keypair = load_or_create_identity(&store)?;
        let peer_id = keypair.public().to_peer_id();
        let name = crate::wire::truncate_chars(
            &config
                .name
                .clone()
                .unwrap_or_else(|| default_name(&peer_id)),
            crate::wire::MAX_NAME_LEN,
        );
        let limits = Limits {
            max_payload: config.max_payload,
            subscription_buffer: config.subscription_buffer,
            max_pending_calls: config.max_pending_calls,
        };
        let outbox = OutboxLimits {
            frames: config.outbox_frames,
            bytes: config.outbox_bytes,
            max_payload: config.max_payload,
        };
        let shared = Arc::new(Shared::new(
            peer_id,
            limits,
            config.max_concurrent_handlers,
            outbox,
        ));
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair.clone())
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| Error::Transport(format!("TCP: {e}")))?
            .with_quic()
            .with_other_transport(|key| {
                let radio = match &ble {
                    Some(link) => OptionalTransport::some(upgraded(link.clone(), key)?),
                    None => OptionalTransport::none(),
                };
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(radio)
            })
            .map_err(|e| Error::Transport(format!("BLE: {e}")))?
            .with_relay_client(noise::Config::new, yamux::Config::default)
            .map_err(|e| Error::Transport(format!("relay client: {e}")))?
            .with_behaviour(|key, relay_client| {
                MeshBehaviour::new(key, relay_client, &config, &name, shared.clone())
                    .map_err(Box::from)
            })
            .map_err(|e| Error::Transport(e.to_string()))?
            .with_swarm_config(|c| {
                c.with_idle_connection_timeout(Duration::from_secs(config.idle_timeout_secs))
            })
            .build();
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| Error::Transport(format!("cannot listen on {addr}: {e}")))?;
        }
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let (metrics, registry) = crate::metrics::NodeMetrics::new();
        let mut runtime = Runtime::new(
            swarm,
            keypair,
            shared.clone(),
            store,
            config.clone(),
            name.clone(),
            commands.clone(),
            metrics,
        )?;
        if let Some(link) = ble {
            let sightings = link
                .discover()
                .map_err(|e| Error::Transport(format!("BLE scan: {e}")))?;
            runtime = runtime.with_ble(link)?;
            tokio::spawn(forward_sightings(sightings, commands.clone()));
        }
        tokio::spawn(runtime.run(command_rx));
        let node = Node {
            inner: Arc::new(Inner {
                peer_id,
                name,
                shared,
                commands,
                registry,
            }),
        };
        node.register_builtins().await?;
        node.wait_listening().await;
        tracing::info!(%peer_id, "node started");
        Ok(node)
    }
}

/// Hands BLE sightings to the swarm task; drops them when its queue is full
/// (a scan repeats what it sees).
async fn forward_sightings(
    mut sightings: <BoxedLink as BleLink>::Discovery,
    commands: mpsc::Sender<Command>,
) {
    use futures::StreamExt;
    while let Some(sighting) = sightings.next().await {
        match commands.try_send(Command::BleSighting(sighting)) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => break,
        }
    }
}

fn load_or_create_identity(store: &Store) -> Result<Keypair, Error> {
    match store.load_identity()? {
        Some(bytes) => Keypair::from_protobuf_encoding(&bytes)
            .map_err(|e| Error::Identity(format!("stored identity is unreadable: {e}"))),
        None => {
            let keypair = Keypair::generate_ed25519();
            let bytes = keypair
                .to_protobuf_encoding()
                .map_err(|e| Error::Identity(e.to_string()))?;
            store.save_identity(&bytes)?;
            Ok(keypair)
        }
    }
}

/// Sets unix permission bits; logs (and otherwise ignores) failures, e.g. on
/// file systems without permissions.
fn restrict_permissions(path: &std::path::Path, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
            tracing::warn!(path = %path.display(), error = %e, "cannot restrict permissions");
        }
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
}

fn default_name(peer: &PeerId) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.len() <= 64);
    host.unwrap_or_else(|| {
        let id = peer.to_string();
        format!("node-{}", &id[id.len().saturating_sub(6)..])
    })
}

struct Inner {
    peer_id: PeerId,
    name: String,
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    registry: crate::metrics::SharedRegistry,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let (reply, _) = oneshot::channel();
        let _ = self.commands.try_send(Command::Shutdown { reply });
    }
}

/// A running Atmosphere node: a cheap, cloneable handle to its swarm task.
/// The node stops when [`Node::shutdown`] is called or the last handle is dropped.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("peer_id", &self.inner.peer_id)
            .field("name", &self.inner.name)
            .finish()
    }
}

impl Node {
    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        self.inner.peer_id
    }

    /// Our name.
    pub fn name(&self) -> String {
        self.inner.name.clone()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .commands
            .send(make(tx))
            .await
            .map_err(|_| Error::Shutdown)?;
        rx.await.map_err(|_| Error::Shutdown)
    }

    /// Publishes `payload` on `topic`; returns how many remote subscribers it
    /// was sent to. Local subscribers receive it too. At-most-once: see
    /// [`crate::pubsub`].
    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>) -> Result<usize, Error> {
        pubsub::publish(&self.inner.shared, topic, payload.into()).await
    }

    /// Subscribes to a pattern (`home.*.measured`, `home.**`).
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscription, Error> {
        pubsub::subscribe(&self.inner.shared, &self.inner.commands, pattern).await
    }

    /// Serves RPC calls to `uri` with `handler` and announces it to members.
    pub async fn register<H: Handler>(&self, uri: &str, handler: H) -> Result<(), Error> {
        validate_topic(uri)?;
        {
            let mut handlers = write(&self.inner.shared.handlers);
            if handlers.contains_key(uri) {
                return Err(Error::AlreadyRegistered(uri.to_owned()));
            }
            if handlers.len() >= crate::wire::MAX_ANNOUNCED {
                return Err(Error::Busy(format!(
                    "at most {} registrations per node",
                    crate::wire::MAX_ANNOUNCED
                )));
            }
            handlers.insert(uri.to_owned(), Arc::new(handler));
        }
        self.inner
            .commands
            .send(Command::StateChanged)
            .await
            .map_err(|_| Error::Shutdown)
    }

    /// Stops serving `uri`; returns whether it was registered.
    pub async fn unregister(&self, uri: &str) -> Result<bool, Error> {
        let removed = write(&self.inner.shared.handlers).remove(uri).is_some();
        if removed {
            self.inner
                .commands
                .send(Command::StateChanged)
                .await
                .map_err(|_| Error::Shutdown)?;
        }
        Ok(removed)
    }

    /// Calls `uri` with `args`: a local handler first, else a connected
    /// provider (or `options.peer`).
    pub async fn call(
        &self,
        uri: &str,
        args: impl Into<Bytes>,
        options: CallOptions,
    ) -> Result<Bytes, RpcError> {
        rpc::call(&self.inner.shared, uri, args.into(), options).await
    }

    /// Creates a mesh founded by this node.
    pub async fn create_mesh(&self, name: &str) -> Result<MeshInfo, Error> {
        let name = name.to_owned();
        self.ask(|reply| Command::CreateMesh { name, reply })
            .await?
    }

    /// Creates an invite to `mesh` (id or name; `None` for the only mesh).
    pub async fn invite(
        &self,
        mesh: Option<&str>,
        options: InviteOptions,
    ) -> Result<Invite, Error> {
        let mesh = mesh.map(str::to_owned);
        self.ask(|reply| Command::Invite {
            mesh,
            options,
            reply,
        })
        .await?
    }

    /// Joins a mesh with an invite URI (v2 or the legacy v1 form). The
    /// invite's endpoints are tried local, then public, then relay.
    pub async fn join(&self, uri: &str) -> Result<MeshInfo, Error> {
        Ok(self.join_with_report(uri).await?.mesh)
    }

    /// Joins like [`Node::join`] and reports which invite endpoint
    /// connected and the path the join ended on.
    pub async fn join_with_report(&self, uri: &str) -> Result<JoinReport, Error> {
        let invite = InviteUri::parse(uri)?;
        self.ask(|reply| Command::Join { invite, reply }).await?
    }

    /// Turns reconnection to a mesh's members on (the default) or off.
    /// Off: connections that exist stay, lost ones are not re-dialled, and
    /// a restart does not dial the mesh's members.
    pub async fn set_auto_reconnect(&self, mesh: &str, on: bool) -> Result<MeshInfo, Error> {
        let mesh = mesh.to_owned();
        self.ask(|reply| Command::SetAutoReconnect { mesh, on, reply })
            .await?
    }

    /// Prometheus metrics in OpenMetrics text: libp2p's (`libp2p_…`:
    /// connections, identify, Kademlia, gossipsub, relay, DCUtR) and ours
    /// (`atmosphere_…`: hole punches, time to direct, relay load, AutoNAT).
    pub fn metrics(&self) -> String {
        crate::metrics::encode_text(&self.inner.registry)
    }

    /// The meshes this node is in.
    pub async fn list_meshes(&self) -> Result<Vec<MeshInfo>, Error> {
        self.ask(|reply| Command::ListMeshes { reply }).await?
    }

    /// Leaves a mesh and deletes its credentials.
    pub async fn forget(&self, mesh: &str) -> Result<(), Error> {
        let mesh = mesh.to_owned();
        self.ask(|reply| Command::Forget { mesh, reply }).await?
    }

    /// Members known and peers connected.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, Error> {
        self.ask(|reply| Command::Peers { reply }).await?
    }

    /// Changes in members' reachability (path switches, online/offline) from
    /// now on. A receiver that falls more than 256 events behind gets
    /// `RecvError::Lagged` with the number it missed, then continues.
    pub fn peer_events(&self) -> tokio::sync::broadcast::Receiver<crate::types::PeerEvent> {
        self.inner.shared.peer_events.subscribe()
    }

    /// Devices nearby: advertising Atmosphere over BLE (with a radio, see
    /// [`NodeBuilder::ble`]) or found on the LAN by mDNS. Pair with one by
    /// its `id` ([`Node::pair`]).
    pub async fn nearby(&self) -> Result<Vec<NearbyDevice>, Error> {
        self.ask(|reply| Command::Nearby { reply }).await
    }

    /// Turns pairing mode on for `mesh` (one we founded; `None`: our only
    /// mesh) or off. While on, nearby devices may ask to pair
    /// ([`Node::pair`] on their side); each request becomes a
    /// [`PairingSession`] whose code the user confirms with
    /// [`Node::pair_confirm`]. See `docs/ble.md`.
    pub async fn pair_accept(&self, mesh: Option<&str>, on: bool) -> Result<PairingMode, Error> {
        let mesh = mesh.map(str::to_owned);
        self.ask(|reply| Command::PairAccept { mesh, on, reply })
            .await?
    }

    /// Asks the nearby device `device` (a [`NearbyDevice::id`], a peer id,
    /// or a multiaddr to dial, e.g. a LAN device without mDNS) to pair: dials it if needed and starts the session. Watch it with
    /// [`Node::pairing_events`] or [`Node::pairing_session`]: once its state
    /// is `comparing`, show the code and call [`Node::pair_confirm`] or
    /// [`Node::pair_reject`].
    pub async fn pair(&self, device: &str) -> Result<PairingSession, Error> {
        let device = device.to_owned();
        self.ask(|reply| Command::Pair { device, reply }).await?
    }

    /// The user saw the same code on both screens.
    pub async fn pair_confirm(&self, session: u64) -> Result<PairingSession, Error> {
        self.ask(|reply| Command::PairDecide {
            session,
            confirm: true,
            reply,
        })
        .await?
    }

    /// The user rejects the pairing (the codes differ, or they changed
    /// their mind): the session fails on both sides.
    pub async fn pair_reject(&self, session: u64) -> Result<PairingSession, Error> {
        self.ask(|reply| Command::PairDecide {
            session,
            confirm: false,
            reply,
        })
        .await?
    }

    /// Pairing mode and the recent sessions (at most 16).
    pub async fn pairing(&self) -> Result<(PairingMode, Vec<PairingSession>), Error> {
        self.ask(|reply| Command::PairingState { reply }).await
    }

    /// One recent pairing session.
    pub async fn pairing_session(&self, session: u64) -> Result<PairingSession, Error> {
        let (_, sessions) = self.pairing().await?;
        sessions
            .into_iter()
            .find(|s| s.id == session)
            .ok_or_else(|| Error::Invalid(format!("no pairing session {session}")))
    }

    /// Pairing session updates from now on (bounded like
    /// [`Node::peer_events`]).
    pub fn pairing_events(&self) -> tokio::sync::broadcast::Receiver<PairingSession> {
        self.inner.shared.pairing_events.subscribe()
    }

    /// Our own state.
    pub async fn status(&self) -> Result<Status, Error> {
        self.ask(|reply| Command::Status { reply }).await
    }

    /// Where we listen.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, Error> {
        self.ask(|reply| Command::ListenAddrs { reply }).await
    }

    /// Dials an address (with or without `/p2p/…`).
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), Error> {
        self.ask(|reply| Command::Dial { addr, reply }).await?
    }

    /// Stops the swarm task. Further calls fail with [`Error::Shutdown`].
    pub async fn shutdown(&self) {
        let _ = self.ask(|reply| Command::Shutdown { reply }).await;
    }

    async fn wait_listening(&self) {
        for _ in 0..100 {
            match self.listen_addrs().await {
                Ok(addrs) if !addrs.is_empty() => return,
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(_) => return,
            }
        }
    }

    async fn register_builtins(&self) -> Result<(), Error> {
        self.register("node.echo", |request: Request| async move {
            Ok::<_, HandlerError>(request.args)
        })
        .await?;
        let weak = Arc::downgrade(&self.inner);
        self.register("node.info", move |_request: Request| {
            let inner = weak.upgrade();
            async move {
                let inner = inner.ok_or_else(|| HandlerError::Failed("node stopped".into()))?;
                let node = Node { inner };
                let status = node
                    .status()
                    .await
                    .map_err(|e| HandlerError::Failed(e.to_string()))?;
                let info = serde_json::json!({
                    "peer_id": status.peer_id,
                    "name": status.name,
                    "version": VERSION,
                    "meshes": status.meshes.iter().map(|m| serde_json::json!({"id": m.id, "name": m.name})).collect::<Vec<_>>(),
                    "listen_addrs": status.listen_addrs,
                });
                Ok(Bytes::from(info.to_string()))
            }
        })
        .await
    }
}
