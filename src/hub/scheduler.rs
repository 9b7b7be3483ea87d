//! The retry timer: queued message ids ordered by when they are due.
//!
//! New messages do not pass through here (they are sent as soon as they are durable); this holds the
//! retries and the messages resumed after a restart. The durable copy of the due time is in the
//! store, so this in-memory heap is rebuilt at start-up and losing it loses nothing.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::clock::now_ms;

/// Handle to schedule an id at a time; cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    tx: mpsc::UnboundedSender<(u64, u64)>,
}

/// The receiving side, consumed by [`run`].
pub struct Due(mpsc::UnboundedReceiver<(u64, u64)>);

impl Scheduler {
    /// A scheduler and the queue [`run`] drains.
    pub fn new() -> (Scheduler, Due) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Scheduler { tx }, Due(rx))
    }

    /// Calls the dispatcher for `id` at `due_ms` (at once if it is past).
    pub fn at(&self, due_ms: u64, id: u64) {
        // A closed channel means the hub is shutting down; the store keeps the due time.
        let _ = self.tx.send((due_ms, id));
    }
}

/// Runs until every [`Scheduler`] handle is dropped, calling `dispatch(id)` when each id is due.
pub async fn run(mut due: Due, dispatch: impl Fn(u64)) {
    let mut heap: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
    loop {
        let now = now_ms();
        while let Some(Reverse((at, id))) = heap.peek().copied() {
            if at > now {
                break;
            }
            heap.pop();
            dispatch(id);
        }
        let wait = heap
            .peek()
            .map(|Reverse((at, _))| Duration::from_millis(at.saturating_sub(now)))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            next = due.0.recv() => match next {
                Some(entry) => heap.push(Reverse(entry)),
                None => return,
            },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn dispatches_in_due_order() {
        let (s, due) = Scheduler::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let log = seen.clone();
        let task = tokio::spawn(run(due, move |id| {
            log.lock().unwrap().push(id);
            let _ = done_tx.send(id);
        }));
        let now = now_ms();
        s.at(now + 60, 3);
        s.at(now + 30, 2);
        s.at(0, 1);
        for _ in 0..3 {
            done_rx.recv().await.expect("dispatched");
        }
        assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3]);
        drop(s);
        task.await.unwrap();
    }
}
