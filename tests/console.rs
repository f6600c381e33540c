//! The web console (`/console/`) in a real browser: Debian's Chromium
//! driven by playwright-core (tests/browser/console.mjs).

mod common;

use common::{browser, HubProcess};

#[test]
fn the_console_shows_counts_topics_and_live_events_in_a_browser() {
    if !browser::ready(false) {
        return;
    }
    let hub = HubProcess::start(&[]);
    browser::run(
        "console.mjs",
        &[&format!("http://{}", hub.addr)],
        "console test passed",
    );
}
