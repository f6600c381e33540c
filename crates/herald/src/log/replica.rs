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
//! held whole; older events keep their index entry only, and a read gets
//! them back from the engine by id ([`Replica::read`]).

// Without both engine clients, some of what they share goes unused.
#![cfg_attr(not(all(feature = "redis", feature = "nats")), allow(dead_code))]

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::watch;

use super::journal::Place;
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
    /// everything at or below `floor` already gone from the engine.
    pub(super) fn new(settings: MemoryLogSettings, first_id: u64, floor: u64) -> Replica {
        let mut inner = Inner::new(settings, first_id.max(1));
        inner.set_floor(floor);
        inner.cool_unplaced();
        let head = inner.head();
        Replica {
            inner: Arc::new(Mutex::new(inner)),
            sink: OnceLock::new(),
            head: watch::channel(head).0,
            recovered: Mutex::new(Vec::new()),
        }
    }

    /// Loads entries read at start (no one listens yet), in id order.
    pub(super) fn load(&self, entries: Vec<Entry>) {
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
                Entry::Event(event) => inner.restore(event, Some(Place::BY_ID)),
                Entry::Held(event) => inner.restore(event, None),
                Entry::Control { id, .. } => inner.advance(id.0),
                Entry::Unreadable { id, reason } => {
                    unreadable(id, &reason);
                    inner.advance(id.0);
                }
            }
        }
        inner.sweep(now_ms());
        self.head.send_replace(inner.head());
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
        let mut inner = lock(&self.inner);
        let head = inner.head();
        let mut fresh = entries.into_iter().filter(|e| e.id().0 > head).peekable();
        if fresh.peek().is_none() {
            return;
        }
        inner.sweep(now_ms());
        let sink = self.sink.get();
        let mut run: Vec<SharedEvent> = Vec::new();
        for entry in fresh {
            match entry {
                Entry::Event(event) => {
                    inner.restore(event.clone(), Some(Place::BY_ID));
                    run.push(event);
                }
                Entry::Held(event) => {
                    inner.restore(event.clone(), None);
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
        let wanted = gathered.cold_by_id();
        if wanted.is_empty() {
            return Ok(gathered.into_page(&[], |_| true));
        }
        let loaded = fetch(wanted.clone()).await?;
        let missing: Vec<u64> = wanted
            .iter()
            .map(|&(id, _)| id)
            .filter(|id| loaded.binary_search_by_key(id, |e| e.id.0).is_err())
            .collect();
        if !missing.is_empty() {
            tracing::warn!(
                missing = missing.len(),
                first = missing[0],
                "retained events are gone from the cluster engine; they leave history here too"
            );
            lock(&self.inner).lost(&missing);
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
        let replica = Replica::new(settings, 1, 0);
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

    fn retained_cost_of(event: &Event) -> u64 {
        crate::log::memory::retained_cost(event)
    }
}
