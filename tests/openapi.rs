//! openapi.yaml against the real handler: answers of every route, in the
//! statuses a caller meets, are checked against the document's response
//! schemas and headers, so a SOAR that imports the document is never told
//! something the function does not do. Schemathesis (in `.ci/run`) fuzzes
//! the same document over HTTP; this test pins the answers it cannot reach
//! (signed requests, a queue, a ledger, Defender faults).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use lambda_http::{Body, Response};
use mde_offboard::adapters::memory::ledger::InMemoryLedger;
use mde_offboard::support::webhook_sig::StandardWebhooks;
use mde_testkit::hmac_hex;
use mde_testkit::{Api, Fault};
use serde_json::{Value, json};

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml");
const EVENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/events");

/// The document, as JSON.
struct Doc(Value);

/// Where in the document a response is described.
struct Described<'a> {
    pointer: String,
    response: &'a Value,
}

impl Doc {
    fn load() -> Self {
        let text = std::fs::read_to_string(DOC).expect("openapi.yaml at the top level");
        let doc: Value = serde_yaml_ng::from_str(&text).expect("openapi.yaml is YAML");
        assert_eq!(doc["openapi"], "3.1.0");
        Self(doc)
    }

    fn at(&self, pointer: &str) -> &Value {
        self.0
            .pointer(pointer.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("openapi.yaml has nothing at {pointer}"))
    }

    /// Follows a `$ref` (local ones only, as the document uses).
    fn follow<'a>(&'a self, v: &'a Value, pointer: String) -> (String, &'a Value) {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => (r.to_string(), self.at(r)),
            None => (pointer, v),
        }
    }

    /// The response an operation documents for `status`; `None` if it
    /// documents none (schemathesis's status_code_conformance).
    fn operation_response(&self, path: &str, method: &str, status: u16) -> Option<Described<'_>> {
        let pointer = format!(
            "/paths/{}/{method}/responses/{status}",
            path.replace('~', "~0").replace('/', "~1")
        );
        let v = self.0.pointer(&pointer)?;
        let (pointer, response) = self.follow(v, pointer);
        Some(Described { pointer, response })
    }

    fn component_response(&self, name: &str) -> Described<'_> {
        let pointer = format!("/components/responses/{name}");
        Described {
            response: self.at(&pointer),
            pointer,
        }
    }

    /// Validates `instance` against the schema at `pointer`. The whole
    /// document is the root resource, so its `#/components/...` references
    /// resolve; its other keys are unknown keywords to JSON Schema.
    fn validate(&self, pointer: &str, instance: &Value) -> Result<(), String> {
        let mut root = self.0.clone();
        // A JSON Pointer in a URI fragment: path templates' braces are
        // not URI characters.
        let fragment = pointer
            .trim_start_matches('#')
            .replace('{', "%7B")
            .replace('}', "%7D");
        root["$ref"] = json!(format!("#{fragment}"));
        let validator = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&root)
            .map_err(|e| format!("the schema at {pointer} does not compile: {e}"))?;
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!("{pointer}: {}", errors.join("; ")))
        }
    }

    /// An answer against a documented response: its body against the
    /// JSON schema, and each of the headers the contract names that it
    /// carries (Retry-After, x-mde-replay, Allow) declared there, with a
    /// value the declared schema takes.
    fn conforms(
        &self,
        d: &Described<'_>,
        status: u16,
        headers: &[(String, String)],
        body: &Value,
    ) -> Result<(), String> {
        let media = d
            .response
            .pointer("/content/application~1json")
            .ok_or_else(|| format!("{} declares no application/json body", d.pointer))?;
        let content_type = headers
            .iter()
            .find(|(k, _)| k == "content-type")
            .map(|(_, v)| v.as_str());
        if content_type != Some("application/json") {
            return Err(format!("{status}: content-type {content_type:?}"));
        }
        if media.get("schema").is_none() {
            return Err(format!("{} has no schema", d.pointer));
        }
        self.validate(
            &format!("{}/content/application~1json/schema", d.pointer),
            body,
        )?;
        for (name, value) in headers {
            if !["retry-after", "x-mde-replay", "allow"].contains(&name.as_str()) {
                continue;
            }
            let declared = d
                .response
                .get("headers")
                .and_then(Value::as_object)
                .and_then(|h| h.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)))
                .ok_or_else(|| {
                    format!(
                        "{status} carries {name}, which {} does not declare",
                        d.pointer
                    )
                })?;
            let (hp, h) = self.follow(declared.1, format!("{}/headers/{}", d.pointer, declared.0));
            let typed = match h.pointer("/schema/type").and_then(Value::as_str) {
                Some("integer") => value
                    .parse::<i64>()
                    .map(Value::from)
                    .map_err(|_| format!("{name}: {value:?} is not an integer"))?,
                _ => json!(value),
            };
            self.validate(&format!("{hp}/schema"), &typed)?;
        }
        Ok(())
    }

    /// An answer of `method path_template` checked against the document.
    fn check(&self, path: &str, method: &str, resp: &Answer) {
        let d = self
            .operation_response(path, method, resp.status)
            .unwrap_or_else(|| {
                panic!(
                    "{method} {path} answered {}, which the document does not list: {}",
                    resp.status, resp.body
                )
            });
        if let Err(e) = self.conforms(&d, resp.status, &resp.headers, &resp.body) {
            panic!(
                "{method} {path} answered {}: {e}\n{}",
                resp.status, resp.body
            );
        }
    }

    fn check_component(&self, name: &str, resp: &Answer) {
        let d = self.component_response(name);
        if let Err(e) = self.conforms(&d, resp.status, &resp.headers, &resp.body) {
            panic!("{name}: {e}\n{}", resp.body);
        }
    }

    fn enum_at(&self, pointer: &str) -> Vec<String> {
        self.at(pointer)
            .as_array()
            .unwrap_or_else(|| panic!("{pointer} is not a list"))
            .iter()
            .map(|v| v.as_str().expect("a string").to_string())
            .collect()
    }
}

/// What the handler answered, as a client sees it.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Answer {
    fn of(resp: Response<Body>) -> Self {
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let body = match resp.body() {
            Body::Text(t) => serde_json::from_str(t).expect("the answer is JSON"),
            Body::Binary(b) => serde_json::from_slice(b).expect("the answer is JSON"),
            _ => Value::Null,
        };
        Self {
            status,
            headers,
            body,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn answer(h: &Harness, req: lambda_http::Request) -> Answer {
    Answer::of(mde_offboard::inbound::http::handle(&h.app, req).await)
}

fn event_body(name: &str) -> String {
    std::fs::read_to_string(format!("{EVENTS}/{name}"))
        .unwrap_or_else(|e| panic!("events/{name}: {e}"))
}

fn statuses(results: &Value) -> Vec<&str> {
    results["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].as_str().unwrap_or(""))
        .collect()
}

fn body(devices: &[&str]) -> String {
    json!({"ticket": "INC0012345", "comment": "Laptop retired", "devices": devices}).to_string()
}

#[tokio::test]
async fn offboard_answers_match_the_document() {
    let doc = Doc::load();
    let h = Harness::new().await;
    let route = ("/v1/offboard", "post");
    let check = |a: &Answer| doc.check(route.0, route.1, a);

    // 200: the README's sample, every outcome but the dry-run and budget ones.
    let sample = event_body("generic.body.json");
    let ts = now().to_string();
    let sig = StandardWebhooks::from_secret(mde_testkit::GENERIC_WEBHOOK_SECRET)
        .unwrap()
        .sign("msg_openapi_replay", now(), sample.as_bytes());
    let headers = [
        ("webhook-id", "msg_openapi_replay"),
        ("webhook-timestamp", ts.as_str()),
        ("webhook-signature", sig.as_str()),
    ];
    let first = answer(&h, request("POST", "/v1/offboard", &headers, &sample)).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(
        statuses(&first.body),
        [
            "offboard_requested",
            "ambiguous",
            "unsupported_os",
            "protected",
            "not_found"
        ]
    );
    check(&first);
    // The same delivery again: the replay, marked with x-mde-replay.
    let again = answer(&h, request("POST", "/v1/offboard", &headers, &sample)).await;
    assert_eq!(again.header("x-mde-replay"), Some("true"));
    check(&again);

    // 200, a dry run.
    let dry: Value = serde_json::from_str(&event_body("generic-dry-run.json")).unwrap();
    let dry = answer(
        &h,
        signed("POST", "/v1/offboard", dry["body"].as_str().unwrap()),
    )
    .await;
    assert_eq!(statuses(&dry.body), ["would_offboard", "would_offboard"]);
    check(&dry);

    // 400: each way a body can be malformed.
    for (raw, code) in [
        ("not json", "invalid_json"),
        (
            r#"{"ticket": "T", "comment": "c", "devices": ["a"], "dryRun": true}"#,
            "unknown_field",
        ),
        (
            r#"{"ticket": "T", "comment": "c", "devices": "a"}"#,
            "wrong_type",
        ),
        (r#"{"comment": "c", "devices": ["a"]}"#, "missing_field"),
        (
            r#"{"ticket": "T", "ticket": "U", "comment": "c", "devices": ["a"]}"#,
            "invalid_json",
        ),
    ] {
        let a = answer(&h, signed("POST", "/v1/offboard", raw)).await;
        assert_eq!(
            (a.status, a.body["error"]["code"].as_str()),
            (400, Some(code)),
            "{raw}"
        );
        check(&a);
    }

    // 401.
    let a = answer(
        &h,
        request("POST", "/v1/offboard", &[], &body(&[ids::WIN11])),
    )
    .await;
    assert_eq!(a.status, 401);
    check(&a);

    // 413.
    let big = "x".repeat(256 * 1024 + 1);
    let a = answer(&h, signed("POST", "/v1/offboard", &big)).await;
    assert_eq!(a.status, 413);
    check(&a);

    // 422: values out of bounds, too many devices, no queue, a callback host.
    let many: Vec<String> = (0..26).map(|i| format!("host-{i}.contoso.com")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    for (raw, code) in [
        (body(&["bad\u{7}name"]), "invalid_value"),
        (body(&many), "too_many_devices"),
        (
            json!({"ticket": "T", "comment": "c", "devices": ["a"], "mode": "queue"}).to_string(),
            "queue_not_configured",
        ),
        (
            json!({"ticket": "T", "comment": "c", "devices": ["a"], "callback_url": "https://evil.example/x"})
                .to_string(),
            "callback_not_allowed",
        ),
    ] {
        let a = answer(&h, signed("POST", "/v1/offboard", &raw)).await;
        assert_eq!((a.status, a.body["error"]["code"].as_str()), (422, Some(code)), "{raw}");
        check(&a);
    }

    // 503 with the 200 body: a throttle that does not fit the deadline.
    h.fake.fault(
        Api::GetMachine,
        Fault::Throttle {
            retry_after_secs: 1,
        },
    );
    let req = with_deadline(
        signed("POST", "/v1/offboard", &body(&[ids::WIN10])),
        Duration::from_millis(2000),
    );
    let a = answer(&h, req).await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(a.header("retry-after").is_some());
    assert_eq!(statuses(&a.body), ["failed"]);
    check(&a);
}

#[tokio::test]
async fn queued_budget_and_unavailable_answers_match_the_document() {
    let doc = Doc::load();
    // 202: queue mode.
    let h = Harness::with(Options {
        queue_url: Some(new_queue().await),
        ..Default::default()
    })
    .await;
    let raw = json!({"ticket": "INC9", "comment": "bulk", "devices": [ids::WIN11, "a.contoso.com"], "mode": "queue"});
    let a = answer(&h, signed("POST", "/v1/offboard", &raw.to_string())).await;
    assert_eq!(a.status, 202, "{}", a.body);
    doc.check("/v1/offboard", "post", &a);

    // 200 with budget_exceeded: a budget of one for two devices.
    let h = Harness::with(Options {
        env: vec![
            ("LEDGER_TABLE", "mde-ledger-openapi".into()),
            ("MAX_OFFBOARDS_PER_HOUR", "1".into()),
        ],
        ..Default::default()
    })
    .await;
    let app = h.app.with_ledger(Arc::new(InMemoryLedger::new()));
    let a = Answer::of(
        mde_offboard::inbound::http::handle(
            &app,
            signed("POST", "/v1/offboard", &body(&[ids::WIN11, ids::WIN10])),
        )
        .await,
    );
    let mut got = statuses(&a.body);
    got.sort();
    assert_eq!(got, ["budget_exceeded", "offboard_requested"], "{}", a.body);
    doc.check("/v1/offboard", "post", &a);

    // 503 with an error body: Secrets Manager cannot be reached.
    let h = Harness::with(Options {
        secrets_endpoint: Some("http://127.0.0.1:9".into()),
        ..Default::default()
    })
    .await;
    let a = answer(&h, signed("POST", "/v1/offboard", &body(&[ids::WIN11]))).await;
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (503, Some("secret_unavailable"))
    );
    doc.check("/v1/offboard", "post", &a);
    let a = answer(
        &h,
        signed(
            "GET",
            "/v1/actions/5382f7ea-7557-4ab7-9782-d50480024a4e",
            "",
        ),
    )
    .await;
    assert_eq!(a.status, 503);
    doc.check("/v1/actions/{action_id}", "get", &a);
}

#[tokio::test]
async fn webhook_answers_match_the_document() {
    let doc = Doc::load();
    let h = Harness::new().await;
    let route = "/v1/webhooks/{source}";
    let bearer = |body: &str| {
        request(
            "POST",
            "/v1/webhooks/servicenow",
            &[("authorization", "Bearer snow-bearer-token-never-log")],
            body,
        )
    };
    // 200: the ServiceNow sample acts.
    let a = answer(&h, bearer(&event_body("servicenow.body.json"))).await;
    assert_eq!(a.status, 200, "{}", a.body);
    doc.check(route, "post", &a);
    // 202 ignored: a Jira update that does not close the issue.
    let mut jira: Value = serde_json::from_str(&event_body("jira.body.json")).unwrap();
    jira["timestamp"] = json!(now() * 1000);
    jira["changelog"] = json!({"items": []});
    let raw = jira.to_string();
    let sig = format!(
        "sha256={}",
        hmac_hex("jira-webhook-secret-never-log", raw.as_bytes())
    );
    let a = answer(
        &h,
        request(
            "POST",
            "/v1/webhooks/jira",
            &[("x-hub-signature", &sig)],
            &raw,
        ),
    )
    .await;
    assert_eq!(
        (a.status, a.body["status"].as_str()),
        (202, Some("ignored")),
        "{}",
        a.body
    );
    doc.check(route, "post", &a);
    // 400: an authenticated sender whose body is not JSON.
    let a = answer(&h, bearer("<xml/>")).await;
    assert_eq!(a.status, 400);
    doc.check(route, "post", &a);
    // 401 and 404.
    let a = answer(&h, request("POST", "/v1/webhooks/servicenow", &[], "{}")).await;
    assert_eq!(a.status, 401);
    doc.check(route, "post", &a);
    let a = answer(&h, request("POST", "/v1/webhooks/nosuch", &[], "{}")).await;
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (404, Some("unknown_source"))
    );
    doc.check(route, "post", &a);
}

#[tokio::test]
async fn action_and_ticket_answers_match_the_document() {
    let doc = Doc::load();
    let h = Harness::with(Options {
        env: vec![("LEDGER_TABLE", "mde-ledger-openapi".into())],
        ..Default::default()
    })
    .await;
    let app = h.app.with_ledger(Arc::new(InMemoryLedger::new()));
    let app = &app;
    let send = |req: lambda_http::Request| async move {
        Answer::of(mde_offboard::inbound::http::handle(app, req).await)
    };
    let done = send(signed("POST", "/v1/offboard", &body(&[ids::WIN11]))).await;
    let action_id = done.body["results"][0]["action_id"]
        .as_str()
        .expect("an action")
        .to_string();

    let get = "/v1/actions/{action_id}";
    let a = send(signed("GET", &format!("/v1/actions/{action_id}"), "")).await;
    assert_eq!(
        (a.status, a.body["status"].as_str()),
        (200, Some("Pending")),
        "{}",
        a.body
    );
    doc.check(get, "get", &a);
    let a = send(signed(
        "GET",
        "/v1/actions/00000000-0000-0000-0000-000000000000",
        "",
    ))
    .await;
    assert_eq!(a.status, 404);
    doc.check(get, "get", &a);
    let a = send(request("GET", &format!("/v1/actions/{action_id}"), &[], "")).await;
    assert_eq!(a.status, 401);
    doc.check(get, "get", &a);

    let cancel = "/v1/actions/{action_id}/cancel";
    let path = format!("/v1/actions/{action_id}/cancel");
    for (raw, status) in [
        (r#"{"comment": "wrong laptop", "why": 1}"#, 400),
        (r#"{"comment": "  "}"#, 422),
        (r#"{"comment": "wrong laptop"}"#, 200),
    ] {
        let a = send(signed("POST", &path, raw)).await;
        assert_eq!(a.status, status, "{raw}: {}", a.body);
        doc.check(cancel, "post", &a);
    }
    // Cancelled is final: 409 not_cancellable.
    let a = send(signed("POST", &path, r#"{"comment": "again"}"#)).await;
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (409, Some("not_cancellable"))
    );
    doc.check(cancel, "post", &a);

    // A signed call sent again: to its own path, the replay; to another
    // path, 409 delivery_id_reused.
    let first = signed("GET", &format!("/v1/actions/{action_id}"), "");
    let captured = first.headers().clone();
    send(first).await;
    let again = |path: &str| {
        let mut r = request("GET", path, &[], "");
        *r.headers_mut() = captured.clone();
        r
    };
    let a = send(again(&format!("/v1/actions/{action_id}"))).await;
    assert_eq!((a.status, a.header("x-mde-replay")), (200, Some("true")));
    doc.check(get, "get", &a);
    for (template, method, path) in [
        (
            get,
            "get",
            "/v1/actions/00000000-0000-0000-0000-000000000000",
        ),
        ("/v1/tickets/{ticket}", "get", "/v1/tickets/INC0012345"),
    ] {
        let a = send(again(path)).await;
        assert_eq!(
            (a.status, a.body["error"]["code"].as_str()),
            (409, Some("delivery_id_reused")),
            "{path}"
        );
        doc.check(template, method, &a);
    }
    let cancel_once = signed("POST", &path, r#"{"comment": "again"}"#);
    let captured = cancel_once.headers().clone();
    send(cancel_once).await;
    let mut elsewhere = request(
        "POST",
        "/v1/actions/00000000-0000-0000-0000-000000000000/cancel",
        &[],
        r#"{"comment": "again"}"#,
    );
    *elsewhere.headers_mut() = captured;
    let a = send(elsewhere).await;
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (409, Some("delivery_id_reused"))
    );
    doc.check(cancel, "post", &a);

    let ticket = "/v1/tickets/{ticket}";
    let a = send(signed("GET", "/v1/tickets/INC0012345", "")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.body["devices"][0]["action_status"], "Cancelled",
        "{}",
        a.body
    );
    doc.check(ticket, "get", &a);
    let a = send(request("GET", "/v1/tickets/INC0012345", &[], "")).await;
    assert_eq!(a.status, 401);
    doc.check(ticket, "get", &a);
    let a = send(signed("GET", "/v1/tickets/INC%07X", "")).await;
    assert_eq!(a.status, 422, "{}", a.body);
    doc.check(ticket, "get", &a);
    // Without the ledger the route does not exist.
    let a = answer(
        &h_without_ledger().await,
        signed("GET", "/v1/tickets/INC0012345", ""),
    )
    .await;
    assert_eq!(a.status, 404);
    doc.check(ticket, "get", &a);
}

async fn h_without_ledger() -> Harness {
    Harness::new().await
}

#[tokio::test]
async fn unknown_paths_and_methods_match_the_documented_errors() {
    let doc = Doc::load();
    let h = Harness::new().await;
    let a = answer(&h, signed("POST", "/v2/offboard", "{}")).await;
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    doc.check_component("NotFound", &a);
    let a = answer(&h, signed("GET", "/v1/offboard", "")).await;
    assert_eq!(a.status, 405);
    assert_eq!(a.header("allow"), Some("POST"));
    doc.check_component("MethodNotAllowed", &a);
}

/// The checker itself: an answer that breaks the document is caught, so the
/// passes above mean something.
#[test]
fn an_answer_that_breaks_the_document_is_refused() {
    let doc = Doc::load();
    let ok = doc.operation_response("/v1/offboard", "post", 200).unwrap();
    let json_ct = vec![("content-type".to_string(), "application/json".to_string())];
    let good = json!({"ticket": "T", "dry_run": false, "results": [
        {"device": "a", "machine_id": null, "status": "not_found"}]});
    doc.conforms(&ok, 200, &json_ct, &good)
        .expect("a good answer");
    let broken = [
        json!({"ticket": "T", "dry_run": false, "results": [{"device": "a", "machine_id": null, "status": "gone"}]}),
        json!({"ticket": "T", "dry_run": false, "results": [{"device": "a", "machine_id": "xyz", "status": "not_found"}]}),
        json!({"ticket": "T", "dry_run": false, "results": [], "extra": 1}),
        json!({"ticket": "T", "results": []}),
    ];
    for b in broken {
        assert!(doc.conforms(&ok, 200, &json_ct, &b).is_err(), "{b} passed");
    }
    // An undeclared header, a header of the wrong type, an error code under
    // the wrong status, an undocumented status.
    let mut with_ra = json_ct.clone();
    with_ra.push(("retry-after".into(), "5".into()));
    assert!(doc.conforms(&ok, 200, &with_ra, &good).is_err());
    let busy = doc.operation_response("/v1/offboard", "post", 503).unwrap();
    let down = json!({"error": {"code": "secret_unavailable", "message": "Down."}});
    doc.conforms(&busy, 503, &with_ra, &down)
        .expect("a good 503");
    let mut bad_ra = json_ct.clone();
    bad_ra.push(("retry-after".into(), "soon".into()));
    assert!(doc.conforms(&busy, 503, &bad_ra, &down).is_err());
    let unauthorized = doc.operation_response("/v1/offboard", "post", 401).unwrap();
    assert!(doc.conforms(&unauthorized, 401, &json_ct, &down).is_err());
    assert!(
        doc.operation_response("/v1/offboard", "post", 418)
            .is_none()
    );
}

/// Every code `ApiError::code` can answer is in the document's enum, and
/// every per-status enum names only codes of that enum.
#[test]
fn the_error_enum_names_every_code_the_function_answers() {
    let doc = Doc::load();
    let all = doc.enum_at("/components/schemas/ErrorCode/enum");
    let src =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/error.rs")).unwrap();
    // `ApiError::answer` holds each code (its only string literals).
    let start = src.find("fn answer(&self)").expect("ApiError::answer");
    let end = start + src[start..].find("\n    }\n").expect("the end of answer()");
    let codes: Vec<&str> = src[start..end].split('"').skip(1).step_by(2).collect();
    assert!(codes.len() >= 25, "{codes:?}");
    for c in &codes {
        assert!(
            all.iter().any(|a| a == c),
            "error code {c} is missing from ErrorCode"
        );
    }
    let schemas = doc.at("/components/schemas").as_object().unwrap();
    let mut covered: Vec<String> = Vec::new();
    for (name, s) in schemas
        .iter()
        .filter(|(n, _)| n.starts_with("Error") && *n != "ErrorCode")
    {
        let Some(code) = s.pointer("/allOf/1/properties/error/properties/code") else {
            continue;
        };
        let listed: Vec<String> = match (code.get("enum"), code.get("const")) {
            (Some(e), _) => e
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect(),
            (_, Some(c)) => vec![c.as_str().unwrap().to_string()],
            _ => panic!("{name} restricts no code"),
        };
        for c in &listed {
            assert!(all.contains(c), "{name} names {c}, not in ErrorCode");
        }
        covered.extend(listed);
    }
    for c in &codes {
        assert!(
            covered.iter().any(|a| a == c),
            "no status documents error code {c}"
        );
    }
}

/// The device statuses are the domain's, all of them.
#[test]
fn the_device_status_enum_is_the_domains() {
    use mde_offboard::domain::offboard::Status;
    let doc = Doc::load();
    // An exhaustive match: a new status does not compile until listed here.
    let listed = |s: Status| match s {
        Status::OffboardRequested
        | Status::AlreadyPending
        | Status::WouldOffboard
        | Status::NotFound
        | Status::Ambiguous
        | Status::UnsupportedOs
        | Status::Protected
        | Status::BudgetExceeded
        | Status::Failed => s.as_str(),
    };
    let all = [
        Status::OffboardRequested,
        Status::AlreadyPending,
        Status::WouldOffboard,
        Status::NotFound,
        Status::Ambiguous,
        Status::UnsupportedOs,
        Status::Protected,
        Status::BudgetExceeded,
        Status::Failed,
    ];
    let want: Vec<&str> = all.into_iter().map(listed).collect();
    assert_eq!(doc.enum_at("/components/schemas/DeviceStatus/enum"), want);
}

/// The examples are the events/ samples, so they do not drift apart.
#[test]
fn the_examples_are_the_events_samples() {
    let doc = Doc::load();
    let mut seen = 0;
    for (path, method) in [("/v1/offboard", "post"), ("/v1/webhooks/{source}", "post")] {
        let pointer = format!(
            "/paths/{}/{method}/requestBody/content/application~1json/examples",
            path.replace('/', "~1")
        );
        for (name, ex) in doc.at(&pointer).as_object().unwrap() {
            let summary = ex["summary"].as_str().unwrap_or("");
            let file = summary
                .split_whitespace()
                .find(|w| w.starts_with("events/"))
                .unwrap_or_else(|| panic!("example {name} names no events/ file"));
            let text = event_body(file.trim_start_matches("events/"));
            let mut want: Value = serde_json::from_str(&text).unwrap();
            if want.get("requestContext").is_some() {
                want = serde_json::from_str(want["body"].as_str().unwrap()).unwrap();
            }
            assert_eq!(ex["value"], want, "example {name} differs from {file}");
            // A sample is a valid body of its own route.
            if path == "/v1/offboard" {
                doc.validate("/components/schemas/GenericBody", &ex["value"])
                    .unwrap();
            }
            seen += 1;
        }
    }
    assert!(seen >= 6, "{seen}");
}

/// The document's text rules (ticket, comment, device) say what the code
/// checks: a value the schema takes is one the function takes, and back.
#[test]
fn the_text_patterns_are_the_codes_rules() {
    use mde_offboard::domain::model::{Comment, DeviceRef, Ticket};
    let doc = Doc::load();
    let mut samples: Vec<String> = [
        "INC0012345",
        "a",
        " padded ",
        "   ",
        "",
        "tab\there",
        "naïve-ü",
        "x y",
        "日本",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let unsafe_chars = [
        '\u{0}', '\u{7}', '\u{1b}', '\u{7f}', '\u{85}', '\u{9f}', '\u{61c}', '\u{200b}',
        '\u{200f}', '\u{202a}', '\u{202e}', '\u{2060}', '\u{2066}', '\u{2069}', '\u{feff}',
    ];
    for c in unsafe_chars {
        samples.push(format!("INC{c}1"));
    }
    samples.push("n".repeat(255));
    samples.push("n".repeat(256));
    samples.push("n".repeat(257));
    for s in &samples {
        let v = json!(s);
        let takes = |name: &str| {
            doc.validate(&format!("/components/schemas/{name}"), &v)
                .is_ok()
        };
        assert_eq!(
            takes("Ticket"),
            Ticket::parse("ticket", s).is_ok(),
            "ticket {s:?}"
        );
        assert_eq!(
            takes("Comment"),
            Comment::parse("comment", s).is_ok(),
            "comment {s:?}"
        );
        assert_eq!(takes("Device"), DeviceRef::parse(s).is_ok(), "device {s:?}");
    }
}
