//! Offender bans (`ban`): a client — an address group (IPv6 per /64) or a user — that collects
//! `after` refusals within `within` of its first is banned for `for`; a banned address is
//! refused at accept, before any TLS or HTTP work, a banned user (or an address known only from
//! a trusted proxy's headers) at its next request.
//!
//! Two tables, each bounded by `maxEntries` (the `lru` crate): the clients being counted, the
//! least recently struck forgotten first, and the bans, the least recently banned forgotten
//! first (looked up with `peek`, which keeps that order), so a storm of spoofed addresses costs
//! at most the bound. An atomic count of bans lets every accept skip the lock while none is in
//! force. Exempt addresses (`ban.exempt`, and the trusted proxies and load balancers, whose
//! addresses stand for many clients) are never counted.

use crate::config::BanConfig;
use crate::limit::key::{address_key, ClientKey};
use crate::metrics::BanSnapshot;
use ipnet::IpNet;
use lru::LruCache;
use serde::Serialize;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

/// Refusals of one client in its current window.
struct Strikes {
    since: Instant,
    count: u32,
}

struct Tables {
    strikes: LruCache<ClientKey, Strikes>,
    bans: LruCache<ClientKey, Instant>,
}

pub(crate) struct Bans {
    config: BanConfig,
    /// `ban.exempt` and the trusted proxies / load balancers.
    exempt: Vec<IpNet>,
    tables: Mutex<Tables>,
    /// Bans in the table (expired ones included until looked at): 0 skips the lock.
    in_force: AtomicUsize,
    /// With a cluster: where bans decided or lifted here go, to reach the other instances.
    shared: OnceLock<UnboundedSender<BanChange>>,
}

/// A ban decided or lifted on this instance, for the others (`cluster::bans`).
pub(crate) enum BanChange {
    Imposed { client: String, duration: Duration },
    Lifted { client: String },
}

/// One ban, as `server.bans()` lists it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BanEntry {
    /// The address group (`203.0.113.7`, `2001:db8:1:2::/64`) or `user:<id>`.
    pub client: String,
    pub remaining_ms: u64,
}

impl Bans {
    pub(crate) fn new(config: BanConfig, trusted: &[IpNet]) -> Self {
        let bound = NonZeroUsize::new(config.max_entries as usize).unwrap_or(NonZeroUsize::MIN);
        let mut exempt = config.exempt.clone();
        exempt.extend_from_slice(trusted);
        Self {
            config,
            exempt,
            tables: Mutex::new(Tables {
                strikes: LruCache::new(bound),
                bans: LruCache::new(bound),
            }),
            in_force: AtomicUsize::new(0),
            shared: OnceLock::new(),
        }
    }

    /// Sends every ban decided or lifted here to `changes` from now on.
    pub(crate) fn share_with(&self, changes: UnboundedSender<BanChange>) {
        let _ = self.shared.set(changes);
    }

    fn share(&self, change: impl FnOnce() -> BanChange) {
        if let Some(changes) = self.shared.get() {
            let _ = changes.send(change());
        }
    }

    /// Bans `client` for `duration`, as another instance decided; exempt addresses stay
    /// unbanned here too.
    pub(crate) fn impose(&self, client: ClientKey, duration: Duration) {
        if self.exempt(&client) {
            return;
        }
        let mut tables = self.tables();
        tables.strikes.pop(&client);
        if tables
            .bans
            .push(client, Instant::now() + duration)
            .is_none()
        {
            self.in_force.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lifts a ban another instance lifted.
    pub(crate) fn lift(&self, client: &ClientKey) {
        let mut tables = self.tables();
        tables.strikes.pop(client);
        if tables.bans.pop(client).is_some() {
            self.in_force.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn exempt(&self, client: &ClientKey) -> bool {
        match client {
            ClientKey::Address(ip) => self.exempt.iter().any(|net| net.contains(ip)),
            ClientKey::User(_) => false,
        }
    }

    /// Whether connections from `ip` are refused now.
    pub(crate) fn is_banned_address(&self, ip: IpAddr) -> bool {
        self.in_force.load(Ordering::Relaxed) > 0
            && self.is_banned(&ClientKey::Address(address_key(ip)))
    }

    /// Whether `client` is banned now; an expired ban found here is removed.
    pub(crate) fn is_banned(&self, client: &ClientKey) -> bool {
        if self.in_force.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let mut tables = self.tables();
        match tables.bans.peek(client) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                tables.bans.pop(client);
                self.in_force.fetch_sub(1, Ordering::Relaxed);
                false
            }
            None => false,
        }
    }

    /// Counts one refusal of `client`; `true` when it is what banned it.
    pub(crate) fn strike(&self, client: ClientKey) -> bool {
        if self.exempt(&client) {
            return false;
        }
        let now = Instant::now();
        let mut tables = self.tables();
        if tables.bans.peek(&client).is_some_and(|until| *until > now) {
            return false;
        }
        let strikes = tables
            .strikes
            .get_or_insert_mut(client.clone(), || Strikes {
                since: now,
                count: 0,
            });
        if now.duration_since(strikes.since) > self.config.within {
            *strikes = Strikes {
                since: now,
                count: 0,
            };
        }
        strikes.count += 1;
        if strikes.count < self.config.after {
            return false;
        }
        tables.strikes.pop(&client);
        let evicted = tables.bans.push(client.clone(), now + self.config.duration);
        // `push` hands back the evicted entry, or the old value of the same key (replaced).
        if evicted.is_none() {
            self.in_force.fetch_add(1, Ordering::Relaxed);
        }
        drop(tables);
        self.share(|| BanChange::Imposed {
            client: describe(&client),
            duration: self.config.duration,
        });
        true
    }

    /// Lifts the ban (and forgets the strikes) of `client`; `true` if it was banned.
    pub(crate) fn unban(&self, client: &ClientKey) -> bool {
        let mut tables = self.tables();
        tables.strikes.pop(client);
        let lifted = tables.bans.pop(client);
        if lifted.is_some() {
            self.in_force.fetch_sub(1, Ordering::Relaxed);
        }
        drop(tables);
        self.share(|| BanChange::Lifted {
            client: describe(client),
        });
        lifted.is_some_and(|until| until > Instant::now())
    }

    /// The bans in force, most recent first.
    pub(crate) fn list(&self) -> Vec<BanEntry> {
        let now = Instant::now();
        self.tables()
            .bans
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(client, until)| BanEntry {
                client: describe(client),
                remaining_ms: until.duration_since(now).as_millis() as u64,
            })
            .collect()
    }

    /// The tables' sizes for `stats()`.
    pub(crate) fn snapshot(&self) -> BanSnapshot {
        let now = Instant::now();
        let tables = self.tables();
        BanSnapshot {
            in_force: tables
                .bans
                .iter()
                .filter(|(_, until)| **until > now)
                .count(),
            offenders: tables.strikes.len(),
        }
    }
}

/// How a ban names its client: the address group, or `user:<id>`.
pub(crate) fn describe(client: &ClientKey) -> String {
    match client {
        ClientKey::Address(IpAddr::V6(v6)) => format!("{v6}/64"),
        ClientKey::Address(ip) => ip.to_string(),
        ClientKey::User(user) => format!("user:{user}"),
    }
}

/// The client `server.unban(text)` names: an address (grouped as bans group it), an IPv6
/// `/64`, or `user:<id>`.
pub(crate) fn parse_client(text: &str) -> Option<ClientKey> {
    if let Some(user) = text.strip_prefix("user:") {
        return Some(ClientKey::User(user.into()));
    }
    let address = text.strip_suffix("/64").unwrap_or(text);
    address
        .parse::<IpAddr>()
        .ok()
        .map(|ip| ClientKey::Address(address_key(ip)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bans(after: u32, max_entries: u32) -> Bans {
        Bans::new(
            BanConfig {
                after,
                within: Duration::from_secs(10),
                duration: Duration::from_secs(60),
                exempt: vec!["10.0.0.0/8".parse().unwrap()],
                max_entries,
            },
            &["192.0.2.1/32".parse().unwrap()],
        )
    }

    fn address(text: &str) -> ClientKey {
        ClientKey::Address(address_key(text.parse().unwrap()))
    }

    #[tokio::test(start_paused = true)]
    async fn the_threshold_bans_and_the_ban_expires() {
        let bans = bans(3, 100);
        assert!(!bans.strike(address("203.0.113.9")));
        assert!(!bans.strike(address("203.0.113.9")));
        assert!(!bans.is_banned_address("203.0.113.9".parse().unwrap()));
        assert!(bans.strike(address("203.0.113.9")));
        assert!(bans.is_banned_address("203.0.113.9".parse().unwrap()));
        assert!(!bans.is_banned_address("203.0.113.10".parse().unwrap()));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(!bans.is_banned_address("203.0.113.9".parse().unwrap()));
        assert!(bans.list().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn strikes_outside_the_window_start_it_again() {
        let bans = bans(3, 100);
        bans.strike(address("203.0.113.9"));
        bans.strike(address("203.0.113.9"));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!bans.strike(address("203.0.113.9")));
        assert!(!bans.strike(address("203.0.113.9")));
        assert!(bans.strike(address("203.0.113.9")));
    }

    #[tokio::test(start_paused = true)]
    async fn exempt_and_trusted_addresses_are_never_banned() {
        let bans = bans(1, 100);
        assert!(!bans.strike(address("10.1.2.3")));
        assert!(!bans.strike(address("192.0.2.1")));
        assert!(bans.list().is_empty());
        assert!(bans.strike(ClientKey::User("mallory".into())));
        assert_eq!(bans.list()[0].client, "user:mallory");
    }

    #[tokio::test(start_paused = true)]
    async fn ipv6_is_banned_per_64_and_unban_lifts_it() {
        let bans = bans(1, 100);
        assert!(bans.strike(address("2001:db8:1:2::1")));
        assert!(bans.is_banned_address("2001:db8:1:2:ffff::9".parse().unwrap()));
        assert!(!bans.is_banned_address("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(bans.list()[0].client, "2001:db8:1:2::/64");
        assert!(bans.unban(&parse_client("2001:db8:1:2::/64").unwrap()));
        assert!(!bans.is_banned_address("2001:db8:1:2::1".parse().unwrap()));
        assert!(!bans.unban(&parse_client("2001:db8:1:2::1").unwrap()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_storm_of_spoofed_addresses_stays_within_the_bound() {
        let bans = bans(1, 1000);
        for n in 0..100_000u32 {
            let ip = IpAddr::from((0xC633_0000u32 | n).to_be_bytes());
            bans.strike(ClientKey::Address(ip));
        }
        assert_eq!(bans.list().len(), 1000);
        assert!(bans.in_force.load(Ordering::Relaxed) <= 1000);
        // The most recently banned are the ones kept.
        let last = IpAddr::from((0xC633_0000u32 | 99_999).to_be_bytes());
        assert!(bans.is_banned_address(last));
        let first = IpAddr::from(0xC633_0000u32.to_be_bytes());
        assert!(!bans.is_banned_address(first));
        let bans = self::bans(5, 1000);
        for n in 0..100_000u32 {
            bans.strike(ClientKey::Address(IpAddr::from(n.to_be_bytes())));
        }
        assert_eq!(bans.snapshot().offenders, 1000);
    }
}
