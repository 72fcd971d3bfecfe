//! Per-client connection accounting with RAII slots.
//!
//! A slot is a guard: it is released in `Drop`, so a connection that ends in any way (client
//! reset, timeout, server close, even a panic unwinding its task) gives its slot back.
//! IPv6 clients are grouped by /64, since one host usually owns a whole /64.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// The accounting key of a client address: the address itself, or its /64 for IPv6.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Counts open connections per client key and refuses those over `max` (0: no cap).
pub struct ConnectionLimiter {
    max: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// One held slot; dropping it frees the slot.
pub struct Slot {
    limiter: Arc<ConnectionLimiter>,
    key: IpAddr,
}

impl ConnectionLimiter {
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a slot for `ip`, or `None` when that client already holds `max`.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let key = client_key(ip);
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(key).or_insert(0);
        if self.max != 0 && *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Slot {
            limiter: Arc::clone(self),
            key,
        })
    }

    /// Open connections of the client owning `ip`.
    pub fn open_for(&self, ip: IpAddr) -> u32 {
        let open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        open.get(&client_key(ip)).copied().unwrap_or(0)
    }

    /// Distinct clients holding at least one slot (the table never keeps empty entries).
    pub fn tracked_clients(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .limiter
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_frees() {
        let limiter = ConnectionLimiter::new(2);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = limiter.try_acquire(ip).unwrap();
        let b = limiter.try_acquire(ip).unwrap();
        assert!(limiter.try_acquire(ip).is_none());
        assert!(limiter.try_acquire("10.0.0.2".parse().unwrap()).is_some());
        drop(a);
        assert!(limiter.try_acquire(ip).is_some());
        drop(b);
        assert_eq!(limiter.tracked_clients(), 0);
    }

    #[test]
    fn ipv6_grouped_per_64() {
        let limiter = ConnectionLimiter::new(1);
        let _slot = limiter
            .try_acquire("2001:db8:1:2::1".parse().unwrap())
            .unwrap();
        assert!(limiter
            .try_acquire("2001:db8:1:2:ffff::9".parse().unwrap())
            .is_none());
        assert!(limiter
            .try_acquire("2001:db8:1:3::1".parse().unwrap())
            .is_some());
    }

    #[test]
    fn zero_means_unlimited() {
        let limiter = ConnectionLimiter::new(0);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let slots: Vec<_> = (0..1000)
            .map(|_| limiter.try_acquire(ip).unwrap())
            .collect();
        assert_eq!(limiter.open_for(ip), 1000);
        drop(slots);
        assert_eq!(limiter.tracked_clients(), 0);
    }
}
