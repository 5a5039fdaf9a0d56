//! Every class of bad input gets one clear line naming what is at fault, and its exit code.

use crate::common::Workspace;

const USAGE: i32 = 2;
const CONFIG: i32 = 3;
const QUERY: i32 = 4;
const INPUT: i32 = 5;
const OUTPUT: i32 = 6;
const RESOURCES: i32 = 7;

fn workspace() -> Workspace {
    let ws = Workspace::new();
    ws.write("data/t.csv", "dx,cost\nA,10\nB,20\n");
    ws
}

fn query(ws: &Workspace, sql: &str) -> crate::common::Outcome {
    ws.run(&["query", "-t", "t=data/t.csv", sql])
}

#[test]
fn bad_sql_names_the_position() {
    let ws = workspace();
    let err = query(&ws, "SELECT dx FROM t GROUP dx")
        .failure(QUERY)
        .to_string();
    assert!(err.contains("Line: 1, Column: 18"), "{err}");
    let err = query(&ws, "SELECT dx FROM t WHERE")
        .failure(QUERY)
        .to_string();
    assert!(err.contains("at the end of the SQL"), "{err}");
}

#[test]
fn an_unknown_table_or_column_is_named() {
    let ws = workspace();
    let err = query(&ws, "SELECT * FROM nowhere")
        .failure(QUERY)
        .to_string();
    assert!(err.contains("nowhere"), "{err}");
    let err = query(&ws, "SELECT costt FROM t").failure(QUERY).to_string();
    assert!(err.contains("costt"), "{err}");
}

#[test]
fn a_glob_that_matches_nothing_is_named() {
    let ws = workspace();
    let err = ws
        .run(&["query", "-t", "t=data/*.parquet", "SELECT 1"])
        .failure(INPUT)
        .to_string();
    assert!(err.contains("data/*.parquet"), "{err}");
}

#[test]
fn an_unreadable_file_is_named() {
    let ws = workspace();
    ws.write("broken/x.parquet", "this is not parquet");
    let err = ws
        .run(&["query", "-t", "t=broken/x.parquet", "SELECT * FROM t"])
        .failure(INPUT)
        .to_string();
    assert!(err.contains("x.parquet"), "{err}");
}

#[test]
fn a_malformed_csv_record_names_the_file_and_the_record() {
    let ws = workspace();
    ws.write("m/a.csv", "dx,cost\nA,1\nB,2\n");
    ws.write("m/b.csv", "dx,cost\nC,3\nD\nE,5\n");
    let err = ws
        .run(&[
            "query",
            "-t",
            "t=m/*.csv",
            "--format",
            "csv",
            "SELECT dx, cost FROM t",
        ])
        .failure(INPUT)
        .to_string();
    assert!(err.contains("b.csv"), "{err}");
    assert!(!err.contains("a.csv"), "{err}");
    assert!(err.to_lowercase().contains("line"), "{err}");
}

#[test]
fn files_whose_schemas_disagree_are_both_named_with_the_column() {
    let ws = workspace();
    ws.write("s/a.csv", "dx,cost\nA,1\n");
    ws.write("s/b.csv", "dx,price\nB,2\n");
    let err = ws
        .run(&["query", "-t", "t=s/*.csv", "SELECT * FROM t"])
        .failure(INPUT)
        .to_string();
    assert!(err.contains("a.csv") && err.contains("b.csv"), "{err}");
    assert!(err.contains("`cost`") && err.contains("`price`"), "{err}");
}

#[test]
fn a_bad_config_key_or_value_is_named() {
    let ws = workspace();
    ws.write("spillway.toml", "[engine]\nmemroy_limit = \"1GiB\"\n");
    let err = query(&ws, "SELECT 1").failure(CONFIG).to_string();
    assert!(err.contains("memroy_limit"), "{err}");
    ws.write(
        "spillway.toml",
        "[tables.t]\nlocation = \"data/t.csv\"\nschema = { dx = \"blob\" }\n",
    );
    let err = ws.run(&["query", "SELECT 1"]).failure(CONFIG).to_string();
    assert!(
        err.contains("tables.t.schema.dx") && err.contains("blob"),
        "{err}"
    );
}

#[test]
fn a_bad_size_names_the_flag_or_the_variable() {
    let ws = workspace();
    let err = ws
        .run(&["--memory-limit", "lots", "query", "SELECT 1"])
        .failure(USAGE)
        .to_string();
    assert!(
        err.contains("--memory-limit") && err.contains("lots"),
        "{err}"
    );
    let out = ws
        .command()
        .env("SPILLWAY_MAX_SPILL", "12 parsecs")
        .args(["query", "SELECT 1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(USAGE), "{err}");
    assert!(err.contains("12 parsecs"), "{err}");
}

#[test]
fn an_unwritable_output_path_fails_before_the_query_runs() {
    let ws = workspace();
    let err = ws
        .run(&[
            "query",
            "-t",
            "t=data/t.csv",
            "-o",
            "no/such/folder/out.csv",
            "SELECT * FROM t",
        ])
        .failure(OUTPUT)
        .to_string();
    assert!(err.contains("no/such/folder/out.csv"), "{err}");
}

#[test]
fn a_memory_limit_too_small_names_the_consumers_and_suggests_flags() {
    let ws = Workspace::new();
    ws.gen_claims(50_000, 1, "csv", "claims");
    let err = ws
        .run(&[
            "--memory-limit",
            "1MiB",
            "query",
            "-t",
            "c=claims/*.csv",
            "SELECT a.claim_id, b.claim_id FROM c a JOIN c b ON a.member_id = b.member_id",
        ])
        .failure(RESOURCES)
        .to_string();
    assert!(err.contains("consumers"), "{err}");
    assert!(err.contains("--memory-limit"), "{err}");
}

#[test]
fn help_documents_the_exit_codes() {
    let ws = Workspace::new();
    let help = ws.run(&["--help"]);
    let text = help.success();
    for line in [
        "5    input data",
        "7    resources exhausted",
        "130  interrupted",
    ] {
        assert!(text.contains(line), "{text}");
    }
}

#[test]
fn a_glob_over_files_of_different_kinds_names_two_of_them() {
    let ws = workspace();
    ws.write("k/a.csv", "dx,cost\nA,1\n");
    ws.write("k/b.csv.gz", "not really gzip");
    let err = ws
        .run(&["query", "-t", "t=k/*", "SELECT * FROM t"])
        .failure(INPUT)
        .to_string();
    assert!(err.contains("a.csv") && err.contains("b.csv.gz"), "{err}");
}
