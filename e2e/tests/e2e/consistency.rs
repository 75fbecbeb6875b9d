//! A batch of 500 mixed sagas, then DESIGN.md's invariants checked across the three databases.

use std::time::Duration;

use saga_e2e::Stack;
use saga_proto::v1::SagaState;

#[tokio::test]
async fn five_hundred_mixed_sagas_leave_the_three_databases_consistent() {
    let stack = Stack::start().await;
    let started = std::time::Instant::now();

    // 200 registrations: 160 new users, 20 reusing an e-mail, 20 reusing a pen name.
    let mut registrations = Vec::new();
    for i in 0..160 {
        registrations.push(
            stack
                .register(&format!("user{i}@example.com"), &format!("User {i}"))
                .await,
        );
    }
    for i in 0..20 {
        registrations.push(
            stack
                .register(&format!("USER{i}@example.com"), &format!("Copycat {i}"))
                .await,
        );
        registrations.push(
            stack
                .register(&format!("twin{i}@example.com"), &format!("User {}", 100 + i))
                .await,
        );
    }
    let views = stack
        .client
        .wait_terminal(&registrations, Duration::from_secs(240))
        .await
        .unwrap();
    let mut users = Vec::new();
    for (id, v) in registrations.iter().zip(&views) {
        if v.state == SagaState::Completed as i32 {
            users.push(stack.context(id, "user_id").await);
        }
    }
    // Every e-mail and every pen name is taken by exactly one of the racing sagas.
    assert_eq!(users.len(), 160, "one winner per e-mail and per pen name");

    // 300 posts: mostly valid, some with bad titles, some by unknown users, and more posts than
    // the quota of 3 for some users.
    let mut posts = Vec::new();
    let mut valid_per_user = std::collections::HashMap::new();
    for i in 0..300 {
        let user = users[i % 60].clone(); // 60 users, 5 attempts each
        let id = match i % 7 {
            5 => stack.publish(&user, "").await,
            6 => {
                stack
                    .publish(&uuid::Uuid::now_v7().to_string(), "Ghost writer")
                    .await
            }
            _ => {
                *valid_per_user.entry(user.clone()).or_insert(0usize) += 1;
                stack.publish(&user, &format!("Post {i}")).await
            }
        };
        posts.push(id);
    }
    let views = stack
        .client
        .wait_terminal(&posts, Duration::from_secs(240))
        .await
        .unwrap();
    let mut completed = 0;
    for v in &views {
        match SagaState::try_from(v.state).unwrap() {
            SagaState::Completed => completed += 1,
            SagaState::Compensated => {
                let r = &v.failure_reason;
                assert!(
                    r.contains("invalid title")
                        || r.contains("no user")
                        || r.contains("post quota of 3 is exhausted"),
                    "unexpected failure: {r}"
                );
            }
            other => panic!("saga {} ended {other:?}", v.saga_id),
        }
    }
    // Each user's valid posts succeed up to the quota of 3 — fewer when a doomed post (bad title)
    // still held a slot at that moment; its compensation releases it afterwards.
    let fit: usize = valid_per_user.values().map(|n| (*n).min(3)).sum();
    assert!(
        completed <= fit && completed > fit / 2,
        "{completed} of at most {fit}"
    );

    let report = stack.audit().await;
    assert!(report.consistent(), "{:#?}", report.violations);
    assert_eq!(report.count("register_user", "completed"), 160);
    assert_eq!(report.count("register_user", "compensated"), 40);
    assert_eq!(report.count("publish_post", "completed"), completed as i64);
    assert_eq!(
        report.count("publish_post", "compensated"),
        300 - completed as i64
    );
    assert_eq!(
        (report.users, report.authors, report.posts),
        (160, 160, completed as i64)
    );
    eprintln!("500 sagas in {:?}", started.elapsed());
    stack.stop().await;
}
