//! AWS SDK configuration shared by the SQS and Kinesis connectors (reference §1.6): the SDK's
//! default chain (environment, profile files, web identity / IRSA, ECS and EC2 metadata,
//! `AWS_ENDPOINT_URL*`), plus the original's `AWS_REGION` and `AWS_ENDPOINT` overrides.
//!
//! The SDK's HTTP client is built here with rustls on *ring*, the one crypto provider of the
//! workspace, so no connector links aws-lc.

use crate::config::{ConfigError, Env, Vars};
use crate::dispatch::BoxError;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

/// Static keys given under the older variable names: key id, secret, session token.
pub type LegacyKeys = (String, crate::config::Secret, Option<crate::config::Secret>);

/// `AWS_REGION` and `AWS_ENDPOINT`; everything else comes from the SDK's default chain.
#[derive(Debug, Clone, Default)]
pub struct AwsSettings {
    /// `AWS_REGION`: overrides whatever region the chain would find.
    pub region: Option<String>,
    /// `AWS_ENDPOINT`: base endpoint of every service client (LocalStack, moto, a VPC endpoint).
    pub endpoint: Option<String>,
    /// Keys from the older names `AWS_ACCESS_KEY` / `AWS_SECRET_KEY`, which Go's SDK reads when
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` are unset and the Rust SDK does not.
    /// (key id, secret, session token).
    pub legacy_keys: Option<LegacyKeys>,
    /// `HTTPS_PROXY` (`HTTP_PROXY` for an `http://` `AWS_ENDPOINT`) and `NO_PROXY`: Go's SDK
    /// sent AWS calls through them, except to loopback addresses.
    pub proxy: Option<(crate::proxy::Proxy, String)>,
}

impl AwsSettings {
    /// Reads and checks `AWS_REGION` and `AWS_ENDPOINT`.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let vars = Vars::new(env);
        // Go's SDK skips an empty AWS_REGION and takes AWS_DEFAULT_REGION; the Rust SDK would
        // take the empty value as the region, so the fallback is made here.
        let region = match vars.optional_trimmed("AWS_REGION") {
            Some(r) => Some(("AWS_REGION", r)),
            None => vars
                .optional_trimmed("AWS_DEFAULT_REGION")
                .map(|r| ("AWS_DEFAULT_REGION", r)),
        };
        if let Some((var, r)) = &region
            && !r
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ConfigError::invalid(
                *var,
                "a region name such as us-east-1",
                r,
            ));
        }
        let region = region.map(|(_, r)| r);
        let endpoint = vars.optional_trimmed("AWS_ENDPOINT");
        if let Some(e) = &endpoint {
            let ok = url::Url::parse(e)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                return Err(ConfigError::invalid(
                    "AWS_ENDPOINT",
                    "an http:// or https:// URL",
                    e,
                ));
            }
        }
        let legacy_keys = match (
            vars.optional_trimmed("AWS_ACCESS_KEY_ID"),
            vars.optional_trimmed("AWS_ACCESS_KEY"),
        ) {
            (None, Some(id)) => vars
                .optional_trimmed("AWS_SECRET_ACCESS_KEY")
                .or_else(|| vars.optional_trimmed("AWS_SECRET_KEY"))
                .map(|secret| {
                    (
                        id,
                        crate::config::Secret::new(secret),
                        vars.optional_trimmed("AWS_SESSION_TOKEN")
                            .map(crate::config::Secret::new),
                    )
                }),
            _ => None,
        };
        let https = endpoint
            .as_deref()
            .is_none_or(|e| !e.to_ascii_lowercase().starts_with("http://"));
        let target: http::Uri = endpoint
            .as_deref()
            .and_then(|e| e.parse().ok())
            .unwrap_or_else(|| http::Uri::from_static("https://amazonaws.com/"));
        let rules = crate::proxy::ProxyRules::from_env(env, &target, &mut Vec::new())?;
        let proxy = rules
            .for_scheme(https)
            .filter(|p| p.kind == crate::proxy::ProxyKind::Http)
            .map(|p| (p.clone(), rules.no_proxy().to_owned()));
        Ok(Self {
            region,
            endpoint,
            legacy_keys,
            proxy,
        })
    }

    /// [`AwsSettings::load`] for `--check`: the configuration, or the failed check line that
    /// says why there is none.
    pub async fn load_for_check(&self) -> Result<SdkConfig, crate::check::Check> {
        self.load()
            .await
            .map_err(|e| crate::check::Check::fail("broker", Some("AWS_REGION"), e.to_string()))
    }

    /// The SDK's proxy settings for `proxy`: Go's loopback rule added to `NO_PROXY`.
    fn proxy_config(
        &self,
        proxy: &crate::proxy::Proxy,
        no_proxy: &str,
    ) -> Result<aws_smithy_http_client::proxy::ProxyConfig, BoxError> {
        use aws_smithy_http_client::proxy::ProxyConfig;
        let https = self
            .endpoint
            .as_deref()
            .is_none_or(|e| !e.to_ascii_lowercase().starts_with("http://"));
        let uri = proxy.uri.to_string();
        let config = if https {
            ProxyConfig::https(uri.as_str())
        } else {
            ProxyConfig::http(uri.as_str())
        };
        let mut config = config.map_err(|e| format!("{}: {e}", proxy.var))?;
        if let Some((user, password)) = &proxy.credentials {
            config = config.with_basic_auth(user, password);
        }
        // Go never proxies loopback addresses.
        let exempt = "localhost,127.0.0.0/8,::1";
        Ok(config.no_proxy(if no_proxy.is_empty() {
            exempt.to_owned()
        } else {
            format!("{no_proxy},{exempt}")
        }))
    }

    /// Loads the SDK configuration. Fails when no region can be found anywhere, since every
    /// call would fail later with a less helpful message.
    pub async fn load(&self) -> Result<SdkConfig, BoxError> {
        let http = match &self.proxy {
            None => aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
                .build_https(),
            Some((proxy, no_proxy)) => {
                let config = self.proxy_config(proxy, no_proxy)?;
                aws_smithy_http_client::Builder::new().build_with_connector_fn(
                    move |settings, components| {
                        let mut connector = aws_smithy_http_client::Connector::builder();
                        connector.set_connector_settings(settings.cloned());
                        if let Some(components) = components {
                            connector.set_sleep_impl(components.sleep_impl());
                        }
                        connector
                            .proxy_config(config.clone())
                            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
                            .build()
                    },
                )
            }
        };
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
        if let Some(region) = &self.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &self.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some((id, secret, token)) = &self.legacy_keys {
            loader = loader.credentials_provider(aws_credential_types::Credentials::new(
                id,
                secret.expose(),
                token.as_ref().map(|t| t.expose().to_owned()),
                None,
                "AWS_ACCESS_KEY",
            ));
        }
        let config = loader.load().await;
        if config.region().is_none_or(|r| r.as_ref().trim().is_empty()) {
            return Err("no AWS region: set AWS_REGION (or a region in the AWS profile)".into());
        }
        Ok(config)
    }
}

/// A short, log-safe description of an AWS SDK error: the service's error code and message
/// when there is one (the `Display` of an `SdkError` is only "service error").
pub fn describe<E, R>(error: &aws_smithy_runtime_api::client::result::SdkError<E, R>) -> String
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_smithy_runtime_api::client::result::SdkError;
    match error {
        SdkError::ServiceError(e) => {
            let err = e.err();
            match (err.code(), err.message()) {
                (Some(code), Some(msg)) => format!("{code}: {msg}"),
                (Some(code), None) => code.to_owned(),
                _ => err.to_string(),
            }
        }
        other => {
            // The source chain carries the useful part (connection refused, timeout, ...).
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

/// Error codes with which AWS refuses a write for good: the same request cannot succeed later
/// (bad size or content, no permission on the destination or its key).
const REFUSED: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "InvalidParameterValue",
    "InvalidMessageContents",
    "ValidationException",
    "KMS.AccessDeniedException",
    "KMSAccessDeniedException",
    "KMSDisabledException",
    "KMS.DisabledException",
];

/// A failed write as the engine needs it: [`Rejected`](crate::Rejected) when AWS refused it for
/// good (too large when the record of `size` bytes is over the service's `limit`), otherwise the
/// described error, which the engine retries.
pub fn write_error<E, R>(
    error: &aws_smithy_runtime_api::client::result::SdkError<E, R>,
    size: usize,
    limit: usize,
) -> crate::BoxError
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_smithy_runtime_api::client::result::SdkError;
    let text = describe(error);
    match error {
        SdkError::ServiceError(e) if e.err().code().is_some_and(|c| REFUSED.contains(&c)) => {
            if size > limit {
                Box::new(crate::Rejected::too_large(
                    size,
                    &format!("the service's limit of {limit} bytes"),
                ))
            } else {
                Box::new(crate::Rejected::refused(text))
            }
        }
        _ => text.into(),
    }
}
