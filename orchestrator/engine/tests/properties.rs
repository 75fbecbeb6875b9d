//! Property tests: random saga definitions — participant steps, pivots, parallel groups, conditions,
//! waits for signals and approvals, child sagas — driven by random input sequences that include
//! duplicate, reordered and stale replies, missed deadlines, timeouts, signals (good, undeclared,
//! repeated), approvals and rejections, children's ends, and aborts. After every input the engine's
//! invariants are checked (and that deciding again gives the same decision); afterwards a fair world
//! drains the saga, which must then be terminal.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;
use saga_engine::{
    ChildDefinition, ChildEffect, Decision, Event, FieldKind, Input, InputField, OnTimeout, Phase,
    PhaseStatus, Reply, ReplyOutcome, RetryPolicy, Saga, SagaDefinition, SagaId, SagaState, StepDefinition,
    StepKind, WaitDefinition, decide, start,
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
    /// The n-th declared signal (valid payload), or an undeclared one.
    Signal(usize, bool),
    Approve(bool),
    /// A child's end for step n: completed, compensated or parked; or from a stranger.
    ChildEnd(usize, u8, bool),
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
        2 => (0usize..3, prop::bool::weighted(0.9)).prop_map(|(n, ok)| Op::Signal(n, ok)),
        2 => any::<bool>().prop_map(Op::Approve),
        2 => (0usize..7, 0u8..3, prop::bool::weighted(0.9)).prop_map(|(s, st, own)| Op::ChildEnd(s, st, own)),
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

/// What a generated step is.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Participant { compensable: bool },
    Signal(OnTimeout),
    Approval(OnTimeout),
    Child,
}

fn shape() -> impl Strategy<Value = Shape> {
    let on = || prop_oneof![Just(OnTimeout::Compensate), Just(OnTimeout::Continue)];
    prop_oneof![
        6 => prop::bool::weighted(0.75).prop_map(|compensable| Shape::Participant { compensable }),
        1 => on().prop_map(Shape::Signal),
        1 => on().prop_map(Shape::Approval),
        1 => Just(Shape::Child),
    ]
}

/// Per step: its shape, whether it joins the previous step's group, its condition (none, `flag`,
/// `!flag`), the action's budget, the compensation's budget.
fn definition() -> impl Strategy<Value = SagaDefinition> {
    let step = (shape(), prop::bool::weighted(0.4), 0u8..5, budget(), budget());
    prop::collection::vec(step, 1..7).prop_map(|steps| {
        let mut defs: Vec<StepDefinition> = Vec::new();
        let mut group = 0;
        let mut signals = 0;
        for (i, (shape, join, cond, budget, comp_budget)) in steps.into_iter().enumerate() {
            let mut d = match shape {
                Shape::Participant { compensable } => StepDefinition {
                    participant: "p.commands".into(),
                    action: format!("Do{i}"),
                    compensation: compensable.then(|| format!("Undo{i}")),
                    deadline_ms: 1_000,
                    retry: policy(budget),
                    compensation_retry: policy(comp_budget),
                    ..StepDefinition::default()
                },
                Shape::Signal(on_timeout) | Shape::Approval(on_timeout) => {
                    let signal = matches!(shape, Shape::Signal(_)).then(|| {
                        signals += 1;
                        format!("sig{}", signals - 1)
                    });
                    StepDefinition {
                        wait: Some(WaitDefinition {
                            approval: signal.is_none(),
                            fields: signal
                                .iter()
                                .map(|_| InputField {
                                    name: format!("v{i}"),
                                    kind: FieldKind::Integer,
                                    required: true,
                                    max_len: None,
                                })
                                .collect(),
                            signal,
                            timeout_ms: 3_000,
                            on_timeout,
                        }),
                        ..StepDefinition::default()
                    }
                }
                Shape::Child => StepDefinition {
                    child: Some(ChildDefinition {
                        saga: "child".into(),
                        input: [("flag".to_string(), "flag".to_string())].into_iter().collect(),
                    }),
                    compensation_retry: policy(comp_budget),
                    ..StepDefinition::default()
                },
            };
            d.name = format!("s{i}");
            d.when = match cond {
                3 => Some("flag".into()),
                4 => Some("!flag".into()),
                _ => None,
            };
            // A pivot stays alone; others join the previous step's group when asked.
            let prev_ok = defs.last().is_some_and(|p| !p.is_pivot());
            if join && prev_ok && !d.is_pivot() {
                let prev = defs
                    .last_mut()
                    .map(|p| p.group.get_or_insert_with(|| format!("g{group}")).clone());
                d.group = prev;
            } else {
                group += 1;
            }
            defs.push(d);
        }
        let def = SagaDefinition {
            name: "prop".into(),
            version: 1,
            description: String::new(),
            input: vec![InputField {
                name: "flag".into(),
                kind: FieldKind::Boolean,
                required: true,
                max_len: None,
            }],
            generated_ids: vec![],
            search_keys: vec![],
            steps: defs,
        };
        assert_eq!(def.validate(), Ok(()), "generated definition is valid");
        def
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
    /// The compensation key (completion rank, index) of each compensation when first dispatched.
    compensation_order: Vec<(Option<u32>, usize)>,
    /// Accepted compensation successes per step.
    compensations_done: BTreeMap<usize, u32>,
    terminal_states: BTreeSet<&'static str>,
    pivot_passed: bool,
    /// When the saga started, and the longest it may send commands from then on
    /// (`SagaDefinition::lifetime_ms`, the participants' dedup windows rely on it).
    started: DateTime<Utc>,
    reach_ms: u64,
    /// An operator replayed or retried: a new budget, outside the reach.
    restarted: bool,
    /// How late the saga's timers were handled in all (time advanced past a due wake-up): an
    /// orchestrator that is down or behind adds that to the reach.
    late_ms: i64,
}

impl Checker {
    fn new(def: SagaDefinition) -> Self {
        Self::with_flag(def, true)
    }

    fn with_flag(def: SagaDefinition, flag: bool) -> Self {
        let now = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).expect("valid time");
        let context: Map<String, serde_json::Value> =
            [("flag".to_string(), json!(flag))].into_iter().collect();
        let first = start(&def, SagaId::new_v7(), context, now);
        // A child saga ends when the test says so: no bound through one.
        let reach_ms = def.lifetime_ms(&|_| u64::MAX);
        let mut c = Checker {
            saga: first.saga.clone(),
            def,
            now,
            delivered: vec![],
            compensation_order: vec![],
            compensations_done: BTreeMap::new(),
            terminal_states: BTreeSet::new(),
            pivot_passed: false,
            started: now,
            reach_ms,
            restarted: false,
            late_ms: 0,
        };
        c.check(&first.saga.clone(), &first, true);
        c
    }

    /// The first active phase of a participant step, with its current attempt.
    fn active_attempt(&self) -> Option<(usize, Phase, u32)> {
        self.saga
            .active_phases()
            .into_iter()
            .find(|(step, _)| self.def.steps[*step].kind() == StepKind::Participant)
            .and_then(|(step, phase)| Some((step, phase, self.saga.steps[step].phase(phase)?.attempt)))
    }

    fn reply(&mut self, reply: Reply) {
        self.delivered.push(reply.clone());
        self.apply(Input::Reply(reply));
    }

    fn apply(&mut self, input: Input) {
        let before = self.saga.clone();
        match decide(&self.def, &before, &input, self.now) {
            Ok(d) => {
                let again = decide(&self.def, &before, &input, self.now).expect("decides again");
                assert_eq!(d, again, "the same input to the same saga gave another decision");
                if d.changed && matches!(input, Input::ReplayCompensation { .. } | Input::RetryStep { .. }) {
                    self.restarted = true;
                }
                self.check(&before, &d, false);
                self.saga = d.saga;
            }
            Err(_) => {
                let refusable = matches!(
                    input,
                    Input::Abort { .. }
                        | Input::ReplayCompensation { .. }
                        | Input::RetryStep { .. }
                        | Input::Signal { .. }
                        | Input::Approval { .. }
                );
                assert!(
                    refusable,
                    "only operator inputs and signals may be refused: {input:?}"
                );
            }
        }
    }

    fn signal_for(&self, step: usize) -> Option<Input> {
        let wait = self.def.steps[step].wait.as_ref()?;
        Some(match &wait.signal {
            Some(signal) => Input::Signal {
                signal: signal.clone(),
                payload: json!({ format!("v{step}"): 7 }),
                key: None,
            },
            None => Input::Approval {
                step: Some(step),
                approved: true,
                by: "op".into(),
                reason: "ok".into(),
            },
        })
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
                let to = self.now + TimeDelta::milliseconds(*ms);
                if let Some(due) = self.saga.wake_at().filter(|due| *due < to) {
                    self.late_ms += (to - due.max(self.now)).num_milliseconds();
                }
                self.now = to;
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
            Op::Signal(n, declared) => {
                let waits: Vec<usize> = (0..self.def.steps.len())
                    .filter(|&i| {
                        self.def.steps[i]
                            .wait
                            .as_ref()
                            .is_some_and(|w| w.signal.is_some())
                    })
                    .collect();
                let input = match waits.get(n % waits.len().max(1)) {
                    Some(&step) if *declared => self.signal_for(step),
                    _ => Some(Input::Signal {
                        signal: "undeclared".into(),
                        payload: json!({}),
                        key: None,
                    }),
                };
                if let Some(input) = input {
                    let before = self.saga.clone();
                    self.apply(input.clone());
                    if before == self.saga {
                        return;
                    }
                    // A signal applies once: the same signal again changes nothing.
                    let after = self.saga.clone();
                    self.apply(input);
                    assert_eq!(self.saga, after, "a repeated signal applied twice");
                }
            }
            Op::Approve(approved) => self.apply(Input::Approval {
                step: None,
                approved: *approved,
                by: "op".into(),
                reason: "test".into(),
            }),
            Op::ChildEnd(step, state, own) => {
                let Some(record) = self.saga.steps.get(*step) else {
                    return;
                };
                let child = match record.child {
                    Some(id) if *own => id,
                    _ => SagaId::new_v7(),
                };
                let state =
                    [SagaState::Completed, SagaState::Compensated, SagaState::Failed][*state as usize];
                self.apply(Input::ChildEnded {
                    step: *step,
                    child,
                    state,
                    reason: None,
                });
            }
        }
    }

    /// A world that always answers and never fails: the saga must end.
    fn drain(&mut self) {
        for _ in 0..500 {
            if self.saga.state.is_terminal() {
                return;
            }
            let Some((step, phase)) = self.saga.active_phase() else {
                panic!(
                    "a non-terminal saga with nothing in flight is stuck: {:?}",
                    self.saga
                );
            };
            let rec = self.saga.steps[step]
                .phase(phase)
                .cloned()
                .expect("active phase exists");
            let kind = self.def.steps[step].kind();
            match (kind, phase) {
                (_, _) if rec.status == PhaseStatus::RetryScheduled => {
                    self.now = rec.retry_at.expect("scheduled retry has a time");
                    self.apply(Input::Wake);
                }
                (StepKind::Wait(_), _) => {
                    let input = self.signal_for(step).expect("a wait step");
                    self.apply(input);
                }
                (StepKind::Child(_), _) => {
                    let child = self.saga.steps[step].child.expect("a started child");
                    let state = match phase {
                        Phase::Action => SagaState::Completed,
                        Phase::Compensation => SagaState::Compensated,
                    };
                    self.apply(Input::ChildEnded {
                        step,
                        child,
                        state,
                        reason: None,
                    });
                }
                (StepKind::Participant, _) => self.reply(Reply {
                    step,
                    phase,
                    attempt: rec.attempt,
                    outcome: outcome(&Kind::Success),
                }),
            }
        }
        panic!("saga did not terminate: {:?}", self.saga);
    }

    fn check(&mut self, before: &Saga, d: &Decision, first: bool) {
        let after = &d.saga;
        // Ignored input leaves the saga exactly as it was.
        if !d.changed {
            assert_eq!(after, before);
            assert!(d.commands.is_empty() && d.children.is_empty());
        }
        // Allowed transitions: compensated is final; completed only moves when a parent compensates
        // it; only an operator moves a parked (failed) saga, back into compensation (replay) or
        // forward (retry).
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

        // Actions run only within one stage; a compensation runs alone, never beside an action.
        let active = after.active_phases();
        let compensating = active.iter().filter(|(_, p)| *p == Phase::Compensation).count();
        assert!(compensating <= 1, "{compensating} compensations active at once");
        assert!(
            compensating == 0 || active.len() == 1,
            "a compensation runs beside another phase: {active:?}"
        );
        let stages: BTreeSet<_> = active.iter().map(|(s, _)| self.def.stage_of(*s).start).collect();
        assert!(stages.len() <= 1, "actions of several stages active: {active:?}");
        // No command later than the definition's reach after the start (plus however late its
        // timers were handled), unless an operator started a new budget: the participants' dedup
        // windows rely on it.
        if !d.commands.is_empty() && !self.restarted {
            let on_time = (self.now - self.started).num_milliseconds() - self.late_ms;
            assert!(
                u64::try_from(on_time).is_ok_and(|ms| ms <= self.reach_ms),
                "a command {on_time} ms after the start (less {} ms late), beyond the reach of {} ms",
                self.late_ms,
                self.reach_ms
            );
        }
        for c in &d.commands {
            assert!(
                active.contains(&(c.step, c.phase)),
                "command for an inactive phase"
            );
            let rec = after.steps[c.step]
                .phase(c.phase)
                .expect("command for an existing phase");
            assert_eq!((rec.status, rec.attempt), (PhaseStatus::InFlight, c.attempt));
            assert_eq!(self.def.steps[c.step].kind(), StepKind::Participant);
            if c.phase == Phase::Compensation {
                assert!(self.def.steps[c.step].compensation.is_some(), "pivot compensated");
            }
        }
        let mut compensations: Vec<usize> = d
            .commands
            .iter()
            .filter(|c| c.phase == Phase::Compensation && c.attempt == 1)
            .map(|c| c.step)
            .collect();
        for effect in &d.children {
            if let ChildEffect::Compensate { step, child } = effect {
                assert_eq!(
                    after.steps[*step].child,
                    Some(*child),
                    "compensating another child"
                );
                if after.steps[*step]
                    .compensation
                    .as_ref()
                    .is_some_and(|c| c.attempt == 1)
                {
                    compensations.push(*step);
                }
            }
        }
        for step in compensations {
            assert!(
                after.steps[step].owes_compensation(),
                "compensating step {step}, which owes nothing"
            );
            self.compensation_order
                .push(after.steps[step].compensation_key(step));
        }
        // Completion ranks are given in the order actions end: a new rank is above every rank
        // the saga held before.
        let held = before
            .steps
            .iter()
            .filter_map(|s| s.completion)
            .max()
            .unwrap_or(0);
        let mut given: Vec<u32> = before
            .steps
            .iter()
            .zip(&after.steps)
            .filter(|(b, a)| a.completion.is_some() && b.completion != a.completion)
            .filter_map(|(_, a)| a.completion)
            .collect();
        given.sort_unstable();
        for (n, rank) in given.iter().enumerate() {
            assert_eq!(*rank, held + 1 + n as u32, "ranks {given:?} after {held}");
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
        // Compensation runs in reverse order of completion.
        assert!(
            self.compensation_order.windows(2).all(|w| w[0] > w[1]),
            "compensation order {:?}",
            self.compensation_order
        );
        // Once a pivot has succeeded, never compensate.
        if after
            .steps
            .iter()
            .enumerate()
            .any(|(i, s)| self.def.is_pivot(i) && s.action.status == PhaseStatus::Succeeded)
        {
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
                assert!(after.steps.iter().all(|s| s.action.status.is_done_forward()));
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
    fn invariants_hold_under_random_inputs(
        def in definition(),
        flag in any::<bool>(),
        ops in prop::collection::vec(op(), 0..60),
    ) {
        let mut c = Checker::with_flag(def, flag);
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
            search_keys: vec![],
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
                    ..StepDefinition::default()
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
