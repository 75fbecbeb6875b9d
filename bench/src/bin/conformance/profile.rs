//! What the kit sends to a participant: its command topic and, per role, a command of its
//! domain. The kit knows nothing of a participant's business; a profile names a command that
//! succeeds, its compensation, and a command a business rule refuses. Two built-in profiles cover
//! the project's participants; another team writes a JSON file of the same shape (`--profile`).

use serde::Deserialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

/// A participant, as the kit drives it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Logical command topic (the Kafka prefix is added), e.g. `post.commands`.
    pub commands_topic: String,
    /// `saga_type` of the commands (participants echo it).
    pub saga_type: String,
    /// An action that succeeds on a fresh payload. Its effect must make a second saga with the same
    /// business data (same `$token`, new `$uuid`s) be refused while it stands, and be undone by
    /// its compensation: that is how the kit sees, from outside, whether an effect exists.
    pub action: Template,
    /// An action a business rule refuses whatever the state.
    pub refused: Template,
    /// The fact sets the participant publishes on `/audit/facts/{set}` for the audit's
    /// cross-checks (none if it publishes none).
    #[serde(default)]
    pub facts: Vec<String>,
}

/// A command of the participant's domain and its undo.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub command_type: String,
    pub compensation: String,
    pub step_index: u32,
    pub step_name: String,
    /// The saga context sent: every string `"$uuid"` becomes a fresh UUID, `$token` inside a string
    /// becomes the instance's business token.
    pub payload: Value,
}

/// One saga's use of a template: its id, its payload, and the token of its business data.
#[derive(Debug, Clone)]
pub struct Instance {
    pub saga: Uuid,
    pub token: String,
    pub payload: Map<String, Value>,
}

impl Template {
    fn new(command_type: &str, compensation: &str, step_index: u32, step_name: &str, payload: Value) -> Self {
        Self {
            command_type: command_type.into(),
            compensation: compensation.into(),
            step_index,
            step_name: step_name.into(),
            payload,
        }
    }

    /// A new saga with new business data.
    pub fn instance(&self) -> Instance {
        let token = Uuid::now_v7().simple().to_string()[16..].to_owned();
        self.with_token(token)
    }

    /// A new saga (new ids) with the same business data as `other`.
    pub fn twin(&self, other: &Instance) -> Instance {
        self.with_token(other.token.clone())
    }

    fn with_token(&self, token: String) -> Instance {
        let payload = match fill(&self.payload, &token) {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        Instance {
            saga: Uuid::now_v7(),
            token,
            payload,
        }
    }
}

fn fill(value: &Value, token: &str) -> Value {
    match value {
        Value::String(s) if s == "$uuid" => Value::String(Uuid::now_v7().to_string()),
        Value::String(s) => Value::String(s.replace("$token", token)),
        Value::Array(items) => Value::Array(items.iter().map(|v| fill(v, token)).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), fill(v, token))).collect()),
        other => other.clone(),
    }
}

/// The built-in profiles: `post-service` (either implementation) and `user-service`. Each takes
/// part in `register_user`, and its action gets that saga's context: a user id, an e-mail and a
/// name.
pub fn builtin(name: &str) -> Option<Profile> {
    let registration =
        json!({"user_id": "$uuid", "email": "$token@conformance.example", "name": "Conformance $token"});
    let (service, action, refused, facts) = match name {
        "post-service" => (
            "post",
            Template::new("CreateAuthor", "DeleteAuthor", 1, "create_author", registration),
            Template::new(
                "CreatePost",
                "DeletePost",
                1,
                "create_post",
                json!({"user_id": "$uuid", "post_id": "$uuid", "title": "   ", "body": "refused"}),
            ),
            ["authors", "post_counts"],
        ),
        "user-service" => (
            "user",
            Template::new("CreateUser", "DeleteUser", 0, "create_user", registration),
            Template::new(
                "ReservePostQuota",
                "ReleasePostQuota",
                0,
                "reserve_quota",
                json!({"user_id": "$uuid", "post_id": "$uuid", "title": "refused"}),
            ),
            ["users", "post_counts"],
        ),
        _ => return None,
    };
    Some(Profile {
        commands_topic: format!("{service}.commands"),
        saga_type: "register_user".into(),
        action,
        refused,
        facts: facts.map(String::from).to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_fill_fresh_ids_and_twins_share_the_business_data() {
        let p = builtin("post-service").expect("built in");
        let a = p.action.instance();
        let b = p.action.twin(&a);
        assert_ne!(a.saga, b.saga);
        assert_ne!(a.payload["user_id"], b.payload["user_id"]);
        assert_eq!(a.payload["name"], b.payload["name"]);
        assert!(a.payload["name"].as_str().is_some_and(|n| n.contains(&a.token)));
        assert!(Uuid::parse_str(a.payload["user_id"].as_str().unwrap_or_default()).is_ok());
        assert_ne!(p.action.instance().token, a.token);
        assert_eq!(p.facts, ["authors", "post_counts"]);
        assert!(builtin("user-service").is_some_and(|u| u.facts == ["users", "post_counts"]));
        assert!(builtin("nobody").is_none());
    }
}
