//! Saga metrics, derived from each committed decision's events, so every entry point counts
//! the same way: started, finished by state, step durations by outcome, compensations, missed
//! deadlines, failed attempts, ignored replies, operator actions.

use chrono::{DateTime, Utc};
use saga_engine::{Decision, Event, Phase, SagaDefinition};

use crate::catalog::Catalog;

/// Creates every saga counter (and the `sagas_by_state` gauges) at 0 for the catalog's saga types,
/// steps and phases, so each series exists from the start: a counter first seen at 1 hides its
/// first event from `rate()` and `increase()`, and dashboards and alerts find every series.
pub(crate) fn register(catalog: &Catalog) {
    // Retention's counters, at 0 from the start so a rate over them is defined.
    for name in [
        "sagas_removed_total",
        "saga_events_removed_total",
        "sagas_archived_total",
        "retention_errors_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    metrics::gauge!("start_refusing_store_down").set(0.0);
    for def in catalog.definitions() {
        let t = def.name.clone();
        metrics::counter!("saga_started_total", "saga_type" => t.clone()).increment(0);
        metrics::counter!("saga_compensations_total", "saga_type" => t.clone()).increment(0);
        metrics::counter!("saga_replies_ignored_total", "saga_type" => t.clone()).increment(0);
        for state in ["completed", "compensated", "failed"] {
            metrics::counter!("saga_finished_total", "saga_type" => t.clone(), "state" => state).increment(0);
        }
        for state in ["running", "compensating", "failed"] {
            metrics::gauge!("sagas_by_state", "saga_type" => t.clone(), "state" => state).increment(0.0);
        }
        // Admission: refusals by reason (coordinator/admission.rs).
        for reason in ["in_flight", "store_down"] {
            metrics::counter!("sagas_refused_total", "saga_type" => t.clone(), "reason" => reason)
                .increment(0);
        }
        for action in ["saga_aborted", "compensation_replayed", "step_retried"] {
            metrics::counter!("saga_operator_actions_total", "saga_type" => t.clone(), "action" => action)
                .increment(0);
        }
        for step in &def.steps {
            let phases: &[Phase] = if step.compensation.is_some() {
                &[Phase::Action, Phase::Compensation]
            } else {
                &[Phase::Action]
            };
            for phase in phases {
                for name in ["saga_deadlines_missed_total", "saga_attempts_failed_total"] {
                    metrics::counter!(name, "saga_type" => t.clone(), "step" => step.name.clone(),
                        "phase" => phase.as_str())
                    .increment(0);
                }
            }
        }
    }
    for state in ["running", "compensating"] {
        metrics::gauge!("saga_oldest_in_state_seconds", "state" => state).increment(0.0);
    }
}

/// Saga metrics, derived from a committed decision's events.
pub(super) fn observe(def: &SagaDefinition, decision: &Decision, now: DateTime<Utc>) {
    let saga = &decision.saga;
    let t = saga.saga_type.clone();
    let elapsed = |from: Option<DateTime<Utc>>| {
        from.map_or(0.0, |f| (now - f).num_microseconds().unwrap_or(0) as f64 / 1e6)
    };
    let step_name = |i: usize| def.steps.get(i).map_or_else(String::new, |s| s.name.clone());
    let step_time = |i: usize, phase: Phase, outcome: &'static str| {
        let started = saga
            .steps
            .get(i)
            .and_then(|s| s.phase(phase))
            .and_then(|p| p.started_at);
        metrics::histogram!("saga_step_duration_seconds", "saga_type" => t.clone(), "step" => step_name(i),
            "phase" => phase.as_str(), "outcome" => outcome)
        .record(elapsed(started));
    };
    for event in &decision.events {
        match event {
            Event::SagaStarted => {
                metrics::counter!("saga_started_total", "saga_type" => t.clone()).increment(1)
            }
            Event::SagaCompleted | Event::SagaCompensated | Event::SagaFailed { .. } => {
                let state = saga.state.as_str();
                metrics::counter!("saga_finished_total", "saga_type" => t.clone(), "state" => state)
                    .increment(1);
                metrics::histogram!("saga_duration_seconds", "saga_type" => t.clone(), "state" => state)
                    .record(elapsed(Some(saga.created_at)));
            }
            Event::StepSucceeded { step, phase, .. } => step_time(*step, *phase, "succeeded"),
            Event::StepRejected { step, .. } => step_time(*step, Phase::Action, "rejected"),
            Event::StepAbandoned { step, .. } => step_time(*step, Phase::Action, "abandoned"),
            Event::CompensationExhausted { step, .. } => step_time(*step, Phase::Compensation, "exhausted"),
            Event::CompensationStarted { .. } => {
                metrics::counter!("saga_compensations_total", "saga_type" => t.clone()).increment(1);
            }
            Event::DeadlineMissed { step, phase, .. } => {
                metrics::counter!("saga_deadlines_missed_total", "saga_type" => t.clone(), "step" => step_name(*step),
                    "phase" => phase.as_str())
                .increment(1);
            }
            Event::AttemptFailed { step, phase, .. } => {
                metrics::counter!("saga_attempts_failed_total", "saga_type" => t.clone(), "step" => step_name(*step),
                    "phase" => phase.as_str())
                .increment(1);
            }
            Event::ReplyIgnored { .. } => {
                metrics::counter!("saga_replies_ignored_total", "saga_type" => t.clone()).increment(1);
            }
            Event::SagaAborted { .. } | Event::CompensationReplayed { .. } | Event::StepRetried { .. } => {
                metrics::counter!("saga_operator_actions_total", "saga_type" => t.clone(), "action" => event.kind())
                    .increment(1);
            }
            Event::SignalReceived { step, .. }
            | Event::ApprovalDecided { step, .. }
            | Event::WaitTimedOut { step, .. } => {
                metrics::counter!("saga_waits_ended_total", "saga_type" => t.clone(), "step" => step_name(*step),
                    "how" => event.kind())
                .increment(1);
            }
            Event::CommandDispatched { .. }
            | Event::ReplaySkipped { .. }
            | Event::StepSkipped { .. }
            | Event::WaitStarted { .. }
            | Event::WaitCancelled { .. }
            | Event::ChildStarted { .. }
            | Event::ChildEnded { .. } => {}
        }
    }
}
