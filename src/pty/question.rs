//! Questions a terminal shows, asked of a person as approvals.
//!
//! A session whose adapter reads a question off the screen (`Proceed?
//! [y/N]`, a TUI's permission dialog) asks its [`PermissionAsker`] once per
//! question shown, not once per screen refresh: [`Questions`] keeps the
//! question on screen as an episode. The same text seen again is the same
//! episode; another text, or the question gone from the screen for longer
//! than [`QUESTION_GONE_GRACE`] (someone answered in the terminal), ends it
//! and the asker withdraws its request. An answer is typed only while its
//! episode is still the one on screen, so a person typing in the terminal
//! always wins.
//!
//! The question text is a program's output: [`sanitize`] keeps it to one
//! line of printable text of at most [`QUESTION_BYTES_MAX`] bytes. It is
//! shown to people, never run.
//!
//! [`PermissionAsker`]: crate::pty::PermissionAsker

use std::time::Duration;

use tokio::sync::watch;

/// The longest question text asked, in bytes: a screen line is at most a
/// few hundred characters; a longer "question" is a program printing a
/// flood, and every member's list and desktop would show it.
pub const QUESTION_BYTES_MAX: usize = 512;

/// How long a question may be off the screen before its request is
/// withdrawn: a TUI redrawing its dialog can blank it for a frame or two,
/// and that is not an answer.
pub const QUESTION_GONE_GRACE: Duration = Duration::from_secs(2);

/// `text` as one line of printable characters: control characters (a
/// terminal escape, a carriage return that would overwrite what a person
/// reads), bidirectional overrides and zero-width characters (which make
/// text read differently than it is) removed, runs of blanks folded into
/// one space, cut to [`QUESTION_BYTES_MAX`] bytes on a character boundary.
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(QUESTION_BYTES_MAX));
    let mut blank = false;
    for ch in text.chars() {
        if ch.is_whitespace() {
            blank = !out.is_empty();
            continue;
        }
        if ch.is_control() || is_invisible(ch) {
            continue;
        }
        let extra = usize::from(blank) + ch.len_utf8();
        if out.len() + extra > QUESTION_BYTES_MAX {
            break;
        }
        if blank {
            out.push(' ');
            blank = false;
        }
        out.push(ch);
    }
    out
}

/// Characters that change how text reads without showing themselves.
fn is_invisible(ch: char) -> bool {
    matches!(ch,
        '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{2069}'
        | '\u{FEFF}'
        | '\u{061C}')
}

/// The question a session shows and whether it was asked and answered.
#[derive(Debug, Default)]
pub struct Questions {
    episode: Option<Episode>,
    next_id: u64,
}

#[derive(Debug)]
struct Episode {
    id: u64,
    text: String,
    answered: bool,
    /// `true` while the question is off the screen.
    gone: watch::Sender<bool>,
}

/// A question to ask: a new episode.
#[derive(Debug)]
pub struct NewQuestion {
    /// The episode, for [`Questions::answer`] and [`Questions::finish`].
    pub id: u64,
    /// The sanitised text.
    pub text: String,
    /// Turns `true` while the question is off the screen; the asker
    /// withdraws its request when it stays so for [`QUESTION_GONE_GRACE`].
    pub gone: watch::Receiver<bool>,
}

impl Questions {
    /// The screen shows question `raw`: a question to ask when it is a
    /// new one.
    pub fn shown(&mut self, raw: &str) -> Option<NewQuestion> {
        let text = sanitize(raw);
        if text.is_empty() {
            return None;
        }
        if let Some(episode) = &self.episode
            && episode.text == text
        {
            episode.gone.send_replace(false);
            return None;
        }
        // Another question replaced the one asked: that one is gone now.
        if let Some(old) = self.episode.take() {
            old.gone.send_replace(true);
        }
        self.next_id = self.next_id.wrapping_add(1);
        let (gone, gone_rx) = watch::channel(false);
        self.episode = Some(Episode {
            id: self.next_id,
            text: text.clone(),
            answered: false,
            gone,
        });
        Some(NewQuestion {
            id: self.next_id,
            text,
            gone: gone_rx,
        })
    }

    /// The screen shows no question.
    pub fn cleared(&mut self) {
        match &self.episode {
            // The answer was taken: the next question is a new one.
            Some(episode) if episode.answered => self.episode = None,
            Some(episode) => {
                episode.gone.send_replace(true);
            }
            None => {}
        }
    }

    /// Whether a person is being asked about the question on screen (the
    /// running turn waits for the answer meanwhile).
    pub fn asking(&self) -> bool {
        self.episode
            .as_ref()
            .is_some_and(|episode| !episode.answered && !*episode.gone.borrow())
    }

    /// Takes the answer to episode `id`: whether it may be typed (the
    /// question is still the one on screen and nobody answered it).
    pub fn answer(&mut self, id: u64) -> bool {
        match &mut self.episode {
            Some(episode) if episode.id == id && !episode.answered && !*episode.gone.borrow() => {
                episode.answered = true;
                true
            }
            _ => false,
        }
    }

    /// Episode `id` ended without an answer to type (withdrawn, or nobody
    /// could be asked). Off the screen, it is forgotten, so the question
    /// asks again when it shows again; still on it, it is left to the
    /// person at the terminal and not asked again on every refresh.
    pub fn finish(&mut self, id: u64) {
        match &mut self.episode {
            Some(episode) if episode.id == id && *episode.gone.borrow() => self.episode = None,
            Some(episode) if episode.id == id => episode.answered = true,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_request_per_question_shown() {
        let mut questions = Questions::default();
        let first = questions.shown("Proceed? [y/N]").expect("asked");
        // The same question on every refresh asks nothing more.
        assert!(questions.shown("Proceed? [y/N]").is_none());
        assert!(questions.shown("  Proceed?   [y/N] ").is_none());
        assert!(questions.asking());
        // A blink off the screen and back is the same question.
        questions.cleared();
        assert!(*first.gone.borrow());
        assert!(!questions.asking());
        assert!(questions.shown("Proceed? [y/N]").is_none());
        assert!(!*first.gone.borrow());
        // Answered: typed once; the screen still showing it asks nothing.
        assert!(questions.answer(first.id));
        assert!(!questions.answer(first.id));
        assert!(questions.shown("Proceed? [y/N]").is_none());
        // Once it left the screen, the same text again is a new question.
        questions.cleared();
        let again = questions.shown("Proceed? [y/N]").expect("asked again");
        assert_ne!(again.id, first.id);
    }

    #[test]
    fn another_question_or_the_terminal_ends_the_request() {
        let mut questions = Questions::default();
        let first = questions.shown("Delete all? (y/n)").expect("asked");
        let second = questions.shown("Really? (y/n)").expect("a new question");
        assert!(*first.gone.borrow());
        // An answer to the old question is never typed into the new one.
        assert!(!questions.answer(first.id));
        // Someone answered in the terminal: the answer comes too late.
        questions.cleared();
        assert!(!questions.answer(second.id));
        questions.finish(second.id);
        assert!(questions.shown("Really? (y/n)").is_some());
        // A finished old episode leaves the current one alone.
        let third = questions.shown("Again? (y/n)").expect("asked");
        questions.finish(first.id);
        assert!(questions.asking());
        // Nobody could be asked: left to the terminal, not asked on every
        // refresh.
        questions.finish(third.id);
        assert!(!questions.asking());
        assert!(questions.shown("Again? (y/n)").is_none());
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
        let long = "é".repeat(QUESTION_BYTES_MAX);
        let cut = sanitize(&long);
        assert!(cut.len() <= QUESTION_BYTES_MAX);
        assert!(cut.chars().all(|ch| ch == 'é'));
        assert_eq!(sanitize(" \t\x00 "), "");
        let mut questions = Questions::default();
        assert!(questions.shown("\x1b\x07").is_none());
    }
}
