//! The state of one saga: its own state, and per step the state of the action and of the compensation.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// A saga's id: a UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SagaId(Uuid);

impl SagaId {
    /// A fresh time-ordered id.
    pub fn new_v7() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// A 64-bit digest used to seed jitter.
    pub(crate) fn seed(&self) -> u64 {
        let (hi, lo) = self.0.as_u64_pair();
        hi ^ lo.rotate_left(17)
    }
}

impl fmt::Display for SagaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a string is not a saga id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a saga id (expected a UUID such as 0190f5a2-7c1e-7d3a-9b1f-2c3d4e5f6a7b)")]
pub struct SagaIdError(String);

impl FromStr for SagaId {
    type Err = SagaIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let shown: String = s.chars().take(64).collect();
        Uuid::parse_str(s.trim())
            .map(Self)
            .map_err(|_| SagaIdError(shown))
    }
}

/// Whether a command drives a step forward or undoes it: the wire protocol's own type, so the
/// engine, its store, the envelopes and the participants name phases one way.
pub use saga_proto::Phase;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaState {
    Running,
    Compensating,
    Completed,
    Compensated,
    /// Parked for an operator: a compensation spent its budget, or the saga cannot move past a
    /// pivot. Never dropped; only an operator action moves it on.
    Failed,
}

impl SagaState {
    pub const ALL: [SagaState; 5] = [
        SagaState::Running,
        SagaState::Compensating,
        SagaState::Completed,
        SagaState::Compensated,
        SagaState::Failed,
    ];

    /// No further input moves the saga without an operator.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SagaState::Completed | SagaState::Compensated | SagaState::Failed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SagaState::Running => "running",
            SagaState::Compensating => "compensating",
            SagaState::Completed => "completed",
            SagaState::Compensated => "compensated",
            SagaState::Failed => "failed",
        }
    }
}

impl fmt::Display for SagaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SagaState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown saga state `{s}`"))
    }
}

/// Where one phase (action or compensation) of a step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseStatus {
    /// Not sent yet (or, for a compensation, not needed yet).
    Pending,
    /// An attempt was sent and its reply is awaited until `deadline`.
    InFlight,
    /// The last attempt failed technically or missed its deadline; the next goes out at `retry_at`.
    RetryScheduled,
    Succeeded,
    /// The step did not run: its condition was false, or its wait timed out with
    /// `on_timeout = "continue"`. Nothing to undo.
    Skipped,
    /// The action was refused by a business rule: nothing was applied, nothing to undo.
    Rejected,
    /// The action gave up without a definite answer (retries spent, the saga was aborted while it
    /// was in flight, or another branch of its group failed first). It may have been applied, so
    /// it is compensated like a succeeded one. A wait or child stopped this way is abandoned too.
    Abandoned,
    /// The compensation spent its retry budget; the saga is parked as failed.
    Exhausted,
}

impl PhaseStatus {
    /// Sent and not finished.
    pub fn is_active(self) -> bool {
        matches!(self, PhaseStatus::InFlight | PhaseStatus::RetryScheduled)
    }

    /// A forward action in this status lets its stage end.
    pub fn is_done_forward(self) -> bool {
        matches!(self, PhaseStatus::Succeeded | PhaseStatus::Skipped)
    }
}

/// One phase of one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseRecord {
    pub status: PhaseStatus,
    /// Attempts sent so far; the current attempt's number while active.
    pub attempt: u32,
    /// The attempt number at which the current retry budget started: 0 at first, the attempt
    /// count when an operator replayed or retried the phase. The policy's `max_attempts` counts
    /// attempts after it, while attempt numbers keep growing (so old attempts stay stale).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub budget_from: u32,
    /// When the current retry budget started: the first attempt, or an operator's replay or
    /// retry. The policy's `give_up_after_ms` runs from here (records written before budgets
    /// were time-based lack it; `started_at` stands in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Reply deadline of the in-flight attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
    /// When the next attempt goes out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The participant's reply payload on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Value>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl PhaseRecord {
    pub fn pending() -> Self {
        Self {
            status: PhaseStatus::Pending,
            attempt: 0,
            budget_from: 0,
            budget_started_at: None,
            started_at: None,
            finished_at: None,
            deadline: None,
            retry_at: None,
            last_error: None,
            reply: None,
        }
    }

    /// Sends the next attempt: in flight from `now` until `deadline` (none for a child saga,
    /// which ends when the child does). Returns the attempt's number.
    pub(crate) fn begin_attempt(&mut self, now: DateTime<Utc>, deadline: Option<DateTime<Utc>>) -> u32 {
        self.attempt += 1;
        self.status = PhaseStatus::InFlight;
        self.started_at.get_or_insert(now);
        self.budget_started_at.get_or_insert(now);
        self.finished_at = None;
        self.deadline = deadline;
        self.retry_at = None;
        self.attempt
    }

    /// When the current retry budget started (see `budget_started_at`).
    pub fn budget_start(&self) -> Option<DateTime<Utc>> {
        self.budget_started_at.or(self.started_at)
    }

    /// The moment this phase needs the engine again, if any.
    pub fn wake_at(&self) -> Option<DateTime<Utc>> {
        match self.status {
            PhaseStatus::InFlight => self.deadline,
            PhaseStatus::RetryScheduled => self.retry_at,
            _ => None,
        }
    }
}

/// One step of a saga. `compensation` is `None` exactly when the definition's step cannot be
/// undone: a pivot, or a wait.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub action: PhaseRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<PhaseRecord>,
    /// This step's rank (1, 2, …) among the saga's actions that ended succeeded or abandoned:
    /// compensation runs from the highest. Steps that ended before ranks were recorded have none
    /// and rank below every ranked step, by index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion: Option<u32>,
    /// The child saga a child step started (its current one, after a retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<SagaId>,
}

impl StepRecord {
    pub fn phase(&self, phase: Phase) -> Option<&PhaseRecord> {
        match phase {
            Phase::Action => Some(&self.action),
            Phase::Compensation => self.compensation.as_ref(),
        }
    }

    pub(crate) fn phase_mut(&mut self, phase: Phase) -> Option<&mut PhaseRecord> {
        match phase {
            Phase::Action => Some(&mut self.action),
            Phase::Compensation => self.compensation.as_mut(),
        }
    }

    /// The order compensation follows, highest first: completion rank, then index.
    pub fn compensation_key(&self, index: usize) -> (Option<u32>, usize) {
        (self.completion, index)
    }

    /// The action may have taken effect, so undoing it is owed (if the step can be undone).
    pub fn owes_compensation(&self) -> bool {
        self.compensation.is_some()
            && matches!(
                self.action.status,
                PhaseStatus::Succeeded | PhaseStatus::Abandoned
            )
    }
}

/// The saga and step that started a saga as its child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRef {
    pub saga: SagaId,
    pub step: usize,
}

/// A saga instance: what the store persists and `decide` transforms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saga {
    pub id: SagaId,
    pub saga_type: String,
    pub definition_version: u32,
    pub state: SagaState,
    /// Input fields, generated ids, and every successful action's reply payload merged in.
    pub context: Map<String, Value>,
    pub steps: Vec<StepRecord>,
    /// Why the saga is compensating, compensated or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// Set when another saga started this one as a child step. The engine never reads it; the
    /// service tells the parent when this saga ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRef>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Saga {
    /// The (step, phase) pairs that are sent and not finished, in step order. Several actions can
    /// be active at once in a parallel group; a compensation is only ever active alone.
    pub fn active_phases(&self) -> Vec<(usize, Phase)> {
        let mut active = Vec::new();
        for (i, s) in self.steps.iter().enumerate() {
            if s.action.status.is_active() {
                active.push((i, Phase::Action));
            }
            if s.compensation.as_ref().is_some_and(|c| c.status.is_active()) {
                active.push((i, Phase::Compensation));
            }
        }
        active
    }

    /// The first active (step, phase), if any.
    pub fn active_phase(&self) -> Option<(usize, Phase)> {
        self.active_phases().into_iter().next()
    }

    /// When the engine must be woken for this saga (a deadline or a retry), if ever.
    pub fn wake_at(&self) -> Option<DateTime<Utc>> {
        self.steps
            .iter()
            .flat_map(|s| [Some(&s.action), s.compensation.as_ref()])
            .flatten()
            .filter_map(PhaseRecord::wake_at)
            .min()
    }

    /// The step the saga is working on or stopped at: the active one; for a parked saga the
    /// compensation that ran out of attempts, else the step that failed; for a compensated saga the
    /// step that failed. `None` once completed.
    pub fn current_step(&self) -> Option<usize> {
        if let Some((i, _)) = self.active_phase() {
            return Some(i);
        }
        let failed_forward = || {
            self.steps
                .iter()
                .rposition(|s| matches!(s.action.status, PhaseStatus::Rejected | PhaseStatus::Abandoned))
        };
        let exhausted = || {
            self.steps.iter().position(|s| {
                s.compensation
                    .as_ref()
                    .is_some_and(|c| c.status == PhaseStatus::Exhausted)
            })
        };
        match self.state {
            SagaState::Completed => None,
            SagaState::Running => self.steps.iter().position(|s| !s.action.status.is_done_forward()),
            SagaState::Compensating | SagaState::Failed => exhausted().or_else(failed_forward),
            SagaState::Compensated => failed_forward(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saga_id_parses_and_rejects_garbage() {
        let id = SagaId::new_v7();
        assert_eq!(id.to_string().parse::<SagaId>(), Ok(id));
        let err = "not-a-uuid".parse::<SagaId>().unwrap_err();
        assert!(err.to_string().contains("`not-a-uuid` is not a saga id"));
        let long = "x".repeat(500);
        assert!(
            long.parse::<SagaId>().unwrap_err().to_string().len() < 200,
            "echo is bounded"
        );
    }

    #[test]
    fn state_round_trips_through_text() {
        for s in SagaState::ALL {
            assert_eq!(s.as_str().parse::<SagaState>(), Ok(s));
            assert_eq!(
                serde_json::to_value(s).ok(),
                Some(Value::String(s.as_str().into()))
            );
        }
        assert!("done".parse::<SagaState>().is_err());
        assert!(SagaState::Failed.is_terminal() && !SagaState::Compensating.is_terminal());
    }
}
