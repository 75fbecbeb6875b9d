//! A participant's reply, and a child saga's end.

use serde_json::{Value, json};

use super::{Event, Machine, Reply, ReplyOutcome, describe};
use crate::definition::StepKind;
use crate::saga::{Phase, PhaseStatus, SagaId, SagaState};

impl Machine<'_> {
    pub(super) fn on_reply(&mut self, reply: &Reply) {
        if reply.step < self.def.steps.len() && self.kind(reply.step) != StepKind::Participant {
            return self.ignore(reply, "the step is not a participant step".into());
        }
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
        let (step, phase) = (reply.step, reply.phase);
        match (&reply.outcome, phase) {
            (ReplyOutcome::Success { payload }, Phase::Action) => {
                self.action_succeeded(step, payload.clone())
            }
            (ReplyOutcome::Success { payload }, Phase::Compensation) => {
                self.succeed(step, phase, Some(payload.clone()));
                self.compensate_next();
            }
            (ReplyOutcome::BusinessFailure { reason }, Phase::Action) => {
                self.reject(step, reason.clone());
                if self.failing() {
                    self.wind_down();
                } else {
                    let name = self.name(step);
                    self.forward_failed(step, format!("step `{name}` was rejected: {reason}"));
                }
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

    /// A child saga reached an end (or was parked). Its outcome is the step's: completed is a
    /// success, compensated is a refusal (nothing of it remains). A parked child leaves the step
    /// waiting for an operator to move the child on.
    pub(super) fn on_child_ended(&mut self, step: usize, child: SagaId, state: SagaState, why: Option<&str>) {
        let ignore = |m: &mut Self, why: String| {
            m.events.push(Event::ReplyIgnored {
                step,
                phase: Phase::Action,
                attempt: 0,
                reason: why,
            });
        };
        let Some(record) = self.saga.steps.get(step) else {
            return ignore(self, "the saga has no such step".into());
        };
        if record.child != Some(child) {
            return ignore(
                self,
                format!("child saga {child} is not the current child of this step"),
            );
        }
        let action = record.action.status;
        let compensation = record.compensation.as_ref().map(|c| c.status);
        let name = self.name(step);
        let noted = Event::ChildEnded {
            step,
            name: name.clone(),
            child,
            state,
        };
        match (action, compensation, state) {
            (PhaseStatus::InFlight, _, SagaState::Completed) => {
                self.events.push(noted);
                self.action_succeeded_quietly(step, json!({ "child_saga_id": child.to_string() }));
            }
            (PhaseStatus::InFlight, _, SagaState::Compensated) => {
                self.events.push(noted);
                let reason = match why {
                    Some(why) => format!("child saga {child} did not start: {why}"),
                    None => format!("child saga {child} was compensated"),
                };
                self.reject(step, reason.clone());
                if self.failing() {
                    self.wind_down();
                } else {
                    self.forward_failed(step, format!("step `{name}`: {reason}"));
                }
            }
            (_, Some(PhaseStatus::InFlight), SagaState::Compensated) => {
                self.events.push(noted);
                self.succeed(step, Phase::Compensation, None);
                self.compensate_next();
            }
            // The child completed after its compensation was asked for (it finished first): ask
            // again, now that it can be compensated as a completed saga.
            (_, Some(PhaseStatus::InFlight), SagaState::Completed) => {
                self.events.push(noted);
                self.dispatch(step, Phase::Compensation);
            }
            (PhaseStatus::InFlight, _, SagaState::Failed)
            | (_, Some(PhaseStatus::InFlight), SagaState::Failed) => {
                self.events.push(noted);
                let phase = if action == PhaseStatus::InFlight {
                    Phase::Action
                } else {
                    Phase::Compensation
                };
                self.record(step, phase).last_error =
                    Some(format!("child saga {child} is parked for an operator"));
            }
            _ => ignore(
                self,
                format!("nothing of step `{name}` waits for child saga {child} to be {state}"),
            ),
        }
    }

    /// Like a participant's success, for steps whose "reply" the engine composes itself: nothing
    /// of it is merged into the context.
    fn action_succeeded_quietly(&mut self, step: usize, reply: Value) {
        self.succeed(step, Phase::Action, Some(reply));
        self.after_branch_ended();
    }

    fn ignore(&mut self, reply: &Reply, reason: String) {
        self.events.push(Event::ReplyIgnored {
            step: reply.step,
            phase: reply.phase,
            attempt: reply.attempt,
            reason,
        });
    }
}
