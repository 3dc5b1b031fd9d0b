//! `[[services]]`: native processes the node runs (an inference engine such
//! as `llama-server`, a sidecar), each in its own cgroup with the limits set
//! here, health-checked and restarted by `services::Supervisor`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// When a service that exited is started again.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// When it exits with a failure (non-zero status, a signal, out of memory).
    #[default]
    OnFailure,
    /// Whenever it exits.
    Always,
    /// Never.
    Never,
}

/// One service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceSettings {
    /// What status and logs call it (`^[a-zA-Z0-9._-]{1,64}$`); also its
    /// cgroup's name.
    pub name: String,
    /// The program (a path, or a name looked up in `PATH`).
    pub command: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment added to the node's own.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (default: the node's).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// The cgroup group it runs under: `<node.cgroup_slice>/<group>/<name>`.
    #[serde(default = "default_group")]
    pub group: String,
    /// CPU limit as a share of one core: `"200%"` is two cores, `"50%"` half of one.
    #[serde(default)]
    pub cpu_limit: Option<String>,
    /// Memory limit: bytes, or with a unit (`"512M"`, `"4G"`, `"1.5G"`; powers of 1024).
    #[serde(default)]
    pub memory_limit: Option<String>,
    /// The port it serves on (reported in status; health checks go there).
    #[serde(default)]
    pub port: Option<u16>,
    /// HTTP path answering 2xx when healthy (`/health`), probed on `port`.
    #[serde(default)]
    pub health_path: Option<String>,
    /// When it is started again after it exits.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// How long it may take to exit after SIGTERM before it is killed, ms.
    #[serde(default = "default_stop_timeout_ms")]
    pub stop_timeout_ms: u64,
    /// Size at which each of its log files (stdout, stderr) is rotated, bytes
    /// (one previous file is kept as `.1`).
    #[serde(default = "default_log_max_bytes")]
    pub log_max_bytes: u64,
    /// Started with the node (otherwise only when device configuration asks).
    #[serde(default = "default_autostart")]
    pub autostart: bool,
    /// Models it serves (reported in status).
    #[serde(default)]
    pub models: Vec<String>,
}

fn default_group() -> String {
    "services".into()
}

fn default_stop_timeout_ms() -> u64 {
    10_000
}

fn default_log_max_bytes() -> u64 {
    8 << 20
}

fn default_autostart() -> bool {
    true
}

/// A service's cgroup limits, parsed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// CPU, percent of one core.
    pub cpu_percent: Option<u32>,
    /// Memory, bytes.
    pub memory_bytes: Option<u64>,
    /// Processes and threads at most.
    pub pids_max: Option<u64>,
}

impl ServiceSettings {
    /// The limits, parsed (validation has already accepted them).
    pub fn limits(&self) -> Limits {
        Limits {
            cpu_percent: self.cpu_limit.as_deref().and_then(|text| parse_cpu_percent(text).ok()),
            memory_bytes: self.memory_limit.as_deref().and_then(|text| parse_bytes(text).ok()),
            pids_max: None,
        }
    }
}

/// `"200%"` → 200. Between 1% and 100 cores.
pub fn parse_cpu_percent(text: &str) -> Result<u32, String> {
    let number = text
        .trim()
        .strip_suffix('%')
        .ok_or_else(|| format!("{text:?} must be a percentage of one core, like \"50%\" or \"200%\""))?;
    let percent: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} must be a percentage of one core, like \"50%\" or \"200%\""))?;
    if !(1.0..=10_000.0).contains(&percent) {
        return Err(format!("{text:?} must be between 1% and 10000%"));
    }
    Ok(percent.round() as u32)
}

/// `"512M"` → 536870912. Units K, M, G, T (powers of 1024, optional `i`/`B`).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let problem = || format!("{text:?} must be bytes or a size like \"512M\" or \"4G\"");
    let trimmed = text.trim();
    let unit_start = trimmed.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(unit_start);
    let number: f64 = number.trim().parse().map_err(|_| problem())?;
    let multiplier: u64 = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches('B')
        .trim_end_matches('I')
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(problem()),
    };
    let bytes = number * multiplier as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(problem());
    }
    let bytes = bytes as u64;
    if bytes < 4 << 20 {
        return Err(format!(
            "{text:?} is below 4M: no useful process fits, and the kernel refuses limits under its own usage"
        ));
    }
    Ok(bytes)
}

/// Check every service and that names are unique.
pub(super) fn validate(services: &[ServiceSettings]) -> Result<(), ConfigError> {
    let invalid = |key: &'static str, problem: String| Err(ConfigError::Invalid { key, problem });
    for (index, service) in services.iter().enumerate() {
        let which = format!("services[{index}] ({:?})", service.name);
        if !super::valid_node_id(&service.name) {
            return invalid("services.name", format!("{which}: must match ^[a-zA-Z0-9._-]{{1,64}}$"));
        }
        if services[..index].iter().any(|other| other.name == service.name) {
            return invalid("services.name", format!("{which}: another service has this name"));
        }
        if service.command.trim().is_empty() {
            return invalid("services.command", format!("{which}: must name a program"));
        }
        if !super::valid_node_id(&service.group) {
            return invalid(
                "services.group",
                format!("{which}: must match ^[a-zA-Z0-9._-]{{1,64}}$"),
            );
        }
        if let Some(Err(problem)) = service.cpu_limit.as_deref().map(parse_cpu_percent) {
            return invalid("services.cpu_limit", format!("{which}: {problem}"));
        }
        if let Some(Err(problem)) = service.memory_limit.as_deref().map(parse_bytes) {
            return invalid("services.memory_limit", format!("{which}: {problem}"));
        }
        if service.port == Some(0) {
            return invalid("services.port", format!("{which}: must be between 1 and 65535"));
        }
        match (&service.health_path, service.port) {
            (Some(path), _) if !path.starts_with('/') => {
                return invalid("services.health_path", format!("{which}: {path:?} must start with /"));
            }
            (Some(_), None) => {
                return invalid("services.health_path", format!("{which}: needs services.port to probe"));
            }
            _ => {}
        }
        if service.stop_timeout_ms == 0 {
            return invalid("services.stop_timeout_ms", format!("{which}: must be at least 1"));
        }
        if service.log_max_bytes < 4096 {
            return invalid("services.log_max_bytes", format!("{which}: must be at least 4096"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_limits_are_percentages_of_one_core() {
        assert_eq!(parse_cpu_percent("200%"), Ok(200));
        assert_eq!(parse_cpu_percent(" 50 %"), Ok(50));
        assert_eq!(parse_cpu_percent("12.5%"), Ok(13));
        assert!(parse_cpu_percent("2").unwrap_err().contains("percentage"));
        assert!(parse_cpu_percent("0%").unwrap_err().contains("between"));
        assert!(parse_cpu_percent("lots%").is_err());
    }

    #[test]
    fn memory_limits_take_binary_units() {
        assert_eq!(parse_bytes("4G"), Ok(4 << 30));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5G"), Ok(3 << 29));
        assert_eq!(parse_bytes("8388608"), Ok(8 << 20));
        assert!(parse_bytes("4X").unwrap_err().contains("size like"));
        assert!(parse_bytes("-1G").is_err());
        assert!(parse_bytes("1K").unwrap_err().contains("below 4M"));
    }
}
