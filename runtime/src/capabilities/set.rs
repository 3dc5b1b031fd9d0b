//! Capability names and sets: the unit a tenant is granted and a component
//! requires.
//!
//! A capability is one interface of the `citadel:handler` WIT package (plus
//! `http`, which is `wasi:http`). The set is a bitmask so that comparing a
//! component's needs with a grant, and keying caches by grant, costs nothing
//! on the per-job path.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One gated capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// `citadel:handler/log`: structured records in the job's log.
    Log,
    /// `citadel:handler/stream`: `chunk` events while the job runs.
    Stream,
    /// `citadel:handler/inference`: the node's local inference engines.
    Inference,
    /// `citadel:handler/docker`: an allowlist of the node's containers.
    Docker,
    /// `wasi:http`: outbound HTTP to allowed hosts.
    Http,
    /// `citadel:handler/models`: the node's size-capped models directory.
    Models,
}

impl Capability {
    /// Every capability, in declaration order.
    pub const ALL: [Capability; 6] = [
        Capability::Log,
        Capability::Stream,
        Capability::Inference,
        Capability::Docker,
        Capability::Http,
        Capability::Models,
    ];

    /// The name used in policies, errors and WIT (`citadel:handler/<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Capability::Log => "log",
            Capability::Stream => "stream",
            Capability::Inference => "inference",
            Capability::Docker => "docker",
            Capability::Http => "http",
            Capability::Models => "models",
        }
    }

    /// The capability behind a `citadel:handler` interface name, if it is one.
    /// `types` holds only types and is not a capability.
    pub fn from_interface(interface: &str) -> Option<Capability> {
        Capability::ALL
            .into_iter()
            .find(|capability| capability.name() == interface && *capability != Capability::Http)
    }

    const fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Capabilities(u16);

impl Capabilities {
    /// The empty set.
    pub const NONE: Capabilities = Capabilities(0);

    /// Whether `capability` is in the set.
    pub fn contains(self, capability: Capability) -> bool {
        self.0 & capability.bit() != 0
    }

    /// The set with `capability` added.
    pub const fn with(self, capability: Capability) -> Capabilities {
        Capabilities(self.0 | capability.bit())
    }

    /// The members of `self` that are not in `other`.
    pub fn missing_from(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 & !other.0)
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The members, in declaration order.
    pub fn iter(self) -> impl Iterator<Item = Capability> {
        Capability::ALL
            .into_iter()
            .filter(move |capability| self.contains(*capability))
    }
}

impl FromIterator<Capability> for Capabilities {
    fn from_iter<I: IntoIterator<Item = Capability>>(iter: I) -> Self {
        iter.into_iter().fold(Capabilities::NONE, Capabilities::with)
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Capability::name).collect();
        write!(f, "[{}]", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_compare_by_membership() {
        let granted: Capabilities = [Capability::Log, Capability::Stream].into_iter().collect();
        let needed: Capabilities = [Capability::Log, Capability::Inference].into_iter().collect();
        let missing = needed.missing_from(granted);
        assert_eq!(missing.iter().collect::<Vec<_>>(), vec![Capability::Inference]);
        assert!(Capabilities::NONE.missing_from(granted).is_empty());
        assert_eq!(granted.to_string(), "[log, stream]");
    }

    #[test]
    fn interfaces_map_to_capabilities() {
        assert_eq!(Capability::from_interface("stream"), Some(Capability::Stream));
        assert_eq!(Capability::from_interface("types"), None);
        assert_eq!(
            Capability::from_interface("http"),
            None,
            "http is wasi:http, not a citadel interface"
        );
    }
}
