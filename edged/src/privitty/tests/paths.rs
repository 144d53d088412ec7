//! Client-given paths: relative, symlinks, directories, FIFOs, missing, unreadable, an
//! unwritable directory, an existing `.prv`.

use super::*;

#[test]
fn relative_path_is_invalid_params() {
    let env = Env::new();
    let before = env.snapshot();
    let err = env
        .p
        .call(
            "privitty_send_file",
            &[
                json!(1),
                json!(12),
                json!(20),
                json!("docs/a.txt"),
                json!(true),
                json!(true),
                json!(0),
            ],
        )
        .unwrap()
        .unwrap_err();
    assert_eq!(err.rpc_code(), -32602);
    assert!(
        err.to_string()
            .contains("parameter 4 `path` must be an absolute path"),
        "{err}"
    );
    assert!(err.to_string().contains("\"docs/a.txt\""), "{err}");
    assert_eq!(env.snapshot(), before);
}

fn send_err(env: &Env, path: &Path) -> PrivittyError {
    let before = env.snapshot();
    let err = send_err_unchecked(env, path);
    assert_eq!(
        env.snapshot(),
        before,
        "a failed call writes nothing ({err})"
    );
    err
}

fn send_err_unchecked(env: &Env, path: &Path) -> PrivittyError {
    env.p
        .call(
            "privitty_send_file",
            &[
                json!(1),
                json!(12),
                json!(20),
                json!(path),
                json!(true),
                json!(true),
                json!(0),
            ],
        )
        .unwrap()
        .unwrap_err()
}

#[test]
fn symlinks_are_refused() {
    let env = Env::new();
    let target = env.file("real.txt", b"x");
    let link = env.data.path().join("link.txt");
    symlink(&target, &link).unwrap();
    let err = send_err(&env, &link);
    assert!(matches!(err, PrivittyError::Symlink { .. }), "{err}");
    assert_eq!(err.rpc_code(), -32011);
    assert!(err.to_string().contains("link.txt"), "{err}");

    // A symlink (even dangling) where the .prv would go counts as an existing output.
    symlink(
        env.data.path().join("elsewhere"),
        env.data.path().join("real.txt.prv"),
    )
    .unwrap();
    let err = send_err(&env, &target);
    assert!(matches!(err, PrivittyError::OutputExists { .. }), "{err}");
    assert!(!env.data.path().join("elsewhere").exists());
}

#[test]
fn directories_and_fifos_are_refused() {
    let env = Env::new();
    let dir = env.data.path().join("folder");
    fs::create_dir(&dir).unwrap();
    let err = send_err(&env, &dir);
    assert!(
        matches!(
            err,
            PrivittyError::NotRegularFile {
                kind: "directory",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.rpc_code(), -32012);

    let fifo = env.data.path().join("pipe");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let err = send_err(&env, &fifo);
    assert!(
        matches!(
            err,
            PrivittyError::NotRegularFile {
                kind: "named pipe",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn missing_file_is_refused() {
    let env = Env::new();
    let err = send_err(&env, &env.data.path().join("nope.txt"));
    assert!(matches!(err, PrivittyError::NotFound { .. }), "{err}");
    assert_eq!(err.rpc_code(), -32010);
    assert!(err.to_string().contains("nope.txt"), "{err}");
    let err = send_err(&env, &env.data.path().join("no-dir/nope.txt"));
    assert!(matches!(err, PrivittyError::NotFound { .. }), "{err}");
}

#[test]
fn unreadable_file_is_refused() {
    let env = Env::new();
    fs::set_permissions(env.data.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let path = env.file("locked.txt", b"x");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o000)).unwrap();
    // Root reads anything: drop to an unprivileged filesystem uid on a dedicated thread (fsuid is
    // per thread and clears the DAC override capabilities).
    let before = env.snapshot();
    let err = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if nix::unistd::geteuid().is_root() {
                    nix::unistd::setfsuid(nix::unistd::Uid::from_raw(65534));
                }
                assert!(
                    fs::File::open(&path).is_err(),
                    "the file must be unreadable for this test"
                );
                send_err_unchecked(&env, &path)
            })
            .join()
            .unwrap()
    });
    assert_eq!(
        env.snapshot(),
        before,
        "a failed call writes nothing ({err})"
    );
    assert!(
        matches!(err, PrivittyError::PermissionDenied { .. }),
        "{err}"
    );
    assert_eq!(err.rpc_code(), -32013);
    assert!(err.to_string().contains("locked.txt"), "{err}");
}

#[test]
fn unwritable_directory_is_refused() {
    let env = Env::new();
    fs::set_permissions(env.data.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let path = env.file("readable.txt", b"x");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let before = env.snapshot();
    let err = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if nix::unistd::geteuid().is_root() {
                    nix::unistd::setfsuid(nix::unistd::Uid::from_raw(65534));
                }
                send_err_unchecked(&env, &path)
            })
            .join()
            .unwrap()
    });
    assert_eq!(
        env.snapshot(),
        before,
        "a failed call writes nothing ({err})"
    );
    assert!(
        matches!(err, PrivittyError::PermissionDenied { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains(&env.data.path().display().to_string()),
        "{err}"
    );
}

#[test]
fn existing_prv_is_never_overwritten() {
    let env = Env::new();
    let path = env.file("doc.txt", b"new content");
    let existing = env.file("doc.txt.prv", b"precious");
    let err = send_err(&env, &path);
    assert!(matches!(err, PrivittyError::OutputExists { .. }), "{err}");
    assert_eq!(err.rpc_code(), -32014);
    assert_eq!(fs::read(&existing).unwrap(), b"precious");

    // Sending twice: the second refuses rather than replace the first.
    let env = Env::new();
    let path = env.file("doc.txt", b"content");
    let first = env.send(&path, 0);
    let prv_before = fs::read(prv_path(&first)).unwrap();
    let err = send_err(&env, &path);
    assert!(matches!(err, PrivittyError::OutputExists { .. }), "{err}");
    assert_eq!(fs::read(prv_path(&first)).unwrap(), prv_before);
}
