//! `POST /v1/publish`: one event, a batch, or the `?topic=` text shortcut.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::{require_loopback_in_dev_mode, ApiError, Caller};
use crate::hub::Hub;
use crate::publish::PublishRequest;

/// Publishes and answers once the events are in the log (SPEC §4).
pub async fn publish(
    State(hub): State<Hub>,
    caller: Caller,
    RawQuery(query): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    require_loopback_in_dev_mode(&hub, &caller)?;
    hub.rates()
        .check_publish(&caller.identity.rate_key(caller.peer))
        .map_err(ApiError::RateLimited)?;
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::BodyTooLarge(hub.config().limits.max_body_bytes),
        _ => ApiError::BadBody(rejection.body_text()),
    })?;
    let (requests, batch) = match shortcut(query.as_deref())? {
        Some(mut request) => {
            let text = String::from_utf8(body.to_vec()).map_err(|_| {
                ApiError::BadBody("the body of a ?topic= publish must be UTF-8 text".into())
            })?;
            request.data = Some(Value::String(text));
            (vec![request], false)
        }
        None => parse_json(&body)?,
    };
    let ids = hub.publish_as(&caller.identity, requests).await?;
    let mut answers = ids.iter().map(|id| json!({ "id": id.to_string() }));
    Ok(Json(match batch {
        true => Value::Array(answers.collect()),
        false => answers.next().expect("one id per event"),
    }))
}

/// `?topic=T&event=E`: the body is the data, as text.
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
    Ok(request.topic.is_some().then_some(request))
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
