//! `serve` over real sockets on 127.0.0.1: connection cap, shutdown, drain.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{config, Client, TestBackend};
use crate::smtp::{serve, SmtpConfig};

struct Running {
    addr: std::net::SocketAddr,
    backend: Arc<TestBackend>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start(config: SmtpConfig) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("bound address");
    let backend = Arc::new(TestBackend::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async move {
        // A dropped sender also means stop.
        let _ = stopped.await;
    };
    let task = tokio::spawn(serve(listener, backend.clone(), config, shutdown));
    Running {
        addr,
        backend,
        stop,
        task,
    }
}

async fn connect(addr: std::net::SocketAddr) -> Client<TcpStream> {
    Client::new(
        TcpStream::connect(addr)
            .await
            .expect("connect to test server"),
    )
}

impl Running {
    /// Triggers shutdown and asserts `serve` returns `Ok` and the port stops accepting.
    async fn stop(self) {
        let _ = self.stop.send(());
        let result = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("serve did not return after shutdown")
            .expect("serve panicked");
        assert!(result.is_ok(), "serve returned {result:?}");
        assert!(
            TcpStream::connect(self.addr).await.is_err(),
            "still accepting after shutdown"
        );
    }
}

#[tokio::test]
async fn connection_over_the_cap_is_refused_and_the_first_goes_on() {
    let mut cfg = config();
    cfg.max_connections = 1;
    let server = start(cfg).await;

    let mut first = connect(server.addr).await;
    first.expect("220 mx.example.test ESMTP hubrelay").await;

    let mut second = connect(server.addr).await;
    second.expect("421 4.7.0").await;
    second.expect_eof().await;

    first
        .send("EHLO client.test\r\nMAIL FROM:<s@remote.test>\r\n")
        .await;
    first.expect("250-").await;
    first.expect("250 2.1.0").await;
    first.send("RCPT TO:<alice@example.test>\r\nDATA\r\n").await;
    first.expect("250 2.1.5").await;
    first.expect("354").await;
    first.send("Subject: s\r\n\r\nbody\r\n.\r\n").await;
    first.expect("250 2.0.0").await;
    assert_eq!(server.backend.delivered().len(), 1);

    server.stop().await;
    first.expect("421 4.3.2").await;
    first.expect_eof().await;
}

#[tokio::test]
async fn connections_over_the_per_client_cap_are_refused_until_one_closes() {
    let mut cfg = config();
    cfg.max_connections_per_client = 2;
    let server = start(cfg).await;

    let mut first = connect(server.addr).await;
    first.expect("220").await;
    let mut second = connect(server.addr).await;
    second.expect("220").await;

    let mut third = connect(server.addr).await;
    let refused = third.expect("421 4.7.0").await;
    assert!(refused.contains("from your address"), "{refused}");
    third.expect_eof().await;

    second.send("NOOP\r\n").await;
    second.expect("250 2.0.0").await;
    first.send("QUIT\r\n").await;
    first.expect("221").await;
    first.expect_eof().await;

    // The slot comes back when the session ends, which the server learns after the client
    // saw the close: retry until it has.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut fourth = loop {
        let mut client = connect(server.addr).await;
        let greeting = client.reply().await;
        if greeting.starts_with("220") {
            break client;
        }
        assert!(greeting.starts_with("421 4.7.0"), "{greeting}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed session's slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    fourth.send("QUIT\r\n").await;
    fourth.expect("221").await;
    server.stop().await;
}

#[tokio::test]
async fn serve_stops_on_shutdown() {
    let server = start(config()).await;
    let mut client = connect(server.addr).await;
    client.expect("220").await;
    client.send("QUIT\r\n").await;
    client.expect("221").await;
    client.expect_eof().await;
    server.stop().await;
}

#[tokio::test]
async fn shutdown_aborts_sessions_after_the_grace_period() {
    let mut cfg = config();
    cfg.shutdown_grace = Duration::from_millis(200);
    let server = start(cfg).await;
    let mut client = connect(server.addr).await;
    client.expect("220").await;
    client
        .send("EHLO c\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        .await;
    for prefix in ["250-", "250 2.1.0", "250 2.1.5", "354"] {
        client.expect(prefix).await;
    }
    client.send("Subject: stalled\r\n").await;
    let backend = server.backend.clone();
    server.stop().await;
    client.expect_eof().await;
    assert!(
        backend.delivered().is_empty(),
        "an unfinished message must not be delivered"
    );
}
