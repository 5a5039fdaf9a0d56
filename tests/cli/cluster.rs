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
        let scheduler = Node::start(ws, &["cluster", "scheduler", "--listen", "127.0.0.1:0"]);
        let line = scheduler.wait_for("listening on df://", Duration::from_secs(30));
        let address = line
            .split("listening on ")
            .nth(1)
            .expect("an address")
            .trim()
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
