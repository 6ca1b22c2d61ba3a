//! Permissions through a real mount, for users other than root: each command runs under
//! `setpriv` as that user (with exactly the groups given), with ordinary shell tools. The kernel
//! checks first (`default_permissions`); the server checks again with the identity the mount
//! sends, supplementary groups read from /proc included, so both must agree for a permitted
//! operation to succeed.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{Fixture, errno_of};

const ALICE: u32 = 1000;
const BOB: u32 = 1001;
const STAFF: u32 = 50;

/// Runs `script` with `sh -c` as `uid`/`gid` with exactly `groups`; `paths` are its `$1`, `$2`...
/// Returns whether it succeeded, and its stderr.
fn as_user(uid: u32, gid: u32, groups: &[u32], script: &str, paths: &[&Path]) -> (bool, String) {
    let mut command = Command::new("setpriv");
    command.args(["--reuid", &uid.to_string(), "--regid", &gid.to_string()]);
    if groups.is_empty() {
        command.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        command.args(["--groups", &list.join(",")]);
    }
    command.args(["--", "sh", "-c", script, "sh"]).args(paths);
    let output = command.output().expect("setpriv runs");
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[track_caller]
fn refused(outcome: (bool, String), message: &str) {
    assert!(!outcome.0, "succeeded, but should have failed with {message:?}");
    assert!(outcome.1.contains(message), "expected {message:?}, got: {}", outcome.1);
}

#[track_caller]
fn allowed(outcome: (bool, String)) {
    assert!(outcome.0, "failed: {}", outcome.1);
}

#[test]
fn users_get_what_modes_and_groups_allow_through_the_mount() {
    let fixture = Fixture::new(1);
    let root = fixture.root(0);
    let locked = root.join("locked");
    fs::create_dir(&locked).unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(locked.join("notes"), b"root's").unwrap();
    let shared = root.join("shared");
    fs::create_dir(&shared).unwrap();
    std::os::unix::fs::chown(&shared, None, Some(STAFF)).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o770)).unwrap();

    // A directory it may not write: nothing is made, nothing is changed.
    refused(as_user(ALICE, ALICE, &[], r#"echo x > "$1/new""#, &[&locked]), "Permission denied");
    refused(as_user(ALICE, ALICE, &[], r#"mkdir "$1/d""#, &[&locked]), "Permission denied");
    refused(as_user(ALICE, ALICE, &[], r#"rm -f "$1/notes""#, &[&locked]), "Permission denied");
    refused(as_user(ALICE, ALICE, &[], r#"echo x >> "$1/notes""#, &[&locked]), "Permission denied");
    refused(as_user(ALICE, ALICE, &[], r#"chmod 777 "$1""#, &[&locked]), "Operation not permitted");
    assert!(!locked.join("new").exists() && !locked.join("d").exists());
    assert_eq!(fs::read(locked.join("notes")).unwrap(), b"root's");
    allowed(as_user(ALICE, ALICE, &[], r#"cat "$1/notes" > /dev/null"#, &[&locked]));
    fs::write(locked.join("secret"), b"s").unwrap();
    fs::set_permissions(locked.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    refused(as_user(ALICE, ALICE, &[], r#"cat "$1/secret""#, &[&locked]), "Permission denied");

    // A group directory: a member through a supplementary group may write in it (the server
    // learns the group from /proc), others may not even look in.
    allowed(as_user(ALICE, ALICE, &[7, STAFF], r#"echo ours > "$1/x""#, &[&shared]));
    let made = fs::metadata(shared.join("x")).unwrap();
    assert_eq!((made.uid(), made.gid()), (ALICE, ALICE), "owned by its creator");
    refused(as_user(BOB, BOB, &[], r#"echo x > "$1/y""#, &[&shared]), "Permission denied");
    refused(as_user(BOB, BOB, &[], r#"ls "$1""#, &[&shared]), "Permission denied");
    assert!(!shared.join("y").exists());
}

#[test]
fn the_sticky_bit_protects_others_files_through_the_mount() {
    let fixture = Fixture::new(1);
    let tmp = fixture.root(0).join("tmp");
    fs::create_dir(&tmp).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).unwrap();
    allowed(as_user(ALICE, ALICE, &[], r#"echo a > "$1/alices""#, &[&tmp]));
    allowed(as_user(BOB, BOB, &[], r#"echo b > "$1/bobs""#, &[&tmp]));

    refused(as_user(BOB, BOB, &[], r#"rm -f "$1/alices""#, &[&tmp]), "Operation not permitted");
    refused(as_user(BOB, BOB, &[], r#"mv "$1/alices" "$1/taken""#, &[&tmp]), "Operation not permitted");
    refused(as_user(BOB, BOB, &[], r#"mv -f "$1/bobs" "$1/alices""#, &[&tmp]), "Operation not permitted");
    assert_eq!(fs::read(tmp.join("alices")).unwrap(), b"a\n", "alice's file is untouched");
    allowed(as_user(ALICE, ALICE, &[], r#"rm "$1/alices""#, &[&tmp]));
    allowed(as_user(BOB, BOB, &[], r#"rm "$1/bobs""#, &[&tmp]));
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
}

// The production set-up: `rustre server` squashes root, and the mount runs as root. Users must
// still reach what is theirs, in directories `nobody` may not enter: every request the mount
// makes for a user acts as that user (lookups, listings, reads of read-only opens, xattrs), not
// as the mount. Root on the client gets nobody's rights.
#[test]
fn a_mount_acts_as_its_users_on_a_server_that_squashes_root() {
    let fixture = Fixture::squashed(1, async |client| {
        client.mkdir("/home", 0o755).await.unwrap();
        client.mkdir("/home/alice", 0o700).await.unwrap();
        client.write("/home/alice/diary", b"dear diary").await.unwrap();
        client.set_xattr("/home/alice/diary", b"user.mood", b"good", rustre_proto::XattrMode::Either).await.unwrap();
        client.set_permissions("/home/alice/diary", 0o600).await.unwrap();
        client.set_owner("/home/alice/diary", Some(ALICE), Some(ALICE)).await.unwrap();
        client.set_owner("/home/alice", Some(ALICE), Some(ALICE)).await.unwrap();
    });
    let home = fixture.root(0).join("home/alice");
    let alice = |script: &str| as_user(ALICE, ALICE, &[], script, &[&home]);
    allowed(alice(r#"ls "$1" | grep -qx diary"#));
    allowed(alice(r#"test "$(cat "$1/diary")" = "dear diary""#));
    allowed(alice(r#"echo more >> "$1/diary" && mkdir "$1/d" && mv "$1/d" "$1/e" && rmdir "$1/e""#));
    // Root of the client machine is nobody here: not even its own directory listing of alice's.
    assert_eq!(errno_of(fs::read_dir(&home)), libc::EACCES);
    assert_eq!(errno_of(fs::write(fixture.root(0).join("rootfile"), b"x")), libc::EACCES);
}
