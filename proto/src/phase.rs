//! Action or compensation: the one definition every part of the coordinator shares.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Whether a command drives a step forward or undoes it. Written as `action` / `compensation` in
/// JSON (the orchestrator's step records and history), in record headers and in idempotency keys;
/// as `PHASE_ACTION` / `PHASE_COMPENSATION` in the protobuf envelopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Action,
    Compensation,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Action => "action",
            Phase::Compensation => "compensation",
        }
    }

    /// The protobuf enum value.
    pub fn to_wire(self) -> crate::v1::Phase {
        match self {
            Phase::Action => crate::v1::Phase::Action,
            Phase::Compensation => crate::v1::Phase::Compensation,
        }
    }

    /// From the protobuf enum value of an envelope; the error is the dead-letter reason.
    pub fn from_wire(value: i32) -> Result<Self, String> {
        match crate::v1::Phase::try_from(value) {
            Ok(crate::v1::Phase::Action) => Ok(Phase::Action),
            Ok(crate::v1::Phase::Compensation) => Ok(Phase::Compensation),
            _ => Err(format!("phase: {value} is not action or compensation")),
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Phase {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "action" => Ok(Phase::Action),
            "compensation" => Ok(Phase::Compensation),
            other => Err(format!("`{other}` is not a phase (action or compensation)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_round_trips() {
        for p in [Phase::Action, Phase::Compensation] {
            assert_eq!(p.as_str().parse::<Phase>(), Ok(p));
            assert_eq!(Phase::from_wire(p.to_wire() as i32), Ok(p));
            let json = serde_json::to_string(&p).expect("serializes");
            assert_eq!(json, format!("\"{p}\""));
            assert_eq!(serde_json::from_str::<Phase>(&json).expect("parses"), p);
        }
        assert!(Phase::from_wire(0).is_err());
        assert!(Phase::from_wire(7).is_err());
        assert!("Action".parse::<Phase>().is_err());
    }
}
