//! What citadel's HTTP servers (the node's status server, `citadel
//! monitor`) do before they serve anyone: a cap on connections per client
//! address and in all (one client cannot hold every socket), a deadline for
//! a request's headers (a slowloris client that trickles them is dropped)
//! and a cap on their size. A connection over a cap is closed at once,
//! unanswered.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Request line and headers together, at most.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Open connections per client address, at most.
pub const CONNECTIONS_PER_CLIENT: usize = 32;
/// Open connections in all, at most.
pub const CONNECTIONS_TOTAL: usize = 1024;
/// How long open connections get to finish once the server stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serve HTTP/1.1 on `listener` until `stop`, a fresh `service()` per
/// connection `guard` admits: connections over its caps are closed unanswered,
/// request headers are due within `header_timeout`; on stop, open
/// connections get `SHUTDOWN_GRACE` to finish. `what` names the server in
/// its log.
pub async fn serve<S, B>(
    listener: TcpListener,
    guard: ConnectionGuard,
    header_timeout: Duration,
    what: &'static str,
    service: impl Fn() -> S,
    stop: CancellationToken,
) where
    S: HttpService<Incoming, ResBody = B> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let graceful = GracefulShutdown::new();
    let builder = http1_builder(header_timeout);
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(server = what, error = %err, "accept failed");
                    continue;
                }
            },
        };
        let admitted = match guard.admit(peer.ip()) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                tracing::debug!(server = what, client = %peer.ip(), ?refusal, "connection over the cap closed");
                continue;
            }
        };
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service()));
        tokio::spawn(async move {
            let _admitted = admitted;
            if let Err(err) = connection.await {
                tracing::debug!(server = what, error = %err, "connection ended with an error");
            }
        });
    }
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
}

/// Counts open connections by client address.
#[derive(Clone)]
pub struct ConnectionGuard {
    inner: Arc<Counts>,
}

struct Counts {
    per_client: usize,
    total: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted connection; dropping it frees its place.
pub struct Admitted {
    counts: Arc<Counts>,
    client: IpAddr,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its client has `CONNECTIONS_PER_CLIENT` open.
    Client,
    /// The server has `CONNECTIONS_TOTAL` open.
    Server,
}

impl ConnectionGuard {
    /// The caps citadel's servers use.
    pub fn new() -> ConnectionGuard {
        ConnectionGuard::with_caps(CONNECTIONS_PER_CLIENT, CONNECTIONS_TOTAL)
    }

    /// Other caps (a monitor behind a reverse proxy, where every client
    /// shares the proxy's address; tests).
    pub fn with_caps(per_client: usize, total: usize) -> ConnectionGuard {
        ConnectionGuard {
            inner: Arc::new(Counts {
                per_client,
                total,
                open: Mutex::new((0, HashMap::new())),
            }),
        }
    }

    /// Admit a connection from `client`, or say which cap it would exceed.
    pub fn admit(&self, client: IpAddr) -> Result<Admitted, Refusal> {
        let mut open = self.inner.open.lock().expect("not poisoned");
        let (total, per_client) = &mut *open;
        if *total >= self.inner.total {
            return Err(Refusal::Server);
        }
        let count = per_client.entry(client).or_default();
        if *count >= self.inner.per_client {
            return Err(Refusal::Client);
        }
        *count += 1;
        *total += 1;
        Ok(Admitted {
            counts: Arc::clone(&self.inner),
            client,
        })
    }
}

impl Default for ConnectionGuard {
    fn default() -> Self {
        ConnectionGuard::new()
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().expect("not poisoned");
        let (total, per_client) = &mut *open;
        *total -= 1;
        if let Some(count) = per_client.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                per_client.remove(&self.client);
            }
        }
    }
}

/// An HTTP/1.1 connection builder that drops a client whose request headers
/// take longer than `header_timeout` (between requests on a kept-alive
/// connection too) or exceed `MAX_HEADER_BYTES`.
fn http1_builder(header_timeout: Duration) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_per_client_and_in_all_and_free_on_drop() {
        let guard = ConnectionGuard::with_caps(2, 3);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = guard.admit(a).unwrap();
        let _second = guard.admit(a).unwrap();
        assert_eq!(guard.admit(a).err(), Some(Refusal::Client));
        let _third = guard.admit(b).unwrap();
        assert_eq!(guard.admit(b).err(), Some(Refusal::Server));
        drop(first);
        assert!(guard.admit(a).is_ok(), "a closed connection frees its place");
    }
}
