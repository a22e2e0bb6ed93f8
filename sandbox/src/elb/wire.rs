//! The AWS query protocol: form parameters in ([`Params`]), XML answers out ([`Xml`],
//! [`envelope`]), `<ErrorResponse>` answers ([`ApiError`]). The connections are
//! [`crate::conn`]'s.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::model::{
    Action, Condition, Listener, LoadBalancer, Rule, State, TargetGroup, WeightedTargetGroup,
    NAMESPACE,
};

/// An `ELBv2` error answer.
#[derive(Debug)]
pub(super) struct ApiError {
    pub(super) status: StatusCode,
    pub(super) code: &'static str,
    pub(super) message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(super) fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "ValidationError", message)
    }

    pub(super) fn target_group_not_found() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "TargetGroupNotFound",
            "One or more target groups not found",
        )
    }

    pub(super) fn listener_not_found() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "ListenerNotFound",
            "One or more listeners not found",
        )
    }

    pub(super) fn load_balancer_not_found() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "LoadBalancerNotFound",
            "One or more load balancers not found",
        )
    }

    pub(super) fn rule_not_found() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "RuleNotFound",
            "One or more rules not found",
        )
    }

    pub(super) fn into_response(self, request_id: &str) -> Response {
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

pub(super) type ApiResult = Result<Xml, ApiError>;

/// A target as a request names it: id, port, availability zone.
pub(super) type AskedTarget = (String, Option<i32>, Option<String>);

/// A small XML writer.
#[derive(Default)]
pub(super) struct Xml(pub(super) String);

impl Xml {
    pub(super) fn raw(&mut self, s: &str) {
        self.0.push_str(s);
    }

    pub(super) fn open(&mut self, tag: &str) {
        self.0.push('<');
        self.0.push_str(tag);
        self.0.push('>');
    }

    pub(super) fn close(&mut self, tag: &str) {
        self.0.push_str("</");
        self.0.push_str(tag);
        self.0.push('>');
    }

    pub(super) fn leaf(&mut self, tag: &str, text: &str) {
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

    pub(super) fn empty(&mut self, tag: &str) {
        self.0.push('<');
        self.0.push_str(tag);
        self.0.push_str("/>");
    }

    pub(super) fn list<T>(
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

    pub(super) fn load_balancer(&mut self, lb: &LoadBalancer) {
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

    pub(super) fn target_group(
        &mut self,
        tg: &TargetGroup,
        load_balancers: &[String],
        checks: (i64, i64),
    ) {
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

    pub(super) fn actions(&mut self, tag: &str, actions: &[Action]) {
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

    pub(super) fn listener(&mut self, l: &Listener) {
        self.leaf("ListenerArn", &l.arn);
        self.leaf("LoadBalancerArn", &l.load_balancer_arn);
        self.leaf("Port", &l.port.to_string());
        self.leaf("Protocol", &l.protocol);
        self.actions("DefaultActions", &l.default_actions);
    }

    pub(super) fn rule(&mut self, r: &Rule, is_default: bool) {
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

pub(super) fn escape(s: &str) -> String {
    let mut x = Xml::default();
    x.leaf("x", s);
    x.0["<x>".len()..x.0.len() - "</x>".len()].to_owned()
}

pub(super) fn xml_response(status: StatusCode, request_id: &str, body: String) -> Response {
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
pub(super) struct Params(pub(super) BTreeMap<String, String>);

impl Params {
    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub(super) fn required(&self, key: &str) -> Result<&str, ApiError> {
        self.get(key)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ApiError::validation(format!("1 validation error detected: Value null at '{key}' failed to satisfy constraint: Member must not be null")))
    }

    pub(super) fn int(&self, key: &str) -> Result<Option<i32>, ApiError> {
        self.get(key)
            .map(|v| {
                v.parse::<i32>().map_err(|_| {
                    ApiError::validation(format!("{key} must be an integer, not '{v}'"))
                })
            })
            .transpose()
    }

    /// `PREFIX.member.N` prefixes, in order of N.
    pub(super) fn members(&self, prefix: &str) -> Vec<String> {
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
    pub(super) fn strings(&self, prefix: &str) -> Vec<String> {
        self.members(prefix)
            .into_iter()
            .filter_map(|m| self.get(&m).map(str::to_owned))
            .collect()
    }

    pub(super) fn actions(&self, prefix: &str, st: &State) -> Result<Vec<Action>, ApiError> {
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

    pub(super) fn conditions(&self, prefix: &str) -> Vec<Condition> {
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
    pub(super) fn targets(&self) -> Result<Vec<AskedTarget>, ApiError> {
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
    pub(super) fn fault_key(&self, action: &str) -> String {
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
pub(super) fn envelope(action: &str, result: &Xml, request_id: &str) -> String {
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
