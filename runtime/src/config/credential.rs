//! The node's credential, granted by the control plane through `citadel
//! init` (device authorization) and kept in `<state_dir>/credential.json`,
//! readable by its owner only (0600, written atomically). Every later
//! command lays it under the configuration: its token authenticates the
//! Nexus agent and the HTTP status endpoint, and its device code goes out
//! with the node's status (`deviceCode`), unless the configuration sets
//! them itself.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Config, state_file};

/// The file, under the state directory.
pub const CREDENTIAL_FILE: &str = "credential.json";

/// What `citadel init` was granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// The node it was granted to.
    pub node_id: String,
    /// The device code of the authorization (carried as `deviceCode`).
    pub device_code: String,
    /// The bearer token.
    pub access_token: String,
    /// Its type (`bearer`).
    pub token_type: String,
    /// A refresh token, when granted one.
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// When the access token expires (RFC 3339), when the server said.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Scopes granted.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// When it was granted (RFC 3339).
    pub issued_at: String,
    /// The token endpoint that granted it.
    pub token_url: String,
}

/// Where the credential is kept.
#[derive(Debug, Clone)]
pub struct CredentialStore {
    dir: PathBuf,
}

impl CredentialStore {
    /// The store in the node's state directory.
    pub fn new(state_dir: &Path) -> CredentialStore {
        CredentialStore {
            dir: state_dir.to_path_buf(),
        }
    }

    /// The file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(CREDENTIAL_FILE)
    }

    /// The credential, if `citadel init` stored one.
    pub fn load(&self) -> Result<Option<Credential>, String> {
        let path = self.path();
        let Some(text) = state_file::read_if_present(&path)? else {
            return Ok(None);
        };
        if let Ok(metadata) = std::fs::metadata(&path)
            && metadata.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                file = %path.display(),
                mode = format!("{:o}", metadata.permissions().mode() & 0o777),
                "the node's credential is readable by others: chmod 600 it"
            );
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|err| format!("{} is damaged ({err}): run `citadel init --force`", path.display()))
    }

    /// Write `credential` atomically, readable by the owner only.
    pub fn save(&self, credential: &Credential) -> std::io::Result<()> {
        state_file::write_json(&self.dir, CREDENTIAL_FILE, credential, 0o600)
    }
}

impl Config {
    /// Lay the node's credential under this configuration: what the
    /// configuration leaves unset, the credential provides.
    pub fn apply_credential(&mut self, credential: &Credential) {
        self.device_code.get_or_insert_with(|| credential.device_code.clone());
        self.agent.token.get_or_insert_with(|| credential.access_token.clone());
        self.telemetry
            .http_token
            .get_or_insert_with(|| credential.access_token.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential() -> Credential {
        Credential {
            node_id: "gpu-7".into(),
            device_code: "dev-123".into(),
            access_token: "token-abc".into(),
            token_type: "bearer".into(),
            refresh_token: None,
            expires_at: None,
            scopes: vec!["node".into()],
            issued_at: "2026-12-07T00:00:00Z".into(),
            token_url: "http://127.0.0.1:1/token".into(),
        }
    }

    #[test]
    fn kept_for_the_owner_only_and_laid_under_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let store = CredentialStore::new(dir.path());
        assert_eq!(store.load().unwrap(), None);
        store.save(&credential()).unwrap();
        let mode = std::fs::metadata(store.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(store.load().unwrap(), Some(credential()));
        let mut config = Config::default();
        config.agent.token = Some("from-config".into());
        config.apply_credential(&credential());
        assert_eq!(config.device_code.as_deref(), Some("dev-123"));
        assert_eq!(
            config.agent.token.as_deref(),
            Some("from-config"),
            "the configuration wins"
        );
        assert_eq!(config.telemetry.http_token.as_deref(), Some("token-abc"));
        std::fs::write(store.path(), "{").unwrap();
        assert!(store.load().unwrap_err().contains("citadel init --force"));
    }
}
