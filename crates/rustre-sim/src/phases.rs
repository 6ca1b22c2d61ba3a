//! Path calls are not atomic, on rustre as on Linux: a call walks to its parent directory first
//! (each lookup at an instant of its own, from the cache or the server), and acts on the last
//! name later; a directory renamed in between takes the call along with it. So each path call of
//! a history is split, before the check, into `Call::Resolve` steps (walk to a directory, or to
//! the object for `link`'s source and for the calls on what a path names: `stat`, `read_dir`,
//! the attribute and xattr calls, `read_link`) and one `Call::Act` (the call itself, on what
//! was resolved), all within the call's interval. The model keeps what a `Resolve` found until
//! its `Act` takes it, so the act can only follow its resolves; an act whose directory is no
//! longer in the tree answers nothing the checker accepts (the real client then met a stale id
//! and retried by name, which resolves and acts in one step: the check finds that order too).
//!
//! A call whose walk is trivial (its parent is the root), whose path ends in `/`, or whose
//! outcome is unknown, is checked whole, as one atomic step.

use crate::history::{Call, Event, Outcome, Value};

/// Resolution slots: far above any workload handle (those are `client << 32 | n`).
const SLOT_BASE: u64 = crate::model::SLOTS_MIN;

/// What a `Resolve` step answers: it always succeeds (a failed walk is kept for the act to
/// answer).
pub(crate) fn resolved() -> Outcome {
    Outcome::Ok(Value::Done)
}

/// Can `path`'s walk be split: no `..` (the model's step-wise walk has no stack) and no
/// trailing `/` or `/.` (those calls have rules of their own, checked whole)?
fn splittable(path: &str) -> bool {
    !path.ends_with('/') && !path.ends_with("/.") && path.split('/').all(|part| part != "..")
}

/// Components the symlinks met on a walk may add, beyond those of the path, each looked up at an
/// instant of its own: enough for a chain of two symlinks (the workload's targets have at most
/// two components; `/e/a -> /e/b -> /d` adds three); a longer walk is finished at once by the act.
const SYMLINK_HOPS: usize = 4;

/// The `Hop` steps of a walk of `path` after its `Resolve` (which takes the first component):
/// one per component left and `SYMLINK_HOPS` more. Hops past the walk's end change nothing.
fn hops(path: &str, whole: bool) -> usize {
    let names = path.split('/').filter(|part| !part.is_empty() && *part != ".").count();
    let walked = if whole { names } else { names.saturating_sub(1) };
    match walked {
        0 => 0,
        _ => walked - 1 + SYMLINK_HOPS,
    }
}

/// Splits every path call of `events` whose walk can interleave with other calls. Each walk is
/// a `Resolve` and `Hop`s, one component each (see `hops`); the act finishes what is left.
pub(crate) fn split(events: &[Event]) -> Vec<Event> {
    let mut out = Vec::with_capacity(events.len() * 3);
    for (index, event) in events.iter().enumerate() {
        if event.outcome == Outcome::Unknown {
            out.push(event.clone());
            continue;
        }
        let slot = |k: u64| SLOT_BASE | ((index as u64) << 2) | k;
        let step = |call: Call| Event { call, outcome: resolved(), ..event.clone() };
        let mut walk = |path: &str, whole: bool, follow: bool, k: u64| {
            out.push(step(Call::Resolve { path: path.to_string(), whole, follow, slot: slot(k) }));
            for _ in 0..hops(path, whole) {
                out.push(step(Call::Hop { slot: slot(k) }));
            }
        };
        let act =
            |slots: [u64; 2]| Event { call: Call::Act { call: Box::new(event.call.clone()), slots }, ..event.clone() };
        match &event.call {
            // An open also follows a final symlink (twice here) in steps of its own, each reading
            // the link, then walking its target's directories one `Hop` at a time; an exclusive
            // create never follows one.
            Call::Open { path, exclusive: false, .. } if splittable(path) => {
                walk(path, false, true, 0);
                for (from, to) in [(0, 1), (1, 2)] {
                    out.push(step(Call::Follow { from: slot(from), to: slot(to) }));
                    for _ in 0..SYMLINK_HOPS {
                        out.push(step(Call::Hop { slot: slot(to) }));
                    }
                }
                out.push(act([slot(2), 0]));
            }
            Call::Open { path, .. }
            | Call::Unlink { path }
            | Call::Mkdir { path }
            | Call::Rmdir { path }
            | Call::Symlink { path, .. }
                if splittable(path) =>
            {
                walk(path, false, true, 0);
                out.push(act([slot(0), 0]));
            }
            // A call on what the path names: the client walks to it (`stat`, or `lstat` for
            // `read_link`, which does not follow a final symlink), then acts on it by inode id.
            Call::Stat { path }
            | Call::ReadDir { path }
            | Call::Chmod { path, .. }
            | Call::Chown { path, .. }
            | Call::Truncate { path, .. }
            | Call::SetTimes { path, .. }
            | Call::SetXattr { path, .. }
            | Call::GetXattr { path, .. }
            | Call::ListXattr { path }
            | Call::RemoveXattr { path, .. }
                if splittable(path) =>
            {
                walk(path, true, true, 0);
                out.push(act([slot(0), 0]));
            }
            Call::Readlink { path } if splittable(path) => {
                walk(path, true, false, 0);
                out.push(act([slot(0), 0]));
            }
            Call::Rename { from, to, .. } if splittable(from) && splittable(to) => {
                walk(from, false, true, 0);
                walk(to, false, true, 1);
                out.push(act([slot(0), slot(1)]));
            }
            Call::Link { from, to } if splittable(from) && splittable(to) => {
                walk(from, true, false, 0);
                walk(to, false, true, 1);
                out.push(act([slot(0), slot(1)]));
            }
            _ => out.push(event.clone()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::check;
    use crate::history::Kind;

    fn event(client: u32, invoked: u64, returned: u64, call: Call, outcome: Outcome) -> Event {
        Event { client, call, outcome, invoked, returned }
    }

    fn entry(kind: Kind, size: u64) -> Outcome {
        Outcome::Ok(Value::plain(kind, size, if kind == Kind::Directory { 2 } else { 1 }))
    }

    // The first history the simulator flagged (seed 37), reduced: client 1's mkdir of /d/e/e
    // walks through the symlink /d/e (-> /d) to /d; client 2 then unlinks /d/e (which /d/e/e also
    // names); client 1's mkdir of "e" in /d then succeeds. Linux does the same. Checked whole,
    // no single instant explains it (EEXIST before the unlink, ENOENT after); split, it is fine.
    #[test]
    fn a_walk_before_a_concurrent_change_and_an_act_after_it_is_accepted() {
        let events = vec![
            event(0, 1, 2, Call::Mkdir { path: "/d".into() }, entry(Kind::Directory, 0)),
            event(0, 3, 4, Call::Symlink { target: "/d".into(), path: "/d/e".into() }, entry(Kind::Symlink, 2)),
            event(1, 5, 10, Call::Mkdir { path: "/d/e/e".into() }, entry(Kind::Directory, 0)),
            event(2, 6, 7, Call::Unlink { path: "/d/e/e".into() }, Outcome::Ok(Value::Done)),
            event(0, 11, 12, Call::ReadDir { path: "/d".into() }, Outcome::Ok(Value::Names(vec!["e".into()]))),
        ];
        assert!(check(&events).is_err(), "whole calls cannot explain it");
        check(&split(&events)).expect("split calls explain it");
    }

    // A walk may stop between two steps while other calls change the tree: client 1's stat
    // finds /a, which client 0 then renames to /z and fills; the stat's next lookups find them
    // there. No single instant explains it; the check may take a step that changes nothing at
    // once (`settled_first`), but not one of a walk under way.
    #[test]
    fn a_walk_may_wait_between_its_steps() {
        let create = Call::Open {
            path: "/z/b/c".into(),
            write: true,
            create: true,
            exclusive: false,
            truncate: false,
            handle: 1,
        };
        let events = vec![
            event(0, 1, 2, Call::Mkdir { path: "/a".into() }, entry(Kind::Directory, 0)),
            event(1, 3, 20, Call::Stat { path: "/a/b/c".into() }, entry(Kind::File, 0)),
            event(
                0,
                4,
                5,
                Call::Rename { from: "/a".into(), to: "/z".into(), noreplace: false },
                Outcome::Ok(Value::Done),
            ),
            event(0, 6, 7, Call::Mkdir { path: "/z/b".into() }, entry(Kind::Directory, 0)),
            event(0, 8, 9, create, Outcome::Ok(Value::Opened { created: true, size: 0 })),
            event(0, 10, 11, Call::Stat { path: "/a".into() }, Outcome::Err(rustre_proto::Errno::ENOENT.0)),
        ];
        assert!(check(&events).is_err(), "whole calls cannot explain it");
        check(&split(&events)).expect("split calls explain it");
    }

    // An act on what the walk found acts on it even once it is gone from the tree, if a handle
    // keeps it: client 1's chmod finds /d/f, client 2 unlinks it (client 0 holds it open, a
    // handle the checker forgets at once, as no later call uses it), the chmod changes the
    // orphan. Likewise a stat of a removed directory kept open: it has no links.
    #[test]
    fn an_act_on_an_orphan_sees_the_orphan() {
        let open = |path: &str, write: bool, handle: u64| Call::Open {
            path: path.into(),
            write,
            create: write,
            exclusive: false,
            truncate: false,
            handle,
        };
        let orphan = |kind: Kind, mode: u32| {
            let Outcome::Ok(Value::Attr { size, .. }) = entry(kind, 0) else { unreachable!() };
            Outcome::Ok(Value::Attr {
                kind,
                size,
                nlink: 0,
                mode,
                uid: 0,
                gid: 0,
                atime: crate::history::Time::Clock,
                mtime: crate::history::Time::Clock,
                ctime: crate::history::Time::Clock,
            })
        };
        let events = vec![
            event(0, 1, 2, Call::Mkdir { path: "/d".into() }, entry(Kind::Directory, 0)),
            event(0, 3, 4, open("/d/f", true, 9), Outcome::Ok(Value::Opened { created: true, size: 0 })),
            event(1, 5, 10, Call::Chmod { path: "/d/f".into(), mode: 0o600 }, orphan(Kind::File, 0o100600)),
            event(2, 6, 7, Call::Unlink { path: "/d/f".into() }, Outcome::Ok(Value::Done)),
            event(0, 11, 12, Call::Mkdir { path: "/d/e".into() }, entry(Kind::Directory, 0)),
            event(0, 13, 14, open("/d/e", false, 10), Outcome::Ok(Value::Opened { created: false, size: 0 })),
            event(1, 15, 20, Call::Stat { path: "/d/e".into() }, orphan(Kind::Directory, 0o040755)),
            event(2, 16, 17, Call::Rmdir { path: "/d/e".into() }, Outcome::Ok(Value::Done)),
        ];
        assert!(check(&events).is_err(), "whole calls cannot explain it");
        check(&split(&events)).expect("split calls explain it");
    }

    // A removal whose answer was lost can explain a stat that finds a directory with no links:
    // client 1's stat walks to /d/x, client 2's rmdir (its session broke) removes it, client 0's
    // handle keeps it, the stat's act sees it orphaned. The rmdir must conflict with the act
    // (it changes the nlink the act reads), or the check never tries it between the two.
    #[test]
    fn an_unknown_rmdir_can_orphan_a_directory_a_walk_found() {
        let mkdir = |path: &str| Call::Mkdir { path: path.into() };
        let open = Call::Open {
            path: "/d/x".into(),
            write: false,
            create: false,
            exclusive: false,
            truncate: false,
            handle: 9,
        };
        let Outcome::Ok(Value::Attr { kind, size, mode, uid, gid, atime, mtime, ctime, .. }) =
            entry(Kind::Directory, 0)
        else {
            unreachable!()
        };
        let orphan = Value::Attr { kind, size, nlink: 0, mode, uid, gid, atime, mtime, ctime };
        let events = vec![
            event(0, 1, 2, mkdir("/d"), entry(Kind::Directory, 0)),
            event(0, 3, 4, mkdir("/d/x"), entry(Kind::Directory, 0)),
            event(0, 5, 6, open, Outcome::Ok(Value::Opened { created: false, size: 0 })),
            event(1, 7, 12, Call::Stat { path: "/d/x".into() }, Outcome::Ok(orphan)),
            Event {
                client: 2,
                call: Call::Rmdir { path: "/d/x".into() },
                outcome: Outcome::Unknown,
                invoked: 8,
                returned: u64::MAX,
            },
        ];
        check(&split(&events)).expect("the rmdir between the walk and the act explains it");
    }

    // An open reads a final symlink at one instant and looks up its target's directories
    // later: client 2's open of /b reads the link /b -> /e/b, client 1 then renames the file /e
    // over /b, and the lookup of /e finds nothing. Before the rename the open meets a file as a
    // directory (ENOTDIR), after it opens the file; only the steps explain ENOENT (seed 5640).
    #[test]
    fn an_open_follows_a_symlink_in_steps() {
        let open = |path: &str, create: bool, handle: u64| Call::Open {
            path: path.into(),
            write: true,
            create,
            exclusive: false,
            truncate: false,
            handle,
        };
        let events = vec![
            event(0, 1, 2, open("/e", true, 7), Outcome::Ok(Value::Opened { created: true, size: 0 })),
            event(0, 3, 4, Call::Symlink { target: "/e/b".into(), path: "/b".into() }, entry(Kind::Symlink, 4)),
            event(2, 5, 10, open("/b", false, 8), Outcome::Err(rustre_proto::Errno::ENOENT.0)),
            event(
                1,
                6,
                7,
                Call::Rename { from: "/e".into(), to: "/b".into(), noreplace: false },
                Outcome::Ok(Value::Done),
            ),
        ];
        assert!(check(&events).is_err(), "whole calls cannot explain it");
        check(&split(&events)).expect("split calls explain it");
    }

    // A read of a symlink does not follow it, split or not; the act reads the link itself.
    #[test]
    fn readlink_walks_to_the_link() {
        let events = vec![
            event(0, 1, 2, Call::Mkdir { path: "/d".into() }, entry(Kind::Directory, 0)),
            event(0, 3, 4, Call::Symlink { target: "/d".into(), path: "/d/l".into() }, entry(Kind::Symlink, 2)),
            event(1, 5, 6, Call::Readlink { path: "/d/l".into() }, Outcome::Ok(Value::Data(b"/d".to_vec()))),
            event(1, 7, 8, Call::Readlink { path: "/d/l/l".into() }, Outcome::Ok(Value::Data(b"/d".to_vec()))),
            event(1, 9, 10, Call::Readlink { path: "/d".into() }, Outcome::Err(rustre_proto::Errno::EINVAL.0)),
        ];
        check(&split(&events)).expect("readlink answers the target");
    }

    // Splitting does not excuse a stale answer: a stat that starts after an unlink returned
    // still may not see the file.
    #[test]
    fn a_stale_answer_stays_a_violation_when_split() {
        let events = vec![
            event(0, 1, 2, Call::Mkdir { path: "/d".into() }, entry(Kind::Directory, 0)),
            event(0, 3, 4, Call::Symlink { target: "x".into(), path: "/d/f".into() }, entry(Kind::Symlink, 1)),
            event(0, 5, 6, Call::Unlink { path: "/d/f".into() }, Outcome::Ok(Value::Done)),
            event(
                1,
                7,
                8,
                Call::Rename { from: "/d/f".into(), to: "/d/g".into(), noreplace: false },
                Outcome::Ok(Value::Done),
            ),
        ];
        assert!(check(&split(&events)).is_err());
    }
}
