//! S3-compatible object stores, against a real server: `s3s-fs` on 127.0.0.1 with SigV4
//! credentials (installed by `.ci/run`: `cargo install s3s-fs --features binary`). Every answer
//! is compared with the same query over the same files on local disk. The standard `AWS_*`
//! variables alone are also tried against a second implementation, moto's server.

use crate::common::{csv_rows, Outcome, Workspace};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ACCESS_KEY: &str = "AKIASPILLWAYTEST";
/// The secret doubles as a sentinel: no output of Spillway may ever contain it.
pub const SECRET: &str = "sentinel-secret-4c0ffee5";

/// A running `s3s-fs` whose buckets are the folders under `root`.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
    root: tempfile::TempDir,
}

fn s3s_fs_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("s3s-fs"))
        .find(|candidate| candidate.is_file());
    let in_cargo_home =
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo/bin/s3s-fs"));
    on_path
        .or(in_cargo_home.filter(|p| p.is_file()))
        .expect("s3s-fs is not installed: run `cargo install s3s-fs --version 0.14.1 --features binary --locked` (.ci/run does)")
}

impl S3Server {
    pub fn start() -> S3Server {
        let root = tempfile::tempdir().expect("server root");
        let mut child = Command::new(s3s_fs_binary())
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--access-key",
                ACCESS_KEY,
                "--secret-key",
                SECRET,
            ])
            .arg(root.path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let stdout = child.stdout.take().expect("server stdout");
        let endpoint = announced_endpoint(stdout, Duration::from_secs(20), "s3s-fs");
        S3Server {
            child,
            endpoint,
            root,
        }
    }

    /// Create a bucket and return its folder (objects are plain files below it).
    pub fn bucket(&self, name: &str) -> PathBuf {
        let path = self.root.path().join(name);
        std::fs::create_dir_all(&path).expect("bucket folder");
        path
    }

    /// Freeze the server: connections are accepted by the kernel but never answered.
    pub fn freeze(&self) {
        let _ = Command::new("kill")
            .args(["-STOP", &self.child.id().to_string()])
            .status();
    }

    /// A config that reaches this server; `extra` lines go into `[storage.s3]`.
    pub fn config(&self, secret: &str, extra: &str) -> String {
        format!(
            "[storage.s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\naccess_key_id = \"{ACCESS_KEY}\"\n\
             secret_access_key = \"{secret}\"\n{extra}\n",
            self.endpoint
        )
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copy a local folder tree into a bucket under `prefix`.
fn upload(local: &Path, bucket: &Path, prefix: &str) {
    for entry in std::fs::read_dir(local).expect("read local") {
        let entry = entry.expect("entry");
        let target = bucket.join(prefix).join(entry.file_name());
        if entry.path().is_dir() {
            let below = Path::new(prefix).join(entry.file_name());
            upload(&entry.path(), bucket, &below.to_string_lossy());
        } else {
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::copy(entry.path(), &target).expect("copy into bucket");
        }
    }
}

fn run(ws: &Workspace, args: &[&str]) -> Outcome {
    run_with(ws, &[], args)
}

/// Run with no `AWS_*` variables but `variables` (and the closed metadata endpoint).
fn run_with(ws: &Workspace, variables: &[(&str, String)], args: &[&str]) -> Outcome {
    let mut command = ws.command();
    for (key, _) in std::env::vars() {
        if key.starts_with("AWS_") && key != "AWS_METADATA_ENDPOINT" {
            command.env_remove(key);
        }
    }
    command.envs(variables.iter().map(|(key, value)| (key, value)));
    let output = command.args(args).output().expect("run spillway");
    let outcome = Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert!(
        !outcome.stdout.contains(SECRET) && !outcome.stderr.contains(SECRET),
        "the secret leaked:\n{}\n{}",
        outcome.stdout,
        outcome.stderr
    );
    outcome
}

/// Two CSV results hold the same rows; floats may differ in their last digits, since partial
/// aggregates are combined in whatever order partitions finish.
fn assert_same_rows(actual: &str, expected: &str, what: &str) {
    let (actual, expected) = (csv_rows(actual), csv_rows(expected));
    assert_eq!(actual.len(), expected.len(), "{what}: row count");
    for (a, e) in actual.iter().zip(&expected) {
        for (x, y) in a.iter().zip(e) {
            let same = x == y
                || match (x.parse::<f64>(), y.parse::<f64>()) {
                    (Ok(x), Ok(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
                    _ => false,
                };
            assert!(same, "{what}: {a:?} != {e:?}");
        }
    }
}

fn query_csv(ws: &Workspace, table: &str, sql: &str) -> String {
    run(ws, &["query", "-t", table, "--format", "csv", sql])
        .success()
        .to_string()
}

/// A workspace with data on local disk under `local/` and the same files in bucket `data`.
fn setup() -> (S3Server, Workspace) {
    let server = S3Server::start();
    let ws = Workspace::new();
    ws.write("spillway.toml", server.config(SECRET, ""));
    (server, ws)
}

#[test]
fn queries_over_s3_globs_answer_as_over_the_same_local_files() {
    let (server, ws) = setup();
    ws.gen_claims(20_000, 3, "csv", "local/claims");
    ws.gen_claims(20_000, 2, "parquet", "local/parquet");
    ws.write("local/nested/a/x.csv", "dx,cost\nA,1\n");
    ws.write("local/nested/a/b/y.csv", "dx,cost\nB,2\n");
    ws.write("local/nested/c/z.csv", "dx,cost\nA,4\n");
    ws.write("local/odd dir/naïve file.csv", "dx,cost\nÉ,8\n");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b"dx,cost\nA,16\nC,32\n").unwrap();
    ws.write("local/gz/part.csv.gz", gz.finish().unwrap());
    upload(&ws.path("local"), &server.bucket("data"), "");

    let founding =
        "SELECT diagnosis_code, count(*) AS n, avg(total_cost) AS mean, stddev(total_cost) AS sd \
                    FROM t GROUP BY diagnosis_code ORDER BY diagnosis_code";
    let small = "SELECT dx, sum(cost) AS s, count(*) AS n FROM t GROUP BY dx ORDER BY dx";
    for (glob, sql) in [
        ("claims/*.csv", founding),
        ("parquet/*.parquet", founding),
        ("nested/**/*.csv", small),
        ("odd dir/naïve file.csv", small),
        ("gz/*.csv.gz", small),
        ("{nested/a,nested/c}/*.csv", small),
    ] {
        let local = query_csv(&ws, &format!("t=local/{glob}"), sql);
        let remote = query_csv(&ws, &format!("t=s3://data/{glob}"), sql);
        assert!(!csv_rows(&local).is_empty(), "{glob}");
        assert_same_rows(&remote, &local, glob);
    }
}

#[test]
fn hive_partitions_on_s3_prune_and_match_local() {
    let (server, ws) = setup();
    ws.write("local/h/year=2023/a.csv", "dx,cost\nA,1\nB,2\n");
    ws.write("local/h/year=2024/b.csv", "dx,cost\nA,4\n");
    upload(&ws.path("local"), &server.bucket("data"), "");
    let config = server.config(SECRET, "") + "\n[tables.local_h]\nlocation = \"local/h\"\nformat = \"csv\"\npartition_columns = [\"year\"]\n\
                  [tables.s3_h]\nlocation = \"s3://data/h\"\nformat = \"csv\"\npartition_columns = [\"year\"]\n";
    ws.write("spillway.toml", config);
    let sql = |table: &str| {
        format!(
            "SELECT year, dx, sum(cost) AS s FROM {table} WHERE year = '2024' GROUP BY year, dx"
        )
    };
    let local = run(&ws, &["query", "--format", "csv", &sql("local_h")])
        .success()
        .to_string();
    let out = run(&ws, &["query", "--format", "csv", "--stats", &sql("s3_h")]);
    assert_eq!(out.success(), local);
    assert_eq!(local, "year,dx,s\n2024,A,4\n");
    assert!(
        out.stderr.contains("files scanned: 1 "),
        "pruned to one file:\n{}",
        out.stderr
    );
}

#[test]
fn a_listing_of_more_than_a_thousand_keys_is_paginated() {
    let (server, ws) = setup();
    let bucket = server.bucket("many");
    for i in 0..1_050 {
        std::fs::create_dir_all(bucket.join("parts")).unwrap();
        std::fs::write(
            bucket.join(format!("parts/p{i:05}.csv")),
            format!("x\n{i}\n"),
        )
        .unwrap();
    }
    let out = query_csv(
        &ws,
        "t=s3://many/parts/*.csv",
        "SELECT count(*) AS n, sum(x) AS s FROM t",
    );
    assert_eq!(out, format!("n,s\n1050,{}\n", (0..1_050).sum::<u64>()));
}

/// Parse `files scanned: 1 (3.1 MiB; 120.0 KiB fetched in 4 requests)` into (size, fetched) bytes.
fn scanned_and_fetched(stderr: &str) -> (f64, f64) {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("files scanned:"))
        .expect("stats line");
    let inside = &line[line.find('(').unwrap() + 1..line.find(')').unwrap()];
    let bytes = |text: &str| {
        let mut words = text.split_whitespace();
        let value: f64 = words.next().unwrap().parse().unwrap();
        value
            * match words.next().unwrap() {
                "B" => 1.0,
                "KiB" => 1024.0,
                "MiB" => 1024.0 * 1024.0,
                "GiB" => 1024.0 * 1024.0 * 1024.0,
                unit => panic!("unit {unit}"),
            }
    };
    let (size, fetched) = inside.split_once(';').unwrap();
    (
        bytes(size),
        bytes(
            fetched
                .trim()
                .trim_end_matches(|c: char| !c.is_ascii_digit() && c != 'B')
                .split(" fetched")
                .next()
                .unwrap(),
        ),
    )
}

#[test]
fn parquet_row_groups_are_pruned_on_s3_so_less_than_the_file_is_fetched() {
    let (server, ws) = setup();
    // Spillway's own Parquet writer makes 128Ki-row groups; sorted values give tight statistics.
    std::fs::create_dir_all(ws.path("local")).unwrap();
    run(
        &ws,
        &[
            "query",
            "-o",
            "local/sorted.parquet",
            "SELECT value, value * 3 AS v3 FROM generate_series(1, 600000) ORDER BY value",
        ],
    )
    .success();
    upload(&ws.path("local"), &server.bucket("data"), "");
    let sql = "SELECT count(*) AS n, sum(v3) AS s FROM t WHERE value > 590000";
    let local = query_csv(&ws, "t=local/sorted.parquet", sql);
    assert_eq!(
        local,
        format!(
            "n,s\n10000,{}\n",
            (590_001..=600_000u64).map(|v| v * 3).sum::<u64>()
        )
    );
    let out = run(
        &ws,
        &[
            "query",
            "-t",
            "t=s3://data/sorted.parquet",
            "--format",
            "csv",
            "--stats",
            sql,
        ],
    );
    assert_eq!(out.success(), local);
    let (size, fetched) = scanned_and_fetched(&out.stderr);
    assert!(
        fetched < size / 2.0,
        "fetched {fetched} of {size} bytes:\n{}",
        out.stderr
    );
}

#[test]
fn results_are_written_to_s3_and_read_back() {
    let (server, ws) = setup();
    ws.write("local/t.csv", "dx,cost\nA,10\nB,20\nA,30\n");
    server.bucket("out");
    let sql = "SELECT dx, sum(cost) AS total FROM t GROUP BY dx ORDER BY dx";
    for name in ["result.csv", "result.parquet"] {
        let url = format!("s3://out/reports/{name}");
        run(&ws, &["query", "-t", "t=local/t.csv", "-o", &url, sql]).success();
        let back = query_csv(&ws, &format!("r={url}"), "SELECT * FROM r ORDER BY dx");
        assert_eq!(back, "dx,total\nA,40\nB,20\n", "{name}");
    }
    // A failed query uploads nothing and leaves no multipart upload behind.
    let out = run(
        &ws,
        &[
            "query",
            "-t",
            "t=local/t.csv",
            "-o",
            "s3://out/reports/failed.csv",
            "SELECT 1/0 AS boom FROM t",
        ],
    );
    assert_ne!(out.code, 0);
    assert!(!server.bucket("out").join("reports/failed.csv").exists());
}

#[test]
fn a_wrong_secret_a_missing_bucket_and_an_empty_glob_are_clear_errors() {
    let (server, ws) = setup();
    let bucket = server.bucket("data");
    std::fs::write(bucket.join("t.csv"), "dx,cost\nA,1\n").unwrap();
    ws.write("spillway.toml", server.config("not-the-secret", ""));
    let err = run(
        &ws,
        &["query", "-t", "t=s3://data/*.csv", "SELECT * FROM t"],
    )
    .failure(8)
    .to_string();
    assert!(
        err.contains("SignatureDoesNotMatch") || err.contains("403"),
        "{err}"
    );
    assert!(!err.contains("not-the-secret"), "{err}");

    ws.write("spillway.toml", server.config(SECRET, ""));
    let err = run(
        &ws,
        &["query", "-t", "t=s3://nobucket/*.csv", "SELECT * FROM t"],
    )
    .failure(8)
    .to_string();
    assert!(
        err.contains("nobucket") && err.contains("NoSuchBucket"),
        "{err}"
    );
    let err = run(
        &ws,
        &["query", "-t", "t=s3://data/*.parquet", "SELECT * FROM t"],
    )
    .failure(5)
    .to_string();
    assert!(err.contains("s3://data/*.parquet"), "{err}");
}

#[test]
fn the_secret_never_appears_in_stats_explain_or_errors() {
    let (server, ws) = setup();
    std::fs::write(server.bucket("data").join("t.csv"), "dx,cost\nA,1\n").unwrap();
    // `run` asserts on every call that the secret is absent from stdout and stderr.
    run(
        &ws,
        &[
            "query",
            "-t",
            "t=s3://data/t.csv",
            "--stats",
            "SELECT * FROM t",
        ],
    )
    .success();
    run(
        &ws,
        &["explain", "-t", "t=s3://data/t.csv", "SELECT * FROM t"],
    )
    .success();
    run(
        &ws,
        &[
            "explain",
            "--analyze",
            "-t",
            "t=s3://data/t.csv",
            "SELECT * FROM t",
        ],
    )
    .success();
    run(
        &ws,
        &["query", "-t", "t=s3://data/t.csv", "SELECT nope FROM t"],
    )
    .failure(4);
    run(
        &ws,
        &["query", "-t", "t=s3://data/missing.csv", "SELECT * FROM t"],
    )
    .failure(5);
    let debug = {
        let mut command = ws.command();
        command.env("SPILLWAY_LOG", "debug").args([
            "query",
            "-t",
            "t=s3://data/t.csv",
            "SELECT * FROM t",
        ]);
        command.output().unwrap()
    };
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&debug.stdout),
        String::from_utf8_lossy(&debug.stderr)
    );
    assert!(!all.contains(SECRET), "the secret leaked into debug logs");
}

#[test]
fn a_server_that_stops_answering_fails_the_query_within_the_retry_bound() {
    let (server, ws) = setup();
    ws.gen_claims(100_000, 4, "csv", "local/claims");
    upload(&ws.path("local"), &server.bucket("data"), "");
    ws.write(
        "spillway.toml",
        server.config(SECRET, "timeout_seconds = 1\nconnect_timeout_seconds = 1\nmax_retries = 2\nretry_timeout_seconds = 3"),
    );
    let mut command = ws.command();
    let child = command
        .args([
            "--workers",
            "1",
            "query",
            "-t",
            "t=s3://data/claims/*.csv",
            "--format",
            "csv",
            "SELECT member_id, count(*) FROM t GROUP BY member_id",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    server.freeze();
    let frozen = Instant::now();
    let output = child.wait_with_output().unwrap();
    let elapsed = frozen.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(8), "{stderr}");
    assert!(
        elapsed < Duration::from_secs(20),
        "took {elapsed:?} to give up"
    );
    assert!(stderr.contains("storage"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// The standard AWS variables alone, with no config file (what the README promises)
// ---------------------------------------------------------------------------------------------

/// Three rows whose sums per `dx` are worked out by hand in [`TOTALS`].
const ROWS: &str = "dx,cost\nA,1\nB,2\nA,4\n";
const TOTALS_SQL: &str = "SELECT dx, sum(cost) AS s FROM t GROUP BY dx ORDER BY dx";
/// A: 1 + 4, B: 2.
const TOTALS: &str = "dx,s\nA,5\nB,2\n";

/// The variables a user of the AWS CLI would set for a local S3 server, and nothing else.
fn aws_variables(endpoint: &str, allow_http: Option<&str>) -> Vec<(&'static str, String)> {
    let mut variables = vec![
        ("AWS_ENDPOINT_URL", endpoint.to_string()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY", SECRET.to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
    ];
    if let Some(value) = allow_http {
        variables.push(("AWS_ALLOW_HTTP", value.to_string()));
    }
    variables
}

#[test]
fn the_standard_aws_variables_alone_read_and_write_s3s_fs_with_or_without_aws_allow_http() {
    let server = S3Server::start();
    let ws = Workspace::new();
    let bucket = server.bucket("data");
    std::fs::write(bucket.join("t.csv"), ROWS).unwrap();
    for allow_http in [None, Some("true")] {
        let variables = aws_variables(&server.endpoint, allow_http);
        let table = "t=s3://data/*.csv";
        let out = run_with(
            &ws,
            &variables,
            &["query", "--format", "csv", "-t", table, TOTALS_SQL],
        );
        assert_eq!(out.success(), TOTALS, "AWS_ALLOW_HTTP={allow_http:?}");
        let copy = "s3://data/out/totals.csv";
        run_with(
            &ws,
            &variables,
            &["query", "-o", copy, "-t", table, TOTALS_SQL],
        )
        .success();
        let written = std::fs::read_to_string(bucket.join("out/totals.csv")).unwrap();
        assert_eq!(written, TOTALS, "AWS_ALLOW_HTTP={allow_http:?}");
        std::fs::remove_dir_all(bucket.join("out")).unwrap();
    }
}

#[test]
fn an_http_endpoint_that_aws_allow_http_forbids_is_an_error_naming_the_variable() {
    // Refused before any request is made, so no server is needed (port 9 is closed anyway).
    let ws = Workspace::new();
    let endpoint = "http://127.0.0.1:9";
    let variables = aws_variables(endpoint, Some("false"));
    let out = run_with(
        &ws,
        &variables,
        &["query", "-t", "t=s3://data/t.csv", TOTALS_SQL],
    );
    let err = out.failure(3);
    assert!(
        err.contains("AWS_ALLOW_HTTP=false")
            && err.contains("AWS_ENDPOINT_URL")
            && err.contains(endpoint),
        "{err}"
    );
}

/// A running moto server (a second, independent S3 implementation, in Python). It keeps its
/// buckets in memory and checks no signatures, so the test fills it with plain HTTP requests.
/// `SPILLWAY_TEST_MOTO` names the `moto_server` binary; `.ci/run` installs it in a venv.
struct MotoServer {
    child: Child,
    endpoint: String,
}

fn moto_binary() -> PathBuf {
    let binary = std::env::var_os("SPILLWAY_TEST_MOTO")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".cache/spillway/moto-venv/bin/moto_server"))
        })
        .expect("HOME or SPILLWAY_TEST_MOTO");
    assert!(
        binary.is_file(),
        "moto is not installed at {}: run `python3 -m venv ~/.cache/spillway/moto-venv && \
         ~/.cache/spillway/moto-venv/bin/pip install 'moto[server]'` (.ci/run does), or set \
         SPILLWAY_TEST_MOTO",
        binary.display()
    );
    binary
}

/// The `http://127.0.0.1:PORT` a server prints in its log once it listens. The log is read to
/// its end on a thread: servers log every request, and a full pipe would stop them.
fn announced_endpoint(
    log: impl std::io::Read + Send + 'static,
    wait: Duration,
    server: &str,
) -> String {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(log).lines().map_while(Result::ok) {
            if let Some(at) = line.find("http://127.0.0.1:") {
                let address: String = line[at..]
                    .chars()
                    .take_while(|c| !c.is_whitespace())
                    .collect();
                let _ = sender.send(address);
            }
        }
    });
    receiver
        .recv_timeout(wait)
        .unwrap_or_else(|_| panic!("{server} did not start"))
}

impl MotoServer {
    fn start() -> MotoServer {
        let mut child = Command::new(moto_binary())
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start moto_server");
        let stderr = child.stderr.take().expect("server stderr");
        let endpoint = announced_endpoint(stderr, Duration::from_secs(30), "moto_server");
        MotoServer { child, endpoint }
    }

    /// One plain HTTP/1.1 request; returns the status code and the body.
    fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        use std::io::Read;
        let address = self.endpoint.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(address).expect("connect to moto");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map_or("", |(_, body)| body)
            .to_string();
        (status, body)
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_standard_aws_variables_alone_read_and_write_moto_too() {
    let server = MotoServer::start();
    let ws = Workspace::new();
    assert_eq!(server.request("PUT", "/data", "").0, 200, "create bucket");
    assert_eq!(
        server.request("PUT", "/data/in/t.csv", ROWS).0,
        200,
        "put object"
    );
    for allow_http in [None, Some("true")] {
        let variables = aws_variables(&server.endpoint, allow_http);
        let table = "t=s3://data/in/*.csv";
        let out = run_with(
            &ws,
            &variables,
            &["query", "--format", "csv", "-t", table, TOTALS_SQL],
        );
        assert_eq!(out.success(), TOTALS, "AWS_ALLOW_HTTP={allow_http:?}");
        let copy = "s3://data/out/totals.csv";
        run_with(
            &ws,
            &variables,
            &["query", "-o", copy, "-t", table, TOTALS_SQL],
        )
        .success();
        assert_eq!(
            server.request("GET", "/data/out/totals.csv", ""),
            (200, TOTALS.to_string()),
            "AWS_ALLOW_HTTP={allow_http:?}"
        );
    }
}
