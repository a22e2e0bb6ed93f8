//! The inventory of a running sandbox (`DIR/inventory.toml`), so that `waymark run` and the demo
//! drive the sandbox exactly as they would drive a real estate: the sandbox's plain-data
//! [`Description`] turned into an [`Inventory`]. Behind the `sandbox` feature: the sandbox
//! itself knows nothing of the workflows (it depends only on plain data), and whoever starts one
//! (`waymark demo`, `waymark sandbox up`, the tests, the simulation) writes its inventory with
//! [`write_inventory`] right after [`waymark_sandbox::Sandbox::start`].

use std::path::Path;

use waymark_sandbox::describe::Description;

use crate::inventory::{
    Aws, Cluster, Deployments, Gates, Inventory, Kubernetes, Node, Notify, Register, RunLimits,
    Ssh, Traffic, Yugabyte,
};

/// Writes `DIR/inventory.toml` for the sandbox `d` describes, started in `dir`.
pub fn write_inventory(dir: &Path, d: &Description) -> std::io::Result<()> {
    write(dir, &inventory(d))
}

/// The inventory of the sandbox `d` describes (paths relative to the sandbox folder): its
/// estate's facts, and the run policy chosen for a sandbox (SSH timeouts, `sudo`, the gates at
/// the estate's time scale).
pub fn inventory(d: &Description) -> Inventory {
    let nodes = d
        .nodes
        .iter()
        .map(|n| Node {
            name: n.name.clone(),
            zone: n.zone.clone(),
            ssh: n.ssh.to_string(),
            address: n.name.clone(),
            master_http: n.master_http.map(|a| a.to_string()),
            master_rpc: n.master_rpc.clone(),
            tserver: true,
        })
        .collect();
    Inventory {
        cluster: Cluster {
            name: "sandbox-yb".into(),
        },
        kubernetes: Kubernetes {
            kubeconfig: Some(d.kubeconfig.clone()),
            context: Some(d.kube_context.clone()),
            namespace: d.namespace.clone(),
            request_timeout_secs: Some(10),
        },
        mirrormaker: Deployments {
            deployments: d.mirrormaker.clone(),
        },
        services: Deployments {
            deployments: d.services.clone(),
        },
        ssh: Ssh {
            user: d.ssh_user.clone(),
            key_file: Some(d.ssh_key_file.clone()),
            agent: false,
            known_hosts: d.known_hosts.clone(),
            use_sudo: true,
            connect_timeout_ms: Some(5000),
            command_timeout_ms: Some(30_000),
        },
        yugabyte: Yugabyte {
            yb_admin: d.yb_admin.clone(),
            yb_ts_cli: None,
            certs_dir: None,
            restart_zones: Vec::new(),
            ignore_tservers: Vec::new(),
            nodes,
        },
        aws: Aws {
            region: d.aws_region.clone(),
            endpoint_url: Some(d.elb_endpoint.clone()),
        },
        // Both forwards that carry the zones' traffic: the listener's default action and its
        // `/waymark/*` rule.
        traffic: Traffic {
            listener_arns: d.traffic_listener_arns.clone(),
            rule_arns: d.traffic_rule_arns.clone(),
            listener_arn: None,
            rule_arn: None,
            zone_a_target_group_arn: d.zone_a_target_group_arn.clone(),
            zone_b_target_group_arn: d.zone_b_target_group_arn.clone(),
        },
        register: Register {
            target_group_arn: d.register_target_group_arn.clone(),
            target_id: d.register_target_id.clone(),
            port: Some(d.register_port),
            availability_zone: None,
            // The new target is the address of zone B's last node (its tserver serves it).
            node: d.register_node.clone(),
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
            settle_ms: scaled_ms(18_000, d.time_scale),
            max_follower_lag_ms: scaled_ms(1000, d.time_scale),
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
