//! The peer protocol: two gateways exchange keys and policy for protected files over the control
//! instance (`privitty-ctl.xdc`) of their one-to-one chat, so a `.prv` sent from one gateway can be
//! opened on the other and its owner can still grant, deny and revoke access afterwards.
//!
//! Owns: the agent that reads engine events about control instances (and keeps them off
//! `/events`), the outbox that sends and resends, and the peer methods (`privitty_*` that talk to
//! another gateway or read what one sent). `wire` owns the bytes and the cryptography, `state`
//! the rules; `PEER-PROTOCOL.md` documents both. Must not: check the license per method (edged's
//! gate does, before a call gets here) except for work it starts by itself (answering a peer,
//! sending the outbox), which needs a usable license exactly like a gated call; write plaintext
//! anywhere but the files directory through `privitty_decrypt_file`.

pub mod state;
pub mod wire;
mod xdc;

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, watch};
use uuid::Uuid;

use crate::engine::{ACCOUNT_ID, Engine};
use crate::events::Hub;
use crate::files::FilesDir;
use crate::license::License;
use crate::privitty::params::Params;
use crate::privitty::{
    self, FileKey, Header, Privitty, PrivittyError, PrvReader, read_capped, rfc3339, write_atomic,
};
use crate::rpc::RpcError;
use state::{Access, ActionError, ChatPeer, Ctx, Effects, State};
use wire::Identity;

/// Directory of the peer files inside the key store.
pub const PEER_DIR: &str = "peer";
/// The control app's file name: how a control instance is recognised.
pub const XDC_NAME: &str = "privitty-ctl.xdc";
/// Largest state file read back (a bigger one is refused, not truncated).
const MAX_STATE_BYTES: u64 = 64 * 1024 * 1024;
/// JSON-RPC error: the grant forbids what was asked (download, forward), or access ended.
pub const ACCESS_DENIED: i64 = -32032;
/// JSON-RPC error: the key of a received file has not arrived yet.
pub const KEY_PENDING: i64 = -32033;
/// JSON-RPC error: the message has no `.prv` file (or it is still downloading).
pub const NOT_A_PROTECTED_FILE: i64 = -32034;
/// JSON-RPC error: the peer's handshake is not complete.
pub const NO_HANDSHAKE: i64 = -32035;

/// The methods this module answers; gated as [`crate::gate::PRIVITTY_METHODS`] lists.
pub const METHODS: &[&str] = &[
    "privitty_send_file",
    "privitty_send_group_file",
    "privitty_revoke_file_access",
    "privitty_send_file_access",
    "privitty_deny_file_access",
    "privitty_init_access_grant_request",
    "privitty_decrypt_file",
    "privitty_is_chat_encrypted",
    "privitty_get_peer_capabilities",
    "privitty_get_file_display_status",
    "privitty_get_file_access_info",
];

/// Most control instances whose ids travel with the engine to the next generation; with more,
/// that generation looks them up again (the catch-up).
const MAX_CARRIED_INSTANCES: usize = 1000;

/// The running peer protocol of account 1.
#[derive(Clone, Debug)]
pub struct Peer {
    inner: Arc<Inner>,
}

/// What the agent knows that the engine does not say cheaply: which messages are control
/// instances, and the account's address. It travels with a handed-over engine (as opaque JSON in
/// the hand-over message), so that the next generation's agent does not look every instance up
/// again (one `get_chat_media` over the whole account, and a read per instance).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Carry {
    instances: Vec<u32>,
    addr: Option<String>,
}

/// The peer files of account 1, read before the agent starts ([`Peer::open_files`]).
#[derive(Debug)]
pub struct PeerFiles {
    dir: PathBuf,
    identity: Identity,
    xdc_path: PathBuf,
}

/// A stopped agent: what it knew, and the events it did not read.
#[derive(Debug)]
pub struct Stopped {
    carry: Option<Carry>,
    events: mpsc::UnboundedReceiver<Value>,
}

impl Stopped {
    /// What the next generation's agent may start from, as JSON; call it once the engine is
    /// released (no event arrives after that). None when that agent must catch up: an event
    /// about messages arrived after this agent stopped reading, or this agent's knowledge is
    /// incomplete (its own catch-up failed, or an instance's updates were left unread: no
    /// usable license, or the engine did not answer).
    pub fn hand_over(mut self) -> Option<Value> {
        let carry = self.carry.take()?;
        while let Ok(event) = self.events.try_recv() {
            if concerns_peer(&event) {
                tracing::debug!(
                    "an event arrived after the peer agent stopped; the next generation catches up"
                );
                return None;
            }
        }
        serde_json::to_value(carry).ok()
    }
}

/// Whether the agent has to look at an engine event (the rest go to `/events` as they are).
fn concerns_peer(event: &Value) -> bool {
    let inner = &event["event"];
    inner["msgId"].as_u64().is_some_and(|m| m > 9)
        && matches!(
            inner["kind"].as_str().unwrap_or_default(),
            "WebxdcStatusUpdate"
                | "WebxdcInstanceDeleted"
                | "IncomingMsg"
                | "MsgsChanged"
                | "MsgDelivered"
                | "MsgRead"
                | "MsgFailed"
                | "IncomingWebxdcNotify"
        )
}

struct Inner {
    engine: Engine,
    files: Arc<Privitty>,
    license: Arc<dyn License>,
    hub: Hub,
    files_dir: FilesDir,
    identity: Identity,
    dir: PathBuf,
    xdc_path: PathBuf,
    /// Control instance message ids (to keep their events off `/events`).
    instances: Mutex<HashSet<u32>>,
    /// Hidden messages that carried control updates.
    noise: Mutex<HashSet<u32>>,
    /// Message ids known to be neither.
    others: Mutex<HashSet<u32>>,
    /// One-to-one chats (None = not one-to-one), cached.
    chats: Mutex<HashMap<u32, Option<ChatPeer>>>,
    addr: Mutex<Option<String>>,
    /// When the outbox next has something due (Unix ms), as of the last transaction: the agent's
    /// timer, kept here so waiting for the next event does not read the state file.
    next_due: Mutex<Option<i64>>,
    /// Whether `instances` is complete and every instance's updates were read as they arrived:
    /// only then is this agent's knowledge handed to the next generation ([`Carry`]).
    complete: AtomicBool,
    wake: Notify,
    /// One flush at a time: a method's own flush and the agent's never send an item twice.
    flushing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("identity", &self.identity)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn rpc(e: PrivittyError) -> RpcError {
    RpcError::new(e.rpc_code(), e.to_string())
}

fn action(e: ActionError) -> RpcError {
    match e {
        ActionError::Files(e) => rpc(e),
        e @ ActionError::RevokedForGood { .. } => RpcError::new(ACCESS_DENIED, e.to_string()),
        e => RpcError::new(-32602, format!("invalid params: {e}")),
    }
}

fn engine_error(what: &str, e: crate::engine::EngineError) -> RpcError {
    RpcError::new(-32603, format!("{what}: {e}"))
}

impl Peer {
    /// Reads (at first boot: creates) the peer files: the directory, the identity of account 1
    /// and the control app. Needs no engine and no data-directory lock (every creation is safe
    /// against a second process doing the same: the loser reads the winner's), so a swap does it
    /// while the previous generation still serves.
    pub async fn open_files(files: Arc<Privitty>) -> Result<PeerFiles, PrivittyError> {
        let store_dir = files.store_dir().to_path_buf();
        let opened = tokio::task::spawn_blocking(move || {
            let dir = store_dir.join(PEER_DIR);
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| PrivittyError::store(&dir, format!("cannot create: {e}")))?;
            let identity = load_identity(&files, &dir)?;
            let xdc_path = dir.join(XDC_NAME);
            xdc::write(&xdc_path)?;
            Ok::<_, PrivittyError>(PeerFiles {
                dir,
                identity,
                xdc_path,
            })
        })
        .await
        .map_err(|e| PrivittyError::store("peer", e.to_string()))??;
        tracing::info!(fingerprint = %opened.identity.public().fingerprint(), "peer identity");
        Ok(opened)
    }

    /// Starts the agent. `events` receives every engine event (install it with [`Hub::tap`]
    /// before calling); the agent forwards those that are not about control instances.
    /// `carried` is what the previous generation's agent handed over with the engine
    /// ([`Stopped::hand_over`]): the agent then starts from it instead of looking every control
    /// instance up again.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        engine: Engine,
        files: Arc<Privitty>,
        license: Arc<dyn License>,
        hub: Hub,
        files_dir: FilesDir,
        peer_files: PeerFiles,
        events: mpsc::UnboundedReceiver<Value>,
        stop: watch::Receiver<bool>,
        carried: Option<Value>,
    ) -> (Peer, tokio::task::JoinHandle<Stopped>) {
        let PeerFiles {
            dir,
            identity,
            xdc_path,
        } = peer_files;
        let peer = Peer {
            inner: Arc::new(Inner {
                engine,
                files,
                license,
                hub,
                files_dir,
                identity,
                dir,
                xdc_path,
                instances: Mutex::new(HashSet::new()),
                noise: Mutex::new(HashSet::new()),
                others: Mutex::new(HashSet::new()),
                chats: Mutex::new(HashMap::new()),
                addr: Mutex::new(None),
                next_due: Mutex::new(None),
                complete: AtomicBool::new(false),
                wake: Notify::new(),
                flushing: tokio::sync::Mutex::new(()),
            }),
        };
        let carried = carried.and_then(|c| serde_json::from_value::<Carry>(c).ok());
        // Its lines name the generation, like the serving path's.
        let task = tokio::spawn(tracing::Instrument::in_current_span(
            peer.clone().run(events, stop, carried),
        ));
        (peer, task)
    }

    pub fn has(method: &str) -> bool {
        METHODS.contains(&method)
    }

    fn licensed(&self) -> bool {
        self.inner
            .license
            .evaluate(SystemTime::now())
            .status
            .allows_gated()
    }

    // ---- state transactions ----

    /// Runs `f` on the account's state under the store lock (blocking thread), saving it when
    /// it changed.
    async fn transact<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State, &Ctx<'_>) -> T + Send + 'static,
    ) -> Result<T, RpcError> {
        let inner = self.inner.clone();
        let addr = self
            .inner
            .addr
            .lock()
            .expect("addr")
            .clone()
            .unwrap_or_default();
        let result = tokio::task::spawn_blocking(move || {
            let _lock = inner.files.store().lock().map_err(rpc)?;
            let path = inner.dir.join(format!("state-{ACCOUNT_ID}.json"));
            let before = read_capped(&path, MAX_STATE_BYTES).map_err(rpc)?;
            let mut state = match &before {
                Some(bytes) => serde_json::from_slice::<State>(bytes).map_err(|e| {
                    rpc(PrivittyError::store(
                        &path,
                        format!("is not a valid peer state ({e}); restore it from a backup"),
                    ))
                })?,
                None => State::new(),
            };
            let ctx = Ctx {
                account_id: ACCOUNT_ID as u32,
                identity: &inner.identity,
                files: &inner.files,
                addr: &addr,
                now_ms: now_ms(),
            };
            let out = f(&mut state, &ctx);
            *inner.next_due.lock().expect("next_due") = state.next_due();
            let after = serde_json::to_vec_pretty(&state).expect("state serialises");
            if before.as_deref() != Some(&after[..]) {
                write_atomic(&path, &after, before.is_some()).map_err(rpc)?;
            }
            Ok(out)
        })
        .await
        .map_err(|e| RpcError::internal(format!("the peer state update failed: {e}")))
        .and_then(|r| r);
        if result.is_err() {
            // The state could not be read: look again in a few seconds.
            *self.inner.next_due.lock().expect("next_due") = Some(now_ms() + 5_000);
        }
        result
    }

    async fn read_state(&self) -> Result<State, RpcError> {
        self.transact(|s, _| s.clone()).await
    }

    // ---- the engine ----

    async fn call(&self, method: &str, params: &[Value]) -> Result<Value, RpcError> {
        self.inner
            .engine
            .call(method, params)
            .await
            .map_err(|e| engine_error(method, e))
    }

    async fn own_addr(&self) -> Result<String, RpcError> {
        if let Some(a) = self.inner.addr.lock().expect("addr").clone() {
            return Ok(a);
        }
        let addr = self
            .call("get_config", &[json!(ACCOUNT_ID), json!("configured_addr")])
            .await?;
        let addr = addr.as_str().unwrap_or_default().to_owned();
        if addr.is_empty() {
            return Err(RpcError::new(
                NO_HANDSHAKE,
                "the messaging account is not configured yet; configure it before exchanging protected files",
            ));
        }
        *self.inner.addr.lock().expect("addr") = Some(addr.clone());
        Ok(addr)
    }

    /// The peer of a one-to-one chat (`None` for any other chat).
    async fn chat_peer(&self, chat_id: u32) -> Result<Option<ChatPeer>, RpcError> {
        if let Some(known) = self.inner.chats.lock().expect("chats").get(&chat_id) {
            return Ok(known.clone());
        }
        let info = self
            .call("get_basic_chat_info", &[json!(ACCOUNT_ID), json!(chat_id)])
            .await?;
        let single = matches!(info["chatType"].as_str(), Some("Single"))
            || info["chatType"].as_u64() == Some(100);
        let peer = if single {
            let contacts = self
                .call("get_chat_contacts", &[json!(ACCOUNT_ID), json!(chat_id)])
                .await?;
            let contact_id = contacts
                .as_array()
                .and_then(|a| a.iter().filter_map(Value::as_u64).find(|c| *c > 9))
                .map(|c| c as u32);
            match contact_id {
                Some(contact_id) => {
                    let contact = self
                        .call("get_contact", &[json!(ACCOUNT_ID), json!(contact_id)])
                        .await?;
                    Some(ChatPeer {
                        chat_id,
                        contact_id,
                        addr: contact["address"].as_str().unwrap_or_default().to_owned(),
                    })
                }
                None => None,
            }
        } else {
            None
        };
        self.inner
            .chats
            .lock()
            .expect("chats")
            .insert(chat_id, peer.clone());
        Ok(peer)
    }

    /// The one-to-one chat with a contact (created if needed, as the engine does for a verified
    /// contact).
    async fn contact_chat(&self, contact_id: u32) -> Result<ChatPeer, RpcError> {
        let chat = self
            .call(
                "create_chat_by_contact_id",
                &[json!(ACCOUNT_ID), json!(contact_id)],
            )
            .await?;
        let chat_id = chat.as_u64().unwrap_or(0) as u32;
        self.chat_peer(chat_id).await?.ok_or_else(|| {
            RpcError::new(
                -32602,
                format!("invalid params: contact {contact_id} has no one-to-one chat"),
            )
        })
    }

    /// What a message is to the peer protocol (cached).
    async fn classify(&self, msg_id: u32) -> MsgKind {
        if self.inner.instances.lock().expect("i").contains(&msg_id) {
            return MsgKind::Instance;
        }
        if self.inner.noise.lock().expect("n").contains(&msg_id) {
            return MsgKind::Carrier;
        }
        if self.inner.others.lock().expect("o").contains(&msg_id) {
            return MsgKind::Other;
        }
        let msg = match self
            .inner
            .engine
            .call("get_message", &[json!(ACCOUNT_ID), json!(msg_id)])
            .await
        {
            Ok(msg) => msg,
            // Gone already: a received update carrier is deleted once read.
            Err(crate::engine::EngineError::Rpc(_)) => return MsgKind::Gone,
            // No answer (the engine restarts, or was handed over): it may have been an instance.
            Err(_) => {
                self.incomplete();
                return MsgKind::Gone;
            }
        };
        if msg["viewType"] == "Webxdc" && msg["fileName"] == XDC_NAME {
            self.inner.instances.lock().expect("i").insert(msg_id);
            MsgKind::Instance
        } else if msg["systemMessageType"] == "WebxdcStatusUpdate"
            && msg["parentId"].as_u64().is_some_and(|p| {
                self.inner
                    .instances
                    .lock()
                    .expect("i")
                    .contains(&(p as u32))
            })
        {
            self.inner.noise.lock().expect("n").insert(msg_id);
            MsgKind::Carrier
        } else {
            let mut others = self.inner.others.lock().expect("o");
            if others.len() >= 100_000 {
                others.clear();
            }
            others.insert(msg_id);
            MsgKind::Other
        }
    }

    // ---- the agent ----

    async fn run(
        self,
        mut events: mpsc::UnboundedReceiver<Value>,
        mut stop: watch::Receiver<bool>,
        carried: Option<Carry>,
    ) -> Stopped {
        if let Some(carried) = carried {
            tracing::info!(
                instances = carried.instances.len(),
                "peer agent: took over the previous generation's knowledge"
            );
            self.inner
                .instances
                .lock()
                .expect("i")
                .extend(carried.instances);
            *self.inner.addr.lock().expect("addr") = carried.addr;
            self.inner.complete.store(true, Ordering::Relaxed);
            self.flush().await;
        } else {
            // Complete unless the catch-up, or a read in it, fails.
            self.inner.complete.store(true, Ordering::Relaxed);
            if let Err(e) = self.catch_up().await {
                self.incomplete();
                tracing::warn!(error = %e.message, "peer catch-up failed; will read updates as they arrive");
            }
        }
        loop {
            let next = *self.inner.next_due.lock().expect("next_due");
            let wait =
                next.map(|t| Duration::from_millis((t - now_ms()).clamp(0, 3_600_000) as u64));
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => self.on_event(ev).await,
                    None => break,
                },
                _ = async { match wait { Some(w) => tokio::time::sleep(w).await, None => std::future::pending().await } } => {
                    self.flush().await;
                }
                _ = self.inner.wake.notified() => self.flush().await,
                _ = crate::stopped(&mut stop) => break,
            }
        }
        // Stopped between two events: everything read so far is handled.
        let instances: Vec<u32> = self
            .inner
            .instances
            .lock()
            .expect("i")
            .iter()
            .copied()
            .collect();
        let carry = (self.inner.complete.load(Ordering::Relaxed)
            && instances.len() <= MAX_CARRIED_INSTANCES)
            .then(|| Carry {
                instances,
                addr: self.inner.addr.lock().expect("addr").clone(),
            });
        Stopped { carry, events }
    }

    /// Some instance's updates may be left unread: the next generation's agent catches up.
    fn incomplete(&self) {
        self.inner.complete.store(false, Ordering::Relaxed);
    }

    /// At start: finds every control instance and reads what arrived while edged was not running.
    async fn catch_up(&self) -> Result<(), RpcError> {
        let media = self
            .call(
                "get_chat_media",
                &[
                    json!(ACCOUNT_ID),
                    Value::Null,
                    json!("Webxdc"),
                    Value::Null,
                    Value::Null,
                ],
            )
            .await?;
        let ids: Vec<u32> = media
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_u64)
                    .map(|v| v as u32)
                    .collect()
            })
            .unwrap_or_default();
        for id in ids {
            if self.classify(id).await == MsgKind::Instance {
                self.pull(id).await;
            }
        }
        self.flush().await;
        Ok(())
    }

    /// One engine event: events about control instances and the hidden messages that carry
    /// their updates are consumed, the rest go to `/events`.
    async fn on_event(&self, event: Value) {
        if !concerns_peer(&event) {
            self.inner.hub.publish_engine_direct(&event);
            return;
        }
        let inner = &event["event"];
        let kind = inner["kind"].as_str().unwrap_or_default();
        let msg_id = inner["msgId"].as_u64().unwrap_or_default() as u32;
        match self.classify(msg_id).await {
            MsgKind::Instance => {
                if matches!(kind, "WebxdcStatusUpdate" | "IncomingMsg" | "MsgsChanged") {
                    self.pull(msg_id).await;
                }
            }
            MsgKind::Carrier => {}
            // A message that no longer exists changed: nothing a client could look at.
            MsgKind::Gone if matches!(kind, "MsgsChanged" | "MsgDelivered") => {}
            MsgKind::Gone | MsgKind::Other => self.inner.hub.publish_engine_direct(&event),
        }
    }

    /// Reads the new updates of a control instance and handles them.
    async fn pull(&self, instance: u32) {
        if !self.licensed() {
            // Left unread: handled once this device has a usable license (the updates stay in
            // the engine, the last serial read is not advanced).
            tracing::debug!(instance, "peer update left unread: no usable license");
            self.incomplete();
            return;
        }
        if let Err(e) = self.try_pull(instance).await {
            tracing::warn!(instance, error = %e.message, "reading the control instance failed");
            self.incomplete();
        }
    }

    async fn try_pull(&self, instance: u32) -> Result<(), RpcError> {
        let msg = self
            .call("get_message", &[json!(ACCOUNT_ID), json!(instance)])
            .await?;
        let chat_id = msg["chatId"].as_u64().unwrap_or(0) as u32;
        let Some(peer) = self.chat_peer(chat_id).await? else {
            return Ok(());
        };
        self.own_addr().await?;
        let last = self
            .read_state()
            .await?
            .chats
            .get(&chat_id)
            .and_then(|c| c.instances.get(&instance).copied())
            .unwrap_or(0);
        let text = self
            .call(
                "get_webxdc_status_updates",
                &[json!(ACCOUNT_ID), json!(instance), json!(last)],
            )
            .await?;
        let updates: Vec<Value> = text
            .as_str()
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_default();
        let (fx, acks) = self
            .transact(move |state, ctx| {
                let mut fx = Effects::default();
                let ctl = state.chats.entry(chat_id).or_default();
                let recorded = *ctl.instances.entry(instance).or_insert(0);
                let mut high = recorded;
                for update in &updates {
                    let serial = update["serial"].as_u64().unwrap_or(0);
                    if serial <= recorded {
                        continue;
                    }
                    high = high.max(serial);
                    match wire::open_payload(&update["payload"]) {
                        Ok(u) => {
                            let kind = u.message.body.kind();
                            if let Err(drop) = state.receive(ctx, &peer, u, &mut fx)
                                && drop != wire::Drop::NotOurs
                            {
                                tracing::info!(
                                    instance,
                                    serial,
                                    kind,
                                    reason = drop.as_str(),
                                    "dropped a control update"
                                );
                            }
                        }
                        Err(wire::Drop::NotOurs) => {}
                        Err(drop) => {
                            tracing::info!(
                                instance,
                                serial,
                                reason = drop.as_str(),
                                "dropped a control update"
                            )
                        }
                    }
                }
                state
                    .chats
                    .entry(chat_id)
                    .or_default()
                    .instances
                    .insert(instance, high);
                let acks: Vec<(u32, Value)> = std::mem::take(&mut fx.acks)
                    .into_iter()
                    .map(|((chat, _contact, from), seqs)| {
                        (chat, state.ack_payload(ctx, &from, seqs))
                    })
                    .collect();
                (fx, acks)
            })
            .await?;
        for event in &fx.events {
            self.inner.hub.publish(event);
        }
        for (chat, payload) in acks {
            if let Err(e) = self.send_update(chat, &[payload]).await {
                tracing::debug!(chat, error = %e.message, "an ack was not sent (the peer resends)");
            }
        }
        if fx.send {
            self.inner.wake.notify_one();
        }
        Ok(())
    }

    /// Sends payloads on the chat's control instance, creating the instance (carrying them)
    /// when the chat has none.
    async fn send_update(&self, chat_id: u32, payloads: &[Value]) -> Result<(), RpcError> {
        let known = self
            .read_state()
            .await?
            .chats
            .get(&chat_id)
            .and_then(|c| c.sending_instance());
        let instance = match known {
            Some(i) => i,
            None => return self.create_instance(chat_id, payloads).await,
        };
        for payload in payloads {
            let update = json!({ "payload": payload }).to_string();
            self.call(
                "send_webxdc_status_update",
                &[json!(ACCOUNT_ID), json!(instance), json!(update), json!("")],
            )
            .await?;
        }
        Ok(())
    }

    /// Creates the chat's control instance as a draft, attaches the payloads to it (they travel
    /// in the same mail) and sends it.
    async fn create_instance(&self, chat_id: u32, payloads: &[Value]) -> Result<(), RpcError> {
        let path = self.inner.xdc_path.to_string_lossy().into_owned();
        self.call(
            "misc_set_draft",
            &[
                json!(ACCOUNT_ID),
                json!(chat_id),
                Value::Null,
                json!(path),
                json!(XDC_NAME),
                Value::Null,
                json!("Webxdc"),
            ],
        )
        .await?;
        let draft = self
            .call("get_draft", &[json!(ACCOUNT_ID), json!(chat_id)])
            .await?;
        let draft_id = draft["id"].as_u64().unwrap_or(0) as u32;
        if draft_id == 0 {
            return Err(RpcError::internal(format!(
                "the control instance draft of chat {chat_id} was not created"
            )));
        }
        self.inner.instances.lock().expect("i").insert(draft_id);
        for payload in payloads {
            let update = json!({ "payload": payload }).to_string();
            self.call(
                "send_webxdc_status_update",
                &[json!(ACCOUNT_ID), json!(draft_id), json!(update), json!("")],
            )
            .await?;
        }
        let sent = self
            .call("misc_send_draft", &[json!(ACCOUNT_ID), json!(chat_id)])
            .await?;
        let instance = sent.as_u64().map_or(draft_id, |v| v as u32);
        self.inner.instances.lock().expect("i").insert(instance);
        let n = payloads.len() as u64;
        self.transact(move |state, _| {
            let ctl = state.chats.entry(chat_id).or_default();
            // Our own updates on it are skipped when read back; nothing else is on it yet.
            ctl.instances.entry(instance).or_insert(n);
        })
        .await?;
        tracing::info!(chat_id, instance, "created the chat's control instance");
        Ok(())
    }

    /// Sends what is due in the outbox (only with a usable license).
    async fn flush(&self) {
        let _one = self.inner.flushing.lock().await;
        // Nothing can be sent now: look again later, not at once (the agent's timer would fire
        // again and again for an item already due).
        if !self.licensed() || self.own_addr().await.is_err() {
            let mut next = self.inner.next_due.lock().expect("next_due");
            let now = now_ms();
            if next.is_some_and(|t| t <= now) {
                *next = Some(now + 5_000);
            }
            return;
        }
        let now = now_ms();
        let due = match self.read_state().await {
            Ok(s) => s.due(now),
            Err(e) => {
                tracing::warn!(error = %e.message, "cannot read the peer outbox");
                return;
            }
        };
        if due.is_empty() {
            return;
        }
        let mut by_chat: std::collections::BTreeMap<u32, Vec<(u64, Value)>> = Default::default();
        for (seq, o) in due {
            by_chat.entry(o.chat_id).or_default().push((seq, o.payload));
        }
        let mut sent = Vec::new();
        for (chat, items) in by_chat {
            let payloads: Vec<Value> = items.iter().map(|(_, p)| p.clone()).collect();
            match self.send_update(chat, &payloads).await {
                Ok(()) => sent.extend(items.iter().map(|(s, _)| *s)),
                Err(e) => {
                    tracing::warn!(chat, error = %e.message, "sending control messages failed; will retry");
                    sent.extend(items.iter().map(|(s, _)| *s));
                }
            }
        }
        let _ = self
            .transact(move |state, ctx| {
                for seq in sent {
                    state.sent(seq, ctx.now_ms);
                }
            })
            .await;
    }

    /// Starts the handshake with every unpinned recipient (licensed work).
    async fn handshake_with(&self, contacts: &[u32]) -> Result<(), RpcError> {
        self.own_addr().await?;
        let state = self.read_state().await?;
        let mut peers = Vec::new();
        for &c in contacts {
            if state.peer(c).is_none() {
                peers.push(self.contact_chat(c).await?);
            }
        }
        if peers.is_empty() {
            return Ok(());
        }
        let queued = self
            .transact(move |state, ctx| {
                peers
                    .iter()
                    .filter(|p| state.start_handshake(ctx, p))
                    .count()
            })
            .await?;
        if queued > 0 {
            self.inner.wake.notify_one();
        }
        Ok(())
    }

    /// The members of a chat other than ourselves.
    async fn members(&self, chat_id: u32) -> Result<Vec<u32>, RpcError> {
        let contacts = self
            .call("get_chat_contacts", &[json!(ACCOUNT_ID), json!(chat_id)])
            .await?;
        Ok(contacts
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_u64)
                    .filter(|c| *c > 9)
                    .map(|c| c as u32)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The other members of a chat: the one contact of a one-to-one chat, else every member.
    async fn chat_members(&self, chat_id: u32) -> Result<Vec<u32>, RpcError> {
        match self.chat_peer(chat_id).await? {
            Some(peer) => Ok(vec![peer.contact_id]),
            None => self.members(chat_id).await,
        }
    }

    // ---- methods ----

    /// Runs one peer method (the gate already ran).
    pub async fn call_method(&self, method: &str, params: Vec<Value>) -> Result<Value, RpcError> {
        match method {
            "privitty_send_file" => self.send_file(method, params, true).await,
            "privitty_send_group_file" => self.send_file(method, params, false).await,
            "privitty_revoke_file_access" => self.revoke(method, params).await,
            "privitty_send_file_access" => self.grant(method, params).await,
            "privitty_deny_file_access" => self.deny(method, params).await,
            "privitty_init_access_grant_request" => self.request(method, params).await,
            "privitty_decrypt_file" => self.decrypt(method, params).await,
            "privitty_is_chat_encrypted" => self.is_encrypted(method, params).await,
            "privitty_get_peer_capabilities" => self.capabilities(method, params).await,
            "privitty_get_file_display_status" => self.display_status(method, params).await,
            "privitty_get_file_access_info" => self.access_info(method, params).await,
            _ => Err(RpcError::method_not_found(method)),
        }
    }

    async fn files_call(
        &self,
        method: &str,
        params: Vec<Value>,
    ) -> Result<privitty::Outcome, RpcError> {
        let files = self.inner.files.clone();
        let name = method.to_owned();
        tokio::task::spawn_blocking(move || files.call(&name, &params))
            .await
            .map_err(|e| RpcError::internal(format!("{method} failed inside privitty-edged: {e}")))?
            .unwrap_or_else(|| Err(PrivittyError::InvalidParams(format!("{method} is unknown"))))
            .map_err(rpc)
    }

    async fn send_file(
        &self,
        method: &str,
        params: Vec<Value>,
        direct: bool,
    ) -> Result<Value, RpcError> {
        // Recipients are checked before anything is encrypted.
        let chat_id = params.get(1).and_then(Value::as_u64).unwrap_or(0) as u32;
        // A recipient that is not a contact (yet) gets its grant once a handshake with it
        // completes; encryption does not depend on it.
        let recipients = if direct {
            vec![params.get(2).and_then(Value::as_u64).unwrap_or(0) as u32]
        } else {
            self.members(chat_id).await.unwrap_or_default()
        };
        let outcome = self.files_call(method, params).await?;
        for ev in &outcome.events {
            self.inner.hub.publish(ev);
        }
        let mut result = outcome.result;
        let file: Uuid = serde_json::from_value(result["file_id"].clone())
            .map_err(|_| RpcError::internal("the encrypted file has no id"))?;
        let recipients: Vec<u32> = recipients.into_iter().filter(|c| *c > 9).collect();
        let share = recipients.clone();
        let shared = self
            .transact(move |state, ctx| state.share(ctx, file, chat_id, &share))
            .await?;
        if let Err(e) = shared {
            tracing::warn!(%file, error = %e, "the grants of a new file were not queued");
        }
        if let Err(e) = self.handshake_with(&recipients).await {
            tracing::warn!(%file, error = %e.message, "a handshake could not start; the grant waits for it");
        }
        // Sent before the call returns: the update is in the engine's queue ahead of whatever
        // the client sends next (the `.prv` itself, after `privitty_send_file`).
        self.flush().await;
        let state = self.read_state().await?;
        result["recipients"] = json!(
            recipients
                .iter()
                .map(|c| json!({
                    "contact_id": c,
                    "handshake": state.peer(*c).is_some(),
                    "grant": if state.waiting.contains(&(*c, file)) { "waiting_for_handshake" } else { "queued" },
                }))
                .collect::<Vec<_>>()
        );
        Ok(result)
    }

    async fn revoke(&self, method: &str, params: Vec<Value>) -> Result<Value, RpcError> {
        let peer_arg = params.get(3).and_then(Value::as_u64).map(|v| v as u32);
        let file: Option<Uuid> = params
            .get(2)
            .and_then(|v| serde_json::from_value(v.clone()).ok());
        let mut result = self.files_call(method, params).await.map(|o| {
            for ev in &o.events {
                self.inner.hub.publish(ev);
            }
            o.result
        })?;
        let (Some(file), Some(peer)) = (file, peer_arg) else {
            return Ok(result);
        };
        let reached = self
            .transact(move |state, ctx| {
                let targets: Vec<u32> = if peer == 0 {
                    state.recipients(file)
                } else {
                    vec![peer]
                };
                let mut reached = Vec::new();
                for c in targets {
                    if state.end(ctx, file, c, Access::Revoked).is_ok() {
                        reached.push(c);
                    }
                }
                reached
            })
            .await?;
        self.flush().await;
        result["peers_notified"] = json!(reached);
        Ok(result)
    }

    fn owner_checked(&self, file: Uuid, chat_id: u32) -> Result<privitty::FileRecord, RpcError> {
        let record = self.inner.files.file_record(file).map_err(rpc)?;
        if record.meta.chat_id != chat_id {
            return Err(rpc(PrivittyError::WrongChat {
                file_id: file,
                account_id: record.meta.account_id,
                chat_id: record.meta.chat_id,
                given_account_id: ACCOUNT_ID as u32,
                given_chat_id: chat_id,
            }));
        }
        Ok(record)
    }

    async fn grant(&self, method: &str, params: Vec<Value>) -> Result<Value, RpcError> {
        const NAMES: &[&str] = &[
            "account_id",
            "chat_id",
            "file_id",
            "peer_contact_id",
            "duration_seconds",
        ];
        let p = Params::new(method, &params, NAMES).map_err(rpc)?;
        let (chat, file, contact, seconds) = (
            p.id(1, 1).map_err(rpc)?,
            p.file_id(2).map_err(rpc)?,
            p.id(3, 1).map_err(rpc)?,
            p.seconds(4).map_err(rpc)?,
        );
        p.id(0, 1).map_err(rpc)?;
        self.owner_checked(file, chat)?;
        let given = self
            .transact(move |state, ctx| state.grant(ctx, file, contact, seconds))
            .await?
            .map_err(action)?;
        self.handshake_with(&[contact]).await.ok();
        self.flush().await;
        self.inner.hub.publish(&json!({
            "type": "PrivittyFileAccessChanged",
            "account_id": ACCOUNT_ID,
            "chat_id": chat,
            "file_id": file,
            "peer_contact_id": contact,
            "status": "active",
            "expires_at": given.policy.expires_at.map(rfc3339),
        }));
        Ok(json!({
            "file_id": file,
            "peer_contact_id": contact,
            "status": "active",
            "expires_at": given.policy.expires_at.map(rfc3339),
            "generation": given.policy.generation,
        }))
    }

    async fn deny(&self, method: &str, params: Vec<Value>) -> Result<Value, RpcError> {
        const NAMES: &[&str] = &["account_id", "chat_id", "file_id", "peer_contact_id"];
        let p = Params::new(method, &params, NAMES).map_err(rpc)?;
        let (chat, file, contact) = (
            p.id(1, 1).map_err(rpc)?,
            p.file_id(2).map_err(rpc)?,
            p.id(3, 1).map_err(rpc)?,
        );
        p.id(0, 1).map_err(rpc)?;
        self.owner_checked(file, chat)?;
        let given = self
            .transact(move |state, ctx| state.end(ctx, file, contact, Access::Denied))
            .await?
            .map_err(action)?;
        self.flush().await;
        self.inner.hub.publish(&json!({
            "type": "PrivittyFileAccessChanged",
            "account_id": ACCOUNT_ID,
            "chat_id": chat,
            "file_id": file,
            "peer_contact_id": contact,
            "status": given.policy.access.as_str(),
        }));
        Ok(json!({
            "file_id": file,
            "peer_contact_id": contact,
            "status": given.policy.access.as_str(),
            "generation": given.policy.generation,
        }))
    }

    async fn request(&self, method: &str, params: Vec<Value>) -> Result<Value, RpcError> {
        const NAMES: &[&str] = &["account_id", "chat_id", "file_id"];
        let p = Params::new(method, &params, NAMES).map_err(rpc)?;
        let file = p.file_id(2).map_err(rpc)?;
        p.id(0, 1).map_err(rpc)?;
        p.id(1, 1).map_err(rpc)?;
        let held = self
            .transact(move |state, ctx| state.request_renewal(ctx, file))
            .await?
            .map_err(action)?;
        self.flush().await;
        Ok(json!({
            "file_id": file,
            "owner_contact_id": held.owner_contact_id,
            "requested": true,
        }))
    }

    /// The `.prv` of a message: its blob path, once downloaded.
    async fn message_file(&self, msg_id: u32) -> Result<(PathBuf, Value), RpcError> {
        let msg = self
            .call("get_message", &[json!(ACCOUNT_ID), json!(msg_id)])
            .await
            .map_err(|_| {
                RpcError::new(
                    NOT_A_PROTECTED_FILE,
                    format!("message {msg_id} does not exist"),
                )
            })?;
        let name = msg["fileName"].as_str().unwrap_or_default();
        if !name.ends_with(".prv") {
            return Err(RpcError::new(
                NOT_A_PROTECTED_FILE,
                format!("message {msg_id} carries no .prv file"),
            ));
        }
        let Some(path) = msg["file"].as_str().filter(|p| !p.is_empty()) else {
            return Err(RpcError::new(
                NOT_A_PROTECTED_FILE,
                format!(
                    "the .prv file of message {msg_id} is still downloading; try again when MsgsChanged reports it"
                ),
            ));
        };
        Ok((PathBuf::from(path), msg))
    }

    /// Where a message's `.prv` stands on this device.
    async fn file_status(&self, msg_id: u32) -> Result<FileStatus, RpcError> {
        let (path, msg) = self.message_file(msg_id).await?;
        let files = self.inner.files.clone();
        let read = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || read_header(&path))
                .await
                .map_err(|e| RpcError::internal(e.to_string()))?
                .map_err(rpc)?
        };
        let (header, digest) = read;
        let state = self.read_state().await?;
        let now = self.inner.license.trusted_now(SystemTime::now());
        let status = if let Ok(record) = files.file_record(header.meta.file_id) {
            let own = record.header_sha256 == digest;
            FileStatus {
                path,
                header,
                msg,
                outgoing: own,
                held: None,
                record: own.then_some(record),
                now,
                state,
            }
        } else {
            let held = state.inbound.get(&header.meta.file_id).cloned();
            FileStatus {
                path,
                header,
                msg,
                outgoing: false,
                held,
                record: None,
                now,
                state,
            }
        };
        Ok(status)
    }

    async fn decrypt(&self, method: &str, params: Vec<Value>) -> Result<Value, RpcError> {
        const NAMES: &[&str] = &["account_id", "msg_id"];
        let p = Params::new(method, &params, NAMES).map_err(rpc)?;
        p.id(0, 1).map_err(rpc)?;
        let msg_id = p.id(1, 1).map_err(rpc)?;
        let st = self.file_status(msg_id).await?;
        let file = st.header.meta.file_id;
        let key: FileKey = if let Some(record) = &st.record {
            let (_, key) = self
                .inner
                .files
                .owner_key(record.meta.file_id)
                .map_err(rpc)?;
            key
        } else {
            let held = st.held.as_ref().ok_or_else(|| {
                RpcError::new(
                    KEY_PENDING,
                    format!("the key of file {file} has not arrived yet; it comes with the owner's grant (see PrivittyFileAccessChanged)"),
                )
            })?;
            check_access(file, held, st.now)?;
            if !held.policy.download {
                return Err(RpcError::new(
                    ACCESS_DENIED,
                    format!(
                        "the owner of file {file} does not allow downloading it; open it in the viewer (/stream) instead"
                    ),
                ));
            }
            if held.header != st.digest() {
                return Err(RpcError::new(
                    ACCESS_DENIED,
                    format!(
                        "message {msg_id}'s .prv is not the file the grant of {file} was made for"
                    ),
                ));
            }
            st.state
                .inbound_key(&self.inner.files, file)
                .ok_or_else(|| {
                    RpcError::new(
                        ACCESS_DENIED,
                        format!("the key of file {file} is gone (revoked or denied)"),
                    )
                })?
        };
        let out_dir = self.inner.files_dir.root().to_path_buf();
        let path = st.path.clone();
        let header = st.header.clone();
        let written =
            tokio::task::spawn_blocking(move || decrypt_into(&path, &header, &key, &out_dir))
                .await
                .map_err(|e| RpcError::internal(e.to_string()))?
                .map_err(rpc)?;
        self.inner.hub.publish(&json!({
            "type": "PrivittyFileDecrypted",
            "account_id": ACCOUNT_ID,
            "chat_id": st.msg["chatId"],
            "msg_id": msg_id,
            "file_id": file,
        }));
        Ok(json!({
            "file_id": file,
            "path": written.0,
            "size": written.1,
        }))
    }

    async fn display_status(&self, method: &str, params: Vec<Value>) -> Result<Value, RpcError> {
        const NAMES: &[&str] = &["account_id", "msg_id"];
        let p = Params::new(method, &params, NAMES).map_err(rpc)?;
        p.id(0, 1).map_err(rpc)?;
        let msg_id = p.id(1, 1).map_err(rpc)?;
        let st = match self.file_status(msg_id).await {
            Ok(st) => st,
            Err(e) if e.code == NOT_A_PROTECTED_FILE => {
                return Ok(json!({"msg_id": msg_id, "is_privitty": false, "reason": e.message}));
            }
            Err(e) => return Err(e),
        };
        Ok(st.describe(msg_id))
    }

    async fn access_info(&self, method: &str, params: Vec<Value>) -> Result<Value, RpcError> {
        const NAMES: &[&str] = &["account_id", "file_id"];
        let p = Params::new(method, &params, NAMES).map_err(rpc)?;
        p.id(0, 1).map_err(rpc)?;
        let file = p.file_id(1).map_err(rpc)?;
        let state = self.read_state().await?;
        let now = self.inner.license.trusted_now(SystemTime::now());
        if let Ok(record) = self.inner.files.file_record(file) {
            let recipients: Vec<Value> = state
                .outbound
                .get(&file)
                .map(|m| {
                    m.iter()
                        .map(|(c, g)| {
                            json!({
                                "contact_id": c,
                                "status": g.policy.status(now),
                                "expires_at": g.policy.expires_at.map(rfc3339),
                                "allow_download": g.policy.download,
                                "allow_forward": g.policy.forward,
                                "delivered": g.delivered,
                                "waiting_for_handshake": state.waiting.contains(&(*c, file)),
                                "renew_requested_at": g.renew_requested_at.map(rfc3339),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            return Ok(json!({
                "file_id": file,
                "direction": "outgoing",
                "chat_id": record.meta.chat_id,
                "original_name": record.meta.original_name,
                "original_size": record.meta.original_size,
                "key_destroyed": record.wrapped_key.is_none(),
                "recipients": recipients,
            }));
        }
        let held = state
            .inbound
            .get(&file)
            .ok_or_else(|| rpc(PrivittyError::UnknownFile { file_id: file }))?;
        Ok(json!({
            "file_id": file,
            "direction": "incoming",
            "chat_id": held.chat_id,
            "owner_contact_id": held.owner_contact_id,
            "owner_fingerprint": held.owner_fingerprint,
            "status": held.policy.status(now),
            "expires_at": held.policy.expires_at.map(rfc3339),
            "allow_download": held.policy.download,
            "allow_forward": held.policy.forward,
            "key_held": held.sealed_key.is_some(),
            "original_name": held.name,
            "original_size": held.size,
            "renew_requested_at": held.renew_requested_at.map(rfc3339),
        }))
    }

    /// The `[account_id, chat_id]` of a chat method: the chat, its other members and the state.
    async fn chat_params(
        &self,
        method: &str,
        params: &[Value],
    ) -> Result<(u32, Vec<u32>, State), RpcError> {
        const NAMES: &[&str] = &["account_id", "chat_id"];
        let p = Params::new(method, params, NAMES).map_err(rpc)?;
        p.id(0, 1).map_err(rpc)?;
        let chat = p.id(1, 1).map_err(rpc)?;
        let members = self.chat_members(chat).await?;
        Ok((chat, members, self.read_state().await?))
    }

    async fn is_encrypted(&self, method: &str, params: Vec<Value>) -> Result<Value, RpcError> {
        let (chat, members, state) = self.chat_params(method, &params).await?;
        let missing: Vec<u32> = members
            .iter()
            .copied()
            .filter(|c| state.peer(*c).is_none())
            .collect();
        if !missing.is_empty() && self.licensed() {
            // The first Privitty call for a chat starts its handshakes.
            if let Err(e) = self.handshake_with(&missing).await {
                tracing::debug!(chat, error = %e.message, "handshake not started");
            }
        }
        Ok(json!(!members.is_empty() && missing.is_empty()))
    }

    async fn capabilities(&self, method: &str, params: Vec<Value>) -> Result<Value, RpcError> {
        let (_, members, state) = self.chat_params(method, &params).await?;
        let peers: Vec<Value> = members
            .iter()
            .map(|c| match state.peer(*c) {
                Some(p) => json!({
                    "contact_id": c,
                    "address": p.addr,
                    "fingerprint": p.fingerprint,
                    "handshake": "complete",
                    "peer_has_our_key": p.confirmed,
                    "pinned_at": rfc3339(p.pinned_at),
                }),
                None => json!({
                    "contact_id": c,
                    "fingerprint": Value::Null,
                    "handshake": if state.outbox.values().any(|o| o.contact_id == *c && o.kind == "hello") { "pending" } else { "none" },
                }),
            })
            .collect();
        Ok(json!({
            "protocol": wire::PROTOCOL,
            "version": wire::VERSION,
            "fingerprint": self.inner.identity.public().fingerprint(),
            "peers": peers,
        }))
    }

    /// What the viewer (`GET /stream/:msg_id`) needs to decrypt a message's `.prv` on the fly:
    /// the file and its key when access is active now (download permission is not needed: the
    /// viewer never writes plaintext to disk). The license is the caller's check.
    pub async fn viewer_source(&self, msg_id: u32) -> Result<ViewerSource, ViewerRefusal> {
        let st = self.file_status(msg_id).await.map_err(|e| match e.code {
            NOT_A_PROTECTED_FILE => ViewerRefusal::NotFound(e.message),
            _ => ViewerRefusal::Failed(e.message),
        })?;
        let file = st.header.meta.file_id;
        let key = if let Some(record) = &st.record {
            match self.inner.files.owner_key(record.meta.file_id) {
                Ok((_, key)) => key,
                Err(e @ PrivittyError::Revoked { .. }) => {
                    return Err(ViewerRefusal::Forbidden(e.to_string()));
                }
                Err(e) => return Err(ViewerRefusal::Failed(e.to_string())),
            }
        } else {
            let held = st.held.as_ref().ok_or_else(|| {
                ViewerRefusal::Pending(format!(
                    "the key of file {file} has not arrived yet; it comes with the owner's grant"
                ))
            })?;
            check_access(file, held, st.now).map_err(|e| ViewerRefusal::Forbidden(e.message))?;
            if held.header != st.digest() {
                return Err(ViewerRefusal::Forbidden(format!(
                    "message {msg_id}'s .prv is not the file the grant of {file} was made for"
                )));
            }
            st.state
                .inbound_key(&self.inner.files, file)
                .ok_or_else(|| {
                    ViewerRefusal::Forbidden(format!("the key of file {file} is gone"))
                })?
        };
        Ok(ViewerSource {
            path: st.path,
            chat_id: st.msg["chatId"].as_u64().unwrap_or(0) as u32,
            header: st.header,
            key,
        })
    }

    /// Whether a client may forward these messages: a `.prv` received under a grant that
    /// forbids forwarding may not leave (JSON-RPC -32032 naming the file).
    pub async fn check_forward(&self, params: &[Value]) -> Result<(), RpcError> {
        let ids: Vec<u32> = params
            .get(1)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_u64)
                    .map(|v| v as u32)
                    .collect()
            })
            .unwrap_or_default();
        for id in ids {
            let st = match self.file_status(id).await {
                Ok(st) => st,
                Err(e) if e.code == NOT_A_PROTECTED_FILE => continue,
                Err(_) => continue,
            };
            if let Some(held) = &st.held
                && !held.policy.forward
            {
                return Err(RpcError::new(
                    ACCESS_DENIED,
                    format!(
                        "message {id} is protected file {} whose owner does not allow forwarding it",
                        st.header.meta.file_id
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A `.prv` the viewer may stream now, with its key (never logged: `FileKey` is redacted).
#[derive(Debug)]
pub struct ViewerSource {
    pub path: PathBuf,
    pub header: Header,
    pub key: FileKey,
    pub chat_id: u32,
}

impl ViewerSource {
    /// Opens the file for streaming decryption; re-checks that it is the same `.prv` (header).
    pub fn open(&self) -> Result<PrvReader<std::fs::File>, PrivittyError> {
        let mut file = privitty::open_regular_file(&self.path)?;
        let (header, bytes) = Header::read_from(&mut file, &self.path)?;
        if header != self.header {
            return Err(PrivittyError::RecordMismatch {
                path: self.path.clone(),
                file_id: self.header.meta.file_id,
            });
        }
        Ok(PrvReader::new(file, &self.path, header, &bytes, &self.key))
    }
}

/// Why the viewer may not stream a message (the HTTP status follows the variant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewerRefusal {
    /// 404: no such message, or no (downloaded) `.prv` in it.
    NotFound(String),
    /// 409: the key has not arrived yet.
    Pending(String),
    /// 403: revoked, denied or expired (the reason says which).
    Forbidden(String),
    /// 500: the file or the store could not be read.
    Failed(String),
}

/// What a message is to the peer protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MsgKind {
    /// A control instance (`privitty-ctl.xdc`).
    Instance,
    /// A hidden message that carried updates of a control instance.
    Carrier,
    /// Anything else.
    Other,
    /// It does not exist (any more).
    Gone,
}

/// A message's `.prv` as this device sees it.
struct FileStatus {
    path: PathBuf,
    header: Header,
    msg: Value,
    outgoing: bool,
    held: Option<state::InGrant>,
    record: Option<privitty::FileRecord>,
    now: i64,
    state: State,
}

impl FileStatus {
    fn digest(&self) -> String {
        hex::encode(privitty::format::header_digest(&self.header.encode()))
    }

    fn describe(&self, msg_id: u32) -> Value {
        let file = self.header.meta.file_id;
        if let Some(record) = &self.record {
            let status = if record.wrapped_key.is_none() {
                "revoked"
            } else if record.meta.expires_at.is_some_and(|t| self.now >= t) {
                "expired"
            } else {
                "active"
            };
            return json!({
                "msg_id": msg_id,
                "is_privitty": true,
                "file_id": file,
                "direction": "outgoing",
                "status": status,
                "expires_at": record.meta.expires_at.map(rfc3339),
                "allow_download": true,
                "allow_forward": true,
                "original_name": record.meta.original_name,
                "original_size": record.meta.original_size,
            });
        }
        let _ = self.outgoing;
        match &self.held {
            Some(held) => json!({
                "msg_id": msg_id,
                "is_privitty": true,
                "file_id": file,
                "direction": "incoming",
                "status": held.policy.status(self.now),
                "expires_at": held.policy.expires_at.map(rfc3339),
                "allow_download": held.policy.download,
                "allow_forward": held.policy.forward,
                "original_name": self.header.meta.original_name,
                "original_size": self.header.meta.original_size,
            }),
            None => json!({
                "msg_id": msg_id,
                "is_privitty": true,
                "file_id": file,
                "direction": "incoming",
                "status": "pending",
                "original_name": self.header.meta.original_name,
                "original_size": self.header.meta.original_size,
            }),
        }
    }
}

/// Refuses a received file whose access ended.
fn check_access(file: Uuid, held: &state::InGrant, now: i64) -> Result<(), RpcError> {
    match held.policy.status(now) {
        "active" => Ok(()),
        "expired" => Err(RpcError::new(
            ACCESS_DENIED,
            format!(
                "access to file {file} expired at {}; ask the owner to renew it (privitty_init_access_grant_request)",
                held.policy.expires_at.map(rfc3339).unwrap_or_default()
            ),
        )),
        status => Err(RpcError::new(
            ACCESS_DENIED,
            format!("access to file {file} was {status} by its owner"),
        )),
    }
}

/// Reads a `.prv` header and its digest (hex).
fn read_header(path: &Path) -> Result<(Header, String), PrivittyError> {
    let mut file = privitty::open_regular_file(path)?;
    let (header, bytes) = Header::read_from(&mut file, path)?;
    Ok((header, hex::encode(privitty::format::header_digest(&bytes))))
}

/// Decrypts `path` into a new file of `out_dir` named after the original (0600, never replacing
/// a file: `name (1).ext` … when taken). Written to a temp file first; a failed decryption
/// leaves nothing behind.
fn decrypt_into(
    path: &Path,
    header: &Header,
    key: &FileKey,
    out_dir: &Path,
) -> Result<(PathBuf, u64), PrivittyError> {
    let mut file = privitty::open_regular_file(path)?;
    let (read_header, bytes) = Header::read_from(&mut file, path)?;
    if read_header != *header {
        return Err(PrivittyError::RecordMismatch {
            path: path.to_path_buf(),
            file_id: header.meta.file_id,
        });
    }
    let mut reader = PrvReader::new(file, path, read_header, &bytes, key);
    let mut tmp = tempfile::Builder::new()
        .prefix(".decrypt-")
        .suffix(".tmp")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .tempfile_in(out_dir)
        .map_err(|e| PrivittyError::from_io(out_dir, e))?;
    let size = {
        let mut out = std::io::BufWriter::new(tmp.as_file_mut());
        let n = reader.decrypt_to(&mut out)?;
        out.flush()
            .map_err(|e| PrivittyError::from_io(out_dir, e))?;
        n
    };
    tmp.as_file()
        .sync_all()
        .map_err(|e| PrivittyError::from_io(out_dir, e))?;
    let name = safe_name(&header.meta.original_name, header.meta.file_id);
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name.as_str(), ""),
    };
    let mut candidate = out_dir.join(&name);
    for n in 1..1000 {
        match tmp.persist_noclobber(&candidate) {
            Ok(_) => {
                std::fs::File::open(out_dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| PrivittyError::from_io(out_dir, e))?;
                return Ok((candidate, size));
            }
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
                tmp = e.file;
                candidate = out_dir.join(format!("{stem} ({n}){ext}"));
            }
            Err(e) => return Err(PrivittyError::from_io(&candidate, e.error)),
        }
    }
    Err(PrivittyError::OutputExists { path: candidate })
}

/// The original name as a plain file name (never a path, never hidden, never empty).
fn safe_name(name: &str, file: Uuid) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches('.').to_owned();
    if cleaned.is_empty() {
        format!("{file}.bin")
    } else {
        cleaned
    }
}

/// The identity of account 1: created once (the secret sealed by the master key, 0600).
fn load_identity(files: &Privitty, dir: &Path) -> Result<Identity, PrivittyError> {
    let path = dir.join(format!("identity-{ACCOUNT_ID}.json"));
    let aad = format!("privitty-ctl/v1/identity/{ACCOUNT_ID}");
    for _ in 0..2 {
        if let Some(bytes) = read_capped(&path, 64 * 1024)? {
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
                PrivittyError::store(
                    &path,
                    format!("is not valid JSON ({e}); restore it from a backup"),
                )
            })?;
            let secret = v["sealed"]
                .as_str()
                .and_then(|s| files.store().open_sealed(aad.as_bytes(), s))
                .and_then(|s| <[u8; 64]>::try_from(s).ok())
                .ok_or_else(|| {
                    PrivittyError::store(&path, "does not open with this device's master key; restore it (or master.key) from a backup")
                })?;
            return Ok(Identity::from_secret_bytes(&secret));
        }
        let identity = Identity::generate();
        let public = identity.public();
        let record = json!({
            "version": 1,
            "account_id": ACCOUNT_ID,
            "fingerprint": public.fingerprint(),
            "signing": wire::encode32(&public.signing),
            "agreement": wire::encode32(&public.agreement),
            "sealed": files.store().seal(aad.as_bytes(), &identity.secret_bytes()),
        });
        let bytes = serde_json::to_vec_pretty(&record).expect("serialises");
        match write_atomic(&path, &bytes, false) {
            Ok(()) => {
                tracing::info!(fingerprint = %public.fingerprint(), "created the peer identity");
                return Ok(identity);
            }
            Err(_) if path.exists() => {}
            Err(e) => return Err(e),
        }
    }
    Err(PrivittyError::store(&path, "cannot be created or read"))
}

use std::os::unix::fs::DirBuilderExt as _;

#[cfg(test)]
mod tests {
    use super::*;

    fn stopped(carry: Option<Carry>, events: &[Value]) -> Stopped {
        let (tx, rx) = mpsc::unbounded_channel();
        for e in events {
            tx.send(e.clone()).unwrap();
        }
        Stopped { carry, events: rx }
    }

    fn known() -> Carry {
        Carry {
            instances: vec![12, 40],
            addr: Some("a@example.org".into()),
        }
    }

    fn event(kind: &str, msg_id: u64) -> Value {
        json!({"contextId": 1, "event": {"kind": kind, "chatId": 10, "msgId": msg_id}})
    }

    #[test]
    fn complete_knowledge_with_nothing_unread_is_handed_over() {
        let handed = stopped(Some(known()), &[])
            .hand_over()
            .expect("handed over");
        let back: Carry = serde_json::from_value(handed).unwrap();
        assert_eq!(back.instances, vec![12, 40]);
        assert_eq!(back.addr.as_deref(), Some("a@example.org"));
        // Events that are not about messages (the agent only forwards them) do not matter.
        let info = json!({"contextId": 1, "event": {"kind": "Info", "msg": "x"}});
        assert!(
            stopped(Some(known()), &[info, event("IncomingMsg", 5)])
                .hand_over()
                .is_some()
        );
    }

    #[test]
    fn an_unread_event_about_a_message_or_incomplete_knowledge_means_a_catch_up() {
        for kind in ["WebxdcStatusUpdate", "IncomingMsg", "MsgsChanged"] {
            assert!(
                stopped(Some(known()), &[event(kind, 41)])
                    .hand_over()
                    .is_none(),
                "{kind}"
            );
        }
        assert!(stopped(None, &[]).hand_over().is_none());
    }
}
