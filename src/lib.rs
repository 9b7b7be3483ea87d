//! hubrelay: an SMTP relay ("hub") that keeps a transport dumpster of what it delivered to clustered
//! mailbox servers, so that a lossy failover of a mailbox server loses no mail.
//!
//! # Layout
//!
//! - [`config`]: the site file (every hub, CMS, node and storage group), validated with file/line/key errors.
//! - [`smtp`]: the inbound SMTP server shared by hubs and nodes (state machine over `smtp-proto`).
//! - [`hub`]: durable queue, delivery to the active node (lettre), retries, DSNs, dumpster, resubmission.
//! - [`node`]: a mailbox node: transaction log (group-committed), mailbox store with dedup by Message-ID and content.
//! - [`admin`]: the admin API (axum) of every role, the site dashboard it serves, and the client the CLI uses.
//! - [`cli`]: the command line.
//! - [`runtime`]: binding listeners and running roles until shutdown.
//! - [`telemetry`]: Prometheus metrics and log lines shared by every role.
//!
//! Persistence (queue, dumpster, mailbox store, transaction logs) is the `store` crate, on sled.

pub mod admin;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod hub;
pub mod node;
pub mod runtime;
pub mod smtp;
pub mod telemetry;
