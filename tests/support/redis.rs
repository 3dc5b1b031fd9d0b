//! A private `redis-server` per test: on a unix socket in a temporary
//! directory (no port races), without persistence unless asked, killed with
//! SIGKILL and restarted on the same socket for fault tests.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::wait_until;

/// A running (or killed) redis-server owned by the test.
pub struct RedisServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    persistent: bool,
}

impl RedisServer {
    /// A throwaway server: no RDB, no AOF.
    pub fn start() -> RedisServer {
        RedisServer::launch(false)
    }

    /// A server with an append-only file fsynced on every write, so a
    /// SIGKILL and restart lose nothing.
    pub fn start_persistent() -> RedisServer {
        RedisServer::launch(true)
    }

    fn launch(persistent: bool) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
            persistent,
        };
        server.spawn();
        server
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("redis.log")).expect("redis log");
        let child = Command::new("redis-server")
            .arg("--port")
            .arg("0")
            .arg("--unixsocket")
            .arg(self.socket())
            .arg("--unixsocketperm")
            .arg("700")
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--save", ""])
            .args(["--appendonly", if self.persistent { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("redis-server is not installed: run scripts/test, which installs it");
        self.child = Some(child);
        let client = self.client();
        wait_until(Duration::from_secs(10), "redis-server to accept commands", || {
            client
                .get_connection()
                .and_then(|mut conn| redis::cmd("PING").query::<String>(&mut conn))
                .is_ok()
        });
    }

    /// Let processes of other users (a node run as `nobody`) connect.
    pub fn open_to_other_users(&self) {
        use std::os::unix::fs::PermissionsExt;
        for (path, mode) in [(self.dir.path().to_path_buf(), 0o755), (self.socket(), 0o777)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
    }

    /// `redis+unix:///…/redis.sock`.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// A client for assertions.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("redis url")
    }

    /// A blocking connection for assertions.
    pub fn conn(&self) -> redis::Connection {
        self.client()
            .get_connection()
            .expect("connect to the test redis-server")
    }

    /// SIGKILL the server.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same socket (and data directory).
    pub fn restart(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(self.socket());
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
