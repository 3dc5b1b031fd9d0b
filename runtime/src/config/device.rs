//! Device configuration pushed by the control plane (`APPLY_DEVICE_CONFIG`
//! jobs on `jobs:v1:config`): the node's display name, tags, which of its
//! `[[services]]` run, and monitoring switches. The applied version is kept
//! in `<state_dir>/device-config.json` (written atomically, the previous one
//! kept as `device-config.prev.json`) and laid over the TOML configuration
//! every time the node starts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Config, state_file};

/// The file the applied device configuration lives in, under the state dir.
pub const DEVICE_CONFIG_FILE: &str = "device-config.json";
/// The version it replaced.
pub const PREVIOUS_DEVICE_CONFIG_FILE: &str = "device-config.prev.json";

/// Citadel's device configuration (its field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceConfig {
    /// The node's display name.
    pub device_name: String,
    /// Names of the node's `[[services]]` that should run.
    #[serde(default)]
    pub services: Vec<String>,
    /// Run `services` now and whenever the node starts; `false` stops every
    /// service and starts none.
    #[serde(default = "yes")]
    pub auto_start_services: bool,
    /// Whether the operator wants SSH access to the node (reported for the
    /// control plane; citadel does not manage the host's SSH daemon).
    #[serde(default)]
    pub ssh_enabled: bool,
    /// Free-form tags reported in status (`node.tags`).
    #[serde(default)]
    pub custom_tags: Vec<String>,
    /// Probe the services' health (`false`: health `unknown`, no probes).
    #[serde(default = "yes")]
    pub health_monitoring_enabled: bool,
    /// The control plane should alert when the node goes silent (reported;
    /// the node cannot report its own absence).
    #[serde(default)]
    pub alert_on_offline: bool,
    /// `/health` answers 503 while a GPU is at or above
    /// `telemetry.high_temp_celsius`.
    #[serde(default)]
    pub alert_on_high_temp: bool,
}

fn yes() -> bool {
    true
}

/// Most tags a node may carry.
const MAX_TAGS: usize = 64;

impl DeviceConfig {
    /// Parse a job payload: `{"config": {…}}`, the config also accepted as a
    /// JSON string.
    pub fn from_payload(payload: &serde_json::Value) -> Result<DeviceConfig, String> {
        let config = payload
            .get("config")
            .ok_or("the payload has no `config` object: expected {\"config\": {\"deviceName\": …}}")?;
        let parsed = match config {
            serde_json::Value::String(text) => serde_json::from_str(text),
            other => serde_json::from_value(other.clone()),
        };
        parsed.map_err(|err| format!("invalid device config: {err}"))
    }

    /// Check it against this node: names and tags sane, every service one
    /// the node has.
    pub fn validate(&self, known_services: &[String]) -> Result<(), String> {
        let sane = |text: &str| (1..=64).contains(&text.chars().count()) && !text.chars().any(char::is_control);
        if !sane(&self.device_name) || self.device_name.trim().is_empty() {
            return Err(format!(
                "deviceName {:?} must be 1 to 64 characters without control characters",
                self.device_name
            ));
        }
        if self.custom_tags.len() > MAX_TAGS {
            return Err(format!(
                "customTags: at most {MAX_TAGS} tags, got {}",
                self.custom_tags.len()
            ));
        }
        if let Some(tag) = self.custom_tags.iter().find(|tag| !sane(tag)) {
            return Err(format!(
                "customTags: {tag:?} must be 1 to 64 characters without control characters"
            ));
        }
        let unknown: Vec<&str> = self
            .services
            .iter()
            .filter(|name| !known_services.contains(name))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            return Err(format!(
                "services: {} not configured on this node (it has: {})",
                unknown.join(", "),
                if known_services.is_empty() {
                    "none".to_string()
                } else {
                    known_services.join(", ")
                }
            ));
        }
        Ok(())
    }

    /// Whether the service `name` should run under this configuration.
    pub fn runs(&self, name: &str) -> bool {
        self.auto_start_services && self.services.iter().any(|service| service == name)
    }
}

/// Where the applied device configuration is kept.
#[derive(Debug, Clone)]
pub struct DeviceStore {
    dir: PathBuf,
}

impl DeviceStore {
    /// The store in the node's state directory.
    pub fn new(state_dir: &Path) -> DeviceStore {
        DeviceStore {
            dir: state_dir.to_path_buf(),
        }
    }

    /// The current file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(DEVICE_CONFIG_FILE)
    }

    /// The previous version.
    pub fn previous_path(&self) -> PathBuf {
        self.dir.join(PREVIOUS_DEVICE_CONFIG_FILE)
    }

    /// The applied configuration, if one has been applied.
    pub fn load(&self) -> Result<Option<DeviceConfig>, String> {
        let path = self.path();
        let Some(text) = state_file::read_if_present(&path)? else {
            return Ok(None);
        };
        serde_json::from_str(&text).map(Some).map_err(|err| {
            format!(
                "{} is damaged ({err}): restore {} over it, or remove it to run on the TOML configuration alone",
                path.display(),
                self.previous_path().display()
            )
        })
    }

    /// Write `config` atomically, the content it replaces first kept as the
    /// previous version.
    pub fn save(&self, config: &DeviceConfig) -> std::io::Result<()> {
        let current = self.path();
        if current.exists() {
            let previous = self.dir.join(format!("{PREVIOUS_DEVICE_CONFIG_FILE}.tmp"));
            std::fs::copy(&current, &previous)?;
            std::fs::rename(&previous, self.previous_path())?;
        }
        state_file::write_json(&self.dir, DEVICE_CONFIG_FILE, config, 0o644)
    }
}

impl Config {
    /// Lay an applied device configuration over this one: display name,
    /// tags, which services start, health monitoring.
    pub fn apply_device(&mut self, device: &DeviceConfig) {
        self.node.name = Some(device.device_name.clone());
        self.node.tags = device.custom_tags.clone();
        for service in &mut self.services {
            service.autostart = device.runs(&service.name);
        }
        self.device = Some(device.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DeviceConfig {
        DeviceConfig::from_payload(&serde_json::json!({"config": {
            "deviceName": "rack-4 gpu", "services": ["llama"], "autoStartServices": true,
            "sshEnabled": false, "customTags": ["eu", "h100"], "healthMonitoringEnabled": true,
            "alertOnOffline": true, "alertOnHighTemp": true
        }}))
        .unwrap()
    }

    #[test]
    fn config_arrives_as_an_object_or_a_json_string() {
        let object = sample();
        let text = serde_json::to_string(&object).unwrap();
        let from_string = DeviceConfig::from_payload(&serde_json::json!({ "config": text })).unwrap();
        assert_eq!(from_string, object);
        assert_eq!(object.custom_tags, ["eu", "h100"]);
        let missing = DeviceConfig::from_payload(&serde_json::json!({"deviceName": "x"})).unwrap_err();
        assert!(missing.contains("no `config` object"), "{missing}");
        let wrong = DeviceConfig::from_payload(&serde_json::json!({"config": {"services": []}})).unwrap_err();
        assert!(wrong.contains("missing field `deviceName`"), "{wrong}");
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let known = vec!["llama".to_string()];
        sample().validate(&known).unwrap();
        let mut unknown = sample();
        unknown.services.push("vllm".into());
        assert_eq!(
            unknown.validate(&known).unwrap_err(),
            "services: vllm not configured on this node (it has: llama)"
        );
        let mut blank = sample();
        blank.device_name = " ".into();
        assert!(blank.validate(&known).unwrap_err().starts_with("deviceName"));
        let mut tag = sample();
        tag.custom_tags.push("bad\ntag".into());
        assert!(tag.validate(&known).unwrap_err().starts_with("customTags"));
    }

    #[test]
    fn saving_keeps_the_previous_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeviceStore::new(dir.path());
        assert_eq!(store.load().unwrap(), None);
        let first = sample();
        store.save(&first).unwrap();
        let mut second = sample();
        second.device_name = "renamed".into();
        store.save(&second).unwrap();
        assert_eq!(store.load().unwrap(), Some(second));
        let previous: DeviceConfig =
            serde_json::from_str(&std::fs::read_to_string(store.previous_path()).unwrap()).unwrap();
        assert_eq!(previous, first);
        std::fs::write(store.path(), "{not json").unwrap();
        assert!(store.load().unwrap_err().contains("is damaged"));
    }
}
