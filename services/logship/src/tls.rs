//! The SIEM's address and how its certificate is checked: against a CA and
//! a name (`siem_ca_pem` + `siem_server_name`, default the endpoint's host),
//! or against an SPKI pin (`siem_spki_sha256`; then CA and name are not
//! consulted). There is no anonymous mode and no plaintext fallback: without
//! a CA or a pin nothing is sent.
//!
//! TLS 1.3 is offered first and used whenever the SIEM speaks it. TLS 1.2 is
//! accepted too unless `[logship] tls13_only = true`: rsyslog's gtls driver
//! with `AuthMode="anon"` (the usual RFC 5425 receiver setup, and the one in
//! the logship-siem scenario) offers no TLS 1.3 at all. rustls' TLS 1.2 is
//! ECDHE with AEAD suites only (no CBC, no RSA key exchange).

use std::sync::Arc;

use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// An optional client certificate chain and key (site config
/// `siem_client_cert_file` / `siem_client_key_file`, PEM).
pub struct ClientCert {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert")
            .field("certs", &self.certs.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl ClientCert {
    pub fn load(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let pem = std::fs::read(cert)
            .with_context(|| format!("reading SIEM client certificate {}", cert.display()))?;
        let certs = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing {}", cert.display()))?;
        anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", cert.display());
        let pem = std::fs::read(key)
            .with_context(|| format!("reading SIEM client key {}", key.display()))?;
        let key = rustls_pemfile::private_key(&mut pem.as_slice())
            .with_context(|| format!("parsing {}", key.display()))?
            .with_context(|| format!("{} holds no private key", key.display()))?;
        Ok(Self { certs, key })
    }
}

/// The four SIEM settings, as in the site config's `[logship]` and in
/// control's `config_set`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SiemSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub siem_endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub siem_ca_pem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub siem_server_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub siem_spki_sha256: Option<String>,
}

/// A SIEM to connect to.
#[derive(Clone)]
pub struct Target {
    /// `host:port` as configured.
    pub endpoint: String,
    pub host: String,
    pub port: u16,
    pub server_name: ServerName<'static>,
    /// `"ca"` or `"spki_pin"`.
    pub verify: &'static str,
    pub tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("endpoint", &self.endpoint)
            .field("server_name", &self.server_name)
            .field("verify", &self.verify)
            .finish()
    }
}

/// `host:port`, `[v6]:port`: (host, port).
pub fn split_endpoint(e: &str) -> Result<(String, u16), String> {
    let bad = || format!("siem_endpoint {e:?} is not host:port");
    let (host, port) = e.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// Why settings give no target.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TargetError {
    /// A value is malformed: the settings are refused.
    #[error("{0}")]
    Invalid(String),
    /// An endpoint without a CA or pin: kept (the rest may follow), nothing is sent.
    #[error("{0}")]
    Unverified(String),
}

impl From<String> for TargetError {
    fn from(s: String) -> Self {
        TargetError::Invalid(s)
    }
}

/// Builds the target; `Ok(None)` when no endpoint is set.
pub fn target(
    s: &SiemSettings,
    client: Option<&ClientCert>,
    tls13_only: bool,
) -> Result<Option<Target>, TargetError> {
    let Some(endpoint) = s.siem_endpoint.as_deref().filter(|e| !e.is_empty()) else {
        return Ok(None);
    };
    let (host, port) = split_endpoint(endpoint)?;
    let name = s.siem_server_name.clone().unwrap_or_else(|| host.clone());
    let server_name = ServerName::try_from(name.clone())
        .map_err(|_| format!("siem_server_name {name:?} is not a DNS name or IP address"))?;
    let versions: &[&rustls::SupportedProtocolVersion] = if tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS 1.3 setup: {e}"))?;
    let (builder, verify) = match (&s.siem_spki_sha256, &s.siem_ca_pem) {
        (Some(pin), _) => {
            let v = PinVerifier::new(pin)?;
            (
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(v)),
                "spki_pin",
            )
        }
        (None, Some(pem)) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = rustls_pemfile::certs(&mut pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("siem_ca_pem is not PEM: {e}"))?;
            if certs.is_empty() {
                return Err(TargetError::Invalid(
                    "siem_ca_pem holds no CERTIFICATE block".into(),
                ));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("siem_ca_pem: certificate refused: {e}"))?;
            }
            (builder.with_root_certificates(roots), "ca")
        }
        (None, None) => {
            return Err(TargetError::Unverified(format!(
                "siem_endpoint {endpoint} is set but neither siem_ca_pem nor siem_spki_sha256: \
                 refusing to ship without verifying the SIEM (there is no anonymous mode)"
            )))
        }
    };
    let tls = match client {
        None => builder.with_no_client_auth(),
        Some(c) => builder
            .with_client_auth_cert(c.certs.clone(), c.key.clone_key())
            .map_err(|e| format!("SIEM client certificate: {e}"))?,
    };
    Ok(Some(Target {
        endpoint: endpoint.to_owned(),
        host,
        port,
        server_name,
        verify,
        tls: Arc::new(tls),
    }))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts exactly the certificate whose SPKI hashes to the pin; handshake
/// signatures are still verified (TLS 1.3 and 1.2).
#[derive(Debug)]
struct PinVerifier {
    pin: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl PinVerifier {
    fn new(pin: &str) -> Result<Self, String> {
        let pin = pin.trim().to_ascii_lowercase();
        if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "siem_spki_sha256 {pin:?} must be 64 hex digits (sha256 of the SIEM's SPKI)"
            ));
        }
        Ok(Self {
            pin,
            provider: provider(),
        })
    }
}

impl rustls::client::danger::ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let got = gwos_tls_front::pin::pin_of_cert(end_entity).ok_or(
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding),
        )?;
        if got == self.pin {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
