//! Regressions of the security review of 2026-12-03 (issue 14), end to
//! end: each test reproduces one finding against a real hub and asserts the
//! fix. Findings are named as in the review (H1, H2, …).

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{HubProcess, SseClient};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "hardening-secret-that-is-long-enough-0123";

fn mint(claims: Value) -> String {
    let mut claims = claims;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    claims["exp"] = json!(now + 3600);
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn secret_setting() -> String {
    format!("auth.jwt_secret=\"{SECRET}\"")
}

fn data_dir(name: &str) -> common::TempDir {
    common::TempDir::new(&format!("hardening-{name}"))
}

/// `[[[…]]]`, `n` deep.
fn nest(n: usize) -> Value {
    serde_json::from_str(&("[".repeat(n) + &"]".repeat(n))).unwrap()
}

async fn send(
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The data of the last `n` events of `topic`, as a fresh stream replays them.
async fn history(hub: &HubProcess, topic: &str, n: usize) -> Vec<String> {
    let mut sub = SseClient::connect(
        hub.addr,
        &format!("/v1/events?topic={topic}&history=100&event=message"),
    )
    .await;
    sub.expect_connected().await;
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(sub.next_event().await.data);
    }
    out
}

/// H1: a publisher may not send `state` events, so it cannot rewrite (or
/// pin) another topic's retained value.
#[tokio::test]
async fn h1_a_publisher_cannot_forge_retained_state() {
    let hub = HubProcess::start(&[&secret_setting()]);
    let owner = mint(
        json!({"sub": "owner", "herald.publish": ["victim/**"], "herald.subscribe": ["victim/**"]}),
    );
    let mallory = mint(
        json!({"sub": "mallory", "herald.publish": ["chat/*"], "herald.subscribe": ["chat/*", "victim/**"]}),
    );
    let state = hub.url("/v1/state/victim/profile/k");
    let (status, _) = send(
        reqwest::Method::PUT,
        state.clone(),
        Some(&owner),
        &[],
        Some(r#"{"name":"legit"}"#.into()),
    )
    .await;
    assert_eq!(status, 200);
    let forged = json!({"topic": "chat/lobby", "event": "state", "data": {
        "topic": "victim/profile", "key": "k", "version": u64::MAX, "value": {"name": "FORGED"}}});
    let (status, body) = send(
        reqwest::Method::POST,
        hub.url("/v1/publish"),
        Some(&mallory),
        &[],
        Some(forged.to_string()),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_event")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("reserved"),
        "{body}"
    );
    // Nor through the text shortcut's `?event=`.
    let (status, _) = send(
        reqwest::Method::POST,
        hub.url("/v1/publish?topic=chat/lobby&event=state"),
        Some(&mallory),
        &[],
        Some("{}".into()),
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = send(reqwest::Method::GET, state.clone(), Some(&owner), &[], None).await;
    assert_eq!((status, &body["value"]), (200, &json!({"name": "legit"})));
    assert_eq!(body["version"], 1);
    // The owner's next change is version 2, and it sticks.
    let (status, body) = send(
        reqwest::Method::PUT,
        state.clone(),
        Some(&owner),
        &[],
        Some(r#"{"name":"legit-2"}"#.into()),
    )
    .await;
    assert_eq!((status, body["version"].as_u64()), (200, Some(2)));
    let (_, body) = send(reqwest::Method::GET, state, Some(&owner), &[], None).await;
    assert_eq!(body["value"], json!({"name": "legit-2"}));
}

/// A 400 with `code` whose message names the depth limit.
fn refused_at_the_limit(status: u16, body: &Value, code: &str) {
    refused_naming(status, body, (400, code), "the limit is 32");
}

/// A refusal with this status and error code whose message names `limit`.
fn refused_naming(status: u16, body: &Value, expected: (u16, &str), limit: &str) {
    assert_eq!(
        (status, body["error"].as_str()),
        (expected.0, Some(expected.1)),
        "{body}"
    );
    assert!(body["message"].as_str().unwrap().contains(limit), "{body}");
}

/// H2: values nested past the limit are refused at the edge with a message
/// naming it; values up to the limit are kept, and everything published
/// around them reads back after SIGTERM and after kill -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_deep_json_is_refused_at_the_edge_and_what_is_kept_reads_back() {
    let dir = data_dir("depth");
    let mut hub = HubProcess::start_durable(&dir, &[]);
    // Past the limit: refused, naming it; nothing is written.
    for deep in [33, 126] {
        let (status, body) = hub
            .publish(json!({"topic": "chat/a", "data": "deep", "filter": {"k": nest(deep - 1)}}))
            .await;
        refused_at_the_limit(status, &body, "invalid_field");
        let (status, body) = send(
            reqwest::Method::PUT,
            hub.url("/v1/state/chat/a/k"),
            None,
            &[],
            Some(nest(deep).to_string()),
        )
        .await;
        refused_at_the_limit(status, &body, "invalid_value");
    }
    // At the limit: kept, in the journal, the inbox file and the state file.
    let mut ids = Vec::new();
    ids.push(
        hub.publish_ok(json!({"topic": "chat/a", "data": "e1"}))
            .await,
    );
    ids.push(
        hub.publish_ok(
            json!({"topic": "chat/a", "data": "dm-deep", "to": {"users": ["bob"]},
            "filter": {"k": nest(31)}}),
        )
        .await,
    );
    ids.push(
        hub.publish_ok(json!({"topic": "chat/a", "data": "e3", "filter": {"k": nest(31)}}))
            .await,
    );
    ids.push(
        hub.publish_ok(json!({"topic": "chat/a", "data": "e4"}))
            .await,
    );
    let (status, _) = send(
        reqwest::Method::PUT,
        hub.url("/v1/state/chat/a/k"),
        None,
        &[],
        Some(nest(32).to_string()),
    )
    .await;
    assert_eq!(status, 200);
    let (_, bob) = hub.get_json("/v1/users/bob").await;
    assert_eq!(bob["inbox"]["offline"], 1, "{bob}");

    for kill in [false, true] {
        hub.stop(kill);
        hub = HubProcess::start_durable(&dir, &[]);
        assert!(
            !hub.logs().iter().any(|l| l.contains("cut back")),
            "nothing whole is cut: {:?}",
            hub.logs()
        );
        // Events with filters reach no plain subscriber; the rest replay.
        assert_eq!(history(&hub, "chat/a", 2).await, ["e1", "e4"]);
        let (_, bob) = hub.get_json("/v1/users/bob").await;
        assert_eq!(bob["inbox"]["offline"], 1, "{bob}");
        let (status, state) = hub.get_json("/v1/state/chat/a/k").await;
        assert_eq!((status, state["value"].clone()), (200, nest(32)));
        // No id is issued twice.
        let next = hub
            .publish_ok(json!({"topic": "chat/b", "data": "next"}))
            .await;
        let last: u64 = ids.last().unwrap().parse().unwrap();
        assert!(next.parse::<u64>().unwrap() > last);
        ids.push(next);
    }
}

/// H3: `to.users` is capped, and an inbox record is written once per event,
/// not once per user with the whole list in each.
#[tokio::test]
async fn h3_recipients_are_capped_and_inbox_writes_grow_linearly() {
    let dir = data_dir("recipients");
    let mut hub = HubProcess::start_durable(&dir, &[]);
    let users = |n: usize| (0..n).map(|i| format!("u{i:05}")).collect::<Vec<_>>();
    let (status, body) = hub
        .publish(json!({"topic": "chat/lobby", "data": "hi", "to": {"users": users(1001)}}))
        .await;
    refused_naming(
        status,
        &body,
        (400, "invalid_field"),
        "limits.max_recipients",
    );
    let (status, body) = hub
        .publish(json!({"topic": "chat/lobby", "data": "hi", "to": {"connections": users(1001)}}))
        .await;
    assert_eq!(status, 400, "{body}");

    let inbox = dir.join("inbox.log");
    let before = std::fs::metadata(&inbox).map_or(0, |m| m.len());
    hub.publish_ok(json!({"topic": "chat/lobby", "data": "hi", "to": {"users": users(1000)}}))
        .await;
    let written = std::fs::metadata(&inbox).unwrap().len() - before;
    // The list is 9 KB; one copy per user would be 9 MB.
    assert!(
        written < 64 * 1024,
        "{written} bytes written for one publish"
    );
    let (_, user) = hub.get_json("/v1/users/u00999").await;
    assert_eq!(user["inbox"]["offline"], 1, "{user}");
    // And it reads back.
    hub.kill9();
    let hub = HubProcess::start_durable(&dir, &[]);
    for name in ["u00000", "u00999"] {
        let (_, user) = hub.get_json(&format!("/v1/users/{name}")).await;
        assert_eq!(user["inbox"]["offline"], 1, "{user}");
    }
}

/// M1: `{sub}` only ever stands for one literal segment.
#[tokio::test]
async fn m1_a_subject_cannot_widen_a_sub_template() {
    let hub = HubProcess::start(&[&secret_setting()]);
    let grant = json!(["users/{sub}/inbox", "users/{sub}/**"]);
    for (sub, topic) in [
        ("*", "users/bob/inbox"),
        ("**", "users/**"),
        ("bob/x", "users/bob/x/inbox"),
        ("{sub}", "users/{sub}/inbox"),
    ] {
        let token = mint(json!({"sub": sub, "herald.subscribe": grant}));
        let sub_client = SseClient::connect(
            hub.addr,
            &format!("/v1/events?topic={topic}&access_token={token}"),
        )
        .await;
        assert_eq!(sub_client.status, 401, "subject {sub:?} reading {topic}");
    }
    let alice = mint(json!({"sub": "alice@example.com", "herald.subscribe": grant}));
    let mut own = SseClient::connect(
        hub.addr,
        &format!("/v1/events?topic=users/alice@example.com/inbox&access_token={alice}"),
    )
    .await;
    assert_eq!(own.status, 200);
    own.expect_connected().await;
    let other = SseClient::connect(
        hub.addr,
        &format!("/v1/events?topic=users/bob/inbox&access_token={alice}"),
    )
    .await;
    assert_eq!(other.status, 403);
}

/// M2: another site cannot make a browser publish or ack with its cookie,
/// nor with a dev-mode hub's loopback trust; a rebound name is refused.
#[tokio::test]
async fn m2_cross_site_requests_and_rebound_hosts_are_refused() {
    // Dev mode.
    let hub = HubProcess::start(&[]);
    let publish = |q: &str| hub.url(&format!("/v1/publish{q}"));
    let evil = [("origin", "http://evil.example")];
    let (status, body) = send(
        reqwest::Method::POST,
        publish("?topic=x"),
        None,
        &evil,
        Some("csrf".into()),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("forbidden_origin")),
        "{body}"
    );
    let cross = [("sec-fetch-site", "cross-site")];
    let (status, _) = send(
        reqwest::Method::POST,
        publish("?topic=x"),
        None,
        &cross,
        Some("csrf".into()),
    )
    .await;
    assert_eq!(status, 403);
    // Its own pages (the console), and tools that send no Origin, publish.
    let own = format!("http://{}", hub.addr);
    let (status, _) = send(
        reqwest::Method::POST,
        publish("?topic=x"),
        None,
        &[("origin", &own)],
        Some("ok".into()),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = send(
        reqwest::Method::POST,
        publish("?topic=x"),
        None,
        &[],
        Some("ok".into()),
    )
    .await;
    assert_eq!(status, 200);
    // DNS rebinding: a page under another name reads nothing.
    let rebound = [("host", "attacker.example:8080")];
    let (status, body) = send(
        reqwest::Method::GET,
        hub.url("/v1/stats"),
        None,
        &rebound,
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("forbidden_host")),
        "{body}"
    );
    let sub = SseClient::connect_with(hub.addr, "/v1/events?topic=x", &rebound, None).await;
    assert_eq!(sub.status, 403);
    for host in ["localhost:1", "127.0.0.1", "[::1]:8080", "app.localhost"] {
        let (status, _) = send(
            reqwest::Method::GET,
            hub.url("/healthz"),
            None,
            &[("host", host)],
            None,
        )
        .await;
        assert_eq!(status, 200, "{host}");
    }

    // With auth: cookies need an allowed Origin; bearer tokens do not.
    let hub = HubProcess::start(&[
        &secret_setting(),
        "cors.allowed_origins=[\"https://app.example.com\"]",
        "allowed_hosts=[\"push.example.com\"]",
    ]);
    let alice = mint(json!({"sub": "alice", "herald.publish": ["chat/*"]}));
    let cookie = format!("herald_token={alice}");
    let url = hub.url("/v1/publish?topic=chat/lobby");
    for (origin, expected) in [
        ("https://evil.example", 403),
        ("null", 403),
        ("https://app.example.com", 200),
    ] {
        let (status, body) = send(
            reqwest::Method::POST,
            url.clone(),
            None,
            &[("cookie", &cookie), ("origin", origin)],
            Some("hi".into()),
        )
        .await;
        assert_eq!(status, expected, "cookie from {origin}: {body}");
        let (status, _) = send(
            reqwest::Method::POST,
            hub.url("/v1/ack"),
            None,
            &[("cookie", &cookie), ("origin", origin)],
            Some(r#"{"ids":["1"]}"#.into()),
        )
        .await;
        assert_eq!(
            status == 403,
            expected == 403,
            "ack with a cookie from {origin}"
        );
    }
    let (status, _) = send(
        reqwest::Method::POST,
        url.clone(),
        Some(&alice),
        &[("origin", "https://evil.example")],
        Some("hi".into()),
    )
    .await;
    assert_eq!(status, 200, "a bearer token cannot be sent by another site");
    // allowed_hosts set: other names are refused, its own pass.
    let (status, _) = send(
        reqwest::Method::GET,
        hub.url("/healthz"),
        None,
        &[("host", "evil.example")],
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = send(
        reqwest::Method::GET,
        hub.url("/healthz"),
        None,
        &[("host", "push.example.com")],
        None,
    )
    .await;
    assert_eq!(status, 200);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// M3: streams that never read hold one chunk each, not their whole
/// replay; a socket that accepts nothing for `write_timeout_secs` is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m3_streams_that_never_read_hold_little_and_are_closed() {
    let hub = HubProcess::start(&["stream.write_timeout_secs=2"]);
    let big = "x".repeat(60_000);
    for i in 0..105 {
        hub.publish_ok(json!({"topic": "big", "data": format!("{i} {big}")}))
            .await;
    }
    let before = rss_kib(hub.pid());
    let mut stalled = Vec::new();
    for _ in 0..20 {
        stalled.push(
            SseClient::connect_with(
                hub.addr,
                "/v1/events?topic=big&history=100",
                &[],
                Some(4096),
            )
            .await,
        );
    }
    hub.wait_for_stats("20 streams", |s| s["connections"] == 20)
        .await;
    let grown = rss_kib(hub.pid()).saturating_sub(before);
    // Before the fix each held its whole 6 MB replay page (115 MB in all).
    assert!(
        grown < 30 * 1024,
        "20 stalled streams grew RSS by {grown} KiB"
    );
    // Nothing is read: after the write timeout they are closed.
    hub.wait_for_stats("the stalled streams closed", |s| s["connections"] == 0)
        .await;
    drop(stalled);
    // A reader that does read gets the whole replay, chunk by chunk.
    let mut sub = SseClient::connect(hub.addr, "/v1/events?topic=big&history=100").await;
    sub.expect_connected().await;
    for i in 5..105 {
        assert!(sub.next_event().await.data.starts_with(&format!("{i} ")));
    }
}

/// One sample of `/metrics`, by its name and labels as printed.
async fn metric(hub: &HubProcess, series: &str) -> f64 {
    let text = hub.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} not in /metrics:\n{text}"))
        .parse()
        .unwrap()
}

/// M4: history is bounded across topics, in bytes and in topics. The
/// oldest events leave first (a resume from before them is told), the
/// metrics show it, and a restart recovers no more than the caps.
#[tokio::test]
async fn m4_history_is_bounded_in_bytes_and_topics() {
    let dir = data_dir("caps");
    let caps = ["history.max_bytes=1048576", "history.max_topics=20"];
    let mut hub = HubProcess::start_durable(&dir, &caps);
    let first = hub.publish_ok(json!({"topic": "t/0", "data": "0"})).await;
    for i in 1..40 {
        hub.publish_ok(json!({"topic": format!("t/{i}"), "data": i.to_string()}))
            .await;
    }
    assert_eq!(metric(&hub, "herald_history_topics").await, 20.0);
    assert_eq!(
        metric(&hub, "herald_history_evicted_total{cap=\"max_topics\"}").await,
        20.0
    );
    // A resume from before the evicted events is told, not silently short.
    let mut resumed = SseClient::connect_with(
        hub.addr,
        "/v1/events?topic=t/*",
        &[("Last-Event-ID", first.as_str())],
        None,
    )
    .await;
    resumed.expect_connected().await;
    let reset = resumed.expect_event("herald.reset").await;
    assert_eq!(reset.json()["reason"], "history_expired", "{reset:?}");
    // The newest 20 topics are still there.
    assert_eq!(history(&hub, "t/39", 1).await, ["39"]);

    let big = "x".repeat(60_000);
    for i in 0..40 {
        hub.publish_ok(json!({"topic": "big", "data": format!("{i} {big}")}))
            .await;
    }
    let bytes = metric(&hub, "herald_history_bytes").await;
    assert!(bytes <= 1048576.0, "{bytes} bytes retained");
    assert!(metric(&hub, "herald_history_evicted_total{cap=\"max_bytes\"}").await > 0.0);
    let check = |kept: Vec<String>| {
        // Only the newest few fit, and they are the newest.
        assert!(kept.len() < 10, "{} events of 120 KB kept", kept.len());
        assert!(kept.last().unwrap().starts_with("39 "));
    };
    check(count_history(&hub, "big", "end-1").await);

    // Recovery reads the journal back within the same caps.
    hub.kill9();
    let hub = HubProcess::start_durable(&dir, &caps);
    assert!(metric(&hub, "herald_history_bytes").await <= 1048576.0);
    assert!(metric(&hub, "herald_history_topics").await <= 20.0);
    check(count_history(&hub, "big", "end-2").await);
}

/// M4: retained state is capped in values and bytes; a change past a cap
/// is refused `507 state_full` naming it, changes in place and deletes
/// still work, and the counts hold across a restart.
#[tokio::test]
async fn m4_state_is_capped_in_values_and_bytes() {
    let dir = data_dir("state-caps");
    let caps = [
        "state.max_keys=3",
        "state.max_bytes=2500",
        "limits.max_body_bytes=2000",
    ];
    let mut hub = HubProcess::start_durable(&dir, &caps);
    let put = |hub: &HubProcess, key: &str, value: Value| {
        send(
            reqwest::Method::PUT,
            hub.url(&format!("/v1/state/room/{key}")),
            None,
            &[],
            Some(value.to_string()),
        )
    };
    for key in ["a", "b", "c"] {
        assert_eq!(put(&hub, key, json!(key)).await.0, 200);
    }
    let (status, body) = put(&hub, "d", json!("d")).await;
    refused_naming(status, &body, (507, "state_full"), "state.max_keys");
    // A value that exists may change; room is made by deleting.
    assert_eq!(put(&hub, "a", json!("again")).await.0, 200);
    let (status, _) = send(
        reqwest::Method::DELETE,
        hub.url("/v1/state/room/c"),
        None,
        &[],
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(put(&hub, "d", json!("d")).await.0, 200);
    assert_eq!(metric(&hub, "herald_state_values").await, 3.0);

    let big = "x".repeat(1400);
    assert_eq!(put(&hub, "a", json!(big)).await.0, 200);
    let (status, body) = put(&hub, "b", json!(big)).await;
    refused_naming(status, &body, (507, "state_full"), "state.max_bytes");
    let (_, kept) = hub.get_json("/v1/state/room/b").await;
    assert_eq!(
        kept["value"], "b",
        "the refused change left the value alone"
    );

    // The file read back counts the same.
    hub.kill9();
    let hub = HubProcess::start_durable(&dir, &caps);
    assert_eq!(metric(&hub, "herald_state_values").await, 3.0);
    let (status, _) = put(&hub, "e", json!("e")).await;
    assert_eq!(status, 507);
}

/// The data of every event a fresh stream replays of `topic` (up to 100),
/// read until `marker`, published once it connected; earlier markers left
/// out.
async fn count_history(hub: &HubProcess, topic: &str, marker: &str) -> Vec<String> {
    let mut sub =
        SseClient::connect(hub.addr, &format!("/v1/events?topic={topic}&history=100")).await;
    sub.expect_connected().await;
    hub.publish_ok(json!({"topic": topic, "data": marker}))
        .await;
    let mut out = Vec::new();
    loop {
        let event = sub.next_event().await;
        if event.data == marker {
            return out;
        }
        if !event.data.starts_with("end-") {
            out.push(event.data);
        }
    }
}

/// M3: a fresh stream's state snapshot is read a page at a time as the
/// client takes it: streams that never read hold one page each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m3_state_snapshots_are_paged() {
    let hub = HubProcess::start(&["stream.write_timeout_secs=60"]);
    let big = "y".repeat(60_000);
    for i in 0..120 {
        let (status, body) = send(
            reqwest::Method::PUT,
            hub.url(&format!("/v1/state/room/k{i:03}")),
            None,
            &[],
            Some(json!(format!("{i} {big}")).to_string()),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let before = peak_rss_kib(hub.pid());
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut sub =
            SseClient::connect_with(hub.addr, "/v1/events?topic=room", &[], Some(4096)).await;
        sub.expect_connected().await;
        stalled.push(sub);
    }
    // A reader gets every value once, in key order, then live events;
    // meanwhile the stalled streams' writers have run as far as they can.
    let mut sub = SseClient::connect(hub.addr, "/v1/events?topic=room").await;
    sub.expect_connected().await;
    for i in 0..120 {
        let state = sub.expect_event("state").await.json();
        assert_eq!(state["key"], format!("k{i:03}"));
        assert!(state["value"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{i} ")));
    }
    hub.publish_ok(json!({"topic": "room", "data": "live"}))
        .await;
    assert_eq!(sub.next_event().await.data, "live");
    let grown = peak_rss_kib(hub.pid()).saturating_sub(before);
    // Built whole, each snapshot was 7 MB (144 MB for the twenty).
    assert!(grown < 40 * 1024, "the peak RSS grew by {grown} KiB");
    drop(stalled);
}

/// The most RSS the process has had (VmHWM).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// L4: behind a trusted proxy, limits see the client from
/// `X-Forwarded-For`; from anyone else the header is ignored.
#[tokio::test]
async fn l4_trusted_proxies_name_the_client() {
    let hub = HubProcess::start(&[
        "limits.max_connections_per_ip=1",
        "trusted_proxies=[\"127.0.0.1\"]",
    ]);
    let via = |client: &'static str| [("x-forwarded-for", client)];
    let mut a =
        SseClient::connect_with(hub.addr, "/v1/events?topic=t", &via("203.0.113.1"), None).await;
    a.expect_connected().await;
    let mut b =
        SseClient::connect_with(hub.addr, "/v1/events?topic=t", &via("203.0.113.2"), None).await;
    b.expect_connected().await;
    let mut again =
        SseClient::connect_with(hub.addr, "/v1/events?topic=t", &via("203.0.113.1"), None).await;
    assert_eq!(
        again.expect_event("herald.refused").await.json()["error"],
        "too_many_connections_from_address"
    );
    // Dev mode trusts loopback; a client behind the proxy is not loopback.
    let (status, body) = send(
        reqwest::Method::POST,
        hub.url("/v1/publish?topic=t"),
        None,
        &via("203.0.113.1"),
        Some("x".into()),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // From an untrusted peer (127.0.0.2) the header counts for nothing.
    let hub = HubProcess::start(&[
        "limits.max_connections_per_ip=1",
        "trusted_proxies=[\"127.0.0.1\"]",
    ]);
    let from = Some("127.0.0.2".parse().unwrap());
    let mut a = SseClient::connect_from(
        hub.addr,
        "/v1/events?topic=t",
        &via("203.0.113.1"),
        None,
        from,
    )
    .await;
    a.expect_connected().await;
    let mut b = SseClient::connect_from(
        hub.addr,
        "/v1/events?topic=t",
        &via("203.0.113.2"),
        None,
        from,
    )
    .await;
    assert_eq!(
        b.expect_event("herald.refused").await.json()["error"],
        "too_many_connections_from_address"
    );
}

/// L11: the console cannot be framed and runs only its own script.
#[tokio::test]
async fn l11_the_console_sets_a_content_security_policy() {
    let hub = HubProcess::start(&[]);
    let resp = reqwest::get(hub.url("/console/")).await.unwrap();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let csp = header("content-security-policy");
    for rule in [
        "frame-ancestors 'none'",
        "script-src 'self'",
        "default-src 'none'",
    ] {
        assert!(csp.contains(rule), "{rule} missing from {csp:?}");
    }
    assert!(!csp.contains("script-src 'self' 'unsafe-inline'"), "{csp}");
    assert_eq!(header("x-frame-options"), "DENY");
    assert_eq!(header("x-content-type-options"), "nosniff");
}

/// L5: a publisher key publishes (any topic, users, broadcasts) and changes
/// state, and can do nothing else: no streams, no state reads, no admin.
#[tokio::test]
async fn l5_publisher_keys_only_publish() {
    let hub = HubProcess::start(&[&secret_setting(), "auth.publisher_keys=[\"pub-key-1\"]"]);
    let key = Some("pub-key-1");
    let post = |body: Value| {
        send(
            reqwest::Method::POST,
            hub.url("/v1/publish"),
            key,
            &[],
            Some(body.to_string()),
        )
    };
    assert_eq!(post(json!({"topic": "any/where", "data": 1})).await.0, 200);
    assert_eq!(post(json!({"broadcast": true, "data": 1})).await.0, 200);
    assert_eq!(
        post(json!({"topic": "chat/1", "data": 1, "to": {"users": ["bob"]}}))
            .await
            .0,
        200
    );
    let state = hub.url("/v1/state/room/k");
    let (status, _) = send(
        reqwest::Method::PUT,
        state.clone(),
        key,
        &[],
        Some("1".into()),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = send(reqwest::Method::GET, state, key, &[], None).await;
    assert_eq!(status, 403, "{body}");
    for (method, path) in [
        (reqwest::Method::GET, "/v1/stats"),
        (reqwest::Method::GET, "/v1/topics"),
        (reqwest::Method::GET, "/v1/users/bob"),
        (reqwest::Method::DELETE, "/v1/users/bob/connections"),
    ] {
        let (status, body) = send(method, hub.url(path), key, &[], None).await;
        assert_eq!(status, 403, "{path}: {body}");
    }
    let sub = SseClient::connect_with(
        hub.addr,
        "/v1/events?topic=any/where",
        &[("Authorization", "Bearer pub-key-1")],
        None,
    )
    .await;
    assert_eq!(sub.status, 403);
}

/// A stored record the hub cannot decode (its CRC holds: no writer of this
/// version makes one) is skipped, logged and counted; nothing around it is
/// lost and no id is issued again.
#[tokio::test]
async fn unreadable_records_are_skipped_and_counted() {
    let dir = data_dir("unreadable");
    let mut hub = HubProcess::start_durable(&dir, &[]);
    let a = hub.publish_ok(json!({"topic": "t", "data": "a"})).await;
    let b = hub.publish_ok(json!({"topic": "t", "data": "b"})).await;
    hub.stop(false);
    let segments = common::journal_segments(&dir);
    let body = br#"{"neither":"an event nor a record"}"#;
    let mut framed = (body.len() as u32).to_le_bytes().to_vec();
    framed.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    framed.extend_from_slice(body);
    let last = segments.last().unwrap();
    let mut bytes = std::fs::read(last).unwrap();
    bytes.truncate(common::journal_records_end(last) as usize);
    bytes.extend_from_slice(&framed);
    std::fs::write(last, bytes).unwrap();

    let hub = HubProcess::start_durable(&dir, &[]);
    assert_eq!(metric(&hub, "herald_unreadable_records_total").await, 1.0);
    assert!(hub
        .logs()
        .iter()
        .any(|l| l.contains("whole but unreadable")));
    assert_eq!(history(&hub, "t", 2).await, ["a", "b"]);
    let c = hub.publish_ok(json!({"topic": "t", "data": "c"})).await;
    let id = |s: &str| s.parse::<u64>().unwrap();
    assert!(id(&a) < id(&b) && id(&b) < id(&c));
}
