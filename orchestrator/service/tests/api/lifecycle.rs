//! A saga's life after it ends, against real PostgreSQL: search by business key (from the input,
//! a generated id and a signal's fields), legal holds, and retention that removes exactly the
//! expired, unheld, finished families — also while sagas finish and holds arrive at the same time.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use saga_proto::v1::{
    DecideApprovalRequest, HoldSagaRequest, KeyMatch, ListSagasRequest, SagaFilter, SagaState,
    SignalSagaRequest, WatchSagasRequest,
};
use tokio_stream::StreamExt;

use crate::helpers::{OPERATOR_TOKEN, TestApp, WAIT, assert_status, authed, spawn_app, spawn_with_catalog};

/// A ticket waits for its `done` signal (which carries a tracking number); a batch runs a ticket
/// as its child, then waits for an operator's approval.
const CATALOG: &str = r#"
[[saga]]
name = "ticket"
version = 1
input = [{ name = "code", kind = "string", max_len = 64 }]
search_keys = ["code", "tracking"]
[[saga.steps]]
name = "await_done"
wait = { signal = "done", timeout_ms = 600000, fields = [{ name = "tracking", kind = "string" }] }

[[saga]]
name = "batch"
version = 1
input = [{ name = "code", kind = "string", max_len = 64 }]
search_keys = ["code"]
[[saga.steps]]
name = "run_ticket"
child = { saga = "ticket", input = { code = "code" } }
[[saga.steps]]
name = "approve"
wait = { approval = true, timeout_ms = 600000 }
"#;

/// A retention age of about `ms` milliseconds, in days.
fn days(ms: f64) -> f64 {
    ms / 86_400_000.0
}

async fn start(app: &TestApp, saga_type: &str, code: &str) -> String {
    app.start(saga_type, &format!(r#"{{"code":"{code}"}}"#), "")
        .await
        .expect("started")
        .saga_id
}

fn by_key(saga_type: &str, name: &str, value: &str, prefix: bool) -> ListSagasRequest {
    ListSagasRequest {
        filter: Some(SagaFilter {
            saga_type: saga_type.into(),
            keys: vec![KeyMatch {
                name: name.into(),
                value: value.into(),
                prefix,
            }],
            ..SagaFilter::default()
        }),
        ..ListSagasRequest::default()
    }
}

async fn found(app: &TestApp, request: ListSagasRequest) -> Vec<String> {
    app.client
        .clone()
        .list_sagas(request)
        .await
        .expect("ListSagas")
        .into_inner()
        .sagas
        .into_iter()
        .map(|s| s.saga_id)
        .collect()
}

async fn signal_done(app: &TestApp, id: &str, tracking: &str) {
    app.client
        .clone()
        .signal_saga(SignalSagaRequest {
            saga_id: id.into(),
            signal: "done".into(),
            payload_json: format!(r#"{{"tracking":"{tracking}"}}"#),
            idempotency_key: String::new(),
        })
        .await
        .expect("signal delivered");
}

async fn hold(app: &TestApp, id: &str, reason: &str) -> Result<saga_proto::v1::HoldResponse, tonic::Status> {
    let request = HoldSagaRequest {
        saga_id: id.into(),
        reason: reason.into(),
    };
    app.client
        .clone()
        .hold_saga(authed(request, OPERATOR_TOKEN))
        .await
        .map(tonic::Response::into_inner)
}

async fn release(app: &TestApp, id: &str) -> Result<saga_proto::v1::HoldResponse, tonic::Status> {
    let request = HoldSagaRequest {
        saga_id: id.into(),
        reason: "case closed".into(),
    };
    app.client
        .clone()
        .release_saga(authed(request, OPERATOR_TOKEN))
        .await
        .map(tonic::Response::into_inner)
}

async fn approve(app: &TestApp, id: &str) {
    let request = DecideApprovalRequest {
        saga_id: id.into(),
        approved: true,
        reason: "looks right".into(),
        ..DecideApprovalRequest::default()
    };
    app.client
        .clone()
        .decide_approval(authed(request, OPERATOR_TOKEN))
        .await
        .expect("approved");
}

/// The child saga of a batch, once it exists.
async fn child_of(app: &TestApp, parent: &str) -> String {
    AppHandle {
        client: app.client.clone(),
    }
    .child_of(parent)
    .await
}

async fn exists(app: &TestApp, id: &str) -> bool {
    app.count(&format!("SELECT count(*) FROM sagas WHERE id = '{id}'"))
        .await
        == 1
}

/// Waits (bounded) until `id` is gone.
async fn until_removed(app: &TestApp, id: &str) {
    let deadline = Instant::now() + WAIT;
    while exists(app, id).await {
        assert!(Instant::now() < deadline, "saga {id} was never removed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sagas_are_found_by_input_keys_generated_ids_and_keys_a_signal_provides() {
    let (app, _dir) = spawn_with_catalog(CATALOG, |_| {}).await;
    let a = start(&app, "ticket", "ORD-1001").await;
    let b = start(&app, "ticket", "ORD-2002").await;
    let batch = start(&app, "batch", "ORD-1001-B").await;
    let child = child_of(&app, &batch).await;

    assert_eq!(
        found(&app, by_key("ticket", "code", "ORD-1001", false)).await,
        vec![a.clone()]
    );
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        sorted(found(&app, by_key("ticket", "code", "ORD-", true)).await),
        sorted(vec![a.clone(), b.clone(), child.clone()]),
        "a prefix finds the tickets (the batch's child is one) and not the batch"
    );
    assert_eq!(
        sorted(found(&app, by_key("", "code", "ORD-1001", true)).await),
        sorted(vec![a.clone(), batch.clone(), child.clone()]),
        "any type"
    );
    // No name: any key of the saga.
    assert_eq!(
        found(&app, by_key("ticket", "", "ORD-2002", false)).await,
        vec![b.clone()]
    );

    // A key a signal's fields provide is indexed when the signal arrives.
    assert!(
        found(&app, by_key("ticket", "tracking", "TRK-9", false))
            .await
            .is_empty()
    );
    signal_done(&app, &a, "TRK-9").await;
    assert_eq!(
        found(&app, by_key("ticket", "tracking", "TRK-9", false)).await,
        vec![a.clone()]
    );
    let view = app.view(&a).await;
    let keys: Vec<(String, String)> = view
        .search_keys
        .iter()
        .map(|k| (k.name.clone(), k.value.clone()))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("code".into(), "ORD-1001".into()),
            ("tracking".into(), "TRK-9".into())
        ]
    );

    // Precise refusals.
    let mut client = app.client.clone();
    let err = client
        .list_sagas(by_key("ticket", "email", "x", false))
        .await
        .unwrap_err();
    assert_status(
        &err,
        tonic::Code::InvalidArgument,
        "filter.keys[0]: `email` is not a search key of saga type `ticket` (search keys: code, tracking)",
    );
    let err = client
        .list_sagas(by_key("", "order", "x", false))
        .await
        .unwrap_err();
    assert_status(
        &err,
        tonic::Code::InvalidArgument,
        "filter.keys[0]: `order` is not a search key of any saga type (search keys: code, tracking)",
    );
    let err = client
        .list_sagas(by_key("ticket", "code", "", true))
        .await
        .unwrap_err();
    assert_status(
        &err,
        tonic::Code::InvalidArgument,
        "filter.keys[0]: the value of `code` is empty",
    );
    let long = "x".repeat(300);
    let err = client
        .list_sagas(by_key("ticket", "code", &long, false))
        .await
        .unwrap_err();
    assert_status(
        &err,
        tonic::Code::InvalidArgument,
        "filter.keys[0]: the value of `code` is 300 bytes, over the 256 byte limit of indexed values",
    );

    // The dashboard's one search box: a key's value, or name=value.
    let http = reqwest::Client::new();
    let base = format!("http://{}/api/sagas", app.http_addr);
    for q in ["TRK-9", "tracking=TRK-9", "ORD-1001&type=ticket"] {
        let (q, extra) = q.split_once('&').map_or((q, ""), |(q, e)| (q, e));
        let body: serde_json::Value = http
            .get(format!("{base}?q={}&{extra}", urlencode(q)))
            .send()
            .await
            .expect("dashboard")
            .json()
            .await
            .expect("JSON");
        let ids: Vec<&str> = body["sagas"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|s| s["id"].as_str())
            .collect();
        assert_eq!(ids, vec![a.as_str()], "search `{q}`");
    }
    app.stop().await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn the_built_in_sagas_are_found_by_email_and_by_the_generated_user_id() {
    let app = spawn_app().await;
    let id = app.register("keyed@example.com").await;
    let view = app.view(&id).await;
    let user_id = view
        .search_keys
        .iter()
        .find(|k| k.name == "user_id")
        .expect("user_id indexed")
        .value
        .clone();
    assert_eq!(
        found(&app, by_key("register_user", "email", "keyed@example.com", false)).await,
        vec![id.clone()]
    );
    assert_eq!(
        found(&app, by_key("", "user_id", &user_id, false)).await,
        vec![id.clone()]
    );

    // WatchSagas by key: a change of another saga is not sent, this one's is.
    let filter = SagaFilter {
        keys: vec![KeyMatch {
            name: "email".into(),
            value: "watched@example.com".into(),
            prefix: false,
        }],
        ..SagaFilter::default()
    };
    let mut stream = app
        .client
        .clone()
        .watch_sagas(WatchSagasRequest { filter: Some(filter) })
        .await
        .expect("watch")
        .into_inner();
    app.register("other@example.com").await;
    let watched = app.register("watched@example.com").await;
    let first = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("a change in time")
        .expect("stream open")
        .expect("a summary");
    assert_eq!(
        first.saga_id, watched,
        "the other saga's change (sent first) was filtered out"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_legal_hold_is_recorded_with_who_and_why_and_released() {
    let (app, _dir) = spawn_with_catalog(CATALOG, |_| {}).await;
    let id = start(&app, "ticket", "HOLD-1").await;

    let placed = hold(&app, &id, "litigation 2026-17").await.expect("held");
    assert!(placed.changed);
    let h = placed.hold.expect("hold");
    assert_eq!(
        (h.operator.as_str(), h.reason.as_str()),
        ("alice", "litigation 2026-17")
    );
    let again = hold(&app, &id, "another reason").await.expect("held again");
    assert!(!again.changed, "a held saga keeps its hold");
    assert_eq!(again.hold.expect("hold").reason, "litigation 2026-17");
    assert_eq!(
        app.view(&id).await.hold.expect("shown").reason,
        "litigation 2026-17"
    );

    let released = release(&app, &id).await.expect("released");
    assert_eq!(
        released.hold.expect("the hold released").reason,
        "litigation 2026-17"
    );
    assert!(app.view(&id).await.hold.is_none());
    let err = release(&app, &id).await.unwrap_err();
    assert_status(
        &err,
        tonic::Code::FailedPrecondition,
        &format!("saga {id} is not under legal hold"),
    );

    let history = app.get(&id).await.history;
    let recorded: Vec<(&str, &str)> = history
        .iter()
        .filter(|e| e.kind.starts_with("hold_"))
        .map(|e| (e.kind.as_str(), e.actor.as_str()))
        .collect();
    assert_eq!(
        recorded,
        vec![
            ("hold_placed", "operator:alice"),
            ("hold_released", "operator:alice")
        ]
    );

    let missing = uuid::Uuid::now_v7().to_string();
    assert_status(
        &hold(&app, &missing, "x").await.unwrap_err(),
        tonic::Code::NotFound,
        &format!("no saga {missing}"),
    );
    assert_eq!(
        hold(&app, &id, " ").await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    let anonymous = app
        .client
        .clone()
        .hold_saga(HoldSagaRequest {
            saga_id: id.clone(),
            reason: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
    app.stop().await;
}

#[tokio::test]
async fn retention_removes_expired_families_but_never_running_held_or_a_child_of_a_running_parent() {
    let (app, _dir) = spawn_with_catalog(CATALOG, |s| {
        s.retention.by_type.insert("ticket".into(), days(300.0));
        s.retention.by_type.insert("batch".into(), days(300.0));
        s.retention.interval_ms = 20;
    })
    .await;
    let running = start(&app, "ticket", "R-1").await;
    let held = start(&app, "ticket", "H-1").await;
    hold(&app, &held, "audit request").await.expect("held");
    signal_done(&app, &held, "T-H").await;
    let parent = start(&app, "batch", "B-1").await;
    let child = child_of(&app, &parent).await;
    signal_done(&app, &child, "T-C").await;
    app.wait_past(&parent, "run_ticket").await;
    // Finished last: once retention removed it, it had looked at everything that ended before.
    let done = start(&app, "ticket", "D-1").await;
    signal_done(&app, &done, "T-D").await;
    until_removed(&app, &done).await;

    assert!(exists(&app, &running).await, "a running saga stays");
    assert!(exists(&app, &held).await, "a held saga stays");
    assert!(
        exists(&app, &child).await,
        "a finished child of a running parent stays"
    );
    assert!(exists(&app, &parent).await);
    for table in ["saga_events", "saga_keys"] {
        let orphans = app
            .count(&format!("SELECT count(*) FROM {table} t WHERE NOT EXISTS (SELECT 1 FROM sagas s WHERE s.id = t.saga_id)"))
            .await;
        assert_eq!(orphans, 0, "{table} keeps nothing of a removed saga");
    }
    assert!(
        found(&app, by_key("ticket", "code", "D-1", false))
            .await
            .is_empty()
    );

    // The parent finishes: it goes with its child. The hold is released: the saga goes.
    approve(&app, &parent).await;
    until_removed(&app, &parent).await;
    assert!(!exists(&app, &child).await, "the child went with its parent");
    release(&app, &held).await.expect("released");
    until_removed(&app, &held).await;
    assert!(exists(&app, &running).await);
    app.stop().await;
}

/// Many families finish while retention removes them as soon as they expire (~50 ms) and holds
/// arrive at any moment: every removed saga had completed (seen on WatchSagas before it went),
/// every saga whose hold was placed is still there with its whole history, nothing is left of
/// the rest.
#[tokio::test]
async fn retention_never_races_sagas_that_are_finishing_or_being_held() {
    let (app, _dir) = spawn_with_catalog(CATALOG, |s| {
        s.retention.by_type.insert("ticket".into(), days(50.0));
        s.retention.by_type.insert("batch".into(), days(50.0));
        s.retention.interval_ms = 5;
        s.retention.pause_ms = 0;
        s.retention.batch = 7;
    })
    .await;
    let mut stream = app
        .client
        .clone()
        .watch_sagas(WatchSagasRequest { filter: None })
        .await
        .expect("watch")
        .into_inner();
    let n = 40;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let parent = start(&app, "batch", &format!("C-{i}")).await;
        let app_ref = AppHandle {
            client: app.client.clone(),
        };
        tasks.spawn(async move {
            let child = app_ref.child_of(&parent).await;
            // Holds land before, during and after the family's end.
            let held_before = i % 4 == 0 && app_ref.hold(&parent).await;
            app_ref.signal(&child).await;
            let held_child = i % 4 == 1 && app_ref.hold(&child).await;
            app_ref.approve(&parent).await;
            let held_after = i % 4 == 2 && app_ref.hold(&parent).await;
            let held = if held_before || held_after {
                vec![parent.clone()]
            } else if held_child {
                vec![child.clone()]
            } else {
                vec![]
            };
            (parent, child, held)
        });
    }
    let mut families = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        families.push(joined.expect("family task"));
    }
    // Every family that no hold keeps goes; read the watch meanwhile.
    // A family with a held saga keeps both of its sagas.
    let families_kept = families.iter().filter(|(_, _, h)| !h.is_empty()).count() as i64;
    let mut completed: HashSet<String> = HashSet::new();
    let seen = |completed: &mut HashSet<String>, change: saga_proto::v1::SagaSummary| {
        if change.state == SagaState::Completed as i32 {
            completed.insert(change.saga_id);
        }
    };
    let deadline = Instant::now() + WAIT;
    loop {
        let remaining = app.rows("sagas").await;
        if remaining == 2 * families_kept {
            break;
        }
        if Instant::now() > deadline {
            let left: Vec<(String, String, Option<String>, bool, bool, String)> = sqlx::query_as(
                "SELECT id::text, state, parent_id::text, \
                        EXISTS (SELECT 1 FROM saga_holds h WHERE h.saga_id = s.id), \
                        EXISTS (SELECT 1 FROM saga_inputs i WHERE i.saga_id = s.id), \
                        (now() - updated_at)::text FROM sagas s",
            )
            .fetch_all(&app.pool)
            .await
            .expect("left");
            panic!(
                "{remaining} sagas left, expected {}: {left:#?}\nfamilies: {families:#?}",
                2 * families_kept
            );
        }
        while let Ok(Some(Ok(change))) = tokio::time::timeout(Duration::from_millis(20), stream.next()).await
        {
            seen(&mut completed, change);
        }
    }
    // Every completion was announced before the removal that followed it; the stream is
    // drained up to the last one (2 per family).
    while completed.len() < 2 * n {
        let change = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("every completion announced in time")
            .expect("stream open")
            .expect("a summary");
        seen(&mut completed, change);
    }
    for (parent, child, held) in &families {
        let family_held = !held.is_empty();
        for id in [parent, child] {
            assert_eq!(
                exists(&app, id).await,
                family_held,
                "saga {id} (family held: {family_held})"
            );
            assert!(
                completed.contains(id),
                "saga {id} completed before anything else happened to it"
            );
            let events = app
                .count(&format!(
                    "SELECT count(*) FROM saga_events WHERE saga_id = '{id}'"
                ))
                .await;
            assert_eq!(
                events > 0,
                family_held,
                "saga {id}'s history goes with it, and only with it"
            );
        }
    }
    for table in ["saga_events", "saga_keys"] {
        let orphans = app
            .count(&format!("SELECT count(*) FROM {table} t WHERE NOT EXISTS (SELECT 1 FROM sagas s WHERE s.id = t.saga_id)"))
            .await;
        assert_eq!(orphans, 0, "{table} keeps nothing of a removed saga");
    }
    app.stop().await;
}

#[tokio::test]
async fn an_export_streams_the_selected_sagas_with_their_history_in_a_stable_format() {
    let (app, _dir) = spawn_with_catalog(CATALOG, |_| {}).await;
    let ids = [
        start(&app, "ticket", "E-1").await,
        start(&app, "ticket", "E-2").await,
        start(&app, "ticket", "E-3").await,
    ];
    start(&app, "batch", "X-1").await;
    signal_done(&app, &ids[1], "T-E2").await;
    hold(&app, &ids[2], "keep").await.expect("held");

    let export = |limit: u64| {
        let mut client = app.client.clone();
        async move {
            let request = saga_proto::v1::ExportSagasRequest {
                filter: Some(by_key("ticket", "code", "E-", true).filter.expect("filter")),
                limit,
            };
            let mut stream = client.export_sagas(request).await.expect("export").into_inner();
            let mut docs = Vec::new();
            while let Some(doc) = stream.message().await.expect("a document") {
                docs.push(doc.json);
            }
            docs
        }
    };
    let docs = export(0).await;
    assert_eq!(docs, export(0).await, "the same sagas export the same way");
    let parsed: Vec<serde_json::Value> = docs
        .iter()
        .map(|d| serde_json::from_str(d).expect("JSON"))
        .collect();
    let exported: Vec<&str> = parsed.iter().filter_map(|d| d["saga_id"].as_str()).collect();
    assert_eq!(
        exported,
        ids.iter().map(String::as_str).collect::<Vec<_>>(),
        "oldest first, tickets only"
    );
    for d in &parsed {
        assert_eq!(d["format"], "saga-export/1");
        assert_eq!(d["saga_type"], "ticket");
        assert_eq!(d["history"][0]["kind"], "saga_started", "{d}");
        assert!(d["steps"].is_array() && d["context"]["code"].is_string(), "{d}");
    }
    assert_eq!(parsed[1]["state"], "completed");
    assert_eq!(parsed[1]["context"]["tracking"], "T-E2");
    assert_eq!(
        parsed[1]["search_keys"],
        serde_json::json!([{"name": "code", "value": "E-2"}, {"name": "tracking", "value": "T-E2"}])
    );
    assert_eq!(parsed[2]["hold"]["reason"], "keep");
    assert_eq!(parsed[0]["hold"], serde_json::Value::Null);
    assert_eq!(export(2).await, docs[..2].to_vec(), "a limit");
    app.stop().await;
}

#[tokio::test]
async fn retention_archives_what_it_removes_before_removing_it() {
    let archive = tempfile::tempdir().expect("archive dir");
    let dir = archive.path().to_path_buf();
    let (app, _dir) = spawn_with_catalog(CATALOG, |s| {
        s.retention.by_type.insert("ticket".into(), days(100.0));
        s.retention.interval_ms = 20;
        s.retention.archive_dir = Some(dir);
    })
    .await;
    let first = start(&app, "ticket", "A-1").await;
    let second = start(&app, "ticket", "A-2").await;
    signal_done(&app, &first, "T-1").await;
    signal_done(&app, &second, "T-2").await;
    until_removed(&app, &first).await;
    until_removed(&app, &second).await;

    let mut archived = Vec::new();
    for entry in std::fs::read_dir(archive.path()).expect("archive listed") {
        let path = entry.expect("entry").path();
        assert_eq!(
            path.extension().and_then(|e| e.to_str()),
            Some("jsonl"),
            "no partial file left: {path:?}"
        );
        for line in std::fs::read_to_string(&path).expect("archive read").lines() {
            archived.push(serde_json::from_str::<serde_json::Value>(line).expect("a document"));
        }
    }
    let mut ids: Vec<&str> = archived.iter().filter_map(|d| d["saga_id"].as_str()).collect();
    ids.sort_unstable();
    let mut expected = vec![first.as_str(), second.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected, "each removed saga archived once");
    for d in &archived {
        assert_eq!(d["format"], "saga-export/1");
        assert_eq!(d["state"], "completed");
        let kinds: Vec<&str> = d["history"]
            .as_array()
            .expect("history")
            .iter()
            .filter_map(|e| e["kind"].as_str())
            .collect();
        assert!(
            kinds.contains(&"signal_received") && kinds.contains(&"saga_completed"),
            "{kinds:?}"
        );
    }
    app.stop().await;
}

/// What a family's task needs of the app.
struct AppHandle {
    client: saga_proto::v1::saga_orchestrator_client::SagaOrchestratorClient<tonic::transport::Channel>,
}

impl AppHandle {
    async fn child_of(&self, parent: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let view = self
                .client
                .clone()
                .get_saga(saga_proto::v1::GetSagaRequest {
                    saga_id: parent.into(),
                })
                .await
                .expect("GetSaga")
                .into_inner()
                .saga
                .expect("view");
            // The parent names its child before the child exists (it is started from
            // `saga_inputs`): wait for the child itself.
            let child = &view.steps[0].child_saga_id;
            if !child.is_empty()
                && self
                    .client
                    .clone()
                    .get_saga(saga_proto::v1::GetSagaRequest {
                        saga_id: child.clone(),
                    })
                    .await
                    .is_ok()
            {
                return child.clone();
            }
            assert!(Instant::now() < deadline, "{parent} never started its child");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Places a hold; false if the saga was already removed (retention was first).
    async fn hold(&self, id: &str) -> bool {
        let request = HoldSagaRequest {
            saga_id: id.into(),
            reason: "race".into(),
        };
        match self
            .client
            .clone()
            .hold_saga(authed(request, OPERATOR_TOKEN))
            .await
        {
            Ok(_) => true,
            Err(e) if e.code() == tonic::Code::NotFound => false,
            Err(e) => panic!("hold {id}: {e}"),
        }
    }

    async fn signal(&self, child: &str) {
        self.client
            .clone()
            .signal_saga(SignalSagaRequest {
                saga_id: child.into(),
                signal: "done".into(),
                payload_json: r#"{"tracking":"T"}"#.into(),
                idempotency_key: String::new(),
            })
            .await
            .expect("signal");
    }

    /// Approves once the parent waits for it.
    async fn approve(&self, parent: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let request = DecideApprovalRequest {
                saga_id: parent.into(),
                approved: true,
                reason: "ok".into(),
                ..DecideApprovalRequest::default()
            };
            match self
                .client
                .clone()
                .decide_approval(authed(request, OPERATOR_TOKEN))
                .await
            {
                Ok(_) => return,
                Err(e) if e.code() == tonic::Code::FailedPrecondition && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("approve {parent}: {e}"),
            }
        }
    }
}
