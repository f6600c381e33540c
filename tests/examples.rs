//! The runnable examples, each driven through a scripted journey in Debian's
//! Chromium (tests/browser/*.mjs) against a real hub and the example's own
//! backend, started the way its README line says.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::HubProcess;

struct Backend(Child);

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether the browser and packages are here (CI must have them); builds
/// clients/js/dist once for all the examples (their tests run at once).
fn ready(root: &Path) -> bool {
    let ok = Path::new("/usr/bin/chromium").exists()
        && root
            .join("tests/browser/node_modules/playwright-core")
            .exists()
        && root.join("clients/js/node_modules/typescript").exists();
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install chromium and the npm packages (see .ci/run)"
        );
        eprintln!("skipped: needs /usr/bin/chromium and the npm packages");
        return false;
    }
    static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let out = Command::new("npm")
            .args(["run", "build"])
            .current_dir(root.join("clients/js"))
            .output()
            .map_err(|e| e.to_string())?;
        match out.status.success() {
            true => Ok(()),
            false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    });
    if let Err(err) = built {
        panic!("client build failed: {err}");
    }
    true
}

/// Starts `python3 SCRIPT` with the hub's URL and a port, and waits for
/// the line that says where to open it.
fn backend(root: &Path, script: &str, hub: &HubProcess, port: u16) -> Backend {
    let mut child = Command::new("python3")
        .arg(root.join(script))
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

fn journey(root: &Path, script: &str, hub: &HubProcess, page: &str) {
    let out = Command::new("node")
        .arg(root.join("tests/browser").join(script))
        .arg(format!("http://{}", hub.addr))
        .arg(page)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("test passed"), "{stdout}");
}

#[test]
fn dashboard_fills_its_charts_shows_alerts_and_survives_a_dropped_stream() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !ready(root) {
        return;
    }
    let port = free_port();
    let origin = format!("cors.allowed_origins=[\"http://127.0.0.1:{port}\"]");
    let hub = HubProcess::start(&[&origin]);
    let _backend = backend(root, "examples/dashboard/server.py", &hub, port);
    journey(
        root,
        "dashboard.mjs",
        &hub,
        &format!("http://127.0.0.1:{port}/"),
    );
}

#[test]
fn job_queue_is_the_same_in_every_tab_from_snapshot_and_patches() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !ready(root) {
        return;
    }
    let port = free_port();
    let origin = format!("cors.allowed_origins=[\"http://127.0.0.1:{port}\"]");
    let hub = HubProcess::start(&[&origin]);
    let _backend = backend(root, "examples/jobs/server.py", &hub, port);
    journey(root, "jobs.mjs", &hub, &format!("http://127.0.0.1:{port}/"));
}

#[test]
fn uploads_show_progress_errors_and_cancellation_per_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !ready(root) {
        return;
    }
    let port = free_port();
    let origin = format!("cors.allowed_origins=[\"http://127.0.0.1:{port}\"]");
    let hub = HubProcess::start(&[&origin]);
    let _backend = backend(root, "examples/uploads/server.py", &hub, port);
    journey(
        root,
        "uploads.mjs",
        &hub,
        &format!("http://127.0.0.1:{port}/"),
    );
}

#[test]
fn chat_rooms_private_messages_typing_presence_and_history() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !ready(root) {
        return;
    }
    let port = free_port();
    // The example's own hub configuration; only the page's origin differs.
    let config = root.join("examples/chat/herald.toml");
    let origin = format!("cors.allowed_origins=[\"http://127.0.0.1:{port}\"]");
    let mut hub = HubProcess::start_with(&[&origin], &["--config", config.to_str().unwrap()], &[]);
    hub.admin_key = Some("chat-example-backend-key".into());
    let _backend = backend(root, "examples/chat/server.py", &hub, port);
    journey(root, "chat.mjs", &hub, &format!("http://127.0.0.1:{port}/"));
}
