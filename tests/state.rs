//! Retained state for late joiners (SPEC §6) end to end.

mod common;

use common::{HubProcess, SseClient};
use serde_json::{json, Value};

async fn send(
    hub: &HubProcess,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
    if_match: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut req = reqwest::Client::new().request(method, hub.url(path));
    if let Some(b) = body {
        req = req.json(&b);
    }
    if let Some(v) = if_match {
        req = req.header("If-Match", v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let etag = resp
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, etag, resp.json().await.unwrap_or(Value::Null))
}

use reqwest::Method;

#[tokio::test]
async fn versions_etags_merge_patches_and_their_events() {
    let hub = HubProcess::start(&[]);
    let mut sub = SseClient::connect(hub.addr, "/v1/events?topic=jobs/*").await;
    sub.expect_connected().await;
    let (status, etag, body) = send(
        &hub,
        Method::PUT,
        "/v1/state/jobs/1/status",
        Some(json!({"pct": 0, "stage": "queued"})),
        None,
    )
    .await;
    assert_eq!(
        (status, etag.as_deref(), body["version"].as_u64()),
        (200, Some("\"1\""), Some(1))
    );
    let (status, _, body) = send(
        &hub,
        Method::PATCH,
        "/v1/state/jobs/1/status",
        Some(json!({"pct": 40, "stage": null})),
        Some("\"1\""),
    )
    .await;
    assert_eq!((status, body["version"].as_u64()), (200, Some(2)));
    // A stale If-Match changes nothing.
    let (status, _, body) = send(
        &hub,
        Method::PUT,
        "/v1/state/jobs/1/status",
        Some(json!("x")),
        Some("\"1\""),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (412, Some("version_mismatch"))
    );
    let (status, _, _) = send(
        &hub,
        Method::PUT,
        "/v1/state/jobs/1/other",
        Some(json!(1)),
        Some("*"),
    )
    .await;
    assert_eq!(status, 412, "* needs an existing value");
    let (status, etag, body) = send(&hub, Method::GET, "/v1/state/jobs/1/status", None, None).await;
    assert_eq!((status, etag.as_deref()), (200, Some("\"2\"")));
    assert_eq!(
        body,
        json!({"key": "status", "version": 2, "value": {"pct": 40}})
    );
    let (status, _, body) = send(
        &hub,
        Method::DELETE,
        "/v1/state/jobs/1/status",
        None,
        Some("\"2\""),
    )
    .await;
    assert_eq!((status, body["version"].as_u64()), (200, Some(3)));
    let (status, _, _) = send(&hub, Method::DELETE, "/v1/state/jobs/1/status", None, None).await;
    assert_eq!(status, 404);
    let (_, _, body) = send(&hub, Method::GET, "/v1/state/jobs/1", None, None).await;
    assert_eq!(body, json!({"topic": "jobs/1", "keys": {}}));
    for (path, code) in [
        ("/v1/state/jobs/1/bad%20key", "invalid_key"),
        ("/v1/state/bad%20topic/k", "invalid_topic"),
    ] {
        let (status, _, body) = send(&hub, Method::PUT, path, Some(json!(1)), None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some(code)),
            "{path}"
        );
    }
    // Subscribers got each change as a `state` event, in order.
    let mut got = Vec::new();
    for _ in 0..3 {
        let e = sub.expect_event("state").await;
        assert!(e.id.is_some(), "live state events are in the log");
        got.push(e.json());
    }
    assert_eq!(
        got[0],
        json!({"topic": "jobs/1", "key": "status", "version": 1, "value": {"pct": 0, "stage": "queued"}})
    );
    assert_eq!(
        got[1],
        json!({"topic": "jobs/1", "key": "status", "version": 2, "patch": {"pct": 40, "stage": null}})
    );
    assert_eq!(
        got[2],
        json!({"topic": "jobs/1", "key": "status", "version": 3, "deleted": true})
    );
}

#[tokio::test]
async fn a_late_joiner_gets_the_state_first_then_live_changes() {
    let hub = HubProcess::start(&[]);
    send(
        &hub,
        Method::PUT,
        "/v1/state/jobs/1/status",
        Some(json!("running")),
        None,
    )
    .await;
    send(
        &hub,
        Method::PUT,
        "/v1/state/jobs/2/status",
        Some(json!("done")),
        None,
    )
    .await;
    send(
        &hub,
        Method::PUT,
        "/v1/state/other/x/y",
        Some(json!("not mine")),
        None,
    )
    .await;
    let mut sub = SseClient::connect(hub.addr, "/v1/events?topic=jobs/*").await;
    sub.expect_connected().await;
    let a = sub.expect_event("state").await;
    let b = sub.expect_event("state").await;
    assert_eq!(
        (a.id.as_deref(), b.id.as_deref()),
        (None, None),
        "snapshot events do not move Last-Event-ID"
    );
    let mut snapshot = [a.json(), b.json()];
    snapshot.sort_by_key(|v| v["topic"].as_str().unwrap().to_owned());
    assert_eq!(
        snapshot[0],
        json!({"topic": "jobs/1", "key": "status", "version": 1, "value": "running"})
    );
    assert_eq!(snapshot[1]["value"], "done");
    send(
        &hub,
        Method::PUT,
        "/v1/state/jobs/1/status",
        Some(json!("done")),
        None,
    )
    .await;
    let live = sub.expect_event("state").await.json();
    assert_eq!(
        (live["version"].as_u64(), live["value"].as_str()),
        (Some(2), Some("done"))
    );
    // A stream that filters event types without `state` gets no snapshot.
    let mut filtered = SseClient::connect(hub.addr, "/v1/events?topic=jobs/*&event=other").await;
    filtered.expect_connected().await;
    hub.publish_ok(json!({"topic": "jobs/9", "event": "other", "data": "first"}))
        .await;
    assert_eq!(filtered.next_event().await.data, "first");
}

/// Joiners arrive while a writer keeps changing one value: each sees a
/// value from its snapshot, then every later version live, none skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_gap_between_snapshot_and_live_changes() {
    let hub = HubProcess::start(&[]);
    send(&hub, Method::PUT, "/v1/state/race/k", Some(json!(0)), None).await;
    let writer = {
        let url = hub.url("/v1/state/race/k");
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for n in 1..=150 {
                let resp = http.put(&url).json(&json!(n)).send().await.unwrap();
                assert_eq!(resp.status(), 200);
            }
        })
    };
    let mut joiners = Vec::new();
    for _ in 0..12 {
        let mut sub = SseClient::connect(hub.addr, "/v1/events?topic=race").await;
        sub.expect_connected().await;
        joiners.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            while versions.last() != Some(&151) {
                versions.push(
                    sub.expect_event("state").await.json()["version"]
                        .as_u64()
                        .unwrap(),
                );
            }
            versions
        }));
    }
    writer.await.unwrap();
    for joiner in joiners {
        let versions = joiner.await.unwrap();
        for w in versions.windows(2) {
            assert!(
                w[1] == w[0] || w[1] == w[0] + 1,
                "a gap or reordering: {versions:?}"
            );
        }
    }
}

#[tokio::test]
async fn state_survives_kill_9() {
    let dir = common::TempDir::new("state");
    let mut hub = HubProcess::start_durable(&dir, &[]);
    send(
        &hub,
        Method::PUT,
        "/v1/state/boards/7/title",
        Some(json!("Q3 plan")),
        None,
    )
    .await;
    send(
        &hub,
        Method::PATCH,
        "/v1/state/boards/7/title",
        Some(json!({"not": "an object before"})),
        None,
    )
    .await;
    hub.kill9();
    let hub = HubProcess::start_durable(&dir, &[]);
    let (status, etag, body) =
        send(&hub, Method::GET, "/v1/state/boards/7/title", None, None).await;
    assert_eq!((status, etag.as_deref()), (200, Some("\"2\"")));
    assert_eq!(body["value"], json!({"not": "an object before"}));
    let mut sub = SseClient::connect(hub.addr, "/v1/events?topic=boards/7").await;
    sub.expect_connected().await;
    assert_eq!(sub.expect_event("state").await.json()["version"], 2);
    let (_, _, body) = send(
        &hub,
        Method::PUT,
        "/v1/state/boards/7/title",
        Some(json!("Q4")),
        Some("\"2\""),
    )
    .await;
    assert_eq!(body["version"], 3, "versions continue");
}

#[tokio::test]
async fn state_needs_the_rights_of_publish_and_subscribe() {
    let secret = "state-test-secret-long-enough-0123456789";
    let hub = HubProcess::start(&[
        &format!("auth.jwt_secret=\"{secret}\""),
        "auth.anonymous_subscribe=[\"public/**\"]",
    ]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "u", "exp": now + 600, "herald.publish": ["public/**"], "herald.subscribe": ["mine/**"]}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let call = |method: Method, path: &'static str, bearer: Option<String>| {
        let url = hub.url(path);
        async move {
            let mut req = reqwest::Client::new().request(method, url).json(&json!(1));
            if let Some(t) = bearer {
                req = req.bearer_auth(t);
            }
            req.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(
        call(Method::PUT, "/v1/state/public/a/k", Some(token.clone())).await,
        200
    );
    assert_eq!(
        call(Method::PUT, "/v1/state/mine/a/k", Some(token.clone())).await,
        403,
        "reading is not writing"
    );
    assert_eq!(call(Method::PUT, "/v1/state/public/a/k", None).await, 401);
    assert_eq!(
        call(Method::GET, "/v1/state/public/a/k", None).await,
        200,
        "public topics read anonymously"
    );
    assert_eq!(call(Method::GET, "/v1/state/mine/a", None).await, 401);
    assert_eq!(
        call(Method::GET, "/v1/state/mine/a", Some(token)).await,
        200
    );
}
