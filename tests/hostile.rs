//! Hostile tenants: one tiny guest per attack (`guests/bad-*`), against
//! every import a handler can reach (WASI's and ours), the result and
//! output paths, and the sandbox's walls. Each must fail *its own* job with
//! the class that names what it did — never `host_error`, never retried as
//! if the node were at fault — while another tenant's trivial jobs on the
//! same node keep running, their latency measured before and during the
//! attack (`CITADEL_HOSTILE_REPORT=dir` writes `hostile.json` for
//! `scripts/bench`).

use std::collections::HashMap;
use std::time::Duration;

use citadel_runtime::sandbox::joblog::Source;
use citadel_tests::{
    QUEUE, RedisServer, Victim, WorkerProcess, class, dead_letters, enqueue_fields, event_types, events, eventually,
    executor, guest, job, latency_summary, load, pending, run, save_report, wait_status, with_policy, worker_config,
};
use serde_json::{Value, json};

/// One attack: the guest, its payload, the class its job must end with and
/// a piece of the one-line error that says what happened.
struct Attack {
    guest: &'static str,
    payload: &'static str,
    class: &'static str,
    says: &'static str,
}

const fn attack(guest: &'static str, payload: &'static str, class: &'static str, says: &'static str) -> Attack {
    Attack {
        guest,
        payload,
        class,
        says,
    }
}

/// Every attack, grouped by where it strikes.
const ATTACKS: &[Attack] = &[
    // Time and CPU.
    attack("bad-spin", "{}", "deadline", "deadline exceeded"),
    attack("bad-sleep", "{}", "deadline", "deadline exceeded"),
    // Memory and stack.
    attack("bad-hog", "{}", "memory_limit", "memory limit exceeded"),
    attack("bad-bigalloc", "{}", "memory_limit", "memory limit exceeded"),
    attack("bad-recurse", "{}", "stack_overflow", "stack overflow"),
    // The sandbox's walls.
    attack("bad-oob", "{}", "trap", "out of bounds memory access"),
    attack("bad-jump", "{}", "trap", "table"),
    attack("bad-trap", "{}", "trap", "bad-trap was asked to fail"),
    attack("bad-exit", "{}", "trap", "wasi:cli/exit (status 1)"),
    // The canonical ABI at the host-call boundary.
    attack("bad-utf8", "{}", "trap", "component model's rules"),
    attack("bad-pointer", "{}", "trap", "out of bounds of memory"),
    attack("bad-enum", "{}", "trap", "component model's rules"),
    attack(
        "bad-amplify",
        "{}",
        "resource_limit",
        "would have copied more than 64 MiB",
    ),
    // Handles and WASI's own rules.
    attack("bad-forge", "{}", "trap", "unknown handle index"),
    attack("bad-reuse", "{}", "trap", "unknown handle index"),
    attack("bad-orphan", "{}", "trap", "resource has children"),
    attack("bad-poll", "{}", "trap", "empty poll list"),
    attack(
        "bad-greedy",
        r#"{"want":"handles"}"#,
        "resource_limit",
        "host resource handles",
    ),
    attack("bad-greedy", r#"{"want":"random"}"#, "resource_limit", "wasi:random"),
    // The output paths.
    attack("bad-stdout", "{}", "trap", "check-write permits 65536"),
    attack(
        "bad-flood",
        r#"{"mode":"chunks"}"#,
        "output_limit",
        "output limit exceeded",
    ),
    attack(
        "bad-flood",
        r#"{"mode":"output"}"#,
        "output_limit",
        "output limit exceeded",
    ),
    // The result path.
    attack("bad-bigresult", "{}", "output_limit", "output limit exceeded"),
    attack("bad-json", "{}", "bad_output", "not JSON"),
    attack("bad-errmsg", "{}", "failed", "bytes cut]"),
    // Capabilities.
    attack("bad-sneaky", "{}", "capability_refused", "inference"),
];

/// The hostile tenant: the built-in grant (`log`, `stream`), a short
/// deadline so the time attacks end soon. The victim gets the defaults.
const POLICY: &str = "[tenants.mallory]\ncapabilities = [\"log\", \"stream\"]\ntimeout_ms = 2000\n\n[tenants.alice]\ncapabilities = [\"log\", \"stream\"]\n";

/// The handler-error message is kept up to this many bytes (plus the note).
const MAX_HANDLER_MESSAGE_BYTES: usize = 4096;

#[test]
fn there_are_at_least_twenty_classes_of_attack() {
    let mut distinct: Vec<(&str, &str)> = ATTACKS.iter().map(|attack| (attack.guest, attack.payload)).collect();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() >= 20, "{} attacks", distinct.len());
    assert_eq!(distinct.len(), ATTACKS.len(), "each attack listed once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_attack_fails_its_own_job_with_its_class() {
    let executor = executor(POLICY);
    let mut wrong = Vec::new();
    for attack in ATTACKS {
        let (report, _) = run(&executor, &load(attack.guest), job("mallory", attack.payload, None)).await;
        let name = format!("{} {}", attack.guest, attack.payload);
        let error = match &report.outcome {
            Ok(value) => {
                wrong.push(format!("{name}: succeeded with {value}"));
                continue;
            }
            Err(error) => error,
        };
        let message = error.to_string();
        if (error.class(), error.recoverable()) != (attack.class, false) {
            wrong.push(format!("{name}: {} (want {}): {message}", error.class(), attack.class));
        } else if !message.contains(attack.says) {
            wrong.push(format!("{name}: `{message}` does not say `{}`", attack.says));
        } else if message.contains('\n') || message.len() > MAX_HANDLER_MESSAGE_BYTES + 256 {
            wrong.push(format!("{name}: not one bounded line ({} bytes)", message.len()));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The node carries on.
    let (report, _) = run(&executor, &load("echo"), job("alice", r#"{"text":"after"}"#, None)).await;
    assert_eq!(class(&report), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_log_records_are_counted_against_the_log_budget() {
    let (report, _) = run(&executor(POLICY), &load("bad-logspam"), job("mallory", "{}", None)).await;
    assert_eq!(class(&report), "ok");
    let guest_records = report
        .log
        .iter()
        .filter(|record| record.source == Source::Guest)
        .count();
    assert!(
        (1..2_000).contains(&guest_records),
        "64 KiB of log holds some empty records, not 200 000: {guest_records}"
    );
    let note = report.log.last().unwrap();
    assert!(note.message.starts_with("log cut:"), "{}", note.message);
}

/// Peak resident memory of a process, KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("VmHWM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_node_every_attack_fails_once_while_another_tenant_keeps_running() {
    let redis = RedisServer::start();
    let mut config = worker_config(&redis);
    let _policy = with_policy(&mut config, POLICY);
    config.worker.concurrency = 8;
    for attack in ATTACKS {
        config.handlers.insert(attack.guest.into(), guest(attack.guest));
    }
    let worker = WorkerProcess::start(&config);
    let mut conn = redis.conn();
    let mut victim = Victim::new(&redis, "alice").await;

    // The victim alone, warmed up: its baseline in this run.
    victim.round_trips(50).await;
    let solo = victim.round_trips(60).await;

    // Every attack at once, then the victim's jobs one after another until
    // the last attack has ended (and at least 60 of them).
    let mut hostile: HashMap<String, &Attack> = HashMap::new();
    for (n, attack) in ATTACKS.iter().enumerate() {
        let job_id = format!("mallory-{n}-{}", attack.guest);
        let mut payload: Value = serde_json::from_str(attack.payload).unwrap();
        payload["tenant"] = json!("mallory");
        enqueue_fields(
            &mut conn,
            &[
                ("jobId", &job_id),
                ("type", attack.guest),
                ("payload", &payload.to_string()),
            ],
        );
        hostile.insert(job_id, attack);
    }
    let mut attacked: Vec<Duration> = Vec::new();
    let all_ended = |conn: &mut redis::Connection| {
        hostile.keys().all(|job_id| {
            let types = event_types(conn, job_id);
            types.last().is_some_and(|last| last == "error" || last == "end")
        })
    };
    while attacked.len() < 60 || !all_ended(&mut conn) {
        attacked.push(victim.round_trip().await);
        assert!(attacked.len() < 5_000, "the attacks never ended");
    }

    let mut classes = Vec::new();
    for (job_id, attack) in &hostile {
        let state = wait_status(&redis, job_id, "failed", Duration::from_secs(10)).await;
        assert_eq!(state["error_class"], attack.class, "{job_id}: {state:?}");
        let mut types = event_types(&mut conn, job_id);
        types.retain(|kind| kind != "chunk");
        assert_eq!(
            types,
            ["claimed", "start", "error"],
            "{job_id} ran once: a guest's own fault is never retried"
        );
        let last = events(&mut conn, job_id).pop().unwrap();
        assert_eq!(last["data"]["recoverable"], false, "{job_id}: {last}");
        classes.push(json!({"guest": attack.guest, "payload": attack.payload, "class": attack.class}));
    }
    assert!(dead_letters(&mut conn).is_empty(), "nothing dead-lettered");
    eventually(Duration::from_secs(10), "every entry acknowledged", || {
        pending(&mut conn) == 0
    })
    .await;
    let stream_len: usize = redis::cmd("XLEN").arg(QUEUE).query(&mut conn).unwrap();
    assert!(stream_len > ATTACKS.len());

    // The amplifier and the big results are bounded by the per-call copy
    // budget and the guest's memory limit: the node never held gigabytes.
    let peak_kib = peak_rss_kib(worker.pid());
    assert!(peak_kib < 1 << 20, "node peak RSS {peak_kib} KiB");
    let (solo, attacked) = (latency_summary(&solo), latency_summary(&attacked));
    // A generous bound on behaviour: the victim was never stuck behind the
    // attackers (the 2 s deadline of the time attacks).
    assert!(
        attacked["p99_ms"].as_f64().unwrap() < 2_000.0,
        "victim under attack: {attacked}"
    );
    let report = json!({
        "attacks": classes.len(),
        "classes": classes,
        "victim_solo": solo,
        "victim_under_attack": attacked,
        "node_peak_rss_mib": peak_kib / 1024,
    });
    println!("hostile guests: {report}");
    save_report("CITADEL_HOSTILE_REPORT", "hostile", &report);
    drop(worker);
}
