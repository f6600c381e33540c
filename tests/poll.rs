//! `GET /v1/poll`: long polling with the ordering, history and exactly-once
//! semantics of SSE (SPEC §8).

mod common;

use std::collections::BTreeSet;

use common::HubProcess;
use serde_json::{json, Value};

async fn poll(hub: &HubProcess, query: &str) -> (u16, Value, Option<String>) {
    let resp = reqwest::get(hub.url(&format!("/v1/poll?{query}")))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, resp.json().await.unwrap(), retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_in_a_loop_receives_everything_once_in_order() {
    let hub = HubProcess::start(&[
        "history.max_events_per_topic=10000",
        "stream.replay_batch=37",
    ]);
    let total = 400;
    let mut publishers = Vec::new();
    for p in 0..2 {
        let url = hub.url("/v1/publish");
        publishers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for b in 0..20 {
                let batch: Vec<Value> = (0..10)
                    .map(|i| json!({"topic": "q", "data": (p * 200 + b * 10 + i).to_string()}))
                    .collect();
                assert_eq!(
                    http.post(&url).json(&batch).send().await.unwrap().status(),
                    200
                );
            }
        }));
    }
    let mut seen: Vec<u64> = Vec::new();
    let mut last: Option<String> = None;
    let mut polls = 0;
    while seen.len() < total {
        polls += 1;
        assert!(polls < 2000, "too many polls");
        let query = match &last {
            None => "topic=q&since=0&timeout=2".to_owned(),
            Some(id) => format!("topic=q&lastEventId={id}&timeout=2"),
        };
        let (status, body, _) = poll(&hub, &query).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["reset"], Value::Null);
        for e in body["events"].as_array().unwrap() {
            seen.push(e["data"].as_str().unwrap().parse().unwrap());
        }
        last = Some(body["last_event_id"].as_str().unwrap().to_owned());
    }
    for p in publishers {
        p.await.unwrap();
    }
    let distinct: BTreeSet<u64> = seen.iter().copied().collect();
    assert_eq!(distinct.len(), seen.len(), "duplicates");
    assert_eq!(distinct, (0..total as u64).collect(), "missing events");
    for p in 0..2u64 {
        let one: Vec<u64> = seen.iter().copied().filter(|v| v / 200 == p).collect();
        assert!(one.windows(2).all(|w| w[0] < w[1]), "publisher {p}: order");
    }
    assert_eq!(
        hub.stats().await["connections"],
        0,
        "polls leave no connection behind"
    );
}

#[tokio::test]
async fn a_waiting_poll_wakes_for_a_live_event_and_a_timeout_still_moves_on() {
    let hub = HubProcess::start(&[]);
    let before = hub.publish_ok(json!({"topic": "w", "data": "old"})).await;
    // Nothing new: the timeout answers with the head to continue from.
    let (status, body, _) = poll(&hub, "topic=w&timeout=0").await;
    assert_eq!((status, body["events"].as_array().unwrap().len()), (200, 0));
    assert_eq!(body["last_event_id"], before.as_str());
    // A waiting poll is answered by the next event.
    let waiting = {
        let url = hub.url(&format!("/v1/poll?topic=w&lastEventId={before}&timeout=30"));
        tokio::spawn(async move {
            reqwest::get(url)
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    hub.wait_for_stats("the poll to be waiting", |s| s["connections"] == 1)
        .await;
    let id = hub
        .publish_ok(json!({"topic": "w", "event": "news", "data": "fresh"}))
        .await;
    let body = waiting.await.unwrap();
    assert_eq!(
        body["events"],
        json!([{"id": id, "event": "news", "data": "fresh"}])
    );
    assert_eq!(body["last_event_id"], id.as_str());
}

#[tokio::test]
async fn resets_refusals_and_bad_parameters() {
    let hub = HubProcess::start(&["limits.max_connections=1"]);
    let (status, body, _) = poll(&hub, "topic=r&lastEventId=1&timeout=0").await;
    assert_eq!(
        (status, body["reset"]["reason"].as_str()),
        (200, Some("unknown_id"))
    );
    for query in [
        "topic=r&timeout=soon",
        "topic=r&timeout=1000",
        "topic=a%20b",
        "topic=r&history=x",
    ] {
        let (status, body, _) = poll(&hub, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body["message"].as_str().is_some());
    }
    // The hub is full while one poll waits: the next is refused for now.
    let waiting = {
        let url = hub.url("/v1/poll?topic=r&timeout=30");
        tokio::spawn(async move { reqwest::get(url).await.unwrap().status().as_u16() })
    };
    hub.wait_for_stats("the poll to be waiting", |s| s["connections"] == 1)
        .await;
    let (status, body, retry) = poll(&hub, "topic=r&timeout=0").await;
    assert_eq!((status, body["error"].as_str()), (503, Some("hub_full")));
    assert!(retry.is_some(), "Retry-After");
    hub.publish_ok(json!({"topic": "r"})).await;
    assert_eq!(waiting.await.unwrap(), 200);
}

#[tokio::test]
async fn polls_need_the_same_rights_as_streams() {
    let hub = HubProcess::start(&[
        "auth.jwt_secret=\"poll-test-secret-long-enough-0123456789\"",
        "auth.anonymous_subscribe=[\"public/**\"]",
    ]);
    let (status, _, _) = poll(&hub, "topic=public/x&timeout=0").await;
    assert_eq!(status, 200);
    let (status, body, _) = poll(&hub, "topic=private&timeout=0").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
}
