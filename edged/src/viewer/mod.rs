//! The viewer API: `POST /auth` opens the one viewer session (the device fingerprint in, a bearer
//! token out), `GET /stream/:msg_id` streams the plaintext of a message's `.prv` to it, decrypted
//! on the fly. This is how a local viewer shows a protected file whose owner forbids downloading it.
//!
//! Owns: the session (a random token valid [`SESSION_TTL`]; a new `/auth` replaces it and ends the
//! replaced session's streams), the cap on streams, and each stream's life ([`stream`]): the order
//! of its checks and their statuses, `Range`, the content type, and ending it when access ends.
//! Must not: write plaintext anywhere but the response body (no file, no log line, no error
//! message), log a token or the fingerprint, decide access itself (that is
//! [`crate::peer::Peer::viewer_source`] and the license), or know the server's routes and
//! connection limits ([`crate::http`] routes here after its Host check, and after its API-token
//! check for `/auth` only: `/stream` carries the viewer token instead).
//!
//! Trust boundary: every request is hostile. `/auth`'s body is capped ([`MAX_AUTH_BODY`]) and
//! time-limited, the fingerprint and the token are compared in constant time, ids are parsed
//! strictly. The `.prv` comes from the data volume or a peer: no byte of it is released before its
//! chunk verified.

pub mod range;
mod stream;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::service::Service;

/// How long a viewer token is valid (the product's documented `expires_in`).
pub const SESSION_TTL: Duration = Duration::from_secs(3600);
/// `/auth` bodies above this answer 413 (the body is one short JSON object).
pub const MAX_AUTH_BODY: usize = 4096;
/// How often a running stream checks again that access still holds, besides the events that say
/// it changed (catches an expiry, which no event announces).
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(10);
/// The stream route's prefix; the rest of the path is the message id.
pub const STREAM_PREFIX: &str = "/stream/";
/// The documented `/auth` refusal.
pub const MISMATCH: &str = "Device fingerprint mismatch";

/// A viewer response's body. An error ends the response without completing it (the client sees a
/// cut transfer, never a clean end).
pub type ViewerBody = BoxBody<Bytes, StreamAborted>;

/// Why a stream was cut short (the HTTP server aborts the response with it).
#[derive(Debug, thiserror::Error)]
#[error("the viewer stream was ended: {0}")]
pub struct StreamAborted(pub String);

/// The viewer's limits.
#[derive(Clone, Copy, Debug)]
pub struct ViewerSettings {
    /// Streams at once (`PRIVITTY_VIEWER_MAX_STREAMS`).
    pub max_streams: usize,
    /// The time a client has to send `/auth`'s body, and to take the next piece of a stream
    /// (`PRIVITTY_BODY_TIMEOUT`, as for `/rpc`).
    pub body_timeout: Duration,
}

/// The session, the stream slots and the fingerprint; shared by every connection.
pub struct Viewer {
    /// The device fingerprint, or why there is none (then `/auth` answers 503).
    fingerprint: Result<String, String>,
    session: Mutex<Option<Session>>,
    /// The number of the current session; streams of an older one end when it changes.
    current: watch::Sender<u64>,
    slots: Arc<Semaphore>,
    settings: ViewerSettings,
}

impl std::fmt::Debug for Viewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Viewer")
            .field("fingerprint", &self.fingerprint.as_ref().map(|_| "(set)"))
            .field("session", &*self.current.borrow())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

struct Session {
    /// SHA-256 of the token: the token itself is only ever in the `/auth` answer.
    token_digest: [u8; 32],
    expires: Instant,
    number: u64,
}

/// A new session's token.
#[derive(Debug)]
pub struct Issued {
    pub token: String,
    pub expires_in: u64,
    pub replaced: bool,
}

/// Why `/auth` opened no session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRefused {
    /// 403, the documented answer.
    Mismatch,
    /// 503: the gateway has no usable fingerprint (the reason names the file and the fix).
    Unavailable(String),
}

/// Why a `/stream` request has no session (401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSession {
    Missing,
    Expired,
    /// Not the current token: never issued, or replaced by a newer `/auth`.
    Unknown,
}

impl NoSession {
    fn message(self) -> &'static str {
        match self {
            NoSession::Missing => {
                "this endpoint needs the viewer token: POST /auth with {\"device_fingerprint\":\"…\"}, then send `Authorization: Bearer <token>`"
            }
            NoSession::Expired => "the viewer token expired (after 3600 s); POST /auth again",
            NoSession::Unknown => {
                "the viewer token is not the current one (a newer POST /auth replaced it, or it was never issued); POST /auth again"
            }
        }
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Viewer {
    pub fn new(fingerprint: Result<String, String>, settings: ViewerSettings) -> Viewer {
        Viewer {
            fingerprint,
            session: Mutex::new(None),
            current: watch::Sender::new(0),
            slots: Arc::new(Semaphore::new(settings.max_streams.max(1))),
            settings,
        }
    }

    /// Checks a presented fingerprint (constant time) and, when it matches, replaces the session
    /// with a new one.
    pub fn open_session(&self, presented: &str) -> Result<Issued, AuthRefused> {
        let expected = self
            .fingerprint
            .as_ref()
            .map_err(|why| AuthRefused::Unavailable(why.clone()))?;
        let presented = presented.trim().to_ascii_lowercase();
        if !licensectl::api_token::matches(presented.as_bytes(), expected.as_bytes()) {
            return Err(AuthRefused::Mismatch);
        }
        let token = licensectl::api_token::generate();
        let mut session = self.session.lock().expect("viewer session lock");
        let replaced = session.is_some();
        let number = *self.current.borrow() + 1;
        *session = Some(Session {
            token_digest: digest(token.as_bytes()),
            expires: Instant::now() + SESSION_TTL,
            number,
        });
        // Streams of the replaced session watch this and end.
        self.current.send_replace(number);
        Ok(Issued {
            token,
            expires_in: SESSION_TTL.as_secs(),
            replaced,
        })
    }

    /// The number of the session whose token `headers` carry.
    pub fn session(&self, headers: &HeaderMap) -> Result<u64, NoSession> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| bearer(v.as_bytes()))
            .ok_or(NoSession::Missing)?;
        let presented = digest(presented);
        let session = self.session.lock().expect("viewer session lock");
        let Some(s) = session.as_ref() else {
            return Err(NoSession::Unknown);
        };
        if !licensectl::api_token::matches(&presented, &s.token_digest) {
            return Err(NoSession::Unknown);
        }
        if Instant::now() >= s.expires {
            return Err(NoSession::Expired);
        }
        Ok(s.number)
    }

    /// `POST /auth` (the caller checked the Host and, when required, the API token).
    pub async fn auth<B>(&self, req: Request<B>) -> Response<ViewerBody>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let too_large = || {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the /auth body exceeds {MAX_AUTH_BODY} bytes; send {{\"device_fingerprint\":\"<sha256 hex>\"}}"
                ),
            )
        };
        if declared.is_some_and(|n| n > MAX_AUTH_BODY as u64) {
            return too_large();
        }
        let collect = Limited::new(req.into_body(), MAX_AUTH_BODY).collect();
        let body = match tokio::time::timeout(self.settings.body_timeout, collect).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
            Ok(Err(_)) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "the /auth body could not be read".into(),
                );
            }
            Err(_) => {
                return error(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the /auth body did not arrive within {:?}",
                        self.settings.body_timeout
                    ),
                );
            }
        };
        let presented = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("device_fingerprint")?.as_str().map(str::to_string));
        let Some(presented) = presented else {
            return error(
                StatusCode::BAD_REQUEST,
                "the /auth body must be {\"device_fingerprint\":\"<sha256 hex>\"}; print the fingerprint with `privitty-edge device-fingerprint`".into(),
            );
        };
        match self.open_session(&presented) {
            Ok(issued) => {
                tracing::info!(
                    replaced = issued.replaced,
                    expires_in = issued.expires_in,
                    "viewer session opened"
                );
                json(
                    StatusCode::OK,
                    &json!({"token": issued.token, "expires_in": issued.expires_in}),
                )
            }
            Err(AuthRefused::Mismatch) => {
                tracing::info!("viewer /auth refused: device fingerprint mismatch");
                json(StatusCode::FORBIDDEN, &json!({"error": MISMATCH}))
            }
            Err(AuthRefused::Unavailable(why)) => error(StatusCode::SERVICE_UNAVAILABLE, why),
        }
    }

    /// `GET /stream/:msg_id` (the caller checked the Host).
    pub async fn stream<B>(&self, req: &Request<B>, service: &Service) -> Response<ViewerBody> {
        let session = match self.session(req.headers()) {
            Ok(n) => n,
            Err(why) => {
                let mut r = error(StatusCode::UNAUTHORIZED, why.message().into());
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"privitty-viewer\""),
                );
                return r;
            }
        };
        let eval = service.license.evaluate(SystemTime::now());
        if !eval.status.allows_gated() {
            let rejection = crate::gate::rejection(&eval);
            return json(
                StatusCode::FORBIDDEN,
                &json!({
                    "error": rejection.message,
                    "status": eval.status.as_str(),
                    "reason": eval.reason.map(|r| r.as_str()),
                }),
            );
        }
        let id = &req.uri().path()[STREAM_PREFIX.len()..];
        let Some(msg_id) = parse_msg_id(id) else {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "{id:?} is not a message id; use GET /stream/<msg_id> with the id from get_message_ids (1…4294967295)"
                ),
            );
        };
        let Some(peer) = service.peer.clone() else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the viewer is not available: the Privitty peer protocol is not running".into(),
            );
        };
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{} viewer streams are running already (PRIVITTY_VIEWER_MAX_STREAMS); end one or raise the limit",
                    self.settings.max_streams
                ),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return r;
        };
        let ended = stream::Watch {
            session,
            sessions: self.current.subscribe(),
            idle: self.settings.body_timeout,
        };
        stream::start(req, msg_id, peer, service, ended, slot).await
    }
}

/// A message id: 1…4294967295 in plain decimal digits.
fn parse_msg_id(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u32>().ok().filter(|id| *id > 0)
}

/// The token of `Bearer <token>` (scheme case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

fn full(bytes: impl Into<Bytes>) -> ViewerBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn json(status: StatusCode, value: &Value) -> Response<ViewerBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(full(value.to_string()))
        .expect("valid response")
}

fn error(status: StatusCode, message: String) -> Response<ViewerBody> {
    json(status, &json!({ "error": message }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn viewer() -> Viewer {
        Viewer::new(
            Ok(FP.to_string()),
            ViewerSettings {
                max_streams: 2,
                body_timeout: Duration::from_secs(30),
            },
        )
    }

    fn with_token(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        h
    }

    #[test]
    fn a_matching_fingerprint_opens_a_session_and_a_new_one_replaces_it() {
        let v = viewer();
        assert_eq!(v.session(&HeaderMap::new()), Err(NoSession::Missing));
        assert_eq!(v.session(&with_token("x")), Err(NoSession::Unknown));
        assert_eq!(
            v.open_session(&FP.replace('9', "8")).unwrap_err(),
            AuthRefused::Mismatch
        );
        assert_eq!(
            v.open_session("").unwrap_err(),
            AuthRefused::Mismatch,
            "empty"
        );
        let first = v.open_session(&FP.to_ascii_uppercase()).unwrap();
        assert_eq!(first.expires_in, 3600);
        assert!(!first.replaced);
        assert_eq!(first.token.len(), 43);
        let n1 = v.session(&with_token(&first.token)).unwrap();
        let replaced = v.current.subscribe();
        let second = v.open_session(FP).unwrap();
        assert!(second.replaced);
        assert_ne!(second.token, first.token);
        assert_eq!(
            v.session(&with_token(&first.token)),
            Err(NoSession::Unknown),
            "one session at a time"
        );
        let n2 = v.session(&with_token(&second.token)).unwrap();
        assert!(n2 > n1);
        assert!(replaced.has_changed().unwrap(), "streams are told");
        let shown = format!("{v:?}");
        assert!(
            !shown.contains(FP) && !shown.contains(&second.token),
            "{shown}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_expires_after_an_hour() {
        let v = viewer();
        let issued = v.open_session(FP).unwrap();
        tokio::time::advance(SESSION_TTL - Duration::from_secs(1)).await;
        assert!(v.session(&with_token(&issued.token)).is_ok());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            v.session(&with_token(&issued.token)),
            Err(NoSession::Expired)
        );
    }

    #[test]
    fn without_a_fingerprint_auth_says_why() {
        let v = Viewer::new(
            Err("the device fingerprint is unusable: …".into()),
            ViewerSettings {
                max_streams: 1,
                body_timeout: Duration::from_secs(1),
            },
        );
        assert!(matches!(
            v.open_session(FP),
            Err(AuthRefused::Unavailable(_))
        ));
    }

    #[test]
    fn message_ids_are_strict() {
        assert_eq!(parse_msg_id("10"), Some(10));
        assert_eq!(parse_msg_id("4294967295"), Some(u32::MAX));
        for bad in [
            "",
            "0",
            "-1",
            "+1",
            "1.0",
            "4294967296",
            "10/x",
            "0x10",
            " 1",
            "99999999999",
        ] {
            assert_eq!(parse_msg_id(bad), None, "{bad:?}");
        }
    }
}
