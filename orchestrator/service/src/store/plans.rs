//! Query plans that must not depend on statistics, against a real database: statements that run
//! all the time read by an index even on a table PostgreSQL has not analyzed yet (a new
//! deployment's first minutes, or a table that grew faster than autovacuum looks).

use super::{ANY_DUE, any_due};
use crate::startup::MIGRATOR;
use chrono::Utc;
use saga_runtime::testing::{assert_never_analyzed, fresh_database};
use serde_json::Value;

/// Node types of a JSON plan, depth first.
fn node_types(plan: &Value, out: &mut Vec<String>) {
    if let Some(t) = plan.get("Node Type").and_then(Value::as_str) {
        out.push(t.to_owned());
    }
    for child in plan.get("Plans").and_then(Value::as_array).into_iter().flatten() {
        node_types(child, out);
    }
}

#[tokio::test]
async fn the_timer_tick_reads_the_wake_index_on_a_table_never_analyzed() {
    let (pool, _) = fresh_database(&MIGRATOR).await;
    // No autovacuum (so no autoanalyze) on this table: the planner only knows its size on disk.
    sqlx::query("ALTER TABLE sagas SET (autovacuum_enabled = false)")
        .execute(&pool)
        .await
        .unwrap();
    // 3,000 finished sagas (no wake-up) and 30 waiting, with step records of a realistic size.
    sqlx::query(
        "INSERT INTO sagas (id, saga_type, definition_version, state, version, context, steps, \
                            wake_at, created_at, updated_at) \
         SELECT gen_random_uuid(), 'register_user', 1, \
                CASE WHEN g % 100 = 0 THEN 'running' ELSE 'completed' END, 1, '{}', \
                (SELECT jsonb_agg(repeat('x', 100)) FROM generate_series(1, 10)), \
                CASE WHEN g % 100 = 0 THEN now() + interval '1 hour' END, now(), now() \
         FROM generate_series(1, 3000) AS g",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_never_analyzed(&pool, "sagas").await;

    let explained: Value = sqlx::query_scalar(&format!("EXPLAIN (FORMAT JSON) {}", ANY_DUE))
        .bind(Utc::now())
        .fetch_one(&pool)
        .await
        .unwrap();
    let mut nodes = Vec::new();
    node_types(&explained[0]["Plan"], &mut nodes);
    assert!(
        nodes.iter().any(|n| n.starts_with("Index")) && !nodes.iter().any(|n| n == "Seq Scan"),
        "the timer's tick must read the wake_at index, not the table: {nodes:?}"
    );
    assert!(!any_due(&pool, Utc::now()).await.unwrap(), "nothing is due yet");
    assert!(
        any_due(&pool, Utc::now() + chrono::Duration::hours(2))
            .await
            .unwrap(),
        "due once the hour has passed"
    );
}
