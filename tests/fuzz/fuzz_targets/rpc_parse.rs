//! Fuzzes `edged::rpc::parse`, the JSON-RPC envelope parser every HTTP body reaches before any
//! authentication, and `rpc::response`, which echoes the client's id byte for byte.
//!
//! Input: the raw request body. Oracles (besides no panic, hang or allocation over the cap):
//! every parse outcome serializes to a response that is valid JSON, the echoed id is the
//! client's exact text and one of string/number/null, a call's params survive the round trip,
//! and error codes are the documented ones.

#![no_main]

use edged::rpc::{self, Body, Item};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use serde_json::value::RawValue;

#[derive(serde::Deserialize)]
struct Response<'a> {
    jsonrpc: String,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
    #[serde(borrow)]
    id: &'a RawValue,
}

/// Serializes one outcome and checks the response is what a client expects.
fn check_response(id: &RawValue, outcome: &rpc::Outcome) {
    let text = rpc::response(id, outcome);
    let parsed: Response<'_> = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("response is not JSON-RPC ({e}): {text}"));
    assert_eq!(parsed.jsonrpc, "2.0");
    assert_eq!(parsed.id.get(), id.get(), "the id must be echoed exactly");
    match outcome {
        Ok(result) => assert!(
            parsed.result.as_ref().is_some_and(|r| same(r, result)),
            "the result changed on the way out: {text}"
        ),
        Err(_) => assert!(parsed.error.is_some(), "{text}"),
    }
}

/// Equality that lets a float move by an ulp: serde_json parses floats best-effort unless its
/// `float_roundtrip` feature is on, which is not this crate's business.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            x == y || (x - y).abs() <= f64::EPSILON * 4.0 * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn check_id(id: &RawValue) {
    let first = id.get().as_bytes().first().copied();
    assert!(
        matches!(first, Some(b'"' | b'-' | b'0'..=b'9' | b'n')),
        "id must be a string, a number or null: {}",
        id.get()
    );
    assert!(serde_json::from_str::<&RawValue>(id.get()).is_ok());
}

fn check_item(item: Item) {
    match item {
        Item::Call(call) => {
            if let Some(id) = &call.id {
                check_id(id);
            }
            let id = call.id.unwrap_or_else(rpc::null_id);
            check_response(&id, &Ok(Value::Array(call.params)));
        }
        Item::Invalid { id, error } => {
            check_id(&id);
            assert_eq!(error.code, rpc::INVALID_REQUEST, "{error:?}");
            check_response(&id, &Err(error));
        }
        Item::BadParams { id, method, error } => {
            check_id(&id);
            assert_eq!(error.code, rpc::INVALID_PARAMS, "{method}: {error:?}");
            check_response(&id, &Err(error));
        }
    }
}

fuzz_target!(|body: &[u8]| {
    match rpc::parse(body) {
        Body::Single(item) => check_item(item),
        Body::Batch(items) => {
            assert!(!items.is_empty(), "an empty batch is an error, not a batch");
            items.into_iter().for_each(check_item);
        }
        Body::Broken(error) => {
            assert!(
                matches!(error.code, rpc::PARSE_ERROR | rpc::INVALID_REQUEST),
                "{error:?}"
            );
            check_response(&rpc::null_id(), &Err(error));
        }
    }
});
