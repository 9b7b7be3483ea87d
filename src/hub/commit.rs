//! Group commit for the writes made outside the [`super::writer`] (an administrator's queue
//! actions, resubmission bookkeeping): many waiters share one fsync.
//!
//! One fsync per write would cap those at the disk's fsync rate; instead every writer registers
//! after its write and waits for the next flush that *starts* after it registered, so one flush
//! covers everything written while the previous one ran.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

/// Why a commit could not be confirmed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("flush to disk failed: {0}")]
pub struct CommitError(pub String);

/// Handle to the flusher task; cheap to clone.
#[derive(Clone)]
pub struct GroupCommit {
    tx: mpsc::UnboundedSender<oneshot::Sender<Result<(), CommitError>>>,
}

impl GroupCommit {
    /// Starts the flusher; `flush` is the blocking fsync of the store.
    pub fn start<F>(flush: F) -> GroupCommit
    where
        F: Fn() -> Result<(), String> + Send + Sync + 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<oneshot::Sender<Result<(), CommitError>>>();
        let flush = Arc::new(flush);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut waiters = vec![first];
                while let Ok(w) = rx.try_recv() {
                    waiters.push(w);
                }
                let f = flush.clone();
                let result = match tokio::task::spawn_blocking(move || f()).await {
                    Ok(r) => r.map_err(CommitError),
                    Err(e) => Err(CommitError(format!("flush task failed: {e}"))),
                };
                for w in waiters {
                    let _ = w.send(result.clone());
                }
            }
        });
        GroupCommit { tx }
    }

    /// Returns once everything written before this call is on disk.
    pub async fn durable(&self) -> Result<(), CommitError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(tx)
            .map_err(|_| CommitError("the flusher has stopped".into()))?;
        rx.await
            .map_err(|_| CommitError("the flusher has stopped".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_waiters_share_flushes() {
        let flushes = Arc::new(AtomicUsize::new(0));
        let f = flushes.clone();
        let gc = GroupCommit::start(move || {
            f.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(5));
            Ok(())
        });
        let waits: Vec<_> = (0..200)
            .map(|_| {
                let gc = gc.clone();
                async move { gc.durable().await }
            })
            .collect();
        for r in futures_join(waits).await {
            r.expect("flush ok");
        }
        let n = flushes.load(Ordering::SeqCst);
        assert!((1..200).contains(&n), "200 waiters took {n} flushes");
    }

    #[tokio::test]
    async fn a_failed_flush_is_reported_to_every_waiter() {
        let gc = GroupCommit::start(|| Err("disk full".to_string()));
        let e = gc.durable().await.expect_err("must fail");
        assert!(e.to_string().contains("disk full"));
    }

    async fn futures_join<F>(fs: Vec<F>) -> Vec<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.expect("task"));
        }
        out
    }
}
