//! THE step from what the user typed to what the modules need: flags (clap reads their
//! `SPILLWAY_*` variables) over `spillway.toml` over defaults, resolved once, with errors that
//! name the flag or config key at fault. Like ripgrep's low → high arguments: the clap structs
//! are the low level, the option structs returned here the high level. Must not do the work.

use super::*;
use crate::catalog::{TableFormat, TableSpec, DEFAULT_INFER_ROWS};
use crate::config::ServerSection;
use crate::config::{ConfigFile, MemoryLimit};
use crate::engine::{parse_spill_compression, EngineOptions};
use crate::error::{Error, Result};
use crate::output::{Destination, OutputFormat, OutputSpec};
use crate::serve::{
    ServeOptions, Verifier, DEFAULT_CACHE_SIZE, DEFAULT_LISTEN, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_QUERY_MEMORY_SHARE, DEFAULT_STATEMENT_TIMEOUT,
};
use crate::units::parse_size;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The engine options: flags (and their `SPILLWAY_*` variables, which clap reads) over the
/// config file's `[engine]`, over defaults.
pub(crate) fn engine_options(args: &EngineArgs, config: &ConfigFile) -> Result<EngineOptions> {
    let file = &config.engine;
    let mut options = EngineOptions::default();
    let memory_limit = pick(
        &args.memory_limit,
        &file.memory_limit,
        "--memory-limit",
        "engine.memory_limit",
    );
    if let Some((text, origin)) = memory_limit {
        let limit = MemoryLimit::parse(text).map_err(|e| origin.error(e))?;
        options.memory_limit = limit.resolve(crate::process::memory::available_memory());
    }
    if let Some((text, origin)) = pick(
        &args.max_spill,
        &file.max_spill,
        "--max-spill",
        "engine.max_spill",
    ) {
        options.max_spill = Some(parse_size(text).map_err(|e| origin.error(e))?);
    }
    if let Some((text, origin)) = pick(
        &args.spill_compression,
        &file.spill_compression,
        "--spill-compression",
        "engine.spill_compression",
    ) {
        options.spill_compression = parse_spill_compression(text).map_err(|e| origin.error(e))?;
    }
    options.spill_dir = args.spill_dir.clone().or_else(|| file.spill_dir.clone());
    options.storage = config.storage.clone();
    options.cluster = args
        .cluster
        .clone()
        .or_else(|| config.cluster.scheduler.clone());
    if let Some(address) = &options.cluster {
        crate::cluster::scheduler_url(address)?;
    }
    options.cluster_tls = crate::cluster::tls::ClusterTls::load(&crate::cluster::tls::TlsFiles {
        cert: config.cluster.tls_cert.clone(),
        key: config.cluster.tls_key.clone(),
        ca: config.cluster.ca.clone(),
    })?;
    let mode = pick(
        &args.cluster_mode,
        &config.cluster.mode,
        "--cluster-mode",
        "cluster.mode",
    );
    match mode.map(|(text, origin)| (text.trim().to_ascii_lowercase(), origin)) {
        None => {}
        Some((mode, _)) if mode == "cluster" => {}
        Some((mode, _)) if mode == "local" => options.cluster = None,
        Some((mode, _)) if mode == "auto" => {
            let threshold = match &config.cluster.auto_threshold {
                Some(text) => parse_size(text)
                    .map_err(|e| Error::Config(format!("cluster.auto_threshold: {e}")))?,
                None => crate::cluster::DEFAULT_AUTO_THRESHOLD,
            };
            options.cluster_threshold = Some(threshold);
        }
        Some((mode, origin)) => {
            return Err(origin.error(format!(
                "unknown mode `{mode}` (expected cluster, local or auto)"
            )))
        }
    }
    options.privacy = crate::privacy::Policy::from_config(&config.privacy)?;
    options.role = resolve_role(args, options.privacy.as_deref())?;
    if let Some((workers, origin)) =
        pick(&args.workers, &file.workers, "--workers", "engine.workers")
    {
        if *workers == 0 {
            return Err(origin.error("must be at least 1".into()));
        }
        options.workers = *workers;
    }
    options.batch_size = crate::engine::memory::batch_size_for(
        crate::engine::memory::pool_size(options.memory_limit),
        options.workers,
    );
    if let Some((size, origin)) = pick(
        &args.batch_size,
        &file.batch_size,
        "--batch-size",
        "engine.batch_size",
    ) {
        if *size == 0 {
            return Err(origin.error("must be at least 1".into()));
        }
        options.batch_size = *size;
    }
    Ok(options)
}

/// The role statements of this process run under: `--role` (for the config file's owner
/// only: anyone else could otherwise lift their own restrictions), else `default_role`.
fn resolve_role(
    args: &EngineArgs,
    policy: Option<&crate::privacy::Policy>,
) -> Result<Option<Arc<crate::privacy::Role>>> {
    let Some(policy) = policy else {
        return match &args.role {
            Some(role) => Err(Error::Usage(format!(
                "--role {role}: spillway.toml has no [privacy.roles]"
            ))),
            None => Ok(None),
        };
    };
    if let Some(role) = &args.role {
        let config = args
            .config
            .clone()
            .unwrap_or_else(|| std::path::PathBuf::from(crate::config::DEFAULT_CONFIG_FILE));
        if !crate::privacy::owns(&config) {
            return Err(Error::Refused(format!(
                "--role {role}: only the owner of {} may pick a role; statements run under [privacy] default_role",
                config.display()
            )));
        }
    }
    policy.role(args.role.as_deref())
}

/// Where a setting came from, so its error names the flag or the config key.
enum Origin {
    Flag(&'static str),
    ConfigKey(&'static str),
}

impl Origin {
    fn error(&self, message: String) -> Error {
        match self {
            Origin::Flag(flag) => Error::Usage(format!("{flag}: {message}")),
            Origin::ConfigKey(key) => Error::Config(format!("{key}: {message}")),
        }
    }
}

fn pick<'a, T>(
    flag: &'a Option<T>,
    file: &'a Option<T>,
    flag_name: &'static str,
    key: &'static str,
) -> Option<(&'a T, Origin)> {
    match (flag, file) {
        (Some(value), _) => Some((value, Origin::Flag(flag_name))),
        (None, Some(value)) => Some((value, Origin::ConfigKey(key))),
        (None, None) => None,
    }
}

/// The table specs: the config file's tables, then `--table` flags (a flag naming a configured
/// table replaces its location and keeps its other settings).
pub(crate) fn table_specs(args: &TableArgs, config: &ConfigFile) -> Result<Vec<TableSpec>> {
    table_specs_from(&args.tables, &args.table_formats, args.infer_rows, config)
}

/// The table specs from `--table` and `--table-format` flags over the config file's tables.
pub(crate) fn table_specs_from(
    tables: &[String],
    table_formats: &[String],
    infer_rows: Option<usize>,
    config: &ConfigFile,
) -> Result<Vec<TableSpec>> {
    let infer_rows = infer_rows
        .or(config.engine.infer_rows)
        .unwrap_or(DEFAULT_INFER_ROWS);
    if infer_rows == 0 {
        return Err(Error::Usage("--infer-rows: must be at least 1".into()));
    }
    let mut specs = Vec::new();
    for (name, section) in &config.tables {
        specs.push(TableSpec::from_section(name, section, infer_rows)?);
    }
    for table in tables {
        let (name, location) = split_assignment("--table", table, "NAME=LOCATION")?;
        match specs.iter_mut().find(|spec| spec.name == name) {
            Some(spec) => spec.location = location.to_string(),
            None => {
                let mut spec = TableSpec::at(name, location);
                spec.infer_rows = infer_rows;
                specs.push(spec);
            }
        }
    }
    for assignment in table_formats {
        let (name, format) = split_assignment("--table-format", assignment, "NAME=FORMAT")?;
        let format = TableFormat::parse(format)
            .map_err(|e| Error::Usage(format!("--table-format {name}: {e}")))?;
        let spec = specs
            .iter_mut()
            .find(|spec| spec.name == name)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "--table-format {name}: no table `{name}` (add --table {name}=LOCATION)"
                ))
            })?;
        spec.format = Some(format);
    }
    Ok(specs)
}

fn split_assignment<'a>(flag: &str, text: &'a str, shape: &str) -> Result<(&'a str, &'a str)> {
    match text.split_once('=') {
        Some((name, value)) if is_identifier(name) && !value.is_empty() => Ok((name, value)),
        _ => Err(Error::Usage(format!(
            "{flag} `{text}`: expected {shape}, with NAME a plain SQL name (letters, digits, _)"
        ))),
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The SQL to run: the argument, the file, or stdin.
pub(crate) fn sql_text(args: &SqlArgs) -> Result<String> {
    use std::io::{IsTerminal, Read};
    if let Some(sql) = &args.sql {
        return Ok(sql.clone());
    }
    if let Some(path) = &args.file {
        return std::fs::read_to_string(path)
            .map_err(|e| Error::Usage(format!("-f {}: {e}", path.display())));
    }
    if std::io::stdin().is_terminal() {
        return Err(Error::Usage(
            "no SQL: give it as an argument, with -f FILE.sql, or on stdin".into(),
        ));
    }
    let mut sql = String::new();
    std::io::stdin()
        .read_to_string(&mut sql)
        .map_err(|e| Error::Usage(format!("reading SQL from stdin: {e}")))?;
    Ok(sql)
}

/// The output: `-o` (format from its extension unless --format says) or stdout.
pub(crate) fn output_spec(
    args: &QueryArgs,
    policy: Option<&crate::privacy::Policy>,
) -> Result<OutputSpec> {
    let destination = match &args.output {
        Some(path) if crate::storage::is_object_url(&path.to_string_lossy()) => {
            Destination::Object(path.to_string_lossy().into_owned())
        }
        Some(path) => Destination::File(crate::storage::normalize_path(path)),
        None => Destination::Stdout,
    };
    let format = match (&args.format, &args.output) {
        (Some(format), _) => *format,
        (None, Some(path)) => OutputFormat::from_path(path).ok_or_else(|| {
            Error::Usage(format!(
                "-o {}: cannot tell the format from the extension; add --format csv|tsv|json|ndjson|parquet|arrow|xlsx",
                path.display()
            ))
        })?,
        (None, None) => OutputFormat::default_for_stdout(),
    };
    let encryption = match args.encrypt {
        false => None,
        true => Some(crate::privacy::output_key("--encrypt", format, policy)?),
    };
    Ok(OutputSpec {
        format,
        destination,
        max_table_rows: args.max_rows,
        manifest: false,
        encryption,
        about: None,
    })
}

/// The server settings: `serve`'s flags over `[server]` over defaults; `pool` is the engine's
/// memory pool in bytes (what `--query-memory 25%` is a share of).
pub(crate) fn serve_options(
    args: &ServeArgs,
    section: &ServerSection,
    pool: u64,
    policy: Option<&crate::privacy::Policy>,
    default_role: Option<Arc<crate::privacy::Role>>,
) -> Result<ServeOptions> {
    let listen_text = pick(&args.listen, &section.listen, "--listen", "server.listen");
    let listen = match &listen_text {
        Some((text, origin)) => text.parse::<SocketAddr>().map_err(|_| {
            origin.error(format!(
                "`{text}` is not HOST:PORT such as 127.0.0.1:5432 (an IP address, not a name)"
            ))
        })?,
        None => DEFAULT_LISTEN
            .parse()
            .map_err(|_| Error::Internal("bad default listen address".into()))?,
    };
    let max_connections = args
        .max_connections
        .or(section.max_connections)
        .unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        return Err(Error::Usage(
            "--max-connections / server.max_connections: must be at least 1".into(),
        ));
    }
    let statement_timeout = match pick(
        &args.statement_timeout,
        &section.statement_timeout,
        "--statement-timeout",
        "server.statement_timeout",
    ) {
        Some((text, _)) if text.trim() == "0" => None,
        Some((text, origin)) => {
            Some(crate::units::parse_duration(text).map_err(|e| origin.error(e))?)
        }
        None => Some(DEFAULT_STATEMENT_TIMEOUT),
    };
    let query_memory = match pick(
        &args.query_memory,
        &section.query_memory,
        "--query-memory",
        "server.query_memory",
    ) {
        Some((text, origin)) => {
            let limit = crate::config::MemoryLimit::parse(text).map_err(|e| origin.error(e))?;
            limit.resolve(pool)
        }
        None => (pool as f64 * DEFAULT_QUERY_MEMORY_SHARE) as u64,
    };
    let cache_size = match pick(
        &args.cache_size,
        &section.cache_size,
        "--cache-size",
        "server.cache_size",
    ) {
        Some((text, _)) if text.trim() == "0" => 0,
        Some((text, origin)) => crate::units::parse_size(text).map_err(|e| origin.error(e))?,
        // Cached results are reserved in the pool: at most an eighth of it by default.
        None => DEFAULT_CACHE_SIZE.min(pool / 8),
    };
    let cert = args.tls_cert.clone().or_else(|| section.tls_cert.clone());
    let key = args.tls_key.clone().or_else(|| section.tls_key.clone());
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => {
            return Err(Error::Config(
                "server.tls_cert and server.tls_key go together: give both or neither".into(),
            ))
        }
    };
    let require_tls = section.require_tls.unwrap_or(tls.is_some());
    if require_tls && tls.is_none() {
        return Err(Error::Config(
            "server.require_tls = true needs server.tls_cert and server.tls_key".into(),
        ));
    }
    let mut users = HashMap::new();
    let mut roles = HashMap::new();
    for (name, user) in &section.users {
        let key = format!("server.users.{name}");
        let verifier = match (&user.scram, &user.password_env) {
            (Some(text), None) => Verifier::parse(text.expose())
                .map_err(|e| Error::Config(format!("{key}.scram: {e}")))?,
            (None, Some(variable)) => {
                let password = std::env::var(variable).map_err(|_| {
                    Error::Config(format!(
                        "{key}.password_env: the environment variable `{variable}` is not set"
                    ))
                })?;
                if password.is_empty() {
                    return Err(Error::Config(format!(
                        "{key}.password_env: the environment variable `{variable}` is empty"
                    )));
                }
                Verifier::from_password(&password)
                    .map_err(|e| Error::Internal(format!("{key}: {e}")))?
            }
            _ => {
                return Err(Error::Config(format!(
                    "{key}: give exactly one of `scram` (a verifier from `spillway password`) \
                         or `password_env`"
                )))
            }
        };
        users.insert(name.clone(), verifier);
        if let Some(role) = &user.role {
            let policy = policy.ok_or_else(|| {
                Error::Config(format!(
                    "{key}.role = \"{role}\": spillway.toml has no [privacy.roles]"
                ))
            })?;
            let resolved = policy
                .role(Some(role))
                .map_err(|e| Error::Config(format!("{key}.role: {e}")))?;
            if let Some(resolved) = resolved {
                roles.insert(name.clone(), resolved);
            }
        }
    }
    if users.is_empty() && !listen.ip().is_loopback() {
        return Err(Error::Config(format!(
            "refusing to listen on {listen} without authentication: it is not a loopback \
                 address; add users under [server.users.NAME] (see `spillway password`) or \
                 listen on 127.0.0.1"
        )));
    }
    Ok(ServeOptions {
        listen,
        max_connections,
        statement_timeout,
        query_memory: usize::try_from(query_memory.max(1 << 20)).unwrap_or(usize::MAX),
        cache_size: usize::try_from(cache_size).unwrap_or(usize::MAX),
        tls,
        require_tls,
        users,
        roles,
        default_role,
        // The caller sets these from `[reports]` (see `state_settings`).
        states: None,
    })
}

/// Where reports live: `--queries` over `[reports] folder` over `queries`.
pub(crate) fn reports_folder(flag: Option<&Path>, config: &ConfigFile) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| config.reports.folder.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_REPORTS_FOLDER))
}

/// Where the run history lives: `--history` over `[reports] history` over the default.
pub(crate) fn history_path(flag: Option<&Path>, config: &ConfigFile) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| config.reports.history.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_HISTORY))
}

/// Where per-file aggregate states live, and how large they may grow (see `incremental`).
pub(crate) fn state_settings(config: &ConfigFile) -> Result<(PathBuf, u64)> {
    let dir = config
        .reports
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    let max_state = match &config.reports.max_state {
        Some(text) => crate::units::parse_size(text)
            .map_err(|e| Error::Config(format!("[reports] max_state = \"{text}\": {e}")))?,
        None => crate::incremental::DEFAULT_MAX_STATE,
    };
    Ok((dir, max_state))
}

const DEFAULT_REPORTS_FOLDER: &str = "queries";
const DEFAULT_STATE_DIR: &str = ".spillway/state";
const DEFAULT_HISTORY: &str = ".spillway/history.sqlite";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_flags_need_a_plain_name() {
        assert!(split_assignment("--table", "claims=data/*.csv", "NAME=LOCATION").is_ok());
        assert!(split_assignment("--table", "data/*.csv", "NAME=LOCATION").is_err());
        assert!(split_assignment("--table", "bad name=x.csv", "NAME=LOCATION").is_err());
    }

    #[test]
    fn flags_override_the_config_file_and_errors_name_their_origin() {
        let config = ConfigFile::parse("[engine]\nmemory_limit = \"lots\"\nworkers = 3\n").unwrap();
        let mut args = EngineArgs {
            config: None,
            memory_limit: None,
            spill_dir: None,
            max_spill: None,
            workers: None,
            batch_size: None,
            spill_compression: None,
            quiet: false,
            role: None,
            cluster: None,
            cluster_mode: None,
        };
        let error = engine_options(&args, &config).unwrap_err();
        assert!(error.to_string().contains("engine.memory_limit"), "{error}");
        args.memory_limit = Some("64MiB".into());
        args.workers = Some(1);
        let options = engine_options(&args, &config).unwrap();
        assert_eq!(options.memory_limit, 64 << 20);
        assert_eq!(options.workers, 1);
    }
}
