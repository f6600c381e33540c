//! Every setting of the hub, parsed and validated once at start.
//!
//! Names follow SPEC §1: in `herald.toml` as written here, in the
//! environment as `HERALD_` + the path in capitals with `__` between levels
//! (`HERALD_STREAM__HEARTBEAT_SECS`), on the command line as
//! `--set stream.heartbeat_secs=5`. `docs/CONFIGURATION.md` lists them all;
//! the doc comment of each field is the reference and gives its default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::log::Fsync;

/// Every setting of a hub, read from `herald.toml` and `HERALD_*`
/// variables, validated in one place ([`Config::validate`]). `Default`
/// is a hub for local development.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Names clients reach the hub by (`Host`), e.g. `push.example.com` or
    /// `*.example.com`. When set, or in dev mode, other names are refused
    /// (IP addresses and `localhost` always pass): DNS rebinding fails.
    /// Default: none.
    pub allowed_hosts: Vec<String>,
    /// Reverse proxies whose `X-Forwarded-For` names the client (addresses
    /// or CIDR ranges, e.g. `127.0.0.1`, `10.0.0.0/8`). Default: none, so
    /// the socket's peer is the client.
    pub trusted_proxies: Vec<String>,
    /// Directory of the durable journal (`DATA_DIR/journal`). Default
    /// `./herald-data`.
    pub data_dir: PathBuf,
    /// Keep history in memory only, ignoring `data_dir`. Default `false`.
    pub memory: bool,
    /// How long a graceful shutdown may take before open streams are cut.
    /// Default `10`.
    pub shutdown_timeout_secs: u64,
    /// `[auth]`: keys, tokens and their claims.
    pub auth: AuthConfig,
    /// `[limits]`: caps on connections, subscriptions and rates.
    pub limits: LimitsConfig,
    /// `[stream]`: heartbeats, queues and what a slow client costs.
    pub stream: StreamConfig,
    /// `[history]`: what the journal retains and when it syncs.
    pub history: HistoryConfig,
    /// `[inbox]`: what waits for users who are away.
    pub inbox: InboxConfig,
    /// `[state]`: retained values for late joiners.
    pub state: StateConfig,
    /// `[presence]`: topics whose joins and leaves are announced.
    pub presence: PresenceConfig,
    /// `[cors]`: which browser origins may call the hub.
    pub cors: CorsConfig,
    /// `[cluster]`: the engine shared by the nodes of a cluster.
    pub cluster: ClusterConfig,
}

/// `[state]`: retained values (SPEC §6). A change that would pass a cap is
/// refused `507 state_full`; deleting values makes room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    /// Most values retained, across all topics. Default `100000`.
    pub max_keys: usize,
    /// Most bytes of retained values together (each as compact JSON, plus
    /// its topic and key). Default `67108864` (64 MiB).
    pub max_bytes: u64,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            max_keys: 100_000,
            max_bytes: 64 << 20,
        }
    }
}

/// `[auth]`: with no key configured the hub runs in dev mode (SPEC §1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Shared secret for HS256/384/512 tokens. Default: none.
    pub jwt_secret: Option<String>,
    /// PEM file with the public key for RS*/ES*/EdDSA tokens. Default: none.
    pub jwt_public_key_file: Option<PathBuf>,
    /// JWKS file path or `http(s)://` URL (keys matched by `kid`; a URL is
    /// fetched again when a token names an unknown `kid`). Default: none.
    pub jwks: Option<String>,
    /// Required `iss`. Default: not checked.
    pub issuer: Option<String>,
    /// Required `aud`. Default: not checked.
    pub audience: Option<String>,
    /// Static API keys with every right: publish, read, admin calls.
    /// Default: none.
    pub api_keys: Vec<String>,
    /// Static keys for server-side publishers: they may publish (any topic,
    /// to users, broadcasts) and change retained state, and nothing else
    /// (no streams, no state reads, no admin calls). Default: none.
    pub publisher_keys: Vec<String>,
    /// Cookie that may carry the token. Default `herald_token`.
    pub cookie_name: String,
    /// Patterns anyone may read without a token once auth is on (public,
    /// read-only topics). Default: none.
    pub anonymous_subscribe: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds. Default `30`.
    pub leeway_secs: u64,
}

/// `[limits]`: 0 means unlimited wherever a count is a limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Open streams on this hub. Default `100000`.
    pub max_connections: usize,
    /// Open streams from one client address. Default `1000`.
    pub max_connections_per_ip: usize,
    /// Open streams of one user (token `sub`); over it a temporary
    /// refusal. Default `0` (unlimited).
    pub max_connections_per_user: usize,
    /// `topic=` patterns on one stream. Default `64`.
    pub max_topics_per_connection: usize,
    /// Topics named by one published event. Default `64`.
    pub max_topics_per_event: usize,
    /// Bytes of one event's data (after JSON encoding); over it: `413`.
    /// Default `65536`.
    pub max_event_bytes: usize,
    /// Bytes of one publish request body; over it: `413`. Default `1048576`.
    pub max_body_bytes: usize,
    /// Events in one publish batch. Default `1000`.
    pub max_batch: usize,
    /// Names in one event's `to.users`, and in its `to.connections`; over
    /// it `400`. Default `1000`.
    pub max_recipients: usize,
    /// Publish requests per second per publisher (API key, user, or
    /// address when anonymous); over it `429`. Default `0` (off).
    pub publish_rate_per_sec: u32,
    /// New streams per second per client address; over it a temporary
    /// refusal. Default `0` (off).
    pub connect_rate_per_ip: u32,
}

/// `[stream]`: how each SSE stream behaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamConfig {
    /// A `: ping` comment is sent after this many seconds of silence.
    /// Default `15`.
    pub heartbeat_secs: u64,
    /// The `retry:` sent at the start of every stream, in ms. Temporary
    /// refusals and shutdown send a jittered value between this and twice
    /// this. Default `2000`.
    pub retry_ms: u64,
    /// Events that may wait for one connection. Default `1024`.
    pub queue_capacity: usize,
    /// What a full queue does. Default `disconnect`.
    pub overflow: Overflow,
    /// Events read from history per step of a replay. Default `500`.
    pub replay_batch: usize,
    /// Largest `history=N` a subscriber may ask for. Default `1000`.
    pub max_history: usize,
    /// A stream whose socket accepts no bytes for this long is closed (its
    /// client resumes with Last-Event-ID); `0`: never. Default `30`.
    pub write_timeout_secs: u64,
    /// The kernel send buffer of each accepted socket (`SO_SNDBUF`; Linux
    /// doubles it); `0` leaves it to the kernel's autotuning, which lets
    /// each socket that stops reading hold up to 4 MiB of kernel memory.
    /// Default `131072`.
    pub send_buffer_bytes: usize,
}

/// What happens when a connection's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Close the stream; the client resumes from history with Last-Event-ID.
    Disconnect,
    /// Drop the oldest waiting event to make room (counted).
    DropOldest,
    /// Drop the new event (counted).
    DropNewest,
}

/// `[history]`: what the log retains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Events kept per topic. Default `1000`.
    pub max_events_per_topic: usize,
    /// Age after which events leave history, in seconds. Default `86400`
    /// (one day); `0` keeps them until the count limit.
    pub max_age_secs: u64,
    /// When the durable store syncs to disk. Default `batch`.
    pub fsync: Fsync,
    /// How long an `idempotency_key` is remembered, in seconds. Default `3600`.
    pub idempotency_window_secs: u64,
    /// Most idempotency keys remembered at once. Default `100000`.
    pub max_idempotency_keys: usize,
    /// Most bytes all retained events may take together, as estimated
    /// memory (text, encoded frame, topic names and about 256 bytes of
    /// bookkeeping each). Past it the oldest events leave history, as with
    /// `max_age_secs`. Default `1073741824` (1 GiB).
    pub max_bytes: u64,
    /// Most topics with retained events. Past it the oldest events leave
    /// history until a topic has none. Default `100000`.
    pub max_topics: usize,
    /// With the journal (not `memory = true`) or a cluster engine: most
    /// bytes, in the measure of `max_bytes`, of the newest retained events
    /// held whole in memory. Older ones stay retained, on disk or in the
    /// engine only (about 60 bytes of memory each), and are read back from
    /// there when a replay reaches them. Default `134217728` (128 MiB).
    pub hot_bytes: u64,
}

/// `[inbox]`: events waiting for a user (SPEC §7): pending acknowledgements
/// and direct messages to users who are offline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InboxConfig {
    /// Most events waiting per user; the oldest is dropped (and counted)
    /// beyond it. Default `1000`.
    pub max_per_user: usize,
    /// Seconds an event may wait (events with a `ttl` end sooner). Default
    /// `604800` (7 days); `0` waits until delivered, acknowledged or dropped.
    pub max_age_secs: u64,
}

impl Default for InboxConfig {
    fn default() -> Self {
        InboxConfig {
            max_per_user: 1000,
            max_age_secs: 7 * 86_400,
        }
    }
}

/// `[presence]`: join and leave events.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// Topics (patterns) on which the hub publishes `herald.presence`
    /// events when a user's first stream subscribes to the exact topic
    /// (`join`) and when their last one leaves it (`leave`). Default: none.
    pub topics: Vec<String>,
}

/// `[cors]`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins allowed to call the hub from a browser. Default: none.
    pub allowed_origins: Vec<String>,
}

/// `[cluster]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://HOST:PORT` or `nats://HOST:PORT`. Default: none (one node).
    pub url: Option<String>,
    /// Names this cluster's keys in the engine (`{herald}:log`…), so
    /// several clusters can share one engine. Default `herald`.
    pub name: String,
    /// Most events the engine keeps, over all topics (0: no count limit,
    /// `history.max_age_secs` still applies). Each node keeps its own
    /// per-topic history under `[history]` limits. Default 1,000,000.
    pub max_log_events: u64,
    /// How long a start waits for the engine. Default 30.
    pub connect_timeout_secs: u64,
    /// This node's name in `/v1/stats`. Default: `node-` and 8 random hex
    /// digits, new at every start.
    pub node_name: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            url: None,
            name: "herald".into(),
            max_log_events: 1_000_000,
            connect_timeout_secs: 30,
            node_name: String::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            allowed_hosts: Vec::new(),
            trusted_proxies: Vec::new(),
            data_dir: PathBuf::from("./herald-data"),
            memory: false,
            shutdown_timeout_secs: 10,
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            stream: StreamConfig::default(),
            history: HistoryConfig::default(),
            inbox: InboxConfig::default(),
            state: StateConfig::default(),
            presence: PresenceConfig::default(),
            cors: CorsConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_secret: None,
            jwt_public_key_file: None,
            jwks: None,
            issuer: None,
            audience: None,
            api_keys: Vec::new(),
            publisher_keys: Vec::new(),
            cookie_name: "herald_token".into(),
            anonymous_subscribe: Vec::new(),
            leeway_secs: 30,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 100_000,
            max_connections_per_ip: 1000,
            max_connections_per_user: 0,
            max_topics_per_connection: 64,
            max_topics_per_event: 64,
            max_event_bytes: 64 * 1024,
            max_body_bytes: 1024 * 1024,
            max_batch: 1000,
            max_recipients: 1000,
            publish_rate_per_sec: 0,
            connect_rate_per_ip: 0,
        }
    }
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            heartbeat_secs: 15,
            retry_ms: 2000,
            queue_capacity: 1024,
            overflow: Overflow::Disconnect,
            replay_batch: 500,
            max_history: 1000,
            write_timeout_secs: 30,
            send_buffer_bytes: 128 * 1024,
        }
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            max_events_per_topic: 1000,
            max_age_secs: 86_400,
            fsync: Fsync::Batch,
            idempotency_window_secs: 3600,
            max_idempotency_keys: 100_000,
            max_bytes: 1 << 30,
            max_topics: 100_000,
            hot_bytes: 128 << 20,
        }
    }
}

/// An IP address range, `ADDRESS/PREFIX` (or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Reads `10.0.0.0/8`, `::1` or `fd00::/8`; a bare address is a range of one.
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().ok()?)),
            None => (text, None),
        };
        let net: std::net::IpAddr = addr.trim().parse().ok()?;
        let bits = if net.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(bits);
        (prefix <= bits).then_some(Cidr { net, prefix })
    }

    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
            match prefix {
                0 => 0,
                p => bits >> (width - p),
            }
        }
        match (self.net, ip.to_canonical()) {
            (std::net::IpAddr::V4(n), std::net::IpAddr::V4(i)) => {
                masked(u32::from(n).into(), self.prefix, 32)
                    == masked(u32::from(i).into(), self.prefix, 32)
            }
            (std::net::IpAddr::V6(n), std::net::IpAddr::V6(i)) => {
                masked(u128::from(n), self.prefix, 128) == masked(u128::from(i), self.prefix, 128)
            }
            _ => false,
        }
    }
}

/// A setting that cannot work as given.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting `{setting}`: {reason}")]
pub struct ConfigError {
    /// The setting, as written in `herald.toml` (`stream.queue_capacity`).
    pub setting: String,
    /// Why it cannot work.
    pub reason: String,
}

fn invalid(setting: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: setting.into(),
        reason: reason.into(),
    }
}

impl Config {
    /// The same settings with secrets (`auth.jwt_secret`, `auth.api_keys`,
    /// `auth.publisher_keys`)
    /// replaced by a placeholder: what `herald config` prints.
    pub fn redacted(&self) -> Config {
        let mut shown = self.clone();
        let hidden = "(set; hidden)".to_owned();
        if shown.auth.jwt_secret.is_some() {
            shown.auth.jwt_secret = Some(hidden.clone());
        }
        for key in shown
            .auth
            .api_keys
            .iter_mut()
            .chain(&mut shown.auth.publisher_keys)
        {
            key.clone_from(&hidden);
        }
        shown
    }

    /// Checks every setting; the hub refuses to start on the first problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for proxy in &self.trusted_proxies {
            if Cidr::parse(proxy).is_none() {
                return Err(invalid(
                    "trusted_proxies",
                    format!("{proxy:?} is not an IP address or CIDR range (10.0.0.0/8, fd00::/8)"),
                ));
            }
        }
        let positive = [
            ("stream.heartbeat_secs", self.stream.heartbeat_secs as usize),
            ("stream.queue_capacity", self.stream.queue_capacity),
            ("stream.replay_batch", self.stream.replay_batch),
            ("limits.max_event_bytes", self.limits.max_event_bytes),
            ("limits.max_body_bytes", self.limits.max_body_bytes),
            ("limits.max_batch", self.limits.max_batch),
            ("limits.max_recipients", self.limits.max_recipients),
            (
                "limits.max_topics_per_event",
                self.limits.max_topics_per_event,
            ),
            (
                "history.max_events_per_topic",
                self.history.max_events_per_topic,
            ),
            ("inbox.max_per_user", self.inbox.max_per_user),
            ("history.max_topics", self.history.max_topics),
            ("state.max_keys", self.state.max_keys),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(invalid(name, "must be at least 1"));
            }
        }
        if self.history.max_bytes < (1 << 20) {
            return Err(invalid(
                "history.max_bytes",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        if self.state.max_bytes < self.limits.max_body_bytes as u64 {
            return Err(invalid(
                "state.max_bytes",
                "must be at least limits.max_body_bytes (one value fits)",
            ));
        }
        if self.stream.retry_ms == 0 {
            return Err(invalid("stream.retry_ms", "must be at least 1"));
        }
        let origins = &self.cors.allowed_origins;
        if origins.iter().any(|o| o == "*") && origins.len() > 1 {
            return Err(invalid(
                "cors.allowed_origins",
                "\"*\" allows every origin and must stand alone",
            ));
        }
        for origin in origins.iter().filter(|o| *o != "*") {
            let ok = (origin.starts_with("http://") || origin.starts_with("https://"))
                && !origin.ends_with('/')
                && axum::http::HeaderValue::from_str(origin).is_ok();
            if !ok {
                return Err(invalid(
                    "cors.allowed_origins",
                    format!("{origin:?} is not an origin like \"https://app.example.com\""),
                ));
            }
        }
        for pattern in &self.presence.topics {
            if let Err(e) = crate::values::pattern::Pattern::parse(pattern) {
                return Err(invalid(
                    "presence.topics",
                    format!("{pattern:?} is not a topic pattern: {e}"),
                ));
            }
        }
        if let Some(url) = &self.cluster.url {
            let nats = url.starts_with("nats://");
            if !nats && !url.starts_with("redis://") {
                return Err(invalid(
                    "cluster.url",
                    format!("{url:?} is neither redis://HOST:PORT nor nats://HOST:PORT"),
                ));
            }
            let engine = if nats { "nats" } else { "redis" };
            if !crate::log::engine::built_in(engine) {
                return Err(invalid(
                    "cluster.url",
                    format!("this build of Herald has no {engine} client (the `herald` crate's cargo feature `{engine}`)"),
                ));
            }
            let most = crate::log::engine::NATS_MAX_RECORDS;
            if nats && self.limits.max_batch > most {
                return Err(invalid(
                    "limits.max_batch",
                    format!("on NATS a batch is one message of at most {most} events"),
                ));
            }
            // Names go into keys, subjects and stream names.
            let word = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
            let name = &self.cluster.name;
            if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| word(b) || b == b'.') {
                return Err(invalid(
                    "cluster.name",
                    format!("{name:?} is not 1 to 64 characters of A-Z a-z 0-9 - _ ."),
                ));
            }
            let node = &self.cluster.node_name;
            if node.len() > 64 || !node.bytes().all(word) {
                return Err(invalid(
                    "cluster.node_name",
                    format!("{node:?} is not up to 64 characters of A-Z a-z 0-9 - _"),
                ));
            }
        }
        Ok(())
    }

    /// True when no auth key is configured: SPEC §1 dev mode.
    pub fn dev_mode(&self) -> bool {
        let a = &self.auth;
        a.jwt_secret.is_none()
            && a.jwt_public_key_file.is_none()
            && a.jwks.is_none()
            && a.api_keys.is_empty()
            && a.publisher_keys.is_empty()
    }

    /// `stream.heartbeat_secs` as a duration.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.stream.heartbeat_secs)
    }

    /// `shutdown_timeout_secs` as a duration.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_ranges() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let r = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(r.contains(ip("10.9.8.7")) && !r.contains(ip("11.0.0.1")));
        assert!(r.contains(ip("::ffff:10.1.1.1")));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        assert!(Cidr::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        for bad in ["", "10.0.0.0/33", "x", "::/129", "10.0.0.0/"] {
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn defaults_are_valid_and_match_the_spec() {
        let c = Config::default();
        c.validate().unwrap();
        assert!(c.dev_mode());
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.stream.heartbeat_secs, 15);
        assert_eq!(c.stream.overflow, Overflow::Disconnect);
        assert_eq!(c.limits.max_event_bytes, 65536);
        assert_eq!(c.history.fsync, Fsync::Batch);
        assert_eq!(c.auth.cookie_name, "herald_token");
    }

    #[test]
    #[cfg_attr(
        not(all(feature = "nats", feature = "redis")),
        ignore = "names cluster URLs of both engines: needs the nats and redis features"
    )]
    fn refuses_zero_and_unbuilt_settings() {
        let mut c = Config::default();
        c.stream.queue_capacity = 0;
        assert_eq!(c.validate().unwrap_err().setting, "stream.queue_capacity");
        let mut c = Config::default();
        c.cluster.url = Some("nats://x".into());
        c.limits.max_batch = 2000;
        assert_eq!(c.validate().unwrap_err().setting, "limits.max_batch");
        c.limits.max_batch = 1000;
        c.cluster.url = Some("http://x".into());
        assert_eq!(c.validate().unwrap_err().setting, "cluster.url");
        c.cluster.url = Some("redis://127.0.0.1:6379".into());
        c.validate().unwrap();
        c.cluster.node_name = "a.b".into();
        assert_eq!(c.validate().unwrap_err().setting, "cluster.node_name");
        c.cluster.node_name = "web-1".into();
        c.cluster.name = "a b".into();
        assert_eq!(c.validate().unwrap_err().setting, "cluster.name");
        let mut c = Config::default();
        c.presence.topics = vec!["rooms/*".into(), "bad topic".into()];
        assert_eq!(c.validate().unwrap_err().setting, "presence.topics");
    }

    #[test]
    fn parses_toml_with_spec_names() {
        let c: Config = toml_like(
            r#"{"listen":"127.0.0.1:9000","stream":{"overflow":"drop_oldest","heartbeat_secs":1}}"#,
        );
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.stream.overflow, Overflow::DropOldest);
        assert_eq!(c.stream.queue_capacity, 1024);
        assert!(serde_json::from_str::<Config>(r#"{"stream":{"heartbeat":1}}"#).is_err());
    }

    fn toml_like(json: &str) -> Config {
        serde_json::from_str(json).unwrap()
    }
}
