//! TLS for the runner's connections, from the URL's `sslmode` and `sslrootcert` as libpq reads
//! them, with rustls (no system OpenSSL, so the runtime image stays distroless).
//!
//! | sslmode | encrypts | checks the certificate |
//! |---|---|---|
//! | `disable` | no | - |
//! | `prefer` (the default, as in libpq) | when the server offers TLS | no |
//! | `require` | always, or fails | no (as libpq without a root certificate) |
//! | `verify-full` | always, or fails | chain against `sslrootcert`, and the host name |

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyFull,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsOptions {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            mode: SslMode::Prefer,
            root_cert: None,
        }
    }
}

impl TlsOptions {
    /// `sslmode` and `sslrootcert` as libpq reads them.
    pub(crate) fn from_params(params: &crate::conninfo::ConnParams) -> Result<TlsOptions> {
        let mode = match params.get("sslmode").unwrap_or("prefer") {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-full" => SslMode::VerifyFull,
            v @ ("allow" | "verify-ca") => {
                return Err(Error::InvalidUrl {
                    reason: format!(
                        "sslmode={v} is not supported; use disable, prefer, require or verify-full"
                    ),
                })
            }
            _ => {
                return Err(Error::InvalidUrl {
                    reason: "sslmode must be disable, prefer, require or verify-full".into(),
                })
            }
        };
        let root_cert = params.get("sslrootcert").map(PathBuf::from);
        if mode == SslMode::VerifyFull && root_cert.is_none() {
            return Err(Error::InvalidUrl {
                reason: "sslmode=verify-full needs sslrootcert=/path/to/ca.pem (the CA that signed the server's certificate)".into(),
            });
        }
        Ok(TlsOptions { mode, root_cert })
    }

    /// What the driver itself is told: it negotiates TLS, the connector checks certificates.
    pub(crate) fn driver_mode(&self) -> postgres::config::SslMode {
        match self.mode {
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Prefer => postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyFull => postgres::config::SslMode::Require,
        }
    }
}

/// The connector for `opts`. (With `sslmode=disable` the driver never calls it.)
pub fn connector(opts: &TlsOptions) -> Result<MakeRustlsConnect> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidUrl {
            reason: format!("TLS cannot be set up for its sslmode: {e}"),
        })?;
    let config = match (&opts.mode, &opts.root_cert) {
        (SslMode::VerifyFull, Some(path)) => {
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| Error::Usage {
                    what: "sslrootcert",
                    value: path.display().to_string(),
                    reason: format!("cannot read PEM certificates: {e}"),
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(Error::Usage {
                    what: "sslrootcert",
                    value: path.display().to_string(),
                    reason: "it holds no usable certificate".into(),
                });
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}

/// `prefer`/`require`: the session is encrypted and the handshake signature checked, but the
/// certificate is not: libpq's behaviour for these modes.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conninfo::parse;

    #[test]
    fn sslmode_and_root_cert_come_from_the_url() {
        let p = parse("postgres://u:pw@h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x").unwrap();
        let opts = TlsOptions::from_params(&p).unwrap();
        assert_eq!(opts.mode, SslMode::VerifyFull);
        assert_eq!(opts.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(opts.driver_mode(), postgres::config::SslMode::Require);
        let opts = TlsOptions::from_params(&parse("postgres://h/db").unwrap()).unwrap();
        assert_eq!(opts.mode, SslMode::Prefer);
    }

    #[test]
    fn unsupported_modes_are_usage_errors_without_the_password() {
        for url in [
            "postgres://u:s3cret@h/db?sslmode=verify-ca",
            "postgres://u:s3cret@h/db?sslmode=sometimes",
            "postgres://u:s3cret@h/db?sslmode=verify-full",
        ] {
            let err = TlsOptions::from_params(&parse(url).unwrap()).unwrap_err();
            assert!(matches!(err, Error::InvalidUrl { .. }), "{err}");
            assert!(!err.to_string().contains("s3cret"));
        }
    }
}
