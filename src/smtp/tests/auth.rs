//! AUTH CRAM-SHA256 on a listener that requires it (a mailbox node): advertised after EHLO, MAIL
//! refused until a hub has answered its challenge, every malformed or wrong exchange refused and
//! the session still working; and nothing of it on a listener without `auth` (a hub).

use super::{config, Harness, TestBackend};
use crate::smtp::{DeliveryAuth, DeliverySecret, SmtpConfig};

fn secret() -> DeliverySecret {
    DeliverySecret::new(DeliverySecret::derive("site token"))
}

fn node_config(secret: &DeliverySecret) -> SmtpConfig {
    let mut c = config();
    c.auth = Some(DeliveryAuth {
        secret: secret.clone(),
        users: vec!["hub1".into(), "hub2".into()],
    });
    c
}

/// The challenge of a `334` reply.
fn challenge(reply: &str) -> String {
    reply
        .strip_prefix("334 ")
        .expect("a 334 reply")
        .trim_end()
        .to_string()
}

#[tokio::test]
async fn a_hub_with_the_site_secret_gets_in_and_nothing_else_does() {
    let site = secret();
    let mut h = Harness::greeted(node_config(&site), TestBackend::default()).await;
    h.cmd("AUTH CRAM-SHA256", "503 5.5.1").await;
    let ehlo = h.cmd("EHLO hub1.test", "250-").await;
    assert!(ehlo.contains("AUTH CRAM-SHA256"), "{ehlo}");
    h.cmd("MAIL FROM:<a@remote.test>", "530 5.7.0").await;
    assert_eq!(h.backend.refused.lock().expect("lock").clone(), ["missing"]);
    h.cmd("AUTH PLAIN", "504 5.5.4").await;
    h.cmd("AUTH CRAM-SHA256 aW5pdGlhbA==", "501 5.5.2").await;
    let c = challenge(&h.cmd("AUTH CRAM-SHA256", "334 ").await);
    h.cmd("*", "501 5.7.0").await;
    // A wrong secret, an unknown user, garbage: 535 each time, and MAIL still refused.
    let c2 = challenge(&h.cmd("AUTH CRAM-SHA256", "334 ").await);
    let other = DeliverySecret::new(DeliverySecret::derive("another site"));
    h.cmd(&other.respond("hub1", &c2).expect("respond"), "535 5.7.8")
        .await;
    let c3 = challenge(&h.cmd("AUTH CRAM-SHA256", "334 ").await);
    h.cmd(&site.respond("mallory", &c3).expect("respond"), "535 5.7.8")
        .await;
    let c4 = challenge(&h.cmd("AUTH CRAM-SHA256", "334 ").await);
    h.cmd("not base64 at all", "535 5.7.8").await;
    // An answer to an earlier challenge is worth nothing now.
    let c5 = challenge(&h.cmd("AUTH CRAM-SHA256", "334 ").await);
    h.cmd(&site.respond("hub1", &c).expect("respond"), "535 5.7.8")
        .await;
    assert_ne!(c4, c5, "every challenge is new");
    h.cmd("MAIL FROM:<a@remote.test>", "530 5.7.0").await;
    assert!(h.backend.delivered().is_empty());
    // The real answer to the current challenge.
    let c6 = challenge(&h.cmd("AUTH CRAM-SHA256", "334 ").await);
    h.cmd(&site.respond("hub1", &c6).expect("respond"), "235 2.7.0")
        .await;
    h.cmd("AUTH CRAM-SHA256", "503 5.5.1").await;
    h.cmd("MAIL FROM:<a@remote.test>", "250 2.1.0").await;
    h.cmd("RCPT TO:<alice@example.test>", "250 2.1.5").await;
    h.cmd("DATA", "354").await;
    h.client.send("Subject: in\r\n\r\nhello\r\n.\r\n").await;
    h.client.expect("250 2.0.0").await;
    assert_eq!(h.backend.delivered().len(), 1);
    assert_eq!(
        h.backend.refused.lock().expect("lock").clone(),
        ["missing", "invalid", "invalid", "invalid", "invalid", "missing"]
    );
    h.cmd("QUIT", "221").await;
    h.finished().await;
}

#[tokio::test]
async fn a_listener_without_auth_neither_offers_nor_asks_for_it() {
    let mut h = Harness::greeted(config(), TestBackend::default()).await;
    let ehlo = h.cmd("EHLO client.test", "250-").await;
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    h.cmd("AUTH CRAM-SHA256", "502 5.5.1").await;
    h.cmd("MAIL FROM:<a@remote.test>", "250 2.1.0").await;
    h.cmd("QUIT", "221").await;
    h.finished().await;
}
