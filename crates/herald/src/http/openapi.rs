//! `GET /v1/openapi.json`: the OpenAPI 3 document, generated from the
//! handlers' annotations and the request and answer types (utoipa).

use axum::Json;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::delivery::fanout::{FanoutStats, Presence};
use crate::hub::{HubStats, UserInfo};
use crate::requests::publish::{PublishRequest, PublishTo};
pub(crate) use crate::values::schema::{
    EventIdText, EventName, PatternText, PublishedEventName, ShortName, StatePath, TopicName,
};

/// A state change made.
#[derive(Serialize, ToSchema)]
pub(crate) struct StateChanged {
    pub key: String,
    pub version: u64,
    /// The `state` event that carries it.
    pub id: String,
}

/// The query of `/v1/events` and `/v1/poll` (SPEC §3).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code, non_snake_case)]
pub(crate) struct SubscribeParams {
    /// Topic or pattern (`*` one segment, `**` the rest); repeatable.
    #[param(value_type = Option<Vec<PatternText>>)]
    topic: Option<Vec<String>>,
    /// Resume after this id (the Last-Event-ID header wins).
    lastEventId: Option<String>,
    /// On a fresh connect, the last N matching events first (at most
    /// `stream.max_history`, default 1000).
    #[param(maximum = 1000)]
    history: Option<u32>,
    /// On a fresh connect, matching events published at or after this Unix
    /// time in ms.
    since: Option<u64>,
    /// Only these event types; repeatable.
    #[param(value_type = Option<Vec<EventName>>)]
    event: Option<Vec<String>>,
}

/// Every refusal: `{"error": CODE, "message": TEXT}`.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// A stable code, e.g. `invalid_topic`, `unauthorized`, `rate_limited`.
    pub error: String,
    /// What went wrong, for people.
    pub message: String,
}

/// A publish body: one event, or a batch (all or nothing).
// Only a schema: the handlers build this JSON themselves.
#[allow(dead_code)]
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum PublishBody {
    One(Box<PublishRequest>),
    Batch(Vec<PublishRequest>),
}

/// The id of a published event (in the log).
#[derive(Serialize, ToSchema)]
pub(crate) struct Published {
    pub id: String,
}

/// A publish answer: one id, or one per event of a batch, in order.
// Only a schema: the handlers build this JSON themselves.
#[allow(dead_code)]
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum PublishAnswer {
    One(Published),
    Batch(Vec<Published>),
}

#[derive(Serialize, ToSchema)]
pub(crate) struct PolledEvent {
    pub id: String,
    /// SSE event type (`message` by default).
    pub event: String,
    pub data: String,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Reset {
    /// `unknown_id` or `history_expired`.
    pub reason: String,
}

/// A long poll's answer.
#[derive(Serialize, ToSchema)]
pub(crate) struct PollBody {
    pub events: Vec<PolledEvent>,
    /// Send it back as `lastEventId` to continue.
    pub last_event_id: String,
    /// Set when `lastEventId` could not be resumed.
    pub reset: Option<Reset>,
}

/// `{"add": [...], "remove": [...]}`.
#[derive(Serialize, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubscriptionChange {
    #[schema(value_type = Vec<PatternText>)]
    pub add: Vec<String>,
    #[schema(value_type = Vec<PatternText>)]
    pub remove: Vec<String>,
}

/// An open stream's patterns after a change.
#[derive(Serialize, ToSchema)]
pub(crate) struct Subscriptions {
    pub connection_id: String,
    pub topics: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Closed {
    /// Streams closed on this node.
    pub closed: usize,
    /// Clustered: the other nodes were told to close theirs too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwarded: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Status {
    /// `ok`, `ready`, `draining` or `unavailable`.
    pub status: String,
    /// Why the hub is not ready.
    pub reason: Option<String>,
    /// The kind of event log (`memory`, `journal`).
    pub log: Option<String>,
}

/// Totals, or one user's numbers with `?user=`.
// Only a schema: the handlers build this JSON themselves.
#[allow(dead_code)]
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum StatsBody {
    Totals(HubStats),
    User(UserInfo),
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT or API key")
                    .description(Some(
                        "A JWT (SPEC §5) or one of auth.api_keys. Also accepted from the cookie \
                         `herald_token` and the `access_token` query parameter. Not needed in dev mode.",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "A real-time push hub on Server-Sent Events. Errors are JSON {\"error\", \"message\"}.",
    ),
    paths(
        super::events::events,
        super::poll::poll,
        super::publish::publish,
        super::ack::ack,
        super::ops::healthz,
        super::ops::readyz,
        super::ops::metrics,
        super::ops::stats,
        super::ops::presence,
        super::ops::topics,
        super::state::get,
        super::state::put,
        super::state::patch,
        super::state::delete,
        super::console::page,
        super::console::script,
        super::console::redirect,
        super::ops::user,
        super::ops::close_connection,
        super::ops::close_user,
        super::ops::resubscribe,
        openapi_json,
    ),
    components(schemas(
        TopicName, PatternText, EventName, PublishedEventName, ShortName, StatePath, StateChanged, crate::delivery::state::Entry, ErrorBody, PublishBody, PublishRequest, PublishTo, PublishAnswer, Published, PollBody, PolledEvent,
        Reset, SubscriptionChange, Subscriptions, Closed, Status, StatsBody, HubStats, FanoutStats, UserInfo, crate::hub::ClusterStats, crate::hub::NodeStats, crate::hub::NodeTotals,
        Presence, super::ops::TopicCount, EventIdText, super::ack::AckRequest, super::ack::AckAnswer,
        crate::delivery::inbox::InboxTotals, crate::delivery::inbox::UserInboxCounts,
    )),
    modifiers(&BearerAuth, &DestinationRule),
    security(("bearer" = []), ()),
)]
pub(crate) struct ApiDoc;

/// Rules the derive cannot state: an event needs a destination (a topic,
/// addressed users or connections, or `broadcast: true`).
struct DestinationRule;

impl Modify for DestinationRule {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema};
        use utoipa::openapi::RefOr;
        // Any request whose head (request line and headers) is over 64 KiB
        // is answered 431 by the HTTP layer, before routing, without a body.
        for item in openapi.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.post,
                &mut item.delete,
                &mut item.put,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                op.responses.responses.insert(
                    "431".into(),
                    utoipa::openapi::RefOr::T(utoipa::openapi::Response::new(
                        "Request line and headers over 64 KiB (no body)",
                    )),
                );
            }
        }
        // The text shortcut takes an empty body: an event with empty data.
        if let Some(item) = openapi.paths.paths.get_mut("/v1/publish") {
            if let Some(utoipa::openapi::RefOr::T(body)) =
                item.post.as_mut().and_then(|op| op.request_body.as_mut())
            {
                body.required = Some(utoipa::openapi::Required::False);
            }
        }
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        let required = |field: &str, extra: Option<(&str, RefOr<Schema>)>| {
            let mut o = ObjectBuilder::new().required(field);
            if let Some((name, schema)) = extra {
                o = o.property(name, schema);
            }
            RefOr::T(Schema::Object(o.build()))
        };
        let non_empty = || {
            RefOr::T(Schema::Array(
                ArrayBuilder::new().min_items(Some(1)).build(),
            ))
        };
        let topic = RefOr::Ref(utoipa::openapi::Ref::from_schema_name("TopicName"));
        let object = RefOr::T(Schema::Object(
            ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::Object)
                .build(),
        ));
        let destination = utoipa::openapi::schema::AnyOfBuilder::new()
            .item(required("topic", Some(("topic", topic))))
            .item(required("topics", Some(("topics", non_empty()))))
            .item(required("to", Some(("to", object))))
            .item(required(
                "broadcast",
                Some((
                    "broadcast",
                    RefOr::T(Schema::Object(
                        ObjectBuilder::new().enum_values(Some([true])).build(),
                    )),
                )),
            ));
        let addressed = utoipa::openapi::schema::AnyOfBuilder::new()
            .item(required("users", Some(("users", non_empty()))))
            .item(required("connections", Some(("connections", non_empty()))));
        // A batch holds at least one event.
        let request = || RefOr::Ref(utoipa::openapi::Ref::from_schema_name("PublishRequest"));
        let batch = ArrayBuilder::new()
            .items(request())
            .min_items(Some(1))
            .build();
        let body = utoipa::openapi::schema::OneOfBuilder::new()
            .item(request())
            .item(Schema::Array(batch))
            .description(Some(
                "One event, or a batch of at least one (all or nothing)",
            ));
        components
            .schemas
            .insert("PublishBody".into(), RefOr::T(Schema::OneOf(body.build())));
        for (name, rule) in [
            ("PublishRequest", destination.build()),
            ("PublishTo", addressed.build()),
        ] {
            if let Some(RefOr::T(schema)) = components.schemas.remove(name) {
                let all = utoipa::openapi::schema::AllOfBuilder::new()
                    .item(schema)
                    .item(Schema::AnyOf(rule));
                components
                    .schemas
                    .insert(name.into(), RefOr::T(Schema::AllOf(all.build())));
            }
        }
    }
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3 document", content_type = "application/json")))]
pub(crate) async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
