//! The durable log: the in-memory index of `memory.rs` for every read, and
//! the [`Journal`] on disk so that an acknowledged publish survives a crash.
//!
//! Appends go to one committer thread. It takes every append waiting
//! (group commit), gives the events their ids, writes them as one batch and
//! syncs once, and only then makes them readable, answers the publishers
//! and hands the events to fan-out. Answering first keeps a publisher's task
//! ahead of the thousands of writer tasks fan-out wakes (hyper reads a
//! connection's next request only after answering the last); a group with
//! events for users' inboxes is answered after fan-out, which writes their
//! inbox records. So no subscriber ever sees an event that a crash
//! could take back, and ids are never reused: a failed write burns its ids.
//!
//! `history.fsync`: `batch` (default) syncs once per group, `always` once per
//! append call (no grouping), `never` leaves syncing to the OS (a crash of
//! the machine, not of the hub, may lose the last writes).
//!
//! At start the journal is read back in id order through the same retention
//! as live appends, which rebuilds history, per-topic eviction marks and
//! idempotency keys exactly; ids continue after the highest found. Segments
//! whose every event has left history are deleted as appends go on.
//!
//! Only the newest `history.hot_bytes` of history are held whole in memory;
//! the index keeps older events by their place in the journal, and a read
//! that reaches them reads them back off the runtime's threads.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::journal::{Journal, JournalError, Segments};
use super::memory::{lock, Inner, MemoryLogSettings};
use super::{now_ms, Appended, CommitSink, Coverage, EventLog, LogError, ReadRequest};
use crate::values::event::{EventDraft, EventId, SharedEvent};
use crate::values::selector::Selector;

/// Most appends one group commit takes.
const MAX_GROUP: usize = 512;

/// Why the durable log could not open: the hub does not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds the directory's lock.
    #[error("data directory {0} is in use by another Herald process")]
    Locked(PathBuf),
    /// The directory could not be created or read.
    #[error("cannot open data directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The journal could not be read back.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// When the journal syncs (`history.fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fsync {
    /// Sync every publish before acknowledging it.
    Always,
    /// Acknowledge after the sync that covers it; concurrent publishes share
    /// one sync.
    Batch,
    /// Leave syncing to the operating system.
    Never,
}

struct Job {
    drafts: Vec<EventDraft>,
    reply: oneshot::Sender<Result<Vec<Appended>, LogError>>,
}

/// The single-node durable log: the in-memory index of [`MemoryLog`](super::MemoryLog) in
/// front of an append-only journal on disk, written by one committer
/// thread that syncs as `history.fsync` says.
pub struct DurableLog {
    inner: Arc<Mutex<Inner>>,
    sink: Arc<OnceLock<Arc<dyn CommitSink>>>,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    /// Why the last write failed; `None` once a write succeeds.
    failure: Arc<Mutex<Option<String>>>,
    /// The journal's files, to read back events held by their place.
    files: Arc<Segments>,
    /// Held for the life of the log: one process per data directory.
    _lock: std::fs::File,
}

/// What opening found, for the start-up log line.
#[derive(Debug, Clone, Copy)]
pub struct OpenReport {
    /// Events read back from the journal.
    pub events_read: usize,
    /// Of those, events still retained (unexpired, within the caps).
    pub retained: usize,
    /// Bytes cut from the end of the last segment (a torn last write).
    pub cut_bytes: u64,
    /// The id the next event will get, at least.
    pub next_id: u64,
}

impl DurableLog {
    /// Opens (or creates) the journal in `dir`, reads it back, and starts
    /// the committer thread.
    pub fn open(
        dir: &Path,
        settings: MemoryLogSettings,
        fsync: Fsync,
    ) -> Result<(DurableLog, OpenReport), OpenError> {
        let dir_err = |source| OpenError::Dir {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(dir_err)?;
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))
            .map_err(dir_err)?;
        if lock_file.try_lock().is_err() {
            return Err(OpenError::Locked(dir.to_owned()));
        }
        // Each event goes through retention as it is read, held by its
        // place only (its text is not even copied out of the file); the
        // newest are then read back whole, as many as `hot_bytes` allows.
        let mut inner = Inner::new(settings, 1);
        let (journal, recovered) = Journal::open(&dir.join("log"), |record, place| {
            inner.restore_cold(record, place)
        })?;
        // A new journal starts its ids at the start time in µs, as the
        // in-memory log does: after a wiped data directory, ids clients
        // still hold fall below the new ones and get `herald.reset`.
        if recovered.events == 0 && recovered.floor == 0 && recovered.reserved == 0 {
            inner = Inner::new(settings, now_ms().saturating_mul(1000).max(1));
        }
        inner.set_floor(recovered.floor);
        // Continue above every id an earlier run may have handed out.
        inner.advance(recovered.reserved);
        inner.warm(&journal.files());
        let events_read = recovered.events;
        let ahead = inner.last_ms().saturating_sub(now_ms());
        if ahead > 60_000 {
            // Times never go back along the log (`since=` searches by them),
            // so new events carry the stored time until the clock catches up.
            tracing::warn!(
                ahead_secs = ahead / 1000,
                "the journal's last event is later than this machine's clock; new events keep its time until the clock passes it"
            );
        }
        inner.sweep(now_ms());
        let report = OpenReport {
            events_read,
            retained: inner.len(),
            cut_bytes: recovered.cut_bytes,
            next_id: inner.next_id(),
        };
        let inner = Arc::new(Mutex::new(inner));
        let files = journal.files();
        let sink: Arc<OnceLock<Arc<dyn CommitSink>>> = Arc::new(OnceLock::new());
        let (tx, rx) = mpsc::channel();
        let failure = Arc::new(Mutex::new(None));
        let committer = Committer {
            inner: inner.clone(),
            sink: sink.clone(),
            failure: failure.clone(),
            fsync,
        };
        std::thread::Builder::new()
            .name("herald-commit".into())
            .spawn(move || committer.run(rx, journal))
            .map_err(dir_err)?;
        Ok((
            DurableLog {
                inner,
                sink,
                jobs: Mutex::new(Some(tx)),
                failure,
                files,
                _lock: lock_file,
            },
            report,
        ))
    }
}

/// The committer thread's share of the log.
struct Committer {
    inner: Arc<Mutex<Inner>>,
    sink: Arc<OnceLock<Arc<dyn CommitSink>>>,
    failure: Arc<Mutex<Option<String>>>,
    fsync: Fsync,
}

impl Committer {
    /// Group, prepare, write, sync, apply, hand over, answer.
    fn run(self, jobs: mpsc::Receiver<Job>, mut journal: Journal) {
        let Committer {
            inner,
            sink,
            failure,
            fsync,
        } = self;
        crate::blocking::disk_thread();
        while let Ok(first) = jobs.recv() {
            let mut group = vec![first];
            if fsync != Fsync::Always {
                while group.len() < MAX_GROUP {
                    match jobs.try_recv() {
                        Ok(job) => group.push(job),
                        Err(_) => break,
                    }
                }
            }
            let mut prepared = Vec::with_capacity(group.len());
            {
                let mut inner = lock(&inner);
                for job in &mut group {
                    prepared.push(inner.prepare(std::mem::take(&mut job.drafts)));
                }
            }
            let events: Vec<SharedEvent> = prepared
                .iter()
                .flat_map(|(_, e)| e.iter().cloned())
                .collect();
            let written = journal.append(&events, fsync != Fsync::Never);
            let mut inner = lock(&inner);
            match written {
                Ok(places) => {
                    if failure
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take()
                        .is_some()
                    {
                        tracing::info!("journal writes succeed again");
                    }
                    inner.apply_placed(&events, &places);
                    // Readable now. Publishers are answered before fan-out
                    // wakes the subscribers' writers, so that their tasks run
                    // first and the next publish on their connections is not
                    // read only after every writer has run. Not when the
                    // group holds events for users' inboxes: fan-out holds
                    // them there first, so that the publisher's wait for the
                    // inbox file (`Hub::publish_as`) covers them.
                    let for_inboxes = events
                        .iter()
                        .any(|e| !e.target.users.is_empty() && !e.target.broadcast);
                    let mut replies: Vec<_> = group
                        .into_iter()
                        .zip(prepared)
                        .map(|(job, (appended, _))| (job.reply, appended))
                        .collect();
                    if !for_inboxes {
                        for (reply, appended) in replies.drain(..) {
                            let _ = reply.send(Ok(appended));
                        }
                    }
                    if !events.is_empty() {
                        if let Some(sink) = sink.get() {
                            sink.committed(&events);
                        }
                    }
                    let oldest = inner.oldest_id().unwrap_or(inner.next_id());
                    drop(inner);
                    for (reply, appended) in replies {
                        let _ = reply.send(Ok(appended));
                    }
                    if let Err(err) = journal.retire_below(oldest) {
                        tracing::warn!(%err, "could not delete old journal segments");
                    }
                }
                Err(err) => {
                    inner.forget(&events);
                    drop(inner);
                    tracing::error!(%err, "journal write failed; publishes refused");
                    *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(err.to_string());
                    for job in group {
                        let _ = job.reply.send(Err(LogError::Unavailable(err.to_string())));
                    }
                }
            }
        }
    }
}

impl Drop for DurableLog {
    fn drop(&mut self) {
        // Closing the channel ends the committer after its current group.
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

#[async_trait]
impl EventLog for DurableLog {
    fn attach(&self, sink: Arc<dyn CommitSink>) -> EventId {
        if self.sink.set(sink).is_err() {
            panic!("DurableLog::attach called twice");
        }
        super::memory::spawn_sweeper(Arc::downgrade(&self.inner));
        // Nothing is appended before attach, so this is the recovered head.
        EventId(lock(&self.inner).next_id() - 1)
    }

    async fn append(&self, drafts: Vec<EventDraft>) -> Result<Vec<Appended>, LogError> {
        let (reply, answer) = oneshot::channel();
        let sent = match &*self.jobs.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(jobs) => jobs.send(Job { drafts, reply }).is_ok(),
            None => false,
        };
        if !sent {
            return Err(LogError::Unavailable("the journal is closed".into()));
        }
        answer
            .await
            .map_err(|_| LogError::Failed("the journal writer stopped".into()))?
    }

    async fn read(&self, request: ReadRequest<'_>) -> Result<super::Page, LogError> {
        let now = now_ms();
        let gathered = lock(&self.inner).gather(&request, now);
        let cold = gathered.cold();
        if cold.is_empty() {
            return Ok(gathered.into_page(&[], |_| true));
        }
        let files = self.files.clone();
        let loaded = tokio::task::spawn_blocking(move || files.read(&cold))
            .await
            .map_err(|e| LogError::Failed(format!("reading the journal failed: {e}")))?;
        let loaded: Vec<SharedEvent> = loaded.into_iter().map(Arc::new).collect();
        Ok(gathered.into_page(&loaded, |e| !e.is_expired(now) && request.selector.wants(e)))
    }

    async fn coverage(&self, after: EventId, selector: &Selector) -> Result<Coverage, LogError> {
        Ok(lock(&self.inner).coverage(after, selector))
    }

    fn health(&self) -> Result<(), String> {
        match &*self.failure.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(err) => Err(format!("the last journal write failed: {err}")),
            None => Ok(()),
        }
    }

    fn retention(&self) -> super::memory::Retention {
        lock(&self.inner).retention()
    }

    fn kind(&self) -> &'static str {
        "journal"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{read_all, MemoryLog, ReadFrom};
    use crate::values::pattern::Pattern;
    use crate::values::topic::Topic;

    struct Nothing;
    impl CommitSink for Nothing {
        fn committed(&self, _: &[SharedEvent]) {}
    }

    fn settings(hot_bytes: u64) -> MemoryLogSettings {
        MemoryLogSettings {
            hot_bytes,
            ..MemoryLogSettings::unbounded(300)
        }
    }

    fn selector(patterns: &[&str], types: Option<&str>) -> Selector {
        Selector {
            connection_id: "c".into(),
            patterns: patterns
                .iter()
                .map(|p| Pattern::parse(p).unwrap())
                .collect(),
            event_types: types.map(|t| vec![t.into()]),
            user: None,
            meta: Default::default(),
        }
    }

    /// The `i`th event of the mixed workload: topics exact, nested and
    /// shared, presence announcements, broadcasts, events that expire at
    /// once, and a rare type that most reads filter out.
    fn draft(i: usize) -> EventDraft {
        let topic = match i % 3 {
            0 => format!("room/{}", i % 50),
            1 => format!("other/{}/x", i % 7),
            _ => format!("deep/{}/{}", i % 5, i % 11),
        };
        let mut d = EventDraft {
            topics: vec![Topic::new(&topic).unwrap()],
            data: i.to_string(),
            event_type: Some(
                if i.is_multiple_of(97) {
                    "rare"
                } else {
                    "common"
                }
                .into(),
            ),
            ..Default::default()
        };
        if i.is_multiple_of(5) {
            d.topics.push(Topic::new("room/1").unwrap());
        }
        if i.is_multiple_of(13) {
            d.event_type = Some(crate::log::PRESENCE_EVENT.into());
            d.topics.truncate(1);
        }
        if i.is_multiple_of(101) {
            d.topics = match i.is_multiple_of(202) {
                true => vec![],
                false => vec![Topic::new("zz").unwrap()],
            };
            d.target.broadcast = true;
        }
        if i.is_multiple_of(9) {
            d.ttl_secs = Some(0);
        }
        d
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("herald-durable-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// Every read and every coverage answer of a journal whose history is
    /// mostly on disk only is what the same history held whole in memory
    /// gives: by topic, wildcard and whole-log reads, forward and from the
    /// end, with filters that reject most of what is read back; also after
    /// a restart rebuilt the index from the journal.
    #[tokio::test]
    async fn history_on_disk_reads_as_history_in_memory() {
        const N: usize = 6000;
        let whole = MemoryLog::new(settings(u64::MAX));
        whole.attach(Arc::new(Nothing));
        let dir = temp_dir("cold");
        let (cold, _) = open(&dir);
        let (mut ids_whole, mut ids_cold) = (Vec::new(), Vec::new());
        for start in (0..N).step_by(100) {
            let batch: Vec<EventDraft> = (start..start + 100).map(draft).collect();
            let a = whole.append(batch.clone()).await.unwrap();
            let b = cold.append(batch).await.unwrap();
            ids_whole.extend(a.iter().map(|a| a.id));
            ids_cold.extend(b.iter().map(|a| a.id));
        }
        let now = now_ms() + 5;
        lock(&whole.inner_for_tests()).sweep(now);
        lock(&cold.inner).sweep(now);
        let retention = cold.retention();
        assert!(
            retention.cold_events > retention.events / 2,
            "most of history is on disk only: {retention:?}"
        );
        assert_eq!(retention.events, whole.retention().events);
        compare(&whole, &ids_whole, &cold, &ids_cold).await;
        drop(cold);
        let (cold, report) = open(&dir);
        assert_eq!(report.events_read, N);
        lock(&cold.inner).sweep(now);
        assert!(cold.retention().cold_events > 0);
        compare(&whole, &ids_whole, &cold, &ids_cold).await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A journal holding 64 KiB of history whole, opened off the runtime
    /// (opening syncs files).
    fn open(dir: &Path) -> (DurableLog, OpenReport) {
        crate::blocking::at_start(|| {
            DurableLog::open(dir, settings(64 << 10), Fsync::Never).unwrap()
        })
    }

    async fn compare(
        whole: &MemoryLog,
        ids_whole: &[EventId],
        cold: &DurableLog,
        ids_cold: &[EventId],
    ) {
        let selectors = [
            selector(&["room/1", "deep/3/4"], None),
            selector(&["room/*"], None),
            selector(&["*/3/x", "room/1"], None),
            selector(&["deep/**", "room/7"], None),
            selector(&["**"], None),
            selector(&["**"], Some("rare")),
            selector(&["room/*", "*/*/x"], Some("rare")),
        ];
        let data = |events: Vec<SharedEvent>| -> Vec<String> {
            events.iter().map(|e| e.data.to_string()).collect()
        };
        let n = ids_whole.len();
        for sel in &selectors {
            for (from, limit) in [
                (Some(ReadFrom::Last(5)), 100),
                (Some(ReadFrom::Last(1000)), 1000),
                (Some(ReadFrom::Last(50)), 20),
                (None, 100),
                (Some(ReadFrom::Since(0)), 50),
                (Some(ReadFrom::After(EventId(0))), 100),
            ] {
                for (at, until) in [(n / 2, n - 1), (n - 10, n - 1), (0, n / 3)] {
                    let request = |ids: &[EventId]| ReadRequest {
                        from: from.unwrap_or(ReadFrom::After(ids[at])),
                        until: ids[until],
                        limit,
                        selector: sel,
                    };
                    let expected = data(read_all(whole, request(ids_whole)).await.unwrap());
                    let got = data(read_all(cold, request(ids_cold)).await.unwrap());
                    assert_eq!(
                        got, expected,
                        "{:?} {from:?} {limit} {at} {until}",
                        sel.patterns
                    );
                }
            }
            for at in [0, n / 4, n / 2, n - 2] {
                assert_eq!(
                    cold.coverage(ids_cold[at], sel).await.unwrap(),
                    whole.coverage(ids_whole[at], sel).await.unwrap(),
                    "{:?} after {at}",
                    sel.patterns
                );
            }
        }
    }
}
