//! The audit trail: one JSON Lines record per statement and per report run, hash-chained.
//!
//! Each record carries `prev`, the SHA-256 of the record before it, and ends with `hash`, the
//! SHA-256 of its own text up to that field. Editing a record breaks its hash; deleting or
//! reordering records breaks the next record's `prev`; `spillway audit verify` names the first
//! record where either happens. Appends from several processes (a server, the scheduler, a
//! `query`) are serialised by an exclusive lock on the file and each is flushed to disk before
//! the statement counts as done: a statement whose record cannot be written fails. Within a
//! process, records that arrive while a batch is being written go to disk together with one
//! sync (group commit), so concurrent statements share its cost. Cutting
//! records off the end leaves a valid chain; keep the head hash `verify` prints elsewhere to
//! catch that. Must not write a secret: records hold SQL text, parameter values, names and
//! fingerprints, never keys or passwords.

use crate::error::{Error, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

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

/// The audit log of a policy. Clones share one queue, so the statements of a server's
/// sessions are written in batches.
#[derive(Debug, Clone)]
pub(crate) struct AuditLog {
    path: PathBuf,
    group: Arc<Group>,
}

/// Group commit: records wait in `queue` while one caller (the leader) writes a batch and
/// syncs it once; the next batch takes everything that arrived meanwhile. A statement still
/// returns only after its own record is on disk, and a failed batch fails all its statements.
#[derive(Debug, Default)]
struct Group {
    state: Mutex<GroupState>,
    written: Condvar,
}

impl Group {
    /// The queue; a panic elsewhere while it was held leaves it consistent (every change to
    /// it is a single step), so a poisoned lock is taken as it is.
    fn lock(&self) -> std::sync::MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug, Default)]
struct GroupState {
    next: u64,
    queue: Vec<(u64, String, Event)>,
    writing: bool,
    /// Finished records' outcomes (an error's message), until their callers collect them.
    done: HashMap<u64, std::result::Result<(), String>>,
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
            group: Arc::default(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Append one record, chained to the last one, and return once it is on disk.
    pub(crate) fn append(&self, event: &Event) -> Result<()> {
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut state = self.group.lock();
        let ticket = state.next;
        state.next += 1;
        state.queue.push((ticket, time, event.clone()));
        loop {
            if let Some(outcome) = state.done.remove(&ticket) {
                return outcome.map_err(Error::Refused);
            }
            if state.writing {
                state = self
                    .group
                    .written
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
                continue;
            }
            state.writing = true;
            let batch = std::mem::take(&mut state.queue);
            drop(state);
            let outcome = self.write(&batch).map_err(|e| match e {
                Error::Refused(message) => message,
                other => other.to_string(),
            });
            state = self.group.lock();
            state.writing = false;
            for (done, _, _) in &batch {
                state.done.insert(*done, outcome.clone());
            }
            self.group.written.notify_all();
        }
    }

    /// Write `batch` after the file's last record, chained, under the file lock (other
    /// processes append too), and sync it once.
    fn write(&self, batch: &[(u64, String, Event)]) -> Result<()> {
        let mut file = open_for_append(&self.path)?;
        let _lock = Lock::exclusive(&file).map_err(|e| unwritable(&self.path, &e))?;
        let mut prev = last_hash(&mut file).map_err(|e| unwritable(&self.path, &e))?;
        let mut lines = String::new();
        for (_, time, event) in batch {
            let record = Record {
                time: time.clone(),
                event,
                prev: &prev,
            };
            let body = serde_json::to_string(&record)
                .map_err(|e| Error::Internal(format!("audit record: {e}")))?;
            let (line, hash) = seal(&body);
            lines.push_str(&line);
            lines.push('\n');
            prev = hash;
        }
        file.seek(SeekFrom::End(0))
            .and_then(|_| file.write_all(lines.as_bytes()))
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

/// `body` (a JSON object) with its hash as the last field, and the hash.
fn seal(body: &str) -> (String, String) {
    let hash = hex(&Sha256::digest(body.as_bytes()));
    let open = body.strip_suffix('}').unwrap_or(body);
    (format!("{open},\"hash\":\"{hash}\"}}"), hash)
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
    // Read backwards until the start of the last line: a record is usually a few hundred
    // bytes, and this runs for every batch written, so start small.
    let mut tail = Vec::new();
    let mut end = length;
    let mut step = 4 * 1024;
    loop {
        let start = end.saturating_sub(step);
        step = (step * 2).min(64 * 1024);
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
    fn concurrent_appends_from_clones_and_from_another_log_make_one_intact_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        // A second AuditLog on the same file stands for another process: only the file lock
        // orders its batches with the first one's.
        let other = AuditLog::open(&path).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let log = if t % 2 == 0 {
                    log.clone()
                } else {
                    other.clone()
                };
                std::thread::spawn(move || {
                    for i in 0..25 {
                        log.append(&event(&format!("SELECT {t}, {i}"))).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        match verify(&path).unwrap() {
            Verdict::Intact { records, .. } => assert_eq!(records, 200),
            other => panic!("{other:?}"),
        }
        let sql: std::collections::BTreeSet<String> = records(&path)
            .unwrap()
            .iter()
            .map(|r| r["sql"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(sql.len(), 200, "every statement's record, once");
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
