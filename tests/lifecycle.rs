//! Lifecycle (issue: graceful shutdown, dead connections, health, logs).

mod common;

use std::time::{Duration, Instant};

use common::{HubProcess, Item, SseClient};
use serde_json::json;

#[tokio::test]
async fn health_and_readiness() {
    let hub = HubProcess::start(&[]);
    let (status, body) = hub.get_json("/healthz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = hub.get_json("/readyz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")));
}

#[tokio::test]
async fn sigterm_flushes_tells_subscribers_to_reconnect_and_exits() {
    let mut hub = HubProcess::start(&["stream.retry_ms=700"]);
    let mut sub = SseClient::connect(hub.addr, "/v1/events?topic=s").await;
    sub.expect_connected().await;
    for i in 0..20 {
        hub.publish_ok(json!({"topic": "s", "data": i.to_string()}))
            .await;
    }
    hub.terminate();
    let items = sub.read_to_end().await;
    let data: Vec<String> = common::events(&items).into_iter().map(|e| e.data).collect();
    assert_eq!(
        data,
        (0..20).map(|i| i.to_string()).collect::<Vec<_>>(),
        "queued events are flushed"
    );
    match items.last() {
        Some(Item::Retry(ms)) => assert!((700..=1400).contains(ms), "jittered retry {ms}"),
        other => panic!("the stream must end with retry:, got {other:?}"),
    }
    let status = hub.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    hub.wait_for_log(&["all connections closed"]).await;
}

#[tokio::test]
async fn shutdown_is_bounded_even_with_a_stuck_client() {
    let mut hub = HubProcess::start(&[
        "shutdown_timeout_secs=1",
        "stream.overflow=\"drop_newest\"",
        "stream.queue_capacity=100000",
    ]);
    let mut stuck = SseClient::connect_with(hub.addr, "/v1/events?topic=s", &[], Some(4096)).await;
    stuck.expect_connected().await;
    // Back the client up until events wait in its queue: it cannot be flushed.
    common::stall_reader(&hub, "s").await;
    let started = Instant::now();
    hub.terminate();
    let status = hub.wait_exit(Duration::from_secs(8));
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    hub.wait_for_log(&["shutdown timeout reached"]).await;
}

#[tokio::test]
async fn closed_sockets_leave_no_trace_in_the_books() {
    let hub = HubProcess::start(&["stream.heartbeat_secs=1"]);
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut c =
            SseClient::connect(hub.addr, &format!("/v1/events?topic=t/{i}&topic=all/**")).await;
        c.expect_connected().await;
        clients.push(c);
    }
    let stats = hub.stats().await;
    assert_eq!(
        (
            stats["connections"].as_u64(),
            stats["subscriptions"].as_u64()
        ),
        (Some(5), Some(10))
    );
    assert_eq!(stats["addresses"], 1);
    drop(clients);
    // The registry, the pattern index and the per-address counts all
    // forget them (they are separate books, so wait for all three).
    hub.wait_for_stats("closed streams to be released everywhere", |s| {
        s["connections"] == 0 && s["subscriptions"] == 0 && s["addresses"] == 0
    })
    .await;
    // Publishing to their topics reaches nobody and harms nothing.
    hub.publish_ok(json!({"topic": "all/x", "data": "nobody"}))
        .await;
    assert_eq!(hub.stats().await["deliveries_queued"], 0);
}

#[tokio::test]
async fn json_logs_on_request() {
    let hub = HubProcess::start_with(&[], &["--log-format", "json"], &[]);
    let logs = hub.logs();
    let line = logs
        .iter()
        .find(|l| l.contains("listening on"))
        .expect("listening line");
    let parsed: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
    assert_eq!(parsed["level"], "INFO");
    assert!(
        logs.iter().any(|l| l.contains("DEV MODE")),
        "dev mode is announced loudly"
    );
}
