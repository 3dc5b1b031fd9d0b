//! Host implementations of the `citadel:handler` interfaces, one module per
//! capability, and the linker that offers a job exactly its grant.
//!
//! A job's linker contains only the capabilities its tenant is granted, so an
//! ungranted capability is absent from the sandbox rather than merely
//! checked; the per-call [`Grant::check`](crate::capabilities::grant::Grant::check) then
//! covers finer-grained grants. Adding a capability: its `.wit`, a module
//! here with its `Host` impl, one line in [`PROVIDED`] and one in
//! [`linker`].

pub mod docker;
pub mod grant;
pub mod http;
pub mod inference;
mod log;
pub mod models;
mod set;
mod stream;

pub use set::{Capabilities, Capability};

use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker};

use crate::bindings::citadel::handler;
use crate::sandbox::state::JobState;

/// Capabilities this node implements.
pub const PROVIDED: Capabilities = Capabilities::NONE
    .with(Capability::Log)
    .with(Capability::Stream)
    .with(Capability::Inference)
    .with(Capability::Docker)
    .with(Capability::Http)
    .with(Capability::Models);

/// A linker offering the WASI base plus the granted capabilities.
pub(crate) fn linker(engine: &Engine, granted: Capabilities) -> wasmtime::Result<Linker<JobState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    handler::types::add_to_linker::<_, HasSelf<JobState>>(&mut linker, |state| state)?;
    if granted.contains(Capability::Log) {
        handler::log::add_to_linker::<_, HasSelf<JobState>>(&mut linker, |state| state)?;
    }
    if granted.contains(Capability::Stream) {
        handler::stream::add_to_linker::<_, HasSelf<JobState>>(&mut linker, |state| state)?;
    }
    if granted.contains(Capability::Inference) {
        handler::inference::add_to_linker::<_, HasSelf<JobState>>(&mut linker, |state| state)?;
    }
    if granted.contains(Capability::Docker) {
        handler::docker::add_to_linker::<_, HasSelf<JobState>>(&mut linker, |state| state)?;
    }
    if granted.contains(Capability::Models) {
        handler::models::add_to_linker::<_, HasSelf<JobState>>(&mut linker, |state| state)?;
    }
    if granted.contains(Capability::Http) {
        http::add_to_linker(&mut linker)?;
    }
    Ok(linker)
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
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("short".into(), 10), "short");
        assert_eq!(truncate("héllo".into(), 2), "h… [4 bytes cut]");
    }
}
