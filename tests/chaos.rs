//! The whole node fleet under load while things break at random: a real
//! `redis-server` with an append-only file, three `citadel work` processes,
//! a producer at a fixed rate with a mix of job types, and a chaos loop that
//! `kill -9`s, SIGTERMs and restarts workers and restarts Redis. When the
//! chaos stops, an invariant checker reads Redis (statuses, replay streams,
//! the DLQ, the PEL) and fails the test on any lost job, any job that ran
//! again after its final `end`, any job whose outcome is not the one its
//! type must have, any rerun not explained by a killed worker, or anything
//! left pending.
//!
//! Short in CI (`CITADEL_CHAOS_SECS`, default 40 s). The soak
//! (`scripts/bench` sets `CITADEL_CHAOS_SECS=1800` and
//! `CITADEL_CHAOS_REPORT=<dir>`) also samples every worker's RSS and open
//! files and Redis's memory every `CITADEL_CHAOS_SAMPLE_SECS` (10 s) and
//! writes the report and the samples there for the README's plot.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use citadel_tests::{QUEUE, RedisServer, WorkerProcess, events, eventually, pending, status, worker_config};
use citadel_transports::redis::{Endpoint, RedisSettings};
use rand::Rng;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Jobs the producer enqueues per second.
const RATE_PER_S: u64 = 20;
/// Worker processes.
const WORKERS: usize = 3;
/// The dead-letter queue of `QUEUE`.
const DLQ: &str = "dlq:v1:gpu-general";

/// The job types of the mix and the outcome each must end with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    /// `echo`: completes.
    Fast,
    /// `slow`, 400 ms in 4 chunks: completes (streams on the way).
    Streaming,
    /// `flaky`, succeeding on its second attempt: completes after a retry.
    Failing,
    /// `flaky` that never succeeds: dead-lettered after `max_attempts`.
    Poison,
    /// `trap` (bad-trap): fails once, not retried.
    Trap,
}

impl Kind {
    fn of(n: u64) -> Kind {
        match n % 10 {
            0..=4 => Kind::Fast,
            5 | 6 => Kind::Streaming,
            7 => Kind::Failing,
            8 => Kind::Poison,
            _ => Kind::Trap,
        }
    }

    fn job(self) -> (&'static str, &'static str) {
        match self {
            Kind::Fast => ("echo", r#"{"chaos":true}"#),
            Kind::Streaming => ("slow", r#"{"ms":400,"chunks":4}"#),
            Kind::Failing => ("flaky", r#"{"succeed_on_attempt":2}"#),
            Kind::Poison => ("flaky", r#"{"never":true}"#),
            Kind::Trap => ("trap", "{}"),
        }
    }

    /// How many times the job starts when no worker dies under it: a
    /// recoverable failure is retried silently (a new `claimed` and `start`,
    /// no event in between), so retries are told from reruns by count.
    fn starts(self, max_attempts: u32) -> usize {
        match self {
            Kind::Fast | Kind::Streaming | Kind::Trap => 1,
            Kind::Failing => 2,
            Kind::Poison => max_attempts as usize,
        }
    }

    /// The final status the job must reach.
    fn outcome(self) -> &'static str {
        match self {
            Kind::Fast | Kind::Streaming | Kind::Failing => "completed",
            Kind::Poison => "dead_lettered",
            Kind::Trap => "failed",
        }
    }
}

/// What the producer got Redis to acknowledge.
type Submitted = Arc<Mutex<Vec<(String, Kind)>>>;

/// Enqueue `RATE_PER_S` jobs a second until `stop`, trimming the queue as
/// a producer does (`MAXLEN ~ 10000`). Each job goes in with a marker
/// (expiring after `keep`) in one `MULTI`, so a reply lost to a Redis
/// restart can be told from a write that never happened, and the job is
/// never added twice.
async fn produce(redis: Endpoint, submitted: Submitted, keep: Duration, stop: CancellationToken) {
    let mut conn = redis.command_connection();
    let mut ticks = tokio::time::interval(Duration::from_millis(1000 / RATE_PER_S));
    let mut n = 0u64;
    while !stop.is_cancelled() {
        ticks.tick().await;
        let kind = Kind::of(n);
        let (job_type, payload) = kind.job();
        let id = format!("chaos-{n}");
        let marker = format!("chaos:submitted:{id}");
        let written = redis::pipe()
            .atomic()
            .cmd("XADD")
            .arg(QUEUE)
            .arg("MAXLEN")
            .arg("~")
            .arg(10_000)
            .arg("*")
            .arg(&[("jobId", id.as_str()), ("type", job_type), ("payload", payload)])
            .ignore()
            .cmd("SET")
            .arg(&marker)
            .arg(1)
            .arg("EX")
            .arg(keep.as_secs())
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .is_ok()
            || redis::cmd("EXISTS")
                .arg(&marker)
                .query_async::<bool>(&mut conn)
                .await
                .unwrap_or(false);
        if written {
            submitted.lock().unwrap().push((id, kind));
            n += 1;
        }
    }
}

/// Faults injected, by kind.
#[derive(Debug, Default)]
struct Faults {
    kill9: u32,
    sigterm: u32,
    redis_restart: u32,
}

/// One sample of the soak.
#[derive(Debug)]
struct Sample {
    at_s: f64,
    rss_kib: u64,
    open_files: u64,
    redis_bytes: u64,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| value.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn open_files(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count() as u64)
}

fn redis_memory(conn: &mut redis::Connection) -> u64 {
    redis::cmd("INFO")
        .arg("memory")
        .query::<String>(conn)
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("used_memory:"))
                .and_then(|value| value.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// What the checker found for one job in its replay stream.
#[derive(Debug, Default, PartialEq, Eq)]
struct Runs {
    /// `start` events.
    starts: usize,
    /// Starts after the job's final `end` or final `error`: never allowed.
    after_final: usize,
}

fn runs(events: &[Value]) -> Runs {
    let mut runs = Runs::default();
    let mut finished = false;
    for event in events {
        match event["type"].as_str() {
            Some("start") => {
                runs.starts += 1;
                runs.after_final += usize::from(finished);
            }
            // Only final errors are events: a retried failure is not.
            Some("end" | "error") => finished = true,
            _ => {}
        }
    }
    runs
}

/// Reads Redis and judges every submitted job once it has ended: its
/// outcome, its starts, its dead letter. Rolling, so that in the soak a job
/// is judged before its records expire; the DLQ is drained of the letters
/// it has judged, as an operator would.
struct Checker {
    max_attempts: u32,
    /// Submitted, not yet judged, with when they were taken in.
    waiting: Vec<(String, Kind, Instant)>,
    /// How many of `submitted` were taken in.
    taken: usize,
    judged: usize,
    outcomes: BTreeMap<String, usize>,
    wrong: Vec<String>,
    reruns: usize,
    after_final: usize,
    ran_more_than_once: usize,
    killed_out: usize,
    letters_wrong: Vec<String>,
}

impl Checker {
    fn new(max_attempts: u32) -> Checker {
        Checker {
            max_attempts,
            waiting: Vec::new(),
            taken: 0,
            judged: 0,
            outcomes: BTreeMap::new(),
            wrong: Vec::new(),
            reruns: 0,
            after_final: 0,
            ran_more_than_once: 0,
            killed_out: 0,
            letters_wrong: Vec::new(),
        }
    }

    /// Judge the jobs submitted at least `settled` ago that have ended.
    fn judge(&mut self, conn: &mut redis::Connection, submitted: &Submitted, settled: Duration) {
        let now = Instant::now();
        {
            let submitted = submitted.lock().unwrap();
            for (id, kind) in submitted[self.taken..].iter().cloned() {
                self.waiting.push((id, kind, now));
            }
            self.taken = submitted.len();
        }
        let ripe: Vec<(String, Kind, Instant)> = self
            .waiting
            .iter()
            .filter(|(_, _, at)| now.duration_since(*at) >= settled)
            .cloned()
            .collect();
        if ripe.is_empty() {
            return;
        }
        // Statuses first, the DLQ after: a job's final status and its dead
        // letter are written in one transaction, so a letter is never
        // missing from a DLQ read after its status was seen.
        let ended: Vec<(String, Kind, HashMap<String, String>)> = ripe
            .into_iter()
            .map(|(id, kind, _)| {
                let state = status(conn, &id);
                (id, kind, state)
            })
            .filter(|(_, _, state)| {
                matches!(
                    state.get("status").map(String::as_str),
                    Some("completed" | "failed" | "dead_lettered")
                )
            })
            .collect();
        let mut letters: HashMap<String, Vec<String>> = HashMap::new();
        for letter in dead_letter_entries(conn) {
            letters.entry(letter.1).or_default().push(letter.0);
        }
        for (id, kind, state) in ended {
            let final_status = state.get("status").cloned().unwrap_or_default();
            self.waiting.retain(|(waiting, _, _)| *waiting != id);
            self.judged += 1;
            let job_runs = runs(&events(conn, &id));
            let extra = job_runs.starts.saturating_sub(kind.starts(self.max_attempts));
            self.reruns += extra;
            self.after_final += job_runs.after_final;
            self.ran_more_than_once += usize::from(extra > 0);
            *self.outcomes.entry(final_status.clone()).or_default() += 1;
            // A job whose workers were killed under it on every delivery is
            // dead-lettered, as it must be (it may be what kills them).
            let killed_every_time = final_status == "dead_lettered"
                && extra > 0
                && state.get("error").is_some_and(|error| error.contains("deliveries"));
            self.killed_out += usize::from(killed_every_time && final_status != kind.outcome());
            if final_status != kind.outcome() && !killed_every_time {
                self.wrong
                    .push(format!("{id} ({kind:?}) ended {final_status}: {state:?}"));
            }
            let entries = letters.remove(&id).unwrap_or_default();
            if (final_status == "dead_lettered") != (entries.len() == 1) {
                self.letters_wrong
                    .push(format!("{id} ended {final_status} with {} dead letters", entries.len()));
            }
            if !entries.is_empty() {
                let _: usize = redis::cmd("XDEL").arg(DLQ).arg(&entries).query(conn).expect("XDEL");
            }
        }
    }

    /// Jobs submitted and not yet seen to end.
    fn unfinished(&self) -> Vec<String> {
        self.waiting.iter().map(|(id, _, _)| id.clone()).collect()
    }
}

/// The DLQ's entries: (entry id, job id).
fn dead_letter_entries(conn: &mut redis::Connection) -> Vec<(String, String)> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(DLQ)
        .arg("-")
        .arg("+")
        .query(conn)
        .expect("XRANGE");
    reply
        .ids
        .into_iter()
        .map(|entry| {
            let job: String = entry.get("jobId").unwrap_or_default();
            (entry.id, job)
        })
        .collect()
}

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_random_kills_and_restarts_no_job_is_lost_or_run_after_its_end() {
    let chaos_for = Duration::from_secs(env_secs("CITADEL_CHAOS_SECS", 40));
    let sample_every = Duration::from_secs(env_secs("CITADEL_CHAOS_SAMPLE_SECS", 10));
    let report_dir = std::env::var_os("CITADEL_CHAOS_REPORT").map(std::path::PathBuf::from);
    let soak = report_dir.is_some();

    let mut redis = RedisServer::start_persistent();
    let mut config = worker_config(&redis);
    config.worker.concurrency = 4;
    // In the soak, records expire soon after the checker has read them
    // (and the fleet's streams are short), so Redis holds a bounded window.
    let keep = Duration::from_secs(if soak { 120 } else { 3600 });
    if soak {
        config.worker.status_ttl_s = keep.as_secs();
        config.worker.events_stream_ttl_s = keep.as_secs();
        config.telemetry.events_stream_maxlen = 1000;
        // As Citadel's own publisher keeps it (the default, 10000, fills
        // for longer than the soak runs).
        config.telemetry.status_stream_maxlen = 1000;
        config.telemetry.heartbeat_ms = 100;
    }
    let concurrency = config.worker.concurrency as u32;
    let mut workers: Vec<WorkerProcess> = (0..WORKERS).map(|_| WorkerProcess::start(&config)).collect();

    let submitted: Submitted = Arc::default();
    let stop = CancellationToken::new();
    let endpoint = Endpoint::open(&redis.url(), &RedisSettings::default()).unwrap();
    let producer = tokio::spawn(produce(endpoint, Arc::clone(&submitted), keep, stop.clone()));
    let mut checker = Checker::new(config.worker.max_attempts);

    // The chaos loop: every 1–4 s one fault, at random; between faults the
    // checker judges what has ended (and the soak samples).
    let mut faults = Faults::default();
    let mut samples = Vec::new();
    let mut rng = rand::rng();
    let started = Instant::now();
    let mut next_sample = Instant::now();
    while started.elapsed() < chaos_for {
        let pause = Duration::from_millis(rng.random_range(1_000..4_000));
        let until = Instant::now() + pause;
        checker.judge(&mut redis.conn(), &submitted, Duration::from_secs(20));
        while Instant::now() < until {
            if soak && Instant::now() >= next_sample {
                let mut conn = redis.conn();
                samples.push(Sample {
                    at_s: started.elapsed().as_secs_f64(),
                    rss_kib: workers.iter().map(|worker| rss_kib(worker.pid())).sum(),
                    open_files: workers.iter().map(|worker| open_files(worker.pid())).sum(),
                    redis_bytes: redis_memory(&mut conn),
                });
                next_sample += sample_every;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let victim = rng.random_range(0..WORKERS);
        match rng.random_range(0..10) {
            0..=4 => {
                workers[victim].kill9();
                workers[victim].restart();
                faults.kill9 += 1;
            }
            5..=7 => {
                workers[victim].terminate();
                let status = workers[victim].wait(Duration::from_secs(30));
                assert!(status.success(), "a SIGTERM'd worker drains and exits 0: {status}");
                workers[victim].restart();
                faults.sigterm += 1;
            }
            _ => {
                redis.restart();
                faults.redis_restart += 1;
            }
        }
    }

    // Chaos over: stop producing and let the fleet drain. Not `eventually`:
    // a job that never ends is what the report counts as lost, after a
    // generous deadline.
    stop.cancel();
    producer.await.unwrap();
    let chaos_secs = started.elapsed().as_secs_f64();
    let drain_started = Instant::now();
    let mut conn = redis.conn();
    let drain_deadline = Instant::now() + Duration::from_secs(180);
    loop {
        checker.judge(&mut conn, &submitted, Duration::ZERO);
        if checker.waiting.is_empty() || Instant::now() > drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drain_secs = drain_started.elapsed().as_secs_f64();
    let unfinished = checker.unfinished();
    if unfinished.is_empty() {
        eventually(Duration::from_secs(60), "nothing pending", || pending(&mut conn) == 0).await;
    }

    let report = json!({
        "chaos_s": chaos_secs,
        "workers": WORKERS,
        "rate_per_s": RATE_PER_S,
        "faults": {"kill9": faults.kill9, "sigterm": faults.sigterm, "redis_restart": faults.redis_restart},
        "submitted": checker.taken,
        "completed": checker.outcomes.get("completed"),
        "failed": checker.outcomes.get("failed"),
        "dead_lettered": checker.outcomes.get("dead_lettered"),
        "dead_lettered_after_kills": checker.killed_out,
        "lost": unfinished.len(),
        "wrong_outcome": checker.wrong.len(),
        "started_after_final_end": checker.after_final,
        "reruns_after_a_worker_died": checker.reruns,
        "jobs_run_more_than_once": checker.ran_more_than_once,
        "drain_s": drain_secs,
    });
    eprintln!("chaos report: {report}");
    if let Some(dir) = &report_dir {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("chaos.json"), serde_json::to_string_pretty(&report).unwrap()).unwrap();
        let mut csv = String::from("at_s,rss_kib,open_files,redis_bytes\n");
        for sample in &samples {
            csv += &format!(
                "{:.1},{},{},{}\n",
                sample.at_s, sample.rss_kib, sample.open_files, sample.redis_bytes
            );
        }
        std::fs::write(dir.join("soak.csv"), csv).unwrap();
    }

    assert!(
        faults.kill9 + faults.sigterm + faults.redis_restart > 0,
        "chaos injected faults"
    );
    assert!(
        checker.taken as u64 >= RATE_PER_S * chaos_for.as_secs() / 4,
        "the producer kept up"
    );
    assert_eq!(
        unfinished,
        Vec::<String>::new(),
        "jobs submitted and never finished (lost)"
    );
    assert!(
        checker.wrong.is_empty(),
        "every job ends as its type must: {:#?}",
        checker.wrong
    );
    assert_eq!(checker.after_final, 0, "no job starts again after its final end");
    assert!(
        checker.letters_wrong.is_empty(),
        "one dead letter per dead-lettered job, none for others: {:?}",
        checker.letters_wrong
    );
    assert!(
        checker.reruns as u32 <= faults.kill9 * concurrency,
        "reruns only where a killed worker held the job: {} reruns, {} kills × {concurrency} slots",
        checker.reruns,
        faults.kill9
    );
    for worker in &mut workers {
        worker.terminate();
        assert!(worker.wait(Duration::from_secs(30)).success());
    }
}

#[test]
fn the_checker_counts_starts_and_tells_a_start_after_the_end() {
    let event = |kind: &str| json!({"type": kind, "data": {}});
    let (claimed, start, end, error) = (event("claimed"), event("start"), event("end"), event("error"));
    let retried = [
        claimed.clone(),
        start.clone(),
        claimed.clone(),
        start.clone(),
        end.clone(),
    ];
    assert_eq!(
        runs(&retried),
        Runs {
            starts: 2,
            after_final: 0
        }
    );
    assert_eq!(Kind::Failing.starts(3), 2, "a retried failing job starts twice");
    assert_eq!(
        runs(&[start.clone(), end.clone(), claimed, start.clone()]).after_final,
        1
    );
    assert_eq!(runs(&[start.clone(), error, start]).after_final, 1);
}
