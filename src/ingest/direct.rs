//! Events that do not come through HTTP: an EventBridge event from a rule,
//! and a direct invocation (`aws lambda invoke`, a Step Functions task)
//! whose payload is a generic body. IAM (the function's resource policy)
//! authenticated them before they arrived, so there is no signature to
//! check; the rest is the HTTP path's: replay, mapping, validation, the
//! domain. The answer is built as the HTTP path builds it, and
//! `dispatch::direct_answer` turns it into the invocation's result.

use std::sync::atomic::Ordering;

use lambda_http::http::StatusCode;
use lambda_http::{Body, Context, Response};
use serde_json::{Value, json};
use tracing::Instrument;

use crate::App;
use crate::dispatch::EventKind;
use crate::domain::limits::{DEFAULT_BUDGET, Deadline};
use crate::error::ApiError;
use crate::ingest::input;
use crate::ingest::replay::DeliveryKey;
use crate::ingest::{Caller, Intake};
use crate::ops::metrics;

/// The built-in source of EventBridge events no definition claims.
pub const EVENTBRIDGE: &str = "eventbridge";
/// The source of direct invocations.
pub const INVOKE: &str = "invoke";

impl App {
    /// One EventBridge event or direct invocation; never fails, every error
    /// becomes an answer with the status the HTTP path would give.
    pub async fn handle_direct(
        &self,
        kind: EventKind,
        event: Value,
        ctx: &Context,
    ) -> Response<Body> {
        let deadline = if ctx.deadline > 0 {
            Deadline::from_epoch_millis(ctx.deadline)
        } else {
            Deadline::after(DEFAULT_BUDGET)
        };
        let cold_start = self.cold.swap(false, Ordering::Relaxed);
        let span = tracing::info_span!(
            "invocation",
            function_request_id = %ctx.request_id,
            cold_start,
            xray_trace_id = ctx.xray_trace_id.as_deref().unwrap_or(""),
        );
        let source = match kind {
            EventKind::EventBridge => self.eventbridge_source(&event),
            _ => INVOKE.to_string(),
        };
        let work = {
            let source = source.clone();
            async move {
                match self.direct(kind, &source, &event, &deadline).await {
                    Ok(resp) => {
                        tracing::info!(source = %source, status = resp.status().as_u16(), "event handled");
                        resp
                    }
                    Err(e) => {
                        tracing::info!(source = %source, status = e.status().as_u16(), code = e.code(), reason = %e, "event refused");
                        e.into_response()
                    }
                }
            }
        }
        .instrument(span);
        let (resp, collected) = metrics::scope(work).await;
        collected.emit(&self.config.metrics_namespace, &source, &ctx.request_id);
        resp
    }

    /// The source an EventBridge event belongs to: the first definition
    /// whose `eventbridge` lists match it, else the built-in one.
    fn eventbridge_source(&self, event: &Value) -> String {
        self.config
            .sources
            .for_eventbridge(event)
            .map(|d| d.name.clone())
            .unwrap_or_else(|| EVENTBRIDGE.to_string())
    }

    async fn direct(
        &self,
        kind: EventKind,
        source: &str,
        event: &Value,
        deadline: &Deadline,
    ) -> Result<Response<Body>, ApiError> {
        let body = serde_json::to_vec(event).unwrap_or_default();
        // EventBridge gives every event an id, kept across its retries: the
        // delivery key. A direct invocation has none; its body is its key.
        let webhook_id = match kind {
            EventKind::EventBridge => event.get("id").and_then(Value::as_str).map(str::to_string),
            _ => None,
        };
        let caller = Caller {
            source: source.to_string(),
            source_ip: None,
            webhook_id,
            ..Default::default()
        };
        // IAM admitted the event, so its id is as trustworthy as a signed one.
        let key = match &caller.webhook_id {
            Some(id) => DeliveryKey::signed_id(source, id),
            None => DeliveryKey::body_hash(source, &body),
        };
        let secret = self.secrets.get().await?;
        self.once(&caller, &key, deadline, async {
            // The generic body's callback_url, or a source's write-back
            // target, follow the devices to their final state.
            let generic = |v: &Value| -> Result<(Intake, Caller), ApiError> {
                let body = input::parse_generic_body(v, &self.config.callback_hosts)?;
                let caller = Caller {
                    callback_url: body.callback_url.as_ref().map(|u| u.as_str().to_string()),
                    ..caller.clone()
                };
                Ok((Intake::Act(body.request), caller))
            };
            let (intake, caller) = match (kind, self.config.sources.get(source)) {
                // A source's mapping: content it cannot map is ignored,
                // as for webhooks, since the rule's sender cannot fix it.
                (EventKind::EventBridge, Some(def)) if source != EVENTBRIDGE => {
                    let intake = self.admit(def, event, &caller);
                    let notify = match (&intake, &def.notify) {
                        (Intake::Act(r), Some(n)) => n.target(event, r.ticket.as_str()),
                        _ => None,
                    };
                    (
                        intake,
                        Caller {
                            notify,
                            ..caller.clone()
                        },
                    )
                }
                (EventKind::EventBridge, _) => {
                    generic(&event.get("detail").cloned().unwrap_or(Value::Null))?
                }
                _ => generic(event)?,
            };
            match intake {
                Intake::Act(request) => self.execute(request, &secret, &caller, deadline).await,
                Intake::Ignored(reason) => Ok(Response::builder()
                    .status(StatusCode::ACCEPTED)
                    .header("content-type", "application/json")
                    .body(Body::Text(
                        json!({"status": "ignored", "reason": reason}).to_string(),
                    ))
                    .expect("static headers are valid")),
            }
        })
        .await
    }
}
