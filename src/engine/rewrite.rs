//! Plan rewrites that keep DataFusion 55 inside the memory limit where it would not stay on
//! its own (DESIGN.md, "Memory and spilling"):
//!
//! - [`TWO_LEVEL_DISTINCT`]: `COUNT(DISTINCT x)` beside `count`/`sum`/`min`/`max` under a GROUP BY
//!   becomes two ordinary aggregations (`GROUP BY g, x`, then `GROUP BY g`), which spill.
//!   DataFusion's own rule does this only without `count`, and its distinct accumulators keep
//!   hash sets the pool never sees (2.9 GiB of RSS under a 64 MiB limit on 1M claims).
//! - [`AccountWindowInput`]: `WindowAggExec` buffers its whole input partition without telling
//!   the pool; a pass-through node below it reserves what flows in, so an oversized window
//!   fails with a resources error (exit 7) instead of growing until the kernel kills us.
//! - [`FullSortInsteadOfTopK`]: for the conservative retry, `ORDER BY … LIMIT k` with a large k
//!   becomes a spilling sort plus a limit, since DataFusion's top-k heap cannot spill.
//!
//! Must not change results: each rewrite keeps the output schema (names and types) exactly.

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::common::Result;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::TaskContext;
use datafusion::functions_aggregate::sum::sum_udaf;
use datafusion::logical_expr::expr::{AggregateFunction, AggregateFunctionParams};
use datafusion::logical_expr::{cast, col, lit, Aggregate, Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::limit::LocalLimitExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::windows::WindowAggExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;
use std::fmt;
use std::sync::Arc;

/// Aggregates that ignore NULLs and so give the same answer over the distinct values of their
/// argument (the inner GROUP BY's `x` column, NULL group included) as with `DISTINCT`.
const DISTINCT_OVER_GROUPS: &[&str] = &["count", "sum", "avg", "min", "max"];
/// Aggregates that split into a partial per `(g, x)` group and a combination per `g`.
const DECOMPOSABLE: &[&str] = &["count", "sum", "min", "max"];

/// An optimizer rule that rewrites each aggregation of a plan with one function: the shape
/// every aggregation rewrite here (and in `group_keys`) shares.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AggregateRewrite {
    name: &'static str,
    order: ApplyOrder,
    rewrite: fn(&Aggregate) -> Result<Option<LogicalPlan>>,
}

impl AggregateRewrite {
    /// A rule called `name` that visits the plan in `order` and replaces each aggregation for
    /// which `rewrite` gives a plan.
    pub(crate) const fn new(
        name: &'static str,
        order: ApplyOrder,
        rewrite: fn(&Aggregate) -> Result<Option<LogicalPlan>>,
    ) -> Self {
        Self {
            name,
            order,
            rewrite,
        }
    }
}

impl OptimizerRule for AggregateRewrite {
    fn name(&self) -> &str {
        self.name
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(self.order)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Aggregate(aggregate) = &plan else {
            return Ok(Transformed::no(plan));
        };
        match (self.rewrite)(aggregate)? {
            Some(rewritten) => Ok(Transformed::yes(rewritten)),
            None => Ok(Transformed::no(plan)),
        }
    }
}

/// Rewrites `SELECT g, count(DISTINCT x), sum(y), count(*) … GROUP BY g` into
/// `SELECT g, count(x), sum(s), coalesce(sum(c), 0) FROM (SELECT g, x, sum(y) s, count(*) c …
/// GROUP BY g, x) GROUP BY g`, with the original names and types restored on top.
pub(crate) const TWO_LEVEL_DISTINCT: AggregateRewrite = AggregateRewrite::new(
    "spillway_two_level_distinct",
    ApplyOrder::TopDown,
    two_level,
);

/// The aggregate function and its parameters, if `expr` is a plain call (no FILTER/ORDER BY).
fn plain_call(expr: &Expr) -> Option<(&AggregateFunction, String)> {
    let Expr::AggregateFunction(call) = expr else {
        return None;
    };
    let params = &call.params;
    if params.filter.is_some() || !params.order_by.is_empty() {
        return None;
    }
    Some((call, call.func.name().to_ascii_lowercase()))
}

/// The one expression every DISTINCT aggregate of `aggregate` is over, if the rewrite applies.
fn distinct_argument(aggregate: &Aggregate) -> Option<&Expr> {
    if matches!(aggregate.group_expr.first(), Some(Expr::GroupingSet(_))) {
        return None;
    }
    let mut argument: Option<&Expr> = None;
    for expr in &aggregate.aggr_expr {
        let (call, name) = plain_call(expr)?;
        if call.params.distinct {
            if call.params.args.len() != 1 || !DISTINCT_OVER_GROUPS.contains(&name.as_str()) {
                return None;
            }
            let arg = &call.params.args[0];
            match argument {
                None => argument = Some(arg),
                Some(seen) if seen == arg => {}
                Some(_) => return None,
            }
        } else if !DECOMPOSABLE.contains(&name.as_str()) {
            return None;
        }
    }
    argument
}

fn two_level(aggregate: &Aggregate) -> Result<Option<LogicalPlan>> {
    let Some(argument) = distinct_argument(aggregate) else {
        return Ok(None);
    };
    const DISTINCT_ALIAS: &str = "__spillway_distinct";
    let schema = aggregate.schema.clone();
    let mut inner_groups = Vec::new();
    let mut outer_groups = Vec::new();
    for (i, group) in aggregate.group_expr.iter().enumerate() {
        // Name each group key so the outer aggregation can refer to it whatever it computes.
        let alias = format!("__spillway_group_{i}");
        inner_groups.push(group.clone().alias(&alias));
        outer_groups.push(col(&alias));
    }
    inner_groups.push(argument.clone().alias(DISTINCT_ALIAS));

    let mut inner_aggregates = Vec::new();
    let mut outer_aggregates = Vec::new();
    let mut counts = Vec::new();
    for (i, expr) in aggregate.aggr_expr.iter().enumerate() {
        let Some((call, name)) = plain_call(expr) else {
            return Ok(None);
        };
        let outer = if call.params.distinct {
            aggregate_call(&call.func, vec![col(DISTINCT_ALIAS)])
        } else {
            let alias = format!("__spillway_partial_{i}");
            inner_aggregates
                .push(aggregate_call(&call.func, call.params.args.clone()).alias(&alias));
            if name == "count" {
                counts.push(i);
                Expr::AggregateFunction(AggregateFunction::new_udf(
                    sum_udaf(),
                    vec![col(&alias)],
                    false,
                    None,
                    vec![],
                    None,
                ))
            } else {
                aggregate_call(&call.func, vec![col(&alias)])
            }
        };
        outer_aggregates.push(outer);
    }

    let inner = LogicalPlanBuilder::from(aggregate.input.as_ref().clone())
        .aggregate(inner_groups, inner_aggregates)?
        .build()?;
    let outer = LogicalPlanBuilder::from(inner).aggregate(outer_groups, outer_aggregates)?;
    let outer_schema = outer.schema().clone();
    let groups = aggregate.group_expr.len();
    let projection = (0..schema.fields().len()).map(|i| {
        let (qualifier, field) = schema.qualified_field(i);
        let (_, produced) = outer_schema.qualified_field(i);
        let mut expr = Expr::Column(datafusion::common::Column::from(
            outer_schema.qualified_field(i),
        ));
        // A count over no rows at all (no GROUP BY, empty input) is 0, but a sum of no
        // partial counts is NULL.
        if i >= groups && counts.contains(&(i - groups)) {
            expr = datafusion::functions::core::expr_fn::coalesce(vec![expr, lit(0i64)]);
        }
        if produced.data_type() != field.data_type() {
            expr = cast(expr, field.data_type().clone());
        }
        expr.alias_qualified(qualifier.cloned(), field.name())
    });
    Ok(Some(outer.project(projection)?.build()?))
}

fn aggregate_call(func: &Arc<datafusion::logical_expr::AggregateUDF>, args: Vec<Expr>) -> Expr {
    Expr::AggregateFunction(AggregateFunction {
        func: func.clone(),
        params: AggregateFunctionParams {
            args,
            distinct: false,
            filter: None,
            order_by: vec![],
            null_treatment: None,
        },
    })
}

/// Puts a [`ReservedInputExec`] under every `WindowAggExec`.
#[derive(Debug, Default)]
pub(crate) struct AccountWindowInput;

impl PhysicalOptimizerRule for AccountWindowInput {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(window) = node.downcast_ref::<WindowAggExec>() else {
                return Ok(Transformed::no(node));
            };
            let input = Arc::new(ReservedInputExec::new(
                window.input().clone(),
                "WindowAggExec input",
            ));
            // The input keeps its partitioning and order, so the window's properties stand.
            let keep = ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep);
            Ok(Transformed::yes(
                node.clone().replace_children(vec![input], keep)?,
            ))
        })
        .data()
    }

    fn name(&self) -> &str {
        "spillway_account_window_input"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// For the conservative retry: every `SortExec` with a fetch (a top-k heap, which cannot
/// spill) becomes a full sort, which spills, under a per-partition limit. The merge above a
/// multi-partition sort keeps its own fetch, so the result is the same.
#[derive(Debug, Default)]
pub(crate) struct FullSortInsteadOfTopK;

impl PhysicalOptimizerRule for FullSortInsteadOfTopK {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(sort) = node.downcast_ref::<SortExec>() else {
                return Ok(Transformed::no(node));
            };
            let Some(fetch) = sort.fetch() else {
                return Ok(Transformed::no(node));
            };
            let full: Arc<dyn ExecutionPlan> = Arc::new(sort.with_fetch(None));
            Ok(Transformed::yes(Arc::new(LocalLimitExec::new(full, fetch))))
        })
        .data()
    }

    fn name(&self) -> &str {
        "spillway_full_sort_instead_of_topk"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Passes its input through unchanged while reserving, in the memory pool, the size of every
/// batch it has passed, until its stream is dropped. Below an operator that keeps all its
/// input (and drops its input stream only when it is done), this makes that operator's
/// buffering visible to the pool.
#[derive(Debug)]
pub(crate) struct ReservedInputExec {
    input: Arc<dyn ExecutionPlan>,
    consumer: &'static str,
}

impl ReservedInputExec {
    pub(crate) fn new(input: Arc<dyn ExecutionPlan>, consumer: &'static str) -> Self {
        Self { input, consumer }
    }
}

impl DisplayAs for ReservedInputExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "ReservedInputExec: consumer={}", self.consumer)
    }
}

impl ExecutionPlan for ReservedInputExec {
    fn name(&self) -> &str {
        "ReservedInputExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = children.swap_remove(0);
        Ok(Arc::new(Self::new(input, self.consumer)))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let reservation = MemoryConsumer::new(format!("{}[{partition}]", self.consumer))
            .register(context.memory_pool());
        let input = self.input.execute(partition, context)?;
        let schema: SchemaRef = input.schema();
        let reserved = input.map(move |batch: Result<RecordBatch>| {
            let batch = batch?;
            reservation.try_grow(batch.get_array_memory_size())?;
            Ok(batch)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, reserved)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::prelude::SessionContext;

    const TABLE: &str = "CREATE TABLE t (g VARCHAR, x INT, y INT) AS VALUES \
        ('a', 1, 10), ('a', 1, 20), ('a', 2, NULL), ('a', NULL, 5), \
        ('b', 3, 1), ('b', 3, 2), (NULL, 4, 7), (NULL, NULL, NULL)";

    async fn answer(rule: bool, sql: &str) -> (String, String) {
        let ctx = SessionContext::new();
        if rule {
            ctx.add_optimizer_rule(Arc::new(TWO_LEVEL_DISTINCT));
        }
        ctx.sql(TABLE).await.unwrap().collect().await.unwrap();
        let frame = ctx.sql(sql).await.unwrap();
        let schema = format!("{:?}", frame.schema().fields());
        let plan = format!(
            "{}",
            frame
                .clone()
                .into_optimized_plan()
                .unwrap()
                .display_indent()
        );
        let batches = frame.collect().await.unwrap();
        let text = pretty_format_batches(&batches).unwrap().to_string();
        (format!("{schema}\n{text}"), plan)
    }

    #[tokio::test]
    async fn two_level_distinct_gives_the_same_names_types_and_rows() {
        for sql in [
            "SELECT g, count(DISTINCT x) AS d, sum(y), count(*), count(y), min(y), max(y) \
             FROM t GROUP BY g ORDER BY g",
            "SELECT g, avg(DISTINCT y), count(*), max(y) FROM t GROUP BY g ORDER BY g",
            "SELECT g, sum(DISTINCT x), count(x) FROM t GROUP BY g ORDER BY g",
            "SELECT count(DISTINCT x), count(*), sum(y) FROM t",
            "SELECT count(DISTINCT x), count(*), sum(y) FROM t WHERE y > 1000",
            "SELECT upper(g), count(DISTINCT x + 1), count(1) FROM t GROUP BY upper(g) ORDER BY 1",
        ] {
            let (plain, _) = answer(false, sql).await;
            let (rewritten, plan) = answer(true, sql).await;
            assert_eq!(plain, rewritten, "{sql}");
            assert!(
                plan.contains("__spillway_distinct"),
                "{sql} was not rewritten:\n{plan}"
            );
        }
    }

    #[tokio::test]
    async fn aggregates_that_do_not_decompose_are_left_alone() {
        let sql = "SELECT g, count(DISTINCT x), median(y) FROM t GROUP BY g ORDER BY g";
        let (_, plan) = answer(true, sql).await;
        assert!(!plan.contains("__spillway_distinct"), "{plan}");
    }
}
