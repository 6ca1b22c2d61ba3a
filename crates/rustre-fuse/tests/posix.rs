//! POSIX behaviour of each operation through a real FUSE mount of a real server, with ordinary
//! file APIs (std::fs, libc), checked as a local file system would answer.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};

use common::{Fixture, c_path, check, errno_of};

#[test]
fn files_are_created_written_read_appended_and_truncated() {
    let fixture = Fixture::new(1);
    let root = fixture.root(0);
    let path = root.join("f");
    fs::write(&path, b"hello world").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"hello world");
    assert_eq!(fs::metadata(&path).unwrap().len(), 11);

    // Append goes to the end whatever the offset.
    let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(b"!").unwrap();
    drop(file);
    assert_eq!(fs::read(&path).unwrap(), b"hello world!");

    // Positioned writes, a hole read back as zeros.
    let mut file = fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    file.seek(SeekFrom::Start(20)).unwrap();
    file.write_all(b"end").unwrap();
    let mut all = Vec::new();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_to_end(&mut all).unwrap();
    assert_eq!(all.len(), 23);
    assert_eq!(&all[12..20], &[0; 8]);
    assert_eq!(&all[20..], b"end");
    file.sync_all().unwrap();
    drop(file);

    // O_TRUNC, and truncate through setattr, both ways.
    fs::OpenOptions::new().write(true).truncate(true).open(&path).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(4096).unwrap();
    assert_eq!(fs::read(&path).unwrap(), vec![0; 4096]);
    file.set_len(1).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 1);

    // A large file round-trips (several kernel writes and reads).
    let big: Vec<u8> = (0..5 << 20).map(|index: u32| (index % 251) as u8).collect();
    fs::write(root.join("big"), &big).unwrap();
    assert!(fs::read(root.join("big")).unwrap() == big, "5 MiB read back as written");
}

#[test]
fn open_flags_follow_posix() {
    let fixture = Fixture::new(1);
    let root = fixture.root(0);
    let path = root.join("x");
    assert_eq!(errno_of(fs::File::open(&path)), libc::ENOENT);
    fs::OpenOptions::new().write(true).create_new(true).open(&path).unwrap();
    assert_eq!(errno_of(fs::OpenOptions::new().write(true).create_new(true).open(&path)), libc::EEXIST);
    // O_CREAT without O_EXCL opens the existing file.
    fs::OpenOptions::new().write(true).create(true).truncate(false).open(&path).unwrap();
    assert_eq!(errno_of(fs::File::open(root.join("x/y"))), libc::ENOTDIR);
    fs::create_dir(root.join("d")).unwrap();
    assert_eq!(errno_of(fs::OpenOptions::new().write(true).open(root.join("d"))), libc::EISDIR);
    // Creation mode with the umask applied by the kernel.
    let made =
        fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o640).open(root.join("m")).unwrap();
    assert_eq!(made.metadata().unwrap().permissions().mode() & 0o777, 0o640);
    // mknod: regular files only.
    let node = c_path(&root.join("node"));
    check(unsafe { libc::mknod(node.as_ptr(), libc::S_IFREG | 0o600, 0) }).unwrap();
    assert!(fs::metadata(root.join("node")).unwrap().is_file());
    let fifo = c_path(&root.join("fifo"));
    assert_eq!(check(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }), Err(libc::EPERM));
}

#[test]
fn directories_are_made_listed_and_removed() {
    let fixture = Fixture::new(1);
    let root = fixture.root(0);
    fs::create_dir(root.join("d")).unwrap();
    assert_eq!(errno_of(fs::create_dir(root.join("d"))), libc::EEXIST);
    assert_eq!(fs::metadata(root.join("d")).unwrap().nlink(), 2);
    fs::create_dir_all(root.join("d/a/b/c")).unwrap();
    assert_eq!(fs::metadata(root.join("d")).unwrap().nlink(), 3);
    assert_eq!(errno_of(fs::remove_dir(root.join("d"))), libc::ENOTEMPTY);
    assert_eq!(errno_of(fs::remove_dir(root.join("nope"))), libc::ENOENT);

    // A listing larger than one kernel buffer and one server page, with kinds.
    let many = root.join("many");
    fs::create_dir(&many).unwrap();
    for index in 0..1500 {
        fs::write(many.join(format!("file-{index:04}")), b"").unwrap();
    }
    fs::create_dir(many.join("sub")).unwrap();
    let mut names: Vec<String> =
        fs::read_dir(&many).unwrap().map(|entry| entry.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names.len(), 1501, "every entry once, no '.' or '..' from read_dir");
    assert_eq!(names[0], "file-0000");
    assert_eq!(names[1500], "sub");
    let kinds: Vec<bool> =
        fs::read_dir(&many).unwrap().map(|entry| entry.unwrap().file_type().unwrap().is_dir()).collect();
    assert_eq!(kinds.iter().filter(|dir| **dir).count(), 1);
    // "." and ".." are listed by readdir(3).
    let dir = c_path(&many);
    let mut dots = 0;
    unsafe {
        let stream = libc::opendir(dir.as_ptr());
        assert!(!stream.is_null());
        loop {
            let entry = libc::readdir(stream);
            if entry.is_null() {
                break;
            }
            let name = std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()).to_bytes();
            if name == b"." || name == b".." {
                dots += 1;
            }
        }
        libc::closedir(stream);
    }
    assert_eq!(dots, 2);

    fs::remove_dir_all(root.join("d")).unwrap();
    fs::remove_dir_all(&many).unwrap();
    assert_eq!(fs::read_dir(root).unwrap().count(), 0);
}

#[test]
fn renames_links_and_symlinks() {
    let fixture = Fixture::new(1);
    let root = fixture.root(0);
    fs::write(root.join("a"), b"A").unwrap();
    fs::write(root.join("b"), b"B").unwrap();
    // Replace.
    fs::rename(root.join("a"), root.join("b")).unwrap();
    assert_eq!(fs::read(root.join("b")).unwrap(), b"A");
    assert_eq!(errno_of(fs::metadata(root.join("a"))), libc::ENOENT);
    // No-replace and exchange (renameat2).
    fs::write(root.join("c"), b"C").unwrap();
    let renameat2 = |from: &str, to: &str, flags: libc::c_uint| {
        let (from, to) = (c_path(&root.join(from)), c_path(&root.join(to)));
        check(unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), flags) })
    };
    assert_eq!(renameat2("b", "c", libc::RENAME_NOREPLACE), Err(libc::EEXIST));
    renameat2("b", "c", libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(root.join("b")).unwrap(), b"C");
    assert_eq!(fs::read(root.join("c")).unwrap(), b"A");
    // Directories move with their contents; a directory cannot go inside itself.
    fs::create_dir_all(root.join("d/e")).unwrap();
    fs::write(root.join("d/e/f"), b"F").unwrap();
    fs::rename(root.join("d"), root.join("D")).unwrap();
    assert_eq!(fs::read(root.join("D/e/f")).unwrap(), b"F");
    assert_eq!(errno_of(fs::rename(root.join("D"), root.join("D/e/inside"))), libc::EINVAL);

    // Hard links share the inode and count.
    fs::hard_link(root.join("b"), root.join("b2")).unwrap();
    let (one, two) = (fs::metadata(root.join("b")).unwrap(), fs::metadata(root.join("b2")).unwrap());
    assert_eq!(one.ino(), two.ino());
    assert_eq!(two.nlink(), 2);
    assert_eq!(errno_of(fs::hard_link(root.join("D"), root.join("D2"))), libc::EPERM);
    fs::remove_file(root.join("b")).unwrap();
    assert_eq!(fs::metadata(root.join("b2")).unwrap().nlink(), 1);

    // Symlinks: followed by the kernel, read with readlink, removed without touching the target.
    std::os::unix::fs::symlink("D/e/f", root.join("s")).unwrap();
    assert_eq!(fs::read_link(root.join("s")).unwrap().to_str(), Some("D/e/f"));
    assert_eq!(fs::read(root.join("s")).unwrap(), b"F");
    assert!(fs::symlink_metadata(root.join("s")).unwrap().file_type().is_symlink());
    std::os::unix::fs::symlink("nowhere", root.join("dangling")).unwrap();
    assert_eq!(errno_of(fs::read(root.join("dangling"))), libc::ENOENT);
    fs::remove_file(root.join("s")).unwrap();
    assert_eq!(fs::read(root.join("D/e/f")).unwrap(), b"F");
}

#[test]
fn attributes_xattrs_statfs_and_sync() {
    let fixture = Fixture::new(1);
    let root = fixture.root(0);
    let path = root.join("f");
    fs::write(&path, b"data").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
    std::os::unix::fs::chown(&path, Some(1234), Some(5678)).unwrap();
    let meta = fs::metadata(&path).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    fs::File::options().write(true).open(&path).unwrap().set_modified(when).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().mtime(), 1_000_000_000);

    // Extended attributes: set, get (with the size probe), list, replace rules, remove.
    let file = c_path(&path);
    let name = c"user.colour";
    let set = |value: &[u8], flags: libc::c_int| {
        check(unsafe { libc::setxattr(file.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), flags) })
    };
    assert_eq!(set(b"red", libc::XATTR_REPLACE), Err(libc::ENODATA));
    set(b"red", 0).unwrap();
    assert_eq!(set(b"blue", libc::XATTR_CREATE), Err(libc::EEXIST));
    let size = check(unsafe { libc::getxattr(file.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) as libc::c_int });
    assert_eq!(size, Ok(3));
    let mut value = [0u8; 16];
    let got = unsafe { libc::getxattr(file.as_ptr(), name.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
    assert_eq!(&value[..got as usize], b"red");
    let mut small = [0u8; 1];
    let got = unsafe { libc::getxattr(file.as_ptr(), name.as_ptr(), small.as_mut_ptr().cast(), 1) };
    assert_eq!((got, std::io::Error::last_os_error().raw_os_error()), (-1, Some(libc::ERANGE)));
    let mut list = [0u8; 64];
    let got = unsafe { libc::listxattr(file.as_ptr(), list.as_mut_ptr().cast(), list.len()) };
    assert_eq!(&list[..got as usize], b"user.colour\0");
    check(unsafe { libc::removexattr(file.as_ptr(), name.as_ptr()) }).unwrap();
    let got = unsafe { libc::getxattr(file.as_ptr(), name.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
    assert_eq!((got, std::io::Error::last_os_error().raw_os_error()), (-1, Some(libc::ENODATA)));

    // statfs reports the server's store.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let mountpoint = c_path(root);
    check(unsafe { libc::statvfs(mountpoint.as_ptr(), &mut stat) }).unwrap();
    assert!(stat.f_blocks > 0 && stat.f_bsize > 0 && stat.f_namemax >= 255);

    // fsync of a file and of a directory.
    fs::File::open(&path).unwrap().sync_all().unwrap();
    fs::File::open(root).unwrap().sync_all().unwrap();
}

/// The mount widens the kernel's read-ahead window (128 KiB by default) so that large
/// sequential reads go to the server in few requests.
#[test]
fn the_mount_reads_ahead_a_megabyte() {
    let fixture = Fixture::new(1);
    let dev = fs::metadata(fixture.root(0)).unwrap().dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let window = fs::read_to_string(format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb")).unwrap();
    assert_eq!(window.trim(), "1024");
    let data: Vec<u8> = (0..3 << 20).map(|at: u32| (at % 251) as u8).collect();
    fs::write(fixture.root(0).join("big"), &data).unwrap();
    assert_eq!(fs::read(fixture.root(0).join("big")).unwrap(), data);
}
