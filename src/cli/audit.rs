//! `spillway audit verify` and `spillway audit show`: read the privacy audit log.

use super::{AuditCommand, AuditShowArgs};
use crate::config::ConfigFile;
use crate::error::{Error, Result};
use crate::privacy::audit::{self, Verdict};
use std::path::PathBuf;

pub(crate) fn run(command: AuditCommand, config: &ConfigFile) -> Result<()> {
    match command {
        AuditCommand::Verify(args) => verify(log_path(args.log, config)?),
        AuditCommand::Show(args) => show(&args, config),
    }
}

fn log_path(flag: Option<PathBuf>, config: &ConfigFile) -> Result<PathBuf> {
    flag.or_else(|| config.privacy.audit_log.clone())
        .ok_or_else(|| {
            Error::Usage("no audit log: give --log FILE or set [privacy] audit_log".into())
        })
}

fn verify(path: PathBuf) -> Result<()> {
    match audit::verify(&path)? {
        Verdict::Intact { records, head } => {
            println!(
                "audit log {}: {records} records, chain intact; head {head}",
                path.display()
            );
            Ok(())
        }
        Verdict::Broken { line, reason } => Err(Error::Input(format!(
            "audit log {}: record {line} (line {line}) breaks the chain: {reason}",
            path.display()
        ))),
    }
}

fn show(args: &AuditShowArgs, config: &ConfigFile) -> Result<()> {
    let path = log_path(args.log.clone(), config)?;
    let since = match &args.since {
        Some(text) => Some(parse_since(text)?),
        None => None,
    };
    for record in audit::records(&path)? {
        let text = |key: &str| record.get(key).and_then(|v| v.as_str()).unwrap_or("");
        if args
            .user
            .as_deref()
            .is_some_and(|user| text("user") != user)
        {
            continue;
        }
        if let Some(since) = since {
            let at = chrono::DateTime::parse_from_rfc3339(text("time"));
            if at
                .map(|at| at.with_timezone(&chrono::Utc) < since)
                .unwrap_or(true)
            {
                continue;
            }
        }
        if args.json {
            println!("{record}");
            continue;
        }
        let sql: String = text("sql").split_whitespace().collect::<Vec<_>>().join(" ");
        println!(
            "{}  {}  role={}  {}  {}  rows={}  {}",
            text("time"),
            text("user"),
            record.get("role").and_then(|v| v.as_str()).unwrap_or("-"),
            text("entry"),
            text("outcome"),
            record.get("rows").and_then(|v| v.as_u64()).unwrap_or(0),
            sql
        );
    }
    Ok(())
}

fn parse_since(text: &str) -> Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&chrono::Utc));
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .map(|at| at.and_utc())
        .ok_or_else(|| {
            Error::Usage(format!(
                "--since {text}: expected a date (2026-12-01) or a time (2026-12-01T08:00:00Z)"
            ))
        })
}
