//! `ELBv2` subset speaking the AWS query protocol, so that the AWS SDK (and boto3) talk to it as to
//! AWS: `POST /` with a form-encoded body `Action=...&Version=2015-12-01&...`, XML answers in the
//! `http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/` namespace shaped like AWS's (and
//! moto's), and `<ErrorResponse>` with the HTTP status AWS uses for errors.
//!
//! Actions: `CreateLoadBalancer`, `CreateTargetGroup`, `CreateListener`, `CreateRule`,
//! `DescribeLoadBalancers`, `DescribeTargetGroups`, `DescribeListeners`, `DescribeRules`,
//! `DescribeTargetHealth`, `RegisterTargets`, `DeregisterTargets`, `ModifyListener`, `ModifyRule`.
//! Only `forward` actions are accepted.
//!
//! Model, and where it differs from AWS and from moto:
//! - A registered target is `initial` (reason `Elb.RegistrationInProgress`) for
//!   [`State::initial_ms`] (the health check interval times the healthy threshold, scaled: 10 s x
//!   3 at time scale 1), then `healthy`, as on AWS; moto makes it `healthy` at once. A target
//!   listed in [`State::failing_targets`] is `unhealthy` (reason `Target.FailedHealthChecks`).
//! - A target not in the group is `unused` with reason `Target.NotRegistered`, as AWS answers
//!   (moto says `unavailable` for an IP it never saw). A deregistered target is `draining` (reason
//!   `Target.DeregistrationInProgress`) for [`State::deregistration_delay_ms`] (300 s scaled), then
//!   gone; registering it again while it drains makes it `initial` again.
//! - The seed's target groups each hold three IP targets of their zone, healthy since long
//!   before the sandbox started: the `YugabyteDB` groups the zone's nodes (`10.20.1.11`.. for zone
//!   A, `10.20.2.11`.. for zone B), the traffic groups its application servers (`10.20.N.21`..).
//! - Registering a registered target again, or deregistering one that is not registered, succeeds
//!   without change (moto refuses the latter with `InvalidTarget`).
//! - Signatures are not checked, but a request must carry an `AWS4-HMAC-SHA256` `Authorization`
//!   header (else 403 `MissingAuthenticationToken`); credentials are never stored nor logged.
//! - Weighted forwards (more than one target group in a forward action) and listener rules exist
//!   on application load balancers only: on a `network` load balancer `CreateListener`,
//!   `ModifyListener` refuse them with 400 `InvalidConfigurationRequest`, and `CreateRule` with
//!   400 `InvalidConfigurationRequest`, as AWS does (moto accepts both). The seed's business
//!   traffic goes through the application load balancer `offerup`; the `YugabyteDB` network load
//!   balancer `yb-ext` forwards to one target group.
//!
//! Every mutating call updates [`State`] through [`Shared::mutate`](crate::Shared::mutate) and appends an effect
//! (`system` `elb`; actions `register`, `deregister`, `modify-listener`, `modify-rule`,
//! `create-load-balancer`, `create-target-group`, `create-listener`, `create-rule`). Faults are
//! looked up with the text `Action ARN [target ids]` (for example
//! `RegisterTargets arn:aws:...:targetgroup/aws-useast1-prod-a-yb-ext-prod/... 10.20.2.14`):
//! `Status(5xx)` answers `InternalFailure` (`ServiceUnavailable` for 503), `Status(400)` and
//! `Throttle` answer 400 `Throttling`, `Status(403)` `AccessDenied`; the other kinds (refused,
//! timeout, cut mid-answer, wrong answer, slow, drop) as every HTTP system
//! ([`crate::conn::act_out`]).
//!
//! Files: `model.rs` (the resources and their health over time: [`State`], below the estate),
//! `wire.rs` (the query protocol: form parameters, XML answers, error answers; the connections
//! are [`crate::conn`]'s) and `handlers.rs` (one function per action, on [`Shared`](crate::Shared)).

mod handlers;
pub mod model;
mod wire;

pub use handlers::serve;
pub use model::{
    target_group_name, yb_target_group_name, Action, Condition, Draining, Listener, LoadBalancer,
    Rule, State, Target, TargetGroup, WeightedTargetGroup, ACCOUNT, LOAD_BALANCER, NAMESPACE, PORT,
    REGION, RULE_PRIORITY, TRAFFIC_PORT, VPC, YB_LOAD_BALANCER,
};
