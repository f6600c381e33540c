//! A node's copy of a clustered log: the in-memory index of `memory.rs`,
//! filled only by the engine's tail.
//!
//! An engine (Redis Streams, NATS JetStream) holds the one ordered log and
//! assigns ids; every node reads all of it back in order and applies it
//! here, through the same retention as a single node. Coverage is then
//! answered from memory, and fan-out hears of every event — this node's or
//! another's — from one place, [`Replica::deliver`], in id order. A
//! publisher is answered once its events are durable in the engine *and*
//! applied here, so a stream this node opens right after the answer can
//! replay them.
//!
//! As with the journal, only the newest `history.hot_bytes` of history are
//! held whole; older events keep their index entry only. With a data
//! directory, a node copies every event it applies into a journal of its
//! own there ([`Journal::open_copy`]: never synced, emptied at start), and
//! a read gets cold events back from that copy, as a single node reads its
//! journal; without one, or where the copy failed, from the engine by id
//! ([`Replica::read`]). The copy spares the engine, which every node
//! shares, the replays of each, and a sparse read one round trip per
//! event.

// Without both engine clients, some of what they share goes unused.
#![cfg_attr(not(all(feature = "redis", feature = "nats")), allow(dead_code))]

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::watch;

use super::journal::{Journal, Place, Segments};
use super::memory::{lock, Inner, MemoryLogSettings};
use super::{now_ms, CommitSink, Coverage, Entry, LogError, ReadRequest};
use crate::values::event::{EventId, SharedEvent};
use crate::values::selector::Selector;

pub(crate) struct Replica {
    inner: Arc<Mutex<Inner>>,
    sink: OnceLock<Arc<dyn CommitSink>>,
    /// The highest id applied: appends and resumes wait on it.
    head: watch::Sender<u64>,
    /// What [`Replica::load`] read that bears on inboxes, handed to the
    /// sink at attach.
    recovered: Mutex<Vec<Entry>>,
    /// This node's copy of the log, if it keeps one.
    copy: Option<LogCopy>,
}

/// A node's copy of the log on its own disk: written by whoever applies
/// entries (the tail, one task), read by any read.
struct LogCopy {
    journal: Mutex<Journal>,
    files: Arc<Segments>,
    /// The last write failed (said once, not at every write).
    failing: std::sync::atomic::AtomicBool,
    /// Held while the process lives: one node per directory.
    _lock: std::fs::File,
}

impl LogCopy {
    /// Opens a copy in `data_dir`: the first of `replica`, `replica-2`, …
    /// that no other process holds (several nodes may share a data
    /// directory), emptied.
    fn open(data_dir: &Path) -> std::io::Result<LogCopy> {
        for n in 1..=64 {
            let dir = match n {
                1 => data_dir.join("replica"),
                n => data_dir.join(format!("replica-{n}")),
            };
            std::fs::create_dir_all(&dir)?;
            let lock = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join("LOCK"))?;
            if lock.try_lock().is_err() {
                continue;
            }
            // At start: emptying the directory and opening may wait for
            // the disk.
            let journal = crate::blocking::at_start(|| Journal::open_copy(&dir.join("log")))
                .map_err(std::io::Error::other)?;
            return Ok(LogCopy {
                files: journal.files(),
                journal: Mutex::new(journal),
                failing: Default::default(),
                _lock: lock,
            });
        }
        Err(std::io::Error::other(
            "64 other processes hold its replica directories",
        ))
    }

    /// Writes the events among `entries` (those above `head`), in order;
    /// returns their places, or none when the write failed (they are then
    /// read back from the engine).
    fn write(&self, entries: &[Entry], head: u64) -> Option<Vec<Place>> {
        let events: Vec<&SharedEvent> = entries
            .iter()
            .filter(|e| e.id().0 > head)
            .filter_map(|entry| match entry {
                Entry::Event(event) | Entry::Held(event) => Some(event),
                Entry::Control { .. } | Entry::Unreadable { .. } => None,
            })
            .collect();
        let mut journal = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        let written = journal.append(&events, false);
        let failed = written.is_err();
        let was = self
            .failing
            .swap(failed, std::sync::atomic::Ordering::Relaxed);
        match written {
            Ok(places) => {
                if was {
                    tracing::info!("this node copies the log to its disk again");
                }
                Some(places)
            }
            Err(err) => {
                if !was {
                    tracing::warn!(%err, "could not copy the log to this node's disk; the events it misses are read from the engine");
                }
                None
            }
        }
    }

    /// Deletes the copy's files whose every event has left history.
    fn retire_below(&self, oldest: u64) {
        let mut journal = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(err) = journal.retire_below(oldest) {
            tracing::warn!(%err, "could not delete old files of this node's copy of the log");
        }
    }
}

/// A held event (one the engine does not give back by id) is read back
/// from the copy, if it is there; otherwise it stays whole.
fn held_place(place: Option<Place>) -> Option<Place> {
    place.filter(|&p| p != Place::BY_ID)
}

fn unreadable(id: EventId, reason: &str) {
    super::skipped_unreadable();
    tracing::error!(
        id = id.0,
        reason,
        "a record in the engine is unreadable; skipped"
    );
}

/// Whether an entry read at start matters to inboxes.
fn bears_on_inboxes(entry: &Entry) -> bool {
    match entry {
        Entry::Event(e) | Entry::Held(e) => !e.target.users.is_empty() && !e.target.broadcast,
        Entry::Control { .. } => true,
        Entry::Unreadable { .. } => false,
    }
}

impl Replica {
    /// An empty replica of a log whose ids start at `first_id`, with
    /// everything at or below `floor` already gone from the engine; it
    /// keeps a copy of the log in `data_dir`, if given and usable, unless
    /// all of history fits the hot window.
    pub(super) fn new(
        settings: MemoryLogSettings,
        first_id: u64,
        floor: u64,
        data_dir: Option<&Path>,
    ) -> Replica {
        let mut inner = Inner::new(settings, first_id.max(1));
        inner.set_floor(floor);
        inner.cool_unplaced();
        let head = inner.head();
        // With a hot window as large as history may grow, nothing ever
        // turns cold: a copy would never be read.
        let data_dir = data_dir.filter(|_| settings.hot_bytes < settings.max_bytes);
        let copy = data_dir.and_then(|dir| match LogCopy::open(dir) {
            Ok(copy) => Some(copy),
            Err(err) => {
                tracing::warn!(dir = %dir.display(), %err, "cannot keep a copy of the log in the data directory; cold events are read from the engine");
                None
            }
        });
        Replica {
            inner: Arc::new(Mutex::new(inner)),
            sink: OnceLock::new(),
            head: watch::channel(head).0,
            recovered: Mutex::new(Vec::new()),
            copy,
        }
    }

    /// Where each event among `entries` above `head` went in the copy, in
    /// order: [`Place::BY_ID`] for all when there is no copy or it failed.
    fn place(&self, entries: &[Entry], head: u64) -> impl Iterator<Item = Place> {
        let places = self.copy.as_ref().and_then(|c| c.write(entries, head));
        places
            .into_iter()
            .flatten()
            .chain(std::iter::repeat(Place::BY_ID))
    }

    /// After entries were applied: the copy lets go of what history did.
    fn retire(&self, oldest: Option<u64>) {
        if let (Some(copy), Some(oldest)) = (&self.copy, oldest) {
            copy.retire_below(oldest);
        }
    }

    /// Loads entries read at start (no one listens yet), in id order.
    pub(super) fn load(&self, entries: Vec<Entry>) {
        let mut places = self.place(&entries, self.head());
        let mut inner = lock(&self.inner);
        let mut recovered = self.recovered.lock().unwrap_or_else(|e| e.into_inner());
        for entry in entries {
            if entry.id().0 <= inner.head() {
                continue;
            }
            if bears_on_inboxes(&entry) {
                recovered.push(entry.clone());
            }
            match entry {
                Entry::Event(event) => inner.restore(event, places.next()),
                Entry::Held(event) => inner.restore(event, held_place(places.next())),
                Entry::Control { id, .. } => inner.advance(id.0),
                Entry::Unreadable { id, reason } => {
                    unreadable(id, &reason);
                    inner.advance(id.0);
                }
            }
        }
        inner.sweep(now_ms());
        self.head.send_replace(inner.head());
        let oldest = inner.oldest_id();
        drop((inner, recovered));
        self.retire(oldest);
    }

    /// Connects fan-out, handing it what start read for inboxes; returns
    /// the head it starts after.
    pub(super) fn attach(&self, sink: Arc<dyn CommitSink>) -> EventId {
        let recovered =
            std::mem::take(&mut *self.recovered.lock().unwrap_or_else(|e| e.into_inner()));
        sink.recovered(&recovered);
        if self.sink.set(sink).is_err() {
            panic!("a clustered log was attached twice");
        }
        super::memory::spawn_sweeper(Arc::downgrade(&self.inner));
        EventId(self.head())
    }

    pub(super) fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// Applies entries the tail read, in id order, and hands the new ones
    /// to fan-out: runs of events together, control records in their
    /// place. Entries at or below the head (read again after a reconnect)
    /// are skipped, so each reaches fan-out exactly once.
    pub(super) fn deliver(&self, entries: Vec<Entry>) {
        // Only the tail delivers: the head does not move meanwhile.
        let head = self.head();
        if entries.iter().all(|e| e.id().0 <= head) {
            return;
        }
        let mut places = self.place(&entries, head);
        let mut inner = lock(&self.inner);
        let fresh = entries.into_iter().filter(|e| e.id().0 > head);
        inner.sweep(now_ms());
        let sink = self.sink.get();
        let mut run: Vec<SharedEvent> = Vec::new();
        for entry in fresh {
            match entry {
                Entry::Event(event) => {
                    inner.restore(event.clone(), places.next());
                    run.push(event);
                }
                Entry::Held(event) => {
                    inner.restore(event.clone(), held_place(places.next()));
                    run.push(event);
                }
                Entry::Control { id, record } => {
                    if let Some(sink) = sink {
                        if !run.is_empty() {
                            sink.committed(&std::mem::take(&mut run));
                        }
                        sink.control(&record);
                    }
                    run.clear();
                    inner.advance(id.0);
                }
                Entry::Unreadable { id, reason } => {
                    unreadable(id, &reason);
                    inner.advance(id.0);
                }
            }
        }
        if let (Some(sink), false) = (sink, run.is_empty()) {
            sink.committed(&run);
        }
        self.head.send_replace(inner.head());
        let oldest = inner.oldest_id();
        drop(inner);
        self.retire(oldest);
    }

    /// Events up to `floor` left the engine before this node read them (it
    /// was away longer than the engine keeps them): resuming across them
    /// is no longer possible.
    pub(super) fn lost_through(&self, floor: u64) {
        lock(&self.inner).set_floor(floor);
    }

    /// Waits until every event up to `id` is applied, at most `timeout`.
    /// True when it is.
    pub(super) async fn wait_for(&self, id: u64, timeout: Duration) -> bool {
        let mut head = self.head.subscribe();
        let reached = tokio::time::timeout(timeout, head.wait_for(|&h| h >= id)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// Reads a page: what is held whole from memory, the cold rest from
    /// this node's copy of the log, and what the copy does not hold from
    /// the engine through `fetch`, which gets their ids and publish times
    /// (ascending) and returns the events it found, ascending. One the
    /// engine no longer holds (trimmed to `cluster.max_log_events` or by
    /// age before this node let it go) leaves history here too, as an
    /// eviction: a resume from before it is then told it lost events.
    pub(super) async fn read<F, Fut>(
        &self,
        request: &ReadRequest<'_>,
        fetch: F,
    ) -> Result<super::Page, LogError>
    where
        F: FnOnce(Vec<(u64, u64)>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<SharedEvent>, LogError>>,
    {
        let now = now_ms();
        let gathered = lock(&self.inner).gather(request, now);
        let mut wanted = gathered.cold_by_id();
        if wanted.is_empty() {
            return Ok(gathered.into_page(&[], |_| true));
        }
        let mut loaded = Vec::new();
        if let Some(copy) = &self.copy {
            let local: Vec<(u64, Place)> = gathered
                .cold()
                .into_iter()
                .filter(|&(_, place)| place != Place::BY_ID)
                .collect();
            if !local.is_empty() {
                let files = copy.files.clone();
                let read = tokio::task::spawn_blocking(move || files.read(&local))
                    .await
                    .map_err(|e| LogError::Failed(format!("reading the log's copy failed: {e}")))?;
                loaded = read.into_iter().map(Arc::new).collect();
                // The engine is asked for the rest only.
                wanted.retain(|&(id, _)| loaded.binary_search_by_key(&id, |e| e.id.0).is_err());
            }
        }
        if !wanted.is_empty() {
            let fetched = fetch(wanted.clone()).await?;
            let missing: Vec<u64> = wanted
                .iter()
                .map(|&(id, _)| id)
                .filter(|id| fetched.binary_search_by_key(id, |e| e.id.0).is_err())
                .collect();
            if !missing.is_empty() {
                tracing::warn!(
                    missing = missing.len(),
                    first = missing[0],
                    "retained events are gone from the cluster engine; they leave history here too"
                );
                lock(&self.inner).lost(&missing);
            }
            loaded.extend(fetched);
            loaded.sort_unstable_by_key(|e| e.id.0);
        }
        Ok(gathered.into_page(&loaded, |e| !e.is_expired(now) && request.selector.wants(e)))
    }

    pub(super) fn retention(&self) -> super::memory::Retention {
        lock(&self.inner).retention()
    }

    pub(super) fn coverage(&self, after: EventId, selector: &Selector) -> Coverage {
        lock(&self.inner).coverage(after, selector)
    }

    pub(super) fn len(&self) -> usize {
        lock(&self.inner).len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::log::ReadFrom;
    use crate::values::event::{Event, EventDraft};
    use crate::values::pattern::Pattern;
    use crate::values::topic::Topic;

    fn event(id: u64, topic: &str) -> SharedEvent {
        let draft = EventDraft {
            topics: vec![Topic::new(topic).unwrap()],
            data: format!("{topic} {id}"),
            ..Default::default()
        };
        Arc::new(Event::commit(draft, EventId(id), 1_000 + id))
    }

    fn selector(pattern: &str) -> Selector {
        Selector {
            connection_id: "c".into(),
            patterns: vec![Pattern::parse(pattern).unwrap()],
            event_types: None,
            user: None,
            meta: Default::default(),
        }
    }

    /// What the engine holds, and the ids each read asked it for.
    struct Engine {
        held: Mutex<BTreeMap<u64, SharedEvent>>,
        asked: Mutex<Vec<u64>>,
    }

    impl Engine {
        async fn fetch(&self, wanted: Vec<(u64, u64)>) -> Result<Vec<SharedEvent>, LogError> {
            let held = self.held.lock().unwrap();
            self.asked
                .lock()
                .unwrap()
                .extend(wanted.iter().map(|(id, _)| id));
            Ok(wanted
                .iter()
                .filter_map(|(id, ms)| {
                    let e = held.get(id)?;
                    assert_eq!(e.published_at_ms, *ms, "the index kept the log's time");
                    Some(e.clone())
                })
                .collect())
        }
    }

    async fn read_after(replica: &Replica, engine: &Engine, after: u64, topic: &str) -> Vec<u64> {
        let selector = selector(topic);
        let request = ReadRequest {
            from: ReadFrom::After(EventId(after)),
            until: EventId(u64::MAX),
            limit: 1000,
            selector: &selector,
        };
        let page = replica
            .read(&request, |w| engine.fetch(w))
            .await
            .expect("read");
        page.events.iter().map(|e| e.id.0).collect()
    }

    #[tokio::test]
    async fn past_the_hot_window_events_come_back_from_the_engine_by_id() {
        let mut settings = MemoryLogSettings::unbounded(1000);
        settings.hot_bytes = 4 * retained_cost_of(&event(1, "a"));
        let replica = Replica::new(settings, 1, 0, None);
        let engine = Engine {
            held: Mutex::new(BTreeMap::new()),
            asked: Mutex::new(Vec::new()),
        };
        let mut entries = Vec::new();
        for id in 1..=40 {
            let e = event(id, if id % 2 == 0 { "a" } else { "b" });
            engine.held.lock().unwrap().insert(id, e.clone());
            // Every tenth is one the engine will not give back by id.
            entries.push(match id % 10 {
                0 => Entry::Held(e),
                _ => Entry::Event(e),
            });
        }
        replica.load(entries[..20].to_vec());
        replica.deliver(entries[20..].to_vec());
        let retention = replica.retention();
        assert_eq!(retention.events, 40);
        assert!(retention.cold_events >= 30, "{retention:?}");

        let evens: Vec<u64> = (2..=40).step_by(2).collect();
        assert_eq!(read_after(&replica, &engine, 0, "a").await, evens);
        let asked = std::mem::take(&mut *engine.asked.lock().unwrap());
        assert!(!asked.is_empty(), "cold events are read from the engine");
        assert!(
            asked.iter().all(|id| id % 10 != 0),
            "held events never are: {asked:?}"
        );
        assert!(asked.windows(2).all(|w| w[0] < w[1]), "ascending");
        assert_eq!(
            read_after(&replica, &engine, 30, "*").await,
            (31..=40).collect::<Vec<_>>()
        );

        // The engine trimmed 1..=6 before this node let them go: a read
        // skips them, and from then on they count as evicted.
        engine.held.lock().unwrap().retain(|&id, _| id > 6);
        let b = selector("b");
        assert_eq!(replica.coverage(EventId(0), &b), Coverage::Covered);
        assert_eq!(
            read_after(&replica, &engine, 0, "b").await,
            (7..=39).step_by(2).collect::<Vec<_>>()
        );
        assert_eq!(replica.coverage(EventId(0), &b), Coverage::Expired);
        assert_eq!(replica.coverage(EventId(5), &b), Coverage::Covered);
        assert_eq!(replica.retention().events, 37);
        assert_eq!(read_after(&replica, &engine, 0, "a").await, evens[3..]);
    }

    /// With a data directory, cold events come back from the node's own
    /// copy of the log, held ones (which the engine does not give back by
    /// id) included: the engine is not asked, and holds nothing here. A
    /// second node on the same data directory copies into a directory of
    /// its own, and what was copied before a restart is not read again.
    #[tokio::test]
    async fn with_a_copy_cold_events_are_read_from_this_disk() {
        let dir = std::env::temp_dir().join(format!("herald-replica-copy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut settings = MemoryLogSettings::unbounded(1000);
        settings.hot_bytes = 4 * retained_cost_of(&event(1, "a"));
        let replica = Replica::new(settings, 1, 0, Some(&dir));
        let other = Replica::new(settings, 1, 0, Some(&dir));
        assert!(replica.copy.is_some() && other.copy.is_some());
        assert!(dir.join("replica/log").is_dir() && dir.join("replica-2/log").is_dir());
        let engine = Engine {
            held: Mutex::new(BTreeMap::new()),
            asked: Mutex::new(Vec::new()),
        };
        let entries: Vec<Entry> = (1..=40)
            .map(|id| {
                let e = event(id, if id % 2 == 0 { "a" } else { "b" });
                match id % 10 {
                    0 => Entry::Held(e),
                    _ => Entry::Event(e),
                }
            })
            .collect();
        replica.load(entries[..20].to_vec());
        replica.deliver(entries[20..30].to_vec());
        // Partly read again after a reconnect: what was applied is not
        // copied twice, nor does it shift the places of what follows.
        replica.deliver(entries[25..].to_vec());
        assert!(replica.retention().cold_events >= 36, "held ones too");
        let evens: Vec<u64> = (2..=40).step_by(2).collect();
        assert_eq!(read_after(&replica, &engine, 0, "a").await, evens);
        assert_eq!(
            read_after(&replica, &engine, 0, "*").await,
            (1..=40).collect::<Vec<_>>()
        );
        assert!(engine.asked.lock().unwrap().is_empty());
        assert_eq!(replica.retention().events, 40, "nothing counted lost");

        // The next process on this directory starts its copy empty.
        drop(replica);
        let again = Replica::new(settings, 1, 0, Some(&dir));
        let files = std::fs::read_dir(dir.join("replica/log")).unwrap();
        let copied: u64 = files.map(|f| f.unwrap().metadata().unwrap().len()).sum();
        assert_eq!(copied, 0);
        drop((again, other));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn retained_cost_of(event: &Event) -> u64 {
        crate::log::memory::retained_cost(event)
    }
}
