//! Running a probe under a deadline. A probe that fails or overruns becomes
//! a [`CollectorError`] in the snapshot; it never fails the snapshot, and a
//! hung probe (a wedged driver, a stuck `nvidia-smi`) never stalls it beyond
//! its timeout.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One probe's failure, as reported in `collector_errors[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectorError {
    /// The probe (`system`, `gpu`, `processes`, `cgroups`, …).
    pub probe: String,
    /// What went wrong.
    pub error: String,
}

impl CollectorError {
    /// An error of `probe`.
    pub fn new(probe: &str, error: impl std::fmt::Display) -> CollectorError {
        CollectorError {
            probe: probe.to_string(),
            error: error.to_string(),
        }
    }
}

/// Run blocking `work` on the blocking pool, giving up after `timeout`.
/// (A blocking call that overruns keeps its thread until it returns; the
/// snapshot does not wait for it.)
pub async fn blocking<T, F>(probe: &str, timeout: Duration, work: F) -> Result<T, CollectorError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, String> + Send + 'static,
{
    match tokio::time::timeout(timeout, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(error))) => Err(CollectorError::new(probe, error)),
        Ok(Err(panic)) => Err(CollectorError::new(probe, format!("probe panicked: {panic}"))),
        Err(_) => Err(CollectorError::new(
            probe,
            format!("timed out after {} ms", timeout.as_millis()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn results_errors_and_overruns() {
        let fast = Duration::from_millis(200);
        assert_eq!(blocking("a", fast, || Ok(7)).await, Ok(7));
        let failed = blocking::<(), _>("b", fast, || Err("no such file".into()))
            .await
            .unwrap_err();
        assert_eq!(failed, CollectorError::new("b", "no such file"));
        let started = std::time::Instant::now();
        let hung = blocking::<(), _>("c", Duration::from_millis(50), || {
            std::thread::sleep(Duration::from_millis(400));
            Ok(())
        })
        .await
        .unwrap_err();
        assert_eq!(hung.error, "timed out after 50 ms");
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "the snapshot did not wait for the probe"
        );
    }
}
