//! `spillway serve` with Python's PostgreSQL drivers: SQLAlchemy + psycopg2 (the way Superset
//! connects) and psycopg 3's server-side cursors. The interpreter is the virtual environment
//! `.ci/run` makes (`SPILLWAY_TEST_PYTHON`, default `~/.cache/spillway/pg-venv/bin/python`);
//! without it these tests fail, they do not skip.

use crate::common::Claim;
use crate::serve::{claims_server_workspace, Server};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

pub fn python() -> PathBuf {
    let path = std::env::var_os("SPILLWAY_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/spillway/pg-venv/bin/python")
        });
    assert!(
        path.exists(),
        "{} is missing: run .ci/run, or make it with `python3 -m venv` and \
         `pip install psycopg2-binary sqlalchemy 'psycopg[binary]'`",
        path.display()
    );
    path
}

fn run_script(script: &str, args: &[&str]) -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let output = Command::new(python())
        .arg(&path)
        .args(args)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON object on stdout")
}

fn claims_per_plan(claims: &[Claim]) -> BTreeMap<String, u64> {
    let mut expected = BTreeMap::new();
    for claim in claims {
        *expected.entry(claim.plan_id.clone()).or_default() += 1;
    }
    expected
}

#[test]
fn sqlalchemy_with_psycopg2_connects_reflects_the_tables_and_queries() {
    let (ws, claims) = claims_server_workspace(5_000, "");
    let server = Server::start(&ws, &[], &[]);
    let result = run_script("sqlalchemy_reflect.py", &[&server.port.to_string()]);

    assert_eq!(result["tables"], serde_json::json!(["claims"]));
    let columns: Vec<(String, String)> = serde_json::from_value(result["columns"].clone()).unwrap();
    let names: Vec<&str> = columns.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(&names[..3], ["claim_id", "member_id", "fill_date"]);
    assert!(
        columns.contains(&("fill_date".into(), "DATE".into())),
        "{columns:?}"
    );
    assert!(
        columns.contains(&("plan_paid".into(), "NUMERIC".into())),
        "{columns:?}"
    );
    assert_eq!(result["server_version"][0], 16);
    let per_plan: Vec<(String, u64)> = serde_json::from_value(result["per_plan"].clone()).unwrap();
    assert_eq!(
        per_plan.into_iter().collect::<BTreeMap<_, _>>(),
        claims_per_plan(&claims)
    );
}

#[test]
fn psycopg_server_side_cursors_fetch_in_batches() {
    let (ws, claims) = claims_server_workspace(5_000, "");
    let server = Server::start(&ws, &[], &[]);
    let result = run_script("psycopg_cursor.py", &[&server.port.to_string(), "1000"]);

    let batches: Vec<usize> = serde_json::from_value(result["batches"].clone()).unwrap();
    assert_eq!(batches, vec![1000; 5]);
    let ids: Vec<i64> = serde_json::from_value(result["ids"].clone()).unwrap();
    let mut expected: Vec<i64> = claims.iter().map(|c| c.claim_id).collect();
    expected.sort();
    assert_eq!(ids, expected);
    assert_eq!(
        result["at_least_30"],
        claims.iter().filter(|c| c.days_supply >= 30).count()
    );
    // Each batch was its own FETCH on the server: BEGIN, DECLARE, six FETCHes (the last one
    // empty), the count, and this SHOW are at least ten statements.
    let stats = server.psql(
        &server.conninfo("stats", "sslmode=disable"),
        None,
        &["-F", ",", "-c", "SHOW spillway_stats"],
    );
    let statements: u64 = stats
        .success()
        .lines()
        .find_map(|line| line.strip_prefix("statements,"))
        .expect("a statements row")
        .parse()
        .unwrap();
    assert!(statements >= 10, "{}", stats.stdout);
}
