//! The saga engine: saga definitions as data and a pure state machine.
//!
//! Nothing here performs I/O or reads a clock: callers pass `now`, and the engine returns the next
//! saga state, the commands to send, the child sagas to start or compensate and the history events
//! to record. The orchestrator service loads a saga, calls [`decide`], and persists the
//! [`Decision`] in one transaction.
//!
//! Layout:
//! - [`definition`]: [`SagaDefinition`], steps of three kinds (participant, wait, child), parallel
//!   groups, retry policies, typed fields and input validation.
//! - [`condition`](mod@condition): CEL expressions (`when`, child inputs), checked at load.
//! - [`saga`]: [`Saga`], its steps and their phases; ids and states.
//! - [`decide`](mod@decide): [`start`], [`decide`], and the [`Input`] / [`Decision`] types.

mod condition;
pub mod decide;
pub mod definition;
pub mod saga;

pub use decide::{
    ChildEffect, Command, Decision, EngineError, Event, Input, Replayability, Reply, ReplyOutcome, decide,
    replayability, start,
};
pub use definition::{
    ChildDefinition, DefinitionError, FieldKind, InputError, InputField, MAX_SEARCH_KEY_BYTES,
    MAX_SEARCH_KEYS, OnTimeout, RetryPolicy, SagaDefinition, StepDefinition, StepKind, WaitDefinition,
    check_payload,
};
pub use saga::{
    ParentRef, Phase, PhaseRecord, PhaseStatus, Saga, SagaId, SagaIdError, SagaState, StepRecord,
};
