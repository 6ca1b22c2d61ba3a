//! How client commands show files to a person: `ls -l` lines and `stat` blocks in the shapes of
//! their coreutils namesakes (permission strings, user and group names, local dates).
//!
//! Owners are numeric on the wire; names come from this machine's `/etc/passwd` and `/etc/group`
//! (read once per command), as `ls` on any network file system shows them. An id without a name
//! here is shown as its number.

use std::collections::HashMap;
use std::io::Write;

use rustre_client::rustre_proto::{Attr, FileKind, Timestamp};

/// Seconds in the half year within which `ls -l` shows a time of day rather than a year.
const RECENT_SECS: i64 = 182 * 24 * 3600;

/// Numeric ids and their names on this machine.
pub(crate) struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    /// Reads this machine's user and group databases; a missing one gives numbers only.
    pub(crate) fn load() -> Names {
        Names { users: id_names("/etc/passwd"), groups: id_names("/etc/group") }
    }

    pub(crate) fn user(&self, uid: u32) -> String {
        self.users.get(&uid).cloned().unwrap_or_else(|| uid.to_string())
    }

    pub(crate) fn group(&self, gid: u32) -> String {
        self.groups.get(&gid).cloned().unwrap_or_else(|| gid.to_string())
    }
}

/// `name:x:id:...` lines: the first name of each id.
fn id_names(file: &str) -> HashMap<u32, String> {
    let mut names = HashMap::new();
    let Ok(text) = std::fs::read_to_string(file) else { return names };
    for line in text.lines() {
        let mut fields = line.split(':');
        if let (Some(name), Some(_), Some(id)) = (fields.next(), fields.next(), fields.next())
            && let Ok(id) = id.parse::<u32>()
        {
            names.entry(id).or_insert_with(|| name.to_string());
        }
    }
    names
}

pub(crate) fn kind_char(kind: FileKind) -> char {
    match kind {
        FileKind::Regular => '-',
        FileKind::Directory => 'd',
        FileKind::Symlink => 'l',
    }
}

/// The type as `stat` names it.
pub(crate) fn kind_name(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Regular => "regular file",
        FileKind::Directory => "directory",
        FileKind::Symlink => "symbolic link",
    }
}

/// `-rw-r--r--`, `drwxrwsr-t`: the type and the nine permission bits with set-id and sticky.
pub(crate) fn mode_string(kind: FileKind, perm: u32) -> String {
    let mut text = String::with_capacity(10);
    text.push(kind_char(kind));
    // (read, write, execute bit, special bit, special letter) per class.
    let classes =
        [(0o400, 0o200, 0o100, 0o4000, 's'), (0o040, 0o020, 0o010, 0o2000, 's'), (0o004, 0o002, 0o001, 0o1000, 't')];
    for (read, write, execute, special, letter) in classes {
        text.push(if perm & read != 0 { 'r' } else { '-' });
        text.push(if perm & write != 0 { 'w' } else { '-' });
        text.push(match (perm & execute != 0, perm & special != 0) {
            (true, true) => letter,
            (false, true) => letter.to_ascii_uppercase(),
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    text
}

/// A time on this machine's clock and time zone, or `None` if it is out of range.
fn zoned(time: Timestamp) -> Option<jiff::Zoned> {
    let timestamp = jiff::Timestamp::new(time.secs, i32::try_from(time.nanos).ok()?).ok()?;
    Some(timestamp.to_zoned(jiff::tz::TimeZone::system()))
}

/// `ls -l`'s date: `Dec  7 12:55` within half a year of `now`, else `Dec  7  2025`.
pub(crate) fn short_date(time: Timestamp, now: Timestamp) -> String {
    let Some(zoned) = zoned(time) else { return time.secs.to_string() };
    if (now.secs - time.secs).abs() < RECENT_SECS {
        zoned.strftime("%b %e %H:%M").to_string()
    } else {
        zoned.strftime("%b %e  %Y").to_string()
    }
}

/// `stat`'s date: `2026-12-07 12:55:01.123456789 +0000`.
pub(crate) fn full_date(time: Timestamp) -> String {
    match zoned(time) {
        // Nanoseconds always as nine digits, as stat prints them (strftime's %f drops zeros).
        Some(zoned) => {
            format!("{}.{:09} {}", zoned.strftime("%Y-%m-%d %H:%M:%S"), time.nanos, zoned.strftime("%z"))
        }
        None => format!("{}.{:09}", time.secs, time.nanos),
    }
}

/// One line of `ls -l`.
pub(crate) struct LongRow {
    pub attr: Attr,
    pub name: Vec<u8>,
    /// A symlink's target.
    pub target: Option<Vec<u8>>,
}

/// `ls -l` lines, in columns as coreutils aligns them:
/// `drwxr-xr-x 2 root root 4096 Dec  7 12:55 name`.
pub(crate) fn write_long(out: &mut (impl Write + ?Sized), rows: &[LongRow], indent: &str) -> std::io::Result<()> {
    let names = Names::load();
    let now = Timestamp::from_system_time(std::time::SystemTime::now());
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|row| {
            let attr = &row.attr;
            [
                attr.nlink.to_string(),
                names.user(attr.uid),
                names.group(attr.gid),
                attr.size.to_string(),
                short_date(attr.mtime, now),
            ]
        })
        .collect();
    let width = |column: usize| cells.iter().map(|cell| cell[column].len()).max().unwrap_or(0);
    let (nlink, user, group, size) = (width(0), width(1), width(2), width(3));
    for (row, [links, owner, owner_group, bytes, date]) in rows.iter().zip(&cells) {
        write!(
            out,
            "{indent}{} {links:>nlink$} {owner:<user$} {owner_group:<group$} {bytes:>size$} {date} ",
            mode_string(row.attr.kind, row.attr.perm)
        )?;
        out.write_all(&row.name)?;
        if let Some(target) = &row.target {
            out.write_all(b" -> ")?;
            out.write_all(target)?;
        }
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// A `stat` block, as coreutils' `stat` prints one (the device line replaced by rustre's
/// inode generation, which is what tells two lives of one inode number apart).
pub(crate) fn write_stat(out: &mut (impl Write + ?Sized), path: &str, attr: &Attr) -> std::io::Result<()> {
    let names = Names::load();
    writeln!(out, "  File: {path}")?;
    writeln!(out, "  Size: {:<15} Blocks: {:<10} IO Block: 4096   {}", attr.size, attr.blocks, kind_name(attr.kind))?;
    writeln!(out, " Inode: {:<15} Links: {:<10} Generation: {}", attr.ino, attr.nlink, attr.generation)?;
    writeln!(
        out,
        "Access: ({:04o}/{})  Uid: ({:>5}/{:>8})   Gid: ({:>5}/{:>8})",
        attr.perm,
        mode_string(attr.kind, attr.perm),
        attr.uid,
        names.user(attr.uid),
        attr.gid,
        names.group(attr.gid)
    )?;
    writeln!(out, "Access: {}", full_date(attr.atime))?;
    writeln!(out, "Modify: {}", full_date(attr.mtime))?;
    writeln!(out, "Change: {}", full_date(attr.ctime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_strings_are_those_of_ls() {
        assert_eq!(mode_string(FileKind::Regular, 0o644), "-rw-r--r--");
        assert_eq!(mode_string(FileKind::Directory, 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(FileKind::Symlink, 0o777), "lrwxrwxrwx");
        assert_eq!(mode_string(FileKind::Directory, 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(FileKind::Directory, 0o1776), "drwxrwxrwT");
        assert_eq!(mode_string(FileKind::Regular, 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string(FileKind::Regular, 0o2644), "-rw-r-Sr--");
        assert_eq!(mode_string(FileKind::Regular, 0), "----------");
    }

    #[test]
    fn dates_show_the_time_of_day_within_half_a_year_and_the_year_beyond() {
        let now = Timestamp { secs: 1_800_000_000, nanos: 0 };
        let recent = short_date(Timestamp { secs: now.secs - 3600, nanos: 0 }, now);
        assert!(recent.contains(':'), "{recent}");
        let old = short_date(Timestamp { secs: now.secs - 2 * RECENT_SECS, nanos: 0 }, now);
        assert!(!old.contains(':') && old.ends_with("2026"), "{old}");
        let full = full_date(Timestamp { secs: 0, nanos: 5 });
        assert!(full.contains(".000000005 "), "{full}");
        let full = full_date(Timestamp { secs: 0, nanos: 804_452_520 });
        assert!(full.contains(".804452520 "), "trailing zeros kept: {full}");
    }
}
