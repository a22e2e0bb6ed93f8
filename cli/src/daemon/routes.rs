//! The daemon's HTTP API: its routes and handlers, the owner-only check of unix peers and the
//! bearer token of TCP peers. Handlers compute their answers with [`crate::api`], as direct mode
//! does.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path as AxPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use serde::Deserialize;
use waymark_engine::{Payload, RunId};
use waymark_workflows::Inventory;

use super::peer::{peer_refusal, Peer};
use super::state::{Daemon, StartError};
use crate::api::{self, FollowLine, ResolveRequest, SignalRequest, StartRequest};
use crate::exit::ExitStatus;

type Shared = Arc<Daemon>;

/// An API error: HTTP status, exit status for the CLI, message.
pub(super) struct ApiError(pub StatusCode, pub ExitStatus, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(serde_json::json!({ "error": self.2, "code": self.1.code() })),
        )
            .into_response()
    }
}

/// The HTTP status of an error answer with this exit status.
fn http_status(status: ExitStatus) -> StatusCode {
    match status {
        ExitStatus::Usage => StatusCode::BAD_REQUEST,
        ExitStatus::Unusable => StatusCode::SERVICE_UNAVAILABLE,
        ExitStatus::Success | ExitStatus::Failure => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        let (status, msg) = crate::exit::classify(&e);
        ApiError(http_status(status), status, msg)
    }
}

impl From<StartError> for ApiError {
    fn from(e: StartError) -> Self {
        match e {
            StartError::ClusterHeld(m) => ApiError(StatusCode::CONFLICT, ExitStatus::Failure, m),
            StartError::Other(status, m) => ApiError(http_status(status), status, m),
        }
    }
}

fn engine_error(e: waymark_engine::runtime::Error) -> ApiError {
    ApiError::from(anyhow::Error::from(e))
}

fn bad_request(message: String) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, ExitStatus::Usage, message)
}

/// Every route: a unix peer must run as the daemon's user (or root). The socket's 0600 mode
/// already keeps others out; this holds even if the file mode is changed.
async fn owner_only(
    State(d): State<Shared>,
    ConnectInfo(p): ConnectInfo<Peer>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match check_peer(&d, &p) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

fn check_peer(d: &Daemon, peer: &Peer) -> Result<(), ApiError> {
    match peer_refusal(d.own_uid, &d.socket, peer) {
        Some(why) => Err(ApiError(StatusCode::FORBIDDEN, ExitStatus::Usage, why)),
        None => Ok(()),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
    workflow: Option<String>,
}

async fn list(State(d): State<Shared>, Query(q): Query<ListQuery>) -> Result<Response, ApiError> {
    Ok(Json(api::list(
        d.log.as_ref(),
        q.state.as_deref(),
        q.workflow.as_deref(),
    )?)
    .into_response())
}

/// Checks an inventory sent over the API with the same validation `Inventory::load` applies
/// (the CLI validated it too, but the daemon trusts no client).
fn validate_inventory(inv: &Inventory, by: &str) -> Result<(), ApiError> {
    let text = toml::to_string(inv)
        .map_err(|e| bad_request(format!("the inventory sent by {by} cannot be checked: {e}")))?;
    let name = PathBuf::from(format!("(inventory sent by {by})"));
    Inventory::parse(&name, &text)
        .map(|_| ())
        .map_err(|e| bad_request(format!("{e}; fix the inventory file and start again")))
}

async fn start(
    State(d): State<Shared>,
    ConnectInfo(p): ConnectInfo<Peer>,
    Json(b): Json<StartRequest>,
) -> Result<Response, ApiError> {
    validate_inventory(&b.inventory, &p.operator)?;
    if !p.unix && !b.inventory.notify.webhooks.is_empty() {
        // A webhook names a file or a variable of the daemon's: not for TCP clients to pick (as
        // for a schedule's webhooks).
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            ExitStatus::Usage,
            "TCP clients may not name webhooks (their URL files and variables are the daemon's): \
             start the run through the unix socket, or leave [notify] out of the inventory"
                .to_owned(),
        ));
    }
    let input = Payload::encode(&b.inventory).map_err(|e| bad_request(e.to_string()))?;
    let run = d
        .start_run(&b.workflow, input, &b.inventory.cluster.name, &p.operator)
        .await?;
    Ok(Json(serde_json::json!({ "run": run.to_string() })).into_response())
}

/// Records that an operator checked (and repaired) the estate after a run ended with its
/// compensation incomplete: the run's cluster is free again.
async fn resolve(
    State(d): State<Shared>,
    ConnectInfo(p): ConnectInfo<Peer>,
    AxPath(run): AxPath<String>,
    Json(b): Json<ResolveRequest>,
) -> Result<Response, ApiError> {
    let id = run_id(&d, &run)?;
    api::check_note(&b.note)?;
    let _guard = d.starting.lock().await;
    d.engine
        .resolve(id, &p.operator, &b.note)
        .await
        .map_err(engine_error)?;
    Ok(
        Json(serde_json::json!({ "run": id.to_string(), "resolved_by": p.operator }))
            .into_response(),
    )
}

fn run_id(d: &Daemon, text: &str) -> Result<RunId, ApiError> {
    api::find_run(d.log.as_ref(), text).map_err(ApiError::from)
}

async fn show(State(d): State<Shared>, AxPath(run): AxPath<String>) -> Result<Response, ApiError> {
    let id = run_id(&d, &run)?;
    Ok(Json(api::show(d.log.as_ref(), id)?).into_response())
}

async fn history(
    State(d): State<Shared>,
    AxPath(run): AxPath<String>,
) -> Result<Response, ApiError> {
    let id = run_id(&d, &run)?;
    Ok(Json(api::history(d.log.as_ref(), id)?).into_response())
}

async fn signal(
    State(d): State<Shared>,
    ConnectInfo(p): ConnectInfo<Peer>,
    AxPath(run): AxPath<String>,
    Json(b): Json<SignalRequest>,
) -> Result<Response, ApiError> {
    let id = run_id(&d, &run)?;
    api::check_signal(&b.signal)?;
    let payload =
        Payload::encode(&b.reason.unwrap_or_default()).map_err(|e| bad_request(e.to_string()))?;
    d.engine
        .signal(id, &b.signal, payload, &p.operator)
        .await
        .map_err(engine_error)?;
    Ok(Json(serde_json::json!({ "run": id.to_string(), "signal": b.signal })).into_response())
}

async fn replay(
    State(d): State<Shared>,
    AxPath(run): AxPath<String>,
) -> Result<Response, ApiError> {
    let id = run_id(&d, &run)?;
    let report = d.engine.replay(id).await.map_err(engine_error)?;
    Ok(Json(crate::view::replay_json(&report)).into_response())
}

#[derive(Deserialize)]
struct VerifyQuery {
    run: Option<String>,
}

async fn verify(
    State(d): State<Shared>,
    Query(q): Query<VerifyQuery>,
) -> Result<Response, ApiError> {
    let run = match q.run {
        Some(r) => Some(run_id(&d, &r)?),
        None => None,
    };
    Ok(Json(api::verify(d.log.as_ref(), run)?).into_response())
}

/// The history so far, then live events and progress, then how the run ended: one JSON line each.
/// A client that goes away only stops its own stream; the run goes on.
async fn follow(
    State(d): State<Shared>,
    AxPath(run): AxPath<String>,
) -> Result<Response, ApiError> {
    let id = run_id(&d, &run)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<FollowLine>(256);
    let engine = d.engine.clone();
    tokio::spawn(async move {
        if let Err(e) = api::follow_lines(&engine, id, tx).await {
            tracing::warn!(run = %id, "follow stream ended: {e:#}");
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| {
            let mut s = serde_json::to_string(&line).unwrap_or_default();
            s.push('\n');
            (Ok::<_, Infallible>(Bytes::from(s)), rx)
        })
    });
    Ok(Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(stream))
        .expect("valid response"))
}

async fn metrics(State(d): State<Shared>) -> Response {
    match super::metrics::render(d.log.as_ref(), &d.metrics) {
        Ok(text) => ([("content-type", "text/plain; version=0.0.4")], text).into_response(),
        // Fail loudly: a scrape that cannot count the runs must not report zero.
        Err(e) => ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            ExitStatus::Unusable,
            format!("cannot list the runs of the log: {e:#}; `waymark verify` checks it"),
        )
        .into_response(),
    }
}

async fn require_token(
    State(d): State<Shared>,
    headers: HeaderMap,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = match (&d.token, given) {
        (Some(want), Some(got)) => constant_time_eq(want.as_bytes(), got.trim().as_bytes()),
        _ => false,
    };
    if ok {
        next.run(req).await
    } else {
        ApiError(
            StatusCode::UNAUTHORIZED,
            ExitStatus::Usage,
            "missing or wrong bearer token".into(),
        )
        .into_response()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn router(d: Shared) -> axum::Router<Shared> {
    axum::Router::new()
        .route("/v1/runs", get(list).post(start))
        .route("/v1/runs/{run}", get(show))
        .route("/v1/runs/{run}/history", get(history))
        .route("/v1/runs/{run}/follow", get(follow))
        .route("/v1/runs/{run}/signal", post(signal))
        .route("/v1/runs/{run}/resolve", post(resolve))
        .route("/v1/runs/{run}/replay", get(replay))
        .route("/v1/verify", get(verify))
        .route("/metrics", get(metrics))
        .merge(super::schedules::routes())
        .route_layer(axum::middleware::from_fn_with_state(d, owner_only))
}

/// A new one-time login URL of the web UI (`--http`), for another browser: only over the
/// owner-only unix socket, whose peer is the daemon's user.
async fn web_login_url(
    axum::Extension(web): axum::Extension<Option<Arc<super::web::Access>>>,
) -> Result<Response, ApiError> {
    let Some(web) = web else {
        return Err(bad_request(
            "this daemon serves no web UI: start it with --http PORT".into(),
        ));
    };
    let url = web.renew_login_url().map_err(|e| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            ExitStatus::Unusable,
            format!("cannot draw a login token from /dev/urandom: {e}"),
        )
    })?;
    Ok(Json(serde_json::json!({ "url": url })).into_response())
}

/// The API as served on the unix socket (owner-only), with the web UI's login URLs.
pub(super) fn unix_app(d: Shared, web: Option<Arc<super::web::Access>>) -> axum::Router {
    router(d.clone())
        .merge(
            axum::Router::new()
                .route("/v1/web/login-url", post(web_login_url))
                .route_layer(axum::middleware::from_fn_with_state(d.clone(), owner_only)),
        )
        .layer(axum::Extension(web))
        .with_state(d)
}

/// The API as served on TCP: every request needs the bearer token.
pub(super) fn tcp_app(d: Shared) -> axum::Router {
    router(d.clone())
        .layer(axum::middleware::from_fn_with_state(
            d.clone(),
            require_token,
        ))
        .with_state(d)
}
