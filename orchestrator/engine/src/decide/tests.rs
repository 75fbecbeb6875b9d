//! The engine's examples: one test per rule, driven through `start` and `decide`.

use super::*;
use crate::definition::StepDefinition;
use serde_json::json;

fn step(name: &str, compensation: Option<&str>, attempts: u32) -> StepDefinition {
    StepDefinition {
        name: name.into(),
        participant: format!("{name}.commands"),
        action: format!("Do{name}"),
        compensation: compensation.map(Into::into),
        deadline_ms: 1_000,
        retry: RetryPolicy {
            give_up_after_ms: None,
            max_attempts: Some(attempts),
            initial_backoff_ms: 100,
            max_backoff_ms: 100,
            multiplier: 1.0,
            jitter: 0.0,
        },
        compensation_retry: RetryPolicy {
            give_up_after_ms: None,
            max_attempts: Some(2),
            initial_backoff_ms: 100,
            max_backoff_ms: 100,
            multiplier: 1.0,
            jitter: 0.0,
        },
        ..StepDefinition::default()
    }
}

/// a, b, c compensable; d a pivot; e after the pivot.
fn def() -> SagaDefinition {
    SagaDefinition {
        name: "demo".into(),
        version: 1,
        description: String::new(),
        input: vec![],
        generated_ids: vec![],
        search_keys: vec![],
        steps: vec![
            step("a", Some("UndoA"), 2),
            step("b", Some("UndoB"), 2),
            step("c", Some("UndoC"), 2),
            step("d", None, 2),
            step("e", Some("UndoE"), 2),
        ],
    }
}

struct Run {
    def: SagaDefinition,
    saga: Saga,
    now: DateTime<Utc>,
    last: Decision,
}

impl Run {
    fn start() -> Self {
        Self::with(def())
    }

    fn with(def: SagaDefinition) -> Self {
        let now = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).expect("valid time");
        let last = start(&def, SagaId::new_v7(), Map::new(), now);
        Run {
            saga: last.saga.clone(),
            def,
            now,
            last,
        }
    }

    fn feed(&mut self, input: Input) -> &Decision {
        self.last = decide(&self.def, &self.saga, &input, self.now).expect("decides");
        self.saga = self.last.saga.clone();
        &self.last
    }

    fn reply(&mut self, step: usize, phase: Phase, attempt: u32, outcome: ReplyOutcome) -> &Decision {
        self.feed(Input::Reply(Reply {
            step,
            phase,
            attempt,
            outcome,
        }))
    }

    fn ok(&mut self, step: usize, phase: Phase) -> &Decision {
        let attempt = self.saga.steps[step].phase(phase).map_or(0, |p| p.attempt);
        self.reply(step, phase, attempt, ReplyOutcome::Success { payload: json!({}) })
    }

    /// Answers the actions of `steps` with success, one after the other.
    fn ok_actions(&mut self, steps: std::ops::Range<usize>) {
        for s in steps {
            self.ok(s, Phase::Action);
        }
    }

    fn advance(&mut self, ms: i64) -> &Decision {
        self.now += TimeDelta::milliseconds(ms);
        self.feed(Input::Wake)
    }

    /// Both attempts the test definition allows miss their 1 s deadline, with the 100 ms
    /// backoff between them: the active phase's budget is spent.
    fn miss_both_attempts(&mut self) {
        self.advance(1_000);
        self.advance(100);
        self.advance(1_000);
    }

    fn failure(&self) -> &str {
        self.saga.failure_reason.as_deref().unwrap_or_default()
    }

    fn sent(&self) -> Vec<(usize, Phase, u32)> {
        self.last
            .commands
            .iter()
            .map(|c| (c.step, c.phase, c.attempt))
            .collect()
    }

    fn kinds(&self) -> Vec<&'static str> {
        self.last.events.iter().map(Event::kind).collect()
    }
}

fn business(reason: &str) -> ReplyOutcome {
    ReplyOutcome::BusinessFailure {
        reason: reason.into(),
    }
}

fn technical(reason: &str) -> ReplyOutcome {
    ReplyOutcome::TechnicalFailure {
        reason: reason.into(),
    }
}

#[test]
fn happy_path_completes_and_merges_replies_into_the_context() {
    let mut r = Run::start();
    assert_eq!(r.sent(), vec![(0, Phase::Action, 1)]);
    assert_eq!(r.last.commands[0].command_type, "Doa");
    assert_eq!(r.last.commands[0].participant, "a.commands");
    r.reply(
        0,
        Phase::Action,
        1,
        ReplyOutcome::Success {
            payload: json!({"user_id": "u1"}),
        },
    );
    assert_eq!(r.sent(), vec![(1, Phase::Action, 1)]);
    assert_eq!(
        r.last.commands[0].payload,
        json!({"user_id": "u1"}),
        "later steps see earlier replies"
    );
    r.ok_actions(1..5);
    assert_eq!(r.saga.state, SagaState::Completed);
    assert_eq!(r.kinds(), vec!["step_succeeded", "saga_completed"]);
    assert_eq!(r.saga.wake_at(), None);
    assert_eq!(r.saga.current_step(), None);
}

#[test]
fn business_failure_compensates_completed_steps_in_reverse_order() {
    let mut r = Run::start();
    r.ok(0, Phase::Action);
    r.ok(1, Phase::Action);
    r.reply(2, Phase::Action, 1, business("invalid title"));
    assert_eq!(r.saga.state, SagaState::Compensating);
    assert_eq!(
        r.sent(),
        vec![(1, Phase::Compensation, 1)],
        "the rejected step itself is not undone"
    );
    assert_eq!(r.last.commands[0].command_type, "UndoB");
    assert_eq!(
        r.saga.failure_reason.as_deref(),
        Some("step `c` was rejected: invalid title")
    );
    r.ok(1, Phase::Compensation);
    assert_eq!(r.sent(), vec![(0, Phase::Compensation, 1)]);
    r.ok(0, Phase::Compensation);
    assert_eq!(r.saga.state, SagaState::Compensated);
    assert!(r.last.commands.is_empty());
}

#[test]
fn rejection_of_the_first_step_compensates_nothing() {
    let mut r = Run::start();
    r.reply(0, Phase::Action, 1, business("duplicate e-mail"));
    assert_eq!(r.saga.state, SagaState::Compensated);
    assert!(r.last.commands.is_empty());
}

#[test]
fn duplicate_and_stale_replies_change_nothing() {
    let mut r = Run::start();
    r.ok(0, Phase::Action);
    let before = r.saga.clone();
    let d = r
        .reply(
            0,
            Phase::Action,
            1,
            ReplyOutcome::Success {
                payload: json!({"x": 1}),
            },
        )
        .clone();
    assert!(!d.changed && d.commands.is_empty());
    assert_eq!(r.saga, before);
    assert!(matches!(&d.events[..], [Event::ReplyIgnored { reason, .. }] if reason.starts_with("duplicate")));

    // Attempt 1 of step b misses its deadline; attempt 2 goes out after the backoff.
    r.advance(1_000);
    assert_eq!(r.kinds(), vec!["deadline_missed", "attempt_failed"]);
    r.advance(100);
    assert_eq!(r.sent(), vec![(1, Phase::Action, 2)]);
    let d = r.reply(1, Phase::Action, 1, business("late refusal")).clone();
    assert!(!d.changed);
    assert!(matches!(&d.events[..], [Event::ReplyIgnored { reason, .. }] if reason.starts_with("stale")));
    let d = r.reply(7, Phase::Action, 1, business("x")).clone();
    assert!(!d.changed, "unknown step is ignored");
    let d = r.reply(3, Phase::Compensation, 0, business("x")).clone();
    assert!(!d.changed, "a pivot has no compensation to answer for");
}

#[test]
fn late_answer_while_waiting_to_retry_is_accepted() {
    let mut r = Run::start();
    r.advance(1_000);
    assert_eq!(r.saga.steps[0].action.status, PhaseStatus::RetryScheduled);
    r.reply(0, Phase::Action, 1, technical("db down"));
    assert!(
        !r.last.changed,
        "a technical failure adds nothing to a scheduled retry"
    );
    r.ok(0, Phase::Action);
    assert_eq!(r.sent(), vec![(1, Phase::Action, 1)]);
    assert_eq!(r.saga.steps[0].action.attempt, 1);
}

#[test]
fn wake_before_anything_is_due_is_a_no_op() {
    let mut r = Run::start();
    let d = r.advance(999).clone();
    assert!(!d.changed && d.events.is_empty());
    assert_eq!(r.saga.wake_at(), Some(r.now + TimeDelta::milliseconds(1)));
}

#[test]
fn spent_retries_abandon_the_step_and_compensate_it_too() {
    let mut r = Run::start();
    r.ok(0, Phase::Action);
    r.reply(1, Phase::Action, 1, technical("timeout talking to db"));
    assert_eq!(r.saga.steps[1].action.status, PhaseStatus::RetryScheduled);
    r.advance(100);
    assert_eq!(r.sent(), vec![(1, Phase::Action, 2)]);
    r.advance(1_000);
    assert_eq!(r.saga.steps[1].action.status, PhaseStatus::Abandoned);
    assert_eq!(
        r.sent(),
        vec![(1, Phase::Compensation, 1)],
        "an unknown outcome is undone"
    );
    r.ok(1, Phase::Compensation);
    r.ok(0, Phase::Compensation);
    assert_eq!(r.saga.state, SagaState::Compensated);
    assert!(
        r.failure().contains("gave up after 2 attempts"),
        "{}",
        r.failure()
    );
}

#[test]
fn a_time_budget_keeps_retrying_until_it_is_spent_however_many_attempts_that_takes() {
    let mut d = def();
    d.steps[1].retry = RetryPolicy {
        give_up_after_ms: Some(30_000),
        max_attempts: None,
        ..d.steps[1].retry.clone()
    };
    let mut r = Run::with(d);
    r.ok(0, Phase::Action);
    let started = r.now;
    // Every attempt misses its 1 s deadline (a participant restarting, a rebalance…).
    let mut attempts = 1;
    while r.saga.steps[1].action.status != PhaseStatus::Abandoned {
        r.advance(1_000); // the deadline passes
        if r.saga.steps[1].action.status == PhaseStatus::RetryScheduled {
            r.advance(100); // the backoff passes: the next attempt goes out
            attempts += 1;
        }
        assert!(attempts < 100, "the budget never ran out");
    }
    assert!(attempts > 10, "far more than a count of 3: {attempts}");
    assert!(r.now - started >= TimeDelta::seconds(30));
    assert!(r.now - started < TimeDelta::seconds(32), "not much longer either");
    let reason = r.saga.failure_reason.clone().unwrap_or_default();
    assert!(
        reason.contains(&format!("gave up after {attempts} attempts in 30 s")),
        "{reason}"
    );
    // An answer inside the budget would have completed the step: the same run, answered late.
    let mut late = def();
    late.steps[1].retry.give_up_after_ms = Some(30_000);
    late.steps[1].retry.max_attempts = None;
    let mut r = Run::with(late);
    r.ok(0, Phase::Action);
    for _ in 0..10 {
        r.advance(1_000);
        r.advance(100);
    }
    assert_eq!(r.saga.state, SagaState::Running);
    r.ok(1, Phase::Action);
    assert_eq!(r.saga.steps[1].action.status, PhaseStatus::Succeeded);
}

#[test]
fn exhausted_compensation_parks_the_saga() {
    let mut r = Run::start();
    r.ok(0, Phase::Action);
    r.reply(1, Phase::Action, 1, business("no"));
    r.reply(0, Phase::Compensation, 1, technical("user-service down"));
    r.advance(100);
    assert_eq!(r.sent(), vec![(0, Phase::Compensation, 2)]);
    r.advance(1_000);
    assert_eq!(r.saga.state, SagaState::Failed);
    assert_eq!(
        r.saga.steps[0].compensation.as_ref().map(|c| c.status),
        Some(PhaseStatus::Exhausted)
    );
    assert_eq!(
        r.kinds(),
        vec![
            "deadline_missed",
            "attempt_failed",
            "compensation_exhausted",
            "saga_failed"
        ]
    );
    assert_eq!(r.saga.wake_at(), None, "parked sagas need no timer");
    assert_eq!(r.saga.current_step(), Some(0));
}

#[test]
fn pivot_rejection_compensates_but_unknown_pivot_outcome_parks() {
    let mut r = Run::start();
    r.ok_actions(0..3);
    r.reply(3, Phase::Action, 1, business("no"));
    assert_eq!(r.sent(), vec![(2, Phase::Compensation, 1)]);

    let mut r = Run::start();
    r.ok_actions(0..3);
    r.miss_both_attempts();
    assert_eq!(r.saga.state, SagaState::Failed);
    assert!(r.last.commands.is_empty());
    assert!(r.failure().contains("pivot"), "{}", r.failure());
}

#[test]
fn failure_after_a_completed_pivot_parks_and_never_compensates() {
    let mut r = Run::start();
    r.ok_actions(0..4);
    r.reply(4, Phase::Action, 1, business("no"));
    assert_eq!(r.saga.state, SagaState::Failed);
    assert!(r.last.commands.is_empty());
    let aborted = decide(&r.def, &r.saga, &Input::Abort { reason: "x".into() }, r.now);
    assert!(matches!(aborted, Err(EngineError::NotAllowed(_))));
}

#[test]
fn abort_abandons_the_in_flight_step_and_compensates() {
    let mut r = Run::start();
    r.ok(0, Phase::Action);
    r.feed(Input::Abort {
        reason: "customer asked".into(),
    });
    assert_eq!(r.saga.state, SagaState::Compensating);
    assert_eq!(r.saga.steps[1].action.status, PhaseStatus::Abandoned);
    assert_eq!(r.sent(), vec![(1, Phase::Compensation, 1)]);
    let late = r
        .reply(1, Phase::Action, 1, ReplyOutcome::Success { payload: json!({}) })
        .clone();
    assert!(!late.changed, "the abandoned action's late reply is ignored");
    r.ok(1, Phase::Compensation);
    r.ok(0, Phase::Compensation);
    assert_eq!(r.saga.state, SagaState::Compensated);
    assert_eq!(r.saga.failure_reason.as_deref(), Some("aborted: customer asked"));
    let again = decide(&r.def, &r.saga, &Input::Abort { reason: "x".into() }, r.now);
    assert!(matches!(again, Err(EngineError::NotAllowed(m)) if m.contains("compensated")));
}

fn replay(r: &mut Run) -> Result<Decision, EngineError> {
    let d = decide(
        &r.def,
        &r.saga,
        &Input::ReplayCompensation {
            reason: "participant is back".into(),
        },
        r.now,
    )?;
    r.saga = d.saga.clone();
    r.last = d.clone();
    Ok(d)
}

#[test]
fn replay_gives_an_exhausted_compensation_a_new_budget() {
    let mut r = Run::start();
    r.ok(0, Phase::Action);
    r.ok(1, Phase::Action);
    r.reply(2, Phase::Action, 1, business("no"));
    r.ok(1, Phase::Compensation);
    r.reply(0, Phase::Compensation, 1, technical("down"));
    r.advance(100);
    r.advance(1_000); // attempt 2 of 2 misses its deadline
    assert_eq!(r.saga.state, SagaState::Failed);
    assert_eq!(replayability(&r.saga), Replayability::Replayable);

    let d = replay(&mut r).expect("replayable");
    assert_eq!(r.saga.state, SagaState::Compensating);
    assert_eq!(
        r.sent(),
        vec![(0, Phase::Compensation, 3)],
        "only the exhausted compensation, a new attempt"
    );
    assert!(
        matches!(&d.events[0], Event::CompensationReplayed { step: 0, reason, .. } if reason == "participant is back")
    );
    assert_eq!(replayability(&r.saga), Replayability::InProgress);
    let again = replay(&mut r).expect("idempotent");
    assert!(
        !again.changed && again.commands.is_empty(),
        "a second replay while in flight sends nothing"
    );
    assert!(matches!(&again.events[..], [Event::ReplaySkipped { why, .. }] if why.contains("in progress")));

    // The new budget allows retries again instead of parking at once.
    r.reply(0, Phase::Compensation, 3, technical("still flaky"));
    assert_eq!(
        r.saga.steps[0].compensation.as_ref().map(|c| c.status),
        Some(PhaseStatus::RetryScheduled)
    );
    r.advance(100);
    r.ok(0, Phase::Compensation);
    assert_eq!(r.saga.state, SagaState::Compensated);
    assert_eq!(replayability(&r.saga), Replayability::AlreadyCompensated);
    assert!(!replay(&mut r).expect("idempotent").changed);
}

#[test]
fn replay_refuses_sagas_that_are_not_parked_on_a_compensation() {
    let mut r = Run::start();
    assert!(matches!(replay(&mut r), Err(EngineError::NotAllowed(m)) if m.contains("running")));
    r.ok_actions(0..5);
    assert!(matches!(replay(&mut r), Err(EngineError::NotAllowed(m)) if m.contains("completed")));
}

#[test]
fn retry_step_resends_a_pivot_with_unknown_outcome() {
    let mut r = Run::start();
    r.ok_actions(0..3);
    r.miss_both_attempts();
    assert_eq!(r.saga.state, SagaState::Failed, "pivot outcome unknown: parked");
    assert_eq!(
        replayability(&r.saga),
        Replayability::NotReplayable(
            "the saga is parked on its forward path, not on a compensation; use retry or abort".into()
        )
    );
    let retry = |step| Input::RetryStep {
        step,
        reason: "confirmed with the user service".into(),
    };
    let wrong = decide(&r.def, &r.saga, &retry(Some(1)), r.now);
    assert!(matches!(wrong, Err(EngineError::NotAllowed(m)) if m.contains("step 3 (`d`) is")));
    r.feed(retry(Some(3)));
    assert_eq!(r.saga.state, SagaState::Running);
    assert_eq!(r.saga.failure_reason, None);
    assert_eq!(r.sent(), vec![(3, Phase::Action, 3)]);
    r.reply(3, Phase::Action, 3, technical("blip"));
    assert_eq!(
        r.saga.steps[3].action.status,
        PhaseStatus::RetryScheduled,
        "a fresh budget"
    );
    r.feed(retry(None)); // skip the backoff
    assert_eq!(r.sent(), vec![(3, Phase::Action, 4)]);
    r.ok(3, Phase::Action);
    r.ok(4, Phase::Action);
    assert_eq!(r.saga.state, SagaState::Completed);
}

#[test]
fn retry_step_refuses_what_a_retry_cannot_fix() {
    let mut r = Run::start();
    r.ok_actions(0..4);
    r.reply(4, Phase::Action, 1, business("rule"));
    assert_eq!(r.saga.state, SagaState::Failed);
    let retry = Input::RetryStep {
        step: None,
        reason: "x".into(),
    };
    let e = decide(&r.def, &r.saga, &retry, r.now);
    assert!(matches!(e, Err(EngineError::NotAllowed(m)) if m.contains("rejected by a business rule")));

    let mut r = Run::start();
    let e = decide(&r.def, &r.saga, &retry, r.now);
    assert!(matches!(e, Err(EngineError::NotAllowed(m)) if m.contains("no step is waiting")));
    r.reply(0, Phase::Action, 1, business("rule"));
    let e = decide(&r.def, &r.saga, &retry, r.now);
    assert!(matches!(e, Err(EngineError::NotAllowed(m)) if m.contains("compensated saga")));
}

#[test]
fn a_mismatched_definition_is_refused() {
    let r = Run::start();
    let mut other = def();
    other.version = 2;
    let e = decide(&other, &r.saga, &Input::Wake, r.now).unwrap_err();
    assert!(e.to_string().contains("demo v1"));
}

#[test]
fn events_serialize_with_a_kind_tag() {
    let e = Event::SagaFailed { reason: "x".into() };
    assert_eq!(
        serde_json::to_value(&e).ok(),
        Some(json!({"kind": "saga_failed", "reason": "x"}))
    );
    let saga = Run::start().saga;
    let text = serde_json::to_string(&saga.steps).expect("serializes");
    let back: Vec<StepRecord> = serde_json::from_str(&text).expect("deserializes");
    assert_eq!(back, saga.steps);
}

// ----- parallel groups, conditions, waits, children -----

fn grouped(mut s: StepDefinition, group: &str) -> StepDefinition {
    s.group = Some(group.into());
    s
}

fn wait_step(name: &str, signal: Option<&str>, on_timeout: crate::definition::OnTimeout) -> StepDefinition {
    StepDefinition {
        name: name.into(),
        wait: Some(crate::definition::WaitDefinition {
            signal: signal.map(Into::into),
            approval: signal.is_none(),
            fields: signal
                .map(|_| {
                    vec![crate::definition::InputField {
                        name: "payment_ref".into(),
                        kind: crate::definition::FieldKind::String,
                        required: true,
                        max_len: None,
                    }]
                })
                .unwrap_or_default(),
            timeout_ms: 10_000,
            on_timeout,
        }),
        ..StepDefinition::default()
    }
}

fn with_steps(steps: Vec<StepDefinition>) -> SagaDefinition {
    let d = SagaDefinition { steps, ..def() };
    assert_eq!(d.validate(), Ok(()));
    d
}

/// a; then b and c at once; then d.
fn parallel() -> SagaDefinition {
    with_steps(vec![
        step("a", Some("UndoA"), 2),
        grouped(step("b", Some("UndoB"), 2), "prepare"),
        grouped(step("c", Some("UndoC"), 2), "prepare"),
        step("d", Some("UndoD"), 2),
    ])
}

#[test]
fn a_parallel_group_starts_its_steps_at_once_and_goes_on_when_all_succeeded() {
    let mut r = Run::with(parallel());
    r.ok(0, Phase::Action);
    assert_eq!(r.sent(), vec![(1, Phase::Action, 1), (2, Phase::Action, 1)]);
    r.ok(2, Phase::Action);
    assert!(r.last.commands.is_empty(), "b is still in flight");
    assert_eq!(r.saga.current_step(), Some(1));
    r.ok(1, Phase::Action);
    assert_eq!(r.sent(), vec![(3, Phase::Action, 1)]);
    r.ok(3, Phase::Action);
    assert_eq!(r.saga.state, SagaState::Completed);
}

#[test]
fn a_refused_branch_awaits_the_branch_in_flight_then_compensates_in_reverse_completion_order() {
    let mut r = Run::with(parallel());
    r.ok(0, Phase::Action);
    r.reply(2, Phase::Action, 1, business("no stock"));
    assert_eq!(r.saga.state, SagaState::Compensating);
    assert!(
        r.last.commands.is_empty(),
        "b is awaited before anything is undone"
    );
    assert_eq!(r.saga.steps[1].action.status, PhaseStatus::InFlight);
    r.ok(1, Phase::Action);
    assert_eq!(
        r.sent(),
        vec![(1, Phase::Compensation, 1)],
        "b completed last: undone first"
    );
    r.ok(1, Phase::Compensation);
    assert_eq!(r.sent(), vec![(0, Phase::Compensation, 1)]);
    r.ok(0, Phase::Compensation);
    assert_eq!(r.saga.state, SagaState::Compensated);
    assert_eq!(
        r.saga.failure_reason.as_deref(),
        Some("step `c` was rejected: no stock")
    );
}

#[test]
fn compensation_follows_completion_order_not_step_order() {
    let mut r = Run::with(parallel());
    r.ok(0, Phase::Action);
    r.ok(2, Phase::Action); // c completes before b
    r.ok(1, Phase::Action);
    r.reply(3, Phase::Action, 1, business("no"));
    assert_eq!(r.sent(), vec![(1, Phase::Compensation, 1)], "b completed after c");
    r.ok(1, Phase::Compensation);
    assert_eq!(r.sent(), vec![(2, Phase::Compensation, 1)]);
    r.ok(2, Phase::Compensation);
    assert_eq!(r.sent(), vec![(0, Phase::Compensation, 1)]);
}

#[test]
fn a_branch_in_flight_that_misses_its_deadline_is_abandoned_and_compensated_too() {
    let mut r = Run::with(parallel());
    r.ok(0, Phase::Action);
    r.reply(2, Phase::Action, 1, technical("blip"));
    assert_eq!(r.saga.steps[2].action.status, PhaseStatus::RetryScheduled);
    r.reply(1, Phase::Action, 1, business("no"));
    assert_eq!(
        r.saga.steps[2].action.status,
        PhaseStatus::Abandoned,
        "no further branch starts: the retry is called off"
    );
    assert_eq!(r.sent(), vec![(2, Phase::Compensation, 1)], "it may have applied");
    let mut r = Run::with(parallel());
    r.ok(0, Phase::Action);
    r.reply(1, Phase::Action, 1, business("no"));
    r.advance(1_000); // c's deadline
    assert_eq!(
        r.saga.steps[2].action.status,
        PhaseStatus::Abandoned,
        "no retry while failing"
    );
    assert_eq!(r.sent(), vec![(2, Phase::Compensation, 1)]);
}

#[test]
fn a_pivot_in_a_group_and_a_scattered_group_are_refused_at_load() {
    let mut d = parallel();
    d.steps[2].compensation = None;
    let e = d.validate().unwrap_err().0;
    assert!(
        e.contains("demo v1") && e.contains("step `c`") && e.contains("pivot"),
        "{e}"
    );
    let mut d = parallel();
    d.steps[3].group = Some("prepare".into());
    d.steps[2].group = None;
    assert!(d.validate().unwrap_err().0.contains("consecutive"));
}

#[test]
fn a_false_condition_skips_the_step_and_nothing_is_undone_for_it() {
    let mut d = parallel();
    d.input = vec![crate::definition::InputField {
        name: "amount".into(),
        kind: crate::definition::FieldKind::Integer,
        required: true,
        max_len: None,
    }];
    d.steps[2].when = Some("amount > 100".into());
    assert_eq!(d.validate(), Ok(()));
    let now = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).expect("valid time");
    let ctx = json!({"amount": 50}).as_object().cloned().unwrap_or_default();
    let first = start(&d, SagaId::new_v7(), ctx, now);
    let mut r = Run {
        saga: first.saga.clone(),
        def: d,
        now,
        last: first,
    };
    r.ok(0, Phase::Action);
    assert_eq!(r.sent(), vec![(1, Phase::Action, 1)]);
    assert!(r.kinds().contains(&"step_skipped"));
    assert_eq!(r.saga.steps[2].action.status, PhaseStatus::Skipped);
    r.ok(1, Phase::Action);
    r.reply(3, Phase::Action, 1, business("no"));
    r.ok(1, Phase::Compensation);
    r.ok(0, Phase::Compensation);
    assert_eq!(r.saga.state, SagaState::Compensated);
    assert_eq!(
        r.saga.steps[2].compensation.as_ref().map(|c| c.status),
        Some(PhaseStatus::Pending)
    );
}

#[test]
fn conditions_that_read_unknown_fields_or_mistype_are_refused_naming_saga_version_and_step() {
    let mut d = parallel();
    d.steps[3].when = Some("total > 1".into());
    let e = d.validate().unwrap_err().0;
    assert!(
        e.starts_with("demo v1: step `d` when:") && e.contains("`total`"),
        "{e}"
    );
    d.steps[3].outputs = vec![];
    d.steps[1].outputs = vec![crate::definition::InputField {
        name: "total".into(),
        kind: crate::definition::FieldKind::Integer,
        required: true,
        max_len: None,
    }];
    assert_eq!(d.validate(), Ok(()), "b declares total, so d may read it");
    d.steps[2].when = Some("total > 1".into());
    assert!(d.validate().is_err(), "a sibling in the same group may not");
    d.steps[2].when = None;
    d.steps[3].when = Some("total > 'many'".into());
    assert!(d.validate().unwrap_err().0.contains("step `d` when"));
}

#[test]
fn a_condition_that_fails_at_run_time_compensates_with_the_reason() {
    let mut d = def();
    d.steps[1].outputs = vec![crate::definition::InputField {
        name: "n".into(),
        kind: crate::definition::FieldKind::Integer,
        required: true,
        max_len: None,
    }];
    d.steps[2].when = Some("10 / n > 1".into());
    assert_eq!(d.validate(), Ok(()));
    let mut r = Run::with(d);
    r.ok(0, Phase::Action);
    r.reply(
        1,
        Phase::Action,
        1,
        ReplyOutcome::Success {
            payload: json!({"n": 0}),
        },
    );
    assert_eq!(r.saga.state, SagaState::Compensating);
    assert!(
        r.failure().contains("step `c` could not start") && r.failure().contains("zero"),
        "{}",
        r.failure()
    );
    assert_eq!(r.sent(), vec![(1, Phase::Compensation, 1)]);
}

fn signal(name: &str, payload: Value) -> Input {
    Input::Signal {
        signal: name.into(),
        payload,
        key: Some("k1".into()),
    }
}

#[test]
fn a_wait_ends_with_its_signal_whose_payload_joins_the_context() {
    use crate::definition::OnTimeout;
    let d = with_steps(vec![
        step("a", Some("UndoA"), 2),
        wait_step("paid", Some("payment_confirmed"), OnTimeout::Compensate),
        step("b", Some("UndoB"), 2),
    ]);
    let mut r = Run::with(d);
    let early = decide(
        &r.def,
        &r.saga,
        &signal("payment_confirmed", json!({"payment_ref": "p1"})),
        r.now,
    );
    assert!(matches!(early, Err(EngineError::NotAllowed(m)) if m.contains("not waiting")));
    r.ok(0, Phase::Action);
    assert!(r.last.commands.is_empty() && r.kinds().contains(&"wait_started"));
    assert_eq!(r.saga.wake_at(), Some(r.now + TimeDelta::seconds(10)));
    let undeclared = decide(&r.def, &r.saga, &signal("shipped", json!({})), r.now);
    assert!(matches!(undeclared, Err(EngineError::Invalid(m)) if m.contains("declares no signal `shipped`")));
    let bad = decide(
        &r.def,
        &r.saga,
        &signal("payment_confirmed", json!({"payment_ref": 7})),
        r.now,
    );
    assert!(matches!(bad, Err(EngineError::Invalid(m)) if m.contains("payment_ref")));
    // A participant's reply to a wait step is nobody's answer.
    let stray = r.ok(1, Phase::Action).clone();
    assert!(!stray.changed);
    r.feed(signal("payment_confirmed", json!({"payment_ref": "p1"})));
    assert_eq!(r.sent(), vec![(2, Phase::Action, 1)]);
    assert_eq!(r.last.commands[0].payload["payment_ref"], json!("p1"));
    let twice = decide(
        &r.def,
        &r.saga,
        &signal("payment_confirmed", json!({"payment_ref": "p1"})),
        r.now,
    );
    assert!(matches!(twice, Err(EngineError::NotAllowed(m)) if m.contains("succeeded")));
}

#[test]
fn a_wait_that_times_out_compensates_or_goes_on_as_declared() {
    use crate::definition::OnTimeout;
    let steps = |on| {
        vec![
            step("a", Some("UndoA"), 2),
            wait_step("paid", Some("payment_confirmed"), on),
            step("b", Some("UndoB"), 2),
        ]
    };
    let mut r = Run::with(with_steps(steps(OnTimeout::Compensate)));
    r.ok(0, Phase::Action);
    r.advance(9_999);
    assert_eq!(r.saga.state, SagaState::Running);
    r.advance(1);
    assert_eq!(r.sent(), vec![(0, Phase::Compensation, 1)]);
    assert!(
        r.failure()
            .contains("no signal `payment_confirmed` within 10000 ms"),
        "{}",
        r.failure()
    );
    let mut r = Run::with(with_steps(steps(OnTimeout::Continue)));
    r.ok(0, Phase::Action);
    r.advance(10_000);
    assert_eq!(r.saga.steps[1].action.status, PhaseStatus::Skipped);
    assert_eq!(r.sent(), vec![(2, Phase::Action, 1)]);
}

#[test]
fn an_approval_is_given_or_refused_by_a_named_operator() {
    use crate::definition::OnTimeout;
    let d = with_steps(vec![
        step("a", Some("UndoA"), 2),
        wait_step("moderate", None, OnTimeout::Compensate),
        step("b", Some("UndoB"), 2),
    ]);
    let approval = |approved| Input::Approval {
        step: None,
        approved,
        by: "alice".into(),
        reason: "looks fine".into(),
    };
    let mut r = Run::with(d.clone());
    r.ok(0, Phase::Action);
    r.feed(approval(true));
    assert_eq!(r.sent(), vec![(2, Phase::Action, 1)]);
    assert!(matches!(&r.last.events[0], Event::ApprovalDecided { approved: true, by, .. } if by == "alice"));
    let mut r = Run::with(d);
    r.ok(0, Phase::Action);
    r.feed(approval(false));
    assert_eq!(r.sent(), vec![(0, Phase::Compensation, 1)]);
    assert_eq!(r.failure(), "step `moderate` was rejected by alice: looks fine");
    let none = decide(&r.def, &r.saga, &approval(true), r.now);
    assert!(matches!(none, Err(EngineError::NotAllowed(_))));
    let plain = Run::start();
    let e = decide(&plain.def, &plain.saga, &approval(true), plain.now);
    assert!(matches!(e, Err(EngineError::Invalid(m)) if m.contains("no approval step")));
}

#[test]
fn a_child_saga_is_started_with_its_input_and_compensated_with_its_step() {
    let mut d = def();
    d.input = vec![crate::definition::InputField {
        name: "email".into(),
        kind: crate::definition::FieldKind::Email,
        required: true,
        max_len: None,
    }];
    d.steps = vec![
        step("a", Some("UndoA"), 2),
        StepDefinition {
            name: "account".into(),
            child: Some(crate::definition::ChildDefinition {
                saga: "register_user".into(),
                input: [("email".to_string(), "email".to_string())].into_iter().collect(),
            }),
            ..StepDefinition::default()
        },
        step("b", Some("UndoB"), 2),
    ];
    assert_eq!(d.validate(), Ok(()));
    let now = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).expect("valid time");
    let ctx = json!({"email": "a@b.co"})
        .as_object()
        .cloned()
        .unwrap_or_default();
    let first = start(&d, SagaId::new_v7(), ctx, now);
    let mut r = Run {
        saga: first.saga.clone(),
        def: d,
        now,
        last: first,
    };
    r.ok(0, Phase::Action);
    let [
        ChildEffect::Start {
            step: 1,
            child,
            saga_type,
            input,
        },
    ] = r.last.children.as_slice()
    else {
        panic!("one child started: {:?}", r.last.children);
    };
    let child = *child;
    assert_eq!(
        (saga_type.as_str(), input),
        ("register_user", &json!({"email": "a@b.co"}))
    );
    assert_eq!(r.saga.steps[1].child, Some(child));
    // Like every saga id, a child's sorts by its creation time (a UUIDv7 of the decision's time).
    let (secs, nanos) = child
        .as_uuid()
        .get_timestamp()
        .expect("a time-ordered id")
        .to_unix();
    assert_eq!(
        (
            child.as_uuid().get_version_num(),
            secs as i64 * 1000 + i64::from(nanos / 1_000_000)
        ),
        (7, r.now.timestamp_millis())
    );
    assert_eq!(r.saga.steps[1].child, Some(child));
    assert_eq!(r.saga.wake_at(), None, "a child has no deadline of its own");
    let other = SagaId::new_v7();
    let stray = r
        .feed(Input::ChildEnded {
            step: 1,
            child: other,
            state: SagaState::Completed,
            reason: None,
        })
        .clone();
    assert!(!stray.changed, "only the step's own child counts");
    r.feed(Input::ChildEnded {
        step: 1,
        child,
        state: SagaState::Completed,
        reason: None,
    });
    assert_eq!(r.sent(), vec![(2, Phase::Action, 1)]);
    r.reply(2, Phase::Action, 1, business("no"));
    assert_eq!(r.last.children, vec![ChildEffect::Compensate { step: 1, child }]);
    assert!(r.last.commands.is_empty());
    r.feed(Input::ChildEnded {
        step: 1,
        child,
        state: SagaState::Compensated,
        reason: None,
    });
    assert_eq!(r.sent(), vec![(0, Phase::Compensation, 1)]);
    r.ok(0, Phase::Compensation);
    assert_eq!(r.saga.state, SagaState::Compensated);
}

#[test]
fn a_completed_saga_is_compensated_by_its_parent_and_only_once() {
    let d = with_steps(vec![step("a", Some("UndoA"), 2), step("b", Some("UndoB"), 2)]);
    let mut r = Run::with(d);
    r.ok_actions(0..2);
    assert_eq!(r.saga.state, SagaState::Completed);
    let undo = Input::Compensate {
        reason: "parent failed".into(),
    };
    r.feed(undo.clone());
    assert_eq!(r.saga.state, SagaState::Compensating);
    assert_eq!(r.sent(), vec![(1, Phase::Compensation, 1)]);
    assert!(!r.feed(undo).changed, "asking again changes nothing");
}
