//! Adapters: the ports of the domain, implemented against the real
//! services (the Defender API and Entra ID over HTTPS, AWS through the SDK),
//! plus in-process ones (`memory`). `aws` is the leaf every SDK client is built
//! from, `sdk_http` the SDK's HTTP client over reqwest, and `tls` the one
//! trust store every connection uses.

use std::time::Duration;

pub mod aws;
pub mod callback;
pub mod defender_http;
pub mod dynamodb;
pub mod entra;
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
