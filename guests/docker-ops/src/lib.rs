//! `docker-ops`: one call of capability `docker`. Payload
//! `{"op": "list" | "inspect" | "logs" | "start" | "stop" | "restart",
//! "container": name, "tail": lines}` (`container` for every op but `list`,
//! `tail` for `logs`, default 100). Result: `list` → an array of
//! `{id, name, image, state, status, labels}`; `inspect` → the container's
//! details; `logs` → `{"logs": text}`; the actions → `{"ok": true}`.
//! Errors: `denied` → `denied`, `not-found` → `invalid-input`,
//! `unavailable` → `unavailable`, `failed` → `failed`.

use citadel_guest::docker::{self, Error};
use citadel_guest::{Guest, HandlerError, Job};
use serde::Deserialize;
use serde_json::{Map, Value, json};

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Op {
    List,
    Inspect,
    Logs,
    Start,
    Stop,
    Restart,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    op: Op,
    container: Option<String>,
    tail: Option<u32>,
}

fn handler_error(err: Error) -> HandlerError {
    match err {
        Error::Denied(reason) => HandlerError::Denied(reason),
        Error::NotFound(reason) => HandlerError::InvalidInput(reason),
        Error::Unavailable(reason) => HandlerError::Unavailable(reason),
        Error::Failed(reason) => HandlerError::Failed(reason),
    }
}

fn labels(labels: Vec<(String, String)>) -> Value {
    Value::Object(
        labels
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect::<Map<_, _>>(),
    )
}

struct DockerOps;

impl Guest for DockerOps {
    fn handle(job: Job) -> Result<String, HandlerError> {
        let payload: Payload = serde_json::from_str(&job.payload)
            .map_err(|err| HandlerError::InvalidInput(format!("docker-ops payload: {err}")))?;
        let container = || {
            payload
                .container
                .as_deref()
                .ok_or_else(|| HandlerError::InvalidInput("`container` is required".into()))
        };
        let result = match payload.op {
            Op::List => Value::Array(
                docker::list_containers()
                    .map_err(handler_error)?
                    .into_iter()
                    .map(|c| {
                        json!({"id": c.id, "name": c.name, "image": c.image, "state": c.state,
                            "status": c.status, "labels": labels(c.labels)})
                    })
                    .collect(),
            ),
            Op::Inspect => {
                let d = docker::inspect(container()?).map_err(handler_error)?;
                json!({"id": d.id, "name": d.name, "image": d.image, "state": d.state, "running": d.running,
                    "exit_code": d.exit_code, "started_at": d.started_at, "finished_at": d.finished_at,
                    "health": d.health, "restart_count": d.restart_count, "labels": labels(d.labels)})
            }
            Op::Logs => {
                let logs = docker::logs(container()?, payload.tail.unwrap_or(100)).map_err(handler_error)?;
                json!({ "logs": logs })
            }
            Op::Start | Op::Stop | Op::Restart => {
                let name = container()?;
                match payload.op {
                    Op::Start => docker::start(name),
                    Op::Stop => docker::stop(name),
                    _ => docker::restart(name),
                }
                .map_err(handler_error)?;
                json!({ "ok": true })
            }
        };
        Ok(result.to_string())
    }
}

citadel_guest::export_handler!(DockerOps);
