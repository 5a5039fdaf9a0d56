//! The scheduler's alerts, per firing: what its latest attempt produced, its `late_after`
//! timer, and sending `on_success` / `on_failure` when it settles, each delivery recorded in the
//! history.
//!
//! Must not: let an alert change or delay a run's outcome beyond its own delivery (the runner
//! has already recorded the run when this is told), or send anything itself (`alert` does).

use super::run::RunSummary;
use super::History;
use crate::alert::{Alert, AlertRules, Alerts, Event};
use crate::report::history::AlertRecord;
use crate::report::ReportDefinition;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

type FiringKey = (String, DateTime<Utc>);

/// What is known of a firing that has not settled.
#[derive(Default)]
struct Firing {
    attempt: u32,
    run_id: Option<i64>,
    summary: Option<RunSummary>,
    /// The `late_after` timer, once started (at most once per firing).
    late: Option<tokio::task::AbortHandle>,
}

/// Alerts of the scheduler's firings.
pub(crate) struct FiringAlerts {
    alerts: Arc<Alerts>,
    /// Per report: its rules, resolved over `[reports]` and checked when the daemon started.
    rules: HashMap<String, AlertRules>,
    history: Arc<History>,
    host: String,
    firings: Arc<Mutex<HashMap<FiringKey, Firing>>>,
    /// Deliveries under way: they run beside the scheduler, so a slow or retrying target never
    /// holds up the report's next firing, and [`FiringAlerts::drain`] waits for them at shutdown.
    deliveries: Mutex<tokio::task::JoinSet<()>>,
}

impl FiringAlerts {
    pub(crate) fn new(
        alerts: Arc<Alerts>,
        rules: HashMap<String, AlertRules>,
        history: Arc<History>,
    ) -> FiringAlerts {
        FiringAlerts {
            alerts,
            rules,
            history,
            host: crate::alert::host_name(),
            firings: Arc::new(Mutex::new(HashMap::new())),
            deliveries: Mutex::new(tokio::task::JoinSet::new()),
        }
    }

    /// Wait up to `grace` for deliveries under way (at shutdown); what is still retrying then
    /// is dropped, and the log says how many.
    pub(crate) async fn drain(&self, grace: std::time::Duration) {
        let mut deliveries = std::mem::take(&mut *lock(&self.deliveries));
        let waiting = async { while deliveries.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, waiting).await.is_err() {
            tracing::warn!(
                "{} alert deliveries still retrying at shutdown were dropped",
                deliveries.len()
            );
        }
    }

    fn firings(&self) -> MutexGuard<'_, HashMap<FiringKey, Firing>> {
        lock(&self.firings)
    }

    /// A firing's attempt starts (`attempt` and its history row), or the firing is skipped
    /// (`None`): start its `late_after` timer the first time.
    pub(crate) fn seen(
        &self,
        report: &ReportDefinition,
        scheduled_for: DateTime<Utc>,
        attempt: Option<(u32, i64)>,
    ) {
        let Some(rules) = self.rules.get(&report.name) else {
            return;
        };
        let key = (report.name.clone(), scheduled_for);
        let mut firings = self.firings();
        let firing = firings.entry(key.clone()).or_default();
        if let Some((attempt, run_id)) = attempt {
            firing.attempt = attempt;
            firing.run_id = Some(run_id);
        }
        let Some(late_after) = rules.late_after else {
            return;
        };
        if firing.late.is_some() {
            return;
        }
        let deadline = scheduled_for + chrono::TimeDelta::from_std(late_after).unwrap_or_default();
        let wait = (deadline - Utc::now()).to_std().unwrap_or_default();
        let targets = rules.on_failure.clone().unwrap_or_default();
        let (alerts, history, host, table) = (
            self.alerts.clone(),
            self.history.clone(),
            self.host.clone(),
            self.firings.clone(),
        );
        let task = tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            // Late: neither succeeded nor finally failed by the deadline. A firing with an
            // attempt stays in the table for `settled`; a skipped one never settles.
            let (attempt, run_id) = {
                let mut firings = lock(&table);
                let (attempt, run_id) = firings
                    .get(&key)
                    .map_or((0, None), |firing| (firing.attempt, firing.run_id));
                if attempt == 0 {
                    firings.remove(&key);
                }
                (attempt, run_id)
            };
            let alert = Alert {
                report: key.0.clone(),
                status: Event::Late,
                scheduled_for: Some(key.1),
                attempt,
                run_id,
                error: Some(format!(
                    "not succeeded {} after its scheduled time",
                    crate::units::format_duration(late_after)
                )),
                output: None,
                rows: None,
                bytes: None,
                host,
            };
            send_all(&alerts, &history, &targets, &alert).await;
        });
        firing.late = Some(task.abort_handle());
    }

    /// An attempt of a firing ended (whatever its outcome): keep what it produced.
    pub(crate) fn attempted(
        &self,
        report: &str,
        scheduled_for: DateTime<Utc>,
        attempt: u32,
        run_id: Option<i64>,
        summary: Option<RunSummary>,
    ) {
        if !self.rules.contains_key(report) {
            return;
        }
        let mut firings = self.firings();
        let firing = firings
            .entry((report.to_string(), scheduled_for))
            .or_default();
        firing.attempt = attempt;
        firing.run_id = run_id.or(firing.run_id);
        firing.summary = summary;
    }

    /// The firing settled: stop its late timer and alert `on_success` or `on_failure` (in the
    /// background: see `deliveries`).
    pub(crate) fn settled(
        &self,
        report: &str,
        scheduled_for: DateTime<Utc>,
        attempt: u32,
        error: Option<&str>,
    ) {
        let Some(rules) = self.rules.get(report) else {
            return;
        };
        let firing = self
            .firings()
            .remove(&(report.to_string(), scheduled_for))
            .unwrap_or_default();
        if let Some(late) = &firing.late {
            late.abort();
        }
        let (status, targets) = match error {
            None => (Event::Succeeded, &rules.on_success),
            Some(_) => (Event::Failed, &rules.on_failure),
        };
        let Some(targets) = targets.as_ref().filter(|t| !t.is_empty()) else {
            return;
        };
        let summary = firing.summary.filter(|_| error.is_none());
        let alert = Alert {
            report: report.to_string(),
            status,
            scheduled_for: Some(scheduled_for),
            attempt,
            run_id: firing.run_id,
            error: error.map(str::to_string),
            output: summary.as_ref().map(|s| s.output.clone()),
            rows: summary.as_ref().map(|s| s.rows),
            bytes: summary.as_ref().map(|s| s.bytes),
            host: self.host.clone(),
        };
        let (alerts, history, targets) =
            (self.alerts.clone(), self.history.clone(), targets.clone());
        lock(&self.deliveries)
            .spawn(async move { send_all(&alerts, &history, &targets, &alert).await });
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The map stays consistent whatever panicked while holding it.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Deliver to every target at once and record each delivery.
async fn send_all(alerts: &Alerts, history: &History, targets: &[String], alert: &Alert) {
    let deliveries =
        futures::future::join_all(targets.iter().map(|name| alerts.deliver(name, alert))).await;
    for (name, delivery) in targets.iter().zip(deliveries) {
        match &delivery.error {
            None => tracing::info!(
                "alert `{name}`: report {} {} delivered",
                alert.report,
                alert.status.as_str()
            ),
            Some(error) => tracing::error!(
                "alert `{name}`: report {} {} not delivered after {} tries: {error}",
                alert.report,
                alert.status.as_str(),
                delivery.tries
            ),
        }
        let record = AlertRecord {
            report: alert.report.clone(),
            scheduled_for: alert.scheduled_for,
            run_id: alert.run_id,
            event: alert.status.as_str().to_string(),
            target: name.clone(),
            sent: Utc::now(),
            tries: delivery.tries,
            delivered: delivery.error.is_none(),
            error: delivery.error,
        };
        if let Err(error) = history.record_alert(&record) {
            tracing::error!("alert `{name}`: cannot record it in the history: {error}");
        }
    }
}
