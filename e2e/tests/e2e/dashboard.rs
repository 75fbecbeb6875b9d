//! The dashboard: an operator's journey in a real headless Chromium over WebDriver, and every HTTP
//! endpoint the page uses, bad parameters included.

use std::time::Duration;

use saga_bench::browser::{Browser, screenshot_dir};
use saga_e2e::{OPERATOR_TOKEN, Stack, WAIT};
use saga_proto::v1::SagaState;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_filters_inspects_and_replays_sagas_in_the_browser() {
    let mut stack = Stack::start().await;
    // Two parked sagas (and the user holding the pen name), two compensated, two completed.
    let mut parked = stack.park_register_sagas(2).await;
    let (bulk, parked) = (parked.remove(0), parked.remove(0));
    let mut ids = vec![];
    for i in 0..2 {
        ids.push(
            stack
                .register(&format!("ok{i}@example.com"), &format!("Ok {i}"))
                .await,
        );
        ids.push(stack.register(&format!("clash{i}@example.com"), "taken").await);
    }
    stack.finish(&ids).await;
    let base = &stack.http_url;
    let b = Browser::start().await;

    // Overview: counts by state, the chart, the parked saga under "needs attention".
    b.goto(&format!("{base}/#/")).await;
    b.find("#state-cards").await;
    assert_eq!(b.text("#count-failed .n").await, "2");
    assert_eq!(b.text("#count-compensated .n").await, "2");
    // Completed sagas are counted over the last hour: the pen name's holder completed before the
    // clock jumped hours ahead to park the others, the two "ok" ones after.
    assert_eq!(b.text("#count-completed .n").await, "2");
    assert!(b.text("#count-completed").await.contains("last hour"));
    assert!(b.text("#attention").await.contains(&parked));
    b.find("#throughput svg polyline").await;
    b.screenshot("1-overview.png").await;

    // List: filter to compensated sagas with the form.
    b.click("#nav-sagas").await;
    b.find("#filters").await;
    b.find("#f-state")
        .await
        .select_by_value("compensated")
        .await
        .unwrap();
    b.click("#apply").await;
    b.until("two compensated rows", "location.hash.includes('state=compensated') && document.querySelectorAll('#saga-list tr[data-saga]').length === 2").await;
    assert_eq!(
        b.texts("#saga-list tr[data-saga] .badge").await,
        ["compensated", "compensated"]
    );
    b.screenshot("2-list-compensated.png").await;

    // Detail: open one; forward and compensation side by side; the timeline.
    b.click("#saga-list tr[data-saga] a").await;
    b.find("#timeline").await;
    b.until(
        "the compensated saga's badge",
        "document.querySelector('#state-badge')?.dataset.state === 'compensated'",
    )
    .await;
    b.find("#timeline li[data-kind='saga_compensated']").await;
    b.find("#timeline li[data-kind='compensation_started']").await;
    assert!(b.text("#steps").await.contains("DeleteUser"));
    // The refused step's compensation will never run: it says so instead of "pending".
    assert_eq!(
        b.text("#steps td.not-needed").await,
        "DeleteAuthor not needed — the action was refused"
    );
    b.screenshot("3-detail-compensated.png").await;

    // The parked saga, read-only first: the actions are there but disabled, and say why.
    b.goto(&format!("{base}/#/sagas/{parked}")).await;
    b.until(
        "the parked saga",
        "document.querySelector('#state-badge')?.dataset.state === 'failed'",
    )
    .await;
    assert!(!b.find("#act-replay").await.is_enabled().await.unwrap());
    assert_eq!(
        b.text("#act-replay-why").await,
        "sign in with an operator token to act"
    );

    // Sign in, replay with a reason, and watch the state change without a reload.
    b.type_into("#token", OPERATOR_TOKEN).await;
    b.click("#signin button").await;
    b.until("signed in", "!document.querySelector('#whoami').hidden")
        .await;
    b.until(
        "replay enabled",
        "!document.querySelector('#act-replay').disabled",
    )
    .await;
    b.js("window.__noReload = 42;").await;
    b.click("#act-replay").await;
    b.until(
        "the confirmation dialog",
        "document.querySelector('#confirm').open",
    )
    .await;
    b.click("#confirm-ok").await; // no reason yet
    assert_eq!(
        b.text("#confirm-error").await,
        "A reason is required: it is recorded in the saga's history."
    );
    b.type_into("#confirm-reason", "user-service is back").await;
    // Validated as it is typed: the message is gone once there is a reason.
    assert_eq!(b.text("#confirm-error").await, "");
    b.screenshot("4-replay-confirm.png").await;
    b.click("#confirm-ok").await;
    b.until(
        "the saga compensated, live",
        "document.querySelector('#state-badge')?.dataset.state === 'compensated'",
    )
    .await;
    assert_eq!(
        b.js("return window.__noReload;").await,
        json!(42),
        "the page was not reloaded"
    );
    b.find("#timeline li[data-kind='compensation_replayed'].operator")
        .await;
    b.until(
        "the replay's reason in the timeline",
        "document.querySelector('#timeline')?.innerText.includes('user-service is back')",
    )
    .await;
    b.screenshot("5-replayed.png").await;
    assert_eq!(
        stack.client.get(&parked).await.unwrap().state,
        SagaState::Compensated as i32
    );
    // The other parked saga, replayed in bulk from the list filtered to failed sagas: a job,
    // followed on its page until it has handled every saga the filter selects.
    b.goto(&format!("{base}/#/sagas?state=failed")).await;
    b.until(
        "the failed saga listed",
        &format!("document.querySelector('#saga-list tr[data-saga=\"{bulk}\"]') !== null"),
    )
    .await;
    b.until(
        "bulk replay enabled",
        "!document.querySelector('#act-bulk-replay').disabled",
    )
    .await;
    b.click("#act-bulk-replay").await;
    b.until(
        "the confirmation dialog",
        "document.querySelector('#confirm').open",
    )
    .await;
    b.type_into("#confirm-reason", "bulk: user-service is back").await;
    b.click("#confirm-ok").await;
    b.until(
        "the job's page, completed",
        "location.hash.startsWith('#/jobs/') && document.querySelector('#job-state')?.dataset.state === 'completed'",
    )
    .await;
    assert_eq!(b.text("#job-processed").await, "1 (replayed 1)");
    assert!(b.text("#job-items").await.contains(&bulk));
    b.screenshot("7-job.png").await;
    b.click("#nav-jobs").await;
    b.until(
        "the jobs list",
        "document.querySelectorAll('#job-list tr[data-job]').length === 1",
    )
    .await;
    assert_eq!(
        stack
            .client
            .wait_terminal(std::slice::from_ref(&bulk), WAIT)
            .await
            .unwrap()[0]
            .state,
        SagaState::Compensated as i32
    );

    // A legal hold from the detail page, released again; both in the timeline.
    let kept = &ids[0];
    b.goto(&format!("{base}/#/sagas/{kept}")).await;
    b.until("hold enabled", "!document.querySelector('#act-hold')?.disabled")
        .await;
    assert!(
        !b.find("#act-release").await.is_enabled().await.unwrap(),
        "nothing to release yet"
    );
    b.click("#act-hold").await;
    b.until(
        "the confirmation dialog",
        "document.querySelector('#confirm').open",
    )
    .await;
    b.type_into("#confirm-reason", "case 4711").await;
    b.click("#confirm-ok").await;
    b.until(
        "the hold shown",
        "document.querySelector('#legal-hold')?.innerText.includes('case 4711')",
    )
    .await;
    assert!(b.text("#legal-hold").await.contains("held by ops"));
    b.find("#timeline li[data-kind='hold_placed'].operator").await;
    b.screenshot("8-held.png").await;
    b.until(
        "release enabled",
        "!document.querySelector('#act-release')?.disabled",
    )
    .await;
    b.click("#act-release").await;
    b.until(
        "the confirmation dialog",
        "document.querySelector('#confirm').open",
    )
    .await;
    b.type_into("#confirm-reason", "case 4711 closed").await;
    b.click("#confirm-ok").await;
    b.until(
        "the hold gone",
        "document.querySelector('#timeline li[data-kind=\"hold_released\"]') !== null \
         && document.querySelector('#legal-hold') === null",
    )
    .await;

    // A bulk hold by query from the list: a plan first (how many, nothing changed), then a job.
    b.goto(&format!("{base}/#/sagas?type=register_user&state=completed"))
        .await;
    b.until(
        "three completed sign-ups",
        "document.querySelectorAll('#saga-list tr[data-saga]').length === 3",
    )
    .await;
    b.find("#bulk-action")
        .await
        .select_by_value("hold")
        .await
        .unwrap();
    b.click("#bulk-plan-button").await;
    b.until(
        "the confirmation dialog",
        "document.querySelector('#confirm').open",
    )
    .await;
    b.type_into("#confirm-reason", "audit 2026").await;
    b.click("#confirm-ok").await;
    b.until("the plan", "document.querySelector('#bulk-count') !== null")
        .await;
    assert_eq!(
        b.text("#bulk-count").await,
        "3 saga(s) selected for “Place legal hold”"
    );
    let holds = "SELECT count(*) FROM saga_holds";
    assert_eq!(
        saga_e2e::Stack::scalar(&stack.dbs.orchestrator, holds).await,
        0,
        "a plan changes nothing"
    );
    b.screenshot("9-bulk-plan.png").await;
    b.click("#bulk-start").await;
    b.until(
        "the hold job's page, completed",
        "location.hash.startsWith('#/jobs/') && document.querySelector('#job-state')?.dataset.state === 'completed'",
    )
    .await;
    assert_eq!(b.text("#job-processed").await, "3 (held 3)");
    assert_eq!(saga_e2e::Stack::scalar(&stack.dbs.orchestrator, holds).await, 3);
    for name in [
        "8-held.png",
        "9-bulk-plan.png",
        "7-job.png",
        "1-overview.png",
        "2-list-compensated.png",
        "3-detail-compensated.png",
        "4-replay-confirm.png",
        "5-replayed.png",
    ] {
        let size = std::fs::metadata(screenshot_dir().join(name))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(size > 10_000, "{name} looks empty ({size} bytes)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sees_a_saga_as_a_graph_and_approves_it_in_the_browser() {
    let stack = Stack::start().await;
    let registered = stack.register("gia@example.com", "Gia").await;
    stack.finish_one(&registered).await;
    let user = stack.context(&registered, "user_id").await;
    let id = stack
        .client
        .start(
            "moderated_post",
            json!({"user_id": user, "title": "Graphs", "body": "text"}),
            "",
        )
        .await
        .expect("moderated_post starts");
    stack
        .client
        .wait_at_step(&id, "moderate", WAIT)
        .await
        .expect("waits for the moderator");
    let base = &stack.http_url;
    let b = Browser::start().await;

    // The graph: the two branches of the group side by side in one stage, the wait and what for.
    b.goto(&format!("{base}/#/sagas/{id}")).await;
    b.until(
        "the graph's parallel stage",
        "document.querySelectorAll('#graph li.stage.parallel .node').length === 2",
    )
    .await;
    assert_eq!(
        b.texts("#graph li.stage.parallel .node strong").await,
        ["reserve_quota", "create_post"]
    );
    assert!(
        b.text("#graph .node.waiting[data-step='moderate']")
            .await
            .contains("waiting for an approval, until"),
    );
    assert!(!b.find("#act-approve").await.is_enabled().await.unwrap());
    b.screenshot("8-graph.png").await;

    // Approve, signed in, with a reason; the saga goes on and completes, live.
    b.type_into("#token", OPERATOR_TOKEN).await;
    b.click("#signin button").await;
    b.until(
        "approve enabled",
        "!document.querySelector('#act-approve').disabled",
    )
    .await;
    b.click("#act-approve").await;
    b.until(
        "the confirmation dialog",
        "document.querySelector('#confirm').open",
    )
    .await;
    b.type_into("#confirm-reason", "reads well").await;
    b.click("#confirm-ok").await;
    b.until(
        "the saga completed",
        "document.querySelector('#state-badge')?.dataset.state === 'completed'",
    )
    .await;
    b.find("#timeline li[data-kind='approval_decided'].operator")
        .await;
    b.screenshot("9-approved.png").await;

    // The definitions page draws every version; moderated_post with its parallel group.
    b.click("#nav-definitions").await;
    b.until(
        "moderated_post's graph",
        "document.querySelectorAll('#graph-moderated_post-v1 li.stage.parallel .node').length === 2",
    )
    .await;
    assert!(
        b.text("#graph-onboard_author-v1")
            .await
            .contains("child saga register_user")
    );
    b.screenshot("10-definitions.png").await;
    for name in ["8-graph.png", "9-approved.png", "10-definitions.png"] {
        let size = std::fs::metadata(screenshot_dir().join(name))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(size > 10_000, "{name} looks empty ({size} bytes)");
    }
    stack.stop().await;
}

async fn get(url: &str, token: Option<&str>) -> (u16, Value) {
    let url = url.to_owned();
    let mut r = reqwest::Client::new().get(&url);
    if let Some(t) = token {
        r = r.header("Authorization", format!("Bearer {t}"));
    }
    let response = r.send().await.unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn post(url: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut r = reqwest::Client::new().post(url).body(body.to_owned());
    if let Some(t) = token {
        r = r.header("Authorization", format!("Bearer {t}"));
    }
    let response = r.send().await.unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn every_dashboard_endpoint_answers_and_refuses_bad_input_precisely() {
    let mut stack = Stack::start().await;
    let base = &stack.http_url.clone();
    let done = stack.register("api@example.com", "Api").await;
    let view = stack.finish_one(&done).await;
    assert_eq!(view.state, SagaState::Completed as i32);

    // The page and its assets come from the binary.
    for (path, kind, needle) in [
        ("/", "text/html", "<title>Sagas</title>"),
        ("/assets/app.js", "text/javascript", "detailPage"),
        ("/assets/app.css", "text/css", "--accent"),
    ] {
        let r = reqwest::get(format!("{base}{path}")).await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with(kind));
        assert!(r.text().await.unwrap().contains(needle), "{path}");
    }

    // Session.
    assert_eq!(
        get(&format!("{base}/api/session"), None).await,
        (
            200,
            json!({"reads_protected": false, "identity": null, "saga_types": ["moderated_post", "onboard_author", "publish_post", "register_user"]})
        )
    );
    assert_eq!(
        get(&format!("{base}/api/session"), Some(OPERATOR_TOKEN)).await.1["identity"],
        json!({"name": "ops", "role": "operator"})
    );
    assert_eq!(
        get(&format!("{base}/api/session"), Some("not-a-token-not-a-token"))
            .await
            .0,
        401
    );

    // Overview.
    let (status, o) = get(&format!("{base}/api/overview"), None).await;
    assert_eq!(status, 200);
    assert_eq!(o["counts"]["register_user"]["completed"], 1);
    assert_eq!(o["per_minute"].as_array().unwrap().len(), 60);
    let last = o["per_minute"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["started"].as_i64().unwrap())
        .sum::<i64>();
    assert_eq!(last, 1);
    assert_eq!(o["attention"]["failed"]["count"], 0);
    assert!(
        o["step_latency"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["step"] == "create_user" && r["phase"] == "action")
    );

    // List, filters, search by id prefix and by idempotency key, order, paging.
    let keyed = stack
        .client
        .start(
            "register_user",
            json!({"email": "k@example.com", "name": "K"}),
            "key-42",
        )
        .await
        .unwrap();
    stack.finish_one(&keyed).await;
    let list = |q: &str| {
        let url = format!("{base}/api/sagas?{q}");
        async move { get(&url, None).await }
    };
    let ids = |v: &Value| {
        v["sagas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&list("").await.1), vec![keyed.clone(), done.clone()]);
    assert_eq!(
        ids(&list("order=oldest").await.1),
        vec![done.clone(), keyed.clone()]
    );
    assert_eq!(
        ids(&list("type=register_user&state=completed&limit=1").await.1),
        vec![keyed.clone()]
    );
    let first = list("limit=1").await.1;
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    assert_eq!(
        ids(&list(&format!("limit=1&cursor={cursor}")).await.1),
        vec![done.clone()]
    );
    assert_eq!(
        ids(&list(&format!("q={}", &done[..18])).await.1),
        vec![done.clone()]
    );
    assert_eq!(ids(&list("q=key-42").await.1), vec![keyed.clone()]);
    assert!(ids(&list("state=failed").await.1).is_empty());
    assert_eq!(
        ids(&list("since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00Z")
            .await
            .1)
        .len(),
        2
    );
    for (q, message) in [
        (
            "type=nope",
            "type: unknown saga type `nope` (known: moderated_post, onboard_author, publish_post, register_user)",
        ),
        (
            "state=done",
            "state: `done` is not one of running, compensating, completed, compensated, failed",
        ),
        (
            "since=yesterday",
            "since: `yesterday` is not an RFC 3339 time like 2026-11-21T10:00:00Z",
        ),
        ("limit=0", "limit: `0` is not a number from 1 to 500"),
        ("limit=999", "limit: `999` is not a number from 1 to 500"),
        ("order=sideways", "order: `sideways` is not newest or oldest"),
        (
            "cursor=xyz",
            "cursor: `xyz` is not a saga id (expected a UUID such as 0190f5a2-7c1e-7d3a-9b1f-2c3d4e5f6a7b)",
        ),
        (
            "colour=red",
            "unknown parameter `colour` (known: type, state, step, since, until, q, order, limit, cursor)",
        ),
    ] {
        assert_eq!(list(q).await, (400, json!({ "error": message })), "{q}");
    }

    // Detail.
    let (status, d) = get(&format!("{base}/api/sagas/{done}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(d["state"], "completed");
    assert_eq!(d["steps"][0]["action"]["command_type"], "CreateUser");
    assert_eq!(
        d["steps"][0]["action"]["sent"]["email"], "api@example.com",
        "the command payload as sent"
    );
    assert_eq!(d["steps"][0]["compensation"]["command_type"], "DeleteUser");
    assert!(d["steps"][0]["action"]["reply"].is_object());
    assert_eq!(
        d["history"].as_array().unwrap().last().unwrap()["kind"],
        "saga_completed"
    );
    assert_eq!(d["actions"]["abort"]["allowed"], false);
    assert_eq!(
        d["actions"]["abort"]["why"],
        "only a running saga can be aborted; this one is completed"
    );
    assert!(
        d["steps"][0]["action"].get("gives_up_at").is_none(),
        "a finished phase has no budget left to show"
    );
    // A step waiting for its participant says when its time budget (5 minutes) runs out.
    stack.stop_posts().await;
    let waiting = stack.register("api.waiting@example.com", "Api Waiting").await;
    stack
        .wait_event(&waiting, "CreateAuthor dispatched", |e| {
            e.kind == "command_dispatched" && e.data_json.contains("CreateAuthor")
        })
        .await;
    let (_, w) = get(&format!("{base}/api/sagas/{waiting}"), None).await;
    let at = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    let author = &w["steps"][1]["action"];
    assert_eq!(
        at(&author["gives_up_at"]) - at(&author["started_at"]),
        chrono::TimeDelta::minutes(5),
        "{author}"
    );
    stack.start_posts().await;
    assert_eq!(
        stack.finish_one(&waiting).await.state,
        SagaState::Completed as i32
    );
    assert_eq!(get(&format!("{base}/api/sagas/nope"), None).await.0, 400);
    let missing = uuid::Uuid::now_v7();
    assert_eq!(
        get(&format!("{base}/api/sagas/{missing}"), None).await,
        (404, json!({"error": format!("no saga {missing}")}))
    );
    assert_eq!(
        get(&format!("{base}/api/nothing"), None).await,
        (404, json!({"error": "no API endpoint /api/nothing"}))
    );

    // Jobs: empty at first; a bulk replay started as a job (it selects nothing here), read back.
    assert_eq!(
        get(&format!("{base}/api/jobs"), None).await,
        (200, json!({"jobs": [], "next_cursor": null}))
    );
    assert_eq!(
        post(&format!("{base}/api/jobs"), None, r#"{"reason":"x"}"#)
            .await
            .0,
        401
    );
    assert_eq!(
        post(
            &format!("{base}/api/jobs"),
            Some(OPERATOR_TOKEN),
            r#"{"reason":"x","colour":"red"}"#
        )
        .await
        .0,
        400,
        "an unknown field is refused"
    );
    let (status, started) = post(
        &format!("{base}/api/jobs"),
        Some(OPERATOR_TOKEN),
        r#"{"reason":"nothing parked","type":"register_user"}"#,
    )
    .await;
    assert_eq!(status, 201, "{started}");
    let job_id = started["job"]["id"].as_str().unwrap().to_owned();
    assert_eq!(started["job"]["params"]["filter"]["state"], "failed");
    let (status, shown) = get(&format!("{base}/api/jobs/{job_id}"), None).await;
    assert_eq!((status, &shown["job"]["id"]), (200, &json!(job_id)));
    assert_eq!(get(&format!("{base}/api/jobs/nope"), None).await.0, 400);
    assert_eq!(get(&format!("{base}/api/jobs/{missing}"), None).await.0, 404);
    assert_eq!(
        get(&format!("{base}/api/jobs?limit=0"), None).await,
        (400, json!({"error": "limit: `0` is not a number from 1 to 500"}))
    );

    // Actions: credential first, then a reason, then whether the action applies.
    let abort = format!("{base}/api/sagas/{done}/abort");
    assert_eq!(post(&abort, None, r#"{"reason":"x"}"#).await.0, 401);
    assert_eq!(
        post(&abort, Some("wrong-token-wrong-token"), r#"{"reason":"x"}"#)
            .await
            .0,
        401
    );
    assert_eq!(post(&abort, Some(OPERATOR_TOKEN), "not json").await.0, 400);
    assert_eq!(
        post(&abort, Some(OPERATOR_TOKEN), r#"{"reason":"  "}"#).await,
        (
            400,
            json!({"error": "reason: required; it is recorded in the saga's history"})
        )
    );
    assert_eq!(
        post(&abort, Some(OPERATOR_TOKEN), r#"{"reason":"too late"}"#).await,
        (
            409,
            json!({"error": "only a running saga can be aborted; this one is completed"})
        )
    );
    assert_eq!(
        post(
            &format!("{base}/api/sagas/{done}/replay"),
            Some(OPERATOR_TOKEN),
            r#"{"reason":"x"}"#
        )
        .await
        .0,
        409
    );
    assert_eq!(
        post(
            &format!("{base}/api/sagas/{done}/retry"),
            Some(OPERATOR_TOKEN),
            r#"{"reason":"x","step":"one"}"#
        )
        .await
        .0,
        400
    );
    assert_eq!(
        stack
            .history(&done)
            .await
            .iter()
            .filter(|e| e.actor.starts_with("operator"))
            .count(),
        0,
        "nothing recorded"
    );
    stack.stop().await;
}

#[tokio::test]
async fn the_event_stream_announces_saga_changes() {
    let stack = Stack::start().await;
    let response = reqwest::get(format!("{}/api/events", stack.http_url))
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let id = stack.register("sse@example.com", "Sse").await;
    let mut stream = response;
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + WAIT;
    while !seen.contains("\"state\":\"completed\"") {
        assert!(
            std::time::Instant::now() < deadline,
            "no completion event in {seen}"
        );
        match tokio::time::timeout(Duration::from_secs(5), stream.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            _ => panic!("the event stream stalled: {seen}"),
        }
    }
    assert!(seen.contains("event: saga"));
    assert!(seen.contains(&id));
    // An open stream does not hold up the shutdown.
    let stopping = std::time::Instant::now();
    stack.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "shutdown waited {:?} for the stream",
        stopping.elapsed()
    );
    drop(stream);
}
