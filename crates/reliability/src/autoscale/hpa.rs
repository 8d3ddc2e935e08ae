//! How many replicas KEDA and the HorizontalPodAutoscaler ask for, given the scaler's metric.
//!
//! KEDA owns the edge at zero: a metric above the activation threshold scales 0 → 1 (or the
//! minimum), and `cooldownPeriod` after the last active poll it scales back to zero. Between,
//! the HPA computes `ceil(metric / target)` (average-value target), keeps the current count
//! while the ratio is within its 10 % tolerance, takes a scale-up at once (the default
//! scale-up stabilisation window is 0) and a scale-down only as far as the highest
//! recommendation of the scale-down stabilisation window. The HPA's scale-up rate policies
//! (double or +4 pods per 15 s) are left out: the runs here never ask for more than that.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A ScaledObject's settings and the HPA behaviour that goes with them.
#[derive(Debug, Clone)]
pub struct Scaling {
    /// The metric's target per replica (KEDA's `lagThreshold`, `value`, `listLength`,
    /// `queueLength`, `shardCount`).
    pub target: f64,
    /// The activation threshold: the metric must be above it to scale from zero.
    pub activation: f64,
    /// `minReplicaCount` (0: scale to zero).
    pub min: usize,
    /// `maxReplicaCount`.
    pub max: usize,
    /// `pollingInterval`: how often the metric is read.
    pub polling: Duration,
    /// `cooldownPeriod`: from the last active poll to zero replicas.
    pub cooldown: Duration,
    /// The HPA's `behavior.scaleDown.stabilizationWindowSeconds`.
    pub stabilization: Duration,
    /// The pod's `terminationGracePeriodSeconds`: SIGTERM, then SIGKILL after this.
    pub grace: Duration,
}

/// The controller's memory between polls.
#[derive(Debug)]
pub struct Hpa {
    scaling: Scaling,
    recommendations: VecDeque<(Instant, usize)>,
    last_active: Option<Instant>,
}

/// The HPA's tolerance: no change while `metric / (target × current)` is within 10 % of 1.
const TOLERANCE: f64 = 0.1;

impl Hpa {
    /// A controller for `scaling`.
    pub fn new(scaling: Scaling) -> Self {
        Self {
            scaling,
            recommendations: VecDeque::new(),
            last_active: None,
        }
    }

    /// The settings.
    pub fn scaling(&self) -> &Scaling {
        &self.scaling
    }

    /// The replicas wanted at `now` for `metric` with `current` replicas running.
    pub fn desired(&mut self, now: Instant, metric: f64, current: usize) -> usize {
        let s = &self.scaling;
        let active = metric > s.activation;
        if active {
            self.last_active = Some(now);
        }
        if current == 0 {
            // KEDA, not the HPA, decides at zero.
            self.recommendations.clear();
            return if active { s.min.max(1) } else { s.min };
        }
        let cooled = self
            .last_active
            .is_none_or(|t| now.duration_since(t) >= s.cooldown);
        if s.min == 0 && !active && cooled {
            self.recommendations.clear();
            return 0;
        }
        let floor = s.min.max(1);
        let ratio = metric / (s.target * current as f64);
        let raw = if (ratio - 1.0).abs() <= TOLERANCE {
            current
        } else {
            (metric / s.target).ceil() as usize
        }
        .clamp(floor, s.max.max(floor));
        self.recommendations.push_back((now, raw));
        while self
            .recommendations
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > s.stabilization)
        {
            self.recommendations.pop_front();
        }
        let down = self
            .recommendations
            .iter()
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(raw);
        if raw > current {
            raw
        } else if down < current {
            down
        } else {
            current
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaling() -> Scaling {
        Scaling {
            target: 10.0,
            activation: 0.0,
            min: 0,
            max: 5,
            polling: Duration::from_secs(1),
            cooldown: Duration::from_secs(30),
            stabilization: Duration::from_secs(60),
            grace: Duration::from_secs(30),
        }
    }

    #[test]
    fn zero_stays_zero_until_the_metric_passes_activation() {
        let mut s = scaling();
        s.activation = 5.0;
        let mut hpa = Hpa::new(s);
        let t = Instant::now();
        assert_eq!(hpa.desired(t, 0.0, 0), 0);
        assert_eq!(hpa.desired(t, 5.0, 0), 0);
        // KEDA activates to one replica; the HPA takes it from there on the next poll.
        assert_eq!(hpa.desired(t, 100.0, 0), 1);
        assert_eq!(hpa.desired(t, 100.0, 1), 5, "ceil(100 / 10) clamped to max");
    }

    #[test]
    fn within_tolerance_nothing_changes() {
        let mut hpa = Hpa::new(scaling());
        let t = Instant::now();
        assert_eq!(hpa.desired(t, 31.0, 3), 3, "31 / 30 is within 10 %");
        assert_eq!(hpa.desired(t, 34.0, 3), 4);
    }

    #[test]
    fn scale_down_waits_for_the_stabilisation_window() {
        let mut hpa = Hpa::new(scaling());
        let t = Instant::now();
        assert_eq!(hpa.desired(t, 40.0, 1), 4);
        let later = t + Duration::from_secs(30);
        assert_eq!(hpa.desired(later, 10.0, 4), 4, "40 was asked 30 s ago");
        let after = t + Duration::from_secs(61);
        assert_eq!(hpa.desired(after, 10.0, 4), 1);
    }

    #[test]
    fn zero_after_the_cooldown_since_the_last_active_poll() {
        let mut hpa = Hpa::new(scaling());
        let t = Instant::now();
        assert_eq!(hpa.desired(t, 20.0, 1), 2);
        assert_eq!(hpa.desired(t + Duration::from_secs(10), 0.0, 2), 2);
        assert_eq!(hpa.desired(t + Duration::from_secs(31), 0.0, 2), 0);
        let mut s = scaling();
        s.min = 1;
        let mut kept = Hpa::new(s);
        assert_eq!(kept.desired(t + Duration::from_secs(100), 0.0, 1), 1);
    }
}
