//! The token snippets of docs/AUTH.md mint tokens a real hub accepts.

mod common;

use std::process::Command;

use common::{HubProcess, SseClient};

const SECRET: &str = "docs-secret-long-enough-for-hs256-0123456789";

fn code_block(lang: &str) -> String {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/AUTH.md")).unwrap();
    let start = doc.find(&format!("```{lang}\n")).expect("a code block") + lang.len() + 4;
    let end = start + doc[start..].find("```").unwrap();
    doc[start..end].to_owned()
}

#[tokio::test]
async fn python_snippet_mints_an_accepted_token() {
    let has_pyjwt = Command::new("python3")
        .args(["-c", "import jwt"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_pyjwt {
        // .ci/run installs PyJWT; a developer machine may not have it.
        common::skip("python3 has no PyJWT (pip install PyJWT)");
        return;
    }
    let script = format!(
        "{}\nprint(herald_token('alice', {SECRET:?}))\n",
        code_block("python")
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let hub = HubProcess::start(&[&format!("auth.jwt_secret=\"{SECRET}\"")]);
    let auth = format!("Bearer {token}");
    let mut sub = SseClient::connect_with(
        hub.addr,
        "/v1/events?topic=users/alice/inbox&topic=chat/*",
        &[("Authorization", &auth)],
        None,
    )
    .await;
    let connected = sub.expect_connected().await;
    assert_eq!(
        connected["topics"],
        serde_json::json!(["users/alice/inbox", "chat/*"])
    );
    let other = SseClient::connect_with(
        hub.addr,
        "/v1/events?topic=users/bob/inbox",
        &[("Authorization", &auth)],
        None,
    )
    .await;
    assert_eq!(other.status, 403);
}
