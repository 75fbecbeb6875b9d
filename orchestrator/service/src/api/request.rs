//! Requests, parsed once for every transport ("parse, don't validate"): gRPC messages and HTTP
//! paths, queries and bodies are turned into these types by the same functions, so a rule (the
//! length of a reason, a known saga type, the bounds of a page or a rate) is written once and
//! holds for both. A value of one of these types is valid; the operations take nothing else.
//!
//! The pieces report errors without a field name; each transport names the field as its callers
//! know it (`filter.saga_type` over gRPC, `type` in the dashboard's query) with
//! [`ApiError::in_field`].

use saga_engine::{SagaId, SagaState};
use uuid::Uuid;

use super::error::ApiError;
use crate::catalog::Catalog;
use crate::jobs::JobKind;
use crate::settings::OperatorSettings;
use crate::store::{self, KeyFilter, ListFilter};

/// Longest accepted operator reason, in characters.
pub(crate) const MAX_REASON_CHARS: usize = 500;
/// Longest step name a filter accepts (definitions' names are far shorter).
pub(crate) const MAX_STEP_NAME_CHARS: usize = 64;
/// Sagas a page holds when the request does not say.
pub(crate) const DEFAULT_PAGE: u32 = 50;
/// Most sagas one page may hold.
pub(crate) const MAX_PAGE: u32 = 500;

/// An operator's reason: required, at most [`MAX_REASON_CHARS`], trimmed; recorded in history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reason(String);

impl Reason {
    pub(crate) fn parse(raw: &str) -> Result<Self, ApiError> {
        let r = raw.trim();
        if r.is_empty() {
            return Err(ApiError::invalid(
                "reason: required; it is recorded in the saga's history",
            ));
        }
        if r.chars().count() > MAX_REASON_CHARS {
            return Err(ApiError::invalid(format!(
                "reason: at most {MAX_REASON_CHARS} characters"
            )));
        }
        Ok(Self(r.to_owned()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// A saga id named by `field` (`saga_id`, `cursor`, …): required, a UUID.
pub(crate) fn saga_id(field: &str, raw: &str) -> Result<SagaId, ApiError> {
    if raw.trim().is_empty() {
        return Err(ApiError::invalid(format!("{field}: required")));
    }
    raw.parse::<SagaId>()
        .map_err(|e| ApiError::invalid(format!("{field}: {e}")))
}

/// A job id named by `field`: required, a UUID.
pub(crate) fn job_id(field: &str, raw: &str) -> Result<Uuid, ApiError> {
    saga_id(field, raw)
        .map(|id| id.as_uuid())
        .map_err(|e| ApiError::invalid(e.message.replace("saga id", "job id")))
}

/// How many entries a page holds: 1 to [`MAX_PAGE`], [`DEFAULT_PAGE`] when not given.
pub(crate) fn page_size(raw: Option<u32>) -> Result<i64, ApiError> {
    match raw {
        None => Ok(i64::from(DEFAULT_PAGE)),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(i64::from(n)),
        Some(n) => Err(ApiError::invalid(format!(
            "`{n}` is not a number from 1 to {MAX_PAGE}"
        ))),
    }
}

/// A saga type the catalog defines (a typo is an error, not an empty result).
pub(crate) fn saga_type(catalog: &Catalog, raw: &str) -> Result<String, ApiError> {
    if catalog.latest(raw).is_none() {
        return Err(ApiError::invalid(format!(
            "unknown saga type `{raw}` (known: {})",
            catalog.names().join(", ")
        )));
    }
    Ok(raw.to_owned())
}

/// A step name to filter on.
pub(crate) fn step_name(raw: &str) -> Result<String, ApiError> {
    if raw.chars().count() > MAX_STEP_NAME_CHARS {
        return Err(ApiError::invalid(format!(
            "at most {MAX_STEP_NAME_CHARS} characters"
        )));
    }
    Ok(raw.to_owned())
}

/// Longest failure-reason text a filter looks for.
pub(crate) const MAX_FAILURE_TEXT_CHARS: usize = 200;

/// Text to find in failure reasons: non-blank, bounded.
pub(crate) fn failure_text(raw: &str) -> Result<String, ApiError> {
    let text = raw.trim();
    if text.is_empty() || text.chars().count() > MAX_FAILURE_TEXT_CHARS {
        return Err(ApiError::invalid(format!(
            "1 to {MAX_FAILURE_TEXT_CHARS} characters of the failure reason"
        )));
    }
    Ok(text.to_owned())
}

/// Most key conditions one filter may hold.
pub(crate) const MAX_KEY_FILTERS: usize = 8;

/// A search key condition: `name` must be a search key of `saga_type` (of any type when no type
/// is given), `value` non-empty and no longer than an indexed value can be.
pub(crate) fn key_filter(
    catalog: &Catalog,
    saga_type: Option<&str>,
    name: Option<&str>,
    value: &str,
    prefix: bool,
) -> Result<KeyFilter, ApiError> {
    if let Some(name) = name {
        let keys = catalog.search_keys(saga_type);
        if !keys.contains(name) {
            let whose = saga_type.map_or_else(|| "any saga type".to_owned(), |t| format!("saga type `{t}`"));
            let known = if keys.is_empty() {
                "none".to_owned()
            } else {
                keys.into_iter().collect::<Vec<_>>().join(", ")
            };
            return Err(ApiError::invalid(format!(
                "`{name}` is not a search key of {whose} (search keys: {known})"
            )));
        }
    }
    let what = name.map_or_else(|| "a key value".to_owned(), |n| format!("the value of `{n}`"));
    if value.is_empty() {
        return Err(ApiError::invalid(format!("{what} is empty")));
    }
    if value.len() > saga_engine::MAX_SEARCH_KEY_BYTES {
        return Err(ApiError::invalid(format!(
            "{what} is {} bytes, over the {} byte limit of indexed values",
            value.len(),
            saga_engine::MAX_SEARCH_KEY_BYTES
        )));
    }
    Ok(KeyFilter {
        name: name.map(str::to_owned),
        value: value.to_owned(),
        prefix,
    })
}

/// The ids starting with a prefix of hex digits.
pub(crate) fn id_prefix(raw: &str) -> Result<(Uuid, Uuid), ApiError> {
    store::id_range(raw).map_err(ApiError::invalid)
}

/// One page of sagas: which, how many, and where the previous page ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ListRequest {
    pub(crate) filter: ListFilter,
    pub(crate) page: i64,
    /// The dashboard's search box: `name=value` for a named search key; else an id prefix when
    /// it looks like one, else (or when that finds nothing) an idempotency key, else the value of
    /// any search key.
    pub(crate) search: Option<String>,
}

/// Replay the compensation of one saga.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ReplayRequest {
    pub(crate) saga: SagaId,
    pub(crate) reason: Reason,
    pub(crate) dry_run: bool,
}

impl ReplayRequest {
    pub(crate) fn parse(saga: &str, reason: &str, dry_run: bool) -> Result<Self, ApiError> {
        Ok(Self {
            saga: saga_id("saga_id", saga)?,
            reason: Reason::parse(reason)?,
            dry_run,
        })
    }
}

/// Send a forward step again: `step`, or the one the saga stopped at.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RetryRequest {
    pub(crate) saga: SagaId,
    pub(crate) step: Option<usize>,
    pub(crate) reason: Reason,
}

impl RetryRequest {
    pub(crate) fn parse(saga: &str, step: Option<u32>, reason: &str) -> Result<Self, ApiError> {
        Ok(Self {
            saga: saga_id("saga_id", saga)?,
            step: step.map(|s| s as usize),
            reason: Reason::parse(reason)?,
        })
    }
}

/// Stop a running saga and compensate what it did.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AbortRequest {
    pub(crate) saga: SagaId,
    pub(crate) reason: Reason,
}

impl AbortRequest {
    pub(crate) fn parse(saga: &str, reason: &str) -> Result<Self, ApiError> {
        Ok(Self {
            saga: saga_id("saga_id", saga)?,
            reason: Reason::parse(reason)?,
        })
    }
}

/// Place or release a legal hold: the saga and why (recorded with the operator in its history).
pub(crate) type HoldRequest = AbortRequest;

/// Largest signal payload accepted, in bytes of JSON.
pub(crate) const MAX_SIGNAL_PAYLOAD_BYTES: usize = 64 * 1024;
/// Longest signal idempotency key.
pub(crate) const MAX_SIGNAL_KEY_CHARS: usize = 200;

/// Deliver a signal to a waiting saga. The payload is only parsed as a JSON object here: its
/// fields are the definition's business, checked by the engine against the wait.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SignalRequest {
    pub(crate) saga: SagaId,
    pub(crate) signal: String,
    pub(crate) payload: serde_json::Value,
    pub(crate) key: Option<String>,
}

impl SignalRequest {
    pub(crate) fn parse(saga: &str, signal: &str, payload_json: &str, key: &str) -> Result<Self, ApiError> {
        let signal = signal.trim();
        if signal.is_empty() || signal.len() > 64 {
            return Err(ApiError::invalid("signal: required, at most 64 characters").in_field("signal"));
        }
        if payload_json.len() > MAX_SIGNAL_PAYLOAD_BYTES {
            return Err(ApiError::invalid(format!(
                "payload_json: {} bytes is over the limit of {MAX_SIGNAL_PAYLOAD_BYTES}",
                payload_json.len()
            )));
        }
        let payload = if payload_json.trim().is_empty() {
            serde_json::Value::Object(serde_json::Map::new())
        } else {
            serde_json::from_str(payload_json)
                .map_err(|e| ApiError::invalid(format!("payload_json: not valid JSON: {e}")))?
        };
        if !payload.is_object() {
            return Err(ApiError::invalid("payload_json: must be a JSON object"));
        }
        let key = key.trim();
        if key.chars().count() > MAX_SIGNAL_KEY_CHARS || key.chars().any(char::is_control) {
            return Err(ApiError::invalid(format!(
                "idempotency_key: at most {MAX_SIGNAL_KEY_CHARS} characters, no control characters"
            )));
        }
        Ok(Self {
            saga: saga_id("saga_id", saga)?,
            signal: signal.to_owned(),
            payload,
            key: (!key.is_empty()).then(|| key.to_owned()),
        })
    }
}

/// An operator approves or rejects a saga waiting at an approval step.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApprovalRequest {
    pub(crate) saga: SagaId,
    pub(crate) approved: bool,
    pub(crate) step: Option<usize>,
    pub(crate) reason: Reason,
}

impl ApprovalRequest {
    pub(crate) fn parse(
        saga: &str,
        approved: bool,
        step: Option<u32>,
        reason: &str,
    ) -> Result<Self, ApiError> {
        Ok(Self {
            saga: saga_id("saga_id", saga)?,
            approved,
            step: step.map(|s| s as usize),
            reason: Reason::parse(reason)?,
        })
    }
}

/// Replay the compensation of every failed saga a filter selects, paced, up to a limit.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BulkReplayRequest {
    /// Its state is always `failed`: replay applies to nothing else.
    pub(crate) filter: ListFilter,
    pub(crate) reason: Reason,
    pub(crate) rate_per_second: f64,
    pub(crate) limit: u32,
    pub(crate) dry_run: bool,
}

impl BulkReplayRequest {
    /// `rate` and `limit` when the caller gave them (else the operator settings' defaults), each
    /// within the operator settings' bounds.
    pub(crate) fn parse(
        mut filter: ListFilter,
        reason: &str,
        rate: Option<f64>,
        limit: Option<u32>,
        dry_run: bool,
        bounds: &OperatorSettings,
    ) -> Result<Self, ApiError> {
        filter.state = failed_only(filter.state)?;
        let reason = Reason::parse(reason)?;
        let (rate_per_second, limit) = pace(rate, limit, bounds)?;
        Ok(Self {
            filter,
            reason,
            rate_per_second,
            limit,
            dry_run,
        })
    }
}

/// A replay's state filter: failed, whether the caller said so or not (replay applies to
/// nothing else).
fn failed_only(state: Option<SagaState>) -> Result<Option<SagaState>, ApiError> {
    match state {
        None | Some(SagaState::Failed) => Ok(Some(SagaState::Failed)),
        Some(other) => Err(ApiError::invalid(format!(
            "filter.state: replay applies to failed sagas, not {other} ones"
        ))),
    }
}

/// A bulk job's rate and limit: the caller's when given (within the operator settings'
/// bounds), else the settings' defaults.
fn pace(rate: Option<f64>, limit: Option<u32>, bounds: &OperatorSettings) -> Result<(f64, u32), ApiError> {
    let rate_per_second = match rate {
        None => bounds.replay_rate_default,
        Some(x) if x.is_finite() && x > 0.0 && x <= bounds.replay_rate_max => x,
        Some(x) => {
            return Err(ApiError::invalid(format!(
                "rate_per_second: must be within (0, {}], got {x}",
                bounds.replay_rate_max
            )));
        }
    };
    let limit = match limit {
        None => bounds.replay_limit_default,
        Some(n) if (1..=bounds.replay_limit_max).contains(&n) => n,
        Some(n) => {
            return Err(ApiError::invalid(format!(
                "limit: must be within 1..={}, got {n}",
                bounds.replay_limit_max
            )));
        }
    };
    Ok((rate_per_second, limit))
}

/// A bulk operation by query: what to do to every saga a filter selects, paced, up to a limit.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BulkJobRequest {
    pub(crate) kind: JobKind,
    pub(crate) filter: ListFilter,
    pub(crate) reason: Reason,
    pub(crate) rate_per_second: f64,
    pub(crate) limit: u32,
    /// The operator saw the plan and means it (required to start).
    pub(crate) confirmed: bool,
}

impl BulkJobRequest {
    pub(crate) fn parse(
        kind: Option<JobKind>,
        mut filter: ListFilter,
        reason: &str,
        rate: Option<f64>,
        limit: Option<u32>,
        confirmed: bool,
        bounds: &OperatorSettings,
    ) -> Result<Self, ApiError> {
        let kind = kind.ok_or_else(|| {
            ApiError::invalid("action: one of replay_compensation, abort, retry, hold, release")
        })?;
        if filter == ListFilter::default() {
            return Err(ApiError::invalid(
                "filter: an empty filter selects every saga; narrow it (a type, a state, a step, a \
                 time range, a key, a failure reason)",
            ));
        }
        if kind == JobKind::ReplayCompensations {
            filter.state = failed_only(filter.state)?;
        }
        let reason = Reason::parse(reason)?;
        let (rate_per_second, limit) = pace(rate, limit, bounds)?;
        Ok(Self {
            kind,
            filter,
            reason,
            rate_per_second,
            limit,
            confirmed,
        })
    }
}

/// Stop a job: what it did stays done; what it has not reached is left alone.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CancelJobRequest {
    pub(crate) job: Uuid,
    pub(crate) reason: Reason,
}

impl CancelJobRequest {
    pub(crate) fn parse(job: &str, reason: &str) -> Result<Self, ApiError> {
        Ok(Self {
            job: job_id("job_id", job)?,
            reason: Reason::parse(reason)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::error::ErrorKind;

    #[test]
    fn reasons_are_required_bounded_and_trimmed() {
        assert_eq!(
            Reason::parse("  ok ").map(|r| r.as_str().to_owned()),
            Ok("ok".to_owned())
        );
        assert_eq!(
            Reason::parse(" ").map_err(|e| e.message),
            Err("reason: required; it is recorded in the saga's history".to_owned())
        );
        assert_eq!(
            Reason::parse(&"x".repeat(501)).map_err(|e| e.kind),
            Err(ErrorKind::InvalidArgument)
        );
        assert!(Reason::parse(&"é".repeat(500)).is_ok(), "characters, not bytes");
    }

    #[test]
    fn pages_are_bounded() {
        assert_eq!(page_size(None), Ok(50));
        assert_eq!(page_size(Some(500)), Ok(500));
        assert!(page_size(Some(0)).is_err() && page_size(Some(501)).is_err());
    }

    #[test]
    fn a_bulk_replay_is_of_failed_sagas_at_a_bounded_rate_and_count() {
        let bounds = OperatorSettings::default();
        let ok = BulkReplayRequest::parse(ListFilter::default(), "r", None, None, false, &bounds)
            .expect("defaults");
        assert_eq!(ok.filter.state, Some(SagaState::Failed));
        assert_eq!(
            (ok.rate_per_second, ok.limit),
            (bounds.replay_rate_default, bounds.replay_limit_default)
        );
        let running = ListFilter {
            state: Some(SagaState::Running),
            ..ListFilter::default()
        };
        for bad in [
            BulkReplayRequest::parse(running, "r", None, None, false, &bounds),
            BulkReplayRequest::parse(ListFilter::default(), "r", Some(0.0), None, false, &bounds),
            BulkReplayRequest::parse(ListFilter::default(), "r", Some(f64::NAN), None, false, &bounds),
            BulkReplayRequest::parse(ListFilter::default(), "r", None, Some(0), false, &bounds),
            BulkReplayRequest::parse(ListFilter::default(), "r", None, Some(10_001), false, &bounds),
            BulkReplayRequest::parse(ListFilter::default(), "", None, None, false, &bounds),
        ] {
            assert_eq!(bad.map_err(|e| e.kind), Err(ErrorKind::InvalidArgument));
        }
    }
}
