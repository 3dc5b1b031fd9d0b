//! Wake-ups on Redis Pub/Sub: `PUBLISH wake:v1:node:{nodeId} …` makes the
//! node ask the Nexus API for jobs at once.

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Endpoint;
use super::channel::{ChannelEvent, follow_channel};
use crate::wire;

/// Wake the agent whenever `wake:v1:node:{node_id}` is published on Redis
/// (resubscribing with the shared backoff after Redis goes away).
pub async fn listen_for_wake(endpoint: Endpoint, node_id: String, wake: Arc<Notify>, stop: CancellationToken) {
    let channel = wire::wake_channel(&node_id);
    let on_event = |event| {
        if event == ChannelEvent::Message {
            wake.notify_one();
        }
    };
    follow_channel(endpoint, &channel, on_event, stop).await;
}
