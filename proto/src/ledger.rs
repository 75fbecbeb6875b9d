//! The participant's audit ledger, as its read-only HTTP endpoint (`GET /audit/ledger`) serves it
//! and the orchestrator's audit reads it: what the participant's inbox recorded per
//! (saga, step, phase), in pages, plus the findings of the participant's own domain checks.
//!
//! The window is a range of **saga ids**: saga ids are UUIDv7, whose first 48 bits are the
//! creation time in milliseconds, so `[since, until)` of creation time is a range of ids that both
//! sides can page through on their primary keys in the same order — the orchestrator's `sagas` by
//! id, the participant's `inbox` by (saga id, step, phase) — and join page by page.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::Phase;

/// The endpoint's path on a participant's HTTP (metrics/health) port.
pub const PATH: &str = "/audit/ledger";
/// Entries per page when the request names no `limit`.
pub const DEFAULT_LIMIT: usize = 1_000;
/// The largest `limit` a participant accepts.
pub const MAX_LIMIT: usize = 10_000;

/// The smallest UUIDv7 created at `at` (millisecond precision): every saga id created at or after
/// `at` sorts at or above it, every id created before sorts below.
pub fn first_id_at(at: DateTime<Utc>) -> Uuid {
    let ms = u128::try_from(at.timestamp_millis().max(0)).unwrap_or(0) & ((1 << 48) - 1);
    Uuid::from_u128(ms << 80)
}

/// What a participant's inbox says happened to one command, in the audit's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerOutcome {
    /// The domain applied the command (an action's effect, or a compensation that undid one).
    Succeeded,
    /// A business rule refused it; nothing was applied.
    BusinessFailure,
    /// A compensation whose action was never applied: nothing to undo, recorded so that a late
    /// action is refused.
    NoopCompensation,
    /// An action that arrived after its step's compensation had been processed, and was refused.
    RefusedLateAction,
}

impl LedgerOutcome {
    /// The participant's effect holds or its undo happened: counts as "the participant succeeded".
    pub fn is_success(self) -> bool {
        matches!(self, LedgerOutcome::Succeeded | LedgerOutcome::NoopCompensation)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LedgerOutcome::Succeeded => "succeeded",
            LedgerOutcome::BusinessFailure => "business_failure",
            LedgerOutcome::NoopCompensation => "noop_compensation",
            LedgerOutcome::RefusedLateAction => "refused_late_action",
        }
    }
}

/// One inbox record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub saga_id: Uuid,
    pub step: u32,
    pub phase: Phase,
    pub command_type: String,
    pub outcome: LedgerOutcome,
    /// The business rule's reason, for a refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The reply payload the participant sent with a success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Value>,
    /// The command message that was applied (the inbox does not keep attempt numbers: every
    /// attempt of a phase carries the same business key, and only the first is applied).
    pub message_id: String,
    /// Later deliveries and retries of the same command answered from this record.
    pub duplicates: u32,
    /// When the participant recorded it.
    pub recorded_at: DateTime<Utc>,
}

/// A participant's own check that a recorded effect still holds in its database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainFinding {
    pub saga_id: Uuid,
    pub step: u32,
    pub phase: Phase,
    /// A short name of the check, e.g. `user_missing`.
    pub check: String,
    pub message: String,
}

/// One page of `GET /audit/ledger`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerPage {
    /// The participant service's name, e.g. `user-service`.
    pub service: String,
    /// The logical command topic it consumes (no deployment prefix), e.g. `user.commands`: what
    /// saga definitions name as a step's participant.
    pub commands_topic: String,
    /// In (saga id, step, phase) order.
    pub entries: Vec<LedgerEntry>,
    /// The domain checks' findings about this page's entries.
    #[serde(default)]
    pub findings: Vec<DomainFinding>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Cursor>,
    /// The participant's dedup horizon: records of sagas created before this may have been
    /// pruned, so their absence is not drift. Absent when nothing was ever pruned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned_before: Option<DateTime<Utc>>,
}

/// The path, on the orchestrator's HTTP port, of a participant's reach: `{topic}` is the
/// participant's logical command topic.
pub const REACH_PATH: &str = "/api/participants/{topic}/reach";

/// `GET /api/participants/{topic}/reach`: how long after a saga starts the orchestrator may
/// still send it commands on `participant`'s topic, without an operator's replay or retry — the
/// longest [lifetime](https://docs.rs) of any definition with a step there. A participant keeps
/// its inbox records (its dedup window) at least this long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reach {
    pub participant: String,
    /// Milliseconds; 0 when no definition sends commands to the topic.
    pub reach_ms: u64,
    /// The saga type and version with the longest lifetime, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saga: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// The path of the participant's unclaimed-effects check.
pub const UNCLAIMED_PATH: &str = "/audit/unclaimed";

/// An effect in a participant's data that no inbox record claims (e.g. a post inserted by hand):
/// no saga made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnclaimedEffect {
    /// A short name of the check, e.g. `post_unclaimed`.
    pub check: String,
    /// What it is, e.g. `post 0190…`.
    pub entity: String,
    pub message: String,
}

/// One page of `GET /audit/unclaimed?since&until&after&limit` (effects created in the window),
/// in (check, id) order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnclaimedPage {
    pub service: String,
    pub effects: Vec<UnclaimedEffect>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<UnclaimedCursor>,
}

/// A position in `/audit/unclaimed`'s order: the check's name (in byte order), then the entity's
/// id, written `<check>/<id>` (e.g. `author_unclaimed/0190…`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnclaimedCursor {
    pub check: String,
    pub id: Uuid,
}

impl fmt::Display for UnclaimedCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.check, self.id)
    }
}

impl FromStr for UnclaimedCursor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "`{}` is not an unclaimed-effects cursor (expected <check>/<id>)",
                s.chars().take(120).collect::<String>()
            )
        };
        let (check, id) = s.split_once('/').ok_or_else(bad)?;
        if check.is_empty() {
            return Err(bad());
        }
        Ok(UnclaimedCursor {
            check: check.to_owned(),
            id: Uuid::parse_str(id).map_err(|_| bad())?,
        })
    }
}

impl Serialize for UnclaimedCursor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for UnclaimedCursor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The path prefix of a participant's fact sets: `GET /audit/facts/{set}?after&limit`.
pub const FACTS_PATH: &str = "/audit/facts";

/// One fact of a fact set: a key and its value, both text (e.g. a user id and the user's name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fact {
    pub key: String,
    pub value: String,
}

/// One page of `GET /audit/facts/{set}`: facts in byte order of their keys (as PostgreSQL's
/// `COLLATE "C"` and Rust's `str` order them), all keys above the request's `after`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FactsPage {
    pub set: String,
    pub facts: Vec<Fact>,
    /// The last key of a full page, to pass as `after`; `null` once the set is exhausted.
    pub next: Option<String>,
}

/// A position in the ledger's order: (saga id, step, phase), written `<saga id>/<step>/<phase>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    pub saga_id: Uuid,
    pub step: u32,
    pub phase: Phase,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.saga_id, self.step, self.phase.as_str())
    }
}

impl FromStr for Cursor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "`{}` is not a ledger cursor (expected <saga id>/<step>/<phase>)",
                s.chars().take(120).collect::<String>()
            )
        };
        let mut parts = s.split('/');
        let (Some(saga), Some(step), Some(phase), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        Ok(Cursor {
            saga_id: Uuid::parse_str(saga).map_err(|_| bad())?,
            step: step.parse().map_err(|_| bad())?,
            phase: phase.parse().map_err(|_| bad())?,
        })
    }
}

impl Serialize for Cursor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cursor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor {
            saga_id: Uuid::now_v7(),
            step: 3,
            phase: Phase::Compensation,
        };
        assert_eq!(c.to_string().parse::<Cursor>(), Ok(c));
        assert!("x/1/action".parse::<Cursor>().is_err());
        assert!(format!("{}/1/undo", c.saga_id).parse::<Cursor>().is_err());
        assert!(format!("{}/1/action/2", c.saga_id).parse::<Cursor>().is_err());
        assert!(format!("{}/-1/action", c.saga_id).parse::<Cursor>().is_err());
        let u = UnclaimedCursor {
            check: "post_unclaimed".into(),
            id: c.saga_id,
        };
        assert_eq!(u.to_string().parse::<UnclaimedCursor>(), Ok(u));
        assert!("post_unclaimed/x".parse::<UnclaimedCursor>().is_err());
        assert!(format!("/{}", c.saga_id).parse::<UnclaimedCursor>().is_err());
    }

    #[test]
    fn ids_created_in_a_window_sort_inside_its_bounds() {
        let since = DateTime::from_timestamp_millis(1_764_000_000_000).expect("valid");
        let until = since + chrono::Duration::milliseconds(1);
        let inside = Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, 1_764_000_000, 0));
        let before = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            1_763_999_999,
            999_000_000,
        ));
        assert!(first_id_at(since) <= inside && inside < first_id_at(until));
        assert!(before < first_id_at(since));
    }
}
