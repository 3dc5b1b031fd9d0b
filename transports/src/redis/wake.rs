//! Wake-ups on Redis Pub/Sub: `PUBLISH wake:v1:node:{nodeId} …` makes the
//! node ask the Nexus API for jobs at once.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, worth_logging};
use crate::wire;

/// Wake the agent whenever `wake:v1:node:{node_id}` is published on Redis
/// (resubscribing with the shared backoff after Redis goes away).
pub async fn listen_for_wake(client: redis::Client, node_id: String, wake: Arc<Notify>, stop: CancellationToken) {
    let channel = wire::wake_channel(&node_id);
    let mut waits = Backoff::DEFAULT.start();
    loop {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            redis::RedisResult::Ok(pubsub)
        };
        let pubsub = tokio::select! {
            _ = stop.cancelled() => return,
            subscribed = subscribed => subscribed,
        };
        match pubsub {
            Ok(pubsub) => {
                waits.reset();
                tracing::debug!(%channel, "listening for wake-ups");
                let mut messages = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        message = messages.next() => match message {
                            Some(_) => wake.notify_one(),
                            None => break,
                        },
                    }
                }
            }
            Err(err) => {
                if worth_logging(waits.attempts()) {
                    tracing::debug!(%channel, error = %err, "cannot listen for wake-ups; retrying with backoff");
                }
                if !waits.wait(&stop).await {
                    return;
                }
            }
        }
    }
}
