//! The node's one retry policy: jittered exponential backoff (delays from
//! `backon`), shared by every transport. Transports only say whether an
//! error is worth retrying ([`Retriable`]); every wait races a cancellation
//! token, so no retry loop ever holds up shutdown.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

/// Whether an error may go away by itself (a dropped connection, a server
/// still loading) or will not (a wrong type, a bad argument).
pub trait Retriable {
    /// Retrying later could succeed.
    fn is_retriable(&self) -> bool;
}

impl Retriable for redis::RedisError {
    fn is_retriable(&self) -> bool {
        self.is_io_error()
            || self.is_timeout()
            || self.is_connection_dropped()
            || self.is_connection_refusal()
            || !matches!(self.retry_method(), redis::RetryMethod::NoRetry)
    }
}

/// Delays between attempts: from `min`, doubling, capped at `max`, each
/// jittered so that many workers do not retry in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub min: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Backoff {
    /// 50 ms doubling to 2 s: reconnects to a local Redis within a couple of
    /// seconds of it coming back.
    pub const DEFAULT: Backoff = Backoff {
        min: Duration::from_millis(50),
        max: Duration::from_secs(2),
    };

    /// A fresh sequence of waits.
    pub fn start(self) -> Waits {
        Waits {
            policy: self,
            delays: self.delays(),
            attempts: 0,
        }
    }

    fn delays(self) -> ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// The waits of one retry sequence.
#[derive(Debug)]
pub struct Waits {
    policy: Backoff,
    delays: ExponentialBackoff,
    attempts: u32,
}

impl Waits {
    /// Failed attempts so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The next delay (counting an attempt), for callers that wait on
    /// something else as well.
    pub fn next_delay(&mut self) -> Duration {
        self.attempts += 1;
        self.delays.next().unwrap_or(self.policy.max)
    }

    /// Wait for the next delay; `false` when `stop` fired first.
    pub async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }

    /// Start over after a success.
    pub fn reset(&mut self) {
        self.delays = self.policy.delays();
        self.attempts = 0;
    }
}

/// Whether the `consecutive`-th failure in a row (counting from 0) is worth
/// logging: the first and every 20th, so an outage shows in the log without
/// flooding it.
pub fn worth_logging(consecutive: u32) -> bool {
    consecutive.is_multiple_of(20)
}

/// Why [`retry`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum RetryError<E> {
    /// The error is not retriable.
    #[error("{0}")]
    Permanent(E),
    /// `stop` fired while retrying; the last error is kept.
    #[error("stopped while retrying: {0}")]
    Stopped(E),
}

/// Run `op` until it succeeds, fails with an error that is not retriable, or
/// `stop` fires. Failures are logged (the first, then every 20th) with
/// `what`, and recovery after failures is logged once.
pub async fn retry<T, E, F, Fut>(
    what: &str,
    policy: Backoff,
    stop: &CancellationToken,
    mut op: F,
) -> Result<T, RetryError<E>>
where
    E: Retriable + Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut waits = policy.start();
    loop {
        match op().await {
            Ok(value) => {
                if waits.attempts() > 0 {
                    tracing::info!(what, attempts = waits.attempts() + 1, "succeeded after retrying");
                }
                return Ok(value);
            }
            Err(err) if !err.is_retriable() => return Err(RetryError::Permanent(err)),
            Err(err) => {
                if worth_logging(waits.attempts()) {
                    tracing::warn!(what, attempt = waits.attempts() + 1, error = %err, "failed; retrying with backoff");
                }
                if !waits.wait(stop).await {
                    return Err(RetryError::Stopped(err));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[derive(Debug)]
    struct Flaky(bool);

    impl Retriable for Flaky {
        fn is_retriable(&self) -> bool {
            self.0
        }
    }

    impl Display for Flaky {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "flaky({})", self.0)
        }
    }

    const FAST: Backoff = Backoff {
        min: Duration::from_millis(1),
        max: Duration::from_millis(4),
    };

    #[tokio::test(start_paused = true)]
    async fn retries_until_success() {
        let calls = AtomicU32::new(0);
        let stop = CancellationToken::new();
        let result = retry("op", FAST, &stop, || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                Err(Flaky(true))
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let stop = CancellationToken::new();
        let result: Result<(), _> = retry("op", FAST, &stop, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Flaky(false))
        })
        .await;
        assert!(matches!(result, Err(RetryError::Permanent(Flaky(false)))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_ends_the_retries() {
        let stop = CancellationToken::new();
        stop.cancel();
        let result: Result<(), _> = retry("op", FAST, &stop, || async { Err(Flaky(true)) }).await;
        assert!(matches!(result, Err(RetryError::Stopped(_))));
    }

    #[test]
    fn delays_grow_and_stay_capped() {
        let mut delays = Backoff {
            min: Duration::from_millis(10),
            max: Duration::from_millis(80),
        }
        .delays();
        let first: Vec<Duration> = (&mut delays).take(8).collect();
        assert!(
            first.iter().all(|delay| *delay <= Duration::from_millis(160)),
            "{first:?}"
        ); // max + jitter
        assert!(first[5] >= Duration::from_millis(80), "{first:?}");
    }
}
