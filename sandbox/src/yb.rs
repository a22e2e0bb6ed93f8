//! The `YugabyteDB` cluster model: yb-master HTTP endpoints answering as `../shared/domain.md`
//! describes, and the `systemctl` / `yb-admin` commands the SSH hosts run against the model.
//!
//! A restarted server is DEAD for `restart_down_ms`, then ALIVE with a fresh uptime; a tserver
//! restart leaves tablets under-replicated for `under_replicated_ms` and the load balancer busy
//! for `load_balance_ms`; restarting the leader master moves leadership to another live master.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as AxPath, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;

use crate::estate::{FaultKind, Shared, Spec};

/// Tablets in the simulated cluster (replication factor 3).
const TABLETS: u32 = 12;
/// Placement uuid of the cluster's live placement.
pub const PLACEMENT: &str = "b8a3e5c1-5f0e-4b7b-9d55-2f7c9d3e0a11";

/// Which yb process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// yb-master.
    Master,
    /// yb-tserver.
    TServer,
}

impl Kind {
    /// The systemd unit name.
    pub fn unit(self) -> &'static str {
        match self {
            Kind::Master => "yb-master",
            Kind::TServer => "yb-tserver",
        }
    }
}

/// One yb process on one node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Server {
    /// Node name.
    pub node: String,
    /// Zone.
    pub zone: String,
    /// Master or tserver.
    pub kind: Kind,
    /// Permanent uuid.
    pub uuid: String,
    /// When its current process started (ms since epoch).
    pub started_at_ms: i64,
    /// DEAD (not heartbeating) until then.
    pub down_until_ms: i64,
    /// systemd's id of the unit's current run.
    pub invocation_id: String,
    /// Main PID.
    pub main_pid: u32,
    /// Restarts so far.
    pub restarts: u32,
    /// Stopped with `systemctl stop`.
    pub stopped: bool,
}

/// The cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    /// Every process.
    pub servers: Vec<Server>,
    /// Node of the leader master.
    pub leader: String,
    /// When the nodes booted (for monotonic timestamps).
    pub boot_ms: i64,
    /// Tablets under-replicated until then.
    pub under_replicated_until_ms: i64,
    /// Start and end of the current load-balancing period.
    pub balance_from_ms: i64,
    /// End of it.
    pub balance_until_ms: i64,
    /// Down time of a restart, ms.
    pub restart_down_ms: i64,
    /// Under-replication after a tserver restart, ms.
    pub under_replicated_ms: i64,
    /// Load balancing after a tserver restart, ms.
    pub load_balance_ms: i64,
    next_pid: u32,
}

fn uuid_for(node: &str, kind: Kind, n: u32) -> String {
    let mut h: u128 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes().chain([kind as u8, n as u8]) {
        h = (h ^ u128::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    uuid::Uuid::from_u128(h).simple().to_string()
}

impl State {
    /// The cluster of `spec`, every server up for an hour at `now`.
    pub fn from_spec(spec: &Spec, now: DateTime<Utc>) -> Self {
        let now_ms = now.timestamp_millis();
        let started = now_ms - 3_600_000;
        let mut servers = Vec::new();
        let mut pid = 1000;
        for n in &spec.nodes {
            let kinds: &[Kind] = if n.master {
                &[Kind::Master, Kind::TServer]
            } else {
                &[Kind::TServer]
            };
            for &kind in kinds {
                pid += 1;
                servers.push(Server {
                    node: n.name.clone(),
                    zone: n.zone.clone(),
                    kind,
                    uuid: uuid_for(&n.name, kind, 0),
                    started_at_ms: started,
                    down_until_ms: 0,
                    invocation_id: uuid_for(&n.name, kind, 100),
                    main_pid: pid,
                    restarts: 0,
                    stopped: false,
                });
            }
        }
        let leader = spec
            .nodes
            .iter()
            .rev()
            .find(|n| n.master)
            .map(|n| n.name.clone())
            .unwrap_or_default();
        State {
            servers,
            leader,
            boot_ms: started - 60_000,
            under_replicated_until_ms: 0,
            balance_from_ms: 0,
            balance_until_ms: 0,
            restart_down_ms: spec.restart_down_ms as i64,
            under_replicated_ms: spec.under_replicated_ms as i64,
            load_balance_ms: spec.load_balance_ms as i64,
            next_pid: pid + 1,
        }
    }

    fn server(&self, node: &str, kind: Kind) -> Option<&Server> {
        self.servers
            .iter()
            .find(|s| s.node == node && s.kind == kind)
    }

    /// Whether a server answers heartbeats at `now_ms`.
    pub fn is_alive(s: &Server, now_ms: i64) -> bool {
        !s.stopped && now_ms >= s.down_until_ms
    }

    /// (Re)starts a unit; returns false if the node has no such unit.
    pub fn restart(&mut self, node: &str, kind: Kind, now_ms: i64) -> bool {
        let pid = self.next_pid;
        let down = self.restart_down_ms;
        let Some(s) = self
            .servers
            .iter_mut()
            .find(|s| s.node == node && s.kind == kind)
        else {
            return false;
        };
        s.restarts += 1;
        s.started_at_ms = now_ms;
        s.down_until_ms = now_ms + down;
        s.invocation_id = uuid_for(node, kind, 100 + s.restarts);
        s.main_pid = pid;
        s.stopped = false;
        self.next_pid += 1;
        match kind {
            Kind::TServer => {
                self.under_replicated_until_ms = now_ms + down + self.under_replicated_ms;
                self.balance_from_ms = now_ms;
                self.balance_until_ms = now_ms + down + self.load_balance_ms;
            }
            Kind::Master if self.leader == node => {
                let next = self
                    .servers
                    .iter()
                    .filter(|m| {
                        m.kind == Kind::Master && m.node != node && Self::is_alive(m, now_ms)
                    })
                    .map(|m| m.node.clone())
                    .next();
                if let Some(n) = next {
                    self.leader = n;
                }
            }
            Kind::Master => {}
        }
        true
    }

    /// Stops a unit.
    pub fn stop(&mut self, node: &str, kind: Kind) -> bool {
        match self
            .servers
            .iter_mut()
            .find(|s| s.node == node && s.kind == kind)
        {
            Some(s) => {
                s.stopped = true;
                true
            }
            None => false,
        }
    }

    fn under_replicated(&self, now_ms: i64) -> Vec<String> {
        if now_ms >= self.under_replicated_until_ms {
            return Vec::new();
        }
        let left = (self.under_replicated_until_ms - now_ms) as f64
            / self.under_replicated_ms.max(1) as f64;
        let n = ((left.min(1.0) * f64::from(TABLETS)).ceil() as u32).clamp(1, TABLETS);
        (0..n).map(|i| format!("{:032x}", 0xab00 + i)).collect()
    }

    /// Load-balancer moves: (percent complete, remaining, total).
    pub fn load_moves(&self, now_ms: i64) -> (f64, u32, u32) {
        let total = TABLETS;
        if now_ms >= self.balance_until_ms || self.balance_until_ms <= self.balance_from_ms {
            return (100.0, 0, total);
        }
        let done = (now_ms - self.balance_from_ms) as f64
            / (self.balance_until_ms - self.balance_from_ms) as f64;
        let remaining = ((1.0 - done) * f64::from(total)).ceil() as u32;
        (
            100.0 * f64::from(total - remaining) / f64::from(total),
            remaining,
            total,
        )
    }

    fn tablet_servers_json(&self, now_ms: i64) -> serde_json::Value {
        let mut by_host = serde_json::Map::new();
        let live = self
            .servers
            .iter()
            .filter(|s| s.kind == Kind::TServer && Self::is_alive(s, now_ms))
            .count()
            .max(1) as u32;
        for s in self.servers.iter().filter(|s| s.kind == Kind::TServer) {
            let alive = Self::is_alive(s, now_ms);
            let hb = if alive {
                0.4
            } else {
                ((now_ms - s.started_at_ms).max(0) as f64 / 1000.0) + 3.0
            };
            by_host.insert(
                format!("{}:9000", s.node),
                json!({
                    "status": if alive { "ALIVE" } else { "DEAD" },
                    "time_since_hb_sec": hb,
                    "uptime_seconds": if alive { (now_ms - s.started_at_ms) / 1000 } else { 0 },
                    "user_tablets_total": if alive { TABLETS * 3 / live } else { 0 },
                    "user_tablets_leaders": if alive { TABLETS / live } else { 0 },
                    "permanent_uuid": s.uuid,
                    "cloud": "aws",
                    "region": "us-east-1",
                    "zone": format!("us-east-1{}", s.zone.to_lowercase()),
                }),
            );
        }
        json!({ PLACEMENT: by_host })
    }

    fn health_json(&self, now_ms: i64) -> serde_json::Value {
        let tservers: Vec<&Server> = self
            .servers
            .iter()
            .filter(|s| s.kind == Kind::TServer)
            .collect();
        let dead: Vec<&str> = tservers
            .iter()
            .filter(|s| !Self::is_alive(s, now_ms))
            .map(|s| s.uuid.as_str())
            .collect();
        let most_recent_uptime = tservers
            .iter()
            .filter(|s| Self::is_alive(s, now_ms))
            .map(|s| (now_ms - s.started_at_ms) / 1000)
            .min()
            .unwrap_or(0);
        json!({
            "dead_nodes": dead,
            "most_recent_uptime": most_recent_uptime,
            "under_replicated_tablets": self.under_replicated(now_ms),
        })
    }

    fn masters_json(&self, now_ms: i64) -> serde_json::Value {
        let masters: Vec<serde_json::Value> = self
            .servers
            .iter()
            .filter(|s| s.kind == Kind::Master)
            .map(|m| {
                json!({
                    "instance_id": { "permanent_uuid": m.uuid, "instance_seqno": m.started_at_ms },
                    "registration": {
                        "private_rpc_addresses": [{ "host": m.node, "port": 7100 }],
                        "http_addresses": [{ "host": m.node, "port": 7000 }],
                        "cloud_info": { "placement_cloud": "aws", "placement_region": "us-east-1",
                                        "placement_zone": format!("us-east-1{}", m.zone.to_lowercase()) },
                    },
                    "role": if !Self::is_alive(m, now_ms) { "UNKNOWN_ROLE" } else if m.node == self.leader { "LEADER" } else { "FOLLOWER" },
                })
            })
            .collect();
        json!({ "masters": masters })
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// What a command run over SSH printed and returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit status.
    pub exit: u32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl ExecOutput {
    fn ok(stdout: impl Into<String>) -> Self {
        ExecOutput {
            exit: 0,
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }
    fn fail(exit: u32, stderr: impl Into<String>) -> Self {
        ExecOutput {
            exit,
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }
}

fn unit_kind(unit: &str) -> Option<Kind> {
    match unit.trim_end_matches(".service") {
        "yb-master" => Some(Kind::Master),
        "yb-tserver" => Some(Kind::TServer),
        _ => None,
    }
}

/// Runs a command line on `node` the way its shell would: `systemctl restart|start|stop|show|
/// is-active UNIT` (optionally behind `sudo`) for `yb-master` / `yb-tserver`, and `yb-admin ...
/// get_is_load_balancer_idle | get_load_move_completion`. Mutations are recorded as effects.
/// Injected faults are applied by the caller (the SSH host), once per command.
pub fn exec(shared: &Shared, node: &str, command: &str) -> ExecOutput {
    let words: Vec<&str> = command.split_whitespace().collect();
    let words: &[&str] = match words.first() {
        Some(&"sudo") => &words[1..],
        _ => &words,
    };
    let program = words.first().map(|p| p.rsplit('/').next().unwrap_or(p));
    match program {
        Some("systemctl") => systemctl(shared, node, &words[1..]),
        Some("yb-admin") => yb_admin(shared, &words[1..]),
        Some(other) => ExecOutput::fail(127, format!("bash: line 1: {other}: command not found\n")),
        None => ExecOutput::ok(""),
    }
}

fn systemctl(shared: &Shared, node: &str, args: &[&str]) -> ExecOutput {
    let mut props: Vec<String> = Vec::new();
    let mut rest = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i];
        if a == "-p" || a == "--property" {
            if let Some(p) = args.get(i + 1) {
                props.extend(p.split(',').map(str::to_owned));
            }
            i += 2;
            continue;
        }
        if let Some(p) = a.strip_prefix("--property=") {
            props.extend(p.split(',').map(str::to_owned));
        } else if !a.starts_with('-') {
            rest.push(a);
        }
        i += 1;
    }
    let (Some(verb), Some(unit)) = (rest.first(), rest.get(1)) else {
        return ExecOutput::fail(1, "systemctl: expected a verb and a unit\n");
    };
    let unit_name = if unit.ends_with(".service") {
        (*unit).to_owned()
    } else {
        format!("{unit}.service")
    };
    let Some(kind) = unit_kind(unit) else {
        // As systemd answers for a unit it does not know.
        return match *verb {
            "show" => ExecOutput::ok("InvocationID=\nActiveState=inactive\nLoadState=not-found\n"),
            "is-active" => ExecOutput {
                exit: 4,
                stdout: "inactive\n".into(),
                stderr: String::new(),
            },
            _ => ExecOutput::fail(
                5,
                format!("Failed to {verb} {unit_name}: Unit {unit_name} not found.\n"),
            ),
        };
    };
    let now = now_ms();
    match *verb {
        "restart" | "start" | "stop" => {
            let done = shared.mutate(|st| match *verb {
                "stop" => st.yb.stop(node, kind),
                "start" if st.yb.server(node, kind).is_some_and(|s| !s.stopped) => true,
                _ => st.yb.restart(node, kind, now),
            });
            if !done {
                return ExecOutput::fail(
                    5,
                    format!("Failed to {verb} {unit_name}: Unit {unit_name} not found.\n"),
                );
            }
            shared.record_effect(
                "ssh",
                &format!("{node}/{}", kind.unit()),
                verb,
                json!({ "command": format!("systemctl {verb} {unit}") }),
            );
            ExecOutput::ok("")
        }
        "is-active" => shared.read(|st| match st.yb.server(node, kind) {
            Some(s) if !s.stopped => ExecOutput::ok("active\n"),
            Some(_) => ExecOutput {
                exit: 3,
                stdout: "inactive\n".into(),
                stderr: String::new(),
            },
            None => ExecOutput {
                exit: 4,
                stdout: "inactive\n".into(),
                stderr: String::new(),
            },
        }),
        "show" => shared.read(|st| {
            let Some(s) = st.yb.server(node, kind) else {
                return ExecOutput::ok(
                    "InvocationID=\nActiveState=inactive\nLoadState=not-found\n",
                );
            };
            let all: BTreeMap<&str, String> = [
                ("Id", unit_name.clone()),
                (
                    "InvocationID",
                    if s.stopped {
                        String::new()
                    } else {
                        s.invocation_id.clone()
                    },
                ),
                (
                    "MainPID",
                    if s.stopped {
                        "0".into()
                    } else {
                        s.main_pid.to_string()
                    },
                ),
                (
                    "ActiveState",
                    if s.stopped {
                        "inactive".into()
                    } else {
                        "active".into()
                    },
                ),
                (
                    "SubState",
                    if s.stopped {
                        "dead".into()
                    } else {
                        "running".into()
                    },
                ),
                ("LoadState", "loaded".into()),
                (
                    "ActiveEnterTimestampMonotonic",
                    ((s.started_at_ms - st.yb.boot_ms).max(0) * 1000).to_string(),
                ),
                (
                    "ActiveEnterTimestamp",
                    DateTime::from_timestamp_millis(s.started_at_ms)
                        .map(|t| t.format("%a %Y-%m-%d %H:%M:%S UTC").to_string())
                        .unwrap_or_default(),
                ),
            ]
            .into_iter()
            .collect();
            let keys: Vec<String> = if props.is_empty() {
                all.keys().map(|k| (*k).to_owned()).collect()
            } else {
                props.clone()
            };
            let mut out = String::new();
            for k in keys {
                if let Some(v) = all.get(k.as_str()) {
                    out.push_str(&format!("{k}={v}\n"));
                }
            }
            ExecOutput::ok(out)
        }),
        other => ExecOutput::fail(1, format!("Unknown command verb {other}.\n")),
    }
}

fn yb_admin(shared: &Shared, args: &[&str]) -> ExecOutput {
    let now = now_ms();
    let Some(cmd) = args
        .iter()
        .find(|a| !a.starts_with('-') && !a.contains(':') && !a.contains(','))
    else {
        return ExecOutput::fail(1, "yb-admin: no command given\n");
    };
    match *cmd {
        "get_is_load_balancer_idle" => shared.read(|st| {
            let (_, remaining, _) = st.yb.load_moves(now);
            ExecOutput::ok(format!("Idle = {}\n", u8::from(remaining == 0)))
        }),
        "get_load_move_completion" => shared.read(|st| {
            let (pct, remaining, total) = st.yb.load_moves(now);
            ExecOutput::ok(format!(
                "Percent complete = {pct:.2} : {remaining} remaining out of {total}\n"
            ))
        }),
        other => ExecOutput::fail(1, format!("Invalid operation {other}\n")),
    }
}

#[derive(Clone)]
struct MasterCtx {
    shared: Arc<Shared>,
    node: String,
}

async fn api(AxState(m): AxState<MasterCtx>, AxPath(endpoint): AxPath<String>) -> Response {
    match m
        .shared
        .fault_for("yb", &format!("{} GET /api/v1/{endpoint}", m.node))
    {
        Some(FaultKind::Status(code)) => {
            return (
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "injected fault",
            )
                .into_response();
        }
        Some(FaultKind::Delay(ms)) => tokio::time::sleep(Duration::from_millis(ms)).await,
        _ => {}
    }
    let now = now_ms();
    m.shared.read(|st| {
        let yb = &st.yb;
        let me = yb.server(&m.node, Kind::Master);
        if me.is_none_or(|s| !State::is_alive(s, now)) {
            return (StatusCode::SERVICE_UNAVAILABLE, "yb-master is starting").into_response();
        }
        let leader = yb.leader == m.node;
        match endpoint.as_str() {
            "is-leader" if leader => Json(json!({"STATUS": "OK"})).into_response(),
            "is-leader" => (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"STATUS": "NOT LEADER"})),
            )
                .into_response(),
            "masters" => Json(yb.masters_json(now)).into_response(),
            "tablet-servers" => Json(yb.tablet_servers_json(now)).into_response(),
            "health-check" => Json(yb.health_json(now)).into_response(),
            "tablet-under-replication" => Json(json!({
                "underreplicated_tablets": yb.under_replicated(now).into_iter().map(|t| json!({
                    "table_uuid": "000033e8000030008000000000004000",
                    "tablet_uuid": t,
                    "underreplicated_placements": [PLACEMENT],
                })).collect::<Vec<_>>()
            }))
            .into_response(),
            "tablet-replication" => Json(json!({ "leaderless_tablets": [] })).into_response(),
            _ => (StatusCode::NOT_FOUND, "unknown endpoint").into_response(),
        }
    })
}

/// Serves the yb-master web API of master `node`.
pub async fn serve_master(listener: TcpListener, shared: Arc<Shared>, node: String) {
    let app = axum::Router::new()
        .route("/api/v1/{endpoint}", get(api))
        .with_state(MasterCtx { shared, node });
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("sandbox yb-master server stopped: {e}");
    }
}
