//! Result formats, atomic file output, and cancellation.

use crate::common::Workspace;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Int64Type;
use std::time::{Duration, Instant};

const DATA: &str = "dx,cost\nA,10\nB,20\nA,30\nC,5\n";
const SQL: &str = "SELECT dx, sum(cost) AS total FROM t GROUP BY dx ORDER BY dx";

fn workspace() -> Workspace {
    let ws = Workspace::new();
    ws.write("data/t.csv", DATA);
    ws
}

fn query_to(ws: &Workspace, path: &str) {
    ws.run(&["query", "-t", "t=data/t.csv", "-o", path, SQL])
        .success();
}

#[test]
fn text_formats_write_the_rows_as_their_standards_say() {
    let ws = workspace();
    let cases = [
        ("r.csv", "dx,total\nA,40\nB,20\nC,5\n"),
        ("r.tsv", "dx\ttotal\nA\t40\nB\t20\nC\t5\n"),
        ("r.ndjson", "{\"dx\":\"A\",\"total\":40}\n{\"dx\":\"B\",\"total\":20}\n{\"dx\":\"C\",\"total\":5}\n"),
        ("r.json", "[{\"dx\":\"A\",\"total\":40},{\"dx\":\"B\",\"total\":20},{\"dx\":\"C\",\"total\":5}]"),
    ];
    for (name, expected) in cases {
        query_to(&ws, name);
        let text = std::fs::read_to_string(ws.path(name)).unwrap();
        assert_eq!(text.trim_end(), expected.trim_end(), "{name}");
    }
}

fn read_columns(batches: &[datafusion::arrow::array::RecordBatch]) -> (Vec<String>, Vec<i64>) {
    let mut names = Vec::new();
    let mut totals = Vec::new();
    for batch in batches {
        let dx = batch.column(0);
        let dx =
            datafusion::arrow::compute::cast(dx, &datafusion::arrow::datatypes::DataType::Utf8)
                .unwrap();
        let dx = dx.as_string::<i32>();
        let total = batch.column(1).as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            names.push(dx.value(row).to_string());
            totals.push(total.value(row));
        }
        assert_eq!(total.null_count(), 0);
    }
    (names, totals)
}

#[test]
fn parquet_and_arrow_files_read_back_to_the_same_rows() {
    let ws = workspace();
    query_to(&ws, "r.parquet");
    let file = std::fs::File::open(ws.path("r.parquet")).unwrap();
    let reader =
        datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(file, 1024)
            .unwrap();
    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    let expected = (
        vec!["A".to_string(), "B".into(), "C".into()],
        vec![40, 20, 5],
    );
    assert_eq!(read_columns(&batches), expected);

    query_to(&ws, "r.arrow");
    let file = std::fs::File::open(ws.path("r.arrow")).unwrap();
    let reader = datafusion::arrow::ipc::reader::FileReader::try_new(file, None).unwrap();
    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    assert_eq!(read_columns(&batches), expected);
}

#[test]
fn the_table_format_caps_rows_and_says_how_many_it_left_out() {
    let ws = workspace();
    let out = ws.run(&[
        "query",
        "-t",
        "t=data/t.csv",
        "--format",
        "table",
        "--max-rows",
        "2",
        SQL,
    ]);
    let text = out.success();
    assert!(text.contains("| A  | 40    |"), "{text}");
    assert!(!text.contains("| C "), "{text}");
    assert!(
        text.contains("3 rows; showing the first 2 (1 left out"),
        "{text}"
    );
}

#[test]
fn piped_output_defaults_to_csv() {
    let ws = workspace();
    let out = ws.run(&["query", "-t", "t=data/t.csv", SQL]);
    assert_eq!(out.success(), "dx,total\nA,40\nB,20\nC,5\n");
}

#[test]
fn a_failed_query_leaves_the_previous_output_and_no_temporary_file() {
    let ws = workspace();
    ws.write("bad/a.csv", "dx,cost\nA,1\n");
    ws.write("bad/b.csv", "dx,cost\nB,2\nC,not-a-number\n");
    ws.write("out/result.csv", "previous complete result\n");
    let out = ws.run(&[
        "query",
        "-t",
        "t=bad/*.csv",
        "--infer-rows",
        "1",
        "-o",
        "out/result.csv",
        "SELECT dx, sum(cost) FROM t GROUP BY dx",
    ]);
    out.failure(5);
    assert_eq!(
        std::fs::read_to_string(ws.path("out/result.csv")).unwrap(),
        "previous complete result\n"
    );
    assert_eq!(ws.files_below("out"), vec![ws.path("out/result.csv")]);
}

#[test]
fn sigterm_cancels_promptly_and_leaves_no_output_or_spill_files() {
    let ws = Workspace::new();
    let mut child = ws
        .command()
        .args([
            "--memory-limit",
            "16MiB",
            "--spill-dir",
            "spill",
            "query",
            "-o",
            "out.csv",
            "SELECT value FROM generate_series(1, 2000000000) ORDER BY value DESC",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the sort has spilled, so there is something to clean up.
    let deadline = Instant::now() + Duration::from_secs(60);
    while ws.files_below("spill").is_empty() {
        assert!(Instant::now() < deadline, "the query never spilled");
        assert!(child.try_wait().unwrap().is_none(), "the query ended early");
        std::thread::sleep(Duration::from_millis(100));
    }
    let temp_outputs = std::fs::read_dir(ws.path("."))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".spillway-tmp"))
        .count();
    assert_eq!(
        temp_outputs, 1,
        "the output is being written under a temporary name"
    );
    let signalled = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "cancelling took {:?}",
        signalled.elapsed()
    );
    assert_eq!(
        output.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!ws.path("out.csv").exists());
    let left: Vec<_> = std::fs::read_dir(ws.path("."))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.iter().all(|name| name == "spill"),
        "left behind: {left:?}"
    );
    assert!(
        ws.files_below("spill").is_empty(),
        "spill files left: {:?}",
        ws.files_below("spill")
    );
}

/// Parse `peak RSS:      87.6 MiB` from `--stats` output, in MiB.
fn peak_rss_mib(stderr: &str) -> f64 {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("peak RSS:"))
        .expect("a peak RSS line");
    let mut words = line.split_whitespace().skip(2);
    let value: f64 = words.next().expect("value").parse().expect("number");
    match words.next() {
        Some("GiB") => value * 1024.0,
        Some("MiB") => value,
        Some("KiB") => value / 1024.0,
        other => panic!("unexpected unit {other:?}"),
    }
}

#[test]
fn a_large_result_streams_into_a_pipe_in_bounded_memory() {
    let ws = Workspace::new();
    let rows = 3_000_000u64;
    let out = ws.run(&[
        "query", "--stats", "--format", "csv",
        &format!("SELECT value, value * 2 AS twice, 'claim-' || value AS label FROM generate_series(1, {rows})"),
    ]);
    let text = out.success();
    assert_eq!(text.lines().count() as u64, rows + 1);
    // Rows may interleave across partitions; every value must arrive exactly once, intact.
    let mut sum = 0u64;
    for line in text.lines().skip(1) {
        let mut fields = line.split(',');
        let value: u64 = fields.next().unwrap().parse().unwrap();
        assert_eq!(fields.next().unwrap().parse::<u64>().unwrap(), value * 2);
        assert_eq!(fields.next().unwrap(), format!("claim-{value}"));
        sum += value;
    }
    assert_eq!(sum, rows * (rows + 1) / 2);
    // About 100 MB of CSV went through; a process that held it would show it in its RSS.
    let peak = peak_rss_mib(&out.stderr);
    assert!(
        peak < 90.0,
        "peak RSS {peak} MiB for a streamed 100 MB result"
    );
}
