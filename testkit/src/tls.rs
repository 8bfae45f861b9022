//! HTTPS in front of the fakes: a test CA made for the run, and a TLS front
//! on loopback that ends TLS and passes the bytes to a plain fake (Defender,
//! the login endpoint, moto through a proxy). The function under test is told
//! to trust the CA (`MDE_CA_FILE`), so it meets real handshakes, real
//! certificate checks and the real cost of both; the fakes stay as they are.
//!
//! Each front counts the handshakes it completed and when each began, so a
//! benchmark can tell a handshake the warm-up overlapped from one the first
//! answer waited for.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// A CA made for this run and one server certificate it signed, for
/// `localhost` and `127.0.0.1`.
pub struct TestCa {
    /// The CA certificate, PEM: what the client is told to trust.
    pub ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    pub fn new() -> Self {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.distinguished_name
            .push(DnType::CommonName, "mde-offboard test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca, ca_key);

        let key = KeyPair::generate().expect("server key");
        let mut leaf = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("server params");
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = leaf.signed_by(&key, &issuer).expect("server certificate");

        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server certificate and key");
        Self {
            ca_pem: ca_cert.pem(),
            server: Arc::new(server),
        }
    }

    /// Writes the CA's PEM to a file of its own and returns the path, for
    /// `MDE_CA_FILE`.
    pub fn write_ca_file(&self, name: &str) -> String {
        let path = std::env::temp_dir().join(format!("{name}-{}.pem", std::process::id()));
        std::fs::write(&path, &self.ca_pem).expect("write the CA file");
        path.to_string_lossy().into_owned()
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// A TLS front: accepts TLS on a loopback port and passes each connection's
/// plaintext to `target`.
pub struct TlsFront {
    addr: SocketAddr,
    /// When each completed handshake's connection was accepted, and how
    /// long the handshake took.
    handshakes: Arc<Mutex<Vec<(Instant, Duration)>>>,
}

impl TlsFront {
    pub async fn start(target: SocketAddr, ca: &TestCa) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the TLS front");
        let addr = listener.local_addr().expect("TLS front address");
        let acceptor = TlsAcceptor::from(ca.server.clone());
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let seen = handshakes.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let began = Instant::now();
                let acceptor = acceptor.clone();
                let seen = seen.clone();
                // Without it, Nagle's algorithm and the client's delayed ACK
                // hold each small TLS record ~40 ms: a cost no real host has.
                let _ = client.set_nodelay(true);
                tokio::spawn(async move {
                    // A client that gives up or distrusts the certificate
                    // ends here: nothing is counted, nothing forwarded.
                    let Ok(mut tls) = acceptor.accept(client).await else {
                        return;
                    };
                    seen.lock().unwrap().push((began, began.elapsed()));
                    let Ok(mut plain) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = plain.set_nodelay(true);
                    let _ = copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        Self { addr, handshakes }
    }

    /// `https://127.0.0.1:<port>`: the certificate names the address.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Handshakes completed so far.
    pub fn handshakes(&self) -> usize {
        self.handshakes.lock().unwrap().len()
    }

    /// Handshakes completed whose connection was accepted at or after `t`.
    pub fn handshakes_since(&self, t: Instant) -> usize {
        self.handshakes
            .lock()
            .unwrap()
            .iter()
            .filter(|(b, _)| *b >= t)
            .count()
    }

    /// How long each handshake since `t` took, at this end.
    pub fn handshake_times_since(&self, t: Instant) -> Vec<Duration> {
        self.handshakes
            .lock()
            .unwrap()
            .iter()
            .filter(|(b, _)| *b >= t)
            .map(|(_, d)| *d)
            .collect()
    }
}

/// The address a fake's `http://host:port` URL points at.
pub fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("a fake's URL is http://ip:port")
}
