//! The cluster side of a clustered mailbox server: quorum with the peer and the file share witness,
//! and the failover decisions.
//!
//! [`machine`] decides (pure, exhaustively tested); [`witness`] is the lease file; the node's driver
//! (in `crate::node`) feeds the machine heartbeats, lease outcomes and copy progress and carries out
//! its actions.

pub mod machine;
pub mod witness;
