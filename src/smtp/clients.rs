//! Sessions per client address: the cap that keeps one client from taking every slot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Counts open sessions per client address under a fixed cap.
#[derive(Debug)]
pub(crate) struct ClientSlots {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One session's place in [`ClientSlots`]; given back when dropped, however the session ends.
#[derive(Debug)]
pub(crate) struct ClientPermit {
    slots: Arc<ClientSlots>,
    ip: IpAddr,
}

impl ClientSlots {
    /// Slots for at most `limit` concurrent sessions per address.
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(ClientSlots {
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A permit for one more session from `ip`, or `None` when it already has `limit`.
    pub(crate) fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ClientPermit> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(ip).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(ClientPermit {
            slots: self.clone(),
            ip,
        })
    }

    /// Sessions open from `ip` now.
    #[cfg(test)]
    pub(crate) fn open(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for ClientPermit {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                // Forget addresses with no session, so the map stays as small as the load.
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::ClientSlots;

    #[test]
    fn cap_is_per_address_and_permits_come_back() {
        let a = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let b = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        let slots = ClientSlots::new(2);
        let first = slots.try_acquire(a).expect("first session of a");
        let second = slots.try_acquire(a).expect("second session of a");
        assert!(
            slots.try_acquire(a).is_none(),
            "a third session of a is over the cap"
        );
        let other = slots.try_acquire(b).expect("b has its own count");
        assert_eq!((slots.open(a), slots.open(b)), (2, 1));
        drop(first);
        let again = slots
            .try_acquire(a)
            .expect("a dropped permit frees its slot");
        drop((second, again, other));
        assert_eq!((slots.open(a), slots.open(b)), (0, 0));
        assert!(slots.open.lock().expect("not poisoned").is_empty());
    }
}
