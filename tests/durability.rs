//! The durable journal end to end (SPEC §4 acknowledgement, §9): what was
//! acknowledged survives `kill -9`, ids never repeat, a torn tail is cut.

mod common;

use common::{HubProcess, SseClient};
use serde_json::json;

fn data_dir(name: &str) -> common::TempDir {
    common::TempDir::new(&format!("durability-{name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9_and_resume_exactly_once() {
    let dir = data_dir("kill9");
    let mut hub = HubProcess::start_durable(&dir, &["history.max_events_per_topic=10000"]);
    // 2,000 acknowledged events from four concurrent publishers, so that
    // group commit batches them.
    let mut tasks = Vec::new();
    for p in 0..4 {
        let url = hub.url("/v1/publish");
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut acked = Vec::new();
            for i in 0..500 {
                let n = p * 500 + i;
                let resp = http
                    .post(&url)
                    .json(&json!({"topic": "orders", "data": n.to_string()}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
                let id: serde_json::Value = resp.json().await.unwrap();
                acked.push((id["id"].as_str().unwrap().parse::<u64>().unwrap(), n));
            }
            acked
        }));
    }
    let mut acked: Vec<(u64, usize)> = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    acked.sort();
    hub.kill9();

    let hub = HubProcess::start_durable(&dir, &["history.max_events_per_topic=10000"]);
    hub.wait_for_log(&["journal opened", "events_read=2000"])
        .await;
    // Resume from the middle: exactly the rest, in id order.
    let (middle, _) = acked[999];
    let mut sub = SseClient::connect_with(
        hub.addr,
        "/v1/events?topic=orders",
        &[("Last-Event-ID", &middle.to_string())],
        None,
    )
    .await;
    sub.expect_connected().await;
    for (id, n) in &acked[1000..] {
        let e = sub.next_event().await;
        assert_eq!(
            (e.id.unwrap().parse::<u64>().unwrap(), e.data),
            (*id, n.to_string())
        );
    }
    // Ids continue; none is reused.
    let next: u64 = hub
        .publish_ok(json!({"topic": "orders", "data": "after"}))
        .await
        .parse()
        .unwrap();
    assert!(next > acked.last().unwrap().0);
    assert_eq!(sub.next_event().await.data, "after");
}

#[tokio::test]
async fn a_torn_tail_is_cut_back_to_the_last_whole_record() {
    let dir = data_dir("torn");
    let mut hub = HubProcess::start_durable(&dir, &[]);
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            hub.publish_ok(json!({"topic": "t", "data": format!("event {i}")}))
                .await,
        );
    }
    hub.kill9();
    // Cut the last record in the middle, as a crash mid-write would.
    let last = common::journal_segments(&dir).pop().unwrap();
    let len = common::journal_records_end(&last);
    let file = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    file.set_len(len - 10).unwrap();
    drop(file);

    let hub = HubProcess::start_durable(&dir, &[]);
    hub.wait_for_log(&["cut back to the last whole record", "cut_bytes="])
        .await;
    let mut sub = SseClient::connect(hub.addr, "/v1/events?topic=t&history=100").await;
    sub.expect_connected().await;
    for i in 0..9 {
        assert_eq!(sub.next_event().await.data, format!("event {i}"));
    }
    // The next event takes the place of the torn one, with a fresh id: the
    // torn event's id may have reached a client, so it is never issued again.
    let next = hub.publish_ok(json!({"topic": "t", "data": "after"})).await;
    let e = sub.next_event().await;
    assert_eq!(e.data, "after");
    assert_eq!(e.id.as_deref(), Some(next.as_str()));
    assert!(next.parse::<u64>().unwrap() > ids[9].parse::<u64>().unwrap());
}

#[tokio::test]
async fn retention_and_ttl_hold_across_restarts() {
    let dir = data_dir("retention");
    let settings = ["history.max_events_per_topic=5"];
    let mut hub = HubProcess::start_durable(&dir, &settings);
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            hub.publish_ok(json!({"topic": "r", "data": i.to_string()}))
                .await,
        );
    }
    hub.publish_ok(json!({"topic": "short", "data": "gone", "ttl": 0}))
        .await;
    let kept = hub
        .publish_ok(json!({"topic": "short", "data": "kept"}))
        .await;
    hub.kill9();
    let hub = HubProcess::start_durable(&dir, &settings);
    // Evicted before the restart: still answered with a reset, not a gap.
    let mut old = SseClient::connect_with(
        hub.addr,
        "/v1/events?topic=r",
        &[("Last-Event-ID", &ids[1])],
        None,
    )
    .await;
    old.expect_connected().await;
    assert_eq!(
        old.expect_event("herald.reset").await.json()["reason"],
        "history_expired"
    );
    // Within the kept five: resumed.
    let mut recent = SseClient::connect_with(
        hub.addr,
        "/v1/events?topic=r",
        &[("Last-Event-ID", &ids[16])],
        None,
    )
    .await;
    recent.expect_connected().await;
    for want in ["17", "18", "19"] {
        assert_eq!(recent.next_event().await.data, want);
    }
    // ttl ended before the restart: not replayed.
    let mut short = SseClient::connect(hub.addr, "/v1/events?topic=short&history=10").await;
    short.expect_connected().await;
    let e = short.next_event().await;
    assert_eq!(
        (e.data.as_str(), e.id.as_deref()),
        ("kept", Some(kept.as_str()))
    );
}

#[tokio::test]
async fn a_store_that_cannot_be_opened_stops_the_hub() {
    // The data directory is a file.
    let file = data_dir("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let err = HubProcess::spawn(Some(&file), &[], &[], &[])
        .err()
        .expect("must not start");
    assert!(err.contains("cannot open data directory"), "{err}");
    // Damage before the end of the journal: acknowledged data would be lost.
    let dir = data_dir("damaged");
    let mut hub = HubProcess::start_durable(&dir, &[]);
    hub.publish_ok(json!({"topic": "t", "data": "one"})).await;
    hub.kill9();
    let segment = common::journal_segments(&dir).pop().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[12] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();
    // The only segment is also the last: its damaged record is a torn tail.
    // Make it a middle one by adding a later segment.
    std::fs::write(
        common::journal_segments(&dir)[0].with_file_name("99999999999999999999.log"),
        b"",
    )
    .unwrap();
    let err = HubProcess::spawn(Some(&dir), &[], &[], &[])
        .err()
        .expect("must not start");
    assert!(err.contains("is damaged at byte"), "{err}");
}

#[tokio::test]
async fn one_process_per_data_directory() {
    let dir = data_dir("locked");
    let _first = HubProcess::start_durable(&dir, &[]);
    let err = HubProcess::spawn(Some(&dir), &[], &[], &[])
        .err()
        .expect("second must not start");
    assert!(err.contains("in use by another Herald process"), "{err}");
}

/// A random sequence of publishes (single and batched, several topics),
/// `kill -9` restarts and resumes from a random acknowledged id never loses
/// or repeats an acknowledged event: each resume yields exactly the
/// acknowledged events after its id that match, in order.
#[tokio::test]
async fn random_publishes_restarts_and_resumes_lose_and_repeat_nothing() {
    random_publishes_restarts_and_resumes(&[3, 17, 4242], &[]).await;
}

/// The same with history on disk only (`history.hot_bytes = 0`: only the
/// newest event is held whole): every replay reads the journal back.
#[tokio::test]
async fn history_on_disk_only_replays_as_history_in_memory() {
    let hub = random_publishes_restarts_and_resumes(&[5, 23], &["history.hot_bytes=0"]).await;
    let metrics = hub.metrics().await;
    let cold: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("herald_history_cold_events "))
        .expect("the gauge")
        .parse()
        .unwrap();
    assert!(cold > 10, "history is on disk only: {cold} cold events");
}

async fn random_publishes_restarts_and_resumes(seeds: &[u64], extra: &[&str]) -> HubProcess {
    let mut last = None;
    for &seed in seeds {
        let mut rng = seed;
        let mut next = move |n: u64| {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (rng >> 33) % n
        };
        let dir = data_dir(&format!("random-{seed}"));
        let mut settings = vec!["history.max_events_per_topic=100000"];
        settings.extend(extra);
        let mut hub = HubProcess::start_durable(&dir, &settings);
        // Every acknowledged event: (id, topic, data), in id order.
        let mut acked: Vec<(u64, String, String)> = Vec::new();
        for step in 0..40 {
            match next(10) {
                0 => {
                    hub.kill9();
                    hub = HubProcess::start_durable(&dir, &settings);
                }
                1..=2 if !acked.is_empty() => {
                    let (from, _, _) = acked[next(acked.len() as u64) as usize].clone();
                    let pattern = ["r/a", "r/*", "r/**"][next(3) as usize];
                    let want: Vec<&(u64, String, String)> = acked
                        .iter()
                        .filter(|(id, topic, _)| *id > from && (pattern != "r/a" || topic == "r/a"))
                        .collect();
                    let path = format!("/v1/events?topic={pattern}");
                    let mut sub = SseClient::connect_with(
                        hub.addr,
                        &path,
                        &[("Last-Event-ID", &from.to_string())],
                        None,
                    )
                    .await;
                    sub.expect_connected().await;
                    for (id, _, data) in want {
                        let e = sub.next_event().await;
                        assert_eq!(
                            (e.id.unwrap().parse::<u64>().unwrap(), e.data),
                            (*id, data.clone()),
                            "seed {seed} step {step}"
                        );
                    }
                    // Nothing more: the next event is a marker published now
                    // (an acknowledged event too, so later resumes expect it).
                    let marker: u64 = hub
                        .publish_ok(json!({"topic": "r/a", "data": "end"}))
                        .await
                        .parse()
                        .unwrap();
                    let e = sub.next_event().await;
                    assert_eq!(
                        (e.data.as_str(), e.id.map(|i| i.parse::<u64>().unwrap())),
                        ("end", Some(marker)),
                        "seed {seed} step {step}: extra events"
                    );
                    acked.push((marker, "r/a".into(), "end".into()));
                }
                _ => {
                    let n = 1 + next(5) as usize;
                    let batch: Vec<serde_json::Value> = (0..n)
                        .map(|i| {
                            let topic = ["r/a", "r/b"][next(2) as usize];
                            json!({"topic": topic, "data": format!("s{step}-{i}")})
                        })
                        .collect();
                    let (status, answer) = hub.publish(json!(batch.clone())).await;
                    assert_eq!(status, 200);
                    for (event, ack) in batch.iter().zip(answer.as_array().unwrap()) {
                        let id: u64 = ack["id"].as_str().unwrap().parse().unwrap();
                        assert!(
                            acked.last().is_none_or(|last| id > last.0),
                            "ids rise, never reused"
                        );
                        acked.push((
                            id,
                            event["topic"].as_str().unwrap().into(),
                            event["data"].as_str().unwrap().into(),
                        ));
                    }
                }
            }
        }
        last = Some(hub);
    }
    last.expect("a seed")
}

/// A write that fails part way (here a file size limit, as a full disk
/// would) refuses its publish with 503, leaves no half record behind,
/// shows in `/readyz`, and the hub goes on serving: a smaller publish that
/// fits succeeds, subscribers keep their streams, and a restart finds every
/// acknowledged event and nothing cut.
#[tokio::test]
async fn a_failed_write_is_refused_undone_and_reported_by_readyz() {
    let dir = data_dir("fsize");
    let limit = 64 * 1024;
    let hub = HubProcess::start_with_file_limit(&dir, &[], limit);
    let http = reqwest::Client::new();
    let mut sub = SseClient::connect(hub.addr, "/v1/events?topic=t").await;
    sub.expect_connected().await;
    let segment = common::journal_segments(&dir).pop().unwrap();
    let size = || std::fs::metadata(&segment).unwrap().len();
    let mut acked = Vec::new();
    while size() < limit - 8 * 1024 {
        acked.push(
            hub.publish_ok(json!({"topic": "t", "data": "x".repeat(1000)}))
                .await,
        );
    }
    let before = size();
    let (status, answer) = hub
        .publish(json!({"topic": "t", "data": "y".repeat(12 * 1024)}))
        .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (503, Some("unavailable"))
    );
    assert_eq!(size(), before, "the partial record was cut off");
    let ready = http.get(hub.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
    assert!(
        body["reason"].as_str().unwrap().contains("journal"),
        "{body}"
    );

    let small = hub.publish_ok(json!({"topic": "t", "data": "small"})).await;
    acked.push(small.clone());
    let ready = http.get(hub.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "ready again after a write succeeded");
    // The subscriber kept its stream and got exactly the acknowledged events.
    let mut got = Vec::new();
    while got.last() != Some(&small) {
        got.push(sub.next_event().await.id.unwrap());
    }
    assert_eq!(got, acked);
    drop(hub);

    let hub = HubProcess::start_durable(&dir, &[]);
    assert!(
        !hub.logs().iter().any(|l| l.contains("cut_bytes")),
        "nothing to cut: {:?}",
        hub.logs()
    );
    let mut replay = SseClient::connect(hub.addr, "/v1/events?topic=t&since=0").await;
    replay.expect_connected().await;
    let mut again = Vec::new();
    while again.last() != Some(&small) {
        again.push(replay.next_event().await.id.unwrap());
    }
    assert_eq!(again, acked);
    drop(hub);
    let _ = std::fs::remove_dir_all(&dir);
}
