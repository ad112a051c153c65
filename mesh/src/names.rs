//! Agent names: the `@definition[@node][#workspace]` grammar, its typed
//! errors, and finding mentions of agents in free text.
//!
//! A name always starts with a **definition** (`@fabric`, the logical agent).
//! It may narrow down to one **node** (`@fabric@laptop`, the broker that runs
//! it) and one **workspace** (`@fabric#feature-x`, the git branch or worktree
//! it works in). A name with both (`@fabric@laptop#feature-x`) is fully
//! qualified and names one agent instance; a shorter name is resolved against
//! the known instances by [`crate::resolve`].
//!
//! Definitions and nodes follow DNS-label rules and are compared and printed
//! lower-case, so `@Fabric` and `@fabric` are the same name. Workspaces are git
//! branch names, which are case-sensitive, so their case is kept.
//!
//! Names come from users, the API and the network, so every check returns a
//! [`NameError`] (code `INVALID_NAME`) saying which part is wrong and why;
//! nothing here panics on any input.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// The longest a definition or a node may be, in characters. This is the DNS
/// label limit, so a node name can double as a host name.
pub const LABEL_LEN_MAX: usize = 63;

/// The longest a workspace may be, in characters. Git allows longer branch
/// names, but a name this long is already unreadable in a mention, and the
/// bound keeps every name small enough to index and print.
pub const WORKSPACE_LEN_MAX: usize = 100;

/// The longest a whole name may be, in bytes: `@`, a definition, `@`, a node,
/// `#` and a workspace, each at its limit. Longer input is rejected before any
/// other check, so a hostile input costs no more than a valid one.
pub const NAME_BYTES_MAX: usize = 1 + LABEL_LEN_MAX + 1 + LABEL_LEN_MAX + 1 + WORKSPACE_LEN_MAX;

/// How much of a rejected input an error keeps, in bytes, so that an error
/// about a huge input stays small.
const ERROR_INPUT_BYTES_MAX: usize = NAME_BYTES_MAX + 16;

const _: () = assert!(ERROR_INPUT_BYTES_MAX >= NAME_BYTES_MAX);

/// Which part of a name a value is, or which part an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NamePart {
    /// The logical agent, `fabric` in `@fabric@laptop#main`.
    Definition,
    /// The broker, `laptop` in `@fabric@laptop#main`.
    Node,
    /// The git branch or worktree, `main` in `@fabric@laptop#main`.
    Workspace,
    /// The name as a whole (its length, its leading `@`).
    Whole,
}

impl NamePart {
    /// The word used for this part in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            NamePart::Definition => "definition",
            NamePart::Node => "node",
            NamePart::Workspace => "workspace",
            NamePart::Whole => "name",
        }
    }
}

impl fmt::Display for NamePart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a name, or one part of it, was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NameErrorReason {
    /// The part (or the whole name) has no characters.
    Empty,
    /// The part is longer than its limit. For [`NamePart::Whole`] the length
    /// is in bytes, for the other parts in characters.
    TooLong {
        /// The length that was given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The part contains a character its rules do not allow.
    BadChar {
        /// The first character that is not allowed.
        ch: char,
        /// Its position in the part, counting characters from 1.
        pos: usize,
    },
    /// The part starts with `-`. DNS labels may not, and a branch name that
    /// does would be read as an option by git.
    LeadingHyphen,
    /// A definition or node ends with `-`, which DNS labels may not.
    TrailingHyphen,
    /// The name does not start with `@`.
    MissingAt,
    /// A workspace contains `..`, which git forbids in ref names.
    DoubleDot,
    /// A workspace contains `//`, which git forbids in ref names.
    DoubleSlash,
    /// A workspace starts with `/`, which git forbids in ref names.
    LeadingSlash,
    /// A workspace ends with `/`, which git forbids in ref names.
    TrailingSlash,
    /// A workspace ends with `.`, which git forbids in ref names.
    TrailingDot,
    /// A `/`-separated component of a workspace starts with `.`, which git
    /// forbids in ref names (it would be a hidden file in `.git/refs`).
    ComponentLeadingDot,
    /// A `/`-separated component of a workspace ends with `.lock`, which git
    /// forbids because it uses such files as locks next to its refs.
    LockSuffix,
}

/// A name, or a part of one, that breaks the grammar.
///
/// Its message names the input, the part that is wrong and why, for example
/// ``invalid name `@Fab_ric`: definition `fab_ric` has `_` at position 4; use
/// a-z, 0-9 and `-` ``.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct NameError {
    input: String,
    part: NamePart,
    value: String,
    reason: NameErrorReason,
}

impl NameError {
    /// The stable code of every name error, for the API and the CLI.
    pub const CODE: &'static str = "INVALID_NAME";

    fn new(input: &str, part: NamePart, value: &str, reason: NameErrorReason) -> NameError {
        NameError {
            input: truncate_for_error(input),
            part,
            value: truncate_for_error(value),
            reason,
        }
    }

    /// The stable code of this error, [`NameError::CODE`].
    pub fn code(&self) -> &'static str {
        Self::CODE
    }

    /// The input that was rejected, cut short (ending in `…`) when it was
    /// much longer than any valid name.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// The part of the name that is wrong.
    pub fn part(&self) -> NamePart {
        self.part
    }

    /// The text of the wrong part, lower-cased for a definition or node.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Why the part is wrong.
    pub fn reason(&self) -> &NameErrorReason {
        &self.reason
    }
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = self.part;
        let value = Printable(&self.value);
        write!(f, "invalid name `{}`: ", Printable(&self.input))?;
        match &self.reason {
            NameErrorReason::Empty => write!(f, "{part} is empty"),
            NameErrorReason::TooLong { len, max } if part == NamePart::Whole => {
                write!(f, "name is {len} bytes long; the limit is {max}")
            }
            NameErrorReason::TooLong { len, max } => {
                write!(
                    f,
                    "{part} `{value}` is {len} characters long; the limit is {max}"
                )
            }
            NameErrorReason::BadChar { ch, pos } => {
                let allowed = if part == NamePart::Workspace {
                    "A-Z, a-z, 0-9, `.`, `_`, `/` and `-`"
                } else {
                    "a-z, 0-9 and `-`"
                };
                let mut ch_utf8 = [0; 4];
                let ch = Printable(ch.encode_utf8(&mut ch_utf8));
                write!(
                    f,
                    "{part} `{value}` has `{ch}` at position {pos}; use {allowed}"
                )
            }
            NameErrorReason::LeadingHyphen => write!(f, "{part} `{value}` starts with `-`"),
            NameErrorReason::TrailingHyphen => write!(f, "{part} `{value}` ends with `-`"),
            NameErrorReason::MissingAt => {
                write!(f, "name must start with `@`, as in `@fabric@laptop#main`")
            }
            NameErrorReason::DoubleDot => write!(f, "{part} `{value}` contains `..`"),
            NameErrorReason::DoubleSlash => write!(f, "{part} `{value}` contains `//`"),
            NameErrorReason::LeadingSlash => write!(f, "{part} `{value}` starts with `/`"),
            NameErrorReason::TrailingSlash => write!(f, "{part} `{value}` ends with `/`"),
            NameErrorReason::TrailingDot => write!(f, "{part} `{value}` ends with `.`"),
            NameErrorReason::ComponentLeadingDot => {
                write!(f, "{part} `{value}` has a path component starting with `.`")
            }
            NameErrorReason::LockSuffix => {
                write!(
                    f,
                    "{part} `{value}` has a path component ending with `.lock`"
                )
            }
        }
    }
}

/// A definition or node name: a DNS label, stored lower-case.
///
/// Rules:
/// - 1 to [`LABEL_LEN_MAX`] characters;
/// - only `a-z`, `0-9` and `-` (ASCII upper-case is accepted and lower-cased;
///   any other character, including non-ASCII letters, is rejected);
/// - no leading or trailing `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label(String);

impl Label {
    /// Validates `input` as the given `part` of a name (which only labels the
    /// error) and lower-cases it.
    pub fn parse(input: &str, part: NamePart) -> Result<Label, NameError> {
        Label::parse_within(input, input, part)
    }

    /// The label, lower-case.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Like [`Label::parse`], but errors quote `whole` as the input.
    fn parse_within(whole: &str, raw: &str, part: NamePart) -> Result<Label, NameError> {
        let lower = raw.to_ascii_lowercase();
        let fail = |reason| Err(NameError::new(whole, part, &lower, reason));
        if lower.is_empty() {
            return fail(NameErrorReason::Empty);
        }
        if let Some((idx, ch)) = lower
            .chars()
            .enumerate()
            .find(|(_, ch)| !is_label_char(*ch))
        {
            return fail(NameErrorReason::BadChar { ch, pos: idx + 1 });
        }
        // Every character is ASCII now, so the byte length is the character count.
        if lower.len() > LABEL_LEN_MAX {
            return fail(NameErrorReason::TooLong {
                len: lower.len(),
                max: LABEL_LEN_MAX,
            });
        }
        if lower.starts_with('-') {
            return fail(NameErrorReason::LeadingHyphen);
        }
        if lower.ends_with('-') {
            return fail(NameErrorReason::TrailingHyphen);
        }
        Ok(Label(lower))
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A workspace: a git branch or worktree name, case preserved.
///
/// The rules follow `git check-ref-format --branch` where that is cheap:
/// - 1 to [`WORKSPACE_LEN_MAX`] characters;
/// - only `A-Z`, `a-z`, `0-9`, `.`, `_`, `/` and `-` (so none of git's
///   forbidden characters, spaces, `@` or `#`, can appear);
/// - does not start or end with `/`, and contains no `//`;
/// - contains no `..`;
/// - does not start with `-` (git would read it as an option);
/// - no `/`-separated component starts with `.` (so it cannot start with `.`);
/// - does not end with `.`;
/// - no `/`-separated component ends with `.lock` (so it cannot end with it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Workspace(String);

impl Workspace {
    /// Validates `input` as a workspace name.
    pub fn parse(input: &str) -> Result<Workspace, NameError> {
        Workspace::parse_within(input, input)
    }

    /// The workspace name, as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Like [`Workspace::parse`], but errors quote `whole` as the input.
    fn parse_within(whole: &str, raw: &str) -> Result<Workspace, NameError> {
        let fail = |reason| Err(NameError::new(whole, NamePart::Workspace, raw, reason));
        if raw.is_empty() {
            return fail(NameErrorReason::Empty);
        }
        if let Some((idx, ch)) = raw
            .chars()
            .enumerate()
            .find(|(_, ch)| !is_workspace_char(*ch))
        {
            return fail(NameErrorReason::BadChar { ch, pos: idx + 1 });
        }
        // Every character is ASCII now, so the byte length is the character count.
        if raw.len() > WORKSPACE_LEN_MAX {
            return fail(NameErrorReason::TooLong {
                len: raw.len(),
                max: WORKSPACE_LEN_MAX,
            });
        }
        if raw.starts_with('/') {
            return fail(NameErrorReason::LeadingSlash);
        }
        if raw.ends_with('/') {
            return fail(NameErrorReason::TrailingSlash);
        }
        if raw.contains("//") {
            return fail(NameErrorReason::DoubleSlash);
        }
        if raw.contains("..") {
            return fail(NameErrorReason::DoubleDot);
        }
        if raw.starts_with('-') {
            return fail(NameErrorReason::LeadingHyphen);
        }
        if raw.split('/').any(|component| component.starts_with('.')) {
            return fail(NameErrorReason::ComponentLeadingDot);
        }
        if raw.ends_with('.') {
            return fail(NameErrorReason::TrailingDot);
        }
        if raw.split('/').any(|component| component.ends_with(".lock")) {
            return fail(NameErrorReason::LockSuffix);
        }
        Ok(Workspace(raw.to_owned()))
    }
}

impl fmt::Display for Workspace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An agent name: a definition, optionally narrowed to a node and a workspace.
///
/// Prints in canonical form (`@fabric@laptop#feature-x`, definition and node
/// lower-case), and serializes as that string; deserializing validates it.
/// Ordered by definition, then node, then workspace, a missing part first.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentName {
    definition: Label,
    node: Option<Label>,
    workspace: Option<Workspace>,
}

impl AgentName {
    /// Builds a name from parts that are already valid.
    pub fn new(definition: Label, node: Option<Label>, workspace: Option<Workspace>) -> AgentName {
        AgentName {
            definition,
            node,
            workspace,
        }
    }

    /// Parses `@definition[@node][#workspace]`. The leading `@` is required.
    pub fn parse(input: &str) -> Result<AgentName, NameError> {
        check_whole_len(input)?;
        match input.strip_prefix('@') {
            Some(body) => AgentName::parse_body(input, body),
            None if input.is_empty() => Err(NameError::new(
                input,
                NamePart::Whole,
                input,
                NameErrorReason::Empty,
            )),
            None => Err(NameError::new(
                input,
                NamePart::Whole,
                input,
                NameErrorReason::MissingAt,
            )),
        }
    }

    /// Like [`AgentName::parse`], but the leading `@` may be left out, as in
    /// `scout resolve fabric@laptop`, where typing `@` is a chore.
    pub fn parse_lenient(input: &str) -> Result<AgentName, NameError> {
        check_whole_len(input)?;
        if input.is_empty() {
            return Err(NameError::new(
                input,
                NamePart::Whole,
                input,
                NameErrorReason::Empty,
            ));
        }
        let body = input.strip_prefix('@').unwrap_or(input);
        AgentName::parse_body(input, body)
    }

    /// The logical agent.
    pub fn definition(&self) -> &Label {
        &self.definition
    }

    /// The node, when the name gives one.
    pub fn node(&self) -> Option<&Label> {
        self.node.as_ref()
    }

    /// The workspace, when the name gives one.
    pub fn workspace(&self) -> Option<&Workspace> {
        self.workspace.as_ref()
    }

    /// Whether the name gives both a node and a workspace, and so names one
    /// instance without needing resolution.
    pub fn is_fully_qualified(&self) -> bool {
        self.node.is_some() && self.workspace.is_some()
    }

    /// Parses what follows the leading `@`; errors quote `whole`.
    fn parse_body(whole: &str, body: &str) -> Result<AgentName, NameError> {
        // The workspace is split off first: `#` can only introduce it, while
        // the workspace itself may not contain `@`, so an `@` after `#` is a
        // bad character in the workspace rather than the start of a node.
        let (agent, workspace) = match body.split_once('#') {
            Some((agent, workspace)) => (agent, Some(workspace)),
            None => (body, None),
        };
        let (definition, node) = match agent.split_once('@') {
            Some((definition, node)) => (definition, Some(node)),
            None => (agent, None),
        };
        let definition = Label::parse_within(whole, definition, NamePart::Definition)?;
        let node = node
            .map(|node| Label::parse_within(whole, node, NamePart::Node))
            .transpose()?;
        let workspace = workspace
            .map(|workspace| Workspace::parse_within(whole, workspace))
            .transpose()?;
        Ok(AgentName {
            definition,
            node,
            workspace,
        })
    }
}

impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}", self.definition)?;
        if let Some(node) = &self.node {
            write!(f, "@{node}")?;
        }
        if let Some(workspace) = &self.workspace {
            write!(f, "#{workspace}")?;
        }
        Ok(())
    }
}

impl FromStr for AgentName {
    type Err = NameError;

    fn from_str(input: &str) -> Result<AgentName, NameError> {
        AgentName::parse(input)
    }
}

impl serde::Serialize for AgentName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for AgentName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<AgentName, D::Error> {
        struct NameVisitor;

        impl serde::de::Visitor<'_> for NameVisitor {
            type Value = AgentName;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an agent name such as `@fabric@laptop#main`")
            }

            fn visit_str<E: serde::de::Error>(self, input: &str) -> Result<AgentName, E> {
                AgentName::parse(input).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(NameVisitor)
    }
}

/// An agent name found in free text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mention {
    /// The name that was mentioned.
    pub name: AgentName,
    /// Where it is in the text, in bytes, from its `@` to its last character.
    pub span: Range<usize>,
}

/// Finds the agent names mentioned in `text`, in order.
///
/// A mention starts at an `@` that opens the text or follows whitespace or
/// one of `(`, `[`, `"`, `'`, so the `@` in `alice@example.com` starts none.
/// It extends over the characters a name may contain; then trailing `.`, `/`,
/// `@` and `#`, which cannot end a valid name, are dropped, so `ask @fabric.`
/// mentions `@fabric`. A candidate directly followed by another letter or
/// digit (`@fabricé`) is not a mention, and neither is one that is not a valid
/// name (`@-x`): free text is not an error.
pub fn find_mentions(text: &str) -> Vec<Mention> {
    let bytes = text.as_bytes();
    let mut mentions = Vec::new();
    let mut idx = 0;
    while idx < bytes.len() {
        if bytes[idx] != b'@' || !opens_mention(text, idx) {
            // Stepping by byte is safe: only the ASCII `@` is acted upon, and
            // it never occurs inside a multi-byte character.
            idx += 1;
            continue;
        }
        let start = idx;
        let mut end = start + 1;
        while end < bytes.len() && is_name_byte(bytes[end]) {
            end += 1;
        }
        // Name bytes are ASCII, so `end` is on a character boundary.
        let followed_by_word = text[end..]
            .chars()
            .next()
            .is_some_and(char::is_alphanumeric);
        let candidate = text[start..end].trim_end_matches(['.', '/', '@', '#']);
        if !followed_by_word && let Ok(name) = AgentName::parse(candidate) {
            mentions.push(Mention {
                name,
                span: start..start + candidate.len(),
            });
        }
        idx = end;
    }
    mentions
}

/// Whether the `@` at byte `idx` of `text` is placed where a mention may start.
fn opens_mention(text: &str, idx: usize) -> bool {
    match text[..idx].chars().next_back() {
        None => true,
        Some(prev) => prev.is_whitespace() || matches!(prev, '(' | '[' | '"' | '\''),
    }
}

/// Whether `byte` may appear inside a name (in any of its parts or separators).
fn is_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'/' | b'@' | b'#')
}

fn is_label_char(ch: char) -> bool {
    ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-'
}

fn is_workspace_char(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '/' | '-')
}

fn check_whole_len(input: &str) -> Result<(), NameError> {
    if input.len() > NAME_BYTES_MAX {
        return Err(NameError::new(
            input,
            NamePart::Whole,
            input,
            NameErrorReason::TooLong {
                len: input.len(),
                max: NAME_BYTES_MAX,
            },
        ));
    }
    Ok(())
}

/// Keeps at most [`ERROR_INPUT_BYTES_MAX`] bytes of `input`, cut on a
/// character boundary and marked with `…` when cut.
fn truncate_for_error(input: &str) -> String {
    if input.len() <= ERROR_INPUT_BYTES_MAX {
        return input.to_owned();
    }
    let mut cut = ERROR_INPUT_BYTES_MAX;
    while !input.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &input[..cut])
}

/// Prints a string with control characters escaped, so that an error message
/// about hostile input stays on one line and cannot move the cursor.
struct Printable<'a>(&'a str);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for ch in self.0.chars() {
            if ch.is_control() {
                write!(f, "{}", ch.escape_default())?;
            } else {
                write!(f, "{ch}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(input: &str) -> AgentName {
        AgentName::parse(input).unwrap()
    }

    fn reason(input: &str) -> (NamePart, NameErrorReason) {
        let err = AgentName::parse(input).unwrap_err();
        (err.part(), err.reason().clone())
    }

    fn message(input: &str) -> String {
        AgentName::parse(input).unwrap_err().to_string()
    }

    #[test]
    fn parses_every_shape() {
        let bare = name("@fabric");
        assert_eq!(bare.definition().as_str(), "fabric");
        assert_eq!(bare.node(), None);
        assert_eq!(bare.workspace(), None);
        assert!(!bare.is_fully_qualified());

        let on_node = name("@fabric@laptop");
        assert_eq!(on_node.node().map(Label::as_str), Some("laptop"));
        assert_eq!(on_node.workspace(), None);

        let in_workspace = name("@fabric#feature-x");
        assert_eq!(in_workspace.node(), None);
        assert_eq!(
            in_workspace.workspace().map(Workspace::as_str),
            Some("feature-x")
        );

        let full = name("@fabric@laptop#feature-x");
        assert_eq!(full.definition().as_str(), "fabric");
        assert_eq!(full.node().map(Label::as_str), Some("laptop"));
        assert_eq!(full.workspace().map(Workspace::as_str), Some("feature-x"));
        assert!(full.is_fully_qualified());
        assert_eq!(full.to_string(), "@fabric@laptop#feature-x");
    }

    #[test]
    fn new_builds_the_same_name_as_parse() {
        let built = AgentName::new(
            Label::parse("fabric", NamePart::Definition).unwrap(),
            Some(Label::parse("laptop", NamePart::Node).unwrap()),
            Some(Workspace::parse("feature/x").unwrap()),
        );
        assert_eq!(built, name("@fabric@laptop#feature/x"));
    }

    #[test]
    fn labels_fold_case_and_workspaces_keep_it() {
        let folded = name("@FABRIC@Laptop#Feature-X");
        assert_eq!(folded.to_string(), "@fabric@laptop#Feature-X");
        assert_eq!(folded, name("@fabric@laptop#Feature-X"));
        assert_ne!(folded, name("@fabric@laptop#feature-x"));
    }

    #[test]
    fn label_rules() {
        for ok in ["a", "0", "a-b", "a--b", "3com", "x".repeat(63).as_str()] {
            assert!(Label::parse(ok, NamePart::Definition).is_ok(), "{ok}");
        }
        let cases: &[(&str, NameErrorReason)] = &[
            ("", NameErrorReason::Empty),
            ("-a", NameErrorReason::LeadingHyphen),
            ("a-", NameErrorReason::TrailingHyphen),
            ("-", NameErrorReason::LeadingHyphen),
            ("fab_ric", NameErrorReason::BadChar { ch: '_', pos: 4 }),
            ("a.b", NameErrorReason::BadChar { ch: '.', pos: 2 }),
            ("é", NameErrorReason::BadChar { ch: 'é', pos: 1 }),
            ("aé_", NameErrorReason::BadChar { ch: 'é', pos: 2 }),
            // Unicode case folding would turn the Kelvin sign into `k`; only
            // ASCII is folded, so it stays a bad character.
            (
                "\u{212A}",
                NameErrorReason::BadChar {
                    ch: '\u{212A}',
                    pos: 1,
                },
            ),
            (
                &"x".repeat(64),
                NameErrorReason::TooLong { len: 64, max: 63 },
            ),
        ];
        for (input, expected) in cases {
            let err = Label::parse(input, NamePart::Node).unwrap_err();
            assert_eq!(err.reason(), expected, "{input:?}");
            assert_eq!(err.part(), NamePart::Node);
        }
    }

    #[test]
    fn workspace_rules() {
        for ok in [
            "main",
            "Feature-X",
            "feature/x",
            "release/1.2",
            "a.b_c-d",
            "v1.0.0",
            "a/b/c",
            "x.lockfile",
            "lock",
            "_x",
            "x-",
            "w".repeat(100).as_str(),
        ] {
            assert!(Workspace::parse(ok).is_ok(), "{ok}");
        }
        let cases: &[(&str, NameErrorReason)] = &[
            ("", NameErrorReason::Empty),
            ("a b", NameErrorReason::BadChar { ch: ' ', pos: 2 }),
            ("a~b", NameErrorReason::BadChar { ch: '~', pos: 2 }),
            ("a@b", NameErrorReason::BadChar { ch: '@', pos: 2 }),
            ("a#b", NameErrorReason::BadChar { ch: '#', pos: 2 }),
            ("brünn", NameErrorReason::BadChar { ch: 'ü', pos: 3 }),
            (
                &"w".repeat(101),
                NameErrorReason::TooLong { len: 101, max: 100 },
            ),
            ("/main", NameErrorReason::LeadingSlash),
            ("main/", NameErrorReason::TrailingSlash),
            ("a//b", NameErrorReason::DoubleSlash),
            ("a..b", NameErrorReason::DoubleDot),
            ("..", NameErrorReason::DoubleDot),
            ("-x", NameErrorReason::LeadingHyphen),
            (".hidden", NameErrorReason::ComponentLeadingDot),
            ("a/.b", NameErrorReason::ComponentLeadingDot),
            (".", NameErrorReason::ComponentLeadingDot),
            ("main.", NameErrorReason::TrailingDot),
            ("main.lock", NameErrorReason::LockSuffix),
            ("a.lock/b", NameErrorReason::LockSuffix),
        ];
        for (input, expected) in cases {
            let err = Workspace::parse(input).unwrap_err();
            assert_eq!(err.reason(), expected, "{input:?}");
            assert_eq!(err.part(), NamePart::Workspace);
        }
    }

    #[test]
    fn whole_name_rules() {
        assert_eq!(reason(""), (NamePart::Whole, NameErrorReason::Empty));
        assert_eq!(
            reason("fabric"),
            (NamePart::Whole, NameErrorReason::MissingAt)
        );
        assert_eq!(
            reason(" @fabric"),
            (NamePart::Whole, NameErrorReason::MissingAt)
        );
        assert_eq!(reason("@"), (NamePart::Definition, NameErrorReason::Empty));
        assert_eq!(
            reason("@#main"),
            (NamePart::Definition, NameErrorReason::Empty)
        );
        assert_eq!(reason("@fabric@"), (NamePart::Node, NameErrorReason::Empty));
        assert_eq!(
            reason("@fabric@#main"),
            (NamePart::Node, NameErrorReason::Empty)
        );
        assert_eq!(
            reason("@fabric#"),
            (NamePart::Workspace, NameErrorReason::Empty)
        );
        assert_eq!(
            reason("@fabric@laptop@x"),
            (NamePart::Node, NameErrorReason::BadChar { ch: '@', pos: 7 })
        );
        assert_eq!(
            reason("@fabric#a#b"),
            (
                NamePart::Workspace,
                NameErrorReason::BadChar { ch: '#', pos: 2 }
            )
        );
        assert_eq!(
            reason("@fabric#main@laptop"),
            (
                NamePart::Workspace,
                NameErrorReason::BadChar { ch: '@', pos: 5 }
            )
        );
        assert_eq!(
            reason("@fabric "),
            (
                NamePart::Definition,
                NameErrorReason::BadChar { ch: ' ', pos: 7 }
            )
        );

        let longest = format!("@{}@{}#{}", "d".repeat(63), "n".repeat(63), "w".repeat(100));
        assert_eq!(longest.len(), NAME_BYTES_MAX);
        assert!(name(&longest).is_fully_qualified());
        let too_long = format!("{longest}x");
        assert_eq!(
            reason(&too_long),
            (
                NamePart::Whole,
                NameErrorReason::TooLong {
                    len: NAME_BYTES_MAX + 1,
                    max: NAME_BYTES_MAX
                }
            )
        );
    }

    #[test]
    fn lenient_parse_accepts_a_missing_at() {
        assert_eq!(AgentName::parse_lenient("fabric").unwrap(), name("@fabric"));
        assert_eq!(
            AgentName::parse_lenient("fabric@laptop#main").unwrap(),
            name("@fabric@laptop#main")
        );
        assert_eq!(
            AgentName::parse_lenient("@fabric").unwrap(),
            name("@fabric")
        );
        let empty = AgentName::parse_lenient("").unwrap_err();
        assert_eq!(empty.part(), NamePart::Whole);
        assert_eq!(empty.reason(), &NameErrorReason::Empty);
        let bad = AgentName::parse_lenient("fab_ric").unwrap_err();
        assert_eq!(
            bad.to_string(),
            "invalid name `fab_ric`: definition `fab_ric` has `_` at position 4; use a-z, 0-9 and `-`"
        );
        assert!(AgentName::parse_lenient("@@fabric").is_err());
    }

    #[test]
    fn error_messages_say_which_part_and_why() {
        assert_eq!(
            message("@Fab_ric"),
            "invalid name `@Fab_ric`: definition `fab_ric` has `_` at position 4; use a-z, 0-9 and `-`"
        );
        assert_eq!(
            message("@fabric#"),
            "invalid name `@fabric#`: workspace is empty"
        );
        assert_eq!(message(""), "invalid name ``: name is empty");
        assert_eq!(
            message("fabric"),
            "invalid name `fabric`: name must start with `@`, as in `@fabric@laptop#main`"
        );
        assert_eq!(
            message("@fabric@-laptop"),
            "invalid name `@fabric@-laptop`: node `-laptop` starts with `-`"
        );
        assert_eq!(
            message("@fabric-"),
            "invalid name `@fabric-`: definition `fabric-` ends with `-`"
        );
        assert_eq!(
            message("@fabric#a b"),
            "invalid name `@fabric#a b`: workspace `a b` has ` ` at position 2; \
             use A-Z, a-z, 0-9, `.`, `_`, `/` and `-`"
        );
        assert_eq!(
            message("@fabric#a..b"),
            "invalid name `@fabric#a..b`: workspace `a..b` contains `..`"
        );
        assert_eq!(
            message("@fabric#main.lock"),
            "invalid name `@fabric#main.lock`: workspace `main.lock` has a path component \
             ending with `.lock`"
        );
        assert_eq!(
            message(&format!("@{}", "x".repeat(64))),
            format!(
                "invalid name `@{0}`: definition `{0}` is 64 characters long; the limit is 63",
                "x".repeat(64)
            )
        );
        assert_eq!(
            message("@a\nb"),
            "invalid name `@a\\nb`: definition `a\\nb` has `\\n` at position 2; use a-z, 0-9 and `-`"
        );
    }

    #[test]
    fn errors_have_a_stable_code_and_stay_small() {
        let err = AgentName::parse("nope").unwrap_err();
        assert_eq!(err.code(), "INVALID_NAME");
        assert_eq!(NameError::CODE, "INVALID_NAME");

        let huge = "é".repeat(10_000);
        let err = AgentName::parse(&huge).unwrap_err();
        assert_eq!(
            err.reason(),
            &NameErrorReason::TooLong {
                len: 20_000,
                max: NAME_BYTES_MAX
            }
        );
        assert!(err.input().len() <= ERROR_INPUT_BYTES_MAX + '…'.len_utf8());
        assert!(err.input().ends_with('…'));
        assert!(
            err.to_string()
                .contains("name is 20000 bytes long; the limit is 229")
        );
    }

    #[test]
    fn from_str_and_serde_use_the_canonical_string() {
        use serde::Deserialize;
        use serde::de::IntoDeserializer;
        use serde::de::value::{Error as ValueError, StrDeserializer};

        assert_eq!(
            "@Fabric@laptop".parse::<AgentName>().unwrap(),
            name("@fabric@laptop")
        );

        let deserializer: StrDeserializer<'_, ValueError> = "@FABRIC#Main".into_deserializer();
        assert_eq!(
            AgentName::deserialize(deserializer).unwrap(),
            name("@fabric#Main")
        );

        let deserializer: StrDeserializer<'_, ValueError> = "@fab ric".into_deserializer();
        let err = AgentName::deserialize(deserializer).unwrap_err();
        assert!(
            err.to_string().contains("definition `fab ric` has ` `"),
            "{err}"
        );
    }

    #[test]
    fn names_order_by_definition_then_node_then_workspace() {
        let mut names = [
            name("@fabric@laptop#main"),
            name("@fabric"),
            name("@alpha@z"),
            name("@fabric@laptop"),
            name("@fabric#main"),
        ];
        names.sort();
        let printed: Vec<String> = names.iter().map(ToString::to_string).collect();
        assert_eq!(
            printed,
            [
                "@alpha@z",
                "@fabric",
                "@fabric#main",
                "@fabric@laptop",
                "@fabric@laptop#main"
            ]
        );
    }

    fn mentioned(text: &str) -> Vec<(String, &str)> {
        find_mentions(text)
            .into_iter()
            .map(|mention| (mention.name.to_string(), &text[mention.span]))
            .collect()
    }

    #[test]
    fn mentions_at_start_and_after_whitespace_or_openers() {
        assert_eq!(mentioned("@fabric look"), [("@fabric".into(), "@fabric")]);
        assert_eq!(mentioned("ask\t@fabric"), [("@fabric".into(), "@fabric")]);
        assert_eq!(
            mentioned("(@fabric@devbox#main)"),
            [("@fabric@devbox#main".into(), "@fabric@devbox#main")]
        );
        assert_eq!(mentioned("[@a] \"@b\" '@c'").len(), 3);
        assert_eq!(
            mentioned("see\u{3000}@fabric"),
            [("@fabric".into(), "@fabric")]
        );
    }

    #[test]
    fn email_addresses_are_not_mentions() {
        assert!(mentioned("mail alice@example.com now").is_empty());
        assert!(mentioned("x@fabric").is_empty());
        assert!(mentioned("a,@fabric").is_empty());
    }

    #[test]
    fn trailing_punctuation_is_trimmed() {
        assert_eq!(mentioned("ask @fabric."), [("@fabric".into(), "@fabric")]);
        assert_eq!(
            mentioned("ask @fabric, then"),
            [("@fabric".into(), "@fabric")]
        );
        assert_eq!(mentioned("@fabric: hi"), [("@fabric".into(), "@fabric")]);
        assert_eq!(mentioned("hey @fabric!"), [("@fabric".into(), "@fabric")]);
        assert_eq!(mentioned("is it @fabric?"), [("@fabric".into(), "@fabric")]);
        assert_eq!(
            mentioned("on @fabric#feature/x/."),
            [("@fabric#feature/x".into(), "@fabric#feature/x")]
        );
        assert_eq!(mentioned("@fabric@ and"), [("@fabric".into(), "@fabric")]);
        assert_eq!(
            mentioned("@fabric#release/1.2..."),
            [("@fabric#release/1.2".into(), "@fabric#release/1.2")]
        );
    }

    #[test]
    fn mentions_fold_case_but_spans_point_at_the_text() {
        assert_eq!(
            mentioned("ping @FABRIC@Laptop#Feature-X"),
            [(
                "@fabric@laptop#Feature-X".into(),
                "@FABRIC@Laptop#Feature-X"
            )]
        );
    }

    #[test]
    fn several_mentions_in_order() {
        let found = find_mentions("@a and @b@n, then @c#w.");
        let names: Vec<String> = found.iter().map(|m| m.name.to_string()).collect();
        assert_eq!(names, ["@a", "@b@n", "@c#w"]);
        assert_eq!(found[0].span, 0..2);
        assert_eq!(found[1].span, 7..11);
        assert_eq!(found[2].span, 18..22);
    }

    #[test]
    fn invalid_candidates_are_skipped() {
        assert!(mentioned("@-x").is_empty());
        assert!(mentioned("@ alone").is_empty());
        assert!(mentioned("@fab_ric").is_empty());
        assert!(mentioned("@fabric#main.lock").is_empty());
        assert_eq!(mentioned("@-x @ok"), [("@ok".into(), "@ok")]);
    }

    #[test]
    fn unicode_around_mentions_is_safe() {
        assert_eq!(
            mentioned("héllo @fabric ünd"),
            [("@fabric".into(), "@fabric")]
        );
        assert_eq!(mentioned("«@fabric»").len(), 0);
        assert_eq!(mentioned("→ @fabric→"), [("@fabric".into(), "@fabric")]);
        // A letter glued to the candidate means it is some other word.
        assert!(mentioned("@fabricé").is_empty());
        assert!(mentioned("@日本").is_empty());
        assert!(mentioned("é@fabric").is_empty());
        assert!(mentioned("").is_empty());
        assert!(mentioned("@").is_empty());
    }
}
