//! The single writer of one storage group's transaction log while the node is active.
//!
//! One thread per storage group appends, so a batch of messages from many SMTP sessions shares one
//! fsync (group commit); the thread applies the batch to the mailbox store after the fsync and
//! answers every waiting session. The log sits behind a mutex so the admin API can ship closed
//! generations and a scheduled move can roll the open one.

use std::sync::{Arc, Mutex, MutexGuard};

use store::mailbox::MailboxStore;
use store::txlog::{LogRecord, TxLog};
use tokio::sync::{mpsc, oneshot};
use tracing::error;

/// Most records in one batch; bounds the latency of the first one.
const MAX_BATCH: usize = 512;

type Done = oneshot::Sender<Result<usize, String>>;

/// Handle to a storage group's writer thread; clones share it.
#[derive(Clone)]
pub struct SgWriter {
    tx: mpsc::UnboundedSender<(LogRecord, Done)>,
    log: Arc<Mutex<TxLog>>,
}

impl SgWriter {
    /// Starts the writer thread for `sg`, which owns `log`. The thread ends when every handle is dropped.
    pub fn start(sg: String, log: TxLog, store: Arc<MailboxStore>) -> SgWriter {
        let (tx, rx) = mpsc::unbounded_channel();
        let log = Arc::new(Mutex::new(log));
        let shared = log.clone();
        std::thread::Builder::new()
            .name(format!("txlog-{sg}"))
            .spawn(move || write_loop(&sg, &shared, &store, rx))
            .expect("spawning a thread only fails when the process is out of resources");
        SgWriter { tx, log }
    }

    /// Logs `rec` durably and applies it; returns how many mailbox copies were added (0: all
    /// recipients already held the Message-ID).
    pub async fn write(&self, rec: LogRecord) -> Result<usize, String> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((rec, done))
            .map_err(|_| "the log writer has stopped".to_string())?;
        wait.await
            .map_err(|_| "the log writer has stopped".to_string())?
    }

    /// The log, for shipping and rolling (held only briefly: the writer waits meanwhile).
    pub fn log(&self) -> MutexGuard<'_, TxLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn write_loop(
    sg: &str,
    log: &Mutex<TxLog>,
    store: &MailboxStore,
    mut rx: mpsc::UnboundedReceiver<(LogRecord, Done)>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let result = {
            let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
            write_batch(sg, &mut log, store, &batch)
        };
        if let Err(e) = &result {
            error!(storage_group = sg, error = %e, "transaction log write failed; deliveries refused with 451");
        }
        for (i, (_, done)) in batch.into_iter().enumerate() {
            let _ = done.send(result.as_ref().map(|added| added[i]).map_err(Clone::clone));
        }
    }
}

fn write_batch(
    sg: &str,
    log: &mut TxLog,
    store: &MailboxStore,
    batch: &[(LogRecord, Done)],
) -> Result<Vec<usize>, String> {
    let positions = batch
        .iter()
        .map(|(rec, _)| log.append(rec))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    log.sync().map_err(|e| e.to_string())?;
    batch
        .iter()
        .zip(positions)
        .map(|((rec, _), pos)| store.apply(sg, pos, rec).map_err(|e| e.to_string()))
        .collect()
}
