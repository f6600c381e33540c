//! Many nodes on one log: real `herald` processes clustered on a real
//! engine started on a free port. Every scenario is one function taking
//! the engine, run once per engine by the tests at the bottom.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::engine::{Engine, Kind};
use common::{HubProcess, SseClient, PATIENCE};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "cluster-test-secret-long-enough-0123456789";
const API_KEY: &str = "cluster-test-api-key";

fn token(user: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = json!({"sub": user, "exp": exp, "herald.subscribe": ["news", "rooms/**"]});
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    encode(&Header::default(), &claims, &key).unwrap()
}

/// A node with auth on, whose stats calls use the API key.
fn secured_node(engine: &Engine) -> HubProcess {
    secured_node_with(engine, &[])
}

fn secured_node_with(engine: &Engine, extra: &[&str]) -> HubProcess {
    let secret = format!("auth.jwt_secret=\"{SECRET}\"");
    let keys = format!("auth.api_keys=[\"{API_KEY}\"]");
    let mut settings = vec![secret.as_str(), keys.as_str()];
    settings.extend_from_slice(extra);
    let mut node = engine.node(&settings);
    node.admin_key = Some(API_KEY.into());
    node
}

async fn post(node: &HubProcess, path: &str, bearer: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(node.url(path))
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Publishes with the API key (auth on); returns the id.
async fn publish_with_key(node: &HubProcess, body: Value) -> String {
    let (status, answer) = post(node, "/v1/publish", API_KEY, body).await;
    assert_eq!(status, 200, "{answer}");
    answer["id"].as_str().unwrap().to_owned()
}

async fn publish_direct(node: &HubProcess, user: &str, data: &str, require_ack: bool) -> String {
    let body = json!({"to": {"users": [user]}, "data": data, "require_ack": require_ack});
    publish_with_key(node, body).await
}

/// A stream of `user` (topic `news`), past its opening.
async fn user_stream(node: &HubProcess, user: &str) -> SseClient {
    user_stream_on(node, user, "news").await
}

async fn user_stream_on(node: &HubProcess, user: &str, topic: &str) -> SseClient {
    let bearer = format!("Bearer {}", token(user));
    let mut client = SseClient::connect_with(
        node.addr,
        &format!("/v1/events?topic={topic}"),
        &[("Authorization", &bearer)],
        None,
    )
    .await;
    client.expect_connected().await;
    client
}

/// Waits until a node has applied the first `events` events of the test
/// and nothing waits in its inboxes: whatever it held, another node's word
/// has released. (Holds come only from events; records only release.)
async fn wait_settled(node: &HubProcess, events: u64) {
    node.wait_for_stats("the node to settle", |s| {
        s["events_dispatched"].as_u64() >= Some(events) && s["inbox"]["waiting"] == 0
    })
    .await;
}

/// Reads `n` events of type `message`: (id, data) in arrival order.
async fn messages(client: &mut SseClient, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let e = tokio::time::timeout(PATIENCE, client.next_event())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} events arrived", out.len()));
        if e.event == "message" {
            out.push((e.id.expect("an id"), e.data));
        }
    }
    out
}

/// Reads messages up to and including the one with data `marker`.
async fn messages_until(client: &mut SseClient, marker: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    loop {
        let (id, data) = messages(client, 1).await.remove(0);
        let done = data == marker;
        out.push((id, data));
        if done {
            return out;
        }
    }
}

/// Publishes `data` on `topic`; returns (id, data), as [`messages`] reads.
async fn publish_data(node: &HubProcess, topic: &str, data: String) -> (String, String) {
    let id = node.publish_ok(json!({"topic": topic, "data": data})).await;
    (id, data)
}

async fn subscribe(node: &HubProcess, query: &str) -> SseClient {
    let mut client = SseClient::connect(node.addr, &format!("/v1/events?{query}")).await;
    client.expect_connected().await;
    client
}

async fn resume(node: &HubProcess, query: &str, last_event_id: &str) -> SseClient {
    let mut client = SseClient::connect_with(
        node.addr,
        &format!("/v1/events?{query}"),
        &[("Last-Event-ID", last_event_id)],
        None,
    )
    .await;
    client.expect_connected().await;
    client
}

fn numeric(id: &str) -> u64 {
    id.parse().expect("a numeric id")
}

/// Polls `/readyz` until it answers `status` (an awaited condition).
async fn wait_ready(node: &HubProcess, status: u16) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (got, body) = node.get_json("/readyz").await;
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {got} ({body}), expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn publish_anywhere_receive_everywhere(kind: Kind) {
    let Some(engine) = Engine::start(kind) else {
        return;
    };
    let nodes = [engine.node(&[]), engine.node(&[]), engine.node(&[])];
    let mut subscribers = Vec::new();
    for node in &nodes {
        subscribers.push(subscribe(node, "topic=chat/*").await);
    }
    // Any node's /v1/stats counts every node's streams, and each node's own.
    let stats = nodes[0]
        .wait_for_stats("three nodes with a stream each", |s| {
            s["cluster"]["totals"]["connections"] == 3 && s["cluster"]["totals"]["nodes"] == 3
        })
        .await;
    assert_eq!(stats["connections"], 1, "{stats}");
    for node in stats["cluster"]["nodes"].as_array().unwrap() {
        assert_eq!(node["connections"], 1, "{stats}");
        assert!(
            node["node"].as_str().unwrap().starts_with("node-"),
            "{stats}"
        );
    }
    // One after another, round the nodes: everyone sees publish order.
    let mut published = Vec::new();
    for i in 0..30 {
        published.push(publish_data(&nodes[i % 3], "chat/room", format!("m{i}")).await);
    }
    for sub in &mut subscribers {
        assert_eq!(messages(sub, 30).await, published);
    }
    // All at once from every node: one order, the same on every node.
    let bursts = nodes.iter().enumerate().map(|(n, node)| async move {
        let mut ids = Vec::new();
        for i in 0..20 {
            ids.push(
                node.publish_ok(json!({"topic": "chat/room", "data": format!("n{n}-{i}")}))
                    .await,
            );
        }
        ids
    });
    let acked: HashSet<String> = futures_util::future::join_all(bursts)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(acked.len(), 60, "every publish got its own id");
    let mut seen = Vec::new();
    for sub in &mut subscribers {
        seen.push(messages(sub, 60).await);
    }
    assert_eq!(seen[0], seen[1], "nodes A and B delivered different orders");
    assert_eq!(seen[0], seen[2], "nodes A and C delivered different orders");
    let ids: Vec<u64> = seen[0].iter().map(|(id, _)| numeric(id)).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids rise: {ids:?}");
    let got: HashSet<String> = seen[0].iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(got, acked);
}

async fn resume_on_another_node(kind: Kind) {
    let Some(engine) = Engine::start(kind) else {
        return;
    };
    let a = engine.node(&[]);
    let mut on_a = subscribe(&a, "topic=jobs/1").await;
    let mut published = Vec::new();
    for i in 0..10 {
        published.push(publish_data(&a, "jobs/1", format!("e{i}")).await);
    }
    assert_eq!(messages(&mut on_a, 5).await, published[..5]);
    let left_at = published[4].0.clone();
    drop(on_a);
    // A node that joins later reads the log the others wrote.
    let b = engine.node(&[]);
    let c = engine.node(&[]);
    for i in 10..15 {
        published.push(publish_data(&c, "jobs/1", format!("e{i}")).await);
    }
    let mut on_b = resume(&b, "topic=jobs/1", &left_at).await;
    assert_eq!(messages(&mut on_b, 10).await, published[5..]);
    // Exactly once: the next thing is what comes next, nothing replayed.
    let marker = a
        .publish_ok(json!({"topic": "jobs/1", "data": "marker"}))
        .await;
    assert_eq!(
        messages(&mut on_b, 1).await,
        [(marker, "marker".to_string())]
    );
    // History on the late node holds what the first one published.
    let mut history = subscribe(&b, "topic=jobs/1&history=3").await;
    let last3: Vec<String> = messages(&mut history, 3)
        .await
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    assert_eq!(last3, ["e13", "e14", "marker"]);
}

async fn idempotency_across_nodes(kind: Kind) {
    let Some(engine) = Engine::start(kind) else {
        return;
    };
    let nodes = [engine.node(&[]), engine.node(&[]), engine.node(&[])];
    let mut sub = subscribe(&nodes[2], "topic=orders").await;
    let body = json!({"topic": "orders", "data": "paid", "idempotency_key": "order-7-paid"});
    let first = nodes[0].publish_ok(body.clone()).await;
    for node in &nodes {
        assert_eq!(node.publish_ok(body.clone()).await, first);
    }
    nodes[1]
        .publish_ok(json!({"topic": "orders", "data": "marker"}))
        .await;
    let got = messages_until(&mut sub, "marker").await;
    assert_eq!(got.len(), 2, "one event per key, then the marker: {got:?}");
    assert_eq!(got[0], (first, "paid".to_string()));
}

async fn state_across_nodes(kind: Kind) {
    let Some(engine) = Engine::start(kind) else {
        return;
    };
    // A log this short is trimmed long before the test ends.
    let a = engine.node(&["cluster.max_log_events=50"]);
    let b = engine.node(&["cluster.max_log_events=50"]);
    let http = reqwest::Client::new();
    let put = http
        .put(a.url("/v1/state/boards/1/title"))
        .json(&json!({"text": "Q4"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    // A stream opened on the other node starts with the retained value.
    let mut fresh = SseClient::connect(b.addr, "/v1/events?topic=boards/1").await;
    fresh.expect_connected().await;
    let snapshot = fresh.expect_event("state").await.json();
    assert_eq!(snapshot["value"], json!({"text": "Q4"}));
    assert_eq!(snapshot["version"], 1);
    // A change made on B is the next version, and A reads it.
    let patch = http
        .patch(b.url("/v1/state/boards/1/title"))
        .header("content-type", "application/merge-patch+json")
        .json(&json!({"color": "red"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), 200);
    let (status, body) = a.get_json("/v1/state/boards/1/title").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 2, "{body}");
    assert_eq!(body["value"], json!({"text": "Q4", "color": "red"}));
    // If-Match is checked against the cluster's version, not a node's.
    let put = |node: &HubProcess, version: &str, text: &str| {
        http.put(node.url("/v1/state/boards/1/title"))
            .header("if-match", format!("\"{version}\""))
            .json(&json!({"text": text}))
            .send()
    };
    assert_eq!(put(&b, "2", "from b").await.unwrap().status(), 200);
    let lost = put(&a, "2", "from a").await.unwrap();
    assert_eq!(lost.status(), 412);
    // Writers racing through two nodes: every change gets its own version.
    let writers = [&a, &b].map(|node| {
        let http = http.clone();
        let url = node.url("/v1/state/boards/1/count");
        async move {
            let mut versions = Vec::new();
            for i in 0..15 {
                let resp = http
                    .patch(&url)
                    .header("content-type", "application/merge-patch+json")
                    .json(&json!({ "last": i }))
                    .send()
                    .await
                    .unwrap();
                let status = resp.status();
                let body: Value = resp.json().await.unwrap();
                assert_eq!(status, 200, "{body}");
                versions.push(body["version"].as_u64().unwrap());
            }
            versions
        }
    });
    let mut versions: Vec<u64> = futures_util::future::join_all(writers).await.concat();
    versions.sort_unstable();
    assert_eq!(versions, (1..=30).collect::<Vec<u64>>());
    // The engine keeps retained values apart from the log: a node that
    // starts after the log was trimmed still has them.
    for i in 0..400 {
        a.publish_ok(json!({"topic": "noise", "data": i})).await;
    }
    let c = engine.node(&[]);
    let (status, body) = c.get_json("/v1/state/boards/1/title").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["value"], json!({"text": "from b"}), "{body}");
    assert_eq!(body["version"], 3, "{body}");
}

/// A value read on one node right after another node acknowledged a
/// change of it is the changed value, however far behind the reading node
/// was when asked.
async fn state_reads_catch_up_with_the_engine(kind: Kind) {
    let Some(engine) = Engine::start(kind) else {
        return;
    };
    let a = engine.node(&[]);
    let b = engine.node(&[]);
    let http = reqwest::Client::new();
    let url = |node: &HubProcess| node.url("/v1/state/boards/1/title");
    let put = http.put(url(&b)).json(&json!({"text": "v1"})).send();
    assert_eq!(put.await.unwrap().status(), 200);
    // A holds the value (the first read loads every value from the engine;
    // later reads follow the log).
    let (status, body) = a.get_json("/v1/state/boards/1/title").await;
    assert_eq!((status, &body["version"]), (200, &json!(1)), "{body}");
    // A falls behind: stopped while B publishes a backlog and then
    // changes the value.
    a.freeze();
    for batch in 0..5 {
        let events: Vec<Value> = (0..1000)
            .map(|i| json!({"topic": "backlog", "data": format!("{batch}-{i}")}))
            .collect();
        let (status, body) = b.publish(Value::Array(events)).await;
        assert_eq!(status, 200, "{body}");
    }
    let put = http.put(url(&b)).json(&json!({"text": "v2"})).send();
    assert_eq!(put.await.unwrap().status(), 200);
    // Asked while stopped, A answers once it runs again, with the backlog
    // still to apply.
    let read = tokio::spawn(http.get(url(&a)).send());
    a.thaw();
    let resp = read.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["value"], json!({"text": "v2"}), "{body}");
    assert_eq!(body["version"], 2, "{body}");
}

#[tokio::test]
async fn redis_state_reads_catch_up_with_the_engine() {
    state_reads_catch_up_with_the_engine(Kind::Redis).await;
}

#[tokio::test]
async fn nats_state_reads_catch_up_with_the_engine() {
    state_reads_catch_up_with_the_engine(Kind::Nats).await;
}

async fn node_killed_mid_stream_loses_nothing_acknowledged(kind: Kind) {
    let Some(engine) = Engine::start(kind) else {
        return;
    };
    let mut a = engine.node(&[]);
    let b = engine.node(&[]);
    let mut sub = subscribe(&b, "topic=feed").await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let url = a.url("/v1/publish");
    let mut publishers = Vec::new();
    for p in 0..4 {
        let (tx, url) = (tx.clone(), url.clone());
        publishers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 0.. {
                let sent = http
                    .post(&url)
                    .json(&json!({"topic": "feed", "data": format!("p{p}-{i}")}))
                    .send()
                    .await;
                let Ok(resp) = sent else { break };
                if resp.status() != 200 {
                    break;
                }
                let Ok(answer) = resp.json::<Value>().await else {
                    break; // killed between the head and the body
                };
                let _ = tx.send(answer["id"].as_str().unwrap().to_owned());
            }
        }));
    }
    drop(tx);
    let mut acked = HashSet::new();
    while acked.len() < 200 {
        acked.insert(rx.recv().await.expect("publishers still running"));
    }
    a.kill9();
    for publisher in publishers {
        publisher.await.unwrap();
    }
    while let Some(id) = rx.recv().await {
        acked.insert(id);
    }
    b.publish_ok(json!({"topic": "feed", "data": "marker"}))
        .await;
    // The killed node leaves the cluster's numbers once its report is stale.
    b.wait_for_stats("the killed node gone from the stats", |s| {
        s["cluster"]["totals"]["nodes"] == 1
    })
    .await;
    let got = messages_until(&mut sub, "marker").await;
    let ids: Vec<u64> = got.iter().map(|(id, _)| numeric(id)).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order, no repeats");
    let delivered: HashSet<String> = got.into_iter().map(|(id, _)| id).collect();
    let lost: Vec<&String> = acked.difference(&delivered).collect();
    assert!(
        lost.is_empty(),
        "acknowledged but never delivered: {lost:?}"
    );
}

async fn engine_restart_loses_nothing(kind: Kind) {
    let Some(mut engine) = Engine::start(kind) else {
        return;
    };
    let a = engine.node(&[]);
    let b = engine.node(&[]);
    let mut subs = [
        subscribe(&a, "topic=ticks").await,
        subscribe(&b, "topic=ticks").await,
    ];
    let mut published = Vec::new();
    for i in 0..20 {
        published.push(publish_data(&a, "ticks", format!("t{i}")).await);
    }
    for sub in &mut subs {
        assert_eq!(messages(sub, 20).await, published);
    }
    engine.kill9();
    // Down: not ready, and publishes refused, never acknowledged.
    for node in [&a, &b] {
        let body = wait_ready(node, 503).await;
        assert!(
            body["reason"].as_str().unwrap().contains("cluster"),
            "{body}"
        );
    }
    let (status, answer) = b
        .publish(json!({"topic": "ticks", "data": "while down"}))
        .await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"], "unavailable", "{answer}");
    let metrics = b.metrics().await;
    assert!(metrics.contains("herald_cluster_engine_up 0"), "{metrics}");
    engine.restart();
    for node in [&a, &b] {
        wait_ready(node, 200).await;
    }
    // Both nodes publish again at once: B, whose publish failed, and A,
    // which tried none while the engine was away.
    for i in 20..30 {
        let node = if i % 2 == 0 { &a } else { &b };
        published.push(publish_data(node, "ticks", format!("t{i}")).await);
    }
    // The streams stayed open across the outage and carry on exactly once.
    for sub in &mut subs {
        assert_eq!(messages(sub, 10).await, published[20..]);
    }
    // Everything acknowledged before the crash is still in the log.
    let c = engine.node(&[]);
    let mut history = subscribe(&c, "topic=ticks&history=100").await;
    assert_eq!(messages(&mut history, 30).await, published);
}

async fn inboxes_and_acks_across_nodes(kind: Kind) {
    let Some(engine) = Engine::start(kind) else {
        return;
    };
    let [a, b, c] = [
        secured_node(&engine),
        secured_node(&engine),
        secured_node(&engine),
    ];
    // Offline everywhere: the message waits on every node; the first
    // stream, on B, gets it, and then it waits nowhere.
    let hello = publish_direct(&a, "ann", "hello ann", false).await;
    let mut on_b = user_stream(&b, "ann").await;
    assert_eq!(messages(&mut on_b, 1).await, [(hello, "hello ann".into())]);
    drop(on_b);
    wait_settled(&c, 1).await;
    wait_settled(&a, 1).await;
    let mut on_c = user_stream(&c, "ann").await;
    publish_direct(&a, "ann", "marker 1", false).await;
    assert_eq!(messages(&mut on_c, 1).await[0].1, "marker 1");
    // Awaiting an acknowledgement: every new stream gets it until the user
    // acknowledges it, on any node; then no node has it.
    let sign = publish_direct(&c, "ann", "sign", true).await;
    assert_eq!(messages(&mut on_c, 1).await[0].1, "sign");
    let mut on_a = user_stream(&a, "ann").await;
    assert_eq!(
        messages(&mut on_a, 1).await,
        [(sign.clone(), "sign".into())]
    );
    let (status, answer) = post(&a, "/v1/ack", &token("ann"), json!({"ids": [sign]})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["acked"], json!([sign]), "{answer}");
    drop(on_a);
    wait_settled(&b, 3).await;
    let mut on_b = user_stream(&b, "ann").await;
    publish_direct(&b, "ann", "marker 2", false).await;
    assert_eq!(messages(&mut on_b, 1).await[0].1, "marker 2");
    assert_eq!(messages(&mut on_c, 1).await[0].1, "marker 2");
    drop(on_b);
    // Delivered live on C only: A and B, where Ann has no stream, hold it
    // until C's word arrives.
    publish_direct(&a, "ann", "live", false).await;
    assert_eq!(messages(&mut on_c, 1).await[0].1, "live");
    wait_settled(&a, 5).await;
    wait_settled(&b, 5).await;
    // A node that starts now rebuilds the same inboxes from the log:
    // nothing for Ann, Bob's message for Bob.
    let for_bob = publish_direct(&a, "bob", "for bob", false).await;
    let d = secured_node(&engine);
    let stats = d.stats().await;
    assert_eq!(stats["inbox"]["waiting"], 1, "{stats}");
    let mut bob = user_stream(&d, "bob").await;
    assert_eq!(messages(&mut bob, 1).await, [(for_bob, "for bob".into())]);
    let mut ann = user_stream(&d, "ann").await;
    publish_direct(&d, "ann", "marker 3", false).await;
    assert_eq!(messages(&mut ann, 1).await[0].1, "marker 3");
}

/// The next `herald.presence` or message event's (action or data, user).
async fn next_announcement(observer: &mut SseClient) -> (String, String) {
    loop {
        let e = tokio::time::timeout(PATIENCE, observer.next_event())
            .await
            .expect("an announcement");
        match e.event.as_str() {
            "herald.presence" => {
                let v = e.json();
                return (
                    v["action"].as_str().unwrap().to_owned(),
                    v["user"].as_str().unwrap().to_owned(),
                );
            }
            "message" => return (e.data, String::new()),
            _ => continue,
        }
    }
}

async fn marker(node: &HubProcess, text: &str) {
    publish_with_key(node, json!({"topic": "rooms/1", "data": text})).await;
}

async fn presence_across_nodes(kind: Kind) {
    let Some(engine) = Engine::start(kind) else {
        return;
    };
    let presence = "presence.topics=[\"rooms/*\"]";
    let a = secured_node_with(&engine, &[presence]);
    let mut b = secured_node_with(&engine, &[presence]);
    let mut observer = user_stream_on(&a, "obs", "rooms/1").await;
    assert_eq!(
        next_announcement(&mut observer).await,
        ("join".into(), "obs".into())
    );
    // Ann's first stream anywhere joins; her second, on another node, not.
    let ann_a = user_stream_on(&a, "ann", "rooms/1").await;
    assert_eq!(
        next_announcement(&mut observer).await,
        ("join".into(), "ann".into())
    );
    let ann_b = user_stream_on(&b, "ann", "rooms/1").await;
    b.wait_for_stats("B to count Ann in", |s| s["presence_updates"] == 1)
        .await;
    marker(&b, "m1").await;
    assert_eq!(
        next_announcement(&mut observer).await,
        ("m1".into(), String::new())
    );
    // Her stream on A closes: she is still on B, no leave.
    drop(ann_a);
    // A wrote obs's join, Ann's join and now Ann's leave of A.
    a.wait_for_stats("A to count Ann out", |s| s["presence_updates"] == 3)
        .await;
    marker(&a, "m2").await;
    assert_eq!(
        next_announcement(&mut observer).await,
        ("m2".into(), String::new())
    );
    // Her last stream closes: she leaves.
    drop(ann_b);
    assert_eq!(
        next_announcement(&mut observer).await,
        ("leave".into(), "ann".into())
    );
    // A node killed with its users on it: once its report is stale (10 s),
    // another node notices on its own and the users leave.
    let _bob = user_stream_on(&b, "bob", "rooms/1").await;
    assert_eq!(
        next_announcement(&mut observer).await,
        ("join".into(), "bob".into())
    );
    b.kill9();
    assert_eq!(
        next_announcement(&mut observer).await,
        ("leave".into(), "bob".into())
    );
}

async fn a_trimmed_log_resets_positions_before_it(kind: Kind) {
    let Some(engine) = Engine::start(kind) else {
        return;
    };
    // Nodes would keep 1000 events per topic: what is missing, the engine
    // trimmed.
    let short = [
        "cluster.max_log_events=50",
        "history.max_events_per_topic=1000",
    ];
    let a = engine.node(&short);
    let first = a.publish_ok(json!({"topic": "t", "data": "e0"})).await;
    for i in 1..300 {
        a.publish_ok(json!({"topic": "t", "data": format!("e{i}")}))
            .await;
    }
    // Once the engine has trimmed its log (at once on Redis, within a few
    // seconds on NATS), a node that starts has only what is left, and a
    // resume from before it is told so instead of skipping silently.
    let deadline = Instant::now() + PATIENCE;
    let node = loop {
        let node = engine.node(&short);
        let mut resumed = resume(&node, "topic=t", &first).await;
        let e = resumed.next_event().await;
        if e.event == "herald.reset" {
            assert_eq!(e.json()["reason"], "history_expired", "{e:?}");
            break node;
        }
        assert_eq!(e.data, "e1", "a resume before trimming replays from e1");
        assert!(Instant::now() < deadline, "the log was never trimmed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut history = subscribe(&node, "topic=t&history=1000").await;
    a.publish_ok(json!({"topic": "t", "data": "marker"})).await;
    let kept = messages_until(&mut history, "marker").await.len() - 1;
    assert!((50..300).contains(&kept), "kept {kept} of 300");
}

/// Events up to and including the message `marker`, of any type: (type,
/// id, data) in arrival order.
async fn events_until(client: &mut SseClient, marker: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    loop {
        let e = tokio::time::timeout(PATIENCE, client.next_event())
            .await
            .unwrap_or_else(|_| panic!("{marker} did not arrive after {out:?}"));
        if e.event == "connected" {
            continue;
        }
        let done = e.event == "message" && e.data == marker;
        out.push((e.event, e.id.expect("an id"), e.data));
        if done {
            return out;
        }
    }
}

/// Past the hot window (`history.hot_bytes=0`: only the newest event is
/// held whole) history is read back from the node's copy of the log on its
/// disk, or from the engine by id on a node without a data directory: on
/// the node that wrote it and on ones that joined later, a resume replays
/// what a live stream saw, in order, and `history=` the newest. On NATS
/// the state changes, whose messages the next change replaces, come back
/// from the copy of the node that read them, or stay whole on a node
/// without one.
async fn history_beyond_the_hot_window(kind: Kind) {
    let Some(mut engine) = Engine::start(kind) else {
        return;
    };
    let cold = ["history.hot_bytes=0"];
    let a = engine.node(&cold);
    let mut live = subscribe(&a, "topic=cold/*").await;
    let http = reqwest::Client::new();
    for i in 0..40 {
        if i % 10 == 5 {
            let resp = http
                .put(a.url("/v1/state/cold/s/n"))
                .json(&json!(i))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        }
        let topic = ["cold/x", "cold/y"][i % 2];
        publish_data(&a, topic, format!("e{i}")).await;
    }
    a.publish_ok(json!({"topic": "cold/x", "data": "end"}))
        .await;
    let seen = events_until(&mut live, "end").await;
    assert_eq!(seen.len(), 45);
    let b = engine.node(&cold);
    let diskless = engine.diskless_node(&cold);
    // NATS keeps only a value's last change (its subject is rolled up): a
    // node that joins later never read the earlier ones.
    let replayed = |joined_late: bool| -> Vec<_> {
        let joined_late = joined_late && matches!(kind, Kind::Nats);
        seen[1..]
            .iter()
            .filter(|(t, _, d)| !joined_late || t != "state" || d.contains(r#""version":4"#))
            .cloned()
            .collect()
    };
    for (name, node) in [("a", &a), ("b", &b), ("diskless", &diskless)] {
        let metrics = node.metrics().await;
        let cold: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("herald_history_cold_events "))
            .expect("the gauge")
            .parse()
            .unwrap();
        assert!(cold >= 40, "history is past the hot window: {cold} cold");
        let want = replayed(name != "a");
        let mut resumed = resume(node, "topic=cold/*", &seen[0].1).await;
        assert_eq!(events_until(&mut resumed, "end").await, want, "node {name}");
        let mut newest = subscribe(node, "topic=cold/y&history=4").await;
        let want: Vec<(String, String)> = seen
            .iter()
            .filter(|(t, _, d)| t == "message" && ["e33", "e35", "e37", "e39"].contains(&&d[..]))
            .map(|(_, id, d)| (id.clone(), d.clone()))
            .collect();
        assert_eq!(messages(&mut newest, 4).await, want);
    }
    // With the engine away, a node replays from its copy all the same; one
    // without a copy ends the stream (its client resumes later) rather
    // than skip what it cannot read.
    engine.kill9();
    let mut resumed = resume(&a, "topic=cold/*", &seen[0].1).await;
    assert_eq!(events_until(&mut resumed, "end").await, seen[1..]);
    let mut cut = resume(&diskless, "topic=cold/*", &seen[0].1).await;
    let items = tokio::time::timeout(PATIENCE, cut.read_to_end())
        .await
        .expect("the stream ends");
    let got: Vec<_> = common::events(&items)
        .into_iter()
        .map(|e| (e.event, e.id.expect("an id"), e.data))
        .collect();
    let want = replayed(true);
    assert!(got.len() < want.len(), "{got:?}");
    assert_eq!(got, want[..got.len()], "a prefix, in order");
    engine.restart();
    wait_ready(&diskless, 200).await;
    let mut resumed = resume(&diskless, "topic=cold/*", &seen[0].1).await;
    assert_eq!(events_until(&mut resumed, "end").await, replayed(true));
}

/// A node whose copy of the log stops fitting on its disk (a file size
/// limit, failing as a full disk does) says so once and reads what it
/// could not copy from the engine: a resume replays everything, in order,
/// part from the copy and part from the engine.
async fn a_full_disk_sends_cold_reads_to_the_engine(kind: Kind) {
    let Some(engine) = Engine::start(kind) else {
        return;
    };
    let node = engine.node_with_file_limit(&["history.hot_bytes=0"], 32 * 1024);
    let mut published = Vec::new();
    for i in 0..100 {
        let data = format!("{i:03} {}", "x".repeat(500));
        published.push(publish_data(&node, "full", data).await);
    }
    published.push(publish_data(&node, "full", "end".into()).await);
    node.wait_for_log(&["could not copy the log"]).await;
    let mut resumed = resume(&node, "topic=full", &published[0].0).await;
    assert_eq!(messages_until(&mut resumed, "end").await, published[1..]);
    let warnings = node
        .logs()
        .iter()
        .filter(|l| l.contains("could not copy the log"))
        .count();
    assert_eq!(warnings, 1, "said once, not at every write");
}

#[tokio::test]
async fn redis_a_full_disk_sends_cold_reads_to_the_engine() {
    a_full_disk_sends_cold_reads_to_the_engine(Kind::Redis).await;
}

#[tokio::test]
async fn nats_a_full_disk_sends_cold_reads_to_the_engine() {
    a_full_disk_sends_cold_reads_to_the_engine(Kind::Nats).await;
}

#[tokio::test]
async fn redis_history_beyond_the_hot_window() {
    history_beyond_the_hot_window(Kind::Redis).await;
}

#[tokio::test]
async fn nats_history_beyond_the_hot_window() {
    history_beyond_the_hot_window(Kind::Nats).await;
}

#[tokio::test]
async fn redis_a_trimmed_log_resets_positions_before_it() {
    a_trimmed_log_resets_positions_before_it(Kind::Redis).await;
}

#[tokio::test]
async fn nats_a_trimmed_log_resets_positions_before_it() {
    a_trimmed_log_resets_positions_before_it(Kind::Nats).await;
}

async fn state_changes_never_hide_events(kind: Kind) {
    let Some(engine) = Engine::start(kind) else {
        return;
    };
    let a = engine.node(&[]);
    let b = engine.node(&[]);
    let mut subs = [
        subscribe(&a, "topic=feed").await,
        subscribe(&b, "topic=feed").await,
    ];
    // Events stream in through A while B keeps changing a retained value
    // (on NATS each change replaces the last on its subject, which moves
    // every consumer of the stream: what it skipped must still arrive).
    let writer = {
        let url = b.url("/v1/state/boards/9/n");
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 0..100 {
                let resp = http.put(&url).json(&json!(i)).send().await.unwrap();
                assert_eq!(resp.status(), 200);
            }
        })
    };
    let mut acked = Vec::new();
    for i in 0..300 {
        acked.push(
            a.publish_ok(json!({"topic": "feed", "data": format!("e{i}")}))
                .await,
        );
    }
    writer.await.unwrap();
    a.publish_ok(json!({"topic": "feed", "data": "marker"}))
        .await;
    for sub in &mut subs {
        let got: Vec<String> = messages_until(sub, "marker")
            .await
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            got[..got.len() - 1],
            acked[..],
            "every event, once, in order"
        );
    }
}

#[tokio::test]
async fn redis_state_changes_never_hide_events() {
    state_changes_never_hide_events(Kind::Redis).await;
}

#[tokio::test]
async fn nats_state_changes_never_hide_events() {
    state_changes_never_hide_events(Kind::Nats).await;
}

async fn delete(node: &HubProcess, path: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .delete(node.url(path))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Reads a stream to its end; fails the test if it does not end.
async fn ends(mut client: SseClient) {
    tokio::time::timeout(PATIENCE, client.read_to_end())
        .await
        .expect("the stream was closed");
}

async fn admin_closes_streams_on_every_node(kind: Kind) {
    let Some(engine) = Engine::start(kind) else {
        return;
    };
    let a = secured_node(&engine);
    let b = secured_node(&engine);
    // A user's streams close on every node.
    let (on_a, on_b) = (user_stream(&a, "ann").await, user_stream(&b, "ann").await);
    let (status, answer) = delete(&a, "/v1/users/ann/connections").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!({"closed": 1, "forwarded": true}));
    ends(on_a).await;
    ends(on_b).await;
    // A stream held by another node: passed on, and closed there.
    let bearer = format!("Bearer {}", token("bob"));
    let mut bob = SseClient::connect_with(
        b.addr,
        "/v1/events?topic=news",
        &[("Authorization", &bearer)],
        None,
    )
    .await;
    let id = bob.expect_connected().await["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, answer) = delete(&a, &format!("/v1/connections/{id}")).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer, json!({"closed": 0, "forwarded": true}));
    ends(bob).await;
}

#[tokio::test]
async fn redis_admin_closes_streams_on_every_node() {
    admin_closes_streams_on_every_node(Kind::Redis).await;
}

#[tokio::test]
async fn nats_admin_closes_streams_on_every_node() {
    admin_closes_streams_on_every_node(Kind::Nats).await;
}

#[tokio::test]
async fn redis_presence_across_nodes() {
    presence_across_nodes(Kind::Redis).await;
}

#[tokio::test]
async fn redis_inboxes_and_acks_across_nodes() {
    inboxes_and_acks_across_nodes(Kind::Redis).await;
}

#[tokio::test]
async fn redis_publish_anywhere_receive_everywhere() {
    publish_anywhere_receive_everywhere(Kind::Redis).await;
}

#[tokio::test]
async fn redis_resume_on_another_node() {
    resume_on_another_node(Kind::Redis).await;
}

#[tokio::test]
async fn redis_idempotency_across_nodes() {
    idempotency_across_nodes(Kind::Redis).await;
}

#[tokio::test]
async fn redis_state_across_nodes() {
    state_across_nodes(Kind::Redis).await;
}

#[tokio::test]
async fn redis_node_killed_mid_stream_loses_nothing_acknowledged() {
    node_killed_mid_stream_loses_nothing_acknowledged(Kind::Redis).await;
}

#[tokio::test]
async fn redis_engine_restart_loses_nothing() {
    engine_restart_loses_nothing(Kind::Redis).await;
}

#[tokio::test]
async fn nats_inboxes_and_acks_across_nodes() {
    inboxes_and_acks_across_nodes(Kind::Nats).await;
}

#[tokio::test]
async fn nats_resume_on_another_node() {
    resume_on_another_node(Kind::Nats).await;
}

#[tokio::test]
async fn nats_idempotency_across_nodes() {
    idempotency_across_nodes(Kind::Nats).await;
}

#[tokio::test]
async fn nats_node_killed_mid_stream_loses_nothing_acknowledged() {
    node_killed_mid_stream_loses_nothing_acknowledged(Kind::Nats).await;
}

#[tokio::test]
async fn nats_engine_restart_loses_nothing() {
    engine_restart_loses_nothing(Kind::Nats).await;
}

#[tokio::test]
async fn nats_presence_across_nodes() {
    presence_across_nodes(Kind::Nats).await;
}

#[tokio::test]
async fn nats_state_across_nodes() {
    state_across_nodes(Kind::Nats).await;
}

#[tokio::test]
async fn nats_publish_anywhere_receive_everywhere() {
    publish_anywhere_receive_everywhere(Kind::Nats).await;
}
