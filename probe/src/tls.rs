//! The TLS side of `https` probes: client configuration and readable failure reasons.

use std::sync::Arc;

use rota_config::TlsConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::ProbeError;

/// Builds the client configuration of one `https` spec.
///
/// Trust comes from exactly one place: the CA file when given (and then only it, so a
/// private CA cannot be bypassed by a public one), otherwise the bundled web roots.
pub(crate) fn client_config(tls: &TlsConfig) -> Result<Arc<ClientConfig>, ProbeError> {
    // The provider is explicit so nothing depends on a process-wide default being
    // installed (or on which crypto backends other crates pulled in).
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = if tls.insecure_skip_verify {
        tracing::warn!(
            "https probe with insecure_skip_verify = true: instance certificates are NOT \
             verified; anyone on the path can impersonate an instance's health"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert { provider }))
            .with_no_client_auth()
    } else {
        let roots = match &tls.ca_file {
            Some(path) => roots_from_pem_file(path)?,
            None => RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn roots_from_pem_file(path: &std::path::Path) -> Result<RootCertStore, ProbeError> {
    let pem = std::fs::read(path).map_err(|source| ProbeError::CaFile {
        path: path.to_path_buf(),
        source,
    })?;
    let pem_error = |detail: String| ProbeError::CaPem {
        path: path.to_path_buf(),
        detail,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| pem_error(format!("bad PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| pem_error(format!("unusable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(pem_error("no CERTIFICATE blocks found".to_string()));
    }
    Ok(roots)
}

/// `insecure_skip_verify`: any certificate is accepted. Handshake signatures are still
/// checked, so the peer must at least hold the key of the certificate it shows.
#[derive(Debug)]
struct AcceptAnyCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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

/// An operator-readable reason for a failed handshake.
pub(crate) fn reason(e: &rustls::Error) -> String {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "tls: certificate expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "tls: certificate not yet valid".into()
            }
            CertificateError::UnknownIssuer => "tls: unknown issuer".into(),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "tls: name mismatch".into()
            }
            CertificateError::BadSignature => "tls: bad certificate signature".into(),
            CertificateError::Revoked => "tls: certificate revoked".into(),
            CertificateError::BadEncoding => "tls: malformed certificate".into(),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "tls: certificate not valid for server authentication".into()
            }
            other => format!("tls: invalid certificate: {other}"),
        },
        E::AlertReceived(alert) => format!("tls: peer sent alert {alert:?}"),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
            format!("tls: not a TLS answer ({e})")
        }
        E::NoCertificatesPresented => "tls: no certificate presented".into(),
        E::PeerIncompatible(p) => format!("tls: incompatible peer: {p:?}"),
        other => format!("tls: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_readable() {
        let cert = |c| reason(&rustls::Error::InvalidCertificate(c));
        assert_eq!(cert(CertificateError::Expired), "tls: certificate expired");
        assert_eq!(cert(CertificateError::UnknownIssuer), "tls: unknown issuer");
        assert_eq!(
            cert(CertificateError::NotValidForName),
            "tls: name mismatch"
        );
    }

    #[test]
    fn default_config_uses_bundled_roots() {
        let cfg = client_config(&TlsConfig::default()).unwrap();
        assert_eq!(cfg.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn pem_without_certificates_is_rejected() {
        let dir = std::env::temp_dir().join(format!(
            "rota-probe-tls-unit-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("empty.pem");
        std::fs::write(&file, "not a pem\n").unwrap();
        let err = client_config(&TlsConfig {
            ca_file: Some(file),
            ..TlsConfig::default()
        })
        .unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(err, ProbeError::CaPem { .. }), "{err}");
    }
}
