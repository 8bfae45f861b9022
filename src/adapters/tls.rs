//! One trust store for every TLS connection the function makes: reqwest's
//! (Entra ID, Defender, ticketing write-back, callbacks) and the AWS SDK's
//! (Secrets Manager, SQS, DynamoDB, STS). A leaf: it imports nothing of ours.
//!
//! The roots are compiled in (Mozilla's list, `webpki-root-certs`), not read
//! from the system. Both HTTP stacks' defaults read the system store when a
//! client is built: `/etc/ssl/certs/ca-certificates.crt` and then each of the
//! ~290 files beside it, once for reqwest before the runtime loop starts and
//! once more for the SDK. Measured in `bench/run`, that was most of init;
//! compiled-in roots cost no file at all and are the same on every image
//! (`provided.al2023` keeps its bundle at `/etc/pki/tls/certs/ca-bundle.crt`,
//! Debian at `/etc/ssl/certs/ca-certificates.crt`; neither path matters).
//!
//! `MDE_CA_FILE` adds the certificates of one PEM file to them, for both
//! stacks: a corporate TLS-inspecting proxy's CA, or the system bundle
//! itself for a user who wants it trusted too.
//!
//! Both stacks are reqwest (the SDK's through `adapters::sdk_http`), so
//! there is one rustls configuration and the root store is parsed once, on
//! the first handshake of either.

use std::sync::{Arc, OnceLock};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

type Verified = Result<Arc<rustls::client::WebPkiServerVerifier>, String>;

/// The roots every connection trusts.
#[derive(Debug, Clone, Default)]
pub struct TrustRoots {
    /// Certificates added to the compiled-in roots (`MDE_CA_FILE`).
    extra: Vec<CertificateDer<'static>>,
    /// rustls' verifier over these roots, built on the first handshake and
    /// shared by every client made from them (and their clones).
    verifier: Arc<OnceLock<Verified>>,
}

impl TrustRoots {
    /// The compiled-in roots only.
    pub fn bundled() -> Self {
        Self::default()
    }

    /// The compiled-in roots and every certificate of a PEM file. A file
    /// with no certificate, or one rustls cannot use as a root, is refused:
    /// a knob that silently trusted nothing more would fail later, on the
    /// first call, far from its cause.
    pub fn with_pem(pem: &[u8]) -> Result<Self, String> {
        let extra = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("is not a PEM file of certificates ({e})"))?;
        if extra.is_empty() {
            return Err("holds no PEM certificate (BEGIN CERTIFICATE)".into());
        }
        let mut store = rustls::RootCertStore::empty();
        for (i, cert) in extra.iter().enumerate() {
            store
                .add(cert.clone())
                .map_err(|e| format!("certificate {} cannot be a root ({e})", i + 1))?;
        }
        Ok(Self {
            extra,
            verifier: Arc::default(),
        })
    }

    /// Reads `with_pem` from a file.
    pub fn load(path: &str) -> Result<Self, String> {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        Self::with_pem(&pem)
    }

    /// How many certificates were added to the compiled-in roots.
    pub fn extra_count(&self) -> usize {
        self.extra.len()
    }

    fn root_store(&self) -> rustls::RootCertStore {
        let mut store = rustls::RootCertStore::empty();
        store.add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
        store.add_parsable_certificates(self.extra.iter().cloned());
        store
    }

    /// The rustls configuration every reqwest client is built with: the
    /// roots above and aws-lc-rs (the one provider in the tree). The root
    /// store is parsed on the first handshake, once for all the clients
    /// made from these roots, not here.
    pub fn client_config(&self) -> rustls::ClientConfig {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = Arc::new(LazyVerifier {
            roots: self.clone(),
            provider: provider.clone(),
        });
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("aws-lc-rs supports the default protocol versions")
            // "dangerous" is rustls' name for any verifier of one's own; this
            // one is rustls' own WebPKI verifier, built when first needed.
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth()
    }
}

/// rustls' WebPKI verifier over the trust roots, built on first use (the
/// certificate is checked before the handshake signatures, so by the
/// first handshake's certificate).
#[derive(Debug)]
struct LazyVerifier {
    roots: TrustRoots,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl LazyVerifier {
    fn inner(&self) -> Result<&Arc<rustls::client::WebPkiServerVerifier>, rustls::Error> {
        self.roots
            .verifier
            .get_or_init(|| {
                rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(self.roots.root_store()),
                    self.provider.clone(),
                )
                .build()
                .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| rustls::Error::General(e.clone()))
    }
}

impl rustls::client::danger::ServerCertVerifier for LazyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner()?
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

static PROCESS_ROOTS: OnceLock<TrustRoots> = OnceLock::new();

/// Sets the roots of this process, once, at init, before any client is
/// built. Returns false if they were already set (the first wins).
pub fn install(roots: TrustRoots) -> bool {
    PROCESS_ROOTS.set(roots).is_ok()
}

/// The roots of this process: those `install`ed, else the compiled-in ones.
pub fn process_roots() -> &'static TrustRoots {
    PROCESS_ROOTS.get_or_init(TrustRoots::bundled)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Certificates as one PEM document (a test's bundle).
    fn pem<'a>(certs: impl Iterator<Item = &'a CertificateDer<'a>>) -> Vec<u8> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut out = String::with_capacity(256 * 1024);
        for cert in certs {
            out.push_str("-----BEGIN CERTIFICATE-----\n");
            let body = b64.encode(cert.as_ref());
            for line in body.as_bytes().chunks(64) {
                // base64 output is ASCII, so every chunk is valid UTF-8.
                out.push_str(std::str::from_utf8(line).unwrap_or_default());
                out.push('\n');
            }
            out.push_str("-----END CERTIFICATE-----\n");
        }
        out.into_bytes()
    }

    #[test]
    fn the_compiled_in_roots_are_all_usable() {
        let store = TrustRoots::bundled().root_store();
        assert_eq!(
            store.len(),
            webpki_root_certs::TLS_SERVER_ROOT_CERTS.len(),
            "a compiled-in root was dropped as unparsable"
        );
        assert!(store.len() > 100);
    }

    #[test]
    fn a_pem_bundle_reads_back_as_the_same_certificates() {
        let certs = webpki_root_certs::TLS_SERVER_ROOT_CERTS;
        let written = pem(certs.iter());
        let read: Vec<_> = CertificateDer::pem_slice_iter(&written)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(read.len(), certs.len());
        assert!(
            read.iter()
                .zip(certs)
                .all(|(a, b)| a.as_ref() == b.as_ref())
        );
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        assert!(TrustRoots::with_pem(b"").unwrap_err().contains("no PEM"));
        assert!(
            TrustRoots::with_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .unwrap_err()
                .contains("no PEM")
        );
        let garbage = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(
            TrustRoots::with_pem(garbage)
                .unwrap_err()
                .contains("cannot be a root")
        );
    }

    #[test]
    fn a_pem_bundle_adds_each_certificate() {
        let two = pem(webpki_root_certs::TLS_SERVER_ROOT_CERTS[..2].iter());
        assert_eq!(TrustRoots::with_pem(&two).unwrap().extra_count(), 2);
    }
}
