//! The rendered transcript of a structured turn, for the people watching
//! the agent's terminal.
//!
//! A structured turn (`TurnStyle::Structured`) runs the CLI's structured
//! mode in a second, piped process beside the agent's terminal, so the
//! terminal itself shows nothing of it. Its [`TurnEvent`]s are rendered
//! here into short ANSI lines (the prompt with who asked, the streamed
//! text, one line per tool call, and the end with its code and tokens),
//! and the session publishes them on a transcript channel beside its
//! terminal output.
//!
//! Why a transcript *screen* and not lines mixed into the CLI's output:
//! the interactive CLIs draw full-screen or in place with cursor movement,
//! so lines printed between their updates land inside their input box and
//! are overwritten by the next redraw. Instead, a terminal watcher switches
//! to the transcript while a structured turn runs (the CLI's own output is
//! held back; the screen model still takes all of it). The ended turn's
//! transcript stays on screen, so its end can be read, until the CLI draws
//! again (the person types, the CLI updates itself); then the transcript is
//! scrolled up into the watcher's scrollback and the CLI's screen is drawn
//! again from the screen model. The transcript is
//! never fed into the screen model: the adapter reads that model to tell
//! whether the CLI is ready or asks a question, and a model's answer that
//! happens to say "Do you want to proceed?" must not look like one. Nothing
//! of it is ever written to the CLI's standard input.
//!
//! [`TranscriptRenderer`] is pure: events in, terminal text out; text from
//! the model is stripped of escape sequences and control characters before
//! it reaches a watcher's terminal.

use crate::adapter::TurnUsage;
use crate::pty::session::{TurnEvent, TurnFailure, TurnOutcome};
use crate::pty::text::PlainText;

/// The widest transcript line drawn (rules, tool lines, the end line):
/// readable on an 80-column terminal, and narrower terminals get their own
/// width.
pub const TRANSCRIPT_COLS_MAX: usize = 80;

/// The narrowest width rendered for; below it lines are cut at this width
/// and the terminal wraps them.
const TRANSCRIPT_COLS_MIN: usize = 20;

/// Lines of the prompt shown; a longer prompt shows these and how many
/// more there are (the whole prompt is in the invocation).
pub const PROMPT_LINES_MAX: usize = 6;

/// Characters of one prompt line shown (three rows of 80): enough to
/// recognise the request.
pub const PROMPT_LINE_CHARS_MAX: usize = 240;

/// Largest piece of rendered text handed on at once. A CLI may put a whole
/// file into one event; watchers get its first bytes and a mark, so the
/// transcript channel holds at most
/// `TRANSCRIPT_BROADCAST_CHUNKS × TRANSCRIPT_CHUNK_BYTES_MAX` per session.
pub const TRANSCRIPT_CHUNK_BYTES_MAX: usize = 8 * 1024;

/// Characters of a failure message shown on the end line's next line.
const FAILURE_CHARS_MAX: usize = 300;

const DIM: &str = "\x1b[2m";
const BOLD: &str = "\x1b[1m";
const CYAN: &str = "\x1b[36m";
const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const RESET: &str = "\x1b[0m";

/// A full terminal reset (RIS), sent to the screen model and to watchers
/// when the program on the terminal is replaced.
pub const TERMINAL_RESET: &[u8] = b"\x1bc";

/// What a watcher's terminal gets before a transcript: plain attributes,
/// no scroll region, the cursor on the last row of a `rows`-row screen and
/// a fresh line, so the transcript scrolls the CLI's screen up.
pub fn enter_sequence(rows: u16) -> String {
    format!("{RESET}\x1b[r\x1b[?25h\x1b[{rows};1H\r\n")
}

/// What a watcher's terminal gets after a transcript, before the CLI's
/// screen is drawn again: `rows` fresh lines from the last row push the
/// transcript into the watcher's scrollback instead of erasing it.
pub fn leave_sequence(rows: u16) -> String {
    format!("{RESET}\x1b[{rows};1H{}", "\r\n".repeat(usize::from(rows)))
}

/// Who asked for a turn, for its transcript header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TurnAsker {
    /// Who or what asked (`invocation inv-…`, `local API request`), shown as
    /// the header's first words.
    pub by: String,
    /// The node the request came from, when known.
    pub node: Option<String>,
    /// The invocation the turn runs, when routing asked: its flight waits
    /// for the turn's end, also across a broker restart.
    pub invocation_id: Option<String>,
}

impl TurnAsker {
    /// A turn asked through the runtime API of this broker.
    pub fn local_api() -> TurnAsker {
        TurnAsker {
            by: "local API request".to_owned(),
            node: None,
            invocation_id: None,
        }
    }
}

/// What the transcript's header shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnHeader {
    /// The turn's id.
    pub turn_id: String,
    /// Who asked.
    pub asker: TurnAsker,
    /// The Scout conversation, when the turn names one.
    pub conversation: Option<String>,
    /// The prompt.
    pub prompt: String,
}

/// Renders one turn's events into terminal text (see the module docs).
#[derive(Debug)]
pub struct TranscriptRenderer {
    cols: usize,
    plain: PlainText,
    at_line_start: bool,
    streamed_text: bool,
    usage: Option<TurnUsage>,
}

impl TranscriptRenderer {
    /// A renderer for a terminal `cols` wide.
    pub fn new(cols: u16) -> TranscriptRenderer {
        TranscriptRenderer {
            cols: usize::from(cols).clamp(TRANSCRIPT_COLS_MIN, TRANSCRIPT_COLS_MAX),
            plain: PlainText::new(),
            at_line_start: true,
            streamed_text: false,
            usage: None,
        }
    }

    /// The header: a rule with the turn id, who asked, and the prompt.
    pub fn begin(&mut self, header: &TurnHeader) -> String {
        let mut out = String::new();
        let title = format!("── turn {} ", sanitize_line(&header.turn_id));
        out.push_str(&format!("{DIM}{}{RESET}\r\n", rule(&title, self.cols)));
        let mut from = format!("▶ {}", sanitize_line(&header.asker.by));
        if let Some(node) = &header.asker.node {
            from.push_str(&format!(" · from node {}", sanitize_line(node)));
        }
        out.push_str(&format!("{BOLD}{}{RESET}\r\n", cut(&from, self.cols)));
        if let Some(conversation) = &header.conversation {
            let line = format!("  conversation {}", sanitize_line(conversation));
            out.push_str(&format!("{DIM}{}{RESET}\r\n", cut(&line, self.cols)));
        }
        let prompt = strip(&mut PlainText::new(), &header.prompt);
        let lines: Vec<&str> = prompt.trim().lines().collect();
        for line in lines.iter().take(PROMPT_LINES_MAX) {
            let line = cut(line, PROMPT_LINE_CHARS_MAX);
            out.push_str(&format!("{DIM}│{RESET} {line}\r\n"));
        }
        if lines.len() > PROMPT_LINES_MAX {
            let more = lines.len() - PROMPT_LINES_MAX;
            out.push_str(&format!("{DIM}│ … {more} more lines{RESET}\r\n"));
        }
        out.push_str("\r\n");
        self.at_line_start = true;
        out
    }

    /// The text an event adds (empty for events shown only at the end).
    pub fn event(&mut self, event: &TurnEvent) -> String {
        match event {
            TurnEvent::Output(text) => {
                let text = strip(&mut self.plain, text);
                if text.is_empty() {
                    return String::new();
                }
                self.streamed_text = true;
                self.text(&bounded(text))
            }
            TurnEvent::Tool(tool) => {
                let mut out = self.line_break();
                let line = format!("⚙ {}", sanitize_line(tool));
                out.push_str(&format!("{CYAN}{}{RESET}\r\n", cut(&line, self.cols)));
                out
            }
            TurnEvent::Usage(usage) => {
                self.usage = Some(*usage);
                String::new()
            }
            TurnEvent::Finished(outcome) => self.end(outcome),
        }
    }

    fn end(&mut self, outcome: &TurnOutcome) -> String {
        let mut out = String::new();
        if let TurnOutcome::Completed { response } = outcome
            && !self.streamed_text
        {
            let response = strip(&mut PlainText::new(), response);
            out.push_str(&self.text(&bounded(response.trim_end().to_owned())));
        }
        out.push_str(&self.line_break());
        let tokens = self.usage.map(usage_words).unwrap_or_default();
        match outcome {
            TurnOutcome::Completed { .. } => {
                let line = format!("✔ completed{tokens}");
                out.push_str(&format!("{GREEN}{}{RESET}\r\n", cut(&line, self.cols)));
            }
            TurnOutcome::Waiting { question, .. } => {
                let line = format!("? asks: {}", sanitize_line(question));
                out.push_str(&format!("{YELLOW}{}{RESET}\r\n", cut(&line, self.cols)));
            }
            TurnOutcome::Failed { failure, message } => {
                out.push_str(&failure_lines(*failure, message, &tokens, self.cols));
            }
        }
        out
    }

    /// Streamed text, with line ends a raw terminal understands.
    fn text(&mut self, text: &str) -> String {
        if text.is_empty() {
            return String::new();
        }
        self.at_line_start = text.ends_with('\n');
        text.replace('\n', "\r\n")
    }

    /// Ends the current line, when text left one open.
    fn line_break(&mut self) -> String {
        if self.at_line_start {
            String::new()
        } else {
            self.at_line_start = true;
            "\r\n".to_owned()
        }
    }
}

/// Renders a whole turn at once: the header, then each event.
pub fn render(cols: u16, header: &TurnHeader, events: &[TurnEvent]) -> String {
    let mut renderer = TranscriptRenderer::new(cols);
    let mut out = renderer.begin(header);
    for event in events {
        out.push_str(&renderer.event(event));
    }
    out
}

fn failure_lines(failure: TurnFailure, message: &str, tokens: &str, cols: usize) -> String {
    let head = format!("✘ failed {}{tokens}", failure.code());
    let mut out = format!("{RED}{BOLD}{}{RESET}\r\n", cut(&head, cols));
    let detail = sanitize_line(message);
    if !detail.is_empty() {
        let detail: String = detail.chars().take(FAILURE_CHARS_MAX).collect();
        out.push_str(&format!("{RED}  {detail}{RESET}\r\n"));
    }
    out
}

/// ` · 10 in / 5 out tokens · $0.0012`
fn usage_words(usage: TurnUsage) -> String {
    let mut words = format!(
        " · {} in / {} out tokens",
        usage.input_tokens, usage.output_tokens
    );
    if let Some(micro_usd) = usage.cost_micro_usd {
        words.push_str(&format!(
            " · ${}.{:04}",
            micro_usd / 1_000_000,
            micro_usd % 1_000_000 / 100
        ));
    }
    words
}

/// Text that stays within [`TRANSCRIPT_CHUNK_BYTES_MAX`] once its line
/// ends are `\r\n`: at most half of it, cut at a character boundary, with
/// a mark when cut.
fn bounded(mut text: String) -> String {
    const MARK: &str = " …[cut]\n";
    let bytes_max = TRANSCRIPT_CHUNK_BYTES_MAX / 2;
    if text.len() <= bytes_max {
        return text;
    }
    let mut end = bytes_max - MARK.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(MARK);
    text
}

/// `title` followed by a rule to `cols` characters.
fn rule(title: &str, cols: usize) -> String {
    let title = cut(title, cols);
    let n_rule = cols.saturating_sub(title.chars().count());
    format!("{title}{}", "─".repeat(n_rule))
}

/// At most `cols` characters, with `…` when cut.
fn cut(text: &str, cols: usize) -> String {
    if text.chars().count() <= cols {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(cols.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Text from the model or the CLI as it may reach a watcher's terminal: no
/// escape sequences, no control characters but newlines and tabs.
fn strip(plain: &mut PlainText, text: &str) -> String {
    crate::pty::text::terminal_safe(plain, text)
}

/// One line of text for a header or status line: stripped, newlines and
/// tabs as blanks.
fn sanitize_line(text: &str) -> String {
    strip(&mut PlainText::new(), text)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rendering with its styles as tags, so expectations read.
    fn visible(text: &str) -> String {
        text.replace(DIM, "<dim>")
            .replace(BOLD, "<bold>")
            .replace(CYAN, "<cyan>")
            .replace(GREEN, "<green>")
            .replace(RED, "<red>")
            .replace(YELLOW, "<yellow>")
            .replace(RESET, "</>")
            .replace("\r\n", "\n")
    }

    fn header(prompt: &str) -> TurnHeader {
        TurnHeader {
            turn_id: "agent-1-turn-2".to_owned(),
            asker: TurnAsker {
                by: "invocation inv-7".to_owned(),
                node: Some("laptop".to_owned()),
                invocation_id: Some("inv-7".to_owned()),
            },
            conversation: Some("conv-1".to_owned()),
            prompt: prompt.to_owned(),
        }
    }

    #[test]
    fn a_completed_turn_shows_prompt_text_tools_and_tokens() {
        let events = [
            TurnEvent::Tool("Bash: ls".to_owned()),
            TurnEvent::Output("Two files".to_owned()),
            TurnEvent::Output(" here.\nDone".to_owned()),
            TurnEvent::Usage(TurnUsage {
                input_tokens: 10,
                output_tokens: 5,
                cached_tokens: 0,
                cost_micro_usd: Some(1_234),
            }),
            TurnEvent::Finished(TurnOutcome::Completed {
                response: "Two files here.\nDone".to_owned(),
            }),
        ];
        let out = render(80, &header("What files are here?"), &events);
        insta::assert_snapshot!(visible(&out), @r"
        <dim>── turn agent-1-turn-2 ─────────────────────────────────────────────────────────</>
        <bold>▶ invocation inv-7 · from node laptop</>
        <dim>  conversation conv-1</>
        <dim>│</> What files are here?

        <cyan>⚙ Bash: ls</>
        Two files here.
        Done
        <green>✔ completed · 10 in / 5 out tokens · $0.0012</>
        ");
        assert!(!out.contains('\n') || out.contains("\r\n"));
        assert!(out.replace("\r\n", "").find('\n').is_none(), "bare newline");
    }

    #[test]
    fn a_failure_shows_its_code_and_message() {
        let events = [TurnEvent::Finished(TurnOutcome::Failed {
            failure: TurnFailure::AuthRequired,
            message: "Invalid API key\n· Please run /login".to_owned(),
        })];
        let out = render(40, &header("hi"), &events);
        let out = visible(&out);
        assert!(
            out.ends_with(
                "<red><bold>✘ failed AUTH_REQUIRED</>\n<red>  Invalid API key · Please run /login</>\n"
            ),
            "{out}"
        );
        assert!(out.starts_with("<dim>── turn agent-1-turn-2 ─────────────────</>\n"));
    }

    #[test]
    fn a_completed_turn_without_streamed_text_shows_the_answer() {
        let events = [TurnEvent::Finished(TurnOutcome::Completed {
            response: "the answer".to_owned(),
        })];
        let out = visible(&render(80, &header("q"), &events));
        assert!(
            out.ends_with("\nthe answer\n<green>✔ completed</>\n"),
            "{out}"
        );
    }

    #[test]
    fn model_text_cannot_reach_the_terminal_as_control_sequences() {
        let events = [
            TurnEvent::Output("safe\x1b[2J\x1b]0;title\x07 text\x07\r\n".to_owned()),
            TurnEvent::Tool("rm\x1b[31m -rf\n x".to_owned()),
        ];
        let out = render(80, &header("p\x1b[8m"), &events);
        let without_styles = [DIM, BOLD, CYAN, RESET]
            .iter()
            .fold(out.clone(), |text, style| text.replace(style, ""));
        assert!(!without_styles.contains('\x1b'), "{without_styles:?}");
        assert!(!without_styles.contains('\x07'));
        assert!(without_styles.contains("safe text\r\n"));
        assert!(without_styles.contains("⚙ rm -rf x\r\n"));
    }

    #[test]
    fn a_huge_event_reaches_watchers_cut() {
        let mut renderer = TranscriptRenderer::new(80);
        let out = renderer.event(&TurnEvent::Output("é\n".repeat(100_000)));
        assert!(out.len() <= TRANSCRIPT_CHUNK_BYTES_MAX, "{}", out.len());
        assert!(out.ends_with(" …[cut]\r\n"));
    }

    #[test]
    fn long_prompts_and_tool_lines_fit_the_width() {
        let prompt: Vec<String> = (1..=9).map(|n| format!("line {n}")).collect();
        let tool = "x".repeat(200);
        let out = render(
            80,
            &header(&prompt.join("\n")),
            &[TurnEvent::Tool(tool), TurnEvent::Output("tail".to_owned())],
        );
        let out = visible(&out);
        assert!(
            out.contains("line 6</>") || out.contains("line 6\n"),
            "{out}"
        );
        assert!(!out.contains("line 7"));
        assert!(out.contains("│ … 3 more lines"));
        for line in out.lines() {
            let plain = line
                .replace("<dim>", "")
                .replace("<cyan>", "")
                .replace("</>", "");
            assert!(plain.chars().count() <= TRANSCRIPT_COLS_MAX, "{line}");
        }
    }

    #[test]
    fn tool_lines_start_on_their_own_line_and_waiting_turns_show_the_question() {
        let events = [
            TurnEvent::Output("thinking".to_owned()),
            TurnEvent::Tool("Read a.txt".to_owned()),
            TurnEvent::Finished(TurnOutcome::Waiting {
                question: "Allow write?".to_owned(),
                response: String::new(),
            }),
        ];
        let out = visible(&render(80, &header("q"), &events));
        assert!(
            out.ends_with("thinking\n<cyan>⚙ Read a.txt</>\n<yellow>? asks: Allow write?</>\n"),
            "{out}"
        );
    }
}
