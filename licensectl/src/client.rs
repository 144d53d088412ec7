//! The protocol v1 HTTP client: reqwest with rustls trusting the system roots plus `SSL_CERT_FILE`,
//! proxies from the environment, connect 10 s / request 30 s timeouts, 64 KiB response cap.
//!
//! Owns: the three calls of license-protocol.md and the classification of every failure into a
//! definitive refusal ([`Error::Refused`]) or a transient one ([`Error::Unreachable`]).
//! Must not: write files (ops.rs commits), or let the TOKEN or device secret into an error or log.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use privitty_base::chain::error_chain;
use privitty_base::env;

use crate::error::{Error, TransientCause};
use crate::url::DeliveryUrl;
use crate::usage::UsageReport;
use crate::vocab::unix_secs;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Where Debian, Alpine, Fedora and macOS-like layouts keep the system bundle; the first that
/// exists is read in addition to `SSL_CERT_FILE`.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];
const TLS_HINT: &str = "TLS failed: if a proxy inspects HTTPS or the server uses a private CA, \
                        set SSL_CERT_FILE to a PEM bundle with that CA";
const CONNECT_HINT: &str = "check the host name, the network, and HTTPS_PROXY/NO_PROXY";

#[derive(Debug, Serialize)]
pub(crate) struct ActivateBody<'a> {
    pub device_name: &'a str,
    pub client_version: &'a str,
    pub platform: &'a str,
    pub nonce: &'a str,
}

#[derive(Deserialize)]
pub(crate) struct ActivateResponse {
    pub activation_id: String,
    pub device_secret: String,
    pub license_jwt: String,
    /// Unsigned, so informational only (logged when far from the local clock); the high-water
    /// mark moves with the license's signed `iat` instead.
    #[serde(deserialize_with = "server_time")]
    pub server_time: i64,
}

#[derive(Debug, Serialize)]
pub(crate) struct SyncBody<'a> {
    pub activation_id: &'a str,
    pub current_jti: Option<&'a str>,
    pub seq: u64,
    pub nonce: &'a str,
    pub usage: &'a [UsageReport],
}

#[derive(Deserialize)]
pub(crate) struct SyncResponse {
    pub license_jwt: String,
    /// Unsigned, so informational only (see [`ActivateResponse::server_time`]).
    #[serde(deserialize_with = "server_time")]
    pub server_time: i64,
    #[serde(default)]
    pub acked_report_ids: Vec<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: Option<String>,
    message: Option<String>,
}

/// `server_time` as unix seconds; RFC 3339 text is accepted too, for servers that send it.
fn server_time<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Time {
        Secs(i64),
        Float(f64),
        Text(String),
    }
    match Time::deserialize(d)? {
        Time::Secs(s) => Ok(s),
        Time::Float(f) if f.is_finite() => Ok(f as i64),
        Time::Float(_) => Err(serde::de::Error::custom(
            "server_time is not a finite number",
        )),
        Time::Text(t) => humantime::parse_rfc3339_weak(&t)
            .map(unix_secs)
            .map_err(|e| serde::de::Error::custom(format!("server_time: {e}"))),
    }
}

/// One license server, addressed by its delivery URL.
pub(crate) struct Client {
    http: reqwest::Client,
    url: DeliveryUrl,
}

impl Client {
    pub fn new(url: &DeliveryUrl) -> Result<Client, Error> {
        let extra = std::env::var_os(env::SSL_CERT_FILE)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        Client::with_extra_ca(url, extra.as_deref())
    }

    /// As [`Client::new`] with the extra CA bundle given explicitly instead of from `SSL_CERT_FILE`.
    pub fn with_extra_ca(url: &DeliveryUrl, extra_ca: Option<&Path>) -> Result<Client, Error> {
        let roots = root_store(extra_ca)?;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Client(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            // A redirect would move the device secret to a URL nobody configured.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("privitty-edge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Client(e.without_url().to_string()))?;
        Ok(Client {
            http,
            url: url.clone(),
        })
    }

    /// `PUT <url>/devices/<uuid>`; returns whether a new seat was taken (201) and the body.
    pub async fn activate(
        &self,
        device_uuid: &str,
        body: &ActivateBody<'_>,
    ) -> Result<(bool, ActivateResponse), Error> {
        let path = format!("devices/{device_uuid}");
        let (status, bytes) = self
            .call(Method::PUT, &path, None, Some(body), "activation")
            .await?;
        let resp = self.parse(&bytes, "activation")?;
        Ok((status == StatusCode::CREATED, resp))
    }

    /// `POST <url>/devices/<uuid>/sync` with the device secret.
    pub async fn sync(
        &self,
        device_uuid: &str,
        secret: &str,
        body: &SyncBody<'_>,
    ) -> Result<SyncResponse, Error> {
        let path = format!("devices/{device_uuid}/sync");
        let (_, bytes) = self
            .call(Method::POST, &path, Some(secret), Some(body), "sync")
            .await?;
        self.parse(&bytes, "sync")
    }

    /// `DELETE <url>/devices/<uuid>` with the device secret.
    pub async fn deactivate(&self, device_uuid: &str, secret: &str) -> Result<(), Error> {
        let path = format!("devices/{device_uuid}");
        self.call::<()>(Method::DELETE, &path, Some(secret), None, "deactivation")
            .await?;
        Ok(())
    }

    fn parse<T: DeserializeOwned>(
        &self,
        bytes: &[u8],
        operation: &'static str,
    ) -> Result<T, Error> {
        serde_json::from_slice(bytes).map_err(|e| {
            self.transient(
                operation,
                TransientCause::BadResponse,
                format!("the response is not the expected JSON ({e})"),
                None,
            )
        })
    }

    pub fn transient(
        &self,
        operation: &'static str,
        cause: TransientCause,
        detail: String,
        retry_after: Option<Duration>,
    ) -> Error {
        let hint = match cause {
            TransientCause::Tls => Some(TLS_HINT),
            TransientCause::Connect | TransientCause::Timeout => Some(CONNECT_HINT),
            TransientCause::BadLicense(_) => {
                Some("is the URL a Privitty license server, and are its keys trusted here?")
            }
            _ => None,
        };
        Error::Unreachable {
            host: self.url.host(),
            operation,
            cause,
            detail: self.url.scrub(&detail),
            hint,
            retry_after,
        }
    }

    async fn call<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<&B>,
        operation: &'static str,
    ) -> Result<(StatusCode, Vec<u8>), Error> {
        tracing::debug!(server = %self.url.host(), %method, operation, "license server request");
        let mut req = self
            .http
            .request(method, self.url.join(path))
            .header("Accept", "application/json");
        if let Some(secret) = bearer {
            req = req.bearer_auth(secret);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| self.classify(e, operation))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
        let bytes = self.read_capped(resp, operation).await?;
        tracing::debug!(server = %self.url.host(), status = status.as_u16(), operation, "license server response");
        if status.is_success() {
            return Ok((status, bytes));
        }
        let parsed: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
        // The code is shown and stored like the message, so it is scrubbed the same way.
        let code = parsed
            .as_ref()
            .and_then(|b| b.error.as_deref())
            .filter(|c| !c.is_empty())
            .map(|c| self.url.scrub(&truncate(c)));
        let message = parsed.and_then(|b| b.message).unwrap_or_default();
        if !status.is_client_error() && !status.is_server_error() {
            // A redirect (or another status the protocol never sends) comes from something between
            // the device and the server, e.g. a captive portal: not a refusal by the server. The
            // target is not shown, as it may repeat the delivery URL.
            return Err(self.transient(
                operation,
                TransientCause::Status(status.as_u16()),
                format!(
                    "HTTP {status} instead of an answer (a redirect, which is never followed: is a \
                     captive portal or proxy in the way, or has the delivery URL changed?)"
                ),
                None,
            ));
        }
        let transient = matches!(status.as_u16(), 408 | 429) || status.is_server_error();
        if transient {
            let mut detail = format!("HTTP {status}");
            if let Some(c) = &code {
                detail.push_str(&format!(" {c}"));
            }
            if !message.is_empty() {
                detail.push_str(&format!(": {}", truncate(&message)));
            }
            if let Some(after) = retry_after {
                detail.push_str(&format!(" (retry after {} s)", after.as_secs()));
            }
            return Err(self.transient(
                operation,
                TransientCause::Status(status.as_u16()),
                detail,
                retry_after,
            ));
        }
        let code = code.unwrap_or_else(|| format!("http_{}", status.as_u16()));
        let hint = refusal_hint(&code);
        let message = if message.is_empty() {
            status
                .canonical_reason()
                .unwrap_or("no message")
                .to_string()
        } else {
            self.url.scrub(&truncate(&message))
        };
        tracing::debug!(server = %self.url.host(), code = %code, operation, "license server refused");
        Err(Error::Refused {
            host: self.url.host(),
            operation,
            status: status.as_u16(),
            code,
            message,
            hint,
        })
    }

    async fn read_capped(
        &self,
        mut resp: reqwest::Response,
        operation: &'static str,
    ) -> Result<Vec<u8>, Error> {
        let too_big = || {
            self.transient(
                operation,
                TransientCause::BadResponse,
                format!(
                    "the response is larger than {} KiB",
                    MAX_RESPONSE_BYTES / 1024
                ),
                None,
            )
        };
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
        {
            return Err(too_big());
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| self.classify(e, operation))?
        {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(too_big());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }

    fn classify(&self, e: reqwest::Error, operation: &'static str) -> Error {
        let tls = is_tls_error(&e);
        let cause = if e.is_timeout() || is_timeout_error(&e) {
            TransientCause::Timeout
        } else if tls {
            TransientCause::Tls
        } else if e.is_connect() {
            TransientCause::Connect
        } else {
            TransientCause::Other
        };
        self.transient(operation, cause, error_chain(&e.without_url()), None)
    }
}

/// `Retry-After`: delay-seconds, or an HTTP-date (`Sun, 06 Nov 1994 08:49:37 GMT`) turned into the
/// time left from `now` (zero when it is past).
fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let parts: Vec<&str> = value.split_whitespace().collect();
    let [_weekday, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == month)? + 1;
    let rfc3339 = format!("{year}-{month:02}-{day:0>2}T{time}Z");
    let at = humantime::parse_rfc3339(&rfc3339).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn truncate(s: &str) -> String {
    const MAX: usize = 300;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn refusal_hint(code: &str) -> &'static str {
    match code {
        "unknown_token" => "check the delivery URL: the server does not know its TOKEN",
        "seat_limit" => "deactivate another device or ask your administrator for more seats",
        "revoked" => "the license was revoked; ask your administrator for a new delivery URL",
        "license_expired" => "the license has expired; ask your administrator to renew it",
        "bad_secret" => {
            "the server did not accept this device's credentials; activate again with the delivery URL"
        }
        "not_activated" => {
            "the server does not know this activation; activate again with the delivery URL"
        }
        "deactivated" => {
            "this device's seat was released; activate again with the delivery URL to take a seat"
        }
        _ => "check the delivery URL or ask your administrator",
    }
}

/// The causes of an error, looking inside `io::Error`s, whose `source()` skips their payload.
fn causes<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |s| match s.downcast_ref::<std::io::Error>() {
        Some(io) => io
            .get_ref()
            .map(|inner| inner as &(dyn std::error::Error + 'static)),
        None => s.source(),
    })
}

/// Connect timeouts surface as connect errors wrapping a "timed out" cause.
fn is_timeout_error(e: &reqwest::Error) -> bool {
    causes(e).any(|s| {
        s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            || s.to_string().contains("timed out")
    })
}

fn is_tls_error(e: &reqwest::Error) -> bool {
    causes(e).any(|s| s.downcast_ref::<rustls::Error>().is_some())
}

/// The system roots plus, when `SSL_CERT_FILE` is set, that bundle. rustls-native-certs reads only
/// `SSL_CERT_FILE` when it is set, so the system bundle is then read here explicitly.
fn root_store(extra_ca: Option<&Path>) -> Result<rustls::RootCertStore, Error> {
    let mut roots = rustls::RootCertStore::empty();
    match extra_ca {
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::debug!(error = %e, "skipping part of the system CA store");
            }
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(added, ignored, "loaded system CA roots");
        }
        Some(extra) => {
            if let Some(system) = SYSTEM_BUNDLES.iter().map(Path::new).find(|p| p.is_file()) {
                match load_pem_bundle(system) {
                    Ok(certs) => {
                        roots.add_parsable_certificates(certs);
                    }
                    Err(problem) => {
                        tracing::warn!(path = %system.display(), %problem, "cannot read the system CA bundle")
                    }
                }
            }
            let path = extra.to_path_buf();
            let certs = load_pem_bundle(&path).map_err(|problem| Error::CaBundle {
                path: path.clone(),
                problem,
            })?;
            if certs.is_empty() {
                return Err(Error::CaBundle {
                    path,
                    problem: "it holds no PEM certificate".into(),
                });
            }
            let (added, ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(Error::CaBundle {
                    path,
                    problem: format!("none of its {ignored} certificates is usable"),
                });
            }
            tracing::debug!(path = %path.display(), added, "loaded extra CA roots");
        }
    }
    Ok(roots)
}

fn load_pem_bundle(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    rustls_pemfile::certs(&mut std::io::BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate bundle ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // 1994-11-06T08:49:37Z
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn refusal_hints_name_the_remedy() {
        assert!(refusal_hint("seat_limit").contains("more seats"));
        assert!(refusal_hint("unknown_token").contains("delivery URL"));
        assert!(refusal_hint("something_new").contains("administrator"));
    }
}
