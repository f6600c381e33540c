//! The htmx example page (examples/htmx-feed) in a real browser: stock
//! htmx-ext-sse, unchanged, against the hub (tests/browser/htmx.mjs).

mod common;

use common::{browser, HubProcess};

#[test]
fn stock_htmx_sse_swaps_published_fragments() {
    if !browser::ready(false) {
        return;
    }
    // The page comes from another origin, as in the example, and
    // htmx-ext-sse opens its EventSource with credentials: the hub must name
    // that origin (a wildcard is refused by the browser).
    let page_port = browser::free_port();
    let origin = format!("cors.allowed_origins=[\"http://127.0.0.1:{page_port}\"]");
    let hub = HubProcess::start(&[&origin]);
    let page = browser::root().join("examples/htmx-feed/index.html");
    browser::run(
        "htmx.mjs",
        &[
            &format!("http://{}", hub.addr),
            page.to_str().unwrap(),
            &page_port.to_string(),
        ],
        "htmx test passed",
    );
}
