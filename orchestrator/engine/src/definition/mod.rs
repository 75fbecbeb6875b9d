//! Saga definitions are data: a name, a version and steps, loadable from TOML or JSON.
//!
//! A definition also describes the saga's input (typed fields checked before a saga is created)
//! and which context fields the orchestrator fills with fresh ids, so the start path needs no
//! saga-specific code.
//!
//! A step is one of three kinds: a **participant** step (a command and, unless it is a pivot, the
//! command that undoes it), a **wait** (for a named signal or an operator's approval, with a
//! timeout) or a **child** saga. Consecutive steps that name the same `group` form a parallel
//! group; a step with `when` runs only if that CEL condition holds. Steps keep their index in the
//! list whatever their kind or group: the index is the wire protocol's `step_index`.
//!
//! Layout: this file (the definition and its load-time checks), [`fields`] (typed fields and
//! payload checks), [`retry`] (retry policies).

mod fields;
mod retry;

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use fields::{FieldKind, InputError, InputField, check_payload};
pub use retry::RetryPolicy;

use crate::condition;

/// Upper bound for any duration in a definition, so time arithmetic can never overflow.
const MAX_DURATION_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// A versioned saga type. A running saga stays on the version it started with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SagaDefinition {
    pub name: String,
    pub version: u32,
    #[serde(default)]
    pub description: String,
    /// The fields a `StartSaga` payload may carry.
    #[serde(default)]
    pub input: Vec<InputField>,
    /// Context fields set to a fresh UUIDv7 by the orchestrator when the saga starts
    /// (e.g. the id of the user being registered), so every step and compensation can name
    /// the entity even if the step that created it never answered.
    #[serde(default)]
    pub generated_ids: Vec<String>,
    /// Context fields sagas of this type can be found by (`ListSagas` key filters, the
    /// dashboard's search): input fields, generated ids, or fields a step's outputs or a wait's
    /// signal provide. The orchestrator indexes their values as they are written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search_keys: Vec<String>,
    pub steps: Vec<StepDefinition>,
}

/// The most search keys a definition may declare.
pub const MAX_SEARCH_KEYS: usize = 8;
/// The longest key value indexed, in bytes; a longer value is not indexed (a saga is not found
/// by it) rather than truncated (which would find it by a value it does not have).
pub const MAX_SEARCH_KEY_BYTES: usize = 256;

/// One step. Which kind it is follows from its fields: `participant` + `action`, `wait`, or
/// `child` (exactly one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDefinition {
    pub name: String,
    /// Consecutive steps with the same group run at once; the saga goes on when all have ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// A CEL condition over the context: the step runs only when it holds, else it is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// The participant's command topic (without any deployment prefix), e.g. `user.commands`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub participant: String,
    /// Command type of the forward action, e.g. `CreateUser`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub action: String,
    /// Command type that undoes the action. `None` makes a participant step a pivot: once it
    /// succeeds the saga can only go forward.
    #[serde(default)]
    pub compensation: Option<String>,
    /// How long one attempt may wait for its reply before it counts as failed (participant steps).
    #[serde(default)]
    pub deadline_ms: u64,
    /// Retries of the forward action after a technical failure or a missed deadline; when spent,
    /// the action is abandoned and the saga compensates (or parks, past a pivot).
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Retries of the compensation; when spent, the saga is parked as failed.
    #[serde(default = "RetryPolicy::compensation_default")]
    pub compensation_retry: RetryPolicy,
    /// Reply fields later conditions and child inputs may read (replies are merged into the
    /// context whole; declaring a field only makes it usable in expressions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<InputField>,
    /// Pause until a signal or an operator's decision arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitDefinition>,
    /// Start a saga of another type and take its outcome as this step's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<ChildDefinition>,
}

/// What a step does, read from a [`StepDefinition`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepKind<'a> {
    Participant,
    Wait(&'a WaitDefinition),
    Child(&'a ChildDefinition),
}

/// A wait: for a named signal (`SignalSaga`) or for an operator's approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitDefinition {
    /// The signal that ends the wait; unique within the definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Wait for an operator to approve (the saga goes on) or reject (it compensates).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approval: bool,
    /// The signal's payload: checked like a saga's input, then merged into the context.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<InputField>,
    /// How long the saga waits.
    pub timeout_ms: u64,
    #[serde(default)]
    pub on_timeout: OnTimeout,
}

/// What happens when a wait's timeout passes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    /// The wait fails: the saga compensates.
    #[default]
    Compensate,
    /// The wait is skipped: the saga goes on without the signal (its fields stay `null`).
    Continue,
}

/// A child saga: its type, and its input as CEL expressions over the parent's context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildDefinition {
    pub saga: String,
    /// The child's input fields, each an expression (`email = "email"` passes a field on).
    #[serde(default)]
    pub input: BTreeMap<String, String>,
}

/// A definition that cannot be used (caught when the catalog loads, never at run time).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid saga definition: {0}")]
pub struct DefinitionError(pub String);

impl Default for StepDefinition {
    /// An empty step (no kind yet) with the default retry policies: a base for struct update.
    fn default() -> Self {
        Self {
            name: String::new(),
            group: None,
            when: None,
            participant: String::new(),
            action: String::new(),
            compensation: None,
            deadline_ms: 0,
            retry: RetryPolicy::default(),
            compensation_retry: RetryPolicy::compensation_default(),
            outputs: Vec::new(),
            wait: None,
            child: None,
        }
    }
}

impl StepDefinition {
    pub fn kind(&self) -> StepKind<'_> {
        match (&self.wait, &self.child) {
            (Some(w), _) => StepKind::Wait(w),
            (None, Some(c)) => StepKind::Child(c),
            (None, None) => StepKind::Participant,
        }
    }

    /// A participant step without a compensation: once it succeeds the saga only goes forward.
    pub fn is_pivot(&self) -> bool {
        self.kind() == StepKind::Participant && self.compensation.is_none()
    }

    /// Whether the step's effect can be (and so must be) undone: a compensable participant step
    /// or a child saga. A wait has no effect to undo.
    pub fn is_compensable(&self) -> bool {
        match self.kind() {
            StepKind::Participant => self.compensation.is_some(),
            StepKind::Child(_) => true,
            StepKind::Wait(_) => false,
        }
    }

    /// The fields this step adds to the context for the steps after it.
    fn provides(&self) -> impl Iterator<Item = &InputField> {
        let wait_fields = self.wait.iter().flat_map(|w| w.fields.iter());
        self.outputs.iter().chain(wait_fields)
    }
}

impl SagaDefinition {
    /// Checks the definition is usable: at least one step, unique names, exactly one kind per
    /// step, sane durations, groups without pivots, conditions and child inputs that read known
    /// fields and type-check.
    pub fn validate(&self) -> Result<(), DefinitionError> {
        let fail = |m: String| Err(DefinitionError(format!("{} v{}: {m}", self.name, self.version)));
        if !is_identifier(&self.name) {
            return Err(DefinitionError(format!(
                "name `{}` must be 1-64 characters of a-z, 0-9 and _",
                self.name
            )));
        }
        if self.steps.is_empty() {
            return fail("a saga needs at least one step".into());
        }
        let mut known: BTreeMap<String, FieldKind> = BTreeMap::new();
        for field in &self.input {
            if !is_identifier(&field.name) || known.insert(field.name.clone(), field.kind).is_some() {
                return fail(format!("input field `{}` is invalid or repeated", field.name));
            }
        }
        for id in &self.generated_ids {
            if !is_identifier(id) || known.insert(id.clone(), FieldKind::Uuid).is_some() {
                return fail(format!("generated id `{id}` is invalid or clashes with a field"));
            }
        }
        let mut names = HashSet::new();
        let mut signals = HashSet::new();
        for step in &self.steps {
            if step.name.is_empty() || !names.insert(step.name.as_str()) {
                return fail(format!("step name `{}` is empty or repeated", step.name));
            }
            if let Err(problem) = self.validate_step(step, &mut signals) {
                return fail(format!("step `{}`: {problem}", step.name));
            }
        }
        let mut groups = HashSet::new();
        for stage in self.stages() {
            let first = &self.steps[stage.start];
            if let Some(group) = &first.group {
                if !groups.insert(group.as_str()) {
                    return fail(format!(
                        "group `{group}` appears twice: the steps of a group must be consecutive"
                    ));
                }
                if let Some(pivot) = self.steps[stage.clone()].iter().find(|s| s.is_pivot()) {
                    return fail(format!(
                        "step `{}`: a pivot cannot be in a parallel group (its branches could fail \
                         after it succeeded, and it cannot be undone)",
                        pivot.name
                    ));
                }
            }
            // Conditions and child inputs read what the stages before this one provided.
            for step in &self.steps[stage.clone()] {
                if let Some(when) = &step.when
                    && let Err(problem) = condition::check(when, &known, true)
                {
                    return fail(format!("step `{}` when: {problem}", step.name));
                }
                if let StepKind::Child(child) = step.kind() {
                    for (field, expr) in &child.input {
                        if let Err(problem) = condition::check(expr, &known, false) {
                            return fail(format!("step `{}` child input `{field}`: {problem}", step.name));
                        }
                    }
                }
            }
            for step in &self.steps[stage] {
                for field in step.provides() {
                    if !is_identifier(&field.name) {
                        return fail(format!("step `{}` field `{}` is invalid", step.name, field.name));
                    }
                    match known.get(&field.name) {
                        Some(kind) if *kind != field.kind => {
                            return fail(format!(
                                "step `{}` field `{}` is {:?} here but {:?} before",
                                step.name, field.name, field.kind, kind
                            ));
                        }
                        _ => {
                            known.insert(field.name.clone(), field.kind);
                        }
                    }
                }
            }
        }
        self.validate_search_keys(&known)
            .or_else(|problem| fail(format!("search_keys: {problem}")))
    }

    /// Every search key names a field the saga's context can hold, once.
    fn validate_search_keys(&self, known: &BTreeMap<String, FieldKind>) -> Result<(), String> {
        if self.search_keys.len() > MAX_SEARCH_KEYS {
            return Err(format!("at most {MAX_SEARCH_KEYS} keys"));
        }
        let mut seen = HashSet::new();
        for key in &self.search_keys {
            if !seen.insert(key.as_str()) {
                return Err(format!("`{key}` is repeated"));
            }
            if !known.contains_key(key) {
                return Err(format!(
                    "`{key}` is not a field of the saga (an input field, a generated id, a step's \
                     output or a wait's field; known: {})",
                    known.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        Ok(())
    }

    /// The search keys' values in `context`, as indexed: strings as they are, numbers and
    /// booleans as JSON writes them. With `from_steps_only`, only the keys steps provide (the
    /// input's and generated ids' are set when the saga starts and never change).
    pub fn search_key_values<'a>(
        &'a self,
        context: &Map<String, Value>,
        from_steps_only: bool,
    ) -> Vec<(&'a str, String)> {
        self.search_keys
            .iter()
            .filter(|key| {
                !from_steps_only
                    || !(self.generated_ids.contains(key) || self.input.iter().any(|f| &f.name == *key))
            })
            .filter_map(|key| {
                let value = match context.get(key)? {
                    Value::String(s) => s.clone(),
                    v @ (Value::Number(_) | Value::Bool(_)) => v.to_string(),
                    _ => return None,
                };
                (value.len() <= MAX_SEARCH_KEY_BYTES).then_some((key.as_str(), value))
            })
            .collect()
    }

    fn validate_step<'a>(
        &self,
        step: &'a StepDefinition,
        signals: &mut HashSet<&'a str>,
    ) -> Result<(), String> {
        if let Some(group) = &step.group
            && !is_identifier(group)
        {
            return Err(format!(
                "group `{group}` must be 1-64 characters of a-z, 0-9 and _"
            ));
        }
        let participant = !step.participant.is_empty() || !step.action.is_empty();
        let kinds =
            usize::from(participant) + usize::from(step.wait.is_some()) + usize::from(step.child.is_some());
        if kinds != 1 {
            return Err("needs exactly one of: participant and action, wait, child".into());
        }
        match step.kind() {
            StepKind::Participant => {
                if step.participant.is_empty() || step.action.is_empty() {
                    return Err("needs a participant and an action".into());
                }
                if step.compensation.as_deref() == Some("") {
                    return Err("has an empty compensation".into());
                }
                if step.deadline_ms == 0 || step.deadline_ms > MAX_DURATION_MS {
                    return Err(format!("deadline_ms must be within 1..={MAX_DURATION_MS}"));
                }
                step.retry.validate("retry")?;
                step.compensation_retry.validate("compensation_retry")?;
            }
            StepKind::Wait(wait) => {
                if step.compensation.is_some() || step.deadline_ms != 0 || !step.outputs.is_empty() {
                    return Err(
                        "a wait has no compensation, deadline_ms or outputs (its timeout is wait.timeout_ms)"
                            .into(),
                    );
                }
                match (&wait.signal, wait.approval) {
                    (Some(signal), false) => {
                        if !is_identifier(signal) || !signals.insert(signal.as_str()) {
                            return Err(format!("signal `{signal}` is invalid or waited for twice"));
                        }
                    }
                    (None, true) => {
                        if !wait.fields.is_empty() {
                            return Err("an approval carries no fields".into());
                        }
                    }
                    _ => return Err("a wait names a signal or is an approval (one of the two)".into()),
                }
                if wait.timeout_ms == 0 || wait.timeout_ms > MAX_DURATION_MS {
                    return Err(format!("wait.timeout_ms must be within 1..={MAX_DURATION_MS}"));
                }
                let mut names = HashSet::new();
                if let Some(dup) = wait.fields.iter().find(|f| !names.insert(f.name.as_str())) {
                    return Err(format!("wait field `{}` is repeated", dup.name));
                }
            }
            StepKind::Child(child) => {
                if step.compensation.is_some() || step.deadline_ms != 0 || !step.outputs.is_empty() {
                    return Err("a child step has no compensation, deadline_ms or outputs".into());
                }
                if !is_identifier(&child.saga) {
                    return Err(format!("child saga type `{}` is invalid", child.saga));
                }
                if child.saga == self.name {
                    return Err("a saga cannot start itself as a child".into());
                }
            }
        }
        Ok(())
    }

    /// True when step `index` is a pivot: it cannot be undone.
    pub fn is_pivot(&self, index: usize) -> bool {
        self.steps.get(index).is_some_and(StepDefinition::is_pivot)
    }

    /// The stages in order: each a single step, or the consecutive steps of one parallel group.
    pub fn stages(&self) -> Vec<Range<usize>> {
        let mut stages: Vec<Range<usize>> = Vec::new();
        for (i, step) in self.steps.iter().enumerate() {
            match stages.last_mut() {
                Some(last) if step.group.is_some() && self.steps[last.start].group == step.group => {
                    last.end = i + 1;
                }
                _ => stages.push(i..i + 1),
            }
        }
        stages
    }

    /// The stage that holds step `index`.
    pub fn stage_of(&self, index: usize) -> Range<usize> {
        self.stages()
            .into_iter()
            .find(|s| s.contains(&index))
            .unwrap_or(index..index + 1)
    }

    /// The step that waits for `signal`, if the definition declares one.
    pub fn signal_step(&self, signal: &str) -> Option<usize> {
        self.steps.iter().position(|s| {
            s.wait
                .as_ref()
                .is_some_and(|w| w.signal.as_deref() == Some(signal))
        })
    }

    /// The saga types this definition starts as children.
    pub fn children(&self) -> impl Iterator<Item = (&StepDefinition, &ChildDefinition)> {
        self.steps.iter().filter_map(|s| s.child.as_ref().map(|c| (s, c)))
    }

    /// The longest a saga of this definition can send commands, from its start until it ends
    /// or is parked for an operator: every stage spending its whole budget (a group as long as
    /// its longest branch, a wait its timeout, a child saga `child(type)`), then every
    /// compensable step's compensation spending its own. An upper bound, in milliseconds; an
    /// operator's replay or retry starts a new budget and is not counted.
    pub fn lifetime_ms(&self, child: &dyn Fn(&str) -> u64) -> u64 {
        let forward = self.stages().into_iter().map(|stage| {
            self.steps[stage]
                .iter()
                .map(|s| match s.kind() {
                    StepKind::Participant => s.retry.longest_ms(s.deadline_ms),
                    StepKind::Wait(w) => w.timeout_ms,
                    StepKind::Child(c) => child(&c.saga),
                })
                .max()
                .unwrap_or(0)
        });
        let back = self.steps.iter().map(|s| match s.kind() {
            StepKind::Participant if s.compensation.is_some() => {
                s.compensation_retry.longest_ms(s.deadline_ms)
            }
            StepKind::Child(c) => child(&c.saga),
            _ => 0,
        });
        forward.chain(back).fold(0u64, u64::saturating_add)
    }

    /// Whether any step sends commands to `participant` (a command topic).
    pub fn commands(&self, participant: &str) -> bool {
        self.steps
            .iter()
            .any(|s| s.kind() == StepKind::Participant && s.participant == participant)
    }

    /// Checks a `StartSaga` payload against the input fields and returns it as the saga's initial
    /// context. Rejects unknown fields so that a typo is an error rather than a silently missing value.
    pub fn validate_input(&self, payload: &Value) -> Result<Map<String, Value>, InputError> {
        let what = format!("an input of saga type `{}`", self.name);
        check_payload(&self.input, payload, &what, &self.generated_ids)
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn two_steps() -> SagaDefinition {
        SagaDefinition {
            name: "register_user".into(),
            version: 1,
            description: String::new(),
            input: vec![
                InputField {
                    name: "email".into(),
                    kind: FieldKind::Email,
                    required: true,
                    max_len: Some(254),
                },
                InputField {
                    name: "name".into(),
                    kind: FieldKind::String,
                    required: true,
                    max_len: Some(10),
                },
                InputField {
                    name: "quota".into(),
                    kind: FieldKind::Integer,
                    required: false,
                    max_len: None,
                },
            ],
            generated_ids: vec!["user_id".into()],
            search_keys: vec!["email".into(), "user_id".into()],
            steps: vec![
                StepDefinition {
                    name: "create_user".into(),
                    participant: "user.commands".into(),
                    action: "CreateUser".into(),
                    compensation: Some("DeleteUser".into()),
                    deadline_ms: 1000,
                    retry: RetryPolicy::default(),
                    compensation_retry: RetryPolicy::compensation_default(),
                    ..StepDefinition::default()
                },
                StepDefinition {
                    name: "create_author".into(),
                    participant: "post.commands".into(),
                    action: "CreateAuthor".into(),
                    compensation: None,
                    deadline_ms: 1000,
                    retry: RetryPolicy::default(),
                    compensation_retry: RetryPolicy::compensation_default(),
                    ..StepDefinition::default()
                },
            ],
        }
    }

    #[test]
    fn valid_definition_passes() {
        assert_eq!(two_steps().validate(), Ok(()));
        assert!(two_steps().is_pivot(1));
        assert!(!two_steps().is_pivot(0));
    }

    #[test]
    fn search_keys_name_known_fields_and_index_scalar_values() {
        let mut d = two_steps();
        d.search_keys.push("nickname".into());
        let e = d.validate().unwrap_err().0;
        assert!(e.contains("search_keys: `nickname` is not a field"), "{e}");
        assert!(e.contains("known: email, name, quota, user_id"), "{e}");

        let mut d = two_steps();
        d.search_keys.push("email".into());
        assert!(d.validate().unwrap_err().0.contains("`email` is repeated"));

        // A step's output can be a key; it is written when the step's reply arrives.
        let mut d = two_steps();
        d.steps[0].outputs.push(InputField {
            name: "account_no".into(),
            kind: FieldKind::Integer,
            required: true,
            max_len: None,
        });
        d.search_keys.push("account_no".into());
        assert_eq!(d.validate(), Ok(()));
        let context = serde_json::json!({
            "email": "a@example.com", "user_id": "0190", "account_no": 42, "name": "A"
        });
        let context = context.as_object().expect("object");
        assert_eq!(
            d.search_key_values(context, false),
            vec![
                ("email", "a@example.com".to_owned()),
                ("user_id", "0190".to_owned()),
                ("account_no", "42".to_owned())
            ]
        );
        assert_eq!(
            d.search_key_values(context, true),
            vec![("account_no", "42".to_owned())]
        );
        // Missing, null and over-long values are not indexed.
        let mut long = context.clone();
        long.insert(
            "email".into(),
            Value::String("x".repeat(MAX_SEARCH_KEY_BYTES + 1)),
        );
        long.insert("account_no".into(), Value::Null);
        assert_eq!(
            d.search_key_values(&long, false),
            vec![("user_id", "0190".to_owned())]
        );
    }

    #[test]
    fn definition_errors_are_caught() {
        let mut d = two_steps();
        d.steps.clear();
        assert!(d.validate().is_err());

        let mut d = two_steps();
        d.steps[1].name = "create_user".into();
        assert!(d.validate().unwrap_err().0.contains("repeated"));

        let mut d = two_steps();
        d.steps[0].retry.max_attempts = Some(0);
        assert!(d.validate().unwrap_err().0.contains("max_attempts"));

        let mut d = two_steps();
        d.steps[0].retry.give_up_after_ms = None;
        assert!(
            d.validate()
                .unwrap_err()
                .0
                .contains("give_up_after_ms or max_attempts must be set")
        );
        d.steps[0].retry.max_attempts = Some(3);
        assert_eq!(d.validate(), Ok(()), "a count alone is a budget");

        let mut d = two_steps();
        d.generated_ids = vec!["email".into()];
        assert!(d.validate().unwrap_err().0.contains("clashes"));

        let mut d = two_steps();
        d.name = "Bad Name".into();
        assert!(d.validate().is_err());
    }

    #[test]
    fn input_validation_names_the_field() {
        let d = two_steps();
        let ok = d.validate_input(&json!({"email": "a@b.co", "name": "Ann"}));
        assert!(ok.is_ok());

        let e = d.validate_input(&json!({"name": "Ann"})).unwrap_err();
        assert_eq!((e.field.as_str(), e.problem.as_str()), ("email", "is required"));

        let e = d
            .validate_input(&json!({"email": "nope", "name": "Ann"}))
            .unwrap_err();
        assert_eq!(e.field, "email");

        let e = d
            .validate_input(&json!({"email": "a@b.co", "name": "Ann", "x": 1}))
            .unwrap_err();
        assert_eq!(e.field, "x");

        let e = d
            .validate_input(&json!({"email": "a@b.co", "name": "Ann", "user_id": "u"}))
            .unwrap_err();
        assert!(e.problem.contains("generated"));

        let e = d
            .validate_input(&json!({"email": "a@b.co", "name": "Annabelle-Marie"}))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "payload field `name`: must be at most 10 characters"
        );

        let e = d
            .validate_input(&json!({"email": "a@b.co", "name": 5}))
            .unwrap_err();
        assert_eq!(e.problem, "must be a string");

        let e = d
            .validate_input(&json!({"email": "a@b.co", "name": "A", "quota": "3"}))
            .unwrap_err();
        assert_eq!(e.problem, "must be an integer");

        let e = d.validate_input(&json!([1, 2])).unwrap_err();
        assert_eq!(e.field, "$");
    }

    #[test]
    fn definitions_parse_from_toml() {
        let text = r#"
            name = "demo"
            version = 2
            input = [{ name = "email", kind = "email" }]
            [[steps]]
            name = "one"
            participant = "a.commands"
            action = "DoIt"
            compensation = "UndoIt"
            deadline_ms = 500
            retry = { give_up_after_ms = 60000, max_attempts = 2, initial_backoff_ms = 10, max_backoff_ms = 100 }
        "#;
        let d: SagaDefinition = toml::from_str(text).expect("parses");
        assert_eq!(d.validate(), Ok(()));
        assert_eq!(d.steps[0].retry.multiplier, 2.0);
        assert_eq!(
            (d.steps[0].retry.give_up_after_ms, d.steps[0].retry.max_attempts),
            (Some(60_000), Some(2))
        );
        assert_eq!(d.steps[0].compensation_retry, RetryPolicy::compensation_default());
        assert!(
            toml::from_str::<SagaDefinition>("name = \"x\"\nversion = 1\nsteps = []\nbogus = 1").is_err()
        );
    }

    #[test]
    fn a_lifetime_adds_stages_at_their_longest_branch_then_every_compensation() {
        let text = r#"
            name = "demo"
            version = 1
            [[steps]]
            name = "a"
            participant = "a.commands"
            action = "A"
            compensation = "UndoA"
            deadline_ms = 1000
            retry = { give_up_after_ms = 10000, initial_backoff_ms = 10, max_backoff_ms = 100 }
            compensation_retry = { give_up_after_ms = 20000, initial_backoff_ms = 10, max_backoff_ms = 100 }
            [[steps]]
            name = "b"
            group = "g"
            participant = "b.commands"
            action = "B"
            compensation = "UndoB"
            deadline_ms = 1000
            retry = { max_attempts = 3, initial_backoff_ms = 10, max_backoff_ms = 500 }
            compensation_retry = { give_up_after_ms = 30000, initial_backoff_ms = 10, max_backoff_ms = 100 }
            [[steps]]
            name = "c"
            group = "g"
            child = { saga = "kid" }
            [[steps]]
            name = "d"
            wait = { approval = true, timeout_ms = 50000 }
        "#;
        let d: SagaDefinition = toml::from_str(text).expect("parses");
        assert_eq!(d.validate(), Ok(()));
        let kid = |name: &str| if name == "kid" { 7000 } else { 0 };
        // a: 10 s + 1 s; group: max(3 × 1.5 s, the child's 7 s); the wait's 50 s; then the
        // compensations of a (21 s), b (31 s) and the child (7 s).
        assert_eq!(
            d.lifetime_ms(&kid),
            11_000 + 7_000 + 50_000 + 21_000 + 31_000 + 7_000
        );
        assert!(d.commands("a.commands") && d.commands("b.commands"));
        assert!(!d.commands("kid.commands"));
    }
}
