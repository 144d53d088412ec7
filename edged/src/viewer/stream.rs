//! One `GET /stream/:msg_id` response: the access check, `Range`, the content type, and the
//! plaintext decrypted chunk by chunk into the response body, ended early when access ends.
//!
//! Owns: two workers per stream. The pump, on a blocking thread, reads and verifies one chunk at a
//! time ([`crate::privitty::PrvReader`], one reused buffer) and hands each piece to the body through
//! a channel of [`CHANNEL_CHUNKS`], so memory stays a few chunks whatever the size. The watcher, an
//! async task, listens to the events hub for news about the file (a revocation, a denial), checks
//! access again on such news and every [`super::RECHECK_INTERVAL`], and ends the stream when access
//! ended, the license stopped allowing it, or a new session replaced this one. A client that takes
//! nothing for the body timeout has its stream ended too. Must not: hold plaintext anywhere but the
//! chunk in flight (never a file, a log line or an error message).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::range::{self, Ranged};
use super::{StreamAborted, ViewerBody, error};
use crate::engine::ACCOUNT_ID;
use crate::license::License;
use crate::peer::{Peer, ViewerRefusal, ViewerSource};
use crate::privitty::{PrivittyError, PrvReader};
use crate::service::Service;

/// Plaintext pieces queued between the pump and the response body: with the pump's own buffer
/// and the piece being written, a stream holds at most four chunks (256 KiB) at any time.
pub const CHANNEL_CHUNKS: usize = 2;

/// Bytes of the first chunk the content type is detected from.
const SNIFF_BYTES: usize = 8192;

/// What ends a stream besides its own end, given by the viewer.
pub(super) struct Watch {
    /// The session the request was made in.
    pub session: u64,
    /// The current session's number (a new `/auth` changes it).
    pub sessions: watch::Receiver<u64>,
    /// How long the client may take nothing before the stream is ended.
    pub idle: Duration,
}

type Item = Result<Frame<Bytes>, StreamAborted>;

/// Checks access, opens the file and starts the pump and the watcher; answers with the response
/// head and the streaming body, or with the refusal.
pub(super) async fn start<B>(
    req: &Request<B>,
    msg_id: u32,
    peer: Peer,
    service: &Service,
    watch: Watch,
    slot: OwnedSemaphorePermit,
) -> Response<ViewerBody> {
    // Subscribed before access is checked: a revocation published from now on is seen.
    let events = service.hub.subscribe();
    let source = match peer.viewer_source(msg_id).await {
        Ok(source) => source,
        Err(refusal) => return refused(msg_id, refusal),
    };
    let size = source.header.meta.original_size;
    let file_id = source.header.meta.file_id;
    let chat_id = source.chat_id;
    let etag = format!("\"{file_id}\"");
    // `If-Range` with another validator: the client's copy is of something else, send it all.
    let if_range_holds = req
        .headers()
        .get(header::IF_RANGE)
        .is_none_or(|v| v.as_bytes() == etag.as_bytes());
    let ranged = if if_range_holds {
        range::parse(req.headers().get(header::RANGE).map(|v| v.as_bytes()), size)
    } else {
        Ranged::Full
    };
    let (start, end) = match ranged {
        Ranged::Full => (0, size),
        Ranged::Part { start, end } => (start, end + 1),
        Ranged::Unsatisfiable => {
            let mut r = error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("the range is outside the file's {size} bytes"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    let name = source.header.meta.original_name.clone();
    let opened = tokio::task::spawn_blocking(move || Opened::open(&source, start, end)).await;
    let opened = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => {
            tracing::warn!(msg_id, %file_id, error = %e, "viewer: decryption failed");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("decryption failed: {e}"),
            );
        }
        Err(e) => {
            tracing::error!(msg_id, error = %e, "viewer: opening the file panicked");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "decryption failed inside privitty-edged; see its log".into(),
            );
        }
    };
    service.hub.publish(&json!({
        "type": "PrivittyFileDecrypted",
        "account_id": ACCOUNT_ID,
        "chat_id": chat_id,
        "msg_id": msg_id,
        "file_id": file_id,
        "viewer": true,
    }));
    tracing::info!(msg_id, %file_id, start, end, size, "viewer stream started");

    let content_type = opened.content_type;
    let (tx, rx) = mpsc::channel::<Item>(CHANNEL_CHUNKS);
    let (abort_tx, abort_rx) = watch::channel(None::<String>);
    let pump = Pump {
        tx,
        abort: abort_rx,
        idle: watch.idle,
        rt: tokio::runtime::Handle::current(),
    };
    let work = tokio::task::spawn_blocking(move || pump.run(opened));
    tokio::spawn(watcher(
        Watched {
            peer,
            license: service.license.clone(),
            msg_id,
            file_id,
            needle: file_id.to_string(),
        },
        events,
        abort_tx,
        watch,
        work,
        slot,
    ));

    let mut resp = Response::builder()
        .status(if matches!(ranged, Ranged::Part { .. }) {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        })
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::ETAG, etag)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        // Shown in a browser anyway, a document gets no origin of its own: a script in it could
        // not call the API.
        .header(header::CONTENT_SECURITY_POLICY, "sandbox")
        .header(header::CONTENT_DISPOSITION, disposition(&name))
        .header(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            "Content-Range, Content-Length, Content-Disposition, Accept-Ranges, ETag",
        );
    if let Ranged::Part { start, end } = ranged {
        resp = resp.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"));
    }
    let body = LingeringAbort::new(tokio_stream::wrappers::ReceiverStream::new(rx), end - start);
    resp.body(StreamBody::new(body).boxed())
        .expect("valid response")
}

/// How long the bytes sent before a failure get to leave before the transfer is cut: ample for
/// a client that reads, with room for this process being off the CPU for a moment meanwhile.
pub const ABORT_LINGER: Duration = Duration::from_millis(250);

/// The body's frames, with an abort held back for [`ABORT_LINGER`]. hyper drops what it has
/// buffered but not yet written when a body fails, and a failure queued right behind the last
/// verified chunks would otherwise take them along: the client would get no response head at all
/// instead of the verified bytes and then a cut transfer. While the abort waits, the body is
/// pending, so hyper writes out its buffer (and is woken as the socket drains). An end short of
/// `length` (the pump could not queue its error behind a full queue) is an abort too.
struct LingeringAbort<S> {
    frames: S,
    /// Bytes the response promised (its `Content-Length`) and bytes passed on so far.
    length: u64,
    passed: u64,
    held: Option<(StreamAborted, std::pin::Pin<Box<tokio::time::Sleep>>)>,
}

impl<S> LingeringAbort<S> {
    fn new(frames: S, length: u64) -> Self {
        LingeringAbort {
            frames,
            length,
            passed: 0,
            held: None,
        }
    }
}

impl<S> tokio_stream::Stream for LingeringAbort<S>
where
    S: tokio_stream::Stream<Item = Item> + Unpin,
{
    type Item = Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Item>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.held.is_none() {
            let aborted = match std::pin::Pin::new(&mut this.frames).poll_next(cx) {
                Poll::Ready(Some(Err(aborted))) => aborted,
                Poll::Ready(None) if this.passed < this.length => StreamAborted(format!(
                    "the stream ended after {} of its {} bytes",
                    this.passed, this.length
                )),
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        this.passed += data.len() as u64;
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                other => return other,
            };
            this.held = Some((aborted, Box::pin(tokio::time::sleep(ABORT_LINGER))));
        }
        if let Some((_, linger)) = this.held.as_mut() {
            std::task::ready!(linger.as_mut().poll(cx));
        }
        Poll::Ready(this.held.take().map(|(aborted, _)| Err(aborted)))
    }
}

/// The answer to a refusal of [`Peer::viewer_source`].
fn refused(msg_id: u32, refusal: ViewerRefusal) -> Response<ViewerBody> {
    let (status, message) = match refusal {
        ViewerRefusal::NotFound(m) => (StatusCode::NOT_FOUND, m),
        ViewerRefusal::Pending(m) => (StatusCode::CONFLICT, m),
        ViewerRefusal::Forbidden(m) => (StatusCode::FORBIDDEN, m),
        ViewerRefusal::Failed(m) => {
            tracing::warn!(msg_id, error = %m, "viewer: cannot read the file");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("decryption failed: {m}"),
            )
        }
    };
    error(status, message)
}

/// `inline; filename*=UTF-8''<name>` (RFC 6266/8187): the name percent-encoded, so no byte of
/// it can break the header.
fn disposition(name: &str) -> HeaderValue {
    let mut value = String::from("inline; filename*=UTF-8''");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            value.push(b as char);
        } else {
            value.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("inline"))
}

/// The content type of a file starting with `head`: its magic bytes, else UTF-8 text, else bytes.
pub fn content_type(head: &[u8]) -> &'static str {
    let head = &head[..head.len().min(SNIFF_BYTES)];
    if let Some(kind) = infer::get(head) {
        return kind.mime_type();
    }
    if head.is_empty() {
        return "application/octet-stream";
    }
    // A sample cut inside a multi-byte character is still text.
    let valid = match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none() && head.len() == SNIFF_BYTES,
    };
    let controls = head
        .iter()
        .any(|&b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x0c));
    if valid && !controls {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

/// A file opened for a stream of bytes `start..end`: the first chunk verified and sniffed, the
/// reader at the chunk holding `start`.
struct Opened {
    reader: PrvReader<std::fs::File>,
    content_type: &'static str,
    /// The part of chunk 0 to send, when `start` is in chunk 0 (it is decrypted already).
    first: Option<Bytes>,
    /// Bytes of the reader's next chunk to leave out (the offset of `start` in it).
    skip: usize,
    /// Bytes to send from the reader on (after `first`).
    left: u64,
}

impl Opened {
    fn open(source: &ViewerSource, start: u64, end: u64) -> Result<Opened, PrivittyError> {
        let mut reader = source.open()?;
        let chunk = u64::from(source.header.chunk_size);
        let first_index = start / chunk;
        let skip = (start - first_index * chunk) as usize;
        let head = reader.next_chunk()?.unwrap_or_default();
        let content_type = content_type(head);
        if first_index == 0 {
            let upto = (end.min(head.len() as u64)) as usize;
            let first = Bytes::copy_from_slice(&head[skip.min(upto)..upto]);
            let left = end - start - first.len() as u64;
            return Ok(Opened {
                reader,
                content_type,
                first: Some(first),
                skip: 0,
                left,
            });
        }
        reader.seek_to_chunk(first_index)?;
        Ok(Opened {
            reader,
            content_type,
            first: None,
            skip,
            left: end - start,
        })
    }
}

/// How a pump ended.
#[derive(Debug)]
enum End {
    /// Every byte of the range was handed to the body.
    Done,
    /// The client went away (the body was dropped).
    ClientGone,
    /// The client took nothing for the idle time.
    Idle(Duration),
    /// The watcher ended it (the reason says why).
    Ended(String),
    /// A chunk failed to verify or to read.
    Failed(PrivittyError),
}

/// The blocking half: decrypts and sends, chunk by chunk.
struct Pump {
    tx: mpsc::Sender<Item>,
    abort: watch::Receiver<Option<String>>,
    idle: Duration,
    rt: tokio::runtime::Handle,
}

impl Pump {
    fn run(mut self, opened: Opened) -> End {
        let end = self.pump(opened);
        // A stream that did not finish must not look finished: the body ends with an error (or,
        // with its queue full, short of its Content-Length), and the server cuts the transfer.
        let why = match &end {
            End::Done | End::ClientGone => return end,
            End::Idle(d) => format!("the client took nothing for {d:?}"),
            End::Ended(reason) => reason.clone(),
            End::Failed(e) => format!("decryption failed: {e}"),
        };
        let _ = self.tx.try_send(Err(StreamAborted(why)));
        end
    }

    fn pump(&mut self, opened: Opened) -> End {
        let Opened {
            mut reader,
            first,
            mut skip,
            mut left,
            ..
        } = opened;
        if let Some(first) = first.filter(|f| !f.is_empty())
            && let Err(end) = self.send(first)
        {
            return end;
        }
        while left > 0 {
            let chunk = match reader.next_chunk() {
                Ok(Some(chunk)) => chunk,
                Ok(None) => return End::Ended("the file ended before its stated size".into()),
                Err(e) => return End::Failed(e),
            };
            let piece = &chunk[skip.min(chunk.len())..];
            skip = 0;
            let take = piece.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let bytes = Bytes::copy_from_slice(&piece[..take]);
            left -= take as u64;
            if let Err(end) = self.send(bytes) {
                return end;
            }
        }
        End::Done
    }

    /// Hands one piece to the body: at once when the queue has room, else waiting for the client
    /// up to the idle time, or until the watcher ends the stream.
    fn send(&mut self, bytes: Bytes) -> Result<(), End> {
        if let Some(reason) = self.abort.borrow().clone() {
            return Err(End::Ended(reason));
        }
        let item = match self.tx.try_send(Ok(Frame::data(bytes))) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(End::ClientGone),
            Err(mpsc::error::TrySendError::Full(item)) => item,
        };
        let (tx, abort, idle) = (&self.tx, &mut self.abort, self.idle);
        self.rt.block_on(async move {
            tokio::select! {
                biased;
                ended = abort.wait_for(Option::is_some) => Err(End::Ended(
                    ended.ok().and_then(|r| r.clone()).unwrap_or_else(|| "the stream was ended".into()),
                )),
                sent = tokio::time::timeout(idle, tx.send(item)) => match sent {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err(End::ClientGone),
                    Err(_) => Err(End::Idle(idle)),
                },
            }
        })
    }
}

/// What the watcher checks access for.
struct Watched {
    peer: Peer,
    license: Arc<dyn License>,
    msg_id: u32,
    file_id: Uuid,
    /// `file_id` as it appears in an event.
    needle: String,
}

impl Watched {
    /// Why access ended, if it did: the license, then the file's grant or key.
    async fn ended(&self) -> Option<String> {
        let eval = self.license.evaluate(SystemTime::now());
        if !eval.status.allows_gated() {
            return Some(format!(
                "the license no longer allows it (status {})",
                eval.status.as_str()
            ));
        }
        match self.peer.viewer_source(self.msg_id).await {
            Ok(_) => None,
            Err(
                ViewerRefusal::Forbidden(reason)
                | ViewerRefusal::NotFound(reason)
                | ViewerRefusal::Pending(reason),
            ) => Some(reason),
            Err(ViewerRefusal::Failed(e)) => {
                // Could not look (the engine restarting): keep streaming, look again later.
                tracing::debug!(msg_id = self.msg_id, error = %e, "viewer: access check failed");
                None
            }
        }
    }

    /// Whether an event (serialized) may change access to the file.
    fn concerns(&self, event: &str) -> bool {
        event.contains(&self.needle)
            && (event.contains("\"PrivittyFileAccessRevoked\"")
                || event.contains("\"PrivittyFileAccessChanged\""))
    }
}

/// The async half: ends the stream when access ends, then waits for the pump and frees the slot.
async fn watcher(
    watched: Watched,
    events: broadcast::Receiver<Arc<str>>,
    abort: watch::Sender<Option<String>>,
    mut watch: Watch,
    mut work: JoinHandle<End>,
    slot: OwnedSemaphorePermit,
) {
    let mut events = Some(events);
    let period = super::RECHECK_INTERVAL;
    let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let session = watch.session;
    let ended = loop {
        let reason = tokio::select! {
            end = &mut work => break end,
            event = next_event(&mut events) => match event {
                Ok(text) if watched.concerns(&text) => watched.ended().await,
                Ok(_) => None,
                // Missed events may have been about this file: look.
                Err(broadcast::error::RecvError::Lagged(_)) => watched.ended().await,
                Err(broadcast::error::RecvError::Closed) => {
                    events = None;
                    None
                }
            },
            _ = recheck.tick() => watched.ended().await,
            _ = replaced(&mut watch.sessions, session) => {
                Some("a new viewer session (POST /auth) replaced this one".to_string())
            }
        };
        if let Some(reason) = reason {
            abort.send_replace(Some(reason));
            break (&mut work).await;
        }
    };
    let msg_id = watched.msg_id;
    let file_id = watched.file_id;
    match ended {
        Ok(End::Done) => tracing::debug!(msg_id, %file_id, "viewer stream finished"),
        Ok(End::ClientGone) => tracing::debug!(msg_id, %file_id, "viewer stream: the client left"),
        Ok(End::Idle(idle)) => tracing::info!(
            msg_id,
            %file_id,
            reason = %format!("the client took nothing for {idle:?} (the body timeout)"),
            "viewer stream ended early"
        ),
        Ok(End::Ended(reason)) => {
            tracing::info!(msg_id, %file_id, %reason, "viewer stream ended early")
        }
        Ok(End::Failed(e)) => {
            tracing::warn!(msg_id, %file_id, error = %e, "viewer stream failed: decryption failed")
        }
        Err(e) => tracing::error!(msg_id, %file_id, error = %e, "viewer stream panicked"),
    }
    drop(slot);
}

/// Resolves once a session other than `session` is current (never when the viewer is gone).
async fn replaced(sessions: &mut watch::Receiver<u64>, session: u64) {
    if sessions.wait_for(|n| *n != session).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The next event, or never once the hub closed.
async fn next_event(
    events: &mut Option<broadcast::Receiver<Arc<str>>>,
) -> Result<Arc<str>, broadcast::error::RecvError> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response whose body fails right behind its last good frames, over real HTTP/1.1: the
    /// client gets the head and those frames, then a cut (no clean end), with the abort held
    /// back. Without it hyper dropped its unwritten buffer with the failure, and the client got
    /// nothing at all (seen in CI as an empty status line). Both endings: the error queued, and
    /// the queue closed without it (the pump's error did not fit a full queue).
    #[tokio::test]
    async fn a_failure_right_behind_the_last_frames_still_delivers_them() {
        for queued_error in [true, false] {
            failure_right_behind_the_last_frames(queued_error).await;
        }
    }

    async fn failure_right_behind_the_last_frames(queued_error: bool) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const PIECE: usize = 64 * 1024;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(move |_req| async move {
                let (tx, rx) = mpsc::channel::<Item>(4);
                for byte in [b'a', b'b'] {
                    tx.try_send(Ok(Frame::data(Bytes::from(vec![byte; PIECE]))))
                        .unwrap();
                }
                if queued_error {
                    tx.try_send(Err(StreamAborted("a later chunk failed".into())))
                        .unwrap();
                }
                drop(tx);
                let frames = tokio_stream::wrappers::ReceiverStream::new(rx);
                let body = LingeringAbort::new(frames, 3 * PIECE as u64);
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .header(header::CONTENT_LENGTH, 3 * PIECE)
                        .body(StreamBody::new(body))
                        .unwrap(),
                )
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                .await;
        });
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), client.read_to_end(&mut got))
            .await
            .expect("the server ends the connection")
            .ok();
        server.await.unwrap();
        let head_end = got
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| {
                panic!(
                    "no response head in {} bytes (error queued: {queued_error})",
                    got.len()
                )
            });
        assert!(got.starts_with(b"HTTP/1.1 200"), "{:?}", &got[..head_end]);
        let body = &got[head_end + 4..];
        assert_eq!(
            body.len(),
            2 * PIECE,
            "the frames before the failure, then the cut"
        );
        assert!(body[..PIECE].iter().all(|b| *b == b'a'));
        assert!(body[PIECE..].iter().all(|b| *b == b'b'));
    }

    #[test]
    fn content_types_from_magic_bytes() {
        assert_eq!(content_type(b"%PDF-1.7\n%\xe2\xe3"), "application/pdf");
        assert_eq!(content_type(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), "image/png");
        assert_eq!(
            content_type(b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom"),
            "video/mp4"
        );
        assert_eq!(content_type(b"\xff\xd8\xff\xe0\0\x10JFIF"), "image/jpeg");
        assert_eq!(content_type(b"a,b\n1,2\n"), "text/plain; charset=utf-8");
        assert_eq!(
            content_type("grüße".as_bytes()),
            "text/plain; charset=utf-8"
        );
        assert_eq!(
            content_type(b"\x01\x02\x03binary"),
            "application/octet-stream"
        );
        assert_eq!(content_type(b""), "application/octet-stream");
        assert_eq!(content_type(&[0xc3]), "application/octet-stream");
    }

    #[test]
    fn the_name_cannot_break_the_header() {
        assert_eq!(
            disposition("report 1.pdf"),
            "inline; filename*=UTF-8''report%201.pdf"
        );
        assert_eq!(
            disposition("a\"\r\nX-Evil: 1;ä"),
            "inline; filename*=UTF-8''a%22%0D%0AX-Evil%3A%201%3B%C3%A4"
        );
    }
}
