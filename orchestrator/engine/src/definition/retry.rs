//! Retry policies: how long a phase keeps trying and how it backs off.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::MAX_DURATION_MS;

/// How long a phase keeps trying, and how it backs off between attempts.
///
/// A missed deadline or a technical failure means *unknown*, not *no*: the participant may be
/// restarting, its consumer group rebalancing, the broker moving partitions. So the budget is
/// **time**: attempts are retried, with capped exponential backoff and jitter, until
/// `give_up_after_ms` has passed since the phase's first attempt (or since an operator gave it a
/// new budget). `max_attempts`, counting every attempt from the first, is an optional extra cap.
/// At least one of the two must be set. A business refusal never retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// The time budget: no new attempt is scheduled once this long has passed since the budget
    /// started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub give_up_after_ms: Option<u64>,
    /// An extra cap on the number of attempts within a budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// Fraction (0..=1) of each backoff that is randomised away, so retries of many sagas spread out.
    #[serde(default = "default_jitter")]
    pub jitter: f64,
}

fn default_multiplier() -> f64 {
    2.0
}

fn default_jitter() -> f64 {
    0.2
}

impl Default for RetryPolicy {
    /// Forward actions: keep trying for five minutes, backing off up to five seconds — long
    /// enough to ride out a participant's restart, a consumer group's rebalance or a broker's.
    fn default() -> Self {
        Self {
            give_up_after_ms: Some(5 * 60 * 1000),
            max_attempts: None,
            initial_backoff_ms: 200,
            max_backoff_ms: 5_000,
            multiplier: default_multiplier(),
            jitter: default_jitter(),
        }
    }
}

impl RetryPolicy {
    /// Compensations must not give up lightly: an hour, backing off up to a minute. Giving up
    /// parks the saga for an operator.
    pub fn compensation_default() -> Self {
        Self {
            give_up_after_ms: Some(60 * 60 * 1000),
            max_attempts: None,
            initial_backoff_ms: 500,
            max_backoff_ms: 60_000,
            multiplier: default_multiplier(),
            jitter: default_jitter(),
        }
    }

    /// Whether another attempt may be scheduled at `now`, after `used` attempts of a budget that
    /// started at `budget_start`.
    pub fn allows_retry(&self, used: u32, budget_start: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        let in_time = self.give_up_after(budget_start).is_none_or(|end| now < end);
        let in_count = self.max_attempts.is_none_or(|max| used < max);
        in_time && in_count
    }

    /// When a budget started at `budget_start` ends, if the policy has a time budget.
    pub fn give_up_after(&self, budget_start: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.give_up_after_ms
            .map(|ms| budget_start + TimeDelta::milliseconds(ms as i64))
    }

    /// The longest a phase under this policy can keep the participant busy, from its first
    /// attempt to the end of its last attempt's deadline: the time budget plus one deadline, or,
    /// with only an attempt cap, every attempt's deadline and the longest backoff before it.
    /// Backoff, jitter and the timer's tick only make a phase end sooner than this.
    pub fn longest_ms(&self, deadline_ms: u64) -> u64 {
        let by_time = self.give_up_after_ms.map(|ms| ms.saturating_add(deadline_ms));
        let by_count = self
            .max_attempts
            .map(|n| u64::from(n).saturating_mul(deadline_ms.saturating_add(self.max_backoff_ms)));
        match (by_time, by_count) {
            (Some(t), Some(c)) => t.min(c),
            (Some(ms), None) | (None, Some(ms)) => ms,
            (None, None) => u64::MAX,
        }
    }

    /// The wait before the attempt after `failed_attempt` (1-based). `seed` picks the jitter (the
    /// first draw of a generator seeded with it, so the same seed gives the same wait); the
    /// engine derives it from the saga, step, phase and attempt so the result is reproducible.
    pub fn backoff(&self, failed_attempt: u32, seed: u64) -> Duration {
        let exponent = failed_attempt.saturating_sub(1).min(64) as i32;
        let raw = self.initial_backoff_ms as f64 * self.multiplier.powi(exponent);
        let capped = raw.min(self.max_backoff_ms as f64);
        let unit = fastrand::Rng::with_seed(seed).f64(); // [0, 1)
        let jittered = capped * (1.0 - self.jitter * unit);
        Duration::from_millis(jittered.max(0.0) as u64)
    }

    pub(super) fn validate(&self, what: &str) -> Result<(), String> {
        let err = |problem: String| Err(format!("{what}: {problem}"));
        match (self.give_up_after_ms, self.max_attempts) {
            (None, None) => return err("give_up_after_ms or max_attempts must be set".into()),
            (_, Some(0)) => return err("max_attempts must be at least 1".into()),
            (Some(ms), _) if ms == 0 || ms > MAX_DURATION_MS => {
                return err(format!("give_up_after_ms must be within 1..={MAX_DURATION_MS}"));
            }
            _ => {}
        }
        if self.initial_backoff_ms > self.max_backoff_ms {
            return err("initial_backoff_ms exceeds max_backoff_ms".into());
        }
        if self.max_backoff_ms > MAX_DURATION_MS {
            return err(format!("max_backoff_ms exceeds {MAX_DURATION_MS}"));
        }
        if !(1.0..=16.0).contains(&self.multiplier) {
            return err("multiplier must be within 1..=16".into());
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return err("jitter must be within 0..=1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn a_phase_lasts_at_most_its_budget_and_one_deadline_or_its_attempts() {
        let timed = RetryPolicy::default();
        assert_eq!(timed.longest_ms(5_000), 300_000 + 5_000);
        let counted = RetryPolicy {
            give_up_after_ms: None,
            max_attempts: Some(3),
            ..RetryPolicy::default()
        };
        assert_eq!(counted.longest_ms(1_000), 3 * (1_000 + 5_000));
        let both = RetryPolicy {
            max_attempts: Some(2),
            ..RetryPolicy::default()
        };
        assert_eq!(both.longest_ms(1_000), 2 * (1_000 + 5_000));
    }

    #[test]
    fn backoff_grows_caps_and_jitters_within_bounds() {
        let p = RetryPolicy {
            give_up_after_ms: None,
            max_attempts: Some(5),
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
            multiplier: 2.0,
            jitter: 0.5,
        };
        for seed in 0..200u64 {
            let b1 = p.backoff(1, seed).as_millis();
            let b3 = p.backoff(3, seed).as_millis();
            let b9 = p.backoff(9, seed).as_millis();
            assert!((50..=100).contains(&b1), "{b1}");
            assert!((200..=400).contains(&b3), "{b3}");
            assert!((500..=1000).contains(&b9), "{b9}");
        }
        assert_eq!(p.backoff(2, 7), p.backoff(2, 7), "deterministic for a seed");
        let spread: HashSet<_> = (0..50u64).map(|s| p.backoff(2, s)).collect();
        assert!(spread.len() > 10, "jitter spreads retries");
    }

    #[test]
    fn the_budget_is_time_with_an_optional_cap_on_attempts() {
        let start = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).expect("time");
        let at = |s: i64| start + TimeDelta::seconds(s);
        let timed = RetryPolicy::default();
        assert!(
            timed.allows_retry(1_000, start, at(299)),
            "no count cap by default"
        );
        assert!(
            !timed.allows_retry(2, start, at(300)),
            "five minutes, then no more"
        );
        assert_eq!(timed.give_up_after(start), Some(at(300)));
        let capped = RetryPolicy {
            max_attempts: Some(3),
            ..RetryPolicy::default()
        };
        assert!(capped.allows_retry(2, start, at(1)));
        assert!(
            !capped.allows_retry(3, start, at(1)),
            "the cap applies within the time"
        );
        let counted = RetryPolicy {
            give_up_after_ms: None,
            max_attempts: Some(3),
            ..RetryPolicy::default()
        };
        assert!(counted.allows_retry(2, start, at(1_000_000)), "no time limit");
        assert_eq!(counted.give_up_after(start), None);
    }
}
