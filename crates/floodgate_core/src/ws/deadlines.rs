//! Session deadlines (idle, ping, pong, rate pauses, send stalls, closing) kept for the whole
//! hub by one task, instead of a tokio `Sleep` per socket.
//!
//! A `Sleep` costs an idle socket a 100-byte allocation and its instant, for a deadline that is
//! seconds away and moves with every message. Here a session files its id under the tick
//! (`TICK`) of its nearest deadline and keeps only that tick; one sweeper task per hub sleeps
//! until the earliest filed tick and wakes the sessions filed there, which check their own
//! deadlines as they always did. A deadline that moves later (a message resets the idle
//! timer) is not refiled: the old entry wakes the session, which then files the new one, so a
//! busy socket touches this map once per deadline, not once per message. A deadline that moves
//! earlier is filed again (a spurious wake is harmless). `tokio_util::time::DelayQueue` would
//! need one owning task and a message per insert and per reset, and keys of its own per entry.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Deadlines are rounded up to this: sessions due in the same tick are woken together.
const TICK: Duration = Duration::from_millis(10);

/// A point in time as a count of ticks since the hub's epoch.
pub type Tick = u64;

/// The filed deadlines of every session of a hub.
pub struct Deadlines {
    epoch: Instant,
    /// Session ids by the tick at which they want waking.
    filed: Mutex<BTreeMap<Tick, Vec<u64>>>,
    /// An entry earlier than the sweeper's next wake-up was filed.
    earlier: Arc<Notify>,
    sweeping: AtomicBool,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            filed: Mutex::default(),
            earlier: Arc::new(Notify::new()),
            sweeping: AtomicBool::new(false),
        }
    }
}

impl Deadlines {
    /// The first tick at or after `at`.
    pub fn tick(&self, at: Instant) -> Tick {
        let since = at.saturating_duration_since(self.epoch).as_nanos();
        since.div_ceil(TICK.as_nanos()) as Tick
    }

    /// The tick that `now` is in (entries up to it are due).
    pub fn now(&self) -> Tick {
        (Instant::now()
            .saturating_duration_since(self.epoch)
            .as_nanos()
            / TICK.as_nanos()) as Tick
    }

    /// `at` as milliseconds since the epoch: how sessions keep their instants in 8 bytes.
    pub fn millis(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// The instant `millis` milliseconds after the epoch.
    pub fn at(&self, millis: u64) -> Instant {
        self.epoch + Duration::from_millis(millis)
    }

    fn instant(&self, tick: Tick) -> Instant {
        self.epoch + TICK * u32::try_from(tick).unwrap_or(u32::MAX)
    }

    /// Files session `id` to be woken at `tick`; `true` when the sweeper must be started
    /// (the first entry ever).
    pub fn file(&self, tick: Tick, id: u64) -> bool {
        let mut filed = self.filed.lock().unwrap_or_else(|p| p.into_inner());
        let earliest = filed.keys().next().copied();
        filed.entry(tick).or_default().push(id);
        drop(filed);
        if earliest.is_none_or(|earliest| tick < earliest) {
            self.earlier.notify_one();
        }
        !self.sweeping.swap(true, Ordering::AcqRel)
    }

    /// Takes the ids due by now, and when the next entry is due.
    pub fn due(&self) -> (Vec<u64>, Option<Instant>) {
        let now = self.now();
        let mut filed = self.filed.lock().unwrap_or_else(|p| p.into_inner());
        let later = filed.split_off(&(now + 1));
        let due = std::mem::replace(&mut *filed, later);
        let next = filed.keys().next().map(|&tick| self.instant(tick));
        drop(filed);
        (due.into_values().flatten().collect(), next)
    }

    /// Signalled when an entry earlier than every other is filed (a permit is kept if the
    /// sweeper is not waiting yet, so none is missed), and when the hub goes.
    pub fn earlier(&self) -> Arc<Notify> {
        Arc::clone(&self.earlier)
    }
}

impl Drop for Deadlines {
    /// The sweeper waits on `earlier`: let it see the hub is gone.
    fn drop(&mut self) {
        self.earlier.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sessions_are_handed_back_at_their_tick_and_no_sooner() {
        let deadlines = Deadlines::default();
        let start = Instant::now();
        // The first entry asks for the sweeper; later ones do not.
        assert!(deadlines.file(deadlines.tick(start + Duration::from_millis(25)), 1));
        assert!(!deadlines.file(deadlines.tick(start + Duration::from_millis(5)), 2));
        assert!(!deadlines.file(deadlines.tick(start + Duration::from_secs(5)), 3));
        assert_eq!(deadlines.due(), (vec![], Some(deadlines.at(10))));
        tokio::time::advance(Duration::from_millis(10)).await;
        // 25 ms is rounded up to the 30 ms tick: never woken before the deadline.
        assert_eq!(deadlines.due(), (vec![2], Some(deadlines.at(30))));
        tokio::time::advance(Duration::from_millis(19)).await;
        assert_eq!(deadlines.due().0, Vec::<u64>::new());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(deadlines.due(), (vec![1], Some(deadlines.at(5000))));
    }

    #[test]
    fn instants_round_trip_as_milliseconds() {
        let deadlines = Deadlines::default();
        let at = deadlines.at(1234);
        assert_eq!(deadlines.millis(at), 1234);
        assert_eq!(deadlines.tick(at), 124);
    }
}
