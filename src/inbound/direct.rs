//! Events that do not come through HTTP: an EventBridge event from a rule,
//! and a direct invocation (`aws lambda invoke`, a Step Functions task)
//! whose payload is a generic body. IAM (the function's resource policy)
//! authenticated them before they arrived, so there is no signature to
//! check; the rest is the core's `deliver`, as for HTTP.

use lambda_http::Context;
use serde_json::{Value, json};

use super::{Invocation, InvocationError, error_types};
use crate::app::audit::Origin;
use crate::app::idempotency::{DeliveryKey, EVENTBRIDGE_ROUTE, INVOKE_ROUTE};
use crate::app::lifecycle::ScaleInError;
use crate::app::offboarding::{Content, Delivery};
use crate::app::{App, Outcome};
use crate::domain::limits::Deadline;
use crate::error::ApiError;
use crate::inbound::http::MAX_BODY_BYTES;
use crate::intake::generic;
use crate::intake::sources::{EVENTBRIDGE, INVOKE};

/// A Scheduled Event (the template's rule, every 15 minutes): the health
/// check. Its answer is the JSON itself, never an invocation error: a
/// failing check pages through its metric, not through Lambda's errors.
pub async fn scheduled(app: &App, ctx: &Context) -> Value {
    let inv = Invocation::begin(
        app,
        &ctx.request_id,
        ctx.xray_trace_id.as_deref(),
        ctx.deadline,
    );
    let deadline = inv.deadline;
    inv.run("health", async {
        let answer = app
            .health(&crate::domain::tenant::TenantAllow::All, None, &deadline)
            .await;
        tracing::info!(status = %answer["status"], "health check run");
        answer
    })
    .await
}

/// An EventBridge event: the first source definition whose `eventbridge`
/// lists match it maps it; else its `detail` is a generic body. Its `id`,
/// kept across EventBridge's retries, is the delivery key: IAM admitted the
/// event, so the id is as trustworthy as a signed one.
pub async fn eventbridge(
    app: &App,
    raw: &str,
    event: &Value,
    ctx: &Context,
) -> Result<Outcome, ApiError> {
    let def = app.config().sources.for_eventbridge(event);
    let source = def.map_or(EVENTBRIDGE, |d| d.name.as_str());
    // An EventBridge event always has an `id` (`inbound::classify`).
    let id = event.get("id").and_then(Value::as_str).unwrap_or_default();
    let key = DeliveryKey::signed_id(source, id, EVENTBRIDGE_ROUTE, raw.as_bytes());
    let origin = Origin::new(source, None, Some(id.to_string()));
    let content = match def {
        // A source's mapping: content it cannot map is ignored, as for
        // webhooks, since the rule's sender cannot fix it.
        Some(def) => Content::Mapped { def, doc: event },
        // `detail` is a generic body, as strict as over HTTP.
        None => {
            let detail = match strict(raw) {
                Ok(strict) => strict.get("detail").cloned().unwrap_or(Value::Null),
                Err(e) => return run(app, ctx, &origin.source, async |_| Err(e)).await,
            };
            let d = Delivery {
                origin,
                key,
                content: Content::Generic(&detail),
            };
            return deliver(app, ctx, d).await;
        }
    };
    deliver(
        app,
        ctx,
        Delivery {
            origin,
            key,
            content,
        },
    )
    .await
}

/// Whether an EventBridge event is an Auto Scaling termination hook's that
/// no source definition claims (a source written for these events keeps
/// mapping them as before).
pub fn is_scale_in(app: &App, event: &Value) -> bool {
    crate::domain::lifecycle::is_scale_in(event)
        && app.config().sources.for_eventbridge(event).is_none()
}

/// A termination hook's event (contract, "Auto Scaling lifecycle hooks"),
/// keyed by its `id` as any EventBridge event; the use case is
/// `App::scale_in`.
pub async fn scale_in(
    app: &App,
    raw: &str,
    event: &Value,
    ctx: &Context,
) -> Result<Value, InvocationError> {
    let id = event.get("id").and_then(Value::as_str).unwrap_or_default();
    let key = DeliveryKey::signed_id(EVENTBRIDGE, id, EVENTBRIDGE_ROUTE, raw.as_bytes());
    let origin = Origin::new(EVENTBRIDGE, None, Some(id.to_string()));
    let inv = Invocation::begin(
        app,
        &ctx.request_id,
        ctx.xray_trace_id.as_deref(),
        ctx.deadline,
    );
    let deadline = inv.deadline;
    inv.run(EVENTBRIDGE, async {
        let answer = match strict(raw) {
            Ok(_) => app.scale_in(event, origin, key, &deadline).await,
            Err(e) => Err(e.into()),
        };
        let out = match answer {
            Ok(o) => super::direct_answer(o.status, &o.body),
            Err(ScaleInError::Api(e)) => {
                super::count_failure(&e);
                Err(e.into())
            }
            Err(ScaleInError::Unconfigured { var, reason }) => Err(InvocationError {
                error_type: error_types::CONFIG_ERROR,
                message: json!({"error": {"code": "not_configured",
                    "message": format!("{var} {reason}.")}})
                .to_string(),
            }),
            // AWS's own text (it can name the account) stays in the log.
            Err(ScaleInError::Lifecycle(e)) => {
                tracing::warn!(error = %e, "the lifecycle action could not be completed");
                let (error_type, code, message) = match e.passing {
                    true => (
                        error_types::RETRYABLE,
                        "autoscaling_unavailable",
                        "Auto Scaling could not be reached to complete the lifecycle action; retry later.",
                    ),
                    false => (
                        error_types::CONFIG_ERROR,
                        "autoscaling_refused",
                        "Auto Scaling refused to complete the lifecycle action (the function's role needs autoscaling:CompleteLifecycleAction on the group); the function's log says why.",
                    ),
                };
                Err(InvocationError {
                    error_type,
                    message: json!({"error": {"code": code, "message": message}}).to_string(),
                })
            }
        };
        match &out {
            Ok(_) => tracing::info!(source = EVENTBRIDGE, "lifecycle event handled"),
            Err(e) => tracing::info!(source = EVENTBRIDGE, error_type = e.error_type, "lifecycle event failed"),
        }
        out
    })
    .await
}

/// A direct invocation whose payload is a generic body, as strict as over
/// HTTP; it has no id, so its bytes are its key.
pub async fn invoke(app: &App, raw: &str, ctx: &Context) -> Result<Outcome, ApiError> {
    let delivery = Delivery {
        origin: Origin::new(INVOKE, None, None),
        key: DeliveryKey::body_hash(INVOKE, INVOKE_ROUTE, raw.as_bytes()),
        content: Content::GenericText(raw.as_bytes()),
    };
    if raw.len() > MAX_BODY_BYTES {
        return run(app, ctx, INVOKE, async |_| Err(ApiError::TooLarge)).await;
    }
    deliver(app, ctx, delivery).await
}

/// The event read strictly: no field given twice, at most 256 KiB.
fn strict(raw: &str) -> Result<Value, ApiError> {
    if raw.len() > MAX_BODY_BYTES {
        return Err(ApiError::TooLarge);
    }
    Ok(generic::strict_json(raw.as_bytes())?)
}

async fn deliver(app: &App, ctx: &Context, d: Delivery<'_>) -> Result<Outcome, ApiError> {
    let source = d.origin.source.clone();
    run(app, ctx, &source, async |deadline: Deadline| {
        let secret = app.secrets().get().await?;
        app.deliver(d, &secret, &deadline).await
    })
    .await
}

/// The invocation around the work, and its one log line.
async fn run(
    app: &App,
    ctx: &Context,
    source: &str,
    work: impl AsyncFnOnce(Deadline) -> Result<Outcome, ApiError>,
) -> Result<Outcome, ApiError> {
    let inv = Invocation::begin(
        app,
        &ctx.request_id,
        ctx.xray_trace_id.as_deref(),
        ctx.deadline,
    );
    let deadline = inv.deadline;
    inv.run(source, async {
        let answer = work(deadline).await;
        match &answer {
            Ok(o) => tracing::info!(source = %source, status = o.status, "event handled"),
            Err(e) => {
                super::count_failure(e);
                tracing::info!(source = %source, status = e.status().as_u16(), code = e.code(), reason = %e, "event refused")
            }
        }
        answer
    })
    .await
}
