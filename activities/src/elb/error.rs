//! `ELBv2` failures: [`Error`], which of them are worth another attempt, and how an SDK failure
//! maps to one (throttling, denied, not found, timeouts, unreadable answers).

use std::collections::BTreeMap;

use aws_sdk_elasticloadbalancingv2::error::{ProvideErrorMetadata, SdkError};
use waymark_engine::activity;

use super::ElbClient;

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
    /// The target was not healthy by the wait's deadline (final: not retried).
    #[error("ELBv2 target {target_id} in target group {target_group_arn} at {endpoint} is {health} at its deadline {deadline} ({timeout_secs} s after the step was first scheduled; final, not retried), not healthy; check the target's health check (port, security groups, the service on the target)")]
    NotHealthy {
        /// The target id.
        target_id: String,
        /// The target group.
        target_group_arn: String,
        /// The endpoint.
        endpoint: String,
        /// The last state, with its reason and description (or the last transient error).
        health: String,
        /// When the deadline passed (RFC 3339).
        deadline: String,
        /// The wait's timeout.
        timeout_secs: u64,
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
pub(super) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
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
pub(super) struct CallSite<'a> {
    pub(super) operation: &'static str,
    pub(super) target: &'a str,
    pub(super) client: &'a ElbClient,
}

impl CallSite<'_> {
    pub(super) fn error<E>(
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
