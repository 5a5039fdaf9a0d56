//! `spillway serve`: the real binary on loopback, spoken to by real clients (the `psql` binary
//! and the `tokio-postgres` driver; Python drivers in `serve_python`). Expected answers come
//! from reading the generated CSV by hand.

use crate::common::{read_claims_csv, Claim, Outcome, Workspace};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::{NoTls, SimpleQueryMessage};

/// A running `spillway serve`, stopped (SIGTERM) when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// Start the server in `ws` with `args` after `serve`; waits for its "serving" line.
    pub fn start(ws: &Workspace, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut command = ws.command();
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("SPILLWAY_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn spillway serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read the serving line");
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = stdout.read_to_string(&mut rest);
        });
        let Some(port) = line
            .split("postgres://127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|port| port.parse().ok())
        else {
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(200));
            panic!(
                "no serving line; stdout: {line:?}\nstderr:\n{}",
                stderr.lock().unwrap()
            );
        };
        Server {
            child,
            port,
            stderr,
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// A libpq connection string.
    pub fn conninfo(&self, user: &str, extra: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} dbname=spillway connect_timeout=10 {extra}",
            self.port
        )
    }

    /// Run `psql` (unaligned, tuples only, no psqlrc) with `args`.
    pub fn psql(&self, conninfo: &str, password: Option<&str>, args: &[&str]) -> Outcome {
        let mut command = Command::new("psql");
        command
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", conninfo])
            .args(args)
            .env_remove("PGPASSWORD")
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null());
        if let Some(password) = password {
            command.env("PGPASSWORD", password);
        }
        let output = command.output().expect("run psql (postgresql-client)");
        Outcome {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// A tokio-postgres client (its connection task spawned).
    pub async fn connect(
        &self,
        conninfo: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(conninfo, NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// The server's counters (`SHOW spillway_stats`).
    pub async fn stats(&self) -> BTreeMap<String, String> {
        let client = self
            .connect(&self.conninfo("stats", ""))
            .await
            .expect("connect");
        rows(
            &client
                .simple_query("SHOW spillway_stats")
                .await
                .expect("stats"),
        )
        .into_iter()
        .map(|row| (row[0].clone(), row[1].clone()))
        .collect()
    }

    /// Peak resident memory so far, in MiB (from /proc).
    pub fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        let kib: f64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect("VmHWM");
        kib / 1024.0
    }

    /// SIGTERM, and the exit code.
    pub fn stop(mut self) -> i32 {
        terminate(&mut self.child)
    }
}

fn terminate(child: &mut Child) -> i32 {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("spillway serve did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The text rows of a simple-query result.
pub fn rows(messages: &[SimpleQueryMessage]) -> Vec<Vec<String>> {
    messages
        .iter()
        .filter_map(|message| match message {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("NULL").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// A workspace with `rows` generated claims in `claims/` served as `claims`, plus the config.
pub fn claims_server_workspace(rows: u64, server_config: &str) -> (Workspace, Vec<Claim>) {
    let ws = Workspace::new();
    let claims_table = ws.gen_claims(rows, 2, "csv", "claims");
    ws.write("spillway.toml", format!("{claims_table}\n{server_config}"));
    let claims = read_claims_csv(&ws.path("claims"));
    (ws, claims)
}

/// The session answers: `count(*)` over claims is every claim.
async fn assert_counts_every_claim(client: &tokio_postgres::Client, claims: &[Claim]) {
    let count = rows(
        &client
            .simple_query("SELECT count(*) FROM claims")
            .await
            .unwrap(),
    );
    assert_eq!(count, vec![vec![claims.len().to_string()]]);
}

/// Claims and plan-paid cents per plan, computed by hand.
fn per_plan(claims: &[Claim]) -> BTreeMap<String, (u64, i64)> {
    let mut expected: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    for claim in claims {
        let entry = expected.entry(claim.plan_id.clone()).or_default();
        entry.0 += 1;
        entry.1 += claim.plan_paid_cents;
    }
    expected
}

const PER_PLAN_SQL: &str =
    "SELECT plan_id, count(*) AS claims, CAST(sum(plan_paid) * 100 AS BIGINT) AS paid_cents \
                            FROM claims GROUP BY plan_id ORDER BY plan_id";

fn parse_per_plan(rows: Vec<Vec<String>>) -> BTreeMap<String, (u64, i64)> {
    rows.into_iter()
        .map(|row| {
            (
                row[0].clone(),
                (row[1].parse().unwrap(), row[2].parse().unwrap()),
            )
        })
        .collect()
}

#[test]
fn psql_lists_the_tables_and_answers_a_group_by_exactly() {
    let (ws, claims) = claims_server_workspace(20_000, "");
    let server = Server::start(&ws, &[], &[]);
    let conninfo = server.conninfo("analyst", "sslmode=disable");

    let listing = server.psql(&conninfo, None, &["-c", "\\dt"]);
    assert!(
        listing
            .success()
            .lines()
            .any(|l| l.starts_with("public|claims|table")),
        "\\dt lists claims:\n{}",
        listing.stdout
    );
    let columns = server.psql(&conninfo, None, &["-c", "\\d claims"]);
    for column in ["claim_id|bigint", "fill_date|date", "plan_paid|numeric"] {
        assert!(
            columns.success().contains(column),
            "{column} in:\n{}",
            columns.stdout
        );
    }

    let answer = server.psql(&conninfo, None, &["-F", ",", "-c", PER_PLAN_SQL]);
    let got: Vec<Vec<String>> = answer
        .success()
        .lines()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    assert_eq!(parse_per_plan(got), per_plan(&claims));
    assert_eq!(server.stop(), 0, "SIGTERM stops the server cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_runs_prepared_statements_with_parameters_and_binary_results() {
    let (ws, claims) = claims_server_workspace(20_000, "");
    let server = Server::start(&ws, &[], &[]);
    let client = server.connect(&server.conninfo("app", "")).await.unwrap();

    // Extended protocol: typed parameters in, binary results out.
    let state = claims[0].member_state.clone();
    let min_supply = 30i32;
    let statement = client
        .prepare(
            "SELECT count(*) AS n, sum(days_supply) AS supply FROM claims \
             WHERE member_state = $1 AND days_supply >= $2",
        )
        .await
        .unwrap();
    let row = client
        .query_one(&statement, &[&state, &min_supply])
        .await
        .unwrap();
    let matching: Vec<&Claim> = claims
        .iter()
        .filter(|c| c.member_state == state && c.days_supply >= min_supply)
        .collect();
    assert_eq!(row.get::<_, i64>("n"), matching.len() as i64);
    assert_eq!(
        row.get::<_, i64>("supply"),
        matching.iter().map(|c| c.days_supply as i64).sum::<i64>()
    );

    // Simple protocol, several statements in one message.
    let messages = client
        .simple_query("SELECT 1 AS one; SELECT count(*) FROM claims")
        .await
        .unwrap();
    assert_eq!(
        rows(&messages),
        vec![vec!["1".to_string()], vec![claims.len().to_string()]]
    );

    // SQLAlchemy and psql read the version; it must parse as PostgreSQL's.
    let version: String = client
        .query_one("SELECT version()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(version.starts_with("PostgreSQL 16."), "{version}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_ddl_copy_file_paths_and_engine_settings_are_refused_by_name() {
    let (ws, claims) = claims_server_workspace(2_000, "");
    let secret = ws.write("secret.csv", "a,b\n1,2\n");
    let server = Server::start(&ws, &[], &[]);
    let client = server.connect(&server.conninfo("app", "")).await.unwrap();
    let secret = secret.display().to_string();
    let attempts = [
        ("CREATE TABLE t (a INT)".to_string(), "CREATE TABLE"),
        ("CREATE VIEW v AS SELECT 1".to_string(), "CREATE VIEW"),
        ("DROP TABLE claims".to_string(), "DROP"),
        (
            "INSERT INTO claims (claim_id) VALUES (1)".to_string(),
            "INSERT",
        ),
        ("UPDATE claims SET days_supply = 0".to_string(), "UPDATE"),
        ("DELETE FROM claims".to_string(), "DELETE"),
        ("COPY claims TO '/tmp/stolen.csv'".to_string(), "COPY"),
        (
            format!("CREATE EXTERNAL TABLE s STORED AS CSV LOCATION '{secret}'"),
            "CREATE",
        ),
        ("SELECT * FROM '/etc/passwd'".to_string(), "/etc/passwd"),
        (format!("SELECT * FROM \"{secret}\""), "secret.csv"),
        (
            "SET datafusion.runtime.memory_limit = '100G'".to_string(),
            "datafusion.runtime.memory_limit",
        ),
        (
            "SET datafusion.execution.target_partitions = 64".to_string(),
            "target_partitions",
        ),
        ("SET work_mem = '4GB'".to_string(), "work_mem"),
    ];
    for (sql, named) in &attempts {
        for extended in [false, true] {
            let error = if extended {
                client
                    .query(sql.as_str(), &[])
                    .await
                    .map(|_| ())
                    .unwrap_err()
            } else {
                client.simple_query(sql).await.map(|_| ()).unwrap_err()
            };
            let db = error
                .as_db_error()
                .unwrap_or_else(|| panic!("{sql}: not a server error: {error}"));
            assert!(
                db.message().contains(named),
                "{sql} (extended: {extended}): message names {named}: {}",
                db.message()
            );
            assert!(
                db.code().code() == "25006" || sql.contains("/etc/passwd"),
                "{sql}: SQLSTATE {}",
                db.code().code()
            );
        }
    }
    // Nothing was written, and the session still answers.
    assert!(!std::path::Path::new("/tmp/stolen.csv").exists());
    assert_counts_every_claim(&client, &claims).await;
    // Harmless session settings are accepted.
    client
        .simple_query(
            "SET DateStyle = 'ISO'; SET application_name = 'dash'; SET extra_float_digits = 3",
        )
        .await
        .unwrap();
}

const PASSWORD: &str = "correct horse battery staple";

fn users_config(ws: &Workspace) -> String {
    let verifier = ws
        .run_with_stdin(&["password"], &format!("{PASSWORD}\n"))
        .success()
        .trim()
        .to_string();
    assert!(verifier.starts_with("SCRAM-SHA-256$4096:"), "{verifier}");
    assert!(!verifier.contains("horse"));
    format!(
        "[server.users.analyst]\nscram = \"{verifier}\"\n\n[server.users.robot]\npassword_env = \"ROBOT_PASSWORD\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_users_log_in_and_a_wrong_or_missing_password_is_refused() {
    let ws = Workspace::new();
    let claims_table = ws.gen_claims(1_000, 1, "csv", "claims");
    let config = format!("{claims_table}\n{}", users_config(&ws));
    ws.write("spillway.toml", config);
    let server = Server::start(&ws, &[], &[("ROBOT_PASSWORD", "beep-boop-42")]);

    // psql with the verifier-configured user; tokio-postgres with the env-configured one.
    let ok = server.psql(
        &server.conninfo("analyst", "sslmode=disable"),
        Some(PASSWORD),
        &["-c", "SELECT count(*) FROM claims"],
    );
    assert_eq!(ok.success().trim(), "1000");
    let robot = server
        .connect(&server.conninfo("robot", "password=beep-boop-42"))
        .await
        .unwrap();
    assert_eq!(
        rows(&robot.simple_query("SELECT 40 + 2").await.unwrap()),
        vec![vec!["42".to_string()]]
    );

    let wrong = server.psql(
        &server.conninfo("analyst", "sslmode=disable"),
        Some("Tr0ub4dor&3"),
        &["-c", "SELECT 1"],
    );
    assert_ne!(wrong.code, 0);
    assert!(
        wrong
            .stderr
            .contains("password authentication failed for user \"analyst\""),
        "{}",
        wrong.stderr
    );
    let stranger = server.psql(
        &server.conninfo("mallory", "sslmode=disable"),
        Some(PASSWORD),
        &["-c", "SELECT 1"],
    );
    assert!(
        stranger
            .stderr
            .contains("password authentication failed for user \"mallory\""),
        "{}",
        stranger.stderr
    );
    let none = server
        .connect(&server.conninfo("analyst", ""))
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(format!("{none:?}").contains("password missing"), "{none:?}");

    // No password, verifier or proof appears in the log.
    let log = server.stderr();
    for secret in [PASSWORD, "beep-boop-42", "SCRAM-SHA-256$"] {
        assert!(!log.contains(secret), "log shows {secret}:\n{log}");
    }
    assert!(log.contains("authentication failed"), "{log}");
}

#[test]
fn tls_is_required_when_configured_and_psql_connects_with_sslmode_require() {
    let ws = Workspace::new();
    let claims_table = ws.gen_claims(1_000, 1, "csv", "claims");
    crate::common::test_certificates(&ws, "tls");
    let config = format!(
        "{claims_table}\n[server]\ntls_cert = \"tls/node.crt\"\ntls_key = \"tls/node.key\"\n\n{}",
        users_config(&ws)
    );
    ws.write("spillway.toml", config);
    let server = Server::start(&ws, &[], &[("ROBOT_PASSWORD", "x")]);

    let secure = server.psql(
        &server.conninfo("analyst", "sslmode=require"),
        Some(PASSWORD),
        &["-c", "SELECT count(*) FROM claims", "-c", "\\conninfo"],
    );
    let out = secure.success();
    assert!(out.starts_with("1000\n"), "{out}");
    assert!(out.contains("SSL connection (protocol: TLSv1.3"), "{out}");

    let plain = server.psql(
        &server.conninfo("analyst", "sslmode=disable"),
        Some(PASSWORD),
        &["-c", "SELECT 1"],
    );
    assert_ne!(plain.code, 0);
    assert!(
        plain.stderr.contains("accepts only TLS"),
        "{}",
        plain.stderr
    );

    let anonymous = server.psql(
        &server.conninfo("analyst", "sslmode=require"),
        None,
        &["-w", "-c", "SELECT 1"],
    );
    assert_ne!(anonymous.code, 0, "no credentials, no session");
    assert!(
        anonymous.stderr.contains("password"),
        "{}",
        anonymous.stderr
    );
}

#[test]
fn a_non_loopback_address_without_users_is_refused_before_listening() {
    let ws = Workspace::new();
    let claims_table = ws.gen_claims(100, 1, "csv", "claims");
    ws.write("spillway.toml", claims_table);
    let outcome = ws.run(&["serve", "--listen", "0.0.0.0:0"]);
    let stderr = outcome.failure(3);
    assert!(
        stderr.contains("0.0.0.0:0") && stderr.contains("[server.users"),
        "{stderr}"
    );

    let outcome = ws.run(&["serve", "--listen", "localhost:5432"]);
    assert!(outcome.failure(2).contains("--listen"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_after_max_connections_gets_a_clear_error() {
    let (ws, _) = claims_server_workspace(1_000, "[server]\nmax_connections = 2\n");
    let server = Server::start(&ws, &[], &[]);
    let first = server.connect(&server.conninfo("a", "")).await.unwrap();
    let second = server.connect(&server.conninfo("b", "")).await.unwrap();
    let third = server
        .connect(&server.conninfo("c", ""))
        .await
        .map(|_| ())
        .unwrap_err();
    let db = third.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "53300");
    assert!(db.message().contains("max_connections"), "{}", db.message());
    // The two open sessions are unaffected; closing one frees a place.
    first.simple_query("SELECT 1").await.unwrap();
    drop(second);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut refused = 1;
    let again = loop {
        match server.connect(&server.conninfo("c", "")).await {
            Ok(client) => break client,
            Err(_) if Instant::now() < deadline => {
                refused += 1;
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(error) => panic!("a place never came free: {error}"),
        }
    };
    let stats = rows(&again.simple_query("SHOW spillway_stats").await.unwrap());
    assert!(
        stats.contains(&vec![
            "connections_refused".to_string(),
            refused.to_string()
        ]),
        "{refused} refused: {stats:?}"
    );
}

/// A statement that would run for hours: a count over a trillion generated numbers (it yields
/// between batches, as a scan of a large table does).
const SLOW_SQL: &str =
    "SELECT count(*) FROM generate_series(1, 1000000000000) AS t(x) WHERE x % 7 = 3";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_statement_timeout_and_a_cancel_request_stop_a_running_query() {
    let (ws, claims) = claims_server_workspace(40_000, "[server]\nstatement_timeout = \"2s\"\n");
    let server = Server::start(&ws, &[], &[]);

    let client = server.connect(&server.conninfo("a", "")).await.unwrap();
    let started = Instant::now();
    let error = client.simple_query(SLOW_SQL).await.map(|_| ()).unwrap_err();
    let elapsed = started.elapsed();
    let db = error.as_db_error().expect("server error");
    assert_eq!(db.code().code(), "57014", "{}", db.message());
    assert!(
        db.message().contains("statement timeout"),
        "{}",
        db.message()
    );
    assert!(
        elapsed < Duration::from_secs(30),
        "stopped after {elapsed:?}"
    );

    // A client may ask for less time than the server allows.
    client
        .simple_query("SET statement_timeout = '500ms'")
        .await
        .unwrap();
    let started = Instant::now();
    client.simple_query(SLOW_SQL).await.map(|_| ()).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2) + Duration::from_millis(900));

    // While a statement runs, other sessions are answered; a cancel request from its client
    // stops it, and its session goes on.
    let other = server.connect(&server.conninfo("b", "")).await.unwrap();
    let token = other.cancel_token();
    let running = tokio::spawn(async move {
        let result = other.query(SLOW_SQL, &[]).await.map(|_| ());
        (other, result)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = server.connect(&server.conninfo("c", "")).await.unwrap();
    assert_counts_every_claim(&third, &claims).await;
    assert!(
        !running.is_finished(),
        "the slow statement is still running"
    );
    let cancelled_at = Instant::now();
    token.cancel_query(NoTls).await.unwrap();
    let (other, result) = running.await.unwrap();
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(1),
        "{:?}",
        cancelled_at.elapsed()
    );
    let error = result.unwrap_err();
    let db = error.as_db_error().expect("server error");
    assert_eq!(db.code().code(), "57014");
    assert!(db.message().contains("user request"), "{}", db.message());
    assert_counts_every_claim(&other, &claims).await;

    let stats = server.stats().await;
    assert_eq!(stats["statements_cancelled"], "1");
    assert_eq!(stats["statements_timed_out"], "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_query_fails_at_its_memory_cap_while_other_sessions_answer() {
    let (ws, claims) = claims_server_workspace(100_000, "[server]\nquery_memory = \"4MiB\"\n");
    let server = Server::start(&ws, &["--memory-limit", "512MiB"], &[]);
    let runaway = server
        .connect(&server.conninfo("runaway", ""))
        .await
        .unwrap();
    let other = server.connect(&server.conninfo("dash", "")).await.unwrap();
    // A window over whole partitions buffers its input, and that cannot spill: every claim's
    // codes are far more than 4 MiB.
    let greedy = tokio::spawn(async move {
        runaway
            .simple_query(
                "SELECT max(c), count(DISTINCT k) FROM (SELECT count(*) OVER (PARTITION BY member_state) AS c, \
                 ndc || member_id || diagnosis_code || pharmacy_npi || prescriber_npi AS k FROM claims) t",
            )
            .await
            .map(|_| ())
    });
    assert_counts_every_claim(&other, &claims).await;
    let error = greedy.await.unwrap().unwrap_err();
    let db = error.as_db_error().expect("server error");
    assert!(
        db.message().contains("query_memory") && db.message().contains("4.0 MiB"),
        "{}",
        db.message()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Its memory went back to the pool: what stays reserved is the cached count.
    let stats = server.stats().await;
    assert_eq!(stats["memory_reserved_bytes"], stats["cache_bytes"]);
    assert_ne!(stats["cache_bytes"], "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_query_is_served_from_the_cache_until_a_file_changes() {
    let (ws, claims) = claims_server_workspace(10_000, "");
    let server = Server::start(&ws, &[], &[]);
    let client = server.connect(&server.conninfo("dash", "")).await.unwrap();
    let per_plan_sql = PER_PLAN_SQL;

    let first = parse_per_plan(rows(&client.simple_query(per_plan_sql).await.unwrap()));
    let second = parse_per_plan(rows(&client.simple_query(per_plan_sql).await.unwrap()));
    assert_eq!(first, per_plan(&claims));
    assert_eq!(second, first);
    // Extended protocol with a parameter: its own entry, hit on the second run.
    let by_state = "SELECT count(*) FROM claims WHERE member_state = $1";
    let state = claims[0].member_state.clone();
    let expected_state = claims.iter().filter(|c| c.member_state == state).count() as i64;
    for _ in 0..2 {
        let n: i64 = client.query_one(by_state, &[&state]).await.unwrap().get(0);
        assert_eq!(n, expected_state);
    }
    let stats = server.stats().await;
    assert_eq!(
        (stats["cache_hits"].as_str(), stats["cache_misses"].as_str()),
        ("2", "2")
    );
    assert_eq!(
        server.stderr().matches("cache=\"hit\"").count(),
        2,
        "{}",
        server.stderr()
    );

    // A new file behind the glob: the next identical query misses and sees it.
    ws.write(
        "claims/claims-extra.csv",
        std::fs::read_to_string(ws.path("claims").join(first_csv(&ws))).unwrap(),
    );
    let third = parse_per_plan(rows(&client.simple_query(per_plan_sql).await.unwrap()));
    let mut doubled = claims.clone();
    doubled.extend(read_claims_csv_file(
        &ws.path("claims").join(first_csv(&ws)),
    ));
    assert_eq!(third, per_plan(&doubled));
    let stats = server.stats().await;
    assert_eq!(stats["cache_misses"], "3");

    // A changed file (same name, new size and time) invalidates too.
    let first = std::fs::read_to_string(ws.path("claims").join(first_csv(&ws))).unwrap();
    let ten: String = first.lines().take(11).map(|l| format!("{l}\n")).collect();
    ws.write("claims/claims-extra.csv", &ten);
    let fourth = parse_per_plan(rows(&client.simple_query(per_plan_sql).await.unwrap()));
    let mut plus_ten = claims.clone();
    plus_ten.extend(read_claims_csv_file(&ws.path("claims/claims-extra.csv")));
    assert_eq!(plus_ten.len(), claims.len() + 10);
    assert_eq!(fourth, per_plan(&plus_ten));
    assert_eq!(server.stats().await["cache_misses"], "4");

    // Back to the original files: the result cached for them is still right, and served.
    std::fs::remove_file(ws.path("claims/claims-extra.csv")).unwrap();
    let fifth = parse_per_plan(rows(&client.simple_query(per_plan_sql).await.unwrap()));
    assert_eq!(fifth, per_plan(&claims));
    let stats = server.stats().await;
    assert_eq!(
        (stats["cache_hits"].as_str(), stats["cache_misses"].as_str()),
        ("3", "4")
    );
}

fn first_csv(ws: &Workspace) -> String {
    let mut names: Vec<String> = std::fs::read_dir(ws.path("claims"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".csv") && n != "claims-extra.csv")
        .collect();
    names.sort();
    names.remove(0)
}

fn read_claims_csv_file(path: &std::path::Path) -> Vec<Claim> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(path, dir.path().join("one.csv")).unwrap();
    read_claims_csv(dir.path())
}

const STATE_REPORT: &str = r#"/* report
name = "claims_in_state"
description = "Claims of one member state"
[params.state]
type = "string"
default = "CA"
*/
SELECT count(*) AS claims, sum(days_supply) AS supply FROM claims WHERE member_state = $state
"#;

const PLAN_REPORT: &str = r#"/* report
name = "claims_per_plan"
*/
SELECT plan_id, count(*) AS claims FROM claims GROUP BY plan_id
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_views_and_parameterised_reports_are_table_functions() {
    let (ws, claims) = claims_server_workspace(5_000, "");
    ws.write("queries/claims_in_state.sql", STATE_REPORT);
    ws.write("queries/claims_per_plan.sql", PLAN_REPORT);
    ws.write(
        "queries/orphan.sql",
        "/* report\nname = \"orphan\"\n*/\nSELECT count(*) FROM members\n",
    );
    let server = Server::start(&ws, &[], &[]);
    let client = server.connect(&server.conninfo("dash", "")).await.unwrap();

    let got: BTreeMap<String, u64> = rows(
        &client
            .simple_query("SELECT plan_id, claims FROM claims_per_plan")
            .await
            .unwrap(),
    )
    .into_iter()
    .map(|r| (r[0].clone(), r[1].parse().unwrap()))
    .collect();
    let expected: BTreeMap<String, u64> = per_plan(&claims)
        .into_iter()
        .map(|(plan, (n, _))| (plan, n))
        .collect();
    assert_eq!(got, expected);

    let state = claims[0].member_state.clone();
    let in_state: Vec<&Claim> = claims.iter().filter(|c| c.member_state == state).collect();
    let got = rows(
        &client
            .simple_query(&format!(
                "SELECT claims, supply FROM claims_in_state('{state}')"
            ))
            .await
            .unwrap(),
    );
    assert_eq!(
        got,
        vec![vec![
            in_state.len().to_string(),
            in_state
                .iter()
                .map(|c| c.days_supply as i64)
                .sum::<i64>()
                .to_string()
        ]]
    );
    // A value is a value, never SQL.
    let hostile = rows(
        &client
            .simple_query("SELECT claims FROM claims_in_state('x'' OR 1=1 --')")
            .await
            .unwrap(),
    );
    assert_eq!(hostile, vec![vec!["0".to_string()]]);
    // A report over a table this server lacks is left out, with a warning naming it.
    assert!(
        server.stderr().contains("report `orphan` is not served"),
        "{}",
        server.stderr()
    );
    let listing = server.psql(
        &server.conninfo("dash", "sslmode=disable"),
        None,
        &["-c", "\\dv"],
    );
    assert!(
        listing.success().contains("claims_per_plan"),
        "{}",
        listing.stdout
    );
}

/// The statements BI clients send on connect and when listing tables and columns, replayed
/// from `tests/fixtures/bi/*.sql` (each one found in the client's own source).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_and_introspection_queries_of_bi_clients_are_answered() {
    let (ws, _) = claims_server_workspace(1_000, "");
    let server = Server::start(&ws, &[], &[]);
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bi");
    let mut files: Vec<_> = std::fs::read_dir(&fixtures)
        .expect("tests/fixtures/bi")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "fixtures: {files:?}");
    let mut failures = Vec::new();
    let mut replayed = 0;
    for file in &files {
        let client = server
            .connect(&server.conninfo("bi", "application_name=replay"))
            .await
            .unwrap();
        let text = std::fs::read_to_string(file).unwrap();
        for statement in text.split("\n-- next\n") {
            let sql: String = statement
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n");
            if sql.trim().is_empty() {
                continue;
            }
            replayed += 1;
            if let Err(error) = client.simple_query(&sql).await {
                let message = error
                    .as_db_error()
                    .map(|db| db.message().to_string())
                    .unwrap_or_else(|| error.to_string());
                failures.push(format!(
                    "{}: {}\n    {message}",
                    file.file_name().unwrap().to_string_lossy(),
                    sql.split_whitespace().collect::<Vec<_>>().join(" ")
                ));
            }
        }
    }
    assert!(replayed >= 20, "only {replayed} statements replayed");
    assert!(
        failures.is_empty(),
        "{} of {replayed} statements failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The dashboard load test: 32 clients on loopback, each sending 200 dashboard queries (a mix
/// of panels and filter values, so most repeat and some do not), all answered, none wrong,
/// the server's memory bounded. Prints throughput, latency percentiles, the cache hit ratio
/// and peak RSS (run with `--nocapture` to see them).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_dashboard_clients_get_every_answer_with_bounded_memory() {
    dashboard_load(false).await;
}

/// The same load with `[privacy] audit_log`: every statement's record lands, in one intact
/// chain, although 32 connections append at once (and the throughput line says what it costs).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_dashboard_clients_with_the_audit_log_leave_one_intact_chain() {
    dashboard_load(true).await;
}

async fn dashboard_load(audit: bool) {
    const CLIENTS: usize = 32;
    const QUERIES_PER_CLIENT: usize = 200;
    let privacy = if audit {
        "[privacy]\naudit_log = \"audit.jsonl\"\n"
    } else {
        ""
    };
    let (ws, claims) = claims_server_workspace(100_000, privacy);
    let server = Server::start(&ws, &["--memory-limit", "1GiB"], &[]);

    // Panels: (SQL with one parameter, parameter values, expected answer per value).
    let states: Vec<String> = {
        let mut all: Vec<String> = claims.iter().map(|c| c.member_state.clone()).collect();
        all.sort();
        all.dedup();
        all.truncate(8);
        all
    };
    let count_in_state: BTreeMap<String, i64> = states
        .iter()
        .map(|s| {
            (
                s.clone(),
                claims.iter().filter(|c| &c.member_state == s).count() as i64,
            )
        })
        .collect();
    let supply_in_state: BTreeMap<String, i64> = states
        .iter()
        .map(|s| {
            let total = claims
                .iter()
                .filter(|c| &c.member_state == s)
                .map(|c| c.days_supply as i64)
                .sum();
            (s.clone(), total)
        })
        .collect();
    let plans = per_plan(&claims);
    let expected = Arc::new((count_in_state, supply_in_state, plans));
    let states = Arc::new(states);

    let started = Instant::now();
    let mut tasks = Vec::new();
    for client_index in 0..CLIENTS {
        let conninfo = server.conninfo(&format!("dash{client_index}"), "");
        let expected = expected.clone();
        let states = states.clone();
        tasks.push(tokio::spawn(async move {
            let (client, connection) = tokio_postgres::connect(&conninfo, NoTls).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            let count = client
                .prepare("SELECT count(*) FROM claims WHERE member_state = $1")
                .await?;
            let supply = client
                .prepare("SELECT sum(days_supply) FROM claims WHERE member_state = $1")
                .await?;
            let mut latencies = Vec::with_capacity(QUERIES_PER_CLIENT);
            let mut wrong = 0usize;
            for i in 0..QUERIES_PER_CLIENT {
                let state = &states[(client_index * 7 + i) % states.len()];
                let began = Instant::now();
                match i % 3 {
                    0 => {
                        let n: i64 = client.query_one(&count, &[state]).await?.get(0);
                        wrong += usize::from(n != expected.0[state]);
                    }
                    1 => {
                        let total: i64 = client.query_one(&supply, &[state]).await?.get(0);
                        wrong += usize::from(total != expected.1[state]);
                    }
                    _ => {
                        let got = parse_per_plan(rows(&client.simple_query(PER_PLAN_SQL).await?));
                        wrong += usize::from(got != expected.2);
                    }
                }
                latencies.push(began.elapsed());
            }
            Ok::<_, tokio_postgres::Error>((latencies, wrong))
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    let mut wrong = 0;
    for task in tasks {
        match task.await.expect("client task") {
            Ok((mut own, bad)) => {
                latencies.append(&mut own);
                wrong += bad;
            }
            Err(error) => errors.push(error.to_string()),
        }
    }
    let elapsed = started.elapsed();
    assert!(
        errors.is_empty(),
        "{} clients failed: {errors:?}",
        errors.len()
    );
    assert_eq!(wrong, 0, "wrong answers");
    assert_eq!(latencies.len(), CLIENTS * QUERIES_PER_CLIENT);

    latencies.sort();
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    let stats = server.stats().await;
    let peak = server.peak_rss_mib();
    println!(
        "load{}: {} queries from {CLIENTS} clients in {:.2}s = {:.0} queries/s; p50 {:.2} ms, \
         p99 {:.2} ms, max {:.2} ms; cache hit ratio {} ({} hits, {} misses); peak RSS {peak:.0} MiB",
        if audit { " (audit log on)" } else { "" },
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(0.5).as_secs_f64() * 1e3,
        percentile(0.99).as_secs_f64() * 1e3,
        percentile(1.0).as_secs_f64() * 1e3,
        stats["cache_hit_ratio"],
        stats["cache_hits"],
        stats["cache_misses"],
    );
    let hits: u64 = stats["cache_hits"].parse().unwrap();
    assert!(
        hits >= (CLIENTS * QUERIES_PER_CLIENT) as u64 / 2,
        "{stats:?}"
    );
    assert!(
        peak < 1536.0,
        "peak RSS {peak:.0} MiB above 1.5 x the 1 GiB limit"
    );
    assert_eq!(stats["statements_failed"], "0");
    if audit {
        let verified = ws.run(&["audit", "verify"]);
        assert!(
            verified.success().contains("chain intact"),
            "{}",
            verified.stdout
        );
        let records = std::fs::read_to_string(ws.path("audit.jsonl"))
            .unwrap()
            .lines()
            .filter(|line| line.contains("\"user\":\"dash"))
            .count();
        // Each prepared statement's execution is a record; `prepare` itself is not.
        assert_eq!(records, CLIENTS * QUERIES_PER_CLIENT);
    }
}
