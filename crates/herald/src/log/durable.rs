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

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::journal::{Journal, JournalError};
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
        let (journal, recovered) = Journal::open(&dir.join("log"))?;
        // A new journal starts its ids at the start time in µs, as the
        // in-memory log does: after a wiped data directory, ids clients
        // still hold fall below the new ones and get `herald.reset`.
        let fresh = recovered.events.is_empty() && recovered.floor == 0 && recovered.reserved == 0;
        let first_id = if fresh {
            now_ms().saturating_mul(1000).max(1)
        } else {
            1
        };
        let mut inner = Inner::new(settings, first_id);
        inner.set_floor(recovered.floor);
        // Continue above every id an earlier run may have handed out.
        inner.advance(recovered.reserved);
        let events_read = recovered.events.len();
        for event in recovered.events {
            inner.restore(Arc::new(event));
        }
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
                Ok(()) => {
                    if failure
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take()
                        .is_some()
                    {
                        tracing::info!("journal writes succeed again");
                    }
                    inner.apply(&events);
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
        Ok(lock(&self.inner).read(&request, now_ms()))
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
