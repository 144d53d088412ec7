//! Property test of license integrity against an attacker who can write any file of the data
//! volume (issue 8): for every file the device writes × every mutation, starting from each state
//! that is not usable, no mutation (and no license operation run after it) makes the license
//! usable, and nothing hangs or panics. From the usable state, no mutation hangs or panics.
//!
//! The states are built with the real operations against the scripted server of `ops_tests`;
//! every evaluation runs in its own thread with a deadline, so a hang fails the test instead of
//! hanging it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc::RecvTimeoutError;

use super::*;
use crate::accounts::{LOCK_FILE, REVOKED_LICENSE_FILE};
use crate::usage::USAGE_FILE;

/// Every file the device writes in the accounts directory.
const FILES: [&str; 8] = [
    LICENSE_FILE,
    ACTIVATION_FILE,
    DEVICE_UUID_FILE,
    LICENSE_SERVER_FILE,
    USAGE_FILE,
    SYNC_STATE_FILE,
    LOCK_FILE,
    REVOKED_LICENSE_FILE,
];

/// Far beyond what any evaluation here needs (they take milliseconds), short enough to fail fast.
const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mutation {
    Delete,
    Truncate,
    Garbage,
    Fifo,
    /// A symlink to a valid copy elsewhere (the copy from before the withdrawal when there is one).
    Symlink,
    Directory,
    /// The copy of the file taken in the usable state, before the withdrawal (absent then: removed).
    Older,
}

const MUTATIONS: [Mutation; 7] = [
    Mutation::Delete,
    Mutation::Truncate,
    Mutation::Garbage,
    Mutation::Fifo,
    Mutation::Symlink,
    Mutation::Directory,
    Mutation::Older,
];

type Files = BTreeMap<String, Vec<u8>>;
/// How the license server answers a sync in a state.
type Answer = fn() -> Handler;
/// The files of one case and what is done to each.
type MutationSet = [(&'static str, Mutation)];

/// A state of the device directory to start every case from.
struct State {
    name: &'static str,
    files: Files,
    /// How the license server answers a sync in this state.
    answer: Answer,
}

/// The regular files of `dir` (the lock file included: it is state an attacker can replace).
fn files_of(dir: &Path) -> Files {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn write_files(dir: &Path, files: &Files) {
    use std::os::unix::fs::PermissionsExt;
    for (name, bytes) in files {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// A license for `dev`/`act` with the given times, echoing `nonce`.
fn timed_license(
    key: &SigningKey,
    dev: &str,
    times: (i64, i64, i64),
    nonce: Option<&str>,
) -> String {
    let mut c = crate::jwt::tests::claims(times.0, times.1, times.2);
    c.dev = dev.to_string();
    c.act = Some("act-1".to_string());
    c.jti = format!("jti-{}", times.0);
    c.nce = nonce.map(str::to_string);
    crate::jwt::sign(&c, key)
}

fn refusing(status: u16, code: &str) -> Handler {
    let code = code.to_string();
    Box::new(move |_| error_resp(status, &code))
}

/// Runs `f` in its own thread; a panic or a run past [`DEADLINE`] is an `Err` naming `what`.
fn within<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(v) => Ok(v),
        Err(RecvTimeoutError::Timeout) => Err(format!("{what}: still running after {DEADLINE:?}")),
        Err(RecvTimeoutError::Disconnected) => Err(format!("{what}: panicked")),
    }
}

/// Whether the files of `dir` give a usable license, by every reader: `LoadedLicense::load` (edged,
/// the supervisor) and `status::report` (the CLI). An error counts as not usable.
fn usable(dir: &AccountsDir, keys: &TrustedKeys, what: &str) -> Result<Option<String>, String> {
    let (d, k) = (dir.clone(), keys.clone());
    let loaded = within(&format!("{what}: load"), move || {
        LoadedLicense::load(&d, &k).map(|l| l.evaluate(SystemTime::now()))
    })?;
    let (d, k) = (dir.clone(), keys.clone());
    let reported = within(&format!("{what}: status"), move || {
        crate::status::report(&d, &k, SystemTime::now())
    })?;
    let mut usable = Vec::new();
    if let Ok(e) = &loaded
        && e.status.allows_gated()
    {
        usable.push(format!("load says {}", e.status));
    }
    if let Ok(r) = &reported
        && r.status.allows_gated()
    {
        usable.push(format!("status says {}", r.status));
    }
    Ok((!usable.is_empty()).then(|| usable.join(", ")))
}

/// The device's own writers after the mutation: usage flush, both high-water write-backs, a sync.
fn run_operations(dir: &AccountsDir, keys: &TrustedKeys, what: &str) -> Result<(), String> {
    let (d, k) = (dir.clone(), keys.clone());
    within(&format!("{what}: write-backs"), move || {
        let counters = UsageCounters::new();
        counters.increment("privitty_send_file");
        let _ = counters.flush(&d);
        if let Ok(l) = LoadedLicense::load(&d, &k) {
            l.evaluate(SystemTime::now());
            let _ = l.persist_high_water(&d);
            let _ = d.persist_high_water(l.high_water());
        }
    })?;
    let (d, k) = (dir.clone(), keys.clone());
    within(&format!("{what}: sync"), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _ = rt.block_on(sync(&d, &k));
    })
}

/// Replaces `name` in `dir` as `mutation` says; `older` and `current` supply the copies.
fn mutate(
    dir: &Path,
    outside: &Path,
    name: &str,
    mutation: Mutation,
    older: &Files,
    current: &Files,
) {
    let path = dir.join(name);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path).unwrap(),
        Ok(_) => std::fs::remove_file(&path).unwrap(),
        Err(_) => {}
    }
    // The most dangerous valid copy: from before the withdrawal; for the license that was moved
    // aside, the moved copy.
    let valid = older.get(name).or_else(|| current.get(name)).or_else(|| {
        (name == LICENSE_FILE)
            .then(|| current.get(REVOKED_LICENSE_FILE))
            .flatten()
    });
    match mutation {
        Mutation::Delete => {}
        Mutation::Truncate => std::fs::write(&path, b"").unwrap(),
        Mutation::Garbage => {
            std::fs::write(&path, b"\x00\xff{\"state\":\"active\"\x01 garbage").unwrap()
        }
        Mutation::Fifo => nix::unistd::mkfifo(
            &path,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .unwrap(),
        Mutation::Symlink => {
            let target = outside.join(name);
            std::fs::write(&target, valid.map_or(&b"x"[..], Vec::as_slice)).unwrap();
            std::os::unix::fs::symlink(&target, &path).unwrap();
        }
        Mutation::Directory => {
            std::fs::create_dir(&path).unwrap();
            std::fs::write(path.join("inside"), b"x").unwrap();
        }
        Mutation::Older => {
            if let Some(bytes) = older.get(name) {
                std::fs::write(&path, bytes).unwrap();
            }
        }
    }
}

/// Builds the states with the real operations; returns (usable files, the states).
fn build_states(
    rt: &tokio::runtime::Runtime,
    server: &Server,
    key: &SigningKey,
) -> (Files, Vec<State>) {
    let keys = trusted(key);
    let now = now();
    rt.block_on(async {
        // Usable: activated with a license issued 1000 s ago, usage counted, a failed sync noted.
        let k = key.clone();
        server.answer(move |r| {
            let nonce = r.body["nonce"].as_str().map(str::to_string);
            json_resp(
                201,
                json!({"activation_id": "act-1", "device_secret": "dev-secret-1",
                       "license_jwt": timed_license(&k, &device_of(r), (now - 1000, now + 80_000, now + 160_000), nonce.as_deref()),
                       "server_time": now}),
            )
        });
        let usable_tmp = tempfile::tempdir().unwrap();
        let dir = AccountsDir::new(usable_tmp.path());
        activate(&dir, &server.url(), &keys, &req()).await.unwrap();
        let counters = UsageCounters::new();
        counters.increment("privitty_send_file");
        counters.flush(&dir).unwrap();
        server.answer(|_| error_resp(502, "bad_gateway"));
        sync(&dir, &keys).await.unwrap_err();
        let usable = files_of(dir.path());
        assert!(usable.contains_key(SYNC_STATE_FILE) && usable.contains_key(USAGE_FILE));
        assert_eq!(
            crate::status::report(&dir, &keys, SystemTime::now()).unwrap().status,
            Status::Active
        );

        let from_usable = |prepare: Handler| {
            let tmp = tempfile::tempdir().unwrap();
            write_files(tmp.path(), &usable);
            server.answer(prepare);
            tmp
        };
        let mut states = Vec::new();

        let withdrawals: [(&str, &str, Answer); 2] = [
            ("revoked", "revoked", || refusing(410, "revoked")),
            ("deactivated", "deactivated", || refusing(410, "deactivated")),
        ];
        for (name, code, answer) in withdrawals {
            let tmp = from_usable(refusing(410, code));
            let dir = AccountsDir::new(tmp.path());
            sync(&dir, &keys).await.unwrap_err();
            states.push(State {
                name,
                files: files_of(tmp.path()),
                answer,
            });
        }

        // Deactivated by the operator (the seat released on the server).
        let tmp = from_usable(Box::new(|_| Resp {
            status: 204,
            headers: vec![],
            body: vec![],
        }));
        let dir = AccountsDir::new(tmp.path());
        deactivate(&dir, false).await.unwrap();
        states.push(State {
            name: "deactivated by the operator",
            files: files_of(tmp.path()),
            answer: || refusing(410, "deactivated"),
        });

        // Expired: the server shortened the license (a newer one, already past its exp).
        let k = key.clone();
        let tmp = from_usable(Box::new(move |r: &Req| {
            json_resp(
                200,
                json!({"license_jwt": timed_license(&k, &device_of(r), (now - 900, now - 800, now - 700), r.body["nonce"].as_str()),
                       "server_time": now, "acked_report_ids": []}),
            )
        }));
        let dir = AccountsDir::new(tmp.path());
        sync(&dir, &keys).await.unwrap();
        states.push(State {
            name: "expired",
            files: files_of(tmp.path()),
            answer: || refusing(410, "license_expired"),
        });

        // No license: a device identity whose activation was refused.
        let tmp = tempfile::tempdir().unwrap();
        let dir = AccountsDir::new(tmp.path());
        server.answer(|_| error_resp(404, "unknown_token"));
        activate(&dir, &server.url(), &keys, &req()).await.unwrap_err();
        states.push(State {
            name: "no license",
            files: files_of(tmp.path()),
            answer: || refusing(404, "not_activated"),
        });
        (usable, states)
    })
}

/// The mutations of one case: every single one, and the old license put back together with every
/// other single mutation (the second file an attacker would have to defeat). Only the complete
/// rollback of both `privitty.lic` and `activation.json` to their older copies is left out: nothing
/// in a volume the attacker fully controls can tell it from the genuine older state (the next sync
/// ends it; see the README's status section).
fn mutation_sets() -> Vec<Vec<(&'static str, Mutation)>> {
    let singles = FILES
        .into_iter()
        .flat_map(|name| MUTATIONS.into_iter().map(move |m| (name, m)));
    let mut sets: Vec<Vec<_>> = singles.clone().map(|one| vec![one]).collect();
    sets.extend(
        singles
            .filter(|&(name, m)| {
                name != LICENSE_FILE && (name, m) != (ACTIVATION_FILE, Mutation::Older)
            })
            .map(|other| vec![(LICENSE_FILE, Mutation::Older), other]),
    );
    sets
}

/// A fresh copy of `files` in a temp dir, with `mutations` applied.
fn prepared(
    files: &Files,
    older: &Files,
    mutations: &[(&str, Mutation)],
) -> (tempfile::TempDir, AccountsDir) {
    let root = tempfile::tempdir().unwrap();
    let dir = AccountsDir::new(root.path().join("accounts"));
    let outside = root.path().join("elsewhere");
    std::fs::create_dir(dir.path()).unwrap();
    std::fs::create_dir(&outside).unwrap();
    write_files(dir.path(), files);
    for &(name, mutation) in mutations {
        mutate(dir.path(), &outside, name, mutation, older, files);
    }
    (root, dir)
}

/// Runs `case` for every mutation set on a few threads (the cases are independent directories;
/// most of their time is fsync); returns the failures.
fn run_sets(
    sets: &[Vec<(&'static str, Mutation)>],
    case: &(dyn Fn(&MutationSet) -> Vec<String> + Sync),
) -> Vec<String> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                while let Some(set) =
                    sets.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                {
                    let found = case(set);
                    failures.lock().unwrap().extend(found);
                }
            });
        }
    });
    failures.into_inner().unwrap()
}

#[test]
fn no_file_mutation_revives_a_license_and_nothing_hangs() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(Server::start());
    let key = new_key();
    let keys = trusted(&key);
    let (usable_files, states) = build_states(&rt, &server, &key);
    let sets = mutation_sets();

    let mut failures = Vec::new();
    for state in &states {
        let (_root, dir) = prepared(&state.files, &usable_files, &[]);
        match usable(&dir, &keys, state.name) {
            Ok(None) => {}
            Ok(Some(how)) => panic!("{}: usable before any mutation ({how})", state.name),
            Err(e) => panic!("{e}"),
        }
        server.answer((state.answer)());
        failures.extend(run_sets(&sets, &|set| {
            let what = format!("{}: {set:?}", state.name);
            let (_root, dir) = prepared(&state.files, &usable_files, set);
            let mut found = Vec::new();
            for step in [
                "after the mutation",
                "after the device's own writes and a sync",
            ] {
                if step != "after the mutation"
                    && let Err(e) = run_operations(&dir, &keys, &what)
                {
                    found.push(e);
                    break;
                }
                match usable(&dir, &keys, &what) {
                    Ok(None) => {}
                    Ok(Some(how)) => found.push(format!("{what}: usable {step} ({how})")),
                    Err(e) => {
                        found.push(e);
                        break;
                    }
                }
            }
            found
        }));
    }

    // From the usable state no mutation may hang or panic a reader or an operation (whether the
    // license stays usable is free).
    server.answer(sync_handler(key.clone()));
    failures.extend(run_sets(&sets, &|set| {
        let what = format!("usable: {set:?}");
        let (_root, dir) = prepared(&usable_files, &usable_files, set);
        usable(&dir, &keys, &what)
            .and_then(|_| run_operations(&dir, &keys, &what))
            .err()
            .into_iter()
            .collect()
    }));
    let cases = (states.len() + 1) * sets.len();
    eprintln!(
        "{cases} cases: {} states × {} mutation sets",
        states.len() + 1,
        sets.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {cases} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
