//! `citadel submit`: enqueue one job in Citadel's wire format and, with
//! `--follow`, print its events until it ends. The subscription is made
//! before the job is enqueued, so no event can be missed.

use std::time::{Duration, SystemTime};

use citadel_transports::redis::{self as transport, enqueue, subscribe_events};
use citadel_transports::wire;
use clap::Args;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;

use super::{Failure, RedisArgs, output, required_redis};
use crate::config::Config;

/// Arguments of `citadel submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The Redis to enqueue on.
    #[command(flatten)]
    pub redis: RedisArgs,
    /// The job type.
    #[arg(long = "type", value_name = "TYPE")]
    pub job_type: String,
    /// The payload, a JSON object.
    #[arg(long, value_name = "JSON", default_value = "{}")]
    pub payload: String,
    /// The queue, `jobs:v1:<QUEUE>`.
    #[arg(long, value_name = "QUEUE", default_value = "gpu-general")]
    pub queue: String,
    /// The job id (default: a random one).
    #[arg(long, value_name = "ID")]
    pub job_id: Option<String>,
    /// A trace id carried through to every event.
    #[arg(long, value_name = "ID")]
    pub ray_id: Option<String>,
    /// Print the job's events until it ends; exit 0 on `end`, 1 otherwise.
    #[arg(long)]
    pub follow: bool,
    /// With --follow: print events as JSON, one per line.
    #[arg(long)]
    pub json: bool,
    /// With --follow: give up after this many ms.
    #[arg(long, value_name = "MS")]
    pub wait_ms: Option<u64>,
}

impl SubmitArgs {
    /// The config keys these flags set.
    pub(super) fn overrides(&self) -> impl Serialize + use<> {
        self.redis.overrides()
    }
}

pub(super) async fn submit(args: SubmitArgs, config: &Config) -> Result<(), Failure> {
    match serde_json::from_str::<Value>(&args.payload) {
        Ok(Value::Object(_)) => {}
        Ok(_) => return Err(Failure::input("--payload must be a JSON object")),
        Err(err) => return Err(Failure::input(format!("--payload is not valid JSON: {err}"))),
    }
    let redis = required_redis(config)?;
    let job_id = args
        .job_id
        .clone()
        .unwrap_or_else(|| format!("job-{:016x}", rand::random::<u64>()));
    let unreachable = |err: transport::RedisError| Failure::job(redis.explain(&err));
    let subscription = if args.follow {
        Some(subscribe_events(&redis, &job_id).await.map_err(unreachable)?)
    } else {
        None
    };

    let queue = wire::queue_key(&args.queue);
    let enqueued_at = wire::timestamp(SystemTime::now());
    let mut fields = vec![
        ("jobId", job_id.as_str()),
        ("type", args.job_type.as_str()),
        ("payload", args.payload.as_str()),
        ("enqueuedAt", enqueued_at.as_str()),
    ];
    if let Some(ray_id) = &args.ray_id {
        fields.push(("rayId", ray_id));
    }
    let mut conn = redis.command_connection();
    let entry = enqueue(&mut conn, &queue, &fields).await.map_err(unreachable)?;
    eprintln!("submitted job {job_id} to {queue} (entry {entry})");
    let Some(subscription) = subscription else {
        output::line(&job_id);
        return Ok(());
    };

    let mut messages = subscription.into_on_message();
    let follow = async {
        while let Some(message) = messages.next().await {
            let Ok(text) = message.get_payload::<String>() else {
                continue;
            };
            if args.json {
                output::line(&text);
            }
            let Ok(event) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            if let Some(outcome) = show(&event, !args.json) {
                return outcome;
            }
        }
        Err(Failure::job("lost the connection to Redis while following the job"))
    };
    match args.wait_ms {
        None => follow.await,
        Some(ms) => tokio::time::timeout(Duration::from_millis(ms), follow)
            .await
            .unwrap_or_else(|_| Err(Failure::job(format!("job {job_id} did not end within {ms} ms")))),
    }
}

/// Print one event (as text when `text`); `Some` once the job has ended.
fn show(event: &Value, text: bool) -> Option<Result<(), Failure>> {
    let data = &event["data"];
    let kind = event["type"].as_str().unwrap_or_default();
    if text {
        match kind {
            "claimed" => eprintln!("claimed by {}", data["meta"]["node_id"].as_str().unwrap_or("?")),
            "start" => eprintln!("{}", data["message"].as_str().unwrap_or("started")),
            "chunk" => output::line(format_args!(
                "chunk {}: {}",
                data["index"],
                data["content"].as_str().unwrap_or_default()
            )),
            "end" => output::line(format_args!(
                "result: {}",
                serde_json::to_string_pretty(&data["result"]).unwrap_or_else(|_| data["result"].to_string())
            )),
            _ => {}
        }
    }
    match kind {
        "end" => Some(Ok(())),
        "error" => Some(Err(Failure::job(format!(
            "job failed: {}",
            data["error"].as_str().unwrap_or("unknown error")
        )))),
        "cancelled" => Some(Err(Failure::job(format!(
            "job cancelled: {}",
            data["reason"].as_str().unwrap_or("")
        )))),
        _ => None,
    }
}
