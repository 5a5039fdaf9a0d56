//! TLS for cluster traffic (`[cluster] tls_cert`, `tls_key`, `ca`): the scheduler's port, the
//! executors' Arrow Flight ports (shuffle reads and result fetches), and every client of them
//! (query clients, executors, `cluster status`) verifying the peer against the configured CA.
//! Ballista's own servers have no TLS, so this module serves the scheduler's routes and the
//! executors' Flight service on tonic servers of its own; executors then take work by polling
//! the scheduler (Ballista's pull mode), because the push mode's task port has no TLS hook.
//! Must not log or print key material.

use crate::error::{Error, Result};
use ballista_core::extension::EndpointOverrideFn;
use ballista_core::utils::{create_grpc_client_endpoint, GrpcClientConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// The PEM files of `[cluster]`, as configured.
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsFiles {
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) ca: Option<PathBuf>,
}

/// Cluster TLS, loaded: the CA every node and client verifies peers with, and (on a scheduler
/// or executor) the node's own certificate and key.
#[derive(Clone)]
pub(crate) struct ClusterTls {
    ca: Certificate,
    identity: Option<Identity>,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls")
            .field("identity", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl ClusterTls {
    /// Load the files; `None` when none is configured. A CA is needed for any TLS; a key
    /// without a certificate (or the reverse) is an error naming both keys.
    pub(crate) fn load(files: &TlsFiles) -> Result<Option<Arc<ClusterTls>>> {
        if files.cert.is_none() && files.key.is_none() && files.ca.is_none() {
            return Ok(None);
        }
        let ca = files.ca.as_deref().ok_or_else(|| {
            Error::Config("cluster.ca: needed with cluster.tls_cert/tls_key (the CA that signed the cluster's certificates)".into())
        })?;
        let identity = match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => Some(Identity::from_pem(
                read("cluster.tls_cert", cert)?,
                read("cluster.tls_key", key)?,
            )),
            (None, None) => None,
            _ => {
                return Err(Error::Config(
                    "cluster.tls_cert and cluster.tls_key: give both or neither".into(),
                ))
            }
        };
        Ok(Some(Arc::new(ClusterTls {
            ca: Certificate::from_pem(read("cluster.ca", ca)?),
            identity,
        })))
    }

    /// The server side, for a scheduler or executor (which must have a certificate).
    pub(crate) fn server(&self, role: &str) -> Result<ServerTlsConfig> {
        let identity = self.identity.clone().ok_or_else(|| {
            Error::Config(format!(
                "cluster.tls_cert and cluster.tls_key: a {role} needs its own certificate when cluster TLS is on"
            ))
        })?;
        Ok(ServerTlsConfig::new().identity(identity))
    }

    /// The client side for `host`.
    fn client(&self, host: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .domain_name(host.to_string())
    }

    /// Ballista's hook for every gRPC and Flight connection it opens: the same address over
    /// TLS. Ballista builds some of them as `http://` (executor to scheduler), so a plain URI
    /// is remade as `https://` with Ballista's default client settings.
    pub(crate) fn endpoint_override(self: &Arc<Self>) -> EndpointOverrideFn {
        let tls = Arc::clone(self);
        Arc::new(move |endpoint: Endpoint| {
            let uri = endpoint.uri().clone();
            let host = uri.host().unwrap_or_default().to_string();
            let endpoint = if uri.scheme_str() == Some("https") {
                endpoint
            } else {
                let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
                create_grpc_client_endpoint(
                    format!("https://{authority}"),
                    Some(&GrpcClientConfig::default()),
                )?
            };
            Ok(endpoint.tls_config(tls.client(&host))?)
        })
    }

    /// A gRPC channel to the scheduler at `host:port` over TLS.
    pub(crate) async fn channel(&self, host: &str, port: u16) -> Result<tonic::transport::Channel> {
        let failed = |e: tonic::transport::Error| {
            Error::Storage(format!(
                "cluster: cannot reach the scheduler at df://{host}:{port} over TLS: {}",
                source_chain(&e)
            ))
        };
        Endpoint::from_shared(format!("https://{host}:{port}"))
            .map_err(failed)?
            .tls_config(self.client(host))
            .map_err(failed)?
            .connect()
            .await
            .map_err(failed)
    }

    /// The CA as reqwest wants it, for `cluster status`.
    pub(crate) fn reqwest_ca(&self) -> Result<reqwest::Certificate> {
        reqwest::Certificate::from_pem(self.ca.as_ref())
            .map_err(|e| Error::Config(format!("cluster.ca: {e}")))
    }
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Config(format!("{key}: {}: {e}", path.display())))
}

/// An error with its causes, where the reason (refused, bad certificate) is.
pub(crate) fn source_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        source = cause.source();
    }
    message
}
