//! Peer protocol timings against the mail hop, same run: complete gateways on the loopback mail
//! server; handshakes (one per pair), then ROUNDS rounds of a plain text message (the hop),
//! send → the peer can decrypt, and revoke → the peer refuses. Prints p50 / max of each next to
//! the hop and the goal (one hop + 100 ms). Run by `tests/bench/peer-bench.sh`.

use std::time::{Duration, Instant};

use privitty_tests::gateways::{ACCOUNT, Gateway, Gateways, secure_join};
use serde_json::{Value, json};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(name: &str, samples: &mut [Duration], hop: f64) {
    samples.sort();
    let p50 = ms(samples[samples.len() / 2]);
    let max = ms(*samples.last().expect("samples"));
    let verdict = if p50 <= hop + 100.0 { "within" } else { "over" };
    println!(
        "{name:<34} n={:<3} p50 {p50:>7.1} ms  max {max:>7.1} ms  ({verdict} hop + 100 ms = {:.1} ms)",
        samples.len(),
        hop + 100.0
    );
}

fn wait_downloaded(gw: &Gateway, from: usize, name: &str) -> u64 {
    let ev = gw.wait_event(from, name, |e| {
        e["type"] == "IncomingMsg"
            && e["msg_id"]
                .as_u64()
                .is_some_and(|id| gw.call("get_message", json!([ACCOUNT, id]))["fileName"] == name)
    });
    let id = ev.value["msg_id"].as_u64().expect("msg_id");
    gw.wait_message(id, "downloaded", |m| {
        m["downloadState"] == "Done" && m["file"].is_string()
    });
    id
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(8);
    let pairs: usize = std::env::var("PAIRS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    // Lets the engine's send rate limit (a burst of 3, then one mail a second) refill between
    // measurements, so each one starts from a quiet gateway.
    let quiet = Duration::from_millis(
        std::env::var("QUIET_MS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(3000),
    );
    let gw = match Gateways::start(pairs + 1) {
        Ok(gw) => gw,
        Err(skip) => {
            eprintln!("cannot run: {skip:?}");
            std::process::exit(2);
        }
    };
    let alice = &gw[0];
    let mut handshakes = Vec::new();
    let mut responder = Vec::new();
    // From the responder pinning the initiator to the initiator pinning the responder: the
    // handshake's second message.
    let mut replies = Vec::new();
    let mut joined = Vec::new();
    for i in 1..=pairs {
        let peer = &gw[i];
        let j = secure_join(alice, peer);
        std::thread::sleep(quiet);
        let (fa, fp) = (alice.events().cursor(), peer.events().cursor());
        let began = Instant::now();
        alice.call(
            "privitty_is_chat_encrypted",
            json!([ACCOUNT, j.inviter.chat_id]),
        );
        let pinned = peer
            .wait_event(fp, "handshake", |e| {
                e["type"] == "PrivittyPeerHandshakeComplete"
            })
            .at;
        let done = alice
            .wait_event(fa, "handshake", |e| {
                e["type"] == "PrivittyPeerHandshakeComplete" && e["chat_id"] == j.inviter.chat_id
            })
            .at;
        responder.push(pinned - began);
        handshakes.push(done - began);
        replies.push(done.saturating_duration_since(pinned));
        joined.push(j);
    }
    let bob = &gw[1];
    let j = joined[0];
    let (mut hops, mut sends, mut revokes) = (Vec::new(), Vec::new(), Vec::new());
    let (mut file_arrived, mut grant_arrived) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        std::thread::sleep(quiet);
        let from = bob.events().cursor();
        let sent = Instant::now();
        alice.call(
            "send_msg",
            json!([ACCOUNT, j.inviter.chat_id, {"text": format!("hop {round}")}]),
        );
        hops.push(bob.wait_incoming(from, j.joiner.chat_id).at - sent);

        std::thread::sleep(quiet);
        let name = format!("bench-{round}.bin");
        let path = alice.files_dir().join(&name);
        std::fs::write(&path, vec![round as u8; 20_000]).expect("write");
        let from = bob.events().cursor();
        let sent = Instant::now();
        let r = alice.call(
            "privitty_send_file",
            json!([
                ACCOUNT,
                j.inviter.chat_id,
                j.inviter.contact_id,
                path,
                true,
                false,
                0
            ]),
        );
        alice.call(
            "send_msg",
            json!([ACCOUNT, j.inviter.chat_id, {"file": r["encrypted_path"], "viewtype": "File"}]),
        );
        let file = r["file_id"].clone();
        let msg = wait_downloaded(bob, from, &format!("{name}.prv"));
        file_arrived.push(sent.elapsed());
        let grant = bob.wait_event(from, "grant", |e| {
            e["type"] == "PrivittyFileAccessChanged" && e["file_id"] == file
        });
        grant_arrived.push(grant.at - sent);
        let ok = bob.response("privitty_decrypt_file", json!([ACCOUNT, msg]));
        assert!(ok["result"]["path"].is_string(), "{ok}");
        sends.push(sent.elapsed());

        std::thread::sleep(quiet);
        let from = bob.events().cursor();
        let began = Instant::now();
        alice.call(
            "privitty_revoke_file_access",
            json!([ACCOUNT, j.inviter.chat_id, file, j.inviter.contact_id]),
        );
        bob.wait_event(from, "revoke", |e| {
            e["type"] == "PrivittyFileAccessRevoked" && e["file_id"] == file
        });
        let refused: Value = bob.response("privitty_decrypt_file", json!([ACCOUNT, msg]));
        assert!(refused["error"].is_object(), "{refused}");
        revokes.push(began.elapsed());
    }
    let mut sorted = hops.clone();
    sorted.sort();
    let hop = ms(sorted[sorted.len() / 2]);
    println!(
        "peer protocol vs the mail hop ({rounds} rounds, {pairs} handshakes, {quiet:?} quiet before each)"
    );
    summary("text hop (plain message)", &mut hops, hop);
    summary("handshake, responder pinned", &mut responder, hop);
    summary("handshake, initiator complete", &mut handshakes, hop);
    summary("  of which: the reply's hop", &mut replies, hop);
    summary("send → peer can decrypt", &mut sends, hop);
    summary("  of which: the .prv downloaded", &mut file_arrived, hop);
    summary("  of which: the grant applied", &mut grant_arrived, hop);
    summary("revoke → peer refuses", &mut revokes, hop);
    println!(
        "note: the initiator's handshake is a round trip (hello, then the reply hello: two messages, each a hop); send → decrypt includes the file's own delivery, and the grant travels in a second mail"
    );
}
