//! A private podman per test, serving the Docker Engine API on a unix socket
//! in a temporary directory: its own `containers.conf` and `storage.conf`
//! (storage, per-boot state, locks and events all under that directory, so
//! several run side by side), a busybox image imported from the
//! `busybox-static` binary (no registry is reachable), and containers made
//! with the `podman` CLI over the same socket. Dropping it removes the
//! containers, kills the service and resets the storage, unmounting what
//! podman mounted.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::wait_until;

const IMAGE: &str = "localhost/citadel-busybox:latest";
const INSTALL: &str = "run scripts/test, which installs podman (apt-get install podman runc busybox-static)";

/// A running (or stopped) `podman system service` owned by the test.
pub struct Podman {
    dir: tempfile::TempDir,
    service: Option<Child>,
    image: OnceLock<String>,
}

impl Podman {
    /// Start a private API service and wait until it answers `/_ping`.
    pub fn start() -> Podman {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        let conf = format!(
            r#"[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
tmp_dir = "{root}/libpod"
lock_type = "file"

[containers]
netns = "host"
log_driver = "k8s-file"
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[network]
network_config_dir = "{root}/networks"
"#,
            root = root.display()
        );
        std::fs::write(root.join("containers.conf"), conf).expect("containers.conf");
        let storage = format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{root}/storage\"\nrunroot = \"{root}/run\"\n",
            root = root.display()
        );
        std::fs::write(root.join("storage.conf"), storage).expect("storage.conf");
        let mut podman = Podman {
            dir,
            service: None,
            image: OnceLock::new(),
        };
        let log = std::fs::File::create(podman.dir.path().join("service.log")).expect("service log");
        let service = podman
            .command()
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", podman.socket()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run podman ({err}): {INSTALL}"));
        podman.service = Some(service);
        let socket = PathBuf::from(podman.socket());
        wait_until(
            Duration::from_secs(20),
            "the podman API service to answer /_ping",
            || {
                if let Some(status) = podman.service.as_mut().and_then(|s| s.try_wait().ok().flatten()) {
                    panic!("podman system service exited ({status}): {}", podman.log());
                }
                answers_ping(&socket)
            },
        );
        podman
    }

    /// The API socket's path.
    pub fn socket(&self) -> String {
        self.dir.path().join("podman.sock").display().to_string()
    }

    /// A busybox image (`sh`, `sleep`, `echo`… from busybox-static),
    /// imported on first use.
    pub fn busybox_image(&self) -> String {
        self.image
            .get_or_init(|| {
                let tar = rootfs_tar(self.dir.path());
                self.cli(&["import", &tar.display().to_string(), IMAGE]);
                IMAGE.to_string()
            })
            .clone()
    }

    /// Create and start container `name` with `labels`, on the host network,
    /// running `sh -c script`; its id.
    pub fn run(&self, name: &str, labels: &[(&str, &str)], script: &str) -> String {
        self.container("run", &["-d"], name, labels, script)
    }

    /// Like [`Podman::run`], without starting it.
    pub fn create(&self, name: &str, labels: &[(&str, &str)], script: &str) -> String {
        self.container("create", &[], name, labels, script)
    }

    /// Kill the API service (the containers live on until drop).
    pub fn stop_service(&mut self) {
        if let Some(mut service) = self.service.take() {
            let _ = service.kill();
            let _ = service.wait();
        }
    }

    fn container(&self, verb: &str, flags: &[&str], name: &str, labels: &[(&str, &str)], script: &str) -> String {
        let image = self.busybox_image();
        let mut args = vec![verb.to_string(), "--name".into(), name.into(), "--network=host".into()];
        args.extend(flags.iter().map(|f| f.to_string()));
        for (key, value) in labels {
            args.push(format!("--label={key}={value}"));
        }
        args.extend([image, "sh".into(), "-c".into(), script.into()]);
        self.cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// `podman --url <socket> args…`, its trimmed stdout; panics on failure.
    fn cli(&self, args: &[&str]) -> String {
        let mut command = self.command();
        command.arg(format!("--url=unix://{}", self.socket())).args(args);
        run_ok(&mut command)
    }

    /// `podman` with this instance's configuration (local mode).
    fn command(&self) -> Command {
        let mut command = Command::new("podman");
        command
            .env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.path().join("storage.conf"))
            .stdin(Stdio::null());
        command
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("service.log")).unwrap_or_default()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        self.stop_service();
        // Local mode, the service gone: remove containers without a grace
        // period, then every image and layer (unmounting them).
        let _ = self.command().args(["rm", "--all", "--force", "--time=0"]).output();
        let _ = self.command().args(["system", "reset", "--force"]).output();
        // Whatever is still mounted below the directory (e.g. after a failed
        // reset), innermost first, so the directory can be removed.
        let root = self.dir.path().display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut leftovers: Vec<&str> = mounts
            .lines()
            .filter_map(|line| line.split(' ').nth(1))
            .filter(|point| point.starts_with(&root))
            .collect();
        leftovers.reverse();
        for point in leftovers {
            let _ = Command::new("umount").args(["--lazy", point]).output();
        }
    }
}

/// Whether an Engine API answers `GET /_ping` with 200 on `socket`.
fn answers_ping(socket: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut answer = String::new();
    stream.write_all(b"GET /_ping HTTP/1.0\r\nHost: podman\r\n\r\n").is_ok()
        && stream.read_to_string(&mut answer).is_ok()
        && answer.starts_with("HTTP/1.")
        && answer.lines().next().is_some_and(|status| status.contains(" 200 "))
}

/// A tarball of a busybox-static rootfs in `dir` (`dir/rootfs.tar`).
fn rootfs_tar(dir: &Path) -> PathBuf {
    let busybox = Path::new("/bin/busybox");
    assert!(busybox.is_file(), "/bin/busybox is missing: {INSTALL}");
    let rootfs = dir.join("rootfs");
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).expect("rootfs/bin");
    std::fs::create_dir_all(rootfs.join("tmp")).expect("rootfs/tmp");
    std::fs::copy(busybox, bin.join("busybox")).expect("copy busybox");
    for applet in [
        "sh", "sleep", "echo", "cat", "true", "false", "ls", "printf", "seq", "kill", "env",
    ] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet link");
    }
    let tar = dir.join("rootfs.tar");
    run_ok(Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg("."));
    tar
}

/// Run `command` to the end; its trimmed stdout, or a panic with its stderr.
fn run_ok(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("cannot run {command:?} ({err}): {INSTALL}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}
