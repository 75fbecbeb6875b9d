//! Rendering: human tables, or JSON (one document; JSON lines for streams).

use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::{ContentArrangement, Table};
use prost_types::Timestamp;
use saga_proto::v1 as pb;
use serde_json::{Value, json};

pub fn time(t: Option<&Timestamp>) -> String {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
        .unwrap_or_default()
}

pub fn state(s: i32) -> &'static str {
    match pb::SagaState::try_from(s) {
        Ok(pb::SagaState::Running) => "running",
        Ok(pb::SagaState::Compensating) => "compensating",
        Ok(pb::SagaState::Completed) => "completed",
        Ok(pb::SagaState::Compensated) => "compensated",
        Ok(pb::SagaState::Failed) => "failed",
        _ => "unknown",
    }
}

fn status(s: i32) -> &'static str {
    match pb::PhaseStatus::try_from(s) {
        Ok(pb::PhaseStatus::Pending) => "pending",
        Ok(pb::PhaseStatus::InFlight) => "in flight",
        Ok(pb::PhaseStatus::RetryScheduled) => "retry scheduled",
        Ok(pb::PhaseStatus::Succeeded) => "succeeded",
        Ok(pb::PhaseStatus::Rejected) => "rejected",
        Ok(pb::PhaseStatus::Abandoned) => "abandoned",
        Ok(pb::PhaseStatus::Exhausted) => "exhausted",
        _ => "unknown",
    }
}

fn phase(p: i32) -> &'static str {
    match pb::Phase::try_from(p) {
        Ok(pb::Phase::Action) => "action",
        Ok(pb::Phase::Compensation) => "compensation",
        _ => "unknown",
    }
}

pub fn replay_outcome(o: i32) -> &'static str {
    match pb::ReplayOutcome::try_from(o) {
        Ok(pb::ReplayOutcome::Replayed) => "replayed",
        Ok(pb::ReplayOutcome::WouldReplay) => "would replay",
        Ok(pb::ReplayOutcome::AlreadyInProgress) => "already in progress",
        Ok(pb::ReplayOutcome::AlreadyCompensated) => "already compensated",
        Ok(pb::ReplayOutcome::NotReplayable) => "not replayable",
        Ok(pb::ReplayOutcome::Failed) => "failed",
        _ => "unknown",
    }
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    // No wrapping: ids and times stay whole and lines stay greppable; long text is cut instead.
    t.load_style(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().copied());
    t
}

/// At most `max` characters, with an ellipsis when cut.
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(max - 1).collect::<String>())
    }
}

fn json_text(text: &str) -> Value {
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
    }
}

fn phase_json(p: &pb::PhaseView) -> Value {
    json!({
        "command": p.command_type,
        "status": status(p.status),
        "attempt": p.attempt,
        "started_at": time(p.started_at.as_ref()),
        "finished_at": time(p.finished_at.as_ref()),
        "deadline": time(p.deadline.as_ref()),
        "retry_at": time(p.retry_at.as_ref()),
        "last_error": p.last_error,
        "reply": json_text(&p.reply_payload_json),
    })
}

pub fn hold_json(h: &pb::Hold) -> Value {
    json!({
        "operator": h.operator,
        "reason": h.reason,
        "placed_at": time(h.placed_at.as_ref()),
    })
}

pub fn saga_json(v: &pb::SagaView) -> Value {
    json!({
        "saga_id": v.saga_id,
        "saga_type": v.saga_type,
        "definition_version": v.definition_version,
        "state": state(v.state),
        "current_step": v.current_step,
        "failure_reason": v.failure_reason,
        "idempotency_key": v.idempotency_key,
        "search_keys": v.search_keys.iter().map(|k| json!({"name": k.name, "value": k.value})).collect::<Vec<_>>(),
        "hold": v.hold.as_ref().map(hold_json),
        "version": v.version,
        "created_at": time(v.created_at.as_ref()),
        "updated_at": time(v.updated_at.as_ref()),
        "context": json_text(&v.context_json),
        "steps": v.steps.iter().map(|s| json!({
            "index": s.index,
            "name": s.name,
            "participant": s.participant,
            "action": s.action.as_ref().map(phase_json),
            "compensation": s.compensation.as_ref().map(phase_json),
        })).collect::<Vec<_>>(),
    })
}

pub fn event_json(e: &pb::SagaEvent) -> Value {
    json!({"seq": e.seq, "at": time(e.at.as_ref()), "kind": e.kind, "actor": e.actor, "data": json_text(&e.data_json)})
}

pub fn summary_json(s: &pb::SagaSummary) -> Value {
    json!({
        "saga_id": s.saga_id,
        "saga_type": s.saga_type,
        "state": state(s.state),
        "current_step": s.current_step,
        "failure_reason": s.failure_reason,
        "created_at": time(s.created_at.as_ref()),
        "updated_at": time(s.updated_at.as_ref()),
    })
}

pub fn command_json(c: &pb::PlannedCommand) -> Value {
    json!({
        "step_index": c.step_index,
        "step_name": c.step_name,
        "phase": phase(c.phase),
        "attempt": c.attempt,
        "command": c.command_type,
        "topic": c.topic,
    })
}

pub fn replay_json(r: &pb::ReplayResult) -> Value {
    json!({
        "saga_id": r.saga_id,
        "outcome": replay_outcome(r.outcome),
        "detail": r.detail,
        "commands": r.commands.iter().map(command_json).collect::<Vec<_>>(),
    })
}

fn phase_cell(p: Option<&pb::PhaseView>) -> String {
    match p {
        None => "— (pivot)".into(),
        Some(p) if p.attempt == 0 => format!("{} · {}", p.command_type, status(p.status)),
        Some(p) => format!(
            "{} · {} · attempt {}",
            p.command_type,
            status(p.status),
            p.attempt
        ),
    }
}

pub fn saga_text(v: &pb::SagaView, history: &[pb::SagaEvent]) -> String {
    let mut out = format!(
        "saga     {}\ntype     {} v{}\nstate    {}\n",
        v.saga_id,
        v.saga_type,
        v.definition_version,
        state(v.state)
    );
    if !v.current_step.is_empty() {
        out += &format!("step     {}\n", v.current_step);
    }
    if !v.failure_reason.is_empty() {
        out += &format!("reason   {}\n", v.failure_reason);
    }
    if !v.idempotency_key.is_empty() {
        out += &format!("key      {}\n", v.idempotency_key);
    }
    for k in &v.search_keys {
        out += &format!("by key   {} = {}\n", k.name, k.value);
    }
    if let Some(h) = &v.hold {
        out += &format!(
            "HELD     by {} since {}: {}\n",
            h.operator,
            time(h.placed_at.as_ref()),
            h.reason
        );
    }
    out += &format!(
        "created  {}\nupdated  {}\ncontext  {}\n\n",
        time(v.created_at.as_ref()),
        time(v.updated_at.as_ref()),
        v.context_json
    );
    let mut steps = table(&["#", "STEP", "PARTICIPANT", "ACTION", "COMPENSATION", "LAST ERROR"]);
    for s in &v.steps {
        let error = [s.compensation.as_ref(), s.action.as_ref()]
            .into_iter()
            .flatten()
            .map(|p| p.last_error.as_str())
            .find(|e| !e.is_empty())
            .unwrap_or_default();
        steps.add_row(vec![
            s.index.to_string(),
            s.name.clone(),
            s.participant.clone(),
            phase_cell(s.action.as_ref()),
            phase_cell(s.compensation.as_ref()),
            cut(error, 60),
        ]);
    }
    out += &format!("{steps}\n\n");
    if !history.is_empty() {
        let mut h = table(&["TIME", "ACTOR", "EVENT", "DETAILS"]);
        for e in history {
            let mut data = json_text(&e.data_json);
            if let Value::Object(m) = &mut data {
                m.remove("kind");
            }
            let details = match &data {
                Value::Object(m) if m.is_empty() => String::new(),
                other => other.to_string(),
            };
            h.add_row(vec![
                time(e.at.as_ref()),
                e.actor.clone(),
                e.kind.clone(),
                cut(&details, 110),
            ]);
        }
        out += &format!("{h}\n");
    }
    out
}

pub fn list_text(sagas: &[pb::SagaSummary]) -> String {
    let mut t = table(&["SAGA", "TYPE", "STATE", "STEP", "CREATED", "UPDATED", "REASON"]);
    for s in sagas {
        t.add_row(vec![
            s.saga_id.clone(),
            s.saga_type.clone(),
            state(s.state).to_owned(),
            s.current_step.clone(),
            time(s.created_at.as_ref()),
            time(s.updated_at.as_ref()),
            cut(&s.failure_reason, 70),
        ]);
    }
    format!("{t}\n{} saga(s)", sagas.len())
}

pub fn commands_text(commands: &[pb::PlannedCommand]) -> String {
    commands
        .iter()
        .map(|c| {
            format!(
                "{} (step {} `{}`, {}, attempt {}) → {}",
                c.command_type,
                c.step_index,
                c.step_name,
                phase(c.phase),
                c.attempt,
                c.topic
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

pub fn replay_text(r: &pb::ReplayResult) -> String {
    let mut line = format!("{}  {}", r.saga_id, replay_outcome(r.outcome));
    if !r.commands.is_empty() {
        line += &format!(": {}", commands_text(&r.commands));
    }
    if !r.detail.is_empty() {
        line += &format!(" ({})", r.detail);
    }
    line
}

/// One saga a job handled: `<saga id>  <outcome>: <commands> (<detail>)`.
pub fn item_text(i: &pb::JobItem) -> String {
    let Some(r) = &i.result else {
        return i.outcome.clone();
    };
    let mut line = format!("{}  {}", r.saga_id, i.outcome);
    if !r.commands.is_empty() {
        line += &format!(": {}", commands_text(&r.commands));
    }
    if !r.detail.is_empty() {
        line += &format!(" ({})", r.detail);
    }
    line
}

pub fn item_json(i: &pb::JobItem) -> Value {
    let mut v = i.result.as_ref().map(replay_json).unwrap_or_else(|| json!({}));
    v["outcome"] = json!(i.outcome);
    v["seq"] = json!(i.seq);
    v
}

/// A bulk job's plan: how many sagas, and the first of them.
pub fn plan_text(p: &pb::BulkPlan) -> String {
    let mut out = format!(
        "{}{} saga(s) selected{}",
        if p.capped { "at least " } else { "" },
        p.count,
        if p.capped {
            " (the job stops at its limit)"
        } else {
            ""
        }
    );
    if !p.sample.is_empty() {
        out += "; the first:\n";
        out += &list_text(&p.sample);
    }
    out
}

pub fn plan_json(p: &pb::BulkPlan) -> Value {
    json!({
        "count": p.count,
        "capped": p.capped,
        "sample": p.sample.iter().map(summary_json).collect::<Vec<_>>(),
    })
}

pub fn job_state(s: i32) -> &'static str {
    match pb::JobState::try_from(s) {
        Ok(pb::JobState::Running) => "running",
        Ok(pb::JobState::Paused) => "paused",
        Ok(pb::JobState::Completed) => "completed",
        Ok(pb::JobState::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

/// A job's outcome counts, e.g. `replayed 3, not_replayable 1`.
fn counts(j: &pb::Job) -> String {
    let mut counts: Vec<_> = j.counts.iter().collect();
    counts.sort();
    counts
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a job selects, in words: `register_user failed at create_user since …`.
fn selection(j: &pb::Job) -> String {
    let Some(f) = &j.filter else {
        return String::new();
    };
    let mut words = vec![if f.saga_type.is_empty() {
        "any type".to_owned()
    } else {
        f.saga_type.clone()
    }];
    words.push(state(f.state).to_owned());
    if !f.current_step.is_empty() {
        words.push(format!("at {}", f.current_step));
    }
    if f.created_after.is_some() {
        words.push(format!("since {}", time(f.created_after.as_ref())));
    }
    if f.created_before.is_some() {
        words.push(format!("until {}", time(f.created_before.as_ref())));
    }
    words.join(" ")
}

pub fn job_json(j: &pb::Job) -> Value {
    json!({
        "job_id": j.job_id, "kind": j.kind, "state": job_state(j.state), "operator": j.operator,
        "reason": j.reason, "selects": selection(j), "rate_per_second": j.rate_per_second,
        "limit": j.limit, "processed": j.processed, "counts": j.counts, "owner": j.owner,
        "last_error": j.last_error, "cancelled_by": j.cancelled_by, "cancel_reason": j.cancel_reason,
        "paused_by": j.paused_by, "pause_reason": j.pause_reason,
        "created_at": time(j.created_at.as_ref()), "updated_at": time(j.updated_at.as_ref()),
        "finished_at": time(j.finished_at.as_ref()),
    })
}

pub fn jobs_text(jobs: &[pb::Job]) -> String {
    let mut t = table(&[
        "JOB",
        "KIND",
        "STATE",
        "PROCESSED",
        "OUTCOMES",
        "SELECTS",
        "OPERATOR",
        "CREATED",
    ]);
    for j in jobs {
        t.add_row(vec![
            j.job_id.clone(),
            j.kind.clone(),
            job_state(j.state).to_owned(),
            format!("{}/{}", j.processed, j.limit),
            counts(j),
            cut(&selection(j), 60),
            j.operator.clone(),
            time(j.created_at.as_ref()),
        ]);
    }
    format!("{t}\n{} job(s)", jobs.len())
}

pub fn job_text(j: &pb::Job) -> String {
    let mut lines = vec![
        format!("job {}  {}  {}", j.job_id, j.kind, job_state(j.state)),
        format!(
            "selects: {} (at most {}, {}/s)",
            selection(j),
            j.limit,
            j.rate_per_second
        ),
        format!("by {}: {}", j.operator, j.reason),
        format!(
            "processed: {}{}",
            j.processed,
            if j.counts.is_empty() {
                String::new()
            } else {
                format!(" ({})", counts(j))
            }
        ),
        format!(
            "created {}, updated {}",
            time(j.created_at.as_ref()),
            time(j.updated_at.as_ref())
        ),
    ];
    if !j.owner.is_empty() {
        lines.push(format!("worked by {}", j.owner));
    }
    if !j.last_error.is_empty() {
        lines.push(format!("held up by: {}", j.last_error));
    }
    if !j.cancelled_by.is_empty() {
        lines.push(format!("cancelled by {}: {}", j.cancelled_by, j.cancel_reason));
    }
    if !j.paused_by.is_empty() {
        let verb = if j.state == pb::JobState::Paused as i32 {
            "paused"
        } else {
            "last paused or resumed"
        };
        lines.push(format!("{verb} by {}: {}", j.paused_by, j.pause_reason));
    }
    if j.finished_at.is_some() {
        lines.push(format!("finished {}", time(j.finished_at.as_ref())));
    }
    lines.join("\n")
}
