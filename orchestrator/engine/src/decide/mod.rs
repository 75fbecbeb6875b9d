//! `start` and `decide`: the whole saga state machine as pure functions of (saga, input, now).
//!
//! Rules, in one place:
//! - The steps form stages: a single step, or the consecutive steps of a parallel group. A stage
//!   starts when the one before it has ended: each of its steps whose `when` condition holds
//!   starts at once, the others are skipped. The saga completes when the last stage has ended.
//! - A reply counts only for the current attempt of an active action or compensation; anything
//!   else is a duplicate or stale reply and is ignored (and reported as an event).
//! - A technical failure or a missed deadline means "unknown", not "no": it retries with backoff
//!   until the policy's budget is spent. An action that gives up this way is *abandoned*: it may
//!   have been applied, so it is compensated like a succeeded one. A business failure is
//!   definite: nothing to undo for it.
//! - When the forward path fails (a refusal, an abandoned action, a rejected approval, a wait's
//!   timeout, a child saga that compensated), no further step starts: branches waiting to retry
//!   are abandoned, waits and children are stopped, and the actions still in flight are awaited,
//!   each to its own deadline. Then the steps that owe it are compensated one at a time, in
//!   reverse order of completion. A compensation that spends its budget parks the saga.
//! - Once a pivot step has succeeded the saga can only go forward; a failure after it, or a pivot
//!   whose outcome is unknown, parks the saga for an operator (after in-flight branches ended).
//!
//! Layout: [`types`] (inputs and outputs), this file (the machine and the transitions every input
//! shares), one file per kind of input: `reply.rs`, `wake.rs`, `signal.rs`, `operator.rs`.

mod operator;
mod reply;
mod signal;
mod types;
mod wake;

#[cfg(test)]
mod tests;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Map, Value};

pub use types::{
    ChildEffect, Command, Decision, EngineError, Event, Input, Replayability, Reply, ReplyOutcome,
    replayability,
};

use crate::condition;
use crate::definition::{RetryPolicy, SagaDefinition, StepKind};
use crate::saga::{Phase, PhaseRecord, PhaseStatus, Saga, SagaId, SagaState, StepRecord};

/// Creates a saga from a validated context and starts its first stage.
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
                compensation: s.is_compensable().then(PhaseRecord::pending),
                completion: None,
                child: None,
            })
            .collect(),
        failure_reason: None,
        parent: None,
        created_at: now,
        updated_at: now,
    };
    let mut m = Machine::new(def, saga, now);
    m.events.push(Event::SagaStarted);
    m.advance();
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
        Input::Signal { signal, payload, key } => m.on_signal(signal, payload, key.as_deref())?,
        Input::Approval {
            step,
            approved,
            by,
            reason,
        } => m.on_approval(*step, *approved, by, reason)?,
        Input::ChildEnded {
            step,
            child,
            state,
            reason,
        } => m.on_child_ended(*step, *child, *state, reason.as_deref()),
        Input::Compensate { reason } => m.on_compensate(reason)?,
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
    children: Vec<ChildEffect>,
    events: Vec<Event>,
}

impl<'a> Machine<'a> {
    fn new(def: &'a SagaDefinition, saga: Saga, now: DateTime<Utc>) -> Self {
        Self {
            def,
            saga,
            now,
            commands: Vec::new(),
            children: Vec::new(),
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
            children: self.children,
            events: self.events,
            changed,
        }
    }

    fn name(&self, step: usize) -> String {
        self.def.steps[step].name.clone()
    }

    fn kind(&self, step: usize) -> StepKind<'a> {
        self.def.steps[step].kind()
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

    /// True when some pivot step has succeeded, after which the saga can only go forward.
    fn past_pivot(&self) -> bool {
        self.saga
            .steps
            .iter()
            .enumerate()
            .any(|(i, s)| self.def.is_pivot(i) && s.action.status == PhaseStatus::Succeeded)
    }

    /// The forward path has failed and the saga is winding down: compensating, or (past a pivot)
    /// still running only until its in-flight branches have answered, then parked.
    fn failing(&self) -> bool {
        match self.saga.state {
            SagaState::Compensating => true,
            SagaState::Running => self.saga.failure_reason.is_some(),
            _ => false,
        }
    }

    /// A participant action is sent and unanswered (a branch the saga must await).
    fn awaiting_actions(&self) -> bool {
        self.saga
            .steps
            .iter()
            .any(|s| s.action.status == PhaseStatus::InFlight)
    }

    // ----- going forward -----

    /// Starts the next stage once the current one has ended; completes the saga after the last.
    fn advance(&mut self) {
        if self.saga.state != SagaState::Running || self.failing() {
            return;
        }
        for stage in self.def.stages() {
            if self.saga.steps[stage.clone()]
                .iter()
                .all(|s| s.action.status.is_done_forward())
            {
                continue;
            }
            let pending: Vec<usize> = stage
                .clone()
                .filter(|&i| self.saga.steps[i].action.status == PhaseStatus::Pending)
                .collect();
            if pending.is_empty() {
                return; // the stage is under way: wait for its steps
            }
            // Decide the whole stage before starting any of it, so that a condition that cannot
            // be evaluated starts nothing.
            let mut plan = Vec::with_capacity(pending.len());
            for &i in &pending {
                match self.plan_step(i) {
                    Ok(p) => plan.push((i, p)),
                    Err(reason) => {
                        let name = self.name(i);
                        self.reject(i, reason.clone());
                        self.forward_failed(i, format!("step `{name}` could not start: {reason}"));
                        return;
                    }
                }
            }
            for (i, p) in plan {
                match p {
                    Plan::Skip(condition) => self.skip(i, condition),
                    Plan::Run(input) => self.start_step(i, input),
                }
            }
            if self.saga.steps[stage]
                .iter()
                .any(|s| !s.action.status.is_done_forward())
            {
                return;
            }
        }
        self.saga.state = SagaState::Completed;
        self.events.push(Event::SagaCompleted);
    }

    /// Whether a pending step runs, from its condition; a child's input is evaluated here too.
    fn plan_step(&self, step: usize) -> Result<Plan, String> {
        let def = &self.def.steps[step];
        if let Some(when) = &def.when
            && !condition::holds(when, &self.saga.context)?
        {
            return Ok(Plan::Skip(when.clone()));
        }
        let input = match def.kind() {
            StepKind::Child(child) => {
                let mut input = Map::new();
                for (field, expr) in &child.input {
                    input.insert(field.clone(), condition::value(expr, &self.saga.context)?);
                }
                Some(Value::Object(input))
            }
            _ => None,
        };
        Ok(Plan::Run(input))
    }

    fn skip(&mut self, step: usize, condition: String) {
        let now = self.now;
        let rec = self.record(step, Phase::Action);
        rec.status = PhaseStatus::Skipped;
        rec.finished_at = Some(now);
        self.events.push(Event::StepSkipped {
            step,
            name: self.name(step),
            condition,
        });
    }

    /// Starts a step of any kind (`input` is a child's evaluated input).
    fn start_step(&mut self, step: usize, input: Option<Value>) {
        match self.kind(step) {
            StepKind::Participant => self.dispatch(step, Phase::Action),
            StepKind::Wait(wait) => {
                let now = self.now;
                let deadline = now + TimeDelta::milliseconds(wait.timeout_ms as i64);
                self.record(step, Phase::Action)
                    .begin_attempt(now, Some(deadline));
                self.events.push(Event::WaitStarted {
                    step,
                    name: self.name(step),
                    signal: wait.signal.clone(),
                    approval: wait.approval,
                    deadline,
                });
            }
            StepKind::Child(child) => {
                let now = self.now;
                let attempt = self.record(step, Phase::Action).begin_attempt(now, None);
                let id = child_id(self.saga.id, step, attempt, now);
                self.saga.steps[step].child = Some(id);
                self.events.push(Event::ChildStarted {
                    step,
                    name: self.name(step),
                    saga_type: child.saga.clone(),
                    child: id,
                });
                self.children.push(ChildEffect::Start {
                    step,
                    child: id,
                    saga_type: child.saga.clone(),
                    input: input.unwrap_or_else(|| Value::Object(Map::new())),
                });
            }
        }
    }

    /// Sends an attempt of a participant step's action or compensation, or of a child step's
    /// compensation.
    fn dispatch(&mut self, step: usize, phase: Phase) {
        let now = self.now;
        let step_def = &self.def.steps[step];
        if let (StepKind::Child(_), Phase::Compensation) = (step_def.kind(), phase) {
            self.record(step, phase).begin_attempt(now, None);
            if let Some(child) = self.saga.steps[step].child {
                self.children.push(ChildEffect::Compensate { step, child });
            }
            return;
        }
        let deadline = now + TimeDelta::milliseconds(step_def.deadline_ms as i64);
        let command_type = match phase {
            Phase::Action => step_def.action.clone(),
            // ok: compensation phases are only dispatched for steps that have one.
            Phase::Compensation => step_def.compensation.clone().unwrap_or_default(),
        };
        let attempt = self.record(step, phase).begin_attempt(now, Some(deadline));
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

    // ----- how phases end -----

    /// The next completion rank: one above the highest given so far.
    fn next_completion(&self) -> u32 {
        self.saga
            .steps
            .iter()
            .filter_map(|s| s.completion)
            .max()
            .unwrap_or(0)
            + 1
    }

    fn succeed(&mut self, step: usize, phase: Phase, reply: Option<Value>) {
        let now = self.now;
        let rank = self.next_completion();
        if phase == Phase::Action {
            self.saga.steps[step].completion = Some(rank);
        }
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

    /// The action succeeded: merge its reply and go on (or keep winding down).
    fn action_succeeded(&mut self, step: usize, payload: Value) {
        self.succeed(step, Phase::Action, Some(payload.clone()));
        if let Value::Object(fields) = payload {
            self.saga.context.extend(fields);
        }
        self.after_branch_ended();
    }

    /// After a branch ended well: the stage may be complete, or the saga may be done winding down.
    fn after_branch_ended(&mut self) {
        if self.failing() {
            self.wind_down();
        } else {
            self.advance();
        }
    }

    /// The step's action ended definitely without effect (a refusal, a rejected approval, a
    /// wait's timeout, a condition that could not be evaluated).
    fn reject(&mut self, step: usize, reason: String) {
        let now = self.now;
        let rec = self.record(step, Phase::Action);
        rec.status = PhaseStatus::Rejected;
        rec.finished_at = Some(now);
        rec.deadline = None;
        rec.retry_at = None;
        rec.last_error = Some(reason.clone());
        let attempt = rec.attempt;
        self.events.push(Event::StepRejected {
            step,
            name: self.name(step),
            attempt,
            reason,
        });
    }

    /// One attempt failed without a definite refusal: retry later, or give up.
    fn attempt_failed(&mut self, step: usize, phase: Phase, reason: String) {
        let policy = self.policy(step, phase);
        let now = self.now;
        let winding_down = phase == Phase::Action && self.failing();
        let seed = self.saga.id.seed() ^ ((step as u64) << 40) ^ ((phase as u64) << 32);
        let rec = self.record(step, phase);
        rec.last_error = Some(reason.clone());
        rec.deadline = None;
        let attempt = rec.attempt;
        let used = attempt - rec.budget_from.min(attempt);
        let budget_start = rec.budget_start().unwrap_or(now);
        // No forward retry once the saga stopped going forward.
        let retry_at = (!winding_down && policy.allows_retry(used, budget_start, now)).then(|| {
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
            Phase::Action if winding_down => {
                self.abandon(step, format!("the saga stopped going forward; last: {reason}"));
                self.wind_down();
            }
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

    /// Stop waiting for an action whose outcome is unknown (or stop a wait or a child).
    fn abandon(&mut self, step: usize, reason: String) {
        let now = self.now;
        let rank = self.next_completion();
        self.saga.steps[step].completion = Some(rank);
        let rec = self.record(step, Phase::Action);
        rec.status = PhaseStatus::Abandoned;
        rec.finished_at = Some(now);
        rec.deadline = None;
        rec.retry_at = None;
        if let StepKind::Wait(_) = self.kind(step) {
            self.events.push(Event::WaitCancelled {
                step,
                name: self.name(step),
                reason,
            });
        } else {
            self.events.push(Event::StepAbandoned {
                step,
                name: self.name(step),
                reason,
            });
        }
    }

    /// Stops every branch that has not answered and is not in flight: those waiting to retry,
    /// waits, children. Participant actions in flight are left to answer.
    fn stop_forward(&mut self, reason: &str) {
        for i in 0..self.saga.steps.len() {
            let status = self.saga.steps[i].action.status;
            let stop = match self.kind(i) {
                StepKind::Participant => status == PhaseStatus::RetryScheduled,
                StepKind::Wait(_) | StepKind::Child(_) => status.is_active(),
            };
            if stop {
                self.abandon(i, reason.to_string());
            }
        }
    }

    /// The forward path cannot continue at `step`: stop the other branches, then compensate if
    /// that is still possible, or park.
    fn forward_failed(&mut self, step: usize, reason: String) {
        let pivot_unknown =
            self.def.is_pivot(step) && self.saga.steps[step].action.status == PhaseStatus::Abandoned;
        let reason = if self.past_pivot() {
            format!("{reason}; a pivot step already succeeded, so the saga cannot be compensated")
        } else if pivot_unknown {
            format!(
                "{reason}; the outcome of this pivot step is unknown, so compensating could undo a saga that \
                 took effect"
            )
        } else {
            self.saga.state = SagaState::Compensating;
            self.events.push(Event::CompensationStarted {
                reason: reason.clone(),
            });
            reason
        };
        self.saga.failure_reason = Some(reason.clone());
        self.stop_forward(&format!("the saga stopped going forward: {reason}"));
        self.wind_down();
    }

    /// Once no branch is in flight: compensate, or park.
    fn wind_down(&mut self) {
        if self.awaiting_actions() {
            return;
        }
        match self.saga.state {
            SagaState::Compensating => self.compensate_next(),
            SagaState::Running => {
                let reason = self.saga.failure_reason.clone().unwrap_or_default();
                self.park(reason);
            }
            _ => {}
        }
    }

    /// Dispatch the compensation of the step that completed last among those still owing one,
    /// or finish. Waits while a forward action is still in flight.
    fn compensate_next(&mut self) {
        if self.awaiting_actions() {
            return;
        }
        let next = self
            .saga
            .steps
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.owes_compensation()
                    && s.compensation
                        .as_ref()
                        .is_some_and(|c| c.status != PhaseStatus::Succeeded)
            })
            .max_by_key(|(i, s)| s.compensation_key(*i))
            .map(|(i, _)| i);
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

/// What starting a pending step comes to.
enum Plan {
    /// Its condition is false (the condition's text).
    Skip(String),
    /// It runs (with a child's evaluated input).
    Run(Option<Value>),
}

/// The id of the child a step's attempt starts: a UUIDv7 of the decision's time (so, like every
/// saga id, it sorts by creation time: lists, time filters and the audit's windows take saga
/// ids as time) whose other bits are derived from the parent's id, the step and the attempt — the
/// decision stays a pure function of its inputs.
fn child_id(parent: SagaId, step: usize, attempt: u32, now: DateTime<Utc>) -> SagaId {
    let name = format!("child/{step}/{attempt}");
    let derived = uuid::Uuid::new_v5(&parent.as_uuid(), name.as_bytes());
    let mut bits = [0u8; 10];
    bits.copy_from_slice(&derived.as_bytes()[..10]);
    let millis = u64::try_from(now.timestamp_millis()).unwrap_or(0);
    SagaId::from_uuid(uuid::Builder::from_unix_timestamp_millis(millis, &bits).into_uuid())
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
        PhaseStatus::Skipped => "skipped",
        PhaseStatus::Rejected => "rejected",
        PhaseStatus::Abandoned => "abandoned",
        PhaseStatus::Exhausted => "exhausted",
    }
}
