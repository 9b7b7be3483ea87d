//! The single writer of one storage group's transaction log while the node is active.
//!
//! One thread per storage group appends, so a batch of messages from many SMTP sessions shares one
//! fsync (group commit); the thread applies the batch to the mailbox store after the fsync and
//! answers every waiting session. Commands go through one channel, so a seal (a scheduled move
//! closing the open generation) comes after every write queued before it, and nothing queued after
//! it is written. The thread alone touches the log: the admin API reads the counters it publishes
//! and the closed files, so no async worker ever waits behind an fsync.
//!
//! A failed append or fsync does not leave the storage group failed for good: the writer reopens
//! the log (crash recovery cuts a torn tail), replays into the store what reached the disk, and
//! goes on; until that works, deliveries get 451 and the failure is reported.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use store::mailbox::MailboxStore;
use store::txlog::{LogPosition, LogRecord, TxLog, TxLogError};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, warn};

/// Most records in one batch; bounds the latency of the first one.
const MAX_BATCH: usize = 512;
/// How often a failed log is reopened while deliveries keep arriving.
const REOPEN_EVERY: Duration = Duration::from_millis(500);

/// Why a write was not made durable; every case is answered 451 and the hub retries.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The storage group is dismounted, or being handed over by a scheduled move.
    #[error("the storage group is not taking deliveries here")]
    Stopped,
    /// The log could not be written (disk error); the writer is recovering it.
    #[error("transaction log failed: {0}")]
    Failed(String),
}

type Done = oneshot::Sender<Result<usize, WriteError>>;

enum Command {
    Write(Box<LogRecord>, Done),
    /// Close the open generation after every write before it and refuse writes until `Unseal`.
    Seal(oneshot::Sender<Result<u64, String>>),
    Unseal,
    /// The store was opened again after a disk error and may have lost applies it had not
    /// flushed: reopen the log and replay it before the next write.
    Replay,
    /// Finish the batch under way, then end the thread (demotion waits for this).
    Stop(oneshot::Sender<()>),
}

/// What the writer thread publishes for the admin API and the cluster driver.
#[derive(Default)]
struct Published {
    last_closed: AtomicU64,
    last_generated: AtomicU64,
    /// No more writes: set at demotion, before the thread sees its channel close.
    stopped: AtomicBool,
    /// The current failure, if the log is failed, and since when it has been failing.
    failed: Mutex<Option<(String, Instant)>>,
}

impl Published {
    /// The current failure and since when, if the log is failed.
    fn failure(&self) -> Option<(String, Instant)> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Handle to a storage group's writer thread; clones share it.
#[derive(Clone)]
pub struct SgWriter {
    tx: mpsc::UnboundedSender<Command>,
    published: Arc<Published>,
    dir: PathBuf,
    epoch: u64,
}

/// What the writer thread owns.
struct Thread {
    sg: String,
    log: Option<TxLog>,
    dir: PathBuf,
    log_file_size: u64,
    epoch: u64,
    store: Arc<MailboxStore>,
    published: Arc<Published>,
    sealed: bool,
    last_reopen: Option<Instant>,
}

impl SgWriter {
    /// Starts the writer thread for `sg` at `epoch`, which owns `log`. The thread ends when every
    /// handle is dropped.
    pub fn start(
        sg: String,
        log: TxLog,
        epoch: u64,
        log_file_size: u64,
        store: Arc<MailboxStore>,
    ) -> SgWriter {
        let (tx, rx) = mpsc::unbounded_channel();
        let published = Arc::new(Published::default());
        let dir = log.dir().to_path_buf();
        let mut thread = Thread {
            sg: sg.clone(),
            log: Some(log),
            dir: dir.clone(),
            log_file_size,
            epoch,
            store,
            published: published.clone(),
            sealed: false,
            last_reopen: None,
        };
        thread.publish();
        std::thread::Builder::new()
            .name(format!("txlog-{sg}"))
            .spawn(move || thread.run(rx))
            .expect("spawning a thread only fails when the process is out of resources");
        SgWriter {
            tx,
            published,
            dir,
            epoch,
        }
    }

    /// Logs `rec` durably and applies it; returns how many mailbox copies were added (0: all
    /// recipients already held the Message-ID).
    pub async fn write(&self, rec: LogRecord) -> Result<usize, WriteError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Command::Write(Box::new(rec), done))
            .map_err(|_| WriteError::Stopped)?;
        wait.await.map_err(|_| WriteError::Stopped)?
    }

    /// Closes the open generation after every write queued so far and refuses new writes; returns
    /// the last closed generation (a scheduled move ships up to it).
    pub async fn seal(&self) -> Result<u64, String> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Command::Seal(done))
            .map_err(|_| "the log writer has stopped".to_string())?;
        wait.await
            .map_err(|_| "the log writer has stopped".to_string())?
    }

    /// After the store was opened again: the next write first replays the log into it, so no
    /// record the log holds is missing from the store (and from its dedup index).
    pub fn replay(&self) {
        let _ = self.tx.send(Command::Replay);
    }

    /// Takes writes again after a seal (a scheduled move that did not happen).
    pub fn unseal(&self) {
        let _ = self.tx.send(Command::Unseal);
    }

    /// Refuses every write from now on, including those already queued, and waits until the
    /// thread has finished the batch under way and let go of the log (demotion: the directory
    /// becomes a copy, and nothing may be appended or applied behind its back). Blocking.
    pub fn stop(&self) {
        self.published.stopped.store(true, Ordering::SeqCst);
        let (done, wait) = oneshot::channel();
        if self.tx.send(Command::Stop(done)).is_ok() {
            let _ = wait.blocking_recv();
        }
    }

    /// The epoch this writer writes in.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Highest closed generation (what a passive can copy).
    pub fn last_closed(&self) -> u64 {
        self.published.last_closed.load(Ordering::SeqCst)
    }

    /// LastLogGenerated.
    pub fn last_generated(&self) -> u64 {
        self.published.last_generated.load(Ordering::SeqCst)
    }

    /// Why the log is failed, while it is.
    pub fn failure(&self) -> Option<String> {
        self.published.failure().map(|(why, _)| why)
    }

    /// How long the log has been failing without a durable batch, while it is.
    pub fn failing_for(&self) -> Option<Duration> {
        self.published.failure().map(|(_, since)| since.elapsed())
    }

    /// Raw bytes of a closed generation, read from disk (closed files never change).
    pub fn read_closed(&self, generation: u64) -> Result<Vec<u8>, TxLogError> {
        if generation == 0 || generation > self.last_closed() {
            return Err(TxLogError::NotClosed { generation });
        }
        store::txlog::read_closed(&self.dir, generation)
    }
}

impl Thread {
    fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = Vec::new();
            let mut next = Some(first);
            while let Some(cmd) = next.take() {
                match cmd {
                    Command::Write(rec, done) => {
                        batch.push((rec, done));
                        if batch.len() < MAX_BATCH {
                            next = rx.try_recv().ok();
                        }
                    }
                    Command::Seal(done) => {
                        self.write(std::mem::take(&mut batch));
                        let _ = done.send(self.seal());
                    }
                    Command::Unseal => {
                        self.write(std::mem::take(&mut batch));
                        self.sealed = false;
                    }
                    Command::Replay => {
                        self.write(std::mem::take(&mut batch));
                        self.log = None;
                        self.last_reopen = None;
                    }
                    Command::Stop(done) => {
                        self.write(std::mem::take(&mut batch));
                        self.log = None;
                        let _ = done.send(());
                        return;
                    }
                }
            }
            self.write(batch);
        }
    }

    fn publish(&self) {
        if let Some(log) = &self.log {
            let p = &self.published;
            p.last_closed.store(log.last_closed(), Ordering::SeqCst);
            p.last_generated
                .store(log.last_generated(), Ordering::SeqCst);
        }
    }

    fn set_failed(&self, failure: Option<String>) {
        let mut failed = self
            .published
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let since = failed
            .as_ref()
            .map_or_else(Instant::now, |(_, since)| *since);
        *failed = failure.map(|why| (why, since));
    }

    fn seal(&mut self) -> Result<u64, String> {
        self.sealed = true;
        let log = self.usable().map_err(|e| e.to_string())?;
        let result = log.roll().map(|_| log.last_closed());
        self.publish();
        result.map_err(|e| e.to_string())
    }

    fn write(&mut self, batch: Vec<(Box<LogRecord>, Done)>) {
        if batch.is_empty() {
            return;
        }
        if self.sealed || self.published.stopped.load(Ordering::SeqCst) {
            for (_, done) in batch {
                let _ = done.send(Err(WriteError::Stopped));
            }
            return;
        }
        let (sg, store) = (self.sg.clone(), self.store.clone());
        #[cfg(feature = "fault-injection")]
        injected_delay(&self.dir);
        let result = match injected_fault(&self.dir).and_then(|()| self.usable()) {
            Ok(log) => write_batch(&sg, log, &store, &batch),
            Err(e) => Err(e),
        };
        self.publish();
        if result.is_ok() && self.published.failure().is_some() {
            // Failed until a batch is durable again, so a log that reopens but cannot be
            // written stays failed (and counts toward giving the databases up).
            self.set_failed(None);
            warn!(storage_group = %self.sg, epoch = self.epoch, "transaction log writable again; deliveries accepted");
        }
        if let Err(e) = &result {
            if self.published.failure().is_none() {
                error!(storage_group = %self.sg, epoch = self.epoch, error = %e, "transaction log write failed; deliveries refused with 451 until the log is reopened");
            }
            self.set_failed(Some(e.root_cause()));
            // Recovery decides what of the batch reached the disk; none of it is acknowledged.
            self.log = None;
        }
        for (i, (_, done)) in batch.into_iter().enumerate() {
            let answer = match &result {
                Ok(added) => Ok(added[i]),
                Err(e) => Err(WriteError::Failed(e.to_string())),
            };
            let _ = done.send(answer);
        }
    }

    /// The log, reopened (crash recovery) if an earlier failure closed it.
    fn usable(&mut self) -> Result<&mut TxLog, TxLogError> {
        if self.log.is_none() {
            if self.last_reopen.is_some_and(|t| t.elapsed() < REOPEN_EVERY) {
                return Err(TxLogError::Poisoned {
                    storage_group: self.sg.clone(),
                    reason: self
                        .published
                        .failure()
                        .map(|(why, _)| why)
                        .unwrap_or_default(),
                });
            }
            self.last_reopen = Some(Instant::now());
            let mut log = TxLog::open(&self.dir, &self.sg, self.log_file_size)?;
            log.begin_epoch(self.epoch)?;
            let replayed = super::replay_own(&self.store, &self.sg, &log).map_err(|e| {
                TxLogError::Poisoned {
                    storage_group: self.sg.clone(),
                    reason: e.to_string(),
                }
            })?;
            log.sync()?;
            debug!(storage_group = %self.sg, epoch = self.epoch, replayed, "transaction log reopened after a failure");
            self.log = Some(log);
        }
        Ok(self.log.as_mut().expect("opened above"))
    }
}

/// A disk that takes 3 s per write while `<node>/logs/SLOW-WRITES` exists (fault-injection builds
/// only): the writer thread waits, and nothing else of the node may.
#[cfg(feature = "fault-injection")]
fn injected_delay(dir: &std::path::Path) {
    if dir
        .parent()
        .is_some_and(|logs| logs.join("SLOW-WRITES").exists())
    {
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// A disk error while `<node>/logs/FAIL-WRITES` exists (fault-injection builds only).
#[cfg(feature = "fault-injection")]
fn injected_fault(dir: &std::path::Path) -> Result<(), TxLogError> {
    match dir.parent().map(|logs| logs.join("FAIL-WRITES")) {
        Some(switch) if switch.exists() => Err(TxLogError::Io {
            path: switch,
            source: std::io::Error::other("injected disk error (fault-injection build)"),
        }),
        _ => Ok(()),
    }
}

/// Production builds have no disk-error switch.
#[cfg(not(feature = "fault-injection"))]
fn injected_fault(_dir: &std::path::Path) -> Result<(), TxLogError> {
    Ok(())
}

fn write_batch(
    sg: &str,
    log: &mut TxLog,
    store: &MailboxStore,
    batch: &[(Box<LogRecord>, Done)],
) -> Result<Vec<usize>, TxLogError> {
    let positions = batch
        .iter()
        .map(|(rec, _)| log.append(rec))
        .collect::<Result<Vec<_>, _>>()?;
    log.sync()?;
    let records: Vec<(LogPosition, &LogRecord)> = positions
        .into_iter()
        .zip(batch)
        .map(|(pos, (rec, _))| (pos, rec.as_ref()))
        .collect();
    store
        .apply_batch(sg, &records)
        .map_err(|e| TxLogError::Poisoned {
            storage_group: sg.to_string(),
            reason: format!("mailbox store: {e}"),
        })
}
