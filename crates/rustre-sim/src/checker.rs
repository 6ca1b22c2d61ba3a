//! Linearizability of a history against the sequential `Model` (Wing & Gong's search, with
//! Lowe's memoization of the states already explored).
//!
//! A history is linearizable if every call can be given one instant within its interval
//! [invoked, returned] such that applying the calls to the model in the order of those instants
//! answers what each client saw. A call whose outcome is `Unknown` (the session broke first) may
//! take effect at any instant after its invocation, or never, and any answer is accepted from it.
//!
//! The search is a depth-first walk over "which call takes effect next". A call can go next if
//! no other known call still pending returned before it was invoked. A state is the set of calls
//! already linearized and the model they produced; a state seen before is not explored again
//! (the model is canonical, so calls that commute lead to one state). Known calls are tried
//! earliest return first.
//!
//! Unknown calls stay pending forever, so left alone they would be tried at every state, in
//! every combination. The search only explores linearizations in a canonical form, which every
//! linearizable history has: among its linearizations, take one with the fewest unknown calls,
//! then with unknown calls as late as possible, then with adjacent independent unknown calls in
//! index order. Calls are independent when their footprints (`Model::apply_traced`: the names,
//! listings, nodes and handles each reads and changes) do not conflict; independent calls
//! commute, so swapping two adjacent ones keeps a linearization valid. In the canonical form:
//! - no unknown call leaves the model unchanged (else drop it);
//! - each unknown call conflicts with some other call that could go at its place (else it is
//!   independent of whatever follows it, and could go one step later);
//! - in a run of unknown calls between two known ones, each leads by a chain of conflicts to the
//!   known call that ends the run (else it could go after that call);
//! - two adjacent unknown calls that do not conflict are in index order.
//!
//! A known call that reads and changes nothing (a walk step past the walk's end, `Model::settled`)
//! commutes with every call, so it goes as soon as it may, outside a run of unknown calls.
//!
//! The search skips every step that breaks these rules. It also forgets a handle once no pending
//! call needs it (only the lifetime of an orphan depends on it, which no call observes), so a
//! broken session's opens and closes leave no trace to branch on.
//!
//! Runs of unknown calls are rarely longer than one, so the search first allows runs of one,
//! then two, then any length, each pass only if the one before failed and its limit cut a path.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};

use crate::history::{Call, Event, HandleId, Outcome};
use crate::model::{Footprint, Model};

/// Most states the search visits before it gives up on a history.
pub const CHECK_STATES_MAX: usize = 2_000_000;

/// Events of the longest linearizable prefix that `Violation`'s `Display` shows (the last ones).
const PREFIX_SHOWN_MAX: usize = 60;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{0}")]
    NotLinearizable(Box<Violation>),
    #[error(
        "the linearizability check gave up after visiting {states} states (CHECK_STATES_MAX): the history is too concurrent to decide"
    )]
    TooComplex { states: usize },
}

/// Why a history is not linearizable: the longest prefix the search could linearize, and the
/// calls that could take effect next there, none of which the model agrees with.
#[derive(Clone, Debug)]
pub struct Violation {
    /// The longest linearizable prefix found: indices into the checked events, in the order they
    /// were linearized.
    pub prefix: Vec<usize>,
    /// The events of `prefix`, same order.
    pub prefix_events: Vec<Event>,
    /// The calls that could go next after the prefix, and what the model answers to each.
    pub blocked: Vec<Blocked>,
    /// The model after the prefix.
    pub model: Model,
    /// How many events were checked.
    pub events: usize,
}

/// A call that could go next after the longest prefix, and what the model answers to it there.
#[derive(Clone, Debug)]
pub struct Blocked {
    pub index: usize,
    pub event: Event,
    pub expected: Outcome,
}

fn describe(index: usize, event: &Event) -> String {
    let returned = if event.returned == u64::MAX { "-".to_string() } else { event.returned.to_string() };
    format!("#{index} client {} [{}, {returned}] {:?}", event.client, event.invoked, event.call)
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "history of {} events is not linearizable: the longest linearizable prefix found has {} events, \
             after which no call can take effect:",
            self.events,
            self.prefix.len()
        )?;
        for blocked in &self.blocked {
            let event = &blocked.event;
            if event.outcome == blocked.expected {
                writeln!(
                    f,
                    "  {}: answered {:?}, as the model does, but nothing can follow it",
                    describe(blocked.index, event),
                    event.outcome
                )?;
            } else {
                writeln!(
                    f,
                    "  {}: answered {:?}, but the model answers {:?}",
                    describe(blocked.index, event),
                    event.outcome,
                    blocked.expected
                )?;
            }
        }
        let skipped = self.prefix.len().saturating_sub(PREFIX_SHOWN_MAX);
        if skipped > 0 {
            writeln!(f, "the prefix, in linearization order ({skipped} earlier events not shown):")?;
        } else {
            writeln!(f, "the prefix, in linearization order:")?;
        }
        for (&index, event) in self.prefix.iter().zip(&self.prefix_events).skip(skipped) {
            writeln!(f, "  {} -> {:?}", describe(index, event), event.outcome)?;
        }
        write!(f, "the model after the prefix:\n{}", self.model)
    }
}

/// Checks that `events` are linearizable with respect to `Model`.
pub fn check(events: &[Event]) -> Result<(), CheckError> {
    check_with_limit(events, CHECK_STATES_MAX)
}

/// Fixed-size set of small integers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(len: usize) -> Bits {
        Bits(vec![0; len.div_ceil(64)])
    }
    fn get(&self, index: usize) -> bool {
        self.0[index / 64] & (1 << (index % 64)) != 0
    }
    fn set(&mut self, index: usize) {
        self.0[index / 64] |= 1 << (index % 64);
    }
}

/// An unknown call linearized since the last known one, and what it read and changed.
#[derive(Clone, Debug, Hash)]
struct RunStep {
    /// Position in `Search::unknown`.
    position: usize,
    footprint: Footprint,
}

/// A call that may take effect next.
#[derive(Clone, Copy)]
enum Candidate {
    /// Position in `Search::known`.
    Known(usize),
    /// Index in `Frame::unknown`.
    Unknown(usize),
}

/// One state on the search path, and the calls still to try from it.
struct Frame {
    model: Model,
    /// Linearized calls, by position in `Search::known` and in `Search::unknown`.
    done_known: Bits,
    done_unknown: Bits,
    /// Every known call before this position of `known` is linearized.
    first_pending: usize,
    /// The least return of a pending known call: what is invoked later cannot go next.
    bound: u64,
    /// The unknown calls linearized since the last known one, in order.
    run: Vec<RunStep>,
    /// Known calls that may go next (positions in `known`), likeliest first.
    known: Vec<usize>,
    /// Unknown calls worth trying next, with the model each leads to and its footprint; worked
    /// out once the known calls are tried.
    unknown: Option<Vec<(usize, Model, Footprint)>>,
    /// Unknown calls tried before the known ones (the first of `unknown`).
    fixers: usize,
    /// Candidates tried so far: first `fixers` unknown ones, then the known ones, then the
    /// other unknown ones.
    next: usize,
    /// The event whose linearization led here (none for the initial state).
    via: Option<usize>,
}

struct Search<'a> {
    events: &'a [Event],
    /// Events with an outcome, by invocation.
    known: Vec<usize>,
    /// Events with an `Unknown` outcome, by invocation.
    unknown: Vec<usize>,
    /// For each handle, the events that need it kept: the known calls on it and the unknown
    /// writes to it (as (known?, position)).
    handle_users: BTreeMap<HandleId, Vec<(bool, usize)>>,
}

/// How one pass of the search ended.
enum Pass {
    Linearizable,
    /// No linearization within the pass's limit on runs. `limited` if the limit cut some path.
    Failed {
        limited: bool,
        deepest: Box<Deepest>,
    },
    TooComplex,
}

/// The deepest state a pass reached: the path to it (event indices), its model and known
/// candidates.
#[derive(Default)]
struct Deepest {
    path: Vec<usize>,
    state: Option<(Model, Vec<usize>)>,
}

fn handle_of(call: &Call) -> Option<HandleId> {
    match call {
        Call::Open { handle, .. } | Call::Write { handle, .. } | Call::Read { handle } | Call::Close { handle } => {
            Some(*handle)
        }
        _ => None,
    }
}

impl<'a> Search<'a> {
    fn new(events: &'a [Event]) -> Search<'a> {
        let mut known: Vec<usize> = Vec::new();
        let mut unknown: Vec<usize> = Vec::new();
        for (index, event) in events.iter().enumerate() {
            if event.outcome == Outcome::Unknown {
                unknown.push(index);
            } else {
                known.push(index);
            }
        }
        known.sort_by_key(|&index| (events[index].invoked, index));
        unknown.sort_by_key(|&index| (events[index].invoked, index));
        let mut handle_users: BTreeMap<HandleId, Vec<(bool, usize)>> = BTreeMap::new();
        for (position, &index) in known.iter().enumerate() {
            if let Some(handle) = handle_of(&events[index].call) {
                handle_users.entry(handle).or_default().push((true, position));
            }
        }
        for (position, &index) in unknown.iter().enumerate() {
            if let Call::Write { handle, .. } = &events[index].call {
                handle_users.entry(*handle).or_default().push((false, position));
            }
        }
        Search { events, known, unknown, handle_users }
    }

    fn call(&self, known: bool, position: usize) -> &'a Call {
        let index = if known { self.known[position] } else { self.unknown[position] };
        &self.events[index].call
    }

    /// Applies a candidate to a copy of `model` (with its footprint if `traced`); forgets its
    /// handle if no call left needs it.
    fn step(&self, model: &Model, (known, position): (bool, usize), done: (&Bits, &Bits), traced: bool) -> Step {
        let (done_known, done_unknown) = done;
        let mut model = model.clone();
        let call = self.call(known, position);
        let (outcome, footprint) =
            if traced { model.apply_traced(call) } else { (model.apply(call), Footprint::default()) };
        if let Some(handle) = handle_of(call) {
            let done = |user_known: bool, user: usize| {
                if user_known { done_known.get(user) } else { done_unknown.get(user) }
            };
            let needed = self.handle_users.get(&handle).is_some_and(|users| {
                users
                    .iter()
                    .any(|&(user_known, user)| (user_known, user) != (known, position) && !done(user_known, user))
            });
            if !needed {
                model.forget_handle(handle);
            }
        }
        Step { model, outcome, footprint }
    }

    /// A state after linearizing what `done_known` and `done_unknown` say, with its known
    /// candidates: any known call not linearized that was invoked before every pending known call
    /// returned (pending unknown calls never bound it), earliest return first.
    fn frame(&self, model: Model, done: (Bits, Bits), first_pending: usize, run: Vec<RunStep>, via: usize) -> Frame {
        let (done_known, done_unknown) = done;
        let mut bound = u64::MAX;
        let mut end = first_pending;
        // A call invoked after the bound cannot lower it (it returned later still).
        while end < self.known.len() && self.events[self.known[end]].invoked <= bound {
            if !done_known.get(end) {
                bound = bound.min(self.events[self.known[end]].returned);
            }
            end += 1;
        }
        let mut known: Vec<usize> = (first_pending..end)
            .filter(|&position| !done_known.get(position) && self.events[self.known[position]].invoked <= bound)
            .collect();
        known.sort_by_key(|&position| self.events[self.known[position]].returned);
        Frame {
            model,
            done_known,
            done_unknown,
            first_pending,
            bound,
            run,
            known,
            unknown: None,
            fixers: 0,
            next: 0,
            via: Some(via).filter(|&via| via != usize::MAX),
        }
    }

    /// The unknown calls worth trying next from `frame`, with the model each leads to and its
    /// footprint. Skipped (the canonical form of the module doc has none of these):
    /// - a call that changes nothing: it may as well never happen;
    /// - a call that conflicts with no other candidate, known or unknown (with no known one, if
    ///   the run would then be `max_run` long: a known call it conflicts with must come next);
    /// - a call that does not conflict with the unknown call before it in the run and comes
    ///   before it in `unknown` (the other order is tried);
    /// - any call once the run is `max_run` long (`limited` is then set, if any is pending).
    fn unknown_steps(&self, frame: &Frame, max_run: usize, limited: &mut bool) -> Vec<(usize, Model, Footprint)> {
        let pending: Vec<usize> = (0..self.unknown.len())
            .take_while(|&position| self.events[self.unknown[position]].invoked <= frame.bound)
            .filter(|&position| !frame.done_unknown.get(position))
            .collect();
        if pending.is_empty() {
            return Vec::new();
        }
        if frame.run.len() >= max_run {
            // Some unknown call might have gone next (whether any would is not worked out).
            *limited = true;
            return Vec::new();
        }
        let mut footprints: Vec<Footprint> =
            frame.known.iter().map(|&position| frame.model.clone().apply_traced(self.call(true, position)).1).collect();
        let mut steps = Vec::new();
        for position in pending {
            let step = self.step(&frame.model, (false, position), (&frame.done_known, &frame.done_unknown), true);
            if step.model != frame.model {
                steps.push((position, step.model, footprints.len()));
            }
            footprints.push(step.footprint);
        }
        let last = frame.run.last();
        // A call that fills the run must be followed by a known call it conflicts with.
        let partners = if frame.run.len() + 1 == max_run { frame.known.len() } else { footprints.len() };
        let steps: Vec<(usize, Model, Footprint)> = steps
            .into_iter()
            .filter(|(position, _, mine)| {
                let footprint = &footprints[*mine];
                let conflicting = |mut range: std::ops::Range<usize>| {
                    range.any(|other| other != *mine && footprints[other].conflicts(footprint))
                };
                let relevant = conflicting(0..partners);
                if !relevant && partners < footprints.len() && conflicting(partners..footprints.len()) {
                    // Another unknown call could follow it, in a longer run than this pass allows.
                    *limited = true;
                }
                let ordered = last.is_none_or(|last| *position > last.position || last.footprint.conflicts(footprint));
                relevant && ordered
            })
            .map(|(position, model, mine)| (position, model, footprints[mine].clone()))
            .collect();
        steps
    }

    /// Takes a step of a split call that can change nothing (`Model::settled`) as the only way on
    /// from a fresh frame that ends no run of unknown calls, if one may go next. Such a step reads
    /// and changes nothing, so it commutes with every call; it may go next, so no pending known
    /// call returned before it was invoked; and it ends no run in the canonical form (it conflicts
    /// with nothing). So every linearization from here can take it first and stay canonical: the
    /// other orders need no search. (Without this, the trailing steps of concurrent walks would
    /// multiply the states by their interleavings.)
    fn settled_first(&self, frame: &mut Frame) -> bool {
        if !frame.run.is_empty() {
            return false;
        }
        let Some(&position) = frame.known.iter().find(|&&position| frame.model.settled(self.call(true, position)))
        else {
            return false;
        };
        frame.known = vec![position];
        frame.unknown = Some(Vec::new());
        true
    }

    /// Orders the search from a fresh frame: if the known call that returned first answers
    /// otherwise here, something must change first, most likely an unknown call that makes it
    /// answer as seen (a session that broke after its call took effect): those go first.
    fn fixers_first(&self, frame: &mut Frame, max_run: usize, limited: &mut bool) {
        let Some(&first) = frame.known.first() else { return };
        let event = &self.events[self.known[first]];
        if frame.model.clone().apply(&event.call) == event.outcome {
            return;
        }
        let mut steps = self.unknown_steps(frame, max_run, limited);
        steps.sort_by_key(|(_, model, _)| model.clone().apply(&event.call) != event.outcome);
        frame.fixers =
            steps.iter().take_while(|(_, model, _)| model.clone().apply(&event.call) == event.outcome).count();
        frame.unknown = Some(steps);
    }

    /// May a known call with `footprint` end the run of unknown calls before it? Only if every
    /// call of the run leads to it by a chain of conflicts; a call that does not could go after
    /// it instead (the search tries that order).
    fn run_may_end(run: &[RunStep], footprint: &Footprint) -> bool {
        let mut needed: Vec<&Footprint> = vec![footprint];
        for step in run.iter().rev() {
            if !needed.iter().any(|later| later.conflicts(&step.footprint)) {
                return false;
            }
            needed.push(&step.footprint);
        }
        true
    }

    /// The memo key of a state: its linearized set, compactly (the first pending known call,
    /// the known ones linearized after it, the unknown ones linearized, the run in order), and a
    /// hash of the model and of the run's footprints.
    fn key(&self, frame: &Frame) -> (u64, Box<[u32]>) {
        let mut set = vec![frame.first_pending as u32];
        let first_return = self.events[self.known[frame.first_pending]].returned;
        for position in frame.first_pending..self.known.len() {
            if frame.done_known.get(position) {
                set.push(position as u32);
            } else if self.events[self.known[position]].invoked > first_return {
                // Nothing invoked after the first pending call returned is linearized yet.
                break;
            }
        }
        set.push(u32::MAX);
        set.extend((0..self.unknown.len()).filter(|&position| frame.done_unknown.get(position)).map(|p| p as u32));
        set.push(u32::MAX);
        set.extend(frame.run.iter().map(|step| step.position as u32));
        let mut hasher = DefaultHasher::new();
        frame.model.hash(&mut hasher);
        frame.run.hash(&mut hasher);
        (hasher.finish(), set.into_boxed_slice())
    }

    /// One depth-first search, with runs of unknown calls at most `max_run` long, visiting at
    /// most `*states_left` states (counted down).
    fn pass(&self, max_run: usize, states_left: &mut usize) -> Pass {
        let done = (Bits::new(self.known.len()), Bits::new(self.unknown.len()));
        let mut stack = vec![self.frame(Model::new(), done, 0, Vec::new(), usize::MAX)];
        let mut seen: HashSet<(u64, Box<[u32]>)> = HashSet::new();
        let mut deepest = Deepest::default();
        let mut limited = false;

        while let Some(frame) = stack.last_mut() {
            if frame.next == 0 && frame.unknown.is_none() && !self.settled_first(frame) {
                self.fixers_first(frame, max_run, &mut limited);
            }
            let known_from = frame.fixers;
            let choice = if frame.next >= known_from && frame.next < known_from + frame.known.len() {
                Candidate::Known(frame.known[frame.next - known_from])
            } else if frame.next < known_from {
                Candidate::Unknown(frame.next)
            } else {
                Candidate::Unknown(frame.next - frame.known.len())
            };
            let (index, step, done, run) = match choice {
                Candidate::Known(position) => {
                    frame.next += 1;
                    let index = self.known[position];
                    let traced = !frame.run.is_empty();
                    let done = (&frame.done_known, &frame.done_unknown);
                    let step = self.step(&frame.model, (true, position), done, traced);
                    if step.outcome != self.events[index].outcome || !Search::run_may_end(&frame.run, &step.footprint) {
                        continue;
                    }
                    let mut done_known = frame.done_known.clone();
                    done_known.set(position);
                    (index, step.model, (done_known, frame.done_unknown.clone()), Vec::new())
                }
                Candidate::Unknown(offset) => {
                    if frame.unknown.is_none() {
                        frame.unknown = Some(self.unknown_steps(frame, max_run, &mut limited));
                    }
                    let Some((position, model, footprint)) =
                        frame.unknown.as_mut().and_then(|steps| steps.get_mut(offset))
                    else {
                        stack.pop();
                        continue;
                    };
                    frame.next += 1;
                    let position = *position;
                    let mut done_unknown = frame.done_unknown.clone();
                    done_unknown.set(position);
                    let mut run = frame.run.clone();
                    run.push(RunStep { position, footprint: std::mem::take(footprint) });
                    (self.unknown[position], std::mem::take(model), (frame.done_known.clone(), done_unknown), run)
                }
            };
            let mut first_pending = frame.first_pending;
            while first_pending < self.known.len() && done.0.get(first_pending) {
                first_pending += 1;
            }
            if first_pending == self.known.len() {
                // Every known call is linearized; the unknown ones left may never have happened.
                return Pass::Linearizable;
            }
            let next = self.frame(step, done, first_pending, run, index);
            if !seen.insert(self.key(&next)) {
                continue;
            }
            if *states_left == 0 {
                return Pass::TooComplex;
            }
            *states_left -= 1;
            stack.push(next);
            // The initial frame has no event: the path has one event fewer than the stack frames.
            if stack.len() - 1 > deepest.path.len() {
                deepest.path = stack.iter().filter_map(|frame| frame.via).collect();
                let top = stack.last().expect("just pushed");
                deepest.state = Some((top.model.clone(), top.known.clone()));
            }
        }
        Pass::Failed { limited, deepest: Box::new(deepest) }
    }
}

/// A candidate applied to a model.
struct Step {
    model: Model,
    outcome: Outcome,
    footprint: Footprint,
}

/// Longest runs of unknown calls (between two known ones) each pass allows: short runs are
/// cheap to search and nearly always enough; a pass runs only if the one before failed and its
/// limit cut some path.
const RUN_LIMITS: [usize; 3] = [1, 2, usize::MAX];

/// `check` with a bound on the states visited.
fn check_with_limit(events: &[Event], states_max: usize) -> Result<(), CheckError> {
    let search = Search::new(events);
    if search.known.is_empty() {
        return Ok(());
    }
    let mut states_left = states_max;
    let mut deepest = Deepest::default();
    for max_run in RUN_LIMITS {
        match search.pass(max_run, &mut states_left) {
            Pass::Linearizable => return Ok(()),
            Pass::TooComplex => return Err(CheckError::TooComplex { states: states_max }),
            Pass::Failed { limited, deepest: reached } => {
                if reached.path.len() >= deepest.path.len() {
                    deepest = *reached;
                }
                if !limited {
                    break;
                }
            }
        }
    }

    // Nothing linearizes the whole history: report the deepest state reached.
    let (model, candidates) = deepest.state.unwrap_or_else(|| {
        let done = (Bits::new(search.known.len()), Bits::new(search.unknown.len()));
        let initial = search.frame(Model::new(), done, 0, Vec::new(), usize::MAX);
        (initial.model, initial.known)
    });
    let blocked = candidates
        .iter()
        .map(|&position| {
            let index = search.known[position];
            let expected = model.clone().apply(&events[index].call);
            Blocked { index, event: events[index].clone(), expected }
        })
        .collect();
    let prefix_events = deepest.path.iter().map(|&index| events[index].clone()).collect();
    Err(CheckError::NotLinearizable(Box::new(Violation {
        prefix: deepest.path,
        prefix_events,
        blocked,
        model,
        events: events.len(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Call, Kind, Time, Value, XattrMode};
    use rustre_proto::Errno;

    fn event(client: u32, invoked: u64, returned: u64, call: Call, outcome: Outcome) -> Event {
        Event { client, call, outcome, invoked, returned }
    }
    fn unknown(client: u32, invoked: u64, call: Call) -> Event {
        Event { client, call, outcome: Outcome::Unknown, invoked, returned: u64::MAX }
    }
    fn mkdir(path: &str) -> Call {
        Call::Mkdir { path: path.into() }
    }
    fn stat(path: &str) -> Call {
        Call::Stat { path: path.into() }
    }
    fn rename(from: &str, to: &str) -> Call {
        Call::Rename { from: from.into(), to: to.into(), noreplace: false }
    }
    fn create(path: &str, handle: u64) -> Call {
        Call::Open { path: path.into(), write: true, create: true, exclusive: false, truncate: false, handle }
    }
    fn directory() -> Outcome {
        Outcome::Ok(Value::plain(Kind::Directory, 0, 2))
    }
    fn file(size: u64) -> Outcome {
        Outcome::Ok(Value::plain(Kind::File, size, 1))
    }
    fn err(errno: Errno) -> Outcome {
        Outcome::Err(errno.0)
    }
    fn done() -> Outcome {
        Outcome::Ok(Value::Done)
    }

    fn violation(events: &[Event]) -> Violation {
        match check(events) {
            Err(CheckError::NotLinearizable(violation)) => *violation,
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn errors_can_cross_threads() {
        fn sendable<T: Send + Sync + 'static>() {}
        sendable::<CheckError>();
    }

    #[test]
    fn empty_and_sequential_histories_pass() {
        check(&[]).unwrap();
        let events = [
            event(0, 1, 2, mkdir("/d"), directory()),
            event(0, 3, 4, create("/d/f", 1), Outcome::Ok(Value::Opened { created: true, size: 0 })),
            event(0, 5, 6, Call::Write { handle: 1, data: b"abc".to_vec() }, done()),
            event(0, 7, 8, Call::Read { handle: 1 }, Outcome::Ok(Value::Data(b"abc".to_vec()))),
            event(0, 9, 10, rename("/d/f", "/g"), done()),
            event(0, 11, 12, Call::Close { handle: 1 }, done()),
            event(0, 13, 14, stat("/g"), file(3)),
            event(0, 15, 16, stat("/d/f"), err(Errno::ENOENT)),
            event(
                0,
                17,
                18,
                Call::ReadDir { path: "/".into() },
                Outcome::Ok(Value::Names(vec!["d".into(), "g".into()])),
            ),
        ];
        check(&events).unwrap();
    }

    #[test]
    fn a_concurrent_history_linearizable_in_one_order_passes() {
        // Client 1's mkdir returns first, but must take effect after client 0's: it saw EEXIST.
        // Client 2's stat overlaps both and saw the directory; client 3's, before either, did not.
        let events = [
            event(3, 1, 3, stat("/a"), err(Errno::ENOENT)),
            event(0, 2, 10, mkdir("/a"), directory()),
            event(1, 4, 6, mkdir("/a"), err(Errno::EEXIST)),
            event(2, 5, 9, stat("/a"), directory()),
            event(1, 7, 8, rename("/a", "/b"), done()),
            event(2, 11, 12, stat("/b"), directory()),
        ];
        check(&events).unwrap();
    }

    #[test]
    fn a_stale_read_fails() {
        let events = [event(0, 1, 2, mkdir("/a"), directory()), event(1, 3, 4, stat("/a"), err(Errno::ENOENT))];
        let violation = violation(&events);
        assert_eq!(violation.prefix, vec![0]);
        assert_eq!(violation.blocked.len(), 1);
        assert_eq!(violation.blocked[0].index, 1);
        assert_eq!(violation.blocked[0].expected, directory());
        let shown = violation.to_string();
        assert!(shown.contains("#1 client 1 [3, 4] Stat"), "{shown}");
        assert!(shown.contains("but the model answers"), "{shown}");
        assert!(shown.contains("a/"), "{shown}");
    }

    #[test]
    fn an_unknown_call_that_must_have_happened_passes() {
        let events = [
            unknown(0, 1, mkdir("/a")),
            event(1, 2, 3, stat("/a"), err(Errno::ENOENT)),
            event(1, 4, 5, stat("/a"), directory()),
            event(2, 6, 7, mkdir("/a"), err(Errno::EEXIST)),
        ];
        check(&events).unwrap();
    }

    #[test]
    fn an_unknown_call_that_never_happened_passes() {
        let events = [
            unknown(0, 1, mkdir("/a")),
            event(1, 2, 3, stat("/a"), err(Errno::ENOENT)),
            event(1, 4, 5, mkdir("/b"), directory()),
            event(1, 6, 7, stat("/a"), err(Errno::ENOENT)),
        ];
        check(&events).unwrap();
    }

    #[test]
    fn an_unknown_call_cannot_take_effect_before_its_invocation() {
        let events = [event(1, 1, 2, stat("/a"), directory()), unknown(0, 3, mkdir("/a"))];
        violation(&events);
    }

    // Seed 1466 of the simulator, reduced: the listing of / misses /e, which is explained only by
    // two broken calls both taking effect before it, the unlink of /d/a and then the rename of /e
    // over it (a directory cannot replace the symlink). The unlink conflicts with no known call,
    // so a pass allowing runs of one never tries it; the pass allowing two must still come.
    #[test]
    fn a_run_of_two_unknown_calls_that_only_the_second_pass_allows_is_found() {
        let events = [
            event(0, 1, 2, mkdir("/e"), directory()),
            event(0, 3, 4, mkdir("/d"), directory()),
            event(
                0,
                5,
                6,
                Call::Symlink { target: "x".into(), path: "/d/a".into() },
                Outcome::Ok(Value::plain(Kind::Symlink, 1, 1)),
            ),
            unknown(1, 7, Call::Unlink { path: "/d/a".into() }),
            unknown(2, 8, rename("/e", "/d/a")),
            event(3, 9, 12, Call::ReadDir { path: "/".into() }, Outcome::Ok(Value::Names(vec!["d".into()]))),
        ];
        check(&events).unwrap();
    }

    #[test]
    fn a_rename_seen_done_with_the_old_name_still_there_fails() {
        let events = [
            event(0, 1, 2, mkdir("/a"), directory()),
            event(0, 3, 4, rename("/a", "/b"), done()),
            event(1, 5, 6, stat("/b"), directory()),
            event(2, 7, 8, stat("/a"), directory()),
        ];
        let violation = violation(&events);
        assert_eq!(violation.prefix, vec![0, 1, 2]);
        assert_eq!(violation.blocked[0].index, 3);
        assert_eq!(violation.blocked[0].expected, err(Errno::ENOENT));
    }

    #[test]
    fn the_search_gives_up_past_its_bound() {
        let events = [
            event(0, 1, 10, mkdir("/a"), directory()),
            event(1, 2, 10, mkdir("/b"), directory()),
            event(2, 3, 10, mkdir("/c"), directory()),
            event(3, 11, 12, stat("/a"), err(Errno::ENOENT)),
        ];
        assert!(matches!(check_with_limit(&events, 3), Err(CheckError::TooComplex { .. })));
        violation(&events);
    }

    /// A small deterministic generator (xorshift).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len() as u64) as usize]
        }
    }

    /// A time for `SetTimes`, like the workload's: left, "now", or one of two explicit ones.
    fn set_time(rng: &mut Rng) -> Option<Time> {
        match rng.below(4) {
            0 => None,
            1 => Some(Time::Clock),
            2 => Some(Time::At { secs: 1_000_000_000, nanos: 0 }),
            _ => Some(Time::At { secs: -86_400, nanos: 5 }),
        }
    }

    /// A random call on colliding names, like the simulation's workload.
    fn random_call(rng: &mut Rng, held: &[(u64, bool)], handle: u64) -> Call {
        let path =
            |rng: &mut Rng| format!("{}/{}", rng.pick(&["", "/d", "/e", "/d/e"]), rng.pick(&["a", "b", "d", "e"]));
        let id = |rng: &mut Rng| [None, Some(0), Some(7)][rng.below(3) as usize];
        loop {
            return match rng.below(125) {
                0..=14 => {
                    let write = rng.below(10) < 7;
                    let create = write && rng.below(10) < 8;
                    Call::Open {
                        path: path(rng),
                        write,
                        create,
                        exclusive: create && rng.below(10) < 3,
                        truncate: write && rng.below(10) < 3,
                        handle,
                    }
                }
                15..=29 if !held.is_empty() => {
                    let (id, writable) = held[rng.below(held.len() as u64) as usize];
                    if writable && rng.below(2) == 0 {
                        Call::Write { handle: id, data: format!("h{id}-{}", rng.below(1000)).into_bytes() }
                    } else {
                        Call::Read { handle: id }
                    }
                }
                30..=37 if !held.is_empty() => Call::Close { handle: held[rng.below(held.len() as u64) as usize].0 },
                38..=47 => Call::Unlink { path: path(rng) },
                48..=57 => Call::Rename { from: path(rng), to: path(rng), noreplace: rng.below(4) == 0 },
                58..=66 => Call::Mkdir { path: path(rng) },
                67..=71 => Call::Rmdir { path: path(rng) },
                72..=75 => Call::Link { from: path(rng), to: path(rng) },
                76..=78 => Call::Symlink { target: rng.pick(&["/d", "/a", "a", "/e/b", "/s"]).into(), path: path(rng) },
                79..=91 => Call::Stat { path: path(rng) },
                92..=99 => Call::ReadDir { path: rng.pick(&["/", "/d", "/e", "/d/e"]).into() },
                100..=103 => {
                    Call::Chmod { path: path(rng), mode: [0o644, 0o4755, 0o2755, 0o2644][rng.below(4) as usize] }
                }
                104..=106 => Call::Chown { path: path(rng), uid: id(rng), gid: id(rng) },
                107..=109 => Call::Truncate { path: path(rng), size: rng.below(3) * 5 },
                110..=112 => Call::SetTimes { path: path(rng), atime: set_time(rng), mtime: set_time(rng) },
                113..=114 => Call::Readlink { path: path(rng) },
                115..=118 => Call::SetXattr {
                    path: path(rng),
                    name: rng.pick(&["user.a", "user.b"]).into(),
                    value: rng.pick(&["1", "two"]).into(),
                    mode: [XattrMode::Either, XattrMode::Create, XattrMode::Replace][rng.below(3) as usize],
                },
                119..=120 => Call::GetXattr { path: path(rng), name: rng.pick(&["user.a", "user.b"]).into() },
                121..=122 => Call::ListXattr { path: path(rng) },
                123..=124 => Call::RemoveXattr { path: path(rng), name: rng.pick(&["user.a", "user.b"]).into() },
                _ => continue,
            };
        }
    }

    /// A linearizable history: clients invoke calls concurrently, each takes effect on one model
    /// at a random instant between its invocation and its return; some never return (Unknown),
    /// and of those some take effect and some do not.
    fn random_history(seed: u64, clients: usize, calls: usize, breaks: u64) -> Vec<Event> {
        #[derive(Clone, Copy, PartialEq)]
        enum Stage {
            Idle,
            Invoked,
            Applied,
        }
        let mut rng = Rng(seed.max(1));
        let mut model = Model::new();
        let mut clock = 0;
        let mut events: Vec<Event> = Vec::new();
        let mut stages = vec![Stage::Idle; clients];
        let mut current = vec![0usize; clients];
        let mut held: Vec<Vec<(u64, bool)>> = vec![Vec::new(); clients];
        let mut next_handle = 1;
        while events.len() < calls || stages.iter().any(|&stage| stage != Stage::Idle) {
            let client = rng.below(clients as u64) as usize;
            clock += 1;
            match stages[client] {
                Stage::Idle if events.len() < calls => {
                    let call = random_call(&mut rng, &held[client], next_handle);
                    next_handle += 1;
                    current[client] = events.len();
                    events.push(event(client as u32, clock, 0, call, Outcome::Unknown));
                    stages[client] = Stage::Invoked;
                }
                Stage::Idle => {}
                Stage::Invoked => {
                    let index = current[client];
                    if breaks > 0 && rng.below(breaks) == 0 {
                        // The session breaks: maybe the call took effect, maybe not.
                        if rng.below(2) == 0 {
                            model.apply(&events[index].call);
                        }
                        events[index].returned = u64::MAX;
                        stages[client] = Stage::Idle;
                        held[client].clear();
                    } else {
                        events[index].outcome = model.apply(&events[index].call);
                        stages[client] = Stage::Applied;
                    }
                }
                Stage::Applied => {
                    let index = current[client];
                    events[index].returned = clock;
                    stages[client] = Stage::Idle;
                    let event = &events[index];
                    match (&event.call, &event.outcome) {
                        (Call::Open { handle, write, .. }, Outcome::Ok(_)) => held[client].push((*handle, *write)),
                        (Call::Close { handle }, _) => held[client].retain(|&(id, _)| id != *handle),
                        _ => {}
                    }
                }
            }
        }
        events
    }

    /// What the search's pruning rests on: calls whose footprints do not conflict commute (each
    /// answers the same in either order, and both orders end in the same model), and a conflict
    /// shows the same whether the second call's footprint is taken before or after the first.
    #[test]
    fn calls_that_do_not_conflict_commute() {
        let mut rng = Rng(0x5eed);
        let (mut pairs, mut independent) = (0, 0);
        for seed in 1..=40 {
            let events = random_history(seed * 31, 4, 150, 0);
            let mut model = Model::new();
            let mut handles: Vec<(u64, bool)> = Vec::new();
            for (step, event) in events.iter().enumerate() {
                model.apply(&event.call);
                match (&event.call, &event.outcome) {
                    (Call::Open { handle, write, .. }, Outcome::Ok(_)) => handles.push((*handle, *write)),
                    (Call::Close { handle }, _) => handles.retain(|&(id, _)| id != *handle),
                    _ => {}
                }
                if step % 5 != 0 {
                    continue;
                }
                for _ in 0..20 {
                    let first = random_call(&mut rng, &handles, 1_000_001);
                    let second = random_call(&mut rng, &handles, 1_000_002);
                    let (answer_first, footprint_first) = model.clone().apply_traced(&first);
                    let (answer_second, footprint_second) = model.clone().apply_traced(&second);
                    let mut one = model.clone();
                    assert_eq!(one.apply_traced(&first).0, answer_first);
                    let (second_after, footprint_second_after) = one.apply_traced(&second);
                    assert_eq!(
                        footprint_first.conflicts(&footprint_second),
                        footprint_first.conflicts(&footprint_second_after),
                        "{first:?} then {second:?} from\n{model}"
                    );
                    pairs += 1;
                    if footprint_first.conflicts(&footprint_second) {
                        continue;
                    }
                    independent += 1;
                    let mut other = model.clone();
                    let first_after = {
                        assert_eq!(other.apply(&second), answer_second, "{second:?} first, from\n{model}");
                        other.apply(&first)
                    };
                    assert_eq!(second_after, answer_second, "{second:?} after {first:?}, from\n{model}");
                    assert_eq!(first_after, answer_first, "{first:?} after {second:?}, from\n{model}");
                    assert_eq!(one, other, "{first:?} and {second:?} from\n{model}");
                }
            }
        }
        assert!(independent > pairs / 10, "only {independent} of {pairs} pairs were independent");
    }

    #[test]
    fn the_search_prunes_nothing_a_linearization_needs() {
        // Histories with many sessions broken mid-call, some of whose calls took effect.
        for seed in 1..=12 {
            let events = random_history(seed * 7919, 3 + (seed as usize % 4), 600, 15);
            let result = check(&events);
            assert!(result.is_ok(), "seed {seed}: {}", result.unwrap_err());
        }
    }

    /// Split into walk steps and acts (`phases.rs`), a linearizable history stays linearizable
    /// (each call's steps may all go at its instant), and its check stays quick though each walk
    /// has hops for its longest case: those that change nothing go at once (`settled_first`).
    #[test]
    fn random_histories_split_into_steps_pass() {
        for seed in 1..=8 {
            let events = crate::phases::split(&random_history(seed * 6151, 3, 400, 40));
            let started = std::time::Instant::now();
            let result = check(&events);
            assert!(result.is_ok(), "seed {seed}: {}", result.unwrap_err());
            eprintln!("seed {seed}: {} events checked in {:?}", events.len(), started.elapsed());
        }
    }

    #[test]
    fn random_linearizable_histories_pass_quickly() {
        for seed in 1..=8 {
            let events = random_history(seed * 7919, 3 + (seed as usize % 4), 2000, 100);
            let started = std::time::Instant::now();
            let result = check(&events);
            let took = started.elapsed();
            assert!(result.is_ok(), "seed {seed}: {}", result.unwrap_err());
            eprintln!("seed {seed}: {} events checked in {took:?}", events.len());
        }
    }

    #[test]
    fn a_changed_answer_in_a_random_history_is_found() {
        let mut found = 0;
        for seed in 1..=10 {
            let mut events = random_history(seed * 104729, 4, 300, 40);
            // Flip one Stat's answer between "missing" and "a directory".
            let Some(index) = events.iter().rposition(|event| {
                matches!(event.call, Call::Stat { .. }) && matches!(event.outcome, Outcome::Ok(_) | Outcome::Err(2))
            }) else {
                continue;
            };
            events[index].outcome =
                if events[index].outcome == err(Errno::ENOENT) { directory() } else { err(Errno::ENOENT) };
            match check(&events) {
                Err(CheckError::NotLinearizable(_)) => found += 1,
                // Another instant of a concurrent call may explain the new answer.
                Ok(()) => {}
                Err(error) => panic!("seed {seed}: {error}"),
            }
        }
        assert!(found >= 5, "only {found} of 10 changed histories were found wrong");
    }
}
