//! The README's demo: drives a mix of real sagas through the orchestrator's gRPC API — some that
//! succeed and some that compensate for each business rule, and `moderated_post` sagas (quota and
//! draft in parallel, then a moderator) approved, rejected, left to time out and skipped for a
//! trusted author — then prints every saga's final state
//! and runs the orchestrator's consistency audit (`RunAudit`: every saga against the
//! participants' ledgers, their own checks, and the cross-checks of users against their author
//! replicas and of post counts against posts).

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use saga_bench::audit::{Databases, audit};
use saga_bench::client::{Orchestrator, state_name};
use saga_bench::database::DatabaseServer;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Parser)]
#[command(
    about = "Run a mix of register_user, publish_post and moderated_post sagas and check the databases agree"
)]
struct Args {
    #[arg(long, env = "DEMO_ORCHESTRATOR", default_value = "http://127.0.0.1:50051")]
    orchestrator: String,
    /// The three services' databases are on this server, each under the name the service uses by
    /// default (saga_orchestrator, saga_users, saga_posts).
    #[command(flatten)]
    databases: DatabaseServer,
    /// How long to wait for the sagas to finish.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// An operator credential of the orchestrator, to approve and reject the moderated posts.
    #[arg(long, env = "DEMO_OPERATOR_TOKEN")]
    operator_token: String,
}

struct Case {
    what: String,
    saga_id: String,
}

async fn run_cases(
    o: &Orchestrator,
    title: &str,
    cases: Vec<Case>,
    timeout: Duration,
) -> anyhow::Result<Vec<String>> {
    let ids: Vec<String> = cases.iter().map(|c| c.saga_id.clone()).collect();
    let views = o.wait_terminal(&ids, timeout).await?;
    println!("\n== {title} ==");
    let mut states = Vec::new();
    for (case, view) in cases.iter().zip(&views) {
        let state = state_name(view.state);
        let why = if view.failure_reason.is_empty() {
            String::new()
        } else {
            format!("  ({})", view.failure_reason)
        };
        println!(
            "  {:<46} {:<12} saga {}{why}",
            case.what,
            state,
            &case.saga_id[24..]
        );
        states.push(state.to_owned());
    }
    Ok(states)
}

async fn connect(url: &str) -> anyhow::Result<PgPool> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match PgPool::connect(url).await {
            Ok(pool) => return Ok(pool),
            Err(e) if std::time::Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("connecting to {url}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let timeout = Duration::from_secs(args.timeout_secs);
    // The audit covers the sagas of this run (its cross-checks cover all the data).
    let started_at = chrono::Utc::now() - chrono::Duration::seconds(5);
    let o = Orchestrator::connect(&args.orchestrator, Duration::from_secs(30)).await?;
    // The services create their databases as they start; give them the same patience.
    let dbs = Databases {
        orchestrator: connect(&args.databases.database("saga_orchestrator")).await?,
        users: connect(&args.databases.database("saga_users")).await?,
        posts: connect(&args.databases.database("saga_posts")).await?,
    };
    // A tag per run keeps e-mails and pen names unique, so the demo can run again and again.
    let run = &Uuid::now_v7().simple().to_string()[24..];
    println!(
        "Saga coordinator demo, run {run}: orchestrator {}",
        args.orchestrator
    );

    // --- register_user: four new users, then two that break a rule ---
    let mut cases = Vec::new();
    let mut user_ids = Vec::new();
    for name in ["Alice", "Bob", "Carol", "Dave"] {
        let email = format!("{}.{run}@example.com", name.to_lowercase());
        let id = o
            .start(
                "register_user",
                json!({"email": email, "name": format!("{name} {run}")}),
                &format!("demo-{run}-{name}"),
            )
            .await?;
        cases.push(Case {
            what: format!("{name}: new user"),
            saga_id: id,
        });
    }
    // The first four must be done before the next two can collide with them, and before they post.
    o.wait_terminal(
        &cases.iter().map(|c| c.saga_id.clone()).collect::<Vec<_>>(),
        timeout,
    )
    .await?;
    for case in &cases {
        let view = o.get(&case.saga_id).await?;
        let context: serde_json::Value = serde_json::from_str(&view.context_json)?;
        user_ids.push(context["user_id"].as_str().unwrap_or_default().to_owned());
    }
    let dup = o
        .start(
            "register_user",
            json!({"email": format!("alice.{run}@example.com"), "name": format!("Alicia {run}")}),
            "",
        )
        .await?;
    cases.push(Case {
        what: "Alicia: Alice's e-mail again".into(),
        saga_id: dup,
    });
    let pen = o
        .start(
            "register_user",
            json!({"email": format!("robert.{run}@example.com"), "name": format!("Bob {run}")}),
            "",
        )
        .await?;
    cases.push(Case {
        what: "Robert: pen name `Bob` is taken".into(),
        saga_id: pen,
    });
    let registered = run_cases(&o, "register_user", cases, timeout).await?;

    // A user who predates the post service: in the users database, never replicated as an author.
    let legacy = Uuid::now_v7();
    sqlx::query("INSERT INTO users (id, email, name, post_quota) VALUES ($1, $2, $3, 3)")
        .bind(legacy)
        .bind(format!("legacy.{run}@example.com"))
        .bind(format!("Legacy {run}"))
        .execute(&dbs.users)
        .await
        .context("seeding the legacy user")?;

    // --- publish_post: successes, and each business failure ---
    let (alice, bob, carol, dave) = (&user_ids[0], &user_ids[1], &user_ids[2], &user_ids[3]);
    let mut cases = Vec::new();
    let post = |what: &str, user: &str, title: String| {
        (
            what.to_owned(),
            json!({"user_id": user, "title": title, "body": "Written by the demo."}),
        )
    };
    let mut plans = vec![
        post("Alice: \"Hello, sagas\"", alice, "Hello, sagas".into()),
        post(
            "Alice: \"Compensation, explained\"",
            alice,
            "Compensation, explained".into(),
        ),
        post("Bob: empty title", bob, "   ".into()),
        post("Carol: 250-character title", carol, "x".repeat(250)),
        post(
            "Legacy user: no author replica",
            &legacy.to_string(),
            "Old news".into(),
        ),
    ];
    for i in 1..=4 {
        plans.push(post(
            &format!("Dave: post {i} of 4 (quota is 3)"),
            dave,
            format!("Dave's post {i}"),
        ));
    }
    for (what, payload) in plans {
        let id = o.start("publish_post", payload, "").await?;
        cases.push(Case { what, saga_id: id });
    }
    let published = run_cases(&o, "publish_post", cases, timeout).await?;

    // --- moderated_post: quota and draft at once, then a moderator (unless the author is trusted) ---
    let moderated = |title: &str, user: &str, trusted: bool| json!({"user_id": user, "title": title, "body": "Moderated by the demo.", "trusted": trusted});
    let approved = o
        .start("moderated_post", moderated("Sagas in parallel", bob, false), "")
        .await?;
    let rejected = o
        .start("moderated_post", moderated("Cheap watches!!!", carol, false), "")
        .await?;
    let ignored = o
        .start("moderated_post", moderated("Nobody looked", bob, false), "")
        .await?;
    let trusted = o
        .start("moderated_post", moderated("A trusted author", carol, true), "")
        .await?;
    for id in [&approved, &rejected, &ignored] {
        o.wait_at_step(id, "moderate", timeout).await?;
    }
    o.decide_approval(&approved, true, "reads well", &args.operator_token)
        .await?;
    o.decide_approval(&rejected, false, "spam", &args.operator_token)
        .await?;
    println!("\n(one moderated post is left to wait out its 20-second moderation…)");
    let cases = vec![
        Case {
            what: "Bob: approved by the moderator".into(),
            saga_id: approved,
        },
        Case {
            what: "Carol: rejected by the moderator".into(),
            saga_id: rejected,
        },
        Case {
            what: "Bob: no moderator answered in time".into(),
            saga_id: ignored,
        },
        Case {
            what: "Carol, trusted: no moderation needed".into(),
            saga_id: trusted,
        },
    ];
    let moderated = run_cases(&o, "moderated_post", cases, timeout).await?;

    // The legacy user never got an author replica; take it out again so the databases can agree.
    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(legacy)
        .execute(&dbs.users)
        .await?;

    // --- the two databases, checked against each other and against the sagas ---
    // (Sagas of earlier runs may still be finishing; the cross-database checks need none in flight.)
    let deadline = std::time::Instant::now() + timeout;
    let mut report = audit(&args.orchestrator, &dbs, started_at).await?;
    while report.in_flight > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        report = audit(&args.orchestrator, &dbs, started_at).await?;
    }
    println!("\n== consistency of the three databases (the orchestrator's audit) ==");
    println!(
        "  users DB: {} users   posts DB: {} authors, {} posts   repeats answered from inboxes: {}",
        report.users, report.authors, report.posts, report.repeats_answered
    );
    for ((saga_type, state), n) in &report.sagas {
        println!("  {saga_type:<14} {state:<12} {n}");
    }
    let expected =
        |states: &[String], want: &[&str]| states.iter().map(String::as_str).eq(want.iter().copied());
    let mix_ok = expected(
        &registered,
        &[
            "completed",
            "completed",
            "completed",
            "completed",
            "compensated",
            "compensated",
        ],
    ) && published[..5]
        == [
            "completed",
            "completed",
            "compensated",
            "compensated",
            "compensated",
        ]
        && published[5..].iter().filter(|s| *s == "completed").count() == 3
        && published[5..].iter().filter(|s| *s == "compensated").count() == 1
        && expected(
            &moderated,
            &["completed", "compensated", "compensated", "completed"],
        );
    if report.consistent() {
        println!(
            "  OK: every saga is terminal and agrees with the participants' ledgers; users and authors agree; post counts match posts"
        );
    } else {
        for v in &report.violations {
            println!("  VIOLATION: {v}");
        }
    }
    if !mix_ok {
        println!("  UNEXPECTED: the sagas did not end as the demo expects (see the tables above)");
    }
    if report.consistent() && mix_ok {
        Ok(())
    } else {
        anyhow::bail!("the demo found a problem")
    }
}
