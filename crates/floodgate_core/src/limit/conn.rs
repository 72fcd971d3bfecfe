//! Per-client connection accounting with RAII slots.
//!
//! A slot is a guard: it is released in `Drop`, so a connection that ends in any way (client
//! reset, timeout, server close, even a panic unwinding its task) gives its slot back.
//! Keys are `limit::key`'s: client addresses (IPv6 grouped per /64), or users.

use crate::limit::key::address_key;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Counts open connections per key (a client address, or a user) and refuses those over
/// `max` (0: no cap).
pub struct ConnectionLimiter<K: Hash + Eq + Clone = IpAddr> {
    max: u32,
    open: Mutex<HashMap<K, u32>>,
}

/// One held slot; dropping it frees the slot.
pub struct Slot<K: Hash + Eq + Clone = IpAddr> {
    limiter: Arc<ConnectionLimiter<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Slot<K> {
    /// Whom the slot counts against.
    pub fn key(&self) -> &K {
        &self.key
    }
}

impl<K: Hash + Eq + Clone> ConnectionLimiter<K> {
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<K, u32>> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a slot for `key`, or `None` when that key already holds `max`.
    pub fn try_acquire_key(self: &Arc<Self>, key: K) -> Option<Slot<K>> {
        let mut open = self.table();
        let count = open.entry(key.clone()).or_insert(0);
        if self.max != 0 && *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Slot {
            limiter: Arc::clone(self),
            key,
        })
    }

    /// Takes a slot for `key` whatever the cap: the connection was admitted elsewhere (a
    /// cluster-wide lease) and is only counted here.
    pub fn acquire_key_uncapped(self: &Arc<Self>, key: K) -> Slot<K> {
        *self.table().entry(key.clone()).or_insert(0) += 1;
        Slot {
            limiter: Arc::clone(self),
            key,
        }
    }

    /// A slot for `key`: capped (`try_acquire_key`), or only counted when `capped` is false.
    pub fn acquire_key(self: &Arc<Self>, key: K, capped: bool) -> Option<Slot<K>> {
        if capped {
            self.try_acquire_key(key)
        } else {
            Some(self.acquire_key_uncapped(key))
        }
    }

    #[cfg(test)]
    /// Slots held by `key`.
    pub fn open_for_key(&self, key: &K) -> u32 {
        self.table().get(key).copied().unwrap_or(0)
    }

    #[cfg(test)]
    /// Distinct keys holding at least one slot (the table never keeps empty entries).
    pub fn tracked_clients(&self) -> usize {
        self.table().len()
    }
}

impl ConnectionLimiter<IpAddr> {
    /// Takes a slot for the client owning `ip`.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        self.try_acquire_key(address_key(ip))
    }

    #[cfg(test)]
    /// Open connections of the client owning `ip`.
    pub fn open_for(&self, ip: IpAddr) -> u32 {
        self.open_for_key(&address_key(ip))
    }
}

impl<K: Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut open = self.limiter.table();
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
