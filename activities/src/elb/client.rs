//! The connection ([`ElbConnection`], no secret in it) and the SDK client built from it: ring-only
//! TLS, SDK retries off, one bound per HTTP attempt, credentials checked before any call;
//! `elb.resolve_connection`, which journals the AWS profile when a run starts.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_elasticloadbalancingv2::config::retry::RetryConfig;
use aws_sdk_elasticloadbalancingv2::config::timeout::TimeoutConfig;
use aws_sdk_elasticloadbalancingv2::config::Region;
use aws_smithy_http_client::tls::rustls_provider::CryptoMode;
use aws_smithy_http_client::tls::Provider;
use serde::{Deserialize, Serialize};
use waymark_engine::activity::{self, Activity, Context};

use super::error::{error_chain, CallSite};
use super::Error;

/// Static credentials for [`ElbClient::with_credentials`] (the AWS SDK's type; its `Debug`
/// redacts the secret).
pub use aws_sdk_elasticloadbalancingv2::config::Credentials;
/// Default bound of one HTTP attempt.
const DEFAULT_CALL_TIMEOUT_MS: u64 = 10_000;
/// Bound of opening a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Which `ELBv2` API to talk to. Holds no secret: credentials come from the standard AWS chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElbConnection {
    /// AWS region, e.g. `us-east-1`.
    pub region: String,
    /// Endpoint URL to use instead of the region's (a sandbox, moto, a VPC endpoint).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Bound of one HTTP attempt in ms (default 10 000); an attempt that takes longer fails
    /// with a retryable timeout.
    #[serde(default)]
    pub call_timeout_ms: Option<u64>,
    /// The AWS profile of the credential chain (`AWS_PROFILE`), resolved when a run starts
    /// ([`ResolveConnection`]) so that every later attempt uses the same one; `None`: the
    /// chain's own choice at each attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

impl ElbConnection {
    /// A connection to `endpoint_url` (or to the region's endpoint when `None`).
    pub fn new(region: impl Into<String>, endpoint_url: Option<String>) -> Self {
        ElbConnection {
            region: region.into(),
            endpoint_url,
            call_timeout_ms: None,
            profile: None,
        }
    }

    /// The endpoint as messages name it.
    pub fn endpoint(&self) -> String {
        match &self.endpoint_url {
            Some(url) => url.clone(),
            None => format!("https://elasticloadbalancing.{}.amazonaws.com", self.region),
        }
    }
}
/// Asks the standard chain for credentials before any call, so that a chain with none fails
/// with that cause (non-retryable, with what to set) instead of the transport error the SDK
/// reports for its last source (IMDS: "failed to load IMDS session token").
async fn check_credentials(
    config: &aws_config::SdkConfig,
    conn: &ElbConnection,
    endpoint: &str,
) -> Result<(), Error> {
    use aws_config::imds::client::error::ImdsError;
    use aws_credential_types::provider::error::CredentialsError;
    use aws_sdk_elasticloadbalancingv2::config::ProvideCredentials;
    let no_credentials = |last_source: String| Error::NoCredentials {
        endpoint: endpoint.to_owned(),
        profile: conn
            .profile
            .as_ref()
            .map_or_else(String::new, |p| format!(" {p}")),
        last_source,
    };
    let Some(provider) = config.credentials_provider() else {
        return Err(no_credentials(String::new()));
    };
    match provider.provide_credentials().await {
        Ok(_) => Ok(()),
        Err(CredentialsError::CredentialsNotLoaded(_)) => Err(no_credentials(String::new())),
        // IMDS is the chain's last source: its error means every other source had nothing, and
        // the instance metadata service gives none either (disabled, refused, no role: the usual
        // case off EC2, where "failed to load IMDS session token" hid the real cause).
        Err(e)
            if matches!(e, CredentialsError::ProviderError(_))
                && std::error::Error::source(&e)
                    .is_some_and(<dyn std::error::Error>::is::<ImdsError>) =>
        {
            let source = std::error::Error::source(&e)
                .map(error_chain)
                .unwrap_or_default();
            Err(no_credentials(format!(
                "; the last source, IMDS, said: {source}"
            )))
        }
        Err(e) => {
            let retryable = matches!(
                e,
                CredentialsError::ProviderTimedOut(_) | CredentialsError::ProviderError(_)
            );
            Err(Error::Credentials {
                endpoint: endpoint.to_owned(),
                detail: error_chain(&e),
                retryable,
            })
        }
    }
}

/// An `ELBv2` API client for one [`ElbConnection`].
#[derive(Clone, Debug)]
pub struct ElbClient {
    pub(super) client: aws_sdk_elasticloadbalancingv2::Client,
    pub(super) endpoint: String,
    pub(super) region: String,
}

impl ElbClient {
    /// A client whose credentials come from the standard AWS chain.
    pub async fn connect(conn: &ElbConnection) -> Result<Self, Error> {
        Self::build(conn, None).await
    }

    /// A client with explicit credentials (tools, tests); the secret stays inside the SDK's
    /// credentials, whose `Debug` redacts it.
    pub async fn with_credentials(
        conn: &ElbConnection,
        credentials: Credentials,
    ) -> Result<Self, Error> {
        Self::build(conn, Some(credentials)).await
    }

    async fn build(conn: &ElbConnection, credentials: Option<Credentials>) -> Result<Self, Error> {
        let endpoint = conn.endpoint();
        if conn.region.trim().is_empty() {
            return Err(Error::Connection {
                endpoint,
                problem: "the region is empty".into(),
            });
        }
        if let Some(url) = &conn.endpoint_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(Error::Connection {
                    endpoint,
                    problem: format!(
                        "endpoint URL {url:?} does not start with http:// or https://"
                    ),
                });
            }
        }
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let call_timeout =
            Duration::from_millis(conn.call_timeout_ms.unwrap_or(DEFAULT_CALL_TIMEOUT_MS));
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT.min(call_timeout))
            .operation_attempt_timeout(call_timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client)
            .region(Region::new(conn.region.clone()))
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts);
        if let Some(url) = &conn.endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        if let Some(profile) = &conn.profile {
            loader = loader.profile_name(profile);
        }
        let explicit = credentials.is_some();
        if let Some(credentials) = credentials {
            loader = loader.credentials_provider(credentials);
        }
        let config = loader.load().await;
        if !explicit {
            check_credentials(&config, conn, &endpoint).await?;
        }
        Ok(ElbClient {
            client: aws_sdk_elasticloadbalancingv2::Client::new(&config),
            endpoint,
            region: conn.region.clone(),
        })
    }

    /// The endpoint as messages name it.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub(super) fn site<'a>(&'a self, operation: &'static str, target: &'a str) -> CallSite<'a> {
        CallSite {
            operation,
            target,
            client: self,
        }
    }
}

/// `elb.resolve_connection`: the connection with the AWS profile of this process's environment
/// (`AWS_PROFILE`) filled in, when the input names none. A workflow calls it once when a run
/// starts, so the profile is journaled with the run and every later step (and compensation,
/// after a restart from another shell or under the daemon) uses the same one. Reads only the
/// environment; credentials are never read or recorded here.
pub struct ResolveConnection;

impl Activity for ResolveConnection {
    const NAME: &'static str = "elb.resolve_connection";
    type Input = ElbConnection;
    type Output = ElbConnection;

    async fn run(
        &self,
        _ctx: Context,
        conn: ElbConnection,
    ) -> Result<ElbConnection, activity::Error> {
        Ok(resolve_connection(conn, std::env::var("AWS_PROFILE").ok()))
    }
}

/// [`ResolveConnection`] with the environment's profile passed in.
pub fn resolve_connection(mut conn: ElbConnection, env_profile: Option<String>) -> ElbConnection {
    if conn.profile.is_none() {
        conn.profile = env_profile.filter(|p| !p.trim().is_empty());
    }
    conn
}
