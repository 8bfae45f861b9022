//! Adapter: a tenant's signing keys (JWKS) from Entra ID's keys endpoint,
//! over the shared HTTP client (no redirect followed, the process's roots).

use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::domain::signing_keys::{KeysUnavailable, MAX_KEYS_BYTES, SigningKeySource};

pub struct HttpSigningKeys {
    http: reqwest::Client,
}

impl HttpSigningKeys {
    pub fn new(http: reqwest::Client) -> Self {
        Self { http }
    }
}

impl SigningKeySource for HttpSigningKeys {
    fn fetch<'a>(
        &'a self,
        url: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<u8>, KeysUnavailable>> {
        Box::pin(async move {
            let resp = self
                .http
                .get(url)
                .header("accept", "application/json")
                .timeout(timeout)
                .send()
                .await
                .map_err(|e| {
                    KeysUnavailable(if e.is_timeout() {
                        "timed out".into()
                    } else {
                        "could not connect".into()
                    })
                })?;
            let status = resp.status();
            if !status.is_success() {
                // A redirect is never followed (the client's policy): it is
                // no key set.
                return Err(KeysUnavailable(format!(
                    "the keys endpoint answered HTTP {}",
                    status.as_u16()
                )));
            }
            let body = super::read_capped(resp, MAX_KEYS_BYTES)
                .await
                .map_err(KeysUnavailable)?;
            Ok(body.to_vec())
        })
    }
}
