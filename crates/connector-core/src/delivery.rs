//! What the engine knows about a message's life across deliveries: its stable id, how often it
//! was delivered, and the rules that send it to the error destination instead of to the
//! function (`MAX_DELIVERIES`, `MAX_MESSAGE_AGE`, a response the destination refuses).

use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Request header with the message's stable id (`METADATA_HEADERS`).
pub const MESSAGE_ID_HEADER: &str = "Keda-Message-Id";
/// Request header with how many times the message was delivered, this delivery included.
pub const DELIVERY_COUNT_HEADER: &str = "Keda-Delivery-Count";
/// Request header with the number of this HTTP call for this delivery (1 for the first).
pub const ATTEMPT_HEADER: &str = "Keda-Attempt";

/// The id of a message whose broker gives none (a Redis list entry, an AMQP message without a
/// `message-id`): SHA-256 of the source name and the payload, so every delivery of the same
/// bytes from the same source has the same id (and equal payloads share one).
pub fn derived_id(topic: &str, payload: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update((topic.len() as u64).to_be_bytes());
    h.update(topic.as_bytes());
    h.update(payload);
    hex::encode(&h.finalize()[..16])
}

/// Why a message went to the error destination other than the function failing; written as
/// `Reason` in the error document's `ConnectorDetails` and in its `ErrorString`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Diversion {
    /// Delivered more than `MAX_DELIVERIES` times; the function was not called this time.
    MaxDeliveries {
        /// This delivery's number.
        count: u32,
        /// `MAX_DELIVERIES`.
        max: u32,
    },
    /// Older than `MAX_MESSAGE_AGE`; the function was not called.
    MaxMessageAge {
        /// The message's age.
        age: Duration,
        /// `MAX_MESSAGE_AGE`.
        max: Duration,
    },
    /// The function answered, but the response destination refused the response for good.
    ResponseRejected(String),
}

impl Diversion {
    /// Every [`Diversion::code`], so the metrics can export each reason from the start.
    pub const CODES: [&'static str; 3] = ["max-deliveries", "max-message-age", "response-rejected"];

    /// The documented `Reason` value.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MaxDeliveries { .. } => Self::CODES[0],
            Self::MaxMessageAge { .. } => Self::CODES[1],
            Self::ResponseRejected(_) => Self::CODES[2],
        }
    }

    /// One sentence for `ErrorString` and the log.
    pub fn detail(&self) -> String {
        match self {
            Self::MaxDeliveries { count, max } => format!(
                "delivery {count} is over MAX_DELIVERIES={max}; the function was not called"
            ),
            Self::MaxMessageAge { age, max } => format!(
                "message is {}s old, over MAX_MESSAGE_AGE={}s; the function was not called",
                age.as_secs(),
                max.as_secs()
            ),
            Self::ResponseRejected(why) => {
                format!("the response could not be written to RESPONSE_TOPIC: {why}")
            }
        }
    }
}

/// A write the broker refused for good (a record over its size limit, no permission on the
/// destination): retrying the same write cannot succeed. A [`Publisher`](crate::Publisher)
/// returns it (boxed) so the engine writes an error document saying why instead of requeueing
/// the message forever; any other error is taken as transient.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct Rejected {
    /// What the broker said, without payload bytes.
    pub reason: String,
    /// Whether the record was too large (the error document then leaves the response body out).
    pub too_large: bool,
}

impl Rejected {
    /// A record of `size` bytes over `limit`, a description of the limit it broke (e.g.
    /// `the server's max_payload`).
    pub fn too_large(size: usize, limit: &str) -> Self {
        Self {
            reason: format!("record of {size} bytes is over {limit}"),
            too_large: true,
        }
    }

    /// Refused for another lasting reason (e.g. a permission), described by `reason`.
    pub fn refused(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            too_large: false,
        }
    }

    /// `error` as a [`Rejected`], when it is one.
    pub fn find(error: &crate::BoxError) -> Option<&Self> {
        error.downcast_ref::<Self>()
    }
}

/// `MAX_MESSAGE_AGE`: the diversion for a message published at `published_at`, if it is too old.
pub fn too_old(
    published_at: Option<SystemTime>,
    max: Option<Duration>,
    now: SystemTime,
) -> Option<Diversion> {
    let (at, max) = (published_at?, max?);
    let age = now.duration_since(at).unwrap_or_default();
    (age > max).then_some(Diversion::MaxMessageAge { age, max })
}

/// Most messages remembered; the oldest entry is forgotten beyond this. Entries leave when
/// their message is acknowledged, so only requeued messages stay long.
const REMEMBERED: usize = 100_000;

#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    deliveries: u32,
    unwritable: u32,
}

/// Deliveries and unwritable outcomes counted by this process, per message id: the delivery
/// count for brokers that keep none (and a floor for those that do), and the step of a
/// message's requeue backoff.
#[derive(Debug, Default)]
pub struct DeliveryCounts {
    inner: Mutex<(HashMap<String, Seen>, VecDeque<String>)>,
    /// Whether anything is remembered: every acknowledgement asks to forget its message, and
    /// with nothing counted (the rules off, no failed writes) that must not take the lock.
    any: std::sync::atomic::AtomicBool,
}

impl DeliveryCounts {
    /// Counts a delivery of `id`; returns how many this process has seen.
    pub fn delivered(&self, id: &str) -> u32 {
        self.update(id, |s| {
            s.deliveries = s.deliveries.saturating_add(1);
            s.deliveries
        })
    }

    /// Counts a requeue of `id` because nothing could be written; returns how many in a row.
    pub fn unwritable(&self, id: &str) -> u32 {
        self.update(id, |s| {
            s.unwritable = s.unwritable.saturating_add(1);
            s.unwritable
        })
    }

    /// `id` was acknowledged: nothing more to remember.
    pub fn forget(&self, id: &str) {
        use std::sync::atomic::Ordering;
        if !self.any.load(Ordering::Relaxed) {
            return;
        }
        let mut guard = self.inner.lock().expect("counts lock");
        guard.0.remove(id);
        if guard.0.is_empty() {
            guard.1.clear();
            self.any.store(false, Ordering::Relaxed);
        }
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut Seen) -> u32) -> u32 {
        let mut guard = self.inner.lock().expect("counts lock");
        let (map, order) = &mut *guard;
        if !map.contains_key(id) {
            // Forgotten ids are still in `order`: drop them while making room.
            while map.len() >= REMEMBERED {
                match order.pop_front() {
                    Some(old) => {
                        map.remove(&old);
                    }
                    None => break,
                }
            }
            if order.len() >= 2 * REMEMBERED {
                order.retain(|k| map.contains_key(k));
            }
            order.push_back(id.to_owned());
            self.any.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        f(map.entry(id.to_owned()).or_default())
    }
}

/// The delay before requeueing a message none of whose outcomes could be written, the `step`th
/// time in a row: 1 s, doubling, at most 256 s.
pub fn unwritable_delay(step: u32) -> Duration {
    Duration::from_secs(1u64 << step.saturating_sub(1).min(8)).min(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_distinguish_sources() {
        assert_eq!(derived_id("q", b"m"), derived_id("q", b"m"));
        assert_ne!(derived_id("q", b"m"), derived_id("r", b"m"));
        assert_ne!(derived_id("qm", b""), derived_id("q", b"m"));
        assert_eq!(derived_id("q", b"m").len(), 32);
    }

    #[test]
    fn counts_until_forgotten() {
        let c = DeliveryCounts::default();
        assert_eq!(c.delivered("a"), 1);
        assert_eq!(c.delivered("a"), 2);
        assert_eq!(c.unwritable("a"), 1);
        assert_eq!(c.delivered("b"), 1);
        c.forget("a");
        assert_eq!(c.delivered("a"), 1);
    }

    #[test]
    fn backoff_grows_to_a_cap() {
        let d: Vec<u64> = (1..=10).map(|s| unwritable_delay(s).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 16, 32, 64, 128, 256, 256]);
        assert_eq!(unwritable_delay(u32::MAX).as_secs(), 256);
    }

    #[test]
    fn age_rule() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let max = Some(Duration::from_secs(60));
        assert_eq!(too_old(None, max, now), None);
        assert_eq!(too_old(Some(now), None, now), None);
        assert_eq!(too_old(Some(now - Duration::from_secs(60)), max, now), None);
        assert!(matches!(
            too_old(Some(now - Duration::from_secs(61)), max, now),
            Some(Diversion::MaxMessageAge { .. })
        ));
        // A clock behind the broker's is not "old".
        assert_eq!(too_old(Some(now + Duration::from_secs(5)), max, now), None);
    }
}
