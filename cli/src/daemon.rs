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
    /// The folder TCP clients may name inventories in (`schedule add`); none: they may not.
    pub inventory_dir: Option<PathBuf>,
}

/// Who is calling.
#[derive(Clone, Debug)]
pub struct Peer {
    /// As recorded in histories.
    pub operator: String,
    /// The unix peer's uid (TCP, or a unix peer whose credentials could not be read: none).
    pub uid: Option<u32>,
    /// Whether it came over the unix socket (TCP peers are checked by their bearer token).
    pub unix: bool,
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
                unix: true,
            },
            // Fail closed: a peer whose uid cannot be learnt is refused by `check_peer`.
            Err(e) => Peer {
                operator: format!("unknown local peer ({e})"),
                uid: None,
                unix: true,
            },
        }
    }
}

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Peer {
            operator: format!("token holder at {}", stream.remote_addr()),
            uid: None,
            unix: false,
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
    /// The per-cluster lock: held from the check of who holds a cluster until the new run's
    /// `RunStarted` is durable, so two starts (API or schedule) never both pass the check. It
    /// guards the runs known to be ended for good (skipped by later checks).
    starting: tokio::sync::Mutex<BTreeSet<RunId>>,
    /// The unix socket (named in errors).
    socket: PathBuf,
    /// Where TCP clients may name inventories for `schedule add` (none: they may not).
    inventory_dir: Option<PathBuf>,
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
    match peer_refusal(d.own_uid, &d.socket, peer) {
        Some(why) => Err(ApiError(StatusCode::FORBIDDEN, 2, why)),
        None => Ok(()),
    }
}

/// Why a peer may not use the daemon, if it may not. Fails closed: a unix peer whose
/// credentials could not be read is refused (TCP peers are checked by their token instead).
fn peer_refusal(own_uid: u32, socket: &Path, peer: &Peer) -> Option<String> {
    match peer.uid {
        None if peer.unix => Some(format!(
            "the daemon could not read this connection's peer credentials ({}), so it refuses \
             it; connect as uid {own_uid} through {}",
            peer.operator,
            socket.display()
        )),
        Some(uid) if uid != own_uid && uid != 0 => Some(format!(
            "uid {uid} may not use this daemon (it runs as uid {own_uid})"
        )),
        _ => None,
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

/// Checks an inventory sent over the API with the same validation `Inventory::load` applies
/// (the CLI validated it too, but the daemon trusts no client).
fn validate_inventory(inv: &Inventory, by: &str) -> Result<(), ApiError> {
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, 2, m);
    let text = toml::to_string(inv)
        .map_err(|e| bad(format!("the inventory sent by {by} cannot be checked: {e}")))?;
    let name = PathBuf::from(format!("(inventory sent by {by})"));
    Inventory::parse(&name, &text)
        .map(|_| ())
        .map_err(|e| bad(format!("{e}; fix the inventory file and start again")))
}

async fn start(
    State(d): State<Shared>,
    ConnectInfo(p): ConnectInfo<Peer>,
    Json(b): Json<StartBody>,
) -> Result<Response, ApiError> {
    validate_inventory(&b.inventory, &p.operator)?;
    let run = start_run(&d, &b.workflow, &b.inventory, &p.operator).await?;
    Ok(Json(serde_json::json!({ "run": run.to_string() })).into_response())
}

/// Starts a run unless its cluster is held (see [`api::ClusterLocks`]): the check and the start
/// happen under one lock, so concurrent starts for a cluster (API or schedules) start one run.
async fn start_run(
    d: &Daemon,
    workflow: &str,
    inv: &Inventory,
    by: &str,
) -> Result<RunId, ApiError> {
    let mut settled = d.starting.lock().await;
    let locks = api::ClusterLocks::scan(d.log.as_ref(), &mut settled);
    if let Some(holder) = locks.holder(&inv.cluster.name) {
        return Err(ApiError(
            StatusCode::CONFLICT,
            1,
            holder.explain(&inv.cluster.name),
        ));
    }
    let input =
        Payload::encode(inv).map_err(|e| ApiError(StatusCode::BAD_REQUEST, 2, e.to_string()))?;
    let run = d
        .engine
        .start_named(workflow, input, by)
        .await
        .map_err(|e| ApiError::from(anyhow::Error::from(e)))?;
    drop(settled);
    Ok(run)
}

#[derive(Deserialize)]
struct ResolveBody {
    note: String,
}

/// Records that an operator checked (and repaired) the estate after a run ended with its
/// compensation incomplete: the run's cluster is free again.
async fn resolve(
    State(d): State<Shared>,
    ConnectInfo(p): ConnectInfo<Peer>,
    AxPath(run): AxPath<String>,
    Json(b): Json<ResolveBody>,
) -> Result<Response, ApiError> {
    let id = run_id(&d, &run)?;
    crate::commands::check_note(&b.note).map_err(ApiError::from)?;
    let _guard = d.starting.lock().await;
    d.engine
        .resolve(id, &p.operator, &b.note)
        .await
        .map_err(|e| ApiError::from(anyhow::Error::from(e)))?;
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
    let list = match api::list(d.log.as_ref(), None, None) {
        Ok(l) => l,
        Err(e) => {
            // Fail loudly: a scrape that cannot count the runs must not report zero.
            return ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                3,
                format!("cannot list the runs of the log: {e:#}; `waymark verify` checks it"),
            )
            .into_response();
        }
    };
    let damaged = list.damaged.len();
    for r in list.runs {
        *by_state.entry(r.state).or_default() += 1;
    }
    let m = &d.metrics;
    let mut out =
        String::from("# HELP waymark_runs Runs in the log by state.\n# TYPE waymark_runs gauge\n");
    for (s, n) in by_state {
        out.push_str(&format!("waymark_runs{{state=\"{s}\"}} {n}\n"));
    }
    out.push_str(&format!(
        "# HELP waymark_runs_damaged Runs whose history does not load (`waymark verify`).\n\
         # TYPE waymark_runs_damaged gauge\nwaymark_runs_damaged {damaged}\n"
    ));
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
        .route("/v1/runs/{run}/resolve", post(resolve))
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

/// Reads the bearer token, refusing a file others could read or that another user owns (as ssh
/// does for private keys).
fn read_token(file: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(file)
        .with_context(|| format!("reading the token file {}", file.display()))?;
    #[allow(unsafe_code)]
    // SAFETY: geteuid(2) has no preconditions.
    let own = unsafe { libc::geteuid() };
    anyhow::ensure!(
        meta.uid() == own,
        "the token file {} belongs to uid {}, not to the daemon's user (uid {own}): \
         `chown {own} {}` and `chmod 600 {}`",
        file.display(),
        meta.uid(),
        file.display(),
        file.display()
    );
    let group_and_others = meta.mode() & 0o077;
    anyhow::ensure!(
        group_and_others == 0,
        "the token file {} is readable by others (mode {:o}): `chmod 600 {}`",
        file.display(),
        meta.mode() & 0o777,
        file.display()
    );
    let t = std::fs::read_to_string(file)
        .with_context(|| format!("reading the token file {}", file.display()))?;
    let t = t.trim().to_owned();
    anyhow::ensure!(
        t.len() >= 16,
        "the token in {} is too short (16 characters at least)",
        file.display()
    );
    Ok(t)
}

/// Runs the daemon until SIGTERM or SIGINT. Every setting is checked and every listener bound
/// before any run is resumed: a bad setting exits with no driver started.
pub async fn run(opts: Options) -> anyhow::Result<ExitCode> {
    // Handlers first: a SIGTERM at any point of the start (even while runs are being resumed)
    // is then a clean stop, never the default action killing drivers mid-attempt.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    anyhow::ensure!(
        opts.tcp.is_none() || opts.token_file.is_some(),
        "--listen-tcp needs --token-file: TCP clients must present a bearer token"
    );
    let token = opts.token_file.as_deref().map(read_token).transpose()?;
    let inventory_dir = match &opts.inventory_dir {
        Some(dir) => Some(std::fs::canonicalize(dir).with_context(|| {
            format!("--inventory-dir {}: not a readable folder", dir.display())
        })?),
        None => None,
    };
    let durable = crate::commands::open_log(&opts.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "{e:#}; if a daemon is already running on this directory, use it (`waymark ls`)"
        )
    })?;
    let schedules_path = opts.data_dir.join("schedules.json");
    let book = waymark_cli::schedule::ScheduleBook::load(&schedules_path)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let sock = socket_path(&opts.data_dir);
    let unix = bind_owner_only(&sock)?;
    let tcp = match opts.tcp {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr} (--listen-tcp)"))?;
            let local = l.local_addr()?;
            if !local.ip().is_loopback() {
                tracing::warn!(
                    "TCP API on {local} is plaintext HTTP: the bearer token crosses the network \
                     in clear; serve it on loopback or behind TLS termination"
                );
            }
            tracing::info!("TCP API on {local} (bearer token required)");
            Some(l)
        }
        None => None,
    };
    let metrics = Arc::new(Metrics::default());
    let log: Arc<dyn EventLog> = Arc::new(MeteredLog {
        inner: durable,
        metrics: metrics.clone(),
    });
    let engine = waymark_workflows::register(Engine::builder(log.clone())).build();
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
        starting: tokio::sync::Mutex::new(BTreeSet::new()),
        socket: sock.clone(),
        inventory_dir,
    });
    let report = engine.resume_all()?;
    tracing::info!(resumed = report.resumed.len(), "resumed unfinished runs");
    for (run, e) in &report.refused {
        tracing::error!(%run, "run not resumed: {e}");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let app = router(d.clone()).with_state(d.clone());
    let unix_task = tokio::spawn(
        axum::serve(
            unix,
            app.clone().into_make_service_with_connect_info::<Peer>(),
        )
        .with_graceful_shutdown(stopped(stop_rx.clone()))
        .into_future(),
    );
    let tcp_task = tcp.map(|l| {
        let app = router(d.clone())
            .layer(axum::middleware::from_fn_with_state(
                d.clone(),
                require_token,
            ))
            .with_state(d.clone());
        tokio::spawn(
            axum::serve(l, app.into_make_service_with_connect_info::<Peer>())
                .with_graceful_shutdown(stopped(stop_rx.clone()))
                .into_future(),
        )
    });
    let sched = tokio::spawn(crate::daemon_schedules::scheduler(
        d.clone(),
        opts.tick,
        stop_rx.clone(),
    ));
    tracing::info!(socket = %sock.display(), "serving (owner-only)");
    tokio::select! {
        _ = interrupt.recv() => {}
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
    /// The clusters among `known` that may not start a run now (all of them if the log cannot
    /// tell: fail closed).
    pub(crate) async fn busy_clusters(&self, known: Vec<String>) -> BTreeSet<String> {
        let mut settled = self.starting.lock().await;
        api::ClusterLocks::scan(self.log.as_ref(), &mut settled).busy(known)
    }
    pub(crate) fn inventory_dir(&self) -> Option<&Path> {
        self.inventory_dir.as_deref()
    }
    /// Starts the run of a schedule's fire time, unless one was started for it already (a crash
    /// between a start and the save of the schedules). Errors: whether the cluster was held, and
    /// the message.
    pub(crate) async fn start_scheduled(
        &self,
        workflow: &str,
        inv: &Inventory,
        by: &str,
        fire_time: chrono::DateTime<chrono::Utc>,
    ) -> Result<RunId, (bool, String)> {
        if let Some(run) = started_for(self.log.as_ref(), by, fire_time) {
            tracing::info!("run {run} was already started by {by}");
            return Ok(run);
        }
        start_run(self, workflow, inv, by)
            .await
            .map_err(|e| (e.0 == StatusCode::CONFLICT, e.2))
    }
}

/// A run started by `by` (a schedule's fire time) at or after `fire_time`, if any: run ids are
/// UUID v7, so only runs created since then are read.
fn started_for(
    log: &dyn EventLog,
    by: &str,
    fire_time: chrono::DateTime<chrono::Utc>,
) -> Option<RunId> {
    let since = u64::try_from(fire_time.timestamp())
        .unwrap_or(0)
        .saturating_sub(1);
    log.runs().ok()?.into_iter().find(|run| {
        run.0
            .get_timestamp()
            .is_some_and(|t| t.to_unix().0 >= since)
            && log.read(*run).ok().is_some_and(|h| {
                h.first().is_some_and(|r| {
                    matches!(&r.event, Event::RunStarted { started_by, .. } if started_by == by)
                })
            })
    })
}

#[cfg(test)]
mod tests {
    use super::{peer_refusal, Peer};
    use std::path::Path;

    fn peer(uid: Option<u32>, unix: bool) -> Peer {
        Peer {
            operator: "someone".into(),
            uid,
            unix,
        }
    }

    /// Issue 8, item 11: a unix peer whose `peer_cred()` failed (`uid: None`) passed the check.
    #[test]
    fn a_unix_peer_without_credentials_is_refused() {
        let sock = Path::new("/data/waymark.sock");
        let why = peer_refusal(1000, sock, &peer(None, true)).expect("refused");
        assert!(
            why.contains("peer credentials") && why.contains("uid 1000"),
            "{why}"
        );
        assert!(peer_refusal(1000, sock, &peer(Some(1001), true)).is_some());
        assert_eq!(peer_refusal(1000, sock, &peer(Some(1000), true)), None);
        assert_eq!(peer_refusal(1000, sock, &peer(Some(0), true)), None);
        // TCP peers have no uid; their bearer token is checked by its own layer.
        assert_eq!(peer_refusal(1000, sock, &peer(None, false)), None);
    }
}
