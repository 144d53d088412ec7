//! The seed corpus: a handful of valid and near-valid inputs per target, in each target's input
//! layout (see the target's doc comment). `examples/write_corpus.rs` writes them under
//! `corpus/<target>/<name>`; everything here is deterministic, so rewriting changes nothing.

use edged::privitty::FileMeta;
use edged::privitty::format::{self, Header};

use crate::input::SEP;
use crate::license::{self, ACT, DEV};

/// One seed: target, file name, bytes.
pub type Seed = (&'static str, &'static str, Vec<u8>);

pub fn all() -> Vec<Seed> {
    let mut seeds = Vec::new();
    seeds.extend(rpc_parse());
    seeds.extend(license_jwt());
    seeds.extend(prv_reader());
    seeds.extend(license_files());
    seeds
}

fn join(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(&SEP)
}

fn rpc_parse() -> Vec<Seed> {
    let bodies: &[(&str, &str)] = &[
        (
            "get-info",
            r#"{"jsonrpc":"2.0","id":1,"method":"get_info","params":[1]}"#,
        ),
        (
            "send-file",
            r#"{"jsonrpc":"2.0","id":"a-1","method":"privitty_send_file","params":[1,10,10,"/tmp/report.csv",true,false,60]}"#,
        ),
        (
            "send-msg",
            r#"{"jsonrpc":"2.0","id":7,"method":"send_msg","params":[1,10,{"file":"/tmp/report.csv.prv","viewtype":"File","text":"h\u00e9\ud83d\ude00"}]}"#,
        ),
        (
            "batch",
            r#"[{"jsonrpc":"2.0","id":1,"method":"get_config","params":[1,"ui.x"]},{"jsonrpc":"2.0","method":"notify","params":null},{"jsonrpc":"2.0","id":null,"method":"m"}]"#,
        ),
        (
            "ids",
            r#"[{"jsonrpc":"2.0","method":"m","id":12345678901234567890123},{"jsonrpc":"2.0","method":"m","id":-1.50e3},{"jsonrpc":"2.0","method":"m","id":{"x":1}},{"jsonrpc":"2.0","method":"m","id":true}]"#,
        ),
        (
            "invalid",
            r#"[1,{"method":"m","id":1},{"jsonrpc":"2.0","method":5,"id":2},{"jsonrpc":"2.0","method":"m","params":{"a":1},"id":3},{"jsonrpc":"2.0","method":"m","params":[1e999],"id":"x"},{"jsonrpc":"2.0","method":"m","id":4,"id":5}]"#,
        ),
        ("broken", r#"{"jsonrpc":"2.0","method":"m","params":[1,2"#),
        ("empty-batch", " [ ] "),
        (
            "deep",
            "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
        ),
        (
            "escapes",
            "{\"jsonrpc\":\"2\\u002e0\",\"method\":\"\\ud800\",\"id\":\"\\\"\"}",
        ),
    ];
    bodies
        .iter()
        .map(|(name, body)| ("rpc_parse", *name, body.as_bytes().to_vec()))
        .collect()
}

/// License-JWT control byte: `mode | device << 2 | activation << 4` (see the target).
fn jwt_control(mode: u8, device: u8, activation: u8) -> u8 {
    mode | device << 2 | activation << 4
}

fn valid_token(act: bool) -> String {
    license::sign_bytes(
        license::header_json().as_bytes(),
        license::claims_json(act).as_bytes(),
        &license::key(),
    )
}

fn license_jwt() -> Vec<Seed> {
    let header = license::header_json();
    let claims = license::claims_json(true);
    let offline = license::claims_json(false);
    let signed = |control: u8, h: &str, p: &str, edits: &[u8]| {
        let mut out = vec![control];
        out.extend(join(&[h.as_bytes(), p.as_bytes(), edits]));
        out
    };
    let with = |json: &str, key: &str, value: serde_json::Value| {
        let mut v: serde_json::Value = serde_json::from_str(json).expect("seed JSON");
        v[key] = value;
        v.to_string()
    };
    let raw = |token: &str| {
        let mut out = vec![jwt_control(0, 0, 1)];
        out.extend_from_slice(token.as_bytes());
        out
    };
    vec![
        (
            "license_jwt",
            "signed-bound",
            signed(jwt_control(1, 0, 1), &header, &claims, &[]),
        ),
        (
            "license_jwt",
            "signed-offline",
            signed(jwt_control(1, 1, 0), &header, &offline, &[]),
        ),
        (
            "license_jwt",
            "signed-wrong-activation",
            signed(jwt_control(1, 0, 2), &header, &claims, &[]),
        ),
        (
            "license_jwt",
            "forged",
            signed(jwt_control(2, 0, 1), &header, &claims, &[]),
        ),
        // Flip a bit of the signature, then truncate the last segment.
        (
            "license_jwt",
            "edited",
            signed(
                jwt_control(3, 0, 1),
                &header,
                &claims,
                &[0, 0xff, 0xf0, 3, 2, 0xff, 0xfa, 0],
            ),
        ),
        (
            "license_jwt",
            "ver-2",
            signed(
                jwt_control(1, 0, 1),
                &header,
                &with(&claims, "ver", 2.into()),
                &[],
            ),
        ),
        (
            "license_jwt",
            "exp-before-iat",
            signed(
                jwt_control(1, 0, 1),
                &header,
                &with(&claims, "exp", 5.into()),
                &[],
            ),
        ),
        (
            "license_jwt",
            "crit",
            signed(
                jwt_control(1, 0, 1),
                &with(&header, "crit", serde_json::json!(["exp"])),
                &claims,
                &[],
            ),
        ),
        (
            "license_jwt",
            "typ-jwt",
            signed(
                jwt_control(1, 0, 1),
                &with(&header, "typ", "JWT".into()),
                &claims,
                &[],
            ),
        ),
        (
            "license_jwt",
            "raw-valid",
            raw(&format!("{}\n", valid_token(true))),
        ),
        (
            "license_jwt",
            "raw-alg-none",
            raw("eyJhbGciOiJub25lIiwidHlwIjoicHJpdml0dHktbGljK2p3dCJ9.e30."),
        ),
        ("license_jwt", "raw-garbage", raw("e30.e30.e30")),
    ]
}

/// A constructed `.prv` input: control byte (bit 0 set), then the fields in the target's order.
#[allow(clippy::too_many_arguments)]
fn prv_constructed(
    through_read: bool,
    flags: u8,
    peer: u32,
    expires_at: i64,
    chunk_selector: u8,
    name: &str,
    plain_len: u16,
    edits: &[u8],
) -> Vec<u8> {
    let mut out = vec![1 | u8::from(through_read) << 1, flags];
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&10u32.to_be_bytes());
    out.extend_from_slice(&peer.to_be_bytes());
    out.extend_from_slice(&1_700_000_000i64.to_be_bytes());
    out.extend_from_slice(&expires_at.to_be_bytes());
    out.push(chunk_selector);
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&plain_len.to_be_bytes());
    out.extend_from_slice(&[0x42; format::NONCE_PREFIX_LEN]);
    out.extend_from_slice(&[0x17; 16]);
    out.extend_from_slice(edits);
    out
}

fn prv_header() -> Header {
    Header {
        meta: FileMeta {
            file_id: uuid::Uuid::from_bytes([0x17; 16]),
            account_id: 1,
            chat_id: 10,
            peer_contact_id: Some(10),
            allow_download: true,
            allow_forward: false,
            created_at: 1_700_000_000,
            expires_at: Some(1_700_003_600),
            original_name: "report.csv".into(),
            original_size: 1500,
        },
        chunk_size: format::MIN_CHUNK_SIZE,
        nonce_prefix: [0x42; format::NONCE_PREFIX_LEN],
    }
}

fn prv_reader() -> Vec<Seed> {
    // Header, then two sealed chunks of zeros (1024 + 16, 476 + 16): the shape of a real file.
    let mut raw = vec![0u8];
    raw.extend(prv_header().encode());
    raw.extend(vec![0u8; 1040 + 492]);
    let mut version_2 = raw.clone();
    version_2[1 + 9] = 2;
    let header = prv_header();
    let group = Header {
        meta: FileMeta {
            peer_contact_id: None,
            expires_at: None,
            original_size: 0,
            ..header.meta
        },
        ..header
    };
    let mut raw_group = vec![0u8];
    raw_group.extend(group.encode());
    raw_group.extend([0u8; 16]);
    vec![
        ("prv_reader", "raw-two-chunks", raw),
        ("prv_reader", "raw-version-2", version_2),
        ("prv_reader", "raw-group-empty", raw_group),
        (
            "prv_reader",
            "valid-3-chunks",
            prv_constructed(false, 1, 10, 0, 0, "report.csv", 2500, &[]),
        ),
        (
            "prv_reader",
            "valid-group-read",
            prv_constructed(true, 7, 0, 1_700_003_600, 2, "données.bin", 4000, &[]),
        ),
        (
            "prv_reader",
            "valid-empty",
            prv_constructed(false, 0, 3, 0, 4, "empty", 0, &[]),
        ),
        // Truncate inside the second chunk; then: flip a tag bit; append a byte; repeat a chunk.
        (
            "prv_reader",
            "truncated",
            prv_constructed(false, 1, 10, 0, 0, "a", 2500, &[2, 0x06, 0x00, 0]),
        ),
        (
            "prv_reader",
            "flipped",
            prv_constructed(false, 1, 10, 0, 1, "b", 1500, &[0, 0x04, 0x10, 1]),
        ),
        (
            "prv_reader",
            "trailing",
            prv_constructed(false, 1, 10, 0, 0, "c", 100, &[5, 0, 0, 0]),
        ),
        (
            "prv_reader",
            "repeated-chunk",
            prv_constructed(false, 1, 10, 0, 0, "d", 3000, &[6, 0x04, 0x51, 0xff]),
        ),
        (
            "prv_reader",
            "bad-chunk-size",
            prv_constructed(false, 1, 10, 0, 6, "e", 10, &[]),
        ),
    ]
}

fn activation_json(state: &str, id: &str) -> String {
    serde_json::json!({
        "activation_id": id,
        "device_secret": "ds-0123456789abcdef0123456789abcdef",
        "state": state,
        "lic_jti": "jti-1",
        "lic_iat": 1_700_000_000,
        "seq": 3,
        "high_water": 1_700_000_500,
        "high_water_epoch": 1,
        "last_sync_ok_at": "2023-11-14T22:13:20Z",
        "last_sync_error": null,
        "activated_at": "2023-11-14T22:13:20Z",
        "deactivated_at": null,
        "server_extension": {"x": [1, 2.5, "y", null, true]},
    })
    .to_string()
}

/// A license-files input: control, `activation.json`, `device.uuid`, the license sections, the
/// two clock offsets, edits.
fn files(
    control: u8,
    activation: &str,
    license: &[&[u8]],
    offsets: (i64, i64),
    edits: &[u8],
) -> Vec<u8> {
    let mut sections: Vec<&[u8]> = vec![
        activation.as_bytes(),
        b"0b6a4a39-52f9-4a8e-9b5d-0123456789ab",
    ];
    sections.extend_from_slice(license);
    let mut out = vec![control];
    out.extend(join(&sections));
    out.push(SEP);
    out.extend_from_slice(&offsets.0.to_be_bytes());
    out.extend_from_slice(&offsets.1.to_be_bytes());
    out.extend_from_slice(edits);
    out
}

fn license_files() -> Vec<Seed> {
    let header = license::header_json();
    let bound = license::claims_json(true);
    let offline = license::claims_json(false);
    let signed: [&[u8]; 2] = [header.as_bytes(), bound.as_bytes()];
    let active = activation_json("active", ACT);
    let token = valid_token(true);
    // Control: bit 0 activation present, bit 1 device present, bits 2-3 mode.
    let (both, signed_mode, edited_mode, forged_mode) = (3u8, 1u8 << 2, 2u8 << 2, 3u8 << 2);
    debug_assert_eq!(license::device(0), DEV);
    vec![
        (
            "license_files",
            "active",
            files(both | signed_mode, &active, &signed, (100, 50), &[]),
        ),
        (
            "license_files",
            "grace-then-back",
            files(both | signed_mode, &active, &signed, (90_000, 10), &[]),
        ),
        (
            "license_files",
            "expired",
            files(both | signed_mode, &active, &signed, (200_000, -5), &[]),
        ),
        (
            "license_files",
            "deactivated",
            files(
                both | signed_mode,
                &activation_json("deactivated", ACT),
                &signed,
                (1, 1),
                &[],
            ),
        ),
        (
            "license_files",
            "revoked",
            files(
                both | signed_mode,
                &activation_json("revoked", ACT),
                &signed,
                (1, 1),
                &[],
            ),
        ),
        (
            "license_files",
            "other-activation",
            files(
                both | signed_mode,
                &activation_json("active", "act-x"),
                &signed,
                (1, 1),
                &[],
            ),
        ),
        // A license bound to an activation, with activation.json missing (issue 8 item 1).
        (
            "license_files",
            "activation-missing",
            files(2 | signed_mode, "", &signed, (1, 1), &[]),
        ),
        (
            "license_files",
            "offline",
            files(
                2 | signed_mode,
                "",
                &[header.as_bytes(), offline.as_bytes()],
                (1, 1),
                &[],
            ),
        ),
        (
            "license_files",
            "raw-token",
            files(both, &active, &[token.as_bytes()], (1, 1), &[]),
        ),
        (
            "license_files",
            "no-device",
            files(1 | signed_mode, &active, &signed, (1, 1), &[]),
        ),
        (
            "license_files",
            "edited",
            files(
                both | edited_mode,
                &active,
                &signed,
                (1, 1),
                &[1, 0, 40, b'A'],
            ),
        ),
        (
            "license_files",
            "forged",
            files(both | forged_mode, &active, &signed, (1, 1), &[]),
        ),
        (
            "license_files",
            "corrupt-activation",
            files(both | signed_mode, &active[..40], &signed, (1, 1), &[]),
        ),
    ]
}
