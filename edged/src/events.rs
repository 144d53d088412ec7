//! Events for `GET /events`: re-shaping the engine's events into the documented form, the fan-out
//! hub, and each client's Server-Sent Events stream (a greeting first, pings, lag notices, end at
//! shutdown).
//!
//! Owns: the SSE wire format and the bounded per-client buffer. Must not: pull events from the
//! engine (the bridge publishes into the hub) or block a publisher on a slow client.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::StreamBody;
use http_body_util::combinators::BoxBody;
use hyper::body::Frame;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::{broadcast, mpsc, watch};

/// Fan-out of serialized events to every `/events` client. A client that falls more than the
/// buffer behind loses the oldest events and is told how many (`event: lag`).
#[derive(Clone, Debug)]
pub struct Hub {
    tx: broadcast::Sender<Arc<str>>,
    /// Once set, engine events go there first (the peer agent, which keeps the events about
    /// control instances and publishes the rest with [`Hub::publish_engine_direct`]).
    tap: Arc<std::sync::OnceLock<mpsc::UnboundedSender<Value>>>,
}

#[derive(Serialize)]
struct Shaped<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    account_id: &'a Value,
    #[serde(flatten)]
    fields: Map<String, Value>,
}

impl Hub {
    /// `buffer` = events kept per client.
    pub fn new(buffer: usize) -> Hub {
        let (tx, _) = broadcast::channel(buffer.max(1));
        Hub {
            tx,
            tap: Arc::default(),
        }
    }

    /// Routes every later engine event through `tap` (once; false when a tap is set already).
    pub fn tap(&self, tap: mpsc::UnboundedSender<Value>) -> bool {
        self.tap.set(tap).is_ok()
    }

    /// Publishes an event from the engine's `get_next_event` (ignored when it has no kind), or
    /// hands it to the tap.
    pub fn publish_engine(&self, event: &Value) {
        if let Some(tap) = self.tap.get()
            && tap.send(event.clone()).is_ok()
        {
            return;
        }
        self.publish_engine_direct(event);
    }

    /// Publishes an engine event to the `/events` clients, past any tap.
    pub fn publish_engine_direct(&self, event: &Value) {
        if let Some(text) = reshape(event) {
            let _ = self.tx.send(text.into());
        }
    }

    /// Publishes an event already in the documented shape (`{"type":…,"account_id":…,…}`).
    pub fn publish(&self, event: &(impl Serialize + ?Sized)) {
        if let Ok(text) = serde_json::to_string(event) {
            let _ = self.tx.send(text.into());
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.tx.subscribe()
    }

    /// Connected `/events` clients.
    pub fn clients(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// `{"contextId":1,"event":{"kind":"IncomingMsg","chatId":7,"msgId":42}}` →
/// `{"type":"IncomingMsg","account_id":1,"chat_id":7,"msg_id":42}` (field names snake_cased at
/// every depth).
pub fn reshape(event: &Value) -> Option<String> {
    let inner = event.get("event")?.as_object()?;
    let kind = inner.get("kind")?.as_str()?;
    let fields = inner
        .iter()
        .filter(|(k, _)| *k != "kind")
        .map(|(k, v)| (snake_case(k), snake_case_keys(v)))
        // `type` and `account_id` are ours: a field of the same name would make a second key.
        .filter(|(k, _)| k != "type" && k != "account_id")
        .collect();
    let shaped = Shaped {
        kind,
        account_id: event.get("contextId").unwrap_or(&Value::Null),
        fields,
    };
    serde_json::to_string(&shaped).ok()
}

/// A copy of `value` with the names of every object inside it snake_cased.
fn snake_case_keys(value: &Value) -> Value {
    match value {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (snake_case(k), snake_case_keys(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(snake_case_keys).collect()),
        other => other.clone(),
    }
}

/// `chatId` → `chat_id`, `msgId` → `msg_id`; already snake_case names pass unchanged.
pub fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

pub type SseBody = BoxBody<Bytes, Infallible>;

/// The body of one `/events` response. It starts with the events `greeting` returns (asked for
/// once the client is subscribed, so nothing published meanwhile is lost), then streams the hub.
/// The client's task ends (and its buffer and `slot` are freed) when the client disconnects or
/// `stop` turns true.
pub fn sse_body(
    hub: &Hub,
    greeting: impl FnOnce() -> Vec<String>,
    ping_every: Duration,
    stop: watch::Receiver<bool>,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> SseBody {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(8);
    let events = hub.subscribe();
    let first = greeting();
    tokio::spawn(async move {
        client_loop(events, first, tx, ping_every, stop).await;
        drop(slot);
    });
    use http_body_util::BodyExt;
    StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed()
}

async fn client_loop(
    mut events: broadcast::Receiver<Arc<str>>,
    first: Vec<String>,
    tx: mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
    ping_every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    for event in first {
        let frame = Frame::data(Bytes::from(format!("data: {event}\n\n")));
        if tx.send(Ok(frame)).await.is_err() {
            return;
        }
    }
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let frame = tokio::select! {
            biased;
            _ = crate::stopped(&mut stop) => break,
            _ = tx.closed() => break,
            ev = events.recv() => match ev {
                Ok(text) => format!("data: {text}\n\n"),
                Err(broadcast::error::RecvError::Lagged(n)) => format!("event: lag\ndata: {{\"dropped\":{n}}}\n\n"),
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = ping.tick() => ": ping\n\n".to_string(),
        };
        tokio::select! {
            biased;
            _ = crate::stopped(&mut stop) => break,
            sent = tx.send(Ok(Frame::data(Bytes::from(frame)))) => if sent.is_err() { break },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use serde_json::json;

    async fn next_text(body: &mut SseBody) -> String {
        let frame = body.frame().await.expect("a frame").expect("infallible");
        String::from_utf8(frame.into_data().expect("data").to_vec()).unwrap()
    }

    #[test]
    fn reshapes_engine_events() {
        let e = json!({"contextId":1,"event":{"kind":"IncomingMsg","chatId":7,"msgId":42}});
        let got: Value = serde_json::from_str(&reshape(&e).unwrap()).unwrap();
        assert_eq!(
            got,
            json!({"type":"IncomingMsg","account_id":1,"chat_id":7,"msg_id":42})
        );
        assert!(
            reshape(&e)
                .unwrap()
                .starts_with(r#"{"type":"IncomingMsg","account_id":1,"#)
        );
        assert_eq!(snake_case("progress"), "progress");
        assert_eq!(snake_case("contactId"), "contact_id");
        assert!(reshape(&json!({"contextId":1})).is_none());
    }

    #[test]
    fn nested_fields_are_snake_cased_and_the_documented_names_appear_once() {
        let e = json!({"contextId":2,"event":{
            "kind":"ChatlistItemChanged",
            "chatId":7,
            "someInfo":{"msgId":1,"listItems":[{"contactId":3}]},
            "type":"inner",
            "accountId":9
        }});
        let text = reshape(&e).unwrap();
        let got: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            got,
            json!({"type":"ChatlistItemChanged","account_id":2,"chat_id":7,
                   "some_info":{"msg_id":1,"list_items":[{"contact_id":3}]}})
        );
        // A parser keeps the last of duplicate keys, so count them in the text.
        assert_eq!(text.matches("\"type\"").count(), 1, "{text}");
        assert_eq!(text.matches("\"account_id\"").count(), 1, "{text}");
    }

    #[tokio::test]
    async fn slow_client_gets_lag_then_newest_events_and_is_freed_on_disconnect() {
        let hub = Hub::new(2);
        let (_stop_tx, stop) = watch::channel(false);
        let slot = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        let mut body = sse_body(&hub, Vec::new, Duration::from_secs(3600), stop, slot);
        // The client task subscribes inside sse_body, before anything is published.
        assert_eq!(hub.clients(), 1);
        for i in 0..10 {
            hub.publish(&json!({"type":"T","account_id":1,"n":i}));
        }
        assert_eq!(
            next_text(&mut body).await,
            "event: lag\ndata: {\"dropped\":8}\n\n"
        );
        assert!(next_text(&mut body).await.contains("\"n\":8"));
        assert!(next_text(&mut body).await.contains("\"n\":9"));
        drop(body);
        hub.publish(&json!({"type":"T","account_id":1}));
        crate::test_util::wait_until(|| hub.clients() == 0).await;
    }

    #[tokio::test(start_paused = true)]
    async fn pings_and_ends_at_stop() {
        let hub = Hub::new(4);
        let (stop_tx, stop) = watch::channel(false);
        let slot = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        let mut body = sse_body(
            &hub,
            || vec![r#"{"type":"First"}"#.to_string()],
            Duration::from_secs(15),
            stop,
            slot,
        );
        assert_eq!(
            next_text(&mut body).await,
            "data: {\"type\":\"First\"}\n\n",
            "the greeting comes first"
        );
        assert_eq!(next_text(&mut body).await, ": ping\n\n");
        stop_tx.send(true).unwrap();
        assert!(body.frame().await.is_none(), "stream ends at shutdown");
    }
}
