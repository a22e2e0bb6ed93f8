//! `waymark daemon`: owns the event log for months, resumes every unfinished run at start, runs
//! scheduled maintenance, and serves the API over a unix socket (owner-only; the peer's user is
//! recorded as the operator) and optionally over TCP with a bearer token.
//!
//! [`prepare`] checks every setting and binds every listener (nothing is resumed yet);
//! [`serve`] resumes the runs and serves until its shutdown future completes; [`run`] is the
//! two with SIGTERM/SIGINT as the shutdown (what `waymark daemon` calls). Tests call `serve`
//! in-process with listeners of their own.

pub mod metrics;
pub mod ownership;
pub mod peer;
mod routes;
mod schedules;
mod state;
pub mod web;

use std::collections::BTreeSet;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpListener, UnixListener};
use waymark_engine::Engine;

use crate::exit::{usage, Exit, ExitStatus};
use crate::paths::{schedules_path, socket_path};
use crate::schedule::ScheduleBook;
use crate::store::{Opener, Store};

pub use metrics::{MeteredLog, Metrics};
pub use peer::Peer;

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
    /// Serve the web UI here (`--http`; loopback unless `http_allow_remote`).
    pub http: Option<SocketAddr>,
    /// Allow `--http` on an address other than loopback (behind TLS termination).
    pub http_allow_remote: bool,
    /// Webhooks told about every run's transitions (`--notify`; [`crate::notify`]).
    pub notify: Vec<crate::notify::Webhook>,
    /// Where runs are journaled (`--store`): the data directory's log, or a shared store.
    pub store: Store,
    /// This daemon's name in a shared store (`--daemon-id`).
    pub daemon_id: String,
    /// How long its leases last in a shared store (`--lease-ttl`).
    pub lease_ttl: Duration,
}

/// The lease of a daemon on a shared store without `--lease-ttl`.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);

/// Where the daemon serves: its unix socket (and the path, named in errors), and TCP.
#[derive(Debug)]
pub struct Listeners {
    /// The owner-only unix socket ([`bind_owner_only`]) and its path.
    pub unix: (UnixListener, PathBuf),
    /// TCP (every request then needs the bearer token of [`Config::token`]).
    pub tcp: Option<TcpListener>,
    /// The web UI's listener (`--http`).
    pub http: Option<TcpListener>,
}

/// What the daemon needs besides its listeners and engine.
pub struct Config {
    /// The bearer token TCP clients must send (checked, [`read_token`]); none: no TCP.
    pub token: Option<String>,
    /// The schedules, as loaded, and the file they are saved to.
    pub schedules: (ScheduleBook, PathBuf),
    /// How often the scheduler looks at the schedules.
    pub tick: Duration,
    /// Where TCP clients may name inventories (canonical); none: they may not.
    pub inventory_dir: Option<PathBuf>,
    /// The counters of the engine's log ([`MeteredLog::wrap`]).
    pub metrics: Arc<Metrics>,
    /// The web UI's login token and sessions, when it is served ([`web::Access::login_url`]).
    pub web: Option<Arc<web::Access>>,
    /// Webhooks told about every run's transitions (their URLs checked readable).
    pub notify: Vec<crate::notify::Webhook>,
    /// With a shared store: this daemon's leases, renewed and taken over by
    /// [`ownership::keep_leases`]; none: the embedded store, one owner.
    pub leases: Option<Arc<dyn ownership::Leases>>,
    /// The shared store itself (its cluster claims), when it is one.
    pub shared_store: Option<waymark_store_pg::PgBackend>,
}

/// `--listen-tcp`: a bare port binds loopback only; otherwise an address like `0.0.0.0:7233`.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse()
        .map_err(|_| format!("{text:?} is neither a port nor an address like 127.0.0.1:7233"))
}

/// A daemon ready to serve: every setting checked, every listener bound, the engine built on
/// the data directory's log; no run resumed yet.
pub struct Prepared {
    /// Its listeners.
    pub listeners: Listeners,
    /// Its engine (every workflow and activity of this build).
    pub engine: Engine,
    /// Its settings.
    pub config: Config,
}

/// Checks every setting and binds every listener, in this order: token file, inventory folder,
/// the web UI's address, the data directory's log (its lock), the schedules file, the socket,
/// TCP, the web UI. A bad setting fails here, before any run is resumed.
pub async fn prepare(opts: &Options) -> anyhow::Result<Prepared> {
    if let Some(addr) = opts.http {
        web::check_bind(addr, opts.http_allow_remote).map_err(usage)?;
    }
    if opts.tcp.is_some() && opts.token_file.is_none() {
        return Err(usage(
            "--listen-tcp needs --token-file: TCP clients must present a bearer token",
        ));
    }
    let token = opts.token_file.as_deref().map(read_token).transpose()?;
    for webhook in &opts.notify {
        webhook
            .read_url()
            .map_err(|e| usage(format!("--notify: {e}")))?;
    }
    let inventory_dir = match &opts.inventory_dir {
        Some(dir) => Some(std::fs::canonicalize(dir).with_context(|| {
            format!("--inventory-dir {}: not a readable folder", dir.display())
        })?),
        None => None,
    };
    let in_use = |e: anyhow::Error| {
        Exit::error(
            ExitStatus::Unusable,
            format!(
                "{e:#}; if a daemon is already running on this directory, use it (`waymark ls`)"
            ),
        )
    };
    let (opener, lock) = match &opts.store {
        Store::Embedded => (Opener::Command, None),
        Store::Postgres { .. } => {
            // The data directory holds this daemon's socket and schedules: one daemon each.
            let lock = crate::paths::lock_data_dir(&opts.data_dir).map_err(in_use)?;
            let identity = waymark_store_pg::Identity {
                name: opts.daemon_id.clone(),
                incarnation: uuid::Uuid::new_v4(),
                host: crate::store::hostname(),
                pid: std::process::id(),
                api: opts.tcp.map(|a| a.to_string()),
            };
            let opener = Opener::Daemon {
                identity,
                lease_ttl: opts.lease_ttl,
            };
            (opener, Some(lock))
        }
    };
    // Before the open, which takes the leases of this daemon's own open runs.
    let leases_taken_at = std::time::Instant::now();
    let store_opened = crate::store::open(&opts.data_dir, &opts.store, &opener).map_err(|e| {
        if opts.store.is_shared() {
            Exit::error(ExitStatus::Unusable, format!("{e:#}"))
        } else {
            in_use(e)
        }
    })?;
    let leases: Option<Arc<dyn ownership::Leases>> = match (&store_opened.shared, &opener) {
        (Some(backend), Opener::Daemon { identity, .. }) => {
            tracing::info!(
                store = %opts.store.display(),
                daemon = %identity.name,
                lease_ttl = ?opts.lease_ttl,
                "journaling in the shared store"
            );
            Some(Arc::new(ownership::PgLeases {
                backend: backend.clone(),
                incarnation: identity.incarnation,
                ttl: opts.lease_ttl,
                taken_at: leases_taken_at,
            }))
        }
        _ => None,
    };
    let schedules_file = schedules_path(&opts.data_dir);
    let mut book = ScheduleBook::load(&schedules_file)?;
    if let Some(store) = &store_opened.shared {
        book = schedules::shared_book_at_start(store, book, &schedules_file)
            .map_err(|e| Exit::error(ExitStatus::Unusable, e))?;
    }
    let sock = socket_path(&opts.data_dir);
    let unix = bind_owner_only(&sock)?;
    let tcp = match opts.tcp {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr} (--listen-tcp)"))?,
        ),
        None => None,
    };
    let (http, web) = match opts.http {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr} (--http)"))?;
            let access = web::Access::new(l.local_addr()?, opts.http_allow_remote)
                .context("drawing the web UI's login token from /dev/urandom")?;
            (Some(l), Some(Arc::new(access)))
        }
        None => (None, None),
    };
    let shared_store = store_opened.shared.clone();
    let (log, metrics) = MeteredLog::wrap(store_opened.log);
    if leases.is_some() {
        metrics.set_shared_store(&opts.daemon_id);
    }
    let engine = waymark_workflows::register(Engine::builder(log)).build();
    // Held for as long as the process lives (the socket and schedules are this daemon's).
    std::mem::forget(lock);
    Ok(Prepared {
        listeners: Listeners {
            unix: (unix, sock),
            tcp,
            http,
        },
        engine,
        config: Config {
            token,
            schedules: (book, schedules_file),
            tick: opts.tick,
            inventory_dir,
            metrics,
            web,
            notify: opts.notify.clone(),
            leases,
            shared_store,
        },
    })
}

/// Runs the daemon until SIGTERM or SIGINT. Every setting is checked and every listener bound
/// before any run is resumed: a bad setting exits with no driver started.
pub async fn run(opts: Options) -> anyhow::Result<ExitStatus> {
    // Handlers first: a SIGTERM at any point of the start (even while runs are being resumed)
    // is then a clean stop, never the default action killing drivers mid-attempt.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let prepared = prepare(&opts).await?;
    let login_file = match prepared.config.web.as_ref().and_then(|w| w.login_url()) {
        Some(url) => hand_out_login_url(&opts.data_dir, &url)?,
        None => None,
    };
    let shutdown = async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
    };
    serve(
        prepared.listeners,
        prepared.engine,
        prepared.config,
        shutdown,
    )
    .await?;
    if let Some(file) = login_file {
        // Its token died with this process.
        let _ = std::fs::remove_file(file);
    }
    Ok(ExitStatus::Success)
}

/// Gives the web UI's first login URL to the daemon's owner, and to nobody else. On a
/// terminal (the owner started the daemon by hand), printed on stdout. Otherwise stdout may be
/// a journal that others read (systemd's is readable by `adm` and `systemd-journal`), and
/// whoever opens the URL first gets the session: it goes to an owner-only file in the data
/// directory, whose path (never the token) is said on stderr, with `waymark web-login`, which
/// asks the daemon for a new URL over its owner-only socket. Returns the file written, if any.
fn hand_out_login_url(data_dir: &Path, url: &str) -> anyhow::Result<Option<PathBuf>> {
    use std::io::IsTerminal as _;
    if std::io::stdout().is_terminal() {
        println!("{url}");
        eprintln!(
            "waymark: web UI: open the URL above once in your browser (it logs one browser in, \
             then is used up; `waymark web-login` prints a new one)"
        );
        return Ok(None);
    }
    let file = crate::paths::web_login_path(data_dir);
    crate::secret_file::write_owner_only(&file, &format!("{url}\n")).with_context(|| {
        format!(
            "writing the web UI's login URL to {} (owner-only); check that the data directory \
             is writable",
            file.display()
        )
    })?;
    let addr = url.split("/?").next().unwrap_or(url);
    eprintln!(
        "waymark: web UI on {addr}: its one-time login URL is in {} (owner-only, not printed: \
         stdout is not a terminal); `waymark web-login` (POST /v1/web/login-url on the \
         owner-only socket) prints a new one",
        file.display()
    );
    Ok(Some(file))
}

/// Resumes every unfinished run of `engine`, then serves the API on `listeners` and runs the
/// schedules until `shutdown` completes; then stops the drivers (each attempt in flight is
/// journaled as interrupted), the scheduler and the listeners, and removes the socket file.
pub async fn serve(
    listeners: Listeners,
    engine: Engine,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let Listeners {
        unix: (unix, sock),
        tcp,
        http,
    } = listeners;
    if let Some(l) = &tcp {
        let local = l.local_addr()?;
        if !local.ip().is_loopback() {
            tracing::warn!(
                "TCP API on {local} is plaintext HTTP: the bearer token crosses the network \
                 in clear; serve it on loopback or behind TLS termination"
            );
        }
        tracing::info!("TCP API on {local} (bearer token required)");
    }
    #[allow(unsafe_code)]
    // SAFETY: getuid(2) has no preconditions.
    let own_uid = unsafe { libc::getuid() };
    let (book, schedules_file) = config.schedules;
    let d = Arc::new(state::Daemon {
        engine: engine.clone(),
        log: engine.log().clone(),
        metrics: config.metrics,
        own_uid,
        token: config.token,
        schedules_path: schedules_file,
        schedules: Mutex::new(book),
        starting: tokio::sync::Mutex::new(BTreeSet::new()),
        socket: sock.clone(),
        inventory_dir: config.inventory_dir,
        shared_store: config.shared_store.clone(),
    });
    // Before any run is resumed or started: a run of this start may end at once, and a
    // transition journaled before its webhook's `since` is never sent.
    let notifications = schedules::open_notifier(&d.schedules_path, config.notify, config.tick);
    let report = match &config.leases {
        None => engine.resume_all()?,
        // The store's open runs are every daemon's: resume those this daemon holds (its own,
        // taken back at open); the others' are taken over only once their lease expires.
        Some(leases) => {
            let mut report = waymark_engine::runtime::ResumeReport::default();
            for run in engine.log().open_runs()? {
                if !leases.holds(run) {
                    continue;
                }
                match engine.resume(run) {
                    Ok(()) => report.resumed.push(run),
                    Err(e) => report.refused.push((run, e)),
                }
            }
            report
        }
    };
    tracing::info!(resumed = report.resumed.len(), "resumed unfinished runs");
    for (run, e) in &report.refused {
        tracing::error!(%run, "run not resumed: {e}");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let unix_task = tokio::spawn(
        axum::serve(
            unix,
            routes::unix_app(d.clone(), config.web.clone())
                .into_make_service_with_connect_info::<Peer>(),
        )
        .with_graceful_shutdown(stopped(stop_rx.clone()))
        .into_future(),
    );
    let tcp_task = tcp.map(|l| {
        tokio::spawn(
            axum::serve(
                l,
                routes::tcp_app(d.clone()).into_make_service_with_connect_info::<Peer>(),
            )
            .with_graceful_shutdown(stopped(stop_rx.clone()))
            .into_future(),
        )
    });
    let http_task = match (http, config.web) {
        (Some(l), Some(access)) => {
            tracing::info!(
                "web UI on http://{} (log in with the one-time URL given at start; \
                 `waymark web-login` prints a new one)",
                access.addr()
            );
            Some(tokio::spawn(
                axum::serve(
                    l,
                    web::app(d.clone(), access, stop_rx.clone())
                        .into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(stopped(stop_rx.clone()))
                .into_future(),
            ))
        }
        _ => None,
    };
    let notifier = notifications
        .map(|opened| tokio::spawn(schedules::notifier(d.clone(), opened, stop_rx.clone())));
    let sched = tokio::spawn(schedules::scheduler(
        d.clone(),
        config.tick,
        stop_rx.clone(),
    ));
    let lease_task = config.leases.clone().map(|leases| {
        tokio::spawn(ownership::keep_leases(
            engine.clone(),
            leases,
            d.metrics.clone(),
            stop_rx.clone(),
        ))
    });
    tracing::info!(socket = %sock.display(), "serving (owner-only)");
    shutdown.await;
    tracing::info!(
        "stopping: attempts in flight are journaled as interrupted and resume on the next start"
    );
    stop_tx.send_replace(true);
    if let Some(t) = lease_task {
        let _ = t.await;
    }
    engine.shutdown().await;
    if let Some(leases) = &config.leases {
        // After the shutdown journaled the attempts in flight: the runs are another daemon's
        // to take at once.
        let leases = leases.clone();
        match tokio::task::spawn_blocking(move || leases.release()).await {
            Ok(Ok(())) => tracing::info!("leases released: other daemons take the open runs"),
            Ok(Err(e)) => {
                tracing::warn!("releasing the leases failed (they expire on their own): {e}");
            }
            Err(e) => tracing::warn!("releasing the leases: the task failed: {e}"),
        }
    }
    let _ = sched.await;
    if let Some(t) = notifier {
        let _ = t.await;
    }
    let _ = unix_task.await;
    if let Some(t) = tcp_task {
        let _ = t.await;
    }
    if let Some(t) = http_task {
        let _ = t.await;
    }
    let _ = std::fs::remove_file(&sock);
    Ok(())
}

/// Binds the daemon's unix socket at `path` owner-only, without touching the process's umask
/// (which every thread shares: tests run daemons beside other work): the socket is bound in a
/// fresh owner-only folder beside `path`, made 0600, then renamed into place, so it is never
/// reachable by others, whatever the umask. A file already at `path` is removed first (the
/// caller holds the data directory's lock, so it is a stale socket).
pub fn bind_owner_only(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::DirBuilderExt;
    let _ = std::fs::remove_file(path);
    let folder = path.with_extension(format!("binding-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&folder);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&folder)
        .with_context(|| {
            format!(
                "creating {} to bind the daemon's socket; check that the data directory is \
                 writable",
                folder.display()
            )
        })?;
    let bound = (|| {
        let inside = folder.join("waymark.sock");
        let l =
            UnixListener::bind(&inside).with_context(|| format!("binding {}", inside.display()))?;
        std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("making {} owner-only", inside.display()))?;
        std::fs::rename(&inside, path)
            .with_context(|| format!("moving the daemon's socket to {}", path.display()))?;
        anyhow::Ok(l)
    })();
    let _ = std::fs::remove_dir_all(&folder);
    bound
}

/// Reads the bearer token, refusing a file others could read or that another user owns (as ssh
/// does for private keys).
pub fn read_token(file: &Path) -> anyhow::Result<String> {
    crate::secret_file::check_owner_only(file, "token file").map_err(anyhow::Error::msg)?;
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
