//! `scout resolve NAME`: which instance a name resolves to and why, or the
//! nearest names when nothing matches.

use std::process::ExitCode;

use clap::Args;
use scout_mesh::lifecycle::EndpointState;
use scout_mesh::names::{AgentName, Label, NamePart};
use scout_mesh::resolve::{self, Candidate};
use serde::Serialize;

use super::Context;
use crate::config::{discover, relay_agents, settings};

/// Flags of `scout resolve`.
#[derive(Debug, Args)]
pub struct ResolveArgs {
    /// A name such as `@fabric`, `@fabric@laptop`, `@fabric#main` (the `@`
    /// may be left out).
    pub name: String,
}

#[derive(Debug, Serialize)]
struct ResolveReport {
    query: String,
    chosen: String,
    reason: &'static str,
    explanation: String,
    matches: Vec<String>,
}

/// Runs `scout resolve`.
pub fn run(args: ResolveArgs, context: &Context) -> anyhow::Result<ExitCode> {
    let query = AgentName::parse_lenient(&args.name)?;
    let settings = settings::load_required(&context.home.settings_path())?.value;
    let relay = relay_agents::load(&context.home.relay_agents_path())?.value;
    let node = Label::parse(&settings.node_name, NamePart::Node)?;
    let candidates: Vec<Candidate> = discover::discover(&context.home, &settings, &relay)
        .agents
        .iter()
        .map(|agent| Candidate {
            name: agent.instance_name(&node),
            is_local: true,
            state: EndpointState::Registered,
            active_flights: 0,
            worktrees: agent.worktrees.is_some(),
        })
        .collect();
    let resolution = resolve::resolve(&query, &candidates)?;
    let report = ResolveReport {
        query: resolution.query.to_string(),
        chosen: resolution.chosen.to_string(),
        reason: resolution.reason.as_str(),
        explanation: resolution.to_string(),
        matches: resolution.matches.iter().map(ToString::to_string).collect(),
    };
    context.printer.emit(&report, || {
        let mut out = format!("{}\n", report.explanation);
        if report.matches.len() > 1 {
            out.push_str("matches, best first:\n");
            for name in &report.matches {
                out.push_str(&format!("  {name}\n"));
            }
        }
        out
    })?;
    Ok(ExitCode::SUCCESS)
}
