//! `[tenants.<name>.inference]`: which engines and models capability
//! `inference` reaches, as glob allowlists compiled when the policy is read.

use serde::Deserialize;

use crate::policy::{Glob, matches_any};

/// `[tenants.<name>.inference]`: glob allowlists (`*`, `?`, `[…]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferencePolicy {
    /// Engines (by `[[engines]]` name) the tenant may use; every engine by default.
    #[serde(default = "every_engine")]
    pub engines: Vec<Glob>,
    /// Models the tenant may run; none by default (deny by default).
    #[serde(default)]
    pub models: Vec<Glob>,
}

fn every_engine() -> Vec<Glob> {
    vec![Glob::new("*")]
}

impl Default for InferencePolicy {
    fn default() -> Self {
        InferencePolicy {
            engines: every_engine(),
            models: Vec::new(),
        }
    }
}

impl InferencePolicy {
    /// Whether `engine` is allowed.
    pub fn allows_engine(&self, engine: &str) -> bool {
        matches_any(&self.engines, engine)
    }

    /// Whether `model` is allowed.
    pub fn allows_model(&self, model: &str) -> bool {
        matches_any(&self.models, model)
    }
}
