//! The end-to-end harness: a real `herald` process on a free port, a raw
//! SSE client over TCP, and a publisher over HTTP.
#![allow(dead_code)]

pub mod browser;
pub mod engine;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_wire::chunked::ChunkedDecoder;
use herald_wire::head::{Framing, ResponseHead};
use herald_wire::sse::{self, Line};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// How long any single expected thing may take before a test fails.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// A running `herald serve`.
pub struct HubProcess {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    http: reqwest::Client,
    /// Sent as the bearer of `/v1/stats` calls when auth is on.
    pub admin_key: Option<String>,
}

impl HubProcess {
    /// Starts `herald serve --memory` on a free loopback port, with extra
    /// `--set NAME=VALUE` settings.
    pub fn start(settings: &[&str]) -> HubProcess {
        Self::start_with(settings, &[], &[])
    }

    /// Same, with extra arguments and environment variables.
    pub fn start_with(settings: &[&str], args: &[&str], env: &[(&str, &str)]) -> HubProcess {
        Self::spawn(None, settings, args, env).expect("herald did not say where it listens")
    }

    /// `herald serve` keeping history in the journal under `data_dir`.
    pub fn start_durable(data_dir: &std::path::Path, settings: &[&str]) -> HubProcess {
        Self::spawn(Some(data_dir), settings, &[], &[])
            .expect("herald did not say where it listens")
    }

    /// `herald serve` on `data_dir` that may write files of at most `bytes`
    /// (`ulimit -f`): writes past it fail as on a full disk.
    pub fn start_with_file_limit(
        data_dir: &std::path::Path,
        settings: &[&str],
        bytes: u64,
    ) -> HubProcess {
        Self::spawn_with_file_limit(data_dir, settings, &[], bytes)
            .expect("herald did not say where it listens")
    }

    /// [`HubProcess::start_with_file_limit`] with more arguments; `Err` with
    /// its output when it exits instead.
    pub fn spawn_with_file_limit(
        data_dir: &std::path::Path,
        settings: &[&str],
        args: &[&str],
        bytes: u64,
    ) -> Result<HubProcess, String> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        use std::os::unix::process::CommandExt;
        // SAFETY: only async-signal-safe setrlimit between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: bytes,
                };
                match libc::setrlimit(libc::RLIMIT_FSIZE, &limit) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            });
        }
        Self::spawn_command(cmd, Some(data_dir), settings, args, &[])
    }

    /// Starts the hub; `Err` with its output when it exits instead.
    pub fn spawn(
        data_dir: Option<&std::path::Path>,
        settings: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<HubProcess, String> {
        let cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        Self::spawn_command(cmd, data_dir, settings, args, env)
    }

    fn spawn_command(
        mut cmd: Command,
        data_dir: Option<&std::path::Path>,
        settings: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<HubProcess, String> {
        cmd.args(["serve", "--listen", "127.0.0.1:0"]);
        match data_dir {
            Some(dir) => cmd.arg("--data-dir").arg(dir),
            None => cmd.arg("--memory"),
        };
        for s in settings {
            cmd.args(["--set", s]);
        }
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.env_remove("HERALD_LOG").env_remove("HERALD_LOG_FORMAT");
        // `TEST_HUB_LOG=herald=debug cargo test …` shows the hubs' debug
        // lines beside a failing test's output.
        if let Ok(filter) = std::env::var("TEST_HUB_LOG") {
            cmd.env("HERALD_LOG", filter);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start herald");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[herald] {line}");
                let addr = line
                    .split("listening on http://")
                    .nth(1)
                    .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == '"').next())
                    .map(str::to_owned);
                // Stored before the address is announced, so that a test
                // reading the logs after start sees every line up to it.
                sink.lock().unwrap().push(line);
                if let Some(addr) = addr {
                    let _ = tx.send(addr);
                }
            }
        });
        let Ok(addr) = rx.recv_timeout(PATIENCE) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(logs.lock().unwrap().join("\n"));
        };
        Ok(HubProcess {
            child,
            addr: addr.parse().expect("listen address"),
            logs,
            http: reqwest::Client::new(),
            admin_key: None,
        })
    }

    /// `kill -9`: no shutdown, no flush.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until a log line contains every one of `needles`.
    pub async fn wait_for_log(&self, needles: &[&str]) {
        let deadline = Instant::now() + PATIENCE;
        while !self
            .logs()
            .iter()
            .any(|l| needles.iter().all(|n| l.contains(n)))
        {
            assert!(Instant::now() < deadline, "no log line with {needles:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Publishes a JSON body; returns status and JSON answer.
    pub async fn publish(&self, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .post(self.url("/v1/publish"))
            .json(&body)
            .send()
            .await
            .expect("publish request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Publishes and expects success; returns the id.
    pub async fn publish_ok(&self, body: Value) -> String {
        let (status, answer) = self.publish(body).await;
        assert_eq!(status, 200, "publish failed: {answer}");
        answer["id"].as_str().expect("id").to_owned()
    }

    /// Sends raw bytes to an endpoint; returns status and JSON answer.
    pub async fn post_raw(
        &self,
        path_and_query: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let resp = self
            .http
            .post(self.url(path_and_query))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let resp = self.http.get(self.url(path)).send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let resp = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics");
        resp.text().await.expect("metrics text")
    }

    pub async fn stats(&self) -> Value {
        let mut req = self.http.get(self.url("/v1/stats"));
        if let Some(key) = &self.admin_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.expect("stats");
        assert_eq!(resp.status(), 200);
        resp.json().await.expect("stats JSON")
    }

    /// Polls `/v1/stats` until `cond` holds (an awaited condition, not a
    /// sleep): fails the test after [`PATIENCE`].
    pub async fn wait_for_stats(&self, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let stats = self.stats().await;
            if cond(&stats) {
                return stats;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; stats: {stats}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal("-TERM");
    }

    /// SIGSTOP: the hub does nothing, while the kernel still queues what
    /// is sent to its sockets.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT, after [`HubProcess::freeze`].
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Stops the hub: `kill -9` when `kill`, else SIGTERM and its exit.
    pub fn stop(&mut self, kill: bool) {
        if kill {
            self.kill9();
        } else {
            self.terminate();
            self.wait_exit(PATIENCE);
        }
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "herald did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One thing read from an SSE stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Event(SseEvent),
    Comment(String),
    Retry(u64),
    /// An `id:` field in a block without data: it moves the client's
    /// Last-Event-ID and dispatches nothing.
    Position(String),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {:?}", self.data))
    }
}

/// A subscriber on a raw socket: tests control exactly when it reads.
pub struct SseClient {
    stream: TcpStream,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// `Some` when the body is chunked.
    chunked: Option<ChunkedDecoder>,
    /// Body bytes still expected when the response has a Content-Length.
    remaining: Option<usize>,
    raw: Vec<u8>,
    /// Decoded body bytes not yet parsed into lines.
    body: Vec<u8>,
    eof: bool,
    block: SseEvent,
    block_has_data: bool,
    items: std::collections::VecDeque<Item>,
}

impl SseClient {
    pub async fn connect(addr: SocketAddr, path_and_query: &str) -> SseClient {
        Self::connect_with(addr, path_and_query, &[], None).await
    }

    /// Connects with extra headers and, optionally, a small receive buffer
    /// (so that a client which stops reading backs the hub up quickly).
    pub async fn connect_with(
        addr: SocketAddr,
        path_and_query: &str,
        headers: &[(&str, &str)],
        recv_buffer: Option<u32>,
    ) -> SseClient {
        Self::connect_from(addr, path_and_query, headers, recv_buffer, None).await
    }

    /// Same, from a chosen loopback source address (127.0.0.2, …).
    pub async fn connect_from(
        addr: SocketAddr,
        path_and_query: &str,
        headers: &[(&str, &str)],
        recv_buffer: Option<u32>,
        source: Option<std::net::IpAddr>,
    ) -> SseClient {
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0)).unwrap();
        }
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let mut stream = socket.connect(addr).await.expect("connect");
        let mut req = format!("GET {path_and_query} HTTP/1.1\r\nAccept: text/event-stream\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req.push_str(&format!("Host: {addr}\r\n"));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut client = SseClient {
            stream,
            status: 0,
            headers: Vec::new(),
            chunked: None,
            remaining: None,
            raw: Vec::new(),
            body: Vec::new(),
            eof: false,
            block: SseEvent::default(),
            block_has_data: false,
            items: Default::default(),
        };
        client.read_head().await;
        client
    }

    /// Whether the hub's end of this client's TCP connection is still
    /// open (ESTABLISHED in the kernel's table, `/proc/net/tcp`): seen from
    /// outside, without reading the stream.
    pub fn hub_end_is_open(&self) -> bool {
        let hub = self.stream.peer_addr().expect("peer").port();
        let me = self.stream.local_addr().expect("local").port();
        let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
        table.lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = |field: &str| field.rsplit(':').next().map(str::to_owned);
            fields.len() > 3
                && port(fields[1]) == Some(format!("{hub:04X}"))
                && port(fields[2]) == Some(format!("{me:04X}"))
                && fields[3] == "01"
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    async fn fill(&mut self) -> bool {
        self.raw.reserve(64 * 1024);
        let n = tokio::time::timeout(PATIENCE, self.stream.read_buf(&mut self.raw))
            .await
            .expect("timed out reading the stream")
            .unwrap_or(0);
        n > 0
    }

    async fn read_head(&mut self) {
        loop {
            if let Some((head, len)) = ResponseHead::parse(&self.raw).expect("a response head") {
                self.raw.drain(..len);
                self.status = head.status;
                match head.framing().expect("a framed response") {
                    Framing::Chunked => self.chunked = Some(ChunkedDecoder::new()),
                    Framing::Length(n) => self.remaining = Some(n),
                    Framing::UntilClose => {}
                }
                self.headers = head.headers;
                return;
            }
            assert!(
                self.fill().await,
                "connection closed before the response head"
            );
        }
    }

    /// Moves what is decoded of `raw` to `body`; true at the body's end.
    fn dechunk(&mut self) -> bool {
        if let Some(remaining) = self.remaining.as_mut() {
            let n = self.raw.len().min(*remaining);
            self.body.extend(self.raw.drain(..n));
            *remaining -= n;
            return *remaining == 0;
        }
        let Some(chunked) = self.chunked.as_mut() else {
            self.body.append(&mut self.raw);
            return false;
        };
        let took = chunked
            .decode(&self.raw, &mut self.body)
            .expect("a well-formed chunked body");
        self.raw.drain(..took);
        chunked.ended()
    }

    fn parse_lines(&mut self) {
        while let Some((line, took)) = sse::next_line(&self.body) {
            match line {
                Line::Blank => {
                    if self.block_has_data {
                        let mut event = std::mem::take(&mut self.block);
                        if event.event.is_empty() {
                            event.event = "message".into();
                        }
                        event.data.pop(); // the trailing LF of the data buffer
                        self.items.push_back(Item::Event(event));
                    } else if let Some(id) = self.block.id.take() {
                        self.items.push_back(Item::Position(id));
                    }
                    self.block = SseEvent::default();
                    self.block_has_data = false;
                }
                Line::Comment(text) => {
                    let text = std::str::from_utf8(text).expect("utf-8 stream");
                    self.items
                        .push_back(Item::Comment(text.trim_start().to_owned()));
                }
                Line::Field { name, value } => {
                    let value = std::str::from_utf8(value).expect("utf-8 stream");
                    match name {
                        b"data" => {
                            self.block.data.push_str(value);
                            self.block.data.push('\n');
                            self.block_has_data = true;
                        }
                        b"event" => self.block.event = value.to_owned(),
                        b"id" => self.block.id = Some(value.to_owned()),
                        b"retry" => self
                            .items
                            .push_back(Item::Retry(value.parse().expect("retry"))),
                        other => panic!("unexpected field {:?}", String::from_utf8_lossy(other)),
                    }
                }
            }
            self.body.drain(..took);
        }
    }

    /// The next item, or `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.items.pop_front() {
                return Some(item);
            }
            if self.eof {
                return None;
            }
            let last_chunk = self.dechunk();
            self.parse_lines();
            if !self.items.is_empty() {
                continue;
            }
            if last_chunk || !self.fill().await {
                self.eof = true;
            }
        }
    }

    /// The next event, skipping comments and `retry:` fields.
    pub async fn next_event(&mut self) -> SseEvent {
        loop {
            match self.next().await {
                Some(Item::Event(e)) => return e,
                Some(_) => continue,
                None => panic!("stream ended while an event was expected"),
            }
        }
    }

    /// Reads events until one of type `event`.
    pub async fn expect_event(&mut self, event: &str) -> SseEvent {
        let e = self.next_event().await;
        assert_eq!(e.event, event, "unexpected event {e:?}");
        e
    }

    /// Reads the stream's opening: `retry:` then `herald.connected`.
    pub async fn expect_connected(&mut self) -> Value {
        assert_eq!(self.status, 200);
        assert!(
            matches!(self.next().await, Some(Item::Retry(_))),
            "stream must begin with retry:"
        );
        self.expect_event("herald.connected").await.json()
    }

    /// Reads everything up to the end of the stream.
    pub async fn read_to_end(&mut self) -> Vec<Item> {
        let mut out = Vec::new();
        while let Some(item) = self.next().await {
            out.push(item);
        }
        out
    }
}

/// The journal's segment files under a data directory, oldest first.
/// A directory for one test under the system's temp dir, emptied first
/// and removed when dropped, failed tests included (declare it before the
/// hub that uses it, so that the hub stops first).
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// `herald-{name}-{pid}`: tests running at once in other processes
    /// do not share it.
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("herald-{name}-{}", std::process::id()));
        remove(&dir);
        TempDir(dir)
    }
}

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for TempDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        remove(&self.0);
    }
}

/// Removes what is at `path`, a directory or (a test may put one there) a
/// file.
fn remove(path: &std::path::Path) {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            let _ = std::fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
}

pub fn journal_segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir.join("journal/log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    files
}

/// Says that the running test did nothing because `reason` (software it
/// needs is missing). Written straight to stderr, past the test harness's
/// capture, so that `cargo test` shows `SKIPPED` beside the `ok` it prints
/// for the test; under `CI` a skip is a failure instead.
#[allow(dead_code)]
pub fn skip(reason: &str) {
    use std::io::Write;
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install what every test needs (see .ci/run): {reason}"
    );
    let name = std::thread::current().name().unwrap_or("a test").to_owned();
    let _ = writeln!(std::io::stderr(), "SKIPPED {name}: {reason}");
}

/// Events only, from a list of items.
pub fn events(items: &[Item]) -> Vec<SseEvent> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// Leaves a subscriber on `topic` that stopped reading (with a small
/// receive buffer) certainly stalled: publishes more than the kernel can
/// buffer (the send buffer grows to at most `tcp_wmem`'s maximum, 4 MiB
/// here, and the receive buffer was fixed small), so events must be waiting
/// in the hub's queue. Returns how many fillers (`event: fill`) it published.
pub async fn stall_reader(hub: &HubProcess, topic: &str) -> usize {
    let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
        .unwrap_or(4 << 20);
    let filler = "x".repeat(60_000);
    let count = (wmem_max * 2 + (1 << 20)) / filler.len() + 1;
    for n in 0..count {
        hub.publish_ok(
            serde_json::json!({"topic": topic, "event": "fill", "data": format!("{n} {filler}")}),
        )
        .await;
    }
    hub.wait_for_stats("events waiting in the stalled queue", |s| {
        s["queued_now"].as_u64() >= Some(2)
    })
    .await;
    count
}

/// Where the records of a journal segment end: the last segment may hold
/// zeros after them (the journal keeps them ahead of its writes).
pub fn journal_records_end(segment: &std::path::Path) -> u64 {
    let bytes = std::fs::read(segment).unwrap();
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 || at + 8 + len > bytes.len() {
            break;
        }
        at += 8 + len;
    }
    at as u64
}
