//! Report parameters: their kinds, their values, reading values from the header and from
//! `--param k=v`, and turning a value into the typed scalar bound to its `$name` placeholder.
//!
//! Must not: touch the SQL text. Values reach the query only as placeholder values.

use super::{ReportDefinition, ReportError};
use chrono::NaiveDate;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use std::fmt;

/// One declared parameter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ParamSpec {
    /// A valid placeholder name: the SQL refers to it as `$name`.
    pub(crate) name: String,
    pub(crate) kind: ParamKind,
    /// `None` means the parameter is required.
    pub(crate) default: Option<ParamValue>,
    /// When not empty, the only values accepted. For a `list`, each element must be one of
    /// these (they are held as [`ParamValue::String`]).
    pub(crate) allowed: Vec<ParamValue>,
    pub(crate) description: Option<String>,
}

/// The type of a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParamKind {
    Date,
    Int,
    Float,
    String,
    /// A list of strings; given on the command line comma-separated.
    List,
}

/// A bound parameter value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ParamValue {
    Date(NaiveDate),
    Int(i64),
    Float(f64),
    String(String),
    List(Vec<String>),
}
impl ParamKind {
    pub(crate) fn parse(text: &str) -> Option<ParamKind> {
        match text {
            "date" => Some(ParamKind::Date),
            "int" => Some(ParamKind::Int),
            "float" => Some(ParamKind::Float),
            "string" => Some(ParamKind::String),
            "list" => Some(ParamKind::List),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            ParamKind::Date => "date",
            ParamKind::Int => "int",
            ParamKind::Float => "float",
            ParamKind::String => "string",
            ParamKind::List => "list",
        }
    }
}

impl fmt::Display for ParamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ParamValue {
    /// The DataFusion value the engine binds to the `$name` placeholder: `Date32`, `Int64`,
    /// `Float64`, `Utf8`, or a `List` of `Utf8` (so `array_has($states, col)` works).
    pub(crate) fn to_scalar(&self) -> ScalarValue {
        match self {
            // NaiveDate's default is 1970-01-01, the Date32 epoch. Every NaiveDate is within
            // ±262,143 years, so the day count always fits an i32.
            ParamValue::Date(date) => ScalarValue::Date32(Some(
                date.signed_duration_since(NaiveDate::default()).num_days() as i32,
            )),
            ParamValue::Int(value) => ScalarValue::Int64(Some(*value)),
            ParamValue::Float(value) => ScalarValue::Float64(Some(*value)),
            ParamValue::String(value) => ScalarValue::Utf8(Some(value.clone())),
            ParamValue::List(items) => {
                let items: Vec<ScalarValue> = items
                    .iter()
                    .map(|item| ScalarValue::Utf8(Some(item.clone())))
                    .collect();
                ScalarValue::List(ScalarValue::new_list_nullable(&items, &DataType::Utf8))
            }
        }
    }

    /// The value as JSON, for manifests.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            ParamValue::Date(date) => Value::String(date.format("%Y-%m-%d").to_string()),
            ParamValue::Int(value) => Value::from(*value),
            // JSON has no NaN or infinity; such values cannot come from a header or `bind`.
            ParamValue::Float(value) => serde_json::Number::from_f64(*value)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            ParamValue::String(value) => Value::String(value.clone()),
            ParamValue::List(items) => {
                Value::Array(items.iter().cloned().map(Value::String).collect())
            }
        }
    }
}

/// Dates as `YYYY-MM-DD`, lists comma-separated (the form `--param` takes).
impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Date(date) => write!(f, "{}", date.format("%Y-%m-%d")),
            ParamValue::Int(value) => write!(f, "{value}"),
            ParamValue::Float(value) => write!(f, "{value}"),
            ParamValue::String(value) => f.write_str(value),
            ParamValue::List(items) => f.write_str(&items.join(",")),
        }
    }
}
/// A header value (TOML typed) as a parameter value of `kind`.
pub(crate) fn value_from_toml(kind: ParamKind, value: &toml::Value) -> Result<ParamValue, String> {
    use toml::Value;
    let wrong = || format!("{value} is not {}", kind_phrase(kind));
    match (kind, value) {
        (ParamKind::Date, Value::String(text)) => parse_value(kind, text),
        // A bare TOML date (`default = 2024-01-01`) is accepted as well as a string.
        (ParamKind::Date, Value::Datetime(datetime)) => match (datetime.date, datetime.time) {
            (Some(date), None) => NaiveDate::from_ymd_opt(
                i32::from(date.year),
                u32::from(date.month),
                u32::from(date.day),
            )
            .map(ParamValue::Date)
            .ok_or_else(wrong),
            _ => Err(wrong()),
        },
        (ParamKind::Int, Value::Integer(number)) => Ok(ParamValue::Int(*number)),
        (ParamKind::Float, Value::Float(number)) if number.is_finite() => {
            Ok(ParamValue::Float(*number))
        }
        (ParamKind::Float, Value::Integer(number)) => Ok(ParamValue::Float(*number as f64)),
        (ParamKind::String, Value::String(text)) => Ok(ParamValue::String(text.clone())),
        (ParamKind::List, Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(text) => Ok(text.clone()),
                other => Err(format!("{other} in a list is not a string")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(ParamValue::List),
        _ => Err(wrong()),
    }
}

fn kind_phrase(kind: ParamKind) -> &'static str {
    match kind {
        ParamKind::Date => "a date (YYYY-MM-DD)",
        ParamKind::Int => "a whole number",
        ParamKind::Float => "a number",
        ParamKind::String => "a string",
        ParamKind::List => "a list of strings",
    }
}

/// A raw `--param` value as a parameter value of `kind`. Lists are comma-separated, with
/// spaces around elements ignored; an empty text is an empty list.
fn parse_value(kind: ParamKind, text: &str) -> Result<ParamValue, String> {
    let wrong = || format!("`{text}` is not {}", kind_phrase(kind));
    match kind {
        ParamKind::Date => NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
            .map(ParamValue::Date)
            .map_err(|_| wrong()),
        ParamKind::Int => text
            .trim()
            .parse()
            .map(ParamValue::Int)
            .map_err(|_| wrong()),
        ParamKind::Float => match text.trim().parse::<f64>() {
            Ok(number) if number.is_finite() => Ok(ParamValue::Float(number)),
            _ => Err(wrong()),
        },
        // Strings are taken exactly as given: they are bound as values, never spliced into SQL.
        ParamKind::String => Ok(ParamValue::String(text.to_string())),
        ParamKind::List => {
            if text.trim().is_empty() {
                return Ok(ParamValue::List(Vec::new()));
            }
            let items: Vec<String> = text
                .split(',')
                .map(|item| item.trim().to_string())
                .collect();
            if items.iter().any(String::is_empty) {
                return Err(format!("`{text}` has an empty element"));
            }
            Ok(ParamValue::List(items))
        }
    }
}

/// Check a value against `allowed` (empty means anything goes).
pub(crate) fn check_allowed(value: &ParamValue, allowed: &[ParamValue]) -> Result<(), String> {
    if allowed.is_empty() {
        return Ok(());
    }
    let choices = || {
        allowed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match value {
        ParamValue::List(items) => {
            for item in items {
                if !allowed.contains(&ParamValue::String(item.clone())) {
                    return Err(format!("`{item}` is not allowed (allowed: {})", choices()));
                }
            }
            Ok(())
        }
        other if allowed.contains(other) => Ok(()),
        other => Err(format!("`{other}` is not allowed (allowed: {})", choices())),
    }
}
impl ReportDefinition {
    /// Resolve every parameter's value, in declaration order. `given` are `--param k=v` pairs
    /// (raw text; lists comma-separated); defaults fill the rest. Unknown names, a name given
    /// twice, missing required params, unparsable values and values not in `allowed` are errors
    /// naming the report and the param.
    pub(crate) fn bind(
        &self,
        given: &[(String, String)],
    ) -> Result<Vec<(String, ParamValue)>, ReportError> {
        let param_error = |param: &str, message: String| ReportError::Param {
            report: self.name.clone(),
            param: param.to_string(),
            message,
        };
        for (index, (name, _)) in given.iter().enumerate() {
            if !self.params.iter().any(|param| &param.name == name) {
                let known: Vec<&str> = self
                    .params
                    .iter()
                    .map(|param| param.name.as_str())
                    .collect();
                let known = if known.is_empty() {
                    "the report takes no params".to_string()
                } else {
                    format!("known params: {}", known.join(", "))
                };
                return Err(param_error(name, format!("unknown param ({known})")));
            }
            if given[..index].iter().any(|(earlier, _)| earlier == name) {
                return Err(param_error(name, "given more than once".to_string()));
            }
        }

        let mut values = Vec::with_capacity(self.params.len());
        for param in &self.params {
            let value = match given.iter().find(|(name, _)| name == &param.name) {
                Some((_, raw)) => {
                    let value = parse_value(param.kind, raw)
                        .map_err(|message| param_error(&param.name, message))?;
                    check_allowed(&value, &param.allowed)
                        .map_err(|message| param_error(&param.name, message))?;
                    value
                }
                None => param.default.clone().ok_or_else(|| {
                    param_error(
                        &param.name,
                        format!(
                            "required (no default): give --param {}=<{}>",
                            param.name, param.kind
                        ),
                    )
                })?,
            };
            values.push((param.name.clone(), value));
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::parse_report;
    use crate::report::test_fixtures::{date, full, given};
    use datafusion::arrow::array::Array;
    use std::path::Path;

    #[test]
    fn bind_uses_defaults_and_overrides() {
        let report = full();
        let values = report.bind(&given(&[("top", "5")])).unwrap();
        assert_eq!(
            values,
            vec![
                ("month".to_string(), ParamValue::Date(date(2024, 1, 1))),
                (
                    "states".to_string(),
                    ParamValue::List(vec!["CA".into(), "NY".into()])
                ),
                ("min_cost".to_string(), ParamValue::Float(10.0)),
                ("top".to_string(), ParamValue::Int(5)),
                ("label".to_string(), ParamValue::String("all".into())),
            ]
        );

        let values = report
            .bind(&given(&[
                ("top", "-3"),
                ("month", "2024-02-01"),
                ("states", " TX , CA"),
                ("min_cost", "2.5"),
            ]))
            .unwrap();
        assert_eq!(values[0].1, ParamValue::Date(date(2024, 2, 1)));
        assert_eq!(
            values[1].1,
            ParamValue::List(vec!["TX".into(), "CA".into()])
        );
        assert_eq!(values[2].1, ParamValue::Float(2.5));
        assert_eq!(values[3].1, ParamValue::Int(-3));

        let values = report
            .bind(&given(&[("top", "1"), ("states", "")]))
            .unwrap();
        assert_eq!(values[1].1, ParamValue::List(vec![]));
    }

    fn param_error(report: &ReportDefinition, pairs: &[(&str, &str)]) -> (String, String) {
        match report.bind(&given(pairs)) {
            Err(ReportError::Param {
                report: name,
                param,
                message,
            }) => {
                assert_eq!(name, report.name);
                (param, message)
            }
            other => panic!("expected a param error, got {other:?}"),
        }
    }

    #[test]
    fn bind_errors_name_the_param() {
        let report = full();
        let (param, message) = param_error(&report, &[]);
        assert_eq!(param, "top");
        assert!(message.contains("required"), "{message}");

        let (param, message) = param_error(&report, &[("top", "1"), ("colour", "red")]);
        assert_eq!(param, "colour");
        assert!(
            message.contains("unknown") && message.contains("month"),
            "{message}"
        );

        let (param, message) = param_error(&report, &[("top", "1"), ("states", "CA,FL")]);
        assert_eq!(param, "states");
        assert!(message.contains("FL"), "{message}");

        let (param, message) = param_error(&report, &[("top", "1"), ("month", "2024-02-30")]);
        assert_eq!(param, "month");
        assert!(message.contains("2024-02-30"), "{message}");

        let (param, _) = param_error(&report, &[("top", "1"), ("month", "01/02/2024")]);
        assert_eq!(param, "month");
        let (param, _) = param_error(&report, &[("top", "1.5")]);
        assert_eq!(param, "top");
        let (param, _) = param_error(&report, &[("top", "1"), ("min_cost", "NaN")]);
        assert_eq!(param, "min_cost");
        let (param, _) = param_error(&report, &[("top", "1"), ("states", "CA,,NY")]);
        assert_eq!(param, "states");
        let (param, message) = param_error(&report, &[("top", "1"), ("top", "2")]);
        assert_eq!(param, "top");
        assert!(message.contains("more than once"), "{message}");

        let error = report.bind(&given(&[])).unwrap_err();
        assert!(
            error.to_string().contains("cost_by_diagnosis_monthly"),
            "{error}"
        );
    }

    #[test]
    fn allowed_applies_to_scalars() {
        let text = "/* report\nname = \"x\"\n[params.n]\ntype = \"int\"\ndefault = 1\nallowed = [1, 2]\n*/\nSELECT $n";
        let report = parse_report(Path::new("a.sql"), text).unwrap().unwrap();
        assert_eq!(
            report.bind(&given(&[("n", "2")])).unwrap()[0].1,
            ParamValue::Int(2)
        );
        let (param, message) = param_error(&report, &[("n", "3")]);
        assert_eq!(param, "n");
        assert!(message.contains("allowed: 1, 2"), "{message}");
    }

    #[test]
    fn hostile_string_stays_a_value_and_the_sql_is_untouched() {
        let text = "/* report\nname = \"x\"\n[params.who]\ntype = \"string\"\n*/\nSELECT * FROM t WHERE name = $who\n";
        let report = parse_report(Path::new("a.sql"), text).unwrap().unwrap();
        let sql_before = report.sql.clone();
        let hostile = "'; DROP TABLE x; --";
        let values = report.bind(&given(&[("who", hostile)])).unwrap();
        assert_eq!(
            values,
            vec![("who".to_string(), ParamValue::String(hostile.to_string()))]
        );
        assert_eq!(
            values[0].1.to_scalar(),
            ScalarValue::Utf8(Some(hostile.to_string()))
        );
        assert_eq!(report.sql, sql_before);
        assert_eq!(report.sql, "SELECT * FROM t WHERE name = $who\n");
    }

    #[test]
    fn scalars_have_the_documented_types() {
        // 2024-01-01 is 19723 days after 1970-01-01: 54 years, 13 of them leap years
        // (1972..=2020), so 54 * 365 + 13 = 19723.
        assert_eq!(
            ParamValue::Date(date(2024, 1, 1)).to_scalar(),
            ScalarValue::Date32(Some(19723))
        );
        assert_eq!(ParamValue::Int(7).to_scalar(), ScalarValue::Int64(Some(7)));
        assert_eq!(
            ParamValue::Float(0.5).to_scalar(),
            ScalarValue::Float64(Some(0.5))
        );
        let list = ParamValue::List(vec!["CA".into(), "NY".into()]).to_scalar();
        assert_eq!(
            list.data_type(),
            DataType::List(std::sync::Arc::new(
                datafusion::arrow::datatypes::Field::new("item", DataType::Utf8, true)
            ))
        );
        match list {
            ScalarValue::List(array) => {
                assert_eq!(array.len(), 1);
                let values = array.value(0);
                let strings = values
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::StringArray>()
                    .expect("Utf8 elements");
                assert_eq!(strings.iter().collect::<Vec<_>>(), [Some("CA"), Some("NY")]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn display_forms() {
        assert_eq!(ParamValue::Date(date(2024, 3, 9)).to_string(), "2024-03-09");
        assert_eq!(ParamValue::Int(-4).to_string(), "-4");
        assert_eq!(ParamValue::Float(2.5).to_string(), "2.5");
        assert_eq!(ParamValue::String("a b".into()).to_string(), "a b");
        assert_eq!(
            ParamValue::List(vec!["CA".into(), "NY".into()]).to_string(),
            "CA,NY"
        );
    }
}
