//! The two Kafka messages of the saga protocol as typed values, and their one encoding: a protobuf
//! body (`CommandEnvelope`, `ReplyEnvelope`) keyed by the saga id, plus record headers that repeat
//! the routing fields. The orchestrator encodes commands and decodes replies, a participant the
//! other way round — with these functions, so both always agree (`docs/ARCHITECTURE.md`, "Wire
//! format"). Decoding says exactly what is wrong; that text is the dead-letter reason.

use std::collections::BTreeMap;

use prost::Message;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::Phase;
use crate::headers;
use crate::v1::{CommandEnvelope, Outcome as WireOutcome, ReplyEnvelope};

/// A record that cannot be decoded, and why (the dead-letter reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

impl From<String> for DecodeError {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// A field of a command's payload that is missing or of the wrong type: the saga cannot go on
/// with this payload, and sending it again would not change that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError(pub String);

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FieldError {}

/// A command from the orchestrator to one participant.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// Unique per published message (UUIDv7); a redelivered record keeps it.
    pub message_id: String,
    pub saga_id: Uuid,
    pub saga_type: String,
    pub definition_version: u32,
    pub step_index: u32,
    pub step_name: String,
    /// 1 for the first attempt of this (step, phase); every attempt shares the idempotency key.
    pub attempt: u32,
    pub phase: Phase,
    pub command_type: String,
    /// The saga context: its input, generated ids, and earlier steps' replies.
    pub payload: Map<String, Value>,
    /// The message (reply, start request, operator action, timer) that caused this command.
    pub causation_id: String,
    /// See [`idempotency_key`].
    pub idempotency_key: String,
    /// The topic the answer must go to.
    pub reply_topic: String,
    /// When the orchestrator stops waiting for this attempt (milliseconds since the Unix epoch).
    pub deadline_unix_ms: i64,
}

/// The business idempotency key participants dedupe on, `<saga>/<step>/<phase>`: the same for
/// every attempt of a step's phase.
pub fn idempotency_key(saga_id: impl std::fmt::Display, step_index: u32, phase: Phase) -> String {
    format!("{saga_id}/{step_index}/{phase}")
}

impl Command {
    /// The protobuf body.
    pub fn encode(&self) -> Vec<u8> {
        CommandEnvelope {
            message_id: self.message_id.clone(),
            saga_id: self.saga_id.to_string(),
            saga_type: self.saga_type.clone(),
            definition_version: self.definition_version,
            step_index: self.step_index,
            step_name: self.step_name.clone(),
            attempt: self.attempt,
            phase: self.phase.to_wire() as i32,
            command_type: self.command_type.clone(),
            payload_json: Value::Object(self.payload.clone()).to_string(),
            causation_id: self.causation_id.clone(),
            idempotency_key: self.idempotency_key.clone(),
            reply_topic: self.reply_topic.clone(),
            deadline_unix_ms: self.deadline_unix_ms,
        }
        .encode_to_vec()
    }

    /// Decodes a `CommandEnvelope`.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let env =
            CommandEnvelope::decode(bytes).map_err(|e| format!("not a saga.v1.CommandEnvelope: {e}"))?;
        let saga_id = saga_id(&env.saga_id)?;
        let phase = Phase::from_wire(env.phase)?;
        if env.command_type.is_empty() {
            return Err(DecodeError("command_type: empty".into()));
        }
        let payload = match serde_json::from_str::<Value>(&env.payload_json) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err(DecodeError("payload_json: not a JSON object".into())),
            Err(e) => return Err(DecodeError(format!("payload_json: not JSON: {e}"))),
        };
        Ok(Self {
            message_id: env.message_id,
            saga_id,
            saga_type: env.saga_type,
            definition_version: env.definition_version,
            step_index: env.step_index,
            step_name: env.step_name,
            attempt: env.attempt,
            phase,
            command_type: env.command_type,
            payload,
            causation_id: env.causation_id,
            idempotency_key: env.idempotency_key,
            reply_topic: env.reply_topic,
            deadline_unix_ms: env.deadline_unix_ms,
        })
    }

    /// A required string field of the payload.
    pub fn text(&self, field: &str) -> Result<&str, FieldError> {
        self.payload
            .get(field)
            .and_then(Value::as_str)
            .ok_or_else(|| FieldError(format!("payload field `{field}` is missing or not a string")))
    }

    /// An optional string field (absent or null is `None`).
    pub fn optional_text(&self, field: &str) -> Result<Option<&str>, FieldError> {
        match self.payload.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(FieldError(format!("payload field `{field}` is not a string"))),
        }
    }

    /// A required UUID field.
    pub fn uuid(&self, field: &str) -> Result<Uuid, FieldError> {
        let text = self.text(field)?;
        Uuid::parse_str(text).map_err(|_| FieldError(format!("payload field `{field}` is not a UUID")))
    }
}

/// How a participant finished a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Applied (or applied earlier, for a repeat); the payload is merged into the saga context.
    Success { payload: Value },
    /// Refused by a business rule; nothing applied, and nothing ever will be for this key.
    BusinessFailure { reason: String },
    /// Not processed now; nothing applied; may be retried.
    TechnicalFailure { reason: String },
}

/// A participant's answer to one command.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub message_id: String,
    pub saga_id: Uuid,
    pub saga_type: String,
    pub step_index: u32,
    /// The attempt of the command it answers (a repeat answers with the incoming attempt).
    pub attempt: u32,
    pub phase: Phase,
    pub command_type: String,
    pub outcome: Outcome,
    /// The `message_id` of the command this answers.
    pub causation_id: String,
    /// The participant service that answered.
    pub participant: String,
}

impl Reply {
    /// The answer to `command` from `participant`, with a fresh message id.
    pub fn to(command: &Command, participant: &str, outcome: Outcome) -> Self {
        Self {
            message_id: Uuid::now_v7().to_string(),
            saga_id: command.saga_id,
            saga_type: command.saga_type.clone(),
            step_index: command.step_index,
            attempt: command.attempt,
            phase: command.phase,
            command_type: command.command_type.clone(),
            outcome,
            causation_id: command.message_id.clone(),
            participant: participant.to_owned(),
        }
    }

    /// The protobuf body.
    pub fn encode(&self) -> Vec<u8> {
        let (outcome, reason, payload_json) = match &self.outcome {
            Outcome::Success { payload } => (WireOutcome::Success, String::new(), payload.to_string()),
            Outcome::BusinessFailure { reason } => {
                (WireOutcome::BusinessFailure, reason.clone(), String::new())
            }
            Outcome::TechnicalFailure { reason } => {
                (WireOutcome::TechnicalFailure, reason.clone(), String::new())
            }
        };
        ReplyEnvelope {
            message_id: self.message_id.clone(),
            saga_id: self.saga_id.to_string(),
            saga_type: self.saga_type.clone(),
            step_index: self.step_index,
            attempt: self.attempt,
            phase: self.phase.to_wire() as i32,
            command_type: self.command_type.clone(),
            outcome: outcome as i32,
            reason,
            payload_json,
            causation_id: self.causation_id.clone(),
            participant: self.participant.clone(),
        }
        .encode_to_vec()
    }

    /// Decodes a `ReplyEnvelope`. A failure without a reason gets "no reason given"; an empty
    /// success payload is JSON `null`.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let env = ReplyEnvelope::decode(bytes).map_err(|e| format!("not a saga.v1.ReplyEnvelope: {e}"))?;
        let saga_id = saga_id(&env.saga_id)?;
        let phase = Phase::from_wire(env.phase)?;
        let reason = || {
            if env.reason.trim().is_empty() {
                "no reason given".to_owned()
            } else {
                env.reason.clone()
            }
        };
        let outcome = match WireOutcome::try_from(env.outcome) {
            Ok(WireOutcome::Success) => {
                let payload = if env.payload_json.trim().is_empty() {
                    Value::Null
                } else {
                    serde_json::from_str(&env.payload_json)
                        .map_err(|e| format!("payload_json: not JSON: {e}"))?
                };
                Outcome::Success { payload }
            }
            Ok(WireOutcome::BusinessFailure) => Outcome::BusinessFailure { reason: reason() },
            Ok(WireOutcome::TechnicalFailure) => Outcome::TechnicalFailure { reason: reason() },
            _ => {
                return Err(DecodeError(format!(
                    "outcome: {} is not success or a failure",
                    env.outcome
                )));
            }
        };
        Ok(Self {
            message_id: env.message_id,
            saga_id,
            saga_type: env.saga_type,
            step_index: env.step_index,
            attempt: env.attempt,
            phase,
            command_type: env.command_type,
            outcome,
            causation_id: env.causation_id,
            participant: env.participant,
        })
    }
}

fn saga_id(text: &str) -> Result<Uuid, DecodeError> {
    let shown: String = text.chars().take(64).collect();
    Uuid::parse_str(text).map_err(|_| DecodeError(format!("saga_id: `{shown}` is not a UUID")))
}

/// `headers()` of both messages: the routing fields, which both carry under the same names, are
/// repeated in every record's headers; only the content type tells the two apart.
macro_rules! routing_headers {
    ($message:ty, $content_type:expr) => {
        impl $message {
            /// The record headers (trace context is added by whoever publishes).
            pub fn headers(&self) -> BTreeMap<String, String> {
                BTreeMap::from([
                    (headers::MESSAGE_ID.to_owned(), self.message_id.clone()),
                    (headers::SAGA_ID.to_owned(), self.saga_id.to_string()),
                    (headers::SAGA_TYPE.to_owned(), self.saga_type.clone()),
                    (headers::COMMAND_TYPE.to_owned(), self.command_type.clone()),
                    (headers::PHASE.to_owned(), self.phase.as_str().to_owned()),
                    (headers::ATTEMPT.to_owned(), self.attempt.to_string()),
                    (headers::CONTENT_TYPE.to_owned(), $content_type.to_owned()),
                ])
            }
        }
    };
}

routing_headers!(Command, headers::COMMAND_CONTENT_TYPE);
routing_headers!(Reply, headers::REPLY_CONTENT_TYPE);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope() -> CommandEnvelope {
        CommandEnvelope {
            message_id: "m".into(),
            saga_id: Uuid::now_v7().to_string(),
            saga_type: "register_user".into(),
            definition_version: 1,
            step_index: 0,
            step_name: "create_user".into(),
            attempt: 1,
            phase: crate::v1::Phase::Action as i32,
            command_type: "CreateUser".into(),
            payload_json: r#"{"email":"a@b.co","user_id":"0190f5a2-7c1e-7d3a-9b1f-2c3d4e5f6a7b","n":1}"#
                .into(),
            causation_id: "c".into(),
            idempotency_key: "k".into(),
            reply_topic: "saga.replies".into(),
            deadline_unix_ms: 0,
        }
    }

    #[test]
    fn a_command_round_trips_and_its_fields_read() {
        let cmd = Command::decode(&envelope().encode_to_vec()).expect("decodes");
        assert_eq!(cmd.phase, Phase::Action);
        assert_eq!(
            Command::decode(&cmd.encode()),
            Ok(cmd.clone()),
            "encode is decode's inverse"
        );
        assert_eq!(cmd.text("email").ok(), Some("a@b.co"));
        assert!(cmd.uuid("user_id").is_ok());
        assert!(cmd.text("missing").is_err_and(|e| e.0.contains("`missing`")));
        assert!(cmd.text("n").is_err());
        assert!(cmd.uuid("email").is_err_and(|e| e.0.contains("not a UUID")));
        assert_eq!(cmd.optional_text("body"), Ok(None));
        let h = cmd.headers();
        assert_eq!(h.get(headers::PHASE).map(String::as_str), Some("action"));
        assert_eq!(h.get(headers::ATTEMPT).map(String::as_str), Some("1"));
        assert_eq!(
            h.get(headers::CONTENT_TYPE).map(String::as_str),
            Some(headers::COMMAND_CONTENT_TYPE)
        );
    }

    #[test]
    fn malformed_commands_say_why() {
        let err = |e: CommandEnvelope| Command::decode(&e.encode_to_vec()).unwrap_err().0;
        assert!(
            Command::decode(b"\xff\xff")
                .unwrap_err()
                .0
                .starts_with("not a saga.v1.CommandEnvelope")
        );
        assert!(
            err(CommandEnvelope {
                phase: 0,
                ..envelope()
            })
            .starts_with("phase:")
        );
        assert_eq!(
            err(CommandEnvelope {
                payload_json: "[1]".into(),
                ..envelope()
            }),
            "payload_json: not a JSON object"
        );
        assert!(
            err(CommandEnvelope {
                saga_id: "nope".into(),
                ..envelope()
            })
            .starts_with("saga_id:")
        );
        assert_eq!(
            err(CommandEnvelope {
                command_type: String::new(),
                ..envelope()
            }),
            "command_type: empty"
        );
    }

    fn reply_bytes(f: impl FnOnce(&mut ReplyEnvelope)) -> Vec<u8> {
        let mut env = ReplyEnvelope {
            message_id: "m1".into(),
            saga_id: Uuid::now_v7().to_string(),
            saga_type: "register_user".into(),
            step_index: 1,
            attempt: 2,
            phase: crate::v1::Phase::Compensation as i32,
            command_type: "DeleteUser".into(),
            outcome: WireOutcome::Success as i32,
            reason: String::new(),
            payload_json: r#"{"a":1}"#.into(),
            causation_id: "c".into(),
            participant: "user-service".into(),
        };
        f(&mut env);
        env.encode_to_vec()
    }

    #[test]
    fn a_good_reply_decodes_and_round_trips() {
        let r = Reply::decode(&reply_bytes(|_| {})).expect("decodes");
        assert_eq!((r.step_index, r.phase, r.attempt), (1, Phase::Compensation, 2));
        assert_eq!(
            r.outcome,
            Outcome::Success {
                payload: json!({"a": 1})
            }
        );
        assert_eq!(Reply::decode(&r.encode()), Ok(r));
        let r = Reply::decode(&reply_bytes(|e| {
            e.outcome = WireOutcome::BusinessFailure as i32;
            e.reason = "duplicate e-mail".into();
        }))
        .expect("decodes");
        assert_eq!(
            r.outcome,
            Outcome::BusinessFailure {
                reason: "duplicate e-mail".into()
            }
        );
        let r = Reply::decode(&reply_bytes(|e| e.outcome = WireOutcome::TechnicalFailure as i32))
            .expect("decodes");
        assert_eq!(
            r.outcome,
            Outcome::TechnicalFailure {
                reason: "no reason given".into()
            }
        );
    }

    #[test]
    fn bad_replies_say_what_is_wrong() {
        let err = |b: &[u8]| Reply::decode(b).unwrap_err().0;
        assert!(err(b"\xff\xff\xff").starts_with("not a saga.v1.ReplyEnvelope"));
        assert!(err(&reply_bytes(|e| e.saga_id = "x".into())).starts_with("saga_id:"));
        assert!(err(&reply_bytes(|e| e.phase = 0)).starts_with("phase:"));
        assert!(err(&reply_bytes(|e| e.outcome = 9)).starts_with("outcome:"));
        assert!(err(&reply_bytes(|e| e.payload_json = "{".into())).starts_with("payload_json:"));
    }

    #[test]
    fn a_reply_answers_its_command() {
        let cmd = Command::decode(&envelope().encode_to_vec()).expect("decodes");
        let reply = Reply::to(
            &cmd,
            "user-service",
            Outcome::Success {
                payload: json!({"ok": true}),
            },
        );
        assert_eq!(
            (reply.saga_id, reply.step_index, reply.attempt, reply.phase),
            (cmd.saga_id, cmd.step_index, cmd.attempt, cmd.phase)
        );
        assert_eq!(reply.causation_id, cmd.message_id);
        assert_ne!(reply.message_id, cmd.message_id);
        assert_eq!(
            reply.headers().get(headers::CONTENT_TYPE).map(String::as_str),
            Some(headers::REPLY_CONTENT_TYPE)
        );
        assert_eq!(
            idempotency_key(cmd.saga_id, 3, Phase::Compensation),
            format!("{}/3/compensation", cmd.saga_id)
        );
    }
}
