//! Hand-written text encoding (no `format!` per value, no allocation per row): digits, zero-padded
//! and fixed-point numbers, short codes, and Arrow string and decimal columns built with the same
//! writers as the CSV encoder. Must not know about tables.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Decimal128Array, StringArray};
use datafusion::arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::error::ArrowError;

/// Number of decimal digits of `value` (1 for 0).
pub(super) fn decimal_digits(value: u64) -> usize {
    value.checked_ilog10().map_or(1, |log| log as usize + 1)
}

/// Fills `slot` with the last `slot.len()` decimal digits of `value`, zero-padded.
pub(super) fn fill_digits(slot: &mut [u8], mut value: u64) {
    for byte in slot.iter_mut().rev() {
        *byte = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Appends the decimal digits of `value`.
pub(super) fn push_u64(out: &mut Vec<u8>, value: u64) {
    push_u64_padded(out, value, 1);
}

/// Appends `value` zero-padded to at least `width` digits (like `%0*d`).
pub(super) fn push_u64_padded(out: &mut Vec<u8>, value: u64, width: usize) {
    let mut count = decimal_digits(value).max(width);
    // A u64 has at most 20 digits; wider fields are leading zeros.
    if count > 20 {
        out.extend(std::iter::repeat_n(b'0', count - 20));
        count = 20;
    }
    // Append a constant 20 bytes and cut back: a fixed-size copy compiles to a few stores, where
    // a copy of a variable handful of bytes would be a call to memmove (measured: a third of the
    // CSV encoder's time).
    let start = out.len();
    out.extend_from_slice(&[b'0'; 20]);
    fill_digits(&mut out[start..start + count], value);
    out.truncate(start + count);
}

/// Appends a fixed-point number stored in units of `10^-scale`, with exactly `scale` decimals.
pub(super) fn push_fixed(out: &mut Vec<u8>, units: u64, scale: u32) {
    let unit = 10u64.pow(scale);
    push_u64(out, units / unit);
    out.push(b'.');
    push_u64_padded(out, units % unit, scale as usize);
}

/// `value` as exactly `N` zero-padded digits (for fixed-width codes such as NDCs and NPIs).
pub(super) fn digit_array<const N: usize>(value: u64) -> [u8; N] {
    let mut digits = [b'0'; N];
    fill_digits(&mut digits, value);
    digits
}

/// Longest variable-length code we store ([`ShortCode`]).
pub(super) const SHORT_CODE_BYTES: usize = 8;

/// A code of at most 8 ASCII bytes (diagnosis codes), stored inline.
#[derive(Clone, Copy)]
pub(super) struct ShortCode {
    bytes: [u8; SHORT_CODE_BYTES],
    len: u8,
}

impl ShortCode {
    /// `None` if `text` is longer than 8 bytes.
    pub(super) fn new(text: &[u8]) -> Option<Self> {
        let mut bytes = [b' '; SHORT_CODE_BYTES];
        bytes.get_mut(..text.len())?.copy_from_slice(text);
        Some(ShortCode {
            bytes,
            len: text.len() as u8,
        })
    }

    /// Appends the code: copies all 8 bytes and cuts back (a constant-size copy, see
    /// [`push_u64_padded`]).
    pub(super) fn push_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.bytes);
        out.truncate(out.len() - (SHORT_CODE_BYTES - self.len as usize));
    }
}

/// An Arrow UTF-8 column built from raw bytes with the same writers as the CSV encoder.
pub(super) struct StringColumn {
    pub(super) values: Vec<u8>,
    offsets: Vec<i32>,
}

impl StringColumn {
    pub(super) fn with_capacity(rows: usize, bytes_per_row: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        StringColumn {
            values: Vec::with_capacity(rows * bytes_per_row),
            offsets,
        }
    }

    /// Ends the value whose bytes were appended to `values` since the last call.
    pub(super) fn end_value(&mut self) {
        // A batch is at most BATCH_ROWS short strings, far below i32::MAX bytes.
        self.offsets.push(self.values.len() as i32);
    }

    pub(super) fn push(&mut self, text: &[u8]) {
        self.values.extend_from_slice(text);
        self.end_value();
    }

    pub(super) fn push_code(&mut self, code: &ShortCode) {
        code.push_to(&mut self.values);
        self.end_value();
    }

    /// Validates UTF-8 once for the whole column (cheap for ASCII) and builds the array.
    pub(super) fn finish(self) -> Result<ArrayRef, ArrowError> {
        let offsets = OffsetBuffer::new(ScalarBuffer::from(self.offsets));
        let array = StringArray::try_new(offsets, Buffer::from_vec(self.values), None)?;
        Ok(Arc::new(array))
    }
}

/// A decimal column from integer units (cents, thousandths).
pub(super) fn decimal_array(
    units: Vec<i128>,
    precision: u8,
    scale: i8,
) -> Result<ArrayRef, ArrowError> {
    let array = Decimal128Array::from(units).with_precision_and_scale(precision, scale)?;
    Ok(Arc::new(array))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_match_format() {
        for value in [0u64, 7, 10, 99, 12_345, 1_000_000, u64::MAX] {
            for width in [0usize, 1, 3, 9, 11, 25] {
                let mut out = Vec::new();
                push_u64_padded(&mut out, value, width);
                assert_eq!(String::from_utf8(out).unwrap(), format!("{value:0width$}"));
            }
        }
        let mut out = Vec::new();
        push_fixed(&mut out, 1250, 2);
        out.push(b' ');
        push_fixed(&mut out, 3000, 3);
        out.push(b' ');
        push_fixed(&mut out, 5, 2);
        assert_eq!(out, b"12.50 3.000 0.05");
    }
}
