//! Who may deliver to a mailbox node: the site's hubs, proven by SMTP AUTH with the site's
//! delivery secret.
//!
//! The mechanism is CRAM-SHA256: CRAM-MD5's exchange (RFC 2195) with HMAC-SHA-256. The node sends
//! a challenge that is new for every session (`334 base64(<random.time@host>)`); the hub answers
//! `base64("hub1 " + hex(HMAC-SHA-256(secret, challenge)))`. The secret never crosses the wire and
//! an answer is worth nothing in another session. PLAIN and LOGIN, which lettre offers, send the
//! secret itself; SCRAM would add a round trip and salted storage that a secret shared by the
//! site's own roles does not need. ring (already the TLS provider) computes and checks the HMAC in
//! constant time.
//!
//! The secret is the content of `delivery_secret_file`, or, without one, derived from the site's
//! `admin_token` (a key only the site's roles hold), so a site is closed to strangers with no
//! configuration at all. It is swapped in place on SIGHUP ([`DeliverySecret::replace`]).

use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::hmac;

/// The SASL mechanism name, as in EHLO's `AUTH` line and the `AUTH` command.
pub const MECHANISM: &str = "CRAM-SHA256";

/// What a derived secret is derived with: changing it changes every site's secret.
const DERIVATION: &[u8] = b"hubrelay delivery secret v1";

/// The site's delivery secret, shared by its hubs (to answer) and nodes (to check); replaceable
/// while running.
#[derive(Debug, Clone)]
pub struct DeliverySecret(Arc<ArcSwap<Vec<u8>>>);

impl DeliverySecret {
    /// The secret read from `delivery_secret_file` (its bytes, trailing line ends removed).
    pub fn new(secret: Vec<u8>) -> DeliverySecret {
        DeliverySecret(Arc::new(ArcSwap::from_pointee(secret)))
    }

    /// The secret derived from the site's admin token, for sites without a secret file.
    pub fn derive(admin_token: &str) -> Vec<u8> {
        let key = hmac::Key::new(hmac::HMAC_SHA256, admin_token.as_bytes());
        hmac::sign(&key, DERIVATION).as_ref().to_vec()
    }

    /// Puts another secret in force (SIGHUP re-read the file); sessions already authenticated
    /// keep going.
    pub fn replace(&self, secret: Vec<u8>) {
        self.0.store(Arc::new(secret));
    }

    fn key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.0.load())
    }

    /// The hub's answer to `challenge` (the base64 text after `334 `), as `user`.
    pub fn respond(&self, user: &str, challenge_b64: &str) -> Result<String, AuthError> {
        let challenge = B64
            .decode(challenge_b64.trim())
            .map_err(|_| AuthError::Malformed("the challenge is not base64"))?;
        let tag = hmac::sign(&self.key(), &challenge);
        Ok(B64.encode(format!("{user} {}", hex(tag.as_ref()))))
    }
}

/// A node's check of the hubs: the secret and the names it accepts.
#[derive(Debug, Clone)]
pub struct DeliveryAuth {
    /// The site's delivery secret.
    pub secret: DeliverySecret,
    /// The hubs of the site: the only users.
    pub users: Vec<String>,
}

/// Why an AUTH exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not base64, not `user digest`, or a digest that is not 64 hex digits.
    #[error("malformed answer: {0}")]
    Malformed(&'static str),
    /// A user that is not one of the site's hubs.
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    /// The digest does not match: a wrong secret, or an answer to another challenge.
    #[error("wrong secret for {0:?}")]
    WrongSecret(String),
}

impl DeliveryAuth {
    /// A new challenge for a session of `hostname`, base64-encoded for the `334` line.
    pub fn challenge(hostname: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        B64.encode(format!(
            "<{:032x}.{now}@{hostname}>",
            rand::random::<u128>()
        ))
    }

    /// Checks the client's `answer` (the base64 line) to `challenge` (as sent); the user on
    /// success.
    pub fn verify(&self, challenge_b64: &str, answer: &str) -> Result<String, AuthError> {
        let challenge = B64
            .decode(challenge_b64)
            .map_err(|_| AuthError::Malformed("the challenge is not base64"))?;
        let decoded = B64
            .decode(answer.trim())
            .map_err(|_| AuthError::Malformed("not base64"))?;
        let text = std::str::from_utf8(&decoded).map_err(|_| AuthError::Malformed("not UTF-8"))?;
        let (user, digest) = text
            .rsplit_once(' ')
            .ok_or(AuthError::Malformed("not `user digest`"))?;
        let tag = unhex(digest).ok_or(AuthError::Malformed("the digest is not 64 hex digits"))?;
        if !self.users.iter().any(|u| u == user) {
            return Err(AuthError::UnknownUser(user.to_string()));
        }
        hmac::verify(&self.secret.key(), &challenge, &tag)
            .map_err(|_| AuthError::WrongSecret(user.to_string()))?;
        Ok(user.to_string())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn auth(secret: &DeliverySecret) -> DeliveryAuth {
        DeliveryAuth {
            secret: secret.clone(),
            users: vec!["hub1".into(), "hub2".into()],
        }
    }

    #[test]
    fn the_right_secret_passes_and_anything_else_is_refused() {
        let site = DeliverySecret::new(DeliverySecret::derive("token"));
        let node = auth(&site);
        let challenge = DeliveryAuth::challenge("node1.cms1");
        let answer = site.respond("hub1", &challenge).expect("respond");
        assert_eq!(node.verify(&challenge, &answer), Ok("hub1".to_string()));

        let other = DeliverySecret::new(DeliverySecret::derive("another token"));
        let wrong = other.respond("hub1", &challenge).expect("respond");
        assert_eq!(
            node.verify(&challenge, &wrong),
            Err(AuthError::WrongSecret("hub1".into()))
        );
        let stranger = site.respond("mallory", &challenge).expect("respond");
        assert_eq!(
            node.verify(&challenge, &stranger),
            Err(AuthError::UnknownUser("mallory".into()))
        );
        // An answer is good for its own challenge only.
        let replayed = DeliveryAuth::challenge("node1.cms1");
        assert!(matches!(
            node.verify(&replayed, &answer),
            Err(AuthError::WrongSecret(_))
        ));
        // A replaced secret is in force at once.
        site.replace(b"from a file".to_vec());
        assert!(node.verify(&challenge, &answer).is_err());
        let fresh = site.respond("hub2", &challenge).expect("respond");
        assert_eq!(node.verify(&challenge, &fresh), Ok("hub2".to_string()));
    }

    proptest! {
        /// Whatever a client sends, the check answers (never panics) and only the real answer
        /// passes.
        #[test]
        fn no_answer_but_the_real_one_passes(answer in ".{0,200}", raw in proptest::collection::vec(any::<u8>(), 0..120)) {
            let site = DeliverySecret::new(DeliverySecret::derive("token"));
            let node = auth(&site);
            let challenge = DeliveryAuth::challenge("node1");
            let real = site.respond("hub1", &challenge).expect("respond");
            prop_assume!(answer != real);
            prop_assert!(node.verify(&challenge, &answer).is_err());
            let encoded = B64.encode(&raw);
            prop_assume!(encoded != real);
            prop_assert!(node.verify(&challenge, &encoded).is_err());
        }
    }
}
