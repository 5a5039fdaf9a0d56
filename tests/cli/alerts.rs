//! Report alerts from the `spillway schedule` daemon, delivered to real receivers the tests
//! start on 127.0.0.1: an HTTP server written here (it answers what each test scripts), a shell
//! command, and an SMTP server (aiosmtpd, in the Python venv `.ci/run` makes) that requires
//! STARTTLS and a login.

use crate::common::Workspace;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DATA: &str = "dx,cost\nA,10\nB,20\nA,30\n";
/// `DATA` summed per dx, by hand: A = 10 + 30, B = 20.
const TOTALS: &str = "dx,total\nA,40\nB,20\n";
const TOTALS_SQL: &str = "SELECT dx, sum(cost) AS total FROM t GROUP BY dx ORDER BY dx\n";
const EVERY_SECOND: &str = "schedule = { cron = \"* * * * * *\", timezone = \"UTC\" }";

/// The secrets a webhook target reads from the environment; neither may be printed.
const HOOK_TOKEN: &str = "T0K3N-path-secret";
const HOOK_AUTH: &str = "Bearer sentinel-hook-auth-77";

/// A report firing every second with extra header lines; `output` under the workspace.
fn report(name: &str, output: &str, header: &str, sql: &str) -> String {
    format!(
        "/* report\nname = \"{name}\"\noutput = \"{output}\"\n{EVERY_SECOND}\n{header}\n*/\n{sql}"
    )
}

/// A report that always fails at run time: its output folder is a plain file.
fn broken(header: &str) -> String {
    report("broken", "blocked/{run_id}.csv", header, TOTALS_SQL)
}

fn workspace(config: &str, reports: &[(&str, String)]) -> Workspace {
    let ws = Workspace::new();
    ws.write("data/t.csv", DATA);
    ws.write("blocked", "a file where the report wants a folder\n");
    ws.write(
        "spillway.toml",
        format!("[tables.t]\nlocation = \"data/t.csv\"\n\n{config}"),
    );
    for (name, text) in reports {
        ws.write(&format!("queries/{name}.sql"), text);
    }
    ws
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Request {
    path: String,
    headers: BTreeMap<String, String>,
    body: String,
}

/// An HTTP receiver on 127.0.0.1: answers the n-th request with `statuses[n]` (then 200), and
/// keeps every request.
struct Receiver {
    url: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Receiver {
    fn start(statuses: Vec<u16>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Some(request) = read_request(&mut stream) else {
                    continue;
                };
                let status = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(request);
                    statuses.get(seen.len() - 1).copied().unwrap_or(200)
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} Scripted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        Receiver { url, requests }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn read_request(stream: &mut std::net::TcpStream) -> Option<Request> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut headers = BTreeMap::new();
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    let length: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        path,
        headers,
        body: String::from_utf8(body).ok()?,
    })
}

/// Start the daemon with `env`, wait until `done` holds (or 30 s), stop it with SIGTERM and
/// return its standard error; it must exit 0.
fn run_daemon(
    ws: &Workspace,
    args: &[&str],
    env: &[(&str, &str)],
    mut done: impl FnMut() -> bool,
) -> String {
    let mut command = ws.command();
    command.args(args).arg("schedule").stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let daemon = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = daemon.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(
        output.status.success(),
        "daemon exit {:?}:\n{log}",
        output.status
    );
    log
}

/// `report history` (or `--alerts`) rows as tab-separated fields, header row dropped.
fn history(ws: &Workspace, args: &[&str]) -> Vec<Vec<String>> {
    let mut full = vec!["report", "history", "--limit", "1000"];
    full.extend_from_slice(args);
    ws.run(&full)
        .success()
        .lines()
        .skip(1)
        .map(|line| line.split('\t').map(str::to_string).collect())
        .collect()
}

// `report history` columns.
const SCHEDULED_FOR: usize = 2;
const STATUS: usize = 6;
const ROWS: usize = 7;
const BYTES: usize = 8;
const OUTPUT: usize = 9;
// `report history --alerts` columns.
const A_REPORT: usize = 1;
const A_SCHEDULED_FOR: usize = 2;
const A_RUN_ID: usize = 3;
const A_EVENT: usize = 4;
const A_TARGET: usize = 5;
const A_TRIES: usize = 6;
const A_DELIVERED: usize = 7;
const A_ERROR: usize = 8;

#[test]
fn a_failed_run_posts_its_webhook_again_after_a_500_and_a_dead_target_never_fails_a_run() {
    let config = "[alerts.hook]\nwebhook_env = \"SPILLWAY_TEST_HOOK\"\n\
                  headers_env = { Authorization = \"SPILLWAY_TEST_HOOK_AUTH\" }\nretries = 2\n\n\
                  [alerts.dead]\nwebhook = \"http://127.0.0.1:9/hook\"\nretries = 1\ntimeout = \"2s\"\n";
    let ws = workspace(
        config,
        &[
            ("broken", broken("retries = 0\non_failure = [\"hook\"]")),
            (
                "fine",
                report(
                    "fine",
                    "out/{run_id}.csv",
                    "on_success = [\"dead\"]",
                    TOTALS_SQL,
                ),
            ),
        ],
    );
    // The first POST is answered 500, every later one 200.
    let receiver = Receiver::start(vec![500]);
    let hook = format!("{}/hooks/{HOOK_TOKEN}", receiver.url);
    let log = run_daemon(
        &ws,
        &[],
        &[
            ("SPILLWAY_TEST_HOOK", &hook),
            ("SPILLWAY_TEST_HOOK_AUTH", HOOK_AUTH),
        ],
        || {
            let requests = receiver.requests();
            requests.len() >= 3 && requests[1..].iter().any(|r| r.body == requests[0].body)
        },
    );

    let requests = receiver.requests();
    assert!(requests.len() >= 3, "{requests:?}\n{log}");
    for request in &requests {
        assert_eq!(request.path, format!("/hooks/{HOOK_TOKEN}"));
        assert_eq!(request.headers["authorization"], HOOK_AUTH);
        assert_eq!(request.headers["content-type"], "application/json");
    }
    // The 500 was followed by the same alert again (other firings' alerts may come between).
    assert!(
        requests[1..].iter().any(|r| r.body == requests[0].body),
        "{requests:?}"
    );
    let failed_runs: Vec<Vec<String>> = history(&ws, &["broken"])
        .into_iter()
        .filter(|run| run[STATUS] == "failed")
        .collect();
    let mut posted = BTreeSet::new();
    for request in &requests {
        let alert: Value = serde_json::from_str(&request.body).unwrap();
        assert_eq!(alert["report"], "broken", "{alert}");
        assert_eq!(alert["status"], "failed", "{alert}");
        assert_eq!(alert["attempt"], 1, "{alert}");
        assert!(
            alert["output"].is_null() && alert["rows"].is_null(),
            "{alert}"
        );
        let scheduled_for = alert["scheduled_for"].as_str().unwrap();
        let run = failed_runs
            .iter()
            .find(|run| alert["run_id"] == run[0].parse::<i64>().unwrap())
            .unwrap_or_else(|| panic!("no failed run {alert} in {failed_runs:?}"));
        assert_eq!(
            chrono::DateTime::parse_from_rfc3339(scheduled_for).unwrap(),
            chrono::DateTime::parse_from_rfc3339(&run[SCHEDULED_FOR]).unwrap()
        );
        let error = alert["error"].as_str().unwrap();
        assert!(error.contains("blocked"), "{error}");
        posted.insert(run[0].clone());
    }
    assert!(posted.len() >= 2, "{requests:?}");

    let alerts = history(&ws, &["--alerts"]);
    // Each failed run was alerted once, delivered; the first after two tries.
    let hook_alerts: Vec<&Vec<String>> = alerts.iter().filter(|a| a[A_TARGET] == "hook").collect();
    let alerted: BTreeSet<String> = hook_alerts.iter().map(|a| a[A_RUN_ID].clone()).collect();
    let failed: BTreeSet<String> = failed_runs.iter().map(|run| run[0].clone()).collect();
    assert_eq!(alerted, failed, "{alerts:?}");
    assert_eq!(
        hook_alerts.len(),
        failed.len(),
        "one alert per failed run: {alerts:?}"
    );
    let first_run: Value = serde_json::from_str(&requests[0].body).unwrap();
    let first_run_id = first_run["run_id"].to_string();
    let first = hook_alerts
        .iter()
        .find(|a| a[A_RUN_ID] == first_run_id)
        .unwrap();
    assert_eq!(
        (
            first[A_REPORT].as_str(),
            first[A_EVENT].as_str(),
            first[A_TRIES].as_str()
        ),
        ("broken", "failed", "2")
    );
    assert!(
        hook_alerts.iter().all(|a| a[A_DELIVERED] == "yes"),
        "{alerts:?}"
    );
    assert!(
        hook_alerts.iter().all(|a| !a[A_SCHEDULED_FOR].is_empty()),
        "{alerts:?}"
    );

    // The dead target failed every delivery, and every `fine` run still succeeded.
    let fine_runs = history(&ws, &["fine"]);
    assert!(!fine_runs.is_empty());
    assert!(
        fine_runs.iter().all(|run| run[STATUS] == "succeeded"),
        "{fine_runs:?}"
    );
    let dead: Vec<&Vec<String>> = alerts.iter().filter(|a| a[A_TARGET] == "dead").collect();
    assert_eq!(dead.len(), fine_runs.len(), "{alerts:?}");
    for alert in dead {
        assert_eq!(
            (
                alert[A_EVENT].as_str(),
                alert[A_TRIES].as_str(),
                alert[A_DELIVERED].as_str()
            ),
            ("succeeded", "2", "no")
        );
        assert!(alert[A_ERROR].contains("127.0.0.1"), "{alert:?}");
    }

    let shown = format!(
        "{log}{}{}",
        ws.run(&["report", "history", "--alerts"]).stdout,
        ws.run(&["report", "history"]).stdout
    );
    for secret in [HOOK_TOKEN, HOOK_AUTH] {
        assert!(!shown.contains(secret), "{secret} shown:\n{shown}");
    }
}

#[test]
fn on_success_runs_a_command_with_the_run_and_late_after_alerts_a_slow_firing_once() {
    // The command runs in the daemon's folder, the workspace.
    let config = "[alerts.log]\ncommand = [\"sh\", \"-c\", \"(printf '%s ' \\\"$SPILLWAY_ALERT_STATUS\\\"; cat; echo) >> alerts.jsonl\"]\n";
    let slow_sql = "SELECT value FROM generate_series(1, 3000000000) ORDER BY value DESC\n";
    let ws = workspace(
        config,
        &[
            (
                "fine",
                report(
                    "fine",
                    "out/{run_id}.csv",
                    "on_success = [\"log\"]",
                    TOTALS_SQL,
                ),
            ),
            (
                "slow",
                report(
                    "slow",
                    "slow/{run_id}.csv",
                    "timeout = \"4s\"\nretries = 0\nlate_after = \"1s\"\non_failure = [\"log\"]",
                    slow_sql,
                ),
            ),
        ],
    );
    let sink = ws.path("alerts.jsonl");
    let lines = || -> Vec<(String, Value)> {
        std::fs::read_to_string(&sink)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let (status, json) = line.split_once(' ')?;
                Some((status.to_string(), serde_json::from_str(json).ok()?))
            })
            .collect()
    };
    // Until the slow report has timed out once (its failure alerted after its late alert).
    run_daemon(&ws, &["--memory-limit", "16MiB"], &[], || {
        lines()
            .iter()
            .any(|(_, alert)| alert["report"] == "slow" && alert["status"] == "failed")
    });
    let alerts = lines();

    // Every successful `fine` run told the command its output, rows and bytes.
    let fine_runs: Vec<Vec<String>> = history(&ws, &["fine"]);
    let fine_alerts: Vec<&Value> = alerts
        .iter()
        .filter(|(_, a)| a["report"] == "fine")
        .map(|(status, a)| {
            assert_eq!(status, "succeeded", "SPILLWAY_ALERT_STATUS");
            a
        })
        .collect();
    assert_eq!(
        fine_alerts.len(),
        fine_runs.len(),
        "{alerts:?}\n{fine_runs:?}"
    );
    for alert in fine_alerts {
        let run = fine_runs
            .iter()
            .find(|run| alert["run_id"] == run[0].parse::<i64>().unwrap())
            .unwrap();
        assert_eq!(run[STATUS], "succeeded");
        assert_eq!(alert["status"], "succeeded");
        assert_eq!(alert["rows"], 2);
        assert_eq!(alert["rows"].to_string(), run[ROWS]);
        assert_eq!(alert["bytes"].to_string(), run[BYTES]);
        assert_eq!(alert["output"].as_str().unwrap(), run[OUTPUT]);
        assert_eq!(
            std::fs::read_to_string(ws.path(&run[OUTPUT])).unwrap(),
            TOTALS
        );
        assert!(alert["error"].is_null());
    }

    // The slow firing: late once, at 1 s, while its attempt ran; then its timeout, alerted as
    // a failure of the same run.
    let slow: Vec<&Value> = alerts
        .iter()
        .filter(|(_, a)| a["report"] == "slow")
        .map(|(_, a)| a)
        .collect();
    let failed = slow.iter().find(|a| a["status"] == "failed").unwrap();
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.ends_with("report `slow` timed out after 4s"),
        "{error}"
    );
    let late: Vec<&&Value> = slow
        .iter()
        .filter(|a| a["scheduled_for"] == failed["scheduled_for"] && a["status"] == "late")
        .collect();
    assert_eq!(late.len(), 1, "{slow:?}");
    assert_eq!(late[0]["run_id"], failed["run_id"]);
    assert_eq!(late[0]["attempt"], 1);
    assert_eq!(
        late[0]["error"],
        "not succeeded 1s after its scheduled time"
    );
    // Firings skipped while the slow run went on were not alerted on their own.
    assert!(slow.iter().all(|a| a["attempt"] == 1), "{slow:?}");
}

/// The SMTP server, killed when dropped.
struct SmtpServer {
    child: Child,
    port: u16,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_smtp(ws: &Workspace, user: &str, password: &str) -> SmtpServer {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/smtp_server.py");
    let mut child = Command::new(crate::serve_python::python())
        .arg(script)
        .args([
            ws.path("tls/node.crt"),
            ws.path("tls/node.key"),
            ws.path("mail.jsonl"),
        ])
        .args([user, password])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("smtp server said {line:?}"));
    SmtpServer { child, port }
}

#[test]
fn a_failure_is_mailed_over_smtp_upgraded_with_starttls_and_logged_in() {
    let ws = Workspace::new();
    crate::common::test_certificates(&ws, "tls");
    let password = "sentinel-smtp-password-31";
    let smtp = start_smtp(&ws, "alerts", password);
    let config = format!(
        "[alerts.oncall]\nsmtp = \"127.0.0.1:{}\"\nfrom = \"spillway@example.test\"\n\
         to = [\"oncall@example.test\", \"backup@example.test\"]\nca_file = \"tls/ca.crt\"\n\
         username_env = \"SPILLWAY_TEST_SMTP_USER\"\npassword_env = \"SPILLWAY_TEST_SMTP_PASSWORD\"\n\n\
         [reports]\non_failure = [\"oncall\"]\n",
        smtp.port
    );
    ws.write("data/t.csv", DATA);
    ws.write("blocked", "a file where the report wants a folder\n");
    ws.write(
        "spillway.toml",
        format!("[tables.t]\nlocation = \"data/t.csv\"\n\n{config}"),
    );
    // The `[reports]` default applies: the header names no target.
    ws.write("queries/broken.sql", broken("retries = 0"));
    let mail = ws.path("mail.jsonl");
    let log = run_daemon(
        &ws,
        &[],
        &[
            ("SPILLWAY_TEST_SMTP_USER", "alerts"),
            ("SPILLWAY_TEST_SMTP_PASSWORD", password),
        ],
        || std::fs::read_to_string(&mail).is_ok_and(|text| text.lines().count() >= 2),
    );
    let messages: Vec<Value> = std::fs::read_to_string(&mail)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(messages.len() >= 2, "{log}");
    for message in &messages {
        assert_eq!(message["tls"], true, "{message}");
        assert_eq!(message["login"], "alerts");
        assert_eq!(message["mail_from"], "spillway@example.test");
        assert_eq!(
            message["rcpt_tos"],
            serde_json::json!(["oncall@example.test", "backup@example.test"])
        );
        let subject = message["subject"].as_str().unwrap();
        assert!(
            subject.starts_with("[spillway] report broken failed (scheduled "),
            "{subject}"
        );
        let body = message["body"].as_str().unwrap().replace("\r\n", "\n");
        assert!(
            body.starts_with("report: broken\nstatus: failed\n"),
            "{body}"
        );
        let json = body
            .lines()
            .find(|line| line.starts_with('{'))
            .unwrap_or_else(|| panic!("no JSON in {body}"));
        let alert: Value = serde_json::from_str(json).unwrap();
        assert_eq!(alert["status"], "failed");
        assert!(alert["error"].as_str().unwrap().contains("blocked"));
    }
    let alerts = history(&ws, &["--alerts", "broken"]);
    assert!(alerts
        .iter()
        .all(|a| a[A_TARGET] == "oncall" && a[A_DELIVERED] == "yes"));
    assert!(!log.contains(password), "{log}");
}

#[test]
fn starttls_is_required_by_default_so_a_server_without_it_gets_no_mail() {
    // A server that speaks SMTP but offers no STARTTLS: the receiver above, which answers any
    // line with an HTTP status, is not SMTP at all, so use a listener that sends a plain banner.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got_mail = Arc::new(Mutex::new(false));
    let flag = got_mail.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let flag = flag.clone();
            std::thread::spawn(move || {
                let _ = stream.write_all(b"220 plain ESMTP\r\n");
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    let command = line.trim().to_ascii_uppercase();
                    let answer: &[u8] = if command.starts_with("EHLO") {
                        b"250-plain\r\n250 8BITMIME\r\n"
                    } else if command.starts_with("MAIL") {
                        *flag.lock().unwrap() = true;
                        b"250 OK\r\n"
                    } else if command.starts_with("QUIT") {
                        let _ = stream.write_all(b"221 bye\r\n");
                        return;
                    } else {
                        b"250 OK\r\n"
                    };
                    let _ = stream.write_all(answer);
                    line.clear();
                }
            });
        }
    });
    let config = format!(
        "[alerts.oncall]\nsmtp = \"127.0.0.1:{port}\"\nfrom = \"spillway@example.test\"\n\
         to = [\"oncall@example.test\"]\nretries = 0\n"
    );
    let ws = workspace(
        &config,
        &[("broken", broken("retries = 0\non_failure = [\"oncall\"]"))],
    );
    run_daemon(&ws, &[], &[], || history(&ws, &["--alerts"]).len() >= 2);
    let alerts = history(&ws, &["--alerts"]);
    assert!(alerts.len() >= 2);
    for alert in &alerts {
        assert_eq!(alert[A_DELIVERED], "no", "{alerts:?}");
        assert!(alert[A_ERROR].contains("127.0.0.1"), "{alerts:?}");
    }
    assert!(!*got_mail.lock().unwrap(), "mail was sent without TLS");
}
