//! The bridge to the Delta Chat engine (`deltachat-rpc-server`): one child process at a time, JSON
//! lines over its stdio, concurrent calls multiplexed by rewriting ids, restarts with backoff, and the
//! event pump (`get_next_event`) into the SSE hub.
//!
//! Owns: the engine process (spawn, stdin writer, stdout reader, stderr to our log, stop) and the
//! pending-call table. Must not: know about HTTP or the license, or let a call wait on a dead engine:
//! when the engine dies every pending call fails at once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use privitty_base::env;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};

use crate::events::Hub;
use crate::rpc::RpcError;

/// Where the engine keeps its accounts, inside the data directory (it manages the directory itself).
pub const ENGINE_ACCOUNTS_SUBDIR: &str = "accounts";
/// The account an edge device uses.
pub const ACCOUNT_ID: u64 = 1;
/// The first engine must answer and set up account 1 within this (it takes ~10 ms to answer).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How to start the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub program: PathBuf,
    /// The data directory; the engine gets `DC_ACCOUNTS_PATH=<data>/accounts`.
    pub data_dir: PathBuf,
    /// Display name set on account 1.
    pub profile: String,
    /// Longest answer read from the engine (`PRIVITTY_RPC_MAX_RESPONSE`).
    pub max_answer: usize,
    /// Set `webxdc_realtime_enabled` to 0 on account 1 (unless the policy allows realtime).
    pub realtime_off: bool,
}

/// Errors of one engine call.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine answered with a JSON-RPC error; passed to the client unchanged, except that a
    /// parse error becomes invalid params (see `engine_error`).
    #[error("engine error {}: {}", .0.code, .0.message)]
    Rpc(RpcError),
    #[error("the messaging engine is not running (restarting); retry shortly")]
    Unavailable,
    #[error("the messaging engine exited before answering; it is being restarted, retry shortly")]
    Died,
    #[error("cannot start the messaging engine {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the messaging engine {program} did not set up account {ACCOUNT_ID}: {detail}")]
    Setup { program: PathBuf, detail: String },
    /// The answer was larger than the call's share of the response budget; it was dropped unread.
    #[error(
        "the answer is {size} bytes, more than the {limit} bytes allowed (PRIVITTY_RPC_MAX_RESPONSE)"
    )]
    TooLarge { size: usize, limit: usize },
}

impl EngineError {
    /// The JSON-RPC error the client sees.
    pub fn to_rpc(&self) -> RpcError {
        match self {
            EngineError::Rpc(e) => e.clone(),
            EngineError::TooLarge { size, limit } => RpcError::new(
                crate::rpc::RESPONSE_TOO_LARGE,
                format!(
                    "the answer is {size} bytes, more than the {limit} bytes allowed per call and per batch; \
                     ask for less at once (fewer ids, smaller batches) or raise {}",
                    env::RPC_MAX_RESPONSE
                ),
            )
            .with_data(json!({"size": size, "limit": limit, "setting": env::RPC_MAX_RESPONSE})),
            other => RpcError::internal(other.to_string()),
        }
    }
}

/// Bytes of answers a request may still receive (one per single call, one shared by a batch's
/// calls), so answers held for one HTTP response never exceed `PRIVITTY_RPC_MAX_RESPONSE`.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    remaining: AtomicUsize,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            remaining: AtomicUsize::new(limit),
        })
    }

    /// Takes `n` bytes, or none when fewer remain.
    pub fn take(&self, n: usize) -> bool {
        self.remaining
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| r.checked_sub(n))
            .is_ok()
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

type Reply = oneshot::Sender<Result<Value, EngineError>>;

/// A call waiting for its answer, with the budget its answer must fit in.
#[derive(Debug)]
struct Waiting {
    reply: Reply,
    budget: Option<Arc<Budget>>,
}

/// One running engine process: its stdin queue and the calls waiting for its answers.
#[derive(Debug)]
struct EngineRun {
    number: u64,
    lines: mpsc::UnboundedSender<String>,
    /// `None` once the process is gone: later calls fail at once instead of waiting.
    pending: Mutex<Option<HashMap<u64, Waiting>>>,
}

impl EngineRun {
    fn fail_all(&self) {
        let drained = self.pending.lock().expect("pending lock").take();
        for (_, waiting) in drained.into_iter().flatten() {
            let _ = waiting.reply.send(Err(EngineError::Died));
        }
    }
}

/// Removes a call's entry from the pending table when the call ends, however it ends (a no-op
/// once the answer took the entry).
struct PendingEntry<'a> {
    run: &'a EngineRun,
    id: u64,
}

impl Drop for PendingEntry<'_> {
    fn drop(&mut self) {
        if let Some(map) = self.run.pending.lock().expect("pending lock").as_mut() {
            map.remove(&self.id);
        }
    }
}

/// Handle to the engine; cheap to clone.
#[derive(Clone, Debug)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: EngineConfig,
    next_id: AtomicU64,
    current: Mutex<Option<Arc<EngineRun>>>,
    /// Number of the current engine run (0 = none yet); waiters watch it.
    run: watch::Sender<u64>,
    pid: Mutex<Option<u32>>,
    restarts: AtomicU64,
    /// Longest line read from the engine; a longer answer is dropped unread (`TooLarge`).
    max_line: usize,
}

impl Engine {
    /// Starts the engine, sets up account 1, and keeps the engine running (restarting it with backoff)
    /// until `stop` turns true. Returns once the first engine answered and account 1 is set up; the
    /// returned task ends after the engine stopped. A stop during the set-up stops that engine the
    /// way every stop does (stdin closed, SIGKILL only after `stop_timeout`) and returns `None`.
    pub async fn start(
        config: EngineConfig,
        hub: Hub,
        mut stop: watch::Receiver<bool>,
        stop_timeout: Duration,
    ) -> Result<Option<(Engine, tokio::task::JoinHandle<()>)>, EngineError> {
        let engine = Engine {
            inner: Arc::new(Inner {
                max_line: config.max_answer,
                config,
                next_id: AtomicU64::new(1),
                current: Mutex::new(None),
                run: watch::channel(0).0,
                pid: Mutex::new(None),
                restarts: AtomicU64::new(0),
            }),
        };
        let first = engine.spawn_run(1)?;
        let set_up = tokio::select! {
            r = tokio::time::timeout(START_TIMEOUT, engine.set_up_account()) => r,
            _ = crate::stopped(&mut stop) => {
                first.stop(stop_timeout).await;
                return Ok(None);
            }
        };
        let set_up = set_up.unwrap_or_else(|_| {
            Err(EngineError::Setup {
                program: engine.inner.config.program.clone(),
                detail: format!("it did not answer within {START_TIMEOUT:?}"),
            })
        });
        if let Err(e) = set_up {
            first.stop(stop_timeout).await;
            return Err(match e {
                EngineError::Died | EngineError::Unavailable => EngineError::Setup {
                    program: engine.inner.config.program.clone(),
                    detail:
                        "it exited during start-up; is it deltachat-rpc-server, and can it write \
                             the accounts directory? (its stderr is in this log at debug level)"
                            .to_string(),
                },
                other => other,
            });
        }
        let keeper = tokio::spawn(engine.clone().keep_running(first, hub, stop, stop_timeout));
        Ok(Some((engine, keeper)))
    }

    /// Calls an engine method with positional params.
    pub async fn call(&self, method: &str, params: &[Value]) -> Result<Value, EngineError> {
        self.call_within(method, params, None).await
    }

    /// [`Engine::call`] whose answer must fit in `budget` (taken from it when it arrives).
    pub async fn call_within(
        &self,
        method: &str,
        params: &[Value],
        budget: Option<Arc<Budget>>,
    ) -> Result<Value, EngineError> {
        // Every line logged while the call runs names it (and, inside a connection's span, the
        // client it is for).
        let span = tracing::debug_span!("engine_call", method);
        tracing::Instrument::instrument(self.call_in_span(method, params, budget), span).await
    }

    async fn call_in_span(
        &self,
        method: &str,
        params: &[Value],
        budget: Option<Arc<Budget>>,
    ) -> Result<Value, EngineError> {
        let run = self
            .inner
            .current
            .lock()
            .expect("current lock")
            .clone()
            .ok_or(EngineError::Unavailable)?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let line = serde_json::to_string(
            &json!({"jsonrpc":"2.0","method":method,"params":params,"id":id}),
        )
        .expect("request serializes");
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = run.pending.lock().expect("pending lock");
            match pending.as_mut() {
                Some(map) => map.insert(id, Waiting { reply: tx, budget }),
                None => return Err(EngineError::Died),
            };
        }
        // A caller that goes away (client disconnected, batch dropped) must not leave its entry
        // behind: a long-poll the engine never answers would keep it until the engine dies.
        let _entry = PendingEntry { run: &run, id };
        if run.lines.send(line).is_err() {
            return Err(EngineError::Died);
        }
        rx.await.unwrap_or(Err(EngineError::Died))
    }

    /// The engine's pid, while one runs.
    pub fn pid(&self) -> Option<u32> {
        *self.inner.pid.lock().expect("pid lock")
    }

    /// How often the engine was restarted after dying.
    pub fn restarts(&self) -> u64 {
        self.inner.restarts.load(Ordering::Relaxed)
    }

    async fn set_up_account(&self) -> Result<(), EngineError> {
        let setup = |detail: String| EngineError::Setup {
            program: self.inner.config.program.clone(),
            detail,
        };
        let ids = self.call("get_all_account_ids", &[]).await?;
        let has_one = ids
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v.as_u64() == Some(ACCOUNT_ID)));
        if !has_one {
            let created = self.call("add_account", &[]).await?;
            if created.as_u64() != Some(ACCOUNT_ID) {
                return Err(setup(format!(
                    "add_account created account {created}, and account {ACCOUNT_ID} is missing; \
                     the engine's accounts directory holds other accounts"
                )));
            }
            tracing::info!(account_id = ACCOUNT_ID, "created the messaging account");
        }
        self.call(
            "set_config",
            &[
                json!(ACCOUNT_ID),
                json!("displayname"),
                json!(self.inner.config.profile),
            ],
        )
        .await?;
        if self.inner.config.realtime_off {
            // Realtime channels reach public relays (iroh) the moment any realtime call happens.
            self.call(
                "set_config",
                &[
                    json!(ACCOUNT_ID),
                    json!(crate::policy::REALTIME_KEY),
                    json!("0"),
                ],
            )
            .await?;
        }
        // Lets a configured account send and receive; a no-op for an unconfigured one.
        self.call("start_io_for_all_accounts", &[]).await?;
        Ok(())
    }

    fn spawn_run(&self, number: u64) -> Result<Running, EngineError> {
        let cfg = &self.inner.config;
        let mut cmd = Command::new(&cfg.program);
        cmd.env(
            env::ENGINE_ACCOUNTS_PATH,
            cfg.data_dir.join(ENGINE_ACCOUNTS_SUBDIR),
        )
        // Ours, not the engine's: it must not answer the service manager or see our socket.
        .env_remove(env::NOTIFY_SOCKET)
        .env_remove(env::LISTEN_FDS)
        .env_remove(env::LISTEN_PID)
        .env_remove(env::LISTEN_FDNAMES)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| EngineError::Spawn {
            program: cfg.program.clone(),
            source,
        })?;
        let pid = child.id();
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (lines_tx, lines_rx) = mpsc::unbounded_channel();
        let run = Arc::new(EngineRun {
            number,
            lines: lines_tx,
            pending: Mutex::new(Some(HashMap::new())),
        });
        tokio::spawn(write_lines(stdin, lines_rx));
        let reader = tokio::spawn(read_answers(stdout, run.clone(), self.inner.max_line));
        tokio::spawn(log_stderr(stderr, pid));
        *self.inner.pid.lock().expect("pid lock") = pid;
        *self.inner.current.lock().expect("current lock") = Some(run.clone());
        self.inner.run.send_replace(number);
        tracing::info!(engine_run = number, pid, program = %cfg.program.display(), "engine started");
        Ok(Running {
            run,
            child,
            reader,
            started: Instant::now(),
        })
    }

    async fn keep_running(
        self,
        first: Running,
        hub: Hub,
        mut stop: watch::Receiver<bool>,
        stop_timeout: Duration,
    ) {
        let pump = tokio::spawn(pump_events(self.clone(), hub, stop.clone()));
        let mut running = first;
        // 100 ms doubling to 10 s; an engine that ran 30 s counts as healthy and the next restart
        // starts from the short delay again (the same pacing as privitty-init's generations).
        let mut pacing = privitty_base::pacing::Backoff::default();
        loop {
            let exited = tokio::select! {
                status = running.child.wait() => Some(status),
                _ = crate::stopped(&mut stop) => None,
            };
            let Some(status) = exited else {
                self.detach(&running.run);
                running.stop(stop_timeout).await;
                break;
            };
            self.detach(&running.run);
            // Answers already read still count; only then fail the rest.
            let _ = (&mut running.reader).await;
            running.run.fail_all();
            let status = status
                .map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string());
            tracing::warn!(engine_run = running.run.number, %status, "engine exited; restarting");
            pacing.note_uptime(running.started.elapsed());
            // Restart after the backoff unless asked to stop; give up never: the service depends on it.
            loop {
                let backoff = pacing.next_delay();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = crate::stopped(&mut stop) => { let _ = pump.await; return; }
                }
                let number = *self.inner.run.borrow() + 1;
                match self.spawn_run(number) {
                    Ok(r) => {
                        running = r;
                        self.inner.restarts.fetch_add(1, Ordering::Relaxed);
                        // An engine that does not answer must not keep a stop from being seen:
                        // the loop above stops it.
                        tokio::select! {
                            set_up = tokio::time::timeout(START_TIMEOUT, self.set_up_account()) => {
                                let error = match set_up {
                                    Ok(Ok(())) => None,
                                    Ok(Err(e)) => Some(e.to_string()),
                                    Err(_) => Some(format!("no answer within {START_TIMEOUT:?}")),
                                };
                                if let Some(error) = error {
                                    tracing::warn!(engine_run = number, %error, "restarted engine failed account set-up");
                                }
                            }
                            _ = crate::stopped(&mut stop) => {}
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, ?backoff, "cannot restart the engine; will retry")
                    }
                }
            }
        }
        let _ = pump.await;
    }

    fn detach(&self, run: &Arc<EngineRun>) {
        let mut current = self.inner.current.lock().expect("current lock");
        if current.as_ref().is_some_and(|g| Arc::ptr_eq(g, run)) {
            *current = None;
            *self.inner.pid.lock().expect("pid lock") = None;
        }
    }
}

struct Running {
    run: Arc<EngineRun>,
    child: Child,
    reader: tokio::task::JoinHandle<()>,
    started: Instant,
}

impl Running {
    /// Closes stdin (the engine exits on EOF), waits up to `timeout`, then kills.
    async fn stop(mut self, timeout: Duration) {
        let number = self.run.number;
        // An empty line tells the writer task to close stdin.
        let _ = self.run.lines.send(String::new());
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => {
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                tracing::info!(engine_run = number, %status, "engine stopped")
            }
            Err(_) => {
                tracing::warn!(
                    engine_run = number,
                    ?timeout,
                    "engine did not exit after stdin closed; killing it"
                );
                let _ = self.child.kill().await;
            }
        }
        let _ = (&mut self.reader).await;
        self.run.fail_all();
    }
}

async fn write_lines(
    stdin: tokio::process::ChildStdin,
    mut lines: mpsc::UnboundedReceiver<String>,
) {
    let mut out = BufWriter::new(stdin);
    while let Some(first) = lines.recv().await {
        if first.is_empty() {
            break;
        }
        let mut batch = Some(first);
        // Write everything queued, then flush once: many concurrent calls cost one syscall.
        while let Some(line) = batch.take() {
            if out.write_all(line.as_bytes()).await.is_err() || out.write_all(b"\n").await.is_err()
            {
                return;
            }
            match lines.try_recv() {
                Ok(next) if !next.is_empty() => batch = Some(next),
                Ok(_) => {
                    let _ = out.flush().await;
                    return;
                }
                Err(_) => {}
            }
        }
        if out.flush().await.is_err() {
            return;
        }
    }
    let _ = out.shutdown().await;
}

async fn read_answers(stdout: tokio::process::ChildStdout, run: Arc<EngineRun>, max_line: usize) {
    let mut reader = BufReader::new(stdout);
    let mut buf = Vec::new();
    loop {
        let line = match read_line_capped(&mut reader, max_line, &mut buf).await {
            Ok(Some(l)) => l,
            Ok(None) | Err(_) => break,
        };
        let (id, outcome) = match line {
            Line::Complete(bytes) => {
                let msg: Value = match serde_json::from_slice(bytes) {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(error = %e, "engine wrote a line that is not JSON; ignoring it");
                        continue;
                    }
                };
                let Some(id) = msg.get("id").and_then(Value::as_u64) else {
                    tracing::debug!("engine message without a call id; ignoring it");
                    continue;
                };
                (id, Ok((msg, bytes.len())))
            }
            Line::TooLong { head, size } => {
                let Some(id) = id_in_head(&head) else {
                    tracing::warn!(
                        size,
                        "engine wrote an over-long line without a readable id; dropped it"
                    );
                    continue;
                };
                tracing::warn!(
                    id,
                    size,
                    limit = max_line,
                    "engine answer over the response limit; dropped it"
                );
                (id, Err(size))
            }
        };
        let waiting = run
            .pending
            .lock()
            .expect("pending lock")
            .as_mut()
            .and_then(|m| m.remove(&id));
        let Some(waiting) = waiting else { continue };
        let outcome = match outcome {
            Err(size) => Err(EngineError::TooLarge {
                size,
                limit: waiting.budget.as_ref().map_or(max_line, |b| b.limit()),
            }),
            Ok((_, size)) if waiting.budget.as_ref().is_some_and(|b| !b.take(size)) => {
                Err(EngineError::TooLarge {
                    size,
                    limit: waiting.budget.as_ref().map_or(max_line, |b| b.limit()),
                })
            }
            Ok((msg, _)) => match msg {
                Value::Object(mut m) => match (m.remove("result"), m.remove("error")) {
                    (_, Some(err)) => Err(EngineError::Rpc(engine_error(err))),
                    (Some(result), None) => Ok(result),
                    (None, None) => Ok(Value::Null),
                },
                _ => Ok(Value::Null),
            },
        };
        let _ = waiting.reply.send(outcome);
    }
    // No answer can come any more: fail what is still waiting now, not when the exit is noticed.
    run.fail_all();
}

/// One line from the engine: whole, or only its first bytes when it is longer than the cap.
enum Line<'a> {
    Complete(&'a [u8]),
    TooLong { head: Vec<u8>, size: usize },
}

/// Bytes kept of an over-long line: enough for `{"jsonrpc":"2.0","id":<u64>,`.
const HEAD_BYTES: usize = 64;

/// Reads one line into `buf` unless it is longer than `cap`: then the rest is skipped as it
/// arrives (memory stays at `cap`) and only its head is kept, to find the call it answers.
async fn read_line_capped<'a>(
    reader: &mut BufReader<tokio::process::ChildStdout>,
    cap: usize,
    buf: &'a mut Vec<u8>,
) -> std::io::Result<Option<Line<'a>>> {
    buf.clear();
    let mut head: Vec<u8> = Vec::new();
    let mut size = 0usize;
    let mut over = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            // EOF: a partial last line is not an answer.
            return Ok(None);
        }
        let newline = available.iter().position(|&b| b == b'\n');
        let chunk = &available[..newline.unwrap_or(available.len())];
        size += chunk.len();
        if head.len() < HEAD_BYTES {
            let n = (HEAD_BYTES - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..n]);
        }
        if !over {
            if buf.len() + chunk.len() > cap {
                over = true;
                buf.clear();
                buf.shrink_to(64 * 1024);
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        let consumed = newline.map_or(available.len(), |i| i + 1);
        reader.consume(consumed);
        if newline.is_some() {
            return Ok(Some(if over {
                Line::TooLong { head, size }
            } else {
                Line::Complete(buf)
            }));
        }
    }
}

/// The call id of an answer from its first bytes: the engine writes `{"jsonrpc":"2.0","id":N,…`.
fn id_in_head(head: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(head).ok()?;
    let rest = text.strip_prefix(r#"{"jsonrpc":"2.0","id":"#)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn engine_error(err: Value) -> RpcError {
    let code = err
        .get("code")
        .and_then(Value::as_i64)
        .unwrap_or(crate::rpc::INTERNAL_ERROR);
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("engine error without a message")
        .to_string();
    // Every line edged writes is valid JSON, so the engine's "parse error" means that the params
    // did not fit the method's types: the documented code for that is invalid params.
    let e = if code == crate::rpc::PARSE_ERROR {
        RpcError::new(
            crate::rpc::INVALID_PARAMS,
            format!("invalid params: {message}"),
        )
    } else {
        RpcError::new(code, message)
    };
    match err.get("data") {
        Some(d) if !d.is_null() => e.with_data(d.clone()),
        _ => e,
    }
}

async fn log_stderr(stderr: tokio::process::ChildStderr, pid: Option<u32>) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.contains("ERROR") || line.contains("WARN") {
            tracing::warn!(engine_pid = pid, "engine: {line}");
        } else {
            tracing::debug!(engine_pid = pid, "engine: {line}");
        }
    }
}

/// Pulls events with `get_next_event` and publishes them, across engine restarts, until stop.
async fn pump_events(engine: Engine, hub: Hub, mut stop: watch::Receiver<bool>) {
    let mut runs = engine.inner.run.subscribe();
    loop {
        let asked_of = *runs.borrow_and_update();
        let next = tokio::select! {
            r = engine.call("get_next_event", &[]) => r,
            _ = crate::stopped(&mut stop) => return,
        };
        match next {
            Ok(Value::Null) => {}
            Ok(event) => hub.publish_engine(&event),
            Err(EngineError::Rpc(e)) => {
                tracing::warn!(code = e.code, message = %e.message, "get_next_event failed")
            }
            Err(_) => {
                // That engine is gone: wait for the next one (or stop) instead of spinning.
                tokio::select! {
                    _ = runs.wait_for(|g| *g != asked_of) => {}
                    _ = crate::stopped(&mut stop) => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bare(program: &str) -> Engine {
        Engine {
            inner: Arc::new(Inner {
                config: EngineConfig {
                    program: PathBuf::from(program),
                    data_dir: std::env::temp_dir(),
                    profile: "test".into(),
                    max_answer: 1024,
                    realtime_off: true,
                },
                max_line: 1024,
                next_id: AtomicU64::new(1),
                current: Mutex::new(None),
                run: watch::channel(0).0,
                pid: Mutex::new(None),
                restarts: AtomicU64::new(0),
            }),
        }
    }

    fn pending(engine: &Engine) -> usize {
        let current = engine.inner.current.lock().unwrap().clone().unwrap();
        current
            .pending
            .lock()
            .unwrap()
            .as_ref()
            .map_or(0, |m| m.len())
    }

    /// An engine that answers on its first run and, once restarted, never answers at all.
    const ANSWERS_ONCE: &str = r#"#!/bin/sh
m="$DC_ACCOUNTS_PATH.started"
if [ -e "$m" ]; then exec sleep 1000; fi
: > "$m"
while IFS= read -r line; do
  id=$(printf '%s' "$line" | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
  case "$line" in
    *get_next_event*) continue ;;
    *get_all_account_ids*) r='[1]' ;;
    *) r=null ;;
  esac
  printf '{"jsonrpc":"2.0","id":%s,"result":%s}\n' "$id" "$r"
done
"#;

    /// An engine that is the shell script `text`, with `dir` as its data directory.
    fn script_engine(dir: &std::path::Path, text: &str) -> EngineConfig {
        use std::os::unix::fs::PermissionsExt;
        let program = dir.join("engine.sh");
        std::fs::write(&program, text).unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        EngineConfig {
            program,
            data_dir: dir.to_path_buf(),
            profile: "test".into(),
            max_answer: 1024 * 1024,
            realtime_off: true,
        }
    }

    /// Never answers; on stdin's end it leaves a mark and exits, as the real engine does.
    const NEVER_ANSWERS: &str = r#"#!/bin/sh
: > "$DC_ACCOUNTS_PATH.started"
cat > /dev/null
: > "$DC_ACCOUNTS_PATH.eof"
"#;

    #[tokio::test]
    async fn a_stop_during_the_first_engines_set_up_closes_its_stdin_instead_of_killing_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = script_engine(dir.path(), NEVER_ANSWERS);
        let (stop_tx, stop) = watch::channel(false);
        let start = tokio::spawn(Engine::start(
            config,
            Hub::new(4),
            stop,
            Duration::from_secs(30),
        ));
        // The engine's DC_ACCOUNTS_PATH is <data_dir>/accounts.
        let mark = |what: &str| dir.path().join(format!("accounts{what}"));
        crate::test_util::wait_until(|| mark(".started").exists()).await;
        stop_tx.send(true).unwrap();
        let started = tokio::time::timeout(Duration::from_secs(20), start)
            .await
            .expect("a stop ends the start-up at once, not after START_TIMEOUT")
            .unwrap()
            .expect("a stop is not a start-up error");
        assert!(started.is_none());
        assert!(
            mark(".eof").exists(),
            "the engine was killed instead of seeing its stdin close"
        );
    }

    #[tokio::test]
    async fn a_stop_during_a_restarted_engines_set_up_is_not_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let config = script_engine(dir.path(), ANSWERS_ONCE);
        let (stop_tx, stop) = watch::channel(false);
        let (engine, keeper) = Engine::start(config, Hub::new(4), stop, Duration::from_millis(200))
            .await
            .expect("the first engine answers")
            .expect("no stop was asked for");
        let first = engine.pid().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(first as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        crate::test_util::wait_until(|| engine.restarts() == 1).await;
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(30), keeper)
            .await
            .expect("the keeper ends after a stop, even while the new engine does not answer")
            .unwrap();
        assert!(engine.pid().is_none());
    }

    #[test]
    fn engine_parse_errors_are_invalid_params_and_other_errors_pass_unchanged() {
        let e = engine_error(
            json!({"code":-32700,"message":"invalid type: string \"x\", expected u32"}),
        );
        assert_eq!(e.code, crate::rpc::INVALID_PARAMS);
        assert_eq!(
            e.message,
            "invalid params: invalid type: string \"x\", expected u32"
        );
        let e = engine_error(json!({"code":-1,"message":"account with id 99 not found","data":7}));
        assert_eq!(
            (e.code, e.message.as_str()),
            (-1, "account with id 99 not found")
        );
        assert_eq!(e.data, Some(json!(7)));
    }

    #[tokio::test]
    async fn a_call_its_caller_gave_up_on_leaves_no_pending_entry() {
        // `tail` answers nothing until stdin closes: a call to it waits like a long-poll does.
        let engine = bare("/usr/bin/tail");
        let running = engine.spawn_run(1).expect("spawn tail");
        {
            let params = [json!(1)];
            let call = engine.call("wait_next_msgs", &params);
            tokio::pin!(call);
            tokio::select! {
                r = &mut call => panic!("tail answered: {r:?}"),
                _ = crate::test_util::wait_until(|| pending(&engine) == 1) => {}
            }
            // The caller (an HTTP client that disconnected) drops the call here.
        }
        assert_eq!(pending(&engine), 0, "the abandoned call's entry is gone");
        running.stop(Duration::from_secs(5)).await;
    }
}
