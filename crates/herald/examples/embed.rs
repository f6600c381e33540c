//! Herald inside an existing axum application: the app keeps its own
//! routes, mounts the hub's API under `/realtime`, and publishes from Rust.
//!
//! ```sh
//! cargo run -p herald --example embed          # listens on 127.0.0.1:3000
//! curl -N 'http://127.0.0.1:3000/realtime/v1/events?topic=orders/*'
//! curl -X POST http://127.0.0.1:3000/orders/17/ship
//! ```

use std::net::SocketAddr;

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use herald::{Config, Hub, PublishRequest};
use serde_json::{json, Value};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // History in memory for the example; drop `memory` to keep it in
    // ./herald-data across restarts.
    let hub = Hub::new(Config {
        memory: true,
        ..Config::default()
    })?;
    let app = Router::new()
        .route("/orders/{id}/ship", post(ship))
        .with_state(hub.clone())
        .nest("/realtime", hub.router());
    let addr: SocketAddr = std::env::var("ADDR")
        .unwrap_or_else(|_| "127.0.0.1:3000".into())
        .parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{addr}");
    // Connect info lets the hub apply per-address limits and its dev-mode
    // loopback check to the app's clients.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

/// An ordinary app endpoint that tells every subscriber of the order.
async fn ship(State(hub): State<Hub>, Path(id): Path<u64>) -> Result<Json<Value>, String> {
    let event =
        PublishRequest::topic(format!("orders/{id}"), json!({"status": "shipped"})).event("status");
    let event_id = hub.publish(event).await.map_err(|e| e.to_string())?;
    Ok(Json(json!({"order": id, "event_id": event_id.to_string()})))
}
