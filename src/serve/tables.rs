//! The configured tables and the reports served over them.
//!
//! [`TableWatch`] knows which files are behind each table and notices when they change: before
//! each query that reads a table it lists the table's files through the engine's listing path
//! (the one registration uses), and when they changed it has the engine register the table
//! again, so the engine stays the one owner of registered tables (the bad-file locator reads
//! them); report views and table functions are then planned again. Must not register a table
//! on the session behind the engine's back, nor read table data.

use super::cache;
use super::guard;
use super::statement::sql_parser;
use crate::catalog::TableSpec;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::report::run::PlannedReport;
use crate::report::ReportDefinition;
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::ViewTable;
use datafusion::logical_expr::Expr;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

/// Knows which files are behind each table, notices when they change (re-listing before each
/// query that reads the table), and then registers the table again so the query reads the
/// new files; report views and table functions are planned again with it.
pub(crate) struct TableWatch {
    engine: Arc<Engine>,
    specs: HashMap<String, TableSpec>,
    reports: Vec<ReportDefinition>,
    /// Tables each report reads.
    report_tables: HashMap<String, BTreeSet<String>>,
    /// Reports with parameters, planned against the current tables (placeholders unbound).
    plans: Arc<RwLock<HashMap<String, PlannedReport>>>,
    fingerprints: tokio::sync::Mutex<HashMap<String, u64>>,
}

impl TableWatch {
    pub(crate) async fn start(
        engine: Arc<Engine>,
        tables: Vec<TableSpec>,
        reports: Vec<ReportDefinition>,
    ) -> Result<TableWatch> {
        let specs: HashMap<String, TableSpec> = tables
            .into_iter()
            .map(|spec| (spec.name.to_lowercase(), spec))
            .collect();
        let mut report_tables = HashMap::new();
        for report in &reports {
            if specs.contains_key(&report.name.to_lowercase()) {
                return Err(Error::Config(format!(
                    "report `{}` has the name of a table; rename one of them to serve both",
                    report.name
                )));
            }
            let statement = sql_parser()
                .parse(&report.sql)
                .map_err(|e| Error::Query(format!("report `{}`: {e}", report.name)))?
                .into_iter()
                .next()
                .ok_or_else(|| Error::Query(format!("report `{}` has no SQL", report.name)))?;
            let reads = guard::cacheable_relations(&statement).unwrap_or_default();
            report_tables.insert(report.name.to_lowercase(), reads);
        }
        let watch = TableWatch {
            engine,
            specs,
            reports,
            report_tables,
            plans: Arc::new(RwLock::new(HashMap::new())),
            fingerprints: tokio::sync::Mutex::new(HashMap::new()),
        };
        {
            let mut fingerprints = watch.fingerprints.lock().await;
            for (name, spec) in &watch.specs {
                fingerprints.insert(name.clone(), watch.list(spec).await?);
            }
        }
        watch.plan_reports().await?;
        Ok(watch)
    }

    async fn list(&self, spec: &TableSpec) -> Result<u64> {
        let resolved = self.engine.list_table(spec).await?;
        Ok(cache::fingerprint_files(&resolved.files))
    }

    /// Plan every report against the current tables and (re)register it: a view when it takes
    /// no parameters, a table function taking them in declaration order otherwise.
    async fn plan_reports(&self) -> Result<()> {
        let ctx = self.engine.context();
        for report in &self.reports {
            // A report over tables this server does not have (the folder is shared with
            // other configs) is left out, with a warning, rather than stopping the server.
            let planned = PlannedReport::plan_on_shared_session(&self.engine, report).await;
            let planned = match planned {
                Ok(plan) => plan,
                Err(error) => {
                    tracing::warn!("report `{}` is not served: {error}", report.name);
                    let _ = ctx.deregister_table(report.name.as_str());
                    continue;
                }
            };
            if report.params.is_empty() {
                let view = ViewTable::new(
                    planned.plan_without_values().clone(),
                    Some(report.sql.clone()),
                );
                let _ = ctx.deregister_table(report.name.as_str());
                ctx.register_table(report.name.as_str(), Arc::new(view))
                    .map_err(|e| Error::from(e).context(format!("report `{}`", report.name)))?;
            } else {
                if let Ok(mut plans) = self.plans.write() {
                    plans.insert(report.name.clone(), planned);
                }
                ctx.register_udtf(
                    &report.name,
                    Arc::new(ReportFunction {
                        report: report.clone(),
                        plans: self.plans.clone(),
                    }),
                );
            }
        }
        Ok(())
    }

    /// The tables a relation name stands for: itself, or what a report reads. `None` for
    /// anything else (catalog tables, unknown names): such results are not cached.
    pub(crate) fn tables_of(&self, name: &str) -> Option<Vec<String>> {
        if self.specs.contains_key(name) {
            return Some(vec![name.to_string()]);
        }
        let reads = self.report_tables.get(name)?;
        let mut tables = Vec::new();
        for table in reads {
            tables.extend(self.tables_of(table)?);
        }
        Some(tables)
    }

    /// Before a statement runs: the combined fingerprint of the files behind `relations`,
    /// re-registering any table whose files changed since it was last seen (so the statement
    /// reads the current files). `Ok(None)` when the relations are not all tables.
    pub(crate) async fn refresh(&self, relations: &BTreeSet<String>) -> Result<Option<u64>> {
        let mut tables = BTreeSet::new();
        for relation in relations {
            match self.tables_of(relation) {
                Some(found) => tables.extend(found),
                None => return Ok(None),
            }
        }
        if tables.is_empty() {
            return Ok(None);
        }
        let mut combined = Vec::with_capacity(tables.len());
        let mut changed = false;
        for name in &tables {
            let Some(spec) = self.specs.get(name) else {
                return Ok(None);
            };
            let now = self.list(spec).await?;
            let mut known = self.fingerprints.lock().await;
            if known.get(name) != Some(&now) {
                tracing::info!(table = %spec.name, "files changed: registering the table again");
                self.engine.register_table_again(spec).await?;
                known.insert(name.clone(), now);
                changed = true;
            }
            combined.push((name.clone(), now));
        }
        if changed {
            self.plan_reports().await?;
        }
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        combined.hash(&mut hasher);
        Ok(Some(hasher.finish()))
    }
}

/// A parameterised report as a table function: `SELECT * FROM top_prescribers('2024-01-01', 10)`.
#[derive(Debug)]
struct ReportFunction {
    report: ReportDefinition,
    plans: Arc<RwLock<HashMap<String, PlannedReport>>>,
}

impl TableFunctionImpl for ReportFunction {
    fn call_with_args(
        &self,
        args: TableFunctionArgs,
    ) -> datafusion::error::Result<Arc<dyn TableProvider>> {
        let args = args.exprs();
        let plan_error = |message: String| {
            datafusion::error::DataFusionError::Plan(format!(
                "report `{}`: {message}",
                self.report.name
            ))
        };
        if args.len() > self.report.params.len() {
            return Err(plan_error(format!(
                "takes at most {} arguments ({}), got {}",
                self.report.params.len(),
                self.report
                    .params
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                args.len()
            )));
        }
        let mut given = Vec::with_capacity(args.len());
        for (param, arg) in self.report.params.iter().zip(args) {
            let text = match arg {
                Expr::Literal(value, _) if !value.is_null() => match value {
                    ScalarValue::Utf8(Some(s))
                    | ScalarValue::LargeUtf8(Some(s))
                    | ScalarValue::Utf8View(Some(s)) => s.clone(),
                    other => other.to_string(),
                },
                _ => {
                    return Err(plan_error(format!(
                        "argument for `{}` must be a literal value",
                        param.name
                    )))
                }
            };
            given.push((param.name.clone(), text));
        }
        let values = self
            .report
            .bind(&given)
            .map_err(|e| plan_error(e.to_string()))?;
        let bound = self
            .plans
            .read()
            .ok()
            .and_then(|plans| plans.get(&self.report.name).map(|p| p.bind(&values)))
            .ok_or_else(|| plan_error("not planned".into()))?
            .map_err(|e| plan_error(e.to_string()))?;
        Ok(Arc::new(ViewTable::new(bound, None)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineOptions;
    use datafusion::arrow::array::{Array, Int64Array};

    /// An engine over one table `t`: the CSV files in a temporary folder.
    async fn folder_table(first_file: &str) -> (tempfile::TempDir, TableSpec, Arc<Engine>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.csv"), first_file).unwrap();
        let mut spec = TableSpec::at("t", &format!("{}/", dir.path().display()));
        // A one-row sample, so a bad value further down a file is found only by reading it.
        spec.infer_rows = 1;
        let options = EngineOptions {
            memory_limit: 256 << 20,
            workers: 1,
            ..EngineOptions::default()
        };
        let engine = Engine::open(options, std::slice::from_ref(&spec))
            .await
            .unwrap();
        (dir, spec, Arc::new(engine))
    }

    async fn count_rows(engine: &Engine) -> i64 {
        let batches = engine
            .context()
            .sql("SELECT count(*) FROM t")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let counts = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(counts.len(), 1);
        counts.value(0)
    }

    #[tokio::test]
    async fn unchanged_files_keep_their_fingerprint_and_a_new_file_changes_it() {
        let (dir, spec, engine) = folder_table("id,n\n1,10\n2,20\n").await;
        let watch = TableWatch::start(engine.clone(), vec![spec], Vec::new())
            .await
            .unwrap();
        let reads = BTreeSet::from(["t".to_string()]);
        let before = watch.refresh(&reads).await.unwrap();
        assert!(before.is_some());
        assert_eq!(watch.refresh(&reads).await.unwrap(), before);

        std::fs::write(dir.path().join("b.csv"), "id,n\n3,30\n").unwrap();
        let after = watch.refresh(&reads).await.unwrap();
        assert!(after.is_some());
        assert_ne!(after, before);
        assert_eq!(count_rows(&engine).await, 3);
    }

    #[tokio::test]
    async fn relations_that_are_not_all_tables_have_no_fingerprint() {
        let (_dir, spec, engine) = folder_table("id,n\n1,10\n").await;
        let watch = TableWatch::start(engine, vec![spec], Vec::new())
            .await
            .unwrap();
        let reads = BTreeSet::from(["t".to_string(), "pg_class".to_string()]);
        assert_eq!(watch.refresh(&reads).await.unwrap(), None);
        assert_eq!(watch.refresh(&BTreeSet::new()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_changed_table_is_registered_again_through_the_engine() {
        let (dir, spec, engine) = folder_table("id,n\n1,10\n").await;
        let watch = TableWatch::start(engine.clone(), vec![spec], Vec::new())
            .await
            .unwrap();
        // A new file whose second record does not fit the inferred type: only the engine's
        // own record of the table's files lets its bad-file locator name it.
        let bad = dir.path().join("b.csv");
        std::fs::write(&bad, "id,n\n2,20\n3,thirty\n").unwrap();
        watch
            .refresh(&BTreeSet::from(["t".to_string()]))
            .await
            .unwrap();
        let error = engine
            .find_bad_file()
            .await
            .expect("the new file fails to read");
        assert!(
            error.to_string().contains("b.csv"),
            "the error names the new file: {error}"
        );
    }
}
