//! hubrelay: an SMTP relay ("hub") that keeps a transport dumpster of what it delivered to clustered
//! mailbox servers, so that a lossy failover of a mailbox server loses no mail.
//!
//! # Layers
//!
//! Modules import only from rows below their own (`python3 ../shared/tools/layers.py`, run by
//! `.ci/run`, fails on a back-arrow). Read bottom to top:
//!
//! ```text
//! 6  cli         the command line: clap definitions, one thin function per command
//! 5  programs    demo, bench and the private site they start: programs built on the roles
//! 4  runtime     process wiring: bind listeners, start roles, reload certificates, shut down
//! 3  admin       the HTTP surface (axum) over a hub or a node, and the site dashboard
//! 2  hub  node   the roles: queue, delivery, dumpster, resubmission | log, store, replication, failover
//! 1  client      calling a role's admin API (CLI, dashboard, a node asking hubs to resubmit)
//!    cluster     the failover state machine (no I/O) and the witness lease (file share, etcd)
//!    config      the site file, validated with file/line/key errors
//!    telemetry   metrics exposition and log format
//!    smtp        the inbound SMTP server and its TLS
//! 0  wire        the admin API's JSON: status, copy status, dumpster statistics, resubmission
//!    clock       wall and monotonic clocks, how times are shown, resubmission windows on a hub's clock
//!    space       free space on a role's disks against the reserve it keeps (min_free_space)
//! ```
//!
//! Within a row, modules may use each other in one direction only (config names smtp's
//! `BareNewline`; client and cluster read config; cluster reads certificates through smtp).
//! Persistence (queue, dumpster, mailbox store, transaction logs) is the `store` crate, on sled,
//! below all of them.

pub mod admin;
pub mod cli;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod hub;
pub mod node;
pub mod programs;
pub mod runtime;
pub mod smtp;
pub mod space;
pub mod telemetry;
pub mod wire;
