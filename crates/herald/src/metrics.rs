//! Prometheus metrics (`GET /metrics`), through `prometheus-client`.
//!
//! What the hub already counts for itself (fan-out totals, open streams,
//! queue depth) is read at scrape time; what only metrics need is a relaxed
//! atomic add where it happens. Histograms are fixed buckets of atomics, so
//! recording a write's latency takes no lock on the hot path. A registry
//! per hub, no global recorder: an application that embeds Herald keeps its
//! own metrics setup.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::access::limits::ConnectionLimiter;
use crate::delivery::fanout::Fanout;

/// Counters only metrics need, updated where things happen.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub published: AtomicU64,
    pub publish_duplicates: AtomicU64,
    pub replays: AtomicU64,
    pub resets_unknown: AtomicU64,
    pub resets_expired: AtomicU64,
    /// Retained state values and their bytes, as of the last change.
    pub state_values: AtomicU64,
    pub state_bytes: AtomicU64,
    pub log_errors: AtomicU64,
    /// Presence joins and leaves of this node's streams written to the log
    /// (clustered: changes of the node's membership, announced or not).
    pub presence_updates: AtomicU64,
    /// Temporary refusals of streams, by reason.
    pub stream_refusals: Mutex<BTreeMap<&'static str, u64>>,
    /// Refused HTTP requests, by status.
    pub http_refusals: Mutex<BTreeMap<u16, u64>>,
    /// Seconds from commit to the write that carries an event.
    pub write_latency: AtomicHistogram,
    /// Events taken from a queue in one wake-up of its writer.
    pub queue_depth: AtomicHistogram,
    /// Writes the courier made into idle streams' sockets (their tasks
    /// not woken); counted in the two histograms too.
    pub courier_writes: AtomicU64,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        Metrics {
            write_latency: AtomicHistogram::new(&[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0,
            ]),
            queue_depth: AtomicHistogram::new(&[
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
            ]),
            ..Default::default()
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn stream_refused(&self, reason: &'static str) {
        *self.stream_refusals.lock().entry(reason).or_default() += 1;
    }

    pub(crate) fn http_refused(&self, status: u16) {
        *self.http_refusals.lock().entry(status).or_default() += 1;
    }
}

/// A histogram with fixed upper bounds; every observation is three relaxed
/// atomic adds.
#[derive(Debug, Default)]
pub(crate) struct AtomicHistogram {
    bounds: Vec<f64>,
    /// One per bound, plus the `+Inf` bucket.
    counts: Vec<AtomicU64>,
    /// Sum of observations in millionths.
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl AtomicHistogram {
    pub(crate) fn new(bounds: &[f64]) -> AtomicHistogram {
        AtomicHistogram {
            bounds: bounds.to_vec(),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, value: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((value * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn encode(
        &self,
        name: &str,
        help: &str,
        encoder: &mut DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain([f64::MAX]) // the encoder writes f64::MAX as `+Inf`
            .zip(self.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let count = self.count.load(Ordering::Relaxed);
        encoder
            .encode_descriptor(name, help, None, MetricType::Histogram)?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// Reads the hub's state at scrape time.
struct HubCollector {
    fanout: Arc<Fanout>,
    limiter: ConnectionLimiter,
    metrics: Arc<Metrics>,
    log: Arc<dyn crate::log::EventLog>,
}

impl std::fmt::Debug for HubCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HubCollector")
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(encoder.encode_descriptor(
        name,
        help,
        None,
        MetricType::Counter,
    )?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl Collector for HubCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let f = self.fanout.stats();
        let m = &self.metrics;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        if let Some(engine) = self.log.cluster().map(|c| c.engine()) {
            gauge(
                &mut encoder,
                "herald_cluster_engine_up",
                "1 while this node reads the cluster engine, 0 while it reconnects",
                engine.connected as i64,
            )?;
            counter(
                &mut encoder,
                "herald_cluster_reconnects",
                "Attempts to reconnect to the cluster engine",
                engine.reconnects,
            )?;
        }
        {
            let mut family = encoder.encode_descriptor(
                "herald_connections",
                "Open event streams, by transport",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(f.connections as i64)
                .encode(family.encode_family(&[("transport", "sse")])?)?;
        }
        gauge(
            &mut encoder,
            "herald_state_values",
            "Retained state values (what state.max_keys bounds), as of the last change",
            load(&m.state_values) as i64,
        )?;
        gauge(
            &mut encoder,
            "herald_state_bytes",
            "Bytes of retained state values (what state.max_bytes bounds), as of the last change",
            load(&m.state_bytes) as i64,
        )?;
        counter(
            &mut encoder,
            "herald_unreadable_records",
            "Stored records skipped because they could not be decoded (journal, inbox, cluster engine); each is logged",
            crate::log::unreadable_records(),
        )?;
        let r = self.log.retention();
        gauge(
            &mut encoder,
            "herald_history_events",
            "Events retained in history on this node",
            r.events as i64,
        )?;
        gauge(
            &mut encoder,
            "herald_history_bytes",
            "Estimated memory of the retained events (what history.max_bytes bounds)",
            r.bytes as i64,
        )?;
        gauge(
            &mut encoder,
            "herald_history_hot_bytes",
            "Of herald_history_bytes, the events held whole in memory (what history.hot_bytes bounds)",
            r.hot_bytes as i64,
        )?;
        gauge(
            &mut encoder,
            "herald_history_cold_events",
            "Retained events held on disk only, read back from the journal when asked for",
            r.cold_events as i64,
        )?;
        gauge(
            &mut encoder,
            "herald_history_topics",
            "Topics with retained events (what history.max_topics bounds)",
            r.topics as i64,
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "herald_history_evicted",
                "Events that left history early because a global cap was reached",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(r.evicted_for_bytes)
                .encode(family.encode_family(&[("cap", "max_bytes")])?)?;
            ConstCounter::new(r.evicted_for_topics)
                .encode(family.encode_family(&[("cap", "max_topics")])?)?;
        }
        gauge(
            &mut encoder,
            "herald_subscriptions",
            "Subscription patterns of open streams",
            f.subscriptions as i64,
        )?;
        gauge(
            &mut encoder,
            "herald_client_addresses",
            "Client addresses with an open stream",
            self.limiter.addresses() as i64,
        )?;
        gauge(
            &mut encoder,
            "herald_queued_events",
            "Events waiting in connection queues",
            f.queued_now as i64,
        )?;
        counter(
            &mut encoder,
            "herald_events_published",
            "Events committed to the log by publishers",
            load(&m.published),
        )?;
        counter(
            &mut encoder,
            "herald_presence_updates",
            "Presence joins and leaves of this node's streams written to the log",
            load(&m.presence_updates),
        )?;
        counter(
            &mut encoder,
            "herald_publish_duplicates",
            "Publishes answered from an idempotency key",
            load(&m.publish_duplicates),
        )?;
        counter(
            &mut encoder,
            "herald_events_dispatched",
            "Committed events handed to fan-out",
            f.events_dispatched,
        )?;
        counter(
            &mut encoder,
            "herald_deliveries",
            "Events queued for a connection",
            f.deliveries_queued,
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "herald_deliveries_dropped",
                "Events a connection did not get, by reason",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(f.deliveries_dropped)
                .encode(family.encode_family(&[("reason", "queue_full")])?)?;
        }
        counter(
            &mut encoder,
            "herald_overflow_disconnects",
            "Streams closed because their queue overflowed",
            f.overflow_disconnects,
        )?;
        counter(
            &mut encoder,
            "herald_replays",
            "Streams that started with a backlog from history",
            load(&m.replays),
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "herald_resets",
                "herald.reset events sent, by reason",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(load(&m.resets_unknown))
                .encode(family.encode_family(&[("reason", "unknown_id")])?)?;
            ConstCounter::new(load(&m.resets_expired))
                .encode(family.encode_family(&[("reason", "history_expired")])?)?;
        }
        {
            let refusals = m.stream_refusals.lock().clone();
            let mut family = encoder.encode_descriptor(
                "herald_stream_refusals",
                "Streams refused for now (herald.refused), by reason",
                None,
                MetricType::Counter,
            )?;
            for (reason, n) in refusals {
                ConstCounter::new(n).encode(family.encode_family(&[("reason", reason)])?)?;
            }
        }
        {
            let refusals = m.http_refusals.lock().clone();
            let mut family = encoder.encode_descriptor(
                "herald_http_refusals",
                "Requests answered with an error, by status",
                None,
                MetricType::Counter,
            )?;
            for (status, n) in refusals {
                let status = status.to_string();
                ConstCounter::new(n)
                    .encode(family.encode_family(&[("status", status.as_str())])?)?;
            }
        }
        if let Some(inboxes) = self.fanout.inboxes() {
            let t = inboxes.totals();
            gauge(
                &mut encoder,
                "herald_inbox_waiting",
                "Events waiting for users: pending acknowledgements and offline messages",
                t.waiting as i64,
            )?;
            counter(
                &mut encoder,
                "herald_inbox_dropped",
                "Events dropped from a full user inbox",
                t.dropped,
            )?;
            counter(
                &mut encoder,
                "herald_inbox_expired",
                "Events that waited for a user until their ttl or the age limit",
                t.expired,
            )?;
            counter(
                &mut encoder,
                "herald_acks",
                "Events acknowledged by their users",
                t.acked,
            )?;
            counter(
                &mut encoder,
                "herald_inbox_write_errors",
                "Failed writes of the inbox file",
                t.write_errors,
            )?;
        }
        counter(
            &mut encoder,
            "herald_courier_writes",
            "Writes into idle streams' sockets made by the courier, without waking the streams' tasks",
            load(&m.courier_writes),
        )?;
        counter(
            &mut encoder,
            "herald_log_errors",
            "Failed reads or writes of the event log",
            load(&m.log_errors),
        )?;
        m.write_latency.encode(
            "herald_publish_to_write_seconds",
            "Time from commit to the write carrying the event (oldest event of each write)",
            &mut encoder,
        )?;
        m.queue_depth.encode(
            "herald_queue_drain_events",
            "Events a writer took from its queue per wake-up",
            &mut encoder,
        )?;
        Ok(())
    }
}

/// The registry `GET /metrics` encodes.
pub(crate) fn registry(
    fanout: Arc<Fanout>,
    limiter: ConnectionLimiter,
    metrics: Arc<Metrics>,
    log: Arc<dyn crate::log::EventLog>,
) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(HubCollector {
        fanout,
        limiter,
        metrics,
        log,
    }));
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_sum() {
        let h = AtomicHistogram::new(&[1.0, 10.0]);
        for v in [0.5, 1.0, 5.0, 50.0] {
            h.observe(v);
        }
        let counts: Vec<u64> = h.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        assert_eq!(counts, [2, 1, 1]);
        assert_eq!(h.count.load(Ordering::Relaxed), 4);
        assert_eq!(h.sum_micros.load(Ordering::Relaxed), 56_500_000);
    }
}

/// What metrics cost on the stream's hot path: every write a stream makes
/// records its queue depth and the commit-to-write latency of its oldest
/// event (two histogram observations and a clock read). This times exactly
/// that, on one thread and on two threads sharing the histograms (the
/// contended case of a two-core server), in nanoseconds per write
/// (docs/BENCHMARKS.md, "Metrics on the hot path"):
///
/// ```sh
/// cargo test --release -p herald --lib metrics_overhead -- --ignored --nocapture
/// ```
#[cfg(test)]
mod overhead {
    use std::hint::black_box;
    use std::sync::Arc;
    use std::time::Instant;

    use super::Metrics;

    const WRITES: u64 = 20_000_000;

    fn record(metrics: &Metrics, committed_at: Instant, depth: usize) {
        metrics.queue_depth.observe(depth as f64);
        metrics
            .write_latency
            .observe(committed_at.elapsed().as_secs_f64());
    }

    fn run(threads: u64) -> f64 {
        let metrics = Arc::new(Metrics::new());
        let per_thread = WRITES / threads;
        let start = Instant::now();
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let metrics = metrics.clone();
                std::thread::spawn(move || {
                    let committed_at = Instant::now();
                    for i in 0..per_thread {
                        record(
                            &metrics,
                            black_box(committed_at),
                            black_box((i + t) as usize & 7),
                        );
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        // Wall time per write per thread: what one writer pays.
        start.elapsed().as_nanos() as f64 / per_thread as f64
    }

    #[test]
    #[ignore = "a benchmark, not a check: run it with --release -- --ignored --nocapture"]
    fn metrics_overhead() {
        let baseline = {
            let start = Instant::now();
            for i in 0..WRITES {
                black_box(i);
            }
            start.elapsed().as_nanos() as f64 / WRITES as f64
        };
        let one = run(1);
        let two = run(2);
        println!("loop alone:              {baseline:6.1} ns per write");
        println!("metrics, one thread:     {one:6.1} ns per write");
        println!("metrics, two threads:    {two:6.1} ns per write (histograms shared)");
        println!(
            "{{\"loop_ns\":{baseline:.1},\"one_thread_ns\":{one:.1},\"two_threads_ns\":{two:.1}}}"
        );
    }
}
