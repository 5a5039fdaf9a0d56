//! `spillway cluster`: a real Ballista cluster on 127.0.0.1 (one scheduler and two executors,
//! each its own process with its own ports) answers as the local engine does.

use crate::common::{csv_rows, Workspace};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A cluster node process; killed (and reaped) on drop. Keeps what it printed, for failures.
struct Node {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Node {
    fn start(ws: &Workspace, args: &[&str]) -> Node {
        let mut child = ws
            .command()
            .args(args)
            .env("SPILLWAY_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn a cluster node");
        let output = Arc::new(Mutex::new(String::new()));
        let sink = output.clone();
        let pipe = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        Node { child, output }
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Wait until the node printed `needle`; panics with its output after `wait`.
    fn wait_for(&self, needle: &str, wait: Duration) -> String {
        let start = Instant::now();
        loop {
            let output = self.output();
            if let Some(at) = output.find(needle) {
                return output[at..].lines().next().unwrap_or("").to_string();
            }
            assert!(
                start.elapsed() < wait,
                "no `{needle}` within {wait:?}; output:\n{output}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// One scheduler and `executors` executors, each with its own Flight and gRPC ports and a
/// small memory limit.
struct Cluster {
    scheduler: String,
    nodes: Vec<Node>,
}

impl Cluster {
    /// Wait until no executor holds a file of any job (job folders removed), up to 15 s.
    fn wait_for_empty_work_dirs(&self, ws: &Workspace) {
        let start = Instant::now();
        loop {
            let left: Vec<_> = (1..self.nodes.len())
                .flat_map(|i| ws.files_below(&format!("executor-{}", i - 1)))
                .collect();
            if left.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "job files left on the executors: {left:?}\nscheduler:\n{}",
                self.nodes[0].output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `query` on this cluster over the H2O table `x` (`table`: `x=LOCATION`), CSV out.
    fn query_args<'a>(&'a self, table: &'a str, sql: &'a str) -> [&'a str; 8] {
        [
            "query",
            "--cluster",
            &self.scheduler,
            "--table",
            table,
            "--format",
            "csv",
            sql,
        ]
    }

    /// What the executors printed so far.
    fn executor_output(&self) -> String {
        self.nodes[1..]
            .iter()
            .map(Node::output)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Cluster {
    fn start(ws: &Workspace, executors: usize, memory_limit: &str) -> Cluster {
        Cluster::start_with(ws, executors, memory_limit, &[])
    }

    /// As `start`, the scheduler given `scheduler_args` too.
    fn start_with(
        ws: &Workspace,
        executors: usize,
        memory_limit: &str,
        scheduler_args: &[&str],
    ) -> Cluster {
        let mut args = vec!["cluster", "scheduler", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(scheduler_args);
        let scheduler = Node::start(ws, &args);
        let line = scheduler.wait_for("listening on df://", Duration::from_secs(30));
        let address = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("an address")
            .to_string();
        let mut nodes = vec![scheduler];
        let mut flight_ports = Vec::new();
        for i in 0..executors {
            let work_dir = ws.path(&format!("executor-{i}"));
            let (flight, grpc) = (free_port(), free_port());
            let executor = Node::start(
                ws,
                &[
                    "cluster",
                    "executor",
                    "--scheduler",
                    &address,
                    "--flight-port",
                    &flight.to_string(),
                    "--grpc-port",
                    &grpc.to_string(),
                    "--work-dir",
                    work_dir.to_str().unwrap(),
                    "--memory-limit",
                    memory_limit,
                    "--workers",
                    "2",
                ],
            );
            nodes.push(executor);
            flight_ports.push(flight);
        }
        // An executor opens its Flight port once the scheduler has registered it.
        let start = Instant::now();
        for port in flight_ports {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "executors did not start; scheduler:\n{}\nexecutors:\n{}",
                    nodes[0].output(),
                    nodes[1..]
                        .iter()
                        .map(Node::output)
                        .collect::<Vec<_>>()
                        .join("\n---\n")
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Cluster {
            scheduler: address,
            nodes,
        }
    }
}

/// A small H2O table, as CSV in `h2o/` (and, with `parquet`, as Parquet in `h2o-pq/`).
fn h2o_csv(ws: &Workspace) {
    h2o(ws, "csv", "h2o");
}

fn h2o(ws: &Workspace, format: &str, out: &str) {
    ws.run(&[
        "gen", "h2o", "--rows", "200000", "--groups", "10", "--files", "4", "--format", format,
        "--out", out,
    ])
    .success();
}

const QUESTIONS: &[&str] = &[
    "SELECT id1, sum(v1) AS v1 FROM x GROUP BY id1 ORDER BY id1",
    "SELECT id4, id5, median(v3) AS median_v3, count(*) AS n FROM x GROUP BY id4, id5 ORDER BY id4, id5",
    "SELECT id2, id4, corr(v1, v2) AS r FROM x GROUP BY id2, id4 ORDER BY id2, id4",
    "SELECT id6, v3 FROM (SELECT id6, v3, row_number() OVER (PARTITION BY id6 ORDER BY v3 DESC) AS k FROM x WHERE v3 IS NOT NULL) WHERE k <= 2 ORDER BY id6, v3 DESC LIMIT 200",
];

#[test]
fn a_cluster_of_two_executors_answers_exactly_as_the_local_engine() {
    let ws = Workspace::new();
    h2o_csv(&ws);
    h2o(&ws, "parquet", "h2o-pq");
    let cluster = Cluster::start(&ws, 2, "512MiB");
    for table in ["x=h2o/*.csv", "x=h2o-pq/*.parquet"] {
        for sql in QUESTIONS {
            let local = ws.run(&["query", "--table", table, "--format", "csv", sql]);
            let remote = ws.run(&cluster.query_args(table, sql));
            let local_rows = csv_rows(local.success());
            assert!(!local_rows.is_empty(), "{table}: {sql}");
            assert_eq!(csv_rows(remote.success()), local_rows, "{table}: {sql}");
        }
    }
    // Results read to the end: the job's files are removed from the executors.
    cluster.wait_for_empty_work_dirs(&ws);
    // `explain` says where (after the files check: an explained job's files stay until the
    // executors' sweep) a statement runs: on the cluster, or (catalog queries) here.
    let explained = ws.run(&[
        "explain",
        "--cluster",
        &cluster.scheduler,
        "--table",
        "x=h2o/*.csv",
        QUESTIONS[0],
    ]);
    let expected = format!("== runs in ==\ncluster {}:", cluster.scheduler);
    assert!(
        explained.success().starts_with(&expected),
        "{}",
        explained.stdout
    );
    let explained = ws.run(&[
        "explain",
        "--cluster",
        &cluster.scheduler,
        "SELECT * FROM information_schema.tables",
    ]);
    assert!(
        explained
            .success()
            .starts_with("== runs in ==\nthis process\n"),
        "{}",
        explained.stdout
    );
    // Ballista's planner drops a session's physical rules; the executors applied Spillway's to
    // the stages they ran: its CSV decoder read the files.
    let logged = cluster.executor_output();
    assert!(
        logged.contains("rewritten by") && logged.contains("spillway_fast_csv_scan"),
        "{logged}"
    );
}

#[test]
fn an_unreachable_scheduler_is_a_clear_error_naming_its_address_within_seconds() {
    let ws = Workspace::new();
    h2o_csv(&ws);
    let address = format!("df://127.0.0.1:{}", free_port());
    let start = Instant::now();
    let out = ws.run(&[
        "query",
        "--cluster",
        &address,
        "--table",
        "x=h2o/*.csv",
        "SELECT count(*) FROM x",
    ]);
    let message = out.failure(8);
    assert!(message.contains(&address[5..]), "{message}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_bad_cluster_address_is_a_usage_error() {
    let ws = Workspace::new();
    let out = ws.run(&["query", "--cluster", "http://x:1", "SELECT 1"]);
    assert!(out.failure(2).contains("--cluster `http://x:1`"));
}

#[test]
fn a_reader_that_stops_early_cancels_the_job_and_leaves_no_job_files() {
    let ws = Workspace::new();
    h2o_csv(&ws);
    let cluster = Cluster::start(&ws, 2, "512MiB");
    let mut child = ws
        .command()
        .args(cluster.query_args("x=h2o/*.csv", "SELECT * FROM x"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the query");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut header = String::new();
    stdout.read_line(&mut header).expect("the header line");
    assert_eq!(header.trim(), "id1,id2,id3,id4,id5,id6,v1,v2,v3");
    drop(stdout);
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster.nodes[0].wait_for("Received cancellation request", Duration::from_secs(15));
    cluster.wait_for_empty_work_dirs(&ws);
}

#[test]
fn executors_read_s3_with_their_own_settings_and_print_no_secret() {
    use crate::s3::{S3Server, SECRET};
    let ws = Workspace::new();
    h2o(&ws, "parquet", "h2o-pq");
    let server = S3Server::start();
    let bucket = server.bucket("data").join("h2o");
    std::fs::create_dir_all(&bucket).unwrap();
    for file in ws.files_below("h2o-pq") {
        std::fs::copy(&file, bucket.join(file.file_name().unwrap())).unwrap();
    }
    // Every node reads ./spillway.toml: the client, the scheduler and the executors each
    // build their S3 store from it; nothing about the store travels in the job.
    ws.write("spillway.toml", server.config(SECRET, ""));
    let cluster = Cluster::start(&ws, 2, "512MiB");
    let sql = QUESTIONS[1];
    let local = ws.run(&[
        "query",
        "--table",
        "x=h2o-pq/*.parquet",
        "--format",
        "csv",
        sql,
    ]);
    let remote = ws.run(&cluster.query_args("x=s3://data/h2o/*.parquet", sql));
    assert_eq!(csv_rows(remote.success()), csv_rows(local.success()));
    assert!(!remote.stderr.contains(SECRET));
    for node in &cluster.nodes {
        assert!(!node.output().contains(SECRET), "{}", node.output());
    }
}

/// The number in the `on executors:` line of `--stats` after `label` (e.g. "spilled ").
fn executor_stat(stderr: &str, label: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|line| line.starts_with("on executors:"))
        .unwrap_or_else(|| panic!("no `on executors:` line in:\n{stderr}"));
    line.split(label)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no `{label}N` in `{line}`"))
}

#[test]
fn a_stage_out_of_memory_is_retried_conservatively_and_spills_on_the_executors() {
    let ws = Workspace::new();
    ws.gen_claims(300_000, 2, "csv", "claims");
    // 16 MiB per executor: the top 150,000 rows do not fit in a top-k heap, and a sort spills.
    let cluster = Cluster::start(&ws, 2, "16MiB");
    let sql = "SELECT claim_id, member_id, diagnosis_code, plan_id, member_state, total_cost \
               FROM claims ORDER BY total_cost DESC, claim_id LIMIT 150000";
    let local = ws.run(&["query", "-t", "claims=claims/*.csv", "-o", "local.csv", sql]);
    local.success();
    let remote = ws.run(&[
        "query",
        "--cluster",
        &cluster.scheduler,
        "-t",
        "claims=claims/*.csv",
        "--stats",
        "-o",
        "remote.csv",
        sql,
    ]);
    remote.success();
    assert_eq!(
        remote
            .stderr
            .matches("running the query again with a plan that spills more")
            .count(),
        1,
        "{}",
        remote.stderr
    );
    assert!(
        remote.stderr.contains("on the cluster (job "),
        "{}",
        remote.stderr
    );
    assert!(
        executor_stat(&remote.stderr, "spilled ") > 0,
        "{}",
        remote.stderr
    );
    // The pool peak is the executors' (each pool is 60 % of 16 MiB), not this process's.
    let peak_line = remote
        .stderr
        .lines()
        .find(|l| l.starts_with("on executors:"))
        .unwrap();
    assert!(
        peak_line.contains("peak memory") && !peak_line.contains("peak memory 0 B"),
        "{peak_line}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path("remote.csv")).unwrap(),
        std::fs::read_to_string(ws.path("local.csv")).unwrap()
    );
}

#[test]
fn cluster_status_lists_the_executors_and_their_slots_and_checks_a_minimum() {
    let ws = Workspace::new();
    let cluster = Cluster::start(&ws, 2, "512MiB");
    let out = ws.run(&[
        "cluster",
        "status",
        "--cluster",
        &cluster.scheduler,
        "--json",
    ]);
    let status: serde_json::Value = serde_json::from_str(out.success()).expect("JSON");
    let executors = status["executors"].as_array().expect("executors");
    assert_eq!(executors.len(), 2, "{status}");
    for executor in executors {
        // --workers 2: two task slots each.
        assert_eq!(executor["slots"], 2, "{status}");
        assert_eq!(executor["host"], "127.0.0.1", "{status}");
    }
    assert_eq!(status["running_jobs"], 0);
    let text = ws.run(&["cluster", "status", "--cluster", &cluster.scheduler]);
    assert!(
        text.success()
            .contains(": 2 executors, 4 slots; 0 running jobs, 0 queued"),
        "{}",
        text.stdout
    );
    let short = ws.run(&[
        "cluster",
        "status",
        "--cluster",
        &cluster.scheduler,
        "--min-executors",
        "3",
    ]);
    assert!(short.failure(8).contains("fewer than --min-executors 3"));
}

#[test]
fn a_report_and_a_serve_query_run_through_the_cluster_as_they_run_here() {
    use crate::serve::Server;
    let ws = Workspace::new();
    h2o_csv(&ws);
    ws.write(
        "queries/per_id1.sql",
        "/* report\nname = \"per_id1\"\noutput = \"out/{name}.csv\"\nformat = \"csv\"\n*/\n\
         SELECT id1, sum(v1) AS v1, count(*) AS n FROM x GROUP BY id1 ORDER BY id1;\n",
    );
    let cluster = Cluster::start(&ws, 2, "512MiB");
    let local = ws.run(&["report", "run", "per_id1", "-t", "x=h2o/*.csv"]);
    local.success();
    let expected = std::fs::read_to_string(ws.path("out/per_id1.csv")).unwrap();
    std::fs::remove_file(ws.path("out/per_id1.csv")).unwrap();
    let remote = ws.run(&[
        "report",
        "run",
        "per_id1",
        "-t",
        "x=h2o/*.csv",
        "--cluster",
        &cluster.scheduler,
    ]);
    remote.success();
    assert_eq!(
        std::fs::read_to_string(ws.path("out/per_id1.csv")).unwrap(),
        expected
    );

    let server = Server::start(
        &ws,
        &["-t", "x=h2o/*.csv", "--cluster", &cluster.scheduler],
        &[],
    );
    let conninfo = server.conninfo("analyst", "");
    let answer = server.psql(
        &conninfo,
        None,
        &[
            "-F",
            ",",
            "-c",
            "SELECT id1, sum(v1) AS v1, count(*) AS n FROM x GROUP BY id1 ORDER BY id1",
        ],
    );
    let expected_rows: Vec<&str> = expected.lines().skip(1).collect();
    let got_rows: Vec<&str> = answer.success().lines().collect();
    assert_eq!(got_rows, expected_rows);
    // The statement ran as a job; the catalog queries psql's \d sends ran here.
    let explained = server.psql(&conninfo, None, &["-c", "EXPLAIN SELECT count(*) FROM x"]);
    assert!(
        explained.success().contains("distributed_plan"),
        "{}",
        explained.stdout
    );
    let listed = server.psql(&conninfo, None, &["-c", "\\d"]);
    assert!(
        listed.success().contains("public|x|table"),
        "{}",
        listed.stdout
    );
    // Rows read to the end: no job leaves files on the executors.
    cluster.wait_for_empty_work_dirs(&ws);
}

#[test]
fn killing_an_executor_mid_stage_gives_the_local_answer_or_exit_8_within_the_timeout() {
    let ws = Workspace::new();
    ws.run(&[
        "gen", "h2o", "--rows", "2000000", "--groups", "100", "--files", "8", "--out", "h2o",
    ])
    .success();
    let sql =
        "SELECT id3, sum(v1) AS s, count(*) AS c FROM x GROUP BY id3 ORDER BY s DESC, id3 LIMIT 5";
    let local = ws.run(&["query", "-t", "x=h2o/*.csv", "--format", "csv", sql]);
    let mut cluster = Cluster::start_with(&ws, 2, "512MiB", &["--executor-timeout", "6"]);
    let query = ws
        .command()
        .args(cluster.query_args("x=h2o/*.csv", sql))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the query");
    // Kill the executor that runs the first task (SIGKILL: no goodbye to the scheduler).
    // Ballista's placement may give every task to one of the two, so wait for whichever.
    let started = Instant::now();
    let busy = loop {
        if let Some(i) =
            (1..cluster.nodes.len()).find(|&i| cluster.nodes[i].output().contains("Execute task"))
        {
            break i;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no task started"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = cluster.nodes[busy].child.kill();
    let killed_at = Instant::now();
    let out = query.wait_with_output().expect("wait for the query");
    // Documented bound: --executor-timeout, plus one sweep (timeout / 3), plus the re-run.
    assert!(
        killed_at.elapsed() < Duration::from_secs(45),
        "{:?}",
        killed_at.elapsed()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => assert_eq!(csv_rows(&stdout), csv_rows(local.success()), "{stderr}"),
        Some(8) => assert!(stderr.contains("cluster"), "{stderr}"),
        other => panic!("exit {other:?}: {stderr}"),
    }
}

#[test]
fn cluster_mode_auto_sends_only_statements_over_enough_input_and_local_sends_none() {
    let ws = Workspace::new();
    h2o_csv(&ws);
    let cluster = Cluster::start(&ws, 1, "512MiB");
    let runs_in = |config: &str| {
        ws.write("spillway.toml", config);
        let out = ws.run(&["explain", "-t", "x=h2o/*.csv", QUESTIONS[0]]);
        out.success().lines().nth(1).unwrap_or("").to_string()
    };
    let scheduler = format!("[cluster]\nscheduler = \"{}\"\n", cluster.scheduler);
    // The four CSV files hold a few MiB.
    let small = runs_in(&format!(
        "{scheduler}mode = \"auto\"\nauto_threshold = \"1GiB\"\n"
    ));
    assert_eq!(small, "this process");
    let large = runs_in(&format!(
        "{scheduler}mode = \"auto\"\nauto_threshold = \"1KiB\"\n"
    ));
    assert!(
        large.starts_with(&format!("cluster {}", cluster.scheduler)),
        "{large}"
    );
    assert_eq!(
        runs_in(&format!("{scheduler}mode = \"local\"\n")),
        "this process"
    );
    ws.write(
        "spillway.toml",
        format!("{scheduler}mode = \"sometimes\"\n"),
    );
    let bad = ws.run(&["query", "SELECT 1"]);
    assert!(bad
        .failure(3)
        .contains("cluster.mode: unknown mode `sometimes`"));
}

#[test]
fn cluster_traffic_over_tls_gives_the_local_answer_and_plain_clients_are_refused() {
    let ws = Workspace::new();
    h2o_csv(&ws);
    crate::common::test_certificates(&ws, "tls");
    // Every node and the client read ./spillway.toml: the scheduler and the executors serve
    // with the certificate; everyone verifies against the CA.
    ws.write(
        "spillway.toml",
        "[cluster]\ntls_cert = \"tls/node.crt\"\ntls_key = \"tls/node.key\"\nca = \"tls/ca.crt\"\n",
    );
    let cluster = Cluster::start(&ws, 2, "512MiB");
    assert!(
        cluster.nodes[0].output().contains("(TLS)"),
        "{}",
        cluster.nodes[0].output()
    );
    for sql in &QUESTIONS[..2] {
        let local = ws.run(&["query", "--table", "x=h2o/*.csv", "--format", "csv", sql]);
        // Results come from the executors' Flight ports: over TLS, or not at all.
        let remote = ws.run(&cluster.query_args("x=h2o/*.csv", sql));
        assert_eq!(
            csv_rows(remote.success()),
            csv_rows(local.success()),
            "{sql}"
        );
    }
    let status = ws.run(&["cluster", "status", "--cluster", &cluster.scheduler]);
    assert!(
        status.success().contains(": 2 executors, 4 slots"),
        "{}",
        status.stdout
    );
    // A client without the cluster's TLS settings gets nowhere.
    ws.write("plain.toml", "");
    let plain = ws.run(&[
        "--config",
        "plain.toml",
        "cluster",
        "status",
        "--cluster",
        &cluster.scheduler,
    ]);
    assert!(
        plain.failure(8).contains("cannot read the status"),
        "{}",
        plain.stderr
    );
    let plain = ws.run(&[
        "--config",
        "plain.toml",
        "query",
        "--cluster",
        &cluster.scheduler,
        "--table",
        "x=h2o/*.csv",
        QUESTIONS[0],
    ]);
    assert!(plain.failure(8).contains("TLS"), "{}", plain.stderr);
    // No key material in anyone's output.
    let key = std::fs::read_to_string(ws.path("tls/node.key")).unwrap();
    let key_line = key.lines().nth(1).unwrap();
    for node in &cluster.nodes {
        assert!(!node.output().contains(key_line));
    }
}

/// Rows of a CSV text whose last column is a float: the other columns exactly, the last within
/// 1e-12 relative (a cluster adds partial sums in another order).
fn assert_same_rows_float_last(got: &str, want: &str, what: &str) {
    let (got, want): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
    assert_eq!(got.len(), want.len(), "{what}: row counts");
    for (g, w) in got.iter().zip(&want) {
        let (g_head, g_last) = g.rsplit_once(',').unwrap_or((g, ""));
        let (w_head, w_last) = w.rsplit_once(',').unwrap_or((w, ""));
        assert_eq!(g_head, w_head, "{what}");
        match (g_last.parse::<f64>(), w_last.parse::<f64>()) {
            (Ok(a), Ok(b)) => assert!(
                (a - b).abs() <= 1e-12 * b.abs().max(1.0),
                "{what}: {g} vs {w}"
            ),
            _ => assert_eq!(g_last, w_last, "{what}"),
        }
    }
}

#[test]
fn the_founding_report_over_claims_csv_and_parquet_gives_the_local_answer_on_the_cluster() {
    let ws = Workspace::new();
    let csv_config = ws.gen_claims(200_000, 4, "csv", "claims-csv");
    ws.gen_claims(200_000, 4, "parquet", "claims-pq");
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("queries/cost_by_diagnosis_monthly.sql");
    ws.write(
        "queries/cost_by_diagnosis_monthly.sql",
        std::fs::read_to_string(source).unwrap(),
    );
    let cluster = Cluster::start(&ws, 2, "512MiB");
    let output = "reports/cost_by_diagnosis_monthly/2024-06-01.csv";
    for (what, config) in [
        ("csv", csv_config.clone()),
        (
            "parquet",
            "[tables.claims]\nlocation = \"claims-pq/*.parquet\"\nformat = \"parquet\"\n"
                .to_string(),
        ),
    ] {
        ws.write("spillway.toml", &config);
        let run = |extra: &[&str]| {
            let mut args = vec![
                "report",
                "run",
                "cost_by_diagnosis_monthly",
                "--at",
                "2024-06-01",
            ];
            args.extend_from_slice(extra);
            ws.run(&args).success();
            let text = std::fs::read_to_string(ws.path(output)).unwrap();
            std::fs::remove_file(ws.path(output)).unwrap();
            text
        };
        let local = run(&[]);
        let remote = run(&["--cluster", &cluster.scheduler]);
        assert!(local.lines().count() > 100, "{what}: {local}");
        assert_same_rows_float_last(&remote, &local, what);
    }
}

/// An aggregate-only role's small-cell rule runs on the executors too: the cluster drops the
/// same groups the local engine drops (its people counter is registered on every node).
#[test]
fn an_aggregate_only_role_gets_the_same_suppressed_answer_on_the_cluster() {
    let ws = Workspace::new();
    let table = ws.gen_claims(20_000, 2, "csv", "claims");
    ws.write(
        "spillway.toml",
        format!(
            "{table}\n[privacy]\ndefault_role = \"actuary\"\nmin_cell_size = 40\n\n\
             [privacy.columns.claims]\nmember_id = \"subject\"\n\n\
             [privacy.roles.actuary]\naggregate_only = true\n\n\
             [privacy.roles.owner]\nunrestricted = true\n"
        ),
    );
    let sql = "SELECT member_state, brand_generic, count(*) AS n FROM claims \
               GROUP BY member_state, brand_generic ORDER BY member_state, brand_generic";
    let local = ws
        .run(&["query", "--format", "csv", sql])
        .success()
        .to_string();
    let cluster = Cluster::start(&ws, 1, "512MiB");
    let remote = ws
        .run(&[
            "query",
            "--cluster",
            &cluster.scheduler,
            "--format",
            "csv",
            sql,
        ])
        .success()
        .to_string();
    assert_eq!(remote, local);
    let logged = cluster.executor_output();
    assert!(
        logged.contains("rewritten by"),
        "the executors ran no stage: {logged}"
    );
    // The rule bit: some groups are gone, some are left.
    let kept = local.lines().count() - 1;
    let unrestricted = ws
        .run(&["query", "--role", "owner", "--format", "csv", sql])
        .success()
        .to_string();
    let all = unrestricted.lines().count() - 1;
    assert!(kept > 0 && kept < all, "{kept} of {all} groups kept");
}
