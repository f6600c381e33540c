//! Where settings come from (SPEC §1): defaults, `--config`, `HERALD_*`
//! environment, flags — in that order of precedence — and refusals of bad
//! settings at start.

mod common;

use std::process::{Command, Output};

fn herald(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run herald")
}

fn effective(args: &[&str], env: &[(&str, &str)]) -> toml::Table {
    let out = herald(&[&["config"], args].concat(), env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap()
}

/// A file holding `text`, removed when dropped; each test names its own.
fn temp_file(name: &str, text: &str) -> common::TempDir {
    let file = common::TempDir::new(&format!("config-{name}"));
    std::fs::write(&*file, text).unwrap();
    file
}

#[test]
fn defaults_are_the_spec_defaults() {
    let c = effective(&[], &[]);
    assert_eq!(c["listen"].as_str(), Some("127.0.0.1:8080"));
    assert_eq!(c["data_dir"].as_str(), Some("./herald-data"));
    assert_eq!(c["stream"]["heartbeat_secs"].as_integer(), Some(15));
    assert_eq!(c["stream"]["overflow"].as_str(), Some("disconnect"));
    assert_eq!(c["auth"]["cookie_name"].as_str(), Some("herald_token"));
}

#[test]
fn file_then_environment_then_flags() {
    let file = temp_file(
        "layers.toml",
        "listen = \"127.0.0.1:9001\"\n[stream]\nheartbeat_secs = 5\nqueue_capacity = 77\nretry_ms = 111\n",
    );
    let file = file.to_str().unwrap();
    let env = [
        ("HERALD_STREAM__HEARTBEAT_SECS", "6"),
        ("HERALD_STREAM__RETRY_MS", "222"),
    ];
    let c = effective(&["--config", file, "--set", "stream.retry_ms=333"], &env);
    assert_eq!(
        c["listen"].as_str(),
        Some("127.0.0.1:9001"),
        "from the file"
    );
    assert_eq!(
        c["stream"]["queue_capacity"].as_integer(),
        Some(77),
        "from the file"
    );
    assert_eq!(
        c["stream"]["heartbeat_secs"].as_integer(),
        Some(6),
        "env over file"
    );
    assert_eq!(
        c["stream"]["retry_ms"].as_integer(),
        Some(333),
        "flag over env"
    );
    let c = effective(
        &["--config", file, "--listen", "127.0.0.1:9002", "--memory"],
        &env,
    );
    assert_eq!(c["listen"].as_str(), Some("127.0.0.1:9002"));
    assert_eq!(c["memory"].as_bool(), Some(true));
}

#[test]
fn bad_settings_stop_the_hub_with_a_clear_message() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 6] = [
        (
            &["--set", "stream.heartbeat_secs=0"],
            &[],
            "stream.heartbeat_secs",
        ),
        (
            &["--set", "stream.overflow=\"sometimes\""],
            &[],
            "sometimes",
        ),
        (&["--set", "stream.heartbeet=3"], &[], "heartbeet"),
        (
            &[],
            &[("HERALD_LIMITS__MAX_EVENT_BYTES", "lots")],
            "max_event_bytes",
        ),
        (&["--cluster", "http://127.0.0.1:1"], &[], "cluster.url"),
        (
            &["--config", "/nonexistent/herald.toml"],
            &[],
            "does not exist",
        ),
    ];
    for (args, env, needle) in cases {
        for command in ["config", "serve"] {
            let out = herald(&[&[command], args].concat(), env);
            assert!(!out.status.success(), "{args:?} must fail");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.to_lowercase().contains(needle), "{args:?}: {stderr}");
        }
    }
    // An engine that cannot be reached stops the start once the connect
    // timeout is over, saying where it looked.
    let out = herald(
        &[
            "serve",
            "--memory",
            "--cluster",
            "redis://127.0.0.1:1",
            "--set",
            "cluster.connect_timeout_secs=1",
        ],
        &[],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("could not reach the cluster engine at redis://127.0.0.1:1"),
        "{stderr}"
    );
    let file = temp_file("unknown.toml", "[stream]\nheartbeat = 1\n");
    let out = herald(&["config", "--config", file.to_str().unwrap()], &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("heartbeat"));
}

#[test]
fn printed_settings_hide_secrets() {
    let c = effective(
        &[
            "--set",
            "auth.jwt_secret=\"a-secret-of-at-least-32-bytes-0123456789\"",
            "--set",
            "auth.api_keys=[\"key-1\"]",
            "--set",
            "auth.publisher_keys=[\"pub-2\"]",
        ],
        &[],
    );
    let text = c.to_string();
    assert!(
        !text.contains("a-secret-of-at-least")
            && !text.contains("key-1")
            && !text.contains("pub-2"),
        "{text}"
    );
    assert_eq!(
        c["auth"]["publisher_keys"][0].as_str(),
        Some("(set; hidden)")
    );
    assert_eq!(c["auth"]["jwt_secret"].as_str(), Some("(set; hidden)"));
    assert_eq!(c["auth"]["api_keys"][0].as_str(), Some("(set; hidden)"));
}
