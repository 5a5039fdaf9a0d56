//! `profile`: per-column statistics of a table in one aggregation under the memory ceiling
//! (DuckDB's `SUMMARIZE`), for `spillway profile` and as the SQL table function
//! `profile('table')` in every entry point (`query`, the shell, `serve`).
//!
//! Must not read anything but the table it is given, through the session it is called in: so
//! the caller's privacy policy and memory pool apply to the profile as to any query.

use crate::catalog;
use crate::error::{Error, Result};
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use datafusion::execution::context::{SessionContext, SessionState};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::functions_aggregate::expr_fn::{
    approx_distinct, approx_percentile_cont, avg, count, max, min,
};
use datafusion::logical_expr::{cast, col, lit, Expr};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use std::sync::{Arc, LazyLock};

/// The columns of a profile, one row per profiled column, every value as text.
const COLUMNS: [&str; 10] = [
    "column",
    "type",
    "nulls",
    "min",
    "max",
    "approx_distinct",
    "mean",
    "q25",
    "q50",
    "q75",
];

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(
        COLUMNS
            .iter()
            .map(|name| Field::new(*name, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ))
});

/// `profile('table')`: the table function. The profile runs when the plan is executed (an
/// `EXPLAIN` reads nothing), in the session the statement was planned in.
#[derive(Debug)]
pub(crate) struct ProfileFunction;

impl TableFunctionImpl for ProfileFunction {
    fn call_with_args(
        &self,
        args: TableFunctionArgs,
    ) -> datafusion::error::Result<Arc<dyn TableProvider>> {
        let usage = || {
            datafusion::error::DataFusionError::Plan(
                "profile takes one argument, a table's name as a string: profile('claims')".into(),
            )
        };
        let table = match args.exprs() {
            [Expr::Literal(
                ScalarValue::Utf8(Some(name))
                | ScalarValue::LargeUtf8(Some(name))
                | ScalarValue::Utf8View(Some(name)),
                _,
            )] => name.clone(),
            _ => return Err(usage()),
        };
        let state = args
            .session()
            .as_any()
            .downcast_ref::<SessionState>()
            .ok_or_else(|| {
                datafusion::error::DataFusionError::Internal(
                    "profile: the session is not a SessionState".into(),
                )
            })?
            .clone();
        // Name the missing table now, at planning, as a query naming it would.
        let reference = datafusion::common::TableReference::from(table.as_str());
        let known = state
            .schema_for_ref(reference.clone())
            .ok()
            .and_then(|schema| schema.table_exist(reference.table()).then_some(()));
        if known.is_none() {
            return Err(datafusion::error::DataFusionError::Plan(format!(
                "profile('{table}'): no table `{table}`"
            )));
        }
        let partition = ProfilePartition { state, table };
        Ok(Arc::new(StreamingTable::try_new(
            SCHEMA.clone(),
            vec![Arc::new(partition)],
        )?))
    }
}

/// The one partition of `profile('table')`: runs the profile when it is read.
#[derive(Debug)]
struct ProfilePartition {
    state: SessionState,
    table: String,
}

impl PartitionStream for ProfilePartition {
    fn schema(&self) -> &SchemaRef {
        &SCHEMA
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let context = SessionContext::new_with_state(self.state.clone());
        let table = self.table.clone();
        let batch = async move {
            let frame = context.table(table.as_str()).await?;
            profile(frame)
                .await
                .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))
        };
        Box::pin(RecordBatchStreamAdapter::new(
            SCHEMA.clone(),
            futures::stream::once(batch),
        ))
    }
}

/// What `profile` computes for a column of `data_type`.
fn measures(data_type: &DataType) -> (bool, bool) {
    let ordered = data_type.is_primitive()
        || matches!(
            data_type,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Boolean
        );
    (ordered, data_type.is_numeric())
}

/// One aggregation over `table`: per column, its nulls, min, max, approximate distinct count,
/// and for numbers mean and quartiles; returned one row per column, every value as text.
pub(crate) async fn profile(frame: DataFrame) -> Result<RecordBatch> {
    let schema = frame.schema().inner().clone();
    let mut aggregates: Vec<Expr> = vec![count(lit(1)).alias("rows")];
    for (index, field) in schema.fields().iter().enumerate() {
        let column = col(datafusion::common::Column::from_name(field.name()));
        let (ordered, numeric) = measures(field.data_type());
        aggregates.push(count(column.clone()).alias(format!("c{index}_count")));
        if ordered {
            aggregates
                .push(cast(min(column.clone()), DataType::Utf8).alias(format!("c{index}_min")));
            aggregates
                .push(cast(max(column.clone()), DataType::Utf8).alias(format!("c{index}_max")));
            // DataFusion estimates distinct integers, dates and text; others as their text.
            let countable = field.data_type().is_integer()
                || matches!(
                    field.data_type(),
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Date32
                );
            let distinct_of = match countable {
                true => column.clone(),
                false => cast(column.clone(), DataType::Utf8),
            };
            aggregates.push(approx_distinct(distinct_of).alias(format!("c{index}_distinct")));
        }
        if numeric {
            let as_double = cast(column.clone(), DataType::Float64);
            aggregates.push(avg(as_double.clone()).alias(format!("c{index}_mean")));
            for (label, p) in [("q25", 0.25), ("q50", 0.5), ("q75", 0.75)] {
                aggregates.push(
                    approx_percentile_cont(as_double.clone().sort(true, false), lit(p), None)
                        .alias(format!("c{index}_{label}")),
                );
            }
        }
    }
    let batches = frame.aggregate(vec![], aggregates)?.collect().await?;
    let row = batches
        .iter()
        .find(|b| b.num_rows() == 1)
        .ok_or_else(|| Error::Internal("profile: the aggregation returned no row".into()))?;
    let value = |name: &str| -> Option<String> {
        let array = row.column_by_name(name)?;
        if array.is_null(0) {
            return None;
        }
        let text = datafusion::arrow::compute::cast(array, &DataType::Utf8).ok()?;
        let text = text.as_any().downcast_ref::<StringArray>()?;
        Some(text.value(0).to_string())
    };
    let rows: u64 = value("rows").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut columns: Vec<Vec<Option<String>>> = vec![Vec::new(); 10];
    for (index, field) in schema.fields().iter().enumerate() {
        let present: u64 = value(&format!("c{index}_count"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let cells = [
            Some(field.name().clone()),
            Some(catalog::config_type_name(field.data_type())),
            Some((rows - present).to_string()),
            value(&format!("c{index}_min")),
            value(&format!("c{index}_max")),
            value(&format!("c{index}_distinct")),
            value(&format!("c{index}_mean")).map(|v| round(&v)),
            value(&format!("c{index}_q25")).map(|v| round(&v)),
            value(&format!("c{index}_q50")).map(|v| round(&v)),
            value(&format!("c{index}_q75")).map(|v| round(&v)),
        ];
        for (column, cell) in columns.iter_mut().zip(cells) {
            column.push(cell);
        }
    }
    let arrays: Vec<StringArray> = columns.into_iter().map(StringArray::from).collect();
    text_batch(&COLUMNS, arrays)
}

/// A float as text with at most 6 significant decimals (`12.345678901` → `12.345679`).
fn round(text: &str) -> String {
    match text.parse::<f64>() {
        Ok(value) if value.fract() != 0.0 => {
            let shown = format!("{value:.6}");
            shown
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string()
        }
        _ => text.to_string(),
    }
}

pub(crate) fn text_batch(names: &[&str], arrays: Vec<StringArray>) -> Result<RecordBatch> {
    let fields: Vec<Field> = names
        .iter()
        .map(|name| Field::new(*name, DataType::Utf8, true))
        .collect();
    let arrays: Vec<ArrayRef> = arrays
        .into_iter()
        .map(|a| Arc::new(a) as ArrayRef)
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| Error::Internal(format!("describe: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartiles_print_with_six_decimals_at_most() {
        assert_eq!(round("12.3456789012"), "12.345679");
        assert_eq!(round("30"), "30");
        assert_eq!(round("2.5"), "2.5");
    }
}
