//! Admin and presence API end to end (SPEC §8).

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{HubProcess, Item, SseClient};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "admin-test-secret-long-enough-0123456789";
const API_KEY: &str = "admin-test-api-key";

fn token(claims: Value) -> String {
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

fn hub() -> HubProcess {
    HubProcess::start(&[
        &format!("auth.jwt_secret=\"{SECRET}\""),
        &format!("auth.api_keys=[\"{API_KEY}\"]"),
        "auth.anonymous_subscribe=[\"public/**\"]",
    ])
}

async fn call(
    hub: &HubProcess,
    method: reqwest::Method,
    path: &str,
    bearer: Option<&str>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, hub.url(path));
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(hub: &HubProcess, path: &str) -> Value {
    let (status, body) = call(hub, reqwest::Method::GET, path, Some(API_KEY)).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

async fn stream(hub: &HubProcess, path: &str, bearer: Option<&str>) -> (SseClient, String) {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let mut c = SseClient::connect_with(hub.addr, path, &headers, None).await;
    let id = c.expect_connected().await["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    (c, id)
}

#[tokio::test]
async fn presence_users_and_stats_per_user() {
    let hub = hub();
    let alice = token(json!({"sub": "alice", "herald.subscribe": ["chat/**"]}));
    let bob = token(json!({"sub": "bob", "herald.subscribe": ["chat/**"]}));
    let _a1 = stream(&hub, "/v1/events?topic=chat/lobby", Some(&alice)).await;
    let _a2 = stream(
        &hub,
        "/v1/events?topic=chat/lobby&topic=chat/dev",
        Some(&alice),
    )
    .await;
    let _b = stream(&hub, "/v1/events?topic=chat/*", Some(&bob)).await;
    let _anon = stream(&hub, "/v1/events?topic=public/news", None).await;

    let lobby = get(&hub, "/v1/presence/chat/lobby").await;
    assert_eq!(
        lobby,
        json!({"connections": 3, "users": {"alice": 2, "bob": 1}, "anonymous": 0})
    );
    let dev = get(&hub, "/v1/presence/chat/dev").await;
    assert_eq!(dev["users"], json!({"alice": 1, "bob": 1}));
    let all_chat = get(&hub, "/v1/presence/chat/**").await;
    assert_eq!(all_chat["connections"], 3);
    let deep = get(&hub, "/v1/presence/chat/a/b").await;
    assert_eq!(deep["connections"], 0, "chat/* is one segment");
    let public = get(&hub, "/v1/presence/public/*").await;
    assert_eq!(
        public,
        json!({"connections": 1, "users": {}, "anonymous": 1})
    );
    let (status, body) = call(
        &hub,
        reqwest::Method::GET,
        "/v1/presence/bad%20topic",
        Some(API_KEY),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_topic"))
    );

    let a = get(&hub, "/v1/users/alice").await;
    assert_eq!(
        (a["online"].as_bool(), a["connections"].as_u64()),
        (Some(true), Some(2))
    );
    assert_eq!(a["connection_ids"].as_array().unwrap().len(), 2);
    let nobody = get(&hub, "/v1/users/zed").await;
    assert_eq!(
        (nobody["online"].as_bool(), nobody["connections"].as_u64()),
        (Some(false), Some(0))
    );
    assert_eq!(get(&hub, "/v1/stats?user=bob").await["connections"], 1);
    assert_eq!(get(&hub, "/v1/stats").await["connections"], 4);
}

#[tokio::test]
async fn closing_connections_sends_them_back_to_reconnect() {
    let hub = hub();
    let alice = token(json!({"sub": "alice", "herald.subscribe": ["t"]}));
    let (mut one, one_id) = stream(&hub, "/v1/events?topic=t", Some(&alice)).await;
    let (mut two, _) = stream(&hub, "/v1/events?topic=t", Some(&alice)).await;
    let (mut three, _) = stream(&hub, "/v1/events?topic=t", Some(&alice)).await;
    let (mut other, _) = stream(&hub, "/v1/events?topic=public/x", None).await;

    let (status, body) = call(
        &hub,
        reqwest::Method::DELETE,
        &format!("/v1/connections/{one_id}"),
        Some(API_KEY),
    )
    .await;
    assert_eq!((status, body["closed"].as_u64()), (200, Some(1)));
    let items = one.read_to_end().await;
    assert!(
        matches!(items.last(), Some(Item::Retry(_))),
        "a closed stream is told to come back: {items:?}"
    );
    assert_eq!(get(&hub, "/v1/users/alice").await["connections"], 2);
    let (status, body) = call(
        &hub,
        reqwest::Method::DELETE,
        &format!("/v1/connections/{one_id}"),
        Some(API_KEY),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));

    let (status, body) = call(
        &hub,
        reqwest::Method::DELETE,
        "/v1/users/alice/connections",
        Some(API_KEY),
    )
    .await;
    assert_eq!((status, body["closed"].as_u64()), (200, Some(2)));
    for c in [&mut two, &mut three] {
        assert!(matches!(c.read_to_end().await.last(), Some(Item::Retry(_))));
    }
    assert_eq!(get(&hub, "/v1/users/alice").await["online"], false);
    // Others are untouched.
    let (status, _) = call(
        &hub,
        reqwest::Method::POST,
        "/v1/publish?topic=public/x",
        Some(API_KEY),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(other.next_event().await.event, "message");
}

#[tokio::test]
async fn admin_calls_need_admin_rights() {
    let hub = hub();
    let user = token(json!({"sub": "u", "herald.subscribe": ["t"]}));
    let admin = token(json!({"sub": "ops", "herald.admin": true}));
    for (method, path) in [
        (reqwest::Method::GET, "/v1/presence/t"),
        (reqwest::Method::GET, "/v1/users/u"),
        (reqwest::Method::GET, "/v1/stats?user=u"),
        (reqwest::Method::DELETE, "/v1/connections/c1"),
        (reqwest::Method::DELETE, "/v1/users/u/connections"),
    ] {
        let (status, body) = call(&hub, method.clone(), path, None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("unauthorized")),
            "{path}"
        );
        let (status, body) = call(&hub, method.clone(), path, Some(&user)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some("forbidden")),
            "{path}"
        );
        let (status, _) = call(&hub, method, path, Some(&admin)).await;
        assert!(status == 200 || status == 404, "{path}: {status}");
    }
}

async fn resubscribe(
    hub: &HubProcess,
    id: &str,
    change: Value,
    bearer: Option<&str>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(hub.url(&format!("/v1/connections/{id}/subscriptions")))
        .json(&change);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn subscriptions_of_an_open_stream_change_within_its_rights() {
    let mut hub = HubProcess::start(&[
        &format!("auth.jwt_secret=\"{SECRET}\""),
        &format!("auth.api_keys=[\"{API_KEY}\"]"),
        "limits.max_topics_per_connection=3",
    ]);
    hub.admin_key = Some(API_KEY.into());
    let alice = token(json!({"sub": "alice", "herald.subscribe": ["chat/*"]}));
    let (mut sub, id) = stream(&hub, "/v1/events?topic=chat/a", Some(&alice)).await;
    let publish = |topic: &'static str, data: &'static str| {
        let url = hub.url("/v1/publish");
        async move {
            let resp = reqwest::Client::new()
                .post(url)
                .bearer_auth(API_KEY)
                .json(&json!({"topic": topic, "data": data}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        }
    };
    let (status, body) = resubscribe(
        &hub,
        &id,
        json!({"add": ["chat/b"], "remove": ["chat/a"]}),
        Some(API_KEY),
    )
    .await;
    assert_eq!((status, body["topics"].clone()), (200, json!(["chat/b"])));
    publish("chat/a", "not any more").await;
    publish("chat/b", "now this").await;
    assert_eq!(sub.next_event().await.data, "now this");
    assert_eq!(
        get(&hub, "/v1/presence/chat/b").await["users"],
        json!({"alice": 1})
    );
    assert_eq!(get(&hub, "/v1/presence/chat/a").await["connections"], 0);
    // Beyond the stream's own token: refused, nothing changes.
    let (status, body) = resubscribe(&hub, &id, json!({"add": ["secret/x"]}), Some(API_KEY)).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    let (status, body) = resubscribe(&hub, &id, json!({"add": ["chat/**"]}), Some(API_KEY)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("forbidden")),
        "chat/* does not cover chat/**"
    );
    let (status, body) = resubscribe(
        &hub,
        &id,
        json!({"add": ["chat/c", "chat/d", "chat/e"]}),
        Some(API_KEY),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_topic")),
        "over the limit of 3: {body}"
    );
    let (status, _) = resubscribe(&hub, &id, json!({"add": ["bad topic"]}), Some(API_KEY)).await;
    assert_eq!(status, 400);
    let (status, _) = resubscribe(&hub, &id, json!({"ad": ["chat/c"]}), Some(API_KEY)).await;
    assert_eq!(status, 400, "unknown fields are refused");
    let (status, body) =
        resubscribe(&hub, "c0-nope", json!({"add": ["chat/c"]}), Some(API_KEY)).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, _) = resubscribe(&hub, &id, json!({"add": ["chat/c"]}), Some(&alice)).await;
    assert_eq!(status, 403, "admin rights needed");
    // Still exactly chat/b after the refusals.
    publish("chat/c", "no").await;
    publish("chat/b", "yes").await;
    assert_eq!(sub.next_event().await.data, "yes");
    // Closing it removes what was added from the index too.
    drop(sub);
    hub.wait_for_stats("the stream to be gone", |s| {
        s["connections"] == 0 && s["subscriptions"] == 0
    })
    .await;
}
