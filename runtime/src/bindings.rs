#![allow(missing_docs)] // generated code; the WIT files document it
//! The one `bindgen!` of the host: Rust types and traits for the
//! `citadel:handler` world in `wit/`.
//!
//! Every import is `async` (host calls may wait on I/O or on the chunk-rate
//! cap) and `trappable` (a host call may end the job when the guest exhausts
//! a limit, e.g. the output cap); denials are *not* traps but the `denied`
//! case of each interface's error type. Exports are `async` so that
//! epoch-based yields let many jobs share a few threads.

wasmtime::component::bindgen!({
    world: "handler",
    path: "../wit",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "citadel:handler/inference.completion": crate::capabilities::inference::ActiveCompletion,
        "citadel:handler/models.download": crate::capabilities::models::ActiveDownload,
    },
});

pub use Job as JobRecord;
