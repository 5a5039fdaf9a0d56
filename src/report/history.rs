//! The run history (a SQLite file: one row per run, its status, what it wrote or why it failed)
//! and the lock that keeps two daemons off one history.
//!
//! Must not: decide when or whether a report runs (that is `schedule` and `report::run`).

use super::ReportError;
use chrono::{DateTime, NaiveDateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// The state of one run in the history.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RunStatus {
    Running,
    Succeeded,
    Failed,
    /// Still going when the report's timeout passed: cancelled, nothing published.
    Timeout,
    /// Left `running` by a process that died (crash, kill, shutdown after the grace period).
    Incomplete,
    /// Not run: overlap with a previous run, or a missed firing under the skip policy.
    Skipped,
}

impl RunStatus {
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Timeout => "timeout",
            RunStatus::Incomplete => "incomplete",
            RunStatus::Skipped => "skipped",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "running" => Ok(RunStatus::Running),
            "succeeded" => Ok(RunStatus::Succeeded),
            "failed" => Ok(RunStatus::Failed),
            "timeout" => Ok(RunStatus::Timeout),
            "incomplete" => Ok(RunStatus::Incomplete),
            "skipped" => Ok(RunStatus::Skipped),
            other => Err(format!("unknown run status `{other}`")),
        }
    }
}

/// One row of the history.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunRecord {
    pub(crate) id: i64,
    pub(crate) report: String,
    /// `None` for a run started by hand.
    pub(crate) scheduled_for: Option<DateTime<Utc>>,
    pub(crate) started: DateTime<Utc>,
    pub(crate) finished: Option<DateTime<Utc>>,
    /// 1 for the first try, 2 for the first retry, ...; 0 for a skipped firing.
    pub(crate) attempt: u32,
    pub(crate) status: RunStatus,
    pub(crate) rows: Option<u64>,
    pub(crate) bytes: Option<u64>,
    pub(crate) output: Option<String>,
    /// The failure, or the reason for a skip.
    pub(crate) error: Option<String>,
    /// The process that ran it (to tell an abandoned `running` row from a live one).
    pub(crate) pid: u32,
}

/// The run history: a SQLite file in WAL mode, so `spillway report history` can read while a
/// daemon writes. The connection sits behind a mutex so one `History` can be shared by the
/// scheduler's tasks; each call is a single short statement.
pub(crate) struct History {
    path: PathBuf,
    connection: Mutex<Connection>,
}

/// The schema version this code writes (`PRAGMA user_version`).
/// Version 2 added the `alerts` table, version 3 `run_states` (created on open; older files
/// gain them).
const HISTORY_SCHEMA_VERSION: i64 = 3;

const HISTORY_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    report        TEXT    NOT NULL,
    scheduled_for TEXT,
    started       TEXT    NOT NULL,
    finished      TEXT,
    attempt       INTEGER NOT NULL,
    status        TEXT    NOT NULL,
    rows          INTEGER,
    bytes         INTEGER,
    output        TEXT,
    error         TEXT,
    pid           INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_report ON runs (report, scheduled_for);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status);
CREATE TABLE IF NOT EXISTS alerts (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    report        TEXT    NOT NULL,
    scheduled_for TEXT,
    run_id        INTEGER,
    event         TEXT    NOT NULL,
    target        TEXT    NOT NULL,
    sent          TEXT    NOT NULL,
    tries         INTEGER NOT NULL,
    delivered     INTEGER NOT NULL,
    error         TEXT
);
CREATE INDEX IF NOT EXISTS alerts_by_report ON alerts (report, id);
CREATE TABLE IF NOT EXISTS run_states (
    run_id        INTEGER PRIMARY KEY,
    mode          TEXT    NOT NULL,
    outcome       TEXT    NOT NULL
);
";

/// One alert as recorded: which firing, what happened to it, which target, and whether the
/// target got it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AlertRecord {
    pub(crate) report: String,
    pub(crate) scheduled_for: Option<DateTime<Utc>>,
    /// The run the alert is about (none for a `late` alert of a firing that never started).
    pub(crate) run_id: Option<i64>,
    /// `succeeded`, `failed` or `late`.
    pub(crate) event: String,
    /// The `[alerts.NAME]` it went to.
    pub(crate) target: String,
    /// When the last try ended.
    pub(crate) sent: DateTime<Utc>,
    pub(crate) tries: u32,
    pub(crate) delivered: bool,
    /// Why the last try failed (never a secret: see `alert`).
    pub(crate) error: Option<String>,
}

const RUN_COLUMNS: &str =
    "id, report, scheduled_for, started, finished, attempt, status, rows, bytes, output, error, pid";

/// Times are stored as fixed-width UTC text, so they read well in `sqlite3` and sort correctly
/// as text (`MAX(scheduled_for)`).
fn time_to_text(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn time_from_text(text: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.fZ")
        .ok()
        .map(|naive| naive.and_utc())
}

/// Create the folder a state file lives in, if it has one.
fn create_parent(path: &Path) -> Result<(), ReportError> {
    match path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        Some(parent) => std::fs::create_dir_all(parent).map_err(|source| ReportError::Io {
            path: parent.to_path_buf(),
            source,
        }),
        None => Ok(()),
    }
}

impl History {
    /// Open (creating if needed) the history at `path`, with its folder and schema.
    pub(crate) fn open(path: &Path) -> Result<History, ReportError> {
        create_parent(path)?;
        let failed = |error: rusqlite::Error| ReportError::History {
            path: path.to_path_buf(),
            message: error.to_string(),
        };
        let connection = Connection::open(path).map_err(failed)?;
        // Another process (a daemon, `report history`) may hold a write lock for a moment.
        connection
            .busy_timeout(Duration::from_secs(5))
            .map_err(failed)?;
        // `journal_mode` answers with a row, so it is read rather than executed. Turning a new
        // file to WAL needs it to itself: another process opening it at that moment makes
        // SQLite answer "locked" at once, without waiting, so wait here.
        let started = std::time::Instant::now();
        loop {
            match connection.query_row("PRAGMA journal_mode = WAL", [], |row| {
                row.get::<_, String>(0)
            }) {
                Ok(_) => break,
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy
                        && started.elapsed() < Duration::from_secs(5) =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(error) => return Err(failed(error)),
            }
        }
        let version: i64 = connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(failed)?;
        if version > HISTORY_SCHEMA_VERSION {
            return Err(ReportError::History {
                path: path.to_path_buf(),
                message: format!(
                    "written by a newer spillway (schema {version}, this one knows {HISTORY_SCHEMA_VERSION})"
                ),
            });
        }
        if version < HISTORY_SCHEMA_VERSION {
            // One writer at a time (IMMEDIATE waits for the lock through the busy timeout);
            // a history already at this version is only read, so `report history` beside a
            // running daemon never competes with it for the write lock.
            connection
                .execute_batch(&format!(
                    "BEGIN IMMEDIATE; {HISTORY_SCHEMA}; PRAGMA user_version = {HISTORY_SCHEMA_VERSION}; COMMIT;"
                ))
                .map_err(failed)?;
        }
        Ok(History {
            path: path.to_path_buf(),
            connection: Mutex::new(connection),
        })
    }

    /// The file this history lives in.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, message: impl fmt::Display) -> ReportError {
        ReportError::History {
            path: self.path.clone(),
            message: message.to_string(),
        }
    }

    fn connection(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection itself intact: keep using it.
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Record the start of a run (status `running`, this process's pid); returns its id.
    pub(crate) fn start(
        &self,
        report: &str,
        scheduled_for: Option<DateTime<Utc>>,
        attempt: u32,
    ) -> Result<i64, ReportError> {
        let connection = self.connection();
        connection
            .execute(
                "INSERT INTO runs (report, scheduled_for, started, attempt, status, pid)
                 VALUES (?1, ?2, ?3, ?4, 'running', ?5)",
                params![
                    report,
                    scheduled_for.map(time_to_text),
                    time_to_text(Utc::now()),
                    attempt,
                    std::process::id(),
                ],
            )
            .map_err(|error| self.error(error))?;
        Ok(connection.last_insert_rowid())
    }

    /// Mark a run succeeded with what it wrote.
    pub(crate) fn succeed(
        &self,
        id: i64,
        rows: u64,
        bytes: u64,
        output: &str,
    ) -> Result<(), ReportError> {
        let rows = i64::try_from(rows)
            .map_err(|_| self.error(format!("run {id}: row count too large")))?;
        let bytes = i64::try_from(bytes)
            .map_err(|_| self.error(format!("run {id}: byte count too large")))?;
        self.finish(
            id,
            "UPDATE runs SET status = 'succeeded', finished = ?2, rows = ?3, bytes = ?4, output = ?5
             WHERE id = ?1",
            params![id, time_to_text(Utc::now()), rows, bytes, output],
        )
    }

    /// Record how a succeeded run used per-file aggregate states (with its output: a run whose
    /// output was not published has no row here).
    pub(crate) fn record_states(
        &self,
        id: i64,
        outcome: &crate::incremental::Outcome,
    ) -> Result<(), ReportError> {
        let text = serde_json::to_string(outcome).map_err(|error| self.error(error))?;
        self.connection()
            .execute(
                "INSERT OR REPLACE INTO run_states (run_id, mode, outcome) VALUES (?1, ?2, ?3)",
                params![id, outcome.mode(), text],
            )
            .map_err(|error| self.error(error))?;
        Ok(())
    }

    /// The newest succeeded run of `report` with its use of states: (run id, outcome).
    pub(crate) fn last_states(
        &self,
        report: &str,
    ) -> Result<Option<(i64, crate::incremental::Outcome)>, ReportError> {
        let row: Option<(i64, String)> = self
            .connection()
            .query_row(
                "SELECT s.run_id, s.outcome FROM run_states s JOIN runs r ON r.id = s.run_id
                 WHERE r.report = ?1 ORDER BY s.run_id DESC LIMIT 1",
                params![report],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(|error| self.error(error))?;
        row.map(|(id, text)| {
            serde_json::from_str(&text)
                .map(|outcome| (id, outcome))
                .map_err(|error| self.error(error))
        })
        .transpose()
    }

    /// Mark a run failed.
    pub(crate) fn fail(&self, id: i64, error: &str) -> Result<(), ReportError> {
        self.finish(
            id,
            "UPDATE runs SET status = 'failed', finished = ?2, error = ?3 WHERE id = ?1",
            params![id, time_to_text(Utc::now()), error],
        )
    }

    /// Mark a run timed out: it was cancelled when its time ran out.
    pub(crate) fn time_out(&self, id: i64, reason: &str) -> Result<(), ReportError> {
        self.finish(
            id,
            "UPDATE runs SET status = 'timeout', finished = ?2, error = ?3 WHERE id = ?1",
            params![id, time_to_text(Utc::now()), reason],
        )
    }

    fn finish(&self, id: i64, sql: &str, values: impl rusqlite::Params) -> Result<(), ReportError> {
        let changed = self
            .connection()
            .execute(sql, values)
            .map_err(|error| self.error(error))?;
        if changed == 0 {
            return Err(self.error(format!("no run with id {id}")));
        }
        Ok(())
    }

    /// Record a firing that was not run, with the reason.
    pub(crate) fn skip(
        &self,
        report: &str,
        scheduled_for: DateTime<Utc>,
        reason: &str,
    ) -> Result<(), ReportError> {
        let now = time_to_text(Utc::now());
        self.connection()
            .execute(
                "INSERT INTO runs (report, scheduled_for, started, finished, attempt, status, error, pid)
                 VALUES (?1, ?2, ?3, ?3, 0, 'skipped', ?4, ?5)",
                params![
                    report,
                    time_to_text(scheduled_for),
                    now,
                    reason,
                    std::process::id()
                ],
            )
            .map_err(|error| self.error(error))?;
        Ok(())
    }

    /// Runs left `running` by a process that no longer exists become `incomplete`; returns how
    /// many. Liveness is read from `/proc/<pid>`: where there is no `/proc`, nothing is changed
    /// (a live run must never be marked incomplete). A recycled pid keeps its row `running`
    /// until that process ends too.
    pub(crate) fn recover(&self) -> Result<usize, ReportError> {
        if !Path::new("/proc/self").exists() {
            return Ok(0);
        }
        let connection = self.connection();
        let running: Vec<(i64, u32)> = {
            let mut statement = connection
                .prepare("SELECT id, pid FROM runs WHERE status = 'running'")
                .map_err(|error| self.error(error))?;
            let rows = statement
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                .map_err(|error| self.error(error))?;
            rows.collect::<Result<_, _>>()
                .map_err(|error| self.error(error))?
        };
        let mut recovered = 0;
        for (id, pid) in running {
            if Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            recovered += connection
                .execute(
                    "UPDATE runs SET status = 'incomplete', finished = ?2, error = ?3
                     WHERE id = ?1 AND status = 'running'",
                    params![
                        id,
                        time_to_text(Utc::now()),
                        format!("process {pid} ended before the run finished")
                    ],
                )
                .map_err(|error| self.error(error))?;
        }
        Ok(recovered)
    }

    /// The newest `limit` runs (of one report, or of all), newest first.
    pub(crate) fn list(
        &self,
        report: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunRecord>, ReportError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let connection = self.connection();
        let mut statement = connection
            .prepare(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE (?1 IS NULL OR report = ?1)
                 ORDER BY id DESC LIMIT ?2"
            ))
            .map_err(|error| self.error(error))?;
        let rows = statement
            .query_map(params![report, limit], RawRun::from_row)
            .map_err(|error| self.error(error))?;
        let mut records = Vec::new();
        for row in rows {
            let raw = row.map_err(|error| self.error(error))?;
            records.push(raw.into_record().map_err(|message| self.error(message))?);
        }
        Ok(records)
    }

    /// Record an alert's delivery (or its failure).
    pub(crate) fn record_alert(&self, alert: &AlertRecord) -> Result<(), ReportError> {
        self.connection()
            .execute(
                "INSERT INTO alerts (report, scheduled_for, run_id, event, target, sent, tries, delivered, error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    alert.report,
                    alert.scheduled_for.map(time_to_text),
                    alert.run_id,
                    alert.event,
                    alert.target,
                    time_to_text(alert.sent),
                    alert.tries,
                    alert.delivered,
                    alert.error,
                ],
            )
            .map_err(|error| self.error(error))?;
        Ok(())
    }

    /// The newest `limit` alerts (of one report, or of all), newest first.
    pub(crate) fn alerts(
        &self,
        report: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AlertRecord>, ReportError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let connection = self.connection();
        let mut statement = connection
            .prepare(
                "SELECT report, scheduled_for, run_id, event, target, sent, tries, delivered, error
                 FROM alerts WHERE (?1 IS NULL OR report = ?1) ORDER BY id DESC LIMIT ?2",
            )
            .map_err(|error| self.error(error))?;
        let rows = statement
            .query_map(params![report, limit], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, Option<String>>(1)?,
                    row.get::<_, Option<i64>>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, String>(5)?,
                    row.get::<_, u32>(6)?,
                    row.get::<_, bool>(7)?,
                    row.get::<_, Option<String>>(8)?,
                ))
            })
            .map_err(|error| self.error(error))?;
        let mut alerts = Vec::new();
        for row in rows {
            let (report, scheduled_for, run_id, event, target, sent, tries, delivered, error) =
                row.map_err(|error| self.error(error))?;
            let time = |text: &str| {
                time_from_text(text).ok_or_else(|| {
                    self.error(format!("alert of {report}: unreadable time `{text}`"))
                })
            };
            alerts.push(AlertRecord {
                scheduled_for: scheduled_for.as_deref().map(time).transpose()?,
                sent: time(&sent)?,
                report,
                run_id,
                event,
                target,
                tries,
                delivered,
                error,
            });
        }
        Ok(alerts)
    }

    /// The latest `scheduled_for` of any run of `report` (whatever its status), for catch-up.
    pub(crate) fn last_scheduled(
        &self,
        report: &str,
    ) -> Result<Option<DateTime<Utc>>, ReportError> {
        let latest: Option<String> = self
            .connection()
            .query_row(
                "SELECT MAX(scheduled_for) FROM runs WHERE report = ?1",
                params![report],
                |row| row.get(0),
            )
            .optional()
            .map_err(|error| self.error(error))?
            .flatten();
        latest
            .map(|text| {
                time_from_text(&text)
                    .ok_or_else(|| self.error(format!("unreadable time `{text}` in scheduled_for")))
            })
            .transpose()
    }
}

/// A history row as stored, before its text columns are checked.
struct RawRun {
    id: i64,
    report: String,
    scheduled_for: Option<String>,
    started: String,
    finished: Option<String>,
    attempt: u32,
    status: String,
    rows: Option<i64>,
    bytes: Option<i64>,
    output: Option<String>,
    error: Option<String>,
    pid: u32,
}

impl RawRun {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRun> {
        Ok(RawRun {
            id: row.get(0)?,
            report: row.get(1)?,
            scheduled_for: row.get(2)?,
            started: row.get(3)?,
            finished: row.get(4)?,
            attempt: row.get(5)?,
            status: row.get(6)?,
            rows: row.get(7)?,
            bytes: row.get(8)?,
            output: row.get(9)?,
            error: row.get(10)?,
            pid: row.get(11)?,
        })
    }

    fn into_record(self) -> Result<RunRecord, String> {
        let id = self.id;
        let time = |text: &str| {
            time_from_text(text).ok_or_else(|| format!("run {id}: unreadable time `{text}`"))
        };
        let count = |value: Option<i64>| value.map(|value| u64::try_from(value).unwrap_or(0));
        Ok(RunRecord {
            id,
            scheduled_for: self.scheduled_for.as_deref().map(time).transpose()?,
            started: time(&self.started)?,
            finished: self.finished.as_deref().map(time).transpose()?,
            report: self.report,
            attempt: self.attempt,
            status: self
                .status
                .parse()
                .map_err(|message| format!("run {id}: {message}"))?,
            rows: count(self.rows),
            bytes: count(self.bytes),
            output: self.output,
            error: self.error,
            pid: self.pid,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Daemon lock
// ---------------------------------------------------------------------------------------------

/// An exclusive lock on `<history>.lock`, so that two daemons never fire the same reports into
/// one history. Held until dropped (the OS also drops it when the process dies, so a crash
/// never leaves a stale lock behind).
#[derive(Debug)]
pub(crate) struct DaemonLock {
    _file: File,
}

/// Take the daemon lock beside `history_path`; fails at once, naming the holder's pid, when
/// another daemon has it.
pub(crate) fn acquire_daemon_lock(history_path: &Path) -> Result<DaemonLock, ReportError> {
    use std::io::{Read, Seek, Write};
    let mut lock_name = history_path.as_os_str().to_owned();
    lock_name.push(".lock");
    let path = PathBuf::from(lock_name);
    let io_error = |source| ReportError::Io {
        path: path.clone(),
        source,
    };
    create_parent(&path)?;
    // Not truncated on open: the current holder's pid must survive for the error message.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_error)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(ReportError::Locked {
                path: path.clone(),
                holder: holder.trim().parse().ok(),
            });
        }
        Err(std::fs::TryLockError::Error(source)) => return Err(io_error(source)),
    }
    // The pid is only a hint for the message above; failing to write it is not fatal.
    let _ = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    Ok(DaemonLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::test_fixtures::utc;

    #[test]
    fn history_records_runs_newest_first() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("state/history.sqlite");
        let history = History::open(&path).unwrap();
        let first = history.start("a", Some(utc(2024, 1, 1, 6, 0)), 1).unwrap();
        history.succeed(first, 10, 2048, "out/a.csv").unwrap();
        let second = history.start("a", Some(utc(2024, 1, 2, 6, 0)), 1).unwrap();
        history.fail(second, "boom").unwrap();
        let third = history.start("b", None, 2).unwrap();
        history
            .skip("a", utc(2024, 1, 3, 6, 0), "previous run still going")
            .unwrap();

        let all = history.list(None, 10).unwrap();
        assert_eq!(all.len(), 4);
        let ids: Vec<i64> = all.iter().map(|r| r.id).collect();
        assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");

        let only_a = history.list(Some("a"), 10).unwrap();
        let statuses: Vec<RunStatus> = only_a.iter().map(|r| r.status.clone()).collect();
        assert_eq!(
            statuses,
            [RunStatus::Skipped, RunStatus::Failed, RunStatus::Succeeded]
        );
        let succeeded = &only_a[2];
        assert_eq!(succeeded.id, first);
        assert_eq!(succeeded.scheduled_for, Some(utc(2024, 1, 1, 6, 0)));
        assert_eq!(succeeded.rows, Some(10));
        assert_eq!(succeeded.bytes, Some(2048));
        assert_eq!(succeeded.output.as_deref(), Some("out/a.csv"));
        assert_eq!(succeeded.attempt, 1);
        assert_eq!(succeeded.pid, std::process::id());
        assert!(succeeded.finished.is_some_and(|f| f >= succeeded.started));
        assert_eq!(only_a[1].error.as_deref(), Some("boom"));
        assert_eq!(only_a[0].error.as_deref(), Some("previous run still going"));
        assert_eq!(only_a[0].attempt, 0);

        let limited = history.list(Some("a"), 2).unwrap();
        assert_eq!(limited.len(), 2);
        assert_eq!(limited[0].id, only_a[0].id);

        let running = history.list(Some("b"), 10).unwrap();
        assert_eq!(running[0].id, third);
        assert_eq!(running[0].status, RunStatus::Running);
        assert_eq!(running[0].scheduled_for, None);
        assert_eq!(running[0].finished, None);
        assert_eq!(running[0].attempt, 2);

        assert_eq!(
            history.last_scheduled("a").unwrap(),
            Some(utc(2024, 1, 3, 6, 0))
        );
        assert_eq!(history.last_scheduled("b").unwrap(), None);
        assert_eq!(history.last_scheduled("nobody").unwrap(), None);
        assert!(history.fail(9999, "x").is_err());

        // The file persists: a second handle sees the same rows.
        drop(history);
        let reopened = History::open(&path).unwrap();
        assert_eq!(reopened.list(None, 100).unwrap().len(), 4);
    }

    #[test]
    fn recover_marks_runs_of_dead_processes_incomplete() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("history.sqlite");
        let history = History::open(&path).unwrap();
        let dead = history.start("a", None, 1).unwrap();
        let alive = history.start("a", None, 1).unwrap();
        // Pretend another process, long gone, started `dead` (pids never reach 999999999).
        Connection::open(&path)
            .unwrap()
            .execute("UPDATE runs SET pid = 999999999 WHERE id = ?1", [dead])
            .unwrap();
        if !Path::new("/proc/self").exists() {
            assert_eq!(history.recover().unwrap(), 0);
            return;
        }
        assert_eq!(history.recover().unwrap(), 1);
        let runs = history.list(None, 10).unwrap();
        let status = |id| runs.iter().find(|r| r.id == id).unwrap().status.clone();
        assert_eq!(status(dead), RunStatus::Incomplete);
        assert_eq!(status(alive), RunStatus::Running);
        assert_eq!(history.recover().unwrap(), 0);
    }

    #[test]
    fn daemon_lock_is_exclusive_until_dropped() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("history.sqlite");
        let lock = acquire_daemon_lock(&path).unwrap();
        assert!(folder.path().join("history.sqlite.lock").is_file());
        match acquire_daemon_lock(&path) {
            Err(ReportError::Locked { holder, .. }) => assert_eq!(holder, Some(std::process::id())),
            other => panic!("expected the lock to be held, got {other:?}"),
        }
        let message = acquire_daemon_lock(&path).unwrap_err().to_string();
        assert!(message.contains("another spillway daemon"), "{message}");
        drop(lock);
        let again = acquire_daemon_lock(&path).unwrap();
        drop(again);
    }

    #[test]
    fn a_timed_out_run_is_recorded_as_timeout_with_its_reason() {
        let folder = tempfile::tempdir().unwrap();
        let history = History::open(&folder.path().join("history.sqlite")).unwrap();
        let other = history.start("a", None, 1).unwrap();
        let slow = history.start("a", None, 1).unwrap();
        history.time_out(slow, "timed out after 1s").unwrap();
        let runs = history.list(Some("a"), 10).unwrap();
        assert_eq!(runs[0].id, slow);
        assert_eq!(runs[0].status, RunStatus::Timeout);
        assert_eq!(runs[0].status.to_string(), "timeout");
        assert_eq!(runs[0].error.as_deref(), Some("timed out after 1s"));
        assert!(runs[0].finished.is_some());
        assert_eq!(runs[1].id, other);
        assert_eq!(runs[1].status, RunStatus::Running);
        assert!(history.time_out(9999, "x").is_err());
    }
}
