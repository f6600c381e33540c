//! herald-client (clients/js) in a real browser: Debian's Chromium driven
//! by playwright-core (tests/browser/client.mjs, client_hub.mjs). Tabs of
//! one origin share one connection and hand it over without a gap; the
//! client resumes after a hub restart and refreshes an expiring token.

mod common;

use common::{browser, HubProcess};

#[test]
fn tabs_share_one_connection_and_the_next_takes_over() {
    if !browser::ready(true) {
        return;
    }
    // The test page is served from another port: another origin.
    let hub = HubProcess::start(&["cors.allowed_origins=[\"*\"]"]);
    let dist = browser::client_dist();
    browser::run(
        "client.mjs",
        &[&format!("http://{}", hub.addr), dist.to_str().unwrap()],
        "client test passed",
    );
}

#[test]
fn resumes_after_a_hub_restart_and_refreshes_an_expiring_token_in_a_browser() {
    if !browser::ready(true) {
        return;
    }
    // This script starts and restarts its own hubs (same port, same data).
    let dist = browser::client_dist();
    browser::run(
        "client_hub.mjs",
        &[env!("CARGO_BIN_EXE_herald"), dist.to_str().unwrap()],
        "client hub test passed",
    );
}
