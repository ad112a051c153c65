//! The event queue of the pure simulations: events ordered by their time,
//! and events at the same time in the order they were pushed, so a seed
//! replays exactly.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

struct Entry<E> {
    at: u64,
    order: u64,
    event: E,
}

impl<E> PartialEq for Entry<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}

impl<E> Eq for Entry<E> {}

impl<E> PartialOrd for Entry<E> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<E> Ord for Entry<E> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

/// Events waiting for their simulated time (in whatever unit the caller
/// counts).
pub struct Timeline<E> {
    heap: BinaryHeap<Reverse<Entry<E>>>,
    next_order: u64,
}

impl<E> Default for Timeline<E> {
    fn default() -> Timeline<E> {
        Timeline {
            heap: BinaryHeap::new(),
            next_order: 0,
        }
    }
}

impl<E> Timeline<E> {
    /// Schedules `event` at `at`, after everything already at `at`.
    pub fn push(&mut self, at: u64, event: E) {
        let order = self.next_order;
        self.next_order += 1;
        self.heap.push(Reverse(Entry { at, order, event }));
    }

    /// The earliest event, with its time, if it is due by `until`.
    pub fn pop_until(&mut self, until: u64) -> Option<(u64, E)> {
        if self.heap.peek()?.0.at > until {
            return None;
        }
        self.heap
            .pop()
            .map(|Reverse(entry)| (entry.at, entry.event))
    }
}
