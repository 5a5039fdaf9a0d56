//! A new user's first files: inference that keeps codes as text, a sniffed dialect, and
//! `describe` / `profile` to see a table before writing SQL. Expected values are written by
//! hand or folded from the generated CSV read independently.

use crate::common::{read_claims_csv, Workspace};
use std::collections::BTreeSet;

/// A payer extract as vendors send it: pipe-delimited, no header, NDCs and ZIPs with leading
/// zeros, 10-digit NPIs.
const EXTRACT: &str = "00002143380|1234567890|02139|30|12.50\n\
51234567890|1987654321|94105|90|7.25\n\
00093505601|1003000126|00501|30|3.10\n";

#[test]
fn codes_keep_their_leading_zeros_and_the_dialect_is_sniffed() {
    let ws = Workspace::new();
    ws.write("extract.txt", EXTRACT);
    let out = ws.run(&[
        "query",
        "--table",
        "x=extract.txt",
        "--table-format",
        "x=csv",
        "--format",
        "csv",
        "SELECT column_1, column_2, column_3, column_4 * 2 AS twice FROM x ORDER BY column_1",
    ]);
    assert_eq!(
        out.success(),
        "column_1,column_2,column_3,twice\n\
         00002143380,1234567890,02139,60\n\
         00093505601,1003000126,00501,60\n\
         51234567890,1987654321,94105,180\n"
    );
}

#[test]
fn a_compressed_extract_is_sniffed_and_keeps_its_leading_zeros_too() {
    use std::io::Write;
    let ws = Workspace::new();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(EXTRACT.as_bytes()).unwrap();
    ws.write("extract.csv.gz", &gz.finish().unwrap());
    ws.write(
        "extract.csv.zst",
        &zstd::encode_all(EXTRACT.as_bytes(), 3).unwrap(),
    );
    for file in ["extract.csv.gz", "extract.csv.zst"] {
        let out = ws.run(&[
            "query",
            "--table",
            &format!("x={file}"),
            "--format",
            "csv",
            "SELECT column_1, column_3, column_4 * 2 AS twice FROM x ORDER BY column_1",
        ]);
        assert_eq!(
            out.success(),
            "column_1,column_3,twice\n00002143380,02139,60\n00093505601,00501,60\n51234567890,94105,180\n",
            "{file}"
        );
    }
}

#[test]
fn a_leading_zero_past_the_first_megabyte_is_seen_when_infer_rows_reaches_it() {
    // 40,000 rows of about 40 bytes: the first leading zero sits past 1 MiB, within the
    // 50,000 rows inference is told to read, so the sample must reach it as inference does.
    let ws = Workspace::new();
    let mut text = String::from("id,code,note\n");
    for i in 0..40_000u32 {
        text.push_str(&format!(
            "{i},{},padding-padding-padding\n",
            10_000 + i % 80_000
        ));
    }
    text.push_str("40000,01234,padding-padding-padding\n");
    assert!(text.len() > (1 << 20) + 4096);
    ws.write("codes.csv", text);
    let out = ws.run(&[
        "query",
        "--infer-rows",
        "50000",
        "--table",
        "c=codes.csv",
        "--format",
        "csv",
        "SELECT code FROM c WHERE id = 40000",
    ]);
    assert_eq!(out.success(), "code\n01234\n");
}

#[test]
fn a_single_quoted_semicolon_extract_is_sniffed_and_described_with_its_quote() {
    let ws = Workspace::new();
    ws.write(
        "payer.txt",
        "id;name;ndc\n1;'Smith; John';'00002143380'\n2;'Doe';'51234567890'\n",
    );
    let out = ws.run(&[
        "query",
        "--table",
        "p=payer.txt",
        "--format",
        "csv",
        "SELECT name, ndc FROM p ORDER BY id",
    ]);
    assert_eq!(
        out.success(),
        "name,ndc\nSmith; John,00002143380\nDoe,51234567890\n"
    );
    let block = ws.run(&["describe", "--toml", "payer.txt"]);
    assert!(
        block
            .success()
            .starts_with("[tables.payer]\nlocation = \"payer.txt\"\nformat = \"csv\"\ndelimiter = \";\"\nquote = \"'\"\n"),
        "{}",
        block.stdout
    );
}

#[test]
fn describe_prints_the_types_and_a_block_that_reads_the_file_the_same_way() {
    let ws = Workspace::new();
    ws.write(
        "payer.csv",
        "ndc;npi;days;cost\n00002143380;1234567890;30;12.50\n51234567890;1987654321;90;7.25\n",
    );
    let described = ws.run(&["describe", "--format-is-not-a-flag"]);
    assert_eq!(described.code, 2, "unknown flags are usage errors");
    let table = ws.run(&["describe", "payer.csv"]);
    assert_eq!(
        table.success(),
        "column,type,nullable\nndc,string,yes\nnpi,string,yes\ndays,int64,yes\ncost,float64,yes\n"
    );
    let block = ws.run(&["describe", "--toml", "payer.csv"]);
    let block = block.success();
    assert!(
        block.starts_with(
            "[tables.payer]\nlocation = \"payer.csv\"\nformat = \"csv\"\ndelimiter = \";\"\n"
        ),
        "{block}"
    );
    assert!(block.contains("[tables.payer.schema]\nndc = \"string\"\nnpi = \"string\"\ndays = \"int64\"\ncost = \"float64\"\n"), "{block}");
    ws.write("spillway.toml", block);
    let read = ws.run(&[
        "query",
        "--format",
        "csv",
        "SELECT ndc, days FROM payer ORDER BY ndc",
    ]);
    assert_eq!(read.success(), "ndc,days\n00002143380,30\n51234567890,90\n");
    // `DESCRIBE` in SQL answers the same.
    let sql = ws.run(&["query", "--format", "csv", "DESCRIBE payer"]);
    assert!(sql.success().contains("ndc,Utf8"), "{}", sql.stdout);
}

#[test]
fn a_later_row_that_breaks_the_inferred_type_names_the_file_line_column_and_the_fix() {
    let ws = Workspace::new();
    let mut text = String::from("id,code,amount\n");
    for i in 1..3000 {
        text.push_str(&format!("{i},{},{}.5\n", i % 7, i));
    }
    text.push_str("3000,X7,2.0\n");
    // Lines counted from 1 with the header, as an editor or `sed -n 3001p` shows them.
    assert_eq!(text.lines().nth(3000), Some("3000,X7,2.0"));
    ws.write("late.csv", text);
    let out = ws.run(&[
        "query",
        "--table",
        "late=late.csv",
        "SELECT sum(code) FROM late",
    ]);
    let message = out.failure(5);
    assert!(message.contains("late.csv"), "{message}");
    assert!(message.contains("at line 3001"), "{message}");
    assert!(
        message.contains("add `code = \"string\"` under [tables.late.schema]"),
        "{message}"
    );
}

#[test]
fn profile_gives_each_columns_nulls_range_distinct_count_and_mean_in_one_pass() {
    let ws = Workspace::new();
    ws.gen_claims(5_000, 2, "csv", "claims");
    let claims = read_claims_csv(&ws.path("claims"));
    let out = ws.run(&["profile", "--format", "csv", "claims/"]);
    let rows: Vec<Vec<String>> = crate::common::csv_rows(out.success());
    let row = |name: &str| {
        rows.iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("{name}"))
    };
    // column,type,nulls,min,max,approx_distinct,mean,q25,q50,q75
    let id = row("claim_id");
    assert_eq!(&id[1..5], ["int64", "0", "1", "5000"]);
    assert_eq!(id[6], "2500.5");
    let ndc = row("ndc");
    assert_eq!(ndc[1], "string", "NDCs are text");
    let ndcs: BTreeSet<&str> = claims.iter().map(|c| c.ndc.as_str()).collect();
    assert_eq!(ndc[3], *ndcs.first().unwrap());
    assert_eq!(ndc[4], *ndcs.last().unwrap());
    let estimate: f64 = ndc[5].parse().unwrap();
    assert!(
        (estimate - ndcs.len() as f64).abs() <= 0.05 * ndcs.len() as f64,
        "approx_distinct {estimate} vs {}",
        ndcs.len()
    );
    let supply = row("days_supply");
    let mean = claims.iter().map(|c| c.days_supply as f64).sum::<f64>() / claims.len() as f64;
    let shown: f64 = supply[6].parse().unwrap();
    assert!((shown - mean).abs() < 1e-6, "{shown} vs {mean}");
    let states: BTreeSet<&str> = claims.iter().map(|c| c.member_state.as_str()).collect();
    let state = row("member_state");
    assert_eq!(state[5], states.len().to_string());
    assert_eq!(state[2], "0");

    // Under a small memory ceiling it answers the same (its states are fixed-size sketches).
    let small = ws.run(&[
        "--memory-limit",
        "48MiB",
        "profile",
        "--format",
        "csv",
        "claims/",
    ]);
    let small_rows: Vec<Vec<String>> = crate::common::csv_rows(small.success());
    assert_eq!(small_rows.len(), rows.len());
    for (a, b) in small_rows.iter().zip(&rows) {
        // Everything but the t-digest quartiles, which depend on how rows meet, and a float
        // mean's last digits, which depend on the order partial sums arrive in.
        assert_eq!(a[..6], b[..6]);
        match (a[6].parse::<f64>(), b[6].parse::<f64>()) {
            (Ok(x), Ok(y)) => assert!((x - y).abs() <= 1e-9 * y.abs().max(1.0), "{a:?} {b:?}"),
            _ => assert_eq!(a[6], b[6]),
        }
    }
}

#[test]
fn profile_and_describe_are_sql_too_the_same_in_query_and_over_psql() {
    let (ws, _) = crate::serve::claims_server_workspace(3_000, "");
    let cli = ws.run(&["profile", "--format", "csv", "claims"]);
    let cli = cli.success();
    // `profile('t')` in SQL: the same table, filtered and projected like any other.
    let sql = ws.run(&[
        "query",
        "--format",
        "csv",
        "SELECT * FROM profile('claims')",
    ]);
    // The quartiles are t-digest estimates whose digits depend on how the work was split
    // across partitions, so they are compared for presence; everything else exactly.
    let exact_and_present = |rows: Vec<Vec<String>>| {
        rows.into_iter()
            .map(|row| {
                let mut kept = row[..7].to_vec();
                kept.extend(row[7..].iter().map(|q| (!q.is_empty()).to_string()));
                kept
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        exact_and_present(crate::common::csv_rows(sql.success())),
        exact_and_present(crate::common::csv_rows(cli))
    );
    let numeric = ws.run(&[
        "query",
        "--format",
        "csv",
        "SELECT \"column\" FROM profile('claims') WHERE mean IS NOT NULL AND \"column\" LIKE 'days%'",
    ]);
    assert_eq!(numeric.success(), "column\ndays_supply\n");
    let missing = ws.run(&["query", "SELECT * FROM profile('nope')"]);
    assert!(
        missing.failure(4).contains("no table `nope`"),
        "{}",
        missing.stderr
    );

    let server = crate::serve::Server::start(&ws, &[], &[]);
    let conninfo = server.conninfo("analyst", "sslmode=disable");
    let over_psql = server.psql(&conninfo, None, &["-c", "SELECT * FROM profile('claims')"]);
    // psql -A -t prints the rows without the header, `|` between fields, NULL as nothing. The
    // quartiles are estimates (t-digest) that depend on how the server splits the work, so they
    // are compared only for being there; everything else exactly.
    let over_psql: Vec<Vec<String>> = over_psql
        .success()
        .lines()
        .map(|line| line.split('|').map(str::to_string).collect())
        .collect();
    let from_cli = crate::common::csv_rows(cli);
    assert_eq!(over_psql.len(), from_cli.len());
    for (served, local) in over_psql.iter().zip(&from_cli) {
        assert_eq!(served[..7], local[..7]);
        let present = |row: &[String]| row[7..].iter().map(|q| !q.is_empty()).collect::<Vec<_>>();
        assert_eq!(present(served), present(local), "{served:?} vs {local:?}");
    }
    // DESCRIBE answers each column with its Arrow type.
    let described = server.psql(&conninfo, None, &["-F", ",", "-c", "DESCRIBE claims"]);
    let described = described.success();
    for column in ["claim_id,Int64,", "ndc,Utf8,", "fill_date,Date32,"] {
        assert!(
            described.lines().any(|line| line.starts_with(column)),
            "{column} in:\n{described}"
        );
    }
}
