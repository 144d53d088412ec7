//! The HTTP side: protocol v1 under `/v1/license/<TOKEN>/…`, the admin API under `/admin/v1/…` (admin
//! token as Bearer), and fault injection for the next protocol calls. Owns request parsing, the seat
//! and sync rules, and error bodies. Must not: log a TOKEN or device secret, or let a fault touch the
//! admin API.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;

use super::signing::{AUDIENCE, Claims, ISSUER, LicenseSigner};
use super::state::{Activation, License, SeatState, Store};
use super::{Error, redact};

/// Request bodies larger than this are refused with 413 (the protocol's response limit, mirrored).
pub const MAX_BODY: usize = 64 * 1024;

type Body = Full<Bytes>;

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A misbehaviour applied to the next protocol calls (never to admin calls).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum FaultKind {
    /// `500 {"error":"internal"}` without touching state.
    #[serde(rename = "500")]
    Status500,
    /// `429` with `Retry-After: <retry_after>` (seconds), without touching state.
    #[serde(rename = "429")]
    TooManyRequests { retry_after: u64 },
    /// Waits `ms` milliseconds, then answers normally.
    Delay { ms: u64 },
    /// `200` with a body that is not JSON, without touching state.
    Garbage200,
    /// Answers normally, but the JWT is signed by a key nobody trusts.
    WrongKey,
}

/// The admin API's fault request: `kind` plus how many protocol calls it applies to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FaultRequest {
    #[serde(flatten)]
    pub kind: FaultKind,
    pub count: u32,
}

/// The admin API's license request; durations in whole seconds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateLicense {
    pub seats: u32,
    pub entitlement: u64,
    pub sync_window: u64,
    pub grace: u64,
    pub offline_allowance: u64,
    #[serde(default)]
    pub customer: Option<String>,
    #[serde(default)]
    pub features: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IssueOffline {
    pub license: String,
    pub device: String,
}

/// Everything a connection handler needs.
#[derive(Debug)]
pub struct App {
    store: Mutex<Store>,
    signer: LicenseSigner,
    /// Signs licenses for the `wrong-key` fault.
    stranger: LicenseSigner,
    /// Pending fault and how many protocol calls it still applies to.
    fault: Mutex<Option<(FaultKind, u32)>>,
    /// Base of delivery URLs (`<public_url>/v1/license/<TOKEN>`).
    public_url: String,
}

impl App {
    pub fn new(store: Store, signer: LicenseSigner, public_url: String) -> App {
        App {
            store: Mutex::new(store),
            signer,
            stranger: LicenseSigner::ephemeral(),
            fault: Mutex::new(None),
            public_url,
        }
    }

    fn take_fault(&self) -> Option<FaultKind> {
        let mut slot = self.fault.lock().expect("fault lock");
        let (kind, left) = slot.as_mut()?;
        let kind = kind.clone();
        *left -= 1;
        if *left == 0 {
            *slot = None;
        }
        Some(kind)
    }
}

/// Serves `listener` (TLS when `tls` is set) until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Arc<App>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => {
                tracing::info!("shutting down");
                return Ok(());
            }
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Usually EMFILE or a connection reset before accept: keep serving the others.
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let app = app.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(app.clone(), peer, req));
            let http = hyper::server::conn::http1::Builder::new();
            let result = match acceptor {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(tls) => http.serve_connection(TokioIo::new(tls), service).await,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "tls handshake failed");
                        return;
                    }
                },
                None => http.serve_connection(TokioIo::new(stream), service).await,
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json_response(status, &json!({"error": code, "message": message}))
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .expect("static response parts are valid")
}

fn empty(status: StatusCode) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .expect("static response parts are valid")
}

fn bearer(req: &Request<Incoming>) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// The request path with the TOKEN segment redacted, for logs.
fn loggable_path(path: &str) -> String {
    match path.strip_prefix("/v1/license/") {
        Some(rest) => {
            let (token, tail) = rest.split_once('/').unwrap_or((rest, ""));
            let sep = if tail.is_empty() { "" } else { "/" };
            format!("/v1/license/{}{sep}{tail}", redact(token))
        }
        // `revoke` may name a license by its TOKEN
        None => match path.strip_prefix("/admin/v1/licenses/") {
            Some(rest) => {
                let (key, tail) = rest.split_once('/').unwrap_or((rest, ""));
                format!("/admin/v1/licenses/{}/{tail}", redact(key))
            }
            None => path.to_string(),
        },
    }
}

async fn handle(
    app: Arc<App>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let response = route(&app, req).await;
    tracing::debug!(%peer, %method, path = %loggable_path(&path), status = response.status().as_u16(), "request");
    Ok(response)
}

/// A request refused before its handler runs; becomes an error body.
#[derive(Debug)]
struct Reject {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Reject {
    fn into_response(self) -> Response<Body> {
        error(self.status, self.code, &self.message)
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Reject> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => Err(Reject {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "body_too_large",
            message: "request body is over 64 KiB or was cut off".to_string(),
        }),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Reject> {
    // An absent body means "no fields" for the calls whose fields are all optional.
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes).map_err(|e| Reject {
        status: StatusCode::BAD_REQUEST,
        code: "bad_request",
        message: format!("request body is not the expected JSON: {e}"),
    })
}

async fn route(app: &Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if let Some(rest) = path.strip_prefix("/v1/license/") {
        let segments: Vec<String> = rest.split('/').map(str::to_string).collect();
        return protocol(app, req, &segments).await;
    }
    if let Some(rest) = path.strip_prefix("/admin/v1/") {
        let segments: Vec<String> = rest.split('/').map(str::to_string).collect();
        return admin(app, req, &segments).await;
    }
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see LICENSE-SERVER.md",
    )
}

// ---------------------------------------------------------------- protocol

#[derive(Debug, Default, Deserialize)]
struct ActivateBody {
    #[serde(default)]
    device_name: Option<String>,
    #[serde(default)]
    client_version: Option<String>,
    #[serde(default)]
    platform: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct SyncBody {
    #[serde(default)]
    activation_id: Option<String>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    usage: Vec<UsageReport>,
}

#[derive(Debug, Deserialize)]
struct UsageReport {
    report_id: String,
    #[serde(default)]
    counters: BTreeMap<String, u64>,
}

fn valid_token(token: &str) -> bool {
    (1..=256).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b))
}

async fn protocol(app: &Arc<App>, req: Request<Incoming>, segments: &[String]) -> Response<Body> {
    let call = match (req.method(), segments) {
        (&Method::PUT, [_, d, _]) if d == "devices" => Call::Activate,
        (&Method::DELETE, [_, d, _]) if d == "devices" => Call::Deactivate,
        (&Method::POST, [_, d, _, s]) if d == "devices" && s == "sync" => Call::Sync,
        (_, [_, d, _]) if d == "devices" => {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use PUT or DELETE",
            );
        }
        (_, [_, d, _, s]) if d == "devices" && s == "sync" => {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use POST",
            );
        }
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such protocol endpoint",
            );
        }
    };
    let (token, device) = (segments[0].as_str(), segments[2].as_str());

    let fault = app.take_fault();
    match &fault {
        Some(FaultKind::Status500) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "injected fault: 500",
            );
        }
        Some(FaultKind::TooManyRequests { retry_after }) => {
            let mut resp = error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "injected fault: too many requests",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(*retry_after));
            return resp;
        }
        Some(FaultKind::Garbage200) => {
            return Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from_static(b"<html>not json</html>")))
                .expect("static response parts are valid");
        }
        Some(FaultKind::Delay { ms }) => tokio::time::sleep(Duration::from_millis(*ms)).await,
        Some(FaultKind::WrongKey) | None => {}
    }
    let signer = if fault == Some(FaultKind::WrongKey) {
        &app.stranger
    } else {
        &app.signer
    };

    let secret = bearer(&req);
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(reject) => return reject.into_response(),
    };
    if !valid_token(token) {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_token",
            "this delivery URL is not known to the license server",
        );
    }
    if uuid::Uuid::parse_str(device).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_device_uuid",
            "the device id in the path is not a UUID",
        );
    }
    let outcome = match call {
        Call::Activate => parse_json(&body).map(|b| activate(app, signer, token, device, b)),
        Call::Sync => parse_json(&body).map(|b| sync(app, signer, token, device, secret, b)),
        Call::Deactivate => Ok(deactivate(app, token, device, secret)),
    };
    outcome.unwrap_or_else(Reject::into_response)
}

#[derive(Clone, Copy, Debug)]
enum Call {
    Activate,
    Sync,
    Deactivate,
}

/// The license claims for `device` at `now`: `sync_by = min(entitlement_end, now + sync_window)`,
/// `exp = min(entitlement_end + grace, now + offline_allowance)`, kept within `iat ≤ sync_by ≤ exp`.
pub fn claims_for(
    lic: &License,
    device: &str,
    act: Option<String>,
    nonce: Option<String>,
    now: i64,
) -> Claims {
    let exp = (lic.entitlement_end + lic.grace)
        .min(now + lic.offline_allowance)
        .max(now);
    let sync_by = lic
        .entitlement_end
        .min(now + lic.sync_window)
        .clamp(now, exp);
    Claims {
        ver: 1,
        iss: ISSUER,
        aud: AUDIENCE,
        sub: lic.id.clone(),
        jti: uuid::Uuid::new_v4().to_string(),
        iat: now,
        sync_by,
        exp,
        dev: device.to_string(),
        act,
        customer: lic.customer.clone(),
        seats: lic.seats,
        features: lic.features.clone(),
        nce: nonce,
    }
}

fn save_failed(e: &Error) -> Response<Body> {
    tracing::error!(error = %e, "cannot persist state");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the license server cannot store its state",
    )
}

fn activate(
    app: &App,
    signer: &LicenseSigner,
    token: &str,
    device: &str,
    body: ActivateBody,
) -> Response<Body> {
    let now = unix_now();
    let mut store = app.store.lock().expect("state lock");
    let Some(lic) = store.state.license_by_token(token).cloned() else {
        return unknown_token();
    };
    if lic.revoked_at.is_some() {
        return error(
            StatusCode::GONE,
            "revoked",
            "this license was revoked by its administrator",
        );
    }
    if now >= lic.entitlement_end {
        return error(
            StatusCode::GONE,
            "license_expired",
            "this license's entitlement has ended; ask your administrator to renew it",
        );
    }
    let seats_in_use = store.state.active_seats(&lic.id);
    let (status, activation_id, secret) = match store.state.activation_mut(&lic.id, device) {
        Some(a) if a.state == SeatState::Active => {
            // A retry after a lost response: same seat, same secret, fresh license.
            a.device_name = body.device_name.clone().or(a.device_name.take());
            a.client_version = body.client_version.clone().or(a.client_version.take());
            a.platform = body.platform.clone().or(a.platform.take());
            (
                StatusCode::OK,
                a.activation_id.clone(),
                a.device_secret.clone(),
            )
        }
        existing => {
            if seats_in_use >= lic.seats as usize {
                return error(
                    StatusCode::CONFLICT,
                    "seat_limit",
                    &format!(
                        "all {} seat(s) of license {} are in use: deactivate another device (`privitty-edge license deactivate`) or ask your administrator for more seats",
                        lic.seats, lic.id
                    ),
                );
            }
            let record = Activation {
                license_id: lic.id.clone(),
                device_uuid: device.to_string(),
                activation_id: format!("act-{}", uuid::Uuid::new_v4().simple()),
                device_secret: super::random_token(32),
                state: SeatState::Active,
                device_name: body.device_name.clone(),
                client_version: body.client_version.clone(),
                platform: body.platform.clone(),
                activated_at: now,
                deactivated_at: None,
                last_sync_at: None,
                sync_seqs: Vec::new(),
                usage: BTreeMap::new(),
                report_ids: Vec::new(),
            };
            let ids = (record.activation_id.clone(), record.device_secret.clone());
            match existing {
                Some(old) => *old = record,
                None => store.state.activations.push(record),
            }
            (StatusCode::CREATED, ids.0, ids.1)
        }
    };
    if let Err(e) = store.save() {
        return save_failed(&e);
    }
    drop(store);
    tracing::info!(license = %lic.id, device, activation = %activation_id, new_seat = status == StatusCode::CREATED, "activated");
    let claims = claims_for(&lic, device, Some(activation_id.clone()), body.nonce, now);
    json_response(
        status,
        &json!({
            "activation_id": activation_id,
            "device_secret": secret,
            "license_jwt": signer.sign(&claims),
            "server_time": now,
        }),
    )
}

fn unknown_token() -> Response<Body> {
    error(
        StatusCode::NOT_FOUND,
        "unknown_token",
        "this delivery URL is not known to the license server",
    )
}

fn bad_secret() -> Response<Body> {
    error(
        StatusCode::UNAUTHORIZED,
        "bad_secret",
        "the device secret does not match this device's activation",
    )
}

fn sync(
    app: &App,
    signer: &LicenseSigner,
    token: &str,
    device: &str,
    secret: Option<String>,
    body: SyncBody,
) -> Response<Body> {
    let now = unix_now();
    let mut store = app.store.lock().expect("state lock");
    let Some(lic) = store.state.license_by_token(token).cloned() else {
        return unknown_token();
    };
    let Some(a) = store.state.activation_mut(&lic.id, device) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_activated",
            "this device holds no seat on this license; activate it first",
        );
    };
    if secret.as_deref() != Some(a.device_secret.as_str()) {
        return bad_secret();
    }
    if a.state == SeatState::Deactivated {
        return error(
            StatusCode::GONE,
            "deactivated",
            "this device's seat was released; activate again to take a seat",
        );
    }
    if body
        .activation_id
        .as_deref()
        .is_some_and(|id| id != a.activation_id)
    {
        return error(
            StatusCode::NOT_FOUND,
            "not_activated",
            "the activation id is not this device's current activation; activate again",
        );
    }
    if lic.revoked_at.is_some() {
        return error(
            StatusCode::GONE,
            "revoked",
            "this license was revoked by its administrator",
        );
    }
    if now >= lic.entitlement_end + lic.grace {
        return error(
            StatusCode::GONE,
            "license_expired",
            "this license's entitlement and grace period have ended; ask your administrator to renew it",
        );
    }
    a.last_sync_at = Some(now);
    if let Some(seq) = body.seq {
        a.sync_seqs.push(seq);
    }
    let mut acked = Vec::with_capacity(body.usage.len());
    for report in body.usage {
        if !a.report_ids.contains(&report.report_id) {
            for (name, n) in report.counters {
                *a.usage.entry(name).or_default() += n;
            }
            a.report_ids.push(report.report_id.clone());
        }
        acked.push(report.report_id);
    }
    let activation_id = a.activation_id.clone();
    if let Err(e) = store.save() {
        return save_failed(&e);
    }
    drop(store);
    tracing::info!(license = %lic.id, device, seq = ?body.seq, reports = acked.len(), "synced");
    let claims = claims_for(&lic, device, Some(activation_id), body.nonce, now);
    json_response(
        StatusCode::OK,
        &json!({
            "license_jwt": signer.sign(&claims),
            "server_time": now,
            "acked_report_ids": acked,
        }),
    )
}

fn deactivate(app: &App, token: &str, device: &str, secret: Option<String>) -> Response<Body> {
    let now = unix_now();
    let mut store = app.store.lock().expect("state lock");
    let Some(lic) = store.state.license_by_token(token).cloned() else {
        return unknown_token();
    };
    let Some(a) = store.state.activation_mut(&lic.id, device) else {
        return empty(StatusCode::NO_CONTENT);
    };
    if secret.as_deref() != Some(a.device_secret.as_str()) {
        return bad_secret();
    }
    if a.state == SeatState::Deactivated {
        return empty(StatusCode::NO_CONTENT);
    }
    a.state = SeatState::Deactivated;
    a.deactivated_at = Some(now);
    if let Err(e) = store.save() {
        return save_failed(&e);
    }
    tracing::info!(license = %lic.id, device, "deactivated");
    empty(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- admin

async fn admin(app: &Arc<App>, req: Request<Incoming>, segments: &[String]) -> Response<Body> {
    let expected = app
        .store
        .lock()
        .expect("state lock")
        .state
        .admin_token
        .clone();
    if bearer(&req).as_deref() != Some(expected.as_str()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "bad_admin_token",
            "admin calls need `Authorization: Bearer <contents of admin-token in the state dir>`",
        );
    }
    let method = req.method().clone();
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(reject) => return reject.into_response(),
    };
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let result = match (&method, segs.as_slice()) {
        (&Method::POST, ["licenses"]) => parse_json(&body).map(|b| create_license(app, b)),
        (&Method::GET, ["licenses"]) => Ok(list_licenses(app)),
        (&Method::POST, ["licenses", key, "revoke"]) => Ok(revoke(app, key)),
        (&Method::GET, ["activations"]) => Ok(list_activations(app)),
        (&Method::POST, ["offline"]) => parse_json(&body).map(|b| issue_offline(app, b)),
        (&Method::POST, ["faults"]) => parse_json(&body).map(|b| set_fault(app, b)),
        _ => Ok(error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such admin endpoint",
        )),
    };
    result.unwrap_or_else(Reject::into_response)
}

fn create_license(app: &App, req: CreateLicense) -> Response<Body> {
    if req.seats == 0 {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "seats must be at least 1",
        );
    }
    let now = unix_now();
    // Rounded up, so a license always lasts at least its entitlement (tests use windows of seconds).
    let now_ceil = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64 + i64::from(d.subsec_nanos() > 0));
    let secs = |v: u64| i64::try_from(v).unwrap_or(i64::MAX / 4);
    let lic = License {
        id: format!("lic-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        token: super::random_token(24),
        seats: req.seats,
        created_at: now,
        entitlement_end: now_ceil.saturating_add(secs(req.entitlement)),
        sync_window: secs(req.sync_window),
        grace: secs(req.grace),
        offline_allowance: secs(req.offline_allowance),
        customer: req.customer,
        features: req.features,
        revoked_at: None,
    };
    let mut store = app.store.lock().expect("state lock");
    store.state.licenses.push(lic.clone());
    if let Err(e) = store.save() {
        return save_failed(&e);
    }
    tracing::info!(license = %lic.id, seats = lic.seats, entitlement_end = lic.entitlement_end, "license created");
    json_response(
        StatusCode::CREATED,
        &json!({
            "license_id": lic.id,
            "delivery_url": format!("{}/v1/license/{}", app.public_url, lic.token),
            "entitlement_end": lic.entitlement_end,
        }),
    )
}

fn list_licenses(app: &App) -> Response<Body> {
    let store = app.store.lock().expect("state lock");
    let list: Vec<_> = store
        .state
        .licenses
        .iter()
        .map(|l| {
            json!({
                "license_id": l.id, "seats": l.seats, "seats_in_use": store.state.active_seats(&l.id),
                "created_at": l.created_at, "entitlement_end": l.entitlement_end,
                "sync_window": l.sync_window, "grace": l.grace, "offline_allowance": l.offline_allowance,
                "customer": l.customer, "features": l.features, "revoked_at": l.revoked_at,
            })
        })
        .collect();
    json_response(StatusCode::OK, &serde_json::Value::Array(list))
}

fn revoke(app: &App, key: &str) -> Response<Body> {
    let now = unix_now();
    let mut store = app.store.lock().expect("state lock");
    let Some(id) = store
        .state
        .license_by_id_or_token(key)
        .map(|l| l.id.clone())
    else {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_license",
            "no license with this id or token",
        );
    };
    let lic = store
        .state
        .licenses
        .iter_mut()
        .find(|l| l.id == id)
        .expect("found above");
    let revoked_at = *lic.revoked_at.get_or_insert(now);
    if let Err(e) = store.save() {
        return save_failed(&e);
    }
    tracing::info!(license = %id, "license revoked");
    json_response(
        StatusCode::OK,
        &json!({"license_id": id, "revoked_at": revoked_at}),
    )
}

fn list_activations(app: &App) -> Response<Body> {
    let store = app.store.lock().expect("state lock");
    let list: Vec<_> = store
        .state
        .activations
        .iter()
        .map(|a| {
            json!({
                "license_id": a.license_id, "device_uuid": a.device_uuid,
                "activation_id": a.activation_id, "state": a.state,
                "device_name": a.device_name, "client_version": a.client_version, "platform": a.platform,
                "activated_at": a.activated_at, "deactivated_at": a.deactivated_at,
                "last_sync_at": a.last_sync_at, "sync_seqs": a.sync_seqs, "usage": a.usage,
                "report_ids": a.report_ids,
            })
        })
        .collect();
    json_response(StatusCode::OK, &serde_json::Value::Array(list))
}

fn issue_offline(app: &App, req: IssueOffline) -> Response<Body> {
    if uuid::Uuid::parse_str(&req.device).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_device_uuid",
            "--device must be the device's UUID (its device.uuid file)",
        );
    }
    let now = unix_now();
    let store = app.store.lock().expect("state lock");
    let Some(lic) = store.state.license_by_id_or_token(&req.license).cloned() else {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_license",
            "no license with this id or token",
        );
    };
    drop(store);
    let device = req.device.to_ascii_lowercase();
    tracing::info!(license = %lic.id, device, "offline license issued");
    let claims = claims_for(&lic, &device, None, None, now);
    json_response(
        StatusCode::OK,
        &json!({"license_jwt": app.signer.sign(&claims)}),
    )
}

fn set_fault(app: &App, req: FaultRequest) -> Response<Body> {
    tracing::info!(fault = ?req.kind, count = req.count, "fault armed");
    *app.fault.lock().expect("fault lock") = (req.count > 0).then_some((req.kind, req.count));
    empty(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- start-up

/// `serve` options, as the CLI parses them.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    /// `Some(names)` serves HTTPS with a certificate for these names.
    pub tls_names: Option<Vec<String>>,
    /// Base of delivery URLs when devices reach the server by another address than the local one.
    pub public_url: Option<String>,
}

/// A bound, configured server, not yet serving: `base_url` is known before the first request.
#[derive(Debug)]
pub struct Prepared {
    pub base_url: String,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Arc<App>,
}

impl Prepared {
    /// Creates the state dir (0700), loads or generates keys, state and TLS material, binds, and writes
    /// `server-url`.
    pub async fn bind(opts: &ServeOptions) -> Result<Prepared, Error> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = &opts.state_dir;
        std::fs::create_dir_all(dir).map_err(|e| super::io_err(dir, e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| super::io_err(dir, e))?;
        let signer = LicenseSigner::load_or_create(dir)?;
        let store = Store::open(dir)?;
        let tls = match &opts.tls_names {
            Some(names) => Some(super::tls::server_config(dir, names)?),
            None => None,
        };
        let listener = TcpListener::bind(opts.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: opts.listen,
                source,
            })?;
        let local = listener.local_addr().map_err(|source| Error::Bind {
            addr: opts.listen,
            source,
        })?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        // A wildcard address is not something to connect to: local clients use loopback.
        let host = match local.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
            ip if ip.is_unspecified() => "[::1]".to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let base_url = format!("{scheme}://{host}:{}", local.port());
        super::state::write_atomic(
            &dir.join(super::SERVER_URL_FILE),
            format!("{base_url}\n").as_bytes(),
            0o644,
        )?;
        let public_url = opts
            .public_url
            .clone()
            .unwrap_or_else(|| base_url.clone())
            .trim_end_matches('/')
            .to_string();
        tracing::info!(url = %base_url, public_url, kid = signer.kid(), state_dir = %dir.display(), "license server ready");
        let app = Arc::new(App::new(store, signer, public_url));
        Ok(Prepared {
            base_url,
            listener,
            tls,
            app,
        })
    }

    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Error> {
        serve(self.listener, self.tls, self.app, shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn license(entitlement_end: i64) -> License {
        License {
            id: "lic-1".into(),
            token: "t".into(),
            seats: 1,
            created_at: 0,
            entitlement_end,
            sync_window: 7,
            grace: 14,
            offline_allowance: 30,
            customer: None,
            features: vec![],
            revoked_at: None,
        }
    }

    #[test]
    fn claims_follow_the_windows_and_stay_ordered() {
        let c = claims_for(&license(1000), "d", None, None, 100);
        assert_eq!((c.iat, c.sync_by, c.exp), (100, 107, 130));
        // near the entitlement end, sync_by stops there and exp at end + grace
        let c = claims_for(&license(103), "d", None, None, 100);
        assert_eq!((c.sync_by, c.exp), (103, 117));
        // inside the grace period: sync_by clamps to iat
        let c = claims_for(&license(90), "d", None, None, 100);
        assert_eq!((c.iat, c.sync_by, c.exp), (100, 100, 104));
    }

    #[test]
    fn token_path_is_redacted_in_logs() {
        let p = loggable_path("/v1/license/SECRETTOKEN/devices/x/sync");
        assert_eq!(p, "/v1/license/SEC…(redacted)/devices/x/sync");
        assert!(!loggable_path("/v1/license/SECRETTOKEN").contains("SECRETTOKEN"));
        assert!(!loggable_path("/admin/v1/licenses/SECRETTOKEN/revoke").contains("SECRETTOKEN"));
    }
}
