//! The key store: survives a reopen, keeps secrets private, refuses unsafe master keys.

use super::*;

#[test]
fn store_survives_reopen_and_keeps_secrets_private() {
    let env = Env::new();
    let out = env.send(&env.file("keep.txt", b"kept"), 0);
    let (prv, file_id) = (prv_path(&out), file_id_of(&out));

    let store_dir = env.accounts.path().join(store::STORE_DIR);
    let master = store_dir.join(store::MASTER_KEY_FILE);
    let meta = fs::metadata(&master).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 32);
    assert_eq!(
        fs::metadata(&store_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let record_path = store_dir
        .join(store::FILES_DIR)
        .join(format!("{file_id}.json"));
    assert_eq!(
        fs::metadata(&record_path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The clear file key appears nowhere: not in the record, the result, the events or Debug.
    let mut src = fs::File::open(&prv).unwrap();
    let (header, _) = Header::read_from(&mut src, &prv).unwrap();
    let key = env
        .p
        .store
        .unwrap(&env.p.store.get(header.meta.file_id).unwrap())
        .unwrap();
    let key_hex = hex::encode(key.0);
    let master_hex = hex::encode(fs::read(&master).unwrap());
    let visible = format!(
        "{} {} {:?} {:?} {:?}",
        fs::read_to_string(&record_path).unwrap(),
        out.result,
        out.events,
        env.p,
        key
    );
    assert!(
        !visible.contains(&key_hex) && !visible.contains(&master_hex),
        "{visible}"
    );

    let master_before = fs::read(&master).unwrap();
    drop(env.p);
    let p = Privitty::open(env.accounts.path()).unwrap();
    assert_eq!(
        fs::read(&master).unwrap(),
        master_before,
        "the master key is created once"
    );
    let mut plain = Vec::new();
    p.decrypt_to(&prv, &mut plain).unwrap();
    assert_eq!(plain, b"kept");
    let leftovers: Vec<_> = fs::read_dir(&store_dir)
        .unwrap()
        .chain(fs::read_dir(store_dir.join(store::FILES_DIR)).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "no temp files left: {leftovers:?}");
}

#[test]
fn unsafe_master_key_files_are_refused() {
    let accounts = tempfile::tempdir().unwrap();
    let _dump = DumpOnPanic(vec![accounts.path().to_owned()]);
    drop(Privitty::open(accounts.path()).unwrap());
    let master = accounts.path().join("privitty/master.key");

    fs::set_permissions(&master, fs::Permissions::from_mode(0o644)).unwrap();
    let err = Privitty::open(accounts.path()).unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");
    assert_eq!(err.rpc_code(), -32050);

    fs::set_permissions(&master, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(&master, [0u8; 31]).unwrap();
    let err = Privitty::open(accounts.path()).unwrap_err();
    assert!(
        err.to_string().contains("is 31 bytes, expected 32"),
        "{err}"
    );
    assert_eq!(
        fs::read(&master).unwrap().len(),
        31,
        "a damaged key is never silently replaced"
    );
}
