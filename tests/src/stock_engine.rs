//! A stock Delta Chat engine (`deltachat-rpc-server`, no privitty-edged in front): what a user of
//! an ordinary Delta Chat client sees of a chat with a gateway. Driven over its stdio JSON-RPC.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use serde_json::{Value, json};

use crate::gateways::{ACCOUNT, DEADLINE};
use crate::support;

/// One engine process with one account.
#[derive(Debug)]
pub struct StockEngine {
    child: Child,
    stdin: ChildStdin,
    answers: mpsc::Receiver<Value>,
    /// Answers read while waiting for another id.
    stash: Vec<Value>,
    next_id: u64,
    _dir: tempfile::TempDir,
    pub email: String,
}

impl StockEngine {
    /// Starts the engine in a fresh directory and creates account 1.
    pub fn start() -> StockEngine {
        let dir = tempfile::Builder::new()
            .prefix("privitty-stock-")
            .tempdir()
            .expect("temp dir");
        let mut child = Command::new(support::engine())
            .env("DC_ACCOUNTS_PATH", dir.path().join("accounts"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the engine");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        let mut engine = StockEngine {
            child,
            stdin,
            answers,
            stash: Vec::new(),
            next_id: 1,
            _dir: dir,
            email: String::new(),
        };
        let id = engine.call("add_account", json!([]));
        assert_eq!(id, ACCOUNT, "the stock engine's account id");
        engine
    }

    /// The whole JSON-RPC answer of `method`.
    pub fn response(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let line = json!({"jsonrpc":"2.0","id":id,"method":method,"params":params}).to_string();
        writeln!(self.stdin, "{line}").expect("write to the engine");
        self.stdin.flush().expect("flush");
        if let Some(i) = self.stash.iter().position(|v| v["id"] == id) {
            return self.stash.swap_remove(i);
        }
        let end = Instant::now() + DEADLINE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let v = self
                .answers
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("stock engine: no answer to {method}: {e}"));
            if v["id"] == id {
                return v;
            }
            self.stash.push(v);
        }
    }

    /// The result of `method`; panics on an error.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let v = self.response(method, params.clone());
        assert!(
            v.get("error").is_none(),
            "stock engine: {method} {params}: {v}"
        );
        v["result"].clone()
    }

    /// Waits for an event of account 1 that `matches` (engine shape: `{"kind":…,camelCase}`).
    pub fn wait_event(&mut self, what: &str, mut matches: impl FnMut(&Value) -> bool) -> Value {
        let end = Instant::now() + DEADLINE;
        loop {
            assert!(
                Instant::now() < end,
                "stock engine: timed out waiting for {what}"
            );
            let ev = self.call("get_next_event", json!([]));
            if ev["contextId"] == ACCOUNT && matches(&ev["event"]) {
                return ev["event"].clone();
            }
        }
    }

    /// Configures the account on the mail server and waits until it idles in INBOX.
    pub fn configure(&mut self, account: Value) {
        self.call("add_or_update_transport", json!([ACCOUNT, account]));
        self.call("start_io", json!([ACCOUNT]));
        self.wait_event("ImapInboxIdle", |e| e["kind"] == "ImapInboxIdle");
        self.email = account["addr"].as_str().unwrap_or_default().to_owned();
    }

    /// The messages of a chat that a user sees (not info messages), as `get_message` returns them.
    pub fn visible_messages(&mut self, chat_id: u64) -> Vec<Value> {
        let ids = self.call("get_message_ids", json!([ACCOUNT, chat_id, false, false]));
        let mut out = Vec::new();
        for id in ids.as_array().cloned().unwrap_or_default() {
            let msg = self.call("get_message", json!([ACCOUNT, id]));
            if msg["isInfo"] != true {
                out.push(msg);
            }
        }
        out
    }

    /// Waits (on events) until `ready` holds for the chat's visible messages.
    pub fn wait_messages(
        &mut self,
        chat_id: u64,
        what: &str,
        mut ready: impl FnMut(&[Value]) -> bool,
    ) -> Vec<Value> {
        let end = Instant::now() + DEADLINE;
        loop {
            let msgs = self.visible_messages(chat_id);
            if ready(&msgs) {
                return msgs;
            }
            assert!(
                Instant::now() < end,
                "stock engine: timed out waiting for {what}; messages: {msgs:?}"
            );
            self.wait_event(what, |e| {
                matches!(
                    e["kind"].as_str(),
                    Some("IncomingMsg" | "MsgsChanged" | "IncomingMsgBunch")
                )
            });
        }
    }
}

impl Drop for StockEngine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
