//! Compatibility with the previous release: sagas that the engine of commit c01830e started and
//! stored mid-flight are finished by this engine exactly as that engine would have finished them.
//!
//! a61a6af changed the engine (steps gained `completion` and `child`, phases the status `skipped`,
//! definitions groups, conditions, waits and children; compensation follows completion rank and
//! falls back to the step index for records without ranks). The stored records and the catalog
//! of the release before it must still work.
//!
//! **Fixtures** (`tests/fixtures/c01830e/`), all made by the *old* engine, never by this one:
//! - `sagas.toml`: the catalog of c01830e (`orchestrator/sagas.toml`), byte for byte.
//! - one JSON file per mid-flight point: the `saga` record exactly as the old engine serialized
//!   it, what is `active` (step, phase, attempt, status, command type, wake time) and what the
//!   decision that made it sent, the old `wake_at()`, `current_step()` and `replayability()`, and
//!   `finishes`: a few ways to finish the saga, each a list of inputs (at given times) with what
//!   the old engine answered to each (error, or changed, state, commands, events) and the record
//!   it ended with. The points: publish_post with create_post in flight; publish_post
//!   compensating with ReleasePostQuota in flight; register_user parked after DeleteUser spent its
//!   hour; publish_post with the pivot confirm_post waiting to retry; a completed publish_post and a
//!   compensated register_user.
//! - `make_fixtures.rs`: the program that made them (an example of the old engine).
//!
//! The tests load each definition from the old TOML and validate it with this engine's
//! `SagaDefinition::validate`, read each record with this engine's types and check it serializes
//! back to the same JSON (no new field appears), then feed every recorded input to this engine's
//! `decide` and require the old engine's answer: same errors, states, commands (step, phase,
//! attempt, payload, deadline), events and final record — except the completion ranks this engine
//! adds for actions that end under it. Each test also spells out the outcome that matters:
//! compensations highest index first for these rank-less records, no command sent twice.
//!
//! **Regenerating** (from the repository root; the old engine builds in its own target directory):
//!
//! ```sh
//! out="$PWD/orchestrator/engine/tests/fixtures/c01830e"
//! git worktree add /tmp/old-engine c01830e
//! mkdir -p /tmp/old-engine/orchestrator/engine/examples
//! cp "$out/make_fixtures.rs" /tmp/old-engine/orchestrator/engine/examples/
//! (cd /tmp/old-engine && CARGO_TARGET_DIR=/tmp/old-target \
//!     cargo run -p saga-engine --example make_fixtures -- "$out")
//! git worktree remove --force /tmp/old-engine   # --force: the copied example is untracked
//! cargo test -p saga-engine --test compatibility
//! ```
//!
//! The program is deterministic (fixed ids and clock), so regenerating gives the same files.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use saga_engine::{
    Command, Decision, EngineError, Input, Phase, PhaseStatus, Saga, SagaDefinition, SagaState, StepKind,
    decide, replayability,
};
use serde::Deserialize;
use serde_json::{Value, json};

const A: Phase = Phase::Action;
const C: Phase = Phase::Compensation;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/c01830e")
}

/// The catalog file's shape, as the orchestrator reads it (`[[saga]]` entries).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    saga: Vec<SagaDefinition>,
}

/// The old catalog, parsed and validated by this engine.
fn old_catalog() -> Vec<SagaDefinition> {
    let path = fixtures().join("sagas.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file: CatalogFile = toml::from_str(&text).unwrap_or_else(|e| panic!("the old catalog parses: {e}"));
    for def in &file.saga {
        def.validate()
            .unwrap_or_else(|e| panic!("{} v{} validates: {e}", def.name, def.version));
    }
    file.saga
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    fixture: String,
    made_by: String,
    story: String,
    definition: DefinitionRef,
    taken_at: DateTime<Utc>,
    active: Vec<Active>,
    sent_by_last_decision: Vec<Value>,
    wake_at: Option<DateTime<Utc>>,
    current_step: Option<usize>,
    replayability: String,
    saga: Value,
    finishes: Vec<Finish>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefinitionRef {
    catalog: String,
    name: String,
    version: u32,
}

/// A phase the old engine left sent and unanswered (or waiting to be sent again).
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Active {
    step: usize,
    phase: Phase,
    attempt: u32,
    status: PhaseStatus,
    command_type: String,
    wake_at: Option<DateTime<Utc>>,
}

/// A way to finish the saga, as the old engine went through it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Finish {
    name: String,
    story: String,
    inputs: Vec<Fed>,
    /// The record the old engine ended with.
    saga: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fed {
    at: DateTime<Utc>,
    input: Value,
    old_engine: Value,
}

/// A fixture read with this engine's types, its definition from the old TOML.
struct Loaded {
    fixture: Fixture,
    def: SagaDefinition,
    saga: Saga,
}

/// The old record read with this engine's types; every check that needs no input.
fn load(name: &str) -> Loaded {
    let path = fixtures().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let fixture: Fixture = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(fixture.fixture, name);
    assert!(
        fixture.made_by.starts_with("saga-engine at c01830e"),
        "{name} was made by {}",
        fixture.made_by
    );
    assert_eq!(fixture.definition.catalog, "sagas.toml");
    let def = old_catalog()
        .into_iter()
        .find(|d| d.name == fixture.definition.name && d.version == fixture.definition.version)
        .unwrap_or_else(|| panic!("{name}: the old catalog has its definition"));

    let what = format!("{name} ({})", fixture.story);
    let saga: Saga = serde_json::from_value(fixture.saga.clone())
        .unwrap_or_else(|e| panic!("{what}: the old record deserializes: {e}"));
    assert_no_new_fields(name, &fixture.saga);
    let again = serde_json::to_value(&saga).unwrap_or_else(|e| panic!("{what}: serializes: {e}"));
    assert_no_new_fields(name, &again);
    assert_eq!(again, fixture.saga, "{what}: the record reads back unchanged");
    assert!(
        saga.steps
            .iter()
            .all(|s| s.completion.is_none() && s.child.is_none())
    );
    assert_eq!(saga.parent, None);

    // What was in flight, seen by this engine as the old one saw it.
    let active: Vec<Active> = saga
        .active_phases()
        .into_iter()
        .map(|(step, phase)| {
            let rec = saga.steps[step]
                .phase(phase)
                .unwrap_or_else(|| panic!("{name}: phase exists"));
            let def = &def.steps[step];
            let command_type = match phase {
                Phase::Action => def.action.clone(),
                Phase::Compensation => def.compensation.clone().unwrap_or_default(),
            };
            Active {
                step,
                phase,
                attempt: rec.attempt,
                status: rec.status,
                command_type,
                wake_at: rec.wake_at(),
            }
        })
        .collect();
    assert_eq!(active, fixture.active, "{name}: the active phases");
    for sent in &fixture.sent_by_last_decision {
        let sent: Command =
            serde_json::from_value(sent.clone()).unwrap_or_else(|e| panic!("{name}: an old command: {e}"));
        assert!(
            active
                .iter()
                .any(|a| (a.step, a.phase, a.attempt, a.command_type.as_str())
                    == (sent.step, sent.phase, sent.attempt, sent.command_type.as_str())),
            "{name}: the last command sent, {sent:?}, is the active attempt"
        );
    }
    assert_eq!(saga.wake_at(), fixture.wake_at, "{name}: wake_at");
    assert_eq!(saga.current_step(), fixture.current_step, "{name}: current_step");
    assert_eq!(
        format!("{:?}", replayability(&saga)),
        fixture.replayability,
        "{name}: replayability"
    );
    assert!(fixture.taken_at >= saga.updated_at);
    Loaded { fixture, def, saga }
}

/// The fields a61a6af added never appear in a record of the old engine read back.
fn assert_no_new_fields(name: &str, record: &Value) {
    assert!(record.get("parent").is_none(), "{name}: no parent");
    let steps = record["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("{name}: steps"));
    for step in steps {
        assert!(step.get("completion").is_none(), "{name}: no completion rank");
        assert!(step.get("child").is_none(), "{name}: no child");
    }
}

/// What this engine did with one of the recorded ways to finish.
struct Finished {
    /// Every command sent, in order.
    sent: Vec<Command>,
    saga: Saga,
}

impl Finished {
    fn sent(&self) -> Vec<(usize, Phase, u32, &str)> {
        self.sent
            .iter()
            .map(|c| (c.step, c.phase, c.attempt, c.command_type.as_str()))
            .collect()
    }

    /// The steps whose compensation was sent, in the order of the first attempt of each.
    fn compensated(&self) -> Vec<usize> {
        let mut order = Vec::new();
        for c in self.sent.iter().filter(|c| c.phase == C) {
            if !order.contains(&c.step) {
                order.push(c.step);
            }
        }
        order
    }

    fn ranks(&self) -> Vec<Option<u32>> {
        self.saga.steps.iter().map(|s| s.completion).collect()
    }
}

/// This engine's answer in the shape the fixture records the old engine's.
fn answer(result: &Result<Decision, EngineError>) -> Value {
    match result {
        Ok(d) => json!({
            "changed": d.changed,
            "state": d.saga.state,
            "commands": d.commands,
            "events": d.events,
        }),
        Err(e) => json!({ "error": e.to_string() }),
    }
}

impl Loaded {
    /// Feeds the inputs of the finish `name` to this engine and requires, after each, the old
    /// engine's answer; at the end, the old engine's record (plus the ranks this engine gives).
    fn finish(&self, name: &str) -> Finished {
        let fixture = &self.fixture.fixture;
        let finish = self
            .fixture
            .finishes
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("{fixture} has a finish `{name}`"));
        let what = format!("{fixture} / {name} ({})", finish.story);
        let mut saga = self.saga.clone();
        let mut sent: Vec<Command> = Vec::new();
        for (i, fed) in finish.inputs.iter().enumerate() {
            let input: Input = serde_json::from_value(fed.input.clone())
                .unwrap_or_else(|e| panic!("{what}: input {i} is an input of this engine: {e}"));
            let result = decide(&self.def, &saga, &input, fed.at);
            assert_eq!(
                answer(&result),
                fed.old_engine,
                "{what}: input {i} ({}) at {}: this engine's answer, then the old engine's",
                fed.input,
                fed.at
            );
            if let Ok(d) = result {
                assert!(d.children.is_empty(), "{what}: no child sagas");
                sent.extend(d.commands);
                saga = d.saga;
            }
        }
        let mut record = serde_json::to_value(&saga).unwrap_or_else(|e| panic!("{what}: serializes: {e}"));
        for step in record["steps"].as_array_mut().into_iter().flatten() {
            if let Some(step) = step.as_object_mut() {
                step.remove("completion");
            }
        }
        assert_no_new_fields(&what, &record);
        assert_eq!(
            record, finish.saga,
            "{what}: the final record, apart from completion ranks"
        );
        assert_no_command_sent_twice(&what, &self.saga, &sent);
        Finished { sent, saga }
    }
}

/// No (step, phase, attempt) is sent twice, and none the old engine had already sent.
fn assert_no_command_sent_twice(what: &str, before: &Saga, sent: &[Command]) {
    let mut seen = BTreeSet::new();
    for c in sent {
        let key = (c.step, c.phase == C, c.attempt);
        assert!(seen.insert(key), "{what}: {key:?} sent twice");
        let old = before.steps[c.step].phase(c.phase).map_or(0, |p| p.attempt);
        assert!(
            c.attempt > old,
            "{what}: attempt {} of step {} {} was already sent by the old engine",
            c.attempt,
            c.step,
            c.phase
        );
    }
}

const FIXTURES: [&str; 6] = [
    "publish_post_create_post_in_flight",
    "publish_post_release_quota_in_flight",
    "register_user_parked_on_delete_user",
    "publish_post_confirm_post_retry_scheduled",
    "publish_post_completed",
    "register_user_compensated",
];

#[test]
fn the_old_catalog_loads_and_validates_with_the_new_definitions() {
    let catalog = old_catalog();
    let names: Vec<(&str, u32)> = catalog.iter().map(|d| (d.name.as_str(), d.version)).collect();
    assert_eq!(names, [("register_user", 1), ("publish_post", 1)]);
    for def in &catalog {
        // Nothing new is read into an old definition: participant steps, one per stage, no conditions.
        assert_eq!(
            def.stages().len(),
            def.steps.len(),
            "{}: one step per stage",
            def.name
        );
        for step in &def.steps {
            assert_eq!(step.kind(), StepKind::Participant, "{} / {}", def.name, step.name);
            assert_eq!((&step.group, &step.when), (&None, &None));
            assert!(step.outputs.is_empty());
        }
    }
    let publish = &catalog[1];
    let pivots: Vec<bool> = (0..publish.steps.len()).map(|i| publish.is_pivot(i)).collect();
    assert_eq!(pivots, [false, false, true], "confirm_post is the pivot");
}

#[test]
fn every_old_record_reads_back_unchanged_and_in_the_same_place() {
    let mut files: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap_or_else(|e| panic!("the fixture directory: {e}"))
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".json").map(str::to_owned)
        })
        .collect();
    files.sort();
    let mut expected: Vec<String> = FIXTURES.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(files, expected, "every fixture is tested");
    for name in FIXTURES {
        let loaded = load(name);
        assert!(!loaded.fixture.finishes.is_empty(), "{name}: has ways to finish");
    }
}

#[test]
fn every_recorded_finish_gives_the_old_engines_answers() {
    for name in FIXTURES {
        let loaded = load(name);
        for finish in &loaded.fixture.finishes {
            loaded.finish(&finish.name);
        }
    }
}

/// (a) ReservePostQuota succeeded, CreatePost attempt 1 in flight.
#[test]
fn publish_post_with_create_post_in_flight_is_finished_as_before() {
    let f = load("publish_post_create_post_in_flight");
    assert_eq!(f.saga.state, SagaState::Running);
    assert_eq!(f.saga.active_phases(), [(1, A)]);
    assert_eq!(f.saga.steps[1].action.attempt, 1);

    let done = f.finish("create_post_succeeds_and_the_pivot_completes");
    assert_eq!(done.sent(), [(2, A, 1, "ConfirmPost")]);
    assert_eq!(done.saga.state, SagaState::Completed);
    assert_eq!(done.saga.context["post_count"], json!(3));
    // Ranks only for the actions that ended under this engine.
    assert_eq!(done.ranks(), [None, Some(1), Some(2)]);

    let rejected = f.finish("confirm_post_rejected_compensates_create_post_then_reserve_quota");
    assert_eq!(
        rejected.sent(),
        [
            (2, A, 1, "ConfirmPost"),
            (1, C, 1, "DeletePost"),
            (0, C, 1, "ReleasePostQuota"),
        ]
    );
    assert_eq!(rejected.compensated(), [1, 0], "highest index first");
    assert_eq!(rejected.saga.state, SagaState::Compensated);
    assert_eq!(rejected.ranks(), [None, Some(1), None]);

    let aborted = f.finish("aborted_while_create_post_is_in_flight");
    assert_eq!(
        aborted.sent(),
        [(1, C, 1, "DeletePost"), (0, C, 1, "ReleasePostQuota")]
    );
    assert_eq!(aborted.saga.steps[1].action.status, PhaseStatus::Abandoned);
    assert_eq!(aborted.saga.steps[2].action.status, PhaseStatus::Pending);
    assert_eq!(aborted.saga.state, SagaState::Compensated);

    let resent = f.finish("create_post_misses_its_deadline_and_is_sent_again");
    assert_eq!(resent.sent(), [(1, A, 2, "CreatePost"), (2, A, 1, "ConfirmPost")]);
    assert_eq!(resent.saga.state, SagaState::Completed);
}

/// (b) CreatePost rejected, compensating, ReleasePostQuota attempt 1 in flight.
#[test]
fn publish_post_compensating_with_release_quota_in_flight_is_finished_as_before() {
    let f = load("publish_post_release_quota_in_flight");
    assert_eq!(f.saga.state, SagaState::Compensating);
    assert_eq!(f.saga.active_phases(), [(0, C)]);
    assert_eq!(f.saga.steps[1].action.status, PhaseStatus::Rejected);

    let released = f.finish("release_succeeds");
    assert!(
        released.sent.is_empty(),
        "the in-flight attempt's answer is enough"
    );
    assert_eq!(released.saga.state, SagaState::Compensated);
    assert_eq!(released.ranks(), [None, None, None]);

    let retried = f.finish("release_is_retried_until_it_succeeds");
    assert_eq!(
        retried.sent(),
        [(0, C, 2, "ReleasePostQuota"), (0, C, 3, "ReleasePostQuota")]
    );
    assert_eq!(retried.saga.state, SagaState::Compensated);

    let operator = f.finish("operator_actions_while_compensating");
    assert!(operator.sent.is_empty());
    assert_eq!(operator.saga.state, SagaState::Compensated);
}

/// (c) register_user parked: DeleteAuthor done, DeleteUser spent its hour; nothing in flight.
#[test]
fn register_user_parked_on_delete_user_is_replayed_as_before() {
    let f = load("register_user_parked_on_delete_user");
    assert_eq!(f.saga.state, SagaState::Failed);
    assert!(f.saga.active_phases().is_empty());
    let exhausted = f.saga.steps[0]
        .compensation
        .as_ref()
        .map(|c| (c.status, c.attempt));
    assert_eq!(exhausted, Some((PhaseStatus::Exhausted, 73)));
    let author = f.saga.steps[1].compensation.as_ref().map(|c| c.status);
    assert_eq!(author, Some(PhaseStatus::Succeeded));

    let replayed = f.finish("replay_sends_delete_user_again_and_compensates");
    assert_eq!(
        replayed.sent(),
        [(0, C, 74, "DeleteUser")],
        "DeleteAuthor is not sent again"
    );
    assert_eq!(replayed.saga.state, SagaState::Compensated);
    assert_eq!(replayed.ranks(), [None, None]);

    let late = f.finish("late_answers_and_refused_actions_then_a_replay");
    assert_eq!(late.sent(), [(0, C, 74, "DeleteUser"), (0, C, 75, "DeleteUser")]);
    assert_eq!(late.saga.state, SagaState::Compensated);
}

/// (d) The pivot ConfirmPost failed technically and waits to be sent again.
#[test]
fn publish_post_with_the_pivot_waiting_to_retry_is_finished_as_before() {
    let f = load("publish_post_confirm_post_retry_scheduled");
    assert_eq!(f.saga.active_phases(), [(2, A)]);
    assert_eq!(f.saga.steps[2].action.status, PhaseStatus::RetryScheduled);
    assert!(f.fixture.sent_by_last_decision.is_empty());

    let confirmed = f.finish("the_retry_goes_out_and_the_post_is_confirmed");
    assert_eq!(confirmed.sent(), [(2, A, 2, "ConfirmPost")]);
    assert_eq!(confirmed.saga.state, SagaState::Completed);
    assert_eq!(confirmed.ranks(), [None, None, Some(1)]);

    // Both compensated steps ended under the old engine: no ranks, so highest index first.
    let rejected = f.finish("the_retry_is_rejected_and_both_steps_are_compensated");
    assert_eq!(
        rejected.sent(),
        [
            (2, A, 2, "ConfirmPost"),
            (1, C, 1, "DeletePost"),
            (0, C, 1, "ReleasePostQuota"),
        ]
    );
    assert_eq!(rejected.compensated(), [1, 0]);
    assert_eq!(rejected.saga.state, SagaState::Compensated);
    assert_eq!(rejected.ranks(), [None, None, None]);

    let late = f.finish("a_late_answer_to_attempt_1_confirms_the_post");
    assert!(
        late.sent.is_empty(),
        "the scheduled retry is not sent after the answer"
    );
    assert_eq!(late.saga.state, SagaState::Completed);

    let operator = f.finish("an_operator_sends_the_retry_at_once");
    assert_eq!(
        operator.sent(),
        [(2, A, 2, "ConfirmPost")],
        "sent once, not again at the old retry time"
    );
    assert_eq!(operator.saga.state, SagaState::Completed);

    // Abandoning the pivot gives it rank 1, but it owes nothing; the two rank-less steps follow
    // by index.
    let aborted = f.finish("aborted_while_waiting_to_retry");
    assert_eq!(
        aborted.sent(),
        [(1, C, 1, "DeletePost"), (0, C, 1, "ReleasePostQuota")]
    );
    assert_eq!(aborted.ranks(), [None, None, Some(1)]);
    assert_eq!(aborted.saga.state, SagaState::Compensated);
}

/// (e) Ended sagas stay as they ended.
#[test]
fn completed_and_compensated_sagas_stay_ended() {
    let completed = load("publish_post_completed");
    assert_eq!(completed.saga.state, SagaState::Completed);
    let after = completed.finish("nothing_moves_a_completed_saga");
    assert!(after.sent.is_empty());
    assert_eq!(after.saga, completed.saga);

    let compensated = load("register_user_compensated");
    assert_eq!(compensated.saga.state, SagaState::Compensated);
    let after = compensated.finish("nothing_moves_a_compensated_saga");
    assert!(after.sent.is_empty());
    assert_eq!(after.saga, compensated.saga);
}
