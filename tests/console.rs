//! The web console (`/console/`) in a real browser: Debian's Chromium
//! driven by playwright-core (tests/browser/console.mjs).

mod common;

use std::path::Path;
use std::process::Command;

use common::HubProcess;

#[test]
fn the_console_shows_counts_topics_and_live_events_in_a_browser() {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let ready = Path::new("/usr/bin/chromium").exists()
        && browser_dir.join("node_modules/playwright-core").exists();
    if !ready {
        // .ci/run installs both; a developer machine may not have them.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install chromium and playwright-core (see .ci/run)"
        );
        eprintln!("skipped: needs /usr/bin/chromium and `npm ci --prefix tests/browser`");
        return;
    }
    let hub = HubProcess::start(&[]);
    let out = Command::new("node")
        .arg(browser_dir.join("console.mjs"))
        .arg(format!("http://{}", hub.addr))
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("console test passed"), "{stdout}");
}
