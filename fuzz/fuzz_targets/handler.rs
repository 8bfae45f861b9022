//! The whole handler on arbitrary API Gateway events, against the fake
//! Defender tenant, in dry run.
//!
//! Input layout: one selector byte, then text (lossy UTF-8). The text is
//! tried twice:
//! 1. as a whole Lambda event (`lambda_http::request::from_str`; skipped
//!    when it is not one);
//! 2. as the body of an HTTP API v2.0 event to the route the selector
//!    picks, signed the way that route's sender signs (Standard Webhooks,
//!    Jira's and PagerDuty's HMAC, the bearer tokens), so the fuzzer gets
//!    past authentication into parsing and mapping.
//!
//! `lambda_http::request::from_str` itself panics on some events API
//! Gateway never sends (a `host` header or a `rawQueryString` that is not
//! valid in a URI: `Url::parse(..).unwrap()` and `expect("failed to build
//! request")` in lambda_http 1.3's request.rs). In Lambda, lambda_runtime's
//! CatchPanic layer turns such a panic into an invocation error. Here those
//! panics, and only those (a thread-local flag around that one call), are
//! caught and the event skipped, so the fuzzer keeps exploring the
//! handler instead of stopping on the dependency.
//!
//! Every answer must be below 500 (the fake never fails, and dry run sends
//! no offboard) and a JSON body with `results`, `status` or `error.code`;
//! every device result must be one a dry run can give.
#![no_main]

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lambda_http::{Body, Request, Response};
use libfuzzer_sys::fuzz_target;
use mde_offboard::App;
use mde_testkit::hmac_hex;
use mde_offboard::support::webhook_sig::StandardWebhooks;
use mde_offboard::config::Config;
use mde_offboard::domain::secret::StaticSecret;
use mde_offboard::domain::limits::Limiters;
use mde_testkit::{FakeDefender, GENERIC_WEBHOOK_SECRET, demo_machines, events, secret_json};
use serde_json::Value;

struct World {
    rt: tokio::runtime::Runtime,
    fake: FakeDefender,
    app: App,
}

thread_local! {
    /// Set only around `lambda_http::request::from_str`.
    static IN_EVENT_PARSE: Cell<bool> = const { Cell::new(false) };
}

/// libfuzzer-sys's hook aborts on every panic; this one lets a panic of
/// `from_str` unwind to its `catch_unwind` and keeps every other panic
/// fatal.
fn install_panic_hook() {
    let fatal = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !IN_EVENT_PARSE.with(Cell::get) {
            fatal(info);
        }
    }));
}

/// A whole Lambda event, or `None` when the text is not one (or
/// lambda_http panics on it, see above).
fn parse_event(text: &str) -> Option<Request> {
    IN_EVENT_PARSE.with(|f| f.set(true));
    let parsed = catch_unwind(AssertUnwindSafe(|| lambda_http::request::from_str(text)));
    IN_EVENT_PARSE.with(|f| f.set(false));
    parsed.ok()?.ok()
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        install_panic_hook();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let fake = rt.block_on(FakeDefender::start(demo_machines()));
        let url = fake.url();
        let config = Config::from_lookup(|k| match k {
            "SECRET_ID" => Some("local".to_string()),
            "MDE_API_URL" | "MDE_LOGIN_URL" => Some(url.clone()),
            "DRY_RUN" => Some("true".to_string()),
            _ => None,
        })
        .expect("the fuzz configuration is valid");
        let _guard = rt.enter();
        // Defender's 100-calls-a-minute limit, with a microsecond for a
        // minute: the fuzzer makes thousands of calls a minute, and with
        // the real windows the limiter would make it wait or answer 503.
        let limiters = Limiters::scaled(100, Duration::from_micros(1));
        let app = mde_offboard::init::Wiring::new(config, Arc::new(StaticSecret(secret_json())))
            .limiters(limiters)
            .build();
        World { rt, fake, app }
    })
}

/// Routes the selector byte picks, with the headers their senders sign with.
const ROUTES: [&str; 6] = [
    "/v1/offboard",
    "/v1/webhooks/jira",
    "/v1/webhooks/servicenow",
    "/v1/webhooks/pagerduty",
    "/v1/webhooks/defender-incident",
    "/v1/actions/x",
];

const DRY_RUN_STATUSES: [&str; 5] = [
    "would_offboard",
    "not_found",
    "ambiguous",
    "unsupported_os",
    "protected",
];

fn signed_event(selector: u8, body: &str, seq: u64) -> Request {
    let path = ROUTES[selector as usize % ROUTES.len()];
    let method = if path.starts_with("/v1/actions/") {
        "GET"
    } else {
        "POST"
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    let id = format!("msg_fuzz_{seq}");
    let ts = now.to_string();
    let sig = StandardWebhooks::from_secret(GENERIC_WEBHOOK_SECRET).unwrap().sign(&id, now, body.as_bytes());
    let hub = format!(
        "sha256={}",
        hmac_hex("jira-webhook-secret-never-log", body.as_bytes())
    );
    let pd = format!(
        "v1={}",
        hmac_hex("pd-new-secret-never-log", body.as_bytes())
    );
    let bearer = match path {
        "/v1/webhooks/servicenow" => "Bearer snow-bearer-token-never-log",
        _ => "Bearer xdr-bearer-token-never-log",
    };
    let headers = [
        ("webhook-id", id.as_str()),
        ("webhook-timestamp", ts.as_str()),
        ("webhook-signature", sig.as_str()),
        ("x-hub-signature", hub.as_str()),
        ("x-pagerduty-signature", pd.as_str()),
        ("authorization", bearer),
    ];
    let event = events::http_api_v2(method, path, &headers, body);
    lambda_http::request::from_str(&event.to_string()).expect("a well-formed v2 event")
}

fn check(resp: Response<Body>, what: &str) {
    let status = resp.status().as_u16();
    let bytes: &[u8] = match resp.body() {
        Body::Text(t) => t.as_bytes(),
        Body::Binary(b) => b,
        _ => &[],
    };
    let text = String::from_utf8_lossy(bytes);
    assert!(status < 500, "{what}: status {status}: {text}");
    let v: Value = serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("{what}: status {status}: body is not JSON ({e}): {text}"));
    let shaped = v.get("results").is_some_and(Value::is_array)
        || v.get("status").is_some_and(Value::is_string)
        || v.pointer("/error/code").is_some_and(Value::is_string);
    assert!(shaped, "{what}: status {status}: unexpected body {text}");
    if let Some(results) = v.get("results").and_then(Value::as_array) {
        assert!(!results.is_empty(), "{what}: empty results");
        for r in results {
            let s = r.get("status").and_then(Value::as_str).unwrap_or("");
            assert!(
                DRY_RUN_STATUSES.contains(&s),
                "{what}: device status {s:?} in a dry run against the fake: {text}"
            );
        }
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let w = world();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    if seq.is_multiple_of(1000) {
        // The fake records every call; keep its memory flat.
        w.fake.reset_calls();
    }
    let text = String::from_utf8_lossy(rest);

    if let Some(req) = parse_event(&text) {
        check(w.rt.block_on(mde_offboard::inbound::http::handle(&w.app, req)), "whole event");
    }
    let req = signed_event(selector, &text, seq);
    check(w.rt.block_on(mde_offboard::inbound::http::handle(&w.app, req)), "signed body");
});
