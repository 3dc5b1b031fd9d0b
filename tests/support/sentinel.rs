//! A private Redis Sentinel deployment per test, from Debian's
//! `redis-server` (which runs as a Sentinel with `--sentinel`): a master and
//! an asynchronous replica on loopback ports, both with a password, watched
//! by three Sentinels (quorum 2) that call the master down after 1 s
//! without an answer. The test kills the master with SIGKILL and waits for
//! the Sentinels to promote the replica.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_until};

/// The service name the Sentinels watch.
pub const SENTINEL_SERVICE: &str = "citadel";
/// The password of the master and the replica.
pub const SENTINEL_PASSWORD: &str = "pw-sentinel-7f3a";

/// A master, its replica and three Sentinels.
pub struct SentinelSet {
    dir: tempfile::TempDir,
    servers: Vec<(u16, Option<Child>)>,
    sentinels: Vec<(u16, Child)>,
}

impl SentinelSet {
    /// Start them all and wait until every Sentinel knows the replica (a
    /// failover needs one).
    pub fn start() -> SentinelSet {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut set = SentinelSet {
            dir,
            servers: Vec::new(),
            sentinels: Vec::new(),
        };
        let master = free_port();
        set.spawn_server(master, None);
        set.spawn_server(free_port(), Some(master));
        for _ in 0..3 {
            set.spawn_sentinel(master);
        }
        wait_until(Duration::from_secs(30), "the Sentinels to see the replica", || {
            set.sentinels.iter().all(|(port, _)| {
                sentinel_query::<Vec<redis::Value>>(*port, &["SENTINEL", "REPLICAS", SENTINEL_SERVICE])
                    .is_some_and(|replicas| !replicas.is_empty())
            })
        });
        wait_until(Duration::from_secs(30), "the replica to be in sync", || {
            set.server_conn(set.servers[1].0)
                .and_then(|mut conn| redis::cmd("INFO").arg("replication").query::<String>(&mut conn).ok())
                .is_some_and(|info| info.contains("master_link_status:up"))
        });
        set
    }

    fn spawn_server(&mut self, port: u16, replica_of: Option<u16>) {
        let data = self.dir.path().join(format!("server-{port}"));
        std::fs::create_dir_all(&data).expect("data dir");
        let log = std::fs::File::create(data.join("redis.log")).expect("log");
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&data)
            .args(["--save", "", "--appendonly", "no"])
            .args(["--requirepass", SENTINEL_PASSWORD, "--masterauth", SENTINEL_PASSWORD]);
        if let Some(master) = replica_of {
            command.args(["--replicaof", "127.0.0.1", &master.to_string()]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("redis-server is not installed: run scripts/test, which installs it");
        self.servers.push((port, Some(child)));
        wait_until(Duration::from_secs(10), "redis-server to accept commands", || {
            self.server_conn(port).is_some()
        });
    }

    fn spawn_sentinel(&mut self, master: u16) {
        let port = free_port();
        let data = self.dir.path().join(format!("sentinel-{port}"));
        std::fs::create_dir_all(&data).expect("data dir");
        let config = data.join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {master} 2\n\
                 sentinel auth-pass {SENTINEL_SERVICE} {SENTINEL_PASSWORD}\n\
                 sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n\
                 sentinel failover-timeout {SENTINEL_SERVICE} 10000\n\
                 sentinel parallel-syncs {SENTINEL_SERVICE} 1\n",
                dir = data.display()
            ),
        )
        .expect("sentinel config");
        let log = std::fs::File::create(data.join("sentinel.log")).expect("log");
        let child = Command::new("redis-server")
            .arg(&config)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("redis-server --sentinel");
        self.sentinels.push((port, child));
        wait_until(Duration::from_secs(10), "a Sentinel to answer", || {
            sentinel_query::<String>(port, &["PING"]).is_some()
        });
    }

    /// `redis+sentinel://:password@<the three Sentinels>/citadel`.
    pub fn url(&self) -> String {
        let sentinels: Vec<String> = self
            .sentinels
            .iter()
            .map(|(port, _)| format!("127.0.0.1:{port}"))
            .collect();
        format!(
            "redis+sentinel://:{SENTINEL_PASSWORD}@{}/{SENTINEL_SERVICE}",
            sentinels.join(",")
        )
    }

    /// The port of the master the Sentinels name now.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|(port, _)| {
            let (_, master): (String, String) =
                sentinel_query(*port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE])?;
            master.parse().ok()
        })
    }

    /// A connection to the server on `port`.
    pub fn server_conn(&self, port: u16) -> Option<redis::Connection> {
        let client = redis::Client::open(format!("redis://:{SENTINEL_PASSWORD}@127.0.0.1:{port}")).ok()?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(1)).ok()?;
        redis::cmd("PING").query::<String>(&mut conn).ok()?;
        Some(conn)
    }

    /// A connection to the master the Sentinels name now.
    pub fn master_conn(&self) -> redis::Connection {
        let port = self.master_port().expect("the Sentinels name a master");
        self.server_conn(port).expect("the master answers")
    }

    /// SIGKILL the server on `port`.
    pub fn kill_server(&mut self, port: u16) {
        for (server, child) in &mut self.servers {
            if *server == port
                && let Some(mut child) = child.take()
            {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Wait until the Sentinels name a master other than `old`.
    pub fn wait_for_failover(&self, old: u16, within: Duration) -> u16 {
        let mut new = None;
        wait_until(within, "the Sentinels to promote the replica", || {
            new = self.master_port().filter(|port| *port != old);
            new.is_some()
        });
        new.expect("promoted")
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for (_, child) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
        for (_, child) in &mut self.servers {
            if let Some(mut child) = child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// One command to the Sentinel on `port`, `None` when it does not answer.
fn sentinel_query<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> Option<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(1)).ok()?;
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(&mut conn).ok()
}
