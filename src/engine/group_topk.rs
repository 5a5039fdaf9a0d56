//! Top k rows per group for `row_number() OVER (PARTITION BY p ORDER BY o)` filtered to
//! `<= k` (H2O q8, "largest two per group"). DataFusion hash-partitions every input row, sorts
//! them all by (p, o) and numbers them all; here the window and its sort become one
//! [`GroupTopKExec`] that keeps each group's best k rows as they stream by and numbers only
//! those, and a second, unnumbered one runs below the hash repartition, so the repartition
//! carries each input partition's candidates instead of every row. The filter above stays, so
//! the result (columns, NULL placement, numbering) is what DataFusion's plan gives; rows tied at
//! the k-th place may be any of them, as with `row_number()` itself.
//!
//! [`TopKPerGroup`] is the physical rule that recognises Filter ← BoundedWindowAgg(row_number)
//! ← Sort(p, o) and rewrites it. Must not apply when the filter is anything but
//! `row_number <= k` / `< k` with a literal k, or the window computes anything else.

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt64Array};
use datafusion::arrow::compute::{
    can_cast_types, cast, interleave_record_batch, lexsort_to_indices, take_arrays, SortOptions,
};
use datafusion::arrow::datatypes::{
    DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, UInt64Type,
};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::common::{Result, ScalarValue};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, Literal};
use datafusion::physical_expr::{
    Distribution, EquivalenceProperties, Partitioning, PhysicalExpr, PhysicalSortExpr,
};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::group_values::{new_group_values, GroupValues};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::windows::BoundedWindowAggExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;
use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// Only small k pays: each group keeps k candidate rows.
const MAX_K: i128 = 1000;
/// Held batches are compacted once they hold more rows than 4 × this or 4 × the candidates
/// (small in unit tests, so that compaction runs there too).
const COMPACT_MIN_ROWS: usize = if cfg!(test) { 16 } else { 1 << 16 };

/// Replaces the sort and window of a `row_number() <= k` query with [`GroupTopKExec`].
#[derive(Debug, Default)]
pub(crate) struct TopKPerGroup;

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
        TopKPerGroup::NAME
    }

    fn schema_check(&self) -> bool {
        true
    }
}

impl TopKPerGroup {
    /// The rule's name, by which the conservative retry leaves it out.
    pub(crate) const NAME: &'static str = "spillway_top_k_per_group";
}

fn with_group_topk(node: &Arc<dyn ExecutionPlan>) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some(filter) = node.downcast_ref::<FilterExec>() else {
        return Ok(None);
    };
    // Projection pushdown may have put a projection of columns between them.
    let projection = filter.input().downcast_ref::<ProjectionExec>();
    let window_node = projection.map_or(filter.input(), |p| p.input());
    let Some(window) = window_node.downcast_ref::<BoundedWindowAggExec>() else {
        return Ok(None);
    };
    let [expr] = window.window_expr() else {
        return Ok(None);
    };
    if !expr.name().starts_with("row_number()") {
        return Ok(None);
    }
    let mut number_column = Some(window.input().schema().fields().len());
    if let Some(projection) = projection {
        let columns: Option<Vec<usize>> = projection
            .expr()
            .iter()
            .map(|p| p.expr.downcast_ref::<Column>().map(Column::index))
            .collect();
        number_column =
            columns.and_then(|columns| columns.iter().position(|c| Some(*c) == number_column));
    }
    let Some(number_column) = number_column else {
        return Ok(None);
    };
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
    let numbering = Numbering {
        order: sort.expr().iter().cloned().collect(),
        equivalence: window.properties().equivalence_properties().clone(),
    };
    let mut input = sort.input().clone();
    if let Some(repartition) = input.downcast_ref::<RepartitionExec>() {
        if matches!(repartition.partitioning(), Partitioning::Hash(..))
            && !repartition.preserve_order()
        {
            let candidates: Arc<dyn ExecutionPlan> = Arc::new(GroupTopKExec::new(
                repartition.input().clone(),
                partition_by.to_vec(),
                order_by.to_vec(),
                k,
                None,
            ));
            input = node_with_child(&input, candidates)?;
        }
    }
    let numbered: Arc<dyn ExecutionPlan> = Arc::new(GroupTopKExec::new(
        input,
        partition_by.to_vec(),
        order_by.to_vec(),
        k,
        Some(numbering),
    ));
    let below_filter = match projection {
        Some(_) => node_with_child(filter.input(), numbered)?,
        None => numbered,
    };
    Ok(Some(node_with_child(node, below_filter)?))
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

/// k if `predicate` is `column <= k`, `column < k + 1` or `column = 1` (k = 1) for the
/// row-number column.
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
        // `= 1`: the first row of each group, as in de-duplication ("the latest version of
        // each claim"); `= 2` would need the rows numbered 1 filtered out, not done here.
        Operator::Eq if bound == 1 => 1,
        _ => return None,
    };
    (1..=MAX_K).contains(&k).then_some(k as usize)
}

/// Passes on, per group of `partition_by` values, the first `k` rows in `order_by` order.
/// With a [`Numbering`] (in place of the window) it needs its input hash-partitioned by the
/// groups and gives what the window gave for those rows: sorted as the window's sort sorted
/// them, each row's number in its group appended. Without one (below the repartition) it
/// passes the candidates on unnumbered, in no order. Memory: the groups, k keys per group and
/// the input batches that still hold a candidate, reserved in the pool.
#[derive(Debug)]
pub(crate) struct GroupTopKExec {
    input: Arc<dyn ExecutionPlan>,
    partition_by: Vec<Arc<dyn PhysicalExpr>>,
    order_by: Vec<PhysicalSortExpr>,
    k: usize,
    number: Option<Numbering>,
    properties: Arc<PlanProperties>,
}

/// What the replaced window gave: the order of its input's sort
/// (partition keys, then the window's order) and so its output's order properties, which
/// the plan above may rely on (an outer `ORDER BY p, n` was removed as already satisfied).
#[derive(Debug, Clone)]
pub(crate) struct Numbering {
    order: Vec<PhysicalSortExpr>,
    equivalence: EquivalenceProperties,
}

impl GroupTopKExec {
    pub(crate) fn new(
        input: Arc<dyn ExecutionPlan>,
        partition_by: Vec<Arc<dyn PhysicalExpr>>,
        order_by: Vec<PhysicalSortExpr>,
        k: usize,
        number: Option<Numbering>,
    ) -> Self {
        let equivalence = match &number {
            Some(numbering) => numbering.equivalence.clone(),
            None => EquivalenceProperties::new(input.schema()),
        };
        let properties = Arc::new(PlanProperties::new(
            equivalence,
            input.properties().output_partitioning().clone(),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Self {
            input,
            partition_by,
            order_by,
            k,
            number,
            properties,
        }
    }
}

impl DisplayAs for GroupTopKExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let stage = if self.number.is_some() {
            "numbered"
        } else {
            "candidates"
        };
        write!(f, "GroupTopKExec: k={}, {stage}", self.k)
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

    fn required_input_distribution(&self) -> Vec<Distribution> {
        match &self.number {
            Some(_) => vec![Distribution::KeyPartitioned(self.partition_by.clone())],
            None => vec![Distribution::UnspecifiedDistribution],
        }
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        let mut recursion = TreeNodeRecursion::Continue;
        for expr in self
            .partition_by
            .iter()
            .chain(self.order_by.iter().map(|o| &o.expr))
        {
            recursion = f(expr)?;
            if recursion == TreeNodeRecursion::Stop {
                break;
            }
        }
        Ok(recursion)
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
            self.number.clone(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let reservation =
            MemoryConsumer::new(format!("GroupTopK[{partition}]")).register(context.memory_pool());
        let batch_size = context.session_config().batch_size().max(1);
        let mut input = self.input.execute(partition, context)?;
        let mut state = Candidates::new(self, reservation)?;
        let output = futures::stream::once(async move {
            while let Some(batch) = input.next().await {
                state.add(batch?)?;
            }
            state.finish(batch_size)
        })
        .flat_map(|result| {
            futures::stream::iter(match result {
                Ok(batches) => batches.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(error) => vec![Err(error)],
            })
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            output,
        )))
    }
}

/// An ordering key: smaller is earlier in `order_by` order.
trait SlotKey: Ord + Default {
    /// Bytes it holds outside the slot.
    fn heap_size(&self) -> usize {
        0
    }
}

impl SlotKey for u128 {}

impl SlotKey for Box<[u8]> {
    fn heap_size(&self) -> usize {
        self.len()
    }
}

/// Where a candidate row is: an index into the held batches, and a row in it.
type Location = (u32, u32);

/// k slots per group, each group's filled slots a binary max-heap by key, so the worst
/// candidate, the one a new row must beat, is at the group's first slot.
struct Slots<K> {
    k: usize,
    keys: Vec<K>,
    locations: Vec<Location>,
    filled: Vec<u32>,
    heap_bytes: usize,
}

impl<K: SlotKey> Slots<K> {
    fn new(k: usize) -> Self {
        Self {
            k,
            keys: Vec::new(),
            locations: Vec::new(),
            filled: Vec::new(),
            heap_bytes: 0,
        }
    }

    fn grow_to(&mut self, groups: usize) {
        if groups > self.filled.len() {
            self.filled.resize(groups, 0);
            self.keys.resize_with(groups * self.k, K::default);
            self.locations.resize(groups * self.k, (0, 0));
        }
    }

    /// Keeps the row if its group has fewer than k candidates or it is earlier than the
    /// worst of them; true if kept.
    #[inline]
    fn offer<Q: ?Sized + Ord>(
        &mut self,
        group: usize,
        key: &Q,
        location: Location,
        own: impl FnOnce(&Q) -> K,
    ) -> bool
    where
        K: Borrow<Q>,
    {
        let base = group * self.k;
        let filled = self.filled[group] as usize;
        if filled < self.k {
            let key = own(key);
            self.heap_bytes += key.heap_size();
            self.keys[base + filled] = key;
            self.locations[base + filled] = location;
            self.filled[group] += 1;
            self.sift_up(base, filled);
            return true;
        }
        if key >= self.keys[base].borrow() {
            return false;
        }
        let key = own(key);
        self.heap_bytes += key.heap_size();
        self.heap_bytes -= self.keys[base].heap_size();
        self.keys[base] = key;
        self.locations[base] = location;
        self.sift_down(base, self.k);
        true
    }

    fn sift_up(&mut self, base: usize, mut at: usize) {
        while at > 0 {
            let parent = (at - 1) / 2;
            if self.keys[base + at] <= self.keys[base + parent] {
                break;
            }
            self.swap(base, at, parent);
            at = parent;
        }
    }

    fn sift_down(&mut self, base: usize, len: usize) {
        let mut at = 0;
        loop {
            let mut largest = at;
            for child in [2 * at + 1, 2 * at + 2] {
                if child < len && self.keys[base + child] > self.keys[base + largest] {
                    largest = child;
                }
            }
            if largest == at {
                return;
            }
            self.swap(base, at, largest);
            at = largest;
        }
    }

    fn swap(&mut self, base: usize, a: usize, b: usize) {
        self.keys.swap(base + a, base + b);
        self.locations.swap(base + a, base + b);
    }
}

/// What the bookkeeping around [`Slots`] needs of them, whatever their key type.
trait Placement {
    fn k(&self) -> usize;
    /// Candidates per group.
    fn group_sizes(&self) -> &[u32];
    fn locations(&self) -> &[Location];
    fn locations_mut(&mut self) -> &mut [Location];
    fn size(&self) -> usize;
}

impl<K: SlotKey> Placement for Slots<K> {
    fn k(&self) -> usize {
        self.k
    }

    fn group_sizes(&self) -> &[u32] {
        &self.filled
    }

    fn locations(&self) -> &[Location] {
        &self.locations
    }

    fn locations_mut(&mut self) -> &mut [Location] {
        &mut self.locations
    }

    fn size(&self) -> usize {
        self.keys.capacity() * std::mem::size_of::<K>()
            + self.locations.capacity() * std::mem::size_of::<Location>()
            + self.filled.capacity() * 4
            + self.heap_bytes
    }
}

/// The candidates' keys: one integer per row when the order is a single column of a type
/// that maps onto one (the common case, compared without touching memory elsewhere), else
/// DataFusion's row format (bytes that compare in order), one allocation per kept row.
enum Keys {
    Integer(Slots<u128>, SortOptions, IntegerKind),
    Rows(Slots<Box<[u8]>>, RowConverter),
}

impl Keys {
    fn placement(&self) -> &dyn Placement {
        match self {
            Keys::Integer(slots, ..) => slots,
            Keys::Rows(slots, _) => slots,
        }
    }

    fn placement_mut(&mut self) -> &mut dyn Placement {
        match self {
            Keys::Integer(slots, ..) => slots,
            Keys::Rows(slots, _) => slots,
        }
    }

    fn size(&self) -> usize {
        match self {
            Keys::Integer(slots, ..) => slots.size(),
            Keys::Rows(slots, converter) => slots.size() + converter.size(),
        }
    }
}

#[derive(Clone, Copy)]
enum IntegerKind {
    Signed,
    Unsigned,
    Float,
}

impl IntegerKind {
    fn of(data_type: &DataType) -> Option<Self> {
        if data_type.is_floating() && can_cast_types(data_type, &DataType::Float64) {
            Some(Self::Float)
        } else if data_type.is_unsigned_integer() {
            Some(Self::Unsigned)
        } else if data_type.is_signed_integer()
            || matches!(
                data_type,
                DataType::Date32
                    | DataType::Date64
                    | DataType::Timestamp(..)
                    | DataType::Duration(_)
            )
        {
            can_cast_types(data_type, &DataType::Int64).then_some(Self::Signed)
        } else {
            None
        }
    }

    /// Per row, a u128 whose order is the `options` order of the values: the NULL rank above
    /// 64 bits, below it the value mapped so unsigned comparison orders it (floats as
    /// `total_cmp`, the order DataFusion's sort uses), inverted when descending.
    fn keys(self, values: &ArrayRef, options: SortOptions) -> Result<Vec<u128>> {
        let mapped: Vec<u64> = match self {
            Self::Signed => cast(values, &DataType::Int64)?
                .as_primitive::<Int64Type>()
                .values()
                .iter()
                .map(|v| (*v as u64) ^ (1 << 63))
                .collect(),
            Self::Unsigned => cast(values, &DataType::UInt64)?
                .as_primitive::<UInt64Type>()
                .values()
                .to_vec(),
            Self::Float => cast(values, &DataType::Float64)?
                .as_primitive::<Float64Type>()
                .values()
                .iter()
                .map(|v| {
                    let bits = v.to_bits();
                    if bits >> 63 == 1 {
                        !bits
                    } else {
                        bits | (1 << 63)
                    }
                })
                .collect(),
        };
        let invert = if options.descending { u64::MAX } else { 0 };
        let (null_rank, value_rank) = if options.nulls_first {
            (0u128, 1u128 << 64)
        } else {
            (1u128 << 64, 0u128)
        };
        Ok(match values.logical_nulls() {
            None => mapped
                .iter()
                .map(|v| value_rank | u128::from(v ^ invert))
                .collect(),
            Some(nulls) => mapped
                .iter()
                .zip(nulls.iter())
                .map(|(v, valid)| match valid {
                    true => value_rank | u128::from(v ^ invert),
                    false => null_rank,
                })
                .collect(),
        })
    }
}

struct Candidates {
    schema: SchemaRef,
    partition_by: Vec<Arc<dyn PhysicalExpr>>,
    order_by: Vec<PhysicalSortExpr>,
    numbering: Option<Numbering>,
    groups: Box<dyn GroupValues>,
    group_ids: Vec<usize>,
    keys: Keys,
    batches: Vec<RecordBatch>,
    held_rows: usize,
    reservation: MemoryReservation,
}

impl Candidates {
    fn new(plan: &GroupTopKExec, reservation: MemoryReservation) -> Result<Self> {
        let input = plan.input.schema();
        let group_fields = plan
            .partition_by
            .iter()
            .enumerate()
            .map(|(i, e)| Ok(Field::new(format!("g{i}"), e.data_type(&input)?, true)))
            .collect::<Result<Vec<_>>>()?;
        let groups = new_group_values(Arc::new(Schema::new(group_fields)), &GroupOrdering::None)?;
        let order_types = plan
            .order_by
            .iter()
            .map(|e| e.expr.data_type(&input))
            .collect::<Result<Vec<_>>>()?;
        let integer = match (order_types.as_slice(), plan.order_by.as_slice()) {
            ([data_type], [order]) => IntegerKind::of(data_type).map(|kind| (kind, order.options)),
            _ => None,
        };
        let keys = match integer {
            Some((kind, options)) => Keys::Integer(Slots::new(plan.k), options, kind),
            None => {
                let fields = order_types
                    .into_iter()
                    .zip(&plan.order_by)
                    .map(|(t, e)| SortField::new_with_options(t, e.options))
                    .collect();
                Keys::Rows(Slots::new(plan.k), RowConverter::new(fields)?)
            }
        };
        Ok(Self {
            schema: plan.schema(),
            partition_by: plan.partition_by.clone(),
            order_by: plan.order_by.clone(),
            numbering: plan.number.clone(),
            groups,
            group_ids: Vec::new(),
            keys,
            batches: Vec::new(),
            held_rows: 0,
            reservation,
        })
    }

    fn add(&mut self, batch: RecordBatch) -> Result<()> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let evaluate = |exprs: &mut dyn Iterator<Item = &Arc<dyn PhysicalExpr>>| {
            exprs
                .map(|e| e.evaluate(&batch)?.into_array(rows))
                .collect::<Result<Vec<ArrayRef>>>()
        };
        let group_columns = evaluate(&mut self.partition_by.iter())?;
        let order_columns = evaluate(&mut self.order_by.iter().map(|o| &o.expr))?;
        self.groups.intern(&group_columns, &mut self.group_ids)?;
        let groups = self.groups.len();
        let batch_index = self.batches.len() as u32;
        let kept = match &mut self.keys {
            Keys::Integer(slots, options, kind) => {
                slots.grow_to(groups);
                let keys = kind.keys(&order_columns[0], *options)?;
                offer_all(
                    slots,
                    &self.group_ids,
                    batch_index,
                    |row| &keys[row],
                    |k| *k,
                )
            }
            Keys::Rows(slots, converter) => {
                slots.grow_to(groups);
                let keys: Rows = converter.convert_columns(&order_columns)?;
                offer_all(
                    slots,
                    &self.group_ids,
                    batch_index,
                    |row| keys.row(row).data(),
                    |k: &[u8]| k.into(),
                )
            }
        };
        if kept {
            self.held_rows += rows;
            self.batches.push(batch);
        }
        // Batches that hold only a few candidates each are copied into one, once they hold
        // several times the rows there are candidates (or the batch indices would overflow).
        let candidates = self.candidate_count();
        if self.held_rows > 4 * candidates.max(COMPACT_MIN_ROWS)
            || self.batches.len() >= u32::MAX as usize
        {
            self.compact()?;
        }
        self.reserve()
    }

    fn candidate_count(&self) -> usize {
        let sizes = self.keys.placement().group_sizes();
        sizes.iter().map(|n| *n as usize).sum()
    }

    /// Reserves what is held; when the pool refuses, compacts the held batches down to the
    /// candidates first and asks again.
    fn reserve(&mut self) -> Result<()> {
        if self.reservation.try_resize(self.size()).is_ok() {
            return Ok(());
        }
        self.compact()?;
        self.reservation.try_resize(self.size())
    }

    fn size(&self) -> usize {
        let held: usize = self.batches.iter().map(|b| b.get_array_memory_size()).sum();
        held + self.keys.size() + self.groups.size() + self.group_ids.capacity() * 8
    }

    /// Every candidate's slot, group by group.
    fn slots(&self) -> Vec<usize> {
        let placement = self.keys.placement();
        let k = placement.k();
        let mut slots = Vec::with_capacity(self.candidate_count());
        for (group, &filled) in placement.group_sizes().iter().enumerate() {
            slots.extend((0..filled as usize).map(|i| group * k + i));
        }
        slots
    }

    fn set_locations(&mut self, slots: &[usize]) {
        let locations = self.keys.placement_mut().locations_mut();
        for (row, slot) in slots.iter().enumerate() {
            locations[*slot] = (0, row as u32);
        }
    }

    /// Copies the candidate rows, in slot order, into one batch.
    fn gather(&self, slots: &[usize]) -> Result<RecordBatch> {
        let locations = self.keys.placement().locations();
        let indices: Vec<(usize, usize)> = slots
            .iter()
            .map(|s| {
                let (batch, row) = locations[*s];
                (batch as usize, row as usize)
            })
            .collect();
        let sources: Vec<&RecordBatch> = self.batches.iter().collect();
        Ok(interleave_record_batch(&sources, &indices)?)
    }

    fn compact(&mut self) -> Result<()> {
        if self.batches.is_empty() {
            return Ok(());
        }
        let slots = self.slots();
        let compacted = self.gather(&slots)?;
        self.set_locations(&slots);
        self.held_rows = compacted.num_rows();
        self.batches = vec![compacted];
        Ok(())
    }

    fn finish(self, batch_size: usize) -> Result<Vec<RecordBatch>> {
        if self.batches.is_empty() {
            return Ok(Vec::new());
        }
        let slots = self.slots();
        let mut whole = self.gather(&slots)?;
        if let Some(numbering) = &self.numbering {
            let k = self.keys.placement().k();
            whole = numbered(whole, &slots, k, numbering, &self.schema)?;
        }
        Ok((0..whole.num_rows())
            .step_by(batch_size)
            .map(|start| whole.slice(start, batch_size.min(whole.num_rows() - start)))
            .collect())
    }
}

/// The candidate rows sorted as the window's input was, each with its number in its group
/// (`slots[i] / k` is row i's group).
fn numbered(
    rows: RecordBatch,
    slots: &[usize],
    k: usize,
    numbering: &Numbering,
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    let sort_columns = numbering
        .order
        .iter()
        .map(|e| e.evaluate_to_sort_column(&rows))
        .collect::<Result<Vec<_>>>()?;
    let order = lexsort_to_indices(&sort_columns, None)?;
    let mut numbers = Vec::with_capacity(order.len());
    let mut previous = None;
    for row in order.values() {
        let group = slots[*row as usize] / k;
        let number = match previous {
            Some((g, n)) if g == group => n + 1,
            _ => 1u64,
        };
        numbers.push(number);
        previous = Some((group, number));
    }
    let mut columns = take_arrays(rows.columns(), &order, None)?;
    columns.push(Arc::new(UInt64Array::from(numbers)) as ArrayRef);
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Offers every row of a batch to its group; true if any was kept.
fn offer_all<'a, K: SlotKey + Borrow<Q>, Q: ?Sized + Ord + 'a>(
    slots: &mut Slots<K>,
    group_ids: &[usize],
    batch: u32,
    key: impl Fn(usize) -> &'a Q,
    own: impl Fn(&Q) -> K,
) -> bool {
    let mut kept = false;
    for (row, group) in group_ids.iter().enumerate() {
        kept |= slots.offer(*group, key(row), (batch, row as u32), &own);
    }
    kept
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
        answer_over(TABLE, 3, rule, sql).await
    }

    async fn answer_over(table: &str, batch: usize, rule: bool, sql: &str) -> (String, String) {
        // Two partitions, so the rows really are hash-partitioned as in a larger query.
        let config = SessionConfig::new()
            .with_target_partitions(2)
            .with_batch_size(batch);
        let mut builder = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features();
        if rule {
            builder = builder.with_physical_optimizer_rule(Arc::new(TopKPerGroup));
        }
        let ctx = SessionContext::new_with_state(builder.build());
        ctx.sql(table).await.unwrap().collect().await.unwrap();
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

    /// 20,000 rows in 97 groups; the values unique but for NULLs (every 13th row), so the
    /// first k per group are one set whichever engine picks them.
    const SERIES: &str = "CREATE TABLE s AS SELECT (i * 7919) % 97 AS g, \
        CAST((i * 7919) % 97 AS VARCHAR) AS gs, \
        CASE WHEN i % 13 = 0 THEN NULL ELSE (i * 104729) % 20011 - 10000 END AS v, \
        CASE WHEN i % 13 = 0 THEN NULL ELSE CAST((i * 104729) % 20011 AS DOUBLE) / 7 - 1000 END AS f, \
        CASE WHEN i % 13 = 0 THEN NULL ELSE lpad(CAST((i * 104729) % 20011 AS VARCHAR), 6, '0') END AS t \
        FROM generate_series(1, 20000) AS r(i)";

    #[tokio::test]
    async fn every_key_type_and_null_order_gives_the_full_windows_rows() {
        let mut checked = 0;
        for (order, k) in [
            ("v DESC", 2),
            ("v ASC NULLS FIRST", 3),
            ("v DESC NULLS LAST", 1),
            ("f ASC", 7),
            ("f DESC NULLS FIRST", 2),
            ("t DESC", 2),
            ("t ASC NULLS LAST, v DESC", 5),
            ("CAST(v + 10000 AS INT UNSIGNED) DESC", 3),
        ] {
            for group in ["g", "gs"] {
                let sql = format!(
                    "SELECT {group}, v, n FROM (SELECT {group}, v, row_number() OVER \
                     (PARTITION BY {group} ORDER BY {order}) AS n FROM s) WHERE n <= {k} \
                     ORDER BY {group}, n"
                );
                let (plain, _) = answer_over(SERIES, 100, false, &sql).await;
                let (rewritten, plan) = answer_over(SERIES, 100, true, &sql).await;
                assert_eq!(plain, rewritten, "{sql}");
                assert!(
                    plan.contains(&format!("GroupTopKExec: k={k}, numbered")),
                    "{sql}:\n{plan}"
                );
                assert!(
                    plan.contains(&format!("GroupTopKExec: k={k}, candidates")),
                    "{sql}:\n{plan}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 16);
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
