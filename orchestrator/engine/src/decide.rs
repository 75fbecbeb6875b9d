//! `start` and `decide`: the whole saga state machine as pure functions of (saga, input, now).
//!
//! Rules, in one place:
//! - Steps run one at a time, in order. At most one phase of a saga is active (sent, unanswered).
//! - A reply counts only for the current attempt of the active phase; anything else is a duplicate
//!   or stale reply and is ignored (and reported as an event, so the history shows it).
//! - A technical failure or a missed deadline means "unknown", not "no": it retries with backoff
//!   until the policy's budget — time since the first attempt, and optionally a number of
//!   attempts — is spent. An action that gives up this way is *abandoned*: it may have been
//!   applied, so it is compensated like a succeeded one. A business failure is definite: nothing
//!   to undo for it.
//! - Compensation runs over the steps that owe it, highest index first, one at a time. A
//!   compensation that spends its budget parks the saga as failed.
//! - Once a pivot step (no compensation) has succeeded the saga can only go forward; a failure after
//!   it, or a pivot whose outcome is unknown, parks the saga as failed for an operator.

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::definition::{RetryPolicy, SagaDefinition};
use crate::saga::{Phase, PhaseRecord, PhaseStatus, Saga, SagaId, SagaState, StepRecord};

/// Something that happened to a saga, fed to [`decide`].
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
        }
    }
}

/// What `decide` returns: the next saga, the commands to send and the history to append.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub saga: Saga,
    pub commands: Vec<Command>,
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
    #[error("{0}")]
    NotAllowed(String),
}

/// Creates a saga from a validated context and dispatches its first step.
pub fn start(def: &SagaDefinition, id: SagaId, context: Map<String, Value>, now: DateTime<Utc>) -> Decision {
    let saga = Saga {
        id,
        saga_type: def.name.clone(),
        definition_version: def.version,
        state: SagaState::Running,
        context,
        steps: def
            .steps
            .iter()
            .map(|s| StepRecord {
                action: PhaseRecord::pending(),
                compensation: s.compensation.as_ref().map(|_| PhaseRecord::pending()),
            })
            .collect(),
        failure_reason: None,
        created_at: now,
        updated_at: now,
    };
    let mut m = Machine::new(def, saga, now);
    m.events.push(Event::SagaStarted);
    m.dispatch(0, Phase::Action);
    m.finish(true)
}

/// Applies one input to a saga. Pure: the same arguments always give the same decision.
pub fn decide(
    def: &SagaDefinition,
    saga: &Saga,
    input: &Input,
    now: DateTime<Utc>,
) -> Result<Decision, EngineError> {
    if def.name != saga.saga_type
        || def.version != saga.definition_version
        || def.steps.len() != saga.steps.len()
    {
        return Err(EngineError::DefinitionMismatch {
            saga_type: saga.saga_type.clone(),
            saga_version: saga.definition_version,
            def_name: def.name.clone(),
            def_version: def.version,
        });
    }
    let mut m = Machine::new(def, saga.clone(), now);
    match input {
        Input::Reply(reply) => m.on_reply(reply),
        Input::Wake => m.on_wake(),
        Input::Abort { reason } => m.on_abort(reason)?,
        Input::ReplayCompensation { reason } => m.on_replay(reason)?,
        Input::RetryStep { step, reason } => m.on_retry(*step, reason)?,
    }
    let changed = m.saga != *saga;
    Ok(m.finish(changed))
}

/// The working state of one decision.
struct Machine<'a> {
    def: &'a SagaDefinition,
    saga: Saga,
    now: DateTime<Utc>,
    commands: Vec<Command>,
    events: Vec<Event>,
}

impl<'a> Machine<'a> {
    fn new(def: &'a SagaDefinition, saga: Saga, now: DateTime<Utc>) -> Self {
        Self {
            def,
            saga,
            now,
            commands: Vec::new(),
            events: Vec::new(),
        }
    }

    fn finish(mut self, changed: bool) -> Decision {
        if changed {
            self.saga.updated_at = self.now;
        }
        Decision {
            saga: self.saga,
            commands: self.commands,
            events: self.events,
            changed,
        }
    }

    fn name(&self, step: usize) -> String {
        self.def.steps[step].name.clone()
    }

    /// The record of a phase the engine itself is working on (indices come from the saga, which
    /// `decide` checked against the definition).
    fn record(&mut self, step: usize, phase: Phase) -> &mut PhaseRecord {
        let rec = self.saga.steps[step].phase_mut(phase);
        // ok: the engine only names phases that exist: compensation phases are reached through
        // `owes_compensation`, which requires one.
        rec.expect("engine addressed a phase that exists")
    }

    fn policy(&self, step: usize, phase: Phase) -> &'a RetryPolicy {
        let s = &self.def.steps[step];
        match phase {
            Phase::Action => &s.retry,
            Phase::Compensation => &s.compensation_retry,
        }
    }

    // ----- inputs -----

    fn on_reply(&mut self, reply: &Reply) {
        let Some(rec) = self.saga.steps.get(reply.step).and_then(|s| s.phase(reply.phase)) else {
            return self.ignore(reply, "the saga has no such step or phase".into());
        };
        if rec.attempt != reply.attempt {
            let why = format!(
                "stale: answers attempt {}, attempt {} is current",
                reply.attempt, rec.attempt
            );
            return self.ignore(reply, why);
        }
        match (rec.status, &reply.outcome) {
            (PhaseStatus::InFlight, _) => {}
            // A late answer to an attempt whose deadline passed is still the answer to it, unless
            // it only says "try again", which the scheduled retry already does.
            (PhaseStatus::RetryScheduled, ReplyOutcome::TechnicalFailure { .. }) => {
                return self.ignore(reply, "duplicate: a retry is already scheduled".into());
            }
            (PhaseStatus::RetryScheduled, _) => {}
            (status, _) => {
                let why = format!("duplicate: the {} is already {}", reply.phase, describe(status));
                return self.ignore(reply, why);
            }
        }
        let (step, phase, attempt) = (reply.step, reply.phase, reply.attempt);
        match (&reply.outcome, phase) {
            (ReplyOutcome::Success { payload }, Phase::Action) => {
                self.succeed(step, phase, Some(payload.clone()));
                if let Value::Object(fields) = payload {
                    self.saga.context.extend(fields.clone());
                }
                if step + 1 < self.saga.steps.len() {
                    self.dispatch(step + 1, Phase::Action);
                } else {
                    self.saga.state = SagaState::Completed;
                    self.events.push(Event::SagaCompleted);
                }
            }
            (ReplyOutcome::Success { payload }, Phase::Compensation) => {
                self.succeed(step, phase, Some(payload.clone()));
                self.compensate_next();
            }
            (ReplyOutcome::BusinessFailure { reason }, Phase::Action) => {
                let now = self.now;
                let rec = self.record(step, phase);
                rec.status = PhaseStatus::Rejected;
                rec.finished_at = Some(now);
                rec.deadline = None;
                rec.retry_at = None;
                rec.last_error = Some(reason.clone());
                let name = self.name(step);
                self.events.push(Event::StepRejected {
                    step,
                    name: name.clone(),
                    attempt,
                    reason: reason.clone(),
                });
                self.forward_failed(step, format!("step `{name}` was rejected: {reason}"));
            }
            // A compensation must not be refused; treat it like a technical failure and keep trying
            // within the budget, so the operator sees the reason if it never succeeds.
            (ReplyOutcome::BusinessFailure { reason }, Phase::Compensation) => {
                self.attempt_failed(step, phase, format!("compensation refused: {reason}"));
            }
            (ReplyOutcome::TechnicalFailure { reason }, _) => {
                self.attempt_failed(step, phase, reason.clone());
            }
        }
    }

    fn on_wake(&mut self) {
        let Some((step, phase)) = self.saga.active_phase() else {
            return;
        };
        let now = self.now;
        let rec = self.record(step, phase);
        match rec.status {
            PhaseStatus::InFlight if rec.deadline.is_some_and(|d| d <= now) => {
                let attempt = rec.attempt;
                let deadline_ms = self.def.steps[step].deadline_ms;
                self.events.push(Event::DeadlineMissed {
                    step,
                    name: self.name(step),
                    phase,
                    attempt,
                });
                self.attempt_failed(
                    step,
                    phase,
                    format!("no reply within the {deadline_ms} ms deadline"),
                );
            }
            PhaseStatus::RetryScheduled if rec.retry_at.is_some_and(|r| r <= now) => {
                self.dispatch(step, phase);
            }
            _ => {}
        }
    }

    fn on_abort(&mut self, reason: &str) -> Result<(), EngineError> {
        if self.saga.state != SagaState::Running {
            return Err(EngineError::NotAllowed(format!(
                "only a running saga can be aborted; this one is {}",
                self.saga.state
            )));
        }
        if self.saga.past_pivot() {
            return Err(EngineError::NotAllowed(
                "a pivot step already succeeded, so this saga can only go forward".into(),
            ));
        }
        self.events.push(Event::SagaAborted {
            reason: reason.into(),
        });
        if let Some((step, Phase::Action)) = self.saga.active_phase() {
            self.abandon(step, "aborted by an operator while in flight".into());
        }
        self.begin_compensation(format!("aborted: {reason}"));
        Ok(())
    }

    fn on_replay(&mut self, reason: &str) -> Result<(), EngineError> {
        if let Replayability::NotReplayable(why) = replayability(&self.saga) {
            return Err(EngineError::NotAllowed(why));
        }
        let why = match replayability(&self.saga) {
            Replayability::Replayable => None,
            Replayability::InProgress => Some("compensation is already in progress"),
            _ => Some("the saga is already compensated"),
        };
        if let Some(why) = why {
            self.events.push(Event::ReplaySkipped {
                reason: reason.into(),
                why: why.into(),
            });
            return Ok(());
        }
        // Only the exhausted compensation gets a new budget; compensation resumes from it.
        let exhausted: Vec<usize> = (0..self.saga.steps.len())
            .filter(|&i| {
                self.saga.steps[i]
                    .compensation
                    .as_ref()
                    .is_some_and(|c| c.status == PhaseStatus::Exhausted)
            })
            .collect();
        let now = self.now;
        for &step in &exhausted {
            let rec = self.record(step, Phase::Compensation);
            rec.status = PhaseStatus::Pending;
            rec.budget_from = rec.attempt;
            rec.budget_started_at = Some(now);
            rec.finished_at = None;
            self.events.push(Event::CompensationReplayed {
                step,
                name: self.name(step),
                reason: reason.into(),
            });
        }
        self.saga.state = SagaState::Compensating;
        self.compensate_next();
        Ok(())
    }

    fn on_retry(&mut self, requested: Option<usize>, reason: &str) -> Result<(), EngineError> {
        let not = |m: String| Err(EngineError::NotAllowed(m));
        let step = match self.saga.state {
            // Waiting out a backoff: send the next attempt now.
            SagaState::Running => match self.saga.active_phase() {
                Some((step, Phase::Action))
                    if self.saga.steps[step].action.status == PhaseStatus::RetryScheduled =>
                {
                    step
                }
                _ => return not("the saga is running and no step is waiting to retry".into()),
            },
            SagaState::Failed => {
                let compensated = self.saga.steps.iter().any(|s| {
                    s.compensation
                        .as_ref()
                        .is_some_and(|c| !matches!(c.status, PhaseStatus::Pending))
                });
                if compensated {
                    return not(
                        "the saga is parked on a compensation; replay the compensation instead".into(),
                    );
                }
                match self
                    .saga
                    .steps
                    .iter()
                    .rposition(|s| matches!(s.action.status, PhaseStatus::Abandoned | PhaseStatus::Rejected))
                {
                    Some(step) if self.saga.steps[step].action.status == PhaseStatus::Rejected => {
                        return not(format!(
                            "step `{}` was rejected by a business rule; sending it again would be refused again",
                            self.name(step)
                        ));
                    }
                    Some(step) => step,
                    None => return not("the saga has no step to retry".into()),
                }
            }
            other => return not(format!("a {other} saga has no step to retry")),
        };
        if let Some(wanted) = requested
            && wanted != step
        {
            return not(format!(
                "step {wanted} is not the step to retry; step {step} (`{}`) is",
                self.name(step)
            ));
        }
        let now = self.now;
        let rec = self.record(step, Phase::Action);
        rec.budget_from = rec.attempt;
        rec.budget_started_at = Some(now);
        rec.last_error = None;
        self.saga.state = SagaState::Running;
        self.saga.failure_reason = None;
        self.events.push(Event::StepRetried {
            step,
            name: self.name(step),
            reason: reason.into(),
        });
        self.dispatch(step, Phase::Action);
        Ok(())
    }

    // ----- transitions -----

    fn ignore(&mut self, reply: &Reply, reason: String) {
        self.events.push(Event::ReplyIgnored {
            step: reply.step,
            phase: reply.phase,
            attempt: reply.attempt,
            reason,
        });
    }

    fn dispatch(&mut self, step: usize, phase: Phase) {
        let now = self.now;
        let step_def = &self.def.steps[step];
        let deadline = now + TimeDelta::milliseconds(step_def.deadline_ms as i64);
        let command_type = match phase {
            Phase::Action => step_def.action.clone(),
            // ok: compensation phases are only dispatched for steps that have one.
            Phase::Compensation => step_def.compensation.clone().unwrap_or_default(),
        };
        let rec = self.record(step, phase);
        rec.attempt += 1;
        rec.status = PhaseStatus::InFlight;
        rec.started_at.get_or_insert(now);
        rec.budget_started_at.get_or_insert(now);
        rec.finished_at = None;
        rec.deadline = Some(deadline);
        rec.retry_at = None;
        let attempt = rec.attempt;
        let payload = Value::Object(self.saga.context.clone());
        self.events.push(Event::CommandDispatched {
            step,
            name: step_def.name.clone(),
            phase,
            attempt,
            command: command_type.clone(),
            deadline,
            payload: payload.clone(),
        });
        self.commands.push(Command {
            step,
            step_name: step_def.name.clone(),
            phase,
            attempt,
            participant: step_def.participant.clone(),
            command_type,
            payload,
            deadline,
        });
    }

    fn succeed(&mut self, step: usize, phase: Phase, reply: Option<Value>) {
        let now = self.now;
        let rec = self.record(step, phase);
        rec.status = PhaseStatus::Succeeded;
        rec.finished_at = Some(now);
        rec.deadline = None;
        rec.retry_at = None;
        rec.reply = reply;
        let attempt = rec.attempt;
        self.events.push(Event::StepSucceeded {
            step,
            name: self.name(step),
            phase,
            attempt,
        });
    }

    /// One attempt failed without a definite refusal: retry later, or give up.
    fn attempt_failed(&mut self, step: usize, phase: Phase, reason: String) {
        let policy = self.policy(step, phase);
        let now = self.now;
        let seed = self.saga.id.seed() ^ ((step as u64) << 40) ^ ((phase as u64) << 32);
        let rec = self.record(step, phase);
        rec.last_error = Some(reason.clone());
        rec.deadline = None;
        let attempt = rec.attempt;
        let used = attempt - rec.budget_from.min(attempt);
        let budget_start = rec.budget_start().unwrap_or(now);
        let retry_at = policy.allows_retry(used, budget_start, now).then(|| {
            let wait = policy.backoff(attempt, seed ^ u64::from(attempt));
            now + TimeDelta::milliseconds(wait.as_millis() as i64)
        });
        let spent = describe_budget(used, now - budget_start);
        if let Some(at) = retry_at {
            rec.status = PhaseStatus::RetryScheduled;
            rec.retry_at = Some(at);
        }
        let name = self.name(step);
        self.events.push(Event::AttemptFailed {
            step,
            name: name.clone(),
            phase,
            attempt,
            reason: reason.clone(),
            retry_at,
        });
        if retry_at.is_some() {
            return;
        }
        match phase {
            Phase::Action => {
                let why = format!("step `{name}` gave up after {spent}: {reason}");
                self.abandon(step, why.clone());
                self.forward_failed(step, why);
            }
            Phase::Compensation => {
                let rec = self.record(step, phase);
                rec.status = PhaseStatus::Exhausted;
                rec.finished_at = Some(now);
                rec.retry_at = None;
                self.events.push(Event::CompensationExhausted {
                    step,
                    name: name.clone(),
                    attempts: used,
                    reason: reason.clone(),
                });
                self.park(format!(
                    "compensation of step `{name}` gave up after {spent} (last: {reason}); needs an operator"
                ));
            }
        }
    }

    /// Stop waiting for an action whose outcome is unknown.
    fn abandon(&mut self, step: usize, reason: String) {
        let now = self.now;
        let rec = self.record(step, Phase::Action);
        rec.status = PhaseStatus::Abandoned;
        rec.finished_at = Some(now);
        rec.deadline = None;
        rec.retry_at = None;
        self.events.push(Event::StepAbandoned {
            step,
            name: self.name(step),
            reason,
        });
    }

    /// The forward path cannot continue at `step`: compensate if that is still possible.
    fn forward_failed(&mut self, step: usize, reason: String) {
        let pivot_unknown =
            self.def.is_pivot(step) && self.saga.steps[step].action.status == PhaseStatus::Abandoned;
        if self.saga.past_pivot() {
            self.park(format!(
                "{reason}; a pivot step already succeeded, so the saga cannot be compensated"
            ));
        } else if pivot_unknown {
            self.park(format!(
                "{reason}; the outcome of this pivot step is unknown, so compensating could undo a saga that \
                 took effect"
            ));
        } else {
            self.begin_compensation(reason);
        }
    }

    fn begin_compensation(&mut self, reason: String) {
        self.saga.state = SagaState::Compensating;
        self.saga.failure_reason = Some(reason.clone());
        self.events.push(Event::CompensationStarted { reason });
        self.compensate_next();
    }

    /// Dispatch the compensation of the highest step that still owes one, or finish.
    fn compensate_next(&mut self) {
        let next = self.saga.steps.iter().rposition(|s| {
            s.owes_compensation()
                && s.compensation
                    .as_ref()
                    .is_some_and(|c| c.status != PhaseStatus::Succeeded)
        });
        match next {
            Some(step) => self.dispatch(step, Phase::Compensation),
            None => {
                self.saga.state = SagaState::Compensated;
                self.events.push(Event::SagaCompensated);
            }
        }
    }

    fn park(&mut self, reason: String) {
        self.saga.state = SagaState::Failed;
        self.saga.failure_reason = Some(reason.clone());
        self.events.push(Event::SagaFailed { reason });
    }
}

/// "3 attempts in 5 min 2 s": what a spent budget held.
fn describe_budget(attempts: u32, elapsed: TimeDelta) -> String {
    let secs = elapsed.num_seconds().max(0);
    let time = match (secs / 60, secs % 60) {
        (0, s) => format!("{s} s"),
        (m, 0) => format!("{m} min"),
        (m, s) => format!("{m} min {s} s"),
    };
    let plural = if attempts == 1 { "" } else { "s" };
    format!("{attempts} attempt{plural} in {time}")
}

fn describe(status: PhaseStatus) -> &'static str {
    match status {
        PhaseStatus::Pending => "not sent",
        PhaseStatus::InFlight => "in flight",
        PhaseStatus::RetryScheduled => "waiting to retry",
        PhaseStatus::Succeeded => "succeeded",
        PhaseStatus::Rejected => "rejected",
        PhaseStatus::Abandoned => "abandoned",
        PhaseStatus::Exhausted => "exhausted",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::StepDefinition;
    use serde_json::json;

    fn step(name: &str, compensation: Option<&str>, attempts: u32) -> StepDefinition {
        StepDefinition {
            name: name.into(),
            participant: format!("{name}.commands"),
            action: format!("Do{name}"),
            compensation: compensation.map(Into::into),
            deadline_ms: 1_000,
            retry: RetryPolicy {
                give_up_after_ms: None,
                max_attempts: Some(attempts),
                initial_backoff_ms: 100,
                max_backoff_ms: 100,
                multiplier: 1.0,
                jitter: 0.0,
            },
            compensation_retry: RetryPolicy {
                give_up_after_ms: None,
                max_attempts: Some(2),
                initial_backoff_ms: 100,
                max_backoff_ms: 100,
                multiplier: 1.0,
                jitter: 0.0,
            },
        }
    }

    /// a, b, c compensable; d a pivot; e after the pivot.
    fn def() -> SagaDefinition {
        SagaDefinition {
            name: "demo".into(),
            version: 1,
            description: String::new(),
            input: vec![],
            generated_ids: vec![],
            steps: vec![
                step("a", Some("UndoA"), 2),
                step("b", Some("UndoB"), 2),
                step("c", Some("UndoC"), 2),
                step("d", None, 2),
                step("e", Some("UndoE"), 2),
            ],
        }
    }

    struct Run {
        def: SagaDefinition,
        saga: Saga,
        now: DateTime<Utc>,
        last: Decision,
    }

    impl Run {
        fn start() -> Self {
            Self::with(def())
        }

        fn with(def: SagaDefinition) -> Self {
            let now = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).expect("valid time");
            let last = start(&def, SagaId::new_v7(), Map::new(), now);
            Run {
                saga: last.saga.clone(),
                def,
                now,
                last,
            }
        }

        fn feed(&mut self, input: Input) -> &Decision {
            self.last = decide(&self.def, &self.saga, &input, self.now).expect("decides");
            self.saga = self.last.saga.clone();
            &self.last
        }

        fn reply(&mut self, step: usize, phase: Phase, attempt: u32, outcome: ReplyOutcome) -> &Decision {
            self.feed(Input::Reply(Reply {
                step,
                phase,
                attempt,
                outcome,
            }))
        }

        fn ok(&mut self, step: usize, phase: Phase) -> &Decision {
            let attempt = self.saga.steps[step].phase(phase).map_or(0, |p| p.attempt);
            self.reply(step, phase, attempt, ReplyOutcome::Success { payload: json!({}) })
        }

        /// Answers the actions of `steps` with success, one after the other.
        fn ok_actions(&mut self, steps: std::ops::Range<usize>) {
            for s in steps {
                self.ok(s, Phase::Action);
            }
        }

        fn advance(&mut self, ms: i64) -> &Decision {
            self.now += TimeDelta::milliseconds(ms);
            self.feed(Input::Wake)
        }

        /// Both attempts the test definition allows miss their 1 s deadline, with the 100 ms
        /// backoff between them: the active phase's budget is spent.
        fn miss_both_attempts(&mut self) {
            self.advance(1_000);
            self.advance(100);
            self.advance(1_000);
        }

        fn failure(&self) -> &str {
            self.saga.failure_reason.as_deref().unwrap_or_default()
        }

        fn sent(&self) -> Vec<(usize, Phase, u32)> {
            self.last
                .commands
                .iter()
                .map(|c| (c.step, c.phase, c.attempt))
                .collect()
        }

        fn kinds(&self) -> Vec<&'static str> {
            self.last.events.iter().map(Event::kind).collect()
        }
    }

    fn business(reason: &str) -> ReplyOutcome {
        ReplyOutcome::BusinessFailure {
            reason: reason.into(),
        }
    }

    fn technical(reason: &str) -> ReplyOutcome {
        ReplyOutcome::TechnicalFailure {
            reason: reason.into(),
        }
    }

    #[test]
    fn happy_path_completes_and_merges_replies_into_the_context() {
        let mut r = Run::start();
        assert_eq!(r.sent(), vec![(0, Phase::Action, 1)]);
        assert_eq!(r.last.commands[0].command_type, "Doa");
        assert_eq!(r.last.commands[0].participant, "a.commands");
        r.reply(
            0,
            Phase::Action,
            1,
            ReplyOutcome::Success {
                payload: json!({"user_id": "u1"}),
            },
        );
        assert_eq!(r.sent(), vec![(1, Phase::Action, 1)]);
        assert_eq!(
            r.last.commands[0].payload,
            json!({"user_id": "u1"}),
            "later steps see earlier replies"
        );
        r.ok_actions(1..5);
        assert_eq!(r.saga.state, SagaState::Completed);
        assert_eq!(r.kinds(), vec!["step_succeeded", "saga_completed"]);
        assert_eq!(r.saga.wake_at(), None);
        assert_eq!(r.saga.current_step(), None);
    }

    #[test]
    fn business_failure_compensates_completed_steps_in_reverse_order() {
        let mut r = Run::start();
        r.ok(0, Phase::Action);
        r.ok(1, Phase::Action);
        r.reply(2, Phase::Action, 1, business("invalid title"));
        assert_eq!(r.saga.state, SagaState::Compensating);
        assert_eq!(
            r.sent(),
            vec![(1, Phase::Compensation, 1)],
            "the rejected step itself is not undone"
        );
        assert_eq!(r.last.commands[0].command_type, "UndoB");
        assert_eq!(
            r.saga.failure_reason.as_deref(),
            Some("step `c` was rejected: invalid title")
        );
        r.ok(1, Phase::Compensation);
        assert_eq!(r.sent(), vec![(0, Phase::Compensation, 1)]);
        r.ok(0, Phase::Compensation);
        assert_eq!(r.saga.state, SagaState::Compensated);
        assert!(r.last.commands.is_empty());
    }

    #[test]
    fn rejection_of_the_first_step_compensates_nothing() {
        let mut r = Run::start();
        r.reply(0, Phase::Action, 1, business("duplicate e-mail"));
        assert_eq!(r.saga.state, SagaState::Compensated);
        assert!(r.last.commands.is_empty());
    }

    #[test]
    fn duplicate_and_stale_replies_change_nothing() {
        let mut r = Run::start();
        r.ok(0, Phase::Action);
        let before = r.saga.clone();
        let d = r
            .reply(
                0,
                Phase::Action,
                1,
                ReplyOutcome::Success {
                    payload: json!({"x": 1}),
                },
            )
            .clone();
        assert!(!d.changed && d.commands.is_empty());
        assert_eq!(r.saga, before);
        assert!(
            matches!(&d.events[..], [Event::ReplyIgnored { reason, .. }] if reason.starts_with("duplicate"))
        );

        // Attempt 1 of step b misses its deadline; attempt 2 goes out after the backoff.
        r.advance(1_000);
        assert_eq!(r.kinds(), vec!["deadline_missed", "attempt_failed"]);
        r.advance(100);
        assert_eq!(r.sent(), vec![(1, Phase::Action, 2)]);
        let d = r.reply(1, Phase::Action, 1, business("late refusal")).clone();
        assert!(!d.changed);
        assert!(matches!(&d.events[..], [Event::ReplyIgnored { reason, .. }] if reason.starts_with("stale")));
        let d = r.reply(7, Phase::Action, 1, business("x")).clone();
        assert!(!d.changed, "unknown step is ignored");
        let d = r.reply(3, Phase::Compensation, 0, business("x")).clone();
        assert!(!d.changed, "a pivot has no compensation to answer for");
    }

    #[test]
    fn late_answer_while_waiting_to_retry_is_accepted() {
        let mut r = Run::start();
        r.advance(1_000);
        assert_eq!(r.saga.steps[0].action.status, PhaseStatus::RetryScheduled);
        r.reply(0, Phase::Action, 1, technical("db down"));
        assert!(
            !r.last.changed,
            "a technical failure adds nothing to a scheduled retry"
        );
        r.ok(0, Phase::Action);
        assert_eq!(r.sent(), vec![(1, Phase::Action, 1)]);
        assert_eq!(r.saga.steps[0].action.attempt, 1);
    }

    #[test]
    fn wake_before_anything_is_due_is_a_no_op() {
        let mut r = Run::start();
        let d = r.advance(999).clone();
        assert!(!d.changed && d.events.is_empty());
        assert_eq!(r.saga.wake_at(), Some(r.now + TimeDelta::milliseconds(1)));
    }

    #[test]
    fn spent_retries_abandon_the_step_and_compensate_it_too() {
        let mut r = Run::start();
        r.ok(0, Phase::Action);
        r.reply(1, Phase::Action, 1, technical("timeout talking to db"));
        assert_eq!(r.saga.steps[1].action.status, PhaseStatus::RetryScheduled);
        r.advance(100);
        assert_eq!(r.sent(), vec![(1, Phase::Action, 2)]);
        r.advance(1_000);
        assert_eq!(r.saga.steps[1].action.status, PhaseStatus::Abandoned);
        assert_eq!(
            r.sent(),
            vec![(1, Phase::Compensation, 1)],
            "an unknown outcome is undone"
        );
        r.ok(1, Phase::Compensation);
        r.ok(0, Phase::Compensation);
        assert_eq!(r.saga.state, SagaState::Compensated);
        assert!(
            r.failure().contains("gave up after 2 attempts"),
            "{}",
            r.failure()
        );
    }

    #[test]
    fn a_time_budget_keeps_retrying_until_it_is_spent_however_many_attempts_that_takes() {
        let mut d = def();
        d.steps[1].retry = RetryPolicy {
            give_up_after_ms: Some(30_000),
            max_attempts: None,
            ..d.steps[1].retry.clone()
        };
        let mut r = Run::with(d);
        r.ok(0, Phase::Action);
        let started = r.now;
        // Every attempt misses its 1 s deadline (a participant restarting, a rebalance…).
        let mut attempts = 1;
        while r.saga.steps[1].action.status != PhaseStatus::Abandoned {
            r.advance(1_000); // the deadline passes
            if r.saga.steps[1].action.status == PhaseStatus::RetryScheduled {
                r.advance(100); // the backoff passes: the next attempt goes out
                attempts += 1;
            }
            assert!(attempts < 100, "the budget never ran out");
        }
        assert!(attempts > 10, "far more than a count of 3: {attempts}");
        assert!(r.now - started >= TimeDelta::seconds(30));
        assert!(r.now - started < TimeDelta::seconds(32), "not much longer either");
        let reason = r.saga.failure_reason.clone().unwrap_or_default();
        assert!(
            reason.contains(&format!("gave up after {attempts} attempts in 30 s")),
            "{reason}"
        );
        // An answer inside the budget would have completed the step: the same run, answered late.
        let mut late = def();
        late.steps[1].retry.give_up_after_ms = Some(30_000);
        late.steps[1].retry.max_attempts = None;
        let mut r = Run::with(late);
        r.ok(0, Phase::Action);
        for _ in 0..10 {
            r.advance(1_000);
            r.advance(100);
        }
        assert_eq!(r.saga.state, SagaState::Running);
        r.ok(1, Phase::Action);
        assert_eq!(r.saga.steps[1].action.status, PhaseStatus::Succeeded);
    }

    #[test]
    fn exhausted_compensation_parks_the_saga() {
        let mut r = Run::start();
        r.ok(0, Phase::Action);
        r.reply(1, Phase::Action, 1, business("no"));
        r.reply(0, Phase::Compensation, 1, technical("user-service down"));
        r.advance(100);
        assert_eq!(r.sent(), vec![(0, Phase::Compensation, 2)]);
        r.advance(1_000);
        assert_eq!(r.saga.state, SagaState::Failed);
        assert_eq!(
            r.saga.steps[0].compensation.as_ref().map(|c| c.status),
            Some(PhaseStatus::Exhausted)
        );
        assert_eq!(
            r.kinds(),
            vec![
                "deadline_missed",
                "attempt_failed",
                "compensation_exhausted",
                "saga_failed"
            ]
        );
        assert_eq!(r.saga.wake_at(), None, "parked sagas need no timer");
        assert_eq!(r.saga.current_step(), Some(0));
    }

    #[test]
    fn pivot_rejection_compensates_but_unknown_pivot_outcome_parks() {
        let mut r = Run::start();
        r.ok_actions(0..3);
        r.reply(3, Phase::Action, 1, business("no"));
        assert_eq!(r.sent(), vec![(2, Phase::Compensation, 1)]);

        let mut r = Run::start();
        r.ok_actions(0..3);
        r.miss_both_attempts();
        assert_eq!(r.saga.state, SagaState::Failed);
        assert!(r.last.commands.is_empty());
        assert!(r.failure().contains("pivot"), "{}", r.failure());
    }

    #[test]
    fn failure_after_a_completed_pivot_parks_and_never_compensates() {
        let mut r = Run::start();
        r.ok_actions(0..4);
        r.reply(4, Phase::Action, 1, business("no"));
        assert_eq!(r.saga.state, SagaState::Failed);
        assert!(r.last.commands.is_empty());
        let aborted = decide(&r.def, &r.saga, &Input::Abort { reason: "x".into() }, r.now);
        assert!(matches!(aborted, Err(EngineError::NotAllowed(_))));
    }

    #[test]
    fn abort_abandons_the_in_flight_step_and_compensates() {
        let mut r = Run::start();
        r.ok(0, Phase::Action);
        r.feed(Input::Abort {
            reason: "customer asked".into(),
        });
        assert_eq!(r.saga.state, SagaState::Compensating);
        assert_eq!(r.saga.steps[1].action.status, PhaseStatus::Abandoned);
        assert_eq!(r.sent(), vec![(1, Phase::Compensation, 1)]);
        let late = r
            .reply(1, Phase::Action, 1, ReplyOutcome::Success { payload: json!({}) })
            .clone();
        assert!(!late.changed, "the abandoned action's late reply is ignored");
        r.ok(1, Phase::Compensation);
        r.ok(0, Phase::Compensation);
        assert_eq!(r.saga.state, SagaState::Compensated);
        assert_eq!(r.saga.failure_reason.as_deref(), Some("aborted: customer asked"));
        let again = decide(&r.def, &r.saga, &Input::Abort { reason: "x".into() }, r.now);
        assert!(matches!(again, Err(EngineError::NotAllowed(m)) if m.contains("compensated")));
    }

    fn replay(r: &mut Run) -> Result<Decision, EngineError> {
        let d = decide(
            &r.def,
            &r.saga,
            &Input::ReplayCompensation {
                reason: "participant is back".into(),
            },
            r.now,
        )?;
        r.saga = d.saga.clone();
        r.last = d.clone();
        Ok(d)
    }

    #[test]
    fn replay_gives_an_exhausted_compensation_a_new_budget() {
        let mut r = Run::start();
        r.ok(0, Phase::Action);
        r.ok(1, Phase::Action);
        r.reply(2, Phase::Action, 1, business("no"));
        r.ok(1, Phase::Compensation);
        r.reply(0, Phase::Compensation, 1, technical("down"));
        r.advance(100);
        r.advance(1_000); // attempt 2 of 2 misses its deadline
        assert_eq!(r.saga.state, SagaState::Failed);
        assert_eq!(replayability(&r.saga), Replayability::Replayable);

        let d = replay(&mut r).expect("replayable");
        assert_eq!(r.saga.state, SagaState::Compensating);
        assert_eq!(
            r.sent(),
            vec![(0, Phase::Compensation, 3)],
            "only the exhausted compensation, a new attempt"
        );
        assert!(
            matches!(&d.events[0], Event::CompensationReplayed { step: 0, reason, .. } if reason == "participant is back")
        );
        assert_eq!(replayability(&r.saga), Replayability::InProgress);
        let again = replay(&mut r).expect("idempotent");
        assert!(
            !again.changed && again.commands.is_empty(),
            "a second replay while in flight sends nothing"
        );
        assert!(
            matches!(&again.events[..], [Event::ReplaySkipped { why, .. }] if why.contains("in progress"))
        );

        // The new budget allows retries again instead of parking at once.
        r.reply(0, Phase::Compensation, 3, technical("still flaky"));
        assert_eq!(
            r.saga.steps[0].compensation.as_ref().map(|c| c.status),
            Some(PhaseStatus::RetryScheduled)
        );
        r.advance(100);
        r.ok(0, Phase::Compensation);
        assert_eq!(r.saga.state, SagaState::Compensated);
        assert_eq!(replayability(&r.saga), Replayability::AlreadyCompensated);
        assert!(!replay(&mut r).expect("idempotent").changed);
    }

    #[test]
    fn replay_refuses_sagas_that_are_not_parked_on_a_compensation() {
        let mut r = Run::start();
        assert!(matches!(replay(&mut r), Err(EngineError::NotAllowed(m)) if m.contains("running")));
        r.ok_actions(0..5);
        assert!(matches!(replay(&mut r), Err(EngineError::NotAllowed(m)) if m.contains("completed")));
    }

    #[test]
    fn retry_step_resends_a_pivot_with_unknown_outcome() {
        let mut r = Run::start();
        r.ok_actions(0..3);
        r.miss_both_attempts();
        assert_eq!(r.saga.state, SagaState::Failed, "pivot outcome unknown: parked");
        assert_eq!(
            replayability(&r.saga),
            Replayability::NotReplayable(
                "the saga is parked on its forward path, not on a compensation; use retry or abort".into()
            )
        );
        let retry = |step| Input::RetryStep {
            step,
            reason: "confirmed with the user service".into(),
        };
        let wrong = decide(&r.def, &r.saga, &retry(Some(1)), r.now);
        assert!(matches!(wrong, Err(EngineError::NotAllowed(m)) if m.contains("step 3 (`d`) is")));
        r.feed(retry(Some(3)));
        assert_eq!(r.saga.state, SagaState::Running);
        assert_eq!(r.saga.failure_reason, None);
        assert_eq!(r.sent(), vec![(3, Phase::Action, 3)]);
        r.reply(3, Phase::Action, 3, technical("blip"));
        assert_eq!(
            r.saga.steps[3].action.status,
            PhaseStatus::RetryScheduled,
            "a fresh budget"
        );
        r.feed(retry(None)); // skip the backoff
        assert_eq!(r.sent(), vec![(3, Phase::Action, 4)]);
        r.ok(3, Phase::Action);
        r.ok(4, Phase::Action);
        assert_eq!(r.saga.state, SagaState::Completed);
    }

    #[test]
    fn retry_step_refuses_what_a_retry_cannot_fix() {
        let mut r = Run::start();
        r.ok_actions(0..4);
        r.reply(4, Phase::Action, 1, business("rule"));
        assert_eq!(r.saga.state, SagaState::Failed);
        let retry = Input::RetryStep {
            step: None,
            reason: "x".into(),
        };
        let e = decide(&r.def, &r.saga, &retry, r.now);
        assert!(matches!(e, Err(EngineError::NotAllowed(m)) if m.contains("rejected by a business rule")));

        let mut r = Run::start();
        let e = decide(&r.def, &r.saga, &retry, r.now);
        assert!(matches!(e, Err(EngineError::NotAllowed(m)) if m.contains("no step is waiting")));
        r.reply(0, Phase::Action, 1, business("rule"));
        let e = decide(&r.def, &r.saga, &retry, r.now);
        assert!(matches!(e, Err(EngineError::NotAllowed(m)) if m.contains("compensated saga")));
    }

    #[test]
    fn a_mismatched_definition_is_refused() {
        let r = Run::start();
        let mut other = def();
        other.version = 2;
        let e = decide(&other, &r.saga, &Input::Wake, r.now).unwrap_err();
        assert!(e.to_string().contains("demo v1"));
    }

    #[test]
    fn events_serialize_with_a_kind_tag() {
        let e = Event::SagaFailed { reason: "x".into() };
        assert_eq!(
            serde_json::to_value(&e).ok(),
            Some(json!({"kind": "saga_failed", "reason": "x"}))
        );
        let saga = Run::start().saga;
        let text = serde_json::to_string(&saga.steps).expect("serializes");
        let back: Vec<StepRecord> = serde_json::from_str(&text).expect("deserializes");
        assert_eq!(back, saga.steps);
    }
}
