//! What metrics cost on the stream's hot path: every write a stream makes
//! records its queue depth and the commit-to-write latency of its oldest
//! event (two histogram observations and a clock read). This times exactly
//! that, on one thread and on two threads sharing the histograms (the
//! contended case of a two-core server), in nanoseconds per write.
//!
//! ```sh
//! cargo run --release -p herald --example metrics_overhead
//! ```
//!
//! Compare with the server CPU time per delivery from herald-bench `fanout`
//! (docs/BENCHMARKS.md): a write carries one or more deliveries, so the
//! ratio of the two bounds the share metrics take.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use herald::metrics::Metrics;

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

fn main() {
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
