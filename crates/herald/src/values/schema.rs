//! The strings the hub accepts, as OpenAPI schemas: each constraint the
//! hub enforces written once, for the request types (`publish.rs`) and the
//! OpenAPI document (`http/openapi.rs`).

use utoipa::ToSchema;

/// A string with the constraints the hub enforces, for the types below.
fn string_schema(
    description: &str,
    pattern: Option<&str>,
    max_length: usize,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .pattern(pattern)
        .min_length(Some(1))
        .max_length(Some(max_length))
        .into()
}

macro_rules! string_type {
    ($name:ident, $description:expr, $pattern:expr, $max:expr) => {
        #[doc = $description]
        pub(crate) struct $name;

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                string_schema($description, $pattern, $max)
            }
        }

        impl ToSchema for $name {}
    };
}

string_type!(
    TopicName,
    "A topic (SPEC §2): segments of A-Z a-z 0-9 . _ ~ : @ - joined by /.",
    Some(r"^[A-Za-z0-9._~:@-]+(/[A-Za-z0-9._~:@-]+)*$"),
    256
);
string_type!(
    PatternText,
    "A topic or pattern: a segment may be *, the last may be **.",
    Some(r"^(\*\*|([A-Za-z0-9._~:@-]+|\*)(/([A-Za-z0-9._~:@-]+|\*))*(/\*\*)?)$"),
    256
);
string_type!(
    EventName,
    "An event type: no control characters; names starting with herald. are reserved.",
    Some(r"^(?!herald\.)[^\x00-\x1f\x7f-\x9f]+$"),
    256
);
string_type!(
    PublishedEventName,
    "The event type of a published event: no control characters; `state` and names starting with herald. are the hub's own.",
    Some(r"^(?!herald\.)(?!state$)[^\x00-\x1f\x7f-\x9f]+$"),
    256
);
string_type!(
    EventIdText,
    "An event id, as the `id:` field of a stream gives it.",
    Some(r"^[0-9]{1,19}$"),
    19
);
string_type!(ShortName, "A user, connection id or key.", None, 256);
string_type!(
    StatePath,
    "TOPIC/KEY: a topic and a key of the same characters, at least two segments.",
    Some(r"^[A-Za-z0-9._~:@-]+(/[A-Za-z0-9._~:@-]+)+$"),
    256
);
