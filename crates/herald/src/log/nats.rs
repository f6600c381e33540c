//! The log on NATS JetStream: many nodes, one ordered log.
//!
//! One stream, named after `cluster.name` (`herald` → stream `HERALD`),
//! holds subject `herald.log`. Each append is **one message**: a JSON
//! batch of event drafts (or of control records), so a batch is all or
//! nothing, as on one node. The stream's sequence orders the log:
//!
//! * **Ids.** The record at index `i` of the message at sequence `s` gets
//!   id `base + s × 1024 + i`, where `base` is the stream's creation time
//!   in µs. Every node computes the same ids from the same stream, ids rise
//!   with the log, and a recreated stream starts above the old one's ids.
//!   An append holds at most 1024 records (`limits.max_batch` is checked
//!   against that at start) and must fit the server's `max_payload`.
//! * **Publish time** is the message's JetStream timestamp.
//! * **Idempotency** is decided by every node as it applies the log, from
//!   the keys of earlier messages and the message's own timestamp: the same
//!   answer on every node, as it depends on the log alone. The publisher
//!   reads the answer from its own node once it has applied the message.
//! * **Tailing**: each node reads the stream with an ordered consumer from
//!   the sequence after the last one it applied, and applies each message
//!   to its [`Replica`]. After an error it recreates the consumer from the
//!   same point: nothing is skipped or applied twice.
//! * **Durability**: a publish is acknowledged by JetStream once the
//!   message is stored (file storage; JetStream syncs its files on its own
//!   schedule, `sync_interval`, unless the server is set to sync always).
//! * **Retention**: the stream keeps at most `cluster.max_log_events`
//!   messages and none older than `history.max_age_secs`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::engine::{
    fresh, spawn_tail, Backoff, ClusterOptions, ConnectError, Status, NODE_STALE_MS,
};
use super::memory::MemoryLogSettings;
use super::replica::Replica;
use super::{
    Appended, CommitSink, Conflict, Control, Coverage, EngineStatus, Entry, EventLog, LogError,
    PresenceUpdate, ReadRequest, StateGuard,
};
use crate::event::{Event, EventDraft, EventId};
use crate::selector::Selector;
use crate::topic::Topic;

/// Records one message holds at most: the id step between messages.
pub const MAX_RECORDS: usize = 1024;

/// The version in a retained value's `{version, value}` JSON.
fn entry_version(entry: &str) -> Option<u64> {
    crate::json::from_slice::<serde_json::Value>(entry.as_bytes()).ok()?["version"].as_u64()
}

/// The header naming the node that published a message.
const NODE_HEADER: &str = "Herald-Node";
/// Messages a resume may be ahead of this node's reading and still be
/// waited for (see `catch_up`).
const CATCH_UP_MAX_BEHIND: u64 = 1 << 20;

/// One message of the log.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Batch {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    events: Vec<EventDraft>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    controls: Vec<Control>,
}

/// Turns messages into log entries, the same way on every node.
struct Decoder {
    base: u64,
    window_ms: u64,
    max_keys: usize,
    node: String,
    /// Idempotency keys: first id and the log time their window ends.
    keys: HashMap<String, (u64, u64)>,
    key_order: VecDeque<(String, u64)>,
    /// The last sequence applied.
    last_seq: u64,
    last_ms: u64,
    /// What this node's own appends came to, by sequence, until read.
    outcomes: BTreeMap<u64, Vec<Appended>>,
    /// Subject names.
    subjects: Subjects,
    /// Sequence and publish time of the log messages still in the stream.
    log_seqs: VecDeque<(u64, u64)>,
    /// Everything up to this sequence left the log subject (0: nothing).
    floor_seq: u64,
    /// A floor the replica has not been told of yet.
    new_floor: Option<u64>,
    /// Retained values: slot → (sequence of its last change, `{version,
    /// value}` JSON or `None` once deleted).
    state: HashMap<String, (u64, Option<String>)>,
    /// Presence: (topic, user) → (sequence and log time of its last
    /// change, nodes).
    presence: HashMap<(String, String), (u64, u64, Vec<String>)>,
}

/// The subjects of a cluster's stream.
#[derive(Debug, Clone)]
struct Subjects {
    /// `{name}.log`: events and control records.
    log: String,
    /// `{name}.floor`: how far the log subject was trimmed.
    floor: String,
    /// `{name}.state.<hex of topic\nkey>`: the last change of a value.
    state: String,
    /// `{name}.pres.<hex of topic\nuser>`: the nodes where a user is on a
    /// presence topic.
    presence: String,
}

impl Subjects {
    fn new(name: &str) -> Subjects {
        Subjects {
            log: format!("{name}.log"),
            floor: format!("{name}.floor"),
            state: format!("{name}.state."),
            presence: format!("{name}.pres."),
        }
    }
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// A change of a retained value (subject `…state.<slot>`).
#[derive(Debug, Serialize, Deserialize)]
struct StateChange {
    event: EventDraft,
    /// `{version, value}` as JSON; `None`: deleted.
    entry: Option<String>,
}

/// The nodes where a user is on a presence topic (subject `…pres.<pair>`),
/// with the announcement the change makes, if any.
#[derive(Debug, Serialize, Deserialize)]
struct PresenceSet {
    nodes: Vec<String>,
    announcement: Option<EventDraft>,
}

/// `…floor`: the log subject holds nothing at or below this sequence.
#[derive(Debug, Serialize, Deserialize)]
struct Floor {
    through: u64,
}

impl Decoder {
    fn new(
        base: u64,
        settings: &MemoryLogSettings,
        options: &ClusterOptions,
        last_seq: u64,
    ) -> Decoder {
        Decoder {
            base,
            window_ms: settings.idempotency_window.as_millis().max(1) as u64,
            max_keys: settings.max_idempotency_keys,
            node: options.node.clone(),
            keys: HashMap::new(),
            key_order: VecDeque::new(),
            last_seq,
            last_ms: 0,
            outcomes: BTreeMap::new(),
            subjects: Subjects::new(&options.name),
            log_seqs: VecDeque::new(),
            floor_seq: 0,
            new_floor: None,
            state: HashMap::new(),
            presence: HashMap::new(),
        }
    }

    fn id(&self, seq: u64, index: usize) -> u64 {
        self.base + seq * MAX_RECORDS as u64 + index as u64
    }

    fn forget_keys(&mut self, now: u64) {
        while let Some((_, until)) = self.key_order.front() {
            if *until > now && self.key_order.len() <= self.max_keys {
                break;
            }
            let (key, until) = self.key_order.pop_front().expect("present");
            if self.keys.get(&key).is_some_and(|(_, u)| *u == until) {
                self.keys.remove(&key);
            }
        }
    }

    /// The entries of the message at `seq` on `subject`. Everything is
    /// judged by the log alone (idempotency by log time, never the local
    /// clock), so every node judges alike.
    fn decode(
        &mut self,
        seq: u64,
        published_ms: u64,
        subject: &str,
        from: Option<&str>,
        payload: &[u8],
    ) -> Result<Vec<Entry>, String> {
        let ts = published_ms.max(self.last_ms);
        self.last_ms = ts;
        self.last_seq = seq;
        let bad = |e: serde_json::Error| e.to_string();
        if subject == self.subjects.log {
            self.log_seqs.push_back((seq, ts));
            return self.decode_batch(seq, ts, from, payload);
        }
        if subject == self.subjects.floor {
            let floor: Floor = crate::json::from_slice(payload).map_err(bad)?;
            if floor.through > self.floor_seq {
                self.floor_seq = floor.through;
                while self
                    .log_seqs
                    .front()
                    .is_some_and(|(s, _)| *s <= floor.through)
                {
                    self.log_seqs.pop_front();
                }
                self.new_floor = Some(self.id(floor.through, MAX_RECORDS - 1));
            }
            return Ok(Vec::new());
        }
        if let Some(slot) = subject.strip_prefix(&self.subjects.state) {
            let slot = unhex(slot).ok_or("a state subject that is not hex")?;
            let change: StateChange = crate::json::from_slice(payload).map_err(bad)?;
            self.state.insert(slot, (seq, change.entry));
            let id = EventId(self.id(seq, 0));
            return Ok(vec![Entry::Event(Arc::new(Event::commit(
                change.event,
                id,
                ts,
            )))]);
        }
        if let Some(pair) = subject.strip_prefix(&self.subjects.presence) {
            let pair = unhex(pair).ok_or("a presence subject that is not hex")?;
            let (topic, user) = pair
                .split_once('\n')
                .ok_or("a presence pair without user")?;
            let set: PresenceSet = crate::json::from_slice(payload).map_err(bad)?;
            self.presence
                .insert((topic.to_owned(), user.to_owned()), (seq, ts, set.nodes));
            let id = EventId(self.id(seq, 0));
            return Ok(set
                .announcement
                .map(|draft| Entry::Event(Arc::new(Event::commit(draft, id, ts))))
                .into_iter()
                .collect());
        }
        Ok(Vec::new())
    }

    fn decode_batch(
        &mut self,
        seq: u64,
        ts: u64,
        from: Option<&str>,
        payload: &[u8],
    ) -> Result<Vec<Entry>, String> {
        let batch: Batch = crate::json::from_slice(payload).map_err(|e| e.to_string())?;
        if batch.events.len() + batch.controls.len() > MAX_RECORDS {
            return Err(format!("more than {MAX_RECORDS} records in one message"));
        }
        self.forget_keys(ts);
        let mut entries = Vec::with_capacity(batch.events.len() + batch.controls.len());
        let mut outcome = Vec::with_capacity(batch.events.len());
        let events = batch.events.len();
        for (i, draft) in batch.events.into_iter().enumerate() {
            let id = self.id(seq, i);
            if let Some(key) = &draft.idempotency_key {
                if let Some(&(first, until)) = self.keys.get(key) {
                    if until > ts {
                        outcome.push(Appended {
                            id: EventId(first),
                            duplicate: true,
                        });
                        continue;
                    }
                }
                let until = ts + self.window_ms;
                self.keys.insert(key.clone(), (id, until));
                self.key_order.push_back((key.clone(), until));
            }
            entries.push(Entry::Event(Arc::new(Event::commit(
                draft,
                EventId(id),
                ts,
            ))));
            outcome.push(Appended {
                id: EventId(id),
                duplicate: false,
            });
        }
        for (j, record) in batch.controls.into_iter().enumerate() {
            entries.push(Entry::Control {
                id: EventId(self.id(seq, events + j)),
                record,
            });
        }
        // Only appends of events wait for an answer (control records do not).
        if from == Some(self.node.as_str()) && !outcome.is_empty() {
            // Answers nobody came for (a publisher that gave up) go after a
            // while.
            if self.outcomes.len() > 10_000 {
                let keep = self.outcomes.split_off(&seq.saturating_sub(10_000));
                self.outcomes = keep;
            }
            self.outcomes.insert(seq, outcome);
        }
        Ok(entries)
    }
}

pub struct NatsLog {
    js: jetstream::Context,
    url: String,
    stream: String,
    subjects: Subjects,
    replica: Arc<Replica>,
    decoder: Arc<Mutex<Decoder>>,
    /// The last sequence applied: publishers wait on it.
    applied: Arc<watch::Sender<u64>>,
    options: ClusterOptions,
    max_age: Option<Duration>,
    /// Every node's last report (a subject each), expiring after
    /// [`NODE_STALE_MS`].
    reports: stream::Stream,
    reports_subject: String,
    status: Arc<Status>,
    /// Woken when the connection to the server is made again.
    reconnected: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
}

fn lock(decoder: &Mutex<Decoder>) -> std::sync::MutexGuard<'_, Decoder> {
    decoder.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_ms(t: time::OffsetDateTime) -> u64 {
    (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64
}

/// The stream's name for a cluster name: JetStream names allow no dots.
fn stream_name(name: &str) -> String {
    name.replace('.', "_").to_uppercase()
}

/// A message of the stream, however it was read.
struct Raw {
    seq: u64,
    subject: String,
    published_ms: u64,
    from: Option<String>,
    payload: bytes::Bytes,
}

impl Raw {
    fn consumed(message: jetstream::Message) -> Result<Raw, String> {
        let info = message.info().map_err(|e| e.to_string())?;
        let (seq, published_ms) = (info.stream_sequence, unix_ms(info.published));
        let from = message
            .headers
            .as_ref()
            .and_then(|h| h.get(NODE_HEADER))
            .map(|v| v.as_str().to_owned());
        Ok(Raw {
            seq,
            subject: message.subject.to_string(),
            published_ms,
            from,
            payload: message.payload.clone(),
        })
    }

    fn stored(message: jetstream::message::StreamMessage) -> Raw {
        Raw {
            seq: message.sequence,
            from: message
                .headers
                .get(NODE_HEADER)
                .map(|v| v.as_str().to_owned()),
            subject: message.subject.to_string(),
            published_ms: unix_ms(message.time),
            payload: message.payload,
        }
    }
}

/// The stored messages between `after` and `before` (exclusive), read by
/// sequence.
async fn stored_between(
    stream: &stream::Stream,
    filter: &str,
    after: u64,
    before: u64,
) -> Result<Vec<Raw>, String> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    let mut out = Vec::new();
    let mut next = after + 1;
    while next < before {
        match stream.get_first_raw_message_by_subject(filter, next).await {
            Ok(m) if m.sequence < before => {
                next = m.sequence + 1;
                out.push(Raw::stored(m));
            }
            Ok(_) => break,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(out)
}

/// A page the consumer delivered, with what it skipped put back. A purge
/// or roll-up on one subject moves every consumer of the stream past the
/// messages it has not delivered yet, whatever their subject (nats-server
/// 2.9): those are still stored, and are read here by sequence. A gap
/// that holds nothing was a message removed before it was read.
async fn complete(
    js: &jetstream::Context,
    name: &str,
    filter: &str,
    mut prev: u64,
    page: Vec<Raw>,
) -> Result<Vec<Raw>, String> {
    let mut out = Vec::with_capacity(page.len());
    let mut stream = None;
    for raw in page {
        if raw.seq <= prev {
            continue;
        }
        if raw.seq > prev + 1 {
            if stream.is_none() {
                stream = Some(js.get_stream(name).await.map_err(|e| e.to_string())?);
            }
            let stream = stream.as_ref().expect("just got");
            out.extend(stored_between(stream, filter, prev, raw.seq).await?);
        }
        prev = raw.seq;
        out.push(raw);
    }
    Ok(out)
}

/// Applies messages of the log, in order: to the replica, then to the
/// sequence publishers wait on.
fn apply(
    decoder: &Mutex<Decoder>,
    replica: &Replica,
    applied: &watch::Sender<u64>,
    messages: Vec<Raw>,
    loading: bool,
) {
    let mut entries = Vec::new();
    let mut last = None;
    let floor;
    {
        let mut decoder = lock(decoder);
        for message in &messages {
            let seq = message.seq;
            if seq <= decoder.last_seq {
                continue; // read again after a reconnect
            }
            match decoder.decode(
                seq,
                message.published_ms,
                &message.subject,
                message.from.as_deref(),
                &message.payload,
            ) {
                Ok(decoded) => entries.extend(decoded),
                // One bad message must not stop every node (no writer of
                // this version makes them): skipped and said.
                Err(err) => {
                    super::skipped_unreadable();
                    tracing::error!(
                        seq,
                        subject = %message.subject,
                        %err,
                        "a message in the engine is unreadable; skipped"
                    )
                }
            }
            last = Some(seq);
        }
        floor = decoder.new_floor.take();
    }
    if let (Some(floor), true) = (floor, loading) {
        replica.lost_through(floor);
    }
    if loading {
        replica.load(entries);
    } else {
        replica.deliver(entries);
        if let Some(floor) = floor {
            replica.lost_through(floor);
        }
    }
    if let Some(seq) = last {
        applied.send_replace(seq);
    }
}

impl NatsLog {
    /// Connects (retrying until `options.connect_timeout`), creates the
    /// stream if it is missing, and reads it into this node's replica.
    pub async fn connect(
        url: &str,
        settings: MemoryLogSettings,
        options: ClusterOptions,
    ) -> Result<NatsLog, ConnectError> {
        let status = Arc::new(Status::connected());
        let reconnected = Arc::new(tokio::sync::Notify::new());
        let events = status.clone();
        let wake = reconnected.clone();
        let connect = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(1))
            .event_callback(move |event| {
                let status = events.clone();
                let wake = wake.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            status.connection(true);
                            // Appends failed while it was away; the next
                            // one is likely to succeed: ready again.
                            status.clear_write();
                            // The tail's consumer may be gone with the old
                            // connection (a restarted server): start over now
                            // rather than after its heartbeats time out.
                            wake.notify_one();
                            tracing::info!("cluster engine reachable again");
                        }
                        async_nats::Event::Disconnected => {
                            status.connection(false);
                            status.count_reconnect();
                            tracing::error!("lost the cluster engine; reconnecting");
                        }
                        _ => {}
                    }
                }
            });
        let deadline = tokio::time::Instant::now() + options.connect_timeout;
        let mut backoff = Backoff::new();
        let unreachable = |last: String| ConnectError::Unreachable {
            url: url.to_owned(),
            secs: options.connect_timeout.as_secs(),
            last,
        };
        let name = stream_name(&options.name);
        // No stream-wide limits: retained values and presence must outlive
        // any number of events. The log subject is trimmed by the nodes.
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![format!("{}.>", options.name)],
            allow_rollup: true,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let (js, info) = loop {
            let attempt = async {
                let client = connect
                    .clone()
                    .connect(url)
                    .await
                    .map_err(|e| e.to_string())?;
                let js = jetstream::ContextBuilder::new()
                    .timeout(Duration::from_secs(5))
                    .build(client);
                let mut stream = js
                    .get_or_create_stream(config.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                let info = stream.info().await.map_err(|e| e.to_string())?.clone();
                Ok::<_, String>((js, info))
            };
            match attempt.await {
                Ok(found) => break found,
                Err(err) if tokio::time::Instant::now() + backoff.peek() < deadline => {
                    tracing::warn!(%err, url, "cluster engine not reachable yet; retrying");
                    backoff.wait().await;
                }
                Err(err) => return Err(unreachable(err)),
            }
        };
        // Node reports live in a stream of their own: a report replaces the
        // last one (one per subject) and expires, without touching the log.
        let reports_subject = format!("{}_nodes", options.name);
        let reports = js
            .get_or_create_stream(stream::Config {
                name: format!("{name}_NODES"),
                subjects: vec![format!("{reports_subject}.>")],
                max_messages_per_subject: 1,
                max_age: Duration::from_millis(NODE_STALE_MS),
                storage: stream::StorageType::Memory,
                ..Default::default()
            })
            .await
            .map_err(|e| unreachable(format!("cannot open the node reports' stream: {e}")))?;
        let base = (info.created.unix_timestamp_nanos() / 1000).max(0) as u64;
        let first_seq = info.state.first_sequence;
        let last_seq = info.state.last_sequence;
        let step = MAX_RECORDS as u64;
        // Everything before the stream's first message is gone.
        let floor = match first_seq > 1 {
            true => base + first_seq * step - 1,
            false => 0,
        };
        let replica = Arc::new(Replica::new(settings, base + step, floor));
        let decoder = Arc::new(Mutex::new(Decoder::new(
            base,
            &settings,
            &options,
            first_seq.saturating_sub(1),
        )));
        let applied = Arc::new(watch::channel(first_seq.saturating_sub(1)).0);
        let mut loaded = 0;
        if info.state.messages > 0 {
            let filter = format!("{}.>", options.name);
            let mut messages = consumer_from(&js, &name, &filter, first_seq)
                .await
                .map_err(unreachable)?;
            while *applied.borrow() < last_seq {
                let next = tokio::time::timeout(options.connect_timeout, messages.next()).await;
                let message = match next {
                    Ok(Some(Ok(message))) => Raw::consumed(message).map_err(&unreachable)?,
                    Ok(Some(Err(e))) => return Err(unreachable(e.to_string())),
                    Ok(None) | Err(_) => {
                        return Err(unreachable("the stream ended while it was read".into()))
                    }
                };
                let prev = *applied.borrow();
                let page = complete(&js, &name, &filter, prev, vec![message])
                    .await
                    .map_err(&unreachable)?;
                loaded += page.len();
                apply(&decoder, &replica, &applied, page, true);
            }
        }
        tracing::info!(
            url,
            stream = name,
            loaded,
            retained = replica.len(),
            head = replica.head(),
            "joined the cluster log on NATS JetStream"
        );
        Ok(NatsLog {
            js,
            url: url.to_owned(),
            stream: name,
            subjects: Subjects::new(&options.name),
            replica,
            decoder,
            applied,
            options,
            max_age: settings.max_age,
            reports,
            reports_subject,
            status,
            reconnected,
            stop: CancellationToken::new(),
        })
    }

    /// Publishes one message; returns its sequence once this node has
    /// applied it (or the wait ran out: `false`).
    async fn publish(&self, batch: &Batch) -> Result<(u64, bool), LogError> {
        let payload = serde_json::to_vec(batch).expect("a batch serializes");
        match self
            .publish_to(self.subjects.log.clone(), payload, None)
            .await?
        {
            Ok(published) => Ok(published),
            Err(WrongLast) => Err(LogError::Failed(
                "a condition on an unconditional append".into(),
            )),
        }
    }

    /// Publishes one message on `subject`; with `last`, only if the last
    /// message on the subject is still at that sequence (0: none), and then
    /// it replaces every earlier one there (a roll-up). Returns its sequence
    /// once this node has applied it (or the wait ran out: `false`).
    async fn publish_to(
        &self,
        subject: String,
        payload: Vec<u8>,
        last: Option<u64>,
    ) -> Result<Result<(u64, bool), WrongLast>, LogError> {
        use async_nats::jetstream::context::PublishErrorKind;
        if !self.status.is_connected() {
            // Refused now rather than after the publish timeout.
            return Err(LogError::Unavailable(
                "the cluster engine is unreachable".into(),
            ));
        }
        let mut message = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .header(NODE_HEADER, self.options.node.as_str());
        if let Some(last) = last {
            message = message
                .expected_last_subject_sequence(last)
                .header("Nats-Rollup", "sub");
        }
        let acked = async { self.js.send_publish(subject, message).await?.await }.await;
        let ack = match acked {
            Ok(ack) => {
                self.status.write_ok(&self.url);
                ack
            }
            Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => {
                return Ok(Err(WrongLast));
            }
            Err(err) if err.kind() == PublishErrorKind::MaxPayloadExceeded => {
                return Err(LogError::Failed(
                    "the batch is larger than the NATS server's max_payload".into(),
                ));
            }
            Err(err) => return Err(self.status.write_failed(&self.url, &err.to_string())),
        };
        let seq = ack.sequence;
        Ok(Ok((seq, self.wait_applied(seq).await)))
    }

    /// Waits until this node has applied the message at `seq`, at most the
    /// apply timeout. True when it has.
    async fn wait_applied(&self, seq: u64) -> bool {
        let mut applied = self.applied.subscribe();
        let reached =
            tokio::time::timeout(self.options.apply_timeout, applied.wait_for(|&a| a >= seq)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// The stream's last sequence now.
    async fn engine_last_seq(&self) -> Result<u64, LogError> {
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))?;
        let info = stream
            .get_info()
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))?;
        Ok(info.state.last_sequence)
    }

    /// `node` joins or leaves the set of nodes where `user` is on `topic`,
    /// announcing it when that fills or empties the set. Retried when
    /// another node changed the set meanwhile.
    async fn change_presence(
        &self,
        node: &str,
        topic: &crate::topic::Topic,
        user: &str,
        joined: bool,
    ) -> Result<(), LogError> {
        let key = (topic.as_str().to_owned(), user.to_owned());
        let subject = format!(
            "{}{}",
            self.subjects.presence,
            hex(&format!("{}\n{user}", key.0))
        );
        for _ in 0..MAX_TRIES {
            let (last, _, mut nodes) = lock(&self.decoder)
                .presence
                .get(&key)
                .cloned()
                .unwrap_or_default();
            let was_empty = nodes.is_empty();
            let had = nodes.iter().any(|n| n == node);
            if had == joined {
                return Ok(());
            }
            if joined {
                nodes.push(node.to_owned());
                nodes.sort();
            } else {
                nodes.retain(|n| n != node);
            }
            let announcement = (was_empty != nodes.is_empty())
                .then(|| PresenceUpdate::new(topic.clone(), user.to_owned(), joined).announcement);
            let set = PresenceSet {
                nodes,
                announcement,
            };
            let payload = serde_json::to_vec(&set).expect("a presence set serializes");
            match self
                .publish_to(subject.clone(), payload, Some(last))
                .await?
            {
                Ok(_) => return Ok(()),
                Err(WrongLast) => {
                    let last = self.engine_last_seq().await?;
                    self.wait_applied(last).await;
                }
            }
        }
        Err(LogError::Unavailable(
            "presence kept changing on other nodes".into(),
        ))
    }

    /// Trims the log subject to `cluster.max_log_events` messages and
    /// `max_age`, then records how far (the floor every node applies).
    async fn trim(&self, max_age: Option<Duration>) -> Result<(), LogError> {
        let through = {
            let decoder = lock(&self.decoder);
            let seqs = &decoder.log_seqs;
            let max = self.options.max_log_events as usize;
            let mut through = 0;
            if max > 0 && seqs.len() > max {
                through = seqs[seqs.len() - max - 1].0;
            }
            if let Some(age) = max_age {
                let oldest = super::now_ms().saturating_sub(age.as_millis() as u64);
                if let Some((seq, _)) = seqs.iter().take_while(|(_, ts)| *ts < oldest).last() {
                    through = through.max(*seq);
                }
            }
            through
        };
        if through == 0 {
            return Ok(());
        }
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))?;
        stream
            .purge()
            .filter(self.subjects.log.clone())
            .sequence(through + 1)
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))?;
        let payload = serde_json::to_vec(&Floor { through }).expect("a floor serializes");
        self.js
            .send_publish(
                self.subjects.floor.clone(),
                jetstream::message::PublishMessage::build()
                    .payload(payload.into())
                    .header("Nats-Rollup", "sub"),
            )
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))?
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))?;
        Ok(())
    }
}

/// Another node changed the subject first.
struct WrongLast;

/// Tries of a conditional publish that keeps losing to other nodes.
const MAX_TRIES: usize = 5;

/// An ordered consumer of the whole stream from `start`.
async fn consumer_from(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
    start: u64,
) -> Result<consumer::pull::Ordered, String> {
    let stream = js.get_stream(stream).await.map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start.max(1),
            },
            filter_subject: filter.to_owned(),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    consumer.messages().await.map_err(|e| e.to_string())
}

/// What the tail task shares with the log.
struct Tail {
    js: jetstream::Context,
    url: String,
    stream: String,
    /// Every subject of the stream, `{name}.>`.
    filter: String,
    decoder: Arc<Mutex<Decoder>>,
    replica: Arc<Replica>,
    applied: Arc<watch::Sender<u64>>,
    status: Arc<Status>,
    reconnected: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
}

/// Reads the stream from the last applied sequence on, for as long as the
/// log lives, starting over with backoff after errors.
async fn tail(tail: Tail) {
    let Tail {
        js,
        url,
        stream,
        filter,
        decoder,
        replica,
        applied,
        status,
        reconnected,
        stop,
    } = tail;
    let mut backoff = Backoff::new();
    loop {
        let from = lock(&decoder).last_seq + 1;
        let started = tokio::select! {
            _ = stop.cancelled() => return,
            c = consumer_from(&js, &stream, &filter, from) => c,
        };
        let mut messages = match started {
            Ok(messages) => messages.ready_chunks(1000),
            Err(err) => {
                status.tail_lost(&url, &err);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = backoff.wait() => {}
                }
                continue;
            }
        };
        status.tail_ok(&url, replica.head());
        backoff.reset();
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                _ = reconnected.notified() => break,
                n = messages.next() => n,
            };
            let Some(chunk) = next else { break };
            let mut page = Vec::with_capacity(chunk.len());
            let mut failed = None;
            for item in chunk {
                match item.map_err(|e| e.to_string()).and_then(Raw::consumed) {
                    Ok(message) => page.push(message),
                    Err(err) => {
                        failed = Some(err);
                        break;
                    }
                }
            }
            let prev = *applied.borrow();
            let page = match complete(&js, &stream, &filter, prev, page).await {
                Ok(page) => page,
                Err(err) => {
                    status.tail_lost(&url, &err);
                    break;
                }
            };
            apply(&decoder, &replica, &applied, page, false);
            if let Some(err) = failed {
                status.tail_lost(&url, &err);
                break;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = backoff.wait() => {}
        }
    }
}

impl Drop for NatsLog {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait]
impl EventLog for NatsLog {
    fn attach(&self, sink: Arc<dyn CommitSink>) -> EventId {
        let head = self.replica.attach(sink);
        let task = tail(Tail {
            js: self.js.clone(),
            url: self.url.clone(),
            stream: self.stream.clone(),
            filter: format!("{}.>", self.options.name),
            decoder: self.decoder.clone(),
            replica: self.replica.clone(),
            applied: self.applied.clone(),
            status: self.status.clone(),
            reconnected: self.reconnected.clone(),
            stop: self.stop.clone(),
        });
        spawn_tail(task);
        head
    }

    async fn append(&self, drafts: Vec<EventDraft>) -> Result<Vec<Appended>, LogError> {
        if drafts.len() > MAX_RECORDS {
            return Err(LogError::Failed(format!(
                "a batch on NATS holds at most {MAX_RECORDS} events"
            )));
        }
        let keyed = drafts.iter().any(|d| d.idempotency_key.is_some());
        let n = drafts.len();
        let (seq, applied) = self
            .publish(&Batch {
                events: drafts,
                controls: Vec::new(),
            })
            .await?;
        if let Some(outcome) = lock(&self.decoder).outcomes.remove(&seq) {
            return Ok(outcome);
        }
        if keyed || applied {
            // Stored, but which keys repeated is known only once this node
            // has read the message: the publisher retries with its keys.
            return Err(LogError::Unavailable(
                "published, but this node has not read the log back yet".into(),
            ));
        }
        tracing::warn!(
            seq,
            "published, but this node has not read its own event back yet"
        );
        let decoder = lock(&self.decoder);
        Ok((0..n)
            .map(|i| Appended {
                id: EventId(decoder.id(seq, i)),
                duplicate: false,
            })
            .collect())
    }

    async fn append_control(&self, records: Vec<Control>) -> Result<(), LogError> {
        for chunk in records.chunks(MAX_RECORDS) {
            self.publish(&Batch {
                events: Vec::new(),
                controls: chunk.to_vec(),
            })
            .await?;
        }
        Ok(())
    }

    async fn append_guarded(
        &self,
        draft: EventDraft,
        guard: StateGuard,
    ) -> Result<Result<Appended, Conflict>, LogError> {
        let (last, current) = {
            let decoder = lock(&self.decoder);
            let (last, entry) = decoder.state.get(&guard.slot).cloned().unwrap_or_default();
            (last, entry.as_deref().and_then(entry_version))
        };
        let lost = |current| async move {
            let last = self.engine_last_seq().await?;
            let engine_head = EventId(lock(&self.decoder).id(last, MAX_RECORDS - 1));
            Ok(Err(Conflict {
                current,
                engine_head,
            }))
        };
        if current != guard.expect {
            // This node has not read the change that made it so yet, or
            // the writer is behind: the engine decides nothing new.
            return lost(current).await;
        }
        let subject = format!("{}{}", self.subjects.state, hex(&guard.slot));
        let change = StateChange {
            event: draft,
            entry: guard.entry,
        };
        let payload = serde_json::to_vec(&change).expect("a state change serializes");
        match self.publish_to(subject, payload, Some(last)).await? {
            Ok((seq, _)) => Ok(Ok(Appended {
                id: EventId(lock(&self.decoder).id(seq, 0)),
                duplicate: false,
            })),
            Err(WrongLast) => lost(current).await,
        }
    }

    async fn retained_state(&self) -> Result<Option<(EventId, Vec<(String, String)>)>, LogError> {
        let decoder = lock(&self.decoder);
        let values = decoder
            .state
            .iter()
            .filter_map(|(slot, (_, entry))| Some((slot.clone(), entry.clone()?)))
            .collect();
        Ok(Some((EventId(self.replica.head()), values)))
    }

    async fn append_presence(&self, updates: Vec<PresenceUpdate>) -> Result<(), LogError> {
        for update in updates {
            self.change_presence(
                &self.options.node,
                &update.topic,
                &update.user,
                update.joined,
            )
            .await?;
        }
        Ok(())
    }

    async fn presence_here(&self) -> Result<Option<Vec<(Topic, String)>>, LogError> {
        let decoder = lock(&self.decoder);
        let node = &self.options.node;
        Ok(Some(
            decoder
                .presence
                .iter()
                .filter(|(_, (_, _, nodes))| nodes.contains(node))
                .filter_map(|((topic, user), _)| Some((Topic::new(topic).ok()?, user.clone())))
                .collect(),
        ))
    }

    async fn report_node(&self, node: &str, stats: serde_json::Value) -> Result<(), LogError> {
        let unavailable = |e: String| LogError::Unavailable(e);
        self.js
            .publish(
                format!("{}.{node}", self.reports_subject),
                stats.to_string().into(),
            )
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<serde_json::Value>, LogError> {
        let unavailable = |e: String| LogError::Unavailable(e);
        let mut subjects = self
            .reports
            .info_with_subjects(format!("{}.>", self.reports_subject))
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let mut out = Vec::new();
        let now = super::now_ms();
        while let Some(subject) = subjects.next().await {
            let (subject, _) = subject.map_err(|e| unavailable(e.to_string()))?;
            let Ok(message) = self.reports.get_last_raw_message_by_subject(&subject).await else {
                continue; // expired meanwhile
            };
            let Ok(report) = serde_json::from_slice::<serde_json::Value>(&message.payload) else {
                continue;
            };
            if fresh(&report, now) {
                out.push(report);
            }
        }
        Ok(out)
    }

    async fn maintain(&self) {
        if let Err(err) = self.trim(self.max_age).await {
            tracing::debug!(%err, "could not trim the cluster log");
        }
        // Nodes that stopped reporting (their reports expired from the
        // bucket) leave every presence set they were in a while ago.
        let live: Vec<String> = match self.nodes().await {
            Ok(reports) => reports
                .iter()
                .filter_map(|r| r["node"].as_str().map(str::to_owned))
                .collect(),
            Err(_) => return,
        };
        let now = super::now_ms();
        let gone: Vec<(String, Topic, String)> = lock(&self.decoder)
            .presence
            .iter()
            .filter(|(_, (_, ts, _))| ts + NODE_STALE_MS < now)
            .flat_map(|((topic, user), (_, _, nodes))| {
                nodes
                    .iter()
                    .filter(|n| **n != self.options.node && !live.contains(n))
                    .filter_map(|n| Some((n.clone(), Topic::new(topic).ok()?, user.clone())))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (node, topic, user) in gone {
            tracing::info!(node, "a node stopped reporting; its users leave");
            if let Err(err) = self.change_presence(&node, &topic, &user, false).await {
                tracing::debug!(%err, node, "could not retire a gone node's presence");
            }
        }
    }

    async fn read(&self, request: ReadRequest<'_>) -> Result<super::Page, LogError> {
        Ok(self.replica.read(&request))
    }

    async fn coverage(&self, after: EventId, selector: &Selector) -> Result<Coverage, LogError> {
        Ok(self.replica.coverage(after, selector))
    }

    async fn catch_up(&self, id: EventId) {
        // Ids name a message's sequence: wait for that message, whatever it
        // held (a condition that failed, a report: no entry, no head).
        let (base, step) = (lock(&self.decoder).base, MAX_RECORDS as u64);
        let seq = id.0.saturating_sub(base) / step;
        let applied = *self.applied.borrow();
        // A resume from far beyond what this node has read was never
        // issued (a node is not that far behind): not waited for.
        if seq > applied && seq - applied <= CATCH_UP_MAX_BEHIND {
            self.wait_applied(seq).await;
        }
    }

    fn health(&self) -> Result<(), String> {
        self.status.health()
    }

    fn node(&self) -> Option<&str> {
        Some(&self.options.node)
    }

    fn engine(&self) -> Option<EngineStatus> {
        Some(self.status.report())
    }

    fn retention(&self) -> super::memory::Retention {
        self.replica.retention()
    }

    fn kind(&self) -> &'static str {
        "nats"
    }
}

/// A decoder for a node named `node` of a cluster named `herald`, outside
/// any engine connection (unit tests, fuzzing).
#[cfg(any(test, feature = "fuzzing"))]
fn standalone_decoder(
    node: &str,
    first_id: u64,
    max_events_per_topic: usize,
    idempotency_window: Duration,
    max_idempotency_keys: usize,
) -> Decoder {
    let settings = MemoryLogSettings {
        max_events_per_topic,
        max_age: None,
        idempotency_window,
        max_idempotency_keys,
        max_bytes: u64::MAX,
        max_topics: usize::MAX,
    };
    let options = ClusterOptions {
        name: "herald".into(),
        max_log_events: 0,
        connect_timeout: Duration::from_secs(1),
        apply_timeout: Duration::from_secs(1),
        node: node.into(),
    };
    Decoder::new(first_id, &settings, &options, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder(window_ms: u64) -> Decoder {
        standalone_decoder("me", 1_000_000, 10, Duration::from_millis(window_ms), 100)
    }

    fn keyed(key: &str) -> EventDraft {
        EventDraft {
            data: "x".into(),
            idempotency_key: Some(key.into()),
            ..Default::default()
        }
    }

    fn payload(events: Vec<EventDraft>) -> Vec<u8> {
        serde_json::to_vec(&Batch {
            events,
            controls: Vec::new(),
        })
        .unwrap()
    }

    #[test]
    fn ids_follow_the_sequence_and_keys_repeat_by_log_time() {
        let mut d = decoder(1000);
        let first = d
            .decode(
                1,
                5_000,
                "herald.log",
                Some("me"),
                &payload(vec![keyed("k"), keyed("k")]),
            )
            .unwrap();
        // The second draft repeats the first's key within the batch.
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].id(), EventId(1_000_000 + 1024));
        assert_eq!(
            d.outcomes[&1],
            [
                Appended {
                    id: EventId(1_001_024),
                    duplicate: false
                },
                Appended {
                    id: EventId(1_001_024),
                    duplicate: true
                }
            ]
        );
        // Another node's message within the window: a duplicate, no entry.
        assert!(d
            .decode(
                2,
                5_999,
                "herald.log",
                Some("other"),
                &payload(vec![keyed("k")])
            )
            .unwrap()
            .is_empty());
        assert!(!d.outcomes.contains_key(&2));
        // At the window's end (log time, not the clock): new again.
        let later = d
            .decode(3, 6_000, "herald.log", None, &payload(vec![keyed("k")]))
            .unwrap();
        assert_eq!(later[0].id(), EventId(1_000_000 + 3 * 1024));
    }
}

/// Fuzzing entry: a sequence of messages (`kind` picks the subject) through
/// one node's decoder, as its tail would apply them. Never panics, ids only
/// grow.
#[cfg(feature = "fuzzing")]
pub fn fuzz_messages(messages: &[(u8, Vec<u8>)]) {
    let mut decoder = standalone_decoder("fuzz", 1 << 40, 16, Duration::from_secs(60), 64);
    let mut last_id = 0;
    for (i, (kind, payload)) in messages.iter().enumerate() {
        let subject = match kind % 4 {
            0 => "herald.log".to_owned(),
            1 => "herald.floor".to_owned(),
            2 => format!("herald.state.{}", hex("t\nk")),
            _ => format!("herald.pres.{}", hex("t\nu")),
        };
        let seq = i as u64 + 1;
        if let Ok(entries) = decoder.decode(seq, 1000 + seq, &subject, None, payload) {
            for entry in entries {
                let id = entry.id().0;
                assert!(id > last_id, "ids grow");
                last_id = id;
            }
        }
    }
}
