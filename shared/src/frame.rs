//! Framing: `u32` little-endian length, then a `u16` little-endian protocol version, then one
//! bincode-2 (serde mode) message. The length counts the version and the body.
//!
//! A frame's length is checked against the receiver's limit before any buffer is allocated, and
//! decoding runs within a memory budget proportional to the frame ([`crate::budget`]): every
//! element of every collection is charged its in-memory size before it is decoded. So a hostile
//! peer can neither make the receiver allocate more than one frame, nor claim a huge collection
//! inside a small frame, nor turn a frame of tiny elements into many times its size in memory.

use std::io::{self, Read, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::protocol::PROTOCOL_VERSION;

/// Default largest frame, in bytes (05-sandbox.md: 16 MiB, configurable).
pub const DEFAULT_MAX_FRAME: u32 = 16 * 1024 * 1024;
/// The largest value a configured frame limit may take.
pub const MAX_FRAME_CEILING: u32 = 64 * 1024 * 1024;
/// bincode's allocation limit while decoding one frame; never above the frame ceiling.
const DECODE_LIMIT: usize = MAX_FRAME_CEILING as usize;
/// What decoding a frame of `n` bytes may allocate for collection elements: twice the frame,
/// plus 1 MiB for small frames of many small elements (a response's headers).
pub fn decode_budget(n: usize) -> usize {
    n.saturating_mul(2).saturating_add(1 << 20)
}

const HEADER: usize = 4;
const VERSION: usize = 2;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Why a frame could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("peer closed the channel")]
    Closed,
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    Oversized { len: u64, max: u32 },
    #[error("frame shorter than its version field ({len} bytes)")]
    Short { len: u32 },
    #[error("frame ended after {got} of {want} bytes")]
    Truncated { got: usize, want: usize },
    #[error("protocol version {got}, expected {PROTOCOL_VERSION}")]
    WrongVersion { got: u16 },
    #[error("undecodable message: {0}")]
    Malformed(String),
    #[error("{extra} bytes left over after the message")]
    TrailingBytes { extra: usize },
    #[error("unexpected file descriptors with a message")]
    UnexpectedFds,
    #[error("message arrived without its file descriptor")]
    MissingFd,
    #[error("message could not be encoded: {0}")]
    Encode(String),
    #[error("i/o on the channel")]
    Io(#[from] io::Error),
}

impl FrameError {
    /// True when the peer is at fault (as opposed to the channel simply closing or failing).
    pub fn is_violation(&self) -> bool {
        !matches!(self, FrameError::Closed | FrameError::Io(_) | FrameError::Encode(_))
    }
}

/// Encodes one message as a complete frame.
pub fn encode<M: Serialize>(msg: &M, max: u32) -> Result<Vec<u8>, FrameError> {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(&[0; HEADER]);
    buf.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    bincode::serde::encode_into_std_write(msg, &mut buf, config()).map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = buf.len() - HEADER;
    if len as u64 > u64::from(max) {
        return Err(FrameError::Oversized { len: len as u64, max });
    }
    buf[..HEADER].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(buf)
}

/// Checks a frame's announced length against the limit. Called before allocating its buffer.
pub fn check_len(header: [u8; HEADER], max: u32) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(header);
    if len > max {
        return Err(FrameError::Oversized { len: u64::from(len), max });
    }
    if (len as usize) < VERSION {
        return Err(FrameError::Short { len });
    }
    Ok(len as usize)
}

/// Decodes the body of one frame (everything after the length).
pub fn decode<M: DeserializeOwned>(body: &[u8]) -> Result<M, FrameError> {
    // Readers check this before they allocate (`check_len`); a body handed over otherwise is
    // refused, never sliced past its end.
    let Some((version, rest)) = body.split_at_checked(VERSION) else {
        return Err(FrameError::Short { len: body.len() as u32 });
    };
    let got = u16::from_le_bytes([version[0], version[1]]);
    if got != PROTOCOL_VERSION {
        return Err(FrameError::WrongVersion { got });
    }
    decode_value(rest)
}

/// Encodes a value carried inside a message (a host call's arguments), as frames encode theirs.
pub fn encode_value<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| FrameError::Encode(e.to_string()))
}

/// Decodes a value [`encode_value`] made, within the same memory budget as a frame of its size;
/// every byte must belong to it.
pub fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FrameError> {
    let budget = crate::budget::Budget::new(decode_budget(bytes.len()));
    let within = crate::budget::Within { budget: &budget, marker: std::marker::PhantomData::<T> };
    let (value, used) = bincode::serde::seed_decode_from_slice(within, bytes, config())
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(FrameError::TrailingBytes { extra: bytes.len() - used });
    }
    Ok(value)
}

/// Reads one frame body from a blocking reader. `header` holds bytes of the length field that
/// were already read (by a `recvmsg` that also collected file descriptors).
pub fn read_body(r: &mut impl Read, header: [u8; HEADER], max: u32) -> Result<Vec<u8>, FrameError> {
    let len = check_len(header, max)?;
    let mut body = vec![0; len];
    read_full(r, &mut body)?;
    Ok(body)
}

/// Reads one whole frame body from a blocking reader.
pub fn read_frame(r: &mut impl Read, max: u32) -> Result<Vec<u8>, FrameError> {
    let mut header = [0; HEADER];
    match read_full(r, &mut header) {
        Err(FrameError::Truncated { got: 0, .. }) => return Err(FrameError::Closed),
        other => other?,
    }
    read_body(r, header, max)
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<(), FrameError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(FrameError::Truncated { got, want: buf.len() });
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Writes a whole encoded frame to a blocking writer.
pub fn write_frame(w: &mut impl Write, frame: &[u8]) -> Result<(), FrameError> {
    w.write_all(frame)?;
    Ok(())
}

/// Reads one whole frame body from an async reader.
pub async fn read_frame_async(r: &mut (impl AsyncRead + Unpin), max: u32) -> Result<Vec<u8>, FrameError> {
    let mut header = [0; HEADER];
    let mut got = 0;
    while got < HEADER {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            return Err(if got == 0 { FrameError::Closed } else { FrameError::Truncated { got, want: HEADER } });
        }
        got += n;
    }
    let len = check_len(header, max)?;
    let mut body = vec![0; len];
    let mut got = 0;
    while got < len {
        let n = r.read(&mut body[got..]).await?;
        if n == 0 {
            return Err(FrameError::Truncated { got, want: len });
        }
        got += n;
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{LogLevel, SandboxMsg};

    fn log(msg: &str) -> SandboxMsg {
        SandboxMsg::Log { level: LogLevel::Info, message: msg.into() }
    }

    #[test]
    fn round_trip() {
        let frame = encode(&log("hello"), DEFAULT_MAX_FRAME).unwrap();
        let body = read_frame(&mut &frame[..], DEFAULT_MAX_FRAME).unwrap();
        match decode::<SandboxMsg>(&body).unwrap() {
            SandboxMsg::Log { message, .. } => assert_eq!(message, "hello"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let mut frame = Vec::new();
        frame.extend_from_slice(&u32::MAX.to_le_bytes());
        let err = read_frame(&mut &frame[..], DEFAULT_MAX_FRAME).unwrap_err();
        assert!(matches!(err, FrameError::Oversized { len, .. } if len == u64::from(u32::MAX)), "{err}");
    }

    #[test]
    fn encode_refuses_frames_over_the_limit() {
        let err = encode(&log(&"x".repeat(100)), 50).unwrap_err();
        assert!(matches!(err, FrameError::Oversized { .. }), "{err}");
    }

    #[test]
    fn wrong_version_is_named() {
        let mut frame = encode(&log("x"), DEFAULT_MAX_FRAME).unwrap();
        frame[4] = 99;
        let body = read_frame(&mut &frame[..], DEFAULT_MAX_FRAME).unwrap();
        let err = decode::<SandboxMsg>(&body).unwrap_err();
        assert!(matches!(err, FrameError::WrongVersion { got: 99 }), "{err}");
    }

    #[test]
    fn truncated_and_closed_are_told_apart() {
        let frame = encode(&log("hello"), DEFAULT_MAX_FRAME).unwrap();
        let err = read_frame(&mut &frame[..frame.len() - 1], DEFAULT_MAX_FRAME).unwrap_err();
        assert!(matches!(err, FrameError::Truncated { .. }), "{err}");
        let err = read_frame(&mut &[][..], DEFAULT_MAX_FRAME).unwrap_err();
        assert!(matches!(err, FrameError::Closed), "{err}");
    }

    #[test]
    fn a_body_shorter_than_its_version_is_refused() {
        // Found by the ipc_frame fuzz target (tests/fuzz/corpus/ipc_frame/short-body-*).
        for body in [&[][..], &[3][..]] {
            assert!(matches!(decode::<SandboxMsg>(body), Err(FrameError::Short { .. })), "{body:?}");
        }
    }

    #[test]
    fn garbage_and_trailing_bytes_are_malformed() {
        let mut body = PROTOCOL_VERSION.to_le_bytes().to_vec();
        body.extend_from_slice(&[0xff; 16]);
        assert!(matches!(decode::<SandboxMsg>(&body), Err(FrameError::Malformed(_))));

        let frame = encode(&log("x"), DEFAULT_MAX_FRAME).unwrap();
        let mut body = frame[4..].to_vec();
        body.push(0);
        assert!(matches!(decode::<SandboxMsg>(&body), Err(FrameError::TrailingBytes { extra: 1 })));
    }

    #[test]
    fn a_huge_claimed_collection_in_a_small_frame_fails_without_allocating_it() {
        // Variant 3 (Log)... craft a Log whose string length prefix claims 2^40 bytes.
        let mut body = PROTOCOL_VERSION.to_le_bytes().to_vec();
        body.push(2); // SandboxMsg::Log
        body.push(0); // LogLevel::Info
        body.push(253); // varint: u64 follows
        body.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let err = decode::<SandboxMsg>(&body).unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)), "{err}");
    }

    #[test]
    fn a_frame_of_tiny_elements_cannot_decode_into_many_times_its_size() {
        use crate::bindings::{ExecuteResponse, HttpHeader};
        use crate::protocol::ExecStats;
        // 400 000 empty headers: 2 bytes each on the wire, 48 bytes each in memory.
        let headers = vec![HttpHeader { name: String::new(), value: String::new() }; 400_000];
        let done = SandboxMsg::Done {
            response: ExecuteResponse { status: 200, headers, body: None },
            stats: ExecStats::default(),
        };
        let frame = encode(&done, DEFAULT_MAX_FRAME).unwrap();
        assert!(frame.len() < 1_000_000, "the frame is small: {}", frame.len());
        let err = decode::<SandboxMsg>(&frame[HEADER..]).unwrap_err();
        assert!(err.to_string().contains("decode budget"), "{err}");

        // Within the budget: a response with a thousand real headers, and a 1 MiB byte chunk.
        let headers: Vec<HttpHeader> =
            (0..1000).map(|i| HttpHeader { name: format!("x-h{i}"), value: "v".into() }).collect();
        let ok = SandboxMsg::Done {
            response: ExecuteResponse { status: 200, headers, body: Some(vec![7; 1 << 20]) },
            stats: ExecStats::default(),
        };
        let frame = encode(&ok, DEFAULT_MAX_FRAME).unwrap();
        assert!(matches!(decode::<SandboxMsg>(&frame[HEADER..]).unwrap(), SandboxMsg::Done { .. }));
        let chunk = encode(&SandboxMsg::ArtifactChunk { bytes: vec![1; 1 << 20] }, DEFAULT_MAX_FRAME).unwrap();
        assert!(matches!(decode::<SandboxMsg>(&chunk[HEADER..]).unwrap(), SandboxMsg::ArtifactChunk { .. }));
    }

    #[tokio::test]
    async fn async_reader_matches_the_blocking_one() {
        let frame = encode(&log("async"), DEFAULT_MAX_FRAME).unwrap();
        let body = read_frame_async(&mut &frame[..], DEFAULT_MAX_FRAME).await.unwrap();
        assert!(matches!(decode::<SandboxMsg>(&body).unwrap(), SandboxMsg::Log { .. }));
        let mut big = Vec::new();
        big.extend_from_slice(&(DEFAULT_MAX_FRAME + 1).to_le_bytes());
        let err = read_frame_async(&mut &big[..], DEFAULT_MAX_FRAME).await.unwrap_err();
        assert!(matches!(err, FrameError::Oversized { .. }));
    }
}
