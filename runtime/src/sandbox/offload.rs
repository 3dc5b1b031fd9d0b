//! Guests off the node's I/O threads once they prove CPU-bound.
//!
//! A job's guest starts on the task that took the job: most jobs are short,
//! and a short job pays for no hand-off and no thread. Each poll of the
//! guest is timed; once it has spent [`INLINE_CPU`] in polls, the rest of
//! its run moves to a thread of its own (tokio's blocking pool, threads
//! reused across jobs). There the kernel time-slices it against every other
//! thread, the node's I/O threads included: a spinning guest cannot delay
//! another tenant's reads, starts and settles, and another tenant's job that
//! becomes runnable does not queue behind spinners on the runtime's few
//! worker threads. Deadlines and cancellation work the same on either side
//! (the epoch callback traps the guest; the store goes with the future).

use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

/// CPU a guest may spend on the calling task before it moves to its own thread.
pub const INLINE_CPU: Duration = Duration::from_millis(2);

/// Run `guest` to completion: inline while it is cheap, then on a thread of
/// its own.
pub async fn run<F>(guest: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut guest = Box::pin(guest);
    let mut spent = Duration::ZERO;
    let inline = std::future::poll_fn(|cx| {
        let began = Instant::now();
        let polled = guest.as_mut().poll(cx);
        spent += began.elapsed();
        match polled {
            Poll::Ready(output) => Poll::Ready(Some(output)),
            Poll::Pending if spent >= INLINE_CPU => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    });
    if let Some(output) = pin!(inline).await {
        return output;
    }
    let runtime = tokio::runtime::Handle::current();
    match tokio::task::spawn_blocking(move || runtime.block_on(guest)).await {
        Ok(output) => output,
        Err(failed) if failed.is_panic() => std::panic::resume_unwind(failed.into_panic()),
        Err(failed) => panic!("a guest's thread was cancelled: {failed}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn short_work_stays_inline_and_busy_work_moves_to_its_own_thread() {
        let caller = std::thread::current().id();
        let short = run(async { std::thread::current().id() }).await;
        assert_eq!(short, caller, "a cheap guest runs on the calling task");
        let busy = run(async {
            // Spin in slices, yielding between them like a guest at each epoch tick.
            let began = Instant::now();
            while began.elapsed() < 3 * INLINE_CPU {
                let slice = Instant::now();
                while slice.elapsed() < Duration::from_micros(500) {}
                tokio::task::yield_now().await;
            }
            std::thread::current().id()
        })
        .await;
        assert_ne!(busy, caller, "a busy guest finishes on a thread of its own");
    }
}
