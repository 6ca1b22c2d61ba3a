//! The fuzz corpus (`fuzz/corpus/frames`, kept in the repository) run through the same decoder
//! as the fuzz target, on stable, in every test run: inputs that once found something (or that
//! cover a message type) keep being checked without nightly or cargo-fuzz.
//!
//! The seeds (`seed-*`: one valid frame of each kind of message) are written by
//! `RUSTRE_WRITE_FUZZ_SEEDS=1 cargo test -p rustre-proto --test fuzz_corpus`; the rest is what
//! `cargo +nightly fuzz run frames` found and `cargo fuzz cmin frames` kept.

use std::path::PathBuf;

use bytes::Bytes;
use rustre_proto::frame::{Frame, FrameKind, decode_all, encode_header};
use rustre_proto::{
    Attr, Callback, CallbackReply, Caller, Errno, FileKind, HELLO_MAGIC, Op, OpenFlags, Orphan, OrphanHolder, Reply,
    ReplyHeader, Request, Timestamp, WireError,
};

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/frames")
}

fn wire(kind: FrameKind, header: Bytes, payload: &'static [u8]) -> Vec<u8> {
    let frame = Frame { kind, id: 3, header, payload: Bytes::from_static(payload) };
    let mut bytes = frame.prefix().to_vec();
    bytes.extend_from_slice(&frame.header);
    bytes.extend_from_slice(&frame.payload);
    bytes
}

fn request(op: Op) -> Bytes {
    encode_header(&Request { caller: Caller { uid: 1000, gid: 1000, groups: vec![4, 27] }, op })
}

/// The attributes of a small file.
fn seed_attr() -> Attr {
    let time = Timestamp { secs: 1_800_000_000, nanos: 7 };
    Attr {
        ino: 12,
        generation: 1,
        kind: FileKind::Regular,
        perm: 0o644,
        nlink: 0,
        uid: 1000,
        gid: 1000,
        size: 4,
        blocks: 1,
        atime: time,
        mtime: time,
        ctime: time,
    }
}

/// One valid frame of each kind of message.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let hello = Op::Hello { magic: HELLO_MAGIC, version_min: 3, version_max: 3, client_name: "seed".into() };
    let create = OpenFlags(OpenFlags::CREATE.0 | OpenFlags::WRITE.0);
    let mkdir = Op::Mkdir { parent: 1, name: b"d".to_vec(), perm: 0o755 };
    let failed = WireError { errno: Errno::ENOENT, message: "x".into() };
    let holder = OrphanHolder {
        session: 1 << 32 | 1,
        peer: "127.0.0.1:9".into(),
        client_name: "seed".into(),
        connected: false,
        handles: 1,
        pins: 2,
    };
    let orphan = Orphan { attr: seed_attr(), opens: 3, kept_for_recovery: true, holders: vec![holder] };
    let orphans = Reply::Orphans { orphans: vec![orphan], end: false };
    vec![
        ("hello", wire(FrameKind::Request, request(hello), b"")),
        (
            "open",
            wire(
                FrameKind::Request,
                request(Op::Open { parent: 1, name: b"f".to_vec(), flags: create, perm: 0o644 }),
                b"",
            ),
        ),
        ("write", wire(FrameKind::Request, request(Op::Write { handle: 9, offset: 0 }), b"data")),
        ("prove", wire(FrameKind::Request, request(Op::Prove { nonce: [1; 32], proof: [2; 32] }), b"")),
        ("once", wire(FrameKind::Request, request(Op::Once { slot: 1, seq: 2, op: Box::new(mkdir) }), b"")),
        ("reply", wire(FrameKind::Reply, encode_header(&ReplyHeader::new(Ok(Reply::Done))), b"")),
        ("orphans", wire(FrameKind::Reply, encode_header(&ReplyHeader::new(Ok(orphans))), b"")),
        ("error", wire(FrameKind::Reply, encode_header(&ReplyHeader::new(Err(failed))), b"")),
        ("ping", wire(FrameKind::Request, encode_header(&Callback::Ping { nonce: 5 }), b"")),
        ("pong", wire(FrameKind::Reply, encode_header(&CallbackReply::Pong { nonce: 5 }), b"")),
    ]
}

#[test]
fn the_corpus_decodes_without_panicking() {
    if std::env::var_os("RUSTRE_WRITE_FUZZ_SEEDS").is_some() {
        std::fs::create_dir_all(corpus()).unwrap();
        for (name, bytes) in seeds() {
            std::fs::write(corpus().join(format!("seed-{name}")), bytes).unwrap();
        }
    }
    for (name, bytes) in seeds() {
        assert_eq!(decode_all(&bytes), 1, "seed {name} is one valid frame");
        let twice = [bytes.as_slice(), bytes.as_slice()].concat();
        assert_eq!(decode_all(&twice), 2, "seed {name}, twice");
        for cut in 0..bytes.len() {
            assert_eq!(decode_all(&bytes[..cut]), 0, "seed {name} cut at {cut}");
        }
    }
    let mut files = 0;
    for entry in std::fs::read_dir(corpus()).expect("the corpus is in the repository") {
        let path = entry.unwrap().path();
        decode_all(&std::fs::read(&path).unwrap());
        files += 1;
    }
    assert!(files >= seeds().len(), "only {files} corpus files");
}
