//! De-identification functions, registered in every session (and on every cluster node):
//! `pseudonym(value)` (keyed HMAC-SHA-256), `generalize_date(d, 'month'|'year')`, `zip3(zip)`
//! and `age_band(dob, as_of)`. Must not let a key's bytes reach a plan, a message or a log:
//! the key lives inside the function, which plans name and `explain` shows only by name.

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, Int16Array, Int32Array, Int64Array, Int8Array,
    StringArray, UInt16Array, UInt32Array, UInt64Array, UInt8Array,
};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use datafusion::common::{exec_err, plan_err, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use std::sync::Arc;

/// The key of `pseudonym()`. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub(crate) struct PseudonymKey(ring::hmac::Key);

impl PseudonymKey {
    pub(crate) fn new(bytes: &[u8]) -> PseudonymKey {
        PseudonymKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes))
    }

    fn tag(&self, value: &[u8]) -> [u8; 32] {
        let tag = ring::hmac::sign(&self.0, value);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// The token of a text value: 32 hex digits (128 bits of the HMAC, so that two of the
    /// 3 million members of a year's claims collide with odds below 1 in 10^25).
    pub(crate) fn text_token(&self, value: &str) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let tag = self.tag(value.as_bytes());
        let mut out = String::with_capacity(32);
        for byte in &tag[..16] {
            out.push(HEX[(byte >> 4) as usize] as char);
            out.push(HEX[(byte & 15) as usize] as char);
        }
        out
    }

    /// The token of an integer: the HMAC of its decimal text, as a non-negative integer of
    /// `bits` bits (an integer column keeps its type; narrow types can collide, see README).
    fn integer_token(&self, value: i128, bits: u32) -> u64 {
        let tag = self.tag(value.to_string().as_bytes());
        let mut word = [0u8; 8];
        word.copy_from_slice(&tag[..8]);
        let raw = u64::from_be_bytes(word);
        raw >> (64 - (bits - 1))
    }
}

impl std::fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<key>")
    }
}

/// `pseudonym(value)`.
#[derive(Debug)]
pub(crate) struct Pseudonym {
    key: Option<PseudonymKey>,
    signature: Signature,
}

impl PartialEq for Pseudonym {
    fn eq(&self, _other: &Self) -> bool {
        // One key per process: every instance is the same function.
        true
    }
}
impl Eq for Pseudonym {}
impl std::hash::Hash for Pseudonym {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        "pseudonym".hash(state);
    }
}

/// The `pseudonym` function; without a key it fails when called, never hashing unkeyed.
pub(crate) fn pseudonym_udf(key: Option<PseudonymKey>) -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::new_from_impl(Pseudonym {
        key,
        signature: Signature::any(1, Volatility::Immutable),
    }))
}

impl ScalarUDFImpl for Pseudonym {
    fn name(&self) -> &str {
        "pseudonym"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match &arg_types[0] {
            t if t.is_integer() => Ok(t.clone()),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => {
                Ok(DataType::Utf8)
            }
            // Anything else is tokenised as its text.
            _ => Ok(DataType::Utf8),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let Some(key) = &self.key else {
            return exec_err!(
                "pseudonym(): no key is configured: set [privacy] key_env (a variable holding the key) or key_file in spillway.toml"
            );
        };
        let array = args.args[0].to_array(args.number_rows)?;
        let tokens: ArrayRef = match array.data_type() {
            DataType::Int8 => integer_tokens::<Int8Type, Int8Array>(key, &array, 8),
            DataType::Int16 => integer_tokens::<Int16Type, Int16Array>(key, &array, 16),
            DataType::Int32 => integer_tokens::<Int32Type, Int32Array>(key, &array, 32),
            DataType::Int64 => integer_tokens::<Int64Type, Int64Array>(key, &array, 64),
            DataType::UInt8 => integer_tokens::<UInt8Type, UInt8Array>(key, &array, 8),
            DataType::UInt16 => integer_tokens::<UInt16Type, UInt16Array>(key, &array, 16),
            DataType::UInt32 => integer_tokens::<UInt32Type, UInt32Array>(key, &array, 32),
            DataType::UInt64 => integer_tokens::<UInt64Type, UInt64Array>(key, &array, 64),
            _ => {
                let text = datafusion::arrow::compute::cast(&array, &DataType::Utf8)?;
                let text = text.as_string::<i32>();
                Arc::new(
                    text.iter()
                        .map(|v| v.map(|v| key.text_token(v)))
                        .collect::<StringArray>(),
                )
            }
        };
        let scalar = matches!(args.args[0], ColumnarValue::Scalar(_));
        if scalar {
            return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                &tokens, 0,
            )?));
        }
        Ok(ColumnarValue::Array(tokens))
    }
}

fn integer_tokens<T, A>(key: &PseudonymKey, array: &ArrayRef, bits: u32) -> ArrayRef
where
    T: datafusion::arrow::datatypes::ArrowPrimitiveType,
    T::Native: Into<i128> + TryFrom<u64>,
    A: From<Vec<Option<T::Native>>> + Array + 'static,
{
    let values = array.as_primitive::<T>();
    let tokens: Vec<Option<T::Native>> = values
        .iter()
        .map(|v| v.and_then(|v| T::Native::try_from(key.integer_token(v.into(), bits)).ok()))
        .collect();
    Arc::new(A::from(tokens))
}

/// `generalize_date(d, 'month' | 'year')`: the first day of the date's month or year.
#[derive(Debug, PartialEq, Eq, Hash)]
struct GeneralizeDate {
    signature: Signature,
}

impl ScalarUDFImpl for GeneralizeDate {
    fn name(&self) -> &str {
        "generalize_date"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Date32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let unit = match &args.args[1] {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(unit))) => unit.to_ascii_lowercase(),
            _ => return exec_err!("generalize_date(d, unit): unit must be 'month' or 'year'"),
        };
        let by_year = match unit.as_str() {
            "month" => false,
            "year" => true,
            other => {
                return exec_err!("generalize_date(d, '{other}'): unit must be 'month' or 'year'")
            }
        };
        let dates = as_dates(&args.args[0], args.number_rows)?;
        let dates = dates.as_primitive::<Date32Type>();
        let out: Date32Array = dates
            .iter()
            .map(|d| d.and_then(|d| first_day(d, by_year)))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// An argument as dates (timestamps and ISO date text are cast).
fn as_dates(value: &ColumnarValue, rows: usize) -> Result<ArrayRef> {
    let array = value.to_array(rows)?;
    Ok(datafusion::arrow::compute::cast(&array, &DataType::Date32)?)
}

fn first_day(days: i32, by_year: bool) -> Option<i32> {
    use chrono::{Datelike, NaiveDate};
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1)?;
    let date = epoch.checked_add_signed(chrono::Duration::days(days.into()))?;
    let first = if by_year {
        NaiveDate::from_ymd_opt(date.year(), 1, 1)?
    } else {
        NaiveDate::from_ymd_opt(date.year(), date.month(), 1)?
    };
    i32::try_from((first - epoch).num_days()).ok()
}

/// Three-digit ZIP prefixes where fewer than 20,000 people live (HHS's de-identification
/// guidance, from the 2000 Census): HIPAA's safe harbor turns them into `000`.
pub(crate) const RESTRICTED_ZIP3: [&str; 17] = [
    "036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830", "831", "878",
    "879", "884", "890", "893",
];

/// The safe-harbor ZIP3 of a ZIP code (`02139`, `02139-4307`): NULL when it is not one.
pub(crate) fn zip3(zip: &str) -> Option<&'static str> {
    let digits = zip.trim();
    let five = digits.split('-').next().unwrap_or("");
    if five.len() != 5 || !five.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let prefix = &five[..3];
    if RESTRICTED_ZIP3.contains(&prefix) {
        return Some("000");
    }
    // A `&'static str` for every prefix: 1,000 of them, made once.
    static PREFIXES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let prefixes = PREFIXES.get_or_init(|| (0..1000).map(|n| format!("{n:03}")).collect());
    let index: usize = prefix.parse().ok()?;
    prefixes.get(index).map(String::as_str)
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Zip3 {
    signature: Signature,
}

impl ScalarUDFImpl for Zip3 {
    fn name(&self) -> &str {
        "zip3"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let zips = args.args[0].to_array(args.number_rows)?;
        let zips = datafusion::arrow::compute::cast(&zips, &DataType::Utf8)?;
        let out: StringArray = zips
            .as_string::<i32>()
            .iter()
            .map(|z| z.and_then(zip3))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// Five-year age bands, `90+` for everyone 90 or older (HIPAA's safe harbor).
pub(crate) fn age_band(dob: i32, as_of: i32) -> Option<String> {
    use chrono::{Datelike, NaiveDate};
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1)?;
    let dob = epoch.checked_add_signed(chrono::Duration::days(dob.into()))?;
    let as_of = epoch.checked_add_signed(chrono::Duration::days(as_of.into()))?;
    let mut age = as_of.year() - dob.year();
    if (as_of.month(), as_of.day()) < (dob.month(), dob.day()) {
        age -= 1;
    }
    match age {
        a if a < 0 => None,
        a if a >= 90 => Some("90+".into()),
        a => {
            let low = a / 5 * 5;
            Some(format!("{}-{}", low, low + 4))
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct AgeBand {
    signature: Signature,
}

impl ScalarUDFImpl for AgeBand {
    fn name(&self) -> &str {
        "age_band"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if args.args.len() != 2 {
            return plan_err!("age_band(dob, as_of) takes two dates");
        }
        let dob = as_dates(&args.args[0], args.number_rows)?;
        let as_of = as_dates(&args.args[1], args.number_rows)?;
        let dob = dob.as_primitive::<Date32Type>();
        let as_of = as_of.as_primitive::<Date32Type>();
        let out: StringArray = dob
            .iter()
            .zip(as_of.iter())
            .map(|(d, a)| match (d, a) {
                (Some(d), Some(a)) => age_band(d, a),
                _ => None,
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// Every de-identification function; `pseudonym` with the configured key, if any.
pub(crate) fn udfs(key: Option<PseudonymKey>) -> Vec<Arc<ScalarUDF>> {
    // Dates arrive as any type that casts to a date (timestamps, ISO text).
    vec![
        pseudonym_udf(key),
        Arc::new(ScalarUDF::new_from_impl(GeneralizeDate {
            signature: Signature::any(2, Volatility::Immutable),
        })),
        Arc::new(ScalarUDF::new_from_impl(Zip3 {
            signature: Signature::any(1, Volatility::Immutable),
        })),
        Arc::new(ScalarUDF::new_from_impl(AgeBand {
            signature: Signature::any(2, Volatility::Immutable),
        })),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn days(y: i32, m: u32, d: u32) -> i32 {
        let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        (chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap() - epoch).num_days() as i32
    }

    #[test]
    fn pseudonym_is_the_keyed_hmac_of_the_value() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let key = PseudonymKey::new(b"Jefe");
        assert_eq!(
            key.text_token("what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c7"
        );
        assert_ne!(
            PseudonymKey::new(b"other").text_token("M1"),
            key.text_token("M1")
        );
    }

    #[test]
    fn integer_pseudonyms_stay_in_their_type() {
        let key = PseudonymKey::new(b"k");
        for value in [0i128, 1, -5, 1 << 40] {
            assert!(key.integer_token(value, 8) <= i8::MAX as u64);
            assert!(key.integer_token(value, 64) <= i64::MAX as u64);
        }
    }

    #[test]
    fn zip3_keeps_three_digits_and_zeroes_the_sparse_prefixes() {
        assert_eq!(zip3("02139"), Some("021"));
        assert_eq!(zip3("02139-4307"), Some("021"));
        assert_eq!(zip3("03601"), Some("000"));
        assert_eq!(zip3("89301"), Some("000"));
        assert_eq!(zip3("1234"), None);
        assert_eq!(zip3("ABCDE"), None);
    }

    #[test]
    fn age_bands_are_five_years_wide_with_90_and_over_collapsed() {
        assert_eq!(
            age_band(days(1980, 6, 15), days(2024, 6, 14)).as_deref(),
            Some("40-44")
        );
        assert_eq!(
            age_band(days(1980, 6, 15), days(2025, 6, 15)).as_deref(),
            Some("45-49")
        );
        assert_eq!(
            age_band(days(1920, 1, 1), days(2024, 1, 1)).as_deref(),
            Some("90+")
        );
        assert_eq!(age_band(days(2024, 1, 2), days(2024, 1, 1)), None);
    }

    #[test]
    fn dates_generalize_to_the_first_of_their_month_or_year() {
        assert_eq!(first_day(days(2024, 2, 29), false), Some(days(2024, 2, 1)));
        assert_eq!(first_day(days(2024, 2, 29), true), Some(days(2024, 1, 1)));
    }
}
