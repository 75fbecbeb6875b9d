//! Operator jobs over HTTP: the list, one job with its results, a bulk replay started as a job,
//! bulk operations by query (planned, then started), and pausing, resuming or cancelling one.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use saga_engine::SagaState;
use serde::Deserialize;
use serde_json::json;

use super::{Body, Dashboard, Params, authorization, given, page_limit};
use crate::api::request::{self, BulkJobRequest, BulkReplayRequest, CancelJobRequest, MAX_PAGE};
use crate::api::{ApiError, Planned};
use crate::jobs::JobKind;
use crate::store::ListFilter;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListParams {
    limit: Option<String>,
    cursor: Option<String>,
}

pub(super) async fn list(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Params(p): Params<ListParams>,
) -> Result<Response, ApiError> {
    d.api.reader(authorization(&headers))?;
    let page = page_limit(given(&p.limit))?;
    let before = given(&p.cursor)
        .map(|c| request::job_id("cursor", c))
        .transpose()?;
    let jobs = d.api.jobs(before, page).await?;
    let next = (jobs.len() as i64 == page)
        .then(|| jobs.last().map(|j| j.id.to_string()))
        .flatten();
    Ok(axum::Json(json!({ "jobs": jobs, "next_cursor": next })).into_response())
}

/// `GET /api/jobs/{id}`'s query: the results after a sequence number (a page holds the most
/// results one may).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DetailParams {
    after: Option<String>,
}

pub(super) async fn detail(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Params(p): Params<DetailParams>,
) -> Result<Response, ApiError> {
    d.api.reader(authorization(&headers))?;
    let id = request::job_id("job_id", &id)?;
    let after = given(&p.after)
        .map(|a| {
            a.parse::<i32>()
                .ok()
                .filter(|a| *a >= 0)
                .ok_or_else(|| ApiError::invalid(format!("after: `{a}` is not a result's sequence number")))
        })
        .transpose()?
        .unwrap_or(0);
    let job = d.api.job(id).await?;
    let items = d.api.job_items(id, after, i64::from(MAX_PAGE)).await?;
    let items: Vec<_> = items
        .iter()
        .map(|i| {
            let commands: Vec<Planned> = serde_json::from_value(i.commands.0.clone()).unwrap_or_default();
            json!({"seq": i.seq, "saga_id": i.saga_id, "outcome": i.outcome, "detail": i.detail,
                   "commands": commands, "at": i.at})
        })
        .collect();
    Ok(axum::Json(json!({ "job": job, "items": items })).into_response())
}

/// `POST /api/jobs`'s body: a bulk compensation replay of failed sagas.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StartBody {
    #[serde(default)]
    reason: String,
    #[serde(rename = "type")]
    saga_type: Option<String>,
    step: Option<String>,
    /// Failed sagas created at or after this time (RFC 3339).
    since: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
    rate_per_second: Option<f64>,
    limit: Option<u32>,
}

pub(super) async fn start(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    body: Result<Body<StartBody>, ApiError>,
) -> Result<Response, ApiError> {
    let caller = d.api.operator(authorization(&headers))?;
    let Body(b) = body?;
    let catalog = d.api.coordinator().catalog();
    let filter = ListFilter {
        saga_type: given(&b.saga_type)
            .map(|t| request::saga_type(catalog, t))
            .transpose()
            .map_err(|e| e.in_field("type"))?,
        state: Some(SagaState::Failed),
        current_step: given(&b.step)
            .map(request::step_name)
            .transpose()
            .map_err(|e| e.in_field("step"))?,
        created_after: b.since,
        created_before: b.until,
        ..ListFilter::default()
    };
    let bulk = BulkReplayRequest::parse(
        filter,
        &b.reason,
        b.rate_per_second,
        b.limit,
        false,
        d.api.operator_settings(),
    )?;
    let job = d.api.start_bulk_replay(&caller, bulk).await?;
    Ok((StatusCode::CREATED, axum::Json(json!({ "job": job }))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CancelBody {
    #[serde(default)]
    reason: String,
}

pub(super) async fn cancel(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Body<CancelBody>, ApiError>,
) -> Result<Response, ApiError> {
    let caller = d.api.operator(authorization(&headers))?;
    let Body(b) = body?;
    let job = d
        .api
        .cancel_job(&caller, CancelJobRequest::parse(&id, &b.reason)?)
        .await?;
    Ok(axum::Json(json!({ "job": job })).into_response())
}

/// `POST /api/jobs/{id}/pause`.
pub(super) async fn pause(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Body<CancelBody>, ApiError>,
) -> Result<Response, ApiError> {
    pause_or_resume(d, headers, id, body, true).await
}

/// `POST /api/jobs/{id}/resume`.
pub(super) async fn resume(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Body<CancelBody>, ApiError>,
) -> Result<Response, ApiError> {
    pause_or_resume(d, headers, id, body, false).await
}

async fn pause_or_resume(
    d: Dashboard,
    headers: HeaderMap,
    id: String,
    body: Result<Body<CancelBody>, ApiError>,
    pause: bool,
) -> Result<Response, ApiError> {
    let caller = d.api.operator(authorization(&headers))?;
    let Body(b) = body?;
    let job = d
        .api
        .pause_job(&caller, CancelJobRequest::parse(&id, &b.reason)?, pause)
        .await?;
    Ok(axum::Json(json!({ "job": job })).into_response())
}

/// `POST /api/bulk/plan` and `POST /api/bulk`'s body: an action and the sagas it is for.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BulkBody {
    /// `replay_compensations`, `abort`, `retry`, `hold` or `release`.
    action: String,
    #[serde(default)]
    reason: String,
    #[serde(rename = "type")]
    saga_type: Option<String>,
    state: Option<String>,
    step: Option<String>,
    version: Option<u32>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
    /// A business key, `name=value`.
    key: Option<String>,
    /// Text of the failure reason.
    failure: Option<String>,
    rate_per_second: Option<f64>,
    limit: Option<u32>,
    #[serde(default)]
    confirmed: bool,
}

impl BulkBody {
    fn parse(&self, d: &Dashboard) -> Result<BulkJobRequest, ApiError> {
        let catalog = d.api.coordinator().catalog();
        let saga_type = given(&self.saga_type)
            .map(|t| request::saga_type(catalog, t))
            .transpose()
            .map_err(|e| e.in_field("type"))?;
        let keys = given(&self.key)
            .map(|k| {
                let (name, value) = k
                    .split_once('=')
                    .ok_or_else(|| ApiError::invalid(format!("`{k}` is not name=value")))?;
                request::key_filter(
                    catalog,
                    saga_type.as_deref(),
                    Some(name.trim()),
                    value.trim(),
                    false,
                )
            })
            .transpose()
            .map_err(|e| e.in_field("key"))?;
        let state = given(&self.state)
            .map(|s| {
                s.parse::<SagaState>()
                    .map_err(|_| ApiError::invalid(format!("state: `{s}` is not a saga state")))
            })
            .transpose()?;
        let filter = ListFilter {
            saga_type,
            state,
            current_step: given(&self.step)
                .map(request::step_name)
                .transpose()
                .map_err(|e| e.in_field("step"))?,
            definition_version: self.version,
            created_after: self.since,
            created_before: self.until,
            failure_contains: given(&self.failure)
                .map(request::failure_text)
                .transpose()
                .map_err(|e| e.in_field("failure"))?,
            keys: keys.into_iter().collect(),
            ..ListFilter::default()
        };
        BulkJobRequest::parse(
            JobKind::parse(&self.action),
            filter,
            &self.reason,
            self.rate_per_second,
            self.limit,
            self.confirmed,
            d.api.operator_settings(),
        )
    }
}

/// `POST /api/bulk/plan`: the dry run — the count (up to the limit) and a sample.
pub(super) async fn plan_bulk(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    body: Result<Body<BulkBody>, ApiError>,
) -> Result<Response, ApiError> {
    d.api.operator(authorization(&headers))?;
    let Body(b) = body?;
    let plan = d.api.plan_bulk(&b.parse(&d)?).await?;
    Ok(axum::Json(json!({ "plan": plan })).into_response())
}

/// `POST /api/bulk`: starts the operation as a job (`confirmed` must be true).
pub(super) async fn start_bulk(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    body: Result<Body<BulkBody>, ApiError>,
) -> Result<Response, ApiError> {
    let caller = d.api.operator(authorization(&headers))?;
    let Body(b) = body?;
    let job = d.api.start_bulk(&caller, b.parse(&d)?).await?;
    Ok((StatusCode::CREATED, axum::Json(json!({ "job": job }))).into_response())
}
