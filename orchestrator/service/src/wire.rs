//! The orchestrator's side of the Kafka wire format: engine commands become `CommandEnvelope`
//! outbox rows; `ReplyEnvelope` bytes become engine replies (or a precise reason they cannot).

use std::collections::BTreeMap;

use prost::Message;
use saga_engine::{Command, Phase, Reply, ReplyOutcome, Saga, SagaId};
use saga_proto::headers;
use saga_proto::v1::{CommandEnvelope, Outcome, ReplyEnvelope};
use saga_runtime::outbox::OutboxMessage;
use serde_json::Value;
use uuid::Uuid;

/// Where commands go and where their answers must come back.
#[derive(Debug, Clone)]
pub struct Routing {
    pub topic_prefix: String,
    /// Deployed reply topic name.
    pub reply_topic: String,
}

pub fn to_wire_phase(p: Phase) -> saga_proto::v1::Phase {
    match p {
        Phase::Action => saga_proto::v1::Phase::Action,
        Phase::Compensation => saga_proto::v1::Phase::Compensation,
    }
}

/// The business idempotency key participants dedupe on: the same for every attempt of a step's phase.
pub fn idempotency_key(saga: SagaId, step: usize, phase: Phase) -> String {
    format!("{saga}/{step}/{phase}")
}

/// One outbox row carrying `cmd`, keyed by saga id.
pub fn command_message(saga: &Saga, cmd: &Command, causation_id: &str, routing: &Routing) -> OutboxMessage {
    let message_id = Uuid::now_v7().to_string();
    let envelope = CommandEnvelope {
        message_id: message_id.clone(),
        saga_id: saga.id.to_string(),
        saga_type: saga.saga_type.clone(),
        definition_version: saga.definition_version,
        step_index: cmd.step as u32,
        step_name: cmd.step_name.clone(),
        attempt: cmd.attempt,
        phase: to_wire_phase(cmd.phase) as i32,
        command_type: cmd.command_type.clone(),
        payload_json: cmd.payload.to_string(),
        causation_id: causation_id.to_owned(),
        idempotency_key: idempotency_key(saga.id, cmd.step, cmd.phase),
        reply_topic: routing.reply_topic.clone(),
        deadline_unix_ms: cmd.deadline.timestamp_millis(),
    };
    let mut h = BTreeMap::new();
    h.insert(headers::MESSAGE_ID.to_owned(), message_id);
    h.insert(headers::SAGA_ID.to_owned(), saga.id.to_string());
    h.insert(headers::SAGA_TYPE.to_owned(), saga.saga_type.clone());
    h.insert(headers::COMMAND_TYPE.to_owned(), cmd.command_type.clone());
    h.insert(headers::PHASE.to_owned(), cmd.phase.to_string());
    h.insert(headers::ATTEMPT.to_owned(), cmd.attempt.to_string());
    h.insert(
        headers::CONTENT_TYPE.to_owned(),
        headers::COMMAND_CONTENT_TYPE.to_owned(),
    );
    OutboxMessage {
        topic: format!("{}{}", routing.topic_prefix, cmd.participant),
        key: saga.id.to_string(),
        payload: envelope.encode_to_vec(),
        headers: h,
    }
}

/// A reply as the coordinator needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingReply {
    pub message_id: String,
    pub saga_id: SagaId,
    pub saga_type: String,
    pub participant: String,
    pub reply: Reply,
}

/// Decodes a `ReplyEnvelope`. The error is the dead-letter reason.
pub fn decode_reply(bytes: &[u8]) -> Result<IncomingReply, String> {
    let env = ReplyEnvelope::decode(bytes).map_err(|e| format!("not a saga.v1.ReplyEnvelope: {e}"))?;
    let saga_id = env
        .saga_id
        .parse::<SagaId>()
        .map_err(|e| format!("saga_id: {e}"))?;
    let phase = match saga_proto::v1::Phase::try_from(env.phase) {
        Ok(saga_proto::v1::Phase::Action) => Phase::Action,
        Ok(saga_proto::v1::Phase::Compensation) => Phase::Compensation,
        _ => return Err(format!("phase: {} is not action or compensation", env.phase)),
    };
    let reason = || {
        if env.reason.trim().is_empty() {
            "no reason given".to_owned()
        } else {
            env.reason.clone()
        }
    };
    let outcome = match Outcome::try_from(env.outcome) {
        Ok(Outcome::Success) => {
            let payload = if env.payload_json.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&env.payload_json).map_err(|e| format!("payload_json: not JSON: {e}"))?
            };
            ReplyOutcome::Success { payload }
        }
        Ok(Outcome::BusinessFailure) => ReplyOutcome::BusinessFailure { reason: reason() },
        Ok(Outcome::TechnicalFailure) => ReplyOutcome::TechnicalFailure { reason: reason() },
        _ => return Err(format!("outcome: {} is not success or a failure", env.outcome)),
    };
    Ok(IncomingReply {
        message_id: env.message_id,
        saga_id,
        saga_type: env.saga_type,
        participant: env.participant,
        reply: Reply {
            step: env.step_index as usize,
            phase,
            attempt: env.attempt,
            outcome,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply_bytes(f: impl FnOnce(&mut ReplyEnvelope)) -> Vec<u8> {
        let mut env = ReplyEnvelope {
            message_id: "m1".into(),
            saga_id: SagaId::new_v7().to_string(),
            saga_type: "register_user".into(),
            step_index: 1,
            attempt: 2,
            phase: saga_proto::v1::Phase::Compensation as i32,
            command_type: "DeleteUser".into(),
            outcome: Outcome::Success as i32,
            reason: String::new(),
            payload_json: r#"{"a":1}"#.into(),
            causation_id: "c".into(),
            participant: "user-service".into(),
        };
        f(&mut env);
        env.encode_to_vec()
    }

    #[test]
    fn a_good_reply_decodes() {
        let r = decode_reply(&reply_bytes(|_| {})).expect("decodes");
        assert_eq!(
            (r.reply.step, r.reply.phase, r.reply.attempt),
            (1, Phase::Compensation, 2)
        );
        assert_eq!(
            r.reply.outcome,
            ReplyOutcome::Success {
                payload: serde_json::json!({"a": 1})
            }
        );
        let r = decode_reply(&reply_bytes(|e| {
            e.outcome = Outcome::BusinessFailure as i32;
            e.reason = "duplicate e-mail".into();
        }))
        .expect("decodes");
        assert_eq!(
            r.reply.outcome,
            ReplyOutcome::BusinessFailure {
                reason: "duplicate e-mail".into()
            }
        );
    }

    #[test]
    fn bad_replies_say_what_is_wrong() {
        assert!(
            decode_reply(b"\xff\xff\xff")
                .unwrap_err()
                .starts_with("not a saga.v1.ReplyEnvelope")
        );
        assert!(
            decode_reply(&reply_bytes(|e| e.saga_id = "x".into()))
                .unwrap_err()
                .starts_with("saga_id:")
        );
        assert!(
            decode_reply(&reply_bytes(|e| e.phase = 0))
                .unwrap_err()
                .starts_with("phase:")
        );
        assert!(
            decode_reply(&reply_bytes(|e| e.outcome = 9))
                .unwrap_err()
                .starts_with("outcome:")
        );
        assert!(
            decode_reply(&reply_bytes(|e| e.payload_json = "{".into()))
                .unwrap_err()
                .starts_with("payload_json:")
        );
    }
}
