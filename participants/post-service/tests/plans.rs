//! The audit's read of unclaimed effects stays linear on tables PostgreSQL has not analyzed yet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use post_service::{MIGRATOR, Posts};
use saga_participant::audit::{Ledger, UnclaimedQuery, read_unclaimed};
use saga_runtime::testing::{assert_never_analyzed, fresh_database};
use tracing_subscriber::layer::{Context, SubscriberExt};

/// The messages of the notices PostgreSQL sends (sqlx logs each as an event of its own target).
#[derive(Clone, Default)]
struct Notices(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Notices {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        struct Message<'a>(&'a mut String);
        impl tracing::field::Visit for Message<'_> {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "message" {
                    self.0.push_str(value);
                }
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0.push_str(&format!("{value:?}"));
                }
            }
        }
        if event.metadata().target() == "sqlx::postgres::notice" {
            let mut text = String::new();
            event.record(&mut Message(&mut text));
            self.0.lock().expect("notices").push(text);
        }
    }
}

/// After a burst of `register_user` sagas: 15,000 authors, each claimed by the `CreateAuthor`
/// that made it, no posts, and none of it analyzed yet. PostgreSQL then estimates the inbox's
/// succeeded commands at one row and, left to itself, anti-joins the (guessed) posts to it with a
/// nested loop — once the posts are there, every post scans the whole inbox (18 s for a page after
/// 15,000 sagas at 500/s, measured). The kit turns nested loops off for this read; `auto_explain`
/// shows the plan it ran.
#[tokio::test]
async fn unclaimed_effects_are_read_without_nested_loops_on_tables_never_analyzed() {
    let (pool, _) = fresh_database(&MIGRATOR).await;
    for table in ["inbox", "authors", "posts"] {
        sqlx::query(&format!("ALTER TABLE {table} SET (autovacuum_enabled = false)"))
            .execute(&pool)
            .await
            .unwrap();
    }
    sqlx::query(
        "WITH a AS (INSERT INTO authors (id, name) \
                    SELECT gen_random_uuid(), 'author ' || g FROM generate_series(1, 15000) AS g RETURNING id) \
         INSERT INTO inbox (saga_id, step_index, phase, command_type, outcome, reply, message_id) \
         SELECT gen_random_uuid(), 1, 'action', 'CreateAuthor', 'success', \
                jsonb_build_object('author_id', a.id), a.id::text FROM a",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_never_analyzed(&pool, "inbox").await;

    // Every statement's plan comes back as a notice.
    let explained = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .after_connect(|conn, _| {
            Box::pin(async move {
                for setting in [
                    "LOAD 'auto_explain'",
                    "SET auto_explain.log_min_duration = 0",
                    "SET auto_explain.log_level = notice",
                ] {
                    sqlx::query(setting).execute(&mut *conn).await?;
                }
                Ok(())
            })
        })
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .unwrap();
    let ledger = Ledger {
        pool: explained,
        domain: Arc::new(Posts),
        commands_topic: "post-commands".into(),
    };
    let query = UnclaimedQuery::parse(&HashMap::from([(
        "since".to_owned(),
        "2000-01-01T00:00:00Z".to_owned(),
    )]))
    .unwrap();
    let notices = Notices::default();
    let page = {
        let _capture = tracing::subscriber::set_default(tracing_subscriber::registry().with(notices.clone()));
        read_unclaimed(&ledger, &query).await.unwrap()
    };
    assert!(page.effects.is_empty(), "every author is claimed");
    let plans = notices.0.lock().unwrap().clone();
    let plan = plans
        .iter()
        .find(|p| p.contains("NOT EXISTS (SELECT 1 FROM inbox i"))
        .unwrap_or_else(|| panic!("no plan of the unclaimed read among the notices: {plans:?}"));
    assert!(
        plan.contains("Anti Join") && !plan.contains("Nested Loop"),
        "the unclaimed read must anti-join with a hash or merge join:\n{plan}"
    );
}
