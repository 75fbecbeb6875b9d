//! The overview's aggregate queries, each read from an index alone where PostgreSQL can
//! (`migrations/orchestrator/0005_dashboard_indexes.sql`, `0014_finished_by_type.sql`): unfinished
//! and parked sagas counted from (state, id), per-minute starts from created_at, per-minute finishes
//! and the last hour's finished sagas by type from the partial index of finished sagas;
//! latencies over the most recent finished sagas only; attention lists over the few failed or
//! unfinished sagas.

use std::collections::BTreeMap;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgConnection;

use crate::catalog::Catalog;
use crate::store::{SagaSummary, StoreError};

/// How many of the most recent finished sagas the latency percentiles are computed over.
pub(super) const LATENCY_SAMPLE: i64 = 2_000;
/// A saga compensating for longer than this needs attention.
pub(super) const LONG_COMPENSATION: TimeDelta = TimeDelta::minutes(5);

#[derive(Debug, Serialize)]
pub(super) struct Minute {
    pub minute: DateTime<Utc>,
    pub started: i64,
    pub completed: i64,
    pub compensated: i64,
    pub failed: i64,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub(super) struct StepLatency {
    pub saga_type: String,
    #[sqlx(skip)]
    pub step: String,
    pub step_index: i32,
    #[serde(skip)]
    pub definition_version: i32,
    pub phase: String,
    pub count: i64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Serialize)]
pub(super) struct Attention {
    pub count: i64,
    pub sagas: Vec<SagaSummary>,
}

/// Sagas by type and state, as the overview shows them.
pub(super) type Counts = BTreeMap<String, BTreeMap<String, i64>>;

/// Sagas that are not finished or are parked (running, compensating, failed), by type and state,
/// all of them: few, and read from `sagas_state_id`.
pub(super) async fn unfinished(conn: &mut PgConnection) -> Result<Counts, StoreError> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT saga_type, state, count(*) FROM sagas \
         WHERE state IN ('running', 'compensating', 'failed') GROUP BY saga_type, state",
    )
    .fetch_all(conn)
    .await?;
    let mut out = Counts::new();
    for (t, s, n) in rows {
        out.entry(t).or_default().insert(s, n);
    }
    Ok(out)
}

/// The last hour before `now`: sagas started and finished per minute (zero-filled, oldest first),
/// and the sagas that completed or were compensated in it by type. Finished sagas are counted
/// over this window only — counting every finished saga ever kept would read the whole table.
pub(super) async fn last_hour(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
) -> Result<(Vec<Minute>, Counts), StoreError> {
    let to_minute = |t: DateTime<Utc>| t.duration_trunc(TimeDelta::minutes(1)).unwrap_or(t);
    let start = to_minute(now) - TimeDelta::minutes(59);
    let mut minutes: Vec<Minute> = (0..60)
        .map(|i| Minute {
            minute: start + TimeDelta::minutes(i),
            started: 0,
            completed: 0,
            compensated: 0,
            failed: 0,
        })
        .collect();
    let slot = |m: DateTime<Utc>| {
        usize::try_from((m - start).num_minutes())
            .ok()
            .filter(|i| *i < 60)
    };
    let started: Vec<(DateTime<Utc>, i64)> = sqlx::query_as(
        "SELECT date_trunc('minute', created_at), count(*) FROM sagas WHERE created_at >= $1 GROUP BY 1",
    )
    .bind(start)
    .fetch_all(&mut *conn)
    .await?;
    for (m, n) in started {
        if let Some(i) = slot(m) {
            minutes[i].started = n;
        }
    }
    let finished: Vec<(DateTime<Utc>, String, String, i64)> = sqlx::query_as(
        "SELECT date_trunc('minute', updated_at), state, saga_type, count(*) FROM sagas \
         WHERE state IN ('completed', 'compensated', 'failed') AND updated_at >= $1 GROUP BY 1, 2, 3",
    )
    .bind(start)
    .fetch_all(&mut *conn)
    .await?;
    let mut by_type = Counts::new();
    for (m, state, saga_type, n) in finished {
        let Some(i) = slot(m) else { continue };
        let minute = &mut minutes[i];
        match state.as_str() {
            "completed" => minute.completed += n,
            "compensated" => minute.compensated += n,
            _ => minute.failed += n,
        }
        if state != "failed" {
            *by_type.entry(saga_type).or_default().entry(state).or_default() += n;
        }
    }
    Ok((minutes, by_type))
}

/// p50/p90/p99 of succeeded step phases (first dispatch to success) over the most recent finished
/// sagas of the last hour.
pub(super) async fn step_latency(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    catalog: &Catalog,
) -> Result<Vec<StepLatency>, StoreError> {
    let mut rows: Vec<StepLatency> = sqlx::query_as(
        r#"WITH recent AS (
               SELECT saga_type, definition_version, steps FROM sagas
               WHERE state IN ('completed', 'compensated', 'failed') AND updated_at >= $1
               ORDER BY updated_at DESC LIMIT $2)
           SELECT saga_type, definition_version, (e.idx - 1)::int AS step_index, p.phase,
                  count(*) AS count,
                  percentile_cont(0.5) WITHIN GROUP (ORDER BY x.ms) AS p50_ms,
                  percentile_cont(0.9) WITHIN GROUP (ORDER BY x.ms) AS p90_ms,
                  percentile_cont(0.99) WITHIN GROUP (ORDER BY x.ms) AS p99_ms
           FROM recent,
                jsonb_array_elements(recent.steps) WITH ORDINALITY AS e(rec, idx),
                LATERAL (VALUES ('action', e.rec->'action'), ('compensation', e.rec->'compensation')) AS p(phase, r),
                LATERAL (SELECT extract(epoch FROM ((p.r->>'finished_at')::timestamptz
                                                    - (p.r->>'started_at')::timestamptz)) * 1000 AS ms) AS x
           -- A phase without both times (none should succeed so) is left out, not a NULL percentile.
           WHERE p.r->>'status' = 'succeeded' AND x.ms IS NOT NULL
           GROUP BY 1, 2, 3, 4
           ORDER BY 1, 3, 4"#,
    )
    .bind(now - TimeDelta::hours(1))
    .bind(LATENCY_SAMPLE)
    .fetch_all(conn)
    .await?;
    for r in &mut rows {
        r.step = catalog
            .get(&r.saga_type, r.definition_version as u32)
            .and_then(|d| d.steps.get(r.step_index as usize))
            .map_or_else(|| format!("#{}", r.step_index), |s| s.name.clone());
    }
    Ok(rows)
}

const SUMMARY: &str =
    "SELECT id, saga_type, state, current_step, failure_reason, created_at, updated_at FROM sagas";

async fn attention(
    conn: &mut PgConnection,
    condition: &str,
    now: DateTime<Utc>,
) -> Result<Attention, StoreError> {
    let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM sagas WHERE {condition}"))
        .bind(now)
        .fetch_one(&mut *conn)
        .await?;
    let sagas = sqlx::query_as(&format!("{SUMMARY} WHERE {condition} ORDER BY id DESC LIMIT 10"))
        .bind(now)
        .fetch_all(conn)
        .await?;
    Ok(Attention { count, sagas })
}

/// The three lists an operator looks at first.
pub(super) async fn needs_attention(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
) -> Result<BTreeMap<&'static str, Attention>, StoreError> {
    let mut out = BTreeMap::new();
    // `$1` is `now` in every condition (unused by the first).
    out.insert(
        "failed",
        attention(
            &mut *conn,
            "state = 'failed' AND $1::timestamptz IS NOT NULL",
            now,
        )
        .await?,
    );
    let long = format!(
        "state = 'compensating' AND created_at < $1::timestamptz - interval '{} seconds'",
        LONG_COMPENSATION.num_seconds()
    );
    out.insert("compensating_long", attention(&mut *conn, &long, now).await?);
    out.insert(
        "retrying",
        attention(
            &mut *conn,
            r#"state IN ('running', 'compensating') AND (
                 wake_at < $1::timestamptz - interval '5 seconds'
                 OR jsonb_path_exists(steps, '$[*].* ? (@.status == "retry_scheduled" || (@.status == "in_flight" && @.attempt > 1))'))"#,
            now,
        )
        .await?,
    );
    Ok(out)
}

/// The last payload sent per (step, phase), from the `command_dispatched` history.
pub(super) fn commands_sent(history: &[crate::store::HistoryEntry]) -> BTreeMap<(u64, String), Value> {
    let mut sent = BTreeMap::new();
    for h in history.iter().filter(|h| h.kind == "command_dispatched") {
        let d = &h.data.0;
        if let (Some(step), Some(phase)) = (d["step"].as_u64(), d["phase"].as_str()) {
            sent.insert((step, phase.to_owned()), d["payload"].clone());
        }
    }
    sent
}
