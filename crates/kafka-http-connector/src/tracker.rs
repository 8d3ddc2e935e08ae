//! Which offsets of each partition are settled, so that only the contiguous prefix is committed:
//! when record 7 finishes before record 5, the committed position stays at 5 until 5 and 6 are
//! done. Out-of-order completion (unordered mode, requeues) never skips a record.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// Settlement state per partition of the one subscribed topic.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: Mutex<HashMap<i32, BTreeMap<i64, bool>>>,
}

impl OffsetTracker {
    /// A record was handed to the dispatcher.
    pub fn received(&self, partition: i32, offset: i64) {
        self.partitions
            .lock()
            .expect("tracker lock")
            .entry(partition)
            .or_default()
            .insert(offset, false);
    }

    /// A record's outcome is durable. Returns the new position to commit (the offset after the
    /// last of the contiguous settled prefix) when it moved, `None` otherwise — including for a
    /// record of a partition that has since been revoked.
    pub fn settled(&self, partition: i32, offset: i64) -> Option<i64> {
        let mut map = self.partitions.lock().expect("tracker lock");
        let pending = map.get_mut(&partition)?;
        *pending.get_mut(&offset)? = true;
        let mut next = None;
        while let Some(entry) = pending.first_entry() {
            if !*entry.get() {
                break;
            }
            next = Some(*entry.key() + 1);
            entry.remove();
        }
        next
    }

    /// Forgets partitions that were revoked or newly assigned: their records from an earlier
    /// assignment are redelivered from the committed position anyway.
    pub fn reset(&self, partitions: impl IntoIterator<Item = i32>) {
        let mut map = self.partitions.lock().expect("tracker lock");
        for p in partitions {
            map.remove(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commits_only_the_contiguous_prefix() {
        let t = OffsetTracker::default();
        for o in [5, 6, 7] {
            t.received(0, o);
        }
        assert_eq!(t.settled(0, 7), None);
        assert_eq!(t.settled(0, 5), Some(6));
        assert_eq!(t.settled(0, 6), Some(8));
        assert_eq!(t.settled(1, 1), None, "unknown partition");
        t.received(0, 9);
        t.reset([0]);
        assert_eq!(t.settled(0, 9), None, "revoked");
    }

    proptest! {
        /// Whatever order records settle in, a committed position never passes an unsettled
        /// record, never goes backwards, and ends just after the last record.
        #[test]
        fn never_commits_past_an_unsettled_record(
            gaps in proptest::collection::vec(1i64..4, 1..60),
            order_seed in proptest::collection::vec(any::<u32>(), 60),
        ) {
            let t = OffsetTracker::default();
            let mut offsets = Vec::new();
            let mut o = 0;
            for g in &gaps {
                o += g;
                offsets.push(o);
                t.received(3, o);
            }
            let mut order: Vec<usize> = (0..offsets.len()).collect();
            order.sort_by_key(|&i| order_seed[i % order_seed.len()].wrapping_mul(i as u32 + 1));
            let mut settled = std::collections::BTreeSet::new();
            let mut last = i64::MIN;
            for i in order {
                settled.insert(offsets[i]);
                if let Some(pos) = t.settled(3, offsets[i]) {
                    prop_assert!(pos > last, "monotonic");
                    last = pos;
                    for &x in offsets.iter().filter(|&&x| x < pos) {
                        prop_assert!(settled.contains(&x), "committed {pos} past unsettled {x}");
                    }
                }
            }
            prop_assert_eq!(last, *offsets.last().unwrap() + 1);
        }
    }
}
