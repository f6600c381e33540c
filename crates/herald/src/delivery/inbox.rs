//! Per-user inboxes (SPEC §7): events that wait for a user.
//!
//! An event waits for a user for one of two reasons, and both are held here,
//! by id, per user:
//!
//! * **Pending acknowledgement.** An event published with `require_ack` to
//!   users waits for each of them, online or not, until they `POST /v1/ack`
//!   its id, or its `ttl` ends. Every new connection of theirs receives it
//!   first, so a second device sees what the first never acknowledged.
//! * **Offline delivery.** A direct message (`to.users`) to a user with no
//!   open connection when fan-out dispatched it waits until a connection of
//!   theirs receives it.
//!
//! Fan-out decides under its registry lock (`fanout.rs`), the lock a new
//! connection registers under: a user who connects is either registered
//! before the dispatch (the event reaches the new queue) or after it (the
//! event is in the inbox, at or below the head the connection joined at).
//! Never neither, never both: a stream takes from the inbox only ids up to
//! its head.
//!
//! A new connection receives what waits for it only if it would have
//! received the event live (its topics, `event=` types and claims): an
//! event on a topic it did not subscribe to keeps waiting. Each inbox is
//! bounded (`inbox.max_per_user`; the oldest is dropped and counted) and
//! ages out (`inbox.max_age_secs`, and each event's `ttl`).
//!
//! **Durability.** Every change is a record in `DATA_DIR/inbox.log`, framed
//! like the journal's (length, CRC, JSON), and synced unless
//! `history.fsync = "never"`. Changes are made in memory, under the inbox
//! state's lock, and only queue their records; one writer thread writes
//! and syncs whatever has queued, many changes per sync, so no fsync runs
//! on a runtime worker or under a lock that a publish or a subscribe needs
//! (`blocking.rs`). Who must know a change is on disk awaits
//! [`Inboxes::written`]: a publish addressed to users before it is
//! answered (so what waits survives `kill -9`), an acknowledgement before
//! it is answered. A stream that delivered waiting messages does not wait:
//! lost in a crash, they are delivered again (at least once, never lost).
//! At start the file is replayed (a torn tail is cut) and rewritten with
//! only what still waits; it is rewritten again whenever it has grown well
//! past that.
//!
//! Why one file of about 750 lines (and its tests): the inboxes in memory,
//! their file and its writer thread share one invariant (what the file
//! holds is what memory held at the last write, in the same order), and
//! the lock order between the file and the state is easiest to check when
//! both are in view.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Mutex, MutexGuard};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::blocking::{self, Lock, Ordered};
use crate::log::journal::{frame, unframe, Record};
use crate::log::now_ms;
use crate::values::event::{EventId, SharedEvent};
use crate::values::selector::Selector;

/// Bounds of every inbox.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InboxSettings {
    pub max_per_user: usize,
    /// `0`: no age limit (events with a `ttl` still end with it).
    pub max_age_ms: u64,
    /// Sync the file after each write.
    pub sync: bool,
}

/// The inboxes of every user.
pub(crate) struct Inboxes {
    core: Arc<Core>,
    /// Rings the writer thread; `None`: memory only. It holds one ring: a
    /// ring while one is pending adds nothing, since the writer takes every
    /// record queued by the time it runs.
    doorbell: Option<SyncSender<()>>,
    writer: Option<JoinHandle<()>>,
    written: watch::Receiver<Written>,
}

/// What the writer thread shares with the handle.
struct Core {
    state: Mutex<State>,
    /// `None`: memory only.
    store: Option<Mutex<Store>>,
    /// The file's last write failed (until a rewrite succeeds).
    broken: AtomicBool,
    settings: InboxSettings,
    written: watch::Sender<Written>,
}

/// How far the file is written, counted in changes.
#[derive(Debug, Clone, Default)]
struct Written {
    /// Every change up to this one is in the file.
    through: u64,
    /// The last write that failed: every change up to its first number
    /// may be lost, and why.
    failed: Option<(u64, Arc<str>)>,
}

#[derive(Default)]
struct State {
    users: HashMap<Box<str>, UserInbox>,
    held: usize,
    totals: InboxTotals,
    /// Records of changes not yet written, in the order of the changes.
    unwritten: Vec<u8>,
    /// Changes recorded so far (the last one's number).
    changes: u64,
    recording: bool,
}

#[derive(Default)]
struct UserInbox {
    entries: BTreeMap<EventId, Held>,
    dropped: u64,
}

struct Held {
    event: SharedEvent,
    /// Waits for an acknowledgement (otherwise for a connection).
    ack: bool,
    since_ms: u64,
}

/// Counts since start (for stats and metrics).
#[derive(Debug, Clone, Copy, Default, serde::Serialize, utoipa::ToSchema)]
pub struct InboxTotals {
    /// Events waiting now, over all users.
    pub waiting: usize,
    /// Events dropped because an inbox was full.
    pub dropped: u64,
    /// Events that waited until their `ttl` or `inbox.max_age_secs` ended.
    pub expired: u64,
    /// Events acknowledged by their users.
    pub acked: u64,
    /// Waiting events handed to a new connection.
    pub delivered: u64,
    /// Failed writes of the inbox file.
    pub write_errors: u64,
}

/// What waits for one user.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, utoipa::ToSchema)]
pub struct UserInboxCounts {
    /// Events waiting for this user's acknowledgement.
    pub pending_acks: usize,
    /// Direct messages waiting for this user to connect.
    pub offline: usize,
    /// Events dropped from this user's full inbox since start.
    pub dropped: u64,
}

/// The answer to an acknowledgement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckOutcome {
    /// Ids that were waiting for this user and no longer do.
    pub acked: Vec<EventId>,
    /// Ids that were not waiting for this user (acknowledged before,
    /// expired, dropped, or never addressed to them).
    pub unknown: Vec<EventId>,
}

/// One change, as stored.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Change {
    /// Written by earlier versions (one record per user); read only.
    Hold {
        user: String,
        ack: bool,
        since: u64,
        event: Box<Record>,
    },
    /// An event starts waiting for these users: one record per event, so
    /// the bytes written grow with the list, not with its square.
    HoldFor {
        users: Vec<String>,
        ack: bool,
        since: u64,
        event: Box<Record>,
    },
    Remove {
        user: String,
        ids: Vec<u64>,
    },
}

impl State {
    fn record(&mut self, change: &Change) {
        if self.recording {
            let body = serde_json::to_vec(change).expect("inbox changes serialize");
            frame(&body, &mut self.unwritten);
            self.changes += 1;
        }
    }

    fn hold(&mut self, user: &str, event: &SharedEvent, ack: bool, since_ms: u64, max: usize) {
        let inbox = self.users.entry(user.into()).or_default();
        match inbox.entries.entry(event.id) {
            Entry::Occupied(mut held) => {
                if !ack || held.get().ack {
                    return;
                }
                held.get_mut().ack = true;
            }
            Entry::Vacant(slot) => {
                slot.insert(Held {
                    event: event.clone(),
                    ack,
                    since_ms,
                });
                self.held += 1;
            }
        }
        let mut dropped = Vec::new();
        while inbox.entries.len() > max {
            let Some((id, _)) = inbox.entries.pop_first() else {
                break;
            };
            inbox.dropped += 1;
            dropped.push(id.0);
        }
        self.held -= dropped.len();
        self.totals.dropped += dropped.len() as u64;
        // The hold itself is recorded by the caller, once for all users.
        if !dropped.is_empty() {
            self.record(&Change::Remove {
                user: user.into(),
                ids: dropped,
            });
        }
    }

    /// Removes the given ids of a user that `which` selects; returns them.
    fn remove(
        &mut self,
        user: &str,
        ids: impl IntoIterator<Item = EventId>,
        which: impl Fn(&Held) -> bool,
    ) -> Vec<EventId> {
        let Some(inbox) = self.users.get_mut(user) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for id in ids {
            if inbox.entries.get(&id).is_some_and(&which) {
                inbox.entries.remove(&id);
                removed.push(id);
            }
        }
        if inbox.entries.is_empty() && inbox.dropped == 0 {
            self.users.remove(user);
        }
        self.held -= removed.len();
        if !removed.is_empty() {
            self.record(&Change::Remove {
                user: user.into(),
                ids: removed.iter().map(|id| id.0).collect(),
            });
        }
        removed
    }

    /// Applies the whole records at the start of `bytes`; returns where they
    /// end. A whole record is never cut; one that cannot be read (no writer
    /// of this version makes them) is skipped and said.
    fn replay_records(&mut self, bytes: &[u8], max: usize, path: &Path) -> usize {
        let mut at = 0;
        while let Some((body, size)) = unframe(&bytes[at..]) {
            at += size;
            match crate::values::json::from_slice::<Change>(body) {
                Ok(change) => self.replay(change, max),
                Err(err) => {
                    crate::log::skipped_unreadable();
                    tracing::error!(
                        path = %path.display(),
                        offset = at - size,
                        %err,
                        "an inbox record is whole but unreadable; skipped"
                    )
                }
            }
        }
        at
    }

    /// Applies a stored change (at start; nothing is recorded).
    fn replay(&mut self, change: Change, max: usize) {
        match change {
            Change::Hold {
                user,
                ack,
                since,
                event,
            } => {
                let event = Arc::new(event.into_event());
                self.hold(&user, &event, ack, since, max);
            }
            Change::HoldFor {
                users,
                ack,
                since,
                event,
            } => {
                let event = Arc::new(event.into_event());
                for user in &users {
                    self.hold(user, &event, ack, since, max);
                }
            }
            Change::Remove { user, ids } => {
                self.remove(&user, ids.into_iter().map(EventId), |_| true);
            }
        }
    }
}

/// Fuzzing entry: replays an inbox file's bytes; checks the counts agree.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_inbox_file(bytes: &[u8]) {
    let mut state = State::default();
    let at = state.replay_records(bytes, 16, Path::new("fuzz"));
    assert!(at <= bytes.len());
    let held: usize = state.users.values().map(|u| u.entries.len()).sum();
    assert_eq!(held, state.held);
    assert!(state.users.values().all(|u| u.entries.len() <= 16));
}

impl Held {
    fn expired(&self, now_ms: u64, max_age_ms: u64) -> bool {
        self.event.is_expired(now_ms)
            || (max_age_ms != 0 && self.since_ms.saturating_add(max_age_ms) <= now_ms)
    }
}

impl Inboxes {
    /// Inboxes in memory only.
    pub(crate) fn in_memory(settings: InboxSettings) -> Inboxes {
        let (written, watching) = watch::channel(Written::default());
        Inboxes {
            core: Arc::new(Core {
                state: Mutex::new(State::default()),
                store: None,
                broken: AtomicBool::new(false),
                settings,
                written,
            }),
            doorbell: None,
            writer: None,
            written: watching,
        }
    }

    /// Inboxes kept in `path`, read back from it. Blocks on the disk (a
    /// start, before the hub serves); starts the writer thread.
    pub(crate) fn open(path: &Path, settings: InboxSettings) -> io::Result<Inboxes> {
        let mut state = State::default();
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut file) => {
                file.read_to_end(&mut bytes)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let at = state.replay_records(&bytes, settings.max_per_user, path);
        if at < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                cut_bytes = bytes.len() - at,
                "the inbox file ended in a write a crash interrupted; cut back to the last whole record"
            );
        }
        state.totals = InboxTotals::default();
        let store = blocking::at_start(|| Store::replace(path, &state.snapshot(), settings.sync))?;
        state.recording = true;
        let (written, watching) = watch::channel(Written::default());
        let core = Arc::new(Core {
            state: Mutex::new(state),
            store: Some(Mutex::new(store)),
            broken: AtomicBool::new(false),
            settings,
            written,
        });
        let (doorbell, rings) = mpsc::sync_channel(1);
        let writer = {
            let core = core.clone();
            std::thread::Builder::new()
                .name("herald-inbox".into())
                .spawn(move || core.write_on_ring(rings))?
        };
        let inboxes = Inboxes {
            core,
            doorbell: Some(doorbell),
            writer: Some(writer),
            written: watching,
        };
        inboxes.sweep(now_ms());
        Ok(inboxes)
    }

    /// Fan-out's hook, called for each dispatched event addressed to users
    /// (under the registry lock): holds it for each user it must wait for.
    pub(crate) fn offer(&self, event: &SharedEvent, online: impl Fn(&str) -> bool) {
        self.offer_at(event, online, now_ms());
    }

    /// [`Inboxes::offer`] of an event that started waiting at `since_ms`
    /// (a clustered node rebuilding its inboxes from the log at start).
    pub(crate) fn offer_at(
        &self,
        event: &SharedEvent,
        online: impl Fn(&str) -> bool,
        since_ms: u64,
    ) {
        let now = since_ms;
        if event.is_expired(now_ms()) {
            return;
        }
        let mut state = self.core.state();
        let mut held = Vec::new();
        for user in &event.target.users {
            if event.require_ack || !online(user) {
                state.hold(
                    user,
                    event,
                    event.require_ack,
                    now,
                    self.core.settings.max_per_user,
                );
                held.push(user.to_string());
            }
        }
        if !held.is_empty() {
            state.record(&Change::HoldFor {
                users: held,
                ack: event.require_ack,
                since: now,
                event: Box::new(Record::of(event)),
            });
            drop(state);
            self.ring();
        }
    }

    /// What waits for `user` that a connection joining at `head` with
    /// `selector` receives first, oldest first.
    pub(crate) fn waiting_for(
        &self,
        user: &str,
        selector: &Selector,
        head: EventId,
    ) -> Vec<SharedEvent> {
        let now = now_ms();
        let state = self.core.state();
        let Some(inbox) = state.users.get(user) else {
            return Vec::new();
        };
        inbox
            .entries
            .range(..=head)
            .filter(|(_, held)| {
                !held.expired(now, self.core.settings.max_age_ms) && selector.wants(&held.event)
            })
            .map(|(_, held)| held.event.clone())
            .collect()
    }

    /// A connection of `user` received these events: direct messages that
    /// waited for it stop waiting; events waiting for an ack still do. The
    /// change is written soon; nobody waits for it.
    pub(crate) fn delivered(&self, user: &str, ids: &[EventId]) {
        let removed = {
            let mut state = self.core.state();
            let removed = state.remove(user, ids.iter().copied(), |held| !held.ack);
            state.totals.delivered += removed.len() as u64;
            removed
        };
        if !removed.is_empty() {
            self.ring();
        }
    }

    /// Which of `ids` wait for `user` now (what an ack of them would
    /// remove).
    pub(crate) fn held(&self, user: &str, ids: &[EventId]) -> Vec<EventId> {
        let state = self.core.state();
        let Some(inbox) = state.users.get(user) else {
            return Vec::new();
        };
        ids.iter()
            .filter(|id| inbox.entries.contains_key(id))
            .copied()
            .collect()
    }

    /// `user` acknowledges these events. Await [`Inboxes::written`] before
    /// telling the user it is done.
    pub(crate) fn ack(&self, user: &str, ids: &[EventId]) -> AckOutcome {
        let acked = {
            let mut state = self.core.state();
            let acked = state.remove(user, ids.iter().copied(), |_| true);
            state.totals.acked += acked.len() as u64;
            acked
        };
        if !acked.is_empty() {
            self.ring();
        }
        let unknown = ids
            .iter()
            .filter(|id| !acked.contains(id))
            .copied()
            .collect();
        AckOutcome { acked, unknown }
    }

    /// Removes what has waited past its `ttl` or the age limit.
    pub(crate) fn sweep(&self, now_ms: u64) {
        let max_age = self.core.settings.max_age_ms;
        let removed = {
            let mut state = self.core.state();
            let expired: Vec<(Box<str>, Vec<EventId>)> = state
                .users
                .iter()
                .filter_map(|(user, inbox)| {
                    let ids: Vec<EventId> = inbox
                        .entries
                        .iter()
                        .filter(|(_, held)| held.expired(now_ms, max_age))
                        .map(|(id, _)| *id)
                        .collect();
                    (!ids.is_empty()).then(|| (user.clone(), ids))
                })
                .collect();
            let mut removed = 0;
            for (user, ids) in expired {
                let n = state.remove(&user, ids, |_| true).len();
                state.totals.expired += n as u64;
                removed += n;
            }
            removed
        };
        if removed > 0 {
            self.ring();
        }
    }

    /// Returns once every change made before the call is in the file (at
    /// once in memory), or says why it may not be.
    pub(crate) async fn written(&self) -> io::Result<()> {
        if self.doorbell.is_none() {
            return Ok(());
        }
        let change = self.core.state().changes;
        self.ring();
        let mut written = self.written.clone();
        let outcome = written
            .wait_for(|w| {
                w.through >= change || w.failed.as_ref().is_some_and(|(at, _)| *at >= change)
            })
            .await
            .map_err(|_| io::Error::other("the inbox writer stopped"))?;
        match (&outcome.failed, outcome.through >= change) {
            (_, true) => Ok(()),
            (Some((_, why)), false) => Err(io::Error::other(why.to_string())),
            (None, false) => unreachable!("waited for one of the two"),
        }
    }

    /// Writes the changes made so far to the file (and syncs it), on the
    /// calling thread: for threads that may wait for the disk.
    #[cfg(test)]
    pub(crate) fn flush(&self) -> io::Result<()> {
        self.core.flush()
    }

    /// Asks the writer thread to write what has queued.
    fn ring(&self) {
        if let Some(doorbell) = &self.doorbell {
            // Full: a ring is pending, and the writer will take this
            // change too. Gone: the writer ended; `written` says so.
            let _ = doorbell.try_send(());
        }
    }

    /// `Err` while the file's last write failed (until a rewrite succeeds).
    pub(crate) fn health(&self) -> Result<(), String> {
        match self.core.broken.load(Ordering::Relaxed) {
            true => Err("the last write of the inbox file failed".into()),
            false => Ok(()),
        }
    }

    pub(crate) fn user_counts(&self, user: &str) -> UserInboxCounts {
        let state = self.core.state();
        let Some(inbox) = state.users.get(user) else {
            return UserInboxCounts::default();
        };
        let pending_acks = inbox.entries.values().filter(|h| h.ack).count();
        UserInboxCounts {
            pending_acks,
            offline: inbox.entries.len() - pending_acks,
            dropped: inbox.dropped,
        }
    }

    pub(crate) fn totals(&self) -> InboxTotals {
        let state = self.core.state();
        InboxTotals {
            waiting: state.held,
            ..state.totals
        }
    }
}

impl Drop for Inboxes {
    /// The writer writes what is left and ends; it is waited for, so a
    /// hub opened again on the same directory reads everything.
    fn drop(&mut self) {
        self.doorbell.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Core {
    /// The inbox state, last in the hub's lock order (`blocking.rs`).
    fn state(&self) -> Ordered<MutexGuard<'_, State>> {
        Ordered::take(Lock::InboxState, || self.state.lock())
    }

    /// The writer thread: one write per ring, of every change queued by
    /// then. Ends when the handle is dropped, after a last write.
    fn write_on_ring(&self, rings: Receiver<()>) {
        blocking::disk_thread();
        while rings.recv().is_ok() {
            if let Err(err) = self.flush() {
                tracing::error!(%err, "could not write the inbox file");
            }
        }
        if let Err(err) = self.flush() {
            tracing::error!(%err, "could not write the inbox file");
        }
    }

    /// Writes and syncs the records queued so far; after a failed write,
    /// rewrites the whole file instead. Holds the file's lock throughout
    /// and the state's only to take the records (or a snapshot).
    fn flush(&self) -> io::Result<()> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let mut store = Ordered::take(Lock::InboxFile, || store.lock());
        let rewrite =
            self.broken.load(Ordering::Relaxed) || store.len > 2 * store.compact_len + (4 << 20);
        let (bytes, through) = {
            let mut state = self.state();
            let bytes = match rewrite {
                // Rare: the file is rewritten from what waits now, and the
                // records queued meanwhile are dropped, so none is written
                // twice.
                true => {
                    state.unwritten.clear();
                    state.snapshot()
                }
                false => std::mem::take(&mut state.unwritten),
            };
            (bytes, state.changes)
        };
        let result = match rewrite {
            true => Store::replace(&store.path, &bytes, self.settings.sync).map(|new| *store = new),
            false if bytes.is_empty() => Ok(()),
            false => store.append(&bytes),
        };
        self.broken.store(result.is_err(), Ordering::Relaxed);
        match &result {
            Ok(()) => self
                .written
                .send_modify(|w| w.through = w.through.max(through)),
            Err(err) => {
                self.state().totals.write_errors += 1;
                let why: Arc<str> = err.to_string().into();
                self.written
                    .send_modify(|w| w.failed = Some((through, why)));
            }
        }
        result
    }
}

/// The inbox file.
struct Store {
    path: PathBuf,
    file: File,
    len: u64,
    /// Length right after the last rewrite.
    compact_len: u64,
    sync: bool,
}

impl State {
    /// The records that rebuild what waits now: one per event (and kind
    /// of wait), naming its users.
    fn snapshot(&self) -> Vec<u8> {
        let mut events: BTreeMap<(EventId, bool, u64), (&SharedEvent, Vec<String>)> =
            BTreeMap::new();
        for (user, inbox) in &self.users {
            for held in inbox.entries.values() {
                events
                    .entry((held.event.id, held.ack, held.since_ms))
                    .or_insert_with(|| (&held.event, Vec::new()))
                    .1
                    .push(user.to_string());
            }
        }
        let mut buf = Vec::new();
        for ((_, ack, since), (event, users)) in events {
            let change = Change::HoldFor {
                users,
                ack,
                since,
                event: Box::new(Record::of(event)),
            };
            frame(
                &serde_json::to_vec(&change).expect("inbox changes serialize"),
                &mut buf,
            );
        }
        buf
    }
}

impl Store {
    /// Replaces the file with `records` (write, sync, rename, sync the
    /// directory).
    fn replace(path: &Path, records: &[u8], sync: bool) -> io::Result<Store> {
        let tmp = path.with_extension("tmp");
        {
            let mut file = File::create(&tmp)?;
            file.write_all(records)?;
            blocking::sync_all(&file)?;
        }
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            blocking::sync_all(&File::open(dir)?)?;
        }
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(Store {
            path: path.to_owned(),
            file,
            len: records.len() as u64,
            compact_len: records.len() as u64,
            sync,
        })
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        if self.sync {
            blocking::sync_data(&self.file)?;
        }
        self.len += bytes.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::event::{Event, EventDraft, Target};
    use crate::values::pattern::Pattern;
    use crate::values::topic::Topic;

    fn settings(max: usize) -> InboxSettings {
        InboxSettings {
            max_per_user: max,
            max_age_ms: 0,
            sync: false,
        }
    }

    fn direct(id: u64, users: &[&str], ack: bool) -> SharedEvent {
        let draft = EventDraft {
            data: format!("e{id}"),
            target: Target {
                users: users.iter().map(|u| u.to_string()).collect(),
                ..Default::default()
            },
            require_ack: ack,
            ..Default::default()
        };
        Arc::new(Event::commit(draft, EventId(id), now_ms()))
    }

    fn selector(user: &str, patterns: &[&str]) -> Selector {
        Selector {
            connection_id: "c1".into(),
            patterns: patterns
                .iter()
                .map(|p| Pattern::parse(p).unwrap())
                .collect(),
            event_types: None,
            user: Some(user.into()),
            meta: Default::default(),
        }
    }

    fn ids(events: &[SharedEvent]) -> Vec<u64> {
        events.iter().map(|e| e.id.0).collect()
    }

    #[test]
    fn offline_messages_wait_until_delivered_acks_until_acked() {
        let inboxes = Inboxes::in_memory(settings(10));
        let online = |u: &str| u == "bob";
        inboxes.offer(&direct(1, &["alice", "bob"], false), online);
        inboxes.offer(&direct(2, &["alice", "bob"], true), online);
        let alice = selector("alice", &[]);
        let bob = selector("bob", &[]);
        assert_eq!(
            ids(&inboxes.waiting_for("alice", &alice, EventId(9))),
            [1, 2]
        );
        assert_eq!(ids(&inboxes.waiting_for("bob", &bob, EventId(9))), [2]);
        // Only what was dispatched before the connection joined.
        assert_eq!(ids(&inboxes.waiting_for("alice", &alice, EventId(1))), [1]);
        inboxes.delivered("alice", &[EventId(1), EventId(2)]);
        assert_eq!(ids(&inboxes.waiting_for("alice", &alice, EventId(9))), [2]);
        let outcome = inboxes.ack("alice", &[EventId(2), EventId(7)]);
        assert_eq!(outcome.acked, [EventId(2)]);
        assert_eq!(outcome.unknown, [EventId(7)]);
        assert!(inboxes.waiting_for("alice", &alice, EventId(9)).is_empty());
        // Bob's acknowledgement is his own.
        assert_eq!(ids(&inboxes.waiting_for("bob", &bob, EventId(9))), [2]);
        let t = inboxes.totals();
        assert_eq!((t.waiting, t.acked, t.delivered), (1, 1, 1));
    }

    #[test]
    fn a_full_inbox_drops_its_oldest_and_counts() {
        let inboxes = Inboxes::in_memory(settings(3));
        for id in 1..=5 {
            inboxes.offer(&direct(id, &["alice"], false), |_| false);
        }
        let alice = selector("alice", &[]);
        assert_eq!(
            ids(&inboxes.waiting_for("alice", &alice, EventId(9))),
            [3, 4, 5]
        );
        assert_eq!(inboxes.user_counts("alice").dropped, 2);
        assert_eq!(inboxes.totals().dropped, 2);
    }

    #[test]
    fn only_what_the_connection_would_receive_live() {
        let inboxes = Inboxes::in_memory(settings(10));
        let draft = EventDraft {
            topics: vec![Topic::new("chat/a").unwrap()],
            target: Target {
                users: vec!["alice".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        inboxes.offer(&Arc::new(Event::commit(draft, EventId(1), 0)), |_| false);
        assert!(inboxes
            .waiting_for("alice", &selector("alice", &["news"]), EventId(9))
            .is_empty());
        assert_eq!(
            ids(&inboxes.waiting_for("alice", &selector("alice", &["chat/*"]), EventId(9))),
            [1]
        );
    }

    #[test]
    fn expiry_by_ttl_and_age() {
        let mut s = settings(10);
        s.max_age_ms = 60_000;
        let inboxes = Inboxes::in_memory(s);
        let mut draft = EventDraft {
            target: Target {
                users: vec!["alice".into()],
                ..Default::default()
            },
            ttl_secs: Some(5),
            ..Default::default()
        };
        let now = now_ms();
        inboxes.offer(
            &Arc::new(Event::commit(draft.clone(), EventId(1), now)),
            |_| false,
        );
        draft.ttl_secs = None;
        inboxes.offer(&Arc::new(Event::commit(draft, EventId(2), now)), |_| false);
        inboxes.sweep(now + 6_000);
        assert_eq!(inboxes.totals().waiting, 1);
        inboxes.sweep(now + 61_000);
        let t = inboxes.totals();
        assert_eq!((t.waiting, t.expired), (0, 2));
    }

    /// What the file holds now, read as a start would read it.
    fn on_disk(path: &Path) -> State {
        let mut state = State::default();
        state.replay_records(&std::fs::read(path).unwrap(), 10, path);
        state
    }

    #[tokio::test]
    async fn written_returns_once_the_changes_are_in_the_file() {
        use futures_util::FutureExt;
        let dir = std::env::temp_dir().join(format!("herald-inbox-w-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("inbox.log");
        let _ = std::fs::remove_file(&path);
        let mut s = settings(10);
        s.sync = true;
        let inboxes = Inboxes::open(&path, s).unwrap();
        // The test holds the file: no write can land, so `written` waits.
        let file = inboxes.core.store.as_ref().unwrap().lock();
        inboxes.offer(&direct(1, &["alice"], true), |_| false);
        let mut written = Box::pin(inboxes.written());
        assert!((&mut written).now_or_never().is_none());
        drop(file);
        written.await.unwrap();
        assert_eq!(on_disk(&path).held, 1);
        let outcome = inboxes.ack("alice", &[EventId(1)]);
        assert_eq!(outcome.acked, [EventId(1)]);
        inboxes.written().await.unwrap();
        assert_eq!(on_disk(&path).held, 0);
        assert!(inboxes.health().is_ok());
        drop(inboxes);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_file_brings_everything_back_and_cuts_a_torn_tail() {
        let dir = std::env::temp_dir().join(format!("herald-inbox-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("inbox.log");
        let _ = std::fs::remove_file(&path);
        {
            let inboxes = Inboxes::open(&path, settings(10)).unwrap();
            inboxes.offer(&direct(1, &["alice"], false), |_| false);
            inboxes.offer(&direct(2, &["alice", "bob"], true), |_| true);
            inboxes.offer(&direct(3, &["alice"], false), |_| false);
            inboxes.flush().unwrap();
            inboxes.ack("bob", &[EventId(2)]);
            inboxes.delivered("alice", &[EventId(3)]);
            inboxes.offer(&direct(4, &["carol"], false), |_| false);
            inboxes.flush().unwrap();
        }
        // A crash in the middle of a write.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        drop(file);
        let inboxes = Inboxes::open(&path, settings(10)).unwrap();
        let alice = selector("alice", &[]);
        let waiting = inboxes.waiting_for("alice", &alice, EventId(9));
        assert_eq!(ids(&waiting), [1, 2]);
        assert_eq!(&*waiting[1].data, "e2");
        assert!(waiting[1].require_ack);
        assert!(inboxes
            .waiting_for("bob", &selector("bob", &[]), EventId(9))
            .is_empty());
        assert_eq!(inboxes.user_counts("carol").offline, 1);
        assert_eq!(inboxes.user_counts("alice").pending_acks, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
