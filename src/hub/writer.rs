//! One thread writes the queue: what every session received and what every delivery attempt
//! found are stored in batches, one sled transaction and one flush per round.
//!
//! Profiled under load (20 sessions, 4 KiB), a hub spent more CPU handing each message between
//! threads than storing it: a blocking-pool hop for its transaction, a hop to the flusher and
//! another for the fsync, one more per delivery outcome, and sled's own threads yielding to each
//! other on its transaction lock. Here a session or delivery task sends its write and waits; the
//! writer takes everything that queued up while it was busy, stores it in one transaction per
//! kind, flushes once if a new message needs it, and answers everyone. A busier hub makes bigger
//! batches, so the cost per message falls as the load grows.

use std::sync::Arc;
use std::thread;

use store::hub::{DumpsterEntry, DumpsterLimits, HubStore, Millis, NewMessage, QueuedMessage};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::commit::CommitError;
use super::HubError;

/// Writes taken in one round at most, so the first writer never waits behind an endless batch.
const MAX_BATCH: usize = 512;

/// Handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::UnboundedSender<Job>,
}

enum Job {
    Enqueue {
        msg: NewMessage,
        body: Vec<u8>,
        now_ms: Millis,
        reply: oneshot::Sender<Result<(QueuedMessage, Vec<u8>), HubError>>,
    },
    Record {
        msg: QueuedMessage,
        delivered: Vec<DumpsterEntry>,
        limits: DumpsterLimits,
        reply: oneshot::Sender<Result<(), HubError>>,
    },
}

impl Writer {
    /// Starts the writer thread of `store`; it ends when the last handle is dropped.
    pub fn start(store: Arc<HubStore>, hub: &str) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::unbounded_channel();
        thread::Builder::new()
            .name(format!("{hub}-writer"))
            .spawn(move || run(&store, rx))?;
        Ok(Writer { tx })
    }

    /// Stores a new message and returns once it is on disk (the promise behind a 250), with the
    /// body given back, so that the first attempt need not read it from the store again.
    pub async fn enqueue(
        &self,
        msg: NewMessage,
        body: Vec<u8>,
        now_ms: Millis,
    ) -> Result<(QueuedMessage, Vec<u8>), HubError> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Enqueue {
            msg,
            body,
            now_ms,
            reply,
        })?;
        rx.await.map_err(|_| stopped())?
    }

    /// Records a delivery attempt ([`HubStore::record_attempt`]); not flushed: an outcome lost
    /// in a crash is only a delivery made again, which the mailbox drops as a duplicate.
    pub async fn record(
        &self,
        msg: QueuedMessage,
        delivered: Vec<DumpsterEntry>,
        limits: DumpsterLimits,
    ) -> Result<(), HubError> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Record {
            msg,
            delivered,
            limits,
            reply,
        })?;
        rx.await.map_err(|_| stopped())?
    }

    fn send(&self, job: Job) -> Result<(), HubError> {
        self.tx.send(job).map_err(|_| stopped())
    }
}

fn stopped() -> HubError {
    HubError::Commit(CommitError("the queue writer has stopped".into()))
}

/// The writer's loop: a round is everything queued when it wakes, up to [`MAX_BATCH`].
fn run(store: &HubStore, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
        let mut enqueues = Vec::new();
        let mut records = Vec::new();
        let mut job = Some(first);
        while let Some(j) = job {
            match j {
                Job::Enqueue {
                    msg,
                    body,
                    now_ms,
                    reply,
                } => enqueues.push((msg, body, now_ms, reply)),
                Job::Record {
                    msg,
                    delivered,
                    limits,
                    reply,
                } => records.push((msg, delivered, limits, reply)),
            }
            job = if enqueues.len() + records.len() < MAX_BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if !records.is_empty() {
            write_records(store, records);
        }
        if !enqueues.is_empty() {
            write_enqueues(store, enqueues);
        }
    }
}

type EnqueueJob = (
    NewMessage,
    Vec<u8>,
    Millis,
    oneshot::Sender<Result<(QueuedMessage, Vec<u8>), HubError>>,
);
type RecordJob = (
    QueuedMessage,
    Vec<DumpsterEntry>,
    DumpsterLimits,
    oneshot::Sender<Result<(), HubError>>,
);

/// Stores a round's new messages in one transaction and flushes; if the batch fails, each is
/// stored on its own so one bad message cannot fail the others.
fn write_enqueues(store: &HubStore, jobs: Vec<EnqueueJob>) {
    let now_ms = jobs.iter().map(|j| j.2).max().unwrap_or_default();
    let batch: Vec<(NewMessage, &[u8])> = jobs
        .iter()
        .map(|(m, b, _, _)| (m.clone(), b.as_slice()))
        .collect();
    let results: Vec<Result<QueuedMessage, HubError>> = match store.enqueue_batch(batch, now_ms) {
        Ok(queued) => queued.into_iter().map(Ok).collect(),
        Err(e) => {
            warn!(error = %e, messages = jobs.len(), "batched enqueue failed; storing one by one");
            jobs.iter()
                .map(|(m, b, now, _)| Ok(store.enqueue(m.clone(), b, *now)?))
                .collect()
        }
    };
    let flushed = store.flush().map_err(|e| e.to_string());
    for ((_, body, _, reply), result) in jobs.into_iter().zip(results) {
        let result = match &flushed {
            Ok(()) => result.map(|queued| (queued, body)),
            Err(e) => Err(HubError::Commit(CommitError(e.clone()))),
        };
        let _ = reply.send(result);
    }
}

/// Records a round's attempts in one transaction; if the batch fails, each on its own, so the
/// error reaches the attempt it belongs to.
fn write_records(store: &HubStore, jobs: Vec<RecordJob>) {
    // Every job of a hub carries its site's bounds, so any one of them is the batch's.
    let limits = jobs[0].2;
    let batch = jobs
        .iter()
        .map(|(m, d, _, _)| (m.clone(), d.clone()))
        .collect();
    if store.record_attempts(batch, limits).is_ok() {
        for (_, _, _, reply) in jobs {
            let _ = reply.send(Ok(()));
        }
        return;
    }
    for (msg, delivered, limits, reply) in jobs {
        let result = store
            .record_attempt(&msg, delivered, limits)
            .map(|_| ())
            .map_err(HubError::from);
        let _ = reply.send(result);
    }
}
