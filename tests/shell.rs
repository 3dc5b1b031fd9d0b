//! `shell_command` with real processes, through a real `citadel work`: a
//! command the policy allows runs as the unprivileged `citadel-shell`
//! user, in a cgroup of its own under the node's slice, with only the
//! policy's environment and no stdin, its output streamed as chunks and
//! returned in the result; anything else is denied naming the rule that
//! would allow it. Fault injection: a fork bomb stops at the pids limit, a
//! memory hog is OOM-killed at the memory limit, the deadline kills every
//! process of the command (grandchildren, daemonised or not), and output
//! past the cap stops the command. Needs root (CI runs as root) and the
//! `citadel-shell` user (scripts/test creates it).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use citadel_runtime::Config;
use citadel_tests::{
    RedisServer, TestSlice, WorkerProcess, enqueue, events, eventually_some, status, wait_status, worker_config,
};
use serde_json::{Value, json};

const SETTLE: Duration = Duration::from_secs(30);

const POLICY: &str = r#"
[tenants.ops]
capabilities = []
timeout_ms = 20000
max_output_bytes = 65536
max_chunk_bytes = 4096

[tenants.ops.shell]
env = { PATH = "/usr/bin:/bin", GREETING = "hi" }
memory_limit = "64M"
pids_limit = 32
stop_grace_ms = 500

[[tenants.ops.shell.allow]]
program = "/usr/bin/id"
args = ["-u"]

[[tenants.ops.shell.allow]]
program = "/usr/bin/env"

[[tenants.ops.shell.allow]]
program = "/usr/bin/cat"
args = ["**"]

[[tenants.ops.shell.allow]]
program = "/usr/bin/tail"
args = ["/dev/zero"]

[[tenants.ops.shell.allow]]
program = "/usr/bin/yes"

[[tenants.ops.shell.allow]]
program = "/bin/sh"
args = ["-c", "*"]
"#;

/// A node whose tenant `ops` may run the commands above.
struct ShellNode {
    redis: RedisServer,
    slice: TestSlice,
    node: WorkerProcess,
    _dir: tempfile::TempDir,
}

impl ShellNode {
    fn start() -> ShellNode {
        let redis = RedisServer::start();
        let slice = TestSlice::new();
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.toml");
        std::fs::write(&policy, POLICY).unwrap();
        let mut config: Config = worker_config(&redis);
        config.policy = Some(policy);
        config.node.cgroup_slice = Some(slice.name().into());
        let node = WorkerProcess::start(&config);
        ShellNode {
            redis,
            slice,
            node,
            _dir: dir,
        }
    }

    /// Run a `shell_command` job of `tenant` with `payload` to its end:
    /// its final status and its chunks, joined.
    async fn run(&self, job_id: &str, tenant: &str, mut payload: Value) -> (HashMap<String, String>, String) {
        payload["organizationId"] = tenant.into();
        let mut conn = self.redis.conn();
        enqueue(&mut conn, job_id, "shell_command", &payload.to_string());
        let settled = eventually_some(SETTLE, "the job to settle", || async {
            let found = status(&mut self.redis.conn(), job_id);
            matches!(found.get("status").map(String::as_str), Some("completed" | "failed")).then_some(found)
        })
        .await;
        let chunks: String = events(&mut conn, job_id)
            .iter()
            .filter(|event| event["type"] == "chunk")
            .map(|event| event["data"]["content"].as_str().unwrap().to_string())
            .collect();
        (settled, chunks)
    }

    /// The directories of the node's shell cgroups (one per running command).
    fn shell_groups(&self) -> Vec<PathBuf> {
        TestSlice::dirs(&format!("{}/shell", self.slice.name()))
            .into_iter()
            .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
            .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
            .map(|entry| entry.path())
            .collect()
    }
}

fn result(status: &HashMap<String, String>) -> Value {
    assert_eq!(status["status"], "completed", "{status:?}");
    serde_json::from_str(&status["result"]).unwrap()
}

fn shell_uid() -> String {
    let output = std::process::Command::new("id")
        .args(["-u", "citadel-shell"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the citadel-shell user is missing: scripts/test creates it"
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_commands_run_as_the_shell_user_in_their_own_cgroup() {
    let node = ShellNode::start();
    let (status, chunks) = node.run("id", "ops", json!({"command": "id -u"})).await;
    let id = result(&status);
    assert_eq!(id["exit_code"], 0);
    assert_eq!(id["stdout"], format!("{}\n", shell_uid()), "never root");
    assert_eq!(chunks, id["stdout"].as_str().unwrap(), "streamed as it came");
    assert_eq!((id["truncated"].as_bool(), id["signal"].is_null()), (Some(false), true));
    assert!(id["duration_ms"].is_u64());

    let (status, _) = node.run("env", "ops", json!({"program": "env"})).await;
    assert_eq!(
        result(&status)["stdout"],
        "GREETING=hi\nPATH=/usr/bin:/bin\n",
        "the policy's environment and nothing else"
    );

    let (status, _) = node
        .run("where", "ops", json!({"command": ["cat", "/proc/self/cgroup"]}))
        .await;
    let cgroups = result(&status)["stdout"].as_str().unwrap().to_string();
    let group = format!("{}/shell/where-", node.slice.name());
    assert!(
        cgroups.contains(&group),
        "its own cgroup under the node's slice: {cgroups}"
    );
    let (status, _) = node.run("stdin", "ops", json!({"command": "cat"})).await;
    let stdin = result(&status);
    assert_eq!(
        (stdin["exit_code"].as_i64(), stdin["stdout"].as_str()),
        (Some(0), Some("")),
        "no stdin"
    );

    // Quotes are honoured, nothing is expanded: a shell only where a rule allows one.
    let (status, _) = node
        .run(
            "shell",
            "ops",
            json!({"command": "sh -c 'echo \"$GREETING\" >&2; exit 4'"}),
        )
        .await;
    let shell = result(&status);
    assert_eq!(
        (shell["exit_code"].as_i64(), shell["stderr"].as_str()),
        (Some(4), Some("hi\n"))
    );
    assert!(node.shell_groups().is_empty(), "every command's cgroup is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_no_rule_allows_are_denied_naming_the_rule() {
    let node = ShellNode::start();
    let (status, _) = node.run("rm", "ops", json!({"command": "rm -rf /srv/data"})).await;
    assert_eq!(
        (status["status"].as_str(), status["error_class"].as_str()),
        ("failed", "denied")
    );
    assert!(
        status["error"].contains(
            "to allow it add [[tenants.ops.shell.allow]] program = \"/absolute/path/of/rm\" args = [\"-rf\", \"/srv/data\"]"
        ),
        "{status:?}"
    );
    let (status, _) = node.run("id-g", "ops", json!({"command": "id -g"})).await;
    assert!(
        status["error"].contains("may run `/usr/bin/id` only with arguments matching [\"-u\"]"),
        "{status:?}"
    );
    // A tenant without rules runs nothing at all.
    let (status, _) = node.run("default", "someone", json!({"command": "id -u"})).await;
    assert!(
        status["error"]
            .contains("tenant `default` may not run commands: its policy has no [[tenants.default.shell.allow]] rule"),
        "{status:?}"
    );
    let (status, _) = node.run("bad", "ops", json!({"command": "echo 'unterminated"})).await;
    assert_eq!(status["error_class"], "invalid_input", "{status:?}");
    assert!(
        node.node.log().contains("shell command refused"),
        "denials are logged by the node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_stops_at_the_pids_limit() {
    let node = ShellNode::start();
    let mut conn = node.redis.conn();
    let payload = json!({
        "command": ["sh", "-c", "exec 2>/dev/null; bomb() { bomb | bomb & }; bomb; exec sleep 600"],
        "organizationId": "ops", "timeout_ms": 4000
    });
    enqueue(&mut conn, "bomb", "shell_command", &payload.to_string());
    // While it runs: the group holds at most 32 tasks and the kernel refused forks.
    let group = eventually_some(SETTLE, "the command's cgroup", || async {
        node.shell_groups()
            .into_iter()
            .find(|group| group.join("pids.current").exists())
    })
    .await;
    let mut most = 0u64;
    let mut refused = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        let read = |file: &str| std::fs::read_to_string(group.join(file)).unwrap_or_default();
        most = most.max(read("pids.current").trim().parse().unwrap_or(0));
        let events = read("pids.events");
        refused = refused.max(
            events
                .split_whitespace()
                .nth(1)
                .and_then(|count| count.parse().ok())
                .unwrap_or(0),
        );
        if refused > 0 && most > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(most > 1 && most <= 32, "pids.current reached {most}");
    assert!(refused > 0, "the kernel refused forks past pids.max");
    let done = wait_status(&node.redis, "bomb", "failed", SETTLE).await;
    assert_eq!(
        done["error_class"], "deadline",
        "its main process sleeps until the deadline: {done:?}"
    );
    eventually_some(SETTLE, "the bomb's cgroup emptied and removed", || async {
        node.shell_groups().is_empty().then_some(())
    })
    .await;
    // The node is fine: the next command runs.
    let (status, _) = node.run("after", "ops", json!({"command": "id -u"})).await;
    assert_eq!(result(&status)["exit_code"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_is_killed_at_the_memory_limit() {
    let node = ShellNode::start();
    // tail buffers /dev/zero looking for a newline that never comes.
    let (status, _) = node.run("hog", "ops", json!({"command": "tail /dev/zero"})).await;
    let hog = result(&status);
    assert_eq!(hog["signal"], "SIGKILL", "{hog}");
    assert_eq!(hog["oom_killed"], true, "{hog}");
    assert!(hog["exit_code"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_kills_every_process_of_the_command() {
    let node = ShellNode::start();
    let script = "sleep 6171 & setsid sleep 6172 & (sleep 6173 &) ; sleep 6174";
    let payload = json!({"command": ["sh", "-c", script], "timeout_ms": 1000});
    let started = std::time::Instant::now();
    let (status, _) = node.run("slow", "ops", payload).await;
    assert_eq!(status["error_class"], "deadline", "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "stopped at its deadline, not at the sleeps' end"
    );
    let survivors = std::process::Command::new("pgrep")
        .args(["-f", "sleep 617[1-4]"])
        .output()
        .unwrap();
    assert!(
        survivors.stdout.is_empty(),
        "children, a daemonised grandchild and an orphan all killed: {}",
        String::from_utf8_lossy(&survivors.stdout)
    );
    assert!(node.shell_groups().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_past_the_cap_stops_the_command() {
    let node = ShellNode::start();
    let (status, chunks) = node.run("yes", "ops", json!({"command": "yes"})).await;
    let yes = result(&status);
    assert_eq!(yes["truncated"], true);
    assert_eq!(yes["stdout"].as_str().unwrap().len(), 65536, "max_output_bytes");
    assert_eq!(chunks.len(), 65536, "the same bytes streamed");
    assert!(yes["signal"].is_string(), "stopped by the node: {}", yes["signal"]);
    assert!(node.shell_groups().is_empty());
}
