//! Which deliveries of each ordered stream (a Kafka partition, a Kinesis shard) are settled, so
//! that only the contiguous settled prefix is committed: when record 7 finishes before record 5,
//! the committed position stays before 5 until 5 and 6 are done. Out-of-order completion
//! (unordered lanes, requeues) never skips a record.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Mutex;

/// Settlement state per stream `L`. Each record is tracked under a position that increases in
/// read order (an offset, or a local counter) and carries a value `T` to commit (the offset, a
/// sequence number).
#[derive(Debug)]
pub struct SettleTracker<L, T> {
    streams: Mutex<HashMap<L, Stream<T>>>,
}

/// Position → (settled, value to commit).
type Stream<T> = BTreeMap<u64, (bool, T)>;

impl<L, T> Default for SettleTracker<L, T> {
    fn default() -> Self {
        Self {
            streams: Mutex::new(HashMap::new()),
        }
    }
}

impl<L: Hash + Eq + Clone, T: Clone> SettleTracker<L, T> {
    /// A record was read and handed to the dispatcher.
    pub fn received(&self, stream: &L, position: u64, value: T) {
        self.streams
            .lock()
            .expect("tracker lock")
            .entry(stream.clone())
            .or_default()
            .insert(position, (false, value));
    }

    /// A record's outcome is durable. Returns the value of the last record of the contiguous
    /// settled prefix when that prefix grew (what to commit), `None` otherwise — including for
    /// a record of a stream that has since been reset.
    pub fn settled(&self, stream: &L, position: u64) -> Option<T> {
        let mut map = self.streams.lock().expect("tracker lock");
        let pending = map.get_mut(stream)?;
        pending.get_mut(&position)?.0 = true;
        let mut last = None;
        while let Some(entry) = pending.first_entry() {
            if !entry.get().0 {
                break;
            }
            last = Some(entry.remove().1);
        }
        last
    }

    /// How many records of `stream` are read and not yet committed.
    pub fn outstanding(&self, stream: &L) -> usize {
        self.streams
            .lock()
            .expect("tracker lock")
            .get(stream)
            .map_or(0, BTreeMap::len)
    }

    /// Forgets streams that changed hands: their records are read again from the committed
    /// position anyway.
    pub fn reset<'a>(&self, streams: impl IntoIterator<Item = &'a L>)
    where
        L: 'a,
    {
        let mut map = self.streams.lock().expect("tracker lock");
        for s in streams {
            map.remove(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commits_only_the_contiguous_prefix() {
        let t = SettleTracker::<i32, i64>::default();
        for o in [5, 6, 7] {
            t.received(&0, o as u64, o);
        }
        assert_eq!(t.settled(&0, 7), None);
        assert_eq!(t.settled(&0, 5), Some(5));
        assert_eq!(t.outstanding(&0), 2);
        assert_eq!(t.settled(&0, 6), Some(7));
        assert_eq!(t.settled(&1, 1), None, "unknown stream");
        t.received(&0, 9, 9);
        t.reset([&0]);
        assert_eq!(t.settled(&0, 9), None, "reset");
        assert_eq!(t.outstanding(&0), 0);
    }

    proptest! {
        /// Whatever order records settle in, a committed value never passes an unsettled
        /// record, never goes backwards, and ends at the last record.
        #[test]
        fn never_commits_past_an_unsettled_record(
            gaps in proptest::collection::vec(1u64..4, 1..60),
            order_seed in proptest::collection::vec(any::<u32>(), 60),
        ) {
            let t = SettleTracker::<&str, u64>::default();
            let mut positions = Vec::new();
            let mut p = 0;
            for g in &gaps {
                p += g;
                positions.push(p);
                t.received(&"s", p, p);
            }
            let mut order: Vec<usize> = (0..positions.len()).collect();
            order.sort_by_key(|&i| order_seed[i % order_seed.len()].wrapping_mul(i as u32 + 1));
            let mut settled = std::collections::BTreeSet::new();
            let mut last = 0;
            for i in order {
                settled.insert(positions[i]);
                if let Some(pos) = t.settled(&"s", positions[i]) {
                    prop_assert!(pos > last, "monotonic");
                    last = pos;
                    for &x in positions.iter().filter(|&&x| x <= pos) {
                        prop_assert!(settled.contains(&x), "committed {pos} past unsettled {x}");
                    }
                }
            }
            prop_assert_eq!(last, *positions.last().unwrap());
        }
    }
}
