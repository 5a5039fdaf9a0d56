//! `spillway shell`, driven through a pseudo-terminal as a person would use it: multi-line
//! statements, completion, backslash commands, Ctrl-C on a running statement, history.

use crate::common::Workspace;
use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The shell in a pseudo-terminal: util-linux's `script` gives it one and relays what the test
/// writes as keystrokes (Ctrl-C included: the terminal turns it into SIGINT while a statement
/// runs, as it would for a person).
struct Pty {
    child: Child,
    keys: ChildStdin,
    screen: Arc<Mutex<String>>,
    seen: usize,
}

impl Pty {
    /// The shell with `pager` as its pager (`SPILLWAY_PAGER`).
    fn start(ws: &Workspace, pager: &str) -> Pty {
        Pty::start_as(ws, pager, "shell")
    }

    /// `spillway ARGS` (a shell-quoted argument string) in the pseudo-terminal.
    fn start_as(ws: &Workspace, pager: &str, args: &str) -> Pty {
        let binary = std::env::var("SPILLWAY_TEST_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_spillway").to_string());
        let command = ws.command();
        let mut child = std::process::Command::new("script")
            // `exec`: script runs the command through `$SHELL -c`; a shell that stays as the
            // pty's foreground parent (dash does) would itself die of the Ctrl-C below.
            .args(["-qfec", &format!("exec '{binary}' {args}"), "/dev/null"])
            .current_dir(ws.path("."))
            .envs(
                command
                    .get_envs()
                    .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))),
            )
            .env("SPILLWAY_HISTORY", ws.path("history"))
            .env("TERM", "xterm")
            .env("SHELL", "/bin/sh")
            .env("SPILLWAY_PAGER", pager)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the shell under script (util-linux)");
        let screen = Arc::new(Mutex::new(String::new()));
        let mut out = child.stdout.take().unwrap();
        let sink = screen.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = out.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        let keys = child.stdin.take().unwrap();
        let mut pty = Pty {
            child,
            keys,
            screen,
            seen: 0,
        };
        pty.expect("spillway> ");
        pty
    }

    /// A line as typed: the text, then Enter.
    fn send_line(&mut self, line: &str) -> std::io::Result<()> {
        self.send(&format!("{line}\r"));
        Ok(())
    }

    fn send(&mut self, keys: &str) {
        self.keys.write_all(keys.as_bytes()).unwrap();
        self.keys.flush().unwrap();
    }

    /// Wait until `text` appears after what was already matched.
    fn expect(&mut self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            {
                let screen = self.screen.lock().unwrap();
                if let Some(at) = screen[self.seen..].find(text) {
                    self.seen += at + text.len();
                    return;
                }
                if Instant::now() > deadline {
                    panic!(
                        "`{text}` did not appear; the screen after the last match:\n{}",
                        &screen[self.seen..]
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn finish(mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the shell did not end: {}", self.screen.lock().unwrap());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn the_shell_runs_multi_line_sql_completes_names_and_cancels_with_ctrl_c() {
    let ws = Workspace::new();
    let table = ws.gen_claims(2_000, 1, "csv", "claims");
    ws.write("spillway.toml", table);
    ws.write("two.sql", "SELECT 40 + 2 AS answer;\n");
    let mut shell = Pty::start(&ws, "cat");

    // A statement over two lines runs at its `;`.
    shell.send_line("SELECT count(*) AS n").unwrap();
    shell.send_line("FROM claims;").unwrap();
    shell.expect("2000");
    shell.expect("spillway> ");

    // Tab completes a column name.
    shell.send("SELECT min(member_st");
    shell.send("\t");
    std::thread::sleep(Duration::from_millis(300));
    shell
        .send_line(") = min(member_state) AS completed FROM claims;")
        .unwrap();
    shell.expect("true");
    shell.expect("spillway> ");

    // Backslash commands.
    shell.send_line("\\d").unwrap();
    shell.expect("claims");
    shell.expect("spillway> ");
    shell.send_line("\\d claims").unwrap();
    shell.expect("member_id");
    shell.expect("spillway> ");
    shell.send_line("\\timing").unwrap();
    shell.expect("Timing is on.");
    shell.expect("spillway> ");
    shell.send_line("\\i two.sql").unwrap();
    shell.expect("42");
    shell.expect("Time: ");
    shell.expect("spillway> ");
    shell.send_line("\\o out.csv").unwrap();
    shell.expect("Results go to");
    shell.expect("spillway> ");
    shell
        .send_line("SELECT plan_id FROM claims ORDER BY claim_id LIMIT 3;")
        .unwrap();
    shell.expect("Time: ");
    shell.expect("spillway> ");
    shell.send_line("\\o").unwrap();
    shell.expect("Results go to the terminal.");
    shell.expect("spillway> ");

    // Ctrl-C stops a long statement and the session goes on.
    shell
        .send_line("SELECT count(*) FROM claims a, claims b, claims c WHERE a.days_supply + b.days_supply + c.days_supply = -1;")
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    shell.send("\u{3}");
    shell.expect("Cancelled.");
    shell.expect("spillway> ");
    shell.send_line("SELECT 7 * 6 AS again;").unwrap();
    shell.expect("42");
    shell.send_line("\\q").unwrap();
    assert_eq!(shell.finish(), 0);

    let written = std::fs::read_to_string(ws.path("out.csv")).unwrap();
    assert_eq!(written.lines().count(), 4, "{written}");
    assert!(written.starts_with("plan_id\n"), "{written}");
    let history = std::fs::read_to_string(ws.path("history")).unwrap();
    assert!(history.contains("SELECT 7 * 6 AS again;"), "{history}");
}

#[test]
fn results_on_the_terminal_go_through_the_pager_until_it_is_toggled_off() {
    let ws = Workspace::new();
    // The pager keeps a copy of what it is given, and shows it.
    let mut shell = Pty::start(&ws, "tee -a paged.txt");
    shell
        .send_line("SELECT 'through the pager' AS first;")
        .unwrap();
    shell.expect("through the pager");
    shell.expect("spillway> ");
    shell.send_line("\\pager").unwrap();
    shell.expect("Pager is off.");
    shell.expect("spillway> ");
    shell.send_line("SELECT 'straight out' AS second;").unwrap();
    shell.expect("straight out");
    shell.expect("spillway> ");
    shell.send_line("\\q").unwrap();
    assert_eq!(shell.finish(), 0);
    let paged = std::fs::read_to_string(ws.path("paged.txt")).unwrap();
    assert_eq!(
        paged,
        "+-------------------+\n\
         | first             |\n\
         +-------------------+\n\
         | through the pager |\n\
         +-------------------+\n"
    );
}

#[test]
fn plain_spillway_on_a_terminal_opens_the_shell_with_the_engine_flags_given() {
    let ws = Workspace::new();
    let table = ws.gen_claims(1_000, 1, "csv", "claims");
    ws.write("spillway.toml", table);
    // No command, engine flags: the shell, with them.
    let mut shell = Pty::start_as(&ws, "cat", "--memory-limit 64MiB --workers 1");
    shell
        .send_line("SELECT count(*) AS n FROM claims;")
        .unwrap();
    shell.expect("1000");
    shell.expect("spillway> ");
    shell.send_line("\\q").unwrap();
    assert_eq!(shell.finish(), 0);
    // Without a terminal, no command is still a usage error, not a shell waiting for input.
    let out = ws.run(&[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
}
