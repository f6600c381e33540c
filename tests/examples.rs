//! The runnable examples, each driven through a scripted journey in Debian's
//! Chromium (tests/browser/*.mjs) against a real hub and the example's own
//! backend, started the way its README line says.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::{browser, HubProcess};

struct Backend(Child);

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `python3 SCRIPT` with the hub's URL and a port, and waits for
/// the line that says where to open it.
fn backend(script: &str, hub: &HubProcess, port: u16) -> Backend {
    let mut child = Command::new("python3")
        .arg(browser::root().join(script))
        .env("HERALD_URL", format!("http://{}", hub.addr))
        .env("PORT", port.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the example's backend");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines
            .next()
            .expect("the backend said where to open it")
            .unwrap();
        if line.starts_with("open http://") {
            break;
        }
    }
    Backend(child)
}

/// Starts a hub with `start` (given the setting that lets the page's origin
/// read its streams), the example's backend on that origin, and runs the
/// journey script against both.
fn journey(script: &str, journey: &str, start: impl FnOnce(&str) -> HubProcess) {
    if !browser::ready(true) {
        return;
    }
    let port = browser::free_port();
    let hub = start(&format!(
        "cors.allowed_origins=[\"http://127.0.0.1:{port}\"]"
    ));
    let _backend = backend(script, &hub, port);
    browser::run(
        journey,
        &[
            &format!("http://{}", hub.addr),
            &format!("http://127.0.0.1:{port}/"),
        ],
        "test passed",
    );
}

#[test]
fn dashboard_fills_its_charts_shows_alerts_and_survives_a_dropped_stream() {
    journey("examples/dashboard/server.py", "dashboard.mjs", |origin| {
        HubProcess::start(&[origin])
    });
}

#[test]
fn job_queue_is_the_same_in_every_tab_from_snapshot_and_patches() {
    journey("examples/jobs/server.py", "jobs.mjs", |origin| {
        HubProcess::start(&[origin])
    });
}

#[test]
fn uploads_show_progress_errors_and_cancellation_per_file() {
    journey("examples/uploads/server.py", "uploads.mjs", |origin| {
        HubProcess::start(&[origin])
    });
}

#[test]
fn chat_rooms_private_messages_typing_presence_and_history() {
    // The example's own hub configuration; only the page's origin differs.
    journey("examples/chat/server.py", "chat.mjs", |origin| {
        let config = browser::root().join("examples/chat/herald.toml");
        let mut hub =
            HubProcess::start_with(&[origin], &["--config", config.to_str().unwrap()], &[]);
        hub.admin_key = Some("chat-example-backend-key".into());
        hub
    });
}
