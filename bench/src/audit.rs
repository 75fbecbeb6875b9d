//! The consistency check the demo, the load generator, the chaos harness and the end-to-end tests
//! share: the orchestrator's own consistency audit (`RunAudit` over gRPC — the ledger audit, the
//! participants' domain checks and unclaimed effects, and the configured cross-checks such as
//! "each user has an author replica of the same name"), plus what they print: sagas by type and
//! state from the orchestrator's database, and each participant database's row counts (each read
//! on its own; nothing here compares one database with another — the audit does, through the
//! participants' audit endpoints).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use saga_proto::v1::saga_orchestrator_client::SagaOrchestratorClient;
use saga_proto::v1::{AuditFinding, RunAuditRequest};
use sqlx::PgPool;

/// The three databases, each with its own pool.
#[derive(Clone)]
pub struct Databases {
    pub orchestrator: PgPool,
    pub users: PgPool,
    pub posts: PgPool,
}

#[derive(Debug, Default, Clone)]
pub struct AuditReport {
    /// (saga type, state) → count.
    pub sagas: BTreeMap<(String, String), i64>,
    /// Sagas still running or compensating.
    pub in_flight: i64,
    pub users: i64,
    pub authors: i64,
    pub posts: i64,
    /// Redelivered or retried commands the participants answered from their inbox.
    pub repeats_answered: i64,
    /// Sagas the orchestrator's audit compared with the ledgers.
    pub sagas_checked: u64,
    /// The participants whose ledgers it read (names as configured in `audit.participants`).
    pub participants: Vec<String>,
    /// The orchestrator audit's findings.
    pub findings: Vec<AuditFinding>,
    /// Findings about records participants pruned past their dedup window: not reported.
    pub pruned_by_participants: u64,
    /// Participants' records of sagas the orchestrator's retention removed: not reported.
    pub removed_by_retention: u64,
    /// One line per finding, and one for sagas still in flight.
    pub violations: Vec<String>,
}

impl AuditReport {
    /// No finding and no saga in flight.
    pub fn consistent(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn count(&self, saga_type: &str, state: &str) -> i64 {
        self.sagas
            .get(&(saga_type.to_owned(), state.to_owned()))
            .copied()
            .unwrap_or(0)
    }
}

/// Unfinished and parked sagas are counted from the database here, not reported as findings.
const NEVER_UNFINISHED_SECS: u32 = 10 * 365 * 24 * 3600;

/// Runs the orchestrator's audit of the sagas created since `since` (and its cross-checks, which
/// cover all data) and counts sagas and rows.
pub async fn audit(
    orchestrator_url: &str,
    dbs: &Databases,
    since: DateTime<Utc>,
) -> anyhow::Result<AuditReport> {
    let mut r = AuditReport::default();
    let sagas: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT saga_type, state, count(*) FROM sagas GROUP BY saga_type, state")
            .fetch_all(&dbs.orchestrator)
            .await
            .context("counting sagas")?;
    for (saga_type, state, n) in sagas {
        if state == "running" || state == "compensating" {
            r.in_flight += n;
        }
        r.sagas.insert((saga_type, state), n);
    }
    let count = |pool: &PgPool, sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, Option<i64>>(sql)
                .fetch_one(&pool)
                .await
                .map(|n| n.unwrap_or(0))
                .with_context(|| format!("`{sql}`"))
        }
    };
    r.users = count(&dbs.users, "SELECT count(*) FROM users").await?;
    r.authors = count(&dbs.posts, "SELECT count(*) FROM authors").await?;
    r.posts = count(&dbs.posts, "SELECT count(*) FROM posts").await?;
    for pool in [&dbs.users, &dbs.posts] {
        r.repeats_answered += count(pool, "SELECT sum(duplicates)::bigint FROM inbox").await?;
    }

    let mut client = SagaOrchestratorClient::connect(orchestrator_url.to_owned())
        .await
        .with_context(|| format!("connecting to the orchestrator at {orchestrator_url}"))?;
    let request = RunAuditRequest {
        since: Some(prost_types::Timestamp {
            seconds: since.timestamp(),
            nanos: 0,
        }),
        until: None,
        saga_type: String::new(),
        unfinished_after_seconds: Some(NEVER_UNFINISHED_SECS),
    };
    let report = tokio::time::timeout(Duration::from_secs(120), client.run_audit(request))
        .await
        .context("the orchestrator's audit took over 2 minutes")?
        .context("the orchestrator's audit (RunAudit)")?
        .into_inner();
    for f in &report.findings {
        let subject = if f.saga_id.is_empty() {
            String::new()
        } else {
            format!(" saga {}", f.saga_id)
        };
        r.violations.push(format!("{}{subject}: {}", f.kind, f.message));
    }
    r.findings = report.findings;
    r.sagas_checked = report.sagas_checked;
    r.pruned_by_participants = report.pruned_by_participants;
    r.removed_by_retention = report.removed_by_retention;
    r.participants = report.participants.into_iter().map(|p| p.name).collect();
    if r.in_flight > 0 {
        r.violations
            .push(format!("{} sagas are not terminal", r.in_flight));
    }
    Ok(r)
}
