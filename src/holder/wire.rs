//! The holder protocol: length-prefixed frames on the holder's unix socket.
//!
//! A frame is a 4-byte big-endian length (of what follows), one kind byte
//! and the payload. The broker opens with `Hello { version }`; the holder
//! answers `Welcome` (then `Replay` of its scrollback, then `Exit` when the
//! program has already ended) or a typed `Error`. After that the holder
//! sends `Output` and `Exit`, the broker sends `Input`, `Resize` and
//! `AckExit`. A frame that is too long or of an unknown kind gets an
//! `Error` with a stable code and the connection is closed; the holder
//! keeps serving the next one.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// The protocol version in `Hello` and `Welcome`. A holder refuses a
/// broker of another version with `HOLDER_VERSION_UNSUPPORTED`, and a broker
/// refuses a `Welcome` of another version the same way, so a new binary
/// never misreads an old holder's frames.
pub const HOLDER_PROTOCOL_VERSION: u32 = 1;

/// Largest frame (kind byte and payload). The largest frame is the replay
/// of the scrollback (`SCROLLBACK_BYTES_MAX`); output frames are one read
/// of the terminal (16 KiB). Anything longer is a broken or hostile peer.
pub const FRAME_BYTES_MAX: usize = 1024 * 1024;

/// Raw terminal output a holder keeps for a broker that re-attaches. 256
/// KiB is several screens of a busy CLI: enough to rebuild the screen and
/// a useful scrollback by replaying it, small enough for the holder's
/// memory goal.
pub const SCROLLBACK_BYTES_MAX: usize = 256 * 1024;

const _: () = assert!(SCROLLBACK_BYTES_MAX < FRAME_BYTES_MAX);

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Broker → holder: JSON [`Hello`].
    Hello = 1,
    /// Holder → broker: JSON [`Welcome`].
    Welcome = 2,
    /// Holder → broker: the scrollback kept so far (raw bytes).
    Replay = 3,
    /// Holder → broker: program output (raw bytes).
    Output = 4,
    /// Holder → broker: JSON [`ExitMessage`]; the program has ended.
    Exit = 5,
    /// Either way: JSON [`ErrorMessage`]; the connection closes after it.
    Error = 6,
    /// Broker → holder: bytes typed into the terminal.
    Input = 7,
    /// Broker → holder: rows and columns, two big-endian `u16`.
    Resize = 8,
    /// Broker → holder: the exit and all output before it are taken; the
    /// holder may go.
    AckExit = 9,
}

impl FrameKind {
    fn of(byte: u8) -> Option<FrameKind> {
        Some(match byte {
            1 => FrameKind::Hello,
            2 => FrameKind::Welcome,
            3 => FrameKind::Replay,
            4 => FrameKind::Output,
            5 => FrameKind::Exit,
            6 => FrameKind::Error,
            7 => FrameKind::Input,
            8 => FrameKind::Resize,
            9 => FrameKind::AckExit,
            _ => return None,
        })
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Its kind.
    pub kind: FrameKind,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// The broker's first frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// [`HOLDER_PROTOCOL_VERSION`] of the broker.
    pub version: u32,
}

/// The holder's answer to a good `Hello`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Welcome {
    /// [`HOLDER_PROTOCOL_VERSION`] of the holder.
    pub version: u32,
    /// The holder's process id.
    pub holder_pid: u32,
    /// The held program's process id.
    pub child_pid: u32,
    /// When the holder started, Unix ms.
    pub started_at_ms: u64,
    /// How many bytes the program has written to its terminal so far; the
    /// replay that follows is the end of them. A broker that knows where
    /// a turn began in this count finds the turn's output in the replay
    /// after a restart. `None` from holders older than this field.
    #[serde(default)]
    pub output_bytes: Option<u64>,
}

/// How the held program ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitMessage {
    /// Exit code (1 when a signal ended it).
    pub code: u32,
    /// The signal, when one ended it.
    pub signal: Option<String>,
}

/// A refusal, with a stable code.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorMessage {
    /// `HOLDER_FRAME_TOO_LARGE`, `HOLDER_BAD_FRAME`,
    /// `HOLDER_VERSION_UNSUPPORTED`, `HOLDER_BUSY`.
    pub code: String,
    /// What is wrong.
    pub message: String,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The length prefix is over [`FRAME_BYTES_MAX`] or zero (`HOLDER_FRAME_TOO_LARGE`).
    #[error("frame of {len} bytes is over the limit of {FRAME_BYTES_MAX}")]
    TooLarge {
        /// The announced length.
        len: usize,
    },
    /// The kind byte is unknown or the payload does not parse (`HOLDER_BAD_FRAME`).
    #[error("bad frame: {0}")]
    Bad(String),
    /// The peer closed the connection between frames.
    #[error("connection closed")]
    Closed,
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl WireError {
    /// The stable code sent back in an `Error` frame.
    pub fn code(&self) -> &'static str {
        match self {
            WireError::TooLarge { .. } => "HOLDER_FRAME_TOO_LARGE",
            WireError::Bad(_) => "HOLDER_BAD_FRAME",
            WireError::Closed | WireError::Io(_) => "HOLDER_IO",
        }
    }
}

/// Writes one frame in a single `write_all`, so frames written under one
/// lock never interleave.
pub fn write_frame(
    writer: &mut impl Write,
    kind: FrameKind,
    payload: &[u8],
) -> std::io::Result<()> {
    let len = payload.len() + 1;
    if len > FRAME_BYTES_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "frame over the limit",
        ));
    }
    let mut buf = Vec::with_capacity(4 + len);
    buf.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    buf.push(kind as u8);
    buf.extend_from_slice(payload);
    writer.write_all(&buf)?;
    writer.flush()
}

/// Writes a JSON frame.
pub fn write_json(
    writer: &mut impl Write,
    kind: FrameKind,
    value: &impl Serialize,
) -> std::io::Result<()> {
    let payload = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    write_frame(writer, kind, &payload)
}

/// Reads one frame; the length is checked before anything is allocated.
pub fn read_frame(reader: &mut impl Read) -> Result<Frame, WireError> {
    let mut header = [0u8; 4];
    match reader.read_exact(&mut header) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(WireError::Closed);
        }
        Err(err) => return Err(WireError::Io(err)),
    }
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 || len > FRAME_BYTES_MAX {
        return Err(WireError::TooLarge { len });
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    let kind = FrameKind::of(body[0])
        .ok_or_else(|| WireError::Bad(format!("unknown frame kind {}", body[0])))?;
    body.remove(0);
    Ok(Frame {
        kind,
        payload: body,
    })
}

/// Parses a JSON payload.
pub fn parse<T: for<'de> Deserialize<'de>>(frame: &Frame) -> Result<T, WireError> {
    serde_json::from_slice(&frame.payload).map_err(|err| WireError::Bad(err.to_string()))
}

/// Encodes a terminal size for a `Resize` frame.
pub fn resize_payload(rows: u16, cols: u16) -> [u8; 4] {
    let [r0, r1] = rows.to_be_bytes();
    let [c0, c1] = cols.to_be_bytes();
    [r0, r1, c0, c1]
}

/// Decodes a `Resize` frame: rows and columns.
pub fn parse_resize(frame: &Frame) -> Result<(u16, u16), WireError> {
    match frame.payload.as_slice() {
        [r0, r1, c0, c1] => Ok((
            u16::from_be_bytes([*r0, *r1]),
            u16::from_be_bytes([*c0, *c1]),
        )),
        _ => Err(WireError::Bad("a resize is four bytes".to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_welcome_from_a_holder_that_does_not_count_its_output_still_reads() {
        let old = r#"{"version":1,"holder_pid":7,"child_pid":8,"started_at_ms":9}"#;
        let welcome: Welcome = serde_json::from_str(old).expect("an older welcome");
        assert_eq!(welcome.output_bytes, None);
        let new =
            r#"{"version":1,"holder_pid":7,"child_pid":8,"started_at_ms":9,"output_bytes":42}"#;
        let welcome: Welcome = serde_json::from_str(new).expect("a newer welcome");
        assert_eq!(welcome.output_bytes, Some(42));
    }

    #[test]
    fn frames_round_trip_and_oversized_lengths_are_refused() {
        let mut buf = Vec::new();
        write_frame(&mut buf, FrameKind::Output, b"hello").expect("write");
        let frame = read_frame(&mut buf.as_slice()).expect("read");
        assert_eq!(frame.kind, FrameKind::Output);
        assert_eq!(frame.payload, b"hello");
        let huge = (FRAME_BYTES_MAX as u32 + 1).to_be_bytes();
        let err = read_frame(&mut huge.as_slice()).expect_err("too large");
        assert_eq!(err.code(), "HOLDER_FRAME_TOO_LARGE");
        let bad = [0u8, 0, 0, 1, 200];
        assert_eq!(
            read_frame(&mut bad.as_slice()).expect_err("bad").code(),
            "HOLDER_BAD_FRAME"
        );
    }
}
