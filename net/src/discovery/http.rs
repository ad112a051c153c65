//! Just enough HTTP/1.1 to ask tailscaled's LocalAPI one question over its
//! unix socket: one `GET` with `Connection: close`, the whole answer read
//! under a size bound, then parsed by [`parse_response`] (pure, so the
//! odd shapes a server may send are unit-tested without a socket).

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest answer read from the LocalAPI. A status of a tailnet with
/// thousands of peers is a few MiB; anything larger is not tailscaled.
pub const RESPONSE_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Largest header block accepted.
const HEADER_BYTES_MAX: usize = 64 * 1024;

/// Why a request over the socket failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// Nothing listens on the socket, or it is not a socket.
    #[error("cannot connect to {path}: {cause}")]
    Connect {
        /// The socket path.
        path: String,
        /// The system's reason.
        cause: String,
    },
    /// The connection broke while talking.
    #[error("talking to {path}: {cause}")]
    Io {
        /// The socket path.
        path: String,
        /// The system's reason.
        cause: String,
    },
    /// No complete answer within the deadline.
    #[error("no answer from {path} within {timeout_ms} ms")]
    Timeout {
        /// The socket path.
        path: String,
        /// The deadline.
        timeout_ms: u64,
    },
    /// The answer is not HTTP this parser understands, or too large.
    #[error("malformed HTTP answer: {0}")]
    Malformed(String),
}

/// A parsed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

/// `GET path` on the unix socket at `socket`, with `Host: host`, within
/// `timeout`.
pub async fn get_unix(
    socket: &Path,
    host: &str,
    path_and_query: &str,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let display = socket.display().to_string();
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|err| HttpError::Connect {
                path: display.clone(),
                cause: err.to_string(),
            })?;
        let request = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: scout\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        );
        let io_error = |err: std::io::Error| HttpError::Io {
            path: display.clone(),
            cause: err.to_string(),
        };
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(io_error)?;
        let mut raw = Vec::new();
        let mut limited = (&mut stream).take(RESPONSE_BYTES_MAX as u64 + 1);
        limited.read_to_end(&mut raw).await.map_err(io_error)?;
        if raw.len() > RESPONSE_BYTES_MAX {
            return Err(HttpError::Malformed(format!(
                "answer larger than {RESPONSE_BYTES_MAX} bytes"
            )));
        }
        parse_response(&raw)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(HttpError::Timeout {
            path: display,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        }),
    }
}

/// Parses a whole HTTP/1.x answer read until the server closed: status
/// line, headers, then a body framed by `Content-Length`, by chunked
/// transfer coding, or by the end of the stream.
pub fn parse_response(raw: &[u8]) -> Result<Response, HttpError> {
    let malformed = |what: &str| HttpError::Malformed(what.to_owned());
    let header_end = find(raw, b"\r\n\r\n")
        .filter(|end| *end <= HEADER_BYTES_MAX)
        .ok_or_else(|| malformed("no end of headers"))?;
    let head =
        std::str::from_utf8(&raw[..header_end]).map_err(|_| malformed("headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed(format!(
            "status line `{status_line}` is not HTTP/1.x"
        )));
    }
    let status: u16 = parts
        .next()
        .and_then(|code| code.parse().ok())
        .filter(|code| (100..1000).contains(code))
        .ok_or_else(|| HttpError::Malformed(format!("bad status line `{status_line}`")))?;
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(HttpError::Malformed(format!("bad header line `{line}`")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse()
                    .map_err(|_| HttpError::Malformed(format!("bad Content-Length `{value}`")))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .split(',')
                .any(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
        }
    }
    let rest = &raw[header_end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(length) = content_length {
        if rest.len() < length {
            return Err(HttpError::Malformed(format!(
                "body cut short: {} of {length} bytes",
                rest.len()
            )));
        }
        rest[..length].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body })
}

/// Decodes a chunked body (trailers ignored).
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n")
            .ok_or_else(|| HttpError::Malformed("chunk size cut short".into()))?;
        let size_line = std::str::from_utf8(&rest[..line_end])
            .map_err(|_| HttpError::Malformed("chunk size is not text".into()))?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| HttpError::Malformed(format!("bad chunk size `{size_hex}`")))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        // A size near `usize::MAX` would overflow `size + 2`: checked, so
        // a hostile size is an error rather than a panic.
        let chunk_end = size.checked_add(2).filter(|end| *end <= rest.len());
        let Some(chunk_end) = chunk_end else {
            return Err(HttpError::Malformed("chunk cut short".into()));
        };
        if &rest[size..chunk_end] != b"\r\n" {
            return Err(HttpError::Malformed("chunk cut short".into()));
        }
        if body.len().saturating_add(size) > RESPONSE_BYTES_MAX {
            return Err(HttpError::Malformed(format!(
                "answer larger than {RESPONSE_BYTES_MAX} bytes"
            )));
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[chunk_end..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_bodies_are_cut_at_their_length() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}trailing";
        let response = parse_response(raw).unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"{}");
    }

    #[test]
    fn chunked_bodies_are_joined() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;ext=1\r\n:1}\r\n0\r\n\r\n";
        assert_eq!(parse_response(raw).unwrap().body, b"{\"a\":1}");
    }

    #[test]
    fn bodies_without_framing_run_to_the_end() {
        let raw = b"HTTP/1.0 403 Forbidden\r\n\r\nbad origin\n";
        let response = parse_response(raw).unwrap();
        assert_eq!(response.status, 403);
        assert_eq!(response.body, b"bad origin\n");
    }

    #[test]
    fn broken_answers_are_errors_not_panics() {
        for raw in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nshort\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nab\r\n",
        ] {
            assert!(
                parse_response(raw).is_err(),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}
