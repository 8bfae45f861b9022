//! The AWS SDK's HTTP client, over the same reqwest stack as every other
//! call: one TLS configuration, one set of roots (`adapters::tls`), one
//! verifier parsed once.
//!
//! Why not the SDK's own connector: its trust store takes PEM only, so the
//! compiled-in roots had to be written out as PEM and read back, and
//! `rustls-pki-types`' constant-time base64 decode of ~200 KB of roots was
//! most of the warm-up's CPU (~3 ms a start, `perf record`), on the same
//! cores as the first invocation. Every SDK call here (Secrets Manager, SQS,
//! DynamoDB, STS) sends a small in-memory body; answers stream back as
//! with the SDK's own connector.

use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;

/// An SDK HTTP client that sends through `reqwest`.
#[derive(Debug, Clone)]
pub struct ReqwestHttpClient(pub reqwest::Client);

impl HttpClient for ReqwestHttpClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(Connector {
            http: self.0.clone(),
            read_timeout: settings.read_timeout(),
        })
    }
}

#[derive(Debug)]
struct Connector {
    http: reqwest::Client,
    /// The SDK's read timeout, applied to the whole exchange (its connect
    /// timeout is the client's own, and it bounds each attempt itself).
    read_timeout: Option<Duration>,
}

impl HttpConnector for Connector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let built = build(&self.http, &request, self.read_timeout);
        HttpConnectorFuture::new(async move {
            let response = built?.send().await.map_err(transport_error)?;
            answer(response)
        })
    }
}

fn build(
    http: &reqwest::Client,
    request: &HttpRequest,
    read_timeout: Option<Duration>,
) -> Result<reqwest::RequestBuilder, ConnectorError> {
    let method = reqwest::Method::from_bytes(request.method().as_bytes())
        .map_err(|e| ConnectorError::user(e.into()))?;
    let mut builder = http.request(method, request.uri());
    for (name, value) in request.headers().iter() {
        builder = builder.header(name, value);
    }
    let body = request.body().bytes().ok_or_else(|| {
        ConnectorError::user("a streaming request body; every SDK call here sends bytes".into())
    })?;
    builder = builder.body(body.to_vec());
    if let Some(t) = read_timeout {
        builder = builder.timeout(t);
    }
    Ok(builder)
}

/// The answer as the SDK's own connector gives it: status, headers, and the
/// body as a stream. Streamed, not buffered into an in-memory `SdkBody`,
/// also because the SDK's trace log prints an in-memory body whole, and
/// Secrets Manager's holds the client secret (tests/lambda_binary.rs runs
/// the binary at `RUST_LOG=trace` to catch exactly that).
fn answer(response: reqwest::Response) -> Result<HttpResponse, ConnectorError> {
    let (parts, body) = http::Response::<reqwest::Body>::from(response).into_parts();
    let status = StatusCode::try_from(parts.status.as_u16())
        .map_err(|e| ConnectorError::other(e.into(), None))?;
    let mut out = HttpResponse::new(status, SdkBody::from_body_1_x(body));
    for (k, v) in &parts.headers {
        // A header the SDK cannot hold (not UTF-8) is dropped, never a
        // panic: it reads only AWS's own, ASCII, headers.
        if let Ok(v) = v.to_str() {
            let _ = out
                .headers_mut()
                .try_append(k.as_str().to_string(), v.to_string());
        }
    }
    Ok(out)
}

/// The SDK retries timeouts and I/O errors (transient) and not the rest;
/// reqwest's errors are sorted the same way.
fn transport_error(e: reqwest::Error) -> ConnectorError {
    if e.is_timeout() {
        ConnectorError::timeout(e.into())
    } else if e.is_connect() || e.is_request() || e.is_body() {
        ConnectorError::io(e.into())
    } else {
        ConnectorError::other(e.into(), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn connector() -> Connector {
        Connector {
            http: reqwest::Client::new(),
            read_timeout: None,
        }
    }

    fn request(url: &str, body: &'static str) -> HttpRequest {
        let mut req = HttpRequest::new(SdkBody::from(body));
        req.set_method("POST").unwrap();
        req.set_uri(url).unwrap();
        req.headers_mut()
            .insert("x-amz-target", "secretsmanager.GetSecretValue");
        req
    }

    /// One connection, one canned answer; hands back what was received.
    async fn server(answer: &'static [u8]) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then the 2-byte body the test sends.
            while !got.windows(4).any(|w| w == b"\r\n\r\n") || !got.ends_with(b"{}") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(answer).await.unwrap();
            got
        });
        (url, task)
    }

    #[tokio::test]
    async fn the_sdk_request_goes_out_whole_and_the_answer_comes_back() {
        let (url, got) = server(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 7\r\nx-amzn-requestid: r-1\r\nx-odd: \xff\xfe\r\n\r\n{\"a\":1}",
        )
        .await;
        let resp = connector().call(request(&url, "{}")).await.unwrap();
        assert_eq!(resp.status().as_u16(), 400);
        // Streamed: the SDK's trace log of the answer cannot print it.
        assert!(!format!("{resp:?}").contains("\"a\""), "{resp:?}");
        let mut resp = resp;
        let body = resp.take_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"{\"a\":1}");
        assert_eq!(resp.headers().get("x-amzn-requestid"), Some("r-1"));
        // Not UTF-8: dropped, not a panic.
        assert_eq!(resp.headers().get("x-odd"), None);
        let sent = String::from_utf8(got.await.unwrap()).unwrap();
        assert!(sent.starts_with("POST / HTTP/1.1\r\n"), "{sent}");
        assert!(
            sent.to_ascii_lowercase()
                .contains("x-amz-target: secretsmanager.getsecretvalue"),
            "{sent}"
        );
        assert!(sent.ends_with("\r\n\r\n{}"), "{sent}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_io_error_the_sdk_retries() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        drop(listener);
        let err = connector().call(request(&url, "{}")).await.unwrap_err();
        assert!(err.is_io(), "{err:?}");
    }

    #[tokio::test]
    async fn a_slow_answer_past_the_read_timeout_is_a_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        // Accepts and never answers.
        let _held = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
            drop(s);
        });
        let c = Connector {
            http: reqwest::Client::new(),
            read_timeout: Some(Duration::from_millis(50)),
        };
        let err = c.call(request(&url, "{}")).await.unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
    }
}
