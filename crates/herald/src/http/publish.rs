//! `POST /v1/publish`: one event, a batch, or the `?topic=` text shortcut.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::openapi::ErrorBody;
use super::{require_publisher, ApiError, Caller};
use crate::hub::Hub;
use crate::requests::publish::PublishRequest;
use crate::values::event::EventId;

/// Publishes and answers once the events are in the log (SPEC §4).
#[utoipa::path(post, path = "/v1/publish", tag = "publish",
    params(
        ("topic" = Option<crate::http::openapi::TopicName>, Query, description = "Text shortcut: the body is the data, as text, on this topic"),
        ("event" = Option<crate::http::openapi::PublishedEventName>, Query, description = "The event type: of the text shortcut's event, or of JSON events that name none"),
    ),
    request_body(content = crate::http::openapi::PublishBody, description = "One event or a batch (JSON); with `?topic=`, any text"),
    responses(
        (status = 200, description = "In the log with the configured durability", body = crate::http::openapi::PublishAnswer),
        (status = 400, description = "Invalid (e.g. CR/LF in `event`, unknown field)", body = ErrorBody),
        (status = 401, description = "Credentials missing, invalid or expired", body = ErrorBody), (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 413, description = "Over `limits.max_event_bytes` or `limits.max_body_bytes`", body = ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = ErrorBody),
        (status = 503, description = "The log cannot be written now; see Retry-After", body = ErrorBody),
    ))]
pub(crate) async fn publish(
    State(hub): State<Hub>,
    caller: Caller,
    RawQuery(query): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::BodyTooLarge(hub.config().limits.max_body_bytes),
        _ => ApiError::BadBody(rejection.body_text()),
    });
    let published = publish_body(&hub, &caller, query.as_deref(), body).await?;
    let mut answers = published
        .ids
        .iter()
        .map(|id| json!({ "id": id.to_string() }));
    Ok(Json(match published.batch {
        true => Value::Array(answers.collect()),
        false => answers.next().expect("one id per event"),
    }))
}

/// The ids a publish was given, in the order of its events.
pub(crate) struct Published {
    pub ids: Vec<EventId>,
    /// The body was an array: the answer is one too.
    pub batch: bool,
}

impl Published {
    /// The answer's JSON, as [`publish`] sends it, appended to `out`.
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        if self.batch {
            out.push(b'[');
        }
        for (i, id) in self.ids.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let _ = write!(out, "{{\"id\":\"{id}\"}}");
        }
        if self.batch {
            out.push(b']');
        }
    }
}

/// A publish after its caller is known: the publisher's checks, then the
/// body (or why it could not be read) into events, then the log. What the
/// router's handler and the server's socket path both run.
pub(crate) async fn publish_body(
    hub: &Hub,
    caller: &Caller,
    query: Option<&str>,
    body: Result<Bytes, ApiError>,
) -> Result<Published, ApiError> {
    require_publisher(hub, caller)?;
    let body = body?;
    let query = shortcut(query)?;
    let default_event = query.as_ref().and_then(|q| q.event.clone());
    let (requests, batch) = match query.filter(|q| q.topic.is_some()) {
        Some(mut request) => {
            let text = String::from_utf8(body.to_vec()).map_err(|_| {
                ApiError::BadBody("the body of a ?topic= publish must be UTF-8 text".into())
            })?;
            request.data = Some(Value::String(text));
            (vec![request], false)
        }
        None => {
            let (mut requests, batch) = parse_json(&body)?;
            if let Some(event) = default_event {
                for request in requests.iter_mut().filter(|r| r.event.is_none()) {
                    request.event = Some(event.clone());
                }
            }
            (requests, batch)
        }
    };
    let ids = hub.publish_as(&caller.identity, requests).await?;
    Ok(Published { ids, batch })
}

/// The query: `?topic=T&event=E` makes the body the data, as text; `?event=E`
/// alone (with a JSON body) is the type of the events that name none.
fn shortcut(query: Option<&str>) -> Result<Option<PublishRequest>, ApiError> {
    let Some(query) = query else { return Ok(None) };
    let mut request = PublishRequest::default();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "access_token" => {}
            "topic" if request.topic.is_none() => request.topic = Some(value.into_owned()),
            "topic" => request.topics.push(value.into_owned()),
            "event" => request.event = Some(value.into_owned()),
            other => {
                return Err(ApiError::BadBody(format!(
                    "unknown query parameter `{other}`; the text shortcut takes `topic` and `event`"
                )))
            }
        }
    }
    Ok(Some(request))
}

/// One JSON object, or an array of them (a batch).
fn parse_json(body: &[u8]) -> Result<(Vec<PublishRequest>, bool), ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadBody(format!("the body is not valid JSON: {e}")))?;
    let one = |v: Value, at: Option<usize>| {
        serde_json::from_value::<PublishRequest>(v).map_err(|e| {
            ApiError::BadBody(match at {
                Some(i) => format!("event {i} of the batch: {e}"),
                None => e.to_string(),
            })
        })
    };
    match value {
        Value::Array(items) => {
            let requests = items
                .into_iter()
                .enumerate()
                .map(|(i, v)| one(v, Some(i)))
                .collect::<Result<_, _>>()?;
            Ok((requests, true))
        }
        Value::Object(_) => Ok((vec![one(value, None)?], false)),
        _ => Err(ApiError::BadBody(
            "the body must be a JSON object or an array of them".into(),
        )),
    }
}

/// Fuzzing entry: a publish request's query and body through parsing and
/// validation, with what every accepted event must satisfy.
#[cfg(feature = "fuzzing")]
pub fn fuzz_publish(query: &str, body: &[u8]) {
    let limits = crate::config::LimitsConfig::default();
    let Ok(query) = shortcut(Some(query)) else {
        return;
    };
    let requests = match query.filter(|q| q.topic.is_some()) {
        Some(mut request) => match std::str::from_utf8(body) {
            Ok(text) => {
                request.data = Some(Value::String(text.to_owned()));
                vec![request]
            }
            Err(_) => return,
        },
        None => match parse_json(body) {
            Ok((requests, _)) => requests,
            Err(_) => return,
        },
    };
    let Ok(drafts) = crate::requests::publish::validate_batch(requests, &limits) else {
        return;
    };
    for draft in drafts {
        assert!(draft.data.len() <= limits.max_event_bytes);
        assert!(draft.target.users.len() <= limits.max_recipients);
        assert!(draft.target.connections.len() <= limits.max_recipients);
        if let Some(name) = &draft.event_type {
            assert!(!name.starts_with("herald.") && name != "state");
            assert!(!name.contains(['\r', '\n']));
        }
        if let Some(filter) = &draft.target.filter {
            let value = Value::Object(filter.clone());
            assert!(crate::values::json::depth(&value) <= crate::values::json::MAX_DEPTH);
        }
        // What is accepted is stored, and reads back the same.
        let event = crate::values::event::Event::commit(draft, crate::values::event::EventId(1), 1);
        let record = crate::log::journal::Record::of(&event);
        let bytes = serde_json::to_vec(&record).expect("records encode");
        let back: crate::log::journal::Record = serde_json::from_slice(&bytes)
            .expect("accepted events read back with the default limit");
        assert_eq!(back.into_event().frame, event.frame);
    }
}
