//! What one messaging account knows of the peer protocol, and every rule that changes it: pinned
//! peers, seen sequence numbers, the outbox of unacknowledged messages, grants given (owner side)
//! and grants held (recipient side).
//!
//! Owns the decisions: what a verified message does, what an operator's grant/deny/revoke sends,
//! when a waiting grant leaves. Pure: no engine, no clock of its own, no disk (the caller loads and
//! saves the state around a [`Ctx`]). Must not: keep a received file key other than sealed by the
//! device master key, or accept a message that [`wire`] did not verify.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::wire::{self, Body, Drop, Grant, Identity, Message, PublicKeys, Unverified};
use crate::privitty::{FileKey, Privitty, PrivittyError, rfc3339};

/// Layout version of the state file.
pub const STATE_VERSION: u32 = 1;
/// First resend after this long without an acknowledgement; doubles per attempt.
pub const RESEND_FIRST_MS: i64 = 4_000;
/// Longest wait between two resends.
pub const RESEND_MAX_MS: i64 = 3_600_000;
/// A message nobody acknowledged after this many sends is given up (and logged).
pub const MAX_ATTEMPTS: u32 = 16;
/// AAD prefix of a received file key sealed by the master key.
const INBOUND_AAD: &[u8] = b"privitty-ctl/v1/inbound-key";

/// The whole persisted state of one account.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub version: u32,
    /// Sequence number of the next message this identity sends (starts at 1).
    pub next_seq: u64,
    /// Peers pinned by contact id (trust on first use).
    pub peers: BTreeMap<u32, Pinned>,
    /// Sequence numbers seen, by sender fingerprint.
    pub seen: BTreeMap<String, Seen>,
    /// Control instances by one-to-one chat id.
    pub chats: BTreeMap<u32, ChatCtl>,
    /// Sent or to-send messages not acknowledged yet, by sequence number.
    pub outbox: BTreeMap<u64, Outgoing>,
    /// Grants that leave once the recipient's handshake completes.
    pub waiting: BTreeSet<(u32, Uuid)>,
    /// Owner side: access given, by file and recipient contact.
    pub outbound: BTreeMap<Uuid, BTreeMap<u32, OutGrant>>,
    /// Recipient side: access held, by file.
    pub inbound: BTreeMap<Uuid, InGrant>,
}

/// A peer's keys pinned to a contact.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pinned {
    pub fingerprint: String,
    pub signing: String,
    pub agreement: String,
    pub addr: String,
    /// The one-to-one chat the handshake ran in (where control messages to this peer go).
    pub chat_id: u32,
    pub pinned_at: i64,
    /// The peer has shown it knows our keys (a reply hello or a message addressed to us).
    pub confirmed: bool,
}

impl Pinned {
    pub fn keys(&self) -> Option<PublicKeys> {
        Some(PublicKeys {
            signing: wire::decode32(&self.signing)?,
            agreement: wire::decode32(&self.agreement)?,
        })
    }
}

/// Seen sequence numbers: all up to `low`, and those in `above`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Seen {
    pub low: u64,
    pub above: BTreeSet<u64>,
}

impl Seen {
    /// Marks `seq`; false when it was seen before.
    pub fn mark(&mut self, seq: u64) -> bool {
        if seq <= self.low || !self.above.insert(seq) {
            return false;
        }
        while self.above.remove(&(self.low + 1)) {
            self.low += 1;
        }
        true
    }
}

/// The control instances of one chat and how far each was read.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChatCtl {
    /// Instance message id → last status-update serial processed.
    pub instances: BTreeMap<u32, u64>,
}

impl ChatCtl {
    /// The instance messages go to: the lowest message id (both sides converge on it).
    pub fn sending_instance(&self) -> Option<u32> {
        self.instances.keys().next().copied()
    }
}

/// One message waiting for its acknowledgement.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Outgoing {
    pub chat_id: u32,
    pub contact_id: u32,
    pub kind: String,
    /// The file it is about (grant, revoke, deny, renew_request).
    pub file: Option<Uuid>,
    /// The signed update payload, sent as is at every attempt.
    pub payload: Value,
    pub attempts: u32,
    /// Unix milliseconds of the next send.
    pub next_at_ms: i64,
}

/// Where a recipient's access stands.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    Active,
    Denied,
    Revoked,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Active => "active",
            Access::Denied => "denied",
            Access::Revoked => "revoked",
        }
    }
}

/// One decision of a file's owner about one recipient's access. `generation` numbers the
/// decisions (`PEER-PROTOCOL.md`, "Generations"): the owner keeps the latest it made
/// ([`OutGrant`]), the recipient the newest it received ([`InGrant`]), so both sides hold the same
/// shape. Both grants also have a `chat_id` and a `renew_requested_at`, which stay outside: the
/// chat is a different one on each side, and a renewal request comes from the recipient: it is
/// no decision of the owner.
///
/// Flattened into both grants: its fields are keys of the grants in the state file, as they were
/// before it was a struct of its own (test `grants_written_before_grant_policy_read_back_the_same`
/// in `state/tests.rs`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GrantPolicy {
    pub generation: u64,
    pub access: Access,
    /// Unix seconds; `None` = no end.
    pub expires_at: Option<i64>,
    pub download: bool,
    pub forward: bool,
}

impl GrantPolicy {
    /// `active`, `expired`, `denied` or `revoked` at `now` (Unix seconds; the peer module passes
    /// the license's trusted clock).
    pub fn status(&self, now: i64) -> &'static str {
        match self.access {
            Access::Active if self.expires_at.is_some_and(|t| now >= t) => "expired",
            a => a.as_str(),
        }
    }
}

/// Owner side: what one recipient was given.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutGrant {
    /// The chat the file was sent in.
    pub chat_id: u32,
    #[serde(flatten)]
    pub policy: GrantPolicy,
    /// The recipient acknowledged the current generation.
    pub delivered: bool,
    pub renew_requested_at: Option<i64>,
}

/// Recipient side: what an owner gave this device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InGrant {
    pub owner_contact_id: u32,
    pub owner_fingerprint: String,
    /// The one-to-one chat with the owner.
    pub chat_id: u32,
    #[serde(flatten)]
    pub policy: GrantPolicy,
    /// The file key sealed by this device's master key; `None` once revoked or denied.
    pub sealed_key: Option<String>,
    /// Hex SHA-256 of the `.prv` header the key belongs to (empty for a tombstone).
    pub header: String,
    pub name: String,
    pub size: u64,
    pub updated_at: i64,
    pub renew_requested_at: Option<i64>,
}

/// What the caller of a transition supplies.
#[derive(Debug)]
pub struct Ctx<'a> {
    pub account_id: u32,
    pub identity: &'a Identity,
    pub files: &'a Privitty,
    /// Our own address (what a hello announces).
    pub addr: &'a str,
    /// Unix milliseconds.
    pub now_ms: i64,
}

impl Ctx<'_> {
    pub fn now(&self) -> i64 {
        self.now_ms.div_euclid(1000)
    }

    fn me(&self) -> String {
        self.identity.public().fingerprint()
    }
}

/// The peer a one-to-one chat is with, as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatPeer {
    pub chat_id: u32,
    pub contact_id: u32,
    pub addr: String,
}

/// What handling a message led to, besides the state change.
#[derive(Debug, Default)]
pub struct Effects {
    /// Events for `/events` (documented shape).
    pub events: Vec<Value>,
    /// Sequence numbers to acknowledge, by (chat, contact, sender fingerprint).
    pub acks: BTreeMap<(u32, u32, String), Vec<u64>>,
    /// New outbox entries are due.
    pub send: bool,
}

/// Why an operator's action was refused.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error(transparent)]
    Files(#[from] PrivittyError),
    #[error("contact {contact_id} was never sent file {file_id} from this device")]
    NotARecipient { file_id: Uuid, contact_id: u32 },
    #[error(
        "access of contact {contact_id} to file {file_id} was revoked for good; send the file again to give access"
    )]
    RevokedForGood { file_id: Uuid, contact_id: u32 },
    #[error("file {file_id} was not received from a peer on this device")]
    NotReceived { file_id: Uuid },
}

impl State {
    pub fn new() -> State {
        State {
            version: STATE_VERSION,
            next_seq: 1,
            ..State::default()
        }
    }

    /// The pinned peer of a contact.
    pub fn peer(&self, contact_id: u32) -> Option<&Pinned> {
        self.peers.get(&contact_id)
    }

    fn message(&mut self, ctx: &Ctx<'_>, to: Option<String>, body: Body) -> (u64, Value) {
        let seq = self.next_seq.max(1);
        self.next_seq = seq + 1;
        let message = Message {
            proto: wire::PROTOCOL.to_owned(),
            v: wire::VERSION,
            from: ctx.me(),
            to,
            seq,
            ts: ctx.now(),
            body,
        };
        (seq, wire::seal_message(ctx.identity, &message))
    }

    /// Signs `body` and puts it in the outbox, due now.
    fn enqueue(
        &mut self,
        ctx: &Ctx<'_>,
        chat_id: u32,
        contact_id: u32,
        file: Option<Uuid>,
        body: Body,
    ) -> u64 {
        let to = self.peers.get(&contact_id).map(|p| p.fingerprint.clone());
        let kind = body.kind().to_owned();
        let (seq, payload) = self.message(ctx, to, body);
        self.outbox.insert(
            seq,
            Outgoing {
                chat_id,
                contact_id,
                kind,
                file,
                payload,
                attempts: 0,
                next_at_ms: ctx.now_ms,
            },
        );
        seq
    }

    /// A signed ack (never queued: a lost one is answered again when the message comes back).
    pub fn ack_payload(&mut self, ctx: &Ctx<'_>, to: &str, seqs: Vec<u64>) -> Value {
        self.message(ctx, Some(to.to_owned()), Body::Ack { seqs }).1
    }

    /// Starts the handshake with the contact of a one-to-one chat unless it is done or under
    /// way. True when a hello was queued.
    pub fn start_handshake(&mut self, ctx: &Ctx<'_>, peer: &ChatPeer) -> bool {
        if self.peers.contains_key(&peer.contact_id) {
            return false;
        }
        let under_way = self
            .outbox
            .values()
            .any(|o| o.contact_id == peer.contact_id && o.kind == "hello");
        if under_way {
            return false;
        }
        self.enqueue(ctx, peer.chat_id, peer.contact_id, None, hello(ctx, false));
        true
    }

    /// Handles one update read from the control instance of `peer`'s chat. Our own updates and
    /// anything that does not verify are dropped (`Err`), changing nothing.
    pub fn receive(
        &mut self,
        ctx: &Ctx<'_>,
        peer: &ChatPeer,
        update: Unverified,
        fx: &mut Effects,
    ) -> Result<(), Drop> {
        let me = ctx.me();
        if update.message.from == me {
            return Err(Drop::NotOurs);
        }
        if let Body::Hello { .. } = update.message.body {
            return self.receive_hello(ctx, peer, update, fx);
        }
        let pinned = self
            .peers
            .get(&peer.contact_id)
            .ok_or(Drop::UnknownSender)?;
        let keys = pinned.keys().ok_or(Drop::BadSignature)?;
        let message = update.verify(&keys)?;
        if message.to.as_deref() != Some(me.as_str()) {
            return Err(Drop::NotOurs);
        }
        let fresh = self
            .seen
            .entry(message.from.clone())
            .or_default()
            .mark(message.seq);
        if let Body::Ack { seqs } = &message.body {
            if fresh {
                self.acked(peer.contact_id, seqs);
            }
            return Ok(());
        }
        fx.acks
            .entry((peer.chat_id, peer.contact_id, message.from.clone()))
            .or_default()
            .push(message.seq);
        if let Some(p) = self.peers.get_mut(&peer.contact_id) {
            p.confirmed = true;
        }
        if !fresh {
            return Ok(());
        }
        match message.body {
            Body::Grant(grant) => self.receive_grant(ctx, peer, &message.from, grant, fx),
            Body::Revoke { file, generation } => self.receive_end(
                ctx,
                peer,
                &message.from,
                file,
                generation,
                Access::Revoked,
                fx,
            ),
            Body::Deny { file, generation } => self.receive_end(
                ctx,
                peer,
                &message.from,
                file,
                generation,
                Access::Denied,
                fx,
            ),
            Body::RenewRequest { file } => self.receive_renew_request(ctx, peer, file, fx),
            Body::Hello { .. } | Body::Ack { .. } => {}
        }
        Ok(())
    }

    fn receive_hello(
        &mut self,
        ctx: &Ctx<'_>,
        peer: &ChatPeer,
        update: Unverified,
        fx: &mut Effects,
    ) -> Result<(), Drop> {
        let keys = wire::hello_keys(&update.message.body).ok_or(Drop::Malformed)?;
        let message = update.verify(&keys)?;
        let Body::Hello { addr, reply, .. } = &message.body else {
            return Err(Drop::Malformed);
        };
        // A hello copied from another chat names another address.
        if !addr.eq_ignore_ascii_case(&peer.addr) {
            return Err(Drop::NotOurs);
        }
        let me = ctx.me();
        if message.to.as_deref().is_some_and(|to| to != me) {
            return Err(Drop::NotOurs);
        }
        if let Some(pinned) = self.peers.get(&peer.contact_id)
            && pinned.fingerprint != message.from
        {
            tracing::warn!(
                contact_id = peer.contact_id,
                pinned = %pinned.fingerprint,
                presented = %message.from,
                "a peer presented another key than the one pinned to it; ignored"
            );
            return Err(Drop::UnknownSender);
        }
        let fresh = self
            .seen
            .entry(message.from.clone())
            .or_default()
            .mark(message.seq);
        fx.acks
            .entry((peer.chat_id, peer.contact_id, message.from.clone()))
            .or_default()
            .push(message.seq);
        if !fresh {
            return Ok(());
        }
        let newly = !self.peers.contains_key(&peer.contact_id);
        let pinned = self.peers.entry(peer.contact_id).or_insert_with(|| Pinned {
            fingerprint: message.from.clone(),
            signing: wire::encode32(&keys.signing),
            agreement: wire::encode32(&keys.agreement),
            addr: peer.addr.clone(),
            chat_id: peer.chat_id,
            pinned_at: ctx.now(),
            confirmed: false,
        });
        pinned.confirmed |= *reply || message.to.is_some();
        if !*reply {
            self.enqueue(ctx, peer.chat_id, peer.contact_id, None, hello(ctx, true));
            fx.send = true;
        }
        // Our own unanswered hello is answered by theirs.
        self.outbox.retain(|_, o| {
            !(o.contact_id == peer.contact_id && o.kind == "hello" && o.payload_is_first_hello())
        });
        if newly {
            fx.events.push(json!({
                "type": "PrivittyPeerHandshakeComplete",
                "account_id": ctx.account_id,
                "chat_id": peer.chat_id,
                "contact_id": peer.contact_id,
                "peer_fingerprint": message.from,
            }));
            fx.events.push(json!({
                "type": "PrivittyChatEncryptionChanged",
                "account_id": ctx.account_id,
                "chat_id": peer.chat_id,
                "encrypted": true,
            }));
            self.release_waiting(ctx, peer.contact_id, fx);
        }
        Ok(())
    }

    /// Sends the grants that waited for `contact_id`'s handshake.
    fn release_waiting(&mut self, ctx: &Ctx<'_>, contact_id: u32, fx: &mut Effects) {
        let files: Vec<Uuid> = self
            .waiting
            .iter()
            .filter(|(c, _)| *c == contact_id)
            .map(|(_, f)| *f)
            .collect();
        for file in files {
            self.waiting.remove(&(contact_id, file));
            match self.send_grant(ctx, file, contact_id) {
                Ok(()) => fx.send = true,
                Err(e) => {
                    tracing::warn!(%file, contact_id, error = %e, "a waiting grant cannot be sent")
                }
            }
        }
    }

    fn acked(&mut self, contact_id: u32, seqs: &[u64]) {
        for seq in seqs {
            let Some(o) = self.outbox.get(seq) else {
                continue;
            };
            if o.contact_id != contact_id {
                continue;
            }
            if let (Some(file), "grant") = (o.file, o.kind.as_str())
                && let Some(g) = self
                    .outbound
                    .get_mut(&file)
                    .and_then(|m| m.get_mut(&contact_id))
            {
                g.delivered = true;
            }
            self.outbox.remove(seq);
        }
    }

    fn receive_grant(
        &mut self,
        ctx: &Ctx<'_>,
        peer: &ChatPeer,
        from: &str,
        grant: Grant,
        fx: &mut Effects,
    ) {
        if let Some(held) = self.inbound.get(&grant.file) {
            if held.owner_fingerprint != from {
                tracing::warn!(file = %grant.file, "a grant for a file id another peer owns; ignored");
                return;
            }
            if grant.generation <= held.policy.generation {
                return;
            }
        }
        let Some(key) = wire::open_key(ctx.identity, grant.file, &grant.header, &grant.key) else {
            tracing::warn!(file = %grant.file, contact_id = peer.contact_id, "a grant whose key does not open with our identity; ignored");
            return;
        };
        let sealed = seal_inbound(ctx.files, grant.file, &grant.header, &key);
        let held = InGrant {
            owner_contact_id: peer.contact_id,
            owner_fingerprint: from.to_owned(),
            chat_id: peer.chat_id,
            policy: GrantPolicy {
                generation: grant.generation,
                access: Access::Active,
                expires_at: grant.expires_at,
                download: grant.download,
                forward: grant.forward,
            },
            sealed_key: Some(sealed),
            header: grant.header,
            name: grant.name,
            size: grant.size,
            updated_at: ctx.now(),
            renew_requested_at: None,
        };
        fx.events.push(json!({
            "type": "PrivittyFileAccessChanged",
            "account_id": ctx.account_id,
            "chat_id": peer.chat_id,
            "file_id": grant.file,
            "peer_contact_id": peer.contact_id,
            "status": "active",
            "allow_download": held.policy.download,
            "allow_forward": held.policy.forward,
            "expires_at": held.policy.expires_at.map(rfc3339),
        }));
        self.inbound.insert(grant.file, held);
    }

    #[allow(clippy::too_many_arguments)]
    fn receive_end(
        &mut self,
        ctx: &Ctx<'_>,
        peer: &ChatPeer,
        from: &str,
        file: Uuid,
        generation: u64,
        access: Access,
        fx: &mut Effects,
    ) {
        let held = self.inbound.entry(file).or_insert_with(|| InGrant {
            // A tombstone: the grant itself never arrived (or arrives later, and is older).
            owner_contact_id: peer.contact_id,
            owner_fingerprint: from.to_owned(),
            chat_id: peer.chat_id,
            policy: GrantPolicy {
                generation: 0,
                access,
                expires_at: None,
                download: false,
                forward: false,
            },
            sealed_key: None,
            header: String::new(),
            name: String::new(),
            size: 0,
            updated_at: ctx.now(),
            renew_requested_at: None,
        });
        if held.owner_fingerprint != from || generation <= held.policy.generation {
            return;
        }
        held.policy.generation = generation;
        held.policy.access = access;
        held.sealed_key = None;
        held.updated_at = ctx.now();
        fx.events.push(match access {
            Access::Revoked => json!({
                "type": "PrivittyFileAccessRevoked",
                "account_id": ctx.account_id,
                "chat_id": peer.chat_id,
                "file_id": file,
                "peer_contact_id": peer.contact_id,
            }),
            _ => json!({
                "type": "PrivittyFileAccessChanged",
                "account_id": ctx.account_id,
                "chat_id": peer.chat_id,
                "file_id": file,
                "peer_contact_id": peer.contact_id,
                "status": access.as_str(),
            }),
        });
    }

    fn receive_renew_request(
        &mut self,
        ctx: &Ctx<'_>,
        peer: &ChatPeer,
        file: Uuid,
        fx: &mut Effects,
    ) {
        let Some(given) = self
            .outbound
            .get_mut(&file)
            .and_then(|m| m.get_mut(&peer.contact_id))
        else {
            return;
        };
        given.renew_requested_at = Some(ctx.now());
        fx.events.push(json!({
            "type": "PrivittyAccessRenewRequested",
            "account_id": ctx.account_id,
            "chat_id": given.chat_id,
            "file_id": file,
            "peer_contact_id": peer.contact_id,
        }));
    }

    // ---- the owner's actions ----

    /// After `privitty_send_file(_group)`: gives each recipient access as the file's policy says;
    /// recipients without a handshake get theirs when it completes.
    pub fn share(
        &mut self,
        ctx: &Ctx<'_>,
        file: Uuid,
        chat_id: u32,
        recipients: &[u32],
    ) -> Result<(), ActionError> {
        let record = ctx.files.file_record(file)?;
        for &contact_id in recipients {
            let given = self
                .outbound
                .entry(file)
                .or_default()
                .entry(contact_id)
                .or_insert(OutGrant {
                    chat_id,
                    policy: GrantPolicy {
                        generation: 0,
                        access: Access::Active,
                        expires_at: record.meta.expires_at,
                        download: record.meta.allow_download,
                        forward: record.meta.allow_forward,
                    },
                    delivered: false,
                    renew_requested_at: None,
                });
            given.policy.generation += 1;
            self.grant_or_wait(ctx, file, contact_id)?;
        }
        Ok(())
    }

    fn grant_or_wait(
        &mut self,
        ctx: &Ctx<'_>,
        file: Uuid,
        contact_id: u32,
    ) -> Result<(), ActionError> {
        if self.peers.contains_key(&contact_id) {
            self.send_grant(ctx, file, contact_id)
        } else {
            self.waiting.insert((contact_id, file));
            Ok(())
        }
    }

    /// Seals the key to the pinned recipient and queues the grant (replacing an unsent older one).
    fn send_grant(
        &mut self,
        ctx: &Ctx<'_>,
        file: Uuid,
        contact_id: u32,
    ) -> Result<(), ActionError> {
        let (record, key) = ctx.files.owner_key(file)?;
        let peer = self
            .peers
            .get(&contact_id)
            .expect("send_grant needs a pinned peer");
        let keys = peer.keys().ok_or_else(|| {
            PrivittyError::store("peer state", "a pinned key is not valid base64url")
        })?;
        let chat = peer.chat_id;
        let given = self
            .outbound
            .get(&file)
            .and_then(|m| m.get(&contact_id))
            .cloned()
            .ok_or(ActionError::NotARecipient {
                file_id: file,
                contact_id,
            })?;
        let grant = Grant {
            file,
            header: record.header_sha256.clone(),
            generation: given.policy.generation,
            key: wire::seal_key(&keys, file, &record.header_sha256, &key),
            download: given.policy.download,
            forward: given.policy.forward,
            expires_at: given.policy.expires_at,
            name: record.meta.original_name.clone(),
            size: record.meta.original_size,
        };
        self.drop_queued(file, contact_id);
        self.enqueue(ctx, chat, contact_id, Some(file), Body::Grant(grant));
        Ok(())
    }

    /// Removes unsent or unacknowledged messages about `file` to `contact_id` (a newer decision
    /// replaces them; a revoked key must not leave after the revocation).
    fn drop_queued(&mut self, file: Uuid, contact_id: u32) {
        self.outbox
            .retain(|_, o| !(o.contact_id == contact_id && o.file == Some(file)));
    }

    fn given_mut(&mut self, file: Uuid, contact_id: u32) -> Result<&mut OutGrant, ActionError> {
        self.outbound
            .get_mut(&file)
            .and_then(|m| m.get_mut(&contact_id))
            .ok_or(ActionError::NotARecipient {
                file_id: file,
                contact_id,
            })
    }

    /// `privitty_send_file_access`: (re)grants access for `duration_s` seconds from now (0 =
    /// without end).
    pub fn grant(
        &mut self,
        ctx: &Ctx<'_>,
        file: Uuid,
        contact_id: u32,
        duration_s: u64,
    ) -> Result<OutGrant, ActionError> {
        let now = ctx.now();
        let given = self.given_mut(file, contact_id)?;
        if given.policy.access == Access::Revoked {
            return Err(ActionError::RevokedForGood {
                file_id: file,
                contact_id,
            });
        }
        given.policy.generation += 1;
        given.policy.access = Access::Active;
        given.delivered = false;
        given.renew_requested_at = None;
        given.policy.expires_at = (duration_s > 0).then(|| now.saturating_add(duration_s as i64));
        let out = given.clone();
        self.grant_or_wait(ctx, file, contact_id)?;
        Ok(out)
    }

    /// `privitty_deny_file_access` / `privitty_revoke_file_access` for one recipient.
    pub fn end(
        &mut self,
        ctx: &Ctx<'_>,
        file: Uuid,
        contact_id: u32,
        access: Access,
    ) -> Result<OutGrant, ActionError> {
        let given = self.given_mut(file, contact_id)?;
        if given.policy.access == Access::Revoked {
            return Ok(given.clone());
        }
        given.policy.generation += 1;
        given.policy.access = access;
        given.delivered = false;
        given.renew_requested_at = None;
        let (generation, out) = (given.policy.generation, given.clone());
        self.waiting.remove(&(contact_id, file));
        self.drop_queued(file, contact_id);
        // A recipient without a handshake never had a key: nothing to tell it.
        if let Some(peer) = self.peers.get(&contact_id) {
            let chat = peer.chat_id;
            let body = match access {
                Access::Revoked => Body::Revoke { file, generation },
                _ => Body::Deny { file, generation },
            };
            self.enqueue(ctx, chat, contact_id, Some(file), body);
        }
        Ok(out)
    }

    /// The recipients of `file` (owner side).
    pub fn recipients(&self, file: Uuid) -> Vec<u32> {
        self.outbound
            .get(&file)
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }

    // ---- the recipient's actions ----

    /// `privitty_init_access_grant_request`: asks the owner of a received file for access.
    pub fn request_renewal(&mut self, ctx: &Ctx<'_>, file: Uuid) -> Result<InGrant, ActionError> {
        let now = ctx.now();
        let held = self
            .inbound
            .get_mut(&file)
            .ok_or(ActionError::NotReceived { file_id: file })?;
        held.renew_requested_at = Some(now);
        let (chat, contact) = (held.chat_id, held.owner_contact_id);
        let out = held.clone();
        self.outbox
            .retain(|_, o| !(o.kind == "renew_request" && o.file == Some(file)));
        self.enqueue(ctx, chat, contact, Some(file), Body::RenewRequest { file });
        Ok(out)
    }

    /// The key of a received file, if access is active (expiry is the caller's check).
    pub fn inbound_key(&self, files: &Privitty, file: Uuid) -> Option<FileKey> {
        let held = self.inbound.get(&file)?;
        if held.policy.access != Access::Active {
            return None;
        }
        open_inbound(files, file, &held.header, held.sealed_key.as_deref()?)
    }

    // ---- sending ----

    /// Outbox entries due at `now_ms`, oldest first.
    pub fn due(&self, now_ms: i64) -> Vec<(u64, Outgoing)> {
        self.outbox
            .iter()
            .filter(|(_, o)| o.next_at_ms <= now_ms)
            .map(|(s, o)| (*s, o.clone()))
            .collect()
    }

    /// The earliest next send, if any.
    pub fn next_due(&self) -> Option<i64> {
        self.outbox.values().map(|o| o.next_at_ms).min()
    }

    /// Records a send of `seq` (handed to the engine); gives up after [`MAX_ATTEMPTS`].
    pub fn sent(&mut self, seq: u64, now_ms: i64) {
        let Some(o) = self.outbox.get_mut(&seq) else {
            return;
        };
        o.attempts += 1;
        if o.attempts >= MAX_ATTEMPTS {
            tracing::warn!(seq, kind = %o.kind, contact_id = o.contact_id, attempts = o.attempts, "no acknowledgement after every resend; giving the message up");
            self.outbox.remove(&seq);
            return;
        }
        let wait = RESEND_FIRST_MS
            .saturating_mul(1i64 << (o.attempts - 1).min(20))
            .min(RESEND_MAX_MS);
        o.next_at_ms = now_ms + wait;
    }
}

impl Outgoing {
    /// A first hello (not a reply), read back from the signed payload.
    fn payload_is_first_hello(&self) -> bool {
        wire::open_payload(&self.payload)
            .is_ok_and(|u| matches!(u.message.body, Body::Hello { reply: false, .. }))
    }
}

/// Our `hello`: our keys for the address we send from.
fn hello(ctx: &Ctx<'_>, reply: bool) -> Body {
    let keys = ctx.identity.public();
    Body::Hello {
        addr: ctx.addr.to_owned(),
        signing: wire::encode32(&keys.signing),
        agreement: wire::encode32(&keys.agreement),
        reply,
    }
}

fn inbound_aad(file: Uuid, header: &str) -> Vec<u8> {
    let mut aad = INBOUND_AAD.to_vec();
    aad.extend_from_slice(file.as_bytes());
    aad.extend_from_slice(header.as_bytes());
    aad
}

fn seal_inbound(files: &Privitty, file: Uuid, header: &str, key: &FileKey) -> String {
    files.store().seal(&inbound_aad(file, header), &key.0)
}

fn open_inbound(files: &Privitty, file: Uuid, header: &str, sealed: &str) -> Option<FileKey> {
    let bytes = files
        .store()
        .open_sealed(&inbound_aad(file, header), sealed)?;
    Some(FileKey(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests;
