//! Sagas over HTTP: one page of the list, one saga in full, and the operator actions on it.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use saga_engine::{
    EngineError, Input, Replayability, SagaDefinition, SagaState, StepKind, decide, replayability,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Body, Dashboard, Params, authorization, given, page_limit};
use crate::api::request::{
    self, AbortRequest, ApprovalRequest, HoldRequest, ListRequest, ReplayRequest, RetryRequest, SignalRequest,
};
use crate::api::{ApiError, planned};
use crate::store::{ListFilter, StoredSaga};

/// `GET /api/sagas`'s query string.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListParams {
    #[serde(rename = "type")]
    saga_type: Option<String>,
    state: Option<String>,
    step: Option<String>,
    since: Option<String>,
    until: Option<String>,
    q: Option<String>,
    order: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

fn time(name: &str, raw: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    raw.map(|t| {
        DateTime::parse_from_rfc3339(t)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                ApiError::invalid(format!(
                    "{name}: `{t}` is not an RFC 3339 time like 2026-11-21T10:00:00Z"
                ))
            })
    })
    .transpose()
}

impl ListParams {
    /// The list request, by the shared rules, naming the parameter at fault.
    fn parse(&self, d: &Dashboard) -> Result<ListRequest, ApiError> {
        let catalog = d.api.coordinator().catalog();
        let named = |field: &'static str| move |e: ApiError| e.in_field(field);
        let state = given(&self.state)
            .map(|s| {
                s.parse::<SagaState>().map_err(|_| {
                    ApiError::invalid(format!(
                        "state: `{s}` is not one of running, compensating, completed, compensated, failed"
                    ))
                })
            })
            .transpose()?;
        let limit = page_limit(given(&self.limit))?;
        let filter = ListFilter {
            saga_type: given(&self.saga_type)
                .map(|t| request::saga_type(catalog, t))
                .transpose()
                .map_err(named("type"))?,
            state,
            current_step: given(&self.step)
                .map(request::step_name)
                .transpose()
                .map_err(named("step"))?,
            created_after: time("since", given(&self.since))?,
            created_before: time("until", given(&self.until))?,
            ascending: match given(&self.order) {
                None | Some("newest") => false,
                Some("oldest") => true,
                Some(o) => return Err(ApiError::invalid(format!("order: `{o}` is not newest or oldest"))),
            },
            cursor: given(&self.cursor)
                .map(|c| request::saga_id("cursor", c))
                .transpose()?,
            ..ListFilter::default()
        };
        Ok(ListRequest {
            filter,
            page: limit,
            search: given(&self.q).map(str::to_owned),
        })
    }
}

pub(super) async fn list(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Params(params): Params<ListParams>,
) -> Result<Response, ApiError> {
    d.api.reader(authorization(&headers))?;
    let request = params.parse(&d)?;
    let rows = d.api.list(&request).await?;
    let next = (rows.len() as i64 == request.page)
        .then(|| rows.last().map(|r| r.id.to_string()))
        .flatten();
    Ok(axum::Json(json!({ "sagas": rows, "next_cursor": next })).into_response())
}

/// Whether `input` would be accepted now, and if not, why (a pure dry run of the engine).
fn availability(d: &Dashboard, stored: &StoredSaga, input: &Input) -> Value {
    let coordinator = d.api.coordinator();
    let Some(def) = coordinator
        .catalog()
        .get(&stored.saga.saga_type, stored.saga.definition_version)
    else {
        return json!({"allowed": false, "why": "the catalog does not define this saga's version"});
    };
    match decide(def, &stored.saga, input, coordinator.now()) {
        Ok(decision) if decision.changed => json!({"allowed": true, "commands": decision.commands.len()}),
        Ok(_) => json!({"allowed": false, "why": "nothing to do"}),
        Err(EngineError::NotAllowed(why) | EngineError::Invalid(why)) => {
            json!({"allowed": false, "why": why})
        }
        Err(e) => json!({"allowed": false, "why": e.to_string()}),
    }
}

pub(super) async fn detail(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    d.api.reader(authorization(&headers))?;
    let id = request::saga_id("saga_id", &id)?;
    let stored = d.api.saga(id).await?;
    let history = d.api.history(id).await?;
    let (keys, hold) = d.api.lifecycle(id).await?;
    let sent = super::queries::commands_sent(&history);
    let s = &stored.saga;
    let def = d
        .api
        .coordinator()
        .catalog()
        .get(&s.saga_type, s.definition_version);
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
            let mut shape = step.map(|st| step_shape(def.map(AsRef::as_ref), i, st)).unwrap_or_else(|| json!({}));
            shape["child_saga_id"] = json!(rec.child);
            json!({
                "index": i,
                "name": step.map(|s| s.name.as_str()).unwrap_or_default(),
                "participant": step.map(|s| s.participant.as_str()).unwrap_or_default(),
                "pivot": step.is_some_and(|s| s.is_pivot()),
                "shape": shape,
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
        "parent": s.parent.map(|p| json!({"saga_id": p.saga, "step": p.step})),
        "search_keys": keys.iter().map(|(name, value)| json!({"name": name, "value": value})).collect::<Vec<_>>(),
        "hold": hold,
        "steps": steps,
        "history": history.iter().map(|h| json!({"seq": h.id, "at": h.at, "kind": h.kind, "actor": h.actor, "data": h.data.0})).collect::<Vec<_>>(),
        "actions": {
            "replay": replay,
            "retry": availability(&d, &stored, &Input::RetryStep { step: None, reason: reason.clone() }),
            "abort": availability(&d, &stored, &Input::Abort { reason: reason.clone() }),
            "approve": availability(&d, &stored, &Input::Approval { step: None, approved: true, by: String::new(), reason }),
            "hold": if hold.is_some() { json!({"allowed": false, "why": "the saga is held"}) } else { json!({"allowed": true}) },
            "release": if hold.is_some() { json!({"allowed": true}) } else { json!({"allowed": false, "why": "the saga is not held"}) },
        },
    }))
    .into_response())
}

/// `POST /api/sagas/{id}/replay`'s body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplayBody {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    dry_run: bool,
}

pub(super) async fn replay(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Body<ReplayBody>, ApiError>,
) -> Result<Response, ApiError> {
    let caller = d.api.operator(authorization(&headers))?;
    let Body(b) = body?;
    let report = d
        .api
        .replay(&caller, ReplayRequest::parse(&id, &b.reason, b.dry_run)?)
        .await?;
    let commands = planned(&report.commands, d.api.coordinator().topic_prefix());
    let outcome = report.outcome.as_str().replace('_', " ");
    Ok(axum::Json(json!({"outcome": outcome, "commands": commands})).into_response())
}

/// `POST /api/sagas/{id}/retry`'s body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RetryBody {
    #[serde(default)]
    reason: String,
    /// The step to retry; the one the saga stopped at when left out.
    step: Option<u32>,
}

pub(super) async fn retry(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Body<RetryBody>, ApiError>,
) -> Result<Response, ApiError> {
    let caller = d.api.operator(authorization(&headers))?;
    let Body(b) = body?;
    let applied = d
        .api
        .retry(&caller, RetryRequest::parse(&id, b.step, &b.reason)?)
        .await?;
    acted(&d, &applied)
}

/// `POST /api/sagas/{id}/abort`'s body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AbortBody {
    #[serde(default)]
    reason: String,
}

pub(super) async fn abort(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Body<AbortBody>, ApiError>,
) -> Result<Response, ApiError> {
    let caller = d.api.operator(authorization(&headers))?;
    let Body(b) = body?;
    let applied = d.api.abort(&caller, AbortRequest::parse(&id, &b.reason)?).await?;
    acted(&d, &applied)
}

/// `POST /api/sagas/{id}/hold`: places a legal hold (the body is an abort's: a reason).
pub(super) async fn hold(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Body<AbortBody>, ApiError>,
) -> Result<Response, ApiError> {
    let caller = d.api.operator(authorization(&headers))?;
    let Body(b) = body?;
    let (hold, changed) = d.api.hold(&caller, HoldRequest::parse(&id, &b.reason)?).await?;
    let outcome = if changed { "held" } else { "already held" };
    Ok(axum::Json(json!({"outcome": outcome, "hold": hold})).into_response())
}

/// `POST /api/sagas/{id}/release`: releases the saga's legal hold.
pub(super) async fn release(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Body<AbortBody>, ApiError>,
) -> Result<Response, ApiError> {
    let caller = d.api.operator(authorization(&headers))?;
    let Body(b) = body?;
    let hold = d
        .api
        .release(&caller, HoldRequest::parse(&id, &b.reason)?)
        .await?;
    Ok(axum::Json(json!({"outcome": "released", "hold": hold})).into_response())
}

fn acted(d: &Dashboard, applied: &crate::coordinator::Applied) -> Result<Response, ApiError> {
    let commands = planned(&applied.commands, d.api.coordinator().topic_prefix());
    Ok(axum::Json(json!({"state": applied.state, "commands": commands})).into_response())
}

/// How a step of a definition is drawn: its kind, its stage (steps of one stage run side by side),
/// its condition, what a wait waits for, the child saga type.
pub(super) fn step_shape(
    def: Option<&SagaDefinition>,
    index: usize,
    step: &saga_engine::StepDefinition,
) -> Value {
    let stage = def.and_then(|d| d.stages().iter().position(|s| s.contains(&index)));
    let (kind, waits_for, child_type) = match step.kind() {
        StepKind::Participant => ("participant", None, None),
        StepKind::Wait(w) => (
            "wait",
            Some(
                w.signal
                    .clone()
                    .map_or_else(|| "approval".to_owned(), |s| format!("signal {s}")),
            ),
            None,
        ),
        StepKind::Child(c) => ("child", None, Some(c.saga.clone())),
    };
    json!({
        "kind": kind,
        "stage": stage,
        "group": step.group,
        "when": step.when,
        "waits_for": waits_for,
        "timeout_ms": step.wait.as_ref().map(|w| w.timeout_ms),
        "on_timeout": step.wait.as_ref().map(|w| w.on_timeout),
        "child_saga_type": child_type,
        "pivot": step.is_pivot(),
        "action": step.action,
        "compensation": step.compensation,
        "participant": step.participant,
    })
}

/// `POST /api/sagas/{id}/approve` and `…/reject`'s body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ApprovalBody {
    #[serde(default)]
    reason: String,
    /// The approval step; needed only when several wait at once.
    step: Option<u32>,
}

async fn decide_approval(
    d: Dashboard,
    headers: HeaderMap,
    id: String,
    approved: bool,
    body: Result<Body<ApprovalBody>, ApiError>,
) -> Result<Response, ApiError> {
    let caller = d.api.operator(authorization(&headers))?;
    let Body(b) = body?;
    let applied = d
        .api
        .approval(&caller, ApprovalRequest::parse(&id, approved, b.step, &b.reason)?)
        .await?;
    acted(&d, &applied)
}

pub(super) async fn approve(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Body<ApprovalBody>, ApiError>,
) -> Result<Response, ApiError> {
    decide_approval(d, headers, id, true, body).await
}

pub(super) async fn reject(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Body<ApprovalBody>, ApiError>,
) -> Result<Response, ApiError> {
    decide_approval(d, headers, id, false, body).await
}

/// `POST /api/sagas/{id}/signal`'s body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SignalBody {
    #[serde(default)]
    signal: String,
    /// A JSON object; `{}` when left out.
    #[serde(default)]
    payload: Option<Value>,
    #[serde(default)]
    idempotency_key: String,
}

/// Like gRPC's SignalSaga: no operator credential (signals come from services).
pub(super) async fn signal(
    State(d): State<Dashboard>,
    Path(id): Path<String>,
    body: Result<Body<SignalBody>, ApiError>,
) -> Result<Response, ApiError> {
    let Body(b) = body?;
    let payload = b.payload.map(|p| p.to_string()).unwrap_or_default();
    let applied = d
        .api
        .signal(SignalRequest::parse(
            &id,
            &b.signal,
            &payload,
            &b.idempotency_key,
        )?)
        .await?;
    acted(&d, &applied)
}

/// `GET /api/definitions`: every version of every saga type, with its steps drawn as stages.
pub(super) async fn definitions(
    State(d): State<Dashboard>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    d.api.reader(authorization(&headers))?;
    let catalog = d.api.coordinator().catalog();
    let mut all: Vec<&SagaDefinition> = catalog.all().collect();
    all.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
    let defs: Vec<Value> = all
        .into_iter()
        .map(|def| {
            json!({
                "name": def.name,
                "version": def.version,
                "description": def.description,
                "latest": catalog.latest(&def.name).is_some_and(|l| l.version == def.version),
                "steps": def.steps.iter().enumerate().map(|(i, st)| {
                    let mut shape = step_shape(Some(def), i, st);
                    shape["index"] = json!(i);
                    shape["name"] = json!(st.name);
                    shape
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(axum::Json(json!({ "definitions": defs })).into_response())
}

/// `GET /api/participants/{topic}/reach`: how long after a saga starts this orchestrator may
/// still send commands to the participant consuming `topic` (a participant checks its dedup
/// window against it before it prunes; see `saga_proto::ledger::Reach`).
pub(super) async fn reach(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(topic): Path<String>,
) -> Result<Response, ApiError> {
    d.api.reader(authorization(&headers))?;
    // A Kafka topic name: at most 249 of a-z, A-Z, 0-9, `.`, `_` and `-`.
    let valid = !topic.is_empty()
        && topic.len() <= 249
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !valid {
        return Err(ApiError::invalid(format!(
            "topic: `{}` is not a command topic name (1-249 of a-z, A-Z, 0-9, `.`, `_`, `-`)",
            topic.chars().take(60).collect::<String>()
        )));
    }
    Ok(axum::Json(d.api.coordinator().catalog().reach(&topic)).into_response())
}
