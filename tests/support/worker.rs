//! Workers for tests — in-process ([`TestWorker`]) or a real `citadel work`
//! process ([`WorkerProcess`]) — configured with short timings, replayable
//! events and the test guests as handlers; and the producer side: enqueue
//! jobs and read back their status, events, pending entries and dead letters.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::time::Duration;

use citadel_runtime::capabilities::inference::Engines;
use citadel_runtime::dispatch::Dispatcher;
use citadel_runtime::handlers::HandlerTable;
use citadel_runtime::node::{Node, Sources, Telemetry};
use citadel_runtime::sources::redis::{Worker, WorkerError};
use citadel_runtime::{Config, Executor};
use redis::Commands;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{RedisServer, citadel_bin, guest, sandbox_config, shared_store, wait_until};

/// The queue tests use.
pub const QUEUE: &str = "jobs:v1:gpu-general";
/// Its dead-letter queue.
pub const DLQ: &str = "dlq:v1:gpu-general";
/// The node id of test workers.
pub const NODE: &str = "test-node";

/// A worker configuration for `redis`: 2 s liveness TTL, fast sweeps and
/// polls, replayable events, handlers `echo`, `extract`, `slow`, `flaky`,
/// `trap` (bad-trap) and `spin` (bad-spin).
pub fn worker_config(redis: &RedisServer) -> Config {
    worker_config_for(&redis.url())
}

/// [`worker_config`] for the Redis at `url`.
pub fn worker_config_for(url: &str) -> Config {
    let mut config = Config {
        redis_url: Some(url.to_string()),
        ..Config::default()
    };
    config.node.id = Some(NODE.into());
    let worker = &mut config.worker;
    worker.concurrency = 4;
    worker.block_ms = 200;
    worker.liveness_ttl_ms = 2_000;
    worker.reclaim_interval_ms = 200;
    worker.retry_delay_ms = 200;
    worker.cancel_poll_ms = 50;
    worker.shutdown_grace_ms = 10_000;
    worker.events_stream = true;
    // Several nodes run at once in tests: any free port, no HTTP push.
    config.telemetry.status_addr = "127.0.0.1:0".parse().expect("address");
    config.telemetry.http_endpoint = None;
    for (job_type, name) in [
        ("echo", "echo"),
        ("extract", "extract"),
        ("slow", "slow"),
        ("flaky", "flaky"),
        ("trap", "bad-trap"),
        ("spin", "bad-spin"),
    ] {
        config.handlers.insert(job_type.into(), guest(name));
    }
    config
}

/// Give `config` the tenant policy `toml`, written to a file in a fresh
/// directory (kept for as long as the returned guard lives).
pub fn with_policy(config: &mut Config, toml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, toml).expect("write the policy");
    config.policy = Some(policy);
    dir
}

/// A node for the fleet tests, named `id`: heartbeats every 200 ms, status
/// on change (at most every 100 ms) and every 10 minutes, liveness 2 s.
pub fn fleet_node_config(redis: &RedisServer, id: &str) -> Config {
    let mut config = worker_config(redis);
    config.node.id = Some(id.into());
    config.telemetry.heartbeat_ms = 200;
    config.telemetry.status_interval_s = 600;
    config.telemetry.min_change_interval_ms = 100;
    config.worker.liveness_ttl_ms = 2_000;
    config
}

/// A worker running on the test's tokio runtime, over the shared component
/// store: the Redis source alone ([`TestWorker::start`]), or the whole node
/// as `citadel work` assembles it ([`TestWorker::start_node`]).
pub struct TestWorker {
    /// The worker.
    pub worker: Arc<Worker>,
    /// Where the node's status server listens, when started with
    /// [`TestWorker::start_node`].
    status_addr: Option<SocketAddr>,
    /// The node's telemetry, when started with [`TestWorker::start_node`].
    telemetry: Option<Arc<Telemetry>>,
    stop: CancellationToken,
    task: JoinHandle<Result<(), WorkerError>>,
}

impl TestWorker {
    /// Start a worker for `config`.
    pub fn start(config: &Config) -> TestWorker {
        let dispatch = Arc::new(Dispatcher::new(
            Arc::new(executor_for(config)),
            handlers_of(config),
            config.worker.concurrency as usize,
        ));
        let worker = Arc::new(Worker::new(dispatch, config).expect("worker"));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let worker = Arc::clone(&worker);
            let stop = stop.clone();
            async move { worker.run(stop).await }
        });
        TestWorker {
            worker,
            status_addr: None,
            telemetry: None,
            stop,
            task,
        }
    }

    /// The node `config` describes, assembled as `citadel work` assembles
    /// it (`Node::build`), on the shared component store.
    pub async fn start_node(config: &Config) -> TestWorker {
        let node = Node::build_on(config, Sources::Redis, executor_for(config))
            .await
            .expect("node");
        let worker = Arc::new(node.worker().expect("a Redis node has a worker").clone());
        let status_addr = node.services().status_addr;
        let telemetry = Some(Arc::clone(&node.services().telemetry));
        let stop = CancellationToken::new();
        let task = tokio::spawn(node.run(stop.clone()));
        TestWorker {
            worker,
            status_addr,
            telemetry,
            stop,
            task,
        }
    }

    /// The status server's base URL.
    pub fn status_url(&self) -> String {
        let addr = self.status_addr.expect("started with a status server");
        format!("http://{addr}")
    }

    /// The node's telemetry.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        self.telemetry.as_ref().expect("started as a node")
    }

    /// Stop it (as SIGTERM does) and wait until it has drained.
    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("worker task").expect("worker run");
    }
}

/// An executor for `config`'s policy and engines on the shared store.
fn executor_for(config: &Config) -> Executor {
    let policy = config.load_policy().expect("policy");
    let engines = Arc::new(Engines::from_config(&config.engines).expect("engines"));
    Executor::new(shared_store(), policy).with_engines(engines)
}

/// `config`'s handlers, loaded into the shared store.
fn handlers_of(config: &Config) -> HandlerTable {
    HandlerTable::load(&shared_store(), &config.handlers).expect("handlers")
}

/// A `citadel work` process.
pub struct WorkerProcess {
    child: Option<Child>,
    dir: tempfile::TempDir,
    launch: Launch,
}

/// How the process was started, to start it again the same way.
struct Launch {
    config: Config,
    wrapper: Vec<String>,
    subcommand: String,
    env: Vec<(String, String)>,
    /// Earlier runs (their logs are kept as `worker.log.<n>`).
    runs: u32,
}

impl WorkerProcess {
    /// Start `citadel --config <file> work` with `config` (its compiled
    /// cache and, unless set, its state in the test's temp dir), and wait
    /// until it is ready.
    pub fn start(config: &Config) -> WorkerProcess {
        Self::start_as(config, &[])
    }

    /// [`WorkerProcess::start`] under a wrapper command (`setpriv --reuid
    /// …` to run it as another user: the temp dir is then open to all).
    pub fn start_as(config: &Config, wrapper: &[&str]) -> WorkerProcess {
        Self::launch(config, wrapper, "work", &[])
    }

    /// `citadel --config <file> agent` (the Nexus polling agent), ready.
    pub fn start_agent(config: &Config) -> WorkerProcess {
        Self::launch(config, &[], "agent", &[])
    }

    /// `citadel --config <file> <subcommand>` (`work`, `agent`, `up`) with
    /// `env` added to its environment, ready.
    pub fn start_with_env(config: &Config, subcommand: &str, env: &[(&str, &str)]) -> WorkerProcess {
        Self::launch(config, &[], subcommand, env)
    }

    /// Run `citadel --config <file> <subcommand>` with `env`, expecting it
    /// to exit within `within` (it refuses to start): its exit code (`None`
    /// when it was still running, then killed) and log.
    pub fn run_to_exit(
        config: &Config,
        subcommand: &str,
        env: &[(&str, &str)],
        within: Duration,
    ) -> (Option<i32>, String) {
        let mut process = Self::spawn(config, &[], subcommand, env);
        let deadline = std::time::Instant::now() + within;
        let child = process.child.as_mut().expect("running");
        let code = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                process.child = None;
                break status.code();
            }
            if std::time::Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        (code, process.log())
    }

    fn launch(config: &Config, wrapper: &[&str], subcommand: &str, env: &[(&str, &str)]) -> WorkerProcess {
        let process = Self::spawn(config, wrapper, subcommand, env);
        process.wait_ready();
        process
    }

    /// Start it again after it was killed or exited (SIGKILL first if it
    /// still runs), in the same directory with the same configuration (so
    /// its compiled cache is reused), and wait until it is ready. The log
    /// of the run before is kept as `worker.log.<n>`.
    pub fn restart(&mut self) {
        self.kill9();
        self.launch.runs += 1;
        let log = self.dir.path().join("worker.log");
        std::fs::rename(&log, self.dir.path().join(format!("worker.log.{}", self.launch.runs))).expect("keep the log");
        self.child = Some(Self::start_child(self.dir.path(), &self.launch));
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let (config, subcommand) = (&self.launch.config, self.launch.subcommand.as_str());
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        // Ready: reading jobs, and (its group created) device configuration.
        let ready = |log: &str| match subcommand {
            "agent" | "up" => {
                log.contains("agent ready") && (config.redis_url.is_none() || log.contains("worker ready"))
            }
            "monitor" => log.contains("monitor ready") && log.contains("monitor reading the fleet's streams"),
            _ => {
                log.contains("worker ready")
                    && (config.worker.config_queue.is_empty() || log.contains("reading device configuration"))
            }
        };
        while !ready(&self.log()) {
            assert!(
                std::time::Instant::now() < deadline,
                "the worker process was not ready within 60 s; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn spawn(config: &Config, wrapper: &[&str], subcommand: &str, env: &[(&str, &str)]) -> WorkerProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = config.clone();
        config.sandbox = sandbox_config(Some(&dir.path().join("cache")));
        config.node.state_dir.get_or_insert_with(|| dir.path().join("state"));
        let file = dir.path().join("citadel.toml");
        std::fs::write(&file, toml::to_string(&config).expect("config serializes")).expect("write config");
        let launch = Launch {
            config,
            wrapper: wrapper.iter().map(|word| word.to_string()).collect(),
            subcommand: subcommand.to_string(),
            env: env
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            runs: 0,
        };
        let child = Self::start_child(dir.path(), &launch);
        WorkerProcess {
            child: Some(child),
            dir,
            launch,
        }
    }

    fn start_child(dir: &std::path::Path, launch: &Launch) -> Child {
        let log = std::fs::File::create(dir.join("worker.log")).expect("worker log");
        let stdout = std::fs::File::create(dir.join("worker.stdout")).expect("worker stdout");
        if !launch.wrapper.is_empty() {
            use std::os::unix::fs::PermissionsExt;
            for path in [dir.to_path_buf(), dir.join("worker.log")] {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
            }
        }
        let (program, prefix) = match launch.wrapper.split_first() {
            Some((program, rest)) => (std::path::PathBuf::from(program), rest.to_vec()),
            None => (citadel_bin(), Vec::new()),
        };
        let mut command = Command::new(program);
        if !launch.wrapper.is_empty() {
            command.args(prefix).arg(citadel_bin());
        }
        command
            .arg("--config")
            .arg(dir.join("citadel.toml"))
            .args(["--log", "info", &launch.subcommand])
            .env_remove("CITADEL_CONFIG")
            .envs(launch.env.iter().map(|(key, value)| (key, value)))
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .expect("spawn citadel")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Its temp dir (config, log, cache, state).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("worker.log")).unwrap_or_default()
    }

    /// What it printed on stdout so far (`citadel up`'s progress lines).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("worker.stdout")).unwrap_or_default()
    }

    /// Its consumer name, from the `worker ready` line.
    pub fn consumer(&self) -> String {
        self.logged("consumer=")
    }

    /// A monitor's API base URL, from its `monitor ready` line.
    pub fn monitor_url(&self) -> String {
        self.logged("monitor ready addr=")
    }

    /// The status server's base URL, from its log line.
    pub fn status_url(&self) -> String {
        self.logged("status server listening addr=")
    }

    /// The first word after `key` in the log.
    fn logged(&self, key: &str) -> String {
        let log = self.log();
        let at = log
            .find(key)
            .unwrap_or_else(|| panic!("the log has no {key:?}:\n{log}"))
            + key.len();
        log[at..]
            .split_whitespace()
            .next()
            .unwrap()
            .trim_matches(|c: char| !c.is_ascii_graphic())
            .to_string()
    }

    /// SIGKILL: the worker dies without any chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            let _ = child.wait();
        }
    }

    /// Send SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("kill -TERM");
        assert!(status.success());
    }

    /// Wait for it to exit.
    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let mut status = None;
        wait_until(within, "the worker process to exit", || {
            status = child.try_wait().expect("try_wait");
            status.is_some()
        });
        self.child = None;
        status.expect("exited")
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// XADD a job in the wire format; returns the entry id.
pub fn enqueue(conn: &mut redis::Connection, job_id: &str, job_type: &str, payload: &str) -> String {
    enqueue_fields(conn, &[("jobId", job_id), ("type", job_type), ("payload", payload)])
}

/// XADD an entry with arbitrary fields; returns the entry id.
pub fn enqueue_fields(conn: &mut redis::Connection, fields: &[(&str, &str)]) -> String {
    redis::cmd("XADD")
        .arg(QUEUE)
        .arg("*")
        .arg(fields)
        .query(conn)
        .expect("XADD")
}

/// `job:{id}:status` as a map (empty when absent).
pub fn status(conn: &mut redis::Connection, job_id: &str) -> HashMap<String, String> {
    conn.hgetall(format!("job:{job_id}:status")).expect("HGETALL")
}

/// The job's events from its replay stream, in order.
pub fn events(conn: &mut redis::Connection, job_id: &str) -> Vec<Value> {
    let entries: redis::streams::StreamRangeReply =
        conn.xrange_all(format!("stream:v1:{job_id}:events")).expect("XRANGE");
    entries
        .ids
        .iter()
        .map(|entry| {
            let text: String = entry.get("event").expect("event field");
            serde_json::from_str(&text).expect("event is JSON")
        })
        .collect()
}

/// The `type` of each of the job's events, in order.
pub fn event_types(conn: &mut redis::Connection, job_id: &str) -> Vec<String> {
    events(conn, job_id)
        .iter()
        .map(|event| event["type"].as_str().unwrap().to_string())
        .collect()
}

/// Entries delivered and not acknowledged, across the group.
pub fn pending(conn: &mut redis::Connection) -> usize {
    let summary: redis::streams::StreamPendingReply = conn.xpending(QUEUE, "citadel-workers").expect("XPENDING");
    summary.count()
}

/// What a reclaim test needs to see when it fails: every pending entry
/// (consumer, idle ms, deliveries), the group's consumers and which of them
/// have a liveness key.
pub fn reclaim_diagnostics(conn: &mut redis::Connection) -> String {
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(QUEUE)
        .arg("citadel-workers")
        .arg("-")
        .arg("+")
        .arg(100)
        .query(conn)
        .unwrap_or(redis::Value::Nil);
    let consumers: redis::Value = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(QUEUE)
        .arg("citadel-workers")
        .query(conn)
        .unwrap_or(redis::Value::Nil);
    let keys: Vec<String> = conn.keys("citadel:v1:consumer:*").unwrap_or_default();
    format!("pending: {pending:?}\nconsumers: {consumers:?}\nliveness keys: {keys:?}")
}

/// The dead-letter entries, in order.
pub fn dead_letters(conn: &mut redis::Connection) -> Vec<HashMap<String, String>> {
    stream_entries(conn, DLQ)
}

/// Every entry of the stream `key`, oldest first, as field maps.
pub fn stream_entries(conn: &mut redis::Connection, key: &str) -> Vec<HashMap<String, String>> {
    let entries: redis::streams::StreamRangeReply = conn.xrange_all(key).expect("XRANGE");
    entries
        .ids
        .iter()
        .map(|entry| {
            entry
                .map
                .keys()
                .map(|key| (key.clone(), entry.get::<String>(key).unwrap()))
                .collect()
        })
        .collect()
}

/// Wait until `job:{id}:status` has `status` = `want`.
pub async fn wait_status(redis: &RedisServer, job_id: &str, want: &str, within: Duration) -> HashMap<String, String> {
    let mut conn = redis.conn();
    let mut last = HashMap::new();
    crate::eventually(within, &format!("job {job_id} to be {want}"), || {
        last = status(&mut conn, job_id);
        last.get("status").map(String::as_str) == Some(want)
    })
    .await;
    last
}
