//! A deliberately small HTTP/1.1 client over a plain TCP socket, so the
//! battery controls every byte: foreign `Host` headers, bodies that are not
//! UTF-8, lying content types, 10 MB uploads, percent-encoded paths that a
//! normal client would normalise away.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// How long the battery waits for any answer: far above what a healthy
/// broker needs, so only a real hang trips it.
pub const ANSWER_BOUND: Duration = Duration::from_secs(30);

/// Bodies above this are written from a second thread while the answer is
/// read, so a broker that answers early (413) and closes is still heard.
const BODY_BYTES_WRITTEN_INLINE_MAX: usize = 64 * 1024;

/// Largest response head read: the broker's heads are a few hundred bytes.
const HEAD_BYTES_MAX: usize = 64 * 1024;

/// Largest response body kept: error bodies echo at most a name or two.
const BODY_BYTES_KEPT_MAX: usize = 4 * 1024 * 1024;

/// One request as bytes on the wire.
#[derive(Debug, Clone, Default)]
pub struct RawRequest {
    /// `GET`, `POST`, `DELETE`.
    pub method: String,
    /// The request target exactly as sent (already percent-encoded).
    pub target: String,
    /// Headers; a `Host` is added (the broker's own address) unless given.
    pub headers: Vec<(String, String)>,
    /// The body; a `Content-Length` is added when the method is POST or the
    /// body is not empty, unless `chunked` is set.
    pub body: Vec<u8>,
    /// Send the body with `Transfer-Encoding: chunked` instead.
    pub chunked: bool,
}

impl RawRequest {
    /// A request with no headers and no body.
    pub fn new(method: &str, target: &str) -> RawRequest {
        RawRequest {
            method: method.to_owned(),
            target: target.to_owned(),
            ..RawRequest::default()
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> RawRequest {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Adds `Authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> RawRequest {
        self.header("Authorization", &format!("Bearer {token}"))
    }

    /// Sets a JSON body (and its content type).
    pub fn json(self, body: &Value) -> RawRequest {
        self.header("Content-Type", "application/json")
            .body(body.to_string().into_bytes())
    }

    /// Sets raw body bytes.
    pub fn body(mut self, body: Vec<u8>) -> RawRequest {
        self.body = body;
        self
    }

    /// The headers a WebSocket client sends to upgrade.
    pub fn websocket(self) -> RawRequest {
        self.header("Upgrade", "websocket")
            .header("Connection", "Upgrade")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("Sec-WebSocket-Version", "13")
    }

    fn head(&self, addr: SocketAddr) -> Vec<u8> {
        let mut head = format!("{} {} HTTP/1.1\r\n", self.method, self.target);
        let has = |name: &str| {
            self.headers
                .iter()
                .any(|(given, _)| given.eq_ignore_ascii_case(name))
        };
        if !has("host") {
            head.push_str(&format!("Host: {addr}\r\n"));
        }
        if !has("connection") {
            head.push_str("Connection: close\r\n");
        }
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if self.chunked {
            head.push_str("Transfer-Encoding: chunked\r\n");
        } else if self.method == "POST" || !self.body.is_empty() {
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        head.push_str("\r\n");
        head.into_bytes()
    }

    fn framed_body(&self) -> Vec<u8> {
        if !self.chunked {
            return self.body.clone();
        }
        let mut out = Vec::with_capacity(self.body.len() + 1024);
        for chunk in self.body.chunks(64 * 1024) {
            out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }
}

/// What the broker answered.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (empty for streams and upgrades, which are not read).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(given, _)| given == name)
            .map(|(_, value)| value.as_str())
    }

    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The stable code of an error answer (`{"error":{"code":…}}`).
    pub fn code(&self) -> Option<String> {
        self.json()
            .and_then(|body| body["error"]["code"].as_str().map(str::to_owned))
    }

    /// `401 UNAUTHORIZED`-style summary for failure messages.
    pub fn summary(&self) -> String {
        format!(
            "{} {}",
            self.status,
            String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
        )
    }

    /// Whether this is the broker's typed client error: a 4xx status with
    /// an UPPER_SNAKE code in the JSON error shape.
    pub fn is_typed_client_error(&self) -> bool {
        (400..500).contains(&self.status)
            && self.code().is_some_and(|code| {
                !code.is_empty()
                    && code
                        .chars()
                        .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '_')
            })
    }
}

/// Sends one request on a new connection and reads the answer.
pub fn send(addr: SocketAddr, request: &RawRequest) -> Result<RawResponse, String> {
    let mut stream = TcpStream::connect(addr).map_err(|err| format!("connect: {err}"))?;
    stream
        .set_read_timeout(Some(ANSWER_BOUND))
        .map_err(|err| err.to_string())?;
    stream
        .set_write_timeout(Some(ANSWER_BOUND))
        .map_err(|err| err.to_string())?;
    let _ = stream.set_nodelay(true);
    stream
        .write_all(&request.head(addr))
        .map_err(|err| format!("write head: {err}"))?;
    let body = request.framed_body();
    let writer = if body.len() > BODY_BYTES_WRITTEN_INLINE_MAX {
        let mut upload = stream.try_clone().map_err(|err| err.to_string())?;
        // The broker may refuse early and close; a failed write is then
        // expected, and the answer read below is what counts.
        Some(std::thread::spawn(move || {
            let _ = upload.write_all(&body);
        }))
    } else {
        stream
            .write_all(&body)
            .map_err(|err| format!("write body: {err}"))?;
        None
    };
    let answer = read_response(&mut stream);
    // A broker that answered without reading the whole body would leave the
    // upload blocked; shutting the socket down ends it at once.
    let _ = stream.shutdown(std::net::Shutdown::Both);
    drop(stream);
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    answer
}

fn read_response(stream: &mut TcpStream) -> Result<RawResponse, String> {
    let mut buffer = Vec::new();
    let head_end = loop {
        if let Some(end) = find(&buffer, b"\r\n\r\n") {
            break end;
        }
        if buffer.len() > HEAD_BYTES_MAX {
            return Err("a response head larger than 64 KiB".to_owned());
        }
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk) {
            Ok(0) => {
                return Err(format!(
                    "the connection closed before a response ({} bytes read)",
                    buffer.len()
                ));
            }
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(err) => return Err(format!("no response: {err}")),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP status line: {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let mut response = RawResponse {
        status,
        headers,
        body: Vec::new(),
    };
    let rest = buffer[head_end + 4..].to_vec();
    let is_stream = response
        .header("content-type")
        .is_some_and(|kind| kind.contains("text/event-stream"));
    if status == 101 || is_stream {
        return Ok(response);
    }
    response.body = if let Some(length) = response
        .header("content-length")
        .and_then(|length| length.parse::<usize>().ok())
    {
        read_exactly(stream, rest, length.min(BODY_BYTES_KEPT_MAX))?
    } else if response
        .header("transfer-encoding")
        .is_some_and(|coding| coding.contains("chunked"))
    {
        read_chunked(stream, rest)?
    } else {
        read_to_end(stream, rest)?
    };
    Ok(response)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn read_exactly(
    stream: &mut TcpStream,
    mut body: Vec<u8>,
    length: usize,
) -> Result<Vec<u8>, String> {
    while body.len() < length {
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(err) => return Err(format!("reading the body: {err}")),
        }
    }
    body.truncate(length);
    Ok(body)
}

fn read_to_end(stream: &mut TcpStream, mut body: Vec<u8>) -> Result<Vec<u8>, String> {
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(body),
            Ok(n) => {
                body.extend_from_slice(&chunk[..n]);
                if body.len() > BODY_BYTES_KEPT_MAX {
                    return Ok(body);
                }
            }
            Err(err) => return Err(format!("reading the body: {err}")),
        }
    }
}

fn read_chunked(stream: &mut TcpStream, mut raw: Vec<u8>) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        // Decode what has arrived; stop at the last chunk.
        let mut pos = 0;
        let mut complete = false;
        let mut decoded = Vec::new();
        while let Some(line_end) = find(&raw[pos..], b"\r\n") {
            let size_text = String::from_utf8_lossy(&raw[pos..pos + line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            let data_start = pos + line_end + 2;
            if size == 0 {
                complete = true;
                break;
            }
            if raw.len() < data_start + size + 2 {
                break;
            }
            decoded.extend_from_slice(&raw[data_start..data_start + size]);
            pos = data_start + size + 2;
        }
        if complete {
            body.extend_from_slice(&decoded);
            return Ok(body);
        }
        if raw.len() > BODY_BYTES_KEPT_MAX {
            body.extend_from_slice(&decoded);
            return Ok(body);
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                body.extend_from_slice(&decoded);
                return Ok(body);
            }
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(err) => return Err(format!("reading the body: {err}")),
        }
    }
}

/// Percent-encodes every byte outside the unreserved set, so any string can
/// travel as one path segment and reach the broker's router intact.
pub fn encode_segment(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
