//! The connection every command of the node goes through: a
//! `ConnectionManager` (which reconnects by itself) to one server, or —
//! with Sentinel — to whichever server the Sentinels name as master now.
//! A following connection looks the master up on first use and again after
//! any error that says its server went away or stepped down (`READONLY`,
//! `MASTERDOWN`, `LOADING`, a dropped or refused connection, a timeout); the
//! command that met the error fails as before, and the caller's retry goes
//! to the new master.

use std::sync::{Arc, Mutex};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};

use super::sentinel::Sentinels;

/// A cheap-to-clone, reconnecting connection for commands.
#[derive(Clone)]
pub struct Connection(Kind);

#[derive(Clone)]
enum Kind {
    Fixed(ConnectionManager),
    Following(Arc<Following>),
}

/// A connection to the master of a Sentinel service.
struct Following {
    sentinels: Arc<Sentinels>,
    config: ConnectionManagerConfig,
    db: i64,
    /// The manager for the master found last, and how many were found
    /// before it (so one caller's error does not discard a newer one).
    current: Mutex<(u64, Option<ConnectionManager>)>,
}

impl Connection {
    pub(crate) fn fixed(manager: ConnectionManager) -> Connection {
        Connection(Kind::Fixed(manager))
    }

    pub(crate) fn following(sentinels: Arc<Sentinels>, config: ConnectionManagerConfig, db: i64) -> Connection {
        Connection(Kind::Following(Arc::new(Following {
            sentinels,
            config,
            db,
            current: Mutex::new((0, None)),
        })))
    }
}

impl Following {
    /// The manager for the current master, looked up when there is none.
    async fn manager(&self) -> RedisResult<(u64, ConnectionManager)> {
        if let (generation, Some(manager)) = &*self.current.lock().expect("not poisoned") {
            return Ok((*generation, manager.clone()));
        }
        let master = self.sentinels.master().await?;
        let manager = master.get_connection_manager_lazy(self.config.clone())?;
        let mut current = self.current.lock().expect("not poisoned");
        match &current.1 {
            // Another caller found one meanwhile: use it.
            Some(found) => Ok((current.0, found.clone())),
            None => {
                current.1 = Some(manager.clone());
                Ok((current.0, manager))
            }
        }
    }

    /// After `err` on the manager of `generation`: drop it when the error
    /// says its server is gone or no longer the master.
    fn after_error(&self, generation: u64, err: &RedisError) {
        if !master_may_have_moved(err) {
            return;
        }
        let mut current = self.current.lock().expect("not poisoned");
        if current.0 == generation && current.1.is_some() {
            *current = (generation + 1, None);
        }
    }
}

/// Whether `err` is one a failover causes.
fn master_may_have_moved(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_refusal()
        || err.is_connection_dropped()
        || err.is_timeout()
        || matches!(err.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Kind::Fixed(manager) => manager.req_packed_command(cmd),
            Kind::Following(following) => Box::pin(async move {
                let (generation, mut manager) = following.manager().await?;
                let result = manager.req_packed_command(cmd).await;
                if let Err(err) = &result {
                    following.after_error(generation, err);
                }
                result
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Kind::Fixed(manager) => manager.req_packed_commands(pipeline, offset, count),
            Kind::Following(following) => Box::pin(async move {
                let (generation, mut manager) = following.manager().await?;
                let result = manager.req_packed_commands(pipeline, offset, count).await;
                if let Err(err) = &result {
                    following.after_error(generation, err);
                }
                result
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Kind::Fixed(manager) => manager.get_db(),
            Kind::Following(following) => following.db,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_errors_are_told_from_command_errors() {
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(master_may_have_moved(&refused));
        let dropped = RedisError::from(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        assert!(master_may_have_moved(&dropped));
        let wrong_type = RedisError::from((redis::ErrorKind::UnexpectedReturnType, "not a stream"));
        assert!(!master_may_have_moved(&wrong_type));
    }
}
