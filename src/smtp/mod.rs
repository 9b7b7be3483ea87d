//! Inbound SMTP (RFC 5321) shared by the hub and the mailbox node.
//!
//! The server speaks ESMTP with SIZE, PIPELINING, 8BITMIME, ENHANCEDSTATUSCODES, CHUNKING (BDAT,
//! RFC 3030), DSN for a backend that sends delivery reports, and STARTTLS (RFC 3207) when a certificate is
//! configured; it enforces every limit with its RFC reply and goes on, and hands each complete,
//! stamped message to a role-specific [`Backend`], whose reply is what the client sees — so a
//! `250` means whatever the backend promises (durable on disk).
//!
//! # Layout
//! - `server.rs`: accept loop, connection caps, shutdown and drain; `clients.rs`: the
//!   per-client-address count.
//! - `session.rs`: one connection: line framing, pipelined replies, timeouts, delivery.
//! - `command.rs`: the command state machine (EHLO to QUIT), free of I/O.
//! - `path.rs`: the MAIL and RCPT paths, strictly per RFC 5321 §4.1.2.
//! - `data.rs`: the DATA receiver: terminator, dot-unstuffing, bare line ends, size and line
//!   limits; the same for the chunks of a BDAT message, without dots or terminator.
//! - `stamp.rs`: the `Received:` and `Message-ID:` headers.
//! - `auth.rs`: AUTH CRAM-SHA256 with the site's delivery secret, which nodes require of hubs.
//! - `dsn.rs`: the DSN parameters of MAIL and RCPT (RFC 3461), for backends that offer DSN.
//! - `tls.rs`: the reloadable certificate; `stream.rs`: the connection STARTTLS upgrades.
//! - `reply.rs`, `config.rs`: [`Reply`] and [`SmtpConfig`].

mod auth;
mod certs;
mod clients;
mod command;
mod config;
mod data;
mod dsn;
mod path;
mod reply;
mod server;
mod session;
mod stamp;
mod stream;
#[cfg(test)]
mod tests;
mod tls;

use std::future::Future;
use std::net::SocketAddr;

pub use auth::{AuthError, DeliveryAuth, DeliverySecret, MECHANISM};
pub use certs::{PemPair, SiteCa, Usage};
pub use config::SmtpConfig;
pub use data::BareNewline;
pub use dsn::Dsn;
pub use reply::Reply;
pub use server::serve;
pub(crate) use tls::{crypto_provider, read_certificates, root_store};
pub use tls::{ServerTls, TlsError, TlsFiles};

/// A complete inbound message, after DATA, stamped.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The reverse-path of MAIL FROM; `""` is the null sender (bounces).
    pub sender: String,
    /// The accepted RCPT TO addresses, as given (address only, no parameters), in order.
    pub recipients: Vec<String>,
    /// With `<>`: the message's own Message-ID (trimmed), or the one generated for it.
    pub message_id: String,
    /// The message: `Received:` prepended, `Message-ID:` added if missing, otherwise the
    /// bytes as received with dot-stuffing removed and CRLF line ends only (bare CR and LF
    /// normalised, see [`BareNewline`]).
    pub data: Vec<u8>,
    /// The client's address, for logs and policy.
    pub peer: SocketAddr,
    /// RET, ENVID and each recipient's NOTIFY and ORCPT (RFC 3461); all absent unless the
    /// backend [offers DSN](Backend::offers_dsn).
    pub dsn: Dsn,
}

/// What a role (hub or mailbox node) plugs into the server.
///
/// The checks are synchronous because they are lookups in memory (routing table, role
/// state); only delivery touches the disk.
pub trait Backend: Send + Sync + 'static {
    /// Called at MAIL FROM; a passive mailbox node answers 451 4.3.2 here.
    fn check_mail(&self, sender: &str) -> Result<(), Reply>;
    /// Called per RCPT TO: 550 5.1.1 unknown mailbox, 550 5.7.1 relaying denied, etc.
    fn check_rcpt(&self, rcpt: &str) -> Result<(), Reply>;
    /// Called after DATA; must only return 250 once the message is durable.
    ///
    /// The reply is sent as-is; after any reply the session takes a new transaction.
    fn deliver(&self, msg: Incoming) -> impl Future<Output = Reply> + Send;
    /// Whether EHLO advertises DSN and MAIL/RCPT take its parameters (RFC 3461): only a role
    /// that sends the reports may promise them. Mailbox nodes do not; the hub reports for them.
    fn offers_dsn(&self) -> bool {
        false
    }
    /// A client was refused for want of AUTH (`"missing"`), with a wrong answer (`"invalid"`), on
    /// a listener with [`SmtpConfig::auth`], or at the handshake for want of a certificate from
    /// the site's CA (`"certificate"`): counted by a node's metrics.
    fn auth_refused(&self, _reason: &'static str) {}
}
