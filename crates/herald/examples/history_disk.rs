//! History beyond RAM, measured: fills a journal with N events of 100
//! bytes, then prints what each retained event costs in memory, how long a
//! restart takes to rebuild the index, and how fast a replay reads history
//! back, once with the whole history in memory and once with
//! `history.hot_bytes` small (the rest read back from disk).
//!
//! ```sh
//! cargo run --release -p herald --example history_disk -- 10000000 /tmp/herald-history
//! ```
//!
//! Memory is the process's RSS (`/proc/self/statm`) before and after, over
//! the events retained; it includes what the allocator keeps around freed
//! blocks. Times are wall-clock on this machine; the replay reads pages of
//! `stream.replay_batch` (500) events, as a stream's replay does
//! (`HISTORY_DISK_NO_REPLAY=1` leaves the replays out, for profiling).

use std::path::{Path, PathBuf};
use std::time::Instant;

use herald::log::{read_all, DurableLog, Fsync, MemoryLogSettings, ReadFrom, ReadRequest};
use herald::{EventDraft, EventId, EventLog, Pattern, Selector, Topic};

const TOPICS: usize = 10;
const DATA: usize = 100;
const PAGE: usize = 500;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn settings(hot_bytes: u64) -> MemoryLogSettings {
    MemoryLogSettings {
        max_events_per_topic: usize::MAX,
        max_age: None,
        idempotency_window: std::time::Duration::from_secs(60),
        max_idempotency_keys: 1000,
        max_bytes: u64::MAX,
        max_topics: 100_000,
        hot_bytes,
    }
}

fn selector(pattern: &str) -> Selector {
    Selector {
        connection_id: "bench".into(),
        patterns: vec![Pattern::parse(pattern).unwrap()],
        event_types: None,
        user: None,
        meta: Default::default(),
    }
}

/// Reads every event `pattern` matches, in pages; returns (events, seconds).
async fn replay(log: &DurableLog, pattern: &str, until: EventId) -> (usize, f64) {
    let sel = selector(pattern);
    let started = Instant::now();
    let mut after = EventId(0);
    let mut n = 0;
    loop {
        let page = read_all(
            log,
            ReadRequest {
                from: ReadFrom::After(after),
                until,
                limit: PAGE,
                selector: &sel,
            },
        )
        .await
        .unwrap();
        n += page.len();
        match page.last() {
            Some(last) if page.len() == PAGE => after = last.id,
            _ => break,
        }
    }
    (n, started.elapsed().as_secs_f64())
}

async fn fill(dir: &Path, events: usize, hot_bytes: u64) -> EventId {
    let (log, _) = DurableLog::open(dir, settings(hot_bytes), Fsync::Never).unwrap();
    let data = "x".repeat(DATA);
    let topics: Vec<Topic> = (0..TOPICS)
        .map(|t| Topic::new(&format!("bench/{t}")).unwrap())
        .collect();
    let mut last = EventId(0);
    for start in (0..events).step_by(1000) {
        let batch = (start..(start + 1000).min(events))
            .map(|i| EventDraft {
                topics: vec![topics[i % TOPICS].clone()],
                data: data.clone(),
                ..Default::default()
            })
            .collect();
        last = log.append(batch).await.unwrap().last().unwrap().id;
    }
    last
}

async fn measure(dir: &Path, events: usize, hot_bytes: u64, label: &str) {
    let before = rss_bytes();
    let started = Instant::now();
    let (log, report) = DurableLog::open(dir, settings(hot_bytes), Fsync::Never).unwrap();
    let recovery = started.elapsed().as_secs_f64();
    let after = rss_bytes();
    let retention = log.retention();
    assert_eq!(report.retained, events);
    let per_event = after.saturating_sub(before) as f64 / events as f64;
    println!(
        "{label}: {events} events, {} cold; recovery {recovery:.2} s ({:.0}k events/s); RSS {:.0} MiB, {per_event:.0} B per retained event",
        retention.cold_events,
        events as f64 / recovery / 1e3,
        after.saturating_sub(before) as f64 / (1 << 20) as f64,
    );
    let head = EventId(report.next_id - 1);
    let mut rates = Vec::new();
    if std::env::var_os("HISTORY_DISK_NO_REPLAY").is_none() {
        for pattern in ["bench/3", "bench/*"] {
            let (n, secs) = replay(&log, pattern, head).await;
            println!(
                "{label}: replay {pattern}: {n} events in {secs:.2} s, {:.0}k events/s",
                n as f64 / secs / 1e3
            );
            rates.push(format!("\"{pattern}\": {:.0}", n as f64 / secs));
        }
    }
    // One JSON line last, for bench/compare.
    println!(
        "{{\"history\": {{\"events\": {events}, \"hot_bytes\": {hot_bytes}, \"cold\": {}, \"recovery_secs\": {recovery:.3}, \"bytes_per_event\": {per_event:.1}, \"replay_events_per_sec\": {{{}}}}}}}",
        retention.cold_events,
        rates.join(", ")
    );
}

/// `history_disk [events] [dir]` runs both measurements, each step in a
/// process of its own (so that what filling the journal allocated is not
/// in the RSS measured after a restart); `fill` and `measure` are the steps.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = |arg: Option<&String>| {
        arg.map_or_else(
            || std::env::temp_dir().join("herald-history-disk"),
            PathBuf::from,
        )
    };
    match args.first().map(String::as_str) {
        Some("fill") => {
            let events = args[1].parse().unwrap();
            runtime.block_on(fill(&dir(args.get(2)), events, 1 << 20));
        }
        Some("measure") => {
            let events = args[1].parse().unwrap();
            let hot_bytes: u64 = args[3].parse().unwrap();
            let label = match hot_bytes {
                u64::MAX => "in memory".to_owned(),
                n => format!("on disk (hot_bytes {} MiB)", n >> 20),
            };
            runtime.block_on(measure(&dir(args.get(2)), events, hot_bytes, &label));
        }
        _ => {
            let events: usize = args.first().map_or(1_000_000, |n| n.parse().unwrap());
            let dir = dir(args.get(1));
            let me = std::env::current_exe().unwrap();
            let step = |args: &[&str]| {
                let status = std::process::Command::new(&me).args(args).status().unwrap();
                assert!(status.success(), "{args:?}");
            };
            let _ = std::fs::remove_dir_all(&dir);
            let (n, d) = (events.to_string(), dir.display().to_string());
            step(&["fill", &n, &d]);
            // The fill's writes on disk first: a restart, not a race with
            // the kernel's writeback.
            let _ = std::process::Command::new("sync").status();
            step(&["measure", &n, &d, &(1u64 << 20).to_string()]);
            if events <= 2_000_000 {
                step(&["measure", &n, &d, &u64::MAX.to_string()]);
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
