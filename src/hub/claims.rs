//! Which queued messages are being worked on right now. A delivery attempt, an administrator's
//! hold and a delete of the same message never overlap, so once a hold or a delete has answered,
//! no attempt of that message is still on its way to a mailbox server, and a deleted message is
//! never delivered (nor its dumpster entry lost) behind the administrator's back.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

/// The set of claimed queue ids.
#[derive(Default)]
pub struct Claims {
    /// Guards only the set, never held across an await; a panic cannot leave it half-changed, so
    /// poisoning is ignored.
    ids: Mutex<HashSet<u64>>,
    /// Woken whenever a claim ends, for [`Claims::claim`] waiting on one.
    released: Notify,
}

/// One claimed id; the claim ends when this is dropped.
pub struct Claim<'a> {
    claims: &'a Claims,
    id: u64,
}

impl Claims {
    /// Claims `id` if nobody has it.
    pub fn try_claim(&self, id: u64) -> Option<Claim<'_>> {
        // The guard must be gone before a `Claim` exists: dropping one takes the lock.
        let fresh = self.lock().insert(id);
        fresh.then(|| Claim { claims: self, id })
    }

    /// Claims `id`, waiting up to `limit` for whoever has it to finish.
    pub async fn claim(&self, id: u64, limit: Duration) -> Option<Claim<'_>> {
        let wait = async {
            loop {
                // Registered before the check, so a release between the two is not missed.
                let released = self.released.notified();
                tokio::pin!(released);
                released.as_mut().enable();
                if let Some(claim) = self.try_claim(id) {
                    return claim;
                }
                released.await;
            }
        };
        tokio::time::timeout(limit, wait).await.ok()
    }

    fn lock(&self) -> MutexGuard<'_, HashSet<u64>> {
        self.ids.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.claims.lock().remove(&self.id);
        self.claims.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_claimed_once_at_a_time() {
        let claims = Claims::default();
        let first = claims.try_claim(7).expect("free");
        assert!(claims.try_claim(7).is_none());
        assert!(
            claims.try_claim(7).is_none(),
            "a refused claim does not end the owner's"
        );
        assert!(claims.try_claim(8).is_some(), "other ids are independent");
        drop(first);
        assert!(claims.try_claim(7).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_claim_gets_the_id_when_it_is_released_or_gives_up() {
        let claims = std::sync::Arc::new(Claims::default());
        let held = claims.try_claim(1).expect("free");
        assert!(claims.claim(1, Duration::from_secs(2)).await.is_none());
        let waiter = {
            let claims = claims.clone();
            tokio::spawn(async move { claims.claim(1, Duration::from_secs(60)).await.is_some() })
        };
        tokio::task::yield_now().await;
        drop(held);
        assert!(waiter.await.expect("waiter"), "claimed once released");
    }
}
