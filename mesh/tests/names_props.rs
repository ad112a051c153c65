//! Property tests for agent names: valid names survive printing and parsing,
//! and no input, however hostile, makes parsing or mention finding panic or
//! report a mention that does not re-parse from its own span.

use proptest::prelude::*;
use scout_mesh::names::{AgentName, Label, NamePart, Workspace, find_mentions};

/// A valid DNS label, in random ASCII case.
fn label_text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
}

/// A valid workspace: `/`-separated components that never start with `.` or
/// `-`, never end with `.`, and never hold `..`.
fn workspace_text() -> impl Strategy<Value = String> {
    let component = "[A-Za-z0-9_][A-Za-z0-9_-]{0,8}(\\.[A-Za-z0-9_-]{1,4}){0,2}"
        .prop_filter("git reserves `.lock`", |component: &String| {
            !component.ends_with(".lock")
        });
    prop::collection::vec(component, 1..5).prop_map(|components| components.join("/"))
}

/// The text of a valid name, its labels in random case.
fn name_text() -> impl Strategy<Value = String> {
    (
        label_text(),
        prop::option::of(label_text()),
        prop::option::of(workspace_text()),
    )
        .prop_map(|(definition, node, workspace)| {
            let mut text = format!("@{definition}");
            if let Some(node) = node {
                text.push('@');
                text.push_str(&node);
            }
            if let Some(workspace) = workspace {
                text.push('#');
                text.push_str(&workspace);
            }
            text
        })
}

/// Text made mostly of the characters names and mentions care about, with
/// some non-ASCII, so that many candidates come close to being valid.
fn name_like_text() -> impl Strategy<Value = String> {
    "[@#a-zA-Z0-9._/\\- \t\n(\\[\"',:!?)éß日\u{212A}\u{3000}]{0,60}"
}

/// Any string at all, or a name-like one.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), name_like_text(), name_text()]
}

proptest! {
    #[test]
    fn valid_names_round_trip_through_display(
        definition in label_text(),
        node in prop::option::of(label_text()),
        workspace in prop::option::of(workspace_text()),
    ) {
        let name = AgentName::new(
            Label::parse(&definition, NamePart::Definition).unwrap(),
            node.as_deref().map(|node| Label::parse(node, NamePart::Node).unwrap()),
            workspace.as_deref().map(|workspace| Workspace::parse(workspace).unwrap()),
        );
        let printed = name.to_string();
        prop_assert_eq!(AgentName::parse(&printed), Ok(name.clone()));
        prop_assert_eq!(AgentName::parse_lenient(&printed[1..]), Ok(name.clone()));
        prop_assert_eq!(name.definition().as_str(), definition.to_ascii_lowercase());
        prop_assert_eq!(name.workspace().map(Workspace::as_str), workspace.as_deref());
        let node_lower = node.map(|node| node.to_ascii_lowercase());
        prop_assert_eq!(name.node().map(Label::as_str), node_lower.as_deref());
    }

    #[test]
    fn generated_name_texts_parse_case_insensitively(text in name_text()) {
        let name = AgentName::parse(&text).unwrap();
        let (labels, workspace) = match text.split_once('#') {
            Some((labels, workspace)) => (labels, Some(workspace)),
            None => (text.as_str(), None),
        };
        let mut shouted = labels.to_ascii_uppercase();
        if let Some(workspace) = workspace {
            shouted.push('#');
            shouted.push_str(workspace);
        }
        prop_assert_eq!(AgentName::parse(&shouted), Ok(name));
    }

    #[test]
    fn parsing_never_panics_and_what_parses_prints_back(text in any_text()) {
        for parsed in [AgentName::parse(&text), AgentName::parse_lenient(&text)] {
            match parsed {
                Ok(name) => {
                    let printed = name.to_string();
                    prop_assert_eq!(AgentName::parse(&printed), Ok(name.clone()));
                    prop_assert_eq!(printed.parse::<AgentName>(), Ok(name));
                }
                Err(err) => {
                    prop_assert_eq!(err.code(), "INVALID_NAME");
                    let message = err.to_string();
                    prop_assert!(message.starts_with("invalid name `"));
                    prop_assert!(!message.contains('\n'));
                }
            }
        }
    }

    #[test]
    fn every_mention_reparses_from_its_span(text in any_text()) {
        let mentions = find_mentions(&text);
        let mut previous_end = 0;
        for mention in mentions {
            prop_assert!(mention.span.start >= previous_end);
            prop_assert!(text.is_char_boundary(mention.span.start));
            prop_assert!(text.is_char_boundary(mention.span.end));
            let spanned = &text[mention.span.clone()];
            prop_assert!(spanned.starts_with('@'));
            prop_assert_eq!(AgentName::parse(spanned), Ok(mention.name));
            previous_end = mention.span.end;
        }
    }

    #[test]
    fn a_name_in_a_sentence_is_found(
        name in name_text(),
        before in prop::sample::select(vec!["", "ask ", "hi (", "[", "\"", "'", "héllo\n"]),
        after in prop::sample::select(vec!["", ".", ",", ":", ")", "!", "?", "/", "...", " please", "' ünd"]),
    ) {
        let text = format!("{before}{name}{after}");
        let mentions = find_mentions(&text);
        prop_assert_eq!(mentions.len(), 1, "{}", text);
        prop_assert_eq!(&mentions[0].name, &AgentName::parse(&name).unwrap());
        prop_assert_eq!(mentions[0].span.clone(), before.len()..before.len() + name.len());
    }

    #[test]
    fn a_name_glued_to_a_word_is_not_a_mention(name in name_text()) {
        let glued = format!("x{name}");
        prop_assert!(find_mentions(&glued).is_empty());
    }
}
