//! W5: many subscribers reconnect at once with Last-Event-ID.
//!
//! Every subscriber reads one event of its topic (so it holds an id), and
//! disconnects. While all are away, each topic gets `missed` more events,
//! each acknowledged. Then all reconnect together with `Last-Event-ID`, and
//! the run measures the time until every one has exactly its missing
//! events: the next `missed` numbers of its topic, in order, none twice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};

use crate::procfs;
use crate::swarm::{publisher, topic_name, Target};
use crate::wire::{self, OnEvent, SseReader};

#[derive(Debug, Clone, Serialize)]
pub struct ResumeRun {
    pub subscribers: usize,
    pub topics: usize,
    pub missed_per_topic: u64,
    /// From the first reconnect to the last subscriber holding all it missed.
    pub resume_secs: f64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Subscribers that got everything they missed, exactly once, in order.
    pub complete: usize,
    pub failed: usize,
    pub server_cpu_secs: Option<f64>,
}

/// What one subscriber read: the id and number of its last event, and
/// how the numbers went.
#[derive(Default)]
struct Tally {
    topic: u64,
    last_id: Vec<u8>,
    last_seq: u64,
    received: u64,
    duplicated: u64,
    out_of_order: u64,
}

impl OnEvent for Tally {
    fn event(&mut self, id: Option<&[u8]>, data: &[u8]) {
        let mut parts = data.split(|&b| b == b' ');
        let mut num = || {
            parts
                .next()
                .and_then(|p| std::str::from_utf8(p).ok())
                .and_then(|p| p.parse::<u64>().ok())
        };
        let (Some(topic), Some(seq)) = (num(), num()) else {
            return;
        };
        if topic != self.topic {
            return;
        }
        if seq <= self.last_seq {
            self.duplicated += 1;
            return;
        }
        if self.last_seq != 0 && seq != self.last_seq + 1 {
            self.out_of_order += 1;
        }
        self.last_seq = seq;
        self.received += 1;
        if let Some(id) = id {
            self.last_id.clear();
            self.last_id.extend_from_slice(id);
        }
    }
}

/// Reads events until `until_seq` arrived (or the deadline passes).
#[allow(clippy::too_many_arguments)]
async fn read_until(
    target: &Target,
    i: usize,
    tally: &mut Tally,
    until_seq: u64,
    last_event_id: Option<String>,
    ready: Option<mpsc::UnboundedSender<()>>,
    permit: tokio::sync::OwnedSemaphorePermit,
    deadline: Instant,
) -> anyhow::Result<()> {
    let mut permit = Some(permit);
    let source = (target.sources > 0).then(|| wire::source_ip(i, target.sources));
    let sub = &target.sub[i % target.sub.len()];
    let mut stream = wire::connect(sub.addr, source).await?;
    let mut headers = target.headers.clone();
    if let Some(id) = last_event_id {
        headers.push(format!("Last-Event-ID: {id}"));
    }
    let path = sub.path(&topic_name(tally.topic as usize));
    let mut reader = SseReader::open(&mut stream, &sub.host, &path, &headers).await?;
    let mut ready = ready;
    while tally.last_seq < until_seq {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, reader.read(&mut stream, tally)).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => anyhow::bail!("stream ended"),
            Ok(Err(e)) => return Err(e),
            Err(_) => anyhow::bail!("timed out"),
        }
        // Connected: the next connect may start.
        drop(permit.take());
        if let Some(tx) = ready.take() {
            let _ = tx.send(());
        }
    }
    Ok(())
}

/// Publishes `per_topic` events to each topic, numbered from `first_seq`;
/// returns how many were acknowledged.
async fn publish_round(
    target: &Target,
    topics: usize,
    first_seq: u64,
    per_topic: u64,
    payload: usize,
) -> anyhow::Result<u64> {
    let publishers = topics.clamp(1, 8);
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..topics).map(|_| 0.into()).collect());
    let errors = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..publishers {
        let (tx, rx) = mpsc::channel(4096);
        senders.push(tx);
        tasks.push(tokio::spawn(publisher(
            target.publish.clone(),
            rx,
            acked.clone(),
            errors.clone(),
            target.publish_format,
        )));
    }
    for seq in first_seq..first_seq + per_topic {
        for topic in 0..topics {
            let mut body = format!("{topic} {seq} 0 ").into_bytes();
            body.resize(payload.max(body.len()), b'x');
            let mut request = Vec::new();
            wire::publish_request(
                &target.publish,
                target.publish_format,
                &topic_name(topic),
                &body,
                &mut request,
            );
            senders[topic % publishers].send((topic, request)).await?;
        }
    }
    drop(senders);
    for t in tasks {
        t.await??;
    }
    let errors = errors.load(Ordering::Relaxed);
    if errors > 0 {
        anyhow::bail!("{errors} publishes were refused");
    }
    Ok(acked.iter().map(|a| a.load(Ordering::Relaxed)).sum())
}

pub async fn resume_storm(
    target: Target,
    n: usize,
    topics: usize,
    missed: u64,
    payload: usize,
    timeout: Duration,
) -> anyhow::Result<ResumeRun> {
    let topics = topics.max(1);
    let gate = Arc::new(Semaphore::new(target.connect_concurrency.max(1)));
    // 1. Everyone connects and reads event 1 of its topic.
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let mut first = Vec::new();
    let deadline = Instant::now() + timeout;
    for i in 0..n {
        let (target, gate, ready_tx) = (target.clone(), gate.clone(), ready_tx.clone());
        first.push(tokio::spawn(async move {
            let mut tally = Tally {
                topic: (i % topics) as u64,
                ..Default::default()
            };
            let permit = gate.acquire_owned().await?;
            // Ready (registered) once the stream's first bytes arrived.
            let r = read_until(
                &target,
                i,
                &mut tally,
                1,
                None,
                Some(ready_tx),
                permit,
                deadline,
            )
            .await;
            r.map(|()| tally)
        }));
    }
    drop(ready_tx);
    let mut connected = 0;
    while connected < n && ready_rx.recv().await.is_some() {
        connected += 1;
    }
    publish_round(&target, topics, 1, 1, payload).await?;
    let mut tallies = Vec::with_capacity(n);
    for t in first {
        tallies.push(t.await??);
    }
    // 2. All are away (their sockets closed with their tasks): the missed events.
    let expected =
        publish_round(&target, topics, 2, missed, payload).await? / topics as u64 * n as u64;
    // 3. Everyone comes back at once.
    let cpu = procfs::cpu_secs_of(&target.server_pids);
    let began = Instant::now();
    let deadline = began + timeout;
    let mut back = Vec::new();
    for (i, mut tally) in tallies.into_iter().enumerate() {
        let (target, gate) = (target.clone(), gate.clone());
        back.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.expect("gate open");
            let id = String::from_utf8_lossy(&tally.last_id).into_owned();
            tally.received = 0;
            let r = read_until(
                &target,
                i,
                &mut tally,
                1 + missed,
                Some(id),
                None,
                permit,
                deadline,
            )
            .await;
            (r.is_ok(), tally, began.elapsed())
        }));
    }
    let (mut received, mut duplicated, mut complete, mut failed) = (0, 0, 0, 0);
    let mut slowest = Duration::ZERO;
    for t in back {
        let (ok, tally, at) = t.await?;
        received += tally.received;
        duplicated += tally.duplicated;
        if ok && tally.received == missed && tally.duplicated == 0 && tally.out_of_order == 0 {
            complete += 1;
            slowest = slowest.max(at);
        } else {
            failed += 1;
        }
    }
    Ok(ResumeRun {
        subscribers: n,
        topics,
        missed_per_topic: missed,
        resume_secs: slowest.as_secs_f64(),
        expected,
        received,
        lost: expected.saturating_sub(received),
        duplicated,
        complete,
        failed,
        server_cpu_secs: cpu
            .zip(procfs::cpu_secs_of(&target.server_pids))
            .map(|(before, after)| after - before),
    })
}
