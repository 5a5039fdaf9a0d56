//! S3 stores: one per bucket, built from Spillway's settings, an AWS profile and the standard
//! `AWS_*` variables, in that order.
//!
//! object_store's `AmazonS3Builder::from_env` reads the variables (endpoint, keys, region,
//! `AWS_ALLOW_HTTP`, ...) but no `~/.aws` profiles, so the few profile keys Spillway needs are
//! read here by hand. Settings that would make every request fail before it is sent (a plain
//! HTTP endpoint with HTTP forbidden) are refused when the store is built, naming the variable
//! or setting to change. Must not print or log secrets: errors name settings, never their
//! values (endpoints are not secrets).

use crate::config::{S3Settings, Secret};
use crate::error::{Error, Result};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use std::sync::Arc;
use std::time::Duration;

/// Request timeout, connect timeout, retries and the bound on retrying, unless configured.
const S3_TIMEOUT: Duration = Duration::from_secs(30);
const S3_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const S3_MAX_RETRIES: usize = 4;
const S3_RETRY_TIMEOUT: Duration = Duration::from_secs(30);

/// An S3 store for one bucket. Settings come from `settings` (table over `[storage.s3]`), then an
/// AWS profile, then the standard `AWS_*` variables. A region is always set, so nothing ever asks
/// AWS where a bucket lives (offline, that would hang).
pub(crate) fn s3_store(bucket: &str, settings: &S3Settings) -> Result<Arc<dyn ObjectStore>> {
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    let profile_name = settings
        .profile
        .clone()
        .or_else(|| std::env::var("AWS_PROFILE").ok());
    let profile = match &profile_name {
        Some(name) => aws_profile(name)?,
        None => AwsProfile::default(),
    };
    let seconds =
        |value: Option<u64>, default: Duration| value.map_or(default, Duration::from_secs);
    let endpoint = Endpoint::choose(
        &builder,
        settings,
        profile.endpoint,
        profile_name.as_deref(),
    );
    let allow_http = AllowHttp::choose(settings, endpoint.as_ref())?;
    if let (
        Some(endpoint),
        AllowHttp {
            allowed: false,
            from,
        },
    ) = (&endpoint, &allow_http)
    {
        if endpoint.url.starts_with("http://") {
            return Err(Error::Config(format!(
                "S3 settings for bucket `{bucket}`: the endpoint `{}` (from {}) is plain HTTP, \
                 which {from} forbids: set it to true, or give an https:// endpoint",
                endpoint.url, endpoint.from
            )));
        }
    }
    // Client options replace the ones `from_env` read, `AWS_ALLOW_HTTP` among them: that is why
    // `allow_http` is decided above, from every source, and set again here.
    builder = builder
        .with_client_options(
            ClientOptions::new()
                .with_timeout(seconds(settings.timeout_seconds, S3_TIMEOUT))
                .with_connect_timeout(seconds(
                    settings.connect_timeout_seconds,
                    S3_CONNECT_TIMEOUT,
                ))
                .with_allow_http(allow_http.allowed),
        )
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: settings.max_retries.unwrap_or(S3_MAX_RETRIES),
            retry_timeout: seconds(settings.retry_timeout_seconds, S3_RETRY_TIMEOUT),
        })
        .with_allow_http(allow_http.allowed);
    if let Some(endpoint) = endpoint.filter(|e| e.configured) {
        // `AWS_ENDPOINT_URL_S3` would win over `with_endpoint` when the store is built; the
        // config file and profile come first, so they take both places.
        builder = builder
            .with_config(AmazonS3ConfigKey::S3Endpoint, endpoint.url.clone())
            .with_endpoint(endpoint.url);
    }
    let region = settings
        .region
        .clone()
        .or(profile.region)
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .unwrap_or_else(|| "us-east-1".to_string());
    builder = builder.with_region(region);
    if let Some(key) = settings.access_key_id.clone().or(profile.access_key_id) {
        builder = builder.with_access_key_id(key);
    }
    if let Some(secret) = settings
        .secret_access_key
        .clone()
        .or(profile.secret_access_key)
    {
        builder = builder.with_secret_access_key(secret.expose());
    }
    if let Some(token) = settings.session_token.clone().or(profile.session_token) {
        builder = builder.with_token(token.expose());
    }
    if let Some(virtual_hosted) = settings.virtual_hosted_style {
        builder = builder.with_virtual_hosted_style_request(virtual_hosted);
    }
    if settings.unsigned == Some(true) {
        builder = builder.with_skip_signature(true);
    }
    // The builder's errors name a setting, never its value.
    let store = builder.build().map_err(|e| {
        Error::Config(format!(
            "S3 settings for bucket `{bucket}`: {}",
            crate::error::one_line(&e.to_string())
        ))
    })?;
    Ok(Arc::new(store))
}

/// The S3 endpoint a store will use, and where it was set, for errors a user can act on.
struct Endpoint {
    url: String,
    /// `endpoint under [storage.s3]`, `AWS_ENDPOINT_URL`, ...
    from: String,
    /// Set by Spillway's config or a profile, not by a variable `from_env` already read.
    configured: bool,
}

impl Endpoint {
    /// The config file's endpoint, else the profile's, else the one the `AWS_*` variables gave
    /// `builder` (`AWS_ENDPOINT_URL_S3` over `AWS_ENDPOINT_URL` and `AWS_ENDPOINT`, as
    /// object_store builds it).
    fn choose(
        builder: &AmazonS3Builder,
        settings: &S3Settings,
        from_profile: Option<String>,
        profile: Option<&str>,
    ) -> Option<Endpoint> {
        let configured = |url: String, from: String| Endpoint {
            url,
            from,
            configured: true,
        };
        if let Some(url) = settings.endpoint.clone() {
            return Some(configured(url, "`endpoint` of the S3 settings".into()));
        }
        if let Some(url) = from_profile {
            let from = format!(
                "`endpoint_url` of AWS profile `{}`",
                profile.unwrap_or("default")
            );
            return Some(configured(url, from));
        }
        let url = builder
            .get_config_value(&AmazonS3ConfigKey::S3Endpoint)
            .or_else(|| builder.get_config_value(&AmazonS3ConfigKey::Endpoint))?;
        let from = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
            .into_iter()
            .find(|name| std::env::var(name).is_ok_and(|value| value == url))
            .unwrap_or("AWS_ENDPOINT_URL");
        Some(Endpoint {
            url,
            from: from.to_string(),
            configured: false,
        })
    }
}

/// Whether plain-HTTP endpoints are allowed, and what decided it.
struct AllowHttp {
    allowed: bool,
    /// `AWS_ALLOW_HTTP=false`, `allow_http = false in the S3 settings`, ...
    from: String,
}

impl AllowHttp {
    /// The config file's `allow_http`, else `AWS_ALLOW_HTTP`, else: allowed exactly when the
    /// endpoint is `http://` (naming a plain-HTTP endpoint is asking for it).
    fn choose(settings: &S3Settings, endpoint: Option<&Endpoint>) -> Result<AllowHttp> {
        if let Some(allowed) = settings.allow_http {
            let from = format!("`allow_http = {allowed}` in the S3 settings");
            return Ok(AllowHttp { allowed, from });
        }
        if let Ok(value) = std::env::var("AWS_ALLOW_HTTP") {
            let allowed = parse_bool(&value).ok_or_else(|| {
                Error::Config(format!(
                    "AWS_ALLOW_HTTP=`{value}` is neither true nor false"
                ))
            })?;
            let from = format!("AWS_ALLOW_HTTP={value}");
            return Ok(AllowHttp { allowed, from });
        }
        let allowed = endpoint.is_some_and(|e| e.url.starts_with("http://"));
        Ok(AllowHttp {
            allowed,
            from: "the default".into(),
        })
    }
}

/// A boolean as object_store reads one from a variable.
fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "on" | "yes" | "y" => Some(true),
        "0" | "false" | "off" | "no" | "n" => Some(false),
        _ => None,
    }
}

/// What an AWS profile says (`~/.aws/credentials` and `~/.aws/config`).
#[derive(Default)]
struct AwsProfile {
    access_key_id: Option<String>,
    secret_access_key: Option<Secret>,
    session_token: Option<Secret>,
    region: Option<String>,
    endpoint: Option<String>,
}

/// Read a named profile. The files are INI; the handful of keys Spillway needs do not justify
/// the AWS SDK (object_store reads no profiles), so they are read by hand.
fn aws_profile(name: &str) -> Result<AwsProfile> {
    let home = std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_default();
    let file = |variable: &str, default: &str| {
        std::env::var_os(variable)
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| home.join(default))
    };
    let credentials_path = file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials");
    let config_path = file("AWS_CONFIG_FILE", ".aws/config");
    let credentials = std::fs::read_to_string(&credentials_path).unwrap_or_default();
    let config = std::fs::read_to_string(&config_path).unwrap_or_default();
    let config_section = if name == "default" {
        name.to_string()
    } else {
        format!("profile {name}")
    };
    let pairs: Vec<(String, String)> = ini_section(&credentials, name)
        .into_iter()
        .chain(ini_section(&config, &config_section))
        .collect();
    if pairs.is_empty() {
        return Err(Error::Config(format!(
            "AWS profile `{name}` is in neither {} nor {}",
            credentials_path.display(),
            config_path.display()
        )));
    }
    let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    Ok(AwsProfile {
        access_key_id: get("aws_access_key_id"),
        secret_access_key: get("aws_secret_access_key").map(Secret::new),
        session_token: get("aws_session_token").map(Secret::new),
        region: get("region"),
        endpoint: get("endpoint_url"),
    })
}

/// The `key = value` pairs of one `[section]` of an INI text.
fn ini_section(text: &str, section: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut pairs = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = header.trim() == section;
        } else if inside {
            if let Some((key, value)) = line.split_once('=') {
                pairs.push((key.trim().to_string(), value.trim().to_string()));
            }
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_read_from_ini_sections() {
        let text = "[default]\nregion = eu-west-1\n\n[profile ci]\n# comment\nregion = us-east-2\nendpoint_url = http://127.0.0.1:9000\n";
        let expected = vec![
            ("region".to_string(), "us-east-2".to_string()),
            (
                "endpoint_url".to_string(),
                "http://127.0.0.1:9000".to_string(),
            ),
        ];
        assert_eq!(ini_section(text, "profile ci"), expected);
        assert_eq!(ini_section(text, "default").len(), 1);
    }

    #[test]
    fn allow_http_comes_from_the_settings_then_the_variable_then_the_endpoints_scheme() {
        let http = Endpoint {
            url: "http://127.0.0.1:9000".into(),
            from: "AWS_ENDPOINT_URL".into(),
            configured: false,
        };
        let https = Endpoint {
            url: "https://s3.example.com".into(),
            from: "AWS_ENDPOINT_URL".into(),
            configured: false,
        };
        // Only when AWS_ALLOW_HTTP is not set does the scheme decide; the variable itself is
        // exercised by the black-box tests, which own their process's environment.
        if std::env::var_os("AWS_ALLOW_HTTP").is_none() {
            let none = S3Settings::default();
            assert!(AllowHttp::choose(&none, Some(&http)).unwrap().allowed);
            assert!(!AllowHttp::choose(&none, Some(&https)).unwrap().allowed);
            assert!(!AllowHttp::choose(&none, None).unwrap().allowed);
        }
        let forbidden = S3Settings {
            allow_http: Some(false),
            ..S3Settings::default()
        };
        let decided = AllowHttp::choose(&forbidden, Some(&http)).unwrap();
        assert!(!decided.allowed);
        assert_eq!(decided.from, "`allow_http = false` in the S3 settings");
    }

    #[test]
    fn booleans_read_as_object_store_reads_them() {
        for yes in ["1", "true", "TRUE", "on", "yes", "y"] {
            assert_eq!(parse_bool(yes), Some(true), "{yes}");
        }
        for no in ["0", "false", "off", "no", "n"] {
            assert_eq!(parse_bool(no), Some(false), "{no}");
        }
        assert_eq!(parse_bool("maybe"), None);
    }
}
