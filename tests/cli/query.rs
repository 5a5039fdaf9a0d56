//! `spillway query`: formats, globs, compression, hive partitions, schemas, spilling.

use crate::common::{cents, csv_rows, read_claims_csv, spill_count, Workspace};
use std::collections::BTreeMap;
use std::io::Write;

const SMALL_A: &str = "dx,cost\nA,10\nB,20\nA,30\n";
const SMALL_B: &str = "dx,cost\nB,40\nC,50\n";
/// dx → (sum of cost, count) over SMALL_A and SMALL_B, by hand.
const SMALL_TOTALS: &str = "dx,total,n\nA,40,2\nB,60,2\nC,50,1\n";
const SMALL_SQL: &str =
    "SELECT dx, sum(cost) AS total, count(*) AS n FROM t GROUP BY dx ORDER BY dx";

#[test]
fn a_group_by_over_a_csv_glob_adds_up_every_matching_file() {
    let ws = Workspace::new();
    ws.write("data/part_1.csv", SMALL_A);
    ws.write("data/part_2.csv", SMALL_B);
    ws.write("data/other_3.csv", "dx,cost\nZ,1000\n");
    let out = ws.run(&[
        "query",
        "--table",
        "t=data/part_*.csv",
        "--format",
        "csv",
        SMALL_SQL,
    ]);
    assert_eq!(out.success(), SMALL_TOTALS);
}

#[test]
fn globs_support_double_star_question_mark_classes_and_alternatives() {
    let ws = Workspace::new();
    ws.write("d/a1.csv", "x\n1\n");
    ws.write("d/a2.csv", "x\n2\n");
    ws.write("d/b1.csv", "x\n4\n");
    ws.write("d/sub/a3.csv", "x\n8\n");
    ws.write("d/sub/deeper/c1.csv", "x\n16\n");
    let total = |glob: &str| {
        let out = ws.run(&[
            "query",
            "-t",
            &format!("t={glob}"),
            "--format",
            "csv",
            "SELECT sum(x) AS s FROM t",
        ]);
        out.success().lines().nth(1).expect("a row").to_string()
    };
    assert_eq!(total("d/a?.csv"), "3");
    assert_eq!(total("d/**/*.csv"), "31");
    assert_eq!(total("d/[ab]1.csv"), "5");
    assert_eq!(total("d/{a1,b1}.csv"), "5");
    assert_eq!(total("d/*/a*.csv"), "8");
    // A folder is every data file below it.
    assert_eq!(total("d"), "31");
}

/// The founding query over generated claims, in CSV and in Parquet generated with the same seed,
/// against a plain fold over the CSV text.
#[test]
fn the_founding_query_agrees_with_a_plain_fold_in_csv_and_parquet() {
    let ws = Workspace::new();
    ws.gen_claims(30_000, 3, "csv", "csv");
    ws.gen_claims(30_000, 3, "parquet", "parquet");
    let claims = read_claims_csv(&ws.path("csv"));
    assert_eq!(claims.len(), 30_000);
    let mut by_code: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for claim in &claims {
        by_code
            .entry(claim.diagnosis_code.clone())
            .or_default()
            .push(claim.total_cost_cents as f64 / 100.0);
    }
    let sql = "SELECT diagnosis_code, count(*) AS n, sum(total_cost) AS total, avg(total_cost) AS mean, \
               stddev(total_cost) AS sd FROM claims GROUP BY diagnosis_code ORDER BY diagnosis_code";
    for table in ["claims=csv/*.csv", "claims=parquet/*.parquet"] {
        let out = ws.run(&["query", "-t", table, "--format", "csv", sql]);
        let rows = csv_rows(out.success());
        assert_eq!(rows.len(), by_code.len(), "{table}");
        for (row, (code, costs)) in rows.iter().zip(&by_code) {
            let n = costs.len() as f64;
            let mean = costs.iter().sum::<f64>() / n;
            assert_eq!(&row[0], code);
            assert_eq!(row[1], costs.len().to_string());
            let total_cents: i64 = claims
                .iter()
                .filter(|c| &c.diagnosis_code == code)
                .map(|c| c.total_cost_cents)
                .sum();
            assert_eq!(cents(&row[2]), total_cents, "{table} {code}");
            let got_mean: f64 = row[3].parse().expect("mean");
            assert!(
                (got_mean - mean).abs() <= 1e-6 * mean.abs().max(1.0),
                "{table} {code}: {got_mean} vs {mean}"
            );
            if costs.len() > 1 {
                let variance = costs.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / (n - 1.0);
                let got_sd: f64 = row[4].parse().expect("sd");
                assert!(
                    (got_sd - variance.sqrt()).abs() <= 1e-6 * variance.sqrt().max(1.0),
                    "{table} {code}"
                );
            }
        }
    }
}

#[test]
fn ndjson_tables_are_read() {
    let ws = Workspace::new();
    ws.write(
        "j/a.ndjson",
        "{\"dx\":\"A\",\"cost\":10}\n{\"dx\":\"B\",\"cost\":20}\n{\"dx\":\"A\",\"cost\":30}\n",
    );
    ws.write(
        "j/b.jsonl",
        "{\"dx\":\"B\",\"cost\":40}\n{\"dx\":\"C\",\"cost\":50}\n",
    );
    let out = ws.run(&[
        "query",
        "-t",
        "t=j/*.{ndjson,jsonl}",
        "--format",
        "csv",
        SMALL_SQL,
    ]);
    assert_eq!(out.success(), SMALL_TOTALS);
}

#[test]
fn gzip_zstd_and_bzip2_csv_files_are_read_by_their_extension() {
    let ws = Workspace::new();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(SMALL_A.as_bytes()).unwrap();
    ws.write("c/a.csv.gz", gz.finish().unwrap());
    ws.write(
        "c/b.csv.zst",
        zstd::encode_all(SMALL_B.as_bytes(), 3).unwrap(),
    );
    let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
    bz.write_all(b"dx,cost\nD,7\n").unwrap();
    ws.write("c/d.csv.bz2", bz.finish().unwrap());
    for (glob, expected) in [
        ("t=c/a.csv.gz", "dx,total,n\nA,40,2\nB,20,1\n"),
        ("t=c/b.csv.zst", "dx,total,n\nB,40,1\nC,50,1\n"),
        ("t=c/d.csv.bz2", "dx,total,n\nD,7,1\n"),
    ] {
        let out = ws.run(&["query", "-t", glob, "--format", "csv", SMALL_SQL]);
        assert_eq!(out.success(), expected, "{glob}");
    }
}

#[test]
fn hive_partition_columns_come_from_folder_names_and_filter() {
    let ws = Workspace::new();
    ws.write("h/year=2023/a.csv", SMALL_A);
    ws.write("h/year=2024/b.csv", SMALL_B);
    ws.write(
        "spillway.toml",
        "[tables.t]\nlocation = \"h\"\nformat = \"csv\"\npartition_columns = [\"year\"]\n",
    );
    let out = ws.run(&[
        "query",
        "--format",
        "csv",
        "SELECT year, sum(cost) AS total FROM t WHERE year = '2024' GROUP BY year",
    ]);
    assert_eq!(out.success(), "year,total\n2024,90\n");
    let out = ws.run(&[
        "query",
        "--format",
        "csv",
        "SELECT year, count(*) AS n FROM t GROUP BY year ORDER BY year",
    ]);
    assert_eq!(out.success(), "year,n\n2023,3\n2024,2\n");
}

#[test]
fn leading_zeros_survive_an_explicit_schema_and_inference_alike() {
    let ws = Workspace::new();
    ws.write("n/drugs.csv", "ndc,fills\n00002143380,5\n00093015001,7\n");
    ws.write(
        "spillway.toml",
        "[tables.drugs]\nlocation = \"n/drugs.csv\"\nschema = { ndc = \"string\", fills = \"int32\" }\n",
    );
    let out = ws.run(&[
        "query",
        "--format",
        "csv",
        "SELECT ndc, fills FROM drugs ORDER BY ndc",
    ]);
    assert_eq!(out.success(), "ndc,fills\n00002143380,5\n00093015001,7\n");
    let inferred = ws.run(&[
        "query",
        "-t",
        "raw=n/drugs.csv",
        "--format",
        "csv",
        "SELECT ndc FROM raw ORDER BY ndc",
    ]);
    // Inference sees the leading zeros in its sample and keeps the column as text.
    assert_eq!(inferred.success(), "ndc\n00002143380\n00093015001\n");
}

#[test]
fn config_tables_take_csv_dialect_options() {
    let ws = Workspace::new();
    ws.write("p/a.txt", "A|10\nB|NA\nA|30\n");
    ws.write(
        "spillway.toml",
        "[tables.t]\nlocation = \"p/a.txt\"\nformat = \"csv\"\nheader = false\ndelimiter = \"|\"\n\
         null_values = [\"NA\"]\nschema = { dx = \"string\", cost = \"int64\" }\n",
    );
    let out = ws.run(&[
        "query",
        "--format",
        "csv",
        "SELECT dx, sum(cost) AS s, count(cost) AS c FROM t GROUP BY dx ORDER BY dx",
    ]);
    assert_eq!(out.success(), "dx,s,c\nA,40,2\nB,,0\n");
}

#[test]
fn a_script_runs_set_statements_then_its_query_from_a_file_or_stdin() {
    let ws = Workspace::new();
    ws.write("data/a.csv", SMALL_A);
    let script = format!("SET datafusion.execution.batch_size = 2;\n{SMALL_SQL};");
    ws.write("q.sql", &script);
    let expected = "dx,total,n\nA,40,2\nB,20,1\n";
    let from_file = ws.run(&[
        "query",
        "-t",
        "t=data/a.csv",
        "--format",
        "csv",
        "-f",
        "q.sql",
    ]);
    assert_eq!(from_file.success(), expected);
    let from_stdin =
        ws.run_with_stdin(&["query", "-t", "t=data/a.csv", "--format", "csv"], &script);
    assert_eq!(from_stdin.success(), expected);
}

#[test]
fn a_sort_larger_than_the_memory_limit_spills_and_stays_correct() {
    let ws = Workspace::new();
    ws.gen_claims(200_000, 2, "csv", "claims");
    let mut claims = read_claims_csv(&ws.path("claims"));
    claims.sort_by(|a, b| (&a.member_id, a.claim_id).cmp(&(&b.member_id, b.claim_id)));
    let out = ws.run(&[
        // One worker: at 8 MiB shared by two sorts, the merge phase (which cannot spill)
        // sometimes ran out of room; one sort in 12 MiB spills and merges reliably.
        "--memory-limit",
        "12MiB",
        "--workers",
        "1",
        "--spill-dir",
        "spill",
        "query",
        "-t",
        "claims=claims/*.csv",
        "--stats",
        "-o",
        "sorted.csv",
        "SELECT member_id, claim_id, ndc FROM claims ORDER BY member_id, claim_id",
    ]);
    out.success();
    assert!(
        spill_count(&out.stderr) > 0,
        "expected spilling:\n{}",
        out.stderr
    );
    let text = std::fs::read_to_string(ws.path("sorted.csv")).unwrap();
    let rows = csv_rows(&text);
    assert_eq!(rows.len(), claims.len());
    for (row, claim) in rows.iter().zip(&claims) {
        assert_eq!(
            (row[0].as_str(), row[1].parse::<i64>().unwrap()),
            (claim.member_id.as_str(), claim.claim_id)
        );
    }
    assert!(
        ws.files_below("spill").is_empty(),
        "spill files left: {:?}",
        ws.files_below("spill")
    );
}

#[test]
fn a_high_cardinality_group_by_spills_under_a_small_limit_and_stays_correct() {
    let ws = Workspace::new();
    ws.gen_claims(200_000, 2, "csv", "claims");
    let claims = read_claims_csv(&ws.path("claims"));
    let mut expected: BTreeMap<i64, i64> = BTreeMap::new();
    for claim in &claims {
        *expected.entry(claim.claim_id % 50_000).or_default() += claim.total_cost_cents;
    }
    let out = ws.run(&[
        "--memory-limit", "8MiB", "--workers", "2",
        "query", "-t", "claims=claims/*.csv", "--stats", "--format", "csv",
        "SELECT claim_id % 50000 AS k, sum(total_cost) AS s, max(member_id) AS m, min(ndc) AS n FROM claims GROUP BY 1 ORDER BY 1",
    ]);
    let rows = csv_rows(out.success());
    assert!(
        spill_count(&out.stderr) > 0,
        "expected spilling:\n{}",
        out.stderr
    );
    assert_eq!(rows.len(), expected.len());
    for (row, (k, sum)) in rows.iter().zip(&expected) {
        assert_eq!(row[0].parse::<i64>().unwrap(), *k);
        assert_eq!(cents(&row[1]), *sum);
    }
}

#[test]
fn explain_analyze_shows_spill_metrics() {
    let ws = Workspace::new();
    ws.gen_claims(100_000, 1, "csv", "claims");
    // One worker: with two, the partition that finishes first starts the cross-partition
    // merge (which cannot spill) while the other's sorter still holds the pool's rest, and
    // under a loaded machine the merge can find 16 MiB too small (exit 7). This test is about
    // the spill metrics, not that race.
    let out = ws.run(&[
        "--memory-limit",
        "16MiB",
        "--workers",
        "1",
        "explain",
        "--analyze",
        "-t",
        "claims=claims/*.csv",
        "SELECT * FROM claims ORDER BY member_id, claim_id",
    ]);
    let text = out.success();
    assert!(text.contains("SortExec"), "{text}");
    let spilled = text.split("spill_count=").skip(1).any(|rest| {
        rest.chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() && c != '0')
    });
    assert!(spilled, "no spill_count above zero in:\n{text}");
    let plain = ws.run(&[
        "explain",
        "-t",
        "claims=claims/*.csv",
        "SELECT count(*) FROM claims",
    ]);
    assert!(
        plain.success().contains("physical_plan"),
        "{}",
        plain.stdout
    );
}
