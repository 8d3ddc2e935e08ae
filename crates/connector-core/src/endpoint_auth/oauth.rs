//! `HTTP_OAUTH2_*`: an access token from an OAuth2 token endpoint (the client-credentials
//! grant, RFC 6749 §4.4), cached until shortly before it expires and fetched again once when
//! the endpoint answers 401. The exchange itself is the `oauth2` crate's; this module only
//! caches, and carries the requests over the connector's own HTTP client (so `HTTP_CA_FILE`
//! and the proxy variables apply to the token endpoint too).

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::{BodyExt, Full};
use oauth2::{ClientId, ClientSecret, Scope, TokenResponse, TokenUrl};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
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
        let token_url = TokenUrl::new(s.token_url.clone())
            .map_err(|_| "HTTP_OAUTH2_TOKEN_URL: not a URL".to_owned())?;
        let client = oauth2::basic::BasicClient::new(ClientId::new(s.client_id.clone()))
            .set_client_secret(ClientSecret::new(secret.trim().to_owned()))
            .set_token_uri(token_url);
        let http = TokenHttp(self.http.clone());
        let started = Instant::now();
        let response = client
            .exchange_client_credentials()
            .add_scopes(s.scopes.iter().cloned().map(Scope::new))
            .request_async(&http)
            .await
            .map_err(|e| {
                format!(
                    "OAuth2 token request to HTTP_OAUTH2_TOKEN_URL failed: {}",
                    describe(&e)
                )
            })?;
        let mut header =
            HeaderValue::try_from(format!("Bearer {}", response.access_token().secret())).map_err(
                |_| {
                    "OAuth2 token endpoint: the access token is not a valid header value".to_owned()
                },
            )?;
        header.set_sensitive(true);
        let refresh_at = response.expires_in().map(|lifetime| {
            started + lifetime.saturating_sub((lifetime / 10).min(EARLY_REFRESH_MAX))
        });
        let expires_at = response.expires_in().map(|lifetime| started + lifetime);
        tracing::debug!(expires_in = ?response.expires_in(), "OAuth2 access token fetched");
        Ok(Cached {
            header,
            refresh_at,
            expires_at,
        })
    }
}

/// A failed token request's cause, in one line. The server's error code and description are
/// shown (they are not secrets); a body that is not an OAuth2 answer is not.
fn describe<RE: std::error::Error>(
    e: &oauth2::RequestTokenError<RE, oauth2::basic::BasicErrorResponse>,
) -> String {
    match e {
        oauth2::RequestTokenError::ServerResponse(r) => match r.error_description() {
            Some(d) => format!("{} ({d})", r.error()),
            None => r.error().to_string(),
        },
        oauth2::RequestTokenError::Request(e) => e.to_string(),
        oauth2::RequestTokenError::Parse(e, _) => {
            format!("the answer is not a token response ({e})")
        }
        oauth2::RequestTokenError::Other(e) => e.clone(),
    }
}

/// The token requests' transport: the connector's client, one request at a time.
struct TokenHttp(HttpClient);

impl<'c> oauth2::AsyncHttpClient<'c> for TokenHttp {
    type Error = TokenHttpError;
    type Future =
        Pin<Box<dyn Future<Output = Result<oauth2::HttpResponse, TokenHttpError>> + Send + 'c>>;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let request = http::Request::from_parts(parts, Full::new(Bytes::from(body)));
            let exchange = async {
                let response = self
                    .0
                    .request(request)
                    .await
                    .map_err(|e| TokenHttpError(crate::invoker::error_chain(&e)))?;
                let (parts, body) = response.into_parts();
                let body = body
                    .collect()
                    .await
                    .map_err(|e| TokenHttpError(crate::invoker::error_chain(&e)))?
                    .to_bytes();
                Ok(http::Response::from_parts(parts, body.to_vec()))
            };
            tokio::time::timeout(TOKEN_REQUEST_TIMEOUT, exchange)
                .await
                .map_err(|_| {
                    TokenHttpError(format!("no answer within {TOKEN_REQUEST_TIMEOUT:?}"))
                })?
        })
    }
}

/// The token request's transport failure.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct TokenHttpError(String);
