//! Screen-matching helpers shared by the adapters.

use std::sync::LazyLock;

use regex::Regex;

use super::ScreenState;

/// What a coding CLI's screen shows in each state, by the words it prints.
pub(crate) struct ScreenMarkers {
    /// It wants a login (the screen usually carries the URL).
    pub login: &'static [&'static str],
    /// It asks the person something (a permission, a trust prompt).
    pub question: &'static [&'static str],
    /// It is working on a turn.
    pub busy: &'static [&'static str],
    /// It waits for a prompt.
    pub ready: &'static [&'static str],
}

impl ScreenMarkers {
    /// The state a screen shows; the first match wins, in the order login,
    /// question, busy, ready; nothing known yet is `Starting`.
    pub(crate) fn classify(&self, text: &str) -> ScreenState {
        if find_any(text, self.login).is_some() {
            return ScreenState::LoginRequired {
                url: find_login_url(text),
            };
        }
        if let Some(marker) = find_any(text, self.question) {
            return ScreenState::Question(line_with(text, marker));
        }
        if find_any(text, self.busy).is_some() {
            return ScreenState::Busy;
        }
        if find_any(text, self.ready).is_some() {
            return ScreenState::Ready;
        }
        ScreenState::Starting
    }
}

static URL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"https?://[^\s"'<>│┃|`]+"#).expect("the URL pattern is valid"));

/// Words that mark a URL as the one to log in with, when a screen shows several.
const LOGIN_URL_HINTS: &[&str] = &["oauth", "authorize", "login", "auth", "signin", "device"];

/// The login URL on a screen: the first URL that looks like one, else the
/// first URL at all.
pub(crate) fn find_login_url(text: &str) -> Option<String> {
    let urls: Vec<String> = URL
        .find_iter(text)
        .map(|found| {
            found
                .as_str()
                .trim_end_matches(['.', ',', ')', ']', ';', ':', '!', '?'])
                .to_owned()
        })
        .collect();
    urls.iter()
        .find(|url| {
            let lower = url.to_ascii_lowercase();
            LOGIN_URL_HINTS.iter().any(|hint| lower.contains(hint))
        })
        .or_else(|| urls.first())
        .cloned()
}

/// The first needle found in `text`.
pub(crate) fn find_any<'a>(text: &str, needles: &[&'a str]) -> Option<&'a str> {
    needles.iter().copied().find(|needle| text.contains(needle))
}

/// The screen line holding `needle`, without the box-drawing frame a TUI
/// draws around it.
pub(crate) fn line_with(text: &str, needle: &str) -> String {
    text.lines()
        .find(|line| line.contains(needle))
        .map(strip_frame)
        .unwrap_or_else(|| needle.to_owned())
}

/// A line without leading and trailing frame characters and blanks.
pub(crate) fn strip_frame(line: &str) -> String {
    line.trim_matches(|ch: char| {
        ch.is_whitespace() || matches!(ch, '│' | '┃' | '║' | '╭' | '╮' | '╰' | '╯' | '─' | '|')
    })
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefers_the_login_url() {
        let text = "See https://docs.example.com/help.\nOpen https://auth.example.com/oauth/authorize?x=1&y=2 to sign in.";
        assert_eq!(
            find_login_url(text).as_deref(),
            Some("https://auth.example.com/oauth/authorize?x=1&y=2")
        );
        assert_eq!(
            find_login_url("go to https://example.com/x).").as_deref(),
            Some("https://example.com/x")
        );
        assert_eq!(find_login_url("no url here"), None);
    }

    #[test]
    fn strips_frames() {
        assert_eq!(
            strip_frame("│ Do you want to proceed?   │"),
            "Do you want to proceed?"
        );
    }
}
