//! The on-disk journal of the durable log: append-only segment files.
//!
//! Each record is `[u32 length][u32 CRC-32 of the body][body]`, the body the
//! JSON of one committed event. A batch of records is one `write` and, with
//! `fsync = batch|always`, one `fdatasync`. Files are named after the first
//! id they hold and roll over at [`SEGMENT_BYTES`]; a whole file is deleted
//! once every event in it has left history, and the highest id ever deleted
//! is kept in `floor` so that older Last-Event-IDs are still answered with
//! `herald.reset`.
//!
//! Ids are reserved ahead of use: before a write hands out an id above the
//! mark in `reserved`, the mark moves [`RESERVE_STEP`] ids further (a small
//! synced file write, once per million ids). After any restart the log
//! continues above the mark, so no id a client may hold — an event a crash
//! took before `fsync`, a record skipped as unreadable — is issued again.
//!
//! Each event's place (segment, offset, size) is handed to the index, which
//! keeps only the place of events older than its hot window and reads them
//! back through [`Segments`] when asked for them.
//!
//! A cluster node keeps the same files as its copy of the engine's log
//! ([`Journal::open_copy`]): written the same way, but never synced and
//! without marks, since the engine is the store of record.
//!
//! With syncing on, the open segment keeps [`ZERO_AHEAD`] bytes of zeros,
//! written and synced, past its last record: a batch then overwrites blocks
//! the file already has, and its `fdatasync` writes those blocks alone,
//! without a commit of the file's size to the file system's journal (a
//! quarter less time and CPU per sync on this project's machine; DECISIONS,
//! "Zeros ahead of the journal"). Once a batch reaches into the zeros,
//! its write carries the next stretch of them. A segment is cut back to its
//! last record when the next one begins, so only the last segment ends in
//! zeros. A record's length is never 0 (its body is an event's JSON), so
//! the zeros read as the end of the records.
//!
//! Recovery reads every segment in order. A record cut short or failing its
//! CRC at the end of the *last* segment is a write that a crash interrupted:
//! the file is cut back to the last whole record, and the log says how many
//! bytes went; zeros alone after the last record are the zeros ahead, kept.
//! The same anywhere else means the disk lost data the hub had
//! acknowledged: the hub refuses to start rather than serve a history with a
//! hole in it.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use super::head::{RecordHead, Span};
use crate::blocking;
use crate::values::event::{Event, EventDraft, EventId};

/// A segment is closed and a new one begun past this size.
pub(crate) const SEGMENT_BYTES: u64 = 64 << 20;
const HEADER: usize = 8;
/// Zeros kept written past the open segment's last record when syncing
/// (see the module docs). A batch that reaches them writes this many more
/// with its records: one sync in each stretch (256 KiB of records) costs
/// about four plain ones, the others a quarter less than an append's.
pub(crate) const ZERO_AHEAD: u64 = 256 << 10;
/// How many ids one move of the `reserved` mark covers.
pub(crate) const RESERVE_STEP: u64 = 1 << 20;
/// A record larger than this is damage, not data (events are at most a few
/// hundred KiB; see `limits.max_event_bytes`).
const MAX_RECORD: usize = 64 << 20;

/// Why the journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path}: {source}")]
    /// A read or write of a journal file failed.
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    #[error("{path} is damaged at byte {offset}, before its end: acknowledged events would be lost; restore the data directory from a backup or move the file away to start with what precedes it")]
    /// A segment is damaged before its end (not a torn last write).
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Where the damage starts.
        offset: u64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One stored event: its id, publish time and the draft it came from.
#[derive(Serialize, Deserialize)]
#[serde(from = "FlatRecord")]
pub(crate) struct Record {
    pub id: u64,
    pub ts: u64,
    #[serde(flatten)]
    pub draft: EventDraft,
}

/// A [`Record`] as it is read: the draft's fields spelled out beside the
/// id, which reads several times faster than serde's `flatten` (that
/// buffers every field first). Missing and unknown fields are treated as
/// [`EventDraft`] treats them.
#[derive(Deserialize)]
struct FlatRecord {
    id: u64,
    ts: u64,
    topics: Vec<crate::values::topic::Topic>,
    event_type: Option<String>,
    data: String,
    target: crate::values::event::Target,
    ttl_secs: Option<u64>,
    coalesce_key: Option<String>,
    idempotency_key: Option<String>,
    #[serde(default)]
    require_ack: bool,
}

impl From<FlatRecord> for Record {
    fn from(r: FlatRecord) -> Record {
        Record {
            id: r.id,
            ts: r.ts,
            draft: EventDraft {
                topics: r.topics,
                event_type: r.event_type,
                data: r.data,
                target: r.target,
                ttl_secs: r.ttl_secs,
                coalesce_key: r.coalesce_key,
                idempotency_key: r.idempotency_key,
                require_ack: r.require_ack,
            },
        }
    }
}

/// A [`Record`] as it is written, borrowing the event's fields: the same
/// JSON, byte for byte, without copying the event into a draft first.
#[derive(Serialize)]
struct RecordRef<'a> {
    id: u64,
    ts: u64,
    topics: &'a [crate::values::topic::Topic],
    event_type: Option<&'a str>,
    data: &'a str,
    target: &'a crate::values::event::Target,
    ttl_secs: Option<u64>,
    coalesce_key: Option<&'a str>,
    idempotency_key: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    require_ack: bool,
}

impl<'a> RecordRef<'a> {
    fn of(event: &'a Event) -> RecordRef<'a> {
        RecordRef {
            id: event.id.0,
            ts: event.published_at_ms,
            topics: &event.topics,
            event_type: event.event_type.as_deref(),
            data: &event.data,
            target: &event.target,
            ttl_secs: event
                .expires_at_ms
                .map(|e| (e - event.published_at_ms) / 1000),
            coalesce_key: event.coalesce_key.as_deref(),
            idempotency_key: event.idempotency_key.as_deref(),
            require_ack: event.require_ack,
        }
    }
}

/// Appends `event` to `out` as one record (see [`frame`]), its JSON
/// written in place: what the journal writes.
pub(crate) fn frame_event(event: &Event, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    serde_json::to_writer(&mut *out, &RecordRef::of(event)).expect("events serialize");
    seal(out, start);
}

impl Record {
    pub(crate) fn of(event: &Event) -> Record {
        Record {
            id: event.id.0,
            ts: event.published_at_ms,
            draft: event.to_draft(),
        }
    }

    pub(crate) fn into_event(self) -> Event {
        Event::commit(self.draft, EventId(self.id), self.ts)
    }
}

/// One record as recovery hands it over: its head (text borrowed from
/// the record, or spans of its segment between threads), or, when the
/// head could not be read alone, the whole event.
pub(crate) enum Recovering<S> {
    Head(RecordHead<S>),
    Whole(Event),
}

impl<S> Recovering<S> {
    fn id(&self) -> u64 {
        match self {
            Recovering::Head(head) => head.id,
            Recovering::Whole(event) => event.id.0,
        }
    }
}

/// Where one record lies: the segment is the one whose name (its first id)
/// is the greatest at or below the record's id, so only the offset and
/// size are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Place {
    /// The record's first byte (its header) in its segment.
    pub offset: u32,
    /// The record's size, header included.
    pub len: u32,
}

impl Place {
    /// An event a cluster engine holds: it has no place of its own, the
    /// engine gives it back by its id (a Redis stream id, a NATS sequence
    /// and index).
    #[cfg(any(feature = "redis", feature = "nats"))]
    pub(crate) const BY_ID: Place = Place { offset: 0, len: 0 };
    /// A cold event kept whole, which is never read back.
    pub(crate) const UNPLACED: Place = Place {
        offset: u32::MAX,
        len: 0,
    };
}

/// The segment files, open for reading, by the first id each may hold:
/// shared by the journal (which adds and retires them) and the readers of
/// events that are on disk only. A reader holding a file can finish its
/// read after the segment is retired.
#[derive(Default)]
pub(crate) struct Segments(RwLock<BTreeMap<u64, Arc<File>>>);

impl Segments {
    fn add(&self, first_id: u64, path: &Path) -> Result<(), JournalError> {
        let file = File::open(path).map_err(io_err(path))?;
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(first_id, Arc::new(file));
        Ok(())
    }

    fn remove(&self, first_id: u64) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&first_id);
    }

    /// Reads the events at `places` (ids ascending, each with its place);
    /// a record near the one before it in the same segment (at most
    /// [`READ_GAP_BYTES`] after it: another topic's events between them)
    /// is read with it, in one `pread`.
    /// An event whose record cannot be read back is left out and said: it
    /// was retired meanwhile, or the disk failed under it.
    pub(crate) fn read(&self, places: &[(u64, Place)]) -> Vec<Event> {
        let mut out = Vec::with_capacity(places.len());
        let mut buf = Vec::new();
        let mut i = 0;
        while i < places.len() {
            let (id, first) = places[i];
            let Some((segment, file, next_segment)) = self.file_of(id) else {
                i += 1;
                continue;
            };
            // The run of records near each other in this segment.
            let start = first.offset as u64;
            let mut end = i + 1;
            let mut bytes = first.len as u64;
            while end < places.len() && bytes < READ_RUN_BYTES {
                let next = places[end].1;
                let near = (next.offset as u64)
                    .checked_sub(start + bytes)
                    .is_some_and(|gap| gap <= READ_GAP_BYTES);
                if !(near && places[end].0 < next_segment) {
                    break;
                }
                bytes = next.offset as u64 + next.len as u64 - start;
                end += 1;
            }
            buf.resize(bytes as usize, 0);
            match file.read_exact_at(&mut buf, start) {
                Ok(()) => {
                    for &(id, place) in &places[i..end] {
                        let at = (place.offset as u64 - start) as usize;
                        let record = &buf[at..at + place.len as usize];
                        match unframe(record).and_then(|(body, _)| {
                            crate::values::json::from_slice::<Record>(body).ok()
                        }) {
                            Some(record) if record.id == id => out.push(record.into_event()),
                            _ => tracing::error!(
                                id,
                                segment,
                                offset = place.offset,
                                "a journal record could not be read back; left out"
                            ),
                        }
                    }
                }
                Err(err) => {
                    tracing::error!(%err, segment, offset = first.offset, "journal records could not be read back; left out");
                }
            }
            i = end;
        }
        out
    }

    /// The segment holding `id`: its first id, its file, and the first id
    /// of the segment after it (`u64::MAX`: none).
    fn file_of(&self, id: u64) -> Option<(u64, Arc<File>, u64)> {
        let files = self.0.read().unwrap_or_else(|e| e.into_inner());
        let (&first, file) = files.range(..=id).next_back()?;
        let next = files.range(id + 1..).next().map_or(u64::MAX, |(&n, _)| n);
        Some((first, file.clone(), next))
    }
}

/// Most bytes one `pread` of nearby records takes.
const READ_RUN_BYTES: u64 = 1 << 20;
/// Most bytes of other records one `pread` reads past between two it
/// wants: cheaper than a `pread` more.
const READ_GAP_BYTES: u64 = 16 << 10;

struct Segment {
    /// The first id it may hold (its name).
    first_id: u64,
    path: PathBuf,
    /// Highest id written to it (0 while empty).
    last_id: u64,
}

pub(crate) struct Journal {
    dir: PathBuf,
    /// Closed segments, oldest first.
    closed: Vec<Segment>,
    current: Segment,
    file: File,
    /// Where the open segment's records end: the next batch goes here.
    len: u64,
    /// The open segment's file size: from `len` to here it holds zeros.
    file_len: u64,
    floor: u64,
    /// Ids up to this may have been handed out (see the module docs).
    reserved: u64,
    /// A failed write left bytes that could not be cut off: no more writes.
    damaged: bool,
    /// A copy of a log held elsewhere ([`Journal::open_copy`]): nothing is
    /// synced and no mark is written.
    copy: bool,
    files: Arc<Segments>,
}

/// What recovery found (the events themselves went to the caller, each
/// with its place, as they were read).
pub(crate) struct Recovered {
    /// Events read back.
    pub events: usize,
    /// Highest id whose segment was deleted earlier (0: none).
    pub floor: u64,
    /// Bytes cut from a torn tail.
    pub cut_bytes: u64,
    /// Ids up to this may have been handed out before: continue above it.
    pub reserved: u64,
}

/// Reads a file holding one number (0 when there is none).
fn read_number(path: &Path) -> Result<u64, JournalError> {
    match fs::read_to_string(path) {
        Ok(text) => text.trim().parse().map_err(|_| JournalError::Corrupt {
            path: path.to_owned(),
            offset: 0,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Replaces `dir/name` with `value`, durably (tmp, sync, rename, sync dir).
fn write_number(dir: &Path, name: &str, value: u64) -> Result<(), JournalError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    fs::write(&tmp, value.to_string()).map_err(io_err(&tmp))?;
    File::open(&tmp)
        .and_then(|f| blocking::sync_all(&f))
        .map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(dir)
}

fn segment_name(first_id: u64) -> String {
    format!("{first_id:020}.log")
}

/// The first id a segment file may hold, from its name.
fn segment_first_id(path: &Path) -> Option<u64> {
    path.file_stem()?.to_str()?.parse().ok()
}

impl Journal {
    /// Opens (creating) the journal in `dir` and reads back every event,
    /// in id order, into `each` with its place.
    pub(crate) fn open(
        dir: &Path,
        mut each: impl FnMut(Recovering<&str>, Place),
    ) -> Result<(Journal, Recovered), JournalError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let floor = read_number(&dir.join("floor"))?;
        let reserved = read_number(&dir.join("reserved"))?;
        let mut paths: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        paths.sort();
        let files = Arc::new(Segments::default());
        let mut events = 0;
        let mut last_read = 0;
        let mut segments = Vec::new();
        let mut cut_bytes = 0;
        // Where the last segment's records end.
        let mut end_of_last = 0;
        let count = paths.len();
        // One thread reads and scans the next segment while this one hands
        // the last to `each`; two buffers go back and forth between them.
        let (scanned_tx, scanned_rx) = std::sync::mpsc::sync_channel(1);
        let (spare_tx, spare_rx) = std::sync::mpsc::channel::<Spare>();
        std::thread::scope(|scope| -> Result<(), JournalError> {
            let paths = &paths;
            scope.spawn(move || {
                for path in paths {
                    let scanned = scan_segment(path, spare_rx.try_recv().unwrap_or_default());
                    let failed = scanned.is_err();
                    if scanned_tx.send(scanned).is_err() || failed {
                        return; // the taker stopped
                    }
                }
            });
            // Dropped on an early return, so that the reader stops.
            let scanned_rx = scanned_rx;
            for (i, path) in paths.iter().enumerate() {
                let first_id = segment_first_id(path).ok_or_else(|| JournalError::Corrupt {
                    path: path.clone(),
                    offset: 0,
                })?;
                let scanned = scanned_rx.recv().map_err(|_| JournalError::Io {
                    path: path.clone(),
                    source: io::Error::other("the journal's reading thread stopped"),
                })??;
                let Scanned {
                    bytes,
                    mut records,
                    end,
                    last_id,
                } = scanned;
                for (record, place) in records.drain(..) {
                    events += 1;
                    let record = match record {
                        Recovering::Head(head) => Recovering::Head(head.text(&bytes)),
                        Recovering::Whole(event) => Recovering::Whole(event),
                    };
                    last_read = record.id();
                    each(record, place);
                }
                cut_bytes += cut_tail(path, i + 1 == count, &bytes, end)?;
                end_of_last = end as u64;
                files.add(first_id, path)?;
                segments.push(Segment {
                    first_id,
                    path: path.clone(),
                    last_id,
                });
                let _ = spare_tx.send((bytes, records));
            }
            Ok(())
        })?;
        let current = match segments.pop() {
            Some(segment) => segment,
            None => {
                let first = match last_read {
                    0 => floor + 1,
                    id => id + 1,
                };
                let path = dir.join(segment_name(first));
                Segment {
                    first_id: first,
                    path,
                    last_id: 0,
                }
            }
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&current.path)
            .map_err(io_err(&current.path))?;
        let file_len = file.metadata().map_err(io_err(&current.path))?.len();
        sync_dir(dir)?;
        if count == 0 {
            files.add(current.first_id, &current.path)?;
        }
        let journal = Journal {
            dir: dir.to_owned(),
            closed: segments,
            current,
            file,
            len: end_of_last,
            file_len,
            floor,
            reserved,
            damaged: false,
            copy: false,
            files,
        };
        Ok((
            journal,
            Recovered {
                events,
                floor,
                cut_bytes,
                reserved,
            },
        ))
    }

    /// An empty journal in `dir` (what it held is deleted) that copies a
    /// log kept elsewhere, a cluster engine's, so that cold events are read
    /// back from this disk: nothing is synced, and neither `reserved` nor
    /// `floor` is written, since ids come from the engine and a copy left
    /// by a crash is never read, only deleted by the next open.
    #[cfg(any(feature = "redis", feature = "nats"))]
    pub(crate) fn open_copy(dir: &Path) -> Result<Journal, JournalError> {
        match fs::remove_dir_all(dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(dir)(e)),
            _ => {}
        }
        let (mut journal, _) = Journal::open(dir, |_, _| {})?;
        journal.copy = true;
        Ok(journal)
    }

    /// The segment files, for reading events back.
    pub(crate) fn files(&self) -> Arc<Segments> {
        self.files.clone()
    }

    /// Writes events (in id order) as one write; syncs when `sync`. Returns
    /// where each went.
    pub(crate) fn append(
        &mut self,
        events: &[impl AsRef<Event>],
        sync: bool,
    ) -> Result<Vec<Place>, JournalError> {
        let Some(first) = events.first() else {
            return Ok(Vec::new());
        };
        if self.len >= SEGMENT_BYTES {
            self.roll(first.as_ref().id)?;
        }
        let top = events.last().map_or(0, |e| e.as_ref().id.0);
        if top > self.reserved && !self.copy {
            let mark = top.saturating_add(RESERVE_STEP);
            write_number(&self.dir, "reserved", mark)?;
            self.reserved = mark;
        }
        let mut buf = Vec::new();
        let mut places = Vec::with_capacity(events.len());
        for event in events {
            let event = event.as_ref();
            let start = buf.len();
            frame_event(event, &mut buf);
            places.push(Place {
                offset: (self.len + start as u64) as u32,
                len: (buf.len() - start) as u32,
            });
            self.current.last_id = event.id.0;
        }
        let path = self.current.path.clone();
        if self.damaged {
            return Err(JournalError::Io {
                path,
                source: io::Error::other(
                    "an earlier failed write could not be undone; restart the hub to recover",
                ),
            });
        }
        let end = self.len + buf.len() as u64;
        // Reaching into the zeros ahead (or past them): this write lays
        // down the next stretch, so that the syncs after it find the
        // blocks there. Not past the segment's end, where it rolls over.
        let zeros_to = (end + ZERO_AHEAD).min(SEGMENT_BYTES.max(end));
        let mut zeros = (sync && end > self.file_len && zeros_to > end).then_some(zeros_to);
        let mut written = self.file.write_all_at(&buf, self.len);
        if let (Ok(()), Some(to)) = (&written, zeros) {
            // The zeros are a speed-up only: near a full disk or a file
            // size limit the records go without them.
            if write_zeros(&self.file, end, to).is_err() {
                let _ = self.file.set_len(end);
                zeros = None;
            }
        }
        if sync {
            written = written.and_then(|()| blocking::sync_data(&self.file));
        }
        if let Err(source) = written {
            // A write may have got partly through (a full disk, a file size
            // limit): cut it off, so that a later write does not land after
            // half a record, nor leave part of one after a shorter write.
            if self.file.set_len(self.len).is_err() {
                self.damaged = true;
            }
            self.file_len = self.len;
            return Err(JournalError::Io { path, source });
        }
        self.len = end;
        self.file_len = self.file_len.max(zeros.unwrap_or(end));
        Ok(places)
    }

    fn roll(&mut self, next: EventId) -> Result<(), JournalError> {
        // Only the last segment may end in zeros: cut them before the
        // next one exists.
        if self.file_len > self.len {
            self.file
                .set_len(self.len)
                .map_err(io_err(&self.current.path))?;
        }
        if !self.copy {
            blocking::sync_all(&self.file).map_err(io_err(&self.current.path))?;
        }
        let path = self.dir.join(segment_name(next.0));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        if !self.copy {
            sync_dir(&self.dir)?;
        }
        self.files.add(next.0, &path)?;
        let old = std::mem::replace(
            &mut self.current,
            Segment {
                first_id: next.0,
                path,
                last_id: 0,
            },
        );
        self.closed.push(old);
        self.file = file;
        self.len = 0;
        self.file_len = 0;
        Ok(())
    }

    /// Deletes closed segments whose every event is older than `oldest_kept`.
    /// Returns the new floor when it moved.
    pub(crate) fn retire_below(&mut self, oldest_kept: u64) -> Result<Option<u64>, JournalError> {
        let retire = self
            .closed
            .iter()
            .take_while(|s| s.last_id < oldest_kept)
            .count();
        if retire == 0 {
            return Ok(None);
        }
        let floor = self.closed[retire - 1].last_id.max(self.floor);
        // The floor is durable before any file goes: a crash in between
        // leaves files below the floor, which recovery reads harmlessly.
        if !self.copy {
            write_number(&self.dir, "floor", floor)?;
        }
        for segment in self.closed.drain(..retire) {
            self.files.remove(segment.first_id);
            fs::remove_file(&segment.path).map_err(io_err(&segment.path))?;
        }
        if !self.copy {
            sync_dir(&self.dir)?;
        }
        self.floor = floor;
        Ok(Some(floor))
    }

    /// Segment files, the open one included.
    #[cfg(test)]
    pub(crate) fn segments(&self) -> usize {
        self.closed.len() + 1
    }
}

/// Writes zeros over `from..to` of `file`.
fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64);
        file.write_all_at(&ZEROS[..n as usize], at)?;
        at += n;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| blocking::sync_all(&d))
        .map_err(io_err(dir))
}

/// One segment, read and scanned: its bytes (the heads' text lies in
/// them), its whole records, where they end and the last id among them.
struct Scanned {
    bytes: Vec<u8>,
    records: Vec<(Recovering<Span>, Place)>,
    end: usize,
    last_id: u64,
}

/// Buffers a scanned segment leaves for the next: reused, their pages are
/// touched once, not once per segment.
type Spare = (Vec<u8>, Vec<(Recovering<Span>, Place)>);

/// Reads and scans one segment into spare buffers.
fn scan_segment(path: &Path, (mut bytes, mut records): Spare) -> Result<Scanned, JournalError> {
    bytes.clear();
    records.clear();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_err(path))?;
    let (end, last_id) = decode_placed(&bytes, path, true, &mut |record, place| {
        let record = match record {
            Recovering::Head(head) => Recovering::Head(head.spans(&bytes)),
            Recovering::Whole(event) => Recovering::Whole(event),
        };
        records.push((record, place));
    });
    Ok(Scanned {
        bytes,
        records,
        end,
        last_id,
    })
}

/// What follows a segment's whole records (`bytes[end..]`): nothing; on
/// the last segment the zeros kept ahead, or a write a crash cut short,
/// cut off here (the bytes cut, up to the last that is not zero, are
/// returned); anywhere else it is damage.
fn cut_tail(path: &Path, last: bool, bytes: &[u8], end: usize) -> Result<u64, JournalError> {
    let tail = &bytes[end..];
    if tail.is_empty() {
        return Ok(0);
    }
    let written = tail.iter().rposition(|&b| b != 0).map_or(0, |at| at + 1);
    if last && written == 0 {
        return Ok(0);
    }
    if !last {
        return Err(JournalError::Corrupt {
            path: path.to_owned(),
            offset: end as u64,
        });
    }
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    file.set_len(end as u64).map_err(io_err(path))?;
    blocking::sync_all(&file).map_err(io_err(path))?;
    Ok(written as u64)
}

/// Decodes the whole records at the start of `bytes` into `events`;
/// returns where they end (the rest is cut short or damaged) and the last
/// id read. A whole record (its CRC holds) is never treated as damage: the
/// hub wrote it and answered for it. One it cannot decode (no writer of this
/// version makes them) is skipped and said, and everything after it kept.
#[cfg(feature = "fuzzing")]
pub(crate) fn decode_records(bytes: &[u8], events: &mut Vec<Event>, path: &Path) -> (usize, u64) {
    decode_placed(bytes, path, false, &mut |record, _| match record {
        Recovering::Whole(event) => events.push(event),
        Recovering::Head(_) => unreachable!("asked for whole events"),
    })
}

/// [`decode_records`], handing each record over with its place: its head
/// when `heads` and the head reads alone, else the whole event.
fn decode_placed(
    bytes: &[u8],
    path: &Path,
    heads: bool,
    each: &mut dyn FnMut(Recovering<&str>, Place),
) -> (usize, u64) {
    let mut at = 0usize;
    let mut last_id = 0;
    while let Some((body, size)) = unframe(&bytes[at..]) {
        let place = Place {
            offset: at as u32,
            len: size as u32,
        };
        at += size;
        if heads {
            if let Some(head) = RecordHead::read(body) {
                last_id = head.id;
                each(Recovering::Head(head), place);
                continue;
            }
        }
        match crate::values::json::from_slice::<Record>(body) {
            Ok(record) => {
                last_id = record.id;
                each(Recovering::Whole(record.into_event()), place);
            }
            Err(err) => {
                super::skipped_unreadable();
                tracing::error!(
                    path = %path.display(),
                    offset = at - size,
                    %err,
                    "a journal record is whole but unreadable; skipped, the records after it are kept"
                )
            }
        }
    }
    (at, last_id)
}

/// Appends `body` to `out` as one record: length, CRC-32, body.
pub(crate) fn frame(body: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    out.extend_from_slice(body);
    seal(out, start);
}

/// Fills in the header of the record that starts at `start` and runs to
/// the end of `out`, from its body.
fn seal(out: &mut [u8], start: usize) {
    let body = &out[start + HEADER..];
    let (len, crc) = (body.len() as u32, crc32fast::hash(body));
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// The body of one whole, undamaged record at the start of `bytes`, and
/// the record's size; `None` when it is cut short or fails its CRC, or
/// its length is 0 (the zeros after a segment's records).
pub(crate) fn unframe(bytes: &[u8]) -> Option<(&[u8], usize)> {
    if bytes.len() < HEADER {
        return None;
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().ok()?);
    if len == 0 || len > MAX_RECORD || bytes.len() < HEADER + len {
        return None;
    }
    let body = &bytes[HEADER..HEADER + len];
    (crc32fast::hash(body) == crc).then_some((body, HEADER + len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::topic::Topic;
    use std::io::Write;
    use std::sync::Arc;

    /// What recovery read, collected.
    struct Back {
        events: Vec<Event>,
        places: Vec<Place>,
        floor: u64,
        cut_bytes: u64,
        reserved: u64,
    }

    fn open(dir: &Path) -> Result<(Journal, Back), JournalError> {
        let mut events = Vec::new();
        let mut places = Vec::new();
        let mut heads = Vec::new();
        let (journal, r) = Journal::open(dir, |record, p| {
            match record {
                Recovering::Whole(event) => events.push((event.id.0, Some(event))),
                // Read whole from its place below.
                Recovering::Head(head) => {
                    events.push((head.id, None));
                    heads.push((head.id, p));
                }
            }
            places.push(p);
        })?;
        let mut whole = journal.files().read(&heads).into_iter();
        let events: Vec<Event> = events
            .into_iter()
            .map(|(id, event)| {
                event.unwrap_or_else(|| {
                    let event = whole.next().expect("read back");
                    assert_eq!(event.id.0, id);
                    event
                })
            })
            .collect();
        assert_eq!(r.events, events.len());
        Ok((
            journal,
            Back {
                events,
                places,
                floor: r.floor,
                cut_bytes: r.cut_bytes,
                reserved: r.reserved,
            },
        ))
    }

    /// A test's directory, emptied first and removed when dropped.
    struct TempDir(PathBuf);

    impl std::ops::Deref for TempDir {
        type Target = Path;

        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn temp_dir(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("herald-journal-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        TempDir(dir)
    }

    fn event(id: u64, data: &str) -> Arc<Event> {
        let draft = EventDraft {
            topics: vec![Topic::new("t").unwrap()],
            data: data.into(),
            ..Default::default()
        };
        Arc::new(Event::commit(draft, EventId(id), 1000 + id))
    }

    /// A record is written from the event's own fields; its bytes are what
    /// serializing the owned [`Record`] gives, for every field set or not.
    #[test]
    fn records_are_written_as_the_owned_record_serializes() {
        let mut filter = serde_json::Map::new();
        filter.insert("plan".into(), serde_json::json!(["pro", "team"]));
        let full = EventDraft {
            topics: vec![Topic::new("a/b").unwrap(), Topic::new("c").unwrap()],
            event_type: Some("tick \"x\"".into()),
            data: "line\nnext \u{1} é".into(),
            target: crate::values::event::Target {
                users: vec!["ann".into()],
                connections: vec!["c1".into()],
                broadcast: true,
                filter: Some(filter),
            },
            ttl_secs: Some(30),
            coalesce_key: Some("k".into()),
            idempotency_key: Some("i".into()),
            require_ack: true,
        };
        for draft in [EventDraft::default(), full] {
            let event = Event::commit(draft, EventId(7), 1_700_000_000_123);
            let mut framed = Vec::new();
            frame_event(&event, &mut framed);
            let mut want = Vec::new();
            frame(&serde_json::to_vec(&Record::of(&event)).unwrap(), &mut want);
            assert_eq!(
                String::from_utf8_lossy(&framed),
                String::from_utf8_lossy(&want)
            );
            assert_eq!(framed, want);
        }
    }

    #[test]
    fn writes_and_reads_back() {
        let dir = temp_dir("rw");
        let (mut j, r) = open(&dir).unwrap();
        assert!(r.events.is_empty());
        j.append(&[event(1, "a"), event(2, "b\nc")], true).unwrap();
        j.append(&[event(3, "d")], true).unwrap();
        drop(j);
        let (_, r) = open(&dir).unwrap();
        let got: Vec<(u64, &str, u64)> = r
            .events
            .iter()
            .map(|e| (e.id.0, &*e.data, e.published_at_ms))
            .collect();
        assert_eq!(got, [(1, "a", 1001), (2, "b\nc", 1002), (3, "d", 1003)]);
        assert_eq!(r.cut_bytes, 0);
    }

    #[test]
    fn a_torn_tail_is_cut_at_the_last_whole_record() {
        let dir = temp_dir("torn");
        let (mut j, _) = open(&dir).unwrap();
        j.append(&[event(1, "a"), event(2, "b")], true).unwrap();
        let path = j.current.path.clone();
        let full = j.len;
        drop(j);
        // Cut the second record in half, and add garbage after a whole one.
        for cut in [full - 3, full - 20] {
            let bytes = fs::read(&path).unwrap();
            let mut f = File::create(&path).unwrap();
            f.write_all(&bytes[..cut as usize]).unwrap();
            drop(f);
            let (_, r) = open(&dir).unwrap();
            assert_eq!(r.events.len(), 1, "cut at {cut}");
            assert!(r.cut_bytes > 0);
            let (_, again) = open(&dir).unwrap();
            assert_eq!(
                (again.events.len(), again.cut_bytes),
                (1, 0),
                "the cut is made on disk"
            );
            // Restore the two-record file for the next round.
            let (mut j, _) = open(&dir).unwrap();
            j.append(&[event(2, "b")], true).unwrap();
        }
        // A write torn in the zeros ahead: its bytes are cut, not the
        // zeros after them.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        assert!(f.metadata().unwrap().len() > full, "zeros ahead");
        f.write_all_at(&[7, 0, 0, 0, 1, 2, 3, 4, b'x'], full)
            .unwrap();
        drop(f);
        let (_, r) = open(&dir).unwrap();
        assert_eq!((r.events.len(), r.cut_bytes), (2, 9));
        assert_eq!(fs::metadata(&path).unwrap().len(), full, "cut back");
    }

    #[test]
    fn zeros_are_kept_ahead_of_the_records_of_the_last_segment_only() {
        let dir = temp_dir("zeros");
        let (mut j, _) = open(&dir).unwrap();
        let path = j.current.path.clone();
        let size = || fs::metadata(&path).unwrap().len();
        j.append(&[event(1, "a")], false).unwrap();
        assert_eq!(size(), j.len, "no zeros without syncs");
        j.append(&[event(2, "b")], true).unwrap();
        assert_eq!(size(), j.len + ZERO_AHEAD, "a stretch of zeros ahead");
        let before = size();
        let placed = j.append(&[event(3, "c")], true).unwrap();
        assert_eq!(size(), before, "written over the zeros");
        assert_eq!(placed[0].offset as u64 + placed[0].len as u64, j.len);
        // A batch past the zeros lays down the next stretch.
        let big: String = "x".repeat(ZERO_AHEAD as usize);
        j.append(&[event(4, &big)], true).unwrap();
        assert_eq!(size(), j.len + ZERO_AHEAD);
        let end = j.len;
        drop(j);
        // The zeros are the end of the records: nothing is cut, and the
        // next write goes over them.
        let (mut j, r) = open(&dir).unwrap();
        assert_eq!((r.events.len(), r.cut_bytes), (4, 0));
        assert_eq!(size(), end + ZERO_AHEAD, "the zeros stay");
        j.append(&[event(5, "e")], true).unwrap();
        assert_eq!(size(), end + ZERO_AHEAD);
        // A closed segment holds its records alone.
        j.roll(EventId(6)).unwrap();
        assert_eq!(size(), j.closed[0].path.metadata().unwrap().len());
        let closed_len = size();
        j.append(&[event(6, "f")], true).unwrap();
        drop(j);
        let (_, r) = open(&dir).unwrap();
        let ids: Vec<u64> = r.events.iter().map(|e| e.id.0).collect();
        assert_eq!((ids, r.cut_bytes), ((1..=6).collect(), 0));
        assert!(
            closed_len < end + ZERO_AHEAD,
            "the first segment was cut back"
        );
    }

    #[test]
    fn whole_records_are_never_cut_deep_or_unreadable() {
        let dir = temp_dir("whole");
        let (mut j, _) = open(&dir).unwrap();
        // A filter nested deeper than serde_json reads by default, as an
        // earlier version accepted and wrote.
        let mut deep = event(1, "deep");
        let nested: serde_json::Value =
            crate::values::json::from_slice(("[".repeat(127) + &"]".repeat(127)).as_bytes())
                .unwrap();
        Arc::get_mut(&mut deep).unwrap().target.filter =
            Some([("k".to_owned(), nested)].into_iter().collect());
        j.append(&[deep, event(2, "after")], true).unwrap();
        // A whole record that is not an event (no writer makes them).
        let path = j.current.path.clone();
        let end = j.len as usize;
        drop(j);
        let mut bytes = fs::read(&path).unwrap();
        bytes.truncate(end);
        frame(b"{\"not\": \"an event\"}", &mut bytes);
        fs::write(&path, &bytes).unwrap();
        let (mut j, r) = open(&dir).unwrap();
        j.append(&[event(3, "last")], true).unwrap();
        drop(j);
        assert_eq!(r.cut_bytes, 0);
        let data: Vec<&str> = r.events.iter().map(|e| &*e.data).collect();
        assert_eq!(data, ["deep", "after"]);
        let (_, r) = open(&dir).unwrap();
        let data: Vec<&str> = r.events.iter().map(|e| &*e.data).collect();
        assert_eq!(data, ["deep", "after", "last"], "nothing after it was cut");
    }

    #[test]
    fn ids_are_reserved_ahead_of_use() {
        let dir = temp_dir("reserve");
        let (mut j, r) = open(&dir).unwrap();
        assert_eq!(r.reserved, 0);
        j.append(&[event(5, "a")], true).unwrap();
        j.append(&[event(6, "b")], true).unwrap();
        drop(j);
        let (mut j, r) = open(&dir).unwrap();
        assert_eq!(r.reserved, 5 + RESERVE_STEP, "moved once, not per write");
        // Past the mark, it moves again before the write.
        j.append(&[event(6 + RESERVE_STEP, "c")], true).unwrap();
        drop(j);
        let (_, r) = open(&dir).unwrap();
        assert_eq!(r.reserved, 6 + 2 * RESERVE_STEP);
    }

    #[test]
    fn damage_before_the_end_stops_the_start() {
        let dir = temp_dir("damage");
        let (mut j, _) = open(&dir).unwrap();
        j.append(&[event(1, "a")], true).unwrap();
        j.roll(EventId(2)).unwrap();
        j.append(&[event(2, "b")], true).unwrap();
        let first = j.closed[0].path.clone();
        drop(j);
        let mut bytes = fs::read(&first).unwrap();
        let n = bytes.len();
        bytes[n - 2] ^= 0xff;
        fs::write(&first, bytes).unwrap();
        assert!(matches!(open(&dir), Err(JournalError::Corrupt { .. })));
    }

    #[test]
    fn retiring_segments_keeps_a_floor() {
        let dir = temp_dir("retire");
        let (mut j, _) = open(&dir).unwrap();
        j.append(&[event(1, "a"), event(2, "b")], true).unwrap();
        j.roll(EventId(3)).unwrap();
        j.append(&[event(3, "c")], true).unwrap();
        assert_eq!(
            j.retire_below(2).unwrap(),
            None,
            "segment 1-2 still holds 2"
        );
        assert_eq!(j.retire_below(3).unwrap(), Some(2));
        assert_eq!(j.segments(), 1);
        drop(j);
        let (_, r) = open(&dir).unwrap();
        assert_eq!(r.floor, 2);
        assert_eq!(r.events.iter().map(|e| e.id.0).collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn events_are_read_back_from_their_places() {
        let dir = temp_dir("places");
        let (mut j, _) = open(&dir).unwrap();
        let mut placed = j.append(&[event(1, "a"), event(2, "bb")], true).unwrap();
        placed.extend(j.append(&[event(3, "ccc")], true).unwrap());
        j.roll(EventId(4)).unwrap();
        placed.extend(j.append(&[event(4, "d"), event(5, "e")], true).unwrap());
        assert_eq!(placed[0].offset, 0);
        assert_eq!(placed[1].offset, placed[0].len, "records follow each other");
        assert_eq!(placed[3].offset, 0, "a new segment starts at 0");
        let files = j.files();
        let ids: Vec<(u64, Place)> = (1..=5).zip(placed.iter().copied()).collect();
        let data = |events: Vec<Event>| -> Vec<(u64, String)> {
            events
                .iter()
                .map(|e| (e.id.0, e.data.to_string()))
                .collect()
        };
        // Runs across a segment's end, gaps, and single records.
        assert_eq!(
            data(files.read(&ids)),
            [(1, "a"), (2, "bb"), (3, "ccc"), (4, "d"), (5, "e")].map(|(i, d)| (i, d.to_owned()))
        );
        assert_eq!(
            data(files.read(&[ids[1], ids[4]])),
            [(2, "bb".to_owned()), (5, "e".to_owned())]
        );
        // A record between two wanted ones is read past, not returned.
        assert_eq!(
            data(files.read(&[ids[0], ids[2]])),
            [(1, "a".to_owned()), (3, "ccc".to_owned())]
        );
        // A place that is not a record's is left out, never misread.
        let wrong = Place {
            offset: placed[1].offset,
            len: placed[0].len,
        };
        assert!(files.read(&[(1, wrong)]).is_empty());
        assert!(files.read(&[(3, placed[1])]).is_empty(), "wrong id");
        drop(j);
        // Recovery hands out the same places.
        let (mut j, back) = open(&dir).unwrap();
        assert_eq!(back.places, placed);
        // A retired segment's events are no longer read.
        assert_eq!(j.retire_below(4).unwrap(), Some(3));
        let files = j.files();
        assert_eq!(
            data(files.read(&ids)),
            [(4, "d".to_owned()), (5, "e".to_owned())]
        );
    }
}
