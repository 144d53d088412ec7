//! The protocol rules between two (or three) in-memory devices: messages go from one outbox to
//! the other's `receive`, in any order, any number of times.

use std::time::SystemTime;

use serde_json::Value;
use tempfile::TempDir;
use uuid::Uuid;

use super::*;
use crate::privitty::{EncryptRequest, Privitty};

/// One device: its key store, identity and protocol state.
struct Device {
    _dir: TempDir,
    files: Privitty,
    identity: Identity,
    state: State,
    addr: String,
    now_ms: i64,
}

impl Device {
    fn new(addr: &str) -> Device {
        let dir = tempfile::tempdir().unwrap();
        let files = Privitty::open(dir.path()).unwrap();
        Device {
            _dir: dir,
            files,
            identity: Identity::generate(),
            state: State::new(),
            addr: addr.to_owned(),
            now_ms: 1_800_000_000_000,
        }
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            account_id: 1,
            identity: &self.identity,
            files: &self.files,
            addr: &self.addr,
            now_ms: self.now_ms,
        }
    }

    /// Runs a state transition with this device's context.
    fn with<T>(&mut self, f: impl FnOnce(&mut State, &Ctx<'_>) -> T) -> T {
        let mut state = std::mem::take(&mut self.state);
        let out = f(&mut state, &self.ctx());
        self.state = state;
        out
    }

    fn encrypt(&self, chat_id: u32, peer: Option<u32>, download: bool) -> Uuid {
        let src = self._dir.path().join(format!("f-{}", Uuid::new_v4()));
        std::fs::write(&src, b"the protected bytes").unwrap();
        let done = self
            .files
            .encrypt_file(
                &EncryptRequest {
                    account_id: 1,
                    chat_id,
                    peer_contact_id: peer,
                    path: src,
                    allow_download: download,
                    allow_forward: false,
                    duration_minutes: 0,
                },
                SystemTime::now(),
            )
            .unwrap();
        done.file_id
    }

    /// Takes everything due in the outbox (marking it sent).
    fn take_due(&mut self) -> Vec<Value> {
        let now = self.now_ms;
        let due = self.state.due(now);
        for (seq, _) in &due {
            self.state.sent(*seq, now);
        }
        due.into_iter().map(|(_, o)| o.payload).collect()
    }

    /// Handles payloads as arriving from `peer`; returns the events and the acks it sends back.
    fn receive(&mut self, peer: &ChatPeer, payloads: &[Value]) -> (Vec<Value>, Vec<Value>) {
        self.with(|state, ctx| {
            let mut fx = Effects::default();
            for p in payloads {
                if let Ok(u) = wire::open_payload(p) {
                    let _ = state.receive(ctx, peer, u, &mut fx);
                }
            }
            let acks = std::mem::take(&mut fx.acks)
                .into_iter()
                .map(|((_, _, from), seqs)| state.ack_payload(ctx, &from, seqs))
                .collect();
            (fx.events, acks)
        })
    }
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// Alice (contact 10 on bob's side, chat 20) and bob (contact 11 on alice's side, chat 21).
fn pair() -> (Device, Device, ChatPeer, ChatPeer) {
    let alice = Device::new("alice@example.org");
    let bob = Device::new("bob@example.org");
    // How each side sees the other.
    let bob_seen_by_alice = ChatPeer {
        chat_id: 21,
        contact_id: 11,
        addr: "bob@example.org".into(),
    };
    let alice_seen_by_bob = ChatPeer {
        chat_id: 20,
        contact_id: 10,
        addr: "ALICE@example.org".into(),
    };
    (alice, bob, bob_seen_by_alice, alice_seen_by_bob)
}

/// Runs the exchange until both outboxes are quiet; returns every event of each side.
fn settle(
    alice: &mut Device,
    bob: &mut Device,
    b_at_a: &ChatPeer,
    a_at_b: &ChatPeer,
) -> (Vec<Value>, Vec<Value>) {
    let (mut ea, mut eb) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        let to_bob = alice.take_due();
        let (ev, acks) = bob.receive(a_at_b, &to_bob);
        eb.extend(ev);
        alice.receive(b_at_a, &acks);
        let to_alice = bob.take_due();
        let (ev, acks) = alice.receive(b_at_a, &to_alice);
        ea.extend(ev);
        bob.receive(a_at_b, &acks);
        if to_bob.is_empty() && to_alice.is_empty() {
            break;
        }
    }
    (ea, eb)
}

#[test]
fn a_file_sent_before_the_handshake_gets_its_grant_when_it_completes() {
    let (mut alice, mut bob, b_at_a, a_at_b) = pair();
    let file = alice.encrypt(21, Some(11), true);
    alice.with(|s, c| s.share(c, file, 21, &[11])).unwrap();
    assert!(
        alice.state.waiting.contains(&(11, file)),
        "waits for bob's keys"
    );
    assert!(alice.with(|s, c| s.start_handshake(c, &b_at_a)));
    assert!(!alice.with(|s, c| s.start_handshake(c, &b_at_a)), "once");

    let (ea, eb) = settle(&mut alice, &mut bob, &b_at_a, &a_at_b);
    assert_eq!(
        kinds(&eb),
        [
            "PrivittyPeerHandshakeComplete",
            "PrivittyChatEncryptionChanged",
            "PrivittyFileAccessChanged"
        ]
    );
    assert_eq!(
        kinds(&ea),
        [
            "PrivittyPeerHandshakeComplete",
            "PrivittyChatEncryptionChanged"
        ]
    );
    assert_eq!(
        alice.state.peer(11).unwrap().fingerprint,
        bob.identity.public().fingerprint()
    );
    assert_eq!(
        bob.state.peer(10).unwrap().fingerprint,
        alice.identity.public().fingerprint()
    );
    assert!(alice.state.outbox.is_empty(), "everything acknowledged");
    assert!(alice.state.outbound[&file][&11].delivered);
    // Bob holds exactly alice's file key, sealed by his own master key.
    let (_, key) = alice.files.owner_key(file).unwrap();
    assert_eq!(bob.state.inbound_key(&bob.files, file).unwrap().0, key.0);
    let sealed = bob.state.inbound[&file].sealed_key.clone().unwrap();
    assert!(!sealed.contains(&hex::encode(key.0)));
    // Not with anybody else's master key.
    let other = Device::new("x@example.org");
    assert!(bob.state.inbound_key(&other.files, file).is_none());
}

#[test]
fn replayed_forged_and_misaddressed_messages_change_nothing() {
    let (mut alice, mut bob, b_at_a, a_at_b) = pair();
    alice.with(|s, c| s.start_handshake(c, &b_at_a));
    settle(&mut alice, &mut bob, &b_at_a, &a_at_b);
    let file = alice.encrypt(21, Some(11), true);
    alice.with(|s, c| s.share(c, file, 21, &[11])).unwrap();
    let grant = alice.take_due();
    assert_eq!(grant.len(), 1);
    let (events, _) = bob.receive(&a_at_b, &grant);
    assert_eq!(kinds(&events), ["PrivittyFileAccessChanged"]);
    let before = bob.state.clone();

    // The same update again (a resend, or a client replaying it): acknowledged, nothing else.
    let (events, acks) = bob.receive(&a_at_b, &grant);
    assert!(events.is_empty());
    assert_eq!(acks.len(), 1);
    let mut without_seq = bob.state.clone();
    without_seq.next_seq = before.next_seq;
    assert_eq!(without_seq, before);

    // Mallory's revoke, claiming to be alice, signed with mallory's key.
    let mallory = Identity::generate();
    let forged = wire::seal_message(
        &mallory,
        &Message {
            proto: wire::PROTOCOL.into(),
            v: wire::VERSION,
            from: alice.identity.public().fingerprint(),
            to: Some(bob.identity.public().fingerprint()),
            seq: 999,
            ts: 0,
            body: Body::Revoke {
                file,
                generation: 99,
            },
        },
    );
    // An unsigned copy of a real message, and alice's hello replayed into a chat with carol.
    let mut unsigned = grant[0].clone();
    unsigned["s"] = Value::String(String::new());
    let (events, acks) = bob.receive(&a_at_b, &[forged, unsigned]);
    assert!(events.is_empty() && acks.is_empty());
    assert_eq!(bob.state.inbound[&file].policy.access, Access::Active);

    let mut carol = Device::new("carol@example.org");
    let carol_sees_bob = ChatPeer {
        chat_id: 30,
        contact_id: 12,
        addr: "bob@example.org".into(),
    };
    bob.with(|s, c| {
        s.peers.clear();
        s.start_handshake(c, &a_at_b)
    });
    let hello = bob.take_due();
    // Bob's hello names bob: carol pins it only for bob's contact, never for somebody else.
    let wrong = ChatPeer {
        addr: "dave@example.org".into(),
        ..carol_sees_bob.clone()
    };
    carol.receive(&wrong, &hello);
    assert!(
        carol.state.peer(12).is_none(),
        "a hello for another address is dropped"
    );
    carol.receive(&carol_sees_bob, &hello);
    assert!(carol.state.peer(12).is_some());
}

#[test]
fn a_revoke_that_overtakes_its_grant_wins() {
    let (mut alice, mut bob, b_at_a, a_at_b) = pair();
    alice.with(|s, c| s.start_handshake(c, &b_at_a));
    settle(&mut alice, &mut bob, &b_at_a, &a_at_b);
    let file = alice.encrypt(21, Some(11), true);
    alice.with(|s, c| s.share(c, file, 21, &[11])).unwrap();
    let grant = alice.take_due();
    alice
        .with(|s, c| s.end(c, file, 11, Access::Revoked))
        .unwrap();
    let revoke = alice.take_due();
    assert_eq!(revoke.len(), 1, "the unacknowledged grant left the outbox");
    let (events, _) = bob.receive(&a_at_b, &revoke);
    assert_eq!(kinds(&events), ["PrivittyFileAccessRevoked"]);
    let (events, _) = bob.receive(&a_at_b, &grant);
    assert!(
        events.is_empty(),
        "an older grant after the revoke is ignored"
    );
    assert_eq!(bob.state.inbound[&file].policy.access, Access::Revoked);
    assert!(bob.state.inbound[&file].sealed_key.is_none());
    assert!(bob.state.inbound_key(&bob.files, file).is_none());
    // Revoked for good on the owner's side.
    assert!(matches!(
        alice.with(|s, c| s.grant(c, file, 11, 60)),
        Err(ActionError::RevokedForGood { .. })
    ));
}

#[test]
fn deny_ends_access_and_a_later_grant_with_expiry_restores_it() {
    let (mut alice, mut bob, b_at_a, a_at_b) = pair();
    alice.with(|s, c| s.start_handshake(c, &b_at_a));
    settle(&mut alice, &mut bob, &b_at_a, &a_at_b);
    let file = alice.encrypt(21, Some(11), true);
    alice.with(|s, c| s.share(c, file, 21, &[11])).unwrap();
    settle(&mut alice, &mut bob, &b_at_a, &a_at_b);
    bob.with(|s, c| s.request_renewal(c, file)).unwrap();
    let (ea, _) = settle(&mut alice, &mut bob, &b_at_a, &a_at_b);
    assert_eq!(kinds(&ea), ["PrivittyAccessRenewRequested"]);
    assert!(
        alice.state.outbound[&file][&11]
            .renew_requested_at
            .is_some()
    );

    alice
        .with(|s, c| s.end(c, file, 11, Access::Denied))
        .unwrap();
    let (_, eb) = settle(&mut alice, &mut bob, &b_at_a, &a_at_b);
    assert_eq!(eb[0]["status"], "denied");
    assert!(bob.state.inbound_key(&bob.files, file).is_none());

    let given = alice.with(|s, c| s.grant(c, file, 11, 5)).unwrap();
    assert_eq!(given.policy.expires_at, Some(alice.ctx().now() + 5));
    let (_, eb) = settle(&mut alice, &mut bob, &b_at_a, &a_at_b);
    assert_eq!(eb[0]["status"], "active");
    assert_eq!(
        bob.state.inbound[&file].policy.expires_at,
        given.policy.expires_at
    );
    assert!(bob.state.inbound_key(&bob.files, file).is_some());
}

#[test]
fn a_group_member_revoked_alone_leaves_the_others_their_key() {
    let mut alice = Device::new("alice@example.org");
    let mut bob = Device::new("bob@example.org");
    let mut carol = Device::new("carol@example.org");
    let bob_at_a = ChatPeer {
        chat_id: 21,
        contact_id: 11,
        addr: "bob@example.org".into(),
    };
    let carol_at_a = ChatPeer {
        chat_id: 22,
        contact_id: 12,
        addr: "carol@example.org".into(),
    };
    let a_at_b = ChatPeer {
        chat_id: 20,
        contact_id: 10,
        addr: "alice@example.org".into(),
    };
    let a_at_c = ChatPeer {
        chat_id: 40,
        contact_id: 10,
        addr: "alice@example.org".into(),
    };
    let file = alice.encrypt(50, None, true);
    alice.with(|s, c| s.share(c, file, 50, &[11, 12])).unwrap();
    alice.with(|s, c| s.start_handshake(c, &bob_at_a));
    alice.with(|s, c| s.start_handshake(c, &carol_at_a));
    // Alice's outbox holds one hello per member; deliver each to its member.
    let route = |alice: &mut Device, bob: &mut Device, carol: &mut Device| {
        for _ in 0..6 {
            let due: Vec<(u64, Outgoing)> = alice.state.due(alice.now_ms);
            for (seq, _) in &due {
                alice.state.sent(*seq, alice.now_ms);
            }
            for (_, o) in due {
                let (dev, at) = if o.contact_id == 11 {
                    (&mut *bob, &a_at_b)
                } else {
                    (&mut *carol, &a_at_c)
                };
                let (_, acks) = dev.receive(at, &[o.payload]);
                let back = dev.take_due();
                let from = if o.contact_id == 11 {
                    &bob_at_a
                } else {
                    &carol_at_a
                };
                alice.receive(from, &acks);
                let (_, acks) = alice.receive(from, &back);
                dev.receive(at, &acks);
            }
        }
    };
    route(&mut alice, &mut bob, &mut carol);
    assert!(bob.state.inbound_key(&bob.files, file).is_some());
    assert!(carol.state.inbound_key(&carol.files, file).is_some());
    alice
        .with(|s, c| s.end(c, file, 11, Access::Revoked))
        .unwrap();
    route(&mut alice, &mut bob, &mut carol);
    assert!(bob.state.inbound_key(&bob.files, file).is_none());
    assert!(carol.state.inbound_key(&carol.files, file).is_some());
    assert_eq!(
        alice.state.outbound[&file][&12].policy.access,
        Access::Active
    );
}

#[test]
fn seen_sets_compact_and_resends_back_off() {
    let mut seen = Seen::default();
    for seq in [3, 1, 2, 5] {
        assert!(seen.mark(seq));
    }
    assert!(!seen.mark(2) && !seen.mark(5));
    assert_eq!((seen.low, seen.above.len()), (3, 1));

    let mut alice = Device::new("alice@example.org");
    let bob = ChatPeer {
        chat_id: 21,
        contact_id: 11,
        addr: "bob@example.org".into(),
    };
    alice.with(|s, c| s.start_handshake(c, &bob));
    let seq = *alice.state.outbox.keys().next().unwrap();
    let t0 = alice.now_ms;
    let mut waits = Vec::new();
    for _ in 0..4 {
        let now = alice.state.outbox[&seq].next_at_ms;
        alice.state.sent(seq, now);
        waits.push(alice.state.outbox[&seq].next_at_ms - now);
    }
    assert_eq!(waits, [4_000, 8_000, 16_000, 32_000]);
    assert!(t0 > 0);
    for _ in 0..MAX_ATTEMPTS {
        alice.state.sent(seq, 0);
    }
    assert!(alice.state.outbox.is_empty(), "given up after MAX_ATTEMPTS");
}

/// A state file as the code before [`GrantPolicy`] was split out of the grants wrote it
/// (`to_vec_pretty`, as the peer module saves it), captured from it: grants given and held, with
/// every number of a grant at an extreme (the flattened fields are buffered by serde before they
/// are read: u64 above i64, i64 below 0 and 2^53 + 1, which an f64 would round, must come back
/// exactly).
const STATE_BEFORE_GRANT_POLICY: &str = r#"{
  "version": 1,
  "next_seq": 1,
  "peers": {},
  "seen": {},
  "chats": {},
  "outbox": {},
  "waiting": [],
  "outbound": {
    "5f0c6a8e-2b7d-4c1e-9a3f-0d4e8b6c2a91": {
      "20": {
        "chat_id": 12,
        "generation": 3,
        "access": "active",
        "expires_at": 1795777865,
        "download": true,
        "forward": false,
        "delivered": true,
        "renew_requested_at": 1795776000
      }
    },
    "c3a1e2f4-7b8d-4e6f-8a9b-1c2d3e4f5a6b": {
      "4294967295": {
        "chat_id": 4294967295,
        "generation": 18446744073709551615,
        "access": "revoked",
        "expires_at": -9223372036854775808,
        "download": false,
        "forward": true,
        "delivered": false,
        "renew_requested_at": null
      }
    }
  },
  "inbound": {
    "5f0c6a8e-2b7d-4c1e-9a3f-0d4e8b6c2a91": {
      "owner_contact_id": 10,
      "owner_fingerprint": "fp-owner",
      "chat_id": 11,
      "generation": 2,
      "access": "active",
      "sealed_key": "a1b2c3",
      "header": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
      "download": false,
      "forward": true,
      "expires_at": null,
      "name": "report.pdf",
      "size": 1048577,
      "updated_at": 1795774300,
      "renew_requested_at": null
    },
    "c3a1e2f4-7b8d-4e6f-8a9b-1c2d3e4f5a6b": {
      "owner_contact_id": 4294967295,
      "owner_fingerprint": "fp-other",
      "chat_id": 13,
      "generation": 18446744073709551615,
      "access": "denied",
      "sealed_key": null,
      "header": "",
      "download": true,
      "forward": false,
      "expires_at": 9223372036854775807,
      "name": "",
      "size": 18446744073709551615,
      "updated_at": -9223372036854775808,
      "renew_requested_at": 9007199254740993
    }
  }
}"#;

#[test]
fn grants_written_before_grant_policy_read_back_the_same() {
    let file = Uuid::parse_str("5f0c6a8e-2b7d-4c1e-9a3f-0d4e8b6c2a91").unwrap();
    let big = Uuid::parse_str("c3a1e2f4-7b8d-4e6f-8a9b-1c2d3e4f5a6b").unwrap();
    let state: State = serde_json::from_str(STATE_BEFORE_GRANT_POLICY).unwrap();
    let given = |chat_id, policy, delivered, renew_requested_at| OutGrant {
        chat_id,
        policy,
        delivered,
        renew_requested_at,
    };
    let policy = |generation, access, expires_at, download, forward| GrantPolicy {
        generation,
        access,
        expires_at,
        download,
        forward,
    };
    let mut expected = State::new();
    expected.outbound.entry(file).or_default().insert(
        20,
        given(
            12,
            policy(3, Access::Active, Some(1_795_777_865), true, false),
            true,
            Some(1_795_776_000),
        ),
    );
    expected.outbound.entry(big).or_default().insert(
        u32::MAX,
        given(
            u32::MAX,
            policy(u64::MAX, Access::Revoked, Some(i64::MIN), false, true),
            false,
            None,
        ),
    );
    expected.inbound.insert(
        file,
        InGrant {
            owner_contact_id: 10,
            owner_fingerprint: "fp-owner".to_owned(),
            chat_id: 11,
            policy: policy(2, Access::Active, None, false, true),
            sealed_key: Some("a1b2c3".to_owned()),
            header: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".to_owned(),
            name: "report.pdf".to_owned(),
            size: 1_048_577,
            updated_at: 1_795_774_300,
            renew_requested_at: None,
        },
    );
    expected.inbound.insert(
        big,
        InGrant {
            owner_contact_id: u32::MAX,
            owner_fingerprint: "fp-other".to_owned(),
            chat_id: 13,
            policy: policy(u64::MAX, Access::Denied, Some(i64::MAX), true, false),
            sealed_key: None,
            header: String::new(),
            name: String::new(),
            size: u64::MAX,
            updated_at: i64::MIN,
            renew_requested_at: Some(9_007_199_254_740_993),
        },
    );
    assert_eq!(state, expected);

    // Written back: the same keys with the same values. The text differs only in the order of
    // a held grant's keys (its policy fields now come together), so the first save after an
    // upgrade rewrites the file once; after that it is stable (a save writes only on a change).
    let again = serde_json::to_vec_pretty(&state).unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&again).unwrap(),
        serde_json::from_str::<Value>(STATE_BEFORE_GRANT_POLICY).unwrap(),
    );
    let reread: State = serde_json::from_slice(&again).unwrap();
    assert_eq!(reread, expected);
    assert_eq!(serde_json::to_vec_pretty(&reread).unwrap(), again);
}
