//! Whether the background loops can do their work, for `/readyz`.
//!
//! A database ping and a metadata request prove that the database and the brokers answer, not
//! that the service works: a relay whose producer is stuck, or a consumer whose topic vanished,
//! passes both. So every loop reports to a [`Health`] through a [`Check`] of its own: `failing`
//! when it cannot make progress (a delivery unacknowledged, a fetch error, a consumer group that
//! is not joined), `ok` when it can. A check failing for longer than the grace period makes the
//! service unready, with the reason. Each problem is logged once when it outlasts the grace period
//! and once when it ends, never once per message.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The registry of checks. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    grace: Duration,
    checks: Mutex<BTreeMap<String, State>>,
}

#[derive(Default)]
struct State {
    /// Since when the check has been failing, and why (the latest reason).
    failing: Option<(Instant, String)>,
    /// The failure outlasted the grace period and was logged.
    reported: bool,
}

impl Health {
    /// A registry whose checks make the service unready once they fail for longer than `grace`.
    pub fn new(grace: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                grace,
                checks: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// A check named `name` (e.g. `outbox relay`), healthy until it reports otherwise.
    pub fn check(&self, name: impl Into<String>) -> Check {
        let name = name.into();
        self.inner.lock().entry(name.clone()).or_default();
        Check {
            health: self.clone(),
            name,
        }
    }

    /// The checks that have been failing for longer than the grace period, with how long and why.
    pub fn problems(&self) -> Vec<String> {
        let grace = self.inner.grace;
        self.inner
            .lock()
            .iter()
            .filter_map(|(name, state)| {
                let (since, why) = state.failing.as_ref()?;
                let age = since.elapsed();
                (age >= grace).then(|| format!("{name}: {why} (for {} s)", age.as_secs()))
            })
            .collect()
    }
}

impl Health {
    /// Sets `readiness_check_failing_seconds{check}`: how long each check has been failing (0
    /// while it is fine), for alerts that fire before `/readyz` does.
    pub fn sample(&self) {
        for (name, state) in self.inner.lock().iter() {
            let secs = state
                .failing
                .as_ref()
                .map_or(0.0, |(since, _)| since.elapsed().as_secs_f64());
            metrics::gauge!("readiness_check_failing_seconds", "check" => name.clone()).set(secs);
        }
    }
}

impl Default for Health {
    /// A registry nobody asks: for loops run outside a service (tests, tools).
    fn default() -> Self {
        Self::new(Duration::from_secs(15))
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, State>> {
        // A panic while holding this lock cannot leave the map inconsistent: take it anyway.
        self.checks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One loop's reporter.
#[derive(Clone)]
pub struct Check {
    health: Health,
    name: String,
}

impl Check {
    /// A check that belongs to no service (tests, tools).
    pub fn detached(name: &str) -> Self {
        Health::default().check(name)
    }

    /// The loop made progress: it is healthy again.
    pub fn ok(&self) {
        let mut checks = self.health.inner.lock();
        let Some(state) = checks.get_mut(&self.name) else {
            return;
        };
        if let Some((since, _)) = state.failing.take()
            && state.reported
        {
            tracing::info!(check = %self.name, after_s = since.elapsed().as_secs(), "recovered");
        }
        state.reported = false;
    }

    /// The loop cannot make progress, for `reason`. Failing since the first call without an `ok`
    /// in between; the reason is the latest.
    pub fn failing(&self, reason: impl std::fmt::Display) {
        let grace = self.health.inner.grace;
        let mut checks = self.health.inner.lock();
        let state = checks.entry(self.name.clone()).or_default();
        let reason = reason.to_string();
        let since = match &state.failing {
            Some((since, _)) => *since,
            None => Instant::now(),
        };
        if !state.reported && since.elapsed() >= grace {
            state.reported = true;
            tracing::warn!(check = %self.name, for_s = since.elapsed().as_secs(), %reason,
                "cannot make progress; the service reports itself unready until this recovers");
        }
        state.failing = Some((since, reason));
    }

    /// Whether the check is failing now (whatever the grace period).
    pub fn is_failing(&self) -> bool {
        self.failing_for().is_some()
    }

    /// How long the check has been failing, if it is.
    pub fn failing_for(&self) -> Option<std::time::Duration> {
        self.health
            .inner
            .lock()
            .get(&self.name)
            .and_then(|s| s.failing.as_ref())
            .map(|(since, _)| since.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_counts_only_after_the_grace_period_and_ends_with_ok() {
        let health = Health::new(Duration::from_millis(40));
        let relay = health.check("outbox relay");
        let consumer = health.check("consumer");
        assert!(health.problems().is_empty());
        relay.failing("no acknowledgement");
        assert!(relay.is_failing());
        assert!(health.problems().is_empty(), "within the grace period");
        std::thread::sleep(Duration::from_millis(60));
        relay.failing("broker: unknown topic");
        let problems = health.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("outbox relay: broker: unknown topic (for 0 s)"),
            "the latest reason, the first failure's age: {problems:?}"
        );
        consumer.ok();
        assert_eq!(health.problems().len(), 1, "another check's ok changes nothing");
        relay.ok();
        assert!(health.problems().is_empty());
        assert!(!relay.is_failing());
        relay.failing("again");
        assert!(
            health.problems().is_empty(),
            "a new failure starts a new grace period"
        );
    }
}
