//! The HTTP edge (API Gateway REST and HTTP APIs, Function URLs, ALB):
//! routing, what each route reads from the request (body, headers, the
//! caller's IAM identity and address), and the core's answer written as a
//! response. The work itself is the core's (`app`).

use std::time::SystemTime;

use lambda_http::http::{HeaderValue, StatusCode};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use percent_encoding::percent_decode_str;
use serde_json::Value;

use super::Invocation;
use crate::app::audit::Origin;
use crate::app::idempotency::{DeliveryKey, delivery_key, http_route};
use crate::app::offboarding::{Content, Delivery};
use crate::app::{App, Outcome};
use crate::domain::limits::{Deadline, retry_after_secs};
use crate::domain::secret::AppSecret;
use crate::domain::tenant::TenantAllow;
use crate::error::ApiError;
use crate::intake::auth::{Admitted, AuthDef, Presented};
use crate::intake::generic;
use crate::intake::sources::GENERIC;
use crate::ops::metrics;
use crate::support::time::unix_now;

/// Bodies above this are refused before any work (413).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// A path segment as the ticket it names (`%20` and the like decoded);
/// invalid UTF-8 is kept as replacement characters, which the ticket's own
/// checks then refuse.
fn percent_decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
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

/// One request: never fails, every error becomes a JSON answer.
pub async fn handle(app: &App, req: Request) -> Response<Body> {
    let ctx = req.lambda_context_ref();
    let request_id = ctx.map(|c| c.request_id.clone()).unwrap_or_default();
    let trace_id = ctx.and_then(|c| c.xray_trace_id.clone());
    let deadline_ms = ctx.map_or(0, |c| c.deadline);
    let inv = Invocation::begin(app, &request_id, trace_id.as_deref(), deadline_ms);
    let deadline = inv.deadline;
    let path = route_path(&req);
    let source = match path.strip_prefix("/v1/webhooks/") {
        Some(name) if app.config().sources.get(name).is_some() => name.to_string(),
        _ => GENERIC.to_string(),
    };
    inv.run(&source, async move {
        let method = req.method().clone();
        match route(app, &req, &path, &deadline).await {
            Ok(o) => {
                tracing::info!(http_method = %method, path = %path, status = o.status, "request handled");
                response(o)
            }
            Err(e) => {
                if matches!(e, ApiError::Unauthorized(_)) {
                    metrics::count(metrics::names::AUTH_REJECTED);
                }
                super::count_failure(&e);
                if e.status().is_server_error() {
                    tracing::warn!(http_method = %method, path = %path, status = e.status().as_u16(), code = e.code(), reason = %e, "request refused");
                } else {
                    tracing::info!(http_method = %method, path = %path, status = e.status().as_u16(), code = e.code(), reason = %e, "request refused");
                }
                error_response(e)
            }
        }
    })
    .await
}

/// The core's answer as a response.
fn response(o: Outcome) -> Response<Body> {
    let mut b = Response::builder()
        .status(StatusCode::from_u16(o.status).unwrap_or(StatusCode::OK))
        .header("content-type", "application/json");
    if let Some(ra) = o.retry_after {
        b = b.header("retry-after", retry_after_secs(ra).to_string());
    }
    if o.replayed {
        b = b.header("x-mde-replay", HeaderValue::from_static("true"));
    }
    b.body(Body::Text(o.body))
        .expect("static headers are valid")
}

/// An error as a response: its status, `Retry-After` and `Allow` where
/// they apply, and the contract's error body.
pub fn error_response(e: ApiError) -> Response<Body> {
    let mut b = Response::builder()
        .status(e.status())
        .header("content-type", "application/json");
    if let Some(ra) = e.retry_after() {
        b = b.header("retry-after", retry_after_secs(ra).to_string());
    }
    if let ApiError::MethodNotAllowed { allowed, .. } = &e {
        b = b.header("allow", *allowed);
    }
    b.body(Body::Text(e.body()))
        .expect("static headers are valid")
}

async fn route(
    app: &App,
    req: &Request,
    path: &str,
    deadline: &Deadline,
) -> Result<Outcome, ApiError> {
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
    let generic_auth = app.config().sources.generic_auth();
    // The tenant a read or cancel names (`?tenant=`).
    let tenant = req
        .query_string_parameters_ref()
        .and_then(|q| q.first("tenant"))
        .map(str::to_string);
    // What a delivery id is bound to, with the body: the method and path
    // (and the tenant named).
    let route = match &tenant {
        Some(t) => format!("{}?tenant={t}", http_route(req.method().as_str(), path)),
        None => http_route(req.method().as_str(), path),
    };
    let tenant = tenant.as_deref();
    match segments.as_slice() {
        ["v1", "offboard"] => {
            allow("POST")?;
            let body = body_bytes(req)?;
            let (secret, admitted) = authenticate(app, req, body, generic_auth).await?;
            // Standard Webhooks signs its webhook-id.
            let key = delivery_key(GENERIC, admitted.delivery_id.as_deref(), &route, body);
            let delivery = Delivery {
                origin: Origin::new(GENERIC, source_ip(req), admitted.delivery_id),
                key,
                content: Content::GenericText(body),
            };
            app.deliver(delivery, &secret, deadline).await
        }
        ["v1", "webhooks", source] if !source.is_empty() => {
            allow("POST")?;
            webhook(app, req, source, &route, deadline).await
        }
        // The read and cancel routes: a signed delivery id is used once
        // here too, bound to the route and body it signed.
        ["v1", "actions", action_id] if !action_id.is_empty() => {
            allow("GET")?;
            let body = body_bytes(req)?;
            let (secret, admitted, allow) = authenticate_read(app, req, body).await?;
            let tenant = app.resolve_tenant(&secret, tenant, "tenant", &allow)?;
            let (origin, key) = signed_call(req, admitted, &route, body);
            app.once_signed(&origin, key.as_ref(), deadline, || {
                app.action(&secret, tenant.as_deref(), action_id, deadline)
            })
            .await
        }
        ["v1", "actions", action_id, "cancel"] if !action_id.is_empty() => {
            allow("POST")?;
            let body = body_bytes(req)?;
            let (secret, admitted) = authenticate(app, req, body, generic_auth).await?;
            let allow = app.config().sources.generic_tenants();
            let tenant = app.resolve_tenant(&secret, tenant, "tenant", allow)?;
            let (origin, key) = signed_call(req, admitted, &route, body);
            let origin = origin.in_tenant(tenant);
            app.once_signed(&origin, key.as_ref(), deadline, || async {
                let value = generic::strict_json(body)?;
                let comment = generic::parse_cancel_body(&value)?;
                app.cancel(&secret, action_id, &comment, &origin, deadline)
                    .await
            })
            .await
        }
        ["v1", "health"] => {
            allow("GET")?;
            let body = body_bytes(req)?;
            let (secret, admitted, allow) = authenticate_read(app, req, body).await?;
            // Only the tenants this caller may act for; `?tenant=` one.
            let only = match tenant {
                Some(_) => app.resolve_tenant(&secret, tenant, "tenant", &allow)?,
                None => None,
            };
            let (origin, key) = signed_call(req, admitted, &route, body);
            app.once_signed(&origin, key.as_ref(), deadline, || async {
                Ok(Outcome::ok(
                    &app.health(&allow, only.as_deref(), deadline).await,
                ))
            })
            .await
        }
        ["v1", "tickets", ticket] if !ticket.is_empty() && app.has_tickets() => {
            allow("GET")?;
            let body = body_bytes(req)?;
            let (secret, admitted, allow) = authenticate_read(app, req, body).await?;
            let tenant = app.resolve_tenant(&secret, tenant, "tenant", &allow)?;
            let (origin, key) = signed_call(req, admitted, &route, body);
            let ticket = percent_decode(ticket);
            app.once_signed(&origin, key.as_ref(), deadline, || {
                app.ticket(&ticket, tenant.as_deref())
            })
            .await
        }
        _ => Err(ApiError::NoRoute(path.to_string())),
    }
}

/// Who called a read or cancel route, and the key of its signed delivery
/// id with the request it signed; none without a signed id.
fn signed_call(
    req: &Request,
    admitted: Admitted,
    route: &str,
    body: &[u8],
) -> (Origin, Option<DeliveryKey>) {
    let key = admitted
        .delivery_id
        .as_deref()
        .filter(|id| !id.is_empty())
        .map(|id| DeliveryKey::signed_id(GENERIC, id, route, body));
    (
        Origin::new(GENERIC, source_ip(req), admitted.delivery_id),
        key,
    )
}

/// `POST /v1/webhooks/{source}`: the source's own authentication and
/// mapping, then the same pipeline as the generic route. Once the sender is
/// authenticated, nothing about its content is answered 4xx: the sender
/// cannot fix it, and some (PagerDuty) disable a subscription after a few
/// 4xx, silencing the offboards that follow.
async fn webhook(
    app: &App,
    req: &Request,
    name: &str,
    route: &str,
    deadline: &Deadline,
) -> Result<Outcome, ApiError> {
    let def = app
        .config()
        .sources
        .get(name)
        .ok_or_else(|| ApiError::UnknownSource(name.to_string()))?;
    let body = body_bytes(req)?;
    let (secret, admitted) = authenticate(app, req, body, &def.auth).await?;
    // Only an id the signature covers keys replay; an unsigned one still
    // names the delivery in the audit line.
    let key = delivery_key(name, admitted.delivery_id.as_deref(), route, body);
    let webhook_id = admitted.delivery_id.or_else(|| {
        def.id_header
            .as_deref()
            .and_then(|h| req.headers().get(h))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    });
    // A sender whose body is not JSON is misconfigured, not sending content
    // it could not fix: that stays a 400.
    let doc: Value = serde_json::from_slice(body).map_err(|e| ApiError::NotJson(e.to_string()))?;
    if let Some(f) = &def.freshness {
        f.check(&doc, SystemTime::now())?;
    }
    let delivery = Delivery {
        origin: Origin::new(name, source_ip(req), webhook_id),
        key,
        content: Content::Mapped { def, doc: &doc },
    };
    app.deliver(delivery, &secret, deadline).await
}

/// What the request presents to its route's auth, checked by the core.
/// A read route's caller: the `generic` source's, or else the `reader`
/// source's, with the tenants that source allows.
async fn authenticate_read(
    app: &App,
    req: &Request,
    body: &[u8],
) -> Result<(std::sync::Arc<AppSecret>, Admitted, TenantAllow), ApiError> {
    let sources = &app.config().sources;
    let generic = authenticate(app, req, body, sources.generic_auth()).await;
    match (generic, sources.reader()) {
        (Ok((s, a)), _) => Ok((s, a, sources.generic_tenants().clone())),
        (Err(ApiError::Unauthorized(_)), Some((auth, allow))) => {
            let (s, a) = authenticate(app, req, body, auth).await?;
            Ok((s, a, allow.clone()))
        }
        (Err(e), _) => Err(e),
    }
}

async fn authenticate(
    app: &App,
    req: &Request,
    body: &[u8],
    auth: &AuthDef,
) -> Result<(std::sync::Arc<AppSecret>, Admitted), ApiError> {
    let arn = caller_arn(req);
    let presented = Presented {
        headers: req.headers(),
        body,
        now: unix_now(),
        caller_arn: arn.as_deref(),
    };
    app.authenticate(&presented, auth).await
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
