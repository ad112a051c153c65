//! Questions a terminal shows, asked of a person as approvals.
//!
//! A session whose adapter reads a question off the screen (`Proceed?
//! [y/N]`, a TUI's permission dialog) asks its [`PermissionAsker`] once per
//! dialog shown, not once per screen refresh: [`Questions`] keeps the
//! dialog on screen as an episode. A dialog is the question line and the
//! lines above it that belong to it ([`dialog`]: the command a TUI asks
//! about, the output a prompt follows), so the person reads what they
//! approve; its identity is a hash of that region and of the program's
//! generation on the terminal (a restarted program asks anew). The same
//! dialog seen again is the same episode; another dialog, or the dialog
//! gone from the screen for longer than [`QUESTION_GONE_GRACE`] (someone
//! answered in the terminal), ends it and the asker withdraws its request.
//!
//! A new dialog is asked only once it stayed on screen for
//! [`QUESTION_DEBOUNCE`], and at most [`QUESTIONS_PER_WINDOW_MAX`] per
//! [`QUESTION_RATE_WINDOW`]: a program flapping between texts would
//! otherwise flood every member's list and desktop. A dialog over the
//! limit is left to the person at the terminal.
//!
//! An answer is typed only while its dialog is still the one on screen and
//! nobody typed into the terminal since the dialog showed: the person at
//! the terminal always wins.
//!
//! The question text is a program's output: [`sanitize`] keeps each line
//! to printable text of at most [`QUESTION_BYTES_MAX`] bytes. It is shown
//! to people, never run.
//!
//! [`PermissionAsker`]: crate::pty::PermissionAsker

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// The longest line of a question, in bytes: a screen line is at most a
/// few hundred characters; a longer one is a program printing a flood, and
/// every member's list and desktop would show it. A longer line is cut,
/// visibly ([`CUT_MARK`]).
pub const QUESTION_BYTES_MAX: usize = 512;

/// Lines above the question line shown with it: a TUI's dialog (the tool,
/// its command, its reason) fits in a handful; more is the program's
/// earlier output, not the question.
pub const QUESTION_CONTEXT_LINES_MAX: usize = 8;

/// The longest summary of a question, in bytes: under the approvals'
/// summary limit (`scout_mesh::approval::SUMMARY_BYTES_MAX`, 2048), which
/// refuses rather than cuts; the oldest context lines give way first.
pub const QUESTION_SUMMARY_BYTES_MAX: usize = 1536;

/// What marks text that was cut, so a person never reads a part as the
/// whole.
pub const CUT_MARK: &str = "[… cut]";

/// How long a question may be off the screen before its request is
/// withdrawn: a TUI redrawing its dialog can blank it for a frame or two,
/// and that is not an answer.
pub const QUESTION_GONE_GRACE: Duration = Duration::from_secs(2);

/// How long a new dialog must stay on screen before it is asked: a TUI
/// settles a redraw within a few frames (tens of milliseconds); a text that
/// changes faster than this is not a question a person could answer.
pub const QUESTION_DEBOUNCE: Duration = Duration::from_millis(300);

/// How long after a person's keystroke in the terminal a new dialog waits
/// before the mesh is asked: a person typing at the terminal answers what
/// shows there (each key they type may redraw the prompt line), and only a
/// dialog still unanswered once they stopped goes to the mesh.
pub const QUESTION_PERSON_QUIET: Duration = Duration::from_secs(5);

/// Questions one session asks at most per [`QUESTION_RATE_WINDOW`]: a
/// person answers a few dialogs a minute; more is a program looping, and
/// each would notify every member.
pub const QUESTIONS_PER_WINDOW_MAX: usize = 6;

/// The window of [`QUESTIONS_PER_WINDOW_MAX`].
pub const QUESTION_RATE_WINDOW: Duration = Duration::from_secs(60);

/// `text` as one line of printable characters: control characters (a
/// terminal escape, a carriage return that would overwrite what a person
/// reads), bidirectional overrides and invisible characters (which make
/// text read differently than it is) removed, runs of blanks folded into
/// one space, cut to [`QUESTION_BYTES_MAX`] bytes on a character boundary
/// with [`CUT_MARK`] at the end when something was cut.
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(QUESTION_BYTES_MAX));
    let mut blank = false;
    let mut cut = false;
    // Room for " [… cut]" once a cut is needed.
    let keep = QUESTION_BYTES_MAX - CUT_MARK.len() - 1;
    let mut kept_len = None;
    for ch in text.chars() {
        if ch.is_whitespace() {
            blank = !out.is_empty();
            continue;
        }
        if ch.is_control() || is_invisible(ch) {
            continue;
        }
        let extra = usize::from(blank) + ch.len_utf8();
        if kept_len.is_none() && out.len() + extra > keep {
            kept_len = Some(out.len());
        }
        if out.len() + extra > QUESTION_BYTES_MAX {
            cut = true;
            break;
        }
        if blank {
            out.push(' ');
            blank = false;
        }
        out.push(ch);
    }
    if cut {
        out.truncate(kept_len.unwrap_or(0));
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(CUT_MARK);
    }
    out
}

/// Characters that change how text reads without showing themselves:
/// zero-width and joiner characters, bidirectional controls, the soft
/// hyphen, the Mongolian vowel separator, variation selectors, tag
/// characters (which spell hidden text) and Hangul fillers (blank glyphs
/// that are not whitespace).
fn is_invisible(ch: char) -> bool {
    matches!(ch,
        '\u{00AD}'
        | '\u{061C}'
        | '\u{115F}'
        | '\u{1160}'
        | '\u{180E}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{2069}'
        | '\u{3164}'
        | '\u{FE00}'..='\u{FE0F}'
        | '\u{FEFF}'
        | '\u{FFA0}'
        | '\u{E0000}'..='\u{E007F}')
}

/// Box-drawing characters, which frame a TUI's dialog.
fn is_box(ch: char) -> bool {
    ('\u{2500}'..='\u{257F}').contains(&ch)
}

/// A line's text without the frame around it, sanitised.
fn clean_line(line: &str) -> String {
    sanitize(line.trim_matches(|ch: char| ch.is_whitespace() || is_box(ch)))
}

/// Whether `line` is a dialog's top edge or a rule across the screen: the
/// region of a question ends there.
fn is_border(line: &str) -> bool {
    let line = line.trim();
    line.starts_with(['╭', '┌', '┏', '╔'])
        || (line.chars().count() >= 3
            && line.chars().all(|ch| is_box(ch) || ch == '-' || ch == '='))
}

/// The dialog a screen shows: its question line and the region that goes
/// with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialog {
    /// The question line, sanitised (what decides the answer's keys).
    pub question: String,
    /// What a person reads: the region's lines, then the question line.
    pub summary: String,
    /// The dialog's identity: a hash of the region and the generation of
    /// the program on the terminal.
    pub key: u64,
}

/// The dialog of question `question` (the line an adapter read, or the
/// cursor's row) on a screen showing `text`, for the program of
/// `generation`. The region is the lines above the question line up to a
/// dialog's top edge or rule, a gap of two blank lines, or
/// [`QUESTION_CONTEXT_LINES_MAX`] lines; blank lines inside are skipped.
/// `None` when the question is blank.
pub fn dialog(text: &str, question: &str, generation: u64) -> Option<Dialog> {
    let question = clean_line(question);
    if question.is_empty() {
        return None;
    }
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .rposition(|line| clean_line(line).contains(question.as_str()));
    let mut context = Vec::new();
    if let Some(at) = at {
        let mut blanks = 0;
        for line in lines[..at].iter().rev() {
            if is_border(line) {
                break;
            }
            let cleaned = clean_line(line);
            if cleaned.is_empty() {
                blanks += 1;
                if blanks >= 2 {
                    break;
                }
                continue;
            }
            blanks = 0;
            context.push(cleaned);
            if context.len() == QUESTION_CONTEXT_LINES_MAX {
                break;
            }
        }
    }
    context.reverse();
    let mut summary = question.clone();
    let mut dropped = false;
    for line in context.iter().rev() {
        if summary.len() + line.len() + 1 + CUT_MARK.len() + 1 > QUESTION_SUMMARY_BYTES_MAX {
            dropped = true;
            break;
        }
        summary = format!("{line}\n{summary}");
    }
    if dropped {
        summary = format!("{CUT_MARK}\n{summary}");
    }
    let mut hasher = std::hash::DefaultHasher::new();
    generation.hash(&mut hasher);
    context.hash(&mut hasher);
    question.hash(&mut hasher);
    Some(Dialog {
        question,
        summary,
        key: hasher.finish(),
    })
}

/// Whether `bytes` from a terminal client are the terminal answering the
/// program (a focus change, a cursor position or device report, a colour
/// reply), not a person typing.
pub fn is_terminal_report(bytes: &[u8]) -> bool {
    match bytes {
        [0x1b, b']', ..] => true,
        [0x1b, b'[', middle @ .., last] => {
            matches!(last, b'c' | b'R' | b'n' | b'I' | b'O')
                && middle
                    .iter()
                    .all(|byte| byte.is_ascii_digit() || matches!(byte, b';' | b'?' | b'>'))
        }
        _ => false,
    }
}

/// How an asked question ended, from the asker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuestionOutcome {
    /// A person answered yes (`true`) or no; the deadline passing is no.
    Answer(bool),
    /// The request was withdrawn: the dialog left the screen, or the
    /// person at the terminal took it. Nothing is typed.
    Withdrawn,
    /// Nobody could be asked (too many pending, no broker): the question
    /// stays for the person at the terminal, and the running turn pauses
    /// at it as it would without a broker.
    Unasked,
}

/// What a dialog on screen means for asking.
#[derive(Debug)]
pub enum Shown {
    /// The dialog of the current episode, or one already waiting out its
    /// debounce.
    Same,
    /// A new dialog: look again at this instant, when its debounce is over.
    LookAgainAt(Instant),
    /// A dialog stable for its debounce: ask it.
    Ask(NewQuestion),
    /// A dialog over the rate limit, left to the terminal; `first` is true
    /// for the first one of a run of them (logged once).
    Limited {
        /// Whether to log it.
        first: bool,
    },
}

/// The question a session shows and whether it was asked and answered.
#[derive(Debug, Default)]
pub struct Questions {
    episode: Option<Episode>,
    /// A new dialog waiting out its debounce.
    candidate: Option<Candidate>,
    next_id: u64,
    /// When the questions of the current rate window were asked.
    asked_at: VecDeque<Instant>,
    /// Whether the current run over the rate limit was logged.
    limit_logged: bool,
    /// When a person last typed into the terminal.
    person_at: Option<Instant>,
}

#[derive(Debug)]
struct Candidate {
    key: u64,
    question: String,
    since: Instant,
}

#[derive(Debug)]
struct Episode {
    id: u64,
    key: u64,
    question: String,
    answered: bool,
    /// The person at the terminal typed while it showed: theirs to answer.
    by_person: bool,
    /// Nobody could be asked about it (over the rate limit, or the asker
    /// could not ask): left to the terminal.
    unasked: bool,
    /// `true` while the question is off the screen.
    gone: watch::Sender<bool>,
}

/// A question to ask: a new episode.
#[derive(Debug)]
pub struct NewQuestion {
    /// The episode, for [`Questions::answer`] and [`Questions::finish`].
    pub id: u64,
    /// The question line, sanitised.
    pub question: String,
    /// What a person reads (see [`Dialog::summary`]).
    pub summary: String,
    /// Turns `true` while the question is off the screen (or the person
    /// at the terminal took it); the asker withdraws its request when it
    /// stays so for [`QUESTION_GONE_GRACE`].
    pub gone: watch::Receiver<bool>,
}

impl Questions {
    /// The screen shows `dialog` at `now`.
    pub fn shown(&mut self, dialog: &Dialog, now: Instant) -> Shown {
        if let Some(episode) = &self.episode
            && episode.key == dialog.key
        {
            if !episode.by_person {
                episode.gone.send_replace(false);
            }
            self.candidate = None;
            return Shown::Same;
        }
        // Another dialog replaced the one asked: that one is gone now.
        if let Some(old) = &self.episode {
            old.gone.send_replace(true);
        }
        match &self.candidate {
            Some(candidate) if candidate.key == dialog.key => {
                if now < candidate.since + QUESTION_DEBOUNCE {
                    return Shown::Same;
                }
            }
            // A dialog a person typed into that changed as they typed
            // (the echo on a prompt line) waits for them to stop.
            _ if self
                .person_at
                .is_some_and(|person_at| now < person_at + QUESTION_PERSON_QUIET) =>
            {
                self.candidate = Some(Candidate {
                    key: dialog.key,
                    question: dialog.question.clone(),
                    since: now,
                });
                let at = self.person_at.map_or(now, |at| at + QUESTION_PERSON_QUIET);
                return Shown::LookAgainAt(at.max(now + QUESTION_DEBOUNCE));
            }
            _ => {
                self.candidate = Some(Candidate {
                    key: dialog.key,
                    question: dialog.question.clone(),
                    since: now,
                });
                return Shown::LookAgainAt(now + QUESTION_DEBOUNCE);
            }
        }
        if let Some(person_at) = self.person_at
            && now < person_at + QUESTION_PERSON_QUIET
        {
            return Shown::LookAgainAt(person_at + QUESTION_PERSON_QUIET);
        }
        self.candidate = None;
        while self
            .asked_at
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) >= QUESTION_RATE_WINDOW)
        {
            self.asked_at.pop_front();
        }
        self.next_id = self.next_id.wrapping_add(1);
        let (gone, gone_rx) = watch::channel(false);
        let limited = self.asked_at.len() >= QUESTIONS_PER_WINDOW_MAX;
        self.episode = Some(Episode {
            id: self.next_id,
            key: dialog.key,
            question: dialog.question.clone(),
            answered: limited,
            by_person: false,
            unasked: limited,
            gone,
        });
        if limited {
            let first = !self.limit_logged;
            self.limit_logged = true;
            return Shown::Limited { first };
        }
        self.limit_logged = false;
        self.asked_at.push_back(now);
        Shown::Ask(NewQuestion {
            id: self.next_id,
            question: dialog.question.clone(),
            summary: dialog.summary.clone(),
            gone: gone_rx,
        })
    }

    /// The screen shows no question.
    pub fn cleared(&mut self) {
        self.candidate = None;
        match &self.episode {
            // The answer was taken: the next question is a new one.
            Some(episode) if episode.answered => self.episode = None,
            Some(episode) => {
                episode.gone.send_replace(true);
            }
            None => {}
        }
    }

    /// Whether a person is being asked about the question on screen, or is
    /// about to be (the running turn waits for the answer meanwhile).
    pub fn asking(&self) -> bool {
        self.candidate.is_some()
            || self
                .episode
                .as_ref()
                .is_some_and(|episode| !episode.answered && !*episode.gone.borrow())
    }

    /// The question on screen that nobody could be asked about: the
    /// running turn pauses at it.
    pub fn left_to_terminal(&self) -> Option<String> {
        if self.candidate.is_some() {
            return None;
        }
        self.episode
            .as_ref()
            .filter(|episode| episode.unasked)
            .map(|episode| episode.question.clone())
    }

    /// A person typed into the terminal at `now`: the dialog on screen is
    /// theirs. Its request is withdrawn, an answer to it is not typed, a
    /// dialog waiting out its debounce is not asked, and a new one waits
    /// [`QUESTION_PERSON_QUIET`] before it is.
    pub fn human_input(&mut self, now: Instant) {
        self.person_at = Some(now);
        if let Some(candidate) = self.candidate.take() {
            if let Some(old) = &self.episode {
                old.gone.send_replace(true);
            }
            self.next_id = self.next_id.wrapping_add(1);
            self.episode = Some(Episode {
                id: self.next_id,
                key: candidate.key,
                question: candidate.question,
                answered: true,
                by_person: true,
                unasked: false,
                gone: watch::channel(true).0,
            });
            return;
        }
        if let Some(episode) = &mut self.episode
            && !episode.answered
        {
            episode.answered = true;
            episode.by_person = true;
            episode.gone.send_replace(true);
            // A fresh sender closes the asker's channel: a person took the
            // question, so the request is withdrawn at once rather than
            // after the grace a redraw gets.
            episode.gone = watch::channel(true).0;
        }
    }

    /// Takes the answer to episode `id`, whose dialog's key on screen is
    /// now `on_screen`: whether it may be typed (the same dialog is still
    /// on screen, nobody answered it and nobody typed in the terminal).
    pub fn answer(&mut self, id: u64, on_screen: Option<u64>) -> bool {
        match &mut self.episode {
            Some(episode)
                if episode.id == id
                    && !episode.answered
                    && !*episode.gone.borrow()
                    && on_screen == Some(episode.key) =>
            {
                episode.answered = true;
                true
            }
            _ => false,
        }
    }

    /// Nobody could be asked about episode `id`: it is left to the
    /// terminal, and the running turn pauses at it.
    pub fn unasked(&mut self, id: u64) {
        if let Some(episode) = &mut self.episode
            && episode.id == id
        {
            episode.answered = true;
            episode.unasked = true;
        }
    }

    /// Episode `id` ended without an answer to type (withdrawn, or the
    /// answer came too late). Off the screen, it is forgotten, so the
    /// question asks again when it shows again; still on it, it is left to
    /// the person at the terminal and not asked again on every refresh.
    pub fn finish(&mut self, id: u64) {
        match &mut self.episode {
            Some(episode) if episode.id == id && *episode.gone.borrow() && !episode.by_person => {
                self.episode = None;
            }
            Some(episode) if episode.id == id => episode.answered = true,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    fn plain(question: &str) -> Dialog {
        dialog(question, question, 0).expect("a dialog")
    }

    /// Shows `dialog` until its debounce is over: the new question.
    fn settle(questions: &mut Questions, dialog: &Dialog, now: Instant) -> NewQuestion {
        assert!(matches!(
            questions.shown(dialog, now),
            Shown::LookAgainAt(_)
        ));
        match questions.shown(dialog, now + QUESTION_DEBOUNCE) {
            Shown::Ask(new) => new,
            other => panic!("not asked: {other:?}"),
        }
    }

    #[test]
    fn one_request_per_dialog_shown_once_it_is_stable() {
        let base = Instant::now();
        let mut questions = Questions::default();
        let proceed = plain("Proceed? [y/N]");
        // Not asked before its debounce is over.
        assert!(matches!(
            questions.shown(&proceed, base),
            Shown::LookAgainAt(when) if when == base + QUESTION_DEBOUNCE
        ));
        assert!(matches!(
            questions.shown(&proceed, at(base, 100)),
            Shown::Same
        ));
        assert!(questions.asking());
        let first = match questions.shown(&proceed, at(base, 300)) {
            Shown::Ask(new) => new,
            other => panic!("{other:?}"),
        };
        assert_eq!(first.summary, "Proceed? [y/N]");
        // The same dialog on every refresh asks nothing more.
        assert!(matches!(
            questions.shown(&proceed, at(base, 400)),
            Shown::Same
        ));
        assert!(matches!(
            questions.shown(&plain("  Proceed?   [y/N] "), at(base, 500)),
            Shown::Same
        ));
        // A blink off the screen and back is the same question.
        questions.cleared();
        assert!(*first.gone.borrow());
        assert!(!questions.asking());
        assert!(matches!(
            questions.shown(&proceed, at(base, 600)),
            Shown::Same
        ));
        assert!(!*first.gone.borrow());
        // Answered: typed once; the screen still showing it asks nothing.
        assert!(questions.answer(first.id, Some(proceed.key)));
        assert!(!questions.answer(first.id, Some(proceed.key)));
        assert!(matches!(
            questions.shown(&proceed, at(base, 700)),
            Shown::Same
        ));
        // Once it left the screen, the same text again is a new question.
        questions.cleared();
        let again = settle(&mut questions, &proceed, at(base, 800));
        assert_ne!(again.id, first.id);
    }

    #[test]
    fn a_flapping_dialog_is_never_asked() {
        let base = Instant::now();
        let mut questions = Questions::default();
        for step in 0..50u64 {
            let text = format!("Step {step}? [y/N]");
            let shown = questions.shown(&plain(&text), at(base, step * 100));
            assert!(matches!(shown, Shown::LookAgainAt(_)), "{shown:?}");
        }
    }

    #[test]
    fn questions_past_the_rate_limit_are_left_to_the_terminal() {
        let base = Instant::now();
        let mut questions = Questions::default();
        let mut now = base;
        for n in 0..QUESTIONS_PER_WINDOW_MAX {
            settle(&mut questions, &plain(&format!("Q{n}? [y/N]")), now);
            questions.cleared();
            now += QUESTION_DEBOUNCE;
        }
        let over = plain("Over? [y/N]");
        assert!(matches!(questions.shown(&over, now), Shown::LookAgainAt(_)));
        assert!(matches!(
            questions.shown(&over, now + QUESTION_DEBOUNCE),
            Shown::Limited { first: true }
        ));
        // The running turn pauses at it; it is not asked on refreshes.
        assert_eq!(questions.left_to_terminal().as_deref(), Some("Over? [y/N]"));
        assert!(matches!(
            questions.shown(&over, now + QUESTION_DEBOUNCE * 2),
            Shown::Same
        ));
        questions.cleared();
        let next = plain("Next? [y/N]");
        questions.shown(&next, now);
        assert!(matches!(
            questions.shown(&next, now + QUESTION_DEBOUNCE),
            Shown::Limited { first: false }
        ));
        // Once the window has passed, questions are asked again.
        questions.cleared();
        settle(&mut questions, &next, base + QUESTION_RATE_WINDOW * 2);
    }

    #[test]
    fn another_dialog_or_the_terminal_ends_the_request() {
        let base = Instant::now();
        let mut questions = Questions::default();
        let delete = plain("Delete all? (y/n)");
        let first = settle(&mut questions, &delete, base);
        let really = plain("Really? (y/n)");
        assert!(matches!(
            questions.shown(&really, at(base, 400)),
            Shown::LookAgainAt(_)
        ));
        assert!(*first.gone.borrow());
        let second = match questions.shown(&really, at(base, 700)) {
            Shown::Ask(new) => new,
            other => panic!("{other:?}"),
        };
        // An answer to the old dialog is never typed into the new one.
        assert!(!questions.answer(first.id, Some(really.key)));
        // Nor into a dialog that changed under it.
        assert!(!questions.answer(second.id, Some(delete.key)));
        assert!(!questions.answer(second.id, None));
        // Someone answered in the terminal: the answer comes too late.
        questions.cleared();
        assert!(!questions.answer(second.id, Some(really.key)));
        questions.finish(second.id);
        settle(&mut questions, &really, at(base, 1000));
        // Nobody could be asked: left to the terminal, not asked on every
        // refresh, and the turn pauses at it.
        let again = plain("Again? (y/n)");
        let third = settle(&mut questions, &again, at(base, 2000));
        questions.unasked(third.id);
        assert!(!questions.asking());
        assert_eq!(
            questions.left_to_terminal().as_deref(),
            Some("Again? (y/n)")
        );
        assert!(matches!(
            questions.shown(&again, at(base, 3000)),
            Shown::Same
        ));
    }

    #[test]
    fn a_person_typing_takes_the_dialog() {
        let base = Instant::now();
        let mut questions = Questions::default();
        let proceed = plain("Proceed? [y/N]");
        let asked = settle(&mut questions, &proceed, base);
        questions.human_input(at(base, 400));
        // The request is withdrawn at once (the asker's channel closes,
        // gone set and staying so across refreshes) and a remote answer is
        // not typed.
        assert!(*asked.gone.borrow());
        assert!(asked.gone.has_changed().is_err());
        assert!(matches!(
            questions.shown(&proceed, at(base, 500)),
            Shown::Same
        ));
        assert!(*asked.gone.borrow());
        assert!(!questions.answer(asked.id, Some(proceed.key)));
        questions.finish(asked.id);
        assert!(matches!(
            questions.shown(&proceed, at(base, 600)),
            Shown::Same
        ));
        assert!(questions.left_to_terminal().is_none());
        // Typing while a new dialog waits out its debounce: never asked.
        questions.cleared();
        let other = plain("Other? [y/N]");
        let later = at(base, 10_000);
        assert!(matches!(
            questions.shown(&other, later),
            Shown::LookAgainAt(_)
        ));
        questions.human_input(later);
        assert!(matches!(
            questions.shown(&other, later + QUESTION_PERSON_QUIET * 2),
            Shown::Same
        ));
        // A dialog that shows while a person types waits for them to stop.
        questions.cleared();
        let typing = later + QUESTION_PERSON_QUIET * 3;
        questions.human_input(typing);
        let echoed = plain("Other? [y/N] x");
        assert!(matches!(
            questions.shown(&echoed, typing),
            Shown::LookAgainAt(when) if when == typing + QUESTION_PERSON_QUIET
        ));
        assert!(matches!(
            questions.shown(&echoed, typing + QUESTION_DEBOUNCE),
            Shown::LookAgainAt(_)
        ));
        assert!(matches!(
            questions.shown(&echoed, typing + QUESTION_PERSON_QUIET),
            Shown::Ask(_)
        ));
    }

    #[test]
    fn a_dialog_carries_its_context_and_its_program() {
        let screen = "earlier output\n\n\nold line\n\
            ╭──────────────────────────╮\n\
            │ Bash command             │\n\
            │                          │\n\
            │   rm -rf build           │\n\
            │   Remove the build dir   │\n\
            │                          │\n\
            │ Do you want to proceed?  │\n\
            │ ❯ 1. Yes                 │\n\
            ╰──────────────────────────╯\n";
        let shown = dialog(screen, "│ Do you want to proceed?  │", 0).expect("dialog");
        assert_eq!(
            shown.summary,
            "Bash command\nrm -rf build\nRemove the build dir\nDo you want to proceed?"
        );
        assert_eq!(shown.question, "Do you want to proceed?");
        // Another command behind the same question is another dialog.
        let other = dialog(
            &screen.replace("rm -rf build ", "rm -rf /     "),
            "Do you want to proceed?",
            0,
        )
        .expect("dialog");
        assert_ne!(other.key, shown.key);
        assert!(other.summary.contains("rm -rf /"));
        // The same dialog of a restarted program is another question.
        let restarted = dialog(screen, "Do you want to proceed?", 1).expect("dialog");
        assert_ne!(restarted.key, shown.key);
        assert_eq!(restarted.summary, shown.summary);
        // A plain prompt shows the output above it, bounded.
        let mut lines: Vec<String> = (0..40).map(|n| format!("line {n}")).collect();
        lines.push("Proceed? [y/N]".to_owned());
        let prompt = dialog(&lines.join("\n"), "Proceed? [y/N]", 0).expect("dialog");
        assert_eq!(
            prompt.summary.lines().count(),
            QUESTION_CONTEXT_LINES_MAX + 1
        );
        assert!(prompt.summary.starts_with("line 32\n"));
        // A screen full of long lines is cut to the summary's bound,
        // visibly.
        let long: Vec<String> = (0..10).map(|n| format!("{n}{}", "x".repeat(600))).collect();
        let flood = format!("{}\nProceed? [y/N]", long.join("\n"));
        let cut = dialog(&flood, "Proceed? [y/N]", 0).expect("dialog");
        assert!(cut.summary.len() <= QUESTION_SUMMARY_BYTES_MAX);
        assert!(cut.summary.starts_with(CUT_MARK));
        assert!(cut.summary.ends_with("Proceed? [y/N]"));
        assert!(dialog("x", " \u{200B} ", 0).is_none());
    }

    #[test]
    fn question_text_is_one_bounded_printable_line() {
        assert_eq!(
            sanitize("\x1b[31mProceed?\x1b[0m\r\n [y/N]\x07"),
            "[31mProceed?[0m [y/N]"
        );
        assert_eq!(
            sanitize("Pay \u{202E}0001$\u{202C} ok? (y/n)"),
            "Pay 0001$ ok? (y/n)"
        );
        assert_eq!(sanitize("a\u{200B}b\u{FEFF}"), "ab");
        assert_eq!(
            sanitize(
                "r\u{00AD}m\u{180E} -\u{FE0F}rf \u{E0041}\u{E007F}x\u{3164}\u{115F}\u{1160}\u{FFA0}"
            ),
            "rm -rf x"
        );
        let long = "é".repeat(QUESTION_BYTES_MAX);
        let cut = sanitize(&long);
        assert!(cut.len() <= QUESTION_BYTES_MAX);
        assert!(cut.ends_with(CUT_MARK), "{cut}");
        assert!(
            cut.trim_end_matches(CUT_MARK)
                .trim_end()
                .chars()
                .all(|ch| ch == 'é')
        );
        // Exactly at the bound: whole, unmarked.
        let whole = "a".repeat(QUESTION_BYTES_MAX);
        assert_eq!(sanitize(&whole), whole);
        assert_eq!(sanitize(" \t\x00 "), "");
        assert!(dialog("\x1b\x07", "\x1b\x07", 0).is_none());
    }

    #[test]
    fn terminal_reports_are_not_a_person() {
        for report in [
            &b"\x1b[I"[..],
            b"\x1b[O",
            b"\x1b[12;40R",
            b"\x1b[?1;2c",
            b"\x1b[>0;276;0c",
            b"\x1b[0n",
            b"\x1b]11;rgb:0000/0000/0000\x07",
        ] {
            assert!(is_terminal_report(report), "{report:?}");
        }
        for typed in [&b"y\r"[..], b"\x1b[A", b"\x1b", b"\x03", b"1"] {
            assert!(!is_terminal_report(typed), "{typed:?}");
        }
    }
}
