//! The output of a flight: one type, one limit and one truncation rule for
//! every place output is held (the store's output and result columns, the
//! wire's flight updates, the PTY runtime's answer, the origin's copy).
//!
//! The rule: a [`FlightOutput`] never holds more than
//! [`FLIGHT_OUTPUT_BYTES_MAX`] bytes. When text would go past the limit, the
//! oldest bytes are cut on a character boundary, because the end of an
//! agent's output (its answer, the last error) is what a reader needs, and
//! the text then starts with the marker `[… N bytes cut]\n`, N counting every
//! byte cut so far, so a reader knows the beginning is missing. The marker
//! appears exactly when something was cut.
//!
//! A cut leaves [`FLIGHT_OUTPUT_CUT_SLACK_BYTES`] of room below the limit, so
//! the next cut happens only after that many more bytes arrived: appending is
//! amortised O(length of the appended text), never a copy of the whole
//! output per append.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Bytes of flight output held anywhere, marker included. One MiB keeps
/// pages of a long agent answer (most are a few KiB) while one flight
/// update, which carries at most this much, still fits a mesh frame with
/// room to spare (`wire::FRAME_BYTES_MAX` asserts it) and one SQLite row
/// stays cheap to rewrite.
pub const FLIGHT_OUTPUT_BYTES_MAX: usize = 1024 * 1024;

/// Room a cut leaves below [`FLIGHT_OUTPUT_BYTES_MAX`]: a quarter of the
/// limit, so the copy a cut costs is paid once per quarter MiB of new output
/// (at most about four copied bytes per appended byte), while at least
/// three quarters of the limit of the newest output is always kept.
pub const FLIGHT_OUTPUT_CUT_SLACK_BYTES: usize = FLIGHT_OUTPUT_BYTES_MAX / 4;

/// Bytes of the longest cut marker: `[… ` (5), a `u64` in decimal (20),
/// ` bytes cut]\n` (12), rounded up.
pub const FLIGHT_OUTPUT_MARKER_BYTES_MAX: usize = 40;

const _: () = assert!(
    FLIGHT_OUTPUT_CUT_SLACK_BYTES + FLIGHT_OUTPUT_MARKER_BYTES_MAX < FLIGHT_OUTPUT_BYTES_MAX
);

const MARKER_START: &str = "[… ";
const MARKER_END: &str = " bytes cut]\n";

/// Digits of the largest `u64`, the longest count a marker prints.
const U64_DIGITS_MAX: usize = 20;

const _: () = assert!(
    MARKER_START.len() + U64_DIGITS_MAX + MARKER_END.len() <= FLIGHT_OUTPUT_MARKER_BYTES_MAX
);

/// Output longer than [`FLIGHT_OUTPUT_BYTES_MAX`] where a bounded one was
/// expected: a peer or a client sent text no honest sender can hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("flight output is {len} bytes; the limit is {max}")]
pub struct OutputTooLarge {
    /// The length received, in bytes.
    pub len: usize,
    /// The limit, in bytes.
    pub max: usize,
}

impl OutputTooLarge {
    /// The stable code of this error.
    pub fn code(&self) -> &'static str {
        "OUTPUT_TOO_LARGE"
    }
}

/// A flight's output: a string of at most [`FLIGHT_OUTPUT_BYTES_MAX`] bytes
/// that keeps its tail (see the module doc). Serialized as a plain string.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct FlightOutput {
    /// The marker (when something was cut) followed by the kept tail.
    text: String,
    /// Bytes cut so far; 0 when nothing was.
    cut_bytes: u64,
    /// Bytes of the marker at the start of `text`; 0 when nothing was cut.
    marker_bytes: usize,
}

impl FlightOutput {
    /// Empty output.
    pub fn new() -> FlightOutput {
        FlightOutput::default()
    }

    /// `text` bounded by the rule: kept whole when it fits, its tail behind
    /// a marker otherwise. Text that already starts with a marker (output
    /// read back from the store) keeps counting from it.
    pub fn from_text(text: impl Into<String>) -> FlightOutput {
        FlightOutput::from_text_within(text.into(), FLIGHT_OUTPUT_BYTES_MAX)
    }

    /// Appends `chunk`, cutting the oldest bytes when the limit is reached.
    pub fn push_str(&mut self, chunk: &str) {
        self.push_str_within(chunk, FLIGHT_OUTPUT_BYTES_MAX);
    }

    /// The output as text, marker included.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The output as an owned string, marker included.
    pub fn into_string(self) -> String {
        self.text
    }

    /// Length in bytes, marker included; never over the limit.
    pub fn len(&self) -> usize {
        self.text.len()
    }

    /// Whether there is no output at all.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Bytes cut from the start so far; 0 when the output is whole.
    pub fn cut_bytes(&self) -> u64 {
        self.cut_bytes
    }

    /// Bytes of output this stands for: the bytes cut and the kept tail,
    /// the marker not counted.
    pub fn total_bytes(&self) -> u64 {
        self.cut_bytes + (self.text.len() - self.marker_bytes) as u64
    }

    /// `text` as it is when it fits in [`FLIGHT_OUTPUT_BYTES_MAX`], the
    /// typed error otherwise. This is how output from a peer or a client is taken in.
    pub fn try_from_text(text: String) -> Result<FlightOutput, OutputTooLarge> {
        if text.len() > FLIGHT_OUTPUT_BYTES_MAX {
            return Err(OutputTooLarge {
                len: text.len(),
                max: FLIGHT_OUTPUT_BYTES_MAX,
            });
        }
        Ok(FlightOutput::from_text(text))
    }

    fn from_text_within(text: String, bytes_max: usize) -> FlightOutput {
        if text.len() <= bytes_max {
            let (cut_bytes, marker_bytes) = parse_marker(&text).unwrap_or((0, 0));
            return FlightOutput {
                text,
                cut_bytes,
                marker_bytes,
            };
        }
        let mut output = FlightOutput::new();
        output.push_str_within(&text, bytes_max);
        output
    }

    fn push_str_within(&mut self, chunk: &str, bytes_max: usize) {
        if self.text.len() + chunk.len() <= bytes_max {
            self.text.push_str(chunk);
            return;
        }
        let keep_bytes = bytes_max
            - FLIGHT_OUTPUT_CUT_SLACK_BYTES.min(bytes_max / 4)
            - FLIGHT_OUTPUT_MARKER_BYTES_MAX;
        let old_tail = &self.text[self.marker_bytes..];
        let tail_bytes = old_tail.len() + chunk.len();
        // Where the kept part starts in `old_tail + chunk`, moved forward to
        // a character boundary: cutting a little more keeps the bound.
        let mut cut_at = tail_bytes - keep_bytes;
        let (kept_old, kept_chunk) = if cut_at < old_tail.len() {
            while !old_tail.is_char_boundary(cut_at) {
                cut_at += 1;
            }
            (&old_tail[cut_at..], chunk)
        } else {
            let mut in_chunk = cut_at - old_tail.len();
            while !chunk.is_char_boundary(in_chunk) {
                in_chunk += 1;
            }
            cut_at = old_tail.len() + in_chunk;
            ("", &chunk[in_chunk..])
        };
        self.cut_bytes = self.cut_bytes.saturating_add(cut_at as u64);
        let marker = format!("{MARKER_START}{}{MARKER_END}", self.cut_bytes);
        let mut text =
            String::with_capacity(bytes_max.min(
                marker.len() + kept_old.len() + kept_chunk.len() + FLIGHT_OUTPUT_CUT_SLACK_BYTES,
            ));
        text.push_str(&marker);
        text.push_str(kept_old);
        text.push_str(kept_chunk);
        self.marker_bytes = marker.len();
        self.text = text;
    }
}

/// The count and length of a cut marker at the start of `text`, if any.
fn parse_marker(text: &str) -> Option<(u64, usize)> {
    let rest = text.strip_prefix(MARKER_START)?;
    let digits = rest.find(|c: char| !c.is_ascii_digit())?;
    let count = rest[..digits].parse().ok()?;
    rest[digits..].strip_prefix(MARKER_END)?;
    Some((count, MARKER_START.len() + digits + MARKER_END.len()))
}

impl fmt::Debug for FlightOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl fmt::Display for FlightOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::ops::Deref for FlightOutput {
    type Target = str;

    fn deref(&self) -> &str {
        &self.text
    }
}

impl PartialEq<str> for FlightOutput {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl PartialEq<&str> for FlightOutput {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

impl AsRef<str> for FlightOutput {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

/// Bounds the text by the rule, as [`FlightOutput::from_text`].
impl From<String> for FlightOutput {
    fn from(text: String) -> FlightOutput {
        FlightOutput::from_text(text)
    }
}

/// Bounds the text by the rule, as [`FlightOutput::from_text`].
impl From<&str> for FlightOutput {
    fn from(text: &str) -> FlightOutput {
        FlightOutput::from_text(text)
    }
}

impl From<FlightOutput> for String {
    fn from(output: FlightOutput) -> String {
        output.text
    }
}

impl Serialize for FlightOutput {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

/// Refuses a string over the limit with [`OutputTooLarge`] instead of
/// cutting it: every sender bounds its output, so a longer one comes from a
/// broken or hostile peer, and that is worth an error rather than a quiet
/// repair. (Through postcard the error surfaces as `MALFORMED_FRAME`.)
impl<'de> Deserialize<'de> for FlightOutput {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        FlightOutput::try_from_text(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A small limit, so random appends cross it often.
    const TEST_BYTES_MAX: usize = 200;

    fn push_all(chunks: &[String], bytes_max: usize) -> FlightOutput {
        let mut output = FlightOutput::new();
        for chunk in chunks {
            output.push_str_within(chunk, bytes_max);
        }
        output
    }

    proptest! {
        #[test]
        fn bound_holds_and_tail_is_kept(
            chunks in proptest::collection::vec("[a-zé€😀\n]{0,90}", 0..40),
        ) {
            let output = push_all(&chunks, TEST_BYTES_MAX);
            let whole: String = chunks.concat();
            prop_assert!(output.len() <= TEST_BYTES_MAX);
            let text = output.as_str();
            let tail = &text[output.marker_bytes..];
            prop_assert!(whole.ends_with(tail), "the kept part is a tail");
            prop_assert_eq!(output.cut_bytes() as usize + tail.len(), whole.len());
            let was_cut = whole.len() > TEST_BYTES_MAX;
            prop_assert_eq!(output.cut_bytes() > 0, was_cut);
            prop_assert_eq!(text.starts_with(MARKER_START), was_cut);
            if was_cut {
                let expected = format!("[… {} bytes cut]\n", output.cut_bytes());
                prop_assert!(text.starts_with(&expected), "{text:?}");
                // A cut always leaves the slack and keeps most of the limit.
                prop_assert!(tail.len() >= TEST_BYTES_MAX * 3 / 4 - FLIGHT_OUTPUT_MARKER_BYTES_MAX - 3);
            } else {
                prop_assert_eq!(text, whole.as_str());
            }
        }
    }

    #[test]
    fn cut_lands_on_a_char_boundary() {
        // Three-byte characters: most cut points fall inside one.
        let text = "€".repeat(FLIGHT_OUTPUT_BYTES_MAX / 3 + 10);
        let output = FlightOutput::from_text(text.clone());
        assert!(output.len() <= FLIGHT_OUTPUT_BYTES_MAX);
        let tail = &output.as_str()[output.marker_bytes..];
        assert!(tail.chars().all(|c| c == '€'));
        assert!(text.ends_with(tail));
        assert_eq!(output.cut_bytes() as usize % 3, 0);
    }

    #[test]
    fn marker_appears_exactly_when_something_was_cut() {
        let fits = "x".repeat(FLIGHT_OUTPUT_BYTES_MAX);
        let output = FlightOutput::from_text(fits.clone());
        assert_eq!(output.as_str(), fits);
        assert_eq!(output.cut_bytes(), 0);

        let mut output = FlightOutput::from_text(fits);
        output.push_str("yz");
        assert!(output.as_str().starts_with("[… "));
        assert!(output.as_str().ends_with("xyz"));
        assert!(output.len() <= FLIGHT_OUTPUT_BYTES_MAX);
        let count = output.cut_bytes();
        assert!(
            output
                .as_str()
                .starts_with(&format!("[… {count} bytes cut]\n"))
        );
    }

    #[test]
    fn stored_text_with_a_marker_keeps_counting() {
        let mut output = FlightOutput::from_text("[… 10 bytes cut]\nabc");
        assert_eq!(output.cut_bytes(), 10);
        output.push_str(&"d".repeat(FLIGHT_OUTPUT_BYTES_MAX));
        assert!(output.cut_bytes() > 10);
        assert_eq!(output.as_str().matches("bytes cut]").count(), 1);
    }

    #[test]
    fn serializes_as_a_plain_string() {
        let output = FlightOutput::from_text("héllo");
        assert_eq!(serde_json::to_string(&output).unwrap(), "\"héllo\"");
        assert_eq!(
            postcard::to_allocvec(&output).unwrap(),
            postcard::to_allocvec("héllo").unwrap()
        );
        let back: FlightOutput = serde_json::from_str("\"héllo\"").unwrap();
        assert_eq!(back, output);
    }

    #[test]
    fn an_oversized_string_from_a_peer_is_a_typed_error() {
        let oversized = "a".repeat(FLIGHT_OUTPUT_BYTES_MAX + 1);
        let err = serde_json::from_str::<FlightOutput>(&format!("\"{oversized}\"")).unwrap_err();
        assert!(err.to_string().contains("the limit is"), "{err}");
        let bytes = postcard::to_allocvec(&oversized).unwrap();
        assert!(postcard::from_bytes::<FlightOutput>(&bytes).is_err());
        let err = FlightOutput::try_from_text(oversized).unwrap_err();
        assert_eq!(err.code(), "OUTPUT_TOO_LARGE");
    }

    #[test]
    fn one_large_append_copies_only_its_tail() {
        let mut output = FlightOutput::from_text("start");
        output.push_str(&"b".repeat(3 * FLIGHT_OUTPUT_BYTES_MAX));
        assert!(output.len() <= FLIGHT_OUTPUT_BYTES_MAX);
        assert_eq!(
            output.cut_bytes() as usize + output.len() - output.marker_bytes,
            3 * FLIGHT_OUTPUT_BYTES_MAX + 5
        );
    }
}
