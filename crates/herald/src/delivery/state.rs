//! Retained state for late joiners (SPEC §6): a value per (topic, key) with
//! a version, changed by PUT, PATCH (RFC 7396 merge patch) and DELETE.
//!
//! Every change is published on its topic as a `state` event, through the
//! log like any event, so subscribers get deltas in order. A fresh
//! subscriber first receives one `state` event with the full value per key
//! of its topics (no `id:`, so it does not move the client's Last-Event-ID).
//!
//! No gap between that snapshot and live deltas: one async lock is held by
//! a change across its log append and its map update, and by a new stream
//! for its snapshot, which it takes only after registering with fan-out. A
//! change either completes before the snapshot (it is in it) or its event is
//! dispatched after registration (it arrives live). A change that lands in
//! both arrives twice with the same version: versions tell.
//!
//! Durability: with a data directory the map is written to `state.json`
//! (write, sync, rename) after each change, with the id of the last event it
//! covers; at first use, `state` events after that id still in the log are
//! applied, which repairs a crash between a change's append and its file
//! write. Every change rewrites the file (bounded by `state.max_bytes`):
//! fine for the small per-key records state is for, not a database. The
//! disk work runs on a blocking thread after the map's lock is let go.
//!
//! Clustered, the engine holds every value beside the log and checks each
//! change's version in the same atomic step as its append
//! ([`crate::log::EventLog::append_guarded`]): a change that lost a race
//! to another node's reads the winner's and decides again (a few times),
//! so versions and `If-Match` mean the same on every node. A node reads the
//! engine's values once, then follows the log; it keeps no file.
//!
//! Why one file of about 650 lines (and its tests): the map, its file, the
//! clustered guard and the snapshot cursor all keep the one invariant
//! above (a change and a snapshot never interleave); apart, each part
//! would need the others' internals.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::access::auth::{AuthError, Identity, Proof};
use crate::config::StateConfig;
use crate::log::{EventLog, ReadFrom, ReadRequest, StateGuard};
use crate::metrics::Metrics;
use crate::values::event::EventId;

/// Tries of one change that keeps losing races to other nodes' changes
/// (each after a random pause that grows, so racing writers fall apart).
const MAX_ATTEMPTS: u64 = 16;
use crate::requests::publish::{PublishError, PublishRequest};
use crate::values::pattern::Pattern;
use crate::values::selector::Selector;
use crate::values::sse;
use crate::values::topic::{Topic, TopicError};

/// One retained value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Entry {
    /// Grows by one with every change of the key, from 1.
    pub version: u64,
    /// The value.
    pub value: Value,
}

/// What a write does.
#[derive(Debug, Clone)]
pub enum Change {
    /// Sets the value.
    Put(Value),
    /// RFC 7396 merge patch.
    Patch(Value),
    /// Removes the key.
    Delete,
}

/// `If-Match`: the version the writer expects, or any existing version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfMatch {
    /// Any existing value (`If-Match: *`).
    Any,
    /// Exactly this version.
    Version(u64),
}

/// A change made.
#[derive(Debug, Clone, Copy)]
pub struct Changed {
    /// The version after the change (for a delete, the one deleted).
    pub version: u64,
    /// The `state` event that carries it.
    pub id: EventId,
}

/// Why a state change or read was refused.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The topic is not a valid topic.
    #[error("topic {0:?} {1}")]
    BadTopic(String, TopicError),
    /// The key is not a valid key.
    #[error("state keys are 1 to 128 characters of A-Z a-z 0-9 . _ ~ : @ -; got {0:?}")]
    BadKey(String),
    #[error("no state under key {key:?} of topic {topic:?}")]
    /// No value under this key.
    NotFound {
        /// The topic asked for.
        topic: String,
        /// The key asked for.
        key: String,
    },
    #[error("If-Match does not match: the current version is {}", .current.map_or("none (no value)".to_string(), |v| v.to_string()))]
    /// `If-Match` names another version than the current one.
    VersionMismatch {
        /// The current version; `None` when the key holds no value.
        current: Option<u64>,
    },
    /// The value cannot be stored (a patch of a non-object, too deep, …).
    #[error("{0}")]
    BadValue(String),
    /// The version would pass `u64::MAX`.
    #[error("the value's version cannot grow past 18446744073709551615; delete the key to start again at 1")]
    VersionsExhausted,
    /// A cap of `[state]` would be passed.
    #[error("{0}")]
    Full(String),
    /// The `state` event carrying the change was refused.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The caller may not write (or read) this topic.
    #[error(transparent)]
    Auth(#[from] AuthError),
}

#[derive(Default, Serialize, Deserialize)]
struct StateMap {
    /// Id of the last `state` event the map includes.
    #[serde(default)]
    through: u64,
    #[serde(default)]
    topics: BTreeMap<String, BTreeMap<String, Entry>>,
    /// Clustered: the engine's retained state was read.
    #[serde(skip)]
    loaded: bool,
    /// Values held, and their bytes by [`value_cost`]: what `[state]` caps.
    #[serde(skip)]
    count: usize,
    #[serde(skip)]
    bytes: u64,
}

/// What one retained value counts against `state.max_bytes`: its compact
/// JSON, its topic and its key.
fn value_cost(topic: &str, key: &str, value: &Value) -> u64 {
    let mut counter = ByteCount(0);
    // Writing to a counter cannot fail.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0 + (topic.len() + key.len()) as u64
}

struct ByteCount(u64);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl StateMap {
    /// Sets the state gauges from the counts.
    fn report(&self, metrics: &crate::metrics::Metrics) {
        metrics
            .state_values
            .store(self.count as u64, Ordering::Relaxed);
        metrics.state_bytes.store(self.bytes, Ordering::Relaxed);
    }

    /// Counts values and bytes again (after a load).
    fn recount(&mut self) {
        self.count = 0;
        self.bytes = 0;
        for (topic, keys) in &self.topics {
            for (key, entry) in keys {
                self.count += 1;
                self.bytes += value_cost(topic, key, &entry.value);
            }
        }
    }
}

/// The retained state of a hub.
pub(crate) struct StateStore {
    map: tokio::sync::Mutex<StateMap>,
    /// `None`: memory only.
    file: Option<PathBuf>,
    /// Held while the file is written (see [`StateStore::persist`]).
    writer: tokio::sync::Mutex<()>,
}

fn check_key(key: &str) -> Result<(), StateError> {
    let ok = (1..=128).contains(&key.chars().count())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_~:@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StateError::BadKey(key.to_owned()))
    }
}

impl StateStore {
    /// Loads `file` when given (and present).
    pub(crate) fn open(file: Option<PathBuf>) -> std::io::Result<StateStore> {
        let map = match &file {
            Some(path) if path.exists() => {
                crate::values::json::from_slice(&std::fs::read(path)?)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?
            }
            _ => StateMap::default(),
        };
        let mut map = map;
        map.recount();
        Ok(StateStore {
            map: tokio::sync::Mutex::new(map),
            file,
            writer: tokio::sync::Mutex::new(()),
        })
    }

    /// Sets the state gauges from the map as loaded (before any change).
    pub(crate) fn report(&self, metrics: &crate::metrics::Metrics) {
        if let Ok(map) = self.map.try_lock() {
            map.report(metrics);
        }
    }

    /// Writes the map to the file, and lets the map's lock go before the
    /// disk work. The map is encoded under its lock; the writer's lock is
    /// taken before the map's is let go, so files land in change order,
    /// and the write, sync and rename run on a blocking thread while other
    /// changes and fresh streams' snapshots go on.
    async fn persist(&self, map: tokio::sync::MutexGuard<'_, StateMap>) {
        let Some(path) = &self.file else { return };
        let bytes = match serde_json::to_vec(&*map) {
            Ok(bytes) => bytes,
            Err(err) => {
                tracing::warn!(%err, "could not encode the state file");
                return;
            }
        };
        let _writing = self.writer.lock().await;
        drop(map);
        let tmp = path.with_extension("json.tmp");
        let target = path.clone();
        let written = tokio::task::spawn_blocking(move || {
            crate::blocking::disk_thread();
            std::fs::write(&tmp, bytes)?;
            crate::blocking::sync_all(&std::fs::File::open(&tmp)?)?;
            std::fs::rename(&tmp, &target)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(err) = written {
            // The change is in the log: the next start re-applies it.
            tracing::warn!(%err, path = %path.display(), "could not write the state file");
        }
    }
}

/// Applies one `state` event's data to the map (when newer than what it holds).
fn apply(map: &mut StateMap, data: &Value) {
    let (Some(topic), Some(key), Some(version)) = (
        data["topic"].as_str(),
        data["key"].as_str(),
        data["version"].as_u64(),
    ) else {
        return;
    };
    let keys = map.topics.entry(topic.to_owned()).or_default();
    if keys.get(key).is_some_and(|e| e.version >= version) {
        return;
    }
    let old = keys.get(key).map(|e| value_cost(topic, key, &e.value));
    let new = if data["deleted"] == true {
        None
    } else if let Some(value) = data.get("value") {
        Some(value.clone())
    } else if let Some(patch) = data.get("patch") {
        let mut value = keys.get(key).map_or(Value::Null, |e| e.value.clone());
        json_patch::merge(&mut value, patch);
        Some(value)
    } else {
        return;
    };
    if let Some(old) = old {
        map.count -= 1;
        map.bytes -= old;
    }
    match new {
        Some(value) => {
            map.count += 1;
            map.bytes += value_cost(topic, key, &value);
            keys.insert(key.to_owned(), Entry { version, value });
        }
        None => {
            keys.remove(key);
        }
    }
    if keys.is_empty() {
        map.topics.remove(topic);
    }
}

/// What a guarded publish did (see [`StateHost::publish_guarded`]).
pub(crate) enum Guarded {
    Published(EventId),
    /// The value's version was no longer the one expected: nothing published.
    Conflict(crate::log::Conflict),
}

/// What retained state needs from the hub around it.
#[async_trait::async_trait]
pub(crate) trait StateHost: Send + Sync {
    fn log(&self) -> &Arc<dyn EventLog>;
    /// The last event fan-out dispatched.
    fn head(&self) -> EventId;
    fn metrics(&self) -> &Arc<Metrics>;
    fn state_limits(&self) -> &StateConfig;
    /// Publishes `request` as the `state` event of a change, only if the
    /// value's version is still the one `guard` expects (see
    /// [`EventLog::append_guarded`]).
    async fn publish_guarded(
        &self,
        identity: &Identity,
        request: PublishRequest,
        guard: StateGuard,
    ) -> Result<Guarded, PublishError>;
}

impl StateStore {
    /// Applies the `state` events the map does not include yet: after a
    /// restart, those the file missed; clustered, those other nodes
    /// published. Reads only what was logged since the last call.
    async fn reconcile(host: &dyn StateHost, map: &mut StateMap) {
        if !map.loaded {
            // Clustered, the engine holds every retained value; a node reads
            // them once, then follows the log.
            let retained = match host.log().cluster() {
                Some(cluster) => cluster.retained_state().await.map(Some),
                None => Ok(None),
            };
            match retained {
                Ok(None) => map.loaded = true,
                Ok(Some((at, values))) => {
                    map.topics.clear();
                    for (slot, entry) in values {
                        let (Some((topic, key)), Ok(entry)) = (
                            slot.split_once('\n'),
                            crate::values::json::from_slice::<Entry>(entry.as_bytes()),
                        ) else {
                            tracing::warn!(slot, "a retained value in the engine is unreadable");
                            continue;
                        };
                        map.topics
                            .entry(topic.to_owned())
                            .or_default()
                            .insert(key.to_owned(), entry);
                    }
                    map.through = at.0;
                    map.loaded = true;
                    map.recount();
                }
                // Tried again next time; the log still brings changes.
                Err(err) => tracing::warn!(%err, "could not read retained state from the engine"),
            }
        }
        let selector = Selector {
            connection_id: "state".into(),
            patterns: vec![Pattern::parse("**").expect("valid")],
            event_types: Some(vec![crate::requests::publish::STATE_EVENT.into()]),
            user: None,
            meta: Default::default(),
        };
        let until = host.head();
        if map.through >= until.0 {
            return;
        }
        let mut after = EventId(map.through);
        loop {
            let request = ReadRequest {
                from: ReadFrom::After(after),
                until,
                limit: 1000,
                selector: &selector,
            };
            let Ok(page) = crate::log::read_all(&**host.log(), request).await else {
                return;
            };
            let Some(last) = page.last() else { break };
            after = last.id;
            for event in &page {
                // Only the hub writes `state` events (publishers may not
                // name them); a change applies to its own topic only,
                // whatever an older journal holds.
                let Ok(data) = crate::values::json::from_slice::<Value>(event.data.as_bytes())
                else {
                    continue;
                };
                if event
                    .topics
                    .iter()
                    .any(|t| Some(t.as_str()) == data["topic"].as_str())
                {
                    apply(map, &data);
                }
            }
        }
        map.through = until.0;
    }

    /// Changes one value, publishing its `state` event (SPEC §6). Needs the
    /// right to publish on the topic.
    pub(crate) async fn change(
        &self,
        host: &dyn StateHost,
        identity: &Identity,
        topic: &str,
        key: &str,
        change: Change,
        if_match: Option<IfMatch>,
    ) -> Result<Changed, StateError> {
        Topic::new(topic).map_err(|e| StateError::BadTopic(topic.to_owned(), e))?;
        check_key(key)?;
        if let Change::Put(value) | Change::Patch(value) = &change {
            // Kept in the log and the state file: bounded so both read back.
            if let Some(why) = crate::values::json::too_deep(value) {
                return Err(StateError::BadValue(format!("the value {why}")));
            }
        }
        let store = self;
        let mut map = store.map.lock().await;
        // Clustered, another node may change the value between this node's
        // look at it and the append: the engine checks the version, and a
        // lost race reads the winner's change and decides again.
        let mut attempts = 0;
        loop {
            Self::reconcile(host, &mut map).await;
            let current = map.topics.get(topic).and_then(|k| k.get(key)).cloned();
            let matches = match if_match {
                None => true,
                Some(IfMatch::Any) => current.is_some(),
                Some(IfMatch::Version(v)) => current.as_ref().is_some_and(|e| e.version == v),
            };
            if !matches {
                return Err(StateError::VersionMismatch {
                    current: current.map(|e| e.version),
                });
            }
            if matches!(change, Change::Delete) && current.is_none() {
                return Err(StateError::NotFound {
                    topic: topic.to_owned(),
                    key: key.to_owned(),
                });
            }
            let version = match &current {
                None => 1,
                Some(e) => e
                    .version
                    .checked_add(1)
                    .ok_or(StateError::VersionsExhausted)?,
            };
            let data = match &change {
                Change::Put(value) => {
                    json!({"topic": topic, "key": key, "version": version, "value": value})
                }
                Change::Patch(patch) => {
                    json!({"topic": topic, "key": key, "version": version, "patch": patch})
                }
                Change::Delete => {
                    json!({"topic": topic, "key": key, "version": version, "deleted": true})
                }
            };
            // `publish_guarded` names it `state`, which publishers may not.
            let request = PublishRequest {
                topic: Some(topic.to_owned()),
                data: Some(data.clone()),
                ..Default::default()
            };
            let value = match &change {
                Change::Put(value) => Some(value.clone()),
                Change::Patch(patch) => {
                    let mut value = current.as_ref().map_or(Value::Null, |e| e.value.clone());
                    json_patch::merge(&mut value, patch);
                    Some(value)
                }
                Change::Delete => None,
            };
            if let Some(value) = &value {
                let limits = host.state_limits();
                if current.is_none() && map.count >= limits.max_keys {
                    return Err(StateError::Full(format!(
                        "{} values are retained, the most state.max_keys allows; delete some first",
                        map.count
                    )));
                }
                let old = current
                    .as_ref()
                    .map_or(0, |e| value_cost(topic, key, &e.value));
                let bytes = map.bytes - old + value_cost(topic, key, value);
                if bytes > limits.max_bytes {
                    return Err(StateError::Full(format!(
                        "retained values would take {bytes} bytes, more than state.max_bytes ({}); delete some first",
                        limits.max_bytes
                    )));
                }
            }
            let guard = StateGuard {
                slot: format!("{topic}\n{key}"),
                expect: current.as_ref().map(|e| e.version),
                entry: value.map(|value| json!({"version": version, "value": value}).to_string()),
            };
            match host.publish_guarded(identity, request, guard).await? {
                Guarded::Published(id) => {
                    apply(&mut map, &data);
                    // Takes in what other nodes changed meanwhile; the map
                    // then covers every state event up to (at least) this one.
                    Self::reconcile(host, &mut map).await;
                    map.report(host.metrics());
                    store.persist(map).await;
                    return Ok(Changed { version, id });
                }
                Guarded::Conflict(conflict) => {
                    attempts += 1;
                    if attempts >= MAX_ATTEMPTS {
                        return Err(StateError::VersionMismatch {
                            current: conflict.current,
                        });
                    }
                    if let Some(cluster) = host.log().cluster() {
                        cluster.catch_up(conflict.engine_head).await;
                    }
                    let pause = fastrand::u64(0..=attempts * 2);
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                }
            }
        }
    }

    /// Every key of a topic. Needs the right to read the topic. Clustered,
    /// `catch_up` first brings this node up to the engine (see below);
    /// without it, the values this node holds.
    pub(crate) async fn read(
        &self,
        host: &dyn StateHost,
        identity: &Identity,
        topic: &str,
        catch_up: bool,
    ) -> Result<BTreeMap<String, Entry>, StateError> {
        let pattern =
            Pattern::parse(topic).map_err(|e| StateError::BadTopic(topic.to_owned(), e))?;
        Topic::new(topic).map_err(|e| StateError::BadTopic(topic.to_owned(), e))?;
        if !identity.subscribe.allows(&pattern) {
            return Err(StateError::Auth(match identity.proof {
                Proof::Anonymous => AuthError::Missing(format!("reading {topic} needs a token")),
                _ => AuthError::Forbidden(format!("the token may not read {topic}")),
            }));
        }
        // Clustered, a change acknowledged on another node may not have
        // reached this one yet: read once this node has caught up with the
        // engine. With the engine away, the values this node holds.
        if let Some(cluster) = host.log().cluster().filter(|_| catch_up) {
            if let Err(err) = cluster.catch_up_with_engine().await {
                tracing::debug!(%err, "state read without catching up with the engine");
            }
        }
        let mut map = self.map.lock().await;
        Self::reconcile(host, &mut map).await;
        Ok(map.topics.get(topic).cloned().unwrap_or_default())
    }

    /// One `state` event per key of the topics `selector` reads: what a
    /// fresh stream receives before anything else. Called after the stream
    /// registered with fan-out (see the module documentation).
    /// The next page of a fresh stream's state snapshot: a `state` event
    /// (no `id:`) per retained value of its topics, after where `cursor`
    /// stands, up to about `max_bytes`. `None` once
    /// every value was sent.
    ///
    /// The map's lock is held for one page only. Each page is read after
    /// the stream joined fan-out, so a change either shows in a page or
    /// arrives live after the snapshot (or both, with the same version).
    pub(crate) async fn page(
        &self,
        host: &dyn StateHost,
        selector: &Selector,
        cursor: &mut SnapshotCursor,
        max_bytes: usize,
    ) -> Option<Bytes> {
        if cursor.done {
            return None;
        }
        let mut map = self.map.lock().await;
        Self::reconcile(host, &mut map).await;
        let mut buf = BytesMut::new();
        let from = match &cursor.after {
            Some((topic, _)) => std::ops::Bound::Included(topic.as_str()),
            None => std::ops::Bound::Unbounded,
        };
        for (topic, keys) in map
            .topics
            .range::<str, _>((from, std::ops::Bound::Unbounded))
        {
            let Ok(t) = Topic::new(topic) else { continue };
            if !selector.patterns.iter().any(|p| p.matches(&t)) {
                continue;
            }
            let start = match &cursor.after {
                Some((at, key)) if at == topic => std::ops::Bound::Excluded(key.as_str()),
                _ => std::ops::Bound::Unbounded,
            };
            for (key, entry) in keys.range::<str, _>((start, std::ops::Bound::Unbounded)) {
                let data = json!({"topic": topic, "key": key, "version": entry.version, "value": entry.value});
                sse::write_event(&mut buf, None, Some("state"), &data.to_string());
                if buf.len() >= max_bytes {
                    cursor.after = Some((topic.clone(), key.clone()));
                    return Some(buf.freeze());
                }
            }
        }
        cursor.done = true;
        (!buf.is_empty()).then(|| buf.freeze())
    }
}

/// Where a stream's state snapshot stands: the last (topic, key) sent.
#[derive(Debug, Default)]
pub(crate) struct SnapshotCursor {
    after: Option<(String, String)>,
    done: bool,
}

impl SnapshotCursor {
    /// A cursor at the start, or `None` when the stream's `event=` types
    /// leave out `state`.
    pub(crate) fn new(selector: &Selector) -> Option<SnapshotCursor> {
        let wanted = selector
            .event_types
            .as_ref()
            .is_none_or(|t| t.iter().any(|t| &**t == "state"));
        wanted.then(SnapshotCursor::default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_follows_versions_and_merge_patch() {
        let mut map = StateMap::default();
        apply(
            &mut map,
            &json!({"topic": "t", "key": "k", "version": 1, "value": {"a": 1, "b": {"c": 2}}}),
        );
        apply(
            &mut map,
            &json!({"topic": "t", "key": "k", "version": 2, "patch": {"b": {"c": null, "d": 3}}}),
        );
        assert_eq!(
            map.topics["t"]["k"],
            Entry {
                version: 2,
                value: json!({"a": 1, "b": {"d": 3}})
            }
        );
        // Old or repeated versions change nothing.
        apply(
            &mut map,
            &json!({"topic": "t", "key": "k", "version": 2, "patch": {"a": 9}}),
        );
        assert_eq!(map.topics["t"]["k"].value["a"], 1);
        apply(
            &mut map,
            &json!({"topic": "t", "key": "k", "version": 3, "deleted": true}),
        );
        assert!(map.topics.is_empty());
    }

    #[test]
    fn keys_are_segments() {
        assert!(check_key("job-42").is_ok());
        for bad in ["", "a/b", "a b", &"k".repeat(129)] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
    }
}
