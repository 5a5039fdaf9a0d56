//! Stores for files on web servers: one per `https://host:port` (or `http://`, when allowed).
//!
//! object_store's `HttpStore` reads with GET (ranges) and HEAD, lists with WebDAV's PROPFIND and
//! writes with PUT (creating folders with MKCOL): a plain web server serves single files; folders
//! and globs need WebDAV, and so do outputs. A private certificate authority is trusted through
//! `ca_certificate`. Must not print or log secrets (it holds none: credentials in a URL are
//! refused when the location is parsed).

use super::client::{build_error, Limits};
use crate::config::HttpSettings;
use crate::error::{Error, Result};
use object_store::http::HttpBuilder;
use object_store::{Certificate, ObjectStore};
use std::sync::Arc;

/// A store for the server at `base` (`https://host:port`).
pub(crate) fn http_store(base: &str, settings: &HttpSettings) -> Result<Arc<dyn ObjectStore>> {
    let section = format!("HTTP settings for `{base}`");
    let allowed = settings.allow_http.unwrap_or(false);
    if base.starts_with("http://") && !allowed {
        return Err(Error::Config(format!(
            "`{base}` is plain HTTP: set `allow_http = true` in [storage.http] (or the table's \
             http section) to read it unencrypted, or use https://"
        )));
    }
    let limits = Limits {
        timeout_seconds: settings.timeout_seconds,
        connect_timeout_seconds: settings.connect_timeout_seconds,
        max_retries: settings.max_retries,
        retry_timeout_seconds: settings.retry_timeout_seconds,
    };
    let mut options = limits.client_options(allowed);
    if let Some(path) = &settings.ca_certificate {
        let cannot = |e: &dyn std::fmt::Display| {
            Error::Config(format!("{section}: ca_certificate {}: {e}", path.display()))
        };
        let pem = std::fs::read(path).map_err(|e| cannot(&e))?;
        let certificates = Certificate::from_pem_bundle(&pem).map_err(|e| cannot(&e))?;
        if certificates.is_empty() {
            return Err(cannot(&"holds no PEM certificate"));
        }
        for certificate in certificates {
            options = options.with_root_certificate(certificate);
        }
    }
    let store = HttpBuilder::new()
        .with_url(base)
        .with_client_options(options)
        .with_retry(limits.retry_config())
        .build()
        .map_err(|e| build_error(&section, e))?;
    Ok(Arc::new(store))
}
