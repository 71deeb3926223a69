//! TLS for `https://` base URLs: rustls with its ring provider (no C library to
//! build), verifying the daemon's certificate against the system's roots plus the
//! caller's own ([`ClientBuilder::add_root_certificate`](crate::ClientBuilder::add_root_certificate)).
//!
//! The configuration is handed to reqwest whole, so that this crate never installs
//! a process-wide rustls provider. (reqwest's rustls backend is compiled in
//! without one: a plain `reqwest::Client` built elsewhere in the same program, with
//! no TLS feature of its own, then needs one installed,
//! `rustls::crypto::ring::default_provider().install_default()`.)

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::error::Error;

/// The root certificates of PEM text: every `CERTIFICATE` block in it.
pub(crate) fn roots_of_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Config {
            setting: "root_certificate",
            reason: format!("not a PEM certificate: {e}"),
        })?;
    if certs.is_empty() {
        return Err(Error::Config {
            setting: "root_certificate",
            reason: "no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into(),
        });
    }
    Ok(certs)
}

/// The rustls configuration of the client's connections. For `https`, the
/// system's roots and `extra`; for plain `http`, no roots at all (it is never used
/// then, and building it needs no root store on the machine).
pub(crate) fn client_config(
    https: bool,
    extra: Vec<CertificateDer<'static>>,
) -> Result<rustls::ClientConfig, Error> {
    let config_error = |e: rustls::Error| Error::Config {
        setting: "tls",
        reason: e.to_string(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(config_error)?;
    let mut config = if https {
        let verifier = if extra.is_empty() {
            rustls_platform_verifier::Verifier::new(provider)
        } else {
            rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider)
        }
        .map_err(|e| Error::Config {
            setting: "root_certificate",
            reason: format!(
                "{e} (give the certificate authority of the daemon's certificate with \
                 ClientBuilder::add_root_certificate)"
            ),
        })?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    };
    // The daemon speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Whether a transport error is a TLS failure that no retry can fix: the daemon's
/// certificate is not trusted, or the handshake was refused. (reqwest wraps
/// rustls's error in I/O errors, whose `source` skips the error they carry, so
/// each one is opened instead.)
pub(crate) fn is_certificate_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if permanent(e) {
            return true;
        }
        next = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    false
}

fn permanent(e: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        e.downcast_ref::<rustls::Error>(),
        Some(
            rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::UnsupportedNameType
                | rustls::Error::PeerIncompatible(_)
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_without_a_certificate_is_refused() {
        for bad in [
            &b""[..],
            b"hello",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ] {
            let err = roots_of_pem(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::Config {
                        setting: "root_certificate",
                        ..
                    }
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn a_certificate_error_is_found_under_io_errors() {
        // As reqwest gives it: I/O errors in I/O errors, under a connect error.
        let rustls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io =
            std::io::Error::other(std::io::Error::new(std::io::ErrorKind::InvalidData, rustls));
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("connect")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        assert!(is_certificate_error(&Outer(io)));
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(!is_certificate_error(&Outer(reset)));
    }
}
