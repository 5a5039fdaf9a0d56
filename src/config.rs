//! The `spillway.toml` model and the values it holds.
//!
//! Owns: finding and parsing the config file, rejecting unknown keys (the message names the key
//! and its line), and the small value languages used in it and on the command line: sizes
//! (`4GiB`, `60%`), column types (`decimal(12,2)`), table formats and compressions. Must not touch
//! DataFusion: the catalog and the engine turn these plain values into DataFusion objects.
//!
//! Precedence is flags > `SPILLWAY_*` environment variables > the file > defaults; the first two
//! are merged by the command line layer (clap reads the variables), this module only reads the file.

use crate::error::{Error, Result};
use crate::units::parse_size;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The name of the config file looked for in the current directory.
pub(crate) const DEFAULT_CONFIG_FILE: &str = "spillway.toml";

/// The whole config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub(crate) engine: EngineSection,
    #[serde(default)]
    pub(crate) tables: BTreeMap<String, TableSection>,
    #[serde(default)]
    pub(crate) storage: StorageSection,
    #[serde(default)]
    pub(crate) reports: ReportsSection,
    #[serde(default)]
    pub(crate) server: ServerSection,
    #[serde(default)]
    pub(crate) cluster: ClusterSection,
    #[serde(default)]
    pub(crate) privacy: PrivacySection,
    /// `[alerts.NAME]`: where report alerts go (see `alert`).
    #[serde(default)]
    pub(crate) alerts: BTreeMap<String, AlertSection>,
}

/// `[alerts.NAME]`: one alert target, named by reports' `on_failure` / `on_success`. Exactly one
/// of `webhook`/`webhook_env`, `smtp` or `command`. Secrets only through the environment.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AlertSection {
    /// POST the alert as JSON to this URL.
    pub(crate) webhook: Option<String>,
    /// The variable holding the webhook URL instead (chat webhooks carry their token in it).
    pub(crate) webhook_env: Option<String>,
    /// Extra request headers, each value read from the named variable (`Authorization`).
    #[serde(default)]
    pub(crate) headers_env: BTreeMap<String, String>,
    /// Send an e-mail through this SMTP server, `host` or `host:port` (default port 587).
    pub(crate) smtp: Option<String>,
    /// `starttls` (default: the connection must be upgraded, or nothing is sent) or `none`
    /// (plain SMTP, for a relay on the same machine).
    pub(crate) tls: Option<String>,
    pub(crate) from: Option<String>,
    #[serde(default)]
    pub(crate) to: Vec<String>,
    pub(crate) username_env: Option<String>,
    pub(crate) password_env: Option<String>,
    /// A PEM file of extra CA certificates to trust (a private mail server or webhook).
    pub(crate) ca_file: Option<PathBuf>,
    /// Run this program (then its arguments) with the alert as JSON on its standard input.
    pub(crate) command: Option<Vec<String>>,
    /// Further tries after a failed delivery, with doubling waits from one second (default 3).
    pub(crate) retries: Option<u32>,
    /// How long one delivery attempt may take (default `30s`).
    pub(crate) timeout: Option<String>,
}

/// `[privacy]`: the PHI guard (see `privacy`): which columns identify a person, what each role
/// may see of them, small-cell suppression, the pseudonym and encryption keys, the audit log.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PrivacySection {
    /// The variable holding the key of `pseudonym()` (any text; 32 random bytes or more).
    pub(crate) key_env: Option<String>,
    /// A file holding that key instead (readable by its owner only, as for SSH keys).
    pub(crate) key_file: Option<PathBuf>,
    /// The role `query`, `report` and the scheduler run under, and server users without one.
    pub(crate) default_role: Option<String>,
    /// Fewest distinct people behind a published group for aggregate-only roles (default 11).
    pub(crate) min_cell_size: Option<u64>,
    /// The append-only, hash-chained JSON Lines audit log of every statement and report run.
    pub(crate) audit_log: Option<PathBuf>,
    /// The variable (default `SPILLWAY_ENCRYPTION_KEY`) or file holding the AES key of
    /// `--encrypt` (16, 24 or 32 bytes, base64 or hex).
    pub(crate) encryption_key_env: Option<String>,
    pub(crate) encryption_key_file: Option<PathBuf>,
    /// `[privacy.columns.TABLE]`: `COLUMN = "subject" | "identifier" | "quasi"`.
    #[serde(default)]
    pub(crate) columns: BTreeMap<String, BTreeMap<String, String>>,
    /// `[privacy.roles.NAME]`: what a role may see.
    #[serde(default)]
    pub(crate) roles: BTreeMap<String, RoleSection>,
}

/// `[privacy.roles.NAME]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoleSection {
    /// Sees every column raw, every row (the data's owner); still audited.
    #[serde(default)]
    pub(crate) unrestricted: bool,
    /// Reads protected tables only through aggregates, with small cells suppressed.
    #[serde(default)]
    pub(crate) aggregate_only: bool,
    /// Overrides `[privacy] min_cell_size` for this role.
    pub(crate) min_cell_size: Option<u64>,
    /// `[privacy.roles.NAME.tables.TABLE]`: per table, columns raw or masked, and a row filter.
    #[serde(default)]
    pub(crate) tables: BTreeMap<String, RoleTableSection>,
}

/// `[privacy.roles.NAME.tables.TABLE]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoleTableSection {
    /// Columns this role sees as they are.
    #[serde(default)]
    pub(crate) raw: Vec<String>,
    /// `COLUMN = "pseudonym" | "redact" | "generalize" | "month" | "year" | "zip3"`.
    #[serde(default)]
    pub(crate) mask: BTreeMap<String, String>,
    /// A SQL condition on the table's columns: the only rows this role sees.
    pub(crate) filter: Option<String>,
}

/// `[cluster]`: a Ballista cluster to run statements on (`spillway cluster ...`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClusterSection {
    /// The scheduler, `df://HOST:PORT`; statements run there instead of in this process.
    pub(crate) scheduler: Option<String>,
    /// `cluster` (every statement over files; the default with a scheduler), `local` (none),
    /// or `auto` (statements whose input files add up to `auto_threshold` or more).
    pub(crate) mode: Option<String>,
    /// Input size from which `auto` runs a statement on the cluster (default 1GiB).
    pub(crate) auto_threshold: Option<String>,
    /// TLS for cluster traffic: this node's certificate and key (PEM; schedulers and
    /// executors), and the CA every node and client verifies the others with.
    pub(crate) tls_cert: Option<PathBuf>,
    pub(crate) tls_key: Option<PathBuf>,
    pub(crate) ca: Option<PathBuf>,
}

/// `[server]`: the Postgres wire server (`spillway serve`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerSection {
    /// `HOST:PORT` to listen on (default `127.0.0.1:5432`). A non-loopback address needs users.
    pub(crate) listen: Option<String>,
    /// `false`: dashboard aggregations keep no per-file states (default `true`).
    pub(crate) incremental: Option<bool>,
    /// Connections served at once; the next client is refused with an error (default 64).
    pub(crate) max_connections: Option<usize>,
    /// Longest a statement may run, e.g. `5min`, `30s` (default 5min; `0` for none). Clients may
    /// lower it with `SET statement_timeout`, not raise it.
    pub(crate) statement_timeout: Option<String>,
    /// Most memory one statement may hold: a size (`256MiB`) or a share of the pool (`25%`).
    pub(crate) query_memory: Option<String>,
    /// Memory for cached dashboard results (default `256MiB`; `0` turns the cache off).
    pub(crate) cache_size: Option<String>,
    /// PEM certificate chain and PKCS#8 key: with both, clients may (and by default must) use TLS.
    pub(crate) tls_cert: Option<PathBuf>,
    pub(crate) tls_key: Option<PathBuf>,
    /// Refuse connections without TLS (default: true when a certificate is configured).
    pub(crate) require_tls: Option<bool>,
    /// `[server.users.NAME]`: who may log in (SCRAM-SHA-256).
    #[serde(default)]
    pub(crate) users: BTreeMap<String, UserSection>,
}

/// `[server.users.NAME]`: one login. Exactly one of `scram` (a stored verifier, as
/// `spillway password` prints) or `password_env` (the variable holding the password).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserSection {
    pub(crate) scram: Option<Secret>,
    pub(crate) password_env: Option<String>,
    /// The `[privacy.roles.NAME]` this user's statements run under (default: `default_role`).
    pub(crate) role: Option<String>,
}

/// `[reports]`: where saved reports live and where their runs are recorded.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReportsSection {
    /// Folder of report `.sql` files (default `queries`).
    pub(crate) folder: Option<PathBuf>,
    /// The run history database (default `.spillway/history.sqlite`).
    pub(crate) history: Option<PathBuf>,
    /// Where reports (and the server's dashboard queries) keep per-file aggregate states
    /// (default `.spillway/state`).
    pub(crate) state_dir: Option<PathBuf>,
    /// The most one report's states may take on disk (`1GiB`); past it, full recomputes.
    pub(crate) max_state: Option<String>,
    /// After downtime: `run_latest` (default) runs the most recent missed firing once; `skip`.
    pub(crate) missed_runs: Option<String>,
    /// On SIGTERM, how long running reports may take to finish before they are cancelled.
    pub(crate) grace_seconds: Option<u64>,
    /// Alerts (`[alerts.NAME]` names) for every scheduled report that does not set its own.
    pub(crate) on_failure: Option<Vec<String>>,
    pub(crate) on_success: Option<Vec<String>>,
    /// Alert `on_failure` when a firing has not succeeded this long after its time (`2h`).
    pub(crate) late_after: Option<String>,
}

/// `[storage]`: settings of object stores, shared by every table that does not override them.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StorageSection {
    #[serde(default)]
    pub(crate) s3: S3Settings,
    #[serde(default)]
    pub(crate) azure: AzureSettings,
    #[serde(default)]
    pub(crate) gcs: GcsSettings,
    #[serde(default)]
    pub(crate) http: HttpSettings,
}

/// A table's own store settings (`[tables.NAME.s3]`, `.azure`, `.gcs`, `.http`), each over the
/// matching `[storage.*]` section.
#[derive(Debug, Default, Clone)]
pub(crate) struct TableStorage {
    pub(crate) s3: Option<S3Settings>,
    pub(crate) azure: Option<AzureSettings>,
    pub(crate) gcs: Option<GcsSettings>,
    pub(crate) http: Option<HttpSettings>,
}

/// `over` for a settings struct whose fields are all `Option`s: unset values come from the
/// fallback, field by field.
macro_rules! settings_over {
    ($name:ident { $($field:ident),* $(,)? }) => {
        impl $name {
            /// These settings, with unset values taken from `fallback`.
            pub(crate) fn over(&self, fallback: &$name) -> $name {
                $name { $($field: self.$field.clone().or_else(|| fallback.$field.clone()),)* }
            }
        }
    };
}

/// `[storage.azure]` and `[tables.NAME.azure]`: how to reach Azure Blob Storage or ADLS Gen2
/// (`az://`, `azure://`, `abfs[s]://`). Unset values fall back to the table's, then the global
/// section's, then `AZURE_STORAGE_CONNECTION_STRING`, then the standard `AZURE_*` variables.
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AzureSettings {
    /// The storage account (`AZURE_STORAGE_ACCOUNT_NAME`).
    pub(crate) account: Option<String>,
    /// The account's shared key (`AZURE_STORAGE_ACCOUNT_KEY`).
    pub(crate) access_key: Option<Secret>,
    /// A shared access signature, `sv=...&sig=...` (`AZURE_STORAGE_SAS_TOKEN`).
    pub(crate) sas_token: Option<Secret>,
    /// A service principal (`AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`, `AZURE_TENANT_ID`).
    pub(crate) client_id: Option<String>,
    pub(crate) client_secret: Option<Secret>,
    pub(crate) tenant_id: Option<String>,
    /// An Azure connection string (`AccountName=...;AccountKey=...;BlobEndpoint=...`), as the
    /// portal and Azurite print it.
    pub(crate) connection_string: Option<Secret>,
    /// The blob service URL, account included for path-style servers:
    /// `http://127.0.0.1:10000/devstoreaccount1` for Azurite (default
    /// `https://<account>.blob.core.windows.net`).
    pub(crate) endpoint: Option<String>,
    /// Azurite's well-known account and key at `http://127.0.0.1:10000` (or `endpoint`).
    pub(crate) use_emulator: Option<bool>,
    /// Allow a plain `http://` endpoint.
    pub(crate) allow_http: Option<bool>,
    /// Send unsigned requests (public containers).
    pub(crate) unsigned: Option<bool>,
    pub(crate) timeout_seconds: Option<u64>,
    pub(crate) connect_timeout_seconds: Option<u64>,
    pub(crate) max_retries: Option<usize>,
    pub(crate) retry_timeout_seconds: Option<u64>,
}

settings_over!(AzureSettings {
    account,
    access_key,
    sas_token,
    client_id,
    client_secret,
    tenant_id,
    connection_string,
    endpoint,
    use_emulator,
    allow_http,
    unsigned,
    timeout_seconds,
    connect_timeout_seconds,
    max_retries,
    retry_timeout_seconds,
});

/// `[storage.gcs]` and `[tables.NAME.gcs]`: how to reach Google Cloud Storage (`gs://`). Unset
/// values fall back to the table's, then the global section's, then the standard `GOOGLE_*`
/// variables (`GOOGLE_SERVICE_ACCOUNT`, `GOOGLE_APPLICATION_CREDENTIALS`, ...).
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GcsSettings {
    /// A service account key file (`GOOGLE_SERVICE_ACCOUNT`).
    pub(crate) service_account: Option<PathBuf>,
    /// The key file's JSON itself (`GOOGLE_SERVICE_ACCOUNT_KEY`).
    pub(crate) service_account_key: Option<Secret>,
    /// The storage service URL (default `https://storage.googleapis.com`); an emulator's address.
    pub(crate) endpoint: Option<String>,
    /// Allow a plain `http://` endpoint.
    pub(crate) allow_http: Option<bool>,
    /// Send unsigned requests (public buckets, emulators): no credentials are looked for.
    pub(crate) unsigned: Option<bool>,
    pub(crate) timeout_seconds: Option<u64>,
    pub(crate) connect_timeout_seconds: Option<u64>,
    pub(crate) max_retries: Option<usize>,
    pub(crate) retry_timeout_seconds: Option<u64>,
}

settings_over!(GcsSettings {
    service_account,
    service_account_key,
    endpoint,
    allow_http,
    unsigned,
    timeout_seconds,
    connect_timeout_seconds,
    max_retries,
    retry_timeout_seconds,
});

/// `[storage.http]` and `[tables.NAME.http]`: how to reach files served over `https://` (and
/// `http://`, when allowed). Listing a folder or glob needs a WebDAV server (PROPFIND); writing
/// needs PUT.
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpSettings {
    /// A PEM file of certificate authorities trusted besides the system's (a private CA).
    pub(crate) ca_certificate: Option<PathBuf>,
    /// Allow `http://` locations (plain text).
    pub(crate) allow_http: Option<bool>,
    pub(crate) timeout_seconds: Option<u64>,
    pub(crate) connect_timeout_seconds: Option<u64>,
    pub(crate) max_retries: Option<usize>,
    pub(crate) retry_timeout_seconds: Option<u64>,
}

settings_over!(HttpSettings {
    ca_certificate,
    allow_http,
    timeout_seconds,
    connect_timeout_seconds,
    max_retries,
    retry_timeout_seconds,
});

/// A secret from the config: never shown by `Debug` or in any message.
#[derive(Clone, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(transparent)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for handing to the store client only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `[storage.s3]` and `[tables.NAME.s3]`: how to reach an S3-compatible store. Unset values
/// fall back to the table's, then the global section's, then the standard `AWS_*` variables.
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct S3Settings {
    /// `http://127.0.0.1:9000` for MinIO or s3s, `https://<account>.r2.cloudflarestorage.com`, ...
    pub(crate) endpoint: Option<String>,
    pub(crate) region: Option<String>,
    pub(crate) access_key_id: Option<String>,
    pub(crate) secret_access_key: Option<Secret>,
    pub(crate) session_token: Option<Secret>,
    /// A profile of `~/.aws/credentials` and `~/.aws/config` (default: `AWS_PROFILE`).
    pub(crate) profile: Option<String>,
    /// Allow a plain `http://` endpoint.
    pub(crate) allow_http: Option<bool>,
    /// `bucket.endpoint/key` addressing instead of `endpoint/bucket/key`.
    pub(crate) virtual_hosted_style: Option<bool>,
    /// Send unsigned requests (public buckets): no credentials are looked for.
    pub(crate) unsigned: Option<bool>,
    /// Time allowed for one request, in seconds.
    pub(crate) timeout_seconds: Option<u64>,
    pub(crate) connect_timeout_seconds: Option<u64>,
    /// Retries of a failed request (5xx, timeouts), with exponential backoff.
    pub(crate) max_retries: Option<usize>,
    /// Upper bound on the time spent retrying one request, in seconds.
    pub(crate) retry_timeout_seconds: Option<u64>,
}

impl S3Settings {
    /// These settings, with unset values taken from `fallback`.
    pub(crate) fn over(&self, fallback: &S3Settings) -> S3Settings {
        fn pick<T: Clone>(first: &Option<T>, second: &Option<T>) -> Option<T> {
            first.clone().or_else(|| second.clone())
        }
        S3Settings {
            endpoint: pick(&self.endpoint, &fallback.endpoint),
            region: pick(&self.region, &fallback.region),
            access_key_id: pick(&self.access_key_id, &fallback.access_key_id),
            secret_access_key: pick(&self.secret_access_key, &fallback.secret_access_key),
            session_token: pick(&self.session_token, &fallback.session_token),
            profile: pick(&self.profile, &fallback.profile),
            allow_http: pick(&self.allow_http, &fallback.allow_http),
            virtual_hosted_style: pick(&self.virtual_hosted_style, &fallback.virtual_hosted_style),
            unsigned: pick(&self.unsigned, &fallback.unsigned),
            timeout_seconds: pick(&self.timeout_seconds, &fallback.timeout_seconds),
            connect_timeout_seconds: pick(
                &self.connect_timeout_seconds,
                &fallback.connect_timeout_seconds,
            ),
            max_retries: pick(&self.max_retries, &fallback.max_retries),
            retry_timeout_seconds: pick(
                &self.retry_timeout_seconds,
                &fallback.retry_timeout_seconds,
            ),
        }
    }
}

/// `[engine]`: memory, spilling and parallelism.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EngineSection {
    /// `4GiB`, `512MiB` or a share of the machine's memory such as `60%`.
    pub(crate) memory_limit: Option<String>,
    pub(crate) spill_dir: Option<PathBuf>,
    /// Cap on the disk space spill files may take, e.g. `100GiB`.
    pub(crate) max_spill: Option<String>,
    pub(crate) workers: Option<usize>,
    pub(crate) batch_size: Option<usize>,
    /// `zstd`, `lz4_frame` or `uncompressed`.
    pub(crate) spill_compression: Option<String>,
    /// Rows read per file to infer a schema when a table has none.
    pub(crate) infer_rows: Option<usize>,
}

/// `[tables.NAME]`: where a table's files are and how to read them.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TableSection {
    /// A file, a folder or a glob.
    pub(crate) location: String,
    /// `csv`, `parquet`, `ndjson` or `xlsx`; by default from the files' extension.
    pub(crate) format: Option<String>,
    pub(crate) header: Option<bool>,
    pub(crate) delimiter: Option<String>,
    pub(crate) quote: Option<String>,
    pub(crate) escape: Option<String>,
    /// Strings read as NULL in CSV, e.g. `["", "NA"]`.
    pub(crate) null_values: Option<Vec<String>>,
    /// `gzip`, `zstd`, `bzip2`, `xz` or `none`; by default from the files' extension.
    pub(crate) compression: Option<String>,
    /// Hive-style partition folders (`year=2024/month=01/`), outermost first.
    #[serde(default)]
    pub(crate) partition_columns: Vec<String>,
    /// Column name = type, in file order.
    pub(crate) schema: Option<toml::Table>,
    /// Rows read per file to infer the schema (overrides `[engine] infer_rows`).
    pub(crate) infer_rows: Option<usize>,
    /// S3 settings for this table's bucket, over `[storage.s3]`.
    pub(crate) s3: Option<S3Settings>,
    /// The sheet an Excel table reads; by default its first.
    pub(crate) sheet: Option<String>,
    /// Azure settings for this table's container, over `[storage.azure]`.
    pub(crate) azure: Option<AzureSettings>,
    /// GCS settings for this table's bucket, over `[storage.gcs]`.
    pub(crate) gcs: Option<GcsSettings>,
    /// HTTPS settings for this table's server, over `[storage.http]`.
    pub(crate) http: Option<HttpSettings>,
}

impl TableSection {
    /// The table's own store settings.
    pub(crate) fn storage(&self) -> TableStorage {
        TableStorage {
            s3: self.s3.clone(),
            azure: self.azure.clone(),
            gcs: self.gcs.clone(),
            http: self.http.clone(),
        }
    }
}

impl ConfigFile {
    /// Load the config: the explicit path if one was given (it must exist), else
    /// `./spillway.toml` if present, else defaults.
    pub(crate) fn load(explicit: Option<&Path>) -> Result<ConfigFile> {
        match explicit {
            Some(path) => Self::read(&crate::storage::normalize_path(path)),
            None => {
                let default = Path::new(DEFAULT_CONFIG_FILE);
                if default.is_file() {
                    Self::read(default)
                } else {
                    Ok(ConfigFile::default())
                }
            }
        }
    }

    fn read(path: &Path) -> Result<ConfigFile> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        let mut config = Self::parse(&text).map_err(|e| e.context(path.display()))?;
        config.normalize_paths();
        Ok(config)
    }

    /// Resolve `.` and `..` in the paths the file names, as in every path Spillway is given
    /// (`storage::normalize_path`); table locations are resolved when they are parsed.
    fn normalize_paths(&mut self) {
        let paths = [
            &mut self.engine.spill_dir,
            &mut self.reports.folder,
            &mut self.reports.history,
            &mut self.reports.state_dir,
            &mut self.server.tls_cert,
            &mut self.server.tls_key,
            &mut self.cluster.tls_cert,
            &mut self.cluster.tls_key,
            &mut self.cluster.ca,
            &mut self.privacy.key_file,
            &mut self.privacy.audit_log,
            &mut self.privacy.encryption_key_file,
            &mut self.storage.gcs.service_account,
            &mut self.storage.http.ca_certificate,
        ];
        for path in paths.into_iter().flatten() {
            *path = crate::storage::normalize_path(path);
        }
    }

    /// Parse config text; errors name the key and its line.
    pub(crate) fn parse(text: &str) -> Result<ConfigFile> {
        toml::from_str(text).map_err(|e| Error::Config(describe_toml_error(&e)))
    }
}

fn describe_toml_error(error: &toml::de::Error) -> String {
    let message = crate::error::one_line(error.message());
    match error.span() {
        Some(span) => format!("{message} (at byte {})", span.start),
        None => message,
    }
}

/// A memory limit as written by the user.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum MemoryLimit {
    Bytes(u64),
    /// A share of the machine's (or the cgroup's) memory, in (0, 1].
    Fraction(f64),
}

impl MemoryLimit {
    /// Parse `4GiB`, `512MiB`, `1000000` or `60%`.
    pub(crate) fn parse(text: &str) -> std::result::Result<MemoryLimit, String> {
        let trimmed = text.trim();
        if let Some(percent) = trimmed.strip_suffix('%') {
            let value: f64 = percent
                .trim()
                .parse()
                .map_err(|_| format!("`{text}` is not a percentage such as `60%`"))?;
            if !(value > 0.0 && value <= 100.0) {
                return Err(format!(
                    "`{text}`: a percentage must be above 0% and at most 100%"
                ));
            }
            return Ok(MemoryLimit::Fraction(value / 100.0));
        }
        parse_size(trimmed).map(MemoryLimit::Bytes)
    }

    /// The limit in bytes on a machine with `total_memory` bytes available.
    pub(crate) fn resolve(self, total_memory: u64) -> u64 {
        match self {
            MemoryLimit::Bytes(bytes) => bytes,
            MemoryLimit::Fraction(share) => (total_memory as f64 * share) as u64,
        }
    }
}

/// A column type in an explicit table schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColumnType {
    String,
    Bool,
    Int32,
    Int64,
    Float64,
    Decimal { precision: u8, scale: i8 },
    Date,
    Timestamp,
}

/// The type names accepted in a schema, for error messages.
pub(crate) const COLUMN_TYPE_NAMES: &str =
    "string, bool, int32, int64, float64, decimal(p,s), date, timestamp";

impl ColumnType {
    /// Parse a type name (case-insensitive, common SQL aliases accepted).
    pub(crate) fn parse(text: &str) -> std::result::Result<ColumnType, String> {
        let lower = text.trim().to_ascii_lowercase();
        let simple = match lower.as_str() {
            "string" | "utf8" | "text" | "varchar" => Some(ColumnType::String),
            "bool" | "boolean" => Some(ColumnType::Bool),
            "int32" | "int" | "integer" => Some(ColumnType::Int32),
            "int64" | "bigint" | "long" => Some(ColumnType::Int64),
            "float64" | "double" | "float" => Some(ColumnType::Float64),
            "date" | "date32" => Some(ColumnType::Date),
            "timestamp" => Some(ColumnType::Timestamp),
            _ => None,
        };
        if let Some(column_type) = simple {
            return Ok(column_type);
        }
        parse_decimal(&lower)
            .ok_or_else(|| format!("unknown type `{text}` (expected one of {COLUMN_TYPE_NAMES})"))
    }
}

fn parse_decimal(lower: &str) -> Option<ColumnType> {
    let inner = lower
        .strip_prefix("decimal(")
        .or_else(|| lower.strip_prefix("numeric("))?
        .strip_suffix(')')?;
    let (precision, scale) = inner.split_once(',')?;
    let precision: u8 = precision.trim().parse().ok()?;
    let scale: i8 = scale.trim().parse().ok()?;
    let valid = (1..=38).contains(&precision) && scale >= 0 && (scale as u8) <= precision;
    valid.then_some(ColumnType::Decimal { precision, scale })
}

impl TableSection {
    /// The explicit schema as (column, type) pairs in file order, validated.
    pub(crate) fn columns(&self, table: &str) -> Result<Option<Vec<(String, ColumnType)>>> {
        let Some(schema) = &self.schema else {
            return Ok(None);
        };
        let mut columns = Vec::with_capacity(schema.len());
        for (name, value) in schema {
            let type_name = value.as_str().ok_or_else(|| {
                Error::Config(format!(
                    "tables.{table}.schema.{name}: expected a type name string such as \"int64\""
                ))
            })?;
            let column_type = ColumnType::parse(type_name)
                .map_err(|e| Error::Config(format!("tables.{table}.schema.{name}: {e}")))?;
            columns.push((name.clone(), column_type));
        }
        if columns.is_empty() {
            return Err(Error::Config(format!("tables.{table}.schema is empty")));
        }
        Ok(Some(columns))
    }
}

/// Read one byte from a one-character config or flag value (`delimiter = "|"`, `"\t"`).
pub(crate) fn single_byte(key: &str, value: &str) -> Result<u8> {
    let unescaped = match value {
        "\\t" | "tab" => "\t",
        other => other,
    };
    match unescaped.as_bytes() {
        [byte] => Ok(*byte),
        _ => Err(Error::Config(format!(
            "{key}: expected one ASCII character, got `{value}`"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_limit_accepts_a_share_of_the_machine() {
        assert_eq!(MemoryLimit::parse("50%"), Ok(MemoryLimit::Fraction(0.5)));
        assert_eq!(MemoryLimit::parse("50%").unwrap().resolve(1000), 500);
        assert!(MemoryLimit::parse("150%").is_err());
        assert_eq!(MemoryLimit::parse("1GiB"), Ok(MemoryLimit::Bytes(1 << 30)));
    }

    #[test]
    fn column_types_parse_with_aliases_and_decimal_bounds() {
        assert_eq!(ColumnType::parse("STRING"), Ok(ColumnType::String));
        assert_eq!(ColumnType::parse("bigint"), Ok(ColumnType::Int64));
        assert_eq!(
            ColumnType::parse("decimal(12, 2)"),
            Ok(ColumnType::Decimal {
                precision: 12,
                scale: 2
            })
        );
        assert!(ColumnType::parse("decimal(2,5)").is_err());
        assert!(ColumnType::parse("blob").is_err());
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key() {
        let error = ConfigFile::parse("[engine]\nmemroy_limit = \"1GiB\"\n").unwrap_err();
        let text = error.to_string();
        assert!(text.contains("memroy_limit"), "{text}");
        assert_eq!(error.exit_code(), crate::error::exit_code::CONFIG);
    }

    #[test]
    fn schemas_keep_file_order() {
        let config = ConfigFile::parse(
            "[tables.t]\nlocation = \"x.csv\"\nschema = { zeta = \"int64\", alpha = \"string\" }\n",
        )
        .unwrap();
        let columns = config.tables["t"].columns("t").unwrap().unwrap();
        let names: Vec<_> = columns.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["zeta", "alpha"]);
    }
}

#[cfg(test)]
mod secret_tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug_output() {
        let config = ConfigFile::parse(
            "[storage.s3]\nsecret_access_key = \"hunter2\"\nsession_token = \"tok3n\"\n",
        )
        .unwrap();
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("tok3n"),
            "{shown}"
        );
        assert_eq!(
            config.storage.s3.secret_access_key.unwrap().expose(),
            "hunter2"
        );
    }

    #[test]
    fn table_settings_override_global_ones_field_by_field() {
        let global = S3Settings {
            endpoint: Some("http://global".into()),
            region: Some("eu-west-1".into()),
            ..S3Settings::default()
        };
        let table = S3Settings {
            region: Some("us-east-2".into()),
            ..S3Settings::default()
        };
        let merged = table.over(&global);
        assert_eq!(merged.endpoint.as_deref(), Some("http://global"));
        assert_eq!(merged.region.as_deref(), Some("us-east-2"));
    }
}
