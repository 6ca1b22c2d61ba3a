//! The cluster secret that the servers and clients of one test process share: `rustre server`
//! refuses clients that do not prove it, so every command these tests spawn gets it through
//! `RUSTRE_SECRET_FILE`, and their in-process servers and clients use it too.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A file with a fixed secret in the temporary directory, one for every test process (not one
/// each, which every run left behind): each process writes the same bytes to a file of its own
/// and renames it over the shared name, so no process ever reads a partly written secret.
pub fn test_secret_file() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join("rustre-test-secret");
        let mine = std::env::temp_dir().join(format!("rustre-test-secret.{}", std::process::id()));
        std::fs::write(&mine, format!("{}\n", "5e".repeat(32))).expect("writing the test secret");
        std::fs::rename(&mine, &path).expect("putting the test secret in place");
        path
    })
}

pub fn test_secret() -> rustre_client::Secret {
    rustre_client::Secret::load(test_secret_file()).expect("the test secret loads")
}
