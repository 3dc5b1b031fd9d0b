//! Noisy neighbours on a `concurrency = 8` node: one tenant without
//! `max_in_flight` floods it with spinning jobs (4, then 8 of them) while
//! another tenant sends trivial jobs one at a time. The spinners may not
//! take every slot while the other tenant wants one, and the trivial jobs
//! are not stuck behind them on the node's threads: each is served, and
//! its latency is measured against the same tenant's solo baseline in the
//! same run (`CITADEL_NEIGHBOURS_REPORT=dir` writes `neighbours.json` for
//! `scripts/bench`, with `CITADEL_NEIGHBOURS_JOBS` trivial jobs a phase).

use std::time::Duration;

use citadel_tests::{
    RedisServer, Victim, WorkerProcess, enqueue_fields, event_types, latency_summary, percentile, save_report,
    worker_config,
};
use serde_json::{Value, json};

/// Trivial jobs sent before anything is measured.
const WARM_UP: usize = 50;

/// The flooding tenant's jobs spin until this deadline (ms).
const SPIN_MS: u64 = 6_000;

/// Enqueue `count` spinning jobs of tenant `spinner`; their ids.
fn flood(conn: &mut redis::Connection, phase: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|n| {
            let job_id = format!("spin-{phase}-{n}");
            let payload = json!({"tenant": "spinner", "timeout_ms": SPIN_MS}).to_string();
            enqueue_fields(conn, &[("jobId", &job_id), ("type", "spin"), ("payload", &payload)]);
            job_id
        })
        .collect()
}

/// How many of `jobs` have started (and not ended).
fn running(conn: &mut redis::Connection, jobs: &[String]) -> usize {
    jobs.iter()
        .filter(|job| event_types(conn, job).last().is_some_and(|last| last == "start"))
        .count()
}

/// Wait until every job of `jobs` has ended.
async fn all_end(conn: &mut redis::Connection, jobs: &[String]) {
    citadel_tests::eventually(
        Duration::from_millis(3 * SPIN_MS),
        "the spinning jobs to end at their deadline",
        || {
            jobs.iter()
                .all(|job| event_types(conn, job).last().is_some_and(|last| last == "error"))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_leaves_another_one_its_share_and_its_latency() {
    let jobs: usize = std::env::var("CITADEL_NEIGHBOURS_JOBS")
        .ok()
        .and_then(|jobs| jobs.parse().ok())
        .unwrap_or(40);
    let redis = RedisServer::start();
    let mut config = worker_config(&redis);
    config.worker.concurrency = 8;
    let worker = WorkerProcess::start(&config);
    let mut conn = redis.conn();
    let mut victim = Victim::new(&redis, "victim").await;

    // Warmed up, then alone: the baseline, measured again at the end; the
    // faster of the two is the one the ratios are against.
    victim.round_trips(WARM_UP).await;
    let solo_before = victim.round_trips(jobs).await;
    let mut report = json!({"concurrency": 8, "solo_before": latency_summary(&solo_before)});

    for spinners in [4usize, 8] {
        let phase = format!("{spinners}");
        let flooding = flood(&mut conn, &phase, spinners);
        // The flood is in: as many spinners run as may (all 4; 7 of 8, one
        // slot kept back) before the other tenant's first job.
        let expected = spinners.min(7);
        citadel_tests::eventually(Duration::from_secs(10), "the spinners to start", || {
            running(&mut conn, &flooding) == expected
        })
        .await;
        let during = victim.round_trips(jobs).await;
        let still = running(&mut conn, &flooding);
        assert!(
            still >= expected.min(4),
            "the spinners ran throughout the measurement ({still} still running)"
        );
        // A generous bound on behaviour (the flood's deadline is 6 s): the
        // other tenant was never shut out until spinners ended.
        let p99 = percentile(&during, 0.99);
        assert!(p99 < Duration::from_secs(2), "{spinners} spinners: victim p99 {p99:?}");
        report[format!("spinners_{spinners}")] = latency_summary(&during);
        all_end(&mut conn, &flooding).await;
    }
    let solo_after = victim.round_trips(jobs).await;
    report["solo_after"] = latency_summary(&solo_after);
    let p99 = |phase: &Value| phase["p99_ms"].as_f64().unwrap();
    report["solo"] = if p99(&report["solo_after"]) < p99(&report["solo_before"]) {
        report["solo_after"].clone()
    } else {
        report["solo_before"].clone()
    };
    for spinners in [4, 8] {
        let ratio = p99(&report[format!("spinners_{spinners}")]) / p99(&report["solo"]);
        report[format!("p99_ratio_{spinners}")] = json!((ratio * 100.0).round() / 100.0);
    }
    println!("noisy neighbours: {report}");
    save_report("CITADEL_NEIGHBOURS_REPORT", "neighbours", &report);
    drop(worker);
}
