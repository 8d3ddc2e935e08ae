//! Typed configuration errors: each names the variable and what was expected.

use std::fmt;

/// Why the configuration could not be read. `Display` is one line; it shows the offending value
/// only for variables that are not secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is unset or empty. The text is the Go original's.
    #[error("environment variable not found: {var}")]
    Missing {
        /// The variable's name.
        var: String,
    },
    /// A variable is set but its value is not acceptable.
    #[error("invalid value for {var}: expected {expected}, got {}", Shown(value.as_deref()))]
    Invalid {
        /// The variable's name.
        var: String,
        /// What a valid value looks like.
        expected: String,
        /// The bad value, or `None` when the variable holds a secret and must not be echoed.
        value: Option<String>,
    },
    /// The variables are valid one by one but not together, or a value is refused on purpose.
    #[error("{var}: {message}")]
    Conflict {
        /// The variable (or variables) concerned.
        var: String,
        /// What is wrong, in words.
        message: String,
    },
}

impl ConfigError {
    /// A missing required variable.
    pub fn missing(var: impl Into<String>) -> Self {
        Self::Missing { var: var.into() }
    }

    /// A bad value of a variable that is not a secret: the value is echoed.
    pub fn invalid(var: impl Into<String>, expected: impl Into<String>, value: &str) -> Self {
        Self::Invalid {
            var: var.into(),
            expected: expected.into(),
            value: Some(value.to_owned()),
        }
    }

    /// A bad value of a secret variable: the value is never echoed.
    pub fn invalid_secret(var: impl Into<String>, expected: impl Into<String>) -> Self {
        Self::Invalid {
            var: var.into(),
            expected: expected.into(),
            value: None,
        }
    }

    /// A refused value or combination.
    pub fn conflict(var: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Conflict {
            var: var.into(),
            message: message.into(),
        }
    }

    /// The variable this error is about.
    pub fn var(&self) -> &str {
        match self {
            Self::Missing { var } | Self::Invalid { var, .. } | Self::Conflict { var, .. } => var,
        }
    }
}

/// Renders a value on one line whatever it holds (newlines from secrets mounted as files are
/// common), so the error stays a single line on stderr.
struct Shown<'a>(Option<&'a str>);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => {
                const MAX: usize = 80;
                if v.chars().count() > MAX {
                    let cut: String = v.chars().take(MAX).collect();
                    write!(f, "{:?}…", cut)
                } else {
                    write!(f, "{v:?}")
                }
            }
            None => f.write_str("a value that is not shown (secret)"),
        }
    }
}
