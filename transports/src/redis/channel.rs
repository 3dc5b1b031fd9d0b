//! Following one Pub/Sub channel for as long as the node runs: subscribed
//! again with the shared backoff whenever Redis goes away.

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::Endpoint;
use crate::backoff::{Backoff, worth_logging};

/// What a subscription saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChannelEvent {
    /// (Re)subscribed: messages published meanwhile were missed.
    Subscribed,
    /// A message arrived.
    Message,
}

/// Follow `channel` until `stop`, telling `on_event` of every
/// (re)subscription and message.
pub(crate) async fn follow_channel(
    endpoint: Endpoint,
    channel: &str,
    mut on_event: impl FnMut(ChannelEvent),
    stop: CancellationToken,
) {
    let mut waits = Backoff::DEFAULT.start();
    loop {
        let subscribed = async {
            let mut pubsub = endpoint.pubsub().await?;
            pubsub.subscribe(channel).await?;
            redis::RedisResult::Ok(pubsub)
        };
        let pubsub = tokio::select! {
            _ = stop.cancelled() => return,
            subscribed = subscribed => subscribed,
        };
        match pubsub {
            Ok(pubsub) => {
                waits.reset();
                tracing::debug!(%channel, "subscribed");
                on_event(ChannelEvent::Subscribed);
                let mut messages = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        message = messages.next() => match message {
                            Some(_) => on_event(ChannelEvent::Message),
                            None => break,
                        },
                    }
                }
            }
            Err(err) => {
                if worth_logging(waits.attempts()) {
                    tracing::debug!(%channel, error = %err, "cannot subscribe; retrying with backoff");
                }
                if !waits.wait(&stop).await {
                    return;
                }
            }
        }
    }
}
