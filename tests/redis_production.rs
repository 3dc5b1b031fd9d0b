//! Production-shaped Redis, against real `citadel` processes and Debian's
//! `redis-server` on a TLS port: a node runs jobs over TLS (server name
//! checked, client certificate presented) as an ACL user, with the CA given
//! by `CITADEL_REDIS__CA_FILE`, and never shows its password; every wrong
//! setting (password, CA, host name, missing client certificate, TLS files
//! with a plaintext URL) stops the node and the monitor at start, naming
//! the setting to fix and never the password. With Sentinel, a master
//! killed under load is followed to the promoted replica by everything the
//! node holds, and what the asynchronous replica lost is counted.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use citadel_runtime::config::Config;
use citadel_tests::{
    QUEUE, RedisOptions, RedisServer, RedisTls, SENTINEL_PASSWORD, SENTINEL_SERVICE, SentinelSet, TestPki,
    WorkerProcess, enqueue, event_types, eventually, node_status, status, stream_entries, wait_status, worker_config,
    worker_config_for,
};
use citadel_transports::fleet::HEARTBEATS_STREAM;
use citadel_transports::redis::registry::CHANGED_CHANNEL;
use citadel_transports::redis::{Endpoint, RedisSettings};
use citadel_transports::wire;
use tokio_util::sync::CancellationToken;

const USER: &str = "citadel-node";
const PASSWORD: &str = "pw-7c1e9a-never-shown";

/// A Redis with a TLS port that checks client certificates, where only
/// `USER` may connect.
fn production_redis(pki: &TestPki) -> RedisServer {
    let (cert, key) = pki.server();
    RedisServer::start_with(RedisOptions {
        tls: Some(RedisTls {
            cert,
            key,
            ca: pki.ca(),
            auth_clients: true,
        }),
        user: Some((USER.into(), PASSWORD.into())),
        ..RedisOptions::default()
    })
}

/// A node on `redis`'s TLS port as `user:password@host`, presenting the
/// client certificate; the CA is left to the caller.
fn tls_node(redis: &RedisServer, pki: &TestPki, password: &str, host: &str) -> Config {
    let mut config = worker_config(redis);
    config.redis_url = Some(format!("rediss://{USER}:{password}@{host}:{}/0", redis.tls_port()));
    let (client_cert, client_key) = pki.client();
    config.redis = RedisSettings {
        ca_file: None,
        client_cert_file: Some(client_cert),
        client_key_file: Some(client_key),
    };
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_runs_jobs_over_tls_as_an_acl_user_and_never_shows_its_password() {
    let pki = TestPki::new();
    let redis = production_redis(&pki);
    let config = tls_node(&redis, &pki, PASSWORD, "localhost");
    let ca = pki.ca().display().to_string();
    let worker = WorkerProcess::start_with_env(&config, "work", &[("CITADEL_REDIS__CA_FILE", &ca)]);

    let mut conn = redis.conn();
    for n in 0..5 {
        enqueue(&mut conn, &format!("tls-{n}"), "echo", &format!(r#"{{"n":{n}}}"#));
    }
    for n in 0..5 {
        let status = wait_status(&redis, &format!("tls-{n}"), "completed", Duration::from_secs(30)).await;
        assert_eq!(
            status.get("worker_id").map(String::as_str),
            Some(worker.consumer().as_str())
        );
    }
    // The only way in is the TLS port as USER: the server saw the node's
    // connections there, authenticated.
    let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut conn).unwrap();
    assert!(
        clients
            .lines()
            .any(|line| line.contains(&format!("user={USER}")) && line.contains("laddr=127.0.0.1:")),
        "{clients}"
    );

    // Its status server, the node status it published and its whole log
    // never carry the password.
    let status = node_status(&worker.status_url()).await.unwrap().to_string();
    assert!(!status.contains(PASSWORD), "{status}");
    let published: Vec<redis::Value> = redis::cmd("XRANGE")
        .arg(wire::NODE_STATUS_STREAM)
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    assert!(!published.is_empty(), "the node published its status");
    assert!(!format!("{published:?}").contains(PASSWORD));
    let log = worker.log();
    assert!(log.contains("worker ready"), "{log}");
    assert!(!log.contains(PASSWORD) && !log.contains(SENTINEL_PASSWORD), "{log}");
}

/// Run `citadel <subcommand>` on `config` (with `env`): it must exit 2 at
/// once, its log naming `key` and never the password.
fn refused(config: &Config, subcommand: &str, env: &[(&str, &str)], key: &str) {
    let (code, log) = WorkerProcess::run_to_exit(config, subcommand, env, Duration::from_secs(30));
    assert_eq!(code, Some(2), "exit code for a refusal naming {key:?}; log:\n{log}");
    assert!(log.contains(key), "the refusal names {key:?}:\n{log}");
    assert!(!log.contains(PASSWORD), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_wrong_setting_stops_the_node_naming_it_and_never_the_password() {
    let pki = TestPki::new();
    let redis = production_redis(&pki);
    let ca = pki.ca().display().to_string();
    let other_ca = pki.other_ca().display().to_string();
    let with_ca = [("CITADEL_REDIS__CA_FILE", ca.as_str())];

    // A wrong password: Redis says WRONGPASS.
    refused(
        &tls_node(&redis, &pki, "not-the-password", "localhost"),
        "work",
        &with_ca,
        "the user and password in redis_url",
    );
    // The server's certificate is not signed by the configured CA …
    refused(
        &tls_node(&redis, &pki, PASSWORD, "localhost"),
        "work",
        &[("CITADEL_REDIS__CA_FILE", &other_ca)],
        "redis.ca_file: it does not hold the CA",
    );
    // … nor by any of the system's roots.
    refused(
        &tls_node(&redis, &pki, PASSWORD, "localhost"),
        "work",
        &[],
        "redis.ca_file: unset",
    );
    // The certificate names `localhost`, not `127.0.0.1`.
    refused(
        &tls_node(&redis, &pki, PASSWORD, "127.0.0.1"),
        "work",
        &with_ca,
        "the host in redis_url",
    );
    // The server asks for a client certificate the node does not have.
    let mut anonymous = tls_node(&redis, &pki, PASSWORD, "localhost");
    anonymous.redis.client_cert_file = None;
    anonymous.redis.client_key_file = None;
    refused(&anonymous, "work", &with_ca, "redis.client_cert_file");
    // TLS files with a plaintext URL would mean no TLS: refused, not ignored.
    let mut plaintext = tls_node(&redis, &pki, PASSWORD, "localhost");
    plaintext.redis_url = Some(format!("redis://{USER}:{PASSWORD}@localhost:{}/0", redis.tls_port()));
    refused(&plaintext, "work", &with_ca, "is set but redis_url");

    // The monitor refuses the same way.
    let mut monitor = tls_node(&redis, &pki, "not-the-password", "localhost");
    let dir = tempfile::tempdir().unwrap();
    monitor.monitor.db = dir.path().join("monitor.db");
    monitor.monitor.addr = "127.0.0.1:0".parse().unwrap();
    refused(&monitor, "monitor", &with_ca, "the user and password in redis_url");
}

/// Enqueue a job every 25 ms (echo, and every third a 200 ms `slow`) on the
/// master of `redis` until `stop`, through a connection that follows it;
/// a failed `XADD` is tried again with the same job id. `acked` gets the
/// ids Redis acknowledged, in order.
async fn produce(redis: Endpoint, acked: Arc<Mutex<Vec<String>>>, stop: CancellationToken) {
    let mut conn = redis.command_connection();
    let mut ticks = tokio::time::interval(Duration::from_millis(25));
    let mut n = 0;
    while !stop.is_cancelled() {
        ticks.tick().await;
        let id = format!("failover-{n}");
        let (job_type, payload) = match n % 3 {
            0 => ("slow", r#"{"ms":200}"#),
            _ => ("echo", r#"{"n":1}"#),
        };
        let fields = [("jobId", id.as_str()), ("type", job_type), ("payload", payload)];
        if citadel_transports::redis::enqueue(&mut conn, QUEUE, &fields)
            .await
            .is_ok()
        {
            acked.lock().unwrap().push(id);
            n += 1;
        }
    }
}

fn completed(conn: &mut redis::Connection, job_id: &str) -> bool {
    status(conn, job_id).get("status").map(String::as_str) == Some("completed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_followed_to_the_promoted_replica_under_load() {
    let mut set = SentinelSet::start();
    // A service no Sentinel knows, a wrong password: refused at start.
    let unknown = set.url().replace(&format!("/{SENTINEL_SERVICE}"), "/no-such-service");
    refused(
        &worker_config_for(&unknown),
        "work",
        &[],
        "the service name in redis_url",
    );
    let wrong = set.url().replace(SENTINEL_PASSWORD, "not-the-password");
    refused(
        &worker_config_for(&wrong),
        "work",
        &[],
        "the user and password in redis_url",
    );

    let mut config = worker_config_for(&set.url());
    config.telemetry.heartbeat_ms = 200;
    let worker = WorkerProcess::start(&config);
    let old = set.master_port().expect("the Sentinels name a master");

    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = CancellationToken::new();
    let redis = Endpoint::open(&set.url(), &RedisSettings::default()).unwrap();
    let producer = tokio::spawn(produce(redis, Arc::clone(&acked), stop.clone()));
    let ids = || acked.lock().unwrap().clone();

    let mut before = set.master_conn();
    eventually(Duration::from_secs(60), "jobs to run on the first master", || {
        let ids = ids();
        ids.len() >= 40 && completed(&mut before, &ids[20])
    })
    .await;

    // Kill the master under load.
    let killed_at = Instant::now();
    set.kill_server(old);
    let new = set.wait_for_failover(old, Duration::from_secs(60));
    let promoted_after = killed_at.elapsed();
    let at_promotion = ids().len();
    let mut conn = set.server_conn(new).expect("the promoted master answers");

    // The node follows: the first job enqueued after the promotion runs …
    eventually(
        Duration::from_secs(60),
        "a job enqueued after the promotion to complete",
        || {
            let ids = ids();
            ids.len() > at_promotion && completed(&mut conn, &ids[at_promotion])
        },
    )
    .await;
    let followed_after = killed_at.elapsed();
    // … and the producer goes on for a while.
    eventually(Duration::from_secs(60), "30 more jobs enqueued", || {
        ids().len() >= at_promotion + 30
    })
    .await;
    stop.cancel();
    producer.await.unwrap();
    let ids = ids();

    // What the promoted replica never received: jobs the old master
    // acknowledged in its last moments. Every job it has runs to the end.
    let on_new_master: HashSet<String> = stream_entries(&mut conn, QUEUE)
        .into_iter()
        .filter_map(|entry| entry.get("jobId").cloned())
        .collect();
    let lost: Vec<usize> = (0..ids.len()).filter(|n| !on_new_master.contains(&ids[*n])).collect();
    assert!(
        lost.iter().all(|n| *n < at_promotion),
        "only jobs acknowledged before the promotion can be lost: {lost:?} (promotion at {at_promotion})"
    );
    let kept: Vec<&String> = ids.iter().filter(|id| on_new_master.contains(*id)).collect();
    eventually(
        Duration::from_secs(60),
        "every job the new master has to complete",
        || kept.iter().all(|id| completed(&mut conn, id)),
    )
    .await;
    let run_twice = kept
        .iter()
        .filter(|id| {
            event_types(&mut conn, id)
                .iter()
                .filter(|kind| *kind == "start")
                .count()
                > 1
        })
        .count();

    // Every connection the node holds moved: heartbeats (the fleet
    // publisher), liveness (the worker's beat), the registry's subscription.
    let heartbeats: usize = redis::cmd("XLEN").arg(HEARTBEATS_STREAM).query(&mut conn).unwrap();
    assert!(heartbeats > 0, "heartbeats reach the new master");
    let liveness = wire::liveness_key(&config.worker.group, &worker.consumer());
    let alive: bool = redis::cmd("EXISTS").arg(&liveness).query(&mut conn).unwrap();
    assert!(alive, "the worker's liveness key is on the new master");
    eventually(
        Duration::from_secs(30),
        "the registry subscription on the new master",
        || {
            let (_, subscribers): (String, usize) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(CHANGED_CHANNEL)
                .query(&mut conn)
                .unwrap();
            subscribers > 0
        },
    )
    .await;
    eprintln!(
        "sentinel failover: {} jobs acknowledged ({} before the promotion), {} completed on the new master, \
         {} lost with the old master (acknowledged, not yet replicated), {} run twice; \
         replica promoted {:.1} s after the kill, first new job done {:.1} s after it",
        ids.len(),
        at_promotion,
        kept.len(),
        lost.len(),
        run_twice,
        promoted_after.as_secs_f64(),
        followed_after.as_secs_f64(),
    );
    assert!(!worker.log().contains(SENTINEL_PASSWORD));
}
