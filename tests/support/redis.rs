//! A private `redis-server` per test: on a unix socket in a temporary
//! directory (no port races), without persistence unless asked, killed with
//! SIGKILL and restarted on the same socket for fault tests. Production
//! shapes on request ([`RedisOptions`]): a TLS port (Debian's redis-server
//! is built with TLS), checking client certificates or not, and an ACL
//! user with a password instead of the open default user.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::wait_until;

/// How a test's server differs from the throwaway default.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// An append-only file fsynced on every write.
    pub persistent: bool,
    /// Listen for TLS on a loopback port too.
    pub tls: Option<RedisTls>,
    /// Only this ACL user (name, password) may connect; the default user is off.
    pub user: Option<(String, String)>,
}

/// The TLS port's files.
#[derive(Debug, Clone)]
pub struct RedisTls {
    /// The server's certificate and key.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA client certificates must chain to.
    pub ca: PathBuf,
    /// Whether clients must present a certificate.
    pub auth_clients: bool,
}

/// A running (or killed) redis-server owned by the test.
pub struct RedisServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    options: RedisOptions,
    tls_port: Option<u16>,
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
        RedisServer::start_with(RedisOptions {
            persistent,
            ..RedisOptions::default()
        })
    }

    /// A server shaped by `options`.
    pub fn start_with(options: RedisOptions) -> RedisServer {
        let tls_port = options.tls.as_ref().map(|_| crate::free_port());
        let mut server = RedisServer {
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
            options,
            tls_port,
        };
        server.spawn();
        server
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("redis.log")).expect("redis log");
        let mut command = Command::new("redis-server");
        if let (Some(tls), Some(port)) = (&self.options.tls, self.tls_port) {
            command
                .args(["--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca)
                .args(["--tls-auth-clients", if tls.auth_clients { "yes" } else { "no" }]);
        }
        if let Some((user, password)) = &self.options.user {
            command.args(["--user", "default", "off"]).args([
                "--user",
                user,
                "on",
                &format!(">{password}"),
                "~*",
                "&*",
                "+@all",
            ]);
        }
        let child = command
            .arg("--port")
            .arg("0")
            .arg("--unixsocket")
            .arg(self.socket())
            .arg("--unixsocketperm")
            .arg("700")
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--save", ""])
            .args(["--appendonly", if self.options.persistent { "yes" } else { "no" }])
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

    /// `redis+unix:///…/redis.sock` (with the ACL user's credentials).
    pub fn url(&self) -> String {
        match &self.options.user {
            Some((user, password)) => format!("redis+unix://{}?user={user}&pass={password}", self.socket().display()),
            None => format!("redis+unix://{}", self.socket().display()),
        }
    }

    /// The TLS port, when the server has one.
    pub fn tls_port(&self) -> u16 {
        self.tls_port.expect("a server started with RedisOptions::tls")
    }

    /// A client for assertions.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("redis url")
    }

    /// The server as the node's transports reach it.
    pub fn endpoint(&self) -> citadel_transports::redis::Endpoint {
        citadel_transports::redis::Endpoint::open(&self.url(), &Default::default()).expect("redis url")
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
