//! The health probe of the local daemon: `privitty-edge health` and the image's `HEALTHCHECK`.
//!
//! Owns: the URL the probe uses for a listen address, and `GET /health` with its verdict. Must
//! not: use a proxy, or wait longer than a health check may.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// The daemon's base URL for the probe, from its listen address: the image listens on
/// `0.0.0.0:7200`, which the probe reaches over loopback. An unparsable or missing value falls
/// back to the default (the probe then reports what it could not reach).
pub fn url_for_listen(listen: Option<&str>) -> String {
    const DEFAULT: &str = "http://127.0.0.1:7200";
    let Some(Ok(mut addr)) = listen.map(|l| l.trim().parse::<SocketAddr>()) else {
        return DEFAULT.to_string();
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{addr}")
}

/// `GET <base>/health` on the local daemon: Ok when it answers 200 with `"status":"ok"`.
/// Never uses a proxy. Returns a description of what was wrong otherwise.
pub async fn check_health(base: &str) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("{}/health", base.trim_end_matches('/'));
    let failed =
        |e: reqwest::Error| format!("{url}: {}", crate::chain::error_chain(&e.without_url()));
    let resp = http.get(&url).send().await.map_err(failed)?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(failed)?;
    if status != reqwest::StatusCode::OK {
        return Err(format!("{url} answered HTTP {status}"));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&body).map_err(|_| format!("{url} did not answer JSON"))?;
    match json.get("status").and_then(|s| s.as_str()) {
        Some("ok") => Ok(()),
        other => Err(format!(
            "{url} reports status {}",
            other.unwrap_or("(missing)")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_reaches_the_listen_address_over_loopback() {
        assert_eq!(url_for_listen(None), "http://127.0.0.1:7200");
        assert_eq!(
            url_for_listen(Some("0.0.0.0:7300")),
            "http://127.0.0.1:7300"
        );
        assert_eq!(url_for_listen(Some("[::]:7301")), "http://[::1]:7301");
        assert_eq!(
            url_for_listen(Some("10.1.2.3:7302")),
            "http://10.1.2.3:7302"
        );
        assert_eq!(
            url_for_listen(Some("not an address")),
            "http://127.0.0.1:7200"
        );
    }

    #[tokio::test]
    async fn nothing_listening_is_unhealthy_and_says_where() {
        // A port that was free a moment ago: connection refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let base = format!("http://127.0.0.1:{port}");
        let problem = check_health(&base).await.unwrap_err();
        assert!(
            problem.starts_with(&format!("{base}/health: ")),
            "{problem}"
        );
    }
}
