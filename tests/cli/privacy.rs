//! The PHI guard (`[privacy]`): masked and aggregate-only roles over generated claims, through
//! `query`, `psql`, `tokio-postgres` and psycopg; the audit chain; encrypted outputs.
//! Expected answers are folds over the generated CSV read by hand, and pseudonyms are computed
//! here with `ring`'s HMAC, independently of Spillway's code.

use crate::common::{read_claims_csv, Claim, Workspace};
use crate::serve::{rows, Server};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

const KEY: &str = "test-pseudonym-key-4f1c2a9e77d0b3";
const ANALYST_PASSWORD: &str = "masked-analyst-pw-31";
const ACTUARY_PASSWORD: &str = "aggregate-actuary-pw-59";
const OWNER_PASSWORD: &str = "owner-of-data-pw-77";
const MIN_CELL: usize = 11;

/// The pseudonym of a text value: the first 16 bytes of HMAC-SHA-256(KEY, value), in hex.
fn pseudonym(value: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, KEY.as_bytes());
    let tag = ring::hmac::sign(&key, value.as_bytes());
    tag.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `text` holds a raw member ID (`M` and nine digits) anywhere.
fn holds_raw_member_id(text: &[u8]) -> bool {
    text.windows(10)
        .any(|w| w[0] == b'M' && w[1..].iter().all(u8::is_ascii_digit))
}

/// The three plans with the most claims: the analyst's row filter lets only these through.
fn busiest_plans(claims: &[Claim]) -> Vec<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for claim in claims {
        *counts.entry(&claim.plan_id).or_default() += 1;
    }
    let mut by_count: Vec<(&str, usize)> = counts.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    by_count
        .iter()
        .take(3)
        .map(|(p, _)| p.to_string())
        .collect()
}

struct Setup {
    ws: Workspace,
    claims: Vec<Claim>,
    plans: Vec<String>,
}

/// Claims in `claims/`, and a policy: `analyst` (pseudonymised members, months, three plans;
/// the default role), `actuary` (aggregates only), `owner` (unrestricted); one server user each.
fn setup(rows: u64) -> Setup {
    let ws = Workspace::new();
    let table = ws.gen_claims(rows, 2, "csv", "claims");
    let claims = read_claims_csv(&ws.path("claims"));
    let plans = busiest_plans(&claims);
    let filter = plans
        .iter()
        .map(|p| format!("'{p}'"))
        .collect::<Vec<_>>()
        .join(", ");
    ws.write(
        "spillway.toml",
        format!(
            r#"{table}
[privacy]
key_env = "TEST_PSEUDONYM_KEY"
default_role = "analyst"
audit_log = "audit/audit.jsonl"
min_cell_size = {MIN_CELL}

[privacy.columns.claims]
member_id = "subject"
prescriber_npi = "identifier"
pharmacy_npi = "identifier"
fill_date = "quasi"

[privacy.roles.owner]
unrestricted = true

[privacy.roles.analyst.tables.claims]
mask = {{ member_id = "pseudonym", fill_date = "month" }}
filter = "plan_id IN ({filter})"

[privacy.roles.actuary]
aggregate_only = true

[privacy.roles.actuary.tables.claims]
mask = {{ member_id = "pseudonym" }}

[privacy.roles.actuary20]
aggregate_only = true
min_cell_size = 20

[server.users.analyst]
password_env = "ANALYST_PW"
role = "analyst"

[server.users.actuary]
password_env = "ACTUARY_PW"
role = "actuary"

[server.users.owner]
password_env = "OWNER_PW"
role = "owner"
"#
        ),
    );
    ws.write(
        "queries/member_fills.sql",
        "/* report\nname = \"member_fills\"\n*/\nSELECT member_id, count(*) AS fills FROM claims GROUP BY member_id\n",
    );
    ws.write(
        "queries/plan_members.sql",
        "/* report\nname = \"plan_members\"\n[params.plan]\ntype = \"string\"\ndefault = \"none\"\n*/\nSELECT member_id, claim_id FROM claims WHERE plan_id = $plan\n",
    );
    Setup { ws, claims, plans }
}

fn query(ws: &Workspace, args: &[&str]) -> crate::common::Outcome {
    let mut command = ws.command();
    command
        .env("TEST_PSEUDONYM_KEY", KEY)
        .arg("query")
        .args(args);
    crate::common::Outcome::from_output(command.output().expect("run spillway query"))
}

/// The query shapes a masked role must not get around the masks with.
const SHAPES: [&str; 14] = [
    "SELECT * FROM claims",
    "SELECT member_id FROM (SELECT * FROM claims) AS inner_claims",
    "WITH m AS (SELECT member_id FROM claims) SELECT member_id FROM m",
    "SELECT a.member_id, b.claim_id FROM claims a JOIN claims b ON a.claim_id = b.claim_id",
    "SELECT member_id FROM claims UNION SELECT member_id FROM claims",
    "SELECT CAST(member_id AS VARCHAR) || '!' FROM claims",
    "SELECT member_id, row_number() OVER (PARTITION BY member_id ORDER BY claim_id) FROM claims",
    "SELECT (SELECT max(member_id) FROM claims)",
    "SELECT claim_id FROM claims WHERE member_id IN (SELECT member_id FROM claims)",
    "SELECT array_agg(member_id) FROM claims",
    "SELECT string_agg(member_id, ',') FROM claims",
    "SELECT min(member_id), max(member_id) FROM claims",
    "SELECT upper(member_id), substr(member_id, 1, 10) FROM claims",
    "EXPLAIN SELECT * FROM claims",
];

#[test]
fn the_masked_role_never_sees_a_raw_member_id_through_any_query_shape() {
    let Setup { ws, claims, plans } = setup(6_000);
    assert!(holds_raw_member_id(claims[0].member_id.as_bytes()));
    for sql in SHAPES {
        let out = query(&ws, &["--format", "ndjson", sql]);
        let stdout = out.success();
        assert!(!stdout.trim().is_empty(), "{sql}: no output");
        assert!(
            !holds_raw_member_id(stdout.as_bytes()),
            "{sql} shows a raw member ID:\n{}",
            &stdout[..stdout.len().min(2000)]
        );
    }
    // A table given again over the same files is guarded as `claims`.
    let copy = query(
        &ws,
        &[
            "--table",
            "copy=claims/claims-*.csv",
            "--format",
            "csv",
            "SELECT member_id FROM copy",
        ],
    );
    assert!(!holds_raw_member_id(copy.success().as_bytes()));

    // Pseudonyms count and join exactly like the raw IDs, over the plans the filter lets in.
    let visible: Vec<&Claim> = claims
        .iter()
        .filter(|c| plans.contains(&c.plan_id))
        .collect();
    let mut per_member: BTreeMap<String, u64> = BTreeMap::new();
    for claim in &visible {
        *per_member.entry(pseudonym(&claim.member_id)).or_default() += 1;
    }
    let counted = query(
        &ws,
        &[
            "--format",
            "csv",
            "SELECT member_id, count(*) FROM claims GROUP BY member_id",
        ],
    );
    let got: BTreeMap<String, u64> = crate::common::csv_rows(counted.success())
        .into_iter()
        .map(|row| (row[0].clone(), row[1].parse().unwrap()))
        .collect();
    assert_eq!(got, per_member);
    let self_join: u64 = per_member.values().map(|n| n * n).sum();
    let joined = query(
        &ws,
        &[
            "--format",
            "csv",
            "SELECT count(*) FROM claims a JOIN claims b ON a.member_id = b.member_id",
        ],
    );
    assert_eq!(
        joined.success().lines().nth(1),
        Some(self_join.to_string().as_str())
    );

    // The row filter holds and dates are months.
    let per_plan = query(
        &ws,
        &[
            "--format",
            "csv",
            "SELECT plan_id, count(*) FROM claims GROUP BY plan_id ORDER BY plan_id",
        ],
    );
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    for claim in &visible {
        *expected.entry(claim.plan_id.clone()).or_default() += 1;
    }
    let got: BTreeMap<String, usize> = crate::common::csv_rows(per_plan.success())
        .into_iter()
        .map(|row| (row[0].clone(), row[1].parse().unwrap()))
        .collect();
    assert_eq!(got, expected);
    let days = query(
        &ws,
        &["--format", "csv", "SELECT DISTINCT fill_date FROM claims"],
    );
    let days: Vec<Vec<String>> = crate::common::csv_rows(days.success())
        .into_iter()
        .collect();
    let months: BTreeSet<String> = visible.iter().map(|c| c.fill_month()).collect();
    assert_eq!(
        days.into_iter()
            .map(|r| r[0].clone())
            .collect::<BTreeSet<_>>(),
        months
    );

    // Calling pseudonym() would turn a member ID the analyst knows into its token: refused, in
    // a subquery or a prepared statement's parameter alike. A role that sees IDs raw may.
    for sql in [
        format!(
            "SELECT count(*) FROM claims WHERE member_id = pseudonym('{}')",
            claims[0].member_id
        ),
        "SELECT claim_id FROM claims WHERE member_id IN (SELECT pseudonym(member_id) FROM claims)"
            .to_string(),
    ] {
        let refused = query(&ws, &[sql.as_str()]);
        let message = refused.failure(9);
        assert!(
            message.contains("role `analyst` may not call pseudonym()"),
            "{sql}: {message}"
        );
    }
    let owner = query(
        &ws,
        &[
            "--role",
            "owner",
            "--format",
            "csv",
            "SELECT pseudonym('M000000001') AS p",
        ],
    );
    assert_eq!(owner.success(), format!("p\n{}\n", pseudonym("M000000001")));
}

/// Per (member_state, brand_generic): claims, total cost in cents and distinct members.
fn cells(claims: &[Claim]) -> BTreeMap<(String, String), (u64, i64, BTreeSet<String>)> {
    let mut cells: BTreeMap<(String, String), (u64, i64, BTreeSet<String>)> = BTreeMap::new();
    for claim in claims {
        let cell = cells
            .entry((claim.member_state.clone(), claim.brand_generic.clone()))
            .or_default();
        cell.0 += 1;
        cell.1 += claim.total_cost_cents;
        cell.2.insert(claim.member_id.clone());
    }
    cells
}

#[test]
fn the_aggregate_only_role_gets_exactly_the_groups_of_at_least_min_cell_size_members() {
    let Setup { ws, claims, .. } = setup(6_000);
    let all = cells(&claims);
    let expected: BTreeMap<(String, String), (u64, i64)> = all
        .iter()
        .filter(|(_, cell)| cell.2.len() >= MIN_CELL)
        .map(|(key, cell)| (key.clone(), (cell.0, cell.1)))
        .collect();
    let suppressed = all.len() - expected.len();
    assert!(
        suppressed > 0 && !expected.is_empty(),
        "the data must have both kinds of cells"
    );

    let out = query(
        &ws,
        &[
            "--role",
            "actuary",
            "--stats",
            "--format",
            "csv",
            "SELECT member_state, brand_generic, count(*), sum(total_cost) FROM claims \
             GROUP BY member_state, brand_generic",
        ],
    );
    let got: BTreeMap<(String, String), (u64, i64)> = crate::common::csv_rows(out.success())
        .into_iter()
        .map(|row| {
            (
                (row[0].clone(), row[1].clone()),
                (row[2].parse().unwrap(), crate::common::cents(&row[3])),
            )
        })
        .collect();
    assert_eq!(got, expected);
    assert!(
        out.stderr
            .contains(&format!("suppressed:    {suppressed} groups")),
        "{}",
        out.stderr
    );

    // A role's own min_cell_size overrides [privacy]'s.
    let strict = query(
        &ws,
        &[
            "--role",
            "actuary20",
            "--format",
            "csv",
            "SELECT member_state, brand_generic, count(*), sum(total_cost) FROM claims \
             GROUP BY member_state, brand_generic",
        ],
    );
    let got: BTreeSet<(String, String)> = crate::common::csv_rows(strict.success())
        .into_iter()
        .map(|row| (row[0].clone(), row[1].clone()))
        .collect();
    let at_least_20: BTreeSet<(String, String)> = all
        .iter()
        .filter(|(_, cell)| cell.2.len() >= 20)
        .map(|(key, _)| key.clone())
        .collect();
    assert!(at_least_20.len() < expected.len(), "the override must bite");
    assert_eq!(got, at_least_20);

    // DISTINCT is a grouping too.
    let states = query(
        &ws,
        &[
            "--role",
            "actuary",
            "--format",
            "csv",
            "SELECT DISTINCT member_state FROM claims",
        ],
    );
    let mut per_state: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for claim in &claims {
        per_state
            .entry(claim.member_state.clone())
            .or_default()
            .insert(claim.member_id.clone());
    }
    let big: BTreeSet<String> = per_state
        .into_iter()
        .filter(|(_, members)| members.len() >= MIN_CELL)
        .map(|(state, _)| state)
        .collect();
    let got: BTreeSet<String> = crate::common::csv_rows(states.success())
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(got, big);

    // A filter that narrows a group to one person is suppressed on the filtered rows.
    let target = pseudonym(&claims[0].member_id);
    let narrowed = query(
        &ws,
        &[
            "--role",
            "actuary",
            "--format",
            "csv",
            &format!("SELECT count(*), sum(total_cost) FROM claims WHERE member_id = '{target}'"),
        ],
    );
    assert_eq!(
        narrowed.success().lines().count(),
        1,
        "only the header: {}",
        narrowed.stdout
    );

    // Rows of people are refused, naming the rule.
    for sql in [
        "SELECT * FROM claims",
        "SELECT total_cost FROM claims ORDER BY total_cost DESC LIMIT 5",
        "SELECT plan_id, sum(total_cost) OVER (PARTITION BY plan_id) FROM claims",
    ] {
        let refused = query(&ws, &["--role", "actuary", sql]);
        let message = refused.failure(9);
        assert!(
            message.contains("role `actuary` reads `claims` only through aggregates"),
            "{sql}: {message}"
        );
        assert!(refused.stdout.is_empty(), "{sql}: {}", refused.stdout);
    }

    // Aggregates that hand back the rows' own values are no summary, however big the group.
    for (sql, function) in [
        (
            "SELECT member_state, array_agg(total_cost) FROM claims GROUP BY member_state",
            "array_agg",
        ),
        (
            "SELECT member_state, string_agg(ndc, ',') FROM claims GROUP BY member_state",
            "string_agg",
        ),
        (
            // The same collector as a window, its lists then picked by max().
            "SELECT member_state, max(a) FROM (SELECT member_state, array_agg(ndc) \
             OVER (PARTITION BY member_state) AS a FROM claims) t GROUP BY member_state",
            "array_agg",
        ),
    ] {
        let refused = query(&ws, &["--role", "actuary", sql]);
        let message = refused.failure(9);
        assert!(
            message.contains(&format!(
                "role `actuary` reads protected tables only through aggregates (aggregate_only): `{function}` returns the rows' own values"
            )),
            "{sql}: {message}"
        );
        assert!(refused.stdout.is_empty(), "{sql}: {}", refused.stdout);
    }
}

#[test]
fn a_role_masking_with_pseudonym_without_a_key_is_a_config_error_and_keys_never_print() {
    let Setup { ws, .. } = setup(200);
    let mut command = ws.command();
    command
        .env_remove("TEST_PSEUDONYM_KEY")
        .args(["query", "SELECT 1"]);
    let out = crate::common::Outcome::from_output(command.output().unwrap());
    let message = out.failure(3);
    assert!(
        message.contains("TEST_PSEUDONYM_KEY is not set"),
        "{message}"
    );

    let explained = {
        let mut command = ws.command();
        command
            .env("TEST_PSEUDONYM_KEY", KEY)
            .args(["explain", "SELECT member_id FROM claims"]);
        crate::common::Outcome::from_output(command.output().unwrap())
    };
    let plan = explained.success();
    assert!(plan.contains("pseudonym("), "{plan}");
    assert!(!plan.contains(KEY) && !explained.stderr.contains(KEY));
    let audit = std::fs::read_to_string(ws.path("audit/audit.jsonl")).unwrap_or_default();
    assert!(!audit.contains(KEY));
}

/// `spillway audit verify` on the workspace's log.
fn verify(ws: &Workspace) -> crate::common::Outcome {
    // Without the pseudonym key: a privacy officer checks the log without it.
    ws.run(&["audit", "verify"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_hold_over_psql_tokio_postgres_and_psycopg_and_the_cache_never_crosses_roles() {
    let Setup { ws, claims, plans } = setup(4_000);
    let env = [
        ("TEST_PSEUDONYM_KEY", KEY),
        ("ANALYST_PW", ANALYST_PASSWORD),
        ("ACTUARY_PW", ACTUARY_PASSWORD),
        ("OWNER_PW", OWNER_PASSWORD),
    ];
    let server = Server::start(&ws, &[], &env);
    let analyst = server.conninfo("analyst", "sslmode=disable");

    // psql: every shape, a cursor.
    for sql in SHAPES {
        let out = server.psql(&analyst, Some(ANALYST_PASSWORD), &["-c", sql]);
        let stdout = out.success();
        assert!(
            !holds_raw_member_id(stdout.as_bytes()),
            "psql {sql}:\n{stdout}"
        );
    }
    // Report views and table functions read the masked rows too.
    for sql in [
        "SELECT * FROM member_fills".to_string(),
        format!("SELECT * FROM plan_members('{}')", plans[0]),
    ] {
        let out = server.psql(&analyst, Some(ANALYST_PASSWORD), &["-c", &sql]);
        let stdout = out.success();
        assert!(!stdout.trim().is_empty(), "{sql}: no rows");
        assert!(
            !holds_raw_member_id(stdout.as_bytes()),
            "psql {sql}:\n{stdout}"
        );
    }
    let cursor = server.psql(
        &analyst,
        Some(ANALYST_PASSWORD),
        &[
            "-c",
            "BEGIN; DECLARE c CURSOR FOR SELECT * FROM claims; FETCH 50 FROM c; CLOSE c; COMMIT;",
        ],
    );
    let fetched = cursor.success();
    assert!(fetched.lines().count() >= 50, "{fetched}");
    assert!(!holds_raw_member_id(fetched.as_bytes()), "{fetched}");

    // tokio-postgres: a prepared statement with a parameter, binary results.
    let client = server
        .connect(&server.conninfo("analyst", &format!("password={ANALYST_PASSWORD}")))
        .await
        .unwrap();
    let statement = client
        .prepare("SELECT member_id, count(*) FROM claims WHERE plan_id = $1 GROUP BY member_id")
        .await
        .unwrap();
    let got: BTreeMap<String, i64> = client
        .query(&statement, &[&plans[0]])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get::<_, String>(0), row.get::<_, i64>(1)))
        .collect();
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for claim in claims.iter().filter(|c| c.plan_id == plans[0]) {
        *expected.entry(pseudonym(&claim.member_id)).or_default() += 1;
    }
    assert_eq!(got, expected);
    // A plan outside the role's filter has no rows, even asked for by name.
    let outside = claims.iter().find(|c| !plans.contains(&c.plan_id)).unwrap();
    assert!(client
        .query(&statement, &[&outside.plan_id])
        .await
        .unwrap()
        .is_empty());

    // psycopg 3: shapes, a server-side cursor, a bound parameter.
    let stdout = python_script(
        "psycopg_privacy.py",
        &[
            &server.port.to_string(),
            "analyst",
            ANALYST_PASSWORD,
            &plans[0],
        ],
    );
    assert!(!holds_raw_member_id(&stdout));
    let result: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    let visible = claims.iter().filter(|c| plans.contains(&c.plan_id)).count();
    assert_eq!(
        result["server_side_cursor"].as_array().unwrap().len(),
        visible
    );

    // The cache: the owner's raw result is never served to the analyst.
    let sql = "SELECT member_id, count(*) FROM claims GROUP BY member_id ORDER BY 1 LIMIT 5";
    let owner = server.psql(
        &server.conninfo("owner", "sslmode=disable"),
        Some(OWNER_PASSWORD),
        &["-c", sql],
    );
    assert!(
        holds_raw_member_id(owner.success().as_bytes()),
        "the owner sees raw IDs"
    );
    for _ in 0..2 {
        let masked = server.psql(&analyst, Some(ANALYST_PASSWORD), &["-c", sql]);
        assert!(
            !holds_raw_member_id(masked.success().as_bytes()),
            "{}",
            masked.stdout
        );
    }
    let stats = server.psql(
        &server.conninfo("owner", "sslmode=disable"),
        Some(OWNER_PASSWORD),
        &["-c", "SHOW spillway_stats"],
    );
    let hits = stats
        .success()
        .lines()
        .find_map(|l| l.strip_prefix("cache_hits|"))
        .and_then(|n| n.trim().parse::<u64>().ok());
    assert!(hits >= Some(1), "{}", stats.stdout);

    // The aggregate-only user: small cells suppressed, rows refused, both logged.
    let actuary = server
        .connect(&server.conninfo("actuary", &format!("password={ACTUARY_PASSWORD}")))
        .await
        .unwrap();
    let grouped = rows(
        &actuary
            .simple_query("SELECT member_state, brand_generic, count(*) FROM claims GROUP BY 1, 2")
            .await
            .unwrap(),
    );
    let expected: BTreeSet<(String, String, String)> = cells(&claims)
        .into_iter()
        .filter(|(_, cell)| cell.2.len() >= MIN_CELL)
        .map(|((state, kind), cell)| (state, kind, cell.0.to_string()))
        .collect();
    let got: BTreeSet<(String, String, String)> = grouped
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
        .collect();
    assert_eq!(got, expected);
    let refused = actuary
        .simple_query("SELECT * FROM claims")
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    assert!(
        format!("{refused:?}").contains("only through aggregates"),
        "{refused:?}"
    );
    drop(client);
    drop(actuary);
    let log = server.stderr();
    assert!(log.contains("small cells suppressed"), "{log}");
    server.stop();

    // The audit chain: intact, one record per statement with who and from where, no secret.
    let intact = verify(&ws);
    assert!(
        intact.success().contains("chain intact"),
        "{}",
        intact.stdout
    );
    let path = ws.path("audit/audit.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    for secret in [KEY, ANALYST_PASSWORD, ACTUARY_PASSWORD, OWNER_PASSWORD] {
        assert!(!text.contains(secret), "the audit log holds a secret");
    }
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(records.len() > SHAPES.len());
    let first = &records[0];
    assert_eq!(first["entry"], "serve");
    assert_eq!(first["user"], "analyst");
    assert_eq!(first["role"], "analyst");
    assert!(first["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(first["inputs"].as_array().unwrap().len() == 2, "{first}");
    assert!(records
        .iter()
        .any(|r| r["role"] == "actuary" && r["suppressed_groups"].as_u64() > Some(0)));
    assert!(records
        .iter()
        .any(|r| r["outcome"].as_str().unwrap().starts_with("error:")));

    // Editing a record is found at its line; so is deleting one.
    let lines: Vec<&str> = text.lines().collect();
    let edited: Vec<String> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if i == 2 {
                l.replacen("\"rows\":", "\"rows\":1", 1)
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&path, edited.join("\n") + "\n").unwrap();
    let broken = verify(&ws);
    assert!(
        broken.failure(5).contains("record 3 (line 3)"),
        "{}",
        broken.stderr
    );
    let deleted: Vec<&str> = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, l)| *l)
        .collect();
    std::fs::write(&path, deleted.join("\n") + "\n").unwrap();
    let broken = verify(&ws);
    let message = broken.failure(5);
    assert!(
        message.contains("record 2 (line 2)") && message.contains("deleted"),
        "{message}"
    );
}

#[test]
fn query_and_report_runs_are_audited_and_an_unwritable_log_fails_the_statement() {
    let Setup { ws, claims, .. } = setup(500);
    std::fs::create_dir_all(ws.path("out")).unwrap();
    let out = query(
        &ws,
        &[
            "-o",
            "out/plans.csv",
            "SELECT plan_id, count(*) FROM claims GROUP BY plan_id",
        ],
    );
    out.success();
    let records: Vec<serde_json::Value> = std::fs::read_to_string(ws.path("audit/audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = records.last().unwrap();
    assert_eq!(last["entry"], "query");
    assert_eq!(last["role"], "analyst");
    assert_eq!(last["outcome"], "ok");
    let bytes = std::fs::read(ws.path("out/plans.csv")).unwrap();
    use sha2::Digest;
    let digest: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(last["output_sha256"], digest.as_str());
    assert_eq!(last["inputs"].as_array().unwrap().len(), 2);
    assert!(verify(&ws).success().contains("chain intact"));

    // A report run by the aggregate-only role: one member per group, so every group is
    // suppressed, and the manifest and the audit record say how many.
    let members: BTreeSet<&str> = claims.iter().map(|c| c.member_id.as_str()).collect();
    let mut command = ws.command();
    command.env("TEST_PSEUDONYM_KEY", KEY).args([
        "report",
        "run",
        "member_fills",
        "--queries",
        "queries",
        "--role",
        "actuary",
        "--at",
        "2026-12-01",
    ]);
    crate::common::Outcome::from_output(command.output().unwrap()).success();
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(ws.path("reports/member_fills/_SUCCESS-2026-12-01.csv.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["rows"], 0);
    assert_eq!(manifest["suppressed_groups"], members.len() as u64);
    let shown = ws.run(&["audit", "show", "--json"]);
    let last: serde_json::Value =
        serde_json::from_str(shown.success().lines().last().unwrap()).unwrap();
    assert_eq!(last["entry"], "report");
    assert_eq!(last["report"], "member_fills");
    assert_eq!(last["role"], "actuary");
    assert_eq!(last["suppressed_groups"], members.len() as u64);
    let listed = ws.run(&["audit", "show", "--user", "nobody-of-that-name"]);
    assert!(listed.success().is_empty());
    let since_past = ws.run(&["audit", "show", "--json", "--since", "2000-01-01"]);
    assert_eq!(since_past.success().lines().count(), 2);
    let since_future = ws.run(&["audit", "show", "--since", "2999-01-01"]);
    assert!(since_future.success().is_empty());

    // DataFusion's hashing functions are built in.
    let md5 = query(&ws, &["--format", "csv", "SELECT md5('abc') AS h"]);
    assert_eq!(
        md5.success().lines().nth(1),
        Some("900150983cd24fb0d6963f7d28e17f72")
    );

    // A log that cannot be written: no statement runs and no output appears.
    std::fs::remove_file(ws.path("audit/audit.jsonl")).unwrap();
    std::fs::create_dir_all(ws.path("audit/audit.jsonl")).unwrap();
    let refused = query(&ws, &["-o", "out/again.csv", "SELECT count(*) FROM claims"]);
    assert!(
        refused.failure(9).contains("audit log"),
        "{}",
        refused.stderr
    );
    assert!(!ws.path("out/again.csv").exists());
}

/// The standard output of `tests/python/NAME` run with `args`, which must succeed.
fn python_script(name: &str, args: &[&str]) -> Vec<u8> {
    let output = Command::new(crate::serve_python::python())
        .arg(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/python")
                .join(name),
        )
        .args(args)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// (plan_id -> claims, plan_paid in cents) read by DuckDB with the key; asserts that DuckDB
/// cannot read the file without it.
fn read_encrypted(file: &std::path::Path, raw_key: &str) -> BTreeMap<String, (u64, i64)> {
    let stdout = python_script("duckdb_decrypt.py", &[file.to_str().unwrap(), raw_key]);
    let result: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    assert!(
        result["without_key"].is_string(),
        "read without the key: {result}"
    );
    result["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row[0].as_str().unwrap().to_string(),
                (
                    row[1].as_str().unwrap().parse().unwrap(),
                    crate::common::cents(row[2].as_str().unwrap()),
                ),
            )
        })
        .collect()
}

#[test]
fn an_encrypted_parquet_output_reads_back_with_the_key_in_duckdb_and_not_without() {
    let Setup { ws, claims, .. } = setup(800);
    std::fs::create_dir_all(ws.path("out")).unwrap();
    // 32 bytes of key: DuckDB is given them as text, Spillway as base64.
    let raw_key = "spillway-test-key-0123456789abcd";
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(raw_key);
    let mut command = ws.command();
    command
        .env("TEST_PSEUDONYM_KEY", KEY)
        .env("SPILLWAY_ENCRYPTION_KEY", &encoded)
        .args([
            "query",
            "--role",
            "owner",
            "--encrypt",
            "-o",
            "out/paid.parquet",
            "SELECT plan_id, count(*) AS n, sum(plan_paid) AS paid FROM claims GROUP BY plan_id",
        ]);
    let out = crate::common::Outcome::from_output(command.output().unwrap());
    out.success();
    assert!(!out.stderr.contains(&encoded));
    let file = ws.path("out/paid.parquet");
    let bytes = std::fs::read(&file).unwrap();
    // An encrypted footer ends in "PARE" instead of "PAR1".
    assert_eq!(&bytes[bytes.len() - 4..], b"PARE");

    let mut expected: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    for claim in &claims {
        let entry = expected.entry(claim.plan_id.clone()).or_default();
        entry.0 += 1;
        entry.1 += claim.plan_paid_cents;
    }
    assert_eq!(read_encrypted(&file, raw_key), expected);

    // A report with `encrypt = true` in its header: the same, and the key is in no record.
    ws.write(
        "queries/paid.sql",
        "/* report\nname = \"paid\"\nformat = \"parquet\"\nencrypt = true\n*/\n\
         SELECT plan_id, count(*) AS n, sum(plan_paid) AS paid FROM claims GROUP BY plan_id\n",
    );
    let mut command = ws.command();
    command
        .env("TEST_PSEUDONYM_KEY", KEY)
        .env("SPILLWAY_ENCRYPTION_KEY", &encoded)
        .args([
            "report",
            "run",
            "paid",
            "--queries",
            "queries",
            "--role",
            "owner",
            "--at",
            "2026-12-01",
        ]);
    let run = crate::common::Outcome::from_output(command.output().unwrap());
    run.success();
    let report = ws.path("reports/paid/2026-12-01.parquet");
    let bytes = std::fs::read(&report).unwrap();
    assert_eq!(&bytes[bytes.len() - 4..], b"PARE");
    assert_eq!(read_encrypted(&report, raw_key), expected);
    let audit = std::fs::read_to_string(ws.path("audit/audit.jsonl")).unwrap();
    assert!(audit.contains("\"report\":\"paid\""), "{audit}");
    assert!(!audit.contains(&encoded) && !audit.contains(raw_key));
    assert!(!run.stderr.contains(&encoded) && !run.stdout.contains(&encoded));

    // Only Parquet can be encrypted; a missing key is named, not guessed.
    let csv = query(&ws, &["--encrypt", "-o", "out/x.csv", "SELECT 1"]);
    assert!(csv
        .failure(2)
        .contains("only Parquet outputs can be encrypted"));
    let no_key = query(&ws, &["--encrypt", "-o", "out/x.parquet", "SELECT 1"]);
    assert!(
        no_key.failure(2).contains("SPILLWAY_ENCRYPTION_KEY"),
        "{}",
        no_key.stderr
    );
}
