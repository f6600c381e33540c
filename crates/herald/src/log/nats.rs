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
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::engine::{Backoff, ClusterOptions, ConnectError, Status};
use super::memory::MemoryLogSettings;
use super::replica::Replica;
use super::{
    Appended, CommitSink, Control, Coverage, EngineStatus, Entry, EventLog, LogError, ReadRequest,
};
use crate::event::{Event, EventDraft, EventId, SharedEvent};
use crate::selector::Selector;

/// Records one message holds at most: the id step between messages.
pub const MAX_RECORDS: usize = 1024;

/// The header naming the node that published a message.
const NODE_HEADER: &str = "Herald-Node";

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
}

impl Decoder {
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

    /// The entries of the message at `seq`. Idempotency is judged by log
    /// time, never the local clock, so every node judges alike.
    fn decode(
        &mut self,
        seq: u64,
        published_ms: u64,
        from: Option<&str>,
        payload: &[u8],
    ) -> Result<Vec<Entry>, String> {
        let batch: Batch = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
        if batch.events.len() + batch.controls.len() > MAX_RECORDS {
            return Err(format!("more than {MAX_RECORDS} records in one message"));
        }
        let ts = published_ms.max(self.last_ms);
        self.last_ms = ts;
        self.last_seq = seq;
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
        if from == Some(self.node.as_str()) {
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
    subject: String,
    replica: Arc<Replica>,
    decoder: Arc<Mutex<Decoder>>,
    /// The last sequence applied: publishers wait on it.
    applied: Arc<watch::Sender<u64>>,
    options: ClusterOptions,
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

/// Applies messages of the log, in order, as they come: to the replica,
/// then to the sequence publishers wait on.
fn apply(
    decoder: &Mutex<Decoder>,
    replica: &Replica,
    applied: &watch::Sender<u64>,
    messages: Vec<jetstream::Message>,
    loading: bool,
) -> Result<(), String> {
    let mut entries = Vec::new();
    let mut last = None;
    {
        let mut decoder = lock(decoder);
        for message in &messages {
            let info = message.info().map_err(|e| e.to_string())?;
            let seq = info.stream_sequence;
            if seq <= decoder.last_seq {
                continue; // read again after a reconnect
            }
            let from = message
                .headers
                .as_ref()
                .and_then(|h| h.get(NODE_HEADER))
                .map(|v| v.as_str().to_owned());
            let decoded = decoder
                .decode(
                    seq,
                    unix_ms(info.published),
                    from.as_deref(),
                    &message.payload,
                )
                .map_err(|e| format!("message {seq}: {e}"))?;
            entries.extend(decoded);
            last = Some(seq);
        }
    }
    if loading {
        replica.load(entries);
    } else {
        replica.deliver(entries);
    }
    if let Some(seq) = last {
        applied.send_replace(seq);
    }
    Ok(())
}

impl NatsLog {
    /// Connects (retrying until `options.connect_timeout`), creates the
    /// stream if it is missing, and reads it into this node's replica.
    pub async fn connect(
        url: &str,
        settings: MemoryLogSettings,
        options: ClusterOptions,
    ) -> Result<NatsLog, ConnectError> {
        let status = Arc::new(Status::default());
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
                            status.connected.store(true, Ordering::Relaxed);
                            // Appends failed while it was away; the next
                            // one is likely to succeed: ready again.
                            Status::set(&status.write, None);
                            // The tail's consumer may be gone with the old
                            // connection (a restarted server): start over now
                            // rather than after its heartbeats time out.
                            wake.notify_one();
                            tracing::info!("cluster engine reachable again");
                        }
                        async_nats::Event::Disconnected => {
                            status.connected.store(false, Ordering::Relaxed);
                            status.reconnects.fetch_add(1, Ordering::Relaxed);
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
        let subject = format!("{}.log", options.name);
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            max_messages: match options.max_log_events {
                0 => -1,
                n => n as i64,
            },
            max_age: settings.max_age.unwrap_or_default(),
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
        status.connected.store(true, Ordering::Relaxed);
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
        let decoder = Arc::new(Mutex::new(Decoder {
            base,
            window_ms: settings.idempotency_window.as_millis().max(1) as u64,
            max_keys: settings.max_idempotency_keys,
            node: options.node.clone(),
            keys: HashMap::new(),
            key_order: VecDeque::new(),
            last_seq: first_seq.saturating_sub(1),
            last_ms: 0,
            outcomes: BTreeMap::new(),
        }));
        let applied = Arc::new(watch::channel(first_seq.saturating_sub(1)).0);
        let mut loaded = 0;
        if info.state.messages > 0 {
            let mut messages = consumer_from(&js, &name, first_seq)
                .await
                .map_err(unreachable)?;
            while *applied.borrow() < last_seq {
                let mut page = Vec::new();
                let next = tokio::time::timeout(options.connect_timeout, messages.next()).await;
                match next {
                    Ok(Some(Ok(message))) => page.push(message),
                    Ok(Some(Err(e))) => return Err(unreachable(e.to_string())),
                    Ok(None) | Err(_) => {
                        return Err(unreachable("the stream ended while it was read".into()))
                    }
                }
                loaded += page.len();
                apply(&decoder, &replica, &applied, page, true).map_err(|reason| {
                    ConnectError::Corrupt {
                        id: String::new(),
                        reason,
                    }
                })?;
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
            subject,
            replica,
            decoder,
            applied,
            options,
            status,
            reconnected,
            stop: CancellationToken::new(),
        })
    }

    /// Publishes one message; returns its sequence once this node has
    /// applied it (or the wait ran out: `false`).
    async fn publish(&self, batch: &Batch) -> Result<(u64, bool), LogError> {
        if !self.status.connected.load(Ordering::Relaxed) {
            // Refused now rather than after the publish timeout.
            return Err(LogError::Unavailable(
                "the cluster engine is unreachable".into(),
            ));
        }
        let payload = serde_json::to_vec(batch).expect("a batch serializes");
        let message = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .header(NODE_HEADER, self.options.node.as_str());
        let acked = async {
            self.js
                .send_publish(self.subject.clone(), message)
                .await?
                .await
        }
        .await;
        let ack = match acked {
            Ok(ack) => {
                if Status::set(&self.status.write, None) {
                    tracing::info!(url = %self.url, "cluster appends succeed again");
                }
                ack
            }
            Err(err) => {
                use async_nats::jetstream::context::PublishErrorKind;
                if err.kind() == PublishErrorKind::MaxPayloadExceeded {
                    return Err(LogError::Failed(
                        "the batch is larger than the NATS server's max_payload".into(),
                    ));
                }
                let reason = err.to_string();
                if Status::set(&self.status.write, Some(reason.clone())) {
                    tracing::error!(%err, url = %self.url, "cluster append failed; publishes refused");
                }
                return Err(LogError::Unavailable(reason));
            }
        };
        let seq = ack.sequence;
        let mut applied = self.applied.subscribe();
        let reached =
            tokio::time::timeout(self.options.apply_timeout, applied.wait_for(|&a| a >= seq)).await;
        Ok((seq, matches!(reached, Ok(Ok(_)))))
    }
}

/// An ordered consumer of the whole stream from `start`.
async fn consumer_from(
    js: &jetstream::Context,
    stream: &str,
    start: u64,
) -> Result<consumer::pull::Ordered, String> {
    let stream = js.get_stream(stream).await.map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start.max(1),
            },
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
            c = consumer_from(&js, &stream, from) => c,
        };
        let mut messages = match started {
            Ok(messages) => messages.ready_chunks(1000),
            Err(err) => {
                if Status::set(&status.tail, Some(err.clone())) {
                    tracing::error!(%err, url, "lost the cluster engine; reconnecting");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = backoff.wait() => {}
                }
                continue;
            }
        };
        if Status::set(&status.tail, None) {
            tracing::info!(url, head = replica.head(), "cluster engine reachable again");
            Status::set(&status.write, None);
        }
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
                match item {
                    Ok(message) => page.push(message),
                    Err(err) => {
                        failed = Some(err.to_string());
                        break;
                    }
                }
            }
            if let Err(err) = apply(&decoder, &replica, &applied, page, false) {
                tracing::error!(%err, "cannot apply the cluster log; this node stops reading it");
                Status::set(&status.tail, Some(err));
                stop.cancelled().await;
                return;
            }
            if let Some(err) = failed {
                if Status::set(&status.tail, Some(err.clone())) {
                    tracing::error!(%err, url, "lost the cluster engine; reconnecting");
                }
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
            decoder: self.decoder.clone(),
            replica: self.replica.clone(),
            applied: self.applied.clone(),
            status: self.status.clone(),
            reconnected: self.reconnected.clone(),
            stop: self.stop.clone(),
        });
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(task);
            }
            Err(_) => tracing::error!("a clustered log needs a tokio runtime: not tailing"),
        }
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

    async fn read(&self, request: ReadRequest<'_>) -> Result<Vec<SharedEvent>, LogError> {
        Ok(self.replica.read(&request))
    }

    async fn coverage(&self, after: EventId, selector: &Selector) -> Result<Coverage, LogError> {
        Ok(self.replica.coverage(after, selector))
    }

    async fn catch_up(&self, id: EventId) {
        if id.0 > self.replica.head() {
            self.replica
                .wait_for(id.0, self.options.apply_timeout)
                .await;
        }
    }

    fn health(&self) -> Result<(), String> {
        if !self.status.connected.load(Ordering::Relaxed) {
            return Err("the cluster engine is unreachable: disconnected".into());
        }
        if let Some(err) = Status::get(&self.status.tail) {
            return Err(format!("the cluster engine is unreachable: {err}"));
        }
        if let Some(err) = Status::get(&self.status.write) {
            return Err(format!("the last cluster append failed: {err}"));
        }
        Ok(())
    }

    fn node(&self) -> Option<&str> {
        Some(&self.options.node)
    }

    fn engine(&self) -> Option<EngineStatus> {
        Some(EngineStatus {
            connected: self.status.connected.load(Ordering::Relaxed),
            reconnects: self.status.reconnects.load(Ordering::Relaxed),
        })
    }

    fn kind(&self) -> &'static str {
        "nats"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder(window_ms: u64) -> Decoder {
        Decoder {
            base: 1_000_000,
            window_ms,
            max_keys: 100,
            node: "me".into(),
            keys: HashMap::new(),
            key_order: VecDeque::new(),
            last_seq: 0,
            last_ms: 0,
            outcomes: BTreeMap::new(),
        }
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
            .decode(1, 5_000, Some("me"), &payload(vec![keyed("k"), keyed("k")]))
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
            .decode(2, 5_999, Some("other"), &payload(vec![keyed("k")]))
            .unwrap()
            .is_empty());
        assert!(!d.outcomes.contains_key(&2));
        // At the window's end (log time, not the clock): new again.
        let later = d
            .decode(3, 6_000, None, &payload(vec![keyed("k")]))
            .unwrap();
        assert_eq!(later[0].id(), EventId(1_000_000 + 3 * 1024));
    }
}
