//! The worked examples of docs/protocol.md (section 12), byte for byte: if the encoding changes,
//! this fails, and the document is brought up to date with it.

use bytes::Bytes;
use rustre_proto::frame::{Frame, FrameKind};
use rustre_proto::msg::{HELLO_MAGIC, PROTOCOL_VERSION_MAX};
use rustre_proto::{Attr, Caller, FileKind, Op, Orphan, OrphanHolder, Reply, ReplyHeader, Request, Timestamp};

fn frame_bytes(id: u64, request: &Request) -> String {
    hex(Frame::new(FrameKind::Request, id, request, Bytes::new()))
}

fn reply_bytes(id: u64, reply: &ReplyHeader) -> String {
    hex(Frame::new(FrameKind::Reply, id, reply, Bytes::new()))
}

fn hex(frame: Frame) -> String {
    let mut bytes = frame.prefix().to_vec();
    bytes.extend_from_slice(&frame.header);
    bytes.extend_from_slice(&frame.payload);
    bytes.iter().map(|byte| format!("{byte:02x}")).collect::<Vec<_>>().join(" ")
}

#[test]
fn a_lookup() {
    let request = Request { caller: Caller::ROOT, op: Op::Lookup { parent: 1, name: b"a".to_vec() } };
    assert_eq!(frame_bytes(5, &request), "14 00 00 00 01 05 00 00 00 00 00 00 00 07 00 00 00 00 00 00 01 01 01 61");
}

#[test]
fn a_hello() {
    let op = Op::Hello {
        magic: HELLO_MAGIC,
        version_min: PROTOCOL_VERSION_MAX,
        version_max: PROTOCOL_VERSION_MAX,
        client_name: "c".to_string(),
    };
    let request = Request { caller: Caller { uid: 1000, gid: 1000, groups: vec![27] }, op };
    assert_eq!(
        frame_bytes(0, &request),
        "1d 00 00 00 01 00 00 00 00 00 00 00 00 10 00 00 00 e8 07 e8 07 01 1b 00 d2 a8 cd 92 05 05 05 01 63"
    );
}

#[test]
fn an_operation_by_path() {
    let op = Op::AtPath {
        dir: vec![b"a".to_vec(), b"l".to_vec()],
        new_dir: None,
        follow_last: false,
        op: Box::new(Op::Mkdir { parent: 0, name: b"c".to_vec(), perm: 0o755 }),
    };
    assert_eq!(
        frame_bytes(9, &Request { caller: Caller::ROOT, op }),
        "1e 00 00 00 01 09 00 00 00 00 00 00 00 11 00 00 00 00 00 00 18 02 01 61 01 6c 00 00 0a 00 01 63 ed 03"
    );
}

#[test]
fn an_orphan_listing() {
    let request = Request { caller: Caller::ROOT, op: Op::ListOrphans { after: 0 } };
    assert_eq!(frame_bytes(4, &request), "12 00 00 00 01 04 00 00 00 00 00 00 00 05 00 00 00 00 00 00 1a 00");
    let time = Timestamp { secs: 1_800_000_000, nanos: 0 };
    let attr = Attr {
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
    };
    let holder = OrphanHolder {
        session: 0x1_0000_0001,
        peer: "10.0.0.7:4100".to_string(),
        client_name: "c".to_string(),
        connected: true,
        handles: 1,
        pins: 0,
    };
    let orphan = Orphan { attr, opens: 1, kept_for_recovery: false, holders: vec![holder] };
    let reply = ReplyHeader::new(Ok(Reply::Orphans { orphans: vec![orphan], end: true }));
    let expected = [
        "4b 00 00 00 02 04 00 00 00 00 00 00 00 3e 00 00 00",
        "00 0d 01",
        "0c 01 00 a4 03 00 e8 07 e8 07 04 01",
        "80 c8 ce b4 0d 00 80 c8 ce b4 0d 00 80 c8 ce b4 0d 00",
        "01 00 01",
        "81 80 80 80 10 0d 31 30 2e 30 2e 30 2e 37 3a 34 31 30 30 01 63 01 01 00",
        "01 00",
    ];
    assert_eq!(reply_bytes(4, &reply), expected.join(" "));
}
