//! A yb-master's HTTP API (`/api/v1/...`) on the shared estate, answering as the master on its
//! node would (a stopped master does not answer; a follower answers `is-leader` 503); injected
//! faults answered first.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Path as AxPath, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use serde_json::json;
use tokio::net::TcpListener;

use super::model::{Kind, PLACEMENT, TABLE};
use crate::conn::Conn;
use crate::estate::{FaultKind, Shared};

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
