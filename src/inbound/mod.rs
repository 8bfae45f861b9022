//! The Lambda edges. Every event Lambda hands over is told apart by its
//! shape, before anything deserialises it into a typed event, and sent to
//! the edge that serves it (`http`, `direct`, `sqs`); an edge translates
//! the event into a call of the core (`app`) and the core's answer back
//! into an HTTP response, an invocation result or batch item failures,
//! and decides nothing else.
//!
//! Shape first, because `lambda_http`'s conversion of an event into an HTTP
//! request panics on some shapes no HTTP front end sends, and because an
//! EventBridge event or a Step Functions payload would otherwise be
//! mistaken for one.

pub mod direct;
pub mod http;
pub mod sqs;

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;

use lambda_http::lambda_runtime::Diagnostic;
use lambda_http::request::LambdaRequest;
use lambda_http::{Adapter, Body, Context, LambdaEvent, Request, Response, Service, service_fn};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tracing::Instrument;

use crate::app::{App, Outcome};
use crate::config::Config;
use crate::domain::limits::{DEFAULT_BUDGET, Deadline};
use crate::error::ApiError;
use crate::ops::metrics;

/// What kind of event an invocation carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventKind {
    /// API Gateway (REST or HTTP API), a Function URL or an ALB.
    Http,
    /// An EventBridge event delivered by a rule.
    EventBridge,
    /// A Scheduled Event (`aws.events`): the health check.
    Scheduled,
    /// An SQS batch from the queue's event source mapping.
    Sqs,
    /// A direct invocation (`aws lambda invoke`, a Step Functions task)
    /// whose payload is a generic body.
    Invoke,
    Unknown,
}

/// Tells an event's kind from its shape alone. Pure: the event is not
/// deserialised here.
fn classify(event: &Value) -> EventKind {
    let Some(obj) = event.as_object() else {
        return EventKind::Unknown;
    };
    let ctx = obj.get("requestContext").and_then(Value::as_object);
    let is_http = match ctx {
        // HTTP API v2 and Function URLs carry requestContext.http; REST APIs
        // carry httpMethod at the top; ALBs carry requestContext.elb.
        Some(c) => {
            c.get("http").is_some_and(Value::is_object)
                || c.get("elb").is_some_and(Value::is_object)
                || obj.get("httpMethod").is_some_and(Value::is_string)
        }
        None => false,
    };
    if is_http {
        return EventKind::Http;
    }
    if let Some(records) = obj.get("Records").and_then(Value::as_array) {
        let all_sqs = !records.is_empty()
            && records
                .iter()
                .all(|r| r.get("eventSource").and_then(Value::as_str) == Some("aws:sqs"));
        return if all_sqs {
            EventKind::Sqs
        } else {
            EventKind::Unknown
        };
    }
    let eventbridge = ["detail-type", "source", "id"]
        .iter()
        .all(|k| obj.get(*k).is_some_and(Value::is_string))
        && obj.contains_key("detail");
    if eventbridge {
        let scheduled = obj.get("source").and_then(Value::as_str) == Some("aws.events")
            && obj.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event");
        return match scheduled {
            true => EventKind::Scheduled,
            false => EventKind::EventBridge,
        };
    }
    // A generic body names at least one of its required fields; anything
    // else (`{}`, another service's event) is not ours to guess at.
    if ["ticket", "devices", "comment"]
        .iter()
        .any(|k| obj.contains_key(*k))
    {
        return EventKind::Invoke;
    }
    EventKind::Unknown
}

/// Counts a whole-request failure that stops every offboard until someone
/// acts, for the alarm that pages them: credentials that do not work (the
/// secret, a token refused, a permission missing) and 503s.
pub(crate) fn count_failure(e: &ApiError) {
    let metric = match e {
        ApiError::Credentials(c) if !c.is_retryable() => metrics::names::CREDENTIAL_FAILURE,
        ApiError::MissingPermission(_) => metrics::names::CREDENTIAL_FAILURE,
        e if e.status().as_u16() == 503 => metrics::names::UNAVAILABLE,
        _ => return,
    };
    metrics::count(metric);
}

/// A failed invocation as Lambda reports it: `errorType` and
/// `errorMessage` (the answer's JSON), so that EventBridge, asynchronous
/// invocations and Step Functions can retry on `MdeOffboard.Retryable`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvocationError {
    pub error_type: &'static str,
    pub message: String,
}

pub mod error_types {
    pub const RETRYABLE: &str = "MdeOffboard.Retryable";
    pub const INVALID_REQUEST: &str = "MdeOffboard.InvalidRequest";
    pub const CONFIG_ERROR: &str = "MdeOffboard.ConfigError";
    pub const UNKNOWN_EVENT: &str = "MdeOffboard.UnknownEvent";
    pub const REFUSED: &str = "MdeOffboard.Refused";
}

impl From<InvocationError> for Diagnostic {
    fn from(e: InvocationError) -> Self {
        Diagnostic {
            error_type: e.error_type.to_string(),
            error_message: e.message,
        }
    }
}

impl InvocationError {
    fn unknown(reason: &str) -> Self {
        Self {
            error_type: error_types::UNKNOWN_EVENT,
            message: json!({"error": {"code": "unknown_event", "message": reason}}).to_string(),
        }
    }
}

/// The answer of a direct (non-HTTP) event, from the status and JSON body
/// the HTTP path would have given: 2xx is the answer itself; what HTTP
/// would answer 503 (or 409, still running) fails as retryable; a 4xx as
/// an invalid request; a 500 (configuration, secret, credentials) as a
/// configuration error.
pub fn direct_answer(status: u16, body: &str) -> Result<Value, InvocationError> {
    let error_type = match status {
        200..=299 => {
            return Ok(serde_json::from_str(body).unwrap_or_else(|_| json!({"body": body})));
        }
        409 | 429 | 503 | 504 => error_types::RETRYABLE,
        400..=499 => error_types::INVALID_REQUEST,
        _ => error_types::CONFIG_ERROR,
    };
    Err(InvocationError {
        error_type,
        message: body.to_string(),
    })
}

impl From<ApiError> for InvocationError {
    fn from(e: ApiError) -> Self {
        let body = e.body();
        // A 409 that no retry cures: an event id used for another event.
        if matches!(e, ApiError::DeliveryIdReused) {
            return Self {
                error_type: error_types::INVALID_REQUEST,
                message: body,
            };
        }
        // No error has a 2xx status; were one added, it still fails.
        direct_answer(e.status().as_u16(), &body)
            .err()
            .unwrap_or(Self {
                error_type: error_types::CONFIG_ERROR,
                message: body,
            })
    }
}

/// A use case's answer as a direct event's result.
fn direct_result(answer: Result<Outcome, ApiError>) -> Result<Value, InvocationError> {
    let o = answer?;
    direct_answer(o.status, &o.body)
}

/// What every invocation opens with, whatever its kind: its deadline, its
/// span (request id, cold start, trace id) and its metrics, collected while
/// it runs.
pub(crate) struct Invocation<'a> {
    app: &'a App,
    request_id: String,
    pub deadline: Deadline,
    span: tracing::Span,
}

impl<'a> Invocation<'a> {
    pub fn begin(app: &'a App, request_id: &str, trace_id: Option<&str>, deadline_ms: u64) -> Self {
        let deadline = if deadline_ms > 0 {
            Deadline::from_epoch_millis(deadline_ms)
        } else {
            Deadline::after(DEFAULT_BUDGET)
        };
        let cold_start = app.cold.swap(false, Ordering::Relaxed);
        let span = tracing::info_span!(
            "invocation",
            function_request_id = %request_id,
            cold_start,
            xray_trace_id = trace_id.unwrap_or(""),
        );
        Self {
            app,
            request_id: request_id.to_string(),
            deadline,
            span,
        }
    }

    /// Runs the work in the invocation's span; answers its result and the
    /// metrics it counted (not yet written).
    pub async fn run_metered<T>(self, work: impl Future<Output = T>) -> (T, metrics::Collector) {
        metrics::scope(work.instrument(self.span)).await
    }

    /// Runs the work, then writes its metrics with the dimension `source`.
    pub async fn run<T>(self, source: &str, work: impl Future<Output = T>) -> T {
        let (app, request_id) = (self.app, self.request_id.clone());
        let (out, collected) = self.run_metered(work).await;
        collected.emit(&app.config().metrics_namespace, source, &request_id);
        out
    }
}

/// Which events this function serves (contract, "Doors"), in one place.
/// SQS batches everywhere: each message carries its seal. HTTP events only
/// where `MDE_MODE` is not `worker`. EventBridge events and direct
/// invocations only where `DIRECT_EVENTS` names them: whoever may invoke
/// the function can hand it any payload, so each such door is one an
/// operator chose to open.
fn door(kind: EventKind, config: &Config) -> Result<(), (&'static str, &'static str)> {
    let open = match kind {
        EventKind::Sqs => return Ok(()),
        _ if config.worker => {
            return Err((
                "not_a_worker_event",
                "this function serves SQS batches only (MDE_MODE=worker)",
            ));
        }
        // The health check reads and never offboards: served wherever
        // HTTP is, whatever DIRECT_EVENTS says.
        EventKind::Http | EventKind::Scheduled | EventKind::Unknown => true,
        EventKind::EventBridge => config.direct_events.eventbridge,
        EventKind::Invoke => config.direct_events.invoke,
    };
    match open {
        true => Ok(()),
        false => Err((
            "event_kind_disabled",
            "this kind of event is not served here: DIRECT_EVENTS does not name it",
        )),
    }
}

/// A refused event: nothing is called, and the audit trail says so.
fn refused(kind: EventKind, (code, message): (&str, &str), request_id: &str) -> InvocationError {
    metrics::count(metrics::names::EVENT_REFUSED);
    tracing::warn!(
        target: "audit",
        event = "event_refused",
        status = "rejected",
        kind = ?kind,
        code,
        function_request_id = %request_id,
        "event refused at the door; nothing was called"
    );
    InvocationError {
        error_type: error_types::REFUSED,
        message: json!({"error": {"code": code, "message": format!("{message}.")}}).to_string(),
    }
}

/// Serves one invocation of any kind. The payload comes as the invoker
/// wrote it: a generic body read from it is as strict as over HTTP (a field
/// given twice is refused, which a parsed `Value` would hide).
pub async fn dispatch(
    app: &App,
    event: LambdaEvent<Box<RawValue>>,
) -> Result<Value, InvocationError> {
    let LambdaEvent {
        payload: raw,
        context,
    } = event;
    let payload: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
    let kind = classify(&payload);
    if let Err(why) = door(kind, app.config()) {
        let id = &context.request_id;
        let (e, m) = metrics::scope(async { refused(kind, why, id) }).await;
        m.emit(&app.config().metrics_namespace, "door", id);
        return Err(e);
    }
    match kind {
        EventKind::Http => http_event(app, payload, context).await,
        EventKind::Sqs => {
            let batch = serde_json::from_value(payload)
                .map_err(|e| InvocationError::unknown(&format!("not an SQS batch: {e}")))?;
            let answer = sqs::handle_queue(app, batch, &context.request_id, context.deadline).await;
            Ok(serde_json::to_value(answer).unwrap_or_default())
        }
        EventKind::EventBridge if direct::is_scale_in(app, &payload) => {
            direct::scale_in(app, raw.get(), &payload, &context).await
        }
        EventKind::EventBridge => {
            direct_result(direct::eventbridge(app, raw.get(), &payload, &context).await)
        }
        EventKind::Invoke => direct_result(direct::invoke(app, raw.get(), &context).await),
        EventKind::Scheduled => Ok(direct::scheduled(app, &context).await),
        EventKind::Unknown => {
            tracing::warn!(
                function_request_id = %context.request_id,
                "an event of unknown shape; nothing was called"
            );
            Err(InvocationError::unknown(
                "the event is neither an HTTP request, an EventBridge event, an SQS batch nor a generic body",
            ))
        }
    }
}

/// An HTTP event through `lambda_http`'s own adapter (request conversion,
/// X-Ray header, the answer shaped for the front end that sent it).
async fn http_event(app: &App, payload: Value, context: Context) -> Result<Value, InvocationError> {
    let request: LambdaRequest = serde_json::from_value(payload)
        .map_err(|e| InvocationError::unknown(&format!("not an HTTP event: {e}")))?;
    let mut adapter = Adapter::from(service_fn(|req: Request| async move {
        Ok::<Response<Body>, std::convert::Infallible>(http::handle(app, req).await)
    }));
    // The conversion inside `call` panics on some malformed shapes (an
    // invalid URI or header); such an event is refused, not a crash.
    let future = std::panic::catch_unwind(AssertUnwindSafe(|| {
        adapter.call(LambdaEvent::new(request, context))
    }))
    .map_err(|_| InvocationError::unknown("an HTTP event that cannot be read as a request"))?;
    let answer = future.await.unwrap_or_else(|never| match never {});
    serde_json::to_value(answer)
        .map_err(|e| InvocationError::unknown(&format!("the answer does not serialise: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(v: Value) -> EventKind {
        classify(&v)
    }

    #[test]
    fn http_shapes() {
        assert_eq!(
            kind(
                json!({"requestContext": {"http": {"method": "POST"}}, "rawPath": "/v1/offboard"})
            ),
            EventKind::Http
        );
        assert_eq!(
            kind(json!({"httpMethod": "POST", "requestContext": {"stage": "prod"}})),
            EventKind::Http
        );
        assert_eq!(
            kind(json!({"httpMethod": "GET", "requestContext": {"elb": {"targetGroupArn": "x"}}})),
            EventKind::Http
        );
    }

    #[test]
    fn eventbridge_sqs_and_invoke_shapes() {
        assert_eq!(
            kind(
                json!({"version": "0", "id": "e1", "detail-type": "x", "source": "y", "detail": {}})
            ),
            EventKind::EventBridge
        );
        let tick = json!({"version": "0", "id": "e2", "detail-type": "Scheduled Event",
            "source": "aws.events", "detail": {}});
        assert_eq!(kind(tick.clone()), EventKind::Scheduled);
        let mut c = Config::from_lookup(|k| (k == "SECRET_ID").then(|| "s".to_string())).unwrap();
        assert!(
            door(EventKind::Scheduled, &c).is_ok(),
            "served without DIRECT_EVENTS"
        );
        c.worker = true;
        assert!(
            door(EventKind::Scheduled, &c).is_err(),
            "a worker serves SQS only"
        );
        assert_eq!(
            kind(json!({"Records": [{"eventSource": "aws:sqs", "body": "{}"}]})),
            EventKind::Sqs
        );
        assert_eq!(
            kind(json!({"ticket": "T-1", "comment": "c", "devices": ["a"]})),
            EventKind::Invoke
        );
    }

    #[test]
    fn other_shapes_are_unknown() {
        for v in [
            json!(null),
            json!([]),
            json!("text"),
            json!({}),
            json!({"Records": [{"eventSource": "aws:sns"}]}),
            json!({"Records": []}),
            json!({"requestContext": {}}),
            json!({"detail-type": "x", "source": "y"}),
        ] {
            assert_eq!(kind(v.clone()), EventKind::Unknown, "{v}");
        }
    }

    #[test]
    fn direct_answers_follow_the_http_status() {
        assert_eq!(direct_answer(200, r#"{"a":1}"#), Ok(json!({"a": 1})));
        assert_eq!(
            direct_answer(202, r#"{"status":"ignored"}"#).unwrap()["status"],
            "ignored"
        );
        let e = |s| direct_answer(s, "{}").unwrap_err().error_type;
        assert_eq!(e(503), error_types::RETRYABLE);
        assert_eq!(e(409), error_types::RETRYABLE);
        assert_eq!(e(400), error_types::INVALID_REQUEST);
        assert_eq!(e(422), error_types::INVALID_REQUEST);
        assert_eq!(e(500), error_types::CONFIG_ERROR);
        let err = direct_answer(503, r#"{"ticket":"T"}"#).unwrap_err();
        assert_eq!(err.message, r#"{"ticket":"T"}"#);
        // Still running elsewhere is retried; an id used for another event
        // never will be.
        let of = |e: ApiError| InvocationError::from(e).error_type;
        assert_eq!(
            of(ApiError::InProgress(std::time::Duration::from_secs(1))),
            error_types::RETRYABLE
        );
        assert_eq!(of(ApiError::DeliveryIdReused), error_types::INVALID_REQUEST);
    }

    fn config(env: &[(&str, &str)]) -> Result<Config, crate::config::ConfigError> {
        Config::from_lookup(|k| {
            [("SECRET_ID", "s")]
                .iter()
                .chain(env)
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn each_door_opens_only_where_configured() {
        let code =
            |kind, env: &[(&str, &str)]| door(kind, &config(env).unwrap()).err().map(|e| e.0);
        let all = [
            EventKind::Http,
            EventKind::Sqs,
            EventKind::EventBridge,
            EventKind::Invoke,
            EventKind::Unknown,
        ];
        // By default: HTTP, SQS (and the unknown shape, refused later as
        // UnknownEvent); EventBridge and invoke are shut.
        let shut: Vec<_> = all.iter().map(|k| code(*k, &[])).collect();
        assert_eq!(
            shut,
            [
                None,
                None,
                Some("event_kind_disabled"),
                Some("event_kind_disabled"),
                None
            ]
        );
        let open = [("DIRECT_EVENTS", "invoke, EventBridge")];
        assert!(all.iter().all(|k| code(*k, &open).is_none()));
        // The worker: SQS only, whatever DIRECT_EVENTS says.
        let worker = [
            ("MDE_MODE", "worker"),
            ("DIRECT_EVENTS", "eventbridge,invoke"),
        ];
        for k in all {
            let expected = (k != EventKind::Sqs).then_some("not_a_worker_event");
            assert_eq!(code(k, &worker), expected, "{k:?}");
        }
        let bad = config(&[("DIRECT_EVENTS", "eventbridge,sns")]).unwrap_err();
        assert_eq!(bad.var, "DIRECT_EVENTS");
        assert!(bad.reason.contains("'sns'"), "{bad}");
    }
}
