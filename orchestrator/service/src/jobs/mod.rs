//! Operator bulk work as durable jobs. A bulk operation — a compensation replay, an abort, a
//! retry, a legal hold or its release, for every saga a filter selects — is a row in PostgreSQL
//! — its filter, pace, limit and progress — not a task in one process: any orchestrator replica claims
//! it, works it saga by saga at its pace, gives it back when it shuts down, and another replica
//! goes on from where it stopped; a replica that dies loses its lease and the job is claimed
//! again. Each saga's replay, its result row and the job's progress commit in one transaction,
//! fenced by the job row, so every saga is handled exactly once however often the job moves.
//!
//! Layout:
//! - this file: what a job is ([`Job`], [`JobKind`], [`JobItem`], [`JobParams`]) and [`JobError`];
//! - `store`: the job tables (`migrations/orchestrator/0009_operator_jobs.sql`);
//! - `runner`: [`JobRunner`], the loop each replica runs: claim, work, renew, release.

mod runner;
pub(crate) mod store;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub(crate) use runner::{JobRunner, JobSettings, Wake};

use crate::store::{ListFilter, StoreError};

/// The kinds of job there are.
pub(crate) const REPLAY_COMPENSATIONS: &str = "replay_compensations";

/// What a job does to each saga it selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobKind {
    /// Replay the compensation of a failed saga.
    ReplayCompensations,
    /// Stop a running saga and compensate what it did.
    Abort,
    /// Send the step a saga stopped at again.
    Retry,
    /// Place a legal hold.
    Hold,
    /// Release a legal hold.
    Release,
}

impl JobKind {
    pub(crate) const ALL: [JobKind; 5] = [
        Self::ReplayCompensations,
        Self::Abort,
        Self::Retry,
        Self::Hold,
        Self::Release,
    ];

    /// The kind as stored and shown.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::ReplayCompensations => REPLAY_COMPENSATIONS,
            Self::Abort => "abort",
            Self::Retry => "retry",
            Self::Hold => "hold",
            Self::Release => "release",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum JobState {
    /// Waiting for a replica, or being worked.
    Running,
    /// Stopped by an operator until one resumes it; no replica works it.
    Paused,
    /// Every item it selected was handled (or its limit was reached).
    Completed,
    /// Stopped by an operator; what it did stays done.
    Cancelled,
}

impl JobState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Running, Self::Paused, Self::Completed, Self::Cancelled]
            .into_iter()
            .find(|state| state.as_str() == s)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a job works on: the sagas its filter selects (walked newest first), how fast, how many
/// at most.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct JobParams {
    pub(crate) filter: ListFilter,
    pub(crate) rate_per_second: f64,
    pub(crate) limit: u32,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Job {
    pub(crate) id: Uuid,
    pub(crate) kind: String,
    pub(crate) state: JobState,
    /// The operator who started it (its actions are recorded as theirs).
    pub(crate) operator: String,
    pub(crate) reason: String,
    pub(crate) params: JobParams,
    /// The last saga handled: the walk goes on after it.
    #[serde(skip)]
    pub(crate) cursor: Option<Uuid>,
    /// Items handled so far.
    pub(crate) processed: u32,
    /// Items handled, by outcome.
    pub(crate) counts: BTreeMap<String, u32>,
    /// The replica working it now, while its lease runs.
    pub(crate) owner: Option<String>,
    pub(crate) lease_until: Option<DateTime<Utc>>,
    /// The last error that held it up (it is retried); cleared by the next item handled.
    pub(crate) last_error: Option<String>,
    pub(crate) cancelled_by: Option<String>,
    pub(crate) cancel_reason: Option<String>,
    /// Who paused or resumed it last, and why.
    pub(crate) paused_by: Option<String>,
    pub(crate) pause_reason: Option<String>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
    pub(crate) finished_at: Option<DateTime<Utc>>,
}

/// One item a job handled, and what came of it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub(crate) struct JobItem {
    pub(crate) seq: i32,
    pub(crate) saga_id: Uuid,
    /// Replays: `replayed`, `already_in_progress`, `already_compensated`, `not_replayable`;
    /// aborts and retries: `aborted`, `retried`, `not_applicable` (the engine refused: `detail`
    /// says why); holds: `held`, `already_held`, `released`, `not_held`; any kind: `gone` (the
    /// saga was removed meanwhile) or `failed` (it could not be acted on: `detail` says why).
    pub(crate) outcome: String,
    pub(crate) detail: String,
    /// The commands it sent, as planned commands (step, phase, attempt, command type, topic).
    pub(crate) commands: sqlx::types::Json<serde_json::Value>,
    pub(crate) at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum JobError {
    #[error("no job {0}")]
    NotFound(Uuid),
    #[error("job {id} is {state} already")]
    Finished { id: Uuid, state: JobState },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored job {id} cannot be read: {why}")]
    Corrupt { id: Uuid, why: String },
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}
