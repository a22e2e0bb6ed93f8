//! The inventory: a TOML file describing the estate `yb-maintenance` acts on (see
//! `examples/inventory.toml` for a commented example). Loading validates it and refuses a file
//! with an unknown key, a missing field, a bad address or path, or a number out of its range,
//! naming the file, the key and the problem; relative paths become absolute.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use waymark_activities::elb::{ElbConnection, TrafficSource};
use waymark_activities::k8s::{Connection, DeploymentRef};
use waymark_activities::ssh::{SshAuth, SshTarget};
use waymark_activities::yb::{Masters, YbAdmin};

/// A problem with an inventory file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}: {key}: {problem}")]
pub struct Error {
    /// The file.
    pub file: String,
    /// The key (dotted path) at fault, or `(file)`.
    pub key: String,
    /// What is wrong and what to do.
    pub problem: String,
}

/// The estate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// The cluster as a whole.
    pub cluster: Cluster,
    /// Kubernetes access.
    pub kubernetes: Kubernetes,
    /// `MirrorMaker2` Deployments (runbook steps 2 and 8).
    pub mirrormaker: Deployments,
    /// The business services restarted in step 7 (`fp`, `fp-async`).
    pub services: Deployments,
    /// SSH access to the nodes.
    pub ssh: Ssh,
    /// The `YugabyteDB` cluster.
    pub yugabyte: Yugabyte,
    /// AWS access.
    pub aws: Aws,
    /// The listener (or rule) whose forward weights move traffic between zones (steps 1 and 9).
    pub traffic: Traffic,
    /// The target to register in step 6.
    pub register: Register,
    /// Gates, timeouts and thresholds.
    #[serde(default)]
    pub gates: Gates,
    /// Limits of the run as a whole: its deadline, the approval wait, who may approve.
    #[serde(default)]
    pub run: RunLimits,
    /// `[notify]`: webhooks the daemon tells about this inventory's runs.
    #[serde(default, skip_serializing_if = "Notify::is_empty")]
    pub notify: Notify,
}

/// `[cluster]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Name, used for the per-cluster lock and in listings.
    pub name: String,
}

/// `[kubernetes]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kubernetes {
    /// Kubeconfig file (relative to the inventory); default: inferred (`$KUBECONFIG`, `~/.kube/config`, in-cluster).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context; default: the current one.
    #[serde(default)]
    pub context: Option<String>,
    /// Namespace of the Deployments.
    pub namespace: String,
    /// Per-request timeout, seconds.
    #[serde(default)]
    pub request_timeout_secs: Option<u64>,
}

/// A list of Deployments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployments {
    /// Names, in the `[kubernetes]` namespace.
    pub deployments: Vec<String>,
}

/// `[ssh]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ssh {
    /// Login user.
    pub user: String,
    /// Private key file (relative to the inventory); omit to use the ssh-agent.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Use the ssh-agent (`SSH_AUTH_SOCK`).
    #[serde(default)]
    pub agent: bool,
    /// `known_hosts` file (relative to the inventory). Host keys are checked strictly.
    pub known_hosts: PathBuf,
    /// Run `systemctl` through `sudo`.
    #[serde(default)]
    pub use_sudo: bool,
    /// Connect limit, ms.
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    /// Command limit, ms.
    #[serde(default)]
    pub command_timeout_ms: Option<u64>,
}

/// `[yugabyte]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Yugabyte {
    /// Path of `yb-admin` on the nodes.
    pub yb_admin: String,
    /// Path of `yb-ts-cli` on the nodes; default: `yb-ts-cli` beside `yb_admin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yb_ts_cli: Option<String>,
    /// The cluster uses TLS: every `yb-admin` and `yb-ts-cli` call gets `-certs_dir_name` this
    /// directory (on the nodes). Default: none (no TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certs_dir: Option<String>,
    /// The zones whose nodes a run restarts (masters and tservers); default: every zone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restart_zones: Vec<String>,
    /// Tserver hosts the cluster may list besides the inventory's, DEAD or not (read replicas,
    /// known stale entries): the node gate does not count them. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_tservers: Vec<String>,
    /// Nodes (`[[yugabyte.nodes]]`).
    pub nodes: Vec<Node>,
}

/// `[[yugabyte.nodes]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// A name for messages.
    pub name: String,
    /// `A` or `B`.
    pub zone: String,
    /// SSH address, `host` or `host:port`.
    pub ssh: String,
    /// Host as the cluster knows it (tserver/master registration).
    pub address: String,
    /// yb-master web address (`host:7000`) when the node runs a master.
    #[serde(default)]
    pub master_http: Option<String>,
    /// yb-master RPC address (`host:7100`) when the node runs a master.
    #[serde(default)]
    pub master_rpc: Option<String>,
    /// Whether the node runs a tserver (default true).
    #[serde(default = "yes")]
    pub tserver: bool,
}

fn yes() -> bool {
    true
}

/// `[aws]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Aws {
    /// Region.
    pub region: String,
    /// Endpoint URL instead of the region's (sandbox, VPC endpoint).
    #[serde(default)]
    pub endpoint_url: Option<String>,
}

/// `[traffic]`: every listener and rule whose weighted forward carries the zones' traffic. Step
/// 1 moves all of them to zone A, step 9 (and step 1's compensation) back; the pre-flight checks
/// that each forwards to exactly the two zone target groups.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Traffic {
    /// Listeners whose default forward action is weighted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listener_arns: Vec<String>,
    /// Listener rules whose forward action is weighted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rule_arns: Vec<String>,
    /// One listener (the key of earlier versions, still read; same as one `listener_arns` entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_arn: Option<String>,
    /// One rule (the key of earlier versions, still read; same as one `rule_arns` entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_arn: Option<String>,
    /// Zone A's target group.
    pub zone_a_target_group_arn: String,
    /// Zone B's target group.
    pub zone_b_target_group_arn: String,
}

/// `[register]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    /// Target group (`aws-useast1-prod-b-yb-ext-prod`).
    pub target_group_arn: String,
    /// The new node: instance id or IP.
    pub target_id: String,
    /// Port.
    #[serde(default)]
    pub port: Option<i32>,
    /// Availability zone (for IP targets outside the VPC).
    #[serde(default)]
    pub availability_zone: Option<String>,
    /// The inventory node the target is (the pre-flight checks that its tserver is ALIVE in
    /// this cluster). Default: the node whose `address` is `target_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// `[run]`: limits of a run as a whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunLimits {
    /// The run's overall deadline, seconds from its start: once passed, the run stops at its next
    /// step and compensates. Default: [`RunLimits::DEFAULT_FACTOR`] times the plan's estimate
    /// (about a minute per node restart plus the settle times), at least
    /// [`RunLimits::DEFAULT_FLOOR_SECS`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_duration_secs: Option<u64>,
    /// A wall-clock deadline (RFC 3339, e.g. `"2026-12-01T06:00:00Z"`): the daemon sets it for a
    /// scheduled run (fire time + window). Whichever of this and `max_duration_secs` comes first
    /// is the run's deadline; a run started after it is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_by: Option<chrono::DateTime<chrono::Utc>>,
    /// With `gates.require_approval`: how long the run waits for `approve`, seconds; then it
    /// ends `refused`, nothing changed.
    pub approval_timeout_secs: u64,
    /// With `gates.require_approval`: the approver must be another operator than the one who
    /// started the run. Not enforceable yet (the engine does not pass a signal's sender to the
    /// workflow): a run with it set is refused before any change rather than run unchecked.
    #[serde(skip_serializing_if = "is_false")]
    pub approver_must_differ: bool,
}

impl RunLimits {
    /// The default overall deadline is this many times the plan's estimate.
    pub const DEFAULT_FACTOR: u64 = 4;
    /// The default overall deadline is at least this long, seconds (1 hour).
    pub const DEFAULT_FLOOR_SECS: u64 = 3600;
}

impl Default for RunLimits {
    fn default() -> Self {
        RunLimits {
            max_duration_secs: None,
            finish_by: None,
            approval_timeout_secs: 4 * 3600,
            approver_must_differ: false,
        }
    }
}

/// `[gates]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gates {
    /// Wait for an operator's `approve` signal before the first change.
    pub require_approval: bool,
    /// Every tserver up at least this long for the health gate.
    pub min_uptime_seconds: u64,
    /// Wait for one restarted server to be back, seconds.
    pub node_timeout_secs: u64,
    /// Wait for the health gate after each node, seconds.
    pub health_timeout_secs: u64,
    /// Wait for the load balancer, seconds.
    pub load_balancer_timeout_secs: u64,
    /// Wait for a Deployment rollout, seconds.
    pub rollout_timeout_secs: u64,
    /// Wait for the new target to be healthy, seconds.
    pub target_healthy_timeout_secs: u64,
    /// Poll interval of every wait, ms.
    pub poll_ms: u64,
    /// Retries of every step: first delay, ms (doubling, with jitter).
    pub retry_initial_ms: u64,
    /// Retries: longest delay, ms.
    pub retry_max_ms: u64,
    /// Retries: most failed attempts of a step before it fails the run.
    pub retry_attempts: u32,
    /// After each node is ready, wait this long before the next one (a durable timer), ms.
    pub settle_ms: u64,
    /// A restarted tserver's largest `follower_lag_ms` must be at most this, ms.
    pub max_follower_lag_ms: u64,
    /// Step 5: consecutive idle readings of the load balancer (with balanced leaders).
    pub idle_readings: u32,
    /// TEST ONLY: run the node gates of workflow version 2 (one health look, no leader
    /// blacklist, no proof of the new process, no `is_server_ready`, one idle reading), which
    /// let two tservers be down at once on a lagging cluster. Exists so the tests can show
    /// that; never set it on a real estate.
    #[serde(skip_serializing_if = "is_false")]
    pub legacy_unsafe_gates_for_tests: bool,
}

/// `[notify]`: the webhooks the daemon tells about every transition of a run of this
/// inventory (besides its own `--notify` and a schedule's). Each is named as the daemon's
/// `--notify` names one, `FORMAT:file:PATH` or `FORMAT:env:VARIABLE` (FORMAT `slack` or
/// `json`), never the URL itself: the inventory is journaled as the run's input.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    /// The webhooks; a relative `file:` path is resolved against the inventory's folder.
    #[serde(default)]
    pub webhooks: Vec<String>,
}

impl Notify {
    /// The most webhooks an inventory names.
    pub const MAX_WEBHOOKS: usize = 16;

    fn is_empty(&self) -> bool {
        self.webhooks.is_empty()
    }
}

/// One `[notify] webhooks` entry: `FORMAT:file:PATH` or `FORMAT:env:VARIABLE`.
fn check_webhook(file: &Path, w: &str) -> Result<(), Error> {
    let key = "notify.webhooks";
    if w.contains("://") {
        return Err(err(
            file,
            key,
            "an entry holds a URL: a webhook URL is a secret and the inventory is journaled as the run's input; put the URL in an owner-only file of the daemon's user and write json:file:PATH (or slack:file:PATH), or in the daemon's environment and write json:env:VARIABLE",
        ));
    }
    let mut parts = w.splitn(3, ':');
    let (format, kind, rest) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
    if !matches!(format, Some("slack" | "json")) {
        return Err(err(
            file,
            key,
            format!(
                "{w:?}: write FORMAT:file:PATH or FORMAT:env:VARIABLE with FORMAT slack or json"
            ),
        ));
    }
    match kind {
        Some("file") if !rest.is_empty() && !rest.contains(char::is_control) => Ok(()),
        Some("env")
            if rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
        {
            Ok(())
        }
        _ => Err(err(
            file,
            key,
            format!("{w:?}: write FORMAT:file:PATH or FORMAT:env:VARIABLE (a variable name of letters, digits and _)"),
        )),
    }
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_false(b: &bool) -> bool {
    !*b
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            require_approval: false,
            min_uptime_seconds: 30,
            node_timeout_secs: 600,
            health_timeout_secs: 900,
            load_balancer_timeout_secs: 3600,
            rollout_timeout_secs: 900,
            target_healthy_timeout_secs: 600,
            poll_ms: 2000,
            retry_initial_ms: 1000,
            retry_max_ms: 60_000,
            retry_attempts: 5,
            settle_ms: 18_000,
            max_follower_lag_ms: 1000,
            idle_readings: 3,
            legacy_unsafe_gates_for_tests: false,
        }
    }
}

fn err(file: &Path, key: impl Into<String>, problem: impl Into<String>) -> Error {
    Error {
        file: file.display().to_string(),
        key: key.into(),
        problem: problem.into(),
    }
}

/// A `host` or `host:port` split and checked: the host is a DNS name (labels of letters, digits
/// and `-`, each 1 to 63 long, not starting or ending with `-`; 253 at most), an IPv4 address, or
/// an IPv6 address in brackets (`[::1]:7100`); the port a number from 1 to 65535. Nothing else
/// passes: these values end up in URLs and in command lines run by a node's shell.
pub fn parse_host_port(v: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(rest) = v.strip_prefix('[') {
        let (inner, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{v:?}: an IPv6 address needs its closing `]`"))?;
        if inner.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{v:?}: {inner:?} is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("{v:?}: only `:port` may follow the IPv6 address"))?,
            ),
        };
        (inner.to_owned(), port)
    } else {
        let (host, port) = match v.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (v, None),
        };
        if port.is_some_and(|p| p.contains(':')) {
            return Err(format!(
                "{v:?} has more than one `:`: write an IPv6 address in brackets ([::1]:7100)"
            ));
        }
        if host.parse::<std::net::Ipv4Addr>().is_err() && !is_dns_name(host) {
            return Err(format!(
                "{v:?}: {host:?} is not a host name (letters, digits, `-` and `.`) or an IPv4 address"
            ));
        }
        (host.to_owned(), port)
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err(format!("{v:?}: port {p:?} is not a number from 1 to 65535")),
        },
    };
    Ok((host, port))
}

fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn check_host_port(file: &Path, key: &str, v: &str, need_port: bool) -> Result<(), Error> {
    match parse_host_port(v) {
        Err(problem) => Err(err(file, key, problem)),
        Ok((_, None)) if need_port => {
            Err(err(file, key, format!("{v:?} needs a port (host:port)")))
        }
        Ok(_) => Ok(()),
    }
}

/// `yugabyte.yb_admin` (and `yb_ts_cli`, `certs_dir`): an absolute path of `[A-Za-z0-9._/-]`
/// only (it is run by the node's shell).
fn check_yb_admin(file: &Path, v: &str) -> Result<(), Error> {
    check_node_path(file, "yugabyte.yb_admin", v)
}

fn check_node_path(file: &Path, key: &str, v: &str) -> Result<(), Error> {
    let safe = v.starts_with('/')
        && !v.ends_with('/')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'));
    if safe {
        Ok(())
    } else {
        Err(err(
            file,
            key,
            format!(
                "{v:?} is not an absolute path of letters, digits and `._/-` (e.g. /home/yugabyte/tserver/bin/yb-admin)"
            ),
        ))
    }
}

/// The largest value each number of the inventory may take: far above any sensible setting,
/// far below what could overflow the arithmetic that uses it (timeouts plus margins, polls
/// times ten, seconds times 1,000, retry deadlines). `(key, value, minimum, maximum, unit)`.
fn numeric_bounds(inv: &Inventory) -> Vec<(&'static str, u64, u64, u64, &'static str)> {
    const DAY_SECS: u64 = 86_400;
    const HOUR_MS: u64 = 3_600_000;
    let g = &inv.gates;
    let len = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let mut out = vec![
        (
            "gates.min_uptime_seconds",
            g.min_uptime_seconds,
            0,
            DAY_SECS,
            "seconds (1 day)",
        ),
        (
            "gates.node_timeout_secs",
            g.node_timeout_secs,
            1,
            DAY_SECS,
            "seconds (1 day)",
        ),
        (
            "gates.health_timeout_secs",
            g.health_timeout_secs,
            1,
            DAY_SECS,
            "seconds (1 day)",
        ),
        (
            "gates.load_balancer_timeout_secs",
            g.load_balancer_timeout_secs,
            1,
            7 * DAY_SECS,
            "seconds (7 days)",
        ),
        (
            "gates.rollout_timeout_secs",
            g.rollout_timeout_secs,
            1,
            DAY_SECS,
            "seconds (1 day)",
        ),
        (
            "gates.target_healthy_timeout_secs",
            g.target_healthy_timeout_secs,
            1,
            DAY_SECS,
            "seconds (1 day)",
        ),
        ("gates.poll_ms", g.poll_ms, 1, 600_000, "ms (10 minutes)"),
        (
            "gates.retry_initial_ms",
            g.retry_initial_ms,
            0,
            HOUR_MS,
            "ms (1 hour)",
        ),
        (
            "gates.retry_max_ms",
            g.retry_max_ms,
            0,
            24 * HOUR_MS,
            "ms (1 day)",
        ),
        (
            "gates.retry_attempts",
            u64::from(g.retry_attempts),
            1,
            1000,
            "attempts",
        ),
        ("gates.settle_ms", g.settle_ms, 0, HOUR_MS, "ms (1 hour)"),
        (
            "gates.max_follower_lag_ms",
            g.max_follower_lag_ms,
            0,
            HOUR_MS,
            "ms (1 hour)",
        ),
        (
            "gates.idle_readings",
            u64::from(g.idle_readings),
            1,
            100,
            "readings",
        ),
        (
            "yugabyte.nodes",
            len(inv.yugabyte.nodes.len()),
            0,
            1000,
            "nodes",
        ),
        (
            "mirrormaker.deployments",
            len(inv.mirrormaker.deployments.len()),
            0,
            100,
            "Deployments",
        ),
        (
            "services.deployments",
            len(inv.services.deployments.len()),
            0,
            100,
            "Deployments",
        ),
    ];
    out.push((
        "run.approval_timeout_secs",
        inv.run.approval_timeout_secs,
        1,
        7 * DAY_SECS,
        "seconds (7 days)",
    ));
    if let Some(v) = inv.run.max_duration_secs {
        out.push((
            "run.max_duration_secs",
            v,
            60,
            7 * DAY_SECS,
            "seconds (7 days)",
        ));
    }
    out.push((
        "traffic.listener_arns + rule_arns",
        len(inv.traffic.listener_arns.len() + inv.traffic.rule_arns.len()),
        0,
        100,
        "listeners and rules",
    ));
    if let Some(v) = inv.kubernetes.request_timeout_secs {
        out.push((
            "kubernetes.request_timeout_secs",
            v,
            1,
            3600,
            "seconds (1 hour)",
        ));
    }
    if let Some(v) = inv.ssh.connect_timeout_ms {
        out.push(("ssh.connect_timeout_ms", v, 1, 600_000, "ms (10 minutes)"));
    }
    if let Some(v) = inv.ssh.command_timeout_ms {
        out.push(("ssh.command_timeout_ms", v, 1, 24 * HOUR_MS, "ms (1 day)"));
    }
    out
}

impl Inventory {
    /// Reads and validates `path`; relative paths inside are resolved against its folder.
    ///
    /// `path` is made absolute first (against the current directory), so every resolved path is
    /// absolute: the run's journaled input must mean the same files to a daemon (cwd `/`) and to
    /// a `resume` from another directory.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let path = &std::path::absolute(path).map_err(|e| {
            err(
                path,
                "(file)",
                format!("cannot make the path absolute: {e}; give an absolute path"),
            )
        })?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(path, "(file)", format!("cannot read it: {e}")))?;
        let mut inv = Self::parse(path, &text)?;
        let base = path.parent().unwrap_or(Path::new("/"));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(k) = inv.kubernetes.kubeconfig.as_mut() {
            resolve(k);
        }
        if let Some(k) = inv.ssh.key_file.as_mut() {
            resolve(k);
        }
        resolve(&mut inv.ssh.known_hosts);
        // A webhook's URL file, as the daemon (cwd `/`) must find it.
        for w in &mut inv.notify.webhooks {
            if let Some((format, path)) = w.split_once(":file:") {
                if Path::new(path).is_relative() {
                    *w = format!("{format}:file:{}", base.join(path).display());
                }
            }
        }
        for (key, p) in [
            ("ssh.known_hosts", Some(&inv.ssh.known_hosts)),
            ("ssh.key_file", inv.ssh.key_file.as_ref()),
            ("kubernetes.kubeconfig", inv.kubernetes.kubeconfig.as_ref()),
        ] {
            if let Some(p) = p {
                if !p.exists() {
                    return Err(err(path, key, format!("{} does not exist", p.display())));
                }
            }
        }
        Ok(inv)
    }

    /// Parses and validates TOML text (`file` names it in errors).
    pub fn parse(file: &Path, text: &str) -> Result<Self, Error> {
        let inv: Inventory = toml::from_str(text).map_err(|e| {
            let key = e.span().map_or_else(
                || "(file)".to_owned(),
                |s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    format!("line {line}")
                },
            );
            err(file, key, e.message().to_owned())
        })?;
        inv.validate(file)?;
        Ok(inv)
    }

    /// Checks every rule of the inventory (what [`Inventory::parse`] runs after reading the
    /// TOML). Public so that whoever receives an inventory in another form (an API request, a
    /// run's input) checks it the same way; `file` names its origin in errors.
    pub fn validate(&self, file: &Path) -> Result<(), Error> {
        if self.cluster.name.trim().is_empty() {
            return Err(err(file, "cluster.name", "must not be empty"));
        }
        if self.notify.webhooks.len() > Notify::MAX_WEBHOOKS {
            return Err(err(
                file,
                "notify.webhooks",
                format!(
                    "{} webhooks: name at most {}",
                    self.notify.webhooks.len(),
                    Notify::MAX_WEBHOOKS
                ),
            ));
        }
        for w in &self.notify.webhooks {
            check_webhook(file, w)?;
        }
        for (key, value, min, max, unit) in numeric_bounds(self) {
            if value < min || value > max {
                return Err(err(
                    file,
                    key,
                    format!("{value} is out of range: give {min} to {max} {unit}"),
                ));
            }
        }
        for (key, list) in [
            ("mirrormaker.deployments", &self.mirrormaker.deployments),
            ("services.deployments", &self.services.deployments),
        ] {
            if list.is_empty() {
                return Err(err(file, key, "list at least one Deployment"));
            }
            if let Some(bad) = list
                .iter()
                .find(|n| n.is_empty() || n.contains('/') || n.contains(char::is_whitespace))
            {
                return Err(err(file, key, format!("{bad:?} is not a Deployment name")));
            }
        }
        match (&self.ssh.key_file, self.ssh.agent) {
            (Some(_), true) => {
                return Err(err(
                    file,
                    "ssh.agent",
                    "give either key_file or agent = true, not both",
                ))
            }
            (None, false) => {
                return Err(err(
                    file,
                    "ssh.key_file",
                    "missing: give key_file, or agent = true to use the ssh-agent",
                ))
            }
            _ => {}
        }
        if self.yugabyte.nodes.is_empty() {
            return Err(err(
                file,
                "yugabyte.nodes",
                "list the cluster's nodes ([[yugabyte.nodes]])",
            ));
        }
        check_yb_admin(file, &self.yugabyte.yb_admin)?;
        if let Some(p) = &self.yugabyte.yb_ts_cli {
            check_node_path(file, "yugabyte.yb_ts_cli", p)?;
        }
        if let Some(p) = &self.yugabyte.certs_dir {
            check_node_path(file, "yugabyte.certs_dir", p)?;
        }
        for (i, z) in self.yugabyte.restart_zones.iter().enumerate() {
            if !self.yugabyte.nodes.iter().any(|n| &n.zone == z) {
                return Err(err(
                    file,
                    format!("yugabyte.restart_zones[{i}]"),
                    format!("{z:?} is the zone of no node (nodes are in zones A and B)"),
                ));
            }
        }
        for (i, h) in self.yugabyte.ignore_tservers.iter().enumerate() {
            match parse_host_port(h) {
                Ok((_, None)) => {}
                _ => {
                    return Err(err(
                        file,
                        format!("yugabyte.ignore_tservers[{i}]"),
                        format!("{h:?} is not a host as the cluster lists it (no port)"),
                    ))
                }
            }
        }
        let mut names = BTreeSet::new();
        for (i, n) in self.yugabyte.nodes.iter().enumerate() {
            let k = |f: &str| format!("yugabyte.nodes[{i}].{f}");
            if !names.insert(n.name.clone()) {
                return Err(err(file, k("name"), format!("{:?} appears twice", n.name)));
            }
            if n.zone != "A" && n.zone != "B" {
                return Err(err(
                    file,
                    k("zone"),
                    format!("{:?} is not a zone: use \"A\" or \"B\"", n.zone),
                ));
            }
            check_host_port(file, &k("ssh"), &n.ssh, false)?;
            check_host_port(file, &k("address"), &n.address, false)?;
            match (&n.master_http, &n.master_rpc) {
                (Some(h), Some(r)) => {
                    check_host_port(file, &k("master_http"), h, true)?;
                    check_host_port(file, &k("master_rpc"), r, true)?;
                }
                (None, None) => {}
                _ => {
                    return Err(err(
                        file,
                        k("master_http"),
                        "a master node needs both master_http and master_rpc",
                    ))
                }
            }
        }
        if !self.yugabyte.nodes.iter().any(|n| n.master_http.is_some()) {
            return Err(err(
                file,
                "yugabyte.nodes",
                "no node runs a yb-master (give master_http and master_rpc on the master nodes)",
            ));
        }
        let sources = self.traffic_sources_in(file)?;
        for source in &sources {
            let (key, arn) = match source {
                TrafficSource::Listener(a) => ("traffic.listener_arns", a),
                TrafficSource::Rule(a) => ("traffic.rule_arns", a),
            };
            if !arn.starts_with("arn:") {
                return Err(err(
                    file,
                    key,
                    format!("{arn:?} is not an ARN (arn:aws:elasticloadbalancing:...)"),
                ));
            }
        }
        if let Some(name) = &self.register.node {
            if !self.yugabyte.nodes.iter().any(|n| &n.name == name) {
                return Err(err(
                    file,
                    "register.node",
                    format!("{name:?} is not the name of a node of [[yugabyte.nodes]]"),
                ));
            }
        }
        for (key, arn) in [
            (
                "traffic.zone_a_target_group_arn",
                &self.traffic.zone_a_target_group_arn,
            ),
            (
                "traffic.zone_b_target_group_arn",
                &self.traffic.zone_b_target_group_arn,
            ),
            ("register.target_group_arn", &self.register.target_group_arn),
        ] {
            if !arn.starts_with("arn:") {
                return Err(err(
                    file,
                    key,
                    format!("{arn:?} is not an ARN (arn:aws:elasticloadbalancing:...)"),
                ));
            }
        }
        if let Some(port) = self.register.port {
            if !(1..=65535).contains(&port) {
                return Err(err(
                    file,
                    "register.port",
                    format!("{port} is not a port: give 1 to 65535"),
                ));
            }
        }
        if let Some(url) = &self.aws.endpoint_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(err(
                    file,
                    "aws.endpoint_url",
                    format!("{url:?} is not an http(s) URL"),
                ));
            }
        }
        Ok(())
    }

    /// The retry policy of every step.
    pub fn retry_policy(&self) -> waymark_engine::RetryPolicy {
        waymark_engine::RetryPolicy::default()
            .initial_interval(std::time::Duration::from_millis(
                self.gates.retry_initial_ms,
            ))
            .max_interval(std::time::Duration::from_millis(
                self.gates.retry_max_ms.max(self.gates.retry_initial_ms),
            ))
            .max_attempts(self.gates.retry_attempts)
    }

    /// The Kubernetes connection.
    pub fn kube(&self) -> Connection {
        Connection {
            kubeconfig: self.kubernetes.kubeconfig.clone(),
            context: self.kubernetes.context.clone(),
            request_timeout_secs: self.kubernetes.request_timeout_secs,
        }
    }

    /// A Deployment of the namespace.
    pub fn deployment(&self, name: &str) -> DeploymentRef {
        DeploymentRef {
            connection: self.kube(),
            namespace: self.kubernetes.namespace.clone(),
            name: name.to_owned(),
        }
    }

    /// SSH target of a node.
    pub fn ssh_target(&self, node: &Node) -> SshTarget {
        // Validated; an address that does not parse is kept whole, and the connection names it.
        let (host, port) =
            parse_host_port(&node.ssh).map_or_else(|_| (node.ssh.clone(), None), |(h, p)| (h, p));
        let port = port.unwrap_or(22);
        let auth = match &self.ssh.key_file {
            Some(path) => SshAuth::KeyFile { path: path.clone() },
            None => SshAuth::Agent { socket: None },
        };
        let mut t = SshTarget::new(
            host,
            self.ssh.user.clone(),
            auth,
            self.ssh.known_hosts.clone(),
        );
        t.port = port;
        if let Some(ms) = self.ssh.connect_timeout_ms {
            t.connect_timeout_ms = ms;
        }
        if let Some(ms) = self.ssh.command_timeout_ms {
            t.command_timeout_ms = ms;
        }
        t
    }

    /// The yb-masters.
    pub fn masters(&self) -> Masters {
        Masters {
            http: self
                .yugabyte
                .nodes
                .iter()
                .filter_map(|n| n.master_http.clone())
                .collect(),
            request_timeout_ms: None,
        }
    }

    /// Path of `yb-ts-cli` on the nodes (given, or beside `yb-admin`).
    pub fn yb_ts_cli(&self) -> String {
        self.yugabyte.yb_ts_cli.clone().unwrap_or_else(|| {
            let admin = &self.yugabyte.yb_admin;
            match admin.rsplit_once('/') {
                Some((dir, _)) => format!("{dir}/yb-ts-cli"),
                None => "yb-ts-cli".into(),
            }
        })
    }

    /// Whether a run restarts `node` (its zone is in `restart_zones`, or that list is empty).
    pub fn restarts(&self, node: &Node) -> bool {
        self.yugabyte.restart_zones.is_empty() || self.yugabyte.restart_zones.contains(&node.zone)
    }

    /// The node `yb-admin` runs on (the first master node) and how.
    pub fn yb_admin(&self) -> Option<(&Node, YbAdmin)> {
        let node = self
            .yugabyte
            .nodes
            .iter()
            .find(|n| n.master_http.is_some())?;
        Some((
            node,
            YbAdmin {
                ssh: self.ssh_target(node),
                yb_admin: self.yugabyte.yb_admin.clone(),
                master_rpc: self.master_rpc(),
                certs_dir: self.yugabyte.certs_dir.clone(),
            },
        ))
    }

    /// RPC hosts of the inventory's masters (as `/api/v1/masters` lists them).
    pub fn master_hosts(&self) -> Vec<String> {
        self.yugabyte
            .nodes
            .iter()
            .filter_map(|n| n.master_rpc.as_deref())
            .map(|r| parse_host_port(r).map_or_else(|_| r.to_owned(), |(h, _)| h))
            .collect()
    }

    /// Hosts of the inventory's tservers.
    pub fn tserver_hosts(&self) -> Vec<String> {
        self.yugabyte
            .nodes
            .iter()
            .filter(|n| n.tserver)
            .map(|n| n.address.clone())
            .collect()
    }

    /// `host:7100` of every master.
    pub fn master_rpc(&self) -> Vec<String> {
        self.yugabyte
            .nodes
            .iter()
            .filter_map(|n| n.master_rpc.clone())
            .collect()
    }

    /// The `ELBv2` connection.
    pub fn elb(&self) -> ElbConnection {
        ElbConnection::new(self.aws.region.clone(), self.aws.endpoint_url.clone())
    }

    /// Every listener and rule carrying the zone weights (listeners first, in the inventory's
    /// order, the old single keys included, each once); an error (never a panic) for an
    /// inventory that skipped validation and names none.
    pub fn traffic_sources(&self) -> Result<Vec<TrafficSource>, Error> {
        self.traffic_sources_in(Path::new("(inventory)"))
    }

    fn traffic_sources_in(&self, file: &Path) -> Result<Vec<TrafficSource>, Error> {
        let mut out: Vec<TrafficSource> = Vec::new();
        let listeners = self
            .traffic
            .listener_arn
            .iter()
            .chain(&self.traffic.listener_arns);
        let rules = self.traffic.rule_arn.iter().chain(&self.traffic.rule_arns);
        for source in listeners
            .map(|a| TrafficSource::Listener(a.clone()))
            .chain(rules.map(|a| TrafficSource::Rule(a.clone())))
        {
            if !out.contains(&source) {
                out.push(source);
            }
        }
        if out.is_empty() {
            return Err(err(
                file,
                "traffic.listener_arns",
                "missing: name every listener (listener_arns) and rule (rule_arns) whose forward carries the zones' traffic",
            ));
        }
        Ok(out)
    }

    /// The run's overall deadline in seconds from its start when `max_duration_secs` is not
    /// given: [`RunLimits::DEFAULT_FACTOR`] times the plan's estimate (a minute per node restart
    /// plus its settle time), at least [`RunLimits::DEFAULT_FLOOR_SECS`].
    pub fn max_duration_secs(&self) -> u64 {
        self.run.max_duration_secs.unwrap_or_else(|| {
            let restarts = self
                .yugabyte
                .nodes
                .iter()
                .filter(|n| self.restarts(n))
                .map(|n| u64::from(n.master_http.is_some()) + u64::from(n.tserver))
                .sum::<u64>();
            crate::plan::estimate_secs(restarts, self.gates.settle_ms)
                .saturating_mul(RunLimits::DEFAULT_FACTOR)
                .max(RunLimits::DEFAULT_FLOOR_SECS)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> String {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/inventory.toml"),
        )
        .expect("examples/inventory.toml")
    }

    fn parse(text: &str) -> Result<Inventory, Error> {
        Inventory::parse(Path::new("inv.toml"), text)
    }

    #[test]
    fn the_example_names_a_listener_and_a_rule_and_takes_the_run_defaults() {
        let inv = parse(&example()).unwrap();
        let sources = inv.traffic_sources().unwrap();
        assert_eq!(sources.len(), 2, "{sources:?}");
        assert!(matches!(sources[0], TrafficSource::Listener(_)));
        assert!(matches!(sources[1], TrafficSource::Rule(_)));
        assert_eq!(inv.run.approval_timeout_secs, 14_400);
        assert!(!inv.run.approver_must_differ);
        assert_eq!(inv.run.finish_by, None);
        // 4 nodes: 3 masters and 4 tservers, (60 s + 18 s settle) each, times 4 = 2,184 s,
        // raised to the 1 h floor; with a settle of 10 minutes the factor decides.
        assert_eq!(inv.max_duration_secs(), 3600);
        let mut slow = inv.clone();
        slow.gates.settle_ms = 600_000;
        assert_eq!(slow.max_duration_secs(), 7 * 660 * 4);
    }

    #[test]
    fn the_old_single_listener_and_rule_keys_are_still_read() {
        let text = example()
            .replace("listener_arns = [", "listener_arn = ")
            .replace("rule_arns = [", "rule_arn = ")
            .replace("f2f7dc8efc522ab2\"]", "f2f7dc8efc522ab2\"")
            .replace("9683b2d02a6cabee\"]", "9683b2d02a6cabee\"");
        let inv = parse(&text).unwrap();
        assert!(inv.traffic.listener_arns.is_empty());
        let sources = inv.traffic_sources().unwrap();
        assert_eq!(sources.len(), 2, "{sources:?}");
        let only_rule = text
            .lines()
            .filter(|l| !l.starts_with("listener_arn"))
            .collect::<Vec<_>>()
            .join("\n");
        let inv = parse(&only_rule).unwrap();
        assert!(matches!(
            inv.traffic_sources().unwrap()[..],
            [TrafficSource::Rule(_)]
        ));
    }

    #[test]
    fn notify_webhooks_are_named_never_given_as_urls() {
        let base = example();
        // The example ends with a commented `[notify]` section.
        let base = base.split("\n[notify]").next().unwrap().to_owned();
        let with = |lines: &str| parse(&format!("{base}\n[notify]\n{lines}\n"));
        assert_eq!(parse(&example()).unwrap().notify, Notify::default());
        let inv =
            with("webhooks = [\"slack:file:/etc/waymark/hook\", \"json:env:OPS_HOOK\"]").unwrap();
        assert_eq!(inv.notify.webhooks.len(), 2);
        let e = with("webhooks = [\"https://hooks.slack.com/services/T0/B0/xyzzy\"]").unwrap_err();
        assert_eq!(e.key, "notify.webhooks", "{e}");
        assert!(e.to_string().contains("holds a URL"), "{e}");
        assert!(
            !e.to_string().contains("xyzzy"),
            "the URL is not repeated: {e}"
        );
        let e = with("webhooks = [\"json:file:http://x\"]").unwrap_err();
        assert!(e.to_string().contains("holds a URL"), "{e}");
        for bad in [
            "xml:file:/a",
            "json:url:/a",
            "json:env:1X",
            "json:env:",
            "json:file:",
        ] {
            let e = with(&format!("webhooks = [\"{bad}\"]")).unwrap_err();
            assert_eq!(e.key, "notify.webhooks", "{bad}: {e}");
        }
        let e = with("hooks = []").unwrap_err();
        assert!(e.to_string().contains("hooks"), "{e}");
    }

    #[test]
    fn run_limits_are_validated_and_finish_by_is_rfc3339() {
        let with_run = |lines: &str| {
            let text = example();
            let (head, _) = text.split_once("[run]").unwrap();
            parse(&format!("{head}[run]\n{lines}\n"))
        };
        let inv = with_run("max_duration_secs = 5400\nfinish_by = \"2026-12-01T06:00:00Z\"\napprover_must_differ = true").unwrap();
        assert_eq!(inv.max_duration_secs(), 5400);
        assert_eq!(
            inv.run.finish_by.unwrap().to_rfc3339(),
            "2026-12-01T06:00:00+00:00"
        );
        assert!(inv.run.approver_must_differ);
        let e = with_run("max_duration_secs = 10").unwrap_err();
        assert_eq!(e.key, "run.max_duration_secs", "{e}");
        assert!(e.problem.contains("give 60 to 604800"), "{e}");
        let e = with_run("approval_timeout_secs = 0").unwrap_err();
        assert_eq!(e.key, "run.approval_timeout_secs", "{e}");
        let e = with_run("finish_by = \"tomorrow\"").unwrap_err();
        assert!(e.to_string().contains("inv.toml"), "{e}");
        let e = with_run("max_duration = 10").unwrap_err();
        assert!(
            e.problem.contains("max_duration"),
            "unknown key refused: {e}"
        );
    }

    #[test]
    fn register_node_must_be_a_node_of_the_inventory() {
        let text = example().replace("node = \"yb-b-2\"", "node = \"yb-z-9\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key, "register.node", "{e}");
    }
}
