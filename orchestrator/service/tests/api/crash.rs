//! Crash safety: committed outbox rows survive a stopped relay; two replicas run safely at once.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use saga_proto::v1::SagaState;

use crate::helpers::{Answer, WAIT, command, spawn_app_with, spawn_on};

/// The built-in catalog with every deadline raised to ten minutes.
fn long_deadline_catalog() -> tempfile::NamedTempFile {
    let text = include_str!("../../../sagas.toml").replace("deadline_ms = 5000", "deadline_ms = 600000");
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
    file
}

#[tokio::test]
async fn committed_outbox_rows_are_published_after_the_relay_restarts() {
    // The relay is "down": sagas start, their commands wait in the outbox. Deadlines are long so
    // that no retry (a legitimate second message) muddles the count.
    let catalog = long_deadline_catalog();
    let path = catalog.path().to_owned();
    let app = spawn_app_with(|s| {
        s.relay.enabled = false;
        s.catalog_path = Some(path.clone());
    })
    .await;
    let users = app.reader("user.commands").await;
    let a = app.register("crash-a@example.com").await;
    let b = app.register("crash-b@example.com").await;
    assert_eq!(app.count("SELECT count(*) FROM outbox").await, 2);
    assert!(
        users.drain(Duration::from_millis(500)).await.is_empty(),
        "nothing leaves without a relay"
    );
    let (pool, db_url, kafka) = (app.pool.clone(), app.db_url.clone(), app.kafka.clone());
    app.stop().await;

    // The orchestrator comes back with its relay: each command is published exactly once.
    let app = spawn_on(pool, db_url, kafka, |s| s.catalog_path = Some(path)).await;
    let records = users.take(2, WAIT).await;
    let sagas: HashSet<_> = records.iter().map(|r| command(r).saga_id).collect();
    assert_eq!(sagas, HashSet::from([a.clone(), b.clone()]));
    assert!(
        users.drain(Duration::from_millis(500)).await.is_empty(),
        "no row published twice"
    );
    assert_eq!(app.count("SELECT count(*) FROM outbox").await, 0);

    // And the sagas carry on normally.
    let participant = app.participant();
    let posts = app.reader("post.commands").await;
    for r in &records {
        participant.answer(&command(r), Answer::Ok("{}")).await;
    }
    for r in posts.take(2, WAIT).await {
        participant.answer(&command(&r), Answer::Ok("{}")).await;
    }
    app.wait_for(&a, SagaState::Completed).await;
    app.wait_for(&b, SagaState::Completed).await;
}

#[tokio::test]
async fn two_replicas_share_the_work_without_losing_or_repeating_commands() {
    let first = spawn_app_with(|_| {}).await;
    let second = spawn_on(
        first.pool.clone(),
        first.db_url.clone(),
        first.kafka.clone(),
        |_| {},
    )
    .await;
    let (users, posts) = (
        first.reader("user.commands").await,
        first.reader("post.commands").await,
    );
    let participant = first.participant();

    let n = 30;
    let mut ids = vec![];
    for i in 0..n {
        let app = if i % 2 == 0 { &first } else { &second };
        ids.push(app.register(&format!("replica{i}@example.com")).await);
    }
    let mut per_step: HashMap<(String, u32), usize> = HashMap::new();
    for r in users.take(n, WAIT).await {
        let cmd = command(&r);
        *per_step.entry((cmd.saga_id.clone(), cmd.step_index)).or_default() += 1;
        participant.answer(&cmd, Answer::Ok("{}")).await;
    }
    for r in posts.take(n, WAIT).await {
        let cmd = command(&r);
        *per_step.entry((cmd.saga_id.clone(), cmd.step_index)).or_default() += 1;
        participant.answer(&cmd, Answer::Ok("{}")).await;
    }
    for id in &ids {
        first.wait_for(id, SagaState::Completed).await;
    }
    assert_eq!(per_step.len(), 2 * n);
    assert!(
        per_step.values().all(|&c| c == 1),
        "each step commanded once: {per_step:?}"
    );
    assert!(users.drain(Duration::from_millis(300)).await.is_empty());
    assert!(posts.drain(Duration::from_millis(100)).await.is_empty());
    second.stop().await;
    first.stop().await;
}
