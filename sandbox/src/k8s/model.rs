//! The Kubernetes model: Deployments, their rollouts and what the simulated controller reports
//! over time ([`Deployment::observe`]), the RBAC denials of the scenario. Plain data on
//! timestamps passed in; below the estate.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::spec::Spec;

/// Annotation `kubectl rollout restart` sets.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// What a rollout in progress changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolloutKind {
    /// A new pod template: replicas are replaced one by one.
    Template,
    /// Only the replica count changed.
    Scale,
}

/// A rollout in progress (or finished: the status is computed from it and the clock).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rollout {
    /// What changed.
    pub kind: RolloutKind,
    /// When it began, ms since epoch.
    pub started_ms: i64,
    /// Replicas before.
    pub from_replicas: u32,
    /// Never progresses (ends in `ProgressDeadlineExceeded`).
    pub stuck: bool,
}

/// One Deployment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Deployment {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Object uid.
    pub uid: String,
    /// `spec.replicas`.
    pub replicas: u32,
    /// `spec.paused`.
    pub paused: bool,
    /// `spec.template.metadata.annotations`.
    pub template_annotations: BTreeMap<String, String>,
    /// `metadata.generation`.
    pub generation: i64,
    /// `metadata.resourceVersion`.
    pub resource_version: u64,
    /// The latest rollout.
    pub rollout: Option<Rollout>,
    /// Rollouts so far (template changes).
    pub rollouts: u32,
    /// `spec.progressDeadlineSeconds`, scaled down in the sandbox: ms.
    pub progress_deadline_ms: i64,
    /// A deleted pod's termination grace period (scaled), ms.
    #[serde(default)]
    pub termination_ms: i64,
    /// Scenario knob: pods added by a scale-up never become ready (image pull failing, a
    /// crash loop).
    #[serde(default)]
    pub never_ready: bool,
}

/// Kubernetes objects.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// Deployments by `namespace/name`.
    pub deployments: BTreeMap<String, Deployment>,
    /// Per-replica rollout time, ms.
    pub step_ms: i64,
    pub(super) next_resource_version: u64,
    /// Scenario knob: what the kubeconfig user may not do (`SelfSubjectAccessReview` answers
    /// `allowed: false`, and the call itself is refused with 403).
    #[serde(default)]
    pub denied: Vec<Denial>,
}

/// One permission the sandbox's Kubernetes user lacks (RBAC), as `kubectl auth can-i` names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    /// `get`, `patch`, `update`, ...
    pub verb: String,
    /// The Deployment's name (in the spec's namespace).
    pub deployment: String,
    /// `scale` for the scale subresource; `None` for the Deployment itself.
    #[serde(default)]
    pub subresource: Option<String>,
}

impl State {
    /// Whether RBAC denies `verb` on Deployment `ns/name` (its `subresource`).
    pub fn denies(&self, verb: &str, name: &str, subresource: Option<&str>) -> bool {
        self.denied.iter().any(|d| {
            d.verb == verb && d.deployment == name && d.subresource.as_deref() == subresource
        })
    }
}

impl State {
    /// The Deployments of the spec, fully rolled out.
    pub fn from_spec(spec: &Spec) -> Self {
        let t = spec.scaled();
        let mut deployments = BTreeMap::new();
        for (i, (name, replicas)) in spec.deployments.iter().enumerate() {
            deployments.insert(
                format!("{}/{name}", spec.namespace),
                Deployment {
                    namespace: spec.namespace.clone(),
                    name: name.clone(),
                    uid: uuid::Uuid::from_u128(0x5eed_0000 + i as u128).to_string(),
                    replicas: *replicas,
                    paused: false,
                    template_annotations: BTreeMap::new(),
                    generation: 1,
                    resource_version: 100 + i as u64,
                    rollout: None,
                    rollouts: 0,
                    progress_deadline_ms: (t.pod_ready_ms * 4).max(200),
                    termination_ms: t.pod_termination_ms,
                    never_ready: false,
                },
            );
        }
        State {
            deployments,
            step_ms: t.pod_ready_ms.max(1),
            next_resource_version: 1000,
            denied: Vec::new(),
        }
    }
}

impl State {
    /// Ground truth: no `MirrorMaker2` pod is ready (every Deployment named `mirrormaker*` has
    /// no available replica); false when there is no such Deployment.
    pub fn mirrormaker_off(&self, now_ms: i64) -> bool {
        let mut mm = self
            .deployments
            .values()
            .filter(|d| d.name.starts_with("mirrormaker"))
            .peekable();
        mm.peek().is_some() && mm.all(|d| d.observe(now_ms, self.step_ms).available == 0)
    }
}

/// Status numbers the controller reports at `now_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// `status.observedGeneration`.
    pub observed_generation: i64,
    /// `status.replicas` (old and new pods).
    pub replicas: u32,
    /// `status.updatedReplicas`.
    pub updated: u32,
    /// `status.readyReplicas` and `availableReplicas`.
    pub available: u32,
    /// Pods being deleted, still running (`status.terminatingReplicas`).
    pub terminating: u32,
    /// Progressing condition: (status, reason).
    pub progressing: (&'static str, &'static str),
}

impl Deployment {
    /// What the controller reports at `now_ms`, with `step_ms` per replica.
    pub fn observe(&self, now_ms: i64, step_ms: i64) -> Observed {
        let spec = self.replicas;
        let Some(r) = &self.rollout else {
            return Observed {
                observed_generation: self.generation,
                replicas: spec,
                updated: spec,
                available: spec,
                terminating: 0,
                progressing: ("True", "NewReplicaSetAvailable"),
            };
        };
        let t = now_ms - r.started_ms;
        let lag = step_ms / 4;
        let observed_generation = if t < lag {
            self.generation - 1
        } else {
            self.generation
        };
        if r.stuck {
            let deadline = t >= self.progress_deadline_ms;
            return Observed {
                observed_generation,
                replicas: r.from_replicas + 1,
                updated: 1.min(spec),
                available: 0,
                terminating: 0,
                progressing: if deadline {
                    ("False", "ProgressDeadlineExceeded")
                } else {
                    ("True", "ReplicaSetUpdated")
                },
            };
        }
        let steps = |x: i64| u32::try_from((x.max(0)) / step_ms.max(1)).unwrap_or(u32::MAX);
        match r.kind {
            RolloutKind::Scale if spec >= r.from_replicas => {
                // Scale-up: the new pods exist at once, and are ready (Available) only after
                // their start-up time.
                let done = t >= step_ms && !self.never_ready;
                Observed {
                    observed_generation,
                    replicas: spec,
                    updated: spec,
                    available: if done { spec } else { r.from_replicas },
                    terminating: 0,
                    progressing: (
                        "True",
                        if done {
                            "NewReplicaSetAvailable"
                        } else {
                            "ReplicaSetUpdated"
                        },
                    ),
                }
            }
            RolloutKind::Scale => {
                // Scale-down: the removed pods stop being ready at once and terminate over their
                // grace period, one after the other; status counts them until they are gone.
                let leaving = r.from_replicas - spec;
                let gone = if self.termination_ms <= 0 {
                    leaving
                } else {
                    let per = (self.termination_ms / i64::from(leaving.max(1))).max(1);
                    u32::try_from(t.max(0) / per)
                        .unwrap_or(u32::MAX)
                        .min(leaving)
                };
                let terminating = leaving - gone;
                Observed {
                    observed_generation,
                    replicas: spec + terminating,
                    updated: spec + terminating,
                    available: spec,
                    terminating,
                    progressing: ("True", "NewReplicaSetAvailable"),
                }
            }
            RolloutKind::Template => {
                let updated = steps(t).min(spec);
                let available = steps(t - step_ms / 2).min(spec);
                // One old pod lingers (terminating) for a step after the last new one is up.
                let finished = t >= i64::from(spec + 1) * step_ms;
                let replicas = if finished { spec } else { spec + 1 };
                Observed {
                    observed_generation,
                    replicas,
                    updated,
                    available,
                    terminating: if updated >= spec { replicas - spec } else { 0 },
                    progressing: (
                        "True",
                        if finished {
                            "NewReplicaSetAvailable"
                        } else {
                            "ReplicaSetUpdated"
                        },
                    ),
                }
            }
        }
    }

    pub(super) fn to_json(&self, now_ms: i64, step_ms: i64) -> Value {
        let o = self.observe(now_ms, step_ms);
        let ts = |ms: i64| {
            DateTime::<Utc>::from_timestamp_millis(ms)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        };
        let changed = self
            .rollout
            .as_ref()
            .map_or(now_ms - 3_600_000, |r| r.started_ms);
        let labels = json!({ "app": self.name });
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "uid": self.uid,
                "generation": self.generation,
                "resourceVersion": self.resource_version.to_string(),
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": labels,
            },
            "spec": {
                "replicas": self.replicas,
                "paused": self.paused,
                "progressDeadlineSeconds": (self.progress_deadline_ms / 1000).max(1),
                "selector": { "matchLabels": labels },
                "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxSurge": 1, "maxUnavailable": 0 } },
                "template": {
                    "metadata": { "labels": labels, "annotations": self.template_annotations },
                    "spec": { "containers": [{ "name": self.name, "image": format!("registry.local/{}:1.0", self.name) }] }
                }
            },
            "status": {
                "observedGeneration": o.observed_generation,
                "replicas": o.replicas,
                "updatedReplicas": o.updated,
                "readyReplicas": o.available,
                "availableReplicas": o.available,
                "unavailableReplicas": o.replicas.saturating_sub(o.available),
                "terminatingReplicas": o.terminating,
                "conditions": [
                    { "type": "Available", "status": if o.available >= self.replicas { "True" } else { "False" },
                      "reason": "MinimumReplicasAvailable", "lastUpdateTime": ts(changed), "lastTransitionTime": ts(changed) },
                    { "type": "Progressing", "status": o.progressing.0, "reason": o.progressing.1,
                      "message": if o.progressing.1 == "ProgressDeadlineExceeded" {
                          format!("ReplicaSet \"{}-7d9f\" has timed out progressing.", self.name)
                      } else {
                          format!("ReplicaSet \"{}-7d9f\" is progressing.", self.name)
                      },
                      "lastUpdateTime": ts(changed), "lastTransitionTime": ts(changed) }
                ]
            }
        })
    }

    pub(super) fn scale_json(&self, now_ms: i64, step_ms: i64) -> Value {
        let o = self.observe(now_ms, step_ms);
        json!({
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": { "name": self.name, "namespace": self.namespace, "uid": self.uid,
                          "resourceVersion": self.resource_version.to_string() },
            "spec": { "replicas": self.replicas },
            "status": { "replicas": o.replicas, "selector": format!("app={}", self.name) }
        })
    }
}
