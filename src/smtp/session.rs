//! One SMTP connection: framing, pipelined replies, timeouts and delivery.
//!
//! Generic over the stream so tests drive it through `tokio::io::duplex` and the server
//! through TCP. Replies are queued and written when the input holds no further complete
//! command (RFC 2920 pipelining), and always before the session waits for the client — so
//! the 354 the client must wait for (RFC 2920 §3.1) is out before the message is awaited.
//! STARTTLS upgrades the connection in place ([`SessionStream`]) and starts the protocol over.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{timeout, timeout_at, Instant};
use tracing::{debug, info, warn, Instrument};

use super::command::{Chunk, Commands, Envelope, Next};
use super::data::DataReceiver;
use super::stamp::{stamp, Trace};
use super::stream::SessionStream;
use super::{Backend, Incoming, Reply, SmtpConfig};

/// How much to ask the stream for per read; also bounds the input buffer during DATA.
const READ_CHUNK: usize = 8 * 1024;

/// Runs one session to its end, inside a tracing span naming the peer and a session id.
///
/// `shutdown` turning `true` makes the session answer `421 4.3.2` as soon as it waits for a
/// command (a message being received is finished first). Errors are I/O errors of the
/// stream; protocol problems are answered, not returned.
pub(crate) async fn run_session<S, B>(
    stream: S,
    peer: SocketAddr,
    backend: Arc<B>,
    config: Arc<SmtpConfig>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    B: Backend,
{
    let id = format!("{:016x}", rand::random::<u64>());
    let span = tracing::info_span!("smtp", %peer, session = %id);
    let session = Session {
        deadline: Instant::now() + config.idle_timeout,
        stream: SessionStream::Plain(stream),
        backend,
        config,
        peer,
        id,
        shutdown,
        input: Vec::new(),
        output: Vec::new(),
        discarding: false,
        phase: Phase::Command,
        commands: Commands::default(),
        chunked: None,
        messages: 0,
    };
    session.run().instrument(span).await
}

/// What the bytes in the input buffer are.
enum Phase {
    /// Command lines.
    Command,
    /// A message for `envelope`, until its terminator.
    Data {
        receiver: DataReceiver,
        envelope: Envelope,
    },
    /// A BDAT chunk with `left` bytes still to come, then `after` to answer (see [`Next::Chunk`]).
    Chunk {
        chunk: Chunk,
        left: u64,
        after: Reply,
    },
}

/// Whether the session goes on after its buffered input has been handled.
enum Flow {
    Continue,
    Close,
    /// STARTTLS was accepted: upgrade before reading anything else.
    StartTls,
}

/// What waiting for the client produced.
enum Event {
    Bytes,
    Eof,
    Idle,
    Shutdown,
}

/// A complete command line, or the fact that one was too long (its bytes discarded).
enum Line {
    Command(Vec<u8>),
    TooLong,
}

/// The state of one connection; consumed by [`Session::run`].
struct Session<S, B> {
    stream: SessionStream<S>,
    backend: Arc<B>,
    config: Arc<SmtpConfig>,
    peer: SocketAddr,
    /// Names the session in logs and prefixes the ids of its messages.
    id: String,
    shutdown: watch::Receiver<bool>,
    /// Received, not yet handled: at most a partial command line, or one read during DATA.
    input: Vec<u8>,
    /// Replies not yet written.
    output: Vec<u8>,
    /// Dropping the rest of an over-long command line; it is answered once its LF arrives.
    discarding: bool,
    /// When the client has been silent too long: moved on by `idle_timeout` with each
    /// complete command line, and by `data_timeout` with any bytes during DATA.
    deadline: Instant,
    phase: Phase,
    commands: Commands,
    /// The message of a BDAT transaction, across its chunks.
    chunked: Option<DataReceiver>,
    /// Messages received so far, for their ids.
    messages: u64,
}

impl<S, B> Session<S, B>
where
    S: AsyncRead + AsyncWrite + Unpin,
    B: Backend,
{
    async fn run(mut self) -> io::Result<()> {
        debug!("connected");
        self.queue(&Reply::new(
            220,
            "",
            format!("{} ESMTP hubrelay", self.config.hostname),
        ));
        loop {
            match self.process_input().await? {
                Flow::Continue => {}
                Flow::Close => return self.flush().await,
                Flow::StartTls => {
                    if !self.start_tls().await? {
                        return Ok(());
                    }
                }
            }
            self.flush().await?;
            if matches!(self.phase, Phase::Command) && *self.shutdown.borrow() {
                return self.close(shutting_down()).await;
            }
            match self.read().await? {
                Event::Bytes => {}
                Event::Eof => {
                    debug!(
                        in_data = !matches!(self.phase, Phase::Command),
                        "client closed"
                    );
                    return Ok(());
                }
                Event::Idle if !matches!(self.phase, Phase::Command) => {
                    info!("data timeout");
                    return self
                        .close(Reply::new(
                            421,
                            "4.4.2",
                            "timeout receiving data, closing connection",
                        ))
                        .await;
                }
                Event::Idle => {
                    info!("idle timeout");
                    return self
                        .close(Reply::new(421, "4.4.2", "idle timeout, closing connection"))
                        .await;
                }
                Event::Shutdown => return self.close(shutting_down()).await,
            }
        }
    }

    /// Handles everything complete in the input buffer.
    async fn process_input(&mut self) -> io::Result<Flow> {
        loop {
            if let Phase::Chunk { chunk, left, .. } = &mut self.phase {
                let n = self
                    .input
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                if chunk.take {
                    if let Some(receiver) = &mut self.chunked {
                        receiver.feed(&self.input[..n]);
                    }
                }
                self.input.drain(..n);
                *left -= n as u64;
                if *left > 0 {
                    return Ok(Flow::Continue);
                }
                if let Phase::Chunk { chunk, after, .. } =
                    std::mem::replace(&mut self.phase, Phase::Command)
                {
                    let reply = self.chunk_read(chunk, after).await;
                    self.queue(&reply);
                    self.deadline = Instant::now() + self.config.idle_timeout;
                }
                continue;
            }
            if let Phase::Data { receiver, .. } = &mut self.phase {
                let Some(consumed) = receiver.feed(&self.input) else {
                    self.input.clear();
                    return Ok(Flow::Continue);
                };
                self.input.drain(..consumed);
                if let Phase::Data { receiver, envelope } =
                    std::mem::replace(&mut self.phase, Phase::Command)
                {
                    let reply = self.finish_message(receiver, envelope).await;
                    self.queue(&reply);
                    self.deadline = Instant::now() + self.config.idle_timeout;
                }
                continue;
            }
            let Some(line) = self.next_line() else {
                return Ok(Flow::Continue);
            };
            self.deadline = Instant::now() + self.config.idle_timeout;
            if *self.shutdown.borrow() {
                self.queue(&shutting_down());
                return Ok(Flow::Close);
            }
            let step = match line {
                Line::Command(line) => self.commands.handle(&line, &*self.backend, &self.config),
                Line::TooLong => self.commands.line_too_long(&self.config),
            };
            if !matches!(step.next, Next::Chunk(_)) {
                self.queue(&step.reply);
            }
            if !self.commands.in_bdat() {
                // RSET, or a transaction refused on its way: its chunks so far are dropped.
                self.chunked = None;
            }
            match step.next {
                Next::Chunk(chunk) => {
                    if chunk.take && self.chunked.is_none() {
                        self.chunked = Some(DataReceiver::chunked(
                            self.config.max_message_size,
                            self.config.max_data_line_length,
                            self.config.bare_newline,
                        ));
                    }
                    self.phase = Phase::Chunk {
                        chunk,
                        left: chunk.size,
                        after: step.reply,
                    };
                    self.deadline = Instant::now() + self.config.data_timeout;
                }
                Next::Command => {}
                Next::Data(envelope) => {
                    let receiver = DataReceiver::new(
                        self.config.max_message_size,
                        self.config.max_data_line_length,
                        self.config.bare_newline,
                    );
                    self.phase = Phase::Data { receiver, envelope };
                    self.deadline = Instant::now() + self.config.data_timeout;
                }
                Next::Close => return Ok(Flow::Close),
                Next::StartTls => return Ok(Flow::StartTls),
            }
        }
    }

    /// Takes the next complete command line out of the input, bounding memory: a line that
    /// reaches `max_line_length` without an LF is dropped as it arrives.
    fn next_line(&mut self) -> Option<Line> {
        let lf = self.input.iter().position(|&b| b == b'\n');
        match lf {
            Some(end) if self.discarding => {
                self.input.drain(..=end);
                self.discarding = false;
                Some(Line::TooLong)
            }
            Some(end) if end + 1 > self.config.max_line_length => {
                self.input.drain(..=end);
                Some(Line::TooLong)
            }
            Some(end) => Some(Line::Command(self.input.drain(..=end).collect())),
            None => {
                if self.discarding || self.input.len() >= self.config.max_line_length {
                    self.discarding = true;
                    self.input.clear();
                }
                None
            }
        }
    }

    /// Sends the 220 and runs the handshake; false if the connection is to be closed.
    ///
    /// Whatever the client pipelined behind STARTTLS came in clear text, where a man in the
    /// middle could have put it (CVE-2011-0411), so it is dropped, never run as if encrypted.
    async fn start_tls(&mut self) -> io::Result<bool> {
        self.flush().await?;
        if !self.input.is_empty() || self.discarding {
            info!(
                bytes = self.input.len(),
                "discarding input pipelined after STARTTLS"
            );
        }
        self.input.clear();
        self.discarding = false;
        let Some(tls) = &self.config.tls else {
            return Err(io::Error::other("STARTTLS accepted without a certificate"));
        };
        match self
            .stream
            .upgrade(tls.acceptor(), self.config.idle_timeout)
            .await
        {
            Ok(negotiated) => {
                info!(
                    version = %negotiated.version,
                    cipher = %negotiated.cipher,
                    client_certificate = negotiated.client_certified,
                    "TLS established"
                );
                self.commands = Commands::encrypted(negotiated.client_certified);
                self.deadline = Instant::now() + self.config.idle_timeout;
                Ok(true)
            }
            Err(error) => {
                warn!(%error, "TLS handshake failed; closing the connection");
                if tls.verifies_clients() && refused_certificate(&error) {
                    self.backend.auth_refused("certificate");
                }
                Ok(false)
            }
        }
    }

    /// A BDAT chunk has been read: the reply to it, which for the last chunk of a message is the
    /// reply to the message. A message already over `max_message_size` is refused at the chunk
    /// that crossed it, and its transaction ends (what follows of it is refused and dropped).
    async fn chunk_read(&mut self, chunk: Chunk, after: Reply) -> Reply {
        if !chunk.take {
            return after;
        }
        let too_large = self.chunked.as_ref().is_some_and(DataReceiver::too_large);
        if !chunk.last && !too_large {
            return after;
        }
        let envelope = self.commands.end_bdat();
        let receiver = self.chunked.take();
        match (envelope, receiver) {
            (Some(envelope), Some(receiver)) => self.finish_message(receiver, envelope).await,
            _ => Reply::new(503, "5.5.1", "no BDAT transaction under way"),
        }
    }

    /// Stamps a received message and hands it to the backend; the reply goes to the client.
    async fn finish_message(&mut self, receiver: DataReceiver, envelope: Envelope) -> Reply {
        self.messages += 1;
        let id = format!("{}.{}", self.id, self.messages);
        let body = match receiver.finish() {
            Ok(body) => body,
            Err(error) => {
                info!(id, %error, "message refused");
                return error.reply();
            }
        };
        let stamped = stamp(
            body,
            &Trace {
                helo: &envelope.helo.name,
                esmtp: envelope.helo.esmtp,
                tls: self.stream.is_tls(),
                peer: self.peer.ip(),
                hostname: &self.config.hostname,
                id: &id,
                recipients: &envelope.recipients,
                date: chrono::Utc::now(),
            },
        );
        let message_id = stamped.message_id.clone();
        let size = stamped.data.len();
        let recipients = envelope.recipients.len();
        let incoming = Incoming {
            sender: envelope.sender,
            recipients: envelope.recipients,
            message_id: stamped.message_id,
            data: stamped.data,
            peer: self.peer,
            dsn: envelope.dsn,
        };
        let reply = self.backend.deliver(incoming).await;
        info!(id, message_id, size, recipients, %reply, "message received");
        reply
    }

    /// Waits for bytes, the idle deadline, or (between commands) shutdown.
    async fn read(&mut self) -> io::Result<Event> {
        self.input.reserve(READ_CHUNK);
        let between_commands = matches!(self.phase, Phase::Command);
        let event = tokio::select! {
            read = timeout_at(self.deadline, self.stream.read_buf(&mut self.input)) => match read {
                Err(_) => Event::Idle,
                Ok(Ok(0)) => Event::Eof,
                Ok(Ok(_)) => Event::Bytes,
                Ok(Err(e)) => return Err(e),
            },
            () = shutdown_signalled(&mut self.shutdown), if between_commands => Event::Shutdown,
        };
        if matches!(event, Event::Bytes) && !between_commands {
            self.deadline = Instant::now() + self.config.data_timeout;
        }
        Ok(event)
    }

    fn queue(&mut self, reply: &Reply) {
        reply.write_to(&mut self.output);
    }

    /// Writes the queued replies. A client that does not read them for `idle_timeout`
    /// would otherwise hold the session (and a connection slot) forever.
    async fn flush(&mut self) -> io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        let limit = self.config.idle_timeout;
        timeout(limit, self.stream.write_all(&self.output))
            .await
            .map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, "client is not reading replies")
            })??;
        self.output.clear();
        self.stream.flush().await
    }

    /// Sends a last reply and ends the session.
    async fn close(&mut self, reply: Reply) -> io::Result<()> {
        self.queue(&reply);
        self.flush().await
    }
}

/// Whether a failed handshake was the client's certificate (none, or not from the site's CA)
/// rather than the network or the protocol.
fn refused_certificate(error: &io::Error) -> bool {
    matches!(
        error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_))
    )
}

fn shutting_down() -> Reply {
    Reply::new(421, "4.3.2", "shutting down, try again later")
}

/// Resolves once shutdown is requested; never, if the sender is gone without requesting it.
async fn shutdown_signalled(shutdown: &mut watch::Receiver<bool>) {
    let requested = shutdown.wait_for(|&stop| stop).await.is_ok();
    if !requested {
        std::future::pending::<()>().await;
    }
}
