//! What goes into [`decide`](super::decide) and what comes out: inputs, commands, child-saga
//! effects, history events, decisions and errors.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::saga::{Phase, PhaseStatus, Saga, SagaId, SagaState};

/// Something that happened to a saga, fed to [`decide`](super::decide).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "input", rename_all = "snake_case")]
pub enum Input {
    /// A participant answered a command.
    Reply(Reply),
    /// Timers: handle any deadline or retry that is due at `now`.
    Wake,
    /// Operator action: stop going forward and compensate now.
    Abort { reason: String },
    /// Operator action: a saga parked because a compensation spent its budget gets a new budget
    /// for that compensation, and compensation resumes.
    ReplayCompensation { reason: String },
    /// Operator action: send a forward step again — one whose outcome is unknown (abandoned) in a
    /// parked saga, or one waiting for its next retry. `step` must name that step if given.
    RetryStep { step: Option<usize>, reason: String },
    /// A signal a wait step declared (`SignalSaga`): its payload is checked against the wait's
    /// fields and merged into the context. `key` is the sender's idempotency key, recorded.
    Signal {
        signal: String,
        payload: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// An operator approves (the saga goes on) or rejects (it compensates) a waiting approval.
    /// `step` must name the waiting step if given (needed only when several wait at once).
    Approval {
        step: Option<usize>,
        approved: bool,
        by: String,
        reason: String,
    },
    /// A child saga this saga started ended (or was parked): the shell feeds it to the parent in
    /// the transaction that records the child's end.
    ChildEnded {
        step: usize,
        child: SagaId,
        state: SagaState,
        /// Why, when the child ended without running (its input did not fit its definition).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The parent of this saga compensates the step that started it: a running saga is aborted,
    /// a completed one compensates its steps; one already compensating or compensated needs
    /// nothing more.
    Compensate { reason: String },
}

/// Whether [`Input::ReplayCompensation`] applies to a saga. Replaying is idempotent: a saga that
/// is already compensating again, or compensated, needs nothing more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replayability {
    /// Parked on an exhausted compensation: replay sends it again.
    Replayable,
    /// Compensation is running (perhaps from an earlier replay); nothing to do.
    InProgress,
    /// Already fully compensated; nothing to do.
    AlreadyCompensated,
    /// Replay does not apply; the reason says why (and what might).
    NotReplayable(String),
}

/// Classifies a saga for compensation replay.
pub fn replayability(saga: &Saga) -> Replayability {
    let exhausted = saga.steps.iter().any(|s| {
        s.compensation
            .as_ref()
            .is_some_and(|c| c.status == PhaseStatus::Exhausted)
    });
    match saga.state {
        SagaState::Failed if exhausted => Replayability::Replayable,
        SagaState::Failed => Replayability::NotReplayable(
            "the saga is parked on its forward path, not on a compensation; use retry or abort".into(),
        ),
        SagaState::Compensating => Replayability::InProgress,
        SagaState::Compensated => Replayability::AlreadyCompensated,
        SagaState::Running => Replayability::NotReplayable(
            "the saga is running and has not failed; abort it to compensate".into(),
        ),
        SagaState::Completed => {
            Replayability::NotReplayable("the saga completed; there is nothing to compensate".into())
        }
    }
}

/// A participant's answer, as the engine sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub step: usize,
    pub phase: Phase,
    pub attempt: u32,
    pub outcome: ReplyOutcome,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReplyOutcome {
    Success {
        payload: Value,
    },
    /// Refused by a business rule; definite, nothing applied.
    BusinessFailure {
        reason: String,
    },
    /// Not processed now; nothing applied; worth retrying.
    TechnicalFailure {
        reason: String,
    },
}

/// What the shell must do to a child saga, in the transaction that records the decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum ChildEffect {
    /// Create saga `child` of type `saga_type` (its newest version) from `input`, linked to
    /// this saga's step `step`. The id is derived from the parent, the step and the attempt, so
    /// creating it twice is detectable.
    Start {
        step: usize,
        child: SagaId,
        saga_type: String,
        input: Value,
    },
    /// Compensate child `child` (feed it [`Input::Compensate`]); when it is already
    /// compensated, feed its end back at once.
    Compensate { step: usize, child: SagaId },
}

/// A message the shell must send (through the outbox) as a result of a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub step: usize,
    pub step_name: String,
    pub phase: Phase,
    pub attempt: u32,
    /// The participant's command topic.
    pub participant: String,
    pub command_type: String,
    /// The saga context at dispatch time.
    pub payload: Value,
    pub deadline: DateTime<Utc>,
}

/// An entry of the saga's history. Serialized with a `kind` tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    SagaStarted,
    CommandDispatched {
        step: usize,
        name: String,
        phase: Phase,
        attempt: u32,
        command: String,
        deadline: DateTime<Utc>,
        /// What was sent: the saga context at dispatch (the audit trail of every command).
        payload: Value,
    },
    StepSucceeded {
        step: usize,
        name: String,
        phase: Phase,
        attempt: u32,
    },
    StepRejected {
        step: usize,
        name: String,
        attempt: u32,
        reason: String,
    },
    DeadlineMissed {
        step: usize,
        name: String,
        phase: Phase,
        attempt: u32,
    },
    AttemptFailed {
        step: usize,
        name: String,
        phase: Phase,
        attempt: u32,
        reason: String,
        /// When the next attempt goes out; `None` when the policy is spent.
        retry_at: Option<DateTime<Utc>>,
    },
    StepAbandoned {
        step: usize,
        name: String,
        reason: String,
    },
    CompensationStarted {
        reason: String,
    },
    CompensationExhausted {
        step: usize,
        name: String,
        attempts: u32,
        reason: String,
    },
    SagaCompleted,
    SagaCompensated,
    SagaFailed {
        reason: String,
    },
    SagaAborted {
        reason: String,
    },
    CompensationReplayed {
        step: usize,
        name: String,
        reason: String,
    },
    StepRetried {
        step: usize,
        name: String,
        reason: String,
    },
    /// An operator replay that found nothing to do (already compensating or compensated).
    ReplaySkipped {
        reason: String,
        why: String,
    },
    ReplyIgnored {
        step: usize,
        phase: Phase,
        attempt: u32,
        reason: String,
    },
    /// The step's `when` condition was false when its stage started.
    StepSkipped {
        step: usize,
        name: String,
        condition: String,
    },
    /// A wait began: for `signal`, or for an operator's approval.
    WaitStarted {
        step: usize,
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<String>,
        approval: bool,
        deadline: DateTime<Utc>,
    },
    SignalReceived {
        step: usize,
        name: String,
        signal: String,
        payload: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    ApprovalDecided {
        step: usize,
        name: String,
        approved: bool,
        by: String,
        reason: String,
    },
    WaitTimedOut {
        step: usize,
        name: String,
        /// True when `on_timeout = "continue"`: the step is skipped and the saga goes on.
        continued: bool,
    },
    /// A wait stopped because the saga stopped going forward (another branch failed, an abort).
    WaitCancelled {
        step: usize,
        name: String,
        reason: String,
    },
    ChildStarted {
        step: usize,
        name: String,
        saga_type: String,
        child: SagaId,
    },
    ChildEnded {
        step: usize,
        name: String,
        child: SagaId,
        state: SagaState,
    },
}

impl Event {
    /// The serde tag, e.g. `"command_dispatched"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::SagaStarted => "saga_started",
            Event::CommandDispatched { .. } => "command_dispatched",
            Event::StepSucceeded { .. } => "step_succeeded",
            Event::StepRejected { .. } => "step_rejected",
            Event::DeadlineMissed { .. } => "deadline_missed",
            Event::AttemptFailed { .. } => "attempt_failed",
            Event::StepAbandoned { .. } => "step_abandoned",
            Event::CompensationStarted { .. } => "compensation_started",
            Event::CompensationExhausted { .. } => "compensation_exhausted",
            Event::SagaCompleted => "saga_completed",
            Event::SagaCompensated => "saga_compensated",
            Event::SagaFailed { .. } => "saga_failed",
            Event::SagaAborted { .. } => "saga_aborted",
            Event::CompensationReplayed { .. } => "compensation_replayed",
            Event::StepRetried { .. } => "step_retried",
            Event::ReplaySkipped { .. } => "replay_skipped",
            Event::ReplyIgnored { .. } => "reply_ignored",
            Event::StepSkipped { .. } => "step_skipped",
            Event::WaitStarted { .. } => "wait_started",
            Event::SignalReceived { .. } => "signal_received",
            Event::ApprovalDecided { .. } => "approval_decided",
            Event::WaitTimedOut { .. } => "wait_timed_out",
            Event::WaitCancelled { .. } => "wait_cancelled",
            Event::ChildStarted { .. } => "child_started",
            Event::ChildEnded { .. } => "child_ended",
        }
    }
}

/// What `decide` returns: the next saga, the commands to send and the history to append.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub saga: Saga,
    pub commands: Vec<Command>,
    /// Child sagas to start or compensate.
    pub children: Vec<ChildEffect>,
    pub events: Vec<Event>,
    /// False when the saga's state is untouched (an ignored reply, a wake with nothing due): the
    /// shell then only appends `events`.
    pub changed: bool,
}

/// The input cannot be applied; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("saga is {saga_type} v{saga_version} but the definition given is {def_name} v{def_version}")]
    DefinitionMismatch {
        saga_type: String,
        saga_version: u32,
        def_name: String,
        def_version: u32,
    },
    /// The input does not apply to the saga as it stands (a signal it is not waiting for, an
    /// operator action on a saga in the wrong state).
    #[error("{0}")]
    NotAllowed(String),
    /// The input is malformed for this saga's definition (an undeclared signal, a payload that
    /// does not match the wait's fields).
    #[error("{0}")]
    Invalid(String),
}
