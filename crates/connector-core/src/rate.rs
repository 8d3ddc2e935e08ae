//! `MAX_RATE`: calls to the function spaced evenly at the configured rate.
//!
//! A token bucket holding one token (the generic cell rate algorithm with no burst): each call
//! takes the next free slot, so the rate holds over any window, and nothing is spent while the
//! connector is idle. Written here rather than taken from a rate-limiting crate because it is a
//! dozen lines on tokio's timer and the images are measured against a size budget.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Spaces calls `1 / rate` seconds apart, across every task sharing it.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    next_free: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// A limiter for `per_second` calls a second (above zero).
    pub fn new(per_second: f64) -> Self {
        Self {
            interval: Duration::from_secs_f64(1.0 / per_second),
            next_free: Mutex::new(None),
        }
    }

    /// Waits for this call's slot.
    pub async fn acquire(&self) {
        let slot = {
            let mut next = self.next_free.lock().expect("rate limiter lock");
            let now = Instant::now();
            let slot = next.map_or(now, |n| n.max(now));
            *next = Some(slot + self.interval);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spaces_calls_evenly_from_the_first() {
        let limiter = std::sync::Arc::new(RateLimiter::new(4.0));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..9 {
            let l = limiter.clone();
            tasks.push(tokio::spawn(async move {
                l.acquire().await;
                Instant::now()
            }));
        }
        let mut at: Vec<Duration> = Vec::new();
        for t in tasks {
            at.push(t.await.unwrap() - start);
        }
        at.sort();
        // The first goes at once, the ninth two seconds later: 4 a second.
        assert_eq!(at[0], Duration::ZERO);
        assert_eq!(at[8], Duration::from_secs(2));
        // Idle time is not saved up into a burst.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let idle = Instant::now();
        limiter.acquire().await;
        limiter.acquire().await;
        assert_eq!(Instant::now() - idle, Duration::from_millis(250));
    }
}
