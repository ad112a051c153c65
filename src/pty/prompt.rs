//! What a prompt may contain before it is typed into an agent's terminal.
//!
//! A prompt is pasted into the agent's PTY between bracketed-paste markers
//! (`ESC [ 200 ~` … `ESC [ 201 ~`). A prompt that carried `ESC [ 201 ~`
//! itself would end the paste early and make the rest keystrokes: a remote
//! sender could then drive the agent's interface (accept a permission
//! question, run a slash command). Other control bytes (Ctrl-C, Ctrl-D, a
//! C1 CSI) act on the terminal the same way. So a prompt is text: tab,
//! newline, carriage return and printable characters, nothing else.
//!
//! [`check_prompt`] is the one rule, applied where a prompt enters the
//! broker (the HTTP routes, an owner accepting a routed invoke, the session
//! manager); [`strip_controls`] is the last line of defence in the PTY
//! writer. The raw terminal WebSocket is a person typing and is not
//! filtered.

use std::borrow::Cow;

/// The stable code of a refused prompt.
pub const INVALID_PROMPT: &str = "INVALID_PROMPT";

/// A prompt that carries a character a terminal would act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the prompt carries a terminal control character (U+{code_point:04X} at byte {byte_offset}); \
     only tab, newline, carriage return and printable text are allowed"
)]
pub struct InvalidPrompt {
    /// The first offending character's code point.
    pub code_point: u32,
    /// Its byte offset in the prompt.
    pub byte_offset: usize,
}

impl InvalidPrompt {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        INVALID_PROMPT
    }
}

/// Whether `character` may appear in a prompt: tab, newline, carriage
/// return, and everything that is not a control character. Refused: the C0
/// controls (U+0000..U+001F, ESC among them), DEL (U+007F) and the C1
/// controls (U+0080..U+009F), which some terminals read as `ESC` sequences.
pub fn is_prompt_char(character: char) -> bool {
    matches!(character, '\t' | '\n' | '\r') || !character.is_control()
}

/// Accepts a prompt made only of [`is_prompt_char`] characters, or names
/// the first one that is not.
pub fn check_prompt(prompt: &str) -> Result<(), InvalidPrompt> {
    match prompt
        .char_indices()
        .find(|(_, character)| !is_prompt_char(*character))
    {
        None => Ok(()),
        Some((byte_offset, character)) => Err(InvalidPrompt {
            code_point: u32::from(character),
            byte_offset,
        }),
    }
}

/// The prompt without the characters [`check_prompt`] refuses; borrowed
/// when there were none.
pub fn strip_controls(prompt: &str) -> Cow<'_, str> {
    if check_prompt(prompt).is_ok() {
        return Cow::Borrowed(prompt);
    }
    Cow::Owned(prompt.chars().filter(|c| is_prompt_char(*c)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn text_with_tabs_and_line_breaks_is_a_prompt() {
        assert_eq!(
            check_prompt("review the diff\n\tline two\r\nü 日本 🎉"),
            Ok(())
        );
        assert_eq!(check_prompt(""), Ok(()));
    }

    #[test]
    fn the_end_of_a_paste_is_refused_with_its_position() {
        let err = check_prompt("hi\x1b[201~\ry").unwrap_err();
        assert_eq!(
            err,
            InvalidPrompt {
                code_point: 0x1b,
                byte_offset: 2
            }
        );
        assert!(err.to_string().contains("U+001B at byte 2"), "{err}");
        assert_eq!(err.code(), "INVALID_PROMPT");
    }

    #[test]
    fn every_control_but_tab_newline_and_return_is_refused() {
        for code_point in (0u32..0x20).chain([0x7f]).chain(0x80..0xa0) {
            let character = char::from_u32(code_point).unwrap();
            let allowed = matches!(character, '\t' | '\n' | '\r');
            assert_eq!(is_prompt_char(character), allowed, "U+{code_point:04X}");
            assert_eq!(
                check_prompt(&format!("a{character}b")).is_ok(),
                allowed,
                "U+{code_point:04X}"
            );
        }
        assert!(is_prompt_char(' '));
        assert!(is_prompt_char('\u{a0}'), "no-break space is printable");
    }

    #[test]
    fn stripping_removes_only_refused_characters() {
        assert_eq!(strip_controls("a\x1b[201~b\x03\u{9b}c\n"), "a[201~bc\n");
        assert!(matches!(strip_controls("plain\ttext"), Cow::Borrowed(_)));
    }

    /// Text mixing any characters with many from the low ranges (C0, ASCII,
    /// DEL, C1), where the rule's edges are; `any::<String>()` alone would
    /// generate no control characters at all.
    fn mixed_text() -> impl Strategy<Value = String> {
        let low = (0u32..0xa0).prop_filter_map("a char", char::from_u32);
        proptest::collection::vec(prop_oneof![any::<char>(), low], 0..64)
            .prop_map(|chars| chars.into_iter().collect())
    }

    proptest! {
        #[test]
        fn check_agrees_with_the_character_rule(text in mixed_text()) {
            let expected = text.chars().all(is_prompt_char);
            prop_assert_eq!(check_prompt(&text).is_ok(), expected);
            if let Err(err) = check_prompt(&text) {
                let character = text[err.byte_offset..].chars().next().unwrap();
                prop_assert_eq!(u32::from(character), err.code_point);
                prop_assert!(!is_prompt_char(character));
                prop_assert!(text[..err.byte_offset].chars().all(is_prompt_char));
            }
        }

        #[test]
        fn stripped_text_is_always_a_prompt(text in mixed_text()) {
            let stripped = strip_controls(&text);
            prop_assert!(check_prompt(&stripped).is_ok());
            prop_assert!(!stripped.contains('\x1b'));
            let kept: String = text.chars().filter(|c| is_prompt_char(*c)).collect();
            prop_assert_eq!(stripped.as_ref(), kept.as_str());
        }

        #[test]
        fn a_paste_end_anywhere_is_refused(
            before in "[ -~\t\n]{0,40}",
            after in "[ -~\t\n]{0,40}",
        ) {
            let text = format!("{before}\x1b[201~{after}");
            prop_assert!(check_prompt(&text).is_err());
            let without = format!("{before}{after}");
            prop_assert!(check_prompt(&without).is_ok());
        }
    }
}
