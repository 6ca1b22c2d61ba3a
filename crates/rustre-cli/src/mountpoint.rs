//! The directory a mount goes on: checked before anything is mounted, so that a wrong path is
//! one clear error and leaves nothing behind.
//!
//! - A missing mountpoint is made, but only its last component: a typo in a parent
//!   (`/nonexistent/deep/path`) is ENOENT, not a tree of new directories.
//! - A mountpoint that is not a directory is ENOTDIR.
//! - A mountpoint that is already a mount is refused (mounting over it would hide the first
//!   mount, and `umount` would then take away the wrong one).
//! - A mountpoint this command made is removed again when the mount fails or ends.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// A mountpoint ready for mounting; removes the directory on drop if it made it.
pub(crate) struct Mountpoint {
    path: PathBuf,
    made: bool,
}

impl Mountpoint {
    pub(crate) fn prepare(path: &Path) -> anyhow::Result<Mountpoint> {
        let what = || format!("mountpoint {}", path.display());
        match std::fs::metadata(path) {
            Ok(metadata) if !metadata.is_dir() => {
                Err(std::io::Error::from_raw_os_error(rustix::io::Errno::NOTDIR.raw_os_error())).with_context(what)
            }
            Ok(_) => {
                if let Some(mount) = mounted_at(path)? {
                    bail!("mountpoint {}: already a mount ({mount}); unmount it first", path.display());
                }
                Ok(Mountpoint { path: path.to_path_buf(), made: false })
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(path).with_context(|| {
                    format!("making the mountpoint {} (its parent directory must exist)", path.display())
                })?;
                Ok(Mountpoint { path: path.to_path_buf(), made: true })
            }
            Err(error) => Err(error).with_context(what),
        }
    }
}

impl Drop for Mountpoint {
    fn drop(&mut self) {
        if self.made
            && let Err(error) = std::fs::remove_dir(&self.path)
        {
            tracing::debug!(path = %self.path.display(), %error, "leaving the mountpoint made for the mount");
        }
    }
}

/// What is mounted on `path` ("fuse.rustre rustre@127.0.0.1:7070"), if anything, from
/// /proc/self/mountinfo (fields: id, parent, major:minor, root, mount point, ... - type source).
fn mounted_at(path: &Path) -> anyhow::Result<Option<String>> {
    let path = std::fs::canonicalize(path).with_context(|| format!("mountpoint {}", path.display()))?;
    let table = match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(table) => table,
        // Without /proc nothing can be checked: the mount itself will say what is wrong.
        Err(_) => return Ok(None),
    };
    for line in table.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(point) = fields.get(4) else { continue };
        if Path::new(&unescape(point)) != path {
            continue;
        }
        let after = fields.iter().position(|field| *field == "-").map(|dash| &fields[dash + 1..]);
        let description = match after {
            Some([kind, source, ..]) => format!("{kind} {source}"),
            _ => "a file system".to_string(),
        };
        return Ok(Some(description));
    }
    Ok(None)
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo` octal escapes.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\'
            && index + 4 <= bytes.len()
            && let Ok(value) = u8::from_str_radix(&field[index + 1..index + 4], 8)
        {
            out.push(value);
            index += 4;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/end\\134"), "/end\\");
    }

    #[test]
    fn the_root_is_a_mount_and_a_fresh_directory_is_not() {
        assert!(mounted_at(Path::new("/")).unwrap().is_some());
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(mounted_at(dir.path()).unwrap(), None);
    }

    #[test]
    fn a_file_or_a_missing_parent_is_refused_and_nothing_is_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let error = Mountpoint::prepare(&file).err().unwrap();
        assert!(format!("{error:#}").contains("Not a directory"), "{error:#}");
        let deep = dir.path().join("no/such/path");
        let error = Mountpoint::prepare(&deep).err().unwrap();
        assert!(format!("{error:#}").contains("No such file or directory"), "{error:#}");
        assert!(!dir.path().join("no").exists());
        let made = dir.path().join("made");
        drop(Mountpoint::prepare(&made).unwrap());
        assert!(!made.exists(), "a mountpoint made for the mount goes with it");
        std::fs::create_dir(&made).unwrap();
        drop(Mountpoint::prepare(&made).unwrap());
        assert!(made.exists(), "a mountpoint that was there stays");
    }
}
