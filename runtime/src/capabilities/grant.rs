//! A job's grant: what its tenant's policy allows, computed once per job.
//! Every gated host call goes through [`Grant::check`]; nothing else decides
//! whether a capability may be used.

use std::sync::Arc;

use crate::capabilities::{Capabilities, Capability};
use crate::policy::{DockerAction, Policy, TenantPolicy};

/// A refused capability: the data a gated call returns as its `denied` case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant `{tenant}` is not granted capability `{capability}`")]
pub struct Denied {
    /// The capability asked for.
    pub capability: Capability,
    /// The tenant (as its policy names it).
    pub tenant: String,
}

/// What one job may do.
#[derive(Debug, Clone)]
pub struct Grant {
    tenant: String,
    policy: Arc<TenantPolicy>,
    capabilities: Capabilities,
    /// Denials already logged for this job (each is logged once).
    logged: Capabilities,
    /// Finer-grained denials (engines, models) already logged.
    logged_reasons: Vec<String>,
}

impl Grant {
    /// The grant for a job of `tenant` under `policy`.
    pub fn for_tenant(policy: &Policy, tenant: &str) -> Grant {
        let (name, tenant_policy) = policy.tenant(tenant);
        Grant {
            tenant: name.to_string(),
            capabilities: tenant_policy.capability_set(),
            policy: Arc::clone(tenant_policy),
            logged: Capabilities::NONE,
            logged_reasons: Vec::new(),
        }
    }

    /// Log a finer-grained denial (an engine, a model) once per job.
    pub fn deny_once(&mut self, reason: &str, job_id: &str) {
        if !self.logged_reasons.iter().any(|logged| logged == reason) {
            self.logged_reasons.push(reason.to_string());
            tracing::warn!(job_id, tenant = %self.tenant, %reason, "denied");
        }
    }

    /// The tenant as its policy names it (`default` for unnamed tenants).
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The tenant's policy (limits).
    pub fn policy(&self) -> &TenantPolicy {
        &self.policy
    }

    /// The granted capabilities.
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    /// May this job use `capability`? A denial is logged once per job and
    /// capability, at WARN, naming both.
    pub fn check(&mut self, capability: Capability, job_id: &str) -> Result<(), Denied> {
        if self.capabilities.contains(capability) {
            return Ok(());
        }
        if !self.logged.contains(capability) {
            self.logged = self.logged.with(capability);
            tracing::warn!(job_id, tenant = %self.tenant, capability = %capability, "capability denied");
        }
        Err(Denied {
            capability,
            tenant: self.tenant.clone(),
        })
    }

    /// May this job use capability `docker` for `action`? The denial says
    /// which policy key to change, and is logged once per job.
    pub fn check_docker(&mut self, action: DockerAction, job_id: &str) -> Result<(), String> {
        self.check(Capability::Docker, job_id)
            .map_err(|denied| denied.to_string())?;
        if self.policy.docker.allows_action(action) {
            return Ok(());
        }
        let reason = format!(
            "tenant `{}` may not use docker action `{action}` (docker.actions)",
            self.tenant
        );
        self.deny_once(&reason, job_id);
        Err(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_against_the_tenant_policy() {
        let policy = Policy::from_toml("[tenants.acme]\ncapabilities = [\"log\"]\n", "test").unwrap();
        let mut grant = Grant::for_tenant(&policy, "acme");
        assert!(grant.check(Capability::Log, "j1").is_ok());
        let denied = grant.check(Capability::Stream, "j1").unwrap_err();
        assert_eq!(denied.to_string(), "tenant `acme` is not granted capability `stream`");
        let stranger = Grant::for_tenant(&policy, "stranger");
        assert_eq!(stranger.tenant(), "default");
        assert!(stranger.capabilities().contains(Capability::Stream));
    }

    #[test]
    fn docker_actions_go_through_the_grant() {
        let policy = Policy::from_toml(
            "[tenants.ops]\ncapabilities = [\"docker\"]\ndocker.actions = [\"list\", \"restart\"]\n\
             [tenants.reader]\ncapabilities = [\"docker\"]\n",
            "test",
        )
        .unwrap();
        let mut ops = Grant::for_tenant(&policy, "ops");
        assert!(ops.check_docker(DockerAction::List, "j1").is_ok());
        assert!(ops.check_docker(DockerAction::Restart, "j1").is_ok());
        assert_eq!(
            ops.check_docker(DockerAction::Logs, "j1").unwrap_err(),
            "tenant `ops` may not use docker action `logs` (docker.actions)"
        );
        let mut reader = Grant::for_tenant(&policy, "reader");
        assert!(reader.check_docker(DockerAction::Inspect, "j1").is_ok());
        assert!(
            reader
                .check_docker(DockerAction::Stop, "j1")
                .unwrap_err()
                .contains("docker.actions")
        );
        let mut stranger = Grant::for_tenant(&policy, "stranger");
        assert_eq!(
            stranger.check_docker(DockerAction::List, "j1").unwrap_err(),
            "tenant `default` is not granted capability `docker`"
        );
    }
}
