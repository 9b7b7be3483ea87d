//! The admin API over HTTPS (`admin_tls`), with the role's own reloadable certificate.
//!
//! axum's `serve` only takes a plain listener, so this is the same job done by hand: accept,
//! TLS handshake with the certificate current at that moment (a SIGHUP reload applies to the next
//! connection), then HTTP/1.1 by hyper. On shutdown the listener closes and every connection is
//! asked to finish its request in flight and close, as `with_graceful_shutdown` does.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::smtp::ServerTls;

/// How long a client gets to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connections get to finish after shutdown before they are dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves `app` over TLS on `listener` until `shutdown` resolves.
///
/// Accept errors (e.g. out of file descriptors) are logged and retried after a pause rather than
/// ending the listener; a failed handshake only ends that connection.
pub async fn serve_tls(
    listener: TcpListener,
    app: Router,
    tls: Arc<ServerTls>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let (acceptor, app, stopped) = (tls.acceptor(), app.clone(), stopped.clone());
                    connections.spawn(async move {
                        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => return debug!(%peer, error = %e, "admin TLS handshake failed"),
                            Err(_) => return debug!(%peer, "admin TLS handshake timed out"),
                        };
                        serve_connection(stream, app, stopped).await;
                    });
                }
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    stop.send_replace(true);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        connections.shutdown().await;
    }
    Ok(())
}

/// One HTTP/1.1 connection, closed gracefully when `stopped` turns true.
async fn serve_connection<S>(stream: S, app: Router, mut stopped: watch::Receiver<bool>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = async { let _ = stopped.wait_for(|&s| s).await; } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "admin connection ended with an error");
    }
}
