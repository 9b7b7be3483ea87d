//! Session and server tests: a recording backend, a line-oriented client and a harness that
//! runs one session over `tokio::io::duplex`.

mod auth;
mod chunking;
mod dialog;
mod dsn;
mod limits;
mod props;
mod server;
mod tls;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, DuplexStream,
    ReadBuf,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::session::run_session;
use super::{Backend, Incoming, Reply, SmtpConfig};

/// The hostname every test server uses.
const HOST: &str = "mx.example.test";

/// A config with the production defaults and a 10 000-byte size limit.
fn config() -> SmtpConfig {
    SmtpConfig::new(HOST, 10_000)
}

/// Records what it is given. Policy: `unknown@example.test` is no mailbox (5.1.1), other
/// domains than `example.test` are relaying (5.7.1), a `tempfail@` recipient makes delivery
/// fail with 451, and a passive backend refuses every MAIL like a passive mailbox node. A
/// `dsn` backend offers DSN like the hub; the default does not, like a mailbox node.
#[derive(Default)]
struct TestBackend {
    passive: bool,
    dsn: bool,
    delivered: Mutex<Vec<Incoming>>,
    /// Reasons of AUTH refusals, in order.
    refused: Mutex<Vec<&'static str>>,
}

impl TestBackend {
    fn delivered(&self) -> Vec<Incoming> {
        self.delivered
            .lock()
            .expect("no test thread panics holding the lock")
            .clone()
    }
}

impl Backend for TestBackend {
    fn check_mail(&self, _sender: &str) -> Result<(), Reply> {
        if self.passive {
            return Err(Reply::new(451, "4.3.2", "passive node, try the other node"));
        }
        Ok(())
    }

    fn check_rcpt(&self, rcpt: &str) -> Result<(), Reply> {
        match rcpt.split_once('@') {
            Some((_, "example.test")) if rcpt.starts_with("unknown@") => {
                Err(Reply::new(550, "5.1.1", "no such mailbox"))
            }
            Some((_, "example.test")) => Ok(()),
            _ => Err(Reply::new(550, "5.7.1", "relaying denied")),
        }
    }

    fn deliver(&self, msg: Incoming) -> impl std::future::Future<Output = Reply> + Send {
        let reply = if msg.recipients.iter().any(|r| r.starts_with("tempfail@")) {
            Reply::new(451, "4.3.0", "store unavailable")
        } else {
            let reply = Reply::new(250, "2.0.0", format!("queued as {}", msg.message_id));
            self.delivered
                .lock()
                .expect("no test thread panics holding the lock")
                .push(msg);
            reply
        };
        async move { reply }
    }

    fn offers_dsn(&self) -> bool {
        self.dsn
    }

    fn auth_refused(&self, reason: &'static str) {
        self.refused
            .lock()
            .expect("no test thread panics holding the lock")
            .push(reason);
    }
}

/// Reads whole replies and sends raw bytes; every wait is bounded by `guard` so a broken
/// server fails the test instead of hanging it.
struct Client<S> {
    stream: BufReader<S>,
    guard: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    fn new(stream: S) -> Self {
        Client {
            stream: BufReader::new(stream),
            guard: Duration::from_secs(10),
        }
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        let write = self.stream.get_mut().write_all(bytes.as_ref());
        tokio::time::timeout(self.guard, write)
            .await
            .expect("server stopped reading")
            .expect("write to server");
    }

    /// The next complete reply, all its lines, CRLFs included.
    async fn reply(&mut self) -> String {
        let mut reply = Vec::new();
        loop {
            let start = reply.len();
            let read = self.stream.read_until(b'\n', &mut reply);
            let n = tokio::time::timeout(self.guard, read)
                .await
                .expect("no reply from server")
                .expect("read from server");
            let line = &reply[start..];
            assert!(
                n > 0 && line.ends_with(b"\r\n"),
                "connection closed mid-reply: {reply:?}"
            );
            assert!(line.len() >= 5, "malformed reply line {line:?}");
            if line[3] == b' ' {
                return String::from_utf8(reply).expect("replies are UTF-8");
            }
            assert_eq!(line[3], b'-', "malformed reply line {line:?}");
        }
    }

    async fn expect(&mut self, prefix: &str) -> String {
        let reply = self.reply().await;
        assert!(
            reply.starts_with(prefix),
            "expected {prefix:?}, got {reply:?}"
        );
        reply
    }

    /// Asserts the server closed the connection without sending anything more.
    async fn expect_eof(&mut self) {
        let mut rest = Vec::new();
        let read = self.stream.read_to_end(&mut rest);
        tokio::time::timeout(self.guard, read)
            .await
            .expect("server did not close the connection")
            .expect("read to end");
        assert!(
            rest.is_empty(),
            "unexpected bytes before close: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
}

/// Counts writes, so tests can see that pipelined replies go out together.
struct Counted<S> {
    inner: S,
    writes: Arc<AtomicUsize>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(_)) = polled {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One session over a duplex pipe, with the client end and the handles to observe it.
struct Harness {
    client: Client<DuplexStream>,
    backend: Arc<TestBackend>,
    /// Server-side writes so far.
    writes: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    task: JoinHandle<io::Result<()>>,
}

impl Harness {
    fn start(config: SmtpConfig, backend: TestBackend) -> Harness {
        let (client, server) = tokio::io::duplex(256 * 1024);
        let backend = Arc::new(backend);
        let writes = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = watch::channel(false);
        let peer: SocketAddr = "127.0.0.1:40000".parse().expect("literal socket address");
        let server = Counted {
            inner: server,
            writes: writes.clone(),
        };
        let task = tokio::spawn(run_session(
            server,
            peer,
            backend.clone(),
            Arc::new(config),
            stopped,
        ));
        Harness {
            client: Client::new(client),
            backend,
            writes,
            stop,
            task,
        }
    }

    /// Starts a session and reads its greeting.
    async fn greeted(config: SmtpConfig, backend: TestBackend) -> Harness {
        let mut h = Harness::start(config, backend);
        let greeting = h.client.reply().await;
        assert_eq!(greeting, format!("220 {HOST} ESMTP hubrelay\r\n"));
        h
    }

    /// Sends `line` and asserts the reply starts with `prefix`.
    async fn cmd(&mut self, line: &str, prefix: &str) -> String {
        self.client.send(format!("{line}\r\n")).await;
        self.client.expect(prefix).await
    }

    /// EHLO, then MAIL/RCPT/DATA for `rcpts`, leaving the session waiting for the message.
    async fn begin(&mut self, sender: &str, rcpts: &[&str]) {
        self.cmd("EHLO client.test", "250-").await;
        self.cmd(&format!("MAIL FROM:<{sender}>"), "250 2.1.0")
            .await;
        for rcpt in rcpts {
            self.cmd(&format!("RCPT TO:<{rcpt}>"), "250 2.1.5").await;
        }
        self.cmd("DATA", "354").await;
    }

    /// Asserts the session ends cleanly.
    async fn finished(self) {
        let result = tokio::time::timeout(self.client.guard, self.task)
            .await
            .expect("session did not end")
            .expect("session task panicked");
        assert!(result.is_ok(), "session ended with {result:?}");
    }
}
