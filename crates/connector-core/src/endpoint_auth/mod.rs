//! Credentials for the calls to `HTTP_ENDPOINT` beyond what the original sent (which was
//! nothing, or Basic auth from the URL): static headers, a bearer token file, a client
//! certificate for mutual TLS and OAuth2 client credentials. Every one is off until its
//! variable is set; with none set, requests are byte-identical to the original's. The variables
//! are documented in docs/configuration.md ("Endpoint authentication").
//!
//! Files are re-read while the connector runs (secrets rotate; see [`watched`]). The headers go
//! only to the endpoint's domain: a redirect that leaves it drops them, as Go drops
//! `Authorization` (docs/compatibility.md, redirects).

mod client_cert;
mod oauth;
mod watched;

pub use client_cert::ClientCert;
pub use oauth::OAuth2Settings;

use crate::config::{ConfigError, Vars};
use http::{HeaderMap, HeaderName, HeaderValue, header};
use oauth::OAuth2Client;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use watched::Watched;

/// Headers as configured: a name may come more than once (each value is sent).
pub type HeaderLines = Vec<(HeaderName, HeaderValue)>;

/// What the endpoint-authentication variables say; [`AuthSettings::is_empty`] when none is set.
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    /// `HTTP_HEADERS`: `Name: value` lines added to every call.
    headers: HeaderLines,
    /// `HTTP_HEADERS_FILE`: the same, from a file.
    headers_file: Option<Watched<HeaderLines>>,
    /// `HTTP_BEARER_TOKEN_FILE`: `Authorization: Bearer <the file's contents>`.
    bearer: Option<Watched<HeaderValue>>,
    /// `HTTP_CLIENT_CERT_FILE` and `HTTP_CLIENT_KEY_FILE`.
    client_cert: Option<ClientCert>,
    /// `HTTP_OAUTH2_TOKEN_URL` and the rest of `HTTP_OAUTH2_*`.
    oauth2: Option<OAuth2Settings>,
    /// `HTTP_AUTH_RELOAD_INTERVAL`: how often the files are read again.
    reload_interval: Duration,
}

impl AuthSettings {
    /// Reads the variables, and the files they name (a file that cannot be read or parsed is
    /// an error naming its variable; its contents are never shown).
    pub fn from_vars(vars: &Vars<'_>) -> Result<Self, ConfigError> {
        let reload_interval =
            vars.duration("HTTP_AUTH_RELOAD_INTERVAL", Duration::from_secs(10))?;
        if reload_interval.is_zero() {
            return Err(ConfigError::invalid(
                "HTTP_AUTH_RELOAD_INTERVAL",
                "a duration above zero such as 10s",
                "0",
            ));
        }
        let headers = match vars.optional("HTTP_HEADERS") {
            Some(text) => parse_header_lines(text.as_bytes())
                .map_err(|e| ConfigError::conflict("HTTP_HEADERS", e))?,
            None => Vec::new(),
        };
        let file = |var: &'static str| vars.optional_trimmed(var).map(PathBuf::from);
        let headers_file = file("HTTP_HEADERS_FILE")
            .map(|path| {
                Watched::load("HTTP_HEADERS_FILE", vec![path], |raw| {
                    parse_header_lines(&raw[0])
                })
                .map_err(|e| ConfigError::conflict("HTTP_HEADERS_FILE", e))
            })
            .transpose()?;
        let bearer = file("HTTP_BEARER_TOKEN_FILE")
            .map(|path| {
                Watched::load("HTTP_BEARER_TOKEN_FILE", vec![path], |raw| bearer(&raw[0]))
                    .map_err(|e| ConfigError::conflict("HTTP_BEARER_TOKEN_FILE", e))
            })
            .transpose()?;
        let client_cert = match (file("HTTP_CLIENT_CERT_FILE"), file("HTTP_CLIENT_KEY_FILE")) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(
                ClientCert::load(cert, key).map_err(|(var, e)| ConfigError::conflict(var, e))?,
            ),
            (Some(_), None) => {
                return Err(ConfigError::conflict(
                    "HTTP_CLIENT_CERT_FILE",
                    "is set but HTTP_CLIENT_KEY_FILE is not",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::conflict(
                    "HTTP_CLIENT_KEY_FILE",
                    "is set but HTTP_CLIENT_CERT_FILE is not",
                ));
            }
        };
        let oauth2 = oauth2_settings(vars)?;

        let authorization_from = [
            bearer.as_ref().map(|_| "HTTP_BEARER_TOKEN_FILE"),
            oauth2.as_ref().map(|_| "HTTP_OAUTH2_TOKEN_URL"),
        ];
        if let [Some(a), Some(b)] = authorization_from {
            return Err(ConfigError::conflict(
                a,
                format!("cannot be combined with {b}: both set Authorization"),
            ));
        }
        if let Some(sets) = authorization_from.into_iter().flatten().next() {
            let in_file = headers_file.as_ref().map(|w| w.get());
            for (var, lines) in [
                ("HTTP_HEADERS", Some(&headers)),
                ("HTTP_HEADERS_FILE", in_file.as_deref()),
            ] {
                if lines.is_some_and(|l| l.iter().any(|(n, _)| n == header::AUTHORIZATION)) {
                    return Err(ConfigError::conflict(
                        var,
                        format!("sets Authorization, which {sets} sets too"),
                    ));
                }
            }
        }
        Ok(Self {
            headers,
            headers_file,
            bearer,
            client_cert,
            oauth2,
            reload_interval,
        })
    }

    /// Whether none of the variables is set (the original's behaviour).
    pub fn is_empty(&self) -> bool {
        !self.sends_headers() && self.client_cert.is_none()
    }

    /// Whether calls carry configured headers (everything but the client certificate, which
    /// goes in the TLS handshake).
    fn sends_headers(&self) -> bool {
        !self.headers.is_empty()
            || self.headers_file.is_some()
            || self.bearer.is_some()
            || self.oauth2.is_some()
    }

    /// The client certificate for TLS handshakes with the endpoint, if one is configured; its
    /// files are re-read from now on.
    pub fn client_cert(&self) -> Option<Arc<ClientCert>> {
        self.client_cert.as_ref().map(|c| {
            c.spawn_reload(self.reload_interval);
            Arc::new(c.clone())
        })
    }
}

fn oauth2_settings(vars: &Vars<'_>) -> Result<Option<OAuth2Settings>, ConfigError> {
    let Some(token_url) = vars.optional_trimmed("HTTP_OAUTH2_TOKEN_URL") else {
        for var in [
            "HTTP_OAUTH2_CLIENT_ID",
            "HTTP_OAUTH2_CLIENT_SECRET_FILE",
            "HTTP_OAUTH2_SCOPES",
        ] {
            if vars.optional_trimmed(var).is_some() {
                return Err(ConfigError::conflict(
                    var,
                    "is set but HTTP_OAUTH2_TOKEN_URL is not",
                ));
            }
        }
        return Ok(None);
    };
    // Checked the way each token request will read it.
    let parsed: Option<http::Uri> = token_url.parse().ok();
    if !parsed
        .is_some_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some())
    {
        // Not echoed: a URL can carry credentials.
        return Err(ConfigError::invalid_secret(
            "HTTP_OAUTH2_TOKEN_URL",
            "an http:// or https:// URL",
        ));
    }
    let client_id = vars
        .optional_trimmed("HTTP_OAUTH2_CLIENT_ID")
        .ok_or_else(|| ConfigError::missing("HTTP_OAUTH2_CLIENT_ID"))?;
    let secret_file = vars
        .optional_trimmed("HTTP_OAUTH2_CLIENT_SECRET_FILE")
        .ok_or_else(|| ConfigError::missing("HTTP_OAUTH2_CLIENT_SECRET_FILE"))?;
    let readable = std::fs::read_to_string(&secret_file).is_ok_and(|s| !s.trim().is_empty());
    if !readable {
        return Err(ConfigError::invalid(
            "HTTP_OAUTH2_CLIENT_SECRET_FILE",
            "a readable file holding the client secret",
            &secret_file,
        ));
    }
    let scopes = vars
        .optional("HTTP_OAUTH2_SCOPES")
        .map(|s| {
            s.split([' ', ','])
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Ok(Some(OAuth2Settings {
        token_url,
        client_id,
        client_secret_file: secret_file.into(),
        scopes,
    }))
}

/// Headers the connector writes itself: configuring them would break the request, or be
/// overwritten.
const RESERVED: [HeaderName; 8] = [
    header::HOST,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    header::UPGRADE,
    header::USER_AGENT,
    header::ACCEPT_ENCODING,
    header::PROXY_AUTHORIZATION,
];

/// `Name: value` lines; blank lines and lines starting with `#` are skipped. Errors give the
/// line number and the name, never a value (values are often keys).
pub fn parse_header_lines(raw: &[u8]) -> Result<HeaderLines, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "not UTF-8 text".to_owned())?;
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("line {n} is not `Name: value`"));
        };
        // The text before the colon is not shown either: a line missing its name can begin
        // with the value.
        let name = HeaderName::try_from(name.trim())
            .map_err(|_| format!("line {n}: not a valid header name before the colon"))?;
        if RESERVED.contains(&name) {
            return Err(format!(
                "line {n}: {name} is written by the connector itself"
            ));
        }
        let mut value = HeaderValue::try_from(value.trim())
            .map_err(|_| format!("line {n}: the value of {name} is not a valid header value"))?;
        value.set_sensitive(true);
        lines.push((name, value));
    }
    Ok(lines)
}

/// `Bearer <token>` from a token file's contents (surrounding whitespace removed).
fn bearer(raw: &[u8]) -> Result<HeaderValue, String> {
    let token = std::str::from_utf8(raw)
        .map(str::trim)
        .map_err(|_| "the token is not UTF-8 text".to_owned())?;
    if token.is_empty() {
        return Err("the file is empty".into());
    }
    let mut value = HeaderValue::try_from(format!("Bearer {token}"))
        .map_err(|_| "the token is not a valid header value".to_owned())?;
    value.set_sensitive(true);
    Ok(value)
}

/// Puts configured credentials on the calls; built by the invoker.
#[derive(Debug)]
pub(crate) struct EndpointAuth {
    headers: HeaderLines,
    headers_file: Option<Watched<HeaderLines>>,
    bearer: Option<Watched<HeaderValue>>,
    oauth: Option<OAuth2Client>,
}

/// The credentials one attempt sends.
#[derive(Debug, Default)]
pub(crate) struct Credentials {
    /// From the variables and files.
    files: HeaderLines,
    /// The OAuth2 token, to forget if the endpoint refuses it.
    oauth: Option<HeaderValue>,
}

impl EndpointAuth {
    /// `None` when nothing is configured; otherwise starts re-reading the files.
    pub(crate) fn new(settings: &AuthSettings, http: oauth::HttpClient) -> Option<Self> {
        if !settings.sends_headers() {
            return None;
        }
        if let Some(w) = &settings.headers_file {
            w.spawn_reload(settings.reload_interval);
        }
        if let Some(w) = &settings.bearer {
            w.spawn_reload(settings.reload_interval);
        }
        Some(Self {
            headers: settings.headers.clone(),
            headers_file: settings.headers_file.clone(),
            bearer: settings.bearer.clone(),
            oauth: settings.oauth2.clone().map(|s| OAuth2Client::new(s, http)),
        })
    }

    /// The headers from the variables and files, as they are now.
    fn configured_headers(&self) -> HeaderLines {
        let mut headers = self.headers.clone();
        if let Some(w) = &self.headers_file {
            // A rotated headers file cannot add a second Authorization to a configured one
            // (refused at start; dropped here).
            let token_configured = self.bearer.is_some() || self.oauth.is_some();
            headers.extend(
                w.get()
                    .iter()
                    .filter(|(n, _)| !(token_configured && n == header::AUTHORIZATION))
                    .cloned(),
            );
        }
        if let Some(w) = &self.bearer {
            headers.push((header::AUTHORIZATION, (*w.get()).clone()));
        }
        headers
    }

    /// What to send now. Fails only when an OAuth2 token cannot be had.
    pub(crate) async fn credentials(&self) -> Result<Credentials, String> {
        let files = self.configured_headers();
        let oauth = match &self.oauth {
            Some(o) => Some(o.authorization().await?),
            None => None,
        };
        Ok(Credentials { files, oauth })
    }

    /// The endpoint answered 401 to `used`: renew what can be renewed (a new OAuth2 token, the
    /// files read now rather than at the next interval). `true` when something changed, so one
    /// more try can succeed.
    pub(crate) async fn refused(&self, used: &Credentials) -> bool {
        let mut renewed = false;
        if let (Some(o), Some(token)) = (&self.oauth, &used.oauth) {
            renewed = o.refused(token).await;
        }
        if let Some(w) = &self.bearer {
            w.reload();
        }
        if let Some(w) = &self.headers_file {
            w.reload();
        }
        // Compared with what was sent, not with what this re-read changed: the periodic
        // re-read may have picked the rotation up after this call read the old file.
        renewed || self.configured_headers() != used.files
    }
}

impl Credentials {
    /// Replaces any header of the same name (the message's included): what is configured wins.
    pub(crate) fn apply(&self, h: &mut HeaderMap) {
        let token = self
            .oauth
            .iter()
            .map(|t| (header::AUTHORIZATION, t.clone()));
        let all: HeaderLines = self.files.iter().cloned().chain(token).collect();
        for (name, _) in &all {
            h.remove(name);
        }
        for (name, value) in all {
            h.append(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lines_parse_and_errors_never_show_a_value() {
        let lines =
            parse_header_lines(b"# a comment\nX-Api-Key: s3cret\n\nX-Tenant:  a b \nX-Tenant: c")
                .unwrap();
        let got: Vec<(String, &str)> = lines
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                ("x-api-key".to_owned(), "s3cret"),
                ("x-tenant".to_owned(), "a b"),
                ("x-tenant".to_owned(), "c")
            ]
        );
        for (bad, says) in [
            (&b"X-Api-Key s3cret"[..], "line 1 is not `Name: value`"),
            (
                b"\nBad Name: s3cret",
                "line 2: not a valid header name before the colon",
            ),
            (
                b"X-Key s3cret:x",
                "line 1: not a valid header name before the colon",
            ),
            (
                b"X-Key: s3cret\x01",
                "line 1: the value of x-key is not a valid header value",
            ),
            (
                b"Host: s3cret",
                "line 1: host is written by the connector itself",
            ),
        ] {
            let e = parse_header_lines(bad).unwrap_err();
            assert_eq!(e, says);
            assert!(!e.contains("s3cret"));
        }
    }

    #[test]
    fn a_bearer_token_is_trimmed_and_marked_sensitive() {
        let v = bearer(b"  abc.def\n").unwrap();
        assert_eq!(v, "Bearer abc.def");
        assert!(v.is_sensitive());
        assert_eq!(bearer(b"\n").unwrap_err(), "the file is empty");
    }
}
