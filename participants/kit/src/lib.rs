//! The participant side of the saga protocol, written once for every participant service.
//!
//! A service supplies a [`Domain`] (its commands) and its migrations; the kit consumes the command
//! topic, dedupes on the business key in an inbox, applies the domain in the same transaction, and
//! replies through the service's own outbox. See [`inbox`] for the exact protocol.
//!
//! Layout:
//! - [`command`]: decoding `CommandEnvelope`s and typed payload access.
//! - [`domain`]: the [`Domain`] trait a service implements.
//! - [`inbox`]: the one-transaction protocol ([`Participant`]).
//! - [`app`]: settings and [`ParticipantApp`] (build → run until stopped).

pub mod app;
pub mod command;
pub mod domain;
pub mod inbox;

pub use app::{ParticipantApp, ParticipantSettings, ServiceDefaults, migrate};
pub use command::{Command, Phase};
pub use domain::{Domain, DomainError};
pub use inbox::{Decision, Participant, Processed};
