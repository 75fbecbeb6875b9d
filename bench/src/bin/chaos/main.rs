//! The chaos harness (run it with `scripts/chaos.sh`): runs a stack of its own — two orchestrator
//! replicas, the user service and the post service as processes, an Apache Kafka broker, a
//! PostgreSQL cluster the harness may stop — drives a mixed workload through the gRPC API, and
//! while it runs injects one kind of fault per phase:
//!
//! - `kill`: SIGKILL of a random service every 3–8 s (a supervisor restarts it after 1 s, as a
//!   Kubernetes Deployment would);
//! - `term`: SIGTERM of a random service every 8–12 s (a rolling deploy);
//! - `postgres`: the database server stopped (fast) and started again after 5 s;
//! - `broker`: the Kafka broker (every node of the cluster) SIGKILLed and started again after 5 s,
//!   its log kept.
//!
//! With `--brokers 3` (a cluster as deployed: replication 3, `min.insync.replicas` 2; see
//! [`cluster`]) four more:
//!
//! - `leader-kill`: the leader of a command or reply partition SIGKILLed, started again after 10 s;
//!   again while the phase lasts;
//! - `broker-stall`: a node SIGSTOPped for 30 s (a stall, not a crash), then SIGCONTed;
//! - `controller-kill`: the active controller SIGKILLed, started again after 10 s;
//! - `rolling-restart`: every node SIGTERMed and started again in turn, each once its partitions are
//!   back in sync.
//!
//! Through every phase the lifecycle works too ([`lifecycle`]): retention removes sagas half a
//! minute after they end, archiving them first; the harness holds some sagas and holds and
//! releases others by bulk jobs.
//!
//! The workload (see [`request`]) has every built-in saga type: `register_user`, `publish_post`
//! (three steps in a line) and `moderated_post` — its quota reservation and draft run in parallel,
//! so a fault can hit one branch while the other is in flight. Most `moderated_post` sagas are for
//! a trusted author (no moderator); a few wait for a moderator, which the harness plays: it
//! approves or rejects them through `DecideApproval` with an operator credential of its own,
//! against either replica, through the same faults.
//!
//! Then it waits for quiet and reports, per phase and per kind of request, what became of every
//! saga the API accepted: completed, compensated by a business rule or a moderator's rejection (as
//! the workload intended), compensated or parked because a step gave up (timeouts: the target is
//! none), otherwise parked, with an unexpected outcome (a moderation that timed out is one),
//! unfinished, or lost (accepted but neither in the database nor in retention's archive); the
//! lifecycle's checks; and the consistency audit of the three databases,
//! whose post-count checks are what "applied twice" means here. The audit compares every saga with
//! the participants' ledgers and checks their data, whatever the saga type — a completed post saga
//! left a post and a counted slot, a compensated one neither — and the harness checks that it did
//! compare every `moderated_post` saga (an audit of that type alone). It exits non-zero on any of
//! lost, applied twice, unfinished, timed out, unexpected, unaudited, or drift. The fault schedule
//! and the workload come from `--seed`, so a failing run can be replayed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use rustix::process::{Pid, Signal, kill_process};
use saga_bench::audit::{Databases, audit};
use saga_bench::client::is_terminal;
use saga_proto::v1::saga_orchestrator_client::SagaOrchestratorClient;
use saga_proto::v1::{
    DecideApprovalRequest, GetSagaRequest, PhaseStatus, RunAuditRequest, SagaState, StartSagaRequest,
};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use uuid::Uuid;

mod cluster;
mod lifecycle;

#[derive(Parser, Clone)]
#[command(about = "Inject faults into a running saga coordinator and report what became of every saga")]
struct Args {
    /// Where the service binaries (orchestrator, user-service, post-service) are.
    #[arg(long)]
    bin_dir: PathBuf,
    /// scripts/kafka.sh, to run the broker.
    #[arg(long)]
    kafka_script: PathBuf,
    /// For logs, the broker's log directory and the report.
    #[arg(long)]
    work_dir: PathBuf,
    /// The PostgreSQL server the harness owns (no database name).
    #[arg(long)]
    database: String,
    /// The command that controls that server; `stop` and `start` are appended.
    #[arg(long)]
    pg_ctl: String,
    /// The first broker's port (its controller listens on the next one; with `--brokers 3` the
    /// others take the four ports after).
    #[arg(long, default_value_t = 29392)]
    broker_port: u16,
    /// Kafka nodes: 1, or 3 (replication 3, min.insync.replicas 2, and the cluster's own faults).
    #[arg(long, default_value_t = 1)]
    brokers: u16,
    /// Sagas started per second.
    #[arg(long, default_value_t = 30.0)]
    rate: f64,
    /// Seconds of each fault phase.
    #[arg(long, default_value_t = 90)]
    phase_secs: u64,
    /// Replays a run: the fault schedule and the workload follow from it (random if not given).
    #[arg(long)]
    seed: Option<u64>,
    /// Run only these faults (default: all, in order).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Fault>,
    /// How long every saga may take to end after the last fault.
    #[arg(long, default_value_t = 60)]
    quiet_secs: u64,
    /// More environment for every service (`KEY=VALUE`, repeatable), e.g. client settings to
    /// compare (`APP_KAFKA__CONSUMER__GROUP_PROTOCOL=consumer`).
    #[arg(long = "env", value_parser = parse_env)]
    extra_env: Vec<(String, String)>,
    /// Run the services without static group membership (`APP_KAFKA__INSTANCE_ID`), to compare.
    #[arg(long)]
    no_static_membership: bool,
    /// Seconds a finished saga is kept before retention removes it (archived first); 0 turns
    /// retention, holds and bulk jobs off.
    #[arg(long, default_value_t = 30)]
    retention_secs: u64,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Fault {
    Kill,
    Term,
    Postgres,
    Broker,
    LeaderKill,
    BrokerStall,
    ControllerKill,
    RollingRestart,
}

impl Fault {
    fn describe(self) -> &'static str {
        match self {
            Fault::Kill => "SIGKILL of a random service every 3-8 s",
            Fault::Term => "SIGTERM of a random service every 8-12 s",
            Fault::Postgres => "PostgreSQL stopped (fast) and restarted",
            Fault::Broker => "Kafka broker SIGKILLed and restarted, log kept",
            Fault::LeaderKill => "partition leader SIGKILLed, back after 10 s",
            Fault::BrokerStall => "a broker SIGSTOPped for 30 s",
            Fault::ControllerKill => "active controller SIGKILLed, back after 10 s",
            Fault::RollingRestart => "rolling restart of the three brokers",
        }
    }

    /// Faults of a cluster of several nodes.
    fn needs_cluster(self) -> bool {
        matches!(
            self,
            Fault::LeaderKill | Fault::BrokerStall | Fault::ControllerKill | Fault::RollingRestart
        )
    }
}

/// The topics whose partitions' leaders `leader-kill` picks from (commands and replies).
const LEADER_TOPICS: [&str; 3] = ["user.commands", "post.commands", "saga.replies"];

/// Uniform in [lo, hi).
fn between(rng: &mut fastrand::Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.f64()
}

/// A service process the harness runs, restarts and kills.
struct Service {
    name: &'static str,
    binary: &'static str,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    /// Restart after it exits (off while the harness stops it on purpose).
    supervised: bool,
    restarts: u32,
}

/// A harness that stops early (an error) leaves no service behind.
impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Service {
    fn start(&mut self, bin_dir: &std::path::Path) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(bin_dir.join(self.binary))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    fn signal(&self, signal: Signal) {
        if let Some(child) = &self.child {
            let _ = kill_process(Pid::from_child(child), signal);
        }
    }

    /// True if it was running and has exited now.
    fn exited(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(_))) => {
                self.child = None;
                true
            }
            _ => false,
        }
    }
}

/// The expected end of a request of the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Completed,
    /// Refused by a business rule, so compensated.
    Refused,
}

/// What a request of the workload is, for the report's lines per kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Register,
    Publish,
    /// `moderated_post` with `trusted: true`: the parallel group, no moderator.
    ModeratedTrusted,
    /// `moderated_post` for the harness's moderator to approve.
    ModeratedApproved,
    /// `moderated_post` for the harness's moderator to reject.
    ModeratedRejected,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Register,
        Kind::Publish,
        Kind::ModeratedTrusted,
        Kind::ModeratedApproved,
        Kind::ModeratedRejected,
    ];

    fn describe(self) -> &'static str {
        match self {
            Kind::Register => "register_user",
            Kind::Publish => "publish_post",
            Kind::ModeratedTrusted => "moderated_post, trusted (parallel group)",
            Kind::ModeratedApproved => "moderated_post, approved by the moderator",
            Kind::ModeratedRejected => "moderated_post, rejected by the moderator",
        }
    }

    /// The moderator's decision for this kind, if it needs one.
    fn decision(self) -> Option<bool> {
        match self {
            Kind::ModeratedApproved => Some(true),
            Kind::ModeratedRejected => Some(false),
            _ => None,
        }
    }
}

/// One accepted saga.
struct Started {
    id: Uuid,
    phase: usize,
    expect: Expect,
    kind: Kind,
}

/// What the harness's moderator did.
#[derive(Default)]
struct Moderation {
    /// Decisions the orchestrator answered OK, approvals and rejections.
    approved: u64,
    rejected: u64,
    /// Sagas whose approval step was no longer waiting when the moderator came to decide: a
    /// decision whose answer was lost (the replica died after it committed), or a wait that ended
    /// otherwise (the report shows which).
    no_longer_waiting: u64,
    /// Sagas the moderator could not decide within its patience.
    gave_up: u64,
}

/// What the harness shares with its tasks.
struct Shared {
    services: Mutex<Vec<Service>>,
    started: Mutex<Vec<Started>>,
    /// Requests the API refused for good (after retrying on both replicas).
    not_accepted: Mutex<BTreeMap<usize, u64>>,
    /// Per phase, every refused StartSaga attempt: seconds to its answer, and its code.
    refusals: Mutex<BTreeMap<usize, Vec<(f64, tonic::Code)>>>,
    moderation: Mutex<Moderation>,
    lifecycle: Mutex<lifecycle::Lifecycle>,
    phase: std::sync::atomic::AtomicUsize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| Uuid::now_v7().as_u64_pair().1);
    let faults: Vec<Fault> = if args.only.is_empty() {
        let mut all = vec![Fault::Kill, Fault::Term, Fault::Postgres, Fault::Broker];
        if args.brokers > 1 {
            all.extend([
                Fault::LeaderKill,
                Fault::BrokerStall,
                Fault::ControllerKill,
                Fault::RollingRestart,
            ]);
        }
        all
    } else {
        args.only.clone()
    };
    if let Some(f) = faults.iter().find(|f| f.needs_cluster() && args.brokers < 3) {
        anyhow::bail!("the fault {f:?} needs a cluster: --brokers 3");
    }
    println!(
        "chaos: seed {seed}; {} broker(s); {} sagas/s; {} s per phase: {}",
        args.brokers,
        args.rate,
        args.phase_secs,
        faults
            .iter()
            .map(|f| format!("{f:?}").to_lowercase())
            .collect::<Vec<_>>()
            .join(", ")
    );
    std::fs::create_dir_all(&args.work_dir)?;

    // Fresh databases on the harness's own server.
    let admin = PgPool::connect(&format!("{}/postgres", args.database)).await?;
    for db in ["chaos_orchestrator", "chaos_users", "chaos_posts"] {
        sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .execute(&admin)
            .await?;
    }
    admin.close().await;

    // Retention's archive, shared by both replicas, empty at the start.
    let archive = args.work_dir.join("archive");
    if archive.exists() {
        std::fs::remove_dir_all(&archive)?;
    }
    std::fs::create_dir_all(&archive)?;

    // The broker(s), with their logs in the work directory (kept across restarts).
    let mut kafka =
        cluster::Cluster::start(&args.kafka_script, &args.work_dir, args.broker_port, args.brokers).await?;
    let brokers = kafka.bootstrap();

    let shared = Arc::new(Shared {
        services: Mutex::new(services(&args, &brokers)),
        started: Mutex::new(Vec::new()),
        not_accepted: Mutex::new(BTreeMap::new()),
        refusals: Mutex::new(BTreeMap::new()),
        moderation: Mutex::new(Moderation::default()),
        lifecycle: Mutex::new(lifecycle::Lifecycle::default()),
        phase: std::sync::atomic::AtomicUsize::new(0),
    });
    for s in lock(&shared.services).iter_mut() {
        s.start(&args.bin_dir)?;
    }
    let stop = CancellationToken::new();
    let supervisor = tokio::spawn(supervise(shared.clone(), args.bin_dir.clone(), stop.clone()));

    // The audit covers the sagas created from here on (its cross-checks cover all data).
    let started_at = chrono::Utc::now() - chrono::Duration::seconds(5);
    let endpoints: Vec<Channel> = [18171, 18172]
        .iter()
        .map(|p| Endpoint::from_shared(format!("http://127.0.0.1:{p}")).map(|e| e.connect_lazy()))
        .collect::<Result<_, _>>()?;
    let clients: Vec<SagaOrchestratorClient<Channel>> =
        endpoints.into_iter().map(SagaOrchestratorClient::new).collect();
    wait_for_orchestrators(&clients).await?;
    let db = Databases {
        orchestrator: connect(&format!("{}/chaos_orchestrator", args.database)).await?,
        users: connect(&format!("{}/chaos_users", args.database)).await?,
        posts: connect(&format!("{}/chaos_posts", args.database)).await?,
    };

    // Users for publish_post, and e-mails already taken.
    // Seeded: the faults' timing and victims replay from `--seed`.
    let mut rng = fastrand::Rng::with_seed(seed);
    let workload = Arc::new(seed_users(&clients, &db, seed).await?);
    println!("seeded {} users", workload.users.len());

    // The load runs through every phase; each saga is counted in the phase it started in.
    let load = tokio::spawn(drive(
        shared.clone(),
        clients.clone(),
        workload.clone(),
        seed,
        args.rate,
        args.retention_secs > 0,
        stop.clone(),
    ));
    let bulk = (args.retention_secs > 0).then(|| {
        tokio::spawn(lifecycle::bulk_jobs(
            clients.clone(),
            shared.clone(),
            stop.clone(),
        ))
    });
    let mut last_fault = Instant::now();
    for (i, fault) in faults.iter().enumerate() {
        shared.phase.store(i, std::sync::atomic::Ordering::SeqCst);
        println!("phase {}: {}", i + 1, fault.describe());
        let end = Instant::now() + Duration::from_secs(args.phase_secs);
        match fault {
            Fault::Kill | Fault::Term => {
                let (signal, name, lo, hi) = if *fault == Fault::Kill {
                    (Signal::KILL, "KILL", 3.0, 8.0)
                } else {
                    (Signal::TERM, "TERM", 8.0, 12.0)
                };
                loop {
                    let wait = Duration::from_secs_f64(between(&mut rng, lo, hi));
                    if Instant::now() + wait >= end {
                        break;
                    }
                    tokio::time::sleep(wait).await;
                    let services = lock(&shared.services);
                    let victim = &services[rng.usize(..services.len())];
                    println!(
                        "  {:>5.1} s: SIG{name} {}",
                        phase_time(end, args.phase_secs),
                        victim.name
                    );
                    victim.signal(signal);
                    last_fault = Instant::now();
                }
            }
            Fault::Postgres => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                println!(
                    "  {:>5.1} s: PostgreSQL stopped",
                    phase_time(end, args.phase_secs)
                );
                pg_ctl(&args, "stop")?; // pg_ctlcluster stops fast by default
                tokio::time::sleep(Duration::from_secs(5)).await;
                pg_ctl(&args, "start")?;
                println!(
                    "  {:>5.1} s: PostgreSQL started",
                    phase_time(end, args.phase_secs)
                );
                last_fault = Instant::now();
            }
            Fault::Broker => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                println!("  {:>5.1} s: broker SIGKILLed", phase_time(end, args.phase_secs));
                kafka.kill_all();
                tokio::time::sleep(Duration::from_secs(5)).await;
                kafka.restart_all().await?;
                println!("  {:>5.1} s: broker started", phase_time(end, args.phase_secs));
                last_fault = Instant::now();
            }
            Fault::LeaderKill => {
                // Once, then again while the phase leaves room for another kill and its 10 s.
                tokio::time::sleep(Duration::from_secs(5)).await;
                loop {
                    let leaders: Vec<_> = kafka
                        .leaders(&LEADER_TOPICS)?
                        .into_iter()
                        .filter(|(_, _, leader)| *leader >= 0)
                        .collect();
                    anyhow::ensure!(!leaders.is_empty(), "no partition has a leader");
                    let (topic, partition, leader) = &leaders[rng.usize(..leaders.len())];
                    let k = u32::try_from(*leader)
                        .ok()
                        .and_then(|id| kafka.index_of(id))
                        .context("the leader is not a node of the cluster")?;
                    let what = format!("leader of {topic}/{partition}");
                    kill_for_10_s(&mut kafka, k, &what, end, args.phase_secs).await?;
                    last_fault = Instant::now();
                    let replicas = settle(&kafka).await?;
                    println!(
                        "  {:>5.1} s: replicas {replicas}",
                        phase_time(end, args.phase_secs)
                    );
                    tokio::time::sleep(Duration::from_secs(15)).await;
                    if end.saturating_duration_since(Instant::now()) < Duration::from_secs(15) {
                        break;
                    }
                }
            }
            Fault::BrokerStall => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let k = rng.usize(..kafka.size());
                let stall = Duration::from_secs(30.min(args.phase_secs.saturating_sub(5).max(5)));
                println!(
                    "  {:>5.1} s: broker {} SIGSTOPped for {} s",
                    phase_time(end, args.phase_secs),
                    kafka.id(k),
                    stall.as_secs()
                );
                kafka.signal(k, Signal::STOP);
                tokio::time::sleep(stall).await;
                kafka.signal(k, Signal::CONT);
                println!(
                    "  {:>5.1} s: broker {} SIGCONTed",
                    phase_time(end, args.phase_secs),
                    kafka.id(k)
                );
                last_fault = Instant::now();
            }
            Fault::ControllerKill => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let id = kafka.active_controller()?;
                let k = kafka
                    .index_of(id)
                    .context("the active controller is not a node")?;
                kill_for_10_s(&mut kafka, k, "the active controller", end, args.phase_secs).await?;
                last_fault = Instant::now();
            }
            Fault::RollingRestart => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                for k in 0..kafka.size() {
                    println!(
                        "  {:>5.1} s: broker {} SIGTERMed",
                        phase_time(end, args.phase_secs),
                        kafka.id(k)
                    );
                    kafka.stop(k).await;
                    kafka.restart(k).await?;
                    let replicas = settle(&kafka).await?;
                    println!(
                        "  {:>5.1} s: broker {} back, replicas {replicas}",
                        phase_time(end, args.phase_secs),
                        kafka.id(k)
                    );
                }
                last_fault = Instant::now();
            }
        }
        tokio::time::sleep(end.saturating_duration_since(Instant::now())).await;
    }
    stop.cancel();
    let _ = load.await;
    if let Some(bulk) = bulk {
        let _ = bulk.await;
    }
    let _ = supervisor.await;
    // The last restarted service must be back before "quiet" starts counting.
    for s in lock(&shared.services).iter_mut() {
        if s.child.is_none() {
            s.start(&args.bin_dir)?;
        }
    }

    // Quiet: every accepted saga must end.
    let ids: Vec<Uuid> = lock(&shared.started).iter().map(|s| s.id).collect();
    let quiet_end = last_fault.max(Instant::now()) + Duration::from_secs(args.quiet_secs);
    let mut open = i64::MAX;
    while Instant::now() < quiet_end {
        open = sqlx::query_scalar(
            "SELECT count(*) FROM sagas WHERE id = ANY($1) AND state NOT IN ('completed', 'compensated', 'failed')",
        )
        .bind(&ids)
        .fetch_one(&db.orchestrator)
        .await
        .unwrap_or(i64::MAX);
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "quiet: {} of {} sagas still running {:.0} s after the last fault",
        open,
        ids.len(),
        (Instant::now() - last_fault).as_secs_f64()
    );

    // The database first, then the archive: retention archives a saga before it removes it, so
    // one missing from what was read here is in the archive read after.
    let rows: Vec<(Uuid, String, Option<String>, f64)> = sqlx::query_as(
        "SELECT id, state, failure_reason, extract(epoch FROM updated_at - created_at)::float8 FROM sagas",
    )
    .fetch_all(&db.orchestrator)
    .await?;
    let archived = lifecycle::read_archive(&archive)?;
    // Sagas retention removed are known by their archived documents.
    let mut ends: BTreeMap<Uuid, (String, Option<String>, f64)> = archived
        .iter()
        .map(|(id, a)| (*id, (a.state.clone(), a.failure_reason.clone(), a.seconds)))
        .collect();
    ends.extend(rows.into_iter().map(|(id, s, r, d)| (id, (s, r, d))));
    let mut ok = report(&shared, &faults, &db, &ends, started_at).await?;
    if args.retention_secs > 0 {
        let done = std::mem::take(&mut *lock(&shared.lifecycle));
        ok &= lifecycle::check(&clients, &done, &archived, &db.orchestrator).await?;
    }
    for s in lock(&shared.services).iter_mut() {
        s.supervised = false;
        s.signal(Signal::TERM);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for s in lock(&shared.services).iter_mut() {
        s.signal(Signal::KILL);
    }
    kafka.kill_all();
    if ok {
        println!("chaos: OK (seed {seed})");
        Ok(())
    } else {
        anyhow::bail!(
            "chaos: the run was not correct (replay it with --seed {seed}); logs in {}",
            args.work_dir.display()
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn phase_time(end: Instant, phase_secs: u64) -> f64 {
    phase_secs as f64 - end.saturating_duration_since(Instant::now()).as_secs_f64()
}

fn pg_ctl(args: &Args, action: &str) -> anyhow::Result<()> {
    let status = Command::new("sh")
        .args(["-c", &format!("{} {action}", args.pg_ctl)])
        .status()?;
    anyhow::ensure!(status.success(), "`{} {action}` failed", args.pg_ctl);
    Ok(())
}

async fn connect(url: &str) -> anyhow::Result<PgPool> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match PgPool::connect(url).await {
            Ok(pool) => return Ok(pool),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("connecting to {url}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Waits up to a minute until every command and reply partition has all its replicas in sync
/// again; says whether they are.
async fn settle(kafka: &cluster::Cluster) -> anyhow::Result<&'static str> {
    let synced = kafka
        .wait_in_sync(&LEADER_TOPICS, Duration::from_secs(60))
        .await?;
    Ok(if synced {
        "in sync"
    } else {
        "still not in sync after 60 s"
    })
}

/// SIGKILLs Kafka node `k` (`what` it was), starts it again 10 s later and waits until it serves.
async fn kill_for_10_s(
    kafka: &mut cluster::Cluster,
    k: usize,
    what: &str,
    end: Instant,
    phase_secs: u64,
) -> anyhow::Result<()> {
    let id = kafka.id(k);
    println!(
        "  {:>5.1} s: broker {id} ({what}) SIGKILLed",
        phase_time(end, phase_secs)
    );
    kafka.kill(k);
    tokio::time::sleep(Duration::from_secs(10)).await;
    kafka.restart(k).await?;
    println!("  {:>5.1} s: broker {id} started", phase_time(end, phase_secs));
    Ok(())
}

/// Two orchestrator replicas sharing one database, the user service and the post service.
fn services(args: &Args, brokers: &str) -> Vec<Service> {
    let common = |db: &str| -> Vec<(String, String)> {
        [
            ("APP_KAFKA__BROKERS", brokers.to_owned()),
            // Topics with a replica on every node (3: min.insync.replicas 2, from the brokers).
            ("APP_KAFKA__REPLICATION", args.brokers.to_string()),
            ("APP_DATABASE__URL", format!("{}/{db}", args.database)),
            ("APP_DATABASE__CREATE_IF_MISSING", "true".into()),
            ("OTEL_TRACES_EXPORTER", "none".into()),
            ("RUST_LOG", "info".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    };
    let with = |db: &str, more: &[(&str, String)]| {
        let mut env = common(db);
        env.extend(more.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        env
    };
    let service = |name: &'static str, binary: &'static str, mut env: Vec<(String, String)>| {
        if !args.no_static_membership {
            // Each replica's own name, which survives its restarts (in Kubernetes: POD_NAME).
            env.push(("APP_KAFKA__INSTANCE_ID".into(), name.into()));
        }
        env.extend(args.extra_env.iter().cloned());
        Service {
            name,
            binary,
            env,
            log: args.work_dir.join(format!("{name}.log")),
            child: None,
            supervised: true,
            restarts: 0,
        }
    };
    // A replica: its ports, the consistency audit (the participants' HTTP ports, below, and the
    // demo's cross-checks), and the moderator's operator credential.
    let replica = |grpc: u16, http: u16| {
        let mut env = with(
            "chaos_orchestrator",
            &[
                ("APP_GRPC__LISTEN", format!("127.0.0.1:{grpc}")),
                ("APP_HTTP__LISTEN", format!("127.0.0.1:{http}")),
                ("APP_AUTH__OPERATORS__CHAOS", MODERATOR_TOKEN.into()),
                ("APP_AUDIT__PARTICIPANTS__USERS", "http://127.0.0.1:18163".into()),
                ("APP_AUDIT__PARTICIPANTS__POSTS", "http://127.0.0.1:18164".into()),
                (
                    "APP_AUDIT__CROSS_CHECKS__AUTHORS_REPLICATE_USERS",
                    "users.users = posts.authors".into(),
                ),
                (
                    "APP_AUDIT__CROSS_CHECKS__POST_COUNTS_AGREE",
                    "users.post_counts = posts.post_counts".into(),
                ),
            ],
        );
        if args.retention_secs > 0 {
            let days = args.retention_secs as f64 / 86_400.0;
            env.extend([
                ("APP_RETENTION__MAX_AGE_DAYS".to_owned(), days.to_string()),
                ("APP_RETENTION__INTERVAL_MS".to_owned(), "2000".to_owned()),
                (
                    "APP_RETENTION__ARCHIVE_DIR".to_owned(),
                    args.work_dir.join("archive").display().to_string(),
                ),
            ]);
        }
        env
    };
    vec![
        service("orchestrator-a", "orchestrator", replica(18171, 18161)),
        service("orchestrator-b", "orchestrator", replica(18172, 18162)),
        service(
            "user-service",
            "user-service",
            with(
                "chaos_users",
                &[
                    ("APP_HTTP__LISTEN", "127.0.0.1:18163".into()),
                    ("APP_RULES__DEFAULT_POST_QUOTA", "100000000".into()),
                ],
            ),
        ),
        service(
            "post-service",
            "post-service",
            with("chaos_posts", &[("APP_HTTP__LISTEN", "127.0.0.1:18164".into())]),
        ),
    ]
}

/// Restarts a service 1 s after it exits, like a Deployment restarts a pod's container.
async fn supervise(shared: Arc<Shared>, bin_dir: PathBuf, stop: CancellationToken) {
    let mut exited_at: BTreeMap<&'static str, Instant> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let mut services = lock(&shared.services);
        for s in services.iter_mut() {
            if s.exited() {
                exited_at.insert(s.name, Instant::now());
            }
            if s.child.is_none()
                && s.supervised
                && exited_at
                    .get(s.name)
                    .is_some_and(|t| t.elapsed() >= Duration::from_secs(1))
            {
                exited_at.remove(s.name);
                s.restarts += 1;
                if let Err(e) = s.start(&bin_dir) {
                    eprintln!("could not restart {}: {e:#}", s.name);
                }
            }
        }
    }
}

async fn wait_for_orchestrators(clients: &[SagaOrchestratorClient<Channel>]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    for c in clients {
        loop {
            let probe = c
                .clone()
                .list_sagas(saga_proto::v1::ListSagasRequest::default())
                .await;
            if probe.is_ok() {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "an orchestrator did not come up");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

struct Workload {
    users: Vec<String>,
    taken: Vec<String>,
}

/// Registers users first (their ids feed publish_post; their e-mails, duplicates).
async fn seed_users(
    clients: &[SagaOrchestratorClient<Channel>],
    db: &Databases,
    seed: u64,
) -> anyhow::Result<Workload> {
    let mut ids = Vec::new();
    let mut taken = Vec::new();
    for i in 0..40 {
        let email = format!("seed.{seed}.{i}@example.com");
        let req = register(
            &email,
            &format!("Seed {seed} {i}"),
            &format!("chaos-{seed}-seed-{i}"),
        );
        let id = start(clients, i, req, None).await.context("seeding users")?;
        ids.push(id);
        taken.push(email);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let rows: Vec<(String, serde_json::Value)> =
            sqlx::query_as("SELECT state, context FROM sagas WHERE id = ANY($1)")
                .bind(&ids)
                .fetch_all(&db.orchestrator)
                .await?;
        if rows.len() == ids.len() && rows.iter().all(|(s, _)| s == "completed") {
            let users = rows
                .iter()
                .filter_map(|(_, c)| c["user_id"].as_str().map(str::to_owned))
                .collect();
            return Ok(Workload { users, taken });
        }
        anyhow::ensure!(Instant::now() < deadline, "the seed users did not register");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn register(email: &str, name: &str, key: &str) -> StartSagaRequest {
    StartSagaRequest {
        saga_type: "register_user".into(),
        payload_json: json!({"email": email, "name": name}).to_string(),
        idempotency_key: key.into(),
    }
}

/// A request of the workload: what to start, how it should end, and what it is.
struct Request {
    start: StartSagaRequest,
    expect: Expect,
    kind: Kind,
}

/// The n-th request of the workload, in blocks of twenty: eight new users and two reusing an
/// e-mail (refused); three valid `publish_post` and one with an empty title (refused); three
/// `moderated_post` for trusted authors (the parallel group, no moderator) and one with an empty
/// title (the draft refused while the reservation runs beside it, then undone); one each for the
/// moderator to approve and to reject.
fn request(w: &Workload, seed: u64, n: usize) -> Request {
    let key = format!("chaos-{seed}-{n}");
    let pick = |v: &Vec<String>| v[(n * 7919) % v.len()].clone();
    let post = |saga_type: &str, title: String, trusted: Option<bool>| {
        let mut payload = json!({"user_id": pick(&w.users), "title": title, "body": "chaos"});
        if let Some(trusted) = trusted {
            payload["trusted"] = json!(trusted);
        }
        StartSagaRequest {
            saga_type: saga_type.into(),
            payload_json: payload.to_string(),
            idempotency_key: key.clone(),
        }
    };
    let (start, expect, kind) = match n % 20 {
        0..=7 => (
            register(
                &format!("load.{seed}.{n}@example.com"),
                &format!("Load {seed} {n}"),
                &key,
            ),
            Expect::Completed,
            Kind::Register,
        ),
        8 | 9 => (
            register(&pick(&w.taken), &format!("Dup {seed} {n}"), &key),
            Expect::Refused,
            Kind::Register,
        ),
        10..=12 => (
            post("publish_post", format!("Post {n}"), None),
            Expect::Completed,
            Kind::Publish,
        ),
        13 => (
            post("publish_post", String::new(), None),
            Expect::Refused,
            Kind::Publish,
        ),
        14..=16 => (
            post("moderated_post", format!("Post {n}"), Some(true)),
            Expect::Completed,
            Kind::ModeratedTrusted,
        ),
        17 => (
            post("moderated_post", String::new(), Some(true)),
            Expect::Refused,
            Kind::ModeratedTrusted,
        ),
        18 => (
            post("moderated_post", format!("Post {n}"), Some(false)),
            Expect::Completed,
            Kind::ModeratedApproved,
        ),
        _ => (
            post("moderated_post", format!("Post {n}"), None),
            Expect::Refused,
            Kind::ModeratedRejected,
        ),
    };
    Request { start, expect, kind }
}

/// How long the harness waits for one StartSaga answer; a refusal should come at once.
const START_PATIENCE: Duration = Duration::from_secs(10);

/// The slowest a refused StartSaga attempt may be answered: the orchestrator waits about a
/// second for a database connection, then refuses (coordinator/admission.rs).
const REFUSAL_LIMIT_SECS: f64 = 3.0;

/// Starts a saga on one replica, or the other while it is down; the idempotency key makes a
/// retry safe. Gives up after 30 s. With `record`, every refused attempt is noted for the phase
/// (how long its answer took, and its code).
async fn start(
    clients: &[SagaOrchestratorClient<Channel>],
    n: usize,
    req: StartSagaRequest,
    record: Option<(&Shared, usize)>,
) -> anyhow::Result<Uuid> {
    let started = on_either(clients, n, |mut c| {
        let mut request = tonic::Request::new(req.clone());
        request.set_timeout(START_PATIENCE);
        async move {
            let began = Instant::now();
            let answer = c.start_saga(request).await;
            if let (Err(e), Some((shared, phase))) = (&answer, record) {
                lock(&shared.refusals)
                    .entry(phase)
                    .or_default()
                    .push((began.elapsed().as_secs_f64(), e.code()));
            }
            answer
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("StartSaga: {}: {}", e.code(), e.message()))?;
    Ok(started.saga_id.parse()?)
}

/// Tries `call` on one replica after the other, from replica `first`, until it answers OK or
/// 30 s have passed; then the last error.
async fn on_either<T, F, Fut>(
    clients: &[SagaOrchestratorClient<Channel>],
    first: usize,
    mut call: F,
) -> Result<T, tonic::Status>
where
    F: FnMut(SagaOrchestratorClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut attempt = first;
    loop {
        match call(clients[attempt % clients.len()].clone()).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The operator credential the harness's moderator uses (`APP_AUTH__OPERATORS__CHAOS`).
const MODERATOR_TOKEN: &str = "chaos-moderator-token-0123456789";

/// How a moderation ended.
enum Moderated {
    /// The orchestrator took the decision (answered OK).
    Decided,
    /// The approval step was no longer waiting, or the saga had ended.
    NoLongerWaiting,
    GaveUp,
}

/// The harness's moderator for one saga: waits (polling `GetSaga` on either replica) until the
/// saga waits at its approval step, then approves or rejects it with `DecideApproval`, trying the
/// replicas in turn while one is down. A decision is not idempotent: when the answer to one is
/// lost, the next try finds the step no longer waiting, and the saga's end shows what happened.
/// Gives up after two minutes.
async fn moderate(clients: &[SagaOrchestratorClient<Channel>], id: Uuid, approve: bool) -> Moderated {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut attempt = 0usize;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        attempt += 1;
        let mut client = clients[attempt % clients.len()].clone();
        let view = match client
            .get_saga(GetSagaRequest {
                saga_id: id.to_string(),
            })
            .await
        {
            Ok(r) => match r.into_inner().saga {
                Some(view) => view,
                None => continue,
            },
            Err(_) => continue,
        };
        let wait = view
            .steps
            .iter()
            .find(|s| s.waits_for == "approval")
            .and_then(|s| s.action.as_ref())
            .map(|a| a.status);
        let waiting = wait == Some(PhaseStatus::InFlight as i32) && view.state == SagaState::Running as i32;
        if !waiting {
            // Before the wait (the parallel group still running), or past it.
            if wait == Some(PhaseStatus::Pending as i32) && !is_terminal(view.state) {
                continue;
            }
            return Moderated::NoLongerWaiting;
        }
        let request = lifecycle::as_operator(DecideApprovalRequest {
            saga_id: id.to_string(),
            approved: approve,
            reason: if approve { "reads well" } else { "spam" }.into(),
            step_index: None,
        });
        if client.decide_approval(request).await.is_ok() {
            return Moderated::Decided;
        }
    }
    Moderated::GaveUp
}

/// Starts `rate` sagas a second until stopped, each in a task of its own.
async fn drive(
    shared: Arc<Shared>,
    clients: Vec<SagaOrchestratorClient<Channel>>,
    workload: Arc<Workload>,
    seed: u64,
    rate: f64,
    holds: bool,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0usize;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let phase = shared.phase.load(std::sync::atomic::Ordering::SeqCst);
        let Request {
            start: req,
            expect,
            kind,
        } = request(&workload, seed, n);
        let (shared, clients) = (shared.clone(), clients.clone());
        tasks.spawn(async move {
            let id = match start(&clients, n, req, Some((shared.as_ref(), phase))).await {
                Ok(id) => id,
                Err(_) => {
                    *lock(&shared.not_accepted).entry(phase).or_default() += 1;
                    return;
                }
            };
            lock(&shared.started).push(Started {
                id,
                phase,
                expect,
                kind,
            });
            if holds && lifecycle::held_request(n) {
                lifecycle::hold(&clients, &shared, id).await;
            }
            if let Some(approve) = kind.decision() {
                let outcome = moderate(&clients, id, approve).await;
                let mut m = lock(&shared.moderation);
                match outcome {
                    Moderated::Decided if approve => m.approved += 1,
                    Moderated::Decided => m.rejected += 1,
                    Moderated::NoLongerWaiting => m.no_longer_waiting += 1,
                    Moderated::GaveUp => m.gave_up += 1,
                }
            }
        });
        n += 1;
    }
    while tasks.join_next().await.is_some() {}
}

/// Replica a's gRPC API, where the consistency audit is run.
const ORCHESTRATOR_A: &str = "http://127.0.0.1:18171";

/// What became of one accepted saga, against what the workload intended.
enum Outcome {
    /// Completed as intended; start to end in seconds.
    Completed(f64),
    /// Compensated by a business rule or a moderator's rejection, as intended.
    Refused(f64),
    /// Compensated or parked because a step gave up.
    TimedOut,
    /// Parked as failed otherwise.
    Parked,
    Unfinished,
    /// Ended otherwise than intended.
    Unexpected,
    Lost,
}

/// Counts of outcomes: one line of the report.
#[derive(Default)]
struct Tally {
    accepted: u64,
    completed: u64,
    refused: u64,
    timed_out: u64,
    parked: u64,
    unexpected: u64,
    unfinished: u64,
    lost: u64,
    /// Start to end of every saga that ended as intended, in seconds.
    durations: Vec<f64>,
}

impl Tally {
    fn add(&mut self, outcome: &Outcome) {
        self.accepted += 1;
        match *outcome {
            Outcome::Completed(secs) => {
                self.completed += 1;
                self.durations.push(secs);
            }
            Outcome::Refused(secs) => {
                self.refused += 1;
                self.durations.push(secs);
            }
            Outcome::TimedOut => self.timed_out += 1,
            Outcome::Parked => self.parked += 1,
            Outcome::Unfinished => self.unfinished += 1,
            Outcome::Unexpected => self.unexpected += 1,
            Outcome::Lost => self.lost += 1,
        }
    }

    /// Every saga ended as intended.
    fn ok(&self) -> bool {
        self.timed_out == 0
            && self.parked == 0
            && self.unexpected == 0
            && self.unfinished == 0
            && self.lost == 0
    }

    fn line(&mut self, what: &str, not_accepted: u64) -> String {
        self.durations.sort_by(f64::total_cmp);
        let q = |p: f64| {
            self.durations
                .get(((self.durations.len().max(1) - 1) as f64 * p).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        let durations = format!("{:.2} / {:.2} / {:.2}", q(0.5), q(0.99), q(1.0));
        format!(
            "{what:<44} {:>8} {:>9} {:>9} {:>9} {:>7} {:>10} {:>10} {:>5} {not_accepted:>12}  {durations}",
            self.accepted,
            self.completed,
            self.refused,
            self.timed_out,
            self.parked,
            self.unexpected,
            self.unfinished,
            self.lost,
        )
    }
}

/// Per phase and per kind of request, what became of every saga (its end by id, from the
/// database or the archive); then the audit. True if the run was correct.
async fn report(
    shared: &Shared,
    faults: &[Fault],
    db: &Databases,
    by_id: &BTreeMap<Uuid, (String, Option<String>, f64)>,
    started_at: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<bool> {
    let mut by_phase: Vec<Tally> = faults.iter().map(|_| Tally::default()).collect();
    let mut by_kind: BTreeMap<Kind, Tally> = BTreeMap::new();
    let mut examples: Vec<String> = Vec::new();
    for s in lock(&shared.started).iter() {
        let outcome = match by_id.get(&s.id) {
            None => Outcome::Lost,
            Some((state, reason, secs)) => {
                let reason = reason.as_deref().unwrap_or_default();
                match (state.as_str(), s.expect) {
                    ("completed", Expect::Completed) => Outcome::Completed(*secs),
                    // A business rule's refusal, or a moderator's rejection.
                    ("compensated", Expect::Refused) if reason.contains("was rejected") => {
                        Outcome::Refused(*secs)
                    }
                    ("compensated" | "failed", _) if reason.contains("gave up after") => Outcome::TimedOut,
                    ("failed", _) => Outcome::Parked,
                    ("running" | "compensating", _) => Outcome::Unfinished,
                    _ => Outcome::Unexpected,
                }
            }
        };
        by_phase[s.phase].add(&outcome);
        by_kind.entry(s.kind).or_default().add(&outcome);
        let what = match outcome {
            Outcome::Completed(_) | Outcome::Refused(_) => continue,
            Outcome::TimedOut => "gave up",
            Outcome::Parked => "parked",
            Outcome::Unfinished => "unfinished",
            Outcome::Unexpected => "unexpected",
            Outcome::Lost => "lost",
        };
        if examples.len() < 10 {
            let (state, reason) = by_id
                .get(&s.id)
                .map(|(state, reason, _)| (state.as_str(), reason.as_deref().unwrap_or_default()))
                .unwrap_or(("absent", ""));
            examples.push(format!(
                "{what}: {} saga {} {state} ({reason})",
                s.kind.describe(),
                s.id
            ));
        }
    }
    let not_accepted = lock(&shared.not_accepted).clone();
    let header = |first: &str| {
        format!(
            "{first:<44} {:>8} {:>9} {:>9} {:>9} {:>7} {:>10} {:>10} {:>5} {:>12}  duration s p50 / p99 / max",
            "accepted",
            "completed",
            "refused",
            "timed out",
            "parked",
            "unexpected",
            "unfinished",
            "lost",
            "not accepted",
        )
    };
    println!();
    println!("{}", header("fault"));
    let mut ok = true;
    for (i, (fault, t)) in faults.iter().zip(by_phase.iter_mut()).enumerate() {
        println!(
            "{}",
            t.line(fault.describe(), not_accepted.get(&i).copied().unwrap_or(0))
        );
        ok &= t.ok();
    }
    // Refused StartSaga attempts (each retried on the other replica): answered at once, not
    // after a wait for a database that is not there.
    println!();
    println!("StartSaga attempts refused, per fault: count by code; seconds to the answer p50 / p99 / max");
    let refusals = lock(&shared.refusals).clone();
    for (i, fault) in faults.iter().enumerate() {
        let mut attempts = refusals.get(&i).cloned().unwrap_or_default();
        let mut codes: BTreeMap<String, usize> = BTreeMap::new();
        for (_, code) in &attempts {
            *codes.entry(format!("{code:?}")).or_default() += 1;
        }
        attempts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let q = |p: f64| {
            attempts
                .get(((attempts.len().max(1) - 1) as f64 * p).round() as usize)
                .map_or(0.0, |a| a.0)
        };
        let codes: Vec<String> = codes.iter().map(|(c, n)| format!("{c} {n}")).collect();
        println!(
            "{:<44} {:>8}  {}  {:.2} / {:.2} / {:.2}",
            fault.describe(),
            attempts.len(),
            if codes.is_empty() {
                "-".to_owned()
            } else {
                codes.join(", ")
            },
            q(0.5),
            q(0.99),
            q(1.0)
        );
        if q(1.0) > REFUSAL_LIMIT_SECS {
            println!(
                "  a refusal took {:.2} s (limit {REFUSAL_LIMIT_SECS} s): StartSaga must fail fast",
                q(1.0)
            );
            ok = false;
        }
    }
    // The same sagas by kind of request (requests never accepted have no kind here).
    println!();
    println!("{}", header("request"));
    for kind in Kind::ALL {
        if let Some(t) = by_kind.get_mut(&kind) {
            println!("{}", t.line(kind.describe(), 0));
        }
    }
    for e in &examples {
        println!("  {e}");
    }
    {
        let m = lock(&shared.moderation);
        println!(
            "moderator: {} approved, {} rejected, {} no longer waiting when decided, {} given up",
            m.approved, m.rejected, m.no_longer_waiting, m.gave_up
        );
        ok &= m.gave_up == 0;
    }
    let restarts: Vec<String> = lock(&shared.services)
        .iter()
        .map(|s| format!("{} {}", s.name, s.restarts))
        .collect();
    println!("restarts: {}", restarts.join(", "));
    let audit = audit(ORCHESTRATOR_A, db, started_at).await?;
    // Post counts that disagree with the posts: a quota slot or a post applied twice (or lost).
    let twice = audit
        .findings
        .iter()
        .filter(|f| f.kind == "replica_drift" && f.message.starts_with("post_counts_agree"))
        .count();
    println!(
        "audit: {} users, {} authors, {} posts; repeats answered from inboxes: {}; applied twice: {twice}; \
         records of sagas retention removed: {}; databases consistent: {}",
        audit.users,
        audit.authors,
        audit.posts,
        audit.repeats_answered,
        audit.removed_by_retention,
        if audit.consistent() { "yes" } else { "NO" }
    );
    for v in audit.violations.iter().take(10) {
        println!("  {v}");
    }
    let parallel = audit_covers(db, started_at, "moderated_post").await?;
    Ok(ok && audit.consistent() && parallel)
}

/// The audit compared every saga of `saga_type` the run created with the participants' ledgers:
/// an audit of that type alone checked as many sagas as the orchestrator's database holds (while
/// retention removes some: no fewer than are left, no more than there were), every
/// step's topic had a participant to compare with, and nothing was found.
async fn audit_covers(
    db: &Databases,
    started_at: chrono::DateTime<chrono::Utc>,
    saga_type: &str,
) -> anyhow::Result<bool> {
    // Retention may remove some while the audit reads: it must have compared at least as many as
    // are left after it, and no more than there were before.
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM sagas WHERE saga_type = $1 AND created_at >= $2")
            .bind(saga_type)
            .bind(started_at)
            .fetch_one(&db.orchestrator)
            .await
    };
    let created = count().await?;
    let mut client = SagaOrchestratorClient::connect(ORCHESTRATOR_A).await?;
    let report = client
        .run_audit(RunAuditRequest {
            since: Some(prost_types::Timestamp {
                seconds: started_at.timestamp(),
                nanos: 0,
            }),
            until: None,
            saga_type: saga_type.into(),
            unfinished_after_seconds: None,
        })
        .await
        .with_context(|| format!("the audit of {saga_type} (RunAudit)"))?
        .into_inner();
    let left = count().await?;
    let covered = (left as u64..=created as u64).contains(&report.sagas_checked)
        && report.unaudited_topics.is_empty()
        && report.findings.is_empty();
    println!(
        "audit of {saga_type} alone: {} of {created} sagas compared with {} ledger entries; steps not audited: {}; \
         findings: {} — {}",
        report.sagas_checked,
        report.ledger_entries,
        if report.unaudited_topics.is_empty() {
            "none".to_owned()
        } else {
            report.unaudited_topics.join(", ")
        },
        report.findings.len(),
        if covered { "covered" } else { "NOT covered" }
    );
    Ok(covered)
}
