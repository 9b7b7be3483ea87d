//! The administrator's copy commands: Suspend-, Resume-, Update- and Restore-StorageGroupCopy.
//!
//! Each is refused, with the reason, where it would be unsafe: a copy exists only on the passive
//! node; a reseed deletes the copy, so it needs the active node reachable to copy from; a restore
//! mounts a copy that misses logs, so it is only for an active node that is lost. What was done,
//! and the comment given with it, is kept in the node's state and shown by `status`; suspension
//! survives a restart until resumed (or until this node is mounted, when it has no copy).

use tracing::warn;

use super::state::CopyNote;
use super::{MailboxNode, NodeError};
use crate::clock::{mono_ms, now_ms};

/// One of the four copy commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyCommand {
    /// Stop copying and replaying logs into this copy.
    Suspend,
    /// Copy and replay again.
    Resume,
    /// Reseed: drop the copy and seed it again from a snapshot of the active node's database.
    Update,
    /// Mount this passive copy after the active node was lost, even beyond the dial (lossy).
    Restore,
}

impl CopyCommand {
    /// The command's name, as in the API path and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            CopyCommand::Suspend => "suspend",
            CopyCommand::Resume => "resume",
            CopyCommand::Update => "update",
            CopyCommand::Restore => "restore",
        }
    }

    /// Parses an API path segment.
    pub fn parse(name: &str) -> Option<CopyCommand> {
        [
            CopyCommand::Suspend,
            CopyCommand::Resume,
            CopyCommand::Update,
            CopyCommand::Restore,
        ]
        .into_iter()
        .find(|c| c.name() == name)
    }
}

/// Why a copy command was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum CopyRefused {
    /// The command needs a copy, and this node is active (it has logs, not a copy).
    #[error("{node} is active: it has no copy of {sg} (copies live on the passive node)")]
    NoCopy {
        /// This node.
        node: String,
        /// The storage group.
        sg: String,
    },
    /// A reseed would delete the copy while nothing could be copied back.
    #[error("the active node is not reachable from {node}: reseeding would delete the only other copy of {sg}; bring the active node back first")]
    NoSource {
        /// This node.
        node: String,
        /// The storage group.
        sg: String,
    },
    /// A reseed of this copy is already under way.
    #[error("a reseed of {sg} on {node} is already under way (see `hubrelay status`)")]
    Seeding {
        /// This node.
        node: String,
        /// The storage group.
        sg: String,
    },
    /// The state machine refused the restore; the text says why.
    #[error("restore refused: {0}")]
    Restore(String),
    /// The node could not carry it out.
    #[error(transparent)]
    Node(#[from] NodeError),
}

impl MailboxNode {
    /// Carries out `command` on storage group `sg` and records it with `comment`.
    pub fn copy_command(
        self: &std::sync::Arc<Self>,
        sg: &str,
        command: CopyCommand,
        comment: Option<String>,
    ) -> Result<(), CopyRefused> {
        let no_copy = || CopyRefused::NoCopy {
            node: self.name.clone(),
            sg: sg.to_string(),
        };
        let suspended = match command {
            CopyCommand::Suspend | CopyCommand::Resume => {
                let suspend = command == CopyCommand::Suspend;
                if !self.suspend(sg, suspend) {
                    return Err(no_copy());
                }
                suspend
            }
            CopyCommand::Update => {
                match self.copies().get(sg) {
                    None => return Err(no_copy()),
                    Some(cs) if cs.seeding.is_some() => {
                        return Err(CopyRefused::Seeding {
                            node: self.name.clone(),
                            sg: sg.to_string(),
                        })
                    }
                    Some(_) => {}
                }
                if !self.machine().peer_active(mono_ms()) {
                    return Err(CopyRefused::NoSource {
                        node: self.name.clone(),
                        sg: sg.to_string(),
                    });
                }
                self.start_reseed(sg).map_err(CopyRefused::Node)?;
                false
            }
            CopyCommand::Restore => {
                self.machine()
                    .restore(mono_ms())
                    .map_err(CopyRefused::Restore)?;
                false
            }
        };
        warn!(node = %self.name, storage_group = %sg, command = command.name(), comment = comment.as_deref().unwrap_or(""), "copy command by the administrator");
        self.state().copy_notes.insert(
            sg.to_string(),
            CopyNote {
                suspended,
                command: command.name().to_string(),
                comment,
                at_ms: now_ms(),
            },
        );
        self.persist().map_err(NodeError::from)?;
        Ok(())
    }

    /// Whether the administrator left `sg`'s copy suspended.
    pub fn suspended_by_admin(&self, sg: &str) -> bool {
        self.state().copy_notes.get(sg).is_some_and(|n| n.suspended)
    }
}
