//! `waymark daemon`: owns the event log for months, resumes every unfinished run at start, runs
//! scheduled maintenance, and serves the CLI over a unix socket (owner-only; the peer's user is
//! recorded as the operator) and optionally over TCP with a bearer token.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::body::{Body, Bytes};
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Path as AxPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use axum::Json;
use futures::future::BoxFuture;
use serde::Deserialize;
use tokio::net::{TcpListener, UnixListener};
use waymark_engine::core::RunState;
use waymark_engine::event::{Event, Record};
use waymark_engine::log::{self, EventLog};
use waymark_engine::{Engine, Payload, RunId};
use waymark_workflows::Inventory;

use crate::api::{self, FollowLine};

/// Options of `waymark daemon`.
#[derive(Debug, Clone)]
pub struct Options {
    /// The data directory (log, socket, schedules).
    pub data_dir: PathBuf,
    /// Also listen on TCP here (needs a token).
    pub tcp: Option<SocketAddr>,
    /// File holding the bearer token TCP clients must send.
    pub token_file: Option<PathBuf>,
    /// How often the scheduler looks at the schedules.
    pub tick: Duration,
}

/// Who is calling.
#[derive(Clone, Debug)]
pub struct Peer {
    /// As recorded in histories.
    pub operator: String,
    /// The unix peer's uid (TCP: none).
    pub uid: Option<u32>,
}

fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.parse().ok()?;
        (id == uid).then(|| name.to_owned())
    })
}

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        match stream.io().peer_cred() {
            Ok(c) => Peer {
                operator: match user_name(c.uid()) {
                    Some(n) => format!("{n} (uid {})", c.uid()),
                    None => format!("uid {}", c.uid()),
                },
                uid: Some(c.uid()),
            },
            Err(_) => Peer {
                operator: "unknown local peer".into(),
                uid: None,
            },
        }
    }
}

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Peer {
            operator: format!("token holder at {}", stream.remote_addr()),
            uid: None,
        }
    }
}

/// Counters for `/metrics`, fed by [`MeteredLog`].
#[derive(Default)]
pub struct Metrics {
    appends: AtomicU64,
    append_micros: AtomicU64,
    append_buckets: [AtomicU64; 6],
    steps: AtomicU64,
    retries: AtomicU64,
    compensations: AtomicU64,
}

const BUCKETS_US: [u64; 6] = [250, 500, 1000, 5000, 25_000, 100_000];

/// The log with counters around `append`.
pub struct MeteredLog {
    inner: Arc<dyn EventLog>,
    metrics: Arc<Metrics>,
}

impl EventLog for MeteredLog {
    fn append(
        &self,
        run: RunId,
        events: Vec<Event>,
    ) -> BoxFuture<'static, Result<Vec<Record>, log::Error>> {
        let m = self.metrics.clone();
        for e in &events {
            match e {
                Event::StepScheduled { .. } => m.steps.fetch_add(1, Ordering::Relaxed),
                Event::AttemptFailed {
                    next_retry_at: Some(_),
                    ..
                } => m.retries.fetch_add(1, Ordering::Relaxed),
                Event::CompensationStarted { .. } => {
                    m.compensations.fetch_add(1, Ordering::Relaxed)
                }
                _ => 0,
            };
        }
        let fut = self.inner.append(run, events);
        Box::pin(async move {
            let start = Instant::now();
            let r = fut.await;
            let us = start.elapsed().as_micros() as u64;
            m.appends.fetch_add(1, Ordering::Relaxed);
            m.append_micros.fetch_add(us, Ordering::Relaxed);
            for (i, b) in BUCKETS_US.iter().enumerate() {
                if us <= *b {
                    m.append_buckets[i].fetch_add(1, Ordering::Relaxed);
                }
            }
            r
        })
    }
    fn read(&self, run: RunId) -> Result<Vec<Record>, log::Error> {
        self.inner.read(run)
    }
    fn open_runs(&self) -> Result<Vec<RunId>, log::Error> {
        self.inner.open_runs()
    }
    fn runs(&self) -> Result<Vec<RunId>, log::Error> {
        self.inner.runs()
    }
}

/// What the handlers share.
pub struct Daemon {
    engine: Engine,
    log: Arc<dyn EventLog>,
    metrics: Arc<Metrics>,
    own_uid: u32,
    token: Option<String>,
    schedules_path: PathBuf,
    schedules: Mutex<waymark_cli::schedule::ScheduleBook>,
    /// Cluster of each run this daemon knows to be unfinished (the per-cluster lock).
    clusters: Mutex<BTreeMap<RunId, String>>,
}

type Shared = Arc<Daemon>;

/// An API error: HTTP status, exit code for the CLI, message.
struct ApiError(StatusCode, u8, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(serde_json::json!({ "error": self.2, "code": self.1 })),
        )
            .into_response()
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        let (code, msg) = crate::env::classify(&e);
        let status = match code {
            2 => StatusCode::BAD_REQUEST,
            3 => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, code, msg)
    }
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
    match peer.uid {
        Some(uid) if uid != d.own_uid && uid != 0 => Err(ApiError(
            StatusCode::FORBIDDEN,
            2,
            format!(
                "uid {uid} may not use this daemon (it runs as uid {})",
                d.own_uid
            ),
        )),
        _ => Ok(()),
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

#[derive(Deserialize)]
struct StartBody {
    workflow: String,
    inventory: Inventory,
}

async fn start(
    State(d): State<Shared>,
    ConnectInfo(p): ConnectInfo<Peer>,
    Json(b): Json<StartBody>,
) -> Result<Response, ApiError> {
    let run = start_run(&d, &b.workflow, &b.inventory, &p.operator).await?;
    Ok(Json(serde_json::json!({ "run": run.to_string() })).into_response())
}

/// Starts a run unless its cluster already has one going.
async fn start_run(
    d: &Daemon,
    workflow: &str,
    inv: &Inventory,
    by: &str,
) -> Result<RunId, ApiError> {
    refresh_clusters(d);
    let busy = d
        .clusters
        .lock()
        .expect("clusters lock")
        .iter()
        .find(|(_, c)| **c == inv.cluster.name)
        .map(|(r, _)| *r);
    if let Some(other) = busy {
        return Err(ApiError(
            StatusCode::CONFLICT,
            1,
            format!(
                "cluster {} already has run {other} going; one maintenance run per cluster at a time (`waymark attach {other}`)",
                inv.cluster.name
            ),
        ));
    }
    let input =
        Payload::encode(inv).map_err(|e| ApiError(StatusCode::BAD_REQUEST, 2, e.to_string()))?;
    let run = d
        .engine
        .start_named(workflow, input, by)
        .await
        .map_err(|e| ApiError::from(anyhow::Error::from(e)))?;
    d.clusters
        .lock()
        .expect("clusters lock")
        .insert(run, inv.cluster.name.clone());
    Ok(run)
}

/// Brings the per-cluster lock table up to date with the log's unfinished runs.
fn refresh_clusters(d: &Daemon) {
    let open: BTreeSet<RunId> = d.log.open_runs().unwrap_or_default().into_iter().collect();
    let mut clusters = d.clusters.lock().expect("clusters lock");
    clusters.retain(|r, _| open.contains(r));
    for run in open {
        if clusters.contains_key(&run) {
            continue;
        }
        if let Ok(records) = d.log.read(run) {
            if let Ok(st) = RunState::from_records(&records) {
                if let Ok(inv) = st.input.decode::<Inventory>() {
                    clusters.insert(run, inv.cluster.name);
                }
            }
        }
    }
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

#[derive(Deserialize)]
struct SignalBody {
    signal: String,
    reason: Option<String>,
}

async fn signal(
    State(d): State<Shared>,
    ConnectInfo(p): ConnectInfo<Peer>,
    AxPath(run): AxPath<String>,
    Json(b): Json<SignalBody>,
) -> Result<Response, ApiError> {
    let id = run_id(&d, &run)?;
    if !["approve", "pause", "resume", "cancel"].contains(&b.signal.as_str()) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            2,
            format!("unknown signal {:?}", b.signal),
        ));
    }
    let payload = Payload::encode(&b.reason.unwrap_or_default())
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, 2, e.to_string()))?;
    d.engine
        .signal(id, &b.signal, payload, &p.operator)
        .await
        .map_err(|e| ApiError::from(anyhow::Error::from(e)))?;
    Ok(Json(serde_json::json!({ "run": id.to_string(), "signal": b.signal })).into_response())
}

async fn replay(
    State(d): State<Shared>,
    AxPath(run): AxPath<String>,
) -> Result<Response, ApiError> {
    let id = run_id(&d, &run)?;
    let report = d
        .engine
        .replay(id)
        .await
        .map_err(|e| ApiError::from(anyhow::Error::from(e)))?;
    Ok(Json(crate::commands::replay_json(&report)).into_response())
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
    let mut by_state: BTreeMap<String, u64> =
        api::STATES.iter().map(|s| ((*s).to_owned(), 0)).collect();
    if let Ok(list) = api::list(d.log.as_ref(), None, None) {
        for r in list.runs {
            *by_state.entry(r.state).or_default() += 1;
        }
    }
    let m = &d.metrics;
    let mut out =
        String::from("# HELP waymark_runs Runs in the log by state.\n# TYPE waymark_runs gauge\n");
    for (s, n) in by_state {
        out.push_str(&format!("waymark_runs{{state=\"{s}\"}} {n}\n"));
    }
    let counter = |out: &mut String, name: &str, help: &str, v: u64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
        ));
    };
    counter(
        &mut out,
        "waymark_steps_total",
        "Steps scheduled since the daemon started.",
        m.steps.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "waymark_retries_total",
        "Attempts that failed and were retried.",
        m.retries.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "waymark_compensations_total",
        "Runs that started compensating.",
        m.compensations.load(Ordering::Relaxed),
    );
    out.push_str("# HELP waymark_append_seconds Latency of durable appends to the event log.\n# TYPE waymark_append_seconds histogram\n");
    for (i, b) in BUCKETS_US.iter().enumerate() {
        out.push_str(&format!(
            "waymark_append_seconds_bucket{{le=\"{}\"}} {}\n",
            *b as f64 / 1e6,
            m.append_buckets[i].load(Ordering::Relaxed)
        ));
    }
    let n = m.appends.load(Ordering::Relaxed);
    out.push_str(&format!(
        "waymark_append_seconds_bucket{{le=\"+Inf\"}} {n}\n"
    ));
    out.push_str(&format!(
        "waymark_append_seconds_sum {}\n",
        m.append_micros.load(Ordering::Relaxed) as f64 / 1e6
    ));
    out.push_str(&format!("waymark_append_seconds_count {n}\n"));
    ([("content-type", "text/plain; version=0.0.4")], out).into_response()
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
            2,
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
        .route("/v1/runs/{run}/replay", get(replay))
        .route("/v1/verify", get(verify))
        .route("/metrics", get(metrics))
        .merge(crate::daemon_schedules::routes())
        .route_layer(axum::middleware::from_fn_with_state(d, owner_only))
}

/// The daemon's socket in a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("waymark.sock")
}

fn bind_owner_only(path: &Path) -> anyhow::Result<UnixListener> {
    // We hold the data directory's lock, so a socket file left there is stale.
    let _ = std::fs::remove_file(path);
    #[allow(unsafe_code)]
    // SAFETY: umask(2) only changes this process's file-creation mask; restored right after.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    #[allow(unsafe_code)]
    // SAFETY: as above.
    unsafe {
        libc::umask(old);
    }
    let l = bound.with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(opts: Options) -> anyhow::Result<ExitCode> {
    let durable = crate::commands::open_log(&opts.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "{e:#}; if a daemon is already running on this directory, use it (`waymark ls`)"
        )
    })?;
    let metrics = Arc::new(Metrics::default());
    let log: Arc<dyn EventLog> = Arc::new(MeteredLog {
        inner: durable,
        metrics: metrics.clone(),
    });
    let engine = waymark_workflows::register(Engine::builder(log.clone())).build();
    let report = engine.resume_all()?;
    tracing::info!(resumed = report.resumed.len(), "resumed unfinished runs");
    for (run, e) in &report.refused {
        tracing::error!(%run, "run not resumed: {e}");
    }
    let token = match &opts.token_file {
        Some(f) => {
            let t = std::fs::read_to_string(f)
                .with_context(|| format!("reading the token file {}", f.display()))?;
            let t = t.trim().to_owned();
            anyhow::ensure!(
                t.len() >= 16,
                "the token in {} is too short (16 characters at least)",
                f.display()
            );
            Some(t)
        }
        None => None,
    };
    anyhow::ensure!(
        opts.tcp.is_none() || token.is_some(),
        "--listen-tcp needs --token-file: TCP clients must present a bearer token"
    );
    let schedules_path = opts.data_dir.join("schedules.json");
    let book = waymark_cli::schedule::ScheduleBook::load(&schedules_path)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    #[allow(unsafe_code)]
    // SAFETY: getuid(2) has no preconditions.
    let own_uid = unsafe { libc::getuid() };
    let d: Shared = Arc::new(Daemon {
        engine: engine.clone(),
        log,
        metrics,
        own_uid,
        token,
        schedules_path,
        schedules: Mutex::new(book),
        clusters: Mutex::new(BTreeMap::new()),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let sock = socket_path(&opts.data_dir);
    let unix = bind_owner_only(&sock)?;
    let app = router(d.clone()).with_state(d.clone());
    let unix_task = tokio::spawn(
        axum::serve(
            unix,
            app.clone().into_make_service_with_connect_info::<Peer>(),
        )
        .with_graceful_shutdown(stopped(stop_rx.clone()))
        .into_future(),
    );
    let tcp_task = match opts.tcp {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            tracing::info!("TCP API on {} (bearer token required)", l.local_addr()?);
            let app = router(d.clone())
                .layer(axum::middleware::from_fn_with_state(
                    d.clone(),
                    require_token,
                ))
                .with_state(d.clone());
            Some(tokio::spawn(
                axum::serve(l, app.into_make_service_with_connect_info::<Peer>())
                    .with_graceful_shutdown(stopped(stop_rx.clone()))
                    .into_future(),
            ))
        }
        None => None,
    };
    let sched = tokio::spawn(crate::daemon_schedules::scheduler(
        d.clone(),
        opts.tick,
        stop_rx.clone(),
    ));
    tracing::info!(socket = %sock.display(), "serving (owner-only)");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!(
        "stopping: attempts in flight are journaled as interrupted and resume on the next start"
    );
    stop_tx.send_replace(true);
    engine.shutdown().await;
    let _ = sched.await;
    let _ = unix_task.await;
    if let Some(t) = tcp_task {
        let _ = t.await;
    }
    let _ = std::fs::remove_file(&sock);
    Ok(ExitCode::SUCCESS)
}

impl Daemon {
    pub(crate) fn schedules(&self) -> &Mutex<waymark_cli::schedule::ScheduleBook> {
        &self.schedules
    }
    pub(crate) fn schedules_path(&self) -> &Path {
        &self.schedules_path
    }
    pub(crate) fn busy_clusters(&self) -> BTreeSet<String> {
        refresh_clusters(self);
        self.clusters
            .lock()
            .expect("clusters lock")
            .values()
            .cloned()
            .collect()
    }
    pub(crate) async fn start_scheduled(
        &self,
        workflow: &str,
        inv: &Inventory,
        by: &str,
    ) -> Result<RunId, String> {
        start_run(self, workflow, inv, by).await.map_err(|e| e.2)
    }
}
