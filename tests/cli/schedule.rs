//! `spillway report` commands and the `spillway schedule` daemon, end to end on real processes.

use crate::common::Workspace;
use std::process::Stdio;
use std::time::{Duration, Instant};

const DATA: &str = "dx,cost\nA,10\nB,20\nA,30\n";

/// A workspace with a table `t` in spillway.toml and a report folder.
fn workspace(reports: &[(&str, &str)]) -> Workspace {
    let ws = Workspace::new();
    ws.write("data/t.csv", DATA);
    ws.write("spillway.toml", "[tables.t]\nlocation = \"data/t.csv\"\n");
    for (name, text) in reports {
        ws.write(&format!("queries/{name}.sql"), text);
    }
    ws
}

fn every_second(name: &str, output: &str) -> String {
    format!(
        "/* report\nname = \"{name}\"\noutput = \"{output}\"\nschedule = {{ cron = \"* * * * * *\", timezone = \"UTC\" }}\n*/\n\
         SELECT dx, sum(cost) AS total FROM t GROUP BY dx ORDER BY dx\n"
    )
}

#[test]
fn list_shows_each_report_with_its_next_three_fire_times() {
    let daily = "/* report\nname = \"daily\"\ndescription = \"Every day\"\nschedule = { cron = \"30 6 * * *\", timezone = \"America/New_York\" }\n*/\nSELECT 1\n";
    let ws = workspace(&[("daily", daily), ("plain", "SELECT 2\n")]);
    let out = ws.run(&["report", "list"]);
    let text = out.success();
    let line = text
        .lines()
        .find(|l| l.starts_with("daily\t"))
        .expect("daily listed");
    // 06:30 in New York is 10:30 or 11:30 UTC depending on daylight saving time.
    assert_eq!(line.matches(":30:00Z").count(), 3, "{line}");
    assert!(
        !text.contains("plain"),
        "a file without a header is not a report:\n{text}"
    );
}

#[test]
fn validate_plans_without_running_and_names_the_file_of_a_bad_report() {
    let good = "/* report\nname = \"good\"\n[params.min]\ntype = \"int\"\ndefault = 1\n*/\nSELECT dx FROM t WHERE cost >= $min\n";
    let bad = "/* report\nname = \"bad\"\n*/\nSELECT no_such_column FROM t\n";
    let ws = workspace(&[("good", good), ("bad", bad)]);
    assert!(ws
        .run(&["report", "validate", "good"])
        .success()
        .contains("good: ok"));
    let err = ws.run(&["report", "validate"]).failure(4).to_string();
    assert!(
        err.contains("bad.sql") && err.contains("no_such_column"),
        "{err}"
    );
    let undeclared = "/* report\nname = \"undeclared\"\n*/\nSELECT dx FROM t WHERE cost > $nope\n";
    ws.write("queries/bad.sql", undeclared);
    let err = ws
        .run(&["report", "validate", "undeclared"])
        .failure(3)
        .to_string();
    assert!(err.contains("$nope"), "{err}");
}

#[test]
fn run_binds_parameters_as_data_and_history_records_it() {
    let report = "/* report\nname = \"by_dx\"\noutput = \"out/{name}-{dx}.csv\"\n[params.dx]\ntype = \"string\"\ndefault = \"A\"\n*/\n\
                  SELECT dx, sum(cost) AS total FROM t WHERE dx = $dx GROUP BY dx\n";
    let ws = workspace(&[("by_dx", report)]);
    ws.run(&["report", "run", "by_dx"]).success();
    assert_eq!(
        std::fs::read_to_string(ws.path("out/by_dx-A.csv")).unwrap(),
        "dx,total\nA,40\n"
    );
    ws.run(&["report", "run", "by_dx", "--param", "dx=B"])
        .success();
    assert_eq!(
        std::fs::read_to_string(ws.path("out/by_dx-B.csv")).unwrap(),
        "dx,total\nB,20\n"
    );
    // A hostile value is a string like any other: no rows, and the table is still there.
    let hostile = "x'; DROP TABLE t; --";
    ws.run(&[
        "report",
        "run",
        "by_dx",
        "--param",
        &format!("dx={hostile}"),
    ])
    .success();
    ws.run(&["report", "run", "by_dx", "--param", "dx=A"])
        .success();
    let history = ws.run(&["report", "history", "by_dx"]);
    let rows: Vec<&str> = history.success().lines().skip(1).collect();
    assert_eq!(rows.len(), 4, "{}", history.stdout);
    assert!(
        rows.iter().all(|row| row.contains("\tsucceeded\t")),
        "{}",
        history.stdout
    );
    assert!(
        rows[0].contains("out/by_dx-A.csv"),
        "newest first:\n{}",
        history.stdout
    );
}

#[test]
fn the_daemon_fires_each_second_records_history_and_stops_cleanly_on_sigterm() {
    let ws = workspace(&[("tick", &every_second("tick", "out/{name}/{run_id}.csv"))]);
    let daemon = ws
        .command()
        .args(["schedule"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(3500));
    let status = std::process::Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let stopped = Instant::now();
    let output = daemon.wait_with_output().unwrap();
    assert!(stopped.elapsed() < Duration::from_secs(10));
    assert!(output.status.success(), "daemon exit {:?}", output.status);
    let log = String::from_utf8_lossy(&output.stderr);
    let run_lines = log
        .lines()
        .filter(|l| l.contains("report tick for"))
        .count();
    let history = ws.run(&["report", "history", "tick"]);
    let succeeded = history
        .success()
        .lines()
        .filter(|l| l.contains("\tsucceeded\t"))
        .count();
    assert!(
        succeeded >= 2,
        "expected at least two runs:\n{}",
        history.stdout
    );
    assert_eq!(run_lines, succeeded, "one log line per run:\n{log}");
    let outputs: Vec<_> = ws.files_below("out/tick");
    let csvs = outputs
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .count();
    let manifests = outputs
        .iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("_SUCCESS-")
        })
        .count();
    assert_eq!(csvs, succeeded, "{outputs:?}");
    assert_eq!(manifests, succeeded, "{outputs:?}");
    assert!(
        outputs
            .iter()
            .all(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.')),
        "temporary files left: {outputs:?}"
    );
    for csv in outputs
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
    {
        assert_eq!(
            std::fs::read_to_string(csv).unwrap(),
            "dx,total\nA,40\nB,20\n"
        );
    }
}

#[test]
fn a_second_daemon_on_the_same_history_refuses_to_start() {
    let ws = workspace(&[("tick", &every_second("tick", "out/{run_id}.csv"))]);
    let mut first = ws
        .command()
        .args(["schedule"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let second = ws.run(&["schedule"]);
    let _ = first.kill();
    let _ = first.wait();
    assert_ne!(second.code, 0);
    assert!(second.stderr.contains("daemon"), "{}", second.stderr);
}

#[test]
fn a_run_killed_with_sigkill_shows_as_incomplete_and_publishes_nothing() {
    let slow = "/* report\nname = \"slow\"\noutput = \"out/slow.csv\"\n*/\n\
                SELECT value FROM generate_series(1, 3000000000) ORDER BY value DESC\n";
    let ws = workspace(&[("slow", slow)]);
    ws.write("out/slow.csv", "previous complete result\n");
    let mut run = ws
        .command()
        .args(["--memory-limit", "16MiB", "report", "run", "slow"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let _ = run.kill();
    let _ = run.wait();
    let history = ws.run(&["report", "history", "slow"]);
    let text = history.success();
    assert!(
        text.lines()
            .nth(1)
            .is_some_and(|l| l.contains("\tincomplete\t")),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path("out/slow.csv")).unwrap(),
        "previous complete result\n"
    );
}

/// A report over a query that runs for minutes under 16 MiB (it sorts three billion numbers, so
/// it spills), bounded by a one-second timeout.
const SLOW_WITH_TIMEOUT: &str = "name = \"slow\"\ntimeout = \"1s\"\n";
const SLOW_SQL: &str = "SELECT value FROM generate_series(1, 3000000000) ORDER BY value DESC\n";

#[test]
fn report_run_past_its_timeout_is_cancelled_and_recorded_as_timeout_at_once() {
    let slow = format!("/* report\n{SLOW_WITH_TIMEOUT}output = \"out/slow.csv\"\n*/\n{SLOW_SQL}");
    let ws = workspace(&[("slow", &slow)]);
    ws.write("out/slow.csv", "previous complete result\n");
    let started = Instant::now();
    let run = ws.run(&["--memory-limit", "16MiB", "report", "run", "slow"]);
    let err = run.failure(7);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(err.contains("report `slow` timed out after 1s"), "{err}");
    let history = ws.run(&["report", "history", "slow"]);
    let text = history.success();
    let rows: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{text}");
    let fields: Vec<&str> = rows[0].split('\t').collect();
    assert_eq!(fields[6], "timeout", "{text}");
    assert_eq!(fields[10], "timed out after 1s", "{text}");
    assert_eq!(
        std::fs::read_to_string(ws.path("out/slow.csv")).unwrap(),
        "previous complete result\n"
    );
    let left: Vec<_> = ws.files_below("out");
    assert_eq!(left, [ws.path("out/slow.csv")], "nothing else is published");
}

#[test]
fn a_scheduled_run_past_its_timeout_is_recorded_as_timeout_while_the_daemon_runs() {
    let slow = format!(
        "/* report\n{SLOW_WITH_TIMEOUT}output = \"out/{{run_id}}.csv\"\n\
         schedule = {{ cron = \"* * * * * *\", timezone = \"UTC\" }}\n*/\n{SLOW_SQL}"
    );
    let ws = workspace(&[("slow", &slow)]);
    let mut daemon = ws
        .command()
        .args(["--memory-limit", "16MiB", "schedule"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut text = String::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        text = ws.run(&["report", "history", "slow"]).success().to_string();
        if text.lines().any(|l| l.contains("\ttimeout\t")) {
            break;
        }
    }
    let daemon_still_running = daemon.try_wait().unwrap().is_none();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let _ = daemon.wait();
    assert!(daemon_still_running, "the daemon ended early:\n{text}");
    let timed_out: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .filter(|fields| fields.get(6) == Some(&"timeout"))
        .collect();
    assert!(!timed_out.is_empty(), "no run recorded as timeout:\n{text}");
    for fields in timed_out {
        assert_eq!(fields[10], "timed out after 1s", "{text}");
        assert!(
            !fields[2].is_empty(),
            "a scheduled run has its time:\n{text}"
        );
    }
    let csvs = ws
        .files_below("out")
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .count();
    assert_eq!(csvs, 0, "a timed-out run publishes nothing");
}
