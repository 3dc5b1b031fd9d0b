//! The floor of the queue benchmark (`benches/queues/run.py`): a bare
//! consumer that does exactly the Redis work `citadel work` does for a
//! no-op job, and nothing else. The same `XREADGROUP` on the same group;
//! the same `claimed`/`start` script; the same settle transaction (`end` on
//! Pub/Sub and the replay stream, the fleet's `job.completed` event, the
//! status hash, `XACK`) — every command built by the same code as the
//! node's (`citadel-transports`, the runtime's fleet events) — with no
//! sandbox, no task per job, no telemetry. Each read takes up to `--batch`
//! entries; their starts go out in one pipeline, then their settles in
//! another: the fewest round trips this work allows. What citadel reaches
//! of this rate is how much of the box's Redis its node turns into jobs.
//!
//! ```text
//! citadel-queue-floor --redis-url redis://127.0.0.1:6379 --queue bench --jobs 5000
//! ```

use std::time::{Duration, SystemTime};

use anyhow::Context;
use citadel_runtime::config::TelemetryConfig;
use citadel_runtime::dispatch::JobInfo;
use citadel_runtime::dispatch::fleet::{Ended, JobEvents};
use citadel_transports::redis::{
    Batch, Committer, Delivery, Endpoint, EventPublisher, FleetPublisher, JobQueues, QueueConfig, RedisSettings,
    ReplayConfig, send_together,
};
use citadel_transports::wire::{self, EventKind, JobStatus, NodeMeta};
use clap::Parser;

/// What one run does.
#[derive(Parser)]
#[command(about = "The queue benchmark's floor: citadel's Redis work per no-op job, and nothing else")]
struct Args {
    /// The Redis to read jobs from.
    #[arg(long)]
    redis_url: String,
    /// The queue (`jobs:v1:<queue>`).
    #[arg(long, default_value = "bench")]
    queue: String,
    /// The consumer group.
    #[arg(long, default_value = "citadel-workers")]
    group: String,
    /// Entries per read (their starts and their settles each go in one pipeline).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Exit after this many jobs (without it: run until killed).
    #[arg(long)]
    jobs: Option<u64>,
    /// Leave out the fleet's job events (`telemetry.events = false`).
    #[arg(long)]
    no_fleet_events: bool,
}

/// The node's Redis writers, configured as `citadel work`'s defaults.
struct Floor {
    conn: citadel_transports::redis::Connection,
    queues: JobQueues,
    events: EventPublisher,
    fleet: Option<JobEvents>,
    consumer: String,
}

/// The job as the fleet's events name it.
fn info<'a>(job_id: &'a str, delivery: &'a Delivery) -> JobInfo<'a> {
    JobInfo {
        job_id,
        job_type: delivery.fields.get("type").map_or("", String::as_str),
        tenant: "default",
    }
}

impl Floor {
    fn new(args: &Args) -> anyhow::Result<Floor> {
        let endpoint = Endpoint::open(&args.redis_url, &RedisSettings::default())?;
        let conn = endpoint.command_connection();
        let committer = Committer::start(conn.clone());
        let consumer = format!("floor-{}", std::process::id());
        let queues = JobQueues::new(
            conn.clone(),
            endpoint.blocking_connection(Duration::from_secs(2)),
            committer.clone(),
            QueueConfig {
                keys: vec![wire::queue_key(&args.queue)],
                group: args.group.clone(),
                consumer: consumer.clone(),
                block: Duration::from_secs(2),
                new_entries_only: false,
            },
        );
        let worker = citadel_runtime::config::WorkerConfig::default();
        let meta = NodeMeta {
            node_id: "floor".into(),
            node_name: "floor".into(),
        };
        let replay = worker.events_stream.then(|| ReplayConfig {
            max_events: worker.events_stream_max,
            ttl: Duration::from_secs(worker.events_stream_ttl_s),
        });
        let status_ttl = Duration::from_secs(worker.status_ttl_s);
        let events = EventPublisher::new(conn.clone(), committer, meta, replay, status_ttl);
        let telemetry = TelemetryConfig::default();
        let fleet = (!args.no_fleet_events).then(|| {
            let publisher = FleetPublisher::start(conn.clone(), telemetry.events_stream_maxlen);
            JobEvents::new(publisher, "floor", &telemetry)
        });
        Ok(Floor {
            conn,
            queues,
            events,
            fleet,
            consumer,
        })
    }

    /// Start, then settle, every job of one read: two round trips.
    async fn serve(&self, deliveries: &[Delivery]) -> anyhow::Result<()> {
        let jobs: Vec<(&Delivery, &str)> = deliveries
            .iter()
            .map(|delivery| {
                Ok((
                    delivery,
                    delivery.fields.get("jobId").context("an entry without jobId")?.as_str(),
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        let mut starts = Vec::with_capacity(jobs.len());
        for &(delivery, job_id) in &jobs {
            let started = self
                .fleet
                .as_ref()
                .map(|fleet| (fleet, fleet.started(&info(job_id, delivery), 1)));
            let started = started.as_ref().map(|(fleet, event)| (fleet.publisher(), event));
            let mut batch = Batch::new();
            let claimed = EventKind::Claimed {
                agent_version: "floor".into(),
            };
            let start = EventKind::Start {
                message: "running on floor".into(),
            };
            self.events.start_in(
                &mut batch,
                job_id,
                None,
                claimed,
                start,
                &delivery.id,
                &self.consumer,
                started,
            );
            starts.push(batch);
        }
        for started in send_together(&self.conn, &starts).await? {
            started?;
        }
        let mut settles = Vec::with_capacity(jobs.len());
        for &(delivery, job_id) in &jobs {
            let result = serde_json::json!({});
            let mut batch = Batch::atomic();
            self.events
                .publish_in(&mut batch, job_id, None, EventKind::End { result: result.clone() });
            if let Some(fleet) = &self.fleet {
                let ended = fleet.ended(&info(job_id, delivery), 1, Ended::Completed, Some(Duration::ZERO));
                fleet.add_to(&mut batch, &[ended]);
            }
            let completed = [("result", result.to_string())];
            self.events.status_in(
                &mut batch,
                job_id,
                JobStatus::Completed,
                &delivery.id,
                &self.consumer,
                &completed,
            );
            self.queues.ack_in(&mut batch, delivery);
            settles.push(batch);
        }
        for settled in send_together(&self.conn, &settles).await? {
            settled?;
        }
        Ok(())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let floor = Floor::new(&args)?;
    floor.queues.ensure_groups().await?;
    let mut load = Batch::new();
    load.push(EventPublisher::load_start_script());
    load.send(&floor.conn).await?;
    let started = SystemTime::now();
    let mut served = 0u64;
    let jobs = args.jobs.unwrap_or(u64::MAX);
    while served < jobs {
        let count = args.batch.min(usize::try_from(jobs - served).unwrap_or(usize::MAX));
        let deliveries = floor.queues.read(count).await?;
        floor.serve(&deliveries).await?;
        served += deliveries.len() as u64;
    }
    let took = started.elapsed().unwrap_or_default();
    eprintln!("served {served} jobs in {:.3} s", took.as_secs_f64());
    Ok(())
}
