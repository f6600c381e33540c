//! The in-memory log: history kept in this process only.
//!
//! One `std::sync::Mutex` guards everything. Every critical section is short
//! and synchronous (no await while held), and holding it while handing
//! events to the sink is what keeps fan-out in id order.
//!
//! Ids start at the start time in microseconds, so a restarted hub never
//! reissues an id a client still holds: the client's old id falls below this
//! run's first id and gets `herald.reset` instead of a silently wrong resume.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;

use super::journal::{Place, Recovering, Segments};
use super::{now_ms, Appended, CommitSink, Coverage, EventLog, LogError, Page, ReadRequest};
use crate::blocking::{Lock, Ordered};
use crate::values::event::{Event, EventDraft, EventId, SharedEvent};
use crate::values::selector::Selector;
use crate::values::topic::Topic;

mod cold;
mod read;

use cold::{ColdEntry, ColdIndex, ColdTopics, TakenCold};

/// Retention settings of the in-memory log.
#[derive(Debug, Clone, Copy)]
pub struct MemoryLogSettings {
    /// Most events retained per topic; the oldest go first.
    pub max_events_per_topic: usize,
    /// `None`: no age limit.
    pub max_age: Option<Duration>,
    /// How long an idempotency key is remembered.
    pub idempotency_window: Duration,
    /// Most idempotency keys remembered at once; the oldest go first.
    pub max_idempotency_keys: usize,
    /// Most bytes all retained events may take (its text, frame and topics plus a fixed part per event);
    /// the oldest events leave history first.
    pub max_bytes: u64,
    /// Most topics with retained events; the oldest events leave history
    /// first until a topic has none left.
    pub max_topics: usize,
    /// Most bytes (the measure of `max_bytes`) of the newest events held
    /// whole in memory when a journal holds them all: older ones keep only
    /// their place on disk and are read back when asked for. Without a
    /// journal every retained event is held whole.
    pub hot_bytes: u64,
}

#[cfg(any(test, feature = "fuzzing"))]
impl MemoryLogSettings {
    /// No cap but the count per topic, no age limit, everything held whole
    /// (tests and fuzzing).
    pub(crate) fn unbounded(max_events_per_topic: usize) -> MemoryLogSettings {
        MemoryLogSettings {
            max_events_per_topic,
            max_age: None,
            idempotency_window: Duration::from_secs(60),
            max_idempotency_keys: 1000,
            max_bytes: u64::MAX,
            max_topics: usize::MAX,
            hot_bytes: u64::MAX,
        }
    }
}

/// What the log retains now, and what its global caps pushed out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Events retained.
    pub events: u64,
    /// By `retained_cost` (see `max_bytes`).
    pub bytes: u64,
    /// Topics with retained events.
    pub topics: u64,
    /// Events that left history early because of `max_bytes`.
    pub evicted_for_bytes: u64,
    /// Events that left history early because of `max_topics`.
    pub evicted_for_topics: u64,
    /// Of `events`, those held on disk only (older than the hot window).
    pub cold_events: u64,
    /// Of `bytes`, what the events held whole take (see `hot_bytes`).
    pub hot_bytes: u64,
}

/// What one retained event costs in memory, roughly: its text twice (the
/// fields and the encoded frame), its topics' names and a fixed part for
/// the event, its index entries and its place in each history. This is the
/// measure `history.max_bytes` bounds.
pub(crate) fn retained_cost(event: &Event) -> u64 {
    Cost {
        data: event.data.len(),
        frame: event.frame.len(),
        topics: event.topics.iter().map(|t| t.as_str()),
        event_type: event.event_type.as_deref(),
        coalesce_key: event.coalesce_key.as_deref(),
        idempotency_key: event.idempotency_key.as_deref(),
        users: event.target.users.iter().map(String::as_str),
    }
    .bytes()
}

/// The parts of an event [`retained_cost`] counts.
struct Cost<'a, T, U> {
    data: usize,
    frame: usize,
    topics: T,
    event_type: Option<&'a str>,
    coalesce_key: Option<&'a str>,
    idempotency_key: Option<&'a str>,
    users: U,
}

impl<'a, T: Iterator<Item = &'a str>, U: Iterator<Item = &'a str>> Cost<'a, T, U> {
    fn bytes(self) -> u64 {
        const FIXED: usize = 256;
        let len = |s: Option<&str>| s.map_or(0, str::len);
        (FIXED
            + self.data
            + self.frame
            + self.topics.map(|t| t.len() + 16).sum::<usize>()
            + len(self.event_type)
            + len(self.coalesce_key)
            + len(self.idempotency_key)
            + self.users.map(|u| u.len() + 24).sum::<usize>()) as u64
    }
}

/// The in-memory log: history by topic, bounded by its settings, lost on
/// restart. Also the index every other store keeps in front of its disk or
/// engine.
pub struct MemoryLog {
    inner: Arc<Mutex<Inner>>,
    sink: OnceLock<Arc<dyn CommitSink>>,
}

struct Stored {
    event: SharedEvent,
    /// Topic histories still holding this event.
    refs: usize,
    /// Where the journal holds it (`None` without a journal).
    place: Option<Place>,
}

/// What a new event pushed out of its histories.
#[derive(Default)]
struct Evicted {
    /// Over a history's count: (the history, the id).
    evict: Vec<(Option<Topic>, u64)>,
    /// Announcements over their count.
    ended: Vec<u64>,
}

/// An event taken out of the index: what its histories need to let it go.
enum Taken {
    Hot(SharedEvent),
    Cold(TakenCold),
}

impl Taken {
    fn direct(&self) -> bool {
        match self {
            Taken::Hot(event) => in_direct_history(event),
            Taken::Cold(cold) => cold.direct,
        }
    }

    fn topics(&self) -> &[Topic] {
        match self {
            Taken::Hot(event) => &event.topics,
            Taken::Cold(cold) => cold.topics.as_slice(),
        }
    }
}

/// The ids one topic (or the topic-less stream of direct events) retains.
#[derive(Default)]
struct History {
    /// Ascending. May hold ids that expired by ttl; they are skipped.
    ids: VecDeque<u64>,
    /// `herald.presence` announcements, ascending, kept apart and counted
    /// on their own: a subscriber that joins and leaves over and over does
    /// not push the topic's events out of history. One that leaves this
    /// list by count has ended its life, like a `ttl` (no reset for it).
    presence: VecDeque<u64>,
    /// Highest id evicted from this history (0: none).
    evicted_through: u64,
}

pub(crate) struct Inner {
    settings: MemoryLogSettings,
    first_id: u64,
    next_id: u64,
    last_ms: u64,
    /// The retained events held whole (the newest), by id.
    events: BTreeMap<u64, Stored>,
    /// The older retained events, on disk only (see `cold.rs`).
    cold: ColdIndex,
    /// Sum of [`retained_cost`] over `events`.
    hot_bytes: u64,
    /// Events without a place turn cold too, keeping their text (a cluster
    /// replica's [`crate::log::Entry::Held`]); otherwise such an event
    /// stops cooling (no journal: everything stays whole).
    cool_unplaced: bool,
    topics: HashMap<Topic, History>,
    /// The keys of `topics`, in order: a wildcard read walks only the
    /// topics that share its pattern's literal prefix.
    names: BTreeSet<Topic>,
    /// Events with no topic (broadcasts and direct messages).
    direct: History,
    /// Highest id evicted from any history.
    max_evicted: u64,
    /// Highest `evicted_through` of a topic history dropped for being empty.
    pruned_floor: u64,
    expiring: BinaryHeap<Reverse<(u64, u64)>>,
    idempotency: HashMap<Box<str>, (EventId, u64)>,
    idempotency_order: VecDeque<(Box<str>, u64)>,
    /// Sum of [`retained_cost`] over every retained event.
    bytes: u64,
    evicted_for_bytes: u64,
    evicted_for_topics: u64,
}

impl MemoryLog {
    /// An empty log whose first id follows the clock (ids of a restarted
    /// hub stay above those of the last run).
    pub fn new(settings: MemoryLogSettings) -> MemoryLog {
        let first_id = now_ms().saturating_mul(1000).max(1);
        MemoryLog {
            inner: Arc::new(Mutex::new(Inner::new(settings, first_id))),
            sink: OnceLock::new(),
        }
    }

    fn lock(&self) -> HistoryGuard<'_> {
        lock(&self.inner)
    }

    /// Number of events held (for tests and stats).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no event is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The index itself, for tests of the logs built on it.
    #[cfg(test)]
    pub(crate) fn inner_for_tests(&self) -> Arc<Mutex<Inner>> {
        self.inner.clone()
    }

    /// Drops expired and too-old events now (also done on every append and
    /// once a second in the background).
    pub fn sweep(&self) {
        self.lock().sweep(now_ms());
    }
}

/// A held history index, first in the hub's lock order (`blocking.rs`).
pub(crate) type HistoryGuard<'a> = Ordered<std::sync::MutexGuard<'a, Inner>>;

/// Locks an index. A panic while it was held leaves consistent-enough data
/// (every step is a whole insert or remove): keep serving.
pub(crate) fn lock(inner: &Mutex<Inner>) -> HistoryGuard<'_> {
    Ordered::take(Lock::History, || {
        inner.lock().unwrap_or_else(|e| e.into_inner())
    })
}

/// Quiet logs still age out: sweeps the index once a second while it lives
/// (when there is a runtime to run on).
pub(crate) fn spawn_sweeper(inner: Weak<Mutex<Inner>>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = inner.upgrade() else { break };
            lock(&inner).sweep(now_ms());
        }
    });
}

/// Broadcasts and topic-less events live in the topic-less history: every
/// connection may receive them, whatever it subscribed to.
fn in_direct_history(event: &Event) -> bool {
    event.target.broadcast || event.topics.is_empty()
}

impl Inner {
    pub(crate) fn new(settings: MemoryLogSettings, first_id: u64) -> Inner {
        Inner {
            settings,
            first_id,
            next_id: first_id,
            last_ms: 0,
            events: BTreeMap::new(),
            cold: ColdIndex::default(),
            hot_bytes: 0,
            cool_unplaced: false,
            topics: HashMap::new(),
            names: BTreeSet::new(),
            direct: History::default(),
            max_evicted: 0,
            pruned_floor: 0,
            expiring: BinaryHeap::new(),
            idempotency: HashMap::new(),
            idempotency_order: VecDeque::new(),
            bytes: 0,
            evicted_for_bytes: 0,
            evicted_for_topics: 0,
        }
    }

    pub(crate) fn head(&self) -> u64 {
        self.next_id - 1
    }

    /// Gives drafts their ids and times, answering repeated idempotency keys
    /// from memory. The new events are not readable until [`Inner::apply`]:
    /// a durable log writes them to disk in between.
    pub(crate) fn prepare(&mut self, drafts: Vec<EventDraft>) -> (Vec<Appended>, Vec<SharedEvent>) {
        let now = now_ms().max(self.last_ms);
        self.last_ms = now;
        self.sweep(now);
        let mut out = Vec::with_capacity(drafts.len());
        let mut events = Vec::with_capacity(drafts.len());
        for draft in drafts {
            if let Some(key) = draft.idempotency_key.as_deref() {
                if let Some(&(id, until)) = self.idempotency.get(key) {
                    if until > now {
                        out.push(Appended {
                            id,
                            duplicate: true,
                        });
                        continue;
                    }
                }
            }
            let id = EventId(self.next_id);
            self.next_id += 1;
            let event = Arc::new(Event::commit(draft, id, now));
            self.remember_key(&event);
            events.push(event);
            out.push(Appended {
                id,
                duplicate: false,
            });
        }
        (out, events)
    }

    /// Makes prepared (or recovered) events readable, applying retention.
    pub(crate) fn apply(&mut self, events: &[SharedEvent]) {
        for event in events {
            self.store(event.clone(), None);
        }
    }

    /// [`Inner::apply`] for events a journal holds, each at its place: the
    /// oldest may then be held by their place only.
    pub(crate) fn apply_placed(&mut self, events: &[SharedEvent], places: &[Place]) {
        debug_assert_eq!(events.len(), places.len());
        for (event, place) in events.iter().zip(places) {
            self.store(event.clone(), Some(*place));
        }
    }

    /// Undoes [`Inner::prepare`]'s idempotency keys for events that were
    /// never stored (their write failed); their ids stay unused.
    pub(crate) fn forget(&mut self, events: &[SharedEvent]) {
        for event in events {
            if let Some(key) = &event.idempotency_key {
                if self
                    .idempotency
                    .get(key)
                    .is_some_and(|(id, _)| *id == event.id)
                {
                    self.idempotency.remove(key);
                }
            }
        }
    }

    /// Loads an event a cluster replica read from its engine, in id order.
    /// With a `place` ([`Place::BY_ID`]) it may turn cold past the hot
    /// window, to be read back from the engine; without one it stays
    /// whole.
    #[cfg(any(feature = "redis", feature = "nats"))]
    pub(crate) fn restore(&mut self, event: SharedEvent, place: Option<Place>) {
        self.next_id = self.next_id.max(event.id.0 + 1);
        self.last_ms = self.last_ms.max(event.published_at_ms);
        self.remember_key(&event);
        self.store(event, place);
    }

    /// Cold events a read could not get back from where they were kept (a
    /// cluster engine trimmed them first): they leave history as if
    /// evicted, so a resume from before one of them is told it lost
    /// events instead of skipping it.
    #[cfg(any(feature = "redis", feature = "nats"))]
    pub(crate) fn lost(&mut self, ids: &[u64]) {
        for &id in ids {
            let Some(taken) = self.take(id) else {
                continue; // left meanwhile
            };
            let topics: Vec<Option<Topic>> = match taken.direct() {
                true => vec![None],
                false => taken.topics().iter().cloned().map(Some).collect(),
            };
            for topic in topics {
                let history = match &topic {
                    Some(t) => match self.topics.get_mut(t) {
                        Some(h) => h,
                        None => continue,
                    },
                    None => &mut self.direct,
                };
                for ids in [&mut history.ids, &mut history.presence] {
                    if let Ok(at) = ids.binary_search(&id) {
                        ids.remove(at);
                    }
                }
                history.evicted_through = history.evicted_through.max(id);
                self.max_evicted = self.max_evicted.max(id);
                if let Some(t) = &topic {
                    self.prune_if_empty(t);
                }
            }
        }
    }

    /// For a cluster replica: events read back by id turn cold past the
    /// hot window, and those without a place with them, kept whole.
    #[cfg(any(feature = "redis", feature = "nats"))]
    pub(crate) fn cool_unplaced(&mut self) {
        self.cool_unplaced = true;
    }

    /// Moves the head past an id that holds no event (a clustered log's
    /// control record).
    pub(crate) fn advance(&mut self, id: u64) {
        self.next_id = self.next_id.max(id + 1);
    }

    /// Everything at or below `floor` left history before this run (its
    /// files are gone): a Last-Event-ID below it cannot be covered.
    pub(crate) fn set_floor(&mut self, floor: u64) {
        self.pruned_floor = self.pruned_floor.max(floor);
        self.next_id = self.next_id.max(floor + 1);
    }

    /// The oldest event still held, if any.
    pub(crate) fn oldest_id(&self) -> Option<u64> {
        match self.cold.first() {
            Some(cold) => Some(cold.id),
            None => self.events.first_key_value().map(|(id, _)| *id),
        }
    }

    /// The oldest event's id and publish time.
    fn oldest(&self) -> Option<(u64, u64)> {
        match self.cold.first() {
            Some(cold) => Some((cold.id, cold.published_at_ms)),
            None => self
                .events
                .first_key_value()
                .map(|(&id, s)| (id, s.event.published_at_ms)),
        }
    }

    /// The latest publish time given out (or read back).
    pub(crate) fn last_ms(&self) -> u64 {
        self.last_ms
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id
    }

    pub(crate) fn len(&self) -> usize {
        self.events.len() + self.cold.len()
    }

    fn remember_key(&mut self, event: &Event) {
        if let Some(key) = &event.idempotency_key {
            self.remember(key, event.id, event.published_at_ms);
        }
    }

    fn remember(&mut self, key: &str, id: EventId, published_at_ms: u64) {
        let until = published_at_ms + self.settings.idempotency_window.as_millis() as u64;
        let key: Box<str> = key.into();
        self.idempotency.insert(key.clone(), (id, until));
        self.idempotency_order.push_back((key, until));
        while self.idempotency_order.len() > self.settings.max_idempotency_keys {
            let (old, _) = self.idempotency_order.pop_front().expect("non-empty");
            if self.idempotency.get(&old).is_some_and(|(i, _)| i.0 <= id.0) {
                self.idempotency.remove(&old);
            }
        }
    }

    /// Whether a history that `selector` reads still holds `event`. An event
    /// on several topics may have been evicted from one of them and not yet
    /// from another; to a reader of the first it is gone.
    fn holds(&self, event: &Event, selector: &Selector) -> bool {
        self.holds_in(
            event.id.0,
            in_direct_history(event),
            &event.topics,
            selector,
        )
    }

    /// [`Inner::holds`] for the event `id`, in the topic-less history when
    /// `direct`, else on `topics`.
    fn holds_in(&self, id: u64, direct: bool, topics: &[Topic], selector: &Selector) -> bool {
        direct
            || topics.iter().any(|t| {
                selector.patterns.iter().any(|p| p.matches(t))
                    && self.topics.get(t).is_some_and(|h| {
                        h.ids.binary_search(&id).is_ok() || h.presence.binary_search(&id).is_ok()
                    })
            })
    }

    /// Drops `id` (taken out) from the front of every history holding it.
    fn trim_all(&mut self, id: u64, taken: &Taken, evicted: bool) {
        if taken.direct() {
            self.trim_front(None, id, evicted);
        } else {
            for topic in taken.topics() {
                self.trim_front(Some(topic), id, evicted);
            }
        }
    }

    pub(crate) fn sweep(&mut self, now: u64) {
        while let Some(Reverse((at, id))) = self.expiring.peek().copied() {
            if at > now {
                break;
            }
            self.expiring.pop();
            if let Some(taken) = self.take(id) {
                // Expiry is not eviction: no watermark moves.
                self.trim_all(id, &taken, false);
            }
        }
        if let Some(max_age) = self.settings.max_age {
            let oldest_kept = now.saturating_sub(max_age.as_millis() as u64);
            while let Some((id, published_at_ms)) = self.oldest() {
                if published_at_ms >= oldest_kept {
                    break;
                }
                self.evict_oldest(id);
            }
        }
        while let Some((_, at)) = self.idempotency_order.front() {
            if *at > now {
                break;
            }
            let (key, _) = self.idempotency_order.pop_front().expect("present");
            self.idempotency.remove(&key);
        }
    }

    /// Pops from the front of a history: on an eviction (always the oldest)
    /// every id up to `id`, moving its watermark; on an expiry only ids whose
    /// events are gone. An event that expires in the middle of a history
    /// (its own `ttl`) stays listed until it reaches the front, and reads
    /// skip it: older events around it stay readable. Drops a topic history
    /// left empty.
    fn trim_front(&mut self, topic: Option<&Topic>, id: u64, evicted: bool) {
        let (events, cold) = (&self.events, &self.cold);
        let held = |f: u64| events.contains_key(&f) || cold.get(f).is_some();
        let history = match topic {
            Some(t) => match self.topics.get_mut(t) {
                Some(h) => h,
                None => return,
            },
            None => &mut self.direct,
        };
        for ids in [&mut history.ids, &mut history.presence] {
            while ids
                .front()
                .is_some_and(|&f| (evicted && f <= id) || !held(f))
            {
                ids.pop_front();
            }
        }
        if evicted {
            history.evicted_through = history.evicted_through.max(id);
            self.max_evicted = self.max_evicted.max(id);
        }
        if let Some(t) = topic {
            self.prune_if_empty(t);
        }
    }

    /// Drops a topic's history once it lists nothing; what it had evicted
    /// becomes the floor below which no resume is covered.
    fn prune_if_empty(&mut self, topic: &Topic) {
        let Some(history) = self.topics.get(topic) else {
            return;
        };
        if history.ids.is_empty() && history.presence.is_empty() {
            let through = history.evicted_through;
            self.topics.remove(topic);
            self.names.remove(topic);
            self.pruned_floor = self.pruned_floor.max(through);
        }
    }

    fn store(&mut self, event: SharedEvent, place: Option<Place>) {
        let id = event.id.0;
        let presence = event.event_type.as_deref() == Some(super::PRESENCE_EVENT);
        let direct = in_direct_history(&event);
        let (refs, evicted) = self.enter(id, direct, &event.topics, presence);
        if let Some(at) = event.expires_at_ms {
            self.expiring.push(Reverse((at, id)));
        }
        let cost = retained_cost(&event);
        self.bytes += cost;
        self.hot_bytes += cost;
        self.events.insert(id, Stored { event, refs, place });
        self.settle(evicted);
        self.cool();
    }

    /// Lists a new event `id` in its histories: the topic-less one when
    /// `direct`, else those of `topics` (announcements apart). Returns how
    /// many hold it, and what they pushed out for it.
    fn enter(
        &mut self,
        id: u64,
        direct: bool,
        topics: &[Topic],
        presence: bool,
    ) -> (usize, Evicted) {
        let max = self.settings.max_events_per_topic.max(1);
        let mut refs = 0;
        let mut out = Evicted::default();
        let topics: &[Topic] = if direct {
            refs = 1;
            self.direct.ids.push_back(id);
            while self.direct.ids.len() > max {
                out.evict
                    .push((None, self.direct.ids.pop_front().expect("non-empty")));
            }
            &[]
        } else {
            topics
        };
        for topic in topics {
            refs += 1;
            let history = self.topics.entry(topic.clone()).or_insert_with(|| {
                self.names.insert(topic.clone());
                History::default()
            });
            if presence {
                history.presence.push_back(id);
                while history.presence.len() > max {
                    out.ended
                        .push(history.presence.pop_front().expect("non-empty"));
                }
                continue;
            }
            history.ids.push_back(id);
            while history.ids.len() > max {
                out.evict.push((
                    Some(topic.clone()),
                    history.ids.pop_front().expect("non-empty"),
                ));
            }
        }
        (refs, out)
    }

    /// Lets go of what a new event pushed out, then applies the global caps.
    fn settle(&mut self, evicted: Evicted) {
        for (topic, old) in evicted.evict {
            self.release(topic.as_ref(), old);
        }
        for old in evicted.ended {
            // Announcements are on one topic each: nothing else holds it.
            self.take(old);
        }
        self.enforce_caps();
    }

    /// Loads a record read back at start, in id order, by its place only:
    /// the journal's head of it when it read alone, else the whole event.
    /// After the last, [`Inner::warm`] reads the newest back whole.
    pub(crate) fn restore_cold(&mut self, record: Recovering<&str>, place: Place) {
        let (id, ts) = match &record {
            Recovering::Head(head) => (head.id, head.ts),
            Recovering::Whole(event) => (event.id.0, event.published_at_ms),
        };
        debug_assert!(self.events.is_empty(), "cold ids lie below whole ones");
        self.next_id = self.next_id.max(id + 1);
        self.last_ms = self.last_ms.max(ts);
        let (direct, presence, expires_at, cost, topics) = match &record {
            Recovering::Head(head) => {
                if let Some(key) = head.idempotency_key {
                    self.remember(key, EventId(id), ts);
                }
                let cost = Cost {
                    data: head.data.len,
                    frame: crate::values::sse::encoded_len(
                        Some(EventId(id)),
                        head.event_type,
                        &head.data,
                    ),
                    topics: head.topics.iter(),
                    event_type: head.event_type,
                    coalesce_key: head.coalesce_key,
                    idempotency_key: head.idempotency_key,
                    users: head.users.iter().copied(),
                }
                .bytes();
                (
                    head.broadcast || head.topics.len() == 0,
                    head.event_type == Some(super::PRESENCE_EVENT),
                    head.ttl_secs
                        .map(|s| ts.saturating_add(s.saturating_mul(1000))),
                    cost,
                    self.intern(head.topics.iter(), head.topics.len()),
                )
            }
            Recovering::Whole(event) => {
                self.remember_key(event);
                (
                    in_direct_history(event),
                    event.event_type.as_deref() == Some(super::PRESENCE_EVENT),
                    event.expires_at_ms,
                    retained_cost(event),
                    self.intern(event.topics.iter().map(Topic::as_str), event.topics.len()),
                )
            }
        };
        let (refs, evicted) = self.enter(id, direct, topics.as_slice(), presence);
        if let Some(at) = expires_at {
            self.expiring.push(Reverse((at, id)));
        }
        self.bytes += cost;
        self.cold
            .push(ColdEntry::new(id, ts, place, cost, refs, direct, topics));
        self.settle(evicted);
    }

    /// Topic names as the histories' own names (new ones made), so that
    /// no topic's text is held twice.
    fn intern<'a>(&self, names: impl Iterator<Item = &'a str>, count: usize) -> ColdTopics {
        let mut topics = names.filter_map(|name| match self.topics.get_key_value(name) {
            Some((topic, _)) => Some(topic.clone()),
            None => Topic::new(name).ok(),
        });
        match count {
            0 => ColdTopics::None,
            1 => topics.next().map_or(ColdTopics::None, ColdTopics::One),
            _ => ColdTopics::new(topics.collect()),
        }
    }

    /// After [`Inner::restore_cold`]: reads the newest events back from
    /// `files` and holds them whole, as many as `hot_bytes` allows (the
    /// newest at least), as if they had been appended now.
    pub(crate) fn warm(&mut self, files: &Segments) {
        let mut wanted = Vec::new();
        let mut bytes = 0u64;
        for entry in self.cold.newest_first() {
            if !wanted.is_empty() && bytes + entry.cost as u64 > self.settings.hot_bytes {
                break;
            }
            bytes += entry.cost as u64;
            wanted.push((entry.id, entry.place));
        }
        wanted.reverse();
        let loaded = files.read(&wanted);
        // Newest first, while they were read: cold ids stay below whole ones.
        for event in loaded.into_iter().rev() {
            let Some(entry) = self.cold.pop_newest_if(event.id.0) else {
                break;
            };
            let cost = retained_cost(&event);
            debug_assert_eq!(cost.min(u32::MAX as u64), entry.cost as u64, "{}", event.id);
            self.hot_bytes += cost;
            self.events.insert(
                entry.id,
                Stored {
                    event: Arc::new(event),
                    refs: entry.refs as usize,
                    place: Some(entry.place),
                },
            );
        }
    }

    /// Past `hot_bytes`, the oldest events held whole keep only their
    /// place in the journal (the newest always stays whole).
    fn cool(&mut self) {
        while self.hot_bytes > self.settings.hot_bytes && self.events.len() > 1 {
            let Some(entry) = self.events.first_entry() else {
                break;
            };
            let place = entry.get().place;
            if place.is_none() && !self.cool_unplaced {
                break; // no journal: everything stays whole
            }
            let (id, stored) = entry.remove_entry();
            let event = stored.event;
            let cost = retained_cost(&event);
            self.hot_bytes -= cost;
            let topics = self.intern(event.topics.iter().map(Topic::as_str), event.topics.len());
            let cold = ColdEntry::new(
                id,
                event.published_at_ms,
                place.unwrap_or(Place::UNPLACED),
                cost,
                stored.refs,
                in_direct_history(&event),
                topics,
            );
            match place {
                Some(_) => self.cold.push(cold),
                None => self.cold.push_whole(cold, event),
            }
        }
    }

    /// Removes an event from the index (not from its histories).
    fn take(&mut self, id: u64) -> Option<Taken> {
        if let Some(stored) = self.events.remove(&id) {
            let cost = retained_cost(&stored.event);
            self.bytes -= cost;
            self.hot_bytes -= cost;
            return Some(Taken::Hot(stored.event));
        }
        let cold = self.cold.take(id)?;
        self.bytes -= cold.cost as u64;
        Some(Taken::Cold(cold))
    }

    /// Evicts `id`, the oldest event, from every history holding it.
    fn evict_oldest(&mut self, id: u64) {
        if let Some(taken) = self.take(id) {
            self.trim_all(id, &taken, true);
        }
    }

    /// Global caps: the oldest events leave history while all retained
    /// events take more than `max_bytes`, or while more than `max_topics`
    /// topics hold any. The newest event always stays.
    fn enforce_caps(&mut self) {
        while self.len() > 1 {
            let over_bytes = self.bytes > self.settings.max_bytes;
            if !over_bytes && self.topics.len() <= self.settings.max_topics {
                break;
            }
            let oldest = self.oldest_id().expect("non-empty");
            if over_bytes {
                self.evicted_for_bytes += 1;
            } else {
                self.evicted_for_topics += 1;
            }
            self.evict_oldest(oldest);
        }
    }

    pub(crate) fn retention(&self) -> Retention {
        Retention {
            events: self.len() as u64,
            bytes: self.bytes,
            topics: self.topics.len() as u64,
            evicted_for_bytes: self.evicted_for_bytes,
            evicted_for_topics: self.evicted_for_topics,
            cold_events: self.cold.len() as u64,
            hot_bytes: self.hot_bytes,
        }
    }

    /// One history let go of `id` because it was over its count.
    fn release(&mut self, topic: Option<&Topic>, id: u64) {
        let left = if let Some(stored) = self.events.get_mut(&id) {
            stored.refs -= 1;
            stored.refs
        } else if let Some(cold) = self.cold.get_mut(id) {
            // The last reference goes with the entry (`take`).
            let left = cold.refs - 1;
            if left > 0 {
                cold.refs = left;
            }
            usize::from(left)
        } else {
            return; // expired by ttl already: not an eviction
        };
        if left == 0 {
            self.take(id);
        }
        let history = match topic {
            Some(t) => self.topics.get_mut(t).expect("history of a stored event"),
            None => &mut self.direct,
        };
        history.evicted_through = history.evicted_through.max(id);
        self.max_evicted = self.max_evicted.max(id);
    }
}

#[async_trait]
impl EventLog for MemoryLog {
    fn attach(&self, sink: Arc<dyn CommitSink>) -> EventId {
        if self.sink.set(sink).is_err() {
            panic!("MemoryLog::attach called twice");
        }
        spawn_sweeper(Arc::downgrade(&self.inner));
        EventId(self.lock().head())
    }

    async fn append(&self, drafts: Vec<EventDraft>) -> Result<Vec<Appended>, LogError> {
        let sink = self
            .sink
            .get()
            .ok_or_else(|| LogError::Failed("log not attached to a hub".into()))?;
        let mut inner = self.lock();
        let (out, committed) = inner.prepare(drafts);
        inner.apply(&committed);
        if !committed.is_empty() {
            sink.committed(&committed);
        }
        Ok(out)
    }

    async fn read(&self, request: ReadRequest<'_>) -> Result<Page, LogError> {
        Ok(self.lock().read(&request, now_ms()))
    }

    async fn coverage(&self, after: EventId, selector: &Selector) -> Result<Coverage, LogError> {
        Ok(self.lock().coverage(after, selector))
    }

    fn retention(&self) -> Retention {
        self.lock().retention()
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::ReadFrom;
    use crate::values::pattern::Pattern;
    use crate::values::topic::Topic;

    struct Collect(Mutex<Vec<u64>>);
    impl CommitSink for Collect {
        fn committed(&self, events: &[SharedEvent]) {
            self.0.lock().unwrap().extend(events.iter().map(|e| e.id.0));
        }
    }

    fn settings(max: usize) -> MemoryLogSettings {
        MemoryLogSettings::unbounded(max)
    }

    fn log(max: usize) -> (MemoryLog, Arc<Collect>) {
        let log = MemoryLog::new(settings(max));
        let sink = Arc::new(Collect(Mutex::new(Vec::new())));
        log.attach(sink.clone());
        (log, sink)
    }

    fn draft(topic: &str) -> EventDraft {
        EventDraft {
            topics: vec![Topic::new(topic).unwrap()],
            data: topic.into(),
            ..Default::default()
        }
    }

    fn selector(patterns: &[&str]) -> Selector {
        Selector {
            connection_id: "c".into(),
            patterns: patterns
                .iter()
                .map(|p| Pattern::parse(p).unwrap())
                .collect(),
            event_types: None,
            user: None,
            meta: Default::default(),
        }
    }

    fn ids(events: &[SharedEvent]) -> Vec<u64> {
        events.iter().map(|e| e.id.0).collect()
    }

    #[tokio::test]
    async fn ids_rise_across_topics_and_reach_the_sink_in_order() {
        let (log, sink) = log(10);
        let a = log.append(vec![draft("a"), draft("b")]).await.unwrap();
        let b = log.append(vec![draft("a")]).await.unwrap();
        let all: Vec<u64> = a.iter().chain(&b).map(|x| x.id.0).collect();
        assert!(all.windows(2).all(|w| w[1] == w[0] + 1));
        assert_eq!(*sink.0.lock().unwrap(), all);
    }

    #[tokio::test]
    async fn reads_after_last_and_since() {
        let (log, _) = log(100);
        let mut got = Vec::new();
        for t in ["a", "b", "a", "c", "a"] {
            got.push(log.append(vec![draft(t)]).await.unwrap()[0].id);
        }
        let sel = selector(&["a"]);
        let head = *got.last().unwrap();
        let req = |from| ReadRequest {
            from,
            until: head,
            limit: 100,
            selector: &sel,
        };
        let after = crate::log::read_all(&log, req(ReadFrom::After(got[0])))
            .await
            .unwrap();
        assert_eq!(ids(&after), vec![got[2].0, got[4].0]);
        let last = crate::log::read_all(&log, req(ReadFrom::Last(2)))
            .await
            .unwrap();
        assert_eq!(ids(&last), vec![got[2].0, got[4].0]);
        let since = crate::log::read_all(&log, req(ReadFrom::Since(0)))
            .await
            .unwrap();
        assert_eq!(ids(&since), vec![got[0].0, got[2].0, got[4].0]);
        let future = crate::log::read_all(&log, req(ReadFrom::Since(u64::MAX)))
            .await
            .unwrap();
        assert!(future.is_empty());
        // `until` bounds the read.
        let bounded = ReadRequest {
            until: got[2],
            ..req(ReadFrom::After(got[0]))
        };
        assert_eq!(
            ids(&crate::log::read_all(&log, bounded).await.unwrap()),
            vec![got[2].0]
        );
    }

    /// An event that expires by its own `ttl` takes nothing else with it:
    /// older events of its topic stay readable (a `ttl: 0` typing indicator
    /// once wiped a chat room's history this way).
    #[tokio::test]
    async fn an_expiring_event_leaves_older_history_alone() {
        let (log, _) = log(100);
        let kept = log.append(vec![draft("room")]).await.unwrap()[0].id;
        let brief = EventDraft {
            ttl_secs: Some(0),
            ..draft("room")
        };
        log.append(vec![brief]).await.unwrap();
        let later = log.append(vec![draft("elsewhere")]).await.unwrap()[0].id;
        log.lock().sweep(now_ms() + 5);
        for patterns in [&["room"][..], &["room", "nothing/*"][..]] {
            let sel = selector(patterns);
            for from in [
                ReadFrom::Last(10),
                ReadFrom::After(EventId(0)),
                ReadFrom::Since(0),
            ] {
                let req = ReadRequest {
                    from,
                    until: later,
                    limit: 100,
                    selector: &sel,
                };
                let got = crate::log::read_all(&log, req).await.unwrap();
                assert_eq!(ids(&got), vec![kept.0], "{patterns:?} {from:?}");
            }
        }
        // The expired id is skipped, and the history is no less covered.
        let sel = selector(&["room"]);
        assert_eq!(
            log.lock().coverage(EventId(kept.0 - 1), &sel),
            Coverage::Covered
        );
    }

    /// What a read must return, by the definition: every retained event up
    /// to `until`, in id order, that the selector wants and that a history
    /// it reads still holds. The log itself never walks every event.
    fn full_scan(inner: &Inner, req: &ReadRequest<'_>, now: u64) -> Vec<u64> {
        let all = inner
            .events
            .range(..=req.until.0)
            .map(|(_, s)| &s.event)
            .filter(|e| {
                !e.is_expired(now) && req.selector.wants(e) && inner.holds(e, req.selector)
            });
        match req.from {
            ReadFrom::After(a) => all
                .filter(|e| e.id > a)
                .take(req.limit)
                .map(|e| e.id.0)
                .collect(),
            ReadFrom::Since(ms) => all
                .filter(|e| e.published_at_ms >= ms)
                .take(req.limit)
                .map(|e| e.id.0)
                .collect(),
            ReadFrom::Last(n) => {
                let v: Vec<u64> = all.map(|e| e.id.0).collect();
                v[v.len().saturating_sub(n.min(req.limit))..].to_vec()
            }
        }
    }

    /// Reads through the topic histories, exact and wildcard, give what a
    /// scan of the whole log gives, also when most candidates are filtered
    /// out and a read goes on past the scan budget; and one page never
    /// examines more than the budget.
    #[tokio::test]
    async fn indexed_reads_agree_with_full_scans() {
        let (log, _) = log(300);
        let mut heads = Vec::new();
        let mut batch = Vec::new();
        for i in 0..12_000usize {
            let mut d = draft(&match i % 3 {
                0 => format!("room/{}", i % 50),
                1 => format!("other/{}/x", i % 7),
                _ => format!("deep/{}/{}", i % 5, i % 11),
            });
            d.event_type = Some(if i % 997 == 0 { "rare" } else { "common" }.into());
            if i % 5 == 0 {
                d.topics.push(Topic::new("room/1").unwrap());
            }
            if i % 13 == 0 {
                // Presence announcements: one topic, a history of their own.
                d.event_type = Some(crate::log::PRESENCE_EVENT.into());
                d.topics.truncate(1);
            }
            if i % 1001 == 0 {
                d.topics = if i % 2002 == 0 {
                    vec![]
                } else {
                    vec![Topic::new("zz").unwrap()]
                };
                d.target.broadcast = true;
            }
            if i % 9 == 0 {
                d.ttl_secs = Some(0);
            }
            batch.push(d);
            if batch.len() == 100 {
                let got = log.append(std::mem::take(&mut batch)).await.unwrap();
                heads.extend(got.iter().map(|a| a.id));
            }
        }
        log.lock().sweep(now_ms() + 5);
        let head = *heads.last().unwrap();
        let rare = |patterns: &[&str]| Selector {
            event_types: Some(vec!["rare".into()]),
            ..selector(patterns)
        };
        let selectors = [
            selector(&["room/1", "deep/3/4"]),
            selector(&["room/*"]),
            selector(&["*/3/x", "room/1"]),
            selector(&["deep/**", "room/7"]),
            selector(&["**"]),
            rare(&["**"]),
            rare(&["room/*", "*/*/x"]),
            rare(&["nothing/*"]),
        ];
        // Both ways of reading are exercised: merged histories, and the log
        // in id order when more than MAX_MERGED topics match.
        assert!(log.lock().histories(&selectors[1]).is_some());
        assert!(log.lock().histories(&selectors[4]).is_none());
        let mut went_on = 0;
        for sel in &selectors {
            for (from, limit) in [
                (ReadFrom::Last(5), 100),
                (ReadFrom::Last(1000), 1000),
                (ReadFrom::Last(50), 20),
                (ReadFrom::After(EventId(0)), 100),
                (ReadFrom::After(heads[6000]), 7),
                (ReadFrom::After(heads[11_990]), 100),
                (ReadFrom::Since(0), 50),
            ] {
                for until in [head, heads[9000]] {
                    let req = ReadRequest {
                        from,
                        until,
                        limit,
                        selector: sel,
                    };
                    let expected = full_scan(&log.lock(), &req, now_ms());
                    let got = ids(&crate::log::read_all(&log, req).await.unwrap());
                    assert_eq!(
                        got, expected,
                        "{:?} {from:?} {limit} until {until:?}",
                        sel.patterns
                    );
                    let page = log.read(req).await.unwrap();
                    went_on += usize::from(page.resume.is_some());
                }
            }
            // Coverage as the whole-topic walk decided it before the index.
            for after in [heads[0], heads[6000], heads[11_000], heads[11_990]] {
                let inner = log.lock();
                let walk = if after.0 >= inner.max_evicted.max(inner.pruned_floor) {
                    Coverage::Covered
                } else if after.0 < inner.pruned_floor
                    || after.0 < inner.direct.evicted_through
                    || inner.topics.iter().any(|(t, h)| {
                        h.evicted_through > after.0 && sel.patterns.iter().any(|p| p.matches(t))
                    })
                {
                    Coverage::Expired
                } else {
                    Coverage::Covered
                };
                assert_eq!(inner.coverage(after, sel), walk, "{:?}", sel.patterns);
            }
        }
        assert!(went_on > 0, "no read reached the scan budget");
    }

    #[tokio::test]
    async fn count_eviction_moves_coverage_per_topic() {
        let (log, _) = log(2);
        let first = log.append(vec![draft("a")]).await.unwrap()[0].id;
        let b = log.append(vec![draft("b")]).await.unwrap()[0].id;
        log.append(vec![draft("a"), draft("a")]).await.unwrap();
        // `first` was evicted from `a`; `b` kept all of its history.
        assert_eq!(
            log.coverage(first, &selector(&["a"])).await.unwrap(),
            Coverage::Covered
        );
        let before_first = EventId(first.0 - 1);
        assert_eq!(
            log.coverage(before_first, &selector(&["a"])).await.unwrap(),
            Coverage::Expired
        );
        assert_eq!(
            log.coverage(before_first, &selector(&["b"])).await.unwrap(),
            Coverage::Covered
        );
        assert_eq!(
            log.coverage(before_first, &selector(&["*"])).await.unwrap(),
            Coverage::Expired
        );
        assert_eq!(
            log.coverage(EventId(b.0 + 100), &selector(&["a"]))
                .await
                .unwrap(),
            Coverage::Unknown
        );
        assert_eq!(
            log.coverage(EventId(5), &selector(&["a"])).await.unwrap(),
            Coverage::Unknown
        );
    }

    #[tokio::test]
    async fn ttl_expiry_hides_without_resetting() {
        let (log, _) = log(10);
        let mut d = draft("a");
        d.ttl_secs = Some(0);
        let gone = log.append(vec![d]).await.unwrap()[0].id;
        let kept = log.append(vec![draft("a")]).await.unwrap()[0].id;
        log.sweep();
        let sel = selector(&["a"]);
        let read = log
            .read(ReadRequest {
                from: ReadFrom::After(EventId(gone.0 - 1)),
                until: kept,
                limit: 10,
                selector: &sel,
            })
            .await
            .unwrap();
        assert_eq!(ids(&read.events), vec![kept.0]);
        assert_eq!(
            log.coverage(EventId(gone.0 - 1), &sel).await.unwrap(),
            Coverage::Covered
        );
    }

    #[tokio::test]
    async fn idempotency_key_commits_once() {
        let (log, sink) = log(10);
        let mut d = draft("a");
        d.idempotency_key = Some("k1".into());
        let first = log.append(vec![d.clone()]).await.unwrap()[0];
        let again = log.append(vec![d]).await.unwrap()[0];
        assert!(!first.duplicate);
        assert!(again.duplicate);
        assert_eq!(first.id, again.id);
        assert_eq!(sink.0.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn age_retention_evicts_and_reports() {
        let mut s = settings(10);
        s.max_age = Some(Duration::from_millis(0));
        let log = MemoryLog::new(s);
        log.attach(Arc::new(Collect(Mutex::new(Vec::new()))));
        let id = log.append(vec![draft("a")]).await.unwrap()[0].id;
        // Any later moment is past the zero-length age limit.
        log.lock().sweep(now_ms() + 5);
        assert!(log.is_empty());
        assert_eq!(
            log.coverage(EventId(id.0 - 1), &selector(&["a"]))
                .await
                .unwrap(),
            Coverage::Expired
        );
        assert_eq!(
            log.coverage(id, &selector(&["a"])).await.unwrap(),
            Coverage::Covered
        );
    }
}
