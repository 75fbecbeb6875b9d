//! Whether a new saga is let in now. `StartSaga` is the call a client waits on, so it must not
//! hang when the saga store cannot answer: a caller that learns at once that the store is
//! unavailable can retry elsewhere or later, one that waits out its own deadline learns nothing and
//! keeps a connection and a task busy here meanwhile.
//!
//! [`InFlight`] keeps the sagas in flight under the configured limits (`AdmissionSettings`):
//! past a limit, a new saga is refused with RESOURCE_EXHAUSTED and a retry hint instead of joining
//! a queue whose length is the latency of everything in it.
//!
//! [`StoreGate`] remembers that the store failed to answer (no connection within [`DB_WAIT`], a
//! refused or broken connection, a server shutting down or out of connections or disk) and then
//! refuses new sagas at once with a retry hint, letting one group write through every
//! [`PROBE_EVERY`] as the probe; the first write that succeeds opens the gate again. Nothing is
//! half-written either way: a refused start wrote nothing, and a group write is one transaction.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::settings::AdmissionSettings;
use crate::store::StoreError;

/// A start refused because too many sagas are in flight.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{in_flight} sagas {scope} are in flight, at the limit of {limit}; retry later")]
pub(crate) struct Busy {
    /// "in all" or "of type `t`".
    pub scope: String,
    pub in_flight: u64,
    pub limit: u64,
    pub retry_after: Duration,
}

/// Sagas in flight: as last counted from the database, plus what this replica admitted since.
///
/// Exact for this replica's own starts: the count is taken by the group writer between two of
/// its writes (`StartWriter`), so no write of this replica is half-way while it reads; a saga
/// admitted but not yet written counts as `writing`, and the writer moves it to the count in the
/// same step in which it learns of its commit. Sagas that end are seen at the next count (until
/// then they still count: a limit errs towards refusing), and so are other replicas' starts.
#[derive(Debug)]
pub(crate) struct InFlight {
    settings: AdmissionSettings,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// The last count, by type, plus this replica's sagas written since.
    counted: HashMap<String, u64>,
    /// Admitted here, written not yet.
    writing: HashMap<String, u64>,
}

impl Counts {
    fn of_type(&self, saga_type: &str) -> u64 {
        self.counted.get(saga_type).copied().unwrap_or(0) + self.writing.get(saga_type).copied().unwrap_or(0)
    }

    fn total(&self) -> u64 {
        self.counted.values().sum::<u64>() + self.writing.values().sum::<u64>()
    }

    fn unwrite(&mut self, saga_type: &str) {
        if let Some(n) = self.writing.get_mut(saga_type) {
            *n = n.saturating_sub(1);
        }
    }
}

/// An admitted saga, counted as being written until the writer has written it (or the request
/// was given up before it got there: then dropping it uncounts it).
#[derive(Debug)]
pub(crate) struct Admitted {
    in_flight: Option<std::sync::Arc<InFlight>>,
    saga_type: String,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(in_flight) = self.in_flight.take() {
            in_flight.lock().unwrite(&self.saga_type);
        }
    }
}

impl InFlight {
    pub(crate) fn new(settings: AdmissionSettings) -> Self {
        Self {
            settings,
            counts: Mutex::new(Counts::default()),
        }
    }

    /// Whether any limit is set (else nothing is counted).
    pub(crate) fn limited(&self) -> bool {
        self.settings.limited()
    }

    /// How often the writer counts.
    pub(crate) fn refresh_every(&self) -> Duration {
        Duration::from_millis(self.settings.refresh_ms)
    }

    /// Admits one saga of `saga_type` (counted as being written while the guard lives) or
    /// refuses it.
    pub(crate) fn admit(self: &std::sync::Arc<Self>, saga_type: &str) -> Result<Admitted, Busy> {
        if !self.limited() {
            return Ok(Admitted {
                in_flight: None,
                saga_type: String::new(),
            });
        }
        let mut counts = self.lock();
        let refused = |scope: String, in_flight: u64, limit: u64| {
            metrics::counter!("sagas_refused_total", "saga_type" => saga_type.to_owned(), "reason" => "in_flight")
                .increment(1);
            Busy {
                scope,
                in_flight,
                limit,
                retry_after: Duration::from_millis(self.settings.retry_after_ms),
            }
        };
        let limit = self.settings.max_in_flight;
        let total = counts.total();
        if limit > 0 && total >= limit {
            return Err(refused("in all".into(), total, limit));
        }
        if let Some(&limit) = self.settings.per_type.get(saga_type)
            && limit > 0
        {
            let of_type = counts.of_type(saga_type);
            if of_type >= limit {
                return Err(refused(format!("of type `{saga_type}`"), of_type, limit));
            }
        }
        *counts.writing.entry(saga_type.to_owned()).or_default() += 1;
        Ok(Admitted {
            in_flight: Some(self.clone()),
            saga_type: saga_type.to_owned(),
        })
    }

    /// The writer's group transaction ended: each admitted saga is no longer being written, and
    /// each one `committed` counts as in flight — in one step, so no admission sees it twice or
    /// not at all.
    pub(crate) fn written<'a>(&self, sagas: impl IntoIterator<Item = (&'a mut Admitted, bool)>) {
        let mut counts = self.lock();
        for (admitted, committed) in sagas {
            if admitted.in_flight.take().is_none() {
                continue;
            }
            counts.unwrite(&admitted.saga_type);
            if committed {
                *counts.counted.entry(admitted.saga_type.clone()).or_default() += 1;
            }
        }
    }

    /// Counts the sagas in flight. Called by the group writer between two writes; a failed
    /// count keeps the last one.
    pub(crate) async fn recount(&self, pool: &PgPool) {
        match count(pool).await {
            Ok(counted) => {
                let total: u64 = counted.values().sum();
                self.lock().counted = counted;
                metrics::gauge!("sagas_in_flight").set(total as f64);
            }
            Err(e) => tracing::debug!(error = %e, "counting the sagas in flight failed"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Running and compensating sagas by type, from the index on (type, state).
async fn count(pool: &PgPool) -> sqlx::Result<HashMap<String, u64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT saga_type, count(*) FROM sagas WHERE state IN ('running', 'compensating') GROUP BY saga_type",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(t, n)| (t, u64::try_from(n).unwrap_or(0)))
        .collect())
}

/// How long a start waits for a database connection before it is refused (the pool's own
/// acquire timeout, for everything else, is longer). When PostgreSQL is down, a connection attempt
/// is retried with back-off until this passes.
pub(crate) const DB_WAIT: Duration = Duration::from_secs(1);

/// While the store is down, how often one write is let through to find out whether it is back.
pub(crate) const PROBE_EVERY: Duration = Duration::from_millis(500);

/// The retry hint given with a refusal while the store is down.
pub(crate) const RETRY_AFTER_DOWN: Duration = Duration::from_secs(1);

/// The saga store's reachability as `StartSaga` has seen it.
#[derive(Debug, Default)]
pub(crate) struct StoreGate {
    /// Set while the store is down: when the last attempt to reach it began.
    down: Mutex<Option<Instant>>,
}

impl StoreGate {
    /// Before a start touches the store: `Err(retry_after)` while the store is down and no probe
    /// is due (a due probe is claimed by the writer, [`Self::attempt`]).
    pub(crate) fn check(&self) -> Result<(), Duration> {
        match *self.lock() {
            Some(last) if last.elapsed() < PROBE_EVERY => Err(RETRY_AFTER_DOWN),
            _ => Ok(()),
        }
    }

    /// Before a write: like [`Self::check`], but a due probe is taken (so one write probes).
    pub(crate) fn attempt(&self) -> Result<(), Duration> {
        let mut down = self.lock();
        match *down {
            Some(last) if last.elapsed() < PROBE_EVERY => Err(RETRY_AFTER_DOWN),
            Some(_) => {
                *down = Some(Instant::now());
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// What a read or write of the store gave: a success opens the gate, a failure to reach the
    /// store closes it; other errors (a conflict, a constraint) say nothing about reachability.
    pub(crate) fn record<T>(&self, result: &Result<T, StoreError>) {
        match result {
            Ok(_) => {
                let mut down = self.lock();
                if down.take().is_some() {
                    tracing::info!("the saga store answers again; new sagas are let in");
                    metrics::gauge!("start_refusing_store_down").set(0.0);
                }
            }
            Err(e) if unreachable(e) => {
                let mut down = self.lock();
                if down.is_none() {
                    tracing::warn!(error = %e, "the saga store does not answer; new sagas are refused until it does");
                    metrics::gauge!("start_refusing_store_down").set(1.0);
                }
                *down = Some(Instant::now());
            }
            Err(_) => {}
        }
    }

    #[cfg(test)]
    fn is_down(&self) -> bool {
        self.lock().is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.down.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An error that says the store cannot be reached or cannot take writes, rather than something
/// about this request.
pub(crate) fn unreachable(e: &StoreError) -> bool {
    match e {
        StoreError::Shared(inner) => unreachable(inner),
        StoreError::Database(e) => sql_unreachable(e),
        StoreError::Down { .. } => true,
        StoreError::Conflict(_) | StoreError::DuplicateKey | StoreError::Corrupt { .. } => false,
    }
}

fn sql_unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 53: insufficient resources (disk full, out of memory,
            // too many connections); 57P01–57P03: the server is shutting down or starting;
            // 25006: read-only transaction (a standby, during a failover).
            code.starts_with("08") || code.starts_with("53") || code.starts_with("57P") || code == "25006"
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(overall: u64, per_type: &[(&str, u64)]) -> std::sync::Arc<InFlight> {
        std::sync::Arc::new(InFlight::new(AdmissionSettings {
            max_in_flight: overall,
            per_type: per_type.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect(),
            ..AdmissionSettings::default()
        }))
    }

    #[test]
    fn the_overall_limit_counts_every_type_and_a_count_replaces_the_last() {
        let in_flight = limits(3, &[]);
        let mut a1 = in_flight.admit("a").expect("admitted");
        let mut b1 = in_flight.admit("b").expect("admitted");
        let a2 = in_flight.admit("a").expect("admitted");
        let busy = in_flight.admit("b").expect_err("over the limit");
        assert_eq!(
            (busy.in_flight, busy.limit, busy.scope.as_str()),
            (3, 3, "in all")
        );
        assert_eq!(busy.retry_after, Duration::from_secs(1));
        assert_eq!(
            busy.to_string(),
            "3 sagas in all are in flight, at the limit of 3; retry later"
        );
        // Two written, one given up before its write: room for one.
        in_flight.written([(&mut a1, true), (&mut b1, true)]);
        drop(a2);
        let _b2 = in_flight.admit("b").expect("room for one");
        assert!(in_flight.admit("a").is_err());
        // A count finds that only one of the written is still running.
        in_flight.lock().counted = [("a".to_owned(), 1)].into();
        let _b3 = in_flight.admit("b").expect("room again");
        assert!(in_flight.admit("a").is_err(), "1 counted + 2 being written");
        drop((a1, b1));
        assert!(
            in_flight.admit("a").is_err(),
            "dropping written guards changes nothing"
        );
    }

    #[test]
    fn a_failed_write_frees_its_place() {
        let in_flight = limits(0, &[("t", 1)]);
        let mut admitted = in_flight.admit("t").expect("admitted");
        assert!(in_flight.admit("t").is_err());
        in_flight.written([(&mut admitted, false)]);
        let mut again = in_flight.admit("t").expect("the failed write took no place");
        in_flight.written([(&mut again, true)]);
        assert!(in_flight.admit("t").is_err(), "written: in flight");
    }

    #[test]
    fn a_type_limit_refuses_that_type_only() {
        let in_flight = limits(0, &[("slow", 2)]);
        let _s1 = in_flight.admit("slow").expect("admitted");
        let _s2 = in_flight.admit("slow").expect("admitted");
        let busy = in_flight.admit("slow").expect_err("at the type's limit");
        assert_eq!(busy.scope, "of type `slow`");
        let fast: Vec<_> = (0..100).map(|_| in_flight.admit("fast")).collect();
        assert!(fast.iter().all(Result::is_ok), "no overall limit");
    }

    fn down() -> Result<(), StoreError> {
        Err(StoreError::Database(sqlx::Error::PoolTimedOut))
    }

    #[test]
    fn a_failure_to_reach_the_store_refuses_until_a_probe_succeeds() {
        let gate = StoreGate::default();
        assert_eq!(gate.check(), Ok(()));
        gate.record(&down());
        assert!(gate.is_down());
        assert_eq!(gate.check(), Err(RETRY_AFTER_DOWN), "refused at once");
        assert_eq!(gate.attempt(), Err(RETRY_AFTER_DOWN), "no probe due yet");
        // Once the probe interval has passed, exactly one write probes.
        *gate.lock() = Some(Instant::now() - PROBE_EVERY);
        assert_eq!(gate.check(), Ok(()), "a start may queue for the probe");
        assert_eq!(gate.attempt(), Ok(()), "the probe");
        assert_eq!(gate.attempt(), Err(RETRY_AFTER_DOWN), "only one");
        gate.record(&Ok::<_, StoreError>(()));
        assert!(!gate.is_down());
        assert_eq!(gate.attempt(), Ok(()));
    }

    #[test]
    fn errors_about_the_request_leave_the_gate_open() {
        let gate = StoreGate::default();
        gate.record(&Err::<(), _>(StoreError::DuplicateKey));
        gate.record(&Err::<(), _>(StoreError::Database(sqlx::Error::RowNotFound)));
        assert!(!gate.is_down());
        let shared = StoreError::Shared(std::sync::Arc::new(StoreError::Database(
            sqlx::Error::PoolTimedOut,
        )));
        assert!(unreachable(&shared));
    }
}
