//! Node telemetry end to end: the collector on this machine's real /proc
//! and cgroups, status on a real Redis, the HTTP publisher against a real
//! HTTP endpoint that fails and recovers, and the status server's routes
//! read with a real HTTP client. The fakes stand where CI has no GPU: an
//! `nvidia-smi` that hangs (fault injection), and a **fake `nvidia-smi`**
//! reporting two GPUs with a real managed service's processes on both.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use citadel_collector::status::{NodeIdentity, Reported, StatusMessage, status_message};
use citadel_collector::{Collector, CollectorConfig, GpuSourceChoice, Hierarchy, Snapshot, Watch};
use citadel_runtime::Config;
use citadel_tests::*;
use citadel_transports::http_guard::CONNECTIONS_PER_CLIENT;
use citadel_transports::status::{
    Access, Health, HttpPublisher, HttpPublisherConfig, ServerEvent, StatusServer, StatusSource,
};
use redis::Commands;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

const SETTLE: Duration = Duration::from_secs(20);

fn collector_config() -> CollectorConfig {
    CollectorConfig {
        probe_timeout: Duration::from_secs(2),
        ..CollectorConfig::default()
    }
}

/// Collect until `ready` holds (rates need two samples and some wall time).
async fn collect_until(
    collector: &Collector,
    watches: &[Watch],
    what: &str,
    ready: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    let deadline = Instant::now() + SETTLE;
    let mut ticks = tokio::time::interval(Duration::from_millis(300));
    loop {
        ticks.tick().await;
        let snapshot = collector.collect(watches).await;
        if ready(&snapshot) {
            return snapshot;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {SETTLE:?} waiting for {what}; last snapshot: {snapshot:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_snapshot_matches_the_machine() {
    let collector = Collector::new(collector_config()).await;
    let snapshot = collect_until(&collector, &[], "a system sample", |snapshot| snapshot.system.is_some()).await;
    let system = snapshot.system.as_ref().unwrap();

    let nproc = Command::new("nproc").arg("--all").output().expect("nproc");
    let nproc: usize = String::from_utf8_lossy(&nproc.stdout).trim().parse().unwrap();
    assert_eq!(system.cpu_cores, nproc, "CPU cores = nproc --all");
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let mem_total_kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("MemTotal in /proc/meminfo");
    assert_eq!(
        system.memory_total_bytes,
        mem_total_kib * 1024,
        "memory total = MemTotal"
    );
    assert!(system.memory_used_bytes > 0 && system.memory_used_bytes < system.memory_total_bytes);
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(system.hostname, hostname.trim());
    assert!((0.0..=100.0).contains(&system.cpu_percent), "{}", system.cpu_percent);
    let root = &system.disks[0];
    assert_eq!(root.mount, "/");
    assert!(root.total_bytes > 0 && root.used_bytes <= root.total_bytes);
    if snapshot.gpu.source == "none" {
        assert!(snapshot.gpu.gpus.is_empty());
        let reason = snapshot
            .gpu
            .unavailable
            .as_deref()
            .expect("a reason when there are no GPUs");
        assert!(reason.contains("NVML"), "{reason}");
        assert!(
            snapshot.errors.is_empty(),
            "no GPU is not an error: {:?}",
            snapshot.errors
        );
    }

    // And as the StatusMessage, with Citadel's field names.
    let identity = NodeIdentity {
        id: "n1".into(),
        name: "node one".into(),
        agent_version: "0.1.0".into(),
        started_at: snapshot.at,
        tags: vec!["eu".into()],
        device_code: None,
        device_config: None,
    };
    let message = serde_json::to_value(status_message(&identity, &snapshot, &Reported::default())).unwrap();
    assert_citadel_status_shape(&message, "n1");
    assert_eq!(message["status"]["node"]["cpu_cores"], nproc);
}

/// Every field DESIGN §3 names, with the right JSON type.
fn assert_citadel_status_shape(message: &Value, node_id: &str) {
    assert_eq!(message["version"], "1.0");
    assert_eq!(message["nodeId"], node_id);
    assert!(
        message["timestamp"].as_str().is_some_and(|at| at.ends_with('Z')),
        "{message}"
    );
    let status = &message["status"];
    for key in ["version", "timestamp"] {
        assert!(status[key].is_string(), "status.{key}: {status}");
    }
    assert!(status["node"]["name"].is_string());
    assert!(status["node"]["uptime_seconds"].is_u64());
    for key in [
        "cpu_percent",
        "memory_used_gb",
        "memory_total_gb",
        "memory_percent",
        "memory_available_gb",
        "disk_used_gb",
        "disk_total_gb",
        "disk_available_gb",
        "disk_percent",
    ] {
        assert!(
            status["system"][key].is_number(),
            "status.system.{key}: {}",
            status["system"]
        );
    }
    let system = &status["system"];
    let (available, total) = (
        system["memory_available_gb"].as_f64().unwrap(),
        system["memory_total_gb"].as_f64().unwrap(),
    );
    assert!(available > 0.0 && available <= total, "{system}");
    let disk_available = system["disk_available_gb"].as_f64().unwrap();
    assert!(
        disk_available > 0.0 && disk_available <= system["disk_total_gb"].as_f64().unwrap(),
        "{system}"
    );
    for key in ["gpu", "services", "processes", "collector_errors"] {
        assert!(status[key].is_array(), "status.{key}: {status}");
    }
    for gpu in status["gpu"].as_array().unwrap() {
        for key in [
            "index",
            "name",
            "uuid",
            "memory_used_mb",
            "memory_total_mb",
            "utilization_percent",
            "temperature_celsius",
            "power_watts",
            "driver",
        ] {
            assert!(gpu.get(key).is_some(), "gpu.{key}: {gpu}");
        }
    }
    let worker = &status["worker"];
    assert!(worker["consuming"].is_boolean());
    for key in ["in_flight", "processed", "failed"] {
        assert!(worker[key].is_u64(), "worker.{key}: {worker}");
    }
    assert!(worker.get("last_job_consumed_at").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_cgroup_reports_cpu_memory_and_io_rates_from_its_processes() {
    let hierarchy = Hierarchy::detect().expect("a cgroup hierarchy");
    let mut groups = TestCgroups::new(&hierarchy);
    let burner = groups.spawn("work", "while :; do :; done");
    // Direct I/O, so the writes reach the block layer (and its counters)
    // instead of the page cache.
    let scratch = tempfile::tempdir_in(workspace().join("target")).unwrap();
    let file = scratch.path().join("io");
    groups.spawn(
        "work",
        &format!(
            "while :; do dd if=/dev/zero of={} bs=1M count=8 oflag=direct conv=notrunc status=none; done",
            file.display()
        ),
    );
    groups.wait_joined(SETTLE);
    let collector = Collector::new(collector_config()).await;
    let watches = [
        Watch {
            name: "burner".into(),
            pid: Some(burner),
            cgroup: None,
        },
        Watch {
            name: "group".into(),
            pid: None,
            cgroup: Some(groups.path("work")),
        },
    ];
    let snapshot = collect_until(&collector, &watches, "CPU and write rates of the group", |snapshot| {
        snapshot.watched.iter().all(|watched| {
            watched.cgroup.as_ref().is_some_and(|cgroup| {
                cgroup.cpu_percent.is_some_and(|cpu| cpu > 20.0)
                    && cgroup.io_write_bytes_per_s.is_some_and(|rate| rate > 0.0)
            })
        })
    })
    .await;
    assert!(snapshot.errors.is_empty(), "{:?}", snapshot.errors);
    let by_pid = &snapshot.watched[0];
    let by_path = &snapshot.watched[1];
    let process = by_pid.process.as_ref().expect("the burner's /proc entry");
    assert_eq!(process.pid, burner);
    assert_eq!(process.cmdline[0], "sh");
    assert!(process.rss_bytes > 0);
    let cgroup = by_path.cgroup.as_ref().unwrap();
    assert_eq!(
        by_pid.cgroup.as_ref().unwrap().path,
        cgroup.path,
        "the burner's cgroup is found from /proc"
    );
    assert_eq!(cgroup.version, hierarchy.version());
    assert!(cgroup.memory_bytes > 0, "{cgroup:?}");
    // Two busy processes on a 2-core machine: well above 20 %, at most all cores.
    let cpu = cgroup.cpu_percent.unwrap();
    let cores = std::thread::available_parallelism().unwrap().get() as f64;
    assert!(cpu <= cores * 100.0 + 10.0, "{cpu}");
    println!(
        "group: cpu {cpu:.1} %, writes {:.0} B/s, memory {} B",
        cgroup.io_write_bytes_per_s.unwrap(),
        cgroup.memory_bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_nvidia_smi_does_not_stall_collection() {
    // Fault injection: an `nvidia-smi` that never answers.
    let dir = tempfile::tempdir().unwrap();
    let smi = dir.path().join("nvidia-smi");
    std::fs::write(&smi, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&smi, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let timeout = Duration::from_millis(300);
    let collector = Collector::new(CollectorConfig {
        probe_timeout: timeout,
        gpu_source: GpuSourceChoice::NvidiaSmi,
        smi: smi.display().to_string(),
        ..CollectorConfig::default()
    })
    .await;
    assert_eq!(collector.gpu_source(), "nvidia-smi", "the fake, even where NVML loads");
    for _ in 0..3 {
        let snapshot = collector.collect(&[]).await;
        assert!(
            snapshot.took < timeout + Duration::from_secs(1),
            "took {:?}",
            snapshot.took
        );
        assert!(snapshot.system.is_some(), "the rest of the snapshot is there");
        assert!(snapshot.gpu.gpus.is_empty());
        let gpu_errors: Vec<_> = snapshot.errors.iter().filter(|err| err.probe == "gpu").collect();
        assert_eq!(gpu_errors.len(), 1, "{:?}", snapshot.errors);
        assert!(gpu_errors[0].error.contains("timed out"), "{:?}", gpu_errors[0]);
    }
    // The hung programs were killed, not left behind.
    eventually(SETTLE, "the hung nvidia-smi children to be gone", || {
        !hung_children_running()
    })
    .await;
}

/// Whether a child of this process still runs `sleep 60` (what the hung
/// `nvidia-smi` became).
fn hung_children_running() -> bool {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let cmdline = std::fs::read_to_string(entry.path().join("cmdline")).unwrap_or_default();
        let parent = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .unwrap_or("");
        parent == me && cmdline == "sleep\u{0}60\u{0}"
    })
}

fn node_config(redis: &RedisServer) -> Config {
    let mut config = worker_config(redis);
    // Long interval: what arrives in a test arrives because something changed.
    config.telemetry.status_interval_s = 600;
    config.telemetry.min_change_interval_ms = 100;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_goes_to_the_redis_stream_and_channel_at_start_and_on_change() {
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let mut subscriber = redis.conn();
    let mut pubsub = subscriber.as_pubsub();
    pubsub.subscribe(format!("node:status:{NODE}")).unwrap();
    pubsub.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    // A GPU (the fake nvidia-smi), so that its fields are checked too.
    let smi = FakeSmi::new(41);
    let mut config = node_config(&redis);
    config.telemetry.gpu_source = GpuSourceChoice::NvidiaSmi;
    config.telemetry.nvidia_smi = smi.program().display().to_string();
    let node = TestWorker::start_node(&config).await;

    // The first status, at start.
    let first = next_status(&mut pubsub, |_| true);
    assert_citadel_status_shape(&first, NODE);
    let gpus = first["status"]["gpu"].as_array().unwrap();
    assert_eq!(gpus.len(), 1, "the fake's one GPU: {gpus:?}");
    assert_eq!(gpus[0]["temperature_celsius"], 41);
    assert_eq!(first["status"]["node"]["mode"], "redis");
    // A job finishing is a change: published at once, not in 600 s.
    enqueue(&mut conn, "job-status-1", "echo", r#"{"text":"a b"}"#);
    let after = next_status(&mut pubsub, |status| status["status"]["worker"]["processed"] == 1);
    assert_eq!(after["status"]["worker"]["failed"], 0);
    assert_eq!(after["status"]["worker"]["consuming"], true);
    assert!(after["status"]["worker"]["last_job_consumed_at"].is_string());

    // The stream holds the same messages: nodeId, timestamp, status, payload.
    let entries: redis::streams::StreamRangeReply = conn.xrange_all("node:status:stream").unwrap();
    assert!(entries.ids.len() >= 2, "{} entries", entries.ids.len());
    let mut payloads = Vec::new();
    for entry in &entries.ids {
        let fields: BTreeSet<&str> = entry.map.keys().map(String::as_str).collect();
        assert_eq!(fields, BTreeSet::from(["nodeId", "timestamp", "status", "payload"]));
        let field = |name: &str| -> String { redis::from_redis_value(entry.map[name].clone()).unwrap() };
        assert_eq!(field("nodeId"), NODE);
        assert_eq!(field("status"), "online");
        let timestamp = field("timestamp");
        assert!(humantime_like(&timestamp), "{timestamp}");
        payloads.push(serde_json::from_str::<Value>(&field("payload")).unwrap());
    }
    assert!(
        payloads.contains(&first) && payloads.contains(&after),
        "the channel and the stream carry the same messages"
    );
    node.stop().await;
}

/// `2026-01-02T03:04:05Z`.
fn humantime_like(text: &str) -> bool {
    text.len() == 20 && text.as_bytes()[10] == b'T' && text.ends_with('Z')
}

/// The next status on `pubsub` that satisfies `wanted`.
fn next_status(pubsub: &mut redis::PubSub<'_>, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + SETTLE;
    loop {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for a status on the node's channel"
        );
        let Ok(message) = pubsub.get_message() else { continue };
        let status: Value = serde_json::from_str(&message.get_payload::<String>().unwrap()).unwrap();
        if wanted(&status) {
            return status;
        }
    }
}

fn seq_of(message: &str) -> u64 {
    serde_json::from_str::<Value>(message).unwrap()["seq"].as_u64().unwrap()
}

fn numbered(seq: u64) -> String {
    serde_json::json!({"seq": seq, "pad": "x".repeat(200)}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_publisher_spools_through_an_outage_and_replays_in_order() {
    let receiver = StatusReceiver::start(Answer::Unavailable).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("status-spool.jsonl");
    // Room for about ten messages on disk.
    let spool_max_bytes = 10 * (numbered(0).len() as u64 + 1) + 100;
    let config = HttpPublisherConfig {
        endpoint: receiver.url(),
        token: Some("s3cret".into()),
        queue: 4,
        spool: spool.clone(),
        spool_max_bytes,
        timeout: Duration::from_secs(2),
    };
    let publisher = HttpPublisher::start(config.clone()).unwrap();
    let sent = 40;
    for seq in 0..sent {
        publisher.submit(&numbered(seq));
    }
    eventually(SETTLE, "the endpoint to be tried while it is down", || {
        receiver.attempts() >= 2
    })
    .await;
    let stats = publisher.stats();
    let dropped = stats.dropped.load(std::sync::atomic::Ordering::Relaxed);
    assert!(dropped > 0, "the spool overflowed: oldest messages dropped and counted");
    let on_disk = std::fs::metadata(&spool).unwrap().len();
    assert!(
        on_disk <= spool_max_bytes,
        "spool {on_disk} B over its cap {spool_max_bytes} B"
    );
    assert!(receiver.accepted().is_empty());

    // The endpoint recovers: everything kept arrives, in order, once.
    receiver.answer(Answer::Accept);
    eventually(SETTLE, "the last message to arrive", || {
        receiver.accepted().last().is_some_and(|last| seq_of(last) == sent - 1)
    })
    .await;
    let seqs: Vec<u64> = receiver.accepted().iter().map(|message| seq_of(message)).collect();
    assert!(
        seqs.windows(2).all(|pair| pair[0] < pair[1]),
        "in order, no duplicates: {seqs:?}"
    );
    assert_eq!(
        seqs.len() as u64 + dropped,
        sent,
        "every message either arrived or was counted as dropped: {seqs:?}"
    );
    assert!(
        receiver
            .authorization()
            .iter()
            .all(|auth| auth.as_deref() == Some("Bearer s3cret"))
    );
    assert_eq!(publisher.backlog(), (0, 0));

    // A message the endpoint refuses (4xx) is dropped, not retried forever.
    receiver.answer(Answer::Reject);
    publisher.submit(&numbered(100));
    eventually(SETTLE, "the refusal to be counted", || {
        stats.rejected.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;
    receiver.answer(Answer::Accept);
    publisher.submit(&numbered(101));
    eventually(SETTLE, "the next message to arrive", || {
        receiver.accepted().last().is_some_and(|m| seq_of(m) == 101)
    })
    .await;

    // Down at shutdown: the queue goes to the spool, and the next run sends it.
    receiver.answer(Answer::Unavailable);
    for seq in 200..203 {
        publisher.submit(&numbered(seq));
    }
    publisher.shutdown().await;
    receiver.answer(Answer::Accept);
    let restarted = HttpPublisher::start(config).unwrap();
    eventually(SETTLE, "the spooled messages to arrive after a restart", || {
        receiver.accepted().last().is_some_and(|m| seq_of(m) == 202)
    })
    .await;
    let tail: Vec<u64> = receiver.accepted().iter().rev().take(3).map(|m| seq_of(m)).collect();
    assert_eq!(tail, [202, 201, 200]);
    restarted.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_pushes_status_over_http_and_jobs_do_not_wait_on_it() {
    let redis = RedisServer::start();
    // The endpoint takes each request and never answers: jobs must not notice.
    let receiver = StatusReceiver::start(Answer::Hang).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = node_config(&redis);
    config.telemetry.http_timeout_ms = 1_000;
    // Citadel's endpoint is a template on the node id.
    config.telemetry.http_endpoint = Some(format!("{}/api/fabric/nodes/{{id}}/status", receiver.base()));
    config.telemetry.spool_dir = Some(dir.path().to_path_buf());
    let node = TestWorker::start_node(&config).await;
    let mut conn = redis.conn();
    for n in 0..5 {
        enqueue(&mut conn, &format!("job-http-{n}"), "echo", r#"{"text":"x"}"#);
    }
    eventually(SETTLE, "the endpoint to be holding a request", || {
        receiver.attempts() >= 1
    })
    .await;
    for n in 0..5 {
        wait_status(&redis, &format!("job-http-{n}"), "completed", SETTLE).await;
    }
    assert!(receiver.accepted().is_empty(), "nothing was answered meanwhile");
    receiver.answer(Answer::Unavailable);
    let attempts = receiver.attempts();
    eventually(SETTLE, "a retry after the hung request timed out", || {
        receiver.attempts() > attempts
    })
    .await;
    receiver.answer(Answer::Accept);
    eventually(SETTLE, "a status with the five jobs to arrive", || {
        receiver
            .accepted()
            .iter()
            .any(|message| serde_json::from_str::<Value>(message).unwrap()["status"]["worker"]["processed"] == 5)
    })
    .await;
    let expected = format!("/api/fabric/nodes/{NODE}/status");
    assert!(
        receiver.paths().iter().all(|path| *path == expected),
        "{:?}",
        receiver.paths()
    );
    node.stop().await;
}

/// The HTTP client of the tests (citadel's own client set-up).
fn http() -> reqwest::Client {
    citadel_transports::http::client(SETTLE).expect("HTTP client")
}

async fn get(url: &str) -> (u16, String) {
    let response = http()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|err| panic!("GET {url}: {err}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_route_answers_and_health_follows_redis() {
    let mut redis = RedisServer::start();
    let node = TestWorker::start_node(&node_config(&redis)).await;
    let base = node.status_url();

    let client = citadel_transports::http::client(Duration::from_secs(5)).unwrap();
    let ping = client.get(format!("{base}/ping")).send().await.unwrap();
    assert_eq!(ping.status().as_u16(), 200);
    assert_eq!(ping.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(ping.text().await.unwrap(), "pong", "as Citadel documents it");

    let health = eventually_some(SETTLE, "healthy once the first snapshot is in", || async {
        let (code, body) = get(&format!("{base}/health")).await;
        (code == 200).then_some(body)
    })
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&health).unwrap(),
        serde_json::json!({"status": "ok"})
    );

    let (code, body) = get(&format!("{base}/status")).await;
    assert_eq!(code, 200);
    let served: Value = serde_json::from_str(&body).unwrap();
    assert_citadel_status_shape(&served, NODE);
    // The typed message reads what a live node serves, and writes it back
    // field for field.
    let typed: StatusMessage = serde_json::from_str(&body).unwrap();
    assert_eq!(serde_json::to_value(&typed).unwrap(), served);

    // Live events: a job's start and finish, and the status they trigger.
    let events = http().get(format!("{base}/events")).send().await.unwrap();
    assert_eq!(events.status(), 200);
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let mut conn = redis.conn();
    enqueue(&mut conn, "job-routes-1", "echo", r#"{"text":"hello there"}"#);
    let text = read_events_until(events, |text| text.contains(r#""event":"finished""#)).await;
    assert!(
        text.contains("event: job\ndata: {") && text.contains(r#""event":"started""#),
        "{text}"
    );
    assert!(
        text.contains(r#""jobId":"job-routes-1""#) && text.contains(r#""outcome":"ok""#),
        "{text}"
    );
    assert!(text.contains("event: status\ndata: {"), "{text}");

    let (code, metrics) = get(&format!("{base}/metrics")).await;
    assert_eq!(code, 200);
    for needle in [
        "citadel_jobs_started_total{type=\"echo\"} 1",
        "citadel_jobs_finished_total{type=\"echo\",outcome=\"ok\"} 1",
        "citadel_job_duration_seconds_bucket{",
        "citadel_job_first_chunk_seconds_count{type=\"echo\"} 1",
        "citadel_node_memory_total_bytes ",
        "# EOF",
    ] {
        assert!(metrics.contains(needle), "/metrics lacks {needle:?}:\n{metrics}");
    }

    let (code, body) = get(&format!("{base}/nope")).await;
    assert_eq!(code, 404, "{body}");
    let posted = http().post(format!("{base}/status")).send().await.unwrap();
    assert_eq!(posted.status().as_u16(), 405);

    // Redis dies: the node says so; Redis returns: healthy again.
    redis.kill();
    let unhealthy = eventually_some(SETTLE, "503 while Redis is down", || async {
        let (code, body) = get(&format!("{base}/health")).await;
        (code == 503).then_some(body)
    })
    .await;
    let unhealthy: Value = serde_json::from_str(&unhealthy).unwrap();
    assert_eq!(unhealthy["status"], "unhealthy");
    let reasons: Vec<&str> = unhealthy["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(
        reasons.iter().any(|reason| reason.starts_with("redis: unreachable")),
        "{reasons:?}"
    );
    // A status published into the outage fails and is said so; it is sent
    // again with the backoff once Redis returns (no 600 s wait, no change needed).
    node.telemetry().publish_once().await;
    let (code, body) = get(&format!("{base}/health")).await;
    assert_eq!(code, 503);
    assert!(body.contains("redis: cannot publish status"), "{body}");
    redis.restart();
    eventually_some(SETTLE, "healthy again once Redis is back", || async {
        (get(&format!("{base}/health")).await.0 == 200).then_some(())
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_names_a_failing_probe_and_the_status_still_flows() {
    // Fault injection: the GPU source hangs on every call.
    let dir = tempfile::tempdir().unwrap();
    let smi = dir.path().join("nvidia-smi");
    std::fs::write(&smi, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&smi, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let redis = RedisServer::start();
    let mut config = node_config(&redis);
    config.telemetry.gpu_source = GpuSourceChoice::NvidiaSmi;
    config.telemetry.nvidia_smi = smi.display().to_string();
    config.telemetry.probe_timeout_ms = 300;
    let node = TestWorker::start_node(&config).await;
    assert_eq!(
        node.telemetry().gpu_source(),
        "nvidia-smi",
        "the fake, even where NVML loads"
    );
    let base = node.status_url();
    let unhealthy = eventually_some(SETTLE, "503 naming the GPU probe", || async {
        let (code, body) = get(&format!("{base}/health")).await;
        (code == 503 && body.contains("gpu probe")).then_some(body)
    })
    .await;
    let unhealthy: Value = serde_json::from_str(&unhealthy).unwrap();
    let expected = format!("{} timed out after 300 ms (killed)", smi.display());
    assert_eq!(
        unhealthy["reasons"],
        serde_json::json!([format!("collector: gpu probe failing: {expected}")])
    );
    // The rest of the status is published regardless, with the error in it.
    let (code, body) = get(&format!("{base}/status")).await;
    assert_eq!(code, 200);
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_citadel_status_shape(&status, NODE);
    assert_eq!(
        status["status"]["collector_errors"],
        serde_json::json!([{"probe": "gpu", "error": expected}])
    );
    node.stop().await;
}

const STATUS_TOKEN: &str = "status-token-0123456789";

/// A status server on the event feed, asking for `STATUS_TOKEN` and for
/// request headers within `header_timeout`.
async fn guarded_server(header_timeout: Duration) -> (std::net::SocketAddr, CancellationToken) {
    let feed = Arc::new(Feed {
        events: broadcast::channel(16).0,
    });
    let access = Access {
        token: Some(STATUS_TOKEN.into()),
        header_timeout,
    };
    let server = StatusServer::bind("127.0.0.1:0".parse().unwrap(), access)
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(server.serve(feed, stop.clone()));
    (addr, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_server_asks_for_its_token_on_all_but_probes() {
    let (addr, stop) = guarded_server(Duration::from_secs(10)).await;
    let base = format!("http://{addr}");
    for path in ["/status", "/metrics", "/events", "/nowhere"] {
        let response = http().get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path} without a token");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let wrong = http()
            .get(format!("{base}{path}"))
            .bearer_auth("status-token-0123456780")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path} with a wrong token");
    }
    let metrics = http()
        .get(format!("{base}/metrics"))
        .bearer_auth(STATUS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let status = http()
        .get(format!("{base}/status"))
        .bearer_auth(STATUS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 503, "authorized: the feed has no status yet");
    for probe in ["/ping", "/health"] {
        let response = http().get(format!("{base}{probe}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{probe} is a probe: no token");
    }
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_server_drops_slow_and_oversized_headers() {
    let (addr, stop) = guarded_server(Duration::from_millis(500)).await;
    // Slowloris: headers begun, never finished.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /status HTTP/1.1\r\nhost: citadel\r\nx-slow: ")
        .await
        .unwrap();
    let answer = closed_within(&mut slow, Duration::from_secs(10)).await;
    assert!(answer.is_some(), "a client that never finishes its headers is dropped");
    // An idle connection that never sends a request goes the same way.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut idle, Duration::from_secs(10)).await.is_some());
    // Headers over the cap: refused, not buffered without end.
    let mut huge = tokio::net::TcpStream::connect(addr).await.unwrap();
    let header = format!(
        "GET /ping HTTP/1.1\r\nhost: citadel\r\nx-big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = huge.write_all(header.as_bytes()).await;
    let answer = closed_within(&mut huge, Duration::from_secs(10)).await.expect("closed");
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{answer}");
    // The server still serves.
    let ping = http().get(format!("http://{addr}/ping")).send().await.unwrap();
    assert_eq!(ping.status(), 200);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_hold_every_connection_of_the_status_server() {
    let (addr, stop) = guarded_server(Duration::from_secs(30)).await;
    let mut held = Vec::new();
    for _ in 0..CONNECTIONS_PER_CLIENT {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // The server admits in order: once the last held connection is served,
    // every one before it counts.
    let last = held.last_mut().unwrap();
    last.write_all(b"GET /ping HTTP/1.1\r\nhost: citadel\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 256];
    let n = last.read(&mut buffer).await.unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
    let mut over = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = over.write_all(b"GET /ping HTTP/1.1\r\nhost: citadel\r\n\r\n").await;
    let answer = closed_within(&mut over, Duration::from_secs(10)).await;
    assert_eq!(answer.as_deref(), Some(""), "over the cap: closed unanswered");
    // A place freed is a place to take.
    drop(held.pop());
    eventually(SETTLE, "a new connection to be served", || {
        std::net::TcpStream::connect(addr)
            .and_then(|mut stream| {
                use std::io::{Read, Write};
                stream.set_read_timeout(Some(Duration::from_secs(2)))?;
                stream.write_all(b"GET /ping HTTP/1.1\r\nhost: citadel\r\nconnection: close\r\n\r\n")?;
                let mut text = String::new();
                stream.read_to_string(&mut text)?;
                Ok(text.starts_with("HTTP/1.1 200"))
            })
            .unwrap_or(false)
    })
    .await;
    stop.cancel();
}

/// Read an SSE response until `done` holds for what was read.
async fn read_events_until(mut response: reqwest::Response, done: impl Fn(&str) -> bool) -> String {
    let mut text = String::new();
    let read = async {
        while let Some(chunk) = response.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if done(&text) {
                return;
            }
        }
        panic!("the event stream ended");
    };
    tokio::time::timeout(SETTLE, read)
        .await
        .unwrap_or_else(|_| panic!("no matching event in {SETTLE:?}"));
    text
}

/// The event feed of the SSE test: events it is handed, nothing else.
struct Feed {
    events: broadcast::Sender<ServerEvent>,
}

impl StatusSource for Feed {
    fn health(&self) -> Health {
        Health::default()
    }
    fn status(&self) -> Option<String> {
        None
    }
    fn metrics(&self) -> String {
        String::new()
    }
    fn subscribe(&self) -> broadcast::Receiver<ServerEvent> {
        self.events.subscribe()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_events_client_skips_ahead_and_holds_nobody_up() {
    let feed = Arc::new(Feed {
        events: broadcast::channel(16).0,
    });
    let server = StatusServer::bind("127.0.0.1:0".parse().unwrap(), Access::default())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let stop = CancellationToken::new();
    let serving = tokio::spawn(server.serve(feed.clone(), stop.clone()));

    // The slow client: a small receive window, and it reads nothing yet.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(addr).await.unwrap();
    slow.write_all(b"GET /events HTTP/1.1\r\nhost: citadel\r\n\r\n")
        .await
        .unwrap();
    // The fast client acknowledges every event it reads.
    let fast = http().get(format!("http://{addr}/events")).send().await.unwrap();
    let (acks, mut acked) = mpsc::unbounded_channel::<u64>();
    let reader = tokio::spawn(read_numbered_events(fast, acks));
    eventually(SETTLE, "both clients to subscribe", || {
        feed.events.receiver_count() == 2
    })
    .await;

    // Far more than the slow client's buffers hold: 2000 events of 16 KiB.
    let events = 2000u64;
    let pad = "y".repeat(16 * 1024);
    for seq in 0..events {
        let data = format!(r#"{{"seq":{seq},"pad":"{pad}"}}"#);
        feed.events
            .send(ServerEvent {
                kind: "big",
                data: data.into(),
            })
            .unwrap();
        // The fast client gets each event while the slow one is stuck.
        let got = tokio::time::timeout(SETTLE, acked.recv())
            .await
            .expect("the fast client is held up")
            .unwrap();
        assert_eq!(got, seq, "the fast client missed nothing");
    }
    reader.abort();

    // Now the slow client reads: what it had, a `lagged` event, then the newest.
    let mut text = Vec::new();
    let mut buffer = vec![0u8; 1 << 16];
    let last = format!(r#""seq":{}"#, events - 1);
    tokio::time::timeout(SETTLE, async {
        while !String::from_utf8_lossy(&text).contains(&last) {
            let read = slow.read(&mut buffer).await.unwrap();
            assert!(read > 0, "the server closed the slow client's stream");
            text.extend_from_slice(&buffer[..read]);
        }
    })
    .await
    .expect("the slow client catches up with the newest event");
    let text = String::from_utf8_lossy(&text);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{}", &text[..200.min(text.len())]);
    let lagged = text.find("event: lagged\ndata: {\"missed\":").expect("a lagged event");
    let seqs: Vec<u64> = text
        .match_indices(r#"{"seq":"#)
        .map(|(at, _)| text[at + 7..].split(',').next().unwrap().parse().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "in order");
    assert!(
        (seqs.len() as u64) < events,
        "it skipped ahead rather than buffering everything"
    );
    assert!(text[lagged..].contains(&last));
    stop.cancel();
    serving.await.unwrap();
}

/// Read `event: big` frames and acknowledge each one's `seq`.
async fn read_numbered_events(mut response: reqwest::Response, acks: mpsc::UnboundedSender<u64>) {
    let mut pending = String::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find("\n\n") {
            let frame: String = pending.drain(..end + 2).collect();
            if let Some(at) = frame.find(r#"{"seq":"#) {
                let seq = frame[at + 7..].split(',').next().unwrap().parse().unwrap();
                if acks.send(seq).is_err() {
                    return;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_spanning_two_gpus_reports_its_use_summed_with_the_breakdown() {
    // A tensor-parallel engine, as a fake nvidia-smi (CI has no GPU) sees it:
    // the service's main process on GPU 0 and a little on GPU 1, its worker
    // (a child in the same cgroup) on GPU 1. The processes are real.
    let dir = tempfile::tempdir().unwrap();
    let (main_pid, child_pid) = (dir.path().join("main.pid"), dir.path().join("child.pid"));
    let smi = dir.path().join("nvidia-smi");
    std::fs::write(
        &smi,
        format!(
            "#!/bin/sh\ncase \"$1\" in\n\
             --query-gpu=*) echo '0, NVIDIA H100 80GB HBM3, GPU-fake-0, 41000, 81559, 90, 40, 60, 500.5, 1980, 1980, 2619, 580.159.04'\n\
               echo '1, NVIDIA H100 80GB HBM3, GPU-fake-1, 40500, 81559, 88, 38, 59, 490.0, 1980, 1980, 2619, 580.159.04' ;;\n\
             --query-compute-apps=*) main=$(cat {main}); child=$(cat {child})\n\
               echo \"GPU-fake-0, $main, 40960\"; echo \"GPU-fake-1, $child, 39936\"; echo \"GPU-fake-1, $main, 512\" ;;\n\
             esac\n",
            main = main_pid.display(),
            child = child_pid.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&smi, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let redis = RedisServer::start();
    let slice = TestSlice::new();
    let mut config = worker_config(&redis);
    config.node.cgroup_slice = Some(slice.name().into());
    config.telemetry.gpu_source = GpuSourceChoice::NvidiaSmi;
    config.telemetry.nvidia_smi = smi.display().to_string();
    config.telemetry.status_interval_s = 1;
    let script = format!(
        "echo $$ > {}; sleep 600 & echo $! > {}; wait",
        main_pid.display(),
        child_pid.display()
    );
    config.services = vec![shell_service("engine", &script)];
    let node = WorkerProcess::start(&config);
    let base = node.status_url();
    // The fake, even where NVML loads.
    eventually_some(SETTLE, "a status read with the fake nvidia-smi", || async {
        (node_status(&base).await?["gpu_source"] == "nvidia-smi").then_some(())
    })
    .await;
    let gpu = eventually_some(SETTLE, "the engine's GPU use in processes[]", || async {
        let status = node_status(&base).await?;
        let engine = status["processes"]
            .as_array()?
            .iter()
            .find(|process| process["name"] == "engine")?
            .clone();
        (engine["gpu"]["gpus"].as_array()?.len() == 2).then_some(engine["gpu"].clone())
    })
    .await;
    let (main, child): (u64, u64) = (
        std::fs::read_to_string(&main_pid).unwrap().trim().parse().unwrap(),
        std::fs::read_to_string(&child_pid).unwrap().trim().parse().unwrap(),
    );
    assert_eq!(gpu["memory_mb"], 40960 + 39936 + 512, "summed over both GPUs: {gpu}");
    assert_eq!(gpu["gpus"][0]["index"], 0);
    assert_eq!(gpu["gpus"][0]["memory_mb"], 40960);
    assert_eq!(gpu["gpus"][0]["pids"], serde_json::json!([main]));
    assert_eq!(gpu["gpus"][1]["uuid"], "GPU-fake-1");
    assert_eq!(gpu["gpus"][1]["memory_mb"], 39936 + 512);
    let mut on_one: Vec<u64> = gpu["gpus"][1]["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pid| pid.as_u64().unwrap())
        .collect();
    on_one.sort_unstable();
    let mut expected = vec![main, child];
    expected.sort_unstable();
    assert_eq!(on_one, expected, "the worker counts: it is in the service's cgroup");
}

#[test]
fn any_request_is_answered_or_dropped_and_the_status_server_keeps_serving() {
    use proptest::test_runner::{Config as Cases, TestRunner};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (addr, stop) = runtime.block_on(guarded_server(Duration::from_secs(2)));
    let addr = addr.to_string();
    let mut runner = TestRunner::new(Cases::default());
    runner
        .run(&hostile_requests(), |request| {
            let answer = raw_request(&addr, &request, true).expect("the server accepts connections");
            proptest::prop_assert!(
                answer.is_empty() || answer.starts_with("HTTP/1.1 "),
                "not an HTTP answer: {answer:?}"
            );
            proptest::prop_assert!(!answer.starts_with("HTTP/1.1 5"), "a server error: {answer}");
            let ping = raw_request(
                &addr,
                b"GET /ping HTTP/1.1\r\nhost: citadel\r\nconnection: close\r\n\r\n",
                false,
            );
            proptest::prop_assert!(
                ping.as_ref().is_some_and(|ping| ping.starts_with("HTTP/1.1 200")),
                "after {:?}: {ping:?}",
                String::from_utf8_lossy(&request)
            );
            Ok(())
        })
        .unwrap();
    stop.cancel();
}
