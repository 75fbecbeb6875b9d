//! Timing helpers of the benchmarks: percentiles, and timed GETs of a JSON API.

use std::time::Instant;

/// The `p` quantile (0..=1) of sorted samples, by the nearest rank; NaN when there are none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

/// `iterations` GETs of `url`, each timed to its parsed JSON body: the times (ms, sorted) and how
/// many rows the last body's `sagas` held (1 for a body without a list). A response that is not
/// a success is an error naming the URL, the status and the body.
pub async fn time_get(
    http: &reqwest::Client,
    url: &str,
    iterations: usize,
) -> anyhow::Result<(Vec<f64>, usize)> {
    let mut times = Vec::with_capacity(iterations);
    let mut rows = 0;
    for _ in 0..iterations {
        let t = Instant::now();
        let response = http.get(url).send().await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await?;
        anyhow::ensure!(status.is_success(), "{url}: {status}: {body}");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        rows = body["sagas"].as_array().map_or(1, Vec::len);
    }
    times.sort_by(f64::total_cmp);
    Ok((times, rows))
}
