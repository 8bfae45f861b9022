//! Every recipe of the senders' pages (`docs/src/senders/`) against its
//! sample under `events/`: where the recipe builds the body (a Splunk SOAR
//! custom function, the XSOAR and Tines templates, the ServiceNow business
//! rule, the EventBridge input transformer, the Step Functions parameters),
//! the test builds it the same way from the recipe's own text and compares
//! it with the sample; then the sample goes through the handler with the
//! auth the recipe sets up (the "all senders together" `SOURCES` of the
//! custom sources page), and the outcome the page promises is asserted.
//! A sample that drifts from its recipe, or a recipe from the function,
//! fails here. The presets' own samples (`jira`, `jira-automation`,
//! `pagerduty`, `servicenow`, `defender-incident`) and the real payloads
//! of `../shared/realworld/` for them are in `tests/sources.rs`; the real
//! Defender and Sentinel incidents are here.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::*;
use lambda_http::{Context, LambdaEvent};
use mde_offboard::inbound::InvocationError;
use mde_testkit::defender::TENANT_ID;
use mde_testkit::entra::{AUDIENCE_URI, TestKey, v1_claims};
use mde_testkit::{Api, Fault};
use serde_json::value::RawValue;
use serde_json::{Value, json};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The keys the recipes put under `webhook_secrets` (custom sources page,
/// "All senders together"), at least 16 characters each.
const SOAR_KEY: &str = "soar-api-key-0123456789abcdef-never-log";
const XSOAR_BASIC: &str = "mde-xsoar:xsoar-password-never-log";
const TINES_KEY: &str = "tines-api-key-0123456789abcdef-never-log";
const TORQ_KEY: &str = "torq-api-key-0123456789abcdef-never-log";
const EVENTBRIDGE_KEY: &str = "eventbridge-api-key-0123456789-never-log";
const SERVICENOW_BASIC: &str = "servicenow:servicenow-password-never-log";

fn text(path: &str) -> String {
    let full = format!("{ROOT}/{path}");
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

fn sample(name: &str) -> Value {
    let t = text(&format!("events/{name}"));
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("events/{name}: {e}"))
}

fn page(name: &str) -> String {
    text(&format!("docs/src/senders/{name}"))
}

/// A payload from `../shared/realworld/`, as found upstream.
fn realworld(path: &str) -> Value {
    let full = format!("{ROOT}/../shared/realworld/{path}");
    let t = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"));
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// The fenced blocks of `lang` in a page, in order.
fn blocks(page: &str, lang: &str) -> Vec<String> {
    let fence = format!("```{lang}\n");
    page.split(&fence)
        .skip(1)
        .map(|rest| rest.split("\n```").next().unwrap_or_default().to_string())
        .collect()
}

/// The first JSON block after `heading` on the page.
fn json_after(page: &str, heading: &str) -> Value {
    let rest = page
        .split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("no '{heading}' on the page"));
    let block = blocks(rest, "json")
        .into_iter()
        .next()
        .expect("a json block");
    serde_json::from_str(&block).unwrap_or_else(|e| panic!("the block after {heading}: {e}"))
}

/// The `SOURCES` every generic-route recipe adds to, as the custom sources
/// page shows it, and a secret holding the recipes' keys.
fn all_senders() -> Options {
    let sources = json_after(
        &text("docs/src/senders/custom-sources.md"),
        "## All senders together",
    );
    let mut secret: Value = serde_json::from_str(&mde_testkit::secret_json()).unwrap();
    let keys = &mut secret["webhook_secrets"];
    for (name, value) in [
        ("soar", SOAR_KEY),
        ("xsoar", XSOAR_BASIC),
        ("tines", TINES_KEY),
        ("torq", TORQ_KEY),
        ("eventbridge", EVENTBRIDGE_KEY),
        ("servicenow_basic", SERVICENOW_BASIC),
    ] {
        keys[name] = json!(value);
    }
    Options {
        env: vec![
            ("PROTECTED_TAGS", "vip".into()),
            ("SOURCES", sources.to_string()),
            ("DIRECT_EVENTS", "eventbridge,invoke".into()),
        ],
        secret: secret.to_string(),
        ..Options::default()
    }
}

fn with_env(mut o: Options, name: &'static str, value: &str) -> Options {
    o.env.push((name, value.to_string()));
    o
}

fn basic(pair: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

fn statuses(b: &Value) -> Vec<String> {
    results(b)
        .iter()
        .map(|r| r["status"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// POSTs `body` to `path` with one header, as the tool sends it.
async fn post(h: &Harness, path: &str, header: (&str, &str), body: &str) -> (u16, Value) {
    let (status, b, _) = h.send(request("POST", path, &[header], body)).await;
    (status, b)
}

/// A direct invocation, in process, as Lambda hands it over.
async fn invoke(h: &Harness, payload: &Value, budget: Duration) -> Result<Value, InvocationError> {
    let mut ctx = Context::default();
    ctx.request_id = "recipes-test".into();
    ctx.deadline = (SystemTime::now() + budget)
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let raw = RawValue::from_string(payload.to_string()).unwrap();
    mde_offboard::inbound::dispatch(&h.app, LambdaEvent::new(raw, ctx)).await
}

// --- Splunk SOAR ----------------------------------------------------------

/// The page's custom function, run by Python as SOAR runs it, makes the
/// sample; the sample offboards with the asset's key; the page's
/// `test_path` is a real auth test; a format block's comma-joined list is
/// the 400 the page warns of.
#[tokio::test]
async fn splunk_soar_custom_function_builds_the_sample_and_it_offboards() {
    let page = page("splunk-soar.md");
    assert!(
        page.contains("{{#include ../../../events/splunk-soar-body.py}}")
            && page.contains("{{#include ../../../events/splunk-soar.body.json}}"),
        "the page shows the function and its sample"
    );
    let script = format!(
        "{}\nimport json, sys\nsys.stdout.write(mde_offboard_body(container_id=4711, \
         devices=['laptop-17.contoso.com', 'srv-app-01.contoso.com', None])['body'])\n",
        text("events/splunk-soar-body.py")
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 runs (the tests need Python 3)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        built,
        sample("splunk-soar.body.json"),
        "the function makes the sample"
    );

    let h = Harness::with(all_senders()).await;
    let (status, b) = post(
        &h,
        "/v1/offboard",
        ("x-api-key", SOAR_KEY),
        &built.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["ticket"], "SOAR-4711");
    assert_eq!(statuses(&b), ["offboard_requested", "offboard_requested"]);

    // Test Connectivity: a GET on base_url + test_path with the token
    // header; it passes on 200-399 (the app's README).
    let test_path = page
        .split("**test_path** `")
        .nth(1)
        .and_then(|r| r.split('`').next())
        .expect("the page names a test_path");
    let (status, b, _) = h
        .send(request("GET", test_path, &[("x-api-key", SOAR_KEY)], ""))
        .await;
    assert_eq!(status, 200, "{test_path}: {b}");
    let (status, _, _) = h
        .send(request(
            "GET",
            test_path,
            &[("x-api-key", "a-wrong-key-0123456789")],
            "",
        ))
        .await;
    assert_eq!(status, 401, "a wrong key fails the connectivity test");

    // What a format block makes of a list parameter: not JSON.
    let calls = h.fake.count(Api::Offboard);
    let joined = r#"{"ticket": "SOAR-4712", "comment": "c", "devices": laptop-17.contoso.com, srv-app-01.contoso.com}"#;
    let (status, b) = post(&h, "/v1/offboard", ("x-api-key", SOAR_KEY), joined).await;
    assert_eq!(
        (status, b["error"]["code"].as_str()),
        (400, Some("invalid_json"))
    );
    // A container id passed as a number is refused, not offboarded.
    let number = json!({"ticket": 4711, "comment": "c", "devices": ["laptop-17.contoso.com"]});
    let (status, _) = post(
        &h,
        "/v1/offboard",
        ("x-api-key", SOAR_KEY),
        &number.to_string(),
    )
    .await;
    assert!((400..500).contains(&status), "{status}");
    assert_eq!(h.fake.count(Api::Offboard), calls);
}

// --- Cortex XSOAR ---------------------------------------------------------

/// The page's `!HttpV2` body template, filled as XSOAR fills it, is the
/// sample; Basic with `auth_credentials` admits it.
#[tokio::test]
async fn xsoar_httpv2_template_is_the_sample_and_basic_admits_it() {
    let page = page("xsoar.md");
    let command = blocks(&page, "text")
        .into_iter()
        .next()
        .expect("the command");
    let template = command
        .split("body=`")
        .nth(1)
        .and_then(|r| r.split('`').next())
        .expect("a body=`...` argument");
    let filled = template.replace("${incident.id}", "4711").replace(
        "${MDE.Devices}",
        r#"["laptop-17.contoso.com","srv-app-01.contoso.com"]"#,
    );
    let built: Value = serde_json::from_str(&filled).unwrap_or_else(|e| panic!("{filled}: {e}"));
    assert_eq!(built, sample("xsoar.body.json"));
    let (user, password) = XSOAR_BASIC.split_once(':').unwrap();
    assert!(
        command.contains(&format!("auth_credentials=\"{user},<password>\"")),
        "{command}"
    );
    assert!(
        !password.contains(','),
        "HttpV2 splits auth_credentials on commas"
    );

    let h = Harness::with(all_senders()).await;
    let (status, b) = post(
        &h,
        "/v1/offboard",
        ("authorization", &basic(XSOAR_BASIC)),
        &built.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["ticket"], "4711");
    assert_eq!(statuses(&b), ["offboard_requested", "offboard_requested"]);
    let (status, _) = post(
        &h,
        "/v1/offboard",
        ("authorization", &basic("mde-xsoar:not-the-password-at-all")),
        &built.to_string(),
    )
    .await;
    assert_eq!(status, 401);
}

// --- Tines ----------------------------------------------------------------

/// The page's HTTP Request options: the payload, with the text pill
/// rendered as text and `devices` as the formula's array, is the sample;
/// the header the options name admits it.
#[tokio::test]
async fn tines_http_request_options_make_the_sample_and_its_header_admits_it() {
    let options = json_after(&page("tines.md"), "# Tines");
    assert_eq!(options["method"], "post");
    assert_eq!(options["content_type"], "json");
    assert!(options["url"].as_str().unwrap().ends_with("/v1/offboard"));
    let header = options["headers"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    let mut payload = options["payload"].clone();
    payload["ticket"] = json!(
        payload["ticket"]
            .as_str()
            .unwrap()
            .replace("<<case.id>>", "77")
    );
    assert_eq!(payload["devices"], "<<case.hosts>>", "a formula field");
    payload["devices"] = json!(["laptop-17.contoso.com"]);
    assert_eq!(payload, sample("tines.body.json"));

    let h = Harness::with(all_senders()).await;
    let (status, b) = post(
        &h,
        "/v1/offboard",
        (header.as_str(), TINES_KEY),
        &payload.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["ticket"], "TINES-77");
    assert_eq!(results(&b)[0]["machine_id"], ids::WIN11);
}

// --- Torq -----------------------------------------------------------------

#[tokio::test]
async fn torq_sample_offboards_with_its_header() {
    let page = page("torq.md");
    assert!(page.contains("{{#include ../../../events/torq.body.json}}"));
    let h = Harness::with(all_senders()).await;
    let (status, b) = post(
        &h,
        "/v1/offboard",
        ("x-api-key", TORQ_KEY),
        &sample("torq.body.json").to_string(),
    )
    .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["ticket"], "TORQ-2031");
    assert_eq!(results(&b)[0]["machine_id"], ids::SERVER2022);
}

// --- ServiceNow -----------------------------------------------------------

/// What `events/servicenow-business-rule.js` puts in `JSON.stringify({...})`,
/// evaluated against an incident record: `current.getValue('f')`,
/// `current.getUniqueValue()`, `current.f.getDisplayValue()`,
/// `current.f.g.toString()` (empty when the record lacks it) and `a || b`.
fn business_rule_body(record: &Value) -> Value {
    let script = text("events/servicenow-business-rule.js");
    let literal = script
        .split("JSON.stringify({")
        .nth(1)
        .and_then(|rest| rest.split("}))").next())
        .expect("the rule builds its body with JSON.stringify({...})");
    let eval = |expr: &str| -> String {
        let expr = expr.trim();
        let quoted = |e: &str| e.split('\'').nth(1).unwrap_or_default().to_string();
        let field = |f: &str| record[f].as_str().unwrap_or_default().to_string();
        if expr == "current.getUniqueValue()" {
            field("sys_id")
        } else if expr.starts_with("current.getValue(") {
            field(&quoted(expr))
        } else if let Some(f) = expr
            .strip_prefix("current.")
            .and_then(|e| e.strip_suffix(".getDisplayValue()"))
        {
            field(f)
        } else if let Some(f) = expr
            .strip_prefix("current.")
            .and_then(|e| e.strip_suffix(".toString()"))
        {
            field(f)
        } else if expr == "''" {
            String::new()
        } else {
            panic!("an expression this test does not know: {expr}")
        }
    };
    let mut body = serde_json::Map::new();
    for pair in literal.split(",\n") {
        let (key, expr) = pair.trim().split_once(':').expect("key: value");
        let value = expr
            .split(" || ")
            .map(eval)
            .find(|v| !v.is_empty())
            .unwrap_or_default();
        body.insert(key.trim().to_string(), json!(value));
    }
    Value::Object(body)
}

/// The incident as ServiceNow holds it when it closes; `cmdb_ci` is the
/// CI's display value (its short name), `cmdb_ci.fqdn` its FQDN field.
fn incident(fqdn: &str) -> Value {
    json!({"sys_id": "9d385017c611228701d22104cc95c371", "number": "INC0012345",
        "state": "Closed", "short_description": "Laptop stolen: laptop-17",
        "cmdb_ci": "LAPTOP-17", "cmdb_ci.fqdn": fqdn})
}

/// The business rule makes the sample, key for key; the REST Message's
/// Basic profile admits it and the CI is offboarded.
#[tokio::test]
async fn servicenow_business_rule_makes_the_sample_and_basic_admits_it() {
    let body = business_rule_body(&incident("laptop-17.contoso.com"));
    assert_eq!(
        body,
        sample("servicenow.body.json"),
        "the rule sends the sample"
    );
    assert_eq!(body["sys_id"], "9d385017c611228701d22104cc95c371");

    let h = Harness::with(all_senders()).await;
    let (status, b) = post(
        &h,
        "/v1/webhooks/servicenow",
        ("authorization", &basic(SERVICENOW_BASIC)),
        &body.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["ticket"], "INC0012345");
    assert_eq!(
        results(&b).len(),
        1,
        "the empty mde_machine_id is skipped: {b}"
    );
    assert_eq!(results(&b)[0]["machine_id"], ids::WIN11);
    assert_eq!(results(&b)[0]["status"], "offboard_requested");
}

/// The business rule's POST, with the REST Message's Basic profile.
async fn send(h: &Harness, body: &Value) -> (u16, Value) {
    let auth = basic(SERVICENOW_BASIC);
    post(
        h,
        "/v1/webhooks/servicenow",
        ("authorization", &auth),
        &body.to_string(),
    )
    .await
}

/// A CI without an FQDN: the rule sends its short name. `NAME_MATCH=host`
/// (documented beside the recipe) finds the FQDN Defender holds; without
/// it the name is `not_found`; a short name two machines share is
/// `ambiguous` and nothing is offboarded.
#[tokio::test]
async fn servicenow_short_ci_names_match_with_name_match_host() {
    let body = business_rule_body(&incident(""));
    assert_eq!(body["cmdb_ci"], "LAPTOP-17");

    let exact = Harness::with(all_senders()).await;
    let (status, b) = send(&exact, &body).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(statuses(&b), ["not_found"]);

    let host = Harness::with(with_env(all_senders(), "NAME_MATCH", "host")).await;
    let (status, b) = send(&host, &body).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(statuses(&b), ["offboard_requested"]);
    assert_eq!(results(&b)[0]["machine_id"], ids::WIN11);

    let calls = host.fake.count(Api::Offboard);
    let mut kiosk = body;
    kiosk["cmdb_ci"] = json!("KIOSK-01");
    kiosk["number"] = json!("INC0012346");
    let (status, b) = send(&host, &kiosk).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(statuses(&b), ["ambiguous"]);
    assert_eq!(host.fake.count(Api::Offboard), calls);
}

// --- EventBridge API destination ------------------------------------------

/// EventBridge's input transformer as its API reference describes it: each
/// `<name>` of `InputTemplate` is replaced by the value at its path, a
/// string as its text (inside the template's quotes), anything else as JSON.
fn transform(target: &Value, event: &Value) -> Value {
    let t = &target["InputTransformer"];
    let mut out = t["InputTemplate"].as_str().unwrap().to_string();
    for (name, path) in t["InputPathsMap"].as_object().unwrap() {
        let pointer = path
            .as_str()
            .unwrap()
            .strip_prefix("$.")
            .unwrap()
            .replace('.', "/");
        let value = event
            .pointer(&format!("/{pointer}"))
            .unwrap_or_else(|| panic!("{path} is not in the event"));
        let rendered = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        out = out.replace(&format!("<{name}>"), &rendered);
    }
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("the template makes no JSON: {out}: {e}"))
}

/// The page's `targets.json` turns the sample event into the sample body,
/// which the connection's API key admits.
#[tokio::test]
async fn eventbridge_api_destination_transformer_makes_the_sample_and_the_key_admits_it() {
    let page = page("eventbridge-api-destination.md");
    assert!(page.contains("{{#include ../../../events/eventbridge-api-destination.targets.json}}"));
    let targets = sample("eventbridge-api-destination.targets.json");
    let built = transform(
        &targets[0],
        &sample("eventbridge-api-destination.event.json"),
    );
    assert_eq!(built, sample("eventbridge-api-destination.body.json"));
    // The connection's ApiKeyName is the header the source reads.
    let header = page
        .split("\"ApiKeyName\": \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the create-connection command names the header");

    let h = Harness::with(all_senders()).await;
    let (status, b) = post(
        &h,
        "/v1/offboard",
        (header, EVENTBRIDGE_KEY),
        &built.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["ticket"], "CHG0031337");
    assert_eq!(statuses(&b), ["offboard_requested", "offboard_requested"]);
}

// --- EventBridge rule, Step Functions, aws lambda invoke ------------------

/// The rule's sample event is served as the page says: the detail is a
/// generic body and the answer is the JSON itself.
#[tokio::test]
async fn eventbridge_rule_sample_is_answered_as_json() {
    let h = Harness::with(all_senders()).await;
    let answer = invoke(&h, &sample("eventbridge.json"), Duration::from_secs(20))
        .await
        .expect("an answer");
    assert_eq!(answer["ticket"], "INC0012345");
    assert_eq!(statuses(&answer), ["offboard_requested", "ambiguous"]);
}

/// `Parameters.Payload` of the state machine, applied to the execution
/// input as Step Functions does (`"key.$": "$.path"`).
fn payload_of(definition: &Value, input: &Value) -> Value {
    let params = &definition["States"]["Offboard"]["Parameters"]["Payload"];
    let mut out = serde_json::Map::new();
    for (key, path) in params.as_object().unwrap() {
        let key = key
            .strip_suffix(".$")
            .expect("every payload field is a path");
        let pointer = path.as_str().unwrap().strip_prefix("$.").unwrap();
        out.insert(key.to_string(), input[pointer].clone());
    }
    Value::Object(out)
}

/// The state machine's payload is a generic body; the error names it
/// retries and catches are the ones the function fails with.
#[tokio::test]
async fn step_functions_definition_sends_a_generic_body_and_names_the_functions_errors() {
    let page = page("direct.md");
    assert!(page.contains("{{#include ../../../events/stepfunctions.asl.json}}"));
    let definition = sample("stepfunctions.asl.json");
    let task = &definition["States"]["Offboard"];
    assert_eq!(task["Resource"], "arn:aws:states:::lambda:invoke");
    assert_eq!(task["OutputPath"], "$.Payload");
    let errors = |list: &str, i: usize| -> Vec<String> {
        task[list][i]["ErrorEquals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().to_string())
            .collect()
    };
    let retried = errors("Retry", 0);
    let caught = errors("Catch", 0);
    assert!(
        errors("Retry", 1).contains(&"Lambda.ClientExecutionTimeoutException".to_string()),
        "AWS's list of transient Lambda errors"
    );

    let payload = payload_of(&definition, &sample("stepfunctions.input.json"));
    let h = Harness::with(all_senders()).await;
    let answer = invoke(&h, &payload, Duration::from_secs(20))
        .await
        .expect("an answer");
    assert_eq!(answer["ticket"], "CHG0031338");
    assert_eq!(statuses(&answer), ["offboard_requested"]);
    assert_eq!(results(&answer)[0]["machine_id"], ids::WIN10);

    // A body no retry cures: caught as the definition expects.
    let mut bad = payload.clone();
    bad["devices"] = json!([]);
    let e = invoke(&h, &bad, Duration::from_secs(20)).await.unwrap_err();
    assert!(caught.contains(&e.error_type.to_string()), "{e:?}");
    // Defender throttling: retried as the definition expects.
    h.fake.fault(
        Api::GetMachine,
        Fault::Throttle {
            retry_after_secs: 30,
        },
    );
    let mut later = payload;
    later["ticket"] = json!("CHG0031339");
    later["devices"] = json!(["laptop-17.contoso.com"]);
    let e = invoke(&h, &later, Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(retried.contains(&e.error_type.to_string()), "{e:?}");
}

/// `aws lambda invoke --payload file://events/invoke.json`: the answer is
/// the JSON the page shows in `out.json`.
#[tokio::test]
async fn aws_lambda_invoke_sample_is_answered() {
    let page = page("direct.md");
    assert!(page.contains("--payload file://events/invoke.json"));
    let h = Harness::with(all_senders()).await;
    let answer = invoke(&h, &sample("invoke.json"), Duration::from_secs(20))
        .await
        .expect("an answer");
    assert_eq!(answer["ticket"], "INC0012345");
    assert_eq!(statuses(&answer), ["offboard_requested", "ambiguous"]);
    // Where DIRECT_EVENTS does not name invoke, it is refused.
    let closed = Harness::with(with_env(all_senders(), "DIRECT_EVENTS", "eventbridge")).await;
    let e = invoke(&closed, &sample("invoke.json"), Duration::from_secs(20))
        .await
        .unwrap_err();
    assert_eq!(e.error_type, "MdeOffboard.Refused");
    assert_eq!(closed.fake.count(Api::AnyDefender), 0);
}

// --- Sentinel and Logic Apps (entra-jwt) ----------------------------------

/// The Logic App's HTTP action (`events/logic-app-http-action.json`) with
/// its managed identity, against the source definition of the entra-jwt
/// page: the Sentinel incident trigger's body offboards its host entity.
#[tokio::test]
async fn a_sentinel_playbook_with_a_managed_identity_offboards_the_incident_host() {
    let action = sample("logic-app-http-action.json");
    let inputs = &action["Offboard_the_incident_devices"]["inputs"];
    assert_eq!(inputs["method"], "POST");
    assert_eq!(inputs["body"], "@triggerBody()");
    let path = inputs["uri"]
        .as_str()
        .unwrap()
        .trim_start_matches("https://<api>")
        .to_string();
    assert_eq!(inputs["authentication"]["type"], "ManagedServiceIdentity");
    let audience = inputs["authentication"]["audience"].as_str().unwrap();
    assert_eq!(audience, AUDIENCE_URI);

    let definition = json_after(&page("entra-jwt.md"), "## The source definition");
    let scheme = &definition["sources"]["defender-incident"]["auth"];
    assert!(
        scheme["audiences"]
            .as_array()
            .unwrap()
            .contains(&json!(audience)),
        "the action's audience is one the source accepts"
    );
    for p in ["defender-incident.md", "entra-jwt.md"] {
        assert!(
            page(p).contains("{{#include ../../../events/logic-app-http-action.json}}"),
            "{p} shows the action"
        );
    }
    let sources =
        json!({"sources": {"defender-incident": definition["sources"]["defender-incident"]}});
    let h = Harness::with(Options {
        env: vec![("SOURCES", sources.to_string())],
        ..Options::default()
    })
    .await;
    let token = TestKey::shared().token(&v1_claims(TENANT_ID, audience));
    let body = sample("sentinel-incident.body.json").to_string();
    let (status, b) = post(
        &h,
        &path,
        ("authorization", &format!("Bearer {token}")),
        &body,
    )
    .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["ticket"], "4711");
    assert_eq!(results(&b)[0]["machine_id"], ids::SERVER2022);
    assert_eq!(statuses(&b), ["offboard_requested"]);
    // The bearer secret of the preset no longer admits: no secret at all.
    let (status, _) = post(
        &h,
        &path,
        ("authorization", "Bearer xdr-bearer-token-never-log"),
        &body,
    )
    .await;
    assert_eq!(status, 401);
}

/// Real incidents as Microsoft documents them (Defender incidents API) and
/// a captured Sentinel incident, through the `defender-incident` preset.
#[tokio::test]
async fn real_defender_and_sentinel_incidents_through_the_preset() {
    let h = Harness::new().await;
    let bearer = ("authorization", "Bearer xdr-bearer-token-never-log");
    let path = "/v1/webhooks/defender-incident";

    // Incident 924521: one device evidence, a machine this tenant lacks.
    let doc = realworld("defender/m365-docs-api-list-incidents.incident-924521.json");
    let (status, b) = post(&h, path, bearer, &doc.to_string()).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["ticket"], "924521");
    assert_eq!(
        results(&b)[0]["machine_id"],
        "24c222b0b60fe148eeece49ac83910cc6a7ef491"
    );
    assert_eq!(statuses(&b), ["not_found"]);
    let calls = h.fake.count(Api::Offboard);

    // Incident 924565 (an MCAS alert, no devices), the Graph incident
    // without alerts, and a captured Sentinel incident (an ARM resource,
    // no entities): nothing to offboard, 202 ignored, never a 4xx.
    for doc in [
        realworld("defender/m365-docs-api-list-incidents.incident-924565.json"),
        realworld("defender/graph-docs-list-incidents.response.json")["value"][0].clone(),
        realworld("sentinel/soc-agent-ss.incident-84.json"),
    ] {
        let (status, b) = post(&h, path, bearer, &doc.to_string()).await;
        assert_eq!(status, 202, "{b}");
        assert_eq!(b["status"], "ignored", "{b}");
    }
    assert_eq!(h.fake.count(Api::Offboard), calls);
}
