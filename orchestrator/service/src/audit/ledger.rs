//! The client of a participant's audit endpoints (see `saga_participant::audit`): `GET
//! /audit/ledger`, read a window's entries in (saga id, step, phase) order, up to a given saga id
//! at a time; `GET /audit/unclaimed` and `GET /audit/facts/{set}`, page by page.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use saga_proto::innermost_cause;
use saga_proto::ledger::{
    self, Cursor, DomainFinding, FactsPage, LedgerEntry, LedgerPage, UnclaimedEffect, UnclaimedPage,
};
use uuid::Uuid;

use super::Coverage;

/// Why a participant's ledger could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LedgerError {
    #[error("audit.participants.{name}: `{url}` is not an http(s) URL")]
    BadUrl { name: String, url: String },
    #[error("audit.cross_checks `{check}`: no participant `{name}` in audit.participants (known: {known})")]
    UnknownParticipant {
        check: String,
        name: String,
        known: String,
    },
    #[error("participant {name} ({url}): {why}")]
    Unreachable { name: String, url: String, why: String },
    #[error("participant {name} answered {status}: {body}")]
    Refused { name: String, status: u16, body: String },
    #[error("participant {name}: unreadable audit answer: {why}")]
    Unreadable { name: String, why: String },
}

/// One configured participant.
pub(crate) struct LedgerClient {
    name: String,
    /// The ledger endpoint's URL.
    url: String,
    /// The unclaimed-effects endpoint's URL.
    unclaimed_url: String,
    /// The fact sets' URL prefix (`…/audit/facts`).
    facts_url: String,
    http: reqwest::Client,
}

impl LedgerClient {
    pub(crate) fn new(name: &str, base_url: &str, timeout: Duration) -> Result<Self, LedgerError> {
        let base = base_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://"))
            || reqwest::Url::parse(base).is_err()
        {
            return Err(LedgerError::BadUrl {
                name: name.to_owned(),
                url: base_url.to_owned(),
            });
        }
        let http =
            reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .map_err(|e| LedgerError::Unreachable {
                    name: name.to_owned(),
                    url: base.to_owned(),
                    why: e.to_string(),
                })?;
        Ok(Self {
            name: name.to_owned(),
            url: format!("{base}{}", ledger::PATH),
            unclaimed_url: format!("{base}{}", ledger::UNCLAIMED_PATH),
            facts_url: format!("{base}{}", ledger::FACTS_PATH),
            http,
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The participant's effects created in `[since, until)` that no inbox record claims, read
    /// `page_size` at a time.
    pub(crate) async fn unclaimed(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        page_size: u32,
    ) -> Result<Vec<UnclaimedEffect>, LedgerError> {
        let mut effects = Vec::new();
        let mut after: Option<saga_proto::ledger::UnclaimedCursor> = None;
        loop {
            let mut query = vec![
                ("since", since.to_rfc3339_opts(SecondsFormat::Millis, true)),
                ("until", until.to_rfc3339_opts(SecondsFormat::Millis, true)),
                ("limit", page_size.clamp(1, ledger::MAX_LIMIT as u32).to_string()),
            ];
            if let Some(a) = &after {
                query.push(("after", a.to_string()));
            }
            let page: UnclaimedPage = self.get(&self.unclaimed_url, &query).await?;
            effects.extend(page.effects);
            match page.next {
                Some(next) if Some(&next) != after.as_ref() => after = Some(next),
                _ => return Ok(effects),
            }
        }
    }

    /// One page of the participant's fact set `set`: keys above `after`, at most `limit`.
    pub(crate) async fn facts(
        &self,
        set: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<FactsPage, LedgerError> {
        let mut url = reqwest::Url::parse(&self.facts_url).map_err(|_| self.unreadable("bad URL".into()))?;
        url.path_segments_mut()
            .map_err(|()| self.unreadable("bad URL".into()))?
            .push(set);
        let mut query = vec![("limit", limit.clamp(1, ledger::MAX_LIMIT as u32).to_string())];
        if let Some(a) = after {
            query.push(("after", a.to_owned()));
        }
        self.get(url.as_str(), &query).await
    }

    /// An answer of this participant that makes no sense.
    pub(crate) fn unreadable(&self, why: String) -> LedgerError {
        LedgerError::Unreadable {
            name: self.name.clone(),
            why,
        }
    }

    /// A reader of the window `[since, until)`.
    pub(crate) fn reader(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        page_size: u32,
    ) -> LedgerReader<'_> {
        LedgerReader {
            client: self,
            since: since.to_rfc3339_opts(SecondsFormat::Millis, true),
            until: until.to_rfc3339_opts(SecondsFormat::Millis, true),
            limit: page_size.clamp(1, ledger::MAX_LIMIT as u32),
            after: None,
            done: false,
            service: None,
            topic: None,
            entries: 0,
            pruned_before: None,
        }
    }

    async fn page(&self, query: &[(&str, String)]) -> Result<LedgerPage, LedgerError> {
        self.get(&self.url, query).await
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        query: &[(&str, String)],
    ) -> Result<T, LedgerError> {
        let response =
            self.http
                .get(url)
                .query(query)
                .send()
                .await
                .map_err(|e| LedgerError::Unreachable {
                    name: self.name.clone(),
                    url: url.to_owned(),
                    why: innermost_cause(&e),
                })?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(LedgerError::Refused {
                name: self.name.clone(),
                status: status.as_u16(),
                body: body.chars().take(300).collect(),
            });
        }
        response.json().await.map_err(|e| LedgerError::Unreadable {
            name: self.name.clone(),
            why: innermost_cause(&e),
        })
    }
}

/// Walks one participant's ledger for one audit.
pub(crate) struct LedgerReader<'a> {
    client: &'a LedgerClient,
    since: String,
    until: String,
    limit: u32,
    after: Option<Cursor>,
    done: bool,
    service: Option<String>,
    topic: Option<String>,
    entries: u64,
    /// The participant's dedup horizon, from its latest page.
    pruned_before: Option<DateTime<Utc>>,
}

impl LedgerReader<'_> {
    pub(crate) fn name(&self) -> &str {
        &self.client.name
    }

    /// The command topic the participant serves (known after its first answer).
    pub(crate) fn topic(&self) -> Option<&str> {
        self.topic.as_deref()
    }

    /// Records of sagas created before this may have been pruned by the participant (known
    /// after its first answer; `None` when it never pruned).
    pub(crate) fn pruned_before(&self) -> Option<DateTime<Utc>> {
        self.pruned_before
    }

    pub(crate) fn coverage(&self) -> Coverage {
        Coverage {
            name: self.client.name.clone(),
            service: self.service.clone().unwrap_or_default(),
            commands_topic: self.topic.clone().unwrap_or_default(),
            entries: self.entries,
            pruned_before: self.pruned_before,
        }
    }

    /// Every entry after the previous call's up to saga `through` (inclusive; to the window's
    /// end when `None`), with the domain checks' findings about them.
    pub(crate) async fn read_through(
        &mut self,
        through: Option<Uuid>,
    ) -> Result<(Vec<LedgerEntry>, Vec<DomainFinding>), LedgerError> {
        let mut entries = Vec::new();
        let mut findings = Vec::new();
        if self.done {
            return Ok((entries, findings));
        }
        loop {
            let mut query = vec![
                ("since", self.since.clone()),
                ("until", self.until.clone()),
                ("limit", self.limit.to_string()),
            ];
            if let Some(after) = self.after {
                query.push(("after", after.to_string()));
            }
            if let Some(t) = through {
                query.push(("through", t.to_string()));
            }
            let page = self.client.page(&query).await?;
            self.service = Some(page.service);
            self.topic = Some(page.commands_topic);
            self.pruned_before = page.pruned_before.max(self.pruned_before);
            if let Some(last) = page.entries.last() {
                self.after = Some(Cursor {
                    saga_id: last.saga_id,
                    step: last.step,
                    phase: last.phase,
                });
            }
            self.entries += page.entries.len() as u64;
            entries.extend(page.entries);
            findings.extend(page.findings);
            if page.next.is_none() {
                if through.is_none() {
                    self.done = true;
                }
                return Ok((entries, findings));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn participant_urls_must_be_http() {
        let t = Duration::from_secs(1);
        assert!(LedgerClient::new("users", "http://user-service:8081/", t).is_ok());
        assert!(LedgerClient::new("users", "https://user-service:8081", t).is_ok());
        for bad in ["user-service:8081", "ftp://user-service", "http://", ""] {
            let err = LedgerClient::new("users", bad, t).err().map(|e| e.to_string());
            assert_eq!(
                err,
                Some(format!("audit.participants.users: `{bad}` is not an http(s) URL")),
                "{bad}"
            );
        }
        let c = LedgerClient::new("posts", "http://post-service:8082/", t).expect("valid");
        assert_eq!(c.url, "http://post-service:8082/audit/ledger");
        assert_eq!(c.unclaimed_url, "http://post-service:8082/audit/unclaimed");
        assert_eq!(c.facts_url, "http://post-service:8082/audit/facts");
    }
}
