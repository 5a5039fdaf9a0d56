//! Progress bars on stderr, only when stderr is a terminal and the user did not ask for quiet.
//!
//! A query's bar is driven by a ticker that reads shared counters (bytes fetched from the
//! stores, rows scanned and spilled bytes from the plan's metrics) a few times a second, so the
//! query's hot path does no progress work at all.

use crate::stats::PlanTotals;
use crate::storage::StoreCounters;
use crate::units::human_bytes;
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_plan::ExecutionPlan;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(200);

/// Whether progress should be drawn: stderr is a terminal and not `--quiet`.
pub(crate) fn wanted(quiet: bool) -> bool {
    !quiet && std::io::stderr().is_terminal()
}

/// A bar for a long piece of work counted in `unit`s ("rows", "bytes").
pub(crate) fn bar(enabled: bool, total: u64, unit: &str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let template = format!(
        "{{spinner}} [{{elapsed_precise}}] {{bar:30}} {{human_pos}}/{{human_len}} {unit} ({{per_sec}}, eta {{eta}})"
    );
    let style =
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar());
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(style);
    bar.enable_steady_tick(TICK);
    bar
}

/// The progress of one running query; drop or [`QueryProgress::finish`] clears it.
pub(crate) struct QueryProgress {
    bar: ProgressBar,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl QueryProgress {
    /// Start drawing (or do nothing when `enabled` is false).
    pub(crate) fn start(
        enabled: bool,
        total_bytes: u64,
        counters: Arc<StoreCounters>,
        plan: Arc<dyn ExecutionPlan>,
    ) -> QueryProgress {
        if !enabled {
            return QueryProgress {
                bar: ProgressBar::hidden(),
                ticker: None,
            };
        }
        let style = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} scanned {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        let bar = ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
        bar.set_style(style);
        let start_bytes = counters.bytes();
        let started = Instant::now();
        let ticking = bar.clone();
        let ticker = tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            loop {
                interval.tick().await;
                let fetched = counters.bytes().saturating_sub(start_bytes);
                ticking.set_position(fetched.min(total_bytes));
                let rows = scanned_rows(&plan);
                let per_second = rows as f64 / started.elapsed().as_secs_f64().max(0.001);
                let spilled = PlanTotals::of(&plan).spilled_bytes as u64;
                ticking.set_message(format!(
                    "{:.2}M rows/s, spilled {}",
                    per_second / 1e6,
                    human_bytes(spilled)
                ));
            }
        });
        QueryProgress {
            bar,
            ticker: Some(ticker),
        }
    }

    /// Stop and erase the bar.
    pub(crate) fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
        self.bar.finish_and_clear();
    }
}

impl Drop for QueryProgress {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Rows read by the plan's scans so far.
fn scanned_rows(plan: &Arc<dyn ExecutionPlan>) -> usize {
    let own = if plan.is::<DataSourceExec>() {
        plan.metrics().and_then(|m| m.output_rows()).unwrap_or(0)
    } else {
        0
    };
    own + plan.children().into_iter().map(scanned_rows).sum::<usize>()
}
