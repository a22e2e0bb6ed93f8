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
//! Every mutating call updates [`State`] through [`Shared::mutate`] and appends an effect
//! (`system` `elb`; actions `register`, `deregister`, `modify-listener`, `modify-rule`,
//! `create-load-balancer`, `create-target-group`, `create-listener`, `create-rule`). Faults are
//! looked up with the text `Action ARN [target ids]` (for example
//! `RegisterTargets arn:aws:...:targetgroup/aws-useast1-prod-a-yb-ext-prod/... 10.20.2.14`):
//! `Status(5xx)` answers `InternalFailure` (`ServiceUnavailable` for 503), `Status(400)` and
//! `Throttle` answer 400 `Throttling`, `Status(403)` `AccessDenied`, `Delay(ms)` answers late, and
//! `Drop` closes the connection without an answer.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Form;
use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::estate::{FaultKind, Shared, Spec};

/// XML namespace of every answer.
pub const NAMESPACE: &str = "http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/";
/// Account of every ARN (moto's default account too).
pub const ACCOUNT: &str = "123456789012";
/// Region of every ARN.
pub const REGION: &str = "us-east-1";
/// Name of the seed application load balancer whose listener weights switch the business's
/// traffic between zones (runbook steps 1 and 9). Weighted forwarding across target groups, and
/// listener rules, exist only on application load balancers.
pub const LOAD_BALANCER: &str = "offerup";
/// Name of the seed network load balancer in front of the zone-B `YugabyteDB` nodes (step 6).
pub const YB_LOAD_BALANCER: &str = "yb-ext";
/// Port of the traffic listener and its target groups (HTTP).
pub const TRAFFIC_PORT: i32 = 80;
/// VPC of the seed estate.
pub const VPC: &str = "vpc-0c2f7e1a9b3d45e68";
/// Port of the `YugabyteDB` listener and target groups (YSQL).
pub const PORT: i32 = 5433;
/// Priority of the seed rule.
pub const RULE_PRIORITY: &str = "10";

/// Name of the seed traffic target group of `zone` (`A` gives `offerup-zone-a`), behind
/// [`LOAD_BALANCER`].
pub fn target_group_name(zone: &str) -> String {
    format!("offerup-zone-{}", zone.to_lowercase())
}

/// Name of the seed `YugabyteDB` target group of `zone` (`B` gives
/// `aws-useast1-prod-b-yb-ext-prod`), behind [`YB_LOAD_BALANCER`].
pub fn yb_target_group_name(zone: &str) -> String {
    format!("aws-useast1-prod-{}-yb-ext-prod", zone.to_lowercase())
}

/// A load balancer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalancer {
    /// ARN.
    pub arn: String,
    /// Name.
    pub name: String,
    /// `network` or `application`.
    pub kind: String,
    /// `internal` or `internet-facing`.
    pub scheme: String,
    /// VPC.
    pub vpc_id: String,
    /// (availability zone, subnet).
    pub zones: Vec<(String, String)>,
    /// DNS name.
    pub dns_name: String,
    /// Creation time, RFC 3339.
    pub created: String,
}

/// A registered target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// IP address or instance id.
    pub id: String,
    /// Port.
    pub port: i32,
    /// Availability zone given at registration.
    pub availability_zone: Option<String>,
    /// When it was registered (ms since the epoch).
    pub registered_at_ms: i64,
}

/// A deregistered target while it drains.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Draining {
    /// Its target group.
    pub target_group_arn: String,
    /// The target.
    pub target: Target,
    /// When the draining ends (ms since the epoch).
    pub until_ms: i64,
}

/// A target group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetGroup {
    /// ARN.
    pub arn: String,
    /// Name.
    pub name: String,
    /// `TCP`, `HTTP`, ...
    pub protocol: String,
    /// Port.
    pub port: i32,
    /// VPC.
    pub vpc_id: String,
    /// `ip` or `instance`.
    pub target_type: String,
    /// Health check protocol.
    pub health_check_protocol: String,
    /// Registered targets.
    pub targets: Vec<Target>,
}

/// One target group of a forward action, with its weight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightedTargetGroup {
    /// Target group ARN.
    pub target_group_arn: String,
    /// Weight (0..=999).
    pub weight: i32,
}

/// A `forward` action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// Order, when given.
    pub order: Option<i32>,
    /// Target groups and weights.
    pub target_groups: Vec<WeightedTargetGroup>,
    /// Target group stickiness.
    pub stickiness: bool,
}

impl Action {
    /// Target group ARN → weight.
    pub fn weights(&self) -> BTreeMap<String, i32> {
        self.target_groups
            .iter()
            .map(|g| (g.target_group_arn.clone(), g.weight))
            .collect()
    }
}

/// A listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    /// ARN.
    pub arn: String,
    /// Its load balancer.
    pub load_balancer_arn: String,
    /// Port.
    pub port: i32,
    /// Protocol.
    pub protocol: String,
    /// Default actions.
    pub default_actions: Vec<Action>,
}

/// A rule condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    /// Field (`path-pattern`, `host-header`, ...).
    pub field: String,
    /// Values.
    pub values: Vec<String>,
}

/// A listener rule (not the default one, which is the listener's default actions).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// ARN.
    pub arn: String,
    /// Its listener.
    pub listener_arn: String,
    /// Priority.
    pub priority: String,
    /// Conditions.
    pub conditions: Vec<Condition>,
    /// Actions.
    pub actions: Vec<Action>,
}

/// `ELBv2` resources.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    /// Load balancers.
    pub load_balancers: Vec<LoadBalancer>,
    /// Target groups.
    pub target_groups: Vec<TargetGroup>,
    /// Listeners.
    pub listeners: Vec<Listener>,
    /// Rules.
    pub rules: Vec<Rule>,
    /// How long a registered target stays `initial`, ms.
    pub initial_ms: i64,
    /// How long a deregistered target drains, ms.
    pub deregistration_delay_ms: i64,
    /// `HealthCheckIntervalSeconds` shown for every target group (real seconds).
    pub health_check_interval_s: i64,
    /// `HealthyThresholdCount` shown for every target group.
    pub healthy_threshold: i64,
    /// Targets draining after their deregistration.
    pub draining: Vec<Draining>,
    /// Target ids whose health checks fail (`unhealthy`).
    pub failing_targets: BTreeSet<String>,
    /// Resources created so far (for ids).
    pub created: u64,
}

/// 16 hex digits derived from `seed` (stable ids for the seed estate).
fn hex_id(seed: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn arn(resource: &str) -> String {
    format!("arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}:{resource}")
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn lb_kind_prefix(kind: &str) -> &'static str {
    match kind {
        "application" => "app",
        "gateway" => "gwy",
        _ => "net",
    }
}

impl State {
    /// The resources of the seed estate: the business's application load balancer `offerup`
    /// with one HTTP target group per zone (`offerup-zone-<zone>`), an HTTP 80 listener forwarding
    /// with weights (A=0, B=100 for the default spec) and one rule (priority 10,
    /// `path-pattern /waymark/*`) with the same weights; and the `YugabyteDB` network load balancer
    /// `yb-ext` with one TCP 5433 IP target group per zone (`aws-useast1-prod-<zone>-yb-ext-prod`)
    /// and a TCP listener forwarding to the last zone's.
    pub fn from_spec(spec: &Spec) -> Self {
        let t = spec.scaled();
        let mut zones: Vec<String> = Vec::new();
        for n in &spec.nodes {
            if !zones.contains(&n.zone) {
                zones.push(n.zone.clone());
            }
        }
        if zones.is_empty() {
            zones = vec!["A".into(), "B".into()];
        }
        let load_balancer = |name: &str, kind: &str, scheme: &str| {
            let id = hex_id(name);
            let short = if kind == "application" { "app" } else { "net" };
            LoadBalancer {
                arn: arn(&format!("loadbalancer/{short}/{name}/{id}")),
                name: name.into(),
                kind: kind.into(),
                scheme: scheme.into(),
                vpc_id: VPC.into(),
                zones: zones
                    .iter()
                    .map(|z| {
                        let z = z.to_lowercase();
                        (
                            format!("{REGION}{z}"),
                            format!("subnet-{}", hex_id(&format!("subnet {z}"))),
                        )
                    })
                    .collect(),
                dns_name: format!("{name}-{}.elb.{REGION}.amazonaws.com", &id[..8]),
                created: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            }
        };
        // Zone N's subnet is 10.20.N.0/24: its yb nodes from .11, its application servers
        // (behind the traffic target groups) from .21, one per node.
        let zone_ips = |zone: &str, first: usize| -> Vec<String> {
            let z = zones.iter().position(|x| x == zone).unwrap_or(0) + 1;
            spec.nodes
                .iter()
                .filter(|n| n.zone == zone)
                .enumerate()
                .map(|(i, _)| format!("10.20.{z}.{}", first + i))
                .collect()
        };
        let target_group = |name: String, protocol: &str, port: i32, zone: &str| TargetGroup {
            arn: arn(&format!("targetgroup/{name}/{}", hex_id(&name))),
            name,
            protocol: protocol.into(),
            port,
            vpc_id: VPC.into(),
            target_type: "ip".into(),
            health_check_protocol: protocol.into(),
            targets: zone_ips(zone, if protocol == "HTTP" { 21 } else { 11 })
                .into_iter()
                .map(|id| Target {
                    id,
                    port,
                    availability_zone: None,
                    registered_at_ms: 0,
                })
                .collect(),
        };
        let forward = |groups: &[&TargetGroup], weight_of: &dyn Fn(usize) -> i32| Action {
            order: None,
            target_groups: groups
                .iter()
                .enumerate()
                .map(|(i, tg)| WeightedTargetGroup {
                    target_group_arn: tg.arn.clone(),
                    weight: weight_of(i),
                })
                .collect(),
            stickiness: false,
        };
        // The business's application load balancer: weighted forward between the zones, all
        // traffic in the last zone (B), and a rule with the same weights.
        let app = load_balancer(LOAD_BALANCER, "application", "internet-facing");
        let traffic: Vec<TargetGroup> = zones
            .iter()
            .map(|z| target_group(target_group_name(z), "HTTP", TRAFFIC_PORT, z))
            .collect();
        let last = traffic.len() - 1;
        let weighted = forward(&traffic.iter().collect::<Vec<_>>(), &|i| {
            if i == last {
                100
            } else {
                0
            }
        });
        let app_id = hex_id(LOAD_BALANCER);
        let app_listener = arn(&format!(
            "listener/app/{LOAD_BALANCER}/{app_id}/{}",
            hex_id("listener 80")
        ));
        let rule = Rule {
            arn: arn(&format!(
                "listener-rule/app/{LOAD_BALANCER}/{app_id}/{}/{}",
                hex_id("listener 80"),
                hex_id("rule 10")
            )),
            listener_arn: app_listener.clone(),
            priority: RULE_PRIORITY.into(),
            conditions: vec![Condition {
                field: "path-pattern".into(),
                values: vec!["/waymark/*".into()],
            }],
            actions: vec![weighted.clone()],
        };
        // The YugabyteDB network load balancer: TCP 5433 to the zone-B nodes' target group.
        let net = load_balancer(YB_LOAD_BALANCER, "network", "internal");
        let yb: Vec<TargetGroup> = zones
            .iter()
            .map(|z| target_group(yb_target_group_name(z), "TCP", PORT, z))
            .collect();
        let yb_last = yb.len() - 1;
        let yb_forward = forward(&[&yb[yb_last]], &|_| 1);
        let net_listener = arn(&format!(
            "listener/net/{YB_LOAD_BALANCER}/{}/{}",
            hex_id(YB_LOAD_BALANCER),
            hex_id("listener 5433")
        ));
        State {
            listeners: vec![
                Listener {
                    arn: app_listener,
                    load_balancer_arn: app.arn.clone(),
                    port: TRAFFIC_PORT,
                    protocol: "HTTP".into(),
                    default_actions: vec![weighted],
                },
                Listener {
                    arn: net_listener,
                    load_balancer_arn: net.arn.clone(),
                    port: PORT,
                    protocol: "TCP".into(),
                    default_actions: vec![yb_forward],
                },
            ],
            load_balancers: vec![app, net],
            target_groups: traffic.into_iter().chain(yb).collect(),
            rules: vec![rule],
            initial_ms: t.health_check_interval_ms * t.healthy_threshold,
            deregistration_delay_ms: t.deregistration_delay_ms,
            health_check_interval_s: spec.timing.health_check_interval_ms / 1000,
            healthy_threshold: t.healthy_threshold,
            draining: Vec::new(),
            failing_targets: BTreeSet::new(),
            created: 0,
        }
    }

    /// ARN of the target group named `name`.
    pub fn target_group_arn(&self, name: &str) -> Option<&str> {
        self.target_groups
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.arn.as_str())
    }

    /// ARN of the first listener of load balancer `name`.
    pub fn listener_arn(&self, load_balancer: &str) -> Option<&str> {
        let lb = self
            .load_balancers
            .iter()
            .find(|l| l.name == load_balancer)?;
        self.listeners
            .iter()
            .find(|l| l.load_balancer_arn == lb.arn)
            .map(|l| l.arn.as_str())
    }

    /// ARN of the rule of `listener_arn` with `priority`.
    pub fn rule_arn(&self, listener_arn: &str, priority: &str) -> Option<&str> {
        self.rules
            .iter()
            .find(|r| r.listener_arn == listener_arn && r.priority == priority)
            .map(|r| r.arn.as_str())
    }

    /// Weights of a listener's (or rule's) first forward action.
    pub fn weights(&self, listener_or_rule_arn: &str) -> Option<BTreeMap<String, i32>> {
        let actions = self
            .listeners
            .iter()
            .find(|l| l.arn == listener_or_rule_arn)
            .map(|l| &l.default_actions)
            .or_else(|| {
                self.rules
                    .iter()
                    .find(|r| r.arn == listener_or_rule_arn)
                    .map(|r| &r.actions)
            })?;
        actions.first().map(Action::weights)
    }

    /// Ids of the targets registered in a target group.
    pub fn registered(&self, target_group_arn: &str) -> Vec<String> {
        self.target_groups
            .iter()
            .find(|t| t.arn == target_group_arn)
            .map(|t| t.targets.iter().map(|x| x.id.clone()).collect())
            .unwrap_or_default()
    }

    fn next_hex(&mut self, what: &str) -> String {
        self.created += 1;
        hex_id(&format!("{what} {}", self.created))
    }

    /// Drops the targets whose draining ended.
    pub fn advance(&mut self, now: i64) {
        self.draining.retain(|d| d.until_ms > now);
    }

    /// Ground truth: every `LISTENER_OR_RULE -> TARGET_GROUP_NAME` forward with a weight above 0
    /// to a target group with no healthy target at `now`.
    pub fn unhealthy_forwards(&self, now: i64) -> Vec<String> {
        let sources = self
            .listeners
            .iter()
            .map(|l| (&l.arn, &l.default_actions))
            .chain(self.rules.iter().map(|r| (&r.arn, &r.actions)));
        let mut out = Vec::new();
        for (source, actions) in sources {
            for g in actions.iter().flat_map(|a| &a.target_groups) {
                if g.weight <= 0 {
                    continue;
                }
                let Some(tg) = self
                    .target_groups
                    .iter()
                    .find(|t| t.arn == g.target_group_arn)
                else {
                    continue;
                };
                let healthy = tg
                    .targets
                    .iter()
                    .any(|t| self.health(tg, &t.id, t.port, now).0 == "healthy");
                if !healthy {
                    out.push(format!("{source} -> {}", tg.name));
                }
            }
        }
        out
    }

    /// Whether any listener or rule forwards to `target_group_arn` with a weight above 0.
    pub fn forwards_to(&self, target_group_arn: &str) -> bool {
        self.listeners
            .iter()
            .flat_map(|l| &l.default_actions)
            .chain(self.rules.iter().flat_map(|r| &r.actions))
            .flat_map(|a| &a.target_groups)
            .any(|g| g.target_group_arn == target_group_arn && g.weight > 0)
    }

    fn health(
        &self,
        tg: &TargetGroup,
        id: &str,
        port: i32,
        now: i64,
    ) -> (&'static str, Option<(&'static str, &'static str)>) {
        match tg.targets.iter().find(|t| t.id == id && t.port == port) {
            None if self.draining.iter().any(|d| {
                d.target_group_arn == tg.arn
                    && d.target.id == id
                    && d.target.port == port
                    && d.until_ms > now
            }) =>
            {
                (
                    "draining",
                    Some((
                        "Target.DeregistrationInProgress",
                        "Target deregistration is in progress",
                    )),
                )
            }
            None => (
                "unused",
                Some((
                    "Target.NotRegistered",
                    "Target is not registered to the target group",
                )),
            ),
            Some(_) if self.failing_targets.contains(id) => (
                "unhealthy",
                Some(("Target.FailedHealthChecks", "Health checks failed")),
            ),
            Some(t) if now < t.registered_at_ms + self.initial_ms => (
                "initial",
                Some((
                    "Elb.RegistrationInProgress",
                    "Target registration is in progress",
                )),
            ),
            Some(_) => ("healthy", None),
        }
    }
}

/// An `ELBv2` error answer.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "ValidationError", message)
    }

    fn target_group_not_found() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "TargetGroupNotFound",
            "One or more target groups not found",
        )
    }

    fn listener_not_found() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "ListenerNotFound",
            "One or more listeners not found",
        )
    }

    fn load_balancer_not_found() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "LoadBalancerNotFound",
            "One or more load balancers not found",
        )
    }

    fn rule_not_found() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "RuleNotFound",
            "One or more rules not found",
        )
    }

    fn into_response(self, request_id: &str) -> Response {
        let kind = if self.status.is_server_error() {
            "Receiver"
        } else {
            "Sender"
        };
        let mut x = Xml::default();
        x.raw(&format!("<ErrorResponse xmlns=\"{NAMESPACE}\">"));
        x.open("Error");
        x.leaf("Type", kind);
        x.leaf("Code", self.code);
        x.leaf("Message", &self.message);
        x.close("Error");
        x.leaf("RequestId", request_id);
        x.raw("</ErrorResponse>");
        xml_response(self.status, request_id, x.0)
    }
}

type ApiResult = Result<Xml, ApiError>;

/// A target as a request names it: id, port, availability zone.
type AskedTarget = (String, Option<i32>, Option<String>);

/// A small XML writer.
#[derive(Default)]
struct Xml(String);

impl Xml {
    fn raw(&mut self, s: &str) {
        self.0.push_str(s);
    }

    fn open(&mut self, tag: &str) {
        self.0.push('<');
        self.0.push_str(tag);
        self.0.push('>');
    }

    fn close(&mut self, tag: &str) {
        self.0.push_str("</");
        self.0.push_str(tag);
        self.0.push('>');
    }

    fn leaf(&mut self, tag: &str, text: &str) {
        self.open(tag);
        for c in text.chars() {
            match c {
                '&' => self.0.push_str("&amp;"),
                '<' => self.0.push_str("&lt;"),
                '>' => self.0.push_str("&gt;"),
                '"' => self.0.push_str("&quot;"),
                '\'' => self.0.push_str("&apos;"),
                c => self.0.push(c),
            }
        }
        self.close(tag);
    }

    fn empty(&mut self, tag: &str) {
        self.0.push('<');
        self.0.push_str(tag);
        self.0.push_str("/>");
    }

    fn list<T>(
        &mut self,
        tag: &str,
        items: impl IntoIterator<Item = T>,
        mut each: impl FnMut(&mut Xml, T),
    ) {
        self.open(tag);
        for item in items {
            self.open("member");
            each(self, item);
            self.close("member");
        }
        self.close(tag);
    }

    fn load_balancer(&mut self, lb: &LoadBalancer) {
        self.leaf("LoadBalancerArn", &lb.arn);
        self.leaf("DNSName", &lb.dns_name);
        self.leaf("CanonicalHostedZoneId", "Z26RNL4JYFTOTI");
        self.leaf("CreatedTime", &lb.created);
        self.leaf("LoadBalancerName", &lb.name);
        self.leaf("Scheme", &lb.scheme);
        self.leaf("VpcId", &lb.vpc_id);
        self.open("State");
        self.leaf("Code", "active");
        self.close("State");
        self.leaf("Type", &lb.kind);
        self.list("AvailabilityZones", &lb.zones, |x, (zone, subnet)| {
            x.leaf("ZoneName", zone);
            x.leaf("SubnetId", subnet);
        });
        self.leaf("IpAddressType", "ipv4");
    }

    fn target_group(&mut self, tg: &TargetGroup, load_balancers: &[String], checks: (i64, i64)) {
        self.leaf("TargetGroupArn", &tg.arn);
        self.leaf("TargetGroupName", &tg.name);
        self.leaf("Protocol", &tg.protocol);
        self.leaf("Port", &tg.port.to_string());
        self.leaf("VpcId", &tg.vpc_id);
        self.leaf("HealthCheckProtocol", &tg.health_check_protocol);
        self.leaf("HealthCheckPort", "traffic-port");
        self.leaf("HealthCheckEnabled", "true");
        self.leaf("HealthCheckIntervalSeconds", &checks.0.to_string());
        self.leaf("HealthCheckTimeoutSeconds", "10");
        self.leaf("HealthyThresholdCount", &checks.1.to_string());
        self.leaf("UnhealthyThresholdCount", "2");
        self.list("LoadBalancerArns", load_balancers, |x, arn| {
            x.raw(&escape(arn));
        });
        self.leaf("TargetType", &tg.target_type);
        self.leaf("IpAddressType", "ipv4");
    }

    fn actions(&mut self, tag: &str, actions: &[Action]) {
        self.list(tag, actions, |x, a| {
            x.leaf("Type", "forward");
            if let [only] = a.target_groups.as_slice() {
                x.leaf("TargetGroupArn", &only.target_group_arn);
            }
            if let Some(order) = a.order {
                x.leaf("Order", &order.to_string());
            }
            x.open("ForwardConfig");
            x.list("TargetGroups", &a.target_groups, |x, g| {
                x.leaf("TargetGroupArn", &g.target_group_arn);
                x.leaf("Weight", &g.weight.to_string());
            });
            x.open("TargetGroupStickinessConfig");
            x.leaf("Enabled", if a.stickiness { "true" } else { "false" });
            x.close("TargetGroupStickinessConfig");
            x.close("ForwardConfig");
        });
    }

    fn listener(&mut self, l: &Listener) {
        self.leaf("ListenerArn", &l.arn);
        self.leaf("LoadBalancerArn", &l.load_balancer_arn);
        self.leaf("Port", &l.port.to_string());
        self.leaf("Protocol", &l.protocol);
        self.actions("DefaultActions", &l.default_actions);
    }

    fn rule(&mut self, r: &Rule, is_default: bool) {
        self.leaf("RuleArn", &r.arn);
        self.leaf("Priority", &r.priority);
        if r.conditions.is_empty() {
            self.empty("Conditions");
        } else {
            self.list("Conditions", &r.conditions, |x, c| {
                x.leaf("Field", &c.field);
                x.list("Values", &c.values, |x, v| {
                    x.raw(&escape(v));
                });
            });
        }
        self.actions("Actions", &r.actions);
        self.leaf("IsDefault", if is_default { "true" } else { "false" });
    }
}

fn escape(s: &str) -> String {
    let mut x = Xml::default();
    x.leaf("x", s);
    x.0["<x>".len()..x.0.len() - "</x>".len()].to_owned()
}

fn xml_response(status: StatusCode, request_id: &str, body: String) -> Response {
    (
        status,
        [
            ("content-type", "text/xml"),
            ("x-amzn-requestid", request_id),
        ],
        body,
    )
        .into_response()
}

/// The form parameters of a query-protocol request.
struct Params(BTreeMap<String, String>);

impl Params {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn required(&self, key: &str) -> Result<&str, ApiError> {
        self.get(key)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ApiError::validation(format!("1 validation error detected: Value null at '{key}' failed to satisfy constraint: Member must not be null")))
    }

    fn int(&self, key: &str) -> Result<Option<i32>, ApiError> {
        self.get(key)
            .map(|v| {
                v.parse::<i32>().map_err(|_| {
                    ApiError::validation(format!("{key} must be an integer, not '{v}'"))
                })
            })
            .transpose()
    }

    /// `PREFIX.member.N` prefixes, in order of N.
    fn members(&self, prefix: &str) -> Vec<String> {
        let start = format!("{prefix}.member.");
        let mut ns: Vec<u32> = self
            .0
            .keys()
            .filter_map(|k| k.strip_prefix(&start))
            .filter_map(|rest| rest.split('.').next()?.parse().ok())
            .collect();
        ns.sort_unstable();
        ns.dedup();
        ns.into_iter().map(|n| format!("{start}{n}")).collect()
    }

    /// Values of `PREFIX.member.N`, in order.
    fn strings(&self, prefix: &str) -> Vec<String> {
        self.members(prefix)
            .into_iter()
            .filter_map(|m| self.get(&m).map(str::to_owned))
            .collect()
    }

    fn actions(&self, prefix: &str, st: &State) -> Result<Vec<Action>, ApiError> {
        let mut actions = Vec::new();
        for (i, m) in self.members(prefix).iter().enumerate() {
            let kind = self.required(&format!("{m}.Type"))?;
            if kind != "forward" {
                return Err(ApiError::validation(format!(
                    "action {} of type '{kind}': the sandbox supports forward actions only",
                    i + 1
                )));
            }
            let mut groups = Vec::new();
            for g in self.members(&format!("{m}.ForwardConfig.TargetGroups")) {
                let weight = self.int(&format!("{g}.Weight"))?.unwrap_or(1);
                if !(0..=999).contains(&weight) {
                    return Err(ApiError::validation(format!(
                        "weight {weight} is not between 0 and 999"
                    )));
                }
                groups.push(WeightedTargetGroup {
                    target_group_arn: self.required(&format!("{g}.TargetGroupArn"))?.to_owned(),
                    weight,
                });
            }
            if groups.is_empty() {
                if let Some(arn) = self.get(&format!("{m}.TargetGroupArn")) {
                    groups.push(WeightedTargetGroup {
                        target_group_arn: arn.to_owned(),
                        weight: 1,
                    });
                }
            }
            if groups.is_empty() {
                return Err(ApiError::validation(format!(
                    "A target group ARN must be specified for action {} of type 'forward'",
                    i + 1
                )));
            }
            if let Some(g) = groups
                .iter()
                .find(|g| st.target_groups.iter().all(|t| t.arn != g.target_group_arn))
            {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "TargetGroupNotFound",
                    format!("Target group '{}' not found", g.target_group_arn),
                ));
            }
            actions.push(Action {
                order: self.int(&format!("{m}.Order"))?,
                target_groups: groups,
                stickiness: self.get(&format!(
                    "{m}.ForwardConfig.TargetGroupStickinessConfig.Enabled"
                )) == Some("true"),
            });
        }
        Ok(actions)
    }

    fn conditions(&self, prefix: &str) -> Vec<Condition> {
        self.members(prefix)
            .into_iter()
            .map(|m| {
                let field = self
                    .get(&format!("{m}.Field"))
                    .unwrap_or_default()
                    .to_owned();
                let mut values = self.strings(&format!("{m}.Values"));
                if values.is_empty() {
                    values = self.strings(&format!("{m}.PathPatternConfig.Values"));
                }
                Condition { field, values }
            })
            .collect()
    }

    /// `(id, port, zone)` of `Targets.member.N`.
    fn targets(&self) -> Result<Vec<AskedTarget>, ApiError> {
        self.members("Targets")
            .into_iter()
            .map(|m| {
                Ok((
                    self.required(&format!("{m}.Id"))?.to_owned(),
                    self.int(&format!("{m}.Port"))?,
                    self.get(&format!("{m}.AvailabilityZone"))
                        .map(str::to_owned),
                ))
            })
            .collect()
    }

    /// What faults match: the action, the main ARN or name, and the target ids.
    fn fault_key(&self, action: &str) -> String {
        let mut key = action.to_owned();
        for k in [
            "TargetGroupArn",
            "ListenerArn",
            "RuleArn",
            "LoadBalancerArn",
            "Name",
        ] {
            if let Some(v) = self.get(k) {
                key.push(' ');
                key.push_str(v);
            }
        }
        for prefix in [
            "TargetGroupArns",
            "ListenerArns",
            "RuleArns",
            "LoadBalancerArns",
            "Names",
        ] {
            for v in self.strings(prefix) {
                key.push(' ');
                key.push_str(&v);
            }
        }
        for m in self.members("Targets") {
            if let Some(id) = self.get(&format!("{m}.Id")) {
                key.push(' ');
                key.push_str(id);
            }
        }
        // Weighted forwards (ModifyListener, ModifyRule): ` TG-NAME=WEIGHT` for each group, so a
        // fault can match one switch of traffic and not the other.
        for (k, arn) in &self.0 {
            if let Some(prefix) = k
                .strip_suffix(".TargetGroupArn")
                .filter(|p| p.contains("ForwardConfig"))
            {
                if let Some(w) = self.get(&format!("{prefix}.Weight")) {
                    let name = arn.split('/').nth(1).unwrap_or(arn);
                    key.push_str(&format!(" {name}={w}"));
                }
            }
        }
        key
    }
}

/// Wraps the answer of `action` in `<ActionResponse><ActionResult>..`.
fn envelope(action: &str, result: &Xml, request_id: &str) -> String {
    let mut x = Xml::default();
    x.raw(&format!("<{action}Response xmlns=\"{NAMESPACE}\">"));
    if result.0.is_empty() {
        x.empty(&format!("{action}Result"));
    } else {
        x.open(&format!("{action}Result"));
        x.raw(&result.0);
        x.close(&format!("{action}Result"));
    }
    x.open("ResponseMetadata");
    x.leaf("RequestId", request_id);
    x.close("ResponseMetadata");
    x.raw(&format!("</{action}Response>"));
    x.0
}

/// Set on a connection that must be closed without an answer (`FaultKind::Drop`).
#[derive(Clone, Debug)]
struct Kill(Arc<AtomicBool>);

/// A TCP connection that fails every read and write once killed, so that the server closes it
/// without writing the answer.
struct KillableStream {
    inner: TcpStream,
    killed: Arc<AtomicBool>,
}

fn killed_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "sandbox fault: connection dropped",
    )
}

impl AsyncRead for KillableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.killed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(killed_error()));
        }
        Pin::new(&mut me.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if me.killed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(killed_error()));
        }
        Pin::new(&mut me.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.killed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(killed_error()));
        }
        Pin::new(&mut me.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A TCP listener whose connections can be killed by their handler.
struct KillableListener(TcpListener);

impl axum::serve::Listener for KillableListener {
    type Io = KillableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((inner, addr)) => {
                    return (
                        KillableStream {
                            inner,
                            killed: Arc::new(AtomicBool::new(false)),
                        },
                        addr,
                    )
                }
                Err(e) => {
                    tracing::warn!("sandbox ELBv2: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

impl Connected<axum::serve::IncomingStream<'_, KillableListener>> for Kill {
    fn connect_info(stream: axum::serve::IncomingStream<'_, KillableListener>) -> Self {
        Kill(stream.io().killed.clone())
    }
}

/// Answers an injected fault, or `None` to go on (after a delay, if any).
async fn apply_fault(
    shared: &Shared,
    key: &str,
    kill: &Kill,
    request_id: &str,
) -> Option<Response> {
    let (status, code, message) = match shared.fault_for("elb", key)? {
        FaultKind::Delay(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            return None;
        }
        FaultKind::Drop => {
            kill.0.store(true, Ordering::SeqCst);
            return Some(StatusCode::INTERNAL_SERVER_ERROR.into_response());
        }
        FaultKind::Throttle | FaultKind::Status(400 | 429) => {
            (StatusCode::BAD_REQUEST, "Throttling", "Rate exceeded")
        }
        FaultKind::Status(code @ (401 | 403)) => (
            StatusCode::from_u16(code).unwrap_or(StatusCode::FORBIDDEN),
            "AccessDenied",
            "User is not authorized to perform this action (injected fault)",
        ),
        FaultKind::Status(503) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "Service is unavailable (injected fault)",
        ),
        FaultKind::Status(code) => (
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "InternalFailure",
            "The request processing has failed because of an unknown error (injected fault)",
        ),
        FaultKind::Exit(..) => return None,
    };
    Some(ApiError::new(status, code, message).into_response(request_id))
}

/// Serves the `ELBv2` query API.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let app = axum::Router::new()
        .route("/", post(handle))
        .with_state(shared)
        .into_make_service_with_connect_info::<Kill>();
    if let Err(e) = axum::serve(KillableListener(listener), app).await {
        tracing::error!("sandbox ELBv2 server stopped: {e}");
    }
}

async fn handle(
    AxState(shared): AxState<Arc<Shared>>,
    ConnectInfo(kill): ConnectInfo<Kill>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let params = Params(form.into_iter().collect());
    let action = params.get("Action").unwrap_or_default().to_owned();
    if let Some(r) = apply_fault(&shared, &params.fault_key(&action), &kill, &request_id).await {
        return r;
    }
    let signed = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("AWS4-HMAC-SHA256"));
    if !signed {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "MissingAuthenticationToken",
            "Request is missing Authentication Token",
        )
        .into_response(&request_id);
    }
    if params.get("Version") != Some("2015-12-01") {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "InvalidAction",
            format!(
                "Could not find operation {action} for version {}",
                params.get("Version").unwrap_or("NO_VERSION_SPECIFIED")
            ),
        )
        .into_response(&request_id);
    }
    match dispatch(&shared, &action, &params) {
        Ok(result) => xml_response(
            StatusCode::OK,
            &request_id,
            envelope(&action, &result, &request_id),
        ),
        Err(e) => e.into_response(&request_id),
    }
}

fn dispatch(shared: &Shared, action: &str, p: &Params) -> ApiResult {
    match action {
        "DescribeLoadBalancers" => shared.read(|st| describe_load_balancers(&st.elb, p)),
        "DescribeTargetGroups" => shared.read(|st| describe_target_groups(&st.elb, p)),
        "DescribeListeners" => shared.read(|st| describe_listeners(&st.elb, p)),
        "DescribeRules" => shared.read(|st| describe_rules(&st.elb, p)),
        "DescribeTargetHealth" => shared.read(|st| describe_target_health(&st.elb, p)),
        "RegisterTargets" => register_targets(shared, p),
        "DeregisterTargets" => deregister_targets(shared, p),
        "ModifyListener" => modify_listener(shared, p),
        "ModifyRule" => modify_rule(shared, p),
        "CreateLoadBalancer" => create_load_balancer(shared, p),
        "CreateTargetGroup" => create_target_group(shared, p),
        "CreateListener" => create_listener(shared, p),
        "CreateRule" => create_rule(shared, p),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "InvalidAction",
            format!("Could not find operation {action} for version 2015-12-01"),
        )),
    }
}

fn describe_load_balancers(st: &State, p: &Params) -> ApiResult {
    let arns = p.strings("LoadBalancerArns");
    let names = p.strings("Names");
    let mut found = Vec::new();
    for lb in &st.load_balancers {
        if (arns.is_empty() && names.is_empty())
            || arns.contains(&lb.arn)
            || names.contains(&lb.name)
        {
            found.push(lb);
        }
    }
    if found.len() < arns.len() + names.len() {
        return Err(ApiError::load_balancer_not_found());
    }
    let mut x = Xml::default();
    x.list("LoadBalancers", found, Xml::load_balancer);
    Ok(x)
}

/// ARNs of the load balancers whose listeners or rules forward to `tg`.
fn load_balancers_of(st: &State, tg: &str) -> Vec<String> {
    let mut arns: Vec<String> = Vec::new();
    let uses = |actions: &[Action]| {
        actions
            .iter()
            .any(|a| a.target_groups.iter().any(|g| g.target_group_arn == tg))
    };
    for l in &st.listeners {
        let by_rule = st
            .rules
            .iter()
            .any(|r| r.listener_arn == l.arn && uses(&r.actions));
        if (uses(&l.default_actions) || by_rule) && !arns.contains(&l.load_balancer_arn) {
            arns.push(l.load_balancer_arn.clone());
        }
    }
    arns
}

fn describe_target_groups(st: &State, p: &Params) -> ApiResult {
    let arns = p.strings("TargetGroupArns");
    let names = p.strings("Names");
    let lb = p.get("LoadBalancerArn");
    if usize::from(!arns.is_empty()) + usize::from(!names.is_empty()) + usize::from(lb.is_some())
        > 1
    {
        return Err(ApiError::validation(
            "Target group names, target group ARNs, and a load balancer ARN cannot be specified at the same time",
        ));
    }
    if let Some(lb) = lb {
        if st.load_balancers.iter().all(|l| l.arn != lb) {
            return Err(ApiError::load_balancer_not_found());
        }
    }
    let found: Vec<&TargetGroup> = st
        .target_groups
        .iter()
        .filter(|t| {
            (arns.is_empty() && names.is_empty())
                || arns.contains(&t.arn)
                || names.contains(&t.name)
        })
        .filter(|t| lb.is_none_or(|lb| load_balancers_of(st, &t.arn).iter().any(|a| a == lb)))
        .collect();
    if found.len() < arns.len() + names.len() {
        return Err(ApiError::target_group_not_found());
    }
    let mut x = Xml::default();
    x.list("TargetGroups", found, |x, t| {
        x.target_group(
            t,
            &load_balancers_of(st, &t.arn),
            (st.health_check_interval_s, st.healthy_threshold),
        );
    });
    Ok(x)
}

fn describe_listeners(st: &State, p: &Params) -> ApiResult {
    let arns = p.strings("ListenerArns");
    let lb = p.get("LoadBalancerArn");
    let found: Vec<&Listener> = match lb {
        Some(lb) => {
            if st.load_balancers.iter().all(|l| l.arn != lb) {
                return Err(ApiError::load_balancer_not_found());
            }
            st.listeners
                .iter()
                .filter(|l| l.load_balancer_arn == lb)
                .collect()
        }
        None if arns.is_empty() => {
            return Err(ApiError::validation(
                "You must specify either listener ARNs or a load balancer ARN",
            ));
        }
        None => {
            let found: Vec<&Listener> = st
                .listeners
                .iter()
                .filter(|l| arns.contains(&l.arn))
                .collect();
            if found.len() < arns.len() {
                return Err(ApiError::listener_not_found());
            }
            found
        }
    };
    let mut x = Xml::default();
    x.list("Listeners", found, Xml::listener);
    Ok(x)
}

/// The default rule of a listener, as `DescribeRules` shows it.
fn default_rule(l: &Listener) -> Rule {
    Rule {
        arn: l.arn.replacen(":listener/", ":listener-rule/", 1)
            + "/"
            + &hex_id(&format!("default {}", l.arn)),
        listener_arn: l.arn.clone(),
        priority: "default".into(),
        conditions: Vec::new(),
        actions: l.default_actions.clone(),
    }
}

fn describe_rules(st: &State, p: &Params) -> ApiResult {
    let arns = p.strings("RuleArns");
    let listener = p.get("ListenerArn");
    let mut all: Vec<(Rule, bool)> = Vec::new();
    for l in &st.listeners {
        if listener.is_some_and(|arn| arn != l.arn) {
            continue;
        }
        all.extend(
            st.rules
                .iter()
                .filter(|r| r.listener_arn == l.arn)
                .map(|r| (r.clone(), false)),
        );
        all.push((default_rule(l), true));
    }
    let found: Vec<(Rule, bool)> = match listener {
        Some(arn) if st.listeners.iter().all(|l| l.arn != arn) => {
            return Err(ApiError::listener_not_found())
        }
        Some(_) => all,
        None if arns.is_empty() => {
            return Err(ApiError::validation(
                "You must specify either listener ARN or rule ARNs",
            ));
        }
        None => {
            let found: Vec<(Rule, bool)> = all
                .into_iter()
                .filter(|(r, _)| arns.contains(&r.arn))
                .collect();
            if found.len() < arns.len() {
                return Err(ApiError::rule_not_found());
            }
            found
        }
    };
    let mut x = Xml::default();
    x.list("Rules", &found, |x, (r, is_default)| x.rule(r, *is_default));
    Ok(x)
}

fn describe_target_health(st: &State, p: &Params) -> ApiResult {
    let tg_arn = p.required("TargetGroupArn")?;
    let tg = st
        .target_groups
        .iter()
        .find(|t| t.arn == tg_arn)
        .ok_or_else(ApiError::target_group_not_found)?;
    let asked = p.targets()?;
    let now = now_ms();
    let targets: Vec<(String, i32, Option<String>)> = if asked.is_empty() {
        tg.targets
            .iter()
            .chain(
                st.draining
                    .iter()
                    .filter(|d| d.target_group_arn == tg.arn && d.until_ms > now)
                    .map(|d| &d.target),
            )
            .map(|t| (t.id.clone(), t.port, t.availability_zone.clone()))
            .collect()
    } else {
        asked
            .into_iter()
            .map(|(id, port, zone)| (id, port.unwrap_or(tg.port), zone))
            .collect()
    };
    let mut x = Xml::default();
    x.list(
        "TargetHealthDescriptions",
        &targets,
        |x, (id, port, zone)| {
            x.open("Target");
            x.leaf("Id", id);
            x.leaf("Port", &port.to_string());
            if let Some(zone) = zone {
                x.leaf("AvailabilityZone", zone);
            }
            x.close("Target");
            x.leaf("HealthCheckPort", &port.to_string());
            let (state, reason) = st.health(tg, id, *port, now);
            x.open("TargetHealth");
            x.leaf("State", state);
            if let Some((reason, description)) = reason {
                x.leaf("Reason", reason);
                x.leaf("Description", description);
            }
            x.close("TargetHealth");
        },
    );
    Ok(x)
}

fn validate_target(tg: &TargetGroup, id: &str) -> Result<(), ApiError> {
    match tg.target_type.as_str() {
        "ip" if id.parse::<Ipv4Addr>().is_err() => Err(ApiError::validation(format!(
            "The IP address '{id}' is not a valid IPv4 address"
        ))),
        "instance" if !id.starts_with("i-") => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "InvalidTarget",
            format!("The following targets are not valid instances: '{id}'"),
        )),
        _ => Ok(()),
    }
}

fn register_targets(shared: &Shared, p: &Params) -> ApiResult {
    let tg_arn = p.required("TargetGroupArn")?.to_owned();
    let targets = p.targets()?;
    if targets.is_empty() {
        return Err(ApiError::validation("Targets must not be empty"));
    }
    let now = now_ms();
    let added = shared.mutate(|st| {
        let tg = st
            .elb
            .target_groups
            .iter_mut()
            .find(|t| t.arn == tg_arn)
            .ok_or_else(ApiError::target_group_not_found)?;
        for (id, _, _) in &targets {
            validate_target(tg, id)?;
        }
        let mut added = Vec::new();
        let tg_arn_now = tg.arn.clone();
        let default_port = tg.port;
        for (id, port, zone) in &targets {
            let port = port.unwrap_or(default_port);
            st.elb.draining.retain(|d| {
                !(d.target_group_arn == tg_arn_now && &d.target.id == id && d.target.port == port)
            });
            let tg = st
                .elb
                .target_groups
                .iter_mut()
                .find(|t| t.arn == tg_arn_now)
                .ok_or_else(ApiError::target_group_not_found)?;
            if !tg.targets.iter().any(|t| &t.id == id && t.port == port) {
                tg.targets.push(Target {
                    id: id.clone(),
                    port,
                    availability_zone: zone.clone(),
                    registered_at_ms: now,
                });
                added.push(json!({"id": id, "port": port}));
            }
        }
        Ok::<_, ApiError>(added)
    })?;
    let asked: Vec<_> = targets
        .iter()
        .map(|(id, port, _)| json!({"id": id, "port": port}))
        .collect();
    shared.record_effect(
        "elb",
        &tg_arn,
        "register",
        json!({"targets": asked, "added": added}),
    );
    Ok(Xml::default())
}

fn deregister_targets(shared: &Shared, p: &Params) -> ApiResult {
    let tg_arn = p.required("TargetGroupArn")?.to_owned();
    let targets = p.targets()?;
    if targets.is_empty() {
        return Err(ApiError::validation("Targets must not be empty"));
    }
    let now = now_ms();
    let removed = shared.mutate(|st| {
        let tg = st
            .elb
            .target_groups
            .iter_mut()
            .find(|t| t.arn == tg_arn)
            .ok_or_else(ApiError::target_group_not_found)?;
        let mut removed = Vec::new();
        let mut draining = Vec::new();
        for (id, port, _) in &targets {
            let port = port.unwrap_or(tg.port);
            if let Some(i) = tg
                .targets
                .iter()
                .position(|t| &t.id == id && t.port == port)
            {
                let target = tg.targets.remove(i);
                draining.push(Draining {
                    target_group_arn: tg.arn.clone(),
                    target,
                    until_ms: now + st.elb.deregistration_delay_ms,
                });
                removed.push(json!({"id": id, "port": port}));
            }
        }
        st.elb.draining.extend(draining);
        Ok::<_, ApiError>(removed)
    })?;
    let asked: Vec<_> = targets
        .iter()
        .map(|(id, port, _)| json!({"id": id, "port": port}))
        .collect();
    shared.record_effect(
        "elb",
        &tg_arn,
        "deregister",
        json!({"targets": asked, "removed": removed}),
    );
    Ok(Xml::default())
}

/// The load balancer a listener belongs to.
fn load_balancer_of_listener<'a>(st: &'a State, listener_arn: &str) -> Option<&'a LoadBalancer> {
    let l = st.listeners.iter().find(|l| l.arn == listener_arn)?;
    st.load_balancers
        .iter()
        .find(|lb| lb.arn == l.load_balancer_arn)
}

/// AWS refuses a forward to more than one (weighted) target group on a network load balancer.
fn refuse_weighted_on_network(
    lb: Option<&LoadBalancer>,
    actions: &[Action],
) -> Result<(), ApiError> {
    let Some(lb) = lb.filter(|lb| lb.kind == "network") else {
        return Ok(());
    };
    if actions.iter().any(|a| a.target_groups.len() > 1) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "InvalidConfigurationRequest",
            format!(
                "You cannot specify multiple target groups in a single forward action of a load \
                 balancer of type 'network' ('{}'); weighted forwarding requires an application \
                 load balancer",
                lb.name
            ),
        ));
    }
    Ok(())
}

fn modify_listener(shared: &Shared, p: &Params) -> ApiResult {
    let arn = p.required("ListenerArn")?.to_owned();
    let (listener, before) = shared.mutate(|st| {
        let actions = if p.members("DefaultActions").is_empty() {
            None
        } else {
            Some(p.actions("DefaultActions", &st.elb)?)
        };
        if let Some(actions) = &actions {
            refuse_weighted_on_network(load_balancer_of_listener(&st.elb, &arn), actions)?;
        }
        let port = p.int("Port")?;
        let l = st
            .elb
            .listeners
            .iter_mut()
            .find(|l| l.arn == arn)
            .ok_or_else(ApiError::listener_not_found)?;
        let before = l.default_actions.first().map(Action::weights);
        if let Some(actions) = actions {
            l.default_actions = actions;
        }
        if let Some(port) = port {
            l.port = port;
        }
        if let Some(protocol) = p.get("Protocol") {
            protocol.clone_into(&mut l.protocol);
        }
        Ok::<_, ApiError>((l.clone(), before))
    })?;
    shared.record_effect(
        "elb",
        &arn,
        "modify-listener",
        json!({"before": before, "after": listener.default_actions.first().map(Action::weights)}),
    );
    let mut x = Xml::default();
    x.list("Listeners", [&listener], Xml::listener);
    Ok(x)
}

fn modify_rule(shared: &Shared, p: &Params) -> ApiResult {
    let arn = p.required("RuleArn")?.to_owned();
    let (rule, before) = shared.mutate(|st| {
        if st.elb.listeners.iter().any(|l| default_rule(l).arn == arn) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "OperationNotPermitted",
                "Default rule cannot be modified; use ModifyListener",
            ));
        }
        let actions = if p.members("Actions").is_empty() {
            None
        } else {
            Some(p.actions("Actions", &st.elb)?)
        };
        let r = st
            .elb
            .rules
            .iter_mut()
            .find(|r| r.arn == arn)
            .ok_or_else(ApiError::rule_not_found)?;
        let before = r.actions.first().map(Action::weights);
        if let Some(actions) = actions {
            r.actions = actions;
        }
        if !p.members("Conditions").is_empty() {
            r.conditions = p.conditions("Conditions");
        }
        Ok((r.clone(), before))
    })?;
    shared.record_effect(
        "elb",
        &arn,
        "modify-rule",
        json!({"before": before, "after": rule.actions.first().map(Action::weights)}),
    );
    let mut x = Xml::default();
    x.list("Rules", [&rule], |x, r| x.rule(r, false));
    Ok(x)
}

fn create_load_balancer(shared: &Shared, p: &Params) -> ApiResult {
    let name = p.required("Name")?.to_owned();
    let kind = p.get("Type").unwrap_or("application").to_owned();
    let scheme = p.get("Scheme").unwrap_or("internet-facing").to_owned();
    let mut subnets = p.strings("Subnets");
    subnets.extend(
        p.members("SubnetMappings")
            .into_iter()
            .filter_map(|m| p.get(&format!("{m}.SubnetId")).map(str::to_owned)),
    );
    if subnets.is_empty() {
        return Err(ApiError::validation(
            "At least one subnet must be specified",
        ));
    }
    let (lb, created) = shared.mutate(|st| {
        if let Some(lb) = st.elb.load_balancers.iter().find(|l| l.name == name) {
            return (lb.clone(), false);
        }
        let id = st.elb.next_hex(&name);
        let lb = LoadBalancer {
            arn: arn(&format!(
                "loadbalancer/{}/{name}/{id}",
                lb_kind_prefix(&kind)
            )),
            name: name.clone(),
            kind: kind.clone(),
            scheme: scheme.clone(),
            vpc_id: VPC.into(),
            zones: subnets
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    (
                        format!("{REGION}{}", char::from(b'a' + (i % 6) as u8)),
                        s.clone(),
                    )
                })
                .collect(),
            dns_name: format!("{name}-{}.elb.{REGION}.amazonaws.com", &id[..8]),
            created: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        };
        st.elb.load_balancers.push(lb.clone());
        (lb, true)
    });
    if created {
        shared.record_effect(
            "elb",
            &lb.arn,
            "create-load-balancer",
            json!({"name": name, "type": kind}),
        );
    }
    let mut x = Xml::default();
    x.list("LoadBalancers", [&lb], Xml::load_balancer);
    Ok(x)
}

fn create_target_group(shared: &Shared, p: &Params) -> ApiResult {
    let name = p.required("Name")?.to_owned();
    if name.len() > 32 {
        return Err(ApiError::validation(format!(
            "Target group name '{name}' cannot be longer than '32' characters"
        )));
    }
    let protocol = p.get("Protocol").unwrap_or("HTTP").to_owned();
    let port = p.int("Port")?.unwrap_or(80);
    let target_type = p.get("TargetType").unwrap_or("instance").to_owned();
    let tg = TargetGroup {
        arn: String::new(),
        name: name.clone(),
        protocol: protocol.clone(),
        port,
        vpc_id: p.get("VpcId").unwrap_or(VPC).to_owned(),
        target_type,
        health_check_protocol: p.get("HealthCheckProtocol").unwrap_or(&protocol).to_owned(),
        targets: Vec::new(),
    };
    let mut checks = (30, 5);
    let (tg, created, lbs) = shared.mutate(|st| {
        checks = (st.elb.health_check_interval_s, st.elb.healthy_threshold);
        if let Some(existing) = st.elb.target_groups.iter().find(|t| t.name == name) {
            let same = existing.protocol == tg.protocol
                && existing.port == tg.port
                && existing.target_type == tg.target_type;
            if !same {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "DuplicateTargetGroupName",
                    "A target group with the same name exists, but with different settings",
                ));
            }
            return Ok((
                existing.clone(),
                false,
                load_balancers_of(&st.elb, &existing.arn),
            ));
        }
        let id = st.elb.next_hex(&name);
        let tg = TargetGroup {
            arn: arn(&format!("targetgroup/{name}/{id}")),
            ..tg
        };
        st.elb.target_groups.push(tg.clone());
        Ok((tg, true, Vec::new()))
    })?;
    if created {
        shared.record_effect(
            "elb",
            &tg.arn,
            "create-target-group",
            json!({"name": name, "port": port}),
        );
    }
    let mut x = Xml::default();
    x.list("TargetGroups", [&tg], |x, t| {
        x.target_group(t, &lbs, checks);
    });
    Ok(x)
}

fn create_listener(shared: &Shared, p: &Params) -> ApiResult {
    let lb_arn = p.required("LoadBalancerArn")?.to_owned();
    let port = p
        .int("Port")?
        .ok_or_else(|| ApiError::validation("A listener port must be specified"))?;
    let protocol = p.required("Protocol")?.to_owned();
    let listener = shared.mutate(|st| {
        let actions = p.actions("DefaultActions", &st.elb)?;
        let lb = st
            .elb
            .load_balancers
            .iter()
            .find(|l| l.arn == lb_arn)
            .ok_or_else(ApiError::load_balancer_not_found)?;
        refuse_weighted_on_network(Some(lb), &actions)?;
        if st
            .elb
            .listeners
            .iter()
            .any(|l| l.load_balancer_arn == lb_arn && l.port == port)
        {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "DuplicateListener",
                "A listener with the specified port already exists",
            ));
        }
        let lb_path = lb
            .arn
            .split(":loadbalancer/")
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let id = st.elb.next_hex(&format!("listener {lb_arn} {port}"));
        let listener = Listener {
            arn: arn(&format!("listener/{lb_path}/{id}")),
            load_balancer_arn: lb_arn.clone(),
            port,
            protocol,
            default_actions: actions,
        };
        st.elb.listeners.push(listener.clone());
        Ok(listener)
    })?;
    shared.record_effect(
        "elb",
        &listener.arn,
        "create-listener",
        json!({"port": port, "weights": listener.default_actions.first().map(Action::weights)}),
    );
    let mut x = Xml::default();
    x.list("Listeners", [&listener], Xml::listener);
    Ok(x)
}

fn create_rule(shared: &Shared, p: &Params) -> ApiResult {
    let listener_arn = p.required("ListenerArn")?.to_owned();
    let priority = p.required("Priority")?.to_owned();
    if priority
        .parse::<u32>()
        .map_or(true, |n| !(1..=50_000).contains(&n))
    {
        return Err(ApiError::validation(format!(
            "Priority '{priority}' must be between 1 and 50000"
        )));
    }
    let conditions = p.conditions("Conditions");
    let rule = shared.mutate(|st| {
        let actions = p.actions("Actions", &st.elb)?;
        if st.elb.listeners.iter().all(|l| l.arn != listener_arn) {
            return Err(ApiError::listener_not_found());
        }
        if let Some(lb) =
            load_balancer_of_listener(&st.elb, &listener_arn).filter(|lb| lb.kind == "network")
        {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "InvalidConfigurationRequest",
                format!(
                    "Listener rules are not supported by load balancers of type 'network' ('{}')",
                    lb.name
                ),
            ));
        }
        if st
            .elb
            .rules
            .iter()
            .any(|r| r.listener_arn == listener_arn && r.priority == priority)
        {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "PriorityInUse",
                "The specified priority is in use.",
            ));
        }
        let id = st.elb.next_hex(&format!("rule {listener_arn} {priority}"));
        let rule = Rule {
            arn: format!(
                "{}/{id}",
                listener_arn.replacen(":listener/", ":listener-rule/", 1)
            ),
            listener_arn: listener_arn.clone(),
            priority: priority.clone(),
            conditions,
            actions,
        };
        st.elb.rules.push(rule.clone());
        Ok(rule)
    })?;
    shared.record_effect(
        "elb",
        &rule.arn,
        "create-rule",
        json!({"priority": priority, "weights": rule.actions.first().map(Action::weights)}),
    );
    let mut x = Xml::default();
    x.list("Rules", [&rule], |x, r| x.rule(r, false));
    Ok(x)
}
