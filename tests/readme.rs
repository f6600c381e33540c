//! The README's first screen works as pasted: its curl subscribe and
//! publish against a real hub, and `.ci/run` runs its test command.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use common::{HubProcess, PATIENCE};

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

/// The `sh` code blocks of the README, in order.
fn sh_blocks(text: &str) -> Vec<Vec<String>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in text.lines() {
        match (&mut current, line.trim()) {
            (None, "```sh") => current = Some(Vec::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(block), l) => block.push(l.to_owned()),
            _ => {}
        }
    }
    blocks
}

#[test]
fn first_block_starts_the_hub_and_runs_the_tests_as_ci_does() {
    let blocks = sh_blocks(&readme());
    let first = blocks[0].join("\n");
    assert!(first.contains("cargo run --release -- serve"), "{first}");
    let test_command = blocks[0]
        .iter()
        .find(|l| l.starts_with("cargo test"))
        .map(|l| l.split('#').next().unwrap().trim().to_owned())
        .expect("a test command");
    let ci = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/run")).unwrap();
    assert!(
        ci.lines().any(|l| l.trim() == test_command),
        ".ci/run must run `{test_command}`"
    );
}

#[test]
fn curl_subscribe_and_publish_work_as_pasted() {
    let hub = HubProcess::start(&[]);
    let blocks = sh_blocks(&readme());
    let curls: Vec<String> = blocks[1]
        .iter()
        .filter(|l| l.starts_with("curl"))
        .map(|l| l.replace("http://127.0.0.1:8080", &format!("http://{}", hub.addr)))
        .collect();
    assert_eq!(curls.len(), 2, "a subscribe and a publish: {curls:?}");
    let mut subscriber = Command::new("sh")
        .args(["-c", &format!("exec {}", curls[0])])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("curl");
    let (tx, rx) = mpsc::channel();
    let out = subscriber.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |needle: &str| loop {
        let line = rx
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("no {needle:?} from curl"));
        if line == needle {
            break;
        }
    };
    wait_for("event: herald.connected");
    let publish = Command::new("sh")
        .args(["-c", &curls[1]])
        .output()
        .expect("curl");
    assert!(publish.status.success());
    let answer: serde_json::Value = serde_json::from_slice(&publish.stdout).expect("JSON answer");
    assert!(answer["id"].is_string(), "{answer}");
    wait_for("event: progress");
    wait_for(r#"data: {"pct":50}"#);
    let _ = subscriber.kill();
    let _ = subscriber.wait();
}
