//! Alerts and their rules, kept exactly where Chief has them: at most one
//! open alert per (subject, type); a problem closes when its subject is
//! well again, and the closing of a `MISSED`, `NODE_DOWN` or `FAILURE`
//! opens a `RECOVERY`, which itself closes on the subject's next sign of
//! life or after `recovery_ttl`. Anyone may close an alert by hand, with a
//! reason.
//!
//! Pure state: every operation returns the [`AlertChange`]s it made (none
//! when it changed nothing), which the monitor stores and notifies in one
//! transaction — so a change is never notified twice, and a restart loads
//! the open alerts and goes on where it stopped.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Kinds of alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlertType {
    /// A job type missed its cadence.
    Missed,
    /// A job type's run failed.
    Failure,
    /// A problem ended (transient).
    Recovery,
    /// A node stopped beating without saying goodbye.
    NodeDown,
    /// A GPU is over its temperature limit.
    GpuHot,
    /// A service or engine is down.
    ServiceDown,
    /// Jobs were dead-lettered.
    DeadLetter,
    /// Jobs wait in a queue no up node serves.
    BacklogStuck,
}

impl AlertType {
    /// Every type.
    pub const ALL: [AlertType; 8] = [
        AlertType::Missed,
        AlertType::Failure,
        AlertType::Recovery,
        AlertType::NodeDown,
        AlertType::GpuHot,
        AlertType::ServiceDown,
        AlertType::DeadLetter,
        AlertType::BacklogStuck,
    ];

    /// Its name (`NODE_DOWN`).
    pub fn as_str(self) -> &'static str {
        match self {
            AlertType::Missed => "MISSED",
            AlertType::Failure => "FAILURE",
            AlertType::Recovery => "RECOVERY",
            AlertType::NodeDown => "NODE_DOWN",
            AlertType::GpuHot => "GPU_HOT",
            AlertType::ServiceDown => "SERVICE_DOWN",
            AlertType::DeadLetter => "DEAD_LETTER",
            AlertType::BacklogStuck => "BACKLOG_STUCK",
        }
    }

    /// The type named `text`.
    pub fn parse(text: &str) -> Option<AlertType> {
        AlertType::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    /// How bad it is.
    pub fn severity(self) -> Severity {
        match self {
            AlertType::Recovery => Severity::Info,
            AlertType::Missed | AlertType::Failure | AlertType::GpuHot | AlertType::DeadLetter => Severity::Warning,
            AlertType::NodeDown | AlertType::ServiceDown | AlertType::BacklogStuck => Severity::Critical,
        }
    }

    /// Whether its closing (the subject is well again) opens a `RECOVERY`.
    fn recovers(self) -> bool {
        matches!(self, AlertType::Missed | AlertType::Failure | AlertType::NodeDown)
    }
}

/// How bad an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// For the record.
    Info,
    /// Someone should look.
    Warning,
    /// Someone should look now.
    Critical,
}

impl Severity {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// One alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// Its id (stable across restarts).
    pub id: i64,
    /// Its type.
    pub alert_type: AlertType,
    /// What it is about: `node:<id>`, `job:<type>`, `gpu:<node>/<uuid>`,
    /// `service:<node>/<name>`, `queue:<key>`.
    pub subject: String,
    /// The node, when it is about one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The job type, when it is about one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// How bad.
    pub severity: Severity,
    /// `OPEN` or `CLOSED`.
    pub status: AlertStatus,
    /// In words.
    pub message: String,
    /// What the operator needs (orphaned jobs, temperatures…).
    pub details: Value,
    /// When it opened, ms since the epoch.
    pub opened_at_ms: u64,
    /// When it closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed_at_ms: Option<u64>,
    /// Why it closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close_reason: Option<String>,
}

/// Whether an alert is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AlertStatus {
    /// Firing.
    Open,
    /// Resolved.
    Closed,
}

impl AlertStatus {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Open => "OPEN",
            AlertStatus::Closed => "CLOSED",
        }
    }
}

/// A change to store and notify.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertChange {
    /// An alert opened.
    Opened(Alert),
    /// An alert changed while open (its details: orphaned jobs found a home).
    Updated(Alert),
    /// An alert closed.
    Closed(Alert),
}

impl AlertChange {
    /// The alert as it is now.
    pub fn alert(&self) -> &Alert {
        match self {
            AlertChange::Opened(alert) | AlertChange::Updated(alert) | AlertChange::Closed(alert) => alert,
        }
    }
}

/// What a new alert says.
#[derive(Debug, Clone)]
pub struct NewAlert {
    /// Its type.
    pub alert_type: AlertType,
    /// Its subject.
    pub subject: String,
    /// Its node.
    pub node: Option<String>,
    /// Its job type.
    pub job_name: Option<String>,
    /// In words.
    pub message: String,
    /// Details.
    pub details: Value,
}

/// The open alerts.
#[derive(Debug, Clone, Default)]
pub struct Alerts {
    /// Open alerts by type, then subject (looked up without allocating).
    open: HashMap<AlertType, HashMap<String, Alert>>,
    next_id: i64,
    recovery_ttl_ms: u64,
}

impl Alerts {
    /// Alerts going on from `open` (loaded from the store), new ids above
    /// `last_id`; a `RECOVERY` closes by itself after `recovery_ttl_ms`.
    pub fn resume(open: Vec<Alert>, last_id: i64, recovery_ttl_ms: u64) -> Alerts {
        let mut by_type: HashMap<AlertType, HashMap<String, Alert>> = HashMap::new();
        for alert in open {
            by_type
                .entry(alert.alert_type)
                .or_default()
                .insert(alert.subject.clone(), alert);
        }
        Alerts {
            open: by_type,
            next_id: last_id + 1,
            recovery_ttl_ms,
        }
    }

    /// The open alert of `alert_type` on `subject`.
    pub fn get(&self, alert_type: AlertType, subject: &str) -> Option<&Alert> {
        self.open.get(&alert_type)?.get(subject)
    }

    /// Every open alert.
    pub fn open(&self) -> impl Iterator<Item = &Alert> {
        self.open.values().flat_map(HashMap::values)
    }

    /// Open `new` unless one of its type is open on its subject.
    pub fn raise(&mut self, new: NewAlert, now_ms: u64) -> Option<AlertChange> {
        if self.get(new.alert_type, &new.subject).is_some() {
            return None;
        }
        let alert = Alert {
            id: self.next_id,
            alert_type: new.alert_type,
            subject: new.subject,
            node: new.node,
            job_name: new.job_name,
            severity: new.alert_type.severity(),
            status: AlertStatus::Open,
            message: new.message,
            details: new.details,
            opened_at_ms: now_ms,
            closed_at_ms: None,
            close_reason: None,
        };
        self.next_id += 1;
        self.open
            .entry(alert.alert_type)
            .or_default()
            .insert(alert.subject.clone(), alert.clone());
        Some(AlertChange::Opened(alert))
    }

    /// Replace the details of the open alert of `alert_type` on `subject`.
    pub fn update(&mut self, alert_type: AlertType, subject: &str, details: Value) -> Option<AlertChange> {
        let alert = self.open.get_mut(&alert_type)?.get_mut(subject)?;
        if alert.details == details {
            return None;
        }
        alert.details = details;
        Some(AlertChange::Updated(alert.clone()))
    }

    /// The subject of an open `alert_type` is well again: close it with
    /// `reason` and, for kinds that recover, open a `RECOVERY`.
    pub fn resolve(&mut self, alert_type: AlertType, subject: &str, reason: &str, now_ms: u64) -> Vec<AlertChange> {
        let Some(closed) = self.close(alert_type, subject, reason, now_ms) else {
            return Vec::new();
        };
        let mut changes = vec![AlertChange::Closed(closed.clone())];
        if alert_type.recovers() {
            let recovery = NewAlert {
                alert_type: AlertType::Recovery,
                subject: subject.to_string(),
                node: closed.node.clone(),
                job_name: closed.job_name.clone(),
                message: format!("recovered from {}: {reason}", alert_type.as_str()),
                details: serde_json::json!({ "recoveredFrom": closed.id, "recoveredType": alert_type.as_str() }),
            };
            // A RECOVERY still open on the subject closes for the new one.
            if let Some(old) = self.close(AlertType::Recovery, subject, "superseded by a newer recovery", now_ms) {
                changes.push(AlertChange::Closed(old));
            }
            changes.extend(self.raise(recovery, now_ms));
        }
        changes
    }

    /// The subject showed a sign of life (a heartbeat, a run): its open
    /// `RECOVERY`, if any, has served its purpose.
    pub fn alive(&mut self, subject: &str, now_ms: u64) -> Option<AlertChange> {
        let alert = self.get(AlertType::Recovery, subject)?;
        // Not on the very sign of life that recovered it.
        if alert.opened_at_ms >= now_ms {
            return None;
        }
        self.close(AlertType::Recovery, subject, "next sign of life after recovery", now_ms)
            .map(AlertChange::Closed)
    }

    /// Close by hand.
    pub fn close_by_id(&mut self, id: i64, reason: &str, now_ms: u64) -> Option<AlertChange> {
        let (alert_type, subject) = self
            .open()
            .find(|alert| alert.id == id)
            .map(|alert| (alert.alert_type, alert.subject.clone()))?;
        self.close(alert_type, &subject, reason, now_ms)
            .map(AlertChange::Closed)
    }

    /// Close what has expired (`RECOVERY` after its TTL).
    pub fn expire(&mut self, now_ms: u64) -> Vec<AlertChange> {
        let expired: Vec<String> = self
            .open()
            .filter(|alert| {
                alert.alert_type == AlertType::Recovery && now_ms >= alert.opened_at_ms + self.recovery_ttl_ms
            })
            .map(|alert| alert.subject.clone())
            .collect();
        expired
            .into_iter()
            .filter_map(|subject| {
                self.close(AlertType::Recovery, &subject, "expired", now_ms)
                    .map(AlertChange::Closed)
            })
            .collect()
    }

    fn close(&mut self, alert_type: AlertType, subject: &str, reason: &str, now_ms: u64) -> Option<Alert> {
        let mut alert = self.open.get_mut(&alert_type)?.remove(subject)?;
        alert.status = AlertStatus::Closed;
        alert.closed_at_ms = Some(now_ms);
        alert.close_reason = Some(reason.to_string());
        Some(alert)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down(node: &str) -> NewAlert {
        NewAlert {
            alert_type: AlertType::NodeDown,
            subject: format!("node:{node}"),
            node: Some(node.into()),
            job_name: None,
            message: "down".into(),
            details: Value::Null,
        }
    }

    #[test]
    fn one_open_alert_per_subject_and_type_and_recovery_follows_a_closed_problem() {
        let mut alerts = Alerts::resume(Vec::new(), 0, 900_000);
        let opened = alerts.raise(down("a"), 1_000).unwrap();
        assert_eq!(opened.alert().id, 1);
        assert!(alerts.raise(down("a"), 2_000).is_none(), "no second open NODE_DOWN");
        assert!(alerts.raise(down("b"), 2_000).is_some());
        let changes = alerts.resolve(AlertType::NodeDown, "node:a", "heartbeat", 3_000);
        assert!(matches!(&changes[0], AlertChange::Closed(alert) if alert.id == 1));
        assert!(matches!(&changes[1], AlertChange::Opened(alert) if alert.alert_type == AlertType::Recovery));
        // The heartbeat that recovered it does not close the RECOVERY; the next does.
        assert!(alerts.alive("node:a", 3_000).is_none());
        assert!(alerts.alive("node:a", 4_000).is_some());
        assert!(alerts.resolve(AlertType::NodeDown, "node:a", "again", 5_000).is_empty());
    }

    #[test]
    fn a_recovery_expires_and_a_manual_close_needs_an_open_alert() {
        let mut alerts = Alerts::resume(Vec::new(), 41, 10_000);
        alerts.raise(down("a"), 0);
        let changes = alerts.resolve(AlertType::NodeDown, "node:a", "back", 1_000);
        let recovery = changes[1].alert().id;
        assert_eq!(recovery, 43);
        assert!(alerts.expire(10_999).is_empty());
        assert_eq!(alerts.expire(11_000).len(), 1);
        assert!(alerts.close_by_id(recovery, "by hand", 12_000).is_none());
        let hot = alerts
            .raise(
                NewAlert {
                    alert_type: AlertType::GpuHot,
                    ..down("a")
                },
                0,
            )
            .unwrap();
        let closed = alerts.close_by_id(hot.alert().id, "fan replaced", 5).unwrap();
        assert_eq!(closed.alert().close_reason.as_deref(), Some("fan replaced"));
        // GPU_HOT does not recover into a RECOVERY.
        alerts.raise(
            NewAlert {
                alert_type: AlertType::GpuHot,
                ..down("a")
            },
            6,
        );
        assert_eq!(alerts.resolve(AlertType::GpuHot, "node:a", "cooled", 7).len(), 1);
    }
}
