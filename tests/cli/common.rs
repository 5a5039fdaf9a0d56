//! Helpers for black-box tests of the `spillway` binary: a scratch folder to run it in, and
//! an independent reader of generated claims files for computing expected answers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A scratch folder the binary runs in, removed at the end of the test.
pub struct Workspace {
    dir: tempfile::TempDir,
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn from_output(output: Output) -> Outcome {
        Outcome {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Assert success and return stdout.
    pub fn success(&self) -> &str {
        assert_eq!(self.code, 0, "expected success; stderr:\n{}", self.stderr);
        &self.stdout
    }

    /// Assert failure with `code`, one error line, and return stderr.
    pub fn failure(&self, code: i32) -> &str {
        assert_eq!(
            self.code, code,
            "expected exit {code}; stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        let error_lines = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("spillway: error:"))
            .count();
        assert_eq!(
            error_lines, 1,
            "expected one error line; stderr:\n{}",
            self.stderr
        );
        &self.stderr
    }
}

impl Workspace {
    pub fn new() -> Workspace {
        Workspace {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Write a file (creating folders) and return its path.
    pub fn write(&self, relative: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, contents).expect("write");
        path
    }

    /// The binary, run in this folder, with no `SPILLWAY_*` settings from the environment.
    /// `SPILLWAY_TEST_BIN` runs the tests against another build (a release binary, for the
    /// load test's figures).
    pub fn command(&self) -> Command {
        let binary = std::env::var_os("SPILLWAY_TEST_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_spillway").into());
        let mut command = Command::new(binary);
        command.current_dir(self.dir.path());
        for (key, _) in std::env::vars() {
            if key.starts_with("SPILLWAY_") {
                command.env_remove(key);
            }
        }
        command.env("AWS_METADATA_ENDPOINT", "http://127.0.0.1:9");
        command.stdin(Stdio::null());
        command
    }

    pub fn run(&self, args: &[&str]) -> Outcome {
        Outcome::from_output(self.command().args(args).output().expect("run spillway"))
    }

    /// Run with `input` on stdin.
    pub fn run_with_stdin(&self, args: &[&str], input: &str) -> Outcome {
        use std::io::Write;
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        Outcome::from_output(child.wait_with_output().expect("wait"))
    }

    /// Generate claims with the binary's generator; returns the `[tables.claims]` section of a
    /// `spillway.toml` that reads them, as the generator prints it (`--print-config`: for CSV
    /// with the explicit schema, so NDCs keep their leading zeros and money stays decimal).
    pub fn gen_claims(&self, rows: u64, files: usize, format: &str, out: &str) -> String {
        self.run(&[
            "gen",
            "claims",
            "--rows",
            &rows.to_string(),
            "--files",
            &files.to_string(),
            "--format",
            format,
            "--out",
            out,
            "--seed",
            "7",
            "--print-config",
        ])
        .success()
        .to_string()
    }

    /// Every file below `relative`, recursively (to check that nothing was left behind).
    pub fn files_below(&self, relative: &str) -> Vec<PathBuf> {
        fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, found);
                } else {
                    found.push(path);
                }
            }
        }
        let mut found = Vec::new();
        walk(&self.path(relative), &mut found);
        found.sort();
        found
    }
}

/// One generated claim, read independently of Spillway (plain string splitting).
#[derive(Debug, Clone)]
pub struct Claim {
    pub claim_id: i64,
    pub member_id: String,
    /// `YYYY-MM-DD`, as written (so text order is date order).
    pub fill_date: String,
    pub ndc: String,
    /// `B` or `G`.
    pub brand_generic: String,
    pub diagnosis_code: String,
    pub pharmacy_npi: String,
    pub plan_id: String,
    pub member_state: String,
    pub days_supply: i32,
    pub copay_cents: i64,
    pub plan_paid_cents: i64,
    pub total_cost_cents: i64,
}

impl Claim {
    /// The first day of the fill date's month, `YYYY-MM-01`.
    pub fn fill_month(&self) -> String {
        format!("{}-01", &self.fill_date[..7])
    }
}

/// Read every `claims-*.csv` below `folder` by hand.
pub fn read_claims_csv(folder: &Path) -> Vec<Claim> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(folder)
        .expect("read claims folder")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    paths.sort();
    let mut claims = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).expect("read csv");
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().expect("header").split(',').collect();
        let column = |name: &str| header.iter().position(|h| *h == name).expect(name);
        let (id, member, date, ndc, brand, dx) = (
            column("claim_id"),
            column("member_id"),
            column("fill_date"),
            column("ndc"),
            column("brand_generic"),
            column("diagnosis_code"),
        );
        let (pharmacy, plan, state, supply) = (
            column("pharmacy_npi"),
            column("plan_id"),
            column("member_state"),
            column("days_supply"),
        );
        let (copay, paid, total) = (column("copay"), column("plan_paid"), column("total_cost"));
        for line in lines {
            let fields: Vec<&str> = line.split(',').collect();
            claims.push(Claim {
                claim_id: fields[id].parse().expect("claim_id"),
                member_id: fields[member].to_string(),
                fill_date: fields[date].to_string(),
                ndc: fields[ndc].to_string(),
                brand_generic: fields[brand].to_string(),
                diagnosis_code: fields[dx].to_string(),
                pharmacy_npi: fields[pharmacy].to_string(),
                plan_id: fields[plan].to_string(),
                member_state: fields[state].to_string(),
                days_supply: fields[supply].parse().expect("days_supply"),
                copay_cents: cents(fields[copay]),
                plan_paid_cents: cents(fields[paid]),
                total_cost_cents: cents(fields[total]),
            });
        }
    }
    claims
}

/// `123.45` → 12345. Rounded, not truncated: without an explicit schema CSV money columns are
/// inferred as floats, and their sums print as `63.849999999`.
pub fn cents(text: &str) -> i64 {
    (text.parse::<f64>().expect("a number") * 100.0).round() as i64
}

/// Parse CSV output (no quoting in our test data) into rows of fields, header dropped.
pub fn csv_rows(text: &str) -> Vec<Vec<String>> {
    text.lines().skip(1).map(csv_fields).collect()
}

/// The fields of one CSV line (RFC 4180 quoting: `"a, b"` is one field, `""` inside quotes is
/// a quote). Values with line breaks are not expected in these tests.
pub fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut().unwrap().push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(String::new()),
            _ => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

/// Parse `--stats` output: the number before " spills".
pub fn spill_count(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("spilled:"))
        .expect("a spilled: line");
    line.split_whitespace()
        .nth(1)
        .expect("count")
        .parse()
        .expect("number")
}

/// Parse `--stats` output: peak RSS in MiB (`peak RSS:      137.3 MiB`).
pub fn peak_rss_mib(stderr: &str) -> f64 {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("peak RSS:"))
        .expect("a peak RSS: line");
    let mut words = line.split_whitespace().skip(2);
    let number: f64 = words.next().expect("number").parse().expect("a number");
    match words.next() {
        Some("KiB") => number / 1024.0,
        Some("MiB") => number,
        Some("GiB") => number * 1024.0,
        other => panic!("unexpected unit {other:?} in {line}"),
    }
}

/// A CA and a certificate it signed for 127.0.0.1, in the folder `dir` of `ws` (PEM): `ca.crt`,
/// `node.crt`, `node.key`.
pub fn test_certificates(ws: &Workspace, dir: &str) {
    std::fs::create_dir_all(ws.path(dir)).unwrap();
    let script = "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj '/CN=spillway test CA' \
                    -keyout ca.key -out ca.crt \
                  && openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout node.key -out node.csr \
                  && printf 'subjectAltName=IP:127.0.0.1\\n' > san \
                  && openssl x509 -req -in node.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
                    -extfile san -out node.crt";
    let made = Command::new("sh")
        .args(["-c", script])
        .current_dir(ws.path(dir))
        .output()
        .expect("openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
}
