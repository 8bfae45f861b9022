//! `MDE_CREDENTIALS=federated`: no client secret; an STS web identity token
//! (fake STS, reached as the SDK reaches the real one) is the client
//! assertion the fake login checks. Through the handler, and through the
//! built `bootstrap` with `AWS_ENDPOINT_URL_STS`.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mde_offboard::App;
use mde_offboard::adapters::sts::StsIdentityTokens;
use mde_offboard::config::Config;
use mde_offboard::domain::secret::StaticSecret;
use mde_testkit::{
    Api, FakeDefender, FakeRuntime, FakeSts, FederatedCredential, Outcome, StsFault, demo_machines,
    federated_secret_json, moto,
};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

struct Federated {
    fake: FakeDefender,
    sts: FakeSts,
    app: App,
}

fn sts_client(endpoint: &str) -> aws_sdk_sts::Client {
    mde_offboard::adapters::aws::SdkClient::with_limits(
        aws_sdk_sts::Config::builder()
            .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
            .region(aws_sdk_sts::config::Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .credentials_provider(aws_sdk_sts::config::Credentials::new(
                "testing", "testing", None, None, "tests",
            )),
    )
}

/// The app in federated mode over `secret`, the fake login trusting the
/// fake STS through `credential`.
async fn federated_with(secret: String, credential: Option<FederatedCredential>) -> Federated {
    let fake = FakeDefender::start(demo_machines()).await;
    let sts = FakeSts::start().await;
    fake.trust(&sts, credential);
    let env = [
        ("SECRET_ID", "unused-static-secret".to_string()),
        ("MDE_API_URL", fake.url()),
        ("MDE_LOGIN_URL", fake.url()),
        ("MDE_CREDENTIALS", "federated".into()),
    ];
    let config = Config::from_lookup(|k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()))
        .expect("test configuration");
    let app = mde_offboard::init::Wiring::new(config, Arc::new(StaticSecret(secret)))
        .identity_tokens(Arc::new(StsIdentityTokens::new(sts_client(&sts.url()))))
        .build();
    Federated { fake, sts, app }
}

async fn federated() -> Federated {
    federated_with(
        federated_secret_json(),
        Some(FederatedCredential::for_fake_sts()),
    )
    .await
}

impl Federated {
    async fn offboard(&self, device: &str) -> (u16, Value, Option<String>) {
        let body =
            json!({"ticket": "INC0015", "comment": "Federated offboard", "devices": [device]});
        let resp = mde_offboard::inbound::http::handle(
            &self.app,
            signed("POST", "/v1/offboard", &body.to_string()),
        )
        .await;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = match resp.body() {
            lambda_http::Body::Text(t) => serde_json::from_str(t).expect("JSON"),
            other => panic!("unexpected body {other:?}"),
        };
        (status, body, retry_after)
    }
}

#[tokio::test]
async fn federated_offboard_presents_the_sts_token_as_client_assertion_and_no_secret() {
    let h = federated().await;
    let (status, body, _) = h.offboard(ids::WIN11).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "offboard_requested", "{body}");
    assert_eq!(h.fake.assertion_logins(), 1);
    let calls = h.sts.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.form["Action"], "GetWebIdentityToken");
    assert_eq!(call.form["Version"], "2011-06-15");
    assert_eq!(call.form["Audience.member.1"], "api://AzureADTokenExchange");
    assert_eq!(call.form["SigningAlgorithm"], "RS256");
    assert_eq!(call.form["DurationSeconds"], "300");
    assert!(
        call.authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("AWS4-HMAC-SHA256 Credential=testing/")),
        "{:?}",
        call.authorization
    );
    assert_eq!(h.fake.accepted_offboards().len(), 1);
}

#[tokio::test]
async fn a_client_secret_left_in_the_secret_is_never_sent_when_federated() {
    // The fake login refuses a form carrying both, as Entra ID does.
    let h = federated_with(
        mde_testkit::secret_json(),
        Some(FederatedCredential::for_fake_sts()),
    )
    .await;
    let (status, body, _) = h.offboard(ids::WIN11).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(h.fake.assertion_logins(), 1);
}

#[tokio::test]
async fn warm_calls_make_no_sts_call_and_a_new_access_token_reuses_the_identity_token() {
    let h = federated().await;
    assert_eq!(h.offboard(ids::WIN11).await.0, 200);
    assert_eq!(h.offboard(ids::WIN10).await.0, 200);
    assert_eq!(h.sts.tokens_issued(), 1, "warm calls make none");
    assert_eq!(h.fake.count(Api::Login), 1);
    // A revoked access token means a new login, within the identity
    // token's lifetime: the same JWT is presented again.
    h.fake.revoke_tokens();
    assert_eq!(h.offboard(ids::SERVER2022).await.0, 200);
    assert_eq!(h.fake.count(Api::Login), 2);
    assert_eq!(h.fake.assertion_logins(), 2);
    assert_eq!(h.sts.tokens_issued(), 1, "one STS call per token lifetime");
}

#[tokio::test]
async fn an_identity_token_too_short_lived_to_keep_is_fetched_for_each_login() {
    let h = federated().await;
    h.sts.set_lifetime(30);
    assert_eq!(h.offboard(ids::WIN11).await.0, 200);
    h.fake.revoke_tokens();
    assert_eq!(h.offboard(ids::WIN10).await.0, 200);
    assert_eq!(h.sts.tokens_issued(), 2);
}

#[tokio::test]
async fn each_sts_refusal_is_answered_with_its_named_error() {
    for (faults, status, code, says) in [
        (
            &[StsFault::FederationDisabled][..],
            500,
            "federation_disabled",
            "EnableOutboundWebIdentityFederation",
        ),
        (
            &[StsFault::AccessDenied][..],
            500,
            "identity_token_refused",
            "sts:GetWebIdentityToken",
        ),
        (
            // The SDK retries once; both attempts are throttled.
            &[StsFault::Throttling, StsFault::Throttling][..],
            503,
            "identity_token_unavailable",
            "Throttling",
        ),
    ] {
        let h = federated().await;
        for f in faults {
            h.sts.fault(*f);
        }
        let (got, body, retry_after) = h.offboard(ids::WIN11).await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{message}");
        assert_eq!(retry_after.is_some(), status == 503, "{code}");
        assert_eq!(
            h.fake.count(Api::Login),
            0,
            "{code}: no login without a token"
        );
        assert!(h.fake.accepted_offboards().is_empty());
    }
}

#[tokio::test]
async fn each_entra_refusal_of_the_assertion_is_answered_with_its_named_error_and_fix() {
    let good = FederatedCredential::for_fake_sts();
    for (credential, code, aadsts, fix) in [
        (None, "no_federated_credential", "AADSTS70021", "add one"),
        (
            Some(FederatedCredential {
                issuer: "https://token.actions.githubusercontent.com".into(),
                ..good.clone()
            }),
            "federated_issuer_mismatch",
            "AADSTS700211",
            "get-outbound-web-identity-federation-info",
        ),
        (
            Some(FederatedCredential {
                subject: "arn:aws:iam::123456789012:role/another-role".into(),
                ..good.clone()
            }),
            "federated_subject_mismatch",
            "AADSTS700213",
            "role ARN",
        ),
        (
            Some(FederatedCredential {
                audience: "api://AzureADMyOrg".into(),
                ..good.clone()
            }),
            "federated_audience_mismatch",
            "AADSTS700212",
            "api://AzureADTokenExchange",
        ),
    ] {
        let h = federated_with(federated_secret_json(), credential).await;
        let (status, body, _) = h.offboard(ids::WIN11).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (500, Some(code)),
            "{body}"
        );
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(aadsts) && message.contains(fix),
            "{message}"
        );
        assert!(h.fake.accepted_offboards().is_empty());
    }
}

#[tokio::test]
async fn an_expired_identity_token_is_answered_assertion_expired() {
    let h = federated().await;
    // STS answers a token already at its expiry: Entra ID refuses it.
    h.sts.set_lifetime(0);
    let (status, body, _) = h.offboard(ids::WIN11).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (500, Some("assertion_expired")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("AADSTS700024")
    );
    assert!(h.fake.accepted_offboards().is_empty());
}

#[tokio::test]
async fn the_fake_login_accepts_only_what_sts_issued_and_never_with_a_client_secret() {
    use mde_testkit::sts::{ISSUER, ROLE_ARN, b64url};
    let fake = FakeDefender::start(demo_machines()).await;
    let sts = FakeSts::start().await;
    fake.trust(&sts, Some(FederatedCredential::for_fake_sts()));
    let url = format!(
        "{}/{}/oauth2/v2.0/token",
        fake.url(),
        mde_testkit::defender::TENANT_ID
    );
    let exp = now() + 300;
    let claims =
        json!({"iss": ISSUER, "sub": ROLE_ARN, "aud": "api://AzureADTokenExchange", "exp": exp});
    let forged = format!(
        "{}.{}.{}",
        b64url(br#"{"alg":"RS256","typ":"JWT"}"#),
        b64url(claims.to_string().as_bytes()),
        b64url(b"not-the-issuer")
    );
    let login = |extra: Vec<(&'static str, String)>| {
        let url = url.clone();
        async move {
            let mut form = vec![
                ("grant_type", "client_credentials".to_string()),
                ("client_id", mde_testkit::defender::CLIENT_ID.to_string()),
                ("scope", mde_testkit::defender::SCOPE.to_string()),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_string(),
                ),
            ];
            form.extend(extra);
            let r = reqwest::Client::new()
                .post(url)
                .form(&form)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = login(vec![("client_assertion", forged)]).await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (401, Some(50013)),
        "{body}"
    );
    let (status, body) = login(vec![("client_assertion", "eyJ.only-two".to_string())]).await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (401, Some(50027)),
        "{body}"
    );
    // A real token with the client secret beside it is refused too.
    let client = sts_client(&sts.url());
    let jwt = client
        .get_web_identity_token()
        .audience("api://AzureADTokenExchange")
        .signing_algorithm("RS256")
        .send()
        .await
        .unwrap()
        .web_identity_token
        .unwrap();
    let claims = mde_testkit::sts::jwt_claims(&jwt).unwrap();
    assert_eq!(
        (
            claims["iss"].as_str(),
            claims["sub"].as_str(),
            claims["aud"].as_str()
        ),
        (
            Some(ISSUER),
            Some(ROLE_ARN),
            Some("api://AzureADTokenExchange")
        )
    );
    assert!(claims["exp"].as_i64().unwrap() > now());
    let (status, _) = login(vec![
        ("client_assertion", jwt.clone()),
        (
            "client_secret",
            mde_testkit::defender::CLIENT_SECRET.to_string(),
        ),
    ])
    .await;
    assert_eq!(status, 400);
    let (status, body) = login(vec![("client_assertion", jwt)]).await;
    assert_eq!(status, 200, "{body}");
}

// ---- through the built bootstrap ----

fn drain(
    mut r: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s).await;
        s
    })
}

fn signed_event(body: &str) -> Value {
    signed_lambda_event("/v1/offboard", body).0
}

fn answer_of(outcome: Option<Outcome>) -> (u16, Value) {
    let (status, body, _) = lambda_response(outcome);
    (status, body)
}

#[tokio::test]
async fn the_binary_offboards_federated_through_aws_endpoint_url_sts_and_logs_nothing_of_the_jwt() {
    let runtime = FakeRuntime::start().await;
    let fake = FakeDefender::start(demo_machines()).await;
    let sts = FakeSts::start().await;
    fake.trust(&sts, Some(FederatedCredential::for_fake_sts()));
    let secret = put_secret(&federated_secret_json()).await;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_bootstrap"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(runtime.lambda_env())
        .env("SECRET_ID", &secret)
        .env("AWS_ENDPOINT_URL_SECRETS_MANAGER", &moto::moto().endpoint)
        .env("AWS_ENDPOINT_URL_STS", sts.url())
        .env("MDE_API_URL", fake.url())
        .env("MDE_LOGIN_URL", fake.url())
        .env("MDE_CREDENTIALS", "federated")
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("start bootstrap");
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());

    for device in [ids::WIN11, ids::WIN10] {
        let body = json!({"ticket": "INC0015", "comment": "Federated", "devices": [device]});
        let (status, answer) = answer_of(
            runtime
                .invoke(signed_event(&body.to_string()), Duration::from_secs(20))
                .await,
        );
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["results"][0]["status"], "offboard_requested");
    }
    assert_eq!(sts.tokens_issued(), 1, "the warm instance asked STS once");
    assert_eq!(fake.assertion_logins(), 1);

    let _ = child.start_kill();
    let _ = child.wait().await;
    let logs = format!("{}{}", stdout.await.unwrap(), stderr.await.unwrap());
    assert!(logs.lines().count() > 20, "trace logging was on:\n{logs}");
    let jwt = sts.issued().pop().expect("a JWT");
    let mut parts = jwt.split('.');
    let (header, payload, signature) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    for (what, piece) in [
        ("JWT", jwt.as_str()),
        ("JWT payload", payload),
        ("JWT signature", signature),
        ("JWT header", header),
    ] {
        let leak = logs.lines().find(|l| l.contains(piece)).unwrap_or("");
        assert!(
            !logs.contains(piece),
            "the {what} appears in the logs: {leak}"
        );
    }
}
