//! One shell command, start to end: its cgroup (CPU, memory, pids limits,
//! every one read back — a command never runs with a limit unenforced),
//! the launcher that joins it, drops to the user and execs, its output
//! streamed and captured under the output cap, and its end — by itself, or
//! by deadline, cancellation or the cap: SIGTERM to everything in the
//! group, SIGKILL after the grace, then the group is emptied and removed.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ShellSettings;
use crate::config::Limits;
use crate::job::{Chunk, HandlerErrorKind, JobError};
use crate::sandbox::output::StreamState;
use crate::services::cgroup::ServiceCgroup;
use crate::services::launch;

/// Bytes read from a pipe at once (and so the largest chunk, below the
/// tenant's own cap).
const READ_SIZE: usize = 8192;

/// How long a group may take to empty under SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Commands started by this process (part of each cgroup's name).
static STARTED: AtomicU64 = AtomicU64::new(0);

/// A command to run, checked against its tenant's policy.
#[derive(Debug, Clone)]
pub struct CommandRun {
    /// The job (names the cgroup and the log lines).
    pub job_id: String,
    /// The program, by absolute path.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// The user it runs as.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
    /// Its whole environment.
    pub env: BTreeMap<String, String>,
    /// Its working directory.
    pub cwd: PathBuf,
    /// CPU limit, percent of one core.
    pub cpu_percent: u32,
    /// Memory limit, bytes.
    pub memory_bytes: u64,
    /// Processes and threads at most.
    pub pids_max: u32,
    /// The job's budget.
    pub timeout: Duration,
    /// SIGTERM → SIGKILL.
    pub stop_grace: Duration,
    /// stdout and stderr together, bytes.
    pub max_output_bytes: u64,
    /// One chunk, bytes.
    pub max_chunk_bytes: u32,
    /// Chunks per second.
    pub max_chunks_per_second: u32,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// Its exit status, when it exited by itself.
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did (`SIGKILL`, …).
    pub signal: Option<String>,
    /// From start to end.
    pub duration: Duration,
    /// Whether its output went past the cap (it was then stopped).
    pub truncated: bool,
    /// Whether the kernel OOM-killed a process of its group.
    pub oom_killed: bool,
    /// What it wrote to stdout (up to the cap).
    pub stdout: String,
    /// What it wrote to stderr (up to the cap).
    pub stderr: String,
}

impl Finished {
    /// The job's result.
    pub fn result(&self) -> Value {
        json!({
            "exit_code": self.exit_code,
            "signal": self.signal,
            "duration_ms": u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX),
            "truncated": self.truncated,
            "oom_killed": self.oom_killed,
            "stdout": self.stdout,
            "stderr": self.stderr,
        })
    }
}

/// Why the node stopped a command before it ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    Deadline,
    Cancelled,
    OutputCap,
}

fn unavailable(message: String) -> JobError {
    JobError::Handler {
        kind: HandlerErrorKind::Unavailable,
        message,
    }
}

impl CommandRun {
    /// Run it to the end, streaming its output to `chunks`.
    pub async fn run(
        self,
        settings: &ShellSettings,
        chunks: Option<mpsc::Sender<Chunk>>,
        cancel: &CancellationToken,
    ) -> Result<Finished, JobError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let cgroup = Arc::new(self.place(settings).await?);
        let outcome = self
            .supervise(settings, &cgroup, chunks, cancel, deadline, started)
            .await;
        let group = Arc::clone(&cgroup);
        let _ = tokio::task::spawn_blocking(move || {
            group.kill_all(KILL_WAIT);
            group.remove();
        })
        .await;
        outcome
    }

    /// The command's cgroup, every limit held; otherwise it does not run.
    async fn place(&self, settings: &ShellSettings) -> Result<ServiceCgroup, JobError> {
        let serial = STARTED.fetch_add(1, Ordering::Relaxed);
        let name: String = self
            .job_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .take(40)
            .collect();
        let path = format!("{}/shell/{name}-{}-{serial}", settings.slice, std::process::id());
        let limits = Limits {
            cpu_percent: Some(self.cpu_percent),
            memory_bytes: Some(self.memory_bytes),
            pids_max: Some(u64::from(self.pids_max)),
        };
        let created = tokio::task::spawn_blocking(move || ServiceCgroup::create(&path, limits))
            .await
            .unwrap_or_else(|err| Err(format!("placing the command failed: {err}")));
        let cgroup = created.map_err(|reason| unavailable(format!("cannot give the command its cgroup: {reason}")))?;
        if !cgroup.warnings().is_empty() {
            let problem = cgroup.warnings().join("; ");
            let cgroup = Arc::new(cgroup);
            let group = Arc::clone(&cgroup);
            let _ = tokio::task::spawn_blocking(move || group.remove()).await;
            return Err(unavailable(format!(
                "the command's limits cannot be enforced on this node, so it does not run: {problem}"
            )));
        }
        Ok(cgroup)
    }

    async fn supervise(
        &self,
        settings: &ShellSettings,
        cgroup: &Arc<ServiceCgroup>,
        chunks: Option<mpsc::Sender<Chunk>>,
        cancel: &CancellationToken,
        deadline: tokio::time::Instant,
        started: Instant,
    ) -> Result<Finished, JobError> {
        let mut child = self
            .command(settings, cgroup)
            .spawn()
            .map_err(|err| unavailable(format!("cannot start the launcher: {err}")))?;
        let oom_before = cgroup.oom_kills();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let capture = Capture::new(
            StreamState::new(chunks, self.max_chunk_bytes, self.max_chunks_per_second),
            self.max_output_bytes,
        );
        let output_full = capture.full.clone();
        let collect = capture.collect(stdout, stderr);
        tokio::pin!(collect);
        let mut collected = None;
        let mut stopped = None;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                captured = &mut collect, if collected.is_none() => collected = Some(captured),
                _ = tokio::time::sleep_until(deadline), if stopped.is_none() => {
                    stopped = Some(Stopped::Deadline);
                    self.terminate(cgroup).await;
                }
                _ = cancel.cancelled(), if stopped.is_none() => {
                    stopped = Some(Stopped::Cancelled);
                    self.terminate(cgroup).await;
                }
                _ = output_full.cancelled(), if stopped.is_none() => {
                    stopped = Some(Stopped::OutputCap);
                    self.terminate(cgroup).await;
                }
            }
        };
        let status = status.map_err(|err| unavailable(format!("cannot wait for the command: {err}")))?;
        // Whatever the main process left behind goes now, so the pipes it
        // may hold close and the output is complete.
        let group = Arc::clone(cgroup);
        let _ = tokio::task::spawn_blocking(move || group.kill_all(KILL_WAIT)).await;
        let (stdout, stderr, truncated) = match collected {
            Some(captured) => captured,
            None => collect.await,
        };
        let finished = Finished {
            exit_code: status.code(),
            signal: status.signal().map(signal_name),
            duration: started.elapsed(),
            truncated,
            oom_killed: cgroup.oom_kills() > oom_before,
            stdout,
            stderr,
        };
        if finished.exit_code == Some(i32::from(launch::LAUNCH_FAILED))
            && finished.stderr.starts_with("citadel service-exec")
        {
            return Err(unavailable(format!(
                "the command could not be started: {}",
                finished.stderr.trim()
            )));
        }
        match stopped {
            Some(Stopped::Deadline) => Err(JobError::Deadline { timeout: self.timeout }),
            Some(Stopped::Cancelled) => Err(JobError::Cancelled {
                reason: "the job was cancelled; its command was stopped".into(),
            }),
            Some(Stopped::OutputCap) | None => Ok(finished),
        }
    }

    /// The launcher: join the cgroup, drop to the user, `no_new_privs`,
    /// exec the program — with nothing of the node's environment.
    fn command(&self, settings: &ShellSettings, cgroup: &ServiceCgroup) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&settings.launcher);
        command.arg(launch::SUBCOMMAND);
        for file in cgroup.procs_files() {
            command.arg("--join").arg(file);
        }
        command
            .arg("--user")
            .arg(format!("{}:{}", self.uid, self.gid))
            .arg("--")
            .arg(&self.program)
            .args(&self.args)
            .env_clear()
            .envs(&self.env)
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// SIGTERM everything in the group; SIGKILL what is left after the grace.
    async fn terminate(&self, cgroup: &Arc<ServiceCgroup>) {
        for pid in cgroup.procs() {
            if let Some(pid) = Pid::from_raw(pid as i32) {
                let _ = kill_process(pid, Signal::TERM);
            }
        }
        let grace_over = tokio::time::Instant::now() + self.stop_grace;
        while !cgroup.procs().is_empty() && tokio::time::Instant::now() < grace_over {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let group = Arc::clone(cgroup);
        let _ = tokio::task::spawn_blocking(move || group.kill_all(KILL_WAIT)).await;
    }
}

/// `SIGKILL` for 9, and so on (`signal N` for the rarer ones).
fn signal_name(number: i32) -> String {
    let name = match number {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        _ => return format!("signal {number}"),
    };
    name.to_string()
}

/// The command's output: streamed as chunks, kept for the result, capped.
struct Capture {
    stream: StreamState,
    remaining: u64,
    /// Fires once the output passed the cap.
    full: CancellationToken,
}

/// Bytes of one pipe not yet sent because they end inside a UTF-8 character.
#[derive(Default)]
struct Utf8Carry(Vec<u8>);

impl Utf8Carry {
    /// `bytes` after what was carried, as text: invalid sequences replaced,
    /// an incomplete last character kept for the next call.
    fn text(&mut self, bytes: &[u8]) -> String {
        self.0.extend_from_slice(bytes);
        let keep = match std::str::from_utf8(&self.0) {
            Ok(_) => 0,
            Err(err) if err.error_len().is_none() => self.0.len() - err.valid_up_to(),
            Err(_) => incomplete_tail(&self.0),
        };
        let rest = self.0.split_off(self.0.len() - keep);
        let text = String::from_utf8_lossy(&self.0).into_owned();
        self.0 = rest;
        text
    }

    /// Whatever is left at the end.
    fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.0).into_owned();
        self.0.clear();
        text
    }
}

/// Length of an incomplete UTF-8 character at the end of `bytes` (0–3).
fn incomplete_tail(bytes: &[u8]) -> usize {
    for back in 1..=3.min(bytes.len()) {
        let byte = bytes[bytes.len() - back];
        if byte & 0xC0 != 0x80 {
            let needed = match byte {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF7 => 4,
                _ => 1,
            };
            return if needed > back { back } else { 0 };
        }
    }
    0
}

impl Capture {
    fn new(stream: StreamState, limit: u64) -> Capture {
        Capture {
            stream,
            remaining: limit,
            full: CancellationToken::new(),
        }
    }

    /// Read both pipes to their end: (stdout, stderr, truncated).
    async fn collect(
        mut self,
        mut stdout: impl AsyncRead + Unpin,
        mut stderr: impl AsyncRead + Unpin,
    ) -> (String, String, bool) {
        let mut texts = [String::new(), String::new()];
        let mut carries = [Utf8Carry::default(), Utf8Carry::default()];
        let mut open = [true, true];
        // A chunk is one read plus at most 3 bytes of a character carried
        // over, within the tenant's chunk cap.
        let read_size = READ_SIZE.min(self.stream.max_chunk_bytes().saturating_sub(3).max(1) as usize);
        let mut out_buffer = vec![0u8; read_size];
        let mut err_buffer = vec![0u8; read_size];
        while open[0] || open[1] {
            let (pipe, read) = tokio::select! {
                read = stdout.read(&mut out_buffer), if open[0] => (0, read),
                read = stderr.read(&mut err_buffer), if open[1] => (1, read),
            };
            let text = match read {
                Ok(0) | Err(_) => {
                    open[pipe] = false;
                    carries[pipe].finish()
                }
                Ok(count) => {
                    let buffer = if pipe == 0 { &out_buffer } else { &err_buffer };
                    carries[pipe].text(&buffer[..count])
                }
            };
            self.take(&mut texts[pipe], text).await;
        }
        let [stdout, stderr] = texts;
        (stdout, stderr, self.full.is_cancelled())
    }

    /// Keep and stream what fits under the cap; past it, signal `full`.
    async fn take(&mut self, kept: &mut String, mut text: String) {
        if text.is_empty() || self.full.is_cancelled() {
            return;
        }
        if text.len() as u64 > self.remaining {
            let mut end = self.remaining as usize;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            self.full.cancel();
        }
        self.remaining -= text.len() as u64;
        if text.is_empty() {
            return;
        }
        kept.push_str(&text);
        // Nobody listening (a Nexus job) is not a failure: the result has it.
        let _ = self.stream.send(text).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_on_character_boundaries() {
        let mut carry = Utf8Carry::default();
        let snow = "☃".as_bytes();
        assert_eq!(carry.text(&[b'a', snow[0]]), "a");
        assert_eq!(carry.text(&snow[1..]), "☃");
        assert_eq!(carry.text(&[0xFF, b'b']), "\u{FFFD}b", "invalid bytes are replaced");
        assert_eq!(carry.text(&snow[..2]), "");
        assert_eq!(carry.finish(), "\u{FFFD}", "an unfinished character at the end");
    }

    #[tokio::test]
    async fn output_is_capped_across_both_pipes() {
        let (sink, mut chunks) = mpsc::channel(64);
        let capture = Capture::new(StreamState::new(Some(sink), 4, 1000), 10);
        let full = capture.full.clone();
        let (stdout, stderr, truncated) = capture.collect(&b"0123456789abcdef"[..], &b""[..]).await;
        assert!(truncated && full.is_cancelled());
        assert_eq!((stdout.as_str(), stderr.as_str()), ("0123456789", ""));
        let mut streamed = String::new();
        while let Ok(chunk) = chunks.try_recv() {
            assert!(chunk.content.len() <= 4, "chunks keep the tenant's size cap");
            streamed.push_str(&chunk.content);
        }
        assert_eq!(streamed, "0123456789");
    }

    #[test]
    fn signals_have_names() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(15), "SIGTERM");
    }
}
