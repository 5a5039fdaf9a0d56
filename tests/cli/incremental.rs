//! Incremental reports and dashboards: per-file aggregate states merged with fresh states of
//! new or changed files. Every incremental answer is checked against a full recompute of the
//! same report on the same files (`report run --full`, the path every other report test checks
//! against a plain fold), and the row counts against the files' own line counts.

use crate::common::{csv_rows, read_claims_csv, Workspace};
use std::collections::BTreeSet;
use std::path::Path;

/// Monthly spend by plan and state (exact decimals), and cost by diagnosis (a float standard
/// deviation) from `queries/`; min/max per plan; and a join to a small dimension table.
const REPORTS: &[&str] = &[
    "monthly_spend_by_plan_state",
    "cost_by_diagnosis_monthly",
    "extremes_by_plan",
    "paid_by_plan_type",
];

const EXTREMES: &str = r#"/* report
name = "extremes_by_plan"
output = "reports/{name}/{scheduled_date}.csv"
*/
SELECT plan_id, min(total_cost) AS cheapest, max(total_cost) AS dearest,
       min(fill_date) AS first_fill, max(fill_date) AS last_fill, count(*) AS claims
FROM claims
GROUP BY plan_id
ORDER BY plan_id;
"#;

const BY_PLAN_TYPE: &str = r#"/* report
name = "paid_by_plan_type"
output = "reports/{name}/{scheduled_date}.csv"
*/
SELECT p.plan_type, count(*) AS claims, sum(c.plan_paid) AS plan_paid,
       approx_distinct(c.member_id) > 0 AS has_members
FROM claims c JOIN plans p ON c.plan_id = p.plan_id
WHERE c.days_supply >= 30
GROUP BY p.plan_type
ORDER BY p.plan_type;
"#;

/// A workspace with two pools of generated claims files (`pool/a`: seed 7, `pool/b`: seed 8,
/// the "rewritten" versions), an empty `claims/` folder the table reads, a `plans` dimension
/// table, and the reports above. Returns the pool's file names.
fn workspace(rows: u64, files: usize) -> (Workspace, Vec<String>) {
    let ws = Workspace::new();
    let table = ws.gen_claims(rows, files, "csv", "pool/a");
    for (seed, out) in [("8", "pool/b")] {
        ws.run(&[
            "gen",
            "claims",
            "--rows",
            &rows.to_string(),
            "--files",
            &files.to_string(),
            "--format",
            "csv",
            "--out",
            out,
            "--seed",
            seed,
        ])
        .success();
    }
    let table = table.replace("pool/a/", "claims/");
    assert!(table.contains("claims/claims-"), "{table}");
    std::fs::create_dir_all(ws.path("claims")).unwrap();
    // Half the plans, each with a type by its contract's first letter.
    let mut plans = BTreeSet::new();
    for pool in ["pool/a", "pool/b"] {
        plans.extend(
            read_claims_csv(&ws.path(pool))
                .into_iter()
                .map(|c| c.plan_id),
        );
    }
    let mut dimension = String::from("plan_id,plan_type\n");
    for plan in plans.iter().step_by(2) {
        let kind = if plan.starts_with('H') {
            "MA-PD"
        } else {
            "PDP"
        };
        dimension.push_str(&format!("{plan},{kind}\n"));
    }
    ws.write("plans.csv", dimension);
    ws.write(
        "spillway.toml",
        format!(
            "{table}\n[tables.plans]\nlocation = \"plans.csv\"\nschema = {{ plan_id = \"string\", plan_type = \"string\" }}\n\n[reports]\nstate_dir = \"state\"\n"
        ),
    );
    for report in ["monthly_spend_by_plan_state", "cost_by_diagnosis_monthly"] {
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("queries")
            .join(format!("{report}.sql"));
        ws.write(
            &format!("queries/{report}.sql"),
            std::fs::read(source).unwrap(),
        );
    }
    ws.write("queries/extremes_by_plan.sql", EXTREMES);
    ws.write("queries/paid_by_plan_type.sql", BY_PLAN_TYPE);
    let mut names: Vec<String> = std::fs::read_dir(ws.path("pool/a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".csv"))
        .collect();
    names.sort();
    assert_eq!(names.len(), files);
    (ws, names)
}

/// What one run published: the output's rows and the manifest's `incremental` object.
struct Run {
    rows: Vec<Vec<String>>,
    states: serde_json::Value,
    stderr: String,
}

/// `report run REPORT --at AT [extra...] --stats`, read back.
fn run(ws: &Workspace, report: &str, at: &str, extra: &[&str]) -> Run {
    let mut args = vec![
        "report",
        "run",
        report,
        "--queries",
        "queries",
        "--at",
        at,
        "--stats",
    ];
    args.extend(extra);
    let outcome = ws.run(&args);
    outcome.success();
    let output = ws.path(&format!("reports/{report}/{at}.csv"));
    let manifest = ws.path(&format!("reports/{report}/_SUCCESS-{at}.csv.json"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    Run {
        rows: csv_rows(&std::fs::read_to_string(output).unwrap()),
        states: manifest["incremental"].clone(),
        stderr: outcome.stderr.clone(),
    }
}

/// The floating-point columns of the reports (by position): the only ones allowed to differ,
/// in their last digits (a different summation order). Counts, decimals, dates and text must
/// be equal to the character.
const FLOAT_COLUMNS: &[(&str, usize)] = &[("cost_by_diagnosis_monthly", 4)];

/// Exact equality, except in `report`'s float columns: relative 1e-12.
fn assert_same_result(report: &str, incremental: &[Vec<String>], full: &[Vec<String>], what: &str) {
    assert_eq!(incremental.len(), full.len(), "{what}: row counts");
    for (got, expected) in incremental.iter().zip(full) {
        assert_eq!(got.len(), expected.len(), "{what}");
        for (column, (a, b)) in got.iter().zip(expected).enumerate() {
            if a == b {
                continue;
            }
            let float = FLOAT_COLUMNS.contains(&(report, column));
            let close = match (a.parse::<f64>(), b.parse::<f64>()) {
                (Ok(x), Ok(y)) if float => (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
                _ => false,
            };
            assert!(close, "{what}: {a} vs {b} in\n{got:?}\n{expected:?}");
        }
    }
}

/// Data lines (claims) in the files of `claims/`, counted as text.
fn claims_in_folder(ws: &Workspace) -> u64 {
    ws.files_below("claims")
        .iter()
        .map(|path| std::fs::read_to_string(path).unwrap().lines().count() as u64 - 1)
        .sum()
}

/// A small deterministic generator (xorshift), so a failing sequence can be replayed.
struct Steps(u64);

impl Steps {
    fn next(&mut self, below: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % below as u64) as usize
    }
}

#[test]
fn incremental_runs_equal_full_recomputes_after_random_adds_rewrites_and_removals() {
    let (ws, names) = workspace(12_000, 8);
    let seed: u64 = std::env::var("SPILLWAY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1e55);
    let mut steps = Steps(seed);
    // Which version of each pool file is in `claims/`: none, a (seed 7) or b (seed 8).
    let mut present: Vec<Option<&str>> = vec![None; names.len()];
    let place = |i: usize, version: Option<&str>| {
        let target = ws.path("claims").join(&names[i]);
        match version {
            Some(pool) => {
                std::fs::copy(ws.path(&format!("pool/{pool}")).join(&names[i]), &target).unwrap();
            }
            None => std::fs::remove_file(&target).unwrap(),
        }
    };
    for i in 0..3 {
        place(i, Some("a"));
        present[i] = Some("a");
    }
    let mut seen = BTreeSet::new();
    for step in 0..16 {
        let (what, read, dropped) = if step == 0 {
            ("start", 3, 0)
        } else {
            let absent: Vec<usize> = (0..names.len()).filter(|&i| present[i].is_none()).collect();
            let here: Vec<usize> = (0..names.len()).filter(|&i| present[i].is_some()).collect();
            match steps.next(3) {
                0 if !absent.is_empty() => {
                    let i = absent[steps.next(absent.len())];
                    place(i, Some("a"));
                    present[i] = Some("a");
                    ("add", 1, 0)
                }
                1 if here.len() > 1 => {
                    let i = here[steps.next(here.len())];
                    place(i, None);
                    present[i] = None;
                    ("remove", 0, 1)
                }
                _ => {
                    let i = here[steps.next(here.len())];
                    let other = if present[i] == Some("a") { "b" } else { "a" };
                    place(i, Some(other));
                    present[i] = Some(other);
                    ("rewrite", 1, 1)
                }
            }
        };
        seen.insert(what);
        let files = present.iter().flatten().count() as u64;
        let context = format!("seed {seed:#x}, step {step} ({what}), files {present:?}");
        for report in REPORTS {
            let incremental = run(&ws, report, "2024-06-01", &[]);
            let full = run(&ws, report, "2024-06-02", &["--full"]);
            assert_same_result(
                report,
                &incremental.rows,
                &full.rows,
                &format!("{report}, {context}"),
            );
            assert_eq!(full.states["mode"], "full", "{context}");
            assert_eq!(full.states["reason"], "report run --full", "{context}");
            let states = &incremental.states;
            assert_eq!(
                (
                    states["files_read"].as_u64(),
                    states["files_dropped"].as_u64()
                ),
                (Some(read), Some(dropped)),
                "{report}, {context}: {states}"
            );
            assert_eq!(
                states["files_from_states"].as_u64(),
                Some(files - read),
                "{context}"
            );
            let scanned = format!("files scanned: {read} of {files} (");
            assert!(
                incremental.stderr.contains(&scanned),
                "{}",
                incremental.stderr
            );
            let expected_mode = if step == 0 { "full" } else { "incremental" };
            assert_eq!(
                states["mode"], expected_mode,
                "{report}, {context}: {states}"
            );
            assert!(
                incremental
                    .stderr
                    .contains(&format!("states:        {expected_mode}"))
                    || step == 0,
                "{}",
                incremental.stderr
            );
        }
        // Independently of both: every claim in the folder is counted once.
        let extremes = run(&ws, "extremes_by_plan", "2024-06-01", &[]);
        let counted: u64 = extremes
            .rows
            .iter()
            .map(|row| row[5].parse::<u64>().unwrap())
            .sum();
        assert_eq!(counted, claims_in_folder(&ws), "{context}");
    }
    assert_eq!(seen.len(), 4, "the sequence tried every change: {seen:?}");
    // The state folder holds one state per present file and report, and the indexes.
    let states = ws
        .files_below("state")
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "arrows"))
        .count();
    assert_eq!(states, REPORTS.len() * present.iter().flatten().count());
}

#[test]
fn a_report_that_cannot_merge_recomputes_in_full_and_says_why() {
    let (ws, names) = workspace(4_000, 2);
    for name in &names {
        std::fs::copy(ws.path("pool/a").join(name), ws.path("claims").join(name)).unwrap();
    }
    ws.write(
        "queries/median_cost.sql",
        "/* report\nname = \"median_cost\"\noutput = \"reports/{name}/{scheduled_date}.csv\"\n*/\n\
         SELECT plan_id, median(total_cost) AS median_cost FROM claims GROUP BY plan_id ORDER BY plan_id;\n",
    );
    ws.write(
        "queries/recent_claims.sql",
        "/* report\nname = \"recent_claims\"\noutput = \"reports/{name}/{scheduled_date}.csv\"\n*/\n\
         SELECT claim_id, total_cost FROM claims ORDER BY fill_date DESC, claim_id LIMIT 5;\n",
    );
    let median = run(&ws, "median_cost", "2024-06-01", &[]);
    assert_eq!(median.states["mode"], "full");
    assert_eq!(
        median.states["reason"],
        "`median` has no state that merges across files"
    );
    let recent = run(&ws, "recent_claims", "2024-06-01", &[]);
    assert_eq!(recent.states["reason"], "the query is not an aggregation");

    // A parameter change, then a changed SQL text: full, each with its reason.
    let report = "monthly_spend_by_plan_state";
    assert_eq!(
        run(&ws, report, "2024-06-01", &[]).states["reason"],
        "no stored states yet"
    );
    assert_eq!(
        run(&ws, report, "2024-06-01", &[]).states["mode"],
        "incremental"
    );
    let narrowed = run(&ws, report, "2024-06-01", &["--param", "states=CA,NY"]);
    assert_eq!(
        narrowed.states["reason"],
        "the parameters changed since the stored states"
    );
    let path = ws.path(&format!("queries/{report}.sql"));
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("sum(copay)      AS copay", "sum(copay) AS member_copay"),
    )
    .unwrap();
    let changed = run(&ws, report, "2024-06-01", &[]);
    assert_eq!(
        changed.states["reason"],
        "the SQL changed since the stored states"
    );

    // A column's type changed in the table's definition: the schema is named.
    let config = std::fs::read_to_string(ws.path("spillway.toml")).unwrap();
    let widened = config.replace("days_supply = \"int32\"", "days_supply = \"int64\"");
    assert_ne!(widened, config);
    ws.write("spillway.toml", &widened);
    let retyped = run(&ws, report, "2024-06-01", &[]);
    assert_eq!(
        retyped.states["reason"],
        "the table's schema changed since the stored states"
    );

    // `report show` says how the last run went and what is stored per file.
    let shown = ws.run(&["report", "show", report, "--queries", "queries"]);
    let shown = shown.success();
    assert!(
        shown.contains("full recompute (the table's schema changed since the stored states)"),
        "{shown}"
    );
    assert!(shown.contains("states:      2 files"), "{shown}");
    for name in &names {
        assert!(shown.contains(name.as_str()), "{shown}");
    }

    // `incremental = false`: full, and the states are reclaimed.
    std::fs::write(
        &path,
        std::fs::read_to_string(&path).unwrap().replacen(
            "format = \"csv\"",
            "format = \"csv\"\nincremental = false",
            1,
        ),
    )
    .unwrap();
    let off = run(&ws, report, "2024-06-01", &[]);
    assert_eq!(
        off.states["reason"],
        "incremental = false in the report's header"
    );
    let shown = ws.run(&["report", "show", report, "--queries", "queries"]);
    assert!(
        shown.success().contains("incremental: off"),
        "{}",
        shown.stdout
    );
}

#[test]
fn states_past_max_state_fall_back_to_a_full_recompute_with_a_warning() {
    let (ws, names) = workspace(4_000, 2);
    for name in &names {
        std::fs::copy(ws.path("pool/a").join(name), ws.path("claims").join(name)).unwrap();
    }
    let config = std::fs::read_to_string(ws.path("spillway.toml")).unwrap();
    ws.write(
        "spillway.toml",
        config.replace(
            "state_dir = \"state\"",
            "state_dir = \"state\"\nmax_state = \"4KiB\"",
        ),
    );
    let report = "monthly_spend_by_plan_state";
    let capped = run(&ws, report, "2024-06-01", &[]);
    assert_eq!(capped.states["mode"], "full");
    assert_eq!(
        capped.states["reason"],
        "its states would exceed max_state (4.0 KiB)"
    );
    assert!(
        capped.stderr.contains("would take more than max_state"),
        "{}",
        capped.stderr
    );
    assert!(
        ws.files_below("state").is_empty(),
        "{:?}",
        ws.files_below("state")
    );
    let full = run(&ws, report, "2024-06-02", &["--full"]);
    assert_eq!(capped.rows, full.rows);
}

#[test]
fn a_run_killed_after_writing_states_leaves_states_the_next_run_uses_correctly() {
    let (ws, names) = workspace(60_000, 3);
    for name in &names[..2] {
        std::fs::copy(ws.path("pool/a").join(name), ws.path("claims").join(name)).unwrap();
    }
    let report = "monthly_spend_by_plan_state";
    run(&ws, report, "2024-06-01", &[]);
    std::fs::copy(
        ws.path("pool/a").join(&names[2]),
        ws.path("claims").join(&names[2]),
    )
    .unwrap();
    // A stray temporary state from some earlier crash, which the next run must delete.
    let folder = ws.path(&format!("state/reports/{report}"));
    std::fs::write(folder.join(".tmp-1-stray.arrows"), b"half a state").unwrap();
    let before: BTreeSet<_> = ws.files_below("state").into_iter().collect();
    let mut child = ws
        .command()
        .args([
            "report",
            "run",
            report,
            "--queries",
            "queries",
            "--at",
            "2024-06-03",
        ])
        .spawn()
        .unwrap();
    // Kill it the moment the new file's state is published (or when it has finished).
    let killed = loop {
        let now: BTreeSet<_> = ws.files_below("state").into_iter().collect();
        let published = now.difference(&before).any(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.ends_with(".arrows") && !name.starts_with(".tmp-")
        });
        if published {
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            break true;
        }
        if child.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    let _ = child.wait();
    if killed {
        assert!(!ws
            .path(&format!("reports/{report}/2024-06-03.csv"))
            .exists());
    }
    let next = run(&ws, report, "2024-06-01", &[]);
    let full = run(&ws, report, "2024-06-02", &["--full"]);
    assert_eq!(next.rows, full.rows);
    assert_eq!(next.states["mode"], "incremental");
    assert_eq!(next.states["files_from_states"], 3, "{}", next.states);
    assert!(!folder.join(".tmp-1-stray.arrows").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_query_after_a_new_file_merges_that_files_state_only() {
    let (ws, names) = workspace(9_000, 3);
    for name in &names[..2] {
        std::fs::copy(ws.path("pool/a").join(name), ws.path("claims").join(name)).unwrap();
    }
    let sql =
        "SELECT plan_id, count(*) AS claims, sum(plan_paid) AS paid, max(total_cost) AS dearest \
               FROM claims WHERE member_state <> 'ZZ' GROUP BY plan_id ORDER BY plan_id";
    let expected = |ws: &Workspace| {
        let answer = ws.run(&["query", "--format", "csv", sql]);
        csv_rows(answer.success())
    };
    let server = crate::serve::Server::start(&ws, &[], &[]);
    let client = server.connect(&server.conninfo("dash", "")).await.unwrap();
    let first = crate::serve::rows(&client.simple_query(sql).await.unwrap());
    assert_eq!(first, expected(&ws));
    assert!(
        server
            .stderr()
            .contains("full recompute (no stored states yet)"),
        "{}",
        server.stderr()
    );

    std::fs::copy(
        ws.path("pool/a").join(&names[2]),
        ws.path("claims").join(&names[2]),
    )
    .unwrap();
    let second = crate::serve::rows(&client.simple_query(sql).await.unwrap());
    assert_eq!(second, expected(&ws));
    assert_ne!(second, first, "the new file changes the answer");
    let log = server.stderr();
    assert!(
        log.contains("incremental: 2 of 3 files from stored states, 1 read"),
        "{log}"
    );
    server.stop();
}

#[test]
fn over_s3_a_new_object_and_a_rewritten_one_are_all_a_run_reads() {
    let server = crate::s3::S3Server::start();
    let (ws, names) = workspace(9_000, 3);
    let config = std::fs::read_to_string(ws.path("spillway.toml")).unwrap();
    let remote = config.replace("\"claims/claims-", "\"s3://data/claims/claims-");
    assert_ne!(remote, config);
    ws.write(
        "spillway.toml",
        format!("{remote}\n{}", server.config(crate::s3::SECRET, "")),
    );
    let bucket = server.bucket("data").join("claims");
    std::fs::create_dir_all(&bucket).unwrap();
    let put = |name: &str, pool: &str| {
        std::fs::copy(
            ws.path(&format!("pool/{pool}")).join(name),
            bucket.join(name),
        )
        .unwrap();
    };
    put(&names[0], "a");
    put(&names[1], "a");
    let report = "monthly_spend_by_plan_state";
    assert_eq!(run(&ws, report, "2024-06-01", &[]).states["files_read"], 2);
    for (change, name, pool, dropped) in [
        ("added", &names[2], "a", 0),
        ("rewritten", &names[0], "b", 1),
    ] {
        put(name, pool);
        let incremental = run(&ws, report, "2024-06-01", &[]);
        let full = run(&ws, report, "2024-06-02", &["--full"]);
        assert_eq!(incremental.rows, full.rows, "{change}");
        let states = &incremental.states;
        assert_eq!(states["mode"], "incremental", "{change}: {states}");
        assert_eq!(
            (
                states["files_from_states"].as_u64(),
                states["files_read"].as_u64()
            ),
            (Some(2), Some(1)),
            "{change}: {states}"
        );
        assert_eq!(states["files_dropped"].as_u64(), Some(dropped), "{change}");
    }
    let shown = ws.run(&["report", "show", report, "--queries", "queries"]);
    assert!(
        shown.success().contains("s3://data/claims/"),
        "{}",
        shown.stdout
    );
}
