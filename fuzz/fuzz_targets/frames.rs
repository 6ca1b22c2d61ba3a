//! Arbitrary bytes as they would arrive on a connection: every frame read from them, every
//! header decoded as each message type. Nothing may panic, and nothing may allocate beyond one
//! frame's limits (libFuzzer's RSS limit catches that).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    rustre_proto::frame::decode_all(bytes);
});
