//! Processes the node manages (engines, services), from `/proc` via
//! `procfs`: command line, the model it serves (`--model X`, `--model=X`,
//! `-m X`), uptime, resident memory, and its cgroup.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use procfs::FromRead;
use procfs::process::{Process, Stat};
use serde::Serialize;

/// One process sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessInfo {
    /// Its pid.
    pub pid: u32,
    /// Its command line.
    pub cmdline: Vec<String>,
    /// The model named on its command line, if any.
    pub model: Option<String>,
    /// How long it has run, seconds.
    pub uptime_seconds: u64,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
}

/// `args` joined as they may be shown in status: the password of a URL
/// (`scheme://user:password@host`) and the value of a secret-looking flag
/// (`--password X`, `--api-key=X`, `--token X`, …) become `***`.
pub fn shown_cmdline(args: &[String]) -> String {
    let secret_flag = |arg: &str| {
        let name = arg.trim_start_matches('-').to_ascii_lowercase();
        arg.starts_with('-')
            && ["pass", "secret", "token", "api-key", "api_key", "apikey"]
                .iter()
                .any(|word| name.contains(word))
    };
    let mut shown = Vec::with_capacity(args.len());
    let mut hide_next = false;
    for arg in args {
        if std::mem::take(&mut hide_next) {
            shown.push("***".to_string());
        } else if secret_flag(arg) {
            match arg.split_once('=') {
                Some((flag, _)) => shown.push(format!("{flag}=***")),
                None => {
                    shown.push(arg.clone());
                    hide_next = true;
                }
            }
        } else {
            shown.push(without_url_password(arg));
        }
    }
    shown.join(" ")
}

/// `text` with the password of any `scheme://user:password@` in it hidden.
fn without_url_password(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("://") {
        let (before, after) = rest.split_at(start + 3);
        out.push_str(before);
        let authority_end = after.find(['/', '?', '#', ' ']).unwrap_or(after.len());
        let authority = &after[..authority_end];
        match authority
            .rfind('@')
            .and_then(|at| authority[..at].find(':').map(|colon| (colon, at)))
        {
            Some((colon, at)) => {
                out.push_str(&authority[..=colon]);
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    out
}

/// Command lines remembered per process: pid, start time (a reused pid is
/// another process) and `comm` (which an `exec` changes). Not reading it
/// again saves a file read per managed process per snapshot.
type Cmdlines = Arc<Mutex<HashMap<(u32, u64, String), Vec<String>>>>;

/// Remembered command lines at most (then forgotten all at once).
const MAX_CMDLINES: usize = 8192;

/// Reads processes from a proc filesystem.
#[derive(Debug, Clone)]
pub struct ProcReader {
    root: PathBuf,
    boot_time_secs: u64,
    cmdlines: Cmdlines,
}

impl ProcReader {
    /// The live `/proc`.
    pub fn live() -> Result<ProcReader, String> {
        let boot_time_secs = procfs::boot_time_secs().map_err(|err| format!("cannot read boot time: {err}"))?;
        Ok(ProcReader {
            root: PathBuf::from("/proc"),
            boot_time_secs,
            cmdlines: Cmdlines::default(),
        })
    }

    /// Sample `pid`: two files (`stat`, `cmdline`), read by path — no
    /// directory handle — because a snapshot reads them for every managed
    /// process.
    pub fn read(&self, pid: u32) -> Result<ProcessInfo, String> {
        let dir = self.root.join(pid.to_string());
        let stat = Stat::from_file(dir.join("stat")).map_err(|err| format!("process {pid}: {err}"))?;
        let cmdline = self.cmdline(&dir, (pid, stat.starttime, stat.comm.clone()));
        let started = self.boot_time_secs + stat.starttime / procfs::ticks_per_second().max(1);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Ok(ProcessInfo {
            pid,
            model: model_of(&cmdline),
            cmdline,
            uptime_seconds: now.saturating_sub(started),
            rss_bytes: stat.rss * procfs::page_size(),
        })
    }

    fn cmdline(&self, dir: &Path, key: (u32, u64, String)) -> Vec<String> {
        if let Some(known) = self.cmdlines.lock().expect("cmdline cache poisoned").get(&key) {
            return known.clone();
        }
        // Arguments are NUL-terminated; a kernel thread has none.
        let bytes = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        let cmdline: Vec<String> = match bytes.strip_suffix(&[0]).unwrap_or(&bytes) {
            [] => Vec::new(),
            args => args
                .split(|byte| *byte == 0)
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect(),
        };
        // A process still exec()ing has an empty one for a moment: not remembered.
        if !cmdline.is_empty() {
            let mut known = self.cmdlines.lock().expect("cmdline cache poisoned");
            if known.len() >= MAX_CMDLINES {
                known.clear();
            }
            known.insert(key, cmdline.clone());
        }
        cmdline
    }

    /// The cgroup of `pid` in the hierarchy of `version`: v2's unified path,
    /// or v1's `cpuacct` path (relative to the hierarchy root).
    pub fn cgroup_of(&self, pid: u32, version: u8) -> Result<String, String> {
        let groups = self
            .process(pid)?
            .cgroups()
            .map_err(|err| format!("process {pid}: {err}"))?;
        groups
            .into_iter()
            .find(|group| match version {
                2 => group.hierarchy == 0,
                _ => group.controllers.iter().any(|controller| controller == "cpuacct"),
            })
            .map(|group| group.pathname.trim_start_matches('/').to_string())
            .ok_or_else(|| format!("process {pid} is in no cgroup v{version} hierarchy"))
    }

    fn process(&self, pid: u32) -> Result<Process, String> {
        Process::new_with_root(self.root.join(pid.to_string())).map_err(|err| format!("process {pid}: {err}"))
    }

    /// The proc root.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// The value of `--model X`, `--model=X` or `-m X`.
pub fn model_of(cmdline: &[String]) -> Option<String> {
    let mut args = cmdline.iter();
    while let Some(arg) = args.next() {
        if let Some(value) = arg.strip_prefix("--model=") {
            return Some(value.to_string());
        }
        if arg == "--model" || arg == "-m" {
            return args.next().cloned();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn secrets_on_command_lines_are_hidden() {
        for (line, shown) in [
            (
                "llama-server -m smollm2.gguf --port 8081",
                "llama-server -m smollm2.gguf --port 8081",
            ),
            (
                "citadel work --redis-url redis://citadel:s3cret@db:6379/0",
                "citadel work --redis-url redis://citadel:***@db:6379/0",
            ),
            ("app --db=postgres://u:p@h/db?x=1", "app --db=postgres://u:***@h/db?x=1"),
            (
                "vllm serve m --api-key s3cret --port 1",
                "vllm serve m --api-key *** --port 1",
            ),
            ("redis-server --requirepass s3cret", "redis-server --requirepass ***"),
            ("svc --token=s3cret http://host/x", "svc --token=*** http://host/x"),
            ("svc https://user@host/x", "svc https://user@host/x"),
        ] {
            assert_eq!(shown_cmdline(&args(line)), shown, "{line}");
        }
    }

    #[test]
    fn finds_the_model_argument() {
        assert_eq!(
            model_of(&args("vllm serve --model meta-llama/Llama-3.2-1B --port 8000")).as_deref(),
            Some("meta-llama/Llama-3.2-1B")
        );
        assert_eq!(
            model_of(&args("llama-server -m /models/smollm2.gguf -c 2048")).as_deref(),
            Some("/models/smollm2.gguf")
        );
        assert_eq!(model_of(&args("x --model=qwen2.5")).as_deref(), Some("qwen2.5"));
        assert_eq!(model_of(&args("redis-server --port 6379")), None);
    }

    #[test]
    fn reads_this_process() {
        let reader = ProcReader::live().unwrap();
        let me = reader.read(std::process::id()).unwrap();
        assert!(me.rss_bytes > 0);
        assert!(!me.cmdline.is_empty());
        assert!(me.uptime_seconds < 24 * 3600);
        assert!(reader.read(u32::MAX).is_err());
    }

    #[test]
    fn a_remembered_command_line_follows_an_exec() {
        use std::io::Write;
        let reader = ProcReader::live().unwrap();
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read line; exec sleep 30"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let running = |program: &str| loop {
            // Between fork and exec a child shows its parent's command line.
            let now = reader.read(pid).unwrap();
            if now.cmdline.first().is_some_and(|arg| arg == program) {
                break now;
            }
            assert!(std::time::Instant::now() < deadline, "{program} never showed");
            std::thread::yield_now();
        };
        assert_eq!(running("sh").cmdline, ["sh", "-c", "read line; exec sleep 30"]);
        writeln!(child.stdin.as_mut().unwrap()).unwrap();
        let after = running("sleep");
        assert_eq!(after.cmdline, ["sleep", "30"]);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
