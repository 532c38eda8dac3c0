//! TLS on the coordinator's gRPC channel (rustls through tonic). The coordinator serves
//! the certificate and key its spec names; clients (workers, `status`) dial `https://`
//! URLs and trust the CA given with `--tls-ca`, else the system's roots. The sweep token
//! is still required on top: TLS proves who the coordinator is, the token who may use it.

use std::error::Error as _;
use std::path::Path;

use anyhow::{Context, Result};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use tonic::{Code, Status};

/// The coordinator's side: its certificate chain and key, both PEM.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerTlsConfig> {
    let cert_pem = std::fs::read(cert)
        .with_context(|| format!("reading the TLS certificate {}", cert.display()))?;
    let key_pem =
        std::fs::read(key).with_context(|| format!("reading the TLS key {}", key.display()))?;
    Ok(ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem)))
}

/// A client's side: trust `ca` (PEM) if given, else the system's root certificates.
pub fn client_config(ca: Option<&Path>) -> Result<ClientTlsConfig> {
    Ok(match ca {
        Some(ca) => {
            let pem = std::fs::read(ca)
                .with_context(|| format!("reading the TLS CA certificate {}", ca.display()))?;
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
        }
        None => ClientTlsConfig::new().with_native_roots(),
    })
}

/// Why a call failed in the TLS handshake (an untrusted or mismatched certificate, a
/// plaintext peer), or `None` when it failed some other way. Such a failure does not
/// heal by retrying, unlike a coordinator that is restarting.
pub fn handshake_failure(status: &Status) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = status.source();
    while let Some(error) = cause {
        // tokio-rustls hands rustls' errors up inside an io::Error, whose `source()`
        // skips the wrapped error itself.
        let inner = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        for candidate in [Some(error), inner].into_iter().flatten() {
            if let Some(tls) = candidate.downcast_ref::<rustls::Error>() {
                return Some(match tls {
                    rustls::Error::InvalidCertificate(why) => format!(
                        "TLS: the coordinator's certificate is not trusted ({why:?}); \
                         pass --tls-ca (or NEUROMFA_TLS_CA) with the CA that signed it"
                    ),
                    rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                        "TLS: the coordinator did not answer in TLS; is it serving plain http:// (then dial http://)?".to_string()
                    }
                    other => format!("TLS handshake with the coordinator failed: {other}"),
                });
            }
        }
        cause = error.source();
    }
    None
}

/// A failed call's reason, with what to check when TLS is the likely cause: a coordinator
/// serving TLS drops a plaintext (http://) connection at once, which a client sees only
/// as a cancelled call.
pub fn explain(url: &str, status: &Status) -> String {
    if let Some(why) = handshake_failure(status) {
        return why;
    }
    if url.starts_with("http://") && status.code() == Code::Cancelled {
        return format!(
            "{} (the connection was dropped at once; if the coordinator serves TLS, dial https:// and pass --tls-ca)",
            status.message()
        );
    }
    status.message().to_string()
}
