//! Listing sagas: filters, keyset pages, id-prefix ranges.

use chrono::{DateTime, Utc};
use saga_engine::{SagaId, SagaState};
use saga_proto::ledger::first_id_at;
use sqlx::{PgConnection, QueryBuilder};
use uuid::Uuid;

use super::StoreError;

/// Filters for [`list`]. Results are newest first. Every set field must match. Stored with a
/// job as JSON (`operator_jobs.params`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ListFilter {
    pub saga_type: Option<String>,
    pub state: Option<SagaState>,
    pub current_step: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    pub updated_after: Option<DateTime<Utc>>,
    pub updated_before: Option<DateTime<Utc>>,
    /// Inclusive id range (from an id prefix; see [`id_range`]).
    pub ids: Option<(Uuid, Uuid)>,
    pub idempotency_key: Option<String>,
    /// The definition version the sagas run on (not part of [`ListFilter::matches`]: see
    /// [`has_stored`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub definition_version: Option<u32>,
    /// Text the failure reason contains (case-insensitive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_contains: Option<String>,
    /// Search key conditions (every one must hold). Not part of [`ListFilter::matches`]: a
    /// saga's keys are not in its change notification (see [`has_stored`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyFilter>,
    /// Continue after this saga (the cursor): older ones when newest first, newer ones when oldest first.
    pub cursor: Option<SagaId>,
    /// Oldest first instead of newest first.
    pub ascending: bool,
}

impl ListFilter {
    /// Whether a saga with these attributes matches (everything but the cursor, the order, and
    /// what a change notification does not carry: the version and the keys).
    #[allow(clippy::too_many_arguments)]
    pub fn matches(
        &self,
        id: Uuid,
        saga_type: &str,
        state: &str,
        current_step: Option<&str>,
        failure_reason: Option<&str>,
        idempotency_key: Option<&str>,
        created_at: DateTime<Utc>,
        updated_at: DateTime<Utc>,
    ) -> bool {
        self.saga_type.as_deref().is_none_or(|t| t == saga_type)
            && self.state.is_none_or(|s| s.as_str() == state)
            && self
                .current_step
                .as_deref()
                .is_none_or(|s| Some(s) == current_step)
            && self.created_after.is_none_or(|t| created_at >= t)
            && self.created_before.is_none_or(|t| created_at < t)
            && self.updated_after.is_none_or(|t| updated_at >= t)
            && self.updated_before.is_none_or(|t| updated_at < t)
            && self.ids.is_none_or(|(lo, hi)| lo <= id && id <= hi)
            && self
                .idempotency_key
                .as_deref()
                .is_none_or(|k| Some(k) == idempotency_key)
            && self.failure_contains.as_deref().is_none_or(|text| {
                failure_reason.is_some_and(|r| r.to_lowercase().contains(&text.to_lowercase()))
            })
    }

    /// Whether the filter has conditions only the saga's row can answer.
    fn needs_row(&self) -> bool {
        !self.keys.is_empty() || self.definition_version.is_some()
    }
}

/// A search key condition: the saga has the key `name` (any of its keys when `None`) with
/// exactly this value, or with a value that starts with it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub value: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prefix: bool,
}

impl KeyFilter {
    /// `AND id IN (the sagas with this key)`: an index-only scan of `saga_keys_value`.
    fn push_sql(&self, q: &mut QueryBuilder<'_, sqlx::Postgres>) {
        q.push(" AND id IN (SELECT saga_id FROM saga_keys WHERE value");
        // `^@` (starts with) is an index range scan on the "C"-collated column.
        q.push(if self.prefix { " ^@ " } else { " = " })
            .push_bind(self.value.clone());
        if let Some(name) = &self.name {
            q.push(" AND name = ").push_bind(name.clone());
        }
        q.push(")");
    }
}

/// Whether saga `id` meets the filter's conditions a change notification does not carry (its
/// version, its keys): one lookup, none when the filter has no such condition.
pub(crate) async fn has_stored(
    conn: &mut PgConnection,
    id: Uuid,
    filter: &ListFilter,
) -> Result<bool, StoreError> {
    if !filter.needs_row() {
        return Ok(true);
    }
    let mut q = QueryBuilder::new("SELECT count(*) FROM sagas WHERE id = ");
    q.push_bind(id);
    // Only what a change notification does not carry; the rest was matched in memory.
    push_conditions(
        &mut q,
        &ListFilter {
            definition_version: filter.definition_version,
            keys: filter.keys.clone(),
            ..ListFilter::default()
        },
    );
    let found: i64 = q.build_query_scalar().fetch_one(conn).await?;
    Ok(found > 0)
}

/// The inclusive range of ids starting with `prefix` (hex digits, dashes ignored), so a prefix
/// search is an index range scan.
pub(crate) fn id_range(prefix: &str) -> Result<(Uuid, Uuid), String> {
    let hex: String = prefix.chars().filter(|c| *c != '-').collect();
    if hex.is_empty() || hex.len() > 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "`{}` is not the start of a saga id (1-32 hex digits)",
            prefix.chars().take(40).collect::<String>()
        ));
    }
    let pad = |fill: char| {
        let full = format!("{hex}{}", fill.to_string().repeat(32 - hex.len()));
        Uuid::parse_str(&full).map_err(|e| e.to_string())
    };
    Ok((pad('0')?, pad('f')?))
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub(crate) struct SagaSummary {
    pub id: Uuid,
    pub saga_type: String,
    pub state: String,
    pub current_step: Option<String>,
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The filter's conditions, after a `WHERE true`.
fn push_conditions(q: &mut QueryBuilder<'_, sqlx::Postgres>, filter: &ListFilter) {
    if let Some(t) = &filter.saga_type {
        q.push(" AND saga_type = ").push_bind(t.clone());
    }
    if let Some(s) = filter.state {
        q.push(" AND state = ").push_bind(s.as_str());
    }
    if let Some(step) = &filter.current_step {
        q.push(" AND current_step = ").push_bind(step.clone());
    }
    // Creation times bound the (time-ordered) ids too, so a time range is an index range scan.
    if let Some(t) = filter.created_after {
        q.push(" AND created_at >= ").push_bind(t);
        q.push(" AND id >= ")
            .push_bind(first_id_at(t - chrono::TimeDelta::seconds(1)));
    }
    if let Some(t) = filter.created_before {
        q.push(" AND created_at < ").push_bind(t);
        q.push(" AND id < ")
            .push_bind(first_id_at(t + chrono::TimeDelta::seconds(1)));
    }
    if let Some(t) = filter.updated_after {
        q.push(" AND updated_at >= ").push_bind(t);
    }
    if let Some(t) = filter.updated_before {
        q.push(" AND updated_at < ").push_bind(t);
    }
    if let Some((lo, hi)) = filter.ids {
        q.push(" AND id BETWEEN ")
            .push_bind(lo)
            .push(" AND ")
            .push_bind(hi);
    }
    if let Some(k) = &filter.idempotency_key {
        q.push(" AND idempotency_key = ").push_bind(k.clone());
    }
    if let Some(v) = filter.definition_version {
        q.push(" AND definition_version = ").push_bind(v as i32);
    }
    if let Some(text) = &filter.failure_contains {
        // strpos: no LIKE pattern characters to escape.
        q.push(" AND strpos(lower(failure_reason), lower(")
            .push_bind(text.clone())
            .push(")) > 0");
    }
    for key in &filter.keys {
        key.push_sql(q);
    }
}

pub(crate) async fn list(
    conn: &mut PgConnection,
    filter: &ListFilter,
    limit: i64,
) -> Result<Vec<SagaSummary>, StoreError> {
    let mut q = QueryBuilder::new(
        "SELECT id, saga_type, state, current_step, failure_reason, created_at, updated_at FROM sagas WHERE true",
    );
    push_conditions(&mut q, filter);
    match (filter.cursor, filter.ascending) {
        (Some(c), false) => {
            q.push(" AND id < ").push_bind(c.as_uuid());
        }
        (Some(c), true) => {
            q.push(" AND id > ").push_bind(c.as_uuid());
        }
        (None, _) => {}
    }
    q.push(if filter.ascending {
        " ORDER BY id ASC"
    } else {
        " ORDER BY id DESC"
    });
    q.push(" LIMIT ").push_bind(limit);
    Ok(q.build_query_as().fetch_all(conn).await?)
}

/// How many sagas the filter selects, counting no further than `cap` (a bulk job's dry run: a
/// count of millions would scan them all).
pub(crate) async fn count(conn: &mut PgConnection, filter: &ListFilter, cap: i64) -> Result<i64, StoreError> {
    let mut q = QueryBuilder::new("SELECT count(*) FROM (SELECT 1 FROM sagas WHERE true");
    push_conditions(&mut q, filter);
    q.push(" LIMIT ").push_bind(cap).push(") AS selected");
    Ok(q.build_query_scalar().fetch_one(conn).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_prefixes_become_inclusive_ranges() {
        let (lo, hi) = id_range("01a2-003c").expect("valid");
        assert_eq!(lo.to_string(), "01a2003c-0000-0000-0000-000000000000");
        assert_eq!(hi.to_string(), "01a2003c-ffff-ffff-ffff-ffffffffffff");
        assert!(id_range("xyz").is_err());
        assert!(id_range("").is_err());
        assert!(id_range(&"a".repeat(33)).is_err());
    }

    #[test]
    fn creation_times_bound_v7_ids() {
        let t = DateTime::parse_from_rfc3339("2026-11-21T10:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let before = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            t.timestamp() as u64 - 1,
            999_000_000,
        ));
        let at = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            t.timestamp() as u64,
            0,
        ));
        assert!(before < first_id_at(t) && first_id_at(t) <= at);
    }

    #[test]
    fn filters_match_in_memory_like_in_sql() {
        let now = Utc::now();
        let id = Uuid::now_v7();
        let f = ListFilter {
            saga_type: Some("register_user".into()),
            state: Some(SagaState::Failed),
            current_step: Some("create_user".into()),
            ..ListFilter::default()
        };
        assert!(f.matches(
            id,
            "register_user",
            "failed",
            Some("create_user"),
            None,
            None,
            now,
            now
        ));
        assert!(!f.matches(
            id,
            "register_user",
            "failed",
            Some("create_author"),
            None,
            None,
            now,
            now
        ));
        assert!(!f.matches(
            id,
            "publish_post",
            "failed",
            Some("create_user"),
            None,
            None,
            now,
            now
        ));
        let text = ListFilter {
            failure_contains: Some("QUOTA".into()),
            ..ListFilter::default()
        };
        assert!(text.matches(
            id,
            "x",
            "failed",
            None,
            Some("no post quota left"),
            None,
            now,
            now
        ));
        assert!(!text.matches(id, "x", "failed", None, Some("pen name taken"), None, now, now));
        assert!(!text.matches(id, "x", "failed", None, None, None, now, now));
        let later = ListFilter {
            created_after: Some(now + chrono::TimeDelta::seconds(1)),
            ..ListFilter::default()
        };
        assert!(!later.matches(id, "x", "running", None, None, None, now, now));
    }
}
