//! The shell around the engine: load sagas, `decide`, then commit the decisions — saga rows,
//! history events and outbox rows — in one transaction, through the store's one write path
//! ([`store::commit`]). One file per entry point:
//!
//! - [`start`]: `StartSaga` — validation, idempotency keys, and the group-commit writer.
//! - [`admission`]: whether a new saga is let in now (the store answering, the sagas in flight).
//! - [`replies`]: participants' replies, a consumer batch in one transaction.
//! - [`operator`]: operator actions (abort, replay, retry) and their dry runs.
//! - [`timers`]: deadlines and retries, woken by the timer loop.
//! - [`metrics`]: saga metrics, derived from each committed decision's events.

pub(crate) mod admission;
mod children;
pub(crate) mod metrics;
pub(crate) mod operator;
pub(crate) mod replies;
mod start;
pub(crate) mod timers;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use saga_engine::{Command, Decision, EngineError, Saga, SagaDefinition, SagaId, SagaState};
use saga_runtime::outbox::{Handoff, OutboxMessage};
use sqlx::PgPool;
use tokio::sync::mpsc;

use crate::catalog::Catalog;
use crate::clock::Clock;
use crate::store::{NewEvent, PendingInput, RowWrite, SagaWrite, StoreError, StoredSaga};
use crate::wire::{self, Routing};

pub(crate) use operator::{Acted, ReplayOutcome, ReplayReport};
pub(crate) use start::{StartError, StartWriter};

/// How often a write that lost an optimistic-concurrency race is re-read and retried.
const CONFLICT_RETRIES: usize = 8;

/// Why a reply (or another input) could not be applied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApplyError {
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

/// What applying an input did.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Applied {
    pub changed: bool,
    pub state: SagaState,
    /// The saga after the input, and its version.
    pub saga: Saga,
    pub version: i64,
    pub commands: Vec<Command>,
}

pub(crate) struct Coordinator {
    pool: PgPool,
    catalog: Arc<Catalog>,
    routing: Routing,
    clock: Arc<dyn Clock>,
    max_payload_bytes: usize,
    /// New sagas on their way to the group writer ([`StartWriter`]).
    starts: mpsc::Sender<start::PendingStart>,
    /// Outbox rows handed to this process's relay (see [`Handoff`]).
    handoff: Handoff,
    /// Whether the store answered lately; new sagas are refused at once while it does not.
    gate: admission::StoreGate,
    /// The sagas in flight, against the admission limits.
    in_flight: Arc<admission::InFlight>,
}

impl Coordinator {
    /// The coordinator, and the group-commit writer of new sagas, which the caller runs (start-up
    /// puts it with the other background loops, so it has stopped before the pool closes).
    pub(crate) fn new(
        pool: PgPool,
        catalog: Arc<Catalog>,
        routing: Routing,
        clock: Arc<dyn Clock>,
        max_payload_bytes: usize,
        admission: crate::settings::AdmissionSettings,
    ) -> (Self, StartWriter) {
        let (starts, writer) = StartWriter::new(pool.clone());
        let coordinator = Self {
            pool,
            catalog,
            routing,
            clock,
            max_payload_bytes,
            starts,
            handoff: Handoff::new(),
            gate: admission::StoreGate::default(),
            in_flight: Arc::new(admission::InFlight::new(admission)),
        };
        (coordinator, writer)
    }

    /// The count of sagas in flight the admission limits use; start-up runs its refresh.
    pub(crate) fn in_flight(&self) -> &Arc<admission::InFlight> {
        &self.in_flight
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Where every write of this coordinator hands its outbox rows over; the relay of this
    /// process publishes from it.
    pub(crate) fn handoff(&self) -> &Handoff {
        &self.handoff
    }

    pub(crate) fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The shell's clock (the one sagas are stamped with).
    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The prefix of deployed topic names.
    pub(crate) fn topic_prefix(&self) -> &str {
        &self.routing.topic_prefix
    }

    fn definition(&self, stored: &StoredSaga) -> Result<&SagaDefinition, ApplyError> {
        definition(&self.catalog, &stored.saga)
    }

    /// The outbox rows of a decision's commands, each continuing the trace `trace` and naming
    /// `causation` (the message, request or actor that caused it).
    fn messages(
        &self,
        decision: &Decision,
        causation: &str,
        trace: &BTreeMap<String, String>,
    ) -> Vec<OutboxMessage> {
        decision
            .commands
            .iter()
            .map(|c| wire::command_message(&decision.saga, c, causation, &self.routing).in_trace(trace))
            .collect()
    }
}

/// The definition a saga runs on (the version it started with).
fn definition<'c>(catalog: &'c Catalog, saga: &Saga) -> Result<&'c SagaDefinition, ApplyError> {
    catalog
        .get(&saga.saga_type, saga.definition_version)
        .map(AsRef::as_ref)
        .ok_or_else(|| ApplyError::DefinitionMissing {
            id: saga.id,
            saga_type: saga.saga_type.clone(),
            version: saga.definition_version,
        })
}

/// The write of one decision about a saga that exists (operator actions, timers).
fn write_of<'a>(
    def: &'a SagaDefinition,
    stored: &StoredSaga,
    decision: &'a Decision,
    actor: &'a str,
    now: DateTime<Utc>,
    messages: Vec<OutboxMessage>,
) -> SagaWrite<'a> {
    SagaWrite {
        saga: &decision.saga,
        row: if decision.changed {
            RowWrite::Update {
                expected_version: stored.version,
            }
        } else {
            RowWrite::Unchanged
        },
        current_step: current_step_name(def, &decision.saga),
        events: decision
            .events
            .iter()
            .map(|event| NewEvent {
                at: now,
                actor,
                event,
            })
            .collect(),
        messages,
        inputs: PendingInput::of(decision),
        keys: if decision.changed {
            def.search_key_values(&decision.saga.context, true)
        } else {
            Vec::new()
        },
    }
}

/// A span in the saga's trace, for work that did not arrive with the trace (timers, operators).
fn saga_span(what: &'static str, stored: &StoredSaga) -> tracing::Span {
    let span = tracing::info_span!("saga", otel.name = what, saga_id = %stored.saga.id, saga_type = %stored.saga.saga_type);
    saga_runtime::trace::continue_from(&span, &stored.trace_context);
    span
}

/// Fills the definition's generated ids with fresh UUIDv7s: the start of a saga, by a client or
/// as a child.
fn fill_generated_ids(def: &SagaDefinition, context: &mut serde_json::Map<String, serde_json::Value>) {
    for field in &def.generated_ids {
        context.insert(
            field.clone(),
            serde_json::Value::String(uuid::Uuid::now_v7().to_string()),
        );
    }
}

fn current_step_name(def: &SagaDefinition, saga: &Saga) -> Option<String> {
    saga.current_step()
        .and_then(|i| def.steps.get(i))
        .map(|s| s.name.clone())
}

/// Retries `attempt` while it loses optimistic-concurrency races (another writer changed a saga
/// between the read and the write), up to [`CONFLICT_RETRIES`] times.
async fn retry_conflicts<T, F, Fut>(mut attempt: F) -> Result<T, ApplyError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ApplyError>>,
{
    let mut tries = 1;
    loop {
        match attempt().await {
            Err(ApplyError::Store(StoreError::Conflict(id))) if tries < CONFLICT_RETRIES => {
                tracing::debug!(saga_id = %id, "write conflict; re-reading");
                tries += 1;
            }
            other => return other,
        }
    }
}
