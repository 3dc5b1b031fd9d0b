//! Query strings, checked: every filter is known, bounded and typed
//! before it reaches the store (which binds it as a value); anything else
//! is a 400 naming the parameter.

use std::collections::HashMap;

use citadel_transports::fleet::Level;

use crate::alerts::{AlertStatus, AlertType, Severity};
use crate::registry::{NodeQuery, NodeState};
use crate::store::{AlertQuery, EventQuery};

/// Longest filter value, bytes.
const MAX_VALUE: usize = 256;
/// Default and largest `limit`.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

/// A parameter that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid query parameter `{name}`: {problem}")]
pub struct BadParam {
    /// The parameter.
    pub name: String,
    /// What is wrong.
    pub problem: String,
}

fn bad(name: &str, problem: impl Into<String>) -> BadParam {
    BadParam {
        name: name.to_string(),
        problem: problem.into(),
    }
}

/// The parameters of one request.
pub struct Params<'a> {
    raw: &'a HashMap<String, String>,
}

impl<'a> Params<'a> {
    /// `raw`, refusing any parameter not in `known`.
    pub fn new(raw: &'a HashMap<String, String>, known: &[&str]) -> Result<Params<'a>, BadParam> {
        if let Some(unknown) = raw.keys().find(|name| !known.contains(&name.as_str())) {
            let shown: String = unknown.chars().take(64).collect();
            return Err(bad(&shown, format!("unknown; known here: {}", known.join(", "))));
        }
        Ok(Params { raw })
    }

    /// A text filter: at most 256 bytes, no control characters.
    pub fn text(&self, name: &str) -> Result<Option<String>, BadParam> {
        let Some(value) = self.raw.get(name) else {
            return Ok(None);
        };
        if value.is_empty() || value.len() > MAX_VALUE {
            return Err(bad(name, format!("must be 1 to {MAX_VALUE} bytes")));
        }
        if value.chars().any(char::is_control) {
            return Err(bad(name, "must not contain control characters"));
        }
        Ok(Some(value.clone()))
    }

    fn parsed<T>(&self, name: &str, parse: impl Fn(&str) -> Option<T>, expected: &str) -> Result<Option<T>, BadParam> {
        match self.text(name)? {
            None => Ok(None),
            Some(value) => parse(&value)
                .map(Some)
                .ok_or_else(|| bad(name, format!("expected {expected}"))),
        }
    }

    /// A number.
    pub fn number(&self, name: &str) -> Result<Option<u64>, BadParam> {
        self.parsed(name, |value| value.parse().ok(), "a whole number")
    }

    /// A time: RFC 3339 or ms since the epoch.
    pub fn time(&self, name: &str) -> Result<Option<u64>, BadParam> {
        self.parsed(
            name,
            |value| {
                value.parse().ok().or_else(|| {
                    humantime::parse_rfc3339_weak(value)
                        .ok()
                        .map(citadel_transports::fleet::epoch_millis)
                })
            },
            "an RFC 3339 time or milliseconds since the epoch",
        )
    }

    /// `true` or `false`.
    pub fn flag(&self, name: &str) -> Result<Option<bool>, BadParam> {
        self.parsed(name, |value| value.parse().ok(), "true or false")
    }

    /// `limit` (default 100, at most 1000) and `offset`.
    pub fn page(&self) -> Result<(u32, u32), BadParam> {
        let limit = match self.number("limit")? {
            None => DEFAULT_LIMIT,
            Some(limit) if (1..=u64::from(MAX_LIMIT)).contains(&limit) => limit as u32,
            Some(_) => return Err(bad("limit", format!("must be between 1 and {MAX_LIMIT}"))),
        };
        let offset = match self.number("offset")? {
            None => 0,
            Some(offset) => u32::try_from(offset).map_err(|_| bad("offset", "too large"))?,
        };
        Ok((limit, offset))
    }
}

/// `GET /v1/events` parameters.
pub fn event_query(raw: &HashMap<String, String>) -> Result<EventQuery, BadParam> {
    let params = Params::new(
        raw,
        &[
            "jobName",
            "scriptPath",
            "level",
            "eventType",
            "node",
            "tenant",
            "runId",
            "from",
            "to",
            "limit",
            "offset",
        ],
    )?;
    let level = params.parsed("level", Level::parse, "DEBUG, INFO, WARN, ERROR or CRITICAL")?;
    let (limit, offset) = params.page()?;
    Ok(EventQuery {
        job_name: params.text("jobName")?,
        script_path: params.text("scriptPath")?,
        level: level.map(|level| level.as_str().to_string()),
        event_type: params.text("eventType")?,
        node: params.text("node")?,
        tenant: params.text("tenant")?,
        run_id: params.text("runId")?,
        from_ms: params.time("from")?,
        to_ms: params.time("to")?,
        after_id: None,
        limit,
        offset,
        ascending: false,
    })
}

/// `GET /v1/alerts` parameters.
pub fn alert_query(raw: &HashMap<String, String>) -> Result<AlertQuery, BadParam> {
    let params = Params::new(
        raw,
        &["jobName", "node", "status", "alertType", "severity", "limit", "offset"],
    )?;
    let (limit, offset) = params.page()?;
    Ok(AlertQuery {
        job_name: params.text("jobName")?,
        node: params.text("node")?,
        status: params.parsed(
            "status",
            |value| match value.to_ascii_uppercase().as_str() {
                "OPEN" => Some(AlertStatus::Open),
                "CLOSED" => Some(AlertStatus::Closed),
                _ => None,
            },
            "OPEN or CLOSED",
        )?,
        alert_type: params.parsed(
            "alertType",
            |value| AlertType::parse(&value.to_ascii_uppercase()),
            "MISSED, FAILURE, RECOVERY, NODE_DOWN, GPU_HOT, SERVICE_DOWN, DEAD_LETTER or BACKLOG_STUCK",
        )?,
        severity: params.parsed(
            "severity",
            |value| match value.to_ascii_lowercase().as_str() {
                "info" => Some(Severity::Info),
                "warning" => Some(Severity::Warning),
                "critical" => Some(Severity::Critical),
                _ => None,
            },
            "info, warning or critical",
        )?,
        limit,
        offset,
    })
}

/// `GET /v1/nodes` parameters.
pub fn node_query(raw: &HashMap<String, String>) -> Result<NodeQuery, BadParam> {
    let params = Params::new(
        raw,
        &["state", "idle", "model", "backend", "min_free_vram_mb", "tag", "stale"],
    )?;
    Ok(NodeQuery {
        state: params.parsed("state", NodeState::parse, "up, late, down or offline")?,
        idle: params.flag("idle")?,
        model: params.text("model")?,
        backend: params.text("backend")?,
        min_free_vram_mb: params.number("min_free_vram_mb")?,
        tag: params.text("tag")?,
        include_stale: params.flag("stale")?.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn hostile_and_malformed_filters_are_named() {
        assert_eq!(
            event_query(&raw(&[("jobName; DROP", "x")])).unwrap_err().name,
            "jobName; DROP"
        );
        assert_eq!(event_query(&raw(&[("level", "LOUD")])).unwrap_err().name, "level");
        assert_eq!(event_query(&raw(&[("limit", "100000")])).unwrap_err().name, "limit");
        assert_eq!(event_query(&raw(&[("from", "yesterday")])).unwrap_err().name, "from");
        assert_eq!(event_query(&raw(&[("node", "a\u{0}b")])).unwrap_err().name, "node");
        let long = "x".repeat(300);
        assert_eq!(
            event_query(&raw(&[("jobName", long.as_str())])).unwrap_err().name,
            "jobName"
        );
        assert_eq!(
            alert_query(&raw(&[("alertType", "PANIC")])).unwrap_err().name,
            "alertType"
        );
        assert_eq!(node_query(&raw(&[("state", "asleep")])).unwrap_err().name, "state");
        // A value that looks like SQL is just a value.
        let query = event_query(&raw(&[("jobName", "x' OR '1'='1"), ("level", "warning")])).unwrap();
        assert_eq!(query.job_name.as_deref(), Some("x' OR '1'='1"));
        assert_eq!(query.level.as_deref(), Some("WARN"));
        let from = event_query(&raw(&[("from", "2026-01-02T03:04:05Z")])).unwrap().from_ms;
        assert_eq!(from, Some(1_767_323_045_000));
    }
}
