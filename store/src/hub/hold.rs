//! An administrator's actions on queued messages: hold, release, retry now, delete.
//!
//! Each is one sled transaction on the stored message, so none can half-apply. Hold, release and
//! retry change only the message's schedule: its body, recipients and dumpster behaviour stay as
//! they were. None of them is flushed; the caller answers after its group-commit `flush`.

use std::sync::atomic::Ordering;

use super::tx::Plan;
use super::{HubStore, HubStoreError, Millis, QueuedMessage};

impl HubStore {
    /// Holds message `id` from `now_ms` on: it leaves the due index, so it is neither attempted
    /// nor expired until released. A message already held is refused, so its hold time stays.
    pub fn hold(&self, id: u64, now_ms: Millis) -> Result<QueuedMessage, HubStoreError> {
        self.modify(id, |msg| {
            if msg.is_held() {
                return Err(HubStoreError::AlreadyHeld(id));
            }
            msg.held_since_ms = Some(now_ms);
            Ok(())
        })
    }

    /// Releases a held message: due at `now_ms`, with its expiry moved on by the time it was
    /// held, so a hold never uses up the delivery time the message had left.
    pub fn release(&self, id: u64, now_ms: Millis) -> Result<QueuedMessage, HubStoreError> {
        self.modify(id, |msg| {
            let since = msg.held_since_ms.take().ok_or(HubStoreError::NotHeld(id))?;
            msg.expires_ms = msg.expires_ms.saturating_add(now_ms.saturating_sub(since));
            msg.next_attempt_ms = now_ms;
            Ok(())
        })
    }

    /// Makes a message that is not held due at `now_ms` (a held one must be released instead).
    pub fn retry_now(&self, id: u64, now_ms: Millis) -> Result<QueuedMessage, HubStoreError> {
        self.modify(id, |msg| {
            if msg.is_held() {
                return Err(HubStoreError::Held(id));
            }
            msg.next_attempt_ms = now_ms;
            Ok(())
        })
    }

    /// Removes message `id` from the queue, with its body unless a dumpster entry still shares
    /// it, and returns what was removed.
    pub fn delete(&self, id: u64) -> Result<QueuedMessage, HubStoreError> {
        let removed = self.transact(|tx| {
            let stored = tx.take_message(id)?;
            let mut plan = Plan::default();
            plan.add_ref(stored.blob, -1);
            plan.apply(tx)?;
            Ok(stored)
        })?;
        self.queue_len.fetch_sub(1, Ordering::Relaxed);
        Ok(removed)
    }

    /// Rewrites message `id` (and its due index entry) as `change` leaves it, in one transaction.
    fn modify(
        &self,
        id: u64,
        change: impl Fn(&mut QueuedMessage) -> Result<(), HubStoreError>,
    ) -> Result<QueuedMessage, HubStoreError> {
        self.transact(|tx| {
            let mut msg = tx.take_message(id)?;
            change(&mut msg)?;
            tx.put_message(&msg)?;
            Ok(msg)
        })
    }
}
