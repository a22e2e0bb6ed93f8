//! `YugabyteDB` activities over the yb-master HTTP API (and `yb-admin` / `yb-ts-cli` over SSH where
//! HTTP has no confirmed answer): find the leader master, list masters and tservers, the node gate
//! (masters and tservers equal to the inventory's, none DEAD, nothing under-replicated or
//! leaderless), proof that a restarted server's *new* process serves, `is_server_ready` and
//! follower lag, the leader blacklist (change it idempotently, wait for it to drain), and the
//! load balancer (several consecutive idle readings with balanced leaders). The older one-look
//! health gate ([`HealthCheck`], [`WaitHealthy`], [`WaitServerBack`]) stays for the plan and for
//! histories of earlier workflow versions.
//!
//! Every command run on a node goes through one SSH session per activity attempt ([`NodeShell`]),
//! reused across polls, and gets `-certs_dir_name` when the inventory names the cluster's
//! certificates (a TLS cluster refuses a client without them).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use waymark_engine::activity::{self, Activity, Context};
use waymark_engine::runtime::EngineBuilder;

use crate::ssh;
use crate::wait::{Deadline, PollUntil, WaitError};

/// Errors of the `YugabyteDB` activities.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A master could not be reached.
    #[error("YugabyteDB: yb-master {addr}: {detail}; check that the master runs and its web port (7000) is reachable")]
    Unreachable {
        /// `host:port`.
        addr: String,
        /// What failed.
        detail: String,
    },
    /// A master answered with an unexpected status or body.
    #[error("YugabyteDB: yb-master {addr} {path}: {detail}")]
    BadAnswer {
        /// `host:port`.
        addr: String,
        /// Endpoint.
        path: String,
        /// What was wrong.
        detail: String,
    },
    /// No master says it is the leader.
    #[error("YugabyteDB: no leader master among {0:?}; an election may be in progress, or the masters are down")]
    NoLeader(Vec<String>),
    /// A wait reached its one deadline (final: not retried).
    #[error("YugabyteDB: {what} not reached after {waited:?} (the wait's deadline; final, not retried): {last}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        waited: Duration,
        /// The last observation.
        last: String,
    },
    /// The inventory names something the cluster does not have.
    #[error("YugabyteDB: {0}")]
    Unknown(String),
    /// yb-admin failed or printed something unexpected.
    #[error("YugabyteDB: yb-admin on {host}: {detail}")]
    YbAdmin {
        /// SSH host.
        host: String,
        /// What went wrong.
        detail: String,
    },
    /// Cancelled while waiting.
    #[error("YugabyteDB: wait for {0} cancelled")]
    Cancelled(String),
    /// The SSH session to a node failed.
    #[error("YugabyteDB: {0}")]
    Ssh(#[from] ssh::Error),
}

impl From<Error> for activity::Error {
    fn from(e: Error) -> Self {
        let retryable = match &e {
            Error::Unknown(_) | Error::Cancelled(_) | Error::Timeout { .. } => false,
            Error::Ssh(s) => s.is_retryable(),
            _ => true,
        };
        activity::Error {
            message: e.to_string(),
            retryable,
        }
    }
}

/// How to reach the yb-masters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Masters {
    /// Web addresses (`host:7000`) of every master.
    pub http: Vec<String>,
    /// Per-request timeout, ms (default 5,000).
    #[serde(default)]
    pub request_timeout_ms: Option<u64>,
}

impl Masters {
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.unwrap_or(5000))
    }

    async fn get(&self, addr: &str, path: &str) -> Result<(u16, Value), Error> {
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let uri: hyper::Uri =
            format!("http://{addr}{path}")
                .parse()
                .map_err(|e| Error::BadAnswer {
                    addr: addr.into(),
                    path: path.into(),
                    detail: format!("bad address: {e}"),
                })?;
        let call = async {
            let resp = client.get(uri).await.map_err(|e| Error::Unreachable {
                addr: addr.into(),
                detail: format!("{e}"),
            })?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| Error::Unreachable {
                    addr: addr.into(),
                    detail: format!("reading the answer: {e}"),
                })?
                .to_bytes();
            Ok::<_, Error>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout(), call)
            .await
            .map_err(|_| Error::Unreachable {
                addr: addr.into(),
                detail: format!("no answer within {:?}", self.timeout()),
            })??;
        let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok((status, value))
    }

    /// The web address of the leader master.
    pub async fn leader(&self) -> Result<String, Error> {
        let mut last_err = None;
        for addr in &self.http {
            match self.get(addr, "/api/v1/is-leader").await {
                Ok((200, _)) => return Ok(addr.clone()),
                Ok(_) => {}
                Err(e) => last_err = Some(e),
            }
        }
        match last_err {
            Some(e) if self.http.len() == 1 => Err(e),
            _ => Err(Error::NoLeader(self.http.clone())),
        }
    }

    /// GET a leader-answered endpoint, as JSON, failing on a non-200 status.
    async fn leader_json(&self, path: &str) -> Result<Value, Error> {
        let leader = self.leader().await?;
        match self.get(&leader, path).await? {
            (200, v) => Ok(v),
            (code, _) => Err(Error::BadAnswer {
                addr: leader,
                path: path.into(),
                detail: format!("HTTP {code}"),
            }),
        }
    }

    /// Every tserver, from `/api/v1/tablet-servers`.
    pub async fn tservers(&self) -> Result<Vec<TServer>, Error> {
        let v = self.leader_json("/api/v1/tablet-servers").await?;
        let mut out = Vec::new();
        for (_, by_host) in v.as_object().into_iter().flatten() {
            for (host_port, t) in by_host.as_object().into_iter().flatten() {
                out.push(TServer {
                    host: host_port
                        .rsplit_once(':')
                        .map_or(host_port.as_str(), |(h, _)| h)
                        .to_owned(),
                    web: host_port.clone(),
                    alive: t["status"].as_str() == Some("ALIVE"),
                    uptime_seconds: t["uptime_seconds"].as_u64().unwrap_or(0),
                    time_since_hb_sec: t["time_since_hb_sec"].as_f64().unwrap_or(0.0),
                    uuid: t["permanent_uuid"].as_str().unwrap_or_default().to_owned(),
                    zone: t["zone"].as_str().unwrap_or_default().to_owned(),
                    tablets: t["user_tablets_total"].as_u64().unwrap_or(0),
                    leaders: t["user_tablets_leaders"].as_u64().unwrap_or(0),
                });
            }
        }
        out.sort_by(|a, b| a.host.cmp(&b.host));
        Ok(out)
    }

    /// Every master with its role, from `/api/v1/masters` (answered by any live master).
    pub async fn masters(&self) -> Result<Vec<MasterInfo>, Error> {
        let mut last = None;
        for addr in &self.http {
            match self.get(addr, "/api/v1/masters").await {
                Ok((200, v)) => {
                    let masters = v["masters"].as_array().cloned().unwrap_or_default();
                    return Ok(masters
                        .iter()
                        .map(|m| MasterInfo {
                            host: m["registration"]["private_rpc_addresses"][0]["host"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                            uuid: m["instance_id"]["permanent_uuid"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                            role: m["role"].as_str().unwrap_or_default().to_owned(),
                            error: m.get("error").map(|e| {
                                e["message"]
                                    .as_str()
                                    .map_or_else(|| e.to_string(), str::to_owned)
                            }),
                            instance_seqno: m["instance_id"]["instance_seqno"]
                                .as_u64()
                                .unwrap_or(0),
                        })
                        .collect());
                }
                Ok((code, _)) => {
                    last = Some(Error::BadAnswer {
                        addr: addr.clone(),
                        path: "/api/v1/masters".into(),
                        detail: format!("HTTP {code}"),
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::NoLeader(self.http.clone())))
    }

    /// The health gate's observations.
    pub async fn health(&self, min_uptime_seconds: u64) -> Result<HealthReport, Error> {
        let h = self.leader_json("/api/v1/health-check").await?;
        let rep = self.leader_json("/api/v1/tablet-replication").await?;
        let tservers = self.tservers().await?;
        let list = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
                .collect()
        };
        let dead_nodes = list(&h["dead_nodes"]);
        let under_replicated = list(&h["under_replicated_tablets"]);
        let leaderless: Vec<String> = rep["leaderless_tablets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| t["tablet_uuid"].as_str().unwrap_or_default().to_owned())
            .collect();
        let most_recent_uptime = h["most_recent_uptime"].as_u64().unwrap_or(0);
        let mut problems = Vec::new();
        for t in tservers.iter().filter(|t| !t.alive) {
            problems.push(format!(
                "tserver {} is DEAD (no heartbeat for {:.0} s)",
                t.host, t.time_since_hb_sec
            ));
        }
        if !dead_nodes.is_empty() && tservers.iter().all(|t| t.alive) {
            problems.push(format!("dead nodes reported: {}", dead_nodes.join(", ")));
        }
        if !under_replicated.is_empty() {
            problems.push(format!(
                "{} under-replicated tablets",
                under_replicated.len()
            ));
        }
        if !leaderless.is_empty() {
            problems.push(format!("{} leaderless tablets", leaderless.len()));
        }
        if most_recent_uptime < min_uptime_seconds {
            problems.push(format!(
                "a tserver has been up only {most_recent_uptime} s (gate: {min_uptime_seconds} s)"
            ));
        }
        if let Some(e) = h.get("error") {
            problems.push(format!("health-check reported an error: {e}"));
        }
        Ok(HealthReport {
            passed: problems.is_empty(),
            problems,
            dead_nodes,
            under_replicated_tablets: under_replicated.len(),
            leaderless_tablets: leaderless.len(),
            most_recent_uptime,
            tservers: tservers.len(),
        })
    }
}

/// One tserver as the leader master sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TServer {
    /// Host (the part of its web address before the port).
    pub host: String,
    /// Web address as registered (`host:9000`).
    pub web: String,
    /// ALIVE (true) or DEAD.
    pub alive: bool,
    /// Uptime.
    pub uptime_seconds: u64,
    /// Seconds since its last heartbeat.
    pub time_since_hb_sec: f64,
    /// Permanent uuid.
    pub uuid: String,
    /// Placement zone.
    pub zone: String,
    /// Tablet replicas it holds (`user_tablets_total`).
    #[serde(default)]
    pub tablets: u64,
    /// Tablets it leads (`user_tablets_leaders`).
    #[serde(default)]
    pub leaders: u64,
}

/// One master.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterInfo {
    /// RPC host.
    pub host: String,
    /// Permanent uuid.
    pub uuid: String,
    /// LEADER, FOLLOWER, or something else while it is not serving.
    pub role: String,
    /// The `error` the masters' list shows for it (a master that does not answer).
    #[serde(default)]
    pub error: Option<String>,
    /// `instance_id.instance_seqno`: new for every start of the process.
    #[serde(default)]
    pub instance_seqno: u64,
}

/// The cluster health gate's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    /// No problem found.
    pub passed: bool,
    /// Each problem, in words.
    pub problems: Vec<String>,
    /// `dead_nodes` of the health check.
    pub dead_nodes: Vec<String>,
    /// Count of under-replicated tablets.
    pub under_replicated_tablets: usize,
    /// Count of leaderless tablets.
    pub leaderless_tablets: usize,
    /// Smallest uptime among live tservers.
    pub most_recent_uptime: u64,
    /// Tservers seen.
    pub tservers: usize,
}

/// The web address of the leader master.
pub struct FindLeader;

impl Activity for FindLeader {
    const NAME: &'static str = "yb.find_leader";
    type Input = Masters;
    type Output = String;
    async fn run(&self, _ctx: Context, m: Masters) -> Result<String, activity::Error> {
        Ok(m.leader().await?)
    }
}

/// Every master with its role.
pub struct ListMasters;

impl Activity for ListMasters {
    const NAME: &'static str = "yb.list_masters";
    type Input = Masters;
    type Output = Vec<MasterInfo>;
    async fn run(&self, _ctx: Context, m: Masters) -> Result<Vec<MasterInfo>, activity::Error> {
        Ok(m.masters().await?)
    }
}

/// Every tserver with ALIVE/DEAD and uptime.
pub struct ListTServers;

impl Activity for ListTServers {
    const NAME: &'static str = "yb.list_tservers";
    type Input = Masters;
    type Output = Vec<TServer>;
    async fn run(&self, _ctx: Context, m: Masters) -> Result<Vec<TServer>, activity::Error> {
        Ok(m.tservers().await?)
    }
}

/// Input of [`HealthCheck`] and [`WaitHealthy`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthInput {
    /// The masters.
    pub masters: Masters,
    /// Every live tserver must have been up at least this long.
    pub min_uptime_seconds: u64,
    /// [`WaitHealthy`]: give up after, seconds.
    #[serde(default)]
    pub timeout_secs: u64,
    /// [`WaitHealthy`]: poll interval, ms.
    #[serde(default)]
    pub poll_ms: u64,
}

/// One look at the health gate (never fails because the cluster is unhealthy: the report says so).
pub struct HealthCheck;

impl Activity for HealthCheck {
    const NAME: &'static str = "yb.health_check";
    type Input = HealthInput;
    type Output = HealthReport;
    async fn run(&self, _ctx: Context, i: HealthInput) -> Result<HealthReport, activity::Error> {
        Ok(i.masters.health(i.min_uptime_seconds).await?)
    }
}

/// Waits until the health gate passes, heartbeating what still fails.
pub struct WaitHealthy;

impl Activity for WaitHealthy {
    const NAME: &'static str = "yb.wait_healthy";
    type Input = HealthInput;
    type Output = HealthReport;
    async fn run(&self, ctx: Context, i: HealthInput) -> Result<HealthReport, activity::Error> {
        let what = "cluster health gate".to_owned();
        poll(&ctx, &what, i.timeout_secs, i.poll_ms, || async {
            let r = i.masters.health(i.min_uptime_seconds).await;
            match r {
                Ok(r) if r.passed => Ok(Poll::Ready(r)),
                Ok(r) => Ok(Poll::Pending(r.problems.join("; "))),
                // A master restarting answers nothing for a while: keep waiting.
                Err(
                    e @ (Error::Unreachable { .. } | Error::NoLeader(_) | Error::BadAnswer { .. }),
                ) => Ok(Poll::Pending(e.to_string())),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(Into::into)
    }
}

/// Which server to wait for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerKind {
    /// yb-master.
    Master,
    /// yb-tserver.
    TServer,
}

/// Input of [`WaitServerBack`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerBackInput {
    /// The masters.
    pub masters: Masters,
    /// Host of the server, as the cluster knows it.
    pub host: String,
    /// Master or tserver.
    pub kind: ServerKind,
    /// Give up after, seconds.
    pub timeout_secs: u64,
    /// Poll interval, ms.
    pub poll_ms: u64,
}

/// Waits until one restarted server is back: a tserver ALIVE in the leader's list; a master
/// serving as LEADER or FOLLOWER.
pub struct WaitServerBack;

impl Activity for WaitServerBack {
    const NAME: &'static str = "yb.wait_server_back";
    type Input = ServerBackInput;
    type Output = String;
    async fn run(&self, ctx: Context, i: ServerBackInput) -> Result<String, activity::Error> {
        let what = format!("{:?} on {} back", i.kind, i.host).to_lowercase();
        poll(&ctx, &what, i.timeout_secs, i.poll_ms, || async {
            match i.kind {
                ServerKind::TServer => match i.masters.tservers().await {
                    Ok(ts) => match ts.iter().find(|t| t.host == i.host) {
                        None => Err(Error::Unknown(format!(
                            "no tserver {} in the cluster (known: {})",
                            i.host,
                            ts.iter()
                                .map(|t| t.host.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))),
                        Some(t) if t.alive => Ok(Poll::Ready(format!(
                            "tserver {} ALIVE, up {} s",
                            t.host, t.uptime_seconds
                        ))),
                        Some(t) => Ok(Poll::Pending(format!("tserver {} DEAD", t.host))),
                    },
                    Err(e) => Ok(Poll::Pending(e.to_string())),
                },
                ServerKind::Master => match i.masters.masters().await {
                    Ok(ms) => match ms.iter().find(|m| m.host == i.host) {
                        None => Err(Error::Unknown(format!(
                            "no master {} in the cluster",
                            i.host
                        ))),
                        Some(m) if m.role == "LEADER" || m.role == "FOLLOWER" => Ok(Poll::Ready(
                            format!("master {} serving as {}", m.host, m.role),
                        )),
                        Some(m) => Ok(Poll::Pending(format!("master {} is {}", m.host, m.role))),
                    },
                    Err(e) => Ok(Poll::Pending(e.to_string())),
                },
            }
        })
        .await
        .map_err(Into::into)
    }
}

/// How to run `yb-admin` on a node: over SSH, against every master, with the cluster's
/// certificates when it uses TLS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct YbAdmin {
    /// The node `yb-admin` runs on.
    pub ssh: ssh::SshTarget,
    /// Path of `yb-admin` there.
    pub yb_admin: String,
    /// `host:7100` of every master, for `-master_addresses`.
    pub master_rpc: Vec<String>,
    /// `-certs_dir_name` (the cluster uses TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certs_dir: Option<String>,
}

impl YbAdmin {
    /// The command line of `yb-admin ARGS`.
    pub fn line(&self, args: &[&str]) -> String {
        yb_admin_line(
            &self.yb_admin,
            &self.master_rpc,
            self.certs_dir.as_deref(),
            args,
        )
    }
}

/// One SSH session to a node, reused for every command (and every poll) of an activity attempt.
pub struct NodeShell {
    session: ssh::SshSession,
}

impl NodeShell {
    /// Logs in once.
    pub async fn connect(target: &ssh::SshTarget) -> Result<Self, Error> {
        Ok(NodeShell {
            session: ssh::SshSession::connect(target).await?,
        })
    }

    /// Runs `command`; a non-zero exit is not an error here.
    pub async fn exec(&self, command: &str) -> Result<ssh::CommandOutput, Error> {
        Ok(self.session.exec(command).await?)
    }

    /// Runs `command`; its stdout, or [`Error::YbAdmin`] naming the node, the command and stderr.
    pub async fn ok(&self, command: &str) -> Result<String, Error> {
        let out = self.exec(command).await?;
        if out.exit_status != 0 {
            return Err(Error::YbAdmin {
                host: self.session.target().addr(),
                detail: format!(
                    "`{command}` exited {}: {}",
                    out.exit_status,
                    first_line(&out.stderr, &out.stdout)
                ),
            });
        }
        Ok(out.stdout)
    }

    /// Logs out.
    pub async fn close(self) {
        self.session.close().await;
    }
}

fn first_line(stderr: &str, stdout: &str) -> String {
    let text = if stderr.trim().is_empty() {
        stdout
    } else {
        stderr
    };
    let t = text.trim();
    let mut s: String = t.chars().take(400).collect();
    if t.chars().count() > 400 {
        s.push_str("...");
    }
    if s.is_empty() {
        "(no output)".into()
    } else {
        s
    }
}

/// Input of [`WaitLoadBalancer`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalancerInput {
    /// A node to run `yb-admin` on.
    pub ssh: ssh::SshTarget,
    /// Path of `yb-admin` there.
    pub yb_admin: String,
    /// `host:7100` of every master, for `-master_addresses`.
    pub master_rpc: Vec<String>,
    /// Give up after, seconds.
    pub timeout_secs: u64,
    /// Poll interval, ms.
    pub poll_ms: u64,
    /// `-certs_dir_name` (the cluster uses TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certs_dir: Option<String>,
    /// Consecutive idle readings required (0 or 1: one).
    #[serde(default)]
    pub idle_readings: u32,
    /// With masters: leaders must also be balanced (every live tserver holding tablets leads
    /// some) in the same reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masters: Option<Masters>,
}

/// Waits until the load balancer is idle (`yb-admin get_is_load_balancer_idle`) with no load
/// move remaining (`get_load_move_completion`) and, given the masters, leaders balanced, for
/// `idle_readings` consecutive polls; heartbeats the percentage of load moves done. One SSH
/// session for every poll.
pub struct WaitLoadBalancer;

impl Activity for WaitLoadBalancer {
    const NAME: &'static str = "yb.wait_load_balancer";
    type Input = LoadBalancerInput;
    type Output = String;
    async fn run(&self, ctx: Context, i: LoadBalancerInput) -> Result<String, activity::Error> {
        let admin = YbAdmin {
            ssh: i.ssh.clone(),
            yb_admin: i.yb_admin.clone(),
            master_rpc: i.master_rpc.clone(),
            certs_dir: i.certs_dir.clone(),
        };
        let shell = NodeShell::connect(&i.ssh).await?;
        let want = i.idle_readings.max(1);
        let streak = std::sync::atomic::AtomicU32::new(0);
        let result = poll(
            &ctx,
            "load balancer idle",
            i.timeout_secs,
            i.poll_ms,
            || async {
                let progress = shell.ok(&admin.line(&["get_load_move_completion"])).await?;
                let pct = parse_load_move_completion(&progress);
                let idle_out = shell
                    .ok(&admin.line(&["get_is_load_balancer_idle"]))
                    .await?;
                let idle = parse_is_idle(&idle_out).ok_or_else(|| Error::YbAdmin {
                    host: i.ssh.addr(),
                    detail: format!("unexpected output of get_is_load_balancer_idle: {idle_out:?}"),
                })?;
                let mut line = match pct {
                    Some((p, r, t)) => {
                        format!("load balancer {p:.1}% done ({r} of {t} moves remaining)")
                    }
                    None => "load balancer progress unknown".to_owned(),
                };
                let moves_left = pct.is_some_and(|(_, r, _)| r > 0);
                let unbalanced = match &i.masters {
                    Some(m) => match m.tservers().await {
                        Ok(ts) => unbalanced_leaders(&ts),
                        Err(e) => Some(e.to_string()),
                    },
                    None => None,
                };
                if let Some(u) = &unbalanced {
                    line = format!("{line}; {u}");
                }
                if idle && !moves_left && unbalanced.is_none() {
                    streak.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    streak.store(0, std::sync::atomic::Ordering::Relaxed);
                }
                let streak = streak.load(std::sync::atomic::Ordering::Relaxed);
                Ok(if streak >= want {
                    Poll::Ready(format!(
                        "load balancer idle for {streak} consecutive readings; {line}"
                    ))
                } else {
                    Poll::Pending(format!(
                        "{line}; idle readings in a row: {streak} of {want}"
                    ))
                })
            },
        )
        .await;
        shell.close().await;
        result.map_err(Into::into)
    }
}

/// Why the leaders are not balanced (`None`: balanced): a live tserver holding tablets leads
/// none of them (a restarted server the load balancer has not given leaders back yet). How even
/// the rest is, the load balancer itself judges: its idle reading and its moves remaining.
pub fn unbalanced_leaders(ts: &[TServer]) -> Option<String> {
    ts.iter()
        .find(|t| t.alive && t.tablets > 0 && t.leaders == 0)
        .map(|t| format!("tserver {} leads none of its {} tablets", t.host, t.tablets))
}

/// The `yb-admin` command line run on a node's login shell: `YB_ADMIN -master_addresses
/// M1,M2 SUBCOMMAND`, every value shell-quoted ([`ssh::shell_quote`]), so a path or an address
/// holding shell syntax stays one literal word.
pub fn yb_admin_command(yb_admin: &str, master_rpc: &[String], subcommand: &str) -> String {
    yb_admin_line(yb_admin, master_rpc, None, &[subcommand])
}

/// `YB_ADMIN -master_addresses M1,M2 [-certs_dir_name DIR] ARGS...`, every value shell-quoted.
pub fn yb_admin_line(
    yb_admin: &str,
    master_rpc: &[String],
    certs_dir: Option<&str>,
    args: &[&str],
) -> String {
    let mut line = format!(
        "{} -master_addresses {}",
        ssh::shell_quote(yb_admin),
        ssh::shell_quote(&master_rpc.join(","))
    );
    if let Some(d) = certs_dir {
        line.push_str(" -certs_dir_name ");
        line.push_str(&ssh::shell_quote(d));
    }
    for a in args {
        line.push(' ');
        line.push_str(&ssh::shell_quote(a));
    }
    line
}

/// `YB_TS_CLI [-certs_dir_name DIR] --server_address=HOST:9100 is_server_ready`, quoted.
pub fn yb_ts_cli_ready_line(yb_ts_cli: &str, certs_dir: Option<&str>, host: &str) -> String {
    let mut line = ssh::shell_quote(yb_ts_cli);
    if let Some(d) = certs_dir {
        line.push_str(" -certs_dir_name ");
        line.push_str(&ssh::shell_quote(d));
    }
    line.push(' ');
    line.push_str(&ssh::shell_quote(&format!(
        "--server_address={}",
        rpc_address(host, 9100)
    )));
    line.push_str(" is_server_ready");
    line
}

/// `host:port`, `[v6]:port` for IPv6 addresses.
pub fn rpc_address(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Parses `Percent complete = 42.5 : 3 remaining out of 12`.
pub fn parse_load_move_completion(out: &str) -> Option<(f64, u64, u64)> {
    let line = out.lines().find(|l| l.contains("Percent complete"))?;
    let (_, rest) = line.split_once('=')?;
    let (pct, rest) = rest.split_once(':')?;
    let mut words = rest.split_whitespace();
    let remaining = words.next()?.parse().ok()?;
    let total = words.last()?.parse().ok()?;
    Some((pct.trim().parse().ok()?, remaining, total))
}

/// Parses `Idle = 1` / `Idle = 0`.
pub fn parse_is_idle(out: &str) -> Option<bool> {
    let line = out.lines().find(|l| l.trim_start().starts_with("Idle"))?;
    match line.split_once('=')?.1.trim() {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

/// The hosts of the leader blacklist in `yb-admin get_universe_config`'s JSON
/// (`leaderBlacklist.hosts[].host`, with their ports).
pub fn parse_leader_blacklist(out: &str) -> Option<Vec<String>> {
    let start = out.find('{')?;
    let v: Value = serde_json::from_str(out[start..].trim()).ok()?;
    Some(
        v["leaderBlacklist"]["hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| {
                let host = h["host"].as_str()?;
                let port = h["port"].as_u64().unwrap_or(9100);
                Some(format!("{host}:{port}"))
            })
            .collect(),
    )
}

/// The largest `follower_lag_ms` in a tserver's Prometheus metrics (0 when it follows nothing).
pub fn parse_max_follower_lag_ms(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("follower_lag_ms"))
        .filter_map(|l| {
            let after = l.rsplit_once('}').map_or(l, |(_, r)| r);
            let v: f64 = after.split_whitespace().next()?.parse().ok()?;
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Some(v.max(0.0) as u64)
        })
        .max()
        .unwrap_or(0)
}

/// Input of [`NodeGate`] and [`WaitNodeGate`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateInput {
    /// The masters.
    pub masters: Masters,
    /// RPC hosts of the inventory's masters: `/api/v1/masters` must list exactly these.
    pub expected_masters: Vec<String>,
    /// Hosts of the inventory's tservers: `/api/v1/tablet-servers` must list exactly these.
    pub expected_tservers: Vec<String>,
    /// Tservers the cluster may list besides, DEAD or not (read replicas, known stale entries).
    #[serde(default)]
    pub ignored_tservers: Vec<String>,
    /// [`WaitNodeGate`]: give up after, seconds.
    #[serde(default)]
    pub timeout_secs: u64,
    /// [`WaitNodeGate`]: poll interval, ms.
    #[serde(default)]
    pub poll_ms: u64,
}

/// The node gate's verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateReport {
    /// Nothing found.
    pub passed: bool,
    /// What a wait may see fixed (a DEAD tserver, a master with an error, tablets
    /// under-replicated or leaderless), each naming the node or the endpoint and the check.
    pub problems: Vec<String>,
    /// Where the cluster and the inventory disagree (no wait fixes it).
    pub mismatches: Vec<String>,
}

impl GateReport {
    /// Every finding, mismatches first.
    pub fn all(&self) -> Vec<String> {
        self.mismatches
            .iter()
            .chain(&self.problems)
            .cloned()
            .collect()
    }
}

impl Masters {
    /// The node gate (`YugabyteDB` Anywhere's pre-checks, and stricter): every master of
    /// `/api/v1/masters` LEADER or FOLLOWER with no error, and exactly the inventory's; the
    /// tservers of `/api/v1/tablet-servers` exactly the inventory's (besides the ignored ones),
    /// none DEAD; no tablet under-replicated by `/api/v1/tablet-under-replication` (RUNNING
    /// replicas) and none leaderless by `/api/v1/tablet-replication`.
    pub async fn node_gate(&self, i: &GateInput) -> Result<GateReport, Error> {
        let mut r = GateReport::default();
        let masters = self.masters().await?;
        let seen: BTreeSet<&str> = masters.iter().map(|m| m.host.as_str()).collect();
        for m in &masters {
            if !i.expected_masters.contains(&m.host) {
                r.mismatches.push(format!(
                    "master set: master {} is in the cluster (/api/v1/masters) but not in the inventory; add it to the inventory (master_http, master_rpc) or remove it from the cluster",
                    m.host
                ));
            }
        }
        for e in &i.expected_masters {
            if !seen.contains(e.as_str()) {
                r.mismatches.push(format!(
                    "master set: master {e} is in the inventory but not in the cluster (/api/v1/masters lists {}); fix the inventory",
                    seen.iter().copied().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        for m in &masters {
            if let Some(err) = &m.error {
                r.problems.push(format!(
                    "master {}: /api/v1/masters reports an error: {err}",
                    m.host
                ));
            } else if m.role != "LEADER" && m.role != "FOLLOWER" {
                r.problems.push(format!(
                    "master {}: role {:?}, not LEADER or FOLLOWER",
                    m.host, m.role
                ));
            }
        }
        if !masters.iter().any(|m| m.role == "LEADER") {
            r.problems
                .push("masters: no master is LEADER (an election may be in progress)".into());
        }
        let ts = self.tservers().await?;
        let known: BTreeSet<&str> = ts.iter().map(|t| t.host.as_str()).collect();
        for t in &ts {
            if i.ignored_tservers.contains(&t.host) {
                continue;
            }
            if !i.expected_tservers.contains(&t.host) {
                r.mismatches.push(format!(
                    "tserver set: tserver {} (zone {}, {}) is in the cluster (/api/v1/tablet-servers) but not in the inventory; list it in the inventory, or in yugabyte.ignore_tservers if it is a read replica or a known stale entry",
                    t.host,
                    if t.zone.is_empty() { "?" } else { &t.zone },
                    if t.alive { "ALIVE" } else { "DEAD" }
                ));
            } else if !t.alive {
                r.problems.push(format!(
                    "tserver {} is DEAD (no heartbeat for {:.0} s)",
                    t.host, t.time_since_hb_sec
                ));
            }
        }
        for e in &i.expected_tservers {
            if !known.contains(e.as_str()) {
                r.mismatches.push(format!(
                    "tserver set: tserver {e} is in the inventory but not in the cluster (/api/v1/tablet-servers); fix the inventory or set tserver = false on that node"
                ));
            }
        }
        let under = self.leader_json("/api/v1/tablet-under-replication").await?;
        let under: Vec<String> = under["underreplicated_tablets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| t["tablet_uuid"].as_str().unwrap_or_default().to_owned())
            .collect();
        if !under.is_empty() {
            r.problems.push(format!(
                "{} under-replicated tablets by /api/v1/tablet-under-replication (first {})",
                under.len(),
                under[0]
            ));
        }
        let rep = self.leader_json("/api/v1/tablet-replication").await?;
        let leaderless: Vec<String> = rep["leaderless_tablets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| t["tablet_uuid"].as_str().unwrap_or_default().to_owned())
            .collect();
        if !leaderless.is_empty() {
            r.problems.push(format!(
                "{} leaderless tablets by /api/v1/tablet-replication (first {})",
                leaderless.len(),
                leaderless[0]
            ));
        }
        r.passed = r.problems.is_empty() && r.mismatches.is_empty();
        Ok(r)
    }
}

/// One look at the node gate (never fails because the cluster fails the gate: the report says so).
pub struct NodeGate;

impl Activity for NodeGate {
    const NAME: &'static str = "yb.node_gate";
    type Input = GateInput;
    type Output = GateReport;
    async fn run(&self, _ctx: Context, i: GateInput) -> Result<GateReport, activity::Error> {
        Ok(i.masters.node_gate(&i).await?)
    }
}

/// Waits until the node gate passes, heartbeating what still fails; a disagreement between the
/// cluster and the inventory fails at once (not retryable: no wait fixes it).
pub struct WaitNodeGate;

impl Activity for WaitNodeGate {
    const NAME: &'static str = "yb.wait_node_gate";
    type Input = GateInput;
    type Output = GateReport;
    async fn run(&self, ctx: Context, i: GateInput) -> Result<GateReport, activity::Error> {
        poll(&ctx, "node gate", i.timeout_secs, i.poll_ms, || async {
            match i.masters.node_gate(&i).await {
                Ok(r) if !r.mismatches.is_empty() => Err(Error::Unknown(r.all().join("; "))),
                Ok(r) if r.passed => Ok(Poll::Ready(r)),
                Ok(r) => Ok(Poll::Pending(r.problems.join("; "))),
                Err(
                    e @ (Error::Unreachable { .. } | Error::NoLeader(_) | Error::BadAnswer { .. }),
                ) => Ok(Poll::Pending(e.to_string())),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(Into::into)
    }
}

/// Input of [`WaitNewProcess`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewProcessInput {
    /// The masters.
    pub masters: Masters,
    /// Host of the server, as the cluster knows it.
    pub host: String,
    /// Master or tserver.
    pub kind: ServerKind,
    /// When the restart was issued: ms since the epoch on the engine's (journaled) clock.
    pub restarted_at_ms: i64,
    /// A master's `instance_seqno` before the restart (the new process has another).
    #[serde(default)]
    pub old_instance_seqno: u64,
    /// Give up after, seconds.
    pub timeout_secs: u64,
    /// Poll interval, ms.
    pub poll_ms: u64,
}

/// Waits until the cluster shows the restarted server's *new* process serving: a tserver ALIVE
/// with an uptime and a heartbeat age both shorter than the time since the restart (the master
/// keeps reporting the old process ALIVE, with its old uptime, long after it stopped); a master
/// LEADER or FOLLOWER, with no error, under a new `instance_seqno`. Times are compared on the
/// engine's clock only (the ages the master reports against the time since the restart).
pub struct WaitNewProcess;

impl Activity for WaitNewProcess {
    const NAME: &'static str = "yb.wait_new_process";
    type Input = NewProcessInput;
    type Output = String;
    async fn run(&self, ctx: Context, i: NewProcessInput) -> Result<String, activity::Error> {
        let what = format!("the new {:?} process on {} serving", i.kind, i.host).to_lowercase();
        poll(&ctx, &what, i.timeout_secs, i.poll_ms, || async {
            let elapsed_ms = (ctx.now().timestamp_millis() - i.restarted_at_ms).max(0);
            #[allow(clippy::cast_precision_loss)]
            let since_s = elapsed_ms as f64 / 1000.0;
            match i.kind {
                ServerKind::TServer => match i.masters.tservers().await {
                    Ok(ts) => match ts.iter().find(|t| t.host == i.host) {
                        None => Ok(Poll::Pending(format!(
                            "tserver {} not in /api/v1/tablet-servers",
                            i.host
                        ))),
                        Some(t) if !t.alive => {
                            Ok(Poll::Pending(format!("tserver {} DEAD", t.host)))
                        }
                        #[allow(clippy::cast_precision_loss)]
                        Some(t) if t.uptime_seconds as f64 > since_s => Ok(Poll::Pending(format!(
                            "tserver {}: the master still reports the old process (up {} s, restart issued {since_s:.1} s ago)",
                            t.host, t.uptime_seconds
                        ))),
                        Some(t) if t.time_since_hb_sec >= since_s => Ok(Poll::Pending(format!(
                            "tserver {}: no heartbeat since the restart (last {:.1} s ago, restart issued {since_s:.1} s ago)",
                            t.host, t.time_since_hb_sec
                        ))),
                        Some(t) => Ok(Poll::Ready(format!(
                            "tserver {}: new process ALIVE, up {} s, heartbeat {:.1} s ago, restart issued {since_s:.1} s ago",
                            t.host, t.uptime_seconds, t.time_since_hb_sec
                        ))),
                    },
                    Err(e) => Ok(Poll::Pending(e.to_string())),
                },
                ServerKind::Master => match i.masters.masters().await {
                    Ok(ms) => match ms.iter().find(|m| m.host == i.host) {
                        None => Err(Error::Unknown(format!(
                            "no master {} in /api/v1/masters",
                            i.host
                        ))),
                        Some(m) if m.error.is_some() => Ok(Poll::Pending(format!(
                            "master {}: {}",
                            m.host,
                            m.error.as_deref().unwrap_or_default()
                        ))),
                        Some(m) if m.instance_seqno == i.old_instance_seqno => {
                            Ok(Poll::Pending(format!(
                                "master {}: still the old process (instance_seqno {})",
                                m.host, m.instance_seqno
                            )))
                        }
                        Some(m) if m.role == "LEADER" || m.role == "FOLLOWER" => {
                            Ok(Poll::Ready(format!(
                                "master {}: new process (instance_seqno {}) serving as {}",
                                m.host, m.instance_seqno, m.role
                            )))
                        }
                        Some(m) => Ok(Poll::Pending(format!("master {} is {:?}", m.host, m.role))),
                    },
                    Err(e) => Ok(Poll::Pending(e.to_string())),
                },
            }
        })
        .await
        .map_err(Into::into)
    }
}

/// Input of [`WaitServerReady`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerReadyInput {
    /// The tserver's node (the tools run there).
    pub ssh: ssh::SshTarget,
    /// Path of `yb-ts-cli` there.
    pub yb_ts_cli: String,
    /// `-certs_dir_name` (the cluster uses TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certs_dir: Option<String>,
    /// Host of the tserver, as the cluster knows it.
    pub host: String,
    /// Largest follower lag accepted, ms.
    pub max_follower_lag_ms: u64,
    /// Give up after, seconds.
    pub timeout_secs: u64,
    /// Poll interval, ms.
    pub poll_ms: u64,
}

/// Waits until a restarted tserver is ready: `yb-ts-cli --server_address=H:9100
/// is_server_ready` exits 0 (no tablet not running, as YBA's `WaitForServerReady`), then the
/// largest `follower_lag_ms` of its metrics (`curl http://H:9000/prometheus-metrics` on the
/// node) is at most the bound. One SSH session for every poll.
pub struct WaitServerReady;

impl Activity for WaitServerReady {
    const NAME: &'static str = "yb.wait_server_ready";
    type Input = ServerReadyInput;
    type Output = String;
    async fn run(&self, ctx: Context, i: ServerReadyInput) -> Result<String, activity::Error> {
        let shell = NodeShell::connect(&i.ssh).await?;
        let ready_line = yb_ts_cli_ready_line(&i.yb_ts_cli, i.certs_dir.as_deref(), &i.host);
        let metrics_line = format!(
            "curl -s {}",
            ssh::shell_quote(&format!(
                "http://{}/prometheus-metrics",
                rpc_address(&i.host, 9000)
            ))
        );
        let what = format!("tserver {} ready (is_server_ready, follower lag)", i.host);
        let result = poll(&ctx, &what, i.timeout_secs, i.poll_ms, || async {
            let out = shell.exec(&ready_line).await?;
            if out.exit_status != 0 {
                let said = first_line(&out.stdout, &out.stderr);
                if is_tls_refusal(&out.stderr) {
                    return Err(Error::YbAdmin {
                        host: i.ssh.addr(),
                        detail: format!("`{ready_line}` refused: {}", first_line(&out.stderr, "")),
                    });
                }
                return Ok(Poll::Pending(format!(
                    "tserver {}: is_server_ready: {said}",
                    i.host
                )));
            }
            let metrics = shell.exec(&metrics_line).await?;
            if metrics.exit_status != 0 {
                return Ok(Poll::Pending(format!(
                    "tserver {}: metrics unreadable: {}",
                    i.host,
                    first_line(&metrics.stderr, &metrics.stdout)
                )));
            }
            let lag = parse_max_follower_lag_ms(&metrics.stdout);
            if lag > i.max_follower_lag_ms {
                return Ok(Poll::Pending(format!(
                    "tserver {}: 0 tablets not running, follower lag {lag} ms (bound {} ms)",
                    i.host, i.max_follower_lag_ms
                )));
            }
            Ok(Poll::Ready(format!(
                "tserver {}: 0 tablets not running, follower lag {lag} ms (bound {} ms)",
                i.host, i.max_follower_lag_ms
            )))
        })
        .await;
        shell.close().await;
        result.map_err(Into::into)
    }
}

/// Whether a yb tool's error says the cluster wants TLS client settings.
pub(crate) fn is_tls_refusal(stderr: &str) -> bool {
    stderr.contains("TLS") || stderr.contains("certificate") || stderr.contains("Handshake")
}

/// Add to or remove from the leader blacklist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlacklistOp {
    /// `change_leader_blacklist ADD`.
    Add,
    /// `change_leader_blacklist REMOVE`.
    Remove,
}

/// Input of [`ChangeLeaderBlacklist`] and [`WaitLeaderBlacklistDrained`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlacklistInput {
    /// How to run `yb-admin`.
    pub admin: YbAdmin,
    /// [`ChangeLeaderBlacklist`]: what to do.
    pub op: BlacklistOp,
    /// The tserver, `host:9100`.
    pub server: String,
    /// [`WaitLeaderBlacklistDrained`]: give up after, seconds.
    #[serde(default)]
    pub timeout_secs: u64,
    /// [`WaitLeaderBlacklistDrained`]: poll interval, ms.
    #[serde(default)]
    pub poll_ms: u64,
}

/// `yb-admin change_leader_blacklist ADD|REMOVE H:9100`, checked before acting: the leader
/// blacklist of `get_universe_config` already holding (ADD) or lacking (REMOVE) the server means
/// an earlier attempt did it, and nothing is run.
pub struct ChangeLeaderBlacklist;

impl Activity for ChangeLeaderBlacklist {
    const NAME: &'static str = "yb.change_leader_blacklist";
    type Input = BlacklistInput;
    type Output = String;
    async fn run(&self, ctx: Context, i: BlacklistInput) -> Result<String, activity::Error> {
        let shell = NodeShell::connect(&i.admin.ssh).await?;
        let result = change_leader_blacklist(&ctx, &shell, &i).await;
        shell.close().await;
        result.map_err(Into::into)
    }
}

async fn change_leader_blacklist(
    ctx: &Context,
    shell: &NodeShell,
    i: &BlacklistInput,
) -> Result<String, Error> {
    let config = shell.ok(&i.admin.line(&["get_universe_config"])).await?;
    let listed = parse_leader_blacklist(&config).ok_or_else(|| Error::YbAdmin {
        host: i.admin.ssh.addr(),
        detail: format!(
            "unexpected output of get_universe_config: {}",
            first_line(&config, "")
        ),
    })?;
    let present = listed.contains(&i.server);
    let (word, done) = match i.op {
        BlacklistOp::Add => ("ADD", present),
        BlacklistOp::Remove => ("REMOVE", !present),
    };
    if done {
        let msg = format!(
            "leader blacklist already {} {} (nothing run)",
            if present { "holds" } else { "lacks" },
            i.server
        );
        ctx.heartbeat(Some(msg.clone()));
        return Ok(msg);
    }
    shell
        .ok(&i.admin.line(&["change_leader_blacklist", word, &i.server]))
        .await?;
    Ok(format!("change_leader_blacklist {word} {}", i.server))
}

/// Waits until `yb-admin get_leader_blacklist_completion` reports no leader left on the
/// blacklisted servers (YBA's `WaitForLeaderBlacklistCompletion`). One SSH session.
pub struct WaitLeaderBlacklistDrained;

impl Activity for WaitLeaderBlacklistDrained {
    const NAME: &'static str = "yb.wait_leader_blacklist_drained";
    type Input = BlacklistInput;
    type Output = String;
    async fn run(&self, ctx: Context, i: BlacklistInput) -> Result<String, activity::Error> {
        let shell = NodeShell::connect(&i.admin.ssh).await?;
        let line = i.admin.line(&["get_leader_blacklist_completion"]);
        let what = format!("leaders moved off {}", i.server);
        let result = poll(&ctx, &what, i.timeout_secs, i.poll_ms, || async {
            let out = shell.ok(&line).await?;
            match parse_load_move_completion(&out) {
                Some((p, 0, t)) => Ok(Poll::Ready(format!(
                    "leader blacklist {p:.1}% complete (0 of {t} leaders left)"
                ))),
                Some((p, r, t)) => Ok(Poll::Pending(format!(
                    "leader blacklist {p:.1}% complete ({r} of {t} leaders left on {})",
                    i.server
                ))),
                None => Err(Error::YbAdmin {
                    host: i.admin.ssh.addr(),
                    detail: format!(
                        "unexpected output of get_leader_blacklist_completion: {}",
                        first_line(&out, "")
                    ),
                }),
            }
        })
        .await;
        shell.close().await;
        result.map_err(Into::into)
    }
}

/// Input of [`ToolsCheck`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolsCheckInput {
    /// How to run `yb-admin`.
    pub admin: YbAdmin,
    /// Path of `yb-ts-cli` on the same node.
    pub yb_ts_cli: String,
    /// A tserver host to ask `is_server_ready` (the node's own), if it runs one.
    #[serde(default)]
    pub tserver_host: Option<String>,
}

/// One look (before any change): `yb-admin list_all_masters` and `yb-ts-cli is_server_ready`
/// answer with the inventory's settings (path, masters, certificates). A TLS cluster refuses
/// them without `-certs_dir_name`: better said before step 1 than in the middle of step 4.
/// Returns the problems (empty: fine).
pub struct ToolsCheck;

impl Activity for ToolsCheck {
    const NAME: &'static str = "yb.tools_check";
    type Input = ToolsCheckInput;
    type Output = Vec<String>;
    async fn run(&self, _ctx: Context, i: ToolsCheckInput) -> Result<Vec<String>, activity::Error> {
        let shell = NodeShell::connect(&i.admin.ssh).await?;
        let mut problems = Vec::new();
        let node = i.admin.ssh.addr();
        let line = i.admin.line(&["list_all_masters"]);
        match shell.exec(&line).await {
            Ok(out) if out.exit_status == 0 => {}
            Ok(out) => problems.push(format!(
                "yb-admin on {node}: `{line}` exited {}: {}",
                out.exit_status,
                first_line(&out.stderr, &out.stdout)
            )),
            Err(e) => {
                shell.close().await;
                return Err(e.into());
            }
        }
        if let Some(host) = &i.tserver_host {
            let line = yb_ts_cli_ready_line(&i.yb_ts_cli, i.admin.certs_dir.as_deref(), host);
            match shell.exec(&line).await {
                Ok(out) if out.exit_status == 0 => {}
                Ok(out) => problems.push(format!(
                    "yb-ts-cli on {node}: `{line}` exited {}: {}",
                    out.exit_status,
                    first_line(&out.stderr, &out.stdout)
                )),
                Err(e) => {
                    shell.close().await;
                    return Err(e.into());
                }
            }
        }
        shell.close().await;
        Ok(problems)
    }
}

pub(crate) use crate::wait::Poll;

pub(crate) async fn poll<T, F, Fut>(
    ctx: &Context,
    what: &str,
    timeout_secs: u64,
    poll_ms: u64,
    f: F,
) -> Result<T, Error>
where
    T: Send,
    F: FnMut() -> Fut + Send,
    Fut: std::future::Future<Output = Result<Poll<T>, Error>> + Send,
{
    // One deadline per wait, counted from when the step was first scheduled (journaled): an
    // attempt retried after a transient error, or resumed after a restart, waits only for what
    // is left of it, and a wait that reaches it is final (`Error::Timeout`, not retryable).
    // Transient errors (`wait::Transient`) are looked past within it.
    let deadline = Deadline::after_scheduling(ctx, Duration::from_secs(timeout_secs.max(1)));
    match ctx
        .poll_until(what, deadline, Duration::from_millis(poll_ms), f)
        .await
    {
        Ok(v) => Ok(v),
        Err(WaitError::Timeout(t)) => Err(Error::Timeout {
            what: t.what,
            waited: t.timeout,
            last: t.last,
        }),
        Err(WaitError::Failed(e)) => Err(e),
        Err(WaitError::Cancelled(what)) => Err(Error::Cancelled(what)),
    }
}

/// Registers the `YugabyteDB` activities.
pub fn register(b: EngineBuilder) -> EngineBuilder {
    b.activity(FindLeader)
        .activity(ListMasters)
        .activity(ListTServers)
        .activity(HealthCheck)
        .activity(WaitHealthy)
        .activity(WaitServerBack)
        .activity(WaitLoadBalancer)
        .activity(NodeGate)
        .activity(WaitNodeGate)
        .activity(WaitNewProcess)
        .activity(WaitServerReady)
        .activity(ChangeLeaderBlacklist)
        .activity(WaitLeaderBlacklistDrained)
        .activity(ToolsCheck)
}

/// Tserver hosts by zone, for plans.
pub fn by_zone(ts: &[TServer]) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in ts {
        m.entry(t.zone.clone()).or_default().push(t.host.clone());
    }
    m
}
