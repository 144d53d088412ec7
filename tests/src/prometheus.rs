//! Harness for tests against a real Prometheus (Debian's `prometheus` package, which brings
//! `promtool`): runs the server on loopback with a temp config and storage, scraping one target
//! every [`SCRAPE_INTERVAL`] with the project's alert rules loaded, and reads its HTTP API. Also
//! parses the text exposition format, for reading `/metrics` directly.
//!
//! Owns: the Prometheus process for a test's life (killed on drop, its output printed when the
//! test fails) and its config. Must not sleep to wait: every wait polls with a deadline. Never
//! starts or touches a system service: the package's own service is not used.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::init_harness::{has_command, skip};
use crate::managed_harness::get;
use crate::support::{Proc, eventually};

/// How often the test Prometheus scrapes its target.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);
/// How often it evaluates the alert rules.
pub const EVALUATION_INTERVAL: Duration = Duration::from_millis(500);
const START_DEADLINE: Duration = Duration::from_secs(60);

/// `deploy/prometheus/` in the repository.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the repository")
        .join("deploy/prometheus")
}

/// The alert rules shipped in the repository.
pub fn rules_file() -> PathBuf {
    deploy_dir().join("alerts.yml")
}

/// True when `prometheus` and `promtool` are installed; otherwise reports that `test` is skipped
/// (`SKIPPED: …`), or fails it under `PRIVITTY_REQUIRE_ALL_TESTS=1`.
pub fn available(test: &str) -> bool {
    if has_command("prometheus") && has_command("promtool") {
        return true;
    }
    skip(
        test,
        "Prometheus is not installed (Debian: `apt-get install --no-install-recommends prometheus`, \
         which brings promtool)",
    )
}

/// Runs `promtool` with `args`, feeding `stdin`.
pub fn promtool(args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    let mut input = child.stdin.take().expect("piped stdin");
    if let Some(bytes) = stdin {
        input.write_all(bytes).expect("write to promtool");
    }
    drop(input);
    child.wait_with_output().expect("promtool output")
}

/// One sample: its labels (with `__name__`) and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn name(&self) -> &str {
        self.labels.get("__name__").map_or("", String::as_str)
    }

    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }

    /// Whether it is `name` with (at least) these labels.
    pub fn is(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.name() == name && labels.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// The samples of a text exposition (`GET /metrics`). Panics on a line it cannot read: the
/// format is part of what the tests check.
pub fn exposition(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample line: {line:?}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.strip_suffix('}').expect("closing brace")),
                None => (series, ""),
            };
            let mut map = BTreeMap::new();
            map.insert("__name__".to_string(), name.to_string());
            let mut rest = labels;
            while let Some((key, after)) = rest.split_once("=\"") {
                let end = closing_quote(after).unwrap_or_else(|| panic!("label value in {line:?}"));
                let value = after[..end].replace("\\\"", "\"").replace("\\\\", "\\");
                map.insert(key.trim_start_matches(',').to_string(), value);
                rest = &after[end + 1..];
            }
            Sample {
                labels: map,
                value: parse_value(value),
            }
        })
        .collect()
}

fn closing_quote(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

fn parse_value(text: &str) -> f64 {
    match text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        t => t
            .parse()
            .unwrap_or_else(|_| panic!("not a sample value: {t:?}")),
    }
}

/// The value of the one sample of `name` with `labels` in `samples`.
pub fn value_of(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples.iter().find(|s| s.is(name, labels)).map(|s| s.value)
}

/// An alert as `/api/v1/alerts` shows it.
#[derive(Clone, Debug)]
pub struct Alert {
    pub labels: BTreeMap<String, String>,
    /// `pending` or `firing`.
    pub state: String,
    pub value: String,
}

impl Alert {
    pub fn name(&self) -> &str {
        self.labels.get("alertname").map_or("", String::as_str)
    }

    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }
}

/// A Prometheus server of this test.
#[derive(Debug)]
pub struct Prometheus {
    pub proc: Proc,
    addr: SocketAddr,
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port with its config and storage under `dir`,
    /// scraping `target` (`job="privitty-edge"`) with `rules` loaded; returns once it is ready.
    pub fn start(dir: &Path, target: SocketAddr, rules: &Path) -> Prometheus {
        std::fs::create_dir_all(dir).expect("create the Prometheus dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: {scrape}ms\n  scrape_timeout: {scrape}ms\n  \
                 evaluation_interval: {eval}ms\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: privitty-edge\n    static_configs:\n      \
                 - targets: ['{target}']\n",
                scrape = SCRAPE_INTERVAL.as_millis(),
                eval = EVALUATION_INTERVAL.as_millis(),
                rules = rules.display(),
            ),
        )
        .expect("write prometheus.yml");
        // A free port: bound and released; Prometheus binds it a moment later.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port");
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .current_dir(dir);
        let mut proc = Proc::spawn("prometheus", cmd, &dir.join("logs"));
        eventually(START_DEADLINE, "Prometheus to be ready", || {
            if let Some(status) = proc.child.try_wait().expect("try_wait") {
                panic!("prometheus exited at start ({status}):\n{}", proc.output());
            }
            get(addr, "/-/ready")
                .ok()
                .filter(|r| r.status == 200)
                .map(|_| ())
        });
        Prometheus { proc, addr }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `GET path` on the API; the `data` member of a `success` answer.
    pub fn api(&self, path: &str) -> Value {
        let r = get(self.addr, path).unwrap_or_else(|e| panic!("Prometheus {path}: {e}"));
        let body: Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| {
            panic!(
                "Prometheus {path}: HTTP {} not JSON ({e}): {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            )
        });
        assert_eq!(body["status"], "success", "Prometheus {path}: {body}");
        body["data"].clone()
    }

    /// An instant query (`/api/v1/query`) at the present time.
    pub fn query(&self, promql: &str) -> Vec<Sample> {
        let data = self.api(&format!("/api/v1/query?query={}", url_encode(promql)));
        data["result"]
            .as_array()
            .map(|a| a.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|r| Sample {
                labels: r["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
                    .unwrap_or_default(),
                value: parse_value(r["value"][1].as_str().expect("a sample value")),
            })
            .collect()
    }

    /// The value of a query that yields one sample (`None`: no sample).
    pub fn value(&self, promql: &str) -> Option<f64> {
        let samples = self.query(promql);
        assert!(samples.len() <= 1, "{promql} yields {samples:?}");
        samples.first().map(|s| s.value)
    }

    /// The active (pending or firing) alerts.
    pub fn alerts(&self) -> Vec<Alert> {
        let data = self.api("/api/v1/alerts");
        data["alerts"]
            .as_array()
            .map(|a| a.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|a| Alert {
                labels: a["labels"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
                    .unwrap_or_default(),
                state: a["state"].as_str().unwrap_or_default().to_string(),
                value: a["value"].as_str().unwrap_or_default().to_string(),
            })
            .collect()
    }

    /// The names of the rules Prometheus loaded.
    pub fn rule_names(&self) -> Vec<String> {
        let data = self.api("/api/v1/rules");
        data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .filter_map(|r| r["name"].as_str().map(str::to_string))
            .collect()
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_exposition_format() {
        let text = "# HELP a_total x.\n# TYPE a_total counter\na_total{class=\"engine\",outcome=\"ok\"} 3\n\
                    b 1.5\nc{le=\"+Inf\",x=\"q\\\"uote\"} +Inf\n";
        let samples = exposition(text);
        assert_eq!(
            value_of(&samples, "a_total", &[("class", "engine")]),
            Some(3.0)
        );
        assert_eq!(value_of(&samples, "b", &[]), Some(1.5));
        assert_eq!(samples[2].label("x"), Some("q\"uote"));
        assert_eq!(samples[2].value, f64::INFINITY);
        assert_eq!(
            url_encode("a{b=\"c\"} == 1"),
            "a%7Bb%3D%22c%22%7D%20%3D%3D%201"
        );
    }
}
