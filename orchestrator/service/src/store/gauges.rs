//! Scrape-time gauges of the saga table.

/// Scrape-time gauges of the saga table: `sagas_by_state{saga_type,state}` for the states that
/// can still need attention (running, compensating, parked as failed) and
/// `saga_oldest_in_state_seconds{state}`, how long the least recently changed running or
/// compensating saga has been waiting. Both read indexes (`sagas_state_id`); a failed read leaves
/// the last values.
pub(crate) async fn sample_gauges(pool: sqlx::PgPool) {
    let counts: Result<Vec<(String, String, i64)>, _> = sqlx::query_as(
        "SELECT saga_type, state, count(*) FROM sagas \
         WHERE state IN ('running', 'compensating', 'failed') GROUP BY saga_type, state",
    )
    .fetch_all(&pool)
    .await;
    if let Ok(counts) = counts {
        // States with no saga left must read 0, not keep their last count.
        let mut seen = std::collections::HashSet::new();
        for (saga_type, state, n) in counts {
            seen.insert((saga_type.clone(), state.clone()));
            metrics::gauge!("sagas_by_state", "saga_type" => saga_type, "state" => state).set(n as f64);
        }
        let mut known = KNOWN_GAUGES.lock().unwrap_or_else(|e| e.into_inner());
        for (saga_type, state) in known.iter().filter(|k| !seen.contains(*k)) {
            metrics::gauge!("sagas_by_state", "saga_type" => saga_type.clone(), "state" => state.clone())
                .set(0.0);
        }
        known.extend(seen);
    }
    let oldest: Result<Vec<(String, f64)>, _> = sqlx::query_as(
        "SELECT s.state, COALESCE((SELECT extract(epoch FROM clock_timestamp() - min(updated_at))::float8 \
                                   FROM sagas WHERE state = s.state), 0) \
         FROM unnest(ARRAY['running', 'compensating']) AS s(state)",
    )
    .fetch_all(&pool)
    .await;
    if let Ok(oldest) = oldest {
        for (state, secs) in oldest {
            metrics::gauge!("saga_oldest_in_state_seconds", "state" => state).set(secs);
        }
    }
}

/// Every (type, state) `sagas_by_state` has reported, so one that empties is set back to 0.
static KNOWN_GAUGES: std::sync::Mutex<std::collections::BTreeSet<(String, String)>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());
