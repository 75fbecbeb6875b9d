//! `StartSaga`: validate the request, answer a repeated idempotency key with the first saga, and
//! hand the new saga to the group-commit writer, which writes every waiting start in one
//! transaction.

use std::collections::BTreeMap;
use std::sync::Arc;

use saga_engine::{Decision, SagaId, start};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::admission::DB_WAIT;
use super::{Coordinator, current_step_name, fill_generated_ids, metrics};
use crate::store::{self, NewEvent, PendingInput, RowWrite, SagaWrite, StoreError};

/// Longest accepted idempotency key.
pub(super) const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;

/// Most new sagas written by one group transaction.
const START_BATCH: usize = 256;

/// Why a saga could not be started. Each variant names the request field at fault.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
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
    /// Too many sagas in flight (admission control).
    #[error(transparent)]
    Busy(#[from] super::admission::Busy),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for StartError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

/// A started (or found again) saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Started {
    pub id: SagaId,
    /// False when the idempotency key matched an earlier identical request.
    pub created: bool,
}

/// A validated new saga, waiting for the group writer.
pub(super) struct PendingStart {
    decision: Decision,
    idempotency_key: Option<String>,
    request_hash: Vec<u8>,
    current_step: Option<String>,
    trace_context: BTreeMap<String, String>,
    /// Search key values (name, value) to index.
    keys: Vec<(String, String)>,
    /// Its place among the sagas in flight, counted as written once the writer has written it.
    admitted: super::admission::Admitted,
    /// `Ok(false)`: the idempotency key was taken.
    done: oneshot::Sender<Result<bool, StoreError>>,
}

impl Coordinator {
    fn known_types(&self) -> String {
        self.catalog.names().join(", ")
    }

    /// Validates and starts a saga; with an idempotency key, a repeat of the same request returns
    /// the first saga's id instead of creating another.
    #[tracing::instrument(skip_all, fields(saga_type = saga_type, saga_id))]
    pub(crate) async fn start_saga(
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
        // A valid request, but the store did not answer lately: refused at once (see admission.rs).
        self.gate.check().map_err(|retry_after| {
            ::metrics::counter!("sagas_refused_total", "saga_type" => saga_type.to_owned(), "reason" => "store_down")
                .increment(1);
            StoreError::Down { retry_after }
        })?;
        // serde_json maps are ordered by key, so this serialization is canonical.
        let hash = request_hash(saga_type, &payload);
        if let Some(k) = key
            && let Some(found) = self.existing(k, &hash).await?
        {
            return Ok(found);
        }
        // A new saga: within the limits of sagas in flight (a repeat above adds nothing).
        let admitted = self.in_flight.admit(saga_type)?;

        fill_generated_ids(def, &mut context);
        let id = SagaId::new_v7();
        tracing::Span::current().record("saga_id", tracing::field::display(id));
        let now = self.clock.now();
        let decision = start(def, id, context, now);
        let (done, written) = oneshot::channel();
        let pending = PendingStart {
            current_step: current_step_name(def, &decision.saga),
            idempotency_key: key.map(str::to_owned),
            request_hash: hash.clone(),
            trace_context: saga_runtime::trace::current_headers(),
            keys: def
                .search_key_values(&decision.saga.context, false)
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value))
                .collect(),
            decision,
            admitted,
            done,
        };
        let stopped = || StoreError::Shared(Arc::new(StoreError::Database(sqlx::Error::PoolClosed)));
        let inserted = match self.starts.send(pending).await {
            Ok(()) => written.await.unwrap_or_else(|_| Err(stopped())),
            Err(_) => Err(stopped()),
        };
        let inserted = inserted?;
        if !inserted {
            // Lost a race with an identical concurrent request: answer like a repeat.
            let k = key.unwrap_or_default();
            return self
                .existing(k, &hash)
                .await?
                .ok_or(StartError::Store(StoreError::DuplicateKey));
        }
        tracing::info!(saga_id = %id, saga_type, "saga started");
        Ok(Started { id, created: true })
    }

    /// The saga that already holds `key`: the same one if the request is identical, else an error.
    async fn existing(&self, key: &str, hash: &[u8]) -> Result<Option<Started>, StartError> {
        let found = async {
            let mut conn = tokio::time::timeout(DB_WAIT, self.pool.acquire())
                .await
                .map_err(|_| sqlx::Error::PoolTimedOut)??;
            store::find_by_key(&mut conn, key).await
        }
        .await;
        self.gate.record(&found);
        match found? {
            None => Ok(None),
            Some((id, stored)) if stored == hash => Ok(Some(Started { id, created: false })),
            Some((saga_id, _)) => Err(StartError::KeyReused {
                key: key.to_owned(),
                saga_id,
            }),
        }
    }
}

/// The group commit of new sagas: whatever `StartSaga` calls are waiting while a transaction
/// runs are written together by the next one, so under load one commit serves many calls; an
/// idle system writes each saga at once. Every call gets its own answer; a database error fails
/// every call of that transaction, and nothing of it is written.
pub(crate) struct StartWriter {
    pool: PgPool,
    queue: mpsc::Receiver<PendingStart>,
}

impl StartWriter {
    pub(super) fn new(pool: PgPool) -> (mpsc::Sender<PendingStart>, Self) {
        let (starts, queue) = mpsc::channel(START_BATCH * 4);
        (starts, Self { pool, queue })
    }

    /// Writes new sagas until `shutdown`; then writes what is already queued, refuses what comes
    /// later, and returns. Between two writes, every `refresh_ms`, it counts the sagas in flight
    /// for the admission limits (when any is set): no write of this replica is half-way then.
    pub(crate) async fn run(mut self, coordinator: Arc<Coordinator>, shutdown: CancellationToken) {
        let in_flight = coordinator.in_flight().clone();
        let mut recount = tokio::time::interval(in_flight.refresh_every());
        recount.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(START_BATCH);
        loop {
            let received = tokio::select! {
                n = self.queue.recv_many(&mut batch, START_BATCH) => n,
                _ = recount.tick(), if in_flight.limited() => {
                    in_flight.recount(&self.pool).await;
                    continue;
                }
                _ = shutdown.cancelled() => {
                    self.queue.close();
                    self.queue.recv_many(&mut batch, START_BATCH).await
                }
            };
            if received == 0 {
                break;
            }
            self.write(&coordinator, &mut batch).await;
        }
        tracing::info!("start writer stopped");
    }

    /// One group transaction; answers every caller of `batch` and empties it.
    async fn write(&self, coordinator: &Coordinator, batch: &mut Vec<PendingStart>) {
        ::metrics::histogram!("start_batch_size").record(batch.len() as f64);
        let messages: Vec<_> = batch
            .iter()
            .map(|p| {
                let id = p.decision.saga.id;
                coordinator.messages(&p.decision, &format!("start/{id}"), &p.trace_context)
            })
            .collect();
        let writes: Vec<SagaWrite<'_>> = batch
            .iter()
            .zip(messages)
            .map(|(p, messages)| SagaWrite {
                saga: &p.decision.saga,
                row: RowWrite::Insert {
                    idempotency_key: p.idempotency_key.as_deref(),
                    request_hash: Some(&p.request_hash),
                    trace_context: &p.trace_context,
                },
                current_step: p.current_step.clone(),
                events: p
                    .decision
                    .events
                    .iter()
                    .map(|event| NewEvent {
                        at: p.decision.saga.created_at,
                        actor: "client",
                        event,
                    })
                    .collect(),
                messages,
                inputs: PendingInput::of(&p.decision),
                keys: p.keys.iter().map(|(n, v)| (n.as_str(), v.clone())).collect(),
            })
            .collect();
        let committed = match coordinator.gate.attempt() {
            // The store did not answer lately and another write is probing it.
            Err(retry_after) => Err(StoreError::Down { retry_after }),
            Ok(()) => {
                let committed = async {
                    // New sagas only: every statement inserts from arrays (sagas, their history,
                    // the outbox), none looks rows up (`saga_events` has no foreign key: 0007).
                    let begin = saga_runtime::db::begin_planned_once(&self.pool);
                    let mut tx = tokio::time::timeout(DB_WAIT, begin)
                        .await
                        .map_err(|_| sqlx::Error::PoolTimedOut)??;
                    let written = store::commit(&mut tx, &writes, &coordinator.handoff).await?;
                    tx.commit().await?;
                    Ok::<_, StoreError>(written)
                }
                .await;
                coordinator.gate.record(&committed);
                committed
            }
        };
        drop(writes);
        // The sagas written now count as in flight, in the step that stops counting them as
        // being written.
        let ok: Vec<bool> = match &committed {
            Ok(written) => written.clone(),
            Err(_) => vec![false; batch.len()],
        };
        coordinator
            .in_flight()
            .written(batch.iter_mut().zip(ok).map(|(p, ok)| (&mut p.admitted, ok)));
        match committed {
            Ok(written) => {
                for (p, ok) in batch.drain(..).zip(written) {
                    if ok {
                        let def = super::definition(&coordinator.catalog, &p.decision.saga);
                        if let Ok(def) = def {
                            metrics::observe(def, &p.decision, p.decision.saga.created_at);
                        }
                    }
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
