//! Many subscribers, and publishers that feed them at a fixed rate.
//!
//! Every published body starts with `TOPIC SEQ SENT_US`: the topic's index,
//! the event's number within its topic (1, 2, 3…; publishes to one topic go
//! through one pipelined connection, so the server sees them in that order),
//! and when it was sent, in µs since the run began. Each subscriber checks
//! that its topic's numbers only rise (a repeat or a step back is a
//! duplicate) and counts what arrived; what was acknowledged to the
//! publisher and never arrived is lost.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::procfs;
use crate::wire::{self, OnEvent, ResponseReader, SseReader, UrlTemplate};

/// Where and how to reach the server under test.
#[derive(Debug, Clone)]
pub struct Target {
    /// Subscribe URLs with `{topic}`: subscriber `i` uses `sub[i % len]`.
    pub sub: Vec<UrlTemplate>,
    /// Publish URL with `{topic}`; the body is the event's data.
    pub publish: UrlTemplate,
    /// Extra request headers for subscribing (`Name: value`).
    pub headers: Vec<String>,
    /// Loopback source addresses to spread client sockets over.
    pub sources: usize,
    /// The server's processes (each with its descendants), for memory and
    /// CPU figures.
    pub server_pids: Vec<u32>,
    /// Connects in flight at once (some servers refuse big bursts).
    pub connect_concurrency: usize,
    pub publish_format: wire::PublishFormat,
}

pub fn topic_name(t: usize) -> String {
    format!("bench{t}")
}

/// One subscriber's counters, read by the run while it goes on.
#[derive(Default)]
struct SubCounters {
    topic: usize,
    received: AtomicU64,
    duplicates: AtomicU64,
    /// Set when the stream ended or failed.
    closed: AtomicU64,
}

struct Shared {
    latency_us: Mutex<Histogram<u64>>,
    started: Instant,
    /// Set by the run while a phase is measured.
    recording: std::sync::atomic::AtomicBool,
}

struct Handler {
    counters: Arc<SubCounters>,
    shared: Arc<Shared>,
    last_seq: u64,
}

impl OnEvent for Handler {
    fn event(&mut self, _id: Option<&[u8]>, data: &[u8]) {
        let mut parts = data.split(|&b| b == b' ');
        let mut num = || {
            parts
                .next()
                .and_then(|p| std::str::from_utf8(p).ok())
                .and_then(|p| p.parse::<u64>().ok())
        };
        let (Some(topic), Some(seq), Some(sent)) = (num(), num(), num()) else {
            return; // not a benchmark event (a hub's own events)
        };
        if topic as usize != self.counters.topic {
            return;
        }
        if seq <= self.last_seq {
            self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
        } else {
            self.last_seq = seq;
        }
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        if self.shared.recording.load(Ordering::Relaxed) {
            let now = self.shared.started.elapsed().as_micros() as u64;
            let _ = self
                .shared
                .latency_us
                .lock()
                .record(now.saturating_sub(sent).max(1));
        }
    }
}

/// Connected subscribers.
pub struct Swarm {
    target: Target,
    topics: usize,
    subs: Vec<Arc<SubCounters>>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    /// Per topic: events acknowledged to the publisher, and the next seq.
    published: Vec<u64>,
    next_seq: Vec<u64>,
    pub connect_errors: usize,
    pub connect_secs: f64,
}

/// Figures of one publishing phase.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub rate_per_sec: f64,
    pub payload_bytes: usize,
    pub seconds: f64,
    pub published: u64,
    pub publish_errors: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub deliveries_per_sec: f64,
    pub latency_ms: Latency,
    pub client_cpu_secs: f64,
    pub server_cpu_secs: Option<f64>,
    /// Of `server_cpu_secs`, user space (utime) and the kernel (stime):
    /// a socket write's kernel cost is the floor every server pays.
    pub server_user_secs: Option<f64>,
    pub server_system_secs: Option<f64>,
    /// Subscribers whose stream ended during the phase.
    pub streams_closed: u64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    /// Percentiles of a histogram of µs, in ms.
    pub fn of_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

impl Swarm {
    /// Opens `n` subscriptions over `topics` topics (subscriber `i` reads
    /// topic `i % topics`); returns once every one has its first bytes.
    pub async fn connect(target: Target, n: usize, topics: usize) -> anyhow::Result<Swarm> {
        let topics = topics.max(1);
        let shared = Arc::new(Shared {
            latency_us: Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3)?),
            started: Instant::now(),
            recording: false.into(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let gate = Arc::new(Semaphore::new(target.connect_concurrency.max(1)));
        let ready = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
        let began = Instant::now();
        let mut subs = Vec::with_capacity(n);
        for i in 0..n {
            let counters = Arc::new(SubCounters {
                topic: i % topics,
                ..Default::default()
            });
            subs.push(counters.clone());
            let target = target.clone();
            let shared = shared.clone();
            let mut stop_rx = stop_rx.clone();
            let gate = gate.clone();
            let (ready, failed, done_tx) = (ready.clone(), failed.clone(), done_tx.clone());
            tokio::spawn(async move {
                let opened = {
                    let _permit = gate.acquire().await;
                    open(&target, i, counters.topic).await
                };
                let (mut stream, mut reader) = match opened {
                    Ok(x) => x,
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        counters.closed.store(1, Ordering::Relaxed);
                        let _ = done_tx.send(());
                        return;
                    }
                };
                let mut handler = Handler {
                    counters: counters.clone(),
                    shared,
                    last_seq: 0,
                };
                // Registered once its first bytes arrived.
                let first = reader.read(&mut stream, &mut handler).await;
                ready.fetch_add(1, Ordering::Relaxed);
                let _ = done_tx.send(());
                drop(done_tx);
                if !matches!(first, Ok(true)) {
                    counters.closed.store(1, Ordering::Relaxed);
                    return;
                }
                loop {
                    tokio::select! {
                        r = reader.read(&mut stream, &mut handler) => {
                            if !matches!(r, Ok(true)) {
                                counters.closed.store(1, Ordering::Relaxed);
                                return;
                            }
                        }
                        _ = stop_rx.changed() => return,
                    }
                }
            });
        }
        drop(done_tx);
        for _ in 0..n {
            if done_rx.recv().await.is_none() {
                break;
            }
        }
        Ok(Swarm {
            target,
            topics,
            subs,
            shared,
            stop,
            published: vec![0; topics],
            next_seq: vec![1; topics],
            connect_errors: failed.load(Ordering::Relaxed),
            connect_secs: began.elapsed().as_secs_f64(),
        })
    }

    pub fn len(&self) -> usize {
        self.subs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    fn totals(&self) -> (u64, u64, u64) {
        let mut t = (0, 0, 0);
        for s in &self.subs {
            t.0 += s.received.load(Ordering::Relaxed);
            t.1 += s.duplicates.load(Ordering::Relaxed);
            t.2 += s.closed.load(Ordering::Relaxed);
        }
        t
    }

    /// Deliveries the acknowledged publishes call for, given who listens.
    fn expected(&self) -> u64 {
        self.subs
            .iter()
            .map(|s| self.published[s.topic])
            .sum::<u64>()
    }

    /// Publishes `rate` events per second over all topics (round robin)
    /// for `seconds`, through `publishers` pipelined connections; then waits
    /// up to `grace` for the last deliveries.
    pub async fn phase(
        &mut self,
        rate: f64,
        seconds: f64,
        payload: usize,
        publishers: usize,
        grace: Duration,
    ) -> anyhow::Result<Phase> {
        let expected_before = self.expected();
        let (received_before, dups_before, closed_before) = self.totals();
        self.shared.latency_us.lock().reset();
        self.shared.recording.store(true, Ordering::Relaxed);
        let cpu_client = procfs::own_cpu_secs();
        let cpu_server = procfs::cpu_of(&self.target.server_pids);

        let publishers = publishers.clamp(1, self.topics);
        let acked: Arc<Vec<AtomicU64>> = Arc::new((0..self.topics).map(|_| 0.into()).collect());
        let errors = Arc::new(AtomicU64::new(0));
        let mut senders = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..publishers {
            let (tx, rx) = mpsc::channel::<(usize, Vec<u8>)>(4096);
            senders.push(tx);
            tasks.push(tokio::spawn(publisher(
                self.target.publish.clone(),
                rx,
                acked.clone(),
                errors.clone(),
                self.target.publish_format,
            )));
        }
        let began = Instant::now();
        let total = (rate * seconds).round() as u64;
        let mut body = Vec::with_capacity(payload.max(64));
        for k in 0..total {
            let due = began + Duration::from_secs_f64(k as f64 / rate);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
            let topic = (k % self.topics as u64) as usize;
            let seq = self.next_seq[topic];
            self.next_seq[topic] += 1;
            body.clear();
            let sent = self.shared.started.elapsed().as_micros();
            body.extend_from_slice(format!("{topic} {seq} {sent} ").as_bytes());
            body.resize(payload.max(body.len()), b'x');
            let mut request = Vec::with_capacity(body.len() + 160);
            wire::publish_request(
                &self.target.publish,
                self.target.publish_format,
                &topic_name(topic),
                &body,
                &mut request,
            );
            if senders[topic % publishers]
                .send((topic, request))
                .await
                .is_err()
            {
                anyhow::bail!("a publish connection failed");
            }
        }
        drop(senders);
        for t in tasks {
            t.await.context("publisher task")??;
        }
        let publish_secs = began.elapsed().as_secs_f64().max(seconds);
        for (t, n) in acked.iter().enumerate() {
            self.published[t] += n.load(Ordering::Relaxed);
        }
        let expected = self.expected() - expected_before;
        let deadline = Instant::now() + grace;
        loop {
            let (received, dups, _) = self.totals();
            let distinct = (received - received_before) - (dups - dups_before);
            if distinct >= expected || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.shared.recording.store(false, Ordering::Relaxed);
        let (received, dups, closed) = self.totals();
        let received = received - received_before;
        let duplicated = dups - dups_before;
        let distinct = received - duplicated;
        let latency = Latency::of_histogram(&self.shared.latency_us.lock());
        let server_cpu = cpu_server
            .zip(procfs::cpu_of(&self.target.server_pids))
            .map(|(before, after)| after.since(before));
        Ok(Phase {
            rate_per_sec: rate,
            payload_bytes: payload,
            seconds: publish_secs,
            published: acked.iter().map(|n| n.load(Ordering::Relaxed)).sum(),
            publish_errors: errors.load(Ordering::Relaxed),
            expected,
            received,
            lost: expected.saturating_sub(distinct),
            duplicated,
            deliveries_per_sec: distinct as f64 / publish_secs,
            latency_ms: latency,
            client_cpu_secs: procfs::own_cpu_secs() - cpu_client,
            server_cpu_secs: server_cpu.map(procfs::Cpu::total),
            server_user_secs: server_cpu.map(|c| c.user),
            server_system_secs: server_cpu.map(|c| c.system),
            streams_closed: closed - closed_before,
        })
    }

    /// Closes every subscription.
    pub fn close(self) {
        let _ = self.stop.send(true);
    }
}

async fn open(
    target: &Target,
    i: usize,
    topic: usize,
) -> anyhow::Result<(tokio::net::TcpStream, SseReader)> {
    let source = (target.sources > 0).then(|| wire::source_ip(i, target.sources));
    let sub = &target.sub[i % target.sub.len()];
    let mut stream = wire::connect(sub.addr, source).await?;
    let reader = SseReader::open(
        &mut stream,
        &sub.host,
        &sub.path(&topic_name(topic)),
        &target.headers,
    )
    .await?;
    Ok((stream, reader))
}

/// One pipelined publish connection: writes requests as they come, reads
/// answers in order, counts what was acknowledged per topic.
pub(crate) async fn publisher(
    url: UrlTemplate,
    mut requests: mpsc::Receiver<(usize, Vec<u8>)>,
    acked: Arc<Vec<AtomicU64>>,
    errors: Arc<AtomicU64>,
    format: wire::PublishFormat,
) -> anyhow::Result<()> {
    if format == wire::PublishFormat::PushpinJson {
        // Pushpin's publish API closes the connection after each answer.
        while let Some((topic, request)) = requests.recv().await {
            let mut stream = wire::connect(url.addr, None).await?;
            stream.write_all(&request).await?;
            let status = ResponseReader::default().next(&mut stream).await?;
            match (200..300).contains(&status) {
                true => acked[topic].fetch_add(1, Ordering::Relaxed),
                false => errors.fetch_add(1, Ordering::Relaxed),
            };
        }
        return Ok(());
    }
    let stream = wire::connect(url.addr, None).await?;
    let (mut read, mut write) = stream.into_split();
    let (inflight_tx, mut inflight_rx) = mpsc::unbounded_channel::<usize>();
    let reader = tokio::spawn(async move {
        let mut responses = ResponseReader::default();
        while let Some(topic) = inflight_rx.recv().await {
            let status = responses.next(&mut read).await?;
            if (200..300).contains(&status) {
                acked[topic].fetch_add(1, Ordering::Relaxed);
            } else {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        anyhow::Ok(())
    });
    let mut batch = Vec::new();
    while let Some((topic, request)) = requests.recv().await {
        batch.clear();
        batch.extend_from_slice(&request);
        let _ = inflight_tx.send(topic);
        // Whatever else is waiting leaves in the same write.
        while let Ok((topic, request)) = requests.try_recv() {
            batch.extend_from_slice(&request);
            let _ = inflight_tx.send(topic);
            if batch.len() > 256 * 1024 {
                break;
            }
        }
        write.write_all(&batch).await?;
    }
    drop(inflight_tx);
    reader.await??;
    Ok(())
}
