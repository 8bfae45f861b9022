//! `mde-local`: the function on 127.0.0.1, for trying it and for rehearsing
//! a playbook.
//!
//!   mde-local                      serve against a simulated tenant
//!   mde-local --secret-file F      serve against the real tenant in F
//!   mde-local --aws                serve with the secret from Secrets Manager (SECRET_ID)
//!   mde-local send FILE [--url U]  sign an events/ file and send it
//!   mde-local tenant               serve only the simulated tenant and a
//!                                  Secrets Manager endpoint, for a function
//!                                  run by `cargo lambda watch`
//!   mde-local sign FILE [-o OUT]   write FILE freshly signed, as a Lambda
//!                                  event for `cargo lambda invoke --data-file`
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
use mde_offboard::inbound::http::MAX_BODY_BYTES;
use mde_offboard::support::webhook_sig::{StandardWebhooks, secret_key};
use mde_testkit::{FakeDefender, FakeSecretsManager, FakeTicketing, demo_machines};

mod tracking;
use serde_json::Value;

mod signing;
use signing::Sample;

const DEFAULT_PORT: u16 = 9000;
/// The simulated tenant's port in `tenant` mode; Secrets Manager is on the
/// next one. Fixed, so that an exported environment stays valid across runs.
const DEFAULT_TENANT_PORT: u16 = 9100;
/// The secret id the `tenant` mode serves.
const LOCAL_SECRET_ID: &str = "mde-offboard-local";

fn usage() -> ! {
    eprintln!(
        "usage: mde-local [--port N] [--secret-file FILE | --aws]\n       \
         mde-local [--roles R1,R2] [--client-secret S]   (simulate a missing consent, a wrong secret)\n       \
         mde-local --tenants                            (two tenants, contoso and fabrikam: name one in each request)\n       \
         mde-local send FILE [--url URL] [--secret-file FILE]\n       \
         mde-local tenant [--port N] [--roles R1,R2] [--env-file FILE]\n       \
         mde-local sign FILE [-o OUT] [--secret-file FILE]\n       \
         mde-local get PATH [--url URL]            (e.g. /v1/tickets/INC0012345)\n       \
         mde-local post PATH JSON [--url URL]      (e.g. /v1/actions/ID/cancel '{{\"comment\": \"...\"}}')"
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
    if let Some(verb @ ("get" | "post")) = args.first().map(String::as_str) {
        let path = args.get(1).cloned().unwrap_or_else(|| usage());
        let body = if verb == "post" {
            args.get(2).cloned().unwrap_or_else(|| usage())
        } else {
            String::new()
        };
        let url = flag("--url").unwrap_or_else(|| format!("http://127.0.0.1:{DEFAULT_PORT}"));
        std::process::exit(call_generic(verb, &path, body, &url, flag("--secret-file")).await);
    }
    if args.first().map(String::as_str) == Some("tenant") {
        let port = flag("--port")
            .map(|p| p.parse().unwrap_or_else(|_| usage()))
            .unwrap_or(DEFAULT_TENANT_PORT);
        let roles = flag("--roles").map(|r| r.split(',').map(str::to_string).collect());
        tenant(port, roles, flag("--env-file")).await;
        return;
    }
    if args.first().map(String::as_str) == Some("sign") {
        let file = args.get(1).cloned().unwrap_or_else(|| usage());
        sign(&file, flag("-o"), flag("--secret-file"));
        return;
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        usage();
    }
    let port: u16 = flag("--port")
        .map(|p| p.parse().unwrap_or_else(|_| usage()))
        .or_else(|| std::env::var("PORT").ok().and_then(|p| p.parse().ok()))
        .unwrap_or(DEFAULT_PORT);
    // A rehearsal of what breaks in a real tenant: consent (the roles the
    // simulated tenant grants) and the client secret the function holds.
    let breaks = Breaks {
        roles: flag("--roles").map(|r| r.split(',').map(str::to_string).collect()),
        client_secret: flag("--client-secret"),
        tenants: args.iter().any(|a| a == "--tenants"),
    };
    serve(
        port,
        flag("--secret-file"),
        args.iter().any(|a| a == "--aws"),
        breaks,
    )
    .await;
}

/// Fetches the secret and a token and opens the connections before the
/// first request, as the Lambda's warm-up does.
async fn warm(instance: mde_offboard::init::Instance) -> Arc<App> {
    instance.warm_up().await;
    Arc::new(instance.app)
}

/// What the simulated tenant is told to get wrong.
struct Breaks {
    roles: Option<Vec<String>>,
    client_secret: Option<String>,
    /// Two simulated tenants, `contoso` and `fabrikam` (the secret's
    /// `tenants`): every request names one.
    tenants: bool,
}

/// The second simulated tenant (`--tenants`) and its one machine.
const FABRIKAM_TENANT: &str = "22222222-2222-2222-2222-222222222222";
const FABRIKAM_LAPTOP: &str = "fa0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b";

async fn serve(port: u16, secret_file: Option<String>, aws: bool, breaks: Breaks) {
    mde_offboard::ops::logging::init();
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (app, what) = if aws {
        let config = Config::from_env().unwrap_or_else(|e| exit(&e.to_string()));
        mde_offboard::init::trust_roots(&config).unwrap_or_else(|e| exit(&e.to_string()));
        (
            warm(mde_offboard::init::build_instance(config)).await,
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
            warm(mde_offboard::init::Wiring::new(config, Arc::new(StaticSecret(text))).instance())
                .await,
            format!("the real tenant in {path}"),
        )
    } else {
        let fake = FakeDefender::start(demo_machines()).await;
        if let Some(roles) = &breaks.roles {
            fake.set_token_roles(&roles.iter().map(String::as_str).collect::<Vec<_>>());
        }
        if breaks.tenants {
            fake.add_tenant(FABRIKAM_TENANT);
            fake.add_machine(
                mde_testkit::FakeMachine::new(
                    FABRIKAM_LAPTOP,
                    "laptop-09.fabrikam.com",
                    "Windows11",
                )
                .in_tenant(FABRIKAM_TENANT),
            );
        }
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
        if let Some(wrong) = breaks.client_secret {
            secret["client_secret"] = Value::String(wrong);
        }
        if breaks.tenants {
            secret["tenants"] = serde_json::json!({
                "contoso": {"tenant_id": mde_testkit::defender::TENANT_ID},
                "fabrikam": {"tenant_id": FABRIKAM_TENANT},
            });
        }
        let (queue, rx) = tracking::queue();
        let mut instance =
            mde_offboard::init::Wiring::new(config, Arc::new(StaticSecret(secret.to_string())))
                .instance();
        instance.app = instance.app.with_queue(queue.clone()).with_ledger(Arc::new(
            mde_offboard::adapters::memory::ledger::InMemoryLedger::new(),
        ));
        instance.warm_up().await;
        let app = Arc::new(instance.app);
        tracking::drain(app.clone(), queue, rx);
        (
            app,
            format!(
                "a simulated tenant at {url} (actions complete after {}s; write-backs printed)",
                tracking::COMPLETES_AFTER.as_secs()
            ),
        )
    };
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
    let resp = mde_offboard::inbound::http::handle(&app, req).await;
    let (parts, body) = resp.into_parts();
    let bytes: Vec<u8> = match body {
        Body::Text(t) => t.into_bytes(),
        Body::Binary(b) => b,
        _ => Vec::new(),
    };
    AxumResponse::from_parts(parts, AxumBody::from(bytes))
}

fn secret_of(secret_file: Option<String>) -> Value {
    let text = match secret_file {
        Some(p) => std::fs::read_to_string(&p).unwrap_or_else(|e| exit(&format!("{p}: {e}"))),
        None => mde_testkit::secret_json(),
    };
    serde_json::from_str(&text).unwrap_or_else(|_| exit("the secret is not JSON"))
}

fn read_sample(file: &str) -> Sample {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| exit(&format!("{file}: {e}")));
    Sample::read(file, &text).unwrap_or_else(|e| exit(&e.to_string()))
}

fn nonce() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}{nanos:09}", std::process::id())
}

/// Signs an `events/` file (an HTTP event, or a bare body) the way its
/// sender would, and sends it.
async fn send(file: &str, base: &str, secret_file: Option<String>) -> i32 {
    let sample = read_sample(file);
    let Some(unsigned) = signing::unsigned(&sample) else {
        exit(&format!(
            "{file} is not an HTTP event: invoke it with `cargo lambda invoke --data-file {file}`"
        ))
    };
    let d = signing::sign(
        unsigned,
        &secret_of(secret_file),
        SystemTime::now(),
        &nonce(),
    )
    .unwrap_or_else(|e| exit(&e.to_string()));
    let client = reqwest::Client::new();
    let mut req = client
        .request(
            d.method.parse().unwrap_or(reqwest::Method::POST),
            format!("{base}{}", d.path),
        )
        .timeout(Duration::from_secs(60));
    for (k, v) in &d.headers {
        req = req.header(k, v);
    }
    print_answer(req.body(d.body).send().await, base).await
}

/// Prints an answer as the helpers do (status line, then pretty JSON);
/// the exit code says whether it was a success.
async fn print_answer(sent: reqwest::Result<reqwest::Response>, base: &str) -> i32 {
    match sent {
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

/// A call on the generic source's routes (`/v1/tickets/...`,
/// `/v1/actions/...`), signed with Standard Webhooks as a playbook would.
async fn call_generic(
    verb: &str,
    path: &str,
    body: String,
    base: &str,
    secret_file: Option<String>,
) -> i32 {
    let secret = secret_of(secret_file);
    let Some(key) = secret["webhook_secrets"]["generic"].as_str() else {
        exit("the secret has no webhook_secrets.generic")
    };
    let id = format!("msg_local_{}", nonce());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let signature = StandardWebhooks::from_bytes(secret_key(key).unwrap_or_default()).sign(
        &id,
        now,
        body.as_bytes(),
    );
    let client = reqwest::Client::new();
    let method = if verb == "post" {
        reqwest::Method::POST
    } else {
        reqwest::Method::GET
    };
    let req = client
        .request(method, format!("{base}{path}"))
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", now.to_string())
        .header("webhook-signature", signature)
        .timeout(Duration::from_secs(60))
        .body(body);
    print_answer(req.send().await, base).await
}

/// Writes an `events/` file as a freshly signed Lambda event, to `out` or
/// stdout: the samples' signatures are placeholders and their timestamps
/// old, so `cargo lambda invoke` with them directly answers 401.
fn sign(file: &str, out: Option<String>, secret_file: Option<String>) {
    let sample = read_sample(file);
    let event = match signing::unsigned(&sample) {
        Some(_) if signing::is_iam(&sample) => {
            eprintln!(
                "mde-local: {file} is signed by AWS (IAM auth at the edge), which a local invoke skips; written unchanged"
            );
            event_of(&sample)
        }
        Some(unsigned) => {
            let d = signing::sign(
                unsigned,
                &secret_of(secret_file),
                SystemTime::now(),
                &nonce(),
            )
            .unwrap_or_else(|e| exit(&e.to_string()));
            signing::to_event(&sample, &d)
        }
        None => {
            eprintln!(
                "mde-local: {file} is an EventBridge event or a direct invocation: IAM decides who may invoke, nothing to sign; written unchanged"
            );
            event_of(&sample)
        }
    };
    let text = serde_json::to_string_pretty(&event).unwrap_or_default();
    match out {
        Some(path) => {
            std::fs::write(&path, text + "\n").unwrap_or_else(|e| exit(&format!("{path}: {e}")))
        }
        None => println!("{text}"),
    }
}

fn event_of(sample: &Sample) -> Value {
    match sample {
        Sample::Http(v) | Sample::Direct(v) => v.clone(),
        Sample::Body { .. } => Value::Null,
    }
}

/// Serves the simulated tenant (Defender API and Entra ID login) and a
/// Secrets Manager endpoint holding its secret, for the Lambda binary run by
/// `cargo lambda watch`: the binary reads the same environment variables as
/// in AWS, so it needs no local code path of its own.
async fn tenant(port: u16, roles: Option<Vec<String>>, env_file: Option<String>) {
    let bind = |p: u16| format!("127.0.0.1:{p}");
    let fake = FakeDefender::start_on(&bind(port), demo_machines()).await;
    if let Some(roles) = &roles {
        let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
        fake.set_token_roles(&roles);
    }
    let sm_port = if port == 0 { 0 } else { port.saturating_add(1) };
    let secrets = [(LOCAL_SECRET_ID.to_string(), mde_testkit::secret_json())].into();
    let sm = FakeSecretsManager::start_on(&bind(sm_port), secrets)
        .await
        .unwrap_or_else(|e| exit(&format!("cannot listen on {}: {e}", bind(sm_port))));
    let env = [
        ("SECRET_ID", LOCAL_SECRET_ID.to_string()),
        ("AWS_ENDPOINT_URL_SECRETS_MANAGER", sm.url()),
        ("MDE_API_URL", fake.url()),
        ("MDE_LOGIN_URL", fake.url()),
        ("PROTECTED_TAGS", "VIP".to_string()),
        // The SDK wants a region and credentials; the local endpoint checks
        // no signature.
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ACCESS_KEY_ID", "local".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "local".to_string()),
    ];
    if let Some(path) = &env_file {
        let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        std::fs::write(path, text).unwrap_or_else(|e| exit(&format!("{path}: {e}")));
    }
    // On stdout, so a script can read them; the guide goes to stderr.
    for (k, v) in &env {
        println!("export {k}={v}");
    }
    println!();
    eprintln!(
        "mde-local: a simulated tenant at {} and Secrets Manager at {}.\n\
         Export the lines above (or pass --env-file to both), then:\n  \
         cargo lambda watch\n  \
         cargo run -p mde-local -- sign events/generic.json -o target/generic.signed.json\n  \
         cargo lambda invoke --data-file target/generic.signed.json\n\
         Ctrl-C stops.",
        fake.url(),
        sm.url()
    );
    let _ = tokio::signal::ctrl_c().await;
}
