//! `spillway report run` over the claims reports in `queries/`: each report's output against a
//! plain fold over the generated CSV text, parameters bound as values (never spliced into SQL),
//! and the success manifest written beside the output.

use crate::common::{cents, csv_rows, read_claims_csv, Claim, Workspace};
use sha2::{Digest, Sha256};
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

/// The claims table with every column typed as DESIGN.md says, so money is exact decimals and
/// codes keep their leading zeros.

/// The time every run is started `--at`; its date names the output file.
const AT: &str = "2024-06-01";

/// A workspace with `rows` generated claims in `claims/`, the claims table in `spillway.toml`,
/// and the repository's `queries/<report>.sql` copied into `queries/`; with the claims read
/// back by hand.
fn claims_workspace(rows: u64, report: &str) -> (Workspace, Vec<Claim>) {
    let ws = Workspace::new();
    let claims_table = ws.gen_claims(rows, 2, "csv", "claims");
    ws.write("spillway.toml", claims_table);
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("queries")
        .join(format!("{report}.sql"));
    let text =
        std::fs::read_to_string(&source).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
    ws.write(&format!("queries/{report}.sql"), text);
    let claims = read_claims_csv(&ws.path("claims"));
    assert_eq!(claims.len() as u64, rows);
    (ws, claims)
}

/// `spillway report run <report> --queries queries --at AT --param ...`; asserts success and
/// returns the text of `reports/<report>/<AT>.csv`.
fn run_report(ws: &Workspace, report: &str, params: &[&str]) -> String {
    let mut args = vec!["report", "run", report, "--queries", "queries", "--at", AT];
    for param in params {
        args.extend(["--param", param]);
    }
    ws.run(&args).success();
    let output = ws.path(&format!("reports/{report}/{AT}.csv"));
    std::fs::read_to_string(&output).unwrap_or_else(|e| panic!("{}: {e}", output.display()))
}

/// Relative agreement to 1e-9 (absolute near zero).
fn assert_close(got: &str, expected: f64, what: &str) {
    let got: f64 = got
        .parse()
        .unwrap_or_else(|_| panic!("{what}: `{got}` is not a number"));
    assert!(
        (got - expected).abs() <= 1e-9 * expected.abs().max(1.0),
        "{what}: got {got}, expected {expected}"
    );
}

/// A decimal as printed (`62.45`, `-3.1`, `7`) in units of 10^-`scale`: `("62.45", 6)` →
/// 62_450_000. Panics on more than `scale` decimals.
fn fixed_point(text: &str, scale: usize) -> i128 {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    assert!(
        fraction.len() <= scale,
        "`{text}` has more than {scale} decimals"
    );
    let digits = format!("{whole}{fraction:0<scale$}");
    digits
        .parse()
        .unwrap_or_else(|_| panic!("`{text}` is not a decimal"))
}

/// The sample standard deviation (divisor n - 1) of at least two values, two-pass.
fn sample_stddev(values: &[f64]) -> f64 {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let squares: f64 = values.iter().map(|v| (v - mean).powi(2)).sum();
    (squares / (n - 1.0)).sqrt()
}

/// PostgreSQL's `percentile_cont(p)` as DataFusion 55 computes it: over the sorted values, the
/// value at position p·(n−1), interpolated linearly between the two nearest ranks. DataFusion
/// rounds the interpolation weight down to a multiple of 10^-6, and so does this.
fn percentile_cont(sorted: &[f64], p: f64) -> f64 {
    assert!(!sorted.is_empty());
    assert!(
        sorted.windows(2).all(|pair| pair[0] <= pair[1]),
        "not sorted"
    );
    if sorted.len() == 1 || p == 0.0 {
        return sorted[0];
    }
    if p == 1.0 {
        return sorted[sorted.len() - 1];
    }
    let index = p * (sorted.len() - 1) as f64;
    let (lower, upper) = (index.floor() as usize, index.ceil() as usize);
    if lower == upper {
        return sorted[lower];
    }
    let weight = ((index - lower as f64) * 1_000_000.0) as usize as f64 / 1_000_000.0;
    sorted[lower] + (sorted[upper] - sorted[lower]) * weight
}

// ---------------------------------------------------------------------------------------------
// One test per report
// ---------------------------------------------------------------------------------------------

#[test]
fn cost_by_diagnosis_monthly_gives_count_mean_and_sample_stddev_of_cost_per_month_and_code() {
    let report = "cost_by_diagnosis_monthly";
    let (ws, claims) = claims_workspace(40_000, report);
    let text = run_report(&ws, report, &["start=2024-03-01", "end=2024-09-01"]);

    // (month, diagnosis code) → costs in cents, for fills from March up to (not into) September.
    let mut groups: BTreeMap<(String, String), Vec<i64>> = BTreeMap::new();
    for claim in &claims {
        if claim.fill_date.as_str() >= "2024-03-01" && claim.fill_date.as_str() < "2024-09-01" {
            groups
                .entry((claim.fill_month(), claim.diagnosis_code.clone()))
                .or_default()
                .push(claim.total_cost_cents);
        }
    }
    let mut expected: Vec<(&(String, String), &Vec<i64>)> = groups.iter().collect();
    // ORDER BY month, claims DESC, diagnosis_code.
    expected
        .sort_by_key(|((month, code), costs)| (month.clone(), Reverse(costs.len()), code.clone()));

    let rows = csv_rows(&text);
    assert_eq!(rows.len(), expected.len());
    let months: HashSet<&str> = rows.iter().map(|row| row[0].as_str()).collect();
    assert_eq!(months.len(), 6, "March to August: {months:?}");
    for (row, ((month, code), costs)) in rows.iter().zip(expected) {
        let what = format!("{month} {code}");
        assert_eq!((&row[0], &row[1]), (month, code));
        assert_eq!(row[2], costs.len().to_string(), "{what}");
        // avg of a decimal(12,2) is a decimal with 6 places, truncated: sum·10^4 / n.
        let sum: i64 = costs.iter().sum();
        let mean_micros = i128::from(sum) * 10_000 / costs.len() as i128;
        assert_eq!(
            fixed_point(&row[3], 6),
            mean_micros,
            "{what}: mean {}",
            row[3]
        );
        if costs.len() == 1 {
            assert_eq!(row[4], "", "{what}: the stddev of one claim is null");
        } else {
            let dollars: Vec<f64> = costs.iter().map(|c| *c as f64 / 100.0).collect();
            assert_close(&row[4], sample_stddev(&dollars), &what);
        }
    }
}

/// (month, plan, state) → (claims, total cost, plan paid, copay), in cents.
type SpendByPlanState = BTreeMap<(String, String, String), (u64, i64, i64, i64)>;

fn monthly_spend<'a>(claims: impl Iterator<Item = &'a Claim>) -> SpendByPlanState {
    let mut spend = SpendByPlanState::new();
    for claim in claims {
        let key = (
            claim.fill_month(),
            claim.plan_id.clone(),
            claim.member_state.clone(),
        );
        let entry = spend.entry(key).or_default();
        entry.0 += 1;
        entry.1 += claim.total_cost_cents;
        entry.2 += claim.plan_paid_cents;
        entry.3 += claim.copay_cents;
    }
    spend
}

/// Compare `monthly_spend_by_plan_state` output with `expected`, in the report's order:
/// month, total cost descending, plan, state.
fn assert_monthly_spend(text: &str, expected: &SpendByPlanState) {
    let mut expected: Vec<_> = expected.iter().collect();
    expected.sort_by_key(|((month, plan, state), sums)| {
        (month.clone(), Reverse(sums.1), plan.clone(), state.clone())
    });
    let rows = csv_rows(text);
    assert_eq!(rows.len(), expected.len());
    for (row, ((month, plan, state), (claims, total, paid, copay))) in rows.iter().zip(expected) {
        let what = format!("{month} {plan} {state}");
        assert_eq!((&row[0], &row[1], &row[2]), (month, plan, state));
        assert_eq!(row[3], claims.to_string(), "{what}");
        assert_eq!(
            (cents(&row[4]), cents(&row[5]), cents(&row[6])),
            (*total, *paid, *copay),
            "{what}"
        );
    }
}

#[test]
fn monthly_spend_by_plan_state_sums_cost_paid_and_copay_exactly_for_every_state_by_default() {
    let report = "monthly_spend_by_plan_state";
    let (ws, claims) = claims_workspace(40_000, report);
    let text = run_report(&ws, report, &[]);
    let expected = monthly_spend(claims.iter());
    let states: HashSet<&str> = expected
        .keys()
        .map(|(_, _, state)| state.as_str())
        .collect();
    assert!(
        states.len() > 40,
        "the default covers every state: {states:?}"
    );
    assert_monthly_spend(&text, &expected);
}

#[test]
fn monthly_spend_by_plan_state_with_states_ca_ny_keeps_only_those_states() {
    let report = "monthly_spend_by_plan_state";
    let (ws, claims) = claims_workspace(30_000, report);
    let text = run_report(&ws, report, &["states=CA,NY", "start=2024-02-01"]);
    let rows = csv_rows(&text);
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|row| row[2] == "CA" || row[2] == "NY"));
    assert!(rows.iter().all(|row| row[0].as_str() >= "2024-02-01"));
    let expected = monthly_spend(claims.iter().filter(|claim| {
        (claim.member_state == "CA" || claim.member_state == "NY")
            && claim.fill_date.as_str() >= "2024-02-01"
    }));
    assert_monthly_spend(&text, &expected);
}

#[test]
fn top_drugs_by_cost_lists_the_limit_costliest_ndcs_with_fills_members_and_brand_share() {
    let report = "top_drugs_by_cost";
    let (ws, claims) = claims_workspace(40_000, report);

    struct Drug<'a> {
        fills: u64,
        members: HashSet<&'a str>,
        total_cents: i64,
        brand_fills: u64,
    }
    let mut drugs: BTreeMap<&str, Drug> = BTreeMap::new();
    for claim in &claims {
        let drug = drugs.entry(&claim.ndc).or_insert_with(|| Drug {
            fills: 0,
            members: HashSet::new(),
            total_cents: 0,
            brand_fills: 0,
        });
        drug.fills += 1;
        drug.members.insert(&claim.member_id);
        drug.total_cents += claim.total_cost_cents;
        drug.brand_fills += u64::from(claim.brand_generic == "B");
    }
    let mut ranked: Vec<(&str, Drug)> = drugs.into_iter().collect();
    ranked.sort_by_key(|(ndc, drug)| (Reverse(drug.total_cents), *ndc));

    for (params, limit) in [(&[][..], 100), (&["limit=25"][..], 25)] {
        let rows = csv_rows(&run_report(&ws, report, params));
        assert_eq!(rows.len(), limit, "{params:?}");
        for (row, (ndc, drug)) in rows.iter().zip(&ranked) {
            assert_eq!(&row[0], ndc, "{params:?}");
            assert_eq!(row[1], drug.fills.to_string(), "{ndc}");
            assert_eq!(row[2], drug.members.len().to_string(), "{ndc}");
            assert_eq!(cents(&row[3]), drug.total_cents, "{ndc}");
            let share = drug.brand_fills as f64 / drug.fills as f64;
            assert_close(&row[4], share, &format!("{ndc} brand share"));
        }
    }
}

#[test]
fn generic_dispensing_rate_covers_pharmacies_with_at_least_min_fills_lowest_rate_first() {
    let report = "generic_dispensing_rate";
    let (ws, claims) = claims_workspace(50_000, report);
    // pharmacy → (fills, generic fills)
    let mut pharmacies: HashMap<&str, (u64, u64)> = HashMap::new();
    for claim in &claims {
        let entry = pharmacies.entry(&claim.pharmacy_npi).or_default();
        entry.0 += 1;
        entry.1 += u64::from(claim.brand_generic == "G");
    }
    for (params, min_fills) in [(&[][..], 50), (&["min_fills=80"][..], 80)] {
        let mut expected: Vec<(&str, u64, f64)> = pharmacies
            .iter()
            .filter(|(_, (fills, _))| *fills >= min_fills)
            .map(|(npi, (fills, generic))| (*npi, *fills, *generic as f64 / *fills as f64))
            .collect();
        expected.sort_by(|a, b| a.2.total_cmp(&b.2).then(a.0.cmp(b.0)));
        assert!(expected.len() >= 10, "too few pharmacies to test with");

        let rows = csv_rows(&run_report(&ws, report, params));
        assert_eq!(rows.len(), expected.len(), "{params:?}");
        for (row, (npi, fills, rate)) in rows.iter().zip(&expected) {
            assert_eq!(&row[0], npi, "{params:?}");
            assert_eq!(row[1], fills.to_string(), "{npi}");
            assert_close(&row[2], *rate, &format!("{npi} generic rate"));
        }
    }
}

#[test]
fn fills_per_member_gives_members_mean_exact_median_p90_p99_and_max_of_fills_per_member() {
    let report = "fills_per_member";
    let (ws, claims) = claims_workspace(40_000, report);
    let mut per_member: HashMap<&str, u64> = HashMap::new();
    for claim in &claims {
        *per_member.entry(&claim.member_id).or_default() += 1;
    }
    let mut counts: Vec<f64> = per_member.values().map(|n| *n as f64).collect();
    counts.sort_by(f64::total_cmp);

    let rows = csv_rows(&run_report(&ws, report, &[]));
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row[0], per_member.len().to_string());
    assert_eq!(row[1], claims.len().to_string());
    assert_close(
        &row[2],
        claims.len() as f64 / per_member.len() as f64,
        "mean",
    );
    assert_close(&row[3], percentile_cont(&counts, 0.5), "median");
    assert_close(&row[4], percentile_cont(&counts, 0.9), "p90");
    assert_close(&row[5], percentile_cont(&counts, 0.99), "p99");
    assert_eq!(row[6], per_member.values().max().unwrap().to_string());
    // The skew the generator promises: a long tail above the median.
    assert!(percentile_cont(&counts, 0.99) > percentile_cont(&counts, 0.5));
}

#[test]
fn members_above_p99_spend_lists_every_member_whose_total_exceeds_the_exact_99th_percentile() {
    let report = "members_above_p99_spend";
    let (ws, claims) = claims_workspace(50_000, report);
    // member → (spend in cents, fills)
    let mut members: HashMap<&str, (i64, u64)> = HashMap::new();
    for claim in &claims {
        let entry = members.entry(&claim.member_id).or_default();
        entry.0 += claim.total_cost_cents;
        entry.1 += 1;
    }
    // percentile_cont works in double precision: the decimal totals become cents / 100.
    let dollars = |cents: i64| cents as f64 / 100.0;
    let mut spends: Vec<f64> = members.values().map(|(spend, _)| dollars(*spend)).collect();
    spends.sort_by(f64::total_cmp);
    let threshold = percentile_cont(&spends, 0.99);
    let mut expected: Vec<(&str, i64, u64)> = members
        .iter()
        .filter(|(_, (spend, _))| dollars(*spend) > threshold)
        .map(|(member, (spend, fills))| (*member, *spend, *fills))
        .collect();
    expected.sort_by_key(|(member, spend, _)| (Reverse(*spend), *member));
    // About 1% of members, and at least one.
    assert!(!expected.is_empty() && expected.len() <= members.len() / 50);

    let rows = csv_rows(&run_report(&ws, report, &[]));
    assert_eq!(rows.len(), expected.len());
    for (row, (member, spend, fills)) in rows.iter().zip(&expected) {
        assert_eq!(&row[0], member);
        assert_eq!(cents(&row[1]), *spend, "{member}");
        assert_eq!(row[2], fills.to_string(), "{member}");
        assert_close(&row[3], threshold, "p99 threshold");
    }
}

#[test]
fn days_supply_distribution_counts_30_90_and_other_day_fills_with_their_shares() {
    let report = "days_supply_distribution";
    let (ws, claims) = claims_workspace(30_000, report);
    let mut buckets: BTreeMap<&str, u64> = BTreeMap::new();
    for claim in &claims {
        let bucket = match claim.days_supply {
            30 => "30",
            90 => "90",
            _ => "other",
        };
        *buckets.entry(bucket).or_default() += 1;
    }
    assert_eq!(buckets.len(), 3, "every bucket occurs: {buckets:?}");

    let rows = csv_rows(&run_report(&ws, report, &[]));
    assert_eq!(rows.len(), 3);
    for (row, (bucket, fills)) in rows.iter().zip(&buckets) {
        assert_eq!(&row[0], bucket);
        assert_eq!(row[1], fills.to_string(), "{bucket}");
        let share = *fills as f64 / claims.len() as f64;
        assert_close(&row[2], share, &format!("{bucket} share"));
    }
}

// ---------------------------------------------------------------------------------------------
// Parameters are values; a run publishes a manifest
// ---------------------------------------------------------------------------------------------

/// A report written for this test only: a `string` parameter compared with a column.
const CLAIMS_FOR_STATE: &str = r#"/* report
name = "claims_for_state"
output = "reports/{name}/{scheduled_date}.csv"
[params.state]
type = "string"
default = "CA"
*/
SELECT count(*) AS claims FROM claims WHERE member_state = $state
"#;

#[test]
fn sql_in_a_string_or_list_param_is_an_inert_value_that_matches_no_state() {
    let hostile = "'; DROP TABLE claims; --";
    let report = "monthly_spend_by_plan_state";
    let (ws, claims) = claims_workspace(30_000, report);
    ws.write("queries/claims_for_state.sql", CLAIMS_FOR_STATE);

    // A list param: one element, the whole text.
    let text = run_report(&ws, report, &[&format!("states={hostile}")]);
    assert!(
        csv_rows(&text).is_empty(),
        "no state is named that:\n{text}"
    );

    // A string param: the count of claims in a state of that name, none.
    let text = run_report(&ws, "claims_for_state", &[&format!("state={hostile}")]);
    assert_eq!(csv_rows(&text), [["0"]]);

    // The table is still there, whole.
    let out = ws.run(&[
        "query",
        "--format",
        "csv",
        "SELECT count(*) AS n FROM claims",
    ]);
    assert_eq!(out.success(), format!("n\n{}\n", claims.len()));
    // And the string param still works as a value.
    let text = run_report(&ws, "claims_for_state", &["state=NY"]);
    let in_new_york = claims.iter().filter(|c| c.member_state == "NY").count();
    assert_eq!(csv_rows(&text), [[in_new_york.to_string()]]);
}

#[test]
fn a_run_publishes_a_success_manifest_with_the_row_count_and_sha256_of_the_output() {
    let report = "generic_dispensing_rate";
    let (ws, _claims) = claims_workspace(30_000, report);
    let text = run_report(&ws, report, &["min_fills=40"]);
    let output = format!("reports/{report}/{AT}.csv");
    let manifest_path = format!("reports/{report}/_SUCCESS-{AT}.csv.json");
    // Published atomically: the output and its manifest, no temporary files left beside them.
    assert_eq!(
        ws.files_below("reports"),
        [ws.path(&output), ws.path(&manifest_path)]
    );

    let bytes = std::fs::read(ws.path(&output)).expect("read output");
    assert_eq!(bytes, text.as_bytes());
    let sha256: String = Sha256::digest(&bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let manifest_text = std::fs::read_to_string(ws.path(&manifest_path)).expect("manifest");
    let manifest: serde_json::Value =
        serde_json::from_str(&manifest_text).expect("the manifest is JSON");

    assert_eq!(manifest["report"], report, "{manifest_text}");
    let named = manifest["output"].as_str().expect("output is a string");
    assert!(named.ends_with(&output), "{manifest_text}");
    assert_eq!(
        manifest["rows"],
        csv_rows(&text).len() as u64,
        "{manifest_text}"
    );
    assert!(!csv_rows(&text).is_empty());
    assert_eq!(manifest["bytes"], bytes.len() as u64, "{manifest_text}");
    assert_eq!(manifest["sha256"], sha256.as_str(), "{manifest_text}");
    assert_eq!(
        manifest["params"],
        serde_json::json!({ "min_fills": 40 }),
        "{manifest_text}"
    );
    assert!(manifest.get("scheduled_for").is_some(), "{manifest_text}");
    assert_eq!(
        manifest["spillway_version"],
        env!("CARGO_PKG_VERSION"),
        "{manifest_text}"
    );
}
