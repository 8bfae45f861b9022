//! Signs an `events/` sample the way its sender would at the moment it
//! sends it: freshness fields stamped, a new delivery id, the signature or
//! token its source expects. `send` posts the result over HTTP; `sign`
//! writes it as a Lambda event for `cargo lambda invoke --data-file`.

use std::fmt;
use std::time::SystemTime;

use mde_offboard::intake::sources::Sources;
use mde_offboard::support::time::unix_secs;
use mde_offboard::support::webhook_sig::StandardWebhooks;
use mde_testkit::hmac_hex;
use serde_json::{Map, Value};

/// What a sample file holds.
pub enum Sample {
    /// An HTTP event (API Gateway or Function URL) around a body.
    Http(Value),
    /// A bare webhook body (`<source>.body.json`).
    Body { source: String, text: String },
    /// An EventBridge event or a direct invocation: IAM decides who may
    /// invoke, so there is nothing to sign.
    Direct(Value),
}

#[derive(Debug)]
pub struct SignError(pub String);

impl fmt::Display for SignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Sample {
    /// Tells a file's kind by its shape, and for a bare body by its name.
    pub fn read(file: &str, text: &str) -> Result<Self, SignError> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| SignError(format!("{file}: not JSON: {e}")))?;
        if v.get("requestContext").is_some() {
            return Ok(Self::Http(v));
        }
        let name = std::path::Path::new(file)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("");
        match name.strip_suffix(".body.json") {
            Some(source) => {
                let known = Sources::default().get(source).is_some();
                Ok(Self::Body {
                    source: if known { source } else { GENERIC }.to_string(),
                    text: text.trim().to_string(),
                })
            }
            None => Ok(Self::Direct(v)),
        }
    }
}

const GENERIC: &str = "generic";

/// A delivery ready to send: where, how, with which headers.
pub struct Delivery {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// The route's path for a source's webhooks.
fn path_for(source: &str) -> String {
    if source == GENERIC {
        "/v1/offboard".into()
    } else {
        format!("/v1/webhooks/{source}")
    }
}

fn source_of(path: &str) -> &str {
    path.strip_prefix("/v1/webhooks/").unwrap_or(GENERIC)
}

/// The HTTP request a sample stands for, before signing.
pub fn unsigned(sample: &Sample) -> Option<Delivery> {
    match sample {
        Sample::Http(v) => Some(Delivery {
            method: v["requestContext"]["http"]["method"]
                .as_str()
                .or(v["httpMethod"].as_str())
                .unwrap_or("POST")
                .to_string(),
            path: v["rawPath"]
                .as_str()
                .or(v["path"].as_str())
                .unwrap_or("/v1/offboard")
                .to_string(),
            headers: Vec::new(),
            body: v["body"].as_str().unwrap_or("").to_string(),
        }),
        Sample::Body { source, text } => Some(Delivery {
            method: "POST".into(),
            path: path_for(source),
            headers: Vec::new(),
            body: text.clone(),
        }),
        Sample::Direct(_) => None,
    }
}

/// Whether the sample's sender signs with AWS SigV4 (IAM auth at the edge):
/// those cannot be signed here, nor need to be for a local invoke.
pub fn is_iam(sample: &Sample) -> bool {
    matches!(sample, Sample::Http(v) if v["headers"]["authorization"]
        .as_str()
        .is_some_and(|a| a.starts_with("AWS4-HMAC-SHA256")))
}

/// Stamps the body's freshness field, gives the delivery a new id and signs
/// it with the source's webhook secret from `secret` (the secret's JSON).
pub fn sign(
    mut d: Delivery,
    secret: &Value,
    now: SystemTime,
    nonce: &str,
) -> Result<Delivery, SignError> {
    let source = source_of(&d.path).to_string();
    let sources = Sources::default();
    let def = sources.get(&source);
    // The samples are old; a preset with a freshness window refuses them.
    if let Some(window) = def.and_then(|d| d.freshness.clone())
        && let Ok(mut doc) = serde_json::from_str::<Value>(&d.body)
    {
        window.stamp(&mut doc, now);
        d.body = doc.to_string();
    }
    let key = secret["webhook_secrets"][&source]
        .as_str()
        .or(secret["webhook_secrets"][&source][0].as_str())
        .ok_or_else(|| SignError(format!("the secret has no webhook secret for '{source}'")))?
        .to_string();
    let secs = unix_secs(now);
    // A new id per delivery: the function answers a repeated id from its
    // replay memory without acting again.
    let id = format!("msg_local_{secs}_{nonce}");
    if let Some(h) = def.and_then(|d| d.id_header.clone())
        && source != GENERIC
    {
        d.headers.push((h, id.clone()));
    }
    d.headers
        .push(("content-type".into(), "application/json".into()));
    match source.as_str() {
        "jira" => d.headers.push((
            "x-hub-signature".into(),
            format!("sha256={}", hmac_hex(&key, d.body.as_bytes())),
        )),
        "pagerduty" => d.headers.push((
            "x-pagerduty-signature".into(),
            format!("v1={}", hmac_hex(&key, d.body.as_bytes())),
        )),
        "servicenow" | "defender-incident" => d
            .headers
            .push(("authorization".into(), format!("Bearer {key}"))),
        _ => {
            let signer = StandardWebhooks::from_secret(&key)
                .map_err(|e| SignError(format!("webhook_secrets.{source} {e}")))?;
            d.headers.push(("webhook-id".into(), id.clone()));
            d.headers
                .push(("webhook-timestamp".into(), secs.to_string()));
            d.headers.push((
                "webhook-signature".into(),
                signer.sign(&id, secs, d.body.as_bytes()),
            ));
        }
    }
    Ok(d)
}

/// The signed delivery as the Lambda event the sample was (or, for a bare
/// body, as an HTTP API would deliver it).
pub fn to_event(sample: &Sample, d: &Delivery) -> Value {
    let mut event = match sample {
        Sample::Http(v) => v.clone(),
        _ => mde_testkit::events::http_api_v2(&d.method, &d.path, &[], ""),
    };
    let obj = event.as_object_mut().expect("events are objects");
    let headers = obj
        .entry("headers")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(h) = headers.as_object_mut() {
        for (k, v) in &d.headers {
            h.insert(k.clone(), Value::from(v.as_str()));
        }
    }
    // REST API events carry every header twice; both must agree.
    if let Some(Value::Object(multi)) = obj.get_mut("multiValueHeaders") {
        for (k, v) in &d.headers {
            multi.insert(k.clone(), Value::from(vec![v.as_str()]));
        }
    }
    obj.insert("body".into(), Value::from(d.body.as_str()));
    obj.insert("isBase64Encoded".into(), Value::from(false));
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use mde_offboard::intake::auth::verify_hmac_hex;
    use std::time::UNIX_EPOCH;

    fn sample(file: &str) -> Sample {
        let path = format!("{}/../events/{file}", env!("CARGO_MANIFEST_DIR"));
        Sample::read(&path, &std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    fn secret() -> Value {
        serde_json::from_str(&mde_testkit::secret_json()).unwrap()
    }

    fn signed(file: &str) -> (Sample, Delivery) {
        let s = sample(file);
        let d = sign(unsigned(&s).unwrap(), &secret(), SystemTime::now(), "t").unwrap();
        (s, d)
    }

    fn header<'a>(d: &'a Delivery, name: &str) -> &'a str {
        d.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name}"))
    }

    #[test]
    fn kinds_are_told_apart() {
        assert!(matches!(sample("generic.json"), Sample::Http(_)));
        assert!(matches!(sample("eventbridge.json"), Sample::Direct(_)));
        assert!(matches!(sample("invoke.json"), Sample::Direct(_)));
        assert!(
            matches!(sample("jira.body.json"), Sample::Body { source, .. } if source == "jira")
        );
        assert!(is_iam(&sample("rest-api-iam.json")));
        assert!(!is_iam(&sample("generic.json")));
    }

    #[test]
    fn the_event_replaces_the_placeholders_with_a_fresh_signature() {
        let (s, d) = signed("generic.json");
        let event = to_event(&s, &d);
        let sig = event["headers"]["webhook-signature"].as_str().unwrap();
        assert_ne!(sig, "v1,REPLACED-BY-THE-SENDER=");
        let ts = event["headers"]["webhook-timestamp"].as_str().unwrap();
        assert_eq!(event["headers"]["webhook-id"], format!("msg_local_{ts}_t"));
        assert_eq!(event["requestContext"]["http"]["path"], "/v1/offboard");
        assert_eq!(event["body"].as_str().unwrap(), d.body);
    }

    #[test]
    fn presets_get_their_own_scheme_and_a_stamped_body() {
        let (_, d) = signed("jira.json");
        assert!(header(&d, "x-hub-signature").starts_with("sha256="));
        assert!(header(&d, "x-atlassian-webhook-identifier").starts_with("msg_local_"));
        let body: Value = serde_json::from_str(&d.body).unwrap();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let stamped = body["timestamp"].as_u64().unwrap();
        assert!(now_ms - stamped < 60_000, "stamped {stamped}, now {now_ms}");
        assert_eq!(
            verify_hmac_hex(
                header(&d, "x-hub-signature"),
                "sha256=",
                d.body.as_bytes(),
                &["jira-webhook-secret-never-log".to_string()],
            ),
            Ok(())
        );
        let (_, d) = signed("servicenow.json");
        assert_eq!(
            header(&d, "authorization"),
            "Bearer snow-bearer-token-never-log"
        );
    }

    #[test]
    fn a_bare_body_becomes_an_http_api_event_on_its_route() {
        let (s, d) = signed("pagerduty.body.json");
        let event = to_event(&s, &d);
        assert_eq!(event["rawPath"], "/v1/webhooks/pagerduty");
        assert!(
            event["headers"]["x-pagerduty-signature"]
                .as_str()
                .unwrap()
                .starts_with("v1=")
        );
    }
}
