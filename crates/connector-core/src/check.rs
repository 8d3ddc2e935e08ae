//! `--check`: a preflight for the swap. With the pod's own environment it parses the
//! configuration exactly as a start does, connects to the broker and looks — without consuming,
//! creating or moving anything — at what the first start would find and do, and opens a
//! connection to `HTTP_ENDPOINT` (TCP, through the proxy that applies, and the TLS handshake)
//! without sending a request, so no function ever runs because of a check. One line per check
//! (`ok`, `warn`, `fail`, naming the variable), or JSON with `--json`; exit 0 when nothing
//! failed.
//!
//! The broker part is each connector's [`Connector::check`](crate::Connector::check); the
//! library adds the configuration and endpoint checks to every connector, custom ones included.

use crate::config::Settings;
use std::time::Duration;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// As the swap needs it.
    Ok,
    /// Works, with something the user should know (e.g. checkpoints only in memory).
    Warn,
    /// The connector would not work: it would stop at start, or lose or never see messages.
    Fail,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "fail",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The outcome.
    pub status: Status,
    /// What was looked at: `configuration`, `endpoint`, `source`, `consumer`, ...
    pub what: String,
    /// The variable it depends on, when one does.
    pub variable: Option<String>,
    /// What was found, or what is wrong, in a sentence.
    pub detail: String,
}

impl Check {
    fn new(status: Status, what: &str, variable: Option<&str>, detail: impl Into<String>) -> Self {
        Self {
            status,
            what: what.to_owned(),
            variable: variable.map(str::to_owned),
            detail: detail.into(),
        }
    }
    /// A check that passed.
    pub fn ok(what: &str, variable: Option<&str>, detail: impl Into<String>) -> Self {
        Self::new(Status::Ok, what, variable, detail)
    }
    /// A check that passed with something to know.
    pub fn warn(what: &str, variable: Option<&str>, detail: impl Into<String>) -> Self {
        Self::new(Status::Warn, what, variable, detail)
    }
    /// A check that failed.
    pub fn fail(what: &str, variable: Option<&str>, detail: impl Into<String>) -> Self {
        Self::new(Status::Fail, what, variable, detail)
    }

    /// The one-line text form: `ok   endpoint (HTTP_ENDPOINT): connected, TLS handshake done`.
    pub fn line(&self) -> String {
        let variable = self
            .variable
            .as_deref()
            .map(|v| format!(" ({v})"))
            .unwrap_or_default();
        format!(
            "{:<4} {}{variable}: {}",
            self.status.word(),
            self.what,
            self.detail
        )
    }

    /// The JSON form.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "status": self.status.word(),
            "check": self.what,
            "variable": self.variable,
            "detail": self.detail,
        })
    }
}

/// Connects to `HTTP_ENDPOINT` as a call would — resolving it, through the proxy that applies,
/// with the TLS handshake for https — and sends nothing.
pub async fn endpoint(settings: &Settings) -> Check {
    use tower_service::Service;
    let common = &settings.common;
    let rules = std::sync::Arc::new(settings.http.proxy.clone());
    let via = rules
        .for_uri(&common.endpoint_uri)
        .map(|p| format!(" through the proxy from {}", p.var))
        .unwrap_or_default();
    let mut connector = crate::invoker::connector(common, &settings.http, rules);
    let connecting = async {
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
        connector.call(common.endpoint_uri.clone()).await
    };
    let tls = if common.endpoint_uri.scheme_str() == Some("https") {
        ", TLS handshake done"
    } else {
        ""
    };
    match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Ok(Ok(_connection)) => Check::ok(
            "endpoint",
            Some("HTTP_ENDPOINT"),
            format!("connected{via}{tls}; no request sent"),
        ),
        Ok(Err(e)) => Check::fail(
            "endpoint",
            Some("HTTP_ENDPOINT"),
            format!("cannot connect{via}: {}", crate::invoker::error_chain(&*e)),
        ),
        Err(_) => Check::fail(
            "endpoint",
            Some("HTTP_ENDPOINT"),
            format!("no connection within 10 s{via}"),
        ),
    }
}

/// Prints `checks` (text lines, or one JSON document) to stdout; true when none failed.
#[allow(clippy::print_stdout)]
pub fn report(checks: &[Check], json: bool) -> bool {
    let passed = checks.iter().all(|c| c.status != Status::Fail);
    if json {
        let doc = serde_json::json!({
            "ok": passed,
            "checks": checks.iter().map(Check::json).collect::<Vec<_>>(),
        });
        println!("{doc}");
    } else {
        for c in checks {
            println!("{}", c.line());
        }
    }
    passed
}
