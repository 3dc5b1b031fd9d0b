//! `citadel run`: one job through one component, locally. Chunks are printed
//! as they arrive, then the result; with `--json`, one JSON event per line
//! in the wire format's shapes (`chunk`, `end`, `error`). The guest's log
//! goes to stderr. Ctrl-C cancels the job.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Failure, output};
use crate::config::Config;
use crate::job::{Chunk, JobReport, JobSpec};
use crate::policy::DEFAULT_TENANT;
use crate::sandbox::engine::Allocation;
use crate::sandbox::executor::Executor;
use crate::sandbox::joblog::{LogRecord, Source};

/// Chunks buffered between the guest and the printer.
const CHUNK_BUFFER: usize = 256;

/// Arguments of `citadel run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The handler component (`.wasm`).
    #[arg(long, value_name = "FILE")]
    pub component: PathBuf,
    /// The job's payload, JSON.
    #[arg(long, value_name = "JSON", default_value = "{}")]
    pub payload: String,
    /// The tenant the job runs for.
    #[arg(long, default_value = DEFAULT_TENANT)]
    pub tenant: String,
    /// Tenant policy file (overrides the config's `policy`).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// The job's time budget, ms (the tenant's `timeout_ms` caps it).
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,
    /// The job type (defaults to the component's file name).
    #[arg(long, value_name = "TYPE")]
    pub job_type: Option<String>,
    /// The job id.
    #[arg(long, value_name = "ID", default_value = "local-1")]
    pub job_id: String,
    /// Print JSON events (one per line) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<PathBuf>,
}

impl RunArgs {
    /// The config keys these flags set.
    pub(super) fn overrides(&self) -> impl Serialize + use<> {
        Overrides {
            policy: self.policy.clone(),
        }
    }
}

pub(super) async fn run(args: RunArgs, config: &Config) -> Result<(), Failure> {
    if let Err(err) = serde_json::from_str::<serde_json::Value>(&args.payload) {
        return Err(Failure::input(format!("--payload is not valid JSON: {err}")));
    }
    let executor = Executor::from_config(config, Allocation::Pooling).map_err(Failure::input)?;
    let component = executor
        .components()
        .load_file(&args.component)
        .map_err(Failure::input)?;
    let job_type = args.job_type.clone().unwrap_or_else(|| {
        args.component
            .file_stem()
            .map_or_else(|| "job".into(), |stem| stem.to_string_lossy().into_owned())
    });
    let job = JobSpec {
        id: args.job_id.clone(),
        job_type,
        tenant: args.tenant.clone(),
        payload: args.payload.clone(),
        ray_id: None,
        attempt: 1,
        timeout: args.timeout_ms.map(Duration::from_millis),
    };

    let cancel = CancellationToken::new();
    let on_interrupt = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_interrupt.cancel();
        }
    });
    let (sink, mut chunks) = mpsc::channel::<Chunk>(CHUNK_BUFFER);
    let json = args.json;
    let printer = tokio::spawn(async move {
        while let Some(chunk) = chunks.recv().await {
            print_chunk(&chunk, json);
        }
    });
    let report = executor.run(&component, job, Some(sink), &cancel).await;
    let _ = printer.await;
    print_log(&report.log);
    finish(report, json)
}

fn print_chunk(chunk: &Chunk, json: bool) {
    if json {
        output::line(format_args!(
            "{}",
            json!({"type": "chunk", "data": {"content": chunk.content, "index": chunk.index}})
        ));
    } else {
        output::line(format_args!("chunk {}: {}", chunk.index, chunk.content));
    }
}

fn print_log(log: &[LogRecord]) {
    for record in log {
        let origin = match record.source {
            Source::Guest => "guest",
            Source::Stdout => "stdout",
            Source::Stderr => "stderr",
            Source::Node => "node",
        };
        let fields: String = record
            .fields
            .iter()
            .map(|(key, value)| format!(" {key}={value}"))
            .collect();
        eprintln!("[{origin} {}] {}{fields}", record.level, record.message);
    }
}

fn finish(report: JobReport, json: bool) -> Result<(), Failure> {
    let elapsed_ms = report.elapsed.as_secs_f64() * 1000.0;
    match report.outcome {
        Ok(result) => {
            if json {
                output::line(format_args!("{}", json!({"type": "end", "data": {"result": result}})));
            } else {
                let pretty = serde_json::to_string_pretty(&result).unwrap_or_else(|_| result.to_string());
                output::line(format_args!("result: {pretty}"));
                eprintln!("ok: {} chunks, {elapsed_ms:.1} ms", report.chunks);
            }
            Ok(())
        }
        Err(error) => {
            if json {
                output::line(format_args!(
                    "{}",
                    json!({"type": "error", "data": {"error": error.to_string(), "class": error.class(), "recoverable": error.recoverable()}})
                ));
            }
            Err(Failure::job(format!("job failed ({}): {error}", error.class())))
        }
    }
}
