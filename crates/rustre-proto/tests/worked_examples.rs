//! The worked examples of docs/protocol.md (section 12), byte for byte: if the encoding changes,
//! this fails, and the document is brought up to date with it.

use bytes::Bytes;
use rustre_proto::frame::{Frame, FrameKind};
use rustre_proto::msg::{HELLO_MAGIC, PROTOCOL_VERSION_MAX};
use rustre_proto::{Caller, Op, Request};

fn frame_bytes(id: u64, request: &Request) -> String {
    let frame = Frame::new(FrameKind::Request, id, request, Bytes::new());
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
        "1d 00 00 00 01 00 00 00 00 00 00 00 00 10 00 00 00 e8 07 e8 07 01 1b 00 d2 a8 cd 92 05 04 04 01 63"
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
