//! Terminal output as plain text: [`PlainText`] strips escape sequences
//! from a byte stream (keeping `\n`, `\r`, `\t` and backspace, so a reader
//! still sees progress lines overwrite themselves), and [`Transcript`]
//! applies those controls to build the lines a person would read.

/// Turns a terminal byte stream into text. Keeps its parser state between
/// calls, so an escape sequence or a UTF-8 character split across two reads
/// is handled.
#[derive(Default)]
pub struct PlainText {
    parser: vte::Parser,
    sink: TextSink,
}

impl std::fmt::Debug for PlainText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainText").finish_non_exhaustive()
    }
}

/// Text from a model, an agent's CLI or a peer as it may reach a person's
/// terminal: without escape sequences (a sequence cut between two pieces
/// of a stream is held in `plain`) and without control characters but
/// newlines and tabs, so it can neither move the cursor nor talk to the
/// terminal (titles, clipboard).
pub fn terminal_safe(plain: &mut PlainText, text: &str) -> String {
    plain
        .feed(text.as_bytes())
        .chars()
        .filter(|ch| matches!(ch, '\n' | '\t') || !ch.is_control())
        .collect()
}

/// [`terminal_safe`] for a whole text.
pub fn terminal_safe_text(text: &str) -> String {
    terminal_safe(&mut PlainText::new(), text)
}

impl PlainText {
    /// A stripper in the ground state.
    pub fn new() -> PlainText {
        PlainText::default()
    }

    /// The text in `bytes`, without escape sequences.
    pub fn feed(&mut self, bytes: &[u8]) -> String {
        self.parser.advance(&mut self.sink, bytes);
        std::mem::take(&mut self.sink.out)
    }
}

#[derive(Default)]
struct TextSink {
    out: String,
}

impl vte::Perform for TextSink {
    fn print(&mut self, c: char) {
        self.out.push(c);
    }

    fn execute(&mut self, byte: u8) {
        match byte {
            b'\n' | b'\r' | b'\t' | 0x08 => self.out.push(char::from(byte)),
            _ => {}
        }
    }

    fn csi_dispatch(
        &mut self,
        params: &vte::Params,
        intermediates: &[u8],
        _ignore: bool,
        action: char,
    ) {
        // Some programs move the cursor right instead of printing spaces.
        if intermediates.is_empty() && action == 'C' {
            let n_cols = params
                .iter()
                .next()
                .and_then(|param| param.first().copied())
                .unwrap_or(1)
                .clamp(1, 512);
            self.out
                .extend(std::iter::repeat_n(' ', usize::from(n_cols)));
        }
    }
}

/// Lines of text built from [`PlainText`] output, with `\r` returning to
/// the start of the line and backspace moving left, bounded to the last
/// `chars_max` characters.
#[derive(Debug, Clone)]
pub struct Transcript {
    lines: std::collections::VecDeque<String>,
    current: Vec<char>,
    col: usize,
    n_chars: usize,
    chars_max: usize,
    truncated: bool,
}

impl Transcript {
    /// An empty transcript keeping at most `chars_max` characters.
    pub fn new(chars_max: usize) -> Transcript {
        Transcript {
            lines: std::collections::VecDeque::new(),
            current: Vec::new(),
            col: 0,
            n_chars: 0,
            chars_max,
            truncated: false,
        }
    }

    /// Applies text (as [`PlainText::feed`] returns it).
    pub fn push_str(&mut self, text: &str) {
        for ch in text.chars() {
            match ch {
                '\n' => self.finish_line(),
                '\r' => self.col = 0,
                '\x08' => self.col = self.col.saturating_sub(1),
                _ => {
                    if self.col < self.current.len() {
                        self.current[self.col] = ch;
                    } else {
                        // A current line longer than the whole budget is a
                        // runaway: keep its start only.
                        if self.current.len() >= self.chars_max {
                            self.truncated = true;
                            continue;
                        }
                        self.current.push(ch);
                    }
                    self.col += 1;
                }
            }
        }
    }

    /// Whether old lines were dropped to stay within the bound.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The lines so far, the unfinished one last (when not empty).
    pub fn lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.lines.iter().cloned().collect();
        if !self.current.is_empty() {
            lines.push(self.current.iter().collect());
        }
        lines
    }

    fn finish_line(&mut self) {
        let line: String = self.current.drain(..).collect();
        let line = line.trim_end().to_owned();
        self.n_chars += line.chars().count() + 1;
        self.lines.push_back(line);
        self.col = 0;
        while self.n_chars > self.chars_max {
            let Some(dropped) = self.lines.pop_front() else {
                break;
            };
            self.n_chars -= dropped.chars().count() + 1;
            self.truncated = true;
        }
    }
}

/// Decodes a byte stream as UTF-8 text chunk by chunk: a character split
/// across two chunks is held back until it is complete, invalid bytes become
/// U+FFFD. Terminal clients get text frames, and a frame must never end in
/// half a character.
#[derive(Debug, Default)]
pub struct Utf8Decoder {
    pending: Vec<u8>,
}

impl Utf8Decoder {
    /// A decoder with nothing held back.
    pub fn new() -> Utf8Decoder {
        Utf8Decoder::default()
    }

    /// [`Utf8Decoder::decode`] of an owned buffer: valid text (the usual
    /// case) becomes the string without a copy.
    pub fn decode_owned(&mut self, bytes: Vec<u8>) -> String {
        if !self.pending.is_empty() {
            return self.decode(&bytes);
        }
        match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(err) => self.decode(err.as_bytes()),
        }
    }

    /// The text of `bytes` (with what was held back before), holding back
    /// an incomplete last character.
    pub fn decode(&mut self, bytes: &[u8]) -> String {
        let mut input = std::mem::take(&mut self.pending);
        input.extend_from_slice(bytes);
        let mut out = String::with_capacity(input.len());
        let mut rest = input.as_slice();
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    out.push_str(text);
                    break;
                }
                Err(err) => {
                    let (valid, after) = rest.split_at(err.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match err.error_len() {
                        Some(n_bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[n_bad..];
                        }
                        None => {
                            self.pending = after.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_decoder_holds_back_split_characters() {
        let mut decoder = Utf8Decoder::new();
        assert_eq!(decoder.decode(b"caf\xc3"), "caf");
        assert_eq!(decoder.decode(b"\xa9 \xe2\x82"), "\u{e9} ");
        assert_eq!(decoder.decode(b"\xac!"), "\u{20ac}!");
        assert_eq!(decoder.decode(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(decoder.decode_owned(b"ok \xe2\x82".to_vec()), "ok ");
        assert_eq!(decoder.decode_owned(b"\xac".to_vec()), "\u{20ac}");
    }

    #[test]
    fn strips_sequences_split_across_reads() {
        let mut text = PlainText::new();
        let mut out = text.feed(b"\x1b[1;3");
        out += &text.feed(b"1mred\x1b[0m caf\xc3");
        out += &text.feed(b"\xa9\r\n\x1b]0;title\x07done");
        assert_eq!(out, "red caf\u{e9}\r\ndone");
    }

    #[test]
    fn transcript_applies_carriage_returns_and_backspaces() {
        let mut transcript = Transcript::new(1000);
        transcript.push_str("progress 10%\rprogress 99%\r\nab\x08c\nlast");
        assert_eq!(transcript.lines(), vec!["progress 99%", "ac", "last"]);
    }

    #[test]
    fn transcript_keeps_the_tail_within_its_bound() {
        let mut transcript = Transcript::new(21);
        for idx in 0..10 {
            transcript.push_str(&format!("line {idx}\n"));
        }
        assert!(transcript.truncated());
        assert_eq!(transcript.lines(), vec!["line 7", "line 8", "line 9"]);
    }
}
