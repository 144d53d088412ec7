//! Client of the admin API, used by the `admin` subcommands: reads the server's URL, admin token and
//! (for HTTPS) CA from the state dir. Must not: print anything (the CLI decides what users see).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::server::{CreateLicense, FaultRequest, IssueOffline};
use super::state::ADMIN_TOKEN_FILE;
use super::tls::ca_path;
use super::{Error, SERVER_URL_FILE, io_err};

/// An admin session against the server that owns `state_dir`.
#[derive(Debug)]
pub struct AdminClient {
    url: String,
    token: String,
    http: reqwest::Client,
}

fn read_state_file(dir: &Path, name: &str) -> Result<String, Error> {
    let path: PathBuf = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(s.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NotStarted { path }),
        Err(e) => Err(io_err(&path, e)),
    }
}

impl AdminClient {
    pub fn from_state_dir(dir: &Path) -> Result<AdminClient, Error> {
        let url = read_state_file(dir, SERVER_URL_FILE)?;
        let token = read_state_file(dir, ADMIN_TOKEN_FILE)?;
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .no_proxy();
        if url.starts_with("https://") {
            let path = ca_path(dir);
            let pem = std::fs::read(&path).map_err(|e| io_err(&path, e))?;
            let ca = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| Error::Tls(format!("{}: {e}", path.display())))?;
            builder = builder.add_root_certificate(ca);
        }
        let http = builder.build().map_err(|e| Error::Tls(e.to_string()))?;
        Ok(AdminClient { url, token, http })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Error> {
        let url = format!("{}/admin/v1/{path}", self.url);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let unreachable = |e: reqwest::Error| Error::Unreachable {
            url: self.url.clone(),
            problem: chain(&e),
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(unreachable)?;
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| Error::Unreachable {
                url: self.url.clone(),
                problem: format!("answer is not JSON: {e}"),
            })?
        };
        if !status.is_success() {
            return Err(Error::Refused {
                status: status.as_u16(),
                code: value["error"].as_str().unwrap_or("?").to_string(),
                message: value["message"].as_str().unwrap_or("").to_string(),
            });
        }
        Ok(value)
    }

    /// Returns `{"license_id","delivery_url","entitlement_end"}`.
    pub async fn create_license(&self, req: &CreateLicense) -> Result<Value, Error> {
        let body = serde_json::to_value(req).expect("serializes");
        self.call(reqwest::Method::POST, "licenses", Some(body))
            .await
    }

    pub async fn licenses(&self) -> Result<Value, Error> {
        self.call(reqwest::Method::GET, "licenses", None).await
    }

    /// `key` is a license id or its TOKEN.
    pub async fn revoke(&self, key: &str) -> Result<Value, Error> {
        if key.is_empty() || key.contains('/') {
            return Err(Error::Usage(
                "a license id or TOKEN contains no '/'".to_string(),
            ));
        }
        self.call(
            reqwest::Method::POST,
            &format!("licenses/{key}/revoke"),
            None,
        )
        .await
    }

    pub async fn activations(&self) -> Result<Value, Error> {
        self.call(reqwest::Method::GET, "activations", None).await
    }

    /// Returns the license JWT (no `act` claim).
    pub async fn issue_offline(&self, req: &IssueOffline) -> Result<String, Error> {
        let body = serde_json::to_value(req).expect("serializes");
        let v = self
            .call(reqwest::Method::POST, "offline", Some(body))
            .await?;
        Ok(v["license_jwt"].as_str().unwrap_or_default().to_string())
    }

    pub async fn fault(&self, req: &FaultRequest) -> Result<(), Error> {
        let body = serde_json::to_value(req).expect("serializes");
        self.call(reqwest::Method::POST, "faults", Some(body))
            .await
            .map(drop)
    }
}

/// An error with its causes, `a: b: c` (reqwest's own message omits the interesting part).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
