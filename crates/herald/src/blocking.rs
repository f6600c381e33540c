//! What may wait, and where: the order in which the hub's locks nest, and
//! the threads that may wait for the disk. Both rules are checked on every
//! lock and every sync in debug builds (so by every test run), and cost
//! nothing in release builds.
//!
//! **The lock order.** The locks a publish or a subscribe needs, in the one
//! order they nest: a thread takes one only while it holds none that comes
//! later in this list (nor the same one again).
//!
//! 1. [`Lock::History`]: the log's history index (`log::memory::Inner`).
//!    The durable log's committer holds it while it hands a group to
//!    fan-out; every replay page and every resume check takes it.
//! 2. [`Lock::Registry`]: fan-out's registry of connections, read while a
//!    batch is dispatched, written while a connection registers.
//! 3. [`Lock::InboxFile`]: the inbox file, held by whoever writes it.
//! 4. [`Lock::InboxState`]: what waits in the inboxes. Dispatch takes it
//!    under 1 and 2 to hold an event for a user; the writer takes it under
//!    3 to collect the records not yet written.
//!
//! Not listed, because nothing is taken under them: a connection's queue
//! and patterns (taken under 2), the rate limiter's shards, the JWKS cache,
//! metrics. The state map (`state.rs`) is an async lock held across a log
//! append, so it comes before all of them.
//!
//! **The disk.** A file is synced (`fsync`) only
//!
//! * on a thread that exists to wait for the disk: the journal's committer,
//!   the inbox writer, tokio's blocking pool, or a thread outside any
//!   runtime (a test, or the start before the hub serves). Never on a
//!   runtime worker, where every task queued behind it would wait too;
//! * while holding none of the locks above but the file's own
//!   ([`Lock::InboxFile`]). A publish, a replay or a registration that
//!   needs one of them must never wait for a disk.

use std::fs::File;
use std::io;
use std::ops::{Deref, DerefMut};

/// The hub's locks, in the order they nest (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Lock {
    History,
    Registry,
    InboxFile,
    InboxState,
}

#[cfg(debug_assertions)]
const LOCKS: [Lock; 4] = [
    Lock::History,
    Lock::Registry,
    Lock::InboxFile,
    Lock::InboxState,
];

#[cfg(debug_assertions)]
thread_local! {
    /// How many times this thread holds each lock now.
    static HELD: std::cell::Cell<[u32; 4]> = const { std::cell::Cell::new([0; 4]) };
    /// This thread exists to wait for the disk.
    static DISK_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A lock's guard that knows the lock's place in the order: made by
/// [`Ordered::take`], which checks the order, and forgotten by this
/// thread's books when dropped (after the guard itself).
pub(crate) struct Ordered<G> {
    guard: G,
    _held: Held,
}

impl<G> Ordered<G> {
    /// Takes `lock` with `take` (which locks and returns its guard).
    /// Debug builds panic if this thread holds `lock` or a later one.
    pub(crate) fn take(lock: Lock, take: impl FnOnce() -> G) -> Ordered<G> {
        let held = Held::new(lock);
        Ordered {
            guard: take(),
            _held: held,
        }
    }
}

impl<G: Deref> Deref for Ordered<G> {
    type Target = G::Target;
    fn deref(&self) -> &G::Target {
        &self.guard
    }
}

impl<G: DerefMut> DerefMut for Ordered<G> {
    fn deref_mut(&mut self) -> &mut G::Target {
        &mut self.guard
    }
}

/// This thread's note that it holds a lock.
struct Held {
    #[cfg(debug_assertions)]
    lock: Lock,
}

impl Held {
    #[cfg_attr(not(debug_assertions), allow(unused_variables))]
    fn new(lock: Lock) -> Held {
        #[cfg(debug_assertions)]
        HELD.with(|held| {
            let mut counts = held.get();
            if let Some(later) = LOCKS[lock as usize..]
                .iter()
                .find(|l| counts[**l as usize] > 0)
            {
                panic!("lock order broken: {lock:?} taken while this thread holds {later:?}");
            }
            counts[lock as usize] += 1;
            held.set(counts);
        });
        Held {
            #[cfg(debug_assertions)]
            lock,
        }
    }
}

#[cfg(debug_assertions)]
impl Drop for Held {
    fn drop(&mut self) {
        HELD.with(|held| {
            let mut counts = held.get();
            counts[self.lock as usize] -= 1;
            held.set(counts);
        });
    }
}

/// Marks the calling thread as one that exists to wait for the disk (a
/// committer, a writer, a task of tokio's blocking pool).
pub(crate) fn disk_thread() {
    #[cfg(debug_assertions)]
    DISK_THREAD.with(|d| d.set(true));
}

/// Runs `start` as a thread that may wait for the disk: opening and
/// recovering files before the hub serves, when the caller may be a
/// runtime's task.
pub(crate) fn at_start<T>(start: impl FnOnce() -> T) -> T {
    #[cfg(debug_assertions)]
    {
        let was = DISK_THREAD.with(|d| d.replace(true));
        let out = start();
        DISK_THREAD.with(|d| d.set(was));
        out
    }
    #[cfg(not(debug_assertions))]
    start()
}

/// `file.sync_data()`, where the rules above allow it.
pub(crate) fn sync_data(file: &File) -> io::Result<()> {
    check_disk_wait();
    file.sync_data()
}

/// `file.sync_all()`, where the rules above allow it.
pub(crate) fn sync_all(file: &File) -> io::Result<()> {
    check_disk_wait();
    file.sync_all()
}

/// Debug builds panic when this thread may not wait for the disk now.
fn check_disk_wait() {
    #[cfg(debug_assertions)]
    {
        let counts = HELD.with(|h| h.get());
        if let Some(lock) = LOCKS
            .iter()
            .find(|l| **l != Lock::InboxFile && counts[**l as usize] > 0)
        {
            panic!("a file synced while this thread holds {lock:?}");
        }
        let may_wait = DISK_THREAD.with(|d| d.get());
        if !may_wait && tokio::runtime::Handle::try_current().is_ok() {
            panic!("a file synced on a runtime's worker thread");
        }
    }
}

#[cfg(all(test, debug_assertions))]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn file() -> File {
        tempfile_in_target()
    }

    fn tempfile_in_target() -> File {
        let path = std::env::temp_dir().join(format!(
            "herald-blocking-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let file = File::create(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        file
    }

    #[test]
    fn locks_nest_in_order_and_are_forgotten_when_dropped() {
        let a = Mutex::new(());
        let b = Mutex::new(());
        {
            let _history = Ordered::take(Lock::History, || a.lock().unwrap());
            let _registry = Ordered::take(Lock::Registry, || b.lock().unwrap());
        }
        // Both let go: the registry alone, then history, is fine again.
        let registry = Ordered::take(Lock::Registry, || b.lock().unwrap());
        drop(registry);
        let _history = Ordered::take(Lock::History, || a.lock().unwrap());
    }

    #[test]
    #[should_panic(expected = "lock order broken: History taken while this thread holds Registry")]
    fn an_earlier_lock_under_a_later_one_panics() {
        let a = Mutex::new(());
        let b = Mutex::new(());
        let _registry = Ordered::take(Lock::Registry, || b.lock().unwrap());
        let _history = Ordered::take(Lock::History, || a.lock().unwrap());
    }

    #[test]
    #[should_panic(expected = "a file synced while this thread holds History")]
    fn a_sync_under_a_hot_lock_panics() {
        let a = Mutex::new(());
        let _history = Ordered::take(Lock::History, || a.lock().unwrap());
        let _ = sync_data(&file());
    }

    #[test]
    fn a_sync_under_the_files_own_lock_is_fine() {
        let a = Mutex::new(());
        let _file = Ordered::take(Lock::InboxFile, || a.lock().unwrap());
        sync_data(&file()).unwrap();
    }

    #[test]
    #[should_panic(expected = "a file synced on a runtime's worker thread")]
    fn a_sync_on_a_worker_panics() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let _ = sync_data(&file());
        });
    }

    #[test]
    fn a_sync_on_the_blocking_pool_or_at_start_is_fine() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            at_start(|| sync_data(&file())).unwrap();
            tokio::task::spawn_blocking(|| {
                disk_thread();
                sync_data(&file())
            })
            .await
            .unwrap()
            .unwrap();
        });
    }
}
