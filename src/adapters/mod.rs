//! Adapters: the ports of the domain, implemented against the real
//! services (the Defender API and Entra ID over HTTPS, AWS through the SDK),
//! plus in-process ones (`memory`). `aws` is the leaf every SDK client is built
//! from, `sdk_http` the SDK's HTTP client over reqwest, and `tls` the one
//! trust store every connection uses.

use std::ops::ControlFlow;
use std::time::Duration;

use crate::domain::limits::Deadline;
use crate::support::retry;

pub mod autoscaling;
pub mod aws;
pub mod callback;
pub mod defender_http;
pub mod dynamodb;
pub mod entra;
pub mod entra_keys;
pub mod memory;
pub mod sdk_http;
pub mod secrets_manager;
pub mod sqs;
pub mod sts;
pub mod tls;
pub mod write_back;

/// A reqwest client as every caller here needs it: rustls over the
/// process's roots (`tls`: compiled in, plus `MDE_CA_FILE`'s, never the
/// system store read at build time), pooled connections kept warm between
/// invocations, and no redirect ever followed: a 307 from the login host
/// would re-send the form holding the client secret, and one from the API
/// the bearer token, to wherever `Location` points.
pub fn http_client(connect_timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls::process_roots().client_config())
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("mde-offboard/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(240))
        .tcp_nodelay(true)
        .build()
        .expect("the TLS backend initialises")
}

/// An upstream answer's body, read up to `max` bytes: a larger one is an
/// error, never a buffer as large as the upstream chose to send.
pub async fn read_capped(mut resp: reqwest::Response, max: usize) -> Result<bytes::Bytes, String> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(format!("the answer is over {max} bytes"));
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(|_| "the answer was cut off")? {
        if body.len() + chunk.len() > max {
            return Err(format!("the answer is over {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Longest one follow-up attempt (callback, write-back) may take: a slow
/// receiver must not eat the batch's other messages' time.
pub const FOLLOW_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// How a follow-up's request ended. None of these carries the receiver's
/// answer body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// A 2xx, after this many attempts.
    Delivered(u32),
    /// A 4xx (its status) a retry cannot cure; not retried.
    Refused(u16),
    /// 5xx or network errors on each of this many attempts, or no time left.
    GaveUp(u32),
}

/// Sends what `build` makes, once more after each of `waits` while the
/// deadline allows, until a 2xx or a 4xx (a 429 too, unless `retry_429`).
/// A 3xx is never followed (the client's policy) and is no better on a
/// retry than a 5xx. `build` runs for each attempt; its error ends the loop.
pub async fn send_retried<E>(
    waits: &[Duration],
    deadline: &Deadline,
    retry_429: bool,
    build: impl Fn() -> Result<reqwest::RequestBuilder, E>,
) -> Result<Sent, E> {
    let timeout = || deadline.call_timeout().map(|t| t.min(FOLLOW_UP_TIMEOUT));
    let attempt = |attempts, timeout| {
        let request = build();
        async move {
            let status = match request {
                Ok(request) => request.timeout(timeout).send().await.map(|r| r.status()),
                Err(e) => return ControlFlow::Break(Err(e)),
            };
            match status {
                Ok(s) if s.is_success() => ControlFlow::Break(Ok(Sent::Delivered(attempts))),
                Ok(s) if s.is_client_error() && !(retry_429 && s.as_u16() == 429) => {
                    ControlFlow::Break(Ok(Sent::Refused(s.as_u16())))
                }
                Ok(_) | Err(_) => ControlFlow::Continue(()),
            }
        }
    };
    retry::bounded(waits, timeout, |w| deadline.fits(w), attempt)
        .await
        .unwrap_or_else(|attempts| Ok(Sent::GaveUp(attempts)))
}
