//! A Kubernetes API subset over HTTP for `apps/v1` Deployments: get, list, patch (JSON merge and
//! strategic merge, which agree for the fields used here), and the `scale` subresource. A
//! simulated controller moves `status` through a rollout the way the Deployment controller does:
//! `observedGeneration` lags the spec briefly, new replicas come up one at a time, old ones
//! terminate, and a rollout marked stuck (fault `stuck NS/NAME`) ends in `ProgressDeadlineExceeded`.
//! A scale-up is Available only once the new pods are ready (the pod start-up time); a scale-down
//! makes the removed pods unready at once and terminates them one by one over the grace period
//! (`status.replicas` falls, `status.terminatingReplicas` counts them).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path as AxPath, State as AxState};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::conn::Conn;
use crate::estate::{FaultKind, Shared, Spec};

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
    next_resource_version: u64,
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

    fn to_json(&self, now_ms: i64, step_ms: i64) -> Value {
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

    fn scale_json(&self, now_ms: i64, step_ms: i64) -> Value {
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

fn status_error(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16()
        })),
    )
        .into_response()
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Answers an injected fault, or `None` to go on (after a delay, or to be cut mid-answer).
async fn apply_fault(shared: &Shared, conn: &Conn, request: &str) -> Option<Response> {
    match shared.fault_for("k8s", request)? {
        FaultKind::Status(code) => Some(status_error(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "InternalError",
            "injected fault",
        )),
        FaultKind::Throttle => Some(status_error(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            "throttled",
        )),
        other => crate::conn::act_out(&other, conn).await,
    }
}

async fn deployment(
    AxState(shared): AxState<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    method: Method,
    AxPath((ns, name)): AxPath<(String, String)>,
    body: Bytes,
) -> Response {
    if let Some(r) = apply_fault(&shared, &conn, &format!("{method} {ns}/{name}")).await {
        return r;
    }
    if let Some(r) = forbidden(&shared, &method, &ns, &name, None) {
        return r;
    }
    let key = format!("{ns}/{name}");
    let now = shared.now_ms();
    if method == Method::GET {
        return shared.read(|st| match st.k8s.deployments.get(&key) {
            Some(d) => Json(d.to_json(now, st.k8s.step_ms)).into_response(),
            None => not_found(&name),
        });
    }
    if method != Method::PATCH {
        return status_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("{method} is not supported here"),
        );
    }
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return status_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("patch is not JSON: {e}"),
            )
        }
    };
    let stuck = shared.fault_for("k8s", &format!("stuck {key}")).is_some();
    let result = shared.mutate(|st| {
        let step = st.k8s.step_ms;
        st.k8s.next_resource_version += 1;
        let rv = st.k8s.next_resource_version;
        let d = st.k8s.deployments.get_mut(&key)?;
        let mut doc = d.to_json(now, step);
        merge_patch(&mut doc, &patch);
        let replicas = doc["spec"]["replicas"]
            .as_u64()
            .map_or(d.replicas, |r| r as u32);
        let paused = doc["spec"]["paused"].as_bool().unwrap_or(false);
        let annotations: BTreeMap<String, String> = doc["spec"]["template"]["metadata"]
            ["annotations"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        let template_changed = annotations != d.template_annotations;
        let mut effect = None;
        if template_changed || replicas != d.replicas || paused != d.paused {
            d.generation += 1;
            d.resource_version = rv;
        }
        if template_changed && !paused {
            let from = d.observe(now, step).replicas;
            d.rollout = Some(Rollout {
                kind: RolloutKind::Template,
                started_ms: now,
                from_replicas: from,
                stuck,
            });
            d.rollouts += 1;
            effect = Some((
                "rollout",
                json!({ "annotations": annotations, "generation": d.generation }),
            ));
        } else if replicas != d.replicas {
            let from = d.observe(now, step).replicas;
            d.rollout = Some(Rollout {
                kind: RolloutKind::Scale,
                started_ms: now,
                from_replicas: from,
                stuck: false,
            });
            effect = Some(("scale", json!({ "from": d.replicas, "to": replicas })));
        }
        d.replicas = replicas;
        d.paused = paused;
        d.template_annotations = annotations;
        Some((d.to_json(now, step), effect))
    });
    match result {
        None => not_found(&name),
        Some((doc, effect)) => {
            if let Some((action, details)) = effect {
                shared.record_effect("k8s", &key, action, details);
            }
            Json(doc).into_response()
        }
    }
}

fn not_found(name: &str) -> Response {
    status_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("deployments.apps \"{name}\" not found"),
    )
}

async fn scale(
    AxState(shared): AxState<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    method: Method,
    AxPath((ns, name)): AxPath<(String, String)>,
    body: Bytes,
) -> Response {
    // Faults match `METHOD ns/name/scale`, and for writes also ` replicas=N`.
    let wanted_text = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["spec"]["replicas"].as_u64())
        .map_or(String::new(), |n| format!(" replicas={n}"));
    if let Some(r) = apply_fault(
        &shared,
        &conn,
        &format!("{method} {ns}/{name}/scale{wanted_text}"),
    )
    .await
    {
        return r;
    }
    if let Some(r) = forbidden(&shared, &method, &ns, &name, Some("scale")) {
        return r;
    }
    let key = format!("{ns}/{name}");
    let now = shared.now_ms();
    if method == Method::GET {
        return shared.read(|st| match st.k8s.deployments.get(&key) {
            Some(d) => Json(d.scale_json(now, st.k8s.step_ms)).into_response(),
            None => not_found(&name),
        });
    }
    let wanted = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["spec"]["replicas"].as_u64());
    let Some(wanted) = wanted else {
        return status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "expected spec.replicas",
        );
    };
    let wanted = wanted as u32;
    let result = shared.mutate(|st| {
        let step = st.k8s.step_ms;
        st.k8s.next_resource_version += 1;
        let rv = st.k8s.next_resource_version;
        let d = st.k8s.deployments.get_mut(&key)?;
        let from = d.replicas;
        if from != wanted {
            let observed = d.observe(now, step).replicas;
            d.generation += 1;
            d.resource_version = rv;
            d.replicas = wanted;
            d.rollout = Some(Rollout {
                kind: RolloutKind::Scale,
                started_ms: now,
                from_replicas: observed,
                stuck: false,
            });
        }
        Some((d.scale_json(now, step), from))
    });
    match result {
        None => not_found(&name),
        Some((doc, from)) => {
            if from != wanted {
                shared.record_effect("k8s", &key, "scale", json!({ "from": from, "to": wanted }));
            }
            Json(doc).into_response()
        }
    }
}

async fn list(
    AxState(shared): AxState<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    AxPath(ns): AxPath<String>,
) -> Response {
    if let Some(r) = apply_fault(&shared, &conn, &format!("GET {ns}/deployments")).await {
        return r;
    }
    let now = shared.now_ms();
    shared.read(|st| {
        let items: Vec<Value> = st
            .k8s
            .deployments
            .values()
            .filter(|d| d.namespace == ns)
            .map(|d| d.to_json(now, st.k8s.step_ms))
            .collect();
        Json(json!({ "apiVersion": "apps/v1", "kind": "DeploymentList", "metadata": { "resourceVersion": "1" }, "items": items }))
            .into_response()
    })
}

/// 403 as the API server answers a call RBAC does not allow (scenario [`Denial`]).
fn forbidden(
    shared: &Shared,
    method: &Method,
    ns: &str,
    name: &str,
    subresource: Option<&str>,
) -> Option<Response> {
    let verb = match *method {
        Method::GET => "get",
        Method::PATCH => "patch",
        Method::PUT => "update",
        _ => return None,
    };
    if !shared.read(|st| st.k8s.denies(verb, name, subresource)) {
        return None;
    }
    let resource = subresource.map_or_else(
        || "deployments".to_owned(),
        |sub| format!("deployments/{sub}"),
    );
    Some(status_error(
        StatusCode::FORBIDDEN,
        "Forbidden",
        &format!(
            "deployments.apps \"{name}\" is forbidden: User \"waymark\" cannot {verb} resource \"{resource}\" in API group \"apps\" in the namespace \"{ns}\""
        ),
    ))
}

/// `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews` (what `kubectl auth can-i`
/// sends): allowed unless a [`Denial`] of the scenario matches (Deployments of `apps` only;
/// any other resource is allowed).
async fn access_review(
    AxState(shared): AxState<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    body: Bytes,
) -> Response {
    if let Some(r) = apply_fault(&shared, &conn, "POST selfsubjectaccessreviews").await {
        return r;
    }
    let mut review: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return status_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("not a SelfSubjectAccessReview: {e}"),
            )
        }
    };
    let attrs = &review["spec"]["resourceAttributes"];
    let text = |k: &str| attrs[k].as_str().unwrap_or_default().to_owned();
    let (verb, resource, name) = (text("verb"), text("resource"), text("name"));
    let subresource = attrs["subresource"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let denied = resource == "deployments"
        && shared.read(|st| st.k8s.denies(&verb, &name, subresource.as_deref()));
    let what = match &subresource {
        Some(sub) => format!("{verb} deployments/{sub} {name}"),
        None => format!("{verb} deployments {name}"),
    };
    review["status"] = if denied {
        json!({ "allowed": false, "reason": format!("RBAC: no role binding allows {what}") })
    } else {
        json!({ "allowed": true, "reason": format!("RBAC: allowed by ClusterRoleBinding \"waymark\"") })
    };
    review["apiVersion"] = json!("authorization.k8s.io/v1");
    review["kind"] = json!("SelfSubjectAccessReview");
    (StatusCode::CREATED, Json(review)).into_response()
}

/// Serves the API.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let app = axum::Router::new()
        .route("/apis/apps/v1/namespaces/{ns}/deployments", get(list))
        .route(
            "/apis/apps/v1/namespaces/{ns}/deployments/{name}",
            get(deployment).patch(deployment).put(deployment),
        )
        .route(
            "/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale",
            get(scale).patch(scale).put(scale),
        )
        .route(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            axum::routing::post(access_review),
        )
        .route(
            "/version",
            get(|| async {
                Json(json!({"major": "1", "minor": "31", "gitVersion": "v1.31.0-waymark-sandbox"}))
            }),
        )
        .with_state(shared);
    if let Err(e) = crate::conn::serve(listener, app).await {
        tracing::error!("sandbox Kubernetes API stopped: {e}");
    }
}
