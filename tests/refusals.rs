//! Limits and refusals (SPEC §3, §4): every refusal is clear, and the hub
//! keeps serving everyone else.

mod common;

use common::{HubProcess, Item, SseClient};
use serde_json::{json, Value};

/// A temporary refusal: `200`, `Retry-After`, jittered `retry:`, one
/// `herald.refused`, then the end of the stream.
async fn expect_temporary_refusal(mut sub: SseClient, code: &str, retry_ms: u64) {
    assert_eq!(sub.status, 200, "EventSource gives up on any non-200");
    assert_eq!(
        sub.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    let retry_after: u64 = sub
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let Some(Item::Retry(retry)) = sub.next().await else {
        panic!("retry: first")
    };
    assert!(
        (retry_ms..=2 * retry_ms).contains(&retry),
        "jittered retry {retry}"
    );
    let refused = sub.expect_event("herald.refused").await.json();
    assert_eq!(refused["error"], code);
    assert!(refused["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(refused["retry_after_ms"], retry);
    assert_eq!(sub.next().await, None, "the stream must end");
}

#[tokio::test]
async fn hub_full_is_a_temporary_refusal_and_frees_up() {
    let hub = HubProcess::start(&["limits.max_connections=2", "stream.retry_ms=500"]);
    let mut a = SseClient::connect(hub.addr, "/v1/events?topic=x").await;
    let mut b = SseClient::connect(hub.addr, "/v1/events?topic=x").await;
    a.expect_connected().await;
    b.expect_connected().await;
    let c = SseClient::connect(hub.addr, "/v1/events?topic=x").await;
    expect_temporary_refusal(c, "hub_full", 500).await;
    drop(a);
    hub.wait_for_stats("a slot to free", |s| s["connections"] == 1)
        .await;
    let mut d = SseClient::connect(hub.addr, "/v1/events?topic=x").await;
    d.expect_connected().await;
    // The refused and departed ones did not disturb the others.
    hub.publish_ok(json!({"topic": "x", "data": "still here"}))
        .await;
    assert_eq!(b.next_event().await.data, "still here");
    assert_eq!(d.next_event().await.data, "still here");
}

#[tokio::test]
async fn per_address_limit() {
    let hub = HubProcess::start(&["limits.max_connections_per_ip=1"]);
    let local = Some("127.0.0.1".parse().unwrap());
    let other = Some("127.0.0.2".parse().unwrap());
    let mut first = SseClient::connect_from(hub.addr, "/v1/events?topic=x", &[], None, local).await;
    first.expect_connected().await;
    let second = SseClient::connect_from(hub.addr, "/v1/events?topic=x", &[], None, local).await;
    expect_temporary_refusal(second, "too_many_connections_from_address", 2000).await;
    let mut elsewhere =
        SseClient::connect_from(hub.addr, "/v1/events?topic=x", &[], None, other).await;
    elsewhere.expect_connected().await;
}

async fn get_status(hub: &HubProcess, path: &str) -> (u16, Value) {
    hub.get_json(path).await
}

fn assert_json_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"], want_code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn final_subscribe_refusals_are_json() {
    let hub = HubProcess::start(&["limits.max_topics_per_connection=2"]);
    let cases = [
        ("/v1/events?topic=a&topic=b&topic=c", "too_many_topics"),
        ("/v1/events?topic=a%20b", "invalid_topic"),
        ("/v1/events?topic=a/**/b", "invalid_topic"),
        ("/v1/events?topic=a*", "invalid_topic"),
        ("/v1/events?topic=", "invalid_topic"),
        ("/v1/events?topic=a&history=lots", "invalid_parameter"),
        ("/v1/events?topic=a&history=100000", "invalid_parameter"),
        ("/v1/events?topic=a&since=yesterday", "invalid_parameter"),
        ("/v1/events?topic=a&event=bad%0Aname", "invalid_parameter"),
    ];
    for (path, code) in cases {
        let (status, body) = get_status(&hub, path).await;
        assert_json_error(status, &body, 400, code);
    }
}

#[tokio::test]
async fn publish_refusals_are_json_and_lose_nothing() {
    let hub = HubProcess::start(&["limits.max_event_bytes=100", "limits.max_body_bytes=2000"]);
    let mut sub = SseClient::connect(hub.addr, "/v1/events?topic=**").await;
    sub.expect_connected().await;
    let json_cases = [
        (
            json!({"topic": "a", "data": "x".repeat(101)}),
            413,
            "payload_too_large",
        ),
        (
            json!({"topic": "a", "data": {"k": "x".repeat(95)}}),
            413,
            "payload_too_large",
        ),
        (
            json!({"topic": "a", "event": "two\nlines"}),
            400,
            "invalid_event",
        ),
        (
            json!({"topic": "a", "event": "cr\rhere"}),
            400,
            "invalid_event",
        ),
        (
            json!({"topic": "a", "event": "herald.reset"}),
            400,
            "invalid_event",
        ),
        (json!({"topic": "a b"}), 400, "invalid_topic"),
        (json!({"topic": "a/*"}), 400, "invalid_topic"),
        (json!({"data": "nowhere"}), 400, "no_destination"),
        (json!({"topic": 5}), 400, "invalid_body"),
        (json!({"topic": "a", "ttl": "soon"}), 400, "invalid_body"),
        (json!({"topic": "a", "unknown": true}), 400, "invalid_body"),
        (json!([]), 400, "invalid_batch"),
        (json!("just a string"), 400, "invalid_body"),
        // Fields of features not built yet: refused, never silently ignored.
        (
            json!({"topic": "a", "retain": true, "key": "k"}),
            400,
            "not_supported",
        ),
        // Acknowledgements are per user: they need `to.users`.
        (
            json!({"topic": "a", "require_ack": true}),
            400,
            "invalid_field",
        ),
        (
            json!({"to": {"users": ["u"]}, "broadcast": true, "require_ack": true}),
            400,
            "invalid_field",
        ),
        (json!({"topic": "a", "ttl": 1.5}), 400, "invalid_body"),
    ];
    for (body, want_status, code) in json_cases {
        let (status, answer) = hub.publish(body.clone()).await;
        assert_json_error(status, &answer, want_status, code);
    }
    let raw_cases: [(&str, Vec<u8>, u16, &str); 4] = [
        ("/v1/publish", b"{not json".to_vec(), 400, "invalid_body"),
        ("/v1/publish", vec![b' '; 2001], 413, "payload_too_large"),
        ("/v1/publish?topic=a", vec![0xff, 0xfe], 400, "invalid_body"),
        (
            "/v1/publish?topic=a&color=red",
            b"x".to_vec(),
            400,
            "invalid_body",
        ),
    ];
    for (path, body, want_status, code) in raw_cases {
        let (status, answer) = hub.post_raw(path, body).await;
        assert_json_error(status, &answer, want_status, code);
    }
    let (status, answer) = get_status(&hub, "/v1/publish").await;
    assert_json_error(status, &answer, 405, "method_not_allowed");
    let (status, answer) = get_status(&hub, "/no/such/thing").await;
    assert_json_error(status, &answer, 404, "not_found");
    // Nothing refused reached the subscriber; the next good event does.
    hub.publish_ok(json!({"topic": "a", "data": "fine"})).await;
    let e = sub.next_event().await;
    assert_eq!(e.data, "fine");
    assert_eq!(hub.stats().await["events_dispatched"], 1);
}

#[tokio::test]
async fn long_subscribe_requests_are_served_and_oversized_heads_refused() {
    let hub = HubProcess::start(&[]);
    // 64 patterns of ~200 bytes: a 13 KB request line, well within limits.
    let segment = "s".repeat(60);
    let query: Vec<String> = (0..64)
        .map(|i| format!("topic=long/{segment}/{segment}/{segment}/{i}"))
        .collect();
    let path = format!("/v1/events?{}", query.join("&"));
    assert!(path.len() > 12_000);
    let mut sub = SseClient::connect(hub.addr, &path).await;
    assert_eq!(
        sub.expect_connected().await["topics"]
            .as_array()
            .unwrap()
            .len(),
        64
    );
    // Over 64 KiB of request head: 431 from the HTTP layer.
    let pad = "x".repeat(70_000);
    let huge =
        SseClient::connect_with(hub.addr, "/v1/events?topic=a", &[("X-Pad", &pad)], None).await;
    assert_eq!(huge.status, 431);
    // And the hub serves on.
    hub.publish_ok(json!({"topic": format!("long/{segment}/{segment}/{segment}/7"), "data": "ok"}))
        .await;
    assert_eq!(sub.next_event().await.data, "ok");
}
