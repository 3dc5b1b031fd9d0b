//! Glob patterns (`*`, `?`, `[…]`) as a policy writes them, compiled once
//! when the policy is read: a check on the job path matches, it never
//! parses. A pattern that does not compile is kept with its error so that
//! validation can name the key it came from (and refuse the policy).

use serde::{Deserialize, Deserializer};

/// One compiled glob pattern.
#[derive(Debug, Clone)]
pub struct Glob {
    text: String,
    /// The pattern, or why it is not one.
    compiled: Result<glob::Pattern, String>,
}

impl Glob {
    /// Compile `text`.
    pub fn new(text: impl Into<String>) -> Glob {
        let text = text.into();
        let compiled = glob::Pattern::new(&text).map_err(|err| err.to_string());
        Glob { text, compiled }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `name` matches (never, for a pattern that did not compile:
    /// validation refuses a policy with one).
    pub fn matches(&self, name: &str) -> bool {
        self.compiled.as_ref().is_ok_and(|pattern| pattern.matches(name))
    }

    /// Why the pattern is unusable, if it is.
    pub fn problem(&self) -> Option<String> {
        self.compiled
            .as_ref()
            .err()
            .map(|err| format!("{:?} is not a valid pattern: {err}", self.text))
    }
}

impl PartialEq for Glob {
    fn eq(&self, other: &Glob) -> bool {
        self.text == other.text
    }
}

impl From<&str> for Glob {
    fn from(text: &str) -> Glob {
        Glob::new(text)
    }
}

impl std::fmt::Display for Glob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Glob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Glob, D::Error> {
        String::deserialize(deserializer).map(Glob::new)
    }
}

/// Whether `name` matches one of `globs`.
pub fn matches_any(globs: &[Glob], name: &str) -> bool {
    globs.iter().any(|glob| glob.matches(name))
}

/// The first unusable pattern of `globs`, and why.
pub fn first_problem(globs: &[Glob]) -> Option<String> {
    globs.iter().find_map(Glob::problem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_once_matched_many_times() {
        let globs: Vec<Glob> = ["llama-3.2-*", "smollm?"].into_iter().map(Glob::from).collect();
        assert!(matches_any(&globs, "llama-3.2-1b") && matches_any(&globs, "smollm2"));
        assert!(!matches_any(&globs, "llama-3.1-8b"));
        assert_eq!(first_problem(&globs), None);
    }

    #[test]
    fn a_bad_pattern_matches_nothing_and_says_why() {
        let bad = Glob::new("[oops");
        assert!(!bad.matches("[oops"));
        let problem = bad.problem().unwrap();
        assert!(problem.starts_with("\"[oops\" is not a valid pattern"), "{problem}");
        let parsed: Vec<Glob> = serde_json::from_str(r#"["*", "[oops"]"#).unwrap();
        assert_eq!(first_problem(&parsed), Some(problem));
    }
}
