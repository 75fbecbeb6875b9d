//! The saga status dashboard: a single page (HTML, JS and CSS compiled into the binary — no CDN)
//! and the JSON API it uses, on the orchestrator's HTTP port next to `/metrics`.
//!
//! API (every error is a JSON `{"error": "..."}` with a precise status):
//! - `GET /api/session` — whether reads need a token, and who the presented token belongs to.
//! - `GET /api/overview` — counts by type and state, per-minute throughput and step latency over
//!   the last hour, and the sagas needing attention.
//! - `GET /api/sagas?type&state&step&since&until&q&order&limit&cursor` — one page of sagas.
//! - `GET /api/sagas/{id}` — steps with commands and replies, history, and which actions apply.
//! - `GET /api/events` — server-sent events: `saga` for every change, `resync` after a gap.
//! - `POST /api/sagas/{id}/replay|retry|abort` — operator actions (operator token and `reason`).
//! - `GET /api/audit`, `POST /api/audit` — the last consistency audit's report; run one now.
//!
//! Reads follow the same rule as gRPC (open unless protected); actions need an operator token in
//! `Authorization: Bearer …` (the event stream also takes `?token=`, as browsers cannot set headers
//! on it).

pub mod audit;
pub mod queries;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use saga_engine::{EngineError, Input, Replayability, SagaId, SagaState, decide, replayability};
use serde_json::{Value, json};
use tokio_stream::wrappers::BroadcastStream;
use tokio_util::sync::CancellationToken;

use crate::auth::{Authenticator, Denied};
use crate::coordinator::{ApplyError, Coordinator, ReplayOutcome};
use crate::store::{self, ListFilter, StoreError, StoredSaga};
use crate::watch::{Changes, Event};

const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 200;
const MAX_REASON_CHARS: usize = 500;

/// What the dashboard needs from the orchestrator.
#[derive(Clone)]
pub struct Dashboard {
    pub coordinator: Arc<Coordinator>,
    pub auth: Arc<Authenticator>,
    pub changes: Changes,
    /// Ends the event streams, so an open page never holds up a shutdown.
    pub shutdown: CancellationToken,
    /// The consistency audit (the Consistency page).
    pub auditor: Arc<crate::audit::Auditor>,
}

pub fn router(d: Dashboard) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", include_str!("assets/index.html")) }),
        )
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", include_str!("assets/app.js")) }),
        )
        .route(
            "/assets/app.css",
            get(|| async { asset("text/css; charset=utf-8", include_str!("assets/app.css")) }),
        )
        .route("/api/session", get(session))
        .route("/api/overview", get(overview))
        .route("/api/sagas", get(list))
        .route("/api/sagas/{id}", get(detail))
        .route("/api/events", get(events))
        .route("/api/sagas/{id}/replay", post(replay))
        .route("/api/sagas/{id}/retry", post(retry))
        .route("/api/sagas/{id}/abort", post(abort))
        .route("/api/audit", get(audit::last).post(audit::run))
        .route("/api/{*rest}", get(unknown_api).post(unknown_api))
        .with_state(d)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// An API error: a status and a message in plain words.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn bad(message: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<Denied> for ApiError {
    fn from(d: Denied) -> Self {
        match d {
            Denied::Unauthenticated(m) => Self(StatusCode::UNAUTHORIZED, m),
            Denied::PermissionDenied(m) => Self(StatusCode::FORBIDDEN, m),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Database(_) | StoreError::Shared(_) => {
                tracing::error!(error = %e, "saga store unavailable");
                Self(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the saga store is unavailable; retry later".into(),
                )
            }
            StoreError::Conflict(_) => Self(StatusCode::CONFLICT, e.to_string()),
            other => Self(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::UnknownSaga(id) => Self(StatusCode::NOT_FOUND, format!("no saga {id}")),
            ApplyError::Engine(EngineError::NotAllowed(why)) => Self(StatusCode::CONFLICT, why),
            ApplyError::Store(s) => s.into(),
            other => Self(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::from(e).into()
    }
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""))
}

async fn unknown_api(Path(rest): Path<String>) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no API endpoint /api/{rest}"))
}

fn saga_id(raw: &str) -> Result<SagaId, ApiError> {
    raw.parse::<SagaId>().map_err(|e| ApiError::bad(e.to_string()))
}

/// Only the named query parameters are accepted, so a typo is an error rather than ignored.
fn params<'a>(
    query: &'a HashMap<String, String>,
    allowed: &[&str],
) -> Result<impl Fn(&str) -> Option<&'a str>, ApiError> {
    if let Some(unknown) = query.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::bad(format!(
            "unknown parameter `{unknown}` (known: {})",
            allowed.join(", ")
        )));
    }
    Ok(move |k: &str| query.get(k).map(String::as_str).filter(|v| !v.is_empty()))
}

async fn session(State(d): State<Dashboard>, headers: HeaderMap) -> Response {
    let who = d.auth.operator(authorization(&headers));
    let identity = match (&who, authorization(&headers)) {
        (Ok(c), _) => json!({"name": c.name, "role": "operator"}),
        (Err(Denied::PermissionDenied(_)), _) => json!({"role": "reader"}),
        (Err(_), Some(_)) => {
            return ApiError(
                StatusCode::UNAUTHORIZED,
                "this token is not a known credential".into(),
            )
            .into_response();
        }
        (Err(_), None) => Value::Null,
    };
    axum::Json(json!({
        "reads_protected": d.auth.reads_protected(),
        "identity": identity,
        "saga_types": d.coordinator.catalog().names(),
    }))
    .into_response()
}

async fn overview(State(d): State<Dashboard>, headers: HeaderMap) -> Result<Response, ApiError> {
    d.auth.reader(authorization(&headers))?;
    let now = d.coordinator.now();
    let pool = d.coordinator.pool();
    // Independent queries, each on a connection of its own: the page waits for the slowest only.
    let (counts, per_minute, latency, attention) = tokio::try_join!(
        async { queries::counts(&mut *pool.acquire().await?).await },
        async { queries::per_minute(&mut *pool.acquire().await?, now).await },
        async { queries::step_latency(&mut *pool.acquire().await?, now, d.coordinator.catalog()).await },
        async { queries::needs_attention(&mut *pool.acquire().await?, now).await },
    )?;
    Ok(axum::Json(json!({
        "generated_at": now,
        "saga_types": d.coordinator.catalog().names(),
        "counts": counts,
        "per_minute": per_minute,
        "step_latency": latency,
        "latency_sample": queries::LATENCY_SAMPLE,
        "attention": attention,
    }))
    .into_response())
}

fn time(name: &str, raw: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    raw.map(|t| {
        DateTime::parse_from_rfc3339(t)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                ApiError::bad(format!(
                    "{name}: `{t}` is not an RFC 3339 time like 2026-11-21T10:00:00Z"
                ))
            })
    })
    .transpose()
}

/// Turns the list's query string into a filter, naming any parameter at fault.
fn list_filter(
    d: &Dashboard,
    query: &HashMap<String, String>,
) -> Result<(ListFilter, i64, Option<String>), ApiError> {
    let p = params(
        query,
        &[
            "type", "state", "step", "since", "until", "q", "order", "limit", "cursor",
        ],
    )?;
    let mut f = ListFilter::default();
    if let Some(t) = p("type") {
        if d.coordinator.catalog().latest(t).is_none() {
            return Err(ApiError::bad(format!(
                "type: unknown saga type `{t}` (known: {})",
                d.coordinator.catalog().names().join(", ")
            )));
        }
        f.saga_type = Some(t.to_owned());
    }
    if let Some(s) = p("state") {
        f.state = Some(s.parse::<SagaState>().map_err(|_| {
            ApiError::bad(format!(
                "state: `{s}` is not one of running, compensating, completed, compensated, failed"
            ))
        })?);
    }
    if let Some(step) = p("step") {
        if step.len() > 64 {
            return Err(ApiError::bad("step: at most 64 characters"));
        }
        f.current_step = Some(step.to_owned());
    }
    f.created_after = time("since", p("since"))?;
    f.created_before = time("until", p("until"))?;
    f.ascending = match p("order") {
        None | Some("newest") => false,
        Some("oldest") => true,
        Some(o) => return Err(ApiError::bad(format!("order: `{o}` is not newest or oldest"))),
    };
    let limit = match p("limit") {
        None => DEFAULT_PAGE,
        Some(l) => match l.parse::<i64>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(ApiError::bad(format!(
                    "limit: `{l}` is not a number from 1 to {MAX_PAGE}"
                )));
            }
        },
    };
    if let Some(c) = p("cursor") {
        f.cursor = Some(saga_id(c).map_err(|e| ApiError::bad(format!("cursor: {}", e.1)))?);
    }
    Ok((f, limit, p("q").map(str::to_owned)))
}

async fn list(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    d.auth.reader(authorization(&headers))?;
    let (mut filter, limit, search) = list_filter(&d, &query)?;
    let mut conn = d.coordinator.pool().acquire().await?;
    // A search is an id prefix when it looks like one, else (or when that finds nothing) an
    // idempotency key.
    let mut rows = Vec::new();
    if let Some(q) = &search {
        let q = q.trim();
        if let Ok(range) = store::id_range(q) {
            filter.ids = Some(range);
            rows = store::list(&mut conn, &filter, limit).await?;
            filter.ids = None;
        }
        if rows.is_empty() {
            filter.idempotency_key = Some(q.to_owned());
            rows = store::list(&mut conn, &filter, limit).await?;
        }
    } else {
        rows = store::list(&mut conn, &filter, limit).await?;
    }
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id.to_string()))
        .flatten();
    Ok(axum::Json(json!({ "sagas": rows, "next_cursor": next })).into_response())
}

/// Whether `input` would be accepted now, and if not, why (a pure dry run of the engine).
fn availability(d: &Dashboard, stored: &StoredSaga, input: &Input) -> Value {
    let Some(def) = d
        .coordinator
        .catalog()
        .get(&stored.saga.saga_type, stored.saga.definition_version)
    else {
        return json!({"allowed": false, "why": "the catalog does not define this saga's version"});
    };
    match decide(def, &stored.saga, input, d.coordinator.now()) {
        Ok(decision) if decision.changed => json!({"allowed": true, "commands": decision.commands.len()}),
        Ok(_) => json!({"allowed": false, "why": "nothing to do"}),
        Err(EngineError::NotAllowed(why)) => json!({"allowed": false, "why": why}),
        Err(e) => json!({"allowed": false, "why": e.to_string()}),
    }
}

async fn detail(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    d.auth.reader(authorization(&headers))?;
    let id = saga_id(&id)?;
    let mut conn = d.coordinator.pool().acquire().await?;
    let stored = store::load(&mut conn, id)
        .await?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no saga {id}")))?;
    let history = store::history(&mut conn, id).await?;
    let sent = queries::commands_sent(&history);
    let s = &stored.saga;
    let def = d.coordinator.catalog().get(&s.saga_type, s.definition_version);
    let steps: Vec<Value> = s
        .steps
        .iter()
        .enumerate()
        .map(|(i, rec)| {
            let step = def.and_then(|d| d.steps.get(i));
            let phase = |record: &saga_engine::PhaseRecord, phase: &str, command: Option<&str>| {
                let mut v = serde_json::to_value(record).unwrap_or_default();
                v["command_type"] = json!(command.unwrap_or_default());
                v["sent"] = sent.get(&(i as u64, phase.to_owned())).cloned().unwrap_or(Value::Null);
                // While it is retrying, when the phase's time budget runs out.
                let policy = step.map(|s| if phase == "action" { &s.retry } else { &s.compensation_retry });
                if record.status.is_active()
                    && let Some(at) = policy.zip(record.budget_start()).and_then(|(p, start)| p.give_up_after(start))
                {
                    v["gives_up_at"] = json!(at);
                }
                v
            };
            json!({
                "index": i,
                "name": step.map(|s| s.name.as_str()).unwrap_or_default(),
                "participant": step.map(|s| s.participant.as_str()).unwrap_or_default(),
                "pivot": rec.compensation.is_none(),
                "action": phase(&rec.action, "action", step.map(|s| s.action.as_str())),
                "compensation": rec.compensation.as_ref().map(|c| phase(c, "compensation", step.and_then(|s| s.compensation.as_deref()))),
            })
        })
        .collect();
    let replay = match replayability(s) {
        Replayability::Replayable => json!({"allowed": true}),
        Replayability::InProgress => json!({"allowed": false, "why": "compensation is already in progress"}),
        Replayability::AlreadyCompensated => {
            json!({"allowed": false, "why": "the saga is already compensated"})
        }
        Replayability::NotReplayable(why) => json!({"allowed": false, "why": why}),
    };
    let reason = String::new();
    Ok(axum::Json(json!({
        "saga_id": s.id,
        "saga_type": s.saga_type,
        "definition_version": s.definition_version,
        "state": s.state,
        "current_step": s.current_step().and_then(|i| def.and_then(|d| d.steps.get(i))).map(|st| st.name.clone()),
        "failure_reason": s.failure_reason,
        "idempotency_key": stored.idempotency_key,
        "version": stored.version,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "context": s.context,
        "steps": steps,
        "history": history.iter().map(|h| json!({"seq": h.id, "at": h.at, "kind": h.kind, "actor": h.actor, "data": h.data.0})).collect::<Vec<_>>(),
        "actions": {
            "replay": replay,
            "retry": availability(&d, &stored, &Input::RetryStep { step: None, reason: reason.clone() }),
            "abort": availability(&d, &stored, &Input::Abort { reason }),
        },
    }))
    .into_response())
}

async fn events(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let from_query = query.get("token").map(|t| format!("Bearer {t}"));
    let credential = authorization(&headers).map(str::to_owned).or(from_query);
    d.auth.reader(credential.as_deref())?;
    // A first comment sends the response head at once, so the page knows it is live.
    let hello = futures::stream::once(async { Ok(SseEvent::default().comment("connected")) });
    let changes = BroadcastStream::new(d.changes.subscribe()).map(|item| {
        Ok(match item {
            Ok(Event::Changed(c)) => SseEvent::default().event("saga").data(
                json!({
                    "id": c.id, "saga_type": c.saga_type, "state": c.state, "current_step": c.current_step,
                    "failure_reason": c.failure_reason, "version": c.version,
                    "created_at": c.created_at, "updated_at": c.updated_at,
                })
                .to_string(),
            ),
            // Missed notifications: the page re-reads what it shows.
            Ok(Event::Resync) | Err(_) => SseEvent::default().event("resync").data("{}"),
        })
    });
    let stream = hello
        .chain(changes)
        .take_until(d.shutdown.clone().cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// An action's JSON body: `reason` is required; the rest depends on the action.
fn action_body(body: &Bytes) -> Result<(String, Value), ApiError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("body: not a JSON object ({e})")))?;
    let reason = v["reason"].as_str().map(str::trim).unwrap_or_default();
    if reason.is_empty() {
        return Err(ApiError::bad(
            "reason: required; it is recorded in the saga's history",
        ));
    }
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(ApiError::bad(format!(
            "reason: at most {MAX_REASON_CHARS} characters"
        )));
    }
    Ok((reason.to_owned(), v))
}

fn planned(d: &Dashboard, commands: &[saga_engine::Command]) -> Value {
    commands
        .iter()
        .map(|c| {
            json!({"step": c.step, "step_name": c.step_name, "phase": c.phase, "attempt": c.attempt,
                   "command_type": c.command_type, "topic": format!("{}{}", d.coordinator.topic_prefix(), c.participant)})
        })
        .collect()
}

async fn replay(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = d.auth.operator(authorization(&headers))?;
    let id = saga_id(&id)?;
    let (reason, v) = action_body(&body)?;
    let dry_run = v["dry_run"].as_bool().unwrap_or(false);
    let report = d.coordinator.replay(id, &reason, dry_run, &caller.name).await?;
    let outcome = match report.outcome {
        ReplayOutcome::Replayed => "replayed",
        ReplayOutcome::WouldReplay => "would replay",
        ReplayOutcome::AlreadyInProgress => "already in progress",
        ReplayOutcome::AlreadyCompensated => "already compensated",
        ReplayOutcome::NotReplayable(why) => return Err(ApiError(StatusCode::CONFLICT, why)),
    };
    Ok(axum::Json(json!({"outcome": outcome, "commands": planned(&d, &report.commands)})).into_response())
}

async fn retry(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = d.auth.operator(authorization(&headers))?;
    let id = saga_id(&id)?;
    let (reason, v) = action_body(&body)?;
    let step = match &v["step"] {
        Value::Null => None,
        s => Some(
            s.as_u64()
                .ok_or_else(|| ApiError::bad("step: must be a step index (0, 1, …)"))? as usize,
        ),
    };
    let applied = d
        .coordinator
        .act(id, &Input::RetryStep { step, reason }, &caller.name)
        .await?;
    Ok(
        axum::Json(json!({"state": applied.state, "commands": planned(&d, &applied.commands)}))
            .into_response(),
    )
}

async fn abort(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = d.auth.operator(authorization(&headers))?;
    let id = saga_id(&id)?;
    let (reason, _) = action_body(&body)?;
    let applied = d
        .coordinator
        .act(id, &Input::Abort { reason }, &caller.name)
        .await?;
    Ok(
        axum::Json(json!({"state": applied.state, "commands": planned(&d, &applied.commands)}))
            .into_response(),
    )
}
