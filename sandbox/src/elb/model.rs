//! The `ELBv2` model: load balancers, target groups and their targets, listeners and rules, and
//! each target's health over time (`initial`, `healthy`, `draining`), built from the [`Spec`].

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::spec::Spec;

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
pub(super) fn hex_id(seed: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

pub(super) fn arn(resource: &str) -> String {
    format!("arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}:{resource}")
}

pub(super) fn lb_kind_prefix(kind: &str) -> &'static str {
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
    pub fn from_spec(spec: &Spec, now: DateTime<Utc>) -> Self {
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
                created: now.to_rfc3339_opts(SecondsFormat::Millis, true),
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

    pub(super) fn next_hex(&mut self, what: &str) -> String {
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

    pub(super) fn health(
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
