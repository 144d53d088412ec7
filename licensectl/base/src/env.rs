//! The environment variables of Privitty Edge: one registry of their names, defaults, readers and
//! meanings.
//!
//! Owns: one constant per variable name, [`VARS`] (the operator's settings: the README's
//! "Configuration" table, row for row), [`INTERNAL`] (variables our own processes pass to each
//! other, or tests read), [`TOOLS`] (the demo's, benchmarks' and container test's) and
//! [`BUILD_TIME`] (read when compiling). Every crate names a variable
//! through these constants. Must not: read the environment, or import anything from this crate
//! (it is a leaf).
//!
//! The tests below fail when the README table and [`VARS`] differ, and when a `"PRIVITTY_…"` string
//! in the non-test sources of this crate, licensectl, edged or the supervisor, or a `PRIVITTY_…`
//! word in a Markdown file, a script, the Dockerfile, CI or the manifests, is in none of the lists;
//! the `--help` of privitty-init, privitty-edged and privitty-edge is checked against [`VARS`] in
//! their own crates.

/// One operator setting, as a row of the README's table shows it.
///
/// Variables that share a README row (`PRIVITTY_CRASH_LIMIT`, `PRIVITTY_CRASH_WINDOW`) are
/// consecutive entries with the same `read_by` and `meaning`; the row shows their defaults joined by
/// `, `, or one default when they all have the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnvVar {
    pub name: &'static str,
    /// The default as the README shows it (Markdown): "unset", "`8s`", "hostname", …
    pub default: &'static str,
    /// The programs that read it: `init` (privitty-init), `edged` (privitty-edged), `CLI`
    /// (privitty-edge / licensectl), `activation`, or `all`.
    pub read_by: &'static str,
    /// What it sets (Markdown, one line).
    pub meaning: &'static str,
}

impl EnvVar {
    /// Whether `program` (`init`, `edged`, `CLI`) reads it: named in `read_by`, or `all`.
    pub fn is_read_by(&self, program: &str) -> bool {
        self.read_by.split(", ").any(|p| p == program || p == "all")
    }
}

/// A variable that is not an operator setting: its name and what it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OtherVar {
    pub name: &'static str,
    pub meaning: &'static str,
}

/// The accounts (data) directory; default `licensectl::vocab::DEFAULT_ACCOUNTS_DIR`.
pub const ACCOUNTS: &str = "PRIVITTY_ACCOUNTS";
/// The HTTP address privitty-init binds once and hands to each edged generation (edged binds it
/// itself when run alone; `privitty-edge health` asks its loopback side).
pub const LISTEN: &str = "PRIVITTY_LISTEN";
/// Delivery URL for start-up activation (contains the secret TOKEN).
pub const LICENSE_URL: &str = "PRIVITTY_LICENSE_URL";
/// A file whose trimmed content is the delivery URL (Docker/Kubernetes secrets).
pub const LICENSE_URL_FILE: &str = "PRIVITTY_LICENSE_URL_FILE";
/// Display name of account 1; the device name at activation.
pub const PROFILE: &str = "PRIVITTY_PROFILE";
/// Extra trusted license keys: PEM text, or a path to a PEM file; several keys allowed.
pub const LICENSE_PUBKEY: &str = "PRIVITTY_LICENSE_PUBKEY";
/// The engine binary: a path, or a name looked up on `PATH`.
pub const ENGINE: &str = "PRIVITTY_ENGINE";
/// When `/rpc` and `/events` need the API token: `auto`, `required`, `off`.
pub const API_AUTH: &str = "PRIVITTY_API_AUTH";
/// The API token itself (no flag: a flag would show it in `ps`).
pub const API_TOKEN: &str = "PRIVITTY_API_TOKEN";
/// A file holding the API token (a mounted secret).
pub const API_TOKEN_FILE: &str = "PRIVITTY_API_TOKEN_FILE";
/// The only directory client-given paths may point into.
pub const FILES_DIR: &str = "PRIVITTY_FILES_DIR";
/// Engine methods the policy denies that this gateway allows (comma-separated).
pub const RPC_ALLOW: &str = "PRIVITTY_RPC_ALLOW";
/// Calls in one JSON-RPC batch at most.
pub const RPC_MAX_BATCH: &str = "PRIVITTY_RPC_MAX_BATCH";
/// Bytes of a JSON-RPC answer (per call and per batch) at most.
pub const RPC_MAX_RESPONSE: &str = "PRIVITTY_RPC_MAX_RESPONSE";
/// `/events` clients at once.
pub const SSE_MAX_CLIENTS: &str = "PRIVITTY_SSE_MAX_CLIENTS";
/// Viewer streams at once.
pub const VIEWER_MAX_STREAMS: &str = "PRIVITTY_VIEWER_MAX_STREAMS";
/// Extra `Host` names a loopback listener answers to.
pub const ALLOWED_HOSTS: &str = "PRIVITTY_ALLOWED_HOSTS";
/// Web origins allowed to call the API.
pub const CORS: &str = "PRIVITTY_CORS";
/// Who may read `GET /metrics`: `open` or `token`.
pub const METRICS_AUTH: &str = "PRIVITTY_METRICS_AUTH";
/// How long before the license's next deadline `PrivittyLicenseExpiring` starts.
pub const LICENSE_WARN_BEFORE: &str = "PRIVITTY_LICENSE_WARN_BEFORE";
/// Connections edged serves at once.
pub const MAX_CONNECTIONS: &str = "PRIVITTY_MAX_CONNECTIONS";
/// Time a client has to send a request head; also the idle keep-alive timeout.
pub const HEADER_TIMEOUT: &str = "PRIVITTY_HEADER_TIMEOUT";
/// Time a client has to send a request body.
pub const BODY_TIMEOUT: &str = "PRIVITTY_BODY_TIMEOUT";
/// Interval of the `: ping` comment on `/events`.
pub const SSE_PING_INTERVAL: &str = "PRIVITTY_SSE_PING_INTERVAL";
/// Events buffered per `/events` client before `event: lag`.
pub const SSE_BUFFER: &str = "PRIVITTY_SSE_BUFFER";
/// edged's own deadline for a graceful stop.
pub const EDGED_STOP_TIMEOUT: &str = "PRIVITTY_EDGED_STOP_TIMEOUT";
/// How long privitty-init's stop waits for the process tree after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: &str = "PRIVITTY_STOP_TIMEOUT";
/// How long start-up activation may take.
pub const ACTIVATION_TIMEOUT: &str = "PRIVITTY_ACTIVATION_TIMEOUT";
/// Period of the license sync (`0` turns it off).
pub const LICENSE_SYNC_INTERVAL: &str = "PRIVITTY_LICENSE_SYNC_INTERVAL";
/// Period of the license-file poll that backs up inotify.
pub const LICENSE_POLL_INTERVAL: &str = "PRIVITTY_LICENSE_POLL_INTERVAL";
/// How long a new generation may take to report READY=1.
pub const READY_TIMEOUT: &str = "PRIVITTY_READY_TIMEOUT";
/// Whether privitty-init keeps a spare edged started ahead of the next swap (`on`/`off`).
pub const SPARE: &str = "PRIVITTY_SPARE";
/// Unexpected exits tolerated within the crash window.
pub const CRASH_LIMIT: &str = "PRIVITTY_CRASH_LIMIT";
/// The window the crash limit counts in.
pub const CRASH_WINDOW: &str = "PRIVITTY_CRASH_WINDOW";
/// Log filter (an `EnvFilter` directive), shared by all binaries.
pub const LOG: &str = "PRIVITTY_LOG";
/// Log format: `text` or `json`.
pub const LOG_FORMAT: &str = "PRIVITTY_LOG_FORMAT";
/// Extra CA bundle trusted for the license server, in addition to the system roots.
pub const SSL_CERT_FILE: &str = "SSL_CERT_FILE";
/// Proxy for the license server (read by the HTTP client library).
pub const HTTPS_PROXY: &str = "HTTPS_PROXY";
/// Hosts reached without the proxy (read by the HTTP client library).
pub const NO_PROXY: &str = "NO_PROXY";

/// Set by privitty-init for each edged generation: its number.
pub const GENERATION: &str = "PRIVITTY_GENERATION";
/// Set by privitty-init for each edged generation: the swaps so far.
pub const GENERATION_SWAPS: &str = "PRIVITTY_GENERATION_SWAPS";
/// Set by privitty-init for each edged generation: the crashes so far.
pub const GENERATION_CRASHES: &str = "PRIVITTY_GENERATION_CRASHES";
/// Socket activation (the systemd protocol): how many sockets are inherited from fd 3 on.
pub const LISTEN_FDS: &str = "LISTEN_FDS";
/// Socket activation: the pid the inherited sockets are meant for.
pub const LISTEN_PID: &str = "LISTEN_PID";
/// Socket activation: the names of the inherited sockets, `:`-separated.
pub const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
/// Readiness (the systemd protocol): the datagram socket `READY=1` goes to.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// The engine's accounts directory, set by edged for the engine it starts.
pub const ENGINE_ACCOUNTS_PATH: &str = "DC_ACCOUNTS_PATH";
/// Tests: a test that cannot run here fails instead of skipping.
pub const REQUIRE_ALL_TESTS: &str = "PRIVITTY_REQUIRE_ALL_TESTS";
/// The supervisor's spawn tests: tells the test binary, run again as a child, which case it is.
pub const SPAWN_FD_CASE: &str = "PRIVITTY_SPAWN_FD_CASE";

/// Build time: license keys compiled into the binaries (PEM text). `option_env!` takes a literal
/// only, so `keys.rs` spells it out; the test below checks it matches.
pub const BUILTIN_LICENSE_KEYS: &str = "PRIVITTY_BUILTIN_LICENSE_KEYS";

const UNSET: &str = "unset";
const LICENSE_URL_MEANING: &str = "delivery URL for start-up activation (the `_FILE` form suits \
     Docker/Kubernetes secrets)";
const API_TOKEN_DEFAULT: &str = "unset: `<accounts>/api.token`, created at first boot (0600)";
const API_TOKEN_MEANING: &str = "the bearer token of `/rpc` and `/events`; `privitty-edge \
     api-token [--rotate]` prints or rotates the file's";
const RPC_MAX_MEANING: &str = "calls per batch; answer bytes per call and per batch";
const HOSTS_CORS_MEANING: &str =
    "extra Host names of a loopback listener; web origins allowed to call the API";
const TIMEOUTS_MEANING: &str = "time to send a request head (also the idle keep-alive timeout); \
     time to send a request body (then 408)";
const SSE_MEANING: &str =
    "interval of the `: ping` comment on `/events`; events buffered per client before `event: lag`";
const CRASH_MEANING: &str = "crash loop budget; beyond it init exits 70";
const LOG_MEANING: &str = "log filter and format (`json` for log shippers), on stderr";
const PROXY_MEANING: &str = "proxy for the license server";

const fn var(
    name: &'static str,
    default: &'static str,
    read_by: &'static str,
    meaning: &'static str,
) -> EnvVar {
    EnvVar {
        name,
        default,
        read_by,
        meaning,
    }
}

/// The operator's settings, in the order of the README's "Configuration" table.
pub static VARS: &[EnvVar] = &[
    var(
        ACCOUNTS,
        "`/var/lib/privitty`",
        "all",
        "data directory: license files, engine accounts, file keys",
    ),
    var(
        LISTEN,
        "`127.0.0.1:7200` (image: `0.0.0.0:7200`)",
        "init, edged, CLI",
        "HTTP listen address (init binds it once and hands it over; `privitty-edge health` probes it)",
    ),
    var(LICENSE_URL, UNSET, "init", LICENSE_URL_MEANING),
    var(LICENSE_URL_FILE, UNSET, "init", LICENSE_URL_MEANING),
    var(
        PROFILE,
        "hostname",
        "edged, activation",
        "display name of account 1; device name at activation",
    ),
    var(
        LICENSE_PUBKEY,
        UNSET,
        "all",
        "extra trusted license keys: PEM text or a path (also `/etc/privitty/license-keys/*.pem`)",
    ),
    var(
        ENGINE,
        "`deltachat-rpc-server` on `PATH`",
        "edged",
        "the engine binary",
    ),
    var(
        API_AUTH,
        "`auto`: required unless the listen address is loopback",
        "edged",
        "`required`, `off` (a warning at every start when off a loopback address)",
    ),
    var(
        API_TOKEN,
        API_TOKEN_DEFAULT,
        "edged, CLI",
        API_TOKEN_MEANING,
    ),
    var(
        API_TOKEN_FILE,
        API_TOKEN_DEFAULT,
        "edged, CLI",
        API_TOKEN_MEANING,
    ),
    var(
        FILES_DIR,
        "`<accounts>/files` (created 0700)",
        "edged",
        "the only directory client-given paths may point into",
    ),
    var(
        RPC_ALLOW,
        UNSET,
        "edged",
        "engine methods the policy denies that this gateway allows (comma-separated)",
    ),
    var(RPC_MAX_BATCH, "`100`", "edged", RPC_MAX_MEANING),
    var(RPC_MAX_RESPONSE, "`16MiB`", "edged", RPC_MAX_MEANING),
    var(
        SSE_MAX_CLIENTS,
        "`64`",
        "edged",
        "`/events` clients at once (more get 503; `/health` keeps a slot)",
    ),
    var(
        VIEWER_MAX_STREAMS,
        "`4`",
        "edged",
        "viewer streams (`GET /stream/:msg_id`) at once (more get 503)",
    ),
    var(ALLOWED_HOSTS, UNSET, "edged", HOSTS_CORS_MEANING),
    var(CORS, "off", "edged", HOSTS_CORS_MEANING),
    var(
        METRICS_AUTH,
        "`open`",
        "edged",
        "`GET /metrics`: `open` (like `/health`), or `token` (the API token, exactly when `/rpc` \
         needs it)",
    ),
    var(
        LICENSE_WARN_BEFORE,
        "`14d`, `0` = off",
        "edged",
        "`PrivittyLicenseExpiring` (and a log warning) once a day from this long before the next \
         license deadline",
    ),
    var(
        MAX_CONNECTIONS,
        "`512`",
        "edged",
        "connections served at once (at most 65536); more wait in the kernel backlog",
    ),
    var(HEADER_TIMEOUT, "`10s`", "edged", TIMEOUTS_MEANING),
    var(BODY_TIMEOUT, "`30s`", "edged", TIMEOUTS_MEANING),
    var(SSE_PING_INTERVAL, "`15s`", "edged", SSE_MEANING),
    var(SSE_BUFFER, "`1024`", "edged", SSE_MEANING),
    var(
        EDGED_STOP_TIMEOUT,
        "`5s`",
        "edged",
        "edged's deadline for a graceful stop (requests, `/events`, the engine)",
    ),
    var(
        STOP_TIMEOUT,
        "`8s`",
        "init",
        "how long a stop waits before SIGKILL (under Docker's 10 s)",
    ),
    var(
        ACTIVATION_TIMEOUT,
        "`30s`",
        "init",
        "start-up activation retries transient errors this long, then serves unlicensed and keeps \
         retrying",
    ),
    var(
        LICENSE_SYNC_INTERVAL,
        "`24h` (±10 % jitter), `0` = off",
        "init",
        "periodic `license sync`; no host cron needed",
    ),
    var(
        LICENSE_POLL_INTERVAL,
        "`2s`",
        "init",
        "license-file poll beside inotify (NFS, some bind mounts)",
    ),
    var(
        READY_TIMEOUT,
        "`30s`",
        "init",
        "a new generation must report ready within this",
    ),
    var(
        SPARE,
        "`on`",
        "init",
        "keep a spare edged started (idle, nothing read) so a swap skips the process start; `off` saves its memory",
    ),
    var(CRASH_LIMIT, "`5`", "init", CRASH_MEANING),
    var(CRASH_WINDOW, "`5m`", "init", CRASH_MEANING),
    var(LOG, "`info`", "all", LOG_MEANING),
    var(LOG_FORMAT, "`text`", "all", LOG_MEANING),
    var(
        SSL_CERT_FILE,
        UNSET,
        "CLI, init",
        "extra CA bundle for the license server, trusted besides the system store",
    ),
    var(HTTPS_PROXY, UNSET, "CLI, init", PROXY_MEANING),
    var(NO_PROXY, UNSET, "CLI, init", PROXY_MEANING),
];

/// Variables our own processes pass to each other (privitty-init to edged, edged to the engine), or
/// that only tests read: no operator sets them, so the README does not list them.
pub static INTERNAL: &[OtherVar] = &[
    OtherVar {
        name: GENERATION,
        meaning: "set by privitty-init for each edged generation: its number (shown in /metrics)",
    },
    OtherVar {
        name: GENERATION_SWAPS,
        meaning: "set by privitty-init for each edged generation: the swaps so far",
    },
    OtherVar {
        name: GENERATION_CRASHES,
        meaning: "set by privitty-init for each edged generation: the crashes so far",
    },
    OtherVar {
        name: LISTEN_FDS,
        meaning: "socket activation: privitty-init (or systemd) hands edged its listener as fd 3",
    },
    OtherVar {
        name: LISTEN_PID,
        meaning: "socket activation: the pid the sockets are for (set by the child before exec)",
    },
    OtherVar {
        name: LISTEN_FDNAMES,
        meaning: "socket activation: the inherited sockets' names (`http`, the connection and engine hand-over pairs)",
    },
    OtherVar {
        name: NOTIFY_SOCKET,
        meaning: "readiness: where edged sends READY=1 (privitty-init's socket, or systemd's)",
    },
    OtherVar {
        name: ENGINE_ACCOUNTS_PATH,
        meaning: "the engine's accounts directory, set by edged for the engine it starts",
    },
    OtherVar {
        name: REQUIRE_ALL_TESTS,
        meaning: "tests: `1` makes a test that cannot run here fail instead of skipping",
    },
    OtherVar {
        name: SPAWN_FD_CASE,
        meaning: "supervisor tests: which case the test binary, run again as a child, plays",
    },
];

/// Variables of the scripts and tools under `tests/` (demo, benchmarks, container test): not read
/// by the product, named in its documentation.
pub static TOOLS: &[OtherVar] = &[
    OtherVar {
        name: "PRIVITTY_DEMO_DIR",
        meaning: "run-local.sh --demo: where the demo writes env.sh (default ./demo)",
    },
    OtherVar {
        name: "PRIVITTY_DEMO_PORTS",
        meaning: "run-local.sh --demo: alice's and bob's ports (default `7200 7201`)",
    },
    OtherVar {
        name: "PRIVITTY_BENCH_BIN_DIR",
        meaning: "init-bench.sh: measure the binaries in this directory instead of this build's",
    },
    OtherVar {
        name: "PRIVITTY_BENCH_TESTPROC",
        meaning: "init-bench.sh: the privitty-testproc to use",
    },
    OtherVar {
        name: "PRIVITTY_IMAGE",
        meaning: "container test: test this already built image instead of building one",
    },
    OtherVar {
        name: "PRIVITTY_IMAGE_PROFILE",
        meaning: "build-binaries.sh: the cargo profile of the image's executable (default `image`)",
    },
    OtherVar {
        name: "PRIVITTY_TESTPROC_STATIC",
        meaning: "container test: a static privitty-testproc to copy into the container",
    },
];

/// Variables read when compiling, not at run time.
pub static BUILD_TIME: &[OtherVar] = &[OtherVar {
    name: BUILTIN_LICENSE_KEYS,
    meaning: "license keys (PEM text) compiled into the binaries as trusted keys",
}];

/// The entry of an operator setting, if `name` is one.
pub fn setting(name: &str) -> Option<&'static EnvVar> {
    VARS.iter().find(|v| v.name == name)
}

/// Whether `name` is in any of the lists.
pub fn is_known(name: &str) -> bool {
    setting(name).is_some()
        || INTERNAL
            .iter()
            .chain(BUILD_TIME)
            .chain(TOOLS)
            .any(|v| v.name == name)
}

/// What differs between the variables a binary's flags read (clap's `env`, shown in `--help`) and
/// the registry, one line each, empty when nothing does: a variable in neither [`VARS`] (as read by
/// `program`: `init`, `edged`) nor [`INTERNAL`]; a flag default the registry's default does not
/// show; a `PRIVITTY_` setting the registry names `program` as reader of that no flag reads (unless
/// in `no_flag`). For the tests of privitty-init and privitty-edged.
pub fn flag_differences(program: &str, cmd: &clap::Command, no_flag: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut read = Vec::new();
    for arg in cmd.get_arguments() {
        let Some(name) = arg.get_env().and_then(|n| n.to_str()) else {
            continue;
        };
        read.push(name.to_string());
        let flag = arg
            .get_long()
            .map_or_else(|| arg.get_id().to_string(), |l| format!("--{l}"));
        match setting(name) {
            Some(var) if !var.is_read_by(program) => problems.push(format!(
                "{flag} reads {name}, but VARS says only {} read it",
                var.read_by
            )),
            Some(var) => {
                for default in arg.get_default_values() {
                    let default = default.to_string_lossy();
                    if !var.default.contains(&format!("`{default}`")) {
                        problems.push(format!(
                            "{flag} defaults to {default:?}, VARS says {name} defaults to {:?}",
                            var.default
                        ));
                    }
                }
            }
            None if INTERNAL.iter().any(|v| v.name == name) => {}
            None => problems.push(format!("{flag} reads {name}, which is in no list")),
        }
    }
    for var in VARS {
        let named = var.read_by.split(", ").any(|p| p == program);
        if named
            && var.name.starts_with("PRIVITTY_")
            && !no_flag.contains(&var.name)
            && !read.iter().any(|r| r == var.name)
        {
            problems.push(format!(
                "VARS says {program} reads {}, but no flag does",
                var.name
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{Tok, tokenize};
    use std::path::{Path, PathBuf};

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// The README rows [`VARS`] stands for: consecutive entries with the same reader and meaning
    /// share a row.
    fn rows(vars: &[EnvVar]) -> Vec<String> {
        let mut rows = Vec::new();
        let mut i = 0;
        while i < vars.len() {
            let first = vars[i];
            let group: Vec<&EnvVar> = vars[i..]
                .iter()
                .take_while(|v| v.read_by == first.read_by && v.meaning == first.meaning)
                .collect();
            i += group.len();
            let names: Vec<String> = group.iter().map(|v| format!("`{}`", v.name)).collect();
            let default = if group.iter().all(|v| v.default == first.default) {
                first.default.to_string()
            } else {
                group
                    .iter()
                    .map(|v| v.default)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            rows.push(format!(
                "| {} | {default} | {} | {} |",
                names.join(", "),
                first.read_by,
                first.meaning
            ));
        }
        rows
    }

    /// The rows of the README table whose header starts `| variable | default |`.
    fn readme_rows(readme: &str) -> Vec<String> {
        let mut lines = readme
            .lines()
            .skip_while(|l| !l.starts_with("| variable | default |"))
            .skip(2);
        let rows: Vec<String> = lines
            .by_ref()
            .take_while(|l| l.starts_with('|'))
            .map(str::to_string)
            .collect();
        assert!(
            !rows.is_empty(),
            "README.md has no `| variable | default |` table"
        );
        rows
    }

    /// What differs between the README rows and the registry's, empty when nothing does.
    fn table_differences(readme: &[String], registry: &[String]) -> String {
        let mut report = String::new();
        for row in readme.iter().filter(|r| !registry.contains(r)) {
            report.push_str(&format!("  README only:   {row}\n"));
        }
        for row in registry.iter().filter(|r| !readme.contains(r)) {
            report.push_str(&format!("  registry only: {row}\n"));
        }
        if report.is_empty() && readme != registry {
            report.push_str("  the same rows in another order\n");
        }
        report
    }

    #[test]
    fn env_readme_table_matches_the_registry() {
        let path = Path::new("README.md");
        let readme = std::fs::read_to_string(workspace().join(path)).unwrap();
        let expected = rows(VARS);
        let report = table_differences(&readme_rows(&readme), &expected);
        assert!(
            report.is_empty(),
            "{} (Configuration) and licensectl/base/src/env.rs VARS differ; change both:\n{report}\n\
             the table VARS stands for:\n{}",
            path.display(),
            expected.join("\n")
        );
    }

    #[test]
    fn env_names_are_listed_once() {
        let mut names: Vec<&str> = VARS
            .iter()
            .map(|v| v.name)
            .chain(
                INTERNAL
                    .iter()
                    .chain(BUILD_TIME)
                    .chain(TOOLS)
                    .map(|v| v.name),
            )
            .collect();
        let all = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all, "a variable is listed twice");
        for v in VARS {
            for program in v.read_by.split(", ") {
                assert!(
                    ["all", "init", "edged", "CLI", "activation"].contains(&program),
                    "{}: unknown reader {program:?}",
                    v.name
                );
            }
        }
    }

    /// The `PRIVITTY_…` names in the string literals of `src`, up to its first `#[cfg(test)]` line.
    fn names_in_strings(src: &str) -> Vec<String> {
        let code = match src.lines().position(|l| l.trim() == "#[cfg(test)]") {
            Some(n) => src.lines().take(n).collect::<Vec<_>>().join("\n"),
            None => src.to_string(),
        };
        let mut names = Vec::new();
        for tok in tokenize(&code) {
            let Tok::Str(text) = tok else { continue };
            let mut rest = text.as_str();
            while let Some(at) = rest.find("PRIVITTY_") {
                let tail = &rest[at..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                    .unwrap_or(tail.len());
                let name = tail[..end].trim_end_matches('_');
                // The bare prefix (`starts_with("PRIVITTY_")`) names no variable.
                if name.len() > "PRIVITTY".len() {
                    names.push(name.to_string());
                }
                rest = &tail[end..];
            }
        }
        names
    }

    /// The non-test `.rs` files under `dir`: no `tests/` directory, no `*tests.rs`.
    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if name != "tests" {
                    sources(&path, out);
                }
            } else if name.ends_with(".rs") && !name.ends_with("tests.rs") {
                out.push(path);
            }
        }
    }

    /// Every `"PRIVITTY_…"` in `files` that no list knows, with its file.
    fn unknown_names(files: &[PathBuf]) -> Vec<String> {
        let mut unknown = Vec::new();
        for file in files {
            let src = std::fs::read_to_string(file).unwrap();
            for name in names_in_strings(&src) {
                if !is_known(&name) {
                    let file = file.strip_prefix(workspace()).unwrap_or(file);
                    unknown.push(format!("{}: {name}", file.display()));
                }
            }
        }
        unknown
    }

    /// The `PRIVITTY_…` words of a document or script, except Rust paths (`gate::PRIVITTY_METHODS`).
    fn names_in_text(text: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find("PRIVITTY_") {
            let path = rest[..at].ends_with("::");
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(tail.len());
            let name = tail[..end].trim_end_matches('_');
            if !path && name.len() > "PRIVITTY".len() {
                names.push(name.to_string());
            }
            rest = &tail[end..];
        }
        names
    }

    /// The files operators and developers read or run: every Markdown file, the scripts, the
    /// Dockerfile, CI and the Kubernetes manifests.
    fn documents(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
        entries.sort();
        for path in entries {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" && name != "corpus" {
                    documents(&path, out);
                }
            } else if [".md", ".sh", ".yaml", ".yml"]
                .iter()
                .any(|e| name.ends_with(e))
                || name == "Dockerfile"
                || name == "run"
            {
                out.push(path);
            }
        }
    }

    #[test]
    fn env_every_variable_in_the_documents_and_scripts_is_registered() {
        let mut files = Vec::new();
        documents(&workspace(), &mut files);
        documents(&workspace().join(".ci"), &mut files);
        assert!(
            files.iter().any(|f| f.ends_with("README.md"))
                && files
                    .iter()
                    .any(|f| f.ends_with("tests/scripts/run-local.sh")),
            "documents not found: {files:?}"
        );
        let mut unknown = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            for name in names_in_text(&text) {
                if !is_known(&name) {
                    let file = file.strip_prefix(workspace()).unwrap_or(file);
                    unknown.push(format!("{}: {name}", file.display()));
                }
            }
        }
        unknown.sort();
        unknown.dedup();
        assert!(
            unknown.is_empty(),
            "variables named in documents or scripts but in no list of licensectl/base/src/env.rs \
             (a misspelt or removed setting; a tool's variable goes in TOOLS):\n  {}",
            unknown.join("\n  ")
        );
        assert_eq!(
            names_in_text("set PRIVITTY_LISTEN_, see gate::PRIVITTY_METHODS and PRIVITTY_"),
            ["PRIVITTY_LISTEN"]
        );
    }

    #[test]
    fn env_every_variable_in_the_sources_is_registered() {
        let mut files = Vec::new();
        for dir in [
            "licensectl/base/src",
            "licensectl/src",
            "edged/src",
            "supervisor/src",
            "supervisor/multicall/src",
        ] {
            sources(&workspace().join(dir), &mut files);
        }
        assert!(files.len() > 20, "too few sources found: {files:?}");
        let unknown = unknown_names(&files);
        assert!(
            unknown.is_empty(),
            "variables in no list of licensectl/base/src/env.rs (add an operator setting to VARS and the \
             README table, anything else to INTERNAL):\n  {}",
            unknown.join("\n  ")
        );
    }

    /// The scan itself: strings are read up to `#[cfg(test)]`, comments and identifiers are not.
    #[test]
    fn env_scan_finds_names_in_strings_only() {
        let src = "// \"PRIVITTY_IN_COMMENT\"\nconst PRIVITTY_IDENT: u8 = 0;\n\
                   fn f() { g(\"PRIVITTY_LISTEN\", r#\"x PRIVITTY_NEW_ONE.\"#, b\"PRIVITTY_LOG\"); }\n\
                   fn prefix(n: &str) -> bool { n.starts_with(\"PRIVITTY_\") }\n\
                   #[cfg(test)]\nmod tests { const X: &str = \"PRIVITTY_TEST_ONLY\"; }\n";
        assert_eq!(
            names_in_strings(src),
            ["PRIVITTY_LISTEN", "PRIVITTY_NEW_ONE", "PRIVITTY_LOG"]
        );
        assert!(is_known("PRIVITTY_LISTEN") && !is_known("PRIVITTY_NEW_ONE"));
    }

    #[test]
    fn env_builtin_keys_name_matches_keys_rs() {
        let keys = std::fs::read_to_string(workspace().join("licensectl/src/keys.rs")).unwrap();
        assert!(
            keys.contains(&format!("option_env!(\"{BUILTIN_LICENSE_KEYS}\")")),
            "keys.rs reads another build-time variable than BUILD_TIME lists"
        );
    }

    /// The table check itself: a wrong default, a missing row and a reordering are reported.
    #[test]
    fn env_table_check_reports_differences() {
        let good = rows(VARS);
        assert_eq!(table_differences(&good, &good), "");
        let mut vars = VARS.to_vec();
        vars[0].default = "`/wrong`";
        let report = table_differences(&good, &rows(&vars));
        assert!(
            report.contains("README only:   | `PRIVITTY_ACCOUNTS`"),
            "{report}"
        );
        assert!(
            report.contains("registry only: | `PRIVITTY_ACCOUNTS` | `/wrong`"),
            "{report}"
        );
        let missing = table_differences(&good[1..], &good);
        assert!(
            missing.contains("registry only: | `PRIVITTY_ACCOUNTS`"),
            "{missing}"
        );
        let mut swapped = good.clone();
        swapped.swap(0, 1);
        assert!(table_differences(&swapped, &good).contains("another order"));
    }
}
