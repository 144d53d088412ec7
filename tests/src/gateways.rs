//! N complete gateways talking to each other through a real mail server: each is privitty-init in
//! managed mode → privitty-edged → the real engine, with its own data dir and port (0), licensed at
//! start-up by the reference license server (one license, N seats, `PRIVITTY_LICENSE_URL`), its
//! messaging account configured on the loopback [`MailServer`] and its I/O started. Plus the
//! secure-join of two gateways and an SSE reader to wait for `/events` with a deadline.
//!
//! Owns: the gateways' order of start and stop (gateways first, then the license server, then the
//! mail server), one `/events` stream per gateway recorded from its start, and the JSON-RPC calls
//! that set a pair of gateways up. Must not: sleep to wait (everything waits on an event or on
//! [`support::eventually`] with a deadline), use a fixed port, or pass a test when the mail server
//! cannot run ([`Gateways::start`] returns the [`Skip`]). Starting the managed stack itself is
//! [`managed_harness::Stack`]'s: this module only chooses its environment.
//!
//! Every process's output and every data dir is printed when a test fails (by the guards of
//! `managed_harness`, `support` and `mail_server`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::license_server::{LicenseServer, LicenseSpec};
use crate::mail_server::{MailServer, Skip};
use crate::managed_harness::{self, Conn, Stack, StackSpec, TestDirs, msg};

/// How long any single awaited condition may take before the test fails.
pub const DEADLINE: Duration = managed_harness::DEADLINE;

/// The engine account edged manages.
pub const ACCOUNT: u64 = 1;

/// Names given to the gateways, in order (also their `PRIVITTY_PROFILE`, the display name).
pub const NAMES: [&str; 6] = ["alice", "bob", "carol", "dave", "erin", "frank"];

/// How long each phase of [`Gateways::start`] took.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartTimes {
    pub mail_server: Duration,
    /// Every stack up, licensed, serving.
    pub stacks: Duration,
    /// Every account configured on the mail server, I/O started.
    pub accounts: Duration,
}

/// The mail server, the license server and N gateways, dropped in that reverse order.
#[derive(Debug)]
pub struct Gateways {
    pub gateways: Vec<Gateway>,
    pub license: LicenseServer,
    /// The delivery URL of the license every gateway activated.
    pub license_url: String,
    pub times: StartTimes,
    // After the server that keeps its state in it.
    _license_dir: tempfile::TempDir,
    pub mail: MailServer,
}

impl Gateways {
    /// Starts the mail server and `n` gateways (see the module doc). `Err(Skip)` when the mail
    /// server cannot run here: the caller reports it (`skip.report(test)`) and returns.
    pub fn start(n: usize) -> Result<Gateways, Skip> {
        Gateways::start_with(n, &[])
    }

    /// [`Gateways::start`] with extra environment for every stack's privitty-init.
    pub fn start_with(n: usize, env: &[(&str, &str)]) -> Result<Gateways, Skip> {
        assert!(
            (1..=NAMES.len()).contains(&n),
            "1 to {} gateways",
            NAMES.len()
        );
        let mail = MailServer::start()?;
        let license_dir = tempfile::Builder::new()
            .prefix("privitty-license-")
            .tempdir()
            .expect("temp dir for the license server");
        let license = LicenseServer::start(license_dir.path());
        let license_url = license.create_license(&LicenseSpec {
            seats: n as u32,
            ..LicenseSpec::default()
        });

        let began = Instant::now();
        // In parallel: each stack's start is mostly waiting for its engine.
        let mut gateways: Vec<Gateway> = std::thread::scope(|s| {
            let handles: Vec<_> = NAMES[..n]
                .iter()
                .map(|name| {
                    let (license, url) = (&license, &license_url);
                    s.spawn(move || Gateway::start_with(name, license, url, env))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        let stacks = began.elapsed();

        let began = Instant::now();
        std::thread::scope(|s| {
            for gw in gateways.iter_mut() {
                let account = mail.account();
                s.spawn(move || gw.configure(account));
            }
        });
        let times = StartTimes {
            mail_server: mail.start_time,
            stacks,
            accounts: began.elapsed(),
        };
        Ok(Gateways {
            gateways,
            license,
            license_url,
            times,
            _license_dir: license_dir,
            mail,
        })
    }
}

impl std::ops::Index<usize> for Gateways {
    type Output = Gateway;

    fn index(&self, i: usize) -> &Gateway {
        &self.gateways[i]
    }
}

/// One complete stack with its messaging account.
#[derive(Debug)]
pub struct Gateway {
    pub name: String,
    /// The account's e-mail address (empty until configured).
    pub email: String,
    // Dropped in this order: the stream, the stack (stopped as a container stop does), the dirs
    // (listed when the test fails, then removed).
    events: EventStream,
    pub stack: Stack,
    pub dirs: TestDirs,
    /// How the stack was started (a restart uses it again).
    spec: StackSpec,
}

impl Gateway {
    /// Starts privitty-init managed with start-up activation of `license_url` and waits until
    /// generation 1 serves with the license; subscribes to `/events` before returning.
    pub fn start(name: &str, license: &LicenseServer, license_url: &str) -> Gateway {
        Gateway::start_with(name, license, license_url, &[])
    }

    /// [`Gateway::start`] with extra environment for privitty-init (e.g. a fixed
    /// `PRIVITTY_LISTEN`).
    pub fn start_with(
        name: &str,
        license: &LicenseServer,
        license_url: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        let dirs = TestDirs::new();
        let mut spec = StackSpec::default()
            .trusting(license)
            .env("PRIVITTY_LICENSE_URL", license_url)
            .env("PRIVITTY_PROFILE", name);
        for (k, v) in env {
            spec = spec.env(k, *v);
        }
        let stack = Stack::start(&format!("init-{name}"), &dirs, spec.clone());
        stack.wait_log(msg::ACTIVATED, 1);
        stack.wait_generation(1);
        let code = stack.gated_call_code();
        assert_ne!(
            code,
            Some(managed_harness::LICENSE_REQUIRED),
            "{name}: a gated call was refused after start-up activation"
        );
        let events =
            EventStream::open(stack.addr()).unwrap_or_else(|e| panic!("{name}: GET /events: {e}"));
        Gateway {
            name: name.to_string(),
            email: String::new(),
            events,
            stack,
            dirs,
            spec,
        }
    }

    /// Stops the stack as a container stop does (SIGTERM to privitty-init) and waits until it
    /// exited.
    pub fn stop(&mut self) {
        self.stack.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + DEADLINE;
        let mut pause = Duration::from_millis(2);
        while !self.stack.exited() {
            assert!(
                Instant::now() < deadline,
                "{}: the stack did not stop",
                self.name
            );
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Starts the stack again on the same data directory (after [`Gateway::stop`]) and reopens
    /// `/events` (earlier events are kept); returns once it serves with its license.
    pub fn start_again(&mut self) {
        let stack = Stack::start(
            &format!("init-{}-again", self.name),
            &self.dirs,
            self.spec.clone(),
        );
        stack.wait_generation(1);
        self.stack = stack;
        self.reopen_events();
    }

    /// Configures the account (`add_or_update_transport` with `account`, a transport config such
    /// as [`MailServer::account`] gives), starts its I/O and waits until the engine idles in its
    /// INBOX. That wait matters: at its first look at INBOX the engine skips every mail already
    /// there, so a secure-join request that arrives earlier is never read.
    pub fn configure(&mut self, account: Value) {
        let from = self.events.cursor();
        self.call("add_or_update_transport", json!([ACCOUNT, account]));
        self.call("start_io", json!([ACCOUNT]));
        self.wait_event(from, "ImapInboxIdle after start_io", |e| {
            e["type"] == "ImapInboxIdle"
        });
        self.email = account["addr"].as_str().unwrap_or_default().to_string();
    }

    pub fn addr(&self) -> SocketAddr {
        self.stack.addr()
    }

    /// The files directory: where files a client names (`send_msg`'s `file`) must be.
    pub fn files_dir(&self) -> PathBuf {
        self.dirs.accounts.join("files")
    }

    /// The whole JSON-RPC response of `method`; `{"result":null}` for a method that returns
    /// nothing (HTTP 204, as documented).
    pub fn response(&self, method: &str, params: Value) -> Value {
        let body = managed_harness::rpc_body(method, params.clone());
        let resp = Conn::connect(self.addr())
            .and_then(|mut c| c.request("POST", "/rpc", Some(&body), false))
            .unwrap_or_else(|e| panic!("{}: {method} {params}: {e}", self.name));
        match resp.status {
            204 => json!({"result": null}),
            200 => serde_json::from_slice(&resp.body)
                .unwrap_or_else(|e| panic!("{}: {method} {params}: JSON: {e}", self.name)),
            s => panic!(
                "{}: {method} {params}: HTTP {s}: {}",
                self.name,
                String::from_utf8_lossy(&resp.body)
            ),
        }
    }

    /// The result of `method`; panics on a JSON-RPC error.
    pub fn call(&self, method: &str, params: Value) -> Value {
        let resp = self.response(method, params.clone());
        assert!(
            resp.get("error").is_none(),
            "{}: {method} {params}: {resp}",
            self.name
        );
        resp["result"].clone()
    }

    /// The `/events` stream recorded since the gateway started.
    pub fn events(&self) -> &EventStream {
        &self.events
    }

    /// Reconnects `/events` (after the stack was restarted); earlier events are kept.
    pub fn reopen_events(&mut self) {
        self.events
            .reopen(self.stack.addr())
            .unwrap_or_else(|e| panic!("{}: GET /events: {e}", self.name));
    }

    /// The first event recorded at or after `from` (a [`EventStream::cursor`]) that `matches`;
    /// panics after [`DEADLINE`] naming `what` and the events seen.
    pub fn wait_event(
        &self,
        from: usize,
        what: &str,
        matches: impl FnMut(&Value) -> bool,
    ) -> Event {
        self.events
            .wait_for(from, DEADLINE, &format!("{}: {what}", self.name), matches)
    }

    /// Waits for an `IncomingMsg` in `chat_id` recorded at or after `from`.
    pub fn wait_incoming(&self, from: usize, chat_id: u64) -> Event {
        self.wait_event(from, &format!("IncomingMsg in chat {chat_id}"), |e| {
            e["type"] == "IncomingMsg" && e["chat_id"] == chat_id
        })
    }

    /// `get_message` of `msg_id` once `ready` holds for it: checked now and again after every
    /// event that names the message, until [`DEADLINE`].
    pub fn wait_message(
        &self,
        msg_id: u64,
        what: &str,
        mut ready: impl FnMut(&Value) -> bool,
    ) -> Value {
        let began = Instant::now();
        loop {
            // The cursor first: an event arriving while the message is read is not missed.
            let from = self.events.cursor();
            let msg = self.call("get_message", json!([ACCOUNT, msg_id]));
            if ready(&msg) {
                return msg;
            }
            let left = DEADLINE.saturating_sub(began.elapsed());
            let what = format!("{}: message {msg_id} {what} (last seen: {msg})", self.name);
            self.events
                // `MsgsChanged` with msg_id 0 means "several messages changed".
                .wait_for(from, left, &what, |e| {
                    e["msg_id"] == msg_id || (e["type"] == "MsgsChanged" && e["msg_id"] == 0)
                });
        }
    }
}

/// The two sides of a secure-joined pair. `contact_id` is the *peer* as a contact on that side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Side {
    pub chat_id: u64,
    pub contact_id: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct Joined {
    pub inviter: Side,
    pub joiner: Side,
    /// From `secure_join` called to both sides reporting progress 1000.
    pub elapsed: Duration,
}

/// Secure-joins `joiner` to `inviter` (a setup-contact QR: `get_chat_securejoin_qr_code [1,null]`
/// on the inviter, `secure_join [1,qr]` on the joiner) and waits for both sides'
/// `Securejoin…Progress` 1000; returns the 1:1 chat and the peer's contact id on each side.
pub fn secure_join(inviter: &Gateway, joiner: &Gateway) -> Joined {
    let (from_inviter, from_joiner) = (inviter.events.cursor(), joiner.events.cursor());
    let qr = inviter.call("get_chat_securejoin_qr_code", json!([ACCOUNT, null]));
    let qr = qr
        .as_str()
        .unwrap_or_else(|| panic!("{}: QR code {qr}", inviter.name));
    let began = Instant::now();
    let joiner_chat = joiner.call("secure_join", json!([ACCOUNT, qr]));
    let joiner_chat = joiner_chat
        .as_u64()
        .unwrap_or_else(|| panic!("{}: secure_join answered {joiner_chat}", joiner.name));
    let progress_done = |kind: &'static str| {
        move |e: &Value| e["type"] == kind && e["progress"].as_u64() == Some(1000)
    };
    let invited = inviter.wait_event(
        from_inviter,
        "SecurejoinInviterProgress 1000",
        progress_done("SecurejoinInviterProgress"),
    );
    let joined = joiner.wait_event(
        from_joiner,
        "SecurejoinJoinerProgress 1000",
        progress_done("SecurejoinJoinerProgress"),
    );
    let elapsed = invited.at.max(joined.at) - began;
    let contact = |e: &Event, who: &Gateway| {
        e.value["contact_id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: no contact_id in {}", who.name, e.value))
    };
    let inviter_contact = contact(&invited, inviter);
    let joiner_contact = contact(&joined, joiner);
    let inviter_chat = inviter.call(
        "create_chat_by_contact_id",
        json!([ACCOUNT, inviter_contact]),
    );
    Joined {
        inviter: Side {
            chat_id: inviter_chat
                .as_u64()
                .unwrap_or_else(|| panic!("{}: chat id {inviter_chat}", inviter.name)),
            contact_id: inviter_contact,
        },
        joiner: Side {
            chat_id: joiner_chat,
            contact_id: joiner_contact,
        },
        elapsed,
    }
}

// ---------------------------------------------------------------------------------------------
// Server-Sent Events.

/// One event from `/events`, with when it was read.
#[derive(Debug, Clone)]
pub struct Event {
    pub value: Value,
    pub at: Instant,
}

#[derive(Debug, Default)]
struct Recorded {
    events: Vec<Event>,
    /// Why the current stream ended (cleared by a reopen).
    ended: Option<String>,
}

type Shared = Arc<(Mutex<Recorded>, Condvar)>;

/// A `GET /events` stream read by a thread that records every event (`event: lag` is recorded as
/// `{"type":"lag","dropped":n}`), so a test waits for events that arrived before it looked.
#[derive(Debug)]
pub struct EventStream {
    shared: Shared,
    socket: TcpStream,
    reader: Option<JoinHandle<()>>,
}

impl EventStream {
    /// Connects and returns once the response head arrived (edged subscribes before answering,
    /// so every later event is seen).
    pub fn open(addr: SocketAddr) -> std::io::Result<EventStream> {
        let shared: Shared = Arc::default();
        let (socket, reader) = connect(addr, shared.clone())?;
        Ok(EventStream {
            shared,
            socket,
            reader: Some(reader),
        })
    }

    fn reopen(&mut self, addr: SocketAddr) -> std::io::Result<()> {
        self.close();
        let (socket, reader) = connect(addr, self.shared.clone())?;
        self.shared
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ended = None;
        self.socket = socket;
        self.reader = Some(reader);
        Ok(())
    }

    /// The number of events so far: pass it to [`EventStream::wait_for`] to see only later ones.
    pub fn cursor(&self) -> usize {
        self.shared
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .events
            .len()
    }

    /// Every event so far.
    pub fn all(&self) -> Vec<Event> {
        self.shared
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .events
            .clone()
    }

    /// The first event at index `from` or later that `matches`, waiting up to `deadline`; panics
    /// naming `what` and the last events seen when none came, or when the stream ended.
    pub fn wait_for(
        &self,
        from: usize,
        deadline: Duration,
        what: &str,
        mut matches: impl FnMut(&Value) -> bool,
    ) -> Event {
        let (lock, changed) = &*self.shared;
        let end = Instant::now() + deadline;
        let mut seen = from;
        let mut rec = lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(e) = rec.events[seen.min(rec.events.len())..]
                .iter()
                .find(|e| matches(&e.value))
            {
                return e.clone();
            }
            seen = rec.events.len().max(from);
            let now = Instant::now();
            if let Some(why) = &rec.ended {
                panic!(
                    "waiting for {what}: the /events stream ended ({why}); last events:\n{}",
                    describe(&rec.events[from.min(rec.events.len())..])
                );
            }
            if now >= end {
                panic!(
                    "timed out after {deadline:?} waiting for {what}; events since:\n{}",
                    describe(&rec.events[from.min(rec.events.len())..])
                );
            }
            rec = changed
                .wait_timeout(rec, end - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn close(&mut self) {
        let _ = self.socket.shutdown(Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.close();
    }
}

/// The last 40 events, one a line.
fn describe(events: &[Event]) -> String {
    let skip = events.len().saturating_sub(40);
    let mut out = String::new();
    if skip > 0 {
        out.push_str(&format!("({skip} earlier events)\n"));
    }
    for e in &events[skip..] {
        out.push_str(&e.value.to_string());
        out.push('\n');
    }
    out
}

fn connect(addr: SocketAddr, shared: Shared) -> std::io::Result<(TcpStream, JoinHandle<()>)> {
    let mut socket = TcpStream::connect(addr)?;
    write!(
        socket,
        "GET /events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )?;
    // The head is read here (with a deadline), the body by the thread (blocking until closed).
    socket.set_read_timeout(Some(DEADLINE))?;
    let mut reader = BufReader::new(socket.try_clone()?);
    let mut status = String::new();
    reader.read_line(&mut status)?;
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(std::io::Error::other(format!("status line {status:?}")));
    }
    let mut chunked = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("closed in the response head"));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            chunked |= k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked");
        }
    }
    socket.set_read_timeout(None)?;
    let thread = std::thread::Builder::new()
        .name(format!("events-{addr}"))
        .spawn(move || {
            let why = read_events(reader, chunked, &shared);
            let (lock, changed) = &*shared;
            lock.lock().unwrap_or_else(PoisonError::into_inner).ended = Some(why);
            changed.notify_all();
        })?;
    Ok((socket, thread))
}

/// Reads the body until it ends, recording each event; returns why it ended.
fn read_events(mut reader: BufReader<TcpStream>, chunked: bool, shared: &Shared) -> String {
    let mut pending = String::new();
    loop {
        let data = match read_piece(&mut reader, chunked) {
            Ok(Some(d)) => d,
            Ok(None) => return "closed by the server".into(),
            Err(e) => return format!("read error: {e}"),
        };
        pending.push_str(&String::from_utf8_lossy(&data));
        while let Some(end) = pending.find("\n\n") {
            let block: String = pending.drain(..end + 2).collect();
            if let Some(value) = parse_block(&block) {
                let (lock, changed) = &**shared;
                lock.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .events
                    .push(Event {
                        value,
                        at: Instant::now(),
                    });
                changed.notify_all();
            }
        }
    }
}

/// The next piece of the body: one chunk, or what a read returns; `None` at its end.
fn read_piece(
    reader: &mut BufReader<TcpStream>,
    chunked: bool,
) -> std::io::Result<Option<Vec<u8>>> {
    if !chunked {
        let mut buf = vec![0; 16 * 1024];
        let n = reader.read(&mut buf)?;
        buf.truncate(n);
        return Ok((n > 0).then_some(buf));
    }
    let mut size = String::new();
    if reader.read_line(&mut size)? == 0 {
        return Ok(None);
    }
    let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
        .map_err(|_| std::io::Error::other(format!("chunk size {size:?}")))?;
    let mut chunk = vec![0; size + 2];
    reader.read_exact(&mut chunk)?;
    chunk.truncate(size);
    Ok((size > 0).then_some(chunk))
}

/// One SSE block: its `data:` as JSON, `event: lag` as `{"type":"lag",…}`; comments (pings) and
/// anything unparsable are `None`.
fn parse_block(block: &str) -> Option<Value> {
    let mut kind = None;
    let mut data = String::new();
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            kind = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    if data.is_empty() {
        return None;
    }
    let mut value: Value = serde_json::from_str(&data).ok()?;
    if let Some(kind) = kind
        && let Some(obj) = value.as_object_mut()
    {
        obj.insert("type".into(), Value::String(kind));
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_blocks() {
        assert_eq!(
            parse_block("data: {\"type\":\"IncomingMsg\",\"msg_id\":3}\n\n"),
            Some(json!({"type":"IncomingMsg","msg_id":3}))
        );
        assert_eq!(
            parse_block("event: lag\ndata: {\"dropped\":4}\n\n"),
            Some(json!({"type":"lag","dropped":4}))
        );
        assert_eq!(parse_block(": ping\n\n"), None);
    }
}
