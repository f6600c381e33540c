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
//!
//! Why this file is about 700 lines: connecting (creating or checking the
//! stream, reading it whole at start) and appending (conditional
//! publishes that retry when another node wrote first) both go through
//! the same state; what the stream holds is in `codec.rs`, reading it in
//! `tail.rs`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::engine::{
    fresh, spawn_tail, Backoff, ClusterOptions, ConnectError, Status, NODE_STALE_MS,
};
use super::memory::MemoryLogSettings;
use super::replica::Replica;
use super::{
    Appended, ClusterLog, CommitSink, Conflict, Control, Coverage, EngineStatus, EventLog,
    LogError, PresenceUpdate, ReadRequest, StateGuard,
};
use crate::values::event::{Event, EventDraft, EventId, SharedEvent};
use crate::values::selector::Selector;
use crate::values::topic::Topic;

mod codec;
mod tail;

use codec::*;
use tail::*;

/// Records one message holds at most: the id step between messages.
pub(crate) use super::engine::NATS_MAX_RECORDS as MAX_RECORDS;

/// The header naming the node that published a message.
const NODE_HEADER: &str = "Herald-Node";
/// Messages a resume may be ahead of this node's reading and still be
/// waited for (see `catch_up`).
const CATCH_UP_MAX_BEHIND: u64 = 1 << 20;

pub(crate) struct NatsLog {
    js: jetstream::Context,
    url: String,
    stream: String,
    /// The stream, to read events back by sequence.
    log_stream: stream::Stream,
    /// Whether the stream answers direct gets.
    direct: bool,
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

/// The stream's name for a cluster name: JetStream names allow no dots.
fn stream_name(name: &str) -> String {
    name.replace('.', "_").to_uppercase()
}

impl NatsLog {
    /// Connects (retrying until `options.connect_timeout`), creates the
    /// stream if it is missing, and reads it into this node's replica.
    pub(crate) async fn connect(
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
            // Reads of events past a node's hot window get messages by
            // sequence: a direct get answers with the message as stored,
            // where the API's get wraps it in JSON and base64.
            allow_direct: true,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let (js, log_stream, info) = loop {
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
                Ok::<_, String>((js, stream, info))
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
        // A stream an earlier version made has no direct gets yet.
        let direct = info.config.allow_direct
            || {
                let mut config = info.config.clone();
                config.allow_direct = true;
                match js.update_stream(config).await {
                    Ok(_) => true,
                    Err(err) => {
                        tracing::warn!(%err, "cannot allow direct gets on the stream; older events are read back through the slower message get");
                        false
                    }
                }
            };
        let base = (info.created.unix_timestamp_nanos() / 1000).max(0) as u64;
        let first_seq = info.state.first_sequence;
        let last_seq = info.state.last_sequence;
        let step = MAX_RECORDS as u64;
        // Everything before the stream's first message is gone.
        let floor = match first_seq > 1 {
            true => base + first_seq * step - 1,
            false => 0,
        };
        let replica = Arc::new(Replica::new(
            settings,
            base + step,
            floor,
            options.data_dir.as_deref(),
        ));
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
            log_stream,
            direct,
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

    /// Events past the replica's hot window, read back by id (ascending,
    /// with the publish time the log gave each): the message of each
    /// sequence they lie in, a few requests at a time. Those the stream no
    /// longer holds are left out.
    async fn fetch(&self, wanted: Vec<(u64, u64)>) -> Result<Vec<SharedEvent>, LogError> {
        use async_nats::jetstream::stream::{DirectGetErrorKind, LastRawMessageErrorKind};
        const IN_FLIGHT: usize = 32;
        let (base, step) = (lock(&self.decoder).base, MAX_RECORDS as u64);
        /// An event wanted from a message: its index there, id and
        /// publish time.
        type Wanted = (usize, u64, u64);
        // By sequence, ascending.
        let mut messages: Vec<(u64, Vec<Wanted>)> = Vec::new();
        for (id, ms) in wanted {
            let (seq, index) = ((id - base) / step, ((id - base) % step) as usize);
            match messages.last_mut() {
                Some((last, items)) if *last == seq => items.push((index, id, ms)),
                _ => messages.push((seq, vec![(index, id, ms)])),
            }
        }
        let (stream, direct) = (&self.log_stream, self.direct);
        let read: Vec<_> = futures_util::stream::iter(messages)
            .map(|(seq, items)| async move {
                let found = match direct {
                    true => match stream.direct_get(seq).await {
                        Ok(message) => Some(message),
                        Err(e) if e.kind() == DirectGetErrorKind::NotFound => None,
                        Err(e) => return Err(LogError::Unavailable(e.to_string())),
                    },
                    false => match stream.get_raw_message(seq).await {
                        Ok(message) => Some(message),
                        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => None,
                        Err(e) => return Err(LogError::Unavailable(e.to_string())),
                    },
                };
                // Exactly that message, or none.
                Ok(found
                    .filter(|message| message.sequence == seq)
                    .map(|message| (message, items)))
            })
            .buffered(IN_FLIGHT)
            .collect()
            .await;
        let mut out = Vec::new();
        for found in read {
            let Some((message, items)) = found? else {
                continue;
            };
            if message.subject.as_str() != self.subjects.log {
                continue;
            }
            let indexes: Vec<usize> = items.iter().map(|&(index, _, _)| index).collect();
            let Ok(drafts) = batch_events(&message.payload, &indexes) else {
                continue; // skipped when it was first read, too
            };
            let mut items = items.into_iter();
            for (index, draft) in drafts {
                let Some((_, id, ms)) = items.find(|&(at, _, _)| at == index) else {
                    break;
                };
                out.push(Arc::new(Event::commit(draft, EventId(id), ms)));
            }
        }
        Ok(out)
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
        topic: &crate::values::topic::Topic,
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

    async fn read(&self, request: ReadRequest<'_>) -> Result<super::Page, LogError> {
        self.replica
            .read(&request, |wanted| self.fetch(wanted))
            .await
    }

    async fn coverage(&self, after: EventId, selector: &Selector) -> Result<Coverage, LogError> {
        Ok(self.replica.coverage(after, selector))
    }

    fn health(&self) -> Result<(), String> {
        self.status.health()
    }

    fn retention(&self) -> super::memory::Retention {
        self.replica.retention()
    }

    fn kind(&self) -> &'static str {
        "nats"
    }

    fn cluster(&self) -> Option<&dyn ClusterLog> {
        Some(self)
    }
}

#[async_trait]
impl ClusterLog for NatsLog {
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

    async fn retained_state(&self) -> Result<(EventId, Vec<(String, String)>), LogError> {
        let decoder = lock(&self.decoder);
        let values = decoder
            .state
            .iter()
            .filter_map(|(slot, (_, entry))| Some((slot.clone(), entry.clone()?)))
            .collect();
        Ok((EventId(self.replica.head()), values))
    }

    async fn presence_here(&self) -> Result<Vec<(Topic, String)>, LogError> {
        let decoder = lock(&self.decoder);
        let node = &self.options.node;
        Ok(decoder
            .presence
            .iter()
            .filter(|(_, (_, _, nodes))| nodes.contains(node))
            .filter_map(|((topic, user), _)| Some((Topic::new(topic).ok()?, user.clone())))
            .collect())
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

    async fn catch_up_with_engine(&self) -> Result<(), LogError> {
        let last = self.engine_last_seq().await?;
        self.wait_applied(last).await;
        Ok(())
    }

    fn node(&self) -> &str {
        &self.options.node
    }

    fn engine(&self) -> EngineStatus {
        self.status.report()
    }
}

/// Fuzzing entry (see [`codec::fuzz_messages`]).
#[cfg(feature = "fuzzing")]
pub use codec::fuzz_messages;
