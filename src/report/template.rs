//! Output path templates: `reports/{name}/{month}.csv` rendered with a run's values, each
//! value made safe as one path component.
//!
//! Must not: create folders or write files (the run path and `output` do).

use super::params::{ParamSpec, ParamValue};
use super::{ReportDefinition, ReportError};
use chrono::NaiveDate;

/// Placeholders every output template may use besides the parameters.
pub(crate) const BUILT_IN_PLACEHOLDERS: [&str; 3] = ["name", "scheduled_date", "run_id"];

pub(crate) fn placeholder_names(params: &[ParamSpec]) -> Vec<String> {
    BUILT_IN_PLACEHOLDERS
        .iter()
        .map(|name| format!("{{{name}}}"))
        .chain(params.iter().map(|param| format!("{{{}}}", param.name)))
        .collect()
}
impl ReportDefinition {
    /// Render the output template. Placeholders: `{name}`, any param (`{month}` →
    /// `2024-01-01`, lists joined with `-`), `{scheduled_date}` (the caller passes the scheduled
    /// time's date in the schedule's zone, or the run's date) and `{run_id}`; `{{` and `}}` are
    /// literal braces. Values are made safe as path pieces: `/`, `\` and control characters
    /// become `_`, and so does `..`, so a value can never climb out of the template's folder.
    pub(crate) fn render_output(
        &self,
        values: &[(String, ParamValue)],
        scheduled_date: NaiveDate,
        run_id: &str,
    ) -> Result<String, ReportError> {
        let template_error = |message: String| ReportError::Template {
            report: self.name.clone(),
            message,
        };
        let template = self
            .output
            .as_deref()
            .ok_or_else(|| template_error("the report header has no `output`".to_string()))?;
        let value_of = |placeholder: &str| -> Result<String, ReportError> {
            match placeholder {
                "name" => Ok(self.name.clone()),
                "scheduled_date" => Ok(scheduled_date.format("%Y-%m-%d").to_string()),
                "run_id" => Ok(run_id.to_string()),
                param => match values.iter().find(|(name, _)| name == param) {
                    Some((_, ParamValue::List(items))) => Ok(items.join("-")),
                    Some((_, value)) => Ok(value.to_string()),
                    None if self.params.iter().any(|spec| spec.name == param) => Err(
                        template_error(format!("param `{param}` has no value to put in the path")),
                    ),
                    None => Err(template_error(format!(
                        "unknown placeholder `{{{param}}}` (known: {})",
                        placeholder_names(&self.params).join(", ")
                    ))),
                },
            }
        };
        let mut rendered = String::with_capacity(template.len() + 32);
        for piece in split_template(template).map_err(template_error)? {
            match piece {
                TemplatePiece::Text(text) => rendered.push_str(&text),
                TemplatePiece::Placeholder(name) => {
                    rendered.push_str(&sanitise_path_piece(&value_of(&name)?))
                }
            }
        }
        Ok(rendered)
    }
}

enum TemplatePiece {
    Text(String),
    Placeholder(String),
}

/// Split a template into literal text and `{placeholder}`s.
fn split_template(template: &str) -> Result<Vec<TemplatePiece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = template.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(ch) => name.push(ch),
                        None => return Err(format!("`{{{name}` is never closed with `}}`")),
                    }
                }
                if name.is_empty() {
                    return Err("`{}` names no placeholder".to_string());
                }
                pieces.push(TemplatePiece::Text(std::mem::take(&mut text)));
                pieces.push(TemplatePiece::Placeholder(name));
            }
            '}' => return Err("a `}` without `{` (write `}}` for a literal brace)".to_string()),
            ch => text.push(ch),
        }
    }
    pieces.push(TemplatePiece::Text(text));
    Ok(pieces)
}

pub(crate) fn template_placeholders(template: &str) -> Result<Vec<String>, String> {
    Ok(split_template(template)?
        .into_iter()
        .filter_map(|piece| match piece {
            TemplatePiece::Placeholder(name) => Some(name),
            TemplatePiece::Text(_) => None,
        })
        .collect())
}

/// Make a value safe to put inside one path component.
fn sanitise_path_piece(value: &str) -> String {
    let mut piece: String = value
        .chars()
        .map(|ch| {
            if ch == '/' || ch == '\\' || ch.is_control() {
                '_'
            } else {
                ch
            }
        })
        .collect();
    while piece.contains("..") {
        piece = piece.replace("..", "_");
    }
    if piece.is_empty() {
        piece.push('_');
    }
    piece
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::parse_report;
    use crate::report::test_fixtures::{date, full, given};
    use std::path::Path;

    #[test]
    fn render_output_fills_every_placeholder_and_sanitises() {
        let text = "/* report\nname = \"r\"\noutput = \"out/{name}/{month}/{states}/{label}-{scheduled_date}-{run_id}-{{x}}.csv\"\n[params.month]\ntype = \"date\"\n[params.states]\ntype = \"list\"\n[params.label]\ntype = \"string\"\n*/\nSELECT 1";
        let report = parse_report(Path::new("a.sql"), text).unwrap().unwrap();
        let values = report
            .bind(&given(&[
                ("month", "2024-01-01"),
                ("states", "CA,NY"),
                ("label", "../../etc/passwd"),
            ]))
            .unwrap();
        let rendered = report
            .render_output(&values, date(2024, 2, 1), "run/7")
            .unwrap();
        // `../../etc/passwd`: each `/` becomes `_` (`.._.._etc_passwd`), then each `..` too
        // (`_` `_` `_` `_etc_passwd`).
        assert_eq!(
            rendered,
            "out/r/2024-01-01/CA-NY/____etc_passwd-2024-02-01-run_7-{x}.csv"
        );
        assert!(!rendered.contains(".."));
        assert_eq!(rendered.matches('/').count(), 4);

        // A value made only of dots cannot climb either, nor can an empty one vanish.
        let values = report
            .bind(&given(&[
                ("month", "2024-01-01"),
                ("states", ""),
                ("label", ".."),
            ]))
            .unwrap();
        let rendered = report
            .render_output(&values, date(2024, 2, 1), "1")
            .unwrap();
        assert_eq!(rendered, "out/r/2024-01-01/_/_-2024-02-01-1-{x}.csv");
    }

    #[test]
    fn render_output_errors() {
        let report = full();
        let values = report.bind(&given(&[("top", "1")])).unwrap();
        // A placeholder not in the values: the template is fixed at parse time, so build one.
        let mut broken = report.clone();
        broken.output = Some("{colour}.csv".into());
        match broken.render_output(&values, date(2024, 1, 1), "1") {
            Err(ReportError::Template { report, message }) => {
                assert_eq!(report, "cost_by_diagnosis_monthly");
                assert!(message.contains("{colour}"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        broken.output = Some("{month.csv".into());
        assert!(broken
            .render_output(&values, date(2024, 1, 1), "1")
            .is_err());
        broken.output = None;
        assert!(broken
            .render_output(&values, date(2024, 1, 1), "1")
            .is_err());
        assert_eq!(
            report
                .render_output(&values, date(2024, 1, 1), "1")
                .unwrap(),
            "reports/cost_by_diagnosis_monthly/2024-01-01.csv"
        );
    }
}
