//! Every path of both sagas, checked in the participants' own databases.

use saga_e2e::{Options, Stack, dispatched};
use saga_proto::v1::SagaState;

fn state(v: &saga_proto::v1::SagaView) -> SagaState {
    SagaState::try_from(v.state).unwrap()
}

#[tokio::test]
async fn register_user_succeeds_or_compensates_for_each_rule() {
    let stack = Stack::start().await;
    let ok = stack.register("ann@example.com", "Ann").await;
    let view = stack.finish_one(&ok).await;
    assert_eq!(state(&view), SagaState::Completed);
    let user = stack.context(&ok, "user_id").await;
    let q = format!(
        "SELECT count(*) FROM users WHERE id = '{user}' AND email = 'ann@example.com' AND name = 'Ann'"
    );
    assert_eq!(Stack::scalar(&stack.dbs.users, &q).await, 1);
    let q = format!("SELECT count(*) FROM authors WHERE id = '{user}' AND name = 'Ann'");
    assert_eq!(
        Stack::scalar(&stack.dbs.posts, &q).await,
        1,
        "the author replica has the same id and name"
    );

    // The same e-mail again (in another case): refused at step 1, nothing to undo.
    let dup = stack.register("ANN@example.com", "Annie").await;
    let view = stack.finish_one(&dup).await;
    assert_eq!(state(&view), SagaState::Compensated);
    assert_eq!(
        view.failure_reason,
        "step `create_user` was rejected: e-mail ANN@example.com is already registered"
    );
    assert_eq!(
        dispatched(&stack.history(&dup).await),
        vec![(0, "action".to_owned())]
    );

    // A pen name the post service already has: refused at step 2, the user is deleted again.
    let clash = stack.register("other.ann@example.com", "ann").await;
    let view = stack.finish_one(&clash).await;
    assert_eq!(state(&view), SagaState::Compensated);
    assert_eq!(
        view.failure_reason,
        "step `create_author` was rejected: pen name `ann` is already taken by another author"
    );
    assert_eq!(
        dispatched(&stack.history(&clash).await),
        vec![
            (0, "action".into()),
            (1, "action".into()),
            (0, "compensation".into())
        ]
    );
    let clash_user = stack.context(&clash, "user_id").await;
    let q = format!("SELECT count(*) FROM users WHERE id = '{clash_user}'");
    assert_eq!(
        Stack::scalar(&stack.dbs.users, &q).await,
        0,
        "compensated: the user is gone"
    );

    let report = stack.audit().await;
    assert!(report.consistent(), "{:?}", report.violations);
    assert_eq!((report.users, report.authors), (1, 1));
    stack.stop().await;
}

#[tokio::test]
async fn publish_post_succeeds_or_compensates_for_each_rule() {
    // Quota 3: the first three posts all get a slot (reserving comes before the title check).
    let stack = Stack::start_with(Options {
        post_quota: Some(3),
        ..Options::default()
    })
    .await;
    let reg = stack.register("poster@example.com", "Poster").await;
    stack.finish_one(&reg).await;
    let user = stack.context(&reg, "user_id").await;

    let ok = stack.publish(&user, "First post").await;
    let empty = stack.publish(&user, "  ").await;
    let long = stack.publish(&user, &"t".repeat(201)).await;
    let views = stack.finish(&[ok.clone(), empty.clone(), long.clone()]).await;
    assert_eq!(
        views.iter().map(state).collect::<Vec<_>>(),
        vec![
            SagaState::Completed,
            SagaState::Compensated,
            SagaState::Compensated
        ]
    );
    assert_eq!(
        views[1].failure_reason,
        "step `create_post` was rejected: invalid title: it must not be empty"
    );
    assert_eq!(
        views[2].failure_reason,
        "step `create_post` was rejected: invalid title: 201 characters, at most 200 allowed"
    );
    for id in [&empty, &long] {
        assert_eq!(
            dispatched(&stack.history(id).await),
            vec![
                (0, "action".into()),
                (1, "action".into()),
                (0, "compensation".into())
            ],
            "the quota slot is released"
        );
    }
    let post = stack.context(&ok, "post_id").await;
    let q = format!(
        "SELECT count(*) FROM posts WHERE id = '{post}' AND author_id = '{user}' AND title = 'First post'"
    );
    assert_eq!(Stack::scalar(&stack.dbs.posts, &q).await, 1);
    let q = format!("SELECT (post_count * 10 + reserved_posts)::bigint FROM users WHERE id = '{user}'");
    assert_eq!(
        Stack::scalar(&stack.dbs.users, &q).await,
        10,
        "one post counted, the two refused slots released"
    );

    // Quota 3: two more posts fit, the next is refused at step 1.
    let second = stack.publish(&user, "Second post").await;
    let third = stack.publish(&user, "Third post").await;
    let views = stack.finish(&[second.clone(), third.clone()]).await;
    assert!(views.iter().all(|v| state(v) == SagaState::Completed));
    let fourth = stack.publish(&user, "Fourth post").await;
    let view = stack.finish_one(&fourth).await;
    assert_eq!(state(&view), SagaState::Compensated);
    assert_eq!(
        view.failure_reason,
        "step `reserve_quota` was rejected: post quota of 3 is exhausted"
    );
    assert_eq!(
        dispatched(&stack.history(&fourth).await),
        vec![(0, "action".to_owned())]
    );

    // A user the post service has no author for (it predates the replica): refused at step 2.
    let legacy = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO users (id, email, name, post_quota) VALUES ($1, 'legacy@example.com', 'Legacy', 3)",
    )
    .bind(legacy)
    .execute(&stack.dbs.users)
    .await
    .unwrap();
    let orphan = stack.publish(&legacy.to_string(), "Old news").await;
    let view = stack.finish_one(&orphan).await;
    assert_eq!(
        view.failure_reason,
        format!("step `create_post` was rejected: unknown author {legacy}")
    );
    let q = format!("SELECT reserved_posts::bigint FROM users WHERE id = '{legacy}'");
    assert_eq!(
        Stack::scalar(&stack.dbs.users, &q).await,
        0,
        "the slot was released"
    );
    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(legacy)
        .execute(&stack.dbs.users)
        .await
        .unwrap();

    // A completed publish_post is never undone: its history holds no compensation at all.
    for id in [&ok, &second, &third] {
        assert!(
            dispatched(&stack.history(id).await)
                .iter()
                .all(|(_, p)| p == "action")
        );
    }
    let report = stack.audit().await;
    assert!(report.consistent(), "{:?}", report.violations);
    stack.stop().await;
}

#[tokio::test]
async fn a_refused_pivot_compensates_the_earlier_steps_in_reverse_order() {
    let mut stack = Stack::start().await;
    let reg = stack.register("late@example.com", "Late").await;
    stack.finish_one(&reg).await;
    let user = stack.context(&reg, "user_id").await;

    // The post service is down while the post is on its way; meanwhile an administrator disables
    // the account, so the pivot (ConfirmPost) will refuse.
    stack.stop_posts().await;
    let id = stack.publish(&user, "Never confirmed").await;
    stack
        .wait_event(&id, "CreatePost dispatched", |e| {
            e.kind == "command_dispatched" && e.data_json.contains("CreatePost")
        })
        .await;
    sqlx::query("UPDATE users SET status = 'disabled' WHERE id = $1::uuid")
        .bind(&user)
        .execute(&stack.dbs.users)
        .await
        .unwrap();
    stack.start_posts().await;

    let view = stack.finish_one(&id).await;
    assert_eq!(state(&view), SagaState::Compensated);
    assert_eq!(
        view.failure_reason,
        "step `confirm_post` was rejected: the user is disabled and cannot publish"
    );
    assert_eq!(
        dispatched(&stack.history(&id).await),
        vec![
            (0, "action".into()),
            (1, "action".into()),
            (2, "action".into()),
            (1, "compensation".into()),
            (0, "compensation".into()),
        ],
        "DeletePost, then ReleasePostQuota"
    );
    let post = stack.context(&id, "post_id").await;
    assert_eq!(
        Stack::scalar(
            &stack.dbs.posts,
            &format!("SELECT count(*) FROM posts WHERE id = '{post}'")
        )
        .await,
        0
    );
    let q = format!("SELECT (post_count * 10 + reserved_posts)::bigint FROM users WHERE id = '{user}'");
    assert_eq!(
        Stack::scalar(&stack.dbs.users, &q).await,
        0,
        "nothing counted, slot released"
    );
    stack.stop().await;
}
