//! Intake follows delivery, like Postfix's `in_flow_delay`.
//!
//! A hub can accept mail faster than it delivers it. Without a brake the backlog, and with it the
//! end-to-end latency of every message, grows as long as the load lasts. Each new message takes a
//! token before it is queued and gives it back when its first delivery attempt ends (whatever the
//! outcome: a node that is down must not stop intake, the queue on disk is there for that). When
//! no token is free the session waits for one, up to `in_flow_delay`, and then goes on without:
//! the brake slows clients to the delivery rate but never refuses a message.
//!
//! The brake follows the hub's own work, not a silent next hop: a message whose first attempt
//! would wait on a node that does not answer ([`super::reach`]) takes no token at all, and an
//! attempt waits at most `node_connect_timeout` per node for an answer, so deferred first attempts
//! end, and give their tokens back, quickly.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The tokens of one hub.
pub struct InFlow {
    tokens: Arc<Semaphore>,
    delay: Duration,
}

/// What a new message holds until its first delivery attempt ends; dropping it frees the token.
pub struct Token {
    /// Dropping it gives the token back.
    permit: Option<OwnedSemaphorePermit>,
}

/// How a message got in, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A token was free at once.
    Immediate,
    /// The session waited for a delivery to give a token back.
    Delayed,
    /// No token came within `in_flow_delay`; admitted without one.
    Overdue,
}

impl Token {
    /// A token that holds nothing back: for messages the hub makes itself (DSNs), for retries,
    /// which were admitted when they first arrived, and for new messages whose next hop does not
    /// answer.
    pub fn none() -> Token {
        Token { permit: None }
    }

    /// Whether this token counts in the backlog (it does not when admitted overdue or made with
    /// [`Token::none`]): what is kept for such a message is bounded by the backlog.
    pub fn holds_place(&self) -> bool {
        self.permit.is_some()
    }
}

impl InFlow {
    /// `backlog` messages may wait for their first attempt before new ones are slowed, each by at
    /// most `delay` (zero turns the brake off).
    pub fn new(backlog: usize, delay: Duration) -> InFlow {
        InFlow {
            tokens: Arc::new(Semaphore::new(backlog)),
            delay,
        }
    }

    /// Waits, at most `in_flow_delay`, for a token for one new message.
    pub async fn admit(&self) -> (Token, Admission) {
        if let Ok(p) = self.tokens.clone().try_acquire_owned() {
            return (Token { permit: Some(p) }, Admission::Immediate);
        }
        if self.delay.is_zero() {
            return (Token { permit: None }, Admission::Overdue);
        }
        match tokio::time::timeout(self.delay, self.tokens.clone().acquire_owned()).await {
            Ok(Ok(p)) => (Token { permit: Some(p) }, Admission::Delayed),
            // Timed out (or the semaphore closed, which it never is): in without a token.
            _ => (Token { permit: None }, Admission::Overdue),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn below_the_backlog_messages_pass_at_once() {
        let flow = InFlow::new(2, Duration::from_secs(1));
        let start = tokio::time::Instant::now();
        let (a, how_a) = flow.admit().await;
        let (b, how_b) = flow.admit().await;
        assert_eq!((how_a, how_b), (Admission::Immediate, Admission::Immediate));
        assert!(a.holds_place() && b.holds_place());
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_backlog_waits_for_a_delivery_to_end() {
        let flow = Arc::new(InFlow::new(1, Duration::from_secs(1)));
        let (first, _) = flow.admit().await;
        let start = tokio::time::Instant::now();
        let waiter = {
            let flow = flow.clone();
            tokio::spawn(async move { flow.admit().await.1 })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished(), "admitted while the backlog was full");
        drop(first);
        assert_eq!(waiter.await.expect("task"), Admission::Delayed);
        assert_eq!(start.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_refused_after_the_delay() {
        let flow = InFlow::new(1, Duration::from_secs(1));
        let (_held, _) = flow.admit().await;
        let start = tokio::time::Instant::now();
        let (token, how) = flow.admit().await;
        assert_eq!(how, Admission::Overdue);
        assert!(
            !token.holds_place(),
            "an overdue message counts in no bound"
        );
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        drop(token);
        // The overdue message held no token, so the backlog is still full.
        assert_eq!(flow.admit().await.1, Admission::Overdue);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_delay_turns_the_brake_off() {
        let flow = InFlow::new(1, Duration::ZERO);
        let (_held, _) = flow.admit().await;
        let start = tokio::time::Instant::now();
        assert_eq!(flow.admit().await.1, Admission::Overdue);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
