//! Where an idle stream's memory goes: opens N subscriber streams on an
//! in-process hub (the same `Server` as `herald serve`) and prints the heap
//! each one holds, by allocation size, beside the RSS it adds.
//!
//! ```sh
//! ulimit -n 65536
//! cargo run --release -p herald --example stream_memory -- 10000
//! ```
//!
//! The heap is counted by a global allocator that wraps the system's and
//! keeps live bytes and live allocations per power-of-two size class. The
//! clients are plain blocking sockets that send their request and never
//! read, so they add no heap of their own: what is counted is the hub's.
//! RSS also holds what the allocator keeps around its blocks (headers,
//! rounding, free space not given back), which the counts do not.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use herald::{Config, Hub, Server};

/// Size classes: 0 holds sizes up to 16 bytes, class k up to 16 << k.
const CLASSES: usize = 16;

struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static LIVE: [AtomicI64; CLASSES] = [const { AtomicI64::new(0) }; CLASSES];
static LIVE_CLASS_BYTES: [AtomicI64; CLASSES] = [const { AtomicI64::new(0) }; CLASSES];
/// Live allocations by exact size, up to `EXACT` bytes (larger ones in the last).
const EXACT: usize = 4096;
static LIVE_BY_SIZE: [AtomicI64; EXACT + 1] = [const { AtomicI64::new(0) }; EXACT + 1];

fn class(size: usize) -> usize {
    let mut c = 0;
    while c + 1 < CLASSES && size > 16 << c {
        c += 1;
    }
    c
}

fn count(size: usize, sign: i64) {
    LIVE_BYTES.fetch_add(sign * size as i64, Ordering::Relaxed);
    let c = class(size);
    LIVE[c].fetch_add(sign, Ordering::Relaxed);
    LIVE_CLASS_BYTES[c].fetch_add(sign * size as i64, Ordering::Relaxed);
    LIVE_BY_SIZE[size.min(EXACT)].fetch_add(sign, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counters are only atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size(), 1);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        count(layout.size(), -1);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(layout.size(), -1);
            count(new_size, 1);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

struct Snapshot {
    bytes: i64,
    live: [i64; CLASSES],
    class_bytes: [i64; CLASSES],
    rss_kib: i64,
    by_size: Vec<i64>,
}

fn snapshot() -> Snapshot {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Snapshot {
        bytes: LIVE_BYTES.load(Ordering::Relaxed),
        live: std::array::from_fn(|c| LIVE[c].load(Ordering::Relaxed)),
        class_bytes: std::array::from_fn(|c| LIVE_CLASS_BYTES[c].load(Ordering::Relaxed)),
        rss_kib,
        by_size: LIVE_BY_SIZE
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect(),
    }
}

/// Opens `n` streams that send their request and never read.
fn open(addr: std::net::SocketAddr, n: usize, first: usize) -> Vec<std::net::TcpStream> {
    (first..first + n)
        .map(|i| {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            let request = format!(
                "GET /v1/events?topic=t{} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n",
                i % 100
            );
            s.write_all(request.as_bytes()).expect("send");
            s
        })
        .collect()
}

async fn wait_for(hub: &Hub, connections: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while hub.stats().fanout.connections < connections {
        assert!(Instant::now() < deadline, "streams did not open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the streams write their opening and go idle.
    tokio::time::sleep(Duration::from_secs(2)).await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10_000);
    let mut config = Config {
        memory: true,
        listen: "127.0.0.1:0".parse()?,
        ..Config::default()
    };
    config.limits.max_connections_per_ip = 0;
    let hub = Hub::new(config)?;
    let server = Server::bind(hub.clone()).await?;
    let addr = server.local_addr()?;
    tokio::spawn(server.run(std::future::pending()));

    // A first few streams warm up what is made once (topic entries, the
    // runtime's buffers), so the measured ones pay only their own way.
    const WARM: usize = 200;
    let warm = tokio::task::spawn_blocking(move || open(addr, WARM, 0)).await?;
    wait_for(&hub, WARM).await;
    let before = snapshot();
    let streams = tokio::task::spawn_blocking(move || open(addr, n, WARM)).await?;
    wait_for(&hub, WARM + n).await;
    let after = snapshot();

    let per = |a: i64, b: i64| (b - a) as f64 / n as f64;
    println!("{n} idle streams");
    println!(
        "heap held per stream: {:.0} bytes in {:.1} allocations",
        per(before.bytes, after.bytes),
        per(before.live.iter().sum(), after.live.iter().sum())
    );
    println!(
        "RSS per stream:       {:.0} bytes",
        per(before.rss_kib, after.rss_kib) * 1024.0
    );
    println!("by size class (live allocations and bytes per stream):");
    for c in 0..CLASSES {
        let count = per(before.live[c], after.live[c]);
        let bytes = per(before.class_bytes[c], after.class_bytes[c]);
        if count.abs() >= 0.01 {
            let low = if c == 0 { 1 } else { (16 << (c - 1)) + 1 };
            println!(
                "  {low:>6}..{:<6} B  {count:6.2} allocations  {bytes:8.1} bytes",
                16 << c
            );
        }
    }
    println!("by exact size (sizes held by at least one stream in ten):");
    for size in 0..=EXACT {
        let count = per(before.by_size[size], after.by_size[size]);
        if count.abs() >= 0.1 {
            let at_least = if size == EXACT { "+" } else { "" };
            println!("  {size:>6}{at_least:<1} B  {count:6.2} allocations");
        }
    }
    println!(
        "{{\"streams\":{n},\"heap_bytes_per_stream\":{:.1},\"allocations_per_stream\":{:.2},\"rss_bytes_per_stream\":{:.1}}}",
        per(before.bytes, after.bytes),
        per(before.live.iter().sum(), after.live.iter().sum()),
        per(before.rss_kib, after.rss_kib) * 1024.0
    );
    drop((warm, streams));
    Ok(())
}
