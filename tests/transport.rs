//! The subscribe path on the socket (`server/sse_socket.rs`): request heads
//! it refuses, the framing it writes, and that everything else still gets
//! hyper's keep-alive.

mod common;

use common::HubProcess;
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
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("still here") {
        let mut buf = [0u8; 1024];
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0, "the stream ended early");
        seen.extend_from_slice(&buf[..n]);
    }
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

#[tokio::test]
async fn an_http_1_0_stream_is_not_chunked() {
    let hub = HubProcess::start(&[]);
    let mut socket = TcpStream::connect(hub.addr).await.unwrap();
    socket
        .write_all(b"GET /v1/events?topic=t HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("herald.connected") {
        let mut buf = [0u8; 1024];
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0, "the stream ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen).to_ascii_lowercase();
    assert!(!text.contains("transfer-encoding"), "{text}");
    // The body starts right after the head, with no chunk size line.
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    assert!(body.starts_with("retry:"), "{body}");
}
