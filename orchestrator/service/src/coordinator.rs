//! The shell around the engine: load a saga, `decide`, then persist the decision — saga row,
//! history events and outbox rows — in one transaction. Used by the gRPC API (start), the reply
//! consumer (replies) and the timer loop (deadlines and retries).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use saga_engine::{
    Command, Decision, EngineError, Event, Input, Phase, Saga, SagaDefinition, SagaId, SagaState, decide,
    start,
};
use saga_runtime::outbox;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::catalog::Catalog;
use crate::clock::Clock;
use crate::store::{self, NewSaga, StoreError, StoredSaga};
use crate::wire::{self, IncomingReply, Routing};

/// How often a write that lost an optimistic-concurrency race is re-read and retried.
const CONFLICT_RETRIES: usize = 8;
/// Longest accepted idempotency key.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;

/// Why a saga could not be started. Each variant names the request field at fault.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("saga_type: required (one of: {known})")]
    MissingType { known: String },
    #[error("saga_type: unknown saga type `{given}` (known: {known})")]
    UnknownType { given: String, known: String },
    #[error("payload_json: {0}")]
    PayloadJson(String),
    #[error("payload_json.{field}: {problem}")]
    PayloadField { field: String, problem: String },
    #[error("idempotency_key: {0}")]
    BadKey(String),
    #[error("idempotency_key `{key}` was already used for a different request (saga {saga_id})")]
    KeyReused { key: String, saga_id: SagaId },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a reply (or another input) could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("no saga {0}")]
    UnknownSaga(SagaId),
    #[error("saga {id} is a {actual}, but the reply is for a {claimed}")]
    TypeMismatch {
        id: SagaId,
        actual: String,
        claimed: String,
    },
    #[error("saga {id} runs {saga_type} v{version}, which this orchestrator's catalog does not define")]
    DefinitionMissing {
        id: SagaId,
        saga_type: String,
        version: u32,
    },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ApplyError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

impl From<sqlx::Error> for StartError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

/// A started (or found again) saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    pub id: SagaId,
    /// False when the idempotency key matched an earlier identical request.
    pub created: bool,
}

/// What applying an input did.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub changed: bool,
    pub state: SagaState,
    /// The saga after the input, and its version.
    pub saga: Saga,
    pub version: i64,
    pub commands: Vec<Command>,
}

/// The outcome of a compensation replay for one saga.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplayOutcome {
    Replayed,
    WouldReplay,
    AlreadyInProgress,
    AlreadyCompensated,
    NotReplayable(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReplayReport {
    pub saga_id: SagaId,
    pub outcome: ReplayOutcome,
    pub commands: Vec<Command>,
}

pub struct Coordinator {
    pool: PgPool,
    catalog: Arc<Catalog>,
    routing: Routing,
    clock: Arc<dyn Clock>,
    max_payload_bytes: usize,
    /// New sagas on their way to the group writer.
    starts: mpsc::Sender<PendingStart>,
}

impl Coordinator {
    /// Must be called inside a Tokio runtime: it starts the task that writes new sagas.
    pub fn new(
        pool: PgPool,
        catalog: Arc<Catalog>,
        routing: Routing,
        clock: Arc<dyn Clock>,
        max_payload_bytes: usize,
    ) -> Self {
        let (starts, queue) = mpsc::channel(START_BATCH * 4);
        tokio::spawn(write_starts(pool.clone(), queue));
        Self {
            pool,
            catalog,
            routing,
            clock,
            max_payload_bytes,
            starts,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The shell's clock (the one sagas are stamped with).
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The prefix of deployed topic names.
    pub fn topic_prefix(&self) -> &str {
        &self.routing.topic_prefix
    }

    fn known_types(&self) -> String {
        self.catalog.names().join(", ")
    }

    /// Validates and starts a saga; with an idempotency key, a repeat of the same request returns
    /// the first saga's id instead of creating another.
    #[tracing::instrument(skip_all, fields(saga_type = saga_type, saga_id))]
    pub async fn start_saga(
        &self,
        saga_type: &str,
        payload_json: &str,
        key: Option<&str>,
    ) -> Result<Started, StartError> {
        if saga_type.is_empty() {
            return Err(StartError::MissingType {
                known: self.known_types(),
            });
        }
        let def = self
            .catalog
            .latest(saga_type)
            .ok_or_else(|| StartError::UnknownType {
                given: saga_type.chars().take(100).collect(),
                known: self.known_types(),
            })?;
        if payload_json.len() > self.max_payload_bytes {
            return Err(StartError::PayloadJson(format!(
                "{} bytes is over the {} byte limit",
                payload_json.len(),
                self.max_payload_bytes
            )));
        }
        let payload: Value = serde_json::from_str(payload_json)
            .map_err(|e| StartError::PayloadJson(format!("not valid JSON: {e}")))?;
        let mut context = def
            .validate_input(&payload)
            .map_err(|e| StartError::PayloadField {
                field: e.field,
                problem: e.problem,
            })?;
        if let Some(k) = key {
            validate_key(k)?;
        }
        // serde_json maps are ordered by key, so this serialization is canonical.
        let hash = request_hash(saga_type, &payload);
        if let Some(k) = key
            && let Some(found) = self.existing(k, &hash).await?
        {
            return Ok(found);
        }

        for id_field in &def.generated_ids {
            context.insert(id_field.clone(), Value::String(uuid::Uuid::now_v7().to_string()));
        }
        let id = SagaId::new_v7();
        tracing::Span::current().record("saga_id", tracing::field::display(id));
        let now = self.clock.now();
        let decision = start(def, id, context, now);
        let trace_context = saga_runtime::trace::current_headers();
        let causation = format!("start/{id}");
        let messages = decision
            .commands
            .iter()
            .map(|c| {
                let mut m = wire::command_message(&decision.saga, c, &causation, &self.routing);
                for (k, v) in &trace_context {
                    m.headers.entry(k.clone()).or_insert_with(|| v.clone());
                }
                m
            })
            .collect();
        let (done, written) = oneshot::channel();
        let pending = PendingStart {
            current_step: current_step_name(def, &decision.saga),
            saga: decision.saga.clone(),
            idempotency_key: key.map(str::to_owned),
            request_hash: hash.clone(),
            trace_context,
            events: decision.events.clone(),
            messages,
            done,
        };
        let inserted = match self.starts.send(pending).await {
            Ok(()) => written
                .await
                .unwrap_or_else(|_| Err(StoreError::Shared(Arc::new(sqlx::Error::PoolClosed)))),
            Err(_) => Err(StoreError::Shared(Arc::new(sqlx::Error::PoolClosed))),
        }?;
        if !inserted {
            // Lost a race with an identical concurrent request: answer like a repeat.
            let k = key.unwrap_or_default();
            return self
                .existing(k, &hash)
                .await?
                .ok_or(StartError::Store(StoreError::DuplicateKey));
        }
        observe(def, &decision, now);
        tracing::info!(saga_id = %id, saga_type, "saga started");
        Ok(Started { id, created: true })
    }

    /// The saga that already holds `key`: the same one if the request is identical, else an error.
    async fn existing(&self, key: &str, hash: &[u8]) -> Result<Option<Started>, StartError> {
        let mut conn = self.pool.acquire().await?;
        match store::find_by_key(&mut conn, key).await? {
            None => Ok(None),
            Some((id, stored)) if stored == hash => Ok(Some(Started { id, created: false })),
            Some((saga_id, _)) => Err(StartError::KeyReused {
                key: key.to_owned(),
                saga_id,
            }),
        }
    }

    /// Applies a batch of participant replies in one transaction: the sagas they name are loaded
    /// and locked with one statement (in id order, so concurrent batches cannot deadlock), each
    /// reply is decided in order (replies to the same saga see each other), and all sagas, history
    /// events and outbox rows are written with one statement each. Duplicates and stale replies
    /// change nothing but are recorded. Each reply's work runs in the span paired with it.
    ///
    /// Returns one result per reply; a reply that can never apply (unknown saga, wrong type, an
    /// engine refusal) is an `Err` in its place and the others still apply. `Err` for the whole
    /// call means nothing was written and the batch should be retried (the database is
    /// unavailable, or a saga's definition is missing from the catalog).
    pub async fn apply_replies(
        &self,
        batch: &[(IncomingReply, tracing::Span)],
    ) -> Result<Vec<Result<Applied, ApplyError>>, ApplyError> {
        let Some((first, _)) = batch.first() else {
            return Ok(Vec::new());
        };
        for _ in 0..CONFLICT_RETRIES {
            match self.try_apply_replies(batch).await {
                Err(ApplyError::Store(StoreError::Conflict(id))) => {
                    tracing::debug!(saga_id = %id, "write conflict in a reply batch; re-reading");
                }
                other => return other,
            }
        }
        Err(ApplyError::Store(StoreError::Conflict(first.saga_id)))
    }

    async fn try_apply_replies(
        &self,
        batch: &[(IncomingReply, tracing::Span)],
    ) -> Result<Vec<Result<Applied, ApplyError>>, ApplyError> {
        let started = std::time::Instant::now();
        let mut tx = self.pool.begin().await?;
        let mut ids: Vec<SagaId> = batch.iter().map(|(r, _)| r.saga_id).collect();
        ids.sort_unstable();
        ids.dedup();
        // Each saga: as loaded (for the version), and as the replies so far left it.
        let mut sagas: HashMap<SagaId, (StoredSaga, Saga)> = store::lock_many(&mut tx, &ids)
            .await?
            .into_iter()
            .map(|s| (s.saga.id, (s.clone(), s.saga)))
            .collect();
        let now = self.clock.now();
        let actors: Vec<String> = batch
            .iter()
            .map(|(r, _)| {
                if r.participant.is_empty() {
                    "participant".to_owned()
                } else {
                    format!("participant:{}", r.participant)
                }
            })
            .collect();
        let mut results = Vec::with_capacity(batch.len());
        let mut decided: Vec<(&SagaDefinition, Decision)> = Vec::new();
        let mut events = Vec::new();
        let mut messages = Vec::new();
        for (i, (reply, span)) in batch.iter().enumerate() {
            let Some((stored, current)) = sagas.get_mut(&reply.saga_id) else {
                results.push(Err(ApplyError::UnknownSaga(reply.saga_id)));
                continue;
            };
            if !reply.saga_type.is_empty() && reply.saga_type != current.saga_type {
                results.push(Err(ApplyError::TypeMismatch {
                    id: current.id,
                    actual: current.saga_type.clone(),
                    claimed: reply.saga_type.clone(),
                }));
                continue;
            }
            let def = self.definition(stored)?;
            let decision = match decide(def, current, &Input::Reply(reply.reply.clone()), now) {
                Ok(d) => d,
                Err(e) => {
                    results.push(Err(e.into()));
                    continue;
                }
            };
            // Outbox rows carry the reply's trace context, so each command continues its own trace.
            let trace = span.in_scope(saga_runtime::trace::current_headers);
            messages.extend(decision.commands.iter().map(|c| {
                let mut m = wire::command_message(&decision.saga, c, &reply.message_id, &self.routing);
                for (k, v) in &trace {
                    m.headers.entry(k.clone()).or_insert_with(|| v.clone());
                }
                m
            }));
            span.in_scope(|| {
                tracing::debug!(changed = decision.changed, state = %decision.saga.state, "reply decided");
            });
            if decision.changed {
                *current = decision.saga.clone();
            }
            events.push((i, decision.saga.id, decision.events.clone()));
            results.push(Ok(Applied {
                changed: decision.changed,
                state: decision.saga.state,
                version: 0, // filled in below, once the number of writes per saga is known
                saga: decision.saga.clone(),
                commands: decision.commands.clone(),
            }));
            decided.push((def, decision));
        }
        // The final state of every saga that changed, written once.
        let mut updates = Vec::new();
        let mut current_steps = Vec::new();
        for (stored, current) in sagas.values() {
            if current != &stored.saga {
                let def = self.definition(stored)?;
                current_steps.push(current_step_name(def, current));
                updates.push((stored, current));
            }
        }
        let updates: Vec<store::SagaUpdate<'_>> = updates
            .iter()
            .zip(&current_steps)
            .map(|((stored, current), step)| store::SagaUpdate {
                saga: current,
                expected_version: stored.version,
                current_step: step.as_deref(),
            })
            .collect();
        store::update_many(&mut tx, &updates).await?;
        let rows: Vec<store::NewEvent<'_>> = events
            .iter()
            .flat_map(|(i, saga, evs)| {
                evs.iter().map(|event| store::NewEvent {
                    saga: *saga,
                    at: now,
                    actor: &actors[*i],
                    event,
                })
            })
            .collect();
        store::append_many(&mut tx, &rows).await?;
        outbox::enqueue(&mut tx, &messages).await?;
        tx.commit().await?;
        metrics::histogram!("reply_batch_seconds").record(started.elapsed().as_secs_f64());
        for (def, decision) in &decided {
            observe(def, decision, now);
        }
        // Versions as committed: each saga's loaded version plus the changes applied so far.
        let mut writes: HashMap<SagaId, i64> = HashMap::new();
        for applied in results.iter_mut().flatten() {
            let base = sagas.get(&applied.saga.id).map_or(0, |(s, _)| s.version);
            let n = writes.entry(applied.saga.id).or_default();
            // All of a batch's changes to one saga are one row write: one version step.
            if applied.changed {
                *n = 1;
            }
            applied.version = base + *n;
        }
        Ok(results)
    }

    /// Applies an operator action; the operator is recorded as the actor of its history events.
    #[tracing::instrument(skip_all, fields(saga_id = %id, operator = operator))]
    pub async fn act(&self, id: SagaId, input: &Input, operator: &str) -> Result<Applied, ApplyError> {
        let applied = self
            .apply(
                id,
                input,
                &format!("operator:{operator}"),
                &format!("operator/{operator}"),
            )
            .await?;
        tracing::info!(state = %applied.state, changed = applied.changed, "operator action applied");
        Ok(applied)
    }

    /// What `input` would do to the saga now, computed but not written (dry runs).
    pub async fn plan(&self, id: SagaId, input: &Input) -> Result<Decision, ApplyError> {
        let mut conn = self.pool.acquire().await?;
        let stored = store::load(&mut conn, id)
            .await?
            .ok_or(ApplyError::UnknownSaga(id))?;
        let def = self.definition(&stored)?;
        Ok(decide(def, &stored.saga, input, self.clock.now())?)
    }

    /// Replays the compensation of one saga (or, with `dry_run`, says what a replay would send).
    pub async fn replay(
        &self,
        id: SagaId,
        reason: &str,
        dry_run: bool,
        operator: &str,
    ) -> Result<ReplayReport, ApplyError> {
        let input = Input::ReplayCompensation {
            reason: reason.to_owned(),
        };
        let result = if dry_run {
            self.plan(id, &input)
                .await
                .map(|d| (d.changed, d.saga.state, d.commands))
        } else {
            self.act(id, &input, operator)
                .await
                .map(|a| (a.changed, a.state, a.commands))
        };
        let (outcome, commands) = match result {
            Ok((true, _, commands)) if dry_run => (ReplayOutcome::WouldReplay, commands),
            Ok((true, _, commands)) => (ReplayOutcome::Replayed, commands),
            Ok((false, SagaState::Compensated, _)) => (ReplayOutcome::AlreadyCompensated, vec![]),
            Ok((false, _, _)) => (ReplayOutcome::AlreadyInProgress, vec![]),
            Err(ApplyError::Engine(EngineError::NotAllowed(why))) => {
                (ReplayOutcome::NotReplayable(why), vec![])
            }
            Err(e) => return Err(e),
        };
        Ok(ReplayReport {
            saga_id: id,
            outcome,
            commands,
        })
    }

    /// Load → decide → persist (an operator's input), retried when another writer got there first.
    async fn apply(
        &self,
        id: SagaId,
        input: &Input,
        actor: &str,
        causation: &str,
    ) -> Result<Applied, ApplyError> {
        for _ in 0..CONFLICT_RETRIES {
            let mut tx = self.pool.begin().await?;
            let stored = store::load(&mut tx, id)
                .await?
                .ok_or(ApplyError::UnknownSaga(id))?;
            let def = self.definition(&stored)?;
            let now = self.clock.now();
            let decision = decide(def, &stored.saga, input, now)?;
            let span = saga_span("operator action", &stored);
            match self
                .persist(&mut tx, def, &stored, &decision, actor, causation, now)
                .instrument(span)
                .await
            {
                Ok(()) => {
                    tx.commit().await?;
                    observe(def, &decision, now);
                    return Ok(Applied {
                        changed: decision.changed,
                        state: decision.saga.state,
                        version: stored.version + i64::from(decision.changed),
                        saga: decision.saga,
                        commands: decision.commands,
                    });
                }
                Err(StoreError::Conflict(_)) => {
                    tracing::debug!(saga_id = %id, "write conflict; re-reading");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApplyError::Store(StoreError::Conflict(id)))
    }

    /// Wakes sagas whose deadline or retry time has come. Safe with several replicas: each
    /// transaction locks the rows it takes (`SKIP LOCKED`). Returns how many were woken.
    #[tracing::instrument(skip_all, fields(woken))]
    pub async fn wake_due(&self, limit: i64) -> Result<usize, ApplyError> {
        let now = self.clock.now();
        let mut tx = self.pool.begin().await?;
        let due = store::lock_due(&mut tx, now, limit).await?;
        let mut woken = Vec::with_capacity(due.len());
        for stored in &due {
            let decided = self
                .definition(stored)
                .and_then(|def| Ok((def, decide(def, &stored.saga, &Input::Wake, now)?)));
            match decided {
                Ok((def, decision)) => {
                    self.persist(&mut tx, def, stored, &decision, "timer", "timer", now)
                        .instrument(saga_span("timer", stored))
                        .await?;
                    woken.push((def, decision));
                }
                // Leave it due: it is retried every tick and reported until the deployment is fixed.
                Err(e) => tracing::error!(saga_id = %stored.saga.id, error = %e, "cannot wake saga"),
            }
        }
        tx.commit().await?;
        for (def, decision) in &woken {
            observe(def, decision, now);
        }
        tracing::Span::current().record("woken", woken.len());
        Ok(woken.len())
    }

    fn definition(&self, stored: &StoredSaga) -> Result<&SagaDefinition, ApplyError> {
        let s = &stored.saga;
        self.catalog
            .get(&s.saga_type, s.definition_version)
            .map(AsRef::as_ref)
            .ok_or_else(|| ApplyError::DefinitionMissing {
                id: s.id,
                saga_type: s.saga_type.clone(),
                version: s.definition_version,
            })
    }

    #[allow(clippy::too_many_arguments)]
    async fn persist(
        &self,
        tx: &mut PgConnection,
        def: &SagaDefinition,
        stored: &StoredSaga,
        decision: &Decision,
        actor: &str,
        causation: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if decision.changed {
            let current = current_step_name(def, &decision.saga);
            store::update(tx, &decision.saga, stored.version, current.as_deref()).await?;
        }
        self.record(tx, decision, actor, causation, now).await
    }

    /// History events and outbox rows of a decision.
    async fn record(
        &self,
        tx: &mut PgConnection,
        decision: &Decision,
        actor: &str,
        causation: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        store::append_events(tx, decision.saga.id, now, actor, &decision.events).await?;
        let messages: Vec<_> = decision
            .commands
            .iter()
            .map(|c| wire::command_message(&decision.saga, c, causation, &self.routing))
            .collect();
        outbox::enqueue(tx, &messages).await?;
        Ok(())
    }
}

/// Most new sagas written by one group transaction.
const START_BATCH: usize = 256;

/// A validated new saga, waiting for the group writer.
struct PendingStart {
    saga: Saga,
    idempotency_key: Option<String>,
    request_hash: Vec<u8>,
    current_step: Option<String>,
    trace_context: BTreeMap<String, String>,
    events: Vec<Event>,
    messages: Vec<outbox::OutboxMessage>,
    /// `Ok(false)`: the idempotency key was taken.
    done: oneshot::Sender<Result<bool, StoreError>>,
}

/// Group commit of new sagas: whatever `StartSaga` calls are waiting while a transaction runs are
/// written together by the next one (saga rows, history, outbox: one statement each), so under
/// load one commit serves many calls; an idle system writes each saga at once. Every call gets
/// its own answer; a database error fails every call of that transaction, and nothing of it is
/// written.
async fn write_starts(pool: PgPool, mut queue: mpsc::Receiver<PendingStart>) {
    let mut batch = Vec::with_capacity(START_BATCH);
    while queue.recv_many(&mut batch, START_BATCH).await > 0 {
        metrics::histogram!("start_batch_size").record(batch.len() as f64);
        match write_start_batch(&pool, &batch).await {
            Ok(inserted) => {
                for (p, ok) in batch.drain(..).zip(inserted) {
                    let _ = p.done.send(Ok(ok));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for p in batch.drain(..) {
                    let _ = p.done.send(Err(StoreError::Shared(e.clone())));
                }
            }
        }
    }
}

async fn write_start_batch(pool: &PgPool, batch: &[PendingStart]) -> Result<Vec<bool>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let new: Vec<NewSaga<'_>> = batch
        .iter()
        .map(|p| NewSaga {
            saga: &p.saga,
            idempotency_key: p.idempotency_key.as_deref(),
            request_hash: Some(&p.request_hash),
            current_step: p.current_step.as_deref(),
            trace_context: &p.trace_context,
        })
        .collect();
    let inserted = match store::insert_many(&mut tx, &new).await {
        Ok(i) => i,
        Err(StoreError::Database(e)) => return Err(e),
        Err(e) => return Err(sqlx::Error::Protocol(e.to_string())),
    };
    let events: Vec<store::NewEvent<'_>> = batch
        .iter()
        .zip(&inserted)
        .filter(|(_, ok)| **ok)
        .flat_map(|(p, _)| {
            p.events.iter().map(|event| store::NewEvent {
                saga: p.saga.id,
                at: p.saga.created_at,
                actor: "client",
                event,
            })
        })
        .collect();
    if let Err(e) = store::append_many(&mut tx, &events).await {
        return Err(match e {
            StoreError::Database(e) => e,
            other => sqlx::Error::Protocol(other.to_string()),
        });
    }
    let messages: Vec<outbox::OutboxMessage> = batch
        .iter()
        .zip(&inserted)
        .filter(|(_, ok)| **ok)
        .flat_map(|(p, _)| p.messages.iter().cloned())
        .collect();
    outbox::enqueue(&mut tx, &messages).await?;
    tx.commit().await?;
    Ok(inserted)
}

/// A span in the saga's trace, for work that did not arrive with the trace (timers, operators).
fn saga_span(what: &'static str, stored: &StoredSaga) -> tracing::Span {
    let span = tracing::info_span!("saga", otel.name = what, saga_id = %stored.saga.id, saga_type = %stored.saga.saga_type);
    saga_runtime::trace::continue_from(&span, &stored.trace_context);
    span
}

/// Saga metrics, derived from a committed decision's events.
fn observe(def: &SagaDefinition, decision: &Decision, now: DateTime<Utc>) {
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
            Event::CommandDispatched { .. } | Event::ReplaySkipped { .. } => {}
        }
    }
}

fn current_step_name(def: &SagaDefinition, saga: &Saga) -> Option<String> {
    saga.current_step()
        .and_then(|i| def.steps.get(i))
        .map(|s| s.name.clone())
}

fn request_hash(saga_type: &str, payload: &Value) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(saga_type.as_bytes());
    h.update([0]);
    h.update(payload.to_string().as_bytes());
    h.finalize().to_vec()
}

fn validate_key(key: &str) -> Result<(), StartError> {
    if key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(StartError::BadKey(format!(
            "{} characters is over the limit of {MAX_IDEMPOTENCY_KEY_LEN}",
            key.len()
        )));
    }
    if !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(StartError::BadKey(
            "only printable ASCII without spaces is allowed".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_hash_ignores_key_order_but_not_values() {
        let a = request_hash("t", &json!({"a": 1, "b": 2}));
        let b = request_hash("t", &serde_json::from_str(r#"{"b":2,"a":1}"#).expect("json"));
        assert_eq!(a, b);
        assert_ne!(a, request_hash("t", &json!({"a": 1, "b": 3})));
        assert_ne!(a, request_hash("u", &json!({"a": 1, "b": 2})));
    }

    #[test]
    fn keys_are_bounded_and_printable() {
        assert!(validate_key("order-42/retry").is_ok());
        assert!(validate_key("has space").is_err());
        assert!(validate_key("naïve").is_err());
        assert!(validate_key(&"k".repeat(201)).is_err());
    }
}
