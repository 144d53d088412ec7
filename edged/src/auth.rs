//! Who may use the HTTP API: the bearer token on `/rpc` and `/events` (and on `/metrics` when
//! `PRIVITTY_METRICS_AUTH=token`), the Host check against DNS rebinding, and the CORS origin
//! allow-list.
//!
//! Owns: the decision per request (pass, 401, 421, 403) and keeping the expected token current (a
//! rotation by `privitty-edge api-token --rotate` or a changed secret file takes effect within
//! [`RELOAD_INTERVAL`], and at once for a request that already carries the new token). Must not:
//! log or echo a token, or run methods.
//!
//! Trust boundary: every network client is untrusted until it shows the token; the token file is
//! in the untrusted data volume and is read with [`licensectl::api_token::read_file`] (no symlink,
//! no FIFO, size-capped), off the async runtime.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http::HeaderMap;
use http::header::{AUTHORIZATION, HOST};
use licensectl::api_token::{self, ApiTokenError, Source};

/// How often the token file is checked for a rotation.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// When the token is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// Every `/rpc` and `/events` request must carry the token.
    Required,
    /// Requests without a token pass; a wrong token is still refused (loopback default).
    Optional,
    /// No check at all (`PRIVITTY_API_AUTH=off`).
    Off,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Required => "required",
            AuthMode::Optional => "optional",
            AuthMode::Off => "off",
        }
    }
}

/// `PRIVITTY_API_AUTH`: resolved against the address actually served (an inherited socket may
/// differ from `--listen`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthSetting {
    /// Required unless the listener is on a loopback address.
    Auto,
    Required,
    Off,
}

impl AuthSetting {
    pub fn parse(text: &str) -> Option<AuthSetting> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(AuthSetting::Auto),
            "required" => Some(AuthSetting::Required),
            "off" => Some(AuthSetting::Off),
            _ => None,
        }
    }

    pub fn resolve(self, served: SocketAddr) -> AuthMode {
        match self {
            AuthSetting::Required => AuthMode::Required,
            AuthSetting::Off => AuthMode::Off,
            AuthSetting::Auto if served.ip().is_loopback() => AuthMode::Optional,
            AuthSetting::Auto => AuthMode::Required,
        }
    }
}

/// `PRIVITTY_METRICS_AUTH`: who may read `GET /metrics`.
///
/// `Open` is the default: the metrics tell what `/health` tells (license status and times, request
/// counts), nothing secret, and the API token opens every method, so asking for it would put a
/// token that can send files into every Prometheus configuration. `Token` asks for it exactly when
/// `/rpc` does (`PRIVITTY_API_AUTH`: required off loopback by default, optional on loopback).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsAuth {
    Open,
    Token,
}

impl MetricsAuth {
    pub fn parse(text: &str) -> Option<MetricsAuth> {
        match text.trim().to_ascii_lowercase().as_str() {
            "open" => Some(MetricsAuth::Open),
            "token" => Some(MetricsAuth::Token),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MetricsAuth::Open => "open",
            MetricsAuth::Token => "token",
        }
    }
}

/// The outcome of the token check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// No `Authorization: Bearer` header while the token is required.
    Missing,
    /// A token that is not the current one (or a malformed header).
    Wrong,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    mtime: i64,
    mtime_nsec: i64,
    len: u64,
}

/// The identity of the file the token is read from: through links for a mounted secret (a
/// Kubernetes Secret update swaps the `..data` link, not the file name), of the file itself in the
/// data volume.
fn file_id(source: &Source) -> Option<FileId> {
    let m = match source {
        Source::Env => return None,
        Source::SecretFile(p) => std::fs::metadata(p).ok()?,
        Source::DataDir(p) => std::fs::symlink_metadata(p).ok()?,
    };
    Some(FileId {
        dev: m.dev(),
        ino: m.ino(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
        len: m.len(),
    })
}

/// The token check, shared by every connection.
#[derive(Debug)]
pub struct Authenticator {
    mode: AuthMode,
    /// Where the token is read from (`Env`: never re-read).
    source: Source,
    expected: RwLock<Arc<str>>,
    /// Identity of the file when `expected` was read.
    seen: Mutex<Option<FileId>>,
}

impl Authenticator {
    /// Reads (or, for the data-directory file, creates) the token. Blocking.
    pub fn load(
        mode: AuthMode,
        source: &Source,
        env_token: Option<&str>,
        accounts: &std::path::Path,
    ) -> Result<Authenticator, ApiTokenError> {
        let token = api_token::current(source, env_token, accounts)?;
        let id = file_id(source);
        Ok(Authenticator {
            mode,
            source: source.clone(),
            expected: RwLock::new(token.into()),
            seen: Mutex::new(id),
        })
    }

    /// A fixed token (tests, embedding).
    pub fn fixed(mode: AuthMode, token: &str) -> Authenticator {
        Authenticator {
            mode,
            source: Source::Env,
            expected: RwLock::new(token.into()),
            seen: Mutex::new(None),
        }
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Checks a request's `Authorization` header.
    pub fn check(&self, headers: &HeaderMap) -> Verdict {
        if self.mode == AuthMode::Off {
            return Verdict::Pass;
        }
        let Some(value) = headers.get(AUTHORIZATION) else {
            return match self.mode {
                AuthMode::Required => Verdict::Missing,
                _ => Verdict::Pass,
            };
        };
        let Some(presented) = bearer(value.as_bytes()) else {
            return Verdict::Wrong;
        };
        if self.matches(presented) {
            return Verdict::Pass;
        }
        // Maybe the token was just rotated and this client already has the new one: one `stat`
        // (the file is read only when it changed), so a flood of wrong tokens stays cheap.
        if self.reload_if_changed() && self.matches(presented) {
            return Verdict::Pass;
        }
        Verdict::Wrong
    }

    fn matches(&self, presented: &[u8]) -> bool {
        let expected = self.expected.read().expect("token lock").clone();
        api_token::matches(presented, expected.as_bytes())
    }

    /// Re-reads the token file when its identity (inode, size, mtime) changed. Returns whether the
    /// expected token changed. A file that became unusable keeps the previous token (logged): an
    /// attacker in the volume can't turn authentication off by breaking the file.
    pub fn reload_if_changed(&self) -> bool {
        let Some(path) = self.source.path() else {
            return false;
        };
        let now = file_id(&self.source);
        {
            let seen = self.seen.lock().expect("seen lock");
            if *seen == now {
                return false;
            }
        }
        match api_token::read_source_file(&self.source) {
            Ok(Some(token)) => {
                let changed = {
                    let mut expected = self.expected.write().expect("token lock");
                    let changed = &**expected != token.as_str();
                    *expected = token.into();
                    changed
                };
                *self.seen.lock().expect("seen lock") = now;
                if changed {
                    tracing::info!(path = %path.display(), "API token changed; the new one is in effect");
                }
                changed
            }
            Ok(None) => {
                *self.seen.lock().expect("seen lock") = now;
                tracing::warn!(path = %path.display(), "the API token file is gone; keeping the last token (run `privitty-edge api-token --rotate` to make a new one)");
                false
            }
            Err(e) => {
                *self.seen.lock().expect("seen lock") = now;
                tracing::warn!(error = %e, "keeping the last API token");
                false
            }
        }
    }
}

/// Checks the token file every [`RELOAD_INTERVAL`] until `stop`.
pub async fn watch(auth: Arc<Authenticator>, mut stop: tokio::sync::watch::Receiver<bool>) {
    if auth.source.path().is_none() || auth.mode == AuthMode::Off {
        return;
    }
    let mut tick = tokio::time::interval(RELOAD_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let a = auth.clone();
                let _ = tokio::task::spawn_blocking(move || a.reload_if_changed()).await;
            }
            _ = crate::stopped(&mut stop) => return,
        }
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive, as RFC 7235 says).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// The Host names a loopback listener answers to (DNS rebinding defence): a page on
/// `evil.example` that re-resolves to 127.0.0.1 still sends `Host: evil.example`.
#[derive(Clone, Debug)]
pub struct HostCheck {
    /// `None`: no check (a non-loopback listener, where the token is required instead).
    allowed: Option<Vec<String>>,
    port: u16,
}

impl HostCheck {
    /// `extra` = the operator's additional names (`PRIVITTY_ALLOWED_HOSTS`).
    pub fn new(listen: SocketAddr, extra: &[String]) -> HostCheck {
        if !listen.ip().is_loopback() {
            return HostCheck {
                allowed: None,
                port: listen.port(),
            };
        }
        let mut names: Vec<String> = ["localhost", "127.0.0.1", "[::1]"]
            .into_iter()
            .map(String::from)
            .collect();
        if let IpAddr::V4(ip) = listen.ip()
            && ip != std::net::Ipv4Addr::LOCALHOST
        {
            names.push(ip.to_string());
        }
        names.extend(extra.iter().map(|h| h.to_ascii_lowercase()));
        HostCheck {
            allowed: Some(names),
            port: listen.port(),
        }
    }

    /// Whether the request's Host header names this gateway. A request without Host (HTTP/1.0
    /// tools) passes: browsers always send one.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(allowed) = &self.allowed else {
            return true;
        };
        let Some(host) = headers.get(HOST).and_then(|h| h.to_str().ok()) else {
            return !headers.contains_key(HOST);
        };
        let host = host.trim().to_ascii_lowercase();
        let (name, port) = match host.rsplit_once(':') {
            Some((n, p)) if !n.ends_with(':') && (n.starts_with('[') || !n.contains(':')) => {
                match p.parse::<u16>() {
                    Ok(p) => (n.to_string(), Some(p)),
                    Err(_) => return false,
                }
            }
            _ => (host.clone(), None),
        };
        if port.is_some_and(|p| p != self.port) {
            return false;
        }
        allowed.contains(&name)
    }
}

/// Which web origins may call the API (CORS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cors {
    /// No CORS headers; a POST that names an Origin is refused (browsers add it to cross-site posts).
    Off,
    /// Any origin (`*`); refused at start-up while the token is required.
    Any,
    /// Exactly these origins (`scheme://host[:port]`, compared case-insensitively).
    Origins(Vec<String>),
}

impl Cors {
    /// Parses the `--cors` / `PRIVITTY_CORS` value.
    pub fn parse(text: &str) -> Result<Cors, String> {
        let t = text.trim();
        match t.to_ascii_lowercase().as_str() {
            "" | "0" | "false" | "no" | "off" => return Ok(Cors::Off),
            "*" | "1" | "true" | "yes" | "on" => return Ok(Cors::Any),
            _ => {}
        }
        let mut origins = Vec::new();
        for o in t.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let lower = o.trim_end_matches('/').to_ascii_lowercase();
            let ok = (lower.starts_with("http://") || lower.starts_with("https://"))
                && !lower.split_once("://").is_some_and(|(_, rest)| {
                    rest.is_empty() || rest.contains('/') || rest.contains('*')
                });
            if !ok {
                return Err(format!(
                    "{o:?} is not an origin like https://viewer.example or http://127.0.0.1:8080"
                ));
            }
            origins.push(lower);
        }
        Ok(Cors::Origins(origins))
    }

    /// The `Access-Control-Allow-Origin` value for a request from `origin`, if it is let in.
    pub fn allow(&self, origin: Option<&str>) -> Option<String> {
        match (self, origin) {
            (Cors::Off, _) | (_, None) => None,
            (Cors::Any, Some(_)) => Some("*".to_string()),
            (Cors::Origins(list), Some(o)) => {
                let o = o.trim().to_ascii_lowercase();
                list.contains(&o).then_some(o)
            }
        }
    }

    pub fn enabled(&self) -> bool {
        *self != Cors::Off
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const TOKEN: &str = "0123456789abcdef-token";

    #[test]
    fn required_optional_off() {
        let good = headers(&[("authorization", "Bearer 0123456789abcdef-token")]);
        let lower = headers(&[("authorization", "bearer   0123456789abcdef-token ")]);
        let wrong = headers(&[("authorization", "Bearer 0123456789abcdef-tokeX")]);
        let basic = headers(&[("authorization", "Basic 0123456789abcdef-token")]);
        let none = HeaderMap::new();
        let req = Authenticator::fixed(AuthMode::Required, TOKEN);
        assert_eq!(req.check(&good), Verdict::Pass);
        assert_eq!(req.check(&lower), Verdict::Pass);
        assert_eq!(req.check(&wrong), Verdict::Wrong);
        assert_eq!(req.check(&basic), Verdict::Wrong);
        assert_eq!(req.check(&none), Verdict::Missing);
        let opt = Authenticator::fixed(AuthMode::Optional, TOKEN);
        assert_eq!(opt.check(&none), Verdict::Pass);
        assert_eq!(opt.check(&good), Verdict::Pass);
        assert_eq!(opt.check(&wrong), Verdict::Wrong);
        let off = Authenticator::fixed(AuthMode::Off, TOKEN);
        assert_eq!(off.check(&wrong), Verdict::Pass);
    }

    #[test]
    fn a_rotated_token_is_taken_at_once_and_the_old_one_stops() {
        let dir = tempfile::tempdir().unwrap();
        let source = Source::DataDir(dir.path().join(api_token::API_TOKEN_FILE));
        let auth = Authenticator::load(AuthMode::Required, &source, None, dir.path()).unwrap();
        let old = api_token::current(&source, None, dir.path()).unwrap();
        let with = |t: &str| headers(&[("authorization", &format!("Bearer {t}"))]);
        assert_eq!(auth.check(&with(&old)), Verdict::Pass);
        let new = api_token::rotate(&source, dir.path()).unwrap();
        // A client with the new token passes on its first request (the mismatch re-reads the file).
        assert_eq!(auth.check(&with(&new)), Verdict::Pass);
        assert_eq!(auth.check(&with(&old)), Verdict::Wrong);
        // A broken file keeps the last good token (failing closed is the watcher's job to log).
        std::fs::write(dir.path().join(api_token::API_TOKEN_FILE), "x").unwrap();
        assert!(!auth.reload_if_changed());
        assert_eq!(auth.check(&with(&new)), Verdict::Pass);
    }

    #[test]
    fn host_check_on_loopback_only() {
        let lo: SocketAddr = "127.0.0.1:7200".parse().unwrap();
        let check = HostCheck::new(lo, &["gw.local".to_string()]);
        for ok in [
            "127.0.0.1:7200",
            "localhost:7200",
            "LOCALHOST",
            "[::1]:7200",
            "gw.local:7200",
        ] {
            assert!(check.allows(&headers(&[("host", ok)])), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:7200",
            "127.0.0.1:80",
            "127.0.0.1.evil.example",
            "localhost:x",
        ] {
            assert!(!check.allows(&headers(&[("host", bad)])), "{bad}");
        }
        assert!(check.allows(&HeaderMap::new()));
        let any = HostCheck::new("0.0.0.0:7200".parse().unwrap(), &[]);
        assert!(any.allows(&headers(&[("host", "evil.example")])));
    }

    #[test]
    fn cors_values() {
        assert_eq!(Cors::parse("").unwrap(), Cors::Off);
        assert_eq!(Cors::parse("true").unwrap(), Cors::Any);
        let c = Cors::parse("https://a.example, http://127.0.0.1:8080/").unwrap();
        assert_eq!(
            c.allow(Some("HTTPS://A.example")).as_deref(),
            Some("https://a.example")
        );
        assert_eq!(c.allow(Some("https://b.example")), None);
        assert_eq!(
            c.allow(Some("http://127.0.0.1:8080")).as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert!(Cors::parse("a.example").is_err());
        assert!(Cors::parse("https://*.example").is_err());
    }
}
