//! Property tests: random saga definitions driven by random input sequences that include duplicate,
//! reordered and stale replies, missed deadlines and aborts. After every input the engine's
//! invariants are checked; afterwards a fair participant drains the saga, which must then be terminal.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;
use saga_engine::{
    Decision, Event, Input, Phase, PhaseStatus, Reply, ReplyOutcome, RetryPolicy, Saga, SagaDefinition,
    SagaId, SagaState, StepDefinition, decide, start,
};
use serde_json::{Map, json};

#[derive(Debug, Clone)]
enum Kind {
    Success,
    Business,
    Technical,
}

#[derive(Debug, Clone)]
enum Op {
    /// Answer the active phase's current attempt.
    Answer(Kind),
    /// Deliver again a reply delivered earlier (index modulo the log length).
    Redeliver(usize),
    /// Answer the active phase with an attempt that is not the current one.
    Stale(Kind, bool),
    /// A reply for an arbitrary step, phase and attempt.
    Arbitrary(usize, bool, u32, Kind),
    /// Let time pass, then wake the saga.
    Advance(i64),
    Abort,
    Replay,
    Retry(Option<usize>),
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![Just(Kind::Success), Just(Kind::Business), Just(Kind::Technical)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => kind().prop_map(Op::Answer),
        2 => any::<usize>().prop_map(Op::Redeliver),
        2 => (kind(), any::<bool>()).prop_map(|(k, up)| Op::Stale(k, up)),
        1 => (0usize..7, any::<bool>(), 0u32..4, kind()).prop_map(|(s, c, a, k)| Op::Arbitrary(s, c, a, k)),
        3 => (0i64..2_500).prop_map(Op::Advance),
        1 => Just(Op::Abort),
        1 => Just(Op::Replay),
        1 => prop::option::of(0usize..6).prop_map(Op::Retry),
    ]
}

/// A retry budget: a time budget (up to 6 s), a count (1-3 attempts), or both.
fn budget() -> impl Strategy<Value = (Option<u64>, Option<u32>)> {
    prop_oneof![
        (1u64..6_000).prop_map(|ms| (Some(ms), None)),
        (1u32..4).prop_map(|n| (None, Some(n))),
        (1u64..6_000, 1u32..4).prop_map(|(ms, n)| (Some(ms), Some(n))),
    ]
}

fn policy((give_up_after_ms, max_attempts): (Option<u64>, Option<u32>)) -> RetryPolicy {
    RetryPolicy {
        give_up_after_ms,
        max_attempts,
        initial_backoff_ms: 50,
        max_backoff_ms: 400,
        multiplier: 2.0,
        jitter: 0.5,
    }
}

/// Per step: compensable?, the action's budget, the compensation's budget.
fn definition() -> impl Strategy<Value = SagaDefinition> {
    prop::collection::vec((prop::bool::weighted(0.7), budget(), budget()), 1..6).prop_map(|steps| {
        SagaDefinition {
            name: "prop".into(),
            version: 1,
            description: String::new(),
            input: vec![],
            generated_ids: vec![],
            steps: steps
                .into_iter()
                .enumerate()
                .map(|(i, (compensable, budget, comp_budget))| StepDefinition {
                    name: format!("s{i}"),
                    participant: "p.commands".into(),
                    action: format!("Do{i}"),
                    compensation: compensable.then(|| format!("Undo{i}")),
                    deadline_ms: 1_000,
                    retry: policy(budget),
                    compensation_retry: policy(comp_budget),
                })
                .collect(),
        }
    })
}

fn outcome(kind: &Kind) -> ReplyOutcome {
    match kind {
        Kind::Success => ReplyOutcome::Success {
            payload: json!({"seen": true}),
        },
        Kind::Business => ReplyOutcome::BusinessFailure {
            reason: "rule".into(),
        },
        Kind::Technical => ReplyOutcome::TechnicalFailure {
            reason: "down".into(),
        },
    }
}

/// Drives one saga and checks invariants after every decision.
struct Checker {
    def: SagaDefinition,
    saga: Saga,
    now: DateTime<Utc>,
    delivered: Vec<Reply>,
    /// Steps in the order their compensation was first dispatched.
    compensation_order: Vec<usize>,
    /// Accepted compensation successes per step.
    compensations_done: BTreeMap<usize, u32>,
    terminal_states: BTreeSet<&'static str>,
    pivot_passed: bool,
}

impl Checker {
    fn new(def: SagaDefinition) -> Self {
        let now = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).expect("valid time");
        let first = start(&def, SagaId::new_v7(), Map::new(), now);
        let mut c = Checker {
            saga: first.saga.clone(),
            def,
            now,
            delivered: vec![],
            compensation_order: vec![],
            compensations_done: BTreeMap::new(),
            terminal_states: BTreeSet::new(),
            pivot_passed: false,
        };
        c.check(&first.saga.clone(), &first, true);
        c
    }

    fn active_attempt(&self) -> Option<(usize, Phase, u32)> {
        let (step, phase) = self.saga.active_phase()?;
        let attempt = self.saga.steps[step].phase(phase)?.attempt;
        Some((step, phase, attempt))
    }

    fn reply(&mut self, reply: Reply) {
        self.delivered.push(reply.clone());
        self.apply(Input::Reply(reply));
    }

    fn apply(&mut self, input: Input) {
        let before = self.saga.clone();
        match decide(&self.def, &before, &input, self.now) {
            Ok(d) => {
                self.check(&before, &d, false);
                self.saga = d.saga;
            }
            Err(_) => {
                let operator = matches!(
                    input,
                    Input::Abort { .. } | Input::ReplayCompensation { .. } | Input::RetryStep { .. }
                );
                assert!(operator, "only operator inputs may be refused");
            }
        }
    }

    fn run(&mut self, op: &Op) {
        match op {
            Op::Answer(k) => {
                if let Some((step, phase, attempt)) = self.active_attempt() {
                    self.reply(Reply {
                        step,
                        phase,
                        attempt,
                        outcome: outcome(k),
                    });
                }
            }
            Op::Redeliver(i) => {
                if !self.delivered.is_empty() {
                    let r = self.delivered[i % self.delivered.len()].clone();
                    self.reply(r);
                }
            }
            Op::Stale(k, up) => {
                if let Some((step, phase, attempt)) = self.active_attempt() {
                    let attempt = if *up {
                        attempt + 1
                    } else {
                        attempt.saturating_sub(1)
                    };
                    let before = self.saga.clone();
                    self.reply(Reply {
                        step,
                        phase,
                        attempt,
                        outcome: outcome(k),
                    });
                    assert_eq!(self.saga, before, "a stale attempt changed the saga");
                }
            }
            Op::Arbitrary(step, comp, attempt, k) => {
                let phase = if *comp { Phase::Compensation } else { Phase::Action };
                self.reply(Reply {
                    step: *step,
                    phase,
                    attempt: *attempt,
                    outcome: outcome(k),
                });
            }
            Op::Advance(ms) => {
                self.now += TimeDelta::milliseconds(*ms);
                self.apply(Input::Wake);
            }
            Op::Abort => self.apply(Input::Abort {
                reason: "test".into(),
            }),
            Op::Replay => self.apply(Input::ReplayCompensation {
                reason: "test".into(),
            }),
            Op::Retry(step) => self.apply(Input::RetryStep {
                step: *step,
                reason: "test".into(),
            }),
        }
    }

    /// A participant that always answers and never fails: the saga must end.
    fn drain(&mut self) {
        for _ in 0..500 {
            if self.saga.state.is_terminal() {
                return;
            }
            match self.saga.active_phase() {
                Some((step, phase)) => {
                    let rec = self.saga.steps[step]
                        .phase(phase)
                        .cloned()
                        .expect("active phase exists");
                    if rec.status == PhaseStatus::RetryScheduled {
                        self.now = rec.retry_at.expect("scheduled retry has a time");
                        self.apply(Input::Wake);
                    } else {
                        self.reply(Reply {
                            step,
                            phase,
                            attempt: rec.attempt,
                            outcome: outcome(&Kind::Success),
                        });
                    }
                }
                None => panic!(
                    "a non-terminal saga with nothing in flight is stuck: {:?}",
                    self.saga
                ),
            }
        }
        panic!("saga did not terminate: {:?}", self.saga);
    }

    fn check(&mut self, before: &Saga, d: &Decision, first: bool) {
        let after = &d.saga;
        // Ignored input leaves the saga exactly as it was.
        if !d.changed {
            assert_eq!(after, before);
            assert!(d.commands.is_empty());
        }
        // Allowed transitions: completed and compensated are final; only an operator moves a
        // parked (failed) saga, back into compensation (replay) or forward (retry).
        let ok = match (before.state, after.state) {
            (a, b) if a == b => true,
            (SagaState::Running, _) => true,
            (SagaState::Compensating, SagaState::Compensated | SagaState::Failed) => true,
            (SagaState::Failed, SagaState::Compensating | SagaState::Running) => true,
            _ => false,
        };
        assert!(
            first || ok,
            "illegal transition {:?} -> {:?}",
            before.state,
            after.state
        );
        if after.state.is_terminal() {
            assert_eq!(after.active_phase(), None, "terminal saga with work in flight");
            assert_eq!(after.wake_at(), None);
        }
        if matches!(after.state, SagaState::Completed | SagaState::Compensated) {
            self.terminal_states.insert(after.state.as_str());
        }
        let finals = &self.terminal_states;
        assert!(
            finals.len() <= 1,
            "saga ended both completed and compensated: {finals:?}"
        );

        // At most one active phase, and commands only for it, with its current attempt.
        let active = after
            .steps
            .iter()
            .flat_map(|s| [Some(&s.action), s.compensation.as_ref()])
            .flatten()
            .filter(|p| p.status.is_active())
            .count();
        assert!(active <= 1, "{active} phases active at once");
        assert!(d.commands.len() <= 1);
        for c in &d.commands {
            assert_eq!(after.active_phase(), Some((c.step, c.phase)));
            let rec = after.steps[c.step]
                .phase(c.phase)
                .expect("command for an existing phase");
            assert_eq!((rec.status, rec.attempt), (PhaseStatus::InFlight, c.attempt));
            if c.phase == Phase::Compensation {
                assert!(self.def.steps[c.step].compensation.is_some(), "pivot compensated");
                assert!(
                    after.steps[c.step].owes_compensation(),
                    "compensating a step that owes nothing"
                );
                if c.attempt == 1 {
                    self.compensation_order.push(c.step);
                }
            }
        }
        // Attempts never go backwards.
        for (b, a) in before.steps.iter().zip(&after.steps) {
            assert!(a.action.attempt >= b.action.attempt);
        }
        // No retry is scheduled once a phase's budget is spent: not after its time, not beyond
        // its count.
        for e in &d.events {
            if let Event::AttemptFailed {
                step,
                phase,
                attempt,
                retry_at: Some(_),
                ..
            } = e
            {
                let rec = after.steps[*step].phase(*phase).expect("phase exists");
                let p = match phase {
                    Phase::Action => &self.def.steps[*step].retry,
                    Phase::Compensation => &self.def.steps[*step].compensation_retry,
                };
                let start = rec
                    .budget_start()
                    .expect("a budget started with the first attempt");
                assert!(
                    p.give_up_after(start).is_none_or(|end| self.now < end),
                    "retry scheduled after the time budget"
                );
                assert!(
                    p.max_attempts
                        .is_none_or(|max| attempt - rec.budget_from.min(*attempt) < max),
                    "retry scheduled beyond the attempt cap"
                );
            }
        }
        for e in &d.events {
            if let Event::StepSucceeded {
                step,
                phase: Phase::Compensation,
                ..
            } = e
            {
                *self.compensations_done.entry(*step).or_default() += 1;
            }
        }
        // Compensation runs in strictly decreasing step order.
        assert!(
            self.compensation_order.windows(2).all(|w| w[0] > w[1]),
            "compensation order {:?}",
            self.compensation_order
        );
        // Once a pivot has succeeded, never compensate.
        if after.past_pivot() {
            self.pivot_passed = true;
        }
        if self.pivot_passed {
            assert!(!matches!(
                after.state,
                SagaState::Compensating | SagaState::Compensated
            ));
        }
        match after.state {
            SagaState::Completed => {
                assert!(
                    after
                        .steps
                        .iter()
                        .all(|s| s.action.status == PhaseStatus::Succeeded)
                );
                assert!(self.compensation_order.is_empty());
            }
            SagaState::Compensated => {
                for (i, s) in after.steps.iter().enumerate() {
                    let comp = s.compensation.as_ref().map(|c| c.status);
                    if s.owes_compensation() {
                        assert_eq!(comp, Some(PhaseStatus::Succeeded), "step {i} not compensated");
                        assert_eq!(
                            self.compensations_done.get(&i),
                            Some(&1),
                            "step {i} compensated twice"
                        );
                    } else {
                        assert!(
                            matches!(comp, None | Some(PhaseStatus::Pending)),
                            "step {i} wrongly undone"
                        );
                    }
                }
            }
            _ => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_under_random_inputs(def in definition(), ops in prop::collection::vec(op(), 0..60)) {
        let mut c = Checker::new(def);
        for op in &ops {
            c.run(op);
        }
        c.drain();
        prop_assert!(c.saga.state.is_terminal());
    }
}

#[test]
fn an_unreliable_participant_still_ends_every_saga() {
    // Deterministic sweep: every step times out until its budget is spent.
    for compensable in [[true, true, true], [true, false, true], [false, true, true]] {
        let def = SagaDefinition {
            name: "prop".into(),
            version: 1,
            description: String::new(),
            input: vec![],
            generated_ids: vec![],
            steps: compensable
                .iter()
                .enumerate()
                .map(|(i, c)| StepDefinition {
                    name: format!("s{i}"),
                    participant: "p".into(),
                    action: "A".into(),
                    compensation: c.then(|| "U".into()),
                    deadline_ms: 100,
                    retry: RetryPolicy::default(),
                    compensation_retry: RetryPolicy::compensation_default(),
                })
                .collect(),
        };
        let mut c = Checker::new(def);
        c.run(&Op::Answer(Kind::Success));
        // The default budgets: five minutes forward, an hour per compensation.
        for _ in 0..1_000 {
            c.run(&Op::Advance(60_000));
        }
        assert!(c.saga.state.is_terminal(), "{:?}", c.saga.state);
    }
}
