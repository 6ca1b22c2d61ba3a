//! The cluster secret, and the challenge-response that proves it in the hello (ARCHITECTURE.md,
//! "Trust"). The secret never crosses the wire: each side proves it knows it with an
//! HMAC-SHA256 over both sides' fresh nonces and the exact bytes of the client's hello, so a
//! proof cannot be replayed on another connection, nor moved to another hello.
//!
//! 1. client -> `Op::Hello` (or `Op::Resume`), as without a secret;
//! 2. server -> `Reply::Challenge { nonce: server_nonce }`;
//! 3. client -> `Op::Prove { nonce: client_nonce, proof: client_proof }`;
//! 4. server -> `Reply::Welcome { proof: server_proof, reply }` (`reply`: the hello's answer), or
//!    EACCES and the connection closes. A client that holds a secret refuses a server that does not
//!    challenge it or does not prove the secret in turn.
//!
//! The secret file holds the secret in hexadecimal (at least `SECRET_LEN_MIN` bytes), and may end
//! in a newline; `rustre server` writes one with `SECRET_GENERATED_LEN` random bytes, mode 0600.

use std::io::Write;
use std::path::{Path, PathBuf};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Fewest bytes a secret has (128 bits).
pub const SECRET_LEN_MIN: usize = 16;
/// Bytes of a secret `rustre server` generates (256 bits).
pub const SECRET_GENERATED_LEN: usize = 32;
/// Most bytes a secret file may hold (hex digits and a newline).
pub const SECRET_FILE_LEN_MAX: u64 = 1024;
/// Bytes of each side's nonce.
pub const NONCE_LEN: usize = 32;

pub type Nonce = [u8; NONCE_LEN];
/// An HMAC-SHA256 tag.
pub type Proof = [u8; 32];

/// Domain separation: what a proof is for, so one side's proof is never the other's.
const CONTEXT: &[u8] = b"rustre hello proof v1";
const CLIENT_ROLE: &[u8] = b"client";
const SERVER_ROLE: &[u8] = b"server";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("reading the secret file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the secret file {} is not usable: {why}", path.display())]
    Invalid { path: PathBuf, why: String },
    #[error("writing a new secret file {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("the system's random number generator failed")]
    NoRandomness,
}

/// The cluster secret (its bytes are kept only inside the HMAC key, and never printed).
#[derive(Clone)]
pub struct Secret {
    key: hmac::Key,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// A secret of these bytes (at least `SECRET_LEN_MIN`).
    pub fn from_bytes(bytes: &[u8]) -> Result<Secret, String> {
        if bytes.len() < SECRET_LEN_MIN {
            return Err(format!("a secret has at least {SECRET_LEN_MIN} bytes, this one {}", bytes.len()));
        }
        Ok(Secret { key: hmac::Key::new(hmac::HMAC_SHA256, bytes) })
    }

    /// Reads a secret file (hexadecimal, at least `SECRET_LEN_MIN` bytes).
    pub fn load(path: &Path) -> Result<Secret, SecretError> {
        let invalid = |why: String| SecretError::Invalid { path: path.to_path_buf(), why };
        let read = |source| SecretError::Read { path: path.to_path_buf(), source };
        let length = std::fs::metadata(path).map_err(read)?.len();
        if length > SECRET_FILE_LEN_MAX {
            return Err(invalid(format!("{length} bytes, more than {SECRET_FILE_LEN_MAX}")));
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        let bytes = from_hex(text.trim()).map_err(invalid)?;
        Secret::from_bytes(&bytes).map_err(invalid)
    }

    /// Writes a new random secret to `path` (which must not exist), readable by its owner only.
    pub fn generate(path: &Path) -> Result<Secret, SecretError> {
        let mut bytes = [0u8; SECRET_GENERATED_LEN];
        SystemRandom::new().fill(&mut bytes).map_err(|_| SecretError::NoRandomness)?;
        let write = |source| SecretError::Write { path: path.to_path_buf(), source };
        let mut file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(write)?
        };
        file.write_all(format!("{}\n", to_hex(&bytes)).as_bytes()).map_err(write)?;
        file.sync_all().map_err(write)?;
        Secret::from_bytes(&bytes).map_err(|why| SecretError::Invalid { path: path.to_path_buf(), why })
    }

    /// Reads `path`, or, if there is no such file, writes a new secret there. Returns whether
    /// it made a new one.
    pub fn load_or_generate(path: &Path) -> Result<(Secret, bool), SecretError> {
        match Secret::load(path) {
            Err(SecretError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Secret::generate(path).map(|secret| (secret, true))
            }
            loaded => loaded.map(|secret| (secret, false)),
        }
    }

    fn message(role: &[u8], server_nonce: &Nonce, client_nonce: &Nonce, hello: &[u8]) -> Vec<u8> {
        let mut message = Vec::with_capacity(CONTEXT.len() + role.len() + 2 * NONCE_LEN + 8 + hello.len());
        message.extend_from_slice(CONTEXT);
        message.extend_from_slice(role);
        message.extend_from_slice(server_nonce);
        message.extend_from_slice(client_nonce);
        message.extend_from_slice(&(hello.len() as u64).to_le_bytes());
        message.extend_from_slice(hello);
        message
    }

    fn prove(&self, role: &[u8], server_nonce: &Nonce, client_nonce: &Nonce, hello: &[u8]) -> Proof {
        let tag = hmac::sign(&self.key, &Secret::message(role, server_nonce, client_nonce, hello));
        tag.as_ref().try_into().expect("HMAC-SHA256 tags are 32 bytes")
    }

    /// What the client sends: it knows the secret, for this hello and these nonces.
    pub fn client_proof(&self, server_nonce: &Nonce, client_nonce: &Nonce, hello: &[u8]) -> Proof {
        self.prove(CLIENT_ROLE, server_nonce, client_nonce, hello)
    }

    /// What the server answers: it knows the secret too.
    pub fn server_proof(&self, server_nonce: &Nonce, client_nonce: &Nonce, hello: &[u8]) -> Proof {
        self.prove(SERVER_ROLE, server_nonce, client_nonce, hello)
    }

    /// Checks a client's proof (in constant time).
    pub fn verify_client(&self, server_nonce: &Nonce, client_nonce: &Nonce, hello: &[u8], proof: &Proof) -> bool {
        let message = Secret::message(CLIENT_ROLE, server_nonce, client_nonce, hello);
        hmac::verify(&self.key, &message, proof).is_ok()
    }

    /// Checks the server's proof (in constant time).
    pub fn verify_server(&self, server_nonce: &Nonce, client_nonce: &Nonce, hello: &[u8], proof: &Proof) -> bool {
        let message = Secret::message(SERVER_ROLE, server_nonce, client_nonce, hello);
        hmac::verify(&self.key, &message, proof).is_ok()
    }
}

/// A fresh random nonce.
pub fn nonce() -> Result<Nonce, SecretError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).map_err(|_| SecretError::NoRandomness)?;
    Ok(nonce)
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn from_hex(text: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) {
        return Err("not hexadecimal: an odd number of digits".into());
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(format!("not hexadecimal: {:?}", c as char)),
    };
    text.as_bytes().chunks(2).map(|pair| Ok(digit(pair[0])? << 4 | digit(pair[1])?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(byte: u8) -> Secret {
        Secret::from_bytes(&[byte; 32]).unwrap()
    }

    #[test]
    fn a_proof_holds_only_for_its_secret_nonces_hello_and_side() {
        let (s, c, hello) = ([1u8; 32], [2u8; 32], b"hello bytes".as_slice());
        let proof = secret(7).client_proof(&s, &c, hello);
        assert!(secret(7).verify_client(&s, &c, hello, &proof));
        assert!(!secret(8).verify_client(&s, &c, hello, &proof), "another secret");
        assert!(!secret(7).verify_client(&[9; 32], &c, hello, &proof), "another server nonce");
        assert!(!secret(7).verify_client(&s, &[9; 32], hello, &proof), "another client nonce");
        assert!(!secret(7).verify_client(&s, &c, b"hello bytez", &proof), "another hello");
        assert!(!secret(7).verify_server(&s, &c, hello, &proof), "a client's proof is not the server's");
        let answer = secret(7).server_proof(&s, &c, hello);
        assert!(secret(7).verify_server(&s, &c, hello, &answer));
    }

    #[test]
    fn short_or_malformed_secrets_are_refused() {
        assert!(Secret::from_bytes(&[0; SECRET_LEN_MIN - 1]).is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        for bad in ["", "abc", "zz".repeat(16).as_str(), "00".repeat(15).as_str()] {
            std::fs::write(&path, bad).unwrap();
            let error = Secret::load(&path).expect_err(bad);
            assert!(matches!(error, SecretError::Invalid { .. }), "{bad:?}: {error}");
        }
        std::fs::write(&path, format!("{}\n", "aB".repeat(16))).unwrap();
        Secret::load(&path).expect("32 hex digits and a newline");
    }

    #[test]
    fn a_generated_secret_is_private_and_loads_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let (made, new) = Secret::load_or_generate(&path).unwrap();
        assert!(new);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let (loaded, new) = Secret::load_or_generate(&path).unwrap();
        assert!(!new, "the second start reads the first one's secret");
        let (s, c) = ([3u8; 32], [4u8; 32]);
        assert!(loaded.verify_client(&s, &c, b"h", &made.client_proof(&s, &c, b"h")));
        assert!(matches!(Secret::generate(&path), Err(SecretError::Write { .. })), "never overwritten");
    }
}
