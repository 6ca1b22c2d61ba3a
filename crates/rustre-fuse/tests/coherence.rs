//! Two mounts of one server (two client sessions, as two machines): a change returned on one is
//! seen by the very next call on the other, and no path call sees ESTALE, because what the kernel
//! references is pinned on the server (semantics.md promises 1, 2 and 4).

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{Fixture, drop_kernel_caches, errno_of, eventually};

/// Reopens what an `O_PATH` descriptor refers to, through /proc: the kernel opens the inode by
/// its id (`FUSE_OPEN`/`FUSE_OPENDIR`) without walking any name, as it does after a walk that
/// found a cached entry.
fn reopen(fd: &fs::File, options: &fs::OpenOptions) -> std::io::Result<fs::File> {
    options.open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn open_path(path: &Path) -> fs::File {
    fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH).open(path).expect("O_PATH open")
}

#[test]
fn a_change_on_one_mount_is_seen_by_the_next_call_on_the_other() {
    let fixture = Fixture::new(2);
    let (a, b) = (fixture.root(0), fixture.root(1));
    for round in 0..40 {
        let name = format!("f{round}");
        // Negative name: absent on B (and so cached absent), then created on A.
        assert_eq!(errno_of(fs::metadata(b.join(&name))), libc::ENOENT);
        fs::write(a.join(&name), b"one").unwrap();
        assert_eq!(fs::read(b.join(&name)).unwrap(), b"one", "round {round}: B sees A's create at once");
        // Attributes.
        fs::set_permissions(a.join(&name), fs::Permissions::from_mode(0o604)).unwrap();
        assert_eq!(fs::metadata(b.join(&name)).unwrap().mode() & 0o777, 0o604, "round {round}: mode");
        // Contents after close, even with B's pages of the old contents cached: same size,
        // other bytes.
        let mut seen = String::new();
        fs::File::open(b.join(&name)).unwrap().read_to_string(&mut seen).unwrap();
        assert_eq!(seen, "one");
        fs::write(a.join(&name), b"two").unwrap();
        assert_eq!(fs::read(b.join(&name)).unwrap(), b"two", "round {round}: contents after close");
        // Rename and unlink.
        let renamed = format!("g{round}");
        fs::rename(a.join(&name), a.join(&renamed)).unwrap();
        assert_eq!(errno_of(fs::metadata(b.join(&name))), libc::ENOENT, "round {round}: old name gone");
        assert_eq!(fs::read(b.join(&renamed)).unwrap(), b"two");
        fs::remove_file(b.join(&renamed)).unwrap();
        assert_eq!(errno_of(fs::metadata(a.join(&renamed))), libc::ENOENT, "round {round}: unlink seen");
    }
    // Directories and listings.
    fs::create_dir(a.join("d")).unwrap();
    fs::write(b.join("d/x"), b"").unwrap();
    let listed: Vec<_> = fs::read_dir(a.join("d")).unwrap().map(|entry| entry.unwrap().file_name()).collect();
    assert_eq!(listed, vec!["x"]);
    fs::remove_file(a.join("d/x")).unwrap();
    assert_eq!(fs::read_dir(b.join("d")).unwrap().count(), 0);
    fs::remove_dir(b.join("d")).unwrap();
    assert_eq!(errno_of(fs::read_dir(a.join("d"))), libc::ENOENT);
}

#[test]
fn an_open_descriptor_reads_what_another_mount_wrote_since() {
    // Beyond close-to-open: A's kernel keeps the file's pages, but every read first checks the
    // attributes (exact, from the library's leased cache, no round trip); B's write revokes that
    // lease and changes the mtime, so A's next read drops the stale pages and reads B's bytes.
    use std::os::unix::fs::FileExt;
    let fixture = Fixture::new(2);
    let (a, b) = (fixture.root(0), fixture.root(1));
    fs::write(a.join("f"), vec![b'a'; 8192]).unwrap();
    let reader = fs::File::open(a.join("f")).unwrap();
    let writer = fs::OpenOptions::new().write(true).open(b.join("f")).unwrap();
    let mut buffer = vec![0; 8192];
    for round in 0..20u8 {
        reader.read_exact_at(&mut buffer, 0).unwrap();
        let byte = b'b' + round % 20;
        writer.write_all_at(&vec![byte; 8192], 0).unwrap();
        reader.read_exact_at(&mut buffer, 0).unwrap();
        assert!(buffer.iter().all(|seen| *seen == byte), "round {round}: A read stale pages");
    }
}

#[test]
fn the_seed_race_and_rename_over_through_two_mounts() {
    // Races 1 and 2: A has the name cached (its kernel walked it), B removes or replaces it; A's
    // open with O_CREAT gets a valid descriptor on the file the name has now, never ESTALE or
    // ENOENT.
    let fixture = Fixture::new(2);
    let (a, b) = (fixture.root(0), fixture.root(1));
    let mut create = fs::OpenOptions::new();
    create.read(true).write(true).create(true);
    for round in 0..50 {
        fs::write(a.join("f"), b"old").unwrap();
        fs::metadata(a.join("f")).unwrap();
        fs::remove_file(b.join("f")).unwrap();
        let mut file = create.open(a.join("f")).expect("open(O_CREAT) after a remote unlink");
        let mut seen = Vec::new();
        file.read_to_end(&mut seen).unwrap();
        assert!(seen.is_empty(), "round {round}: a new, empty file");

        fs::metadata(a.join("f")).unwrap();
        fs::write(b.join("tmp"), format!("new {round}")).unwrap();
        fs::rename(b.join("tmp"), b.join("f")).unwrap();
        let mut file = create.open(a.join("f")).expect("open(O_CREAT) after a remote rename over");
        let mut seen = String::new();
        file.read_to_string(&mut seen).unwrap();
        assert_eq!(seen, format!("new {round}"), "round {round}: the file renamed over the name");
    }
}

#[test]
fn an_unlinked_file_stays_usable_through_descriptors_on_another_mount() {
    // Promise 4: B removes a file A has open; A's descriptor keeps reading and writing it (an
    // orphan on the server), and the orphan goes with A's last close and forget.
    let fixture = Fixture::new(2);
    let (a, b) = (fixture.root(0), fixture.root(1));
    fs::write(a.join("f"), b"kept").unwrap();
    let mut file = fs::OpenOptions::new().read(true).write(true).open(a.join("f")).unwrap();
    fs::remove_file(b.join("f")).unwrap();
    assert_eq!(errno_of(fs::metadata(a.join("f"))), libc::ENOENT);
    file.seek(SeekFrom::End(0)).unwrap();
    file.write_all(b" and grown").unwrap();
    let mut seen = String::new();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_to_string(&mut seen).unwrap();
    assert_eq!(seen, "kept and grown");
    assert_eq!(file.metadata().unwrap().nlink(), 0);
    assert_eq!(fixture.server().orphans().unwrap().len(), 1);
    drop(file);
    eventually("the orphan is destroyed after the last close and forget", || {
        drop_kernel_caches();
        fixture.server().orphans().unwrap().is_empty()
    });
}

/// A looks a file and a directory up (its kernel keeps references), B removes both, and A opens
/// them by id (as the kernel does after a walk that found them cached). With `pin_lookups`, they
/// are orphans kept for A and open fine; without (the control), the open meets ESTALE.
fn open_by_id_after_remote_removal(pin_lookups: bool) -> (Result<String, i32>, Result<usize, i32>) {
    // The fixture owns the mountpoint, so it unmounts before the directory goes.
    let mut fixture = Fixture::new(0);
    let a = fixture.mount_configured(|_| {}, |mount| mount.pin_lookups = pin_lookups);
    let b = fixture.mount();
    fs::write(b.join("f"), b"before").unwrap();
    fs::create_dir(b.join("d")).unwrap();
    let file = open_path(&a.join("f"));
    let dir = open_path(&a.join("d"));
    fs::remove_file(b.join("f")).unwrap();
    fs::remove_dir(b.join("d")).unwrap();
    let read = reopen(&file, fs::OpenOptions::new().read(true))
        .and_then(|mut file| {
            let mut seen = String::new();
            file.read_to_string(&mut seen).map(|_| seen)
        })
        .map_err(|error| error.raw_os_error().unwrap_or(0));
    let listed = reopen(&dir, fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY))
        .map(|_| 0)
        .map_err(|error| error.raw_os_error().unwrap_or(0));
    (read, listed)
}

#[test]
fn what_the_kernel_looked_up_opens_by_id_after_another_client_removed_it() {
    let (read, listed) = open_by_id_after_remote_removal(true);
    assert_eq!(read, Ok("before".to_string()), "the removed file opens and reads by id");
    assert_eq!(listed, Ok(0), "the removed directory opens by id");
}

#[test]
fn control_without_pins_the_same_open_meets_estale() {
    // Proves the test above would see the failure: the kernel does not retry a reopen by id.
    let (read, listed) = open_by_id_after_remote_removal(false);
    assert_eq!(read, Err(libc::ESTALE));
    assert_eq!(listed, Err(libc::ESTALE));
}

#[test]
fn kernel_lookups_are_pinned_once_and_forget_gives_the_pins_back() {
    let fixture = Fixture::new(2);
    let (a, b) = (fixture.root(0), fixture.root(1));
    fs::write(b.join("f"), b"x").unwrap();
    assert_eq!(fixture.mounts[0].stats().pins, 0, "A's kernel has not looked anything up yet");
    // An O_PATH descriptor keeps A's dentry (and so the kernel's reference) while the test runs:
    // other tests drop the kernel's caches at any time.
    let held = open_path(&a.join("f"));
    for _ in 0..100 {
        fs::metadata(a.join("f")).unwrap();
    }
    assert_eq!(fixture.mounts[0].stats().pins, 1, "a hundred lookups of one inode: one pin, taken once");
    // B removes it: A's kernel still references it, so it is an orphan pinned by A.
    let ino = held.metadata().unwrap().ino();
    fs::remove_file(b.join("f")).unwrap();
    assert_eq!(fixture.server().orphans().unwrap(), vec![ino]);
    // The orphan listing (`rustre admin orphans`) names that pin as what holds it: one session,
    // connected, one pin, no handle. (B's kernel may hold the inode a moment longer, with the pin
    // its create took, until it drops the unlinked inode.)
    let admin = fixture.client();
    eventually("the listing shows A's pin as the one holder", || {
        drop_kernel_caches();
        let orphans = fixture.runtime.block_on(admin.orphans()).unwrap();
        let holders = orphans[0].holders.iter().map(|holder| (holder.connected, holder.handles, holder.pins));
        orphans[0].attr.ino == ino && holders.eq([(true, 0, 1)])
    });
    // The kernel forgets it: the pin goes back exactly once, and the orphan with it.
    drop(held);
    eventually("the kernel's forget unpins the orphan", || {
        drop_kernel_caches();
        fixture.server().orphans().unwrap().is_empty()
    });
    eventually("no pin left", || fixture.mounts[0].stats().pins == 0);
}

/// The kernel keeps the entries this mount holds leases on (a walk over them asks the mount
/// nothing), and forgets them the moment another mount changes them: the revocation bumps the
/// dentry epoch before it is acknowledged. Without the bump, B's kernel would keep `f` naming the
/// renamed inode for ten minutes, and the stat of `f` would succeed.
#[test]
fn entries_cached_by_the_kernel_are_forgotten_when_another_mount_changes_them() {
    let fixture = Fixture::new(2);
    let (a, b) = (fixture.root(0), fixture.root(1));
    let stats = |index: usize| fixture.mounts[index].stats();
    assert!(stats(1).kernel_entries, "this kernel (6.16 or later) caches leased entries");
    for round in 0..20 {
        let (name, renamed) = (format!("f{round}"), format!("g{round}"));
        fs::create_dir_all(a.join("d")).unwrap();
        fs::write(a.join("d").join(&name), b"x").unwrap();
        for _ in 0..3 {
            fs::metadata(b.join("d").join(&name)).unwrap();
        }
        let bumps = stats(1).epoch_bumps;
        fs::rename(a.join("d").join(&name), a.join("d").join(&renamed)).unwrap();
        assert!(stats(1).epoch_bumps > bumps, "round {round}: B's kernel was told");
        assert_eq!(errno_of(fs::metadata(b.join("d").join(&name))), libc::ENOENT, "round {round}: stale entry");
        fs::metadata(b.join("d").join(&renamed)).unwrap();
        // A directory B walked through, renamed on A: B's walk through the old name fails.
        fs::rename(a.join("d"), a.join(format!("d{round}"))).unwrap();
        assert_eq!(errno_of(fs::metadata(b.join("d").join(&renamed))), libc::ENOENT, "round {round}: stale dir");
        fs::rename(a.join(format!("d{round}")), a.join("d")).unwrap();
        fs::remove_file(b.join("d").join(&renamed)).unwrap();
    }
}

/// The control of the two tests around it: a mount whose notifications never reach its kernel
/// (a planted bug) keeps answering a renamed name and an old mode from the kernel's copies.
#[test]
fn control_without_kernel_notifications_entries_and_attributes_stay_stale() {
    let mut fixture = Fixture::new(1);
    let b = fixture.mount_configured(|_| {}, |mount| mount.fault_skip_kernel_notifications = true);
    let a = fixture.root(0).to_path_buf();
    fs::create_dir(a.join("d")).unwrap();
    fs::write(a.join("d/f"), b"x").unwrap();
    fs::write(a.join("g"), b"x").unwrap();
    fs::set_permissions(a.join("g"), fs::Permissions::from_mode(0o644)).unwrap();
    let _held = open_path(&b.join("g"));
    for _ in 0..3 {
        fs::metadata(b.join("d/f")).unwrap();
        fs::metadata(b.join("g")).unwrap();
    }
    fs::rename(a.join("d/f"), a.join("d/renamed")).unwrap();
    fs::set_permissions(a.join("g"), fs::Permissions::from_mode(0o600)).unwrap();
    assert!(fs::metadata(b.join("d/f")).is_ok(), "the planted bug went unseen: the renamed name was looked up");
    assert_eq!(fs::metadata(b.join("g")).unwrap().mode() & 0o777, 0o644, "the planted bug went unseen: new mode");
}

/// The kernel keeps the attributes this mount holds leases on (a stat asks the mount nothing),
/// and drops them the moment another mount changes them: the revocation drops the kernel's copy
/// before it is acknowledged. Without the drop, B's kernel would show the old mode, size and
/// times for as long as B's lease had left (seconds), and the asserts after each change fail.
#[test]
fn attributes_cached_by_the_kernel_are_dropped_when_another_mount_changes_them() {
    use std::os::unix::fs::FileExt;
    let fixture = Fixture::new(2);
    let (a, b) = (fixture.root(0), fixture.root(1));
    assert!(fixture.mounts[1].stats().kernel_attributes, "the kernel caches leased attributes");
    fs::write(a.join("f"), b"x").unwrap();
    // Keeps B's dentry and inode in the kernel whatever other tests drop meanwhile.
    let _held = open_path(&b.join("f"));
    let asked = || {
        let stats = fixture.mounts[1].client().stats();
        stats.cache_hits + stats.cache_misses
    };
    fs::metadata(b.join("f")).unwrap();
    let before = asked();
    for _ in 0..100 {
        fs::metadata(b.join("f")).unwrap();
    }
    assert!(asked() - before < 5, "100 stats asked the mount {} times", asked() - before);
    let drops = fixture.mounts[1].stats().attribute_drops;
    for round in 0..20_u32 {
        let mode = 0o600 | (round % 8) << 3;
        fs::set_permissions(a.join("f"), fs::Permissions::from_mode(mode)).unwrap();
        assert_eq!(fs::metadata(b.join("f")).unwrap().mode() & 0o777, mode, "round {round}: mode");
        let size = 100 + u64::from(round);
        fs::OpenOptions::new().write(true).open(a.join("f")).unwrap().set_len(size).unwrap();
        assert_eq!(fs::metadata(b.join("f")).unwrap().len(), size, "round {round}: truncate");
        let writer = fs::OpenOptions::new().write(true).open(a.join("f")).unwrap();
        writer.write_all_at(b"grown", size).unwrap();
        drop(writer);
        assert_eq!(fs::metadata(b.join("f")).unwrap().len(), size + 5, "round {round}: write and close");
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + u64::from(round));
        fs::File::options().write(true).open(a.join("f")).unwrap().set_modified(when).unwrap();
        assert_eq!(fs::metadata(b.join("f")).unwrap().modified().unwrap(), when, "round {round}: mtime");
    }
    assert!(fixture.mounts[1].stats().attribute_drops > drops, "B's kernel was told");
}

/// Race 13 of docs/semantics.md: the client's cache is full, so it gives leases back (least
/// recently used first) while the kernel still caches what they covered. Another mount's chmod
/// then revokes nobody: the kernel's copies must have gone before the leases did. Returns how
/// many of 20 stats on A showed the mode from before B's chmod.
fn stale_stats_after_the_cache_gives_leases_back(release_through_hook: bool) -> usize {
    // A long lease timeout: the kernel keeps what it cached for as long as the client trusts
    // it (half of that), so a slow machine cannot let the control's copies expire by themselves.
    let mut fixture = Fixture::with_server(0, |config| config.lease_timeout = std::time::Duration::from_secs(60));
    let a = fixture.mount_with(|config| {
        config.cache_entries_max = 64;
        config.release_through_hook = release_through_hook;
    });
    let b = fixture.mount();
    assert!(fixture.mounts[0].stats().kernel_attributes, "the kernel caches leased attributes");
    fs::create_dir(b.join("d")).unwrap();
    let files: Vec<PathBuf> = (0..400).map(|index| PathBuf::from(format!("d/f{index}"))).collect();
    for file in &files {
        fs::write(b.join(file), b"x").unwrap();
    }
    // The first 20 files are held open on A, so their inodes (and attributes) stay in A's kernel.
    let first = &files[..20];
    let _held: Vec<fs::File> = first.iter().map(|file| open_path(&a.join(file))).collect();
    for file in &files {
        fs::metadata(a.join(file)).unwrap();
    }
    // A's cache holds at most 64 leases: those of the first files went back to the server.
    let client = fixture.mounts[0].client().clone();
    eventually("A gives leases back", || client.stats().leases_released >= 100);
    let mut stale = 0;
    for (round, file) in first.iter().enumerate() {
        let mode = 0o600 | ((round as u32 % 7) + 1) << 3;
        fs::set_permissions(b.join(file), fs::Permissions::from_mode(mode)).unwrap();
        if fs::metadata(a.join(file)).unwrap().mode() & 0o777 != mode {
            stale += 1;
        }
    }
    stale
}

#[test]
fn leases_the_cache_gives_back_take_the_kernels_copies_with_them() {
    assert_eq!(stale_stats_after_the_cache_gives_leases_back(true), 0, "stats on A after B's chmod were stale");
}

/// The control: a client that gives leases back without telling the kernel leaves it stale.
#[test]
fn control_leases_given_back_behind_the_kernels_back_leave_stale_stats() {
    let stale = stale_stats_after_the_cache_gives_leases_back(false);
    assert!(stale > 0, "the control saw no stale stat: the test cannot tell the fix from its absence");
}

/// A revocation hook that cannot drop the kernel's copy fails closed: the kernel refuses every
/// notification of A's mount (an injected fault), so A's kernel keeps the attributes it cached
/// for their time to live; A then acknowledges B's chmod only once that has run out (the trust
/// window), so no stat on A after B's chmod returns shows the old mode. Returns whether A's stat
/// right after B's chmod was stale, and how many copies A's client reported kept.
fn stat_after_a_refused_drop(wait_out_kept_copies: bool) -> (bool, u64) {
    // The kernel keeps what A cached for up to half the lease timeout: long enough that the
    // control's stale copy cannot expire by itself on a slow machine before A's stat.
    let lease_timeout = std::time::Duration::from_secs(12);
    let mut fixture = Fixture::with_server(0, |config| config.lease_timeout = lease_timeout);
    let a = fixture.mount_configured(
        |config| config.wait_out_kept_copies = wait_out_kept_copies,
        |mount| mount.refuse_kernel_notifications = true,
    );
    let b = fixture.mount();
    fs::write(b.join("f"), b"x").unwrap();
    fs::set_permissions(b.join("f"), fs::Permissions::from_mode(0o644)).unwrap();
    let _held = open_path(&a.join("f"));
    assert_eq!(fs::metadata(a.join("f")).unwrap().mode() & 0o777, 0o644);
    let asked = fixture.mounts[0].client().stats().cache_misses + fixture.mounts[0].client().stats().cache_hits;
    assert_eq!(fs::metadata(a.join("f")).unwrap().mode() & 0o777, 0o644);
    let asked_again = fixture.mounts[0].client().stats().cache_misses + fixture.mounts[0].client().stats().cache_hits;
    assert_eq!(asked, asked_again, "A's kernel answered the second stat from its copy");
    fs::set_permissions(b.join("f"), fs::Permissions::from_mode(0o600)).unwrap();
    let stale = fs::metadata(a.join("f")).unwrap().mode() & 0o777 != 0o600;
    assert!(fixture.mounts[0].stats().notification_failures > 0, "the fault was injected");
    (stale, fixture.mounts[0].client().stats().hook_copies_kept)
}

#[test]
fn a_copy_the_kernel_refuses_to_drop_delays_the_acknowledgement() {
    let (stale, kept) = stat_after_a_refused_drop(true);
    assert!(!stale, "A's stat after B's chmod showed the old mode");
    assert!(kept > 0, "A's client counted the copy it waited out");
}

/// The control: acknowledging at once despite the refusal leaves A's kernel stale.
#[test]
fn control_acknowledging_despite_a_refused_drop_leaves_a_stale_stat() {
    let (stale, _) = stat_after_a_refused_drop(false);
    assert!(stale, "the control saw no stale stat: the test cannot tell the fix from its absence");
}

/// The kernel counts the times to live of what it caches in jiffies, which stop while the
/// machine is suspended, as the client's trust does not (`clock.rs`). A suspension (declared on
/// the client's suspend clock) makes the mount drop every kernel copy, so the next stat asks the
/// mount again instead of being answered by the kernel for what remained of its time to live.
#[test]
fn a_suspension_of_the_machine_drops_the_kernels_copies() {
    let suspend = std::sync::Arc::new(rustre_client::ManualSuspendClock::default());
    let lease_timeout = std::time::Duration::from_secs(60);
    let mut fixture = Fixture::with_server(0, |config| config.lease_timeout = lease_timeout);
    let clock = suspend.clone();
    let a = fixture.mount_with(|config| config.suspend_clock = clock);
    fs::write(a.join("f"), b"x").unwrap();
    let _held = open_path(&a.join("f"));
    let asked = || {
        let stats = fixture.mounts[0].client().stats();
        stats.cache_hits + stats.cache_misses
    };
    fs::metadata(a.join("f")).unwrap();
    let before = asked();
    fs::metadata(a.join("f")).unwrap();
    assert_eq!(asked(), before, "the kernel answered the stat from its copy");
    let drops = fixture.mounts[0].stats().attribute_drops;
    suspend.suspend(lease_timeout);
    eventually("the mount notices the suspension", || fixture.mounts[0].stats().attribute_drops > drops);
    fs::metadata(a.join("f")).unwrap();
    assert!(asked() > before, "the stat after the suspension was answered by the kernel's old copy");
}

/// A mount's own changes do not make its kernel forget its other entries: the kernel mirrors
/// what its own requests did, so the revocations they cause (`Cause::Own`) bump no epoch. A
/// rename is the exception (the kernel moves the dentry with the old name's time to live), and
/// the rounds of the test above show the renamed entry is then looked up again.
#[test]
fn own_changes_keep_the_kernels_entries() {
    let fixture = Fixture::new(1);
    let a = fixture.root(0);
    fs::create_dir(a.join("d")).unwrap();
    for index in 0..20 {
        fs::write(a.join("d").join(format!("f{index}")), b"x").unwrap();
        fs::metadata(a.join("d").join(format!("f{index}"))).unwrap();
    }
    for index in 0..10 {
        fs::remove_file(a.join("d").join(format!("f{index}"))).unwrap();
        fs::create_dir(a.join("d").join(format!("s{index}"))).unwrap();
        assert_eq!(errno_of(fs::metadata(a.join("d").join(format!("f{index}")))), libc::ENOENT);
    }
    assert_eq!(fixture.mounts[0].stats().epoch_bumps, 0, "own creates, unlinks and mkdirs bump nothing");
    fs::rename(a.join("d").join("f10"), a.join("d").join("g")).unwrap();
    assert!(fixture.mounts[0].stats().epoch_bumps > 0, "an own rename does");
    assert_eq!(errno_of(fs::metadata(a.join("d").join("f10"))), libc::ENOENT);
    assert_eq!(fs::read(a.join("d").join("g")).unwrap(), b"x");
}

/// A read-only open of a file this mount has looked up (and so pins) sends nothing to the
/// server: no handle, reads by the pin (`Op::ReadPinned`). The pin keeps the file readable after
/// another mount removes it, for as long as it is open; then the orphan goes.
#[test]
fn read_only_opens_of_pinned_files_need_no_server_handle() {
    let fixture = Fixture::new(2);
    let (a, b) = (fixture.root(0), fixture.root(1));
    fs::write(b.join("f"), b"pinned contents").unwrap();
    fs::metadata(a.join("f")).unwrap();
    let opens = || {
        let stats = fixture.mounts[0].client().stats();
        stats.requests_by_kind.iter().filter(|(kind, _)| *kind == "open_ino").map(|(_, count)| count).sum::<u64>()
    };
    let before = opens();
    for _ in 0..20 {
        assert_eq!(fs::read(a.join("f")).unwrap(), b"pinned contents");
    }
    assert_eq!(opens(), before, "read-only opens asked the server for no handle");
    let mut file = fs::File::open(a.join("f")).unwrap();
    fs::remove_file(b.join("f")).unwrap();
    let mut seen = String::new();
    file.read_to_string(&mut seen).unwrap();
    assert_eq!(seen, "pinned contents", "the open file reads after the remote unlink");
    let ino = file.metadata().unwrap().ino();
    assert_eq!(fixture.server().orphans().unwrap(), vec![ino]);
    drop(file);
    eventually("the orphan goes once the kernel forgets the file", || {
        drop_kernel_caches();
        fixture.server().orphans().unwrap().is_empty()
    });
    // A write open still takes a server handle.
    fs::write(a.join("g"), b"x").unwrap();
    let before = fixture.mounts[0].client().stats().requests_sent;
    fs::OpenOptions::new().append(true).open(a.join("g")).unwrap().write_all(b"y").unwrap();
    assert!(fixture.mounts[0].client().stats().requests_sent > before);
    assert_eq!(fs::read(b.join("g")).unwrap(), b"xy");
}

/// A file this mount created and still holds open for writing: the kernel keeps its entry and
/// attributes from the create's reply (the create leases them), and another mount's write drops
/// them at once; so does this mount's own write.
#[test]
fn a_created_file_open_for_writing_shows_other_mounts_writes() {
    use std::os::unix::fs::FileExt;
    let fixture = Fixture::new(2);
    let (a, b) = (fixture.root(0), fixture.root(1));
    for round in 0..10_u64 {
        let name = format!("f{round}");
        let mine = fs::OpenOptions::new().write(true).create_new(true).open(a.join(&name)).unwrap();
        assert_eq!(fs::metadata(a.join(&name)).unwrap().len(), 0);
        let theirs = fs::OpenOptions::new().write(true).open(b.join(&name)).unwrap();
        theirs.write_all_at(b"12345", round).unwrap();
        assert_eq!(fs::metadata(a.join(&name)).unwrap().len(), 5 + round, "round {round}: B's write");
        mine.write_all_at(b"x", 100).unwrap();
        assert_eq!(fs::metadata(a.join(&name)).unwrap().len(), 101, "round {round}: A's own write");
        assert_eq!(fs::metadata(b.join(&name)).unwrap().len(), 101, "round {round}: seen on B");
    }
}

// The server bounds the inodes one session pins (`pins_per_session_max`). A mount whose kernel
// holds more goes on: lookups beyond the bound answer without a pin.
#[test]
fn a_mount_beyond_the_servers_pin_bound_still_looks_names_up() {
    let fixture = Fixture::with_server(1, |config| config.pins_per_session_max = 2);
    let root = fixture.root(0);
    let client = fixture.client();
    fixture.runtime.block_on(async {
        for index in 0..6 {
            client.write(format!("/f{index}"), format!("{index}").as_bytes()).await.unwrap();
        }
    });
    for index in 0..6 {
        assert_eq!(std::fs::read_to_string(root.join(format!("f{index}"))).unwrap(), index.to_string());
    }
    // Creates too (they pin in the same step, unless the bound is reached).
    for index in 0..4 {
        std::fs::write(root.join(format!("new{index}")), b"made").unwrap();
    }
    let stats = fixture.mounts[0].stats();
    assert!(stats.kernel_inodes >= 10, "{stats:?}");
    assert!(stats.pins <= 2, "no more pins than the server allows: {stats:?}");
}
