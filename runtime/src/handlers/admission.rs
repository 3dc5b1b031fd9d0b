//! The one check a component passes before it may handle jobs on this node,
//! whoever brings it: a publish to the fleet (`citadel component publish`
//! checks what it can before anything is published; each node checks the
//! rest), a job's pin, a file in the watched directory. A component is
//! admitted when it is a valid handler, the node provides every capability
//! it imports, and some tenant's policy grants them all; otherwise it is
//! [`Refused`], with a reason an operator can act on (shown in logs and in
//! status `handlers[].refused`).

use std::sync::Arc;

use crate::capabilities::{Capabilities, PROVIDED};
use crate::components::{ComponentError, ComponentStore, Digest, LoadedComponent};
use crate::policy::Policy;

/// Why a component may not handle jobs here.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// A published record's digest is malformed.
    #[error("the record's digest {0:?} is not sha256:<64 hex digits>")]
    BadDigest(String),
    /// The registry cannot be read.
    #[error("cannot read the published handlers: {0}")]
    Registry(String),
    /// A pinned digest was never published for the job type.
    #[error("it is not among the components published for `{0}`")]
    NotPublished(String),
    /// The component's bytes cannot be fetched.
    #[error("cannot fetch its bytes: {0}")]
    Fetch(String),
    /// The registry has the record but not the bytes.
    #[error("its bytes are missing from the registry")]
    Missing,
    /// The bytes are not the ones published.
    #[error("its bytes hash to {actual}, not the published digest (tampered or damaged)")]
    Tampered {
        /// What they hash to.
        actual: Digest,
    },
    /// Its signature is missing or not from a trusted key.
    #[error("{0}")]
    Untrusted(String),
    /// It is not a valid handler component.
    #[error(transparent)]
    Invalid(#[from] ComponentError),
    /// It imports capabilities this node does not provide.
    #[error("it imports {0}, which this node does not provide")]
    NotProvided(Capabilities),
    /// No tenant is granted everything it imports.
    #[error("it imports {0}, more than any tenant's policy grants")]
    NoTenant(Capabilities),
    /// Loading it failed outright (the compile task died).
    #[error("loading it failed: {0}")]
    Load(String),
}

/// Whether this node provides every capability `component` imports.
pub fn check_provided(component: &LoadedComponent) -> Result<(), Refused> {
    let unprovided = component.interface.required.missing_from(PROVIDED);
    if unprovided.is_empty() {
        Ok(())
    } else {
        Err(Refused::NotProvided(unprovided))
    }
}

/// Load `bytes` (validated, compiled or taken from the cache) and admit
/// them under `policy`. Blocking (it may compile).
pub fn admit(store: &ComponentStore, policy: &Policy, bytes: &[u8]) -> Result<Arc<LoadedComponent>, Refused> {
    let component = store.load(bytes)?;
    check_provided(&component)?;
    let required = component.interface.required;
    if !policy
        .tenants()
        .any(|(_, tenant)| required.missing_from(tenant.capability_set()).is_empty())
    {
        return Err(Refused::NoTenant(required));
    }
    Ok(component)
}
