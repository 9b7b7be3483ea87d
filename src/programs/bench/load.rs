//! The load generator of `hubrelay bench`: persistent SMTP sessions over lettre's async client,
//! spread over the hubs, in a closed loop (each session sends its next message as soon as the
//! last one is answered), so the rate measured is the site's saturated maximum.
//!
//! Each session holds one [`AsyncSmtpConnection`] for the whole run rather than going through
//! lettre's pooled transport: the pool checks every connection it hands out with a NOOP, one more
//! round trip per message that a client keeping its session open does not make, and that would be
//! counted in the accept latency.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lettre::address::{Address, Envelope};
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;
use tokio::task::JoinSet;

use crate::clock::now_ms;

/// The domain of the bench site's mailboxes (and of its Message-IDs).
pub const DOMAIN: &str = "bench.test";

/// The envelope sender: outside the site, so nothing is ever returned to it.
const SENDER: &str = "bench@client.test";

/// How long connecting, or one message's transaction, may take before the session gives up on it.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Client errors kept for the report (the first few tell the story; the count is kept apart).
const ERRORS_KEPT: usize = 5;

/// What to send: every message's recipients, Message-ID and bytes follow from it.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Messages in all.
    pub messages: usize,
    /// Body bytes of each message.
    pub size: usize,
    /// Concurrent sessions.
    pub concurrency: usize,
    /// Recipients per message.
    pub recipients: usize,
    /// Mailboxes of the site, alternately in SG1 and SG2; at least `recipients`.
    pub mailboxes: usize,
    /// Makes this run's Message-IDs unique.
    pub run: String,
}

impl Plan {
    /// A plan with 16 mailboxes (more if a message has more recipients), so that messages spread
    /// over both storage groups and several mailboxes, as on a real site.
    pub fn new(
        messages: usize,
        size: usize,
        concurrency: usize,
        recipients: usize,
        run: String,
    ) -> Plan {
        Plan {
            messages,
            size,
            concurrency,
            recipients,
            mailboxes: recipients.max(16),
            run,
        }
    }

    /// The address of mailbox `k`.
    pub fn mailbox(&self, k: usize) -> String {
        format!("box{k}@{DOMAIN}")
    }

    /// The storage group of mailbox `k`.
    pub fn storage_group(k: usize) -> &'static str {
        if k % 2 == 0 {
            "SG1"
        } else {
            "SG2"
        }
    }

    /// The mailboxes message `i` goes to: `recipients` consecutive ones from `i`, so each
    /// message has distinct recipients and every mailbox gets its share.
    pub fn mailboxes_of(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.recipients).map(move |j| (i + j) % self.mailboxes)
    }

    /// Message `i`'s Message-ID.
    pub fn message_id(&self, i: usize) -> String {
        format!("<{}.{i}@{DOMAIN}>", self.run)
    }

    /// Which message of this run a Message-ID names, if any.
    pub fn index_of(&self, message_id: &str) -> Option<usize> {
        message_id
            .strip_prefix('<')?
            .strip_prefix(self.run.as_str())?
            .strip_prefix('.')?
            .strip_suffix('>')?
            .strip_suffix(DOMAIN)?
            .strip_suffix('@')?
            .parse()
            .ok()
    }

    /// The `[[cms.storage_group]]` tables of the bench site: its mailboxes in SG1 and SG2.
    pub fn storage_groups_toml(&self) -> String {
        ["SG1", "SG2"]
            .iter()
            .map(|sg| {
                let boxes: Vec<String> = (0..self.mailboxes)
                    .filter(|&k| Plan::storage_group(k) == *sg)
                    .map(|k| format!("\"{}\"", self.mailbox(k)))
                    .collect();
                format!(
                    "[[cms.storage_group]]\nname = \"{sg}\"\nmailboxes = [{}]\n",
                    boxes.join(", ")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Message `i`: its envelope, and its header followed by `body`.
    fn message(&self, i: usize, body: &[u8]) -> Result<(Envelope, Vec<u8>), String> {
        let to: Vec<String> = self.mailboxes_of(i).map(|k| self.mailbox(k)).collect();
        let rcpts = to
            .iter()
            .map(|a| a.parse::<Address>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let from = SENDER.parse::<Address>().map_err(|e| e.to_string())?;
        let envelope = Envelope::new(Some(from), rcpts).map_err(|e| e.to_string())?;
        let header = format!(
            "From: {SENDER}\r\nTo: {}\r\nSubject: hubrelay bench {i}\r\nMessage-ID: {}\r\n\r\n",
            to.join(", "),
            self.message_id(i)
        );
        let mut bytes = Vec::with_capacity(header.len() + body.len());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(body);
        Ok((envelope, bytes))
    }
}

/// A body of exactly `size` bytes: lines of 76 letters and CRLF (the last one shorter), so it
/// passes any line-length limit and needs no normalising.
pub fn body(size: usize) -> Vec<u8> {
    const LINE: usize = 78;
    let mut out = Vec::with_capacity(size);
    let letters = |n: usize| (0..n).map(|i| b'a' + (i % 26) as u8);
    let full = size / LINE;
    let rest = size % LINE;
    for l in 0..full {
        // A remainder of one byte cannot be a line of its own: the last full line takes it.
        let extra = usize::from(rest == 1 && full > 0 && l == full - 1);
        out.extend(letters(LINE - 2 + extra));
        out.extend_from_slice(b"\r\n");
    }
    match rest {
        0 => {}
        1 if full > 0 => {}
        1 => out.push(b'a'),
        n => {
            out.extend(letters(n - 2));
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// One message a hub accepted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accepted {
    /// Its index in the plan.
    pub index: usize,
    /// When the client sent MAIL (ms since the epoch, the clock the nodes stamp records with).
    pub start_ms: u64,
    /// MAIL to the 250 after DATA, in milliseconds (to the µs).
    pub accept_ms: f64,
}

/// What the load generator saw.
#[derive(Debug)]
pub struct Outcome {
    /// When the sessions started connecting (ms since the epoch).
    pub first_connect_ms: u64,
    /// First connect to the last 250, if any message was accepted.
    pub accept_span: Option<Duration>,
    /// The accepted messages.
    pub accepted: Vec<Accepted>,
    /// Messages not accepted (refused, or the session failed).
    pub failed: usize,
    /// The first few client errors, with the hub they came from.
    pub errors: Vec<String>,
}

/// One session's share.
#[derive(Default)]
struct Session {
    accepted: Vec<Accepted>,
    last_accept: Option<Instant>,
    errors: Vec<String>,
}

impl Session {
    /// A message failed: keeps the error if it is one of the first.
    fn failed(&mut self, hub: SocketAddr, e: impl std::fmt::Display) {
        if self.errors.len() < ERRORS_KEPT {
            self.errors.push(format!("{hub}: {e}"));
        }
    }
}

/// Sends the plan through `hubs` (sessions assigned round-robin), counting each accepted message
/// in `accepted` as it happens, for the progress display.
pub async fn run(plan: Arc<Plan>, hubs: &[SocketAddr], accepted: Arc<AtomicUsize>) -> Outcome {
    let next = Arc::new(AtomicUsize::new(0));
    let body: Arc<[u8]> = body(plan.size).into();
    let first_connect_ms = now_ms();
    let started = Instant::now();
    let mut sessions = JoinSet::new();
    for s in 0..plan.concurrency.min(plan.messages) {
        sessions.spawn(session(
            Arc::clone(&plan),
            hubs[s % hubs.len()],
            Arc::clone(&body),
            Arc::clone(&next),
            Arc::clone(&accepted),
        ));
    }
    let mut outcome = Outcome {
        first_connect_ms,
        accept_span: None,
        accepted: Vec::with_capacity(plan.messages),
        failed: 0,
        errors: Vec::new(),
    };
    let mut last_accept: Option<Instant> = None;
    while let Some(done) = sessions.join_next().await {
        let s = match done {
            Ok(s) => s,
            Err(e) => {
                outcome
                    .errors
                    .push(format!("a session ended abnormally: {e}"));
                continue;
            }
        };
        outcome.accepted.extend(s.accepted);
        let room = ERRORS_KEPT.saturating_sub(outcome.errors.len());
        outcome.errors.extend(s.errors.into_iter().take(room));
        last_accept = last_accept.max(s.last_accept);
    }
    // Whatever was not accepted failed (also the share of a session that panicked).
    outcome.failed = plan.messages - outcome.accepted.len();
    outcome.accept_span = last_accept.map(|t| t - started);
    outcome
}

/// One persistent session: takes the next message of the plan until none is left; after an
/// error (which closes the connection) it connects again for the next message.
async fn session(
    plan: Arc<Plan>,
    hub: SocketAddr,
    body: Arc<[u8]>,
    next: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
) -> Session {
    let client_id = ClientId::Domain("bench.client.test".into());
    let mut s = Session::default();
    let mut conn: Option<AsyncSmtpConnection> = None;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= plan.messages {
            break;
        }
        let (envelope, bytes) = match plan.message(i, &body) {
            Ok(m) => m,
            Err(e) => {
                s.failed(hub, e);
                continue;
            }
        };
        let c = match &mut conn {
            Some(c) => c,
            None => match connect(hub, &client_id).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    s.failed(hub, e);
                    continue;
                }
            },
        };
        let start_ms = now_ms();
        let start = Instant::now();
        match tokio::time::timeout(TIMEOUT, c.send(&envelope, &bytes)).await {
            Ok(Ok(_)) => {
                let now = Instant::now();
                s.accepted.push(Accepted {
                    index: i,
                    start_ms,
                    accept_ms: (now - start).as_micros() as f64 / 1000.0,
                });
                s.last_accept = Some(now);
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            // lettre closes the connection after any error.
            Ok(Err(e)) => {
                s.failed(hub, e);
                conn = None;
            }
            Err(_) => {
                s.failed(hub, "no answer within 60 s");
                conn = None;
            }
        }
    }
    if let Some(mut c) = conn {
        let _ = c.quit().await;
    }
    s
}

/// A session to `hub`, on a socket of our own for TCP_NODELAY: lettre writes a message and its
/// final dot separately, and with Nagle the dot would wait for the hub's delayed ACK (40 ms),
/// which the accept latency would then measure (the hubs deliver to the nodes the same way).
async fn connect(hub: SocketAddr, client_id: &ClientId) -> Result<AsyncSmtpConnection, String> {
    let connect = async {
        let stream = tokio::net::TcpStream::connect(hub)
            .await
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        AsyncSmtpConnection::connect_with_transport(Box::new(stream), client_id)
            .await
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(TIMEOUT, connect)
        .await
        .unwrap_or_else(|_| Err("connect timed out".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(recipients: usize) -> Plan {
        Plan::new(100, 4096, 4, recipients, "run7".into())
    }

    #[test]
    fn bodies_have_exactly_the_size_asked_for_in_short_crlf_lines() {
        for size in [0, 1, 2, 3, 77, 78, 79, 80, 156, 157, 4096, 65_536] {
            let b = body(size);
            assert_eq!(b.len(), size, "size {size}");
            let text = String::from_utf8(b).expect("ASCII");
            assert!(
                text.split("\r\n")
                    .all(|l| l.len() <= 77 && !l.contains(['\r', '\n'])),
                "size {size}: {text:?}"
            );
            if size >= 2 {
                assert!(text.ends_with("\r\n"), "size {size}");
            }
        }
    }

    #[test]
    fn message_ids_name_their_message_and_no_other_run() {
        let p = plan(1);
        assert_eq!(p.message_id(42), "<run7.42@bench.test>");
        assert_eq!(p.index_of(&p.message_id(42)), Some(42));
        assert_eq!(p.index_of("<run8.42@bench.test>"), None);
        assert_eq!(p.index_of("<run7.x@bench.test>"), None);
        assert_eq!(p.index_of("<run7.42@other.test>"), None);
    }

    #[test]
    fn recipients_are_distinct_and_spread_over_both_storage_groups() {
        let p = plan(3);
        let boxes: Vec<usize> = p.mailboxes_of(15).collect();
        assert_eq!(boxes, vec![15, 0, 1]);
        let p = plan(40);
        assert_eq!(p.mailboxes, 40);
        let mut boxes: Vec<usize> = p.mailboxes_of(7).collect();
        boxes.sort_unstable();
        boxes.dedup();
        assert_eq!(boxes.len(), 40);
        let toml = plan(1).storage_groups_toml();
        assert!(
            toml.contains("name = \"SG1\"\nmailboxes = [\"box0@bench.test\", \"box2@bench.test\"")
        );
        assert!(toml.contains("name = \"SG2\"\nmailboxes = [\"box1@bench.test\""));
    }

    #[test]
    fn a_message_has_its_recipients_in_envelope_and_header() {
        let p = plan(2);
        let (envelope, bytes) = p.message(3, b"hello\r\n").expect("message");
        let to: Vec<String> = envelope.to().iter().map(|a| a.to_string()).collect();
        assert_eq!(to, ["box3@bench.test", "box4@bench.test"]);
        let text = String::from_utf8(bytes).expect("ASCII");
        assert!(
            text.contains("To: box3@bench.test, box4@bench.test\r\n"),
            "{text}"
        );
        assert!(
            text.contains("Message-ID: <run7.3@bench.test>\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\nhello\r\n"), "{text}");
    }
}
