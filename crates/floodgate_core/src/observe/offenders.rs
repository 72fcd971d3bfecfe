//! The top offenders: the clients (users, else addresses) refused most often, in a table of
//! bounded size.
//!
//! Hand-written because it is a few lines over a `Vec`: the Space-Saving algorithm (Metwally
//! et al., 2005). When the table is full, a new client replaces the entry with the smallest
//! count and inherits that count plus one, so a client refused often enough always enters the
//! table, counts are never under the truth, and over-counting is bounded by the evicted
//! count. A flood from many addresses costs one scan of `capacity` entries per refusal.

use serde::Serialize;

/// One client in the table, as `stats().topOffenders` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Offender {
    /// The client's address, when the refusal knew it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Refusals counted for this client (at most the evicted entry's count too high).
    pub count: u64,
    /// The reason of its latest refusal.
    pub last_reason: &'static str,
    /// When it was last refused, in ms since the Unix epoch.
    pub last_time: f64,
}

#[derive(Default)]
pub struct Offenders {
    capacity: usize,
    entries: Vec<Offender>,
}

impl Offenders {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Vec::with_capacity(capacity.min(1024)),
        }
    }

    /// Counts one refusal of a client known by `user`, else by `address`.
    pub fn record(
        &mut self,
        address: Option<&str>,
        user: Option<&str>,
        reason: &'static str,
        time: f64,
    ) {
        if self.capacity == 0 || (address.is_none() && user.is_none()) {
            return;
        }
        let same = |entry: &Offender| match user {
            Some(user) => entry.user.as_deref() == Some(user),
            None => entry.user.is_none() && entry.address.as_deref() == address,
        };
        if let Some(entry) = self.entries.iter_mut().find(|entry| same(entry)) {
            entry.count += 1;
            entry.last_reason = reason;
            entry.last_time = time;
            if address.is_some() {
                entry.address = address.map(str::to_owned);
            }
            return;
        }
        let fresh = Offender {
            address: address.map(str::to_owned),
            user: user.map(str::to_owned),
            count: 1,
            last_reason: reason,
            last_time: time,
        };
        if self.entries.len() < self.capacity {
            self.entries.push(fresh);
            return;
        }
        let smallest = self
            .entries
            .iter_mut()
            .min_by_key(|entry| entry.count)
            .expect("a full table has entries");
        let inherited = smallest.count;
        *smallest = Offender {
            count: inherited + 1,
            ..fresh
        };
    }

    /// The entries, most refused first.
    pub fn top(&self) -> Vec<Offender> {
        let mut top = self.entries.clone();
        top.sort_by_key(|entry| std::cmp::Reverse(entry.count));
        top
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_user_else_address_most_refused_first() {
        let mut table = Offenders::new(4);
        for _ in 0..3 {
            table.record(Some("127.0.0.2"), None, "connection_limit", 1.0);
        }
        table.record(Some("127.0.0.3"), Some("alice"), "rate_limited", 2.0);
        table.record(Some("127.0.0.4"), Some("alice"), "sse_limit", 3.0);
        table.record(None, None, "out_of_files", 4.0);
        let top = table.top();
        assert_eq!(top.len(), 2);
        assert_eq!(top[0].address.as_deref(), Some("127.0.0.2"));
        assert_eq!(top[0].count, 3);
        assert_eq!(top[1].user.as_deref(), Some("alice"));
        assert_eq!(top[1].count, 2);
        assert_eq!(top[1].last_reason, "sse_limit");
        assert_eq!(top[1].address.as_deref(), Some("127.0.0.4"));
    }

    #[test]
    fn a_full_table_keeps_its_size_and_lets_a_heavy_newcomer_in() {
        let mut table = Offenders::new(3);
        for (n, address) in ["a", "b", "c"].iter().enumerate() {
            for _ in 0..=n {
                table.record(Some(address), None, "x", 0.0);
            }
        }
        for _ in 0..10 {
            table.record(Some("heavy"), None, "x", 0.0);
        }
        let top = table.top();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0].address.as_deref(), Some("heavy"));
        assert!(top[0].count >= 10);
        // Many one-off addresses never grow the table.
        for n in 0..1000 {
            table.record(Some(&n.to_string()), None, "x", 0.0);
        }
        assert_eq!(table.top().len(), 3);
    }
}
