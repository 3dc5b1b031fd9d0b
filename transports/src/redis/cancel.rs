//! Cancel flags: a producer cancels a job with `SET job:cancelled:{jobId} 1`.
//! Workers check the flag before starting a job and poll it for running
//! ones, all running jobs in one pipelined round trip.

use super::Connection;

use crate::wire::cancel_key;

/// Reads cancel flags.
#[derive(Clone)]
pub struct CancelFlags {
    conn: Connection,
}

impl CancelFlags {
    /// Flags read over `conn`.
    pub fn new(conn: Connection) -> CancelFlags {
        CancelFlags { conn }
    }

    /// For each job id, whether its cancel flag is set.
    pub async fn check(&self, job_ids: &[&str]) -> redis::RedisResult<Vec<bool>> {
        if job_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for job_id in job_ids {
            pipe.exists(cancel_key(job_id));
        }
        let mut conn = self.conn.clone();
        pipe.query_async(&mut conn).await
    }
}
