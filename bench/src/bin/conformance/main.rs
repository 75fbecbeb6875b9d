//! The participant conformance kit: plays the orchestrator against one running participant over
//! real Kafka and checks every obligation of `docs/PARTICIPANT_PROTOCOL.md` with crafted commands —
//! the reply's fields and headers, trace propagation (and, with `--otlp`, the participant's spans
//! received by a real OTLP receiver), redeliveries and retries answered from the
//! inbox with the incoming attempt, attempts out of order, business refusals recorded, a
//! compensation before its action (a recorded no-op that refuses the late action), poison and
//! unknown command types dead-lettered with their reason, technical errors never answered (a
//! database outage, with `--database-url`), and a SIGKILL right after the participant's commits
//! (with `--run` or `--pid`); with `--http`, that the participant's audit endpoints list what those
//! commands left in its inbox. It prints each check and exits non-zero if any fails.
//!
//! ```text
//! conformance --brokers 127.0.0.1:9092 --participant post-service \
//!     --run 'target/debug/post-service' --database-url postgres://postgres@127.0.0.1:5432/saga_posts \
//!     --http http://127.0.0.1:8082
//! ```
//!
//! The kit sees effects from outside only: a profile's action makes a second saga with the same
//! business data be refused while it stands (a pen name, an e-mail), so "applied", "not applied"
//! and "undone" are all observable on the wire. Layout: `profile.rs` (what is sent), `wire.rs`
//! (Kafka), `audit.rs` (the audit endpoints), this file (the checks); the span receiver is
//! `saga_bench::otlp`.

mod audit;
mod profile;
mod wire;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use prost::Message;
use rdkafka::producer::FutureProducer;
use rustix::process::{Pid, Signal, kill_process};
use saga_proto::envelope::{self, Command, Outcome, Reply};
use saga_proto::ledger::LedgerOutcome;
use saga_proto::{Phase, headers};
use serde_json::Value;
use uuid::Uuid;

use profile::{Instance, Profile, Template};
use saga_bench::otlp;
use wire::{Collector, Record};

#[derive(Parser)]
#[command(about = "Check that a running saga participant keeps the participant protocol")]
struct Args {
    /// Kafka bootstrap servers.
    #[arg(long, env = "APP_KAFKA__BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// The participant's topic prefix.
    #[arg(long, env = "APP_KAFKA__TOPIC_PREFIX", default_value = "")]
    topic_prefix: String,
    /// A built-in profile: `post-service` or `user-service`.
    #[arg(long, default_value = "post-service")]
    participant: String,
    /// A profile file (JSON, see `profile.rs`) instead of a built-in one.
    #[arg(long)]
    profile: Option<std::path::PathBuf>,
    /// Logical reply topic.
    #[arg(long, default_value = "saga.replies")]
    reply_topic: String,
    /// Start the participant with this shell command (environment inherited), stop it at the end,
    /// and SIGKILL and restart it for the crash check.
    #[arg(long)]
    run: Option<String>,
    /// Where the participant started with `--run` writes its output.
    #[arg(long, default_value = "conformance-participant.log")]
    run_log: std::path::PathBuf,
    /// A participant process to SIGKILL for the crash check (something else must restart it).
    #[arg(long, conflicts_with = "run")]
    pid: Option<u32>,
    /// The participant's database (a superuser URL), for the outage check: connections to it are
    /// refused for a few seconds while commands arrive.
    #[arg(long)]
    database_url: Option<String>,
    /// How long to wait for an answer (the first one may wait for the participant to start).
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    /// Receive the participant's spans over OTLP (it is started with `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// pointing at the kit; needs `--run`) and check that they continue the command's trace.
    #[arg(long, requires = "run")]
    otlp: bool,
    /// Commands in flight when the participant is killed.
    #[arg(long, default_value_t = 200)]
    crash_commands: usize,
    /// The participant's HTTP port (metrics, health, audit), e.g. `http://127.0.0.1:8082`: checks
    /// that its audit endpoints (`/audit/ledger`, `/audit/unclaimed`, `/audit/facts/…`) list what
    /// the kit's commands did.
    #[arg(long)]
    http: Option<String>,
}

/// The result of one check: what was seen, or what went wrong.
type Check = Result<String, String>;

#[derive(Clone)]
struct Kit {
    producer: FutureProducer,
    profile: Profile,
    commands_topic: String,
    reply_topic: String,
    replies: Collector,
    dead_letters: Collector,
    timeout: Duration,
    /// What the participant's audit ledger must hold after the checks' commands.
    ledger: audit::Expectations,
}

/// A command as sent, with the trace context it carried.
struct Sent {
    command: Command,
    trace_id: String,
    /// The span id of its `traceparent`: the span the participant's spans must descend from.
    span_id: String,
}

impl Kit {
    fn command(&self, inst: &Instance, template: &Template, phase: Phase, attempt: u32) -> Command {
        let command_type = match phase {
            Phase::Action => template.command_type.clone(),
            Phase::Compensation => template.compensation.clone(),
        };
        Command {
            message_id: Uuid::now_v7().to_string(),
            saga_id: inst.saga,
            saga_type: self.profile.saga_type.clone(),
            definition_version: 1,
            step_index: template.step_index,
            step_name: template.step_name.clone(),
            attempt,
            phase,
            command_type,
            payload: inst.payload.clone(),
            causation_id: format!("conformance-{}", Uuid::now_v7()),
            idempotency_key: envelope::idempotency_key(inst.saga, template.step_index, phase),
            reply_topic: self.reply_topic.clone(),
            deadline_unix_ms: chrono::Utc::now().timestamp_millis() + 30_000,
        }
    }

    /// Publishes `command` as the orchestrator does: key = saga id, routing headers, and a W3C
    /// `traceparent` of a trace of its own.
    async fn send(&self, command: Command) -> anyhow::Result<Sent> {
        let trace_id = Uuid::now_v7().simple().to_string();
        let span_id = span_id();
        let mut hs = command.headers();
        hs.insert(headers::TRACEPARENT.into(), format!("00-{trace_id}-{span_id}-01"));
        let key = command.saga_id.to_string();
        wire::send(
            &self.producer,
            &self.commands_topic,
            &key,
            Some(&command.encode()),
            &hs,
        )
        .await?;
        Ok(Sent {
            command,
            trace_id,
            span_id,
        })
    }

    /// Sends the same record again (a redelivery: same message id, same headers).
    async fn resend(&self, sent: &Sent) -> anyhow::Result<()> {
        let mut hs = sent.command.headers();
        hs.insert(
            headers::TRACEPARENT.into(),
            format!("00-{}-{}-01", sent.trace_id, sent.span_id),
        );
        let key = sent.command.saga_id.to_string();
        wire::send(
            &self.producer,
            &self.commands_topic,
            &key,
            Some(&sent.command.encode()),
            &hs,
        )
        .await
    }

    /// The `n`-th reply (1-based) to the command with this message id.
    async fn nth_reply(
        &self,
        message_id: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<(Record, Reply), String> {
        self.replies
            .wait_for(
                timeout,
                &format!("reply #{n} to command {message_id}"),
                |records| {
                    records
                        .iter()
                        .filter_map(|r| r.reply().ok().map(|reply| (r.clone(), reply)))
                        .filter(|(_, reply)| reply.causation_id == message_id)
                        .nth(n - 1)
                },
            )
            .await
    }

    async fn reply(&self, sent: &Sent) -> Result<(Record, Reply), String> {
        self.nth_reply(&sent.command.message_id, 1, self.timeout).await
    }

    /// Sends a command and returns its reply's outcome.
    async fn exchange(
        &self,
        inst: &Instance,
        t: &Template,
        phase: Phase,
        attempt: u32,
    ) -> Result<Reply, String> {
        let sent = self
            .send(self.command(inst, t, phase, attempt))
            .await
            .map_err(|e| e.to_string())?;
        let (_, reply) = self.reply(&sent).await?;
        if reply.attempt != attempt {
            return Err(format!(
                "{} attempt {attempt} was answered with attempt {}",
                sent.command.command_type, reply.attempt
            ));
        }
        Ok(reply)
    }
}

/// A W3C span id: the random half of a UUIDv7.
fn span_id() -> String {
    Uuid::now_v7().simple().to_string()[16..].to_owned()
}

fn success(reply: &Reply, what: &str) -> Result<Value, String> {
    match &reply.outcome {
        Outcome::Success { payload } => Ok(payload.clone()),
        other => Err(format!("{what}: expected success, got {other:?}")),
    }
}

fn refusal(reply: &Reply, what: &str) -> Result<String, String> {
    match &reply.outcome {
        Outcome::BusinessFailure { reason } if !reason.trim().is_empty() => Ok(reason.clone()),
        other => Err(format!(
            "{what}: expected a business_failure with a reason, got {other:?}"
        )),
    }
}

/// Check 1: The reply to a first action: every field and header as the orchestrator needs it.
///
/// The first command also waits for the participant to be up (at least 120 s), and gives up at
/// once if the participant the kit started has exited.
async fn reply_shape(
    kit: &Kit,
    a: &Instance,
    mut target: Option<&mut Target>,
) -> Result<(Sent, Value), String> {
    let t = &kit.profile.action;
    let sent = kit
        .send(kit.command(a, t, Phase::Action, 1))
        .await
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(120).max(kit.timeout);
    let (record, reply) = loop {
        match kit
            .nth_reply(&sent.command.message_id, 1, Duration::from_secs(1))
            .await
        {
            Ok(found) => break found,
            Err(e) if Instant::now() >= deadline => return Err(format!("{e} (waited since the start)")),
            Err(_) => {
                if let Some(exited) = target.as_deref_mut().and_then(Target::exited) {
                    return Err(exited);
                }
            }
        }
    };
    let c = &sent.command;
    let payload = success(&reply, &c.command_type)?;
    kit.ledger.first(&reply, LedgerOutcome::Succeeded);
    let mut wrong = Vec::new();
    let mut expect = |what: &str, ok: bool| {
        if !ok {
            wrong.push(what.to_owned());
        }
    };
    expect("record key = saga id", record.key_text() == c.saga_id.to_string());
    expect("saga_id", reply.saga_id == c.saga_id);
    expect("saga_type", reply.saga_type == c.saga_type);
    expect("step_index", reply.step_index == c.step_index);
    expect("phase", reply.phase == c.phase);
    expect("attempt", reply.attempt == c.attempt);
    expect("command_type", reply.command_type == c.command_type);
    expect(
        "causation_id = the command's message_id",
        reply.causation_id == c.message_id,
    );
    expect(
        "a message_id of its own",
        !reply.message_id.is_empty() && reply.message_id != c.message_id,
    );
    expect("participant", !reply.participant.is_empty());
    expect("success payload is a JSON object", payload.is_object());
    for (name, want) in [
        (headers::MESSAGE_ID, reply.message_id.clone()),
        (headers::SAGA_ID, c.saga_id.to_string()),
        (headers::SAGA_TYPE, c.saga_type.clone()),
        (headers::COMMAND_TYPE, c.command_type.clone()),
        (headers::PHASE, "action".to_owned()),
        (headers::ATTEMPT, "1".to_owned()),
        (headers::CONTENT_TYPE, headers::REPLY_CONTENT_TYPE.to_owned()),
    ] {
        let got = record.header(name);
        if got != want {
            wrong.push(format!("header {name} = `{got}`, expected `{want}`"));
        }
    }
    if wrong.is_empty() {
        Ok((sent, payload))
    } else {
        Err(format!("reply to {}: {}", c.command_type, wrong.join("; ")))
    }
}

/// Check 2: The reply continues the command's trace.
async fn trace(kit: &Kit, first: &Sent) -> Check {
    let (record, _) = kit.reply(first).await?;
    let parent = record.header(headers::TRACEPARENT);
    let parts: Vec<&str> = parent.split('-').collect();
    match parts.as_slice() {
        [_, trace, span, _] if *trace == first.trace_id && span.len() == 16 => {
            Ok(format!("reply traceparent continues trace {}", &trace[..8]))
        }
        _ => Err(format!(
            "the reply's traceparent `{parent}` is not in the command's trace {}",
            first.trace_id
        )),
    }
}

/// Check 2b: The participant exports its spans over OTLP, in the command's trace: every one of them
/// descends from the command's span, and the reply's parent span is one of them.
async fn exported_spans(kit: &Kit, receiver: &otlp::Receiver, first: &Sent) -> Check {
    let (record, _) = kit.reply(first).await?;
    let reply_parent = record
        .header(headers::TRACEPARENT)
        .split('-')
        .nth(2)
        .unwrap_or_default()
        .to_owned();
    let deadline = Instant::now() + kit.timeout;
    loop {
        let spans = receiver.trace(&first.trace_id);
        let detached = otlp::detached(&spans, &first.span_id);
        let has_reply_parent = spans.iter().any(|s| s.span_id == reply_parent);
        if !spans.is_empty() && detached.is_empty() && has_reply_parent {
            let mut names: Vec<String> = spans
                .iter()
                .map(|s| format!("{}: {}", s.service, s.name))
                .collect();
            names.sort();
            names.dedup();
            return Ok(format!(
                "{} spans in the command's trace, all under the command's span, the reply's parent among them ({})",
                spans.len(),
                names.join(", ")
            ));
        }
        if Instant::now() >= deadline {
            let why = if spans.is_empty() {
                "no span of the command's trace was exported".to_owned()
            } else if !detached.is_empty() {
                let names: Vec<&str> = detached.iter().map(|s| s.name.as_str()).collect();
                format!("spans not under the command's span: {names:?}")
            } else {
                format!("the reply's parent span {reply_parent} was not exported")
            };
            return Err(format!("within {} s: {why}", kit.timeout.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Check 3–5: Redelivery, a retry, and attempts out of order: each answered with the recorded outcome
/// and its own attempt number.
async fn repeats(kit: &Kit, a: &Instance, first: &Sent, payload: &Value) -> Check {
    kit.resend(first).await.map_err(|e| e.to_string())?;
    let (_, again) = kit.nth_reply(&first.command.message_id, 2, kit.timeout).await?;
    kit.ledger.repeat(&again);
    if again.attempt != 1 || success(&again, "redelivered action")? != *payload {
        return Err(format!(
            "a redelivered command was answered with {again:?}, not the recorded outcome"
        ));
    }
    let t = &kit.profile.action;
    for attempt in [2, 4, 3] {
        let reply = kit.exchange(a, t, Phase::Action, attempt).await?;
        kit.ledger.repeat(&reply);
        let got = success(&reply, &format!("attempt {attempt}"))?;
        if got != *payload {
            return Err(format!(
                "attempt {attempt} answered with payload {got}, the first with {payload}"
            ));
        }
    }
    Ok(
        "redelivery, attempt 2, then 4 before 3: each answered with the recorded outcome and its own attempt"
            .into(),
    )
}

/// Check 6–7: The effect exists once, and the compensation undoes it (repeatably).
async fn effect_and_compensation(kit: &Kit, a: &Instance) -> Check {
    let t = &kit.profile.action;
    let twin = t.twin(a);
    let reply = kit.exchange(&twin, t, Phase::Action, 1).await?;
    refusal(
        &reply,
        "a second saga with the same business data while the first stands",
    )?;
    kit.ledger.first(&reply, LedgerOutcome::BusinessFailure);
    let reply = kit.exchange(a, t, Phase::Compensation, 1).await?;
    success(&reply, &t.compensation)?;
    kit.ledger.first(&reply, LedgerOutcome::Succeeded);
    let reply = kit.exchange(a, t, Phase::Compensation, 2).await?;
    success(&reply, "the compensation's retry")?;
    kit.ledger.repeat(&reply);
    let after = t.twin(a);
    let reply = kit.exchange(&after, t, Phase::Action, 1).await?;
    success(&reply, "the same business data after the compensation")?;
    kit.ledger.first(&reply, LedgerOutcome::Succeeded);
    let reply = kit.exchange(&after, t, Phase::Compensation, 1).await?;
    kit.ledger.first(&reply, LedgerOutcome::Succeeded);
    Ok(format!(
        "applied once (a twin was refused), undone by {} (answered again on retry)",
        t.compensation
    ))
}

/// Check 8: A business refusal is a recorded business_failure, and compensating it is a no-op.
async fn business_failure(kit: &Kit) -> Check {
    let t = &kit.profile.refused;
    let r = t.instance();
    let reply = kit.exchange(&r, t, Phase::Action, 1).await?;
    let first = refusal(&reply, &t.command_type)?;
    kit.ledger.first(&reply, LedgerOutcome::BusinessFailure);
    let reply = kit.exchange(&r, t, Phase::Action, 2).await?;
    let again = refusal(&reply, "its retry")?;
    kit.ledger.repeat(&reply);
    if again != first {
        return Err(format!(
            "refused with `{first}`, then on retry with `{again}`: not the recorded outcome"
        ));
    }
    let reply = kit.exchange(&r, t, Phase::Compensation, 1).await?;
    success(&reply, "compensating a refused action")?;
    kit.ledger.first(&reply, LedgerOutcome::NoopCompensation);
    Ok(format!(
        "refused with `{first}`, the same on retry; its compensation succeeds"
    ))
}

/// Check 9: A compensation before its action: a recorded no-op, and the late action is refused and not applied.
async fn compensation_first(kit: &Kit) -> Check {
    let t = &kit.profile.action;
    let c = t.instance();
    let reply = kit.exchange(&c, t, Phase::Compensation, 1).await?;
    success(&reply, "a compensation for an action never seen")?;
    kit.ledger.first(&reply, LedgerOutcome::NoopCompensation);
    let reply = kit.exchange(&c, t, Phase::Action, 1).await?;
    let late = refusal(&reply, "the late action")?;
    kit.ledger.first(&reply, LedgerOutcome::RefusedLateAction);
    let reply = kit.exchange(&c, t, Phase::Action, 2).await?;
    refusal(&reply, "the late action's retry")?;
    kit.ledger.repeat(&reply);
    let twin = t.twin(&c);
    let reply = kit.exchange(&twin, t, Phase::Action, 1).await?;
    success(&reply, "a twin of the refused late action")?;
    kit.ledger.first(&reply, LedgerOutcome::Succeeded);
    let reply = kit.exchange(&twin, t, Phase::Compensation, 1).await?;
    kit.ledger.first(&reply, LedgerOutcome::Succeeded);
    Ok(format!(
        "no-op compensation, late action refused (`{late}`) and not applied"
    ))
}

/// Check 10: Poison and unknown commands go to `<topic>.dlq` with a reason, are never answered, and do
/// not block the commands behind them.
async fn poison(kit: &Kit) -> Check {
    let t = &kit.profile.action;
    let inst = t.instance();
    let key = inst.saga.to_string();
    let good = kit.command(&inst, t, Phase::Action, 1);
    let base = |f: &dyn Fn(&mut saga_proto::v1::CommandEnvelope)| {
        let mut env = saga_proto::v1::CommandEnvelope::decode(good.encode().as_slice()).unwrap_or_default();
        env.message_id = Uuid::now_v7().to_string();
        env.attempt = 9;
        f(&mut env);
        env.encode_to_vec()
    };
    let other_topic = format!("{}-elsewhere", kit.reply_topic);
    let cases: Vec<(&str, Option<Vec<u8>>)> = vec![
        ("undecodable bytes", Some(b"\x0a\xff\xff not protobuf".to_vec())),
        ("an empty record", None),
        (
            "an unknown command type",
            Some(base(&|e| e.command_type = "ConformanceFrobnicate".into())),
        ),
        ("phase unspecified", Some(base(&|e| e.phase = 0))),
        (
            "a saga_id that is not a UUID",
            Some(base(&|e| e.saga_id = "not-a-saga".into())),
        ),
        (
            "payload_json not an object",
            Some(base(&|e| e.payload_json = "[1]".into())),
        ),
        (
            "another deployment's reply topic",
            Some(base(&|e| e.reply_topic = other_topic.clone())),
        ),
    ];
    let hs = BTreeMap::from([(headers::SAGA_ID.to_owned(), key.clone())]);
    for (_, payload) in &cases {
        wire::send(&kit.producer, &kit.commands_topic, &key, payload.as_deref(), &hs)
            .await
            .map_err(|e| e.to_string())?;
    }
    // Same key, so the same partition: behind the poison, processed after it.
    let sent = kit.send(good).await.map_err(|e| e.to_string())?;
    let (_, reply) = kit
        .reply(&sent)
        .await
        .map_err(|e| format!("a command behind poison: {e}"))?;
    success(&reply, "the command behind the poison")?;
    kit.ledger.first(&reply, LedgerOutcome::Succeeded);
    let dead = kit
        .dead_letters
        .wait_for(kit.timeout, &format!("{} dead letters", cases.len()), |records| {
            let mine: Vec<Record> = records.iter().filter(|r| r.key_text() == key).cloned().collect();
            (mine.len() >= cases.len()).then_some(mine)
        })
        .await?;
    let mut wrong = Vec::new();
    for ((what, payload), record) in cases.iter().zip(&dead) {
        if record.payload != *payload {
            wrong.push(format!("{what}: the dead letter is not the record as sent"));
        }
        if record.header("dlq-reason").trim().is_empty() {
            wrong.push(format!("{what}: no dlq-reason header"));
        }
        if record.header("dlq-source-topic") != kit.commands_topic {
            wrong.push(format!(
                "{what}: dlq-source-topic is `{}`",
                record.header("dlq-source-topic")
            ));
        }
    }
    // Replies of one saga leave in order: had any poison been answered, it would be here by now.
    let answered: Vec<String> = kit
        .replies
        .snapshot()
        .iter()
        .filter_map(|r| r.reply().ok())
        .filter(|r| r.saga_id == inst.saga && r.attempt == 9)
        .map(|r| r.command_type)
        .collect();
    if !answered.is_empty() {
        wrong.push(format!("poison was answered: {answered:?}"));
    }
    if !wrong.is_empty() {
        return Err(wrong.join("; "));
    }
    let reasons: Vec<String> = dead
        .iter()
        .map(|r| r.header("dlq-reason").chars().take(48).collect())
        .collect();
    Ok(format!(
        "{} poison records dead-lettered unanswered, the command behind them answered; reasons: {}",
        cases.len(),
        reasons.join(" | ")
    ))
}

/// Check 11: The database refuses connections for a while: no reply until it is back, then the recorded
/// outcome; never a technical_failure reply.
async fn database_outage(kit: &Kit, url: &str) -> Check {
    let (server, db) = url
        .rsplit_once('/')
        .ok_or_else(|| format!("--database-url {url} names no database"))?;
    let db = db.split('?').next().unwrap_or_default().to_owned();
    let admin = sqlx::PgPool::connect(&format!("{server}/postgres"))
        .await
        .map_err(|e| format!("connecting to {server}/postgres: {e}"))?;
    let outage = Outage {
        admin,
        db: db.clone(),
    };
    outage.set(false).await?;
    let t = &kit.profile.action;
    let inst = t.instance();
    let sent = kit.send(kit.command(&inst, t, Phase::Action, 1)).await;
    // The outage lasts a while: the participant receives the command and cannot commit.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let early = kit
        .replies
        .snapshot()
        .iter()
        .filter_map(|r| r.reply().ok())
        .any(|r| r.saga_id == inst.saga);
    outage.set(true).await?;
    let sent = sent.map_err(|e| e.to_string())?;
    if early {
        return Err("a reply came while the database refused connections".into());
    }
    let (_, reply) = kit
        .nth_reply(&sent.command.message_id, 1, kit.timeout * 2)
        .await?;
    success(&reply, "the command sent during the outage")?;
    kit.ledger.first(&reply, LedgerOutcome::Succeeded);
    Ok(format!(
        "connections to {db} refused for 4 s: no reply meanwhile, then success"
    ))
}

/// Refuses and allows connections to a database (`ALLOW_CONNECTIONS`), cutting the open ones.
struct Outage {
    admin: sqlx::PgPool,
    db: String,
}

impl Outage {
    async fn set(&self, allow: bool) -> Result<(), String> {
        let ident = format!("\"{}\"", self.db.replace('"', "\"\""));
        sqlx::query(&format!("ALTER DATABASE {ident} ALLOW_CONNECTIONS {allow}"))
            .execute(&self.admin)
            .await
            .map_err(|e| format!("ALTER DATABASE {}: {e}", self.db))?;
        if !allow {
            sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
                .bind(&self.db)
                .execute(&self.admin)
                .await
                .map_err(|e| format!("terminating connections: {e}"))?;
        }
        Ok(())
    }
}

/// The process id of the participant started with `--run` (0: none), for the signal handler.
static RUNNING: AtomicU32 = AtomicU32::new(0);

/// Sends `signal` to process `pid`; 0 (no process) or a pid beyond the kernel's range is
/// skipped, and a process already gone is no error.
fn signal_pid(pid: u32, signal: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process(pid, signal);
    }
}

/// On SIGINT or SIGTERM: SIGKILL the participant the kit started, then exit.
fn stop_on_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let pid = RUNNING.load(Ordering::SeqCst);
        signal_pid(pid, Signal::KILL);
        eprintln!("conformance: interrupted");
        std::process::exit(130);
    });
    Ok(())
}

/// The participant process the kit controls (`--run`) or only kills (`--pid`).
enum Target {
    Run {
        command: String,
        log: std::path::PathBuf,
        /// Extra environment of the participant (the OTLP endpoint).
        env: Vec<(String, String)>,
        child: Option<std::process::Child>,
    },
    Pid(u32),
}

impl Target {
    fn start(&mut self) -> anyhow::Result<()> {
        if let Target::Run {
            command,
            log,
            env,
            child,
        } = self
        {
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&*log)
                .with_context(|| format!("opening {}", log.display()))?;
            let spawned = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("exec {command}"))
                .envs(env.iter().cloned())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
                .with_context(|| format!("starting `{command}`"))?;
            RUNNING.store(spawned.id(), Ordering::SeqCst);
            *child = Some(spawned);
        }
        Ok(())
    }

    /// Why the participant the kit started is no longer running, if it is not.
    fn exited(&mut self) -> Option<String> {
        match self {
            Target::Run {
                child: Some(c), log, ..
            } => match c.try_wait() {
                Ok(Some(status)) => Some(format!(
                    "the participant exited ({status}) before answering; its output is in {}",
                    log.display()
                )),
                _ => None,
            },
            _ => None,
        }
    }

    fn kill(&mut self) {
        match self {
            Target::Run { child, .. } => {
                if let Some(mut c) = child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
            Target::Pid(pid) => signal_pid(*pid, Signal::KILL),
        }
    }

    /// SIGTERM and a bounded wait for a clean exit (only a process the kit started).
    fn stop(&mut self) {
        if let Target::Run { child: Some(c), .. } = self {
            let _ = kill_process(Pid::from_child(c), Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill();
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Target::Run { child: Some(_), .. } = self {
            self.kill();
        }
    }
}

/// Check 12: SIGKILL right after the participant committed some of a burst of commands: every command
/// is answered with success once it is back, none applied twice.
async fn crash(kit: &Kit, target: &mut Target, n: usize) -> Check {
    let t = &kit.profile.action;
    let instances: Vec<Instance> = (0..n).map(|_| t.instance()).collect();
    let mut sent = Vec::with_capacity(n);
    for inst in &instances {
        sent.push(
            kit.send(kit.command(inst, t, Phase::Action, 1))
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let ids: Vec<String> = sent.iter().map(|s| s.command.message_id.clone()).collect();
    // The first reply proves commits happened; the offsets of the poll batch are not committed yet.
    kit.replies
        .wait_for(kit.timeout, "reply to the burst", |records| {
            records
                .iter()
                .filter_map(|r| r.reply().ok())
                .find(|r| ids.contains(&r.causation_id))
        })
        .await?;
    target.kill();
    let answered_before = count_answered(kit, &ids).0;
    target.start().map_err(|e| e.to_string())?;
    let recovery = Duration::from_secs(120).max(kit.timeout * 4);
    kit.replies
        .wait_for(
            recovery,
            &format!("replies to all {n} commands after the restart"),
            |_| (count_answered(kit, &ids).0 == n).then_some(()),
        )
        .await?;
    let (_, replies, refused) = count_answered(kit, &ids);
    if refused > 0 {
        return Err(format!(
            "{refused} commands were refused after the restart (applied twice?)"
        ));
    }
    // Every effect exists exactly once: a twin of each of a few is refused.
    for inst in instances.iter().step_by((n / 5).max(1)) {
        refusal(
            &kit.exchange(&t.twin(inst), t, Phase::Action, 1).await?,
            "a twin of a command from the burst",
        )?;
    }
    Ok(format!(
        "SIGKILL after {answered_before} of {n} were answered; after the restart all {n} answered with success, \
         {} answered again (redelivered and answered from the inbox)",
        replies - n
    ))
}

/// (commands answered, replies, replies that were refusals) among the commands with these ids.
fn count_answered(kit: &Kit, ids: &[String]) -> (usize, usize, usize) {
    let mut answered = std::collections::HashSet::new();
    let (mut replies, mut refused) = (0, 0);
    for r in kit.replies.snapshot().iter().filter_map(|r| r.reply().ok()) {
        if ids.contains(&r.causation_id) {
            replies += 1;
            if !matches!(r.outcome, Outcome::Success { .. }) {
                refused += 1;
            }
            answered.insert(r.causation_id);
        }
    }
    (answered.len(), replies, refused)
}

/// Check 13: Over the whole run: every reply decodes, none is a technical_failure.
fn clean_replies(kit: &Kit) -> Check {
    let records = kit.replies.snapshot();
    let mut wrong = Vec::new();
    for r in &records {
        match r.reply() {
            Ok(reply) if matches!(reply.outcome, Outcome::TechnicalFailure { .. }) => wrong.push(format!(
                "a technical_failure reply to {} of saga {}",
                reply.command_type, reply.saga_id
            )),
            Ok(_) => {}
            Err(e) => wrong.push(format!("an undecodable reply: {e}")),
        }
    }
    if wrong.is_empty() {
        Ok(format!(
            "{} replies seen, all decodable, none a technical_failure",
            records.len()
        ))
    } else {
        Err(wrong.join("; "))
    }
}

struct Report {
    passed: usize,
    failed: usize,
    skipped: usize,
}

impl Report {
    fn record(&mut self, name: &str, result: Check) {
        match result {
            Ok(detail) => {
                self.passed += 1;
                println!("PASS  {name:<26} {detail}");
            }
            Err(why) => {
                self.failed += 1;
                println!("FAIL  {name:<26} {why}");
            }
        }
    }

    fn skip(&mut self, name: &str, why: &str) {
        self.skipped += 1;
        println!("SKIP  {name:<26} {why}");
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let profile = match &args.profile {
        Some(path) => serde_json::from_str(
            &std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("{} is not a profile", path.display()))?,
        None => profile::builtin(&args.participant).with_context(|| {
            format!(
                "no built-in profile `{}` (post-service, user-service)",
                args.participant
            )
        })?,
    };
    let prefix = &args.topic_prefix;
    let commands_topic = format!("{prefix}{}", profile.commands_topic);
    let reply_topic = format!("{prefix}{}", args.reply_topic);
    let dlq_topic = format!("{commands_topic}.dlq");
    wire::ensure_topics(
        &args.brokers,
        &[commands_topic.clone(), dlq_topic.clone(), reply_topic.clone()],
        8,
    )
    .await?;
    let kit = Kit {
        producer: wire::producer(&args.brokers)?,
        replies: Collector::start(&args.brokers, &reply_topic).await?,
        dead_letters: Collector::start(&args.brokers, &dlq_topic).await?,
        profile,
        commands_topic,
        reply_topic,
        timeout: Duration::from_secs(args.timeout_secs),
        ledger: audit::Expectations::default(),
    };
    let endpoints = args.http.as_deref().map(audit::Endpoints::new).transpose()?;
    stop_on_signal()?;
    let receiver = match args.otlp {
        true => Some(otlp::Receiver::try_start().await?),
        false => None,
    };
    let mut target = match (&args.run, args.pid) {
        (Some(command), _) => Some(Target::Run {
            command: command.clone(),
            log: args.run_log.clone(),
            env: receiver
                .iter()
                .flat_map(|r| {
                    [
                        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), r.endpoint.clone()),
                        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
                    ]
                })
                .collect(),
            child: None,
        }),
        (None, Some(pid)) => Some(Target::Pid(pid)),
        (None, None) => None,
    };
    if let Some(t) = target.as_mut() {
        t.start()?;
    }
    println!(
        "conformance of the participant on {} (replies on {})",
        kit.commands_topic, kit.reply_topic
    );
    let started = Instant::now();
    // The window the audit checks read: every saga id the kit makes is younger.
    let since = chrono::Utc::now() - chrono::Duration::seconds(5);
    let mut report = Report {
        passed: 0,
        failed: 0,
        skipped: 0,
    };

    // The first command also waits for the participant to be up.
    let a = kit.profile.action.instance();
    let first = reply_shape(&kit, &a, target.as_mut()).await;
    match first {
        Ok((sent, payload)) => {
            report.record(
                "reply fields and headers",
                Ok(format!("{} answered: {payload}", sent.command.command_type)),
            );
            report.record("trace propagation", trace(&kit, &sent).await);
            match &receiver {
                Some(r) => report.record("spans exported (OTLP)", exported_spans(&kit, r, &sent).await),
                None => report.skip("spans exported (OTLP)", "needs --otlp"),
            }
            report.record("repeats from the inbox", repeats(&kit, &a, &sent, &payload).await);
            report.record("effect once, undone", effect_and_compensation(&kit, &a).await);
        }
        Err(e) => report.record("reply fields and headers", Err(e)),
    }
    report.record("business failure", business_failure(&kit).await);
    report.record("compensation first", compensation_first(&kit).await);
    report.record("poison dead-lettered", poison(&kit).await);
    match &args.database_url {
        Some(url) => report.record("database outage", database_outage(&kit, url).await),
        None => report.skip("database outage", "needs --database-url"),
    }
    match &endpoints {
        Some(e) => {
            let topic = &kit.profile.commands_topic;
            report.record("audit ledger", audit::ledger(e, &kit.ledger, topic, since).await);
            report.record("audit unclaimed", audit::unclaimed(e, since).await);
            report.record("audit facts", audit::facts(e, &kit.profile.facts).await);
        }
        None => {
            for name in ["audit ledger", "audit unclaimed", "audit facts"] {
                report.skip(name, "needs --http");
            }
        }
    }
    match target.as_mut() {
        Some(t) => report.record("crash after commit", crash(&kit, t, args.crash_commands).await),
        None => report.skip("crash after commit", "needs --run or --pid"),
    }
    report.record("no technical replies", clean_replies(&kit));
    if let Some(t) = target.as_mut() {
        t.stop();
    }
    println!("checked in {:.1} s", started.elapsed().as_secs_f64());
    println!(
        "conformance: {} passed, {} failed, {} skipped",
        report.passed, report.failed, report.skipped
    );
    if report.failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
