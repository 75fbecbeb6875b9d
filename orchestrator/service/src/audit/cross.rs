//! The audit's cross-checks: two participants' fact sets that must agree key for key, e.g. each
//! user's name in user-service (`users`) and its author replica's in post-service (`authors`).
//!
//! Both sets are read from the participants' `GET /audit/facts/{set}` a page at a time, keys in
//! byte order, and merge-joined: memory holds one page of each, whatever the sets' size. A key
//! missing on one side or with another value is a candidate. Sets legitimately differ while a
//! saga is between its steps (a user created, its author not yet), so candidates are only
//! reported if the sets still disagree on the key when read again after a settle delay.

use std::cmp::Ordering;
use std::collections::VecDeque;

use saga_proto::ledger::Fact;
use serde::{Deserialize, Serialize};

use super::ledger::{LedgerClient, LedgerError};

/// One entry of `[audit.cross_checks]`, written `"<participant>.<set> = <participant>.<set>"`
/// (e.g. `authors_replicate_users = "users.users = posts.authors"`, or in the environment
/// `APP_AUDIT__CROSS_CHECKS__AUTHORS_REPLICATE_USERS=users.users = posts.authors`): two fact
/// sets that must hold the same keys with the same values. Participants are named as in
/// `audit.participants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FactPair {
    pub left: FactSource,
    pub right: FactSource,
}

impl TryFrom<String> for FactPair {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{}` is not a cross-check (expected \"<participant>.<fact set> = <participant>.<fact set>\", \
                 e.g. \"users.users = posts.authors\")",
                text.chars().take(120).collect::<String>()
            )
        };
        let side = |s: &str| -> Option<FactSource> {
            let (participant, facts) = s.trim().split_once('.')?;
            let ok = |p: &str| !p.is_empty() && !p.contains(char::is_whitespace);
            (ok(participant) && ok(facts)).then(|| FactSource {
                participant: participant.to_owned(),
                facts: facts.to_owned(),
            })
        };
        let (l, r) = text.split_once('=').ok_or_else(bad)?;
        Ok(FactPair {
            left: side(l).ok_or_else(bad)?,
            right: side(r).ok_or_else(bad)?,
        })
    }
}

impl From<FactPair> for String {
    fn from(p: FactPair) -> String {
        format!("{} = {}", p.left, p.right)
    }
}

/// A configured cross-check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CrossCheck {
    /// Its key in `[audit.cross_checks]`, named in its findings, e.g. `authors_replicate_users`.
    pub name: String,
    pub left: FactSource,
    pub right: FactSource,
}

/// One side of a cross-check: a participant (by its name in `audit.participants`) and one of its
/// fact sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactSource {
    pub participant: String,
    pub facts: String,
}

impl std::fmt::Display for FactSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.participant, self.facts)
    }
}

/// A key the two sets disagree on; `None`: the side has no such key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Drift {
    pub key: String,
    pub left: Option<String>,
    pub right: Option<String>,
}

/// Reads one fact set page by page.
struct FactCursor<'a> {
    client: &'a LedgerClient,
    set: &'a str,
    limit: u32,
    buffered: VecDeque<Fact>,
    /// Where the next page starts; `None` with `exhausted`: the set is read.
    after: Option<String>,
    exhausted: bool,
}

impl<'a> FactCursor<'a> {
    fn new(client: &'a LedgerClient, set: &'a str, limit: u32) -> Self {
        Self {
            client,
            set,
            limit,
            buffered: VecDeque::new(),
            after: None,
            exhausted: false,
        }
    }

    /// The next fact without taking it; reads the next page when the buffer is empty.
    async fn peek(&mut self) -> Result<Option<&Fact>, LedgerError> {
        while self.buffered.is_empty() && !self.exhausted {
            let page = self
                .client
                .facts(self.set, self.after.as_deref(), self.limit)
                .await?;
            // The merge-join is only right if keys strictly ascend, within a page and across.
            let keys: Vec<&str> = self
                .after
                .iter()
                .map(String::as_str)
                .chain(page.facts.iter().map(|f| f.key.as_str()))
                .collect();
            if let Some(pair) = keys.windows(2).find(|pair| pair[0] >= pair[1]) {
                return Err(self.client.unreadable(format!(
                    "fact set `{}`: key `{}` came after `{}`; keys must strictly ascend in byte order",
                    self.set, pair[1], pair[0]
                )));
            }
            self.exhausted = page.next.is_none() || page.facts.is_empty();
            self.after = page.facts.last().map(|f| f.key.clone()).or(self.after.take());
            self.buffered.extend(page.facts);
        }
        Ok(self.buffered.front())
    }

    fn take(&mut self) -> Option<Fact> {
        self.buffered.pop_front()
    }
}

/// One merge-join of the two sets: every key they disagree on, in key order.
pub(crate) async fn compare(
    left: &LedgerClient,
    left_set: &str,
    right: &LedgerClient,
    right_set: &str,
    page_size: u32,
) -> Result<Vec<Drift>, LedgerError> {
    let mut l = FactCursor::new(left, left_set, page_size);
    let mut r = FactCursor::new(right, right_set, page_size);
    let mut drift = Vec::new();
    loop {
        let order = match (l.peek().await?, r.peek().await?) {
            (None, None) => return Ok(drift),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(a), Some(b)) => a.key.cmp(&b.key),
        };
        match order {
            Ordering::Less => {
                if let Some(f) = l.take() {
                    drift.push(Drift {
                        key: f.key,
                        left: Some(f.value),
                        right: None,
                    });
                }
            }
            Ordering::Greater => {
                if let Some(f) = r.take() {
                    drift.push(Drift {
                        key: f.key,
                        left: None,
                        right: Some(f.value),
                    });
                }
            }
            Ordering::Equal => {
                if let (Some(a), Some(b)) = (l.take(), r.take())
                    && a.value != b.value
                {
                    drift.push(Drift {
                        key: a.key,
                        left: Some(a.value),
                        right: Some(b.value),
                    });
                }
            }
        }
    }
}

/// The disagreements of `second` (read after the settle delay) on keys `first` also disagreed on:
/// what did not settle. Both are in key order.
pub(crate) fn persisting(first: &[Drift], second: Vec<Drift>) -> Vec<Drift> {
    second
        .into_iter()
        .filter(|d| first.binary_search_by(|f| f.key.cmp(&d.key)).is_ok())
        .collect()
}

/// The finding's message: which key, and what each side holds.
pub(crate) fn describe(check: &CrossCheck, drift: &Drift) -> String {
    let side = |source: &FactSource, value: &Option<String>| match value {
        Some(v) => format!("{source} = {v:?}"),
        None => format!("{source} has no such key"),
    };
    format!(
        "{}: key {}: {}, {}",
        check.name,
        drift.key,
        side(&check.left, &drift.left),
        side(&check.right, &drift.right)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drift(key: &str, left: Option<&str>, right: Option<&str>) -> Drift {
        Drift {
            key: key.into(),
            left: left.map(Into::into),
            right: right.map(Into::into),
        }
    }

    #[test]
    fn only_keys_that_disagreed_twice_persist() {
        let first = vec![drift("a", Some("1"), Some("2")), drift("c", Some("x"), None)];
        let second = vec![drift("b", Some("1"), None), drift("c", Some("x"), None)];
        assert_eq!(persisting(&first, second), vec![drift("c", Some("x"), None)]);
    }

    #[test]
    fn cross_checks_parse_and_bad_ones_are_named() {
        let p = FactPair::try_from("users.post_counts = posts.post_counts".to_owned()).expect("valid");
        assert_eq!(
            (p.left.to_string(), p.right.to_string()),
            ("users.post_counts".into(), "posts.post_counts".into())
        );
        assert_eq!(String::from(p.clone()), "users.post_counts = posts.post_counts");
        for bad in [
            "users.users",
            "users = posts.authors",
            "users.users = .authors",
            "a b.c = d.e",
            "",
        ] {
            let err = FactPair::try_from(bad.to_owned()).expect_err(bad);
            assert!(err.contains("is not a cross-check"), "{err}");
        }
    }

    #[test]
    fn messages_name_both_sides() {
        let check = CrossCheck {
            name: "authors replicate users".into(),
            left: FactSource {
                participant: "users".into(),
                facts: "users".into(),
            },
            right: FactSource {
                participant: "posts".into(),
                facts: "authors".into(),
            },
        };
        assert_eq!(
            describe(&check, &drift("k", Some("Ann"), Some("Bob"))),
            "authors replicate users: key k: users.users = \"Ann\", posts.authors = \"Bob\""
        );
        assert_eq!(
            describe(&check, &drift("k", None, Some("Bob"))),
            "authors replicate users: key k: users.users has no such key, posts.authors = \"Bob\""
        );
    }
}
