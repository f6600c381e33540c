//! Write throughput with a durable sync per batch (group commit), and
//! recovery time, for the candidate stores of Herald's event log, on this
//! machine's disk, in one run. Results go in docs/DECISIONS.md.
//!
//! cargo run --release -p store-compare -- [DIR]

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redb::{ReadableDatabase, ReadableTable};

const EVENT_BYTES: usize = 200;

trait Store {
    fn name(&self) -> &'static str;
    /// Stores `events` (id, payload) and makes them durable before returning.
    fn append_durable(&mut self, events: &[(u64, Vec<u8>)]);
    /// Reopens the store from disk and counts what it holds.
    fn recover(path: &Path) -> usize
    where
        Self: Sized;
}

/// An append-only file: [len][crc32][payload], fdatasync per batch.
struct Journal(File);

impl Store for Journal {
    fn name(&self) -> &'static str {
        "journal (own segment file)"
    }
    fn append_durable(&mut self, events: &[(u64, Vec<u8>)]) {
        let mut buf = Vec::with_capacity(events.len() * (EVENT_BYTES + 16));
        for (id, payload) in events {
            let mut record = id.to_be_bytes().to_vec();
            record.extend_from_slice(payload);
            buf.extend_from_slice(&(record.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(&record).to_le_bytes());
            buf.extend_from_slice(&record);
        }
        self.0.write_all(&buf).unwrap();
        self.0.sync_data().unwrap();
    }
    fn recover(path: &Path) -> usize {
        let mut bytes = Vec::new();
        File::open(path.join("journal"))
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        let (mut at, mut n) = (0, 0);
        while at + 8 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
            let record = &bytes[at + 8..at + 8 + len];
            assert_eq!(crc32fast::hash(record), crc);
            at += 8 + len;
            n += 1;
        }
        n
    }
}

struct Redb(redb::Database);
const TABLE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("events");

impl Store for Redb {
    fn name(&self) -> &'static str {
        "redb 4 (B-tree, Durability::Immediate)"
    }
    fn append_durable(&mut self, events: &[(u64, Vec<u8>)]) {
        let tx = self.0.begin_write().unwrap();
        {
            let mut table = tx.open_table(TABLE).unwrap();
            for (id, payload) in events {
                table.insert(*id, payload.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    fn recover(path: &Path) -> usize {
        let db = redb::Database::create(path.join("redb")).unwrap();
        let tx = db.begin_read().unwrap();
        let table = tx.open_table(TABLE).unwrap();
        table.iter().unwrap().count()
    }
}

struct Fjall(fjall::Database, fjall::Keyspace);

impl Store for Fjall {
    fn name(&self) -> &'static str {
        "fjall 3 (LSM, persist SyncAll)"
    }
    fn append_durable(&mut self, events: &[(u64, Vec<u8>)]) {
        for (id, payload) in events {
            self.1.insert(id.to_be_bytes(), payload.as_slice()).unwrap();
        }
        self.0.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    fn recover(path: &Path) -> usize {
        let db = fjall::Database::builder(path.join("fjall")).open().unwrap();
        let ks = db
            .keyspace("events", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        ks.iter().count()
    }
}

fn run<S: Store>(mut store: S, dir: &Path, total: usize, batch: usize) -> (f64, Duration) {
    let payload = vec![b'x'; EVENT_BYTES];
    let started = Instant::now();
    let mut id = 0u64;
    while (id as usize) < total {
        let events: Vec<(u64, Vec<u8>)> = (0..batch)
            .map(|_| {
                id += 1;
                (id, payload.clone())
            })
            .collect();
        store.append_durable(&events);
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    drop(store);
    let started = Instant::now();
    let found = S::recover(dir);
    let recovery = started.elapsed();
    assert_eq!(found, total, "recovered everything");
    (rate, recovery)
}

fn fresh(base: &Path, name: &str) -> PathBuf {
    let dir = base.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn main() {
    let base = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "target/store-compare".into()),
    );
    println!("| batch (events per fsync) | events | store | events/s | recovery |");
    println!("|---|---|---|---|---|");
    for batch in [1usize, 10, 100] {
        let total = (2000 * batch).min(100_000);
        let row = |name: &str, (rate, rec): (f64, Duration)| {
            println!(
                "| {batch} | {total} | {name} | {rate:.0} | {:.1} ms |",
                rec.as_secs_f64() * 1000.0
            )
        };
        let dir = fresh(&base, "journal");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("journal"))
            .unwrap();
        let s = Journal(file);
        let name = s.name();
        row(name, run(s, &dir, total, batch));
        let dir = fresh(&base, "redb");
        let s = Redb(redb::Database::create(dir.join("redb")).unwrap());
        let name = s.name();
        row(name, run(s, &dir, total, batch));
        let dir = fresh(&base, "fjall");
        let db = fjall::Database::builder(dir.join("fjall")).open().unwrap();
        let ks = db
            .keyspace("events", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        let s = Fjall(db, ks);
        let name = s.name();
        row(name, run(s, &dir, total, batch));
    }
}
