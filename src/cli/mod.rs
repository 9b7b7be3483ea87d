//! The command line (SPEC §4): clap definitions and dispatch. Each admin command is a thin client of
//! the admin API; exit status 0 on success, 1 on a failed check or request, 2 on bad usage or config.

pub mod cluster;
pub mod copy;
pub mod mailbox;
pub mod queue;
pub mod resubmit;
pub mod run;
pub mod stats;
pub mod tls;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::Site;
use crate::programs::{bench, demo, ProgramError};
use crate::telemetry::logging::LogFormat;

/// hubrelay: an SMTP relay with a transport dumpster, for clustered mailbox servers with automatic
/// failover.
#[derive(Debug, Parser)]
#[command(name = "hubrelay", version, about, long_about = None)]
pub struct Cli {
    /// The site file describing every hub and clustered mailbox server.
    #[arg(
        long,
        global = true,
        default_value = "config/site.toml",
        value_name = "FILE"
    )]
    pub config: PathBuf,
    /// Print one JSON document instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// How `site`, `hub` and `node` (and the processes of `demo` and `bench`) write log lines: `text`,
    /// or `json` (one object per line, with span fields) for log collectors. `HUBRELAY_LOG`
    /// filters them (default `info`).
    #[arg(
        long = "log-format",
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every hub and node of the site in this process (an embedded site) and print where each listens.
    Site {
        /// Where each role keeps its state, in DIR/<role name>/.
        #[arg(long, default_value = "data", value_name = "DIR")]
        data: PathBuf,
    },
    /// Run one hub transport server.
    Hub {
        /// The hub's name in the site file.
        #[arg(long)]
        name: String,
        /// Where the hub keeps its state, in DIR/<name>/.
        #[arg(long, default_value = "data", value_name = "DIR")]
        data: PathBuf,
    },
    /// Run one mailbox node of a clustered mailbox server.
    Node {
        /// The node's name in the site file.
        #[arg(long)]
        name: String,
        /// Where the node keeps its state, in DIR/<name>/.
        #[arg(long, default_value = "data", value_name = "DIR")]
        data: PathBuf,
    },
    /// List the messages of a mailbox on its CMS's active node: Message-ID, size, delivery time.
    Mailbox {
        /// The mailbox address.
        #[arg(long)]
        address: String,
        /// Print this message (its Message-ID, with angle brackets) as stored, instead of the listing;
        /// of several different messages that reuse the ID, the first delivered.
        #[arg(long = "message-id", value_name = "ID")]
        message_id: Option<String>,
    },
    /// Dumpster statistics per hub and storage group (Get-StorageGroupCopyStatus -DumpsterStatistics).
    Stats {
        /// Only this storage group.
        #[arg(long = "storage-group", value_name = "SG")]
        storage_group: Option<String>,
    },
    /// Active and passive node, quorum and witness, and per storage group the replication counters.
    Status {
        /// Only this clustered mailbox server.
        #[arg(long, value_name = "CMS")]
        cms: Option<String>,
    },
    /// Test-ReplicationHealth: one line per check, PASS/WARN/FAIL; exit 1 if any FAIL.
    Health,
    /// Suspend, resume, update (reseed) or restore (lossy activation) of a storage group's
    /// passive copy: Suspend-, Resume-, Update- and Restore-StorageGroupCopy. Refused, with the
    /// reason, where unsafe; the comment is kept and shown by `status`.
    Copy {
        /// What to do.
        #[arg(value_enum)]
        action: copy::CopyAction,
        /// The clustered mailbox server.
        #[arg(long, value_name = "CMS")]
        cms: String,
        /// The storage group (a restore mounts every storage group of the CMS with it: a node
        /// is active for all of them).
        #[arg(long = "storage-group", value_name = "SG")]
        storage_group: String,
        /// Why, kept with the copy and shown by `status`.
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
    },
    /// Scheduled, lossless switchover of a clustered mailbox server to its other node.
    Move {
        /// The clustered mailbox server.
        #[arg(long, value_name = "CMS")]
        cms: String,
        /// The node to move to (default: the other node).
        #[arg(long, value_name = "NODE")]
        target: Option<String>,
        /// Why, for the logs.
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
    },
    /// Start a private site, crash its active node before its last log ships, and narrate the
    /// automatic lossy failover and dumpster recovery, ending with a verdict.
    Demo,
    /// Start a private site as `demo` does and drive it with the built-in load generator, for
    /// sizing: accepted and delivered rates, accept and end-to-end latency, replication at the
    /// end, peak memory of each role; exit 1 if an accepted message is lost or doubled.
    Bench(bench::BenchArgs),
    /// Certificates for STARTTLS.
    Tls {
        /// What to do.
        #[command(subcommand)]
        command: tls::TlsCommand,
    },
    /// Ask every hub to redeliver what it delivered for a storage group in a time window; narrowed
    /// to a recipient, a sender or a Message-ID (Add-ResubmitRequest), or only counted (--test-only).
    Resubmit(resubmit::ResubmitArgs),
    /// The hub queues, like postqueue/postsuper and Get-Queue/Get-Message: list, show, retry,
    /// hold, release, delete.
    Queue {
        /// What to do with the queue.
        #[command(subcommand)]
        command: queue::QueueCommand,
    },
}

/// A failure with the exit status it maps to.
#[derive(Debug)]
pub enum Failure {
    /// Bad usage or configuration: exit 2.
    Usage(String),
    /// A failed check or request: exit 1.
    Failed(String),
}

impl From<ProgramError> for Failure {
    fn from(e: ProgramError) -> Failure {
        match e {
            ProgramError::Usage(m) => Failure::Usage(m),
            ProgramError::Failed(m) => Failure::Failed(m),
        }
    }
}

/// Parses the command line, runs it, and maps the outcome to an exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hubrelay: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(m)) => {
            eprintln!("hubrelay: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(m)) => {
            eprintln!("hubrelay: {m}");
            ExitCode::from(1)
        }
    }
}

async fn dispatch(cli: Cli) -> Result<(), Failure> {
    let load = || {
        Site::load(&cli.config)
            .map(Arc::new)
            .map_err(|e| Failure::Usage(e.to_string()))
    };
    // The demo and the bench write their own private site and `tls` needs none; every other
    // command runs from the config.
    let site = match &cli.command {
        Command::Demo => return Ok(demo::run(cli.json, cli.log_format).await?),
        Command::Bench(args) => return Ok(bench::run(args, cli.json, cli.log_format).await?),
        Command::Tls { command } => return tls::run(command, &cli.config, cli.json),
        _ => load()?,
    };
    match cli.command {
        Command::Site { data } => run::site(site, &data, cli.log_format).await,
        Command::Hub { name, data } => run::hub(site, &name, &data, cli.log_format).await,
        Command::Node { name, data } => run::node(site, &name, &data, cli.log_format).await,
        Command::Mailbox {
            address,
            message_id,
        } => mailbox::run(&site, &address, message_id.as_deref(), cli.json).await,
        Command::Stats { storage_group } => {
            stats::run(&site, storage_group.as_deref(), cli.json).await
        }
        Command::Demo => Ok(demo::run(cli.json, cli.log_format).await?),
        Command::Bench(args) => Ok(bench::run(&args, cli.json, cli.log_format).await?),
        Command::Tls { command } => tls::run(&command, &cli.config, cli.json),
        Command::Status { cms } => cluster::status(&site, cms.as_deref(), cli.json).await,
        Command::Health => cluster::health(&site, cli.json).await,
        Command::Move {
            cms,
            target,
            comment,
        } => cluster::move_cms(&site, &cms, target.as_deref(), comment.as_deref(), cli.json).await,
        Command::Resubmit(args) => resubmit::run(&site, &args, cli.json).await,
        Command::Copy {
            action,
            cms,
            storage_group,
            comment,
        } => {
            copy::run(
                &site,
                action,
                &cms,
                &storage_group,
                comment.as_deref(),
                cli.json,
            )
            .await
        }
        Command::Queue { command } => queue::run(&site, command, cli.json).await,
    }
}

/// Prints `value` as one JSON document.
pub fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Failure::Failed(e.to_string()))?;
    println!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
