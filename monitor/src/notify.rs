//! Alert notifications to webhook receivers (`[[monitor.notify]]`), in
//! Alertmanager's webhook format, so the Slack, PagerDuty and chat
//! bridges people already run for Alertmanager take them unchanged.
//!
//! Each alert change made one delivery row per receiver in the same
//! transaction that stored the change (an outbox): a change is notified
//! once, a restart resumes the pending ones, and every attempt is
//! recorded. A failing receiver is retried with the shared backoff (it
//! does not hold up the others) until `notify_attempts`, then its delivery
//! is recorded as failed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use citadel_transports::backoff::{Backoff, Waits};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::alerts::{Alert, AlertStatus};
use crate::service::Monitor;
use crate::store::Delivery;

/// Per-request timeout.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How often pending deliveries are looked for without being told.
const POLL: Duration = Duration::from_secs(5);

/// A stable fingerprint of an alert's identity (type and subject).
pub fn fingerprint(alert: &Alert) -> String {
    let digest = Sha256::digest(format!("{}\0{}", alert.alert_type.as_str(), alert.subject));
    hex::encode(&digest[..8])
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The webhook body of `alert` as `change` (`firing`, `resolved`).
pub fn payload(alert: &Alert, change: &str, receiver: &str, external_url: &str) -> Value {
    let mut labels = json!({
        "alertname": alert.alert_type.as_str(),
        "severity": alert.severity.as_str(),
        "subject": alert.subject,
        "monitor": "citadel",
    });
    if let Some(node) = &alert.node {
        labels["node"] = json!(node);
    }
    if let Some(job) = &alert.job_name {
        labels["job"] = json!(job);
    }
    let annotations = json!({
        "summary": alert.message,
        "description": alert.details.to_string(),
        "alertId": alert.id.to_string(),
    });
    let ends_at = match (alert.status, alert.closed_at_ms) {
        (AlertStatus::Closed, Some(closed)) => rfc3339(closed),
        _ => "0001-01-01T00:00:00Z".to_string(),
    };
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{}\", subject=\"{}\"}}", alert.alert_type.as_str(), alert.subject),
        "truncatedAlerts": 0,
        "status": change,
        "receiver": receiver,
        "groupLabels": { "alertname": alert.alert_type.as_str() },
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": external_url,
        "alerts": [{
            "status": change,
            "labels": labels,
            "annotations": annotations,
            "startsAt": rfc3339(alert.opened_at_ms),
            "endsAt": ends_at,
            "generatorURL": format!("{external_url}/v1/alerts?alertType={}", alert.alert_type.as_str()),
            "fingerprint": fingerprint(alert),
        }],
    })
}

/// Deliver pending notifications until `stop`.
pub async fn run(monitor: Arc<Monitor>, stop: CancellationToken) {
    if monitor.config.notify.is_empty() {
        return;
    }
    let client = match citadel_transports::http::client(TIMEOUT) {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(error = %err, "alert notifications are off");
            return;
        }
    };
    let bearers: HashMap<String, Option<String>> = monitor
        .config
        .notify
        .iter()
        .map(|receiver| (receiver.url.clone(), receiver.bearer.clone()))
        .collect();
    let external_url = format!("http://{}", monitor.config.addr);
    // Receivers failing now, and when to try them again.
    let mut backoff: HashMap<String, (Waits, tokio::time::Instant)> = HashMap::new();
    loop {
        let store = Arc::clone(monitor.store());
        let pending = tokio::task::spawn_blocking(move || store.pending_deliveries(256))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let now = tokio::time::Instant::now();
        let mut next_wake = now + POLL;
        for delivery in pending {
            if let Some((_, until)) = backoff.get(&delivery.receiver)
                && *until > now
            {
                next_wake = next_wake.min(*until);
                continue;
            }
            let bearer = bearers.get(&delivery.receiver).cloned().flatten();
            let outcome = send(&client, &delivery, bearer.as_deref(), &external_url).await;
            let give_up = outcome.is_err() && delivery.attempts + 1 >= monitor.config.notify_attempts;
            match &outcome {
                Ok(()) => {
                    backoff.remove(&delivery.receiver);
                    monitor.counters.delivered.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => {
                    monitor.counters.delivery_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(receiver = %delivery.receiver, alert = delivery.alert_id, attempt = delivery.attempts + 1, error = %err, give_up, "alert notification not delivered");
                    let (waits, until) = backoff
                        .entry(delivery.receiver.clone())
                        .or_insert_with(|| (Backoff::DEFAULT.start(), now));
                    *until = tokio::time::Instant::now() + waits.next_delay();
                    next_wake = next_wake.min(*until);
                }
            }
            let store = Arc::clone(monitor.store());
            let error = outcome.err();
            let id = delivery.id;
            let recorded =
                tokio::task::spawn_blocking(move || store.delivery_attempted(id, error.as_deref(), give_up)).await;
            if !matches!(recorded, Ok(Ok(()))) {
                tracing::error!(delivery = id, "cannot record a notification attempt");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = monitor.deliveries.notified() => {}
            _ = tokio::time::sleep_until(next_wake) => {}
        }
    }
}

async fn send(
    client: &reqwest::Client,
    delivery: &Delivery,
    bearer: Option<&str>,
    external_url: &str,
) -> Result<(), String> {
    let alert: Alert =
        serde_json::from_str(&delivery.alert).map_err(|err| format!("stored alert unreadable: {err}"))?;
    let body = payload(&alert, &delivery.change, &delivery.receiver, external_url);
    let mut request = client.post(&delivery.receiver).json(&body);
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    let response = request.send().await.map_err(|err| err.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("the receiver answered {}", response.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{AlertType, Severity};

    #[test]
    fn a_resolved_alert_reads_as_alertmanager_writes_it() {
        let alert = Alert {
            id: 7,
            alert_type: AlertType::NodeDown,
            subject: "node:gpu-7".into(),
            node: Some("gpu-7".into()),
            job_name: None,
            severity: Severity::Critical,
            status: AlertStatus::Closed,
            message: "gpu-7 stopped beating".into(),
            details: json!({"orphans": []}),
            opened_at_ms: 1_000,
            closed_at_ms: Some(61_000),
            close_reason: Some("back".into()),
        };
        let body = payload(&alert, "resolved", "http://hook", "http://127.0.0.1:7410");
        assert_eq!(body["version"], "4");
        assert_eq!(body["status"], "resolved");
        let one = &body["alerts"][0];
        assert_eq!(one["labels"]["alertname"], "NODE_DOWN");
        assert_eq!(one["labels"]["node"], "gpu-7");
        assert_eq!(one["labels"]["severity"], "critical");
        assert_eq!(one["annotations"]["summary"], "gpu-7 stopped beating");
        assert_eq!(one["startsAt"], "1970-01-01T00:00:01.000Z");
        assert_eq!(one["endsAt"], "1970-01-01T00:01:01.000Z");
        assert_eq!(one["fingerprint"].as_str().unwrap().len(), 16);
        assert_eq!(one["fingerprint"], fingerprint(&alert), "stable");
    }
}
