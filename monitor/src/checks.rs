//! Chief's job checks, per job type: when it last ran, succeeded and
//! failed, its failures in a row, and — for job types with a cadence
//! (`[[monitor.checks]] every_s`) or a cron schedule (`schedule`, UTC) —
//! whether it is `UP`, `LATE` (past its expected run) or `DOWN` (past it
//! by more than `grace_s`).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{CheckConfig, MonitorConfig};
use crate::store::CheckRow;

/// A job type's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CheckState {
    /// On time and last run good.
    Up,
    /// Past its expected run, within grace.
    Late,
    /// Past grace, or failing.
    Down,
}

/// What a run of a job type did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// It started.
    Started,
    /// It succeeded.
    Succeeded,
    /// It failed for good (or was dead-lettered).
    Failed,
}

/// A job type's check, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckView {
    /// The job type.
    pub job_name: String,
    /// Its state.
    pub state: CheckState,
    /// Its expected cadence, s.
    pub every_s: Option<u64>,
    /// Or its cron schedule (UTC).
    pub schedule: Option<String>,
    /// Its grace, s.
    pub grace_s: u64,
    /// When it is next expected, ms since the epoch.
    pub expected_next_ms: Option<u64>,
    /// Its numbers.
    #[serde(flatten)]
    pub row: CheckRow,
}

/// When a checked job type is expected.
#[derive(Debug, Clone)]
enum Expected {
    /// At least this often, ms.
    Every(u64),
    /// On this schedule (UTC).
    Schedule(Box<croner::Cron>),
}

impl Expected {
    /// The run expected after one at `last_ms`.
    fn after(&self, last_ms: u64) -> Option<u64> {
        match self {
            Expected::Every(every) => Some(last_ms + every),
            Expected::Schedule(cron) => {
                let last = chrono::DateTime::from_timestamp_millis(i64::try_from(last_ms).ok()?)?;
                let next = cron.find_next_occurrence(&last, false).ok()?;
                u64::try_from(next.timestamp_millis()).ok()
            }
        }
    }
}

/// Every job type's check.
#[derive(Debug, Clone)]
pub struct Checks {
    rows: BTreeMap<String, CheckRow>,
    configured: BTreeMap<String, CheckConfig>,
    expected: BTreeMap<String, Expected>,
    /// When the monitor started: a checked type that never ran is
    /// expected one cadence after it.
    started_ms: u64,
}

impl Checks {
    /// Checks going on from `rows`, configured as `config` says.
    pub fn resume(rows: Vec<CheckRow>, config: &MonitorConfig, started_ms: u64) -> Checks {
        Checks {
            rows: rows.into_iter().map(|row| (row.job_name.clone(), row)).collect(),
            configured: config
                .checks
                .iter()
                .map(|check| (check.job_type.clone(), check.clone()))
                .collect(),
            expected: config
                .checks
                .iter()
                .filter_map(|check| {
                    let expected = match (&check.schedule, check.every_s) {
                        (Some(schedule), _) => Expected::Schedule(Box::new(schedule.parse().ok()?)),
                        (None, Some(every)) => Expected::Every(every * 1000),
                        (None, None) => return None,
                    };
                    Some((check.job_type.clone(), expected))
                })
                .collect(),
            started_ms,
        }
    }

    /// The check configured for `job_name`.
    pub fn config(&self, job_name: &str) -> Option<&CheckConfig> {
        self.configured.get(job_name)
    }

    /// Record `run` of `job_name` at `at_ms`; the row as it is now.
    pub fn record(&mut self, job_name: &str, run: Run, at_ms: u64) -> CheckRow {
        let row = self.rows.entry(job_name.to_string()).or_insert_with(|| CheckRow {
            job_name: job_name.to_string(),
            last_run_ms: None,
            last_success_ms: None,
            last_failure_ms: None,
            consecutive_failures: 0,
        });
        let latest = |at: &mut Option<u64>| *at = Some(at.map_or(at_ms, |before| before.max(at_ms)));
        latest(&mut row.last_run_ms);
        match run {
            Run::Started => {}
            Run::Succeeded => {
                latest(&mut row.last_success_ms);
                row.consecutive_failures = 0;
            }
            Run::Failed => {
                latest(&mut row.last_failure_ms);
                row.consecutive_failures += 1;
            }
        }
        row.clone()
    }

    /// When `job_name` is next expected (types with a cadence).
    fn expected_next(&self, job_name: &str) -> Option<u64> {
        let expected = self.expected.get(job_name)?;
        let last = self
            .rows
            .get(job_name)
            .and_then(|row| row.last_run_ms)
            .unwrap_or(self.started_ms);
        expected.after(last)
    }

    /// The job types past their grace at `now_ms` that alert on a miss,
    /// with when they were expected.
    pub fn missed(&self, now_ms: u64) -> Vec<(String, u64)> {
        self.configured
            .values()
            .filter(|check| check.alert_on_miss)
            .filter_map(|check| {
                let expected = self.expected_next(&check.job_type)?;
                (now_ms > expected + check.grace_s * 1000).then(|| (check.job_type.clone(), expected))
            })
            .collect()
    }

    /// Every job type known (seen or configured) at `now_ms`.
    pub fn views(&self, now_ms: u64) -> Vec<CheckView> {
        let names: std::collections::BTreeSet<&String> = self.rows.keys().chain(self.configured.keys()).collect();
        names
            .into_iter()
            .map(|name| {
                let row = self.rows.get(name).cloned().unwrap_or(CheckRow {
                    job_name: name.clone(),
                    last_run_ms: None,
                    last_success_ms: None,
                    last_failure_ms: None,
                    consecutive_failures: 0,
                });
                let config = self.configured.get(name);
                let expected = self.expected_next(name);
                let grace = config.map_or(0, |check| check.grace_s * 1000);
                let state = match expected {
                    Some(expected) if now_ms > expected + grace => CheckState::Down,
                    Some(expected) if now_ms > expected => CheckState::Late,
                    _ if row.consecutive_failures > 0 => CheckState::Down,
                    _ => CheckState::Up,
                };
                CheckView {
                    job_name: name.clone(),
                    state,
                    every_s: config.and_then(|check| check.every_s),
                    schedule: config.and_then(|check| check.schedule.clone()),
                    grace_s: config.map_or(0, |check| check.grace_s),
                    expected_next_ms: expected,
                    row,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks() -> Checks {
        let config = MonitorConfig {
            checks: vec![CheckConfig {
                job_type: "etl".into(),
                every_s: Some(60),
                schedule: None,
                grace_s: 10,
                alert_on_failure: true,
                alert_on_miss: true,
            }],
            ..MonitorConfig::default()
        };
        Checks::resume(Vec::new(), &config, 0)
    }

    #[test]
    fn a_job_type_goes_late_then_down_past_its_cadence_and_back_up_when_it_runs() {
        let mut checks = checks();
        let state = |checks: &Checks, now| checks.views(now)[0].state;
        assert_eq!(state(&checks, 60_000), CheckState::Up);
        assert_eq!(state(&checks, 60_001), CheckState::Late);
        assert!(checks.missed(70_000).is_empty());
        assert_eq!(state(&checks, 70_001), CheckState::Down);
        assert_eq!(checks.missed(70_001), vec![("etl".to_string(), 60_000)]);
        checks.record("etl", Run::Succeeded, 70_500);
        assert_eq!(state(&checks, 71_000), CheckState::Up);
        assert!(checks.missed(71_000).is_empty());
    }

    #[test]
    fn a_scheduled_job_type_is_expected_at_its_next_cron_time() {
        let config = MonitorConfig {
            checks: vec![CheckConfig {
                job_type: "nightly".into(),
                every_s: None,
                schedule: Some("0 3 * * *".into()),
                grace_s: 600,
                alert_on_failure: true,
                alert_on_miss: true,
            }],
            ..MonitorConfig::default()
        };
        // Started 2026-01-02T00:00:00Z: expected at 03:00, missed after 03:10.
        let started = 1_767_312_000_000;
        let mut checks = Checks::resume(Vec::new(), &config, started);
        let three = started + 3 * 3_600_000;
        assert_eq!(checks.views(started)[0].expected_next_ms, Some(three));
        assert!(checks.missed(three + 600_000).is_empty());
        assert_eq!(checks.missed(three + 600_001), vec![("nightly".to_string(), three)]);
        checks.record("nightly", Run::Succeeded, three + 700_000);
        assert_eq!(
            checks.views(three + 700_000)[0].expected_next_ms,
            Some(three + 86_400_000)
        );
        assert_eq!(checks.views(three + 700_000)[0].state, CheckState::Up);
    }

    #[test]
    fn failures_count_in_a_row_until_a_success() {
        let mut checks = checks();
        checks.record("etl", Run::Failed, 1);
        assert_eq!(checks.record("etl", Run::Failed, 2).consecutive_failures, 2);
        assert_eq!(checks.views(3)[0].state, CheckState::Down);
        assert_eq!(checks.record("etl", Run::Succeeded, 4).consecutive_failures, 0);
        let other = checks.record("other", Run::Started, 5);
        assert_eq!(other.last_run_ms, Some(5));
        assert_eq!(checks.views(6).len(), 2);
    }
}
