//! A service's stdout and stderr, copied into size-capped log files:
//! `<dir>/<service>.stdout.log` and `.stderr.log`, each rotated to `.1` when
//! it reaches its cap, so a chatty engine can never fill the disk.

use std::path::{Path, PathBuf};

use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// One capped log file.
pub struct CappedLog {
    path: PathBuf,
    max_bytes: u64,
    file: File,
    written: u64,
}

impl CappedLog {
    /// Open (append to) `path`, rotating at `max_bytes`.
    pub async fn open(path: PathBuf, max_bytes: u64) -> std::io::Result<CappedLog> {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path).await?;
        let written = file.metadata().await?.len();
        Ok(CappedLog {
            path,
            max_bytes,
            file,
            written,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append `bytes`, rotating first when they would cross the cap.
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.written > 0 && self.written + bytes.len() as u64 > self.max_bytes {
            self.rotate().await?;
        }
        // A single write larger than the cap keeps only its newest bytes.
        let keep = bytes.len().min(self.max_bytes as usize);
        self.file.write_all(&bytes[bytes.len() - keep..]).await?;
        self.written += keep as u64;
        Ok(())
    }

    async fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush().await?;
        let mut previous = self.path.clone().into_os_string();
        previous.push(".1");
        tokio::fs::rename(&self.path, &previous).await?;
        self.file = OpenOptions::new().create(true).append(true).open(&self.path).await?;
        self.written = 0;
        Ok(())
    }

    /// Copy `source` into the log until it ends.
    pub async fn copy_from(mut self, mut source: impl AsyncRead + Unpin) {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            match source.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => {
                    if let Err(err) = self.write(&buffer[..read]).await {
                        tracing::warn!(log = %self.path.display(), error = %err, "cannot write the service's log; dropping its output");
                        // Keep draining so the service never blocks on a full pipe.
                        while matches!(source.read(&mut buffer).await, Ok(read) if read > 0) {}
                        break;
                    }
                }
            }
        }
        let _ = self.file.flush().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rotates_at_the_cap_and_keeps_one_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.stdout.log");
        let mut log = CappedLog::open(path.clone(), 10).await.unwrap();
        log.write(b"0123456").await.unwrap();
        log.write(b"789").await.unwrap();
        log.write(b"abc").await.unwrap();
        log.write(b"this line is longer than the cap").await.unwrap();
        log.file.flush().await.unwrap();
        let current = std::fs::read_to_string(&path).unwrap();
        let previous = std::fs::read_to_string(dir.path().join("svc.stdout.log.1")).unwrap();
        assert_eq!(previous, "abc");
        assert_eq!(
            current, "an the cap",
            "a write longer than the cap keeps its newest bytes"
        );
        let reopened = CappedLog::open(path, 10).await.unwrap();
        assert_eq!(reopened.written, 10, "appends continue counting the existing file");
    }
}
