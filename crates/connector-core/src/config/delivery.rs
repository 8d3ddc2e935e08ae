//! Knobs over a message's life besides the HTTP retries (all new, all off by default): delivery
//! metadata headers, caps on deliveries and age, a rate limit and a circuit breaker toward the
//! function. docs/delivery.md documents them with their Lambda, Knative and Dapr
//! equivalents.

use super::{ConfigError, Vars};
use std::time::Duration;

/// What the connector does with a message besides calling the function.
#[derive(Debug, Clone, Default)]
pub struct DeliverySettings {
    /// `METADATA_HEADERS`: send `Keda-Message-Id`, `Keda-Delivery-Count` and `Keda-Attempt`.
    pub metadata_headers: bool,
    /// `MAX_DELIVERIES`: a message delivered more often than this goes to the error destination
    /// instead of to the function.
    pub max_deliveries: Option<u32>,
    /// `MAX_MESSAGE_AGE`: a message older than this (by its broker timestamp) goes to the error
    /// destination instead of to the function.
    pub max_message_age: Option<Duration>,
    /// `MAX_RATE`: most calls to the function per second, retries included.
    pub max_rate: Option<f64>,
    /// `CIRCUIT_BREAKER_FAILURES` and its cool-offs: stop calling a function that keeps failing.
    pub breaker: Option<BreakerSettings>,
}

/// The circuit breaker's knobs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// `CIRCUIT_BREAKER_FAILURES`: consecutive failed calls (transport error, 5xx, 429) that open it.
    pub failures: u32,
    /// `CIRCUIT_BREAKER_COOLOFF`: the first wait before a probe; doubles after each failed probe.
    pub cooloff: Duration,
    /// `CIRCUIT_BREAKER_MAX_COOLOFF`: the longest wait between probes.
    pub max_cooloff: Duration,
}

impl DeliverySettings {
    /// Reads the variables; every one unset means everything off.
    pub fn from_vars(vars: &Vars<'_>) -> Result<Self, ConfigError> {
        let max_deliveries = match vars.optional_trimmed("MAX_DELIVERIES") {
            None => None,
            Some(_) => Some(vars.int_in_range("MAX_DELIVERIES", 0, 1, i64::from(u32::MAX))? as u32),
        };
        let max_message_age = match vars.optional_trimmed("MAX_MESSAGE_AGE") {
            None => None,
            Some(v) => {
                let age = vars.duration("MAX_MESSAGE_AGE", Duration::ZERO)?;
                if age.is_zero() {
                    return Err(ConfigError::invalid(
                        "MAX_MESSAGE_AGE",
                        "a positive duration such as 10m or 24h",
                        &v,
                    ));
                }
                Some(age)
            }
        };
        let max_rate = match vars.optional_trimmed("MAX_RATE") {
            None => None,
            Some(v) => match v.parse::<f64>() {
                Ok(r) if r.is_finite() && r > 0.0 && r <= 1_000_000.0 => Some(r),
                _ => {
                    return Err(ConfigError::invalid(
                        "MAX_RATE",
                        "calls per second, a number above 0 and at most 1000000 (e.g. 50 or 0.5)",
                        &v,
                    ));
                }
            },
        };
        let breaker = match vars.optional_trimmed("CIRCUIT_BREAKER_FAILURES") {
            None => {
                for var in ["CIRCUIT_BREAKER_COOLOFF", "CIRCUIT_BREAKER_MAX_COOLOFF"] {
                    if vars.optional_trimmed(var).is_some() {
                        return Err(ConfigError::conflict(
                            var,
                            "has no effect without CIRCUIT_BREAKER_FAILURES",
                        ));
                    }
                }
                None
            }
            Some(_) => {
                let failures =
                    vars.int_in_range("CIRCUIT_BREAKER_FAILURES", 0, 1, 1_000_000)? as u32;
                let cooloff = vars.duration("CIRCUIT_BREAKER_COOLOFF", Duration::from_secs(1))?;
                let max_cooloff =
                    vars.duration("CIRCUIT_BREAKER_MAX_COOLOFF", Duration::from_secs(60))?;
                if cooloff.is_zero() {
                    return Err(ConfigError::conflict(
                        "CIRCUIT_BREAKER_COOLOFF",
                        "must be above zero",
                    ));
                }
                if max_cooloff < cooloff {
                    return Err(ConfigError::conflict(
                        "CIRCUIT_BREAKER_MAX_COOLOFF",
                        "must not be smaller than CIRCUIT_BREAKER_COOLOFF",
                    ));
                }
                Some(BreakerSettings {
                    failures,
                    cooloff,
                    max_cooloff,
                })
            }
        };
        Ok(Self {
            metadata_headers: vars.bool("METADATA_HEADERS", false)?,
            max_deliveries,
            max_message_age,
            max_rate,
            breaker,
        })
    }

    /// Whether the engine must count deliveries itself (for brokers that do not).
    pub fn counts_deliveries(&self) -> bool {
        self.metadata_headers || self.max_deliveries.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<DeliverySettings, ConfigError> {
        let env: Vec<(&str, &str)> = pairs.to_vec();
        DeliverySettings::from_vars(&Vars::new(&env))
    }

    #[test]
    fn all_off_by_default() {
        let s = parse(&[]).unwrap();
        assert!(!s.metadata_headers);
        assert_eq!(s.max_deliveries, None);
        assert_eq!(s.max_message_age, None);
        assert_eq!(s.max_rate, None);
        assert_eq!(s.breaker, None);
        assert!(!s.counts_deliveries());
    }

    #[test]
    fn values() {
        let s = parse(&[
            ("METADATA_HEADERS", "true"),
            ("MAX_DELIVERIES", " 5 "),
            ("MAX_MESSAGE_AGE", "1h30m"),
            ("MAX_RATE", "0.5"),
            ("CIRCUIT_BREAKER_FAILURES", "3"),
            ("CIRCUIT_BREAKER_MAX_COOLOFF", "10s"),
        ])
        .unwrap();
        assert!(s.metadata_headers);
        assert_eq!(s.max_deliveries, Some(5));
        assert_eq!(s.max_message_age, Some(Duration::from_secs(5400)));
        assert_eq!(s.max_rate, Some(0.5));
        assert_eq!(
            s.breaker,
            Some(BreakerSettings {
                failures: 3,
                cooloff: Duration::from_secs(1),
                max_cooloff: Duration::from_secs(10),
            })
        );
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, val) in [
            ("MAX_DELIVERIES", "0"),
            ("MAX_DELIVERIES", "many"),
            ("MAX_MESSAGE_AGE", "0"),
            ("MAX_MESSAGE_AGE", "10"),
            ("MAX_RATE", "0"),
            ("MAX_RATE", "-1"),
            ("MAX_RATE", "NaN"),
            ("MAX_RATE", "fast"),
            ("CIRCUIT_BREAKER_FAILURES", "0"),
            ("METADATA_HEADERS", "maybe"),
        ] {
            let e = parse(&[(var, val)]).unwrap_err();
            assert_eq!(e.var(), var, "{var}={val}");
            assert!(!e.to_string().contains('\n'));
        }
        let e = parse(&[("CIRCUIT_BREAKER_COOLOFF", "1s")]).unwrap_err();
        assert_eq!(e.var(), "CIRCUIT_BREAKER_COOLOFF");
        let e = parse(&[
            ("CIRCUIT_BREAKER_FAILURES", "3"),
            ("CIRCUIT_BREAKER_COOLOFF", "1m"),
            ("CIRCUIT_BREAKER_MAX_COOLOFF", "10s"),
        ])
        .unwrap_err();
        assert_eq!(e.var(), "CIRCUIT_BREAKER_MAX_COOLOFF");
    }
}
