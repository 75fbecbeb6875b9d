//! The reply consumer's handler: decode each `ReplyEnvelope` of a batch and apply them all through
//! the engine in one transaction. The shared consumer loop stores the Kafka offsets only after this
//! returns, i.e. after the commit.

use std::sync::Arc;

use saga_runtime::consumer::{Handler, Incoming, Transient, Verdicts};

use crate::coordinator::{ApplyError, Coordinator};
use crate::wire;

pub struct ReplyHandler {
    coordinator: Arc<Coordinator>,
}

impl ReplyHandler {
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        Self { coordinator }
    }
}

impl Handler for ReplyHandler {
    async fn handle(&self, batch: &[Incoming<'_>]) -> Result<Verdicts, Transient> {
        // Undecodable records are poison; the rest are applied together.
        let mut verdicts: Verdicts = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        let mut positions = Vec::with_capacity(batch.len());
        for (i, m) in batch.iter().enumerate() {
            let decoded = m
                .payload
                .ok_or_else(|| "empty record: expected a saga.v1.ReplyEnvelope".to_owned())
                .and_then(wire::decode_reply);
            match decoded {
                Ok(reply) => {
                    let span = m.span();
                    span.record("saga_id", tracing::field::display(reply.saga_id));
                    replies.push((reply, span));
                    positions.push(i);
                    verdicts.push(Ok(()));
                }
                Err(reason) => verdicts.push(Err(reason)),
            }
        }
        let results = match self.coordinator.apply_replies(&replies).await {
            Ok(r) => r,
            // The database is down, writers keep colliding, or the catalog lacks a version that a
            // redeploy will bring back: retry without losing the replies.
            Err(e) => return Err(Transient::new(e)),
        };
        for ((i, result), (reply, span)) in positions.into_iter().zip(results).zip(&replies) {
            match result {
                Ok(applied) => span.in_scope(|| {
                    tracing::debug!(saga_id = %reply.saga_id, changed = applied.changed, state = %applied.state,
                        "reply applied");
                }),
                // The reply can never apply: keep it for inspection and move on.
                Err(e @ (ApplyError::UnknownSaga(_) | ApplyError::TypeMismatch { .. } | ApplyError::Engine(_))) => {
                    verdicts[i] = Err(e.to_string());
                }
                Err(e) => return Err(Transient::new(e)),
            }
        }
        Ok(verdicts)
    }
}
