//! The log on Redis Streams: many nodes, one ordered log.
//!
//! Keys (all in one hash slot through the `{name}` tag, so the layout is
//! valid on Redis Cluster and a script may touch them together):
//!
//! * `{herald}:log` — the stream. One entry per event, field `d` holding
//!   the draft as JSON, or per control record (inbox changes every node
//!   applies), field `c`. The entry id *is* the event id: Herald id `n` is
//!   stream id `n / 1000 - n % 1000`, so the stream's own order is the
//!   log's order and the millisecond part is the publish time.
//! * `{herald}:seq` — the last id issued.
//! * `{herald}:first` — the first id this log may issue, set once by the
//!   first node that starts.
//! * `{herald}:idem:<key>` — an idempotency key's first id, expiring after
//!   the window.
//! * `{herald}:state` — a hash of every retained value (`topic` newline
//!   `key` → `{version, value}`), changed in the same script as the log:
//!   a change commits only on the version its writer saw, whichever node
//!   it comes through, and a node that starts reads retained state here,
//!   however much of the log has been trimmed.
//! * `{herald}:presence:<topic>\n<user>` — the nodes where the user has a
//!   stream on a presence topic, and `{herald}:node-presence:<node>` — the
//!   sets a node is in. A `herald.presence` join is written only by the
//!   append that makes a set non-empty, a leave only by the one that
//!   empties it; the sets of a node that stopped reporting are emptied by
//!   whichever node notices.
//! * `{herald}:nodes` — a hash of each node's last reported numbers, for
//!   cluster-wide `/v1/stats`; entries older than [`super::engine::NODE_STALE_MS`] are
//!   ignored and removed.
//!
//! **Appends** run one Lua script: for each draft it answers a repeated
//! idempotency key from its key, or takes the next id —
//! `max(now in µs, last + 1)`, so ids are start-time-based like a single
//! node's and strictly increasing — adds the entry, and remembers the key;
//! then it trims the stream. Redis runs a script alone, so ids and entries
//! are assigned in one order for every node. With `appendonly yes` and
//! `appendfsync always` the script's writes are on disk before it returns.
//!
//! **Tailing**: each node reads the stream with `XREAD BLOCK` from the last
//! id it applied and applies entries to its [`Replica`], which hands them to
//! fan-out. A publisher's answer waits until its own node has applied the
//! events. After a lost connection the tail reconnects with backoff and
//! reads on from the same id: nothing is skipped or applied twice.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError, Value};
use tokio_util::sync::CancellationToken;

use super::engine::{fresh, spawn_tail, Backoff, ClusterOptions, ConnectError, Status};
use super::memory::MemoryLogSettings;
use super::replica::Replica;
use super::{
    Appended, ClusterLog, CommitSink, Conflict, Control, Coverage, EngineStatus, Entry, EventLog,
    LogError, PresenceUpdate, ReadRequest, StateGuard,
};
use crate::values::event::{EventDraft, EventId, SharedEvent};
use crate::values::selector::Selector;
use crate::values::topic::Topic;

mod codec;
mod tail;

use codec::{decode_entries, stream_id, Keys, Record};
use tail::{tail, trimmed_through};

/// Entries one read takes at most.
pub(super) const PAGE: usize = 1000;
/// How long one `XREAD` blocks before it asks again.
pub(super) const BLOCK_MS: u64 = 2000;

/// Assigns ids and appends, atomically. KEYS: log, seq, state values, the
/// presence set of the node named in ARGV[7], then keys records name.
/// ARGV: window ms, max entries, max age ms; a state guard (the field of a
/// retained value, `""` for none), the version it must have (`""`: no
/// value) and the value it gets (`{version, value}` as JSON; `""`:
/// deleted); a node name; then four per record: the index in KEYS of its
/// idempotency key (0: none), a presence condition (`""`, or `+K`/`-K`:
/// the node joins/leaves the set KEYS[K], and the record is written only
/// when the set was empty before/is empty after), its field (`d` for an
/// event's draft, `c` for a control record) and its JSON.
/// Returns per record `{id, 0}`, `{first id, 1}` for a repeated
/// idempotency key, `{"0", 2}` for a record whose condition did not hold;
/// when the guard fails, only `{"current:last id", -1}` and nothing is
/// written.
const APPEND: &str = include_str!("append.lua");

/// Every retained value and the log's last id, at one instant. KEYS: seq,
/// state.
const STATE: &str = include_str!("state.lua");

/// Fixes where ids start (once per log) and returns it. KEYS: first.
const FIRST: &str = include_str!("first.lua");

pub(crate) struct RedisLog {
    client: Client,
    url: String,
    /// The connection appends use; dropped when it (or the tail's) fails,
    /// so the next append connects afresh.
    writer: Arc<tokio::sync::Mutex<Option<MultiplexedConnection>>>,
    replica: Arc<Replica>,
    keys: Arc<Keys>,
    options: ClusterOptions,
    max_age_ms: u64,
    idempotency_window_ms: u64,
    append: redis::Script,
    status: Arc<Status>,
    stop: CancellationToken,
}

fn writer_config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(5)))
}

/// An error that means the connection is gone (reconnect before the next
/// command) rather than a refused command.
pub(super) fn connection_lost(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
}

impl RedisLog {
    /// Connects (retrying until `options.connect_timeout`), fixes where
    /// ids start, and reads the whole stream into this node's replica.
    pub(crate) async fn connect(
        url: &str,
        settings: MemoryLogSettings,
        options: ClusterOptions,
    ) -> Result<RedisLog, ConnectError> {
        let client =
            Client::open(url).map_err(|e| ConnectError::BadUrl(url.to_owned(), e.to_string()))?;
        let keys = Keys::new(&options.name);
        let deadline = tokio::time::Instant::now() + options.connect_timeout;
        let mut backoff = Backoff::new();
        let (mut conn, first, floor) = loop {
            let attempt = async {
                let mut conn = client
                    .get_multiplexed_async_connection_with_config(&writer_config())
                    .await?;
                let first: String = redis::Script::new(FIRST)
                    .key(&keys.first)
                    .invoke_async(&mut conn)
                    .await?;
                let floor = trimmed_through(&mut conn, &keys.log).await?;
                Ok::<_, RedisError>((conn, first, floor))
            };
            match attempt.await {
                Ok(found) => break found,
                Err(err) if tokio::time::Instant::now() + backoff.peek() < deadline => {
                    tracing::warn!(%err, url, "cluster engine not reachable yet; retrying");
                    backoff.wait().await;
                }
                Err(err) => {
                    return Err(ConnectError::Unreachable {
                        url: url.to_owned(),
                        secs: options.connect_timeout.as_secs(),
                        last: err.to_string(),
                    })
                }
            }
        };
        let first: u64 = first.parse().unwrap_or(1);
        let replica = Replica::new(settings, first, floor, options.data_dir.as_deref());
        let mut after = "-".to_owned();
        let mut loaded = 0usize;
        loop {
            let page: Value = redis::cmd("XRANGE")
                .arg(&keys.log)
                .arg(&after)
                .arg("+")
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut conn)
                .await
                .map_err(|e| ConnectError::Unreachable {
                    url: url.to_owned(),
                    secs: 0,
                    last: e.to_string(),
                })?;
            let events = decode_entries(page)?;
            let Some(last) = events.last() else { break };
            after = format!("({}", stream_id(last.id().0));
            loaded += events.len();
            let full = events.len() == PAGE;
            replica.load(events);
            if !full {
                break;
            }
        }
        tracing::info!(
            url,
            loaded,
            retained = replica.len(),
            head = replica.head(),
            "joined the cluster log on Redis"
        );
        let h = settings;
        Ok(RedisLog {
            client,
            url: url.to_owned(),
            writer: Arc::new(tokio::sync::Mutex::new(Some(conn))),
            replica: Arc::new(replica),
            keys: Arc::new(keys),
            max_age_ms: h.max_age.map_or(0, |a| a.as_millis() as u64),
            idempotency_window_ms: h.idempotency_window.as_millis().max(1) as u64,
            options,
            append: redis::Script::new(APPEND),
            status: Arc::new(Status::connected()),
            stop: CancellationToken::new(),
        })
    }

    async fn writer(&self) -> Result<MultiplexedConnection, RedisError> {
        let mut slot = self.writer.lock().await;
        if let Some(conn) = &*slot {
            return Ok(conn.clone());
        }
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&writer_config())
            .await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Events past the replica's hot window, read back by id (ascending):
    /// one `XRANGE` per run of consecutive ids, all in one pipeline. Those
    /// the stream no longer holds are left out.
    async fn fetch(&self, wanted: Vec<(u64, u64)>) -> Result<Vec<SharedEvent>, LogError> {
        let unavailable = |e: RedisError| LogError::Unavailable(e.to_string());
        let mut pipe = redis::pipe();
        let mut rest = &wanted[..];
        while let Some(&(first, _)) = rest.first() {
            let run = 1 + rest
                .windows(2)
                .take_while(|pair| pair[1].0 == pair[0].0 + 1)
                .count();
            let last = rest[run - 1].0;
            pipe.cmd("XRANGE")
                .arg(&self.keys.log)
                .arg(stream_id(first))
                .arg(stream_id(last));
            rest = &rest[run..];
        }
        let mut conn = self.writer().await.map_err(unavailable)?;
        let pages: Vec<Value> = pipe.query_async(&mut conn).await.map_err(unavailable)?;
        let mut out = Vec::with_capacity(wanted.len());
        for page in pages {
            let entries = decode_entries(page).map_err(|e| LogError::Failed(e.to_string()))?;
            out.extend(entries.into_iter().filter_map(|entry| match entry {
                Entry::Event(event) | Entry::Held(event) => Some(event),
                Entry::Control { .. } | Entry::Unreadable { .. } => None,
            }));
        }
        Ok(out)
    }

    /// Appends, then waits until this node has applied what it appended;
    /// returns `(id, duplicate)` per record.
    async fn append_records(
        &self,
        records: &[Record<'_>],
        guard: Option<&StateGuard>,
        node: &str,
    ) -> Result<Result<Vec<(u64, bool)>, Conflict>, LogError> {
        let answers = match self.run_append(records, guard, node).await {
            Ok(answers) => {
                self.status.write_ok(&self.url);
                answers
            }
            Err(err) => return Err(self.status.write_failed(&self.url, &err.to_string())),
        };
        if let [(found, -1)] = &answers[..] {
            let (current, last) = found.split_once(':').unwrap_or_default();
            return Ok(Err(Conflict {
                current: current.parse().ok(),
                engine_head: EventId(last.parse().unwrap_or(0)),
            }));
        }
        if answers.len() != records.len() {
            return Err(LogError::Failed(format!(
                "the append script answered {} of {} records",
                answers.len(),
                records.len()
            )));
        }
        let mut out = Vec::with_capacity(answers.len());
        for (id, duplicate) in answers {
            let id = id
                .parse()
                .map_err(|_| LogError::Failed(format!("the append script gave the id {id:?}")))?;
            out.push((id, duplicate == 1));
        }
        let last = out.iter().map(|(id, _)| *id).max().unwrap_or(0);
        if !self
            .replica
            .wait_for(last, self.options.apply_timeout)
            .await
        {
            // Durable in the engine: acknowledged. This node applies it
            // once its tail reads again.
            tracing::warn!(
                id = last,
                "appended, but this node has not read its own record back yet"
            );
        }
        Ok(Ok(out))
    }

    /// A node stopped reporting: it leaves every presence set it was in
    /// (announcing the leaves that empties), then its report goes.
    async fn reap(&self, conn: &mut MultiplexedConnection, node: &str) -> Result<(), LogError> {
        let unavailable = |e: RedisError| LogError::Unavailable(e.to_string());
        let sets: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.node_presence(node))
            .query_async(conn)
            .await
            .map_err(unavailable)?;
        let updates: Vec<PresenceUpdate> = sets
            .iter()
            .filter_map(|set| self.keys.pair(set))
            .map(|(topic, user)| PresenceUpdate::new(topic, user, false))
            .collect();
        if !updates.is_empty() {
            tracing::info!(
                node,
                leaves = updates.len(),
                "a node stopped reporting; its users leave"
            );
            let records: Vec<Record> = updates
                .iter()
                .map(|u| Record::Presence {
                    joined: false,
                    set: self.keys.presence(u.topic.as_str(), &u.user),
                    draft: &u.announcement,
                })
                .collect();
            self.append_records(&records, None, node).await?.ok();
        }
        let _: i64 = redis::cmd("HDEL")
            .arg(&self.keys.nodes)
            .arg(node)
            .query_async(conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn run_append(
        &self,
        records: &[Record<'_>],
        guard: Option<&StateGuard>,
        node: &str,
    ) -> Result<Vec<(String, i64)>, RedisError> {
        let mut conn = self.writer().await?;
        let mut invocation = self.append.prepare_invoke();
        invocation
            .key(&self.keys.log)
            .key(&self.keys.seq)
            .key(&self.keys.state)
            .key(self.keys.node_presence(node));
        invocation
            .arg(self.idempotency_window_ms)
            .arg(self.options.max_log_events)
            .arg(self.max_age_ms);
        let version = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
        match guard {
            Some(g) => invocation
                .arg(&g.slot)
                .arg(version(g.expect))
                .arg(g.entry.as_deref().unwrap_or("")),
            None => invocation.arg("").arg("").arg(""),
        };
        invocation.arg(node);
        let mut next_key = 5;
        for record in records {
            let key = match record {
                Record::Event(draft) => draft.idempotency_key.as_deref(),
                Record::Control(_) | Record::Presence { .. } => None,
            };
            match key {
                Some(key) => {
                    invocation.key(format!("{}{key}", self.keys.idem_prefix));
                    invocation.arg(next_key);
                    next_key += 1;
                }
                None => {
                    invocation.arg(0);
                }
            }
            match record {
                Record::Presence { joined, set, .. } => {
                    invocation.key(set);
                    invocation.arg(format!("{}{next_key}", if *joined { '+' } else { '-' }));
                    next_key += 1;
                }
                _ => {
                    invocation.arg("");
                }
            }
            match record {
                Record::Event(draft) | Record::Presence { draft, .. } => invocation
                    .arg("d")
                    .arg(serde_json::to_vec(draft).expect("a draft serializes")),
                Record::Control(control) => invocation
                    .arg("c")
                    .arg(serde_json::to_vec(control).expect("a control record serializes")),
            };
        }
        let result = invocation.invoke_async(&mut conn).await;
        if let Err(err) = &result {
            if connection_lost(err) {
                self.writer.lock().await.take();
            }
        }
        result
    }
}

impl Drop for RedisLog {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait]
impl EventLog for RedisLog {
    fn attach(&self, sink: Arc<dyn CommitSink>) -> EventId {
        let head = self.replica.attach(sink);
        let task = tail(
            self.client.clone(),
            self.url.clone(),
            self.keys.clone(),
            self.replica.clone(),
            self.status.clone(),
            self.writer.clone(),
            self.stop.clone(),
        );
        spawn_tail(task);
        head
    }

    async fn append(&self, drafts: Vec<EventDraft>) -> Result<Vec<Appended>, LogError> {
        let records: Vec<Record> = drafts.iter().map(Record::Event).collect();
        let answers = self
            .append_records(&records, None, &self.options.node)
            .await?
            .map_err(|_| LogError::Failed("a conflict without a guard".into()))?;
        let mut appended = Vec::with_capacity(answers.len());
        for (id, duplicate) in answers {
            appended.push(Appended {
                id: EventId(id),
                duplicate,
            });
        }
        Ok(appended)
    }

    async fn append_guarded(
        &self,
        draft: EventDraft,
        guard: StateGuard,
    ) -> Result<Result<Appended, Conflict>, LogError> {
        let records = [Record::Event(&draft)];
        Ok(self
            .append_records(&records, Some(&guard), &self.options.node)
            .await?
            .map(|answers| Appended {
                id: EventId(answers[0].0),
                duplicate: answers[0].1,
            }))
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

    async fn append_presence(&self, updates: Vec<PresenceUpdate>) -> Result<(), LogError> {
        let records: Vec<Record> = updates
            .iter()
            .map(|u| Record::Presence {
                joined: u.joined,
                set: self.keys.presence(u.topic.as_str(), &u.user),
                draft: &u.announcement,
            })
            .collect();
        self.append_records(&records, None, &self.options.node)
            .await
            .map(|_| ())
    }

    fn retention(&self) -> super::memory::Retention {
        self.replica.retention()
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn cluster(&self) -> Option<&dyn ClusterLog> {
        Some(self)
    }
}

#[async_trait]
impl ClusterLog for RedisLog {
    async fn append_control(&self, records: Vec<Control>) -> Result<(), LogError> {
        let records: Vec<Record> = records.iter().map(Record::Control).collect();
        self.append_records(&records, None, &self.options.node)
            .await
            .map(|_| ())
    }

    async fn catch_up(&self, id: EventId) {
        // Ids are the engine's clock in µs (or just past the last id): one
        // more than a minute ahead of this node's clock was never issued,
        // and is not waited for (it is answered with `herald.reset`).
        let plausible = id.0 <= super::now_ms().saturating_add(60_000).saturating_mul(1000);
        if plausible && id.0 > self.replica.head() {
            self.replica
                .wait_for(id.0, self.options.apply_timeout)
                .await;
        }
    }

    async fn catch_up_with_engine(&self) -> Result<(), LogError> {
        let unavailable = |e: RedisError| LogError::Unavailable(e.to_string());
        let mut conn = self.writer().await.map_err(unavailable)?;
        // The last id the append script issued, always that of an entry.
        let last: Option<String> = redis::cmd("GET")
            .arg(&self.keys.seq)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if let Some(last) = last.and_then(|l| l.parse().ok()) {
            self.catch_up(EventId(last)).await;
        }
        Ok(())
    }

    async fn report_node(&self, node: &str, stats: serde_json::Value) -> Result<(), LogError> {
        let mut conn = self
            .writer()
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))?;
        let _: i64 = redis::cmd("HSET")
            .arg(&self.keys.nodes)
            .arg(node)
            .arg(stats.to_string())
            .query_async(&mut conn)
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))?;
        Ok(())
    }

    async fn presence_here(&self) -> Result<Vec<(Topic, String)>, LogError> {
        let mut conn = self
            .writer()
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))?;
        let sets: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.node_presence(&self.options.node))
            .query_async(&mut conn)
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))?;
        Ok(sets.iter().filter_map(|set| self.keys.pair(set)).collect())
    }

    fn node(&self) -> &str {
        &self.options.node
    }

    async fn maintain(&self) {
        // Reading every report retires the nodes that stopped reporting.
        if let Err(err) = self.nodes().await {
            tracing::debug!(%err, "could not read the other nodes' reports");
        }
    }

    async fn nodes(&self) -> Result<Vec<serde_json::Value>, LogError> {
        let mut conn = self
            .writer()
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))?;
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(&self.keys.nodes)
            .query_async(&mut conn)
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))?;
        let now = super::now_ms();
        let mut live = Vec::new();
        let mut gone = Vec::new();
        for (node, json) in all {
            let stats: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
            if fresh(&stats, now) {
                live.push(stats);
            } else {
                gone.push(node);
            }
        }
        for node in gone {
            self.reap(&mut conn, &node).await?;
        }
        Ok(live)
    }

    async fn retained_state(&self) -> Result<(EventId, Vec<(String, String)>), LogError> {
        let unavailable = |e: RedisError| LogError::Unavailable(e.to_string());
        let mut conn = self.writer().await.map_err(unavailable)?;
        let (seq, pairs): (String, Vec<(String, String)>) = redis::Script::new(STATE)
            .key(&self.keys.seq)
            .key(&self.keys.state)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok((EventId(seq.parse().unwrap_or(0)), pairs))
    }

    fn engine(&self) -> EngineStatus {
        self.status.report()
    }
}
