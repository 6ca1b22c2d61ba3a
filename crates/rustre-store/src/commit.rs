//! Group commit: one writer applies queued operations in batches, one redb write transaction and
//! (at most) one fsync per batch, and answers each caller after the commit that made its change
//! durable. Throughput grows with concurrency because a batch takes everything queued while the
//! previous fsync ran.
//!
//! The writer also owns a piece of caller state `S` (the server's open-handle table), so
//! operations that must be atomic with respect to it (open against unlink, last close against
//! destroy) are serialized with the namespace changes without any lock.
//!
//! Where the writer runs (`CommitMode`): on its own OS thread (production), or as a tokio task on
//! the runtime that started it (deterministic simulation: the simulator's scheduler decides when
//! it runs, so batches form when several callers' operations are queued, and nothing runs outside
//! the simulated schedule). Both wait for a first operation, then take everything queued behind
//! it, up to `COMMIT_BATCH_MAX`, as one batch (`Writer::take_and_run`, shared); only the wait
//! differs (blocking on the thread, `.await` on the task). The task runs each batch, commit and
//! fsync included, without yielding: on a real runtime it would block a worker thread for the
//! fsync, which is why production uses the thread.
//!
//! Replies: an operation that changed nothing, and ran before any change in its batch, is answered
//! at once: it saw only committed state. Every other reply waits for the commit.
//!
//! Inline mode (tests; a deterministic simulation without group commit): no writer of its own;
//! each operation runs as its own batch on the caller's task, under the writer's lock, before
//! `run` returns. Same ordering and failure rules, no group commit.
//!
//! Failure: a storage error (in an operation or at commit) rolls the whole batch back, fails every
//! operation of it still waiting for the commit, and stops the committer for good (fail-stop): the
//! server must be restarted on a store it re-reads from disk. Operations answered at once saw only
//! committed state and keep their answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use redb::{Database, Durability};
use rustre_proto::Timestamp;
use rustre_proto::clock::Clock;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Result, StoreError};
use crate::namespace::{Ns, PostCommit};
use crate::objects::ObjectStore;

/// Operations waiting for the writer; callers wait beyond this (back-pressure).
pub const COMMIT_QUEUE_DEPTH: usize = 4096;
/// Most operations in one transaction.
pub const COMMIT_BATCH_MAX: usize = 512;
/// `WRITABLE` rows whose removal waits for a batch that commits anyway; beyond, a batch commits
/// for them.
pub const UNWRITABLE_PENDING_MAX: usize = 4096;
/// Non-durable batches (data writes) in a row before one is made durable anyway, so redb's
/// uncommitted history stays short.
pub const NON_DURABLE_BATCHES_MAX: u32 = 64;

type Completion = Box<dyn FnOnce(Option<&StoreError>) + Send>;
type Job<S> = Box<dyn for<'txn> FnOnce(&mut Ns<'txn>, &mut S) -> Completion + Send>;

enum Message<S> {
    Run(Job<S>),
    Stop,
}

/// What the writer has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Operations handed to the writer: queued for it, or run. (A test holding the writer back
    /// knows from this that the changes it sent are waiting in its queue.)
    pub submitted: u64,
    /// Operations run.
    pub operations: u64,
    /// Batches run (each one transaction).
    pub batches: u64,
    /// Batches committed with an fsync.
    pub durable_commits: u64,
}

#[derive(Default)]
struct Counters {
    submitted: AtomicU64,
    operations: AtomicU64,
    batches: AtomicU64,
    durable_commits: AtomicU64,
    /// A planted bug (simulator tests only): no batch is made durable.
    fault_never_durable: std::sync::atomic::AtomicBool,
}

/// Where the writer runs (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CommitMode {
    /// Its own OS thread, `rustre-commit`: group commit (production).
    #[default]
    Thread,
    /// A tokio task on the runtime that starts it: group commit, scheduled by that runtime (the
    /// deterministic simulator). Each batch runs, fsync included, without yielding.
    Task,
    /// No writer: each operation commits alone on the caller's task (tests).
    Inline,
}

/// A handle to the writer (its thread or task, or itself in inline mode); cloning shares it.
pub struct Committer<S> {
    mode: Mode<S>,
    counters: Arc<Counters>,
}

enum Mode<S> {
    /// A writer (thread or task) fed by a queue.
    Queued {
        queue: mpsc::Sender<Message<S>>,
        /// `None` once stopped (or being stopped).
        worker: Arc<std::sync::Mutex<Option<Worker>>>,
    },
    /// `None` once stopped.
    Inline(Arc<std::sync::Mutex<Option<Writer<S>>>>),
}

/// What runs a queued writer.
enum Worker {
    Thread(JoinHandle<()>),
    Task(tokio::task::JoinHandle<()>),
}

impl<S> Clone for Committer<S> {
    fn clone(&self) -> Self {
        let mode = match &self.mode {
            Mode::Queued { queue, worker } => Mode::Queued { queue: queue.clone(), worker: worker.clone() },
            Mode::Inline(writer) => Mode::Inline(writer.clone()),
        };
        Committer { mode, counters: self.counters.clone() }
    }
}

impl<S> Committer<S> {
    pub fn stats(&self) -> CommitStats {
        CommitStats {
            submitted: self.counters.submitted.load(Ordering::Relaxed),
            operations: self.counters.operations.load(Ordering::Relaxed),
            batches: self.counters.batches.load(Ordering::Relaxed),
            durable_commits: self.counters.durable_commits.load(Ordering::Relaxed),
        }
    }
}

impl<S: Send + 'static> Committer<S> {
    pub(crate) fn start(
        db: Arc<Database>,
        objects: Arc<dyn ObjectStore>,
        clock: Arc<dyn Clock>,
        boot: u64,
        state: S,
        mode: CommitMode,
    ) -> Committer<S> {
        let counters = Arc::new(Counters::default());
        let writer = Writer {
            counters: counters.clone(),
            db,
            objects,
            clock,
            boot,
            state,
            stopped: false,
            non_durable_batches: 0,
            removed_objects: Vec::new(),
            unwritable: std::collections::HashSet::new(),
        };
        let (queue, receiver) = mpsc::channel(COMMIT_QUEUE_DEPTH);
        let worker = match mode {
            CommitMode::Inline => {
                return Committer { mode: Mode::Inline(Arc::new(std::sync::Mutex::new(Some(writer)))), counters };
            }
            CommitMode::Thread => Worker::Thread(
                std::thread::Builder::new()
                    .name("rustre-commit".into())
                    .spawn(move || writer.run_thread(receiver))
                    .expect("spawning the commit thread"),
            ),
            CommitMode::Task => Worker::Task(tokio::spawn(writer.run_task(receiver))),
        };
        Committer { mode: Mode::Queued { queue, worker: Arc::new(std::sync::Mutex::new(Some(worker))) }, counters }
    }

    /// Plants a bug, for proving the simulator's power losses find it: from now on no batch is
    /// made durable, so changes are acknowledged before they would survive a power loss. Never
    /// called outside those tests.
    pub fn plant_never_durable(&self) {
        self.counters.fault_never_durable.store(true, Ordering::Relaxed);
    }

    /// Runs `operation` in the next batch and returns its result once it is safe to reply.
    pub async fn run<T, F>(&self, operation: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'txn> FnOnce(&mut Ns<'txn>, &mut S) -> Result<T> + Send + 'static,
    {
        let (sender, receiver) = oneshot::channel();
        let job: Job<S> = Box::new(move |ns, state| {
            let before = ns.mutations;
            ns.touched.clear();
            ns.allocated = None;
            ns.subject = None;
            ns.opened = false;
            let result = operation(ns, state);
            match &result {
                Err(StoreError::Fs(errno)) => {
                    assert_eq!(ns.mutations, before, "an operation that answers {errno:?} changes nothing");
                }
                // A failure of the store itself may strike after some of the operation's writes:
                // the whole batch must then be thrown away, never committed half-done.
                Err(failure) => {
                    ns.failure.get_or_insert_with(|| failure.to_string());
                }
                Ok(_) => {}
            }
            Box::new(move |failure: Option<&StoreError>| {
                let outcome = match failure {
                    None => result,
                    Some(StoreError::Stopped) => Err(StoreError::Stopped),
                    Some(StoreError::Aborted(reason)) => Err(StoreError::Aborted(reason.clone())),
                    Some(failure) => Err(StoreError::io("commit failed", std::io::Error::other(failure.to_string()))),
                };
                // The caller may have gone away; nothing to tell it then.
                let _ = sender.send(outcome);
            })
        });
        match &self.mode {
            Mode::Queued { queue, .. } => {
                queue.send(Message::Run(job)).await.map_err(|_| StoreError::Stopped)?;
                self.counters.submitted.fetch_add(1, Ordering::Relaxed);
            }
            Mode::Inline(writer) => match writer.lock().expect("inline writer lock").as_mut() {
                Some(writer) => {
                    self.counters.submitted.fetch_add(1, Ordering::Relaxed);
                    writer.run_batch(vec![job]);
                }
                None => return Err(StoreError::Stopped),
            },
        }
        receiver.await.map_err(|_| StoreError::Stopped)?
    }

    /// Stops the writer after what is queued, and waits for it (the store can then be reopened).
    pub async fn stop(&self) {
        match &self.mode {
            Mode::Queued { queue, worker } => {
                let _ = queue.send(Message::Stop).await;
                let worker = worker.lock().expect("commit worker lock").take();
                match worker {
                    Some(Worker::Thread(thread)) => {
                        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
                    }
                    Some(Worker::Task(task)) => {
                        let _ = task.await;
                    }
                    None => {}
                }
            }
            Mode::Inline(writer) => drop(writer.lock().expect("inline writer lock").take()),
        }
    }
}

struct Writer<S> {
    db: Arc<Database>,
    objects: Arc<dyn ObjectStore>,
    clock: Arc<dyn Clock>,
    boot: u64,
    state: S,
    stopped: bool,
    non_durable_batches: u32,
    /// Objects removed since the last committed batch: their `doomed` rows go in the next batch
    /// that commits anyway. At most the destroys of one batch.
    removed_objects: Vec<u64>,
    /// Files whose last writer closed, whose `WRITABLE` rows are not yet dropped (see
    /// `Ns::unmark_writable`). At most `UNWRITABLE_PENDING_MAX`.
    unwritable: std::collections::HashSet<u64>,
    counters: Arc<Counters>,
}

impl<S> Writer<S> {
    /// The writer thread (`CommitMode::Thread`): blocks for each first operation.
    fn run_thread(mut self, mut receiver: mpsc::Receiver<Message<S>>) {
        while let Some(first) = receiver.blocking_recv() {
            if self.take_and_run(first, &mut receiver).is_break() {
                break;
            }
        }
    }

    /// The writer task (`CommitMode::Task`): awaits each first operation.
    async fn run_task(mut self, mut receiver: mpsc::Receiver<Message<S>>) {
        while let Some(first) = receiver.recv().await {
            if self.take_and_run(first, &mut receiver).is_break() {
                break;
            }
        }
    }

    /// One batch, the same for the thread and the task: `first`, then everything queued behind
    /// it (without waiting) up to `COMMIT_BATCH_MAX` operations or a `Stop`, run as one
    /// transaction. Breaks when a `Stop` was taken (what was queued before it has run).
    fn take_and_run(
        &mut self,
        first: Message<S>,
        receiver: &mut mpsc::Receiver<Message<S>>,
    ) -> std::ops::ControlFlow<()> {
        let mut batch = Vec::new();
        let mut stop = false;
        for message in std::iter::once(first).chain(std::iter::from_fn(|| receiver.try_recv().ok())) {
            match message {
                Message::Run(job) => batch.push(job),
                Message::Stop => {
                    stop = true;
                    break;
                }
            }
            if batch.len() >= COMMIT_BATCH_MAX {
                break;
            }
        }
        if !batch.is_empty() {
            self.run_batch(batch);
        }
        if stop { std::ops::ControlFlow::Break(()) } else { std::ops::ControlFlow::Continue(()) }
    }

    fn run_batch(&mut self, batch: Vec<Job<S>>) {
        self.counters.operations.fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        if self.stopped {
            // Dropping a job drops its reply sender: its caller sees `Stopped`.
            drop(batch);
            return;
        }
        match self.try_batch(batch) {
            Ok(()) => {}
            Err((error, completions)) => {
                tracing::error!(%error, "metadata store failed; stopping all changes (fail-stop)");
                self.stopped = true;
                for completion in completions {
                    completion(Some(&error));
                }
            }
        }
    }

    fn try_batch(&mut self, batch: Vec<Job<S>>) -> std::result::Result<(), (StoreError, Vec<Completion>)> {
        let mut txn = match self.db.begin_write() {
            Ok(txn) => txn,
            Err(error) => return Err((StoreError::from(error), Vec::new())),
        };
        let now = Timestamp::from_system_time(self.clock.now());
        let mut deferred: Vec<Completion> = Vec::new();
        let (mutated, durable, post_commit) = {
            let mut ns = match Ns::new(&txn, now, self.boot) {
                Ok(ns) => ns,
                Err(error) => return Err((error, Vec::new())),
            };
            ns.unwritable = std::mem::take(&mut self.unwritable);
            for job in batch {
                let completion = job(&mut ns, &mut self.state);
                if ns.mutations == 0 {
                    completion(None);
                } else {
                    deferred.push(completion);
                }
            }
            if let Some(failure) = ns.failure.take() {
                return Err((StoreError::Aborted(failure), deferred));
            }
            if ns.mutations > 0
                && !self.removed_objects.is_empty()
                && let Err(error) = ns.forget_doomed(&self.removed_objects)
            {
                return Err((error, deferred));
            }
            if ns.mutations > 0 || ns.unwritable.len() >= UNWRITABLE_PENDING_MAX {
                if !ns.unwritable.is_empty() {
                    if let Err(error) = ns.drop_unwritable() {
                        return Err((error, deferred));
                    }
                    // Counted only now: it makes this batch commit if nothing else did.
                    ns.mutations += 1;
                }
            } else {
                self.unwritable = std::mem::take(&mut ns.unwritable);
            }
            (ns.mutations > 0, ns.durable, std::mem::take(&mut ns.post_commit))
        };
        if mutated {
            self.removed_objects.clear();
            let durable = (durable || self.non_durable_batches >= NON_DURABLE_BATCHES_MAX)
                && !self.counters.fault_never_durable.load(Ordering::Relaxed);
            let result = txn
                .set_durability(if durable { Durability::Immediate } else { Durability::None })
                .map_err(StoreError::from)
                .and_then(|()| txn.commit().map_err(StoreError::from));
            if let Err(error) = result {
                return Err((error, deferred));
            }
            self.non_durable_batches = if durable { 0 } else { self.non_durable_batches + 1 };
            if durable {
                self.counters.durable_commits.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            drop(txn);
        }
        for completion in deferred {
            completion(None);
        }
        for action in post_commit {
            match action {
                PostCommit::RemoveObject(ino) => match self.objects.remove(ino) {
                    Ok(()) => self.removed_objects.push(ino),
                    // The inode is gone and its `doomed` row stays: the next start tries again.
                    Err(error) => tracing::warn!(ino, %error, "could not remove the data object of a destroyed inode"),
                },
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rustre_proto::clock::SystemClock;
    use rustre_proto::msg::{Caller, ROOT_INO};

    use super::*;
    use crate::Store;

    /// `count` mkdirs sent at once, each from its own task, then awaited.
    async fn mkdirs(committer: &Committer<()>, count: usize) {
        let tasks: Vec<_> = (0..count)
            .map(|index| {
                let committer = committer.clone();
                tokio::spawn(async move {
                    committer
                        .run(move |ns, _| ns.mkdir(ROOT_INO, format!("d{index}").as_bytes(), 0o755, &Caller::ROOT))
                        .await
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task").expect("mkdir");
        }
    }

    // The task writer takes what is queued when it runs as one batch, as the thread does: on a
    // current-thread runtime the callers' tasks all queue their operations before the writer's
    // turn, so 600 mkdirs make two batches (`COMMIT_BATCH_MAX`) and two fsyncs, and every one
    // is committed.
    #[test]
    fn the_task_writer_batches_what_is_queued() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let store = Store::open(dir.path(), &SystemClock).unwrap();
        runtime.block_on(async {
            let committer = store.start_committer_in(CommitMode::Task, Arc::new(SystemClock), ());
            mkdirs(&committer, 600).await;
            let stats = committer.stats();
            assert_eq!((stats.submitted, stats.operations), (600, 600));
            assert_eq!(stats.batches, 600usize.div_ceil(COMMIT_BATCH_MAX) as u64, "{stats:?}");
            assert_eq!(stats.durable_commits, stats.batches);
            committer.stop().await;
            let after = committer.run(|_, _| Ok(())).await;
            assert!(matches!(after, Err(StoreError::Stopped)), "a stopped writer takes nothing more");
        });
        assert_eq!(store.read().unwrap().getattr(ROOT_INO).unwrap().nlink, 2 + 600, "every mkdir committed");
    }

    // The three modes run the same operations to the same end; only the batching differs (the
    // inline mode: one operation per batch).
    #[test]
    fn every_mode_commits_every_operation() {
        for mode in [CommitMode::Thread, CommitMode::Task, CommitMode::Inline] {
            let dir = tempfile::tempdir().unwrap();
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let store = Store::open(dir.path(), &SystemClock).unwrap();
            let stats = runtime.block_on(async {
                let committer = store.start_committer_in(mode, Arc::new(SystemClock), ());
                mkdirs(&committer, 40).await;
                committer.stop().await;
                committer.stats()
            });
            assert_eq!(stats.operations, 40, "{mode:?}");
            assert!(stats.batches >= 1 && stats.batches <= 40, "{mode:?}: {stats:?}");
            if mode == CommitMode::Inline {
                assert_eq!(stats.batches, 40);
            }
            assert_eq!(store.read().unwrap().getattr(ROOT_INO).unwrap().nlink, 2 + 40, "{mode:?}");
        }
    }
}
