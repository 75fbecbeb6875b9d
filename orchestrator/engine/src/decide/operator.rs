//! Operator actions (abort, compensation replay, retry) and a parent's compensation of its child.

use super::{EngineError, Event, Machine, Replayability, replayability};
use crate::definition::StepKind;
use crate::saga::{Phase, PhaseStatus, SagaState};

impl Machine<'_> {
    pub(super) fn on_abort(&mut self, reason: &str) -> Result<(), EngineError> {
        if self.saga.state != SagaState::Running {
            return Err(EngineError::NotAllowed(format!(
                "only a running saga can be aborted; this one is {}",
                self.saga.state
            )));
        }
        if self.past_pivot() {
            return Err(EngineError::NotAllowed(
                "a pivot step already succeeded, so this saga can only go forward".into(),
            ));
        }
        self.events.push(Event::SagaAborted {
            reason: reason.into(),
        });
        self.abort_forward(format!("aborted: {reason}"));
        Ok(())
    }

    /// Stop at once: abandon every active action (it may have been applied), stop waits and
    /// children, and compensate.
    fn abort_forward(&mut self, reason: String) {
        for i in 0..self.saga.steps.len() {
            if self.saga.steps[i].action.status.is_active() {
                let why = match self.kind(i) {
                    StepKind::Participant => "aborted by an operator while in flight",
                    StepKind::Wait(_) => "aborted by an operator while waiting",
                    StepKind::Child(_) => "aborted by an operator while the child saga ran",
                };
                self.abandon(i, why.into());
            }
        }
        self.saga.state = SagaState::Compensating;
        self.saga.failure_reason = Some(reason.clone());
        self.events.push(Event::CompensationStarted { reason });
        self.compensate_next();
    }

    /// A parent compensates the step that started this saga.
    pub(super) fn on_compensate(&mut self, reason: &str) -> Result<(), EngineError> {
        match self.saga.state {
            SagaState::Compensating | SagaState::Compensated | SagaState::Failed => Ok(()),
            _ if self.past_pivot() => Err(EngineError::NotAllowed(
                "a pivot step already succeeded, so this saga cannot be compensated".into(),
            )),
            SagaState::Running => {
                self.abort_forward(format!("compensated by its parent: {reason}"));
                Ok(())
            }
            SagaState::Completed => {
                let reason = format!("compensated by its parent: {reason}");
                self.saga.state = SagaState::Compensating;
                self.saga.failure_reason = Some(reason.clone());
                self.events.push(Event::CompensationStarted { reason });
                self.compensate_next();
                Ok(())
            }
        }
    }

    pub(super) fn on_replay(&mut self, reason: &str) -> Result<(), EngineError> {
        let why = match replayability(&self.saga) {
            Replayability::NotReplayable(why) => return Err(EngineError::NotAllowed(why)),
            Replayability::Replayable => None,
            Replayability::InProgress => Some("compensation is already in progress"),
            Replayability::AlreadyCompensated => Some("the saga is already compensated"),
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

    pub(super) fn on_retry(&mut self, requested: Option<usize>, reason: &str) -> Result<(), EngineError> {
        let not = |m: String| Err(EngineError::NotAllowed(m));
        let steps: Vec<usize> =
            match self.saga.state {
                // Waiting out a backoff: send the next attempt now.
                SagaState::Running if !self.failing() => {
                    let waiting: Vec<usize> = (0..self.saga.steps.len())
                        .filter(|&i| self.saga.steps[i].action.status == PhaseStatus::RetryScheduled)
                        .collect();
                    match requested {
                        _ if waiting.is_empty() => {
                            return not("the saga is running and no step is waiting to retry".into());
                        }
                        Some(wanted) if waiting.contains(&wanted) => vec![wanted],
                        Some(wanted) => return not(self.not_the_step(wanted, &waiting)),
                        None => vec![waiting[0]],
                    }
                }
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
                    // The stage that failed: where the last step that did not end well is.
                    let Some(last) = self.saga.steps.iter().rposition(|s| {
                        matches!(s.action.status, PhaseStatus::Abandoned | PhaseStatus::Rejected)
                    }) else {
                        return not("the saga has no step to retry".into());
                    };
                    let stage = self.def.stage_of(last);
                    if let Some(rejected) = stage
                        .clone()
                        .find(|&i| self.saga.steps[i].action.status == PhaseStatus::Rejected)
                    {
                        let why = match self.kind(rejected) {
                            StepKind::Participant => {
                                "by a business rule; sending it again would be refused again"
                            }
                            _ => "definitely; starting it again would not change that",
                        };
                        return not(format!("step `{}` was rejected {why}", self.name(rejected)));
                    }
                    let abandoned: Vec<usize> = stage
                        .filter(|&i| self.saga.steps[i].action.status == PhaseStatus::Abandoned)
                        .collect();
                    if let Some(wanted) = requested
                        && !abandoned.contains(&wanted)
                    {
                        return not(self.not_the_step(wanted, &abandoned));
                    }
                    abandoned
                }
                other => return not(format!("a {other} saga has no step to retry")),
            };
        let now = self.now;
        self.saga.state = SagaState::Running;
        self.saga.failure_reason = None;
        for step in steps {
            let rec = self.record(step, Phase::Action);
            rec.budget_from = rec.attempt;
            rec.budget_started_at = Some(now);
            rec.last_error = None;
            self.saga.steps[step].completion = None;
            self.events.push(Event::StepRetried {
                step,
                name: self.name(step),
                reason: reason.into(),
            });
            match self.kind(step) {
                StepKind::Participant => self.dispatch(step, Phase::Action),
                // A wait starts again with a fresh timeout; a child step starts a new child.
                _ => match self.plan_step(step) {
                    Ok(super::Plan::Run(input)) => self.start_step(step, input),
                    Ok(super::Plan::Skip(condition)) => self.skip(step, condition),
                    Err(why) => {
                        let name = self.name(step);
                        self.reject(step, why.clone());
                        self.forward_failed(step, format!("step `{name}` could not start: {why}"));
                        return Ok(());
                    }
                },
            }
        }
        Ok(())
    }

    fn not_the_step(&self, wanted: usize, steps: &[usize]) -> String {
        let names: Vec<String> = steps
            .iter()
            .map(|&i| format!("step {i} (`{}`)", self.name(i)))
            .collect();
        let (verb, list) = match names.as_slice() {
            [one] => ("is", one.clone()),
            _ => ("are", names.join(", ")),
        };
        format!("step {wanted} is not the step to retry; {list} {verb}")
    }
}
