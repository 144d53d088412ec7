//! The bridge to the Delta Chat engine (`deltachat-rpc-server`): one child process at a time, JSON
//! lines over its stdio, concurrent calls multiplexed by rewriting ids, restarts with backoff, and the
//! event pump (`get_next_event`) into the SSE hub.
//!
//! Owns: the engine process (spawn, stdin writer, stdout reader, stderr to our log, stop) and the
//! pending-call table. Must not: know about HTTP or the license, or let a call wait on a dead engine:
//! when the engine dies every pending call fails at once.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use privitty_base::env;
use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};

use crate::events::Hub;
use crate::handover::Prefixed;
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

/// Where an answer goes.
#[derive(Debug)]
enum Reply {
    /// To a caller in this process.
    Caller(oneshot::Sender<Result<Value, EngineError>>),
    /// Back to the previous generation, whose call it is: it handed the engine over before the
    /// answer came. The line goes as it came (or, over the size limit, as an `over` notice), over
    /// the back channel; the channel closes once no such call waits any more.
    Back(mpsc::UnboundedSender<Vec<u8>>),
}

/// A call waiting for its answer, with the budget its answer must fit in.
#[derive(Debug)]
struct Waiting {
    reply: Reply,
    budget: Option<Arc<Budget>>,
    /// A `get_next_event` long-poll: its answer is the next owner's event, not a caller's.
    poll: bool,
}

impl Waiting {
    /// No answer will come: a caller here gets `Died`; a call of the previous generation gets
    /// it there, when the back channel closes.
    fn fail(self) {
        if let Reply::Caller(reply) = self.reply {
            let _ = reply.send(Err(EngineError::Died));
        }
    }
}

/// What the stdin writer task is told.
#[derive(Debug)]
enum Out {
    Line(String),
    /// Close stdin: the engine exits on its end.
    Close,
    /// Write out what is queued, then give stdin back without closing it, with the lines that
    /// were queued after this (never written: their calls get no answer).
    Release(oneshot::Sender<(pipe::Sender, Vec<String>)>),
}

/// One running engine process: its stdin queue and the calls waiting for its answers.
#[derive(Debug)]
struct EngineRun {
    number: u64,
    lines: mpsc::UnboundedSender<Out>,
    /// `None` once the process is gone: later calls fail at once instead of waiting.
    pending: Mutex<Option<HashMap<u64, Waiting>>>,
}

impl EngineRun {
    fn fail_all(&self) {
        let drained = self.pending.lock().expect("pending lock").take();
        for (_, waiting) in drained.into_iter().flatten() {
            waiting.fail();
        }
    }

    /// Calls still waiting that are not the event long-poll.
    fn calls_waiting(&self) -> usize {
        self.pending
            .lock()
            .expect("pending lock")
            .as_ref()
            .map_or(0, |m| m.values().filter(|w| !w.poll).count())
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

/// A running engine taken out of this process, for the next generation: its three pipes, what
/// was read from its stdout but not handled, and where the call ids and the event long-poll stand.
#[derive(Debug)]
pub struct Released {
    pub pid: u32,
    /// The process's start time (`/proc/<pid>/stat` field 22): a later signal goes to this
    /// process only, never to another one that got its pid after it exited.
    pub start_time: u64,
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// Bytes of stdout already read: the start of an answer that the next owner reads first.
    pub read_ahead: Vec<u8>,
    /// The next call id to use: the engine may still answer ids below it.
    pub next_id: u64,
    /// The `get_next_event` call the engine has not answered yet: its answer is an event.
    pub poll_id: Option<u64>,
    /// Calls the engine has not answered yet whose answers go back, raw, over `back`.
    pub forward: Vec<u64>,
    /// The back channel (a unix stream socket) to the generation whose calls `forward` are:
    /// present when `forward` is not empty.
    pub back: Option<OwnedFd>,
    /// What the agents working on this engine knew (the peer agent's, opaque here), for the next
    /// owner's agents to start from; None = they start from scratch.
    pub carried: Option<serde_json::Value>,
}

/// Handle to the engine; cheap to clone.
#[derive(Clone, Debug)]
pub struct Engine {
    inner: Arc<Inner>,
}

type ReleaseRequest = oneshot::Sender<Option<Released>>;

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
    /// Asks the keeper to take the engine out for the next generation ([`Engine::release`]).
    release: mpsc::UnboundedSender<ReleaseRequest>,
    /// An adopted engine's unanswered `get_next_event`: the event pump waits for it first.
    adopted_poll: Mutex<Option<oneshot::Receiver<Result<Value, EngineError>>>>,
    /// After a release with calls in flight: the task reading their answers off the back
    /// channel (it ends when the next owner closes it).
    forwarded: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// An adopted engine's write-back to the previous generation (see [`write_back`]): waited
    /// for before this process goes, so an answer on its way to an older generation is not lost
    /// when this one ends right after handing the engine on.
    back: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Engine {
    fn bare(
        config: EngineConfig,
        next_id: u64,
    ) -> (Engine, mpsc::UnboundedReceiver<ReleaseRequest>) {
        let (release, requests) = mpsc::unbounded_channel();
        let engine = Engine {
            inner: Arc::new(Inner {
                max_line: config.max_answer,
                config,
                next_id: AtomicU64::new(next_id),
                current: Mutex::new(None),
                run: watch::channel(0).0,
                pid: Mutex::new(None),
                restarts: AtomicU64::new(0),
                release,
                adopted_poll: Mutex::new(None),
                forwarded: Mutex::new(None),
                back: Mutex::new(None),
            }),
        };
        (engine, requests)
    }

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
        let (engine, requests) = Engine::bare(config, 1);
        end_leftover_engines(&engine.accounts_path(), LEFTOVER_GRACE).await;
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
        let keeper =
            tokio::spawn(
                engine
                    .clone()
                    .keep_running(first, hub, stop, stop_timeout, requests),
            );
        Ok(Some((engine, keeper)))
    }

    /// Takes over an engine the previous generation released: no start, no set-up (it serves
    /// account 1 already). Then keeps it running like [`Engine::start`] does (a restart after it
    /// dies is an engine of our own).
    pub fn adopt(
        config: EngineConfig,
        released: Released,
        hub: Hub,
        stop: watch::Receiver<bool>,
        stop_timeout: Duration,
    ) -> Result<(Engine, tokio::task::JoinHandle<()>), EngineError> {
        let (engine, requests) = Engine::bare(config, call_id_in_range(released.next_id));
        let pipes = (|| {
            Ok::<_, std::io::Error>((
                pipe::Sender::from_owned_fd(released.stdin)?,
                pipe::Receiver::from_owned_fd(released.stdout)?,
                pipe::Receiver::from_owned_fd(released.stderr)?,
            ))
        })()
        .map_err(|source| EngineError::Spawn {
            program: engine.inner.config.program.clone(),
            source,
        })?;
        let mut pending = HashMap::new();
        if let Some(id) = released.poll_id {
            let (tx, rx) = oneshot::channel();
            pending.insert(
                id,
                Waiting {
                    reply: Reply::Caller(tx),
                    budget: None,
                    poll: true,
                },
            );
            *engine.inner.adopted_poll.lock().expect("adopted poll lock") = Some(rx);
        }
        // The previous generation's calls still in flight: their answers go back to it.
        if let Some(back) = released.back.filter(|_| !released.forward.is_empty()) {
            let (lines, queued) = mpsc::unbounded_channel();
            match write_back(back, queued) {
                Ok(task) => {
                    *engine.inner.back.lock().expect("back lock") = Some(task);
                    for &id in &released.forward {
                        let waiting = Waiting {
                            reply: Reply::Back(lines.clone()),
                            budget: None,
                            poll: false,
                        };
                        pending.insert(id, waiting);
                    }
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    calls = released.forward.len(),
                    "cannot answer the previous generation's calls in flight; they fail there"
                ),
            }
        }
        let forwarded = released.forward.len();
        let running = engine.run_with(
            1,
            Process::Adopted {
                pid: released.pid,
                start_time: released.start_time,
            },
            pipes,
            released.read_ahead,
            pending,
        );
        tracing::info!(
            pid = released.pid,
            read_ahead = running.read_ahead_len,
            forwarded,
            "took over the previous generation's engine"
        );
        let keeper =
            tokio::spawn(
                engine
                    .clone()
                    .keep_running(running, hub, stop, stop_timeout, requests),
            );
        Ok((engine, keeper))
    }

    /// Takes the running engine out of this process for the next generation: no new call starts,
    /// the calls under way are answered (up to `wait`), the pipes are given back at a line
    /// boundary. `None` when it cannot be done cleanly; the engine is then stopped as usual.
    /// The keeper task ends either way.
    pub async fn release(&self) -> Option<Released> {
        let (tx, rx) = oneshot::channel();
        self.inner.release.send(tx).ok()?;
        rx.await.ok().flatten()
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
        self.call_holding(method, params, budget, ()).await
    }

    /// [`Engine::call_within`] that drops `held` once the call's line is queued for the engine
    /// (or the call failed before): a swap's work gate ticket ([`crate::work`]), which lets the
    /// engine go with the call in flight.
    pub async fn call_holding<T: Send>(
        &self,
        method: &str,
        params: &[Value],
        budget: Option<Arc<Budget>>,
        held: T,
    ) -> Result<Value, EngineError> {
        // Every line logged while the call runs names it (and, inside a connection's span, the
        // client it is for).
        let span = tracing::debug_span!("engine_call", method);
        tracing::Instrument::instrument(self.call_in_span(method, params, budget, held), span).await
    }

    async fn call_in_span<T: Send>(
        &self,
        method: &str,
        params: &[Value],
        budget: Option<Arc<Budget>>,
        held: T,
    ) -> Result<Value, EngineError> {
        let run = self
            .inner
            .current
            .lock()
            .expect("current lock")
            .clone()
            .ok_or(EngineError::Unavailable)?;
        let (tx, rx) = oneshot::channel();
        // Serialized outside the lock; the id is put in under it.
        let method_json = serde_json::to_string(method).expect("a string serializes");
        let params_json = serde_json::to_string(params).expect("JSON values serialize");
        let id = {
            let mut pending = run.pending.lock().expect("pending lock");
            let Some(map) = pending.as_mut() else {
                return Err(EngineError::Died);
            };
            // Ids wrap (see `MAX_CALL_ID`): one still waiting (the long-poll) is skipped.
            let id = std::iter::repeat_with(|| take_call_id(&self.inner.next_id))
                .find(|id| !map.contains_key(id))
                .expect("the engine answers fewer calls at once than there are ids");
            // Entered and queued under one lock: a release (which takes the calls still waiting
            // under it, after the writer stopped) sees every call it finds either queued for the
            // engine or not at all, never one whose line is still to come.
            let line = format!(
                r#"{{"jsonrpc":"2.0","method":{method_json},"params":{params_json},"id":{id}}}"#
            );
            if run.lines.send(Out::Line(line)).is_err() {
                return Err(EngineError::Died);
            }
            map.insert(
                id,
                Waiting {
                    reply: Reply::Caller(tx),
                    budget,
                    poll: method == POLL_METHOD,
                },
            );
            id
        };
        // A caller that goes away (client disconnected, batch dropped) must not leave its entry
        // behind: a long-poll the engine never answers would keep it until the engine dies.
        let _entry = PendingEntry { run: &run, id };
        // Queued before any release: the line is written to the engine before its stdin goes.
        drop(held);
        rx.await.unwrap_or(Err(EngineError::Died))
    }

    /// After a release with calls in flight: waits (up to `timeout`) until their answers came
    /// back, or no more can come (the next owner closed the back channel), and until the answers
    /// to the previous generation's calls that passed through here are written back to it.
    pub async fn forwarded_answered(&self, timeout: Duration) -> bool {
        let forwarded = self.inner.forwarded.lock().expect("forwarded lock").take();
        let back = self.inner.back.lock().expect("back lock").take();
        // The write-back ends once no call of the previous generation waits here, which the
        // forwarded answers decide: it is waited for after them.
        let both = async {
            if let Some(task) = forwarded {
                let _ = task.await;
            }
            if let Some(task) = back {
                let _ = task.await;
            }
        };
        tokio::time::timeout(timeout, both).await.is_ok()
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

    /// The engine's `DC_ACCOUNTS_PATH`.
    fn accounts_path(&self) -> PathBuf {
        self.inner.config.data_dir.join(ENGINE_ACCOUNTS_SUBDIR)
    }

    fn spawn_run(&self, number: u64) -> Result<Running, EngineError> {
        let cfg = &self.inner.config;
        let mut cmd = Command::new(&cfg.program);
        cmd.env(env::ENGINE_ACCOUNTS_PATH, self.accounts_path())
            // Ours, not the engine's: it must not answer the service manager or see our socket.
            .env_remove(env::NOTIFY_SOCKET)
            .env_remove(env::LISTEN_FDS)
            .env_remove(env::LISTEN_PID)
            .env_remove(env::LISTEN_FDNAMES)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: it may outlive this generation (handed to the next one), so
            // privitty-init's SIGKILL to what is left of an exited generation's group must miss it.
            // It stops when its stdin closes, which happens when edged exits however it exits.
            .process_group(0)
            .kill_on_drop(false);
        let spawn_error = |source| EngineError::Spawn {
            program: cfg.program.clone(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_error)?;
        let pipes = (|| {
            let stdin = child.stdin.take().expect("piped stdin").into_owned_fd()?;
            let stdout = child.stdout.take().expect("piped stdout").into_owned_fd()?;
            let stderr = child.stderr.take().expect("piped stderr").into_owned_fd()?;
            Ok::<_, std::io::Error>((
                pipe::Sender::from_owned_fd(stdin)?,
                pipe::Receiver::from_owned_fd(stdout)?,
                pipe::Receiver::from_owned_fd(stderr)?,
            ))
        })();
        let pipes = match pipes {
            Ok(p) => p,
            Err(e) => {
                let _ = child.start_kill();
                return Err(spawn_error(e));
            }
        };
        let pid = child.id();
        let running = self.run_with(
            number,
            Process::Child(child),
            pipes,
            Vec::new(),
            HashMap::new(),
        );
        tracing::info!(engine_run = number, pid, program = %cfg.program.display(), "engine started");
        Ok(running)
    }

    /// Wires a process's pipes to the call table and makes it the current engine.
    fn run_with(
        &self,
        number: u64,
        process: Process,
        (stdin, stdout, stderr): (pipe::Sender, pipe::Receiver, pipe::Receiver),
        read_ahead: Vec<u8>,
        pending: HashMap<u64, Waiting>,
    ) -> Running {
        let pid = process.pid();
        let (lines_tx, lines_rx) = mpsc::unbounded_channel();
        let run = Arc::new(EngineRun {
            number,
            lines: lines_tx,
            pending: Mutex::new(Some(pending)),
        });
        let (release_tx, release) = watch::channel(false);
        let read_ahead_len = read_ahead.len();
        tokio::spawn(write_lines(stdin, lines_rx));
        let reader = tokio::spawn({
            let (run, max_line, release) = (run.clone(), self.inner.max_line, release.clone());
            async move {
                let source = Prefixed::new(read_ahead, stdout);
                let (source, mut rest) =
                    read_answers(source, run, max_line, Some(release), false).await?;
                let (pipe, unread) = source.into_parts();
                rest.extend_from_slice(&unread);
                Some((pipe, rest))
            }
        });
        let stderr = tokio::spawn(log_stderr(stderr, pid, release));
        *self.inner.pid.lock().expect("pid lock") = pid;
        *self.inner.current.lock().expect("current lock") = Some(run.clone());
        self.inner.run.send_replace(number);
        Running {
            run,
            process,
            reader: Some(reader),
            stderr: Some(stderr),
            release: release_tx,
            started: Instant::now(),
            read_ahead_len,
        }
    }

    async fn keep_running(
        self,
        first: Running,
        hub: Hub,
        mut stop: watch::Receiver<bool>,
        stop_timeout: Duration,
        mut releases: mpsc::UnboundedReceiver<ReleaseRequest>,
    ) {
        let pump = tokio::spawn(pump_events(self.clone(), hub, stop.clone()));
        let mut running = first;
        // 100 ms doubling to 10 s; an engine that ran 30 s counts as healthy and the next restart
        // starts from the short delay again (the same pacing as privitty-init's generations).
        let mut pacing = privitty_base::pacing::Backoff::default();
        loop {
            enum Next {
                Exited(String),
                Stop,
                Release(ReleaseRequest),
            }
            let next = tokio::select! {
                status = running.exited() => Next::Exited(status),
                _ = crate::stopped(&mut stop) => Next::Stop,
                Some(request) = releases.recv() => Next::Release(request),
            };
            let status = match next {
                Next::Exited(status) => status,
                Next::Stop => {
                    self.detach(&running.run);
                    running.stop(stop_timeout).await;
                    break;
                }
                Next::Release(request) => {
                    self.detach(&running.run);
                    let released = running
                        .release(stop_timeout, &self.inner.next_id, self.inner.max_line)
                        .await
                        .map(|(released, forwarded)| {
                            *self.inner.forwarded.lock().expect("forwarded lock") = forwarded;
                            released
                        });
                    pump.abort();
                    let _ = request.send(released);
                    return;
                }
            };
            self.detach(&running.run);
            // Answers already read still count; only then fail the rest.
            running.reader_done().await;
            running.run.fail_all();
            tracing::warn!(engine_run = running.run.number, %status, "engine exited; restarting");
            pacing.note_uptime(running.started.elapsed());
            // Restart after the backoff unless asked to stop; give up never: the service depends on it.
            // A stop or a release is seen in every wait on the way (the backoff is up to 10 s,
            // a set-up up to START_TIMEOUT): a release has no engine to hand over then, and says so
            // at once, so the next generation starts its own instead of waiting for the lock.
            loop {
                let backoff = pacing.next_delay();
                let mut waited =
                    interruptible(tokio::time::sleep(backoff), &mut stop, &mut releases).await;
                if waited.is_ok() {
                    // A stop does not cut this short (a leftover engine, in a process group of
                    // its own, would outlive edged; it is bounded); a release does: the next
                    // generation, starting its own engine, ends leftovers first itself.
                    let accounts = self.accounts_path();
                    let leftovers = end_leftover_engines(&accounts, LEFTOVER_GRACE);
                    waited = tokio::select! {
                        () = leftovers => Ok(()),
                        Some(request) = releases.recv() => Err(Interrupted::Release(request)),
                    };
                }
                match waited {
                    Ok(()) => {}
                    Err(Interrupted::Stop) => {
                        let _ = pump.await;
                        return;
                    }
                    Err(Interrupted::Release(request)) => {
                        tracing::info!(
                            "asked for the engine while it is restarting: none to hand over"
                        );
                        pump.abort();
                        let _ = request.send(None);
                        return;
                    }
                }
                let number = *self.inner.run.borrow() + 1;
                match self.spawn_run(number) {
                    Ok(r) => {
                        running = r;
                        self.inner.restarts.fetch_add(1, Ordering::Relaxed);
                        // An engine that does not answer must not keep a stop from being seen:
                        // the loop above stops it.
                        let set_up = tokio::time::timeout(START_TIMEOUT, self.set_up_account());
                        let error = match interruptible(set_up, &mut stop, &mut releases).await {
                            Ok(Ok(Ok(()))) | Err(Interrupted::Stop) => None,
                            Ok(Ok(Err(e))) => Some(e.to_string()),
                            Ok(Err(_)) => Some(format!("no answer within {START_TIMEOUT:?}")),
                            Err(Interrupted::Release(request)) => {
                                // Not set up: not an engine the next generation can take.
                                tracing::info!(
                                    engine_run = number,
                                    "asked for the engine while it is being set up: stopping it instead"
                                );
                                self.detach(&running.run);
                                running.stop(stop_timeout).await;
                                pump.abort();
                                let _ = request.send(None);
                                return;
                            }
                        };
                        if let Some(error) = error {
                            tracing::warn!(engine_run = number, %error, "restarted engine failed account set-up");
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

/// What ended a wait of the engine keeper's restart before it was over.
enum Interrupted {
    Stop,
    Release(ReleaseRequest),
}

/// Runs `work` unless a stop or a release request comes first. One that is there when `work`
/// is done too wins: a release waiting while the backoff ran out (this process was off the CPU)
/// is answered, not made to wait for another engine start.
async fn interruptible<F: std::future::Future>(
    work: F,
    stop: &mut watch::Receiver<bool>,
    releases: &mut mpsc::UnboundedReceiver<ReleaseRequest>,
) -> Result<F::Output, Interrupted> {
    tokio::select! {
        biased;
        _ = crate::stopped(stop) => Err(Interrupted::Stop),
        Some(request) = releases.recv() => Err(Interrupted::Release(request)),
        done = work => Ok(done),
    }
}

/// The method of the event long-poll.
const POLL_METHOD: &str = "get_next_event";

/// How long a release waits for the rest of an engine answer it was reading: the engine writes
/// an answer at once, so this is the time a big one (up to `PRIVITTY_RPC_MAX_RESPONSE`) takes
/// through the pipe; one not finished by then goes with the pipe as it is.
const FINISH_LINE: Duration = Duration::from_millis(100);

/// The long-poll a release hands on, among the calls it ended (`(id, is the long-poll)`): only
/// one the engine has. A long-poll queued just after the release (the pump asked again as its
/// engine went) was never written: the engine would never answer it, and the next owner's pump
/// would wait for it for ever, so the next owner asks for itself instead.
fn poll_to_hand_on(ended: impl IntoIterator<Item = (u64, bool)>, unwritten: &[u64]) -> Option<u64> {
    ended
        .into_iter()
        .find(|&(id, poll)| poll && !unwritten.contains(&id))
        .map(|(id, _)| id)
}

/// The largest call id the engine takes: it reads ids as 32-bit unsigned numbers, and answers a
/// call with a larger one with a parse error whose id is null, which no caller can be matched to
/// (2.65.0). The ids run through 1..=MAX_CALL_ID and start again at 1; one engine answers 2^32
/// calls in under two days at 30 000 a second, and handed-over engines keep their count.
const MAX_CALL_ID: u64 = u32::MAX as u64;

/// `id` if the engine takes it, else 1 (0, or a count a build without the wrap handed over).
fn call_id_in_range(id: u64) -> u64 {
    if (1..=MAX_CALL_ID).contains(&id) {
        id
    } else {
        1
    }
}

/// Takes the next call id from `next`, which then holds the one after it (1 after `MAX_CALL_ID`).
fn take_call_id(next: &AtomicU64) -> u64 {
    let taken = next
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            let id = call_id_in_range(n);
            Some(if id == MAX_CALL_ID { 1 } else { id + 1 })
        })
        .expect("the update always gives a value");
    call_id_in_range(taken)
}
/// How often an engine that is not our child is looked at while waiting for it to exit.
const EXIT_POLL: Duration = Duration::from_millis(5);

/// The engine process: our child, or one a previous generation handed over (its parent is now
/// privitty-init, which reaps it; we see its end as its stdout closing, then its pid going away).
#[derive(Debug)]
enum Process {
    Child(Child),
    Adopted { pid: u32, start_time: u64 },
}

impl Process {
    fn pid(&self) -> Option<u32> {
        match self {
            Process::Child(c) => c.id(),
            Process::Adopted { pid, .. } => Some(*pid),
        }
    }
}

/// The engine's stdout given back by its reader at a release, with the bytes it had read of an
/// unfinished line.
type StdoutBack = (pipe::Receiver, Vec<u8>);

struct Running {
    run: Arc<EngineRun>,
    process: Process,
    reader: Option<tokio::task::JoinHandle<Option<StdoutBack>>>,
    stderr: Option<tokio::task::JoinHandle<Option<pipe::Receiver>>>,
    /// Tells the reader and the stderr task to stop at a line boundary and give their pipe back.
    release: watch::Sender<bool>,
    started: Instant,
    read_ahead_len: usize,
}

impl Running {
    /// Resolves when the process is gone, with how it ended.
    async fn exited(&mut self) -> String {
        match &mut self.process {
            Process::Child(child) => child
                .wait()
                .await
                .map_or_else(|e| e.to_string(), |s| s.to_string()),
            Process::Adopted { pid, start_time } => {
                let (pid, start_time) = (*pid, *start_time);
                if let Some(reader) = self.reader.as_mut() {
                    let _ = reader.await;
                    self.reader = None;
                }
                // Its stdout closed; it exits right after (a process that closes stdout and
                // lives on is killed: it is of no use and must not run beside a new engine).
                if tokio::time::timeout(Duration::from_secs(2), gone(pid, start_time))
                    .await
                    .is_err()
                {
                    kill_if_same(pid, start_time);
                    gone(pid, start_time).await;
                }
                "exited (handed over: not our child, status unknown)".to_string()
            }
        }
    }

    async fn reader_done(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = reader.await;
        }
    }

    /// Closes stdin (the engine exits on EOF), waits up to `timeout`, then kills.
    async fn stop(mut self, timeout: Duration) {
        let number = self.run.number;
        let _ = self.run.lines.send(Out::Close);
        match tokio::time::timeout(timeout, self.exited()).await {
            Ok(status) => tracing::info!(engine_run = number, %status, "engine stopped"),
            Err(_) => {
                tracing::warn!(
                    engine_run = number,
                    ?timeout,
                    "engine did not exit after stdin closed; killing it"
                );
                match &mut self.process {
                    Process::Child(child) => {
                        let _ = child.kill().await;
                    }
                    Process::Adopted { pid, start_time } => {
                        kill_if_same(*pid, *start_time);
                        gone(*pid, *start_time).await;
                    }
                }
            }
        }
        self.reader_done().await;
        self.run.fail_all();
    }

    /// Takes the process out: stdin back from the writer, stdout and stderr from their readers at
    /// a line boundary. The calls it has not answered yet go with it: their answers come back
    /// over a new back channel, read by a task of their own (returned), so nobody waits for the
    /// engine here (more than [`MAX_FORWARD`] of them are waited for first, up to `timeout`). On
    /// any failure the engine is stopped instead and `None` returned.
    async fn release(
        mut self,
        timeout: Duration,
        next_id: &AtomicU64,
        max_line: usize,
    ) -> Option<(Released, Option<tokio::task::JoinHandle<()>>)> {
        let deadline = Instant::now() + timeout;
        while self.run.calls_waiting() > MAX_FORWARD {
            if Instant::now() >= deadline {
                tracing::warn!(
                    calls = self.run.calls_waiting(),
                    "engine calls still unanswered; stopping the engine instead of handing it over"
                );
                self.stop(timeout).await;
                return None;
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
        let (tx, rx) = oneshot::channel();
        let _ = self.run.lines.send(Out::Release(tx));
        let (stdin, unwritten) = match rx.await {
            Ok((stdin, unwritten)) => (Some(stdin), unwritten),
            Err(_) => (None, Vec::new()),
        };
        let _ = self.release.send(true);
        let stdout = match self.reader.take() {
            Some(r) => r.await.ok().flatten(),
            None => None,
        };
        let stderr = match self.stderr.take() {
            Some(r) => r.await.ok().flatten(),
            None => None,
        };
        // What is still waiting now: the long-poll (its answer is the next owner's event), calls
        // whose line was never written (a call that raced the release: it fails as if the
        // engine had died), and the calls in flight, whose answers the next owner sends back.
        let unwritten: Vec<u64> = unwritten.iter().filter_map(|l| id_in_request(l)).collect();
        let (ended, mut forward) = {
            let mut pending = self.run.pending.lock().expect("pending lock");
            match pending.as_mut() {
                Some(map) => {
                    let ended: Vec<(u64, Waiting)> = map
                        .extract_if(|id, w| w.poll || unwritten.contains(id))
                        .collect();
                    let mut forward: Vec<u64> = map.keys().copied().collect();
                    forward.sort_unstable();
                    (ended, forward)
                }
                None => (Vec::new(), Vec::new()),
            }
        };
        let poll_id = poll_to_hand_on(ended.iter().map(|(id, w)| (*id, w.poll)), &unwritten);
        for (_, w) in ended {
            w.fail();
        }
        let mut back = None;
        let mut forwarded = None;
        if !forward.is_empty() {
            match back_channel() {
                Ok((ours, theirs)) => {
                    back = Some(theirs);
                    let run = self.run.clone();
                    forwarded = Some(tokio::spawn(async move {
                        read_answers(ours, run, max_line, None, true).await;
                    }));
                }
                Err(e) => {
                    tracing::warn!(error = %e, calls = forward.len(), "no back channel for the engine calls in flight; they fail");
                    forward.clear();
                    self.run.fail_all();
                }
            }
        }
        let pid = self.process.pid();
        let start_time = pid.and_then(start_time_of);
        let pipes = (|| {
            Some((
                stdin?.into_nonblocking_fd().ok()?,
                stdout?,
                stderr?.into_nonblocking_fd().ok()?,
            ))
        })();
        let (Some((stdin, (stdout, read_ahead), stderr)), Some(pid), Some(start_time)) =
            (pipes, pid, start_time)
        else {
            tracing::warn!("cannot take the engine's pipes out cleanly; stopping it instead");
            // Whatever pipe came back was closed with the pattern above; a closed stdin ends the
            // engine.
            self.stop(timeout).await;
            return None;
        };
        let Ok(stdout) = stdout.into_nonblocking_fd() else {
            self.stop(timeout).await;
            return None;
        };
        // Not killed, not waited for: it is the next generation's now (the dropped `Child` has
        // no kill-on-drop).
        tracing::info!(
            pid,
            read_ahead = read_ahead.len(),
            poll_id,
            in_flight = forward.len(),
            "engine released for the next generation"
        );
        let released = Released {
            pid,
            start_time,
            stdin,
            stdout,
            stderr,
            read_ahead,
            next_id: next_id.load(Ordering::Relaxed),
            poll_id,
            forward,
            back,
            carried: None,
        };
        Some((released, forwarded))
    }
}

/// Most calls in flight a release takes along (their ids travel in the engine message); with more,
/// it waits until no more are left.
const MAX_FORWARD: usize = 1024;

/// A unix stream socket pair for the answers to calls in flight at a release: this end (read
/// here), and the one that goes with the engine.
fn back_channel() -> std::io::Result<(tokio::net::UnixStream, OwnedFd)> {
    let (ours, theirs) = tokio::net::UnixStream::pair()?;
    Ok((ours, OwnedFd::from(theirs.into_std()?)))
}

/// Writes the previous generation's answers to its back channel until no call of it waits here
/// any more (every sender is gone), then closes it: there, that is the end of the answers. The
/// task doing it is returned.
fn write_back(
    back: OwnedFd,
    mut lines: mpsc::UnboundedReceiver<Vec<u8>>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let stream = std::os::unix::net::UnixStream::from(back);
    stream.set_nonblocking(true)?;
    let mut stream = tokio::net::UnixStream::from_std(stream)?;
    Ok(tokio::spawn(async move {
        while let Some(line) = lines.recv().await {
            if stream.write_all(&line).await.is_err() {
                return;
            }
        }
        let _ = stream.shutdown().await;
    }))
}

/// The id of a call line edged wrote (`{"jsonrpc":"2.0","method":…,"params":…,"id":N}`).
fn id_in_request(line: &str) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: u64,
    }
    serde_json::from_str::<Id>(line).ok().map(|i| i.id)
}

/// Stops an engine that was released but could not be passed on: closes its stdin and waits
/// (up to `timeout`) for it to go, then kills it.
pub async fn stop_released(released: Released, timeout: Duration) {
    let Released {
        pid,
        start_time,
        stdin,
        ..
    } = released;
    drop(stdin);
    if tokio::time::timeout(timeout, gone(pid, start_time))
        .await
        .is_err()
    {
        tracing::warn!(
            pid,
            "released engine did not exit after stdin closed; killing it"
        );
        kill_if_same(pid, start_time);
    }
}

/// How long an engine left over from a generation that is gone gets to exit on its own (its
/// stdin closed with that generation) before it is killed.
const LEFTOVER_GRACE: Duration = Duration::from_secs(3);

/// Ends engines still running on `accounts` (the engine's `DC_ACCOUNTS_PATH`) before a fresh one
/// starts there. Handed-over engines live in their own process group, so one whose generation
/// crashed is not killed with it: it exits when it sees its stdin close, and this waits for
/// that (up to `grace`), then kills it. Without it the new engine would find the accounts
/// locked. Called with the data-directory lock held, so any such engine is a leftover.
async fn end_leftover_engines(accounts: &std::path::Path, grace: Duration) {
    let found = leftover_engines(accounts);
    if found.is_empty() {
        return;
    }
    let pids: Vec<u32> = found.iter().map(|(p, _)| *p).collect();
    tracing::warn!(
        ?pids,
        "an engine of a previous generation is still running; waiting for it to exit"
    );
    let all_gone = async {
        for &(pid, start) in &found {
            gone(pid, start).await;
        }
    };
    if tokio::time::timeout(grace, all_gone).await.is_err() {
        tracing::warn!(
            ?pids,
            ?grace,
            "the previous engine did not exit; killing it"
        );
        for &(pid, start) in &found {
            kill_if_same(pid, start);
        }
        for &(pid, start) in &found {
            let _ = tokio::time::timeout(Duration::from_secs(2), gone(pid, start)).await;
        }
    }
}

/// Live processes whose environment has `DC_ACCOUNTS_PATH=<accounts>`: engines on this data
/// directory. Never this process, its ancestors (privitty-init) or another run of this executable
/// (another generation), which have it too when an operator set it for the whole container.
/// Processes we may not read are not ours.
fn leftover_engines(accounts: &std::path::Path) -> Vec<(u32, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let mut want = format!("{}=", env::ENGINE_ACCOUNTS_PATH).into_bytes();
    want.extend_from_slice(accounts.as_os_str().as_bytes());
    let mut spared = vec![std::process::id()];
    while let Some(parent) = spared.last().and_then(|&p| parent_of(p)).filter(|&p| p > 0) {
        spared.push(parent);
    }
    let me = std::fs::read_link("/proc/self/exe").ok();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !spared.contains(pid))
        .filter(|pid| me.is_none() || std::fs::read_link(format!("/proc/{pid}/exe")).ok() != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == want.as_slice()))
        })
        .filter_map(|pid| Some((pid, start_time_of(pid)?)))
        .collect()
}

/// Field 22 of `/proc/<pid>/stat` (start time in clock ticks since boot), for a process that is
/// alive (not a zombie).
fn start_time_of(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // `rest` starts at field 3; field 22 is the 20th from here.
    fields.nth(18)?.parse().ok()
}

/// The `PPid` of a process, from `/proc/<pid>/status`.
fn parent_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

/// Resolves once `pid` is no longer the live process that started at `start_time`.
async fn gone(pid: u32, start_time: u64) {
    while start_time_of(pid) == Some(start_time) {
        tokio::time::sleep(EXIT_POLL).await;
    }
}

/// SIGKILL to `pid` if it still is the process that started at `start_time`.
fn kill_if_same(pid: u32, start_time: u64) {
    if start_time_of(pid) == Some(start_time) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

async fn write_lines(stdin: pipe::Sender, mut lines: mpsc::UnboundedReceiver<Out>) {
    let mut out = BufWriter::new(stdin);
    while let Some(first) = lines.recv().await {
        let mut next = Some(first);
        // Write everything queued, then flush once: many concurrent calls cost one syscall.
        while let Some(item) = next.take() {
            match item {
                Out::Line(line) => {
                    if out.write_all(line.as_bytes()).await.is_err()
                        || out.write_all(b"\n").await.is_err()
                    {
                        return;
                    }
                }
                Out::Close => {
                    let _ = out.flush().await;
                    let _ = out.shutdown().await;
                    return;
                }
                Out::Release(back) => {
                    if out.flush().await.is_ok() {
                        lines.close();
                        let mut unwritten = Vec::new();
                        while let Ok(item) = lines.try_recv() {
                            if let Out::Line(line) = item {
                                unwritten.push(line);
                            }
                        }
                        let _ = back.send((out.into_inner(), unwritten));
                    }
                    return;
                }
            }
            next = lines.try_recv().ok();
        }
        if out.flush().await.is_err() {
            return;
        }
    }
    let _ = out.shutdown().await;
}

/// Reads the engine's answers from `source` (its stdout, or, with `back_channel`, a later owner's
/// back channel) and delivers each to the call waiting for it, until `source` ends (every call
/// still waiting then fails) or `release` turns true: then `source` comes back at a line boundary,
/// with the bytes read of an unfinished line.
async fn read_answers<R: AsyncRead + Unpin>(
    source: R,
    run: Arc<EngineRun>,
    max_line: usize,
    mut release: Option<watch::Receiver<bool>>,
    back_channel: bool,
) -> Option<(R, Vec<u8>)> {
    let mut reader = BufReader::new(source);
    let mut line = LineState::default();
    let mut released = false;
    loop {
        if released {
            // Stopping between lines or in the middle of one loses nothing: the partial line
            // stays in `line`, the rest in the reader's buffer, and both go with the pipe.
            if line.over {
                tracing::warn!("released in the middle of an over-long engine answer");
                return None;
            }
            let mut rest = std::mem::take(&mut line.buf);
            rest.extend_from_slice(reader.buffer());
            return Some((reader.into_inner(), rest));
        }
        let read = match release.as_mut() {
            Some(release) => tokio::select! {
                biased;
                _ = crate::stopped(release) => None,
                r = read_line_capped(&mut reader, max_line, &mut line) => Some(r),
            },
            None => Some(read_line_capped(&mut reader, max_line, &mut line).await),
        };
        let read = match read {
            Some(read) => read,
            None => {
                released = true;
                if line.size == 0 {
                    continue;
                }
                // An answer begun is read to its end first (briefly) and handled here: what
                // goes with the pipe is then at most the reader's buffer, which always fits the
                // engine message (an answer can be far bigger than one message).
                match tokio::time::timeout(
                    FINISH_LINE,
                    read_line_capped(&mut reader, max_line, &mut line),
                )
                .await
                {
                    Ok(read) => read,
                    Err(_) => continue,
                }
            }
        };
        match read {
            Ok(true) => {}
            Ok(false) | Err(_) => break,
        }
        let (id, outcome) = if line.over {
            let Some(id) = id_in_head(&line.head) else {
                tracing::warn!(
                    size = line.size,
                    "engine wrote an over-long line without a readable id; dropped it"
                );
                line.clear();
                continue;
            };
            tracing::warn!(
                id,
                size = line.size,
                limit = max_line,
                "engine answer over the response limit; dropped it"
            );
            (id, Err(line.size))
        } else {
            let msg: Value = match serde_json::from_slice(&line.buf) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "engine wrote a line that is not JSON; ignoring it");
                    line.clear();
                    continue;
                }
            };
            let Some(id) = msg.get("id").and_then(Value::as_u64) else {
                // An error without an id is the engine refusing a line it could not read as a
                // call: edged wrote something wrong, and the call it was for never gets an answer.
                if let Some(error) = msg.get("error") {
                    tracing::warn!(%error, "the engine could not read a call edged wrote");
                } else {
                    tracing::debug!("engine message without a call id; ignoring it");
                }
                line.clear();
                continue;
            };
            // A later owner's notice of an answer it dropped as over-long (see `Reply::Back`).
            match msg.get(OVER_NOTICE).and_then(Value::as_u64) {
                Some(size) if back_channel => (id, Err(size as usize)),
                _ => (id, Ok((msg, line.buf.len()))),
            }
        };
        let waiting = run
            .pending
            .lock()
            .expect("pending lock")
            .as_mut()
            .and_then(|m| m.remove(&id));
        let Some(waiting) = waiting else {
            tracing::debug!(id, "engine answer to a call nobody waits for; dropped it");
            line.clear();
            continue;
        };
        let reply = match waiting.reply {
            Reply::Caller(reply) => reply,
            Reply::Back(back) => {
                let mut raw = match outcome {
                    Err(size) => format!(r#"{{"jsonrpc":"2.0","id":{id},"{OVER_NOTICE}":{size}}}"#)
                        .into_bytes(),
                    Ok(_) => std::mem::take(&mut line.buf),
                };
                raw.push(b'\n');
                let _ = back.send(raw);
                line.clear();
                continue;
            }
        };
        line.clear();
        let budget = waiting.budget;
        let outcome = match outcome {
            Err(size) => Err(EngineError::TooLarge {
                size,
                limit: budget.as_ref().map_or(max_line, |b| b.limit()),
            }),
            Ok((_, size)) if budget.as_ref().is_some_and(|b| !b.take(size)) => {
                Err(EngineError::TooLarge {
                    size,
                    limit: budget.as_ref().map_or(max_line, |b| b.limit()),
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
        let _ = reply.send(outcome);
    }
    // No answer can come any more: fail what is still waiting now, not when the exit is noticed.
    run.fail_all();
    None
}

/// The field of a back-channel line that says the engine's answer was over the size limit (its
/// size): the later owner dropped it unread, as this generation would have.
const OVER_NOTICE: &str = "privittyOver";

/// The line being read from the engine, kept outside the read so that stopping in the middle
/// of one loses nothing.
#[derive(Default)]
struct LineState {
    /// The line so far (empty once it went over the cap).
    buf: Vec<u8>,
    /// Its first bytes, enough to find the call an over-long answer is for.
    head: Vec<u8>,
    size: usize,
    over: bool,
}

impl LineState {
    fn clear(&mut self) {
        self.buf.clear();
        self.head.clear();
        self.size = 0;
        self.over = false;
    }
}

/// Bytes kept of an over-long line: enough for `{"jsonrpc":"2.0","id":<u64>,`.
const HEAD_BYTES: usize = 64;

/// Reads on into `line` until it ends (`true`) or the stream does (`false`; a partial last line
/// is not an answer). A line longer than `cap` is skipped as it arrives (memory stays at `cap`)
/// and only its head kept. Cancel-safe: what was read stays in `line` and `reader`.
async fn read_line_capped<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    cap: usize,
    line: &mut LineState,
) -> std::io::Result<bool> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(false);
        }
        let newline = available.iter().position(|&b| b == b'\n');
        let chunk = &available[..newline.unwrap_or(available.len())];
        line.size += chunk.len();
        if line.head.len() < HEAD_BYTES {
            let n = (HEAD_BYTES - line.head.len()).min(chunk.len());
            line.head.extend_from_slice(&chunk[..n]);
        }
        if !line.over {
            if line.buf.len() + chunk.len() > cap {
                line.over = true;
                line.buf.clear();
                line.buf.shrink_to(64 * 1024);
            } else {
                line.buf.extend_from_slice(chunk);
            }
        }
        let consumed = newline.map_or(available.len(), |i| i + 1);
        reader.consume(consumed);
        if newline.is_some() {
            return Ok(true);
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

/// Logs the engine's stderr line by line until it closes, or until released (then the pipe goes
/// back, after logging what was read of an unfinished line).
async fn log_stderr(
    stderr: pipe::Receiver,
    pid: Option<u32>,
    mut release: watch::Receiver<bool>,
) -> Option<pipe::Receiver> {
    let log = |line: &[u8]| {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches('\n');
        if line.contains("ERROR") || line.contains("WARN") {
            tracing::warn!(engine_pid = pid, "engine: {line}");
        } else {
            tracing::debug!(engine_pid = pid, "engine: {line}");
        }
    };
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        // `read_until` keeps what it read in `line` when it is cancelled.
        let read = tokio::select! {
            biased;
            _ = crate::stopped(&mut release) => None,
            r = reader.read_until(b'\n', &mut line) => Some(r),
        };
        match read {
            None => {
                line.extend_from_slice(reader.buffer());
                if !line.is_empty() {
                    log(&line);
                }
                return Some(reader.into_inner());
            }
            Some(Ok(0)) | Some(Err(_)) => return None,
            Some(Ok(_)) => {
                log(&line);
                line.clear();
            }
        }
    }
}

/// Pulls events with `get_next_event` and publishes them, across engine restarts, until stop.
/// An adopted engine's unanswered long-poll comes first: its answer is the next event.
async fn pump_events(engine: Engine, hub: Hub, mut stop: watch::Receiver<bool>) {
    let mut runs = engine.inner.run.subscribe();
    let adopted = engine
        .inner
        .adopted_poll
        .lock()
        .expect("adopted poll lock")
        .take();
    if let Some(answer) = adopted {
        tokio::select! {
            r = answer => if let Ok(Ok(event)) = r && !event.is_null() {
                hub.publish_engine(&event);
            },
            _ = crate::stopped(&mut stop) => return,
        }
    }
    loop {
        let asked_of = *runs.borrow_and_update();
        let next = tokio::select! {
            r = engine.call(POLL_METHOD, &[]) => r,
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
        let config = EngineConfig {
            program: PathBuf::from(program),
            data_dir: std::env::temp_dir(),
            profile: "test".into(),
            max_answer: 1024,
            realtime_off: true,
        };
        Engine::bare(config, 1).0
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
    fn answers_once() -> String {
        answers_first_run("exec sleep 1000")
    }

    /// An engine that answers on its first run and, once restarted, runs `then` (shell).
    fn answers_first_run(then: &str) -> String {
        ANSWERS_FIRST_RUN.replace("THEN", then)
    }

    const ANSWERS_FIRST_RUN: &str = r#"#!/bin/sh
m="$DC_ACCOUNTS_PATH.started"
if [ -e "$m" ]; then THEN; fi
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

    /// The engine `script` started by a keeper (stop timeout 200 ms), its first run SIGKILLed:
    /// the keeper is restarting it. The data directory and the stop flag are kept by the caller.
    async fn first_engine_killed(
        script: &str,
    ) -> (
        tempfile::TempDir,
        watch::Sender<bool>,
        Engine,
        tokio::task::JoinHandle<()>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let config = script_engine(dir.path(), script);
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
        (dir, stop_tx, engine, keeper)
    }

    #[tokio::test]
    async fn a_stop_during_a_restarted_engines_set_up_is_not_ignored() {
        let (_dir, stop_tx, engine, keeper) = first_engine_killed(&answers_once()).await;
        crate::test_util::wait_until(|| engine.restarts() == 1).await;
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(30), keeper)
            .await
            .expect("the keeper ends after a stop, even while the new engine does not answer")
            .unwrap();
        assert!(engine.pid().is_none());
    }

    /// A stand-in engine process (its pid and start time only) with pipes the test holds.
    struct Stand {
        child: KillOnDrop,
        /// What edged writes to the engine.
        stdin: std::io::BufReader<std::fs::File>,
        /// What the engine answers.
        stdout: std::fs::File,
        _stderr: std::fs::File,
    }

    fn stand_in(read_ahead: &[u8], next_id: u64, poll_id: Option<u64>) -> (Stand, Released) {
        // Nothing inherited: a test that fails must not leave it holding the harness's output.
        let child = std::process::Command::new("sleep")
            .arg("1000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let child = KillOnDrop(child);
        let pid = child.0.id();
        let start_time = start_time_of(pid).expect("a live child");
        let (in_r, in_w) = nix::unistd::pipe().unwrap();
        let (out_r, out_w) = nix::unistd::pipe().unwrap();
        let (err_r, err_w) = nix::unistd::pipe().unwrap();
        let released = Released {
            pid,
            start_time,
            stdin: in_w,
            stdout: out_r,
            stderr: err_r,
            read_ahead: read_ahead.to_vec(),
            next_id,
            poll_id,
            forward: Vec::new(),
            back: None,
            carried: None,
        };
        let stand = Stand {
            child,
            stdin: std::io::BufReader::new(std::fs::File::from(in_r)),
            stdout: std::fs::File::from(out_w),
            _stderr: std::fs::File::from(err_w),
        };
        (stand, released)
    }

    struct KillOnDrop(std::process::Child);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn next_request(stand: &mut Stand) -> Value {
        use std::io::BufRead;
        let mut line = String::new();
        stand.stdin.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }

    /// The next request for `method` the stand-in gets (the others before it are passed over).
    async fn request_for(mut stand: Stand, method: &'static str) -> (Stand, Value) {
        tokio::task::spawn_blocking(move || {
            loop {
                let r = next_request(&mut stand);
                if r["method"] == method {
                    break (stand, r);
                }
            }
        })
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_adopted_engine_answers_its_old_poll_and_goes_on_then_is_released_again() {
        use std::io::Write;
        // The previous owner left the long-poll id 5 open and had read the start of its answer.
        let (mut stand, released) = stand_in(br#"{"jsonrpc":"2.0","id":5,"res"#, 6, Some(5));
        let hub = Hub::new(16);
        let mut events = hub.subscribe();
        let (stop_tx, stop) = watch::channel(false);
        let config = bare("/nonexistent").inner.config.clone();
        let (engine, keeper) =
            Engine::adopt(config, released, hub.clone(), stop, Duration::from_secs(5)).unwrap();
        assert_eq!(engine.pid(), Some(stand.child.0.id()));
        // The rest of the old poll's answer: an event, published.
        stand
            .stdout
            .write_all(br#"ult":{"contextId":1,"event":{"kind":"Info","msg":"carried over"}}}"#)
            .unwrap();
        stand.stdout.write_all(b"\n").unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("the old poll's event arrives")
            .unwrap();
        assert!(first.contains("carried over"), "{first}");
        // The pump asks for the next event with an id of its own, above the old owner's.
        let poll = tokio::task::spawn_blocking(move || {
            let r = next_request(&mut stand);
            (stand, r)
        });
        let (mut stand, poll) = poll.await.unwrap();
        assert_eq!(poll["method"], "get_next_event");
        assert_eq!(poll["id"], 6);
        // A call goes through and is answered.
        let call = tokio::spawn({
            let engine = engine.clone();
            async move { engine.call("get_system_info", &[]).await }
        });
        let (mut stand, request) = tokio::task::spawn_blocking(move || {
            let r = next_request(&mut stand);
            (stand, r)
        })
        .await
        .unwrap();
        assert_eq!(
            (request["method"].as_str(), request["id"].as_u64()),
            (Some("get_system_info"), Some(7))
        );
        stand
            .stdout
            .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"ok\":1}}\n{\"jsonrpc\":\"2.0\",\"id\":6,")
            .unwrap();
        assert_eq!(call.await.unwrap().unwrap(), json!({"ok": 1}));
        // Released again: the poll still open (6) goes with it, and so does the half of its
        // answer already read (the answer to 7 and that half came in one read).
        let again = tokio::time::timeout(Duration::from_secs(10), engine.release())
            .await
            .expect("released")
            .expect("a clean release");
        assert_eq!(
            (again.pid, again.next_id, again.poll_id),
            (stand.child.0.id(), 8, Some(6))
        );
        assert_eq!(
            String::from_utf8_lossy(&again.read_ahead),
            r#"{"jsonrpc":"2.0","id":6,"#
        );
        keeper.await.unwrap();
        assert!(engine.pid().is_none(), "no engine here any more");
        drop(stop_tx);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_in_flight_at_a_release_get_their_answers_through_the_next_owner() {
        use std::io::Write;
        let (stand, released) = stand_in(b"", 20, None);
        let hub = Hub::new(16);
        let (_stop_tx, stop) = watch::channel(false);
        let mut config = bare("/nonexistent").inner.config.clone();
        config.max_answer = 200;
        let (old, old_keeper) = Engine::adopt(
            config.clone(),
            released,
            hub.clone(),
            stop.clone(),
            Duration::from_secs(5),
        )
        .unwrap();
        // Three calls of the old owner are in flight (the stand-in answers nothing by itself).
        let mut calls = Vec::new();
        for method in ["one", "two", "three"] {
            let old = old.clone();
            calls.push(tokio::spawn(async move { old.call(method, &[]).await }));
        }
        let (mut stand, requests) = tokio::task::spawn_blocking(move || {
            let mut requests = Vec::new();
            let mut stand = stand;
            // The pump's long-poll comes first or in between: keep only the calls.
            while requests.len() < 3 {
                let r = next_request(&mut stand);
                if r["method"] != "get_next_event" {
                    requests.push(r);
                }
            }
            (stand, requests)
        })
        .await
        .unwrap();
        let id_of = |method: &str| {
            requests
                .iter()
                .find(|r| r["method"] == method)
                .and_then(|r| r["id"].as_u64())
                .unwrap()
        };
        // Released with them in flight; the first is answered before the next owner has it.
        stand
            .stdout
            .write_all(
                format!(
                    "{{\"jsonrpc\":\"2.0\",\"id\":{},\"result\":1}}\n",
                    id_of("one")
                )
                .as_bytes(),
            )
            .unwrap();
        let released = tokio::time::timeout(Duration::from_secs(10), old.release())
            .await
            .expect("released at once, not after the answers")
            .expect("a clean release");
        old_keeper.await.unwrap();
        // The calls still waiting went along ("one" too, unless its answer was read first).
        let (one, two, three) = (id_of("one"), id_of("two"), id_of("three"));
        assert!(
            released.forward.contains(&two) && released.forward.contains(&three),
            "{:?}",
            released.forward
        );
        assert!(
            released
                .forward
                .iter()
                .all(|id| [one, two, three].contains(id))
        );
        assert!(released.back.is_some());
        // No new call starts on the old owner.
        assert!(matches!(
            old.call("four", &[]).await,
            Err(EngineError::Unavailable)
        ));
        // The next owner takes it; the answers to the old owner's calls reach their callers there,
        // one of them over the size limit, and its own call goes on as usual.
        let (new, new_keeper) =
            Engine::adopt(config, released, hub, stop, Duration::from_secs(5)).unwrap();
        let own = tokio::spawn({
            let new = new.clone();
            async move { new.call("five", &[]).await }
        });
        let (mut stand, own_request) = request_for(stand, "five").await;
        let big = "x".repeat(300);
        let answers = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{},\"result\":\"{big}\"}}\n{{\"jsonrpc\":\"2.0\",\"id\":{},\"result\":{{\"ok\":2}}}}\n{{\"jsonrpc\":\"2.0\",\"id\":{},\"result\":5}}\n",
            id_of("three"),
            id_of("two"),
            own_request["id"]
        );
        stand.stdout.write_all(answers.as_bytes()).unwrap();
        let mut results = Vec::new();
        for call in calls {
            results.push(
                tokio::time::timeout(Duration::from_secs(10), call)
                    .await
                    .expect("an answer")
                    .unwrap(),
            );
        }
        assert_eq!(results[0].as_ref().unwrap(), &json!(1));
        assert_eq!(results[1].as_ref().unwrap(), &json!({"ok": 2}));
        assert!(
            matches!(results[2], Err(EngineError::TooLarge { limit: 200, .. })),
            "{:?}",
            results[2]
        );
        assert_eq!(own.await.unwrap().unwrap(), json!(5));
        // Every forwarded call is answered: the back channel closed, and the old owner knows.
        assert!(old.forwarded_answered(Duration::from_secs(10)).await);
        drop(new);
        drop(new_keeper);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_answer_being_read_at_a_release_is_finished_and_answered_not_carried_over() {
        use std::io::Write;
        let (stand, released) = stand_in(b"", 20, None);
        // A one-page pipe: once a write into it returns, the reader has taken all but a page.
        nix::fcntl::fcntl(&stand.stdout, nix::fcntl::FcntlArg::F_SETPIPE_SZ(4096)).unwrap();
        let hub = Hub::new(16);
        let (_stop_tx, stop) = watch::channel(false);
        let mut config = bare("/nonexistent").inner.config.clone();
        config.max_answer = 1024 * 1024;
        let (engine, keeper) =
            Engine::adopt(config, released, hub, stop, Duration::from_secs(5)).unwrap();
        let call = tokio::spawn({
            let engine = engine.clone();
            async move { engine.call("big", &[]).await }
        });
        let (mut stand, request) = request_for(stand, "big").await;
        let id = request["id"].as_u64().unwrap();
        // 250 KiB of its answer are read (more than one engine message holds) when the release
        // comes; the rest comes after it.
        let big = "x".repeat(256 * 1024);
        let answer = format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":\"{big}\"}}\n");
        let (first, rest) = answer.as_bytes().split_at(250 * 1024);
        let rest = rest.to_vec();
        let mut stand = tokio::task::spawn_blocking({
            let first = first.to_vec();
            move || {
                stand.stdout.write_all(&first).unwrap();
                stand
            }
        })
        .await
        .unwrap();
        let release = tokio::spawn({
            let engine = engine.clone();
            async move { engine.release().await }
        });
        crate::test_util::wait_until(|| engine.pid().is_none()).await;
        // Not awaited before the release: if nobody reads the rest, the release's pipe closes.
        let rest = tokio::task::spawn_blocking(move || {
            let written = stand.stdout.write_all(&rest);
            (stand, written)
        });
        let released = tokio::time::timeout(Duration::from_secs(10), release)
            .await
            .expect("released")
            .unwrap()
            .expect("a clean release");
        keeper.await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("the call ended")
            .unwrap()
            .expect("answered by the owner it was made to");
        assert_eq!(got.as_str().map(str::len), Some(big.len()));
        assert!(
            released.read_ahead.is_empty(),
            "{} bytes carried over",
            released.read_ahead.len()
        );
        assert!(!released.forward.contains(&id));
        drop(released);
        let (_stand, written) = rest.await.unwrap();
        written.expect("the rest of the answer was read");
    }

    #[test]
    fn a_long_poll_the_engine_never_got_is_not_handed_on() {
        // Written: it goes on in the next owner.
        assert_eq!(poll_to_hand_on([(3, false), (5, true)], &[3]), Some(5));
        // Queued after the release, never written: the next owner asks for itself.
        assert_eq!(poll_to_hand_on([(3, false), (6, true)], &[6]), None);
        assert_eq!(poll_to_hand_on([(3, false)], &[]), None);
    }

    #[test]
    fn the_ancestors_of_this_process_are_found() {
        let parent = parent_of(std::process::id()).expect("a parent");
        assert_eq!(parent, std::os::unix::process::parent_id());
        assert!(parent_of(u32::MAX).is_none());
    }

    #[tokio::test]
    async fn an_engine_left_over_on_this_data_directory_is_ended_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("accounts");
        let other = dir.path().join("accounts-of-another");
        // Engines that ignore their stdin closing: the grace passes and they are killed.
        let spawn = |path: &std::path::Path| {
            KillOnDrop(
                std::process::Command::new("sleep")
                    .arg("1000")
                    .env(env::ENGINE_ACCOUNTS_PATH, path)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        };
        let mut leftover = spawn(&ours);
        let mut unrelated = spawn(&other);
        assert_eq!(
            leftover_engines(&ours).len(),
            1,
            "found by its DC_ACCOUNTS_PATH"
        );
        end_leftover_engines(&ours, Duration::from_millis(100)).await;
        assert!(
            leftover.0.try_wait().unwrap().is_some(),
            "the leftover engine was ended"
        );
        assert!(
            unrelated.0.try_wait().unwrap().is_none(),
            "an engine of another data directory was not touched"
        );
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

    /// The ids of the calls waiting on `engine`'s current run.
    fn waiting_ids(engine: &Engine) -> Vec<u64> {
        let current = engine.inner.current.lock().unwrap().clone().unwrap();
        let pending = current.pending.lock().unwrap();
        let mut ids: Vec<u64> = pending.as_ref().unwrap().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn call_ids_wrap_at_the_engines_limit_and_skip_the_one_still_waiting() {
        // `tail` answers nothing until stdin closes: every call stays waiting with its id.
        let engine = bare("/usr/bin/tail");
        let running = engine.spawn_run(1).expect("spawn tail");
        let call = |engine: &Engine| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.call("get_next_event", &[]).await })
        };
        // A long-poll that waits with id 1, then the count is near the end of the ids.
        let first = call(&engine);
        crate::test_util::wait_until(|| waiting_ids(&engine) == [1]).await;
        engine.inner.next_id.store(MAX_CALL_ID, Ordering::Relaxed);
        let last = call(&engine);
        crate::test_util::wait_until(|| waiting_ids(&engine).len() == 2).await;
        let wrapped = call(&engine);
        crate::test_util::wait_until(|| waiting_ids(&engine).len() == 3).await;
        assert_eq!(waiting_ids(&engine), [1, 2, MAX_CALL_ID]);
        // A count beyond the engine's ids (handed over by a build without the wrap) starts at 1
        // again, and 1 and 2 are taken.
        engine
            .inner
            .next_id
            .store(MAX_CALL_ID + 7, Ordering::Relaxed);
        let beyond = call(&engine);
        crate::test_util::wait_until(|| waiting_ids(&engine).len() == 4).await;
        assert_eq!(waiting_ids(&engine), [1, 2, 3, MAX_CALL_ID]);
        running.stop(Duration::from_secs(5)).await;
        for c in [first, last, wrapped, beyond] {
            c.await.unwrap().ok();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_real_engine_answers_every_call_across_the_id_wrap() {
        let Some(program) = crate::test_util::pinned_engine() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let config = EngineConfig {
            program,
            data_dir: dir.path().to_path_buf(),
            profile: "wrap".into(),
            max_answer: 1 << 20,
            realtime_off: true,
        };
        let (stop_tx, stop) = watch::channel(false);
        let (engine, keeper) = Engine::start(config, Hub::new(16), stop, Duration::from_secs(10))
            .await
            .expect("the engine starts")
            .expect("not stopped");
        // Three calls before the last id the engine takes, so the wrap comes mid-way (the event
        // pump's long-poll holds an id of its own too).
        engine
            .inner
            .next_id
            .store(MAX_CALL_ID - 2, Ordering::Relaxed);
        for n in 0..6 {
            let answer = tokio::time::timeout(
                Duration::from_secs(10),
                engine.call("get_all_account_ids", &[]),
            )
            .await
            .unwrap_or_else(|_| {
                panic!("call {n} after the id count neared the limit got no answer")
            });
            assert_eq!(answer.unwrap(), json!([ACCOUNT_ID]), "call {n}");
        }
        let next = engine.inner.next_id.load(Ordering::Relaxed);
        assert!(next < MAX_CALL_ID - 2, "the ids started again at 1: {next}");
        stop_tx.send(true).unwrap();
        keeper.await.unwrap();
    }

    /// The engine keeper restarting a dead engine (`script`), once it has restarted it `restarts`
    /// times and `ready` holds: a release is answered with no engine, without waiting for the
    /// restart (the next generation starts its own), the keeper ends, no engine runs and none
    /// starts after.
    async fn released_while_restarting(
        script: &str,
        restarts: u64,
        ready: impl Fn(&Engine) -> bool,
    ) {
        let (_dir, _stop_tx, engine, keeper) = first_engine_killed(script).await;
        // In the backoff or the set-up that follows it: the restarted engine exited (it is
        // detached then) or it was started (and not yet given up). A later restart in the same
        // state will do as well (this thread may be off the CPU for a whole backoff).
        crate::test_util::wait_until(|| engine.restarts() >= restarts && ready(&engine)).await;
        // Nothing runs on this runtime between the check above and the request below.
        let restarts = engine.restarts();
        let released = tokio::time::timeout(Duration::from_secs(20), engine.release())
            .await
            .expect("a release while the engine restarts is answered, not left until it is up");
        assert!(released.is_none(), "a restarting engine was handed over");
        tokio::time::timeout(Duration::from_secs(10), keeper)
            .await
            .expect("the keeper ends after the release")
            .unwrap();
        assert_eq!(engine.pid(), None);
        assert_eq!(
            engine.restarts(),
            restarts,
            "the engine was restarted after the release"
        );
        assert!(leftover_engines(&engine.accounts_path()).is_empty());
    }

    #[tokio::test]
    async fn a_release_during_a_restarted_engines_set_up_stops_it_and_hands_over_none() {
        // The restarted engine never answers: its set-up would wait START_TIMEOUT (60 s).
        released_while_restarting(&answers_once(), 1, |engine| engine.pid().is_some()).await;
    }

    #[tokio::test]
    async fn a_release_during_the_restart_backoff_hands_over_none_at_once() {
        // The restarted engine exits at once, again and again: after the third restart the
        // keeper waits 800 ms, then 1.6 s, before the next. Once it has seen the third one
        // exit (no engine then), it is in the backoff.
        released_while_restarting(&answers_first_run("exit 1"), 3, |engine| {
            engine.pid().is_none()
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_answer_passing_through_a_middle_generation_reaches_the_first_before_the_middle_one_ends()
     {
        use std::io::Write;
        let (stand, released) = stand_in(b"", 20, None);
        let mut config = bare("/nonexistent").inner.config.clone();
        config.max_answer = 8 * 1024 * 1024;
        let (_stop_tx, stop) = watch::channel(false);
        // The first generation hands the engine on with a call in flight.
        let (first, first_keeper) = Engine::adopt(
            config.clone(),
            released,
            Hub::new(16),
            stop.clone(),
            Duration::from_secs(5),
        )
        .unwrap();
        let call = tokio::spawn({
            let first = first.clone();
            async move { first.call("big", &[]).await }
        });
        let (mut stand, request) = request_for(stand, "big").await;
        let id = request["id"].as_u64().unwrap();
        let released = first.release().await.expect("a clean release");
        first_keeper.await.unwrap();
        assert_eq!(released.forward, vec![id]);
        // The middle one, a process of its own (a runtime of its own, dropped as the process
        // would end), takes the engine and hands it on at once, the call still in flight; then
        // it does what edged does before it exits at a swap.
        let (to_last, from_middle) = tokio::sync::oneshot::channel();
        let middle = std::thread::spawn({
            let config = config.clone();
            let stop = stop.clone();
            move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let (middle, keeper) =
                        Engine::adopt(config, released, Hub::new(16), stop, Duration::from_secs(5))
                            .unwrap();
                    let released = middle.release().await.expect("a clean release");
                    keeper.await.unwrap();
                    assert_eq!(released.forward, vec![id]);
                    to_last.send(released).unwrap();
                    middle.forwarded_answered(Duration::from_secs(20)).await
                })
            }
        });
        let released = from_middle.await.unwrap();
        let (last, last_keeper) =
            Engine::adopt(config, released, Hub::new(16), stop, Duration::from_secs(5)).unwrap();
        // The answer comes to the last one: far bigger than a socket's buffer, so it takes the
        // middle one several writes to pass it on.
        let big = "x".repeat(4 * 1024 * 1024);
        let answer = format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":\"{big}\"}}\n");
        let stand = tokio::task::spawn_blocking(move || {
            stand.stdout.write_all(answer.as_bytes()).unwrap();
            stand
        })
        .await
        .unwrap();
        let middle_answered = tokio::task::spawn_blocking(move || middle.join().unwrap())
            .await
            .unwrap();
        assert!(
            middle_answered,
            "the middle generation did not see its forwarded calls answered"
        );
        let result = tokio::time::timeout(Duration::from_secs(20), call)
            .await
            .expect("the call ended")
            .unwrap();
        assert_eq!(result.unwrap().as_str().map(str::len), Some(big.len()));
        assert!(first.forwarded_answered(Duration::from_secs(10)).await);
        drop((last, last_keeper, stand));
    }
}
