//! `citadel component inspect`: what a component is and what it needs,
//! without running it.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::{Failure, output};
use crate::components::ComponentStore;
use crate::config::Config;
use crate::sandbox::engine::{Allocation, SandboxEngine};

/// Arguments of `citadel component inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The component (`.wasm`).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn inspect(args: InspectArgs, config: &Config) -> Result<(), Failure> {
    let engine = SandboxEngine::new(&config.sandbox, Allocation::OnDemand)
        .map_err(|err| Failure::input(format!("cannot create the wasmtime engine: {err:#}")))?;
    let store = ComponentStore::new(engine, config.sandbox.cache_dir.as_deref()).map_err(Failure::input)?;
    let loaded = store.load_file(&args.file).map_err(Failure::input)?;
    let interface = &loaded.interface;
    if args.json {
        let imports: Vec<_> = interface
            .imports
            .iter()
            .map(|(name, kind)| json!({"name": name, "satisfied_by": kind.to_string()}))
            .collect();
        let exports: Vec<_> = interface
            .exports
            .iter()
            .map(|(name, kind)| json!({"name": name, "kind": kind}))
            .collect();
        let needs: Vec<_> = interface.required.iter().map(|capability| capability.name()).collect();
        let out = json!({
            "file": args.file,
            "digest": loaded.digest.to_string(),
            "size": loaded.size,
            "imports": imports,
            "capabilities": needs,
            "exports": exports,
        });
        output::line(format_args!("{out:#}"));
        return Ok(());
    }
    output::line(format_args!("component     {}", args.file.display()));
    output::line(format_args!("digest        {}", loaded.digest));
    output::line(format_args!("size          {} bytes", loaded.size));
    output::line(format_args!("capabilities  {}", interface.required));
    output::line(format_args!("imports"));
    for (name, kind) in &interface.imports {
        output::line(format_args!("  {name:<44} {kind}"));
    }
    output::line(format_args!("exports"));
    for (name, kind) in &interface.exports {
        output::line(format_args!("  {name:<44} {kind}"));
    }
    Ok(())
}
