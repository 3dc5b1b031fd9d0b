//! Guests off the node's I/O threads once they prove CPU-bound.
//!
//! A job's guest starts on the task that took the job: most jobs are short,
//! and a short job pays for no hand-off and no thread. Each poll of the
//! guest is timed; once it has spent [`INLINE_CPU`] in polls, the rest of
//! its run moves to a thread of its own under the kernel's idle scheduling
//! policy (`SCHED_IDLE`). Every thread that wakes to do a short piece of
//! work — the node's I/O threads reading, starting and settling jobs,
//! another tenant's short job running inline, Redis, the node's engines —
//! then pre-empts it at once, while CPU-bound guests share what is left
//! evenly among themselves. A short job thus goes first, as in
//! a multilevel feedback queue, and a spinning guest cannot delay it.
//! Deadlines and cancellation work the same on either side (the epoch
//! callback traps the guest; the store goes with the future); on its own
//! thread a guest no longer yields at each tick, there being nothing to
//! yield to.

use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::{Duration, Instant};

/// CPU a guest may spend on the calling task before it moves to its own thread.
pub const INLINE_CPU: Duration = Duration::from_millis(2);

thread_local! {
    /// Whether this thread is a guest's own.
    static OWN_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread runs one guest and nothing else (so the
/// guest need not yield at each epoch tick: it only checks its deadline).
pub fn on_own_thread() -> bool {
    OWN_THREAD.with(std::cell::Cell::get)
}

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
    match move_to_own_thread(guest) {
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

/// Start a thread at the idle scheduling policy that drives `guest` to its
/// end on the current runtime; the guest back when no thread can be started.
fn move_to_own_thread<F>(guest: Pin<Box<F>>) -> Result<Finished<F::Output>, Pin<Box<F>>>
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
        OWN_THREAD.with(|own| own.set(true));
        // Lowering one's own priority needs no privilege; if it fails
        // the guest still runs, only without yielding to the rest.
        if let Err(err) = lowest_priority() {
            tracing::debug!(error = ?err, "cannot lower a guest thread's priority");
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

/// Put the calling thread under `SCHED_IDLE`.
fn lowest_priority() -> Result<(), thread_priority::Error> {
    use thread_priority::unix::{
        NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy, thread_native_id,
    };
    set_thread_priority_and_policy(
        thread_native_id(),
        thread_priority::ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    )
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
    async fn a_busy_guest_runs_at_the_idle_policy() {
        use thread_priority::unix::{NormalThreadSchedulePolicy, ThreadSchedulePolicy, thread_schedule_policy};
        let policy = run(async {
            // Busy in its polls (time between polls is not the guest's).
            let began = Instant::now();
            while began.elapsed() < 3 * INLINE_CPU {
                let slice = Instant::now();
                while slice.elapsed() < Duration::from_micros(500) {}
                tokio::task::yield_now().await;
            }
            thread_schedule_policy().unwrap()
        })
        .await;
        assert_eq!(policy, ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle));
        assert_ne!(
            thread_schedule_policy().unwrap(),
            policy,
            "the caller's own thread is untouched"
        );
    }
}
