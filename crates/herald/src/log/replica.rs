//! A node's copy of a clustered log: the in-memory index of `memory.rs`,
//! filled only by the engine's tail.
//!
//! An engine (Redis Streams, NATS JetStream) holds the one ordered log and
//! assigns ids; every node reads all of it back in order and applies it
//! here, through the same retention as a single node. Reads, replays and
//! coverage are then answered from memory, and fan-out hears of every
//! event — this node's or another's — from one place, [`Replica::deliver`],
//! in id order. A publisher is answered once its events are durable in the
//! engine *and* applied here, so a stream this node opens right after the
//! answer can replay them.

// Without both engine clients, some of what they share goes unused.
#![cfg_attr(not(all(feature = "redis", feature = "nats")), allow(dead_code))]

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::watch;

use super::memory::{lock, Inner, MemoryLogSettings};
use super::{now_ms, CommitSink, Coverage, Entry, ReadRequest};
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
        Entry::Event(e) => !e.target.users.is_empty() && !e.target.broadcast,
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
                Entry::Event(event) => inner.restore(event),
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
                    inner.restore(event.clone());
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

    pub(super) fn read(&self, request: &ReadRequest<'_>) -> super::Page {
        lock(&self.inner).read(request, now_ms())
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
