//! What one JSON-RPC call does: the gate first, then edged's own methods, the Privitty file methods,
//! or the engine, and what is counted of it (the usage of a licensed call that succeeded, and the
//! call's class, outcome and duration in the metrics).
//!
//! Owns: the routing order (gate before "method not found", so unknown `privitty_*` names are gated)
//! and which [`Class`] a call belongs to. Must not: parse HTTP or JSON-RPC envelopes, or hold locks
//! across an await.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::engine::{Budget, Engine};
use crate::events::Hub;
use crate::files::FilesDir;
use crate::gate;
use crate::license::License;
use crate::license_events::LicenseEvents;
use crate::metrics::{Class, Metrics};
use crate::peer::Peer;
use crate::policy::{self, Decision, PathArg, Policy};
use crate::rpc::{Outcome, RpcError};
use crate::work::Ticket;

/// Methods served by a module inside edged with blocking file I/O (the Privitty file methods).
/// Every method it names is licensed.
pub trait FileMethods: Send + Sync + std::fmt::Debug + 'static {
    fn has(&self, method: &str) -> bool;
    /// Runs a method (blocking). `None` = not a method of this module.
    fn call(&self, method: &str, params: &[Value]) -> Option<Result<FileOutcome, RpcError>>;
}

/// A file method's result and the events (documented SSE shape) it caused.
#[derive(Debug)]
pub struct FileOutcome {
    pub result: Value,
    pub events: Vec<Value>,
}

/// edged's own method: the license status as the gate sees it now (open, for monitoring).
pub const LICENSE_STATUS_METHOD: &str = "privitty_license_status";

/// The engine method that copies messages to another chat: refused for a received protected
/// file whose owner forbids forwarding.
pub const FORWARD_METHOD: &str = "forward_messages";

/// Engine methods that wait for something to happen (long polls): they may never answer by
/// themselves, so at a stop they are answered at once instead of holding the stop to its deadline.
/// Cutting one short is safe: it has handed nothing to the client yet, and the engine stops next.
pub const LONG_POLL_METHODS: &[&str] = &["get_next_event", "wait_next_msgs"];

/// Everything a call may need; shared by all connections.
#[derive(Debug)]
pub struct Service {
    pub engine: Engine,
    pub license: Arc<dyn License>,
    pub hub: Hub,
    pub files: Option<Arc<dyn FileMethods>>,
    /// Which engine methods clients may call.
    pub policy: Policy,
    /// Where client-given paths must point.
    pub files_dir: FilesDir,
    /// `PRIVITTY_RPC_MAX_RESPONSE`: a single call's budget.
    pub max_response: usize,
    pub metrics: Arc<Metrics>,
    /// The license status last published on `/events`, for each new connection's snapshot.
    pub license_events: Arc<LicenseEvents>,
    /// The peer protocol, once started (absent in tests that run without an engine account).
    pub peer: Option<Peer>,
}

/// Where a call goes (see [`Service::route`]).
enum Route {
    /// edged's own method (`privitty_license_status`).
    Own,
    /// The Privitty file module.
    Files(Arc<dyn FileMethods>),
    /// The peer protocol (its methods include the file methods, which then also grant).
    Peer(Peer),
    /// The engine, with these params confined to the files directory.
    Engine(Option<&'static [PathArg]>),
    /// Answered without running: method not found, or denied by the policy.
    Refused(Class, RpcError),
}

impl Service {
    /// Runs one call to its outcome; its answer must fit in `budget` (a batch shares one), or in
    /// a budget of its own when `None`. `work` is held until the call no longer needs this
    /// generation's engine connection, lock or agents: an engine call drops it once its line is
    /// queued, everything else when it is done (see [`crate::work`]).
    pub async fn call(
        &self,
        method: &str,
        params: Vec<Value>,
        budget: Option<Arc<Budget>>,
        work: Option<Ticket>,
    ) -> Outcome {
        let licensed = match gate::check(method, &*self.license, SystemTime::now()) {
            Ok(licensed) => licensed,
            Err(e) => {
                // Answered before the call starts: counted, not timed.
                self.metrics
                    .record_call(Class::Gated, method, Err(&e), false, None);
                return Err(e);
            }
        };
        // Long polls wait for something to happen: their time says nothing about the service.
        let started =
            (self.metrics.recording() && !LONG_POLL_METHODS.contains(&method)).then(Instant::now);
        let (class, outcome) = self.run(method, params, budget, work).await;
        if licensed && outcome.is_ok() {
            self.license.record_use(method);
        }
        let result = outcome.as_ref().map(|_| ());
        self.metrics
            .record_call(class, method, result, licensed, started);
        outcome
    }

    /// Where a call to `method` goes once the gate let it through: the one routing decision that
    /// running a call, classifying it for the metrics and refusing bad params all follow.
    fn route(&self, method: &str) -> Route {
        if method == LICENSE_STATUS_METHOD {
            return Route::Own;
        }
        if let Some(peer) = self.peer.as_ref().filter(|_| Peer::has(method)) {
            return Route::Peer(peer.clone());
        }
        if let Some(files) = self.files.as_ref().filter(|f| f.has(method)) {
            return Route::Files(files.clone());
        }
        if method.starts_with(gate::PRIVITTY_PREFIX) {
            return Route::Refused(Class::Gated, RpcError::method_not_found(method));
        }
        match self.policy.decide(method) {
            Decision::Unknown => Route::Refused(Class::Unknown, RpcError::method_not_found(method)),
            Decision::Denied(e) => Route::Refused(Class::Denied, e),
            Decision::Run(paths) => Route::Engine(paths),
        }
    }

    /// A call the gate let through.
    async fn run(
        &self,
        method: &str,
        params: Vec<Value>,
        budget: Option<Arc<Budget>>,
        work: Option<Ticket>,
    ) -> (Class, Outcome) {
        match self.route(method) {
            Route::Own => {
                let status = json!(self.license.evaluate(SystemTime::now()));
                (Class::Edged, Ok(status))
            }
            Route::Refused(class, e) => (class, Err(e)),
            Route::Files(files) => {
                let paths = policy::PRIVITTY_PATHS
                    .iter()
                    .find(|(m, _)| *m == method)
                    .map(|(_, p)| *p);
                let outcome = match self.confine(method, params, paths).await {
                    Ok(params) => self.call_files(files, method, params).await,
                    Err(e) => Err(e),
                };
                (Class::Gated, outcome)
            }
            Route::Peer(peer) => {
                let paths = policy::PRIVITTY_PATHS
                    .iter()
                    .find(|(m, _)| *m == method)
                    .map(|(_, p)| *p);
                let outcome = match self.confine(method, params, paths).await {
                    Ok(params) => peer.call_method(method, params).await,
                    Err(e) => Err(e),
                };
                (Self::peer_class(method), outcome)
            }
            Route::Engine(_) if let Err(e) = self.policy.check_settings(method, &params) => {
                (Class::Denied, Err(e))
            }
            Route::Engine(_)
                if let Some(peer) = self.peer.as_ref().filter(|_| method == FORWARD_METHOD)
                    && let Err(e) = peer.check_forward(&params).await =>
            {
                (Class::Denied, Err(e))
            }
            Route::Engine(paths) => match self.confine(method, params, paths).await {
                Ok(params) => {
                    let budget = budget.unwrap_or_else(|| Budget::new(self.max_response));
                    let answer = self
                        .engine
                        .call_holding(method, &params, Some(budget), work)
                        .await
                        .map_err(|e| e.to_rpc());
                    (Class::Engine, answer)
                }
                Err(e) => (Class::Engine, Err(e)),
            },
        }
    }

    /// A peer method's class: gated when it needs a license, edged's own when it only reads.
    fn peer_class(method: &str) -> Class {
        match gate::access(method) {
            gate::Access::Licensed => Class::Gated,
            gate::Access::Open => Class::Edged,
        }
    }

    /// The class of a call to `method`, without running it (for requests refused before they run).
    pub fn class_of(&self, method: &str) -> Class {
        if gate::access(method) == gate::Access::Licensed {
            return Class::Gated;
        }
        match self.route(method) {
            Route::Own => Class::Edged,
            Route::Files(_) => Class::Gated,
            Route::Peer(_) => Self::peer_class(method),
            Route::Engine(_) => Class::Engine,
            Route::Refused(class, _) => class,
        }
    }

    /// The error of a call whose params are not positional: the gate's, "method not found" or the
    /// policy's denial when one applies (see [`Service::precheck`]), else `error`; counted in the
    /// metrics.
    pub fn refuse_bad_params(&self, method: &str, error: RpcError) -> RpcError {
        let error = self.precheck(method).unwrap_or(error);
        self.metrics
            .record_call(self.class_of(method), method, Err(&error), false, None);
        error
    }

    /// The error a call to `method` gets before its params are looked at: the gate's, "method not
    /// found", or the policy's denial. `None` when the method would run.
    pub fn precheck(&self, method: &str) -> Option<RpcError> {
        if let Err(e) = gate::check(method, &*self.license, SystemTime::now()) {
            return Some(e);
        }
        match self.route(method) {
            Route::Refused(_, e) => Some(e),
            Route::Own | Route::Files(_) | Route::Peer(_) | Route::Engine(_) => None,
        }
    }

    /// Resolves a call's path params inside the files directory (off the async runtime: it
    /// stats the file system).
    async fn confine(
        &self,
        method: &str,
        mut params: Vec<Value>,
        paths: Option<&'static [PathArg]>,
    ) -> Result<Vec<Value>, RpcError> {
        let Some(paths) = paths else {
            return Ok(params);
        };
        let files = self.files_dir.clone();
        let name = method.to_string();
        tokio::task::spawn_blocking(move || {
            policy::confine(&name, paths, &mut params, &files).map(|()| params)
        })
        .await
        .unwrap_or_else(|e| {
            Err(RpcError::internal(format!(
                "checking the paths of {method} failed inside privitty-edged: {e}"
            )))
        })
    }

    /// [`Service::call`], except that a long poll ([`LONG_POLL_METHODS`]) still waiting when
    /// `stop` turns true is answered with an error saying edged is stopping.
    pub async fn call_until_stop(
        &self,
        method: &str,
        params: Vec<Value>,
        budget: Option<Arc<Budget>>,
        work: Option<Ticket>,
        mut stop: watch::Receiver<bool>,
    ) -> Outcome {
        if !LONG_POLL_METHODS.contains(&method) {
            return self.call(method, params, budget, work).await;
        }
        tokio::select! {
            outcome = self.call(method, params, budget, work) => outcome,
            _ = crate::stopped(&mut stop) => Err(RpcError::internal(format!(
                "privitty-edged is stopping, so {method} ends without a result; call it again once the service is back"
            ))),
        }
    }

    async fn call_files(
        &self,
        files: Arc<dyn FileMethods>,
        method: &str,
        params: Vec<Value>,
    ) -> Outcome {
        let name = method.to_string();
        let joined = tokio::task::spawn_blocking(move || files.call(&name, &params)).await;
        match joined {
            Ok(Some(Ok(out))) => {
                for ev in &out.events {
                    self.hub.publish(ev);
                }
                Ok(out.result)
            }
            Ok(Some(Err(e))) => Err(e),
            Ok(None) => Err(RpcError::method_not_found(method)),
            Err(e) => {
                tracing::error!(method, error = %e, "file method panicked");
                Err(RpcError::internal(format!(
                    "{method} failed inside privitty-edged; see its log"
                )))
            }
        }
    }
}

impl FileMethods for crate::privitty::Privitty {
    fn has(&self, method: &str) -> bool {
        Self::METHODS.contains(&method)
    }

    fn call(&self, method: &str, params: &[Value]) -> Option<Result<FileOutcome, RpcError>> {
        crate::privitty::Privitty::call(self, method, params).map(|r| {
            r.map(|o| FileOutcome {
                result: o.result,
                events: o.events,
            })
            .map_err(|e| RpcError::new(e.rpc_code(), e.to_string()))
        })
    }
}
