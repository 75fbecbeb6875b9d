//! A decoded command, and typed access to its payload for domain handlers.

use prost::Message;
use saga_proto::v1::CommandEnvelope;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::domain::DomainError;

/// Whether a command drives a step forward or undoes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    Action,
    Compensation,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Action => "action",
            Phase::Compensation => "compensation",
        }
    }

    pub fn to_wire(self) -> saga_proto::v1::Phase {
        match self {
            Phase::Action => saga_proto::v1::Phase::Action,
            Phase::Compensation => saga_proto::v1::Phase::Compensation,
        }
    }
}

/// A command as the participant sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub message_id: String,
    pub saga_id: Uuid,
    pub saga_type: String,
    pub step_index: u32,
    pub step_name: String,
    pub attempt: u32,
    pub phase: Phase,
    pub command_type: String,
    /// The saga context: its input, generated ids, and earlier steps' replies.
    pub payload: Map<String, Value>,
    pub reply_topic: String,
}

impl Command {
    /// Decodes a `CommandEnvelope`; the error is the dead-letter reason.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let env =
            CommandEnvelope::decode(bytes).map_err(|e| format!("not a saga.v1.CommandEnvelope: {e}"))?;
        let saga_id =
            Uuid::parse_str(&env.saga_id).map_err(|_| format!("saga_id: `{}` is not a UUID", env.saga_id))?;
        let phase = match saga_proto::v1::Phase::try_from(env.phase) {
            Ok(saga_proto::v1::Phase::Action) => Phase::Action,
            Ok(saga_proto::v1::Phase::Compensation) => Phase::Compensation,
            _ => return Err(format!("phase: {} is not action or compensation", env.phase)),
        };
        if env.command_type.is_empty() {
            return Err("command_type: empty".into());
        }
        let payload = match serde_json::from_str::<Value>(&env.payload_json) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err("payload_json: not a JSON object".into()),
            Err(e) => return Err(format!("payload_json: not JSON: {e}")),
        };
        Ok(Self {
            message_id: env.message_id,
            saga_id,
            saga_type: env.saga_type,
            step_index: env.step_index,
            step_name: env.step_name,
            attempt: env.attempt,
            phase,
            command_type: env.command_type,
            payload,
            reply_topic: env.reply_topic,
        })
    }

    /// A required string field. Missing or mistyped is a business failure: the saga cannot go on
    /// with this payload, and retrying would not change it.
    pub fn text(&self, field: &str) -> Result<&str, DomainError> {
        self.payload.get(field).and_then(Value::as_str).ok_or_else(|| {
            DomainError::Rejected(format!("payload field `{field}` is missing or not a string"))
        })
    }

    /// An optional string field (absent or null is `None`).
    pub fn optional_text(&self, field: &str) -> Result<Option<&str>, DomainError> {
        match self.payload.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(DomainError::Rejected(format!(
                "payload field `{field}` is not a string"
            ))),
        }
    }

    /// A required UUID field.
    pub fn uuid(&self, field: &str) -> Result<Uuid, DomainError> {
        let text = self.text(field)?;
        Uuid::parse_str(text)
            .map_err(|_| DomainError::Rejected(format!("payload field `{field}` is not a UUID")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> CommandEnvelope {
        CommandEnvelope {
            message_id: "m".into(),
            saga_id: Uuid::now_v7().to_string(),
            saga_type: "register_user".into(),
            definition_version: 1,
            step_index: 0,
            step_name: "create_user".into(),
            attempt: 1,
            phase: saga_proto::v1::Phase::Action as i32,
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
    fn decodes_and_reads_fields() {
        let cmd = Command::decode(&envelope().encode_to_vec()).expect("decodes");
        assert_eq!(cmd.phase, Phase::Action);
        assert_eq!(cmd.text("email").ok(), Some("a@b.co"));
        assert!(cmd.uuid("user_id").is_ok());
        assert!(matches!(cmd.text("missing"), Err(DomainError::Rejected(m)) if m.contains("`missing`")));
        assert!(matches!(cmd.text("n"), Err(DomainError::Rejected(_))));
        assert!(matches!(cmd.uuid("email"), Err(DomainError::Rejected(m)) if m.contains("not a UUID")));
        assert_eq!(cmd.optional_text("body").ok(), Some(None));
    }

    #[test]
    fn malformed_envelopes_say_why() {
        assert!(
            Command::decode(b"\xff\xff")
                .unwrap_err()
                .starts_with("not a saga.v1.CommandEnvelope")
        );
        let mut e = envelope();
        e.phase = 0;
        assert!(
            Command::decode(&e.encode_to_vec())
                .unwrap_err()
                .starts_with("phase:")
        );
        let mut e = envelope();
        e.payload_json = "[1]".into();
        assert_eq!(
            Command::decode(&e.encode_to_vec()).unwrap_err(),
            "payload_json: not a JSON object"
        );
        let mut e = envelope();
        e.saga_id = "nope".into();
        assert!(
            Command::decode(&e.encode_to_vec())
                .unwrap_err()
                .starts_with("saga_id:")
        );
    }
}
