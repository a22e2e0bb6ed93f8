//! The estate's shared state ([`Estate`]: the models of every simulated system), its
//! persistence, the effect log, injected faults and scenario knobs. Below the servers, which act
//! on it through [`Shared`]; [`crate::server::Sandbox`] starts them.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use crate::clock::Clock;
use crate::elb::model as elb;
pub use crate::faults::{Fault, FaultKind, Faults};
use crate::k8s::model as k8s;
use crate::monitor::{Invariants, Truth};
pub use crate::spec::{NodeSpec, Spec, Timing, DEFAULT_TIME_SCALE};
use crate::yb::model as yb;

/// Everything the simulated systems hold, persisted as `state.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Estate {
    /// The spec it was built from.
    pub spec: Spec,
    /// Kubernetes objects.
    pub k8s: k8s::State,
    /// `YugabyteDB` cluster.
    pub yb: yb::State,
    /// `ELBv2` resources.
    pub elb: elb::State,
    /// The invariant monitor's record.
    #[serde(default)]
    pub invariants: Invariants,
}

impl Estate {
    /// Moves every model to `now` (elections, load-balancer moves, drained targets).
    pub fn advance(&mut self, now_ms: i64) {
        self.yb.advance(now_ms);
        self.elb.advance(now_ms);
    }

    /// The ground truth at `now_ms`, from the models' own state (not from what their APIs say).
    pub fn truth(&self, now_ms: i64) -> Truth {
        let zone_b = self
            .elb
            .target_group_arn(&elb::target_group_name("B"))
            .unwrap_or_default()
            .to_owned();
        Truth {
            tservers_down: self.yb.tservers_down(now_ms),
            masters_down: self.yb.masters_down(now_ms),
            unhealthy_forwards: self.elb.unhealthy_forwards(now_ms),
            mirrormaker_off: self.k8s.mirrormaker_off(now_ms),
            traffic_in_b: self.elb.forwards_to(&zone_b),
        }
    }

    /// Applies a scenario knob.
    pub fn apply(&mut self, scenario: &Scenario, now_ms: i64) -> Result<(), String> {
        match scenario {
            Scenario::SlowBootstrap { node, factor } => self.yb.slow_bootstrap(node, *factor),
            Scenario::UnlistedNode { node, zone } => {
                self.yb.add_unlisted_tserver(node, zone, now_ms)
            }
            Scenario::StaleDeadReadReplica { node } => {
                self.yb.add_stale_dead_read_replica(node, now_ms)
            }
            Scenario::MasterDown { node } => self.yb.master_already_down(node, now_ms),
            Scenario::ZoneBUnhealthy => {
                let arn = self
                    .elb
                    .target_group_arn(&elb::target_group_name("B"))
                    .ok_or("no zone B target group")?
                    .to_owned();
                for id in self.elb.registered(&arn) {
                    self.elb.failing_targets.insert(id);
                }
                Ok(())
            }
            Scenario::MirrormakerNotReady => {
                let mut found = false;
                for d in self.k8s.deployments.values_mut() {
                    if d.name.starts_with("mirrormaker") {
                        d.never_ready = true;
                        found = true;
                    }
                }
                if found {
                    Ok(())
                } else {
                    Err("no mirrormaker* Deployment".into())
                }
            }
            Scenario::Tls { certs_dir } => {
                self.yb.tls_certs_dir = Some(certs_dir.clone());
                Ok(())
            }
            Scenario::CertsMissing { node } => {
                if !self.yb.servers.iter().any(|s| &s.node == node) {
                    return Err(format!("no yb server on node {node:?}"));
                }
                self.yb.certs_missing_on.insert(node.clone());
                Ok(())
            }
            Scenario::RbacDenied {
                verb,
                deployment,
                subresource,
            } => {
                if !self.k8s.deployments.values().any(|d| &d.name == deployment) {
                    return Err(format!("no Deployment {deployment:?}"));
                }
                self.k8s.denied.push(k8s::Denial {
                    verb: verb.clone(),
                    deployment: deployment.clone(),
                    subresource: subresource.clone(),
                });
                Ok(())
            }
        }
    }
}

/// Scenario knobs (admin API `POST /scenario`, JSON with a `knob` field).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "knob", rename_all = "snake_case")]
pub enum Scenario {
    /// The tserver on `node` bootstraps `factor` times slower.
    SlowBootstrap {
        /// Node name.
        node: String,
        /// Slow-down factor (at least 1).
        factor: f64,
    },
    /// A serving tserver on `node` that the written inventory does not list.
    UnlistedNode {
        /// Node name (not one of the spec's).
        node: String,
        /// Its zone.
        zone: String,
    },
    /// A read-replica tserver on `node`, DEAD for a day.
    StaleDeadReadReplica {
        /// Node name (not one of the spec's).
        node: String,
    },
    /// The yb-master on `node` has been down for an hour.
    MasterDown {
        /// A master node.
        node: String,
    },
    /// Every target of zone B's traffic target group fails its health checks.
    ZoneBUnhealthy,
    /// `MirrorMaker2`'s pods added by a scale-up never become ready.
    MirrormakerNotReady,
    /// The cluster uses TLS: `yb-admin` and `yb-ts-cli` need `-certs_dir_name CERTS_DIR`.
    Tls {
        /// The directory clients must name.
        certs_dir: String,
    },
    /// The TLS certificates directory is missing on `node`: a yb tool run there with
    /// `-certs_dir_name` fails to load the CA certificate (other nodes are fine).
    CertsMissing {
        /// Node name.
        node: String,
    },
    /// Kubernetes RBAC does not let the run's user `verb` Deployment `deployment` (its
    /// `subresource`, e.g. `scale`): access reviews answer `allowed: false`, calls get 403.
    RbacDenied {
        /// `get`, `patch`, `update`.
        verb: String,
        /// The Deployment's name.
        deployment: String,
        /// `scale`, or none for the Deployment itself.
        #[serde(default)]
        subresource: Option<String>,
    },
}

/// One mutating call a simulated system received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effect {
    /// When (sandbox clock).
    pub time: DateTime<Utc>,
    /// `k8s`, `yb`, `ssh`, `elb`.
    pub system: String,
    /// What it acted on (`prod/fp`, `yb-a-1/yb-master`, a target group ARN, ...).
    pub target: String,
    /// What it did (`scale`, `restart`, `register`, ...).
    pub action: String,
    /// The rest, as JSON.
    pub details: serde_json::Value,
}

/// How a sandbox runs, beside what it simulates ([`Spec`]).
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Where every timestamp and the tick come from (the wall clock by default;
    /// [`Clock::simulated`] for paused tokio time).
    pub clock: Clock,
    /// Seeds every random choice that can reach a caller (`ELBv2` request ids, the SSH keys
    /// when the sandbox creates them): the same seed and the same calls at the same times give
    /// the same answers and effects. `None`: drawn from the OS.
    pub seed: Option<u64>,
    /// Keep the state, the effects, the faults and the monitor's record in memory only: no
    /// `state.json`, `effects.jsonl`, `faults.json` or `invariants.json` is read or written
    /// ([`Shared::effects`] and [`Shared::invariants`] answer from memory). The files callers
    /// need to connect (`kubeconfig`, `known_hosts`, the SSH keys, `endpoints.json`) are still
    /// written once, at start (`inventory.toml` by the caller, from the sandbox's description).
    pub in_memory: bool,
    /// How often the estate's clock ticks (the monitor's evaluation between changes), in ms of
    /// tokio time; `None`: the heartbeat interval clamped to 5..20 ms. A simulation at real
    /// durations may take a coarser tick (e.g. 250) for speed: the down maxima stay exact
    /// (evaluated at every change), a forward to an unhealthy group shorter than a tick can be
    /// missed.
    pub tick_ms: Option<u64>,
}

/// Where the effects go.
enum EffectLog {
    /// `DIR/effects.jsonl`, appended to.
    File(std::fs::File),
    /// In memory ([`Options::in_memory`]).
    Memory(Vec<Effect>),
}

/// What the simulated servers share.
pub struct Shared {
    dir: PathBuf,
    clock: Clock,
    in_memory: bool,
    state: Mutex<Estate>,
    effects: Mutex<EffectLog>,
    faults: Mutex<Faults>,
    /// The seeded generator's state (splitmix64), `None` without a seed.
    random: Mutex<Option<u64>>,
    /// Told of every effect right after it is recorded (the simulation's crash points inside
    /// activities, [`Shared::on_effect`]).
    effect_hook: Mutex<Option<EffectHook>>,
    /// Effects this sandbox appended to `effects.jsonl` (the hook's index when not in memory).
    effects_in_file: std::sync::atomic::AtomicUsize,
    /// Requests that asked for their fault, per system of [`crate::faults::SYSTEMS`].
    requests: [std::sync::atomic::AtomicU64; crate::faults::SYSTEMS.len()],
}

/// A function told of each effect as it lands: its index (from 0, counted since the sandbox
/// started) and the effect.
pub type EffectHook = std::sync::Arc<dyn Fn(usize, &Effect) + Send + Sync>;

impl Shared {
    pub(crate) fn open(dir: &Path, spec: &Spec, options: &Options) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let clock = options.clock.clone();
        let fresh = || Estate {
            spec: spec.clone(),
            k8s: k8s::State::from_spec(spec),
            yb: yb::State::from_spec(spec, clock.now()),
            elb: elb::State::from_spec(spec, clock.now()),
            invariants: Invariants::default(),
        };
        let state_path = dir.join("state.json");
        let state = if options.in_memory {
            fresh()
        } else {
            match std::fs::read(&state_path) {
                Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                    std::io::Error::other(format!(
                        "{} is not a sandbox state: {e}; remove the sandbox directory {} to \
                         start a new estate",
                        state_path.display(),
                        dir.display()
                    ))
                })?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => fresh(),
                Err(e) => return Err(e),
            }
        };
        let faults = if options.in_memory {
            Faults::default()
        } else {
            match std::fs::read(dir.join("faults.json")) {
                Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
                Err(_) => Faults::default(),
            }
        };
        let effects = if options.in_memory {
            EffectLog::Memory(Vec::new())
        } else {
            EffectLog::File(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("effects.jsonl"))?,
            )
        };
        let shared = Shared {
            dir: dir.to_owned(),
            clock,
            in_memory: options.in_memory,
            state: Mutex::new(state),
            effects: Mutex::new(effects),
            faults: Mutex::new(faults),
            random: Mutex::new(options.seed),
            effect_hook: Mutex::new(None),
            effects_in_file: std::sync::atomic::AtomicUsize::new(0),
            requests: Default::default(),
        };
        {
            let mut st = shared.state.lock().expect("sandbox state lock");
            shared.observe(&mut st);
            shared.persist(&st)?;
        }
        Ok(shared)
    }

    /// The sandbox directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sandbox's clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The time now on the sandbox's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The time now on the sandbox's clock, ms since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Whether the sandbox keeps everything in memory ([`Options::in_memory`]).
    pub fn in_memory(&self) -> bool {
        self.in_memory
    }

    /// 128 random bits: from the seeded generator when the sandbox has a seed (the same sequence
    /// for the same seed), else from the OS.
    pub fn random_u128(&self) -> u128 {
        let mut random = self.random.lock().expect("random lock");
        match random.as_mut() {
            Some(state) => (u128::from(splitmix64(state)) << 64) | u128::from(splitmix64(state)),
            None => uuid::Uuid::new_v4().as_u128(),
        }
    }

    /// A request id (UUID v4 form), seeded as [`Shared::random_u128`].
    pub fn request_id(&self) -> String {
        uuid::Builder::from_random_bytes(self.random_u128().to_be_bytes())
            .into_uuid()
            .to_string()
    }

    /// Reads the state (moved to the present first).
    pub fn read<R>(&self, f: impl FnOnce(&Estate) -> R) -> R {
        let mut st = self.state.lock().expect("sandbox state lock");
        st.advance(self.now_ms());
        f(&st)
    }

    /// Changes the state (moved to the present first), updates the invariant monitor and
    /// persists both before returning.
    pub fn mutate<R>(&self, f: impl FnOnce(&mut Estate) -> R) -> R {
        let mut st = self.state.lock().expect("sandbox state lock");
        st.advance(self.now_ms());
        let r = f(&mut st);
        self.observe(&mut st);
        if let Err(e) = self.persist(&st) {
            tracing::error!("sandbox: cannot persist state: {e}");
        }
        r
    }

    /// One tick of the estate's clock: moves the models to the present and updates the monitor
    /// (persisting both when the monitor's record changed).
    pub fn tick(&self) {
        let mut st = self.state.lock().expect("sandbox state lock");
        st.advance(self.now_ms());
        if self.observe(&mut st) {
            if let Err(e) = self.persist(&st) {
                tracing::error!("sandbox: cannot persist state: {e}");
            }
        }
    }

    /// Applies a scenario knob (and records it as an effect-free change of the estate).
    pub fn apply(&self, scenario: &Scenario) -> Result<(), String> {
        let now = self.now_ms();
        self.mutate(|st| st.apply(scenario, now))
    }

    /// The injected faults.
    pub fn faults(&self) -> Faults {
        self.faults.lock().expect("faults lock").clone()
    }

    /// The invariant monitor's record.
    pub fn invariants(&self) -> Invariants {
        self.read(|st| st.invariants.clone())
    }

    /// The ground truth now.
    pub fn truth(&self) -> Truth {
        let now = self.now_ms();
        self.read(|st| st.truth(now))
    }

    /// Updates the monitor from the ground truth; writes `invariants.json` when it changed.
    fn observe(&self, st: &mut Estate) -> bool {
        let now = self.now();
        let truth = st.truth(now.timestamp_millis());
        let changed = st.invariants.observe(&truth, now);
        if self.in_memory {
            return changed;
        }
        let changed = changed || !self.dir.join("invariants.json").exists();
        if changed {
            if let Err(e) = write_atomic(
                &self.dir.join("invariants.json"),
                &serde_json::to_vec_pretty(&st.invariants).expect("invariants serialise"),
            ) {
                tracing::error!("sandbox: cannot write invariants.json: {e}");
            }
        }
        changed
    }

    fn persist(&self, st: &Estate) -> std::io::Result<()> {
        if self.in_memory {
            return Ok(());
        }
        write_atomic(
            &self.dir.join("state.json"),
            &serde_json::to_vec_pretty(st)?,
        )
    }

    /// Records one mutating call (appended to `effects.jsonl`, or kept in memory).
    pub fn record_effect(
        &self,
        system: &str,
        target: &str,
        action: &str,
        details: serde_json::Value,
    ) {
        let effect = Effect {
            time: self.now(),
            system: system.into(),
            target: target.into(),
            action: action.into(),
            details,
        };
        let hook = self.effect_hook.lock().expect("effect hook lock").clone();
        let index = match &mut *self.effects.lock().expect("effects lock") {
            EffectLog::Memory(effects) => {
                effects.push(effect.clone());
                effects.len() - 1
            }
            EffectLog::File(f) => {
                let mut line = serde_json::to_string(&effect).expect("effect serialises");
                line.push('\n');
                if let Err(e) = f.write_all(line.as_bytes()) {
                    tracing::error!("sandbox: cannot record effect: {e}");
                }
                self.effects_in_file
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            }
        };
        if let Some(hook) = hook {
            hook(index, &effect);
        }
    }

    /// Calls `hook` right after each effect is recorded, with its index (the simulation's crash
    /// points "after the effect on the estate, before its result is journaled"); `None` removes
    /// it. The hook runs on the thread of the server that made the effect, before it answers.
    pub fn on_effect(&self, hook: Option<EffectHook>) {
        *self.effect_hook.lock().expect("effect hook lock") = hook;
    }

    /// Every effect recorded so far (from `effects.jsonl`: across restarts of the sandbox; in
    /// memory: since this sandbox started).
    pub fn effects(&self) -> Vec<Effect> {
        match &*self.effects.lock().expect("effects lock") {
            EffectLog::Memory(effects) => effects.clone(),
            EffectLog::File(_) => read_effects(&self.dir),
        }
    }

    /// Replaces the injected faults (persisted as `faults.json` unless in memory). Each rule
    /// fires on the first requests that match it, in the order they reach the sandbox.
    pub fn set_faults(&self, faults: Faults) {
        if !self.in_memory {
            let _ = std::fs::write(
                self.dir.join("faults.json"),
                serde_json::to_vec_pretty(&faults).expect("faults serialise"),
            );
        }
        *self.faults.lock().expect("faults lock") = faults;
    }

    /// The fault that applies to this request of `system`, if any (counting it down).
    pub fn fault_for(&self, system: &str, request: &str) -> Option<FaultKind> {
        self.count_request(system);
        self.faults
            .lock()
            .expect("faults lock")
            .take(system, request, |_| true)
    }

    fn count_request(&self, system: &str) {
        if let Some(i) = crate::faults::SYSTEMS.iter().position(|s| *s == system) {
            self.requests[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Requests of `system` (one of [`crate::faults::SYSTEMS`]) that reached the sandbox so far
    /// (each asks for its fault once): which steps of a run touch which system, for the
    /// simulation's faults.
    pub fn requests(&self, system: &str) -> u64 {
        crate::faults::SYSTEMS
            .iter()
            .position(|s| *s == system)
            .map_or(0, |i| {
                self.requests[i].load(std::sync::atomic::Ordering::Relaxed)
            })
    }

    /// As [`Shared::fault_for`], among the rules that `applies` (the others are left for later
    /// requests, their count untouched).
    pub fn fault_for_rules(
        &self,
        system: &str,
        request: &str,
        applies: impl Fn(&Fault) -> bool,
    ) -> Option<FaultKind> {
        self.count_request(system);
        self.faults
            .lock()
            .expect("faults lock")
            .take(system, request, applies)
    }
}

/// One step of splitmix64 (the seeded generator: small, and the same on every platform).
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Writes `path` through a temporary file renamed over it (readers see the old or the new
/// content, never a part).
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}

/// Reads `DIR/invariants.json` (the invariant monitor's record), if written.
pub fn read_invariants(dir: &Path) -> Option<Invariants> {
    serde_json::from_slice(&std::fs::read(dir.join("invariants.json")).ok()?).ok()
}

/// Reads `DIR/effects.jsonl` (skipping a torn last line).
pub fn read_effects(dir: &Path) -> Vec<Effect> {
    std::fs::read_to_string(dir.join("effects.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Where each simulated system listens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    /// Kubernetes API (plain HTTP).
    pub k8s: SocketAddr,
    /// yb-master web UI/API per master node name.
    pub yb_masters: BTreeMap<String, SocketAddr>,
    /// SSH per node name.
    pub ssh: BTreeMap<String, SocketAddr>,
    /// `ELBv2` query API.
    pub elb: SocketAddr,
    /// Sandbox control API (faults).
    pub admin: SocketAddr,
}
