//! `HTTP_OAUTH2_*`: an access token from an OAuth2 token endpoint (the client-credentials
//! grant, RFC 6749 §4.4), cached until shortly before it expires and fetched again once when
//! the endpoint answers 401, over the connector's own HTTP client (so `HTTP_CA_FILE` and the
//! proxy variables apply to the token endpoint too).
//!
//! The exchange is one form POST and one JSON answer, written here rather than taken from the
//! `oauth2` crate: that crate brings `url` (with its Unicode tables), `chrono` and `rand`, which
//! put the Kafka and Pub/Sub images over their 10 MB budget (docs/deployment.md), for a grant
//! this small.

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, header};
use http_body_util::{BodyExt, Full};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What `HTTP_OAUTH2_*` say. `Debug` leaves the token URL out (it may carry credentials).
#[derive(Clone)]
pub struct OAuth2Settings {
    /// `HTTP_OAUTH2_TOKEN_URL`.
    pub token_url: String,
    /// `HTTP_OAUTH2_CLIENT_ID`.
    pub client_id: String,
    /// `HTTP_OAUTH2_CLIENT_SECRET_FILE`: read at each token request, so a rotated secret is used
    /// from the next one on.
    pub client_secret_file: PathBuf,
    /// `HTTP_OAUTH2_SCOPES`: space- or comma-separated.
    pub scopes: Vec<String>,
}

impl std::fmt::Debug for OAuth2Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth2Settings")
            .field("client_id", &self.client_id)
            .field("client_secret_file", &self.client_secret_file)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// The hyper client the token requests go through.
pub(crate) type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<crate::proxy::ProxyConnector>,
    Full<Bytes>,
>;

/// Limit for one token request.
const TOKEN_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A token is fetched again this long before it expires, at most: a tenth of its lifetime, so a
/// short-lived token is not refetched at every call.
const EARLY_REFRESH_MAX: Duration = Duration::from_secs(60);

/// A failed token request is answered from memory for this long: calls queued behind it (and
/// the ones right after) fail at once instead of each asking the token endpoint again.
const FAILURE_MEMORY: Duration = Duration::from_secs(1);

/// After a 401 has thrown a token away, another 401 within this long does not: an endpoint
/// that refuses every token (wrong audience) must not turn every message into a token grant.
const FORGET_AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// The cached token and how to get a new one.
pub(crate) struct OAuth2Client {
    settings: OAuth2Settings,
    http: HttpClient,
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    token: Option<Cached>,
    /// The last failed token request: when, and why.
    failed: Option<(Instant, String)>,
    /// When a 401 last threw a token away.
    forgotten: Option<Instant>,
}

impl std::fmt::Debug for OAuth2Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth2Client")
            .field("client_id", &self.settings.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Cached {
    header: HeaderValue,
    /// When to fetch a new one; `None` when the server gave no lifetime (kept until a 401).
    refresh_at: Option<Instant>,
    /// When it stops being valid: until then it is still used if a refresh fails.
    expires_at: Option<Instant>,
}

impl OAuth2Client {
    pub(crate) fn new(settings: OAuth2Settings, http: HttpClient) -> Self {
        Self {
            settings,
            http,
            state: tokio::sync::Mutex::default(),
        }
    }

    /// `Bearer <token>`: the cached one while it is fresh, otherwise a new one. One token
    /// request at a time; calls waiting meanwhile get its token, or its failure (see
    /// [`FAILURE_MEMORY`]). A token due for refresh but still valid is used while the refresh
    /// fails.
    pub(crate) async fn authorization(&self) -> Result<HeaderValue, String> {
        let mut state = self.state.lock().await;
        let now = Instant::now();
        if let Some(c) = &state.token
            && c.refresh_at.is_none_or(|at| now < at)
        {
            return Ok(c.header.clone());
        }
        if let Some((at, why)) = &state.failed
            && now.duration_since(*at) < FAILURE_MEMORY
        {
            return Err(why.clone());
        }
        match self.fetch().await {
            Ok(fresh) => {
                let header = fresh.header.clone();
                state.token = Some(fresh);
                state.failed = None;
                Ok(header)
            }
            Err(why) => {
                state.failed = Some((Instant::now(), why.clone()));
                match &state.token {
                    Some(c) if c.expires_at.is_some_and(|at| Instant::now() < at) => {
                        tracing::warn!(error = %why, "OAuth2 token refresh failed; the current token is still valid");
                        Ok(c.header.clone())
                    }
                    _ => Err(why),
                }
            }
        }
    }

    /// The endpoint refused `used`: forget it, unless a newer one already replaced it or a
    /// 401 forgot one less than [`FORGET_AT_MOST_EVERY`] ago. `true` when it was forgotten (a
    /// new one will be asked for).
    pub(crate) async fn refused(&self, used: &HeaderValue) -> bool {
        let mut state = self.state.lock().await;
        let now = Instant::now();
        if state.token.as_ref().is_some_and(|c| c.header != used) {
            // Renewed meanwhile: the next try uses the newer one.
            return true;
        }
        if state
            .forgotten
            .is_some_and(|at| now.duration_since(at) < FORGET_AT_MOST_EVERY)
        {
            return false;
        }
        state.token = None;
        state.failed = None;
        state.forgotten = Some(now);
        true
    }

    async fn fetch(&self) -> Result<Cached, String> {
        let s = &self.settings;
        let secret = std::fs::read_to_string(&s.client_secret_file)
            .map_err(|e| format!("HTTP_OAUTH2_CLIENT_SECRET_FILE: cannot read it: {e}"))?;
        // RFC 6749 §2.3.1: the client authenticates with HTTP Basic, id and secret each
        // form-encoded first.
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            form_encode(&s.client_id),
            form_encode(secret.trim())
        ));
        let mut authorization = HeaderValue::try_from(format!("Basic {basic}"))
            .map_err(|_| "HTTP_OAUTH2_CLIENT_SECRET_FILE: not usable in a header".to_owned())?;
        authorization.set_sensitive(true);
        let mut body = "grant_type=client_credentials".to_owned();
        if !s.scopes.is_empty() {
            body.push_str("&scope=");
            body.push_str(&form_encode(&s.scopes.join(" ")));
        }
        let request = Request::builder()
            .method(Method::POST)
            .uri(&s.token_url)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .header(header::AUTHORIZATION, authorization)
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| "HTTP_OAUTH2_TOKEN_URL: not a URL".to_owned())?;
        let started = Instant::now();
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| crate::invoker::error_chain(&e))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| crate::invoker::error_chain(&e))?
                .to_bytes();
            Ok::<_, String>((parts.status, body))
        };
        let (status, body) = tokio::time::timeout(TOKEN_REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {TOKEN_REQUEST_TIMEOUT:?}"))
            .and_then(|r| r)
            .map_err(|e| format!("OAuth2 token request to HTTP_OAUTH2_TOKEN_URL failed: {e}"))?;
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let text = |k: &str| answer.get(k).and_then(serde_json::Value::as_str);
        if !status.is_success() {
            // RFC 6749 §5.2: `error` and `error_description` say why (they are not secrets;
            // any other body is not shown).
            let why = match (text("error"), text("error_description")) {
                (Some(e), Some(d)) => format!("{e} ({d})"),
                (Some(e), None) => e.to_owned(),
                _ => format!("status {}", status.as_u16()),
            };
            return Err(format!(
                "OAuth2 token request to HTTP_OAUTH2_TOKEN_URL failed: {why}"
            ));
        }
        let (Some(token), Some(kind)) = (text("access_token"), text("token_type")) else {
            return Err(
                "OAuth2 token endpoint: the answer has no access_token and token_type".into(),
            );
        };
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(format!(
                "OAuth2 token endpoint: token type {kind:?}, not Bearer"
            ));
        }
        let mut header = HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| {
            "OAuth2 token endpoint: the access token is not a valid header value".to_owned()
        })?;
        header.set_sensitive(true);
        let lifetime = answer
            .get("expires_in")
            .and_then(serde_json::Value::as_u64)
            .map(Duration::from_secs);
        let refresh_at =
            lifetime.map(|l| started + l.saturating_sub((l / 10).min(EARLY_REFRESH_MAX)));
        let expires_at = lifetime.map(|l| started + l);
        tracing::debug!(expires_in = ?lifetime, "OAuth2 access token fetched");
        Ok(Cached {
            header,
            refresh_at,
            expires_at,
        })
    }
}

/// `application/x-www-form-urlencoded` (RFC 6749 appendix B): unreserved characters as they
/// are, a space as `+`, everything else percent-encoded.
fn form_encode(s: &str) -> String {
    const FORM: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~')
        .remove(b' ');
    utf8_percent_encode(s, FORM).to_string().replace(' ', "+")
}

#[cfg(test)]
mod tests {
    #[test]
    fn form_encoding_is_rfc_6749s() {
        assert_eq!(
            super::form_encode("orders.write orders.read"),
            "orders.write+orders.read"
        );
        assert_eq!(super::form_encode("a+b:c/d~e"), "a%2Bb%3Ac%2Fd~e");
    }
}
