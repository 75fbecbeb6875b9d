//! The consistency audit: the orchestrator's record of every saga created in a window against each
//! participant's inbox ledger, for every saga type, without opening a participant's database.
//!
//! Both sides are read in the same order — saga id (UUIDv7, so creation time), then step and
//! phase — and joined a page at a time: a page of sagas from the orchestrator's own `sagas` table,
//! then from each participant's `GET /audit/ledger` every entry up to that page's last saga id.
//! Memory holds one page of each, whatever the window's size.
//!
//! Layout:
//! - [`check`]: the rules, without I/O ([`check::check_saga`]).
//! - [`ledger`]: the HTTP client of a participant's audit endpoints.
//! - [`cross`]: the cross-checks, two participants' fact sets merge-joined key by key.
//! - `report`: what an audit is asked ([`AuditRequest`], [`AuditSettings`]) and answers
//!   ([`AuditReport`], [`AuditError`]).
//! - this module: [`Auditor::run`] and the periodic audit with its metrics.

pub(crate) mod check;
pub(crate) mod cross;
pub(crate) mod ledger;
mod report;

pub(crate) use report::{AuditError, AuditReport, AuditRequest, AuditSettings, Coverage};

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use saga_engine::StepRecord;
use saga_proto::ledger::{LedgerEntry, first_id_at};
use serde_json::json;
use sqlx::types::Json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::coordinator::Coordinator;
use crate::retention::RetentionSettings;
use check::{AuditedSaga, Finding, FindingKind, Rules, SagaLedger};
use ledger::{LedgerClient, LedgerError};

#[derive(sqlx::FromRow)]
struct SagaRow {
    id: Uuid,
    saga_type: String,
    definition_version: i32,
    state: String,
    steps: Json<Vec<StepRecord>>,
    failure_reason: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<SagaRow> for AuditedSaga {
    type Error = AuditError;

    fn try_from(r: SagaRow) -> Result<Self, AuditError> {
        Ok(AuditedSaga {
            state: r.state.parse().map_err(|e| AuditError::Corrupt(r.id, e))?,
            definition_version: u32::try_from(r.definition_version)
                .map_err(|_| AuditError::Corrupt(r.id, "negative definition version".into()))?,
            id: r.id,
            saga_type: r.saga_type,
            steps: r.steps.0,
            failure_reason: r.failure_reason,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// Runs audits; shared by the gRPC API, the dashboard and the periodic loop.
pub(crate) struct Auditor {
    coordinator: Arc<Coordinator>,
    settings: AuditSettings,
    participants: Vec<LedgerClient>,
    cross_checks: Vec<cross::CrossCheck>,
    retention: Option<RetentionSettings>,
    last: Mutex<Option<Arc<AuditReport>>>,
}

impl Auditor {
    /// Reads sagas through `coordinator`'s pool and catalog, and takes `now` from its clock.
    pub(crate) fn new(coordinator: Arc<Coordinator>, settings: AuditSettings) -> Result<Self, LedgerError> {
        let timeout = Duration::from_millis(settings.request_timeout_ms);
        let participants: Vec<LedgerClient> = settings
            .participants
            .iter()
            .map(|(name, url)| LedgerClient::new(name, url, timeout))
            .collect::<Result<_, _>>()?;
        let mut cross_checks = Vec::with_capacity(settings.cross_checks.len());
        for (name, pair) in &settings.cross_checks {
            for side in [&pair.left, &pair.right] {
                if !settings.participants.contains_key(&side.participant) {
                    return Err(LedgerError::UnknownParticipant {
                        check: name.clone(),
                        name: side.participant.clone(),
                        known: settings
                            .participants
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
            }
            cross_checks.push(cross::CrossCheck {
                name: name.clone(),
                left: pair.left.clone(),
                right: pair.right.clone(),
            });
        }
        Ok(Self {
            coordinator,
            settings,
            participants,
            cross_checks,
            retention: None,
            last: Mutex::new(None),
        })
    }

    /// The orchestrator's retention, when it runs: records participants keep of sagas it removed
    /// are not drift.
    pub(crate) fn with_retention(mut self, retention: Option<RetentionSettings>) -> Self {
        self.retention = retention;
        self
    }

    /// Sagas created before this may have been removed by retention (the shortest age of any
    /// saga type: a saga ends after it starts).
    fn retention_horizon(&self) -> Option<DateTime<Utc>> {
        self.retention.as_ref().map(|r| r.horizon(self.coordinator.now()))
    }

    fn catalog(&self) -> &Catalog {
        self.coordinator.catalog()
    }

    pub(crate) fn settings(&self) -> &AuditSettings {
        &self.settings
    }

    /// The latest completed audit's report (periodic or requested), if any ran.
    pub(crate) fn last(&self) -> Option<Arc<AuditReport>> {
        self.last.lock().ok().and_then(|l| l.clone())
    }

    /// One audit of `request`'s window; records the report as the latest and exports its metrics.
    #[tracing::instrument(skip_all, fields(since = %request.since, saga_type = request.saga_type.as_deref()))]
    pub(crate) async fn run(&self, request: &AuditRequest) -> Result<Arc<AuditReport>, AuditError> {
        let clock = Instant::now();
        let started_at = self.coordinator.now();
        let until = request.until.unwrap_or(started_at);
        if until <= request.since {
            return Err(AuditError::InvalidRequest(
                "until: must be later than since".into(),
            ));
        }
        if let Some(t) = &request.saga_type
            && self.catalog().latest(t).is_none()
        {
            return Err(AuditError::InvalidRequest(format!(
                "saga_type: unknown saga type `{t}` (known: {})",
                self.catalog().names().join(", ")
            )));
        }
        let unfinished_after = request
            .unfinished_after
            .unwrap_or(Duration::from_secs(self.settings.unfinished_after_secs));
        let rules = Rules {
            now: started_at,
            unfinished_after: chrono::Duration::from_std(unfinished_after)
                .map_err(|_| AuditError::InvalidRequest("unfinished_after: too large".into()))?,
        };
        let (from, to) = (first_id_at(request.since), first_id_at(until));
        let page = i64::from(self.settings.page_size.max(1));
        let mut readers: Vec<_> = self
            .participants
            .iter()
            .map(|p| p.reader(request.since, until, self.settings.page_size))
            .collect();
        let mut findings = Vec::new();
        let mut unaudited = BTreeSet::new();
        let (mut sagas_checked, mut ledger_entries) = (0u64, 0u64);
        let mut horizon;
        let mut removed = 0u64;
        let mut pruned_by_participants = 0u64;
        let mut after: Option<Uuid> = None;
        loop {
            let rows: Vec<SagaRow> = sqlx::query_as(
                "SELECT id, saga_type, definition_version, state, steps, failure_reason, created_at, updated_at \
                 FROM sagas WHERE id >= $1 AND id < $2 AND ($3::uuid IS NULL OR id > $3) \
                   AND ($4::text IS NULL OR saga_type = $4) \
                 ORDER BY id LIMIT $5",
            )
            .bind(from)
            .bind(to)
            .bind(after)
            .bind(request.saga_type.as_deref())
            .bind(page)
            .fetch_all(self.coordinator.pool())
            .await?;
            let last_page = rows.len() < page as usize;
            let sagas = rows
                .into_iter()
                .map(AuditedSaga::try_from)
                .collect::<Result<Vec<_>, _>>()?;
            // The last page reads the ledgers to the window's end.
            let through = if last_page {
                None
            } else {
                sagas.last().map(|s| s.id)
            };
            let mut entries: Vec<(usize, LedgerEntry)> = Vec::new();
            let mut domain = Vec::new();
            for (i, reader) in readers.iter_mut().enumerate() {
                let (e, d) = reader.read_through(through).await?;
                entries.extend(e.into_iter().map(|e| (i, e)));
                domain.extend(d.into_iter().map(|d| (i, d)));
            }
            ledger_entries += entries.len() as u64;
            sagas_checked += sagas.len() as u64;
            // Taken after the page's reads: a saga retention removed before them ended over an age
            // ago, so it was created before this horizon, even when the audit runs longer than
            // that age.
            horizon = self.retention_horizon();
            // Below a participant's dedup horizon its records may be gone (or going).
            let pruned: HashMap<&str, Uuid> = readers
                .iter()
                .filter_map(|r| r.pruned_before().map(|at| (r.name(), first_id_at(at))))
                .collect();
            findings.extend(
                self.check_page(&sagas, &entries, domain, &readers, rules, &mut unaudited)
                    .await?
                    .into_iter()
                    .filter(|f| {
                        // A record of a saga retention may have removed is not drift.
                        let gone = f.kind == FindingKind::UnknownSaga
                            && horizon.zip(f.saga_id).is_some_and(|(h, id)| id < first_id_at(h));
                        removed += u64::from(gone);
                        let pruned_away = matches!(
                            f.kind,
                            FindingKind::MissingSuccess
                                | FindingKind::MissingCompensation
                                | FindingKind::EndedDifferently
                        ) && f
                            .participant
                            .as_deref()
                            .and_then(|p| pruned.get(p))
                            .zip(f.saga_id)
                            .is_some_and(|(below, id)| id < *below);
                        pruned_by_participants += u64::from(pruned_away);
                        !gone && !pruned_away
                    }),
            );
            after = sagas.last().map(|s| s.id).or(after);
            if last_page {
                break;
            }
        }
        // Effects of the window no inbox claims, and the cross-checks (not for one saga type:
        // they belong to none).
        if request.saga_type.is_none() {
            findings.extend(self.cross_check().await?);
            for p in &self.participants {
                for effect in p.unclaimed(request.since, until, self.settings.page_size).await? {
                    findings.push(Finding {
                        kind: FindingKind::UnclaimedEffect,
                        saga_id: None,
                        saga_type: String::new(),
                        step: None,
                        step_name: None,
                        phase: None,
                        participant: Some(p.name().to_owned()),
                        message: format!("{}: {}", effect.check, effect.message),
                        orchestrator: serde_json::Value::Null,
                        participant_record: json!(effect),
                    });
                }
            }
        }
        findings.sort_by(|a, b| {
            (a.saga_id, a.kind, a.step, &a.message).cmp(&(b.saga_id, b.kind, b.step, &b.message))
        });
        let report = Arc::new(AuditReport {
            since: request.since,
            until,
            saga_type: request.saga_type.clone(),
            started_at,
            duration_seconds: clock.elapsed().as_secs_f64(),
            sagas_checked,
            ledger_entries,
            participants: readers.iter().map(|r| r.coverage()).collect(),
            unaudited_topics: unaudited.into_iter().collect(),
            retention_horizon: horizon,
            removed_by_retention: removed,
            pruned_by_participants,
            findings,
        });
        export_metrics(&report);
        if let Ok(mut last) = self.last.lock() {
            *last = Some(report.clone());
        }
        tracing::info!(
            sagas = report.sagas_checked,
            entries = report.ledger_entries,
            findings = report.findings.len(),
            seconds = report.duration_seconds,
            "consistency audit finished"
        );
        Ok(report)
    }

    /// Joins one page of sagas with the ledger entries up to its last saga.
    async fn check_page(
        &self,
        sagas: &[AuditedSaga],
        entries: &[(usize, LedgerEntry)],
        domain: Vec<(usize, saga_proto::ledger::DomainFinding)>,
        readers: &[ledger::LedgerReader<'_>],
        rules: Rules,
        unaudited: &mut BTreeSet<String>,
    ) -> Result<Vec<Finding>, AuditError> {
        let mut by_saga: HashMap<Uuid, SagaLedger<'_>> = HashMap::new();
        for (i, e) in entries {
            by_saga
                .entry(e.saga_id)
                .or_default()
                .insert((e.step, e.phase), (readers[*i].name(), e));
        }
        // Which participant serves a topic: learnt from the ledgers' answers.
        let topics: HashMap<&str, &str> = readers
            .iter()
            .filter_map(|r| r.topic().map(|t| (t, r.name())))
            .collect();
        let mut findings = Vec::new();
        let known: HashSet<Uuid> = sagas.iter().map(|s| s.id).collect();
        for saga in sagas {
            let definition = self.catalog().get(&saga.saga_type, saga.definition_version);
            if let Some(d) = definition {
                // Waits and child steps have no participant (a child is audited as its own saga).
                for step in d
                    .steps
                    .iter()
                    .filter(|s| s.kind() == saga_engine::StepKind::Participant)
                {
                    if !topics.contains_key(step.participant.as_str()) {
                        unaudited.insert(step.participant.clone());
                    }
                }
            }
            let empty = SagaLedger::new();
            let ledger = by_saga.get(&saga.id).unwrap_or(&empty);
            let covered = |topic: &str| topics.get(topic).map(|n| (*n).to_owned());
            findings.extend(check::check_saga(
                definition.map(|d| d.as_ref()),
                saga,
                ledger,
                &covered,
                rules,
            ));
        }
        // Ledger records of sagas not on this page: unknown to the orchestrator, or of another
        // saga type than the one audited (or created after the page was read).
        let strangers: Vec<Uuid> = by_saga.keys().filter(|id| !known.contains(id)).copied().collect();
        let existing: Vec<Uuid> = if strangers.is_empty() {
            Vec::new()
        } else {
            sqlx::query_scalar("SELECT id FROM sagas WHERE id = ANY($1)")
                .bind(&strangers)
                .fetch_all(self.coordinator.pool())
                .await?
        };
        for id in strangers.iter().filter(|id| !existing.contains(id)) {
            let ledger = &by_saga[id];
            let mut records: Vec<&LedgerEntry> = ledger.values().map(|(_, e)| *e).collect();
            records.sort_by_key(|e| (e.step, e.phase));
            let participants: BTreeSet<&str> = ledger.values().map(|(n, _)| *n).collect();
            findings.push(Finding {
                kind: FindingKind::UnknownSaga,
                saga_id: Some(*id),
                saga_type: String::new(),
                step: records.first().map(|e| e.step),
                step_name: None,
                phase: records.first().map(|e| e.phase),
                participant: Some(participants.into_iter().collect::<Vec<_>>().join(", ")),
                message: format!(
                    "the participant recorded {} for a saga the orchestrator does not know",
                    records
                        .iter()
                        .map(|e| format!("{} {}", e.command_type, e.outcome.as_str()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                orchestrator: serde_json::Value::Null,
                participant_record: json!(records),
            });
        }
        let sagas_by_id: HashMap<Uuid, &AuditedSaga> = sagas.iter().map(|s| (s.id, s)).collect();
        for (i, d) in domain {
            // Only sagas of this page: an unknown saga is reported as such (once), a saga of
            // another type than the one audited is not this audit's business, and the effects of
            // a saga in flight may not be complete yet.
            let Some(saga) = sagas_by_id.get(&d.saga_id).copied() else {
                continue;
            };
            if !saga.state.is_terminal() {
                continue;
            }
            let saga = Some(saga);
            let entry = by_saga
                .get(&d.saga_id)
                .and_then(|l| l.get(&(d.step, d.phase)))
                .map(|(_, e)| *e);
            let definition = saga.and_then(|s| self.catalog().get(&s.saga_type, s.definition_version));
            findings.push(Finding {
                kind: FindingKind::DomainCheck,
                saga_id: Some(d.saga_id),
                saga_type: saga.map(|s| s.saga_type.clone()).unwrap_or_default(),
                step: Some(d.step),
                step_name: definition
                    .and_then(|def| def.steps.get(d.step as usize))
                    .map(|s| s.name.clone()),
                phase: Some(d.phase),
                participant: Some(readers[i].name().to_owned()),
                message: format!("{}: {}", d.check, d.message),
                orchestrator: saga
                    .map(|s| check::orchestrator_json(s, Some(d.step)))
                    .unwrap_or(serde_json::Value::Null),
                participant_record: json!(entry.map(|e| vec![e]).unwrap_or_default()),
            });
        }
        Ok(findings)
    }

    /// Runs every configured cross-check: a merge-join of the two fact sets; when it finds
    /// disagreements, a second one after the settle delay, and what disagreed both times.
    async fn cross_check(&self) -> Result<Vec<Finding>, AuditError> {
        let client = |name: &str| {
            self.participants
                .iter()
                .find(|p| p.name() == name)
                .ok_or_else(|| AuditError::InvalidRequest(format!("no participant `{name}`")))
        };
        let mut candidates = Vec::with_capacity(self.cross_checks.len());
        for check in &self.cross_checks {
            let (left, right) = (
                client(&check.left.participant)?,
                client(&check.right.participant)?,
            );
            let compare = || {
                cross::compare(
                    left,
                    &check.left.facts,
                    right,
                    &check.right.facts,
                    self.settings.page_size,
                )
            };
            candidates.push((check, compare().await?, compare));
        }
        if candidates.iter().all(|(_, drift, _)| drift.is_empty()) {
            return Ok(Vec::new());
        }
        tokio::time::sleep(Duration::from_millis(self.settings.settle_ms)).await;
        let mut findings = Vec::new();
        for (check, first, compare) in candidates {
            if first.is_empty() {
                continue;
            }
            let second = compare().await?;
            for drift in cross::persisting(&first, second) {
                findings.push(Finding {
                    kind: FindingKind::ReplicaDrift,
                    saga_id: None,
                    saga_type: String::new(),
                    step: None,
                    step_name: None,
                    phase: None,
                    participant: Some(format!("{}, {}", check.left.participant, check.right.participant)),
                    message: cross::describe(check, &drift),
                    orchestrator: serde_json::Value::Null,
                    participant_record: json!({
                        "cross_check": check.name,
                        "key": drift.key,
                        "left": { "participant": check.left.participant, "facts": check.left.facts, "value": drift.left },
                        "right": { "participant": check.right.participant, "facts": check.right.facts, "value": drift.right },
                    }),
                });
            }
        }
        Ok(findings)
    }

    /// Runs an audit of the last `window_secs` every `interval_secs` until `shutdown` (the
    /// caller starts it only when `interval_secs` > 0). A failed audit is logged and counted.
    pub(crate) async fn run_periodically(self: Arc<Self>, shutdown: CancellationToken) {
        let every = Duration::from_secs(self.settings.interval_secs.max(1));
        let window =
            chrono::Duration::seconds(i64::try_from(self.settings.window_secs).unwrap_or(i64::MAX / 1000));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let request = AuditRequest {
                since: self.coordinator.now() - window,
                until: None,
                saga_type: None,
                unfinished_after: None,
            };
            if let Err(e) = self.run(&request).await {
                metrics::counter!("saga_audit_failures_total").increment(1);
                tracing::warn!(error = %e, "periodic consistency audit failed");
            }
        }
    }
}

/// `saga_audit_findings{kind}` (every kind, 0 when none) and
/// `saga_audit_last_run_timestamp_seconds`.
fn export_metrics(report: &AuditReport) {
    for (kind, n) in report.counts() {
        metrics::gauge!("saga_audit_findings", "kind" => kind).set(n as f64);
    }
    let finished =
        report.started_at + chrono::Duration::milliseconds((report.duration_seconds * 1000.0) as i64);
    metrics::gauge!("saga_audit_last_run_timestamp_seconds").set(finished.timestamp_millis() as f64 / 1000.0);
}
