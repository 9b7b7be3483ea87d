//! The delivery queue: messages, their bodies and the due index.

use std::sync::atomic::Ordering;

use super::bodies::BlobRef;
use super::keys::{decode, due_key, id_key, parse_u64};
use super::tx::{DUE, QUEUE};
use super::{
    DumpsterEntry, DumpsterLimits, HubStore, HubStoreError, Millis, NewMessage, QueuedMessage,
};

impl HubStore {
    /// Stores body (blob refcount 1) + message + due index in ONE sled transaction. Not flushed:
    /// the caller acknowledges the message after its group-commit `flush`.
    /// `next_attempt_ms` is `now_ms` and `size` is `body.len()`.
    pub fn enqueue(
        &self,
        msg: NewMessage,
        body: &[u8],
        now_ms: Millis,
    ) -> Result<QueuedMessage, HubStoreError> {
        // One message in, one out.
        Ok(self.enqueue_batch(vec![(msg, body)], now_ms)?.remove(0))
    }

    /// [`HubStore::enqueue`] for many messages in ONE transaction (all or none), in order: the
    /// hub's writer stores what every session received meanwhile at once.
    pub fn enqueue_batch<B: AsRef<[u8]>>(
        &self,
        batch: Vec<(NewMessage, B)>,
        now_ms: Millis,
    ) -> Result<Vec<QueuedMessage>, HubStoreError> {
        let mut queued = Vec::with_capacity(batch.len());
        let mut bodies = Vec::with_capacity(batch.len());
        for (msg, body) in batch {
            queued.push(QueuedMessage {
                id: self.next_id()?,
                blob: self.next_id()?,
                message_id: msg.message_id,
                sender: msg.sender,
                received_ms: msg.received_ms,
                expires_ms: msg.expires_ms,
                size: body.as_ref().len() as u64,
                recipients: msg.recipients,
                attempts: 0,
                next_attempt_ms: now_ms,
                resubmission: None,
                dsn: msg.dsn,
                held_since_ms: None,
            });
            bodies.push(body);
        }
        // Bodies first, durable before the transaction that points at them.
        let mut ats = Vec::with_capacity(bodies.len());
        let appended = bodies
            .iter()
            .try_for_each(|body| {
                ats.push(self.bodies.append(body.as_ref())?);
                Ok(())
            })
            .and_then(|()| self.bodies.sync());
        let committed = appended.map_err(HubStoreError::from).and_then(|()| {
            self.transact(|tx| {
                for (q, at) in queued.iter().zip(&ats) {
                    let blob = BlobRef {
                        count: 1,
                        at: Some(*at),
                    };
                    tx.refs.insert(&id_key(q.blob), blob.encode())?;
                    tx.put_message(q)?;
                }
                Ok(())
            })
        });
        if let Err(e) = committed {
            for at in &ats {
                self.bodies.release(at);
            }
            return Err(e);
        }
        self.queue_len.fetch_add(queued.len(), Ordering::Relaxed);
        Ok(queued)
    }

    /// The queued message `id`, if it is still queued.
    pub fn get(&self, id: u64) -> Result<Option<QueuedMessage>, HubStoreError> {
        let key = id_key(id);
        match self.trees()?.queue.get(key)? {
            Some(raw) => Ok(Some(decode(QUEUE, &key, &raw)?)),
            None => Ok(None),
        }
    }

    /// All queued messages in id order (used at start-up to resume deliveries; O(n)).
    pub fn queued(&self) -> Result<Vec<QueuedMessage>, HubStoreError> {
        self.trees()?
            .queue
            .iter()
            .map(|item| {
                let (key, raw) = item?;
                decode(QUEUE, &key, &raw)
            })
            .collect()
    }

    /// How many messages are queued, without scanning.
    pub fn queue_len(&self) -> usize {
        self.queue_len.load(Ordering::Relaxed)
    }

    /// Up to `limit` queued messages whose `next_attempt_ms <= now_ms`, the earliest first: a
    /// range scan of the due index, so a scheduler never reads the whole queue.
    pub fn due(&self, now_ms: Millis, limit: usize) -> Result<Vec<QueuedMessage>, HubStoreError> {
        let mut due = Vec::new();
        for item in self.trees()?.due.range(..=due_key(now_ms, u64::MAX)) {
            if due.len() == limit {
                break;
            }
            let (key, _) = item?;
            let id = parse_u64(DUE, &key, key.get(8..).unwrap_or_default())?;
            // A message finished between the index read and this one is simply not due.
            if let Some(msg) = self.get(id)? {
                due.push(msg);
            }
        }
        Ok(due)
    }

    /// Records the outcome of one delivery attempt, atomically: `msg` (with updated recipient
    /// statuses, attempts, next_attempt_ms) replaces the stored one, keeping the stored hold and
    /// expiry (an administrator may have changed them while the attempt ran) — or, if no recipient is
    /// Pending/Deferred any more, the message is removed (blob ref dropped) — and `delivered`
    /// entries are added to the dumpster (each takes a blob ref; the oldest-delivered entries of
    /// that SG are evicted until bytes ≤ `max_bytes_per_sg`; an entry larger than the bound is
    /// not kept and counts `too_large`; a blob nothing references any more is deleted).
    /// Returns how many entries were evicted.
    pub fn record_attempt(
        &self,
        msg: &QueuedMessage,
        delivered: Vec<DumpsterEntry>,
        limits: DumpsterLimits,
    ) -> Result<u64, HubStoreError> {
        self.record_attempts(vec![(msg.clone(), delivered)], limits)
    }

    /// [`HubStore::record_attempt`] for the attempts of many messages (each at most once) in ONE
    /// transaction, all or none; the dumpster entries of the whole batch are planned together, so
    /// the size bound holds as if they had been recorded one by one.
    pub fn record_attempts(
        &self,
        batch: Vec<(QueuedMessage, Vec<DumpsterEntry>)>,
        limits: DumpsterLimits,
    ) -> Result<u64, HubStoreError> {
        let _planning = self.lock_planner();
        let mut messages = Vec::with_capacity(batch.len());
        let mut delivered = Vec::new();
        for (msg, entries) in batch {
            messages.push(msg);
            delivered.extend(entries);
        }
        let mut evicted = 0;
        for sg in distinct_sgs(&delivered) {
            evicted += self.trim_to(sg, limits.max_bytes_per_sg)?;
        }
        let mut plan = self.plan_deliveries(delivered, limits.max_bytes_per_sg)?;
        let mut finished = 0;
        for msg in messages.iter().filter(|m| m.is_finished()) {
            plan.add_ref(msg.blob, -1);
            finished += 1;
        }
        self.transact(|tx| {
            for msg in &messages {
                let stored = tx.take_message(msg.id)?;
                if stored.blob != msg.blob {
                    return Err(HubStoreError::BlobMismatch {
                        id: msg.id,
                        given: msg.blob,
                        stored: stored.blob,
                    }
                    .into());
                }
                if !msg.is_finished() {
                    tx.put_message(&QueuedMessage {
                        held_since_ms: stored.held_since_ms,
                        expires_ms: stored.expires_ms,
                        ..msg.clone()
                    })?;
                }
            }
            plan.apply(tx)
        })?;
        self.queue_len.fetch_sub(finished, Ordering::Relaxed);
        Ok(evicted + plan.evicted())
    }
}

/// The storage groups of `entries`, each once.
fn distinct_sgs(entries: &[DumpsterEntry]) -> std::collections::BTreeSet<&str> {
    entries.iter().map(|e| e.storage_group.as_str()).collect()
}
