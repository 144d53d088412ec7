//! Unit tests of the Privitty module: real files in temp dirs, the real key store, the real
//! cipher. Each test prints the files under its temp dirs when it fails.
//!
//! Areas: [`prv_format`] (round trips, the header layout, every tampering), [`access`] (revoke,
//! group members, expiry), [`paths`] (what a client-given path may be), [`key_store`] (the store
//! across reopen, unsafe master keys), [`methods`] (parameters, threads, concurrency). This module
//! holds the fixtures they share.

mod access;
mod key_store;
mod methods;
mod paths;
mod prv_format;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use uuid::Uuid;

use super::format::{self, CHUNK_SIZE, FIXED_LEN, TAG_LEN};
use super::*;

/// Lists every file (with size and mode) under the given dirs if the test panics.
struct DumpOnPanic(Vec<PathBuf>);

impl Drop for DumpOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for root in &self.0 {
            eprintln!("--- files under {}", root.display());
            let mut stack = vec![root.clone()];
            while let Some(dir) = stack.pop() {
                let Ok(entries) = fs::read_dir(&dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let path = entry.path();
                    if let Ok(meta) = fs::symlink_metadata(&path) {
                        eprintln!(
                            "{:o} {:>10} {}",
                            meta.permissions().mode(),
                            meta.len(),
                            path.display()
                        );
                        if meta.is_dir() {
                            stack.push(path);
                        }
                    }
                }
            }
        }
    }
}

struct Env {
    // First, so it lists the files before the temp dirs are deleted.
    _dump: DumpOnPanic,
    accounts: TempDir,
    data: TempDir,
    p: Privitty,
}

impl Env {
    fn new() -> Env {
        let accounts = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let p = Privitty::open(accounts.path()).unwrap();
        let _dump = DumpOnPanic(vec![accounts.path().to_owned(), data.path().to_owned()]);
        Env {
            _dump,
            accounts,
            data,
            p,
        }
    }

    fn file(&self, name: &str, content: &[u8]) -> PathBuf {
        let path = self.data.path().join(name);
        fs::write(&path, content).unwrap();
        path
    }

    fn send(&self, path: &Path, minutes: u64) -> Outcome {
        self.p
            .call(
                "privitty_send_file",
                &[
                    json!(1),
                    json!(12),
                    json!(20),
                    json!(path),
                    json!(true),
                    json!(false),
                    json!(minutes),
                ],
            )
            .expect("a privitty method")
            .unwrap()
    }

    fn send_group(&self, path: &Path) -> Outcome {
        self.p
            .call(
                "privitty_send_group_file",
                &[
                    json!(1),
                    json!(13),
                    json!(path),
                    json!(false),
                    json!(true),
                    json!(0),
                ],
            )
            .expect("a privitty method")
            .unwrap()
    }

    fn decrypt(&self, path: &Path) -> Result<Vec<u8>, PrivittyError> {
        let mut out = Vec::new();
        self.p.decrypt_to(path, &mut out)?;
        Ok(out)
    }

    /// Names in the data dir and the store's record dir, to prove a failed call wrote nothing.
    fn snapshot(&self) -> Vec<String> {
        let mut names = Vec::new();
        for dir in [
            self.data.path().to_owned(),
            self.p.store_dir().join(store::FILES_DIR),
        ] {
            for entry in fs::read_dir(&dir).unwrap() {
                names.push(entry.unwrap().path().display().to_string());
            }
        }
        names.sort();
        names
    }
}

fn file_id_of(outcome: &Outcome) -> Uuid {
    Uuid::parse_str(outcome.result["file_id"].as_str().unwrap()).unwrap()
}

fn prv_path(outcome: &Outcome) -> PathBuf {
    PathBuf::from(outcome.result["encrypted_path"].as_str().unwrap())
}

/// Deterministic, incompressible test content.
fn pseudo_random(seed: u64, buf: &mut [u8]) {
    let mut x = seed | 1;
    for b in buf {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

fn round_trip(size: usize) {
    let env = Env::new();
    let mut content = vec![0u8; size];
    pseudo_random(size as u64, &mut content);
    let path = env.file("report.pdf", &content);
    let out = env.send(&path, 0);

    let prv = prv_path(&out);
    assert_eq!(prv, env.data.path().join("report.pdf.prv"));
    assert_eq!(out.result["expires_at"], Value::Null);
    let file_id = file_id_of(&out);
    assert_eq!(
        out.events,
        vec![
            json!({"type":"PrivittyFileEncrypted","account_id":1,"chat_id":12,"file_id":file_id,"peer_contact_id":20})
        ]
    );
    let chunks = size.div_ceil(CHUNK_SIZE as usize).max(1);
    let header_len = FIXED_LEN + "report.pdf".len() + 2;
    assert_eq!(
        fs::metadata(&prv).unwrap().len() as usize,
        header_len + size + chunks * TAG_LEN,
        "a .prv is its header plus one tag per chunk"
    );
    assert_ne!(
        fs::read(&prv).unwrap()[header_len..],
        content[..],
        "content is encrypted"
    );
    assert_eq!(env.decrypt(&prv).unwrap(), content);
    assert_eq!(
        fs::read(&path).unwrap(),
        content,
        "the source is left alone"
    );
}
