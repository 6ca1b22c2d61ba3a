//! POSIX permission checks, made by the store inside the operation's own transaction, so the
//! check and the change it allows are one atomic step (no other change comes between them).
//!
//! The caller is the identity the server believes (ARCHITECTURE.md, "Trust"), after root squash.
//! Rules follow Linux's VFS (`fs/namei.c`, `fs/attr.c`, `fs/xattr.c`), with uid 0 standing for
//! the capabilities a superuser has there (`CAP_DAC_OVERRIDE`, `CAP_FOWNER`, `CAP_CHOWN`,
//! `CAP_FSETID`, `CAP_SYS_ADMIN`); no other uid holds any of them. Order matters where Linux's
//! does: search permission on a directory is checked before a name is looked up in it (EACCES
//! before ENOENT), and write permission only once the name's state is known (EEXIST before
//! EACCES for a mkdir of an existing name).

use rustre_proto::{Caller, Errno, FileKind, SetAttrIn, TimeSet};

use crate::error::{Result, StoreError};
use crate::record::InodeRecord;

/// Set-user-id on execution.
pub const S_ISUID: u32 = 0o4000;
/// Set-group-id on execution; on a directory, new entries take its group.
pub const S_ISGID: u32 = 0o2000;
/// Sticky: in a directory, only the owner of an entry (or of the directory) may remove it.
pub const S_ISVTX: u32 = 0o1000;
const S_IXGRP: u32 = 0o010;

/// What a check asks for, as the bits of one class in a mode (`rwx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Want(u32);

impl Want {
    pub const READ: Want = Want(4);
    pub const WRITE: Want = Want(2);
    pub const EXEC: Want = Want(1);
    /// Adding or removing a name in a directory.
    pub const WRITE_EXEC: Want = Want(3);
    pub const READ_WRITE: Want = Want(6);
    pub const NOTHING: Want = Want(0);

    pub fn and(self, other: Want) -> Want {
        Want(self.0 | other.0)
    }
}

/// Does the mode of `record` grant `caller` all of `want`? The class is the owner's if the caller
/// owns the inode, else the group's if it is in the inode's group, else the others' (only one
/// class applies: an owner denied by the owner bits is denied even if others may). The superuser
/// may read and write anything, and execute a file only if some class may (a directory always).
pub fn permits(record: &InodeRecord, caller: &Caller, want: Want) -> bool {
    if caller.is_root() {
        return want.0 & Want::EXEC.0 == 0 || record.kind == FileKind::Directory || record.perm & 0o111 != 0;
    }
    let class = if caller.uid == record.uid {
        record.perm >> 6
    } else if caller.in_group(record.gid) {
        record.perm >> 3
    } else {
        record.perm
    } & 0o7;
    class & want.0 == want.0
}

/// `permits`, as an error: EACCES.
pub fn check(record: &InodeRecord, caller: &Caller, want: Want) -> Result<()> {
    if permits(record, caller, want) { Ok(()) } else { Err(StoreError::Fs(Errno::EACCES)) }
}

/// May `caller` act as the owner of `record` (chmod, set times, sticky exceptions)?
pub fn owns(record: &InodeRecord, caller: &Caller) -> bool {
    caller.is_root() || caller.uid == record.uid
}

/// May `caller` look names up in `directory` (search permission)?
pub fn check_search(directory: &InodeRecord, caller: &Caller) -> Result<()> {
    debug_assert_eq!(directory.kind, FileKind::Directory);
    check(directory, caller, Want::EXEC)
}

/// May `caller` remove (or rename away, or replace) the entry for `victim` in `directory`? Write
/// and search permission on the directory, and in a sticky directory ownership of the entry or
/// of the directory: EPERM otherwise, as Linux answers.
pub fn check_delete(directory: &InodeRecord, victim: &InodeRecord, caller: &Caller) -> Result<()> {
    check(directory, caller, Want::WRITE_EXEC)?;
    if directory.perm & S_ISVTX != 0 && !caller.is_root() && caller.uid != directory.uid && caller.uid != victim.uid {
        return Err(StoreError::Fs(Errno::EPERM));
    }
    Ok(())
}

/// What an open with these flags needs on an existing inode.
pub fn open_wants(reads: bool, writes: bool, truncates: bool) -> Want {
    let mut want = Want::NOTHING;
    if reads {
        want = want.and(Want::READ);
    }
    if writes || truncates {
        want = want.and(Want::WRITE);
    }
    want
}

/// May `caller` make a hard link to `record`? Linux's `protected_hardlinks` (on by default on
/// every distribution): the owner may, and anyone who may read and write a regular file that is
/// neither set-user-id nor set-group-id-and-group-executable (so no one pins a privileged file
/// they cannot change under a name of their own).
pub fn check_link_source(record: &InodeRecord, caller: &Caller) -> Result<()> {
    if owns(record, caller) {
        return Ok(());
    }
    let privileged = record.perm & S_ISUID != 0 || record.perm & (S_ISGID | S_IXGRP) == S_ISGID | S_IXGRP;
    if record.kind == FileKind::Regular && !privileged && permits(record, caller, Want::READ_WRITE) {
        return Ok(());
    }
    Err(StoreError::Fs(Errno::EPERM))
}

/// The owner, group and mode of a new inode made by `caller` in `directory`, asked for with
/// `perm`. In a set-group-id directory the new inode takes the directory's group (and a new
/// directory keeps the bit, so a tree stays in its group); else the caller's. A caller outside
/// the new inode's group cannot make it set-group-id, as `inode_init_owner` rules.
pub fn new_owner(directory: &InodeRecord, caller: &Caller, kind: FileKind, perm: u32) -> (u32, u32, u32) {
    let mut perm = perm & 0o7777;
    let gid = if directory.perm & S_ISGID != 0 {
        if kind == FileKind::Directory {
            perm |= S_ISGID;
        }
        directory.gid
    } else {
        caller.gid
    };
    if kind == FileKind::Regular && perm & S_ISGID != 0 && !caller.is_root() && !caller.in_group(gid) {
        perm &= !S_ISGID;
    }
    (caller.uid, gid, perm)
}

/// The bits a change of a file's contents (a write, a truncate) by `caller` clears: set-user-id,
/// and set-group-id where it means "execute as the group" (with group execute), unless the
/// superuser makes the change (Linux's `file_remove_privs`). So no one who may only write a
/// privileged program can leave their own code in it, still privileged.
pub fn kill_privileges(record: &mut InodeRecord, caller: &Caller) -> bool {
    if caller.is_root() || record.kind != FileKind::Regular {
        return false;
    }
    let before = record.perm;
    record.perm &= !S_ISUID;
    if record.perm & (S_ISGID | S_IXGRP) == S_ISGID | S_IXGRP {
        record.perm &= !S_ISGID;
    }
    record.perm != before
}

/// Checks a `SetAttr` against `record` as it is before the change, as Linux's `setattr_prepare`
/// does, and returns the permission bits to store (or `None` to leave them): a chmod asks for
/// ownership; a chown of the owner, the superuser; a chgrp, ownership and membership of the new
/// group; a size change, write permission unless made through a handle open for writing
/// (ftruncate); setting times, ownership, except "now" which write permission allows too.
/// A chown of a non-directory clears set-user-id and set-group-id-with-group-execute, whoever
/// makes it; a chmod by someone outside the file's (new) group drops set-group-id.
pub fn check_setattr(record: &InodeRecord, set: &SetAttrIn, caller: &Caller, by_handle: bool) -> Result<Option<u32>> {
    let owner = owns(record, caller);
    // A chown to the owner it has already is the owner's (or root's) too: it still clears
    // set-user-id, which no one else may do (Linux's `chown_ok`).
    if let Some(uid) = set.uid
        && !caller.is_root()
        && !(caller.uid == record.uid && uid == record.uid)
    {
        return Err(StoreError::Fs(Errno::EPERM));
    }
    if let Some(gid) = set.gid
        && !caller.is_root()
        && !(caller.uid == record.uid
            && set.uid.is_none_or(|uid| uid == record.uid)
            && (gid == record.gid || caller.in_group(gid)))
    {
        return Err(StoreError::Fs(Errno::EPERM));
    }
    if set.perm.is_some() && !owner {
        return Err(StoreError::Fs(Errno::EPERM));
    }
    if set.size.is_some() && !by_handle {
        check(record, caller, Want::WRITE)?;
    }
    let times = [set.atime, set.mtime];
    if times.iter().any(|time| matches!(time, Some(TimeSet::At(_)))) && !owner {
        return Err(StoreError::Fs(Errno::EPERM));
    }
    if times.iter().any(|time| time.is_some()) && !owner {
        // Both "now": anyone who may write the file may touch it.
        check(record, caller, Want::WRITE)?;
    }
    let mut perm = set.perm.map(|perm| perm & 0o7777);
    if let Some(bits) = perm
        && !caller.is_root()
        && !caller.in_group(set.gid.unwrap_or(record.gid))
    {
        perm = Some(bits & !S_ISGID);
    }
    if (set.uid.is_some() || set.gid.is_some()) && record.kind != FileKind::Directory {
        let mut bits = perm.unwrap_or(record.perm);
        bits &= !S_ISUID;
        if bits & (S_ISGID | S_IXGRP) == S_ISGID | S_IXGRP {
            bits &= !S_ISGID;
        }
        if perm.is_some() || bits != record.perm {
            perm = Some(bits);
        }
    }
    Ok(perm)
}

/// The xattr namespaces, by prefix.
enum Namespace {
    User,
    Trusted,
    Security,
    System,
    Other,
}

fn namespace(name: &[u8]) -> Namespace {
    if name.starts_with(b"user.") {
        Namespace::User
    } else if name.starts_with(b"trusted.") {
        Namespace::Trusted
    } else if name.starts_with(b"security.") {
        Namespace::Security
    } else if name.starts_with(b"system.") {
        Namespace::System
    } else {
        Namespace::Other
    }
}

/// May `caller` read the xattr `name` of `record`? `user.*` asks for read permission (and exists
/// only on regular files and directories: ENODATA elsewhere); `trusted.*` is the superuser's
/// alone (ENODATA to others, as if absent); `security.*` and `system.*` are readable by all.
pub fn check_xattr_read(record: &InodeRecord, name: &[u8], caller: &Caller) -> Result<()> {
    match namespace(name) {
        Namespace::User if record.kind == FileKind::Symlink => Err(StoreError::Fs(Errno::ENODATA)),
        Namespace::User | Namespace::Other => check(record, caller, Want::READ),
        Namespace::Trusted if !caller.is_root() => Err(StoreError::Fs(Errno::ENODATA)),
        Namespace::Trusted | Namespace::Security | Namespace::System => Ok(()),
    }
}

/// May `caller` set or remove the xattr `name` of `record`? `user.*` asks for write permission,
/// only on regular files and directories, and in a sticky directory ownership too;
/// `trusted.*`, `security.*` (file capabilities live there) and `system.*` are the superuser's.
pub fn check_xattr_write(record: &InodeRecord, name: &[u8], caller: &Caller) -> Result<()> {
    match namespace(name) {
        Namespace::User => {
            if record.kind == FileKind::Symlink {
                return Err(StoreError::Fs(Errno::EPERM));
            }
            if record.kind == FileKind::Directory && record.perm & S_ISVTX != 0 && !owns(record, caller) {
                return Err(StoreError::Fs(Errno::EPERM));
            }
            check(record, caller, Want::WRITE)
        }
        Namespace::Other => check(record, caller, Want::WRITE),
        Namespace::Trusted | Namespace::Security | Namespace::System if !caller.is_root() => {
            Err(StoreError::Fs(Errno::EPERM))
        }
        Namespace::Trusted | Namespace::Security | Namespace::System => Ok(()),
    }
}

/// Is the xattr `name` listed to `caller`? `trusted.*` only to the superuser, as Linux lists.
pub fn xattr_listed(name: &[u8], caller: &Caller) -> bool {
    caller.is_root() || !matches!(namespace(name), Namespace::Trusted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustre_proto::Timestamp;

    fn inode(kind: FileKind, perm: u32, uid: u32, gid: u32) -> InodeRecord {
        InodeRecord {
            generation: 1,
            kind,
            perm,
            uid,
            gid,
            nlink: 1,
            size: 0,
            atime: Timestamp::default(),
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            parent: 0,
            next_cookie: 2,
            entries: 0,
            target: Vec::new(),
        }
    }

    const ALICE: u32 = 1000;
    const BOB: u32 = 1001;
    const STAFF: u32 = 50;

    fn alice() -> Caller {
        Caller::new(ALICE, ALICE)
    }

    fn bob_in_staff() -> Caller {
        Caller { uid: BOB, gid: BOB, groups: vec![7, STAFF] }
    }

    #[test]
    fn one_class_applies_and_the_owner_class_comes_first() {
        let file = inode(FileKind::Regular, 0o074, ALICE, STAFF);
        assert!(!permits(&file, &alice(), Want::READ), "the owner's bits deny the owner");
        assert!(permits(&file, &bob_in_staff(), Want::READ_WRITE), "a supplementary group counts");
        assert!(permits(&file, &Caller::new(9, 9), Want::READ));
        assert!(!permits(&file, &Caller::new(9, 9), Want::WRITE));
    }

    #[test]
    fn the_superuser_executes_only_what_someone_may() {
        let file = inode(FileKind::Regular, 0o600, ALICE, ALICE);
        assert!(permits(&file, &Caller::ROOT, Want::READ_WRITE));
        assert!(!permits(&file, &Caller::ROOT, Want::EXEC));
        assert!(permits(&inode(FileKind::Regular, 0o601, ALICE, ALICE), &Caller::ROOT, Want::EXEC));
        assert!(permits(&inode(FileKind::Directory, 0o000, ALICE, ALICE), &Caller::ROOT, Want::EXEC));
    }

    #[test]
    fn a_sticky_directory_keeps_others_entries() {
        let tmp = inode(FileKind::Directory, 0o1777, 0, 0);
        let alices = inode(FileKind::Regular, 0o666, ALICE, ALICE);
        assert_eq!(check_delete(&tmp, &alices, &bob_in_staff()).unwrap_err().errno(), Errno::EPERM);
        check_delete(&tmp, &alices, &alice()).expect("the entry's owner may");
        check_delete(&tmp, &alices, &Caller::ROOT).expect("the superuser may");
        let bobs_tmp = inode(FileKind::Directory, 0o1777, BOB, BOB);
        check_delete(&bobs_tmp, &alices, &bob_in_staff()).expect("the directory's owner may");
        let plain = inode(FileKind::Directory, 0o755, 0, 0);
        assert_eq!(check_delete(&plain, &alices, &alice()).unwrap_err().errno(), Errno::EACCES);
    }

    #[test]
    fn chown_and_chmod_follow_the_ownership_rules() {
        let file = inode(FileKind::Regular, 0o6755, ALICE, ALICE);
        let chown = |uid| SetAttrIn { uid: Some(uid), ..SetAttrIn::default() };
        let chgrp = |gid| SetAttrIn { gid: Some(gid), ..SetAttrIn::default() };
        let chmod = |perm| SetAttrIn { perm: Some(perm), ..SetAttrIn::default() };
        let errno = |result: Result<Option<u32>>| result.unwrap_err().errno();
        assert_eq!(errno(check_setattr(&file, &chown(BOB), &alice(), false)), Errno::EPERM);
        assert_eq!(
            errno(check_setattr(&file, &chown(ALICE), &bob_in_staff(), false)),
            Errno::EPERM,
            "a no-op chown too"
        );
        assert_eq!(check_setattr(&file, &chown(ALICE), &alice(), false).unwrap(), Some(0o0755));
        assert_eq!(check_setattr(&file, &chown(BOB), &Caller::ROOT, false).unwrap(), Some(0o0755));
        assert_eq!(errno(check_setattr(&file, &chgrp(STAFF), &alice(), false)), Errno::EPERM);
        let alice_in_staff = Caller { uid: ALICE, gid: ALICE, groups: vec![STAFF] };
        assert_eq!(check_setattr(&file, &chgrp(STAFF), &alice_in_staff, false).unwrap(), Some(0o0755));
        assert_eq!(errno(check_setattr(&file, &chmod(0o777), &bob_in_staff(), false)), Errno::EPERM);
        let not_in_group = inode(FileKind::Regular, 0o644, ALICE, STAFF);
        assert_eq!(check_setattr(&not_in_group, &chmod(0o2755), &alice(), false).unwrap(), Some(0o755));
        assert_eq!(check_setattr(&not_in_group, &chmod(0o2755), &alice_in_staff, false).unwrap(), Some(0o2755));
    }

    #[test]
    fn sizes_and_times_need_write_permission_or_ownership() {
        let file = inode(FileKind::Regular, 0o664, ALICE, STAFF);
        let truncate = SetAttrIn { size: Some(0), ..SetAttrIn::default() };
        let stranger = Caller::new(9, 9);
        assert_eq!(check_setattr(&file, &truncate, &stranger, false).unwrap_err().errno(), Errno::EACCES);
        check_setattr(&file, &truncate, &stranger, true).expect("through a handle open for writing");
        check_setattr(&file, &truncate, &bob_in_staff(), false).expect("the group may write");
        let now = SetAttrIn { atime: Some(TimeSet::Now), mtime: Some(TimeSet::Now), ..SetAttrIn::default() };
        check_setattr(&file, &now, &bob_in_staff(), false).expect("a writer may touch");
        assert_eq!(check_setattr(&file, &now, &stranger, false).unwrap_err().errno(), Errno::EACCES);
        let at = SetAttrIn { mtime: Some(TimeSet::At(Timestamp::default())), ..SetAttrIn::default() };
        assert_eq!(check_setattr(&file, &at, &bob_in_staff(), false).unwrap_err().errno(), Errno::EPERM);
        check_setattr(&file, &at, &alice(), false).expect("the owner may set any time");
    }

    #[test]
    fn new_inodes_in_a_setgid_directory_take_its_group() {
        let shared = inode(FileKind::Directory, 0o2775, 0, STAFF);
        assert_eq!(new_owner(&shared, &alice(), FileKind::Directory, 0o755), (ALICE, STAFF, 0o2755));
        assert_eq!(new_owner(&shared, &alice(), FileKind::Regular, 0o2755), (ALICE, STAFF, 0o755));
        assert_eq!(new_owner(&shared, &bob_in_staff(), FileKind::Regular, 0o2755), (BOB, STAFF, 0o2755));
        let plain = inode(FileKind::Directory, 0o777, 0, 0);
        assert_eq!(new_owner(&plain, &alice(), FileKind::Regular, 0o644), (ALICE, ALICE, 0o644));
    }

    #[test]
    fn writes_by_others_than_the_superuser_drop_privileges() {
        let mut file = inode(FileKind::Regular, 0o6775, 0, STAFF);
        assert!(!kill_privileges(&mut file, &Caller::ROOT));
        assert!(kill_privileges(&mut file, &bob_in_staff()));
        assert_eq!(file.perm, 0o0775);
        let mut locking = inode(FileKind::Regular, 0o2664, 0, STAFF);
        assert!(!kill_privileges(&mut locking, &bob_in_staff()), "setgid without group execute is mandatory locking");
    }

    #[test]
    fn xattr_namespaces() {
        let file = inode(FileKind::Regular, 0o644, ALICE, ALICE);
        check_xattr_read(&file, b"user.a", &bob_in_staff()).expect("others may read");
        assert_eq!(check_xattr_write(&file, b"user.a", &bob_in_staff()).unwrap_err().errno(), Errno::EACCES);
        check_xattr_write(&file, b"user.a", &alice()).expect("the owner may write");
        assert_eq!(check_xattr_write(&file, b"security.capability", &alice()).unwrap_err().errno(), Errno::EPERM);
        assert_eq!(check_xattr_read(&file, b"trusted.x", &alice()).unwrap_err().errno(), Errno::ENODATA);
        assert!(!xattr_listed(b"trusted.x", &alice()) && xattr_listed(b"trusted.x", &Caller::ROOT));
        let link = inode(FileKind::Symlink, 0o777, ALICE, ALICE);
        assert_eq!(check_xattr_write(&link, b"user.a", &alice()).unwrap_err().errno(), Errno::EPERM);
    }

    #[test]
    fn hard_links_to_others_files_need_read_and_write() {
        let file = inode(FileKind::Regular, 0o644, ALICE, ALICE);
        assert_eq!(check_link_source(&file, &bob_in_staff()).unwrap_err().errno(), Errno::EPERM);
        check_link_source(&file, &alice()).expect("the owner may");
        check_link_source(&inode(FileKind::Regular, 0o666, ALICE, ALICE), &bob_in_staff()).expect("a writer may");
        let setuid = inode(FileKind::Regular, 0o4777, ALICE, ALICE);
        assert_eq!(check_link_source(&setuid, &bob_in_staff()).unwrap_err().errno(), Errno::EPERM);
    }
}
