//! TLS on the coordinator's gRPC channel (rustls through tonic). The coordinator serves
//! the certificate and key its spec names; clients (workers, `status`) dial `https://`
//! URLs and trust the CA given with `--tls-ca`, else the system's roots. The sweep token
//! is still required on top: TLS proves who the coordinator is, the token who may use it.

use std::error::Error as _;
use std::path::Path;
use std::time::Duration;

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
fn handshake_failure(status: &Status) -> Option<String> {
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
                    rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
                        "TLS: the coordinator's certificate is not trusted (signed by an unknown CA); \
                         pass --tls-ca (or NEUROMFA_TLS_CA) with the CA that signed it"
                            .to_string()
                    }
                    rustls::Error::InvalidCertificate(why) => format!(
                        "TLS: the coordinator's certificate was refused ({why:?}); it must name \
                         the host dialled and be in date"
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

/// Why a call to `url` failed, when TLS is the cause: a certificate the client does not
/// trust, a peer that does not speak TLS, or plaintext dialled to a coordinator serving
/// TLS. `None` for other failures (a coordinator restarting), which retrying may heal;
/// these do not.
pub async fn tls_failure(url: &str, status: &Status) -> Option<String> {
    if let Some(why) = handshake_failure(status) {
        return Some(why);
    }
    // A TLS server drops a plaintext connection, which the call reports as cancelled, a
    // broken pipe or an HTTP/2 protocol error, depending on timing; only asking the
    // server tells these apart from a coordinator that went away.
    let dropped = matches!(
        status.code(),
        Code::Cancelled | Code::Unknown | Code::Internal
    );
    if url.starts_with("http://") && dropped {
        let probed = url.to_string();
        let tls = tokio::task::spawn_blocking(move || answers_in_tls(&probed))
            .await
            .unwrap_or(false);
        if tls {
            return Some(
                "the coordinator serves TLS: dial https:// (and pass --tls-ca with the CA that signed its certificate)"
                    .to_string(),
            );
        }
    }
    None
}

/// Whether the server at `url`'s host and port answers the HTTP/2 preface with a TLS
/// alert record (type 0x15, version 3.x), as rustls does to a plaintext client.
fn answers_in_tls(url: &str) -> bool {
    use std::io::{Read as _, Write as _};
    use std::net::ToSocketAddrs as _;
    const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let timeout = Duration::from_secs(2);
    let Ok(uri) = url.parse::<tonic::transport::Uri>() else {
        return false;
    };
    let (Some(host), Some(port)) = (uri.host(), uri.port_u16()) else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let Some(addr) = (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
    else {
        return false;
    };
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let mut record = [0u8; 2];
    stream.set_read_timeout(Some(timeout)).is_ok()
        && stream.write_all(HTTP2_PREFACE).is_ok()
        && stream.read_exact(&mut record).is_ok()
        && record == [0x15, 0x03]
}
