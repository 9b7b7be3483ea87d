//! Outbound SMTP to the active node of a clustered mailbox server, with lettre.
//!
//! lettre's `send_raw` fails a whole transaction when one RCPT is refused, but one rejected recipient
//! must not fail the others, so this drives lettre's connection command by command (MAIL, each RCPT,
//! DATA) and classifies every reply exactly once into an [`Outcome`]. Connections are kept per node and
//! reused. A passive node answers 4xx at MAIL; the hub then tries the other node and remembers which
//! one answered as active. Each new connection is secured as `delivery_tls` says ([`super::node_tls`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::commands::{Data, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, MailBodyParameter, MailParameter};
use lettre::transport::smtp::Error as SmtpError;
use lettre::Address;
use tracing::{debug, warn};

use super::node_tls::{ForNode, NodeTls, NodeTlsError};
use crate::config::Cms;

/// How long one SMTP step may take before the attempt counts as a temporary failure.
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
}

struct NodeLink {
    name: String,
    addr: SocketAddr,
    tls: ForNode,
    idle: Mutex<Vec<AsyncSmtpConnection>>,
}

/// Why one node could not take a transaction; decides whether to try the other node.
enum NodeFailure {
    /// The node could not be reached or answered 4xx before any recipient was accepted.
    Unavailable(String),
}

impl CmsLink {
    /// Links to the nodes of `cms`, introducing itself as `hostname`, connecting as `tls` says.
    pub fn new(cms: &Cms, hostname: &str, tls: &NodeTls) -> Result<CmsLink, NodeTlsError> {
        let nodes = cms
            .nodes
            .iter()
            .map(|n| {
                Ok(NodeLink {
                    name: n.name.clone(),
                    addr: n.smtp,
                    tls: tls.for_node(n.smtp)?,
                    idle: Mutex::new(Vec::new()),
                })
            })
            .collect::<Result<_, NodeTlsError>>()?;
        Ok(CmsLink {
            name: cms.name.clone(),
            nodes,
            preferred: AtomicUsize::new(0),
            client_id: ClientId::Domain(hostname.to_string()),
        })
    }

    /// The CMS this link serves.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Delivers `body` from `sender` to `recipients` on the active node; one outcome per recipient,
    /// in order, and the node that took it (if any).
    pub async fn deliver(
        &self,
        sender: &str,
        recipients: &[String],
        body: &[u8],
    ) -> (Vec<Outcome>, Option<String>) {
        let first = self.preferred.load(Ordering::Relaxed) % self.nodes.len().max(1);
        let mut last_error = String::from("no node configured");
        for i in 0..self.nodes.len() {
            let idx = (first + i) % self.nodes.len();
            let node = &self.nodes[idx];
            match self.try_node(node, sender, recipients, body).await {
                Ok(outcomes) => {
                    self.preferred.store(idx, Ordering::Relaxed);
                    return (outcomes, Some(node.name.clone()));
                }
                Err(NodeFailure::Unavailable(e)) => {
                    debug!(node = %node.name, error = %e, "node unavailable, trying the other");
                    last_error = format!("{}: {e}", node.name);
                }
            }
        }
        let reason = format!(
            "no active node of {} took the message ({last_error})",
            self.name
        );
        (vec![Outcome::Transient(reason); recipients.len()], None)
    }

    async fn try_node(
        &self,
        node: &NodeLink,
        sender: &str,
        recipients: &[String],
        body: &[u8],
    ) -> Result<Vec<Outcome>, NodeFailure> {
        let mut conn = self.connection(node).await?;
        let result = transaction(&mut conn, sender, recipients, body).await;
        match &result {
            Ok(_) if !conn.has_broken() => self.release(node, conn),
            _ => conn.abort().await,
        }
        result
    }

    async fn connection(&self, node: &NodeLink) -> Result<AsyncSmtpConnection, NodeFailure> {
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
        let connect = async {
            let stream = tokio::net::TcpStream::connect(node.addr)
                .await
                .map_err(|e| e.to_string())?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            let mut conn =
                AsyncSmtpConnection::connect_with_transport(Box::new(stream), &self.client_id)
                    .await
                    .map_err(|e| e.to_string())?;
            node.tls.secure(&mut conn, &self.client_id).await?;
            Ok::<_, String>(conn)
        };
        match tokio::time::timeout(STEP_TIMEOUT, connect).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(NodeFailure::Unavailable(e)),
            Err(_) => Err(NodeFailure::Unavailable("connect timed out".into())),
        }
    }

    fn release(&self, node: &NodeLink, conn: AsyncSmtpConnection) {
        let mut idle = node.idle.lock().expect("pool lock poisoned");
        if idle.len() < MAX_IDLE_PER_NODE {
            idle.push(conn);
        }
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

/// Runs one transaction on an open connection.
async fn transaction(
    conn: &mut AsyncSmtpConnection,
    sender: &str,
    recipients: &[String],
    body: &[u8],
) -> Result<Vec<Outcome>, NodeFailure> {
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
                return Ok(vec![o; recipients.len()]);
            }
        }
    };
    let mut params = Vec::new();
    if body.iter().any(|b| *b >= 0x80) {
        params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    match step(conn.command(Mail::new(from, params))).await {
        Ok(_) => {}
        Err(Fail::Permanent(o)) => {
            reset(conn).await;
            return Ok(vec![o; recipients.len()]);
        }
        Err(Fail::Transient(e) | Fail::Broken(e)) => return Err(NodeFailure::Unavailable(e)),
    }
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
        return Ok(outcomes);
    }
    let data = async {
        step(conn.command(Data)).await?;
        step(conn.message(strip_final_crlf(body))).await
    };
    if let Err(fail) = data.await {
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
    Ok(outcomes)
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
    fn final_crlf_is_not_doubled() {
        assert_eq!(strip_final_crlf(b"a\r\nb\r\n"), b"a\r\nb");
        assert_eq!(strip_final_crlf(b"a\r\nb"), b"a\r\nb");
    }
}
