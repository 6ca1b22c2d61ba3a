//! What the tests of the `rustre` binary share.
#![allow(dead_code)]

use std::process::{Command, Stdio};

pub const RUSTRE: &str = env!("CARGO_BIN_EXE_rustre");

/// A command line for the binary, free of the caller's environment settings, reading nothing.
pub fn rustre_command() -> Command {
    let mut command = Command::new(RUSTRE);
    command.env_remove("RUSTRE_SERVER").env_remove("RUSTRE_DATA").env_remove("RUST_LOG").stdin(Stdio::null());
    command
}

/// A loopback address with a port that was free a moment ago.
pub fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").to_string()
}
