//! What the orchestrator offers its callers, whatever the transport: the gRPC service
//! ([`crate::grpc`]) and the dashboard's HTTP API ([`crate::dashboard`]) both turn their requests
//! into the parsed types of [`request`], call the operations of [`Api`], and answer its
//! [`ApiError`]s through one mapping each. Authorisation, the rules of each request and the
//! refusals are therefore the same on both.
//!
//! Layout:
//! - this file: [`Api`], the operations (reads, operator actions, jobs);
//! - [`request`]: the parsed request types and the parsing rules;
//! - [`error`]: [`ApiError`] and its mappings to gRPC and HTTP.

pub(crate) mod error;
pub(crate) mod request;

use std::sync::Arc;

use saga_engine::{Command, EngineError, Input, Phase, SagaId};
use serde::Serialize;
use uuid::Uuid;

pub(crate) use error::{ApiError, ErrorKind};
use request::{
    AbortRequest, ApprovalRequest, BulkJobRequest, BulkReplayRequest, CancelJobRequest, HoldRequest,
    ListRequest, ReplayRequest, RetryRequest, SignalRequest,
};

use crate::auth::{Authenticator, Caller};
use crate::coordinator::{Applied, ApplyError, Coordinator, ReplayOutcome, ReplayReport};
use crate::jobs::{self, Job, JobItem, JobParams};
use crate::settings::OperatorSettings;
use crate::store::{self, HistoryEntry, Hold, HoldChange, SagaSummary, StoredSaga};

/// A command an operator action sent, or would send.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub(crate) struct Planned {
    pub(crate) step: usize,
    pub(crate) step_name: String,
    pub(crate) phase: Phase,
    pub(crate) attempt: u32,
    pub(crate) command_type: String,
    /// The deployed topic.
    pub(crate) topic: String,
}

pub(crate) fn planned(commands: &[Command], topic_prefix: &str) -> Vec<Planned> {
    commands
        .iter()
        .map(|c| Planned {
            step: c.step,
            step_name: c.step_name.clone(),
            phase: c.phase,
            attempt: c.attempt,
            command_type: c.command_type.clone(),
            topic: format!("{topic_prefix}{}", c.participant),
        })
        .collect()
}

/// A bulk operation's dry run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct BulkPlan {
    /// Sagas the filter selects, counted up to the job's limit.
    pub(crate) count: u32,
    /// The count reached the limit: more may match than the job will handle.
    pub(crate) capped: bool,
    /// The first ten, newest first.
    pub(crate) sample: Vec<SagaSummary>,
}

/// The operations both transports serve.
#[derive(Clone)]
pub(crate) struct Api {
    coordinator: Arc<Coordinator>,
    auth: Arc<Authenticator>,
    operator: OperatorSettings,
    jobs: jobs::Wake,
}

impl Api {
    pub(crate) fn new(
        coordinator: Arc<Coordinator>,
        auth: Arc<Authenticator>,
        operator: OperatorSettings,
        jobs: jobs::Wake,
    ) -> Self {
        Self {
            coordinator,
            auth,
            operator,
            jobs,
        }
    }

    pub(crate) fn coordinator(&self) -> &Coordinator {
        &self.coordinator
    }

    pub(crate) fn auth(&self) -> &Authenticator {
        &self.auth
    }

    pub(crate) fn operator_settings(&self) -> &OperatorSettings {
        &self.operator
    }

    /// A read: allowed unless reads are protected and the caller has no credential.
    pub(crate) fn reader(&self, authorization: Option<&str>) -> Result<(), ApiError> {
        Ok(self.auth.reader(authorization)?)
    }

    /// An operator action: the caller, or the precise refusal.
    pub(crate) fn operator(&self, authorization: Option<&str>) -> Result<Caller, ApiError> {
        Ok(self.auth.operator(authorization)?)
    }

    /// One saga, or NOT_FOUND.
    pub(crate) async fn saga(&self, id: SagaId) -> Result<StoredSaga, ApiError> {
        let mut conn = self.coordinator.pool().acquire().await?;
        store::load(&mut conn, id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no saga {id}")))
    }

    pub(crate) async fn history(&self, id: SagaId) -> Result<Vec<HistoryEntry>, ApiError> {
        let mut conn = self.coordinator.pool().acquire().await?;
        Ok(store::history(&mut conn, id).await?)
    }

    /// A saga's business keys (name, value) and its legal hold, if any.
    pub(crate) async fn lifecycle(
        &self,
        id: SagaId,
    ) -> Result<(Vec<(String, String)>, Option<Hold>), ApiError> {
        let mut conn = self.coordinator.pool().acquire().await?;
        let keys = store::keys_of(&mut conn, id).await?;
        Ok((keys, store::hold_of(&mut conn, id).await?))
    }

    /// One page of sagas. A search (see [`ListRequest::search`]) tries its readings in turn and
    /// answers with the first that finds something.
    pub(crate) async fn list(&self, request: &ListRequest) -> Result<Vec<SagaSummary>, ApiError> {
        let mut conn = self.coordinator.pool().acquire().await?;
        let mut filter = request.filter.clone();
        let Some(q) = request.search.as_deref().map(str::trim) else {
            return Ok(store::list(&mut conn, &filter, request.page).await?);
        };
        let catalog = self.coordinator.catalog();
        if let Some((name, value)) = q.split_once('=')
            && catalog.search_keys(None).contains(name.trim())
        {
            let key = request::key_filter(catalog, None, Some(name.trim()), value.trim(), false)?;
            filter.keys.push(key);
            return Ok(store::list(&mut conn, &filter, request.page).await?);
        }
        if let Ok(range) = store::id_range(q) {
            filter.ids = Some(range);
            let rows = store::list(&mut conn, &filter, request.page).await?;
            if !rows.is_empty() {
                return Ok(rows);
            }
            filter.ids = None;
        }
        filter.idempotency_key = Some(q.to_owned());
        let rows = store::list(&mut conn, &filter, request.page).await?;
        if !rows.is_empty() || q.is_empty() || q.len() > saga_engine::MAX_SEARCH_KEY_BYTES {
            return Ok(rows);
        }
        filter.idempotency_key = None;
        filter
            .keys
            .push(request::key_filter(catalog, None, None, q, false)?);
        Ok(store::list(&mut conn, &filter, request.page).await?)
    }

    /// The next page of an export: the documents of up to `page` sagas after the filter's
    /// cursor (oldest first), the cursor moved past them.
    pub(crate) async fn export_page(
        &self,
        filter: &mut store::ListFilter,
        page: i64,
    ) -> Result<Vec<serde_json::Value>, ApiError> {
        let mut conn = self.coordinator.pool().acquire().await?;
        let rows = store::list(&mut conn, filter, page).await?;
        let Some(last) = rows.last() else {
            return Ok(Vec::new());
        };
        filter.cursor = Some(SagaId::from_uuid(last.id));
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        Ok(store::export_many(&mut conn, &ids).await?)
    }

    /// Places a legal hold (retention never removes a held saga). Placing one on a saga already
    /// held changes nothing and answers with the hold in place.
    pub(crate) async fn hold(&self, caller: &Caller, r: HoldRequest) -> Result<(Hold, bool), ApiError> {
        let mut conn = self.coordinator.pool().acquire().await?;
        let now = self.coordinator.now();
        match store::place_hold(&mut conn, r.saga, &caller.name, r.reason.as_str(), now).await? {
            HoldChange::Done(hold) => {
                tracing::info!(saga_id = %r.saga, operator = %caller.name, reason = r.reason.as_str(), "legal hold placed");
                Ok((hold, true))
            }
            HoldChange::Unchanged(Some(hold)) => Ok((hold, false)),
            HoldChange::Unchanged(None) | HoldChange::NoSaga => {
                Err(ApiError::not_found(format!("no saga {}", r.saga)))
            }
        }
    }

    /// Releases a legal hold; a saga without one is FAILED_PRECONDITION. Answers with the hold
    /// released.
    pub(crate) async fn release(&self, caller: &Caller, r: HoldRequest) -> Result<Hold, ApiError> {
        let mut conn = self.coordinator.pool().acquire().await?;
        let now = self.coordinator.now();
        match store::release_hold(&mut conn, r.saga, &caller.name, r.reason.as_str(), now).await? {
            HoldChange::Done(hold) => {
                tracing::info!(saga_id = %r.saga, operator = %caller.name, reason = r.reason.as_str(), "legal hold released");
                Ok(hold)
            }
            HoldChange::Unchanged(_) => Err(ApiError::precondition(format!(
                "saga {} is not under legal hold",
                r.saga
            ))),
            HoldChange::NoSaga => Err(ApiError::not_found(format!("no saga {}", r.saga))),
        }
    }

    /// Replays one saga's compensation; a saga replay does not apply to is FAILED_PRECONDITION.
    pub(crate) async fn replay(&self, caller: &Caller, r: ReplayRequest) -> Result<ReplayReport, ApiError> {
        let report = self
            .coordinator
            .replay(r.saga, r.reason.as_str(), r.dry_run, &caller.name)
            .await?;
        match report.outcome {
            ReplayOutcome::NotReplayable(why) => Err(ApiError::precondition(why)),
            _ => Ok(report),
        }
    }

    pub(crate) async fn retry(&self, caller: &Caller, r: RetryRequest) -> Result<Applied, ApiError> {
        let input = Input::RetryStep {
            step: r.step,
            reason: r.reason.as_str().to_owned(),
        };
        Ok(self.coordinator.act(r.saga, &input, &caller.name).await?)
    }

    pub(crate) async fn abort(&self, caller: &Caller, r: AbortRequest) -> Result<Applied, ApiError> {
        let input = Input::Abort {
            reason: r.reason.as_str().to_owned(),
        };
        Ok(self.coordinator.act(r.saga, &input, &caller.name).await?)
    }

    /// Delivers a signal. A signal refused because the saga no longer waits for it, when the
    /// same key was already applied to this saga, is the repeat of a delivered signal: OK, and
    /// nothing changes.
    /// Signals need no operator credential (like StartSaga, they come from services); the
    /// history records them as sent by `signal-sender`.
    pub(crate) async fn signal(&self, r: SignalRequest) -> Result<Applied, ApiError> {
        let input = Input::Signal {
            signal: r.signal.clone(),
            payload: r.payload.clone(),
            key: r.key.clone(),
        };
        match self.coordinator.act(r.saga, &input, "signal-sender").await {
            Err(ApplyError::Engine(EngineError::NotAllowed(why))) => match &r.key {
                Some(key) if self.coordinator.signal_applied(r.saga, key).await? => {
                    Ok(self.coordinator.unchanged(r.saga).await?)
                }
                _ => Err(ApiError::precondition(why)),
            },
            other => Ok(other?),
        }
    }

    pub(crate) async fn approval(&self, caller: &Caller, r: ApprovalRequest) -> Result<Applied, ApiError> {
        let input = Input::Approval {
            step: r.step,
            approved: r.approved,
            by: caller.name.clone(),
            reason: r.reason.as_str().to_owned(),
        };
        Ok(self.coordinator.act(r.saga, &input, &caller.name).await?)
    }

    /// A bulk replay's dry run: what each selected saga's replay would send, computed now, up
    /// to the request's limit. Nothing is written.
    pub(crate) async fn plan_bulk_replay(
        &self,
        r: &BulkReplayRequest,
    ) -> Result<Vec<ReplayReport>, ApiError> {
        let mut filter = r.filter.clone();
        let mut reports = Vec::new();
        while reports.len() < r.limit as usize {
            let page = (r.limit as usize - reports.len()).min(100) as i64;
            let rows = {
                let mut conn = self.coordinator.pool().acquire().await?;
                store::list(&mut conn, &filter, page).await?
            };
            let Some(last) = rows.last() else { break };
            filter.cursor = Some(SagaId::from_uuid(last.id));
            for row in rows {
                let id = SagaId::from_uuid(row.id);
                reports.push(self.coordinator.replay(id, r.reason.as_str(), true, "").await?);
            }
        }
        Ok(reports)
    }

    /// Starts a bulk replay as a durable job; any replica works it (this one is woken now).
    pub(crate) async fn start_bulk_replay(
        &self,
        caller: &Caller,
        r: BulkReplayRequest,
    ) -> Result<Job, ApiError> {
        let params = JobParams {
            filter: r.filter,
            rate_per_second: r.rate_per_second,
            limit: r.limit,
        };
        let job = jobs::store::create(
            self.coordinator.pool(),
            jobs::REPLAY_COMPENSATIONS,
            &caller.name,
            r.reason.as_str(),
            &params,
        )
        .await?;
        tracing::info!(job_id = %job.id, operator = %caller.name, limit = r.limit, rate = r.rate_per_second, "bulk compensation replay started as a job");
        self.jobs.job_started();
        Ok(job)
    }

    pub(crate) async fn job(&self, id: Uuid) -> Result<Job, ApiError> {
        let mut conn = self.coordinator.pool().acquire().await?;
        Ok(jobs::store::get(&mut conn, id).await?)
    }

    /// Jobs newest first, after `before` when given.
    pub(crate) async fn jobs(&self, before: Option<Uuid>, page: i64) -> Result<Vec<Job>, ApiError> {
        let mut conn = self.coordinator.pool().acquire().await?;
        Ok(jobs::store::list(&mut conn, before, page).await?)
    }

    /// A job's items after sequence number `after`, in the order handled (NOT_FOUND for no job).
    pub(crate) async fn job_items(&self, id: Uuid, after: i32, page: i64) -> Result<Vec<JobItem>, ApiError> {
        let mut conn = self.coordinator.pool().acquire().await?;
        let items = jobs::store::items(&mut conn, id, after, page).await?;
        if items.is_empty() {
            jobs::store::get(&mut conn, id).await?;
        }
        Ok(items)
    }

    /// A bulk operation's dry run: how many sagas it would handle (counted up to its limit) and
    /// the first ten. Nothing changes.
    pub(crate) async fn plan_bulk(&self, r: &BulkJobRequest) -> Result<BulkPlan, ApiError> {
        let mut conn = self.coordinator.pool().acquire().await?;
        let count = store::count(&mut conn, &r.filter, i64::from(r.limit)).await?;
        let sample = store::list(&mut conn, &r.filter, 10).await?;
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        Ok(BulkPlan {
            count,
            capped: count >= r.limit,
            sample,
        })
    }

    /// Starts a bulk operation as a durable job; it must be confirmed (after its plan).
    pub(crate) async fn start_bulk(&self, caller: &Caller, r: BulkJobRequest) -> Result<Job, ApiError> {
        if !r.confirmed {
            return Err(ApiError::precondition(
                "a bulk job needs confirmation: look at its plan (PlanBulkJob, or sagactl without \
                 --yes), then start it with confirmed = true",
            ));
        }
        let params = JobParams {
            filter: r.filter,
            rate_per_second: r.rate_per_second,
            limit: r.limit,
        };
        let job = jobs::store::create(
            self.coordinator.pool(),
            r.kind.as_str(),
            &caller.name,
            r.reason.as_str(),
            &params,
        )
        .await?;
        tracing::info!(job_id = %job.id, kind = job.kind, operator = %caller.name, limit = r.limit, rate = r.rate_per_second, "bulk job started");
        self.jobs.job_started();
        Ok(job)
    }

    /// Pauses a running job (`pause`) or resumes a paused one.
    pub(crate) async fn pause_job(
        &self,
        caller: &Caller,
        r: CancelJobRequest,
        pause: bool,
    ) -> Result<Job, ApiError> {
        let job = jobs::store::pause(
            self.coordinator.pool(),
            r.job,
            pause,
            &caller.name,
            r.reason.as_str(),
        )
        .await?;
        tracing::info!(job_id = %job.id, operator = %caller.name, state = %job.state, "job paused or resumed");
        if !pause {
            self.jobs.job_started();
        }
        Ok(job)
    }

    pub(crate) async fn cancel_job(&self, caller: &Caller, r: CancelJobRequest) -> Result<Job, ApiError> {
        let job =
            jobs::store::cancel(self.coordinator.pool(), r.job, &caller.name, r.reason.as_str()).await?;
        tracing::info!(job_id = %job.id, operator = %caller.name, processed = job.processed, "job cancelled");
        Ok(job)
    }
}
