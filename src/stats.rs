//! What a query did: rows, files and bytes scanned, spilling, memory, time.
//!
//! Figures are read from the executed plan's own metrics (walked once at the end, or on each
//! progress tick) and from the process (peak RSS). Must not slow the hot path: nothing here runs
//! per batch.

use crate::units::human_bytes;
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_plan::ExecutionPlan;
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Totals over every operator of a plan.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct PlanTotals {
    pub(crate) spill_count: usize,
    pub(crate) spilled_bytes: usize,
    pub(crate) spilled_rows: usize,
}

impl PlanTotals {
    /// Sum the spill metrics of every operator in the plan.
    pub(crate) fn of(plan: &Arc<dyn ExecutionPlan>) -> PlanTotals {
        let mut totals = PlanTotals::default();
        visit(plan, &mut |node| {
            if let Some(metrics) = node.metrics() {
                totals.spill_count += metrics.spill_count().unwrap_or(0);
                totals.spilled_bytes += metrics.spilled_bytes().unwrap_or(0);
                totals.spilled_rows += metrics.spilled_rows().unwrap_or(0);
            }
        });
        totals
    }
}

fn visit(plan: &Arc<dyn ExecutionPlan>, f: &mut dyn FnMut(&Arc<dyn ExecutionPlan>)) {
    f(plan);
    for child in plan.children() {
        visit(child, f);
    }
}

/// The files a plan scans and their total size in bytes (byte ranges counted once per file).
pub(crate) fn scanned_files(plan: &Arc<dyn ExecutionPlan>) -> (usize, u64) {
    let mut seen = HashSet::new();
    let mut bytes = 0;
    visit(plan, &mut |node| {
        let Some(source) = node.downcast_ref::<DataSourceExec>() else {
            return;
        };
        let Some(config) = source.data_source().downcast_ref::<FileScanConfig>() else {
            return;
        };
        for file in config.file_groups.iter().flat_map(|group| group.iter()) {
            if seen.insert(file.object_meta.location.clone()) {
                bytes += file.object_meta.size;
            }
        }
    });
    (seen.len(), bytes)
}

/// Peak resident set size of this process so far, in bytes (Linux; 0 elsewhere).
pub(crate) fn peak_rss() -> u64 {
    proc_status_kib("VmHWM:") * 1024
}

fn proc_status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|line| line.starts_with(key))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Everything `--stats` prints after a statement.
#[derive(Debug, Clone)]
pub(crate) struct QueryStats {
    pub(crate) rows: u64,
    pub(crate) files: usize,
    pub(crate) bytes_in_files: u64,
    pub(crate) bytes_fetched: u64,
    pub(crate) requests: u64,
    pub(crate) elapsed: Duration,
    pub(crate) spill: PlanTotals,
    pub(crate) peak_pool: usize,
    pub(crate) pool_limit: u64,
    pub(crate) peak_rss: u64,
    /// For a statement that ran on a cluster: what its executors reported (spills and memory
    /// there; `spill` and `peak_pool` above are this process's).
    pub(crate) cluster: Option<crate::cluster::JobTotals>,
    /// Groups an aggregate-only role's small-cell rule removed (`None`: no such role).
    pub(crate) suppressed_groups: Option<u64>,
    /// For a report run: whether stored per-file states were merged, and their size.
    pub(crate) incremental: Option<crate::incremental::Outcome>,
}

impl fmt::Display for QueryStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "rows out:      {}", self.rows)?;
        match &self.incremental {
            // The executed plan reads the stored states; the files were read before it ran.
            Some(states) if states.state_bytes > 0 => writeln!(
                f,
                "files scanned: {} of {} ({}) and {} states ({}); {} fetched in {} requests",
                states.files_read,
                states.files_read + states.files_reused,
                human_bytes(states.bytes_read),
                self.files,
                human_bytes(states.state_bytes),
                human_bytes(self.bytes_fetched),
                self.requests
            )?,
            _ => writeln!(
                f,
                "files scanned: {} ({}; {} fetched in {} requests)",
                self.files,
                human_bytes(self.bytes_in_files),
                human_bytes(self.bytes_fetched),
                self.requests
            )?,
        }
        writeln!(f, "elapsed:       {:.3}s", self.elapsed.as_secs_f64())?;
        writeln!(
            f,
            "spilled:       {} spills, {}, {} rows",
            self.spill.spill_count,
            human_bytes(self.spill.spilled_bytes as u64),
            self.spill.spilled_rows
        )?;
        writeln!(
            f,
            "peak memory:   {} of {} (pool)",
            human_bytes(self.peak_pool as u64),
            human_bytes(self.pool_limit)
        )?;
        write!(f, "peak RSS:      {}", human_bytes(self.peak_rss))?;
        if let Some(groups) = self.suppressed_groups {
            write!(
                f,
                "\nsuppressed:    {groups} groups below the role's min_cell_size"
            )?;
        }
        if let Some(outcome) = &self.incremental {
            write!(f, "\nstates:        {outcome}")?;
        }
        if let Some(cluster) = &self.cluster {
            write!(
                f,
                "\non executors:  {} stages; spilled {} spills, {}, {} rows; peak memory {} (largest stage, summed over executors)",
                cluster.stages,
                cluster.spill.spill_count,
                human_bytes(cluster.spill.spilled_bytes as u64),
                cluster.spill.spilled_rows,
                human_bytes(cluster.peak_memory)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_is_read_from_the_kernel() {
        assert!(peak_rss() > 0);
    }
}
