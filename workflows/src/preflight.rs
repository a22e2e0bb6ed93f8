//! The pre-flight's input from an inventory (`waymark_activities::preflight`): what a run of
//! `yb-maintenance` touches, for the run (before step 1) and for `waymark plan` alike.

use waymark_activities::preflight::{NodeAccess, PreflightInput, RegisterCheck, TsCliCheck};
use waymark_activities::yb::ToolsCheckInput;

use crate::inventory::{Error, Inventory};

/// Every node the run logs in to (those it restarts, with their units, and the node `yb-admin`
/// runs on), the yb tools as the run calls them (`yb-admin` on its node; `yb-ts-cli` on every
/// node whose tserver it restarts, where it calls it), every Deployment, every traffic forward,
/// zone A's target group and step 6's target.
pub fn input(inv: &Inventory) -> Result<PreflightInput, Error> {
    let sources = inv.traffic_sources()?;
    let (admin_node, admin) = inv.yb_admin().ok_or_else(|| Error {
        file: "(inventory)".into(),
        key: "yugabyte.nodes".into(),
        problem: "no node runs a yb-master (give master_http and master_rpc on the master nodes)"
            .into(),
    })?;
    let nodes = inv
        .yugabyte
        .nodes
        .iter()
        .filter_map(|n| {
            let mut units = Vec::new();
            if inv.restarts(n) {
                if n.master_http.is_some() {
                    units.push("yb-master".to_owned());
                }
                if n.tserver {
                    units.push("yb-tserver".to_owned());
                }
            }
            let ts_cli = units.iter().any(|u| u == "yb-tserver").then(|| TsCliCheck {
                yb_ts_cli: inv.yb_ts_cli(),
                certs_dir: inv.yugabyte.certs_dir.clone(),
                host: n.address.clone(),
            });
            (!units.is_empty() || n.name == admin_node.name).then(|| NodeAccess {
                name: n.name.clone(),
                ssh: inv.ssh_target(n),
                units,
                ts_cli,
            })
        })
        .collect::<Vec<_>>();
    // The admin node's tserver is asked through the tools check only when the per-node check
    // does not already run yb-ts-cli there.
    let admin_ts_checked = nodes
        .iter()
        .any(|n| n.name == admin_node.name && n.ts_cli.is_some());
    let register_node = inv
        .yugabyte
        .nodes
        .iter()
        .find(|n| match &inv.register.node {
            Some(name) => &n.name == name,
            None => n.address == inv.register.target_id,
        });
    let deployments = inv
        .mirrormaker
        .deployments
        .iter()
        .chain(&inv.services.deployments)
        .map(|name| inv.deployment(name))
        .collect();
    Ok(PreflightInput {
        nodes,
        use_sudo: inv.ssh.use_sudo,
        tools: ToolsCheckInput {
            admin,
            yb_ts_cli: inv.yb_ts_cli(),
            tserver_host: (admin_node.tserver && !admin_ts_checked)
                .then(|| admin_node.address.clone()),
        },
        tools_node: admin_node.name.clone(),
        masters: inv.masters(),
        deployments,
        mirrormaker: inv
            .mirrormaker
            .deployments
            .iter()
            .map(|name| inv.deployment(name))
            .collect(),
        elb: inv.elb(),
        sources,
        zone_a_target_group_arn: inv.traffic.zone_a_target_group_arn.clone(),
        zone_b_target_group_arn: inv.traffic.zone_b_target_group_arn.clone(),
        register: RegisterCheck {
            target_id: inv.register.target_id.clone(),
            node: register_node.map(|n| n.name.clone()),
            host: register_node
                .filter(|n| n.tserver)
                .map(|n| n.address.clone()),
        },
    })
}
