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
        Ok(Self {
            region,
            endpoint,
            legacy_keys,
        })
    }

    /// Loads the SDK configuration. Fails when no region can be found anywhere, since every
    /// call would fail later with a less helpful message.
    pub async fn load(&self) -> Result<SdkConfig, BoxError> {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
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
