//! Errors at Spillway's boundary with the user.
//!
//! Every failure a user can cause or meet ends up as one [`Error`] variant whose message names the
//! file, column, table, flag or config key at fault, and whose [`Error::exit_code`] tells scripts
//! which class of failure it was. DataFusion's errors are classified here, in one place, so that
//! every entry point (query, report, server) maps them the same way. This module must not hide the
//! cause: the original message is always kept in the text.

use datafusion::error::DataFusionError;
use std::fmt;

/// Exit codes: part of Spillway's interface, documented in `--help` and the README.
pub(crate) mod exit_code {
    /// A bug or an unexpected failure inside Spillway.
    pub(crate) const INTERNAL: u8 = 1;
    /// Bad command-line usage: unknown flag, bad flag value (clap uses 2 as well).
    pub(crate) const USAGE: u8 = 2;
    /// The config file (or a `SPILLWAY_*` variable) has an unknown key or a bad value.
    pub(crate) const CONFIG: u8 = 3;
    /// The SQL is wrong: syntax error, unknown table, unknown column, type error.
    pub(crate) const QUERY: u8 = 4;
    /// The input data is wrong: no file matches, unreadable file, malformed record, schemas disagree.
    pub(crate) const INPUT: u8 = 5;
    /// The output cannot be written.
    pub(crate) const OUTPUT: u8 = 6;
    /// The memory limit or the spill cap was too small for the query.
    pub(crate) const RESOURCES: u8 = 7;
    /// An object store or the network failed.
    pub(crate) const STORAGE: u8 = 8;
    /// The privacy policy refused the statement (a role's rule, or an unwritable audit log).
    pub(crate) const REFUSED: u8 = 9;
    /// Cancelled by Ctrl-C or SIGTERM.
    pub(crate) const INTERRUPTED: u8 = 130;
}

/// The help text that lists the exit codes (shown in `--help`).
pub(crate) const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    success
  1    internal error
  2    usage: bad flag or flag value
  3    config: bad key or value in spillway.toml or SPILLWAY_* variables
  4    query: SQL syntax error, unknown table or column
  5    input data: no file matches, unreadable file, malformed record, schemas disagree
  6    output cannot be written
  7    resources exhausted: memory limit or spill cap too small for the query
  8    storage or network failure
  9    refused by the privacy policy ([privacy] in spillway.toml) or its audit log
  130  interrupted (Ctrl-C or SIGTERM)";

/// A failure, classified by who can fix it.
#[derive(Debug)]
pub(crate) enum Error {
    Usage(String),
    Config(String),
    Query(String),
    Input(String),
    Output(String),
    ResourcesExhausted(String),
    Storage(String),
    Refused(String),
    Interrupted,
    Internal(String),
}

/// Spillway's result type.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The process exit code for this error.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => exit_code::USAGE,
            Error::Config(_) => exit_code::CONFIG,
            Error::Query(_) => exit_code::QUERY,
            Error::Input(_) => exit_code::INPUT,
            Error::Output(_) => exit_code::OUTPUT,
            Error::ResourcesExhausted(_) => exit_code::RESOURCES,
            Error::Storage(_) => exit_code::STORAGE,
            Error::Refused(_) => exit_code::REFUSED,
            Error::Interrupted => exit_code::INTERRUPTED,
            Error::Internal(_) => exit_code::INTERNAL,
        }
    }

    /// Whether this error means the data (not the SQL or the machine) is at fault, so that it is
    /// worth finding which file holds the bad record.
    pub(crate) fn is_input(&self) -> bool {
        matches!(self, Error::Input(_))
    }

    /// Prefix the message with where it happened (a table, a file, a statement).
    pub(crate) fn context(self, context: impl fmt::Display) -> Error {
        let wrap = |message: String| format!("{context}: {message}");
        match self {
            Error::Usage(m) => Error::Usage(wrap(m)),
            Error::Config(m) => Error::Config(wrap(m)),
            Error::Query(m) => Error::Query(wrap(m)),
            Error::Input(m) => Error::Input(wrap(m)),
            Error::Output(m) => Error::Output(wrap(m)),
            Error::ResourcesExhausted(m) => Error::ResourcesExhausted(wrap(m)),
            Error::Storage(m) => Error::Storage(wrap(m)),
            Error::Refused(m) => Error::Refused(wrap(m)),
            Error::Interrupted => Error::Interrupted,
            Error::Internal(m) => Error::Internal(wrap(m)),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) => write!(f, "{m}"),
            Error::Config(m) => write!(f, "config: {m}"),
            Error::Query(m) => write!(f, "query: {m}"),
            Error::Input(m) => write!(f, "input data: {m}"),
            Error::Output(m) => write!(f, "output: {m}"),
            Error::ResourcesExhausted(m) => write!(f, "resources exhausted: {m}"),
            Error::Storage(m) => write!(f, "storage: {m}"),
            Error::Refused(m) => write!(f, "refused: {m}"),
            Error::Interrupted => write!(f, "interrupted"),
            Error::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

impl std::error::Error for Error {}

/// Advice appended to a resources-exhausted error: what the user can change.
const RESOURCES_ADVICE: &str = "raise --memory-limit, lower --workers or --batch-size, \
     or give --spill-dir / --max-spill more room";

impl From<DataFusionError> for Error {
    fn from(error: DataFusionError) -> Self {
        classify(&error)
    }
}

/// Map a DataFusion error (however deeply wrapped) to the class a user acts on.
fn classify(error: &DataFusionError) -> Error {
    let message = one_line(&error.message());
    let root = error.find_root();
    // A job that failed on a cluster carries the executor's error as text.
    if let DataFusionError::Execution(text) = root {
        if let Some(failure) = cluster_job_failure(text) {
            return failure;
        }
    }
    match root {
        DataFusionError::ResourcesExhausted(_) => {
            Error::ResourcesExhausted(format!("{message}; {RESOURCES_ADVICE}"))
        }
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_)
        | DataFusionError::Diagnostic(..) => Error::Query(with_end_position(message)),
        DataFusionError::Configuration(_) => Error::Usage(message),
        DataFusionError::ArrowError(..)
        | DataFusionError::ParquetError(_)
        | DataFusionError::IoError(_) => {
            if is_disk_full(&message) {
                Error::ResourcesExhausted(format!("{message}; {RESOURCES_ADVICE}"))
            } else {
                Error::Input(message)
            }
        }
        DataFusionError::ObjectStore(store_error) => classify_object_store(store_error, message),
        DataFusionError::External(inner) => match inner.downcast_ref::<Error>() {
            Some(ours) => ours.clone_shallow(),
            None => Error::Internal(message),
        },
        // The gRPC connection to the scheduler broke: it went down, or a plain client met a
        // TLS scheduler (or the reverse), which breaks in HTTP/2.
        DataFusionError::Execution(text)
            if text.starts_with("Status {") && text.contains("tonic::transport::Error") =>
        {
            Error::Storage(format!(
                "cluster: the connection to the scheduler failed ({}): is it down, or does one side use TLS ([cluster] tls_cert, tls_key, ca) and the other not?",
                first_sentence_of(text)
            ))
        }
        DataFusionError::Execution(text) if text.contains("No space left") => {
            Error::ResourcesExhausted(format!("{message}; {RESOURCES_ADVICE}"))
        }
        DataFusionError::Execution(text) if looks_like_bad_data(text) => Error::Input(message),
        _ => Error::Internal(message),
    }
}

fn classify_object_store(error: &object_store::Error, message: String) -> Error {
    match error {
        object_store::Error::NotFound { .. } | object_store::Error::InvalidPath { .. } => {
            Error::Input(message)
        }
        object_store::Error::Generic { store, .. } if *store == "LocalFileSystem" => {
            Error::Input(message)
        }
        _ => Error::Storage(message),
    }
}

/// The SQL parser gives a line and column for every error but one at the end of the text.
fn with_end_position(message: String) -> String {
    let message = match message.strip_prefix("ParserError(\"") {
        Some(inner) => inner.trim_end_matches("\")").replace("\\\"", "\""),
        None => message,
    };
    if message.contains("found: EOF") && !message.contains("Line:") {
        format!("{message} (at the end of the SQL)")
    } else {
        message
    }
}

fn is_disk_full(message: &str) -> bool {
    message.contains("No space left") || message.contains("max_temp_directory_size")
}

/// A Ballista job that failed on the cluster comes back as one `Execution` error, the
/// executor's error in Rust's debug form inside: "Job ID failed: Job failed due to stage N
/// failed: Task failed due to runtime execution error: DataFusionError(...)". Classified by the
/// error it carries, so a stage that ran out of memory is retried conservatively as locally,
/// and a job lost with its executors is a storage/network failure (exit 8).
fn cluster_job_failure(text: &str) -> Option<Error> {
    let rest = text.strip_prefix("Job ")?;
    let (job, why) = rest.split_once(" failed: ")?;
    let inner = |variant: &str| {
        let start = why.find(variant)? + variant.len();
        let end = why[start..]
            .find("\")")
            .map_or(why.len(), |end| start + end);
        Some(one_line(
            &why[start..end].replace("\\n", "\n").replace("\\\"", "\""),
        ))
    };
    if let Some(detail) = inner("ResourcesExhausted(\"") {
        return Some(Error::ResourcesExhausted(format!(
            "on the cluster (job {job}): {detail}; {RESOURCES_ADVICE} on the executors"
        )));
    }
    let detail = one_line(why);
    if ["SQL(", "Plan(", "SchemaError(", "NotImplemented("]
        .iter()
        .any(|variant| why.contains(variant))
    {
        return Some(Error::Query(format!(
            "on the cluster (job {job}): {detail}"
        )));
    }
    if ["ArrowError(", "ParquetError("]
        .iter()
        .any(|variant| why.contains(variant))
        || looks_like_bad_data(why)
    {
        return Some(Error::Input(format!(
            "on the cluster (job {job}): {detail}"
        )));
    }
    Some(Error::Storage(format!(
        "cluster: job {job} failed: {detail}"
    )))
}

/// The part of a gRPC status a person can read: its `message: "..."`, else the text.
fn first_sentence_of(text: &str) -> &str {
    text.split_once("message: \"")
        .and_then(|(_, rest)| rest.split('"').next())
        .unwrap_or(text)
}

fn looks_like_bad_data(text: &str) -> bool {
    ["parsing", "CSV", "Csv", "csv", "JSON", "Json", "record"]
        .iter()
        .any(|needle| text.contains(needle))
}

impl Error {
    /// A copy of this error (errors crossing DataFusion's boundary come back behind an `Arc`).
    fn clone_shallow(&self) -> Error {
        match self {
            Error::Usage(m) => Error::Usage(m.clone()),
            Error::Config(m) => Error::Config(m.clone()),
            Error::Query(m) => Error::Query(m.clone()),
            Error::Input(m) => Error::Input(m.clone()),
            Error::Output(m) => Error::Output(m.clone()),
            Error::ResourcesExhausted(m) => Error::ResourcesExhausted(m.clone()),
            Error::Storage(m) => Error::Storage(m.clone()),
            Error::Refused(m) => Error::Refused(m.clone()),
            Error::Interrupted => Error::Interrupted,
            Error::Internal(m) => Error::Internal(m.clone()),
        }
    }
}

/// Error messages are printed on one line: fold DataFusion's multi-line texts and drop the
/// noise it adds around the root cause.
pub(crate) fn one_line(text: &str) -> String {
    let folded = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    folded
        .replace("This feature is not implemented: ", "not supported: ")
        .replace("Error during planning: ", "")
        .replace("Schema error: ", "")
        .replace("SQL error: ", "")
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_cluster_job_that_ran_out_of_memory_is_resources_exhausted_with_the_executor_message() {
        let text = "Job 038J9SCXWC000 failed: Job failed due to stage 0 failed: Task failed due to runtime execution error: DataFusionError(Shared(External(DataFusionError(ResourcesExhausted(\"Additional allocation failed for TopK[1] with top memory consumers (across reservations) as:\\n  TopK[0]#0(can spill: false) consumed 5.1 MB, peak 5.1 MB.\\nError: Failed to allocate additional 1891.4 KB\")))))";
        let error = Error::from(DataFusionError::Execution(text.to_string()));
        assert_eq!(error.exit_code(), exit_code::RESOURCES);
        assert_eq!(
            error.to_string(),
            format!("resources exhausted: on the cluster (job 038J9SCXWC000): Additional allocation failed for TopK[1] with top memory consumers (across reservations) as: TopK[0]#0(can spill: false) consumed 5.1 MB, peak 5.1 MB. Error: Failed to allocate additional 1891.4 KB; {RESOURCES_ADVICE} on the executors")
        );
    }

    #[test]
    fn a_cluster_job_lost_with_its_executors_is_a_storage_failure() {
        let text = "Job 1 failed: Job failed due to stage 2 failed: executor lost";
        let error = Error::from(DataFusionError::Execution(text.to_string()));
        assert_eq!(error.exit_code(), exit_code::STORAGE);
        assert_eq!(
            error.to_string(),
            "storage: cluster: job 1 failed: Job failed due to stage 2 failed: executor lost"
        );
    }

    use super::*;

    #[test]
    fn resources_exhausted_is_its_own_class_with_advice() {
        let error: Error = DataFusionError::ResourcesExhausted("pool full".into()).into();
        assert_eq!(error.exit_code(), exit_code::RESOURCES);
        assert!(error.to_string().contains("--memory-limit"));
    }

    #[test]
    fn wrapped_errors_are_classified_by_their_root() {
        let inner = DataFusionError::Plan("table 'x' not found".into());
        let error: Error = DataFusionError::Context("planning".into(), Box::new(inner)).into();
        assert_eq!(error.exit_code(), exit_code::QUERY);
        assert!(error.to_string().contains("table 'x' not found"));
    }

    #[test]
    fn multi_line_messages_become_one_line() {
        assert_eq!(one_line("a\n  b\n\nc"), "a b c");
    }
}
