//! The session's connection, which STARTTLS turns from plain into encrypted mid-session.
//!
//! One type for both states keeps the session's reading, writing and timing code the same
//! before and after the upgrade, and keeps it generic over the transport (TCP in production,
//! `tokio::io::duplex` in tests).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A plain or TLS connection; `Closed` only after a failed handshake consumed the transport.
pub(crate) enum SessionStream<S> {
    /// Before STARTTLS (or without it).
    Plain(S),
    /// After a successful handshake; boxed, as the TLS state is large.
    Tls(Box<TlsStream<S>>),
    /// The transport went into a handshake that failed; reads and writes fail.
    Closed,
}

/// The negotiated parameters, for the log line after a handshake.
#[derive(Debug)]
pub(crate) struct Negotiated {
    /// e.g. `TLSv1_3`.
    pub version: String,
    /// e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// The client presented a certificate, which the listener's verifier accepted (a listener
    /// that does not ask for one never has this).
    pub client_certified: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> SessionStream<S> {
    /// Whether the connection is encrypted (for `Received: … with ESMTPS`).
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, SessionStream::Tls(_))
    }

    /// Runs the server side of a TLS handshake on the plain transport, bounded by `limit`.
    ///
    /// On failure the transport is dropped (the connection closes): after a 220 to STARTTLS
    /// there is no way back to plain text.
    pub(crate) async fn upgrade(
        &mut self,
        acceptor: TlsAcceptor,
        limit: Duration,
    ) -> io::Result<Negotiated> {
        let SessionStream::Plain(plain) = std::mem::replace(self, SessionStream::Closed) else {
            return Err(io::Error::other("the connection is not a plain one"));
        };
        let tls = tokio::time::timeout(limit, acceptor.accept(plain))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let (_, conn) = tls.get_ref();
        let negotiated = Negotiated {
            version: conn
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            cipher: conn
                .negotiated_cipher_suite()
                .map(|c| format!("{:?}", c.suite()))
                .unwrap_or_default(),
            client_certified: conn.peer_certificates().is_some_and(|c| !c.is_empty()),
        };
        *self = SessionStream::Tls(Box::new(tls));
        Ok(negotiated)
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for SessionStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SessionStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            SessionStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            SessionStream::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for SessionStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SessionStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            SessionStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            SessionStream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SessionStream::Plain(s) => Pin::new(s).poll_flush(cx),
            SessionStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            SessionStream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SessionStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            SessionStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            SessionStream::Closed => Poll::Ready(Ok(())),
        }
    }
}
