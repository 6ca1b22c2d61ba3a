//! What the measuring commands (`rustre race`, `rustre bench`) share: printing their report, and
//! checking that the directories they were given are one directory seen several times.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

/// How long the other directories may take to show what was made through the first (another
/// mount may cache the name's absence for a while).
pub const SAME_DIRECTORY_WAIT: Duration = Duration::from_secs(5);

/// How often the other directories are looked at meanwhile.
const SAME_DIRECTORY_POLL: Duration = Duration::from_millis(10);

/// Writes `report` to stdout: as JSON, or as the text `human` makes of it.
pub fn print<T: Serialize>(report: &T, json: bool, human: impl FnOnce(&T) -> String) -> anyhow::Result<()> {
    let text = if json { serde_json::to_string_pretty(report)? + "\n" } else { human(report) };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// Waits until every directory of `others` `shows` what was made through the first, for
/// `SAME_DIRECTORY_WAIT` in all; gives back the first that did not.
pub fn wait_until_shown(others: &[PathBuf], shows: impl Fn(&Path) -> bool) -> Result<(), PathBuf> {
    let deadline = Instant::now() + SAME_DIRECTORY_WAIT;
    for dir in others {
        while !shows(dir) {
            if Instant::now() >= deadline {
                return Err(dir.clone());
            }
            std::thread::sleep(SAME_DIRECTORY_POLL);
        }
    }
    Ok(())
}
