//! Asking a running node for its status (`citadel status` talks to the
//! node's own status server before collecting anything itself).

use std::net::SocketAddr;
use std::time::Duration;

/// `GET http://{addr}/status` (with `token` as bearer, when the node asks
/// for one): the node's latest StatusMessage (JSON text).
pub async fn fetch_status(addr: SocketAddr, token: Option<&str>, timeout: Duration) -> Result<String, String> {
    let client = crate::http::client(timeout)?;
    let url = format!("http://{addr}/status");
    let mut request = client.get(&url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|err| format!("{url}: {err}"))?;
    let status = response.status();
    let body = response.text().await.map_err(|err| format!("{url}: {err}"))?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("{url} answered {status}: {body}"))
    }
}
