//! Guests off the node's I/O threads once they prove CPU-bound.
//!
//! A job's guest starts on the task that took the job: most jobs are short,
//! and a short job pays for no hand-off and no thread. Each poll of the
//! guest is timed; once it has spent [`INLINE_CPU`] in polls, the rest of
//! its run moves to a thread of its own at the lowest CPU priority (nice
//! 19). There the kernel time-slices it: every thread that wakes to do a
//! short piece of work — the node's I/O threads reading, starting and
//! settling jobs, another tenant's short job running inline, Redis, the
//! node's engines — runs ahead of it at once, while CPU-bound guests share
//! what is left evenly among themselves. A short job thus goes first, as in
//! a multilevel feedback queue, and a spinning guest cannot delay it.
//! Deadlines and cancellation work the same on either side (the epoch
//! callback traps the guest; the store goes with the future).

use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::{Duration, Instant};

/// CPU a guest may spend on the calling task before it moves to its own thread.
pub const INLINE_CPU: Duration = Duration::from_millis(2);

/// The nice value of a thread running a CPU-bound guest.
const GUEST_NICE: i32 = 19;

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
    match on_own_thread(guest) {
        Ok(finished) => match finished.await {
            Ok(Ok(output)) => output,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => panic!("a guest's thread ended without an outcome"),
        },
        // No thread to be had: finish inline rather than fail the job.
        Err(guest) => guest.await,
    }
}

/// What a guest's thread sends back: its output, or its panic.
type Finished<T> = tokio::sync::oneshot::Receiver<std::thread::Result<T>>;

/// Start a thread at [`GUEST_NICE`] that drives `guest` to its end on the
/// current runtime; the guest back when no thread can be started.
fn on_own_thread<F>(guest: Pin<Box<F>>) -> Result<Finished<F::Output>, Pin<Box<F>>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let runtime = tokio::runtime::Handle::current();
    let (hand_over, take_over) = std::sync::mpsc::sync_channel::<Pin<Box<F>>>(1);
    let (report, finished) = tokio::sync::oneshot::channel();
    let started = std::thread::Builder::new().name("citadel-guest".into()).spawn(move || {
        let Ok(guest) = take_over.recv() else {
            return;
        };
        // Lowering one's own priority needs no privilege; if it fails
        // the guest still runs, only without yielding to the rest.
        if let Err(err) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), GUEST_NICE) {
            tracing::debug!(error = %err, "cannot lower a guest thread's priority");
        }
        let output = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(guest)));
        let _ = report.send(output);
    });
    if let Err(err) = started {
        tracing::warn!(error = %err, "cannot start a thread for a CPU-bound guest; it goes on inline");
        return Err(guest);
    }
    match hand_over.send(guest) {
        Ok(()) => Ok(finished),
        Err(returned) => Err(returned.0),
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_busy_guest_runs_at_the_lowest_priority() {
        let nice = run(async {
            let began = Instant::now();
            while began.elapsed() < 2 * INLINE_CPU {
                tokio::task::yield_now().await;
            }
            rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
        })
        .await;
        assert_eq!(nice, GUEST_NICE);
    }
}
