//! The audit trail: one JSON Lines record per statement and per report run, hash-chained.
//!
//! Each record carries `prev`, the SHA-256 of the record before it, and ends with `hash`, the
//! SHA-256 of its own text up to that field. Editing a record breaks its hash; deleting or
//! reordering records breaks the next record's `prev`; `spillway audit verify` names the first
//! record where either happens. Appends from several processes (a server, the scheduler, a
//! `query`) are serialised by an exclusive lock on the file and each is flushed to disk before
//! the statement counts as done: a statement whose record cannot be written fails. Cutting
//! records off the end leaves a valid chain; keep the head hash `verify` prints elsewhere to
//! catch that. Must not write a secret: records hold SQL text, parameter values, names and
//! fingerprints, never keys or passwords.

use crate::error::{Error, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The `prev` of the first record.
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One input file as the statement saw it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct InputFile {
    pub(crate) table: String,
    pub(crate) path: String,
    pub(crate) size: u64,
    pub(crate) modified: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) etag: Option<String>,
}

/// What one statement or report run did (everything but the chain fields).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Event {
    /// `query`, `report`, `schedule` or `serve`.
    pub(crate) entry: String,
    pub(crate) user: String,
    pub(crate) role: Option<String>,
    pub(crate) client: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) report: Option<String>,
    pub(crate) sql: String,
    pub(crate) parameters: Vec<(String, String)>,
    pub(crate) inputs: Vec<InputFile>,
    pub(crate) rows: u64,
    pub(crate) bytes: u64,
    pub(crate) output: Option<String>,
    pub(crate) output_sha256: Option<String>,
    pub(crate) suppressed_groups: Option<u64>,
    /// `ok`, or `error: ...`.
    pub(crate) outcome: String,
}

#[derive(Serialize)]
struct Record<'a> {
    time: String,
    #[serde(flatten)]
    event: &'a Event,
    prev: &'a str,
}

/// The audit log of a policy.
#[derive(Debug, Clone)]
pub(crate) struct AuditLog {
    path: PathBuf,
}

impl AuditLog {
    /// The log at `path`, checked writable now so that a statement fails before it runs, not
    /// after, when the log cannot take its record.
    pub(crate) fn open(path: &Path) -> Result<AuditLog> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| unwritable(path, &e))?;
        }
        open_for_append(path)?;
        Ok(AuditLog {
            path: path.to_path_buf(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Append one record, chained to the last one, and flush it to disk.
    pub(crate) fn append(&self, event: &Event) -> Result<()> {
        let mut file = open_for_append(&self.path)?;
        let _lock = Lock::exclusive(&file).map_err(|e| unwritable(&self.path, &e))?;
        let prev = last_hash(&mut file).map_err(|e| unwritable(&self.path, &e))?;
        let record = Record {
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            event,
            prev: &prev,
        };
        let body = serde_json::to_string(&record)
            .map_err(|e| Error::Internal(format!("audit record: {e}")))?;
        let line = seal(&body);
        file.seek(SeekFrom::End(0))
            .and_then(|_| file.write_all(line.as_bytes()))
            .and_then(|_| file.write_all(b"\n"))
            .and_then(|_| file.sync_data())
            .map_err(|e| unwritable(&self.path, &e))
    }
}

fn unwritable(path: &Path, error: &std::io::Error) -> Error {
    Error::Refused(format!(
        "audit log {}: cannot write it ({error}); statements do not run unlogged",
        path.display()
    ))
}

fn open_for_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .map_err(|e| unwritable(path, &e))
}

/// `body` (a JSON object) with its hash as the last field.
fn seal(body: &str) -> String {
    let hash = hex(&Sha256::digest(body.as_bytes()));
    let open = body.strip_suffix('}').unwrap_or(body);
    format!("{open},\"hash\":\"{hash}\"}}")
}

/// A sealed line split into its body and the hash it claims.
fn unseal(line: &str) -> Option<(String, &str)> {
    const TAIL: usize = ",\"hash\":\"\"}".len() + 64;
    if line.len() < TAIL || !line.ends_with("\"}") {
        return None;
    }
    let cut = line.len() - TAIL;
    if !line.is_char_boundary(cut) {
        return None;
    }
    let (open, tail) = line.split_at(cut);
    let hash = tail.strip_prefix(",\"hash\":\"")?.strip_suffix("\"}")?;
    Some((format!("{open}}}"), hash))
}

use crate::output::hex;

/// The hash of the file's last record, or [`GENESIS`] for an empty file.
fn last_hash(file: &mut File) -> std::io::Result<String> {
    let length = file.seek(SeekFrom::End(0))?;
    if length == 0 {
        return Ok(GENESIS.to_string());
    }
    // Read backwards until the start of the last line.
    let mut tail = Vec::new();
    let mut end = length;
    loop {
        let start = end.saturating_sub(64 * 1024);
        let mut chunk = vec![0u8; (end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
        let trimmed = tail.strip_suffix(b"\n").unwrap_or(&tail);
        if trimmed.contains(&b'\n') || start == 0 {
            let last = trimmed.rsplit(|b| *b == b'\n').next().unwrap_or(trimmed);
            let line = String::from_utf8_lossy(last);
            return match unseal(&line) {
                Some((_, hash)) => Ok(hash.to_string()),
                None => Err(std::io::Error::other(
                    "its last line is not a sealed record (run `spillway audit verify`)",
                )),
            };
        }
        end = start;
    }
}

/// An exclusive `flock` on the log (on a second descriptor of the same open file), released
/// on drop.
struct Lock(File);

impl Lock {
    fn exclusive(file: &File) -> std::io::Result<Lock> {
        let held = file.try_clone()?;
        // SAFETY: `held` is an open descriptor for the lifetime of the lock.
        if unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Lock(held))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// What `verify` found.
#[derive(Debug, PartialEq)]
pub(crate) enum Verdict {
    Intact { records: u64, head: String },
    Broken { line: u64, reason: String },
}

/// Check the whole chain.
pub(crate) fn verify(path: &Path) -> Result<Verdict> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Input(format!("audit log {}: cannot read it: {e}", path.display())))?;
    let mut prev = GENESIS.to_string();
    let mut records = 0;
    for (index, line) in text.lines().enumerate() {
        let number = index as u64 + 1;
        let broken = |reason: &str| Verdict::Broken {
            line: number,
            reason: reason.to_string(),
        };
        let Some((body, claimed)) = unseal(line) else {
            return Ok(broken("not a sealed record (cut or edited)"));
        };
        if hex(&Sha256::digest(body.as_bytes())) != claimed {
            return Ok(broken("its hash does not match its content (edited)"));
        }
        let parsed: serde_json::Value = match serde_json::from_str(&body) {
            Ok(value) => value,
            Err(_) => return Ok(broken("not JSON")),
        };
        if parsed.get("prev").and_then(|p| p.as_str()) != Some(prev.as_str()) {
            return Ok(broken(
                "its prev is not the hash of the record before it (a record was deleted, inserted or moved)",
            ));
        }
        prev = claimed.to_string();
        records += 1;
    }
    Ok(Verdict::Intact {
        records,
        head: prev,
    })
}

/// The records of the log, as JSON values, in order.
pub(crate) fn records(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Input(format!("audit log {}: cannot read it: {e}", path.display())))?;
    Ok(text
        .lines()
        .filter_map(|line| unseal(line).and_then(|(body, _)| serde_json::from_str(&body).ok()))
        .collect())
}

/// The person running this process, for records of CLI entry points.
pub(crate) fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        // SAFETY: getuid has no preconditions.
        .unwrap_or_else(|_| format!("uid {}", unsafe { libc::getuid() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(sql: &str) -> Event {
        Event {
            entry: "query".into(),
            user: "ana".into(),
            sql: sql.into(),
            outcome: "ok".into(),
            ..Event::default()
        }
    }

    #[test]
    fn a_chain_of_appended_records_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("audit.jsonl")).unwrap();
        for i in 0..3 {
            log.append(&event(&format!("SELECT {i}"))).unwrap();
        }
        match verify(log.path()).unwrap() {
            Verdict::Intact { records, .. } => assert_eq!(records, 3),
            other => panic!("{other:?}"),
        }
        let first: serde_json::Value = records(log.path()).unwrap()[0].clone();
        assert_eq!(first["prev"], GENESIS);
        assert_eq!(first["sql"], "SELECT 0");
    }

    #[test]
    fn an_edited_record_is_found_at_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("audit.jsonl")).unwrap();
        for i in 0..3 {
            log.append(&event(&format!("SELECT {i}"))).unwrap();
        }
        let text = std::fs::read_to_string(log.path()).unwrap();
        std::fs::write(log.path(), text.replace("SELECT 1", "SELECT 9")).unwrap();
        assert_eq!(
            verify(log.path()).unwrap(),
            Verdict::Broken {
                line: 2,
                reason: "its hash does not match its content (edited)".into()
            }
        );
    }

    #[test]
    fn a_deleted_record_is_found_at_the_next_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("audit.jsonl")).unwrap();
        for i in 0..3 {
            log.append(&event(&format!("SELECT {i}"))).unwrap();
        }
        let text = std::fs::read_to_string(log.path()).unwrap();
        let kept: Vec<&str> = text
            .lines()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, l)| l)
            .collect();
        std::fs::write(log.path(), kept.join("\n") + "\n").unwrap();
        match verify(log.path()).unwrap() {
            Verdict::Broken { line, reason } => {
                assert_eq!(line, 2);
                assert!(reason.contains("deleted"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}
