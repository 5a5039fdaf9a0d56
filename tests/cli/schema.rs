//! A table's `schema` that names only some columns of a CSV file: those get its types, the
//! others are inferred, in the file's order (DuckDB's `types=`).

use crate::common::{csv_rows, read_claims_csv, Workspace};

const PARTIAL_SCHEMA: &str = r#"[tables.claims]
location = "claims/*.csv"
schema = { ndc = "string", total_cost = "decimal(12,2)" }
"#;

#[test]
fn a_schema_naming_some_columns_types_those_and_infers_the_rest() {
    let ws = Workspace::new();
    ws.gen_claims(3_000, 2, "csv", "claims");
    ws.write("spillway.toml", PARTIAL_SCHEMA);
    let claims = read_claims_csv(&ws.path("claims"));
    assert!(claims.iter().any(|claim| claim.ndc.starts_with('0')));

    // Every column, in the file's order.
    let header = std::fs::read_to_string(ws.path("claims/claims-00000.csv")).unwrap();
    let header = header.lines().next().unwrap();
    let out = ws.run(&["query", "--format", "csv", "SELECT * FROM claims LIMIT 1"]);
    assert_eq!(out.success().lines().next().unwrap(), header);

    let out = ws.run(&[
        "query",
        "--format",
        "csv",
        "SELECT claim_id, ndc, total_cost, arrow_typeof(ndc), arrow_typeof(total_cost), \
         arrow_typeof(claim_id), arrow_typeof(days_supply) FROM claims ORDER BY claim_id",
    ]);
    let rows = csv_rows(out.success());
    assert_eq!(rows.len(), claims.len());
    for (row, claim) in rows.iter().zip(&claims) {
        let cents = claim.total_cost_cents;
        assert_eq!(row[0], claim.claim_id.to_string());
        assert_eq!(row[1], claim.ndc, "NDC of claim {}", claim.claim_id);
        assert_eq!(row[2], format!("{}.{:02}", cents / 100, cents % 100));
        // Named: as the schema says. Not named: as inferred from the values.
        assert_eq!(row[3..], ["Utf8", "Decimal128(12, 2)", "Int64", "Int64"]);
    }

    // Decimals are exact: the sum of the cents the files hold, to the cent.
    let total: i64 = claims.iter().map(|claim| claim.total_cost_cents).sum();
    let out = ws.run(&[
        "query",
        "--format",
        "csv",
        "SELECT sum(total_cost) AS s FROM claims",
    ]);
    assert_eq!(
        out.success(),
        format!("s\n{}.{:02}\n", total / 100, total % 100)
    );
}

#[test]
fn a_schema_naming_a_column_the_file_lacks_names_the_table_the_column_and_the_files_columns() {
    let ws = Workspace::new();
    ws.write("data/x.csv", "id,ndc,cost\n1,00002143380,1.50\n");
    ws.write(
        "spillway.toml",
        "[tables.rx]\nlocation = \"data/*.csv\"\nschema = { ndc = \"string\", npi = \"string\" }\n",
    );
    let out = ws.run(&["query", "SELECT * FROM rx"]);
    let stderr = out.failure(3);
    assert!(stderr.contains("`rx`"), "{stderr}");
    assert!(stderr.contains("column `npi`"), "{stderr}");
    assert!(stderr.contains("x.csv"), "{stderr}");
    assert!(stderr.contains("(its columns: id, ndc, cost)"), "{stderr}");
}

#[test]
fn a_schema_naming_every_column_is_read_by_position_as_before() {
    let ws = Workspace::new();
    // The schema renames the columns: with as many columns as the file, names come from it.
    ws.write("data/x.csv", "a,b\n00007,1.50\n");
    ws.write(
        "spillway.toml",
        "[tables.t]\nlocation = \"data/x.csv\"\nschema = { code = \"string\", price = \"decimal(5,2)\" }\n",
    );
    let out = ws.run(&["query", "--format", "csv", "SELECT code, price FROM t"]);
    assert_eq!(out.success(), "code,price\n00007,1.50\n");
}
