//! Join and leave events on presence topics (`[presence] topics`).
//!
//! Each silent step is followed by a marker publish: the observer's next
//! event must be the marker, so an announcement that should not exist shows
//! up as a wrong event, not as a missing one.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{HubProcess, SseClient, SseEvent};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "presence-test-secret-long-enough-012345";
const API_KEY: &str = "presence-test-api-key";

fn token(user: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"sub": user, "herald.subscribe": ["**"], "exp": now + 3600});
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn hub() -> HubProcess {
    let mut hub = HubProcess::start(&[
        &format!("auth.jwt_secret=\"{SECRET}\""),
        &format!("auth.api_keys=[\"{API_KEY}\"]"),
        "presence.topics=[\"rooms/*\"]",
    ]);
    hub.admin_key = Some(API_KEY.into());
    hub
}

async fn stream(hub: &HubProcess, query: &str, bearer: &str) -> (SseClient, String) {
    let auth = format!("Bearer {bearer}");
    let path = format!("/v1/events?{query}");
    let mut c = SseClient::connect_with(hub.addr, &path, &[("Authorization", &auth)], None).await;
    assert_eq!(c.status, 200, "{path}");
    let id = c.expect_connected().await["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    (c, id)
}

async fn send(hub: &HubProcess, method: reqwest::Method, path: &str, body: Option<Value>) -> u16 {
    let mut req = reqwest::Client::new()
        .request(method, hub.url(path))
        .bearer_auth(API_KEY);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.unwrap().status().as_u16()
}

async fn marker(hub: &HubProcess, observer: &mut SseClient, topic: &str, text: &str) {
    let status = send(
        hub,
        reqwest::Method::POST,
        "/v1/publish",
        Some(json!({"topic": topic, "data": text})),
    )
    .await;
    assert_eq!(status, 200);
    let next = observer.next_event().await;
    assert_eq!(
        (next.event.as_str(), next.data.as_str()),
        ("message", text),
        "expected only the marker, got {next:?}"
    );
}

fn presence(event: &SseEvent) -> Value {
    assert_eq!(event.event, "herald.presence", "{event:?}");
    assert!(event.id.is_some(), "presence events are in the log");
    event.json()
}

#[tokio::test]
async fn first_join_and_last_leave_per_user_are_announced() {
    let hub = hub();
    // An API key has no user: the observer itself is never announced.
    let (mut observer, _) = stream(&hub, "topic=rooms/*&topic=lobby", API_KEY).await;

    let (bob, _) = stream(&hub, "topic=rooms/1", &token("bob")).await;
    let join = presence(&observer.next_event().await);
    assert_eq!(
        join,
        json!({"topic": "rooms/1", "user": "bob", "action": "join"})
    );

    let alice = token("alice");
    let (a1, _) = stream(&hub, "topic=rooms/1", &alice).await;
    assert_eq!(
        presence(&observer.next_event().await),
        json!({"topic": "rooms/1", "user": "alice", "action": "join"})
    );
    // A second stream of the same user, a wildcard subscription and a topic
    // not configured for presence announce nothing.
    let (a2, _) = stream(&hub, "topic=rooms/1&topic=rooms/**&topic=lobby", &alice).await;
    marker(&hub, &mut observer, "lobby", "after second stream").await;

    drop(a1);
    hub.wait_for_stats("alice's first stream to close", |s| s["connections"] == 3)
        .await;
    marker(&hub, &mut observer, "lobby", "after first close").await;

    drop(a2);
    assert_eq!(
        presence(&observer.next_event().await),
        json!({"topic": "rooms/1", "user": "alice", "action": "leave"})
    );

    // A long poll comes and goes with every answer: never announced.
    let poll = reqwest::Client::new()
        .get(hub.url("/v1/poll?topic=rooms/1&timeout=0"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(poll.status(), 200);
    marker(&hub, &mut observer, "lobby", "after poll").await;

    drop(bob);
    assert_eq!(
        presence(&observer.next_event().await),
        json!({"topic": "rooms/1", "user": "bob", "action": "leave"})
    );
}

#[tokio::test]
async fn changing_subscriptions_and_closing_by_admin_announce() {
    let hub = hub();
    let (mut observer, _) = stream(&hub, "topic=rooms/*", API_KEY).await;
    let (_carol, id) = stream(&hub, "topic=rooms/1", &token("carol")).await;
    assert_eq!(presence(&observer.next_event().await)["action"], "join");

    let path = format!("/v1/connections/{id}/subscriptions");
    let change = json!({"add": ["rooms/2"], "remove": ["rooms/1"]});
    let status = send(&hub, reqwest::Method::POST, &path, Some(change)).await;
    assert_eq!(status, 200);
    assert_eq!(
        presence(&observer.next_event().await),
        json!({"topic": "rooms/1", "user": "carol", "action": "leave"})
    );
    assert_eq!(
        presence(&observer.next_event().await),
        json!({"topic": "rooms/2", "user": "carol", "action": "join"})
    );

    let status = send(
        &hub,
        reqwest::Method::DELETE,
        &format!("/v1/connections/{id}"),
        None,
    )
    .await;
    assert!((200..300).contains(&status), "{status}");
    assert_eq!(
        presence(&observer.next_event().await),
        json!({"topic": "rooms/2", "user": "carol", "action": "leave"})
    );
}

#[tokio::test]
async fn history_replays_presence_events() {
    let hub = hub();
    let (dave, _) = stream(&hub, "topic=rooms/9", &token("dave")).await;
    drop(dave);
    hub.wait_for_stats("dave's stream to close", |s| s["connections"] == 0)
        .await;
    // Both events are in the log: a late reader replays them from the start.
    let (mut late, _) = stream(&hub, "topic=rooms/9&history=10", API_KEY).await;
    let actions: Vec<Value> = [late.next_event().await, late.next_event().await]
        .iter()
        .map(|e| presence(e)["action"].clone())
        .collect();
    assert_eq!(actions, [json!("join"), json!("leave")]);
}

/// L6 of the security review: a user who joins and leaves over and over
/// does not push a topic's events out of its history. Announcements are
/// counted apart (`history.max_events_per_topic` of them), and those that
/// age out of that count do not reset a resuming client.
#[tokio::test]
async fn churn_does_not_flush_a_topics_history() {
    let mut hub = HubProcess::start(&[
        &format!("auth.jwt_secret=\"{SECRET}\""),
        &format!("auth.api_keys=[\"{API_KEY}\"]"),
        "presence.topics=[\"rooms/*\"]",
        "history.max_events_per_topic=5",
    ]);
    hub.admin_key = Some(API_KEY.into());
    let mut ids = Vec::new();
    for i in 0..5 {
        let answer: Value = reqwest::Client::new()
            .post(hub.url("/v1/publish"))
            .bearer_auth(API_KEY)
            .json(&json!({"topic": "rooms/1", "data": format!("m{i}")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(answer["id"].as_str().unwrap().to_owned());
    }
    let mallory = token("mallory");
    for round in 1..=20u64 {
        let (s, _) = stream(&hub, "topic=rooms/1", &mallory).await;
        // A join and its leave that wait together cancel out: let the
        // join be announced first.
        hub.wait_for_stats("the join announced", |s| {
            s["presence_updates"].as_u64() >= Some(2 * round - 1)
        })
        .await;
        drop(s);
        hub.wait_for_stats("the join and the leave announced", |s| {
            s["connections"] == 0 && s["presence_updates"].as_u64() >= Some(2 * round)
        })
        .await;
    }
    // The five messages are all still there, with the last five
    // announcements after them.
    let (mut late, _) = stream(&hub, "topic=rooms/1&history=100", API_KEY).await;
    let mut messages = Vec::new();
    let mut announcements = 0;
    for _ in 0..10 {
        let e = late.next_event().await;
        match e.event.as_str() {
            "message" => messages.push(e.data),
            "herald.presence" => announcements += 1,
            other => panic!("unexpected {other}: {e:?}"),
        }
    }
    assert_eq!(messages, ["m0", "m1", "m2", "m3", "m4"]);
    assert_eq!(announcements, 5);
    // A client that read up to the first message resumes without a reset.
    let auth = format!("Bearer {API_KEY}");
    let mut resumed = SseClient::connect_with(
        hub.addr,
        "/v1/events?topic=rooms/1",
        &[("Authorization", &auth), ("Last-Event-ID", &ids[0])],
        None,
    )
    .await;
    resumed.expect_connected().await;
    let first = resumed.next_event().await;
    assert_eq!(
        (first.event.as_str(), first.data.as_str()),
        ("message", "m1"),
        "{first:?}"
    );
}
