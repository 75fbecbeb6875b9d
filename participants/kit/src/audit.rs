//! `GET /audit/ledger`: the participant's inbox as the orchestrator's consistency audit reads it,
//! read-only, in pages, on the service's HTTP (metrics/health) port. The orchestrator never opens a
//! participant's database; this is what it asks instead (see `docs/ARCHITECTURE.md`, "The
//! consistency audit").
//!
//! Query parameters:
//! - `since` (RFC 3339, required), `until` (RFC 3339, default: no end): the window of **saga
//!   creation times**, applied as a range of saga ids (UUIDv7, see [`saga_proto::ledger`]);
//! - `after` (a cursor `<saga id>/<step>/<phase>` from the previous page's `next`);
//! - `through` (a saga id): stop after this saga (the orchestrator joins page by page);
//! - `limit` (1 to 10,000; default 1,000).
//!
//! Entries come in (saga id, step, phase) order — the inbox's primary key, so a page is one
//! index range scan. Each page also carries the [`Domain::check`] findings about its entries.
//! A bad parameter is a 400 with a JSON `error` naming it.
//!
//! Beside it, with the same limits and errors:
//! - `GET /audit/unclaimed?since&until&after&limit`: the [`Domain::unclaimed`] effects of the
//!   window, in (check, id) order, `after` being the previous page's `next` (`<check>/<id>`);
//! - `GET /audit/facts/{set}?after&limit`: a page of one of the [`Domain::facts`] sets, keys in
//!   byte order above `after`; `next` is the page's last key, `null` once the set is exhausted.
//!   An unknown set is a 404.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use saga_proto::Phase;
use saga_proto::ledger::{
    self, Cursor, FactsPage, LedgerEntry, LedgerOutcome, LedgerPage, UnclaimedCursor, UnclaimedPage,
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::domain::{AuditedEntry, Domain, UnclaimedWindow};
use crate::inbox::{LATE_ACTION, NOOP_COMPENSATION};

/// What the endpoint needs: the service's pool, its domain (for the checks) and its names.
pub struct Ledger<D> {
    pub pool: sqlx::PgPool,
    pub domain: Arc<D>,
    /// The logical command topic (no prefix), as saga definitions name the participant.
    pub commands_topic: String,
}

impl<D> Clone for Ledger<D> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            domain: self.domain.clone(),
            commands_topic: self.commands_topic.clone(),
        }
    }
}

/// The endpoint's routes, to merge into the service's HTTP router.
pub fn router<D: Domain>(ledger: Ledger<D>) -> Router {
    Router::new()
        .route(ledger::PATH, get(page::<D>))
        .route(ledger::UNCLAIMED_PATH, get(unclaimed::<D>))
        .route(&format!("{}/{{set}}", ledger::FACTS_PATH), get(facts::<D>))
        .with_state(ledger)
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerQuery {
    /// Lowest saga id in the window (inclusive).
    pub from: Uuid,
    /// Saga ids below this (exclusive); `None`: no end.
    pub until: Option<Uuid>,
    /// Highest saga id of this request (inclusive).
    pub through: Option<Uuid>,
    pub after: Option<Cursor>,
    pub limit: usize,
}

impl LedgerQuery {
    /// Parses the query string's parameters; the error names the parameter and what is expected.
    pub fn parse(params: &HashMap<String, String>) -> Result<Self, String> {
        only_known(params, &["since", "until", "after", "through", "limit"])?;
        let (since, until) = times(params)?;
        let after = params
            .get("after")
            .map(|a| a.parse::<Cursor>().map_err(|e| format!("after: {e}")))
            .transpose()?;
        let through = params
            .get("through")
            .map(|t| {
                Uuid::parse_str(t).map_err(|_| {
                    format!(
                        "through: `{}` is not a saga id",
                        t.chars().take(60).collect::<String>()
                    )
                })
            })
            .transpose()?;
        let limit = limit(params)?;
        Ok(LedgerQuery {
            from: ledger::first_id_at(since),
            until: until.map(ledger::first_id_at),
            through,
            after,
            limit,
        })
    }
}

/// A parsed `GET /audit/unclaimed` request.
#[derive(Debug, Clone, PartialEq)]
pub struct UnclaimedQuery {
    pub since: DateTime<Utc>,
    pub until: Option<DateTime<Utc>>,
    pub after: Option<UnclaimedCursor>,
    pub limit: usize,
}

impl UnclaimedQuery {
    pub fn parse(params: &HashMap<String, String>) -> Result<Self, String> {
        only_known(params, &["since", "until", "after", "limit"])?;
        let (since, until) = times(params)?;
        let after = params
            .get("after")
            .map(|a| a.parse::<UnclaimedCursor>().map_err(|e| format!("after: {e}")))
            .transpose()?;
        Ok(UnclaimedQuery {
            since,
            until,
            after,
            limit: limit(params)?,
        })
    }
}

/// A parsed `GET /audit/facts/{set}` request.
#[derive(Debug, Clone, PartialEq)]
pub struct FactsQuery {
    /// Keys above this one (exclusive); from the first when `None`.
    pub after: Option<String>,
    pub limit: usize,
}

impl FactsQuery {
    pub fn parse(params: &HashMap<String, String>) -> Result<Self, String> {
        only_known(params, &["after", "limit"])?;
        Ok(FactsQuery {
            after: params.get("after").cloned(),
            limit: limit(params)?,
        })
    }
}

/// Refuses a parameter not in `known`, naming it.
fn only_known(params: &HashMap<String, String>, known: &[&str]) -> Result<(), String> {
    let mut unknown: Vec<&String> = params.keys().filter(|k| !known.contains(&k.as_str())).collect();
    unknown.sort();
    match unknown.first() {
        Some(u) => Err(format!(
            "unknown parameter `{}` (expected {})",
            u.chars().take(40).collect::<String>(),
            known.join(", ")
        )),
        None => Ok(()),
    }
}

/// `limit`: 1 to [`ledger::MAX_LIMIT`], [`ledger::DEFAULT_LIMIT`] when absent.
fn limit(params: &HashMap<String, String>) -> Result<usize, String> {
    match params.get("limit") {
        None => Ok(ledger::DEFAULT_LIMIT),
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=ledger::MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(format!(
                "limit: expected a whole number from 1 to {}",
                ledger::MAX_LIMIT
            )),
        },
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    saga_id: Uuid,
    step_index: i32,
    phase: String,
    command_type: String,
    outcome: String,
    reason: Option<String>,
    reply: Option<Value>,
    message_id: String,
    duplicates: i32,
    created_at: DateTime<Utc>,
    undone: bool,
}

impl Row {
    fn entry(self) -> Result<(LedgerEntry, bool), String> {
        let phase: Phase = self.phase.parse()?;
        let outcome = match (self.outcome.as_str(), phase) {
            ("success", Phase::Compensation)
                if self
                    .reply
                    .as_ref()
                    .is_some_and(|r| r.get(NOOP_COMPENSATION).is_some()) =>
            {
                LedgerOutcome::NoopCompensation
            }
            ("success", _) => LedgerOutcome::Succeeded,
            ("business_failure", Phase::Action) if self.reason.as_deref() == Some(LATE_ACTION) => {
                LedgerOutcome::RefusedLateAction
            }
            ("business_failure", _) => LedgerOutcome::BusinessFailure,
            (other, _) => return Err(format!("unknown inbox outcome `{other}`")),
        };
        let entry = LedgerEntry {
            saga_id: self.saga_id,
            step: u32::try_from(self.step_index).map_err(|_| "negative step index".to_owned())?,
            phase,
            command_type: self.command_type,
            outcome,
            reason: self.reason,
            reply: self.reply,
            message_id: self.message_id,
            duplicates: u32::try_from(self.duplicates).unwrap_or(0),
            recorded_at: self.created_at,
        };
        Ok((entry, self.undone))
    }
}

/// Why a page could not be served.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("inbox record {0}")]
    Corrupt(String),
}

impl IntoResponse for LedgerError {
    fn into_response(self) -> Response {
        let status = match &self {
            LedgerError::BadRequest(_) => StatusCode::BAD_REQUEST,
            LedgerError::NotFound(_) => StatusCode::NOT_FOUND,
            LedgerError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
            LedgerError::Corrupt(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

async fn page<D: Domain>(
    State(ledger): State<Ledger<D>>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<LedgerPage>, LedgerError> {
    let query = LedgerQuery::parse(&params).map_err(LedgerError::BadRequest)?;
    Ok(Json(read_page(&ledger, &query).await?))
}

/// `GET /audit/unclaimed?since&until&after&limit`: the domain's effects of the window no inbox
/// row claims, a page at a time.
async fn unclaimed<D: Domain>(
    State(ledger): State<Ledger<D>>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<UnclaimedPage>, LedgerError> {
    let query = UnclaimedQuery::parse(&params).map_err(LedgerError::BadRequest)?;
    Ok(Json(read_unclaimed(&ledger, &query).await?))
}

/// The unclaimed checks are anti-joins of a domain table with the inbox on a value inside the
/// recorded reply (`reply->>'user_id' = u.id::text`), which no index serves. On tables not yet
/// analyzed (right after a burst of sagas) PostgreSQL estimates the inbox side at one row and
/// picks a nested loop: every effect scans the whole inbox. Measured after 15,000 sagas at
/// 500/s: 18 s for one page (the audit's request timed out), 20 ms with a hash anti-join. So
/// nested loops are off in this read-only transaction; what remains is a hash or merge join,
/// linear in the two sides.
const UNCLAIMED_PLAN: &str = "SET LOCAL enable_nestloop = off";

/// One page of the unclaimed effects, in a read-only transaction.
pub async fn read_unclaimed<D: Domain>(
    ledger: &Ledger<D>,
    q: &UnclaimedQuery,
) -> Result<UnclaimedPage, LedgerError> {
    let mut tx = ledger.pool.begin().await?;
    sqlx::query("SET TRANSACTION READ ONLY").execute(&mut *tx).await?;
    sqlx::query(UNCLAIMED_PLAN).execute(&mut *tx).await?;
    // An effect made by a saga whose records were pruned would look unclaimed: such sagas were
    // created before the horizon and sent their last command within the reach after it, so
    // effects are checked only from there on.
    let since = match crate::dedup::horizon(&mut tx).await? {
        Some((pruned_before, reach_ms)) => q
            .since
            .max(pruned_before + chrono::Duration::milliseconds(reach_ms)),
        None => q.since,
    };
    let window = UnclaimedWindow {
        since,
        until: q.until,
        after: q.after.as_ref(),
        limit: q.limit as i64,
    };
    let mut found = ledger.domain.unclaimed(&mut tx, window).await?;
    tx.rollback().await?;
    found.truncate(q.limit);
    let next = if found.len() == q.limit {
        found.last().map(|u| u.at.clone())
    } else {
        None
    };
    Ok(UnclaimedPage {
        service: ledger.domain.name().to_owned(),
        effects: found.into_iter().map(|u| u.effect).collect(),
        next,
    })
}

/// `GET /audit/facts/{set}?after&limit`: a page of one of the domain's fact sets.
async fn facts<D: Domain>(
    State(ledger): State<Ledger<D>>,
    Path(set): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<FactsPage>, LedgerError> {
    let query = FactsQuery::parse(&params).map_err(LedgerError::BadRequest)?;
    Ok(Json(read_facts(&ledger, &set, &query).await?))
}

/// One page of the fact set `set`, in a read-only transaction; an unknown set is
/// [`LedgerError::NotFound`].
pub async fn read_facts<D: Domain>(
    ledger: &Ledger<D>,
    set: &str,
    q: &FactsQuery,
) -> Result<FactsPage, LedgerError> {
    let mut tx = ledger.pool.begin().await?;
    sqlx::query("SET TRANSACTION READ ONLY").execute(&mut *tx).await?;
    let facts = ledger
        .domain
        .facts(&mut tx, set, q.after.as_deref(), q.limit as i64)
        .await?;
    tx.rollback().await?;
    let Some(mut facts) = facts else {
        let known: Vec<&str> = ledger.domain.fact_sets().iter().map(|s| s.name).collect();
        return Err(LedgerError::NotFound(format!(
            "{} publishes no fact set `{}` (it publishes: {})",
            ledger.domain.name(),
            set.chars().take(60).collect::<String>(),
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        )));
    };
    facts.truncate(q.limit);
    let next = if facts.len() == q.limit {
        facts.last().map(|f| f.key.clone())
    } else {
        None
    };
    Ok(FactsPage {
        set: set.to_owned(),
        facts,
        next,
    })
}

/// The window's `since` (required) and `until` (optional, later than `since`).
fn times(params: &HashMap<String, String>) -> Result<(DateTime<Utc>, Option<DateTime<Utc>>), String> {
    let time = |name: &str| -> Result<Option<DateTime<Utc>>, String> {
        params
            .get(name)
            .map(|v| {
                DateTime::parse_from_rfc3339(v)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| {
                        format!(
                            "{name}: `{}` is not an RFC 3339 time (e.g. 2026-11-30T18:00:00Z)",
                            v.chars().take(60).collect::<String>()
                        )
                    })
            })
            .transpose()
    };
    let since = time("since")?.ok_or("since: required (RFC 3339, e.g. 2026-11-30T18:00:00Z)")?;
    let until = time("until")?;
    if until.is_some_and(|u| u <= since) {
        return Err("until: must be later than since".into());
    }
    Ok((since, until))
}

/// One page of the ledger, with the domain's findings about it, in a read-only transaction.
pub async fn read_page<D: Domain>(ledger: &Ledger<D>, q: &LedgerQuery) -> Result<LedgerPage, LedgerError> {
    let mut tx = ledger.pool.begin().await?;
    sqlx::query("SET TRANSACTION READ ONLY").execute(&mut *tx).await?;
    // Without a cursor, start before the window's first saga's first record.
    let (after_saga, after_step, after_phase) = match q.after {
        Some(c) => (c.saga_id, i64::from(c.step), c.phase.as_str()),
        None => (q.from, -1, ""),
    };
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT i.saga_id, i.step_index, i.phase, i.command_type, i.outcome, i.reason, i.reply, \
                i.message_id, i.duplicates, i.created_at, \
                (i.phase = 'action' AND EXISTS (SELECT 1 FROM inbox c WHERE c.saga_id = i.saga_id \
                   AND c.step_index = i.step_index AND c.phase = 'compensation' AND c.outcome = 'success')) AS undone \
         FROM inbox i \
         WHERE i.saga_id >= $1 AND ($2::uuid IS NULL OR i.saga_id < $2) AND ($3::uuid IS NULL OR i.saga_id <= $3) \
           AND (i.saga_id, i.step_index, i.phase) > ($4, $5::int4, $6::text) \
         ORDER BY i.saga_id, i.step_index, i.phase \
         LIMIT $7",
    )
    .bind(q.from)
    .bind(q.until)
    .bind(q.through)
    .bind(after_saga)
    .bind(after_step as i32)
    .bind(after_phase)
    .bind(q.limit as i64)
    .fetch_all(&mut *tx)
    .await?;
    let full = rows.len() == q.limit;
    let mut entries = Vec::with_capacity(rows.len());
    let mut undone = Vec::with_capacity(rows.len());
    for row in rows {
        let at = format!("{}/{}/{}", row.saga_id, row.step_index, row.phase);
        let (entry, u) = row
            .entry()
            .map_err(|e| LedgerError::Corrupt(format!("{at}: {e}")))?;
        entries.push(entry);
        undone.push(u);
    }
    let audited: Vec<AuditedEntry<'_>> = entries
        .iter()
        .zip(&undone)
        .map(|(entry, &undone)| AuditedEntry { entry, undone })
        .collect();
    let findings = ledger.domain.check(&mut tx, &audited).await?;
    let pruned_before = crate::dedup::horizon(&mut tx).await?.map(|(at, _)| at);
    tx.rollback().await?;
    let next = if full {
        entries.last().map(|e| Cursor {
            saga_id: e.saga_id,
            step: e.step,
            phase: e.phase,
        })
    } else {
        None
    };
    Ok(LedgerPage {
        service: ledger.domain.name().to_owned(),
        commands_topic: ledger.commands_topic.clone(),
        entries,
        findings,
        next,
        pruned_before,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn parameters_parse_and_bad_ones_are_named() {
        let q = LedgerQuery::parse(&params(&[("since", "2026-11-30T18:00:00Z"), ("limit", "50")]))
            .expect("valid");
        assert_eq!(q.limit, 50);
        assert_eq!(q.until, None);
        let err = |p: &[(&str, &str)]| LedgerQuery::parse(&params(p)).expect_err("refused");
        assert!(err(&[]).starts_with("since: required"));
        assert!(err(&[("since", "yesterday")]).starts_with("since: `yesterday`"));
        assert!(
            err(&[
                ("since", "2026-11-30T18:00:00Z"),
                ("until", "2026-11-30T17:00:00Z")
            ])
            .starts_with("until:")
        );
        assert!(err(&[("since", "2026-11-30T18:00:00Z"), ("limit", "0")]).starts_with("limit:"));
        assert!(err(&[("since", "2026-11-30T18:00:00Z"), ("limit", "10001")]).starts_with("limit:"));
        assert!(err(&[("since", "2026-11-30T18:00:00Z"), ("after", "x")]).starts_with("after:"));
        assert!(err(&[("since", "2026-11-30T18:00:00Z"), ("through", "x")]).starts_with("through:"));
        assert!(err(&[("since", "2026-11-30T18:00:00Z"), ("sincee", "x")]).contains("`sincee`"));
        let u = UnclaimedQuery::parse(&params(&[("since", "2026-11-30T18:00:00Z"), ("limit", "5")]))
            .expect("valid");
        assert_eq!((u.limit, u.after), (5, None));
        assert!(
            UnclaimedQuery::parse(&params(&[("since", "2026-11-30T18:00:00Z"), ("through", "x")]))
                .expect_err("refused")
                .contains("`through`")
        );
        assert!(
            UnclaimedQuery::parse(&params(&[("since", "2026-11-30T18:00:00Z"), ("after", "x")]))
                .expect_err("refused")
                .starts_with("after:")
        );
        let f = FactsQuery::parse(&params(&[("after", "b"), ("limit", "2")])).expect("valid");
        assert_eq!(
            f,
            FactsQuery {
                after: Some("b".into()),
                limit: 2
            }
        );
        assert_eq!(
            FactsQuery::parse(&params(&[])).expect("valid").limit,
            ledger::DEFAULT_LIMIT
        );
        assert!(
            FactsQuery::parse(&params(&[("limit", "-1")]))
                .expect_err("refused")
                .starts_with("limit:")
        );
        assert!(
            FactsQuery::parse(&params(&[("since", "x")]))
                .expect_err("refused")
                .contains("`since`")
        );
    }
}
