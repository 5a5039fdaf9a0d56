//! Grouping on several small integer columns as one packed 64-bit key.
//!
//! DataFusion 55 groups a single primitive column with `GroupValuesPrimitive` (one hash table
//! of native values) but several columns with `GroupValuesColumn`, which hashes each column,
//! then compares each column of every candidate row separately; on H2O q6 (`GROUP BY id4, id5`,
//! two int32 columns, 10M rows) that was 11 % of the query's CPU. [`PACK_INTEGER_KEYS`] rewrites
//! `GROUP BY a, b` over non-nullable integers of at most 64 bits together into
//! `GROUP BY spillway_pack_keys(a, b)` and unpacks the columns from the key above the
//! aggregation, with shifts and casts, for the output rows. Among other group columns
//! (`GROUP BY s, a, b` with `s` a string) the integers that fit are packed and the rest kept:
//! on H2O q10 (three strings, three int32) that is five columns instead of six to hash and
//! compare, and, when the aggregation spills, to sort by (arrow sorts up to five columns with
//! a fixed, unrolled comparator, more through a loop of boxed ones).
//!
//! Must not change results: the rewrite keeps the aggregate's output names, qualifiers and types,
//! and applies only where packing is lossless (no NULLs, every bit of every column kept).

use crate::engine::rewrite::AggregateRewrite;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use datafusion::arrow::datatypes::ArrowNativeType;
use datafusion::arrow::datatypes::{
    ArrowPrimitiveType, DataType, Int16Type, Int32Type, Int8Type, UInt16Type, UInt32Type, UInt8Type,
};
use datafusion::common::{exec_err, Column, Result};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    binary_expr, cast, lit, Aggregate, ColumnarValue, Expr, ExprSchemable, LogicalPlan,
    LogicalPlanBuilder, Operator, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::optimizer::ApplyOrder;
use std::sync::Arc;

/// The name of the packed key column between the aggregation and the unpacking projection.
const PACKED_KEY: &str = "__spillway_packed_key";

/// Rewrites an aggregation grouped by two or more non-nullable integer columns that fit in 64
/// bits together into one grouped by their packed key and its other group columns (see the
/// module doc).
pub(crate) const PACK_INTEGER_KEYS: AggregateRewrite =
    AggregateRewrite::new("spillway_pack_integer_keys", ApplyOrder::BottomUp, packed);

/// Where one group column sits in the packed key.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Slot {
    /// Bits the column's type has.
    width: u32,
    /// Position of the slot's lowest bit in the key.
    shift: u32,
    /// Whether the column's type is signed (unpacked with sign extension).
    signed: bool,
}

/// Width and signedness of the integer types that pack.
fn integer_kind(data_type: &DataType) -> Option<(u32, bool)> {
    match data_type {
        DataType::Int8 => Some((8, true)),
        DataType::Int16 => Some((16, true)),
        DataType::Int32 => Some((32, true)),
        DataType::UInt8 => Some((8, false)),
        DataType::UInt16 => Some((16, false)),
        DataType::UInt32 => Some((32, false)),
        _ => None,
    }
}

/// Slots for columns of these types, the first column in the highest bits, or `None` if any
/// type does not pack or they need more than 64 bits.
fn slots(types: &[DataType]) -> Option<Vec<Slot>> {
    let kinds: Vec<(u32, bool)> = types.iter().map(integer_kind).collect::<Option<_>>()?;
    let total: u32 = kinds.iter().map(|(width, _)| width).sum();
    if total > 64 {
        return None;
    }
    let mut shift = total;
    Some(
        kinds
            .into_iter()
            .map(|(width, signed)| {
                shift -= width;
                Slot {
                    width,
                    shift,
                    signed,
                }
            })
            .collect(),
    )
}

fn packed(aggregate: &Aggregate) -> Result<Option<LogicalPlan>> {
    let groups = &aggregate.group_expr;
    if groups.len() < 2 || matches!(groups.first(), Some(Expr::GroupingSet(_))) {
        return Ok(None);
    }
    let input_schema = aggregate.input.schema();
    // The group columns that pack: non-nullable integer columns, taken in order while they fit
    // in 64 bits together. The others (strings, wide integers, expressions) stay beside the key.
    let mut packed_at = Vec::with_capacity(groups.len());
    let mut types = Vec::with_capacity(groups.len());
    let mut bits = 0;
    for (i, group) in groups.iter().enumerate() {
        if !matches!(group, Expr::Column(_)) || group.nullable(input_schema)? {
            continue;
        }
        let data_type = group.get_type(input_schema)?;
        match integer_kind(&data_type) {
            Some((width, _)) if bits + width <= 64 => {
                bits += width;
                packed_at.push(i);
                types.push(data_type);
            }
            _ => {}
        }
    }
    if packed_at.len() < 2 {
        return Ok(None);
    }
    let Some(slots) = slots(&types) else {
        return Ok(None);
    };
    let key = Expr::ScalarFunction(ScalarFunction::new_udf(
        pack_keys_udf(),
        packed_at.iter().map(|&i| groups[i].clone()).collect(),
    ))
    .alias(PACKED_KEY);
    // The key first: the aggregation hashes, compares and (when it spills) sorts by it first.
    let others: Vec<usize> = (0..groups.len())
        .filter(|i| !packed_at.contains(i))
        .collect();
    let inner_groups = std::iter::once(key)
        .chain(others.iter().map(|&i| groups[i].clone()))
        .collect::<Vec<_>>();
    let inner = LogicalPlanBuilder::from(aggregate.input.as_ref().clone())
        .aggregate(inner_groups, aggregate.aggr_expr.clone())?
        .build()?;
    let inner_schema = inner.schema().clone();
    let schema = &aggregate.schema;
    let inner_column = |at: usize| Expr::Column(Column::from(inner_schema.qualified_field(at)));
    let projection = (0..schema.fields().len()).map(|i| {
        let (qualifier, field) = schema.qualified_field(i);
        let expr = if let Some(p) = packed_at.iter().position(|&g| g == i) {
            cast(
                unpacked(inner_column(0), slots[p]),
                field.data_type().clone(),
            )
        } else if let Some(o) = others.iter().position(|&g| g == i) {
            inner_column(1 + o)
        } else {
            // The aggregates follow the groups in the same order as before.
            inner_column(i - groups.len() + 1 + others.len())
        };
        expr.alias_qualified(qualifier.cloned(), field.name())
    });
    Ok(Some(
        LogicalPlanBuilder::from(inner)
            .project(projection)?
            .build()?,
    ))
}

/// The column in `slot` of the packed `key`, as an Int64 holding exactly the column's value.
/// `spillway_pack_keys`, by the name a plan refers to it (a cluster node looks it up by name).
pub(crate) fn pack_keys_udf() -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::new_from_impl(PackKeys::new()))
}

fn unpacked(key: Expr, slot: Slot) -> Expr {
    if slot.signed {
        // Move the slot to the top bits, then shift it down arithmetically to sign-extend.
        let up = binary_expr(
            key,
            Operator::BitwiseShiftLeft,
            lit(i64::from(64 - slot.shift - slot.width)),
        );
        binary_expr(
            up,
            Operator::BitwiseShiftRight,
            lit(i64::from(64 - slot.width)),
        )
    } else {
        let down = binary_expr(key, Operator::BitwiseShiftRight, lit(i64::from(slot.shift)));
        binary_expr(down, Operator::BitwiseAnd, lit(mask(slot.width)))
    }
}

/// The low `width` bits set.
fn mask(width: u32) -> i64 {
    if width >= 64 {
        -1
    } else {
        (1i64 << width) - 1
    }
}

/// `spillway_pack_keys(a, b, …)`: the integer arguments' bits side by side in one Int64, the
/// first argument highest (the layout [`slots`] gives). Only [`PACK_INTEGER_KEYS`] calls it.
#[derive(Debug, PartialEq, Eq, Hash)]
struct PackKeys {
    signature: Signature,
}

impl PackKeys {
    fn new() -> Self {
        Self {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for PackKeys {
    fn name(&self) -> &str {
        "spillway_pack_keys"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let types: Vec<DataType> = arrays.iter().map(|a| a.data_type().clone()).collect();
        let Some(slots) = slots(&types) else {
            return exec_err!("spillway_pack_keys: arguments {types:?} do not pack into 64 bits");
        };
        let mut keys = vec![0i64; args.number_rows];
        for (array, slot) in arrays.iter().zip(slots) {
            if array.null_count() > 0 {
                return exec_err!("spillway_pack_keys: a group column holds NULL");
            }
            match array.data_type() {
                DataType::Int8 => pack_into::<Int8Type>(&mut keys, array, slot),
                DataType::Int16 => pack_into::<Int16Type>(&mut keys, array, slot),
                DataType::Int32 => pack_into::<Int32Type>(&mut keys, array, slot),
                DataType::UInt8 => pack_into::<UInt8Type>(&mut keys, array, slot),
                DataType::UInt16 => pack_into::<UInt16Type>(&mut keys, array, slot),
                DataType::UInt32 => pack_into::<UInt32Type>(&mut keys, array, slot),
                other => return exec_err!("spillway_pack_keys: cannot pack {other}"),
            }
        }
        Ok(ColumnarValue::Array(
            Arc::new(Int64Array::from(keys)) as ArrayRef
        ))
    }
}

/// ORs each value's low `slot.width` bits into its row's key at `slot.shift`.
fn pack_into<T: ArrowPrimitiveType>(keys: &mut [i64], array: &ArrayRef, slot: Slot) {
    let mask = mask(slot.width);
    for (key, value) in keys.iter_mut().zip(array.as_primitive::<T>().values()) {
        // `as_usize` sign-extends signed values; the mask keeps the slot's bits either way.
        *key |= ((value.as_usize() as i64) & mask) << slot.shift;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int32Array, Int8Array, RecordBatch, UInt16Array};
    use datafusion::arrow::datatypes::{Field, Int64Type, Schema};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::prelude::{SessionConfig, SessionContext};
    use std::collections::BTreeMap;

    /// 3,000 rows over every combination of a (int32, negative and extreme values), b (int8,
    /// negative) and c (uint16, its top value): the sign bits of each slot are exercised.
    fn rows() -> Vec<(i32, i8, u16, i64)> {
        let a_values = [i32::MIN, -7, 0, 5, i32::MAX];
        let b_values = [i8::MIN, -1, 0, 1, i8::MAX];
        let c_values = [0u16, 1, u16::MAX];
        (0..3000i64)
            .map(|i| {
                let i_usize = i as usize;
                (
                    a_values[i_usize % 5],
                    b_values[(i_usize / 5) % 5],
                    c_values[(i_usize / 25) % 3],
                    i,
                )
            })
            .collect()
    }

    /// A session with the rule, over [`rows`] in three partitions; `a` declared nullable or not.
    fn context(nullable: bool) -> SessionContext {
        let config = SessionConfig::new()
            .with_target_partitions(3)
            .with_batch_size(256);
        let state = datafusion::execution::SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .with_optimizer_rule(Arc::new(PACK_INTEGER_KEYS))
            .build();
        let ctx = SessionContext::new_with_state(state);
        let rows = rows();
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int32, nullable),
            Field::new("b", DataType::Int8, false),
            Field::new("c", DataType::UInt16, false),
            Field::new("v", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int8Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(UInt16Array::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.3))),
            ],
        )
        .unwrap();
        let parts: Vec<RecordBatch> = (0..3).map(|i| batch.slice(i * 1000, 1000)).collect();
        let table = datafusion::datasource::MemTable::try_new(schema, vec![parts]).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        ctx
    }

    async fn plan_text(ctx: &SessionContext, sql: &str) -> String {
        let batches = ctx
            .sql(&format!("EXPLAIN {sql}"))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        pretty_format_batches(&batches).unwrap().to_string()
    }

    #[tokio::test]
    async fn grouping_on_packed_keys_gives_each_combination_its_own_row_and_types() {
        let ctx = context(false);
        let sql = "SELECT t.a, b, c, sum(v) AS s, count(*) AS n FROM t GROUP BY a, b, c";
        assert!(plan_text(&ctx, sql).await.contains("spillway_pack_keys"));
        let df = ctx.sql(sql).await.unwrap();
        let fields: Vec<(String, DataType)> = df
            .schema()
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        assert_eq!(
            fields,
            vec![
                ("a".to_string(), DataType::Int32),
                ("b".to_string(), DataType::Int8),
                ("c".to_string(), DataType::UInt16),
                ("s".to_string(), DataType::Int64),
                ("n".to_string(), DataType::Int64),
            ]
        );
        let mut expected: BTreeMap<(i32, i8, u16), (i64, i64)> = BTreeMap::new();
        for (a, b, c, v) in rows() {
            let entry = expected.entry((a, b, c)).or_default();
            entry.0 += v;
            entry.1 += 1;
        }
        let mut got = BTreeMap::new();
        for batch in df.collect().await.unwrap() {
            let a = batch.column(0).as_primitive::<Int32Type>();
            let b = batch.column(1).as_primitive::<Int8Type>();
            let c = batch.column(2).as_primitive::<UInt16Type>();
            let s = batch.column(3).as_primitive::<Int64Type>();
            let n = batch.column(4).as_primitive::<Int64Type>();
            for i in 0..batch.num_rows() {
                got.insert(
                    (a.value(i), b.value(i), c.value(i)),
                    (s.value(i), n.value(i)),
                );
            }
        }
        assert_eq!(got.len(), 75);
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn integers_beside_other_group_columns_pack_and_the_others_stay_in_place() {
        let ctx = context(false);
        // `v % 7` (an expression) and `v > 1500` (a boolean) stay; a, b and c (56 bits) pack.
        let sql = "SELECT a, v % 7 AS m, b, v > 1500 AS late, c, sum(v) AS s, count(*) AS n \
                   FROM t GROUP BY a, v % 7, b, v > 1500, c";
        assert!(plan_text(&ctx, sql)
            .await
            .contains("spillway_pack_keys(t.a, t.b, t.c)"));
        let df = ctx.sql(sql).await.unwrap();
        let names: Vec<String> = df
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, ["a", "m", "b", "late", "c", "s", "n"]);
        let mut expected: BTreeMap<(i32, i64, i8, bool, u16), (i64, i64)> = BTreeMap::new();
        for (a, b, c, v) in rows() {
            let entry = expected.entry((a, v % 7, b, v > 1500, c)).or_default();
            entry.0 += v;
            entry.1 += 1;
        }
        let mut got = BTreeMap::new();
        for batch in df.collect().await.unwrap() {
            let a = batch.column(0).as_primitive::<Int32Type>();
            let m = batch.column(1).as_primitive::<Int64Type>();
            let b = batch.column(2).as_primitive::<Int8Type>();
            let late = batch.column(3).as_boolean();
            let c = batch.column(4).as_primitive::<UInt16Type>();
            let s = batch.column(5).as_primitive::<Int64Type>();
            let n = batch.column(6).as_primitive::<Int64Type>();
            for i in 0..batch.num_rows() {
                got.insert(
                    (
                        a.value(i),
                        m.value(i),
                        b.value(i),
                        late.value(i),
                        c.value(i),
                    ),
                    (s.value(i), n.value(i)),
                );
            }
        }
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn nullable_or_single_or_wide_keys_are_left_alone() {
        let nullable = context(true);
        let plain = context(false);
        for (ctx, sql) in [
            (&nullable, "SELECT a, b, count(*) FROM t GROUP BY a, b"),
            (&plain, "SELECT a, count(*) FROM t GROUP BY a"),
            (&plain, "SELECT a, v, count(*) FROM t GROUP BY a, v"),
            (&plain, "SELECT a + 1, b, count(*) FROM t GROUP BY a + 1, b"),
        ] {
            assert!(
                !plan_text(ctx, sql).await.contains("spillway_pack_keys"),
                "{sql}"
            );
        }
    }

    #[test]
    fn slots_put_the_first_column_highest_and_refuse_more_than_64_bits() {
        let slot = |width, shift, signed| Slot {
            width,
            shift,
            signed,
        };
        assert_eq!(
            slots(&[DataType::Int32, DataType::UInt16, DataType::Int8]),
            Some(vec![
                slot(32, 24, true),
                slot(16, 8, false),
                slot(8, 0, true)
            ])
        );
        assert_eq!(
            slots(&[DataType::Int32, DataType::Int32, DataType::Int8]),
            None
        );
        assert_eq!(slots(&[DataType::Int64, DataType::Int8]), None);
    }
}
