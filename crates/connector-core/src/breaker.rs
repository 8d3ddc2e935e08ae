//! The circuit breaker toward the function (`CIRCUIT_BREAKER_FAILURES`): after that many
//! consecutive failed calls (a transport error, a 5xx or a 429) no new call starts; after a
//! cool-off one call probes the function, and the cool-off doubles (up to
//! `CIRCUIT_BREAKER_MAX_COOLOFF`) while probes fail; the first call that gets an answer closes it.
//!
//! A call that fails while the circuit is open does not use up its message's retries: the
//! message is held, not written off as an error document, because the function being down says
//! nothing about the message (docs/delivery.md).

use crate::config::BreakerSettings;
use crate::telemetry::Metrics;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Shared by every call of the process.
#[derive(Debug)]
pub struct CircuitBreaker {
    settings: BreakerSettings,
    state: Mutex<State>,
    changed: Notify,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    open: Option<Open>,
}

#[derive(Debug)]
struct Open {
    until: Instant,
    cooloff: Duration,
    probing: bool,
}

/// Permission for one call; report how it went with [`Pass::record`].
#[derive(Debug)]
pub struct Pass<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    recorded: bool,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings, metrics: Arc<Metrics>) -> Self {
        Self {
            settings,
            state: Mutex::default(),
            changed: Notify::new(),
            metrics,
        }
    }

    /// Waits until a call may start: at once while closed; while open, until the cool-off has
    /// passed and no other call is probing.
    pub async fn admit(&self) -> Pass<'_> {
        loop {
            let notified = self.changed.notified();
            let wait = {
                let mut st = self.state.lock().expect("breaker lock");
                match &mut st.open {
                    None => return self.pass(false),
                    Some(o) if o.probing => None,
                    Some(o) if Instant::now() >= o.until => {
                        o.probing = true;
                        return self.pass(true);
                    }
                    Some(o) => Some(o.until),
                }
            };
            match wait {
                Some(until) => tokio::select! {
                    () = tokio::time::sleep_until(until) => {}
                    () = notified => {}
                },
                None => notified.await,
            }
        }
    }

    /// Whether calls are held right now.
    pub fn is_open(&self) -> bool {
        self.state.lock().expect("breaker lock").open.is_some()
    }

    fn pass(&self, probe: bool) -> Pass<'_> {
        Pass {
            breaker: self,
            probe,
            recorded: false,
        }
    }

    fn record(&self, probe: bool, answered: bool) -> bool {
        let mut st = self.state.lock().expect("breaker lock");
        if answered {
            st.failures = 0;
            if st.open.take().is_some() {
                self.metrics.circuit_open.set(0);
                tracing::info!("the function answers again; circuit breaker closed");
                self.changed.notify_waiters();
            }
            return false;
        }
        st.failures = st.failures.saturating_add(1);
        let threshold = self.settings.failures;
        let tripped = st.failures >= threshold;
        match &mut st.open {
            Some(o) if probe => {
                o.cooloff = (o.cooloff * 2).min(self.settings.max_cooloff);
                o.until = Instant::now() + o.cooloff;
                o.probing = false;
                tracing::warn!(
                    probe_in = ?o.cooloff,
                    "probe call failed; circuit breaker stays open"
                );
                self.changed.notify_waiters();
                true
            }
            // Started before the circuit opened and failed too: held like the rest.
            Some(_) => true,
            None if tripped => {
                let cooloff = self.settings.cooloff;
                st.open = Some(Open {
                    until: Instant::now() + cooloff,
                    cooloff,
                    probing: false,
                });
                self.metrics.circuit_open.set(1);
                self.metrics.circuit_opened.inc();
                tracing::warn!(
                    consecutive_failures = threshold,
                    probe_in = ?cooloff,
                    "the function keeps failing; circuit breaker open, calls are held"
                );
                true
            }
            None => false,
        }
    }
}

impl Pass<'_> {
    /// Records the call: `answered` is false for a transport error, a 5xx or a 429. Returns
    /// whether the circuit is open now, in which case a failed call is held: it does not count
    /// against its message's retries.
    pub fn record(mut self, answered: bool) -> bool {
        self.recorded = true;
        self.breaker.record(self.probe, answered)
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        // A probe abandoned mid-call (its task aborted on shutdown) must not block every other.
        if self.probe && !self.recorded {
            let mut st = self.breaker.state.lock().expect("breaker lock");
            if let Some(o) = &mut st.open {
                o.probing = false;
            }
            self.breaker.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(failures: u32) -> CircuitBreaker {
        CircuitBreaker::new(
            BreakerSettings {
                failures,
                cooloff: Duration::from_secs(1),
                max_cooloff: Duration::from_secs(4),
            },
            Arc::new(Metrics::new()),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_probes_with_growing_cooloff_and_closes() {
        let b = breaker(3);
        assert!(!b.admit().await.record(false));
        // An answer (even a 4xx) resets the count.
        assert!(!b.admit().await.record(true));
        assert!(!b.admit().await.record(false));
        assert!(!b.admit().await.record(false));
        assert!(
            b.admit().await.record(false),
            "third consecutive failure opens"
        );
        assert!(b.is_open());
        let start = Instant::now();
        let mut probes_at = Vec::new();
        for _ in 0..4 {
            let pass = b.admit().await;
            probes_at.push(Instant::now() - start);
            assert!(pass.record(false));
        }
        // 1 s, then doubling, capped at 4 s.
        let secs: Vec<u64> = probes_at.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 3, 7, 11]);
        let pass = b.admit().await;
        assert!(!pass.record(true));
        assert!(!b.is_open());
        // Closed again: calls go at once.
        let t = Instant::now();
        drop(b.admit().await);
        assert_eq!(Instant::now(), t);
    }

    #[tokio::test(start_paused = true)]
    async fn one_probe_at_a_time_and_an_abandoned_probe_frees_the_next() {
        let b = Arc::new(breaker(1));
        assert!(b.admit().await.record(false));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let probe = b.admit().await;
        let waiting = {
            let b = b.clone();
            tokio::spawn(async move {
                let pass = b.admit().await;
                pass.record(true)
            })
        };
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(
            !waiting.is_finished(),
            "a second call started during a probe"
        );
        drop(probe);
        assert!(!waiting.await.unwrap());
        assert!(!b.is_open());
    }
}
