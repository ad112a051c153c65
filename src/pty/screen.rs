//! The screen model of one PTY session: a `vt100` terminal that keeps the
//! visible screen and a bounded scrollback, answers the terminal queries a
//! full-screen CLI sends (cursor position, device attributes, colours), and
//! serves the last lines as plain text.
//!
//! Why answer queries: a TUI started on a headless PTY asks "where is the
//! cursor?" (`ESC [ 6 n`) and waits for the reply before drawing. Nothing
//! would ever answer, so it would stall forever.

use serde::{Deserialize, Serialize};

/// Scrollback rows kept per session, beyond the visible screen. A row costs
/// 32 bytes per column in `vt100`, so 500 rows of 120 columns are about
/// 1.9 MiB: the bulk of the per-session memory budget (4 MiB).
pub const SCROLLBACK_ROWS_MAX: usize = 500;

/// Bytes of query replies buffered between two drains. A program that floods
/// queries without reading the replies gets the first ones only; this bounds
/// what a hostile program can make the broker hold.
pub const REPLY_BYTES_MAX: usize = 4 * 1024;

/// Largest terminal a client may ask for. Bigger sizes only cost memory
/// (every scrollback row is as wide as the screen).
pub const COLS_MAX: u16 = 500;
/// See [`COLS_MAX`].
pub const ROWS_MAX: u16 = 200;

/// The size of a terminal, in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

impl TermSize {
    /// The size a session starts with until a client resizes it: wide enough
    /// for the agent CLIs' layouts, small enough for the memory budget.
    pub const DEFAULT: TermSize = TermSize {
        rows: 30,
        cols: 120,
    };

    /// Whether a client-supplied size is usable.
    pub fn is_valid(self) -> bool {
        (1..=ROWS_MAX).contains(&self.rows) && (1..=COLS_MAX).contains(&self.cols)
    }
}

/// The terminal state of one session.
pub struct Screen {
    parser: vt100::Parser<QueryResponder>,
    /// How many output chunks have been processed: a late-joining client's
    /// redraw covers chunks up to this number, and it skips those when they
    /// reach it through the live stream.
    seq: u64,
}

impl std::fmt::Debug for Screen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Screen")
            .field("size", &self.size())
            .finish_non_exhaustive()
    }
}

impl Screen {
    /// An empty screen of `size` keeping `scrollback_rows` rows of history.
    pub fn new(size: TermSize, scrollback_rows: usize) -> Screen {
        Screen {
            parser: vt100::Parser::new_with_callbacks(
                size.rows,
                size.cols,
                scrollback_rows,
                QueryResponder::default(),
            ),
            seq: 0,
        }
    }

    /// Feeds one chunk of program output into the model; returns the
    /// chunk's sequence number.
    pub fn process(&mut self, bytes: &[u8]) -> u64 {
        self.parser.process(bytes);
        self.seq += 1;
        self.seq
    }

    /// The sequence number of the last chunk processed (0 before any).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The replies to queries seen since the last call, to be written to the
    /// program's input.
    pub fn take_replies(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.parser.callbacks_mut().replies)
    }

    /// Changes the size (the program learns of it through the PTY).
    pub fn resize(&mut self, size: TermSize) {
        self.parser.screen_mut().set_size(size.rows, size.cols);
    }

    /// The current size.
    pub fn size(&self) -> TermSize {
        let (rows, cols) = self.parser.screen().size();
        TermSize { rows, cols }
    }

    /// Whether the program turned on bracketed paste (`ESC [ ? 2004 h`):
    /// only then may pasted text be wrapped in paste markers.
    pub fn bracketed_paste(&self) -> bool {
        self.parser.screen().bracketed_paste()
    }

    /// Bytes that redraw the current screen, modes and cursor on an empty
    /// terminal: what a late-joining terminal client is sent first.
    pub fn redraw_bytes(&self) -> Vec<u8> {
        let screen = self.parser.screen();
        let mut bytes = screen.state_formatted();
        bytes.extend_from_slice(&screen.cursor_state_formatted());
        bytes
    }

    /// The visible screen as plain text, rows joined with `\n` (a row the
    /// program wrapped continues on the next without a break, so long URLs
    /// stay whole).
    pub fn text(&self) -> String {
        self.parser.screen().contents()
    }

    /// The text of the row the cursor is on, without trailing blanks: where
    /// a prompt waits for input.
    pub fn cursor_line(&self) -> String {
        let screen = self.parser.screen();
        let (row, _) = screen.cursor_position();
        let (_, cols) = screen.size();
        screen
            .rows(0, cols)
            .nth(usize::from(row))
            .map(|line| line.trim_end().to_owned())
            .unwrap_or_default()
    }

    /// The last `n_lines` lines of scrollback and screen as plain text,
    /// without the blank rows below the last written one.
    pub fn last_lines(&mut self, n_lines: usize) -> Vec<String> {
        let screen = self.parser.screen_mut();
        let (rows, cols) = screen.size();
        let page = usize::from(rows);
        // Scrolling to the far end tells how much history there is.
        screen.set_scrollback(usize::MAX);
        let history = screen.scrollback();
        let mut lines = Vec::new();
        let mut start = history.saturating_sub(n_lines + page);
        while start < history {
            screen.set_scrollback(history - start);
            let take = page.min(history - start);
            lines.extend(screen.rows(0, cols).take(take).map(trim_row));
            start += take;
        }
        screen.set_scrollback(0);
        lines.extend(screen.rows(0, cols).map(trim_row));
        while lines.last().is_some_and(|line| line.is_empty()) {
            lines.pop();
        }
        let skip = lines.len().saturating_sub(n_lines);
        lines.split_off(skip)
    }
}

fn trim_row(row: String) -> String {
    row.trim_end().to_owned()
}

/// Answers terminal queries the way xterm does, from the screen state at the
/// moment the query is parsed (so a cursor report is exact even when the
/// query sits in the middle of a chunk).
#[derive(Debug, Default)]
struct QueryResponder {
    replies: Vec<u8>,
}

impl QueryResponder {
    fn reply(&mut self, bytes: &[u8]) {
        if self.replies.len() + bytes.len() <= REPLY_BYTES_MAX {
            self.replies.extend_from_slice(bytes);
        }
    }
}

impl vt100::Callbacks for QueryResponder {
    fn unhandled_csi(
        &mut self,
        screen: &mut vt100::Screen,
        i1: Option<u8>,
        i2: Option<u8>,
        params: &[&[u16]],
        c: char,
    ) {
        let first = params.first().and_then(|p| p.first()).copied().unwrap_or(0);
        match (i1, i2, c) {
            // Device status report: "are you OK?" and "where is the cursor?".
            (None, None, 'n') if first == 5 => self.reply(b"\x1b[0n"),
            (None, None, 'n') if first == 6 => {
                let (row, col) = screen.cursor_position();
                self.reply(format!("\x1b[{};{}R", row + 1, col + 1).as_bytes());
            }
            (Some(b'?'), None, 'n') if first == 6 => {
                let (row, col) = screen.cursor_position();
                self.reply(format!("\x1b[?{};{}R", row + 1, col + 1).as_bytes());
            }
            // Primary and secondary device attributes, as xterm.js answers.
            (None, None, 'c') if first == 0 => self.reply(b"\x1b[?1;2c"),
            (Some(b'>'), None, 'c') if first == 0 => self.reply(b"\x1b[>0;276;0c"),
            // Window size in characters and (for cell-size probes) pixels.
            (None, None, 't') if first == 18 => {
                let (rows, cols) = screen.size();
                self.reply(format!("\x1b[8;{rows};{cols}t").as_bytes());
            }
            (None, None, 't') if first == 14 => {
                let (rows, cols) = screen.size();
                let (height, width) = (u32::from(rows) * 16, u32::from(cols) * 8);
                self.reply(format!("\x1b[4;{height};{width}t").as_bytes());
            }
            // Mode queries (DECRQM): "not recognised", so the program falls
            // back instead of waiting.
            (Some(b'?'), Some(b'$'), 'p') => {
                self.reply(format!("\x1b[?{first};0$y").as_bytes());
            }
            _ => {}
        }
    }

    fn unhandled_osc(&mut self, _screen: &mut vt100::Screen, params: &[&[u8]]) {
        // Colour queries (`OSC 10 ; ?` foreground, `OSC 11 ; ?` background):
        // answer a light-on-dark terminal.
        match params {
            [b"10", b"?"] => self.reply(b"\x1b]10;rgb:ffff/ffff/ffff\x1b\\"),
            [b"11", b"?"] => self.reply(b"\x1b]11;rgb:0000/0000/0000\x1b\\"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn screen() -> Screen {
        Screen::new(TermSize { rows: 5, cols: 20 }, 100)
    }

    #[test]
    fn answers_a_cursor_position_query_where_it_was_asked() {
        let mut screen = screen();
        screen.process(b"ab\r\ncd\x1b[6nrest");
        assert_eq!(screen.take_replies(), b"\x1b[2;3R");
        assert!(screen.take_replies().is_empty());
    }

    #[test]
    fn answers_device_attributes_size_and_colours() {
        let mut screen = screen();
        screen.process(b"\x1b[c\x1b[>c\x1b[18t\x1b]11;?\x07\x1b[5n");
        let replies = String::from_utf8(screen.take_replies()).unwrap();
        assert_eq!(
            replies,
            "\x1b[?1;2c\x1b[>0;276;0c\x1b[8;5;20t\x1b]11;rgb:0000/0000/0000\x1b\\\x1b[0n"
        );
    }

    #[test]
    fn replies_are_bounded() {
        let mut screen = screen();
        screen.process(&b"\x1b[6n".repeat(10_000));
        assert!(screen.take_replies().len() <= REPLY_BYTES_MAX);
    }

    #[test]
    fn last_lines_span_scrollback_and_screen() {
        let mut screen = screen();
        for idx in 0..12 {
            screen.process(format!("line {idx}\r\n").as_bytes());
        }
        screen.process(b"$ ");
        assert_eq!(screen.cursor_line(), "$");
        let lines = screen.last_lines(8);
        let expected: Vec<String> = (5..12)
            .map(|idx| format!("line {idx}"))
            .chain(["$".to_owned()])
            .collect();
        assert_eq!(lines, expected);
        assert_eq!(screen.last_lines(100).len(), 13);
        assert_eq!(screen.last_lines(1), vec!["$".to_owned()]);
    }

    #[test]
    fn a_wrapped_url_stays_whole_in_the_text() {
        let mut screen = screen();
        screen.process(b"open https://example.com/login?code=0123456789\r\n");
        assert!(
            screen
                .text()
                .contains("https://example.com/login?code=0123456789"),
            "{:?}",
            screen.text()
        );
    }
}
