//! Saga definitions are data: a name, a version and ordered steps, loadable from TOML or JSON.
//!
//! A definition also describes the saga's input (typed fields checked before a saga is created)
//! and which context fields the orchestrator fills with fresh ids, so the start path needs no
//! saga-specific code.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
    pub steps: Vec<StepDefinition>,
}

/// One step: a command to a participant and, unless the step is a pivot, the command that undoes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDefinition {
    pub name: String,
    /// The participant's command topic (without any deployment prefix), e.g. `user.commands`.
    pub participant: String,
    /// Command type of the forward action, e.g. `CreateUser`.
    pub action: String,
    /// Command type that undoes the action. `None` makes this a pivot step: once it succeeds the
    /// saga can only go forward.
    #[serde(default)]
    pub compensation: Option<String>,
    /// How long one attempt may wait for its reply before it counts as failed.
    pub deadline_ms: u64,
    /// Retries of the forward action after a technical failure or a missed deadline; when spent,
    /// the action is abandoned and the saga compensates (or parks, past a pivot).
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Retries of the compensation; when spent, the saga is parked as failed.
    #[serde(default = "RetryPolicy::compensation_default")]
    pub compensation_retry: RetryPolicy,
}

/// How long a phase keeps trying, and how it backs off between attempts.
///
/// A missed deadline or a technical failure means *unknown*, not *no*: the participant may be
/// restarting, its consumer group rebalancing, the broker moving partitions. So the budget is
/// **time**: attempts are retried, with capped exponential backoff and jitter, until
/// `give_up_after_ms` has passed since the phase's first attempt (or since an operator gave it a
/// new budget). `max_attempts`, counting every attempt from the first, is an optional extra cap.
/// At least one of the two must be set. A business refusal never retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// The time budget: no new attempt is scheduled once this long has passed since the budget
    /// started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub give_up_after_ms: Option<u64>,
    /// An extra cap on the number of attempts within a budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// Fraction (0..=1) of each backoff that is randomised away, so retries of many sagas spread out.
    #[serde(default = "default_jitter")]
    pub jitter: f64,
}

fn default_multiplier() -> f64 {
    2.0
}

fn default_jitter() -> f64 {
    0.2
}

impl Default for RetryPolicy {
    /// Forward actions: keep trying for five minutes, backing off up to five seconds — long
    /// enough to ride out a participant's restart, a consumer group's rebalance or a broker's.
    fn default() -> Self {
        Self {
            give_up_after_ms: Some(5 * 60 * 1000),
            max_attempts: None,
            initial_backoff_ms: 200,
            max_backoff_ms: 5_000,
            multiplier: default_multiplier(),
            jitter: default_jitter(),
        }
    }
}

impl RetryPolicy {
    /// Compensations must not give up lightly: an hour, backing off up to a minute. Giving up
    /// parks the saga for an operator.
    pub fn compensation_default() -> Self {
        Self {
            give_up_after_ms: Some(60 * 60 * 1000),
            max_attempts: None,
            initial_backoff_ms: 500,
            max_backoff_ms: 60_000,
            multiplier: default_multiplier(),
            jitter: default_jitter(),
        }
    }

    /// Whether another attempt may be scheduled at `now`, after `used` attempts of a budget that
    /// started at `budget_start`.
    pub fn allows_retry(&self, used: u32, budget_start: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        let in_time = self.give_up_after(budget_start).is_none_or(|end| now < end);
        let in_count = self.max_attempts.is_none_or(|max| used < max);
        in_time && in_count
    }

    /// When a budget started at `budget_start` ends, if the policy has a time budget.
    pub fn give_up_after(&self, budget_start: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.give_up_after_ms
            .map(|ms| budget_start + TimeDelta::milliseconds(ms as i64))
    }

    /// The wait before the attempt after `failed_attempt` (1-based). `seed` picks the jitter (the
    /// first draw of a generator seeded with it, so the same seed gives the same wait); the
    /// engine derives it from the saga, step, phase and attempt so the result is reproducible.
    pub fn backoff(&self, failed_attempt: u32, seed: u64) -> Duration {
        let exponent = failed_attempt.saturating_sub(1).min(64) as i32;
        let raw = self.initial_backoff_ms as f64 * self.multiplier.powi(exponent);
        let capped = raw.min(self.max_backoff_ms as f64);
        let unit = fastrand::Rng::with_seed(seed).f64(); // [0, 1)
        let jittered = capped * (1.0 - self.jitter * unit);
        Duration::from_millis(jittered.max(0.0) as u64)
    }

    fn validate(&self, what: &str) -> Result<(), DefinitionError> {
        let err = |problem: String| Err(DefinitionError(format!("{what}: {problem}")));
        match (self.give_up_after_ms, self.max_attempts) {
            (None, None) => return err("give_up_after_ms or max_attempts must be set".into()),
            (_, Some(0)) => return err("max_attempts must be at least 1".into()),
            (Some(ms), _) if ms == 0 || ms > MAX_DURATION_MS => {
                return err(format!("give_up_after_ms must be within 1..={MAX_DURATION_MS}"));
            }
            _ => {}
        }
        if self.initial_backoff_ms > self.max_backoff_ms {
            return err("initial_backoff_ms exceeds max_backoff_ms".into());
        }
        if self.max_backoff_ms > MAX_DURATION_MS {
            return err(format!("max_backoff_ms exceeds {MAX_DURATION_MS}"));
        }
        if !(1.0..=16.0).contains(&self.multiplier) {
            return err("multiplier must be within 1..=16".into());
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return err("jitter must be within 0..=1".into());
        }
        Ok(())
    }
}

/// A typed field of a saga's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputField {
    pub name: String,
    pub kind: FieldKind,
    #[serde(default = "yes")]
    pub required: bool,
    /// Maximum length in characters for string-like kinds.
    #[serde(default)]
    pub max_len: Option<usize>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldKind {
    String,
    Email,
    Uuid,
    Integer,
}

/// A definition that cannot be used (caught when the catalog loads, never at run time).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid saga definition: {0}")]
pub struct DefinitionError(pub String);

/// A `StartSaga` payload that does not match the definition's input. Names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("payload field `{field}`: {problem}")]
pub struct InputError {
    pub field: String,
    pub problem: String,
}

impl InputError {
    fn new(field: &str, problem: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            problem: problem.into(),
        }
    }
}

impl SagaDefinition {
    /// Checks the definition is usable: at least one step, unique names, sane durations.
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
        let mut names = HashSet::new();
        for step in &self.steps {
            if step.name.is_empty() || !names.insert(step.name.as_str()) {
                return fail(format!("step name `{}` is empty or repeated", step.name));
            }
            if step.participant.is_empty() || step.action.is_empty() {
                return fail(format!("step `{}` needs a participant and an action", step.name));
            }
            if step.compensation.as_deref() == Some("") {
                return fail(format!("step `{}` has an empty compensation", step.name));
            }
            if step.deadline_ms == 0 || step.deadline_ms > MAX_DURATION_MS {
                return fail(format!(
                    "step `{}` deadline_ms must be within 1..={MAX_DURATION_MS}",
                    step.name
                ));
            }
            step.retry.validate(&format!("step `{}` retry", step.name))?;
            step.compensation_retry
                .validate(&format!("step `{}` compensation_retry", step.name))?;
        }
        let mut fields = HashSet::new();
        for field in &self.input {
            if !is_identifier(&field.name) || !fields.insert(field.name.as_str()) {
                return fail(format!("input field `{}` is invalid or repeated", field.name));
            }
        }
        for id in &self.generated_ids {
            if !is_identifier(id) || !fields.insert(id.as_str()) {
                return fail(format!("generated id `{id}` is invalid or clashes with a field"));
            }
        }
        Ok(())
    }

    /// True when step `index` cannot be undone.
    pub fn is_pivot(&self, index: usize) -> bool {
        self.steps.get(index).is_some_and(|s| s.compensation.is_none())
    }

    /// Checks a `StartSaga` payload against the input fields and returns it as the saga's initial
    /// context. Rejects unknown fields so that a typo is an error rather than a silently missing value.
    pub fn validate_input(&self, payload: &Value) -> Result<Map<String, Value>, InputError> {
        let Value::Object(map) = payload else {
            return Err(InputError::new("$", "the payload must be a JSON object"));
        };
        for key in map.keys() {
            if self.generated_ids.iter().any(|g| g == key) {
                return Err(InputError::new(
                    key,
                    "is generated by the orchestrator and must not be sent",
                ));
            }
            if !self.input.iter().any(|f| &f.name == key) {
                return Err(InputError::new(
                    key,
                    format!("is not an input of saga type `{}`", self.name),
                ));
            }
        }
        for field in &self.input {
            match map.get(&field.name) {
                None | Some(Value::Null) if field.required => {
                    return Err(InputError::new(&field.name, "is required"));
                }
                None | Some(Value::Null) => {}
                Some(value) => field.check(value)?,
            }
        }
        Ok(map.clone())
    }
}

impl InputField {
    fn check(&self, value: &Value) -> Result<(), InputError> {
        let err = |p: &str| Err(InputError::new(&self.name, p));
        match self.kind {
            FieldKind::Integer => {
                if !value.is_i64() {
                    return err("must be an integer");
                }
                return Ok(());
            }
            FieldKind::String | FieldKind::Email | FieldKind::Uuid => {}
        }
        let Some(text) = value.as_str() else {
            return err("must be a string");
        };
        if let Some(max) = self.max_len
            && text.chars().count() > max
        {
            return Err(InputError::new(
                &self.name,
                format!("must be at most {max} characters"),
            ));
        }
        match self.kind {
            FieldKind::Email if !looks_like_email(text) => {
                err("must be an e-mail address like name@example.com")
            }
            FieldKind::Uuid if uuid::Uuid::parse_str(text).is_err() => err("must be a UUID"),
            _ => Ok(()),
        }
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Shape check only (one `@`, non-empty local part, a dot in the domain, no spaces);
/// whether the address is taken is the user service's business rule.
fn looks_like_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !s.chars().any(char::is_whitespace)
        && s.len() <= 254
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
            steps: vec![
                StepDefinition {
                    name: "create_user".into(),
                    participant: "user.commands".into(),
                    action: "CreateUser".into(),
                    compensation: Some("DeleteUser".into()),
                    deadline_ms: 1000,
                    retry: RetryPolicy::default(),
                    compensation_retry: RetryPolicy::compensation_default(),
                },
                StepDefinition {
                    name: "create_author".into(),
                    participant: "post.commands".into(),
                    action: "CreateAuthor".into(),
                    compensation: None,
                    deadline_ms: 1000,
                    retry: RetryPolicy::default(),
                    compensation_retry: RetryPolicy::compensation_default(),
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
    fn backoff_grows_caps_and_jitters_within_bounds() {
        let p = RetryPolicy {
            give_up_after_ms: None,
            max_attempts: Some(5),
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
            multiplier: 2.0,
            jitter: 0.5,
        };
        for seed in 0..200u64 {
            let b1 = p.backoff(1, seed).as_millis();
            let b3 = p.backoff(3, seed).as_millis();
            let b9 = p.backoff(9, seed).as_millis();
            assert!((50..=100).contains(&b1), "{b1}");
            assert!((200..=400).contains(&b3), "{b3}");
            assert!((500..=1000).contains(&b9), "{b9}");
        }
        assert_eq!(p.backoff(2, 7), p.backoff(2, 7), "deterministic for a seed");
        let spread: HashSet<_> = (0..50u64).map(|s| p.backoff(2, s)).collect();
        assert!(spread.len() > 10, "jitter spreads retries");
    }

    #[test]
    fn the_budget_is_time_with_an_optional_cap_on_attempts() {
        let start = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).expect("time");
        let at = |s: i64| start + TimeDelta::seconds(s);
        let timed = RetryPolicy::default();
        assert!(
            timed.allows_retry(1_000, start, at(299)),
            "no count cap by default"
        );
        assert!(
            !timed.allows_retry(2, start, at(300)),
            "five minutes, then no more"
        );
        assert_eq!(timed.give_up_after(start), Some(at(300)));
        let capped = RetryPolicy {
            max_attempts: Some(3),
            ..RetryPolicy::default()
        };
        assert!(capped.allows_retry(2, start, at(1)));
        assert!(
            !capped.allows_retry(3, start, at(1)),
            "the cap applies within the time"
        );
        let counted = RetryPolicy {
            give_up_after_ms: None,
            max_attempts: Some(3),
            ..RetryPolicy::default()
        };
        assert!(counted.allows_retry(2, start, at(1_000_000)), "no time limit");
        assert_eq!(counted.give_up_after(start), None);
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
}
