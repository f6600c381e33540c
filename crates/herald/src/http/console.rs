//! The web console at `/console/`: one page and one script, embedded in the
//! binary (no CDN), using only the public API — `/v1/stats`, `/v1/topics`,
//! `/v1/events` for the inspector, `/v1/publish`. With auth on, the page
//! asks for an admin token (kept in the tab's session storage) and sends it
//! with every call; the data calls need admin rights, the page itself does
//! not hold any data.

use axum::http::header;
use axum::response::{IntoResponse, Redirect};

/// What the console page may load and who may frame it: its own script and
/// calls to this hub only, inline styles (no inline script), no framing
/// (clickjacking), no referrer leaking the hub's address.
const POLICY: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; \
style-src 'self' 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; \
form-action 'none'; frame-ancestors 'none'";

/// The console page.
#[utoipa::path(get, path = "/console/", tag = "operations", security(()),
    responses((status = 200, description = "The web console (HTML)", content_type = "text/html", body = String)))]
pub(super) async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        include_str!("console/index.html"),
    )
}

/// The console's script.
#[utoipa::path(get, path = "/console/app.js", tag = "operations", security(()),
    responses((status = 200, description = "The console's script", content_type = "text/javascript", body = String)))]
pub(super) async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        include_str!("console/app.js"),
    )
}

/// `/console` → `/console/`.
#[utoipa::path(get, path = "/console", tag = "operations", security(()),
    responses((status = 308, description = "To /console/")))]
pub(super) async fn redirect() -> Redirect {
    Redirect::permanent("/console/")
}
