//! Events POSTed by sources that are not citadel nodes (cron scripts,
//! Chief's emitter): Chief's event shape, checked field by field so a bad
//! one is refused with a 400 naming the field — and then nothing of the
//! request is stored.

use citadel_transports::fleet::{FleetEvent, Level};
use serde_json::{Map, Value};

/// Longest `message`, bytes.
const MAX_MESSAGE: usize = 16 * 1024;
/// Longest short text field, bytes.
const MAX_FIELD: usize = 256;
/// Largest `meta` (as JSON), bytes.
const MAX_META: usize = 16 * 1024;

/// The fields an event may have.
const FIELDS: [&str; 12] = [
    "sourceType",
    "eventType",
    "level",
    "message",
    "jobName",
    "runId",
    "scriptPath",
    "scheduledFor",
    "meta",
    "node",
    "tenant",
    "at",
];

/// `value` as an event, or what is wrong with it (naming the field; `at`
/// says where in a batch). Takes the value apart: no field is copied.
pub fn event(value: Value, at: Option<usize>) -> Result<FleetEvent, String> {
    let place = |field: &str| match at {
        Some(index) => format!("events[{index}].{field}"),
        None => field.to_string(),
    };
    let Value::Object(mut object) = value else {
        return Err(format!(
            "{}: an event is a JSON object",
            at.map_or("body".to_string(), |index| format!("events[{index}]"))
        ));
    };
    if let Some(unknown) = object.keys().find(|key| !FIELDS.contains(&key.as_str())) {
        let shown: String = unknown.chars().take(64).collect();
        return Err(format!("{}: unknown field", place(&shown)));
    }
    let mut text = |field: &str, max: usize, required: bool| -> Result<Option<String>, String> {
        match object.remove(field) {
            None | Some(Value::Null) if required => Err(format!("{}: required", place(field))),
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) if text.len() > max => Err(format!("{}: longer than {max} bytes", place(field))),
            Some(Value::String(text)) if required && text.trim().is_empty() => {
                Err(format!("{}: must not be empty", place(field)))
            }
            Some(Value::String(text)) => Ok(Some(text)),
            Some(_) => Err(format!("{}: must be a string", place(field))),
        }
    };
    let event_type = text("eventType", MAX_FIELD, true)?.unwrap_or_default();
    let level_text = text("level", MAX_FIELD, false)?.unwrap_or_else(|| "INFO".into());
    let level =
        Level::parse(&level_text).ok_or_else(|| format!("{}: DEBUG, INFO, WARN, ERROR or CRITICAL", place("level")))?;
    let at_time = text("at", MAX_FIELD, false)?;
    if let Some(at_time) = &at_time
        && humantime::parse_rfc3339_weak(at_time).is_err()
    {
        return Err(format!("{}: an RFC 3339 time", place("at")));
    }
    let source_type = text("sourceType", MAX_FIELD, false)?.unwrap_or_else(|| "http".into());
    let message = text("message", MAX_MESSAGE, false)?.unwrap_or_default();
    let node = text("node", MAX_FIELD, false)?;
    let job_name = text("jobName", MAX_FIELD, false)?;
    let run_id = text("runId", MAX_FIELD, false)?;
    let tenant = text("tenant", MAX_FIELD, false)?;
    let script_path = text("scriptPath", MAX_FIELD, false)?;
    let scheduled_for = text("scheduledFor", MAX_FIELD, false)?;
    let meta = match object.remove("meta") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(meta)) => {
            let size = serde_json::to_vec(&meta).map_or(usize::MAX, |bytes| bytes.len());
            if size > MAX_META {
                return Err(format!("{}: larger than {MAX_META} bytes", place("meta")));
            }
            meta
        }
        Some(_) => return Err(format!("{}: must be an object", place("meta"))),
    };
    Ok(FleetEvent {
        source_type,
        event_type,
        level,
        message,
        at: at_time,
        node,
        job_name,
        run_id,
        tenant,
        script_path,
        scheduled_for,
        meta,
    })
}

/// A batch: `{"events": [...]}` or a bare array, at most `max` events,
/// every one valid.
pub fn batch(value: Value, max: usize) -> Result<Vec<FleetEvent>, String> {
    let events = match value {
        Value::Array(events) => events,
        Value::Object(mut object) => match object.remove("events") {
            Some(Value::Array(events)) => events,
            _ => return Err("events: required, an array of events".into()),
        },
        _ => return Err("body: a JSON array of events or {\"events\": [...]}".into()),
    };
    if events.len() > max {
        return Err(format!("events: {} events, at most {max} per batch", events.len()));
    }
    events
        .into_iter()
        .enumerate()
        .map(|(index, value)| event(value, Some(index)))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn chiefs_event_is_taken_and_a_bad_field_is_named() {
        let chief = json!({"sourceType":"chief","eventType":"job.started","level":"INFO","message":"Job started","jobName":"etl","runId":"demo-1"});
        let event = event(chief, None).unwrap();
        assert_eq!(event.job_name.as_deref(), Some("etl"));
        assert_eq!(
            super::event(json!({"level":"INFO"}), None).unwrap_err(),
            "eventType: required"
        );
        assert!(
            super::event(json!({"eventType":"x","level":"LOUD"}), None)
                .unwrap_err()
                .starts_with("level:")
        );
        assert!(
            super::event(json!({"eventType":"x","meta":[1]}), None)
                .unwrap_err()
                .starts_with("meta:")
        );
        assert!(
            super::event(json!({"eventType":"x","jobName":7}), None)
                .unwrap_err()
                .starts_with("jobName:")
        );
        assert!(
            super::event(json!({"eventType":"x","oops":1}), None)
                .unwrap_err()
                .starts_with("oops:")
        );
        let err = batch(json!([{"eventType":"a"}, {"eventType":""}]), 10).unwrap_err();
        assert_eq!(err, "events[1].eventType: must not be empty");
        assert!(
            batch(json!({"events": [{"eventType":"a"}, {"eventType":"b"}]}), 1)
                .unwrap_err()
                .contains("at most 1")
        );
    }
}
