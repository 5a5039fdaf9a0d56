//! TLS for the server: the acceptor built from the configured certificate chain and private
//! key, offering the ALPN name direct-TLS clients require. Must not start without a usable
//! certificate and key: every problem is a config error naming the key and the file.

use crate::error::{Error, Result};
use datafusion_postgres::pgwire;
use std::path::PathBuf;
use std::sync::Arc;

/// Load the TLS certificate chain and private key.
pub(crate) fn tls_acceptor(cert: &PathBuf, key: &PathBuf) -> Result<pgwire::tokio::TlsAcceptor> {
    use tokio_rustls::rustls;
    let read = |path: &PathBuf, what: &str| {
        std::fs::read(path).map_err(|e| {
            Error::Config(format!(
                "server.tls_{what}: cannot read {}: {e}",
                path.display()
            ))
        })
    };
    let cert_pem = read(cert, "cert")?;
    let key_pem = read(key, "key")?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("server.tls_cert: {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "server.tls_cert: {} holds no PEM certificate",
            cert.display()
        )));
    }
    let private_key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| Error::Config(format!("server.tls_key: {}: {e}", key.display())))?
        .ok_or_else(|| {
            Error::Config(format!(
                "server.tls_key: {} holds no PEM private key",
                key.display()
            ))
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map_err(|e| Error::Config(format!("server.tls_cert / server.tls_key: {e}")))?;
    // Direct TLS (PostgreSQL 17 clients' sslnegotiation=direct) requires this ALPN name.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
