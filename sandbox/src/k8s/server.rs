//! The Kubernetes API server: `apps/v1` Deployments (get, list, patch, the `scale` subresource)
//! and `SelfSubjectAccessReview`, on the shared estate; injected faults answered first.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path as AxPath, State as AxState};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::model::{Rollout, RolloutKind};
use crate::conn::Conn;
use crate::estate::{FaultKind, Shared};

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
