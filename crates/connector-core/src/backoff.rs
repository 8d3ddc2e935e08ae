//! Reconnect pacing shared by every connector that holds a broker connection.

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use std::time::Duration;

/// Exponential delays with jitter between reconnect attempts; [`reset`](Self::reset) after a
/// connection has been established so the next outage starts small again.
#[derive(Debug)]
pub struct ReconnectBackoff {
    builder: ExponentialBuilder,
    current: ExponentialBackoff,
    max: Duration,
}

impl ReconnectBackoff {
    /// Delays start at `min` and double up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        let builder = ExponentialBuilder::new()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self {
            current: builder.build(),
            builder,
            max,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.current.next().unwrap_or(self.max)
    }

    /// Starts over from the smallest delay.
    pub fn reset(&mut self) {
        self.current = self.builder.build();
    }
}

impl Default for ReconnectBackoff {
    /// 500 ms doubling up to 30 s.
    fn default() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(30))
    }
}
