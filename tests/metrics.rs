//! `GET /metrics` end to end: the numbers move with what happens.

mod common;

use std::collections::HashMap;

use common::{HubProcess, SseClient};
use serde_json::json;

/// `name{labels}` → value, from the text exposition.
async fn scrape(hub: &HubProcess) -> HashMap<String, f64> {
    let resp = reqwest::get(hub.url("/metrics")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = resp.text().await.unwrap();
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_owned(), value.parse().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn metrics_follow_streams_publishes_refusals_and_latency() {
    let hub = HubProcess::start(&["limits.max_connections=2", "history.max_events_per_topic=2"]);
    let before = scrape(&hub).await;
    assert_eq!(before["herald_connections{transport=\"sse\"}"], 0.0);
    assert_eq!(before["herald_events_published_total"], 0.0);

    let mut a = SseClient::connect(hub.addr, "/v1/events?topic=m/*").await;
    a.expect_connected().await;
    for i in 0..5 {
        hub.publish_ok(json!({"topic": "m/1", "data": i.to_string()}))
            .await;
    }
    for _ in 0..5 {
        a.next_event().await;
    }
    let dup = json!({"topic": "m/1", "idempotency_key": "k"});
    let first = hub.publish_ok(dup.clone()).await;
    assert_eq!(hub.publish_ok(dup).await, first);
    a.next_event().await;
    hub.publish(json!({"topic": "bad topic"})).await;
    hub.publish(json!({"topic": "m/1", "data": "x".repeat(70_000)}))
        .await;
    // A resume the history cannot cover (only 2 kept), and a replay.
    let mut reset = SseClient::connect_with(
        hub.addr,
        "/v1/events?topic=m/*",
        &[("Last-Event-ID", "1")],
        None,
    )
    .await;
    reset.expect_connected().await;
    reset.expect_event("herald.reset").await;
    // The hub is now full (2): the next stream is refused for now.
    let mut full = SseClient::connect(hub.addr, "/v1/events?topic=m/*&history=1").await;
    full.next().await;
    full.expect_event("herald.refused").await;

    let m = scrape(&hub).await;
    assert_eq!(m["herald_connections{transport=\"sse\"}"], 2.0);
    assert_eq!(m["herald_subscriptions"], 2.0);
    assert_eq!(m["herald_events_published_total"], 6.0);
    assert_eq!(m["herald_publish_duplicates_total"], 1.0);
    assert_eq!(m["herald_deliveries_total"], 6.0);
    assert_eq!(m["herald_resets_total{reason=\"unknown_id\"}"], 1.0);
    assert_eq!(m["herald_stream_refusals_total{reason=\"hub_full\"}"], 1.0);
    assert_eq!(m["herald_http_refusals_total{status=\"400\"}"], 1.0);
    assert_eq!(m["herald_http_refusals_total{status=\"413\"}"], 1.0);
    let writes = m["herald_publish_to_write_seconds_count"];
    assert!((1.0..=6.0).contains(&writes), "{writes}");
    assert_eq!(
        m["herald_publish_to_write_seconds_bucket{le=\"+Inf\"}"],
        writes
    );
    assert!(m["herald_publish_to_write_seconds_sum"] > 0.0);
    // The stream sat idle between events: the courier wrote for it.
    let courier = m["herald_courier_writes_total"];
    assert!((1.0..=writes).contains(&courier), "{courier} of {writes}");
}

#[tokio::test]
async fn the_grafana_dashboard_queries_metrics_that_exist() {
    let hub = HubProcess::start(&[]);
    // Every declared family, with the series names its type exposes (a
    // labelled family may have no series yet on a fresh hub).
    let text = hub.metrics().await;
    let mut scraped: Vec<String> = Vec::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (name, kind) = line.split_once(' ').unwrap();
        match kind {
            "counter" => scraped.push(format!("{name}_total")),
            "histogram" => {
                scraped.extend(["bucket", "sum", "count"].map(|s| format!("{name}_{s}")))
            }
            _ => scraped.push(name.to_owned()),
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/grafana-dashboard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("herald_") {
                    assert!(
                        scraped.iter().any(|s| s == word),
                        "dashboard queries {word}, which /metrics lacks"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 10);
}
