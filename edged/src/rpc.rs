//! JSON-RPC 2.0 on the wire: parsing a body into calls (single or batch), the standard error codes,
//! and writing responses with the client's id echoed byte for byte.
//!
//! Owns: the envelope rules (what is a request, a notification, a batch). Must not: decide what a
//! method does, or know about HTTP status codes.

use serde::de::{Deserializer, Error as _};
use serde::{Deserialize as _, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// A gated method was called without a usable license (documented contract).
pub const LICENSE_REQUIRED: i64 = -32001;
/// An answer larger than `PRIVITTY_RPC_MAX_RESPONSE` (per call, and per batch in total).
pub const RESPONSE_TOO_LARGE: i64 = -32004;

/// A JSON-RPC error object.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub fn with_data(mut self, data: Value) -> RpcError {
        self.data = Some(data);
        self
    }

    pub fn method_not_found(method: &str) -> RpcError {
        RpcError::new(METHOD_NOT_FOUND, format!("method not found: {method}"))
    }

    pub fn internal(message: impl Into<String>) -> RpcError {
        RpcError::new(INTERNAL_ERROR, message)
    }
}

/// One well-formed call taken from the body.
#[derive(Debug)]
pub struct Call {
    pub method: String,
    pub params: Vec<Value>,
    /// `None` for a notification (no `id` member); `Some("null")` for an explicit null id.
    pub id: Option<Box<RawValue>>,
}

/// An element of the body: a call, or something that already has its error response.
#[derive(Debug)]
pub enum Item {
    Call(Call),
    Invalid {
        id: Box<RawValue>,
        error: RpcError,
    },
    /// A well-formed request whose params are not positional: -32602, unless the method does not
    /// exist (-32601 comes first, as the JSON-RPC 2.0 specification's examples show) or the gate
    /// or the policy refuses it anyway.
    BadParams {
        id: Box<RawValue>,
        method: String,
        error: RpcError,
    },
}

/// What a body parsed into.
#[derive(Debug)]
pub enum Body {
    Single(Item),
    Batch(Vec<Item>),
    /// Not JSON, or an empty batch: the body gets this one error response with a null id.
    Broken(RpcError),
}

/// The outcome of one call, before it becomes a response.
pub type Outcome = Result<Value, RpcError>;

pub fn null_id() -> Box<RawValue> {
    RawValue::from_string("null".to_string()).expect("null is JSON")
}

#[derive(serde::Deserialize)]
struct WireRequest {
    #[serde(default)]
    jsonrpc: Option<Value>,
    #[serde(default)]
    method: Option<Value>,
    #[serde(default)]
    params: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    id: Option<Box<RawValue>>,
}

/// Keeps `"id": null` apart from a missing id (serde would fold both into `None`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    let raw = Box::<RawValue>::deserialize(d)?;
    let first = raw.get().trim_start().as_bytes().first().copied();
    match first {
        Some(b'"' | b'-' | b'0'..=b'9' | b'n') => Ok(Some(raw)),
        _ => Err(D::Error::custom("id must be a string, a number or null")),
    }
}

/// Parses a request body.
pub fn parse(body: &[u8]) -> Body {
    let raw: &RawValue = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return Body::Broken(RpcError::new(PARSE_ERROR, format!("parse error: {e}"))),
    };
    let text = raw.get().trim_start();
    if text.starts_with('[') {
        let elems: Vec<&RawValue> = match serde_json::from_str(raw.get()) {
            Ok(v) => v,
            Err(e) => return Body::Broken(RpcError::new(PARSE_ERROR, format!("parse error: {e}"))),
        };
        if elems.is_empty() {
            return Body::Broken(RpcError::new(
                INVALID_REQUEST,
                "invalid request: empty batch",
            ));
        }
        Body::Batch(elems.into_iter().map(item).collect())
    } else {
        Body::Single(item(raw))
    }
}

fn item(raw: &RawValue) -> Item {
    let invalid = |id: Option<Box<RawValue>>, why: String| Item::Invalid {
        id: id.unwrap_or_else(null_id),
        error: RpcError::new(INVALID_REQUEST, format!("invalid request: {why}")),
    };
    if !raw.get().trim_start().starts_with('{') {
        return invalid(
            None,
            "expected an object with jsonrpc, method, params, id".into(),
        );
    }
    let req: WireRequest = match serde_json::from_str(raw.get()) {
        Ok(r) => r,
        Err(e) => return invalid(readable_id(raw), e.to_string()),
    };
    if req.jsonrpc.as_ref().and_then(Value::as_str) != Some("2.0") {
        return invalid(req.id, "\"jsonrpc\" must be \"2.0\"".into());
    }
    let method = match req.method {
        Some(Value::String(m)) => m,
        _ => return invalid(req.id, "\"method\" must be a string".into()),
    };
    let params = match req.params {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Item::BadParams {
                id: req.id.unwrap_or_else(null_id),
                error: RpcError::new(
                    INVALID_PARAMS,
                    format!("invalid params: {method} takes positional params (a JSON array)"),
                ),
                method,
            };
        }
    };
    Item::Call(Call {
        method,
        params,
        id: req.id,
    })
}

/// The id of a request that is invalid for another reason (a number out of range in its params,
/// say), so the error names the request it answers. `None` when the id itself is unusable.
fn readable_id(raw: &RawValue) -> Option<Box<RawValue>> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        #[serde(default, deserialize_with = "present")]
        id: Option<Box<RawValue>>,
    }
    serde_json::from_str::<IdOnly>(raw.get()).ok()?.id
}

#[derive(Serialize)]
struct SuccessOut<'a> {
    jsonrpc: &'static str,
    result: &'a Value,
    id: &'a RawValue,
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    jsonrpc: &'static str,
    error: &'a RpcError,
    id: &'a RawValue,
}

/// Serializes one response.
pub fn response(id: &RawValue, outcome: &Outcome) -> String {
    let text = match outcome {
        Ok(result) => serde_json::to_string(&SuccessOut {
            jsonrpc: "2.0",
            result,
            id,
        }),
        Err(error) => serde_json::to_string(&ErrorOut {
            jsonrpc: "2.0",
            error,
            id,
        }),
    };
    text.expect("responses serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single_call(body: &str) -> Call {
        match parse(body.as_bytes()) {
            Body::Single(Item::Call(c)) => c,
            other => panic!("expected a call, got {other:?}"),
        }
    }

    #[test]
    fn ids_are_echoed_exactly_and_null_differs_from_absent() {
        for id in [
            "7",
            "\"a-b\"",
            "null",
            "12345678901234567890123",
            "1.50",
            "-3",
        ] {
            let c = single_call(&format!(
                r#"{{"jsonrpc":"2.0","method":"m","params":[],"id":{id}}}"#
            ));
            let raw = c.id.expect("id present");
            assert_eq!(raw.get(), id);
            assert!(response(&raw, &Ok(Value::Null)).ends_with(&format!("\"id\":{id}}}")));
        }
        let n = single_call(r#"{"jsonrpc":"2.0","method":"m","params":[1]}"#);
        assert!(n.id.is_none());
        assert_eq!(n.params, vec![Value::from(1)]);
    }

    #[test]
    fn envelope_errors() {
        assert!(matches!(
            parse(b"{nope"),
            Body::Broken(RpcError {
                code: PARSE_ERROR,
                ..
            })
        ));
        assert!(matches!(
            parse(b"[]"),
            Body::Broken(RpcError {
                code: INVALID_REQUEST,
                ..
            })
        ));
        let cases = [
            (r#"{"method":"m","id":1}"#, INVALID_REQUEST),
            (r#"{"jsonrpc":"2.0","method":5,"id":1}"#, INVALID_REQUEST),
            (
                r#"{"jsonrpc":"2.0","method":"m","id":{"x":1}}"#,
                INVALID_REQUEST,
            ),
            (r#"3"#, INVALID_REQUEST),
        ];
        for (body, code) in cases {
            match parse(body.as_bytes()) {
                Body::Single(Item::Invalid { error, .. }) => assert_eq!(error.code, code, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        // The id of a request broken elsewhere is still answered; a duplicated id is not.
        for (body, id) in [
            (
                r#"{"jsonrpc":"2.0","method":"m","params":[1e999],"id":"x"}"#,
                "\"x\"",
            ),
            (r#"{"jsonrpc":"2.0","method":"m","method":"n","id":4}"#, "4"),
            (r#"{"jsonrpc":"2.0","method":"m","id":4,"id":5}"#, "null"),
            (r#"{"jsonrpc":"2.0","method":"m","id":true}"#, "null"),
        ] {
            match parse(body.as_bytes()) {
                Body::Single(Item::Invalid { id: got, error }) => {
                    assert_eq!((got.get(), error.code), (id, INVALID_REQUEST), "{body}")
                }
                other => panic!("{body}: {other:?}"),
            }
        }
        match parse(br#"{"jsonrpc":"2.0","method":"m","params":{"a":1},"id":1}"#) {
            Body::Single(Item::BadParams { method, error, .. }) => {
                assert_eq!((method.as_str(), error.code), ("m", INVALID_PARAMS))
            }
            other => panic!("{other:?}"),
        }
        match parse(br#"[1,{"jsonrpc":"2.0","method":"m","id":"x"}]"#) {
            Body::Batch(items) => {
                assert!(matches!(items[0], Item::Invalid { .. }));
                assert!(matches!(items[1], Item::Call(_)));
            }
            other => panic!("{other:?}"),
        }
    }
}
