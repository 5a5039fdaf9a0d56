//! `spillway gen claims --print-config`: the printed `[tables.claims]` section, loaded as the
//! config, reads the generated files with the claims table's types.

use crate::common::{csv_rows, read_claims_csv, Workspace};

/// `12345` cents as the text of a decimal(12,2): `123.45`.
fn money(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

#[test]
fn the_printed_claims_config_reads_the_generated_csv_with_its_types() {
    let ws = Workspace::new();
    let config = ws.gen_claims(2_000, 2, "csv", "claims");
    ws.write("spillway.toml", &config);
    let claims = read_claims_csv(&ws.path("claims"));
    assert!(
        claims.iter().any(|claim| claim.ndc.starts_with('0')),
        "the sample should hold NDCs with leading zeros"
    );
    let out = ws.run(&[
        "query",
        "--format",
        "csv",
        "SELECT claim_id, ndc, total_cost, arrow_typeof(claim_id), arrow_typeof(fill_date), \
         arrow_typeof(ndc), arrow_typeof(days_supply), arrow_typeof(quantity), \
         arrow_typeof(total_cost) FROM claims ORDER BY claim_id",
    ]);
    let rows = csv_rows(out.success());
    assert_eq!(rows.len(), claims.len());
    for (row, claim) in rows.iter().zip(&claims) {
        assert_eq!(row[0], claim.claim_id.to_string());
        assert_eq!(row[1], claim.ndc, "NDC of claim {}", claim.claim_id);
        assert_eq!(row[2], money(claim.total_cost_cents));
        assert_eq!(
            row[3..],
            [
                "Int64",
                "Date32",
                "Utf8",
                "Int32",
                "Decimal128(10, 3)",
                "Decimal128(12, 2)"
            ]
        );
    }
}

#[test]
fn the_printed_parquet_config_names_the_files_and_leaves_the_types_to_them() {
    let ws = Workspace::new();
    let config = ws.gen_claims(500, 2, "parquet", "out/claims");
    assert_eq!(
        config,
        "[tables.claims]\nlocation = \"out/claims/claims-*.parquet\"\nformat = \"parquet\"\n"
    );
    ws.write("spillway.toml", &config);
    let out = ws.run(&["query", "SELECT count(*) AS n FROM claims"]);
    assert_eq!(out.success(), "n\n500\n");
}
