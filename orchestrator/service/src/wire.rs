//! The orchestrator's side of the Kafka wire format (encoded and decoded by `saga_proto::envelope`,
//! which the participants use too): engine commands become outbox rows carrying a command
//! envelope; reply envelopes become engine replies (or a precise reason they cannot).

use saga_engine::{Command, Reply, ReplyOutcome, Saga, SagaId};
use saga_proto::envelope::{self, DecodeError, Outcome};
use saga_runtime::outbox::OutboxMessage;
use uuid::Uuid;

/// Where commands go and where their answers must come back.
#[derive(Debug, Clone)]
pub(crate) struct Routing {
    pub topic_prefix: String,
    /// Deployed reply topic name.
    pub reply_topic: String,
}

/// One outbox row carrying `cmd`, keyed by saga id.
pub(crate) fn command_message(
    saga: &Saga,
    cmd: &Command,
    causation_id: &str,
    routing: &Routing,
) -> OutboxMessage {
    let command = envelope::Command {
        message_id: Uuid::now_v7().to_string(),
        saga_id: saga.id.as_uuid(),
        saga_type: saga.saga_type.clone(),
        definition_version: saga.definition_version,
        step_index: cmd.step as u32,
        step_name: cmd.step_name.clone(),
        attempt: cmd.attempt,
        phase: cmd.phase,
        command_type: cmd.command_type.clone(),
        payload: cmd.payload.as_object().cloned().unwrap_or_default(),
        causation_id: causation_id.to_owned(),
        idempotency_key: envelope::idempotency_key(saga.id, cmd.step as u32, cmd.phase),
        reply_topic: routing.reply_topic.clone(),
        deadline_unix_ms: cmd.deadline.timestamp_millis(),
    };
    OutboxMessage {
        topic: format!("{}{}", routing.topic_prefix, cmd.participant),
        key: saga.id.to_string(),
        payload: command.encode(),
        headers: command.headers(),
    }
}

/// A reply as the coordinator needs it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct IncomingReply {
    pub message_id: String,
    pub saga_id: SagaId,
    pub saga_type: String,
    pub participant: String,
    pub reply: Reply,
}

/// Decodes a reply envelope into the engine's terms. The error is the dead-letter reason.
pub(crate) fn decode_reply(bytes: &[u8]) -> Result<IncomingReply, DecodeError> {
    let r = envelope::Reply::decode(bytes)?;
    let outcome = match r.outcome {
        Outcome::Success { payload } => ReplyOutcome::Success { payload },
        Outcome::BusinessFailure { reason } => ReplyOutcome::BusinessFailure { reason },
        Outcome::TechnicalFailure { reason } => ReplyOutcome::TechnicalFailure { reason },
    };
    Ok(IncomingReply {
        message_id: r.message_id,
        saga_id: SagaId::from_uuid(r.saga_id),
        saga_type: r.saga_type,
        participant: r.participant,
        reply: Reply {
            step: r.step_index as usize,
            phase: r.phase,
            attempt: r.attempt,
            outcome,
        },
    })
}
