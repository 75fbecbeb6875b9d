//! The consistency audit (`RunAudit`) over the three services: a clean mixed batch has no
//! findings; then each kind of drift, injected by hand into one database, is found and named
//! with its saga id — and nothing else is reported; the cross-checks find drift no ledger
//! shows (an author renamed, a post count changed by hand), and only drift that stays.

use std::collections::BTreeSet;

use saga_e2e::{Metrics, Stack};
use saga_proto::v1::saga_orchestrator_client::SagaOrchestratorClient;
use saga_proto::v1::{AuditReport, RunAuditRequest, SagaState};

async fn audit(stack: &Stack, unfinished_after_seconds: Option<u32>) -> AuditReport {
    let mut client = SagaOrchestratorClient::connect(stack.grpc_url.clone())
        .await
        .unwrap();
    let since = chrono::Utc::now() - chrono::Duration::hours(1);
    client
        .run_audit(RunAuditRequest {
            since: Some(prost_types::Timestamp {
                seconds: since.timestamp(),
                nanos: 0,
            }),
            until: None,
            saga_type: String::new(),
            unfinished_after_seconds,
        })
        .await
        .expect("RunAudit")
        .into_inner()
}

/// (kind, saga id — or for an effect no saga claims, what it is; for replica drift, the
/// cross-check and the key —, step, participant) of every finding.
fn found(report: &AuditReport) -> BTreeSet<Found> {
    report
        .findings
        .iter()
        .map(|f| {
            let subject = if f.saga_id.is_empty() {
                let record: serde_json::Value = serde_json::from_str(&f.participant_json).unwrap();
                match record["entity"].as_str() {
                    Some(entity) => entity.to_owned(),
                    None => format!(
                        "{} {}",
                        record["cross_check"].as_str().unwrap(),
                        record["key"].as_str().unwrap()
                    ),
                }
            } else {
                f.saga_id.clone()
            };
            (f.kind.clone(), subject, f.step_index, f.participant.clone())
        })
        .collect()
}

/// A finding as [`found`] gives it.
type Found = (String, String, Option<u32>, String);

fn finding(kind: &str, subject: impl Into<String>, step: Option<u32>, participant: &str) -> Found {
    (kind.to_owned(), subject.into(), step, participant.to_owned())
}

/// A replica-drift finding of the cross-check `check` at `key`.
fn replica_drift(check: &str, key: &str) -> Found {
    finding("replica_drift", format!("{check} {key}"), None, "users, posts")
}

/// `n` register_user sagas of users `{who}{i}@example.com`, named `{Who} {i}`; their ids.
async fn register_all(stack: &Stack, who: &str, n: usize) -> Vec<String> {
    let named = format!("{}{}", who[..1].to_uppercase(), &who[1..]);
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            stack
                .register(&format!("{who}{i}@example.com"), &format!("{named} {i}"))
                .await,
        );
    }
    ids
}

/// The user ids the register_user sagas `ids` created.
async fn user_ids(stack: &Stack, ids: &[impl AsRef<str>]) -> Vec<String> {
    let mut users = Vec::new();
    for id in ids {
        users.push(stack.context(id.as_ref(), "user_id").await);
    }
    users
}

/// Runs `sql` by hand (drift a test injects), `$1` being the UUID `id`; the rows it touched.
async fn by_hand<'c>(db: impl sqlx::PgExecutor<'c>, sql: &str, id: &str) -> u64 {
    sqlx::query(sql)
        .bind(uuid::Uuid::parse_str(id).unwrap())
        .execute(db)
        .await
        .unwrap()
        .rows_affected()
}

/// The body of an HTTP answer, as JSON.
async fn json_of(request: reqwest::RequestBuilder) -> serde_json::Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// The findings of `kind` the last audit run exported.
fn exported(metrics: &Metrics, kind: &str) -> f64 {
    metrics.sum("saga_audit_findings", &[("kind", kind)])
}

#[tokio::test]
async fn a_clean_batch_has_no_findings_and_each_injected_drift_is_found_alone() {
    let stack = Stack::start().await;

    // 12 registrations: 10 new users, one reused e-mail, one reused pen name.
    let mut registrations = register_all(&stack, "auditor", 10).await;
    registrations.push(stack.register("AUDITOR0@example.com", "Copycat").await);
    registrations.push(stack.register("twin@example.com", "Auditor 1").await);
    let views = stack.finish(&registrations).await;
    let completed: Vec<&String> = registrations
        .iter()
        .zip(&views)
        .filter(|(_, v)| v.state == SagaState::Completed as i32)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(completed.len(), 10, "one winner per e-mail and pen name");
    let users = user_ids(&stack, &completed).await;
    // 12 posts by the first four users: valid ones, empty titles, an unknown author.
    let mut posts = Vec::new();
    for i in 0..12 {
        let title = if i % 4 == 3 {
            String::new()
        } else {
            format!("Post {i}")
        };
        posts.push(stack.publish(&users[i % 4], &title).await);
    }
    posts.push(stack.publish(&uuid::Uuid::now_v7().to_string(), "Ghost").await);
    let post_views = stack.finish(&posts).await;
    assert!(
        post_views
            .iter()
            .any(|v| v.state == SagaState::Compensated as i32)
            && post_views.iter().any(|v| v.state == SagaState::Completed as i32),
        "a mixed batch"
    );

    let clean = audit(&stack, None).await;
    assert_eq!(found(&clean), BTreeSet::new(), "{:#?}", clean.findings);
    assert_eq!(clean.sagas_checked, 25);
    let topics: BTreeSet<&str> = clean
        .participants
        .iter()
        .map(|p| p.commands_topic.as_str())
        .collect();
    assert_eq!(topics, BTreeSet::from(["post.commands", "user.commands"]));
    assert!(clean.unaudited_topics.is_empty());
    assert!(clean.ledger_entries > 40, "{} entries", clean.ledger_entries);

    // Drift, one kind per saga. Users 4.. published nothing, so deleting them touches no post.
    let (deleted_user, deleted_author, flipped) = (completed[4], completed[5], completed[6]);
    by_hand(&stack.dbs.users, "DELETE FROM users WHERE id = $1", &users[4]).await;
    by_hand(&stack.dbs.posts, "DELETE FROM authors WHERE id = $1", &users[5]).await;
    let n = by_hand(
        &stack.dbs.posts,
        "UPDATE inbox SET outcome = 'business_failure', reason = 'flipped by hand', reply = NULL \
         WHERE saga_id = $1 AND step_index = 1 AND phase = 'action'",
        flipped,
    )
    .await;
    assert_eq!(n, 1);
    // A completed post saga left "running" as if the orchestrator had lost track of it two hours ago.
    let (unfinished, _) = posts
        .iter()
        .zip(&post_views)
        .find(|(_, v)| v.state == SagaState::Completed as i32)
        .unwrap();
    by_hand(
        &stack.dbs.orchestrator,
        "UPDATE sagas SET state = 'running', created_at = created_at - interval '2 hours', \
         updated_at = updated_at - interval '2 hours' WHERE id = $1",
        unfinished,
    )
    .await;
    // An effect in the users database for a saga no orchestrator started.
    let stranger = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO inbox (saga_id, step_index, phase, command_type, outcome, reply, message_id) \
         VALUES ($1, 0, 'action', 'CreateUser', 'success', $2, 'by-hand')",
    )
    .bind(stranger)
    .bind(serde_json::json!({ "user_id": uuid::Uuid::now_v7() }))
    .execute(&stack.dbs.users)
    .await
    .unwrap();

    // A post no saga made, by an existing author.
    let stray_post = uuid::Uuid::now_v7();
    sqlx::query("INSERT INTO posts (id, author_id, title) VALUES ($1, $2, 'Inserted by hand')")
        .bind(stray_post)
        .bind(uuid::Uuid::parse_str(&users[0]).unwrap())
        .execute(&stack.dbs.posts)
        .await
        .unwrap();

    // A released quota slot reserved again by hand (post 3 has an empty title: refused, so its
    // saga released the slot user 3 had reserved).
    let released = &posts[3];
    assert_eq!(post_views[3].state, SagaState::Compensated as i32);
    let released_id = uuid::Uuid::parse_str(released).unwrap();
    let post_id = uuid::Uuid::parse_str(&stack.context(released, "post_id").await).unwrap();
    let mut users_tx = stack.dbs.users.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO post_reservations (saga_id, user_id, post_id, state) VALUES ($1, $2, $3, 'reserved')",
    )
    .bind(released_id)
    .bind(uuid::Uuid::parse_str(&users[3]).unwrap())
    .bind(post_id)
    .execute(&mut *users_tx)
    .await
    .unwrap();
    by_hand(
        &mut *users_tx,
        "UPDATE users SET reserved_posts = reserved_posts + 1 WHERE id = $1",
        &users[3],
    )
    .await;
    users_tx.commit().await.unwrap();

    let drift = audit(&stack, Some(3600)).await;
    let expected = BTreeSet::from([
        finding("domain_check", deleted_user, Some(0), "users"),
        finding("domain_check", deleted_author, Some(1), "posts"),
        finding("domain_check", released, Some(0), "users"),
        finding("missing_success", flipped, Some(1), "posts"),
        finding("unfinished", unfinished, None, ""),
        finding("unknown_saga", stranger.to_string(), Some(0), "users"),
        finding("unclaimed_effect", format!("post {stray_post}"), None, "posts"),
        // The flipped record no longer claims the author replica its action created.
        finding(
            "unclaimed_effect",
            format!("author replica {}", users[6]),
            None,
            "posts",
        ),
        // The cross-checks: the deleted user's author and the deleted author's user are alone,
        // and the stray post makes its author's count one more than its user's.
        replica_drift("authors_replicate_users", &users[4]),
        replica_drift("post_counts_agree", &users[4]),
        replica_drift("authors_replicate_users", &users[5]),
        replica_drift("post_counts_agree", &users[5]),
        replica_drift("post_counts_agree", &users[0]),
    ]);
    assert_eq!(found(&drift), expected, "{:#?}", drift.findings);
    // Each finding shows both sides' records.
    let by_kind = |k: &str| drift.findings.iter().find(|f| f.kind == k).unwrap();
    let missing = by_kind("missing_success");
    assert!(
        missing.orchestrator_json.contains("\"succeeded\""),
        "{}",
        missing.orchestrator_json
    );
    assert!(
        missing.participant_json.contains("business_failure"),
        "{}",
        missing.participant_json
    );
    let domain = |text: &str| {
        drift
            .findings
            .iter()
            .any(|f| f.kind == "domain_check" && f.message.contains(text))
    };
    assert!(domain("no longer exists") && domain("still reserved"));
    assert_eq!(by_kind("unknown_saga").orchestrator_json, "null");
    assert!(by_kind("unknown_saga").participant_json.contains("CreateUser"));

    // The dashboard's Consistency page runs the same audit and shows the last report.
    let http = reqwest::Client::new();
    let ran = json_of(
        http.post(format!("{}/api/audit", stack.http_url))
            .json(&serde_json::json!({"since_hours": 1})),
    )
    .await;
    let ids: BTreeSet<&str> = ran["report"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["saga_id"].as_str())
        .collect();
    let expected_ids: BTreeSet<&str> = expected
        .iter()
        .filter(|(kind, ..)| kind != "unclaimed_effect" && kind != "replica_drift")
        .map(|(_, id, _, _)| id.as_str())
        .collect();
    assert_eq!(ids, expected_ids, "{ran:#}");
    assert_eq!(ran["counts"]["domain_check"], 3);
    assert_eq!(ran["counts"]["unclaimed_effect"], 2);
    assert_eq!(ran["counts"]["replica_drift"], 5);
    let last = json_of(http.get(format!("{}/api/audit", stack.http_url))).await;
    assert_eq!(last["report"]["started_at"], ran["report"]["started_at"]);
    assert_eq!(
        last["participants_configured"],
        serde_json::json!(["posts", "users"])
    );
    let bad = http
        .post(format!("{}/api/audit", stack.http_url))
        .json(&serde_json::json!({"since_hours": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let message: serde_json::Value = bad.json().await.unwrap();
    assert_eq!(message["error"], "since_hours: a whole number from 1 to 720");

    // The last run is exported as metrics.
    let metrics = Metrics::scrape(&stack.http_url).await;
    assert_eq!(exported(&metrics, "domain_check"), 3.0);
    assert_eq!(exported(&metrics, "unknown_saga"), 1.0);
    assert_eq!(exported(&metrics, "parked"), 0.0);
    assert!(metrics.sum("saga_audit_last_run_timestamp_seconds", &[]) > 1.7e9);
    stack.stop().await;
}

/// The figure in docs/OPERATIONS.md: 10,000 completed `register_user` sagas (written straight
/// into the three databases, as a long-running deployment would have them) audited through
/// `RunAudit` — both ledgers read over HTTP in pages, with the domain checks. Not a timed test:
/// run by hand, it prints the figure:
/// `cargo nextest run -p saga-e2e --run-ignored only audit_of_ten_thousand --no-capture`.
#[tokio::test]
#[ignore = "a benchmark figure, run by hand"]
async fn audit_of_ten_thousand_sagas() {
    const N: usize = 10_000;
    let stack = Stack::start().await;
    let sagas: Vec<uuid::Uuid> = (0..N).map(|_| uuid::Uuid::now_v7()).collect();
    let users: Vec<uuid::Uuid> = (0..N).map(|_| uuid::Uuid::now_v7()).collect();
    let steps = serde_json::json!([
        {"action": {"status": "succeeded", "attempt": 1}, "compensation": {"status": "pending", "attempt": 0}},
        {"action": {"status": "succeeded", "attempt": 1}, "compensation": {"status": "pending", "attempt": 0}},
    ]);
    sqlx::query(
        "INSERT INTO sagas (id, saga_type, definition_version, state, version, context, steps, created_at, updated_at) \
         SELECT s, 'register_user', 1, 'completed', 3, jsonb_build_object('user_id', u), $3, now(), now() \
         FROM unnest($1::uuid[], $2::uuid[]) AS t(s, u)",
    )
    .bind(&sagas)
    .bind(&users)
    .bind(&steps)
    .execute(&stack.dbs.orchestrator)
    .await
    .unwrap();
    for (db, step, command, field, data) in [
        (
            &stack.dbs.users,
            0,
            "CreateUser",
            "user_id",
            "INSERT INTO users (id, email, name, post_quota) \
             SELECT u, u::text || '@example.com', 'User ' || u::text, 3 FROM unnest($1::uuid[]) AS u",
        ),
        (
            &stack.dbs.posts,
            1,
            "CreateAuthor",
            "author_id",
            "INSERT INTO authors (id, name) \
             SELECT u, 'User ' || u::text FROM unnest($1::uuid[]) AS u",
        ),
    ] {
        sqlx::query(data).bind(&users).execute(db).await.unwrap();
        sqlx::query(
            "INSERT INTO inbox (saga_id, step_index, phase, command_type, outcome, reply, message_id) \
             SELECT s, $3, 'action', $4, 'success', jsonb_build_object($5::text, u), s::text \
             FROM unnest($1::uuid[], $2::uuid[]) AS t(s, u)",
        )
        .bind(&sagas)
        .bind(&users)
        .bind(step)
        .bind(command)
        .bind(field)
        .execute(db)
        .await
        .unwrap();
    }
    for db in [&stack.dbs.orchestrator, &stack.dbs.users, &stack.dbs.posts] {
        sqlx::query("ANALYZE").execute(db).await.unwrap();
    }
    let started = std::time::Instant::now();
    let report = audit(&stack, None).await;
    let elapsed = started.elapsed();
    assert_eq!(found(&report), BTreeSet::new());
    assert_eq!(report.sagas_checked, N as u64);
    assert_eq!(report.ledger_entries, 2 * N as u64);
    eprintln!(
        "audit of {N} sagas ({} ledger entries, 2 participants): {:.2} s end to end, {:.2} s in the orchestrator",
        report.ledger_entries,
        elapsed.as_secs_f64(),
        report.duration_seconds
    );
    stack.stop().await;
}

/// Retention removes finished sagas from the orchestrator while the participants keep their
/// records: the audit of a window before the retention horizon does not call them unknown.
#[tokio::test]
async fn the_audit_does_not_report_sagas_retention_removed_as_drift() {
    let stack = Stack::start_with(saga_e2e::Options {
        retention_days: Some(1.0),
        ..saga_e2e::Options::default()
    })
    .await;
    let ids = register_all(&stack, "kept", 3).await;
    stack.finish(&ids).await;
    let clean = audit(&stack, None).await;
    assert!(clean.findings.is_empty(), "{:#?}", clean.findings);
    assert_eq!(clean.removed_by_retention, 0);

    // Two days later (the orchestrator's clock), the three are removed.
    stack.clock.advance(chrono::TimeDelta::days(2));
    let deadline = std::time::Instant::now() + saga_e2e::WAIT;
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM sagas")
            .fetch_one(&stack.dbs.orchestrator)
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{left} sagas never removed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let after = audit(&stack, None).await;
    assert!(
        after.findings.is_empty(),
        "pruned history is not drift: {:#?}",
        after.findings
    );
    assert_eq!(after.removed_by_retention, 3);
    assert!(after.retention_horizon.is_some());
}

#[tokio::test]
async fn the_periodic_audit_exports_what_it_finds() {
    let stack = Stack::start_with(saga_e2e::Options {
        audit_interval_secs: Some(1),
        ..Default::default()
    })
    .await;
    let id = stack.register("periodic@example.com", "Periodic").await;
    stack.finish_one(&id).await;
    let user = stack.context(&id, "user_id").await;
    by_hand(&stack.dbs.users, "DELETE FROM users WHERE id = $1", &user).await;
    // The next periodic run after the deletion reports it, without anyone asking.
    let deadline = std::time::Instant::now() + saga_e2e::WAIT;
    let metrics = loop {
        let m = Metrics::scrape(&stack.http_url).await;
        if exported(&m, "domain_check") == 1.0 {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no periodic audit reported the deleted user"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let total: f64 = [
        "missing_success",
        "missing_compensation",
        "ended_differently",
        "unknown_saga",
        "unfinished",
        "parked",
        "domain_check",
    ]
    .iter()
    .map(|k| exported(&metrics, k))
    .sum();
    assert_eq!(total, 1.0, "only the deleted user");
    // … and its author replica, alone now, by both cross-checks.
    assert_eq!(exported(&metrics, "replica_drift"), 2.0);
    let last_run = metrics.sum("saga_audit_last_run_timestamp_seconds", &[]);
    assert!(
        (chrono::Utc::now().timestamp() as f64 - last_run).abs() < 60.0,
        "last run at {last_run}"
    );
    stack.stop().await;
}

#[tokio::test]
async fn the_consistency_page_runs_an_audit_and_shows_each_finding_with_both_records() {
    let stack = Stack::start().await;
    let ok = stack.register("page-ok@example.com", "Page Ok").await;
    let broken = stack.register("page-broken@example.com", "Page Broken").await;
    stack.finish(&[ok.clone(), broken.clone()]).await;
    let author = stack.context(&broken, "user_id").await;
    by_hand(&stack.dbs.posts, "DELETE FROM authors WHERE id = $1", &author).await;

    let b = saga_bench::browser::Browser::start().await;
    b.goto(&format!("{}/#/consistency", stack.http_url)).await;
    b.find("#audit-none").await;
    b.click("#audit-run").await;
    // The domain check of the broken saga, and the user left without an author replica (its
    // name and its post count), found by the cross-checks — first, as they name no saga.
    b.until(
        "three findings",
        "document.querySelectorAll('#audit-findings tbody tr').length === 3",
    )
    .await;
    let drift = b.text("#audit-findings tbody tr:first-child").await;
    assert!(
        drift.contains("replica_drift") && drift.contains(&author),
        "{drift}"
    );
    let row = b.text("#audit-findings tbody tr:last-child").await;
    assert!(
        row.contains(&broken) && row.contains("domain_check") && row.contains("author"),
        "{row}"
    );
    assert!(!row.contains(&ok));
    assert!(b.text("#audit-summary").await.contains("2 saga(s)"));
    assert_eq!(b.text("#audit-status").await, "Drift found.");
    b.click("#audit-findings tbody tr:last-child details summary")
        .await;
    assert!(
        b.text("#audit-findings tbody tr:last-child details")
            .await
            .contains("CreateAuthor")
    );
    // A replica drift has no orchestrator record: only the two participants' values are shown.
    b.click("#audit-findings tbody tr:first-child details summary")
        .await;
    let records = b.text("#audit-findings tbody tr:first-child details").await;
    assert!(
        records.contains("cross_check") && !records.contains("Orchestrator"),
        "{records}"
    );
    b.screenshot("6-consistency.png").await;
    stack.stop().await;
}

/// The value each side of a replica-drift finding holds (`None`: no such key).
fn sides(f: &saga_proto::v1::AuditFinding) -> (Option<String>, Option<String>) {
    let record: serde_json::Value = serde_json::from_str(&f.participant_json).unwrap();
    let value = |side: &str| record[side]["value"].as_str().map(str::to_owned);
    (value("left"), value("right"))
}

#[tokio::test]
async fn cross_checks_find_drift_no_ledger_shows_and_only_drift_that_stays() {
    // Two facts a page: the merge-join crosses pages on both sides.
    let stack = Stack::start_with(saga_e2e::Options {
        audit_page_size: Some(2),
        ..Default::default()
    })
    .await;
    let registrations = register_all(&stack, "cross", 5).await;
    for view in stack.finish(&registrations).await {
        assert_eq!(view.state, SagaState::Completed as i32);
    }
    let users = user_ids(&stack, &registrations).await;
    let posts = [
        stack.publish(&users[0], "First").await,
        stack.publish(&users[0], "Second").await,
    ];
    stack.finish(&posts).await;

    // Sagas started just before the audit are between their steps while it reads the fact sets
    // (a user without its author yet, a post not yet counted): not drift.
    let in_flight = [
        stack.register("cross-late@example.com", "Cross Late").await,
        stack.publish(&users[1], "Late").await,
    ];
    let clean = audit(&stack, None).await;
    assert_eq!(found(&clean), BTreeSet::new(), "{:#?}", clean.findings);
    for view in stack.finish(&in_flight).await {
        assert_eq!(view.state, SagaState::Completed as i32);
    }
    let settled = audit(&stack, None).await;
    assert_eq!(found(&settled), BTreeSet::new(), "{:#?}", settled.findings);

    // Drift no ledger shows: every saga's records still agree.
    by_hand(
        &stack.dbs.posts,
        "UPDATE authors SET name = 'Renamed by hand' WHERE id = $1",
        &users[2],
    )
    .await;
    by_hand(
        &stack.dbs.users,
        "UPDATE users SET post_count = post_count + 1 WHERE id = $1",
        &users[3],
    )
    .await;
    let drift = audit(&stack, None).await;
    let expected = BTreeSet::from([
        replica_drift("authors_replicate_users", &users[2]),
        replica_drift("post_counts_agree", &users[3]),
    ]);
    assert_eq!(found(&drift), expected, "{:#?}", drift.findings);
    let renamed = drift
        .findings
        .iter()
        .find(|f| f.message.starts_with("authors_replicate_users"))
        .unwrap();
    assert_eq!(
        sides(renamed),
        (Some("Cross 2".into()), Some("Renamed by hand".into()))
    );
    assert_eq!(
        renamed.message,
        format!(
            "authors_replicate_users: key {}: users.users = \"Cross 2\", posts.authors = \"Renamed by hand\"",
            users[2]
        )
    );
    let counted = drift
        .findings
        .iter()
        .find(|f| f.message.starts_with("post_counts_agree"))
        .unwrap();
    assert_eq!(sides(counted), (Some("1".into()), Some("0".into())));
    assert!(renamed.saga_id.is_empty() && renamed.orchestrator_json == "null");
    let metrics = Metrics::scrape(&stack.http_url).await;
    assert_eq!(exported(&metrics, "replica_drift"), 2.0);
    stack.stop().await;
}

/// `GET /audit/facts/{set}` and `GET /audit/unclaimed` of the participant kit, over HTTP:
/// pages in key order, the last one with `next: null`; an unknown set is a 404, a bad parameter
/// a 400, each with a message.
#[tokio::test]
async fn fact_sets_and_unclaimed_effects_come_in_pages() {
    let stack = Stack::start().await;
    let registrations = register_all(&stack, "facts", 3).await;
    stack.finish(&registrations).await;
    let users = BTreeSet::from_iter(user_ids(&stack, &registrations).await);
    let http = reqwest::Client::new();
    let get = |url: String| {
        let http = http.clone();
        async move {
            let response = http.get(url).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.unwrap())
        }
    };
    let users_base = stack.users_http_url().unwrap();
    let posts_base = stack.posts_http_url().unwrap();

    // Pages of two: three facts, keys in byte order, `next` the last key of a full page.
    let (status, first) = get(format!("{users_base}/audit/facts/users?limit=2")).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["set"], "users");
    let facts = first["facts"].as_array().unwrap();
    assert_eq!(facts.len(), 2);
    assert_eq!(first["next"], facts[1]["key"]);
    let next = first["next"].as_str().unwrap();
    let (_, second) = get(format!("{users_base}/audit/facts/users?limit=2&after={next}")).await;
    assert_eq!(second["facts"].as_array().unwrap().len(), 1);
    assert!(second["next"].is_null(), "{second}");
    let keys: Vec<&str> = facts
        .iter()
        .chain(second["facts"].as_array().unwrap())
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, users.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(facts[0]["value"].as_str().unwrap().starts_with("Facts "));
    // A full last page says so only on the next, empty one.
    let (_, full) = get(format!("{users_base}/audit/facts/post_counts?limit=3")).await;
    assert_eq!(full["facts"][0]["value"], "0");
    let last = full["next"].as_str().unwrap();
    let (_, empty) = get(format!("{users_base}/audit/facts/post_counts?after={last}")).await;
    assert_eq!(
        empty,
        serde_json::json!({"set": "post_counts", "facts": [], "next": null})
    );
    // post-service: the same authors, without posts.
    let (_, counts) = get(format!("{posts_base}/audit/facts/post_counts")).await;
    assert_eq!(counts["facts"], full["facts"]);

    let (status, unknown) = get(format!("{users_base}/audit/facts/authors")).await;
    assert_eq!(status, 404);
    assert_eq!(
        unknown["error"],
        "user-service publishes no fact set `authors` (it publishes: users, post_counts)"
    );
    let (status, bad) = get(format!("{posts_base}/audit/facts/authors?limit=0")).await;
    assert_eq!(status, 400);
    assert_eq!(bad["error"], "limit: expected a whole number from 1 to 10000");
    let (status, bad) = get(format!("{posts_base}/audit/facts/authors?since=x")).await;
    assert_eq!(status, 400);
    assert_eq!(bad["error"], "unknown parameter `since` (expected after, limit)");

    // Three users inserted by hand: unclaimed, in pages of two by (check, id).
    let mut strays: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::now_v7()).collect();
    strays.sort();
    for (i, id) in strays.iter().enumerate() {
        sqlx::query("INSERT INTO users (id, email, name, post_quota) VALUES ($1, $2, 'Stray', 3)")
            .bind(id)
            .bind(format!("stray{i}@example.com"))
            .execute(&stack.dbs.users)
            .await
            .unwrap();
    }
    let since =
        (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (status, page) = get(format!("{users_base}/audit/unclaimed?since={since}&limit=2")).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["effects"].as_array().unwrap().len(), 2);
    assert_eq!(page["next"], format!("user_unclaimed/{}", strays[1]));
    let next = page["next"].as_str().unwrap();
    let (_, rest) = get(format!(
        "{users_base}/audit/unclaimed?since={since}&limit=2&after={next}"
    ))
    .await;
    assert_eq!(rest["effects"][0]["entity"], format!("user {}", strays[2]));
    assert!(rest.get("next").is_none(), "{rest}");
    let (status, bad) = get(format!("{users_base}/audit/unclaimed?since={since}&after=nope")).await;
    assert_eq!(status, 400);
    assert!(
        bad["error"]
            .as_str()
            .unwrap()
            .starts_with("after: `nope` is not an unclaimed-effects cursor")
    );
    stack.stop().await;
}
