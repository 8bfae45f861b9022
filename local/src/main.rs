//! `mde-local`: the function on 127.0.0.1, for trying it and for rehearsing
//! a playbook.
//!
//!   mde-local                      serve against a simulated tenant
//!   mde-local --secret-file F      serve against the real tenant in F
//!   mde-local --aws                serve with the secret from Secrets Manager (SECRET_ID)
//!   mde-local send FILE [--url U]  sign an events/ file and send it
//!
//! The handler is the Lambda's own (`App::handle`); only the transport
//! differs: plain HTTP here instead of the Runtime API, which
//! `lambda_http::run` needs and a laptop does not have.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body as AxumBody, to_bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::Request as HttpRequest;
use axum::response::Response as AxumResponse;
use lambda_http::Body;
use mde_offboard::App;
use mde_offboard::config::Config;
use mde_offboard::domain::secret::StaticSecret;
use mde_offboard::ingest::auth::{hmac_hex, standard_sign};
use mde_offboard::ingest::http::MAX_BODY_BYTES;
use mde_testkit::{FakeDefender, FakeTicketing, demo_machines};

mod tracking;
use serde_json::Value;

const DEFAULT_PORT: u16 = 9000;

fn usage() -> ! {
    eprintln!(
        "usage: mde-local [--port N] [--secret-file FILE | --aws]\n       mde-local send FILE [--url URL] [--secret-file FILE]"
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .map(|i| args.get(i + 1).cloned().unwrap_or_else(|| usage()))
    };
    if args.first().map(String::as_str) == Some("send") {
        let file = args.get(1).cloned().unwrap_or_else(|| usage());
        let url = flag("--url").unwrap_or_else(|| format!("http://127.0.0.1:{DEFAULT_PORT}"));
        std::process::exit(send(&file, &url, flag("--secret-file")).await);
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        usage();
    }
    let port: u16 = flag("--port")
        .map(|p| p.parse().unwrap_or_else(|_| usage()))
        .or_else(|| std::env::var("PORT").ok().and_then(|p| p.parse().ok()))
        .unwrap_or(DEFAULT_PORT);
    serve(
        port,
        flag("--secret-file"),
        args.iter().any(|a| a == "--aws"),
    )
    .await;
}

async fn serve(port: u16, secret_file: Option<String>, aws: bool) {
    mde_offboard::ops::logging::init();
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (app, what) = if aws {
        let config = Config::from_env().unwrap_or_else(|e| exit(&e.to_string()));
        (
            Arc::new(mde_offboard::init::build_app(config).await),
            "the tenant in Secrets Manager's SECRET_ID".to_string(),
        )
    } else if let Some(path) = secret_file {
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| exit(&format!("{path}: {e}")));
        let config = Config::from_lookup(|k| match k {
            "SECRET_ID" => Some(path.clone()),
            _ => env(k),
        })
        .unwrap_or_else(|e| exit(&e.to_string()));
        (
            Arc::new(App::new(
                config,
                Arc::new(StaticSecret(text)),
                App::http_client(),
            )),
            format!("the real tenant in {path}"),
        )
    } else {
        let fake = FakeDefender::start(demo_machines()).await;
        let url = fake.url();
        let tickets = FakeTicketing::start()
            .await
            .with_jira_issue("IT-42")
            .with_pd_incident("Q2W8L1RZ3XK4PQ")
            .with_snow_record("incident", "9d385017c611228701d22104cc95c371");
        let ids = demo_machines().iter().map(|m| m.id.clone()).collect();
        tracking::simulate(fake.clone(), ids, tickets.clone());
        // Leaked on purpose: the fake lives as long as the process.
        std::mem::forget(fake);
        let config = Config::from_lookup(|k| match k {
            "SECRET_ID" => Some("local".into()),
            "MDE_API_URL" | "MDE_LOGIN_URL" => Some(url.clone()),
            "PROTECTED_TAGS" => Some(env(k).unwrap_or_else(|| "VIP".into())),
            // Seconds, not hours: the loop closes while you watch.
            "TRACK_INTERVALS_SECONDS" => Some(env(k).unwrap_or_else(|| "3,5".into())),
            "TRACK_FOR_SECONDS" => Some(env(k).unwrap_or_else(|| "60".into())),
            "CALLBACK_HOSTS" => Some(env(k).unwrap_or_else(|| "127.0.0.1,localhost".into())),
            _ => env(k),
        })
        .unwrap_or_else(|e| exit(&e.to_string()));
        let mut secret: Value =
            serde_json::from_str(&mde_testkit::secret_json()).unwrap_or_default();
        if let (Some(obj), Some(keys)) = (secret.as_object_mut(), tickets.secret_keys().as_object())
        {
            obj.extend(keys.clone());
        }
        let (queue, rx) = tracking::queue();
        let app = App::new(
            config,
            Arc::new(StaticSecret(secret.to_string())),
            App::http_client(),
        )
        .with_queue(queue.clone())
        .with_ledger(Arc::new(
            mde_offboard::adapters::memory_ledger::InMemoryLedger::new(),
        ));
        let app = Arc::new(app);
        tracking::drain(app.clone(), queue, rx);
        (
            app,
            format!(
                "a simulated tenant at {url} (actions complete after {}s; write-backs printed)",
                tracking::COMPLETES_AFTER.as_secs()
            ),
        )
    };
    app.warm_up().await;
    let router = axum::Router::new().fallback(handle).with_state(app);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| exit(&format!("cannot listen on {addr}: {e}")));
    let addr = listener.local_addr().unwrap_or(addr);
    eprintln!(
        "mde-offboard listening on http://{addr} against {what}\n\
         Send a sample event (signed with the local webhook secret):\n  \
         cargo run -p mde-local -- send events/generic.json\n  \
         cargo run -p mde-local -- send events/generic-dry-run.json\n\
         Send one again to see already_pending. Ctrl-C stops."
    );
    let serve = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    );
    let _ = serve
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
}

fn exit(msg: &str) -> ! {
    eprintln!("mde-local: {msg}");
    std::process::exit(1)
}

async fn handle(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: HttpRequest<AxumBody>,
) -> AxumResponse {
    let (mut parts, body) = req.into_parts();
    // One byte over the limit is enough for the handler to answer 413.
    let bytes = to_bytes(body, MAX_BODY_BYTES + 1).await.unwrap_or_default();
    // As an HTTP API would: the peer's address in the request context, the
    // only place the function reads `source_ip` from.
    let mut ctx = lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpRequestContext::default();
    ctx.http.source_ip = Some(peer.ip().to_string());
    parts
        .extensions
        .insert(lambda_http::request::RequestContext::ApiGatewayV2(ctx));
    let req = lambda_http::Request::from_parts(parts, Body::from(bytes.to_vec()));
    let resp = app.handle(req).await;
    let (parts, body) = resp.into_parts();
    let bytes: Vec<u8> = match body {
        Body::Text(t) => t.into_bytes(),
        Body::Binary(b) => b,
        _ => Vec::new(),
    };
    AxumResponse::from_parts(parts, AxumBody::from(bytes))
}

/// Signs an `events/` file (an API Gateway event, or a raw body for the
/// generic route) the way its sender would, and sends it.
async fn send(file: &str, base: &str, secret_file: Option<String>) -> i32 {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| exit(&format!("{file}: {e}")));
    let v: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| exit(&format!("{file}: not JSON: {e}")));
    let (path, method, body) = if v.get("requestContext").is_some() {
        let path = v["rawPath"]
            .as_str()
            .or(v["path"].as_str())
            .unwrap_or("/v1/offboard")
            .to_string();
        let method = v["requestContext"]["http"]["method"]
            .as_str()
            .or(v["httpMethod"].as_str())
            .unwrap_or("POST")
            .to_string();
        (path, method, v["body"].as_str().unwrap_or("").to_string())
    } else {
        (
            "/v1/offboard".to_string(),
            "POST".to_string(),
            text.trim().to_string(),
        )
    };
    let secret_text = match secret_file {
        Some(p) => std::fs::read_to_string(&p).unwrap_or_else(|e| exit(&format!("{p}: {e}"))),
        None => mde_testkit::secret_json(),
    };
    let secret: Value =
        serde_json::from_str(&secret_text).unwrap_or_else(|_| exit("the secret is not JSON"));
    let source = path.strip_prefix("/v1/webhooks/").unwrap_or("generic");
    // The samples are old; a sender stamps its delivery when it sends it,
    // and a preset with a freshness window refuses anything older.
    let body = match mde_offboard::ingest::sources::Sources::default()
        .get(source)
        .and_then(|d| d.freshness.clone())
    {
        Some(window) => match serde_json::from_str::<Value>(&body) {
            Ok(mut doc) => {
                window.stamp(&mut doc, SystemTime::now());
                doc.to_string()
            }
            Err(_) => body,
        },
        None => body,
    };
    let key = secret["webhook_secrets"][source]
        .as_str()
        .or(secret["webhook_secrets"][source][0].as_str())
        .unwrap_or_else(|| exit(&format!("no webhook secret for '{source}'")))
        .to_string();
    let client = reqwest::Client::new();
    let mut req = client
        .request(
            method.parse().unwrap_or(reqwest::Method::POST),
            format!("{base}{path}"),
        )
        .header("content-type", "application/json")
        .timeout(Duration::from_secs(60));
    match auth_scheme(source) {
        Scheme::Standard => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let id = format!("msg_local_{now}_{}", std::process::id());
            req = req
                .header("webhook-id", &id)
                .header("webhook-timestamp", now.to_string())
                .header(
                    "webhook-signature",
                    standard_sign(&key, &id, now, body.as_bytes()),
                );
        }
        Scheme::HmacHex { header, prefix } => {
            req = req.header(
                header,
                format!("{prefix}{}", hmac_hex(&key, body.as_bytes())),
            );
        }
        Scheme::Bearer => req = req.bearer_auth(&key),
    }
    match req.body(body).send().await {
        Ok(resp) => {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            let pretty = serde_json::from_str::<Value>(&text)
                .map(|v| serde_json::to_string_pretty(&v).unwrap_or(text.clone()))
                .unwrap_or(text);
            println!("HTTP {}\n{pretty}", status.as_u16());
            if status.is_success() { 0 } else { 1 }
        }
        Err(e) => {
            eprintln!("mde-local: could not reach {base}: {e}");
            1
        }
    }
}

enum Scheme {
    Standard,
    HmacHex {
        header: &'static str,
        prefix: &'static str,
    },
    Bearer,
}

/// How each built-in source signs, as its tool does.
fn auth_scheme(source: &str) -> Scheme {
    match source {
        "jira" => Scheme::HmacHex {
            header: "x-hub-signature",
            prefix: "sha256=",
        },
        "pagerduty" => Scheme::HmacHex {
            header: "x-pagerduty-signature",
            prefix: "v1=",
        },
        "servicenow" | "defender-incident" => Scheme::Bearer,
        _ => Scheme::Standard,
    }
}
