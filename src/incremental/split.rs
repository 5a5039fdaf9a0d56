//! Where a physical plan splits into a per-file part and a merge part, or why it does not.
//!
//! The per-file part is the bottom-most aggregation's partial stage with everything below it;
//! the merge part is the rest of the plan, which takes the partial states (whoever computed
//! them) through the final stage. The split is sound only when the partial stage over the
//! union of the files equals the union of its runs over each file: every aggregate has a
//! mergeable state, and between the aggregation and the one table read per file (the "fact"
//! table: the largest scan) lie only operators that act on each row by itself (filters,
//! projections, repartitions, sorts without a limit, and joins that keep or drop each row of
//! the fact side on its own, against tables that do not change between files). Must not
//! execute anything: `incremental` runs what this module builds.

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{JoinType, Result as DfResult};
use datafusion::config::ConfigOptions;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig, FileScanConfigBuilder};
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::joins::{HashJoinExec, NestedLoopJoinExec, SortMergeJoinExec};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::Partitioning;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Aggregates whose partial states merge into exactly the state of the union (floats: up to
/// summation order). `median`, `array_agg`, `string_agg`, `first_value`, ... are not here:
/// their states are every value, or depend on the order rows arrive in. The privacy guard
/// takes the same list as the summaries an aggregate-only role may ask for.
pub(crate) const MERGEABLE: &[&str] = &[
    "count",
    "sum",
    "avg",
    "mean",
    "min",
    "max",
    "stddev",
    "stddev_samp",
    "stddev_pop",
    "var",
    "var_samp",
    "var_pop",
    "var_population",
    "var_sample",
    "corr",
    "covar",
    "covar_samp",
    "covar_pop",
    "regr_slope",
    "regr_intercept",
    "regr_count",
    "regr_r2",
    "regr_avgx",
    "regr_avgy",
    "regr_sxx",
    "regr_syy",
    "regr_sxy",
    "approx_distinct",
    "approx_percentile_cont",
    "approx_percentile_cont_with_weight",
    "approx_median",
    "bool_and",
    "bool_or",
    "bit_and",
    "bit_or",
    "bit_xor",
];

/// One input file of the fact table: who it is (path, size, modification time, ETag) and the
/// byte ranges the plan split it into.
#[derive(Debug, Clone)]
pub(crate) struct InputFile {
    /// The file's URL: its store and its path there (`file:///data/a.csv`).
    pub(crate) path: String,
    pub(crate) size: u64,
    pub(crate) modified: String,
    pub(crate) etag: Option<String>,
    /// The file whole (no range), with its partition values.
    pub(crate) whole: PartitionedFile,
}

impl InputFile {
    /// What identifies this version of the file: a rewrite changes its size, time or ETag.
    pub(crate) fn fingerprint(&self) -> String {
        format!(
            "{}\u{1f}{}\u{1f}{}\u{1f}{}",
            self.path,
            self.size,
            self.modified,
            self.etag.as_deref().unwrap_or("")
        )
    }
}

/// A plan that splits: the node to replace, the partial stage to run per file, the fact scan.
pub(crate) struct Split {
    /// The bottom-most aggregation as planned (mode `Partial`, or `Single` when the planner
    /// did not split it).
    aggregate: Arc<dyn ExecutionPlan>,
    /// The partial stage: `aggregate` itself, or a partial copy of a `Single` one.
    pub(crate) partial: Arc<dyn ExecutionPlan>,
    /// The scan of the fact table, as planned (over every file).
    fact: Arc<dyn ExecutionPlan>,
    fact_config: FileScanConfig,
    /// The fact table's files, by path.
    pub(crate) files: Vec<InputFile>,
    /// What else the per-file part reads (joined tables): their files' fingerprints. A change
    /// there changes every file's state.
    pub(crate) joined: Vec<String>,
    /// The fact table's columns and types, as read.
    pub(crate) fact_schema: String,
}

/// Find the split of `plan`, or say in a sentence why it has none.
pub(crate) fn find(plan: &Arc<dyn ExecutionPlan>) -> Result<Split, String> {
    let mut bottom = Vec::new();
    bottom_aggregates(plan, &mut bottom);
    let aggregate = match bottom.as_slice() {
        [] => return Err("the query is not an aggregation".into()),
        [one] => one.clone(),
        _ => return Err("the query has more than one aggregation over its tables".into()),
    };
    let Some(exec) = aggregate.downcast_ref::<AggregateExec>() else {
        return Err("internal: an aggregation that is not an AggregateExec".into());
    };
    check_aggregates(exec)?;
    let partial: Arc<dyn ExecutionPlan> = match exec.mode() {
        AggregateMode::Partial => aggregate.clone(),
        AggregateMode::Single | AggregateMode::SinglePartitioned => Arc::new(
            AggregateExec::try_new(
                AggregateMode::Partial,
                exec.group_expr().clone(),
                exec.aggr_expr().to_vec(),
                exec.filter_expr().to_vec(),
                exec.input().clone(),
                exec.input_schema(),
            )
            .map_err(|e| format!("internal: {e}"))?,
        ),
        other => return Err(format!("internal: a bottom aggregation in mode {other:?}")),
    };
    if exec.limit_options().is_some() {
        return Err("the aggregation carries a LIMIT of its own".into());
    }
    let mut scans = Vec::new();
    file_scans(exec.input(), &mut scans);
    let (fact, fact_config) = scans
        .iter()
        .max_by_key(|(_, config)| bytes_of(config))
        .cloned()
        .ok_or_else(|| "the aggregation reads no files".to_string())?;
    if fact_config.limit.is_some() {
        return Err("a LIMIT applies to the rows before the aggregation".into());
    }
    let fact_files = files_of(&fact_config);
    let mut joined = Vec::new();
    for (scan, config) in &scans {
        if Arc::ptr_eq(scan, &fact) {
            continue;
        }
        let files = files_of(config);
        if files.keys().any(|path| fact_files.contains_key(path)) {
            return Err("the aggregation reads its table more than once (a self-join)".into());
        }
        joined.extend(files.values().map(InputFile::fingerprint));
    }
    joined.sort();
    path_is_row_by_row(exec.input(), &fact)?;
    let fact_schema = format!("{:?}", fact_config.file_schema());
    Ok(Split {
        aggregate,
        partial,
        fact,
        fact_config,
        files: fact_files.into_values().collect(),
        joined,
        fact_schema,
    })
}

impl Split {
    /// The partial stage over one file of the fact table, its ranges spread over
    /// `target_partitions` like a planned scan's.
    pub(crate) fn partial_over(
        &self,
        file: &InputFile,
        options: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let config = FileScanConfigBuilder::from(self.fact_config.clone())
            .with_file_groups(vec![FileGroup::new(vec![file.whole.clone()])])
            .with_output_partitioning(None)
            .build();
        let scan: Arc<dyn ExecutionPlan> = DataSourceExec::from_data_source(config);
        let scan = scan
            .repartitioned(options.execution.target_partitions, options)?
            .unwrap_or(scan);
        // Fresh operator state for each run: some operators (repartitions) may run only once.
        datafusion::physical_plan::execution_plan::reset_plan_states(replace(
            &self.partial,
            &self.fact,
            scan,
        )?)
    }

    /// `plan` with the per-file part replaced by `states`, a scan of partial states.
    pub(crate) fn merge_over(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        states: Arc<dyn ExecutionPlan>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let Some(exec) = self.aggregate.downcast_ref::<AggregateExec>() else {
            return Ok(plan.clone());
        };
        let replacement: Arc<dyn ExecutionPlan> = match exec.mode() {
            AggregateMode::Partial => states,
            // A single-stage aggregation becomes its final stage over the merged states: one
            // stream, or (when its parent relies on the partitioning by the group keys) the
            // states hash-partitioned by those keys as the input was.
            mode => {
                let group = exec.group_expr().as_final();
                let (mode, input): (_, Arc<dyn ExecutionPlan>) = match mode {
                    AggregateMode::SinglePartitioned => {
                        let keys = group.input_exprs();
                        let count = exec.properties().output_partitioning().partition_count();
                        let hashed = Partitioning::Hash(keys, count);
                        (
                            AggregateMode::FinalPartitioned,
                            Arc::new(RepartitionExec::try_new(states, hashed)?),
                        )
                    }
                    _ => (
                        AggregateMode::Final,
                        Arc::new(CoalescePartitionsExec::new(states)),
                    ),
                };
                Arc::new(AggregateExec::try_new(
                    mode,
                    group,
                    exec.aggr_expr().to_vec(),
                    exec.filter_expr().to_vec(),
                    input,
                    exec.input_schema(),
                )?)
            }
        };
        replace(plan, &self.aggregate, replacement)
    }
}

/// `plan` with the node `old` (by identity) replaced by `new`.
fn replace(
    plan: &Arc<dyn ExecutionPlan>,
    old: &Arc<dyn ExecutionPlan>,
    new: Arc<dyn ExecutionPlan>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    Ok(plan
        .clone()
        .transform_down(|node| {
            Ok(match Arc::ptr_eq(&node, old) {
                true => Transformed::new(new.clone(), true, TreeNodeRecursion::Jump),
                false => Transformed::no(node),
            })
        })?
        .data)
}

/// The aggregations with no aggregation below them.
fn bottom_aggregates(plan: &Arc<dyn ExecutionPlan>, found: &mut Vec<Arc<dyn ExecutionPlan>>) {
    let before = found.len();
    for child in plan.children() {
        bottom_aggregates(child, found);
    }
    if found.len() == before && plan.downcast_ref::<AggregateExec>().is_some() {
        found.push(plan.clone());
    }
}

fn check_aggregates(exec: &AggregateExec) -> Result<(), String> {
    for aggregate in exec.aggr_expr() {
        let name = aggregate.fun().name().to_lowercase();
        if aggregate.is_distinct() {
            return Err(format!(
                "{name}(DISTINCT ...) beside other aggregates keeps every distinct value per group"
            ));
        }
        if !MERGEABLE.contains(&name.as_str()) {
            return Err(format!("`{name}` has no state that merges across files"));
        }
    }
    Ok(())
}

fn file_scans(
    plan: &Arc<dyn ExecutionPlan>,
    found: &mut Vec<(Arc<dyn ExecutionPlan>, FileScanConfig)>,
) {
    if let Some(scan) = plan.downcast_ref::<DataSourceExec>() {
        if let Some(config) = scan.data_source().downcast_ref::<FileScanConfig>() {
            found.push((plan.clone(), config.clone()));
        }
    }
    for child in plan.children() {
        file_scans(child, found);
    }
}

fn bytes_of(config: &FileScanConfig) -> u64 {
    files_of(config).values().map(|file| file.size).sum()
}

/// A scan's files by URL (the store's and the path in it: `file:///data/a.csv`,
/// `s3://bucket/a.csv`), each once however many ranges the plan cut it into.
fn files_of(config: &FileScanConfig) -> BTreeMap<String, InputFile> {
    let mut files = BTreeMap::new();
    let store = config.object_store_url.as_str();
    for group in &config.file_groups {
        for part in group.iter() {
            let meta = &part.object_meta;
            let url = format!("{store}{}", meta.location);
            files.entry(url.clone()).or_insert_with(|| {
                let mut whole = part.clone();
                whole.range = None;
                InputFile {
                    path: url,
                    size: meta.size,
                    modified: meta.last_modified.to_rfc3339(),
                    etag: meta.e_tag.clone(),
                    whole,
                }
            });
        }
    }
    files
}

fn contains(plan: &Arc<dyn ExecutionPlan>, target: &Arc<dyn ExecutionPlan>) -> bool {
    Arc::ptr_eq(plan, target) || plan.children().into_iter().any(|c| contains(c, target))
}

/// Every operator from `plan` down to `fact` acts on each fact row by itself.
fn path_is_row_by_row(
    plan: &Arc<dyn ExecutionPlan>,
    fact: &Arc<dyn ExecutionPlan>,
) -> Result<(), String> {
    if Arc::ptr_eq(plan, fact) {
        return Ok(());
    }
    let name = plan.name();
    let children = plan.children();
    let Some(index) = children.iter().position(|child| contains(child, fact)) else {
        return Err("internal: the fact scan is not below the aggregation".into());
    };
    let passes = match name {
        "ProjectionExec"
        | "FilterExec"
        | "CoalesceBatchesExec"
        | "RepartitionExec"
        | "CoalescePartitionsExec"
        | "CooperativeExec"
        | "ReservedInputExec" => true,
        "SortExec" | "SortPreservingMergeExec" => plan.fetch().is_none(),
        "CrossJoinExec" => true,
        _ => match join_type(plan) {
            Some(join) => keeps_rows_apart(join, index == 0),
            None => false,
        },
    };
    if !passes {
        let what = match join_type(plan) {
            Some(join) => format!("a {join} join with the table on the side it does not keep"),
            None => format!("a {name}"),
        };
        return Err(format!(
            "{what} lies between the aggregation and the table it reads"
        ));
    }
    path_is_row_by_row(children[index], fact)
}

fn join_type(plan: &Arc<dyn ExecutionPlan>) -> Option<JoinType> {
    if let Some(join) = plan.downcast_ref::<HashJoinExec>() {
        return Some(*join.join_type());
    }
    if let Some(join) = plan.downcast_ref::<SortMergeJoinExec>() {
        return Some(join.join_type());
    }
    plan.downcast_ref::<NestedLoopJoinExec>()
        .map(|join| *join.join_type())
}

/// Whether a join of this type outputs, for each row of the fact side, rows that depend only on
/// that row and the other side (so it distributes over the fact table's files).
fn keeps_rows_apart(join: JoinType, fact_on_left: bool) -> bool {
    use JoinType::*;
    match (join, fact_on_left) {
        (Inner, _) => true,
        (Left | LeftSemi | LeftAnti | LeftMark, true) => true,
        (Right | RightSemi | RightAnti | RightMark, false) => true,
        _ => false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use datafusion::prelude::{CsvReadOptions, SessionConfig, SessionContext};

    /// A session over two small CSV files of claims-like rows and a dimension file.
    pub(crate) async fn session() -> (SessionContext, tempfile::TempDir) {
        session_with(SessionConfig::new().with_target_partitions(2)).await
    }

    /// [`session`] with settings of the caller's.
    pub(crate) async fn session_with(config: SessionConfig) -> (SessionContext, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("claims")).unwrap();
        for (name, rows) in [("a.csv", "p1,1.5\np2,2.5\n"), ("b.csv", "p1,4.0\n")] {
            let text = format!("plan,cost\n{rows}");
            std::fs::write(dir.path().join("claims").join(name), text).unwrap();
        }
        std::fs::write(dir.path().join("plans.csv"), "plan,kind\np1,x\n").unwrap();
        let ctx = SessionContext::new_with_config(config);
        let claims = format!("{}/claims/", dir.path().display());
        ctx.register_csv("claims", &claims, CsvReadOptions::new())
            .await
            .unwrap();
        let plans = format!("{}/plans.csv", dir.path().display());
        ctx.register_csv("plans", &plans, CsvReadOptions::new())
            .await
            .unwrap();
        (ctx, dir)
    }

    async fn split_of(sql: &str) -> Result<Split, String> {
        let (ctx, _dir) = session().await;
        let plan = ctx
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        find(&plan)
    }

    #[tokio::test]
    async fn a_grouped_aggregation_over_files_splits_per_file() {
        let split =
            split_of("SELECT plan, count(*), sum(cost), min(cost) FROM claims GROUP BY plan")
                .await
                .unwrap();
        let names: Vec<&str> = split
            .files
            .iter()
            .map(|f| f.path.rsplit('/').next().unwrap())
            .collect();
        assert_eq!(names, ["a.csv", "b.csv"]);
        assert!(split.joined.is_empty());
        // A lone count(DISTINCT x) is planned as two groupings: the lower one splits.
        let distinct =
            split_of("SELECT plan, count(DISTINCT cost) FROM claims GROUP BY plan").await;
        assert_eq!(distinct.unwrap().files.len(), 2);
    }

    #[tokio::test]
    async fn a_join_to_a_dimension_splits_and_its_files_are_part_of_the_key() {
        let split = split_of(
            "SELECT p.kind, sum(c.cost) FROM claims c JOIN plans p ON c.plan = p.plan GROUP BY p.kind",
        )
        .await
        .unwrap();
        assert_eq!(split.files.len(), 2);
        assert_eq!(split.joined.len(), 1);
        assert!(split.joined[0].contains("plans.csv"));
    }

    #[tokio::test]
    async fn what_cannot_merge_is_named() {
        let median = split_of("SELECT plan, median(cost) FROM claims GROUP BY plan").await;
        assert_eq!(
            median.err().unwrap(),
            "`median` has no state that merges across files"
        );
        let rows = split_of("SELECT cost FROM claims ORDER BY cost LIMIT 1").await;
        assert_eq!(rows.err().unwrap(), "the query is not an aggregation");
        let window = split_of(
            "SELECT plan, count(*) FROM (SELECT plan, row_number() OVER (ORDER BY cost) AS n FROM claims) WHERE n > 1 GROUP BY plan",
        )
        .await;
        assert!(window
            .err()
            .unwrap()
            .contains("lies between the aggregation"));
    }

    #[test]
    fn outer_joins_keep_rows_apart_only_on_the_side_they_preserve() {
        assert!(keeps_rows_apart(JoinType::Inner, true));
        assert!(keeps_rows_apart(JoinType::Inner, false));
        assert!(keeps_rows_apart(JoinType::Left, true));
        assert!(!keeps_rows_apart(JoinType::Left, false));
        assert!(keeps_rows_apart(JoinType::RightAnti, false));
        assert!(!keeps_rows_apart(JoinType::Full, true));
    }
}
