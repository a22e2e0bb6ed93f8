//! The pre-flight of a maintenance run (issue 12): every prerequisite the run will need, checked
//! before it changes anything, each reported pass or fail with what was seen and what to fix.
//! Only reads: SSH logins and `systemctl show`/`sudo -l` (lists, runs nothing), the yb tools'
//! read commands, the yb-master API, Kubernetes access reviews (what `kubectl auth can-i` asks)
//! and reads, `ELBv2` describes. [`Preflight`] (`preflight.check`) never fails because a check
//! fails: the failures are in its [`Report`], which the workflow turns into a refusal; `waymark
//! plan` shows the same report.

use std::collections::BTreeSet;
use std::fmt;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use waymark_engine::activity::{self, Activity, Context};

use crate::elb::{ElbClient, ElbConnection, TrafficSource};
use crate::k8s::{DeploymentRef, ReadReplicas};
use crate::ssh::{self, shell_quote, SshSession, SshTarget};
use crate::yb::{yb_ts_cli_ready_line, Masters, ToolsCheck, ToolsCheckInput};

/// One check: what, whether it passed, and what was seen (when failed: what to fix).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// What was checked (`ssh yb-a-1`, `Kubernetes RBAC on prod/fp`, ...).
    pub what: String,
    /// Passed.
    pub passed: bool,
    /// What was seen; for a failure, what is wrong and what to do.
    pub detail: String,
}

/// The pre-flight's result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Every check, in the order made.
    pub checks: Vec<Check>,
}

impl Report {
    /// Every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// The failed checks as `what: detail` lines (a refusal's reasons).
    pub fn failures(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("pre-flight {}: {}", c.what, c.detail))
            .collect()
    }

    fn push(&mut self, what: impl Into<String>, result: Result<String, String>) {
        let (passed, detail) = match result {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        self.checks.push(Check {
            what: what.into(),
            passed,
            detail,
        });
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            writeln!(
                f,
                "  {} {}: {}",
                if c.passed { "PASS" } else { "FAIL" },
                c.what,
                c.detail
            )?;
        }
        Ok(())
    }
}

/// A node the run logs in to, and the units it restarts there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAccess {
    /// The inventory's name of the node.
    pub name: String,
    /// How to log in.
    pub ssh: SshTarget,
    /// The systemd units the run restarts there (`yb-master`, `yb-tserver`).
    pub units: Vec<String>,
    /// `yb-ts-cli is_server_ready` as the run calls it on this node after restarting its
    /// tserver (the node's own tools and certificates); `None`: no tserver restarted here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts_cli: Option<TsCliCheck>,
}

/// `yb-ts-cli` on a tserver's own node, with the inventory's flags.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TsCliCheck {
    /// Path of `yb-ts-cli` on the node.
    pub yb_ts_cli: String,
    /// `-certs_dir_name` (the cluster uses TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certs_dir: Option<String>,
    /// The tserver's host as the cluster knows it.
    pub host: String,
}

/// The target step 6 registers, and the tserver it must be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterCheck {
    /// The target id (instance id or IP).
    pub target_id: String,
    /// The inventory node it is (by `register.node`, or by its address); `None`: none found.
    pub node: Option<String>,
    /// That node's host as the cluster lists its tserver.
    pub host: Option<String>,
}

/// Input of [`Preflight`]: everything the run will touch, from its inventory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreflightInput {
    /// Every node the run logs in to.
    pub nodes: Vec<NodeAccess>,
    /// The run uses `sudo systemctl`.
    pub use_sudo: bool,
    /// `yb-admin` and `yb-ts-cli` as the run calls them.
    pub tools: ToolsCheckInput,
    /// The inventory's name of the node they run on.
    pub tools_node: String,
    /// The yb-masters' web API.
    pub masters: Masters,
    /// Every Deployment the run reads, patches or scales.
    pub deployments: Vec<DeploymentRef>,
    /// The `MirrorMaker2` Deployments (their replicas must be above 0).
    pub mirrormaker: Vec<DeploymentRef>,
    /// How to reach `ELBv2`.
    pub elb: ElbConnection,
    /// Every listener and rule the run switches.
    pub sources: Vec<TrafficSource>,
    /// Zone A's traffic target group.
    pub zone_a_target_group_arn: String,
    /// Zone B's traffic target group.
    pub zone_b_target_group_arn: String,
    /// Step 6's target.
    pub register: RegisterCheck,
}

/// The Kubernetes permissions a run uses on each Deployment, as `kubectl auth can-i` names
/// them: read it and patch it (rollout restart), read and patch its scale (scale to 0 and back).
pub const DEPLOYMENT_ACCESS: [(&str, Option<&str>); 4] = [
    ("get", None),
    ("patch", None),
    ("get", Some("scale")),
    ("patch", Some("scale")),
];

/// How many nodes the pre-flight logs in to at once.
const NODES_AT_ONCE: usize = 16;

/// `preflight.check`: see the module documentation.
pub struct Preflight;

impl Activity for Preflight {
    const NAME: &'static str = "preflight.check";
    type Input = PreflightInput;
    type Output = Report;

    async fn run(&self, ctx: Context, i: PreflightInput) -> Result<Report, activity::Error> {
        let mut report = Report::default();
        // A few nodes at a time (an estate may have hundreds), reported in the inventory's order.
        let use_sudo = i.use_sudo;
        let nodes: Vec<Vec<Check>> = futures::stream::iter(i.nodes.clone())
            .map(|n| async move { check_node(&n, use_sudo).await })
            .buffered(NODES_AT_ONCE)
            .collect()
            .await;
        for checks in nodes {
            report.checks.extend(checks);
        }
        let tservers = i.masters.tservers().await;
        report.push(
            "yb-master API",
            match (&i.masters.masters().await, &tservers) {
                (Ok(m), Ok(t)) => Ok(format!(
                    "/api/v1/masters lists {} masters, /api/v1/tablet-servers {} tservers",
                    m.len(),
                    t.len()
                )),
                (Err(e), _) | (_, Err(e)) => Err(format!(
                    "{e}; check the master_http addresses of the inventory and that the masters' web port is reachable"
                )),
            },
        );
        let node = i.tools.admin.ssh.addr();
        report.push(
            format!("yb tools on {}", i.tools_node),
            match ToolsCheck.run(ctx.clone(), i.tools.clone()).await {
                Ok(problems) if problems.is_empty() => Ok(format!(
                    "yb-admin list_all_masters{} answered on {node} with the inventory's flags{}",
                    if i.tools.tserver_host.is_some() {
                        " and yb-ts-cli is_server_ready"
                    } else {
                        ""
                    },
                    i.tools
                        .admin
                        .certs_dir
                        .as_deref()
                        .map_or_else(String::new, |d| format!(" (-certs_dir_name {d})"))
                )),
                Ok(problems) => Err(format!(
                    "{}; check yugabyte.yb_admin, yugabyte.yb_ts_cli and, on a TLS cluster, yugabyte.certs_dir",
                    problems.join("; ")
                )),
                Err(e) => Err(e.message),
            },
        );
        for d in &i.deployments {
            report.push(
                format!("Kubernetes RBAC on {}/{}", d.namespace, d.name),
                deployment_access(d).await,
            );
        }
        for d in &i.mirrormaker {
            report.push(
                format!("MirrorMaker2 {}/{} replicas", d.namespace, d.name),
                match ReadReplicas.run(ctx.clone(), d.clone()).await {
                    Ok(n) if n > 0 => Ok(format!("{n} replicas")),
                    Ok(n) => Err(format!(
                        "{n} replicas: a run records the replicas before step 2 as what to restore, and 0 is no state to restore; an earlier run may have stopped half-way (`waymark ls --state needs-operator`): scale it back (`kubectl -n {} scale deployment {} --replicas=N`), then start again",
                        d.namespace, d.name
                    )),
                    Err(e) => Err(e.message),
                },
            );
        }
        check_elb(&i, &mut report).await;
        report.push(
            format!("register target {}", i.register.target_id),
            register_is_live_tserver(&i.register, &tservers),
        );
        Ok(report)
    }
}

/// SSH to one node: the host key is known and the login works; for each unit, `sudo -n -l`
/// allows `systemctl restart UNIT` (with `use_sudo`) and `systemctl show` finds the unit.
async fn check_node(n: &NodeAccess, use_sudo: bool) -> Vec<Check> {
    let mut report = Report::default();
    let what = format!("ssh {} ({})", n.name, n.ssh.addr());
    let session = match SshSession::connect(&n.ssh).await {
        Ok(s) => s,
        Err(e) => {
            report.push(what, Err(e.to_string()));
            return report.checks;
        }
    };
    report.push(
        what,
        Ok(format!(
            "host key known ({}), login as {} works",
            n.ssh.known_hosts.display(),
            n.ssh.user
        )),
    );
    for unit in &n.units {
        if use_sudo {
            // The run's own arguments (`systemctl restart UNIT --no-block`): sudoers matches
            // the whole command line.
            let command = format!(
                "sudo -n -l systemctl restart {} --no-block",
                shell_quote(unit)
            );
            report.push(
                format!("sudo systemctl on {}", n.name),
                match session.exec(&command).await {
                    Ok(out) if out.exit_status == 0 => Ok(format!(
                        "`sudo -n systemctl restart {unit} --no-block` is allowed for {}",
                        n.ssh.user
                    )),
                    Ok(out) => Err(format!(
                        "`{command}` exited {}: {} is not allowed to run `systemctl restart {unit}` through sudo without a password; add a sudoers rule (NOPASSWD) for it, or set ssh.use_sudo = false if the user may run systemctl itself",
                        out.exit_status,
                        n.ssh.user
                    )),
                    Err(e) => Err(e.to_string()),
                },
            );
        }
        report.push(
            format!("unit {unit} on {}", n.name),
            match ssh::show_unit(&session, unit, use_sudo).await {
                Ok(state) => Ok(format!("loaded, {}", state.active_state)),
                Err(e) => Err(e.to_string()),
            },
        );
    }
    if let Some(t) = &n.ts_cli {
        // The very line step 4/5 runs there (`yb.wait_server_ready`): a missing tool or
        // certificates directory on this node is found now, not after traffic moved.
        let line = yb_ts_cli_ready_line(&t.yb_ts_cli, t.certs_dir.as_deref(), &t.host);
        report.push(
            format!("yb-ts-cli on {}", n.name),
            match session.exec(&line).await {
                Ok(out) if out.exit_status == 0 => Ok(format!(
                    "`{line}` exited 0 on {}: the tool runs with the inventory's flags and the tserver is ready",
                    n.ssh.addr()
                )),
                // The tool itself cannot run here: not installed, or the cluster's certificates
                // are refused or missing on this node.
                Ok(out)
                    if matches!(out.exit_status, 126 | 127)
                        || crate::yb::is_tls_refusal(&out.stderr)
                        || t
                            .certs_dir
                            .as_deref()
                            .is_some_and(|d| out.stderr.contains(d)) =>
                {
                    Err(format!(
                        "`{line}` exited {} on {}: {}; the run calls it there after restarting the tserver: check yugabyte.yb_ts_cli and, on a TLS cluster, yugabyte.certs_dir (the directory must exist on every tserver node)",
                        out.exit_status,
                        n.ssh.addr(),
                        first_line(&out.stderr, &out.stdout)
                    ))
                }
                // The tool ran with its flags and reached no ready tserver (down, bootstrapping,
                // not in the cluster): the node gate judges the tserver, with its own message.
                Ok(out) => Ok(format!(
                    "`{line}` ran on {} with the inventory's flags (exit {}: {}); the tserver's state is the node gate's to judge",
                    n.ssh.addr(),
                    out.exit_status,
                    first_line(&out.stderr, &out.stdout)
                )),
                Err(e) => Err(e.to_string()),
            },
        );
    }
    session.close().await;
    report.checks
}

/// The first non-empty line of `a`, else of `b`.
fn first_line(a: &str, b: &str) -> String {
    let text = if a.trim().is_empty() { b } else { a };
    text.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no output)")
        .trim()
        .to_owned()
}

/// Every permission of [`DEPLOYMENT_ACCESS`] on `d`.
async fn deployment_access(d: &DeploymentRef) -> Result<String, String> {
    let mut denied = Vec::new();
    for (verb, sub) in DEPLOYMENT_ACCESS {
        let resource = sub.map_or_else(|| "deployments".to_owned(), |s| format!("deployments/{s}"));
        match d.can_i(verb, sub).await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => denied.push(format!("cannot {verb} {resource} ({reason})")),
            Err(e) => return Err(e.to_string()),
        }
    }
    let verbs = DEPLOYMENT_ACCESS
        .iter()
        .map(|(v, s)| s.map_or_else(|| (*v).to_owned(), |s| format!("{v} {s}")))
        .collect::<Vec<_>>()
        .join(", ");
    if denied.is_empty() {
        Ok(format!("allowed: {verbs}"))
    } else {
        Err(format!(
            "{}; grant the kubeconfig user {verbs} on deployments in namespace {} (check with `kubectl auth can-i patch deployments/scale -n {} {}`)",
            denied.join("; "),
            d.namespace,
            d.namespace,
            d.name
        ))
    }
}

/// Each listener and rule forwards to exactly the two zone target groups; zone A's has a
/// healthy target (traffic is about to go there).
async fn check_elb(i: &PreflightInput, report: &mut Report) {
    let client = match ElbClient::connect(&i.elb).await {
        Ok(c) => c,
        Err(e) => {
            report.push("ELB", Err(e.to_string()));
            return;
        }
    };
    let zones: BTreeSet<&str> = [
        i.zone_a_target_group_arn.as_str(),
        i.zone_b_target_group_arn.as_str(),
    ]
    .into();
    for source in &i.sources {
        report.push(
            format!("traffic forward of {}", source.label()),
            match client.weights(source).await {
                Ok(w) => {
                    let groups: BTreeSet<&str> =
                        w.by_target_group.keys().map(String::as_str).collect();
                    if groups == zones {
                        Ok("forwards to exactly zone A's and zone B's target groups".to_owned())
                    } else {
                        Err(format!(
                            "forwards to {groups:?}, not exactly zone A's and zone B's target groups ({zones:?}): a run would move only part of the traffic, or traffic the runbook does not cover; fix traffic.zone_*_target_group_arn or the listener/rule"
                        ))
                    }
                }
                Err(e) => Err(e.to_string()),
            },
        );
    }
    report.push(
        "zone A's target group health",
        match client.group_health(&i.zone_a_target_group_arn).await {
            Ok(states) if states.iter().any(|t| t.state == "healthy") => Ok(format!(
                "{} of {} targets healthy",
                states.iter().filter(|t| t.state == "healthy").count(),
                states.len()
            )),
            Ok(states) => Err(format!(
                "{} has no healthy target ({}): step 1 would send all traffic there; restore its targets' health first",
                i.zone_a_target_group_arn,
                if states.is_empty() {
                    "no target".to_owned()
                } else {
                    states
                        .iter()
                        .map(|t| format!("{} {}", t.id, t.state))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )),
            Err(e) => Err(e.to_string()),
        },
    );
}

/// Step 6's target is a tserver of this cluster, ALIVE.
fn register_is_live_tserver(
    r: &RegisterCheck,
    tservers: &Result<Vec<crate::yb::TServer>, crate::yb::Error>,
) -> Result<String, String> {
    let (Some(node), Some(host)) = (&r.node, &r.host) else {
        return Err(format!(
            "{} is the address of no node of the inventory: step 6 registers a tserver of this cluster; name its node in register.node (or fix register.target_id)",
            r.target_id
        ));
    };
    let tservers = tservers
        .as_ref()
        .map_err(|e| format!("the tservers could not be read: {e}"))?;
    match tservers.iter().find(|t| &t.host == host) {
        Some(t) if t.alive => Ok(format!("node {node} ({host}): tserver ALIVE")),
        Some(_) => Err(format!(
            "node {node} ({host}): its tserver is DEAD; registering it would add a target that cannot serve: bring it back first"
        )),
        None => Err(format!(
            "node {node} ({host}) is not a tserver of this cluster (/api/v1/tablet-servers): fix register.node / register.target_id"
        )),
    }
}

/// Registers [`Preflight`].
pub fn register(
    b: waymark_engine::runtime::EngineBuilder,
) -> waymark_engine::runtime::EngineBuilder {
    b.activity(Preflight)
}
