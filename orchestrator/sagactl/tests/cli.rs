//! The real `sagactl` binary against the real stack: output, JSON and exit codes, and the operator
//! scenarios (a parked saga replayed; a bulk replay of 200 parked sagas with a rate limit; a
//! moderator's approval and rejection).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use saga_e2e::{OPERATOR_TOKEN, Stack, WAIT};
use saga_proto::v1::{PhaseStatus, SagaState};
use serde_json::{Value, json};

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    /// Stdout as JSON lines (`-o json` of bulk replays and job lists).
    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

/// A stack with one finished register_user saga, and that saga's id.
async fn stack_with_a_registration(email: &str, name: &str) -> (Stack, String) {
    let stack = Stack::start().await;
    let id = stack.register(email, name).await;
    stack.finish_one(&id).await;
    (stack, id)
}

/// Runs sagactl against `server`, with an operator token when `token` is set.
async fn sagactl(server: &str, token: Option<&str>, args: &[&str]) -> Out {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_sagactl"));
    cmd.args(args)
        .env("SAGACTL_SERVER", server)
        .env_remove("SAGACTL_TOKEN");
    if let Some(t) = token {
        cmd.env("SAGACTL_TOKEN", t);
    }
    let out = cmd.output().await.unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Starts a `moderated_post` saga for `user_id` with `sagactl start`; its id.
async fn start_moderated_post(url: &str, user_id: &str, title: &str) -> String {
    let payload = json!({"user_id": user_id, "title": title, "body": "text"}).to_string();
    let out = sagactl(
        url,
        None,
        &["-o", "json", "start", "moderated_post", "--payload", &payload],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.json()["saga_id"].as_str().unwrap().to_owned()
}

/// Polls the saga until it waits at its `moderate` approval step (the parallel group before it
/// succeeded).
async fn wait_for_moderation(stack: &Stack, id: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let view = stack.client.get(id).await.unwrap();
        let waiting = view.steps.iter().any(|s| {
            s.name == "moderate" && s.action.as_ref().map(|a| a.status) == Some(PhaseStatus::InFlight as i32)
        });
        if view.current_step == "moderate" && waiting {
            return;
        }
        assert_eq!(
            view.state,
            SagaState::Running as i32,
            "saga {id} ended before moderation: {view:?}"
        );
        assert!(
            Instant::now() < deadline,
            "saga {id} never waited at `moderate`: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn start_get_list_and_watch_print_what_happened_and_exit_cleanly() {
    let stack = Stack::start().await;
    let url = stack.grpc_url.as_str();
    let payload = r#"{"email":"cli@example.com","name":"Cli User"}"#;

    let out = sagactl(
        url,
        None,
        &["start", "register_user", "--payload", payload, "--key", "cli-1"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let id = out
        .stdout
        .trim()
        .strip_prefix("started ")
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    let again = sagactl(
        url,
        None,
        &[
            "-o",
            "json",
            "start",
            "register_user",
            "--payload",
            payload,
            "--key",
            "cli-1",
        ],
    )
    .await;
    assert_eq!(again.json(), serde_json::json!({"saga_id": id, "created": false}));

    let watch = sagactl(url, None, &["watch", &id]).await;
    assert_eq!(watch.code, 0, "{}", watch.stderr);
    assert!(
        watch.stdout.lines().last().unwrap().contains("completed"),
        "{}",
        watch.stdout
    );

    let get = sagactl(url, None, &["get", &id]).await;
    assert_eq!(get.code, 0);
    for needle in [
        "state    completed",
        "create_user",
        "CreateAuthor · succeeded · attempt 1",
        "DeleteUser · pending",
        "saga_completed",
    ] {
        assert!(
            get.stdout.contains(needle),
            "missing `{needle}` in:\n{}",
            get.stdout
        );
    }
    let doc = sagactl(url, None, &["-o", "json", "get", &id]).await.json();
    assert_eq!(doc["state"], "completed");
    assert_eq!(doc["steps"][1]["action"]["command"], "CreateAuthor");
    assert_eq!(
        doc["history"].as_array().unwrap().last().unwrap()["kind"],
        "saga_completed"
    );

    let listed = sagactl(
        url,
        None,
        &[
            "-o",
            "json",
            "list",
            "--type",
            "register_user",
            "--state",
            "completed",
            "--since",
            "1h",
        ],
    )
    .await;
    let ids: Vec<_> = listed
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["saga_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec![id.clone()]);
    let table = sagactl(url, None, &["list", "--idempotency-key", "cli-1"]).await;
    assert!(
        table.stdout.contains(&id) && table.stdout.ends_with("1 saga(s)\n"),
        "{}",
        table.stdout
    );
    // By business key: exact, by prefix; a malformed one is a usage error.
    for args in [
        ["list", "--key", "email=cli@example.com"],
        ["list", "--key-prefix", "email=cli@"],
    ] {
        let found = sagactl(url, None, &args).await;
        assert!(
            found.stdout.contains(&id) && found.stdout.ends_with("1 saga(s)\n"),
            "{args:?}: {}",
            found.stdout
        );
    }
    // The export: one JSON line per saga, with its history.
    let export = sagactl(url, None, &["export", "--key", "email=cli@example.com"]).await;
    assert_eq!((export.code, export.stderr.trim()), (0, "1 saga(s) exported"));
    let doc: serde_json::Value = serde_json::from_str(export.stdout.trim()).unwrap();
    assert_eq!(
        (doc["format"].as_str(), doc["saga_id"].as_str()),
        (Some("saga-export/1"), Some(id.as_str()))
    );
    assert!(doc["history"].as_array().is_some_and(|h| !h.is_empty()), "{doc}");
    let malformed = sagactl(url, None, &["list", "--key", "cli@example.com"]).await;
    assert_eq!(
        (malformed.code, malformed.stderr.trim()),
        (
            2,
            "error: --key `cli@example.com`: expected NAME=VALUE, e.g. --key email=a@example.com \
             (the idempotency key is --idempotency-key)"
        )
    );
    let unknown = sagactl(url, None, &["list", "--key", "order_id=1"]).await;
    assert_eq!(unknown.code, 5, "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("`order_id` is not a search key"),
        "{}",
        unknown.stderr
    );

    // Errors: precise message on stderr, documented exit code.
    let missing = sagactl(url, None, &["get", "01a20000-0000-7000-8000-000000000000"]).await;
    assert_eq!(
        (missing.code, missing.stderr.trim()),
        (4, "error: no saga 01a20000-0000-7000-8000-000000000000")
    );
    let bad = sagactl(url, None, &["get", "nope"]).await;
    assert_eq!(bad.code, 5);
    assert!(
        bad.stderr.contains("saga_id: `nope` is not a saga id"),
        "{}",
        bad.stderr
    );
    let unknown = sagactl(url, None, &["start", "nope"]).await;
    assert_eq!(unknown.code, 5);
    assert!(unknown.stderr.contains("saga_type: unknown saga type `nope`"));
    let when = sagactl(url, None, &["list", "--since", "yesterday"]).await;
    assert_eq!(when.code, 2);
    assert!(when.stderr.contains("`yesterday` is not a time"));
    stack.stop().await;
}

#[tokio::test]
async fn operator_commands_need_a_token_and_say_why_they_cannot_act() {
    let (stack, id) = stack_with_a_registration("op@example.com", "Op").await;
    let url = stack.grpc_url.as_str();

    let no_token = sagactl(url, None, &["abort", &id, "--reason", "test"]).await;
    assert_eq!(no_token.code, 7);
    assert!(
        no_token.stderr.contains("operator actions need"),
        "{}",
        no_token.stderr
    );
    let bad_token = sagactl(
        url,
        Some("not-the-right-token-at-all"),
        &["abort", &id, "--reason", "test"],
    )
    .await;
    assert_eq!(
        (bad_token.code, bad_token.stderr.trim()),
        (7, "error: authorization: unknown credential")
    );
    let done = sagactl(url, Some(OPERATOR_TOKEN), &["abort", &id, "--reason", "test"]).await;
    assert_eq!(
        (done.code, done.stderr.trim()),
        (
            6,
            "error: only a running saga can be aborted; this one is completed"
        )
    );
    let replay = sagactl(url, Some(OPERATOR_TOKEN), &["replay", &id, "--reason", "test"]).await;
    assert_eq!(replay.code, 6);
    let bulk = sagactl(url, Some(OPERATOR_TOKEN), &["replay", "--reason", "test"]).await;
    assert_eq!(bulk.code, 2, "a bulk replay without filters must be explicit");
    let no_reason = sagactl(url, Some(OPERATOR_TOKEN), &["abort", &id, "--reason", ""]).await;
    assert_eq!(no_reason.code, 5);

    // A legal hold: placed, shown by `get`, released; releasing again is refused.
    let held = sagactl(url, Some(OPERATOR_TOKEN), &["hold", &id, "--reason", "case 17"]).await;
    assert_eq!(held.code, 0, "{}", held.stderr);
    assert!(
        held.stdout.starts_with("held: hold by ops since "),
        "{}",
        held.stdout
    );
    let shown = sagactl(url, None, &["get", &id]).await;
    assert!(
        shown.stdout.contains("HELD     by ops since "),
        "{}",
        shown.stdout
    );
    let released = sagactl(url, Some(OPERATOR_TOKEN), &["release", &id, "--reason", "closed"]).await;
    assert!(
        released.stdout.starts_with("released: hold by ops"),
        "{}",
        released.stdout
    );
    let again = sagactl(url, Some(OPERATOR_TOKEN), &["release", &id, "--reason", "closed"]).await;
    assert_eq!(
        (again.code, again.stderr.trim().to_owned()),
        (6, format!("error: saga {id} is not under legal hold"))
    );

    let unreachable = sagactl("http://127.0.0.1:1", None, &["list"]).await;
    assert_eq!(unreachable.code, 3);
    assert!(
        unreachable
            .stderr
            .starts_with("error: cannot reach the orchestrator at http://127.0.0.1:1"),
        "{}",
        unreachable.stderr
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_saga_parked_while_a_participant_was_away_is_replayed_to_compensated() {
    let mut stack = Stack::start().await;
    let ids = stack.park_register_sagas(1).await;
    let id = &ids[0];
    let url = stack.grpc_url.clone();
    let view = stack.client.get(id).await.unwrap();
    assert!(
        view.failure_reason
            .starts_with("compensation of step `create_user` gave up after "),
        "{}",
        view.failure_reason
    );
    let next = view.steps[0].compensation.as_ref().unwrap().attempt + 1;

    let dry = sagactl(
        &url,
        Some(OPERATOR_TOKEN),
        &["replay", id, "--reason", "user-service is back", "--dry-run"],
    )
    .await;
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(
        dry.stdout.contains(&format!(
            "would replay: DeleteUser (step 0 `create_user`, compensation, attempt {next})"
        )),
        "{}",
        dry.stdout
    );
    assert_eq!(
        stack.client.get(id).await.unwrap().state,
        SagaState::Failed as i32,
        "a dry run changes nothing"
    );

    let out = sagactl(
        &url,
        Some(OPERATOR_TOKEN),
        &["replay", id, "--reason", "user-service is back"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("replayed"), "{}", out.stdout);
    let watch = sagactl(&url, None, &["watch", id]).await;
    assert_eq!(watch.code, 0, "{}{}", watch.stdout, watch.stderr);
    assert!(watch.stdout.lines().last().unwrap().contains("compensated"));

    let history = stack.history(id).await;
    let replayed = history
        .iter()
        .find(|e| e.kind == "compensation_replayed")
        .unwrap();
    assert_eq!(replayed.actor, "operator:ops");
    assert!(replayed.data_json.contains("user-service is back"));
    let report = stack.audit().await;
    assert!(report.consistent(), "{:?}", report.violations);
    assert_eq!(report.users, 1, "only the user who holds the pen name remains");
    stack.stop().await;
}

#[tokio::test]
async fn a_bulk_replay_of_200_parked_sagas_is_paced_and_a_second_one_is_a_no_op() {
    let mut stack = Stack::start().await;
    let ids = stack.park_register_sagas(200).await;
    let url = stack.grpc_url.clone();
    let filter = [
        "--type",
        "register_user",
        "--step",
        "create_user",
        "--since",
        "1h",
    ];
    // `sagactl replay` of every saga the filter selects, with `options`.
    let bulk = |options: &[&'static str]| {
        let mut args = vec!["replay", "--reason", "bulk: user-service recovered"];
        args.extend(options);
        args.extend(filter);
        args
    };

    let dry = sagactl(&url, Some(OPERATOR_TOKEN), &bulk(&["-o", "json", "--dry-run"])).await;
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert_eq!(dry.stdout.lines().count(), 200);
    assert!(
        dry.stdout
            .lines()
            .all(|l| l.contains(r#""outcome":"would replay""#))
    );
    assert_eq!(
        Stack::scalar(
            &stack.dbs.orchestrator,
            "SELECT count(*) FROM sagas WHERE state = 'failed'"
        )
        .await,
        200
    );

    let started = Instant::now();
    let out = sagactl(
        &url,
        Some(OPERATOR_TOKEN),
        &bulk(&["-o", "json", "--rate", "100"]),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let replayed = out.json_lines();
    assert_eq!(replayed.len(), 200);
    assert!(
        replayed.iter().all(|r| r["outcome"] == "replayed"),
        "{}",
        out.stdout
    );
    assert!(
        took >= Duration::from_millis(1_900),
        "200 sagas at 100/s cannot take {took:?}"
    );

    // The same replay again sends nothing: no saga is parked any more.
    let again = sagactl(&url, Some(OPERATOR_TOKEN), &bulk(&["--rate", "100"])).await;
    assert_eq!((again.code, again.stdout.trim()), (0, "0 saga(s)"));

    // Both ran as jobs, kept by the orchestrator: newest first, with their counts and results.
    let jobs = sagactl(&url, None, &["-o", "json", "jobs", "list"]).await;
    assert_eq!(jobs.code, 0, "{}", jobs.stderr);
    let jobs = jobs.json_lines();
    assert_eq!(jobs.len(), 2);
    assert_eq!(
        (&jobs[1]["state"], &jobs[1]["processed"], &jobs[1]["counts"]),
        (&json!("completed"), &json!(200), &json!({"replayed": 200}))
    );
    assert_eq!(
        (&jobs[0]["processed"], &jobs[0]["operator"]),
        (&json!(0), &json!("ops"))
    );
    let first = jobs[1]["job_id"].as_str().unwrap();
    assert!(out.stderr.contains(&format!("job {first}")), "{}", out.stderr);
    let shown = sagactl(&url, None, &["jobs", "get", first]).await;
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    assert_eq!(
        shown
            .stdout
            .lines()
            .filter(|l| l.contains("  replayed: DeleteUser"))
            .count(),
        200
    );
    let cancel = sagactl(
        &url,
        Some(OPERATOR_TOKEN),
        &["jobs", "cancel", first, "--reason", "late"],
    )
    .await;
    assert_eq!(
        cancel.code, 6,
        "an ended job cannot be cancelled: {}",
        cancel.stderr
    );
    let detached = sagactl(
        &url,
        Some(OPERATOR_TOKEN),
        &[
            "replay",
            "--all-failed",
            "--reason",
            "r",
            "--detach",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(detached.code, 0, "{}", detached.stderr);
    let job: Value = serde_json::from_str(detached.stdout.trim()).unwrap();
    assert_eq!(
        (&job["kind"], &job["state"]),
        (&json!("replay_compensations"), &json!("running"))
    );

    let views = stack.finish(&ids).await;
    assert!(views.iter().all(|v| v.state == SagaState::Compensated as i32));
    for id in ids.iter().take(20) {
        let replays = stack
            .history(id)
            .await
            .into_iter()
            .filter(|e| e.kind == "compensation_replayed")
            .count();
        assert_eq!(replays, 1, "saga {id} replayed once");
    }
    let report = stack.audit().await;
    assert!(report.consistent(), "{:?}", report.violations);
    assert_eq!(report.users, 1);
    stack.stop().await;
}

#[tokio::test]
async fn audit_exits_zero_when_the_records_agree_and_nine_naming_the_saga_when_they_do_not() {
    let (stack, id) = stack_with_a_registration("audit-cli@example.com", "Audit Cli").await;
    let url = stack.grpc_url.as_str();

    let clean = sagactl(url, None, &["audit", "--since", "1h"]).await;
    assert_eq!(clean.code, 0, "{}{}", clean.stdout, clean.stderr);
    assert!(clean.stdout.contains("audited 1 saga(s)"), "{}", clean.stdout);
    assert!(clean.stdout.contains("no drift found"), "{}", clean.stdout);

    // The user is deleted by hand in the users database.
    let user = stack.context(&id, "user_id").await;
    sqlx::query("DELETE FROM users WHERE id = $1::uuid")
        .bind(&user)
        .execute(&stack.dbs.users)
        .await
        .unwrap();
    let drift = sagactl(url, None, &["-o", "json", "audit", "--since", "1h"]).await;
    assert_eq!(drift.code, 9, "{}{}", drift.stdout, drift.stderr);
    let report = drift.json();
    let findings = report["findings"].as_array().unwrap();
    // The saga's domain check, and the author replica left alone — by name and by post count —
    // found by the demo's cross-checks (first: they name no saga).
    let kinds: Vec<&str> = findings.iter().map(|f| f["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["replica_drift", "replica_drift", "domain_check"],
        "{report:#}"
    );
    for drift in &findings[..2] {
        assert_eq!(drift["participant_record"]["key"], user.as_str());
        assert!(
            drift["participant_record"]["left"]["value"].is_null(),
            "{drift:#}"
        );
    }
    let check = &findings[2];
    assert_eq!(check["saga_id"], id.as_str());
    assert_eq!(check["step_name"], "create_user");
    assert_eq!(check["orchestrator"]["state"], "completed");
    assert_eq!(check["participant_record"][0]["outcome"], "succeeded");
    let table = sagactl(url, None, &["audit", "--since", "1h", "--type", "register_user"]).await;
    assert_eq!(table.code, 9);
    assert!(
        table.stdout.contains(&id) && table.stdout.contains("1 finding(s)"),
        "{}",
        table.stdout
    );

    let bad = sagactl(url, None, &["audit", "--since", "1h", "--type", "nope"]).await;
    assert_eq!(bad.code, 5, "{}", bad.stderr);
    assert!(bad.stderr.contains("unknown saga type `nope`"), "{}", bad.stderr);
    let bad = sagactl(url, None, &["audit", "--since", "yesterday"]).await;
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    stack.stop().await;
}

#[tokio::test]
async fn a_moderator_approves_one_post_and_rejects_another_and_signals_are_checked() {
    let (stack, registration) = stack_with_a_registration("mod@example.com", "Mod").await;
    let url = stack.grpc_url.as_str();
    let user = stack.context(&registration, "user_id").await;
    let approved = start_moderated_post(url, &user, "approved post").await;
    let rejected = start_moderated_post(url, &user, "rejected post").await;
    wait_for_moderation(&stack, &approved).await;
    wait_for_moderation(&stack, &rejected).await;

    // A signal is no operator action, but the engine refuses one the definition does not declare.
    let undeclared = sagactl(url, None, &["signal", &approved, "shipped"]).await;
    assert_eq!(
        (undeclared.code, undeclared.stderr.trim()),
        (
            5,
            "error: saga type `moderated_post` v1 declares no signal `shipped` (it declares none)"
        )
    );
    let nobody = sagactl(
        url,
        None,
        &[
            "signal",
            "01a20000-0000-7000-8000-000000000000",
            "shipped",
            "--payload",
            "{}",
            "--key",
            "k1",
        ],
    )
    .await;
    assert_eq!(nobody.code, 4, "{}", nobody.stderr);

    // An approval is: no token, no decision.
    let no_token = sagactl(url, None, &["approve", &approved, "--reason", "fine"]).await;
    assert_eq!(
        (no_token.code, no_token.stderr.trim()),
        (
            7,
            "error: operator actions need `authorization: Bearer <operator token>`"
        )
    );
    let no_reason = sagactl(url, Some(OPERATOR_TOKEN), &["approve", &approved, "--reason", ""]).await;
    assert_eq!(no_reason.code, 5, "{}", no_reason.stderr);

    let out = sagactl(
        url,
        Some(OPERATOR_TOKEN),
        &["-o", "json", "approve", &approved, "--reason", "looks fine"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc = out.json();
    assert_eq!(doc["saga_id"], approved.as_str());
    assert_eq!(doc["state"], "running");
    assert_eq!(doc["commands"][0]["command"], "ConfirmPost", "{doc:#}");
    let watch = sagactl(url, None, &["watch", &approved]).await;
    assert_eq!(watch.code, 0, "{}{}", watch.stdout, watch.stderr);
    assert!(
        watch.stdout.lines().last().unwrap().contains("completed"),
        "{}",
        watch.stdout
    );
    let again = sagactl(
        url,
        Some(OPERATOR_TOKEN),
        &["approve", &approved, "--reason", "twice"],
    )
    .await;
    assert_eq!(
        again.code, 6,
        "a completed saga waits for nothing: {}",
        again.stderr
    );

    let out = sagactl(
        url,
        Some(OPERATOR_TOKEN),
        &["reject", &rejected, "--reason", "spam", "--step", "2"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .starts_with(&format!("rejected {rejected}: now compensating; sent ")),
        "{}",
        out.stdout
    );
    let watch = sagactl(url, None, &["watch", &rejected]).await;
    assert_eq!(watch.code, 0, "{}{}", watch.stdout, watch.stderr);
    let doc = sagactl(url, None, &["-o", "json", "get", &rejected]).await.json();
    assert_eq!(doc["state"], "compensated", "{doc:#}");
    assert_eq!(
        doc["failure_reason"], "step `moderate` was rejected by ops: spam",
        "{doc:#}"
    );
    let decided: Vec<&Value> = doc["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "approval_decided")
        .collect();
    assert_eq!(decided.len(), 1, "{doc:#}");
    assert_eq!(decided[0]["actor"], "operator:ops");

    let report = stack.audit().await;
    assert!(report.consistent(), "{:?}", report.violations);
    stack.stop().await;
}
