//! rustls configurations: TLS 1.3 only, TLS13_AES_256_GCM_SHA384 and
//! TLS13_CHACHA20_POLY1305_SHA256 only (ring provider), the per-machine key
//! and its self-signed certificate, and the client's SPKI-pinning verifier.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Our provider: ring with exactly the two allowed TLS 1.3 suites.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
            ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..ring::default_provider()
    })
}

/// The machine's TLS identity: key (PKCS#8, made on first start) and a fresh
/// self-signed certificate over it. The SPKI pin is stable across restarts.
pub struct Identity {
    pub cert: CertificateDer<'static>,
    pub key_der: Vec<u8>,
    pub pin: String,
}

pub fn load_or_create_identity(state_dir: &Path, name: &str) -> Result<Identity> {
    let path = state_dir.join("tls.key.pem");
    let key = match std::fs::read_to_string(&path) {
        Ok(pem) => {
            rcgen::KeyPair::from_pem(&pem).with_context(|| format!("parsing {}", path.display()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = rcgen::KeyPair::generate().context("generating the TLS key")?;
            gwos_core::state::write_atomic(&path, key.serialize_pem().as_bytes())?;
            key
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key)?;
    let der = cert.der().clone();
    let pin = crate::pin::pin_of_cert(&der).context("own certificate has no SPKI")?;
    Ok(Identity {
        cert: der,
        key_der: key.serialize_der(),
        pin,
    })
}

pub fn server_config(id: &Identity, client_ca: Option<&Path>) -> Result<rustls::ServerConfig> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let pem =
                std::fs::read(ca).with_context(|| format!("reading client CA {}", ca.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut pem.as_slice()) {
                roots.add(c?)?;
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .context("client CA verifier")?;
            builder.with_client_cert_verifier(v)
        }
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key_der.clone()));
    Ok(builder.with_single_cert(vec![id.cert.clone()], key)?)
}

/// Accepts exactly the server whose certificate SPKI hashes to `pin`.
#[derive(Debug)]
pub struct PinVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl PinVerifier {
    pub fn new(pin_hex: &str) -> Result<Self> {
        let pin: [u8; 32] = hex::decode(pin_hex.trim())
            .ok()
            .and_then(|v| v.try_into().ok())
            .context("pin must be 64 hex digits (sha256 of the server SPKI)")?;
        Ok(Self {
            pin,
            provider: provider(),
        })
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = crate::pin::pin_of_cert(end_entity).ok_or(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding,
        ))?;
        if got == hex::encode(self.pin) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _m: &[u8],
        _c: &CertificateDer<'_>,
        _d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client certificate chain and its key, for gateways that require mTLS.
pub struct ClientAuth {
    pub certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("certs", &self.certs.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Clone for ClientAuth {
    fn clone(&self) -> Self {
        Self {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl ClientAuth {
    pub fn new(certs: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Self {
        Self { certs, key }
    }

    /// Reads a PEM certificate chain (leaf first) and a PEM private key
    /// (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self> {
        let pem = std::fs::read(cert)
            .with_context(|| format!("reading client certificate {}", cert.display()))?;
        let certs = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing {}", cert.display()))?;
        anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", cert.display());
        let pem = zeroize::Zeroizing::new(
            std::fs::read(key).with_context(|| format!("reading client key {}", key.display()))?,
        );
        let key = rustls_pemfile::private_key(&mut pem.as_slice())
            .with_context(|| format!("parsing {}", key.display()))?
            .with_context(|| format!("{} holds no private key", key.display()))?;
        Ok(Self { certs, key })
    }
}

pub fn client_config(pin_hex: &str, auth: Option<&ClientAuth>) -> Result<rustls::ClientConfig> {
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinVerifier::new(pin_hex)?));
    Ok(match auth {
        None => b.with_no_client_auth(),
        Some(a) => b
            .with_client_auth_cert(a.certs.clone(), a.key.clone_key())
            .context("client certificate and key")?,
    })
}
