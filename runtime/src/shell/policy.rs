//! `[tenants.<name>.shell]`: what `shell_command` jobs of a tenant may run.
//! Off by default: a tenant without `allow` rules runs nothing, and a node
//! whose policy grants no tenant a rule does not serve `shell_command` at
//! all.
//!
//! A rule names one program by absolute path and, optionally, the
//! arguments it may take (a glob per argument; a last `"**"` takes any
//! further arguments). Nothing is interpreted by a shell unless a rule
//! allows a shell program itself (`program = "/bin/sh"`, `args = ["-c",
//! "*"]`): the operator decides that in so many words.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::policy::Glob;

use crate::config::{parse_bytes, parse_cpu_percent};

/// A last argument pattern matching any number of further arguments.
pub const ANY_FURTHER_ARGS: &str = "**";

/// `[tenants.<name>.shell]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellPolicy {
    /// What the tenant may run (`[[tenants.<name>.shell.allow]]`); nothing
    /// by default.
    #[serde(default)]
    pub allow: Vec<ShellRule>,
    /// The unprivileged user commands run as (never root).
    #[serde(default = "default_user")]
    pub user: String,
    /// The whole environment of a command (it inherits nothing).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory of a command.
    #[serde(default = "default_cwd")]
    pub cwd: PathBuf,
    /// CPU limit of a command's cgroup, share of one core (`"100%"`).
    #[serde(default = "default_cpu_limit")]
    pub cpu_limit: String,
    /// Memory limit of a command's cgroup (`"256M"`).
    #[serde(default = "default_memory_limit")]
    pub memory_limit: String,
    /// Most processes and threads a command's cgroup may hold (a fork bomb
    /// stops here).
    #[serde(default = "default_pids_limit")]
    pub pids_limit: u32,
    /// After SIGTERM (deadline, cancel), how long a command has before its
    /// whole group gets SIGKILL, ms.
    #[serde(default = "default_stop_grace_ms")]
    pub stop_grace_ms: u64,
}

/// One `[[tenants.<name>.shell.allow]]` rule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellRule {
    /// The program, by absolute path.
    pub program: PathBuf,
    /// One glob per argument, in order; a last `"**"` matches any further
    /// arguments. Empty: the program runs without arguments only.
    #[serde(default)]
    pub args: Vec<Glob>,
}

fn default_user() -> String {
    "citadel-shell".into()
}
fn default_cwd() -> PathBuf {
    PathBuf::from("/")
}
fn default_cpu_limit() -> String {
    "100%".into()
}
fn default_memory_limit() -> String {
    "256M".into()
}
fn default_pids_limit() -> u32 {
    64
}
fn default_stop_grace_ms() -> u64 {
    2_000
}

impl Default for ShellPolicy {
    fn default() -> Self {
        ShellPolicy {
            allow: Vec::new(),
            user: default_user(),
            env: BTreeMap::new(),
            cwd: default_cwd(),
            cpu_limit: default_cpu_limit(),
            memory_limit: default_memory_limit(),
            pids_limit: default_pids_limit(),
            stop_grace_ms: default_stop_grace_ms(),
        }
    }
}

/// Why a command may not run, naming the rule that would allow it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ShellDenied(pub String);

impl ShellPolicy {
    /// Whether the tenant may run anything at all.
    pub fn granted(&self) -> bool {
        !self.allow.is_empty()
    }

    /// CPU limit, percent of one core (validated).
    pub fn cpu_percent(&self) -> u32 {
        parse_cpu_percent(&self.cpu_limit).unwrap_or(100)
    }

    /// Memory limit, bytes (validated).
    pub fn memory_bytes(&self) -> u64 {
        parse_bytes(&self.memory_limit).unwrap_or(256 << 20)
    }

    /// The program to execute for `program args…` of `tenant`: the
    /// absolute path of the first rule allowing it. A program given without
    /// a slash is matched against the rules' file names (no `PATH` search:
    /// the rule says which file runs).
    pub fn check(&self, tenant: &str, program: &str, args: &[String]) -> Result<PathBuf, ShellDenied> {
        let section = format!("[[tenants.{tenant}.shell.allow]]");
        if !self.granted() {
            return Err(ShellDenied(format!(
                "tenant `{tenant}` may not run commands: its policy has no {section} rule"
            )));
        }
        let named = |rule: &&ShellRule| {
            if program.contains('/') {
                rule.program.as_os_str() == program
            } else {
                rule.program.file_name().is_some_and(|name| name == program)
            }
        };
        let candidates: Vec<&ShellRule> = self.allow.iter().filter(named).collect();
        let Some(first) = candidates.first() else {
            let path = if program.contains('/') {
                program.to_string()
            } else {
                format!("/absolute/path/of/{program}")
            };
            return Err(ShellDenied(format!(
                "tenant `{tenant}` may not run `{program}`: no rule names it; to allow it add {section} \
                 program = {path:?} args = {}",
                patterns_for(args)
            )));
        };
        if let Some(rule) = candidates.iter().find(|rule| args_match(&rule.args, args)) {
            return Ok(rule.program.clone());
        }
        let allowed: Vec<String> = candidates
            .iter()
            .map(|rule| format!("{:?}", rule.args.iter().map(Glob::as_str).collect::<Vec<_>>()))
            .collect();
        Err(ShellDenied(format!(
            "tenant `{tenant}` may run `{}` only with arguments matching {} ({section}); {:?} does not match; \
             to allow it add {section} program = {:?} args = {}",
            first.program.display(),
            allowed.join(" or "),
            args,
            first.program.display().to_string(),
            patterns_for(args)
        )))
    }

    /// Check the section; the key and problem of the first mistake.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        for (index, rule) in self.allow.iter().enumerate() {
            if !rule.program.is_absolute() {
                return Err((
                    "shell.allow.program",
                    format!(
                        "allow[{index}]: {:?} must be an absolute path (the rule says which file runs)",
                        rule.program.display().to_string()
                    ),
                ));
            }
            for (position, pattern) in rule.args.iter().enumerate() {
                if pattern.as_str() == ANY_FURTHER_ARGS {
                    if position + 1 != rule.args.len() {
                        return Err((
                            "shell.allow.args",
                            format!("allow[{index}]: \"**\" may only be the last pattern"),
                        ));
                    }
                    continue;
                }
                if let Some(problem) = pattern.problem() {
                    return Err(("shell.allow.args", format!("allow[{index}]: {problem}")));
                }
            }
        }
        if self.user.trim().is_empty() || self.user == "root" {
            return Err(("shell.user", format!("{:?} must name an unprivileged user", self.user)));
        }
        if !self.cwd.is_absolute() {
            return Err(("shell.cwd", format!("{:?} must be an absolute path", self.cwd)));
        }
        if let Some(key) = self
            .env
            .keys()
            .find(|key| key.is_empty() || key.contains('=') || key.contains('\0'))
        {
            return Err(("shell.env", format!("{key:?} is not a variable name")));
        }
        parse_cpu_percent(&self.cpu_limit).map_err(|problem| ("shell.cpu_limit", problem))?;
        parse_bytes(&self.memory_limit).map_err(|problem| ("shell.memory_limit", problem))?;
        if !(1..=100_000).contains(&self.pids_limit) {
            return Err((
                "shell.pids_limit",
                format!("must be between 1 and 100000, got {}", self.pids_limit),
            ));
        }
        if !(1..=600_000).contains(&self.stop_grace_ms) {
            return Err((
                "shell.stop_grace_ms",
                format!("must be between 1 and 600000, got {}", self.stop_grace_ms),
            ));
        }
        Ok(())
    }
}

/// Whether `args` match `patterns` one by one (a last `**` takes the rest).
fn args_match(patterns: &[Glob], args: &[String]) -> bool {
    let (patterns, rest_allowed) = match patterns.split_last() {
        Some((last, before)) if last.as_str() == ANY_FURTHER_ARGS => (before, true),
        _ => (patterns, false),
    };
    if args.len() < patterns.len() || (!rest_allowed && args.len() != patterns.len()) {
        return false;
    }
    patterns.iter().zip(args).all(|(pattern, arg)| pattern.matches(arg))
}

/// The argument patterns that allow exactly `args` (glob characters escaped).
fn patterns_for(args: &[String]) -> String {
    let escaped: Vec<String> = args.iter().map(|arg| glob::Pattern::escape(arg)).collect();
    format!("{escaped:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &[(&str, &[&str])]) -> ShellPolicy {
        ShellPolicy {
            allow: rules
                .iter()
                .map(|(program, args)| ShellRule {
                    program: program.into(),
                    args: args.iter().map(|arg| Glob::new(*arg)).collect(),
                })
                .collect(),
            ..ShellPolicy::default()
        }
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|arg| arg.to_string()).collect()
    }

    #[test]
    fn rules_match_program_and_arguments() {
        let shell = policy(&[
            ("/usr/bin/nvidia-smi", &["--query-gpu=*", "--format=csv"]),
            ("/bin/echo", &["**"]),
            ("/bin/sh", &["-c", "*"]),
        ]);
        assert_eq!(
            shell.check("ops", "nvidia-smi", &args(&["--query-gpu=name,uuid", "--format=csv"])),
            Ok(PathBuf::from("/usr/bin/nvidia-smi"))
        );
        assert_eq!(
            shell.check("ops", "/bin/echo", &args(&[])),
            Ok("/bin/echo".into()),
            "** takes zero"
        );
        assert_eq!(
            shell.check("ops", "echo", &args(&["a", "b", "c"])),
            Ok("/bin/echo".into())
        );
        assert_eq!(
            shell.check("ops", "sh", &args(&["-c", "ls | head"])),
            Ok("/bin/sh".into())
        );
        assert!(
            shell.check("ops", "/usr/local/bin/echo", &args(&[])).is_err(),
            "a path must be the rule's own"
        );
    }

    #[test]
    fn denials_name_the_rule_that_would_allow() {
        let shell = policy(&[("/usr/bin/nvidia-smi", &["-L"])]);
        let denied = shell.check("ops", "rm", &args(&["-rf", "/"])).unwrap_err().0;
        assert!(denied.contains("may not run `rm`"), "{denied}");
        assert!(
            denied.contains("[[tenants.ops.shell.allow]] program = \"/absolute/path/of/rm\" args = [\"-rf\", \"/\"]"),
            "{denied}"
        );
        let denied = shell.check("ops", "nvidia-smi", &args(&["-q"])).unwrap_err().0;
        assert!(denied.contains("only with arguments matching [\"-L\"]"), "{denied}");
        assert!(
            denied.contains("program = \"/usr/bin/nvidia-smi\" args = [\"-q\"]"),
            "{denied}"
        );
        let denied = shell.check("ops", "nvidia-smi", &args(&["-L", "extra"])).unwrap_err().0;
        assert!(denied.contains("does not match"), "too many arguments: {denied}");
        let glob_chars = shell.check("ops", "nvidia-smi", &args(&["*"])).unwrap_err().0;
        assert!(glob_chars.contains("args = [\"[*]\"]"), "escaped: {glob_chars}");
        let none = ShellPolicy::default().check("web", "ls", &[]).unwrap_err().0;
        assert_eq!(
            none,
            "tenant `web` may not run commands: its policy has no [[tenants.web.shell.allow]] rule"
        );
    }

    #[test]
    fn mistakes_name_the_key() {
        for (shell, key) in [
            (policy(&[("nvidia-smi", &[])]), "shell.allow.program"),
            (policy(&[("/bin/echo", &["**", "x"])]), "shell.allow.args"),
            (policy(&[("/bin/echo", &["[oops"])]), "shell.allow.args"),
            (
                ShellPolicy {
                    user: "root".into(),
                    ..ShellPolicy::default()
                },
                "shell.user",
            ),
            (
                ShellPolicy {
                    memory_limit: "lots".into(),
                    ..ShellPolicy::default()
                },
                "shell.memory_limit",
            ),
            (
                ShellPolicy {
                    pids_limit: 0,
                    ..ShellPolicy::default()
                },
                "shell.pids_limit",
            ),
        ] {
            assert_eq!(shell.validate().unwrap_err().0, key);
        }
        ShellPolicy::default().validate().unwrap();
    }
}
