//! Targets: `elb.register_target` (idempotent, waits until healthy), `elb.deregister_target`
//! (can keep a healthy target) and `elb.read_target_group_health`.

use std::time::Duration;

use aws_sdk_elasticloadbalancingv2::types::TargetDescription;
use serde::{Deserialize, Serialize};
use waymark_engine::activity::{self, Activity, Context};

use super::{ElbClient, ElbConnection, Error, SYSTEM};
use crate::wait::{Deadline, Poll, PollUntil, WaitError};

/// Reason `ELBv2` gives for a target that is not in the target group.
const NOT_REGISTERED: &str = "Target.NotRegistered";
impl ElbClient {
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
    /// The wait's one deadline, seconds after the step was first scheduled: the target must be
    /// `healthy` by then (final when passed, not retried).
    pub timeout_secs: u64,
    /// Pause between two `DescribeTargetHealth` calls, ms.
    pub poll_ms: u64,
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
/// not healthy after `timeout_secs` fails the step without retry, with the last state
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
        // One deadline, counted from the step's first scheduling: a retried or resumed attempt
        // waits only for what is left of it; transient errors are looked past within it.
        let deadline = Deadline::after_scheduling(ctx, Duration::from_secs(input.timeout_secs));
        let what = format!("{SYSTEM} {} healthy", target.label());
        let looked = ctx
            .poll_until(
                &what,
                deadline,
                Duration::from_millis(input.poll_ms),
                || async {
                    let health = client.target_health(&target).await?.unwrap_or(Health {
                        state: "unused".into(),
                        reason: Some(NOT_REGISTERED.into()),
                        description: Some("not described".into()),
                    });
                    Ok(if health.healthy() {
                        Poll::Ready(health)
                    } else {
                        Poll::Pending(health.to_string())
                    })
                },
            )
            .await;
        match looked {
            Ok(health) => {
                ctx.heartbeat(Some(format!("{SYSTEM} {}: {health}", target.label())));
                Ok(RegisterTargetOutput {
                    state: health.state,
                    already,
                })
            }
            Err(WaitError::Timeout(t)) => Err(Error::NotHealthy {
                target_id: input.target_id.clone(),
                target_group_arn: input.target_group_arn.clone(),
                endpoint: client.endpoint.clone(),
                health: t.last,
                deadline: t.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                timeout_secs: input.timeout_secs,
            }),
            Err(WaitError::Failed(e)) => Err(e),
            Err(WaitError::Cancelled(_)) => Err(Error::Cancelled {
                target: target.label(),
                what: "state healthy".into(),
            }),
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
