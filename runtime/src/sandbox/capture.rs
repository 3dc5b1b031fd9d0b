//! The guest's stdout and stderr, captured line by line into the job's log
//! (`joblog.rs`) instead of reaching the node's own output.
//!
//! Writes within the stream's permit always succeed: a guest printing more
//! than the log keeps is cut, not failed (a Rust guest panics when a print
//! fails, which would turn chattiness into a crash). A single write past
//! the permit `check-write` gave breaks the WASI stream contract and traps
//! the job. Splitting into lines is linear in what was written, so no write
//! can hold the host's thread for long.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use crate::sandbox::joblog::{JobLog, Level, LogRecord, Source};

/// Longest line kept whole; longer ones are split.
const MAX_LINE_BYTES: usize = 4096;
/// Bytes the guest may write per call (`check-write` permit).
const WRITE_PERMIT: usize = 64 * 1024;

/// One captured stream (stdout or stderr) of an instance, into the log of
/// the job it runs now.
#[derive(Clone)]
pub struct Captured {
    source: Source,
    target: Arc<Mutex<Target>>,
}

/// Where a captured stream writes, and its unfinished line.
struct Target {
    log: JobLog,
    pending: Vec<u8>,
}

impl Captured {
    /// Capture into `log`, recording lines as coming from `source`.
    pub fn new(log: JobLog, source: Source) -> Captured {
        Captured {
            source,
            target: Arc::new(Mutex::new(Target {
                log,
                pending: Vec::new(),
            })),
        }
    }

    /// From now on, write into `log` (the next job on a kept instance):
    /// every handle the guest holds on this stream follows.
    pub fn redirect(&self, log: JobLog) {
        self.flush_partial();
        self.target.lock().expect("capture poisoned").log = log;
    }

    fn level(&self) -> Level {
        if self.source == Source::Stderr {
            Level::Warn
        } else {
            Level::Info
        }
    }

    /// Log one line into `log`; blank lines carry nothing and are skipped.
    fn record(&self, log: &JobLog, line: &[u8]) {
        let message = String::from_utf8_lossy(line).trim_end_matches('\r').to_string();
        if message.trim().is_empty() {
            return;
        }
        log.push(LogRecord {
            level: self.level(),
            source: self.source,
            message,
            fields: Vec::new(),
        });
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let mut target = self.target.lock().expect("capture poisoned");
        let Target { log, pending } = &mut *target;
        pending.extend_from_slice(bytes);
        let mut start = 0;
        while start < pending.len() {
            let window = &pending[start..pending.len().min(start + MAX_LINE_BYTES)];
            match window.iter().position(|byte| *byte == b'\n') {
                Some(newline) => {
                    self.record(log, &window[..newline]);
                    start += newline + 1;
                }
                None if window.len() == MAX_LINE_BYTES => {
                    self.record(log, window);
                    start += MAX_LINE_BYTES;
                }
                None => break,
            }
        }
        pending.drain(..start);
    }

    /// Record a final line that had no newline.
    pub fn flush_partial(&self) {
        let mut target = self.target.lock().expect("capture poisoned");
        let line = std::mem::take(&mut target.pending);
        if !line.is_empty() {
            self.record(&target.log, &line);
        }
    }
}

impl IsTerminal for Captured {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Captured {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Captured {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for Captured {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if bytes.len() > WRITE_PERMIT {
            return Err(StreamError::trap(&format!(
                "the guest wrote {} bytes in one call to {}; check-write permits {WRITE_PERMIT}",
                bytes.len(),
                self.source.as_str()
            )));
        }
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

impl AsyncWrite for Captured {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_and_keeps_the_tail() {
        let log = JobLog::new(1 << 20);
        let captured = Captured::new(log.clone(), Source::Stderr);
        captured.write_bytes(b"panicked at src/lib.rs:1:\nbad-trap was ");
        captured.write_bytes(b"asked to fail");
        captured.flush_partial();
        let records = log.snapshot();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].message, "panicked at src/lib.rs:1:");
        assert_eq!(records[1].message, "bad-trap was asked to fail");
    }

    #[test]
    fn long_lines_are_split_and_lines_keep_their_order() {
        let log = JobLog::new(1 << 20);
        let captured = Captured::new(log.clone(), Source::Stdout);
        let mut written = vec![b'a'; MAX_LINE_BYTES + 10];
        written.extend_from_slice(b"\nshort\n");
        written.extend(std::iter::repeat_n(b'b', 2 * MAX_LINE_BYTES));
        captured.write_bytes(&written);
        let messages: Vec<usize> = log.snapshot().iter().map(|record| record.message.len()).collect();
        assert_eq!(messages, [MAX_LINE_BYTES, 10, 5, MAX_LINE_BYTES, MAX_LINE_BYTES]);
        assert!(captured.target.lock().unwrap().pending.is_empty());
    }

    #[test]
    fn a_redirected_stream_writes_into_the_next_jobs_log() {
        let (first, second) = (JobLog::new(1 << 20), JobLog::new(1 << 20));
        let captured = Captured::new(first.clone(), Source::Stdout);
        let held_by_the_guest = captured.clone();
        held_by_the_guest.write_bytes(b"one\nunfinished");
        captured.redirect(second.clone());
        held_by_the_guest.write_bytes(b"two\n");
        let messages = |log: &JobLog| {
            log.snapshot()
                .into_iter()
                .map(|record| record.message)
                .collect::<Vec<_>>()
        };
        assert_eq!(messages(&first), ["one", "unfinished"]);
        assert_eq!(messages(&second), ["two"]);
    }

    #[test]
    fn a_write_past_the_permit_is_refused() {
        let mut captured = Captured::new(JobLog::new(1 << 20), Source::Stdout);
        assert!(OutputStream::write(&mut captured, Bytes::from(vec![b'x'; WRITE_PERMIT])).is_ok());
        assert!(OutputStream::write(&mut captured, Bytes::from(vec![b'x'; WRITE_PERMIT + 1])).is_err());
    }
}
