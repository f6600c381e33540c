//! The htmx example page (examples/htmx-feed) in a real browser: stock
//! htmx-ext-sse, unchanged, against the hub (tests/browser/htmx.mjs).

mod common;

use std::path::Path;
use std::process::Command;

use common::HubProcess;

#[test]
fn stock_htmx_sse_swaps_published_fragments() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let browser_dir = root.join("tests/browser");
    let ready = Path::new("/usr/bin/chromium").exists()
        && browser_dir.join("node_modules/htmx-ext-sse").exists();
    if !ready {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install chromium and the tests/browser packages (see .ci/run)"
        );
        eprintln!("skipped: needs /usr/bin/chromium and `npm ci --prefix tests/browser`");
        return;
    }
    // The page comes from another origin, as in the example, and
    // htmx-ext-sse opens its EventSource with credentials: the hub must name
    // that origin (a wildcard is refused by the browser).
    let page_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let origin = format!("cors.allowed_origins=[\"http://127.0.0.1:{page_port}\"]");
    let hub = HubProcess::start(&[&origin]);
    let out = Command::new("node")
        .arg(browser_dir.join("htmx.mjs"))
        .arg(format!("http://{}", hub.addr))
        .arg(root.join("examples/htmx-feed/index.html"))
        .arg(page_port.to_string())
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "htmx test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("htmx test passed"), "{stdout}");
}
