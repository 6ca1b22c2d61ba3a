//! Recovery: sessions that outlive their connections and the server's restarts, and changes that
//! run at most once (ARCHITECTURE.md, "Recovery"; semantics.md, promise 6 and race 12).
//!
//! **A session outlives its connection.** When a connection breaks, its session is *detached*:
//! its handles and pins stay (so do the orphans they keep), its leases go (the client empties its
//! cache when the connection goes). The client has `recovery_grace` to take it up again with
//! `Op::Resume`; after that the session ends as if closed. A session *ends* at once when its
//! client said `Op::EndSession`, and when it is *evicted* (it did not acknowledge a revocation,
//! or stopped answering pings): an evicted session is fenced, as `Resume` of it is refused, so
//! nothing sent under it can land after others changed what it held (race 12).
//!
//! **Sessions outlive the server.** Each session is a row of the store's `SESSIONS` table from
//! its hello to its end. A restarted server is *recovering* while any session of the previous run
//! has not come back: those resume (`state_kept: false`), take back their handles and pins
//! (`Op::Reclaim`), then resend what was in flight. Until every one of them has, or
//! `recovery_grace` has passed, changes to the namespace or to data wait
//! (`wait_if_recovering`): otherwise another client could unlink a name whose inode a
//! recovering client's kernel still holds, before that client pinned it again. Opens and pins
//! that change nothing else do not wait, so an orphan can be claimed by id meanwhile. The orphans
//! of the previous run are kept as if open until recovery ends; those nobody claimed then go.
//!
//! **Once.** A client wraps every request that changes state in `Op::Once { slot, seq }`. The
//! server keeps, per session and slot, the answer to the slot's latest request (`OnceSlot`): a
//! resend of it, after the connection broke, gets that answer instead of a second run. That
//! covers a broken connection; a restart loses the memory, so the first change such a request
//! makes also writes a row `(session, slot) -> (seq, subject, flags, subject's record)` into
//! `ONCE`, in the same transaction (`apply` in `lib.rs`). A resend that finds its row after a
//! restart is answered from it (`recorded_answer`): the attributes the change left, nothing looked
//! up by name or made again, and what an in-flight open opened is kept until that resend is
//! answered or its session ends (not merely until recovery ends: a session counts as back once
//! it has taken back its handles, before its resends arrive).
//! A request that failed changed nothing, has no row, and simply runs again.
//!
//! Locks: `Inner::sessions`, `Inner::detached`, `Recovery::waiting`, `Session::once` are std
//! mutexes, each taken alone and never across an await.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rustre_proto::{Errno, ONCE_SLOTS_MAX, Op, OpenFlags, ReclaimedHandle, Reply, Request, WireError};
use rustre_store::access;
use rustre_store::{OnceMarker, StoreError};
use tokio::sync::watch;

use crate::{
    HANDLE_BOOT_SHIFT, Handle, Inner, Session, WireAnswer, apply, close_session_handles, errno, reclaim_orphans,
    release_handle, release_opens, run, stop_awaiting_resends,
};

/// How long a resume waits for the connection it replaces to be let go.
pub const RESUME_TAKEOVER_WAIT: Duration = Duration::from_secs(2);
/// Most handles and pins one `Reclaim` chunk may carry.
pub const RECLAIM_CHUNK_MAX: usize = 16384;

/// What becomes of a session when its connection closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Kept for `recovery_grace`, for its client to resume.
    Resumable,
    /// Its client ended it (`Op::EndSession`).
    Ending,
    /// Evicted: ended at once, and fenced.
    Evicted,
}

/// The answer to a slot's latest request; `None` while it runs.
pub(crate) struct OnceSlot {
    seq: u64,
    answer: watch::Receiver<Option<WireAnswer>>,
}

/// The `Op::Once` request the current task runs: `apply` records its first change.
#[derive(Clone)]
pub(crate) struct OnceContext {
    pub session: u64,
    pub slot: u32,
    pub seq: u64,
    pub recorded: Arc<AtomicBool>,
}

tokio::task_local! {
    pub(crate) static ONCE: OnceContext;
}

pub(crate) struct Recovery {
    /// Sessions of the previous run that have not finished taking back what they held.
    waiting: Mutex<HashSet<u64>>,
    /// Inodes are kept as if open until recovery ends (`OpenCounts::protected`); then the
    /// orphans nobody claimed are destroyed. True until that is done.
    protecting: Mutex<bool>,
    /// True once changes may run.
    over: watch::Sender<bool>,
}

impl Recovery {
    pub(crate) fn new(previous: Vec<u64>, protecting: bool) -> Recovery {
        let (over, _) = watch::channel(previous.is_empty());
        Recovery { waiting: Mutex::new(previous.into_iter().collect()), protecting: Mutex::new(protecting), over }
    }

    fn is_over(&self) -> bool {
        *self.over.borrow()
    }
}

/// Starts recovery at server start: it ends when every session of the previous run is back, or
/// has missed its deadline.
///
/// A session's deadline is `recovery_grace` after the first start that waited for it, and it is
/// kept in the store (`RECOVERY_DEADLINES`) until the session comes back or is forgotten: a
/// server that crashes again during recovery does not give a session that never returns (its
/// client crashed) a fresh grace at every start, which in a crash loop kept every change waiting
/// for ever (simulator seeds 1094, 2361). A session that did come back has its deadline cleared,
/// and gets a whole grace again after the next restart.
pub(crate) async fn start(inner: &Arc<Inner>) -> Result<(), StoreError> {
    let mut waiting: Vec<u64> = inner.recovery.waiting.lock().expect("waiting lock").iter().copied().collect();
    waiting.sort_unstable();
    let pending = !waiting.is_empty() || *inner.recovery.protecting.lock().expect("protecting lock");
    if !pending {
        return Ok(());
    }
    let grace = inner.config.recovery_grace;
    if grace.is_zero() {
        return finish(inner, "no grace period").await;
    }
    let now = epoch_millis(inner.config.clock.now());
    let fresh = now.saturating_add(i64::try_from(grace.as_millis()).unwrap_or(i64::MAX));
    let (deadlines, _) = apply(inner, inner.leases.begin_read(), move |ns, _, _| {
        let known: std::collections::HashMap<u64, i64> = ns.recovery_deadlines()?.into_iter().collect();
        let mut deadlines = Vec::with_capacity(waiting.len());
        for session in waiting {
            let deadline = match known.get(&session) {
                // Never later than a fresh grace, should the clock have been set back since.
                Some(&deadline) => deadline.min(fresh),
                None => {
                    ns.set_recovery_deadline(session, fresh)?;
                    fresh
                }
            };
            deadlines.push((deadline, session));
        }
        Ok(deadlines)
    })
    .await;
    let mut deadlines = deadlines?;
    deadlines.sort_unstable();
    let carried = deadlines.iter().filter(|&&(deadline, _)| deadline < fresh).count();
    if carried > 0 {
        tracing::info!(carried, "recovery: sessions missing since an earlier start keep that start's deadline");
    }
    let started = tokio::time::Instant::now();
    let server = inner.clone();
    let mut shutdown = inner.shutdown.subscribe();
    tokio::spawn(async move {
        // Only orphans to keep, no session to wait for: they are kept for one grace.
        if deadlines.is_empty() {
            deadlines.push((fresh, 0));
        }
        let mut next = 0;
        while next < deadlines.len() {
            let deadline = deadlines[next].0;
            let after = Duration::from_millis(u64::try_from(deadline.saturating_sub(now)).unwrap_or(0));
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(started + after) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            let mut due = Vec::new();
            while next < deadlines.len() && deadlines[next].0 == deadline {
                due.push(deadlines[next].1);
                next += 1;
            }
            if let Err(error) = expire(&server, due).await {
                tracing::error!(%error, "forgetting sessions that did not come back in time");
            }
            if inner_waiting_is_empty(&server) {
                break;
            }
        }
        if let Err(error) = finish(&server, "grace period over").await {
            tracing::error!(%error, "ending recovery");
        }
    });
    Ok(())
}

fn inner_waiting_is_empty(inner: &Inner) -> bool {
    inner.recovery.waiting.lock().expect("waiting lock").is_empty()
}

/// Milliseconds since the epoch (negative before it).
fn epoch_millis(time: std::time::SystemTime) -> i64 {
    match time.duration_since(std::time::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// Sessions of an earlier run whose deadline has passed before they came back: forgotten, as
/// `finish` forgets those still missing (a resume of one is refused from now on).
async fn expire(inner: &Arc<Inner>, due: Vec<u64>) -> Result<(), StoreError> {
    let missing: Vec<u64> = {
        let mut waiting = inner.recovery.waiting.lock().expect("waiting lock");
        due.into_iter().filter(|session| waiting.remove(session)).collect()
    };
    if missing.is_empty() {
        return Ok(());
    }
    tracing::info!(count = missing.len(), "recovery: sessions of an earlier run did not come back by their deadline");
    forget_missing(inner, missing).await
}

/// Forgets sessions of an earlier run that did not come back (`expire`, `finish`): what they
/// held is closed, their rows go, and the inodes kept for their resends are let go.
async fn forget_missing(inner: &Arc<Inner>, missing: Vec<u64>) -> Result<(), StoreError> {
    close_forgotten(inner, &missing);
    let (result, _) = apply(inner, inner.leases.begin_read(), move |ns, opens, _| {
        for session in missing {
            ns.forget_session(session)?;
            crate::stop_awaiting(ns, opens, session, None)?;
        }
        Ok(())
    })
    .await;
    result
}

/// Ends recovery (once): sessions that did not come back are forgotten, changes may run, and
/// unclaimed orphans of the previous run are destroyed.
async fn finish(inner: &Arc<Inner>, why: &str) -> Result<(), StoreError> {
    let protecting = std::mem::take(&mut *inner.recovery.protecting.lock().expect("protecting lock"));
    let missing: Vec<u64> = inner.recovery.waiting.lock().expect("waiting lock").drain().collect();
    if !missing.is_empty() {
        tracing::info!(count = missing.len(), why, "recovery: sessions of the previous run did not come back");
        forget_missing(inner, missing).await?;
    }
    let was_over = inner.recovery.over.send_replace(true);
    if !was_over {
        tracing::info!(why, "recovery over");
    }
    match protecting {
        true => reclaim_orphans(inner).await,
        false => Ok(()),
    }
}

/// A session of the previous run has taken back all it held (`forgotten`: or has ended, and
/// the store forgot it).
/// Returns whether recovery was still waiting for it.
async fn session_back(inner: &Arc<Inner>, session: u64, forgotten: bool) -> bool {
    let (was_waiting, all_back) = {
        let mut waiting = inner.recovery.waiting.lock().expect("waiting lock");
        let was_waiting = waiting.remove(&session);
        (was_waiting, was_waiting && waiting.is_empty())
    };
    if was_waiting && !forgotten {
        let (result, _) =
            apply(inner, inner.leases.begin_read(), move |ns, _, _| ns.clear_recovery_deadline(session)).await;
        if let Err(error) = result {
            tracing::error!(session = format_args!("{session:#x}"), %error, "clearing a recovery deadline");
        }
    }
    if all_back && let Err(error) = finish(inner, "every session came back").await {
        tracing::error!(%error, "ending recovery");
    }
    was_waiting
}

/// Does `op` change the namespace or data, and so wait for the end of recovery? Every change
/// (`Op::changes_state`) but those that only take or give back handles and pins: an open without
/// create or truncate, a close, an fsync, a pin or unpin.
fn waits_for_recovery(op: &Op) -> bool {
    match op {
        Op::AtPath { op, .. } | Op::OnPath { op, .. } => waits_for_recovery(op),
        Op::Open { flags, .. } | Op::OpenIno { flags, .. } => {
            flags.contains(OpenFlags::CREATE) || flags.contains(OpenFlags::TRUNCATE)
        }
        Op::Close { .. } | Op::Fsync { .. } | Op::Pin { .. } | Op::Unpin { .. } | Op::PinName { .. } => false,
        op => op.changes_state(),
    }
}

/// Waits (at most `recovery_grace` after the start) until changes may run, if `op` is one.
pub(crate) async fn wait_if_recovering(inner: &Inner, op: &Op) {
    if inner.config.fault_changes_skip_recovery_wait || inner.recovery.is_over() || !waits_for_recovery(op) {
        return;
    }
    let mut over = inner.recovery.over.subscribe();
    // Tests stop here to know that a change has arrived and waits (then let it wait on): the
    // event that tells them when to let a session of the previous run come back.
    inner.config.pause_points.pause("server.recovery.change_waits").await;
    let _ = over.wait_for(|over| *over).await;
}

/// Records a new session in the store (durably) before its hello is answered.
pub(crate) async fn remember_session(inner: &Arc<Inner>, session: u64) -> Result<(), StoreError> {
    apply(inner, inner.leases.begin_read(), move |ns, _, _| ns.add_session(session)).await.0
}

/// `Op::Resume`: the session, and whether its handles and pins were kept (its connection broke)
/// rather than lost (the server restarted).
pub(crate) async fn resume(inner: &Arc<Inner>, id: u64) -> Result<(Arc<Session>, bool), String> {
    // A connection we still think is up: the client has moved on from it (it saw it break first).
    let live = inner.sessions.lock().expect("sessions lock").get(&id).cloned();
    if let Some(live) = live {
        live.connection.close("the client resumed its session on a new connection");
        let deadline = tokio::time::Instant::now() + RESUME_TAKEOVER_WAIT;
        while inner.sessions.lock().expect("sessions lock").contains_key(&id) {
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("session {id:#x} is still connected"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // The client saw its old connection go and emptied its cache: leases it may still have
    // been trusted with go now, before the resumed session is granted new ones.
    inner.leases.end_lapse(id);
    let detached = inner.detached.lock().expect("detached lock").remove(&id);
    if let Some(session) = detached {
        if forgotten_midway(inner, &session) {
            // Recovery gave up on it while it was taking back what it held (its deadline passed
            // between its resume and its last reclaim): the store forgot it, with its `ONCE` rows,
            // so it may not go on, or its resends would run a second time (simulator seed 2533).
            let released = close_session_handles(inner, &session).await;
            tracing::info!(
                session = format_args!("{id:#x}"),
                released,
                "a session forgotten by recovery tried to resume"
            );
            return Err(format!("unknown session {id:#x}: it did not come back before its recovery deadline"));
        }
        session.attachments.fetch_add(1, Ordering::Relaxed);
        // A session of the last run that broke off before it had taken everything back must
        // send its reclaim again.
        let kept = !session.restored || session.reclaimed.load(Ordering::Relaxed);
        return Ok((session, kept));
    }
    if inner.recovery.waiting.lock().expect("waiting lock").contains(&id) {
        let session = Session::new(id, &inner.config, true);
        return Ok((Arc::new(session), false));
    }
    Err(format!("unknown session {id:#x}: it ended, was evicted, or did not come back in time"))
}

/// A session of the previous run that resumed, but which recovery forgot (its deadline passed)
/// before it had taken back all it held.
fn forgotten_midway(inner: &Inner, session: &Session) -> bool {
    session.restored
        && !session.reclaimed.load(Ordering::Relaxed)
        && !inner.recovery.waiting.lock().expect("waiting lock").contains(&session.id)
}

/// Closes the connections of sessions recovery forgets while they are still taking back what
/// they held: their clients learn at once, and their next resume is refused (`resume`).
fn close_forgotten(inner: &Inner, forgotten: &[u64]) {
    let sessions = inner.sessions.lock().expect("sessions lock");
    for id in forgotten {
        if let Some(live) = sessions.get(id) {
            live.connection.close("recovery forgot the session: it did not come back in time");
        }
    }
}

/// Keeps a session whose connection broke for `recovery_grace`; then, if no connection took it
/// up meanwhile, ends it.
pub(crate) fn detach(inner: &Arc<Inner>, session: Arc<Session>) {
    let attachment = session.attachments.load(Ordering::Relaxed);
    inner.detached.lock().expect("detached lock").insert(session.id, session.clone());
    let inner = inner.clone();
    let grace = inner.config.recovery_grace;
    let mut shutdown = inner.shutdown.subscribe();
    tokio::spawn(async move {
        tokio::select! {
            biased;
            _ = tokio::time::sleep(grace) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let expired = {
            let mut detached = inner.detached.lock().expect("detached lock");
            let same = detached.get(&session.id).is_some_and(|kept| {
                Arc::ptr_eq(kept, &session) && kept.attachments.load(Ordering::Relaxed) == attachment
            });
            if same {
                detached.remove(&session.id);
            }
            same
        };
        if expired {
            let released = end_session(&inner, &session).await;
            tracing::info!(session = format_args!("{:#x}", session.id), released, "detached session expired");
        }
    });
}

/// Ends a session: forgets it in the store, then gives back its handles and pins. Returns how
/// many handles it held.
///
/// In that order because a crash may come between the two. Forgotten first, a session whose
/// handles are not yet given back is refused when it tries to resume (its in-flight call fails
/// with EIO, of unknown outcome, as it should), and what it held goes anyway: handles and pins
/// live in memory, and its orphans are removed at the end of the next recovery. The other order
/// let an evicted session resume after the crash with `ONCE` rows about inodes its released
/// handles had let go: a resent exclusive create found its recorded inode gone (ESTALE), was
/// retried by name as a new request, and ran twice (simulator seed 1392).
pub(crate) async fn end_session(inner: &Arc<Inner>, session: &Session) -> usize {
    let id = session.id;
    if let (Err(error), _) = apply(inner, inner.leases.begin_read(), move |ns, _, _| ns.forget_session(id)).await {
        tracing::error!(session = format_args!("{id:#x}"), %error, "forgetting an ended session");
    }
    let released = close_session_handles(inner, session).await;
    if session.restored {
        stop_awaiting_resends(inner, id, None).await;
        session_back(inner, id, true).await;
    }
    released
}

/// `Op::Reclaim`: takes back, for a session of the previous run, the handles (with their ids)
/// and pins it held, as far as their inodes still exist.
pub(crate) async fn reclaim(
    inner: &Arc<Inner>,
    session: &Session,
    handles: Vec<ReclaimedHandle>,
    pins: Vec<(u64, u64)>,
    last: bool,
) -> Result<(Reply, Bytes), StoreError> {
    if !session.restored || handles.len() + pins.len() > RECLAIM_CHUNK_MAX {
        return Err(errno(Errno::EINVAL));
    }
    if forgotten_midway(inner, session) {
        return Err(errno(Errno::ESTALE));
    }
    let this_run = inner.store.boot() << HANDLE_BOOT_SHIFT;
    // A reclaim may come again (its connection broke midway): what is held already is not taken
    // twice. Pins are brought up to the count asked for.
    let (room, handles, pins) = {
        let held = session.handles.lock().expect("handles lock");
        let room = session.handles_max.saturating_sub(held.map.len() + held.reserved);
        let handles: Vec<ReclaimedHandle> =
            handles.into_iter().filter(|handle| !held.map.contains_key(&handle.handle)).collect();
        let pinned = session.pins.lock().expect("pins lock");
        // Inodes not pinned yet count against the session's bound; beyond it, a pin is lost.
        let mut pin_room = session.pins_max.saturating_sub(pinned.len());
        let pins: Vec<(u64, u64)> = pins
            .into_iter()
            .map(|(ino, count)| (ino, count.saturating_sub(pinned.get(&ino).copied().unwrap_or(0))))
            .filter(|&(_, count)| count > 0)
            .map(|(ino, count)| {
                let new = !pinned.contains_key(&ino);
                if new && pin_room == 0 {
                    return (ino, 0);
                }
                pin_room -= usize::from(new);
                (ino, count)
            })
            .collect();
        (room, handles, pins)
    };
    // Ids of this run cannot be the previous run's; beyond the session's bound, none is taken.
    let mut wanted = Vec::new();
    let mut lost_handles = Vec::new();
    for (index, handle) in handles.into_iter().enumerate() {
        if handle.handle < this_run && index < room {
            wanted.push(handle);
        } else {
            lost_handles.push(handle);
        }
    }
    let squash = inner.config.root_squash;
    let session_id = session.id;
    let (result, _) = apply(inner, inner.leases.begin_read(), move |ns, opens, _| {
        let mut kept = Vec::new();
        let mut gone = Vec::new();
        for handle in wanted {
            if let Some(record) = ns.inode(handle.ino)? {
                // A reclaim stands for an open made before the restart; it is checked as that
                // open would be now, except that the owner keeps its handles whatever the mode
                // (a creator's handle on a 0444 file). Refused, it is lost like a destroyed one's.
                let opener = squash.apply(handle.opener.clone());
                let flags = handle.flags;
                let want = access::open_wants(flags.contains(OpenFlags::READ), flags.writes(), false);
                if opener.uid != record.uid && !access::permits(&record, &opener, want) {
                    tracing::warn!(
                        session = format_args!("{session_id:#x}"),
                        handle = handle.handle,
                        ino = handle.ino,
                        uid = opener.uid,
                        "reclaim refused: the opener may not open the file so now"
                    );
                    gone.push(handle);
                    continue;
                }
                if handle.flags.writes() && record.kind == rustre_proto::FileKind::Regular {
                    ns.mark_writable(handle.ino)?;
                }
                opens.acquire(handle.ino);
                opens.acquire_writer(handle.ino, handle.flags);
                kept.push(handle);
            } else {
                gone.push(handle);
            }
        }
        let mut pinned = Vec::new();
        let mut lost_pins = Vec::new();
        for (ino, count) in pins {
            match u32::try_from(count) {
                Ok(count) if count > 0 && ns.inode(ino)?.is_some() && opens.acquire_many(ino, count) => {
                    pinned.push((ino, u64::from(count)));
                }
                _ => lost_pins.push(ino),
            }
        }
        Ok((kept, gone, pinned, lost_pins))
    })
    .await;
    let (kept, gone, pinned, lost_pins) = result?;
    lost_handles.extend(gone);
    let closed = {
        let mut held = session.handles.lock().expect("handles lock");
        if !held.closed {
            for handle in &kept {
                held.map.insert(handle.handle, Handle { ino: handle.ino, flags: handle.flags });
            }
            let mut pins = session.pins.lock().expect("pins lock");
            for &(ino, count) in &pinned {
                *pins.entry(ino).or_insert(0) += count;
            }
        }
        held.closed
    };
    if closed {
        // The session ended meanwhile: nobody is left to give these back.
        for handle in &kept {
            release_handle(inner, &Handle { ino: handle.ino, flags: handle.flags }).await?;
        }
        for &(ino, count) in &pinned {
            release_opens(inner, ino, count).await?;
        }
        return Err(errno(Errno::ENOTCONN));
    }
    // Back only if recovery has not forgotten the session meanwhile (checked and marked under
    // the one `waiting` lock, so `finish` and `expire` cannot forget it after this).
    if last && !session.reclaimed.load(Ordering::Relaxed) {
        if !session_back(inner, session.id, false).await {
            return Err(errno(Errno::ESTALE));
        }
        session.reclaimed.store(true, Ordering::Relaxed);
    }
    let lost_handles = lost_handles.into_iter().map(|handle| handle.handle).collect();
    Ok((Reply::Reclaimed { lost_handles, lost_pins }, Bytes::new()))
}

fn refused(errno: Errno, message: &str) -> WireAnswer {
    WireAnswer {
        result: Err(WireError { errno, message: message.to_string() }),
        payload: Bytes::new(),
        grants: Vec::new(),
    }
}

/// `Op::Once`: runs `request` unless this slot's request `seq` ran already, whose answer it then
/// gives again (see the module doc).
pub(crate) async fn once(
    inner: &Arc<Inner>,
    session: &Arc<Session>,
    slot: u32,
    seq: u64,
    request: Request,
    payload: Bytes,
) -> WireAnswer {
    if slot >= ONCE_SLOTS_MAX || !request.op.changes_state() {
        return refused(Errno::EINVAL, "Once wraps a change, on a slot below ONCE_SLOTS_MAX");
    }
    let (answered, first_use) = {
        let mut slots = session.once.lock().expect("once lock");
        match slots.get(&slot) {
            Some(latest) if latest.seq == seq => (Err(latest.answer.clone()), false),
            Some(latest) if latest.seq > seq => return refused(Errno::EPROTO, "a resend older than its slot's latest"),
            latest => {
                let first_use = latest.is_none();
                let (answered, answer) = watch::channel(None);
                slots.insert(slot, OnceSlot { seq, answer });
                (Ok(answered), first_use)
            }
        }
    };
    let answered = match answered {
        Ok(answered) => answered,
        // A resend while the first run is still going, or after it answered.
        Err(mut answer) => {
            return match answer.wait_for(Option::is_some).await {
                Ok(answer) => answer.clone().expect("waited for it"),
                Err(_) => refused(Errno::EIO, "the first run of this request was lost"),
            };
        }
    };
    // Only the first request on a slot in this run may be a resend of one the last run made.
    let recorded = match session.restored && first_use {
        true => match inner.store.once_marker(session.id, slot) {
            Ok(marker) => marker,
            Err(error) => return WireAnswer::from_store(Err(error)),
        },
        false => None,
    };
    let answer = match recorded {
        Some(marker) if marker.seq == seq => recorded_answer(inner, session, request, &payload, marker).await,
        Some(marker) if marker.seq > seq => refused(Errno::EPROTO, "a resend older than its slot's latest"),
        _ => {
            wait_if_recovering(inner, &request.op).await;
            let context = OnceContext { session: session.id, slot, seq, recorded: Arc::default() };
            ONCE.scope(context, run(inner, session, request, payload)).await
        }
    };
    // The slot's first request in this run is answered: it was the resend, or the client has
    // moved on from it; the inode kept for the resend goes unless held otherwise.
    if session.restored && first_use {
        stop_awaiting_resends(inner, session.id, Some(slot)).await;
    }
    // A resend gets no leases: the ones granted with the first answer may be revoked by then.
    answered.send_replace(Some(WireAnswer { grants: Vec::new(), ..answer.clone() }));
    answer
}

/// The answer to a request that the previous run of the server carried out (its `ONCE` row says
/// so) but whose answer was lost with it: the same reply, about the inode the request made,
/// opened, linked, changed or wrote (the marker's subject), with the attributes the row kept from
/// right after the change, so it holds even if another change has removed that inode since.
/// Nothing is looked up by name again, and nothing is made again. An open needs a new handle:
/// its inode was kept for this resend (`OpenCounts::awaiting_resend`), even if unlinked.
async fn recorded_answer(
    inner: &Arc<Inner>,
    session: &Arc<Session>,
    request: Request,
    payload: &Bytes,
    marker: OnceMarker,
) -> WireAnswer {
    let done = WireAnswer { result: Ok(Reply::Done), payload: Bytes::new(), grants: Vec::new() };
    // The reads below repeat the first run's answer, as the caller (squashed like every
    // request): the op of a resend is the client's word, not the record's, so it gets nothing the
    // caller could not get now. Except that an owner reopens its own file whatever the mode, as a
    // reclaim keeps an owner's handles: a file created 0444 is reopened for writing, as its
    // creator's handle was.
    let Request { caller, op } = request;
    let owner = inner.store.read().and_then(|ns| ns.getattr(marker.subject)).is_ok_and(|now| now.uid == caller.uid);
    let caller = if owner { rustre_proto::Caller::ROOT } else { caller };
    let op = match op {
        Op::AtPath { op, .. } | Op::OnPath { op, .. } => *op,
        op => op,
    };
    let OnceMarker { subject, made, followed, .. } = marker;
    let recorded_attr = marker.attr.clone();
    let read = |op: Op| run(inner, session, Request { caller: caller.clone(), op }, Bytes::new());
    // The subject's attributes as the change left them (as now, for a row without them).
    let attr = async {
        match marker.attr {
            Some(attr) => WireAnswer { result: Ok(Reply::Attr { attr }), payload: Bytes::new(), grants: Vec::new() },
            None => read(Op::GetAttr { ino: subject }).await,
        }
    };
    let mut answer = match op {
        Op::Open { flags, .. } | Op::OpenIno { flags, .. } => {
            // The file exists: opened again by id, without creating. Its truncate runs only if
            // the first run did not get to it: not after a create (a new file is empty), nor
            // once the row says the truncate committed (`followed`); others may have written
            // since, and truncating again would lose their data (simulator seed 4533). A pin is
            // taken as the first run did.
            let mut dropped = OpenFlags::CREATE.0 | OpenFlags::EXCLUSIVE.0 | OpenFlags::PIN.0;
            if made || followed {
                dropped |= OpenFlags::TRUNCATE.0;
            }
            let again = OpenFlags(flags.0 & !dropped);
            let mut answer = read(Op::OpenIno { ino: subject, flags: again }).await;
            if let Err(error) = &answer.result
                && error.errno == Errno::ESTALE
            {
                // The inode was kept for this resend (`OpenCounts::awaiting_resend`), so this is
                // a bug; still, ESTALE would make the client run the open again by name as a new
                // request, a second create. The open did run: its outcome is lost, not undone.
                tracing::error!(ino = subject, "the inode a resent open opened before the restart is gone");
                return refused(Errno::EIO, "the open ran before the server restarted, but the file it opened is gone");
            }
            if let Ok(Reply::Opened { created, attr, .. }) = &mut answer.result {
                *created = made;
                // The attributes as the open (and its truncate) left them, not as later changes
                // made them (another client may have written since: simulator seed 1388); unless
                // its truncate runs only now, and the reopen's attributes are the open's.
                if let Some(recorded) = recorded_attr
                    && !again.contains(OpenFlags::TRUNCATE)
                {
                    *attr = recorded;
                }
                if flags.contains(OpenFlags::PIN)
                    && let Err(error) = crate::pin(inner, session, subject).await
                {
                    return WireAnswer::from_store(Err(error));
                }
            }
            answer
        }
        Op::Mkdir { .. } | Op::Symlink { .. } | Op::Link { .. } => {
            let mut answer = attr.await;
            answer.result = answer.result.map(|reply| match reply {
                Reply::Attr { attr } => Reply::Entry { attr },
                other => other,
            });
            answer
        }
        Op::SetAttr { .. } => attr.await,
        Op::Write { .. } => {
            let mut answer = attr.await;
            answer.result = answer.result.map(|reply| match reply {
                Reply::Attr { attr } => Reply::Written { len: payload.len() as u32, attr },
                other => other,
            });
            answer
        }
        _ => done,
    };
    // Leases of the reads above cover what the answer says; a resend's answer grants none.
    answer.grants.clear();
    answer
}
