//! Limits and identity of one SMTP listener.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::auth::DeliveryAuth;
use super::tls::ServerTls;
use super::BareNewline;

/// Server limits and identity.
///
/// Every limit exists so that one client cannot exhaust the relay: each is enforced with
/// its RFC reply code and the session (or server) goes on.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// Name in the greeting, the EHLO reply, `Received:` and generated Message-IDs.
    pub hostname: String,
    /// Largest message accepted, in bytes of (dot-unstuffed) DATA; advertised as `SIZE`.
    pub max_message_size: u64,
    /// RCPTs accepted per transaction; more get `452 4.5.3` (RFC 5321 §4.5.3.1.8). Default 100.
    pub max_recipients: usize,
    /// Concurrent sessions; a connection beyond this gets `421 4.7.0`. Default 500.
    pub max_connections: usize,
    /// Concurrent sessions from one client address; beyond it `421 4.7.0`, so one client
    /// cannot take every slot of `max_connections` (Postfix's
    /// `smtpd_client_connection_count_limit`). Default 50.
    pub max_connections_per_client: usize,
    /// Client networks `max_connections_per_client` does not apply to. Default: none (the
    /// site config defaults it to loopback, as Postfix exempts `$mynetworks`).
    pub connection_limit_exceptions: Vec<IpNet>,
    /// Time allowed without a complete command: the server timeout of RFC 5321 §4.5.3.2.7.
    /// Default 300 s.
    pub idle_timeout: Duration,
    /// Time allowed without any bytes while a message is received: the data block timeout
    /// of RFC 5321 §4.5.3.2.5. Default 180 s.
    pub data_timeout: Duration,
    /// What a bare CR or LF in a message (or, under `Reject`, in a command) leads to.
    /// Default: normalised.
    pub bare_newline: BareNewline,
    /// Longest command line, CRLF included (RFC 5321 §4.5.3.1.4). Default 512.
    pub max_line_length: usize,
    /// Longest DATA line, CRLF included and the stuffing dot not (RFC 5321 §4.5.3.1.6). Default 1000.
    pub max_data_line_length: usize,
    /// Protocol errors (unknown, malformed or out-of-sequence commands) before `421 4.7.0`
    /// and close, so a confused or hostile client cannot hold a slot forever. Default 20.
    pub max_errors: usize,
    /// After shutdown, how long [`serve`](super::serve) waits for sessions (e.g. one in the
    /// middle of DATA) before aborting them. Default 30 s.
    pub shutdown_grace: Duration,
    /// The certificate for STARTTLS; STARTTLS is advertised only when there is one. Default none.
    pub tls: Option<Arc<ServerTls>>,
    /// Refuse MAIL with `530 5.7.0` until the client has done STARTTLS, for a listener that
    /// must never carry mail in clear text. Only meaningful with `tls`. Default false.
    pub require_tls: bool,
    /// Require SMTP AUTH with the site's delivery secret before MAIL (`530 5.7.0` otherwise): a
    /// mailbox node takes mail from the site's hubs only. Default none (hubs take mail from anyone).
    pub auth: Option<DeliveryAuth>,
}

impl SmtpConfig {
    /// A config with the given identity and size limit and the documented defaults.
    pub fn new(hostname: impl Into<String>, max_message_size: u64) -> Self {
        SmtpConfig {
            hostname: hostname.into(),
            max_message_size,
            max_recipients: 100,
            max_connections: 500,
            max_connections_per_client: 50,
            connection_limit_exceptions: Vec::new(),
            idle_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            bare_newline: BareNewline::Normalize,
            max_line_length: 512,
            max_data_line_length: 1000,
            max_errors: 20,
            shutdown_grace: Duration::from_secs(30),
            tls: None,
            require_tls: false,
            auth: None,
        }
    }

    /// True when `ip` is exempt from the per-client cap.
    pub(crate) fn is_limit_exempt(&self, ip: IpAddr) -> bool {
        self.connection_limit_exceptions
            .iter()
            .any(|net| net.contains(&ip))
    }
}
