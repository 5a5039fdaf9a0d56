//! `spillway_people_upto(subject, k)`: how many distinct people stand behind a group, counted
//! up to `k` (the role's `min_cell_size`). The small-cell rule only asks whether a group has
//! at least `k` people, so a group keeps at most `k` of them: the state is bounded by `k`
//! whatever the group's size, it rides along the statement's own aggregation (one pass, no
//! second grouping by group and person), and partial states merge (a union, cut at `k`).
//!
//! People are told apart by a 64-bit hash of the subject value (DataFusion's fixed-seed hash,
//! the same on every partition and cluster node). Two different people can only look like one
//! when their hashes collide, which makes a group look smaller, never bigger: a collision can
//! suppress a group of exactly `k`, it can never let a smaller one through. Must not be used
//! where an exact count is shown to anyone.

use crate::engine::aggregate::passes;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, ListArray, UInt64Array,
};
use datafusion::arrow::buffer::{OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, UInt64Type};
use datafusion::common::hash_utils::{create_hashes, HLL_RANDOM_STATE};
use datafusion::common::{exec_err, Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};
use datafusion::physical_expr::expressions::Literal;
use std::sync::Arc;

/// The function's name, as the guard calls it and cluster nodes register it.
pub(crate) const NAME: &str = "spillway_people_upto";

/// The aggregate function (one instance serves every `k`: it is the second argument).
pub(crate) fn people_upto_udaf() -> Arc<AggregateUDF> {
    Arc::new(AggregateUDF::new_from_impl(PeopleUpTo {
        signature: Signature::any(2, Volatility::Immutable),
    }))
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct PeopleUpTo {
    signature: Signature,
}

/// `k`: the literal second argument.
fn limit(args: &AccumulatorArgs) -> Result<usize> {
    let value = args
        .exprs
        .get(1)
        .and_then(|e| e.downcast_ref::<Literal>())
        .map(|l| l.value().clone());
    match value {
        Some(ScalarValue::Int64(Some(k))) if k >= 1 => Ok(k as usize),
        other => exec_err!("{NAME}: the limit must be a positive BIGINT literal, not {other:?}"),
    }
}

impl AggregateUDFImpl for PeopleUpTo {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new_list(
            format_state_name(args.name, "people"),
            Field::new_list_field(DataType::UInt64, false),
            true,
        ))])
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(OneGroup {
            k: limit(&args)?,
            people: Vec::new(),
        }))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(Groups {
            k: limit(&args)?,
            people: Vec::new(),
            held: 0,
            hashes: Vec::new(),
        }))
    }
}

/// Add a person to a group's set unless it is full or holds them already.
#[inline]
fn add(people: &mut Vec<u64>, k: usize, person: u64) {
    if people.len() < k && !people.contains(&person) {
        people.push(person);
    }
}

/// The subjects' hashes (NULL subjects are no one: they are skipped by their validity).
fn hash(values: &ArrayRef, buffer: &mut Vec<u64>) -> Result<()> {
    buffer.clear();
    buffer.resize(values.len(), 0);
    create_hashes([values], &HLL_RANDOM_STATE, buffer)?;
    Ok(())
}

/// States as a list per group.
fn to_list(groups: Vec<Vec<u64>>) -> ArrayRef {
    let lengths = groups.iter().map(Vec::len);
    let offsets = OffsetBuffer::from_lengths(lengths);
    let values: Vec<u64> = groups.into_iter().flatten().collect();
    Arc::new(ListArray::new(
        Arc::new(Field::new_list_field(DataType::UInt64, false)),
        offsets,
        Arc::new(UInt64Array::new(ScalarBuffer::from(values), None)),
        None,
    ))
}

fn counts(groups: &[Vec<u64>]) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(
        groups.iter().map(|g| g.len() as i64),
    ))
}

/// The grouped accumulator: each group's people (at most `k` hashes).
struct Groups {
    k: usize,
    people: Vec<Vec<u64>>,
    /// People held over all groups (`size` must not walk every group on every batch).
    held: usize,
    hashes: Vec<u64>,
}

impl Groups {
    fn add(&mut self, group: usize, person: u64) {
        let people = &mut self.people[group];
        let before = people.len();
        add(people, self.k, person);
        self.held += people.len() - before;
    }

    fn take(&mut self, emit_to: EmitTo) -> Vec<Vec<u64>> {
        let taken = emit_to.take_needed(&mut self.people);
        self.held -= taken.iter().map(Vec::len).sum::<usize>();
        taken
    }
}

impl GroupsAccumulator for Groups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.people.resize_with(total_num_groups, Vec::new);
        let subjects = &values[0];
        let mut hashes = std::mem::take(&mut self.hashes);
        hash(subjects, &mut hashes)?;
        for (row, &group) in group_indices.iter().enumerate() {
            if subjects.is_valid(row) && passes(opt_filter, row) {
                self.add(group, hashes[row]);
            }
        }
        self.hashes = hashes;
        Ok(())
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.people.resize_with(total_num_groups, Vec::new);
        let lists = values[0].as_list::<i32>();
        let hashes = lists.values().as_primitive::<UInt64Type>().values();
        let offsets = lists.offsets();
        for (row, &group) in group_indices.iter().enumerate() {
            if lists.is_null(row) {
                continue;
            }
            let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
            for &person in &hashes[start..end] {
                self.add(group, person);
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        Ok(counts(&self.take(emit_to)))
    }

    /// Each row as a state of its own: its person, or no one.
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let mut hashes = Vec::new();
        hash(&values[0], &mut hashes)?;
        let states = hashes
            .into_iter()
            .enumerate()
            .map(|(row, person)| {
                if values[0].is_valid(row) && passes(opt_filter, row) {
                    vec![person]
                } else {
                    Vec::new()
                }
            })
            .collect();
        Ok(vec![to_list(states)])
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(vec![to_list(self.take(emit_to))])
    }

    fn size(&self) -> usize {
        // A group's vector grows by doubling up to k: count twice what it holds.
        self.people.capacity() * std::mem::size_of::<Vec<u64>>()
            + 2 * self.held * std::mem::size_of::<u64>()
            + self.hashes.capacity() * std::mem::size_of::<u64>()
    }
}

/// The accumulator of an aggregation without groups (one group).
#[derive(Debug)]
struct OneGroup {
    k: usize,
    people: Vec<u64>,
}

impl Accumulator for OneGroup {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let mut hashes = Vec::new();
        hash(&values[0], &mut hashes)?;
        for (row, person) in hashes.into_iter().enumerate() {
            if values[0].is_valid(row) {
                add(&mut self.people, self.k, person);
            }
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let lists = states[0].as_list::<i32>();
        for row in 0..lists.len() {
            if lists.is_valid(row) {
                for &person in lists.value(row).as_primitive::<UInt64Type>().values() {
                    add(&mut self.people, self.k, person);
                }
            }
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let list = to_list(vec![self.people.clone()]);
        Ok(vec![ScalarValue::List(Arc::new(
            list.as_list::<i32>().clone(),
        ))])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Int64(Some(self.people.len() as i64)))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.people.capacity() * std::mem::size_of::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringArray;

    fn groups(k: usize) -> Groups {
        Groups {
            k,
            people: Vec::new(),
            held: 0,
            hashes: Vec::new(),
        }
    }

    #[test]
    fn people_are_counted_once_each_up_to_k_and_states_merge_to_the_same_count() {
        // Group 0: a, b, a, c, NULL (3 people); group 1: d, d (1); k = 3 cuts group 2's 4 at 3.
        let subjects: ArrayRef = Arc::new(StringArray::from(vec![
            Some("a"),
            Some("b"),
            Some("a"),
            Some("c"),
            None,
            Some("d"),
            Some("d"),
            Some("e"),
            Some("f"),
            Some("g"),
            Some("h"),
        ]));
        let group_of = [0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2];
        let mut whole = groups(3);
        whole
            .update_batch(&[subjects.clone()], &group_of, None, 3)
            .unwrap();
        let expected = [3i64, 1, 3];
        let counted = whole.evaluate(EmitTo::All).unwrap();
        assert_eq!(
            counted
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                .values(),
            &expected
        );

        // The same rows in two partitions, merged: the same counts (a is in both halves).
        let (left, right) = (subjects.slice(0, 6), subjects.slice(6, 5));
        let mut a = groups(3);
        a.update_batch(&[left], &group_of[..6], None, 3).unwrap();
        let mut b = groups(3);
        b.update_batch(&[right], &group_of[6..], None, 3).unwrap();
        let mut merged = groups(3);
        merged
            .merge_batch(&a.state(EmitTo::All).unwrap(), &[0, 1, 2], 3)
            .unwrap();
        merged
            .merge_batch(&b.state(EmitTo::All).unwrap(), &[0, 1, 2], 3)
            .unwrap();
        let counted = merged.evaluate(EmitTo::All).unwrap();
        assert_eq!(
            counted
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                .values(),
            &expected
        );
    }
}
