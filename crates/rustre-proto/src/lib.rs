//! rustre's wire protocol: frames, messages, error numbers, name validation, and the two-way RPC
//! connection that client and server both run over any byte stream. See `docs/protocol.md`.

pub mod auth;
pub mod clock;
pub mod errno;
pub mod frame;
pub mod msg;
pub mod name;
pub mod pause;
pub mod rpc;
pub mod tls;

pub use errno::Errno;
pub use msg::*;
