//! The causal chain of a mention, and the rule that keeps agents from
//! mentioning each other forever.
//!
//! Every invocation carries the instances that led to it: when agent A,
//! while running invocation X, sends to B, the new invocation's chain is X's
//! chain followed by A. An invocation a person submits has an empty chain.
//! [`extend`] builds the new chain and refuses it with [`MentionLoop`]
//! (stable code `MENTION_LOOP`) when the target already appears in it (a
//! cycle: A asks B which asks A) or when it would grow past the depth limit.
//! The rule is pure, so the origin broker checks it at submit and the owner
//! broker checks it again on the chain that travelled with the invocation.

use serde::{Deserialize, Serialize};

/// Longest causal chain accepted, in instances, unless settings say
/// otherwise. Eight hops is far more delegation than a useful task needs
/// (a person, a planner, a few specialists, their helpers), while a runaway
/// loop between agents reaches it within seconds and stops there.
pub const MENTION_DEPTH_MAX: usize = 8;

/// The stable code of a refused mention.
pub const MENTION_LOOP_CODE: &str = "MENTION_LOOP";

/// Why a mention was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MentionLoop {
    /// The target already appears in the chain that led to this mention.
    #[error(
        "{target} is already in the chain that led here ({}): the mention would loop",
        render(chain)
    )]
    Cycle {
        /// The chain, oldest first, ending with the sender.
        chain: Vec<String>,
        /// The instance mentioned.
        target: String,
    },
    /// The chain would be longer than the limit.
    #[error(
        "the chain of mentions {} would be longer than {max} agents",
        render(chain)
    )]
    TooDeep {
        /// The chain, oldest first, ending with the sender.
        chain: Vec<String>,
        /// The limit.
        max: usize,
    },
}

impl MentionLoop {
    /// The stable code, `MENTION_LOOP`.
    pub fn code(&self) -> &'static str {
        MENTION_LOOP_CODE
    }

    /// The chain it names, oldest first.
    pub fn chain(&self) -> &[String] {
        match self {
            MentionLoop::Cycle { chain, .. } | MentionLoop::TooDeep { chain, .. } => chain,
        }
    }
}

fn render(chain: &[String]) -> String {
    if chain.is_empty() {
        "(none)".to_owned()
    } else {
        chain.join(" → ")
    }
}

/// The chain of an invocation that `sender` (when an agent sends it) submits
/// to `target` while running an invocation whose chain is `parent`: the
/// parent chain followed by the sender. Refused when the target is already
/// in it (the sender included: an agent mentioning itself) or when it
/// would hold more than `max` instances. A person's submission (no sender)
/// keeps the parent chain, which is empty for a fresh one.
pub fn extend(
    parent: &[String],
    sender: Option<&str>,
    target: &str,
    max: usize,
) -> Result<Vec<String>, MentionLoop> {
    let mut chain = parent.to_vec();
    if let Some(sender) = sender {
        chain.push(sender.to_owned());
    }
    check(&chain, target, max)?;
    Ok(chain)
}

/// The chain of a reply: an agent answering, in the same conversation, the
/// instance whose mention it is running (`target` is the `from` of that
/// invocation). A reply goes back down the chain rather than around a
/// loop, so it carries the chain as it was when the target sent: the links
/// before the target's own. The target then answers in a new turn of that
/// conversation, with the chain it had.
pub fn reply(parent: &[String], target: &str) -> Vec<String> {
    let before = parent
        .iter()
        .rposition(|link| link == target)
        .unwrap_or(parent.len());
    parent[..before].to_vec()
}

/// Checks a chain as it arrives with an invocation for `target`: the same
/// rule as [`extend`], applied again by the owner broker so that a chain
/// built elsewhere holds it too.
pub fn check(chain: &[String], target: &str, max: usize) -> Result<(), MentionLoop> {
    if chain.iter().any(|link| link == target) {
        return Err(MentionLoop::Cycle {
            chain: chain.to_vec(),
            target: target.to_owned(),
        });
    }
    if chain.len() > max {
        return Err(MentionLoop::TooDeep {
            chain: chain.to_vec(),
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| (*name).to_owned()).collect()
    }

    #[test]
    fn a_person_starts_an_empty_chain() {
        assert_eq!(extend(&[], None, "@b", MENTION_DEPTH_MAX), Ok(vec![]));
    }

    #[test]
    fn an_agent_appends_itself() {
        let chain = extend(&names(&["@a"]), Some("@b"), "@c", MENTION_DEPTH_MAX).unwrap();
        assert_eq!(chain, names(&["@a", "@b"]));
    }

    #[test]
    fn a_asks_b_which_asks_a_is_a_cycle() {
        let first = extend(&[], Some("@a"), "@b", MENTION_DEPTH_MAX).unwrap();
        let err = extend(&first, Some("@b"), "@a", MENTION_DEPTH_MAX).unwrap_err();
        assert_eq!(err.code(), "MENTION_LOOP");
        assert_eq!(err.chain(), names(&["@a", "@b"]).as_slice());
        assert!(err.to_string().contains("@a → @b"), "{err}");
    }

    #[test]
    fn mentioning_oneself_is_a_cycle() {
        let err = extend(&[], Some("@a"), "@a", MENTION_DEPTH_MAX).unwrap_err();
        assert!(matches!(err, MentionLoop::Cycle { .. }));
    }

    #[test]
    fn the_depth_limit_holds() {
        let parent: Vec<String> = (0..3).map(|i| format!("@n{i}")).collect();
        assert!(extend(&parent, Some("@n3"), "@x", 4).is_ok());
        let err = extend(&parent, Some("@n3"), "@x", 3).unwrap_err();
        assert_eq!(
            err,
            MentionLoop::TooDeep {
                chain: names(&["@n0", "@n1", "@n2", "@n3"]),
                max: 3
            }
        );
    }

    #[test]
    fn a_reply_goes_back_down_the_chain() {
        // A (run by a person) asked B; B replies to A: no loop.
        assert_eq!(reply(&names(&["@a"]), "@a"), Vec::<String>::new());
        // P asked A, A asked B; B replies to A: the chain A had.
        let chain = reply(&names(&["@p", "@a"]), "@a");
        assert_eq!(chain, names(&["@p"]));
        assert_eq!(check(&chain, "@a", MENTION_DEPTH_MAX), Ok(()));
    }

    proptest! {
        /// Whatever the chain, an accepted one never holds the target, never
        /// exceeds the limit, and is the parent followed by the sender.
        #[test]
        fn accepted_chains_are_bounded_and_acyclic(
            parent in proptest::collection::vec("@[a-e]", 0..12),
            sender in proptest::option::of("@[a-e]"),
            target in "@[a-e]",
            max in 0usize..10,
        ) {
            match extend(&parent, sender.as_deref(), &target, max) {
                Ok(chain) => {
                    prop_assert!(chain.len() <= max);
                    prop_assert!(!chain.contains(&target));
                    prop_assert_eq!(&chain[..parent.len()], parent.as_slice());
                    prop_assert_eq!(chain.len(), parent.len() + usize::from(sender.is_some()));
                }
                Err(err) => {
                    let chain = err.chain();
                    prop_assert!(chain.len() > max || chain.contains(&target));
                    prop_assert_eq!(check(chain, &target, max), Err(err.clone()));
                }
            }
        }

        /// A chain of agents each sending to the next stops within the limit.
        #[test]
        fn a_runaway_relay_stops(max in 1usize..12, ring in 2usize..6) {
            let mut chain = Vec::new();
            let mut hops = 0;
            loop {
                let sender = format!("@r{}", hops % ring);
                let target = format!("@r{}", (hops + 1) % ring);
                match extend(&chain, Some(&sender), &target, max) {
                    Ok(next) => chain = next,
                    Err(_) => break,
                }
                hops += 1;
                prop_assert!(hops <= max);
            }
        }
    }
}
