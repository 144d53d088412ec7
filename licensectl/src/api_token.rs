//! The API token of the HTTP API (`Authorization: Bearer <token>` on `/rpc` and `/events`): where it
//! comes from, how it is created at first boot and rotated, and how it is read safely.
//!
//! Owns: the token sources in their order (`PRIVITTY_API_TOKEN`, `PRIVITTY_API_TOKEN_FILE`, else
//! `<accounts>/api.token` created 0600 at first boot), the token's syntax, atomic rotation. Must not:
//! log or format a token (errors name the file, never its content), or decide when a token is
//! required (that is edged's configuration).
//!
//! Trust boundary: the file lives in the data volume, which is untrusted: it is opened with
//! `O_NOFOLLOW|O_NONBLOCK` (a symlink or a FIFO planted there is refused, never followed or waited
//! on), checked to be a regular file and capped in size.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::accounts::AccountsDir;

/// The token's file in the data directory, when neither variable names another.
pub const API_TOKEN_FILE: &str = "api.token";
/// Environment variables (edged and the CLI read the same ones).
pub const ENV_TOKEN: &str = privitty_base::env::API_TOKEN;
pub const ENV_TOKEN_FILE: &str = privitty_base::env::API_TOKEN_FILE;
/// Shortest and longest accepted token (a generated one is 43 characters).
pub const MIN_TOKEN_LEN: usize = 16;
pub const MAX_TOKEN_LEN: usize = 512;
/// Bytes read from a token file at most (a token plus a newline and some slack).
const MAX_FILE_BYTES: u64 = 4096;

/// Where the token comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `PRIVITTY_API_TOKEN`: fixed for the process's life.
    Env,
    /// `PRIVITTY_API_TOKEN_FILE` (a mounted secret): read, never written.
    SecretFile(PathBuf),
    /// `<accounts>/api.token`: created at first boot, rotated by `privitty-edge api-token --rotate`.
    DataDir(PathBuf),
}

impl Source {
    /// The file to read (and watch), if the token lives in one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Source::Env => None,
            Source::SecretFile(p) | Source::DataDir(p) => Some(p),
        }
    }

    /// Chooses the source: the variable, then the file variable, then the data directory.
    pub fn choose(
        env_token: Option<&str>,
        env_file: Option<&Path>,
        accounts: &Path,
    ) -> Result<Source, ApiTokenError> {
        match (env_token, env_file) {
            (Some(_), Some(_)) => Err(ApiTokenError::BothSet),
            (Some(t), None) => {
                check_syntax(t).map_err(|problem| ApiTokenError::Invalid {
                    origin: ENV_TOKEN.to_string(),
                    problem,
                })?;
                Ok(Source::Env)
            }
            (None, Some(p)) => Ok(Source::SecretFile(p.to_path_buf())),
            (None, None) => Ok(Source::DataDir(accounts.join(API_TOKEN_FILE))),
        }
    }

    /// The source chosen from this process's environment.
    pub fn from_env(accounts: &Path) -> Result<Source, ApiTokenError> {
        let token = std::env::var(ENV_TOKEN).ok().filter(|t| !t.is_empty());
        let file = std::env::var_os(ENV_TOKEN_FILE)
            .filter(|f| !f.is_empty())
            .map(PathBuf::from);
        Source::choose(token.as_deref(), file.as_deref(), accounts)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiTokenError {
    #[error("both {ENV_TOKEN} and {ENV_TOKEN_FILE} are set; set only one of them")]
    BothSet,
    #[error("the API token from {origin} is invalid: {problem}")]
    Invalid { origin: String, problem: String },
    #[error(
        "the API token file {} is unusable: {problem}; remove it and run `privitty-edge api-token --rotate` (or restart) to create a new one",
        path.display()
    )]
    BadFile { path: PathBuf, problem: String },
    #[error("the API token file {} does not exist; check {ENV_TOKEN_FILE}", path.display())]
    Missing { path: PathBuf },
    #[error("cannot read the API token file {}: {source}; check its owner and mode", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the API token file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: Box<crate::error::Error>,
    },
    #[error(
        "the API token is set by {0}; change it there (and restart, for {ENV_TOKEN}) to rotate it"
    )]
    NotRotatable(&'static str),
}

/// A token: 16–512 visible ASCII characters (no spaces), as it travels in a header.
pub fn check_syntax(token: &str) -> Result<(), String> {
    if token.len() < MIN_TOKEN_LEN {
        return Err(format!("it is shorter than {MIN_TOKEN_LEN} characters"));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(format!("it is longer than {MAX_TOKEN_LEN} characters"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("it may hold only visible ASCII characters, no spaces".to_string());
    }
    Ok(())
}

/// A fresh token: 32 random bytes, base64url without padding (43 characters).
pub fn generate() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    getrandom(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn getrandom(buf: &mut [u8]) {
    use rand_core::{OsRng, RngCore};
    OsRng.fill_bytes(buf);
}

/// Reads a token file: no FIFO waited on, regular files only, size-capped, trailing newline
/// removed, syntax checked. `Ok(None)` when it does not exist. A symlink is followed only for a
/// file the operator named (`PRIVITTY_API_TOKEN_FILE`: Kubernetes mounts Secrets as links into
/// `..data/`), never in the data volume.
pub fn read_source_file(source: &Source) -> Result<Option<String>, ApiTokenError> {
    match source {
        Source::Env => Ok(None),
        Source::SecretFile(p) => read(p, true),
        Source::DataDir(p) => read(p, false),
    }
}

/// [`read_source_file`] for a file in the data volume: a symlink is refused.
pub fn read_file(path: &Path) -> Result<Option<String>, ApiTokenError> {
    read(path, false)
}

fn read(path: &Path, follow: bool) -> Result<Option<String>, ApiTokenError> {
    use std::os::unix::fs::OpenOptionsExt;
    let bad = |problem: &str| ApiTokenError::BadFile {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    };
    let flags = if follow {
        nix::fcntl::OFlag::O_NONBLOCK
    } else {
        nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) => {
            return Err(bad("it is a symlink, which is never followed"));
        }
        Err(source) => {
            return Err(ApiTokenError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let meta = file.metadata().map_err(|source| ApiTokenError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(bad("it is not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ApiTokenError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(bad(&format!("it is larger than {MAX_FILE_BYTES} bytes")));
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| bad("it is not text"))?;
    let token = text.trim_end_matches(['\n', '\r']);
    check_syntax(token).map_err(|p| bad(&p))?;
    Ok(Some(token.to_string()))
}

/// The current token of `source`, reading the file (the data-directory file is created with a
/// fresh token when missing). `env_token` is the value of `PRIVITTY_API_TOKEN` for [`Source::Env`].
pub fn current(
    source: &Source,
    env_token: Option<&str>,
    accounts: &Path,
) -> Result<String, ApiTokenError> {
    match source {
        Source::Env => env_token
            .map(str::to_string)
            .ok_or_else(|| ApiTokenError::Invalid {
                origin: ENV_TOKEN.to_string(),
                problem: "it is empty".to_string(),
            }),
        Source::SecretFile(p) => {
            read(p, true)?.ok_or_else(|| ApiTokenError::Missing { path: p.clone() })
        }
        Source::DataDir(p) => match read_file(p)? {
            Some(t) => Ok(t),
            None => create(accounts, false),
        },
    }
}

/// Writes a new token into `<accounts>/api.token` (0600, atomically) and returns it. With
/// `replace = false` an existing valid token wins (two processes creating it at first boot agree).
pub fn create(accounts: &Path, replace: bool) -> Result<String, ApiTokenError> {
    let dir = AccountsDir::new(accounts);
    let path = dir.file(API_TOKEN_FILE);
    let write_err = |e: crate::error::Error| ApiTokenError::Write {
        path: path.clone(),
        source: Box::new(e),
    };
    dir.create().map_err(write_err)?;
    let _lock = dir.lock_blocking().map_err(write_err)?;
    if !replace && let Some(t) = read_file(&path)? {
        return Ok(t);
    }
    let token = generate();
    dir.write_atomic(API_TOKEN_FILE, format!("{token}\n").as_bytes(), 0o600)
        .map_err(write_err)?;
    Ok(token)
}

/// Rotates the token of `source` (only the data-directory file can be rotated here).
pub fn rotate(source: &Source, accounts: &Path) -> Result<String, ApiTokenError> {
    match source {
        Source::Env => Err(ApiTokenError::NotRotatable(ENV_TOKEN)),
        Source::SecretFile(_) => Err(ApiTokenError::NotRotatable(ENV_TOKEN_FILE)),
        Source::DataDir(_) => create(accounts, true),
    }
}

/// Compares a presented token with the expected one in time independent of where they differ.
pub fn matches(presented: &[u8], expected: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    presented.len() == expected.len() && bool::from(presented.ct_eq(expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_valid_and_differ() {
        let a = generate();
        let b = generate();
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        check_syntax(&a).unwrap();
    }

    #[test]
    fn source_order_and_conflicts() {
        let acc = Path::new("/data");
        assert_eq!(
            Source::choose(None, None, acc).unwrap(),
            Source::DataDir(acc.join(API_TOKEN_FILE))
        );
        assert_eq!(
            Source::choose(Some("0123456789abcdefXYZ"), None, acc).unwrap(),
            Source::Env
        );
        assert!(matches!(
            Source::choose(Some("short"), None, acc),
            Err(ApiTokenError::Invalid { .. })
        ));
        assert!(matches!(
            Source::choose(Some("0123456789abcdefXYZ"), Some(Path::new("/s")), acc),
            Err(ApiTokenError::BothSet)
        ));
    }

    #[test]
    fn created_once_rotated_on_demand_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let source = Source::DataDir(dir.path().join(API_TOKEN_FILE));
        let first = current(&source, None, dir.path()).unwrap();
        assert_eq!(current(&source, None, dir.path()).unwrap(), first);
        let mode = std::fs::metadata(dir.path().join(API_TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let rotated = rotate(&source, dir.path()).unwrap();
        assert_ne!(rotated, first);
        assert_eq!(current(&source, None, dir.path()).unwrap(), rotated);
        assert!(matches!(
            rotate(&Source::Env, dir.path()),
            Err(ApiTokenError::NotRotatable(ENV_TOKEN))
        ));
    }

    #[test]
    fn planted_files_are_refused_without_hanging_or_leaking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(API_TOKEN_FILE);
        // A FIFO: O_NONBLOCK opens it at once, and it is not a regular file.
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = read_file(&path).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        std::fs::remove_file(&path).unwrap();
        // A symlink to a valid token elsewhere is not followed.
        let elsewhere = dir.path().join("other");
        std::fs::write(&elsewhere, "0123456789abcdef0123\n").unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        let err = read_file(&path).unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");
        std::fs::remove_file(&path).unwrap();
        // Garbage: the error names the file, never the content.
        std::fs::write(&path, "secret with spaces inside it\n").unwrap();
        let err = read_file(&path).unwrap_err().to_string();
        assert!(!err.contains("secret"), "{err}");
        std::fs::write(&path, vec![b'a'; 10_000]).unwrap();
        assert!(read_file(&path).is_err());
    }

    #[test]
    fn a_mounted_secret_is_read_through_its_links_and_the_volume_file_is_not() {
        // Kubernetes: token -> ..data/token, ..data -> ..2024_01_01_00_00_00.1/
        let dir = tempfile::tempdir().unwrap();
        let v1 = dir.path().join("..v1");
        std::fs::create_dir(&v1).unwrap();
        std::fs::write(v1.join("token"), "0123456789abcdef-secret\n").unwrap();
        std::os::unix::fs::symlink("..v1", dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/token", dir.path().join("token")).unwrap();
        let source = Source::SecretFile(dir.path().join("token"));
        assert_eq!(
            current(&source, None, dir.path()).unwrap(),
            "0123456789abcdef-secret"
        );
        assert!(read_file(&dir.path().join("token")).is_err());
    }

    #[test]
    fn comparison() {
        assert!(matches(b"abcdefabcdefabcdef", b"abcdefabcdefabcdef"));
        assert!(!matches(b"abcdefabcdefabcdeX", b"abcdefabcdefabcdef"));
        assert!(!matches(b"abc", b"abcdefabcdefabcdef"));
    }
}
