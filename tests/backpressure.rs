//! Slow subscribers: each `stream.overflow` policy against a reader that
//! stops reading (SPEC §3).

mod common;

use common::{HubProcess, SseClient, SseEvent};
use serde_json::json;

const FILLER_BYTES: usize = 60_000;

fn filler_number(e: &SseEvent) -> u64 {
    e.data.split(' ').next().unwrap().parse().unwrap()
}

async fn stalled_reader(hub: &HubProcess) -> SseClient {
    let mut slow = SseClient::connect_with(hub.addr, "/v1/events?topic=t", &[], Some(4096)).await;
    slow.expect_connected().await;
    slow
}

#[tokio::test]
async fn disconnect_closes_a_slow_reader_which_then_resumes_without_loss() {
    // A write timeout far beyond the test: only the hub's switch can drop
    // the stalled socket in time.
    let hub = HubProcess::start(&["stream.queue_capacity=4", "stream.write_timeout_secs=600"]);
    let mut slow = stalled_reader(&hub).await;
    // A reader that keeps up: each filler is published only once it has
    // read the one before, so however loaded the machine, its queue never
    // holds more than one (a reader merely reading "at the same time" was
    // starved on a busy CI machine and overflowed too).
    let mut fast = SseClient::connect(hub.addr, "/v1/events?topic=t").await;
    fast.expect_connected().await;
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let fast_reader = tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            let e = fast.next_event().await;
            if e.event == "end" {
                return got;
            }
            got.push(filler_number(&e));
            let _ = seen_tx.send(());
        }
    });
    let filler = "x".repeat(FILLER_BYTES);
    let mut published = 0;
    loop {
        hub.publish_ok(
            json!({"topic": "t", "event": "fill", "data": format!("{published} {filler}")}),
        )
        .await;
        published += 1;
        seen.recv().await.expect("the fast reader is reading");
        if hub.stats().await["overflow_disconnects"].as_u64() >= Some(1) {
            break;
        }
        assert!(published < 5000, "an overflow disconnect never happened");
    }
    // Gone from the books at once, although its socket is still stuck.
    assert_eq!(hub.stats().await["connections"], 1);
    // And the hub drops the socket without waiting for the reader to read
    // (its writes are blocked, so the stream itself cannot end): the hub's
    // end leaves ESTABLISHED long before the write timeout.
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while slow.hub_end_is_open() {
        assert!(
            std::time::Instant::now() < deadline,
            "the hub kept the overflowed reader's socket open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let items = slow.read_to_end().await;
    let got: Vec<SseEvent> = common::events(&items);
    let numbers: Vec<u64> = got.iter().map(filler_number).collect();
    assert!(numbers.len() < published as usize);
    assert_eq!(numbers, (0..numbers.len() as u64).collect::<Vec<_>>());
    // Resuming with the last id seen delivers exactly the rest.
    let last = got
        .last()
        .expect("some events got through")
        .id
        .clone()
        .unwrap();
    let mut resumed = SseClient::connect_with(
        hub.addr,
        "/v1/events?topic=t",
        &[("Last-Event-ID", &last)],
        None,
    )
    .await;
    resumed.expect_connected().await;
    for n in numbers.len() as u64..published {
        assert_eq!(filler_number(&resumed.next_event().await), n);
    }
    // The reader that kept up was not affected.
    hub.publish_ok(json!({"topic": "t", "event": "end"})).await;
    assert_eq!(
        fast_reader.await.unwrap(),
        (0..published).collect::<Vec<_>>()
    );
    assert_eq!(
        hub.stats().await["overflow_disconnects"],
        1,
        "only the slow one"
    );
}

/// Reads in the background until the `end` event; publishes `end` once
/// the hub's queues have drained so that it cannot itself be dropped.
/// Gives the client back, still connected.
async fn drain_until_end(hub: &HubProcess, mut slow: SseClient) -> (Vec<SseEvent>, SseClient) {
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            let e = slow.next_event().await;
            if e.event == "end" {
                return (got, slow);
            }
            got.push(e);
        }
    });
    hub.wait_for_stats("the queue to drain", |s| s["queued_now"] == 0)
        .await;
    hub.publish_ok(json!({"topic": "t", "event": "end"})).await;
    reader.await.unwrap()
}

#[tokio::test]
async fn drop_newest_keeps_the_stream_and_drops_new_events() {
    let hub = HubProcess::start(&["stream.queue_capacity=4", "stream.overflow=\"drop_newest\""]);
    let slow = stalled_reader(&hub).await;
    // Past anything the kernel can buffer: from here every event must wait
    // in the queue, which is full, so the policy decides.
    let published = common::stall_reader(&hub, "t").await as u64;
    hub.publish_ok(json!({"topic": "t", "event": "marker"}))
        .await;
    let (got, _still_open) = drain_until_end(&hub, slow).await;
    assert!(
        got.iter().all(|e| e.event == "fill"),
        "the newest (the marker) must be dropped"
    );
    let numbers: Vec<u64> = got.iter().map(filler_number).collect();
    // While the kernel's buffers grew, drops and progress interleaved: the
    // order holds, and every filler was either received or counted dropped.
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "order kept");
    assert!((numbers.len() as u64) < published);
    let stats = hub.stats().await;
    assert_eq!(stats["connections"], 1, "the stream stays open");
    let dropped = stats["deliveries_dropped"].as_u64().unwrap();
    assert_eq!(
        dropped,
        published - numbers.len() as u64 + 1,
        "each filler received or counted; plus the marker"
    );
}

#[tokio::test]
async fn drop_oldest_keeps_the_stream_and_the_newest_events() {
    let hub = HubProcess::start(&["stream.queue_capacity=4", "stream.overflow=\"drop_oldest\""]);
    let slow = stalled_reader(&hub).await;
    let published = common::stall_reader(&hub, "t").await as u64;
    hub.publish_ok(json!({"topic": "t", "event": "marker"}))
        .await;
    let (got, _still_open) = drain_until_end(&hub, slow).await;
    assert_eq!(
        got.last().unwrap().event,
        "marker",
        "the newest must be kept"
    );
    let numbers: Vec<u64> = got[..got.len() - 1].iter().map(filler_number).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "order kept");
    assert!((numbers.len() as u64) < published);
    assert_eq!(
        *numbers.last().unwrap(),
        published - 1,
        "the last filler was among the newest kept"
    );
    let stats = hub.stats().await;
    assert_eq!(stats["connections"], 1);
    let dropped = stats["deliveries_dropped"].as_u64().unwrap();
    assert_eq!(
        dropped,
        published - numbers.len() as u64,
        "each filler received or counted"
    );
}
