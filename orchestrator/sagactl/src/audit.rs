//! `sagactl audit`: the consistency audit's report, as a table or JSON.

use comfy_table::{Cell, ContentArrangement, Table, presets::UTF8_BORDERS_ONLY};
use saga_proto::v1 as pb;
use serde_json::{Value, json};

use crate::output;

fn parsed(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// The whole report as one JSON object.
pub fn report_json(r: &pb::AuditReport) -> Value {
    json!({
        "since": output::time(r.since.as_ref()),
        "until": output::time(r.until.as_ref()),
        "saga_type": (!r.saga_type.is_empty()).then_some(&r.saga_type),
        "started_at": output::time(r.started_at.as_ref()),
        "duration_seconds": r.duration_seconds,
        "sagas_checked": r.sagas_checked,
        "ledger_entries": r.ledger_entries,
        "retention_horizon": output::time(r.retention_horizon.as_ref()),
        "removed_by_retention": r.removed_by_retention,
        "pruned_by_participants": r.pruned_by_participants,
        "participants": r.participants.iter().map(|p| json!({
            "name": p.name, "service": p.service, "commands_topic": p.commands_topic,
            "ledger_entries": p.ledger_entries,
            "pruned_before": output::time(p.pruned_before.as_ref()),
        })).collect::<Vec<_>>(),
        "unaudited_topics": r.unaudited_topics,
        "findings": r.findings.iter().map(|f| json!({
            "kind": f.kind,
            "saga_id": f.saga_id,
            "saga_type": f.saga_type,
            "step_index": f.step_index,
            "step_name": f.step_name,
            "phase": f.phase,
            "participant": f.participant,
            "message": f.message,
            "orchestrator": parsed(&f.orchestrator_json),
            "participant_record": parsed(&f.participant_json),
        })).collect::<Vec<_>>(),
    })
}

/// A summary line per participant, then one row per finding.
pub fn report_text(r: &pb::AuditReport) -> String {
    let mut out = format!(
        "audited {} saga(s) created {} … {}{} against {} ledger entr{} in {:.2} s\n",
        r.sagas_checked,
        output::time(r.since.as_ref()),
        output::time(r.until.as_ref()),
        if r.saga_type.is_empty() {
            String::new()
        } else {
            format!(" (type {})", r.saga_type)
        },
        r.ledger_entries,
        if r.ledger_entries == 1 { "y" } else { "ies" },
        r.duration_seconds
    );
    for p in &r.participants {
        out += &format!(
            "  {} ({}, {}): {} entries\n",
            p.name, p.service, p.commands_topic, p.ledger_entries
        );
    }
    if !r.unaudited_topics.is_empty() {
        out += &format!(
            "  not audited (no participant configured): {}\n",
            r.unaudited_topics.join(", ")
        );
    }
    if r.removed_by_retention > 0 {
        out += &format!(
            "  {} saga(s) created before {} are gone from the orchestrator (retention): their participants' records are not drift\n",
            r.removed_by_retention,
            output::time(r.retention_horizon.as_ref())
        );
    }
    if r.pruned_by_participants > 0 {
        let horizons: Vec<String> = r
            .participants
            .iter()
            .filter(|p| p.pruned_before.is_some())
            .map(|p| format!("{} before {}", p.name, output::time(p.pruned_before.as_ref())))
            .collect();
        out += &format!(
            "  {} finding(s) about records participants pruned past their dedup window ({}) are not drift\n",
            r.pruned_by_participants,
            horizons.join(", ")
        );
    }
    if r.findings.is_empty() {
        out += "no drift found\n";
        return out;
    }
    let mut t = Table::new();
    // No wrapping, like the other tables: ids stay whole and lines stay greppable.
    t.load_style(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(["kind", "saga", "type", "step", "participant", "what"]);
    for f in &r.findings {
        let step = match (f.step_index, f.step_name.as_str()) {
            (Some(i), "") => format!("{i} {}", f.phase),
            (Some(i), name) => format!("{i} {name} {}", f.phase),
            (None, _) => String::new(),
        };
        t.add_row([
            Cell::new(&f.kind),
            Cell::new(&f.saga_id),
            Cell::new(&f.saga_type),
            Cell::new(step.trim()),
            Cell::new(&f.participant),
            Cell::new(&f.message),
        ]);
    }
    out += &format!("{t}\n{} finding(s): drift found\n", r.findings.len());
    out
}
