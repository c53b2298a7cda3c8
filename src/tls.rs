//! TLS for the runner's connections, from `sslmode`, `sslrootcert`, `sslcert` and `sslkey` as
//! libpq reads them (in the URL or from `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`),
//! with rustls (no system OpenSSL, so the runtime image stays distroless).
//!
//! | sslmode | encrypts | checks the server certificate |
//! |---|---|---|
//! | `disable` | no | - |
//! | `prefer` (the default, as in libpq) | when the server offers TLS | no |
//! | `require` | always, or fails | no; with `sslrootcert`, as `verify-ca` (as libpq) |
//! | `verify-ca` | always, or fails | chain against `sslrootcert`, not the host name |
//! | `verify-full` | always, or fails | chain against `sslrootcert`, and the host name |
//!
//! `sslrootcert=system` is the operating system's trust store (as libpq 16+): it makes
//! `verify-full` the default and refuses a weaker mode. `sslcert` and `sslkey` (PEM; the key
//! PKCS#8, RSA or SEC1) are the client certificate, for `cert` authentication in `pg_hba.conf`.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Where the trusted CA certificates come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of CA certificates.
    File(PathBuf),
    /// `sslrootcert=system`: the operating system's trust store.
    System,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsOptions {
    pub mode: SslMode,
    pub root_cert: Option<RootCert>,
    /// The client certificate and its key (`sslcert`, `sslkey`), PEM files.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            mode: SslMode::Prefer,
            root_cert: None,
            client_cert: None,
        }
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidUrl {
        reason: reason.into(),
    }
}

impl TlsOptions {
    /// `sslmode`, `sslrootcert`, `sslcert` and `sslkey` as libpq reads them.
    pub(crate) fn from_params(params: &crate::conninfo::ConnParams) -> Result<TlsOptions> {
        let root_cert = params.get("sslrootcert").map(|r| match r {
            "system" => RootCert::System,
            path => RootCert::File(PathBuf::from(path)),
        });
        let system = root_cert == Some(RootCert::System);
        let default = if system { "verify-full" } else { "prefer" };
        let mode = match params.get("sslmode").unwrap_or(default) {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(invalid(
                    "sslmode=allow is not supported; use disable, prefer, require, verify-ca or verify-full",
                ))
            }
            _ => {
                return Err(invalid(
                    "sslmode must be disable, prefer, require, verify-ca or verify-full",
                ))
            }
        };
        if system && mode != SslMode::VerifyFull {
            return Err(invalid(
                "sslrootcert=system needs sslmode=verify-full (a weaker sslmode would trust any server the system store trusts, for any host name)",
            ));
        }
        if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_cert.is_none() {
            return Err(invalid(format!(
                "sslmode={} needs sslrootcert=/path/to/ca.pem (the CA that signed the server's certificate) or sslrootcert=system",
                if mode == SslMode::VerifyCa { "verify-ca" } else { "verify-full" }
            )));
        }
        let client_cert = match (params.get("sslcert"), params.get("sslkey")) {
            (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "sslcert needs sslkey (the client certificate's private key)",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid("sslkey needs sslcert (the client certificate)"))
            }
        };
        Ok(TlsOptions {
            mode,
            root_cert,
            client_cert,
        })
    }

    /// What the driver itself is told: it negotiates TLS, the connector checks certificates.
    pub(crate) fn driver_mode(&self) -> postgres::config::SslMode {
        match self.mode {
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Prefer => postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                postgres::config::SslMode::Require
            }
        }
    }

    /// Whether the host name is checked, the chain is checked, or neither. libpq: `require`
    /// with a root certificate checks the chain, as `verify-ca`.
    fn checks(&self) -> Checks {
        match (self.mode, &self.root_cert) {
            (SslMode::VerifyFull, _) => Checks::ChainAndHost,
            (SslMode::VerifyCa, _) | (SslMode::Require, Some(_)) => Checks::Chain,
            _ => Checks::Nothing,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Checks {
    Nothing,
    Chain,
    ChainAndHost,
}

/// The connector for `opts`. (With `sslmode=disable` the driver never calls it.)
pub fn connector(opts: &TlsOptions) -> Result<MakeRustlsConnect> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS cannot be set up for its sslmode: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = match (opts.checks(), &opts.root_cert) {
        (Checks::Nothing, _) | (_, None) => Arc::new(EncryptOnly(provider.clone())),
        (checks, Some(root)) => {
            let roots = Arc::new(root_store(root)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| invalid(format!("TLS cannot be set up for sslrootcert: {e}")))?;
            if checks == Checks::Chain {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match &opts.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let (chain, key_der) = client_identity(cert, key)?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| Error::Usage {
                    what: "sslkey",
                    value: key.display().to_string(),
                    reason: format!("it does not fit the certificate in sslcert: {e}"),
                })?
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

/// The trusted CA certificates: a PEM file, or the system's store.
fn root_store(root: &RootCert) -> Result<RootCertStore> {
    let (certs, what) = match root {
        RootCert::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| Error::Usage {
                    what: "sslrootcert",
                    value: path.display().to_string(),
                    reason: format!("cannot read PEM certificates: {e}"),
                })?;
            (certs, path.display().to_string())
        }
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                log::warn!("sslrootcert=system: {e}");
            }
            (found.certs, "system".to_string())
        }
    };
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(Error::Usage {
            what: "sslrootcert",
            value: what,
            reason: "it holds no usable certificate (for system: install the ca-certificates package or set SSL_CERT_FILE)".into(),
        });
    }
    Ok(roots)
}

/// The client certificate chain and its key, from PEM files. Errors name the files only.
fn client_identity(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| Error::Usage {
            what: "sslcert",
            value: cert.display().to_string(),
            reason: format!("cannot read a PEM certificate: {e}"),
        })?;
    if chain.is_empty() {
        return Err(Error::Usage {
            what: "sslcert",
            value: cert.display().to_string(),
            reason: "it holds no PEM certificate".into(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| Error::Usage {
        what: "sslkey",
        value: key.display().to_string(),
        reason: format!("cannot read a PEM private key (PKCS#8, RSA or EC): {e}"),
    })?;
    Ok((chain, key_der))
}

/// `verify-ca`: the chain must lead to a trusted root; the host name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer`/`require`: the session is encrypted and the handshake signature checked, but the
/// certificate is not: libpq's behaviour for these modes. The certificate is therefore not parsed
/// as a path validator would: only its public key is read (so that an X.509 v1 certificate, which
/// rustls's validator refuses and OpenSSL accepts, works as it does with psql), and the handshake
/// signature is checked against it.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl EncryptOnly {
    fn check_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
        tls13: bool,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        let bad = |e: CertificateError| rustls::Error::InvalidCertificate(e);
        let (alg_id, key) = public_key(cert.as_ref()).ok_or(bad(CertificateError::BadEncoding))?;
        let candidates = self
            .0
            .signature_verification_algorithms
            .mapping
            .iter()
            .find(|(scheme, _)| *scheme == dss.scheme && (!tls13 || tls13_scheme(*scheme)))
            .map(|(_, algs)| *algs)
            .ok_or(rustls::Error::PeerMisbehaved(
                rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
            ))?;
        // TLS 1.3 names one algorithm per scheme: the first; TLS 1.2 may need any of them.
        let tried = if tls13 { &candidates[..1] } else { candidates };
        for alg in tried {
            if alg.public_key_alg_id().as_ref() == alg_id {
                return alg
                    .verify_signature(key, message, dss.signature())
                    .map(|_| HandshakeSignatureValid::assertion())
                    .map_err(|_| bad(CertificateError::BadSignature));
            }
        }
        Err(bad(CertificateError::BadSignature))
    }
}

/// Whether TLS 1.3 allows `scheme` in a handshake signature (not PKCS#1 v1.5, not SHA-1).
fn tls13_scheme(scheme: SignatureScheme) -> bool {
    !matches!(
        scheme,
        SignatureScheme::RSA_PKCS1_SHA1
            | SignatureScheme::RSA_PKCS1_SHA256
            | SignatureScheme::RSA_PKCS1_SHA384
            | SignatureScheme::RSA_PKCS1_SHA512
            | SignatureScheme::ECDSA_SHA1_Legacy
    )
}

/// The element at the start of `der`: (tag, contents, what follows).
fn der_element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |a, b| (a << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// A certificate's public key (X.509 v1 or v3): its AlgorithmIdentifier's contents and the key's
/// bits, read from the SubjectPublicKeyInfo with nothing else of the certificate checked.
fn public_key(cert: &[u8]) -> Option<(&[u8], &[u8])> {
    const SEQUENCE: u8 = 0x30;
    let (SEQUENCE, cert, _) = der_element(cert)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = der_element(cert)? else {
        return None;
    };
    // [0] version: absent in a v1 certificate.
    let (tag, _, after) = der_element(tbs)?;
    let mut rest = if tag == 0xa0 { after } else { tbs };
    // serial number, signature algorithm, issuer, validity, subject.
    for _ in 0..5 {
        rest = der_element(rest)?.2;
    }
    let (SEQUENCE, spki, _) = der_element(rest)? else {
        return None;
    };
    let (SEQUENCE, alg, rest) = der_element(spki)? else {
        return None;
    };
    let (0x03, bits, _) = der_element(rest)? else {
        return None;
    };
    let (0, key) = bits.split_first()? else {
        return None;
    };
    Some((alg, key))
}

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
        self.check_signature(message, cert, dss, false)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.check_signature(message, cert, dss, true)
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
        assert_eq!(
            opts.root_cert,
            Some(RootCert::File(PathBuf::from("/etc/ca.pem")))
        );
        assert_eq!(opts.driver_mode(), postgres::config::SslMode::Require);
        let opts = TlsOptions::from_params(&parse("postgres://h/db").unwrap()).unwrap();
        assert_eq!(opts.mode, SslMode::Prefer);
    }

    #[test]
    fn unsupported_modes_are_usage_errors_without_the_password() {
        for url in [
            "postgres://u:s3cret@h/db?sslmode=allow",
            "postgres://u:s3cret@h/db?sslmode=verify-ca",
            "postgres://u:s3cret@h/db?sslmode=require&sslrootcert=system",
            "postgres://u:s3cret@h/db?sslcert=/c.pem",
            "postgres://u:s3cret@h/db?sslmode=sometimes",
            "postgres://u:s3cret@h/db?sslmode=verify-full",
        ] {
            let err = TlsOptions::from_params(&parse(url).unwrap()).unwrap_err();
            assert!(matches!(err, Error::InvalidUrl { .. }), "{err}");
            assert!(!err.to_string().contains("s3cret"));
        }
    }

    #[test]
    fn system_roots_default_to_verify_full_and_require_with_a_root_checks_the_chain() {
        let opts =
            TlsOptions::from_params(&parse("postgres://h/db?sslrootcert=system").unwrap()).unwrap();
        assert_eq!(opts.mode, SslMode::VerifyFull);
        assert_eq!(opts.root_cert, Some(RootCert::System));
        let opts = TlsOptions::from_params(
            &parse("postgres://h/db?sslmode=require&sslrootcert=/ca.pem").unwrap(),
        )
        .unwrap();
        assert!(opts.checks() == Checks::Chain);
        let opts =
            TlsOptions::from_params(&parse("postgres://h/db?sslmode=require").unwrap()).unwrap();
        assert!(opts.checks() == Checks::Nothing);
    }
}
