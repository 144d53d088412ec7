//! Fuzzes the license-file loader: the `activation.json` parser (`licensectl::accounts::Activation`,
//! what `AccountsDir::activation` deserializes) and `LoadedLicense::from_parts`, which turns the
//! contents of `privitty.lic`, `device.uuid` and `activation.json` into a status. All three are
//! files in the data volume, outside the trust boundary.
//!
//! Input: a control byte, then `0xFF`-separated sections: `activation.json`, `device.uuid`, and
//! the license (raw bytes, or a JWS header and payload the target signs with its fixed trusted
//! key), then 16 bytes of two clock readings (seconds relative to the license's `iat`) and, in
//! edit mode, 4-byte edits of the signed license.
//!
//! Control byte: bit 0 `activation.json` present, bit 1 `device.uuid` present, bits 2-3 license
//! mode (0 raw, 1 signed, 2 signed then edited, 3 signed by an untrusted key).
//!
//! Oracles: `activation.json` survives the rewrite the device does (serialize, parse) unchanged,
//! and its `Debug` never depends on the device secret; a usable status has verified claims, an
//! activation in state `active` (or none) and an identity that hashes the license bytes; a
//! deactivated or revoked activation is never usable; the status never moves back in time when
//! the clock is set back (high-water mark), nor between `no_license` and anything else; a license
//! that carries `act` is usable only beside an `activation.json` that is `active` for exactly that
//! activation and recorded no newer license (issue 8, item 1).

#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use licensectl::accounts::{Activation, ActivationState, unix_secs};
use licensectl::jwt::{self, Binding};
use licensectl::{Evaluation, LoadedLicense, Status};
use privitty_edge_fuzz::input::{Cursor, text};
use privitty_edge_fuzz::{license, mutate};
use sha2::{Digest, Sha256};

fn check_activation(a: &Activation) {
    let mut json = serde_json::to_vec_pretty(a).expect("an activation serializes");
    json.push(b'\n');
    let again: Activation = serde_json::from_slice(&json).unwrap_or_else(|e| {
        panic!(
            "the rewritten activation.json does not parse ({e}): {}",
            String::from_utf8_lossy(&json)
        )
    });
    assert!(
        again == *a,
        "activation.json changed on rewrite: {a:?} → {again:?}"
    );
    let mut without_secret = a.clone();
    without_secret.device_secret.clear();
    assert_eq!(
        format!("{a:?}"),
        format!("{without_secret:?}"),
        "Debug shows the device secret"
    );
    assert_eq!(
        serde_json::to_value(a.state).ok(),
        Some(a.state.as_str().into())
    );
}

fn time(secs: i64) -> SystemTime {
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    };
    t.unwrap_or(UNIX_EPOCH)
}

/// Later is worse: active, grace period, expired.
fn rank(e: &Evaluation) -> u8 {
    match e.status {
        Status::Active => 0,
        Status::GracePeriod => 1,
        Status::Expired => 2,
        Status::NoLicense => 3,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor::new(data);
    let control = input.u8();
    let activation_bytes = input.section();
    let device_bytes = input.section();
    let mode = (control >> 2) & 3;
    let license_bytes = if mode == 0 {
        input.section().to_vec()
    } else {
        let (header, payload) = (input.section(), input.section());
        let key = if mode == 3 {
            license::other_key()
        } else {
            license::key()
        };
        license::sign_bytes(header, payload, &key).into_bytes()
    };
    let (offset_1, offset_2) = (input.i64(), input.i64());
    let mut license_bytes = license_bytes;
    if mode == 2 {
        mutate::apply(&mut license_bytes, input.rest());
    }

    let activation = if control & 1 != 0 {
        match serde_json::from_slice::<Activation>(activation_bytes) {
            Ok(a) => {
                check_activation(&a);
                Some(a)
            }
            // `LoadedLicense::load` stops here: a corrupt activation.json is `no_license`.
            Err(_) => return,
        }
    } else {
        None
    };
    let device = (control & 2 != 0).then(|| text(device_bytes));
    let keys = license::trusted();
    let loaded = LoadedLicense::from_parts(
        &license_bytes,
        device.as_deref(),
        activation.as_ref(),
        &keys,
    );

    let base = loaded.claims().map_or(0, |c| c.iat);
    let (t1, t2) = (
        time(base.saturating_add(offset_1)),
        time(base.saturating_add(offset_2)),
    );
    let e1 = loaded.evaluate(t1);
    let e2 = loaded.evaluate(t2);
    assert_eq!(
        e1.status == Status::NoLicense,
        e2.status == Status::NoLicense,
        "{e1:?} then {e2:?}"
    );
    if unix_secs(t2) <= unix_secs(t1) {
        assert!(
            rank(&e2) >= rank(&e1),
            "setting the clock back improved the status: {e1:?} then {e2:?}"
        );
    }

    if let Some(claims) = loaded.claims() {
        let hw = loaded.high_water();
        assert!(hw >= unix_secs(t1).max(unix_secs(t2)).max(claims.iat));
        // The record of this very activation carries the mark forward.
        if let Some(a) = activation
            .as_ref()
            .filter(|a| claims.act.as_deref() == Some(a.activation_id.as_str()))
        {
            assert!(
                hw >= a.high_water,
                "the activation's high-water mark was lost"
            );
        }
        if e1.status != Status::NoLicense {
            assert_eq!(
                (e1.expires_at, e1.grace_ends_at),
                (Some(claims.sync_by), Some(claims.exp))
            );
        }
    }
    let state = activation.as_ref().map(|a| a.state);
    for e in [&e1, &e2] {
        if !e.status.allows_gated() {
            continue;
        }
        assert!(
            matches!(state, None | Some(ActivationState::Active)),
            "usable with an activation in state {state:?}"
        );
        assert_ne!(mode, 3, "usable with a license signed by an untrusted key");
        let claims = loaded.claims().expect("a usable status has claims");
        let identity = loaded.identity().expect("a usable status has an identity");
        assert_eq!(identity.sha256, hex(&Sha256::digest(&license_bytes)));
        assert_eq!(
            (identity.jti.as_str(), identity.iat),
            (claims.jti.as_str(), claims.iat)
        );
        let text = std::str::from_utf8(&license_bytes).expect("a usable license is UTF-8");
        assert!(
            license::strictly_signed(text),
            "usable without a valid signature"
        );
        let binding = Binding {
            device_uuid: device.as_deref().expect("a usable status has a device"),
            activation_id: activation.as_ref().map(|a| a.activation_id.as_str()),
        };
        assert_eq!(jwt::verify(text, &keys, &binding).as_ref(), Ok(claims));
        if let Some(act) = &claims.act {
            assert!(
                activation.as_ref().is_some_and(|a| a.activation_id == *act
                    && a.state == ActivationState::Active
                    && a.lic_iat.is_none_or(|iat| iat <= claims.iat)),
                "a license bound to activation {act:?} is usable without it (activation: {activation:?})"
            );
        }
    }
});

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
