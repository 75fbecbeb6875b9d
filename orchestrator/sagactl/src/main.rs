//! `sagactl`: the command-line client of the saga orchestrator.
//!
//! Reads (`get`, `list`, `watch`, `jobs list|get`), `start` and `signal` work without a credential
//! unless the server protects them; the operator actions (`replay`, `retry`, `abort`, `approve`,
//! `reject`, `jobs cancel`) need an operator token (`--token` or `SAGACTL_TOKEN`). Output is a human table by default, JSON with `--output json`
//! (JSON lines for `watch` and bulk `replay`). Exit codes are listed in `sagactl --help`.

mod audit;
mod output;
mod when;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use saga_proto::v1 as pb;
use saga_proto::v1::saga_orchestrator_client::SagaOrchestratorClient;
use serde_json::Value;
use tokio_stream::StreamExt;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

const EXIT_CODES: &str = "Exit codes:
  0  success (watch: the saga completed or was compensated)
  1  unexpected error
  2  bad command line
  3  the orchestrator is unreachable or unavailable, or refuses new sagas for now (retry later)
  4  no such saga (or job)
  5  invalid argument (the message names it)
  6  the action does not apply to the saga as it is now (e.g. replaying a running saga)
  7  missing, unknown or insufficient credential (use --token or SAGACTL_TOKEN)
  8  watch: the saga ended failed, parked for an operator
  9  audit: drift found (the report lists every finding)";

#[derive(Parser)]
#[command(name = "sagactl", version, about = "Start, inspect and operate sagas", after_help = EXIT_CODES)]
struct Cli {
    /// The orchestrator's gRPC address.
    #[arg(
        long,
        env = "SAGACTL_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    server: String,
    /// PEM file of the CA that signed the orchestrator's certificate (TLS; implies https).
    /// Without it, an https:// server is checked against the system's CA store.
    #[arg(long, env = "SAGACTL_CA_FILE", value_name = "PEM", global = true)]
    ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for an orchestrator that requires mutual TLS; with --key-file.
    #[arg(long, env = "SAGACTL_CERT_FILE", value_name = "PEM", global = true)]
    cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "SAGACTL_KEY_FILE", value_name = "PEM", global = true)]
    key_file: Option<PathBuf>,
    /// Bearer token: an operator's for replay, retry, abort, approve, reject and jobs cancel.
    #[arg(long, env = "SAGACTL_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Format::Table, global = true)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Start a saga, e.g. `sagactl start register_user --payload '{"email":"a@b.co","name":"Ann"}'`.
    Start {
        saga_type: String,
        /// The input as a JSON object.
        #[arg(long, default_value = "{}")]
        payload: String,
        /// Idempotency key: repeating the command never starts a second saga.
        #[arg(long)]
        key: Option<String>,
    },
    /// Show one saga: its steps, forward and compensation side by side, and its history.
    Get { saga_id: String },
    /// List sagas, newest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Most sagas to show.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Write every saga the filters select, oldest first, with its history, as JSON lines (the
    /// export format `saga-export/1`, docs/OPERATIONS.md), e.g. `sagactl export --type
    /// register_user --until 2026-01-01T00:00:00Z > old.jsonl`.
    Export {
        #[command(flatten)]
        filter: FilterArgs,
        /// Most sagas to export (every one when left out).
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Follow a saga, printing every change, until it ends (or forever with --follow).
    Watch {
        saga_id: String,
        #[arg(long)]
        follow: bool,
    },
    /// Replay the compensation of a parked saga, or of every failed saga matching the filters.
    Replay(ReplayArgs),
    /// Act on every saga a filter selects, as a durable job: `sagactl bulk abort --type X --step Y
    /// --reason …` prints the plan (how many, a sample) and starts nothing; add --yes to start.
    Bulk(BulkArgs),
    /// Operator jobs (bulk replays): list them, show one with its results, cancel one.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Send a step of a parked saga again (one whose outcome is unknown), instead of compensating.
    Retry {
        saga_id: String,
        /// The step index; the step the saga stopped at when left out.
        #[arg(long)]
        step: Option<u32>,
        #[arg(long)]
        reason: String,
    },
    /// Stop a running saga and compensate what it did.
    Abort {
        saga_id: String,
        #[arg(long)]
        reason: String,
    },
    /// Place a legal hold on a saga: retention never removes it while it is held.
    Hold {
        saga_id: String,
        #[arg(long)]
        reason: String,
    },
    /// Release a saga's legal hold.
    Release {
        saga_id: String,
        #[arg(long)]
        reason: String,
    },
    /// Send a saga the signal one of its waits declares, e.g.
    /// `sagactl signal <saga id> payment_confirmed --payload '{"payment_ref":"P-1"}'`.
    Signal {
        saga_id: String,
        signal: String,
        /// The signal's fields as a JSON object.
        #[arg(long, default_value = "{}")]
        payload: String,
        /// Idempotency key: the same signal sent again with it applies once.
        #[arg(long)]
        key: Option<String>,
    },
    /// Approve a saga waiting at an approval step: it goes on.
    Approve(DecisionArgs),
    /// Reject a saga waiting at an approval step: the step fails and the saga compensates.
    Reject(DecisionArgs),
    /// Compare the orchestrator's record of recent sagas with every participant's inbox ledger
    /// and list where they disagree (exit code 9 when they do).
    Audit {
        /// Sagas created at or after TIME (RFC 3339, HH:MM today UTC, or an age like 2h).
        #[arg(long, value_name = "TIME", default_value = "24h")]
        since: String,
        /// Sagas created before TIME (default: now).
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// Only sagas of this type, e.g. register_user.
        #[arg(long = "type")]
        saga_type: Option<String>,
        /// Sagas running, compensating or parked for longer than this (e.g. 15m) are findings;
        /// the server's setting when left out.
        #[arg(long, value_name = "AGE")]
        unfinished_after: Option<String>,
    },
}

#[derive(Args)]
struct ReplayArgs {
    /// One saga; leave out to select by filters.
    saga_id: Option<String>,
    #[command(flatten)]
    filter: FilterArgs,
    /// Select every failed saga (needed when no saga id and no filter is given).
    #[arg(long)]
    all_failed: bool,
    /// Why: recorded in each saga's history.
    #[arg(long)]
    reason: String,
    /// Show what would be sent; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Sagas replayed per second (bulk); the server's default when left out.
    #[arg(long)]
    rate: Option<f64>,
    /// Most sagas to replay (bulk).
    #[arg(long)]
    limit: Option<u32>,
    /// Bulk: start the replay as a job and return at once (follow it with `sagactl jobs`).
    /// Without it, the results are printed as the job records them; either way the job
    /// runs on the orchestrator, and goes on if sagactl stops.
    #[arg(long, conflicts_with = "dry_run")]
    detach: bool,
}

impl ReplayArgs {
    /// Whether any of the bulk replay's options is given.
    fn selects_in_bulk(&self) -> bool {
        !self.filter.is_empty()
            || self.all_failed
            || self.rate.is_some()
            || self.limit.is_some()
            || self.detach
    }
}

/// `sagactl approve` and `sagactl reject`.
#[derive(Args)]
struct DecisionArgs {
    saga_id: String,
    /// The approval step's index; needed only when several approvals wait at once.
    #[arg(long)]
    step: Option<u32>,
    /// Why: recorded in the saga's history (and, for a rejection, its failure reason).
    #[arg(long)]
    reason: String,
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Jobs, newest first.
    List {
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One job, with its results (one line per saga it handled).
    Get { job_id: String },
    /// Stop a running job before its next saga; what it did stays done.
    Cancel {
        job_id: String,
        #[arg(long)]
        reason: String,
    },
    /// Pause a running job: no replica works it until it is resumed.
    Pause {
        job_id: String,
        #[arg(long)]
        reason: String,
    },
    /// Resume a paused job: it goes on after the last saga it handled.
    Resume {
        job_id: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum BulkAction {
    Replay,
    Abort,
    Retry,
    Hold,
    Release,
}

#[derive(Args)]
struct BulkArgs {
    /// What to do to each saga.
    #[arg(value_enum)]
    action: BulkAction,
    #[command(flatten)]
    filter: FilterArgs,
    /// Required; recorded on the job and in each saga's history.
    #[arg(long)]
    reason: String,
    /// Sagas per second (the server's default when left out).
    #[arg(long)]
    rate: Option<f64>,
    /// Most sagas the job handles (the server's default when left out).
    #[arg(long)]
    limit: Option<u32>,
    /// Start the job (without it, only the plan is printed).
    #[arg(long)]
    yes: bool,
    /// With --yes: wait for the job to end and print its report.
    #[arg(long)]
    wait: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum StateArg {
    Running,
    Compensating,
    Completed,
    Compensated,
    Failed,
}

#[derive(Args, Default)]
struct FilterArgs {
    /// Saga type, e.g. register_user.
    #[arg(long = "type")]
    saga_type: Option<String>,
    #[arg(long, value_enum)]
    state: Option<StateArg>,
    /// The step sagas are at or stopped at, e.g. create_post.
    #[arg(long)]
    step: Option<String>,
    /// Created at or after TIME (RFC 3339, HH:MM today UTC, or an age like 2h).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Created before TIME.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Last changed at or after TIME.
    #[arg(long, value_name = "TIME")]
    updated_since: Option<String>,
    /// Last changed before TIME.
    #[arg(long, value_name = "TIME")]
    updated_until: Option<String>,
    /// Leading hex digits of the saga id.
    #[arg(long)]
    id_prefix: Option<String>,
    /// Idempotency key.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// The definition version sagas run on.
    #[arg(long)]
    version: Option<u32>,
    /// Text the failure reason contains (case-insensitive).
    #[arg(long, value_name = "TEXT")]
    failure: Option<String>,
    /// A business key (one of the definitions' `search_keys`) with exactly this value, e.g.
    /// `--key email=a@example.com`; repeat to require several.
    #[arg(long, value_name = "NAME=VALUE")]
    key: Vec<String>,
    /// A business key whose value starts with PREFIX, e.g. `--key-prefix order_id=2026-`.
    #[arg(long, value_name = "NAME=PREFIX")]
    key_prefix: Vec<String>,
}

impl FilterArgs {
    fn is_empty(&self) -> bool {
        self.saga_type.is_none()
            && self.state.is_none()
            && self.step.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.updated_since.is_none()
            && self.updated_until.is_none()
            && self.id_prefix.is_none()
            && self.idempotency_key.is_none()
            && self.version.is_none()
            && self.failure.is_none()
            && self.key.is_empty()
            && self.key_prefix.is_empty()
    }

    /// `--key` and `--key-prefix` as key conditions.
    fn keys(&self) -> Result<Vec<pb::KeyMatch>, Failure> {
        let one = |arg: &str, text: &String, prefix: bool| {
            let (name, value) = text.split_once('=').ok_or_else(|| {
                Failure::Usage(format!(
                    "{arg} `{text}`: expected NAME=VALUE, e.g. {arg} email=a@example.com \
                     (the idempotency key is --idempotency-key)"
                ))
            })?;
            Ok(pb::KeyMatch {
                name: name.trim().to_owned(),
                value: value.to_owned(),
                prefix,
            })
        };
        let exact = self.key.iter().map(|k| one("--key", k, false));
        let prefixes = self.key_prefix.iter().map(|k| one("--key-prefix", k, true));
        exact.chain(prefixes).collect()
    }

    fn to_pb(&self) -> Result<pb::SagaFilter, Failure> {
        let now = chrono::Utc::now();
        let at = |arg: &Option<String>| arg.as_deref().map(|a| timestamp(a, now)).transpose();
        let state = self.state.map_or(pb::SagaState::Unspecified, |s| match s {
            StateArg::Running => pb::SagaState::Running,
            StateArg::Compensating => pb::SagaState::Compensating,
            StateArg::Completed => pb::SagaState::Completed,
            StateArg::Compensated => pb::SagaState::Compensated,
            StateArg::Failed => pb::SagaState::Failed,
        });
        Ok(pb::SagaFilter {
            saga_type: self.saga_type.clone().unwrap_or_default(),
            state: state as i32,
            current_step: self.step.clone().unwrap_or_default(),
            created_after: at(&self.since)?,
            created_before: at(&self.until)?,
            updated_after: at(&self.updated_since)?,
            updated_before: at(&self.updated_until)?,
            id_prefix: self.id_prefix.clone().unwrap_or_default(),
            idempotency_key: self.idempotency_key.clone().unwrap_or_default(),
            definition_version: self.version.unwrap_or(0),
            failure_contains: self.failure.clone().unwrap_or_default(),
            keys: self.keys()?,
        })
    }
}

/// TIME on the command line (see [`when::parse`]) as a wire timestamp.
fn timestamp(text: &str, now: chrono::DateTime<chrono::Utc>) -> Result<prost_types::Timestamp, Failure> {
    let t = when::parse(text, now).map_err(Failure::Usage)?;
    Ok(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    })
}

/// Why sagactl stops, and with which exit code.
enum Failure {
    Unreachable(String),
    Status(Status),
    Usage(String),
    SagaFailed,
    /// The audit found drift (already printed).
    Drift,
    Other(String),
}

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        // A call that never reached the server (the connection broke, or the TLS handshake was
        // refused, e.g. mutual TLS without a client certificate) comes back as a status with a
        // transport error as its source: report it as unreachable, with the innermost reason.
        // (A status the server sent has no source.)
        match std::error::Error::source(&s) {
            Some(source) => Failure::Unreachable(saga_proto::innermost_cause(source)),
            None => Failure::Status(s),
        }
    }
}

impl Failure {
    fn exit(self, server: &str, tls: bool) -> ExitCode {
        let (code, message) = match self {
            Failure::Unreachable(why) if tls => (
                3,
                format!(
                    "cannot reach the orchestrator at {server} over TLS: {why} (is it running? does \
                     --ca-file name the CA of its certificate, and does it require a client \
                     certificate: --cert-file/--key-file?)"
                ),
            ),
            Failure::Unreachable(why) => (
                3,
                format!(
                    "cannot reach the orchestrator at {server}: {why} (is it running? see --server / SAGACTL_SERVER)"
                ),
            ),
            Failure::Status(s) => {
                let code = match s.code() {
                    Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => 3,
                    Code::NotFound => 4,
                    Code::InvalidArgument | Code::OutOfRange => 5,
                    Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => 6,
                    Code::Unauthenticated | Code::PermissionDenied => 7,
                    _ => 1,
                };
                (code, s.message().to_owned())
            }
            Failure::Usage(m) => (2, m),
            Failure::SagaFailed => return ExitCode::from(8),
            Failure::Drift => return ExitCode::from(9),
            Failure::Other(m) => (1, m),
        };
        eprintln!("error: {message}");
        ExitCode::from(code)
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

type Client = SagaOrchestratorClient<InterceptedService<Channel, Bearer>>;

/// TLS settings from the command line: `None` for a plain-text `http://` server.
impl Cli {
    /// Whether the connection is to use TLS: an https:// server, or TLS files given.
    fn wants_tls(&self) -> bool {
        self.server.starts_with("https://")
            || self.ca_file.is_some()
            || self.cert_file.is_some()
            || self.key_file.is_some()
    }
}

fn tls_config(cli: &Cli) -> Result<Option<ClientTlsConfig>, Failure> {
    if !cli.wants_tls() {
        return Ok(None);
    }
    // A client identity is a certificate and its key: both or neither.
    if cli.cert_file.is_some() != cli.key_file.is_some() {
        return Err(Failure::Usage(
            "--cert-file and --key-file go together: the client certificate and its private key".into(),
        ));
    }
    if cli.server.starts_with("http://") {
        return Err(Failure::Usage(format!(
            "--server {} is plain text, but TLS files were given: use https://",
            cli.server
        )));
    }
    let read = |flag: &str, path: &PathBuf| {
        std::fs::read(path).map_err(|e| Failure::Usage(format!("{flag} {}: {e}", path.display())))
    };
    let mut tls = ClientTlsConfig::new();
    tls = match &cli.ca_file {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read("--ca-file", ca)?)),
        None => tls.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&cli.cert_file, &cli.key_file) {
        tls = tls.identity(Identity::from_pem(
            read("--cert-file", cert)?,
            read("--key-file", key)?,
        ));
    }
    Ok(Some(tls))
}

async fn connect(cli: &Cli) -> Result<Client, Failure> {
    let (server, token) = (cli.server.as_str(), cli.token.as_deref());
    let tls = tls_config(cli)?;
    let bearer = token
        .map(|t| {
            format!("Bearer {t}")
                .parse()
                .map_err(|_| Failure::Usage("--token: must be printable ASCII".into()))
        })
        .transpose()?;
    let endpoint = Endpoint::from_shared(server.to_owned())
        .map_err(|e| Failure::Usage(format!("--server: `{server}` is not a URL: {e}")))?
        .connect_timeout(Duration::from_secs(3));
    let endpoint = match tls {
        Some(tls) => endpoint
            .tls_config(tls)
            .map_err(|e| Failure::Usage(format!("TLS settings: {e}")))?,
        None => endpoint,
    };
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Failure::Unreachable(saga_proto::innermost_cause(&e)))?;
    Ok(SagaOrchestratorClient::with_interceptor(channel, Bearer(bearer)))
}

async fn jobs(c: &mut Client, command: JobsCommand, json: bool) -> Result<(), Failure> {
    match command {
        JobsCommand::List { limit } => {
            let jobs = c
                .list_jobs(pb::ListJobsRequest {
                    page_size: limit,
                    page_token: String::new(),
                })
                .await?
                .into_inner()
                .jobs;
            if json {
                jobs.iter().for_each(|j| print_json(&output::job_json(j)));
            } else {
                println!("{}", output::jobs_text(&jobs));
            }
        }
        JobsCommand::Get { job_id } => {
            let job = c
                .get_job(pb::GetJobRequest {
                    job_id: job_id.clone(),
                })
                .await?
                .into_inner();
            let mut items = Vec::new();
            loop {
                let page = c
                    .list_job_items(pb::ListJobItemsRequest {
                        job_id: job_id.clone(),
                        after_seq: items.last().map_or(0, |i: &pb::JobItem| i.seq),
                        page_size: 500,
                    })
                    .await?
                    .into_inner()
                    .items;
                let full = page.len() == 500;
                items.extend(page);
                if !full {
                    break;
                }
            }
            if json {
                let mut v = output::job_json(&job);
                v["results"] = items.iter().map(output::item_json).collect();
                print_json(&v);
            } else {
                println!("{}", output::job_text(&job));
                for item in &items {
                    println!("{}", output::item_text(item));
                }
            }
        }
        JobsCommand::Cancel { job_id, reason } => {
            let job = c
                .cancel_job(pb::CancelJobRequest { job_id, reason })
                .await?
                .into_inner();
            show_job(&job, json);
        }
        JobsCommand::Pause { job_id, reason } => {
            let job = c
                .pause_job(pb::CancelJobRequest { job_id, reason })
                .await?
                .into_inner();
            show_job(&job, json);
        }
        JobsCommand::Resume { job_id, reason } => {
            let job = c
                .resume_job(pb::CancelJobRequest { job_id, reason })
                .await?
                .into_inner();
            show_job(&job, json);
        }
    }
    Ok(())
}

/// `sagactl bulk`: the plan, and with --yes the job (and with --wait its report).
async fn bulk(c: &mut Client, args: BulkArgs, json: bool) -> Result<(), Failure> {
    let mut request = pb::BulkJobRequest {
        action: match args.action {
            BulkAction::Replay => pb::BulkAction::ReplayCompensation,
            BulkAction::Abort => pb::BulkAction::Abort,
            BulkAction::Retry => pb::BulkAction::Retry,
            BulkAction::Hold => pb::BulkAction::Hold,
            BulkAction::Release => pb::BulkAction::Release,
        } as i32,
        filter: Some(args.filter.to_pb()?),
        reason: args.reason.clone(),
        rate_per_second: args.rate.unwrap_or(0.0),
        limit: args.limit.unwrap_or(0),
        confirmed: false,
    };
    let plan = c.plan_bulk_job(request.clone()).await?.into_inner();
    if !args.yes {
        if json {
            print_json(&output::plan_json(&plan));
        } else {
            println!("{}", output::plan_text(&plan));
            println!("nothing started: run the same command with --yes to start it");
        }
        return Ok(());
    }
    if !json {
        eprintln!("{}", output::plan_text(&plan));
    }
    request.confirmed = true;
    let mut job = c.start_bulk_job(request).await?.into_inner();
    if args.wait {
        let id = job.job_id.clone();
        if !json {
            eprintln!("job {id} started; waiting for it to end");
        }
        while matches!(
            pb::JobState::try_from(job.state),
            Ok(pb::JobState::Running | pb::JobState::Paused)
        ) {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            job = c
                .get_job(pb::GetJobRequest { job_id: id.clone() })
                .await?
                .into_inner();
        }
    }
    show_job(&job, json);
    Ok(())
}

/// `sagactl replay`: one saga's compensation, or every failed saga the filters select (a job the
/// orchestrator runs, followed here unless `--detach`).
async fn replay(c: &mut Client, args: ReplayArgs, json: bool) -> Result<(), Failure> {
    if let Some(saga_id) = &args.saga_id {
        if args.selects_in_bulk() {
            return Err(Failure::Usage(
                "give either a saga id, or filters (--type, --step, --since, …) for a bulk replay, not both"
                    .into(),
            ));
        }
        let r = c
            .replay_compensation(pb::ReplayCompensationRequest {
                saga_id: saga_id.clone(),
                reason: args.reason,
                dry_run: args.dry_run,
            })
            .await?
            .into_inner();
        show_replay(&r, json);
        return Ok(());
    }
    if args.filter.is_empty() && !args.all_failed {
        return Err(Failure::Usage(
            "a bulk replay needs filters (--type, --step, --since, …) or --all-failed".into(),
        ));
    }
    let request = pb::ReplayCompensationsRequest {
        filter: Some(args.filter.to_pb()?),
        reason: args.reason,
        dry_run: args.dry_run,
        rate_per_second: args.rate.unwrap_or(0.0),
        limit: args.limit.unwrap_or(0),
    };
    if args.detach {
        show_job(&c.start_replay_job(request).await?.into_inner(), json);
        return Ok(());
    }
    let response = c.replay_compensations(request).await?;
    if let Some(job) = response
        .metadata()
        .get("saga-job-id")
        .and_then(|v| v.to_str().ok())
    {
        // On stderr: stdout holds only the results (JSON lines with -o json).
        eprintln!("job {job} (it goes on if sagactl stops: sagactl jobs get {job})");
    }
    let mut stream = response.into_inner();
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    while let Some(next) = stream.next().await {
        let r = next?;
        *counts.entry(output::replay_outcome(r.outcome)).or_default() += 1;
        show_replay(&r, json);
    }
    if !json {
        let total: usize = counts.values().sum();
        let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
        println!(
            "{total} saga(s){}{}",
            if parts.is_empty() { "" } else { ": " },
            parts.join(", ")
        );
    }
    Ok(())
}

/// `sagactl approve` (`approved`) or `sagactl reject`: the operator's decision at an approval wait.
async fn decide(c: &mut Client, args: DecisionArgs, approved: bool, json: bool) -> Result<(), Failure> {
    let r = c
        .decide_approval(pb::DecideApprovalRequest {
            saga_id: args.saga_id,
            approved,
            reason: args.reason,
            step_index: args.step,
        })
        .await?
        .into_inner();
    acted(if approved { "approved" } else { "rejected" }, &r, json);
    Ok(())
}

fn print_json(v: &Value) {
    println!("{v}");
}

/// Prints one result: a JSON line with `-o json`, else its line of text.
fn show(json: bool, value: impl FnOnce() -> Value, text: impl FnOnce() -> String) {
    if json {
        print_json(&value());
    } else {
        println!("{}", text());
    }
}

fn show_job(job: &pb::Job, json: bool) {
    show(json, || output::job_json(job), || output::job_text(job));
}

fn show_replay(r: &pb::ReplayResult, json: bool) {
    show(json, || output::replay_json(r), || output::replay_text(r));
}

fn is_terminal(state: i32) -> bool {
    matches!(
        pb::SagaState::try_from(state),
        Ok(pb::SagaState::Completed | pb::SagaState::Compensated | pb::SagaState::Failed)
    )
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let json = cli.output == Format::Json;
    let mut c = connect(&cli).await?;
    match cli.command {
        Command::Start {
            saga_type,
            payload,
            key,
        } => {
            let r = c
                .start_saga(pb::StartSagaRequest {
                    saga_type: saga_type.clone(),
                    payload_json: payload,
                    idempotency_key: key.unwrap_or_default(),
                })
                .await?
                .into_inner();
            if json {
                print_json(&serde_json::json!({"saga_id": r.saga_id, "created": r.created}));
            } else if r.created {
                println!("started {} ({saga_type})", r.saga_id);
            } else {
                println!(
                    "already started {} ({saga_type}, same idempotency key and request)",
                    r.saga_id
                );
            }
        }
        Command::Get { saga_id } => {
            let r = c.get_saga(pb::GetSagaRequest { saga_id }).await?.into_inner();
            let view = r.saga.ok_or_else(|| Failure::Other("empty response".into()))?;
            if json {
                let mut v = output::saga_json(&view);
                v["history"] = r.history.iter().map(output::event_json).collect();
                print_json(&v);
            } else {
                print!("{}", output::saga_text(&view, &r.history));
            }
        }
        Command::List { filter, limit } => {
            let filter = filter.to_pb()?;
            let mut sagas = Vec::new();
            let mut token = String::new();
            while (sagas.len() as u32) < limit {
                let page = c
                    .list_sagas(pb::ListSagasRequest {
                        filter: Some(filter.clone()),
                        page_size: (limit - sagas.len() as u32).min(500),
                        page_token: token,
                    })
                    .await?
                    .into_inner();
                sagas.extend(page.sagas);
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            show(
                json,
                || Value::Array(sagas.iter().map(output::summary_json).collect()),
                || output::list_text(&sagas),
            );
        }
        Command::Watch { saga_id, follow } => {
            let mut stream = c.watch_saga(pb::WatchSagaRequest { saga_id }).await?.into_inner();
            while let Some(next) = stream.next().await {
                let v = next?;
                if json {
                    print_json(&output::saga_json(&v));
                } else {
                    let mut line = format!(
                        "{}  {:<12}",
                        output::time(v.updated_at.as_ref()),
                        output::state(v.state)
                    );
                    if !v.current_step.is_empty() {
                        line += &format!(" step {}", v.current_step);
                    }
                    if !v.failure_reason.is_empty() {
                        line += &format!("  ({})", v.failure_reason);
                    }
                    println!("{line}");
                }
                if is_terminal(v.state) && !follow {
                    return if v.state == pb::SagaState::Failed as i32 {
                        Err(Failure::SagaFailed)
                    } else {
                        Ok(())
                    };
                }
            }
            return Err(Failure::Unreachable("the watch stream ended".into()));
        }
        Command::Export { filter, limit } => {
            let mut stream = c
                .export_sagas(pb::ExportSagasRequest {
                    filter: Some(filter.to_pb()?),
                    limit: limit.unwrap_or(0),
                })
                .await?
                .into_inner();
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut n = 0u64;
            while let Some(doc) = stream.message().await? {
                use std::io::Write;
                writeln!(out, "{}", doc.json)
                    .map_err(|e| Failure::Other(format!("writing the export: {e}")))?;
                n += 1;
            }
            std::io::Write::flush(&mut out)
                .map_err(|e| Failure::Other(format!("writing the export: {e}")))?;
            eprintln!("{n} saga(s) exported");
        }
        Command::Replay(args) => replay(&mut c, args, json).await?,
        Command::Bulk(args) => bulk(&mut c, args, json).await?,
        Command::Jobs { command } => jobs(&mut c, command, json).await?,
        Command::Retry {
            saga_id,
            step,
            reason,
        } => {
            let r = c
                .retry_step(pb::RetryStepRequest {
                    saga_id,
                    step_index: step,
                    reason,
                })
                .await?
                .into_inner();
            acted("retried", &r, json);
        }
        Command::Audit {
            since,
            until,
            saga_type,
            unfinished_after,
        } => {
            let now = chrono::Utc::now();
            let at = |a: &str| timestamp(a, now);
            let unfinished_after_seconds = unfinished_after
                .map(|a| {
                    let t = when::parse(&a, now)
                        .map_err(|e| Failure::Usage(format!("--unfinished-after: {e}")))?;
                    u32::try_from((now - t).num_seconds().max(0))
                        .map_err(|_| Failure::Usage("--unfinished-after: too long".into()))
                })
                .transpose()?;
            let r = c
                .run_audit(pb::RunAuditRequest {
                    since: Some(at(&since)?),
                    until: until.as_deref().map(at).transpose()?,
                    saga_type: saga_type.unwrap_or_default(),
                    unfinished_after_seconds,
                })
                .await?
                .into_inner();
            if json {
                print_json(&audit::report_json(&r));
            } else {
                print!("{}", audit::report_text(&r));
            }
            if !r.findings.is_empty() {
                return Err(Failure::Drift);
            }
        }
        Command::Abort { saga_id, reason } => {
            let r = c
                .abort_saga(pb::AbortSagaRequest { saga_id, reason })
                .await?
                .into_inner();
            acted("aborted", &r, json);
        }
        Command::Hold { saga_id, reason } => {
            let r = c
                .hold_saga(pb::HoldSagaRequest { saga_id, reason })
                .await?
                .into_inner();
            held(if r.changed { "held" } else { "already held" }, &r, json);
        }
        Command::Release { saga_id, reason } => {
            let r = c
                .release_saga(pb::HoldSagaRequest { saga_id, reason })
                .await?
                .into_inner();
            held("released", &r, json);
        }
        Command::Signal {
            saga_id,
            signal,
            payload,
            key,
        } => {
            let r = c
                .signal_saga(pb::SignalSagaRequest {
                    saga_id,
                    signal,
                    payload_json: payload,
                    idempotency_key: key.unwrap_or_default(),
                })
                .await?
                .into_inner();
            acted("signalled", &r, json);
        }
        Command::Approve(args) => decide(&mut c, args, true, json).await?,
        Command::Reject(args) => decide(&mut c, args, false, json).await?,
    }
    Ok(())
}

fn acted(verb: &str, r: &pb::OperatorActionResponse, json: bool) {
    let Some(v) = &r.saga else { return };
    if json {
        let mut out = output::saga_json(v);
        out["commands"] = r.commands.iter().map(output::command_json).collect();
        print_json(&out);
    } else {
        // An action can send nothing, e.g. a signal that only moves the saga on to another wait.
        let sent = if r.commands.is_empty() {
            "nothing".to_owned()
        } else {
            output::commands_text(&r.commands)
        };
        println!(
            "{verb} {}: now {}; sent {sent}",
            v.saga_id,
            output::state(v.state)
        );
    }
}

/// A hold placed or released: the hold, as text or JSON.
fn held(outcome: &str, r: &pb::HoldResponse, json: bool) {
    let Some(h) = &r.hold else { return };
    if json {
        print_json(&serde_json::json!({
            "outcome": outcome,
            "hold": output::hold_json(h),
        }));
    } else {
        println!(
            "{outcome}: hold by {} since {}: {}",
            h.operator,
            output::time(h.placed_at.as_ref()),
            h.reason
        );
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let server = cli.server.clone();
    let tls = cli.wants_tls();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.exit(&server, tls),
    }
}
