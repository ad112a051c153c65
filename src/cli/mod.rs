//! The `scout` command line: argument parsing, dispatch, and the error and
//! exit-code conventions every command shares.
//!
//! Code map: one file per command family ([`setup`], [`up`], [`doctor`],
//! [`agents`], [`resolve`], [`mesh`] with `peers`, [`send`] with `flights`,
//! [`usage`], [`checkpoints`], [`attach`], [`service`], [`mcp`], [`tokens`], [`audit`]); [`output`] is the one
//! printer for results; [`client`] talks to this home's running broker.
//!
//! Exit codes: 0 ok, 1 the operation failed, 2 usage or configuration error
//! (an unsafe home, `UNSAFE_HOME`, is one).
//! Errors print as `error: …` and one `caused by: …` per source on stderr.

pub mod agents;
pub mod approvals;
pub mod attach;
pub mod audit;
pub mod checkpoints;
pub mod client;
pub mod doctor;
pub mod mcp;
pub mod mcp_serve;
pub mod mesh;
pub mod open;
pub mod output;
pub mod resolve;
pub mod send;
pub mod service;
pub mod setup;
pub mod tokens;
pub mod up;
pub mod usage;
pub mod workspaces;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::ConfigError;
use crate::home::Home;
use output::Printer;

/// Scout: a peer broker for coding agents.
#[derive(Debug, Parser)]
#[command(name = "scout", version, about, propagate_version = true)]
pub struct Cli {
    /// The broker's home directory (settings, keys, store); several brokers
    /// can share a machine with one home each.
    #[arg(long, global = true, env = "SCOUT_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// Print results as JSON.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the home, settings, node key and store; find this machine's agents.
    Setup(setup::SetupArgs),
    /// Run the broker in the foreground.
    Up(up::UpArgs),
    /// Check the home, keys, store, broker and agent CLIs.
    Doctor(doctor::DoctorArgs),
    /// List, add and remove agents.
    #[command(subcommand)]
    Agents(agents::AgentsCommand),
    /// Watch or use an agent's terminal; `--take` holds its conversation.
    Attach(attach::AttachArgs),
    /// Show which agent instance a name resolves to, and why.
    Resolve(resolve::ResolveArgs),
    /// Invite, join and revoke mesh members.
    #[command(subcommand)]
    Mesh(mesh::MeshCommand),
    /// List the mesh's members: state, addresses, last seen, round-trip time.
    Peers(mesh::PeersArgs),
    /// Send a message to an agent anywhere in the mesh.
    Send(send::SendArgs),
    /// List recent invocations, or show one.
    Flights(send::FlightsArgs),
    /// List conversations, or show one.
    #[command(subcommand)]
    Conversations(send::ConversationsCommand),
    /// Queue, list, cancel and run work orders.
    #[command(subcommand)]
    WorkOrders(send::WorkOrdersCommand),
    /// Install, start, stop and inspect the broker's OS user service.
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// Tokens and cost of the flights the mesh ran, by agent or node.
    Usage(usage::UsageArgs),
    /// The git worktrees agents made on demand: list and remove them.
    #[command(subcommand)]
    Workspaces(workspaces::WorkspacesCommand),
    /// Open the web view in a browser, logged in (`--print` only prints
    /// the link); `--list` and `--revoke` manage browser sessions.
    Open(open::OpenArgs),
    /// The MCP server agents mention each other through; `install` and
    /// `doctor` register it with the agent CLIs.
    Mcp(mcp::McpArgs),
    /// Requests for a person's decision from the whole mesh (pending only
    /// unless `--all`).
    Approvals(approvals::ApprovalsArgs),
    /// Approve a request (`--always` for a standing rule).
    Approve(approvals::AnswerArgs),
    /// Deny a request (`--always` for a standing rule).
    Deny(approvals::AnswerArgs),
    /// Git checkpoints of agents' worktrees taken before `execute` work:
    /// list them, show what changed since one, restore one.
    #[command(subcommand)]
    Checkpoints(checkpoints::CheckpointsCommand),
    /// Make, list and revoke scoped tokens of the API.
    #[command(subcommand)]
    Tokens(tokens::TokensCommand),
    /// List the audit log; `verify` checks its hash chain.
    Audit(audit::AuditArgs),
    /// Hold an agent's program for the broker (the broker starts it).
    #[command(hide = true)]
    Holder(HolderArgs),
}

/// Arguments of the hidden `scout holder`.
#[derive(Debug, clap::Args)]
pub struct HolderArgs {
    /// The holder's directory (its spec, socket and log).
    #[arg(long)]
    dir: std::path::PathBuf,
}

/// A mistake in how scout was called or configured (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct UsageError {
    /// Stable error code (`INVALID_NAME`, `CONFIG_INVALID`, ...).
    pub code: &'static str,
    /// What is wrong, lower-case, no trailing period.
    pub message: String,
}

impl UsageError {
    /// A usage error with a code.
    pub fn new(code: &'static str, message: impl Into<String>) -> UsageError {
        UsageError {
            code,
            message: message.into(),
        }
    }
}

/// Everything a command needs from the global flags.
#[derive(Debug, Clone)]
pub struct Context {
    /// The resolved home.
    pub home: Home,
    /// The result printer.
    pub printer: Printer,
    /// Time, randomness and ids for this command.
    pub env: crate::env::Env,
}

/// Parses the arguments, runs the command and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = Home::resolve(cli.home.as_deref()).and_then(|home| {
        let context = Context {
            home,
            printer: Printer::new(cli.json),
            env: crate::env::Env::system(None),
        };
        run(cli.command, &context)
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            report_error(&err);
            exit_code_of(&err)
        }
    }
}

fn run(command: Command, context: &Context) -> anyhow::Result<ExitCode> {
    match command {
        Command::Setup(args) => setup::run(args, context),
        Command::Up(args) => up::run(args, context),
        Command::Doctor(args) => doctor::run(args, context),
        Command::Agents(command) => agents::run(command, context),
        Command::Resolve(args) => resolve::run(args, context),
        Command::Mesh(command) => mesh::run(command, context),
        Command::Peers(args) => mesh::peers(args, context),
        Command::Send(args) => send::send(args, context),
        Command::Attach(args) => attach::run(args, context),
        Command::Flights(args) => send::flights(args, context),
        Command::Conversations(command) => send::conversations(command, context),
        Command::WorkOrders(command) => send::work_orders(command, context),
        Command::Usage(args) => usage::run(args, context),
        Command::Workspaces(command) => workspaces::run(command, context),
        Command::Open(args) => open::run(args, context),
        Command::Service(command) => service::run(command, context),
        Command::Mcp(args) => mcp::run(args, context),
        Command::Approvals(args) => approvals::list(args, context),
        Command::Approve(args) => approvals::answer(args, true, context),
        Command::Deny(args) => approvals::answer(args, false, context),
        Command::Checkpoints(command) => checkpoints::run(command, context),
        Command::Tokens(command) => tokens::run(command, context),
        Command::Audit(args) => audit::run(args, context),
        Command::Holder(args) => crate::holder::serve::run(&args.dir),
    }
}

/// Prints `error: …` and one `caused by: …` line per source.
pub fn report_error(err: &anyhow::Error) {
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("caused by: {cause}");
    }
}

/// 2 for usage and configuration errors, 1 for everything else.
pub fn exit_code_of(err: &anyhow::Error) -> ExitCode {
    let is_usage = err.chain().any(|cause| {
        cause.downcast_ref::<UsageError>().is_some()
            || cause
                .downcast_ref::<ConfigError>()
                .is_some_and(|config| matches!(config, ConfigError::Invalid { .. }))
            || cause
                .downcast_ref::<scout_mesh::names::NameError>()
                .is_some()
            || cause.downcast_ref::<crate::home::UnsafeHome>().is_some()
    });
    if is_usage {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}
