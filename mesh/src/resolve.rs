//! Name resolution: which agent instance a (possibly partial) name means.
//!
//! `@fabric` may match `@fabric@laptop#main` and `@fabric@devbox#main`. The
//! policy of the design picks one, in this order of preference:
//! 1. the instance whose full name is exactly the query;
//! 2. an instance on this node;
//! 3. an instance that is online and idle, then one that is online at all;
//! 4. the least busy instance (fewest active flights);
//! 5. the first by name, so that equal candidates always give the same answer.
//!
//! The answer says which of these rules decided ([`ResolveReason`]), so the
//! flight can record why it went where it went.
//!
//! A name with a workspace that no instance has (`@fabric#feature-x`) means a
//! new instance when the definition makes worktrees on some node
//! ([`Candidate::worktrees`]): the node named in the query, else the best of
//! those nodes by availability, then fewest active flights, then name (never
//! "local first", so that brokers agree), and the reason is
//! [`ResolveReason::NewWorktree`]. Any other name
//! that matches nothing is an error (code `AGENT_NOT_FOUND`) listing the
//! closest known names.
//!
//! Resolution is a pure function of the query and a snapshot of the known
//! instances; the caller takes that snapshot from the registry.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::fmt;

use crate::lifecycle::EndpointState;
use crate::names::AgentName;

/// How many near names a [`ResolveError::NoMatch`] suggests. Three is enough
/// to catch a typo without burying the message.
pub const NEAREST_MAX: usize = 3;

/// A known agent instance that a name may resolve to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The instance's full name. It always has a node; the workspace may be
    /// missing for an agent that is not tied to one.
    pub name: AgentName,
    /// Whether the instance runs on this node.
    pub is_local: bool,
    /// How the instance can be reached right now.
    pub state: EndpointState,
    /// How many flights the instance is working on.
    pub active_flights: u32,
    /// Whether its definition makes a worktree on its node for a workspace
    /// that has no instance yet.
    pub worktrees: bool,
}

/// The rule that decided between the chosen instance and the runner-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResolveReason {
    /// Only one instance matched.
    OnlyMatch,
    /// The chosen instance's full name is exactly the query.
    ExactInstance,
    /// The chosen instance runs on this node and the runner-up does not.
    Local,
    /// The chosen instance is idle and the runner-up is busy or offline.
    OnlineIdle,
    /// The chosen instance is online (but not idle) and the runner-up is
    /// offline.
    Online,
    /// The chosen instance has fewer active flights than the runner-up.
    LeastBusy,
    /// Nothing else separated them; the chosen name sorts first.
    FirstByName,
    /// No instance has the workspace; its definition makes a worktree for
    /// it on the chosen node.
    NewWorktree,
}

impl ResolveReason {
    /// Every reason, in the order the rules are applied.
    pub const ALL: &'static [ResolveReason] = &[
        ResolveReason::OnlyMatch,
        ResolveReason::ExactInstance,
        ResolveReason::Local,
        ResolveReason::OnlineIdle,
        ResolveReason::Online,
        ResolveReason::LeastBusy,
        ResolveReason::FirstByName,
        ResolveReason::NewWorktree,
    ];

    /// A stable snake_case word for the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            ResolveReason::OnlyMatch => "only_match",
            ResolveReason::ExactInstance => "exact_instance",
            ResolveReason::Local => "local",
            ResolveReason::OnlineIdle => "online_idle",
            ResolveReason::Online => "online",
            ResolveReason::LeastBusy => "least_busy",
            ResolveReason::FirstByName => "first_by_name",
            ResolveReason::NewWorktree => "new_worktree",
        }
    }

    /// A short English phrase for people.
    pub fn phrase(self) -> &'static str {
        match self {
            ResolveReason::OnlyMatch => "the only matching instance",
            ResolveReason::ExactInstance => "exact instance",
            ResolveReason::Local => "local to this node",
            ResolveReason::OnlineIdle => "online and idle",
            ResolveReason::Online => "online",
            ResolveReason::LeastBusy => "least busy",
            ResolveReason::FirstByName => "first by name among equals",
            ResolveReason::NewWorktree => "a new worktree of its definition",
        }
    }
}

impl fmt::Display for ResolveReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.phrase())
    }
}

/// The outcome of a successful resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The name that was resolved.
    pub query: AgentName,
    /// The instance chosen.
    pub chosen: AgentName,
    /// The rule that decided.
    pub reason: ResolveReason,
    /// Every matching instance, best first; `matches[0] == chosen`. A name
    /// given by several candidates appears once.
    pub matches: Vec<AgentName>,
}

impl fmt::Display for Resolution {
    /// `@fabric` -> `@fabric@laptop#main` (local to this node), or just the
    /// chosen name with "the only instance of `@fabric`" when it was the only
    /// match.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            ResolveReason::OnlyMatch => write!(
                f,
                "`{}` resolved to `{}`: the only instance of `{}`",
                self.query, self.chosen, self.query
            ),
            reason => write!(
                f,
                "`{}` resolved to `{}`: {reason}",
                self.query, self.chosen
            ),
        }
    }
}

/// Why a name could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// No known instance matches the name.
    #[error("no agent matches `{query}`; {}", did_you_mean(.nearest))]
    NoMatch {
        /// The name that was asked for.
        query: AgentName,
        /// Up to [`NEAREST_MAX`] known names closest to it, closest first;
        /// empty when no agents are known at all.
        nearest: Vec<AgentName>,
    },
}

impl ResolveError {
    /// The stable code of [`ResolveError::NoMatch`].
    pub const AGENT_NOT_FOUND: &'static str = "AGENT_NOT_FOUND";

    /// The stable code of this error, for the API and the CLI.
    pub fn code(&self) -> &'static str {
        match self {
            ResolveError::NoMatch { .. } => Self::AGENT_NOT_FOUND,
        }
    }
}

/// Whether `candidate` is one of the instances `query` names: the definitions
/// are equal, and so are the node and the workspace where the query gives them.
pub fn matches(query: &AgentName, candidate: &AgentName) -> bool {
    query.definition() == candidate.definition()
        && query
            .node()
            .is_none_or(|node| candidate.node() == Some(node))
        && query
            .workspace()
            .is_none_or(|workspace| candidate.workspace() == Some(workspace))
}

/// Resolves `query` against the known instances, by the policy in the module
/// documentation.
pub fn resolve(query: &AgentName, candidates: &[Candidate]) -> Result<Resolution, ResolveError> {
    let mut ranked: Vec<&Candidate> = candidates
        .iter()
        .filter(|candidate| matches(query, &candidate.name))
        .collect();
    if ranked.is_empty() {
        if let Some(resolution) = new_worktree(query, candidates) {
            return Ok(resolution);
        }
        return Err(ResolveError::NoMatch {
            query: query.clone(),
            nearest: nearest(query, candidates),
        });
    }
    ranked.sort_by(|a, b| compare(query, a, b));
    // The registry should hold one record per instance, but a snapshot taken
    // during a merge may repeat one; keep its best-ranked entry only, so that
    // a name is never its own runner-up.
    let mut seen = HashSet::new();
    ranked.retain(|candidate| seen.insert(&candidate.name));

    let reason = match ranked.get(1) {
        None => ResolveReason::OnlyMatch,
        Some(runner_up) => deciding_reason(query, ranked[0], runner_up),
    };
    Ok(Resolution {
        query: query.clone(),
        chosen: ranked[0].name.clone(),
        reason,
        matches: ranked
            .into_iter()
            .map(|candidate| candidate.name.clone())
            .collect(),
    })
}

/// The instance a worktree would make for `query`, when its workspace has
/// no instance and its definition makes worktrees on a node it allows.
fn new_worktree(query: &AgentName, candidates: &[Candidate]) -> Option<Resolution> {
    let workspace = query.workspace()?;
    let without_workspace = AgentName::new(query.definition().clone(), query.node().cloned(), None);
    let mut makers: Vec<&Candidate> = candidates
        .iter()
        .filter(|candidate| candidate.worktrees && matches(&without_workspace, &candidate.name))
        .collect();
    // Not "local first": two brokers mentioning the same new workspace at
    // once would each make it on their own machine. Available, then least
    // busy, then first by name, the same from every broker's view as far
    // as those views agree.
    makers.sort_by(|a, b| {
        availability(b.state)
            .cmp(&availability(a.state))
            .then(a.active_flights.cmp(&b.active_flights))
            .then(a.name.cmp(&b.name))
    });
    let maker = makers.first()?;
    let chosen = AgentName::new(
        query.definition().clone(),
        maker.name.node().cloned(),
        Some(workspace.clone()),
    );
    Some(Resolution {
        query: query.clone(),
        chosen: chosen.clone(),
        reason: ResolveReason::NewWorktree,
        matches: vec![chosen],
    })
}

/// How available an endpoint is, higher is better: idle beats busy-but-online,
/// which beats offline.
fn availability(state: EndpointState) -> u8 {
    match state {
        EndpointState::Idle => 2,
        EndpointState::Working | EndpointState::Registered | EndpointState::Waking => 1,
        EndpointState::Unreachable | EndpointState::Failed | EndpointState::Stopped => 0,
    }
}

/// Orders candidates best first by the policy's rules, in order.
fn compare(query: &AgentName, a: &Candidate, b: &Candidate) -> Ordering {
    let is_exact = |candidate: &Candidate| candidate.name == *query;
    is_exact(b)
        .cmp(&is_exact(a))
        .then(b.is_local.cmp(&a.is_local))
        .then(availability(b.state).cmp(&availability(a.state)))
        .then(a.active_flights.cmp(&b.active_flights))
        .then(a.name.cmp(&b.name))
}

/// The first rule that ranks `winner` above `runner_up`.
fn deciding_reason(query: &AgentName, winner: &Candidate, runner_up: &Candidate) -> ResolveReason {
    if (winner.name == *query) != (runner_up.name == *query) {
        return ResolveReason::ExactInstance;
    }
    if winner.is_local != runner_up.is_local {
        return ResolveReason::Local;
    }
    if availability(winner.state) != availability(runner_up.state) {
        return if winner.state == EndpointState::Idle {
            ResolveReason::OnlineIdle
        } else {
            ResolveReason::Online
        };
    }
    if winner.active_flights != runner_up.active_flights {
        return ResolveReason::LeastBusy;
    }
    ResolveReason::FirstByName
}

/// Up to [`NEAREST_MAX`] distinct candidate names closest to `query`.
///
/// Distance is the smaller of the edit distance between the canonical names
/// and the one between the definitions alone, so a typo in the definition is
/// not outweighed by the node and workspace the query left out.
fn nearest(query: &AgentName, candidates: &[Candidate]) -> Vec<AgentName> {
    let query_text = query.to_string();
    let query_definition = query.definition().as_str();
    let mut scored: Vec<(usize, &AgentName)> = candidates
        .iter()
        .map(|candidate| {
            let by_name = levenshtein(&query_text, &candidate.name.to_string());
            let by_definition = levenshtein(query_definition, candidate.name.definition().as_str());
            (by_name.min(by_definition), &candidate.name)
        })
        .collect();
    scored.sort();
    scored.dedup_by(|later, earlier| later.1 == earlier.1);
    scored
        .into_iter()
        .take(NEAREST_MAX)
        .map(|(_, name)| name.clone())
        .collect()
}

/// The number of single-character insertions, deletions and substitutions
/// that turn `a` into `b`.
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    // One row of the classic table, reused: `row[j]` is the distance between
    // the prefix of `a` seen so far and the first `j` characters of `b`.
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, a_ch) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, b_ch) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(a_ch != *b_ch);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

fn did_you_mean(nearest: &[AgentName]) -> String {
    if nearest.is_empty() {
        return "no agents are known".to_owned();
    }
    let names: Vec<String> = nearest.iter().map(|name| format!("`{name}`")).collect();
    format!("did you mean {}?", names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name(input: &str) -> AgentName {
        AgentName::parse(input).unwrap()
    }

    fn candidate(
        input: &str,
        is_local: bool,
        state: EndpointState,
        active_flights: u32,
    ) -> Candidate {
        Candidate {
            name: name(input),
            is_local,
            state,
            active_flights,
            worktrees: false,
        }
    }

    fn resolved(query: &str, candidates: &[Candidate]) -> (String, ResolveReason) {
        let resolution = resolve(&name(query), candidates).unwrap();
        (resolution.chosen.to_string(), resolution.reason)
    }

    use EndpointState::*;

    #[test]
    fn matching_respects_the_parts_the_query_gives() {
        let instance = name("@fabric@laptop#main");
        assert!(matches(&name("@fabric"), &instance));
        assert!(matches(&name("@fabric@laptop"), &instance));
        assert!(matches(&name("@fabric#main"), &instance));
        assert!(matches(&name("@fabric@laptop#main"), &instance));
        assert!(!matches(&name("@fabric@devbox"), &instance));
        assert!(!matches(&name("@fabric#Main"), &instance));
        assert!(!matches(&name("@fab"), &instance));
        assert!(!matches(&name("@fabric#main"), &name("@fabric@laptop")));
    }

    #[test]
    fn a_single_match_is_the_only_match() {
        let candidates = [
            candidate("@fabric@laptop#main", false, Stopped, 9),
            candidate("@other@laptop#main", true, Idle, 0),
        ];
        assert_eq!(
            resolved("@fabric", &candidates),
            ("@fabric@laptop#main".into(), ResolveReason::OnlyMatch)
        );
    }

    #[test]
    fn exact_instance_wins_over_everything() {
        // The query names a node but no workspace, and an instance without a
        // workspace exists: it is exactly what was asked for.
        let candidates = [
            candidate("@fabric@laptop#main", true, Idle, 0),
            candidate("@fabric@laptop", false, Stopped, 5),
        ];
        assert_eq!(
            resolved("@fabric@laptop", &candidates),
            ("@fabric@laptop".into(), ResolveReason::ExactInstance)
        );
    }

    #[test]
    fn local_wins_over_idle() {
        let candidates = [
            candidate("@fabric@devbox#main", false, Idle, 0),
            candidate("@fabric@laptop#main", true, Working, 3),
        ];
        assert_eq!(
            resolved("@fabric", &candidates),
            ("@fabric@laptop#main".into(), ResolveReason::Local)
        );
    }

    #[test]
    fn idle_wins_over_busy_and_offline() {
        let candidates = [
            candidate("@fabric@a#main", false, Working, 0),
            candidate("@fabric@b#main", false, Idle, 4),
        ];
        assert_eq!(
            resolved("@fabric", &candidates),
            ("@fabric@b#main".into(), ResolveReason::OnlineIdle)
        );
        let candidates = [
            candidate("@fabric@a#main", false, Unreachable, 0),
            candidate("@fabric@b#main", false, Idle, 4),
        ];
        assert_eq!(
            resolved("@fabric", &candidates),
            ("@fabric@b#main".into(), ResolveReason::OnlineIdle)
        );
    }

    #[test]
    fn online_wins_over_offline() {
        for online in [Working, Registered, Waking] {
            for offline in [Unreachable, Failed, Stopped] {
                let candidates = [
                    candidate("@fabric@a#main", false, offline, 0),
                    candidate("@fabric@b#main", false, online, 7),
                ];
                assert_eq!(
                    resolved("@fabric", &candidates),
                    ("@fabric@b#main".into(), ResolveReason::Online),
                    "{online} vs {offline}"
                );
            }
        }
    }

    #[test]
    fn least_busy_wins_among_equally_available() {
        let candidates = [
            candidate("@fabric@a#main", true, Working, 3),
            candidate("@fabric@b#main", true, Registered, 1),
            candidate("@fabric@c#main", true, Waking, 2),
        ];
        let resolution = resolve(&name("@fabric"), &candidates).unwrap();
        assert_eq!(resolution.chosen, name("@fabric@b#main"));
        assert_eq!(resolution.reason, ResolveReason::LeastBusy);
        assert_eq!(
            resolution.matches,
            [
                name("@fabric@b#main"),
                name("@fabric@c#main"),
                name("@fabric@a#main")
            ]
        );
    }

    #[test]
    fn name_breaks_the_last_tie() {
        let candidates = [
            candidate("@fabric@b#main", false, Idle, 1),
            candidate("@fabric@a#main", false, Idle, 1),
        ];
        assert_eq!(
            resolved("@fabric#main", &candidates),
            ("@fabric@a#main".into(), ResolveReason::FirstByName)
        );
    }

    #[test]
    fn repeated_candidates_count_once() {
        let candidates = [
            candidate("@fabric@a#main", false, Stopped, 0),
            candidate("@fabric@a#main", false, Idle, 0),
        ];
        let resolution = resolve(&name("@fabric"), &candidates).unwrap();
        assert_eq!(resolution.reason, ResolveReason::OnlyMatch);
        assert_eq!(resolution.matches, [name("@fabric@a#main")]);

        // The repeats rank apart, with another instance between them.
        let candidates = [
            candidate("@fabric@devbox#main", false, Registered, 0),
            candidate("@fabric@laptop", true, Registered, 0),
            candidate("@fabric@devbox#main", true, Registered, 0),
        ];
        let resolution = resolve(&name("@fabric"), &candidates).unwrap();
        assert_eq!(resolution.reason, ResolveReason::FirstByName);
        assert_eq!(
            resolution.matches,
            [name("@fabric@devbox#main"), name("@fabric@laptop")]
        );
    }

    #[test]
    fn matches_are_ranked_by_every_rule_in_order() {
        let candidates = [
            candidate("@fabric@e#main", false, Stopped, 0),
            candidate("@fabric@d#main", false, Working, 0),
            candidate("@fabric@c#main", false, Idle, 2),
            candidate("@fabric@b#main", false, Idle, 1),
            candidate("@fabric@a#main", true, Failed, 9),
            candidate("@fabric", false, Failed, 9),
        ];
        let resolution = resolve(&name("@fabric"), &candidates).unwrap();
        assert_eq!(resolution.reason, ResolveReason::ExactInstance);
        let printed: Vec<String> = resolution.matches.iter().map(ToString::to_string).collect();
        assert_eq!(
            printed,
            [
                "@fabric",
                "@fabric@a#main",
                "@fabric@b#main",
                "@fabric@c#main",
                "@fabric@d#main",
                "@fabric@e#main"
            ]
        );
    }

    #[test]
    fn no_match_lists_the_nearest_names() {
        let candidates = [
            candidate("@fabric@laptop", false, Idle, 0),
            candidate("@fabric@devbox#main", false, Idle, 0),
            candidate("@zebra@laptop", false, Idle, 0),
            candidate("@fabrik@laptop", false, Idle, 0),
            candidate("@fabric@laptop", true, Idle, 0),
        ];
        let err = resolve(&name("@fabirc"), &candidates).unwrap_err();
        assert_eq!(err.code(), "AGENT_NOT_FOUND");
        let ResolveError::NoMatch { nearest, .. } = &err;
        assert_eq!(
            nearest,
            &[
                name("@fabric@devbox#main"),
                name("@fabric@laptop"),
                name("@fabrik@laptop")
            ]
        );
        assert_eq!(
            err.to_string(),
            "no agent matches `@fabirc`; did you mean `@fabric@devbox#main`, \
             `@fabric@laptop`, `@fabrik@laptop`?"
        );
    }

    #[test]
    fn no_match_with_a_known_definition_but_another_node() {
        let candidates = [
            candidate("@fabric@laptop", false, Idle, 0),
            candidate("@fabric@devbox#main", false, Idle, 0),
        ];
        let err = resolve(&name("@fabric@nas"), &candidates).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no agent matches `@fabric@nas`; did you mean `@fabric@devbox#main`, `@fabric@laptop`?"
        );
    }

    #[test]
    fn no_match_without_candidates_says_none_are_known() {
        let err = resolve(&name("@x"), &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no agent matches `@x`; no agents are known"
        );
        assert_eq!(err.code(), ResolveError::AGENT_NOT_FOUND);
    }

    #[test]
    fn reasons_have_stable_words_and_phrases() {
        let words: Vec<&str> = ResolveReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            words,
            [
                "only_match",
                "exact_instance",
                "local",
                "online_idle",
                "online",
                "least_busy",
                "first_by_name",
                "new_worktree"
            ]
        );
        assert_eq!(ResolveReason::Local.to_string(), "local to this node");
        assert_eq!(ResolveReason::OnlineIdle.to_string(), "online and idle");
    }

    #[test]
    fn resolution_prints_what_was_chosen_and_why() {
        let one = resolve(
            &name("@fabric"),
            &[candidate("@fabric@laptop#main", true, Idle, 0)],
        )
        .unwrap();
        assert_eq!(
            one.to_string(),
            "`@fabric` resolved to `@fabric@laptop#main`: the only instance of `@fabric`"
        );
        let two = resolve(
            &name("@fabric"),
            &[
                candidate("@fabric@laptop#main", true, Idle, 0),
                candidate("@fabric@devbox#main", false, Idle, 0),
            ],
        )
        .unwrap();
        assert_eq!(
            two.to_string(),
            "`@fabric` resolved to `@fabric@laptop#main`: local to this node"
        );
    }

    #[test]
    fn a_new_workspace_is_a_worktree_where_the_definition_makes_them() {
        let maker = |input: &str, is_local: bool, active_flights: u32| Candidate {
            worktrees: true,
            ..candidate(input, is_local, EndpointState::Idle, active_flights)
        };
        let candidates = vec![
            candidate("@fabric@laptop#main", true, EndpointState::Idle, 0),
            maker("@fabric@devbox#main", false, 2),
            maker("@fabric@build#main", false, 1),
        ];
        // The least busy of the nodes that make worktrees.
        let made = resolve(&name("@fabric#feature-x"), &candidates).unwrap();
        assert_eq!(made.chosen, name("@fabric@build#feature-x"));
        assert_eq!(made.reason, ResolveReason::NewWorktree);
        // The node the query names.
        let named = resolve(&name("@fabric@devbox#feature-x"), &candidates).unwrap();
        assert_eq!(named.chosen, name("@fabric@devbox#feature-x"));
        // A node that does not make them, or a definition that does not:
        // nothing matches, and the error lists near names as before.
        assert!(resolve(&name("@fabric@laptop#feature-x"), &candidates).is_err());
        assert!(resolve(&name("@other#feature-x"), &candidates).is_err());
        // A workspace that has an instance is that instance.
        let existing = resolve(&name("@fabric#main"), &candidates).unwrap();
        assert_eq!(existing.chosen, name("@fabric@laptop#main"));
        assert_ne!(existing.reason, ResolveReason::NewWorktree);
        // Without a workspace there is nothing to make.
        assert!(resolve(&name("@nobody"), &candidates).is_err());
        // Every broker picks the same maker: being local does not count.
        let mut with_local = candidates.clone();
        with_local.push(maker("@fabric@laptop#other", true, 2));
        let made = resolve(&name("@fabric#feature-x"), &with_local).unwrap();
        assert_eq!(made.chosen, name("@fabric@build#feature-x"));
    }

    #[test]
    fn levenshtein_distances() {
        assert_eq!(levenshtein("", ""), 0);
        assert_eq!(levenshtein("abc", ""), 3);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("fabirc", "fabric"), 2);
        assert_eq!(levenshtein("flaw", "lawn"), 2);
        assert_eq!(levenshtein("héllo", "hello"), 1);
    }

    fn arb_name() -> impl Strategy<Value = AgentName> {
        (
            prop::sample::select(vec!["fabric", "fab", "scout"]),
            prop::option::of(prop::sample::select(vec!["laptop", "devbox"])),
            prop::option::of(prop::sample::select(vec!["main", "feature/x"])),
        )
            .prop_map(|(definition, node, workspace)| {
                let mut text = format!("@{definition}");
                if let Some(node) = node {
                    text.push('@');
                    text.push_str(node);
                }
                if let Some(workspace) = workspace {
                    text.push('#');
                    text.push_str(workspace);
                }
                name(&text)
            })
    }

    fn arb_candidate() -> impl Strategy<Value = Candidate> {
        (
            arb_name(),
            any::<bool>(),
            prop::sample::select(EndpointState::ALL.to_vec()),
            0u32..4,
        )
            .prop_map(|(name, is_local, state, active_flights)| Candidate {
                worktrees: false,
                name,
                is_local,
                state,
                active_flights,
            })
    }

    proptest! {
        #[test]
        fn resolve_picks_a_match_or_explains_why_not(
            query in arb_name(),
            candidates in prop::collection::vec(arb_candidate(), 0..8),
        ) {
            let matching: Vec<&Candidate> =
                candidates.iter().filter(|c| matches(&query, &c.name)).collect();
            match resolve(&query, &candidates) {
                Ok(resolution) => {
                    prop_assert!(matching.iter().any(|c| c.name == resolution.chosen));
                    prop_assert_eq!(&resolution.matches[0], &resolution.chosen);
                    for name in &resolution.matches {
                        prop_assert!(matches(&query, name));
                    }
                    // The winner (its best entry, should the name repeat) is at
                    // least as good as every match.
                    let winner = matching
                        .iter()
                        .filter(|c| c.name == resolution.chosen)
                        .min_by(|a, b| compare(&query, a, b))
                        .unwrap();
                    for other in &matching {
                        prop_assert!(compare(&query, winner, other) != Ordering::Greater);
                    }
                    let n_distinct = {
                        let mut names: Vec<&AgentName> = matching.iter().map(|c| &c.name).collect();
                        names.sort();
                        names.dedup();
                        names.len()
                    };
                    prop_assert_eq!(resolution.matches.len(), n_distinct);
                    prop_assert_eq!(resolution.reason == ResolveReason::OnlyMatch, n_distinct == 1);
                }
                Err(ResolveError::NoMatch { nearest, .. }) => {
                    prop_assert!(matching.is_empty());
                    prop_assert!(nearest.len() <= NEAREST_MAX);
                    prop_assert_eq!(nearest.is_empty(), candidates.is_empty());
                }
            }
        }
    }
}
