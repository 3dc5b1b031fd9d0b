//! What a component asks of the node (its imports) and offers (its exports),
//! classified into capabilities. This is how a component that needs more
//! than its tenant is granted is refused before it runs.
//!
//! Imports are classified by name:
//! - `citadel:handler/<interface>@0.1.x`: the capability of that name
//!   (`types` carries only types and grants nothing);
//! - `wasi:http/*`: the `http` capability;
//! - `wasi:{cli,clocks,filesystem,io,random,sockets}/*`: the WASI base every
//!   component gets, sandboxed (no preopened directories, no environment, no
//!   network, stdout/stderr captured);
//! - anything else: refused, since no node provides it.

use std::fmt;

use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use crate::capabilities::{Capabilities, Capability};

/// The WIT package handlers are written against.
pub const PACKAGE: &str = "citadel:handler";
/// The package version this node implements.
pub const PACKAGE_VERSION: &str = "0.1.0";
/// WASI 0.2 packages every component may import.
const WASI_BASE: &[&str] = &[
    "wasi:cli",
    "wasi:clocks",
    "wasi:filesystem",
    "wasi:io",
    "wasi:random",
    "wasi:sockets",
];

/// How one import is satisfied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportKind {
    /// A gated capability.
    Capability(Capability),
    /// Types only (`citadel:handler/types`).
    Types,
    /// The sandboxed WASI base.
    WasiBase,
}

impl fmt::Display for ImportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImportKind::Capability(capability) => write!(f, "capability `{capability}`"),
            ImportKind::Types => f.write_str("types only"),
            ImportKind::WasiBase => f.write_str("WASI base (sandboxed)"),
        }
    }
}

/// A component's imports and exports, classified.
#[derive(Debug, Clone)]
pub struct Interface {
    /// Every import by name, with how it is satisfied.
    pub imports: Vec<(String, ImportKind)>,
    /// Every export by name, with its kind (`func`, `instance`, ...).
    pub exports: Vec<(String, &'static str)>,
    /// The capabilities the imports need.
    pub required: Capabilities,
}

/// An import or export no node can satisfy.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InterfaceError {
    /// An import from a package no node provides.
    #[error(
        "imports `{0}`, which no citadel node provides (handlers may import {PACKAGE}@{PACKAGE_VERSION} interfaces, wasi:http and the WASI 0.2 base)"
    )]
    UnknownImport(String),
    /// A `citadel:handler` interface that does not exist.
    #[error("imports `{0}`, which is not an interface of {PACKAGE}@{PACKAGE_VERSION}")]
    UnknownInterface(String),
    /// Built against an incompatible version of the package.
    #[error(
        "imports `{0}`, built against another version of {PACKAGE}; this node implements {PACKAGE_VERSION}: rebuild the handler against it"
    )]
    IncompatibleVersion(String),
    /// The `handle` export is missing or not a function.
    #[error(
        "does not export a `handle` function; handlers must target the `handler` world of {PACKAGE}@{PACKAGE_VERSION} (exports: {0})"
    )]
    MissingHandle(String),
}

impl Interface {
    /// Classify `component`'s imports and check its exports.
    pub fn of(component: &Component, engine: &Engine) -> Result<Interface, InterfaceError> {
        let ty = component.component_type();
        let mut imports = Vec::new();
        let mut required = Capabilities::NONE;
        for (name, _) in ty.imports(engine) {
            let kind = classify(name)?;
            if let ImportKind::Capability(capability) = kind {
                required = required.with(capability);
            }
            imports.push((name.to_string(), kind));
        }
        let exports: Vec<(String, &'static str)> = ty
            .exports(engine)
            .map(|(name, export)| (name.to_string(), item_kind(&export.ty)))
            .collect();
        let has_handle = exports.iter().any(|(name, kind)| name == "handle" && *kind == "func");
        if !has_handle {
            let listed: Vec<String> = exports.iter().map(|(name, kind)| format!("{name} ({kind})")).collect();
            let listed = if listed.is_empty() {
                "none".to_string()
            } else {
                listed.join(", ")
            };
            return Err(InterfaceError::MissingHandle(listed));
        }
        Ok(Interface {
            imports,
            exports,
            required,
        })
    }
}

/// Classify one import name.
fn classify(name: &str) -> Result<ImportKind, InterfaceError> {
    let (path, version) = name.split_once('@').unwrap_or((name, ""));
    let Some((package, interface)) = path.split_once('/') else {
        return Err(InterfaceError::UnknownImport(name.to_string()));
    };
    if package == PACKAGE {
        if !compatible(version) {
            return Err(InterfaceError::IncompatibleVersion(name.to_string()));
        }
        if interface == "types" {
            return Ok(ImportKind::Types);
        }
        return Capability::from_interface(interface)
            .map(ImportKind::Capability)
            .ok_or_else(|| InterfaceError::UnknownInterface(name.to_string()));
    }
    if package == "wasi:http" {
        return Ok(ImportKind::Capability(Capability::Http));
    }
    if WASI_BASE.contains(&package) && version.starts_with("0.2.") {
        return Ok(ImportKind::WasiBase);
    }
    Err(InterfaceError::UnknownImport(name.to_string()))
}

/// Semver compatibility with [`PACKAGE_VERSION`] (0.1.x: same minor).
fn compatible(version: &str) -> bool {
    version
        .strip_prefix("0.1.")
        .is_some_and(|patch| patch.chars().all(|c| c.is_ascii_digit()) && !patch.is_empty())
}

fn item_kind(item: &ComponentItem) -> &'static str {
    match item {
        ComponentItem::ComponentFunc(_) => "func",
        ComponentItem::CoreFunc(_) => "core func",
        ComponentItem::Module(_) => "module",
        ComponentItem::Component(_) => "component",
        ComponentItem::ComponentInstance(_) => "instance",
        ComponentItem::Type(_) => "type",
        ComponentItem::Resource(_) => "resource",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_import_names() {
        assert_eq!(
            classify("citadel:handler/log@0.1.0").unwrap(),
            ImportKind::Capability(Capability::Log)
        );
        assert_eq!(classify("citadel:handler/types@0.1.3").unwrap(), ImportKind::Types);
        assert_eq!(classify("wasi:cli/stdout@0.2.6").unwrap(), ImportKind::WasiBase);
        assert_eq!(
            classify("wasi:http/outgoing-handler@0.2.0").unwrap(),
            ImportKind::Capability(Capability::Http)
        );
        assert!(matches!(
            classify("citadel:handler/log@0.2.0"),
            Err(InterfaceError::IncompatibleVersion(_))
        ));
        assert!(matches!(
            classify("citadel:handler/root@0.1.0"),
            Err(InterfaceError::UnknownInterface(_))
        ));
        assert!(matches!(
            classify("acme:secrets/vault@1.0.0"),
            Err(InterfaceError::UnknownImport(_))
        ));
        assert!(matches!(
            classify("wasi:cli/stdout@0.3.0"),
            Err(InterfaceError::UnknownImport(_))
        ));
        assert!(matches!(
            classify("bare-function"),
            Err(InterfaceError::UnknownImport(_))
        ));
    }
}
