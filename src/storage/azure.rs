//! Azure Blob Storage and ADLS Gen2 stores: one per container, built from Spillway's settings,
//! an Azure connection string and the standard `AZURE_*` variables, in that order.
//!
//! object_store's `MicrosoftAzureBuilder::from_env` reads the variables (account, key, SAS
//! token, service principal, endpoint, ...) but not `AZURE_STORAGE_CONNECTION_STRING`, which
//! Azure's own tools and Azurite hand out: it is parsed here. Azurite is reached as any
//! path-style endpoint (`http://HOST:PORT/ACCOUNT`) rather than through object_store's emulator
//! mode, which ignores a configured endpoint. Must not print or log secrets: errors name
//! settings, never their values (endpoints and account names are not secrets).

use super::client::{allow_http, build_error, parse_bool, Limits};
use crate::config::{AzureSettings, Secret};
use crate::error::{Error, Result};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::ObjectStore;
use std::sync::Arc;

/// Azurite's well-known development account and key (published by Microsoft, not a secret).
const EMULATOR_ACCOUNT: &str = "devstoreaccount1";
const EMULATOR_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// Where Azurite listens by default.
const EMULATOR_BLOB_URL: &str = "http://127.0.0.1:10000";

/// An Azure store for the container of `store_key` (`az://container`, `azure://container`,
/// `abfss://container@account.dfs.core.windows.net`; the account named there wins).
pub(crate) fn azure_store(
    store_key: &str,
    settings: &AzureSettings,
) -> Result<Arc<dyn ObjectStore>> {
    let section = format!("Azure settings for `{store_key}`");
    let mut builder = MicrosoftAzureBuilder::from_env();
    let mut endpoint = builder
        .get_config_value(&AzureConfigKey::Endpoint)
        .map(|url| (url, "AZURE_STORAGE_ENDPOINT".to_string()));
    let mut emulator = builder
        .get_config_value(&AzureConfigKey::UseEmulator)
        .and_then(|value| parse_bool(&value))
        .unwrap_or(false);

    let connection = match &settings.connection_string {
        Some(text) => Some((text.clone(), "`connection_string`")),
        None => std::env::var("AZURE_STORAGE_CONNECTION_STRING")
            .ok()
            .map(|text| (Secret::new(text), "AZURE_STORAGE_CONNECTION_STRING")),
    };
    if let Some((text, from)) = connection {
        let parsed = ConnectionString::parse(text.expose())
            .map_err(|e| Error::Config(format!("{section}: {from}: {e}")))?;
        if let Some(account) = parsed.account {
            builder = builder.with_account(account);
        }
        if let Some(key) = parsed.key {
            builder = builder.with_access_key(key.expose());
        }
        if let Some(sas) = parsed.sas {
            builder = builder.with_config(AzureConfigKey::SasKey, sas.expose());
        }
        if let Some(url) = parsed.endpoint {
            endpoint = Some((url, from.to_string()));
        }
        emulator |= parsed.emulator;
    }

    if let Some(account) = &settings.account {
        builder = builder.with_account(account);
    }
    if let Some(key) = &settings.access_key {
        builder = builder.with_access_key(key.expose());
    }
    if let Some(sas) = &settings.sas_token {
        builder = builder.with_config(AzureConfigKey::SasKey, sas.expose());
    }
    if let Some(id) = &settings.client_id {
        builder = builder.with_client_id(id);
    }
    if let Some(secret) = &settings.client_secret {
        builder = builder.with_client_secret(secret.expose());
    }
    if let Some(tenant) = &settings.tenant_id {
        builder = builder.with_tenant_id(tenant);
    }
    if let Some(url) = &settings.endpoint {
        endpoint = Some((url.clone(), "`endpoint`".to_string()));
    }
    if let Some(use_emulator) = settings.use_emulator {
        emulator = use_emulator;
    }

    if emulator {
        // Azurite: the well-known account and key unless others are given, at its default
        // address unless an endpoint is given; always path-style, account in the path.
        let account = builder
            .get_config_value(&AzureConfigKey::AccountName)
            .unwrap_or_else(|| EMULATOR_ACCOUNT.to_string());
        let has_credentials = [AzureConfigKey::AccessKey, AzureConfigKey::SasKey]
            .iter()
            .any(|key| builder.get_config_value(key).is_some());
        if !has_credentials {
            builder = builder.with_access_key(EMULATOR_KEY);
        }
        builder = builder.with_account(&account).with_use_emulator(false);
        if endpoint.is_none() {
            let base = std::env::var("AZURITE_BLOB_STORAGE_URL")
                .unwrap_or_else(|_| EMULATOR_BLOB_URL.to_string());
            let url = format!("{}/{account}", base.trim_end_matches('/'));
            endpoint = Some((url, "`use_emulator`".to_string()));
        }
    }

    let allowed = allow_http(
        &section,
        settings.allow_http,
        "AZURE_ALLOW_HTTP",
        endpoint
            .as_ref()
            .map(|(url, from)| (url.as_str(), from.as_str())),
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
        builder = builder.with_endpoint(url);
    }
    if settings.unsigned == Some(true) {
        builder = builder.with_skip_signature(true);
    }
    // The URL names the container (and for abfss://container@account... the account).
    let store = builder
        .with_url(store_key)
        .build()
        .map_err(|e| build_error(&section, e))?;
    Ok(Arc::new(store))
}

/// The parts of an Azure connection string Spillway uses.
#[derive(Default)]
struct ConnectionString {
    account: Option<String>,
    key: Option<Secret>,
    sas: Option<Secret>,
    endpoint: Option<String>,
    emulator: bool,
}

impl ConnectionString {
    /// Parse `Key=Value;Key=Value`. Errors name keys, never values.
    fn parse(text: &str) -> std::result::Result<ConnectionString, String> {
        let mut parsed = ConnectionString::default();
        let mut protocol = None;
        let mut suffix = None;
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((key, value)) = part.split_once('=') else {
                return Err("a part is not KEY=VALUE".into());
            };
            match key.trim().to_ascii_lowercase().as_str() {
                "accountname" => parsed.account = Some(value.to_string()),
                "accountkey" => parsed.key = Some(Secret::new(value)),
                "sharedaccesssignature" => parsed.sas = Some(Secret::new(value)),
                "blobendpoint" => parsed.endpoint = Some(value.trim_end_matches('/').to_string()),
                "defaultendpointsprotocol" => protocol = Some(value.to_string()),
                "endpointsuffix" => suffix = Some(value.to_string()),
                "usedevelopmentstorage" => parsed.emulator = parse_bool(value).unwrap_or(false),
                // Queue, table and file endpoints, proxy settings: not for blobs.
                _ => {}
            }
        }
        if parsed.endpoint.is_none() {
            if let (Some(account), Some(suffix)) = (&parsed.account, suffix) {
                let protocol = protocol.unwrap_or_else(|| "https".into());
                parsed.endpoint = Some(format!("{protocol}://{account}.blob.{suffix}"));
            }
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_give_account_key_and_blob_endpoint() {
        let text = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;\
                    AccountKey=a2V5PT0=;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;";
        let parsed = ConnectionString::parse(text).unwrap();
        assert_eq!(parsed.account.as_deref(), Some("devstoreaccount1"));
        assert_eq!(parsed.key.unwrap().expose(), "a2V5PT0=");
        assert_eq!(
            parsed.endpoint.as_deref(),
            Some("http://127.0.0.1:10000/devstoreaccount1")
        );
        let cloud = ConnectionString::parse(
            "AccountName=acct;AccountKey=k;EndpointSuffix=core.windows.net",
        )
        .unwrap();
        assert_eq!(
            cloud.endpoint.as_deref(),
            Some("https://acct.blob.core.windows.net")
        );
        assert!(
            ConnectionString::parse("UseDevelopmentStorage=true")
                .unwrap()
                .emulator
        );
        let error = ConnectionString::parse("AccountKey").err().unwrap();
        assert!(!error.contains("AccountKey"), "{error}");
    }
}
