//! The load generator: drives sagas through the orchestrator's real gRPC API against the running
//! stack (see `scripts/bench.sh`), then reports throughput, start→terminal latency, outbox publish
//! lag, CPU seconds per 1,000 sagas and peak memory of every process, and correctness (every saga
//! terminal, the three databases consistent).
//!
//! - open loop (`--rate R --duration S`): starts R sagas per second whatever happens, as real
//!   clients would; the honest way to find the sustainable rate.
//! - closed loop (`--clients N --duration S`): N clients each start a saga and wait for it to end.
//!
//! `--mix` chooses the sagas: `register` (the default), `mixed` (with publish_post and
//! compensations), `publish` (publish_post only: three steps in a line) and `parallel`
//! (moderated_post for trusted authors only: the same three steps, the first two in parallel).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use saga_bench::audit::{Databases, audit};
use saga_bench::client::Orchestrator;
use saga_bench::timing::percentile;
use saga_proto::v1::saga_orchestrator_client::SagaOrchestratorClient;
use saga_proto::v1::{SagaState, StartSagaRequest, WatchSagasRequest};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::oneshot;

#[derive(Parser, Clone)]
#[command(about = "Drive sagas through the real stack and report throughput, latency, CPU and memory")]
struct Args {
    #[arg(long, value_enum, default_value_t = Mode::Open)]
    mode: Mode,
    /// Open loop: sagas started per second.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Closed loop: concurrent clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    #[arg(long, value_enum, default_value_t = Mix::Register)]
    mix: Mix,
    /// With `--mix register`: every Nth saga asks for the pen name of the saga before it, so one
    /// of the two is refused by the post service and its user deleted again — the peers'
    /// workload (`scripts/peers.sh`). 0: none.
    #[arg(long, default_value_t = 0)]
    compensate_every: u64,
    /// How long to wait for the last sagas to finish.
    #[arg(long, default_value_t = 120)]
    drain_secs: u64,
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    orchestrator: String,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/bench_orchestrator")]
    orchestrator_db: String,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/bench_users")]
    users_db: String,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/bench_posts")]
    posts_db: String,
    /// Metrics pages (service=url) for outbox lag.
    #[arg(long, default_values = ["orchestrator=http://127.0.0.1:18080", "user-service=http://127.0.0.1:18081", "post-service=http://127.0.0.1:18082"])]
    metrics: Vec<String>,
    /// Skip the consistency audit (e.g. for very long runs).
    #[arg(long)]
    no_audit: bool,
    /// The Kafka broker's process id (the JVM), whose CPU and memory are reported; without it,
    /// every `java` process running `kafka.Kafka` counts.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Print a report every this many seconds while the load runs (throughput, latency, publish
    /// lag, CPU and RSS of every process): the soak mode's per-minute lines.
    #[arg(long)]
    report_secs: Option<u64>,
    /// Start no sagas: measure for this many seconds what the running stack costs with no
    /// traffic (CPU as a share of one core, per process), and exit.
    #[arg(long)]
    idle: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Open,
    Closed,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mix {
    /// Only successful register_user sagas.
    Register,
    /// 50% register_user, 10% register_user with a taken e-mail (compensated), 30% publish_post,
    /// 10% publish_post with an empty title (compensated).
    Mixed,
    /// Only successful publish_post sagas (three steps in a line) for existing users: the
    /// straight-line baseline of `parallel`.
    Publish,
    /// Only successful moderated_post sagas with `trusted: true`: the same three participant steps
    /// as publish_post, its first two in parallel (a group), the moderator's wait skipped.
    Parallel,
}

impl Mix {
    /// Whether the workload needs users registered before the load.
    fn needs_users(self) -> bool {
        matches!(self, Mix::Mixed | Mix::Publish | Mix::Parallel)
    }
}

/// A process (or group of processes) whose CPU and memory are reported.
#[derive(Clone, Copy)]
enum Who {
    /// Every process with this `/proc/<pid>/comm` name.
    Comm(&'static str),
    /// This process.
    Pid(u32),
    /// `java` processes running `kafka.Kafka`.
    KafkaJvm,
}

/// The processes reported, by label.
fn watched(broker_pid: Option<u32>) -> Vec<(&'static str, Who)> {
    vec![
        ("orchestrator", Who::Comm("orchestrator")),
        ("user-service", Who::Comm("user-service")),
        ("post-service", Who::Comm("post-service")),
        ("kafka", broker_pid.map_or(Who::KafkaJvm, Who::Pid)),
        ("postgres", Who::Comm("postgres")),
    ]
}

/// CPU ticks (utime + stime) and memory of a set of processes.
#[derive(Clone, Copy, Default)]
struct Sample {
    ticks: u64,
    /// Peak resident set (VmHWM), summed.
    hwm_kb: u64,
    /// Resident set now (VmRSS), summed.
    rss_kb: u64,
    /// Proportional set now (shared pages split among sharers), summed.
    pss_kb: u64,
}

impl Who {
    fn matches(self, pid_dir: &std::path::Path) -> bool {
        let comm = || std::fs::read_to_string(pid_dir.join("comm")).unwrap_or_default();
        match self {
            Who::Comm(name) => comm().trim() == name,
            Who::Pid(pid) => pid_dir.file_name().and_then(|n| n.to_str()) == Some(&pid.to_string()),
            Who::KafkaJvm => {
                comm().trim() == "java"
                    && std::fs::read(pid_dir.join("cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("kafka.Kafka"))
            }
        }
    }
}

fn kb(line: &str, prefix: &str) -> Option<u64> {
    line.strip_prefix(prefix)?
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .ok()
}

fn sample(who: Who) -> Sample {
    let mut total = Sample::default();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return total;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        if !who.matches(&path) {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(path.join("stat"))
            && let Some(rest) = stat.rsplit(')').next()
        {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // After "(comm)": state is field 3, utime 14, stime 15 (1-based in proc(5)).
            let num = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
            total.ticks += num(14) + num(15);
        }
        if let Ok(status) = std::fs::read_to_string(path.join("status")) {
            for line in status.lines() {
                total.hwm_kb += kb(line, "VmHWM:").unwrap_or(0);
                total.rss_kb += kb(line, "VmRSS:").unwrap_or(0);
            }
        }
        if let Ok(rollup) = std::fs::read_to_string(path.join("smaps_rollup")) {
            total.pss_kb += rollup.lines().filter_map(|l| kb(l, "Pss:")).sum::<u64>();
        }
    }
    total
}

fn sample_all(procs: &[(&'static str, Who)]) -> BTreeMap<&'static str, Sample> {
    procs.iter().map(|(label, who)| (*label, sample(*who))).collect()
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The cumulative buckets `(le, count)` of a Prometheus histogram, sorted by bound.
fn histogram_buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count = l.rsplit(' ').next()?.parse::<f64>().ok()?;
            Some((le, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// The observations between two scrapes of the same histogram.
fn bucket_delta(now: &[(f64, f64)], before: &[(f64, f64)]) -> Vec<(f64, f64)> {
    now.iter()
        .map(|&(le, n)| {
            let old = before.iter().find(|(l, _)| *l == le).map_or(0.0, |(_, c)| *c);
            (le, n - old)
        })
        .collect()
}

/// The p-quantile of cumulative buckets (linear within the bucket).
fn quantile(buckets: &[(f64, f64)], p: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let target = p * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= target {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let span = count - prev.1;
            let frac = if span > 0.0 { (target - prev.1) / span } else { 1.0 };
            return Some(prev.0 + frac * (le - prev.0));
        }
        prev = (le, count);
    }
    None
}

/// The p-quantile of a Prometheus histogram.
fn histogram_quantile(text: &str, name: &str, p: f64) -> Option<f64> {
    quantile(&histogram_buckets(text, name), p)
}

/// Each service's publish-lag histogram, scraped now.
async fn lag_buckets(http: &reqwest::Client, metrics: &[String]) -> BTreeMap<String, Vec<(f64, f64)>> {
    let mut out = BTreeMap::new();
    for m in metrics {
        let Some((service, url)) = m.split_once('=') else {
            continue;
        };
        if let Ok(r) = http.get(format!("{url}/metrics")).send().await
            && let Ok(text) = r.text().await
        {
            out.insert(
                service.to_owned(),
                histogram_buckets(&text, "outbox_publish_lag_seconds"),
            );
        }
    }
    out
}

/// The periodic report (`--report-secs`): every interval, what finished in it and what every
/// process used. Returns the per-interval RSS of every process, for the summary.
async fn report_periodically(
    every: Duration,
    run_started: chrono::DateTime<chrono::Utc>,
    db: PgPool,
    metrics: Vec<String>,
    procs: Vec<(&'static str, Who)>,
    stop: tokio_util::sync::CancellationToken,
) -> Vec<BTreeMap<&'static str, u64>> {
    let http = reqwest::Client::new();
    let ticks = clock_ticks();
    let mut rss_series = Vec::new();
    let mut window_start = chrono::Utc::now();
    let mut before = sample_all(&procs);
    let mut lags_before = lag_buckets(&http, &metrics).await;
    let mut n = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        n += 1;
        let window_end = chrono::Utc::now();
        let now = sample_all(&procs);
        let lags = lag_buckets(&http, &metrics).await;
        let latencies: Vec<f64> = sqlx::query_scalar(
            "SELECT extract(epoch FROM updated_at - created_at)::float8 * 1000 FROM sagas \
             WHERE updated_at >= $1 AND updated_at < $2 AND created_at >= $3 \
               AND state IN ('completed', 'compensated', 'failed') ORDER BY 1",
        )
        .bind(window_start)
        .bind(window_end)
        .bind(run_started)
        .fetch_all(&db)
        .await
        .unwrap_or_default();
        let secs = (window_end - window_start).num_milliseconds() as f64 / 1000.0;
        let lag_text: Vec<String> = lags
            .iter()
            .map(|(service, buckets)| {
                let d = bucket_delta(buckets, lags_before.get(service).map_or(&[][..], Vec::as_slice));
                let q = |p| quantile(&d, p).map_or("-".to_owned(), |v| format!("{:.0}", v * 1000.0));
                format!("{service} {}/{}", q(0.5), q(0.99))
            })
            .collect();
        let cpu: Vec<String> = procs
            .iter()
            .map(|(label, _)| {
                let used = now[label].ticks.saturating_sub(before[label].ticks) as f64 / ticks;
                format!("{label} {:.0}", 100.0 * used / secs)
            })
            .collect();
        // PostgreSQL's backends share their buffers: their proportional set, not the sum of RSS.
        let rss: BTreeMap<&'static str, u64> = procs
            .iter()
            .map(|(l, _)| {
                let kb = if *l == "postgres" {
                    now[l].pss_kb
                } else {
                    now[l].rss_kb
                };
                (*l, kb / 1024)
            })
            .collect();
        println!(
            "[{:>4.0} s] finished {} ({:.1}/s), latency ms p50 {:.0} p99 {:.0}; publish lag ms p50/p99: {}; \
             CPU % of a core: {}; RSS MiB (postgres: PSS): {}",
            n as f64 * every.as_secs_f64(),
            latencies.len(),
            latencies.len() as f64 / secs,
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            lag_text.join(", "),
            cpu.join(", "),
            rss.iter()
                .map(|(l, v)| format!("{l} {v}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        rss_series.push(rss);
        window_start = window_end;
        before = now;
        lags_before = lags;
    }
    rss_series
}

/// The workload's saga requests.
struct Workload {
    mix: Mix,
    compensate_every: u64,
    run: String,
    users: Vec<String>,
    taken_emails: Vec<String>,
}

impl Workload {
    fn request(&self, n: u64) -> StartSagaRequest {
        // Every `compensate_every`th saga takes the pen name of the one before it.
        let twin = self.mix == Mix::Register
            && self.compensate_every > 0
            && n > 0
            && n.is_multiple_of(self.compensate_every);
        let name = format!("Load {} {}", self.run, if twin { n - 1 } else { n });
        let register = |email: String| StartSagaRequest {
            saga_type: "register_user".into(),
            payload_json: json!({"email": email, "name": name}).to_string(),
            idempotency_key: String::new(),
        };
        let fresh = || format!("load.{}.{n}@example.com", self.run);
        if self.mix == Mix::Register || self.users.is_empty() {
            return register(fresh());
        }
        let pick = |v: &Vec<String>| v[(n as usize * 7919) % v.len()].clone();
        let post = |saga_type: &str, title: String, trusted: Option<bool>| {
            let mut payload = json!({"user_id": pick(&self.users), "title": title, "body": "load"});
            if let Some(trusted) = trusted {
                payload["trusted"] = json!(trusted);
            }
            StartSagaRequest {
                saga_type: saga_type.into(),
                payload_json: payload.to_string(),
                idempotency_key: String::new(),
            }
        };
        match (self.mix, n % 10) {
            (Mix::Publish, _) => post("publish_post", format!("Post {n}"), None),
            (Mix::Parallel, _) => post("moderated_post", format!("Post {n}"), Some(true)),
            (_, 0..=4) => register(fresh()),
            (_, 5) => register(pick(&self.taken_emails)),
            // An empty title: refused by the post service, so the saga compensates.
            (_, 9) => post("publish_post", String::new(), None),
            _ => post("publish_post", format!("Post {n}"), None),
        }
    }
}

/// Waits for sagas to end, fed by one WatchSagas stream.
#[derive(Clone, Default)]
struct Finish {
    inner: Arc<Mutex<Waiting>>,
}

/// Sagas someone waits for, and sagas that ended before anyone waited.
type Waiting = (HashMap<String, oneshot::Sender<()>>, HashSet<String>);

impl Finish {
    fn done(&self, id: &str) {
        if let Ok(mut g) = self.inner.lock() {
            match g.0.remove(id) {
                Some(tx) => {
                    let _ = tx.send(());
                }
                None => {
                    g.1.insert(id.to_owned());
                }
            }
        }
    }

    fn wait(&self, id: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut g) = self.inner.lock() {
            if g.1.remove(id) {
                let _ = tx.send(());
            } else {
                g.0.insert(id.to_owned(), tx);
            }
        }
        rx
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(secs) = args.idle {
        idle(&args, secs).await;
        return Ok(());
    }
    // The consistency audit covers the sagas created from here on.
    let started_at = chrono::Utc::now() - chrono::Duration::seconds(5);
    let orchestrator = Orchestrator::connect(&args.orchestrator, Duration::from_secs(30)).await?;
    let grpc = SagaOrchestratorClient::connect(args.orchestrator.clone()).await?;
    let orch_db = PgPool::connect(&args.orchestrator_db)
        .await
        .context("orchestrator database")?;
    let run = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();

    // The post workloads need existing users.
    let mut workload = Workload {
        mix: args.mix,
        compensate_every: args.compensate_every,
        run: run.clone(),
        users: vec![],
        taken_emails: vec![],
    };
    if args.mix.needs_users() {
        let mut ids = vec![];
        for i in 0..100 {
            let email = format!("seed.{run}.{i}@example.com");
            ids.push(
                orchestrator
                    .start(
                        "register_user",
                        json!({"email": email, "name": format!("Seed {run} {i}")}),
                        "",
                    )
                    .await?,
            );
            workload.taken_emails.push(email);
        }
        for v in orchestrator.wait_terminal(&ids, Duration::from_secs(60)).await? {
            let context: serde_json::Value = serde_json::from_str(&v.context_json)?;
            workload
                .users
                .push(context["user_id"].as_str().unwrap_or_default().to_owned());
        }
    }
    let workload = Arc::new(workload);

    let ticks = clock_ticks();
    let procs = watched(args.broker_pid);
    let before = sample_all(&procs);
    let self_before = sample_self();
    let started = Instant::now();
    let stop_reports = tokio_util::sync::CancellationToken::new();
    let reports = args.report_secs.map(|secs| {
        tokio::spawn(report_periodically(
            Duration::from_secs(secs.max(1)),
            chrono::Utc::now(),
            orch_db.clone(),
            args.metrics.clone(),
            procs.clone(),
            stop_reports.clone(),
        ))
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // StartSaga calls refused by admission control (RESOURCE_EXHAUSTED), not errors.
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let duration = Duration::from_secs_f64(args.duration);

    match args.mode {
        Mode::Open => {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut n = 0u64;
            while started.elapsed() < duration {
                tick.tick().await;
                let (mut c, w, tx, errors, refused) = (
                    grpc.clone(),
                    workload.clone(),
                    tx.clone(),
                    errors.clone(),
                    refused.clone(),
                );
                tokio::spawn(async move {
                    match c.start_saga(w.request(n)).await {
                        Ok(r) => {
                            let _ = tx.send(r.into_inner().saga_id);
                        }
                        Err(e) if e.code() == tonic::Code::ResourceExhausted => {
                            refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(e) => {
                            if errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 3 {
                                eprintln!("StartSaga failed: {e}");
                            }
                        }
                    }
                });
                n += 1;
            }
        }
        Mode::Closed => {
            let finish = Finish::default();
            let mut stream = grpc
                .clone()
                .watch_sagas(WatchSagasRequest::default())
                .await?
                .into_inner();
            let f = finish.clone();
            tokio::spawn(async move {
                while let Some(Ok(s)) = stream.next().await {
                    if matches!(
                        SagaState::try_from(s.state),
                        Ok(SagaState::Completed | SagaState::Compensated | SagaState::Failed)
                    ) {
                        f.done(&s.saga_id);
                    }
                }
            });
            let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let mut clients = vec![];
            for _ in 0..args.clients {
                let (mut c, w, tx, f, counter, errors, refused) = (
                    grpc.clone(),
                    workload.clone(),
                    tx.clone(),
                    finish.clone(),
                    counter.clone(),
                    errors.clone(),
                    refused.clone(),
                );
                clients.push(tokio::spawn(async move {
                    while started.elapsed() < duration {
                        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        match c.start_saga(w.request(n)).await {
                            Ok(r) => {
                                let id = r.into_inner().saga_id;
                                let wait = f.wait(&id);
                                let _ = tx.send(id);
                                let _ = tokio::time::timeout(Duration::from_secs(30), wait).await;
                            }
                            Err(e) if e.code() == tonic::Code::ResourceExhausted => {
                                // Admission control: wait as the retry hint says.
                                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                let hint = tonic_types::StatusExt::get_details_retry_info(&e)
                                    .and_then(|r| r.retry_delay)
                                    .unwrap_or(Duration::from_millis(100));
                                tokio::time::sleep(hint).await;
                            }
                            Err(_) => {
                                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    }
                }));
            }
            for c in clients {
                let _ = c.await;
            }
        }
    }
    let load_time = started.elapsed();
    drop(tx);
    let mut ids = vec![];
    while let Some(id) = rx.recv().await {
        ids.push(id);
    }
    let uuids: Vec<uuid::Uuid> = ids.iter().filter_map(|i| i.parse().ok()).collect();

    // Drain: every started saga must end.
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain_secs);
    let mut terminal = 0i64;
    while Instant::now() < drain_deadline {
        terminal = sqlx::query_scalar(
            "SELECT count(*) FROM sagas WHERE id = ANY($1) AND state IN ('completed', 'compensated', 'failed')",
        )
        .bind(&uuids)
        .fetch_one(&orch_db)
        .await?;
        if terminal == uuids.len() as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let finished = started.elapsed();
    let after = sample_all(&procs);
    let self_after = sample_self();
    stop_reports.cancel();
    let rss_series = match reports {
        Some(task) => task.await.unwrap_or_default(),
        None => Vec::new(),
    };

    let rows: Vec<(
        String,
        f64,
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
    )> = sqlx::query_as(
        "SELECT state, extract(epoch FROM updated_at - created_at)::float8 * 1000, created_at, updated_at \
         FROM sagas WHERE id = ANY($1) AND state IN ('completed', 'compensated', 'failed')",
    )
    .bind(&uuids)
    .fetch_all(&orch_db)
    .await?;
    let mut by_state: BTreeMap<String, usize> = BTreeMap::new();
    let mut latencies: Vec<f64> = Vec::with_capacity(rows.len());
    let (mut first_start, mut last_end) = (None, None);
    for (state, ms, created, updated) in &rows {
        *by_state.entry(state.clone()).or_default() += 1;
        latencies.push(*ms);
        first_start = Some(first_start.map_or(*created, |f: chrono::DateTime<chrono::Utc>| f.min(*created)));
        last_end = Some(last_end.map_or(*updated, |l: chrono::DateTime<chrono::Utc>| l.max(*updated)));
    }
    latencies.sort_by(f64::total_cmp);
    let span = match (first_start, last_end) {
        (Some(a), Some(b)) => (b - a).num_milliseconds() as f64 / 1000.0,
        _ => f64::NAN,
    };

    let what = match args.mode {
        Mode::Open => format!(
            "open loop, {} sagas/s offered for {:.0} s",
            args.rate, args.duration
        ),
        Mode::Closed => format!("closed loop, {} clients for {:.0} s", args.clients, args.duration),
    };
    let mix = match args.mix {
        Mix::Register if args.compensate_every > 0 => format!(
            "register_user, every {}th asking for a pen name already taken (compensated)",
            args.compensate_every
        ),
        Mix::Register => "register_user".to_owned(),
        Mix::Mixed => "mixed (register, duplicate e-mail, publish, invalid title)".to_owned(),
        Mix::Publish => "publish_post (three steps in a line)".to_owned(),
        Mix::Parallel => {
            "moderated_post, trusted (two steps in parallel, the moderation skipped, the pivot)".to_owned()
        }
    };
    println!("== load: {what}; {mix}");
    println!(
        "started {} in {:.1} s ({:.1}/s), refused by admission control {}, StartSaga errors {}; terminal {} of {} ({}) {:.1} s after the first start",
        ids.len(),
        load_time.as_secs_f64(),
        ids.len() as f64 / load_time.as_secs_f64(),
        refused.load(std::sync::atomic::Ordering::Relaxed),
        errors.load(std::sync::atomic::Ordering::Relaxed),
        terminal,
        uuids.len(),
        by_state
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect::<Vec<_>>()
            .join(", "),
        finished.as_secs_f64()
    );
    println!(
        "achieved throughput: {:.1} sagas/s (terminal sagas over first start → last end: {span:.1} s)",
        rows.len() as f64 / span
    );
    println!(
        "latency start→terminal ms: p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    let http = reqwest::Client::new();
    let mut lags = vec![];
    for m in &args.metrics {
        let Some((service, url)) = m.split_once('=') else {
            continue;
        };
        if let Ok(r) = http.get(format!("{url}/metrics")).send().await
            && let Ok(text) = r.text().await
            && let Some(p99) = histogram_quantile(&text, "outbox_publish_lag_seconds", 0.99)
        {
            let p50 = histogram_quantile(&text, "outbox_publish_lag_seconds", 0.5).unwrap_or(f64::NAN);
            lags.push(format!(
                "{service} p50 {:.1} p99 {:.1}",
                p50 * 1000.0,
                p99 * 1000.0
            ));
        }
    }
    println!(
        "outbox publish lag ms (since each service started): {}",
        lags.join("; ")
    );
    let n = rows.len().max(1) as f64 / 1000.0;
    let mut cpu = vec![];
    let mut total = 0.0;
    for (p, _) in &procs {
        let secs = (after[p].ticks.saturating_sub(before[p].ticks)) as f64 / ticks;
        total += secs;
        cpu.push(format!("{p} {:.2}", secs / n));
    }
    let own = (self_after.0.saturating_sub(self_before.0)) as f64 / ticks;
    println!(
        "CPU seconds per 1,000 sagas: {}; loadgen {:.2}; total {:.2}",
        cpu.join("  "),
        own / n,
        (total + own) / n
    );
    println!(
        "memory MiB: {}",
        procs
            .iter()
            .map(|(p, _)| if *p == "postgres" {
                format!("postgres PSS {:.0}", after[p].pss_kb as f64 / 1024.0)
            } else {
                format!(
                    "{p} peak RSS {:.0} (PSS now {:.0})",
                    after[p].hwm_kb as f64 / 1024.0,
                    after[p].pss_kb as f64 / 1024.0
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    );
    if let (Some(first), Some(last)) = (rss_series.first(), rss_series.last()) {
        println!(
            "RSS MiB (postgres: PSS), first report → last: {}",
            first
                .iter()
                .map(|(p, v)| format!("{p} {v} → {}", last.get(p).copied().unwrap_or(0)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let all_terminal = terminal == uuids.len() as i64 && !uuids.is_empty();
    let consistent = if args.no_audit {
        println!(
            "correctness: every saga terminal: {}; audit skipped",
            yes(all_terminal)
        );
        true
    } else {
        let dbs = Databases {
            orchestrator: orch_db.clone(),
            users: PgPool::connect(&args.users_db).await?,
            posts: PgPool::connect(&args.posts_db).await?,
        };
        let report = audit(&args.orchestrator, &dbs, started_at).await?;
        println!(
            "correctness: every saga terminal: {}; databases consistent: {}{}",
            yes(all_terminal),
            yes(report.consistent()),
            if report.consistent() {
                String::new()
            } else {
                format!(" ({:?})", &report.violations[..report.violations.len().min(5)])
            }
        );
        report.consistent()
    };
    if all_terminal && consistent {
        Ok(())
    } else {
        anyhow::bail!("the run was not correct")
    }
}

/// What the stack costs with no traffic: CPU per process over `secs`, as a share of one core.
async fn idle(args: &Args, secs: u64) {
    let ticks = clock_ticks();
    let procs = watched(args.broker_pid);
    let before = sample_all(&procs);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let after = sample_all(&procs);
    let share = |label: &str| {
        let used = after[label].ticks.saturating_sub(before[label].ticks) as f64 / ticks;
        100.0 * used / secs as f64
    };
    let parts: Vec<String> = procs
        .iter()
        .map(|(label, _)| format!("{label} {:.2}%", share(label)))
        .collect();
    let services: f64 = ["orchestrator", "user-service", "post-service", "kafka"]
        .iter()
        .map(|l| share(l))
        .sum();
    println!("== idle: no traffic for {secs} s");
    println!("CPU, share of one core: {}", parts.join("  "));
    println!("three services and the broker together: {services:.2}% of one core");
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "NO" }
}

/// This process's own CPU ticks.
fn sample_self() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    (num(14) + num(15), 0, 0)
}
