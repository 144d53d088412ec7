//! The HTTP/1.1 server: routes (`POST /rpc`, `GET /events`, `GET /health`, `GET /metrics`, and the
//! viewer's `POST /auth` and `GET /stream/:msg_id`), limits, CORS, and the graceful stop of
//! connections.
//!
//! Owns: the accept loop with its connection cap, the connections the previous generation hands
//! over (served like accepted ones) and the hand-over of this generation's connections when it
//! stops (at a request boundary, with the bytes read ahead; see [`crate::handover`]), (excess connections wait in the kernel backlog:
//! they are never refused), header/idle and body timeouts, the 1 MiB body cap, the batch and SSE
//! client caps, the order of the checks on a request (`/health`; then the Host; then `/metrics`,
//! which asks for the token only with `PRIVITTY_METRICS_AUTH=token`; then `/stream/…`, which
//! carries the viewer's token instead of the API token; then the API token; then the route), the
//! HTTP status of each JSON-RPC answer (200, or 204 when there is nothing to return).
//! Must not: know what a method does (that is [`crate::service`]), how a token is checked
//! ([`crate::auth`]), what the metrics are ([`crate::metrics`]), or what the viewer does
//! ([`crate::viewer`]).
//!
//! Trust boundary: every byte from a connection is hostile until [`crate::auth`] passed it; only
//! `/health`, unless `PRIVITTY_METRICS_AUTH=token` `/metrics` (which tell nothing secret), and
//! `/stream/…` (which [`crate::viewer`] checks against the viewer session) answer before that.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::auth::{Authenticator, Cors, HostCheck, MetricsAuth, Verdict};
use crate::config::MAX_BODY_BYTES;
use crate::engine::Budget;
use crate::handover;
use crate::rpc::{self, Body, Item, RpcError};
use crate::service::Service;
use crate::viewer::{STREAM_PREFIX, Viewer, ViewerBody};
use crate::work::{Ticket, WorkGate};

/// Why a response body ended before it was complete (the connection is then cut, so the client
/// never takes a partial body for a whole one).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;
pub type ResponseBody = BoxBody<Bytes, BodyError>;

/// The limits and switches of the HTTP side.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    pub cors: Cors,
    pub auth: Arc<Authenticator>,
    /// Whether `/metrics` asks for the token.
    pub metrics_auth: MetricsAuth,
    pub host: HostCheck,
    pub max_batch: usize,
    pub max_response: usize,
    pub sse_max_clients: usize,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub sse_ping_interval: Duration,
    pub stop_timeout: Duration,
    /// The viewer session and its streams.
    pub viewer: Arc<Viewer>,
    /// The work gate a swap closes before the engine goes: every request takes a ticket when
    /// hyper hands it over, and once the gate is closed a request is not started here but passed,
    /// unanswered, to the next generation ("requeue").
    pub work: Arc<WorkGate>,
}

/// What answers requests once this generation has it: `None` while it starts (it waits for the
/// data-directory lock and the engine), `Some` from then on; the sender gone without a service
/// means the start-up failed. Connections handed over by the previous generation are taken while
/// it is `None`, and served once it is set.
pub type ServiceSlot = watch::Receiver<Option<Arc<Service>>>;

/// Shared by every connection.
#[derive(Debug)]
struct Shared {
    service: ServiceSlot,
    config: HttpConfig,
    /// Turns true at shutdown: ends SSE streams and asks connections to close.
    stop: watch::Receiver<bool>,
    /// Turns true at the stop deadline: connections still open are dropped.
    kill: watch::Receiver<bool>,
    requests: AtomicU64,
    /// Where this generation's connections go when it stops (the next generation reads them):
    /// `None` without privitty-init (standalone, tests), or when the pair could not be used.
    handover: Option<handover::Sender>,
    /// One per `/events` client, fewer than connection permits so other routes keep a slot.
    sse_slots: Arc<Semaphore>,
}

/// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish, ends SSE
/// streams and returns once every connection closed (or `stop_timeout` passed).
///
/// Connections the previous generation hands over are taken at once, even before `service` is set,
/// so that a swap's hand-over overlaps this generation's start-up; they are served once it is set.
/// New connections are accepted only then (until then they wait in the kernel backlog, where a
/// generation that fails to start cannot lose them). `taken_early` counts the connections handed
/// over before the service was set.
pub async fn serve(
    listener: TcpListener,
    service: ServiceSlot,
    config: HttpConfig,
    taken_early: Arc<AtomicU64>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop) = watch::channel(false);
    let (kill_tx, kill) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let max = config.max_connections;
    let stop_timeout = config.stop_timeout;
    let (sender, receiver) = match crate::host::take_handover() {
        Some(fds) => {
            let sender = handover::Sender::new(fds.send)
                .inspect_err(|e| tracing::warn!(error = %e, "connection hand-over unavailable"))
                .ok();
            let receiver = handover::Receiver::new(fds.recv)
                .inspect_err(|e| tracing::warn!(error = %e, "connection hand-over unavailable"))
                .ok();
            (sender, receiver)
        }
        None => (None, None),
    };
    if sender.is_some() {
        config.work.requeue_possible();
    }
    let shared = Arc::new(Shared {
        service,
        sse_slots: Arc::new(Semaphore::new(config.sse_max_clients)),
        config,
        stop,
        kill,
        requests: AtomicU64::new(0),
        handover: sender,
    });
    // Connections the previous generation hands over are served like accepted ones, until this
    // generation stops in turn (it must not take back what it hands over itself).
    if let Some(mut receiver) = receiver {
        let (shared, permits) = (shared.clone(), permits.clone());
        let taken_early = taken_early.clone();
        tokio::spawn(async move {
            let mut stop = shared.stop.clone();
            loop {
                let handed = tokio::select! {
                    biased;
                    _ = crate::stopped(&mut stop) => break,
                    h = receiver.recv() => h,
                };
                let handed = match handed {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::warn!(error = %e, "no more connection hand-overs");
                        break;
                    }
                };
                // Taken: it is served (or, once this generation stops, handed on), never dropped.
                let permit = permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("semaphore is never closed");
                let stream = handed
                    .stream
                    .set_nonblocking(true)
                    .and_then(|()| tokio::net::TcpStream::from_std(handed.stream));
                let stream = match stream {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "a handed-over connection cannot be served");
                        continue;
                    }
                };
                // `TCP_NODELAY` is the socket's own: the generation that accepted it set it.
                if shared.service.borrow().is_none() {
                    taken_early.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(peer = %handed.peer, buffered = handed.buffered.len(), "serving a handed-over connection");
                let shared = shared.clone();
                let io = handover::Prefixed::new(handed.buffered, stream);
                // Every line logged while serving it names the connection.
                let span = tracing::debug_span!("conn", peer = %handed.peer, handed = true);
                tokio::spawn(tracing::Instrument::instrument(
                    async move {
                        serve_connection(io, handed.peer, shared).await;
                        drop(permit);
                    },
                    span,
                ));
            }
        });
    }
    tokio::pin!(shutdown);
    // Accepting starts once there is a service to answer with.
    let mut slot = shared.service.clone();
    let startable = tokio::select! {
        s = slot.wait_for(Option::is_some) => s.is_ok(),
        _ = &mut shutdown => false,
    };
    if startable {
        loop {
            // Taking a permit before accepting keeps excess connections in the kernel backlog.
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
                _ = &mut shutdown => break,
            };
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        // EMFILE and friends: pause instead of spinning; the connection waits in the backlog.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let shared = shared.clone();
            let span = tracing::debug_span!("conn", %peer);
            tokio::spawn(tracing::Instrument::instrument(
                async move {
                    serve_connection(handover::Prefixed::new(Vec::new(), stream), peer, shared)
                        .await;
                    drop(permit);
                },
                span,
            ));
        }
    }
    drop(listener);
    if startable {
        tracing::info!("stopping: no new connections; finishing in-flight requests");
    } else {
        tracing::info!("stopping before serving: connections taken over are handed on unread");
    }
    let _ = stop_tx.send(true);
    let all_closed = permits.acquire_many(max as u32);
    if tokio::time::timeout(stop_timeout, all_closed)
        .await
        .is_err()
    {
        tracing::warn!(
            ?stop_timeout,
            "connections still open at the stop deadline; closing them"
        );
        let _ = kill_tx.send(true);
    }
}

/// The request handler of one connection: boxed, so the connection is `Unpin` and can be taken
/// back from hyper (`into_parts`) for a hand-over.
type Handler =
    std::pin::Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

async fn serve_connection(
    io: handover::Prefixed<tokio::net::TcpStream>,
    peer: std::net::SocketAddr,
    shared: Arc<Shared>,
) {
    let mut stop = shared.stop.clone();
    let mut kill = shared.kill.clone();
    // A connection handed over while this generation starts waits here, unread, for the service.
    let service = {
        let mut slot = shared.service.clone();
        tokio::select! {
            biased;
            s = slot.wait_for(Option::is_some) => s.ok().and_then(|s| s.clone()),
            _ = crate::stopped(&mut stop) => None,
        }
    };
    let Some(service) = service else {
        // Stopped (or failed) before serving: nothing of it was read here, so it goes on to the
        // next generation exactly as it came, with the bytes read ahead before.
        let (stream, buffered) = io.into_parts();
        hand_on_or_close(&shared, stream, peer, &buffered, Ok(())).await;
        return;
    };
    // A connection accepted just before a stop has usually had its request sent already, but a
    // graceful shutdown closes a connection of which hyper has read nothing yet, unanswered. So
    // without a hand-over a connection waits for its first request before it is shut.
    let first_request = Arc::new(FirstRequest::default());
    // Requests whose response is not completely written yet: a hand-over waits for none (a
    // request boundary), so hyper does not answer them with `Connection: close`. A connection
    // hyper ends after an answer for the client's sake (see `Active::ends`) is closed, not
    // handed over.
    let active = Arc::new(Active::default());
    let svc_shared = shared.clone();
    let svc_first = first_request.clone();
    let svc_active = active.clone();
    let svc = hyper::service::service_fn(move |req| -> Handler {
        svc_first.arrived();
        let shared = svc_shared.clone();
        let service = service.clone();
        let guard = ActiveGuard::new(svc_active.clone());
        let requeue_to = svc_active.clone();
        // Whether hyper ends the connection after this request's answer: it asked to, or its
        // body is left unread (see `RequestBody`). (One that came after the graceful shutdown
        // began is answered with `Connection: close` too; it is handed over all the same, so a
        // client that keeps using it is served on. The client asked for nothing else.)
        let ends = asks_to_close(&req);
        svc_active.ends.store(false, Ordering::Release);
        let req = req.map(|inner| RequestBody {
            inner,
            ended: false,
            active: svc_active.clone(),
        });
        Box::pin(async move {
            let resp = match route(req, shared, service).await {
                Ok(resp) => {
                    if ends {
                        requeue_to.ends.store(true, Ordering::Release);
                    }
                    resp
                }
                Err(Requeue(request)) => {
                    // Nothing of it was answered: the connection goes to the next generation now
                    // with this request first (see `serve_connection`); this one answers never.
                    requeue_to.requeue(request);
                    return std::future::pending().await;
                }
            };
            // The guard lives as long as the body: hyper drops the body once it wrote it.
            Ok::<_, Infallible>(resp.map(move |body| {
                BoxBody::new(Guarded {
                    inner: body,
                    _guard: guard,
                })
            }))
        })
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // hyper starts this timer whenever it waits for a request's head, so it also closes idle
        // keep-alive connections.
        .header_read_timeout(shared.config.header_timeout)
        .keep_alive(true);
    let mut conn = builder.serve_connection(TokioIo::new(io), svc);
    // Served until the client or hyper ends it, or until this generation stops.
    let ended = {
        let serving = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx));
        tokio::select! {
            r = serving => Some(r),
            _ = crate::stopped(&mut stop) => None,
        }
    };
    if let Some(result) = ended {
        // hyper left the socket open (`poll_without_shutdown`): close it as it would have.
        close(conn.into_parts().io.into_inner(), peer, result).await;
        return;
    }
    if shared.handover.is_some() {
        // Finish what is in flight, then hand over between two requests.
        loop {
            let notified = active.notify.notified();
            if let Some(request) = active.requeued() {
                hand_on_requeued(conn.into_parts(), request, &shared, peer).await;
                return;
            }
            if active.idle() {
                break;
            }
            let serving = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx));
            tokio::select! {
                r = serving => {
                    close(conn.into_parts().io.into_inner(), peer, r).await;
                    return;
                }
                _ = notified => {}
                _ = crate::stopped(&mut kill) => return,
            }
        }
    } else if !first_request.seen() {
        let serving = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx));
        tokio::select! {
            r = serving => {
                close(conn.into_parts().io.into_inner(), peer, r).await;
                return;
            }
            _ = first_request.wait() => {}
            _ = tokio::time::sleep(shared.config.header_timeout) => {}
            _ = crate::stopped(&mut kill) => return,
        }
    }
    // In-flight requests are answered first; then hyper gives the connection back, with any bytes
    // it read ahead (a pipelined request, the first half of one).
    std::pin::Pin::new(&mut conn).graceful_shutdown();
    let drained = loop {
        // hyper closes at once only a connection that has answered a request or read nothing.
        // One whose first request has begun to arrive (a connection accepted, or handed over,
        // with half a head) goes on to that request: after the engine went, it is requeued here
        // and the connection handed on with it, or it would wait for the kill.
        let notified = active.notify.notified();
        if let Some(request) = active.requeued() {
            hand_on_requeued(conn.into_parts(), request, &shared, peer).await;
            return;
        }
        let serving = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx));
        tokio::select! {
            r = serving => break r,
            _ = notified => {}
            // Dropping the connection closes it.
            _ = crate::stopped(&mut kill) => return,
        }
    };
    let parts = conn.into_parts();
    let (stream, rest) = parts.io.into_inner().into_parts();
    if active.ends.load(Ordering::Acquire) {
        // hyper ended it after its last answer: closed, as it would have been without a stop.
        // Handed over, the next generation would wait for a request the client will not send,
        // or read the rest of an unread body as one.
        close(handover::Prefixed::new(Vec::new(), stream), peer, drained).await;
        return;
    }
    let mut buffered = parts.read_buf.to_vec();
    buffered.extend_from_slice(&rest);
    hand_on_or_close(&shared, stream, peer, &buffered, drained).await;
}

/// Passes a connection to the next generation with a request this generation did not start:
/// hyper has written nothing for it, so the next generation reads it first, then what hyper read
/// after it.
async fn hand_on_requeued<S>(
    parts: hyper::server::conn::http1::Parts<TokioIo<handover::Prefixed<tokio::net::TcpStream>>, S>,
    request: Vec<u8>,
    shared: &Shared,
    peer: std::net::SocketAddr,
) {
    let (stream, rest) = parts.io.into_inner().into_parts();
    let mut buffered = request;
    buffered.extend_from_slice(&parts.read_buf);
    buffered.extend_from_slice(&rest);
    hand_on_or_close(shared, stream, peer, &buffered, Ok(())).await;
}

/// Passes a connection hyper is not (or no longer) serving to the next generation, with the bytes
/// read ahead of it; without a hand-over, after a failed drain, or when the hand-over fails, closes
/// it.
async fn hand_on_or_close(
    shared: &Shared,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    buffered: &[u8],
    drained: Result<(), hyper::Error>,
) {
    if let (Ok(()), Some(sender)) = (&drained, &shared.handover) {
        match sender.send(&stream, peer, buffered) {
            // Our copy closes when `stream` drops; the connection lives on in the next generation.
            Ok(()) => return,
            Err(e) => tracing::warn!(%peer, error = %e, "connection not handed over; closing it"),
        }
    }
    close(handover::Prefixed::new(Vec::new(), stream), peer, drained).await;
}

/// The requests of one connection whose response is still being produced or written.
#[derive(Debug, Default)]
struct Active {
    count: std::sync::atomic::AtomicUsize,
    notify: tokio::sync::Notify,
    /// A request not started here, as bytes for the next generation (see [`Requeue`]).
    requeue: std::sync::Mutex<Option<Vec<u8>>>,
    /// hyper ends the connection after the answer to the latest request (which then is no
    /// request boundary to hand over at).
    ends: std::sync::atomic::AtomicBool,
}

/// Whether a request asks for its connection to end with its answer (HTTP/1.1 `Connection:
/// close`; HTTP/1.0 without `Connection: keep-alive`), as hyper reads it.
fn asks_to_close<B>(req: &Request<B>) -> bool {
    let has = |token: &str| {
        req.headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if req.version() == http::Version::HTTP_10 {
        !has("keep-alive")
    } else {
        has("close")
    }
}

/// A request's body as the handlers get it: hyper's, noting whether it was read to its end.
/// hyper ends a connection whose request was answered with the body left unread (unless the rest
/// had already arrived, which cannot be told from here): the rest may still be on its way, and
/// the next generation would read it as a request of its own. Its drop tells the connection.
pub(crate) struct RequestBody {
    inner: Incoming,
    ended: bool,
    active: Arc<Active>,
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let frame = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(None) = frame {
            self.ended = true;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if !hyper::body::Body::is_end_stream(self) {
            self.active.ends.store(true, Ordering::Release);
        }
    }
}

impl Active {
    fn idle(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }

    fn requeue(&self, request: Vec<u8>) {
        *self.requeue.lock().expect("requeue lock") = Some(request);
        self.notify.notify_one();
    }

    fn requeued(&self) -> Option<Vec<u8>> {
        self.requeue.lock().expect("requeue lock").take()
    }
}

/// One request in flight; its drop (with the response body) may make the connection idle.
struct ActiveGuard(Arc<Active>);

impl ActiveGuard {
    fn new(active: Arc<Active>) -> ActiveGuard {
        active.count.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(active)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            // notify_one keeps a permit when nobody waits yet: the wake-up is not lost.
            self.0.notify.notify_one();
        }
    }
}

/// A response body that keeps its request counted as in flight until hyper drops it; length and
/// end are the inner body's (so `Content-Length` stays).
struct Guarded {
    inner: ResponseBody,
    _guard: ActiveGuard,
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BodyError>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Ends a connection hyper is done with: a FIN after everything written, as hyper's own shutdown.
async fn close(
    mut io: handover::Prefixed<tokio::net::TcpStream>,
    peer: std::net::SocketAddr,
    result: Result<(), hyper::Error>,
) {
    use tokio::io::AsyncWriteExt;
    let _ = io.shutdown().await;
    log_end(peer, result);
}

fn log_end(peer: std::net::SocketAddr, result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Whether a connection has started serving its first request.
#[derive(Debug, Default)]
struct FirstRequest {
    seen: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl FirstRequest {
    fn arrived(&self) {
        if !self.seen.swap(true, Ordering::AcqRel) {
            self.notify.notify_one();
        }
    }

    fn seen(&self) -> bool {
        self.seen.load(Ordering::Acquire)
    }

    async fn wait(&self) {
        // notify_one stores a permit when nobody waits yet, so an arrival between `seen()` and
        // this call is not lost.
        self.notify.notified().await;
    }
}

/// A request this generation does not start because its engine went to the next generation (the
/// work gate is closed): the request's bytes, made again from what hyper parsed (method, target,
/// version, headers, and the body read whole, with `Content-Length`), for the next generation to
/// read before anything else of the connection.
struct Requeue(Vec<u8>);

async fn route(
    req: Request<RequestBody>,
    shared: Arc<Shared>,
    service: Arc<Service>,
) -> Result<Response<ResponseBody>, Requeue> {
    let config = &shared.config;
    let Some(work) = config.work.enter() else {
        return requeue(req, config).await;
    };
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_string);
    let allowed_origin = match config.cors {
        // `*` is the same for every request, with or without an Origin.
        Cors::Any => Some("*".to_string()),
        _ => config.cors.allow(origin.as_deref()),
    };
    let path = req.uri().path();
    // /health first: probes use whatever address they reach, and it tells nothing secret.
    let mut resp = if path == "/health" && req.method() == Method::GET {
        health(&shared, &service)
    } else if !config.host.allows(req.headers()) {
        misdirected()
    } else if req.method() == Method::OPTIONS && config.cors.enabled() {
        preflight()
    } else if path == "/metrics" {
        let refused = match config.metrics_auth {
            MetricsAuth::Open => None,
            MetricsAuth::Token => check_token(&req, config),
        };
        match refused {
            Some(refused) => refused,
            None if req.method() == Method::GET => metrics(&service).await,
            None => not_allowed("GET"),
        }
    } else if path.starts_with(STREAM_PREFIX) {
        // The viewer's own token, not the API token: the viewer checks it.
        match *req.method() {
            Method::GET => {
                let resp = config.viewer.stream(&req, &service).await;
                drop(work);
                viewer(resp)
            }
            _ => not_allowed("GET"),
        }
    } else if let Some(refused) = check_token(&req, config) {
        refused
    } else {
        match (req.method(), path) {
            (&Method::POST, "/rpc") if origin.is_some() && allowed_origin.is_none() => {
                from_a_web_page(config.cors.enabled())
            }
            (&Method::POST, "/rpc") => rpc_request(req, &shared, &service, work).await,
            (&Method::POST, "/auth") if origin.is_some() && allowed_origin.is_none() => {
                json_status(
                    StatusCode::FORBIDDEN,
                    &json!({"error": "requests from web pages (with an Origin header) are refused unless the page's origin is in --cors / PRIVITTY_CORS"}),
                )
            }
            (&Method::POST, "/auth") => {
                let resp = config.viewer.auth(req).await;
                drop(work);
                viewer(resp)
            }
            (&Method::GET, "/events") => events(&shared, &service),
            (_, "/rpc" | "/auth") => not_allowed("POST"),
            (_, "/health" | "/events") => not_allowed("GET"),
            (_, path) => json_status(
                StatusCode::NOT_FOUND,
                &json!({"error": format!("no such endpoint: {path}; use POST /rpc, GET /events, GET /health, GET /metrics, POST /auth or GET /stream/<msg_id>")}),
            ),
        }
    };
    if let Some(allowed) = allowed_origin {
        let headers = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&allowed) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        }
        if config.cors != Cors::Any {
            headers.insert(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
    Ok(resp)
}

/// [`Requeue`]s `req`, or answers it when that cannot be done: its body could not be read (the
/// usual answer to that), or the request is too big to travel with its connection.
async fn requeue(
    req: Request<RequestBody>,
    config: &HttpConfig,
) -> Result<Response<ResponseBody>, Requeue> {
    let (parts, body) = req.into_parts();
    let body = match read_body(&parts.headers, body, config).await {
        Ok(body) => body,
        Err(refused) => return Ok(refused),
    };
    let request = request_bytes(&parts, &body);
    if request.len() > handover::MAX_BUFFERED {
        tracing::warn!(
            bytes = request.len(),
            "a request that came during a swap is too big to pass to the next generation; answered 503"
        );
        let mut resp = json_status(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": format!(
                "privitty-edged was handing over to a new generation (license change) when this {} byte request came, and a request that big cannot follow its connection; send it again",
                request.len()
            )}),
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Ok(resp);
    }
    tracing::debug!(
        bytes = request.len(),
        "request passed on unanswered to the next generation"
    );
    Err(Requeue(request))
}

/// A request as HTTP/1.1 bytes again: request line, the headers as they came (but the body's
/// framing, and `Expect`, which was answered already), `Content-Length`, the body.
fn request_bytes(parts: &http::request::Parts, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(512 + body.len());
    let version = if parts.version == http::Version::HTTP_10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    out.extend_from_slice(format!("{} {} {version}\r\n", parts.method, parts.uri).as_bytes());
    let framed = parts.headers.contains_key(header::CONTENT_LENGTH)
        || parts.headers.contains_key(header::TRANSFER_ENCODING);
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::EXPECT
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if framed || !body.is_empty() {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// `Some(401)` when the request does not carry the token it needs.
fn check_token<B>(req: &Request<B>, config: &HttpConfig) -> Option<Response<ResponseBody>> {
    let problem = match config.auth.check(req.headers()) {
        Verdict::Pass => return None,
        Verdict::Missing => {
            "this endpoint needs the API token: send `Authorization: Bearer <token>`"
        }
        Verdict::Wrong => "the API token is wrong (or was rotated): send the current one",
    };
    let mut r = json_status(
        StatusCode::UNAUTHORIZED,
        &json!({"error": format!(
            "{problem}; print it with `privitty-edge api-token` (docker exec <container> privitty-edge api-token)"
        )}),
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"privitty-edged\""),
    );
    Some(r)
}

/// A Host header that does not name this gateway: a page on another name that resolves to the
/// loopback address (DNS rebinding).
fn misdirected() -> Response<ResponseBody> {
    json_status(
        StatusCode::MISDIRECTED_REQUEST,
        &json!({"error": "the Host header does not name this gateway; use http://127.0.0.1:<port> or http://localhost:<port>, or add the name to PRIVITTY_ALLOWED_HOSTS"}),
    )
}

fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// A viewer response as the server sends it (a stream's error cuts the connection).
fn viewer(resp: Response<ViewerBody>) -> Response<ResponseBody> {
    resp.map(|body| body.map_err(BodyError::from).boxed())
}

fn json_text(status: StatusCode, text: String) -> Response<ResponseBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(text))
        .expect("valid response")
}

fn json_status(status: StatusCode, value: &Value) -> Response<ResponseBody> {
    json_text(status, value.to_string())
}

fn no_content() -> Response<ResponseBody> {
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(full(Bytes::new()))
        .expect("valid response")
}

fn not_allowed(allow: &'static str) -> Response<ResponseBody> {
    let mut r = json_status(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({"error": format!("method not allowed; use {allow}")}),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

fn preflight() -> Response<ResponseBody> {
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .header(header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST, OPTIONS")
        .header(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            "content-type, authorization, range",
        )
        .header(header::ACCESS_CONTROL_MAX_AGE, "600")
        .body(full(Bytes::new()))
        .expect("valid response")
}

/// The `/health` body: the documented fields first, then what monitoring may use.
#[derive(serde::Serialize)]
struct Health {
    status: &'static str,
    service: &'static str,
    version: &'static str,
    license: licensectl::Evaluation,
    engine: EngineHealth,
    sse_clients: usize,
    requests: u64,
}

#[derive(serde::Serialize)]
struct EngineHealth {
    running: bool,
    restarts: u64,
}

fn health(shared: &Shared, service: &Service) -> Response<ResponseBody> {
    let body = Health {
        status: "ok",
        service: "privitty-edged",
        version: env!("CARGO_PKG_VERSION"),
        license: service.license.evaluate(SystemTime::now()),
        engine: EngineHealth {
            running: service.engine.pid().is_some(),
            restarts: service.engine.restarts(),
        },
        sse_clients: service.hub.clients(),
        requests: shared.requests.load(Ordering::Relaxed),
    };
    json_text(
        StatusCode::OK,
        serde_json::to_string(&body).expect("health serializes"),
    )
}

/// The Prometheus scrape: read from memory (and at most once a second from the data directory's
/// sync records), never from the engine.
async fn metrics(service: &Service) -> Response<ResponseBody> {
    let text = service.metrics.render().await;
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)
        .body(full(text))
        .expect("valid response")
}

fn events(shared: &Shared, service: &Service) -> Response<ResponseBody> {
    let Ok(slot) = shared.sse_slots.clone().try_acquire_owned() else {
        let mut r = json_status(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": format!(
                "{} /events clients are connected already (PRIVITTY_SSE_MAX_CLIENTS); close one or raise the limit",
                shared.config.sse_max_clients
            )}),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return r;
    };
    let license = service.license_events.clone();
    let body = crate::events::sse_body(
        &service.hub,
        move || license.greeting(),
        shared.config.sse_ping_interval,
        shared.stop.clone(),
        slot,
    )
    .map_err(|never: Infallible| match never {})
    .boxed();
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .expect("valid response")
}

fn rpc_error_response(status: StatusCode, error: RpcError) -> Response<ResponseBody> {
    json_text(status, rpc::response(&rpc::null_id(), &Err(error)))
}

/// A browser delivers a cross-site form or `fetch` POST without a preflight when its content type
/// is a form type, and hides only the answer: without this, any web page open on the gateway's
/// host could run methods (join a chat, send files). Browsers always name the page's origin on a
/// POST; scripts and the CLI send no `Origin`.
fn from_a_web_page(cors_on: bool) -> Response<ResponseBody> {
    let message = if cors_on {
        "requests from this web page's origin are refused: it is not in the --cors / PRIVITTY_CORS list"
    } else {
        "requests from web pages (with an Origin header) are refused while CORS is off; \
         start privitty-edged with --cors <origins> to let those pages call /rpc"
    };
    rpc_error_response(
        StatusCode::FORBIDDEN,
        RpcError::new(rpc::INVALID_REQUEST, message),
    )
}

fn too_large() -> Response<ResponseBody> {
    rpc_error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        RpcError::new(
            rpc::INVALID_REQUEST,
            format!(
                "request body exceeds {MAX_BODY_BYTES} bytes; send smaller requests or split the batch"
            ),
        ),
    )
}

/// A request's body, whole, within the size cap and the body timeout; else the answer to that.
async fn read_body(
    headers: &http::HeaderMap,
    body: RequestBody,
    config: &HttpConfig,
) -> Result<Bytes, Response<ResponseBody>> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let collect = Limited::new(body, MAX_BODY_BYTES).collect();
    match tokio::time::timeout(config.body_timeout, collect).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "reading a request body failed");
            Err(rpc_error_response(
                StatusCode::BAD_REQUEST,
                RpcError::new(rpc::INVALID_REQUEST, "the request body could not be read"),
            ))
        }
        Err(_) => Err(rpc_error_response(
            StatusCode::REQUEST_TIMEOUT,
            RpcError::new(
                rpc::INVALID_REQUEST,
                format!(
                    "the request body did not arrive within {:?}",
                    config.body_timeout
                ),
            ),
        )),
    }
}

async fn rpc_request(
    req: Request<RequestBody>,
    shared: &Arc<Shared>,
    service: &Arc<Service>,
    work: Ticket,
) -> Response<ResponseBody> {
    let (parts, body) = req.into_parts();
    let body = match read_body(&parts.headers, body, &shared.config).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    match rpc::parse(&body) {
        Body::Broken(err) => {
            service.metrics.record_invalid();
            json_text(StatusCode::OK, rpc::response(&rpc::null_id(), &Err(err)))
        }
        Body::Single(Item::Invalid { id, error }) => {
            service.metrics.record_invalid();
            json_text(StatusCode::OK, rpc::response(&id, &Err(error)))
        }
        Body::Single(Item::BadParams { id, method, error }) => {
            let error = service.refuse_bad_params(&method, error);
            json_text(StatusCode::OK, rpc::response(&id, &Err(error)))
        }
        Body::Single(Item::Call(call)) => {
            tracing::debug!(method = %call.method, "rpc call");
            let outcome = service
                .call_until_stop(
                    &call.method,
                    call.params,
                    None,
                    Some(work),
                    shared.stop.clone(),
                )
                .await;
            match (call.id, outcome) {
                // A notification, or a method that returns nothing: HTTP 204 (documented).
                (None, _) | (Some(_), Ok(Value::Null)) => no_content(),
                (Some(id), outcome) => json_text(StatusCode::OK, rpc::response(&id, &outcome)),
            }
        }
        Body::Batch(items) if items.len() > shared.config.max_batch => {
            service.metrics.record_invalid();
            json_text(
                StatusCode::OK,
                rpc::response(
                    &rpc::null_id(),
                    &Err(RpcError::new(
                        rpc::INVALID_REQUEST,
                        format!(
                            "invalid request: the batch has {} calls, more than the {} allowed (PRIVITTY_RPC_MAX_BATCH); split it",
                            items.len(),
                            shared.config.max_batch
                        ),
                    )),
                ),
            )
        }
        Body::Batch(items) => batch(items, shared, service, work).await,
    }
}

/// Runs a batch's calls concurrently and answers in request order; nothing to answer → 204.
async fn batch(
    items: Vec<Item>,
    shared: &Arc<Shared>,
    service: &Arc<Service>,
    work: Ticket,
) -> Response<ResponseBody> {
    let calls = items.iter().filter(|i| matches!(i, Item::Call(_))).count();
    let mut work = work.split(calls).into_iter();
    let mut answers: Vec<Option<String>> = vec![None; items.len()];
    let mut running = JoinSet::new();
    // One budget for the whole batch: the answers held for this response stay under the cap.
    let budget = Budget::new(shared.config.max_response);
    for (i, item) in items.into_iter().enumerate() {
        match item {
            Item::Invalid { id, error } => {
                service.metrics.record_invalid();
                answers[i] = Some(rpc::response(&id, &Err(error)));
            }
            Item::BadParams { id, method, error } => {
                let error = service.refuse_bad_params(&method, error);
                answers[i] = Some(rpc::response(&id, &Err(error)));
            }
            Item::Call(call) => {
                let service = service.clone();
                let stop = shared.stop.clone();
                let budget = budget.clone();
                let work = work.next();
                running.spawn(async move {
                    let outcome = service
                        .call_until_stop(&call.method, call.params, Some(budget), work, stop)
                        .await;
                    (i, call.id.map(|id| rpc::response(&id, &outcome)))
                });
            }
        }
    }
    while let Some(done) = running.join_next().await {
        match done {
            Ok((i, answer)) => answers[i] = answer,
            Err(e) => tracing::error!(error = %e, "a batch call failed inside privitty-edged"),
        }
    }
    let parts: Vec<String> = answers.into_iter().flatten().collect();
    if parts.is_empty() {
        return no_content();
    }
    json_text(StatusCode::OK, format!("[{}]", parts.join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(req: Request<()>) -> http::request::Parts {
        req.into_parts().0
    }

    #[test]
    fn a_request_passed_on_is_made_again_with_its_body_length_and_without_its_framing() {
        let req = Request::post("/rpc?x=1")
            .header(header::HOST, "127.0.0.1:7200")
            .header(header::AUTHORIZATION, "Bearer t")
            .header(header::TRANSFER_ENCODING, "chunked")
            .header(header::EXPECT, "100-continue")
            .header("x-two", "a")
            .header("x-two", "b")
            .body(())
            .unwrap();
        let bytes = request_bytes(&parts(req), br#"{"id":1}"#);
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "POST /rpc?x=1 HTTP/1.1\r\nhost: 127.0.0.1:7200\r\nauthorization: Bearer t\r\n\
             x-two: a\r\nx-two: b\r\ncontent-length: 8\r\n\r\n{\"id\":1}"
        );
    }

    #[test]
    fn a_request_without_a_body_gets_no_length_and_keeps_its_version() {
        let req = Request::get("/health")
            .version(http::Version::HTTP_10)
            .header(header::CONNECTION, "keep-alive")
            .body(())
            .unwrap();
        assert_eq!(
            String::from_utf8(request_bytes(&parts(req), b"")).unwrap(),
            "GET /health HTTP/1.0\r\nconnection: keep-alive\r\n\r\n"
        );
        // An empty body that was framed keeps saying so.
        let req = Request::post("/rpc")
            .header(header::CONTENT_LENGTH, "0")
            .body(())
            .unwrap();
        assert_eq!(
            String::from_utf8(request_bytes(&parts(req), b"")).unwrap(),
            "POST /rpc HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[test]
    fn a_request_asks_to_close_as_hyper_reads_it() {
        let req = |version, connection: Option<&str>| {
            let mut b = Request::get("/health").version(version);
            if let Some(c) = connection {
                b = b.header(header::CONNECTION, c);
            }
            b.body(()).unwrap()
        };
        const HTTP_10: http::Version = http::Version::HTTP_10;
        const HTTP_11: http::Version = http::Version::HTTP_11;
        assert!(!asks_to_close(&req(HTTP_11, None)));
        assert!(asks_to_close(&req(HTTP_11, Some("Close"))));
        assert!(asks_to_close(&req(HTTP_11, Some("upgrade, close"))));
        assert!(!asks_to_close(&req(HTTP_11, Some("keep-alive"))));
        assert!(asks_to_close(&req(HTTP_10, None)));
        assert!(!asks_to_close(&req(HTTP_10, Some("Keep-Alive"))));
    }

    /// Serves one connection with hyper; each request's body goes to `handle` as a
    /// [`RequestBody`] of `active`.
    async fn one_connection<F, Fut>(active: Arc<Active>, handle: F) -> std::net::SocketAddr
    where
        F: Fn(RequestBody) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = StatusCode> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let body = RequestBody {
                    inner: req.into_body(),
                    ended: false,
                    active: active.clone(),
                };
                let handle = handle.clone();
                async move {
                    let status = handle(body).await;
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::new()))
                            .unwrap(),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
        addr
    }

    async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut got = vec![0u8; 1024];
        let n = s.read(&mut got).await.unwrap();
        String::from_utf8_lossy(&got[..n]).into_owned()
    }

    #[tokio::test]
    async fn a_body_answered_unread_ends_the_connection_and_one_read_to_its_end_does_not() {
        let request = b"POST /rpc HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"half\":";
        // Refused before its body is read, with the rest still on its way.
        let active = Arc::new(Active::default());
        let addr = one_connection(active.clone(), |body| async move {
            drop(body);
            StatusCode::PAYLOAD_TOO_LARGE
        })
        .await;
        assert!(exchange(addr, request).await.starts_with("HTTP/1.1 413"));
        assert!(active.ends.load(Ordering::Acquire), "hyper ends this one");
        // Read to its end.
        let active = Arc::new(Active::default());
        let addr = one_connection(active.clone(), |body| async move {
            let read = body.collect().await.unwrap().to_bytes();
            assert_eq!(read.len(), 3);
            StatusCode::OK
        })
        .await;
        let full = b"POST /rpc HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\n{}\n";
        assert!(exchange(addr, full).await.starts_with("HTTP/1.1 200"));
        assert!(!active.ends.load(Ordering::Acquire), "kept alive");
        // No body at all.
        let active = Arc::new(Active::default());
        let addr = one_connection(active.clone(), |body| async move {
            drop(body);
            StatusCode::OK
        })
        .await;
        assert!(
            exchange(addr, b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 200")
        );
        assert!(!active.ends.load(Ordering::Acquire), "kept alive");
    }
}
