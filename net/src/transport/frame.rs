//! Length-prefixed frames on QUIC streams: a 4-byte big-endian length, then
//! that many bytes of body (a postcard-encoded [`scout_mesh::wire`] message).
//!
//! The length is checked against [`FRAME_BYTES_MAX`] before a single body
//! byte is read, so a hostile length prefix costs nothing.

use quinn::{ReadExactError, RecvStream, SendStream};

pub use scout_mesh::wire::FRAME_BYTES_MAX;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than [`FRAME_BYTES_MAX`].
    #[error("FRAME_TOO_LARGE: a frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The stream ended cleanly before a frame started.
    #[error("the stream ended")]
    Finished,
    /// The stream ended in the middle of a frame.
    #[error("MALFORMED_FRAME: the stream ended inside a frame")]
    Truncated,
    /// The connection or stream failed.
    #[error("stream error: {0}")]
    Stream(String),
}

impl FrameError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            FrameError::TooLarge { .. } => "FRAME_TOO_LARGE",
            FrameError::Truncated => "MALFORMED_FRAME",
            FrameError::Finished | FrameError::Stream(_) => "STREAM_CLOSED",
        }
    }
}

/// Reads one frame body.
pub async fn read_frame(recv: &mut RecvStream) -> Result<Vec<u8>, FrameError> {
    let len = read_frame_len(recv).await?;
    read_frame_body(recv, len).await
}

/// Reads a frame's length prefix and checks it against [`FRAME_BYTES_MAX`].
pub async fn read_frame_len(recv: &mut RecvStream) -> Result<usize, FrameError> {
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Err(FrameError::Finished),
        Err(ReadExactError::FinishedEarly(_)) => return Err(FrameError::Truncated),
        Err(ReadExactError::ReadError(err)) => return Err(FrameError::Stream(err.to_string())),
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge {
            len,
            max: FRAME_BYTES_MAX,
        });
    }
    Ok(len)
}

/// Reads a frame body of `len` bytes (a length [`read_frame_len`] checked).
/// The buffer grows with the bytes that arrive, so a length prefix alone
/// (a peer that announces a large frame and sends nothing) reserves no
/// memory.
pub async fn read_frame_body(recv: &mut RecvStream, len: usize) -> Result<Vec<u8>, FrameError> {
    let mut body = Vec::with_capacity(len.min(READ_CHUNK_BYTES_MAX));
    while body.len() < len {
        match recv.read_chunk(len - body.len(), true).await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk.bytes),
            Ok(None) => return Err(FrameError::Truncated),
            Err(err) => return Err(FrameError::Stream(err.to_string())),
        }
    }
    Ok(body)
}

/// Bytes reserved up front for a frame body at most; the rest grows as
/// data arrives.
const READ_CHUNK_BYTES_MAX: usize = 64 * 1024;

/// Writes one frame.
pub async fn write_frame(send: &mut SendStream, body: &[u8]) -> Result<(), FrameError> {
    if body.len() > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge {
            len: body.len(),
            max: FRAME_BYTES_MAX,
        });
    }
    let prefix = u32::try_from(body.len())
        .map_err(|_| FrameError::TooLarge {
            len: body.len(),
            max: FRAME_BYTES_MAX,
        })?
        .to_be_bytes();
    send.write_all(&prefix)
        .await
        .map_err(|err| FrameError::Stream(err.to_string()))?;
    send.write_all(body)
        .await
        .map_err(|err| FrameError::Stream(err.to_string()))?;
    Ok(())
}
