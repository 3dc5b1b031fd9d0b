//! `shell_command`, Citadel's built-in on-prem handler, redesigned for a
//! node that runs many tenants' jobs: a native handler that is **off**
//! unless the operator grants a tenant `[[tenants.<name>.shell.allow]]`
//! rules (`crate::policy::ShellPolicy`), runs only programs those rules
//! name, with arguments they allow, and never through a shell unless a rule
//! allows a shell program itself.
//!
//! Each command ([`run`]) runs as the policy's unprivileged user, in a
//! cgroup of its own under the node's slice (`<slice>/shell/<job>`) with
//! CPU, memory and pids limits, with only the policy's environment, no
//! stdin, `no_new_privs`, and the job's deadline: SIGTERM, then SIGKILL to
//! everything in its group (grandchildren, daemonised or not, included).
//! Its stdout and stderr stream as `chunk`s as they come and are returned
//! in the result, capped together by the tenant's `max_output_bytes`.
//!
//! Payload: `{"command": "nvidia-smi -L"}` (split into words like a shell
//! would, quotes honoured, nothing expanded), `{"command": ["nvidia-smi",
//! "-L"]}`, or `{"program": "nvidia-smi", "args": ["-L"]}`. Result:
//! `{exit_code, signal, duration_ms, truncated, oom_killed, stdout,
//! stderr}`.

pub mod policy;
mod run;

use std::path::PathBuf;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::Value;

use crate::handlers::{NativeHandler, NativeJob};
use crate::job::{HandlerErrorKind, JobError};
use crate::policy::Policy;
use crate::sandbox::limits::JobLimits;

pub use run::{CommandRun, Finished};

/// The job type.
pub const SHELL_COMMAND: &str = "shell_command";

/// Where commands run on this node.
#[derive(Debug, Clone)]
pub struct ShellSettings {
    /// The citadel binary (its `service-exec` joins the cgroup, drops to
    /// the user and execs the program).
    pub launcher: PathBuf,
    /// The node's cgroup slice; commands run in `<slice>/shell/<job>`.
    pub slice: String,
}

/// The `shell_command` handler.
pub struct ShellHandler {
    policy: Policy,
    settings: ShellSettings,
}

/// The command a payload asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Requested {
    program: String,
    args: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum CommandField {
    Line(String),
    Words(Vec<String>),
}

#[derive(Deserialize)]
struct Payload {
    command: Option<CommandField>,
    program: Option<String>,
    #[serde(default)]
    args: Vec<String>,
}

impl Requested {
    fn parse(payload: &str) -> Result<Requested, String> {
        let payload: Payload = serde_json::from_str(payload).map_err(|err| format!("shell_command payload: {err}"))?;
        let words = match (payload.command, payload.program) {
            (Some(CommandField::Line(line)), None) => {
                shlex::split(&line).ok_or_else(|| format!("`command` {line:?} has an unterminated quote or escape"))?
            }
            (Some(CommandField::Words(words)), None) => words,
            (None, Some(program)) => std::iter::once(program).chain(payload.args).collect(),
            (Some(_), Some(_)) => return Err("give `command` or `program`, not both".into()),
            (None, None) => {
                return Err("give `command` (a line or a list of words) or `program` and `args`".into());
            }
        };
        let mut words = words.into_iter();
        let program = words
            .next()
            .filter(|program| !program.is_empty())
            .ok_or("the command is empty")?;
        let args: Vec<String> = words.collect();
        if std::iter::once(&program).chain(&args).any(|word| word.contains('\0')) {
            return Err("the command contains a NUL byte".into());
        }
        Ok(Requested { program, args })
    }
}

impl ShellHandler {
    /// A handler running commands under `policy`, as `settings` say.
    pub fn new(policy: Policy, settings: ShellSettings) -> ShellHandler {
        ShellHandler { policy, settings }
    }

    /// Whether `policy` grants any tenant a rule (otherwise the node does
    /// not serve `shell_command`).
    pub fn granted_by(policy: &Policy) -> bool {
        policy.tenants().any(|(_, tenant)| tenant.shell.granted())
    }

    async fn run_job(&self, job: NativeJob<'_>) -> Result<Value, JobError> {
        let failure = |kind, message: String| JobError::Handler { kind, message };
        let requested =
            Requested::parse(&job.spec.payload).map_err(|message| failure(HandlerErrorKind::InvalidInput, message))?;
        let (tenant, policy) = self.policy.tenant(&job.spec.tenant);
        let shell = &policy.shell;
        let program = shell
            .check(tenant, &requested.program, &requested.args)
            .map_err(|denied| {
                tracing::warn!(job_id = %job.spec.id, tenant, program = %requested.program, reason = %denied, "shell command refused");
                failure(HandlerErrorKind::Denied, denied.0)
            })?;
        if !rustix::process::geteuid().is_root() {
            return Err(failure(
                HandlerErrorKind::Unavailable,
                format!(
                    "shell_command runs commands as `{}` in a cgroup of their own, which needs the node to run as root",
                    shell.user
                ),
            ));
        }
        let user = uzers::get_user_by_name(&shell.user).ok_or_else(|| {
            failure(
                HandlerErrorKind::Unavailable,
                format!(
                    "the shell user `{0}` (tenants.{tenant}.shell.user) does not exist on this node: create it with \
                     `useradd --system --no-create-home --shell /usr/sbin/nologin {0}`",
                    shell.user
                ),
            )
        })?;
        if user.uid() == 0 {
            return Err(failure(
                HandlerErrorKind::Denied,
                format!("the shell user `{}` is root; commands never run as root", shell.user),
            ));
        }
        let limits = JobLimits::new(policy, job.spec.timeout);
        tracing::info!(
            job_id = %job.spec.id,
            tenant,
            program = %program.display(),
            args = ?requested.args,
            user = %shell.user,
            "running a shell command"
        );
        let command = CommandRun {
            job_id: job.spec.id.clone(),
            program,
            args: requested.args,
            uid: user.uid(),
            gid: user.primary_group_id(),
            env: shell.env.clone(),
            cwd: shell.cwd.clone(),
            cpu_percent: shell.cpu_percent(),
            memory_bytes: shell.memory_bytes(),
            pids_max: shell.pids_limit,
            timeout: limits.timeout,
            stop_grace: Duration::from_millis(shell.stop_grace_ms),
            max_output_bytes: limits.max_output_bytes,
            max_chunk_bytes: limits.max_chunk_bytes,
            max_chunks_per_second: limits.max_chunks_per_second,
        };
        let finished = command.run(&self.settings, job.chunks, job.cancel).await?;
        Ok(finished.result())
    }
}

impl NativeHandler for ShellHandler {
    fn run<'a>(&'a self, job: NativeJob<'a>) -> BoxFuture<'a, Result<Value, JobError>> {
        Box::pin(self.run_job(job))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(payload: &str) -> Result<(String, Vec<String>), String> {
        Requested::parse(payload).map(|requested| (requested.program, requested.args))
    }

    #[test]
    fn payloads_name_a_program_and_its_arguments() {
        let words = |list: &[&str]| list.iter().map(|word| word.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parsed(r#"{"command": "nvidia-smi --query-gpu='name, uuid' -L"}"#),
            Ok(("nvidia-smi".into(), words(&["--query-gpu=name, uuid", "-L"])))
        );
        assert_eq!(
            parsed(r#"{"command": "ls | head $HOME"}"#),
            Ok(("ls".into(), words(&["|", "head", "$HOME"]))),
            "no shell: operators and variables are plain words"
        );
        assert_eq!(
            parsed(r#"{"command": ["echo", "a b"]}"#),
            Ok(("echo".into(), words(&["a b"])))
        );
        assert_eq!(
            parsed(r#"{"program": "echo", "args": ["x"]}"#),
            Ok(("echo".into(), words(&["x"])))
        );
        for bad in [
            r#"{"command": "echo 'unterminated"}"#,
            r#"{"command": ""}"#,
            r#"{"command": "x", "program": "y"}"#,
            r#"{"args": ["x"]}"#,
            r#"{"command": ["a\u0000b"]}"#,
            "not json",
        ] {
            assert!(parsed(bad).is_err(), "{bad}");
        }
    }
}
