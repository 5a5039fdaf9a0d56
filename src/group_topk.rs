//! Top k rows per group for `row_number() OVER (PARTITION BY p ORDER BY o)` filtered to
//! `<= k` (H2O q8, "largest two per group"): DataFusion sorts every input row by (p, o) and
//! numbers them all; [`GroupTopKExec`] goes under that sort and passes on only each group's
//! first k rows in `o` order, so the sort and the window see k rows per group instead of all
//! of them. The window and filter above stay, so results (other columns, NULL placement,
//! numbering) are what DataFusion's plan gives; rows tied at the k-th place may be any of them,
//! as with `row_number()` itself.
//!
//! [`TopKPerGroup`] is the physical rule that recognises Filter ← BoundedWindowAgg(row_number)
//! ← Sort(p, o) and inserts the operator. Must not apply when the filter is anything but
//! `row_number <= k` / `< k` with a literal k.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::interleave_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::common::HashMap;
use datafusion::common::{Result, ScalarValue};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, Literal};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::windows::BoundedWindowAggExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;
use std::fmt;
use std::sync::Arc;

/// Inserts [`GroupTopKExec`] under the sort of a `row_number() <= k` window.
#[derive(Debug, Default)]
pub struct TopKPerGroup;

impl PhysicalOptimizerRule for TopKPerGroup {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| match with_group_topk(&node)? {
            Some(rewritten) => Ok(Transformed::yes(rewritten)),
            None => Ok(Transformed::no(node)),
        })
        .data()
    }

    fn name(&self) -> &str {
        "spillway_top_k_per_group"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

fn with_group_topk(node: &Arc<dyn ExecutionPlan>) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some(filter) = node.downcast_ref::<FilterExec>() else {
        return Ok(None);
    };
    let Some(window) = filter.input().downcast_ref::<BoundedWindowAggExec>() else {
        return Ok(None);
    };
    let [expr] = window.window_expr() else {
        return Ok(None);
    };
    if !expr.name().starts_with("row_number()") {
        return Ok(None);
    }
    let number_column = window.input().schema().fields().len();
    let Some(k) = row_number_bound(filter.predicate(), number_column) else {
        return Ok(None);
    };
    let Some(sort) = window.input().downcast_ref::<SortExec>() else {
        return Ok(None);
    };
    let (partition_by, order_by) = (expr.partition_by(), expr.order_by());
    if sort.fetch().is_some()
        || partition_by.is_empty()
        || order_by.is_empty()
        || sort.expr().len() != partition_by.len() + order_by.len()
    {
        return Ok(None);
    }
    let sorted: Vec<&PhysicalSortExpr> = sort.expr().iter().collect();
    let (keys, orders) = sorted.split_at(partition_by.len());
    let same_keys = keys
        .iter()
        .all(|key| partition_by.iter().any(|p| p.as_ref() == key.expr.as_ref()));
    let same_order = orders.iter().zip(order_by).all(|(a, b)| *a == b);
    if !same_keys || !same_order {
        return Ok(None);
    }
    let topk: Arc<dyn ExecutionPlan> = Arc::new(GroupTopKExec::new(
        sort.input().clone(),
        partition_by.to_vec(),
        order_by.to_vec(),
        k,
    ));
    let sort = node_with_child(window.input(), topk)?;
    let window = node_with_child(filter.input(), sort)?;
    Ok(Some(node_with_child(node, window)?))
}

fn node_with_child(
    node: &Arc<dyn ExecutionPlan>,
    child: Arc<dyn ExecutionPlan>,
) -> Result<Arc<dyn ExecutionPlan>> {
    use datafusion::physical_plan::execution_plan::{
        ChildrenPropertiesMode, ReplaceChildrenOptions,
    };
    node.clone().replace_children(
        vec![child],
        ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
    )
}

/// k if `predicate` is `column <= k` or `column < k + 1` for the row-number column.
fn row_number_bound(predicate: &Arc<dyn PhysicalExpr>, column: usize) -> Option<usize> {
    let binary = predicate.downcast_ref::<BinaryExpr>()?;
    let left = binary.left().downcast_ref::<Column>()?;
    let right = binary.right().downcast_ref::<Literal>()?;
    if left.index() != column {
        return None;
    }
    let bound = match right.value() {
        ScalarValue::UInt64(Some(v)) => i128::from(*v),
        ScalarValue::Int64(Some(v)) => i128::from(*v),
        ScalarValue::Int32(Some(v)) => i128::from(*v),
        _ => return None,
    };
    let k = match binary.op() {
        Operator::LtEq => bound,
        Operator::Lt => bound - 1,
        _ => return None,
    };
    // Only small k pays: each group keeps k candidate rows.
    (1..=1000).contains(&k).then_some(k as usize)
}

/// Passes on, per group of `partition_by` values, the first `k` rows in `order_by` order (in no
/// particular order: a sort comes next). Memory: k rows per group, reserved in the pool.
#[derive(Debug)]
pub struct GroupTopKExec {
    input: Arc<dyn ExecutionPlan>,
    partition_by: Vec<Arc<dyn PhysicalExpr>>,
    order_by: Vec<PhysicalSortExpr>,
    k: usize,
    properties: Arc<PlanProperties>,
}

impl GroupTopKExec {
    pub fn new(
        input: Arc<dyn ExecutionPlan>,
        partition_by: Vec<Arc<dyn PhysicalExpr>>,
        order_by: Vec<PhysicalSortExpr>,
        k: usize,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(input.schema()),
            input.properties().output_partitioning().clone(),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Self {
            input,
            partition_by,
            order_by,
            k,
            properties,
        }
    }
}

impl DisplayAs for GroupTopKExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "GroupTopKExec: k={}", self.k)
    }
}

impl ExecutionPlan for GroupTopKExec {
    fn name(&self) -> &str {
        "GroupTopKExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
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
        Ok(Arc::new(Self::new(
            children.swap_remove(0),
            self.partition_by.clone(),
            self.order_by.clone(),
            self.k,
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let reservation =
            MemoryConsumer::new(format!("GroupTopK[{partition}]")).register(context.memory_pool());
        let mut input = self.input.execute(partition, context)?;
        let schema = self.input.schema();
        let mut state = Candidates::new(self, schema.clone(), reservation)?;
        let output = futures::stream::once(async move {
            while let Some(batch) = input.next().await {
                state.add(batch?)?;
            }
            state.finish()
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, output)))
    }
}

/// One candidate row: its sort key (bytes that compare in `order_by` order) and where it is.
struct Candidate {
    key: Box<[u8]>,
    batch: usize,
    row: usize,
}

/// A group's candidates, and which of them a new row must beat once there are k.
struct Group {
    candidates: Vec<Candidate>,
    worst: usize,
    /// The first 8 bytes of the worst key, big-endian: most rows are rejected by comparing
    /// this one integer (a profile of q8 showed half the time in `memcmp` without it).
    worst_prefix: u64,
}

impl Group {
    fn find_worst(&mut self) {
        let mut worst = 0;
        for (i, candidate) in self.candidates.iter().enumerate() {
            if candidate.key > self.candidates[worst].key {
                worst = i;
            }
        }
        self.worst = worst;
        self.worst_prefix = prefix(&self.candidates[worst].key);
    }
}

fn prefix(key: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = key.len().min(8);
    bytes[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(bytes)
}

struct Candidates {
    schema: SchemaRef,
    partition_by: Vec<Arc<dyn PhysicalExpr>>,
    order_by: Vec<PhysicalSortExpr>,
    k: usize,
    group_rows: RowConverter,
    key_rows: RowConverter,
    groups: HashMap<Box<[u8]>, Group>,
    batches: Vec<RecordBatch>,
    key_bytes: usize,
    reservation: MemoryReservation,
}

impl Candidates {
    fn new(
        plan: &GroupTopKExec,
        schema: SchemaRef,
        reservation: MemoryReservation,
    ) -> Result<Self> {
        let group_fields = plan
            .partition_by
            .iter()
            .map(|e| Ok(SortField::new(e.data_type(&schema)?)))
            .collect::<Result<Vec<_>>>()?;
        let key_fields = plan
            .order_by
            .iter()
            .map(|e| {
                Ok(SortField::new_with_options(
                    e.expr.data_type(&schema)?,
                    e.options,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            schema,
            partition_by: plan.partition_by.clone(),
            order_by: plan.order_by.clone(),
            k: plan.k,
            group_rows: RowConverter::new(group_fields)?,
            key_rows: RowConverter::new(key_fields)?,
            groups: HashMap::new(),
            batches: Vec::new(),
            key_bytes: 0,
            reservation,
        })
    }

    fn add(&mut self, batch: RecordBatch) -> Result<()> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let evaluate = |exprs: Vec<&Arc<dyn PhysicalExpr>>| {
            exprs
                .into_iter()
                .map(|e| e.evaluate(&batch)?.into_array(rows))
                .collect::<Result<Vec<_>>>()
        };
        let groups = self
            .group_rows
            .convert_columns(&evaluate(self.partition_by.iter().collect())?)?;
        let keys = self
            .key_rows
            .convert_columns(&evaluate(self.order_by.iter().map(|e| &e.expr).collect())?)?;
        let batch_index = self.batches.len();
        let mut kept = false;
        for row in 0..rows {
            let key = keys.row(row);
            let group = groups.row(row);
            let k = self.k;
            let entry = match self.groups.get_mut(group.as_ref()) {
                Some(entry) => entry,
                None => {
                    self.key_bytes += group.as_ref().len();
                    self.groups
                        .entry(group.as_ref().into())
                        .or_insert_with(|| Group {
                            candidates: Vec::with_capacity(k),
                            worst: 0,
                            worst_prefix: 0,
                        })
                }
            };
            let candidate = || Candidate {
                key: key.as_ref().into(),
                batch: batch_index,
                row,
            };
            if entry.candidates.len() < k {
                self.key_bytes += key.as_ref().len();
                entry.candidates.push(candidate());
                if entry.candidates.len() == k {
                    entry.find_worst();
                }
                kept = true;
                continue;
            }
            let key_prefix = prefix(key.as_ref());
            let better = key_prefix < entry.worst_prefix
                || (key_prefix == entry.worst_prefix
                    && key.as_ref() < entry.candidates[entry.worst].key.as_ref());
            if better {
                let worst = entry.worst;
                entry.candidates[worst] = candidate();
                entry.find_worst();
                kept = true;
            }
        }
        if kept {
            self.batches.push(batch);
        }
        let held: usize = self.batches.iter().map(|b| b.get_array_memory_size()).sum();
        let candidate_rows = self.groups.len() * self.k;
        // Batches that hold only a few candidates each are compacted into one.
        if self.batches.len() > 64 || held > 4 * (64 << 20).max(candidate_rows * 64) {
            self.compact()?;
        }
        let held: usize = self.batches.iter().map(|b| b.get_array_memory_size()).sum();
        self.reservation.try_resize(held + self.key_bytes * 2)?;
        Ok(())
    }

    fn compact(&mut self) -> Result<()> {
        if self.batches.is_empty() {
            return Ok(());
        }
        let mut indices = Vec::new();
        for group in self.groups.values_mut() {
            for candidate in group.candidates.iter_mut() {
                indices.push((candidate.batch, candidate.row));
                candidate.batch = 0;
                candidate.row = indices.len() - 1;
            }
        }
        let sources: Vec<&RecordBatch> = self.batches.iter().collect();
        let compacted = interleave_record_batch(&sources, &indices)?;
        self.batches = vec![compacted];
        Ok(())
    }

    fn finish(mut self) -> Result<RecordBatch> {
        if self.batches.is_empty() {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        }
        self.compact()?;
        Ok(self.batches.swap_remove(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// Groups of different sizes, NULLs in the ordering column (DESC puts them first), unique
    /// (g, v) pairs so `row_number` has no ties to break arbitrarily.
    const TABLE: &str = "CREATE TABLE t (g INT, h VARCHAR, v DOUBLE, w INT) AS VALUES \
        (1, 'a', 5.0, 10), (1, 'a', 3.0, 11), (1, 'b', 9.0, 12), (1, 'a', NULL, 13), \
        (2, 'a', 1.0, 14), (3, 'c', 7.0, 15), (3, 'c', 8.0, 16), (3, 'c', 6.0, 17), \
        (3, 'd', 2.0, 18), (NULL, 'e', 4.0, 19), (NULL, 'e', 4.5, 20), (2, 'b', 0.5, 21)";

    async fn answer(rule: bool, sql: &str) -> (String, String) {
        // Two partitions, so the rows really are hash-partitioned as in a larger query.
        let config = SessionConfig::new()
            .with_target_partitions(2)
            .with_batch_size(3);
        let mut builder = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features();
        if rule {
            builder = builder.with_physical_optimizer_rule(Arc::new(TopKPerGroup));
        }
        let ctx = SessionContext::new_with_state(builder.build());
        ctx.sql(TABLE).await.unwrap().collect().await.unwrap();
        let frame = ctx.sql(sql).await.unwrap();
        let plan = frame.clone().create_physical_plan().await.unwrap();
        let shown = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(true)
            .to_string();
        let batches = frame.collect().await.unwrap();
        (pretty_format_batches(&batches).unwrap().to_string(), shown)
    }

    #[tokio::test]
    async fn the_first_k_rows_per_group_are_what_the_full_window_gives() {
        for sql in [
            "SELECT g, v FROM (SELECT g, v, row_number() OVER (PARTITION BY g ORDER BY v DESC) AS n \
             FROM t) WHERE n <= 2 ORDER BY g, v",
            "SELECT g, v, w, n FROM (SELECT g, v, w, row_number() OVER (PARTITION BY g ORDER BY v) AS n \
             FROM t) WHERE n < 3 ORDER BY g, n",
            "SELECT g, h, v FROM (SELECT g, h, v, row_number() OVER (PARTITION BY g, h ORDER BY v DESC NULLS LAST) AS n \
             FROM t) WHERE n <= 1 ORDER BY g, h",
        ] {
            let (plain, _) = answer(false, sql).await;
            let (rewritten, plan) = answer(true, sql).await;
            assert_eq!(plain, rewritten, "{sql}");
            assert!(plan.contains("GroupTopKExec"), "{sql} was not rewritten:\n{plan}");
        }
    }

    #[tokio::test]
    async fn other_filters_on_the_row_number_are_left_alone() {
        for sql in [
            "SELECT g, v FROM (SELECT g, v, row_number() OVER (PARTITION BY g ORDER BY v) AS n \
             FROM t) WHERE n >= 2",
            "SELECT g, v FROM (SELECT g, v, rank() OVER (PARTITION BY g ORDER BY v) AS n \
             FROM t) WHERE n <= 2",
        ] {
            let (_, plan) = answer(true, sql).await;
            assert!(!plan.contains("GroupTopKExec"), "{sql}:\n{plan}");
        }
    }
}
