//! The whole story on one machine (`tests/scripts/run-local.sh --demo`): the reference license
//! server, the loopback mail server, and two complete gateways — alice on 127.0.0.1:7200 and bob on
//! 127.0.0.1:7201 — licensed, their mail accounts configured and secure-joined. Writes
//! `<PRIVITTY_DEMO_DIR>/env.sh` (shell variables and helpers for the README walkthrough), prints
//! `ready` and the next commands, and stops everything it started on Ctrl-C (SIGINT) or SIGTERM.
//!
//! Exit codes: 0 stopped cleanly, 1 failed, 3 the mail server cannot run on this machine (the
//! message says why).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use privitty_tests::gateways::{Gateway, secure_join};
use privitty_tests::license_server::{LicenseServer, LicenseSpec};
use privitty_tests::mail_server::MailServer;

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

fn main() {
    let began = Instant::now();
    // Signals are taken before any child starts, so a Ctrl-C during start-up still cleans up
    // (it is handled once start-up is done). Handlers, not a blocked mask: children inherit a
    // mask, and a mail server started with SIGTERM blocked does not stop on SIGTERM.
    let signals = Signals::take();

    let demo = PathBuf::from(env_or("PRIVITTY_DEMO_DIR", "demo"));
    std::fs::create_dir_all(&demo).expect("create the demo directory");
    let demo = demo.canonicalize().expect("demo directory");
    let ports: Vec<String> = env_or("PRIVITTY_DEMO_PORTS", "7200 7201")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(ports.len(), 2, "PRIVITTY_DEMO_PORTS names two ports");
    for port in &ports {
        if std::net::TcpListener::bind(("127.0.0.1", port.parse::<u16>().expect("a port number")))
            .is_err()
        {
            eprintln!(
                "privitty-demo: 127.0.0.1:{port} is in use; stop what listens there or set PRIVITTY_DEMO_PORTS=\"<alice> <bob>\""
            );
            std::process::exit(1);
        }
    }

    eprintln!("starting the loopback mail server …");
    let mail = match MailServer::start() {
        Ok(m) => m,
        Err(skip) => {
            eprintln!("privitty-demo: {}", skip.0);
            std::process::exit(3);
        }
    };
    let license_dir = demo.join("license-server");
    std::fs::create_dir_all(&license_dir).expect("license server dir");
    let license = LicenseServer::start(&license_dir);
    let url = license.create_license(&LicenseSpec {
        seats: 2,
        ..LicenseSpec::default()
    });
    eprintln!("starting alice (:{}) and bob (:{}) …", ports[0], ports[1]);
    let (mut alice, mut bob) = std::thread::scope(|s| {
        let a = s.spawn(|| {
            let listen = format!("127.0.0.1:{}", ports[0]);
            Gateway::start_with("alice", &license, &url, &[("PRIVITTY_LISTEN", &listen)])
        });
        let b = s.spawn(|| {
            let listen = format!("127.0.0.1:{}", ports[1]);
            Gateway::start_with("bob", &license, &url, &[("PRIVITTY_LISTEN", &listen)])
        });
        (a.join().expect("alice"), b.join().expect("bob"))
    });
    alice.configure(mail.account());
    bob.configure(mail.account());
    eprintln!("secure-joining alice and bob …");
    let joined = secure_join(&alice, &bob);

    let env_file = demo.join("env.sh");
    let mut env = std::fs::File::create(&env_file).expect("write env.sh");
    write!(
        env,
        r#"# Written by privitty-demo: the two demo gateways and helpers for the README walkthrough.
export ALICE=http://{alice_addr} BOB=http://{bob_addr}
export ALICE_FILES={alice_files} BOB_FILES={bob_files}
export ALICE_DATA={alice_data} BOB_DATA={bob_data}
# alice's chat with bob and bob as alice's contact; bob's chat with alice and alice as his contact
export ALICE_CHAT={a_chat} ALICE_BOB={a_contact} BOB_CHAT={b_chat} BOB_ALICE={b_contact}
# For the CLI (privitty-edge --accounts "$ALICE_DATA" license status): the demo license server's key
export PRIVITTY_LICENSE_PUBKEY={pubkey}
export DEMO_ROOTS="{alice_root} {bob_root} {mail_dir}"

# rpc URL METHOD PARAMS: one JSON-RPC call, the whole answer on one line.
rpc() {{
  curl -sS "$1/rpc" -H 'Content-Type: application/json' \
    -d "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"$2\",\"params\":$3}}"
  echo
}}

# until_ok TRIES CMD...: runs CMD until it succeeds (every 0.2 s, at most TRIES times).
until_ok() {{
  local n=$1; shift
  until "$@"; do n=$((n - 1)); [ "$n" -gt 0 ] || return 1; sleep 0.2; done
}}

# wait_prv URL CHAT NAME: the id of the message carrying NAME, once it is fully downloaded.
wait_prv() {{
  _find_prv() {{
    local id
    for id in $(rpc "$1" get_chat_media "[1, $2, \"File\", null, null]" | jq -r '.result[]'); do
      if rpc "$1" get_message "[1, $id]" | jq -e --arg n "$3" '.result.fileName == $n and .result.file != null' >/dev/null; then
        echo "$id"; return 0
      fi
    done
    return 1
  }}
  until_ok 300 _find_prv "$@"
}}

# wait_status URL MSG STATUS: until privitty_get_file_display_status says STATUS.
wait_status() {{
  _is_status() {{ rpc "$1" privitty_get_file_display_status "[1, $2]" | jq -e --arg s "$3" '.result.status == $s' >/dev/null; }}
  until_ok 300 _is_status "$@"
}}
"#,
        alice_addr = alice.addr(),
        bob_addr = bob.addr(),
        alice_files = alice.files_dir().display(),
        bob_files = bob.files_dir().display(),
        alice_data = alice.dirs.accounts.display(),
        bob_data = bob.dirs.accounts.display(),
        a_chat = joined.inviter.chat_id,
        a_contact = joined.inviter.contact_id,
        b_chat = joined.joiner.chat_id,
        b_contact = joined.joiner.contact_id,
        pubkey = license.pubkey_path().display(),
        alice_root = alice.dirs.root.path().display(),
        bob_root = bob.dirs.root.path().display(),
        mail_dir = mail.dir().display(),
    )
    .expect("write env.sh");
    drop(env);

    println!(
        "ready in {:.1} s: alice {} ({}), bob {} ({}), secure-joined",
        began.elapsed().as_secs_f64(),
        alice.addr(),
        alice.email,
        bob.addr(),
        bob.email
    );
    println!("next, in another shell (the README's walkthrough):");
    println!("  source {}", env_file.display());
    println!("  rpc $ALICE send_msg \"[1, $ALICE_CHAT, {{\\\"text\\\": \\\"hello bob\\\"}}]\"");
    println!("  privitty-edge --accounts \"$ALICE_DATA\" license status");
    println!(
        "the API is open on loopback (PRIVITTY_API_AUTH=auto); on another address every call needs `Authorization: Bearer $(privitty-edge --accounts DIR api-token)`"
    );
    println!("Ctrl-C stops everything");
    let _ = std::io::stdout().flush();

    let signal = signals.wait();
    eprintln!("{signal}: stopping the gateways, the mail server and the license server …");
    alice.stop();
    bob.stop();
    drop(alice);
    drop(bob);
    drop(license);
    drop(mail);
    let _ = std::fs::remove_file(&env_file);
    eprintln!("stopped");
}

/// SIGINT and SIGTERM, caught from the moment [`Signals::take`] returns.
struct Signals {
    runtime: tokio::runtime::Runtime,
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn take() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("a runtime for the signal handlers");
        let _in = runtime.enter();
        let int = signal(SignalKind::interrupt()).expect("catch SIGINT");
        let term = signal(SignalKind::terminate()).expect("catch SIGTERM");
        drop(_in);
        Signals { runtime, int, term }
    }

    /// Waits for the first of them (one that came earlier counts) and names it.
    fn wait(mut self) -> &'static str {
        self.runtime.block_on(async {
            tokio::select! {
                _ = self.int.recv() => "SIGINT",
                _ = self.term.recv() => "SIGTERM",
            }
        })
    }
}
