//! Outbound SMTP to the active node of a clustered mailbox server, with lettre.
//!
//! lettre's `send_raw` fails a whole transaction when one RCPT is refused, but one rejected recipient
//! must not fail the others, so this drives lettre's connection command by command (MAIL, each RCPT,
//! DATA) and classifies every reply exactly once into an [`Outcome`]. Connections are kept per node and
//! reused. A passive node answers 4xx at MAIL; the hub then tries the other node and remembers which
//! one answered as active. Each new connection is secured as `delivery_tls` says ([`super::node_tls`])
//! and then authenticated with the site's delivery secret (AUTH CRAM-SHA256, [`crate::smtp::DeliveryAuth`]):
//! nodes take mail from the site's hubs only.
//!
//! Getting a connection and its answer to MAIL (the *opening*) must come within
//! `node_connect_timeout`; what each node made of its openings ([`Reach`]) decides which nodes an
//! attempt tries, and tells intake whether a CMS answers ([`CmsLink::answering`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::commands::{Data, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, MailBodyParameter, MailParameter};
use lettre::transport::smtp::Error as SmtpError;
use lettre::Address;
use tracing::{debug, warn};

use super::node_tls::{ForNode, NodeTls, NodeTlsError};
use super::reach::{attempt_order, LeftAlone, Reach};
use crate::config::Cms;
use crate::smtp::{DeliverySecret, MECHANISM};

/// How long one SMTP step after MAIL may take before the attempt counts as a temporary failure:
/// DATA waits for the node's fsync, which a loaded disk can stretch far beyond an opening.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per node; enough for the delivery concurrency of one hub.
const MAX_IDLE_PER_NODE: usize = 64;

/// The result of delivering to one recipient; drives both retry and bounce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The node accepted the message for this recipient.
    Delivered,
    /// Try again later (4xx, connection failure, timeout, both nodes unavailable).
    Transient(String),
    /// Give up and notify the sender (5xx).
    Permanent {
        /// The SMTP reply code (or 550 when the address itself is unusable).
        code: u16,
        /// The reply text.
        reason: String,
    },
}

/// Connections and active-node memory for one CMS.
pub struct CmsLink {
    name: String,
    nodes: Vec<NodeLink>,
    /// Index of the node that last answered as active; tried first.
    preferred: AtomicUsize,
    client_id: ClientId,
    /// `node_connect_timeout`: how long an opening may take.
    connect_timeout: Duration,
    /// This hub's name (the AUTH user) and the site's delivery secret.
    auth: (String, DeliverySecret),
    /// The newest epoch of this CMS that asked this hub to resubmit: an acknowledgement from an
    /// older epoch that arrives later is not trusted ([`CmsLink::superseded`]).
    newest_epoch: AtomicU64,
}

/// The node that took a delivery, and the epoch its `250` named (nodes of an earlier release
/// name none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// The node's name.
    pub node: String,
    /// Its epoch when it acknowledged.
    pub epoch: Option<u64>,
}

struct NodeLink {
    name: String,
    addr: SocketAddr,
    /// Replaced when the hub's TLS files are read again (SIGHUP).
    tls: ArcSwap<ForNode>,
    idle: Mutex<Vec<AsyncSmtpConnection>>,
    reach: Mutex<Reach>,
}

/// Why one node could not take a transaction; decides whether to try the other node.
enum NodeFailure {
    /// The node could not be reached, or answered 4xx before any recipient was accepted.
    Unavailable(String),
}

/// One opening under way, counted in its node's [`Reach`] until it is settled; one dropped
/// unsettled (its attempt was cancelled) counts as failed, so the count never leaks.
struct Opening<'a> {
    node: &'a NodeLink,
    settled: bool,
}

impl<'a> Opening<'a> {
    /// Starts an opening to the node, unless it is to be left alone this time.
    fn start(node: &'a NodeLink) -> Result<Opening<'a>, LeftAlone> {
        lock(&node.reach).start(Instant::now())?;
        Ok(Opening {
            node,
            settled: false,
        })
    }

    fn answered(mut self) {
        self.settled = true;
        lock(&self.node.reach).answered(Instant::now());
    }

    /// The node did not answer, or broke the connection: also every connection kept to it is
    /// dropped, since they share the path that failed (a peer that vanished without a reset — a
    /// middlebox that lost its state, a host restarted, the slow link of the fault campaign
    /// healed — leaves all of them dead, and trying them one by one cost `node_connect_timeout`
    /// each while every other attempt passed the node by: 60 s without a delivery from one hub,
    /// campaign, stop 33, slow-hub-active).
    fn failed(mut self) {
        self.settled = true;
        lock(&self.node.reach).failed();
        let dropped = std::mem::take(&mut *self.node.idle.lock().expect("pool lock poisoned"));
        if !dropped.is_empty() {
            debug!(node = %self.node.name, connections = dropped.len(), "an opening failed; kept connections to the node dropped");
        }
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        if !self.settled {
            lock(&self.node.reach).failed();
        }
    }
}

fn lock(reach: &Mutex<Reach>) -> std::sync::MutexGuard<'_, Reach> {
    reach.lock().expect("reach lock poisoned")
}

impl CmsLink {
    /// Links to the nodes of `cms`, introducing itself as `hostname`, connecting as `tls` says and
    /// giving each node `connect_timeout` to answer an opening.
    pub fn new(
        cms: &Cms,
        hostname: &str,
        tls: &NodeTls,
        connect_timeout: Duration,
        auth: (String, DeliverySecret),
    ) -> Result<CmsLink, NodeTlsError> {
        let nodes = cms
            .nodes
            .iter()
            .map(|n| {
                Ok(NodeLink {
                    name: n.name.clone(),
                    addr: n.smtp,
                    tls: ArcSwap::from_pointee(tls.for_node(n.smtp)?),
                    idle: Mutex::new(Vec::new()),
                    reach: Mutex::new(Reach::default()),
                })
            })
            .collect::<Result<_, NodeTlsError>>()?;
        Ok(CmsLink {
            name: cms.name.clone(),
            nodes,
            preferred: AtomicUsize::new(0),
            client_id: ClientId::Domain(hostname.to_string()),
            connect_timeout,
            auth,
            newest_epoch: AtomicU64::new(0),
        })
    }

    /// Secures new connections to this CMS's nodes with `tls` from now on (the hub's TLS files
    /// read again); connections already open keep theirs.
    pub fn secure_with(&self, tls: &NodeTls) -> Result<(), NodeTlsError> {
        let renewed = self
            .nodes
            .iter()
            .map(|n| tls.for_node(n.addr))
            .collect::<Result<Vec<_>, _>>()?;
        for (node, renewed) in self.nodes.iter().zip(renewed) {
            node.tls.store(Arc::new(renewed));
        }
        Ok(())
    }

    /// The CMS this link serves.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A node of this CMS mounted at `epoch` asked for a resubmission: from now on a `250` of an
    /// older epoch is late (its node lost the role between its last check and the reply, a pause
    /// say), and what it acknowledged must be delivered again.
    pub fn note_epoch(&self, epoch: u64) {
        self.newest_epoch.fetch_max(epoch, Ordering::SeqCst);
    }

    /// The newer epoch, if a `250` named `acked` and a newer epoch of this CMS has asked for a
    /// resubmission meanwhile.
    pub fn superseded(&self, acked: Option<u64>) -> Option<u64> {
        superseded_by(self.newest_epoch.load(Ordering::SeqCst), acked)
    }

    /// Whether the node an attempt would try first answers ([`Reach::answering`]): if not, a new
    /// message's first attempt would wait on that node rather than on the hub.
    pub fn answering(&self) -> bool {
        let now = Instant::now();
        self.order()
            .first()
            .is_some_and(|&i| lock(&self.nodes[i].reach).answering(now))
    }

    /// Whether an attempt now would open to some node of the CMS ([`Reach::check`]), rather than
    /// pass every one by and be deferred without a word to any.
    pub fn worth_trying(&self) -> bool {
        let now = Instant::now();
        self.nodes.iter().any(|n| lock(&n.reach).check(now).is_ok())
    }

    fn order(&self) -> Vec<usize> {
        let failed: Vec<bool> = self
            .nodes
            .iter()
            .map(|n| lock(&n.reach).is_failed())
            .collect();
        let preferred = self.preferred.load(Ordering::Relaxed) % self.nodes.len().max(1);
        attempt_order(preferred, &failed)
    }

    /// Delivers `body` from `sender` to `recipients` on the active node; one outcome per recipient,
    /// in order, and the node that took it (if any).
    pub async fn deliver(
        &self,
        sender: &str,
        recipients: &[String],
        body: &[u8],
    ) -> (Vec<Outcome>, Option<Taken>) {
        let from = if sender.is_empty() {
            None
        } else {
            match sender.parse::<Address>() {
                Ok(a) => Some(a),
                Err(e) => {
                    let o = Outcome::Permanent {
                        code: 550,
                        reason: format!("sender <{sender}> is not a usable address: {e}"),
                    };
                    return (vec![o; recipients.len()], None);
                }
            }
        };
        let mut params = Vec::new();
        if body.iter().any(|b| *b >= 0x80) {
            params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        let mail = Mail::new(from, params);
        let mut errors = Vec::new();
        for idx in self.order() {
            let node = &self.nodes[idx];
            match self.try_node(node, &mail, recipients, body).await {
                Ok((outcomes, epoch)) => {
                    self.preferred.store(idx, Ordering::Relaxed);
                    let taken = Taken {
                        node: node.name.clone(),
                        epoch,
                    };
                    return (outcomes, Some(taken));
                }
                Err(NodeFailure::Unavailable(e)) => {
                    debug!(node = %node.name, error = %e, "node unavailable, trying the other");
                    errors.push(format!("{}: {e}", node.name));
                }
            }
        }
        let reason = if errors.is_empty() {
            String::from("no node configured")
        } else {
            errors.join("; ")
        };
        let reason = format!(
            "no active node of {} took the message ({reason})",
            self.name
        );
        (vec![Outcome::Transient(reason); recipients.len()], None)
    }

    async fn try_node(
        &self,
        node: &NodeLink,
        mail: &Mail,
        recipients: &[String],
        body: &[u8],
    ) -> Result<(Vec<Outcome>, Option<u64>), NodeFailure> {
        let opening = Opening::start(node)
            .map_err(|why| NodeFailure::Unavailable(format!("not tried: {why}")))?;
        let open = async {
            let mut conn = self.connection(node).await?;
            let reply = conn.command(mail.clone()).await;
            Ok::<_, String>((conn, reply))
        };
        let (mut conn, reply) = match tokio::time::timeout(self.connect_timeout, open).await {
            Ok(Ok(opened)) => opened,
            Ok(Err(e)) => {
                opening.failed();
                return Err(NodeFailure::Unavailable(e));
            }
            Err(_) => {
                opening.failed();
                return Err(NodeFailure::Unavailable(format!(
                    "no answer within {} (node_connect_timeout)",
                    humantime::format_duration(self.connect_timeout)
                )));
            }
        };
        match reply.map_err(Fail::from) {
            Ok(_) => opening.answered(),
            Err(Fail::Permanent(o)) => {
                opening.answered();
                reset(&mut conn).await;
                if !conn.has_broken() {
                    self.release(node, conn);
                }
                return Ok((vec![o; recipients.len()], None));
            }
            Err(Fail::Transient(e)) => {
                opening.answered();
                conn.abort().await;
                return Err(NodeFailure::Unavailable(e));
            }
            Err(Fail::Broken(e)) => {
                opening.failed();
                conn.abort().await;
                return Err(NodeFailure::Unavailable(e));
            }
        }
        let result = transaction(&mut conn, recipients, body).await;
        match &result {
            Ok(_) if !conn.has_broken() => self.release(node, conn),
            _ => conn.abort().await,
        }
        result
    }

    /// A kept connection to `node`, or a new one (connect, greeting, EHLO, STARTTLS); the caller
    /// bounds the time.
    async fn connection(&self, node: &NodeLink) -> Result<AsyncSmtpConnection, String> {
        loop {
            let pooled = node.idle.lock().expect("pool lock poisoned").pop();
            match pooled {
                Some(c) if !c.has_broken() => return Ok(c),
                Some(_) => continue,
                None => break,
            }
        }
        // Our own socket, for TCP_NODELAY: lettre writes a message and its final dot in separate
        // writes, and with Nagle the dot waits for the peer's delayed ACK (40 ms per message).
        let stream = tokio::net::TcpStream::connect(node.addr)
            .await
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut conn =
            AsyncSmtpConnection::connect_with_transport(Box::new(stream), &self.client_id)
                .await
                .map_err(|e| e.to_string())?;
        let tls = node.tls.load_full();
        if !tls.secure(&mut conn, &self.client_id).await? {
            self.authenticate(&mut conn).await?;
        }
        Ok(conn)
    }

    /// AUTH CRAM-SHA256 as this hub. A node that does not offer it (one of an older release, or
    /// another MTA in its place) answers 5xx and gets the mail without; a refused answer (a wrong
    /// secret) fails the connection, so the mail stays queued and is retried.
    ///
    /// lettre's AUTH mechanisms (PLAIN, LOGIN, XOAUTH2) send the secret itself, and its EHLO
    /// parser keeps only those, so the exchange is sent as plain command lines.
    async fn authenticate(&self, conn: &mut AsyncSmtpConnection) -> Result<(), String> {
        let (user, secret) = &self.auth;
        let challenge = match conn.command(Line(format!("AUTH {MECHANISM}"))).await {
            Ok(r) if r.has_code(334) => r.first_line().unwrap_or_default().to_string(),
            Ok(_) => return Ok(()),
            Err(e) if e.is_permanent() => {
                debug!(error = %e, "the node does not take AUTH; delivering without");
                return Ok(());
            }
            Err(e) => return Err(e.to_string()),
        };
        let answer = secret
            .respond(user, &challenge)
            .map_err(|e| e.to_string())?;
        match conn.command(Line(answer)).await {
            Ok(_) => Ok(()),
            Err(e) => {
                warn!(error = %e, "the node refused this hub's AUTH: is delivery_secret_file the same on every role?");
                Err(format!("AUTH refused: {e}"))
            }
        }
    }

    fn release(&self, node: &NodeLink, conn: AsyncSmtpConnection) {
        let mut idle = node.idle.lock().expect("pool lock poisoned");
        if idle.len() < MAX_IDLE_PER_NODE {
            idle.push(conn);
        }
    }
}

/// A command line of our own (lettre's command types cover only the commands it knows).
struct Line(String);

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\r\n", self.0)
    }
}

/// One SMTP step's failure, classified once.
enum Fail {
    /// 5xx: do not retry.
    Permanent(Outcome),
    /// 4xx: retry later.
    Transient(String),
    /// The connection is unusable (I/O error, timeout, garbage reply).
    Broken(String),
}

impl From<SmtpError> for Fail {
    fn from(e: SmtpError) -> Fail {
        // 530: the node wants what this hub did not give (AUTH it did not offer when the hub
        // connected, or STARTTLS): a fault of the site's configuration, never of the message, so
        // the mail waits for it to be fixed instead of bouncing.
        if e.status().map(u16::from) == Some(530) {
            return Fail::Transient(format!("the node refused this hub: {e}"));
        }
        if e.is_permanent() {
            Fail::Permanent(Outcome::Permanent {
                code: e.status().map(u16::from).unwrap_or(550),
                reason: e.to_string(),
            })
        } else if e.is_transient() {
            Fail::Transient(e.to_string())
        } else {
            Fail::Broken(e.to_string())
        }
    }
}

async fn step<T>(f: impl std::future::Future<Output = Result<T, SmtpError>>) -> Result<T, Fail> {
    match tokio::time::timeout(STEP_TIMEOUT, f).await {
        Ok(r) => r.map_err(Fail::from),
        Err(_) => Err(Fail::Broken("SMTP step timed out".into())),
    }
}

/// Runs the rest of a transaction (RCPT, DATA) on a connection whose MAIL was accepted; the
/// outcomes, and the epoch the node's `250` to the message named.
async fn transaction(
    conn: &mut AsyncSmtpConnection,
    recipients: &[String],
    body: &[u8],
) -> Result<(Vec<Outcome>, Option<u64>), NodeFailure> {
    let mut outcomes = Vec::with_capacity(recipients.len());
    let mut accepted = Vec::new();
    for (i, rcpt) in recipients.iter().enumerate() {
        let addr = match rcpt.parse::<Address>() {
            Ok(a) => a,
            Err(e) => {
                outcomes.push(Outcome::Permanent {
                    code: 550,
                    reason: format!("<{rcpt}> is not a usable address: {e}"),
                });
                continue;
            }
        };
        match step(conn.command(Rcpt::new(addr, vec![]))).await {
            Ok(_) => {
                accepted.push(i);
                outcomes.push(Outcome::Delivered);
            }
            Err(Fail::Permanent(o)) => outcomes.push(o),
            Err(Fail::Transient(e)) => outcomes.push(Outcome::Transient(e)),
            Err(Fail::Broken(e)) => return Err(NodeFailure::Unavailable(e)),
        }
    }
    if accepted.is_empty() {
        reset(conn).await;
        return Ok((outcomes, None));
    }
    let data = async {
        step(conn.command(Data)).await?;
        step(conn.message(strip_final_crlf(body))).await
    };
    let reply = data.await;
    let epoch = reply
        .as_ref()
        .ok()
        .and_then(|r| r.message().find_map(ack_epoch));
    if let Err(fail) = reply {
        let o = match fail {
            Fail::Permanent(o) => o,
            Fail::Transient(e) | Fail::Broken(e) => {
                warn!(error = %e, "DATA failed; the message will be retried");
                Outcome::Transient(e)
            }
        };
        for i in accepted {
            outcomes[i] = o.clone();
        }
    }
    Ok((outcomes, epoch))
}

/// `newest`, if it is newer than the epoch `acked` (none: a node that names none is trusted).
fn superseded_by(newest: u64, acked: Option<u64>) -> Option<u64> {
    acked.filter(|e| *e < newest).map(|_| newest)
}

/// The epoch a node's `250` names: `… (epoch 7)`.
fn ack_epoch(line: &str) -> Option<u64> {
    let (_, rest) = line.rsplit_once("(epoch ")?;
    rest.strip_suffix(')')?.parse().ok()
}

/// RSET so a pooled connection starts clean; a failure marks it broken and it is dropped.
async fn reset(conn: &mut AsyncSmtpConnection) {
    if step(conn.command(Rset)).await.is_err() {
        conn.abort().await;
    }
}

/// lettre appends `CRLF . CRLF` itself; the stored message already ends its last line with CRLF.
fn strip_final_crlf(body: &[u8]) -> &[u8] {
    body.strip_suffix(b"\r\n").unwrap_or(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_of_an_acknowledgement_is_read_from_its_text() {
        assert_eq!(ack_epoch("stored (epoch 7)"), Some(7));
        assert_eq!(
            ack_epoch("already delivered; duplicate dropped (epoch 12)"),
            Some(12)
        );
        assert_eq!(ack_epoch("stored"), None);
        assert_eq!(ack_epoch("stored (epoch x)"), None);
        assert_eq!(ack_epoch("stored (epoch 7) trailing"), None);
    }

    #[test]
    fn only_an_acknowledgement_of_an_older_epoch_than_a_resubmission_request_is_superseded() {
        assert_eq!(superseded_by(0, Some(3)), None);
        assert_eq!(superseded_by(4, Some(3)), Some(4));
        assert_eq!(superseded_by(4, Some(4)), None);
        assert_eq!(superseded_by(4, Some(5)), None);
        assert_eq!(
            superseded_by(4, None),
            None,
            "a node that names no epoch is trusted as before"
        );
    }

    #[test]
    fn final_crlf_is_not_doubled() {
        assert_eq!(strip_final_crlf(b"a\r\nb\r\n"), b"a\r\nb");
        assert_eq!(strip_final_crlf(b"a\r\nb"), b"a\r\nb");
    }
}
