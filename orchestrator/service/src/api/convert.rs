//! Protobuf ↔ domain conversions and request validation for the gRPC API. Every refusal names
//! the request field at fault.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;
use saga_engine::{Command, PhaseRecord, PhaseStatus, SagaDefinition, SagaId, SagaState};
use saga_proto::v1 as pb;
use tonic::Status;

use crate::catalog::Catalog;
use crate::store::{self, ListFilter, SagaSummary, StoredSaga};
use crate::watch::Change;

/// Longest accepted operator reason.
pub const MAX_REASON_CHARS: usize = 500;

pub fn ts(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn state_to_pb(s: SagaState) -> pb::SagaState {
    match s {
        SagaState::Running => pb::SagaState::Running,
        SagaState::Compensating => pb::SagaState::Compensating,
        SagaState::Completed => pb::SagaState::Completed,
        SagaState::Compensated => pb::SagaState::Compensated,
        SagaState::Failed => pb::SagaState::Failed,
    }
}

pub fn state_from_pb(s: pb::SagaState) -> Option<SagaState> {
    match s {
        pb::SagaState::Unspecified => None,
        pb::SagaState::Running => Some(SagaState::Running),
        pb::SagaState::Compensating => Some(SagaState::Compensating),
        pb::SagaState::Completed => Some(SagaState::Completed),
        pb::SagaState::Compensated => Some(SagaState::Compensated),
        pb::SagaState::Failed => Some(SagaState::Failed),
    }
}

fn status_to_pb(s: PhaseStatus) -> pb::PhaseStatus {
    match s {
        PhaseStatus::Pending => pb::PhaseStatus::Pending,
        PhaseStatus::InFlight => pb::PhaseStatus::InFlight,
        PhaseStatus::RetryScheduled => pb::PhaseStatus::RetryScheduled,
        PhaseStatus::Succeeded => pb::PhaseStatus::Succeeded,
        PhaseStatus::Rejected => pb::PhaseStatus::Rejected,
        PhaseStatus::Abandoned => pb::PhaseStatus::Abandoned,
        PhaseStatus::Exhausted => pb::PhaseStatus::Exhausted,
    }
}

fn phase_view(command_type: &str, p: &PhaseRecord) -> pb::PhaseView {
    pb::PhaseView {
        command_type: command_type.to_owned(),
        status: status_to_pb(p.status) as i32,
        attempt: p.attempt,
        started_at: p.started_at.map(ts),
        finished_at: p.finished_at.map(ts),
        deadline: p.deadline.map(ts),
        retry_at: p.retry_at.map(ts),
        last_error: p.last_error.clone().unwrap_or_default(),
        reply_payload_json: p.reply.as_ref().map(|v| v.to_string()).unwrap_or_default(),
    }
}

/// The full view of a saga; `def` supplies step names and command types.
pub fn saga_view(stored: &StoredSaga, def: Option<&SagaDefinition>) -> pb::SagaView {
    let s = &stored.saga;
    let steps = s
        .steps
        .iter()
        .enumerate()
        .map(|(i, rec)| {
            let d = def.and_then(|d| d.steps.get(i));
            pb::StepView {
                index: i as u32,
                name: d.map(|d| d.name.clone()).unwrap_or_default(),
                participant: d.map(|d| d.participant.clone()).unwrap_or_default(),
                action: Some(phase_view(d.map_or("", |d| &d.action), &rec.action)),
                compensation: rec
                    .compensation
                    .as_ref()
                    .map(|c| phase_view(d.and_then(|d| d.compensation.as_deref()).unwrap_or(""), c)),
            }
        })
        .collect();
    pb::SagaView {
        saga_id: s.id.to_string(),
        saga_type: s.saga_type.clone(),
        definition_version: s.definition_version,
        state: state_to_pb(s.state) as i32,
        idempotency_key: stored.idempotency_key.clone().unwrap_or_default(),
        context_json: serde_json::Value::Object(s.context.clone()).to_string(),
        failure_reason: s.failure_reason.clone().unwrap_or_default(),
        current_step: s
            .current_step()
            .and_then(|i| def.and_then(|d| d.steps.get(i)))
            .map(|d| d.name.clone())
            .unwrap_or_default(),
        created_at: Some(ts(s.created_at)),
        updated_at: Some(ts(s.updated_at)),
        steps,
        version: stored.version,
    }
}

pub fn parse_id(field: &str, raw: &str) -> Result<SagaId, Status> {
    if raw.is_empty() {
        return Err(Status::invalid_argument(format!("{field}: required")));
    }
    raw.parse::<SagaId>()
        .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

fn time(field: &str, t: Option<&Timestamp>) -> Result<Option<DateTime<Utc>>, Status> {
    t.map(|t| {
        DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
            .ok_or_else(|| Status::invalid_argument(format!("{field}: not a valid time")))
    })
    .transpose()
}

/// Validates a filter. `catalog` rejects unknown saga types, so a typo is an error rather than an
/// empty result.
pub fn filter(f: Option<&pb::SagaFilter>, catalog: &Catalog) -> Result<ListFilter, Status> {
    let Some(f) = f else {
        return Ok(ListFilter::default());
    };
    let saga_type = (!f.saga_type.is_empty()).then(|| f.saga_type.clone());
    if let Some(t) = &saga_type
        && catalog.latest(t).is_none()
    {
        let known = catalog.names().join(", ");
        return Err(Status::invalid_argument(format!(
            "filter.saga_type: unknown saga type `{t}` (known: {known})"
        )));
    }
    let state = pb::SagaState::try_from(f.state)
        .map_err(|_| Status::invalid_argument(format!("filter.state: {} is not a saga state", f.state)))?;
    let ids = if f.id_prefix.is_empty() {
        None
    } else {
        Some(
            store::id_range(&f.id_prefix)
                .map_err(|e| Status::invalid_argument(format!("filter.id_prefix: {e}")))?,
        )
    };
    Ok(ListFilter {
        saga_type,
        state: state_from_pb(state),
        current_step: (!f.current_step.is_empty()).then(|| f.current_step.clone()),
        created_after: time("filter.created_after", f.created_after.as_ref())?,
        created_before: time("filter.created_before", f.created_before.as_ref())?,
        updated_after: time("filter.updated_after", f.updated_after.as_ref())?,
        updated_before: time("filter.updated_before", f.updated_before.as_ref())?,
        ids,
        idempotency_key: (!f.idempotency_key.is_empty()).then(|| f.idempotency_key.clone()),
        cursor: None,
        ascending: false,
    })
}

/// An operator's reason: required, bounded, recorded in history.
pub fn reason(raw: &str) -> Result<String, Status> {
    let r = raw.trim();
    if r.is_empty() {
        return Err(Status::invalid_argument(
            "reason: required; it is recorded in the saga's history",
        ));
    }
    if r.chars().count() > MAX_REASON_CHARS {
        return Err(Status::invalid_argument(format!(
            "reason: at most {MAX_REASON_CHARS} characters"
        )));
    }
    Ok(r.to_owned())
}

pub fn summary(r: SagaSummary) -> pb::SagaSummary {
    pb::SagaSummary {
        saga_id: r.id.to_string(),
        saga_type: r.saga_type,
        state: r
            .state
            .parse::<SagaState>()
            .map_or(pb::SagaState::Unspecified, state_to_pb) as i32,
        current_step: r.current_step.unwrap_or_default(),
        created_at: Some(ts(r.created_at)),
        updated_at: Some(ts(r.updated_at)),
        failure_reason: r.failure_reason.unwrap_or_default(),
    }
}

pub fn change_summary(c: &Change) -> pb::SagaSummary {
    summary(SagaSummary {
        id: c.id,
        saga_type: c.saga_type.clone(),
        state: c.state.clone(),
        current_step: c.current_step.clone(),
        failure_reason: c.failure_reason.clone(),
        created_at: c.created_at,
        updated_at: c.updated_at,
    })
}

pub fn planned(commands: &[Command], topic_prefix: &str) -> Vec<pb::PlannedCommand> {
    commands
        .iter()
        .map(|c| pb::PlannedCommand {
            step_index: c.step as u32,
            step_name: c.step_name.clone(),
            phase: c.phase.to_wire() as i32,
            attempt: c.attempt,
            command_type: c.command_type.clone(),
            topic: format!("{topic_prefix}{}", c.participant),
        })
        .collect()
}
