//! `POST /v1/publish` end to end (SPEC §4).

mod common;

use common::{HubProcess, SseClient};
use serde_json::{json, Value};

#[tokio::test]
async fn json_data_text_data_and_the_text_shortcut() {
    let hub = HubProcess::start(&[]);
    let mut sub = SseClient::connect(hub.addr, "/v1/events?topic=docs/*").await;
    sub.expect_connected().await;
    hub.publish_ok(json!({"topic": "docs/1", "event": "saved", "data": {"rev": 3, "by": "ann"}}))
        .await;
    hub.publish_ok(json!({"topic": "docs/1", "data": "plain\ntwo lines"}))
        .await;
    let (status, answer) = hub
        .post_raw(
            "/v1/publish?topic=docs/2&event=note",
            "from a script\r\nCRLF",
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["id"].as_str().is_some());
    let e = sub.next_event().await;
    assert_eq!(
        (e.event.as_str(), e.json()),
        ("saved", json!({"rev": 3, "by": "ann"}))
    );
    assert_eq!(
        e.data, r#"{"rev":3,"by":"ann"}"#,
        "non-string data is compact JSON"
    );
    let e = sub.next_event().await;
    assert_eq!(
        (e.event.as_str(), e.data.as_str()),
        ("message", "plain\ntwo lines")
    );
    let e = sub.next_event().await;
    assert_eq!(
        (e.event.as_str(), e.data.as_str()),
        ("note", "from a script\nCRLF")
    );
}

#[tokio::test]
async fn a_batch_is_all_or_nothing() {
    let hub = HubProcess::start(&[]);
    let mut sub = SseClient::connect(hub.addr, "/v1/events?topic=b").await;
    sub.expect_connected().await;
    let (status, answer) = hub
        .publish(json!([{"topic": "b", "data": "1"}, {"topic": "b", "event": "bad\nname"}]))
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"], "invalid_event");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("event 1 of the batch"),
        "{answer}"
    );
    let (status, answer) = hub
        .publish(json!([{"topic": "b", "data": "x"}, {"topic": "b", "dta": "typo"}]))
        .await;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = hub
        .publish(json!([{"topic": "b", "data": "2"}, {"topic": "b", "data": "3"}]))
        .await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = answer
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    // Nothing of the refused batches was delivered: the first event seen is "2".
    let e = sub.next_event().await;
    assert_eq!((e.data.as_str(), e.id.as_deref()), ("2", Some(ids[0])));
    assert_eq!(sub.next_event().await.data, "3");
    // Nor stored: a replay from the start finds only the accepted batch.
    let mut replay = SseClient::connect(hub.addr, "/v1/events?topic=b&history=10").await;
    replay.expect_connected().await;
    assert_eq!(replay.next_event().await.data, "2");
}

#[tokio::test]
async fn broadcast_and_connection_targets() {
    let hub = HubProcess::start(&[]);
    let mut a = SseClient::connect(hub.addr, "/v1/events?topic=room/a").await;
    let mut b = SseClient::connect(hub.addr, "/v1/events?topic=room/b").await;
    let mut none = SseClient::connect(hub.addr, "/v1/events").await;
    let a_id = a.expect_connected().await["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    b.expect_connected().await;
    none.expect_connected().await;
    hub.publish_ok(json!({"to": {"connections": [a_id]}, "event": "direct", "data": "for a"}))
        .await;
    // Topic and `to` together: both must hold, so b (not addressed) gets nothing.
    hub.publish_ok(json!({"topic": "room/b", "to": {"connections": [a_id]}, "data": "nobody"}))
        .await;
    hub.publish_ok(json!({"broadcast": true, "event": "all", "data": "everyone"}))
        .await;
    let e = a.next_event().await;
    assert_eq!((e.event.as_str(), e.data.as_str()), ("direct", "for a"));
    assert_eq!(a.next_event().await.data, "everyone");
    assert_eq!(b.next_event().await.data, "everyone");
    assert_eq!(none.next_event().await.data, "everyone");
}

#[tokio::test]
async fn ttl_ends_life_in_history_but_not_live_delivery() {
    let hub = HubProcess::start(&[]);
    let mut live = SseClient::connect(hub.addr, "/v1/events?topic=typing").await;
    live.expect_connected().await;
    hub.publish_ok(json!({"topic": "typing", "data": "gone", "ttl": 0}))
        .await;
    hub.publish_ok(json!({"topic": "typing", "data": "kept", "ttl": 3600}))
        .await;
    assert_eq!(live.next_event().await.data, "gone");
    assert_eq!(live.next_event().await.data, "kept");
    let mut late = SseClient::connect(hub.addr, "/v1/events?topic=typing&history=10").await;
    late.expect_connected().await;
    assert_eq!(late.next_event().await.data, "kept");
}

#[tokio::test]
async fn idempotency_key_returns_the_first_result_and_delivers_once() {
    let hub = HubProcess::start(&[]);
    let mut sub = SseClient::connect(hub.addr, "/v1/events?topic=pay").await;
    sub.expect_connected().await;
    let body = json!({"topic": "pay", "data": "charged", "idempotency_key": "order-17"});
    let first = hub.publish_ok(body.clone()).await;
    let retried = hub.publish_ok(body).await;
    assert_eq!(first, retried);
    hub.publish_ok(json!({"topic": "pay", "data": "next"}))
        .await;
    assert_eq!(sub.next_event().await.data, "charged");
    assert_eq!(
        sub.next_event().await.data,
        "next",
        "the retry must not be delivered"
    );
}

#[tokio::test]
async fn coalesce_key_sends_only_the_newest_waiting_event() {
    // A reader that has stopped reading backs events up in its queue; of
    // those sharing a coalesce key, only the newest may be sent.
    let hub = HubProcess::start(&["stream.queue_capacity=100000"]);
    let mut slow = SseClient::connect_with(hub.addr, "/v1/events?topic=job", &[], Some(4096)).await;
    slow.expect_connected().await;
    let fillers = common::stall_reader(&hub, "job").await;
    for pct in [10, 50, 90] {
        hub.publish_ok(json!({"topic": "job", "event": "progress", "data": pct.to_string(), "coalesce_key": "job-progress"}))
            .await;
    }
    hub.publish_ok(json!({"topic": "job", "event": "done"}))
        .await;
    let mut progress = Vec::new();
    let mut seen_fill = 0;
    loop {
        let e = slow.next_event().await;
        match e.event.as_str() {
            "fill" => seen_fill += 1,
            "progress" => progress.push(e.data),
            "done" => break,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        seen_fill, fillers,
        "fillers have no coalesce key: none may be lost"
    );
    assert_eq!(progress, ["90"]);
}

#[tokio::test]
async fn publish_answers_are_json_everywhere() {
    let hub = HubProcess::start(&[]);
    let (status, answer) = hub.publish(json!({"topic": "t"})).await;
    assert_eq!(status, 200);
    let id: Value = answer["id"].clone();
    assert!(id.as_str().unwrap().bytes().all(|b| b.is_ascii_digit()));
}
