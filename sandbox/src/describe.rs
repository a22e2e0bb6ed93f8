//! What a client needs to reach a running sandbox, as plain data ([`Description`]): where each
//! system listens, the files to connect with (relative to the sandbox folder), the names and ARNs
//! the runbook acts on. It knows nothing of the workflows' inventory type: the workflows crate
//! turns it into an `Inventory` (`waymark_workflows::sandbox`, feature `sandbox`); the sandbox
//! does not depend on the workflows.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::elb;
use crate::estate::{Endpoints, Estate};

/// How to reach one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeAccess {
    /// Host name (also its address inside the cluster).
    pub name: String,
    /// Zone, `A` or `B`.
    pub zone: String,
    /// Its SSH host.
    pub ssh: SocketAddr,
    /// Its yb-master's HTTP API, if it runs a master.
    pub master_http: Option<SocketAddr>,
    /// Its yb-master's RPC address (`NAME:7100`), if it runs a master.
    pub master_rpc: Option<String>,
}

/// A running sandbox, as its clients see it. Paths are relative to the sandbox folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Description {
    /// The nodes, in the spec's order.
    pub nodes: Vec<NodeAccess>,
    /// The kubeconfig file.
    pub kubeconfig: PathBuf,
    /// Its context.
    pub kube_context: String,
    /// The namespace of every Deployment.
    pub namespace: String,
    /// The `MirrorMaker2` Deployments (name starts with `mirrormaker`).
    pub mirrormaker: Vec<String>,
    /// The other Deployments (the services the runbook restarts).
    pub services: Vec<String>,
    /// The SSH user (any is accepted).
    pub ssh_user: String,
    /// The client's private key file.
    pub ssh_key_file: PathBuf,
    /// The `known_hosts` file naming every node's host key.
    pub known_hosts: PathBuf,
    /// `yb-admin` on the nodes.
    pub yb_admin: String,
    /// The AWS region.
    pub aws_region: String,
    /// The `ELBv2` endpoint (`http://ADDR`).
    pub elb_endpoint: String,
    /// The listeners that carry the zones' traffic.
    pub traffic_listener_arns: Vec<String>,
    /// The rules that carry it too (the `/waymark/*` rule).
    pub traffic_rule_arns: Vec<String>,
    /// Zone A's traffic target group.
    pub zone_a_target_group_arn: String,
    /// Zone B's traffic target group.
    pub zone_b_target_group_arn: String,
    /// The target group a new node is registered in (zone B's `YugabyteDB` group).
    pub register_target_group_arn: String,
    /// The target registered (an IP).
    pub register_target_id: String,
    /// Its port.
    pub register_port: i32,
    /// The node serving that target (zone B's last node).
    pub register_node: Option<String>,
    /// The time scale of every duration.
    pub time_scale: f64,
}

/// The description of `estate` listening on `endpoints`.
pub fn describe(estate: &Estate, endpoints: &Endpoints) -> Description {
    let tg = |name: &str| {
        estate
            .elb
            .target_group_arn(name)
            .unwrap_or_default()
            .to_owned()
    };
    let nodes = estate
        .spec
        .nodes
        .iter()
        .map(|n| NodeAccess {
            name: n.name.clone(),
            zone: n.zone.clone(),
            ssh: endpoints
                .ssh
                .get(&n.name)
                .copied()
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            master_http: if n.master {
                endpoints.yb_masters.get(&n.name).copied()
            } else {
                None
            },
            master_rpc: n.master.then(|| format!("{}:7100", n.name)),
        })
        .collect();
    let listener = estate
        .elb
        .listener_arn(elb::LOAD_BALANCER)
        .map(str::to_owned);
    let (mirrormaker, services): (Vec<String>, Vec<String>) = estate
        .spec
        .deployments
        .iter()
        .map(|(name, _)| name.clone())
        .partition(|name| name.starts_with("mirrormaker"));
    Description {
        nodes,
        kubeconfig: PathBuf::from("kubeconfig"),
        kube_context: "sandbox".into(),
        namespace: estate.spec.namespace.clone(),
        mirrormaker,
        services,
        ssh_user: "yugabyte".into(),
        ssh_key_file: PathBuf::from("id_ed25519"),
        known_hosts: PathBuf::from("known_hosts"),
        yb_admin: "/home/yugabyte/bin/yb-admin".into(),
        aws_region: elb::REGION.into(),
        elb_endpoint: format!("http://{}", endpoints.elb),
        traffic_rule_arns: listener
            .as_deref()
            .and_then(|l| estate.elb.rule_arn(l, elb::RULE_PRIORITY))
            .map(str::to_owned)
            .into_iter()
            .collect(),
        traffic_listener_arns: listener.into_iter().collect(),
        zone_a_target_group_arn: tg(&elb::target_group_name("A")),
        zone_b_target_group_arn: tg(&elb::target_group_name("B")),
        register_target_group_arn: tg(&elb::yb_target_group_name("B")),
        register_target_id: estate.spec.new_target.clone(),
        register_port: elb::PORT,
        register_node: estate
            .spec
            .nodes
            .iter()
            .rfind(|n| n.zone == "B")
            .map(|n| n.name.clone()),
        time_scale: estate.spec.time_scale,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estate::Estate;
    use crate::Spec;

    #[test]
    fn the_description_names_every_node_deployment_and_forward_of_the_estate() {
        let spec = Spec::default();
        let now = chrono::Utc::now();
        let estate = Estate {
            spec: spec.clone(),
            k8s: crate::k8s::State::from_spec(&spec),
            yb: crate::yb::State::from_spec(&spec, now),
            elb: crate::elb::State::from_spec(&spec, now),
            invariants: crate::Invariants::default(),
        };
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let endpoints = Endpoints {
            k8s: addr(1),
            yb_masters: spec
                .nodes
                .iter()
                .filter(|n| n.master)
                .map(|n| (n.name.clone(), addr(2)))
                .collect(),
            ssh: spec
                .nodes
                .iter()
                .map(|n| (n.name.clone(), addr(3)))
                .collect(),
            elb: addr(4),
            admin: addr(5),
        };
        let d = describe(&estate, &endpoints);
        assert_eq!(d.nodes.len(), 6);
        assert!(d.nodes.iter().all(|n| n.ssh == addr(3)));
        assert_eq!(
            d.nodes.iter().filter(|n| n.master_http.is_some()).count(),
            3
        );
        assert_eq!(d.mirrormaker, ["mirrormaker2"]);
        assert_eq!(d.services, ["fp", "fp-async"]);
        assert_eq!(d.register_node.as_deref(), Some("yb-b-3"));
        assert_eq!(d.traffic_listener_arns.len(), 1);
        assert_eq!(d.traffic_rule_arns.len(), 1);
        assert!(
            d.zone_b_target_group_arn.contains("offerup-zone-b"),
            "{d:?}"
        );
        assert_eq!(d.elb_endpoint, "http://127.0.0.1:4");
    }
}
