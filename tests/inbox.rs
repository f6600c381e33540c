//! Acknowledgements and offline inboxes end to end (SPEC §7).

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{HubProcess, Item, SseClient, SseEvent};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "inbox-test-secret-long-enough-0123456789";
const API_KEY: &str = "inbox-test-api-key";

fn token(user: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "sub": user,
        "exp": now + 3600,
        "herald.subscribe": ["news", "news/**", "chat/**"],
    });
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn auth_settings() -> Vec<String> {
    vec![
        format!("auth.jwt_secret=\"{SECRET}\""),
        format!("auth.api_keys=[\"{API_KEY}\"]"),
    ]
}

fn hub(extra: &[&str]) -> HubProcess {
    let mut settings = auth_settings();
    settings.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = settings.iter().map(String::as_str).collect();
    let mut hub = HubProcess::start(&refs);
    hub.admin_key = Some(API_KEY.into());
    hub
}

async fn request(
    hub: &HubProcess,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = match &body {
        Some(_) => client.post(hub.url(path)),
        None => client.get(hub.url(path)),
    };
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Publishes with the API key; returns the id.
async fn publish(hub: &HubProcess, body: Value) -> String {
    let (status, answer) = request(hub, "/v1/publish", Some(API_KEY), Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    answer["id"].as_str().unwrap().to_owned()
}

async fn ack(hub: &HubProcess, user_token: &str, ids: &[&str]) -> Value {
    let (status, answer) =
        request(hub, "/v1/ack", Some(user_token), Some(json!({"ids": ids}))).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

async fn connect(hub: &HubProcess, path: &str, user_token: &str) -> SseClient {
    let auth = format!("Bearer {user_token}");
    let mut c =
        SseClient::connect_with(hub.addr, path, &[("Authorization", auth.as_str())], None).await;
    c.expect_connected().await;
    c
}

/// Events and positions up to (and including) the first event of type
/// `until`.
async fn read_until(c: &mut SseClient, until: &str) -> Vec<Item> {
    let mut out = Vec::new();
    loop {
        match c.next().await.expect("stream ended") {
            Item::Event(e) if e.event == until => {
                out.push(Item::Event(e));
                return out;
            }
            item @ (Item::Event(_) | Item::Position(_)) => out.push(item),
            Item::Comment(_) | Item::Retry(_) => {}
        }
    }
}

fn datas(items: &[Item]) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Event(SseEvent { data, .. }) => Some(data.clone()),
            _ => None,
        })
        .collect()
}

/// A marker after everything else, so that "nothing more came" is observed.
async fn mark(hub: &HubProcess, user: &str) {
    publish(
        hub,
        json!({"to": {"users": [user]}, "event": "end", "data": "end"}),
    )
    .await;
}

async fn user(hub: &HubProcess, user: &str) -> Value {
    let (status, body) = request(hub, &format!("/v1/users/{user}"), Some(API_KEY), None).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn an_event_that_needs_an_ack_comes_to_every_new_connection_until_acked() {
    let hub = hub(&[]);
    let alice = token("alice");
    let id = publish(
        &hub,
        json!({"to": {"users": ["alice", "bob"]}, "data": "sign the form", "require_ack": true}),
    )
    .await;
    // Each new connection (a phone, a laptop) receives it first.
    for _ in 0..2 {
        let mut c = connect(&hub, "/v1/events?topic=news", &alice).await;
        let e = c.next_event().await;
        assert_eq!(
            (e.id.as_deref(), e.data.as_str()),
            (Some(id.as_str()), "sign the form")
        );
    }
    // Bob's acknowledgement is his own.
    let answer = ack(&hub, &token("bob"), &[&id]).await;
    assert_eq!(answer["acked"], json!([id]));
    assert_eq!(user(&hub, "alice").await["inbox"]["pending_acks"], 1);

    let answer = ack(&hub, &alice, &[&id, "12345"]).await;
    assert_eq!(answer, json!({"acked": [id], "unknown": ["12345"]}));
    let again = ack(&hub, &alice, &[&id]).await;
    assert_eq!(again["unknown"], json!([id]));

    mark(&hub, "alice").await;
    let mut c = connect(&hub, "/v1/events?topic=news", &alice).await;
    // The marker waited too (alice was offline): nothing else did.
    assert_eq!(datas(&read_until(&mut c, "end").await), ["end"]);
    let stats = hub.stats().await;
    assert_eq!(stats["inbox"]["acked"], 2, "{stats}");
}

#[tokio::test]
async fn an_online_user_gets_it_live_and_again_on_a_new_connection() {
    let hub = hub(&[]);
    let alice = token("alice");
    let mut live = connect(&hub, "/v1/events?topic=chat/room", &alice).await;
    let id = publish(
        &hub,
        json!({"topic": "chat/room", "to": {"users": ["alice"]}, "data": "ping", "require_ack": true}),
    )
    .await;
    let e = live.next_event().await;
    assert_eq!(
        (e.id.as_deref(), e.data.as_str()),
        (Some(id.as_str()), "ping")
    );
    // A connection that would not receive it live (another topic) is not
    // given it; one that would, is.
    let mut other = connect(&hub, "/v1/events?topic=news", &alice).await;
    mark(&hub, "alice").await;
    assert_eq!(datas(&read_until(&mut other, "end").await), ["end"]);
    let mut second = connect(&hub, "/v1/events?topic=chat/**", &alice).await;
    assert_eq!(second.next_event().await.data, "ping");
    ack(&hub, &alice, &[&id]).await;
    let mut third = connect(&hub, "/v1/events?topic=chat/**", &alice).await;
    mark(&hub, "alice").await;
    assert_eq!(datas(&read_until(&mut third, "end").await), ["end"]);
}

#[tokio::test]
async fn direct_messages_wait_for_an_offline_user_and_are_delivered_once() {
    let hub = hub(&[]);
    let bob = token("bob");
    for i in 1..=3 {
        publish(
            &hub,
            json!({"to": {"users": ["bob"]}, "data": format!("m{i}")}),
        )
        .await;
    }
    assert_eq!(user(&hub, "bob").await["inbox"]["offline"], 3);
    let mut c = connect(&hub, "/v1/events?topic=news", &bob).await;
    let items = read_until_data(&mut c, "m3").await;
    assert_eq!(datas(&items), ["m1", "m2", "m3"]);
    // Delivered: they no longer wait.
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while user(&hub, "bob").await["inbox"]["offline"] != 0 {
        assert!(std::time::Instant::now() < deadline, "still waiting");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(c);
    // While bob is online, direct messages go to his stream, not his inbox.
    let mut online = connect(&hub, "/v1/events?topic=news", &bob).await;
    publish(&hub, json!({"to": {"users": ["bob"]}, "data": "live"})).await;
    assert_eq!(online.next_event().await.data, "live");
    assert_eq!(user(&hub, "bob").await["inbox"]["offline"], 0);
    drop(online);
    wait_offline(&hub, "bob").await;
    mark(&hub, "bob").await;
    let mut c = connect(&hub, "/v1/events?topic=news", &bob).await;
    assert_eq!(datas(&read_until(&mut c, "end").await), ["end"]);
}

async fn read_until_data(c: &mut SseClient, data: &str) -> Vec<Item> {
    let mut out = Vec::new();
    loop {
        match c.next().await.expect("stream ended") {
            Item::Event(e) if e.data == data => {
                out.push(Item::Event(e));
                return out;
            }
            item @ (Item::Event(_) | Item::Position(_)) => out.push(item),
            _ => {}
        }
    }
}

async fn wait_offline(hub: &HubProcess, name: &str) {
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while user(hub, name).await["online"] != false {
        assert!(std::time::Instant::now() < deadline, "{name} still online");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_full_inbox_drops_its_oldest_and_counts_them() {
    let hub = hub(&["inbox.max_per_user=3"]);
    for i in 1..=5 {
        publish(
            &hub,
            json!({"to": {"users": ["carol"]}, "data": format!("m{i}")}),
        )
        .await;
    }
    let info = user(&hub, "carol").await;
    assert_eq!(
        info["inbox"],
        json!({"pending_acks": 0, "offline": 3, "dropped": 2})
    );
    let mut c = connect(&hub, "/v1/events?topic=news", &token("carol")).await;
    assert_eq!(
        datas(&read_until_data(&mut c, "m5").await),
        ["m3", "m4", "m5"]
    );
    let metrics = hub.metrics().await;
    assert!(
        metrics.contains("herald_inbox_dropped_total 2"),
        "{metrics}"
    );
}

/// Waiting events lie anywhere in the id sequence: they come first, then
/// an `id:` line puts the client's Last-Event-ID back where the backlog
/// starts, and the backlog does not repeat them.
#[tokio::test]
async fn waiting_events_do_not_break_resume_by_last_event_id() {
    let hub = hub(&[]);
    let alice = token("alice");
    let before = publish(&hub, json!({"topic": "news", "data": "zero"})).await;
    let a = publish(&hub, json!({"topic": "news", "data": "a"})).await;
    let p = publish(
        &hub,
        json!({"to": {"users": ["alice"]}, "data": "p", "require_ack": true}),
    )
    .await;
    let b = publish(&hub, json!({"topic": "news", "data": "b"})).await;
    let mut c = connect(
        &hub,
        &format!("/v1/events?topic=news&lastEventId={before}"),
        &alice,
    )
    .await;
    let items = read_until_data(&mut c, "b").await;
    let expected = vec![
        Item::Event(SseEvent {
            id: Some(p.clone()),
            event: "message".into(),
            data: "p".into(),
        }),
        Item::Position(before.clone()),
        Item::Event(SseEvent {
            id: Some(a),
            event: "message".into(),
            data: "a".into(),
        }),
        Item::Event(SseEvent {
            id: Some(b.clone()),
            event: "message".into(),
            data: "b".into(),
        }),
    ];
    assert_eq!(items, expected);
    // A fresh connection stands at the head after what waited.
    let mut fresh = connect(&hub, "/v1/events?topic=news", &alice).await;
    assert_eq!(fresh.next_event().await.data, "p");
    assert_eq!(fresh.next().await, Some(Item::Position(b.clone())));

    // A long poll answers what waited first, and continues from the log.
    let (status, answer) = request(
        &hub,
        &format!("/v1/poll?topic=news&lastEventId={before}&timeout=0"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let polled: Vec<&str> = answer["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"].as_str().unwrap())
        .collect();
    assert_eq!(polled, ["p", "a", "b"]);
    assert_eq!(answer["last_event_id"], json!(b));
}

#[tokio::test]
async fn acks_need_a_user_and_well_formed_ids() {
    let hub = hub(&[]);
    let body = Some(json!({"ids": ["1"]}));
    let (status, answer) = request(&hub, "/v1/ack", None, body.clone()).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, answer) = request(&hub, "/v1/ack", Some(API_KEY), body).await;
    assert_eq!((status, answer["error"].as_str()), (403, Some("forbidden")));
    let alice = token("alice");
    for bad in [
        json!({"ids": ["x"]}),
        json!({"ids": [-1]}),
        json!({"ids": "1"}),
        json!({"id": ["1"]}),
        json!({"ids": (0..1001).map(|i| i.to_string()).collect::<Vec<_>>()}),
    ] {
        let (status, answer) = request(&hub, "/v1/ack", Some(&alice), Some(bad.clone())).await;
        assert_eq!(status, 400, "{bad}: {answer}");
        assert!(answer["message"].is_string());
    }
    // `require_ack` needs users to wait for.
    let (status, answer) = request(
        &hub,
        "/v1/publish",
        Some(API_KEY),
        Some(json!({"topic": "news", "require_ack": true})),
    )
    .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("invalid_field"))
    );
    // The hub still serves.
    assert_eq!(ack(&hub, &alice, &["1"]).await["unknown"], json!(["1"]));
}

#[tokio::test]
async fn what_waits_survives_kill_9() {
    let dir = std::env::temp_dir().join(format!("herald-inbox-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let start = || {
        let settings = auth_settings();
        let refs: Vec<&str> = settings.iter().map(String::as_str).collect();
        let mut hub = HubProcess::start_durable(&dir, &refs);
        hub.admin_key = Some(API_KEY.into());
        hub
    };
    let alice = token("alice");
    let bob = token("bob");
    let mut hub = start();
    let p1 = publish(
        &hub,
        json!({"to": {"users": ["alice"]}, "data": "p1", "require_ack": true}),
    )
    .await;
    let p2 = publish(
        &hub,
        json!({"to": {"users": ["alice"]}, "data": "p2", "require_ack": true}),
    )
    .await;
    ack(&hub, &alice, &[&p1]).await;
    // Written before the publish is answered, with nothing after it.
    publish(&hub, json!({"to": {"users": ["bob"]}, "data": "for bob"})).await;
    hub.kill9();

    let mut hub = start();
    let mut c = connect(&hub, "/v1/events?topic=news", &alice).await;
    let e = c.next_event().await;
    assert_eq!(
        (e.id.as_deref(), e.data.as_str()),
        (Some(p2.as_str()), "p2")
    );
    let mut b = connect(&hub, "/v1/events?topic=news", &bob).await;
    assert_eq!(b.next_event().await.data, "for bob");
    ack(&hub, &alice, &[&p2]).await;
    drop((c, b));
    hub.kill9();

    let hub = start();
    mark(&hub, "alice").await;
    let mut c = connect(&hub, "/v1/events?topic=news", &alice).await;
    assert_eq!(datas(&read_until(&mut c, "end").await), ["end"]);
    drop((c, hub));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_resuming_stream_skips_direct_messages_at_or_below_its_last_event_id() {
    let hub = hub(&[]);
    let seen = publish(&hub, json!({"to": {"users": ["dan"]}, "data": "seen"})).await;
    publish(&hub, json!({"to": {"users": ["dan"]}, "data": "newer"})).await;
    publish(
        &hub,
        json!({"to": {"users": ["dan"]}, "data": "sign", "require_ack": true}),
    )
    .await;
    // The client says it has `seen` (another stream of its own, or, in a
    // cluster, another node, delivered it): it gets what came after, and
    // what awaits an acknowledgement whatever its id.
    let auth = format!("Bearer {}", token("dan"));
    let headers = [("Authorization", auth.as_str()), ("Last-Event-ID", &seen)];
    let mut c = SseClient::connect_with(hub.addr, "/v1/events?topic=news", &headers, None).await;
    c.expect_connected().await;
    mark(&hub, "dan").await;
    let got = read_until(&mut c, "end").await;
    assert_eq!(datas(&got), ["newer", "sign", "end"], "{got:?}");
}
