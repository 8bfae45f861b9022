//! Entra ID access tokens for tests, as a Logic App or Sentinel playbook
//! with a managed identity (or any client-credentials caller) presents
//! them: an RSA key made at test time (never a real key), its JWK as
//! Entra ID publishes it, and v1.0 and v2.0 tokens with the claims Entra ID
//! writes into app-only tokens, signed RS256 with that key.
//!
//! The fake tenant (`FakeDefender`) serves the published keys at
//! `/{tenant}/discovery/v2.0/keys`, and issues such a token to the caller
//! `CALLER_APPID` at its token endpoint (client credentials, `scope`
//! `api://mde-offboard/.default`).

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rsa::{KeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use serde_json::{Value, json};

use crate::sts::b64url;

/// The app registration the examples and tests protect: its Application
/// ID URI (the audience of v1.0 tokens) and client id (of v2.0 tokens).
pub const AUDIENCE_URI: &str = "api://mde-offboard";
pub const AUDIENCE_ID: &str = "6e74172b-be56-4843-9ff4-e66a39bb12e3";

/// The calling Logic App's managed identity: the object id of its service
/// principal (`oid`) and its application id (`appid`, `azp`).
pub const CALLER_OID: &str = "69022be0-ff1a-4d56-abd1-7e4f7d38e474";
pub const CALLER_APPID: &str = "75dbe77f-10a3-4e59-85fd-8c127544f17c";
/// The caller's client secret at the fake tenant's token endpoint, for a
/// caller that is a service principal rather than a managed identity.
pub const CALLER_SECRET: &str = "fake-playbook-secret-never-log";

/// Another tenant's caller: a token Entra ID issued in another directory.
pub const OTHER_TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

/// An RSA-2048 signing key and its `kid`.
#[derive(Clone)]
pub struct TestKey {
    kid: String,
    pair: Arc<KeyPair>,
}

impl TestKey {
    /// A new key, made now.
    pub fn generate(kid: &str) -> Self {
        Self {
            kid: kid.to_string(),
            pair: Arc::new(KeyPair::generate(KeySize::Rsa2048).expect("an RSA key")),
        }
    }

    /// The key the fake tenant publishes unless told otherwise: one per
    /// test process, so its cost is paid once.
    pub fn shared() -> &'static TestKey {
        static KEY: OnceLock<TestKey> = OnceLock::new();
        KEY.get_or_init(|| TestKey::generate("fake-tenant-key-1"))
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The key as Entra ID's v2.0 keys endpoint lists it.
    pub fn jwk(&self, issuer: &str) -> Value {
        let c: PublicKeyComponents<Vec<u8>> = self.pair.public_key().into();
        json!({
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": b64url(&c.n),
            "e": b64url(&c.e),
            "issuer": issuer,
        })
    }

    /// The public modulus, for a key-confusion test (HS256 with the public
    /// key as the HMAC secret).
    pub fn public_der(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// `header.claims.signature`, signed RS256 with this key whatever the
    /// header says.
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let message = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let mut sig = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                message.as_bytes(),
                &mut sig,
            )
            .expect("RSA signing");
        format!("{message}.{}", b64url(&sig))
    }

    /// A token with Entra ID's header for these claims: `typ`, `alg`
    /// RS256, `kid` (and `x5t`, as v1.0 tokens carry it).
    pub fn token(&self, claims: &Value) -> String {
        let mut header = json!({"typ": "JWT", "alg": "RS256", "kid": self.kid});
        if claims["ver"] == "1.0" {
            header["x5t"] = json!(self.kid);
        }
        self.sign(&header, claims)
    }
}

/// Unsigned: `alg` `none` and an empty signature.
pub fn unsigned_token(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64url(json!({"typ": "JWT", "alg": "none"}).to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

/// HS256 with `secret` as the HMAC key (`kid` kept): the key-confusion
/// attack, where the secret is the published public key.
pub fn hs256_token(kid: &str, secret: &[u8], claims: &Value) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let message = format!(
        "{}.{}",
        b64url(
            json!({"typ": "JWT", "alg": "HS256", "kid": kid})
                .to_string()
                .as_bytes()
        ),
        b64url(claims.to_string().as_bytes())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key");
    mac.update(message.as_bytes());
    format!("{message}.{}", b64url(&mac.finalize().into_bytes()))
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// A v1.0 app-only access token's claims, as a managed identity gets them
/// from the v1 endpoint for `audience` (an app registration whose
/// `accessTokenAcceptedVersion` is unset): issuer `sts.windows.net`,
/// `appid`, `ver` 1.0; valid from a minute ago for an hour.
pub fn v1_claims(tenant: &str, audience: &str) -> Value {
    let now = unix_now();
    json!({
        "aud": audience,
        "iss": format!("https://sts.windows.net/{tenant}/"),
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + 3600,
        "aio": "E2ZgYJj+sfK/amdZ3v7tHXbdQ8n2AQA=",
        "appid": CALLER_APPID,
        "appidacr": "2",
        "idp": format!("https://sts.windows.net/{tenant}/"),
        "idtyp": "app",
        "oid": CALLER_OID,
        "rh": "0.AXkAv4j5cvGGr0GRqy180BHbR9SpHe93_z5MoAWEDD-DB0V5AAA.",
        "sub": CALLER_OID,
        "tid": tenant,
        "uti": "FVsGxYXI30-TuikuuUoFAA",
        "ver": "1.0",
        "xms_mirid": "/subscriptions/00000000-0000-0000-0000-00000000000a/resourcegroups/soc/providers/Microsoft.Logic/workflows/offboard-on-incident",
    })
}

/// A v2.0 app-only access token's claims (`accessTokenAcceptedVersion`
/// 2): issuer `{login}/{tenant}/v2.0`, `azp`, `ver` 2.0, and the app's
/// client id as the audience.
pub fn v2_claims(login_url: &str, tenant: &str, audience: &str) -> Value {
    let now = unix_now();
    json!({
        "aud": audience,
        "iss": format!("{login_url}/{tenant}/v2.0"),
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + 3600,
        "aio": "E2ZgYJj+sfK/amdZ3v7tHXbdQ8n2AQA=",
        "azp": CALLER_APPID,
        "azpacr": "2",
        "idtyp": "app",
        "oid": CALLER_OID,
        "rh": "0.AXkAv4j5cvGGr0GRqy180BHbR9SpHe93_z5MoAWEDD-DB0V5AAA.",
        "sub": CALLER_OID,
        "tid": tenant,
        "uti": "fqiBqXLPj0eQa82S-IYFAA",
        "ver": "2.0",
    })
}

/// A source definition (`SOURCES`) with an `entra-jwt` scheme for the
/// test caller, mapped like `defender-incident`.
pub fn source_definition(name: &str) -> Value {
    json!({"sources": {name: {
        "auth": {"scheme": "entra-jwt", "audiences": [AUDIENCE_URI, AUDIENCE_ID], "principals": [CALLER_OID]},
        "ticket": "/ticket",
        "devices": ["/devices"],
        "comment": "Offboarded by a playbook: {ticket}"
    }}})
}
