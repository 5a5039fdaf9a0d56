//! Drop-in replacements for DataFusion aggregate functions whose grouped accumulators are slow
//! in DataFusion 55, registered under the built-in names so plans, names and results are
//! unchanged: only how the per-group state is kept differs.
//!
//! `corr(x, y)`: DataFusion keeps six separate vectors (count and five sums) and updates them
//! through a generic per-row closure with a bounds check on each, so every row touches six
//! cache lines; on H2O q9 (10,000 groups, 10M rows) it was a quarter of the query's CPU. Here
//! each group's six values sit together in one 48-byte record and rows without nulls take a
//! tight loop. The state columns (count, then the sums of x, y, xy, xx, yy) and the final
//! formula, with its NULL and NaN rules, are DataFusion's, so partial states of either
//! implementation merge into the other's.
//!
//! `median(x)`: DataFusion keeps a `Vec` per group and pushes each row onto its group's, so
//! 10,000 groups grow 10,000 vectors by doubling (H2O q6: reallocation, copying and page
//! faults were a quarter of the query's CPU), and the final phase does it again while merging.
//! Here a partition appends (group, value) pairs to two flat vectors (a plain copy for rows
//! without nulls) and sorts them by group once, by counting, when it emits; the medians are
//! then picked per group exactly as DataFusion picks them. The state is DataFusion's (a list
//! of the values per group).
//!
//! Must not change a function's name, signature, return type or results.

use datafusion::arrow::array::{
    Array, ArrayRef, ArrowNativeTypeOp, AsArray, BooleanArray, Float64Array, ListArray,
    PrimitiveArray, UInt64Array,
};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{
    ArrowNativeType, ArrowNumericType, DataType, Decimal128Type, Field, FieldRef, Float32Type,
    Float64Type, UInt64Type,
};
use datafusion::common::{exec_err, Result};
use datafusion::functions_aggregate::correlation::{Correlation, CorrelationGroupsAccumulator};
use datafusion::functions_aggregate::median::Median;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, EmitTo, GroupsAccumulator,
    Signature,
};
use std::sync::Arc;

/// The faster implementations, registered under the built-ins' names (replacing them).
pub(crate) fn udafs() -> Vec<Arc<AggregateUDF>> {
    vec![
        Arc::new(AggregateUDF::new_from_impl(FastCorrelation::default())),
        Arc::new(AggregateUDF::new_from_impl(FastMedian::default())),
    ]
}

/// Whether `row` passes an aggregate's `FILTER (WHERE ...)`: true, not NULL or false.
pub(crate) fn passes(filter: Option<&BooleanArray>, row: usize) -> bool {
    filter.is_none_or(|f| f.is_valid(row) && f.value(row))
}

/// A built-in aggregate function with a grouped accumulator of Spillway's: `create` makes it
/// (or falls back to the built-in's); everything else is the built-in's.
#[derive(Debug)]
pub(crate) struct FasterGroups<B> {
    builtin: B,
    create: fn(&B, AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>>,
}

// Equal as their built-ins are: each built-in type has one replacement (its `Default`).
impl<B: PartialEq> PartialEq for FasterGroups<B> {
    fn eq(&self, other: &Self) -> bool {
        self.builtin == other.builtin
    }
}

impl<B: Eq> Eq for FasterGroups<B> {}

impl<B: std::hash::Hash> std::hash::Hash for FasterGroups<B> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.builtin.hash(state)
    }
}

impl<B: AggregateUDFImpl + PartialEq + Eq + std::hash::Hash> AggregateUDFImpl for FasterGroups<B> {
    fn name(&self) -> &str {
        self.builtin.name()
    }

    fn signature(&self) -> &Signature {
        self.builtin.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.builtin.return_type(arg_types)
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        self.builtin.accumulator(args)
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        self.builtin.state_fields(args)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.builtin.documentation()
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        self.builtin.groups_accumulator_supported(args)
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        (self.create)(&self.builtin, args)
    }
}

/// `corr` with [`CorrelationGroups`] as its grouped accumulator.
pub(crate) type FastCorrelation = FasterGroups<Correlation>;

impl Default for FastCorrelation {
    fn default() -> Self {
        Self {
            builtin: Correlation::default(),
            create: |_, _| Ok(Box::new(CorrelationGroups::default())),
        }
    }
}

/// One group's sums, kept together so that a row updates one cache line.
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    count: u64,
    x: f64,
    y: f64,
    xy: f64,
    xx: f64,
    yy: f64,
}

impl Sums {
    #[inline(always)]
    fn add(&mut self, x: f64, y: f64) {
        self.count += 1;
        self.x += x;
        self.y += y;
        self.xy += x * y;
        self.xx += x * x;
        self.yy += y * y;
    }

    /// Pearson's r, or `None` (NULL) where DataFusion gives NULL: fewer than two rows, one
    /// side NaN, or no variance. Both sides NaN gives NaN, as there.
    fn correlation(&self) -> Option<f64> {
        if self.x.is_nan() && self.y.is_nan() {
            return Some(f64::NAN);
        }
        if self.count < 2 || self.x.is_nan() || self.y.is_nan() {
            return None;
        }
        let n = self.count as f64;
        let mean_x = self.x / n;
        let mean_y = self.y / n;
        let numerator = self.xy - self.x * mean_y;
        let denominator = ((self.xx - self.x * mean_x) * (self.yy - self.y * mean_y)).sqrt();
        (denominator != 0.0).then(|| numerator / denominator)
    }
}

/// The grouped accumulator of [`FastCorrelation`].
#[derive(Debug, Default)]
struct CorrelationGroups {
    groups: Vec<Sums>,
}

impl CorrelationGroups {
    fn take(&mut self, emit_to: EmitTo) -> Vec<Sums> {
        emit_to.take_needed(&mut self.groups)
    }
}

impl GroupsAccumulator for CorrelationGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.groups.resize(total_num_groups, Sums::default());
        let xs = values[0].as_primitive::<Float64Type>();
        let ys = values[1].as_primitive::<Float64Type>();
        let groups = &mut self.groups;
        if xs.null_count() == 0 && ys.null_count() == 0 && opt_filter.is_none() {
            for ((&group, &x), &y) in group_indices.iter().zip(xs.values()).zip(ys.values()) {
                groups[group].add(x, y);
            }
            return Ok(());
        }
        for (row, &group) in group_indices.iter().enumerate() {
            let included = xs.is_valid(row) && ys.is_valid(row) && passes(opt_filter, row);
            if included {
                groups[group].add(xs.value(row), ys.value(row));
            }
        }
        Ok(())
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.groups.resize(total_num_groups, Sums::default());
        let counts = values[0].as_primitive::<UInt64Type>();
        let sum = |column: usize| values[column].as_primitive::<Float64Type>().values();
        let (x, y, xy, xx, yy) = (sum(1), sum(2), sum(3), sum(4), sum(5));
        for (row, &group) in group_indices.iter().enumerate() {
            // A NULL state (none are made here or by DataFusion) holds no rows.
            if counts.is_null(row) {
                continue;
            }
            let sums = &mut self.groups[group];
            sums.count += counts.value(row);
            sums.x += x[row];
            sums.y += y[row];
            sums.xy += xy[row];
            sums.xx += xx[row];
            sums.yy += yy[row];
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let groups = self.take(emit_to);
        let r: Float64Array = groups.iter().map(Sums::correlation).collect();
        Ok(Arc::new(r))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let groups = self.take(emit_to);
        let column = |f: fn(&Sums) -> f64| -> ArrayRef {
            Arc::new(groups.iter().map(f).collect::<Float64Array>())
        };
        Ok(vec![
            Arc::new(groups.iter().map(|s| s.count).collect::<UInt64Array>()),
            column(|s| s.x),
            column(|s| s.y),
            column(|s| s.xy),
            column(|s| s.xx),
            column(|s| s.yy),
        ])
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        // The state layout is DataFusion's, so its one-row-per-state conversion serves.
        CorrelationGroupsAccumulator::new().convert_to_state(values, opt_filter)
    }

    fn size(&self) -> usize {
        self.groups.capacity() * std::mem::size_of::<Sums>()
    }
}

/// `median` with [`MedianGroups`] as its grouped accumulator for Float32, Float64 and
/// Decimal128 input; other types keep DataFusion's.
pub(crate) type FastMedian = FasterGroups<Median>;

impl Default for FastMedian {
    fn default() -> Self {
        Self {
            builtin: Median::default(),
            create: median_groups,
        }
    }
}

fn median_groups(builtin: &Median, args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
    let data_type = args.expr_fields[0].data_type().clone();
    // Integers reach `median` as Float64 (its signature casts them).
    match data_type {
        DataType::Float32 => Ok(Box::new(MedianGroups::<Float32Type>::new(data_type))),
        DataType::Float64 => Ok(Box::new(MedianGroups::<Float64Type>::new(data_type))),
        DataType::Decimal128(_, _) => Ok(Box::new(MedianGroups::<Decimal128Type>::new(data_type))),
        _ => builtin.create_groups_accumulator(args),
    }
}

/// Values kept per chunk: fixed-size chunks are never reallocated (a growing `Vec` of tens of
/// MiB is copied on each doubling), and freed chunks are reused from the heap by the next.
const MEDIAN_CHUNK: usize = 64 * 1024;

/// (group, value) pairs in arrival order, in chunks of [`MEDIAN_CHUNK`].
#[derive(Debug)]
struct Pairs<N> {
    chunks: Vec<(Vec<u32>, Vec<N>)>,
}

impl<N: Copy> Pairs<N> {
    fn new() -> Self {
        Self { chunks: Vec::new() }
    }

    /// The chunk to append to, with room for at least one more pair.
    fn open(&mut self) -> &mut (Vec<u32>, Vec<N>) {
        if self
            .chunks
            .last()
            .is_none_or(|(g, _)| g.len() == MEDIAN_CHUNK)
        {
            self.chunks.push((
                Vec::with_capacity(MEDIAN_CHUNK),
                Vec::with_capacity(MEDIAN_CHUNK),
            ));
        }
        let last = self.chunks.len() - 1;
        &mut self.chunks[last]
    }

    fn push(&mut self, group: u32, value: N) {
        let (groups, values) = self.open();
        groups.push(group);
        values.push(value);
    }

    /// Append `values`, the `i`th in group `group_of(i)`.
    fn extend(&mut self, values: &[N], group_of: impl Fn(usize) -> u32) {
        let mut done = 0;
        while done < values.len() {
            let (groups, chunk) = self.open();
            let take = (MEDIAN_CHUNK - groups.len()).min(values.len() - done);
            groups.extend((done..done + take).map(&group_of));
            chunk.extend_from_slice(&values[done..done + take]);
            done += take;
        }
    }

    fn bytes(&self) -> usize {
        self.chunks.len() * MEDIAN_CHUNK * (std::mem::size_of::<u32>() + std::mem::size_of::<N>())
    }
}

/// The grouped accumulator of [`FastMedian`]: every kept value with its group, in arrival
/// order, until the groups are emitted.
#[derive(Debug)]
struct MedianGroups<T: ArrowNumericType> {
    data_type: DataType,
    pairs: Pairs<T::Native>,
    /// Groups seen so far (some may hold no values).
    num_groups: usize,
}

impl<T: ArrowNumericType> MedianGroups<T> {
    fn new(data_type: DataType) -> Self {
        Self {
            data_type,
            pairs: Pairs::new(),
            num_groups: 0,
        }
    }

    fn see_groups(&mut self, total_num_groups: usize) -> Result<()> {
        if total_num_groups > u32::MAX as usize {
            return exec_err!("median: more than {} groups", u32::MAX);
        }
        self.num_groups = self.num_groups.max(total_num_groups);
        Ok(())
    }

    /// The emitted groups' values sorted by group, and where each group's run starts (one
    /// more entry than groups). Groups after those emitted keep their values, renumbered.
    fn take(&mut self, emit_to: EmitTo) -> (Vec<usize>, Vec<T::Native>) {
        let emitted = match emit_to {
            EmitTo::All => self.num_groups,
            EmitTo::First(n) => n.min(self.num_groups),
        };
        let chunks = std::mem::take(&mut self.pairs.chunks);
        let mut starts = vec![0usize; emitted + 1];
        for (groups, _) in &chunks {
            for &group in groups {
                if let Some(count) = starts.get_mut(group as usize + 1) {
                    *count += 1;
                }
            }
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut next = starts[..emitted].to_vec();
        let mut sorted = vec![T::Native::default(); starts[emitted]];
        // Each chunk is freed once scattered.
        for (groups, values) in chunks {
            for (&group, &value) in groups.iter().zip(&values) {
                let group = group as usize;
                if group < emitted {
                    sorted[next[group]] = value;
                    next[group] += 1;
                } else {
                    self.pairs.push((group - emitted) as u32, value);
                }
            }
        }
        self.num_groups -= emitted;
        (starts, sorted)
    }
}

impl<T: ArrowNumericType> GroupsAccumulator for MedianGroups<T> {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.see_groups(total_num_groups)?;
        let input = values[0].as_primitive::<T>();
        if input.null_count() == 0 && opt_filter.is_none() {
            self.pairs
                .extend(input.values(), |row| group_indices[row] as u32);
            return Ok(());
        }
        for (row, &group) in group_indices.iter().enumerate() {
            if input.is_valid(row) && passes(opt_filter, row) {
                self.pairs.push(group as u32, input.value(row));
            }
        }
        Ok(())
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.see_groups(total_num_groups)?;
        let lists = values[0].as_list::<i32>();
        let inner = lists.values().as_primitive::<T>();
        let offsets = lists.value_offsets();
        for (row, &group) in group_indices.iter().enumerate() {
            if lists.is_null(row) {
                continue;
            }
            let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
            if inner.null_count() == 0 {
                self.pairs
                    .extend(&inner.values()[start..end], |_| group as u32);
            } else {
                for i in (start..end).filter(|&i| inner.is_valid(i)) {
                    self.pairs.push(group as u32, inner.value(i));
                }
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let (starts, mut sorted) = self.take(emit_to);
        let medians: PrimitiveArray<T> = starts
            .windows(2)
            .map(|run| median::<T>(&mut sorted[run[0]..run[1]]))
            .collect();
        Ok(Arc::new(medians.with_data_type(self.data_type.clone())))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let (starts, sorted) = self.take(emit_to);
        let offsets = starts
            .into_iter()
            .map(i32::try_from)
            .collect::<std::result::Result<Vec<i32>, _>>()
            .map_err(|_| {
                datafusion::error::DataFusionError::Execution(
                    "median: more than 2^31 values in one partial state".into(),
                )
            })?;
        let values =
            PrimitiveArray::<T>::new(sorted.into(), None).with_data_type(self.data_type.clone());
        let list = ListArray::new(
            Arc::new(Field::new_list_field(self.data_type.clone(), true)),
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            Arc::new(values),
            None,
        );
        Ok(vec![Arc::new(list)])
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        // Each row a list of its one value; NULL and filtered-out rows NULL lists.
        let input = values[0].as_primitive::<T>();
        let filter = opt_filter.map(|f| {
            NullBuffer::new(match f.nulls() {
                Some(valid) => f.values() & valid.inner(),
                None => f.values().clone(),
            })
        });
        let nulls = NullBuffer::union(input.nulls(), filter.as_ref());
        let inner = PrimitiveArray::<T>::new(input.values().clone(), None)
            .with_data_type(self.data_type.clone());
        let list = ListArray::new(
            Arc::new(Field::new_list_field(self.data_type.clone(), true)),
            OffsetBuffer::from_lengths(std::iter::repeat_n(1, input.len())),
            Arc::new(inner),
            nulls,
        );
        Ok(vec![Arc::new(list)])
    }

    fn size(&self) -> usize {
        self.pairs.bytes()
    }
}

/// The median of `values` (reordered in place), or `None` if there are none: the middle value,
/// or the mean of the two middle values (halved first where their sum overflows). DataFusion's
/// rule, so results are identical: floats ordered by `total_cmp`, so NaN sorts last.
fn median<T: ArrowNumericType>(values: &mut [T::Native]) -> Option<T::Native> {
    let len = values.len();
    if len == 0 {
        return None;
    }
    let cmp = |x: &T::Native, y: &T::Native| x.compare(*y);
    let (low, middle, _) = values.select_nth_unstable_by(len / 2, cmp);
    if len % 2 == 1 {
        return Some(*middle);
    }
    let high = *middle;
    // DataFusion takes the lower half's maximum with `partial_cmp`, NaN counting as smaller.
    let left = *low
        .iter()
        .max_by(|x, y| x.partial_cmp(y).unwrap_or(std::cmp::Ordering::Less))?;
    let two = T::Native::usize_as(2);
    Some(match left.add_checked(high) {
        Ok(sum) => sum.div_wrapping(two),
        Err(_) => {
            let halves = left.div_wrapping(two).add_wrapping(high.div_wrapping(two));
            let remainders = left.mod_wrapping(two).add_wrapping(high.mod_wrapping(two));
            halves.add_wrapping(remainders.div_wrapping(two))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    fn register(ctx: &SessionContext) {
        for udaf in udafs() {
            ctx.register_udaf(udaf.as_ref().clone());
        }
    }
    use datafusion::arrow::array::{Decimal128Array, Float64Array, Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::prelude::SessionConfig;

    /// Rows in 37 groups with NULLs on either side, one group of a single row, one without
    /// variance and one where both sides are NaN: every rule of the final formula is reached.
    fn table() -> RecordBatch {
        let mut groups = Vec::new();
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for row in 0..20_000i64 {
            groups.push(row % 37);
            let x = ((row * 7919) % 1000) as f64 / 10.0;
            xs.push((row % 11 != 0).then_some(x));
            ys.push((row % 13 != 0).then_some(x * 0.5 + ((row * 31) % 97) as f64));
        }
        let special: [(i64, Option<f64>, Option<f64>); 5] = [
            (100, Some(1.0), Some(2.0)),
            (101, Some(3.0), Some(5.0)),
            (101, Some(3.0), Some(9.0)),
            (102, Some(f64::NAN), Some(f64::NAN)),
            (102, Some(f64::NAN), Some(f64::NAN)),
        ];
        for (g, x, y) in special {
            groups.push(g);
            xs.push(x);
            ys.push(y);
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("g", DataType::Int64, false),
            Field::new("x", DataType::Float64, true),
            Field::new("y", DataType::Float64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(groups)),
                Arc::new(Float64Array::from(xs)),
                Arc::new(Float64Array::from(ys)),
            ],
        )
        .unwrap()
    }

    async fn run(ctx: &SessionContext, sql: &str) -> Vec<(i64, Option<f64>)> {
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let mut rows = Vec::new();
        for batch in batches {
            let g = batch
                .column(0)
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            let r = batch.column(1).as_primitive::<Float64Type>();
            for i in 0..batch.num_rows() {
                rows.push((g.value(i), r.is_valid(i).then(|| r.value(i))));
            }
        }
        rows.sort_by_key(|row| row.0);
        rows
    }

    fn context(fast: bool) -> SessionContext {
        // Several partitions and small batches: partial states are merged across partitions.
        let config = SessionConfig::new()
            .with_target_partitions(3)
            .with_batch_size(512);
        let ctx = SessionContext::new_with_config(config);
        if fast {
            register(&ctx);
        }
        let batch = table();
        let parts: Vec<RecordBatch> = (0..4)
            .map(|i| {
                batch.slice(
                    i * batch.num_rows() / 4,
                    batch.num_rows() / 4 + usize::from(i == 3),
                )
            })
            .collect();
        let table = datafusion::datasource::MemTable::try_new(batch.schema(), vec![parts]).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        ctx
    }

    #[tokio::test]
    async fn grouped_correlation_gives_datafusions_results() {
        let sql = "SELECT g, corr(x, y) FROM t GROUP BY g";
        let fast = run(&context(true), sql).await;
        let builtin = run(&context(false), sql).await;
        assert_eq!(fast.len(), 40);
        assert_eq!(fast.len(), builtin.len());
        for ((g, a), (h, b)) in fast.iter().zip(&builtin) {
            assert_eq!(g, h);
            match (a, b) {
                (Some(a), Some(b)) if a.is_nan() => assert!(b.is_nan(), "group {g}: {b}"),
                (Some(a), Some(b)) => assert!((a - b).abs() < 1e-9, "group {g}: {a} vs {b}"),
                (a, b) => assert_eq!(a, b, "group {g}"),
            }
        }
        // A single row and no variance (x is 3 twice) give NULL; NaN on both sides gives NaN.
        let by_group = |g: i64| fast.iter().find(|row| row.0 == g).map(|row| row.1);
        assert_eq!(by_group(100), Some(None));
        assert_eq!(by_group(101), Some(None));
        assert!(by_group(102).flatten().is_some_and(f64::is_nan));
    }

    /// Groups 0–40 of f64, i64 and decimal values with NULLs, even and odd counts, one group
    /// of NULLs only, NaNs, and two decimals whose sum overflows.
    fn median_table() -> RecordBatch {
        let mut groups = Vec::new();
        let mut floats = Vec::new();
        let mut ints = Vec::new();
        for row in 0..30_001i64 {
            groups.push(row % 41);
            let value = (row * 7919) % 1013;
            floats.push((row % 17 != 0).then_some(value as f64 / 4.0));
            ints.push((row % 19 != 0).then_some(value - 500));
        }
        let special: [(i64, Option<f64>, Option<i64>); 6] = [
            (50, None, None),
            (51, Some(f64::NAN), Some(i64::MAX)),
            (51, Some(1.0), Some(i64::MAX - 2)),
            (52, Some(2.0), Some(-3)),
            (52, Some(f64::NAN), Some(4)),
            (52, Some(8.0), Some(10)),
        ];
        for (g, f, i) in special {
            groups.push(g);
            floats.push(f);
            ints.push(i);
        }
        // Decimals as the integers, except that group 51's two sum past i128::MAX.
        let largest = 10i128.pow(38) - 1;
        let decimals: Decimal128Array = ints
            .iter()
            .zip(&groups)
            .map(|(i, &g)| match (g, *i) {
                (51, Some(i)) => Some(largest - (i64::MAX - i) as i128),
                (_, i) => i.map(i128::from),
            })
            .collect::<Decimal128Array>()
            .with_precision_and_scale(38, 2)
            .unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("g", DataType::Int64, false),
            Field::new("f", DataType::Float64, true),
            Field::new("i", DataType::Int64, true),
            Field::new("d", DataType::Decimal128(38, 2), true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(groups)),
                Arc::new(Float64Array::from(floats)),
                Arc::new(Int64Array::from(ints)),
                Arc::new(decimals),
            ],
        )
        .unwrap()
    }

    fn median_context(fast: bool, skip_partial: bool) -> SessionContext {
        let mut config = SessionConfig::new()
            .with_target_partitions(3)
            .with_batch_size(700);
        if skip_partial {
            // Every row its own partial state: `convert_to_state` is what the final phase sees.
            let options = config.options_mut();
            options
                .execution
                .skip_partial_aggregation_probe_rows_threshold = 1;
            options
                .execution
                .skip_partial_aggregation_probe_ratio_threshold = 0.0;
        }
        let ctx = SessionContext::new_with_config(config);
        if fast {
            register(&ctx);
        }
        let batch = median_table();
        let parts: Vec<Vec<RecordBatch>> = (0..3)
            .map(|i| {
                let start = i * batch.num_rows() / 3;
                let end = (i + 1) * batch.num_rows() / 3;
                vec![batch.slice(start, end - start)]
            })
            .collect();
        let table = datafusion::datasource::MemTable::try_new(batch.schema(), parts).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        ctx
    }

    async fn median_rows(ctx: &SessionContext) -> Vec<String> {
        let sql = "SELECT g, median(f), median(i), median(d), median(f) FILTER (WHERE g % 2 = 0) \
                   FROM t GROUP BY g ORDER BY g";
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        text.lines().map(str::to_string).collect()
    }

    #[tokio::test]
    async fn grouped_median_gives_datafusions_results() {
        for skip_partial in [false, true] {
            let fast = median_rows(&median_context(true, skip_partial)).await;
            let builtin = median_rows(&median_context(false, false)).await;
            assert_eq!(
                fast.len(),
                44 + 4,
                "41 + 3 groups and the table's header and frame"
            );
            assert_eq!(fast, builtin, "skip_partial = {skip_partial}");
        }
        // Worked by hand: NULLs only give NULL; an even count of two with a NaN gives NaN;
        // integers are medians as Float64; the mean of 10^38 - 1 and 10^38 - 3 (scale 2)
        // halves each first; NaN sorts above 8.0 (the median of 2, 8 and NaN is 8).
        let fast = median_rows(&median_context(true, false)).await;
        let row = |g: &str| {
            fast.iter()
                .find(|line| line.split('|').nth(1).map(str::trim) == Some(g))
                .cloned()
                .unwrap()
        };
        let cells =
            |g: &str| -> Vec<String> { row(g).split('|').map(|c| c.trim().to_string()).collect() };
        assert_eq!(cells("50")[2..5], ["", "", ""]);
        let decimal = "999999999999999999999999999999999999.98";
        assert_eq!(cells("51")[2..5], ["NaN", "9.223372036854776e18", decimal]);
        assert_eq!(cells("52")[2..5], ["8.0", "4.0", "0.04"]);
    }

    #[test]
    fn medians_of_groups_spanning_many_chunks_survive_a_state_round_trip() {
        let rows = 3 * MEDIAN_CHUNK + 17;
        let values: Vec<f64> = (0..rows).map(|i| ((i * 7919) % 100_003) as f64).collect();
        let groups: Vec<usize> = (0..rows).map(|i| i % 3).collect();
        let mut partial = MedianGroups::<Float64Type>::new(DataType::Float64);
        let input: ArrayRef = Arc::new(Float64Array::from(values.clone()));
        partial.update_batch(&[input], &groups, None, 3).unwrap();
        let state = partial.state(EmitTo::All).unwrap();
        let mut last = MedianGroups::<Float64Type>::new(DataType::Float64);
        last.merge_batch(&state, &[2, 0, 1], 3).unwrap();
        let medians = last.evaluate(EmitTo::All).unwrap();
        // Partial group g is final group (g + 2) % 3; each holds an odd or even count.
        let expected: Vec<f64> = [1, 2, 0]
            .iter()
            .map(|&g| {
                let mut own: Vec<f64> = (g..rows).step_by(3).map(|i| values[i]).collect();
                own.sort_by(f64::total_cmp);
                let n = own.len();
                if n % 2 == 1 {
                    own[n / 2]
                } else {
                    (own[n / 2 - 1] + own[n / 2]) / 2.0
                }
            })
            .collect();
        assert_eq!(
            medians.as_primitive::<Float64Type>().values(),
            &expected[..]
        );
    }

    #[test]
    fn emitting_the_first_groups_keeps_the_rest_renumbered() {
        let mut acc = MedianGroups::<Float64Type>::new(DataType::Float64);
        let values: ArrayRef =
            Arc::new(Float64Array::from(vec![5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0]));
        acc.update_batch(&[values], &[0, 1, 2, 0, 1, 2, 2], None, 3)
            .unwrap();
        let first = acc.evaluate(EmitTo::First(1)).unwrap();
        assert_eq!(first.as_primitive::<Float64Type>().values(), &[4.0]);
        let values: ArrayRef = Arc::new(Float64Array::from(vec![100.0]));
        acc.update_batch(&[values], &[0], None, 2).unwrap();
        let rest = acc.evaluate(EmitTo::All).unwrap();
        // Old group 1 (1, 7, 100) is now 0; old group 2 (9, 2, 8) is 1.
        assert_eq!(rest.as_primitive::<Float64Type>().values(), &[7.0, 8.0]);
        assert_eq!(acc.size(), 0);
    }

    #[test]
    fn correlation_of_a_line_is_one_and_of_its_mirror_minus_one() {
        let mut up = Sums::default();
        let mut down = Sums::default();
        for i in 0..10 {
            up.add(i as f64, 2.0 * i as f64 + 1.0);
            down.add(i as f64, -3.0 * i as f64);
        }
        assert!((up.correlation().unwrap() - 1.0).abs() < 1e-12);
        assert!((down.correlation().unwrap() + 1.0).abs() < 1e-12);
    }

    #[test]
    fn the_plan_uses_the_fast_accumulator() {
        let ctx = SessionContext::new();
        register(&ctx);
        let udaf = ctx
            .state()
            .aggregate_functions()
            .get("corr")
            .cloned()
            .unwrap();
        assert!(udaf.inner().downcast_ref::<FastCorrelation>().is_some());
        let median = ctx.state().aggregate_functions().get("median").cloned();
        assert!(median
            .unwrap()
            .inner()
            .downcast_ref::<FastMedian>()
            .is_some());
    }
}
