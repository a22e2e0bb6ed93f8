//! The `YugabyteDB` cluster model: yb-master HTTP endpoints answering as `../shared/domain.md`
//! describes, and the `systemctl` / `yb-admin` / `yb-ts-cli` commands the SSH hosts run against
//! the model.
//!
//! Timing (every duration is the spec's [`Timing`], multiplied by the time scale):
//! - A stop (`systemctl stop`, or the stop half of `restart`) takes the graceful-stop time
//!   (`ActiveState` `deactivating`); the unit's command blocks for it unless `--no-block`.
//!   Heartbeats stop when the stop begins.
//! - A new process heartbeats `startup_ms` after it starts; a tserver then bootstraps its tablets
//!   one after the other (`bootstrap_ms_per_tablet` each, times the node's slow-bootstrap factor);
//!   its followers lag for `follower_lag_ms` after the last one runs.
//! - The leader master keeps a stopped tserver ALIVE, with its old uptime and a growing
//!   `time_since_hb_sec`, until `tserver_unresponsive_ms` without a heartbeat: only then DEAD.
//! - Tablets led by a stopped server are leaderless for `election_ms`, then led by another RUNNING
//!   replica; the master group likewise elects a new leader when its leader stops.
//! - The load balancer moves one leader every `load_balancer_move_ms`: off blacklisted servers,
//!   then back onto returned servers until the leaders are balanced; idle only then.
//!
//! Views: `/api/v1/tablet-under-replication` counts RUNNING replicas (it sees a bootstrapping
//! server); `/api/v1/health-check` counts replicas on DEAD servers (locations), as the real
//! master does. Ground truth (what the invariant monitor counts): a tserver serves once all its
//! tablets run; a master once it heartbeats again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path as AxPath, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;

use crate::conn::Conn;
use crate::estate::{FaultKind, Shared, Spec, Timing};

/// Tablets in the simulated cluster.
const TABLETS: usize = 12;
/// Replication factor.
const RF: usize = 3;
/// Placement uuid of the cluster's live placement.
pub const PLACEMENT: &str = "b8a3e5c1-5f0e-4b7b-9d55-2f7c9d3e0a11";
/// Placement uuid of the read-replica placement (scenario knob).
pub const READ_REPLICA_PLACEMENT: &str = "5e1f0c7a-2b3d-4e6f-8a9b-0c1d2e3f4a5b";
/// The table every tablet belongs to.
const TABLE: &str = "000033e8000030008000000000004000";

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

/// Where a server's process is at a moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Graceful stop in progress (`deactivating`).
    Stopping,
    /// Unit inactive.
    Stopped,
    /// Process started, not heartbeating yet.
    Starting,
    /// Heartbeating, tablets not all running (tservers only).
    Bootstrapping,
    /// Serving.
    Serving,
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
    /// Placement uuid (read replicas have their own).
    #[serde(default = "default_placement")]
    pub placement: String,
    /// When its current process started (ms since epoch; in the future while the stop of a
    /// restart is in progress).
    pub started_at_ms: i64,
    /// When its latest stop began (heartbeats stopped then); 0: never stopped.
    #[serde(default)]
    pub stop_began_ms: i64,
    /// When its latest graceful stop ends.
    #[serde(default)]
    pub stop_until_ms: i64,
    /// Start of the process that was stopped last (the master keeps reporting its uptime).
    #[serde(default)]
    pub prev_started_at_ms: i64,
    /// systemd's id of the unit's current run.
    pub invocation_id: String,
    /// The id of the run being stopped (shown while `deactivating`).
    #[serde(default)]
    pub prev_invocation_id: String,
    /// Main PID.
    pub main_pid: u32,
    /// Main PID of the run being stopped.
    #[serde(default)]
    pub prev_pid: u32,
    /// Restarts so far.
    pub restarts: u32,
    /// Stopped with `systemctl stop` (inactive once the stop ends).
    pub stopped: bool,
    /// Bootstrap takes this many times longer (scenario knob: a node slow to bootstrap).
    #[serde(default = "one")]
    pub bootstrap_factor: f64,
}

fn default_placement() -> String {
    PLACEMENT.into()
}

fn one() -> f64 {
    1.0
}

/// One tablet.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Tablet {
    /// Tablet uuid.
    pub id: String,
    /// Nodes holding a replica.
    pub replicas: Vec<String>,
    /// Node of its leader; `None` while leaderless.
    pub leader: Option<String>,
    /// Since when it is leaderless.
    pub leaderless_since_ms: i64,
}

/// The cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    /// Every process.
    pub servers: Vec<Server>,
    /// Node of the leader master (empty while the masters elect one).
    pub leader: String,
    /// Since when the master group has no leader.
    #[serde(default)]
    pub leaderless_since_ms: i64,
    /// When the nodes booted (for monotonic timestamps).
    pub boot_ms: i64,
    /// Tablets.
    #[serde(default)]
    pub tablets: Vec<Tablet>,
    /// Leader blacklist (node names).
    #[serde(default)]
    pub blacklist: BTreeSet<String>,
    /// Leaders on blacklisted servers when the blacklist last changed.
    #[serde(default)]
    pub blacklist_total: u32,
    /// When the load balancer may make its next move.
    #[serde(default)]
    pub lb_next_move_ms: i64,
    /// Moves made since the load balancer was last idle.
    #[serde(default)]
    pub lb_moves_done: u32,
    /// The cluster uses TLS: clients need `-certs_dir_name` (scenario knob).
    #[serde(default)]
    pub tls_certs_dir: Option<String>,
    /// Nodes where the TLS certificates directory is missing (scenario knob): a yb tool run
    /// there with `-certs_dir_name` cannot read its CA certificate.
    #[serde(default)]
    pub certs_missing_on: BTreeSet<String>,
    /// The durations in effect (already scaled).
    #[serde(default)]
    pub timing: Timing,
    next_pid: u32,
}

fn uuid_for(node: &str, kind: Kind, n: u32) -> String {
    let mut h: u128 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes().chain([kind as u8, n as u8, (n >> 8) as u8]) {
        h = (h ^ u128::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    uuid::Uuid::from_u128(h).simple().to_string()
}

impl Server {
    fn new(node: &str, zone: &str, kind: Kind, started: i64, pid: u32) -> Self {
        Server {
            node: node.into(),
            zone: zone.into(),
            kind,
            uuid: uuid_for(node, kind, 0),
            placement: PLACEMENT.into(),
            started_at_ms: started,
            stop_began_ms: 0,
            stop_until_ms: 0,
            prev_started_at_ms: started,
            invocation_id: uuid_for(node, kind, 100),
            prev_invocation_id: String::new(),
            main_pid: pid,
            prev_pid: 0,
            restarts: 0,
            stopped: false,
            bootstrap_factor: 1.0,
        }
    }

    /// When the current process heartbeats first.
    fn registered_at(&self, t: &Timing) -> i64 {
        self.started_at_ms + t.startup_ms
    }

    fn bootstrap_ms(&self, t: &Timing) -> i64 {
        (t.bootstrap_ms_per_tablet as f64 * self.bootstrap_factor) as i64
    }

    /// Where the process is at `now`.
    pub fn phase(&self, now: i64, t: &Timing, tablets: usize) -> Phase {
        if now < self.stop_until_ms {
            return Phase::Stopping;
        }
        if self.stopped {
            return Phase::Stopped;
        }
        if now < self.registered_at(t) {
            return Phase::Starting;
        }
        if self.kind == Kind::TServer && self.running_tablets(now, t, tablets) < tablets {
            return Phase::Bootstrapping;
        }
        Phase::Serving
    }

    /// Whether the process heartbeats at `now`.
    pub fn heartbeating(&self, now: i64, t: &Timing) -> bool {
        now >= self.stop_until_ms && !self.stopped && now >= self.registered_at(t)
    }

    /// Whether the process runs (answers RPCs) at `now`.
    pub fn process_running(&self, now: i64) -> bool {
        now >= self.stop_until_ms && !self.stopped && now >= self.started_at_ms
    }

    /// How many of its `tablets` run at `now` (they bootstrap in order).
    pub fn running_tablets(&self, now: i64, t: &Timing, tablets: usize) -> usize {
        if !self.heartbeating(now, t) {
            return 0;
        }
        let since = now - self.registered_at(t);
        let per = self.bootstrap_ms(t).max(1);
        ((since / per).max(0) as usize).min(tablets)
    }

    /// When the master last heard from it.
    fn last_heartbeat(&self, now: i64, t: &Timing) -> i64 {
        if self.heartbeating(now, t) {
            now - (now - self.registered_at(t)) % t.heartbeat_ms.max(1)
        } else {
            self.stop_began_ms
        }
    }

    /// ALIVE as the leader master reports it (a heartbeat within the unresponsive timeout).
    pub fn reported_alive(&self, now: i64, t: &Timing) -> bool {
        now - self.last_heartbeat(now, t) <= t.tserver_unresponsive_ms
    }

    /// The uptime the master reports: of the process it last heard from.
    fn reported_uptime_s(&self, now: i64, t: &Timing) -> i64 {
        if self.heartbeating(now, t) {
            (now - self.started_at_ms) / 1000
        } else {
            (self.stop_began_ms - self.prev_started_at_ms).max(0) / 1000
        }
    }

    /// Remaining follower lag, ms.
    pub fn follower_lag_ms(&self, now: i64, t: &Timing, tablets: usize) -> i64 {
        if !self.heartbeating(now, t) || self.restarts == 0 {
            return 0;
        }
        let ready = self.registered_at(t) + self.bootstrap_ms(t) * tablets as i64;
        if now < ready {
            return t.follower_lag_ms;
        }
        (ready + t.follower_lag_ms - now).max(0)
    }

    fn begin_stop(&mut self, now: i64, stop_ms: i64) {
        if now < self.stop_until_ms {
            return; // a stop is already in progress
        }
        if !self.stopped {
            self.stop_began_ms = now;
            self.prev_started_at_ms = self.started_at_ms;
            self.prev_invocation_id = self.invocation_id.clone();
            self.prev_pid = self.main_pid;
            self.stop_until_ms = now + stop_ms;
        }
    }
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
                servers.push(Server::new(&n.name, &n.zone, kind, started, pid));
            }
        }
        let leader = spec
            .nodes
            .iter()
            .rev()
            .find(|n| n.master)
            .map(|n| n.name.clone())
            .unwrap_or_default();
        let nodes: Vec<&str> = spec.nodes.iter().map(|n| n.name.as_str()).collect();
        let tablets = (0..TABLETS)
            .map(|i| {
                let replicas: Vec<String> = if nodes.is_empty() {
                    Vec::new()
                } else {
                    (0..RF.min(nodes.len()))
                        .map(|k| nodes[(i + k) % nodes.len()].to_owned())
                        .collect()
                };
                Tablet {
                    id: format!("{:032x}", 0xab00 + i),
                    leader: replicas.first().cloned(),
                    replicas,
                    leaderless_since_ms: 0,
                }
            })
            .collect();
        State {
            servers,
            leader,
            leaderless_since_ms: 0,
            boot_ms: started - 60_000,
            tablets,
            blacklist: BTreeSet::new(),
            blacklist_total: 0,
            lb_next_move_ms: 0,
            lb_moves_done: 0,
            tls_certs_dir: None,
            certs_missing_on: BTreeSet::new(),
            timing: spec.scaled(),
            next_pid: pid + 1,
        }
    }

    /// The server of `kind` on `node`.
    pub fn server(&self, node: &str, kind: Kind) -> Option<&Server> {
        self.servers
            .iter()
            .find(|s| s.node == node && s.kind == kind)
    }

    fn server_mut(&mut self, node: &str, kind: Kind) -> Option<&mut Server> {
        self.servers
            .iter_mut()
            .find(|s| s.node == node && s.kind == kind)
    }

    /// Number of tablet replicas `node` holds.
    pub fn replicas_on(&self, node: &str) -> usize {
        self.tablets
            .iter()
            .filter(|t| t.replicas.iter().any(|r| r == node))
            .count()
    }

    /// Where a server is at `now`.
    pub fn phase(&self, s: &Server, now: i64) -> Phase {
        s.phase(now, &self.timing, self.replicas_on(&s.node))
    }

    /// Whether the replica of tablet `t` on `node` runs at `now`.
    fn replica_running(&self, tablet: &Tablet, node: &str, now: i64) -> bool {
        let Some(s) = self.server(node, Kind::TServer) else {
            return false;
        };
        let mine: Vec<&str> = self
            .tablets
            .iter()
            .filter(|t| t.replicas.iter().any(|r| r == node))
            .map(|t| t.id.as_str())
            .collect();
        let Some(k) = mine.iter().position(|id| *id == tablet.id) else {
            return false;
        };
        k < s.running_tablets(now, &self.timing, mine.len())
    }

    /// Ground truth: primary-placement tservers not serving at `now`.
    pub fn tservers_down(&self, now: i64) -> Vec<String> {
        self.servers
            .iter()
            .filter(|s| s.kind == Kind::TServer && s.placement == PLACEMENT)
            .filter(|s| self.phase(s, now) != Phase::Serving)
            .map(|s| s.node.clone())
            .collect()
    }

    /// Ground truth: masters not serving at `now`.
    pub fn masters_down(&self, now: i64) -> Vec<String> {
        self.servers
            .iter()
            .filter(|s| s.kind == Kind::Master)
            .filter(|s| !s.heartbeating(now, &self.timing))
            .map(|s| s.node.clone())
            .collect()
    }

    /// Moves the model to `now`: leaders lost and elected, load-balancer moves.
    pub fn advance(&mut self, now: i64) {
        let t = self.timing;
        // The master group.
        if !self.leader.is_empty() {
            let lost = self
                .server(&self.leader, Kind::Master)
                .is_none_or(|m| !m.heartbeating(now, &t));
            if lost {
                let since = self
                    .server(&self.leader, Kind::Master)
                    .map_or(now, |m| m.stop_began_ms.min(now));
                self.leader.clear();
                self.leaderless_since_ms = since;
            }
        }
        if self.leader.is_empty() && now >= self.leaderless_since_ms + t.election_ms {
            if let Some(m) = self
                .servers
                .iter()
                .find(|m| m.kind == Kind::Master && m.heartbeating(now, &t))
            {
                self.leader = m.node.clone();
            }
        }
        // Tablet leaders.
        for i in 0..self.tablets.len() {
            if let Some(l) = self.tablets[i].leader.clone() {
                let s = self.server(&l, Kind::TServer);
                if s.is_none_or(|s| !s.heartbeating(now, &t)) {
                    let since = s.map_or(now, |s| s.stop_began_ms.min(now));
                    self.tablets[i].leader = None;
                    self.tablets[i].leaderless_since_ms = since;
                }
            }
        }
        for i in 0..self.tablets.len() {
            if self.tablets[i].leader.is_none()
                && now >= self.tablets[i].leaderless_since_ms + t.election_ms
            {
                let tablet = self.tablets[i].clone();
                let counts = self.leader_counts();
                let mut candidates: Vec<&String> = tablet
                    .replicas
                    .iter()
                    .filter(|r| self.replica_running(&tablet, r, now))
                    .collect();
                candidates.sort_by_key(|r| {
                    (
                        self.blacklist.contains(*r),
                        counts.get(r.as_str()).copied().unwrap_or(0),
                    )
                });
                if let Some(c) = candidates.first() {
                    self.tablets[i].leader = Some((*c).clone());
                }
            }
        }
        // The load balancer.
        let mut guard = 0;
        while guard < 1000 {
            guard += 1;
            let Some((i, to)) = self.next_move(now) else {
                self.lb_moves_done = 0;
                self.lb_next_move_ms = now + t.load_balancer_move_ms;
                break;
            };
            if now < self.lb_next_move_ms {
                break;
            }
            self.tablets[i].leader = Some(to);
            self.lb_moves_done += 1;
            self.lb_next_move_ms += t.load_balancer_move_ms;
            if self.lb_next_move_ms < now - 10 * t.load_balancer_move_ms {
                self.lb_next_move_ms = now;
            }
        }
    }

    fn leader_counts(&self) -> BTreeMap<&str, u32> {
        let mut m = BTreeMap::new();
        for t in &self.tablets {
            if let Some(l) = &t.leader {
                *m.entry(l.as_str()).or_insert(0) += 1;
            }
        }
        m
    }

    /// A server the load balancer may put leaders on.
    fn eligible(&self, node: &str, now: i64) -> bool {
        !self.blacklist.contains(node)
            && self
                .server(node, Kind::TServer)
                .is_some_and(|s| self.phase(s, now) == Phase::Serving)
    }

    /// The load balancer's next leader move: a leader off a blacklisted server, else one from the
    /// most to the least loaded eligible server (difference of two or more).
    fn next_move(&self, now: i64) -> Option<(usize, String)> {
        let counts = self.leader_counts();
        let count = |n: &str| counts.get(n).copied().unwrap_or(0);
        for (i, t) in self.tablets.iter().enumerate() {
            let Some(l) = &t.leader else { continue };
            if self.blacklist.contains(l) {
                if let Some(to) = t
                    .replicas
                    .iter()
                    .filter(|r| self.eligible(r, now) && self.replica_running(t, r, now))
                    .min_by_key(|r| count(r))
                {
                    return Some((i, to.clone()));
                }
            }
        }
        let mut best: Option<(u32, usize, String)> = None;
        for (i, t) in self.tablets.iter().enumerate() {
            let Some(l) = &t.leader else { continue };
            if !self.eligible(l, now) {
                continue;
            }
            for r in &t.replicas {
                if r != l
                    && self.eligible(r, now)
                    && self.replica_running(t, r, now)
                    && count(l) >= count(r) + 2
                {
                    let gain = count(l) - count(r);
                    if best.as_ref().is_none_or(|(g, _, _)| gain > *g) {
                        best = Some((gain, i, r.clone()));
                    }
                }
            }
        }
        best.map(|(_, i, r)| (i, r))
    }

    /// Leader moves the load balancer still has to make at `now` (simulated to the end).
    pub fn pending_moves(&self, now: i64) -> u32 {
        let mut sim = self.clone();
        let mut n = 0;
        while let Some((i, to)) = sim.next_move(now) {
            sim.tablets[i].leader = Some(to);
            n += 1;
            if n > 1000 {
                break;
            }
        }
        n
    }

    /// Tablets without a leader.
    pub fn leaderless(&self) -> Vec<&Tablet> {
        self.tablets.iter().filter(|t| t.leader.is_none()).collect()
    }

    /// Load-balancer moves: (percent complete, remaining, total).
    pub fn load_moves(&self, now: i64) -> (f64, u32, u32) {
        let remaining = self.pending_moves(now);
        let total = remaining + self.lb_moves_done;
        if total == 0 {
            return (100.0, 0, 0);
        }
        (
            100.0 * f64::from(total - remaining) / f64::from(total),
            remaining,
            total,
        )
    }

    /// Idle: no leader move pending and every tablet led.
    pub fn load_balancer_idle(&self, now: i64) -> bool {
        self.pending_moves(now) == 0 && self.leaderless().is_empty()
    }

    /// Tablets with fewer than RF RUNNING replicas.
    fn under_replicated_running(&self, now: i64) -> Vec<String> {
        self.tablets
            .iter()
            .filter(|t| {
                t.replicas
                    .iter()
                    .filter(|r| self.replica_running(t, r, now))
                    .count()
                    < RF
            })
            .map(|t| t.id.clone())
            .collect()
    }

    /// Tablets with a replica on a tserver the master reports DEAD (the location view).
    fn under_replicated_by_location(&self, now: i64) -> Vec<String> {
        let dead: BTreeSet<&str> = self
            .servers
            .iter()
            .filter(|s| s.kind == Kind::TServer && !s.reported_alive(now, &self.timing))
            .map(|s| s.node.as_str())
            .collect();
        self.tablets
            .iter()
            .filter(|t| t.replicas.iter().any(|r| dead.contains(r.as_str())))
            .map(|t| t.id.clone())
            .collect()
    }

    fn tablet_servers_json(&self, now: i64) -> serde_json::Value {
        let t = &self.timing;
        let counts = self.leader_counts();
        let mut by_placement: BTreeMap<String, serde_json::Map<String, serde_json::Value>> =
            BTreeMap::new();
        for s in self.servers.iter().filter(|s| s.kind == Kind::TServer) {
            let alive = s.reported_alive(now, t);
            let hb = (now - s.last_heartbeat(now, t)).max(0) as f64 / 1000.0;
            by_placement.entry(s.placement.clone()).or_default().insert(
                format!("{}:9000", s.node),
                json!({
                    "status": if alive { "ALIVE" } else { "DEAD" },
                    "time_since_hb_sec": hb,
                    "time_since_hb": format!("{hb:.1}s"),
                    "uptime_seconds": if alive { s.reported_uptime_s(now, t) } else { 0 },
                    "user_tablets_total": self.replicas_on(&s.node),
                    "user_tablets_leaders": counts.get(s.node.as_str()).copied().unwrap_or(0),
                    "permanent_uuid": s.uuid,
                    "cloud": "aws",
                    "region": "us-east-1",
                    "zone": format!("us-east-1{}", s.zone.to_lowercase()),
                }),
            );
        }
        serde_json::to_value(by_placement).unwrap_or_default()
    }

    fn health_json(&self, now: i64) -> serde_json::Value {
        let t = &self.timing;
        let tservers: Vec<&Server> = self
            .servers
            .iter()
            .filter(|s| s.kind == Kind::TServer)
            .collect();
        let dead: Vec<&str> = tservers
            .iter()
            .filter(|s| !s.reported_alive(now, t))
            .map(|s| s.uuid.as_str())
            .collect();
        let most_recent_uptime = tservers
            .iter()
            .filter(|s| s.reported_alive(now, t))
            .map(|s| s.reported_uptime_s(now, t))
            .min()
            .unwrap_or(0);
        json!({
            "dead_nodes": dead,
            "most_recent_uptime": most_recent_uptime,
            "under_replicated_tablets": self.under_replicated_by_location(now),
        })
    }

    fn masters_json(&self, now: i64) -> serde_json::Value {
        let masters: Vec<serde_json::Value> = self
            .servers
            .iter()
            .filter(|s| s.kind == Kind::Master)
            .map(|m| {
                let registration = json!({
                    "private_rpc_addresses": [{ "host": m.node, "port": 7100 }],
                    "http_addresses": [{ "host": m.node, "port": 7000 }],
                    "cloud_info": { "placement_cloud": "aws", "placement_region": "us-east-1",
                                    "placement_zone": format!("us-east-1{}", m.zone.to_lowercase()) },
                });
                if m.process_running(now) {
                    json!({
                        "instance_id": { "permanent_uuid": m.uuid, "instance_seqno": m.started_at_ms * 1000 },
                        "registration": registration,
                        "role": if m.node == self.leader { "LEADER" } else { "FOLLOWER" },
                    })
                } else {
                    json!({
                        "instance_id": { "permanent_uuid": "", "instance_seqno": 0 },
                        "registration": registration,
                        "error": {
                            "code": "NETWORK_ERROR",
                            "message": format!("Network error (yb/rpc/tcp_stream.cc:361): Unable to get registration information for peer {}:7100: connect: Connection refused (system error 111)", m.node),
                        },
                    })
                }
            })
            .collect();
        json!({ "masters": masters })
    }

    /// Applies `systemctl VERB` to a unit; returns how long the command blocks (ms), or `None`
    /// if the node has no such unit.
    fn systemctl_act(&mut self, node: &str, kind: Kind, verb: &str, now: i64) -> Option<i64> {
        let t = self.timing;
        let stop_ms = match kind {
            Kind::Master => t.master_stop_ms,
            Kind::TServer => t.tserver_stop_ms,
        };
        let pid = self.next_pid;
        let s = self.server_mut(node, kind)?;
        let block = match verb {
            "stop" => {
                s.begin_stop(now, stop_ms);
                s.stopped = true;
                (s.stop_until_ms - now).max(0)
            }
            "start" if !s.stopped => 0,
            "start" | "restart" => {
                if verb == "restart" {
                    s.begin_stop(now, stop_ms);
                }
                let start = now.max(s.stop_until_ms);
                s.restarts += 1;
                s.started_at_ms = start;
                s.invocation_id = uuid_for(node, kind, 100 + s.restarts);
                s.main_pid = pid;
                s.stopped = false;
                self.next_pid += 1;
                start - now
            }
            _ => 0,
        };
        Some(block)
    }
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

/// Splits a command line into words as a POSIX shell does: blanks separate words; single quotes
/// keep everything literal; double quotes keep everything but `\` before `$`, `` ` ``, `"`, `\`
/// and newline; a backslash outside quotes escapes the next character. Expansions (`$`, `` ` ``,
/// globs) and operators (`;`, `|`, `&`, redirections) are not supported: such a line is refused.
pub fn shell_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => word.push(x),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(x @ ('$' | '`' | '"' | '\\')) => word.push(x),
                            Some('\n') => {}
                            Some(x) => {
                                word.push('\\');
                                word.push(x);
                            }
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(x @ ('$' | '`')) => {
                            return Err(format!("expansion `{x}` is not supported"))
                        }
                        Some(x) => word.push(x),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(x) => word.push(x),
                    None => word.push('\\'),
                }
            }
            ';' | '|' | '&' | '<' | '>' | '$' | '`' | '(' | ')' | '*' | '?' => {
                return Err(format!("`{c}` is not supported by the sandbox shell"));
            }
            other => {
                in_word = true;
                word.push(other);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Runs a command line on `node` the way its shell would, blocking the calling thread as long as
/// the command would take (a blocking `systemctl restart` waits for the graceful stop). See
/// [`exec_nowait`].
pub fn exec(shared: &Shared, node: &str, command: &str) -> ExecOutput {
    let (out, block_ms) = exec_nowait(shared, node, command);
    if block_ms > 0 {
        std::thread::sleep(Duration::from_millis(block_ms));
    }
    out
}

/// Runs a command line on `node`: `systemctl [--no-block] restart|start|stop|show|is-active UNIT`
/// (optionally behind `sudo`) for `yb-master` / `yb-tserver`; `yb-admin` (`-master_addresses`,
/// `-certs_dir_name`; `get_is_load_balancer_idle`, `get_load_move_completion`,
/// `change_leader_blacklist ADD|REMOVE H:9100`, `get_leader_blacklist_completion`,
/// `get_universe_config` (its `leaderBlacklist`), `list_all_masters`, `list_all_tablet_servers`); `yb-ts-cli --server_address=H:9100
/// is_server_ready`; `curl [-s] [-f] http://H:9000/prometheus-metrics` (a tserver's
/// `follower_lag_ms` per tablet it follows). The line is split as a POSIX shell splits it ([`shell_words`]). Mutations are
/// recorded as effects. Returns the output and how long the command runs (ms) before it answers.
/// Injected faults are applied by the caller (the SSH host), once per command.
pub fn exec_nowait(shared: &Shared, node: &str, command: &str) -> (ExecOutput, u64) {
    let words = match shell_words(command) {
        Ok(w) => w,
        Err(e) => {
            return (
                ExecOutput::fail(2, format!("sandbox shell on {node}: {e}: {command}\n")),
                0,
            )
        }
    };
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let words: &[&str] = match words.first() {
        Some(&"sudo") => {
            // `sudo [-n] [-l] COMMAND...`: the sandbox's sudoers lets the SSH user run
            // `systemctl` (and the yb tools) without a password; `-l COMMAND` lists whether it
            // may, as `sudo -l` does, and runs nothing.
            let options = words[1..].iter().take_while(|w| w.starts_with('-')).count();
            let command = &words[1 + options..];
            if words[1..=options].contains(&"-l") {
                let allowed = command
                    .first()
                    .is_some_and(|p| p.rsplit('/').next() == Some("systemctl"));
                return if allowed {
                    (
                        ExecOutput::ok(format!("/usr/bin/systemctl {}\n", command[1..].join(" "))),
                        0,
                    )
                } else {
                    (ExecOutput::fail(1, String::new()), 0)
                };
            }
            command
        }
        _ => &words,
    };
    let program = words.first().map(|p| p.rsplit('/').next().unwrap_or(p));
    match program {
        Some("systemctl") => systemctl(shared, node, &words[1..]),
        Some("yb-admin") => (yb_admin(shared, node, &words[1..]), 0),
        Some("yb-ts-cli") => (yb_ts_cli(shared, node, &words[1..]), 0),
        Some("curl") => (curl(shared, &words[1..]), 0),
        Some(other) => (
            ExecOutput::fail(127, format!("bash: line 1: {other}: command not found\n")),
            0,
        ),
        None => (ExecOutput::ok(""), 0),
    }
}

fn systemctl(shared: &Shared, node: &str, args: &[&str]) -> (ExecOutput, u64) {
    let mut props: Vec<String> = Vec::new();
    let mut rest = Vec::new();
    let mut no_block = false;
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
        } else if a == "--no-block" {
            no_block = true;
        } else if !a.starts_with('-') {
            rest.push(a);
        }
        i += 1;
    }
    let (Some(verb), Some(unit)) = (rest.first(), rest.get(1)) else {
        return (
            ExecOutput::fail(1, "systemctl: expected a verb and a unit\n"),
            0,
        );
    };
    let unit_name = if unit.ends_with(".service") {
        (*unit).to_owned()
    } else {
        format!("{unit}.service")
    };
    let Some(kind) = unit_kind(unit) else {
        // As systemd answers for a unit it does not know.
        let out = match *verb {
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
        return (out, 0);
    };
    let now = shared.now_ms();
    match *verb {
        "restart" | "start" | "stop" => {
            let block = shared.mutate(|st| st.yb.systemctl_act(node, kind, verb, now));
            let Some(block) = block else {
                return (
                    ExecOutput::fail(
                        5,
                        format!("Failed to {verb} {unit_name}: Unit {unit_name} not found.\n"),
                    ),
                    0,
                );
            };
            let flag = if no_block { " --no-block" } else { "" };
            shared.record_effect(
                "ssh",
                &format!("{node}/{}", kind.unit()),
                verb,
                json!({ "command": format!("systemctl{flag} {verb} {unit}") }),
            );
            let wait = if no_block { 0 } else { block.max(0) as u64 };
            (ExecOutput::ok(""), wait)
        }
        "is-active" => {
            let out = shared.read(|st| match st.yb.server(node, kind) {
                Some(s) => {
                    let state = active_state(st.yb.phase(s, now)).0;
                    ExecOutput {
                        exit: if state == "active" { 0 } else { 3 },
                        stdout: format!("{state}\n"),
                        stderr: String::new(),
                    }
                }
                None => ExecOutput {
                    exit: 4,
                    stdout: "inactive\n".into(),
                    stderr: String::new(),
                },
            });
            (out, 0)
        }
        "show" => (show(shared, node, kind, &unit_name, &props, now), 0),
        other => (
            ExecOutput::fail(1, format!("Unknown command verb {other}.\n")),
            0,
        ),
    }
}

/// (`ActiveState`, `SubState`) of a unit in `phase`.
fn active_state(phase: Phase) -> (&'static str, &'static str) {
    match phase {
        Phase::Stopping => ("deactivating", "stop-sigterm"),
        Phase::Stopped => ("inactive", "dead"),
        _ => ("active", "running"),
    }
}

fn show(
    shared: &Shared,
    node: &str,
    kind: Kind,
    unit_name: &str,
    props: &[String],
    now: i64,
) -> ExecOutput {
    shared.read(|st| {
        let Some(s) = st.yb.server(node, kind) else {
            return ExecOutput::ok("InvocationID=\nActiveState=inactive\nLoadState=not-found\n");
        };
        let phase = st.yb.phase(s, now);
        let (active, sub) = active_state(phase);
        // While the stop of a restart runs, the unit still shows the run being stopped.
        let (id, pid, since) = match phase {
            Phase::Stopped => (String::new(), 0, s.stop_until_ms),
            Phase::Stopping => (
                s.prev_invocation_id.clone(),
                s.prev_pid,
                s.prev_started_at_ms,
            ),
            _ => (s.invocation_id.clone(), s.main_pid, s.started_at_ms),
        };
        let all: BTreeMap<&str, String> = [
            ("Id", unit_name.to_owned()),
            ("InvocationID", id),
            ("MainPID", pid.to_string()),
            ("ActiveState", active.into()),
            ("SubState", sub.into()),
            ("LoadState", "loaded".into()),
            (
                "ActiveEnterTimestampMonotonic",
                ((since - st.yb.boot_ms).max(0) * 1000).to_string(),
            ),
            (
                "ActiveEnterTimestamp",
                DateTime::from_timestamp_millis(since)
                    .map(|t| t.format("%a %Y-%m-%d %H:%M:%S UTC").to_string())
                    .unwrap_or_default(),
            ),
        ]
        .into_iter()
        .collect();
        let keys: Vec<String> = if props.is_empty() {
            all.keys().map(|k| (*k).to_owned()).collect()
        } else {
            props.to_vec()
        };
        let mut out = String::new();
        for k in keys {
            if let Some(v) = all.get(k.as_str()) {
                out.push_str(&format!("{k}={v}\n"));
            }
        }
        ExecOutput::ok(out)
    })
}

/// Flags (`-name value`, `--name=value`, `-name=value`) and the other words of a yb tool's line.
fn tool_args<'a>(args: &[&'a str]) -> (BTreeMap<String, String>, Vec<&'a str>) {
    const VALUED: [&str; 5] = [
        "master_addresses",
        "certs_dir_name",
        "timeout_ms",
        "server_address",
        "init_master_addrs",
    ];
    let mut flags = BTreeMap::new();
    let mut rest = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i];
        if let Some(f) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) {
            if let Some((k, v)) = f.split_once('=') {
                flags.insert(k.to_owned(), v.to_owned());
            } else if VALUED.contains(&f) {
                flags.insert(
                    f.to_owned(),
                    args.get(i + 1).copied().unwrap_or("").to_owned(),
                );
                i += 1;
            } else {
                flags.insert(f.to_owned(), String::new());
            }
        } else {
            rest.push(a);
        }
        i += 1;
    }
    (flags, rest)
}

/// A TLS cluster refuses a client without the right `-certs_dir_name`; on a node whose
/// certificates directory is missing, the tool cannot even load it.
fn tls_refusal(
    st: &State,
    node: &str,
    flags: &BTreeMap<String, String>,
    peer: &str,
) -> Option<ExecOutput> {
    if let Some(d) = flags.get("certs_dir_name") {
        if st.certs_missing_on.contains(node) {
            return Some(ExecOutput::fail(
                1,
                format!(
                    "Error: IO error (yb/rpc/secure_stream.cc:112): {d}/ca.crt: \
                     No such file or directory (system error 2)\n"
                ),
            ));
        }
    }
    let wanted = st.tls_certs_dir.as_deref()?;
    match flags.get("certs_dir_name").map(String::as_str) {
        Some(d) if d == wanted => None,
        Some(d) => Some(ExecOutput::fail(
            1,
            format!(
                "Error: Network error (yb/rpc/secure_stream.cc:867): Handshake failed with {peer}: \
                 certificate verify failed: no CA certificate in {d} matches the cluster's \
                 (the cluster's certificates are in {wanted})\n"
            ),
        )),
        None => Some(ExecOutput::fail(
            1,
            format!(
                "Error: Network error (yb/rpc/inbound_call.cc:93): Connection to {peer} closed: \
                 the cluster uses TLS (node-to-node and client-to-node encryption); \
                 pass -certs_dir_name DIR with the cluster's CA certificate\n"
            ),
        )),
    }
}

fn yb_admin(shared: &Shared, node: &str, args: &[&str]) -> ExecOutput {
    let now = shared.now_ms();
    let (flags, rest) = tool_args(args);
    let Some(cmd) = rest.first().copied() else {
        return ExecOutput::fail(1, "yb-admin: no command given\n");
    };
    let addresses = flags
        .get("master_addresses")
        .cloned()
        .unwrap_or_else(|| "localhost:7100".into());
    let check = shared.read(|st| {
        if let Some(refused) = tls_refusal(&st.yb, node, &flags, &addresses) {
            return Err(refused);
        }
        let reachable = addresses.split(',').any(|a| {
            let host = a.rsplit_once(':').map_or(a, |(h, _)| h);
            a.ends_with(":7100")
                && st
                    .yb
                    .server(host, Kind::Master)
                    .is_some_and(|m| m.process_running(now))
        });
        if !reachable || st.yb.leader.is_empty() {
            return Err(ExecOutput::fail(
                1,
                format!(
                    "Error: Timed out (yb/rpc/rpc.cc:224): Could not locate the leader master: \
                     Unable to establish connection to leader master at [{addresses}]. \
                     Please verify the addresses.\n"
                ),
            ));
        }
        Ok(())
    });
    if let Err(out) = check {
        return out;
    }
    match cmd {
        "get_is_load_balancer_idle" => shared.read(|st| {
            ExecOutput::ok(format!(
                "Idle = {}\n",
                u8::from(st.yb.load_balancer_idle(now))
            ))
        }),
        "get_load_move_completion" => shared.read(|st| {
            let (pct, remaining, total) = st.yb.load_moves(now);
            ExecOutput::ok(format!(
                "Percent complete = {pct:.2} : {remaining} remaining out of {total}\n"
            ))
        }),
        "get_leader_blacklist_completion" => shared.read(|st| {
            let remaining = st
                .yb
                .tablets
                .iter()
                .filter(|t| t.leader.as_ref().is_some_and(|l| st.yb.blacklist.contains(l)))
                .count() as u32;
            let total = st.yb.blacklist_total.max(remaining);
            let pct = if total == 0 {
                100.0
            } else {
                100.0 * f64::from(total - remaining) / f64::from(total)
            };
            ExecOutput::ok(format!(
                "Percent complete = {pct:.2} : {remaining} remaining out of {total}\n"
            ))
        }),
        "change_leader_blacklist" => {
            let (Some(op), Some(server)) = (rest.get(1), rest.get(2)) else {
                return ExecOutput::fail(
                    1,
                    "Usage: change_leader_blacklist ADD|REMOVE <ip_addr>:<port> [<ip_addr>:<port>]...\n",
                );
            };
            let host = server.rsplit_once(':').map_or(*server, |(h, _)| h).to_owned();
            let done = shared.mutate(|st| {
                if st.yb.server(&host, Kind::TServer).is_none() {
                    return Err(format!(
                        "Error: Invalid argument: no tablet server {server} in the cluster\n"
                    ));
                }
                match *op {
                    "ADD" => {
                        st.yb.blacklist.insert(host.clone());
                    }
                    "REMOVE" => {
                        st.yb.blacklist.remove(&host);
                    }
                    other => {
                        return Err(format!(
                            "Error: Invalid argument: {other}: expected ADD or REMOVE\n"
                        ))
                    }
                }
                let on = st
                    .yb
                    .tablets
                    .iter()
                    .filter(|t| t.leader.as_ref().is_some_and(|l| st.yb.blacklist.contains(l)))
                    .count() as u32;
                st.yb.blacklist_total = on;
                Ok(())
            });
            match done {
                Ok(()) => {
                    shared.record_effect(
                        "ssh",
                        "yb-admin/leader_blacklist",
                        &format!("blacklist-{}", op.to_lowercase()),
                        json!({ "server": server }),
                    );
                    ExecOutput::ok("")
                }
                Err(e) => ExecOutput::fail(1, e),
            }
        }
        "get_universe_config" => shared.read(|st| {
            let hosts: Vec<serde_json::Value> = st
                .yb
                .blacklist
                .iter()
                .map(|h| json!({ "host": h, "port": 9100 }))
                .collect();
            ExecOutput::ok(format!(
                "{}\n",
                json!({
                    "version": 1,
                    "leaderBlacklist": { "hosts": hosts },
                    "clusterUuid": PLACEMENT,
                })
            ))
        }),
        "list_all_masters" => shared.read(|st| {
            let mut out = String::from("Master UUID                      \tRPC Host/Port        \tState    \tRole\n");
            for m in st.yb.servers.iter().filter(|s| s.kind == Kind::Master) {
                let running = m.process_running(now);
                out.push_str(&format!(
                    "{:<32} \t{:<20} \t{:<8} \t{}\n",
                    if running { m.uuid.as_str() } else { "UNKNOWN_UUID" },
                    format!("{}:7100", m.node),
                    if running { "ALIVE" } else { "DEAD" },
                    if !running {
                        "UNKNOWN_ROLE"
                    } else if m.node == st.yb.leader {
                        "LEADER"
                    } else {
                        "FOLLOWER"
                    }
                ));
            }
            ExecOutput::ok(out)
        }),
        "list_all_tablet_servers" => shared.read(|st| {
            let t = &st.yb.timing;
            let mut out = String::from(
                "Tablet Server UUID               RPC Host/Port        Heartbeat delay      Status   Reads/s  Writes/s Uptime   SST total size  SST uncomp size SST #files      Memory\n",
            );
            for s in st.yb.servers.iter().filter(|s| s.kind == Kind::TServer) {
                let hb = (now - s.last_heartbeat(now, t)).max(0) as f64 / 1000.0;
                let alive = s.reported_alive(now, t);
                out.push_str(&format!(
                    "{:<32} {:<20} {:<20} {:<8} 0.00     0.00     {:<8} 1.00 GB         1.20 GB         12              512.00 MB\n",
                    s.uuid,
                    format!("{}:9100", s.node),
                    format!("{hb:.2}s"),
                    if alive { "ALIVE" } else { "DEAD" },
                    if alive { s.reported_uptime_s(now, t) } else { 0 },
                ));
            }
            ExecOutput::ok(out)
        }),
        other => ExecOutput::fail(1, format!("Invalid operation {other}\n")),
    }
}

fn yb_ts_cli(shared: &Shared, node: &str, args: &[&str]) -> ExecOutput {
    let now = shared.now_ms();
    let (flags, rest) = tool_args(args);
    let address = flags
        .get("server_address")
        .cloned()
        .unwrap_or_else(|| "localhost:9100".into());
    let host = address
        .rsplit_once(':')
        .map_or(address.as_str(), |(h, _)| h)
        .to_owned();
    match rest.first().copied() {
        Some("is_server_ready") => shared.read(|st| {
            if let Some(refused) = tls_refusal(&st.yb, node, &flags, &address) {
                return refused;
            }
            let Some(s) = st.yb.server(&host, Kind::TServer) else {
                return ExecOutput::fail(
                    1,
                    format!("Error: Network error: could not resolve {address}: no tserver on {host}\n"),
                );
            };
            if !s.process_running(now) {
                return ExecOutput::fail(
                    1,
                    format!(
                        "Error: Network error (yb/util/net/socket.cc:540): connect to {address}: \
                         Connection refused (system error 111)\n"
                    ),
                );
            }
            let n = st.yb.replicas_on(&host);
            let running = s.running_tablets(now, &st.yb.timing, n);
            let not_running = n - running;
            if not_running == 0 {
                ExecOutput::ok("Tablet server is ready\n")
            } else {
                ExecOutput {
                    exit: 1,
                    stdout: format!("Tablet server is not ready: {not_running} tablets not yet running\n"),
                    stderr: format!(
                        "Error: Illegal state: {not_running} tablets are not yet running on {address}\n"
                    ),
                }
            }
        }),
        Some(other) => ExecOutput::fail(1, format!("Invalid command: {other}\n")),
        None => ExecOutput::fail(1, "yb-ts-cli: no command given\n"),
    }
}

/// `curl http://HOST:9000/prometheus-metrics` from a node: the tserver's `follower_lag_ms` for
/// every tablet it follows (Prometheus text), as its web server exports it.
fn curl(shared: &Shared, args: &[&str]) -> ExecOutput {
    let now = shared.now_ms();
    let Some(url) = args.iter().find(|a| !a.starts_with('-')) else {
        return ExecOutput::fail(2, "curl: no URL specified!\n");
    };
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = authority.rsplit_once(':').unwrap_or((authority, "80"));
    shared.read(|st| {
        let yb = &st.yb;
        let refused = || {
            ExecOutput::fail(
                7,
                format!("curl: (7) Failed to connect to {host} port {port}: Connection refused\n"),
            )
        };
        let Some(s) = yb.server(host, Kind::TServer).filter(|_| port == "9000") else {
            return refused();
        };
        if !s.process_running(now) {
            return refused();
        }
        if path != "prometheus-metrics" {
            return ExecOutput::ok(String::new());
        }
        let n = yb.replicas_on(host);
        let lag = s.follower_lag_ms(now, &yb.timing, n);
        let mut out = String::from("# TYPE follower_lag_ms gauge\n");
        for t in yb
            .tablets
            .iter()
            .filter(|t| t.replicas.iter().any(|r| r == host))
            .filter(|t| t.leader.as_deref() != Some(host))
        {
            out.push_str(&format!(
                "follower_lag_ms{{table_id=\"{TABLE}\",tablet_id=\"{}\",metric_type=\"tablet\",exported_instance=\"{host}:9000\"}} {lag} {now}\n",
                t.id
            ));
        }
        ExecOutput::ok(out)
    })
}

/// What a yb-master web request hit.
#[derive(Clone)]
struct MasterCtx {
    shared: Arc<Shared>,
    node: String,
}

async fn api(
    AxState(m): AxState<MasterCtx>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    AxPath(endpoint): AxPath<String>,
) -> Response {
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
        // The master's web server, overloaded, answers 503 Service Unavailable.
        Some(FaultKind::Throttle) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable: too many requests in flight",
            )
                .into_response();
        }
        Some(other) => {
            if let Some(r) = crate::conn::act_out(&other, &conn).await {
                return r;
            }
        }
        None => {}
    }
    let now = m.shared.now_ms();
    m.shared.read(|st| {
        let yb = &st.yb;
        let me = yb.server(&m.node, Kind::Master);
        if me.is_none_or(|s| !s.process_running(now)) {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("yb-master on {} is not running", m.node),
            )
                .into_response();
        }
        let leader = yb.leader == m.node;
        let leader_answered = matches!(
            endpoint.as_str(),
            "tablet-servers" | "health-check" | "tablet-under-replication" | "tablet-replication"
        );
        if leader_answered && yb.leader.is_empty() {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error": "Leader not ready to serve requests: no leader master (election in progress)"})),
            )
                .into_response();
        }
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
                "underreplicated_tablets": yb.under_replicated_running(now).into_iter().map(|t| json!({
                    "table_uuid": TABLE,
                    "tablet_uuid": t,
                    "underreplicated_placements": [PLACEMENT],
                })).collect::<Vec<_>>()
            }))
            .into_response(),
            "tablet-replication" => Json(json!({
                "leaderless_tablets": yb.leaderless().iter().map(|t| json!({
                    "table_uuid": TABLE,
                    "tablet_uuid": t.id,
                    "reason": "No leader: an election is in progress",
                })).collect::<Vec<_>>()
            }))
            .into_response(),
            _ => (StatusCode::NOT_FOUND, "unknown endpoint").into_response(),
        }
    })
}

/// Serves the yb-master web API of master `node`.
pub async fn serve_master(listener: TcpListener, shared: Arc<Shared>, node: String) {
    let app = axum::Router::new()
        .route("/api/v1/{endpoint}", get(api))
        .with_state(MasterCtx { shared, node });
    if let Err(e) = crate::conn::serve(listener, app).await {
        tracing::error!("sandbox yb-master server stopped: {e}");
    }
}

/// Scenario knobs acting on the cluster (see [`crate::estate::Scenario`]).
impl State {
    /// Bootstrap on `node` takes `factor` times longer.
    pub fn slow_bootstrap(&mut self, node: &str, factor: f64) -> Result<(), String> {
        let s = self
            .server_mut(node, Kind::TServer)
            .ok_or_else(|| format!("no tserver on {node}"))?;
        s.bootstrap_factor = factor.max(1.0);
        Ok(())
    }

    /// A tserver on `node` (zone `zone`) that no inventory lists: serving, holding no tablet.
    pub fn add_unlisted_tserver(&mut self, node: &str, zone: &str, now: i64) -> Result<(), String> {
        if self.server(node, Kind::TServer).is_some() {
            return Err(format!("{node} already has a tserver"));
        }
        let pid = self.next_pid;
        self.next_pid += 1;
        self.servers
            .push(Server::new(node, zone, Kind::TServer, now - 600_000, pid));
        Ok(())
    }

    /// A read-replica tserver on `node`, stopped a day ago (DEAD in every view).
    pub fn add_stale_dead_read_replica(&mut self, node: &str, now: i64) -> Result<(), String> {
        if self.server(node, Kind::TServer).is_some() {
            return Err(format!("{node} already has a tserver"));
        }
        let pid = self.next_pid;
        self.next_pid += 1;
        let mut s = Server::new(node, "C", Kind::TServer, now - 90 * 86_400_000, pid);
        s.placement = READ_REPLICA_PLACEMENT.into();
        s.stopped = true;
        s.stop_began_ms = now - 86_400_000;
        s.stop_until_ms = s.stop_began_ms + 1;
        self.servers.push(s);
        Ok(())
    }

    /// The master on `node` stopped long ago (before the run).
    pub fn master_already_down(&mut self, node: &str, now: i64) -> Result<(), String> {
        let s = self
            .server_mut(node, Kind::Master)
            .ok_or_else(|| format!("no master on {node}"))?;
        s.prev_started_at_ms = s.started_at_ms;
        s.prev_invocation_id = s.invocation_id.clone();
        s.prev_pid = s.main_pid;
        s.stop_began_ms = now - 3_600_000;
        s.stop_until_ms = s.stop_began_ms + 1;
        s.stopped = true;
        self.advance(now);
        Ok(())
    }
}
