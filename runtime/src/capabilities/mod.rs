//! Host implementations of the `citadel:handler` interfaces (and
//! `wasi:http`), one module per capability — its host calls, its policy,
//! its node-side resource — composed here.
//!
//! [`REGISTRY`] is the one list of what the node provides: each
//! [`Capability`] with the function that adds its interface to a linker. A
//! job's linker gets exactly its grant's rows, so an ungranted capability is
//! absent from the sandbox rather than merely checked; the per-call
//! [`Grant::check`](grant::Grant::check) then covers finer-grained grants.
//! [`PROVIDED`] is derived from it, and tests hold it to [`Capability::ALL`]
//! (the names a policy may grant) and to the WIT world's imports. Adding a
//! capability: its `.wit` and `import`, a [`Capability`] variant, a module
//! here with its `Host` impl and `add_to_linker`, one row in [`REGISTRY`],
//! its node-side resource in [`NodeResources`].

pub mod docker;
pub mod grant;
pub mod http;
pub mod inference;
mod log;
pub mod models;
mod set;
mod stream;

use std::sync::Arc;

pub use set::{Capabilities, Capability};

use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker};

use crate::bindings::citadel::handler;
use crate::sandbox::state::JobState;
use docker::DockerAccess;
use http::HttpAccess;
use inference::Engines;
use models::ModelStore;

/// Adds one capability's interface to a job's linker.
type AddToLinker = fn(&mut Linker<JobState>) -> wasmtime::Result<()>;

/// Every capability this node provides, with how it joins a linker.
const REGISTRY: [(Capability, AddToLinker); 6] = [
    (Capability::Log, |linker| {
        handler::log::add_to_linker::<_, HasSelf<JobState>>(linker, |state| state)
    }),
    (Capability::Stream, |linker| {
        handler::stream::add_to_linker::<_, HasSelf<JobState>>(linker, |state| state)
    }),
    (Capability::Inference, |linker| {
        handler::inference::add_to_linker::<_, HasSelf<JobState>>(linker, |state| state)
    }),
    (Capability::Docker, |linker| {
        handler::docker::add_to_linker::<_, HasSelf<JobState>>(linker, |state| state)
    }),
    (Capability::Http, http::add_to_linker),
    (Capability::Models, |linker| {
        handler::models::add_to_linker::<_, HasSelf<JobState>>(linker, |state| state)
    }),
];

/// Capabilities this node implements: those in [`REGISTRY`].
pub const PROVIDED: Capabilities = {
    let mut provided = Capabilities::NONE;
    let mut row = 0;
    while row < REGISTRY.len() {
        provided = provided.with(REGISTRY[row].0);
        row += 1;
    }
    provided
};

/// A linker offering the WASI base plus the granted capabilities.
pub(crate) fn linker(engine: &Engine, granted: Capabilities) -> wasmtime::Result<Linker<JobState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    handler::types::add_to_linker::<_, HasSelf<JobState>>(&mut linker, |state| state)?;
    for (capability, add_to_linker) in REGISTRY {
        if granted.contains(capability) {
            add_to_linker(&mut linker)?;
        }
    }
    Ok(linker)
}

/// The node-side resource of each capability, shared by every job (cheap
/// to clone: each is an `Arc`). A job's host calls reach the node only
/// through these.
#[derive(Clone, Default)]
pub struct NodeResources {
    /// `inference`: the node's engines.
    pub inference: Arc<Engines>,
    /// `docker`: the node's Docker Engine API (none: every call is
    /// `unavailable`).
    pub docker: Arc<DockerAccess>,
    /// `models`: the node's models directory (none: `begin` fails with `io`).
    pub models: Option<Arc<ModelStore>>,
    /// `http`: the node's egress rules and connection limits.
    pub http: Arc<HttpAccess>,
}

impl handler::types::Host for JobState {}

/// Cut `text` to at most `max` bytes on a character boundary, marking the cut.
pub(crate) fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let cut = text.len() - max;
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(&format!("… [{cut} bytes cut]"));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_provides_every_capability_a_policy_can_grant_once() {
        let registered: Vec<Capability> = REGISTRY.iter().map(|(capability, _)| *capability).collect();
        assert_eq!(
            registered,
            Capability::ALL,
            "one row per capability, in declaration order"
        );
        for capability in Capability::ALL {
            assert!(PROVIDED.contains(capability), "{capability}");
        }
    }

    #[test]
    fn the_wit_world_imports_exactly_the_citadel_capabilities() {
        let world = include_str!("../../../wit/world.wit");
        let mut imported: Vec<&str> = world
            .lines()
            .filter_map(|line| line.trim().strip_prefix("import "))
            .map(|name| name.trim_end_matches(';').trim_start_matches('%'))
            .collect();
        imported.sort_unstable();
        // `http` is `wasi:http`, not an interface of this package.
        let mut ours: Vec<&str> = Capability::ALL
            .into_iter()
            .filter(|capability| *capability != Capability::Http)
            .map(Capability::name)
            .collect();
        ours.sort_unstable();
        assert_eq!(imported, ours);
    }

    #[test]
    fn a_linker_has_exactly_the_granted_interfaces() {
        let engine = Engine::default();
        for capability in Capability::ALL {
            let granted = Capabilities::NONE.with(capability);
            assert!(linker(&engine, granted).is_ok(), "{capability}");
        }
        assert!(linker(&engine, PROVIDED).is_ok());
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("short".into(), 10), "short");
        assert_eq!(truncate("héllo".into(), 2), "h… [4 bytes cut]");
    }
}
