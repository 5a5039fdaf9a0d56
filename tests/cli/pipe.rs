//! A reader that closes the pipe early (`spillway query ... | head -1`) is a normal end for a
//! Unix filter: the query stops, nothing is printed on stderr, and the exit code is 0, for every
//! output format.

use crate::common::Workspace;
use std::io::Read;
use std::process::Stdio;

/// Far more output than a pipe buffers, so the writer is still writing when the reader leaves.
const MANY_ROWS: &str = "SELECT value, value * 2 AS twice, 'claim-' || value AS label \
                         FROM generate_series(1, 20000000)";

/// Run `query --format FORMAT` (plus `extra`) with stdout piped, read its first bytes (a line
/// or more), close the pipe, and return the exit code and stderr.
fn read_a_little_then_close(format: &str, extra: &[&str]) -> (i32, String) {
    let ws = Workspace::new();
    let mut child = ws
        .command()
        .args(["query", "--format", format])
        .args(extra)
        .arg(MANY_ROWS)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spillway");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 256];
    let read = stdout.read(&mut first).expect("read the first bytes");
    assert!(read > 0, "{format}: no output before the pipe closed");
    drop(stdout);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    let status = child.wait().expect("wait");
    (status.code().unwrap_or(-1), stderr)
}

#[test]
fn closing_the_pipe_early_ends_every_format_quietly_with_exit_code_0() {
    let cases: [(&str, &[&str]); 7] = [
        // The table prints its rows at the end unless every row is asked for.
        ("table", &["--max-rows", "0"]),
        ("csv", &[]),
        ("tsv", &[]),
        ("json", &[]),
        ("ndjson", &[]),
        ("parquet", &[]),
        ("arrow", &[]),
    ];
    for (format, extra) in cases {
        let (code, stderr) = read_a_little_then_close(format, extra);
        assert_eq!((code, stderr.as_str()), (0, ""), "--format {format}");
    }
}
