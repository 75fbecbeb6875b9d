//! Live changes: every saga row a statement writes is announced on `saga_changes` once, with its
//! summary (migrations/orchestrator/0008: statement-level triggers over transition tables).

use std::time::Duration;

use saga_orchestrator::MIGRATOR;
use saga_orchestrator::{CHANGES_CHANNEL as CHANNEL, Change};
use saga_runtime::testing::fresh_database;
use sqlx::postgres::PgListener;
use uuid::Uuid;

const INSERT: &str = "INSERT INTO sagas (id, saga_type, definition_version, state, version, context, \
                                         steps, current_step, created_at, updated_at) \
                      SELECT id, 'register_user', 1, 'running', 1, '{}', '[]', 'create_user', now(), now() \
                      FROM UNNEST($1::uuid[]) AS id ON CONFLICT DO NOTHING";

#[tokio::test]
async fn every_row_a_statement_writes_is_announced_once() {
    let (pool, _) = fresh_database(&MIGRATOR).await;
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen(CHANNEL).await.unwrap();
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();

    sqlx::query(INSERT).bind(&ids).execute(&pool).await.unwrap();
    // Already there: nothing inserted, nothing announced.
    sqlx::query(INSERT).bind(&ids[..1]).execute(&pool).await.unwrap();
    sqlx::query(
        "UPDATE sagas SET state = 'completed', version = version + 1, current_step = NULL, \
                          updated_at = now() WHERE id = ANY($1)",
    )
    .bind(&ids[1..])
    .execute(&pool)
    .await
    .unwrap();
    // Matches nothing: nothing announced.
    sqlx::query("UPDATE sagas SET version = version + 1 WHERE id = $1")
        .bind(Uuid::now_v7())
        .execute(&pool)
        .await
        .unwrap();
    // Notifications arrive in commit order: once this one is here, every earlier one is too.
    sqlx::query("SELECT pg_notify($1, 'end')")
        .bind(CHANNEL)
        .execute(&pool)
        .await
        .unwrap();

    let mut seen = Vec::new();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
            .await
            .expect("the notifications arrive")
            .unwrap();
        if n.payload() == "end" {
            break;
        }
        let change: Change = serde_json::from_str(n.payload()).unwrap();
        seen.push((change.id, change.state, change.current_step, change.version));
    }
    let running = |id: Uuid| (id, "running".to_owned(), Some("create_user".to_owned()), 1);
    let completed = |id: Uuid| (id, "completed".to_owned(), None, 2);
    // The inserts first, in the order written; then the update's rows (in the order its scan met
    // them, which the statement does not fix).
    assert_eq!(seen.len(), 5, "one notification per row written: {seen:?}");
    assert_eq!(seen[..3], ids.iter().map(|&id| running(id)).collect::<Vec<_>>());
    let mut updated = seen[3..].to_vec();
    updated.sort();
    assert_eq!(updated, vec![completed(ids[1]), completed(ids[2])]);
}
