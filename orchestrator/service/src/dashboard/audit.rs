//! The Consistency page's API: `GET /api/audit` (the last audit's report, or `null`) and
//! `POST /api/audit` (run one now: `{"since_hours": 1-720, "type": "…"}`, both optional). Both are
//! reads, with the same rule as every read.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ApiError, Dashboard, authorization};
use crate::audit::{AuditError, AuditReport, AuditRequest};

/// The longest window the page may ask for, in hours (30 days).
const MAX_HOURS: u64 = 720;

impl From<AuditError> for ApiError {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::InvalidRequest(m) => ApiError::bad(m),
            e @ (AuditError::Ledger(_) | AuditError::Database(_)) => {
                ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            e @ AuditError::Corrupt(..) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

fn report_json(r: Option<&AuditReport>, d: &Dashboard) -> Value {
    json!({
        "report": r,
        "counts": r.map(AuditReport::counts),
        "participants_configured": d.auditor.settings().participants.keys().collect::<Vec<_>>(),
        "periodic_every_secs": d.auditor.settings().interval_secs,
    })
}

pub(super) async fn last(State(d): State<Dashboard>, headers: HeaderMap) -> Result<Response, ApiError> {
    d.auth.reader(authorization(&headers))?;
    let last = d.auditor.last();
    Ok(axum::Json(report_json(last.as_deref(), &d)).into_response())
}

pub(super) async fn run(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    d.auth.reader(authorization(&headers))?;
    let v: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad(format!("the body is not JSON: {e}")))?
    };
    let hours = match &v["since_hours"] {
        Value::Null => 24,
        n => match n.as_u64() {
            Some(h) if (1..=MAX_HOURS).contains(&h) => h,
            _ => {
                return Err(ApiError::bad(format!(
                    "since_hours: a whole number from 1 to {MAX_HOURS}"
                )));
            }
        },
    };
    let saga_type = match &v["type"] {
        Value::Null => None,
        Value::String(t) if t.is_empty() => None,
        Value::String(t) => Some(t.clone()),
        _ => return Err(ApiError::bad("type: a saga type name")),
    };
    let request = AuditRequest {
        since: d.coordinator.now() - chrono::Duration::hours(hours as i64),
        until: None,
        saga_type,
        unfinished_after: None::<Duration>,
    };
    let report = d.auditor.run(&request).await?;
    Ok(axum::Json(report_json(Some(&report), &d)).into_response())
}
