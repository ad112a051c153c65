//! The `command` harness: any program. Turns are typed into its terminal;
//! a turn ends when the cursor row matches `promptPattern`, or, without one,
//! when the output has been quiet for [`QUIET_TURN_END`].

use regex::Regex;
use scout_mesh::lifecycle::Harness;

use super::{
    Adapter, AdapterError, AdapterOptions, AgentEnv, AuthStatus, ScreenState, ScreenView, TurnStyle,
};

/// Without a prompt pattern, a turn ends after this much silence: long
/// enough for a program that pauses between lines, short enough for a
/// person waiting on `send`.
pub const QUIET_TURN_END: std::time::Duration = std::time::Duration::from_millis(1500);

/// Cursor rows that ask a yes/no question, when no `questionPattern` is set.
const DEFAULT_QUESTION_PATTERN: &str = r"(?i)(\[y/n\]|\(y/n\)|\[yes/no\]|\(yes/no\))\s*:?\s*$";

/// Longest pattern accepted, in bytes: patterns come from API clients.
const PATTERN_BYTES_MAX: usize = 1024;

/// Compiled patterns are capped so a hostile pattern cannot use unbounded memory.
const PATTERN_COMPILED_BYTES_MAX: usize = 1024 * 1024;

/// Any program on a terminal.
#[derive(Debug, Clone)]
pub struct CommandAdapter {
    argv: Vec<String>,
    ready: Option<Regex>,
    prompt: Option<Regex>,
    question: Regex,
}

impl CommandAdapter {
    /// An adapter for `argv` (never empty) with the patterns of `options`.
    pub fn new(
        argv: Vec<String>,
        options: &AdapterOptions,
    ) -> Result<CommandAdapter, AdapterError> {
        let ready = compile("readyPattern", options.ready_pattern.as_deref())?;
        let prompt = compile("promptPattern", options.prompt_pattern.as_deref())?;
        let question = match compile("questionPattern", options.question_pattern.as_deref())? {
            Some(question) => question,
            None => Regex::new(DEFAULT_QUESTION_PATTERN).expect("the default pattern is valid"),
        };
        if argv.is_empty() {
            return Err(AdapterError::MissingCommand);
        }
        Ok(CommandAdapter {
            argv,
            ready,
            prompt,
            question,
        })
    }
}

fn compile(field: &'static str, pattern: Option<&str>) -> Result<Option<Regex>, AdapterError> {
    let Some(pattern) = pattern.filter(|pattern| !pattern.is_empty()) else {
        return Ok(None);
    };
    if pattern.len() > PATTERN_BYTES_MAX {
        return Err(AdapterError::InvalidPattern {
            field,
            cause: format!("longer than {PATTERN_BYTES_MAX} bytes"),
        });
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(PATTERN_COMPILED_BYTES_MAX)
        .build()
        .map(Some)
        .map_err(|err| AdapterError::InvalidPattern {
            field,
            cause: err.to_string(),
        })
}

impl Adapter for CommandAdapter {
    fn harness(&self) -> Harness {
        Harness::Command
    }

    fn program(&self) -> &str {
        &self.argv[0]
    }

    fn interactive_argv(&self) -> Vec<String> {
        self.argv.clone()
    }

    fn auth_status(&self, _env: &AgentEnv) -> AuthStatus {
        AuthStatus::NotApplicable
    }

    fn classify(&self, view: ScreenView<'_>) -> ScreenState {
        if self.question.is_match(view.cursor_line) {
            return ScreenState::Question(view.cursor_line.trim().to_owned());
        }
        if let Some(prompt) = &self.prompt
            && prompt.is_match(view.cursor_line)
        {
            return ScreenState::Ready;
        }
        // With a prompt pattern, only the prompt means ready; a ready
        // pattern alone (a server's "listening on") may be anywhere.
        if self.prompt.is_none()
            && let Some(ready) = &self.ready
            && ready.is_match(view.text)
        {
            return ScreenState::Ready;
        }
        if self.prompt.is_some() || self.ready.is_some() {
            ScreenState::Busy
        } else {
            ScreenState::Ready
        }
    }

    fn turn_style(&self) -> TurnStyle {
        if self.prompt.is_some() {
            TurnStyle::PtyPrompt
        } else {
            TurnStyle::PtyQuiet(QUIET_TURN_END)
        }
    }

    fn ready_at_spawn(&self) -> bool {
        self.prompt.is_none() && self.ready.is_none()
    }

    fn install_hint(&self) -> &'static str {
        "install the program, or give the full path of an executable in `command`"
    }

    fn login_hint(&self) -> &'static str {
        "the program has no login"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(prompt: Option<&str>) -> CommandAdapter {
        CommandAdapter::new(
            vec!["bash".to_owned()],
            &AdapterOptions {
                prompt_pattern: prompt.map(str::to_owned),
                ..AdapterOptions::default()
            },
        )
        .unwrap()
    }

    fn view<'a>(text: &'a str, cursor_line: &'a str) -> ScreenView<'a> {
        ScreenView { text, cursor_line }
    }

    #[test]
    fn prompt_pattern_marks_ready_and_questions_win() {
        let adapter = adapter(Some(r"\$$"));
        assert_eq!(
            adapter.classify(view("x\nbash-5.2$", "bash-5.2$")),
            ScreenState::Ready
        );
        assert_eq!(adapter.classify(view("x", "running")), ScreenState::Busy);
        assert_eq!(
            adapter.classify(view("x", "Overwrite file.txt? [y/n]")),
            ScreenState::Question("Overwrite file.txt? [y/n]".to_owned())
        );
        assert_eq!(adapter.turn_style(), TurnStyle::PtyPrompt);
        assert!(!adapter.ready_at_spawn());
    }

    #[test]
    fn without_patterns_turns_end_on_quiet() {
        let adapter = adapter(None);
        assert!(adapter.ready_at_spawn());
        assert_eq!(adapter.turn_style(), TurnStyle::PtyQuiet(QUIET_TURN_END));
    }

    #[test]
    fn bad_patterns_are_typed_errors() {
        let err = CommandAdapter::new(
            vec!["sh".to_owned()],
            &AdapterOptions {
                prompt_pattern: Some("(".to_owned()),
                ..AdapterOptions::default()
            },
        )
        .unwrap_err();
        assert!(matches!(
            err,
            AdapterError::InvalidPattern {
                field: "promptPattern",
                ..
            }
        ));
    }
}
