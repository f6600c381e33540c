//! The load generator (bench/herald-bench) against a real hub, a few
//! seconds per mode: the harness works and its figures add up. Timing
//! figures are never asserted here; see docs/BENCHMARKS.md.

mod common;

use std::time::Duration;

use common::HubProcess;
use herald_bench::wire::UrlTemplate;
use herald_bench::{Swarm, Target};

fn target(hub: &HubProcess, sources: usize) -> Target {
    Target {
        sub: vec![UrlTemplate::parse(&hub.url("/v1/events?topic={topic}")).unwrap()],
        publish: UrlTemplate::parse(&hub.url("/v1/publish?topic={topic}")).unwrap(),
        headers: vec![],
        sources,
        server_pids: vec![hub.pid()],
        connect_concurrency: 50,
        publish_format: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_and_ramp_count_every_delivery_once() {
    let hub = HubProcess::start(&[]);
    // Three source addresses: the sockets really come from 127.0.0.1-3.
    let mut swarm = Swarm::connect(target(&hub, 3), 120, 7).await.unwrap();
    assert_eq!(swarm.connect_errors, 0);
    let stats = hub.stats().await;
    assert_eq!(stats["connections"], 120);
    assert_eq!(stats["addresses"], 3, "{stats}");
    let grace = Duration::from_secs(10);
    let first = swarm.phase(200.0, 1.0, 64, 3, grace).await.unwrap();
    // 200 events round robin over 7 topics reach the ~17 readers of each.
    assert_eq!((first.published, first.publish_errors), (200, 0));
    let per_topic: Vec<u64> = (0..7u64).map(|t| (200 - t).div_ceil(7)).collect();
    let readers: Vec<u64> = (0..7u64).map(|t| (120 - t).div_ceil(7)).collect();
    let expected: u64 = per_topic.iter().zip(&readers).map(|(e, r)| e * r).sum();
    assert_eq!(first.expected, expected);
    assert_eq!(
        (first.received, first.lost, first.duplicated),
        (expected, 0, 0)
    );
    assert!(first.latency_ms.max > 0.0 && first.latency_ms.p50 <= first.latency_ms.max);
    assert!(first.server_cpu_secs.is_some());
    // A second phase (as ramp runs them) counts only its own deliveries.
    let second = swarm.phase(400.0, 0.5, 2000, 2, grace).await.unwrap();
    assert_eq!(second.published, 200);
    assert_eq!((second.received, second.lost), (second.expected, 0));
    swarm.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_idle_report_what_they_did() {
    let hub = HubProcess::start(&[]);
    let url = UrlTemplate::parse(&hub.url("/v1/publish")).unwrap();
    let run = herald_bench::publish(url, 2, 0.5, 50, 10, true, &[hub.pid()])
        .await
        .unwrap();
    assert!(run.requests > 0);
    assert_eq!(run.errors, 0);
    assert_eq!(run.events, run.requests * 10);
    let stats = hub.stats().await;
    assert_eq!(
        stats["events_dispatched"].as_u64().unwrap(),
        run.events,
        "the hub committed exactly what the generator counted"
    );

    let idle = herald_bench::idle(target(&hub, 1), 200, 10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!((idle.connections, idle.connect_errors), (200, 0));
    let (before, after) = (idle.rss_before_kib.unwrap(), idle.rss_after_kib.unwrap());
    assert!(before > 0 && after > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_storm_gets_exactly_what_was_missed() {
    let hub = HubProcess::start(&[]);
    let run = herald_bench::resume_storm(target(&hub, 2), 100, 10, 4, 32, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!((run.complete, run.failed), (100, 0));
    assert_eq!(
        (run.expected, run.received, run.lost, run.duplicated),
        (400, 400, 0, 0)
    );
}
