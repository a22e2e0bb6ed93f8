//! The web UI's routes: every request passes [`gate`] (loopback `Host`, then the login token
//! or a session; CSRF token and origin for anything but GET), then the pages (HTML from
//! `cli/assets/` with the session's CSRF token filled in), their JSON API and the live stream
//! of a run as server-sent events.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path as AxPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use futures::StreamExt as _;
use serde::Deserialize;
use waymark_engine::{Payload, RunId};

use super::auth::{Access, Refusal, Session};
use super::data;
use crate::api::{self, FollowLine};
use crate::daemon::routes::ApiError;
use crate::daemon::state::Daemon;
use crate::exit::ExitStatus;

/// The signals the web UI's buttons send.
pub const WEB_SIGNALS: [&str; 4] = ["approve", "hold", "resume", "cancel"];

#[derive(Clone)]
struct Web {
    d: Arc<Daemon>,
    access: Arc<Access>,
    /// The daemon's user, as histories name the operator of a web session.
    owner: String,
    stop: tokio::sync::watch::Receiver<bool>,
    /// The list page's rows, read again only for runs that changed.
    rows: Arc<data::RunRows>,
}

const INDEX_HTML: &str = include_str!("../../../assets/index.html");
const RUN_HTML: &str = include_str!("../../../assets/run.html");
const APP_CSS: &str = include_str!("../../../assets/app.css");
const COMMON_JS: &str = include_str!("../../../assets/common.js");
const LIST_JS: &str = include_str!("../../../assets/list.js");
const RUN_JS: &str = include_str!("../../../assets/run.js");
const FAVICON_SVG: &str = include_str!("../../../assets/favicon.svg");

/// Every response: no framing, no referrer (a login URL never leaks), no caching, and only
/// this site's own scripts and styles.
fn harden(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn refused(r: Refusal, api_path: bool) -> Response {
    let (status, text) = match r {
        Refusal::Unauthorized(t) => (StatusCode::UNAUTHORIZED, t),
        Refusal::Forbidden(t) => (StatusCode::FORBIDDEN, t),
    };
    if api_path {
        ApiError(status, ExitStatus::Usage, text).into_response()
    } else {
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("waymark: {text}\n"),
        )
            .into_response()
    }
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

/// What [`admit`] lets through.
enum Pass {
    /// A request of a checked session.
    Session(Session),
    /// The login: the redirect that sets the session cookie.
    Login(Response),
}

/// The `Host` check, then either the login (`/?token=...`: sets the session cookie and
/// redirects to `/`, dropping the token from the address bar) or a session, checked by
/// [`Access::authorize`].
fn admit(w: &Web, req: &Request, from: SocketAddr) -> Result<Pass, Refusal> {
    w.access.check_host(req.headers())?;
    if req.uri().path() == "/" {
        if let Some(token) = query_param(req.uri().query(), "token") {
            // A browser with a session that opens the login URL again (a bookmark, the
            // terminal's link) just goes to the list.
            if w.access.authorize(req.method(), req.headers()).is_ok() {
                return Ok(Pass::Login(
                    (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response(),
                ));
            }
            let (id, session) = w.access.login(&token, from)?;
            tracing::info!(
                session = session.number,
                from = %from,
                "web UI: a browser logged in with the login URL (now used up)"
            );
            return Ok(Pass::Login(
                (
                    StatusCode::SEE_OTHER,
                    [
                        (header::LOCATION, "/".to_owned()),
                        (header::SET_COOKIE, Access::cookie(&id)),
                    ],
                )
                    .into_response(),
            ));
        }
    }
    Ok(Pass::Session(
        w.access.authorize(req.method(), req.headers())?,
    ))
}

/// Every request passes here ([`admit`]); every answer gets [`harden`]'s headers.
async fn gate(
    State(w): State<Web>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let api_path = req.uri().path().starts_with("/web/api/");
    let mut resp = match admit(&w, &req, from) {
        Ok(Pass::Session(session)) => {
            req.extensions_mut().insert(session);
            next.run(req).await
        }
        Ok(Pass::Login(redirect)) => redirect,
        Err(r) => refused(r, api_path),
    };
    harden(&mut resp);
    resp
}

fn page(template: &str, session: &Session) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        template.replace("{{csrf}}", &session.csrf),
    )
        .into_response()
}

async fn index(Extension(s): Extension<Session>) -> Response {
    page(INDEX_HTML, &s)
}

async fn run_page(Extension(s): Extension<Session>) -> Response {
    page(RUN_HTML, &s)
}

async fn asset(AxPath(file): AxPath<String>) -> Response {
    let (kind, body) = match file.as_str() {
        "app.css" => ("text/css; charset=utf-8", APP_CSS),
        "common.js" => ("text/javascript; charset=utf-8", COMMON_JS),
        "list.js" => ("text/javascript; charset=utf-8", LIST_JS),
        "run.js" => ("text/javascript; charset=utf-8", RUN_JS),
        "favicon.svg" => ("image/svg+xml", FAVICON_SVG),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

fn run_id(d: &Daemon, text: &str) -> Result<RunId, ApiError> {
    api::find_run(d.log.as_ref(), text).map_err(ApiError::from)
}

/// The list page's data (every open tab asks every few seconds): computed on a blocking
/// thread (the log is read synchronously), rereading only the runs appended to since.
async fn runs(State(w): State<Web>) -> Result<Response, ApiError> {
    let rows = tokio::task::spawn_blocking(move || {
        w.rows
            .runs(w.d.log.as_ref(), |run| w.d.metrics.last_appended(run))
    })
    .await
    .map_err(|e| anyhow::anyhow!("listing the runs stopped: {e}"))??;
    Ok(Json(rows).into_response())
}

async fn run(State(w): State<Web>, AxPath(run): AxPath<String>) -> Result<Response, ApiError> {
    let id = run_id(&w.d, &run)?;
    Ok(Json(data::run(w.d.log.as_ref(), id)?).into_response())
}

/// The run's history, then its live events and progress, then its end, as server-sent events
/// (inputs redacted); the stream ends when the daemon stops.
async fn follow(State(w): State<Web>, AxPath(run): AxPath<String>) -> Result<Response, ApiError> {
    let id = run_id(&w.d, &run)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<FollowLine>(256);
    let engine = w.d.engine.clone();
    tokio::spawn(async move {
        // The progress reported so far first: `follow_lines` sends only progress reported
        // after it subscribed, and a wait may report rarely (a page opened mid-wait would show
        // none until the next report).
        let now = engine
            .progress(id)
            .and_then(|rx| rx.borrow().clone())
            .map(|p| FollowLine::Progress {
                label: p.label,
                message: p.message,
            });
        if let Some(line) = now {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if let Err(e) = api::follow_lines(&engine, id, tx).await {
            tracing::warn!(run = %id, "web follow stream ended: {e:#}");
        }
    });
    let mut stop = w.stop.clone();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| {
            let frame = data::sse_frame(&data::redact_line(line));
            (Ok::<_, Infallible>(Bytes::from(frame)), rx)
        })
    })
    .take_until(async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(stream))
        .expect("valid response"))
}

#[derive(Deserialize)]
struct SignalBody {
    signal: String,
    reason: String,
}

/// A button: approve, hold, resume or cancel, with the operator's reason; journaled with the
/// web session as the operator.
async fn signal(
    State(w): State<Web>,
    Extension(s): Extension<Session>,
    AxPath(run): AxPath<String>,
    Json(b): Json<SignalBody>,
) -> Result<Response, ApiError> {
    let id = run_id(&w.d, &run)?;
    if !WEB_SIGNALS.contains(&b.signal.as_str()) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            ExitStatus::Usage,
            format!(
                "unknown signal {:?}; the web UI sends one of {}",
                b.signal,
                WEB_SIGNALS.join(", ")
            ),
        ));
    }
    let reason = b.reason.trim();
    if reason.is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            ExitStatus::Usage,
            format!(
                "say why you {} run {id}: the reason is journaled with your name",
                b.signal
            ),
        ));
    }
    let operator = format!(
        "{} via web session {} from {}",
        w.owner,
        s.number,
        s.from.ip()
    );
    let payload = Payload::encode(reason)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, ExitStatus::Usage, e.to_string()))?;
    w.d.engine
        .signal(id, &b.signal, payload, &operator)
        .await
        .map_err(|e| ApiError::from(anyhow::Error::from(e)))?;
    Ok(Json(serde_json::json!({
        "run": id.to_string(), "signal": b.signal, "sent_by": operator,
    }))
    .into_response())
}

/// The web UI's router: every route behind [`gate`], unknown paths included.
pub(in crate::daemon) fn app(
    d: Arc<Daemon>,
    access: Arc<Access>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> axum::Router {
    let owner = match crate::daemon::peer::user_name(d.own_uid) {
        Some(n) => format!("{n} (uid {})", d.own_uid),
        None => format!("uid {}", d.own_uid),
    };
    let w = Web {
        d,
        access,
        owner,
        stop,
        rows: Arc::default(),
    };
    axum::Router::new()
        .route("/", get(index))
        .route("/runs/{run}", get(run_page))
        .route("/assets/{file}", get(asset))
        .route("/web/api/runs", get(runs))
        .route("/web/api/runs/{run}", get(run))
        .route("/web/api/runs/{run}/follow", get(follow))
        .route("/web/api/runs/{run}/signal", post(signal))
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such page\n") })
        .layer(axum::middleware::from_fn_with_state(w.clone(), gate))
        .with_state(w)
}
