//! One function per `ELBv2` action, on the shared estate: reads under [`Shared::read`], changes
//! under [`Shared::mutate`] with an effect recorded; faults answered first.

use std::net::Ipv4Addr;
use std::sync::Arc;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Form;
use chrono::SecondsFormat;
use serde_json::json;
use tokio::net::TcpListener;

use super::model::{
    arn, hex_id, lb_kind_prefix, Action, Draining, Listener, LoadBalancer, Rule, State, Target,
    TargetGroup, REGION, VPC,
};
use super::wire::{envelope, xml_response, ApiError, ApiResult, Params, Xml};
use crate::conn::Conn;
use crate::estate::{FaultKind, Shared};

/// Answers an injected fault, or `None` to go on (after a delay, if any).
async fn apply_fault(
    shared: &Shared,
    key: &str,
    conn: &Conn,
    request_id: &str,
) -> Option<Response> {
    let (status, code, message) = match shared.fault_for("elb", key)? {
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
        other => return crate::conn::act_out(&other, conn).await,
    };
    Some(ApiError::new(status, code, message).into_response(request_id))
}

/// Serves the `ELBv2` query API.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let app = axum::Router::new()
        .route("/", post(handle))
        .with_state(shared);
    if let Err(e) = crate::conn::serve(listener, app).await {
        tracing::error!("sandbox ELBv2 server stopped: {e}");
    }
}

async fn handle(
    AxState(shared): AxState<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let request_id = shared.request_id();
    let params = Params(form.into_iter().collect());
    let action = params.get("Action").unwrap_or_default().to_owned();
    if let Some(r) = apply_fault(&shared, &params.fault_key(&action), &conn, &request_id).await {
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
        "DescribeTargetHealth" => {
            shared.read(|st| describe_target_health(&st.elb, p, shared.now_ms()))
        }
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

fn describe_target_health(st: &State, p: &Params, now: i64) -> ApiResult {
    let tg_arn = p.required("TargetGroupArn")?;
    let tg = st
        .target_groups
        .iter()
        .find(|t| t.arn == tg_arn)
        .ok_or_else(ApiError::target_group_not_found)?;
    let asked = p.targets()?;
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
    let now = shared.now_ms();
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
    let now = shared.now_ms();
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
            created: shared.now().to_rfc3339_opts(SecondsFormat::Millis, true),
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
