//! The `saga.v1.SagaOrchestrator` gRPC service: protobuf in, [`Api`] operations, protobuf out.
//! Requests are parsed by the shared rules ([`crate::api::request`]) and refusals answered through
//! the one mapping of [`ApiError`] to status codes, so a bad request gets the same answer here as
//! over the dashboard's HTTP API; operator actions check the caller first and change nothing when
//! refused.

mod audit;
mod convert;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use saga_proto::v1 as pb;
use saga_proto::v1::saga_orchestrator_server::SagaOrchestrator;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::api::request::{
    self, AbortRequest, ApprovalRequest, BulkJobRequest, BulkReplayRequest, CancelJobRequest, HoldRequest,
    ListRequest, ReplayRequest, RetryRequest, SignalRequest,
};
use crate::api::{Api, ApiError, planned};
use crate::auth::bearer;
use crate::coordinator::Applied;
use crate::jobs::{JobKind, JobState};
use crate::store::{self, ListFilter, StoreError, StoredSaga};
use crate::watch::{Change, Changes, Event};
use convert::{filter, job_item_pb, job_pb, report_pb, saga_view, ts};

/// How often a ReplayCompensations stream looks for its job's new results.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A proto3 page size: 0 means unset.
fn page(n: u32) -> Result<i64, ApiError> {
    request::page_size((n != 0).then_some(n)).map_err(|e| e.in_field("page_size"))
}

/// tonic refuses a request message over its size limit (4 MiB) with OUT_OF_RANGE before any
/// handler runs. gRPC's convention for a message over the limit is RESOURCE_EXHAUSTED, and
/// OUT_OF_RANGE means an argument past a valid range, which no handler of this service answers
/// ([`ApiError`] has no such kind): so every OUT_OF_RANGE that comes back as headers only (the
/// shape of an answer given before a handler ran) is rewritten to RESOURCE_EXHAUSTED.
pub(crate) fn message_too_large_is_resource_exhausted<B>(
    mut response: axum::http::Response<B>,
) -> axum::http::Response<B> {
    let headers = response.headers_mut();
    if headers.get("grpc-status").is_some_and(|s| s.as_bytes() == b"11") {
        headers.insert("grpc-status", axum::http::HeaderValue::from_static("8"));
    }
    response
}

#[derive(Clone)]
pub(crate) struct SagaApi {
    api: Api,
    changes: Changes,
    /// Ends the streams, so an open watcher never holds up a shutdown.
    shutdown: CancellationToken,
    /// Runs `RunAudit`; `None` answers UNIMPLEMENTED.
    auditor: Option<Arc<crate::audit::Auditor>>,
}

impl SagaApi {
    pub(crate) fn new(api: Api, changes: Changes, shutdown: CancellationToken) -> Self {
        Self {
            api,
            changes,
            shutdown,
            auditor: None,
        }
    }

    /// Serves `RunAudit` with `auditor`.
    pub(crate) fn with_auditor(mut self, auditor: Arc<crate::audit::Auditor>) -> Self {
        self.auditor = Some(auditor);
        self
    }

    fn view_of(&self, stored: &StoredSaga) -> pb::SagaView {
        let def = self
            .api
            .coordinator()
            .catalog()
            .get(&stored.saga.saga_type, stored.saga.definition_version);
        saga_view(stored, def.map(AsRef::as_ref))
    }

    /// The full view of a saga, or NOT_FOUND.
    /// A saga's full view: its row, its business keys and its legal hold.
    async fn view(&self, id: saga_engine::SagaId) -> Result<pb::SagaView, ApiError> {
        let view = self.view_of(&self.api.saga(id).await?);
        let (keys, hold) = self.api.lifecycle(id).await?;
        Ok(convert::with_lifecycle(view, keys, hold))
    }

    fn acted(&self, applied: Applied) -> pb::OperatorActionResponse {
        let commands = planned(&applied.commands, self.api.coordinator().topic_prefix());
        let stored = StoredSaga {
            saga: applied.saga,
            version: applied.version,
            idempotency_key: None,
            trace_context: Default::default(),
        };
        pb::OperatorActionResponse {
            saga: Some(self.view_of(&stored)),
            commands: convert::planned_pb(&commands),
        }
    }

    fn bulk_request(&self, r: pb::ReplayCompensationsRequest) -> Result<BulkReplayRequest, ApiError> {
        let filter = filter(r.filter.as_ref(), self.api.coordinator().catalog())?;
        BulkReplayRequest::parse(
            filter,
            &r.reason,
            (r.rate_per_second != 0.0).then_some(r.rate_per_second),
            (r.limit != 0).then_some(r.limit),
            r.dry_run,
            self.api.operator_settings(),
        )
    }

    fn bulk_job(&self, r: pb::BulkJobRequest) -> Result<BulkJobRequest, ApiError> {
        let kind = match pb::BulkAction::try_from(r.action) {
            Ok(pb::BulkAction::ReplayCompensation) => Some(JobKind::ReplayCompensations),
            Ok(pb::BulkAction::Abort) => Some(JobKind::Abort),
            Ok(pb::BulkAction::Retry) => Some(JobKind::Retry),
            Ok(pb::BulkAction::Hold) => Some(JobKind::Hold),
            Ok(pb::BulkAction::Release) => Some(JobKind::Release),
            Ok(pb::BulkAction::Unspecified) | Err(_) => None,
        };
        let filter = filter(r.filter.as_ref(), self.api.coordinator().catalog())?;
        BulkJobRequest::parse(
            kind,
            filter,
            &r.reason,
            (r.rate_per_second != 0.0).then_some(r.rate_per_second),
            (r.limit != 0).then_some(r.limit),
            r.confirmed,
            self.api.operator_settings(),
        )
    }

    async fn pause_or_resume(
        &self,
        request: Request<pb::CancelJobRequest>,
        pause: bool,
    ) -> Result<Response<pb::Job>, Status> {
        let span = rpc_span(if pause { "PauseJob" } else { "ResumeJob" }, &request);
        async move {
            let caller = self.api.operator(bearer(request.metadata()))?;
            let r = request.into_inner();
            let job = self
                .api
                .pause_job(&caller, CancelJobRequest::parse(&r.job_id, &r.reason)?, pause)
                .await?;
            Ok(Response::new(job_pb(&job)))
        }
        .instrument(span)
        .await
    }

    /// The results of job `id` as it records them, until it ends.
    fn follow(&self, id: uuid::Uuid) -> ReceiverStream<Result<pb::ReplayResult, Status>> {
        let (tx, rx) = mpsc::channel(32);
        let (api, shutdown) = (self.api.clone(), self.shutdown.clone());
        tokio::spawn(async move {
            let mut seen = 0;
            loop {
                // The job's state before its items: once it has ended, the items read after it
                // are all it will ever have.
                let ended = match api.job(id).await {
                    Ok(job) => matches!(job.state, JobState::Completed | JobState::Cancelled),
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                let items = match api.job_items(id, seen, 500).await {
                    Ok(items) => items,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                let got = items.len();
                for item in items {
                    seen = item.seq;
                    let result = job_item_pb(&item).result.unwrap_or_default();
                    if tx.send(Ok(result)).await.is_err() {
                        return; // the client hung up; the job goes on
                    }
                }
                if ended && got == 0 {
                    return;
                }
                if got < 500 {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(FOLLOW_EVERY) => {}
                    }
                }
            }
        });
        ReceiverStream::new(rx)
    }
}

/// A server span for one RPC, continuing the caller's trace when it sent one.
fn rpc_span<T>(method: &'static str, request: &Request<T>) -> tracing::Span {
    let span = tracing::info_span!("rpc", otel.name = %format!("saga.v1.SagaOrchestrator/{method}"),
        otel.kind = "server", rpc.system = "grpc", rpc.method = method);
    saga_runtime::trace::continue_from_grpc(&span, request.metadata());
    span
}

#[tonic::async_trait]
impl SagaOrchestrator for SagaApi {
    async fn start_saga(
        &self,
        request: Request<pb::StartSagaRequest>,
    ) -> Result<Response<pb::StartSagaResponse>, Status> {
        let span = rpc_span("StartSaga", &request);
        async move {
            let r = request.into_inner();
            let key = (!r.idempotency_key.is_empty()).then_some(r.idempotency_key.as_str());
            let started = self
                .api
                .coordinator()
                .start_saga(&r.saga_type, &r.payload_json, key)
                .await
                .map_err(ApiError::from)?;
            Ok(Response::new(pb::StartSagaResponse {
                saga_id: started.id.to_string(),
                created: started.created,
            }))
        }
        .instrument(span)
        .await
    }

    async fn get_saga(
        &self,
        request: Request<pb::GetSagaRequest>,
    ) -> Result<Response<pb::GetSagaResponse>, Status> {
        let span = rpc_span("GetSaga", &request);
        async move {
            self.api.reader(bearer(request.metadata()))?;
            let id = request::saga_id("saga_id", &request.get_ref().saga_id)?;
            let saga = self.view(id).await?;
            let history = self.api.history(id).await?;
            Ok(Response::new(pb::GetSagaResponse {
                saga: Some(saga),
                history: history
                    .into_iter()
                    .map(|h| pb::SagaEvent {
                        seq: h.id,
                        at: Some(ts(h.at)),
                        kind: h.kind,
                        data_json: h.data.0.to_string(),
                        actor: h.actor,
                    })
                    .collect(),
            }))
        }
        .instrument(span)
        .await
    }

    async fn list_sagas(
        &self,
        request: Request<pb::ListSagasRequest>,
    ) -> Result<Response<pb::ListSagasResponse>, Status> {
        let span = rpc_span("ListSagas", &request);
        async move {
            self.api.reader(bearer(request.metadata()))?;
            let r = request.into_inner();
            let mut list = ListRequest {
                filter: filter(r.filter.as_ref(), self.api.coordinator().catalog())?,
                page: page(r.page_size)?,
                search: None,
            };
            if !r.page_token.is_empty() {
                list.filter.cursor = Some(request::saga_id("page_token", &r.page_token)?);
            }
            let rows = self.api.list(&list).await?;
            let next_page_token = if rows.len() as i64 == list.page {
                rows.last().map(|r| r.id.to_string()).unwrap_or_default()
            } else {
                String::new()
            };
            Ok(Response::new(pb::ListSagasResponse {
                sagas: rows.into_iter().map(convert::summary).collect(),
                next_page_token,
            }))
        }
        .instrument(span)
        .await
    }

    type WatchSagaStream = Streamed<pb::SagaView>;

    async fn watch_saga(
        &self,
        request: Request<pb::WatchSagaRequest>,
    ) -> Result<Response<Self::WatchSagaStream>, Status> {
        self.api.reader(bearer(request.metadata()))?;
        let id = request::saga_id("saga_id", &request.get_ref().saga_id)?;
        let mut changes = self.changes.subscribe(); // before reading, so no change slips between
        let first = self.view(id).await?;
        let (tx, rx) = mpsc::channel(16);
        let api = self.clone();
        tokio::spawn(async move {
            let mut version = first.version;
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            loop {
                let received = tokio::select! {
                    _ = api.shutdown.cancelled() => return,
                    r = changes.recv() => r,
                };
                let stale = match received {
                    Ok(Event::Changed(c)) => c.id == id.as_uuid() && c.version > version,
                    Ok(Event::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if !stale {
                    continue;
                }
                let view = match api.view(id).await {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                if view.version > version {
                    version = view.version;
                    if tx.send(Ok(view)).await.is_err() {
                        return; // the client hung up
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type WatchSagasStream = Streamed<pb::SagaSummary>;

    async fn watch_sagas(
        &self,
        request: Request<pb::WatchSagasRequest>,
    ) -> Result<Response<Self::WatchSagasStream>, Status> {
        self.api.reader(bearer(request.metadata()))?;
        let filter = filter(
            request.get_ref().filter.as_ref(),
            self.api.coordinator().catalog(),
        )?;
        let mut changes = self.changes.subscribe();
        let (tx, rx) = mpsc::channel(64);
        let shutdown = self.shutdown.clone();
        let pool = self.api.coordinator().pool().clone();
        tokio::spawn(async move {
            loop {
                let received = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = changes.recv() => r,
                };
                match received {
                    Ok(Event::Changed(c)) if c.matches(&filter) => {
                        // Keys and versions are not in the notification: one lookup for them.
                        match has_stored(&pool, &c, &filter).await {
                            Ok(true) => {}
                            Ok(false) => continue,
                            Err(e) => {
                                let _ = tx.send(Err(ApiError::from(e).into())).await;
                                return;
                            }
                        }
                        if tx.send(Ok(convert::change_summary(&c))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "a WatchSagas client fell behind; changes were skipped"
                        );
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ExportSagasStream = Streamed<pb::ExportedSaga>;

    async fn export_sagas(
        &self,
        request: Request<pb::ExportSagasRequest>,
    ) -> Result<Response<Self::ExportSagasStream>, Status> {
        self.api.reader(bearer(request.metadata()))?;
        let r = request.into_inner();
        let mut filter = filter(r.filter.as_ref(), self.api.coordinator().catalog())?;
        filter.ascending = true;
        let limit = if r.limit == 0 { u64::MAX } else { r.limit };
        let (tx, rx) = mpsc::channel(2);
        let (api, shutdown) = (self.api.clone(), self.shutdown.clone());
        tokio::spawn(async move {
            let mut sent = 0u64;
            while sent < limit && !shutdown.is_cancelled() {
                let page = (limit - sent).min(EXPORT_PAGE);
                let docs = match api.export_page(&mut filter, page as i64).await {
                    Ok(docs) => docs,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                if docs.is_empty() {
                    return;
                }
                for doc in docs {
                    sent += 1;
                    if tx
                        .send(Ok(pb::ExportedSaga {
                            json: doc.to_string(),
                        }))
                        .await
                        .is_err()
                    {
                        return; // the client hung up
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn replay_compensation(
        &self,
        request: Request<pb::ReplayCompensationRequest>,
    ) -> Result<Response<pb::ReplayResult>, Status> {
        let span = rpc_span("ReplayCompensation", &request);
        async move {
            let caller = self.api.operator(bearer(request.metadata()))?;
            let r = request.into_inner();
            let replay = ReplayRequest::parse(&r.saga_id, &r.reason, r.dry_run)?;
            let report = self.api.replay(&caller, replay).await?;
            Ok(Response::new(report_pb(
                &report,
                self.api.coordinator().topic_prefix(),
            )))
        }
        .instrument(span)
        .await
    }

    type ReplayCompensationsStream = Streamed<pb::ReplayResult>;

    async fn replay_compensations(
        &self,
        request: Request<pb::ReplayCompensationsRequest>,
    ) -> Result<Response<Self::ReplayCompensationsStream>, Status> {
        let caller = self.api.operator(bearer(request.metadata()))?;
        let bulk = self.bulk_request(request.into_inner())?;
        if bulk.dry_run {
            let prefix = self.api.coordinator().topic_prefix().to_owned();
            let reports = self.api.plan_bulk_replay(&bulk).await?;
            let results = reports.into_iter().map(move |r| Ok(report_pb(&r, &prefix)));
            return Ok(Response::new(Box::pin(futures::stream::iter(results))));
        }
        let job = self.api.start_bulk_replay(&caller, bulk).await?;
        let mut response: Response<Self::ReplayCompensationsStream> =
            Response::new(Box::pin(self.follow(job.id)));
        if let Ok(id) = MetadataValue::try_from(job.id.to_string()) {
            response.metadata_mut().insert("saga-job-id", id);
        }
        Ok(response)
    }

    async fn start_replay_job(
        &self,
        request: Request<pb::ReplayCompensationsRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let span = rpc_span("StartReplayJob", &request);
        async move {
            let caller = self.api.operator(bearer(request.metadata()))?;
            let bulk = self.bulk_request(request.into_inner())?;
            if bulk.dry_run {
                return Err(ApiError::invalid(
                    "dry_run: a dry run starts no job; ask ReplayCompensations for it",
                )
                .into());
            }
            Ok(Response::new(job_pb(
                &self.api.start_bulk_replay(&caller, bulk).await?,
            )))
        }
        .instrument(span)
        .await
    }

    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        self.api.reader(bearer(request.metadata()))?;
        let id = request::job_id("job_id", &request.get_ref().job_id)?;
        Ok(Response::new(job_pb(&self.api.job(id).await?)))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        self.api.reader(bearer(request.metadata()))?;
        let r = request.into_inner();
        let size = page(r.page_size)?;
        let before = (!r.page_token.is_empty())
            .then(|| request::job_id("page_token", &r.page_token))
            .transpose()?;
        let jobs = self.api.jobs(before, size).await?;
        let next_page_token = if jobs.len() as i64 == size {
            jobs.last().map(|j| j.id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListJobsResponse {
            jobs: jobs.iter().map(job_pb).collect(),
            next_page_token,
        }))
    }

    async fn list_job_items(
        &self,
        request: Request<pb::ListJobItemsRequest>,
    ) -> Result<Response<pb::ListJobItemsResponse>, Status> {
        self.api.reader(bearer(request.metadata()))?;
        let r = request.into_inner();
        let id = request::job_id("job_id", &r.job_id)?;
        let after = i32::try_from(r.after_seq).map_err(|_| ApiError::invalid("after_seq: too large"))?;
        let items = self.api.job_items(id, after, page(r.page_size)?).await?;
        Ok(Response::new(pb::ListJobItemsResponse {
            items: items.iter().map(job_item_pb).collect(),
        }))
    }

    async fn cancel_job(&self, request: Request<pb::CancelJobRequest>) -> Result<Response<pb::Job>, Status> {
        let span = rpc_span("CancelJob", &request);
        async move {
            let caller = self.api.operator(bearer(request.metadata()))?;
            let r = request.into_inner();
            let cancel = CancelJobRequest::parse(&r.job_id, &r.reason)?;
            Ok(Response::new(job_pb(
                &self.api.cancel_job(&caller, cancel).await?,
            )))
        }
        .instrument(span)
        .await
    }

    async fn retry_step(
        &self,
        request: Request<pb::RetryStepRequest>,
    ) -> Result<Response<pb::OperatorActionResponse>, Status> {
        let span = rpc_span("RetryStep", &request);
        async move {
            let caller = self.api.operator(bearer(request.metadata()))?;
            let r = request.into_inner();
            let retry = RetryRequest::parse(&r.saga_id, r.step_index, &r.reason)?;
            let applied = self.api.retry(&caller, retry).await?;
            Ok(Response::new(self.acted(applied)))
        }
        .instrument(span)
        .await
    }

    async fn abort_saga(
        &self,
        request: Request<pb::AbortSagaRequest>,
    ) -> Result<Response<pb::OperatorActionResponse>, Status> {
        let span = rpc_span("AbortSaga", &request);
        async move {
            let caller = self.api.operator(bearer(request.metadata()))?;
            let r = request.into_inner();
            let abort = AbortRequest::parse(&r.saga_id, &r.reason)?;
            let applied = self.api.abort(&caller, abort).await?;
            Ok(Response::new(self.acted(applied)))
        }
        .instrument(span)
        .await
    }

    async fn pause_job(&self, request: Request<pb::CancelJobRequest>) -> Result<Response<pb::Job>, Status> {
        self.pause_or_resume(request, true).await
    }

    async fn resume_job(&self, request: Request<pb::CancelJobRequest>) -> Result<Response<pb::Job>, Status> {
        self.pause_or_resume(request, false).await
    }

    async fn plan_bulk_job(
        &self,
        request: Request<pb::BulkJobRequest>,
    ) -> Result<Response<pb::BulkPlan>, Status> {
        let span = rpc_span("PlanBulkJob", &request);
        async move {
            self.api.operator(bearer(request.metadata()))?;
            let bulk = self.bulk_job(request.into_inner())?;
            let plan = self.api.plan_bulk(&bulk).await?;
            Ok(Response::new(pb::BulkPlan {
                count: plan.count,
                capped: plan.capped,
                sample: plan.sample.into_iter().map(convert::summary).collect(),
            }))
        }
        .instrument(span)
        .await
    }

    async fn start_bulk_job(
        &self,
        request: Request<pb::BulkJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let span = rpc_span("StartBulkJob", &request);
        async move {
            let caller = self.api.operator(bearer(request.metadata()))?;
            let bulk = self.bulk_job(request.into_inner())?;
            let job = self.api.start_bulk(&caller, bulk).await?;
            Ok(Response::new(job_pb(&job)))
        }
        .instrument(span)
        .await
    }

    async fn hold_saga(
        &self,
        request: Request<pb::HoldSagaRequest>,
    ) -> Result<Response<pb::HoldResponse>, Status> {
        let span = rpc_span("HoldSaga", &request);
        async move {
            let caller = self.api.operator(bearer(request.metadata()))?;
            let r = request.into_inner();
            let (hold, changed) = self
                .api
                .hold(&caller, HoldRequest::parse(&r.saga_id, &r.reason)?)
                .await?;
            Ok(Response::new(pb::HoldResponse {
                hold: Some(convert::hold_pb(hold)),
                changed,
            }))
        }
        .instrument(span)
        .await
    }

    async fn release_saga(
        &self,
        request: Request<pb::HoldSagaRequest>,
    ) -> Result<Response<pb::HoldResponse>, Status> {
        let span = rpc_span("ReleaseSaga", &request);
        async move {
            let caller = self.api.operator(bearer(request.metadata()))?;
            let r = request.into_inner();
            let hold = self
                .api
                .release(&caller, HoldRequest::parse(&r.saga_id, &r.reason)?)
                .await?;
            Ok(Response::new(pb::HoldResponse {
                hold: Some(convert::hold_pb(hold)),
                changed: true,
            }))
        }
        .instrument(span)
        .await
    }

    async fn signal_saga(
        &self,
        request: Request<pb::SignalSagaRequest>,
    ) -> Result<Response<pb::OperatorActionResponse>, Status> {
        let span = rpc_span("SignalSaga", &request);
        async move {
            let r = request.into_inner();
            let signal = SignalRequest::parse(&r.saga_id, &r.signal, &r.payload_json, &r.idempotency_key)?;
            let applied = self.api.signal(signal).await?;
            Ok(Response::new(self.acted(applied)))
        }
        .instrument(span)
        .await
    }

    async fn decide_approval(
        &self,
        request: Request<pb::DecideApprovalRequest>,
    ) -> Result<Response<pb::OperatorActionResponse>, Status> {
        let span = rpc_span("DecideApproval", &request);
        async move {
            let caller = self.api.operator(bearer(request.metadata()))?;
            let r = request.into_inner();
            let approval = ApprovalRequest::parse(&r.saga_id, r.approved, r.step_index, &r.reason)?;
            let applied = self.api.approval(&caller, approval).await?;
            Ok(Response::new(self.acted(applied)))
        }
        .instrument(span)
        .await
    }

    async fn run_audit(
        &self,
        request: Request<pb::RunAuditRequest>,
    ) -> Result<Response<pb::AuditReport>, Status> {
        let span = rpc_span("RunAudit", &request);
        async move {
            self.api.reader(bearer(request.metadata()))?;
            let auditor = self.auditor.as_ref().ok_or_else(|| {
                ApiError::new(
                    crate::api::ErrorKind::Unimplemented,
                    "this orchestrator runs no audits",
                )
            })?;
            Ok(Response::new(audit::run(auditor, request.into_inner()).await?))
        }
        .instrument(span)
        .await
    }
}

/// Sagas an export reads (and holds in memory) at a time.
const EXPORT_PAGE: u64 = 100;

/// Whether a changed saga meets the filter's conditions the notification cannot answer (always,
/// without a connection, for a filter that has none).
async fn has_stored(pool: &sqlx::PgPool, change: &Change, filter: &ListFilter) -> Result<bool, StoreError> {
    if filter.keys.is_empty() && filter.definition_version.is_none() {
        return Ok(true);
    }
    let mut conn = pool.acquire().await?;
    store::has_stored(&mut conn, change.id, filter).await
}
