//! Resubmission: persisted requests that put dumpster entries of one SG and time window back in
//! the queue, in batches, each batch committed together with the request's cursor.

use std::sync::atomic::Ordering;

use super::dumpster::Window;
use super::keys::decode;
use super::tx::{json, Plan, StoredEntry, RESUBMIT};
use super::{
    DumpsterLimits, HubStore, HubStoreError, MessageDsn, Millis, QueuedMessage, RcptDsn,
    RcptStatus, Recipient, ResubmitCursor, ResubmitFilter, ResubmitRequest,
};

impl HubStore {
    /// Creates the request if `id` is new (returned with `done = false` and `true`); if it
    /// exists, returns the stored one unchanged and `false`, so a repeated request redelivers
    /// nothing twice.
    pub fn resubmit_begin(
        &self,
        id: &str,
        sg: &str,
        (low_ms, high_ms): (Millis, Millis),
        filter: &ResubmitFilter,
        now_ms: Millis,
    ) -> Result<(ResubmitRequest, bool), HubStoreError> {
        let fresh = ResubmitRequest {
            id: id.to_string(),
            storage_group: sg.to_string(),
            low_ms,
            high_ms,
            filter: filter.clone(),
            created_ms: now_ms,
            done: false,
            messages: 0,
            cursor: None,
        };
        self.transact(|tx| {
            if let Some(raw) = tx.resubmit.get(id.as_bytes())? {
                return Ok((decode(RESUBMIT, id.as_bytes(), &raw)?, false));
            }
            tx.resubmit.insert(id.as_bytes(), json(&fresh)?)?;
            Ok((fresh.clone(), true))
        })
    }

    /// Goes through the next up-to-`batch` window entries after the request's cursor and
    /// re-queues those its filter matches, each as a new queued message (same message_id,
    /// sender, received_ms; the entry's recipients the filter keeps, Pending, with the entry's
    /// CMS and SG; the SAME blob, +1 ref; `resubmission = Some(id)`; `next_attempt_ms = now_ms`;
    /// `expires_ms` as given), advancing the cursor and message count in the same transaction,
    /// and marks the request done when the window is exhausted. A test-only request counts
    /// the matches and queues nothing.
    /// A crash between batches resumes at the cursor and never queues an entry twice.
    /// Entries that expired or were evicted meanwhile are skipped. A done request queues nothing;
    /// a `batch` of 0 is taken as 1 so every call makes progress.
    pub fn resubmit_step(
        &self,
        id: &str,
        batch: usize,
        now_ms: Millis,
        expires_ms: Millis,
        limits: DumpsterLimits,
    ) -> Result<(ResubmitRequest, Vec<QueuedMessage>), HubStoreError> {
        let _planning = self.lock_planner();
        let mut request = self
            .request(id)?
            .ok_or_else(|| HubStoreError::UnknownRequest(id.to_string()))?;
        if request.done {
            return Ok((request, Vec::new()));
        }
        let window = Window {
            low_ms: request.low_ms.max(limits.cutoff(now_ms)),
            high_ms: request.high_ms,
        };
        let batch = batch.max(1);
        let mut entries = self.window(
            &request.storage_group,
            window,
            request.cursor,
            batch.saturating_add(1),
        )?;
        request.done = entries.len() <= batch;
        entries.truncate(batch);

        let mut plan = Plan::default();
        let mut queued = Vec::with_capacity(entries.len());
        let mut matched = 0;
        for e in &entries {
            let recipients = request.filter.recipients(&e.entry);
            if recipients.is_empty() {
                continue;
            }
            matched += 1;
            if !request.filter.test_only {
                plan.add_ref(e.entry.blob, 1);
                queued.push(self.requeued(e, recipients, id, now_ms, expires_ms)?);
            }
        }
        if let Some(last) = entries.last() {
            request.cursor = Some(ResubmitCursor {
                delivered_ms: last.entry.delivered_ms,
                seq: last.seq,
            });
        }
        request.messages += matched;

        self.transact(|tx| {
            for msg in &queued {
                tx.put_message(msg)?;
            }
            tx.resubmit.insert(id.as_bytes(), json(&request)?)?;
            plan.apply(tx)
        })?;
        self.queue_len.fetch_add(queued.len(), Ordering::Relaxed);
        Ok((request, queued))
    }

    /// All resubmission requests, done or not, in id order.
    pub fn resubmit_requests(&self) -> Result<Vec<ResubmitRequest>, HubStoreError> {
        self.trees()?
            .resubmit
            .iter()
            .map(|item| {
                let (key, raw) = item?;
                decode(RESUBMIT, &key, &raw)
            })
            .collect()
    }

    /// Removes the requests that are done and were created before `before_ms`, so the table does
    /// not grow with every failover the site ever had. Call it with a cutoff well past the time
    /// a node keeps asking (MaxDumpsterTime on its clock): a forgotten request asked again only
    /// resubmits what the dumpster still holds, which the nodes deduplicate. Returns how many went.
    pub fn forget_resubmissions(&self, before_ms: Millis) -> Result<usize, HubStoreError> {
        let trees = self.trees()?;
        let mut forgotten = 0;
        for item in trees.resubmit.iter() {
            let (key, raw) = item?;
            let request: ResubmitRequest = decode(RESUBMIT, &key, &raw)?;
            if request.done
                && request.created_ms < before_ms
                && trees
                    .resubmit
                    .compare_and_swap(&key, Some(raw), None as Option<&[u8]>)?
                    .is_ok()
            {
                forgotten += 1;
            }
        }
        Ok(forgotten)
    }

    fn request(&self, id: &str) -> Result<Option<ResubmitRequest>, HubStoreError> {
        match self.trees()?.resubmit.get(id.as_bytes())? {
            Some(raw) => Ok(Some(decode(RESUBMIT, id.as_bytes(), &raw)?)),
            None => Ok(None),
        }
    }

    /// The queued copy of a dumpster entry, addressed to `recipients` (the entry's, or those
    /// of them the request's filter keeps) only.
    fn requeued(
        &self,
        stored: &StoredEntry,
        recipients: Vec<String>,
        request: &str,
        now_ms: Millis,
        expires_ms: Millis,
    ) -> Result<QueuedMessage, HubStoreError> {
        let e = &stored.entry;
        let recipients = recipients
            .into_iter()
            .map(|address| Recipient {
                address,
                cms: e.cms.clone(),
                storage_group: e.storage_group.clone(),
                status: RcptStatus::Pending,
                dsn: RcptDsn::default(),
            })
            .collect();
        Ok(QueuedMessage {
            id: self.next_id()?,
            blob: e.blob,
            message_id: e.message_id.clone(),
            sender: e.sender.clone(),
            received_ms: e.received_ms,
            expires_ms,
            size: e.size,
            recipients,
            attempts: 0,
            next_attempt_ms: now_ms,
            resubmission: Some(request.to_string()),
            dsn: MessageDsn::default(),
            held_since_ms: None,
        })
    }
}
