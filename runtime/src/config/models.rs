//! `[models]`: the node's models directory, the one place capability
//! `models` writes (see `crate::capabilities::models`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::services::parse_bytes;

/// The models directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// Where model files are stored; default `<node.state_dir>/models`.
    pub dir: Option<PathBuf>,
    /// Most bytes the directory may hold, partial downloads included
    /// (`"100G"`, `"512M"`, bytes).
    pub max_size: String,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        ModelsConfig {
            dir: None,
            max_size: "100G".into(),
        }
    }
}

impl ModelsConfig {
    /// `max_size` in bytes (validation has accepted it).
    pub fn max_bytes(&self) -> u64 {
        parse_bytes(&self.max_size).unwrap_or(0)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        parse_bytes(&self.max_size)
            .map(drop)
            .map_err(|problem| ConfigError::Invalid {
                key: "models.max_size",
                problem,
            })?;
        if let Some(dir) = &self.dir
            && !dir.is_absolute()
        {
            return Err(ConfigError::Invalid {
                key: "models.dir",
                problem: format!("{} must be an absolute path", dir.display()),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_paths_are_checked() {
        assert_eq!(ModelsConfig::default().max_bytes(), 100 << 30);
        let bad = ModelsConfig {
            max_size: "lots".into(),
            ..ModelsConfig::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("models.max_size"));
        let relative = ModelsConfig {
            dir: Some("models".into()),
            ..ModelsConfig::default()
        };
        assert!(relative.validate().unwrap_err().to_string().contains("models.dir"));
    }
}
