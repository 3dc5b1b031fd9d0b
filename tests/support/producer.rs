//! A Citadel-style producer for the compatibility tests: the Python script
//! `tests/producer/citadel_producer.py` (redis-py, as Citadel's backend
//! writes jobs), run from `.venv-producer` (scripts/test installs it).

use std::path::PathBuf;

use serde_json::Value;

use crate::workspace;

/// The producer script and its Python.
pub struct CitadelProducer {
    python: PathBuf,
    script: PathBuf,
}

impl Default for CitadelProducer {
    fn default() -> Self {
        Self::new()
    }
}

impl CitadelProducer {
    /// The installed producer.
    pub fn new() -> CitadelProducer {
        let python = workspace().join(".venv-producer/bin/python");
        assert!(
            python.is_file(),
            "{} is missing: run scripts/test (it installs tests/producer/requirements.txt there)",
            python.display()
        );
        CitadelProducer {
            python,
            script: workspace().join("tests/producer/citadel_producer.py"),
        }
    }

    /// Enqueue a `job_type` job with `payload` on `redis_url` and return
    /// every event it got, the final one last.
    pub async fn run(&self, redis_url: &str, job_type: &str, payload: &Value) -> Vec<Value> {
        // redis-py spells a unix socket `unix://`.
        let redis_url = redis_url.replacen("redis+unix://", "unix://", 1);
        let redis_url = redis_url.as_str();
        let output = tokio::process::Command::new(&self.python)
            .arg(&self.script)
            .args(["--redis-url", redis_url, "--type", job_type])
            .args(["--payload", &payload.to_string(), "--timeout", "120"])
            .output()
            .await
            .expect("run the producer");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "the producer failed: {}\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
            .lines()
            .map(|line| serde_json::from_str(line).expect("an event is JSON"))
            .collect()
    }
}
