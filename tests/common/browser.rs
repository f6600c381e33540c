//! Browser tests: Debian's Chromium driven by the playwright-core scripts in
//! `tests/browser/`, some of them with herald-client (`clients/js`) built.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// herald-client's build, for test pages.
pub fn client_dist() -> PathBuf {
    root().join("clients/js/dist")
}

/// Whether Chromium and the `tests/browser` packages are here (with
/// `client`, also the `clients/js` ones, and then the client is built).
/// `.ci/run` installs them all, so under `CI` their absence fails the test;
/// elsewhere the test says so and skips.
pub fn ready(client: bool) -> bool {
    let browser = root().join("tests/browser/node_modules");
    let ok = Path::new("/usr/bin/chromium").exists()
        && browser.join("playwright-core").exists()
        && browser.join("htmx-ext-sse").exists()
        && (!client || root().join("clients/js/node_modules/typescript").exists());
    if !ok {
        super::skip("needs /usr/bin/chromium and `npm ci` in tests/browser and clients/js");
        return false;
    }
    if client {
        build_client();
    }
    true
}

/// Builds `clients/js/dist` once per test binary (tests run at the same
/// time and would otherwise write the same files together).
fn build_client() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let out = Command::new("npm")
            .args(["run", "build"])
            .current_dir(root().join("clients/js"))
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

/// A loopback port free now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `node tests/browser/SCRIPT ARGS...` and asserts that it succeeded
/// and printed `passed`.
pub fn run(script: &str, args: &[&str], passed: &str) {
    let out = Command::new("node")
        .arg(root().join("tests/browser").join(script))
        .args(args)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(passed), "{stdout}");
}
