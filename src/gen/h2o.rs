//! The H2O db-benchmark group-by table (`id1..id6`, `v1..v3`) as db-benchmark's
//! `groupby-datagen.R` makes it: its schema, one row as a pure function of `(seed, row)`, and its
//! CSV and Arrow encoders. Must not write files (the writer does).

use std::ops::Range;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, Int32Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;

use super::encode::{push_u64, push_u64_padded, StringColumn};
use super::rng::{stream_key, RowRng, DOMAIN_H2O_ROWS};
use super::writer::SyntheticTable;
use super::{invalid, GenError};

/// Arrow schema of the H2O db-benchmark group-by table.
pub(crate) fn h2o_schema() -> SchemaRef {
    let string = |name: &str| Field::new(name, DataType::Utf8, false);
    let int = |name: &str| Field::new(name, DataType::Int32, false);
    Arc::new(Schema::new(vec![
        string("id1"),
        string("id2"),
        string("id3"),
        int("id4"),
        int("id5"),
        int("id6"),
        int("v1"),
        int("v2"),
        Field::new("v3", DataType::Float64, false),
    ]))
}

/// One H2O row, as in db-benchmark's `groupby-datagen.R`: `sample()` with replacement for the
/// ids and small integers, `round(runif(N, max = 100), 6)` for `v3` (kept as integer millionths).
pub(super) struct H2oRow {
    id1: u64,
    id2: u64,
    id3: u64,
    id4: u64,
    id5: u64,
    id6: u64,
    v1: u64,
    v2: u64,
    v3_millionths: u64,
}

/// The H2O table of one run.
pub(super) struct H2oTable {
    row_key: u64,
    /// K: values of id1, id2, id4, id5.
    groups: u64,
    /// N / K (integer division, as R's `1:(N/K)`): values of id3 and id6.
    small_groups: u64,
    schema: SchemaRef,
}

impl H2oTable {
    pub(super) fn new(seed: u64, rows: u64, groups: u64) -> Result<Self, GenError> {
        if groups == 0 {
            return Err(invalid("groups", "must be at least 1".to_string()));
        }
        if groups > rows {
            let reason =
                format!("{groups} is more than --rows {rows}: id3 and id6 take rows/groups values");
            return Err(invalid("groups", reason));
        }
        let small_groups = rows / groups;
        // id4..id6 are int32.
        if groups > i32::MAX as u64 || small_groups > i32::MAX as u64 {
            let reason = format!("groups and rows/groups must be at most {}", i32::MAX);
            return Err(invalid("groups", reason));
        }
        Ok(H2oTable {
            row_key: stream_key(seed, DOMAIN_H2O_ROWS),
            groups,
            small_groups,
            schema: h2o_schema(),
        })
    }

    /// Row number `row` (0-based): a pure function of the seed and `row`.
    pub(super) fn row(&self, row: u64) -> H2oRow {
        let mut rng = RowRng::new(self.row_key, row);
        H2oRow {
            id1: 1 + rng.below(self.groups),
            id2: 1 + rng.below(self.groups),
            id3: 1 + rng.below(self.small_groups),
            id4: 1 + rng.below(self.groups),
            id5: 1 + rng.below(self.groups),
            id6: 1 + rng.below(self.small_groups),
            v1: 1 + rng.below(5),
            v2: 1 + rng.below(15),
            v3_millionths: (rng.unit() * 100_000_000.0).round() as u64,
        }
    }
}

/// `sprintf("id%03d", n)`, or `id%010d` for id3.
pub(super) fn push_h2o_id(out: &mut Vec<u8>, value: u64, width: usize) {
    out.extend_from_slice(b"id");
    push_u64_padded(out, value, width);
}

/// `v3` as the shortest decimal text (up to 6 decimals, no trailing zeros), like R's `fwrite`.
pub(super) fn push_millionths(out: &mut Vec<u8>, millionths: u64) {
    push_u64(out, millionths / 1_000_000);
    let mut fraction = millionths % 1_000_000;
    if fraction == 0 {
        return;
    }
    let mut width = 6;
    while fraction % 10 == 0 {
        fraction /= 10;
        width -= 1;
    }
    out.push(b'.');
    push_u64_padded(out, fraction, width);
}

impl SyntheticTable for H2oTable {
    fn file_stem(&self) -> &'static str {
        "h2o"
    }

    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn write_csv_rows(&self, rows: Range<u64>, out: &mut Vec<u8>) {
        for index in rows {
            let row = self.row(index);
            push_h2o_id(out, row.id1, 3);
            out.push(b',');
            push_h2o_id(out, row.id2, 3);
            out.push(b',');
            push_h2o_id(out, row.id3, 10);
            for value in [row.id4, row.id5, row.id6, row.v1, row.v2] {
                out.push(b',');
                push_u64(out, value);
            }
            out.push(b',');
            push_millionths(out, row.v3_millionths);
            out.push(b'\n');
        }
    }

    fn build_batch(&self, rows: Range<u64>) -> Result<RecordBatch, ArrowError> {
        let count = (rows.end - rows.start) as usize;
        let mut ids = [
            StringColumn::with_capacity(count, 5),
            StringColumn::with_capacity(count, 5),
            StringColumn::with_capacity(count, 12),
        ];
        let mut ints: [Vec<i32>; 5] = std::array::from_fn(|_| Vec::with_capacity(count));
        let mut v3 = Vec::with_capacity(count);
        for index in rows {
            let row = self.row(index);
            for (column, (value, width)) in
                ids.iter_mut()
                    .zip([(row.id1, 3), (row.id2, 3), (row.id3, 10)])
            {
                push_h2o_id(&mut column.values, value, width);
                column.end_value();
            }
            // All at most i32::MAX (validated in `new`).
            for (column, value) in ints
                .iter_mut()
                .zip([row.id4, row.id5, row.id6, row.v1, row.v2])
            {
                column.push(value as i32);
            }
            // Division of two exact integers rounds once: the same double a CSV reader parses
            // from the decimal text.
            v3.push(row.v3_millionths as f64 / 1_000_000.0);
        }
        let mut columns = Vec::with_capacity(9);
        for column in ids {
            columns.push(column.finish()?);
        }
        for column in ints {
            columns.push(Arc::new(Int32Array::from(column)) as ArrayRef);
        }
        columns.push(Arc::new(Float64Array::from(v3)));
        RecordBatch::try_new(self.schema(), columns)
    }

    fn high_cardinality_columns(&self) -> &'static [&'static str] {
        &["v3"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::tests::{
        file_bytes, h2o_options, ints, no_progress, read_csv, read_parquet, strings,
    };
    use crate::gen::{generate_h2o, GenFormat};
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Float64Type;
    use std::collections::BTreeSet;

    #[test]
    fn millionths_are_written_as_the_shortest_decimal_text() {
        let mut out = Vec::new();
        for millionths in [0, 100_000_000, 23_574_912, 5_100_000, 1] {
            push_millionths(&mut out, millionths);
            out.push(b' ');
        }
        assert_eq!(out, b"0 100 23.574912 5.1 0.000001 ");
    }

    #[test]
    fn h2o_values_follow_db_benchmark() {
        let dir = tempfile::tempdir().unwrap();
        let (rows, groups) = (10_000u64, 100u64);
        let summary = generate_h2o(
            &h2o_options(dir.path(), rows, groups, GenFormat::Csv),
            &no_progress,
        )
        .unwrap();
        assert_eq!(
            summary
                .files
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
            ["h2o-00000.csv", "h2o-00001.csv"]
        );
        let batch = read_csv(&summary, h2o_schema());
        assert_eq!(batch.num_rows() as u64, rows);

        let expected_ids = |count: u64, width: usize| -> BTreeSet<String> {
            (1..=count).map(|n| format!("id{n:0width$}")).collect()
        };
        for (name, count, width) in [
            ("id1", groups, 3),
            ("id2", groups, 3),
            ("id3", rows / groups, 10),
        ] {
            let seen: BTreeSet<String> = strings(&batch, name).into_iter().collect();
            assert_eq!(seen, expected_ids(count, width), "{name}");
        }
        for (name, max) in [
            ("id4", groups),
            ("id5", groups),
            ("id6", rows / groups),
            ("v1", 5),
            ("v2", 15),
        ] {
            let seen: BTreeSet<i64> = ints(&batch, name).into_iter().collect();
            assert_eq!(seen, (1..=max as i64).collect(), "{name}");
        }
        let v3 = batch
            .column_by_name("v3")
            .unwrap()
            .as_primitive::<Float64Type>();
        for &value in v3.values() {
            assert!((0.0..=100.0).contains(&value));
            let scaled = value * 1e6;
            assert!(
                (scaled - scaled.round()).abs() < 1e-6,
                "{value} has more than 6 decimals"
            );
        }
        let mean = v3.values().iter().sum::<f64>() / rows as f64;
        assert!((mean - 50.0).abs() < 2.0, "{mean}");
    }

    #[test]
    fn h2o_parquet_equals_csv_and_is_thread_independent() {
        let csv_dir = tempfile::tempdir().unwrap();
        let one_dir = tempfile::tempdir().unwrap();
        let two_dir = tempfile::tempdir().unwrap();
        let csv = generate_h2o(
            &h2o_options(csv_dir.path(), 5_000, 10, GenFormat::Csv),
            &no_progress,
        )
        .unwrap();
        let mut options = h2o_options(one_dir.path(), 5_000, 10, GenFormat::Parquet);
        options.threads = 1;
        let one = generate_h2o(&options, &no_progress).unwrap();
        options.threads = 2;
        options.out = two_dir.path().to_path_buf();
        let two = generate_h2o(&options, &no_progress).unwrap();
        assert_eq!(file_bytes(&one), file_bytes(&two));
        let from_csv = read_csv(&csv, h2o_schema());
        let from_parquet = read_parquet(&one, h2o_schema());
        for i in 0..from_csv.num_columns() {
            // Exact equality, v3 included: text and binary hold the same doubles.
            assert_eq!(
                from_csv.column(i).to_data(),
                from_parquet.column(i).to_data(),
                "column {i}"
            );
        }
    }
}
