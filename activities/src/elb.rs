//! AWS Elastic Load Balancing v2 activities: register and deregister a target (waiting for it to
//! turn healthy), and read and set the weights of a listener's or rule's forward action.
//!
//! Every activity checks before it acts, so a retry after a crash never repeats an effect:
//!
//! | activity | checks first | acts | output |
//! |---|---|---|---|
//! | [`RegisterTarget`] (`elb.register_target`) | `DescribeTargetHealth` of the target | `RegisterTargets`, then polls `DescribeTargetHealth` until `healthy` | [`RegisterTargetOutput`] |
//! | [`DeregisterTarget`] (`elb.deregister_target`) | `DescribeTargetHealth` of the target | `DeregisterTargets` (not when unregistered, or healthy with `keep_if_healthy`) | [`DeregisterTargetOutput`] |
//! | [`ReadTrafficWeights`] (`elb.read_traffic_weights`) | — | `DescribeListeners` / `DescribeRules` | [`Weights`] |
//! | [`SetTrafficWeights`] (`elb.set_traffic_weights`) | the current weights | `DescribeTargetGroups` (they exist), `ModifyListener` / `ModifyRule`, then reads back | [`SetTrafficWeightsOutput`] |
//!
//! [`DeregisterTarget`] is the compensation of [`RegisterTarget`] ([`RegisterTargetInput::compensation`]);
//! a workflow reads the weights with [`ReadTrafficWeights`] before changing them and registers
//! [`SetTrafficWeights`] with the weights it read as the compensation of the change.
//!
//! Connection: the region and an optional endpoint URL come from the input ([`ElbConnection`]);
//! credentials come from the standard AWS chain (environment, profile, web identity, container,
//! instance metadata) and never appear in an input, an output or an error text. Tools and tests
//! that hold explicit credentials use [`ElbClient::with_credentials`] and the activities'
//! `run_with` methods. The HTTP client is hyper with rustls on ring.
//!
//! Retries: the SDK's own retries are turned off, so that every attempt is one the engine journals
//! and retries under its policy; [`Error`] says which failures are worth another attempt. Each HTTP
//! attempt is bounded by [`ElbConnection::call_timeout_ms`].

use std::collections::BTreeMap;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_elasticloadbalancingv2::config::retry::RetryConfig;
use aws_sdk_elasticloadbalancingv2::config::timeout::TimeoutConfig;
use aws_sdk_elasticloadbalancingv2::config::Region;
use aws_sdk_elasticloadbalancingv2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, ForwardActionConfig, TargetDescription, TargetGroupTuple,
};
use aws_smithy_http_client::tls::rustls_provider::CryptoMode;
use aws_smithy_http_client::tls::Provider;
use serde::{Deserialize, Serialize};
use waymark_engine::activity::{self, Activity, Context};
use waymark_engine::runtime::EngineBuilder;

/// Static credentials for [`ElbClient::with_credentials`] (the AWS SDK's type; its `Debug`
/// redacts the secret).
pub use aws_sdk_elasticloadbalancingv2::config::Credentials;

/// The system named in every message.
const SYSTEM: &str = "ELBv2";
/// Default bound of one HTTP attempt.
const DEFAULT_CALL_TIMEOUT_MS: u64 = 10_000;
/// Bound of opening a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Reason `ELBv2` gives for a target that is not in the target group.
const NOT_REGISTERED: &str = "Target.NotRegistered";

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

/// An `ELBv2` failure, classified by [`Error::is_retryable`]. Every message names `ELBv2`, the
/// resource (ARN or target id), the endpoint and what to check.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The connection settings are unusable.
    #[error("ELBv2 at {endpoint}: {problem}; check the connection's region and endpoint URL")]
    Connection {
        /// The endpoint.
        endpoint: String,
        /// What is wrong.
        problem: String,
    },
    /// The call could not be built (a bug or an unusable input).
    #[error("ELBv2 {operation} on {target} at {endpoint}: the request could not be built: {detail}; check the input")]
    Request {
        /// The API operation.
        operation: &'static str,
        /// The resource acted on.
        target: String,
        /// The endpoint.
        endpoint: String,
        /// The SDK's explanation.
        detail: String,
    },
    /// No connection could be made or it broke (refused, reset, DNS).
    #[error("ELBv2 {operation} on {target}: cannot reach {endpoint}: {detail}; check that the endpoint is up and reachable (network, proxy, VPC endpoint)")]
    Unreachable {
        /// The API operation.
        operation: &'static str,
        /// The resource acted on.
        target: String,
        /// The endpoint.
        endpoint: String,
        /// The transport's explanation.
        detail: String,
    },
    /// The call took longer than its bound.
    #[error("ELBv2 {operation} on {target}: no answer from {endpoint} in time ({detail}); check the endpoint's latency or raise call_timeout_ms")]
    Timeout {
        /// The API operation.
        operation: &'static str,
        /// The resource acted on.
        target: String,
        /// The endpoint.
        endpoint: String,
        /// The SDK's explanation.
        detail: String,
    },
    /// The API refused the call for its rate.
    #[error("ELBv2 {operation} on {target} at {endpoint} was throttled ({detail}); it will be retried; check the account's ELBv2 API rate if it persists")]
    Throttled {
        /// The API operation.
        operation: &'static str,
        /// The resource acted on.
        target: String,
        /// The endpoint.
        endpoint: String,
        /// The error code and message.
        detail: String,
    },
    /// The service failed (HTTP 5xx).
    #[error("ELBv2 {operation} on {target} at {endpoint} failed on the service side (HTTP {status}, {detail}); it will be retried; check the AWS health dashboard if it persists")]
    Service {
        /// The API operation.
        operation: &'static str,
        /// The resource acted on.
        target: String,
        /// The endpoint.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// The error code and message.
        detail: String,
    },
    /// The resource does not exist.
    #[error("ELBv2 {operation} on {target} at {endpoint}: {detail}; check that the ARN or target id exists in region {region} of this account")]
    NotFound {
        /// The API operation.
        operation: &'static str,
        /// The resource acted on.
        target: String,
        /// The endpoint.
        endpoint: String,
        /// The region.
        region: String,
        /// The error code and message.
        detail: String,
    },
    /// The credentials were refused or lack a permission.
    #[error("ELBv2 {operation} on {target} at {endpoint} was denied ({detail}); check the credentials of the standard AWS chain and their IAM permission elasticloadbalancing:{operation}")]
    Denied {
        /// The API operation.
        operation: &'static str,
        /// The resource acted on.
        target: String,
        /// The endpoint.
        endpoint: String,
        /// The error code and message.
        detail: String,
    },
    /// The API rejected the call's parameters (HTTP 4xx).
    #[error("ELBv2 {operation} on {target} at {endpoint} was rejected (HTTP {status}, {detail}); check the input")]
    Rejected {
        /// The API operation.
        operation: &'static str,
        /// The resource acted on.
        target: String,
        /// The endpoint.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// The error code and message.
        detail: String,
    },
    /// The answer could not be understood.
    #[error("ELBv2 {operation} on {target}: the answer of {endpoint} (HTTP {status}) could not be read: {detail}; check that the endpoint URL points at an ELBv2 API")]
    BadResponse {
        /// The API operation.
        operation: &'static str,
        /// The resource acted on.
        target: String,
        /// The endpoint.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// The SDK's explanation.
        detail: String,
    },
    /// The target did not become healthy in time.
    #[error("ELBv2 target {target_id} in target group {target_group_arn} at {endpoint} is {health} after {waited_secs} s, not healthy; check the target's health check (port, security groups, the service on the target)")]
    NotHealthy {
        /// The target id.
        target_id: String,
        /// The target group.
        target_group_arn: String,
        /// The endpoint.
        endpoint: String,
        /// The last state, with its reason and description.
        health: String,
        /// How long it waited.
        waited_secs: u64,
    },
    /// The listener or rule has no forward action whose weights could be read or set.
    #[error("ELBv2 {target} at {endpoint} has no forward action; check that the ARN is the listener or rule that forwards to the zone target groups")]
    NoForwardAction {
        /// The listener or rule.
        target: String,
        /// The endpoint.
        endpoint: String,
    },
    /// The wanted weights are not valid.
    #[error("ELBv2 {target}: invalid weights {weights:?}: {problem}")]
    InvalidWeights {
        /// The listener or rule.
        target: String,
        /// The weights asked for.
        weights: BTreeMap<String, i32>,
        /// What is wrong.
        problem: String,
    },
    /// The weights read back after the change are not the ones set.
    #[error("ELBv2 {target} at {endpoint}: weights read back after the change are {read:?}, not {wanted:?}; it will be retried; check for another writer of this listener or rule")]
    ReadBackDiffers {
        /// The listener or rule.
        target: String,
        /// The endpoint.
        endpoint: String,
        /// What was set.
        wanted: BTreeMap<String, i32>,
        /// What was read.
        read: BTreeMap<String, i32>,
    },
    /// The standard AWS chain found no credentials at all.
    #[error("ELBv2 at {endpoint}: no AWS credentials found in the default chain (environment, profile{profile}, IMDS); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or AWS_PROFILE in the environment of the process that runs the steps (the daemon's, or the shell of `waymark run`/`resume`){last_source}")]
    NoCredentials {
        /// The endpoint.
        endpoint: String,
        /// ` PROFILE` when a profile was named, else empty.
        profile: String,
        /// `; the last source, IMDS, said: ...` when it failed, else empty.
        last_source: String,
    },
    /// The standard AWS chain failed while loading credentials.
    #[error("ELBv2 at {endpoint}: loading AWS credentials from the default chain failed: {detail}; check the AWS profile configuration (~/.aws/config, ~/.aws/credentials) or the credential source")]
    Credentials {
        /// The endpoint.
        endpoint: String,
        /// What the chain said.
        detail: String,
        /// Whether another attempt may help (a timeout or a service error of the source).
        retryable: bool,
    },
    /// The run was cancelled while the activity waited.
    #[error("ELBv2 {target}: the run was cancelled while waiting ({what}); nothing to check")]
    Cancelled {
        /// The resource acted on.
        target: String,
        /// What it waited for.
        what: String,
    },
}

impl Error {
    /// Whether another attempt may succeed: throttling, 5xx, timeouts, unreachable endpoints,
    /// unreadable 5xx answers and a read-back that differs.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unreachable { .. }
            | Error::Timeout { .. }
            | Error::Throttled { .. }
            | Error::Service { .. }
            | Error::ReadBackDiffers { .. } => true,
            Error::BadResponse { status, .. } => *status >= 500 || *status == 429,
            Error::Credentials { retryable, .. } => *retryable,
            Error::NoCredentials { .. }
            | Error::Connection { .. }
            | Error::Request { .. }
            | Error::NotFound { .. }
            | Error::Denied { .. }
            | Error::Rejected { .. }
            | Error::NotHealthy { .. }
            | Error::NoForwardAction { .. }
            | Error::InvalidWeights { .. }
            | Error::Cancelled { .. } => false,
        }
    }
}

impl From<Error> for activity::Error {
    fn from(e: Error) -> Self {
        if e.is_retryable() {
            activity::Error::retryable(e.to_string())
        } else {
            activity::Error::fatal(e.to_string())
        }
    }
}

/// Codes AWS uses for throttling.
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "SlowDown",
    "PriorRequestNotComplete",
];

/// Codes AWS uses for refused credentials or missing permissions.
const DENIED_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "ExpiredToken",
    "ExpiredTokenException",
    "MissingAuthenticationToken",
    "AuthFailure",
    "UnrecognizedClientException",
];

/// An error and its sources, as `a: b: c` (each source once, without the `Debug` forms).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// What a failed call was about, for its message.
struct CallSite<'a> {
    operation: &'static str,
    target: &'a str,
    client: &'a ElbClient,
}

impl CallSite<'_> {
    fn error<E>(
        &self,
        err: &SdkError<E, aws_sdk_elasticloadbalancingv2::config::http::HttpResponse>,
    ) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let operation = self.operation;
        let target = self.target.to_owned();
        let endpoint = self.client.endpoint.clone();
        let detail = error_chain(err);
        match err {
            SdkError::TimeoutError(_) => Error::Timeout {
                operation,
                target,
                endpoint,
                detail,
            },
            SdkError::DispatchFailure(failure) if failure.is_timeout() => Error::Timeout {
                operation,
                target,
                endpoint,
                detail,
            },
            SdkError::DispatchFailure(failure) if failure.is_user() => Error::Request {
                operation,
                target,
                endpoint,
                detail,
            },
            SdkError::DispatchFailure(_) => Error::Unreachable {
                operation,
                target,
                endpoint,
                detail,
            },
            SdkError::ResponseError(response) => Error::BadResponse {
                operation,
                target,
                endpoint,
                status: response.raw().status().as_u16(),
                detail,
            },
            SdkError::ServiceError(service) => {
                let status = service.raw().status().as_u16();
                let code = service.err().code().unwrap_or("-").to_owned();
                let message = service.err().message().unwrap_or("-");
                let detail = format!("{code}: {message}");
                if THROTTLING_CODES.contains(&code.as_str()) || status == 429 {
                    Error::Throttled {
                        operation,
                        target,
                        endpoint,
                        detail,
                    }
                } else if status >= 500 {
                    Error::Service {
                        operation,
                        target,
                        endpoint,
                        status,
                        detail,
                    }
                } else if code.ends_with("NotFound") || code == "InvalidTarget" {
                    Error::NotFound {
                        operation,
                        target,
                        endpoint,
                        region: self.client.region.clone(),
                        detail,
                    }
                } else if DENIED_CODES.contains(&code.as_str()) || status == 401 || status == 403 {
                    Error::Denied {
                        operation,
                        target,
                        endpoint,
                        detail,
                    }
                } else {
                    Error::Rejected {
                        operation,
                        target,
                        endpoint,
                        status,
                        detail,
                    }
                }
            }
            // ConstructionFailure, and whatever later SDK versions add.
            _ => Error::Request {
                operation,
                target,
                endpoint,
                detail,
            },
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
    client: aws_sdk_elasticloadbalancingv2::Client,
    endpoint: String,
    region: String,
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

    fn site<'a>(&'a self, operation: &'static str, target: &'a str) -> CallSite<'a> {
        CallSite {
            operation,
            target,
            client: self,
        }
    }

    /// The health of one target, `None` when `ELBv2` does not describe it.
    async fn target_health(&self, target: &TargetRef<'_>) -> Result<Option<Health>, Error> {
        let label = target.label();
        let out = self
            .client
            .describe_target_health()
            .target_group_arn(target.target_group_arn)
            .targets(target.description())
            .send()
            .await
            .map_err(|e| self.site("DescribeTargetHealth", &label).error(&e))?;
        let found = out.target_health_descriptions().iter().find(|d| {
            d.target().is_some_and(|t| {
                t.id() == Some(target.id)
                    && (target.port.is_none() || t.port().is_none() || t.port() == target.port)
            })
        });
        Ok(found.map(|d| {
            let h = d.target_health();
            Health {
                state: h
                    .and_then(|h| h.state())
                    .map_or_else(|| "unknown".to_owned(), |s| s.as_str().to_owned()),
                reason: h.and_then(|h| h.reason()).map(|r| r.as_str().to_owned()),
                description: h.and_then(|h| h.description()).map(str::to_owned),
            }
        }))
    }

    /// Every target of a group with its state (`DescribeTargetHealth` without targets).
    pub async fn group_health(&self, target_group_arn: &str) -> Result<Vec<TargetState>, Error> {
        let out = self
            .client
            .describe_target_health()
            .target_group_arn(target_group_arn)
            .send()
            .await
            .map_err(|e| {
                self.site("DescribeTargetHealth", target_group_arn)
                    .error(&e)
            })?;
        Ok(out
            .target_health_descriptions()
            .iter()
            .map(|d| TargetState {
                id: d
                    .target()
                    .and_then(|t| t.id())
                    .unwrap_or_default()
                    .to_owned(),
                state: d
                    .target_health()
                    .and_then(|h| h.state())
                    .map_or_else(|| "unknown".to_owned(), |s| s.as_str().to_owned()),
            })
            .collect())
    }

    async fn register(&self, target: &TargetRef<'_>) -> Result<(), Error> {
        let label = target.label();
        self.client
            .register_targets()
            .target_group_arn(target.target_group_arn)
            .targets(target.description())
            .send()
            .await
            .map_err(|e| self.site("RegisterTargets", &label).error(&e))?;
        Ok(())
    }

    async fn deregister(&self, target: &TargetRef<'_>) -> Result<(), Error> {
        let label = target.label();
        self.client
            .deregister_targets()
            .target_group_arn(target.target_group_arn)
            .targets(target.description())
            .send()
            .await
            .map_err(|e| self.site("DeregisterTargets", &label).error(&e))?;
        Ok(())
    }

    /// The actions of a listener (its default actions) or of a rule.
    async fn actions(&self, source: &TrafficSource) -> Result<Vec<Action>, Error> {
        let label = source.label();
        match source {
            TrafficSource::Listener(arn) => {
                let out = self
                    .client
                    .describe_listeners()
                    .listener_arns(arn)
                    .send()
                    .await
                    .map_err(|e| self.site("DescribeListeners", &label).error(&e))?;
                let listener = out
                    .listeners()
                    .iter()
                    .find(|l| l.listener_arn() == Some(arn.as_str()))
                    .ok_or_else(|| Error::NotFound {
                        operation: "DescribeListeners",
                        target: label.clone(),
                        endpoint: self.endpoint.clone(),
                        region: self.region.clone(),
                        detail: "ListenerNotFound: the answer does not describe this listener"
                            .into(),
                    })?;
                Ok(listener.default_actions().to_vec())
            }
            TrafficSource::Rule(arn) => {
                let out = self
                    .client
                    .describe_rules()
                    .rule_arns(arn)
                    .send()
                    .await
                    .map_err(|e| self.site("DescribeRules", &label).error(&e))?;
                let rule = out
                    .rules()
                    .iter()
                    .find(|r| r.rule_arn() == Some(arn.as_str()))
                    .ok_or_else(|| Error::NotFound {
                        operation: "DescribeRules",
                        target: label.clone(),
                        endpoint: self.endpoint.clone(),
                        region: self.region.clone(),
                        detail: "RuleNotFound: the answer does not describe this rule".into(),
                    })?;
                Ok(rule.actions().to_vec())
            }
        }
    }

    /// The weights of the listener's or rule's first forward action.
    pub async fn weights(&self, source: &TrafficSource) -> Result<Weights, Error> {
        let actions = self.actions(source).await?;
        forward_weights(&actions)
            .map(|by_target_group| Weights { by_target_group })
            .ok_or_else(|| Error::NoForwardAction {
                target: source.label(),
                endpoint: self.endpoint.clone(),
            })
    }

    async fn check_target_groups_exist(
        &self,
        source: &TrafficSource,
        arns: &BTreeMap<String, i32>,
    ) -> Result<(), Error> {
        let label = format!(
            "target groups {} of {}",
            arns.keys().cloned().collect::<Vec<_>>().join(", "),
            source.label()
        );
        let out = self
            .client
            .describe_target_groups()
            .set_target_group_arns(Some(arns.keys().cloned().collect()))
            .send()
            .await
            .map_err(|e| self.site("DescribeTargetGroups", &label).error(&e))?;
        let missing: Vec<&String> = arns
            .keys()
            .filter(|arn| {
                !out.target_groups()
                    .iter()
                    .any(|tg| tg.target_group_arn() == Some(arn.as_str()))
            })
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::NotFound {
                operation: "DescribeTargetGroups",
                target: label,
                endpoint: self.endpoint.clone(),
                region: self.region.clone(),
                detail: format!("TargetGroupNotFound: not described: {missing:?}"),
            })
        }
    }

    async fn set_actions(&self, source: &TrafficSource, actions: Vec<Action>) -> Result<(), Error> {
        let label = source.label();
        match source {
            TrafficSource::Listener(arn) => {
                self.client
                    .modify_listener()
                    .listener_arn(arn)
                    .set_default_actions(Some(actions))
                    .send()
                    .await
                    .map_err(|e| self.site("ModifyListener", &label).error(&e))?;
            }
            TrafficSource::Rule(arn) => {
                self.client
                    .modify_rule()
                    .rule_arn(arn)
                    .set_actions(Some(actions))
                    .send()
                    .await
                    .map_err(|e| self.site("ModifyRule", &label).error(&e))?;
            }
        }
        Ok(())
    }
}

/// One target of one target group.
struct TargetRef<'a> {
    target_group_arn: &'a str,
    id: &'a str,
    port: Option<i32>,
    availability_zone: Option<&'a str>,
}

impl TargetRef<'_> {
    fn label(&self) -> String {
        match self.port {
            Some(p) => format!(
                "target {}:{p} in target group {}",
                self.id, self.target_group_arn
            ),
            None => format!(
                "target {} in target group {}",
                self.id, self.target_group_arn
            ),
        }
    }

    fn description(&self) -> TargetDescription {
        TargetDescription::builder()
            .id(self.id)
            .set_port(self.port)
            .set_availability_zone(self.availability_zone.map(str::to_owned))
            .build()
    }
}

/// A target's health as `DescribeTargetHealth` tells it.
#[derive(Clone, Debug)]
struct Health {
    state: String,
    reason: Option<String>,
    description: Option<String>,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.state)?;
        match (&self.reason, &self.description) {
            (Some(r), Some(d)) => write!(f, " (reason {r}: {d})"),
            (Some(r), None) => write!(f, " (reason {r})"),
            (None, Some(d)) => write!(f, " ({d})"),
            (None, None) => Ok(()),
        }
    }
}

impl Health {
    /// Whether the target is in the group (not unregistered, not being deregistered).
    fn registered(&self) -> bool {
        self.reason.as_deref() != Some(NOT_REGISTERED) && self.state != "draining"
    }

    fn healthy(&self) -> bool {
        self.state == "healthy"
    }
}

/// Input of [`RegisterTarget`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterTargetInput {
    /// Where.
    pub conn: ElbConnection,
    /// The target group.
    pub target_group_arn: String,
    /// Instance id or IP address.
    pub target_id: String,
    /// Port (the target group's when `None`).
    #[serde(default)]
    pub port: Option<i32>,
    /// Availability zone (`all` for an IP outside the VPC).
    #[serde(default)]
    pub availability_zone: Option<String>,
    /// How long to wait for `healthy`.
    pub healthy_timeout_secs: u64,
    /// Pause between two `DescribeTargetHealth` calls.
    pub poll_interval_ms: u64,
}

impl RegisterTargetInput {
    /// The input of the compensation, [`DeregisterTarget`] of the same target.
    pub fn compensation(&self) -> DeregisterTargetInput {
        DeregisterTargetInput {
            conn: self.conn.clone(),
            target_group_arn: self.target_group_arn.clone(),
            target_id: self.target_id.clone(),
            port: self.port,
            availability_zone: self.availability_zone.clone(),
            keep_if_healthy: false,
        }
    }

    fn target(&self) -> TargetRef<'_> {
        TargetRef {
            target_group_arn: &self.target_group_arn,
            id: &self.target_id,
            port: self.port,
            availability_zone: self.availability_zone.as_deref(),
        }
    }
}

/// Output of [`RegisterTarget`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterTargetOutput {
    /// The target's state at the end (`healthy`).
    pub state: String,
    /// The target was registered before this call: `RegisterTargets` was not called.
    pub already: bool,
}

/// `elb.register_target`: registers a target in a target group and waits until it is healthy.
///
/// Checks first: a target already registered is not registered again (`already: true`; if it is
/// not yet healthy, the activity still waits for it). Each poll heartbeats the state. A target
/// not healthy after `healthy_timeout_secs` fails the step without retry, with the last state
/// and reason.
#[derive(Clone, Copy, Debug, Default)]
pub struct RegisterTarget;

impl RegisterTarget {
    /// Runs with an existing client (explicit credentials).
    pub async fn run_with(
        &self,
        client: &ElbClient,
        ctx: &Context,
        input: &RegisterTargetInput,
    ) -> Result<RegisterTargetOutput, Error> {
        let target = input.target();
        let before = client.target_health(&target).await?;
        let already = before.as_ref().is_some_and(Health::registered);
        if let Some(h) = before.as_ref().filter(|h| h.registered() && h.healthy()) {
            ctx.heartbeat(Some(format!(
                "{SYSTEM} {}: already {}",
                target.label(),
                h.state
            )));
            return Ok(RegisterTargetOutput {
                state: h.state.clone(),
                already: true,
            });
        }
        if !already {
            tracing::info!(key = %ctx.idempotency_key(), "{SYSTEM}: registering {}", target.label());
            client.register(&target).await?;
        }
        let started = tokio::time::Instant::now();
        let timeout = Duration::from_secs(input.healthy_timeout_secs);
        let interval = Duration::from_millis(input.poll_interval_ms.max(1));
        loop {
            let health = client.target_health(&target).await?.unwrap_or(Health {
                state: "unused".into(),
                reason: Some(NOT_REGISTERED.into()),
                description: Some("not described".into()),
            });
            ctx.heartbeat(Some(format!("{SYSTEM} {}: {health}", target.label())));
            if health.healthy() {
                return Ok(RegisterTargetOutput {
                    state: health.state,
                    already,
                });
            }
            let waited = started.elapsed();
            if waited >= timeout {
                return Err(Error::NotHealthy {
                    target_id: input.target_id.clone(),
                    target_group_arn: input.target_group_arn.clone(),
                    endpoint: client.endpoint.clone(),
                    health: health.to_string(),
                    waited_secs: waited.as_secs(),
                });
            }
            if !ctx
                .sleep(interval.min(timeout.saturating_sub(waited)))
                .await
            {
                return Err(Error::Cancelled {
                    target: target.label(),
                    what: format!("state healthy, last {}", health.state),
                });
            }
        }
    }
}

impl Activity for RegisterTarget {
    const NAME: &'static str = "elb.register_target";
    type Input = RegisterTargetInput;
    type Output = RegisterTargetOutput;

    async fn run(&self, ctx: Context, input: Self::Input) -> Result<Self::Output, activity::Error> {
        let client = ElbClient::connect(&input.conn).await?;
        Ok(self.run_with(&client, &ctx, &input).await?)
    }
}

/// Input of [`DeregisterTarget`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeregisterTargetInput {
    /// Where.
    pub conn: ElbConnection,
    /// The target group.
    pub target_group_arn: String,
    /// Instance id or IP address.
    pub target_id: String,
    /// Port (the target group's when `None`).
    #[serde(default)]
    pub port: Option<i32>,
    /// Availability zone it was registered with.
    #[serde(default)]
    pub availability_zone: Option<String>,
    /// Leave the target registered when it is `healthy` (a compensation that undoes only a
    /// registration that did not work out).
    #[serde(default)]
    pub keep_if_healthy: bool,
}

impl DeregisterTargetInput {
    fn target(&self) -> TargetRef<'_> {
        TargetRef {
            target_group_arn: &self.target_group_arn,
            id: &self.target_id,
            port: self.port,
            availability_zone: self.availability_zone.as_deref(),
        }
    }
}

/// Output of [`DeregisterTarget`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeregisterTargetOutput {
    /// The target was registered (not unregistered, not draining).
    pub was_registered: bool,
    /// It was registered and healthy, and left so because of `keep_if_healthy`
    /// (`DeregisterTargets` was not called).
    #[serde(default)]
    pub kept: bool,
}

/// `elb.deregister_target`: removes a target from a target group (the compensation of
/// [`RegisterTarget`]). A target that is not registered, or already draining, is left alone, and
/// so is a healthy one when `keep_if_healthy` is set. It does not wait for the draining to end.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeregisterTarget;

impl DeregisterTarget {
    /// Runs with an existing client (explicit credentials).
    pub async fn run_with(
        &self,
        client: &ElbClient,
        ctx: &Context,
        input: &DeregisterTargetInput,
    ) -> Result<DeregisterTargetOutput, Error> {
        let target = input.target();
        let health = client.target_health(&target).await?;
        let was_registered = health.as_ref().is_some_and(Health::registered);
        let kept =
            input.keep_if_healthy && was_registered && health.as_ref().is_some_and(Health::healthy);
        let what = if kept {
            "healthy, kept registered"
        } else if was_registered {
            tracing::info!(key = %ctx.idempotency_key(), "{SYSTEM}: deregistering {}", target.label());
            client.deregister(&target).await?;
            "deregistered"
        } else {
            "was not registered"
        };
        ctx.heartbeat(Some(format!("{SYSTEM} {}: {what}", target.label())));
        Ok(DeregisterTargetOutput {
            was_registered,
            kept,
        })
    }
}

impl Activity for DeregisterTarget {
    const NAME: &'static str = "elb.deregister_target";
    type Input = DeregisterTargetInput;
    type Output = DeregisterTargetOutput;

    async fn run(&self, ctx: Context, input: Self::Input) -> Result<Self::Output, activity::Error> {
        let client = ElbClient::connect(&input.conn).await?;
        Ok(self.run_with(&client, &ctx, &input).await?)
    }
}

/// Where traffic weights live: a listener's default actions or a rule's actions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrafficSource {
    /// A listener ARN.
    Listener(String),
    /// A listener rule ARN.
    Rule(String),
}

impl TrafficSource {
    /// `listener ARN` or `rule ARN`, as messages name it.
    pub fn label(&self) -> String {
        match self {
            TrafficSource::Listener(arn) => format!("listener {arn}"),
            TrafficSource::Rule(arn) => format!("rule {arn}"),
        }
    }
}

/// The weights of a forward action.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weights {
    /// Weight per target group ARN.
    pub by_target_group: BTreeMap<String, i32>,
}

/// The weights of the first forward action (a forward to one target group without a
/// `ForwardConfig` counts as weight 1), `None` without a forward action.
fn forward_weights(actions: &[Action]) -> Option<BTreeMap<String, i32>> {
    let forward = actions
        .iter()
        .find(|a| a.r#type() == Some(&ActionTypeEnum::Forward))?;
    let groups = forward
        .forward_config()
        .map(ForwardActionConfig::target_groups)
        .unwrap_or_default();
    if groups.is_empty() {
        return forward
            .target_group_arn()
            .map(|arn| BTreeMap::from([(arn.to_owned(), 1)]));
    }
    Some(
        groups
            .iter()
            .filter_map(|g| Some((g.target_group_arn()?.to_owned(), g.weight().unwrap_or(1))))
            .collect(),
    )
}

/// `actions` with the first forward action's target groups replaced by `weights` (its
/// stickiness and order kept, every other action unchanged).
fn with_weights(actions: &[Action], weights: &BTreeMap<String, i32>) -> Vec<Action> {
    let mut replaced = false;
    actions
        .iter()
        .map(|a| {
            if replaced || a.r#type() != Some(&ActionTypeEnum::Forward) {
                return a.clone();
            }
            replaced = true;
            let config = ForwardActionConfig::builder()
                .set_target_groups(Some(
                    weights
                        .iter()
                        .map(|(arn, w)| {
                            TargetGroupTuple::builder()
                                .target_group_arn(arn)
                                .weight(*w)
                                .build()
                        })
                        .collect(),
                ))
                .set_target_group_stickiness_config(
                    a.forward_config()
                        .and_then(|c| c.target_group_stickiness_config())
                        .cloned(),
                )
                .build();
            Action::builder()
                .r#type(ActionTypeEnum::Forward)
                .set_order(a.order())
                .forward_config(config)
                .build()
        })
        .collect()
}

/// Input of [`ReadTrafficWeights`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadTrafficWeightsInput {
    /// Where.
    pub conn: ElbConnection,
    /// The listener or rule.
    pub source: TrafficSource,
}

/// `elb.read_traffic_weights`: the target groups and weights of a listener's or rule's forward
/// action (read before a change, to restore them as its compensation).
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadTrafficWeights;

impl ReadTrafficWeights {
    /// Runs with an existing client (explicit credentials).
    pub async fn run_with(
        &self,
        client: &ElbClient,
        ctx: &Context,
        input: &ReadTrafficWeightsInput,
    ) -> Result<Weights, Error> {
        let weights = client.weights(&input.source).await?;
        ctx.heartbeat(Some(format!(
            "{SYSTEM} {}: {:?}",
            input.source.label(),
            weights.by_target_group
        )));
        Ok(weights)
    }
}

impl Activity for ReadTrafficWeights {
    const NAME: &'static str = "elb.read_traffic_weights";
    type Input = ReadTrafficWeightsInput;
    type Output = Weights;

    async fn run(&self, ctx: Context, input: Self::Input) -> Result<Self::Output, activity::Error> {
        let client = ElbClient::connect(&input.conn).await?;
        Ok(self.run_with(&client, &ctx, &input).await?)
    }
}

/// Input of [`SetTrafficWeights`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetTrafficWeightsInput {
    /// Where.
    pub conn: ElbConnection,
    /// The listener or rule.
    pub source: TrafficSource,
    /// The wanted weight of each target group (0..=999); the forward action gets exactly these.
    pub weights: BTreeMap<String, i32>,
}

/// Output of [`SetTrafficWeights`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetTrafficWeightsOutput {
    /// The weights found.
    pub before: Weights,
    /// The weights read back (equal to the wanted ones).
    pub after: Weights,
    /// Whether `ModifyListener` / `ModifyRule` was called.
    pub changed: bool,
}

/// `elb.set_traffic_weights`: sets the weights of a listener's or rule's forward action.
///
/// Reads the current weights first and calls nothing when they already are the wanted ones.
/// Otherwise checks that every target group exists, replaces the forward action's target groups
/// (keeping its stickiness and the other actions), and reads back: a read-back that differs is a
/// retryable failure.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetTrafficWeights;

impl SetTrafficWeights {
    /// Runs with an existing client (explicit credentials).
    pub async fn run_with(
        &self,
        client: &ElbClient,
        ctx: &Context,
        input: &SetTrafficWeightsInput,
    ) -> Result<SetTrafficWeightsOutput, Error> {
        let label = input.source.label();
        validate_weights(&label, &input.weights)?;
        let actions = client.actions(&input.source).await?;
        let before = Weights {
            by_target_group: forward_weights(&actions).ok_or_else(|| Error::NoForwardAction {
                target: label.clone(),
                endpoint: client.endpoint.clone(),
            })?,
        };
        if before.by_target_group == input.weights {
            ctx.heartbeat(Some(format!(
                "{SYSTEM} {label}: already {:?}",
                input.weights
            )));
            return Ok(SetTrafficWeightsOutput {
                after: before.clone(),
                before,
                changed: false,
            });
        }
        client
            .check_target_groups_exist(&input.source, &input.weights)
            .await?;
        tracing::info!(key = %ctx.idempotency_key(), "{SYSTEM}: {label}: weights {:?} -> {:?}", before.by_target_group, input.weights);
        client
            .set_actions(&input.source, with_weights(&actions, &input.weights))
            .await?;
        let after = client.weights(&input.source).await?;
        if after.by_target_group != input.weights {
            return Err(Error::ReadBackDiffers {
                target: label,
                endpoint: client.endpoint.clone(),
                wanted: input.weights.clone(),
                read: after.by_target_group,
            });
        }
        ctx.heartbeat(Some(format!(
            "{SYSTEM} {label}: {:?}",
            after.by_target_group
        )));
        Ok(SetTrafficWeightsOutput {
            before,
            after,
            changed: true,
        })
    }
}

fn validate_weights(label: &str, weights: &BTreeMap<String, i32>) -> Result<(), Error> {
    let invalid = |problem: &str| Error::InvalidWeights {
        target: label.to_owned(),
        weights: weights.clone(),
        problem: problem.to_owned(),
    };
    if weights.is_empty() {
        return Err(invalid(
            "no target group given; give at least one target group ARN with its weight",
        ));
    }
    if weights.values().any(|w| !(0..=999).contains(w)) {
        return Err(invalid("every weight must be between 0 and 999"));
    }
    if weights.len() > 5 {
        return Err(invalid("a forward action takes at most 5 target groups"));
    }
    Ok(())
}

impl Activity for SetTrafficWeights {
    const NAME: &'static str = "elb.set_traffic_weights";
    type Input = SetTrafficWeightsInput;
    type Output = SetTrafficWeightsOutput;

    async fn run(&self, ctx: Context, input: Self::Input) -> Result<Self::Output, activity::Error> {
        let client = ElbClient::connect(&input.conn).await?;
        Ok(self.run_with(&client, &ctx, &input).await?)
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

/// One target of a group and its health state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetState {
    /// Instance id or IP.
    pub id: String,
    /// `initial`, `healthy`, `unhealthy`, `draining`, ...
    pub state: String,
}

/// Input of [`ReadTargetGroupHealth`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadTargetGroupHealthInput {
    /// How to reach `ELBv2`.
    pub conn: ElbConnection,
    /// The target group.
    pub target_group_arn: String,
}

/// `elb.read_target_group_health`: every target of a group with its health state (read-only;
/// the estate check before a run asks whether a group it will forward to has a healthy target).
pub struct ReadTargetGroupHealth;

impl Activity for ReadTargetGroupHealth {
    const NAME: &'static str = "elb.read_target_group_health";
    type Input = ReadTargetGroupHealthInput;
    type Output = Vec<TargetState>;

    async fn run(
        &self,
        _ctx: Context,
        input: Self::Input,
    ) -> Result<Self::Output, activity::Error> {
        let client = ElbClient::connect(&input.conn).await?;
        Ok(client.group_health(&input.target_group_arn).await?)
    }
}

/// Registers every `ELBv2` activity.
pub fn register(b: EngineBuilder) -> EngineBuilder {
    b.activity(RegisterTarget)
        .activity(ReadTargetGroupHealth)
        .activity(DeregisterTarget)
        .activity(ReadTrafficWeights)
        .activity(SetTrafficWeights)
        .activity(ResolveConnection)
}
