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
use datafusion::physical_plan::ExecutionPlan;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Aggregates whose partial states merge into exactly the state of the union (floats: up to
/// summation order). `median`, `array_agg`, `string_agg`, `first_value`, ... are not here:
/// their states are every value, or depend on the order rows arrive in.
const MERGEABLE: &[&str] = &[
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
            // A single-stage aggregation becomes its final stage over the merged states.
            _ => Arc::new(AggregateExec::try_new(
                AggregateMode::Final,
                exec.group_expr().as_final(),
                exec.aggr_expr().to_vec(),
                exec.filter_expr().to_vec(),
                Arc::new(CoalescePartitionsExec::new(states)),
                exec.input_schema(),
            )?),
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

/// A scan's files by path, each once however many ranges the plan cut it into.
fn files_of(config: &FileScanConfig) -> BTreeMap<String, InputFile> {
    let mut files = BTreeMap::new();
    for group in &config.file_groups {
        for part in group.iter() {
            let meta = &part.object_meta;
            files.entry(meta.location.to_string()).or_insert_with(|| {
                let mut whole = part.clone();
                whole.range = None;
                InputFile {
                    path: meta.location.to_string(),
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
