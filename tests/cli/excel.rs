//! Excel workbooks: `.xlsx` tables written by openpyxl and queried by Spillway, and `-o
//! FILE.xlsx` / report `format = "xlsx"` outputs read back by openpyxl and pandas (the
//! interpreter of `serve_python`, with openpyxl and pandas installed by `.ci/run`). Expected
//! values are the fixture's own cells, or the generated claims read by hand.

use crate::common::{read_claims_csv, Claim, Workspace};
use crate::serve_python::python;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Run `tests/python/xlsx_roundtrip.py COMMAND PATH`; its stdout.
fn roundtrip(command: &str, path: &Path) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/xlsx_roundtrip.py");
    let output = Command::new(python())
        .arg(&script)
        .arg(command)
        .arg(path)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "xlsx_roundtrip.py {command} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// The workbook as openpyxl and pandas see it.
fn read_workbook(path: &Path) -> Value {
    serde_json::from_str(&roundtrip("read", path)).expect("one JSON object")
}

/// A sheet's cells as `(type, value, number format)`, row by row.
fn cells(sheet: &Value) -> Vec<Vec<(String, Value, String)>> {
    sheet["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| {
            row.as_array()
                .expect("a row")
                .iter()
                .map(|cell| {
                    (
                        cell["type"].as_str().unwrap().to_string(),
                        cell["value"].clone(),
                        cell["format"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .collect()
}

fn cell(kind: &str, value: Value, format: &str) -> (String, Value, String) {
    (kind.to_string(), value, format.to_string())
}

/// A workspace with the fixture workbook at `book.xlsx`: a text-only first sheet `Notes` and a
/// typed sheet `Claims` (see the script).
fn fixture_workspace() -> Workspace {
    let ws = Workspace::new();
    roundtrip("fixture", &ws.path("book.xlsx"));
    ws
}

#[test]
fn a_sheet_reads_as_a_table_typed_from_its_cells() {
    let ws = fixture_workspace();
    ws.write(
        "spillway.toml",
        "[tables.claims]\nlocation = \"book.xlsx\"\nsheet = \"Claims\"\n",
    );
    let described = ws.run(&["describe", "claims"]);
    assert_eq!(
        described.success(),
        "column,type,nullable\nclaim_id,int64,yes\ncost,float64,yes\nfill_date,date,yes\n\
         filled_at,timestamp,yes\nndc,string,yes\ngeneric,bool,yes\nmixed,string,yes\n\
         column_8,string,yes\n"
    );
    // Typed, so SQL computes on them: dates compare as dates, costs add as numbers, and the
    // NDCs keep their leading zeros.
    let out = ws.run(&[
        "query",
        "--format",
        "csv",
        "SELECT claim_id, cost * 2 AS double_cost, fill_date + INTERVAL '1 day' AS next_day, \
         filled_at, ndc, generic, mixed, column_8 FROM claims \
         WHERE fill_date >= DATE '2024-01-01' ORDER BY claim_id",
    ]);
    assert_eq!(
        out.success(),
        "claim_id,double_cost,next_day,filled_at,ndc,generic,mixed,column_8\n\
         1,25.0,2024-02-01,2024-01-31T14:30:00,00002143380,true,7,x\n\
         2,6.0,2024-03-01,2024-02-29T00:00:05,00456,false,seven,\n"
    );
}

#[test]
fn the_first_sheet_is_read_by_default_and_header_false_reads_the_first_row_as_data() {
    let ws = fixture_workspace();
    let out = ws.run(&[
        "query",
        "-t",
        "t=book.xlsx",
        "--format",
        "csv",
        "SELECT * FROM t",
    ]);
    assert_eq!(out.success(), "note\nfirst sheet\n");
    ws.write(
        "spillway.toml",
        "[tables.t]\nlocation = \"book.xlsx\"\nheader = false\n",
    );
    let out = ws.run(&["query", "--format", "csv", "SELECT * FROM t"]);
    assert_eq!(out.success(), "column_1\nnote\nfirst sheet\n");
}

#[test]
fn an_unknown_sheet_names_the_file_and_its_sheets_and_a_sheet_on_csv_is_refused() {
    let ws = fixture_workspace();
    ws.write(
        "spillway.toml",
        "[tables.t]\nlocation = \"book.xlsx\"\nsheet = \"Claim\"\n",
    );
    let out = ws.run(&["query", "SELECT * FROM t"]);
    let stderr = out.failure(3);
    assert!(
        stderr.contains("book.xlsx` has no sheet `Claim`; its sheets: `Notes`, `Claims`"),
        "{stderr}"
    );
    ws.write("c.csv", "a\n1\n");
    ws.write(
        "spillway.toml",
        "[tables.c]\nlocation = \"c.csv\"\nsheet = \"Claims\"\n",
    );
    let out = ws.run(&["query", "SELECT * FROM c"]);
    let stderr = out.failure(3);
    assert!(
        stderr.contains("tables.c.sheet: only Excel (.xlsx) tables have sheets"),
        "{stderr}"
    );
}

#[test]
fn a_file_that_is_not_a_workbook_is_an_input_error_naming_it() {
    let ws = Workspace::new();
    ws.write("broken.xlsx", "not a zip");
    let out = ws.run(&["query", "-t", "t=broken.xlsx", "SELECT * FROM t"]);
    let stderr = out.failure(5);
    assert!(
        stderr.contains("broken.xlsx`: not a readable .xlsx workbook"),
        "{stderr}"
    );
}

/// Claims in `claims/`, their `[tables.claims]` in `spillway.toml`, and the claims read by
/// hand, ordered by id.
fn claims_workspace(rows: u64) -> (Workspace, Vec<Claim>) {
    let ws = Workspace::new();
    let table = ws.gen_claims(rows, 2, "csv", "claims");
    ws.write("spillway.toml", table);
    let mut claims = read_claims_csv(&ws.path("claims"));
    claims.sort_by_key(|claim| claim.claim_id);
    assert_eq!(claims.len() as u64, rows);
    (ws, claims)
}

fn midnight(date: &str) -> Value {
    json!(format!("{date}T00:00:00"))
}

#[test]
fn an_xlsx_output_has_typed_cells_under_a_frozen_bold_header() {
    let (ws, claims) = claims_workspace(300);
    std::fs::create_dir_all(ws.path("out")).unwrap();
    ws.run(&[
        "query",
        "-o",
        "out/claims.xlsx",
        "SELECT claim_id, member_id, fill_date, ndc, days_supply, copay, quantity, \
         CAST(NULL AS VARCHAR) AS nothing FROM claims ORDER BY claim_id",
    ])
    .success();
    // Published whole: the workbook alone, no temporary file beside it.
    assert_eq!(ws.files_below("out"), [ws.path("out/claims.xlsx")]);
    let book = read_workbook(&ws.path("out/claims.xlsx"));
    let sheets = book["sheets"].as_array().unwrap();
    assert_eq!(sheets.len(), 1, "no About sheet outside reports");
    let sheet = &sheets[0];
    assert_eq!(sheet["freeze_panes"], "A2");
    let header = &sheet["rows"][0];
    let names: Vec<&str> = header
        .as_array()
        .unwrap()
        .iter()
        .map(|cell| cell["value"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "claim_id",
            "member_id",
            "fill_date",
            "ndc",
            "days_supply",
            "copay",
            "quantity",
            "nothing"
        ]
    );
    assert!(header.as_array().unwrap().iter().all(|c| c["bold"] == true));

    let rows = cells(sheet);
    assert_eq!(rows.len(), claims.len() + 1);
    for (row, claim) in rows[1..].iter().zip(&claims) {
        assert_eq!(row[0], cell("int", json!(claim.claim_id), "General"));
        assert_eq!(row[1], cell("str", json!(claim.member_id), "General"));
        assert_eq!(
            row[2],
            cell("datetime", midnight(&claim.fill_date), "yyyy-mm-dd")
        );
        assert_eq!(row[3], cell("str", json!(claim.ndc), "General"));
        assert_eq!(row[4], cell("int", json!(claim.days_supply), "General"));
        // decimal(10,2): a number shown with two decimals.
        assert_eq!(row[5].2, "0.00");
        let copay = row[5].1.as_f64().unwrap();
        assert!(
            (copay * 100.0 - claim.copay_cents as f64).abs() < 1e-6,
            "{row:?}"
        );
        // decimal(10,3).
        assert_eq!(row[6].2, "0.000");
        // NULL: an empty cell.
        assert_eq!(row[7], cell("NoneType", Value::Null, "General"));
    }
    let codes: Vec<&Claim> = claims.iter().filter(|c| c.ndc.starts_with('0')).collect();
    assert!(!codes.is_empty(), "some NDCs have leading zeros to keep");

    // pandas reads the dates as dates and the money as numbers.
    let pandas = &book["pandas"];
    let dtypes: BTreeMap<&str, &str> = pandas["columns"]
        .as_array()
        .unwrap()
        .iter()
        .zip(pandas["dtypes"].as_array().unwrap())
        .map(|(name, dtype)| (name.as_str().unwrap(), dtype.as_str().unwrap()))
        .collect();
    assert_eq!(dtypes["claim_id"], "int64");
    assert!(dtypes["fill_date"].starts_with("datetime64"), "{dtypes:?}");
    assert_eq!(dtypes["copay"], "float64");
    assert_eq!(dtypes["days_supply"], "int64");
    assert_eq!(pandas["rows"][0][2], midnight(&claims[0].fill_date));
}

#[test]
fn a_result_over_excels_row_limit_fails_and_publishes_nothing() {
    let ws = Workspace::new();
    ws.write("big.xlsx", "the previous output");
    // 1,048,576 rows and the header: one row too many.
    let out = ws.run(&[
        "query",
        "-o",
        "big.xlsx",
        "SELECT value AS n FROM generate_series(1, 1048576)",
    ]);
    let stderr = out.failure(6);
    assert!(
        stderr.contains(
            "big.xlsx: the result has more than 1,048,575 rows, and an Excel sheet holds \
             1,048,576 with the header; nothing was published"
        ),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path("big.xlsx")).unwrap(),
        "the previous output"
    );
    assert_eq!(ws.files_below(""), [ws.path("big.xlsx")]);

    // One row fewer fills the sheet exactly.
    ws.run(&[
        "query",
        "-o",
        "big.xlsx",
        "SELECT value AS n FROM generate_series(1, 1048575)",
    ])
    .success();
    assert_eq!(
        roundtrip("dimension", &ws.path("big.xlsx")).trim(),
        "A1:A1048576"
    );
}

const REPORT: &str = r#"/* report
name = "plan_spend_xlsx"
description = "Fills and spend per plan from a date"
output = "reports/{name}/{scheduled_date}.xlsx"
format = "xlsx"
[params.start]
type = "date"
default = "2024-01-01"
[params.min_fills]
type = "int"
default = 1
*/
SELECT plan_id, count(*) AS fills, sum(total_cost) AS total
FROM claims WHERE fill_date >= $start
GROUP BY plan_id HAVING count(*) >= $min_fills ORDER BY plan_id
"#;

#[test]
fn a_report_in_xlsx_has_an_about_sheet_with_its_name_parameters_run_time_and_inputs() {
    let (ws, claims) = claims_workspace(2_000);
    ws.write("queries/plan_spend_xlsx.sql", REPORT);
    ws.run(&[
        "report",
        "run",
        "plan_spend_xlsx",
        "--queries",
        "queries",
        "--at",
        "2024-06-01",
        "--param",
        "start=2024-03-01",
        "--param",
        "min_fills=2",
    ])
    .success();

    // Expected: the claims folded by hand.
    let mut expected: BTreeMap<&str, (u64, i64)> = BTreeMap::new();
    for claim in claims
        .iter()
        .filter(|c| c.fill_date.as_str() >= "2024-03-01")
    {
        let entry = expected.entry(claim.plan_id.as_str()).or_default();
        entry.0 += 1;
        entry.1 += claim.total_cost_cents;
    }
    expected.retain(|_, (fills, _)| *fills >= 2);
    assert!(!expected.is_empty());

    let output = ws.path("reports/plan_spend_xlsx/2024-06-01.xlsx");
    let book = read_workbook(&output);
    let names: Vec<&str> = book["sheets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Sheet1", "About"]);
    let data = cells(&book["sheets"][0]);
    assert_eq!(data.len(), expected.len() + 1);
    for (row, (plan, (fills, cents))) in data[1..].iter().zip(&expected) {
        assert_eq!(row[0], cell("str", json!(plan), "General"));
        assert_eq!(row[1], cell("int", json!(fills), "General"));
        assert_eq!(row[2].2, "0.00");
        let total = row[2].1.as_f64().unwrap();
        assert!((total * 100.0 - *cents as f64).abs() < 1e-6, "{row:?}");
    }

    let about = cells(&book["sheets"][1]);
    let fact = |name: &str| -> (String, Value, String) {
        let row = about
            .iter()
            .find(|row| row[0].1 == json!(name))
            .unwrap_or_else(|| panic!("no `{name}` on the About sheet: {about:?}"));
        row[1].clone()
    };
    assert_eq!(
        fact("report"),
        cell("str", json!("plan_spend_xlsx"), "General")
    );
    assert_eq!(
        fact("description"),
        cell(
            "str",
            json!("Fills and spend per plan from a date"),
            "General"
        )
    );
    assert_eq!(
        fact("parameter start"),
        cell("str", json!("2024-03-01"), "General")
    );
    assert_eq!(
        fact("parameter min_fills"),
        cell("str", json!("2"), "General")
    );
    assert_eq!(
        fact("scheduled for (UTC)"),
        cell("datetime", midnight("2024-06-01"), "yyyy-mm-dd hh:mm:ss")
    );
    assert_eq!(fact("run started (UTC)").0, "datetime");
    let run_time = fact("run time (seconds)");
    assert_eq!(run_time.2, "0.000");
    assert!(
        run_time
            .1
            .as_f64()
            .is_some_and(|s| (0.0..60.0).contains(&s)),
        "{run_time:?}"
    );
    assert_eq!(fact("rows"), cell("int", json!(expected.len()), "General"));

    // The input fingerprints: one row per claims file, with its size in bytes.
    let header = about
        .iter()
        .position(|row| row[0].1 == json!("input table"))
        .expect("the inputs header");
    let columns: Vec<&Value> = about[header].iter().map(|c| &c.1).collect();
    assert_eq!(
        columns,
        [
            &json!("input table"),
            &json!("file"),
            &json!("bytes"),
            &json!("modified"),
            &json!("etag")
        ]
    );
    let mut inputs: Vec<(String, u64)> = about[header + 1..]
        .iter()
        .map(|row| {
            assert_eq!(row[0].1, json!("claims"));
            let path = row[1].1.as_str().unwrap();
            let name = path.rsplit('/').next().unwrap().to_string();
            (name, row[2].1.as_u64().unwrap())
        })
        .collect();
    inputs.sort();
    let mut files: Vec<(String, u64)> = ws
        .files_below("claims")
        .iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::metadata(path).unwrap().len())
        })
        .collect();
    files.sort();
    assert_eq!(inputs, files);

    // The manifest names the workbook's bytes.
    let bytes = std::fs::read(&output).unwrap();
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(ws.path("reports/plan_spend_xlsx/_SUCCESS-2024-06-01.xlsx.json"))
            .unwrap(),
    )
    .unwrap();
    let sha256: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(manifest["sha256"], sha256.as_str());
    assert_eq!(manifest["bytes"], bytes.len() as u64);
    assert_eq!(manifest["rows"], expected.len() as u64);
}
