//! The hot pure parts, each beside a baseline measured in the same run:
//! what the work cannot avoid (the HMAC itself, parsing the JSON), so the
//! figures read as "our overhead over the unavoidable".
//!
//!   cargo bench --bench hot_paths

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hmac::{Hmac, KeyInit, Mac};
use mde_offboard::intake::generic::parse_generic_body;
use mde_offboard::intake::sources::Sources;
use mde_offboard::support::webhook_sig::{StandardHeaders, StandardWebhooks, secret_key};
use serde_json::{Value, json};
use sha2::Sha256;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn signature(c: &mut Criterion) {
    let body = vec![b'x'; 256 * 1024];
    let ts = 1_795_683_600i64;
    let sig = StandardWebhooks::from_secret(SECRET)
        .unwrap()
        .sign("msg_1", ts, &body);
    let key = secret_key(SECRET).unwrap();
    let mut g = c.benchmark_group("signature_256KiB");
    g.bench_function("baseline_hmac_sha256", |b| {
        b.iter(|| {
            let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
            mac.update(black_box(&body));
            black_box(mac.finalize())
        })
    });
    g.bench_function("verify_standard", |b| {
        b.iter(|| {
            let h = StandardHeaders {
                id: Some("msg_1"),
                timestamp: Some("1795683600"),
                signature: Some(&sig),
            };
            let keys = [StandardWebhooks::from_secret(SECRET).unwrap()];
            StandardWebhooks::verify_any(&keys, &h, black_box(&body), ts).unwrap()
        })
    });
    g.finish();
}

fn body_parsing(c: &mut Criterion) {
    let devices: Vec<String> = (0..25)
        .map(|i| {
            if i % 2 == 0 {
                format!("{:040x}", i)
            } else {
                format!("laptop-{i}.contoso.com")
            }
        })
        .collect();
    let text = json!({"ticket": "INC0012345", "comment": "Laptop retired, disk wiped", "devices": devices}).to_string();
    let mut g = c.benchmark_group("generic_body_25_devices");
    g.bench_function("baseline_serde_json_value", |b| {
        b.iter(|| black_box(serde_json::from_str::<Value>(black_box(&text)).unwrap()))
    });
    g.bench_function("parse_and_validate", |b| {
        b.iter(|| {
            let v: Value = serde_json::from_str(black_box(&text)).unwrap();
            black_box(parse_generic_body(&v, &Default::default()).unwrap())
        })
    });
    g.finish();
}

fn source_mapping(c: &mut Criterion) {
    let sources = Sources::load(None).unwrap();
    let jira = sources.get("jira").unwrap();
    let xdr = sources.get("defender-incident").unwrap();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/events/");
    let jira_text = std::fs::read_to_string(format!("{dir}jira.body.json")).unwrap();
    let xdr_text = std::fs::read_to_string(format!("{dir}defender-incident.body.json")).unwrap();
    let mut g = c.benchmark_group("source_mapping");
    g.bench_function("baseline_serde_json_jira", |b| {
        b.iter(|| black_box(serde_json::from_str::<Value>(black_box(&jira_text)).unwrap()))
    });
    g.bench_function("jira_parse_and_map", |b| {
        b.iter(|| {
            let v: Value = serde_json::from_str(black_box(&jira_text)).unwrap();
            black_box(jira.map(&v).unwrap())
        })
    });
    g.bench_function("baseline_serde_json_defender_incident", |b| {
        b.iter(|| black_box(serde_json::from_str::<Value>(black_box(&xdr_text)).unwrap()))
    });
    g.bench_function("defender_incident_parse_and_map", |b| {
        b.iter(|| {
            let v: Value = serde_json::from_str(black_box(&xdr_text)).unwrap();
            black_box(xdr.map(&v).unwrap())
        })
    });
    g.finish();
}

/// What a start builds, each part on its own, beside the baseline of
/// parsing one small JSON document: the configuration before the runtime
/// loop, the TLS configuration and HTTP client in the warm-up after it.
fn init_parts(c: &mut Criterion) {
    let mut g = c.benchmark_group("init");
    g.bench_function("baseline_parse_small_json", |b| {
        b.iter(|| serde_json::from_str::<Value>(black_box(r#"{"a":1,"b":[1,2,3]}"#)).unwrap())
    });
    g.bench_function("config_from_env_defaults", |b| {
        b.iter(|| {
            mde_offboard::config::Config::from_lookup(|k| {
                (k == "SECRET_ID").then(|| "mde-offboard/bench".to_string())
            })
            .unwrap()
        })
    });
    g.bench_function("tls_client_config", |b| {
        b.iter(|| mde_offboard::adapters::tls::TrustRoots::bundled().client_config())
    });
    g.bench_function("http_client", |b| b.iter(mde_offboard::init::http_client));
    g.bench_function("log_filter", |b| {
        b.iter(mde_offboard::ops::logging::filter_from_env)
    });
    g.finish();
}

criterion_group!(benches, signature, body_parsing, source_mapping, init_parts);
criterion_main!(benches);
