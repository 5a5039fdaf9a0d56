//! What the Azure, GCS and HTTPS stores share: timeouts, retries and the plain-HTTP rule.
//!
//! Every store retries 5xx answers and timeouts with object_store's exponential backoff, within
//! a bound, so a server that stops answering fails the query (exit code 8) instead of hanging
//! it. Plain HTTP is refused unless allowed, and allowing it is decided from every source at
//! once, because a store's client options replace the ones its `from_env` read. Must not see
//! secrets: it only handles limits and endpoints.

use crate::error::{Error, Result};
use object_store::{BackoffConfig, ClientOptions, RetryConfig};
use std::time::Duration;

/// Request timeout, connect timeout, retries and the bound on retrying, unless configured.
const TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_RETRIES: usize = 4;
const RETRY_TIMEOUT: Duration = Duration::from_secs(30);

/// The configured limits of one store's requests (`None`: the default).
pub(crate) struct Limits {
    pub(crate) timeout_seconds: Option<u64>,
    pub(crate) connect_timeout_seconds: Option<u64>,
    pub(crate) max_retries: Option<usize>,
    pub(crate) retry_timeout_seconds: Option<u64>,
}

impl Limits {
    /// Client options with these timeouts, allowing plain HTTP or not.
    pub(crate) fn client_options(&self, allow_http: bool) -> ClientOptions {
        ClientOptions::new()
            .with_timeout(seconds(self.timeout_seconds, TIMEOUT))
            .with_connect_timeout(seconds(self.connect_timeout_seconds, CONNECT_TIMEOUT))
            .with_allow_http(allow_http)
    }

    /// Retries with exponential backoff, bounded in count and time.
    pub(crate) fn retry_config(&self) -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: self.max_retries.unwrap_or(MAX_RETRIES),
            retry_timeout: seconds(self.retry_timeout_seconds, RETRY_TIMEOUT),
        }
    }
}

fn seconds(value: Option<u64>, default: Duration) -> Duration {
    value.map_or(default, Duration::from_secs)
}

/// Whether a store may use plain HTTP: the setting if given, else the variable if set, else
/// exactly when the endpoint is `http://` (naming a plain-HTTP endpoint is asking for it).
/// An `http://` endpoint that the setting or variable forbids is an error naming both, before
/// any request is sent.
pub(crate) fn allow_http(
    section: &str,
    setting: Option<bool>,
    variable: &str,
    endpoint: Option<(&str, &str)>,
) -> Result<bool> {
    let (allowed, from) = match (setting, std::env::var(variable)) {
        (Some(allowed), _) => (allowed, format!("`allow_http = {allowed}` in {section}")),
        (None, Ok(value)) => {
            let allowed = parse_bool(&value).ok_or_else(|| {
                Error::Config(format!("{variable}=`{value}` is neither true nor false"))
            })?;
            (allowed, format!("{variable}={value}"))
        }
        (None, Err(_)) => {
            let plain = endpoint.is_some_and(|(url, _)| url.starts_with("http://"));
            return Ok(plain);
        }
    };
    if let (false, Some((url, endpoint_from))) = (allowed, endpoint) {
        if url.starts_with("http://") {
            return Err(Error::Config(format!(
                "{section}: the endpoint `{url}` (from {endpoint_from}) is plain HTTP, which \
                 {from} forbids: set it to true, or give an https:// endpoint"
            )));
        }
    }
    Ok(allowed)
}

/// A boolean as object_store reads one from a variable.
pub(crate) fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "on" | "yes" | "y" => Some(true),
        "0" | "false" | "off" | "no" | "n" => Some(false),
        _ => None,
    }
}

/// A store builder's error, one line, naming the settings section. object_store's builder
/// errors name settings, never their values.
pub(crate) fn build_error(section: &str, error: object_store::Error) -> Error {
    Error::Config(format!(
        "{section}: {}",
        crate::error::one_line(&error.to_string())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forbidden_plain_http_endpoint_is_an_error_naming_setting_and_endpoint() {
        let endpoint = Some(("http://127.0.0.1:10000/acct", "`endpoint`"));
        let error = allow_http("[storage.azure]", Some(false), "UNSET_VARIABLE_X", endpoint)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("allow_http = false") && error.contains("http://127.0.0.1:10000/acct"),
            "{error}"
        );
        assert!(allow_http("s", None, "UNSET_VARIABLE_X", endpoint).unwrap());
        let https = Some(("https://acct.blob.core.windows.net", "the default"));
        assert!(!allow_http("s", None, "UNSET_VARIABLE_X", https).unwrap());
        assert!(!allow_http("s", Some(false), "UNSET_VARIABLE_X", https).unwrap());
    }
}
