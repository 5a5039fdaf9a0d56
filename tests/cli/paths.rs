//! Paths with `.` and `..` in them, typed as a user in a sibling folder would
//! (`cd acceptance && spillway query --table x=../data/t.csv ...`). Spillway resolves them
//! lexically, as the shell's `cd` does: `missing/../x` is `x` even when `missing` does not
//! exist, and nothing is created along the way.

use crate::common::{Outcome, Workspace};

/// Three rows whose sums per `dx` are worked out by hand in [`TOTALS`].
const ROWS: &str = "dx,cost\nA,1\nB,2\nA,4\n";
const TOTALS_SQL: &str = "SELECT dx, sum(cost) AS s FROM x GROUP BY dx ORDER BY dx";
/// A: 1 + 4, B: 2.
const TOTALS: &str = "dx,s\nA,5\nB,2\n";

/// A workspace with `data/t.csv` and an empty `acceptance/` folder to run from.
fn workspace() -> Workspace {
    let ws = Workspace::new();
    ws.write("data/t.csv", ROWS);
    std::fs::create_dir_all(ws.path("acceptance")).expect("acceptance folder");
    ws
}

/// Run the binary with `folder` (below the workspace) as the current directory.
fn run_in(ws: &Workspace, folder: &str, args: &[&str]) -> Outcome {
    let output = ws
        .command()
        .current_dir(ws.path(folder))
        .args(args)
        .output()
        .expect("run spillway");
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[test]
fn a_table_location_with_dot_dot_reads_the_files_it_leads_to() {
    let ws = workspace();
    let absolute = format!("{}/acceptance/../data/./t.csv", ws.path("").display());
    for location in [
        "../data/t.csv",
        "./../data/t.csv",
        "../data/*.csv",
        "../data",
        "../acceptance/../data/t.csv",
        absolute.as_str(),
    ] {
        let table = format!("x={location}");
        let out = run_in(
            &ws,
            "acceptance",
            &["query", "--format", "csv", "-t", &table, TOTALS_SQL],
        );
        assert_eq!(out.success(), TOTALS, "{location}");
    }
}

#[test]
fn an_output_path_with_dot_dot_is_written_where_it_leads_without_creating_the_detour() {
    let ws = workspace();
    std::fs::create_dir_all(ws.path("out")).expect("out folder");
    for (output, lands_at) in [
        ("../out/result.csv", "out/result.csv"),
        ("not-yet/../result.csv", "acceptance/result.csv"),
    ] {
        let table = "x=../data/t.csv";
        run_in(
            &ws,
            "acceptance",
            &["query", "-t", table, "-o", output, TOTALS_SQL],
        )
        .success();
        let written = std::fs::read_to_string(ws.path(lands_at)).expect(lands_at);
        assert_eq!(written, TOTALS, "{output}");
    }
    assert!(!ws.path("acceptance/not-yet").exists());
}

#[test]
fn config_paths_with_dot_dot_are_followed_for_the_file_and_the_locations_it_names() {
    let ws = workspace();
    ws.write(
        "spillway.toml",
        "[tables.x]\nlocation = \"../data/./t.csv\"\nformat = \"csv\"\n",
    );
    let out = run_in(
        &ws,
        "acceptance",
        &[
            "--config",
            "missing/../../spillway.toml",
            "query",
            "--format",
            "csv",
            TOTALS_SQL,
        ],
    );
    assert_eq!(out.success(), TOTALS);
}

#[test]
fn a_report_output_with_dot_dot_is_published_where_it_leads_with_its_manifest() {
    let ws = workspace();
    ws.write(
        "spillway.toml",
        "[tables.x]\nlocation = \"data/t.csv\"\nformat = \"csv\"\n",
    );
    ws.write(
        "queries/totals.sql",
        format!(
            "/* report\nname = \"totals\"\noutput = \"detour/../published/{{name}}.csv\"\n*/\n{TOTALS_SQL}\n"
        ),
    );
    ws.run(&["report", "run", "totals", "--queries", "queries"])
        .success();
    let written = std::fs::read_to_string(ws.path("published/totals.csv")).expect("output");
    assert_eq!(written, TOTALS);
    assert!(ws.path("published/_SUCCESS-totals.csv.json").is_file());
    assert!(!ws.path("detour").exists());
}
