//! When scheduled reports run: cron expressions in time zones, and the daemon loop with its
//! overlap, missed-run and retry policies.
//!
//! The model: a [`Scheduler`] holds [`Job`]s (a name, a [`CronSchedule`] and a [`RetryPolicy`]),
//! a [`Clock`] and a [`Runner`]. It sleeps on the clock until the next firing, then
//! hands `(job, scheduled time, attempt)` to the runner, which does the real work (binding the
//! report's params, running it through the engine, recording history). Time only ever comes from
//! the clock, so tests drive days of schedule with a [`ManualClock`] in milliseconds.
//!
//! Policies:
//! - overlap: a firing whose job is still running (including its retries) is skipped, and the
//!   runner is told so ([`Runner::skipped`], reason `previous run still going`);
//! - missed runs: at start-up, a job whose last handled firing (from the history) is older than
//!   its latest due firing either runs that latest firing once or records it skipped
//!   ([`MissedRunPolicy`]); the same applies when the loop wakes to find more than one firing of
//!   a job due (a suspended machine). Older missed firings are never run one by one;
//! - retries: a failed attempt is tried again up to `retries` times, waiting `base · 2^(n−1)`
//!   (capped) after the n-th failure;
//! - timeouts are not the scheduler's: a report's timeout lives inside its recorded run
//!   (`report::run::ReportRun::execute`), which cancels the work, records `timeout` by run id and
//!   returns a failure like any other (so it is retried); the runner hears of an attempt dropped
//!   because shutdown outlasted its grace period in [`Runner::cancelled`].
//!
//! DST: expressions are evaluated on the wall clock of the job's zone by croner. A fixed-time
//! job (`30 2 * * *`) whose time falls in a spring-forward gap runs at the first instant after
//! the gap (03:00 local); one whose time is repeated by a fall-back runs once, at the earlier
//! instant. Either way a daily job runs once per local day.
//!
//! Must not: run SQL or touch the history itself (only through the [`Runner`]), or read the
//! system time except through [`SystemClock`].

use crate::units::format_duration;
use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use futures::future::{BoxFuture, FutureExt};
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
#[cfg(test)]
use std::sync::Mutex;
use std::time::Duration;
#[cfg(test)]
use tokio::sync::oneshot;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A cron expression or time zone that cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScheduleError {
    #[error("cron expression `{expression}`: {message}")]
    Cron { expression: String, message: String },
    #[error("time zone `{timezone}` is not an IANA zone name (like `America/New_York` or `UTC`)")]
    TimeZone { timezone: String },
}

// ---------------------------------------------------------------------------------------------
// Cron in a time zone
// ---------------------------------------------------------------------------------------------

/// A POSIX cron expression evaluated on the wall clock of an IANA time zone.
#[derive(Debug, Clone)]
pub(crate) struct CronSchedule {
    timezone: Tz,
    cron: Cron,
}

impl CronSchedule {
    /// Parse POSIX cron: five fields (minute hour day-of-month month day-of-week, Sunday = 0 or
    /// 7, Monday = 1; when both day fields are restricted either may match, as in Vixie cron),
    /// or six with a leading seconds field (`*/1 * * * * *`, handy in tests), or a nickname
    /// (`@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`). Errors name the expression or
    /// the zone.
    pub(crate) fn parse(cron: &str, timezone: &str) -> Result<CronSchedule, ScheduleError> {
        let timezone_parsed: Tz = timezone
            .trim()
            .parse()
            .map_err(|_| ScheduleError::TimeZone {
                timezone: timezone.to_string(),
            })?;
        let cron_error = |message: String| ScheduleError::Cron {
            expression: cron.to_string(),
            message,
        };
        let trimmed = cron.trim();
        if !trimmed.starts_with('@') {
            let fields = trimmed.split_whitespace().count();
            if !(5..=6).contains(&fields) {
                return Err(cron_error(format!(
                    "has {fields} fields; give 5 (minute hour day-of-month month day-of-week) \
                     or 6 with seconds first"
                )));
            }
        }
        // Seconds optional (a sixth, leading field); no year field, which POSIX cron lacks and
        // which would make a 6-field expression ambiguous.
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build();
        let parsed = parser
            .parse(trimmed)
            .map_err(|error| cron_error(error.to_string()))?;
        Ok(CronSchedule {
            timezone: timezone_parsed,
            cron: parsed,
        })
    }

    /// The zone the expression is evaluated in.
    #[cfg(test)]
    pub(crate) fn timezone(&self) -> Tz {
        self.timezone
    }

    /// The first fire time strictly after `after`; `None` if there is none (an expression such
    /// as `0 0 30 2 *` never fires).
    pub(crate) fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut from = after;
        // croner searches whole wall-clock seconds; loop in case a sub-second `after` ever
        // yields a time that is not strictly later.
        for _ in 0..3 {
            let local = from.with_timezone(&self.timezone);
            let next = self
                .cron
                .find_next_occurrence(&local, false)
                .ok()?
                .with_timezone(&Utc);
            if next > after {
                return Some(next);
            }
            from = next;
        }
        None
    }

    /// The next `count` fire times after `after`.
    pub(crate) fn upcoming(&self, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        let mut times = Vec::with_capacity(count);
        let mut from = after;
        while times.len() < count {
            match self.next_after(from) {
                Some(next) => {
                    times.push(next);
                    from = next;
                }
                None => break,
            }
        }
        times
    }

    /// The latest fire time in `(since, now]`, if any: what a catch-up after downtime runs.
    pub(crate) fn latest_missed(
        &self,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        if now <= since {
            return None;
        }
        let local = now.with_timezone(&self.timezone);
        let latest = self
            .cron
            .find_previous_occurrence(&local, true)
            .ok()?
            .with_timezone(&Utc);
        (latest > since && latest <= now).then_some(latest)
    }
}

// ---------------------------------------------------------------------------------------------
// Clocks
// ---------------------------------------------------------------------------------------------

/// Where the scheduler gets the time and waits for it.
pub(crate) trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
    /// A future that resolves once `now() >= when`.
    fn sleep_until(&self, when: DateTime<Utc>) -> BoxFuture<'static, ()>;
}

/// `t + duration`, saturating at the end of representable time.
fn add(time: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(duration)
        .ok()
        .and_then(|delta| time.checked_add_signed(delta))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The system's wall clock, sleeping on tokio's timer.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SystemClock;

impl SystemClock {
    /// Sleep at most this long before looking at the wall clock again, so that a clock step
    /// (NTP, a resumed laptop) delays a firing by a minute at most.
    const RECHECK: Duration = Duration::from_secs(60);
}

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, when: DateTime<Utc>) -> BoxFuture<'static, ()> {
        async move {
            loop {
                let remaining = match (when - Utc::now()).to_std() {
                    Ok(remaining) if !remaining.is_zero() => remaining,
                    // Negative or zero: the time has come.
                    _ => return,
                };
                tokio::time::sleep(remaining.min(SystemClock::RECHECK)).await;
            }
        }
        .boxed()
    }
}

/// A clock that moves only when told, for tests: [`ManualClock::advance`] and
/// [`ManualClock::set`] wake the sleepers whose time has come.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct ManualClock {
    state: Mutex<ManualState>,
}

#[cfg(test)]
#[derive(Debug)]
struct ManualState {
    now: DateTime<Utc>,
    sleepers: Vec<(DateTime<Utc>, oneshot::Sender<()>)>,
}

#[cfg(test)]
impl ManualClock {
    pub(crate) fn new(start: DateTime<Utc>) -> ManualClock {
        ManualClock {
            state: Mutex::new(ManualState {
                now: start,
                sleepers: Vec::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ManualState> {
        // The state stays consistent whatever panicked while holding it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Move the clock forward and wake every sleeper whose time has come.
    pub(crate) fn advance(&self, by: Duration) {
        let to = add(self.now(), by);
        self.set(to);
    }

    /// Move the clock to `to` (never backwards: an earlier time is ignored) and wake every
    /// sleeper whose time has come.
    pub(crate) fn set(&self, to: DateTime<Utc>) {
        let mut state = self.state();
        if to > state.now {
            state.now = to;
        }
        let now = state.now;
        let (due, waiting): (Vec<_>, Vec<_>) =
            state.sleepers.drain(..).partition(|(when, _)| *when <= now);
        state.sleepers = waiting;
        drop(state);
        for (_, sender) in due {
            // A sleeper that was dropped meanwhile is simply gone.
            let _ = sender.send(());
        }
    }

    /// The earliest time a live sleeper waits for.
    pub(crate) fn next_wake(&self) -> Option<DateTime<Utc>> {
        self.state()
            .sleepers
            .iter()
            .filter(|(_, sender)| !sender.is_closed())
            .map(|(when, _)| *when)
            .min()
    }

    /// How many live sleepers there are.
    pub(crate) fn sleepers(&self) -> usize {
        self.state()
            .sleepers
            .iter()
            .filter(|(_, sender)| !sender.is_closed())
            .count()
    }
}

#[cfg(test)]
impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        self.state().now
    }

    fn sleep_until(&self, when: DateTime<Utc>) -> BoxFuture<'static, ()> {
        let mut state = self.state();
        if when <= state.now {
            return futures::future::ready(()).boxed();
        }
        state.sleepers.retain(|(_, sender)| !sender.is_closed());
        let (sender, receiver) = oneshot::channel();
        state.sleepers.push((when, sender));
        async move {
            // An error means the clock itself is gone: nothing will ever wake us, so return.
            let _ = receiver.await;
        }
        .boxed()
    }
}

// ---------------------------------------------------------------------------------------------
// Jobs and policies
// ---------------------------------------------------------------------------------------------

/// What to do with firings that passed while the scheduler was not running (or asleep).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MissedRunPolicy {
    /// Run the latest missed firing once, now.
    RunLatest,
    /// Record the latest missed firing as skipped and wait for the next one.
    Skip,
}

/// How failed attempts are tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    /// Extra attempts after the first one fails.
    pub(crate) retries: u32,
    /// The wait after the first failure; doubled after each further failure.
    pub(crate) base_delay: Duration,
    /// The longest wait.
    pub(crate) max_delay: Duration,
}

impl RetryPolicy {
    /// The wait after the `failed_attempt`-th failure (1-based): `base · 2^(n−1)`, capped.
    pub(crate) fn delay_after(&self, failed_attempt: u32) -> Duration {
        let doublings = failed_attempt.saturating_sub(1);
        let factor = 2u32.checked_pow(doublings).unwrap_or(u32::MAX);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }
}

impl Default for RetryPolicy {
    /// No retries; when retries are set, 30 s doubling up to 10 min.
    fn default() -> Self {
        RetryPolicy {
            retries: 0,
            base_delay: Duration::from_secs(30),
            max_delay: Duration::from_secs(600),
        }
    }
}

/// One scheduled job.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    /// Unique among the scheduler's jobs (the report name).
    pub(crate) name: String,
    pub(crate) schedule: CronSchedule,
    pub(crate) retry: RetryPolicy,
}

/// What a runner reports back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RunOutcome {
    Succeeded,
    Failed(String),
}

/// Why a firing is skipped while the job's previous run is still going.
pub(crate) const OVERLAPPING: &str = "previous run still going";

/// Does the work of a firing; the scheduler only decides when.
#[async_trait::async_trait]
pub(crate) trait Runner: Send + Sync + 'static {
    /// Run one attempt (`attempt` is 1 for the first try, 2 for the first retry, ...). The
    /// future may be dropped part-way (shutdown): [`Runner::cancelled`] follows then.
    async fn run(&self, job: &str, scheduled_for: DateTime<Utc>, attempt: u32) -> RunOutcome;

    /// A firing that was not run, and why ([`OVERLAPPING`], or the missed-run policy's reason).
    async fn skipped(&self, job: &str, scheduled_for: DateTime<Utc>, reason: &str);

    /// An attempt whose future was dropped, after it was dropped: `reason` says the scheduler
    /// shut down. A runner that opened a history row for the attempt
    /// closes it here. The default does nothing (a row left `running` becomes `incomplete`
    /// through `History::recover` once this process has ended).
    async fn cancelled(&self, job: &str, scheduled_for: DateTime<Utc>, attempt: u32, reason: &str) {
        let _ = (job, scheduled_for, attempt, reason);
    }

    /// A firing's final outcome: its success, or the failure of its last attempt (no retries
    /// left). Not called for a firing cancelled by shutdown. The default does nothing.
    async fn settled(
        &self,
        job: &str,
        scheduled_for: DateTime<Utc>,
        attempt: u32,
        outcome: &RunOutcome,
    ) {
        let _ = (job, scheduled_for, attempt, outcome);
    }
}

// ---------------------------------------------------------------------------------------------
// The loop
// ---------------------------------------------------------------------------------------------

/// Where the scheduler is in its life; run tasks watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// Shutdown asked: no new firings and no new retries; attempts under way may finish.
    Stopping,
    /// The grace period is over: attempts under way are dropped.
    Aborting,
}

/// Fires jobs at their times through a runner.
pub(crate) struct Scheduler {
    jobs: Vec<Arc<Job>>,
    clock: Arc<dyn Clock>,
    runner: Arc<dyn Runner>,
    missed: MissedRunPolicy,
}

/// The loop's bookkeeping of run tasks.
struct Tasks {
    set: JoinSet<usize>,
    /// Per job: a run (with its retries) is under way.
    running: Vec<bool>,
    phase: watch::Sender<Phase>,
}

impl Tasks {
    /// Take note of finished run tasks.
    fn reap(&mut self) {
        while let Some(finished) = self.set.try_join_next() {
            self.finished(finished);
        }
    }

    fn finished(&mut self, result: Result<usize, tokio::task::JoinError>) {
        match result {
            Ok(index) => {
                if let Some(running) = self.running.get_mut(index) {
                    *running = false;
                }
            }
            // Panics inside the runner are caught per attempt, so this is a cancelled task
            // (shutdown) or a bug in this module; the job's flag is reset when the set is empty.
            Err(error) => tracing::error!("a scheduled run task ended abnormally: {error}"),
        }
        if self.set.is_empty() {
            self.running.iter_mut().for_each(|running| *running = false);
        }
    }
}

impl Scheduler {
    pub(crate) fn new(
        jobs: Vec<Job>,
        clock: Arc<dyn Clock>,
        runner: Arc<dyn Runner>,
        missed: MissedRunPolicy,
    ) -> Self {
        Scheduler {
            jobs: jobs.into_iter().map(Arc::new).collect(),
            clock,
            runner,
            missed,
        }
    }

    /// Run until `shutdown` resolves. `last_runs` holds, per job name, the last scheduled time
    /// already handled (from the history), for catch-up; a job without an entry starts fresh.
    /// After shutdown nothing new fires; runs under way get `grace` to finish and are then
    /// cancelled (their futures dropped) before this returns.
    pub(crate) async fn run(
        self,
        last_runs: HashMap<String, DateTime<Utc>>,
        shutdown: impl Future<Output = ()> + Send,
        grace: Duration,
    ) {
        let mut shutdown = std::pin::pin!(shutdown);
        let (phase, _) = watch::channel(Phase::Running);
        let mut tasks = Tasks {
            set: JoinSet::new(),
            running: vec![false; self.jobs.len()],
            phase,
        };
        let start = self.clock.now();
        tracing::info!(jobs = self.jobs.len(), "scheduler started");

        for index in 0..self.jobs.len() {
            let job = &self.jobs[index];
            let missed = last_runs
                .get(&job.name)
                .and_then(|last| job.schedule.latest_missed(*last, start));
            if let Some(missed) = missed {
                self.missed_firing(
                    index,
                    missed,
                    "missed while the scheduler was not running",
                    &mut tasks,
                )
                .await;
            }
        }
        let mut next: Vec<Option<DateTime<Utc>>> = self
            .jobs
            .iter()
            .map(|job| job.schedule.next_after(start))
            .collect();
        let mut handled: Vec<DateTime<Utc>> = vec![start; self.jobs.len()];

        loop {
            tasks.reap();
            let wake = match next.iter().flatten().min() {
                Some(when) => self.clock.sleep_until(*when),
                None => futures::future::pending().boxed(),
            };
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = wake => {}
            }
            let now = self.clock.now();
            tasks.reap();
            for index in 0..self.jobs.len() {
                let Some(due_next) = next[index].filter(|when| *when <= now) else {
                    continue;
                };
                let job = &self.jobs[index];
                let latest = job
                    .schedule
                    .latest_missed(handled[index], now)
                    .unwrap_or(due_next);
                if latest == due_next {
                    self.fire(index, latest, &mut tasks).await;
                } else {
                    // Woken after a later firing was due too (suspend, clock step).
                    self.missed_firing(
                        index,
                        latest,
                        "missed while the scheduler was asleep",
                        &mut tasks,
                    )
                    .await;
                }
                handled[index] = latest;
                next[index] = job.schedule.next_after(now.max(latest));
            }
        }

        self.stop(tasks, grace).await;
    }

    /// Apply the missed-run policy to the latest missed firing of a job.
    async fn missed_firing(
        &self,
        index: usize,
        scheduled_for: DateTime<Utc>,
        reason: &str,
        tasks: &mut Tasks,
    ) {
        let job = &self.jobs[index];
        match self.missed {
            MissedRunPolicy::RunLatest => {
                tracing::info!(job = %job.name, %scheduled_for, "catching up: {reason}");
                self.fire(index, scheduled_for, tasks).await;
            }
            MissedRunPolicy::Skip => {
                tracing::info!(job = %job.name, %scheduled_for, "run skipped: {reason}");
                self.runner.skipped(&job.name, scheduled_for, reason).await;
            }
        }
    }

    /// Start a firing, or skip it when the job's previous run is still going.
    async fn fire(&self, index: usize, scheduled_for: DateTime<Utc>, tasks: &mut Tasks) {
        let job = &self.jobs[index];
        if tasks.running[index] {
            let reason = OVERLAPPING;
            tracing::info!(job = %job.name, %scheduled_for, "run skipped: {reason}");
            self.runner.skipped(&job.name, scheduled_for, reason).await;
            return;
        }
        tasks.running[index] = true;
        let run = run_with_retries(
            Arc::clone(job),
            Arc::clone(&self.runner),
            Arc::clone(&self.clock),
            scheduled_for,
            tasks.phase.subscribe(),
        );
        tasks.set.spawn(run.map(move |()| index));
    }

    /// Shut down: no retries start, runs under way get `grace`, then are dropped.
    async fn stop(&self, mut tasks: Tasks, grace: Duration) {
        tasks.phase.send_replace(Phase::Stopping);
        if tasks.set.is_empty() {
            tracing::info!("scheduler stopped");
            return;
        }
        tracing::info!(
            runs = tasks.set.len(),
            grace = %format_duration(grace),
            "scheduler stopping: waiting for runs under way"
        );
        let deadline = self.clock.sleep_until(add(self.clock.now(), grace));
        let finished_in_time = {
            let drain = async {
                while let Some(result) = tasks.set.join_next().await {
                    tasks.finished(result);
                }
            };
            tokio::select! {
                () = drain => true,
                () = deadline => false,
            }
        };
        if !finished_in_time {
            tracing::info!(
                runs = tasks.set.len(),
                "scheduler stopping: grace period over, cancelling runs under way"
            );
            tasks.phase.send_replace(Phase::Aborting);
            while let Some(result) = tasks.set.join_next().await {
                tasks.finished(result);
            }
        }
        tracing::info!("scheduler stopped");
    }
}

/// How one attempt ended.
enum Attempt {
    Finished(RunOutcome),
    Aborted,
}

/// Resolves when `phase` reaches one of `phases`; never if the scheduler is gone.
async fn phase_reached(phase: &mut watch::Receiver<Phase>, phases: &[Phase]) {
    // The `Ref` the wait returns is not `Send`: turn it into a flag before awaiting again.
    let reached = phase.wait_for(|now| phases.contains(now)).await.is_ok();
    if !reached {
        futures::future::pending::<()>().await;
    }
}

/// One firing: the first attempt and its retries.
async fn run_with_retries(
    job: Arc<Job>,
    runner: Arc<dyn Runner>,
    clock: Arc<dyn Clock>,
    scheduled_for: DateTime<Utc>,
    mut phase: watch::Receiver<Phase>,
) {
    let attempts = job.retry.retries.saturating_add(1);
    for attempt in 1..=attempts {
        let started = clock.now();
        let ending = run_attempt(&job, runner.as_ref(), scheduled_for, attempt, &mut phase).await;
        let elapsed = format_duration((clock.now() - started).to_std().unwrap_or_default());
        let message = match ending {
            Attempt::Finished(RunOutcome::Succeeded) => {
                tracing::info!(job = %job.name, %scheduled_for, attempt, %elapsed, "run succeeded");
                runner
                    .settled(&job.name, scheduled_for, attempt, &RunOutcome::Succeeded)
                    .await;
                return;
            }
            Attempt::Aborted => {
                tracing::info!(job = %job.name, %scheduled_for, attempt, %elapsed, "run cancelled: the scheduler shut down");
                return;
            }
            Attempt::Finished(RunOutcome::Failed(message)) => message,
        };
        if attempt == attempts {
            tracing::info!(job = %job.name, %scheduled_for, attempt, %elapsed, "run failed, no retries left: {message}");
            runner
                .settled(
                    &job.name,
                    scheduled_for,
                    attempt,
                    &RunOutcome::Failed(message),
                )
                .await;
            return;
        }
        let delay = job.retry.delay_after(attempt);
        tracing::info!(
            job = %job.name, %scheduled_for, attempt, %elapsed,
            "run failed, retrying in {}: {message}", format_duration(delay)
        );
        let wait = clock.sleep_until(add(clock.now(), delay));
        tokio::select! {
            () = wait => {}
            () = phase_reached(&mut phase, &[Phase::Stopping, Phase::Aborting]) => {
                tracing::info!(job = %job.name, %scheduled_for, "retry abandoned: the scheduler is stopping");
                return;
            }
        }
    }
}

/// One attempt, bounded by shutdown.
async fn run_attempt(
    job: &Job,
    runner: &dyn Runner,
    scheduled_for: DateTime<Utc>,
    attempt: u32,
    phase: &mut watch::Receiver<Phase>,
) -> Attempt {
    let ending = {
        // Declared in this block so the attempt's future is dropped (cancelled) before the
        // runner is told about a shutdown.
        let run = AssertUnwindSafe(runner.run(&job.name, scheduled_for, attempt)).catch_unwind();
        tokio::select! {
            biased;
            result = run => Attempt::Finished(match result {
                Ok(outcome) => outcome,
                Err(panic) => RunOutcome::Failed(format!("the runner panicked: {}", panic_text(&*panic))),
            }),
            () = phase_reached(phase, &[Phase::Aborting]) => Attempt::Aborted,
        }
    };
    match &ending {
        Attempt::Aborted => {
            let reason = "cancelled: the scheduler shut down and its grace period ended";
            runner
                .cancelled(&job.name, scheduled_for, attempt, reason)
                .await;
        }
        Attempt::Finished(_) => {}
    }
    ending
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Timelike, Weekday};

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
            .single()
            .expect("valid test time")
    }

    // ----- CronSchedule -----

    #[test]
    fn parse_errors_name_the_expression_or_zone() {
        for bad in [
            "61 * * * *",
            "* * *",
            "0 0 1 1 * * 2030",
            "",
            "@often",
            "0 6 * * MONDAYS",
        ] {
            match CronSchedule::parse(bad, "UTC") {
                Err(error @ ScheduleError::Cron { .. }) => {
                    assert!(error.to_string().contains(&format!("`{bad}`")), "{error}")
                }
                other => panic!("{bad:?}: expected a cron error, got {other:?}"),
            }
        }
        match CronSchedule::parse("0 6 * * 1", "Mars/Olympus") {
            Err(error @ ScheduleError::TimeZone { .. }) => {
                assert!(error.to_string().contains("Mars/Olympus"), "{error}")
            }
            other => panic!("expected a zone error, got {other:?}"),
        }
        assert!(CronSchedule::parse("@daily", "Europe/Berlin").is_ok());
        assert!(CronSchedule::parse("*/1 * * * * *", "UTC").is_ok());
    }

    #[test]
    fn monday_is_one() {
        // 2024-01-01 was a Monday; the following Mondays are the 8th and the 15th.
        let schedule = CronSchedule::parse("0 6 * * 1", "UTC").unwrap();
        let times = schedule.upcoming(utc(2024, 1, 1, 0, 0, 0), 3);
        assert_eq!(
            times,
            [
                utc(2024, 1, 1, 6, 0, 0),
                utc(2024, 1, 8, 6, 0, 0),
                utc(2024, 1, 15, 6, 0, 0)
            ]
        );
        assert!(times.iter().all(|time| time.weekday() == Weekday::Mon));

        // Sunday is 0 and 7: the first Sunday of 2024 was the 7th.
        for sunday in ["0 6 * * 0", "0 6 * * 7", "0 6 * * SUN"] {
            let schedule = CronSchedule::parse(sunday, "UTC").unwrap();
            assert_eq!(
                schedule.next_after(utc(2024, 1, 1, 0, 0, 0)),
                Some(utc(2024, 1, 7, 6, 0, 0))
            );
        }

        // In New York (EST, UTC−5 in January) 06:00 on Monday is 11:00 UTC.
        let schedule = CronSchedule::parse("0 6 * * 1", "America/New_York").unwrap();
        assert_eq!(
            schedule.next_after(utc(2024, 1, 1, 0, 0, 0)),
            Some(utc(2024, 1, 1, 11, 0, 0))
        );
    }

    #[test]
    fn next_after_is_strictly_after() {
        let schedule = CronSchedule::parse("0 6 * * *", "UTC").unwrap();
        assert_eq!(
            schedule.next_after(utc(2024, 1, 1, 6, 0, 0)),
            Some(utc(2024, 1, 2, 6, 0, 0))
        );
        assert_eq!(
            schedule.next_after(utc(2024, 1, 1, 5, 59, 59)),
            Some(utc(2024, 1, 1, 6, 0, 0))
        );
        let seconds = CronSchedule::parse("*/10 * * * * *", "UTC").unwrap();
        assert_eq!(
            seconds.upcoming(utc(2024, 1, 1, 0, 0, 5), 3),
            [
                utc(2024, 1, 1, 0, 0, 10),
                utc(2024, 1, 1, 0, 0, 20),
                utc(2024, 1, 1, 0, 0, 30)
            ]
        );
        let never = CronSchedule::parse("0 0 30 2 *", "UTC").unwrap();
        assert_eq!(never.next_after(utc(2024, 1, 1, 0, 0, 0)), None);
        assert!(never.upcoming(utc(2024, 1, 1, 0, 0, 0), 3).is_empty());
    }

    #[test]
    fn daily_run_across_spring_forward_runs_once_right_after_the_gap() {
        // New York, 2024-03-10: 02:00 EST jumps to 03:00 EDT, so 02:30 does not exist that day.
        // croner runs a fixed-time job at the first instant after the gap: 03:00 EDT = 07:00Z.
        // Before: 02:30 EST = 07:30Z. After: 02:30 EDT = 06:30Z.
        let schedule = CronSchedule::parse("30 2 * * *", "America/New_York").unwrap();
        let times = schedule.upcoming(utc(2024, 3, 8, 12, 0, 0), 4);
        assert_eq!(
            times,
            [
                utc(2024, 3, 9, 7, 30, 0),
                utc(2024, 3, 10, 7, 0, 0),
                utc(2024, 3, 11, 6, 30, 0),
                utc(2024, 3, 12, 6, 30, 0),
            ]
        );
        let zone = schedule.timezone();
        let local_days: Vec<u32> = times.iter().map(|t| t.with_timezone(&zone).day()).collect();
        assert_eq!(local_days, [9, 10, 11, 12], "once per local day");
    }

    #[test]
    fn daily_run_across_fall_back_runs_once() {
        // New York, 2024-11-03: 02:00 EDT falls back to 01:00 EST, so 01:00–01:59 happens
        // twice and 02:30 once (EST, 07:30Z). Before: 02:30 EDT = 06:30Z.
        let schedule = CronSchedule::parse("30 2 * * *", "America/New_York").unwrap();
        assert_eq!(
            schedule.upcoming(utc(2024, 11, 1, 12, 0, 0), 3),
            [
                utc(2024, 11, 2, 6, 30, 0),
                utc(2024, 11, 3, 7, 30, 0),
                utc(2024, 11, 4, 7, 30, 0)
            ]
        );
        // 01:30 is repeated on the 3rd: croner runs a fixed-time job once, at the earlier
        // instant (01:30 EDT = 05:30Z), not again at 01:30 EST (06:30Z).
        let repeated = CronSchedule::parse("30 1 * * *", "America/New_York").unwrap();
        assert_eq!(
            repeated.upcoming(utc(2024, 11, 2, 12, 0, 0), 2),
            [utc(2024, 11, 3, 5, 30, 0), utc(2024, 11, 4, 6, 30, 0)]
        );
        // And a job that starts between the two instants does not run the second one either.
        assert_eq!(
            repeated.next_after(utc(2024, 11, 3, 6, 0, 0)),
            Some(utc(2024, 11, 4, 6, 30, 0))
        );
    }

    #[test]
    fn latest_missed_is_the_latest_in_the_half_open_window() {
        let schedule = CronSchedule::parse("0 6 * * *", "UTC").unwrap();
        assert_eq!(
            schedule.latest_missed(utc(2024, 1, 1, 0, 0, 0), utc(2024, 1, 4, 12, 0, 0)),
            Some(utc(2024, 1, 4, 6, 0, 0))
        );
        // `now` itself counts, `since` does not.
        assert_eq!(
            schedule.latest_missed(utc(2024, 1, 3, 6, 0, 0), utc(2024, 1, 4, 6, 0, 0)),
            Some(utc(2024, 1, 4, 6, 0, 0))
        );
        assert_eq!(
            schedule.latest_missed(utc(2024, 1, 4, 6, 0, 0), utc(2024, 1, 4, 12, 0, 0)),
            None
        );
        assert_eq!(
            schedule.latest_missed(utc(2024, 1, 4, 7, 0, 0), utc(2024, 1, 4, 12, 0, 0)),
            None
        );
        assert_eq!(
            schedule.latest_missed(utc(2024, 1, 5, 0, 0, 0), utc(2024, 1, 4, 0, 0, 0)),
            None
        );
    }

    #[test]
    fn retry_delays_double_and_cap() {
        let policy = RetryPolicy {
            retries: 5,
            base_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(25),
        };
        let delays: Vec<u64> = (1..=4).map(|n| policy.delay_after(n).as_secs()).collect();
        assert_eq!(delays, [10, 20, 25, 25]);
        assert_eq!(policy.delay_after(200), Duration::from_secs(25));
    }

    // ----- ManualClock -----

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_when_their_time_comes() {
        let clock = ManualClock::new(utc(2024, 1, 1, 0, 0, 0));
        let early = clock.sleep_until(utc(2024, 1, 1, 0, 0, 10));
        let late = clock.sleep_until(utc(2024, 1, 1, 0, 1, 0));
        assert_eq!(clock.next_wake(), Some(utc(2024, 1, 1, 0, 0, 10)));
        assert_eq!(clock.sleepers(), 2);
        let mut early = tokio::spawn(early);
        let mut late = tokio::spawn(late);
        clock.advance(Duration::from_secs(10));
        (&mut early).await.unwrap();
        settle().await;
        assert!(!late.is_finished());
        clock.advance(Duration::from_secs(50));
        (&mut late).await.unwrap();
        // Past times resolve at once.
        clock.sleep_until(utc(2024, 1, 1, 0, 0, 0)).await;
        assert_eq!(clock.now(), utc(2024, 1, 1, 0, 1, 0));
    }

    // ----- Scheduler with a ManualClock and a scripted runner -----

    #[derive(Debug, Clone, PartialEq)]
    enum Event {
        Started {
            job: String,
            scheduled_for: DateTime<Utc>,
            attempt: u32,
            at: DateTime<Utc>,
        },
        Finished {
            job: String,
            scheduled_for: DateTime<Utc>,
            attempt: u32,
            at: DateTime<Utc>,
        },
        Skipped {
            job: String,
            scheduled_for: DateTime<Utc>,
            reason: String,
        },
        Cancelled {
            job: String,
            scheduled_for: DateTime<Utc>,
            attempt: u32,
            reason: String,
            at: DateTime<Utc>,
        },
    }

    type Script = dyn Fn(&str, u32) -> (Duration, RunOutcome) + Send + Sync;

    /// A runner that takes a scripted time on the manual clock and returns a scripted outcome.
    struct FakeRunner {
        clock: Arc<ManualClock>,
        script: Box<Script>,
        events: Mutex<Vec<Event>>,
    }

    impl FakeRunner {
        fn new(
            clock: &Arc<ManualClock>,
            script: impl Fn(&str, u32) -> (Duration, RunOutcome) + Send + Sync + 'static,
        ) -> Arc<FakeRunner> {
            Arc::new(FakeRunner {
                clock: Arc::clone(clock),
                script: Box::new(script),
                events: Mutex::new(Vec::new()),
            })
        }

        fn events(&self) -> Vec<Event> {
            self.events.lock().unwrap().clone()
        }

        fn starts(&self) -> Vec<(DateTime<Utc>, u32, DateTime<Utc>)> {
            self.events()
                .into_iter()
                .filter_map(|event| match event {
                    Event::Started {
                        scheduled_for,
                        attempt,
                        at,
                        ..
                    } => Some((scheduled_for, attempt, at)),
                    _ => None,
                })
                .collect()
        }

        fn push(&self, event: Event) {
            self.events.lock().unwrap().push(event);
        }
    }

    #[async_trait::async_trait]
    impl Runner for FakeRunner {
        async fn run(&self, job: &str, scheduled_for: DateTime<Utc>, attempt: u32) -> RunOutcome {
            self.push(Event::Started {
                job: job.into(),
                scheduled_for,
                attempt,
                at: self.clock.now(),
            });
            let (takes, outcome) = (self.script)(job, attempt);
            self.clock.sleep_until(add(self.clock.now(), takes)).await;
            self.push(Event::Finished {
                job: job.into(),
                scheduled_for,
                attempt,
                at: self.clock.now(),
            });
            outcome
        }

        async fn skipped(&self, job: &str, scheduled_for: DateTime<Utc>, reason: &str) {
            self.push(Event::Skipped {
                job: job.into(),
                scheduled_for,
                reason: reason.into(),
            });
        }

        async fn cancelled(
            &self,
            job: &str,
            scheduled_for: DateTime<Utc>,
            attempt: u32,
            reason: &str,
        ) {
            self.push(Event::Cancelled {
                job: job.into(),
                scheduled_for,
                attempt,
                reason: reason.into(),
                at: self.clock.now(),
            });
        }
    }

    /// Let every task that can make progress do so (single-threaded test runtime: nothing else
    /// runs meanwhile, and nothing here waits on real time or I/O).
    async fn settle() {
        for _ in 0..200 {
            tokio::task::yield_now().await;
        }
    }

    /// Move the clock to `target` the way real time would: through each pending wake-up in
    /// order, letting the woken tasks run before the next.
    async fn step_to(clock: &ManualClock, target: DateTime<Utc>) {
        loop {
            settle().await;
            match clock.next_wake() {
                Some(when) if when <= target => clock.set(when),
                _ => {
                    clock.set(target);
                    settle().await;
                    return;
                }
            }
        }
    }

    fn job(name: &str, cron: &str, retry: RetryPolicy) -> Job {
        Job {
            name: name.into(),
            schedule: CronSchedule::parse(cron, "UTC").unwrap(),
            retry,
        }
    }

    struct Harness {
        clock: Arc<ManualClock>,
        runner: Arc<FakeRunner>,
        stop: Option<oneshot::Sender<()>>,
        handle: tokio::task::JoinHandle<()>,
    }

    impl Harness {
        async fn start(
            start: DateTime<Utc>,
            jobs: Vec<Job>,
            missed: MissedRunPolicy,
            last_runs: &[(&str, DateTime<Utc>)],
            grace: Duration,
            script: impl Fn(&str, u32) -> (Duration, RunOutcome) + Send + Sync + 'static,
        ) -> Harness {
            let clock = Arc::new(ManualClock::new(start));
            let runner = FakeRunner::new(&clock, script);
            let scheduler = Scheduler::new(jobs, clock.clone(), runner.clone(), missed);
            let (stop, stopped) = oneshot::channel::<()>();
            let last_runs = last_runs
                .iter()
                .map(|(name, time)| (name.to_string(), *time))
                .collect();
            let handle = tokio::spawn(scheduler.run(
                last_runs,
                async move {
                    let _ = stopped.await;
                },
                grace,
            ));
            settle().await;
            Harness {
                clock,
                runner,
                stop: Some(stop),
                handle,
            }
        }

        async fn shutdown(&mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            settle().await;
        }
    }

    fn succeed_instantly(_: &str, _: u32) -> (Duration, RunOutcome) {
        (Duration::ZERO, RunOutcome::Succeeded)
    }

    #[tokio::test]
    async fn fires_at_each_tick() {
        let mut h = Harness::start(
            utc(2024, 1, 1, 0, 0, 30),
            vec![
                job("minutely", "* * * * *", RetryPolicy::default()),
                job("fast", "*/10 * * * * *", RetryPolicy::default()),
            ],
            MissedRunPolicy::RunLatest,
            &[],
            Duration::from_secs(60),
            succeed_instantly,
        )
        .await;
        step_to(&h.clock, utc(2024, 1, 1, 0, 3, 10)).await;
        let started = |name: &str| -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
            h.runner
                .events()
                .into_iter()
                .filter_map(|event| match event {
                    Event::Started {
                        job,
                        scheduled_for,
                        at,
                        attempt,
                    } if job == name => {
                        assert_eq!(attempt, 1);
                        Some((scheduled_for, at))
                    }
                    _ => None,
                })
                .collect()
        };
        let minutely = started("minutely");
        assert_eq!(
            minutely,
            [
                (utc(2024, 1, 1, 0, 1, 0), utc(2024, 1, 1, 0, 1, 0)),
                (utc(2024, 1, 1, 0, 2, 0), utc(2024, 1, 1, 0, 2, 0)),
                (utc(2024, 1, 1, 0, 3, 0), utc(2024, 1, 1, 0, 3, 0)),
            ]
        );
        // Every 10 s from 00:00:40 to 00:03:10: 16 firings, each at its second.
        let fast = started("fast");
        assert_eq!(fast.len(), 16);
        assert_eq!(fast[0].0, utc(2024, 1, 1, 0, 0, 40));
        assert_eq!(fast[15].0, utc(2024, 1, 1, 0, 3, 10));
        assert!(fast
            .iter()
            .all(|(scheduled, at)| scheduled == at && scheduled.second() % 10 == 0));
        h.shutdown().await;
        assert!(h.handle.is_finished());
    }

    #[tokio::test]
    async fn overlapping_firing_is_skipped() {
        let mut h = Harness::start(
            utc(2024, 1, 1, 0, 0, 30),
            vec![job("slow", "* * * * *", RetryPolicy::default())],
            MissedRunPolicy::RunLatest,
            &[],
            Duration::from_secs(60),
            |_, _| (Duration::from_secs(90), RunOutcome::Succeeded),
        )
        .await;
        step_to(&h.clock, utc(2024, 1, 1, 0, 3, 10)).await;
        let slow = "slow".to_string();
        assert_eq!(
            h.runner.events(),
            [
                Event::Started {
                    job: slow.clone(),
                    scheduled_for: utc(2024, 1, 1, 0, 1, 0),
                    attempt: 1,
                    at: utc(2024, 1, 1, 0, 1, 0)
                },
                Event::Skipped {
                    job: slow.clone(),
                    scheduled_for: utc(2024, 1, 1, 0, 2, 0),
                    reason: "previous run still going".into()
                },
                Event::Finished {
                    job: slow.clone(),
                    scheduled_for: utc(2024, 1, 1, 0, 1, 0),
                    attempt: 1,
                    at: utc(2024, 1, 1, 0, 2, 30)
                },
                Event::Started {
                    job: slow.clone(),
                    scheduled_for: utc(2024, 1, 1, 0, 3, 0),
                    attempt: 1,
                    at: utc(2024, 1, 1, 0, 3, 0)
                },
            ]
        );
        h.shutdown().await;
    }

    #[tokio::test]
    async fn failed_runs_are_retried_with_backoff_on_the_clock() {
        let retry = RetryPolicy {
            retries: 3,
            base_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(25),
        };
        let mut h = Harness::start(
            utc(2024, 1, 1, 0, 59, 0),
            vec![job("flaky", "0 * * * *", retry)],
            MissedRunPolicy::RunLatest,
            &[],
            Duration::from_secs(60),
            |_, _| (Duration::ZERO, RunOutcome::Failed("boom".into())),
        )
        .await;
        step_to(&h.clock, utc(2024, 1, 1, 1, 5, 0)).await;
        let hour = utc(2024, 1, 1, 1, 0, 0);
        // Waits of 10 s, 20 s, then 25 s (40 s capped): starts at +0, +10, +30, +55; then no more.
        assert_eq!(
            h.runner.starts(),
            [
                (hour, 1, utc(2024, 1, 1, 1, 0, 0)),
                (hour, 2, utc(2024, 1, 1, 1, 0, 10)),
                (hour, 3, utc(2024, 1, 1, 1, 0, 30)),
                (hour, 4, utc(2024, 1, 1, 1, 0, 55)),
            ]
        );
        h.shutdown().await;
    }

    #[tokio::test]
    async fn a_success_stops_the_retries() {
        let retry = RetryPolicy {
            retries: 3,
            base_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(60),
        };
        let mut h = Harness::start(
            utc(2024, 1, 1, 0, 59, 0),
            vec![job("flaky", "0 * * * *", retry)],
            MissedRunPolicy::RunLatest,
            &[],
            Duration::from_secs(60),
            |_, attempt| {
                (
                    Duration::from_secs(1),
                    if attempt == 1 {
                        RunOutcome::Failed("once".into())
                    } else {
                        RunOutcome::Succeeded
                    },
                )
            },
        )
        .await;
        step_to(&h.clock, utc(2024, 1, 1, 1, 5, 0)).await;
        let hour = utc(2024, 1, 1, 1, 0, 0);
        // The first attempt takes 1 s, then the 10 s wait: the retry starts at 01:00:11.
        assert_eq!(
            h.runner.starts(),
            [(hour, 1, hour), (hour, 2, utc(2024, 1, 1, 1, 0, 11))]
        );
        h.shutdown().await;
    }

    #[tokio::test]
    async fn missed_runs_are_caught_up_with_the_latest_only() {
        let now = utc(2024, 1, 4, 12, 0, 0);
        let jobs = || {
            vec![
                job("behind", "0 6 * * *", RetryPolicy::default()),
                job("current", "0 6 * * *", RetryPolicy::default()),
                job("fresh", "0 6 * * *", RetryPolicy::default()),
            ]
        };
        let last_runs = [
            ("behind", utc(2024, 1, 1, 6, 0, 0)),
            ("current", utc(2024, 1, 4, 6, 0, 0)),
        ];

        let mut h = Harness::start(
            now,
            jobs(),
            MissedRunPolicy::RunLatest,
            &last_runs,
            Duration::from_secs(60),
            succeed_instantly,
        )
        .await;
        // Missed: Jan 2, 3 and 4 at 06:00; only the 4th runs, now.
        assert_eq!(
            h.runner.events(),
            [
                Event::Started {
                    job: "behind".into(),
                    scheduled_for: utc(2024, 1, 4, 6, 0, 0),
                    attempt: 1,
                    at: now
                },
                Event::Finished {
                    job: "behind".into(),
                    scheduled_for: utc(2024, 1, 4, 6, 0, 0),
                    attempt: 1,
                    at: now
                },
            ]
        );
        h.shutdown().await;

        let mut h = Harness::start(
            now,
            jobs(),
            MissedRunPolicy::Skip,
            &last_runs,
            Duration::from_secs(60),
            succeed_instantly,
        )
        .await;
        assert_eq!(
            h.runner.events(),
            [Event::Skipped {
                job: "behind".into(),
                scheduled_for: utc(2024, 1, 4, 6, 0, 0),
                reason: "missed while the scheduler was not running".into()
            }]
        );
        // Then every job runs at its next time as usual.
        step_to(&h.clock, utc(2024, 1, 5, 6, 0, 0)).await;
        let next: Vec<String> = h
            .runner
            .events()
            .into_iter()
            .filter_map(|event| match event {
                Event::Started {
                    job, scheduled_for, ..
                } if scheduled_for == utc(2024, 1, 5, 6, 0, 0) => Some(job),
                _ => None,
            })
            .collect();
        let mut next = next;
        next.sort();
        assert_eq!(next, ["behind", "current", "fresh"]);
        h.shutdown().await;
    }

    #[tokio::test]
    async fn a_jump_past_several_firings_applies_the_policy_once() {
        let mut h = Harness::start(
            utc(2024, 1, 1, 0, 0, 30),
            vec![job("minutely", "* * * * *", RetryPolicy::default())],
            MissedRunPolicy::RunLatest,
            &[],
            Duration::from_secs(60),
            succeed_instantly,
        )
        .await;
        // As after a suspend: the clock leaps over 00:01..00:05 at once.
        h.clock.set(utc(2024, 1, 1, 0, 5, 30));
        settle().await;
        assert_eq!(
            h.runner.starts(),
            [(utc(2024, 1, 1, 0, 5, 0), 1, utc(2024, 1, 1, 0, 5, 30))]
        );
        h.shutdown().await;
    }

    #[tokio::test]
    async fn shutdown_stops_new_firings() {
        let mut h = Harness::start(
            utc(2024, 1, 1, 0, 0, 30),
            vec![job("minutely", "* * * * *", RetryPolicy::default())],
            MissedRunPolicy::RunLatest,
            &[],
            Duration::from_secs(60),
            succeed_instantly,
        )
        .await;
        step_to(&h.clock, utc(2024, 1, 1, 0, 1, 30)).await;
        assert_eq!(h.runner.starts().len(), 1);
        h.shutdown().await;
        assert!(h.handle.is_finished());
        step_to(&h.clock, utc(2024, 1, 1, 0, 10, 0)).await;
        assert_eq!(h.runner.starts().len(), 1);
    }

    #[tokio::test]
    async fn shutdown_waits_for_a_run_within_the_grace_period() {
        let mut h = Harness::start(
            utc(2024, 1, 1, 0, 0, 30),
            vec![job("slow", "* * * * *", RetryPolicy::default())],
            MissedRunPolicy::RunLatest,
            &[],
            Duration::from_secs(120),
            |_, _| (Duration::from_secs(60), RunOutcome::Succeeded),
        )
        .await;
        step_to(&h.clock, utc(2024, 1, 1, 0, 1, 10)).await;
        h.shutdown().await;
        assert!(!h.handle.is_finished(), "waits for the run under way");
        step_to(&h.clock, utc(2024, 1, 1, 0, 5, 0)).await;
        assert!(h.handle.is_finished());
        let slow = "slow".to_string();
        let first = utc(2024, 1, 1, 0, 1, 0);
        // The run finished at 00:02; the 00:02 firing (and later ones) never started.
        assert_eq!(
            h.runner.events(),
            [
                Event::Started {
                    job: slow.clone(),
                    scheduled_for: first,
                    attempt: 1,
                    at: first
                },
                Event::Finished {
                    job: slow,
                    scheduled_for: first,
                    attempt: 1,
                    at: utc(2024, 1, 1, 0, 2, 0)
                },
            ]
        );
    }

    #[tokio::test]
    async fn shutdown_cancels_runs_after_the_grace_period() {
        let retry = RetryPolicy {
            retries: 2,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(1),
        };
        let mut h = Harness::start(
            utc(2024, 1, 1, 0, 0, 30),
            vec![job("slow", "* * * * *", retry)],
            MissedRunPolicy::RunLatest,
            &[],
            Duration::from_secs(30),
            |_, _| (Duration::from_secs(600), RunOutcome::Succeeded),
        )
        .await;
        step_to(&h.clock, utc(2024, 1, 1, 0, 1, 10)).await;
        h.shutdown().await;
        step_to(&h.clock, utc(2024, 1, 1, 0, 20, 0)).await;
        assert!(h.handle.is_finished());
        let first = utc(2024, 1, 1, 0, 1, 0);
        // Shutdown at 00:01:10 with 30 s of grace: cancelled at 00:01:40, and no retry follows.
        assert_eq!(
            h.runner.events(),
            [
                Event::Started {
                    job: "slow".into(),
                    scheduled_for: first,
                    attempt: 1,
                    at: first
                },
                Event::Cancelled {
                    job: "slow".into(),
                    scheduled_for: first,
                    attempt: 1,
                    reason: "cancelled: the scheduler shut down and its grace period ended".into(),
                    at: utc(2024, 1, 1, 0, 1, 40)
                },
            ]
        );
    }

    #[tokio::test]
    async fn a_retry_is_not_started_after_shutdown() {
        let retry = RetryPolicy {
            retries: 3,
            base_delay: Duration::from_secs(30),
            max_delay: Duration::from_secs(30),
        };
        let mut h = Harness::start(
            utc(2024, 1, 1, 0, 0, 30),
            vec![job("flaky", "* * * * *", retry)],
            MissedRunPolicy::RunLatest,
            &[],
            Duration::from_secs(300),
            |_, _| (Duration::ZERO, RunOutcome::Failed("boom".into())),
        )
        .await;
        step_to(&h.clock, utc(2024, 1, 1, 0, 1, 10)).await;
        h.shutdown().await;
        assert!(
            h.handle.is_finished(),
            "a run waiting to retry does not hold up shutdown"
        );
        step_to(&h.clock, utc(2024, 1, 1, 0, 5, 0)).await;
        assert_eq!(
            h.runner.starts(),
            [(utc(2024, 1, 1, 0, 1, 0), 1, utc(2024, 1, 1, 0, 1, 0))]
        );
    }

    #[tokio::test]
    async fn a_panicking_runner_counts_as_a_failed_attempt() {
        let retry = RetryPolicy {
            retries: 1,
            base_delay: Duration::from_secs(5),
            max_delay: Duration::from_secs(5),
        };
        let mut h = Harness::start(
            utc(2024, 1, 1, 0, 0, 30),
            vec![job("buggy", "* * * * *", retry)],
            MissedRunPolicy::RunLatest,
            &[],
            Duration::from_secs(60),
            |_, attempt| {
                if attempt == 1 {
                    panic!("bug in the runner")
                } else {
                    (Duration::ZERO, RunOutcome::Succeeded)
                }
            },
        )
        .await;
        step_to(&h.clock, utc(2024, 1, 1, 0, 1, 30)).await;
        let minute = utc(2024, 1, 1, 0, 1, 0);
        assert_eq!(
            h.runner.starts(),
            [(minute, 1, minute), (minute, 2, utc(2024, 1, 1, 0, 1, 5))]
        );
        h.shutdown().await;
    }
}
