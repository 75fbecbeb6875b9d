//! The saga status dashboard: a single page (HTML, JS and CSS compiled into the binary — no CDN)
//! and the JSON API it uses, on the orchestrator's HTTP port next to `/metrics`.
//!
//! API (every error is a JSON `{"error": "..."}` with the status of its kind, see
//! [`crate::api::error`]):
//! - `GET /api/session` — whether reads need a token, and who the presented token belongs to.
//! - `GET /api/overview` — counts by type and state (running, compensating and failed sagas all;
//!   completed and compensated ones of the last hour), per-minute throughput and step latency over
//!   the last hour, and the sagas needing attention.
//! - `GET /api/sagas?type&state&step&since&until&q&order&limit&cursor` — one page of sagas.
//! - `GET /api/sagas/{id}` — steps with commands and replies, history, and which actions apply.
//! - `GET /api/events` — server-sent events: `saga` for every change, `resync` after a gap.
//! - `POST /api/sagas/{id}/replay|retry|abort` — operator actions (operator token and `reason`).
//! - `GET /api/jobs?limit&cursor`, `GET /api/jobs/{id}?after` (500 results a page), `POST /api/jobs` (a bulk replay
//!   as a durable job), `POST /api/jobs/{id}/cancel` — operator jobs.
//! - `GET /api/audit`, `POST /api/audit` — the last consistency audit's report; run one now.
//!
//! Requests are parsed by the same rules as gRPC's ([`crate::api::request`]): query strings and
//! bodies are typed (unknown parameters and fields are refused), then handed to the same [`Api`].
//! Reads follow the same rule as gRPC (open unless protected); actions need an operator token in
//! `Authorization: Bearer …` (the event stream also takes `?token=`, as browsers cannot set
//! headers on it). An action checks the credential before it reads its body.
//!
//! Layout: this file (router, extractors, session, overview, events); `sagas` (the list, a saga,
//! its actions); `jobs`; `audit` (the Consistency page); `queries` (the overview's aggregates).

mod audit;
mod jobs;
mod queries;
mod sagas;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio_stream::wrappers::BroadcastStream;
use tokio_util::sync::CancellationToken;

use crate::api::request::{self, MAX_PAGE};
use crate::api::{Api, ApiError, ErrorKind};
use crate::auth::Denied;
use crate::watch::{Changes, Event};

/// What the dashboard needs from the orchestrator.
#[derive(Clone)]
pub(crate) struct Dashboard {
    pub(crate) api: Api,
    pub(crate) changes: Changes,
    /// Ends the event streams, so an open page never holds up a shutdown.
    pub(crate) shutdown: CancellationToken,
    /// The consistency audit (the Consistency page).
    pub(crate) auditor: Arc<crate::audit::Auditor>,
}

pub(crate) fn router(d: Dashboard) -> Router {
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
        .route("/api/sagas", get(sagas::list))
        .route("/api/sagas/{id}", get(sagas::detail))
        .route("/api/events", get(events))
        .route("/api/sagas/{id}/replay", post(sagas::replay))
        .route("/api/sagas/{id}/retry", post(sagas::retry))
        .route("/api/sagas/{id}/abort", post(sagas::abort))
        .route("/api/sagas/{id}/approve", post(sagas::approve))
        .route("/api/sagas/{id}/reject", post(sagas::reject))
        .route("/api/sagas/{id}/signal", post(sagas::signal))
        .route("/api/sagas/{id}/hold", post(sagas::hold))
        .route("/api/sagas/{id}/release", post(sagas::release))
        .route("/api/definitions", get(sagas::definitions))
        .route(saga_proto::ledger::REACH_PATH, get(sagas::reach))
        .route("/api/jobs", get(jobs::list).post(jobs::start))
        .route("/api/jobs/{id}", get(jobs::detail))
        .route("/api/jobs/{id}/cancel", post(jobs::cancel))
        .route("/api/jobs/{id}/pause", post(jobs::pause))
        .route("/api/jobs/{id}/resume", post(jobs::resume))
        .route("/api/bulk/plan", post(jobs::plan_bulk))
        .route("/api/bulk", post(jobs::start_bulk))
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

async fn unknown_api(Path(rest): Path<String>) -> ApiError {
    ApiError::not_found(format!("no API endpoint /api/{rest}"))
}

/// The `Authorization` header's value (a non-text value reads as a malformed one).
fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""))
}

/// A JSON body of type `T`; anything else (not JSON, a field of the wrong type, an unknown field)
/// is refused as an invalid argument naming the problem. Taken as `Result<Body<T>, ApiError>` by
/// actions, so that the credential is checked first.
struct Body<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::invalid(format!("body: {e}")))?;
        // An empty body is an empty object: every field then takes its default.
        let bytes: &[u8] = if bytes.is_empty() { b"{}" } else { &bytes };
        serde_json::from_slice(bytes)
            .map(Body)
            .map_err(|e| ApiError::invalid(format!("body: {e}")))
    }
}

/// A query string of type `T` (unknown parameters are refused, so a typo is an error rather than
/// ignored).
struct Params<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(t)| Params(t))
            .map_err(|e| {
                let text = e.body_text();
                let why = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text);
                ApiError::invalid(unknown_parameter(why).unwrap_or_else(|| why.to_owned()))
            })
    }
}

/// serde's "unknown field `x`, expected one of `a`, `b`" in the words of a query string:
/// "unknown parameter `x` (known: a, b)".
fn unknown_parameter(why: &str) -> Option<String> {
    // (serde_path_to_error puts the parameter's name in front: "colour: unknown field …".)
    let rest = why.split_once("unknown field ")?.1;
    let (name, known) = rest.split_once(", expected one of ")?;
    Some(format!(
        "unknown parameter {name} (known: {})",
        known.replace('`', "")
    ))
}

/// `Some` for a query parameter given with a value (`?type=` is the same as leaving it out).
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|v| !v.is_empty())
}

/// The `limit` parameter: a page size by the shared rules.
fn page_limit(raw: Option<&str>) -> Result<i64, ApiError> {
    raw.map(|l| {
        l.parse::<u32>()
            .map_err(|_| ApiError::invalid(format!("`{l}` is not a number from 1 to {MAX_PAGE}")))
    })
    .transpose()
    .and_then(request::page_size)
    .map_err(|e| e.in_field("limit"))
}

async fn session(State(d): State<Dashboard>, headers: HeaderMap) -> Result<Response, ApiError> {
    let auth = d.api.auth();
    let identity = match (auth.operator(authorization(&headers)), authorization(&headers)) {
        (Ok(c), _) => json!({"name": c.name, "role": "operator"}),
        (Err(Denied::PermissionDenied(_)), _) => json!({"role": "reader"}),
        (Err(_), Some(_)) => {
            return Err(ApiError::new(
                ErrorKind::Unauthenticated,
                "this token is not a known credential",
            ));
        }
        (Err(_), None) => Value::Null,
    };
    Ok(axum::Json(json!({
        "reads_protected": auth.reads_protected(),
        "identity": identity,
        "saga_types": d.api.coordinator().catalog().names(),
    }))
    .into_response())
}

async fn overview(State(d): State<Dashboard>, headers: HeaderMap) -> Result<Response, ApiError> {
    d.api.reader(authorization(&headers))?;
    let coordinator = d.api.coordinator();
    let now = coordinator.now();
    let pool = coordinator.pool();
    // Independent queries, each on a connection of its own: the page waits for the slowest only.
    let (mut counts, (per_minute, finished), latency, attention) = tokio::try_join!(
        async { queries::unfinished(&mut *pool.acquire().await?).await },
        async { queries::last_hour(&mut *pool.acquire().await?, now).await },
        async { queries::step_latency(&mut *pool.acquire().await?, now, coordinator.catalog()).await },
        async { queries::needs_attention(&mut *pool.acquire().await?, now).await },
    )?;
    for (saga_type, states) in finished {
        counts.entry(saga_type).or_default().extend(states);
    }
    Ok(axum::Json(json!({
        "generated_at": now,
        "saga_types": coordinator.catalog().names(),
        // Running, compensating and failed: all of them; completed and compensated: in the last hour.
        "counts": counts,
        "per_minute": per_minute,
        "step_latency": latency,
        "latency_sample": queries::LATENCY_SAMPLE,
        "attention": attention,
    }))
    .into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EventParams {
    token: Option<String>,
}

async fn events(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Params(query): Params<EventParams>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let from_query = query.token.map(|t| format!("Bearer {t}"));
    let credential = authorization(&headers).map(str::to_owned).or(from_query);
    d.api.reader(credential.as_deref())?;
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
