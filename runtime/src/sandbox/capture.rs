//! The guest's stdout and stderr, captured line by line into the job's log
//! (`joblog.rs`) instead of reaching the node's own output.
//!
//! Writes always succeed: a guest printing more than the log keeps is cut,
//! not failed (a Rust guest panics when a print fails, which would turn
//! chattiness into a crash).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use crate::sandbox::joblog::{JobLog, Level, LogRecord, Source};

/// Longest line kept whole; longer ones are split.
const MAX_LINE_BYTES: usize = 4096;
/// Bytes the guest may write per call (`check-write` permit).
const WRITE_PERMIT: usize = 64 * 1024;

/// One captured stream (stdout or stderr) of one job.
#[derive(Clone)]
pub struct Captured {
    log: JobLog,
    source: Source,
    pending: Arc<Mutex<Vec<u8>>>,
}

impl Captured {
    /// Capture into `log`, recording lines as coming from `source`.
    pub fn new(log: JobLog, source: Source) -> Captured {
        Captured {
            log,
            source,
            pending: Arc::default(),
        }
    }

    fn level(&self) -> Level {
        if self.source == Source::Stderr {
            Level::Warn
        } else {
            Level::Info
        }
    }

    /// Log one line; blank lines carry nothing and are skipped.
    fn record(&self, line: &[u8]) {
        let message = String::from_utf8_lossy(line).trim_end_matches('\r').to_string();
        if message.trim().is_empty() {
            return;
        }
        self.log.push(LogRecord {
            level: self.level(),
            source: self.source,
            message,
            fields: Vec::new(),
        });
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let mut pending = self.pending.lock().expect("capture poisoned");
        pending.extend_from_slice(bytes);
        while let Some(newline) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=newline).collect();
            self.record(&line[..line.len() - 1]);
        }
        while pending.len() >= MAX_LINE_BYTES {
            let line: Vec<u8> = pending.drain(..MAX_LINE_BYTES).collect();
            self.record(&line);
        }
    }

    /// Record a final line that had no newline.
    pub fn flush_partial(&self) {
        let line = std::mem::take(&mut *self.pending.lock().expect("capture poisoned"));
        if !line.is_empty() {
            self.record(&line);
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
}
