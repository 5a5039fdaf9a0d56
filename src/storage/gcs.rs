//! Google Cloud Storage stores: one per bucket, built from Spillway's settings, then the
//! standard `GOOGLE_*` variables (`GOOGLE_SERVICE_ACCOUNT`, `GOOGLE_SERVICE_ACCOUNT_KEY`,
//! `GOOGLE_APPLICATION_CREDENTIALS`, `GOOGLE_BASE_URL`), as object_store's `from_env` reads them.
//!
//! Credentials given in the config replace every credential variable, since object_store
//! refuses a key file and a key together. An emulator is an `endpoint` with `unsigned = true`
//! (or a key file whose JSON sets `gcs_base_url` and `disable_oauth`). Must not print or log
//! secrets: errors name settings, never their values.

use super::client::{allow_http, build_error, Limits};
use crate::config::GcsSettings;
use crate::error::Result;
use object_store::gcp::{GcpCredential, GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::{ObjectStore, StaticCredentialProvider};
use std::sync::Arc;

/// A GCS store for `bucket`.
pub(crate) fn gcs_store(bucket: &str, settings: &GcsSettings) -> Result<Arc<dyn ObjectStore>> {
    let section = format!("GCS settings for bucket `{bucket}`");
    let own_credentials =
        settings.service_account.is_some() || settings.service_account_key.is_some();
    let mut builder = from_env(own_credentials).with_bucket_name(bucket);
    if let Some(path) = &settings.service_account {
        builder = builder.with_service_account_path(path.to_string_lossy());
    }
    if let Some(key) = &settings.service_account_key {
        builder = builder.with_service_account_key(key.expose());
    }
    let endpoint = match &settings.endpoint {
        Some(url) => Some((url.clone(), "`endpoint`")),
        None => builder
            .get_config_value(&GoogleConfigKey::BaseUrl)
            .map(|url| (url, "GOOGLE_BASE_URL")),
    };
    let allowed = allow_http(
        &section,
        settings.allow_http,
        "GOOGLE_ALLOW_HTTP",
        endpoint.as_ref().map(|(url, from)| (url.as_str(), *from)),
    )?;
    let limits = Limits {
        timeout_seconds: settings.timeout_seconds,
        connect_timeout_seconds: settings.connect_timeout_seconds,
        max_retries: settings.max_retries,
        retry_timeout_seconds: settings.retry_timeout_seconds,
    };
    builder = builder
        .with_client_options(limits.client_options(allowed))
        .with_retry(limits.retry_config());
    if let Some((url, _)) = endpoint {
        builder = builder.with_base_url(url.trim_end_matches('/'));
    }
    if settings.unsigned == Some(true) {
        // object_store 0.13 skips credentials on reads only: its writes (uploads, deletes)
        // still ask the credential chain, which without a key file means the instance
        // metadata server. An empty static token sends unsigned writes straight to the server
        // and keeps every request of an unsigned store off the metadata server.
        builder = builder.with_skip_signature(true).with_credentials(Arc::new(
            StaticCredentialProvider::new(GcpCredential {
                bearer: String::new(),
            }),
        ));
    }
    let store = builder.build().map_err(|e| build_error(&section, e))?;
    Ok(Arc::new(store))
}

/// `GoogleCloudStorageBuilder::from_env`, leaving out the credential variables when the config
/// gives credentials of its own.
fn from_env(own_credentials: bool) -> GoogleCloudStorageBuilder {
    if !own_credentials {
        return GoogleCloudStorageBuilder::from_env();
    }
    let mut builder = GoogleCloudStorageBuilder::new();
    for (name, value) in std::env::vars() {
        let Some(key) = name
            .starts_with("GOOGLE_")
            .then(|| name.to_ascii_lowercase().parse::<GoogleConfigKey>().ok())
            .flatten()
        else {
            continue;
        };
        let credential = matches!(
            key,
            GoogleConfigKey::ServiceAccount
                | GoogleConfigKey::ServiceAccountKey
                | GoogleConfigKey::ApplicationCredentials
        );
        if !credential {
            builder = builder.with_config(key, value);
        }
    }
    builder
}
