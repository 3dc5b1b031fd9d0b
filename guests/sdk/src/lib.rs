//! Guest-side bindings of the `citadel:handler` world (`wit/`), generated
//! once here so every handler crate shares them.
//!
//! A handler implements [`Guest`] and registers itself with
//! `citadel_guest::export_handler!(MyHandler);`. Only the interfaces a
//! handler actually calls end up as imports of its component, which is what
//! the node checks against the tenant's grant.

/// The generated bindings. They live in a module rather than at the crate
/// root because the exported `#[macro_export]` macros would otherwise collide
/// with their own re-exports.
#[allow(clippy::too_many_arguments)] // generated from the WIT
pub mod bindings {
    wit_bindgen::generate!({
        world: "handler",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export_handler",
        default_bindings_module: "citadel_guest::bindings",
    });
}

pub use bindings::citadel::handler::{docker, inference, log, models, stream};
pub use bindings::{Guest, HandlerError, Job, export_handler};

#[cfg(feature = "http")]
pub mod http;
