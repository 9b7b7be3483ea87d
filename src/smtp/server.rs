//! The accept loop: connection caps (overall and per client), one task per session, shutdown
//! and drain.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout};
use tracing::{error, info, warn};

use super::clients::ClientSlots;
use super::session::run_session;
use super::{Backend, Reply, SmtpConfig};

/// How long a refused connection gets to take its `421` before it is dropped.
const REFUSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause after repeated accept failures (e.g. out of file descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Runs the accept loop until `shutdown` resolves, then stops accepting and waits for
/// sessions to finish (each gets a 421 if idle / on its next command, bounded time).
///
/// Sessions still running after `config.shutdown_grace` (e.g. a client stalled in DATA) are
/// aborted; none of them has been given a 250 for the message in hand, so nothing
/// acknowledged is lost. Accept errors are logged and retried with a short back-off rather
/// than ending the server, so the only error returned is a listener unusable from the start.
pub async fn serve<B: Backend>(
    listener: TcpListener,
    backend: Arc<B>,
    config: SmtpConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    info!(%local, hostname = %config.hostname, "smtp listening");
    let config = Arc::new(config);
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let clients = ClientSlots::new(config.max_connections_per_client);
    let (stop, stopped) = watch::channel(false);
    let mut sessions = JoinSet::new();
    let mut backoff = Duration::ZERO;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::ZERO;
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        warn!(%peer, limit = config.max_connections, "connection refused: too many connections");
                        sessions.spawn(refuse(stream, "too many connections, try again later"));
                        continue;
                    };
                    let client = if config.is_limit_exempt(peer.ip()) {
                        None
                    } else if let Some(client) = clients.try_acquire(peer.ip()) {
                        Some(client)
                    } else {
                        warn!(%peer, limit = config.max_connections_per_client, "connection refused: too many connections from this address");
                        sessions.spawn(refuse(stream, "too many connections from your address, try again later"));
                        continue;
                    };
                    let (backend, config, stopped) = (backend.clone(), config.clone(), stopped.clone());
                    sessions.spawn(async move {
                        if let Err(e) = run_session(stream, peer, backend, config, stopped).await {
                            info!(%peer, error = %e, "session ended with an I/O error");
                        }
                        drop((permit, client));
                    });
                }
                Err(e) => {
                    backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                    warn!(error = %e, ?backoff, "accept failed");
                    sleep(backoff).await;
                }
            },
            Some(joined) = sessions.join_next(), if !sessions.is_empty() => report_panic(joined),
        }
    }
    drop(listener);
    stop.send_replace(true);
    info!(%local, sessions = sessions.len(), "smtp stopped accepting; draining sessions");
    let drain = async {
        while let Some(joined) = sessions.join_next().await {
            report_panic(joined);
        }
    };
    if timeout(config.shutdown_grace, drain).await.is_err() {
        warn!(%local, remaining = sessions.len(), "aborting sessions after the shutdown grace period");
        sessions.shutdown().await;
    }
    info!(%local, "smtp stopped");
    Ok(())
}

/// Tells a connection over a cap why it is being closed (RFC 5321 §3.8).
async fn refuse(mut stream: TcpStream, why: &'static str) {
    let mut out = Vec::new();
    Reply::new(421, "4.7.0", why).write_to(&mut out);
    // Best effort: the client is going away either way.
    let _ = timeout(REFUSE_WRITE_TIMEOUT, async {
        stream.write_all(&out).await?;
        stream.shutdown().await
    })
    .await;
}

/// A panicking session must not take the server down, but it must not go unnoticed either.
fn report_panic(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined {
        if e.is_panic() {
            error!(error = %e, "smtp session panicked");
        }
    }
}
