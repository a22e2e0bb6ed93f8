//! The `YugabyteDB` cluster model: servers and their processes (stop, start-up, heartbeats,
//! bootstrap), tablets (leaders, elections, follower lag), the leader blacklist and the load
//! balancer, the scenario changes, and the masters' views of it all. Plain data on timestamps
//! passed in; below the estate.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::spec::{Spec, Timing};

/// Tablets in the simulated cluster.
const TABLETS: usize = 12;
/// Replication factor.
const RF: usize = 3;
/// Placement uuid of the cluster's live placement.
pub const PLACEMENT: &str = "b8a3e5c1-5f0e-4b7b-9d55-2f7c9d3e0a11";
/// Placement uuid of the read-replica placement (scenario knob).
pub const READ_REPLICA_PLACEMENT: &str = "5e1f0c7a-2b3d-4e6f-8a9b-0c1d2e3f4a5b";
/// The table every tablet belongs to.
pub(super) const TABLE: &str = "000033e8000030008000000000004000";

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
    pub(super) fn last_heartbeat(&self, now: i64, t: &Timing) -> i64 {
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
    pub(super) fn reported_uptime_s(&self, now: i64, t: &Timing) -> i64 {
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
    ///
    /// Called on every tick of the estate (5 per simulated second), so what it asks of each node
    /// ([`State::eligible`], [`State::replica_running`]) is computed once per node and tablet,
    /// and only when a tablet could move at all ([`Placement`]): the same answers, without
    /// rescanning every tablet per replica.
    fn next_move(&self, now: i64) -> Option<(usize, String)> {
        let counts = self.leader_counts();
        let count = |n: &str| counts.get(n).copied().unwrap_or(0);
        let placement = std::cell::OnceCell::new();
        let at = || placement.get_or_init(|| Placement::of(self, now));
        for (i, t) in self.tablets.iter().enumerate() {
            let Some(l) = &t.leader else { continue };
            if self.blacklist.contains(l) {
                let at = at();
                if let Some(to) = t
                    .replicas
                    .iter()
                    .enumerate()
                    .filter(|(j, r)| at.eligible(self, r, now) && at.running[i][*j])
                    .map(|(_, r)| r)
                    .min_by_key(|r| count(r))
                {
                    return Some((i, to.clone()));
                }
            }
        }
        let mut best: Option<(u32, usize, String)> = None;
        for (i, t) in self.tablets.iter().enumerate() {
            let Some(l) = &t.leader else { continue };
            // The cheapest condition first (a move gains two leaders or more): on a balanced
            // cluster no node is looked at.
            let gains = |r: &String| r != l && count(l) >= count(r) + 2;
            if !t.replicas.iter().any(gains) {
                continue;
            }
            let at = at();
            if !at.eligible(self, l, now) {
                continue;
            }
            for (j, r) in t.replicas.iter().enumerate() {
                if gains(r) && at.eligible(self, r, now) && at.running[i][j] {
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
    pub(super) fn under_replicated_running(&self, now: i64) -> Vec<String> {
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

    pub(super) fn tablet_servers_json(&self, now: i64) -> serde_json::Value {
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

    pub(super) fn health_json(&self, now: i64) -> serde_json::Value {
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

    pub(super) fn masters_json(&self, now: i64) -> serde_json::Value {
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
    pub(super) fn systemctl_act(
        &mut self,
        node: &str,
        kind: Kind,
        verb: &str,
        now: i64,
    ) -> Option<i64> {
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

/// What the load balancer asks of the nodes at one instant, computed once per node: whether each
/// node that holds a replica may take leaders ([`State::eligible`]) and, per tablet and replica
/// (same indices as `State::tablets` and their `replicas`), whether that replica runs
/// ([`State::replica_running`]).
struct Placement<'a> {
    eligible: Vec<(&'a str, bool)>,
    running: Vec<Vec<bool>>,
}

impl<'a> Placement<'a> {
    fn of(state: &'a State, now: i64) -> Placement<'a> {
        // Per node: the tablets holding one of its replicas, in order, and how many of them run.
        let mut nodes: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, t) in state.tablets.iter().enumerate() {
            for r in &t.replicas {
                match nodes.iter_mut().find(|(n, _)| *n == r.as_str()) {
                    Some((_, mine)) => {
                        if mine.last() != Some(&i) {
                            mine.push(i);
                        }
                    }
                    None => nodes.push((r.as_str(), vec![i])),
                }
            }
        }
        let running_of: Vec<Option<usize>> = nodes
            .iter()
            .map(|(n, mine)| {
                state
                    .server(n, Kind::TServer)
                    .map(|s| s.running_tablets(now, &state.timing, mine.len()))
            })
            .collect();
        let eligible = nodes
            .iter()
            .map(|(n, _)| (*n, state.eligible(n, now)))
            .collect();
        let running = state
            .tablets
            .iter()
            .map(|t| {
                t.replicas
                    .iter()
                    .map(|r| {
                        let k = nodes
                            .iter()
                            .position(|(n, _)| *n == r.as_str())
                            .expect("every replica's node is listed");
                        // The tablet's place among the node's (the first of its id, as
                        // `replica_running` finds it).
                        let Some(running) = running_of[k] else {
                            return false;
                        };
                        nodes[k]
                            .1
                            .iter()
                            .position(|&j| state.tablets[j].id == t.id)
                            .is_some_and(|p| p < running)
                    })
                    .collect()
            })
            .collect();
        Placement { eligible, running }
    }

    /// [`State::eligible`], from the table when the node holds a replica.
    fn eligible(&self, state: &State, node: &str, now: i64) -> bool {
        self.eligible
            .iter()
            .find(|(n, _)| *n == node)
            .map_or_else(|| state.eligible(node, now), |(_, e)| *e)
    }
}
