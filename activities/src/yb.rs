//! `YugabyteDB` activities over the yb-master HTTP API (and `yb-admin` over SSH where HTTP has no
//! confirmed answer): find the leader master, list tservers, the cluster health gate, wait for one
//! restarted server to be back, wait for the load balancer to finish.

use std::collections::BTreeMap;
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
    /// A wait ran out of time.
    #[error("YugabyteDB: {what} not reached after {waited:?}: {last}")]
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
}

impl From<Error> for activity::Error {
    fn from(e: Error) -> Self {
        let retryable = !matches!(e, Error::Unknown(_) | Error::Cancelled(_));
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
}

/// Waits until the load balancer is idle (`yb-admin get_is_load_balancer_idle`), heartbeating
/// the percentage of load moves done (`get_load_move_completion`).
pub struct WaitLoadBalancer;

impl Activity for WaitLoadBalancer {
    const NAME: &'static str = "yb.wait_load_balancer";
    type Input = LoadBalancerInput;
    type Output = String;
    async fn run(&self, ctx: Context, i: LoadBalancerInput) -> Result<String, activity::Error> {
        let host = format!("{}:{}", i.ssh.host, i.ssh.port);
        let admin = |cmd: &str| yb_admin_command(&i.yb_admin, &i.master_rpc, cmd);
        let run = |cmd: String| {
            let target = i.ssh.clone();
            let host = host.clone();
            async move {
                let out = ssh::run(&target, &cmd).await.map_err(|e| Error::YbAdmin {
                    host: host.clone(),
                    detail: e.to_string(),
                })?;
                if out.exit_status != 0 {
                    return Err(Error::YbAdmin {
                        host,
                        detail: format!(
                            "`{cmd}` exited {}: {}",
                            out.exit_status,
                            out.stderr.trim()
                        ),
                    });
                }
                Ok(out.stdout)
            }
        };
        poll(
            &ctx,
            "load balancer idle",
            i.timeout_secs,
            i.poll_ms,
            || async {
                let progress = run(admin("get_load_move_completion")).await?;
                let pct = parse_load_move_completion(&progress);
                let idle_out = run(admin("get_is_load_balancer_idle")).await?;
                let idle = parse_is_idle(&idle_out).ok_or_else(|| Error::YbAdmin {
                    host: host.clone(),
                    detail: format!("unexpected output of get_is_load_balancer_idle: {idle_out:?}"),
                })?;
                let line = match pct {
                    Some((p, r, t)) => {
                        format!("load balancer {p:.1}% done ({r} of {t} moves remaining)")
                    }
                    None => "load balancer progress unknown".to_owned(),
                };
                Ok(if idle {
                    Poll::Ready(format!("load balancer idle; {line}"))
                } else {
                    Poll::Pending(line)
                })
            },
        )
        .await
        .map_err(Into::into)
    }
}

/// The `yb-admin` command line run on a node's login shell: `YB_ADMIN -master_addresses
/// M1,M2 SUBCOMMAND`, every value shell-quoted ([`ssh::shell_quote`]), so a path or an address
/// holding shell syntax stays one literal word.
pub fn yb_admin_command(yb_admin: &str, master_rpc: &[String], subcommand: &str) -> String {
    format!(
        "{} -master_addresses {} {}",
        ssh::shell_quote(yb_admin),
        ssh::shell_quote(&master_rpc.join(",")),
        ssh::shell_quote(subcommand)
    )
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

pub(crate) enum Poll<T> {
    Ready(T),
    Pending(String),
}

pub(crate) async fn poll<T, F, Fut>(
    ctx: &Context,
    what: &str,
    timeout_secs: u64,
    poll_ms: u64,
    mut f: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Poll<T>, Error>>,
{
    let limit = Duration::from_secs(timeout_secs.max(1));
    let start = tokio::time::Instant::now();
    loop {
        match f().await? {
            Poll::Ready(v) => return Ok(v),
            Poll::Pending(last) => {
                if start.elapsed() >= limit {
                    return Err(Error::Timeout {
                        what: what.to_owned(),
                        waited: start.elapsed(),
                        last,
                    });
                }
                ctx.heartbeat(Some(last));
                if !ctx.sleep(Duration::from_millis(poll_ms.max(10))).await {
                    return Err(Error::Cancelled(what.to_owned()));
                }
            }
        }
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
}

/// Tserver hosts by zone, for plans.
pub fn by_zone(ts: &[TServer]) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in ts {
        m.entry(t.zone.clone()).or_default().push(t.host.clone());
    }
    m
}
