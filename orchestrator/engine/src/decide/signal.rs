//! Signals and approvals: what ends a wait.

use serde_json::{Value, json};

use super::{EngineError, Event, Machine};
use crate::definition::{StepKind, check_payload};
use crate::saga::{Phase, PhaseStatus};

impl Machine<'_> {
    pub(super) fn on_signal(
        &mut self,
        signal: &str,
        payload: &Value,
        key: Option<&str>,
    ) -> Result<(), EngineError> {
        let Some(step) = self.def.signal_step(signal) else {
            let declared: Vec<&str> = self
                .def
                .steps
                .iter()
                .filter_map(|s| s.wait.as_ref().and_then(|w| w.signal.as_deref()))
                .collect();
            return Err(EngineError::Invalid(format!(
                "saga type `{}` v{} declares no signal `{signal}` ({})",
                self.def.name,
                self.def.version,
                if declared.is_empty() {
                    "it declares none".to_string()
                } else {
                    format!("it declares: {}", declared.join(", "))
                }
            )));
        };
        let StepKind::Wait(wait) = self.kind(step) else {
            return Err(EngineError::Invalid(format!(
                "step `{}` is not a wait",
                self.name(step)
            )));
        };
        let what = format!("a field of signal `{signal}`");
        let fields = check_payload(&wait.fields, payload, &what, &[])
            .map_err(|e| EngineError::Invalid(format!("signal `{signal}`: {e}")))?;
        self.waiting(step, &format!("signal `{signal}`"))?;
        self.events.push(Event::SignalReceived {
            step,
            name: self.name(step),
            signal: signal.to_string(),
            payload: Value::Object(fields.clone()),
            key: key.map(str::to_string),
        });
        self.action_succeeded(step, Value::Object(fields));
        Ok(())
    }

    pub(super) fn on_approval(
        &mut self,
        requested: Option<usize>,
        approved: bool,
        by: &str,
        reason: &str,
    ) -> Result<(), EngineError> {
        let approvals: Vec<usize> = (0..self.def.steps.len())
            .filter(|&i| matches!(self.kind(i), StepKind::Wait(w) if w.approval))
            .collect();
        if approvals.is_empty() {
            return Err(EngineError::Invalid(format!(
                "saga type `{}` v{} has no approval step",
                self.def.name, self.def.version
            )));
        }
        if let Some(step) = requested
            && !approvals.contains(&step)
        {
            return Err(EngineError::Invalid(format!(
                "step {step} is not an approval step"
            )));
        }
        let waiting: Vec<usize> = approvals
            .iter()
            .copied()
            .filter(|&i| self.saga.steps[i].action.status == PhaseStatus::InFlight && !self.failing())
            .filter(|&i| requested.is_none_or(|r| r == i))
            .collect();
        let step = match (waiting.as_slice(), requested) {
            ([one], _) => *one,
            ([], Some(step)) => {
                self.waiting(step, "an approval")?;
                step
            }
            ([], None) => {
                return Err(EngineError::NotAllowed(format!(
                    "the saga is not waiting for an approval (it is {})",
                    self.saga.state
                )));
            }
            (several, None) => {
                let names: Vec<String> = several.iter().map(|&i| self.name(i)).collect();
                return Err(EngineError::NotAllowed(format!(
                    "several approvals are waiting ({}); name the step",
                    names.join(", ")
                )));
            }
            // A requested step filters the list to at most one; kept total all the same.
            ([first, ..], Some(_)) => *first,
        };
        let name = self.name(step);
        self.events.push(Event::ApprovalDecided {
            step,
            name: name.clone(),
            approved,
            by: by.to_string(),
            reason: reason.to_string(),
        });
        if approved {
            let reply = json!({ "approved_by": by, "reason": reason });
            self.succeed(step, Phase::Action, Some(reply));
            self.after_branch_ended();
        } else {
            let why = format!("rejected by {by}: {reason}");
            self.reject(step, why.clone());
            self.forward_failed(step, format!("step `{name}` was {why}"));
        }
        Ok(())
    }

    /// Refuses unless `step` is waiting now.
    fn waiting(&self, step: usize, what: &str) -> Result<(), EngineError> {
        let status = self.saga.steps[step].action.status;
        if status == PhaseStatus::InFlight && !self.failing() && self.saga.state == crate::SagaState::Running
        {
            return Ok(());
        }
        Err(EngineError::NotAllowed(format!(
            "the saga is not waiting for {what}: step `{}` is {} and the saga is {}",
            self.name(step),
            super::describe(status),
            self.saga.state
        )))
    }
}
