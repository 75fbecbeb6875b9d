//! Timers: deadlines, retries and waits' timeouts that are due.

use super::{Event, Machine};
use crate::definition::{OnTimeout, StepKind};
use crate::saga::{Phase, PhaseStatus};

impl Machine<'_> {
    /// Handles every active phase that is due at `now`, in step order. Each is looked at afresh:
    /// an earlier one may have stopped it (a failed branch abandons siblings waiting to retry).
    pub(super) fn on_wake(&mut self) {
        for (step, phase) in self.saga.active_phases() {
            let now = self.now;
            let Some(rec) = self.saga.steps[step].phase(phase) else {
                continue;
            };
            let (status, attempt) = (rec.status, rec.attempt);
            let deadline_passed = status == PhaseStatus::InFlight && rec.deadline.is_some_and(|d| d <= now);
            let retry_due = status == PhaseStatus::RetryScheduled && rec.retry_at.is_some_and(|r| r <= now);
            match (self.kind(step), phase) {
                (StepKind::Wait(wait), Phase::Action) if deadline_passed => {
                    let continued = wait.on_timeout == OnTimeout::Continue;
                    let name = self.name(step);
                    self.events.push(Event::WaitTimedOut {
                        step,
                        name: name.clone(),
                        continued,
                    });
                    let waited_for = match &wait.signal {
                        Some(signal) => format!("signal `{signal}`"),
                        None => "approval".to_string(),
                    };
                    if continued {
                        let rec = self.record(step, phase);
                        rec.status = PhaseStatus::Skipped;
                        rec.finished_at = Some(now);
                        rec.deadline = None;
                        rec.last_error = Some(format!("no {waited_for} within {} ms", wait.timeout_ms));
                        self.advance();
                    } else {
                        let reason = format!("no {waited_for} within {} ms", wait.timeout_ms);
                        self.reject(step, reason.clone());
                        self.forward_failed(step, format!("step `{name}`: {reason}"));
                    }
                }
                (StepKind::Wait(_) | StepKind::Child(_), Phase::Action) => {}
                (_, _) if deadline_passed => {
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
                (_, _) if retry_due => self.dispatch(step, phase),
                _ => {}
            }
        }
    }
}
