//! What an audit is asked and what it answers.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::check::{Finding, FindingKind};
use super::cross;
use super::ledger::LedgerError;

/// `[audit]`: where the participants' ledgers are, and the periodic audit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSettings {
    /// Participant name → base URL of its HTTP port (where `/metrics` is), e.g.
    /// `users = "http://user-service:8081"` (`APP_AUDIT__PARTICIPANTS__USERS=…`). Each
    /// participant says which command topic it serves; steps of a topic no participant serves
    /// are listed as not audited.
    pub participants: BTreeMap<String, String>,
    /// Run an audit every this many seconds (0: never; the default).
    pub interval_secs: u64,
    /// How far back the periodic audit looks (sagas created in the last … seconds).
    pub window_secs: u64,
    /// Running, compensating or parked sagas older than this are findings.
    pub unfinished_after_secs: u64,
    /// Sagas and ledger entries read per page.
    pub page_size: u32,
    /// Timeout of one ledger request.
    pub request_timeout_ms: u64,
    /// Name → a pair of participants' fact sets that must agree key for key, e.g.
    /// `authors_replicate_users = "users.users = posts.authors"` (see [`cross::FactPair`]);
    /// checked by every audit of all saga types.
    pub cross_checks: BTreeMap<String, cross::FactPair>,
    /// A cross-check's disagreement is only reported if it is still there when the sets are read
    /// again this many milliseconds later: a saga between its steps is not drift.
    pub settle_ms: u64,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            participants: BTreeMap::new(),
            interval_secs: 0,
            window_secs: 24 * 3600,
            unfinished_after_secs: 15 * 60,
            page_size: 1_000,
            request_timeout_ms: 10_000,
            cross_checks: BTreeMap::new(),
            settle_ms: 2_000,
        }
    }
}

/// What to audit.
#[derive(Debug, Clone)]
pub(crate) struct AuditRequest {
    pub since: DateTime<Utc>,
    /// Sagas created before this; the audit's start when `None`.
    pub until: Option<DateTime<Utc>>,
    pub saga_type: Option<String>,
    /// The settings' threshold when `None`.
    pub unfinished_after: Option<Duration>,
}

/// What one participant contributed.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Coverage {
    pub name: String,
    pub service: String,
    pub commands_topic: String,
    pub entries: u64,
    /// The participant's dedup horizon: its records of sagas created before this may have been
    /// pruned, so their absence is not drift.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pruned_before: Option<DateTime<Utc>>,
}

/// An audit's result.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AuditReport {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub saga_type: Option<String>,
    pub started_at: DateTime<Utc>,
    pub duration_seconds: f64,
    pub sagas_checked: u64,
    pub ledger_entries: u64,
    pub participants: Vec<Coverage>,
    /// Step topics of audited sagas that no configured participant serves.
    pub unaudited_topics: Vec<String>,
    /// Sagas created before this may have been removed by retention (when it runs).
    pub retention_horizon: Option<DateTime<Utc>>,
    /// Sagas participants have records of that the orchestrator no longer has, created before
    /// the retention horizon: removed by retention, not reported as unknown.
    pub removed_by_retention: u64,
    /// Findings about a participant's missing or partial records of a saga created before that
    /// participant's dedup horizon: pruned, not reported.
    pub pruned_by_participants: u64,
    /// In saga id order, then by kind and step.
    pub findings: Vec<Finding>,
}

impl AuditReport {
    /// Findings per kind (every kind present, 0 when none).
    pub(crate) fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts: BTreeMap<&'static str, usize> =
            FindingKind::ALL.iter().map(|k| (k.as_str(), 0)).collect();
        for f in &self.findings {
            *counts.entry(f.kind.as_str()).or_default() += 1;
        }
        counts
    }
}

/// Why an audit could not be completed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuditError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the orchestrator database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("stored saga {0} cannot be read: {1}")]
    Corrupt(Uuid, String),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}
