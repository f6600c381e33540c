//! The paths served on the socket beside hyper: subscribes
//! (`server/sse_socket.rs`), the request heads they refuse, the framing
//! they write; publishers' connections (`server/publish_socket.rs`),
//! pipelined, handed to hyper mid-connection, answered as hyper answers;
//! and that everything else still gets hyper's keep-alive.

mod common;

use common::HubProcess;
use herald_wire::head::{Framing, ResponseHead};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `request` and reads until the hub closes the connection.
async fn exchange(hub: &HubProcess, request: &[u8]) -> String {
    let mut socket = TcpStream::connect(hub.addr).await.unwrap();
    socket.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        socket.read_to_end(&mut answer),
    );
    // A reset after the answer (unread request bytes) still leaves the answer.
    let _ = read.await.expect("the hub closes the connection");
    String::from_utf8_lossy(&answer).into_owned()
}

/// Reads `socket` until what came holds `needle`; returns it as text.
async fn read_until(socket: &mut TcpStream, needle: &str) -> String {
    let mut seen = Vec::new();
    loop {
        let text = String::from_utf8_lossy(&seen).into_owned();
        if text.contains(needle) {
            return text;
        }
        let mut buf = [0u8; 4096];
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0, "the connection ended before {needle:?}: {text}");
        seen.extend_from_slice(&buf[..n]);
    }
}

fn status(answer: &str) -> &str {
    answer.split(' ').nth(1).unwrap_or("")
}

#[tokio::test]
async fn refuses_bad_and_oversized_heads_and_keeps_serving() {
    let hub = HubProcess::start(&[]);
    let huge = format!(
        "GET /v1/events?topic=t HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    assert_eq!(status(&exchange(&hub, huge.as_bytes()).await), "431");
    let broken = b"GET /v1/events?topic=t HTTP/1.1\r\nHost x\r\n\r\n";
    assert_eq!(status(&exchange(&hub, broken).await), "400");
    let bad_version = b"GET /v1/events?topic=t HTTP/2.5\r\nHost: localhost\r\n\r\n";
    assert_eq!(status(&exchange(&hub, bad_version).await), "400");
    // A refusal from the API itself keeps its JSON body and length.
    let answer = exchange(
        &hub,
        b"GET /v1/events?topic=a%20b HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert_eq!(status(&answer), "400", "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("content-length: "), "{answer}");
    assert!(lower.contains("connection: close"), "{answer}");
    assert!(answer.ends_with("}"), "{answer}");
    assert!(answer.contains("\"error\":\"invalid_topic\""), "{answer}");
    // Still serving streams.
    let mut sub = common::SseClient::connect(hub.addr, "/v1/events?topic=t").await;
    sub.expect_connected().await;
}

/// L12: the subscribe path and hyper (every other path) take the same
/// number of header fields, and refuse one more the same way.
#[tokio::test]
async fn both_paths_take_the_same_number_of_headers() {
    let hub = HubProcess::start(&[]);
    let head = |path: &str, fields: usize| {
        let mut head = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        for i in 0..fields - 2 {
            head.push_str(&format!("X-F{i}: v\r\n"));
        }
        head + "\r\n"
    };
    for path in ["/v1/events?topic=t&timeout=0", "/healthz"] {
        let mut taken = TcpStream::connect(hub.addr).await.unwrap();
        taken.write_all(head(path, 100).as_bytes()).await.unwrap();
        let mut first = [0u8; 12];
        taken.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200", "{path} with 100 fields");
        let answer = exchange(&hub, head(path, 101).as_bytes()).await;
        assert_eq!(status(&answer), "431", "{path} with 101 fields: {answer}");
    }
}

#[tokio::test]
async fn streams_are_chunked_and_end_with_the_connection() {
    let hub = HubProcess::start(&[]);
    let mut socket = TcpStream::connect(hub.addr).await.unwrap();
    socket
        .write_all(
            b"GET /v1/events?topic=t HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        socket.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    hub.wait_for_stats("the stream to open", |s| s["connections"] == 1)
        .await;
    // Bytes a subscriber sends after its request are ignored; its leaving
    // (the write side closed) ends the stream and frees its slot.
    socket.write_all(b"stray bytes").await.unwrap();
    hub.publish_ok(serde_json::json!({"topic": "t", "data": "still here"}))
        .await;
    read_until(&mut socket, "still here").await;
    socket.shutdown().await.unwrap();
    hub.wait_for_stats("the stream to be released", |s| s["connections"] == 0)
        .await;
}

#[tokio::test]
async fn other_requests_keep_their_connection() {
    let hub = HubProcess::start(&[]);
    let mut socket = TcpStream::connect(hub.addr).await.unwrap();
    for _ in 0..2 {
        socket
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = socket.read(&mut buf).await.unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
        assert!(answer.starts_with("http/1.1 200"), "{answer}");
        assert!(!answer.contains("connection: close"), "{answer}");
    }
}

/// A stream on a connection hyper serves (its first request was not a
/// subscribe) reads the hub's stream through axum's body, not the socket
/// path's shortcut past it: it gets its events, and its end frees its slot.
#[tokio::test]
async fn a_stream_served_by_hyper_gets_its_events() {
    let hub = HubProcess::start(&[]);
    let mut socket = TcpStream::connect(hub.addr).await.unwrap();
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut socket, "\"ok\"").await;
    socket
        .write_all(
            b"GET /v1/events?topic=hy HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n",
        )
        .await
        .unwrap();
    hub.wait_for_stats("the stream to open", |s| s["connections"] == 1)
        .await;
    for word in ["one", "two"] {
        hub.publish_ok(serde_json::json!({"topic": "hy", "data": word}))
            .await;
    }
    let text = read_until(&mut socket, "data: two").await;
    let head = text.to_ascii_lowercase();
    assert!(head.contains("content-type: text/event-stream"), "{text}");
    assert!(text.find("data: one") < text.find("data: two"), "{text}");
    drop(socket);
    hub.wait_for_stats("the stream to be released", |s| s["connections"] == 0)
        .await;
}

#[tokio::test]
async fn an_http_1_0_stream_is_not_chunked() {
    let hub = HubProcess::start(&[]);
    let mut socket = TcpStream::connect(hub.addr).await.unwrap();
    socket
        .write_all(b"GET /v1/events?topic=t HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let text = read_until(&mut socket, "herald.connected")
        .await
        .to_ascii_lowercase();
    assert!(!text.contains("transfer-encoding"), "{text}");
    // The body starts right after the head, with no chunk size line.
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    assert!(body.starts_with("retry:"), "{body}");
}

/// One HTTP/1.1 answer with a `Content-Length` body.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Lowercase names, in order.
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

/// Reads answers off `socket` until `count` are whole (bytes past them
/// stay in `rest`).
async fn read_answers(socket: &mut TcpStream, rest: &mut Vec<u8>, count: usize) -> Vec<Answer> {
    let mut answers = Vec::new();
    while answers.len() < count {
        if let Some((head, end)) = ResponseHead::parse(rest).unwrap() {
            let Framing::Length(len) = head.framing().unwrap() else {
                panic!("an answer without a content-length: {head:?}")
            };
            if rest.len() >= end + len {
                let body = String::from_utf8(rest[end..end + len].to_vec()).unwrap();
                rest.drain(..end + len);
                let headers = head
                    .headers
                    .into_iter()
                    .map(|(name, value)| (name.to_ascii_lowercase(), value))
                    .collect();
                answers.push(Answer {
                    status: head.status,
                    headers,
                    body,
                });
                continue;
            }
        }
        let mut buf = [0u8; 4096];
        let read = tokio::time::timeout(std::time::Duration::from_secs(15), socket.read(&mut buf));
        let n = read.await.expect("an answer in time").unwrap();
        assert!(
            n > 0,
            "closed after {} answers: {:?}",
            answers.len(),
            String::from_utf8_lossy(rest)
        );
        rest.extend_from_slice(&buf[..n]);
    }
    answers
}

/// A text-shortcut publish of `data` on `topic`, with `extra` header lines.
fn publish_request(topic: &str, data: &str, extra: &str) -> String {
    format!(
        "POST /v1/publish?topic={topic} HTTP/1.1\r\nHost: localhost\r\n{extra}Content-Length: {}\r\n\r\n{data}",
        data.len()
    )
}

/// A JSON publish of `body`.
fn json_request(body: &str) -> String {
    format!(
        "POST /v1/publish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The same request with its body chunked: hyper serves it.
fn chunked(request: &str) -> String {
    let (head, body) = request.split_once("\r\n\r\n").unwrap();
    let head: Vec<&str> = head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("content-length"))
        .collect();
    let mut chunked = head.join("\r\n") + "\r\nTransfer-Encoding: chunked\r\n\r\n";
    if !body.is_empty() {
        chunked += &format!("{:x}\r\n{body}\r\n", body.len());
    }
    chunked + "0\r\n\r\n"
}

/// A hub, a stream subscribed to `topic`, and a publisher's socket.
async fn subscriber_and_publisher(topic: &str) -> (HubProcess, common::SseClient, TcpStream) {
    let hub = HubProcess::start(&[]);
    let mut sub = common::SseClient::connect(hub.addr, &format!("/v1/events?topic={topic}")).await;
    sub.expect_connected().await;
    let socket = TcpStream::connect(hub.addr).await.unwrap();
    (hub, sub, socket)
}

#[tokio::test]
async fn pipelined_publishes_are_answered_in_order() {
    let (_hub, mut sub, mut socket) = subscriber_and_publisher("p").await;
    let words = ["one", "two", "three", "four"];
    let pipelined: String = words.iter().map(|w| publish_request("p", w, "")).collect();
    socket.write_all(pipelined.as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    let answers = read_answers(&mut socket, &mut rest, words.len()).await;
    let mut ids = Vec::new();
    for answer in &answers {
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.header("content-type"), Some("application/json"));
        assert!(
            answer.header("date").is_some_and(|d| d.ends_with(" GMT")),
            "{answer:?}"
        );
        assert_eq!(answer.header("connection"), None, "{answer:?}");
        ids.push(answer.json()["id"].as_str().unwrap().to_owned());
    }
    for (word, id) in words.iter().zip(&ids) {
        let event = sub.next_event().await;
        assert_eq!(
            (event.data.as_str(), event.id.as_deref()),
            (*word, Some(id.as_str()))
        );
    }
    // The connection stays open for more.
    socket
        .write_all(publish_request("p", "five", "").as_bytes())
        .await
        .unwrap();
    let answer = &read_answers(&mut socket, &mut rest, 1).await[0];
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(sub.next_event().await.data, "five");
}

#[tokio::test]
async fn a_publishers_connection_goes_to_hyper_for_anything_else() {
    let (hub, mut sub, mut socket) = subscriber_and_publisher("h").await;
    // A publish, a request for hyper and two publishes after it, in one
    // write: what was read past the publish reaches hyper whole.
    let sent = publish_request("h", "before", "")
        + "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
        + &publish_request("h", "after", "")
        + &chunked(&publish_request("h", "chunked", ""));
    socket.write_all(sent.as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    let answers = read_answers(&mut socket, &mut rest, 4).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200, 200, 200, 200], "{answers:?}");
    assert_eq!(answers[1].json()["status"], "ok", "{answers:?}");
    for word in ["before", "after", "chunked"] {
        assert_eq!(sub.next_event().await.data, word);
    }
    // A head in pieces, its body in another.
    let mut socket = TcpStream::connect(hub.addr).await.unwrap();
    let request = publish_request("h", "slowly", "");
    for piece in request.as_bytes().chunks(7) {
        socket.write_all(piece).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let answer = &read_answers(&mut socket, &mut Vec::new(), 1).await[0];
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(sub.next_event().await.data, "slowly");
}

/// Every refusal the socket path writes is the one hyper and the router
/// write for the same request (sent chunked, which only hyper takes).
#[tokio::test]
async fn a_publish_is_refused_alike_on_both_paths() {
    let hub = HubProcess::start(&["limits.max_body_bytes=4096", "limits.max_event_bytes=1024"]);
    let big = "x".repeat(2000);
    let huge = "x".repeat(5000);
    let cases = [
        ("a bad topic", publish_request("a%20b", "x", "")),
        ("an unknown parameter", "POST /v1/publish?topic=t&nope=1 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\n\r\nx".to_owned()),
        ("bad JSON", json_request("{nope")),
        ("an unknown field", json_request(r#"{"topic":"t","nope":1}"#)),
        ("a batch with a bad event", json_request(r#"[{"topic":"t"},{"topic":"a b"}]"#)),
        ("an event over the limit", publish_request("t", &big, "")),
        ("a body over the limit", publish_request("t", &huge, "")),
        ("a host not ours", publish_request("t", "x", "Host: evil.example\r\n").replacen("Host: localhost\r\n", "", 1)),
        ("a cross-site request", publish_request("t", "x", "Sec-Fetch-Site: cross-site\r\n")),
    ];
    for (what, request) in cases {
        let mut answers = Vec::new();
        for request in [request.clone(), chunked(&request)] {
            let mut socket = TcpStream::connect(hub.addr).await.unwrap();
            socket.write_all(request.as_bytes()).await.unwrap();
            answers.push(
                read_answers(&mut socket, &mut Vec::new(), 1)
                    .await
                    .remove(0),
            );
        }
        let [lean, hyper] = &answers[..] else {
            unreachable!()
        };
        assert!(lean.status >= 400, "{what}: {lean:?}");
        assert_eq!(
            lean.status, hyper.status,
            "{what}: {lean:?} against {hyper:?}"
        );
        assert_eq!(lean.json(), hyper.json(), "{what}");
        let names = |a: &Answer| {
            let mut names: Vec<String> = a
                .headers
                .iter()
                .map(|(n, _)| n.clone())
                .filter(|n| !matches!(n.as_str(), "connection" | "transfer-encoding"))
                .collect();
            names.sort();
            names
        };
        assert_eq!(names(lean), names(hyper), "{what}");
    }
    let refused = hub.metrics().await;
    assert!(
        refused.contains("herald_http_refusals_total{status=\"413\"} 4"),
        "{refused}"
    );
    // Still publishing.
    hub.publish_ok(serde_json::json!({"topic": "t", "data": "fine"}))
        .await;
}

#[tokio::test]
async fn a_body_over_the_limit_ends_the_connection_and_bad_heads_are_refused() {
    let hub = HubProcess::start(&["limits.max_body_bytes=4096"]);
    // Refused without being read: the connection closes after the answer.
    let answer = exchange(&hub, publish_request("t", &"x".repeat(5000), "").as_bytes()).await;
    assert_eq!(status(&answer), "413", "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // A client that sends its whole body before it reads (most do) still
    // reads the answer: the refused body is read and dropped, not reset.
    let (status, answer) = hub
        .post_raw("/v1/publish?topic=t", vec![b'x'; 4 << 20])
        .await;
    assert_eq!(
        (status, &answer["error"]),
        (413, &serde_json::json!("payload_too_large"))
    );
    // A malformed second head ends a publisher's connection with a 400.
    let sent =
        publish_request("t", "x", "") + "POST /v1/publish?topic=t HTTP/1.1\r\nHost x\r\n\r\n";
    let answer = exchange(&hub, sent.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 2, "{answer}");
    assert!(answer.contains("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
    // `Connection: close` is the last request.
    let answer = exchange(
        &hub,
        publish_request("t", "x", "Connection: close\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
}

#[tokio::test]
async fn an_idle_publishers_connection_does_not_hold_up_shutdown() {
    let mut hub = HubProcess::start(&["shutdown_timeout_secs=60"]);
    let mut socket = TcpStream::connect(hub.addr).await.unwrap();
    socket
        .write_all(publish_request("t", "x", "").as_bytes())
        .await
        .unwrap();
    let answer = &read_answers(&mut socket, &mut Vec::new(), 1).await[0];
    assert_eq!(answer.status, 200, "{answer:?}");
    hub.terminate();
    let status = hub.wait_exit(std::time::Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    hub.wait_for_log(&["all connections closed"]).await;
    let mut buf = [0u8; 64];
    assert_eq!(
        socket.read(&mut buf).await.unwrap_or(0),
        0,
        "the connection is closed"
    );
}

/// Events for an idle stream are written by the courier straight into its
/// socket (`delivery/courier.rs`). A reader that stops reading makes those
/// writes go in part: what is left must go out whole, before anything
/// after it, and the stream must go on. Large events into a small receive
/// buffer, published one at a time, then everything read and checked.
#[tokio::test]
async fn a_write_the_socket_takes_in_part_is_finished_first() {
    let hub = HubProcess::start(&["stream.queue_capacity=10000"]);
    let mut slow =
        common::SseClient::connect_with(hub.addr, "/v1/events?topic=big", &[], Some(4096)).await;
    slow.expect_connected().await;
    let body = |n: usize| format!("{n} {}", "y".repeat(50_000 + n * 7));
    let count = 40;
    for n in 0..count {
        hub.publish_ok(serde_json::json!({"topic": "big", "data": body(n)}))
            .await;
    }
    for n in 0..count {
        let event = slow.next_event().await;
        assert_eq!(event.data.len(), body(n).len(), "event {n} whole");
        assert!(event.data == body(n), "event {n} out of order or torn");
    }
    // Idle again: the next one is the courier's, and comes whole.
    hub.publish_ok(serde_json::json!({"topic": "big", "data": "after"}))
        .await;
    assert_eq!(slow.next_event().await.data, "after");
}
