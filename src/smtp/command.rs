//! The SMTP command state machine (RFC 5321 §4.1), without I/O: a command line in, a reply
//! and what to do next out. Keeping it synchronous keeps every sequencing rule in one place
//! and lets the session own all reading, writing and timing.

use smtp_proto::{
    Error as ParseError, MailFrom, RcptTo, Request, MAIL_BODY_7BIT, MAIL_BODY_8BITMIME,
    MAIL_RET_FULL, MAIL_RET_HDRS, RCPT_NOTIFY_DELAY, RCPT_NOTIFY_FAILURE, RCPT_NOTIFY_NEVER,
    RCPT_NOTIFY_SUCCESS,
};

use super::auth::{DeliveryAuth, MECHANISM};
use super::dsn::{self, Dsn};
use super::path::{self, PathKind};
use super::{Backend, BareNewline, Reply, SmtpConfig};
use tracing::{debug, info, warn};

/// Verbs we recognise but do not offer; RFC 5321 §4.2.4 wants 502 for them, not 500.
const NOT_IMPLEMENTED: &[&str] = &[
    "AUTH", "EXPN", "ETRN", "ATRN", "BURL", "LHLO", "TURN", "SEND", "SOML", "SAML",
];

/// The client's EHLO/HELO, remembered for the `Received:` header.
#[derive(Debug, Clone)]
pub(crate) struct Helo {
    /// The name the client announced.
    pub name: String,
    /// EHLO (true) or HELO (false).
    pub esmtp: bool,
}

/// One mail transaction, handed over to the session when DATA is accepted.
#[derive(Debug)]
pub(crate) struct Envelope {
    /// The greeting in force when the transaction started.
    pub helo: Helo,
    /// MAIL FROM address; `""` is the null sender.
    pub sender: String,
    /// The recipients the backend accepted.
    pub recipients: Vec<String>,
    /// The DSN parameters of MAIL and of each accepted RCPT.
    pub dsn: Dsn,
}

/// What the session does after sending a reply.
#[derive(Debug)]
pub(crate) enum Next {
    /// Read the next command.
    Command,
    /// Flush the 354 and receive the message for this envelope.
    Data(Envelope),
    /// Close the connection (QUIT, or too many errors).
    Close,
    /// Flush the 220, drop any input pipelined after STARTTLS, run the TLS handshake and start
    /// over with [`Commands::encrypted`] (RFC 3207 §4.2).
    StartTls,
    /// Read the next `size` bytes as a BDAT chunk (RFC 3030). The step's reply waits until the
    /// chunk is read: a refused chunk is dropped, a taken one kept, and then the reply is sent
    /// (for the last chunk of a message, the reply to the message instead).
    Chunk(Chunk),
}

/// A BDAT chunk announced by its command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chunk {
    /// Its size in bytes.
    pub size: u64,
    /// `BDAT n LAST`: the message ends with it.
    pub last: bool,
    /// Whether it belongs to the message; if not, the step's reply refuses it.
    pub take: bool,
}

/// The outcome of one command line.
#[derive(Debug)]
pub(crate) struct Step {
    /// Sent to the client.
    pub reply: Reply,
    /// What happens afterwards.
    pub next: Next,
}

impl Step {
    fn reply(reply: Reply) -> Step {
        Step {
            reply,
            next: Next::Command,
        }
    }
}

/// Where the AUTH exchange of a listener that requires it stands.
#[derive(Debug, Default)]
enum Auth {
    /// Not authenticated.
    #[default]
    No,
    /// `334` sent with this challenge: the next line is the client's answer.
    Challenged(String),
    /// Authenticated: MAIL is allowed.
    Yes,
}

/// Per-connection protocol state.
#[derive(Debug, Default)]
pub(crate) struct Commands {
    helo: Option<Helo>,
    envelope: Option<Envelope>,
    errors: usize,
    /// The connection is encrypted: STARTTLS is no longer offered, and `require_tls` is met.
    tls: bool,
    auth: Auth,
    /// The transaction's message is being sent with BDAT: DATA may not follow (RFC 3030 §3).
    bdat: bool,
}

impl Commands {
    /// The state after a TLS handshake: nothing learnt before it is kept (RFC 3207 §4.2), so the
    /// client must greet again and no envelope crosses from clear text into the encrypted session.
    /// A client whose certificate the listener verified against the site's CA
    /// (`delivery_tls = "mutual"`) is one of the site's roles: it needs no AUTH.
    pub(crate) fn encrypted(client_certified: bool) -> Commands {
        Commands {
            tls: true,
            auth: if client_certified {
                Auth::Yes
            } else {
                Auth::No
            },
            ..Commands::default()
        }
    }

    /// Handles one complete command line (LF included).
    pub(crate) fn handle<B: Backend>(
        &mut self,
        line: &[u8],
        backend: &B,
        config: &SmtpConfig,
    ) -> Step {
        if let Auth::Challenged(challenge) = &self.auth {
            let challenge = challenge.clone();
            self.auth = Auth::No;
            return self.auth_answer(&challenge, line, backend, config);
        }
        let verb = line
            .split(|&b| b == b' ' || b == b'\r' || b == b'\n')
            .next()
            .unwrap_or_default();
        if verb.eq_ignore_ascii_case(b"AUTH") {
            if let Some(auth) = &config.auth {
                return self.auth(&line[verb.len()..], auth, config);
            }
        }
        if NOT_IMPLEMENTED
            .iter()
            .any(|v| verb.eq_ignore_ascii_case(v.as_bytes()))
        {
            return self.error(Reply::new(502, "5.5.1", "command not implemented"), config);
        }
        if config.bare_newline == BareNewline::Reject && !line.ends_with(b"\r\n") {
            return self.error(
                Reply::new(500, "5.5.2", "command line ends in a bare LF; use CRLF"),
                config,
            );
        }
        if verb.eq_ignore_ascii_case(b"STARTTLS") {
            return self.starttls(&line[verb.len()..], config);
        }
        if verb.eq_ignore_ascii_case(b"BDAT") {
            return match bdat_arguments(&line[verb.len()..]) {
                Some((size, last)) => self.bdat(size, last, config),
                None => self.error(
                    Reply::new(501, "5.5.4", "syntax: BDAT chunk-size [LAST]"),
                    config,
                ),
            };
        }
        let kind = if verb.eq_ignore_ascii_case(b"MAIL") {
            Some(PathKind::Reverse)
        } else if verb.eq_ignore_ascii_case(b"RCPT") {
            Some(PathKind::Forward)
        } else {
            None
        };
        let Some((kind, parsed)) = kind.and_then(|k| path::parse(line, k).map(|p| (k, p))) else {
            return match Request::parse(&mut line.iter()) {
                // `path::parse` found no `FROM:` / `TO:` where smtp-proto did: refuse rather
                // than take a path that was not checked.
                Ok(Request::Mail { .. } | Request::Rcpt { .. }) => self.error(
                    Reply::new(501, "5.5.4", "syntax: MAIL FROM:<path> / RCPT TO:<path>"),
                    config,
                ),
                Ok(request) => self.request(request, b"", backend, config),
                Err(e) => self.error(parse_error(e), config),
            };
        };
        let path = match parsed {
            Ok(path) => path,
            Err(e) => return self.error(e.reply(kind), config),
        };
        // The path is ours (see `path.rs`); smtp-proto reads the parameters, given a
        // placeholder path it accepts.
        let placeholder: &[u8] = match kind {
            PathKind::Reverse => b"MAIL FROM:<>",
            PathKind::Forward => b"RCPT TO:<postmaster@localhost>",
        };
        let rebuilt = [placeholder, path.rest].concat();
        match Request::parse(&mut rebuilt.iter()) {
            Ok(mut request) => {
                match &mut request {
                    Request::Mail { from } => from.address = path.mailbox,
                    Request::Rcpt { to } => to.address = path.mailbox,
                    _ => {}
                }
                self.request(request, path.rest, backend, config)
            }
            Err(e) => self.error(parse_error(e), config),
        }
    }

    /// Answers a command line longer than `max_line_length` (already discarded).
    pub(crate) fn line_too_long(&mut self, config: &SmtpConfig) -> Step {
        self.error(Reply::new(500, "5.5.6", "line too long"), config)
    }

    /// Answers a parsed command; `params` is what follows the path of MAIL and RCPT (read
    /// again for the DSN parameters), empty for other commands.
    fn request<B: Backend>(
        &mut self,
        request: Request<String>,
        params: &[u8],
        backend: &B,
        config: &SmtpConfig,
    ) -> Step {
        match request {
            Request::Ehlo { host } => {
                self.greet(host, true);
                let mut text = format!(
                    "{}\nSIZE {}\nPIPELINING\n8BITMIME\nENHANCEDSTATUSCODES",
                    config.hostname, config.max_message_size
                );
                if backend.offers_dsn() {
                    text.push_str("\nDSN");
                }
                text.push_str("\nCHUNKING");
                if config.tls.is_some() && !self.tls {
                    text.push_str("\nSTARTTLS");
                }
                let authenticated = matches!(self.auth, Auth::Yes);
                if config.auth.is_some() && (self.tls || !config.require_tls) && !authenticated {
                    text.push_str(&format!("\nAUTH {MECHANISM}"));
                }
                Step::reply(Reply::new(250, "", text))
            }
            Request::Helo { host } => {
                self.greet(host, false);
                Step::reply(Reply::new(250, "", config.hostname.clone()))
            }
            Request::Mail { from } => self.mail(from, params, backend, config),
            Request::Rcpt { to } => self.rcpt(to, params, backend, config),
            Request::Data => self.data(config),
            // Read by `bdat_arguments` before smtp-proto sees the line.
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat(chunk_size as u64, is_last, config),
            Request::Rset => {
                self.envelope = None;
                self.bdat = false;
                Step::reply(Reply::new(250, "2.0.0", "ok"))
            }
            Request::Noop { .. } => Step::reply(Reply::new(250, "2.0.0", "ok")),
            Request::Vrfy { .. } => Step::reply(Reply::new(
                252,
                "2.1.5",
                "cannot VRFY user, but will accept message and attempt delivery",
            )),
            Request::Help { .. } => Step::reply(Reply::new(
                214,
                "2.0.0",
                "commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP",
            )),
            Request::Quit => Step {
                reply: Reply::new(
                    221,
                    "2.0.0",
                    format!("{} closing connection", config.hostname),
                ),
                next: Next::Close,
            },
            Request::Lhlo { .. }
            | Request::Auth { .. }
            | Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. }
            | Request::StartTls => {
                self.error(Reply::new(502, "5.5.1", "command not implemented"), config)
            }
        }
    }

    /// STARTTLS, handled before smtp-proto so that parameters get a 501 rather than being
    /// ignored; offered only with a certificate, and only once per connection.
    fn starttls(&mut self, params: &[u8], config: &SmtpConfig) -> Step {
        if config.tls.is_none() {
            return self.error(Reply::new(502, "5.5.1", "command not implemented"), config);
        }
        if params.iter().any(|b| !b.is_ascii_whitespace()) {
            return self.error(
                Reply::new(501, "5.5.4", "STARTTLS takes no parameters"),
                config,
            );
        }
        if self.tls {
            return self.error(Reply::new(503, "5.5.1", "TLS already active"), config);
        }
        Step {
            reply: Reply::new(220, "2.0.0", "Ready to start TLS"),
            next: Next::StartTls,
        }
    }

    /// `AUTH CRAM-SHA256` on a listener that requires it ([`super::auth`]): the challenge.
    fn auth(&mut self, params: &[u8], _auth: &DeliveryAuth, config: &SmtpConfig) -> Step {
        if self.helo.is_none() {
            return self.error(Reply::new(503, "5.5.1", "send EHLO first"), config);
        }
        if config.require_tls && !self.tls {
            return self.error(
                Reply::new(530, "5.7.0", "Must issue a STARTTLS command first"),
                config,
            );
        }
        if matches!(self.auth, Auth::Yes) {
            return self.error(Reply::new(503, "5.5.1", "already authenticated"), config);
        }
        if self.envelope.is_some() {
            return self.error(
                Reply::new(
                    503,
                    "5.5.1",
                    "AUTH is not allowed during a mail transaction",
                ),
                config,
            );
        }
        let text = String::from_utf8_lossy(params);
        let mut words = text.split_ascii_whitespace();
        match (words.next(), words.next()) {
            (Some(m), None) if m.eq_ignore_ascii_case(MECHANISM) => {
                let challenge = DeliveryAuth::challenge(&config.hostname);
                self.auth = Auth::Challenged(challenge.clone());
                Step::reply(Reply::new(334, "", challenge))
            }
            (Some(m), Some(_)) if m.eq_ignore_ascii_case(MECHANISM) => self.error(
                Reply::new(
                    501,
                    "5.5.2",
                    format!("{MECHANISM} takes no initial response"),
                ),
                config,
            ),
            (None, _) => self.error(Reply::new(501, "5.5.4", "syntax: AUTH mechanism"), config),
            (Some(_), _) => self.error(
                Reply::new(
                    504,
                    "5.5.4",
                    format!("unrecognized authentication type; use {MECHANISM}"),
                ),
                config,
            ),
        }
    }

    /// The client's answer to our challenge.
    fn auth_answer<B: Backend>(
        &mut self,
        challenge: &str,
        line: &[u8],
        backend: &B,
        config: &SmtpConfig,
    ) -> Step {
        let answer = String::from_utf8_lossy(line);
        let answer = answer.trim_end_matches(['\r', '\n']);
        if answer == "*" {
            return self.error(Reply::new(501, "5.7.0", "authentication cancelled"), config);
        }
        let Some(auth) = &config.auth else {
            return self.error(Reply::new(503, "5.5.1", "no AUTH in progress"), config);
        };
        match auth.verify(challenge, answer) {
            Ok(user) => {
                debug!(%user, "hub authenticated");
                self.auth = Auth::Yes;
                Step::reply(Reply::new(235, "2.7.0", "Authentication successful"))
            }
            Err(error) => {
                warn!(%error, "AUTH refused");
                backend.auth_refused("invalid");
                self.error(
                    Reply::new(535, "5.7.8", "Authentication credentials invalid"),
                    config,
                )
            }
        }
    }

    /// EHLO and HELO start over, like RSET (RFC 5321 §4.1.4).
    fn greet(&mut self, name: String, esmtp: bool) {
        self.helo = Some(Helo { name, esmtp });
        self.envelope = None;
    }

    fn mail<B: Backend>(
        &mut self,
        from: MailFrom<String>,
        params: &[u8],
        backend: &B,
        config: &SmtpConfig,
    ) -> Step {
        let Some(helo) = &self.helo else {
            return self.error(Reply::new(503, "5.5.1", "send EHLO or HELO first"), config);
        };
        if config.require_tls && !self.tls {
            if config.auth.is_some() {
                info!(sender = %from.address, "MAIL in clear text refused: deliveries come from the site's hubs only");
                backend.auth_refused("missing");
            }
            return self.error(
                Reply::new(530, "5.7.0", "Must issue a STARTTLS command first"),
                config,
            );
        }
        if config.auth.is_some() && !matches!(self.auth, Auth::Yes) {
            info!(sender = %from.address, "MAIL without AUTH refused: deliveries come from the site's hubs only");
            backend.auth_refused("missing");
            return self.error(
                Reply::new(
                    530,
                    "5.7.0",
                    "Authentication required: this node takes mail from the site's hubs only",
                ),
                config,
            );
        }
        if self.envelope.is_some() {
            return self.error(Reply::new(503, "5.5.1", "sender already specified"), config);
        }
        if has_unsupported_mail_params(&from, backend.offers_dsn()) {
            return self.error(unsupported_params(), config);
        }
        let message_dsn = match dsn::mail_params(params) {
            Ok(d) => d,
            Err(e) => return self.error(e.reply(), config),
        };
        if from.size as u64 > config.max_message_size {
            return Step::reply(Reply::new(
                552,
                "5.3.4",
                "message size exceeds fixed maximum message size",
            ));
        }
        if let Err(reply) = backend.check_mail(&from.address) {
            return Step::reply(reply);
        }
        self.envelope = Some(Envelope {
            helo: helo.clone(),
            sender: from.address,
            recipients: Vec::new(),
            dsn: Dsn {
                message: message_dsn,
                recipients: Vec::new(),
            },
        });
        Step::reply(Reply::new(250, "2.1.0", "sender ok"))
    }

    fn rcpt<B: Backend>(
        &mut self,
        to: RcptTo<String>,
        params: &[u8],
        backend: &B,
        config: &SmtpConfig,
    ) -> Step {
        let Some(envelope) = &mut self.envelope else {
            return self.error(Reply::new(503, "5.5.1", "need MAIL before RCPT"), config);
        };
        if has_unsupported_rcpt_params(&to, backend.offers_dsn()) {
            return self.error(unsupported_params(), config);
        }
        let rcpt_dsn = match dsn::rcpt_params(params) {
            Ok(d) => d,
            Err(e) => return self.error(e.reply(), config),
        };
        if envelope.recipients.len() >= config.max_recipients {
            return Step::reply(Reply::new(452, "4.5.3", "too many recipients"));
        }
        if let Err(reply) = backend.check_rcpt(&to.address) {
            return Step::reply(reply);
        }
        envelope.recipients.push(to.address);
        envelope.dsn.recipients.push(rcpt_dsn);
        Step::reply(Reply::new(250, "2.1.5", "recipient ok"))
    }

    fn data(&mut self, config: &SmtpConfig) -> Step {
        if self.bdat {
            return self.error(
                Reply::new(503, "5.5.1", "DATA cannot follow BDAT in one transaction"),
                config,
            );
        }
        match self.envelope.take() {
            None => self.error(Reply::new(503, "5.5.1", "need MAIL before DATA"), config),
            Some(envelope) if envelope.recipients.is_empty() => {
                self.envelope = Some(envelope);
                self.error(Reply::new(503, "5.5.1", "need RCPT before DATA"), config)
            }
            Some(envelope) => Step {
                reply: Reply::new(354, "", "end data with <CR><LF>.<CR><LF>"),
                next: Next::Data(envelope),
            },
        }
    }

    /// `BDAT size [LAST]`: the chunk is taken for a transaction with recipients, refused (after
    /// it is read) otherwise.
    fn bdat(&mut self, size: u64, last: bool, config: &SmtpConfig) -> Step {
        let refused = match &self.envelope {
            None => Some("need MAIL before BDAT"),
            Some(e) if e.recipients.is_empty() => Some("need RCPT before BDAT"),
            Some(_) => None,
        };
        let chunk = Chunk {
            size,
            last,
            take: refused.is_none(),
        };
        let reply = match refused {
            Some(why) => {
                let step = self.error(Reply::new(503, "5.5.1", why), config);
                if matches!(step.next, Next::Close) {
                    return step;
                }
                step.reply
            }
            None => {
                self.bdat = true;
                Reply::new(250, "2.0.0", format!("{size} octets received"))
            }
        };
        Step {
            reply,
            next: Next::Chunk(chunk),
        }
    }

    /// The transaction of a BDAT message whose last chunk was read, or that was refused on its
    /// way (too large): the transaction ends with it either way.
    pub(crate) fn end_bdat(&mut self) -> Option<Envelope> {
        self.bdat = false;
        self.envelope.take()
    }

    /// Whether a BDAT message is under way (RSET or a refused transaction ends it).
    pub(crate) fn in_bdat(&self) -> bool {
        self.bdat
    }

    /// Counts a protocol error; the last one allowed is answered with 421 and a close, so a
    /// client that cannot speak SMTP does not hold a connection slot until the idle timeout.
    fn error(&mut self, reply: Reply, config: &SmtpConfig) -> Step {
        self.errors += 1;
        if self.errors >= config.max_errors {
            Step {
                reply: Reply::new(421, "4.7.0", "too many errors, closing connection"),
                next: Next::Close,
            }
        } else {
            Step::reply(reply)
        }
    }
}

/// The arguments of `BDAT chunk-size [LAST]` (RFC 3030 §2): a size of 1 to 20 digits that fits
/// in 64 bits, and `LAST` or nothing after it.
///
/// Read here rather than by smtp-proto 0.1, which takes `BDAT 99999999999999999999999` for a
/// chunk of 999 bytes: the session would then read a different number of bytes than the client
/// sends, and take the rest of its chunk for commands.
fn bdat_arguments(args: &[u8]) -> Option<(u64, bool)> {
    let args = std::str::from_utf8(args).ok()?;
    let mut words = args.split_ascii_whitespace();
    let size = words.next()?;
    if size.is_empty() || size.len() > 20 || !size.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let size = size.parse::<u64>().ok()?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return None,
    };
    words.next().is_none().then_some((size, last))
}

/// smtp-proto parses every MAIL extension it knows; we accept only what we advertise.
fn has_unsupported_mail_params(from: &MailFrom<String>, dsn: bool) -> bool {
    let dsn_flags = if dsn {
        MAIL_RET_FULL | MAIL_RET_HDRS
    } else {
        0
    };
    from.flags & !(MAIL_BODY_7BIT | MAIL_BODY_8BITMIME | dsn_flags) != 0
        || from.trans_id.is_some()
        || from.by != 0
        || (from.env_id.is_some() && !dsn)
        || from.solicit.is_some()
        || from.mtrk.is_some()
        || from.auth.is_some()
        || from.hold_for != 0
        || from.hold_until != 0
        || from.mt_priority != 0
}

/// The same for RCPT: NOTIFY and ORCPT only where DSN is advertised.
fn has_unsupported_rcpt_params(to: &RcptTo<String>, dsn: bool) -> bool {
    let notify = RCPT_NOTIFY_SUCCESS | RCPT_NOTIFY_FAILURE | RCPT_NOTIFY_DELAY | RCPT_NOTIFY_NEVER;
    let dsn_flags = if dsn { notify } else { 0 };
    to.rrvs != 0 || to.flags & !dsn_flags != 0 || (to.orcpt.is_some() && !dsn)
}

fn unsupported_params() -> Reply {
    Reply::new(555, "5.5.4", "parameters not recognized or not implemented")
}

fn parse_error(error: ParseError) -> Reply {
    match error {
        ParseError::UnknownCommand => Reply::new(500, "5.5.1", "command not recognized"),
        ParseError::InvalidSenderAddress => Reply::new(501, "5.1.7", "bad sender address syntax"),
        ParseError::InvalidRecipientAddress => {
            Reply::new(501, "5.1.3", "bad recipient address syntax")
        }
        ParseError::SyntaxError { syntax } => Reply::new(501, "5.5.4", format!("syntax: {syntax}")),
        ParseError::InvalidParameter { param } => {
            Reply::new(501, "5.5.4", format!("invalid {param} parameter"))
        }
        ParseError::UnsupportedParameter { .. } => unsupported_params(),
        ParseError::NeedsMoreData { .. }
        | ParseError::ResponseTooLong
        | ParseError::InvalidResponse { .. } => Reply::new(501, "5.5.4", "syntax error"),
    }
}
