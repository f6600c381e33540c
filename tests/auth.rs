//! Auth and isolation end to end (SPEC §4 targeting and filters, §5).

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{HubProcess, Item, SseClient};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "test-secret-that-is-long-enough-0123456789";
const API_KEY: &str = "server-api-key-abcdef";

fn keys_dir() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys").to_owned()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The private key fixture for an algorithm, and its `kid`.
fn signing_key(alg: Algorithm) -> (EncodingKey, Option<&'static str>) {
    let pem = |f: &str| std::fs::read(format!("{}/{f}", keys_dir())).unwrap();
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            (EncodingKey::from_secret(SECRET.as_bytes()), None)
        }
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => (
            EncodingKey::from_rsa_pem(&pem("rsa.pem")).unwrap(),
            Some("rsa"),
        ),
        Algorithm::ES256 => (
            EncodingKey::from_ec_pem(&pem("ec256.pem")).unwrap(),
            Some("ec256"),
        ),
        Algorithm::ES384 => (
            EncodingKey::from_ec_pem(&pem("ec384.pem")).unwrap(),
            Some("ec384"),
        ),
        Algorithm::EdDSA => (
            EncodingKey::from_ed_pem(&pem("ed25519.pem")).unwrap(),
            Some("ed"),
        ),
        other => panic!("no fixture for {other:?}"),
    }
}

fn mint_with(alg: Algorithm, claims: Value) -> String {
    let (key, kid) = signing_key(alg);
    let mut header = Header::new(alg);
    header.kid = kid.map(Into::into);
    encode(&header, &claims, &key).unwrap()
}

/// An HS256 token valid for an hour with these claims.
fn mint(claims: Value) -> String {
    let mut claims = claims;
    if claims.get("exp").is_none() {
        claims["exp"] = json!(now() + 3600);
    }
    mint_with(Algorithm::HS256, claims)
}

/// A JWKS file with the public halves of every asymmetric fixture
/// (removed when the guard drops).
fn jwks_file() -> common::TempDir {
    let mut keys = Vec::new();
    for (alg, kid) in [
        (Algorithm::RS256, "rsa"),
        (Algorithm::ES256, "ec256"),
        (Algorithm::ES384, "ec384"),
        (Algorithm::EdDSA, "ed"),
    ] {
        let (key, _) = signing_key(alg);
        let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
        jwk.common.key_id = Some(kid.into());
        keys.push(jwk);
    }
    let file = common::TempDir::new("jwks");
    std::fs::write(&*file, serde_json::to_string(&JwkSet { keys }).unwrap()).unwrap();
    file
}

/// A hub with a secret, an API key and public `public/**` topics.
fn secured(extra: &[&str]) -> HubProcess {
    let secret = format!("auth.jwt_secret=\"{SECRET}\"");
    let api_key = format!("auth.api_keys=[\"{API_KEY}\"]");
    let mut settings = vec![
        secret.as_str(),
        api_key.as_str(),
        "auth.anonymous_subscribe=[\"public/**\"]",
        "auth.leeway_secs=0",
    ];
    settings.extend_from_slice(extra);
    HubProcess::start(&settings)
}

async fn subscribe(hub: &HubProcess, path: &str, token: Option<&str>) -> SseClient {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    SseClient::connect_with(hub.addr, path, &headers, None).await
}

async fn publish(hub: &HubProcess, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(hub.url("/v1/publish"))
        .json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let www = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if status == 401 {
        assert_eq!(
            www.as_deref(),
            Some("Bearer"),
            "401 carries WWW-Authenticate"
        );
    }
    (status, body)
}

/// Reads the JSON refusal of a stream that did not start.
async fn refused(hub: &HubProcess, path: &str, token: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(hub.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    if status == 401 {
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    }
    let body: Value = resp.json().await.unwrap();
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    (status, body["error"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn every_algorithm_family_verifies() {
    let file = jwks_file();
    let jwks = format!("auth.jwks=\"{}\"", file.display());
    let hub = secured(&[&jwks]);
    for alg in [
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ] {
        let token = mint_with(
            alg,
            json!({"sub": "u", "exp": now() + 60, "herald.subscribe": ["private/x"]}),
        );
        let mut sub = subscribe(&hub, "/v1/events?topic=private/x", Some(&token)).await;
        assert_eq!(sub.status, 200, "{alg:?}");
        sub.expect_connected().await;
    }
}

#[tokio::test]
async fn a_pem_public_key_verifies_and_other_families_do_not() {
    let pem = format!("auth.jwt_public_key_file=\"{}/ec256.pub.pem\"", keys_dir());
    let hub = HubProcess::start(&[&pem, "auth.leeway_secs=0"]);
    let claims = json!({"sub": "u", "exp": now() + 60, "herald.subscribe": ["t"]});
    let good = mint_with(Algorithm::ES256, claims.clone());
    subscribe(&hub, "/v1/events?topic=t", Some(&good))
        .await
        .expect_connected()
        .await;
    for alg in [Algorithm::RS256, Algorithm::HS256, Algorithm::EdDSA] {
        let token = mint_with(alg, claims.clone());
        assert_eq!(
            refused(&hub, "/v1/events?topic=t", Some(&token)).await,
            (401, "invalid_token".into()),
            "{alg:?}"
        );
    }
}

#[tokio::test]
async fn every_token_source_works() {
    let hub = secured(&[]);
    let token = mint(json!({"sub": "u", "herald.subscribe": ["private"]}));
    let by_header = subscribe(&hub, "/v1/events?topic=private", Some(&token)).await;
    assert_eq!(by_header.status, 200);
    let cookie = format!("other=1; herald_token={token}");
    let mut by_cookie = SseClient::connect_with(
        hub.addr,
        "/v1/events?topic=private",
        &[("Cookie", &cookie)],
        None,
    )
    .await;
    by_cookie.expect_connected().await;
    let mut by_query = SseClient::connect(
        hub.addr,
        &format!("/v1/events?topic=private&access_token={token}"),
    )
    .await;
    by_query.expect_connected().await;
    // A renamed cookie is honoured.
    let hub = secured(&["auth.cookie_name=\"sess\""]);
    let cookie = format!("sess={token}");
    let mut renamed = SseClient::connect_with(
        hub.addr,
        "/v1/events?topic=private",
        &[("Cookie", &cookie)],
        None,
    )
    .await;
    renamed.expect_connected().await;
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401() {
    let hub = secured(&[
        "auth.issuer=\"https://issuer.example\"",
        "auth.audience=\"herald\"",
    ]);
    let base = json!({"sub": "u", "iss": "https://issuer.example", "aud": "herald", "herald.subscribe": ["t"]});
    let with = |patch: Value| {
        let mut c = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    assert_eq!(
        refused(&hub, "/v1/events?topic=t", None).await,
        (401, "unauthorized".into())
    );
    subscribe(&hub, "/v1/events?topic=t", Some(&mint(base.clone())))
        .await
        .expect_connected()
        .await;
    let rsa_public = std::fs::read(format!("{}/rsa.pub.pem", keys_dir())).unwrap();
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &with(json!({"exp": now() + 60})),
        &EncodingKey::from_secret(&rsa_public),
    )
    .unwrap();
    let wrong_key = encode(
        &Header::new(Algorithm::HS256),
        &with(json!({"exp": now() + 60})),
        &EncodingKey::from_secret(b"another-secret-of-sufficient-length!!"),
    )
    .unwrap();
    // {"alg":"none"} with the claims and an empty signature.
    let b64 = |v: Value| {
        use std::fmt::Write;
        let bytes = serde_json::to_vec(&v).unwrap();
        let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |acc, b| (acc << 8) | *b as u32) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                let _ = out.write_char(table[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    };
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(with(json!({"exp": now() + 60})))
    );
    let cases = [
        (
            "expired",
            mint(with(json!({"exp": now() - 5}))),
            "token_expired",
        ),
        (
            "not yet valid",
            mint(with(json!({"nbf": now() + 600}))),
            "invalid_token",
        ),
        (
            "wrong issuer",
            mint(with(json!({"iss": "https://evil.example"}))),
            "invalid_token",
        ),
        (
            "no issuer",
            mint(json!({"sub": "u", "aud": "herald"})),
            "invalid_token",
        ),
        (
            "wrong audience",
            mint(with(json!({"aud": "other"}))),
            "invalid_token",
        ),
        ("wrong key", wrong_key, "invalid_token"),
        ("alg none", none, "invalid_token"),
        (
            "HS256 signed with the RSA public key",
            confused,
            "invalid_token",
        ),
        ("garbage", "not.a.token".to_owned(), "invalid_token"),
    ];
    for (what, token, code) in cases {
        assert_eq!(
            refused(&hub, "/v1/events?topic=t", Some(&token)).await,
            (401, code.into()),
            "{what}"
        );
        let (status, body) = publish(&hub, Some(&token), json!({"topic": "t"})).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some(code)),
            "{what} on publish"
        );
    }
}

#[tokio::test]
async fn rights_401_and_403_exactly() {
    let hub = secured(&[]);
    let alice = mint(
        json!({"sub": "alice", "herald.subscribe": ["users/{sub}/**", "chat/*"], "herald.publish": ["chat/*"]}),
    );
    let admin = mint(json!({"sub": "ops", "herald.admin": true, "herald.publish": ["**"]}));
    // Subscribe.
    subscribe(&hub, "/v1/events?topic=users/alice/inbox", Some(&alice))
        .await
        .expect_connected()
        .await;
    subscribe(&hub, "/v1/events?topic=chat/*", Some(&alice))
        .await
        .expect_connected()
        .await;
    subscribe(&hub, "/v1/events?topic=public/news", None)
        .await
        .expect_connected()
        .await;
    for (path, token, want) in [
        (
            "/v1/events?topic=users/bob/inbox",
            Some(alice.as_str()),
            (403, "forbidden"),
        ),
        (
            "/v1/events?topic=users/*/inbox",
            Some(&alice),
            (403, "forbidden"),
        ),
        ("/v1/events?topic=chat/**", Some(&alice), (403, "forbidden")),
        (
            "/v1/events?topic=users/alice/inbox",
            None,
            (401, "unauthorized"),
        ),
        (
            "/v1/events?topic=public/news&topic=private",
            None,
            (401, "unauthorized"),
        ),
    ] {
        let (status, code) = refused(&hub, path, token).await;
        assert_eq!((status, code.as_str()), want, "{path}");
    }
    // Publish.
    let cases = [
        (
            Some(alice.as_str()),
            json!({"topic": "chat/lobby"}),
            200,
            None,
        ),
        (
            Some(&alice),
            json!({"topic": "chat/lobby/deep"}),
            403,
            Some("forbidden"),
        ),
        (
            Some(&alice),
            json!({"topics": ["chat/a", "users/bob/inbox"]}),
            403,
            Some("forbidden"),
        ),
        (
            Some(&alice),
            json!({"broadcast": true}),
            403,
            Some("forbidden"),
        ),
        (
            Some(&alice),
            json!({"to": {"users": ["bob"]}}),
            403,
            Some("forbidden"),
        ),
        (
            None,
            json!({"topic": "public/news"}),
            401,
            Some("unauthorized"),
        ),
        (Some(&admin), json!({"broadcast": true}), 200, None),
        (
            Some(API_KEY),
            json!({"to": {"users": ["bob"]}, "data": "dm"}),
            200,
            None,
        ),
        (
            Some(API_KEY),
            json!([{"topic": "x"}, {"topic": "y/z"}]),
            200,
            None,
        ),
    ];
    for (token, body, status, code) in cases {
        let (got, answer) = publish(&hub, token, body.clone()).await;
        assert_eq!(got, status, "{body} → {answer}");
        assert_eq!(answer["error"].as_str(), code, "{body}");
    }
    // Admin calls.
    let stats = |token: Option<String>| {
        let url = hub.url("/v1/stats");
        async move {
            let mut req = reqwest::Client::new().get(url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            req.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(stats(None).await, 401);
    assert_eq!(stats(Some(alice.clone())).await, 403);
    assert_eq!(stats(Some(admin.clone())).await, 200);
    assert_eq!(stats(Some(API_KEY.into())).await, 200);
}

async fn until_marker(sub: &mut SseClient) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let e = sub.next_event().await;
        if e.event == "end" {
            return got;
        }
        got.push(e.data);
    }
}

#[tokio::test]
async fn direct_messages_and_filters_reach_exactly_their_users() {
    let hub = secured(&[]);
    let token = |user: &str, tenant: &str, roles: Value| {
        mint(
            json!({"sub": user, "herald.subscribe": ["rooms/*"], "herald.meta": {"tenant": tenant, "roles": roles}}),
        )
    };
    let alice = token("alice", "acme", json!(["admin"]));
    let bob = token("bob", "acme", json!(["viewer"]));
    let carol = token("carol", "globex", json!(["admin", "viewer"]));
    let mut conns = Vec::new();
    for (name, t) in [
        ("alice", &alice),
        ("alice", &alice),
        ("bob", &bob),
        ("bob", &bob),
        ("carol", &carol),
    ] {
        let mut c = subscribe(&hub, "/v1/events?topic=rooms/*", Some(t)).await;
        c.expect_connected().await;
        conns.push((name, c));
    }
    let key = Some(API_KEY);
    for body in [
        json!({"to": {"users": ["alice"]}, "data": "dm-alice"}),
        json!({"to": {"users": ["bob", "carol"]}, "data": "dm-bob-carol"}),
        json!({"topic": "rooms/1", "to": {"users": ["bob"]}, "data": "room-for-bob"}),
        json!({"topic": "rooms/1", "filter": {"tenant": "acme"}, "data": "acme-only"}),
        json!({"topic": "rooms/1", "filter": {"roles": ["admin"]}, "data": "admins"}),
        json!({"topic": "rooms/1", "filter": {"tenant": "acme", "roles": "viewer"}, "data": "acme-viewers"}),
        json!({"broadcast": true, "filter": {"tenant": "globex"}, "data": "globex-all"}),
        json!({"broadcast": true, "event": "end"}),
    ] {
        assert_eq!(publish(&hub, key, body).await.0, 200);
    }
    for (name, conn) in &mut conns {
        let want: &[&str] = match *name {
            "alice" => &["dm-alice", "acme-only", "admins"],
            "bob" => &["dm-bob-carol", "room-for-bob", "acme-only", "acme-viewers"],
            _ => &["dm-bob-carol", "admins", "globex-all"],
        };
        assert_eq!(until_marker(conn).await, want, "{name}");
    }
}

#[tokio::test]
async fn no_replay_leaks_another_users_messages() {
    let hub = secured(&[]);
    let alice = mint(json!({"sub": "alice", "herald.subscribe": ["room"]}));
    let bob = mint(json!({"sub": "bob", "herald.subscribe": ["room"]}));
    let first = publish(
        &hub,
        Some(API_KEY),
        json!({"topic": "room", "data": "public-1"}),
    )
    .await
    .1["id"]
        .as_str()
        .unwrap()
        .to_owned();
    publish(
        &hub,
        Some(API_KEY),
        json!({"to": {"users": ["alice"]}, "data": "secret"}),
    )
    .await;
    publish(
        &hub,
        Some(API_KEY),
        json!({"topic": "room", "to": {"users": ["alice"]}, "data": "secret-in-room"}),
    )
    .await;
    publish(
        &hub,
        Some(API_KEY),
        json!({"topic": "room", "data": "public-2"}),
    )
    .await;
    publish(
        &hub,
        Some(API_KEY),
        json!({"broadcast": true, "event": "end"}),
    )
    .await;
    for path in [
        "/v1/events?topic=room&history=100",
        "/v1/events?topic=room&since=0",
        &format!("/v1/events?topic=room&lastEventId={first}"),
        "/v1/events?topic=room&lastEventId=0",
    ] {
        let mut b = subscribe(&hub, path, Some(&bob)).await;
        b.expect_connected().await;
        let mut got = Vec::new();
        loop {
            match b.next().await {
                Some(Item::Event(e)) if e.event == "end" => break,
                Some(Item::Event(e)) if e.event == "herald.reset" => {
                    // A forged id is answered with a reset, never with data.
                    break;
                }
                Some(Item::Event(e)) => got.push(e.data),
                Some(_) => {}
                None => break,
            }
        }
        assert!(got.iter().all(|d| !d.contains("secret")), "{path}: {got:?}");
    }
    let mut a = subscribe(&hub, "/v1/events?topic=room&since=0", Some(&alice)).await;
    a.expect_connected().await;
    // Alice was offline: her direct messages waited in her inbox and come
    // first (SPEC §7); the backlog does not repeat them.
    assert_eq!(
        until_marker(&mut a).await,
        ["secret", "secret-in-room", "public-1", "public-2"]
    );
}

#[tokio::test]
async fn token_expiry_ends_the_stream_and_a_fresh_token_resumes() {
    let hub = secured(&[]);
    let short = mint(json!({"sub": "u", "exp": now() + 2, "herald.subscribe": ["t"]}));
    let mut sub = subscribe(&hub, "/v1/events?topic=t", Some(&short)).await;
    sub.expect_connected().await;
    publish(&hub, Some(API_KEY), json!({"topic": "t", "data": "before"})).await;
    let before = sub.next_event().await;
    assert_eq!(before.data, "before");
    let expired = sub.expect_event("herald.token_expired").await;
    assert_eq!(expired.json()["reason"], "token_expired");
    assert_eq!(
        sub.next().await,
        None,
        "the stream ends after herald.token_expired"
    );
    publish(
        &hub,
        Some(API_KEY),
        json!({"topic": "t", "data": "while away"}),
    )
    .await;
    let fresh = mint(json!({"sub": "u", "herald.subscribe": ["t"]}));
    let last = before.id.unwrap();
    let mut again = SseClient::connect_with(
        hub.addr,
        "/v1/events?topic=t",
        &[
            ("Authorization", &format!("Bearer {fresh}")),
            ("Last-Event-ID", &last),
        ],
        None,
    )
    .await;
    again.expect_connected().await;
    assert_eq!(again.next_event().await.data, "while away");
}

#[tokio::test]
async fn per_user_connection_limit_is_a_temporary_refusal() {
    let hub = secured(&["limits.max_connections_per_user=1"]);
    let alice = mint(json!({"sub": "alice", "herald.subscribe": ["t"]}));
    let bob = mint(json!({"sub": "bob", "herald.subscribe": ["t"]}));
    let mut first = subscribe(&hub, "/v1/events?topic=t", Some(&alice)).await;
    first.expect_connected().await;
    let mut second = subscribe(&hub, "/v1/events?topic=t", Some(&alice)).await;
    assert_eq!(second.status, 200);
    assert!(second.header("retry-after").is_some());
    assert!(matches!(second.next().await, Some(Item::Retry(_))));
    assert_eq!(
        second.expect_event("herald.refused").await.json()["error"],
        "too_many_connections_for_user"
    );
    subscribe(&hub, "/v1/events?topic=t", Some(&bob))
        .await
        .expect_connected()
        .await;
}

#[tokio::test]
async fn publish_and_connect_rate_limits() {
    let hub = secured(&[
        "limits.publish_rate_per_sec=2",
        "limits.connect_rate_per_ip=2",
    ]);
    // Sent together, so that the outcome does not depend on how fast the
    // machine is: a burst of 2 passes, the rest wait.
    let http = reqwest::Client::new();
    let answers = futures_util::future::join_all((0..8).map(|_| {
        http.post(hub.url("/v1/publish"))
            .bearer_auth(API_KEY)
            .json(&json!({"topic": "t"}))
            .send()
    }))
    .await;
    let mut limited = 0;
    for resp in answers {
        let resp = resp.unwrap();
        if resp.status() == 429 {
            limited += 1;
            let secs: u64 = resp.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=4).contains(&secs), "Retry-After {secs}");
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"], "rate_limited");
        } else {
            assert_eq!(resp.status(), 200);
        }
    }
    assert!((1..=6).contains(&limited), "{limited} of 8 limited");
    // Another publisher has its own allowance.
    let other = mint(json!({"sub": "p2", "herald.publish": ["t"]}));
    assert_eq!(
        publish(&hub, Some(&other), json!({"topic": "t"})).await.0,
        200
    );
    // Streams: the third rapid connect from one address is refused for now.
    let mut outcomes = Vec::new();
    for _ in 0..8 {
        let mut c = subscribe(&hub, "/v1/events?topic=public/x", None).await;
        let _ = c.next().await; // retry:
        outcomes.push(c.next_event().await.event);
    }
    assert_eq!(outcomes[0], "herald.connected");
    assert!(
        outcomes.iter().any(|e| e == "herald.refused"),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn cors_allowed_refused_and_preflight() {
    let hub = secured(&["cors.allowed_origins=[\"https://app.example.com\"]"]);
    let http = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, hub.url("/v1/publish"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "authorization,content-type",
            )
            .send()
    };
    let ok = preflight("https://app.example.com").await.unwrap();
    assert!(ok.status().is_success());
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(ok.headers()["access-control-allow-credentials"], "true");
    assert!(ok.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    let no = preflight("https://evil.example.com").await.unwrap();
    assert!(no.headers().get("access-control-allow-origin").is_none());
    let get = http
        .get(hub.url("/healthz"))
        .header("Origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        get.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    // "*" allows any origin, never with credentials.
    let open = secured(&["cors.allowed_origins=[\"*\"]"]);
    let any = http
        .get(open.url("/healthz"))
        .header("Origin", "https://x.example")
        .send()
        .await
        .unwrap();
    assert_eq!(any.headers()["access-control-allow-origin"], "*");
    assert!(any
        .headers()
        .get("access-control-allow-credentials")
        .is_none());
}

#[tokio::test]
async fn tokens_in_urls_never_reach_the_logs() {
    let hub = HubProcess::start_with(
        &[
            &format!("auth.jwt_secret=\"{SECRET}\""),
            "auth.anonymous_subscribe=[\"public/**\"]",
        ],
        &["--log", "trace"],
        &[],
    );
    let good = mint(json!({"sub": "u", "herald.subscribe": ["t"], "herald.publish": ["t"]}));
    let bad = "not-a-token-but-still-secret-value";
    let mut s =
        SseClient::connect(hub.addr, &format!("/v1/events?topic=t&access_token={good}")).await;
    s.expect_connected().await;
    let _ = refused(
        &hub,
        &format!("/v1/events?topic=t&access_token={bad}"),
        None,
    )
    .await;
    let _ = refused(
        &hub,
        &format!("/v1/events?topic=forbidden&access_token={good}"),
        None,
    )
    .await;
    let resp = reqwest::Client::new()
        .post(hub.url(&format!("/v1/publish?topic=t&access_token={good}")))
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    s.next_event().await;
    drop(s);
    hub.wait_for_log(&["/v1/publish", "finished processing request"])
        .await;
    let logs = hub.logs();
    assert!(
        logs.iter().any(|l| l.contains("path=/v1/events")),
        "requests are logged with their paths"
    );
    for line in &logs {
        assert!(
            !line.contains(&good) && !line.contains(bad),
            "token in log line: {line}"
        );
        assert!(
            !line.contains("access_token="),
            "query string in log line: {line}"
        );
    }
}

/// A small deterministic generator (no dependency, seed shown on failure).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn subset<'a>(&mut self, items: &[&'a str]) -> Vec<&'a str> {
        items
            .iter()
            .copied()
            .filter(|_| self.below(2) == 0)
            .collect()
    }
}

/// SPEC §2 matching, written again for the model.
fn model_matches(pattern: &str, topic: &str) -> bool {
    let (p, t): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), topic.split('/').collect());
    match p.iter().position(|s| *s == "**") {
        Some(i) => t.len() > i && p[..i].iter().zip(&t).all(|(a, b)| *a == "*" || a == b),
        None => p.len() == t.len() && p.iter().zip(&t).all(|(a, b)| *a == "*" || a == b),
    }
}

/// SPEC §4 delivery rules, written again for the model.
fn model_receives(user: &str, patterns: &[&str], meta: &Value, event: &Value) -> bool {
    if let Some(filter) = event.get("filter").and_then(Value::as_object) {
        let ok = filter.iter().all(|(k, want)| match (want, meta.get(k)) {
            (_, None) => false,
            (Value::Array(w), Some(Value::Array(h))) => w.iter().any(|x| h.contains(x)),
            (Value::Array(w), Some(h)) => w.contains(h),
            (w, Some(Value::Array(h))) => h.contains(w),
            (w, Some(h)) => w == h,
        });
        if !ok {
            return false;
        }
    }
    if event["broadcast"] == true {
        return true;
    }
    let topics: Vec<&str> = event["topics"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap()).collect())
        .unwrap_or_default();
    let users: Vec<&str> = event["to"]["users"]
        .as_array()
        .map(|a| a.iter().map(|u| u.as_str().unwrap()).collect())
        .unwrap_or_default();
    let topic_ok = topics.is_empty()
        || topics
            .iter()
            .any(|t| patterns.iter().any(|p| model_matches(p, t)));
    let to_ok = users.is_empty() || users.contains(&user);
    topic_ok && to_ok
}

#[tokio::test]
async fn randomized_isolation() {
    for seed in [7u64, 1234, 98765] {
        let mut rng = Lcg(seed);
        let hub = secured(&[]);
        let users = ["u0", "u1", "u2", "u3"];
        let pattern_pool = ["t/a", "t/b", "t/*", "t/**", "t/c/*"];
        let mut conns = Vec::new();
        for user in users {
            let tenant = ["acme", "globex"][rng.below(2) as usize];
            let roles = rng.subset(&["admin", "viewer"]);
            let meta = json!({"tenant": tenant, "roles": roles});
            let token =
                mint(json!({"sub": user, "herald.subscribe": ["t/**"], "herald.meta": meta}));
            for _ in 0..2 {
                let mut patterns = rng.subset(&pattern_pool);
                if patterns.is_empty() {
                    patterns.push("t/a");
                }
                let query: Vec<String> = patterns.iter().map(|p| format!("topic={p}")).collect();
                let mut c = subscribe(
                    &hub,
                    &format!("/v1/events?{}", query.join("&")),
                    Some(&token),
                )
                .await;
                c.expect_connected().await;
                conns.push((user, patterns, meta.clone(), c));
            }
        }
        let mut events = Vec::new();
        for n in 0..150 {
            let mut e = json!({"data": format!("e{n}")});
            let topics = rng.subset(&["t/a", "t/b", "t/c/d", "t/x"]);
            if !topics.is_empty() {
                e["topics"] = json!(topics);
            }
            if rng.below(3) == 0 {
                e["to"] = json!({"users": rng.subset(&users)});
            }
            match rng.below(4) {
                0 => {
                    let tenant = ["acme", "globex"][rng.below(2) as usize];
                    e["filter"] = json!({ "tenant": tenant });
                }
                1 => e["filter"] = json!({"roles": rng.subset(&["admin", "viewer"])}),
                _ => {}
            }
            let addressed = e["to"]["users"].as_array().is_some_and(|u| !u.is_empty());
            if topics.is_empty() && !addressed {
                e["broadcast"] = json!(true);
            }
            if e["to"]["users"].as_array().is_some_and(|u| u.is_empty()) {
                e.as_object_mut().unwrap().remove("to");
            }
            events.push(e);
        }
        for batch in events.chunks(10) {
            let (status, answer) = publish(&hub, Some(API_KEY), json!(batch)).await;
            assert_eq!(status, 200, "seed {seed}: {answer}");
        }
        publish(
            &hub,
            Some(API_KEY),
            json!({"broadcast": true, "event": "end"}),
        )
        .await;
        for (user, patterns, meta, conn) in &mut conns {
            let want: Vec<String> = events
                .iter()
                .filter(|e| model_receives(user, patterns, meta, e))
                .map(|e| e["data"].as_str().unwrap().to_owned())
                .collect();
            let got = until_marker(conn).await;
            assert_eq!(
                got, want,
                "seed {seed}: {user} with {patterns:?} and {meta}"
            );
        }
    }
}

/// How the test JWKS endpoint answers.
#[derive(Clone, Debug)]
enum JwksMode {
    Serve,
    /// Answers 500.
    Fail,
    /// Takes the request and answers only once `release` is notified.
    Hold,
    /// Redirects to this URL.
    Redirect(String),
    /// A body over the hub's 1 MiB cap.
    Huge,
}

/// A JWKS endpoint on loopback whose key set and behaviour the test can
/// change; counts fetches.
struct JwksServer {
    url: String,
    set: std::sync::Arc<std::sync::Mutex<String>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    mode: std::sync::Arc<std::sync::Mutex<JwksMode>>,
    /// Requests arrived so far.
    arrived: std::sync::Arc<tokio::sync::watch::Sender<usize>>,
    /// Lets held requests answer.
    release: std::sync::Arc<tokio::sync::Notify>,
}

impl JwksServer {
    async fn start(initial: &[(Algorithm, &str)]) -> JwksServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let set = std::sync::Arc::new(std::sync::Mutex::new(Self::render(initial)));
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mode = std::sync::Arc::new(std::sync::Mutex::new(JwksMode::Serve));
        let arrived = std::sync::Arc::new(tokio::sync::watch::Sender::new(0));
        let release = std::sync::Arc::new(tokio::sync::Notify::new());
        let server = (
            set.clone(),
            fetches.clone(),
            mode.clone(),
            arrived.clone(),
            release.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    break;
                };
                let (s, f, m, arrived, release) = server.clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = sock.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        req.extend_from_slice(&buf[..n]);
                    }
                    f.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let mode = m.lock().unwrap().clone();
                    arrived.send_modify(|n| *n += 1);
                    let (status, extra, body) = match mode {
                        JwksMode::Serve => ("200 OK", String::new(), s.lock().unwrap().clone()),
                        JwksMode::Fail => ("500 Internal Server Error", String::new(), "{}".into()),
                        JwksMode::Hold => {
                            release.notified().await;
                            ("200 OK", String::new(), s.lock().unwrap().clone())
                        }
                        JwksMode::Redirect(to) => {
                            ("302 Found", format!("Location: {to}\r\n"), String::new())
                        }
                        JwksMode::Huge => {
                            let set = s.lock().unwrap().clone();
                            // Valid JSON, padded past the cap.
                            let pad = " ".repeat(1 << 20);
                            ("200 OK", String::new(), format!("{pad}{set}"))
                        }
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        JwksServer {
            url,
            set,
            fetches,
            mode,
            arrived,
            release,
        }
    }

    fn set_mode(&self, mode: JwksMode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn render(keys: &[(Algorithm, &str)]) -> String {
        let keys = keys
            .iter()
            .map(|(alg, kid)| {
                let mut jwk = Jwk::from_encoding_key(&signing_key(*alg).0, *alg).unwrap();
                jwk.common.key_id = Some(kid.to_string());
                jwk
            })
            .collect();
        serde_json::to_string(&JwkSet { keys }).unwrap()
    }

    fn rotate(&self, keys: &[(Algorithm, &str)]) {
        *self.set.lock().unwrap() = Self::render(keys);
    }

    fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test]
async fn jwks_url_is_fetched_and_refetched_for_an_unknown_kid() {
    let jwks = JwksServer::start(&[(Algorithm::RS256, "rsa")]).await;
    let hub = HubProcess::start(&[&format!("auth.jwks=\"{}\"", jwks.url), "auth.leeway_secs=0"]);
    let claims = json!({"sub": "u", "exp": now() + 60, "herald.subscribe": ["t"]});
    assert_eq!(jwks.fetches(), 0, "fetched on first use, not before");
    let rsa = mint_with(Algorithm::RS256, claims.clone());
    subscribe(&hub, "/v1/events?topic=t", Some(&rsa))
        .await
        .expect_connected()
        .await;
    subscribe(&hub, "/v1/events?topic=t", Some(&rsa))
        .await
        .expect_connected()
        .await;
    assert_eq!(jwks.fetches(), 1, "known keys are not fetched again");
    // The provider rotates to an EC key: the unknown kid triggers a fetch.
    jwks.rotate(&[(Algorithm::RS256, "rsa"), (Algorithm::ES256, "ec256")]);
    let ec = mint_with(Algorithm::ES256, claims.clone());
    subscribe(&hub, "/v1/events?topic=t", Some(&ec))
        .await
        .expect_connected()
        .await;
    assert_eq!(jwks.fetches(), 2);
    // Unknown kids right after do not hammer the provider.
    for _ in 0..5 {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("never-heard-of".into());
        let bogus = encode(&header, &claims, &signing_key(Algorithm::ES256).0).unwrap();
        assert_eq!(
            refused(&hub, "/v1/events?topic=t", Some(&bogus)).await.0,
            401
        );
    }
    assert!(
        jwks.fetches() <= 3,
        "at most one more fetch, got {}",
        jwks.fetches()
    );
}

/// L1: a slow identity provider does not hold up tokens whose key is
/// known; redirects to another origin and oversized sets are refused; a
/// failed fetch is tried again soon, not after the set's full age.
#[tokio::test]
async fn jwks_fetches_never_hold_up_known_keys_and_stay_bounded() {
    let jwks = JwksServer::start(&[(Algorithm::RS256, "rsa")]).await;
    jwks.set_mode(JwksMode::Fail);
    let hub = HubProcess::start(&[&format!("auth.jwks=\"{}\"", jwks.url), "auth.leeway_secs=0"]);
    let claims = json!({"sub": "u", "exp": now() + 120, "herald.subscribe": ["t"]});
    let rsa = mint_with(Algorithm::RS256, claims.clone());
    // The first fetch fails: refused, and tried again within seconds.
    assert_eq!(refused(&hub, "/v1/events?topic=t", Some(&rsa)).await.0, 401);
    jwks.set_mode(JwksMode::Serve);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let mut sub = subscribe(&hub, "/v1/events?topic=t", Some(&rsa)).await;
        if sub.status == 200 {
            sub.expect_connected().await;
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never fetched again after a failure"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let fetched = jwks.fetches();

    // A rotation whose fetch hangs: the token with the new kid waits for
    // it, and a token with the known key does not.
    jwks.rotate(&[(Algorithm::RS256, "rsa"), (Algorithm::ES256, "ec256")]);
    jwks.set_mode(JwksMode::Hold);
    let ec = mint_with(Algorithm::ES256, claims.clone());
    let mut arrived = jwks.arrived.subscribe();
    let waiting = {
        let (addr, ec) = (hub.addr, ec.clone());
        tokio::spawn(async move {
            let mut sub = SseClient::connect_with(
                addr,
                "/v1/events?topic=t",
                &[("Authorization", &format!("Bearer {ec}"))],
                None,
            )
            .await;
            sub.expect_connected().await;
        })
    };
    arrived.wait_for(|&n| n > fetched).await.unwrap();
    // Four seconds is under the fetch timeout: before the fix this waited
    // for the held fetch.
    tokio::time::timeout(std::time::Duration::from_secs(4), async {
        subscribe(&hub, "/v1/events?topic=t", Some(&rsa))
            .await
            .expect_connected()
            .await
    })
    .await
    .expect("a known key verified while a fetch was in flight");
    assert!(!waiting.is_finished());
    jwks.release.notify_one();
    waiting.await.unwrap();
    assert_eq!(jwks.fetches(), fetched + 1);

    // Tries the token until a fetch happens (unknown kids fetch at most
    // every 10 s); it must be refused each time. Returns the fetches the
    // attempt that fetched made.
    let fetch_refused = |token: String| {
        let (hub, jwks) = (&hub, &jwks);
        async move {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                let before = jwks.fetches();
                let status = subscribe(hub, "/v1/events?topic=t", Some(&token))
                    .await
                    .status;
                assert_eq!(status, 401, "a token was verified by keys it may not take");
                if jwks.fetches() > before {
                    return jwks.fetches() - before;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no fetch for an unknown kid"
                );
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    };
    let port = jwks
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    jwks.rotate(&[
        (Algorithm::RS256, "rsa"),
        (Algorithm::ES256, "ec256"),
        (Algorithm::ES384, "ec384"),
    ]);
    let ec384 = mint_with(Algorithm::ES384, claims.clone());
    // A redirect to another origin (`localhost` is this same server, under
    // another name) is not followed.
    jwks.set_mode(JwksMode::Redirect(format!(
        "http://localhost:{port}/.well-known/jwks.json"
    )));
    assert_eq!(
        fetch_refused(ec384.clone()).await,
        1,
        "the redirect was followed"
    );
    // A set over 1 MiB is not read.
    jwks.set_mode(JwksMode::Huge);
    fetch_refused(ec384.clone()).await;
    // The keys known before still verify.
    subscribe(&hub, "/v1/events?topic=t", Some(&ec))
        .await
        .expect_connected()
        .await;
}
