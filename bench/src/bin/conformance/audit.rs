//! The participant's audit endpoints on its HTTP port, as the orchestrator's consistency audit
//! reads them (`participants/kit/src/audit.rs`, `saga_proto::ledger`): the ledger must list what
//! the kit's commands left in the inbox — each (saga, step, phase) once, with the outcome the
//! kit saw on the wire, the applied command's message id and the recorded reason — in pages that
//! chain, with no domain finding about effects that stand; a bad parameter is a 400 with a JSON
//! `error`; `/audit/unclaimed` finds nothing (every effect came from a saga); the profile's fact
//! sets page in byte order of their keys, and an unknown fact set is a 404.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use saga_proto::envelope::{Outcome, Reply};
use saga_proto::ledger::{Cursor, LedgerOutcome, LedgerPage};
use serde::Deserialize;
use serde_json::Value;

use crate::Check;

/// One page of `GET /audit/facts/{set}`: `next` is the last key of a full page, `null` once the
/// set is exhausted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FactsPage {
    set: String,
    facts: Vec<Fact>,
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fact {
    key: String,
    #[allow(dead_code)] // read only to check that every fact has a text value
    value: String,
}

/// Entries per page the kit asks for: small, so that its commands span several pages.
const PAGE: usize = 4;
/// Facts per page the kit asks for, and how many pages of a set it reads at most (a set may hold
/// far more than the kit's commands made).
const FACTS_PAGE: usize = 2;
const FACTS_PAGES: usize = 100;

/// What the inbox must hold for one (saga, step, phase), learnt from the first reply to it.
#[derive(Debug, Clone)]
pub struct Expected {
    pub outcome: LedgerOutcome,
    /// The command that was applied (the first reply's causation id).
    pub message_id: String,
    pub reason: Option<String>,
    /// Repeats the kit sent after it (redeliveries and retries answered from the inbox).
    pub repeats: u32,
}

/// The ledger entries the kit's commands produced, noted as the checks see their replies.
#[derive(Clone, Default)]
pub struct Expectations(Arc<Mutex<BTreeMap<Cursor, Expected>>>);

impl Expectations {
    /// Notes the first reply to a (saga, step, phase) and what the ledger must call it.
    pub fn first(&self, reply: &Reply, outcome: LedgerOutcome) {
        let reason = match &reply.outcome {
            Outcome::BusinessFailure { reason } => Some(reason.clone()),
            _ => None,
        };
        let cursor = Cursor {
            saga_id: reply.saga_id,
            step: reply.step_index,
            phase: reply.phase,
        };
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(cursor)
            .or_insert(Expected {
                outcome,
                message_id: reply.causation_id.clone(),
                reason,
                repeats: 0,
            });
    }

    /// Notes a reply to a repeat of a (saga, step, phase) the ledger already holds.
    pub fn repeat(&self, reply: &Reply) {
        let cursor = Cursor {
            saga_id: reply.saga_id,
            step: reply.step_index,
            phase: reply.phase,
        };
        if let Some(e) = self.0.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&cursor) {
            e.repeats += 1;
        }
    }

    fn snapshot(&self) -> BTreeMap<Cursor, Expected> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The participant's HTTP port.
pub struct Endpoints {
    base: String,
    http: reqwest::Client,
}

impl Endpoints {
    pub fn new(base: &str) -> anyhow::Result<Self> {
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()?,
        })
    }

    /// Status and body of `GET <base><path_and_query>`.
    async fn get(&self, path_and_query: &str) -> Result<(u16, String), String> {
        let url = format!("{}{path_and_query}", self.base);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|e| format!("GET {url}: {e}"))?;
        Ok((status, body))
    }

    /// `GET` expecting a 200 with JSON.
    async fn json(&self, path_and_query: &str) -> Result<Value, String> {
        let (status, body) = self.get(path_and_query).await?;
        if status != 200 {
            return Err(format!("GET {path_and_query}: HTTP {status}: {}", clip(&body)));
        }
        serde_json::from_str(&body)
            .map_err(|e| format!("GET {path_and_query}: not JSON ({e}): {}", clip(&body)))
    }

    /// `GET` expecting `status` and, for a 400, a JSON `error` that names `names`.
    async fn refused(&self, path_and_query: &str, status: u16, names: &str) -> Result<String, String> {
        let (got, body) = self.get(path_and_query).await?;
        if got != status {
            return Err(format!(
                "GET {path_and_query}: HTTP {got}, expected {status}: {}",
                clip(&body)
            ));
        }
        let error = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
            .ok_or_else(|| {
                format!(
                    "GET {path_and_query}: the {status} has no JSON `error`: {}",
                    clip(&body)
                )
            })?;
        if !error.contains(names) {
            return Err(format!(
                "GET {path_and_query}: the error `{error}` does not name `{names}`"
            ));
        }
        Ok(error)
    }
}

fn clip(body: &str) -> String {
    body.chars().take(300).collect()
}

fn since_param(since: DateTime<Utc>) -> String {
    since
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        .replace('+', "%2B")
}

/// The ledger of the window from `since`, page by page: every page in order and chained by `next`,
/// every entry the kit expects there once, with its outcome, message id and reason, and no finding
/// about the kit's sagas.
pub async fn ledger(
    endpoints: &Endpoints,
    expected: &Expectations,
    commands_topic: &str,
    since: DateTime<Utc>,
) -> Check {
    let expected = expected.snapshot();
    if expected.is_empty() {
        return Err("no command of the kit was answered, so there is nothing to look for".into());
    }
    let mut entries = BTreeMap::new();
    let mut findings = Vec::new();
    let mut after: Option<Cursor> = None;
    let mut pages = 0;
    loop {
        let mut query = format!("/audit/ledger?since={}&limit={PAGE}", since_param(since));
        if let Some(c) = after {
            query.push_str(&format!("&after={c}"));
        }
        let page: LedgerPage = serde_json::from_value(endpoints.json(&query).await?)
            .map_err(|e| format!("GET {query}: not a ledger page: {e}"))?;
        pages += 1;
        if page.commands_topic != commands_topic {
            return Err(format!(
                "the page names commands topic `{}`, the participant consumes `{commands_topic}`",
                page.commands_topic
            ));
        }
        if page.entries.len() > PAGE {
            return Err(format!("{} entries for limit={PAGE}", page.entries.len()));
        }
        for e in page.entries {
            let at = Cursor {
                saga_id: e.saga_id,
                step: e.step,
                phase: e.phase,
            };
            if after.is_some_and(|a| at <= a) {
                return Err(format!(
                    "entry {at} after {} on page {pages}: not in (saga, step, phase) order",
                    after.map(|a| a.to_string()).unwrap_or_default()
                ));
            }
            after = Some(at);
            entries.insert(at, e);
        }
        findings.extend(page.findings);
        match page.next {
            Some(next) if Some(next) == after => {}
            Some(next) => {
                return Err(format!(
                    "page {pages}: next is {next}, but its last entry is {}",
                    after.map(|a| a.to_string()).unwrap_or_else(|| "none".into())
                ));
            }
            None => break,
        }
        if pages > 10_000 {
            return Err("more than 10,000 pages: next does not advance".into());
        }
    }
    let mut wrong = Vec::new();
    for (at, want) in &expected {
        let Some(got) = entries.get(at) else {
            wrong.push(format!("{at} ({:?}) is not in the ledger", want.outcome));
            continue;
        };
        if got.outcome != want.outcome {
            wrong.push(format!(
                "{at}: outcome {}, expected {}",
                got.outcome.as_str(),
                want.outcome.as_str()
            ));
        }
        if got.message_id != want.message_id {
            wrong.push(format!(
                "{at}: message_id `{}`, the applied command was {}",
                got.message_id, want.message_id
            ));
        }
        if want.reason.is_some() && got.reason != want.reason {
            wrong.push(format!(
                "{at}: reason {:?}, the reply said {:?}",
                got.reason, want.reason
            ));
        }
        if got.duplicates < want.repeats {
            wrong.push(format!(
                "{at}: {} duplicates, the kit repeated it {} times",
                got.duplicates, want.repeats
            ));
        }
    }
    let ours: Vec<String> = findings
        .iter()
        .filter(|f| expected.keys().any(|k| k.saga_id == f.saga_id))
        .map(|f| format!("{} {}/{}: {}", f.check, f.saga_id, f.step, f.message))
        .collect();
    if !ours.is_empty() {
        wrong.push(format!("findings about effects that stand: {}", ours.join("; ")));
    }
    if !wrong.is_empty() {
        return Err(wrong.join("; "));
    }
    let missing_since = endpoints.refused("/audit/ledger", 400, "since").await?;
    endpoints
        .refused(
            &format!("/audit/ledger?since={}&limit=0", since_param(since)),
            400,
            "limit",
        )
        .await?;
    let mut outcomes = BTreeMap::<&str, usize>::new();
    for want in expected.values() {
        *outcomes.entry(want.outcome.as_str()).or_default() += 1;
    }
    let outcomes: Vec<String> = outcomes.iter().map(|(o, n)| format!("{n} {o}")).collect();
    Ok(format!(
        "{} entries of the kit's commands in {pages} pages of {PAGE} ({}), none with a finding; \
         a request without since: 400 `{missing_since}`",
        expected.len(),
        outcomes.join(", ")
    ))
}

/// `/audit/unclaimed` of the window: every effect came from a saga, so the page is empty.
pub async fn unclaimed(endpoints: &Endpoints, since: DateTime<Utc>) -> Check {
    let query = format!("/audit/unclaimed?since={}", since_param(since));
    let page = endpoints.json(&query).await?;
    let effects = page
        .get("effects")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("GET {query}: no `effects` list: {page}"))?;
    if !effects.is_empty() {
        return Err(format!(
            "effects no saga made, though every one came from a saga: {}",
            clip(&Value::Array(effects.clone()).to_string())
        ));
    }
    if page.get("next").is_some_and(|n| !n.is_null()) {
        return Err(format!("an empty page with a next cursor: {page}"));
    }
    let service = page.get("service").and_then(Value::as_str).unwrap_or_default();
    if service.is_empty() {
        return Err(format!("the page names no service: {page}"));
    }
    Ok(format!("{service}: no unclaimed effect in the window"))
}

/// `/audit/facts/{set}` of each of the profile's fact sets, page by page: the set echoed, keys
/// strictly ascending in byte order across pages chained by `after`, `next` the last key of a
/// page or `null` once the set is exhausted; a bad `limit` is a 400; an unknown set is a 404
/// (naming the set, if the answer says anything).
pub async fn facts(endpoints: &Endpoints, sets: &[String]) -> Check {
    let mut seen = Vec::new();
    for set in sets {
        let mut after: Option<String> = None;
        let (mut keys, mut pages) = (0, 0);
        loop {
            let mut query = format!("/audit/facts/{set}?limit={FACTS_PAGE}");
            if let Some(a) = &after {
                query.push_str(&format!("&after={}", encode(a)));
            }
            let page: FactsPage = serde_json::from_value(endpoints.json(&query).await?)
                .map_err(|e| format!("GET {query}: not a facts page: {e}"))?;
            pages += 1;
            if page.set != *set {
                return Err(format!("GET {query}: the page is of set `{}`", page.set));
            }
            if page.facts.len() > FACTS_PAGE {
                return Err(format!(
                    "GET {query}: {} facts for limit={FACTS_PAGE}",
                    page.facts.len()
                ));
            }
            for fact in &page.facts {
                if after.as_ref().is_some_and(|a| fact.key.as_str() <= a.as_str()) {
                    return Err(format!(
                        "set {set}: key `{}` after `{}`: not ascending in byte order",
                        fact.key,
                        after.unwrap_or_default()
                    ));
                }
                after = Some(fact.key.clone());
            }
            keys += page.facts.len();
            match page.next {
                Some(next) if Some(&next) == after.as_ref() && page.facts.len() == FACTS_PAGE => {}
                Some(next) => {
                    return Err(format!(
                        "GET {query}: next is `{next}` on a page of {} facts ending at {after:?}",
                        page.facts.len()
                    ));
                }
                None => break,
            }
            if pages == FACTS_PAGES {
                break;
            }
        }
        endpoints
            .refused(&format!("/audit/facts/{set}?limit=0"), 400, "limit")
            .await?;
        seen.push(format!("{set}: {keys} facts in {pages} pages"));
    }
    let unknown = "conformance-no-such-set";
    let (status, body) = endpoints.get(&format!("/audit/facts/{unknown}")).await?;
    if status != 404 {
        return Err(format!(
            "GET /audit/facts/{unknown}: HTTP {status}, expected 404: {}",
            clip(&body)
        ));
    }
    if !body.trim().is_empty() && !body.contains(unknown) {
        return Err(format!(
            "GET /audit/facts/{unknown}: the 404 does not name the set: {}",
            clip(&body)
        ));
    }
    seen.push(format!("an unknown set: 404 {}", clip(body.trim())));
    Ok(seen.join("; "))
}

/// `key` as a query parameter value.
fn encode(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
