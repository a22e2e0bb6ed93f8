//! The inventory of a running sandbox (`DIR/inventory.toml`), so that `waymark run` and the demo
//! drive the sandbox exactly as they would drive a real estate.

use std::path::{Path, PathBuf};

use waymark_workflows::inventory::{
    Aws, Cluster, Deployments, Gates, Inventory, Kubernetes, Node, Notify, Register, RunLimits,
    Ssh, Traffic, Yugabyte,
};

use crate::elb;
use crate::estate::{Endpoints, Estate};

/// The inventory for an estate listening on `endpoints`, with paths relative to the sandbox folder.
pub fn inventory(estate: &Estate, endpoints: &Endpoints) -> Inventory {
    let tg = |zone: &str| {
        estate
            .elb
            .target_group_arn(&elb::target_group_name(zone))
            .unwrap_or_default()
            .to_owned()
    };
    let nodes = estate
        .spec
        .nodes
        .iter()
        .map(|n| Node {
            name: n.name.clone(),
            zone: n.zone.clone(),
            ssh: endpoints
                .ssh
                .get(&n.name)
                .map(ToString::to_string)
                .unwrap_or_default(),
            address: n.name.clone(),
            master_http: if n.master {
                endpoints.yb_masters.get(&n.name).map(ToString::to_string)
            } else {
                None
            },
            master_rpc: n.master.then(|| format!("{}:7100", n.name)),
            tserver: true,
        })
        .collect();
    let listener = estate
        .elb
        .listener_arn(elb::LOAD_BALANCER)
        .map(str::to_owned);
    Inventory {
        cluster: Cluster {
            name: "sandbox-yb".into(),
        },
        kubernetes: Kubernetes {
            kubeconfig: Some(PathBuf::from("kubeconfig")),
            context: Some("sandbox".into()),
            namespace: estate.spec.namespace.clone(),
            request_timeout_secs: Some(10),
        },
        mirrormaker: Deployments {
            deployments: vec!["mirrormaker2".into()],
        },
        services: Deployments {
            deployments: vec!["fp".into(), "fp-async".into()],
        },
        ssh: Ssh {
            user: "yugabyte".into(),
            key_file: Some(PathBuf::from("id_ed25519")),
            agent: false,
            known_hosts: PathBuf::from("known_hosts"),
            use_sudo: true,
            connect_timeout_ms: Some(5000),
            command_timeout_ms: Some(30_000),
        },
        yugabyte: Yugabyte {
            yb_admin: "/home/yugabyte/bin/yb-admin".into(),
            yb_ts_cli: None,
            certs_dir: None,
            restart_zones: Vec::new(),
            ignore_tservers: Vec::new(),
            nodes,
        },
        aws: Aws {
            region: elb::REGION.into(),
            endpoint_url: Some(format!("http://{}", endpoints.elb)),
        },
        // Both forwards that carry the zones' traffic: the listener's default action and its
        // `/waymark/*` rule.
        traffic: Traffic {
            listener_arns: listener.iter().cloned().collect(),
            rule_arns: listener
                .as_deref()
                .and_then(|l| estate.elb.rule_arn(l, elb::RULE_PRIORITY))
                .map(str::to_owned)
                .into_iter()
                .collect(),
            listener_arn: None,
            rule_arn: None,
            zone_a_target_group_arn: tg("A"),
            zone_b_target_group_arn: tg("B"),
        },
        register: Register {
            target_group_arn: estate
                .elb
                .target_group_arn(&elb::yb_target_group_name("B"))
                .unwrap_or_default()
                .to_owned(),
            target_id: estate.spec.new_target.clone(),
            port: Some(elb::PORT),
            availability_zone: None,
            // The new target is the address of zone B's last node (its tserver serves it).
            node: estate
                .spec
                .nodes
                .iter()
                .rfind(|n| n.zone == "B")
                .map(|n| n.name.clone()),
        },
        gates: Gates {
            require_approval: false,
            min_uptime_seconds: 1,
            node_timeout_secs: 120,
            health_timeout_secs: 120,
            load_balancer_timeout_secs: 300,
            rollout_timeout_secs: 120,
            target_healthy_timeout_secs: 120,
            poll_ms: 150,
            retry_initial_ms: 500,
            retry_max_ms: 4000,
            retry_attempts: 4,
            // YBA's 18 s between nodes and a 1 s follower-lag bound, at the estate's time scale.
            settle_ms: scaled_ms(18_000, estate.spec.time_scale),
            max_follower_lag_ms: scaled_ms(1000, estate.spec.time_scale),
            idle_readings: 3,
            legacy_unsafe_gates_for_tests: false,
        },
        run: RunLimits::default(),
        notify: Notify::default(),
    }
}

/// `ms` of the real systems at time scale `scale` (at least 1).
fn scaled_ms(ms: u64, scale: f64) -> u64 {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let v = (ms as f64 * scale).round().max(1.0) as u64;
    v
}

/// Writes `DIR/inventory.toml`.
pub fn write(dir: &Path, inv: &Inventory) -> std::io::Result<()> {
    let body = toml::to_string_pretty(inv).map_err(std::io::Error::other)?;
    let text = format!(
        "# Inventory of the sandbox estate in this folder, written by `waymark sandbox up`.\n\
         # Paths are relative to this file. AWS credentials come from the environment\n\
         # (the sandbox accepts any; `waymark demo` sets test ones).\n\n{body}"
    );
    let tmp = dir.join("inventory.toml.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, dir.join("inventory.toml"))
}
