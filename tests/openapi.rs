//! The OpenAPI document describes exactly the routes the hub serves.

mod common;

use std::collections::BTreeSet;

use common::HubProcess;
use serde_json::Value;

/// (METHOD, path) of every `.route(...)` in the router's source, with
/// axum's `{*rest}` written as OpenAPI's `{rest}`.
fn routes_in_source() -> BTreeSet<(String, String)> {
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crates/herald/src/http/mod.rs"
    ))
    .unwrap();
    let mut routes = BTreeSet::new();
    for chunk in src.split(".route(\"").skip(1) {
        let (path, rest) = chunk.split_once('"').unwrap();
        let method = rest
            .trim_start_matches([',', ' '])
            .split('(')
            .next()
            .unwrap()
            .to_uppercase();
        routes.insert((method, path.replace("{*", "{")));
    }
    routes
}

#[tokio::test]
async fn the_document_covers_every_route_and_nothing_else() {
    let hub = HubProcess::start(&[]);
    let (status, doc) = hub.get_json("/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let served = routes_in_source();
    assert!(served.len() >= 13, "{served:?}");
    assert_eq!(documented, served);
    // Every operation documents its refusals with the one error shape.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (code, response) in op["responses"].as_object().unwrap() {
                // 431 comes from the HTTP layer before routing, without a body.
                if code.starts_with('4') && code != "431" {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(
                        schema,
                        &Value::from("#/components/schemas/ErrorBody"),
                        "{method} {path} {code}"
                    );
                }
            }
        }
    }
}

/// schemathesis (PyPI) generates requests from the document for every
/// operation but the never-ending stream `/v1/events`, and checks the live
/// hub's answers against it: no server error, every status, header and body
/// as documented, schema-valid requests accepted and invalid ones refused
/// (see tests/schemathesis.toml for the one exception and why).
#[test]
fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    // Run through python3 rather than the `st` script: independent of PATH
    // and of pyenv's shims on a fresh machine.
    let st = |args: &[&str]| {
        let mut cmd = std::process::Command::new("python3");
        cmd.args(["-c", "import sys; from schemathesis.cli import schemathesis; sys.argv[0] = 'st'; schemathesis()"]);
        cmd.args(args);
        // Its cache goes to a temporary directory, not into the repository.
        cmd.current_dir(std::env::temp_dir());
        cmd.output()
    };
    let has_st = st(&["--version"]).is_ok_and(|o| o.status.success());
    if !has_st {
        common::skip("schemathesis is not installed (pip install schemathesis)");
        return;
    }
    let hub = HubProcess::start(&[]);
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis.toml");
    let out = std::process::Command::new("st")
        .args(["--config-file", config, "run", &hub.url("/v1/openapi.json")])
        .args([
            "--exclude-path",
            "/v1/events",
            "--max-examples",
            "30",
            "--seed",
            "42",
        ])
        .output()
        .expect("run schemathesis");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "Selected: N/M": every operation but the one stream.
    let selected = text
        .split("Selected: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("");
    let (n, m) = selected.split_once('/').expect("a Selected: N/M line");
    let (n, m): (usize, usize) = (n.parse().unwrap(), m.parse().unwrap());
    assert!(
        m >= 16 && n == m - 1,
        "every operation but /v1/events was tested ({selected}):\n{text}"
    );
}
