//! `[tenants.<name>.docker]`: which containers capability `docker` reaches
//! and what it may do with them.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::policy::{Glob, first_problem, matches_any};

/// `[tenants.<name>.docker]`: which of the node's containers capability
/// `docker` reaches and what it may do with them. Deny by default: no
/// container and only the read-only actions.
///
/// A container is the tenant's when its name matches one of `containers`
/// (globs: `*`, `?`, `[…]`) **or** it carries one of `labels` (`key=value`,
/// or a bare `key` for any value).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerPolicy {
    /// Container names (globs) the tenant may see and act on; none by default.
    #[serde(default)]
    pub containers: Vec<Glob>,
    /// Labels (`key=value` or `key`) whose containers the tenant may see and
    /// act on; none by default.
    #[serde(default)]
    pub labels: Vec<String>,
    /// What the tenant may do: `list`, `inspect`, `logs`, `start`, `stop`,
    /// `restart`; default the read-only `["list", "inspect", "logs"]`.
    #[serde(default = "read_only_actions")]
    pub actions: Vec<String>,
}

fn read_only_actions() -> Vec<String> {
    [DockerAction::List, DockerAction::Inspect, DockerAction::Logs]
        .iter()
        .map(|action| action.name().to_string())
        .collect()
}

impl Default for DockerPolicy {
    fn default() -> Self {
        DockerPolicy {
            containers: Vec::new(),
            labels: Vec::new(),
            actions: read_only_actions(),
        }
    }
}

/// One thing capability `docker` can do (`docker.actions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DockerAction {
    /// `list-containers`.
    List,
    /// `inspect`.
    Inspect,
    /// `logs`.
    Logs,
    /// `start`.
    Start,
    /// `stop`.
    Stop,
    /// `restart`.
    Restart,
}

impl DockerAction {
    /// Every action.
    pub const ALL: [DockerAction; 6] = [
        DockerAction::List,
        DockerAction::Inspect,
        DockerAction::Logs,
        DockerAction::Start,
        DockerAction::Stop,
        DockerAction::Restart,
    ];

    /// Its name in `docker.actions`.
    pub fn name(self) -> &'static str {
        match self {
            DockerAction::List => "list",
            DockerAction::Inspect => "inspect",
            DockerAction::Logs => "logs",
            DockerAction::Start => "start",
            DockerAction::Stop => "stop",
            DockerAction::Restart => "restart",
        }
    }

    /// Whether it changes a container (and is logged as such).
    pub fn mutates(self) -> bool {
        matches!(self, DockerAction::Start | DockerAction::Stop | DockerAction::Restart)
    }
}

impl std::fmt::Display for DockerAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl DockerPolicy {
    /// Whether `action` is granted.
    pub fn allows_action(&self, action: DockerAction) -> bool {
        self.actions.iter().any(|granted| granted == action.name())
    }

    /// Whether `name` matches `containers` (the name alone decides).
    pub fn allows_name(&self, name: &str) -> bool {
        matches_any(&self.containers, name)
    }

    /// Whether a container with `labels` carries one of `labels`.
    pub fn allows_labels(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().any(|wanted| match wanted.split_once('=') {
            Some((key, value)) => labels.get(key).is_some_and(|actual| actual == value),
            None => labels.contains_key(wanted),
        })
    }

    /// Whether the container `name` with `labels` is the tenant's.
    pub fn allows_container(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.allows_name(name) || self.allows_labels(labels)
    }

    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(problem) = first_problem(&self.containers) {
            return Err(("docker.containers", problem));
        }
        if let Some(label) = self.labels.iter().find(|label| {
            label
                .split_once('=')
                .map_or(label.as_str(), |(key, _)| key)
                .trim()
                .is_empty()
        }) {
            return Err(("docker.labels", format!("{label:?} is not `key=value` or `key`")));
        }
        if let Some(unknown) = self
            .actions
            .iter()
            .find(|action| !DockerAction::ALL.iter().any(|known| known.name() == action.as_str()))
        {
            let known: Vec<&str> = DockerAction::ALL.iter().map(|action| action.name()).collect();
            return Err((
                "docker.actions",
                format!("has unknown action {unknown:?} (known: {})", known.join(", ")),
            ));
        }
        Ok(())
    }
}
