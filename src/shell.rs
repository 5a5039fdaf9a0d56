//! `spillway shell` (and plain `spillway` on a terminal): an interactive SQL session.
//!
//! A line editor (rustyline) with history in a file, completion of SQL keywords, tables and
//! columns, and statements that run over several lines until a `;`. Backslash commands: `\d`,
//! `\d TABLE`, `\timing`, `\o FILE`, `\i FILE`, `\pager`, `\q`, `\?`. Results on a terminal go
//! through a pager (`SPILLWAY_PAGER`, `PAGER`, else `less -FRX`, which returns at once when the
//! result fits the screen). Statements run through `query`
//! with the session's engine (its flags, config and memory ceiling) and print through the
//! output code; Ctrl-C cancels the running statement and keeps the session, Ctrl-D ends it.
//! Must not run SQL except through `query`.

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::output::{Destination, OutputFormat, OutputSpec};
use crate::query::{self, RunOptions};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Context, Editor, Helper};
use std::path::PathBuf;
use std::time::Instant;

/// How the shell prints results.
#[derive(Debug, Clone)]
pub(crate) struct ShellOptions {
    /// Rows a result shows on the terminal (0: all); `\o FILE` writes them all.
    pub(crate) max_rows: usize,
    /// Where history is kept (default `~/.spillway_history`).
    pub(crate) history: Option<PathBuf>,
}

const KEYWORDS: [&str; 48] = [
    "SELECT", "FROM", "WHERE", "GROUP", "BY", "ORDER", "HAVING", "LIMIT", "OFFSET", "JOIN", "LEFT",
    "RIGHT", "INNER", "OUTER", "FULL", "CROSS", "ON", "USING", "AS", "AND", "OR", "NOT", "IN",
    "IS", "NULL", "LIKE", "ILIKE", "BETWEEN", "CASE", "WHEN", "THEN", "ELSE", "END", "DISTINCT",
    "UNION", "ALL", "WITH", "EXPLAIN", "DESCRIBE", "SHOW", "TABLES", "COUNT", "SUM", "AVG", "MIN",
    "MAX", "CAST", "OVER",
];

/// Completion of keywords, tables and columns, and multi-line statements.
struct SqlHelper {
    words: Vec<String>,
}

impl Helper for SqlHelper {}
impl Hinter for SqlHelper {
    type Hint = String;
}
impl Highlighter for SqlHelper {}

impl Completer for SqlHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let start = line[..pos]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map(|i| i + 1)
            .unwrap_or(0);
        let word = &line[start..pos];
        if word.is_empty() {
            return Ok((pos, Vec::new()));
        }
        let lower = word.to_ascii_lowercase();
        let upper_case = word.chars().next().is_some_and(|c| c.is_ascii_uppercase());
        let mut found: Vec<Pair> = self
            .words
            .iter()
            .filter(|candidate| candidate.to_ascii_lowercase().starts_with(&lower))
            .map(|candidate| {
                let shown = if KEYWORDS.contains(&candidate.as_str()) && !upper_case {
                    candidate.to_ascii_lowercase()
                } else {
                    candidate.clone()
                };
                Pair {
                    display: shown.clone(),
                    replacement: shown,
                }
            })
            .collect();
        found.dedup_by(|a, b| a.replacement == b.replacement);
        Ok((start, found))
    }
}

impl Validator for SqlHelper {
    /// A statement is complete at a `;`; a backslash command at the end of its line.
    fn validate(&self, ctx: &mut ValidationContext) -> rustyline::Result<ValidationResult> {
        let input = ctx.input().trim();
        if input.is_empty() || input.starts_with('\\') || input.ends_with(';') {
            Ok(ValidationResult::Valid(None))
        } else {
            Ok(ValidationResult::Incomplete)
        }
    }
}

/// The session's state between statements.
struct Session {
    engine: Engine,
    options: ShellOptions,
    timing: bool,
    output: Option<PathBuf>,
    /// The pager command, when stdout is a terminal and one is found.
    pager: Option<String>,
    /// `\pager` toggles it.
    paging: bool,
}

/// Run the shell until `\q` or Ctrl-D.
pub(crate) async fn run(engine: Engine, options: ShellOptions) -> Result<()> {
    let words = completion_words(&engine).await;
    let config = rustyline::Config::builder().auto_add_history(true).build();
    let mut editor: Editor<SqlHelper, DefaultHistory> = Editor::with_config(config)
        .map_err(|e| Error::Usage(format!("shell: cannot use the terminal: {e}")))?;
    editor.set_helper(Some(SqlHelper { words }));
    let history = options.history.clone().or_else(default_history);
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    println!(
        "spillway {} shell: SQL ends with `;`; \\? for help, \\q to quit",
        env!("CARGO_PKG_VERSION")
    );
    let mut session = Session {
        engine,
        options,
        timing: false,
        output: None,
        pager: pager(),
        paging: true,
    };
    // From now on Ctrl-C reaches the session, not the process's default handler.
    let mut interrupts = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| Error::Internal(format!("shell: cannot watch Ctrl-C: {e}")))?;
    loop {
        let (back, line) = tokio::task::spawn_blocking(move || {
            let line = editor.readline("spillway> ");
            (editor, line)
        })
        .await
        .map_err(|e| Error::Internal(format!("shell: the line editor stopped: {e}")))?;
        editor = back;
        let text = match line {
            Ok(text) => text,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(error) => return Err(Error::Internal(format!("shell: {error}"))),
        };
        if let Some(path) = &history {
            let _ = editor.save_history(path);
        }
        match session.handle(text.trim(), &mut interrupts).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(error) => eprintln!("spillway: error: {error}"),
        }
    }
    Ok(())
}

/// The pager for results on a terminal: `SPILLWAY_PAGER`, then `PAGER` (either empty: none),
/// else `less -FRX` when `less` is installed (git's choice: it quits at once when the result
/// fits the screen, keeps colours, and leaves the result on the screen).
fn pager() -> Option<String> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        return None;
    }
    for variable in ["SPILLWAY_PAGER", "PAGER"] {
        if let Ok(command) = std::env::var(variable) {
            return Some(command).filter(|c| !c.trim().is_empty());
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .any(|folder| folder.join("less").is_file())
        .then(|| "less -FRX".to_string())
}

fn default_history() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".spillway_history"))
}

/// Keywords, then every table and column name, for completion.
async fn completion_words(engine: &Engine) -> Vec<String> {
    let mut words: Vec<String> = KEYWORDS.iter().map(|k| k.to_string()).collect();
    let ctx = engine.context();
    for table in ctx
        .catalog("datafusion")
        .and_then(|c| c.schema("public"))
        .map(|s| s.table_names())
        .unwrap_or_default()
    {
        if let Ok(frame) = ctx.table(table.as_str()).await {
            words.extend(frame.schema().fields().iter().map(|f| f.name().clone()));
        }
        words.push(table);
    }
    words.sort();
    words.dedup();
    words
}

impl Session {
    /// Handle one complete input; `Ok(false)` ends the session.
    async fn handle(
        &mut self,
        text: &str,
        interrupts: &mut tokio::signal::unix::Signal,
    ) -> Result<bool> {
        if text.is_empty() {
            return Ok(true);
        }
        if let Some(command) = text.strip_prefix('\\') {
            return self.command(command.trim(), interrupts).await;
        }
        self.run_sql(text, interrupts).await?;
        Ok(true)
    }

    async fn command(
        &mut self,
        command: &str,
        interrupts: &mut tokio::signal::unix::Signal,
    ) -> Result<bool> {
        let (name, argument) = match command.split_once(char::is_whitespace) {
            Some((name, rest)) => (name, rest.trim()),
            None => (command, ""),
        };
        match (name, argument) {
            ("q", _) => return Ok(false),
            ("?", _) => println!("{HELP}"),
            ("pager", _) => {
                self.paging = !self.paging;
                match (&self.pager, self.paging) {
                    (Some(pager), true) => println!("Pager is on (`{pager}`)."),
                    (None, true) => println!(
                        "Pager is on, but there is none: set SPILLWAY_PAGER or PAGER, or install less."
                    ),
                    (_, false) => println!("Pager is off."),
                }
            }
            ("timing", _) => {
                self.timing = !self.timing;
                println!("Timing is {}.", if self.timing { "on" } else { "off" });
            }
            ("o", "") => {
                self.output = None;
                println!("Results go to the terminal.");
            }
            ("o", path) => {
                let path = crate::storage::normalize_path(std::path::Path::new(path));
                OutputFormat::from_path(&path).ok_or_else(|| {
                    Error::Usage(format!(
                        "\\o {}: cannot tell the format from the extension (.csv, .parquet, .json, ...)",
                        path.display()
                    ))
                })?;
                println!("Results go to {} (\\o alone: back to the terminal).", path.display());
                self.output = Some(path);
            }
            ("i", path) if !path.is_empty() => {
                let sql = std::fs::read_to_string(path)
                    .map_err(|e| Error::Usage(format!("\\i {path}: {e}")))?;
                self.run_sql(&sql, interrupts).await?;
            }
            ("d", "") => self.run_sql(
                "SELECT table_name AS table, count(*) AS columns FROM information_schema.columns \
                 WHERE table_schema = 'public' GROUP BY table_name ORDER BY table_name;",
                interrupts,
            )
            .await?,
            ("d", table) => {
                let schema = self.engine.context().table(table).await?.schema().inner().clone();
                let batch = crate::inspect::describe(&schema)?;
                crate::output::print_batch(batch, OutputFormat::Table).await?;
            }
            _ => {
                return Err(Error::Usage(format!(
                    "\\{command}: unknown command (\\? lists them)"
                )))
            }
        }
        Ok(true)
    }

    /// Run SQL through `query`, to the terminal or the `\o` file; Ctrl-C cancels it.
    async fn run_sql(
        &mut self,
        sql: &str,
        interrupts: &mut tokio::signal::unix::Signal,
    ) -> Result<()> {
        let output = match &self.output {
            Some(path) => OutputSpec {
                format: OutputFormat::from_path(path).unwrap_or(OutputFormat::Csv),
                destination: Destination::File(path.clone()),
                max_table_rows: 0,
                manifest: false,
                encryption: None,
                about: None,
            },
            None => OutputSpec {
                format: OutputFormat::Table,
                destination: match (&self.pager, self.paging) {
                    (Some(pager), true) => Destination::Pager(pager.clone()),
                    _ => Destination::Stdout,
                },
                max_table_rows: self.options.max_rows,
                manifest: false,
                encryption: None,
                about: None,
            },
        };
        let options = RunOptions {
            output,
            stats: false,
            progress: false,
            entry: "shell",
            incremental: None,
        };
        let started = Instant::now();
        let result = tokio::select! {
            result = query::run_script(&self.engine, sql, &options) => result.map(|_| ()),
            _ = interrupts.recv() => Err(Error::Interrupted),
        };
        match result {
            Err(Error::Interrupted) => {
                // The statement's plan was dropped; wait for its memory before the next one.
                self.engine.wait_for_released_memory().await;
                eprintln!("Cancelled.");
            }
            other => other?,
        }
        if self.timing {
            println!("Time: {:.3} s", started.elapsed().as_secs_f64());
        }
        Ok(())
    }
}

const HELP: &str = "\
  SQL;          run a statement (it may span lines; it ends with `;`)
  \\d            list the tables
  \\d TABLE      a table's columns and types
  \\timing       show each statement's time (toggle)
  \\o FILE       write results to FILE (format from its extension); \\o alone: terminal
  \\i FILE       run the SQL in FILE
  \\pager        page results on the terminal (toggle; on at start)
  \\q            quit (also Ctrl-D); Ctrl-C cancels a running statement";
