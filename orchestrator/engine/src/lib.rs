//! The saga engine: saga definitions as data and a pure state machine.
//!
//! Nothing here performs I/O or reads a clock: callers pass `now`, and the engine returns the next
//! saga state, the commands to send and the history events to record. The orchestrator service
//! loads a saga, calls [`decide`], and persists the [`Decision`] in one transaction.
//!
//! Layout:
//! - [`definition`]: [`SagaDefinition`], steps, retry policies, input validation.
//! - [`saga`]: [`Saga`], its steps and their phases; ids and states.
//! - [`decide`](mod@decide): [`start`], [`decide`], and the [`Input`] / [`Decision`] types.

pub mod decide;
pub mod definition;
pub mod saga;

pub use decide::{
    Command, Decision, EngineError, Event, Input, Replayability, Reply, ReplyOutcome, decide, replayability,
    start,
};
pub use definition::{
    DefinitionError, FieldKind, InputError, InputField, RetryPolicy, SagaDefinition, StepDefinition,
};
pub use saga::{Phase, PhaseRecord, PhaseStatus, Saga, SagaId, SagaIdError, SagaState, StepRecord};
