//! Publish throughput and latency into the log, and idle memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::procfs;
use crate::swarm::{topic_name, Latency, Swarm, Target};
use crate::wire::{self, ResponseReader, UrlTemplate};

/// What `publish` measured.
#[derive(Debug, Clone, Serialize)]
pub struct PublishRun {
    pub connections: usize,
    pub batch: usize,
    pub payload_bytes: usize,
    pub seconds: f64,
    pub requests: u64,
    pub events: u64,
    pub errors: u64,
    pub requests_per_sec: f64,
    pub events_per_sec: f64,
    /// Time from sending a request to its answer.
    pub latency_ms: Latency,
    pub client_cpu_secs: f64,
    pub server_cpu_secs: Option<f64>,
}

/// Publishes as fast as answers come, one request in flight per
/// connection, for `seconds`. With `json`, the body is Herald's JSON (an
/// array of `batch` events); otherwise `batch` is 1 and the body is the
/// data, as text, posted to the URL's topic.
pub async fn publish(
    url: UrlTemplate,
    connections: usize,
    seconds: f64,
    payload: usize,
    batch: usize,
    json: bool,
    server_pids: &[u32],
) -> anyhow::Result<PublishRun> {
    let batch = if json { batch.max(1) } else { 1 };
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let cpu_client = procfs::own_cpu_secs();
    let cpu_server = procfs::cpu_secs_of(server_pids);
    let began = Instant::now();
    let deadline = began + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for c in 0..connections.max(1) {
        let url = url.clone();
        let histogram = histogram.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = wire::connect(url.addr, None).await?;
            let mut responses = ResponseReader::default();
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let (mut requests, mut errors) = (0u64, 0u64);
            let topic = topic_name(c);
            let data = "x".repeat(payload);
            let (path, content_type, body) = if json {
                let event = serde_json::json!({"topic": topic, "data": data});
                let body = match batch {
                    1 => event.to_string(),
                    n => serde_json::Value::Array(vec![event; n]).to_string(),
                };
                (url.path(&topic), "application/json", body)
            } else {
                (url.path(&topic), "text/plain", data)
            };
            let mut request = Vec::new();
            wire::post_request(
                &url.host,
                &path,
                content_type,
                body.as_bytes(),
                &mut request,
            );
            while Instant::now() < deadline {
                let sent = Instant::now();
                stream.write_all(&request).await?;
                let status = responses.next(&mut stream).await?;
                let _ = local.record(sent.elapsed().as_micros().max(1) as u64);
                requests += 1;
                if !(200..300).contains(&status) {
                    errors += 1;
                }
            }
            histogram.lock().add(&local)?;
            anyhow::Ok((requests, errors))
        }));
    }
    let (mut requests, mut errors) = (0, 0);
    for t in tasks {
        let (r, e) = t.await??;
        requests += r;
        errors += e;
    }
    let secs = began.elapsed().as_secs_f64();
    let events = (requests - errors) * batch as u64;
    let latency = Latency::of_histogram(&histogram.lock());
    Ok(PublishRun {
        connections,
        batch,
        payload_bytes: payload,
        seconds: secs,
        requests,
        events,
        errors,
        requests_per_sec: requests as f64 / secs,
        events_per_sec: events as f64 / secs,
        latency_ms: latency,
        client_cpu_secs: procfs::own_cpu_secs() - cpu_client,
        server_cpu_secs: cpu_server
            .zip(procfs::cpu_secs_of(server_pids))
            .map(|(before, after)| after - before),
    })
}

/// What `idle` measured.
#[derive(Debug, Clone, Serialize)]
pub struct IdleRun {
    pub connections: usize,
    pub connect_errors: usize,
    pub connect_secs: f64,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub kib_per_connection: Option<f64>,
}

/// Opens `n` idle subscriptions and reads the server's memory before and
/// after (after `settle`, with every subscription still open).
pub async fn idle(
    target: Target,
    n: usize,
    topics: usize,
    settle: Duration,
) -> anyhow::Result<IdleRun> {
    let pids = target.server_pids.clone();
    let before = procfs::rss_kib_of(&pids);
    let swarm = Swarm::connect(target, n, topics).await?;
    tokio::time::sleep(settle).await;
    let after = procfs::rss_kib_of(&pids);
    let open = swarm.len() - swarm.connect_errors;
    let run = IdleRun {
        connections: open,
        connect_errors: swarm.connect_errors,
        connect_secs: swarm.connect_secs,
        rss_before_kib: before,
        rss_after_kib: after,
        kib_per_connection: before
            .zip(after)
            .map(|(b, a)| (a.saturating_sub(b)) as f64 / open.max(1) as f64),
    };
    swarm.close();
    Ok(run)
}

/// What `connects` measured.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectsRun {
    pub asked_per_sec: f64,
    pub seconds: f64,
    pub asked: u64,
    pub answered: u64,
    /// Connects refused, reset, timed out (5 s) or answered other than 2xx.
    pub failed: u64,
    pub answered_per_sec: f64,
    /// From connect to the whole answer.
    pub latency_ms: Latency,
}

/// Opens connections at `rate` per second for `seconds`, each sending one
/// `GET` with `Connection: close` and reading the answer to its end; at
/// most `concurrency` at once (a start that would pass it counts as
/// failed, so an overloaded server shows as failures, not as a slower
/// loader).
pub async fn connects(
    url: UrlTemplate,
    rate: f64,
    seconds: f64,
    sources: usize,
    concurrency: usize,
) -> anyhow::Result<ConnectsRun> {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        url.path("")
    );
    let request: Arc<[u8]> = request.into_bytes().into();
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let answered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let began = Instant::now();
    let total = (rate * seconds) as u64;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let due = began + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            continue;
        };
        let (request, histogram, answered, failed) = (
            request.clone(),
            histogram.clone(),
            answered.clone(),
            failed.clone(),
        );
        let source = wire::source_ip(i as usize, sources);
        tasks.spawn(async move {
            let _permit = permit;
            let started = Instant::now();
            let exchange = async {
                use tokio::io::AsyncReadExt;
                let mut stream = wire::connect(url.addr, Some(source)).await?;
                stream.write_all(&request).await?;
                let mut answer = Vec::with_capacity(512);
                stream.read_to_end(&mut answer).await?;
                anyhow::Ok(answer.starts_with(b"HTTP/1.1 2"))
            };
            match tokio::time::timeout(Duration::from_secs(5), exchange).await {
                Ok(Ok(true)) => {
                    answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let _ = histogram
                        .lock()
                        .record(started.elapsed().as_micros().max(1) as u64);
                }
                _ => {
                    failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        // Reap finished ones now and then.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let secs = began.elapsed().as_secs_f64();
    let answered = answered.load(std::sync::atomic::Ordering::Relaxed);
    let latency = Latency::of_histogram(&histogram.lock());
    Ok(ConnectsRun {
        asked_per_sec: rate,
        seconds: secs,
        asked: total,
        answered,
        failed: failed.load(std::sync::atomic::Ordering::Relaxed),
        answered_per_sec: answered as f64 / secs,
        latency_ms: latency,
    })
}
