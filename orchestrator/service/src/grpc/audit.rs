//! `RunAudit`: the consistency audit over gRPC.

use std::time::Duration;

use saga_proto::v1 as pb;

use super::convert::{time, ts};
use crate::api::ApiError;
use crate::audit::{AuditReport, AuditRequest, Auditor};

/// Validates the request, runs the audit, and converts its report.
pub(super) async fn run(auditor: &Auditor, r: pb::RunAuditRequest) -> Result<pb::AuditReport, ApiError> {
    let since = time("since", r.since.as_ref())?.ok_or_else(|| ApiError::invalid("since: required"))?;
    let request = AuditRequest {
        since,
        until: time("until", r.until.as_ref())?,
        saga_type: (!r.saga_type.is_empty()).then_some(r.saga_type),
        unfinished_after: r
            .unfinished_after_seconds
            .map(|s| Duration::from_secs(u64::from(s))),
    };
    let report = auditor.run(&request).await?;
    Ok(report_pb(&report))
}

fn report_pb(r: &AuditReport) -> pb::AuditReport {
    pb::AuditReport {
        since: Some(ts(r.since)),
        until: Some(ts(r.until)),
        saga_type: r.saga_type.clone().unwrap_or_default(),
        started_at: Some(ts(r.started_at)),
        duration_seconds: r.duration_seconds,
        sagas_checked: r.sagas_checked,
        ledger_entries: r.ledger_entries,
        participants: r
            .participants
            .iter()
            .map(|p| pb::AuditParticipant {
                name: p.name.clone(),
                service: p.service.clone(),
                commands_topic: p.commands_topic.clone(),
                ledger_entries: p.entries,
                pruned_before: p.pruned_before.map(ts),
            })
            .collect(),
        unaudited_topics: r.unaudited_topics.clone(),
        retention_horizon: r.retention_horizon.map(ts),
        removed_by_retention: r.removed_by_retention,
        pruned_by_participants: r.pruned_by_participants,
        findings: r
            .findings
            .iter()
            .map(|f| pb::AuditFinding {
                kind: f.kind.as_str().to_owned(),
                saga_id: f.saga_id.map(|id| id.to_string()).unwrap_or_default(),
                saga_type: f.saga_type.clone(),
                step_index: f.step,
                step_name: f.step_name.clone().unwrap_or_default(),
                phase: f.phase.map(|p| p.as_str().to_owned()).unwrap_or_default(),
                participant: f.participant.clone().unwrap_or_default(),
                message: f.message.clone(),
                orchestrator_json: f.orchestrator.to_string(),
                participant_json: f.participant_record.to_string(),
            })
            .collect(),
    }
}
