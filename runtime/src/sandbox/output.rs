//! Output accounting: one byte budget per job shared by streamed chunks and
//! the final result (the tenant's `max_output_bytes`), and the chunk stream
//! itself with its per-chunk size cap and rate pacing.
//!
//! Exceeding the budget is an exhausted limit, so it ends the job (a trap
//! carrying [`OutputLimitExceeded`]); an oversized single chunk is data the
//! guest can act on (split it), so it is the `too-large` error instead.

use std::num::NonZeroU32;
use std::sync::LazyLock;

use governor::clock::DefaultClock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::mpsc;

use crate::job::Chunk;

/// The job tried to output more than its tenant allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("output limit exceeded: {attempted} bytes attempted, {limit} allowed")]
pub struct OutputLimitExceeded {
    /// The limit, bytes.
    pub limit: u64,
    /// Bytes the job tried to output in all.
    pub attempted: u64,
}

/// Bytes a job may still output.
#[derive(Debug)]
pub struct OutputBudget {
    limit: u64,
    used: u64,
}

impl OutputBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> OutputBudget {
        OutputBudget { limit, used: 0 }
    }

    /// Spend `bytes`, or fail without spending when they do not fit.
    pub fn spend(&mut self, bytes: usize) -> Result<(), OutputLimitExceeded> {
        let attempted = self.used + bytes as u64;
        if attempted > self.limit {
            return Err(OutputLimitExceeded {
                limit: self.limit,
                attempted,
            });
        }
        self.used = attempted;
        Ok(())
    }
}

/// One clock for every job's pacer: creating a clock calibrates it (CPUID,
/// which traps to the hypervisor on VMs) and would cost several µs per job.
static PACER_CLOCK: LazyLock<DefaultClock> = LazyLock::new(DefaultClock::default);

/// Why a chunk could not be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// Nobody consumes the job's chunks any more.
    Closed,
}

/// The job's chunk stream.
pub struct StreamState {
    sink: Option<mpsc::Sender<Chunk>>,
    next_index: u32,
    bytes: u64,
    max_chunk_bytes: u32,
    pacer: DefaultDirectRateLimiter,
}

impl StreamState {
    /// A stream delivering to `sink` (or counting only, when `None`), with
    /// chunks of at most `max_chunk_bytes` paced to `per_second`.
    pub fn new(sink: Option<mpsc::Sender<Chunk>>, max_chunk_bytes: u32, per_second: u32) -> StreamState {
        let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        StreamState {
            sink,
            next_index: 0,
            bytes: 0,
            max_chunk_bytes,
            pacer: RateLimiter::direct_with_clock(Quota::per_second(rate), PACER_CLOCK.clone()),
        }
    }

    /// Let go of the sink: whoever reads the chunks sees the stream end.
    pub fn close(&mut self) {
        self.sink = None;
    }

    /// The per-chunk cap, bytes.
    pub fn max_chunk_bytes(&self) -> u32 {
        self.max_chunk_bytes
    }

    /// Chunks delivered so far.
    pub fn chunks(&self) -> u32 {
        self.next_index
    }

    /// Bytes delivered in chunks so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Wait for the rate cap, then deliver `content` as the next chunk.
    pub async fn send(&mut self, content: String) -> Result<(), SendError> {
        self.pacer.until_ready().await;
        let length = content.len() as u64;
        let chunk = Chunk {
            index: self.next_index,
            content,
        };
        if let Some(sink) = &self.sink {
            sink.send(chunk).await.map_err(|_| SendError::Closed)?;
        }
        self.next_index += 1;
        self.bytes += length;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_shared_and_not_spent_on_failure() {
        let mut budget = OutputBudget::new(10);
        budget.spend(6).unwrap();
        assert_eq!(
            budget.spend(5),
            Err(OutputLimitExceeded {
                limit: 10,
                attempted: 11
            })
        );
        budget.spend(4).unwrap();
    }

    #[tokio::test]
    async fn chunks_are_numbered_in_order() {
        let (sink, mut chunks) = mpsc::channel(8);
        let mut stream = StreamState::new(Some(sink), 100, 1000);
        stream.send("a".into()).await.unwrap();
        stream.send("bc".into()).await.unwrap();
        assert_eq!(
            chunks.recv().await,
            Some(Chunk {
                index: 0,
                content: "a".into()
            })
        );
        assert_eq!(
            chunks.recv().await,
            Some(Chunk {
                index: 1,
                content: "bc".into()
            })
        );
        assert_eq!((stream.chunks(), stream.bytes()), (2, 3));
        drop(chunks);
        assert_eq!(stream.send("d".into()).await, Err(SendError::Closed));
    }
}
