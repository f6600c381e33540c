//! `GET /v1/events` end to end (SPEC §3).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{HubProcess, Item, SseClient};
use serde_json::json;

#[tokio::test]
async fn stream_opens_with_headers_retry_and_connected() {
    let hub = HubProcess::start(&["stream.retry_ms=1234"]);
    let mut sub = SseClient::connect(hub.addr, "/v1/events?topic=a&topic=b/*").await;
    assert_eq!(sub.status, 200);
    assert_eq!(
        sub.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(sub.header("cache-control"), Some("no-cache"));
    assert_eq!(sub.header("x-accel-buffering"), Some("no"));
    assert_eq!(sub.next().await, Some(Item::Retry(1234)));
    let connected = sub.expect_event("herald.connected").await;
    assert_eq!(
        connected.id, None,
        "control events must not move Last-Event-ID"
    );
    let data = connected.json();
    assert!(data["connection_id"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert_eq!(data["topics"], json!(["a", "b/*"]));
}

#[tokio::test]
async fn five_hundred_events_arrive_in_publish_order() {
    let hub = HubProcess::start(&[]);
    let mut sub = SseClient::connect(hub.addr, "/v1/events?topic=orders").await;
    sub.expect_connected().await;
    let mut ids = Vec::new();
    for i in 0..500 {
        ids.push(
            hub.publish_ok(json!({"topic": "orders", "data": i.to_string()}))
                .await,
        );
    }
    for (i, id) in ids.iter().enumerate() {
        let e = sub.next_event().await;
        assert_eq!(e.data, i.to_string());
        assert_eq!(e.id.as_ref(), Some(id));
    }
    let numeric: Vec<u64> = ids.iter().map(|s| s.parse().unwrap()).collect();
    assert!(numeric.windows(2).all(|w| w[0] < w[1]), "ids must rise");
}

#[tokio::test]
async fn patterns_receive_only_what_they_match() {
    let hub = HubProcess::start(&[]);
    let mut jobs_one = SseClient::connect(hub.addr, "/v1/events?topic=jobs/*").await;
    let mut chat_deep = SseClient::connect(hub.addr, "/v1/events?topic=chat/**").await;
    let mut exact = SseClient::connect(hub.addr, "/v1/events?topic=jobs/42").await;
    for c in [&mut jobs_one, &mut chat_deep, &mut exact] {
        c.expect_connected().await;
    }
    for topic in [
        "jobs/42",
        "jobs/7",
        "jobs/7/logs",
        "chat",
        "chat/rooms",
        "chat/rooms/lobby",
        "other",
    ] {
        hub.publish_ok(json!({"topic": topic, "data": topic})).await;
    }
    // A final event every stream receives marks the end of what it gets.
    hub.publish_ok(json!({"broadcast": true, "event": "end"}))
        .await;
    async fn received(c: &mut SseClient) -> Vec<String> {
        let mut got = Vec::new();
        loop {
            let e = c.next_event().await;
            if e.event == "end" {
                return got;
            }
            got.push(e.data);
        }
    }
    assert_eq!(received(&mut jobs_one).await, ["jobs/42", "jobs/7"]);
    assert_eq!(
        received(&mut chat_deep).await,
        ["chat/rooms", "chat/rooms/lobby"]
    );
    assert_eq!(received(&mut exact).await, ["jobs/42"]);
}

#[tokio::test]
async fn overlapping_patterns_deliver_once_and_event_filter_applies() {
    let hub = HubProcess::start(&[]);
    let mut both = SseClient::connect(hub.addr, "/v1/events?topic=a/*&topic=a/**&topic=a/b").await;
    let mut only =
        SseClient::connect(hub.addr, "/v1/events?topic=a/**&event=progress&event=end").await;
    both.expect_connected().await;
    only.expect_connected().await;
    hub.publish_ok(json!({"topic": "a/b", "data": "1"})).await;
    hub.publish_ok(json!({"topics": ["a/b", "a/c"], "event": "progress", "data": "2"}))
        .await;
    hub.publish_ok(json!({"topic": "a/b", "event": "end"}))
        .await;
    let got: Vec<String> = [
        both.next_event().await,
        both.next_event().await,
        both.next_event().await,
    ]
    .iter()
    .map(|e| e.data.clone())
    .collect();
    assert_eq!(got, ["1", "2", ""]);
    assert_eq!(only.next_event().await.data, "2");
    assert_eq!(only.next_event().await.event, "end");
}

/// Many subscribers join while four publishers send batches: each crosses
/// from backlog to live at a different moment, resuming from an id just
/// acknowledged (or from the start), and must receive exactly the log's
/// sequence after that point: no gap, no duplicate, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_is_exactly_once_while_publishing_concurrently() {
    const PUBLISHERS: usize = 4;
    const BATCHES: usize = 60;
    const BATCH: usize = 10;
    const JOINERS: usize = 30;
    let total = PUBLISHERS * BATCHES * BATCH;
    let hub = HubProcess::start(&[
        "history.max_events_per_topic=100000",
        "stream.replay_batch=50",
    ]);
    // (events acknowledged so far, the id of one of them)
    let (progress_tx, progress) = tokio::sync::watch::channel((0usize, None::<String>));
    let progress_tx = std::sync::Arc::new(progress_tx);
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let url = hub.url("/v1/publish");
        let progress_tx = progress_tx.clone();
        publishers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for b in 0..BATCHES {
                let batch: Vec<_> = (0..BATCH)
                    .map(|i| {
                        let n = (p * BATCHES + b) * BATCH + i;
                        let topic = if n.is_multiple_of(2) {
                            "feed/even"
                        } else {
                            "feed/odd"
                        };
                        json!({"topic": topic, "data": n.to_string()})
                    })
                    .collect();
                let resp = http.post(&url).json(&batch).send().await.unwrap();
                assert_eq!(resp.status(), 200);
                let ids: serde_json::Value = resp.json().await.unwrap();
                let last = ids[BATCH - 1]["id"].as_str().unwrap().to_owned();
                progress_tx.send_modify(|(count, id)| {
                    *count += BATCH;
                    *id = Some(last);
                });
            }
        }));
    }
    let mut joiners = Vec::new();
    for j in 0..JOINERS {
        let mut progress = progress.clone();
        let addr = hub.addr;
        joiners.push(tokio::spawn(async move {
            let threshold = j * total / JOINERS;
            let (_, resume) = progress
                .wait_for(|(count, _)| *count >= threshold)
                .await
                .unwrap()
                .clone();
            let resume = if j % 3 == 0 { None } else { resume };
            let mut sub = match &resume {
                None => SseClient::connect(addr, "/v1/events?topic=feed/**&since=0").await,
                Some(id) => {
                    SseClient::connect_with(
                        addr,
                        "/v1/events?topic=feed/**",
                        &[("Last-Event-ID", id)],
                        None,
                    )
                    .await
                }
            };
            sub.expect_connected().await;
            let mut got = Vec::new();
            loop {
                let e = sub.next_event().await;
                assert_ne!(e.event, "herald.reset", "history covers everything here");
                if e.event == "end" {
                    return (resume, got);
                }
                got.push((e.id.unwrap(), e.data));
            }
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    hub.publish_ok(json!({"topic": "feed/end", "event": "end"}))
        .await;
    // The log's own order, read back once everything is in.
    let mut reference = SseClient::connect(hub.addr, "/v1/events?topic=feed/**&since=0").await;
    reference.expect_connected().await;
    let mut log = Vec::new();
    while log.len() < total {
        let e = reference.next_event().await;
        log.push((e.id.unwrap(), e.data));
    }
    let numbers: BTreeSet<u64> = log.iter().map(|(_, d)| d.parse().unwrap()).collect();
    assert_eq!(
        numbers,
        (0..total as u64).collect(),
        "the log holds every event once"
    );
    for joiner in joiners {
        let (resume, got) = joiner.await.unwrap();
        let start = match &resume {
            None => 0,
            Some(id) => {
                log.iter()
                    .position(|(i, _)| i == id)
                    .expect("resume id in the log")
                    + 1
            }
        };
        let want = &log[start..];
        assert_eq!(got.len(), want.len(), "joiner from {resume:?}: wrong count");
        assert!(got == want, "joiner from {resume:?}: wrong sequence");
    }
}

#[tokio::test]
async fn last_event_id_query_parameter_and_header_precedence() {
    let hub = HubProcess::start(&[]);
    let first = hub.publish_ok(json!({"topic": "t", "data": "1"})).await;
    let second = hub.publish_ok(json!({"topic": "t", "data": "2"})).await;
    hub.publish_ok(json!({"topic": "t", "data": "3"})).await;
    let mut by_query =
        SseClient::connect(hub.addr, &format!("/v1/events?topic=t&lastEventId={first}")).await;
    by_query.expect_connected().await;
    assert_eq!(by_query.next_event().await.data, "2");
    // The header wins over the parameter.
    let mut both = SseClient::connect_with(
        hub.addr,
        &format!("/v1/events?topic=t&lastEventId={first}"),
        &[("Last-Event-ID", &second)],
        None,
    )
    .await;
    both.expect_connected().await;
    assert_eq!(both.next_event().await.data, "3");
}

#[tokio::test]
async fn reset_when_history_cannot_cover_the_id() {
    let hub = HubProcess::start(&["history.max_events_per_topic=3"]);
    let first = hub.publish_ok(json!({"topic": "t", "data": "0"})).await;
    for i in 1..6 {
        hub.publish_ok(json!({"topic": "t", "data": i.to_string()}))
            .await;
    }
    // Evicted by the count limit: told, not silently skipped.
    let mut sub = SseClient::connect_with(
        hub.addr,
        "/v1/events?topic=t",
        &[("Last-Event-ID", &first)],
        None,
    )
    .await;
    sub.expect_connected().await;
    let reset = sub.expect_event("herald.reset").await;
    assert_eq!(reset.json()["reason"], "history_expired");
    let reset_id = reset
        .id
        .expect("reset carries the id live delivery starts after");
    // Then live events follow.
    let live = hub.publish_ok(json!({"topic": "t", "data": "live"})).await;
    let e = sub.next_event().await;
    assert_eq!((e.data.as_str(), e.id.as_ref()), ("live", Some(&live)));
    // Resuming from the reset's id misses nothing and repeats nothing.
    let mut again = SseClient::connect_with(
        hub.addr,
        "/v1/events?topic=t",
        &[("Last-Event-ID", &reset_id)],
        None,
    )
    .await;
    again.expect_connected().await;
    assert_eq!(again.next_event().await.data, "live");

    // An id this hub never issued, or garbage: unknown.
    for bad in ["1", "99999999999999999999", "not-an-id"] {
        let mut sub = SseClient::connect_with(
            hub.addr,
            "/v1/events?topic=t",
            &[("Last-Event-ID", bad)],
            None,
        )
        .await;
        sub.expect_connected().await;
        assert_eq!(
            sub.expect_event("herald.reset").await.json()["reason"],
            "unknown_id",
            "{bad}"
        );
    }

    // Eviction on another topic does not reset a stream that never read it.
    let other = hub.publish_ok(json!({"topic": "quiet", "data": "q"})).await;
    let mut quiet = SseClient::connect_with(
        hub.addr,
        "/v1/events?topic=quiet",
        &[("Last-Event-ID", &first)],
        None,
    )
    .await;
    quiet.expect_connected().await;
    let e = quiet.next_event().await;
    assert_eq!((e.event.as_str(), e.id.as_ref()), ("message", Some(&other)));
}

#[tokio::test]
async fn history_and_since_backlogs_then_live() {
    let hub = HubProcess::start(&[]);
    for i in 0..5 {
        hub.publish_ok(json!({"topic": "h/a", "data": i.to_string()}))
            .await;
        hub.publish_ok(json!({"topic": "h/b", "data": format!("b{i}")}))
            .await;
    }
    let mut sub = SseClient::connect(hub.addr, "/v1/events?topic=h/a&history=3").await;
    sub.expect_connected().await;
    for want in ["2", "3", "4"] {
        assert_eq!(sub.next_event().await.data, want);
    }
    hub.publish_ok(json!({"topic": "h/a", "data": "live"}))
        .await;
    assert_eq!(sub.next_event().await.data, "live");

    // since: everything from a point in time on, across the pattern.
    let mut all = SseClient::connect(hub.addr, "/v1/events?topic=h/*&since=0").await;
    all.expect_connected().await;
    let mut got = Vec::new();
    for _ in 0..11 {
        got.push(all.next_event().await.data);
    }
    assert_eq!(got[..4], ["0", "b0", "1", "b1"]);
    assert_eq!(got[10], "live");
    let future = chrono_now_ms() + 60_000;
    let mut none =
        SseClient::connect(hub.addr, &format!("/v1/events?topic=h/*&since={future}")).await;
    none.expect_connected().await;
    hub.publish_ok(json!({"topic": "h/a", "data": "after"}))
        .await;
    assert_eq!(none.next_event().await.data, "after");
}

fn chrono_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn long_backlog_is_replayed_in_pages() {
    let hub = HubProcess::start(&["stream.replay_batch=7", "history.max_events_per_topic=500"]);
    let first = hub.publish_ok(json!({"topic": "p", "data": "start"})).await;
    let batch: Vec<_> = (0..100)
        .map(|i| json!({"topic": "p", "data": i.to_string()}))
        .collect();
    let (status, _) = hub.publish(json!(batch)).await;
    assert_eq!(status, 200);
    let mut sub = SseClient::connect_with(
        hub.addr,
        "/v1/events?topic=p",
        &[("Last-Event-ID", &first)],
        None,
    )
    .await;
    sub.expect_connected().await;
    for i in 0..100 {
        assert_eq!(sub.next_event().await.data, i.to_string());
    }
}

#[tokio::test]
async fn heartbeat_comment_when_idle() {
    let hub = HubProcess::start(&["stream.heartbeat_secs=1"]);
    let mut sub = SseClient::connect(hub.addr, "/v1/events?topic=quiet").await;
    sub.expect_connected().await;
    let started = std::time::Instant::now();
    assert_eq!(sub.next().await, Some(Item::Comment("ping".into())));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "ping came after {waited:?}, before the interval"
    );
    assert_eq!(sub.next().await, Some(Item::Comment("ping".into())));
}

#[tokio::test]
async fn no_heartbeat_while_events_flow() {
    let hub = HubProcess::start(&["stream.heartbeat_secs=1"]);
    let mut sub = SseClient::connect(hub.addr, "/v1/events?topic=busy").await;
    sub.expect_connected().await;
    // An event every 300 ms for 2.4 s: the stream is never quiet for the
    // 1 s interval, so nothing but the events comes.
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        hub.publish_ok(json!({"topic": "busy", "data": i.to_string()}))
            .await;
        match sub.next().await {
            Some(Item::Event(e)) => assert_eq!(e.data, i.to_string()),
            other => panic!("{other:?} while an event came every 300 ms"),
        }
    }
    // Once quiet, the ping comes again.
    assert_eq!(sub.next().await, Some(Item::Comment("ping".into())));
}
