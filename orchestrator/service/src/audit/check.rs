//! The audit's rules: one saga as the orchestrator recorded it against what its participants'
//! ledgers say, without I/O. Works for every saga type: it needs only the definition (which
//! participant each step talks to) and the two records.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use saga_engine::{Phase, PhaseRecord, PhaseStatus, SagaDefinition, SagaState, StepRecord};
use saga_proto::ledger::{LedgerEntry, LedgerOutcome};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

/// What kind of disagreement a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FindingKind {
    /// The orchestrator recorded a step's action as succeeded; the participant has no success.
    MissingSuccess,
    /// The action took effect at the participant, the saga compensated (or recorded the undo),
    /// and the participant has no successful compensation.
    MissingCompensation,
    /// The participant applied (or undid) something the saga's record says did not happen, e.g.
    /// an action the orchestrator recorded as refused or never sent, or an undo of a completed
    /// saga's step.
    EndedDifferently,
    /// The participant has records of a saga the orchestrator does not know.
    UnknownSaga,
    /// Running or compensating for longer than the threshold.
    Unfinished,
    /// Parked as failed for an operator for longer than the threshold.
    Parked,
    /// A participant's own domain check: a recorded effect no longer holds in its data.
    DomainCheck,
    /// An effect in a participant's data that no inbox record claims: no saga made it.
    UnclaimedEffect,
    /// A cross-check's two fact sets disagree on a key (missing on one side, or another value),
    /// and still did after the settle delay, e.g. an author replica renamed by hand.
    ReplicaDrift,
}

impl FindingKind {
    pub(crate) const ALL: [FindingKind; 9] = [
        FindingKind::MissingSuccess,
        FindingKind::MissingCompensation,
        FindingKind::EndedDifferently,
        FindingKind::UnknownSaga,
        FindingKind::Unfinished,
        FindingKind::Parked,
        FindingKind::DomainCheck,
        FindingKind::UnclaimedEffect,
        FindingKind::ReplicaDrift,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FindingKind::MissingSuccess => "missing_success",
            FindingKind::MissingCompensation => "missing_compensation",
            FindingKind::EndedDifferently => "ended_differently",
            FindingKind::UnknownSaga => "unknown_saga",
            FindingKind::Unfinished => "unfinished",
            FindingKind::Parked => "parked",
            FindingKind::DomainCheck => "domain_check",
            FindingKind::UnclaimedEffect => "unclaimed_effect",
            FindingKind::ReplicaDrift => "replica_drift",
        }
    }
}

/// One disagreement, with both sides' records.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Finding {
    pub kind: FindingKind,
    /// `None` for an effect no saga claims.
    pub saga_id: Option<Uuid>,
    /// Empty when the orchestrator does not know the saga.
    pub saga_type: String,
    pub step: Option<u32>,
    pub step_name: Option<String>,
    pub phase: Option<Phase>,
    /// The participant's configured name, when the finding concerns one.
    pub participant: Option<String>,
    pub message: String,
    /// The orchestrator's record (saga state and the step's phases), if it has one.
    pub orchestrator: Value,
    /// The participant's ledger entries for the step (or the saga), if any.
    pub participant_record: Value,
}

/// A saga as the audit reads it from the orchestrator's store.
#[derive(Debug, Clone)]
pub(crate) struct AuditedSaga {
    pub id: Uuid,
    pub saga_type: String,
    pub definition_version: u32,
    pub state: SagaState,
    pub steps: Vec<StepRecord>,
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A participant's ledger entries for one saga, keyed by (step, phase), with the name of the
/// participant that recorded each.
pub(crate) type SagaLedger<'a> = HashMap<(u32, Phase), (&'a str, &'a LedgerEntry)>;

/// How the rules are applied.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    pub now: DateTime<Utc>,
    /// Sagas running, compensating or parked for longer than this are findings; younger
    /// unfinished sagas are in flight, and their ledgers are not compared yet.
    pub unfinished_after: Duration,
}

fn phase_json(p: &PhaseRecord) -> Value {
    json!({
        "status": p.status,
        "attempt": p.attempt,
        "finished_at": p.finished_at,
        "last_error": p.last_error,
    })
}

/// The orchestrator's side of a finding: the saga's state and, for a step, its two phases.
pub(crate) fn orchestrator_json(saga: &AuditedSaga, step: Option<u32>) -> Value {
    let mut v = json!({
        "state": saga.state,
        "created_at": saga.created_at,
        "updated_at": saga.updated_at,
    });
    if let Some(reason) = &saga.failure_reason {
        v["failure_reason"] = json!(reason);
    }
    if let Some(record) = step.and_then(|i| saga.steps.get(i as usize)) {
        v["action"] = phase_json(&record.action);
        if let Some(c) = &record.compensation {
            v["compensation"] = phase_json(c);
        }
    }
    v
}

/// Checks one saga. `ledger` holds the entries of the participants that serve each step's topic;
/// `covered(topic)` says whether some participant serves it (steps of other topics are skipped:
/// the report lists them as not audited).
pub(crate) fn check_saga(
    definition: Option<&SagaDefinition>,
    saga: &AuditedSaga,
    ledger: &SagaLedger<'_>,
    covered: &dyn Fn(&str) -> Option<String>,
    rules: Rules,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let finding = |kind, step: Option<u32>, phase, participant: Option<String>, message: String| {
        let step_name = step.and_then(|i| {
            definition
                .and_then(|d| d.steps.get(i as usize))
                .map(|s| s.name.clone())
        });
        let entries: Vec<&LedgerEntry> = match step {
            Some(i) => [Phase::Action, Phase::Compensation]
                .iter()
                .filter_map(|p| ledger.get(&(i, *p)).map(|(_, e)| *e))
                .collect(),
            None => Vec::new(),
        };
        Finding {
            kind,
            saga_id: Some(saga.id),
            saga_type: saga.saga_type.clone(),
            step,
            step_name,
            phase,
            participant,
            message,
            orchestrator: orchestrator_json(saga, step),
            participant_record: json!(entries),
        }
    };
    let age = rules.now - saga.updated_at;
    if !saga.state.is_terminal() {
        if rules.now - saga.created_at > rules.unfinished_after {
            findings.push(finding(
                FindingKind::Unfinished,
                None,
                None,
                None,
                format!(
                    "{} since {} (started {})",
                    saga.state,
                    saga.updated_at.to_rfc3339(),
                    saga.created_at.to_rfc3339()
                ),
            ));
        }
        // In flight: the participants may be ahead of the orchestrator's record.
        return findings;
    }
    if saga.state == SagaState::Failed && age > rules.unfinished_after {
        findings.push(finding(
            FindingKind::Parked,
            None,
            None,
            None,
            format!(
                "parked as failed since {}: {}",
                saga.updated_at.to_rfc3339(),
                saga.failure_reason.as_deref().unwrap_or("no reason recorded")
            ),
        ));
    }
    let Some(definition) = definition else {
        return findings;
    };
    for (i, (record, step)) in saga.steps.iter().zip(&definition.steps).enumerate() {
        let Some(participant) = covered(&step.participant) else {
            continue;
        };
        let i = i as u32;
        let action = ledger.get(&(i, Phase::Action)).map(|(_, e)| *e);
        let undo = ledger.get(&(i, Phase::Compensation)).map(|(_, e)| *e);
        let applied = action.is_some_and(|e| e.outcome == LedgerOutcome::Succeeded);
        let undone = undo.is_some_and(|e| e.outcome.is_success());
        let shown = |e: Option<&LedgerEntry>| match e {
            Some(e) => format!("{} {}", e.command_type, e.outcome.as_str()),
            None => "no record".to_owned(),
        };
        let mut report = |kind, phase, message| {
            findings.push(finding(
                kind,
                Some(i),
                Some(phase),
                Some(participant.clone()),
                message,
            ));
        };
        match record.action.status {
            PhaseStatus::Succeeded if !applied => report(
                FindingKind::MissingSuccess,
                Phase::Action,
                format!(
                    "the orchestrator recorded {} as succeeded; {participant} has {}",
                    step.action,
                    shown(action)
                ),
            ),
            PhaseStatus::Rejected | PhaseStatus::Pending | PhaseStatus::Skipped if applied && !undone => {
                report(
                    FindingKind::EndedDifferently,
                    Phase::Action,
                    format!(
                        "{participant} applied {} but the orchestrator recorded it as {} and the saga {}",
                        step.action,
                        status_word(record.action.status),
                        saga.state
                    ),
                )
            }
            _ => {}
        }
        let compensation = record.compensation.as_ref();
        let undo_recorded = compensation.is_some_and(|c| c.status == PhaseStatus::Succeeded);
        let undo_owed = saga.state == SagaState::Compensated && applied;
        if (undo_recorded || undo_owed) && !undone {
            report(
                FindingKind::MissingCompensation,
                Phase::Compensation,
                format!(
                    "{} {}; {participant} has {} for {}",
                    step.compensation.as_deref().unwrap_or("the compensation"),
                    if undo_recorded {
                        "was recorded as succeeded by the orchestrator"
                    } else {
                        "is owed: the action took effect and the saga is compensated"
                    },
                    shown(undo),
                    step.compensation.as_deref().unwrap_or("it"),
                ),
            );
        } else if !undo_recorded
            && undo.is_some_and(|e| e.outcome == LedgerOutcome::Succeeded)
            && saga.state == SagaState::Completed
        {
            report(
                FindingKind::EndedDifferently,
                Phase::Compensation,
                format!(
                    "{participant} undid {} ({}) but the saga completed",
                    step.action,
                    shown(undo)
                ),
            );
        }
    }
    findings
}

fn status_word(s: PhaseStatus) -> &'static str {
    match s {
        PhaseStatus::Rejected => "refused",
        PhaseStatus::Pending => "never sent",
        PhaseStatus::Skipped => "skipped",
        _ => "not succeeded",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    fn entry(saga: Uuid, step: u32, phase: Phase, outcome: LedgerOutcome) -> LedgerEntry {
        LedgerEntry {
            saga_id: saga,
            step,
            phase,
            command_type: "X".into(),
            outcome,
            reason: None,
            reply: None,
            message_id: "m".into(),
            duplicates: 0,
            recorded_at: Utc::now(),
        }
    }

    fn phase(status: PhaseStatus) -> PhaseRecord {
        PhaseRecord {
            status,
            ..PhaseRecord::pending()
        }
    }

    fn saga(state: SagaState, steps: &[(PhaseStatus, PhaseStatus)]) -> AuditedSaga {
        AuditedSaga {
            id: Uuid::now_v7(),
            saga_type: "register_user".into(),
            definition_version: 1,
            state,
            steps: steps
                .iter()
                .map(|(a, c)| StepRecord {
                    action: phase(*a),
                    compensation: Some(phase(*c)),
                    completion: None,
                    child: None,
                })
                .collect(),
            failure_reason: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn run(saga: &AuditedSaga, entries: &[LedgerEntry]) -> Vec<FindingKind> {
        let catalog = Catalog::builtin().expect("catalog");
        let def = catalog.get("register_user", 1).cloned();
        let ledger: SagaLedger<'_> = entries.iter().map(|e| ((e.step, e.phase), ("p", e))).collect();
        let rules = Rules {
            now: Utc::now(),
            unfinished_after: Duration::minutes(15),
        };
        check_saga(def.as_deref(), saga, &ledger, &|t| Some(t.to_owned()), rules)
            .into_iter()
            .map(|f| f.kind)
            .collect()
    }

    use LedgerOutcome as L;
    use PhaseStatus as S;

    #[test]
    fn agreeing_records_give_no_findings() {
        let s = saga(
            SagaState::Completed,
            &[(S::Succeeded, S::Pending), (S::Succeeded, S::Pending)],
        );
        let ok = [
            entry(s.id, 0, Phase::Action, L::Succeeded),
            entry(s.id, 1, Phase::Action, L::Succeeded),
        ];
        assert_eq!(run(&s, &ok), vec![]);
        let c = saga(
            SagaState::Compensated,
            &[(S::Succeeded, S::Succeeded), (S::Rejected, S::Pending)],
        );
        let ok = [
            entry(c.id, 0, Phase::Action, L::Succeeded),
            entry(c.id, 0, Phase::Compensation, L::Succeeded),
            entry(c.id, 1, Phase::Action, L::BusinessFailure),
        ];
        assert_eq!(run(&c, &ok), vec![]);
        // An abandoned action the participant never applied: its undo was a recorded no-op.
        let a = saga(
            SagaState::Compensated,
            &[(S::Abandoned, S::Succeeded), (S::Pending, S::Pending)],
        );
        assert_eq!(
            run(&a, &[entry(a.id, 0, Phase::Compensation, L::NoopCompensation)]),
            vec![]
        );
    }

    #[test]
    fn each_disagreement_is_named() {
        let s = saga(
            SagaState::Completed,
            &[(S::Succeeded, S::Pending), (S::Succeeded, S::Pending)],
        );
        let flipped = [
            entry(s.id, 0, Phase::Action, L::Succeeded),
            entry(s.id, 1, Phase::Action, L::BusinessFailure),
        ];
        assert_eq!(run(&s, &flipped), vec![FindingKind::MissingSuccess]);
        assert_eq!(run(&s, &flipped[..1]), vec![FindingKind::MissingSuccess]);

        let c = saga(
            SagaState::Compensated,
            &[(S::Succeeded, S::Succeeded), (S::Rejected, S::Pending)],
        );
        let no_undo = [
            entry(c.id, 0, Phase::Action, L::Succeeded),
            entry(c.id, 1, Phase::Action, L::BusinessFailure),
        ];
        assert_eq!(run(&c, &no_undo), vec![FindingKind::MissingCompensation]);
        let applied_refused = [
            entry(c.id, 0, Phase::Action, L::Succeeded),
            entry(c.id, 0, Phase::Compensation, L::Succeeded),
            entry(c.id, 1, Phase::Action, L::Succeeded),
        ];
        assert_eq!(
            run(&c, &applied_refused),
            vec![FindingKind::EndedDifferently, FindingKind::MissingCompensation]
        );
        let undone = [
            entry(s.id, 0, Phase::Action, L::Succeeded),
            entry(s.id, 1, Phase::Action, L::Succeeded),
            entry(s.id, 1, Phase::Compensation, L::Succeeded),
        ];
        assert_eq!(run(&s, &undone), vec![FindingKind::EndedDifferently]);
    }

    #[test]
    fn unfinished_sagas_are_findings_only_past_the_threshold() {
        let mut r = saga(
            SagaState::Running,
            &[(S::Succeeded, S::Pending), (S::InFlight, S::Pending)],
        );
        assert_eq!(run(&r, &[]), vec![], "in flight: the ledgers may be ahead");
        r.created_at -= Duration::hours(1);
        assert_eq!(run(&r, &[]), vec![FindingKind::Unfinished]);
        let mut f = saga(
            SagaState::Failed,
            &[(S::Succeeded, S::Exhausted), (S::Rejected, S::Pending)],
        );
        let ledger = [
            entry(f.id, 0, Phase::Action, L::Succeeded),
            entry(f.id, 1, Phase::Action, L::BusinessFailure),
        ];
        assert_eq!(run(&f, &ledger), vec![]);
        f.updated_at -= Duration::hours(1);
        assert_eq!(run(&f, &ledger), vec![FindingKind::Parked]);
    }
}
