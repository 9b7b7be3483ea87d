//! Idle and data timeouts and shutdown of a single session, on paused tokio time where time
//! matters.

use std::time::Duration;

use tokio::time::{sleep, Instant};

use super::{config, Harness, TestBackend};

const IDLE: Duration = Duration::from_secs(300);
const DATA: Duration = Duration::from_secs(180);

/// A session whose client waits far longer than the idle timeout without failing the test.
async fn patient_session() -> Harness {
    let mut h = Harness::greeted(config(), TestBackend::default()).await;
    h.client.guard = Duration::from_secs(3600);
    h
}

fn assert_elapsed(start: Instant, expected: Duration) {
    let elapsed = start.elapsed();
    assert!(
        elapsed >= expected && elapsed < expected + Duration::from_secs(1),
        "closed after {elapsed:?}, expected {expected:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn silent_client_is_closed() {
    let start = Instant::now();
    let mut h = patient_session().await;
    h.client.expect("421 4.4.2").await;
    assert_elapsed(start, IDLE);
    h.client.expect_eof().await;
    h.finished().await;
}

#[tokio::test(start_paused = true)]
async fn partial_command_does_not_reset_the_timer() {
    let start = Instant::now();
    let mut h = patient_session().await;
    h.client.send("NO").await;
    sleep(Duration::from_secs(200)).await;
    h.client.send("OP").await;
    h.client.expect("421 4.4.2").await;
    assert_elapsed(start, IDLE);
}

#[tokio::test(start_paused = true)]
async fn complete_commands_keep_the_session() {
    let start = Instant::now();
    let mut h = patient_session().await;
    for _ in 0..3 {
        sleep(Duration::from_secs(200)).await;
        h.cmd("NOOP", "250 2.0.0").await;
    }
    h.client.expect("421 4.4.2").await;
    assert_elapsed(start, Duration::from_secs(600) + IDLE);
}

#[tokio::test(start_paused = true)]
async fn data_progress_keeps_the_session() {
    let mut h = patient_session().await;
    h.begin("sender@remote.test", &["alice@example.test"]).await;
    // Each pause is under the data timeout; together they are well over the idle timeout.
    for line in ["Subject: slow\r\n", "\r\n", "one\r\n", "two\r\n"] {
        sleep(Duration::from_secs(170)).await;
        h.client.send(line).await;
    }
    sleep(Duration::from_secs(170)).await;
    h.client.send(".\r\n").await;
    h.client.expect("250 2.0.0").await;
    let start = Instant::now();
    h.client.expect("421 4.4.2").await;
    assert_elapsed(start, IDLE);
    assert_eq!(h.backend.delivered().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn stalled_data_times_out_without_delivery() {
    let mut h = patient_session().await;
    h.begin("sender@remote.test", &["alice@example.test"]).await;
    h.client.send("Subject: never finished\r\n").await;
    let start = Instant::now();
    let reply = h.client.expect("421 4.4.2").await;
    assert!(reply.contains("receiving data"), "{reply}");
    assert_elapsed(start, DATA);
    assert!(h.backend.delivered().is_empty());
}

#[tokio::test(start_paused = true)]
async fn data_timeout_is_its_own_setting() {
    let mut cfg = config();
    cfg.data_timeout = Duration::from_secs(30);
    let mut h = Harness::greeted(cfg, TestBackend::default()).await;
    h.client.guard = Duration::from_secs(3600);
    h.begin("sender@remote.test", &["alice@example.test"]).await;
    let start = Instant::now();
    h.client.expect("421 4.4.2").await;
    assert_elapsed(start, Duration::from_secs(30));
    assert!(h.backend.delivered().is_empty());
}

#[tokio::test]
async fn shutdown_closes_an_idle_session() {
    let mut h = Harness::greeted(config(), TestBackend::default()).await;
    h.cmd("EHLO client.test", "250").await;
    h.stop.send_replace(true);
    h.client.expect("421 4.3.2").await;
    h.client.expect_eof().await;
    h.finished().await;
}

#[tokio::test]
async fn shutdown_lets_a_message_in_flight_finish() {
    let mut h = Harness::greeted(config(), TestBackend::default()).await;
    h.begin("sender@remote.test", &["alice@example.test"]).await;
    h.stop.send_replace(true);
    h.client
        .send("Subject: last one\r\n\r\n.\r\nNOOP\r\n")
        .await;
    h.client.expect("250 2.0.0 queued").await;
    h.client.expect("421 4.3.2").await;
    h.client.expect_eof().await;
    assert_eq!(h.backend.delivered().len(), 1);
    h.finished().await;
}
