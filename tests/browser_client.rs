//! herald-client (clients/js) in a real browser: Debian's Chromium driven
//! by playwright-core (tests/browser/client.mjs). Tabs of one origin share
//! one connection and hand it over without a gap.

mod common;

use std::path::Path;
use std::process::Command;

use common::HubProcess;

/// Builds clients/js/dist once for this binary's tests (they run at the
/// same time and would otherwise write the same files together).
fn build_client(client_dir: &Path) {
    static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let out = Command::new("npm")
            .args(["run", "build"])
            .current_dir(client_dir)
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
}

#[test]
fn tabs_share_one_connection_and_the_next_takes_over() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let browser_dir = root.join("tests/browser");
    let client_dir = root.join("clients/js");
    let ready = Path::new("/usr/bin/chromium").exists()
        && browser_dir.join("node_modules/playwright-core").exists()
        && client_dir.join("node_modules/typescript").exists();
    if !ready {
        // .ci/run installs all three; a developer machine may not have them.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install chromium, playwright-core and the client's packages (see .ci/run)"
        );
        eprintln!("skipped: needs /usr/bin/chromium, tests/browser and clients/js packages");
        return;
    }
    build_client(&client_dir);
    // The test page is served from another port: another origin.
    let hub = HubProcess::start(&["cors.allowed_origins=[\"*\"]"]);
    let out = Command::new("node")
        .arg(browser_dir.join("client.mjs"))
        .arg(format!("http://{}", hub.addr))
        .arg(client_dir.join("dist"))
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("client test passed"), "{stdout}");
}

#[test]
fn resumes_after_a_hub_restart_and_refreshes_an_expiring_token_in_a_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let browser_dir = root.join("tests/browser");
    let client_dir = root.join("clients/js");
    let ready = Path::new("/usr/bin/chromium").exists()
        && browser_dir.join("node_modules/playwright-core").exists()
        && client_dir.join("node_modules/typescript").exists();
    if !ready {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install chromium, playwright-core and the client's packages (see .ci/run)"
        );
        eprintln!("skipped: needs /usr/bin/chromium, tests/browser and clients/js packages");
        return;
    }
    build_client(&client_dir);
    // This script starts and restarts its own hubs (same port, same data).
    let out = Command::new("node")
        .arg(browser_dir.join("client_hub.mjs"))
        .arg(env!("CARGO_BIN_EXE_herald"))
        .arg(client_dir.join("dist"))
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("client hub test passed"), "{stdout}");
}
