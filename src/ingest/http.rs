//! The HTTP routes (API Gateway REST and HTTP APIs, Function URLs, ALB):
//! routing, each route's authentication, and answer writing. The work
//! itself is the shared ingest path in `ingest`.

use std::time::SystemTime;

use lambda_http::http::StatusCode;
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tracing::Instrument;

use super::auth::{Admitted, AuthDef, Presented};
use super::input;
use super::{App, Caller, GENERIC, Intake, delivery_key, header, json_response};
use crate::domain::defender::{DefenderError, MachineAction};
use crate::domain::ledger::ActionStatus;
use crate::domain::limits::{DEFAULT_BUDGET, Deadline};
use crate::domain::secret::AppSecret;
use crate::error::ApiError;
use crate::ops::metrics;
use crate::support::time::unix_now;

/// Bodies above this are refused before any work (413).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// MachineAction ids are GUIDs; anything else cannot exist.
fn action_ref(action_id: &str) -> Result<&str, ApiError> {
    if action_id.len() > 64
        || !action_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(ApiError::ActionNotFound(action_id.to_string()));
    }
    Ok(action_id)
}

fn action_json(a: &MachineAction) -> Value {
    json!({
        "action_id": a.id,
        "machine_id": a.machine_id,
        "type": a.action_type,
        "status": a.status,
        "last_update": a.last_update(),
    })
}

fn body_bytes(req: &Request) -> Result<&[u8], ApiError> {
    let body: &[u8] = req.body().as_ref();
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::TooLarge);
    }
    Ok(body)
}

/// The path without an API Gateway stage prefix: REST APIs and named HTTP
/// API stages put `/{stage}` in front of the route.
fn route_path(req: &Request) -> String {
    let path = req.uri().path();
    let stage = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV1(c)) => c.stage.clone(),
        Some(RequestContext::ApiGatewayV2(c)) => c.stage.clone(),
        _ => None,
    };
    if let Some(stage) = stage.filter(|s| !s.is_empty() && s != "$default") {
        let prefix = format!("/{stage}/");
        if path.starts_with(&prefix) && !path.starts_with("/v1/") {
            return path[prefix.len() - 1..].to_string();
        }
    }
    path.to_string()
}

/// The IAM caller's ARN, where AWS authorised the call: an HTTP API or a
/// Function URL with `AWS_IAM` (`requestContext.authorizer.iam`), or a
/// REST API with IAM authorisation (`requestContext.identity.userArn`).
fn caller_arn(req: &Request) -> Option<String> {
    match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(c)) => c
            .authorizer
            .as_ref()
            .and_then(|a| a.iam.as_ref())
            .and_then(|iam| iam.user_arn.clone()),
        Some(RequestContext::ApiGatewayV1(c)) => c.identity.user_arn.clone(),
        _ => None,
    }
    .filter(|arn| !arn.is_empty())
}

/// The caller's address for the audit line. API Gateway (HTTP API, REST
/// API) and Function URLs put the connection's address in the request
/// context; any header is the caller's own writing there. An ALB has no
/// context address, so it is the last `X-Forwarded-For` entry: the one the
/// ALB appended, after whatever the caller sent.
fn source_ip(req: &Request) -> Option<String> {
    let ip = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(c)) => c.http.source_ip.clone(),
        Some(RequestContext::ApiGatewayV1(c)) => c.identity.source_ip.clone(),
        Some(RequestContext::Alb(_)) => req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .map(str::to_string),
        _ => None,
    }?;
    // Only an address is written to the audit log, never free text.
    ip.trim()
        .parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| ip.to_string())
}

impl App {
    /// One invocation: never fails, every error becomes a JSON answer.
    pub async fn handle(&self, req: Request) -> Response<Body> {
        let ctx = req.lambda_context_ref();
        let request_id = ctx.map(|c| c.request_id.clone()).unwrap_or_default();
        let trace_id = ctx.and_then(|c| c.xray_trace_id.clone());
        let deadline = ctx
            .filter(|c| c.deadline > 0)
            .map(|c| Deadline::from_epoch_millis(c.deadline))
            .unwrap_or_else(|| Deadline::after(DEFAULT_BUDGET));
        let cold_start = self.cold.swap(false, Ordering::Relaxed);
        let span = tracing::info_span!(
            "invocation",
            function_request_id = %request_id,
            cold_start,
            xray_trace_id = trace_id.as_deref().unwrap_or(""),
        );
        let path = route_path(&req);
        let source = match path.strip_prefix("/v1/webhooks/") {
            Some(name) if self.config.sources.get(name).is_some() => name.to_string(),
            _ => GENERIC.to_string(),
        };
        let work = async move {
            let method = req.method().clone();
            match self.route(&req, &path, &deadline).await {
                Ok(resp) => {
                    tracing::info!(http_method = %method, path = %path, status = resp.status().as_u16(), "request handled");
                    resp
                }
                Err(e) => {
                    if matches!(e, ApiError::Unauthorized(_)) {
                        metrics::count(metrics::names::AUTH_REJECTED);
                    }
                    let level_warn = e.status().is_server_error();
                    if level_warn {
                        tracing::warn!(http_method = %method, path = %path, status = e.status().as_u16(), code = e.code(), reason = %e, "request refused");
                    } else {
                        tracing::info!(http_method = %method, path = %path, status = e.status().as_u16(), code = e.code(), reason = %e, "request refused");
                    }
                    e.into_response()
                }
            }
        }
        .instrument(span);
        let (resp, collected) = metrics::scope(work).await;
        collected.emit(&self.config.metrics_namespace, &source, &request_id);
        resp
    }

    async fn route(
        &self,
        req: &Request,
        path: &str,
        deadline: &Deadline,
    ) -> Result<Response<Body>, ApiError> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let allow = |allowed: &'static str| -> Result<(), ApiError> {
            if req.method().as_str() == allowed {
                Ok(())
            } else {
                Err(ApiError::MethodNotAllowed {
                    method: req.method().to_string(),
                    path: path.to_string(),
                    allowed,
                })
            }
        };
        match segments.as_slice() {
            ["v1", "offboard"] => {
                allow("POST")?;
                self.offboard_generic(req, deadline).await
            }
            ["v1", "webhooks", source] if !source.is_empty() => {
                allow("POST")?;
                self.webhook(req, source, deadline).await
            }
            ["v1", "actions", action_id] if !action_id.is_empty() => {
                allow("GET")?;
                self.action_status(req, action_id, deadline).await
            }
            ["v1", "actions", action_id, "cancel"] if !action_id.is_empty() => {
                allow("POST")?;
                self.cancel(req, action_id, deadline).await
            }
            ["v1", "tickets", ticket] if !ticket.is_empty() && self.ledger.is_some() => {
                allow("GET")?;
                self.ticket(req, ticket).await
            }
            _ => Err(ApiError::NoRoute(path.to_string())),
        }
    }

    async fn offboard_generic(
        &self,
        req: &Request,
        deadline: &Deadline,
    ) -> Result<Response<Body>, ApiError> {
        let body = body_bytes(req)?;
        let (secret, admitted) = self.authenticate(req, body, self.generic_auth()).await?;
        let caller = Caller {
            source: GENERIC.into(),
            source_ip: source_ip(req),
            webhook_id: admitted.delivery_id,
            ..Default::default()
        };
        // Standard Webhooks signs its webhook-id.
        let key = delivery_key(GENERIC, caller.webhook_id.as_deref(), body);
        self.once(&caller, &key, deadline, async {
            let value = input::strict_json(body).map_err(|e| match e {
                input::JsonError::Syntax(m) => ApiError::NotJson(m),
                input::JsonError::Field(f) => ApiError::Field(f),
            })?;
            let body = input::parse_generic_body(&value, &self.config.callback_hosts)?;
            let caller = Caller {
                callback_url: body.callback_url.as_ref().map(|u| u.as_str().to_string()),
                ..caller.clone()
            };
            self.execute(body.request, &secret, &caller, deadline).await
        })
        .await
    }

    /// `POST /v1/webhooks/{source}`: the source's own authentication and
    /// mapping, then the same pipeline as the generic route. Once the
    /// sender is authenticated, nothing about its content is answered 4xx:
    /// the sender cannot fix it, and some (PagerDuty) disable a
    /// subscription after a few 4xx, silencing the offboards that follow.
    async fn webhook(
        &self,
        req: &Request,
        name: &str,
        deadline: &Deadline,
    ) -> Result<Response<Body>, ApiError> {
        let def = self
            .config
            .sources
            .get(name)
            .ok_or_else(|| ApiError::UnknownSource(name.to_string()))?;
        let body = body_bytes(req)?;
        let (secret, admitted) = self.authenticate(req, body, &def.auth).await?;
        // Only an id the signature covers keys replay; an unsigned one
        // still names the delivery in the audit line.
        let signed_id = admitted.delivery_id.clone();
        let webhook_id = admitted.delivery_id.or_else(|| {
            def.id_header
                .as_deref()
                .and_then(|h| header(req.headers(), h))
                .map(str::to_string)
        });
        // A sender whose body is not JSON is misconfigured, not sending
        // content it could not fix: that stays a 400.
        let value: Value =
            serde_json::from_slice(body).map_err(|e| ApiError::NotJson(e.to_string()))?;
        if let Some(f) = &def.freshness {
            f.check(&value, SystemTime::now())?;
        }
        let caller = Caller {
            source: name.to_string(),
            source_ip: source_ip(req),
            webhook_id,
            ..Default::default()
        };
        let key = delivery_key(name, signed_id.as_deref(), body);
        self.once(&caller, &key, deadline, async {
            match self.admit(def, &value, &caller) {
                Intake::Act(request) => {
                    let caller = Caller {
                        notify: def
                            .notify
                            .as_ref()
                            .and_then(|n| n.target(&value, request.ticket.as_str())),
                        ..caller.clone()
                    };
                    self.execute(request, &secret, &caller, deadline).await
                }
                Intake::Ignored(reason) => Ok(json_response(
                    StatusCode::ACCEPTED,
                    &json!({"status": "ignored", "reason": reason}),
                )),
            }
        })
        .await
    }

    /// The auth of the built-in source `generic`: the generic route, the
    /// action routes and the ticket route.
    fn generic_auth(&self) -> &AuthDef {
        self.config.sources.generic_auth()
    }

    /// Checks a request as `auth` says. A request without the headers its
    /// schemes read is refused before the secret is fetched, so unsigned
    /// floods cost no Secrets Manager call.
    async fn authenticate(
        &self,
        req: &Request,
        body: &[u8],
        auth: &AuthDef,
    ) -> Result<(Arc<AppSecret>, Admitted), ApiError> {
        let arn = caller_arn(req);
        let presented = Presented {
            headers: req.headers(),
            body,
            now: unix_now(),
            caller_arn: arn.as_deref(),
        };
        auth.precheck(&presented)?;
        let secret = self.secrets.get().await?;
        let admitted = auth.verify(&presented, &secret).inspect_err(|e| {
            if e.is_config_error() {
                tracing::warn!(reason = %e, "webhook secret configuration error");
            }
        })?;
        Ok((secret, admitted))
    }

    async fn action_status(
        &self,
        req: &Request,
        action_id: &str,
        deadline: &Deadline,
    ) -> Result<Response<Body>, ApiError> {
        let body = body_bytes(req)?;
        let (secret, _) = self.authenticate(req, body, self.generic_auth()).await?;
        let action_id = action_ref(action_id)?;
        self.defender.ready(&secret, deadline).await?;
        let a = self.read_action(action_id, deadline).await?;
        Ok(json_response(StatusCode::OK, &action_json(&a)))
    }

    async fn read_action(
        &self,
        action_id: &str,
        deadline: &Deadline,
    ) -> Result<MachineAction, ApiError> {
        match self.defender.get_action(action_id, deadline).await {
            Ok(a) => Ok(a),
            Err(DefenderError::NotFound) => Err(ApiError::ActionNotFound(action_id.to_string())),
            Err(e) => Err(ApiError::Defender(e.to_string(), e.retry_after())),
        }
    }

    /// `POST /v1/actions/{id}/cancel`: undoes a mistaken offboard while
    /// Defender has not carried it out. The action is read first: Defender
    /// documents no error code for cancelling a final action, so finality
    /// is judged by its status.
    async fn cancel(
        &self,
        req: &Request,
        action_id: &str,
        deadline: &Deadline,
    ) -> Result<Response<Body>, ApiError> {
        let body = body_bytes(req)?;
        let (secret, admitted) = self.authenticate(req, body, self.generic_auth()).await?;
        let value = input::strict_json(body).map_err(|e| match e {
            input::JsonError::Syntax(m) => ApiError::NotJson(m),
            input::JsonError::Field(f) => ApiError::Field(f),
        })?;
        let comment = input::parse_cancel_body(&value)?;
        let action_id = action_ref(action_id)?;
        self.defender.ready(&secret, deadline).await?;
        let before = self.read_action(action_id, deadline).await?;
        let not_cancellable = |a: &MachineAction| ApiError::NotCancellable {
            action_id: action_id.to_string(),
            status: a.status.clone().unwrap_or_default(),
        };
        if ActionStatus::parse(before.status.as_deref().unwrap_or(""))
            .is_some_and(ActionStatus::is_final)
        {
            return Err(not_cancellable(&before));
        }
        let a = match self
            .defender
            .cancel_action(action_id, comment.as_str(), deadline)
            .await
        {
            Ok(a) => a,
            // It may have become final in between: say so if it did.
            Err(DefenderError::Refused { .. }) => {
                let now = self.read_action(action_id, deadline).await?;
                if ActionStatus::parse(now.status.as_deref().unwrap_or(""))
                    .is_some_and(ActionStatus::is_final)
                {
                    return Err(not_cancellable(&now));
                }
                return Err(ApiError::Defender(
                    "Defender refused the cancel".into(),
                    None,
                ));
            }
            Err(DefenderError::NotFound) => {
                return Err(ApiError::ActionNotFound(action_id.to_string()));
            }
            Err(e) => return Err(ApiError::Defender(e.to_string(), e.retry_after())),
        };
        tracing::info!(
            target: "audit",
            event = "action_cancelled",
            source = GENERIC,
            action_id = %a.id,
            machine_id = a.machine_id.as_deref().unwrap_or(""),
            status = a.status.as_deref().unwrap_or(""),
            comment = comment.as_str(),
            source_ip = source_ip(req).as_deref().unwrap_or(""),
            webhook_id = admitted.delivery_id.as_deref().unwrap_or(""),
            "machine action cancelled"
        );
        self.record_cancel(&a).await;
        Ok(json_response(StatusCode::OK, &action_json(&a)))
    }

    /// The ledger's records of a cancelled action follow it. Best effort:
    /// the cancel has happened and is audited.
    async fn record_cancel(&self, a: &MachineAction) {
        let Some(ledger) = &self.ledger else {
            return;
        };
        let status = a
            .status
            .as_deref()
            .and_then(ActionStatus::parse)
            .unwrap_or(ActionStatus::Cancelled);
        let Some(machine_id) = a.machine_id.as_deref() else {
            return;
        };
        let records = match ledger.machine_records(machine_id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(action_id = %a.id, error = %e, "cancel not recorded in the ledger");
                return;
            }
        };
        for rec in records.iter().filter(|r| r.action_id == a.id) {
            if let Err(e) = ledger
                .update_action_status(&rec.key(), status, SystemTime::now())
                .await
            {
                tracing::warn!(action_id = %a.id, error = %e, "cancel not recorded in the ledger");
            }
        }
    }

    /// `GET /v1/tickets/{ticket}`: every device outcome the ledger holds
    /// for a ticket (one Query). A ticket with none answers an empty list.
    async fn ticket(&self, req: &Request, ticket: &str) -> Result<Response<Body>, ApiError> {
        let body = body_bytes(req)?;
        self.authenticate(req, body, self.generic_auth()).await?;
        let ledger = self
            .ledger
            .as_ref()
            .ok_or_else(|| ApiError::NoRoute(format!("/v1/tickets/{ticket}")))?;
        // `%20` and the like decoded; invalid UTF-8 is kept as replacement
        // characters, which the ticket's own checks then refuse.
        let ticket = percent_decode_str(ticket).decode_utf8_lossy();
        let ticket = input::Ticket::parse("ticket", &ticket)?;
        let devices = ledger.ticket_records(ticket.as_str()).await?;
        Ok(json_response(
            StatusCode::OK,
            &json!({"ticket": ticket.as_str(), "devices": devices}),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(v: Value) -> Request {
        lambda_http::request::from_str(&v.to_string()).expect("a valid event")
    }

    const SPOOF: &str = "198.51.100.66, 192.0.2.99";

    #[test]
    fn http_api_source_ip_is_the_context_never_a_header() {
        let req = event(json!({
            "version": "2.0", "routeKey": "$default", "rawPath": "/v1/offboard",
            "rawQueryString": "",
            "headers": {"x-forwarded-for": SPOOF, "x-real-ip": "198.51.100.67"},
            "requestContext": {"accountId": "1", "apiId": "a", "domainName": "d",
                "domainPrefix": "d", "requestId": "r", "routeKey": "$default",
                "stage": "$default", "time": "t", "timeEpoch": 0,
                "http": {"method": "POST", "path": "/v1/offboard", "protocol": "HTTP/1.1",
                    "sourceIp": "203.0.113.10", "userAgent": "u"}},
            "body": "{}", "isBase64Encoded": false
        }));
        assert_eq!(source_ip(&req).as_deref(), Some("203.0.113.10"));
    }

    #[test]
    fn rest_api_source_ip_is_the_identity_never_a_header() {
        let req = event(json!({
            "resource": "/v1/offboard", "path": "/v1/offboard", "httpMethod": "POST",
            "headers": {"X-Forwarded-For": SPOOF},
            "multiValueHeaders": {"X-Forwarded-For": [SPOOF]},
            "queryStringParameters": null, "multiValueQueryStringParameters": null,
            "pathParameters": null, "stageVariables": null,
            "requestContext": {"accountId": "1", "apiId": "a", "stage": "prod",
                "requestId": "r", "resourcePath": "/v1/offboard", "httpMethod": "POST",
                "path": "/prod/v1/offboard",
                "identity": {"sourceIp": "203.0.113.11", "userAgent": "u"}},
            "body": "{}", "isBase64Encoded": false
        }));
        assert_eq!(source_ip(&req).as_deref(), Some("203.0.113.11"));
    }

    fn alb(headers: Value, multi: Option<Value>) -> Request {
        let mut v = json!({
            "requestContext": {"elb": {"targetGroupArn":
                "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/mde/abc"}},
            "httpMethod": "POST", "path": "/v1/offboard", "queryStringParameters": {},
            "headers": headers, "body": "{}", "isBase64Encoded": false
        });
        if let Some(m) = multi {
            v.as_object_mut().unwrap().remove("headers");
            v["multiValueHeaders"] = m;
            v["multiValueQueryStringParameters"] = json!({});
            v.as_object_mut().unwrap().remove("queryStringParameters");
        }
        event(v)
    }

    #[test]
    fn alb_source_ip_is_the_last_forwarded_for_entry() {
        // The caller wrote the first two entries; the ALB appended the last.
        let req = alb(
            json!({"x-forwarded-for": "198.51.100.66, 192.0.2.99, 203.0.113.12"}),
            None,
        );
        assert_eq!(source_ip(&req).as_deref(), Some("203.0.113.12"));
        let req = alb(json!({"x-forwarded-for": "203.0.113.13"}), None);
        assert_eq!(source_ip(&req).as_deref(), Some("203.0.113.13"));
        let req = alb(
            json!({}),
            Some(json!({"x-forwarded-for": ["198.51.100.66", "2001:db8::7"]})),
        );
        assert_eq!(source_ip(&req).as_deref(), Some("2001:db8::7"));
        // Not an address: nothing rather than text from the request.
        let req = alb(
            json!({"x-forwarded-for": "203.0.113.1, evil<script>"}),
            None,
        );
        assert_eq!(source_ip(&req), None);
        assert_eq!(source_ip(&alb(json!({}), None)), None);
    }

    #[test]
    fn without_a_request_context_no_header_is_believed() {
        let mut req = Request::new(Body::Empty);
        req.headers_mut()
            .insert("x-forwarded-for", "198.51.100.66".parse().unwrap());
        assert_eq!(source_ip(&req), None);
    }
}
