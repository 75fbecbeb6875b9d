//! The Consistency page's API: `GET /api/audit` (the last audit's report, or `null`) and
//! `POST /api/audit` (run one now: `{"since_hours": 1-720, "type": "…"}`, both optional). Both are
//! reads, with the same rule as every read.

use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Body, Dashboard, authorization, given};
use crate::api::ApiError;
use crate::audit::{AuditReport, AuditRequest};

/// The longest window the page may ask for, in hours (30 days).
const MAX_HOURS: u64 = 720;

fn report_json(r: Option<&AuditReport>, d: &Dashboard) -> Value {
    json!({
        "report": r,
        "counts": r.map(AuditReport::counts),
        "participants_configured": d.auditor.settings().participants.keys().collect::<Vec<_>>(),
        "periodic_every_secs": d.auditor.settings().interval_secs,
    })
}

pub(super) async fn last(State(d): State<Dashboard>, headers: HeaderMap) -> Result<Response, ApiError> {
    d.api.reader(authorization(&headers))?;
    let last = d.auditor.last();
    Ok(axum::Json(report_json(last.as_deref(), &d)).into_response())
}

/// `POST /api/audit`'s body (both fields optional).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RunBody {
    /// The window: sagas created in the last this many hours (24 when left out).
    since_hours: Option<u64>,
    /// Only sagas of this type.
    #[serde(rename = "type")]
    saga_type: Option<String>,
}

pub(super) async fn run(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    body: Result<Body<RunBody>, ApiError>,
) -> Result<Response, ApiError> {
    d.api.reader(authorization(&headers))?;
    let Body(b) = body?;
    let hours = match b.since_hours {
        None => 24,
        Some(h) if (1..=MAX_HOURS).contains(&h) => h,
        Some(_) => {
            return Err(ApiError::invalid(format!(
                "since_hours: a whole number from 1 to {MAX_HOURS}"
            )));
        }
    };
    let request = AuditRequest {
        since: d.api.coordinator().now() - chrono::Duration::hours(hours as i64),
        until: None,
        saga_type: given(&b.saga_type).map(str::to_owned),
        unfinished_after: None::<Duration>,
    };
    let report = d.auditor.run(&request).await?;
    Ok(axum::Json(report_json(Some(&report), &d)).into_response())
}
