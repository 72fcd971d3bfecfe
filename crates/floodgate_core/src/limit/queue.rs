//! A bounded queue with an overflow policy: the outbound queue of every slow-consumer path
//! (event streams and WebSockets alike). It bounds both the count and the bytes of what it
//! holds; when a new item does not fit, the route's policy drops the oldest items, refuses the
//! new one, or reports an overflow for the caller to close the connection.

use crate::config::Overflow;
use std::collections::VecDeque;

/// What an item weighs against the byte bound.
pub(crate) trait Weighed {
    fn weight(&self) -> usize;
}

/// Bounds of a queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimits {
    pub(crate) items: usize,
    pub(crate) bytes: usize,
    pub(crate) overflow: Overflow,
}

/// What became of a pushed item.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued, after dropping this many older items (`dropOldest`).
    Queued { dropped: usize },
    /// Not queued: the queue is full (`dropNewest`, or an item too large to ever fit).
    Refused,
    /// Not queued: the queue is full and the policy is `close`. The queue is left as it is.
    Overflow,
}

pub(crate) struct BoundedQueue<T> {
    items: VecDeque<T>,
    bytes: usize,
    limits: QueueLimits,
}

impl<T: Weighed> BoundedQueue<T> {
    pub(crate) fn new(limits: QueueLimits) -> Self {
        Self {
            items: VecDeque::new(),
            bytes: 0,
            limits,
        }
    }

    pub(crate) fn push(&mut self, item: T) -> Pushed {
        let weight = item.weight();
        let mut dropped = 0;
        while self.items.len() >= self.limits.items || self.bytes + weight > self.limits.bytes {
            match self.limits.overflow {
                Overflow::DropOldest if !self.items.is_empty() => {
                    self.pop();
                    dropped += 1;
                }
                Overflow::DropOldest | Overflow::DropNewest => return Pushed::Refused,
                Overflow::Close => return Pushed::Overflow,
            }
        }
        self.bytes += weight;
        self.items.push_back(item);
        Pushed::Queued { dropped }
    }

    pub(crate) fn pop(&mut self) -> Option<T> {
        let item = self.items.pop_front()?;
        self.bytes -= item.weight();
        Some(item)
    }

    pub(crate) fn front(&self) -> Option<&T> {
        self.items.front()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Items queued.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// The weight of what is queued.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn clear(&mut self) {
        self.items.clear();
        self.bytes = 0;
    }

    /// Gives back the memory of a burst, keeping room for `retained` items.
    pub(crate) fn shrink_to(&mut self, retained: usize) {
        if self.items.capacity() > retained {
            self.items.shrink_to(retained);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Weighed for &'static str {
        fn weight(&self) -> usize {
            self.len()
        }
    }

    fn queue(overflow: Overflow) -> BoundedQueue<&'static str> {
        BoundedQueue::new(QueueLimits {
            items: 3,
            bytes: 8,
            overflow,
        })
    }

    fn drain(queue: &mut BoundedQueue<&'static str>) -> Vec<&'static str> {
        std::iter::from_fn(|| queue.pop()).collect()
    }

    #[test]
    fn drop_oldest_makes_room_by_count_and_by_bytes() {
        let mut q = queue(Overflow::DropOldest);
        for item in ["a", "b", "c"] {
            assert_eq!(q.push(item), Pushed::Queued { dropped: 0 });
        }
        assert_eq!(q.push("d"), Pushed::Queued { dropped: 1 });
        // Six bytes need the room of one more: "b" goes (count first, then bytes).
        assert_eq!(q.push("eeeeee"), Pushed::Queued { dropped: 1 });
        assert_eq!(q.bytes(), 8);
        assert_eq!(q.push("ff"), Pushed::Queued { dropped: 2 });
        assert_eq!(drain(&mut q), ["eeeeee", "ff"]);
        assert_eq!(q.bytes(), 0);
        // An item larger than the whole bound never fits.
        assert_eq!(q.push("123456789"), Pushed::Refused);
        assert!(q.is_empty());
    }

    #[test]
    fn drop_newest_refuses_and_close_reports() {
        let mut q = queue(Overflow::DropNewest);
        for item in ["a", "b", "c"] {
            q.push(item);
        }
        assert_eq!(q.push("d"), Pushed::Refused);
        assert_eq!(drain(&mut q), ["a", "b", "c"]);

        let mut q = queue(Overflow::Close);
        for item in ["a", "b", "c"] {
            q.push(item);
        }
        assert_eq!(q.push("d"), Pushed::Overflow);
        assert_eq!(q.front(), Some(&"a"));
    }
}
