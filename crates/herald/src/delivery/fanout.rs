//! Fan-out: from a committed event to the queues of the connections that
//! receive it.
//!
//! The log calls [`Fanout::committed`] with events in id order, one caller at
//! a time. Candidates come from indexes — the pattern trie for topics, maps
//! by connection id and user for direct events — and each candidate gets the
//! final word from its [`Selector`](crate::values::selector::Selector). Offering is a
//! push of an `Arc` into a bounded queue plus a wake-up: the encoded bytes are
//! shared, never copied per subscriber.
//!
//! The registry is behind a `parking_lot::RwLock`: dispatch reads it,
//! connects and disconnects write it, and nothing holds it across an await.
//! Registration happens under the write lock, so no dispatch is in flight
//! when a new connection reads the delivered head: every event up to that
//! head was dispatched before it joined (the stream replays those from the
//! log), every later one reaches its queue. That is the whole of the
//! no-gap, no-duplicate join between replay and live.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::blocking::{Lock, Ordered};

use crate::delivery::connection::{Connection, Offered};
use crate::delivery::courier::Courier;
pub(crate) use crate::delivery::handoff::PresenceChange;
use crate::delivery::handoff::{LiveDeliveries, PresenceChanges};
use crate::delivery::inbox::Inboxes;
use crate::delivery::index::SubscriptionIndex;
use crate::log::{CommitSink, Control, Entry};
use crate::values::event::{EventId, SharedEvent};
use crate::values::pattern::Pattern;
use crate::values::topic::Topic;

#[derive(Default)]
pub(crate) struct Fanout {
    /// Id of the last event dispatched.
    head: AtomicU64,
    registry: RwLock<Registry>,
    counters: Counters,
    /// Where events wait for users (SPEC §7); `None` in unit tests.
    inboxes: Option<Arc<Inboxes>>,
    /// Announces joins and leaves on presence topics; `None` when none are
    /// configured.
    presence: Option<PresenceTracker>,
    /// Clustered: where to report direct messages this node delivered live
    /// (user, id), so that other nodes, where the user had no stream, stop
    /// holding them.
    delivered_live: Option<Arc<LiveDeliveries>>,
    /// Writes for streams whose sockets are parked (`courier.rs`).
    courier: Arc<Courier>,
}

struct PresenceTracker {
    patterns: Vec<Pattern>,
    changes: Arc<PresenceChanges>,
}

#[derive(Default)]
struct Registry {
    connections: HashMap<u64, Arc<Connection>>,
    by_id: HashMap<Arc<str>, u64>,
    by_user: HashMap<Box<str>, HashSet<u64>>,
    index: SubscriptionIndex<Arc<Connection>>,
    /// Streams per user on each presence topic they are subscribed to.
    present: HashMap<(Topic, Box<str>), usize>,
}

/// Totals since start.
#[derive(Default)]
struct Counters {
    dispatched: AtomicU64,
    queued: AtomicU64,
    dropped: AtomicU64,
    overflow_disconnects: AtomicU64,
}

/// Who is on a topic or pattern.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct Presence {
    /// Open connections on it.
    pub connections: usize,
    /// Connections per user.
    pub users: BTreeMap<String, usize>,
    /// Connections without a user (anonymous, dev mode, API keys).
    pub anonymous: usize,
}

/// A snapshot of fan-out's numbers.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct FanoutStats {
    /// Open connections (streams and waiting long polls).
    pub connections: usize,
    /// Patterns subscribed, over all connections.
    pub subscriptions: usize,
    /// Events waiting in connection queues now.
    pub queued_now: usize,
    /// Committed events fan-out has dispatched.
    pub events_dispatched: u64,
    /// Events put into connection queues.
    pub deliveries_queued: u64,
    /// Events dropped from full queues (`drop_oldest`, `drop_newest`).
    pub deliveries_dropped: u64,
    /// Connections closed because their queue was full (`disconnect`).
    pub overflow_disconnects: u64,
}

impl FanoutStats {
    /// Adds another node's numbers to these.
    pub fn add(&mut self, other: &FanoutStats) {
        self.connections += other.connections;
        self.subscriptions += other.subscriptions;
        self.queued_now += other.queued_now;
        self.events_dispatched += other.events_dispatched;
        self.deliveries_queued += other.deliveries_queued;
        self.deliveries_dropped += other.deliveries_dropped;
        self.overflow_disconnects += other.overflow_disconnects;
    }
}

impl Fanout {
    /// The registry, read (second in the hub's lock order, `blocking.rs`).
    fn read_registry(&self) -> Ordered<RwLockReadGuard<'_, Registry>> {
        Ordered::take(Lock::Registry, || self.registry.read())
    }

    /// The registry, written.
    fn write_registry(&self) -> Ordered<RwLockWriteGuard<'_, Registry>> {
        Ordered::take(Lock::Registry, || self.registry.write())
    }

    #[cfg(test)]
    pub(crate) fn new() -> Fanout {
        Fanout::default()
    }

    /// Fan-out that also holds events for users in `inboxes`.
    pub(crate) fn with_inboxes(inboxes: Arc<Inboxes>) -> Fanout {
        Fanout {
            inboxes: Some(inboxes),
            ..Fanout::default()
        }
    }

    /// Hands a [`PresenceChange`] to `changes` whenever a user's first
    /// stream subscribes to an exact topic that one of `patterns` matches,
    /// and when their last such stream leaves it. Changes are handed over
    /// under the registry's write lock, so they arrive in the order they
    /// happened.
    pub(crate) fn announce_presence(
        mut self,
        patterns: Vec<Pattern>,
        changes: Arc<PresenceChanges>,
    ) -> Fanout {
        self.presence = Some(PresenceTracker { patterns, changes });
        self
    }

    /// Closes the stream with this id and every stream of this user (an
    /// admin's close): their clients reconnect. They leave the books now,
    /// even if their sockets are slow to drain. Returns how many closed.
    pub(crate) fn close(&self, connection: Option<&str>, user: Option<&str>) -> usize {
        let mut closing: Vec<Arc<Connection>> =
            user.map(|u| self.connections_of(u)).unwrap_or_default();
        if let Some(conn) = connection.and_then(|id| self.connection(id)) {
            if !closing.iter().any(|c| c.key == conn.key) {
                closing.push(conn);
            }
        }
        for conn in &closing {
            conn.close(crate::delivery::connection::CloseReason::Closed);
            self.unregister(conn.key);
        }
        closing.len()
    }

    /// The (topic, user) pairs with a stream here on a presence topic.
    pub(crate) fn present_pairs(&self) -> Vec<(Topic, String)> {
        let reg = self.read_registry();
        reg.present
            .keys()
            .map(|(topic, user)| (topic.clone(), user.to_string()))
            .collect()
    }

    /// Reports every direct message delivered live to a user with a stream
    /// here (clustered: see [`crate::log::Control::Delivered`]).
    pub(crate) fn report_live_deliveries(mut self, reports: Arc<LiveDeliveries>) -> Fanout {
        self.delivered_live = Some(reports);
        self
    }

    /// Counts a stream in (`+1`) or out (`-1`) of the presence topics among
    /// `patterns`; sends the joins and leaves this makes.
    fn track<'a>(
        &self,
        reg: &mut Registry,
        conn: &Connection,
        patterns: impl IntoIterator<Item = &'a Pattern>,
        joining: bool,
    ) {
        let Some(tracker) = &self.presence else {
            return;
        };
        let Some(user) = conn.selector.user.as_ref().filter(|_| conn.is_stream) else {
            return;
        };
        for pattern in patterns {
            if !pattern.is_exact() {
                continue;
            }
            let Ok(topic) = Topic::new(pattern.as_str()) else {
                continue;
            };
            if !tracker.patterns.iter().any(|p| p.matches(&topic)) {
                continue;
            }
            let key = (topic, user.clone());
            let changed = if joining {
                let n = reg.present.entry(key.clone()).or_default();
                *n += 1;
                *n == 1
            } else {
                match reg.present.get_mut(&key) {
                    Some(n) if *n > 1 => {
                        *n -= 1;
                        false
                    }
                    Some(_) => {
                        reg.present.remove(&key);
                        true
                    }
                    None => false,
                }
            };
            if changed {
                tracker.changes.push(PresenceChange {
                    topic: key.0,
                    user: key.1,
                    joined: joining,
                });
            }
        }
    }

    pub(crate) fn inboxes(&self) -> Option<&Arc<Inboxes>> {
        self.inboxes.as_ref()
    }

    /// Adds a connection and returns the id of the last event dispatched
    /// before it joined; every later event is offered to it.
    pub(crate) fn register(&self, conn: Arc<Connection>) -> EventId {
        let mut reg = self.write_registry();
        conn.with_patterns(|patterns| {
            for pattern in patterns {
                reg.index.insert(pattern, conn.key, conn.clone());
            }
            self.track(&mut reg, &conn, patterns, true);
        });
        if let Some(user) = &conn.selector.user {
            reg.by_user
                .entry(user.clone())
                .or_default()
                .insert(conn.key);
        }
        reg.by_id.insert(conn.id.clone(), conn.key);
        reg.connections.insert(conn.key, conn);
        EventId(self.head.load(Ordering::Acquire))
    }

    /// Marks a heartbeat due on every stream that wrote nothing for
    /// `every_ms`, and wakes it (the hub's heartbeat tick; under the
    /// registry's read lock, so dispatch goes on meanwhile).
    pub(crate) fn heartbeat_tick(&self, now_ms: u64, every_ms: u64) {
        for conn in self.read_registry().connections.values() {
            conn.ping_if_quiet(now_ms, every_ms);
        }
    }

    /// Wakes every connection's writer (the hub is shutting down).
    pub(crate) fn wake_all(&self) {
        for conn in self.read_registry().connections.values() {
            conn.wake();
        }
    }

    /// Removes a connection and everything that points at it.
    pub(crate) fn unregister(&self, key: u64) {
        let mut reg = self.write_registry();
        let Some(conn) = reg.connections.remove(&key) else {
            return;
        };
        conn.with_patterns(|patterns| {
            for pattern in patterns {
                reg.index.remove(pattern, key);
            }
            self.track(&mut reg, &conn, patterns, false);
        });
        if let Some(user) = &conn.selector.user {
            if let Some(keys) = reg.by_user.get_mut(user) {
                keys.remove(&key);
                if keys.is_empty() {
                    reg.by_user.remove(user);
                }
            }
        }
        reg.by_id.remove(&conn.id);
    }

    /// Starts the dispatched head where the log stands when fan-out joins
    /// it (events up to it are read from the log, not dispatched).
    pub(crate) fn start_at(&self, head: EventId) {
        self.head.store(head.0, Ordering::Release);
    }

    /// Id of the last event dispatched.
    pub(crate) fn head(&self) -> EventId {
        EventId(self.head.load(Ordering::Acquire))
    }

    /// A connection by its public id.
    pub(crate) fn connection(&self, id: &str) -> Option<Arc<Connection>> {
        let reg = self.read_registry();
        reg.by_id
            .get(id)
            .and_then(|k| reg.connections.get(k))
            .cloned()
    }

    /// Changes what an open connection receives from now on; returns its
    /// patterns after the change, or `None` when it is gone.
    pub(crate) fn resubscribe(
        &self,
        key: u64,
        add: &[Pattern],
        remove: &[Pattern],
    ) -> Option<Vec<Pattern>> {
        let mut reg = self.write_registry();
        let conn = reg.connections.get(&key)?.clone();
        let (left, joined, now) = conn.change_patterns(|patterns| {
            let mut left = Vec::new();
            for p in remove {
                if let Some(at) = patterns.iter().position(|x| x == p) {
                    left.push(patterns.remove(at));
                    reg.index.remove(p, key);
                }
            }
            let mut joined = Vec::new();
            for p in add {
                if !patterns.contains(p) {
                    patterns.push(p.clone());
                    reg.index.insert(p, key, conn.clone());
                    joined.push(p.clone());
                }
            }
            (left, joined, patterns.clone())
        });
        self.track(&mut reg, &conn, &left, false);
        self.track(&mut reg, &conn, &joined, true);
        Some(now)
    }

    /// Subscription patterns of open streams, with how many streams hold each.
    pub(crate) fn subscriptions(&self) -> BTreeMap<String, usize> {
        let reg = self.read_registry();
        let mut counts = BTreeMap::new();
        for conn in reg.connections.values() {
            conn.with_patterns(|patterns| {
                for p in patterns {
                    *counts.entry(p.as_str().to_owned()).or_default() += 1;
                }
            });
        }
        counts
    }

    /// Every open connection of a user.
    pub(crate) fn connections_of(&self, user: &str) -> Vec<Arc<Connection>> {
        let reg = self.read_registry();
        reg.by_user
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|k| reg.connections.get(k).cloned())
            .collect()
    }

    /// Who is on a topic or pattern: connections with a subscription that
    /// shares at least one topic with it. An exact topic is looked up in the
    /// index; a pattern is compared with every connection's patterns.
    pub(crate) fn presence(&self, pattern: &Pattern) -> Presence {
        let reg = self.read_registry();
        let mut present: HashSet<u64> = HashSet::new();
        match Topic::new(pattern.as_str()) {
            Ok(topic) => reg.index.for_each_match(&topic, |k, _| {
                present.insert(k);
            }),
            Err(_) => {
                for (k, c) in &reg.connections {
                    if c.with_patterns(|ps| ps.iter().any(|p| p.intersects(pattern))) {
                        present.insert(*k);
                    }
                }
            }
        }
        let mut users: BTreeMap<String, usize> = BTreeMap::new();
        let mut anonymous = 0;
        for conn in present.iter().filter_map(|k| reg.connections.get(k)) {
            match &conn.selector.user {
                Some(u) => *users.entry(u.to_string()).or_default() += 1,
                None => anonymous += 1,
            }
        }
        Presence {
            connections: present.len(),
            users,
            anonymous,
        }
    }

    pub(crate) fn stats(&self) -> FanoutStats {
        let reg = self.read_registry();
        let c = &self.counters;
        FanoutStats {
            connections: reg.connections.len(),
            subscriptions: reg.index.len(),
            queued_now: reg.connections.values().map(|c| c.queued()).sum(),
            events_dispatched: c.dispatched.load(Ordering::Relaxed),
            deliveries_queued: c.queued.load(Ordering::Relaxed),
            deliveries_dropped: c.dropped.load(Ordering::Relaxed),
            overflow_disconnects: c.overflow_disconnects.load(Ordering::Relaxed),
        }
    }

    /// Writes for parked sockets with `courier` (one task per worker
    /// thread of the runtime that serves the streams).
    pub(crate) fn with_courier(mut self, courier: Courier) -> Fanout {
        self.courier = Arc::new(courier);
        self
    }

    /// The courier that writes for streams whose sockets are parked.
    pub(crate) fn courier(&self) -> &Arc<Courier> {
        &self.courier
    }

    fn dispatch(
        &self,
        reg: &Registry,
        event: &SharedEvent,
        closed: &mut Vec<u64>,
        for_courier: &mut Vec<Arc<Connection>>,
    ) {
        let mut tally = Tally::default();
        let mut offer = |conn: &Arc<Connection>| {
            if conn.selector.accepts(event) {
                let offered = conn.offer(event);
                match offered {
                    Offered::Disconnected => closed.push(conn.key),
                    Offered::ForCourier => for_courier.push(conn.clone()),
                    _ => {}
                }
                tally.add(offered);
            }
        };
        if event.target.broadcast {
            reg.connections.values().for_each(&mut offer);
        } else if !event.topics.is_empty() {
            for topic in event.topics.iter() {
                reg.index.for_each_match(topic, |_, conn| offer(conn));
            }
        } else {
            let by_id = event
                .target
                .connections
                .iter()
                .filter_map(|id| reg.by_id.get(id.as_str()));
            let by_user = event
                .target
                .users
                .iter()
                .filter_map(|u| reg.by_user.get(u.as_str()))
                .flatten();
            for key in by_id.chain(by_user) {
                if let Some(conn) = reg.connections.get(key) {
                    offer(conn);
                }
            }
        }
        // Under the registry lock, as registration: a user who connects now
        // either got the event above or finds it in the inbox.
        if let Some(inboxes) = &self.inboxes {
            if !event.target.users.is_empty() && !event.target.broadcast {
                inboxes.offer(event, |user| reg.by_user.contains_key(user));
                if let (Some(reports), false) = (&self.delivered_live, event.require_ack) {
                    for user in &event.target.users {
                        if reg.by_user.contains_key(user.as_str()) {
                            reports.push(user.as_str(), event.id);
                        }
                    }
                }
            }
        }
        let c = &self.counters;
        c.dispatched.fetch_add(1, Ordering::Relaxed);
        c.queued.fetch_add(tally.queued, Ordering::Relaxed);
        c.dropped.fetch_add(tally.dropped, Ordering::Relaxed);
        c.overflow_disconnects
            .fetch_add(tally.disconnected, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Tally {
    queued: u64,
    dropped: u64,
    disconnected: u64,
}

impl Tally {
    fn add(&mut self, offered: Offered) {
        match offered {
            Offered::Queued | Offered::ForCourier => self.queued += 1,
            Offered::Dropped => {
                self.queued += 1;
                self.dropped += 1
            }
            Offered::Disconnected => self.disconnected += 1,
            Offered::Duplicate | Offered::Closed => {}
        }
    }
}

impl CommitSink for Fanout {
    fn committed(&self, events: &[SharedEvent]) {
        let mut closed = Vec::new();
        let mut for_courier = Vec::new();
        let reg = self.read_registry();
        for event in events {
            self.dispatch(&reg, event, &mut closed, &mut for_courier);
            // Advanced while the read lock is held: a registration (write
            // lock) sees either none or all of this batch as dispatched.
            self.head.store(event.id.0, Ordering::Release);
        }
        drop(reg);
        self.courier.hand(&mut for_courier);
        // What now waits in inboxes is only queued for their writer: the
        // publisher awaits it (`Hub::publish_as`), nothing waits here.
        // Overflowed streams leave the books now, not when their writer next
        // runs: a stalled socket may keep it from ever running.
        for key in closed {
            self.unregister(key);
        }
    }

    fn control(&self, record: &Control) {
        if let Control::Close { connection, user } = record {
            self.close(connection.as_deref(), user.as_deref());
            return;
        }
        let Some(inboxes) = &self.inboxes else { return };
        match record {
            Control::Delivered { user, ids } => inboxes.delivered(user, ids),
            Control::Acked { user, ids } => drop(inboxes.ack(user, ids)),
            Control::Close { .. } => {}
        }
    }

    fn recovered(&self, entries: &[Entry]) {
        let Some(inboxes) = &self.inboxes else { return };
        for entry in entries {
            match entry {
                // Nobody was connected to this node then: every addressed
                // event waits, until a record says it was delivered.
                Entry::Event(event) | Entry::Held(event) => {
                    inboxes.offer_at(event, |_| false, event.published_at_ms)
                }
                Entry::Control { record, .. } => self.control(record),
                Entry::Unreadable { .. } => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overflow;
    use crate::values::event::{Event, EventDraft, Target};
    use crate::values::pattern::Pattern;
    use crate::values::selector::Selector;
    use crate::values::topic::Topic;

    fn conn(key: u64, patterns: &[&str], user: Option<&str>) -> Arc<Connection> {
        let id: Arc<str> = format!("c{key}").into();
        let selector = Selector {
            connection_id: id.clone(),
            patterns: patterns
                .iter()
                .map(|p| Pattern::parse(p).unwrap())
                .collect(),
            event_types: None,
            user: user.map(Into::into),
            meta: Default::default(),
        };
        Arc::new(Connection::new(
            key,
            id,
            selector,
            16,
            Overflow::Disconnect,
            None,
        ))
    }

    fn event(id: u64, topics: &[&str], target: Target) -> SharedEvent {
        let draft = EventDraft {
            topics: topics.iter().map(|t| Topic::new(t).unwrap()).collect(),
            target,
            ..Default::default()
        };
        Arc::new(Event::commit(draft, EventId(id), 0))
    }

    fn queued(c: &Connection) -> Vec<u64> {
        let mut out = Vec::new();
        c.drain(&mut out);
        out.iter().map(|e| e.id.0).collect()
    }

    #[test]
    fn routes_by_pattern_once_per_connection() {
        let f = Fanout::new();
        let a = conn(1, &["jobs/*", "jobs/**", "jobs/1"], None);
        let b = conn(2, &["chat/**"], None);
        f.register(a.clone());
        f.register(b.clone());
        f.committed(&[
            event(1, &["jobs/1"], Target::default()),
            event(2, &["chat/x/y"], Target::default()),
        ]);
        assert_eq!(queued(&a), vec![1]);
        assert_eq!(queued(&b), vec![2]);
        assert_eq!(f.head(), EventId(2));
    }

    #[test]
    fn direct_and_broadcast_delivery() {
        let f = Fanout::new();
        let a = conn(1, &["x"], Some("alice"));
        let b = conn(2, &[], None);
        f.register(a.clone());
        f.register(b.clone());
        let to_b = Target {
            connections: vec!["c2".into()],
            ..Default::default()
        };
        let to_alice = Target {
            users: vec!["alice".into()],
            ..Default::default()
        };
        let all = Target {
            broadcast: true,
            ..Default::default()
        };
        f.committed(&[
            event(1, &[], to_b),
            event(2, &[], to_alice),
            event(3, &[], all),
        ]);
        assert_eq!(queued(&a), vec![2, 3]);
        assert_eq!(queued(&b), vec![1, 3]);
    }

    #[test]
    fn unregister_forgets_everything() {
        let f = Fanout::new();
        let a = conn(1, &["x/**"], Some("alice"));
        f.register(a.clone());
        assert_eq!(f.stats().subscriptions, 1);
        f.unregister(1);
        let s = f.stats();
        assert_eq!((s.connections, s.subscriptions), (0, 0));
        assert!(f.connection("c1").is_none());
        f.committed(&[event(1, &["x/y"], Target::default())]);
        assert!(queued(&a).is_empty());
    }

    #[test]
    fn register_reports_the_dispatched_head() {
        let f = Fanout::new();
        f.committed(&[event(7, &["a"], Target::default())]);
        assert_eq!(f.register(conn(1, &["a"], None)), EventId(7));
    }
}
