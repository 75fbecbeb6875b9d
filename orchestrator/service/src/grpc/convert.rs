//! Protobuf ↔ domain conversions for the gRPC API. Requests are parsed by the shared rules of
//! [`crate::api::request`]; here only the protobuf shapes are read (every refusal names the
//! request field at fault) and the answers written.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;
use saga_engine::{PhaseRecord, PhaseStatus, SagaDefinition, SagaState, StepKind};
use saga_proto::v1 as pb;

use crate::api::request;
use crate::api::{ApiError, Planned, planned};
use crate::catalog::Catalog;
use crate::coordinator::ReplayReport;
use crate::jobs::{Job, JobItem, JobState};
use crate::store::{Hold, ListFilter, SagaSummary, StoredSaga};
use crate::watch::Change;

pub(super) fn ts(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub(super) fn state_to_pb(s: SagaState) -> pb::SagaState {
    match s {
        SagaState::Running => pb::SagaState::Running,
        SagaState::Compensating => pb::SagaState::Compensating,
        SagaState::Completed => pb::SagaState::Completed,
        SagaState::Compensated => pb::SagaState::Compensated,
        SagaState::Failed => pb::SagaState::Failed,
    }
}

pub(super) fn state_from_pb(s: pb::SagaState) -> Option<SagaState> {
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
        PhaseStatus::Skipped => pb::PhaseStatus::Skipped,
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
pub(super) fn saga_view(stored: &StoredSaga, def: Option<&SagaDefinition>) -> pb::SagaView {
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
                kind: d.map_or("", |d| step_kind(d.kind())).to_owned(),
                group: d.and_then(|d| d.group.clone()).unwrap_or_default(),
                waits_for: match d.map(|d| d.kind()) {
                    Some(StepKind::Wait(w)) => w.signal.clone().unwrap_or_else(|| "approval".into()),
                    _ => String::new(),
                },
                child_saga_id: rec.child.map(|c| c.to_string()).unwrap_or_default(),
                child_saga_type: match d.map(|d| d.kind()) {
                    Some(StepKind::Child(c)) => c.saga.clone(),
                    _ => String::new(),
                },
                when: d.and_then(|d| d.when.clone()).unwrap_or_default(),
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
        parent_saga_id: s.parent.map(|p| p.saga.to_string()).unwrap_or_default(),
        parent_step: s.parent.map(|p| p.step as u32),
        // GetSaga and WatchSaga fill these (they are not part of the saga's row).
        search_keys: Vec::new(),
        hold: None,
    }
}

/// A saga's business keys and legal hold, into its view.
pub(super) fn with_lifecycle(
    mut view: pb::SagaView,
    keys: Vec<(String, String)>,
    hold: Option<Hold>,
) -> pb::SagaView {
    view.search_keys = keys
        .into_iter()
        .map(|(name, value)| pb::SearchKey { name, value })
        .collect();
    view.hold = hold.map(hold_pb);
    view
}

pub(super) fn hold_pb(h: Hold) -> pb::Hold {
    pb::Hold {
        operator: h.operator,
        reason: h.reason,
        placed_at: Some(ts(h.placed_at)),
    }
}

/// A step's kind as the API names it.
pub(crate) fn step_kind(kind: StepKind<'_>) -> &'static str {
    match kind {
        StepKind::Participant => "participant",
        StepKind::Wait(_) => "wait",
        StepKind::Child(_) => "child",
    }
}

pub(super) fn time(field: &str, t: Option<&Timestamp>) -> Result<Option<DateTime<Utc>>, ApiError> {
    t.map(|t| {
        DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
            .ok_or_else(|| ApiError::invalid(format!("{field}: not a valid time")))
    })
    .transpose()
}

/// `Some` for a non-empty proto3 string (empty means unset).
fn set(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// A filter, by the shared rules (`catalog` rejects unknown saga types, so a typo is an error
/// rather than an empty result).
pub(super) fn filter(f: Option<&pb::SagaFilter>, catalog: &Catalog) -> Result<ListFilter, ApiError> {
    let Some(f) = f else {
        return Ok(ListFilter::default());
    };
    let named = |field: &'static str| move |e: ApiError| e.in_field(field);
    let state = pb::SagaState::try_from(f.state)
        .map_err(|_| ApiError::invalid(format!("filter.state: {} is not a saga state", f.state)))?;
    let saga_type = set(&f.saga_type)
        .map(|t| request::saga_type(catalog, t))
        .transpose()
        .map_err(named("filter.saga_type"))?;
    if f.keys.len() > request::MAX_KEY_FILTERS {
        return Err(ApiError::invalid(format!(
            "filter.keys: at most {} key conditions",
            request::MAX_KEY_FILTERS
        )));
    }
    let keys = f
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            request::key_filter(catalog, saga_type.as_deref(), set(&k.name), &k.value, k.prefix)
                .map_err(|e| e.in_field(&format!("filter.keys[{i}]")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ListFilter {
        saga_type,
        state: state_from_pb(state),
        current_step: set(&f.current_step)
            .map(request::step_name)
            .transpose()
            .map_err(named("filter.current_step"))?,
        created_after: time("filter.created_after", f.created_after.as_ref())?,
        created_before: time("filter.created_before", f.created_before.as_ref())?,
        updated_after: time("filter.updated_after", f.updated_after.as_ref())?,
        updated_before: time("filter.updated_before", f.updated_before.as_ref())?,
        ids: set(&f.id_prefix)
            .map(request::id_prefix)
            .transpose()
            .map_err(named("filter.id_prefix"))?,
        idempotency_key: set(&f.idempotency_key).map(str::to_owned),
        definition_version: (f.definition_version != 0).then_some(f.definition_version),
        failure_contains: set(&f.failure_contains)
            .map(request::failure_text)
            .transpose()
            .map_err(named("filter.failure_contains"))?,
        keys,
        cursor: None,
        ascending: false,
    })
}

/// A stored filter as the request that would select the same sagas.
pub(super) fn filter_pb(f: &ListFilter) -> pb::SagaFilter {
    pb::SagaFilter {
        saga_type: f.saga_type.clone().unwrap_or_default(),
        state: f.state.map_or(pb::SagaState::Unspecified, state_to_pb) as i32,
        current_step: f.current_step.clone().unwrap_or_default(),
        created_after: f.created_after.map(ts),
        created_before: f.created_before.map(ts),
        updated_after: f.updated_after.map(ts),
        updated_before: f.updated_before.map(ts),
        // A prefix's range is `prefix000…` to `prefixfff…`: their common start is the prefix.
        id_prefix: f
            .ids
            .map(|(lo, hi)| {
                let (lo, hi) = (lo.simple().to_string(), hi.simple().to_string());
                lo.chars()
                    .zip(hi.chars())
                    .take_while(|(a, b)| a == b)
                    .map(|(a, _)| a)
                    .collect()
            })
            .unwrap_or_default(),
        idempotency_key: f.idempotency_key.clone().unwrap_or_default(),
        definition_version: f.definition_version.unwrap_or(0),
        failure_contains: f.failure_contains.clone().unwrap_or_default(),
        keys: f
            .keys
            .iter()
            .map(|k| pb::KeyMatch {
                name: k.name.clone().unwrap_or_default(),
                value: k.value.clone(),
                prefix: k.prefix,
            })
            .collect(),
    }
}

pub(super) fn summary(r: SagaSummary) -> pb::SagaSummary {
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

pub(super) fn change_summary(c: &Change) -> pb::SagaSummary {
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

pub(super) fn planned_pb(commands: &[Planned]) -> Vec<pb::PlannedCommand> {
    commands
        .iter()
        .map(|c| pb::PlannedCommand {
            step_index: c.step as u32,
            step_name: c.step_name.clone(),
            phase: c.phase.to_wire() as i32,
            attempt: c.attempt,
            command_type: c.command_type.clone(),
            topic: c.topic.clone(),
        })
        .collect()
}

/// A replay's result: `outcome` as stored (see [`crate::coordinator::ReplayOutcome::as_str`]).
pub(super) fn replay_result(
    saga_id: &str,
    outcome: &str,
    detail: &str,
    commands: &[Planned],
) -> pb::ReplayResult {
    let outcome = match outcome {
        "replayed" => pb::ReplayOutcome::Replayed,
        "would_replay" => pb::ReplayOutcome::WouldReplay,
        "already_in_progress" => pb::ReplayOutcome::AlreadyInProgress,
        "already_compensated" => pb::ReplayOutcome::AlreadyCompensated,
        "not_replayable" => pb::ReplayOutcome::NotReplayable,
        "failed" => pb::ReplayOutcome::Failed,
        _ => pb::ReplayOutcome::Unspecified,
    };
    pb::ReplayResult {
        saga_id: saga_id.to_owned(),
        outcome: outcome as i32,
        detail: detail.to_owned(),
        commands: planned_pb(commands),
    }
}

pub(super) fn report_pb(r: &ReplayReport, topic_prefix: &str) -> pb::ReplayResult {
    replay_result(
        &r.saga_id.to_string(),
        r.outcome.as_str(),
        r.outcome.detail(),
        &planned(&r.commands, topic_prefix),
    )
}

pub(super) fn job_pb(j: &Job) -> pb::Job {
    pb::Job {
        job_id: j.id.to_string(),
        kind: j.kind.clone(),
        state: match j.state {
            JobState::Running => pb::JobState::Running,
            JobState::Paused => pb::JobState::Paused,
            JobState::Completed => pb::JobState::Completed,
            JobState::Cancelled => pb::JobState::Cancelled,
        } as i32,
        operator: j.operator.clone(),
        reason: j.reason.clone(),
        filter: Some(filter_pb(&j.params.filter)),
        rate_per_second: j.params.rate_per_second,
        limit: j.params.limit,
        processed: j.processed,
        counts: j.counts.clone().into_iter().collect(),
        owner: j.owner.clone().unwrap_or_default(),
        last_error: j.last_error.clone().unwrap_or_default(),
        cancelled_by: j.cancelled_by.clone().unwrap_or_default(),
        cancel_reason: j.cancel_reason.clone().unwrap_or_default(),
        created_at: Some(ts(j.created_at)),
        updated_at: Some(ts(j.updated_at)),
        finished_at: j.finished_at.map(ts),
        paused_by: j.paused_by.clone().unwrap_or_default(),
        pause_reason: j.pause_reason.clone().unwrap_or_default(),
    }
}

pub(super) fn job_item_pb(i: &JobItem) -> pb::JobItem {
    let commands: Vec<Planned> = serde_json::from_value(i.commands.0.clone()).unwrap_or_default();
    pb::JobItem {
        seq: u32::try_from(i.seq).unwrap_or(0),
        result: Some(replay_result(
            &i.saga_id.to_string(),
            &i.outcome,
            &i.detail,
            &commands,
        )),
        at: Some(ts(i.at)),
        outcome: i.outcome.clone(),
    }
}
