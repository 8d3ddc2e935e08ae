//! Typed readers over an [`Env`]: each reader knows the variable's name, so every error names it.

use super::{ConfigError, Env};
use std::time::Duration;

/// Reads variables from an [`Env`] with the original's conventions: a variable set to the empty
/// string counts as unset, and values are not trimmed unless a reader says so.
#[derive(Clone, Copy)]
pub struct Vars<'a> {
    env: &'a dyn Env,
}

impl std::fmt::Debug for Vars<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vars { .. }")
    }
}

impl<'a> Vars<'a> {
    /// Wraps a lookup.
    pub fn new(env: &'a dyn Env) -> Self {
        Self { env }
    }

    /// Every set variable whose name starts with `prefix`, as (name, value), sorted by name.
    pub fn with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let mut keys: Vec<String> = self
            .env
            .keys()
            .into_iter()
            .filter(|k| k.starts_with(prefix))
            .collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter_map(|k| self.env.get(&k).map(|v| (k, v)))
            .collect()
    }

    /// The value, or `None` when unset or empty.
    pub fn optional(&self, var: &str) -> Option<String> {
        self.env.get(var).filter(|v| !v.is_empty())
    }

    /// The value with surrounding whitespace removed, or `None` when that leaves nothing.
    /// For values that come from Kubernetes secrets, which often end in a newline.
    pub fn optional_trimmed(&self, var: &str) -> Option<String> {
        self.env
            .get(var)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// The value; unset or empty is [`ConfigError::Missing`].
    pub fn required(&self, var: &str) -> Result<String, ConfigError> {
        self.optional(var).ok_or_else(|| ConfigError::missing(var))
    }

    /// A Go-style duration (`300ms`, `30s`, `1m30s`, `0`), trimmed, not negative.
    pub fn duration(&self, var: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.optional_trimmed(var) {
            None => Ok(default),
            Some(v) => parse_go_duration(&v).ok_or_else(|| {
                ConfigError::invalid(
                    var,
                    "a non-negative duration such as 500ms, 30s, 2m or 1h30m",
                    &v,
                )
            }),
        }
    }

    /// A boolean: `true/false`, `t/f`, `1/0`, `yes/no`, `on/off`, any case, trimmed.
    pub fn bool(&self, var: &str, default: bool) -> Result<bool, ConfigError> {
        match self.optional_trimmed(var) {
            None => Ok(default),
            // Go's strconv.ParseBool forms (`t`, `F`, ...) as KEDA and the Go clients read
            // them, plus yes/no and on/off.
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "t" | "1" | "yes" | "on" => Ok(true),
                "false" | "f" | "0" | "no" | "off" => Ok(false),
                _ => Err(ConfigError::invalid(var, "true or false", &v)),
            },
        }
    }

    /// A whole number in `min..=max`, trimmed.
    pub fn int_in_range(
        &self,
        var: &str,
        default: i64,
        min: i64,
        max: i64,
    ) -> Result<i64, ConfigError> {
        match self.optional_trimmed(var) {
            None => Ok(default),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(ConfigError::invalid(
                    var,
                    format!("a whole number from {min} to {max}"),
                    &v,
                )),
            },
        }
    }

    /// One of a fixed set of words (case-insensitive, trimmed); returns the matching entry.
    pub fn choice<T: Copy>(
        &self,
        var: &str,
        default: T,
        choices: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        match self.optional_trimmed(var) {
            None => Ok(default),
            Some(v) => choices
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(&v))
                .map(|(_, t)| *t)
                .ok_or_else(|| {
                    let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
                    ConfigError::invalid(var, format!("one of {}", names.join(", ")), &v)
                }),
        }
    }
}

/// Parses an integer the way Go's `strconv.ParseInt(s, 0, 64)` does: optional sign, then
/// decimal, `0x` hex, `0o` or leading-`0` octal, `0b` binary, with `_` between digits.
/// `MAX_RETRIES` has always accepted all of these, so a drop-in must too.
pub fn parse_go_int(s: &str) -> Option<i64> {
    let (negative, rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = rest.to_ascii_lowercase();
    let (radix, digits, prefixed) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d, true)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d, true)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d, true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..], true)
    } else {
        (10, lower.as_str(), false)
    };
    // Underscores only between digits, or right after a base prefix (Go's rule).
    let bytes = digits.as_bytes();
    if bytes.is_empty() || bytes.last() == Some(&b'_') {
        return None;
    }
    if bytes[0] == b'_' && !prefixed {
        return None;
    }
    if digits.contains("__") {
        return None;
    }
    let clean: String = digits.chars().filter(|&c| c != '_').collect();
    // One sign, before any prefix: `from_str_radix` would take a second `+` (`++1`, `0x+1`).
    if clean.is_empty() || !clean.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let magnitude = u64::from_str_radix(&clean, radix).ok()?;
    if negative {
        if magnitude > i64::MAX as u64 + 1 {
            None
        } else {
            Some((magnitude as i64).wrapping_neg())
        }
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// Parses a duration in Go's `time.ParseDuration` syntax (`1h30m`, `1.5s`, `300ms`, `2us`, `0`).
/// Negative durations are refused: no knob here has a meaning for them.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return None;
    }
    let mut total_ns: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_end);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return None;
        }
        let value: f64 = num.parse().ok()?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let ns_per_unit = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total_ns += value * ns_per_unit;
        rest = next;
    }
    if !total_ns.is_finite() || total_ns > u64::MAX as f64 {
        return None;
    }
    Some(Duration::from_nanos(total_ns.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_ints() {
        for (s, want) in [
            ("0", Some(0)),
            ("3", Some(3)),
            ("-1", Some(-1)),
            ("+7", Some(7)),
            ("0x1F", Some(31)),
            ("0X1f", Some(31)),
            ("0o17", Some(15)),
            ("017", Some(15)),
            ("0b101", Some(5)),
            ("1_000", Some(1000)),
            ("0x_1F", Some(31)),
            ("_1", None),
            ("1_", None),
            ("1__0", None),
            ("08", None),
            ("", None),
            ("-", None),
            ("abc", None),
            ("1.5", None),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775808", None),
        ] {
            assert_eq!(parse_go_int(s), want, "input {s:?}");
        }
    }

    #[test]
    fn go_durations() {
        for (s, want) in [
            ("0", Some(Duration::ZERO)),
            ("30s", Some(Duration::from_secs(30))),
            ("1m30s", Some(Duration::from_secs(90))),
            ("1h30m", Some(Duration::from_secs(5400))),
            ("1.5s", Some(Duration::from_millis(1500))),
            ("300ms", Some(Duration::from_millis(300))),
            ("2us", Some(Duration::from_micros(2))),
            ("10ns", Some(Duration::from_nanos(10))),
            ("", None),
            ("30", None),
            ("-1s", None),
            ("1d", None),
            ("s", None),
            ("1..2s", None),
        ] {
            assert_eq!(parse_go_duration(s), want, "input {s:?}");
        }
    }
}
