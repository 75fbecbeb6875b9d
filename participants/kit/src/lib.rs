//! The participant side of the saga protocol, written once for every participant service.
//!
//! A service supplies a [`Domain`] (its commands) and its migrations; the kit consumes the command
//! topic, dedupes on the business key in an inbox, applies the domain in the same transaction, and
//! replies through the service's own outbox. See [`inbox`] for the exact protocol.
//!
//! Layout:
//! - [`domain`]: the [`Domain`] trait a service implements; [`error`]: [`DomainError`].
//! - [`Command`] (decoded, with typed payload access) and [`Phase`] are the wire protocol's own
//!   types, from `saga_proto`.
//! - [`inbox`]: the one-transaction protocol ([`Participant`]).
//! - [`app`]: settings and [`ParticipantApp`] (build → run until stopped).
//! - [`program`]: [`Program`], the service as a binary (`<name> [migrate]`, telemetry, signals).
//! - [`audit`]: `GET /audit/ledger`, the inbox as the orchestrator's consistency audit reads it,
//!   with the domain's checks ([`Domain::check`]); `GET /audit/unclaimed` ([`Domain::unclaimed`])
//!   and `GET /audit/facts/{set}`, the fact sets of the audit's cross-checks ([`Domain::facts`]).
//! - [`dedup`]: the dedup window — how long inbox records are kept, checked against the
//!   orchestrator's reach, and the pruning of older ones.
//! - [`tables`]: what those read of the service's own tables, declared ([`EffectTable`],
//!   [`FactSet`]) instead of written per service.

pub mod app;
pub mod audit;
pub mod dedup;
pub mod domain;
pub mod error;
pub mod inbox;
pub mod program;
pub mod tables;

pub use app::{ParticipantApp, ParticipantSettings, ServiceDefaults, migrate};
pub use dedup::DedupSettings;
pub use domain::{AuditedEntry, Domain, Unclaimed, UnclaimedWindow};
pub use error::DomainError;
pub use inbox::{Decision, Participant, Processed};
pub use program::Program;
pub use saga_proto::Phase;
pub use saga_proto::envelope::Command;
pub use tables::{EffectTable, FactSet};
