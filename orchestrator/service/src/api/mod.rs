//! The `saga.v1.SagaOrchestrator` gRPC service. Every bad input is answered with a precise status
//! code and a message naming the field; operator actions check the caller first and change nothing
//! when refused.

pub mod audit;
pub mod convert;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use saga_engine::{EngineError, Input, SagaId};
use saga_proto::v1 as pb;
use saga_proto::v1::saga_orchestrator_server::SagaOrchestrator;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::auth::{Authenticator, bearer};
use crate::coordinator::{Applied, ApplyError, Coordinator, ReplayOutcome, ReplayReport, StartError};
use crate::settings::OperatorSettings;
use crate::store::{self, ListFilter, StoreError};
use crate::watch::{Changes, Event};
use convert::{filter, parse_id, planned, reason, saga_view, ts};

const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 500;
/// Sagas fetched per page while a bulk replay walks its filter.
const REPLAY_PAGE: i64 = 100;

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[derive(Clone)]
pub struct SagaApi {
    coordinator: Arc<Coordinator>,
    auth: Arc<Authenticator>,
    changes: Changes,
    operator: OperatorSettings,
    /// Ends watch streams, so an open watcher never holds up a shutdown.
    shutdown: CancellationToken,
    /// Runs `RunAudit`; `None` answers UNIMPLEMENTED.
    auditor: Option<Arc<crate::audit::Auditor>>,
}

impl SagaApi {
    pub fn new(
        coordinator: Arc<Coordinator>,
        auth: Arc<Authenticator>,
        changes: Changes,
        operator: OperatorSettings,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            coordinator,
            auth,
            changes,
            operator,
            shutdown,
            auditor: None,
        }
    }

    /// Serves `RunAudit` with `auditor`.
    pub fn with_auditor(mut self, auditor: Arc<crate::audit::Auditor>) -> Self {
        self.auditor = Some(auditor);
        self
    }

    async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, Status> {
        Ok(self
            .coordinator
            .pool()
            .acquire()
            .await
            .map_err(StoreError::from)?)
    }

    /// The full view of a saga, or NOT_FOUND.
    async fn view(&self, id: SagaId) -> Result<pb::SagaView, Status> {
        let mut conn = self.conn().await?;
        let stored = store::load(&mut conn, id)
            .await?
            .ok_or_else(|| Status::not_found(format!("no saga {id}")))?;
        let def = self
            .coordinator
            .catalog()
            .get(&stored.saga.saga_type, stored.saga.definition_version);
        Ok(saga_view(&stored, def.map(AsRef::as_ref)))
    }

    fn acted(&self, applied: Applied, def_lookup: bool) -> pb::OperatorActionResponse {
        let def = def_lookup
            .then(|| {
                self.coordinator
                    .catalog()
                    .get(&applied.saga.saga_type, applied.saga.definition_version)
            })
            .flatten();
        let stored = store::StoredSaga {
            saga: applied.saga,
            version: applied.version,
            idempotency_key: None,
            trace_context: Default::default(),
        };
        pb::OperatorActionResponse {
            saga: Some(saga_view(&stored, def.map(AsRef::as_ref))),
            commands: planned(&applied.commands, self.coordinator.topic_prefix()),
        }
    }

    fn replay_result(&self, r: ReplayReport) -> pb::ReplayResult {
        let (outcome, detail) = match r.outcome {
            ReplayOutcome::Replayed => (pb::ReplayOutcome::Replayed, String::new()),
            ReplayOutcome::WouldReplay => (pb::ReplayOutcome::WouldReplay, String::new()),
            ReplayOutcome::AlreadyInProgress => (
                pb::ReplayOutcome::AlreadyInProgress,
                "compensation is already in progress".into(),
            ),
            ReplayOutcome::AlreadyCompensated => (
                pb::ReplayOutcome::AlreadyCompensated,
                "the saga is already compensated".into(),
            ),
            ReplayOutcome::NotReplayable(why) => (pb::ReplayOutcome::NotReplayable, why),
        };
        pb::ReplayResult {
            saga_id: r.saga_id.to_string(),
            outcome: outcome as i32,
            detail,
            commands: planned(&r.commands, self.coordinator.topic_prefix()),
        }
    }
}

impl From<StartError> for Status {
    fn from(e: StartError) -> Self {
        match e {
            StartError::MissingType { .. }
            | StartError::UnknownType { .. }
            | StartError::PayloadJson(_)
            | StartError::PayloadField { .. }
            | StartError::BadKey(_) => Status::invalid_argument(e.to_string()),
            StartError::KeyReused { .. } => Status::already_exists(e.to_string()),
            StartError::Store(s) => s.into(),
        }
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(_) => Status::aborted(e.to_string()),
            StoreError::DuplicateKey => Status::already_exists(e.to_string()),
            StoreError::Shared(_) => {
                tracing::error!(error = %e, "saga store unavailable");
                Status::unavailable("the saga store is unavailable; retry later")
            }
            StoreError::Database(inner) => {
                tracing::error!(error = %inner, "saga store unavailable");
                Status::unavailable("the saga store is unavailable; retry later")
            }
            StoreError::Corrupt { .. } => {
                tracing::error!(error = %e, "corrupt saga row");
                Status::internal(e.to_string())
            }
        }
    }
}

impl From<ApplyError> for Status {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::UnknownSaga(id) => Status::not_found(format!("no saga {id}")),
            ApplyError::Engine(EngineError::NotAllowed(why)) => Status::failed_precondition(why),
            ApplyError::Engine(e @ EngineError::DefinitionMismatch { .. }) => Status::internal(e.to_string()),
            e @ (ApplyError::DefinitionMissing { .. } | ApplyError::TypeMismatch { .. }) => {
                Status::failed_precondition(e.to_string())
            }
            ApplyError::Store(s) => s.into(),
        }
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
                .coordinator
                .start_saga(&r.saga_type, &r.payload_json, key)
                .await?;
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
            self.auth.reader(bearer(request.metadata()))?;
            let id = parse_id("saga_id", &request.get_ref().saga_id)?;
            let saga = self.view(id).await?;
            let mut conn = self.conn().await?;
            let history = store::history(&mut conn, id).await?;
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
            self.auth.reader(bearer(request.metadata()))?;
            let r = request.into_inner();
            let page = match r.page_size {
                0 => DEFAULT_PAGE,
                n if n > MAX_PAGE => {
                    return Err(Status::invalid_argument(format!(
                        "page_size: at most {MAX_PAGE}, got {n}"
                    )));
                }
                n => n,
            };
            let mut filter = filter(r.filter.as_ref(), self.coordinator.catalog())?;
            if !r.page_token.is_empty() {
                filter.cursor = Some(parse_id("page_token", &r.page_token)?);
            }
            let mut conn = self.conn().await?;
            let rows = store::list(&mut conn, &filter, i64::from(page)).await?;
            let next_page_token = if rows.len() == page as usize {
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
        self.auth.reader(bearer(request.metadata()))?;
        let id = parse_id("saga_id", &request.get_ref().saga_id)?;
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
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
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
        self.auth.reader(bearer(request.metadata()))?;
        let filter = filter(request.get_ref().filter.as_ref(), self.coordinator.catalog())?;
        let mut changes = self.changes.subscribe();
        let (tx, rx) = mpsc::channel(64);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let received = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = changes.recv() => r,
                };
                match received {
                    Ok(Event::Changed(c)) if c.matches(&filter) => {
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

    async fn replay_compensation(
        &self,
        request: Request<pb::ReplayCompensationRequest>,
    ) -> Result<Response<pb::ReplayResult>, Status> {
        let span = rpc_span("ReplayCompensation", &request);
        async move {
            let caller = self.auth.operator(bearer(request.metadata()))?;
            let r = request.into_inner();
            let id = parse_id("saga_id", &r.saga_id)?;
            let reason = reason(&r.reason)?;
            let report = self
                .coordinator
                .replay(id, &reason, r.dry_run, &caller.name)
                .await?;
            if let ReplayOutcome::NotReplayable(why) = &report.outcome {
                return Err(Status::failed_precondition(why.clone()));
            }
            Ok(Response::new(self.replay_result(report)))
        }
        .instrument(span)
        .await
    }

    type ReplayCompensationsStream = Streamed<pb::ReplayResult>;

    async fn replay_compensations(
        &self,
        request: Request<pb::ReplayCompensationsRequest>,
    ) -> Result<Response<Self::ReplayCompensationsStream>, Status> {
        let caller = self.auth.operator(bearer(request.metadata()))?;
        let r = request.into_inner();
        let reason = reason(&r.reason)?;
        let mut filter: ListFilter = filter(r.filter.as_ref(), self.coordinator.catalog())?;
        match filter.state {
            None | Some(saga_engine::SagaState::Failed) => {
                filter.state = Some(saga_engine::SagaState::Failed)
            }
            Some(other) => {
                return Err(Status::invalid_argument(format!(
                    "filter.state: replay applies to failed sagas, not {other} ones"
                )));
            }
        }
        let o = &self.operator;
        let rate = match r.rate_per_second {
            0.0 => o.replay_rate_default,
            x if x.is_finite() && x > 0.0 && x <= o.replay_rate_max => x,
            x => {
                return Err(Status::invalid_argument(format!(
                    "rate_per_second: must be within (0, {}], got {x}",
                    o.replay_rate_max
                )));
            }
        };
        let limit = match r.limit {
            0 => o.replay_limit_default,
            n if n > o.replay_limit_max => {
                return Err(Status::invalid_argument(format!(
                    "limit: at most {}, got {n}",
                    o.replay_limit_max
                )));
            }
            n => n,
        };
        let (tx, rx) = mpsc::channel(32);
        let api = self.clone();
        let dry_run = r.dry_run;
        tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut done = 0u32;
            while done < limit {
                let page = async {
                    let mut conn = api.conn().await?;
                    Ok::<_, Status>(store::list(&mut conn, &filter, REPLAY_PAGE).await?)
                };
                let rows = match page.await {
                    Ok(rows) => rows,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                let Some(last) = rows.last() else { break };
                filter.cursor = Some(SagaId::from_uuid(last.id));
                for row in rows {
                    if done >= limit {
                        break;
                    }
                    if !dry_run {
                        pace.tick().await; // the rate limit: one replay per tick
                    }
                    let id = SagaId::from_uuid(row.id);
                    let result = match api.coordinator.replay(id, &reason, dry_run, &caller.name).await {
                        Ok(report) => Ok(api.replay_result(report)),
                        Err(e) => Err(Status::from(e)),
                    };
                    let failed = result.is_err();
                    if tx.send(result).await.is_err() || failed {
                        return; // the client hung up (the rest stays parked), or the store failed
                    }
                    done += 1;
                }
            }
            tracing::info!(replayed = done, dry_run, operator = %caller.name, "bulk compensation replay finished");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn retry_step(
        &self,
        request: Request<pb::RetryStepRequest>,
    ) -> Result<Response<pb::OperatorActionResponse>, Status> {
        let span = rpc_span("RetryStep", &request);
        async move {
            let caller = self.auth.operator(bearer(request.metadata()))?;
            let r = request.into_inner();
            let id = parse_id("saga_id", &r.saga_id)?;
            let input = Input::RetryStep {
                step: r.step_index.map(|s| s as usize),
                reason: reason(&r.reason)?,
            };
            let applied = self.coordinator.act(id, &input, &caller.name).await?;
            Ok(Response::new(self.acted(applied, true)))
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
            let caller = self.auth.operator(bearer(request.metadata()))?;
            let r = request.into_inner();
            let id = parse_id("saga_id", &r.saga_id)?;
            let input = Input::Abort {
                reason: reason(&r.reason)?,
            };
            let applied = self.coordinator.act(id, &input, &caller.name).await?;
            Ok(Response::new(self.acted(applied, true)))
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
            self.auth.reader(bearer(request.metadata()))?;
            let auditor = self
                .auditor
                .as_ref()
                .ok_or_else(|| Status::unimplemented("this orchestrator runs no audits"))?;
            Ok(Response::new(audit::run(auditor, request.into_inner()).await?))
        }
        .instrument(span)
        .await
    }
}
