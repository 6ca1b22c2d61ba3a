//! Frames: the unit on the byte stream. Layout (all integers little-endian), see
//! `docs/protocol.md`:
//!
//! ```text
//! offset  size         field
//! 0       4            body_len   bytes after this field; FRAME_FIXED_LEN <= body_len <= FRAME_BODY_LEN_MAX
//! 4       1            kind       1 = request, 2 = reply
//! 5       8            id         chosen by the side that sends the request; a reply repeats it
//! 13      4            header_len HEADER_LEN_MAX at most
//! 17      header_len   header     postcard-encoded message
//! ..      rest         payload    raw bytes (file data, xattr values)
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::msg::IO_SIZE_MAX;

/// Bytes of `kind`, `id` and `header_len`, which every body has.
pub const FRAME_FIXED_LEN: usize = 1 + 8 + 4;
/// Largest postcard header. The largest replies (readdir pages, xattr name lists) are bounded
/// well below it by `READDIR_REPLY_BYTES_MAX` and `XATTR_LIST_BYTES_MAX` in the store.
pub const HEADER_LEN_MAX: usize = 1 << 20;
/// Largest payload: one read or write, with room to spare.
pub const PAYLOAD_LEN_MAX: usize = IO_SIZE_MAX as usize + 4096;
/// Largest body a peer may announce; anything larger closes the connection before allocation.
pub const FRAME_BODY_LEN_MAX: usize = FRAME_FIXED_LEN + HEADER_LEN_MAX + PAYLOAD_LEN_MAX;
/// The most a frame body's buffer holds before its bytes have come: a 1 MiB block and its header
/// (the size of a kernel's read or write through a mount, and of `rustre bench`'s). Once it is
/// full, the rest of the frame's size is allocated at once.
pub const FRAME_READ_FIRST: usize = (1 << 20) + 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    Request = 1,
    Reply = 2,
}

/// One frame, header still encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub id: u64,
    pub header: Bytes,
    pub payload: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame body of {0} bytes is outside {FRAME_FIXED_LEN}..={FRAME_BODY_LEN_MAX}")]
    BadLength(usize),
    #[error("unknown frame kind {0}")]
    BadKind(u8),
    #[error("header length {header_len} does not fit a body of {body_len} bytes (or exceeds {HEADER_LEN_MAX})")]
    BadHeaderLength { header_len: usize, body_len: usize },
    #[error("undecodable header: {0}")]
    BadHeader(postcard::Error),
}

impl Frame {
    pub fn new<T: Serialize>(kind: FrameKind, id: u64, header: &T, payload: Bytes) -> Frame {
        Frame { kind, id, header: encode_header(header), payload }
    }

    pub fn decode_header<T: DeserializeOwned>(&self) -> Result<T, FrameError> {
        postcard::from_bytes(&self.header).map_err(FrameError::BadHeader)
    }

    /// The 17 bytes that precede the header on the wire.
    pub fn prefix(&self) -> [u8; 4 + FRAME_FIXED_LEN] {
        let body_len = FRAME_FIXED_LEN + self.header.len() + self.payload.len();
        debug_assert!(body_len <= FRAME_BODY_LEN_MAX, "we never send what we would refuse");
        let mut prefix = [0u8; 4 + FRAME_FIXED_LEN];
        let mut cursor = &mut prefix[..];
        cursor.put_u32_le(body_len as u32);
        cursor.put_u8(self.kind as u8);
        cursor.put_u64_le(self.id);
        cursor.put_u32_le(self.header.len() as u32);
        prefix
    }
}

pub fn encode_header<T: Serialize>(header: &T) -> Bytes {
    // Serializing our own types into a Vec cannot fail: postcard fails only for unsupported
    // serde shapes (none in msg.rs) or a full output buffer (a Vec grows).
    Bytes::from(postcard::to_stdvec(header).expect("postcard serializes every message type"))
}

/// Reads one frame. Lengths are checked before any allocation, so a hostile length costs nothing.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Frame, FrameError> {
    let mut length = [0u8; 4];
    match reader.read_exact(&mut length).await {
        Ok(_) => {}
        // Between frames, a reset is the peer going away without a goodbye, as an EOF is.
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
            ) =>
        {
            return Err(FrameError::Closed);
        }
        Err(error) => return Err(error.into()),
    }
    let body_len = u32::from_le_bytes(length) as usize;
    if !(FRAME_FIXED_LEN..=FRAME_BODY_LEN_MAX).contains(&body_len) {
        return Err(FrameError::BadLength(body_len));
    }
    let mut fixed = [0u8; FRAME_FIXED_LEN];
    reader.read_exact(&mut fixed).await?;
    let mut cursor = &fixed[..];
    let kind = match cursor.get_u8() {
        1 => FrameKind::Request,
        2 => FrameKind::Reply,
        other => return Err(FrameError::BadKind(other)),
    };
    let id = cursor.get_u64_le();
    let header_len = cursor.get_u32_le() as usize;
    let rest_len = body_len - FRAME_FIXED_LEN;
    if header_len > rest_len || header_len > HEADER_LEN_MAX || rest_len - header_len > PAYLOAD_LEN_MAX {
        return Err(FrameError::BadHeaderLength { header_len, body_len });
    }
    // Memory beyond `FRAME_READ_FIRST` only once that many bytes of the frame have come: a peer
    // that claims 16 MiB and sends little holds 1 MiB, not 16, even as address space. The first
    // allocation holds a whole 1 MiB block: reads of 1 MiB blocks whose buffer grew from 64 KiB
    // were 17 to 20% slower (docs/BENCHMARKS.md).
    let mut rest = BytesMut::with_capacity(rest_len.min(FRAME_READ_FIRST));
    while rest.len() < rest_len {
        if rest.len() == rest.capacity() {
            rest.reserve(rest_len - rest.len());
        }
        let room = rest.capacity().min(rest_len) - rest.len();
        let read = (&mut *reader).take(room as u64).read_buf(&mut rest).await?;
        if read == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
    debug_assert_eq!(rest.len(), rest_len);
    let mut rest = rest.freeze();
    let header = rest.split_to(header_len);
    Ok(Frame { kind, id, header, payload: rest })
}

/// Writes one frame (without flushing).
pub async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, frame: &Frame) -> std::io::Result<()> {
    writer.write_all(&frame.prefix()).await?;
    writer.write_all(&frame.header).await?;
    writer.write_all(&frame.payload).await?;
    Ok(())
}

/// Reads every frame in `bytes`, and decodes each header as every message type, until the bytes
/// end or a frame is refused: what the fuzz target (`fuzz/`, `cargo fuzz run frames`) and the
/// corpus test feed with arbitrary input. Returns how many frames were read. It must never panic
/// and allocates at most one frame at a time.
#[doc(hidden)]
pub fn decode_all(bytes: &[u8]) -> usize {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let mut reader = bytes;
    let mut frames = 0;
    loop {
        // A byte slice is always ready: the read finishes in one poll.
        let mut reading = std::pin::pin!(read_frame(&mut reader));
        let frame = match reading.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(frame)) => frame,
            Poll::Ready(Err(_)) | Poll::Pending => return frames,
        };
        frames += 1;
        let _ = frame.decode_header::<crate::Request>();
        let _ = frame.decode_header::<crate::ReplyHeader>();
        let _ = frame.decode_header::<crate::Callback>();
        let _ = frame.decode_header::<crate::CallbackReply>();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frame_round_trip_and_refusals() {
        let frame = Frame::new(FrameKind::Request, 7, &(1u32, "x".to_string()), Bytes::from_static(b"data"));
        let mut wire = Vec::new();
        write_frame(&mut wire, &frame).await.unwrap();
        let decoded = read_frame(&mut &wire[..]).await.unwrap();
        assert_eq!(decoded, frame);

        // A frame announcing more than the limit is refused before its body is read.
        let mut huge = Vec::new();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(read_frame(&mut &huge[..]).await, Err(FrameError::BadLength(_))));

        // A truncated frame is an I/O error (unexpected end), not a panic.
        assert!(read_frame(&mut &wire[..wire.len() - 1]).await.is_err());

        // A header length pointing past the body is refused.
        let mut bad = wire.clone();
        bad[13..17].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(read_frame(&mut &bad[..]).await, Err(FrameError::BadHeaderLength { .. })));

        // An unknown kind is refused.
        let mut bad = wire.clone();
        bad[4] = 9;
        assert!(matches!(read_frame(&mut &bad[..]).await, Err(FrameError::BadKind(9))));
    }

    // A body larger than the first buffer, arriving a few bytes at a time, is read whole: the
    // buffer grows across many partial reads.
    #[tokio::test]
    async fn a_large_frame_arriving_in_pieces_reads_whole() {
        let payload: Vec<u8> = (0..3 * FRAME_READ_FIRST + 17).map(|at| (at % 251) as u8).collect();
        let frame = Frame::new(FrameKind::Request, 9, &"header", Bytes::from(payload));
        let mut wire = Vec::new();
        write_frame(&mut wire, &frame).await.unwrap();
        let (mut near, mut far) = tokio::io::duplex(61);
        let sender = tokio::spawn(async move { far.write_all(&wire).await.unwrap() });
        assert_eq!(read_frame(&mut near).await.unwrap(), frame);
        sender.await.unwrap();
        // Cut short after the first buffer's worth: an error, not a panic or a short frame.
        let mut wire = Vec::new();
        write_frame(&mut wire, &frame).await.unwrap();
        let cut = &wire[..FRAME_READ_FIRST + 100];
        assert!(read_frame(&mut &cut[..]).await.is_err());
    }
}
