//! The event log on PostgreSQL (and on the PostgreSQL-compatible stores whose features
//! `ARCHITECTURE.md`, "PostgreSQL store", lists as checked): [`PgBackend`] implements the engine's
//! [`log::Backend`], so [`log::Log`] keeps its group commit, codec and hash chain, and each group
//! becomes one transaction.
//!
//! * Records are rows `(run, seq, bytes)` of `waymark_records`, `bytes` the codec's frame
//!   unchanged. Each run has a row in `waymark_runs`: open or not, the last stored `seq` (a
//!   history whose rows end before it lost its tail, which the hash chain alone cannot see),
//!   and its owner: a daemon name, a fencing `epoch` and a lease.
//! * Every append is conditional on the owner and the epoch this backend holds for the run, and
//!   on the tail the log staged against (`Backend::commit_checked`): a daemon whose run was
//!   taken over gets [`log::Error::Fenced`] for that run's appends, the others in the same group
//!   commit.
//! * The `Backend` trait is synchronous and is called from tokio workers, where no runtime may be
//!   blocked on. A private thread `waymark-pg` runs a current-thread runtime that owns the two
//!   connections: the writer (transactions, serialised) and the reader (pipelined reads). Each
//!   call sends it a job and waits for the answer, as the segment store waits for `fdatasync`.
//! * No password in the URL (it would be visible in `ps` and logs): it comes from a passfile.

// "PostgreSQL", "SQLSTATE", "CockroachDB" and "YugabyteDB" are names in prose, not code.
#![allow(clippy::doc_markdown)]

mod ownership;
pub mod pgpass;
pub mod test_server;
mod transfer;

pub use ownership::Identity;
pub use transfer::Imported;

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Statement};
use uuid::Uuid;
use waymark_engine::event::RunId;
use waymark_engine::log::{self, Backend, WriteBatch};

/// The migrations, in order: version, name, script. A script is never edited once released
/// (its crc32 is recorded when applied, and a changed one is refused).
pub const MIGRATIONS: &[(i32, &str, &str)] =
    &[(1, "0001_init", include_str!("../migrations/0001_init.sql"))];

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i32 = 1;

/// How many times a transaction that the server aborted for a serialisation failure or a
/// deadlock (SQLSTATE 40001, 40P01: certainly not committed) is tried again.
const RETRIES: u32 = 5;

/// Errors of opening or migrating a store (the log's own calls answer [`log::Error`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store's address or options are unusable.
    #[error("store {url}: {detail}")]
    Config {
        /// The address as given (it never holds a password: one that does is refused).
        url: String,
        /// What is wrong and what to do.
        detail: String,
    },
    /// The server could not be reached or refused the connection.
    #[error("store {url}: cannot connect: {detail}")]
    Connect {
        /// The address.
        url: String,
        /// The server's or the network's answer.
        detail: String,
    },
    /// The schema is missing, older or newer than this build's, or a migration failed.
    #[error("store {url}: {detail}")]
    Schema {
        /// The address.
        url: String,
        /// What is wrong and what to do.
        detail: String,
    },
}

/// What a new run claims in the store with its first record, in the same transaction: the cluster
/// it locks while it holds it (one maintenance run per cluster) and the schedule fire time it was
/// started for (each fire time starts at most one run across all daemons). Two runs claiming the
/// same cluster or fire time: the second is refused with [`log::Error::Claimed`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    /// The cluster the run locks (`waymark_runs.cluster`, held while `holds_cluster`).
    pub cluster: Option<String>,
    /// The fire time it was started for (`NAME@TIME`).
    pub fire_key: Option<String>,
}

/// Computes a new run's [`Claims`] from its first event (`RunStarted`); the CLI's reads the
/// inventory's cluster and the schedule's fire time, so the store stays ignorant of both.
#[derive(Clone)]
pub struct ClaimsHook(pub Arc<dyn Fn(&waymark_engine::event::Event) -> Claims + Send + Sync>);

impl std::fmt::Debug for ClaimsHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClaimsHook")
    }
}

/// How a daemon (or a tool) uses the store.
#[derive(Debug, Clone)]
pub struct Options {
    /// This daemon's name: the owner written on the runs it starts or takes over.
    pub daemon: String,
    /// How long a lease lasts past its last renewal (each append renews it too).
    pub lease_ttl: Duration,
    /// At open, and lazily for a run appended to without an epoch, take over the runs this
    /// daemon's name already owns (a restarted daemon: the same name is never held by two live
    /// daemons, slice 3's `waymark_daemons`).
    pub takeover_own: bool,
    /// The passfile (libpq format, mode 0600); `None`: `PGPASSFILE`, then `~/.pgpass`.
    pub password_file: Option<PathBuf>,
    /// What a new run claims (`None`: nothing).
    pub claims: Option<ClaimsHook>,
}

impl Options {
    /// Defaults for a daemon named `daemon`: a 15 s lease, its own runs taken over at open.
    pub fn new(daemon: impl Into<String>) -> Options {
        Options {
            daemon: daemon.into(),
            lease_ttl: Duration::from_secs(15),
            takeover_own: true,
            password_file: None,
            claims: None,
        }
    }
}

/// The event log's storage on PostgreSQL. Clones share the connections and the leases.
#[derive(Clone)]
pub struct PgBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBackend")
            .field("url", &self.inner.url)
            .field("daemon", &self.inner.options.daemon)
            .finish_non_exhaustive()
    }
}

struct Inner {
    url: Arc<str>,
    options: Options,
    jobs: Option<mpsc::UnboundedSender<Job>>,
    /// The epoch this backend holds for each run it may append to.
    leases: Mutex<HashMap<RunId, i64>>,
    /// What was counted (see [`Stats`]).
    stats: Mutex<Stats>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the thread, which drops its connections.
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the backend counted since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Transactions that committed records (one per group commit).
    pub commits: u64,
    /// Records committed.
    pub records: u64,
    /// Runs whose records were refused (fenced, or their tail moved).
    pub refused_runs: u64,
    /// Transactions tried again after a serialisation failure or deadlock.
    pub retries: u64,
}

type Job = Box<dyn FnOnce(Arc<Conns>) -> BoxFuture<'static, ()> + Send>;

impl PgBackend {
    /// Connects to the store at `url` (a `postgres://` URL or libpq `key=value` string, without a
    /// password), checks that its schema is this build's, and, with `options.takeover_own`, takes
    /// over the open runs this daemon's name owns (new epoch each).
    pub fn open(url: &str, options: Options) -> Result<PgBackend, Error> {
        let config = client_config(url, options.password_file.as_deref())?;
        let url: Arc<str> = Arc::from(url);
        let (tx, rx) = mpsc::unbounded_channel::<Job>();
        let conns = Arc::new(Conns {
            config,
            url: url.clone(),
            writer: tokio::sync::Mutex::new(None),
            reader: tokio::sync::Mutex::new(None),
        });
        let thread = std::thread::Builder::new()
            .name("waymark-pg".into())
            .spawn(move || connection_thread(&conns, rx))
            .map_err(|e| Error::Connect {
                url: url.to_string(),
                detail: format!("cannot start the waymark-pg thread: {e}"),
            })?;
        let backend = PgBackend {
            inner: Arc::new(Inner {
                url: url.clone(),
                options,
                jobs: Some(tx),
                leases: Mutex::new(HashMap::new()),
                stats: Mutex::new(Stats::default()),
                thread: Some(thread),
            }),
        };
        let version = backend
            .call(|c| async move { c.schema_version().await })
            .map_err(|e| open_failed(&url, &e))?;
        check_version(&url, version)?;
        if backend.inner.options.takeover_own {
            let owner = backend.inner.options.daemon.clone();
            let ttl = ttl_ms(&backend.inner.options);
            let taken = backend
                .call(move |c| async move { c.take_own_open(owner, ttl).await })
                .map_err(|e| open_failed(&url, &e))?;
            backend.leases().extend(taken);
        }
        Ok(backend)
    }

    /// Creates or upgrades the schema at `url` to this build's version, under a row lock so that
    /// two `waymark migrate` at once apply each script once. Returns the versions applied (empty:
    /// already current). A schema newer than this build is refused.
    pub fn migrate(url: &str, password_file: Option<&std::path::Path>) -> Result<Vec<i32>, Error> {
        let config = client_config(url, password_file)?;
        let url_owned = url.to_owned();
        on_private_runtime(move || async move { migrate_on(&config, &url_owned).await })
    }

    /// The store's address as given to [`PgBackend::open`].
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Takes `run` over for this daemon whoever owns it and whatever its lease (new epoch), as
    /// a takeover after an expired lease does. For tests and repair; returns the new epoch.
    pub fn take_over(&self, run: RunId) -> Result<i64, log::Error> {
        let owner = self.inner.options.daemon.clone();
        let ttl = ttl_ms(&self.inner.options);
        let epoch = self.call(move |c| async move { c.take_over(owner, ttl, run).await })?;
        self.leases().insert(run, epoch);
        Ok(epoch)
    }

    /// The epoch this backend holds for `run`, if any.
    pub fn epoch(&self, run: RunId) -> Option<i64> {
        self.leases().get(&run).copied()
    }

    /// What was counted since the backend was opened.
    pub fn stats(&self) -> Stats {
        *self.inner.stats.lock().expect("pg stats lock")
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, i64>> {
        self.inner
            .leases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on the connection thread and waits for its answer.
    fn call<T, F, Fut>(&self, f: F) -> Result<T, log::Error>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Conns>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, log::Error>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        let job: Job = Box::new(move |conns| {
            Box::pin(async move {
                let _ = tx.send(f(conns).await);
            })
        });
        let stopped = || {
            log::Error::Storage(format!(
                "store {}: the waymark-pg connection thread has stopped; restart waymark",
                self.inner.url
            ))
        };
        self.inner
            .jobs
            .as_ref()
            .ok_or_else(stopped)?
            .send(job)
            .map_err(|_| stopped())?;
        rx.recv().map_err(|_| stopped())?
    }
}

/// The connection thread: a current-thread runtime that runs each job as its own task, so reads
/// from several callers pipeline on the reader connection.
fn connection_thread(conns: &Arc<Conns>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("waymark-pg: cannot build its runtime: {e}");
            return;
        }
    };
    rt.block_on(async {
        while let Some(job) = rx.recv().await {
            tokio::spawn(job(conns.clone()));
        }
    });
}

/// Runs a future to completion on a runtime of its own, on a thread of its own (callable from
/// inside a runtime, where `block_on` would panic).
fn on_private_runtime<T, F, Fut>(f: F) -> T
where
    T: Send,
    F: FnOnce() -> Fut + Send,
    Fut: std::future::Future<Output = T>,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime")
                .block_on(f())
        })
        .join()
        .expect("the private runtime's thread panicked")
    })
}

/// The client configuration for `url`: refused when it holds a password or asks for TLS; the
/// password from the passfile; `synchronous_commit=on` (a commit is acknowledged only once its
/// WAL is flushed: "durable before acknowledged").
fn client_config(url: &str, password_file: Option<&std::path::Path>) -> Result<Config, Error> {
    let refuse = |detail: String| Error::Config {
        url: redact(url),
        detail,
    };
    let mut config = Config::from_str(url).map_err(|e| {
        refuse(format!(
            "not a PostgreSQL connection string ({e}); use postgres://USER@HOST:PORT/DATABASE"
        ))
    })?;
    if config.get_password().is_some() {
        return Err(refuse(
            "the address holds a password, which would be visible in the process list and the log; \
             remove it and put it in a passfile (libpq format `host:port:database:user:password`, \
             mode 0600) named by --store-password-file or PGPASSFILE, or in ~/.pgpass"
                .into(),
        ));
    }
    if !matches!(config.get_ssl_mode(), SslMode::Disable | SslMode::Prefer) {
        return Err(refuse(
            "TLS is not supported yet by waymark's PostgreSQL store; use sslmode=disable on a \
             trusted network (or a local socket), or a TLS tunnel"
                .into(),
        ));
    }
    let Some(user) = config.get_user().map(str::to_owned) else {
        return Err(refuse(
            "no user name; write it in the address (postgres://USER@HOST/DATABASE)".into(),
        ));
    };
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        _ => "localhost".to_owned(),
    };
    let target = pgpass::Target {
        host,
        port: config.get_ports().first().copied().unwrap_or(5432),
        database: config.get_dbname().unwrap_or(&user).to_owned(),
        user,
    };
    if let Some(path) = pgpass::passfile_path(password_file) {
        match pgpass::lookup(&path, &target, password_file.is_some()) {
            Ok(Some(pw)) => {
                config.password(pw);
            }
            Ok(None) => {}
            Err(e) => return Err(refuse(e)),
        }
    }
    let options = match config.get_options() {
        Some(o) if !o.trim().is_empty() => format!("{o} -c synchronous_commit=on"),
        _ => "-c synchronous_commit=on".to_owned(),
    };
    config.options(&options);
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    config.application_name("waymark");
    Ok(config)
}

/// `url` without its password field, for messages.
fn redact(url: &str) -> String {
    match Config::from_str(url) {
        Ok(c) if c.get_password().is_some() => {
            if let Some(rest) = url
                .strip_prefix("postgres://")
                .or(url.strip_prefix("postgresql://"))
            {
                if let Some((cred, host)) = rest.split_once('@') {
                    let user = cred.split(':').next().unwrap_or("");
                    return format!("postgres://{user}:***@{host}");
                }
            }
            "(a connection string holding a password)".into()
        }
        _ => url.to_owned(),
    }
}

/// An open that failed on the connection thread, said once: the storage error's own
/// `store URL:` prefix is dropped, the address being in [`Error::Connect`]'s message already.
fn open_failed(url: &str, e: &log::Error) -> Error {
    let detail = match e {
        log::Error::Storage(m) => m
            .strip_prefix(&format!("store {url}: "))
            .unwrap_or(m)
            .trim_start_matches("cannot connect: ")
            .to_owned(),
        other => other.to_string(),
    };
    Error::Connect {
        url: url.to_owned(),
        detail,
    }
}

fn check_version(url: &str, version: Option<i32>) -> Result<(), Error> {
    let detail = match version {
        Some(v) if v == SCHEMA_VERSION => return Ok(()),
        None => "has no waymark schema; create it with `waymark migrate`".to_owned(),
        Some(v) if v < SCHEMA_VERSION => format!(
            "has schema version {v}, older than this waymark's ({SCHEMA_VERSION}); upgrade it with `waymark migrate`"
        ),
        Some(v) => format!(
            "has schema version {v}, newer than this waymark reads (up to {SCHEMA_VERSION}); run a newer waymark"
        ),
    };
    Err(Error::Schema {
        url: url.to_owned(),
        detail,
    })
}

fn ttl_ms(options: &Options) -> i64 {
    i64::try_from(options.lease_ttl.as_millis()).unwrap_or(i64::MAX)
}

fn seq_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// What a PostgreSQL error says: the server's severity, SQLSTATE and message when it answered.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    s
}

/// Whether the server aborted the transaction for a reason that a retry may clear (it certainly
/// did not commit): serialisation failure, deadlock.
fn is_retryable(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    })
}

/// A group commit's runs opened by it, as one statement: (1) their rows (epoch 1, owned by this
/// daemon; a run already stored is not inserted) and the records of the runs inserted. Answers
/// the runs accepted and how many records were stored. Each statement modifies `waymark_runs`
/// once: CockroachDB refuses two modifying subqueries of one table in a statement (SQLSTATE 0A000,
/// cockroach#70731), hence two statements rather than one.
const SQL_OPEN_GROUP: &str = "WITH accepted AS ( \
       INSERT INTO waymark_runs (run, open, last_seq, owner, epoch, lease_expires_at, cluster, holds_cluster, fire_key) \
       SELECT n.run, NOT n.closes, n.last_seq, $1, 1, now() + $2::int8 * interval '1 millisecond', n.cluster, n.cluster IS NOT NULL, n.fire_key \
         FROM unnest($3::uuid[], $4::int8[], $5::bool[], $6::text[], $7::text[]) AS n(run, last_seq, closes, cluster, fire_key) \
       ON CONFLICT DO NOTHING RETURNING run), \
     stored AS ( \
       INSERT INTO waymark_records (run, seq, bytes) \
       SELECT w.run, w.seq, w.bytes FROM unnest($8::uuid[], $9::int8[], $10::bytea[]) AS w(run, seq, bytes) \
        WHERE w.run IN (SELECT run FROM accepted) \
       RETURNING 1) \
     SELECT run, (SELECT count(*) FROM stored) FROM accepted";

/// A group commit's runs already stored, as one statement: (2) the fenced update of their rows,
/// only where this daemon owns the run with the epoch it holds and the history ends where the
/// log staged it (it also renews the lease), and (3) the records of the runs updated.
const SQL_APPEND_GROUP: &str = "WITH accepted AS ( \
       UPDATE waymark_runs r SET last_seq = b.last_seq, open = r.open AND NOT b.closes, updated_at = now(), \
              lease_expires_at = now() + $2::int8 * interval '1 millisecond' \
         FROM unnest($3::uuid[], $4::int8[], $5::int8[], $6::int8[], $7::bool[]) AS b(run, epoch, prev_last_seq, last_seq, closes) \
        WHERE r.run = b.run AND r.owner = $1 AND r.epoch = b.epoch AND r.last_seq = b.prev_last_seq \
       RETURNING r.run), \
     stored AS ( \
       INSERT INTO waymark_records (run, seq, bytes) \
       SELECT w.run, w.seq, w.bytes FROM unnest($8::uuid[], $9::int8[], $10::bytea[]) AS w(run, seq, bytes) \
        WHERE w.run IN (SELECT run FROM accepted) \
       RETURNING 1) \
     SELECT run, (SELECT count(*) FROM stored) FROM accepted";
const SQL_WHY: &str = "SELECT r.run, r.owner, r.epoch, r.last_seq, (SELECT max(w.seq) FROM waymark_records w WHERE w.run = r.run) \
     FROM waymark_runs r WHERE r.run = ANY($1::uuid[])";
const SQL_TAKE_OWN: &str = "UPDATE waymark_runs SET epoch = epoch + 1, lease_expires_at = now() + $2::int8 * interval '1 millisecond', updated_at = now() \
     WHERE owner = $1 AND run = ANY($3::uuid[]) RETURNING run, epoch";

/// The writer connection and its prepared statements.
struct Writer {
    client: Client,
    open_group: Statement,
    append_group: Statement,
    why: Statement,
    take_own: Statement,
}

/// The reader connection and its prepared statements.
struct Reader {
    client: Client,
    scan: Statement,
    last: Statement,
    last_seq: Statement,
    open_runs: Statement,
    all_runs: Statement,
}

/// The connections, owned by the `waymark-pg` thread; each is (re)made when first needed after
/// it closed.
struct Conns {
    config: Config,
    url: Arc<str>,
    writer: tokio::sync::Mutex<Option<Writer>>,
    reader: tokio::sync::Mutex<Option<Arc<Reader>>>,
}

async fn connect(config: &Config, url: &str) -> Result<Client, String> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| format!("store {url}: cannot connect: {}", describe(&e)))?;
    let url = url.to_owned();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!("store {url}: connection closed: {}", describe(&e));
        }
    });
    Ok(client)
}

impl Conns {
    fn storage(&self, what: &str, e: &tokio_postgres::Error) -> log::Error {
        log::Error::Storage(format!("store {}: {what}: {}", self.url, describe(e)))
    }

    async fn reader(&self) -> Result<Arc<Reader>, log::Error> {
        let mut slot = self.reader.lock().await;
        if let Some(r) = slot.as_ref() {
            if !r.client.is_closed() {
                return Ok(r.clone());
            }
        }
        let client = connect(&self.config, &self.url)
            .await
            .map_err(log::Error::Storage)?;
        let prep = |sql: &'static str| client.prepare(sql);
        let (scan, last, last_seq, open_runs, all_runs) = futures::try_join!(
            prep("SELECT seq, bytes FROM waymark_records WHERE run = $1 ORDER BY seq"),
            prep("SELECT seq, bytes FROM waymark_records WHERE run = $1 ORDER BY seq DESC LIMIT 1"),
            prep("SELECT last_seq FROM waymark_runs WHERE run = $1"),
            prep("SELECT run FROM waymark_runs WHERE open ORDER BY run"),
            prep("SELECT run FROM waymark_runs ORDER BY run"),
        )
        .map_err(|e| self.storage("preparing the reader's statements", &e))?;
        let reader = Arc::new(Reader {
            client,
            scan,
            last,
            last_seq,
            open_runs,
            all_runs,
        });
        *slot = Some(reader.clone());
        Ok(reader)
    }

    async fn writer(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Writer>>, log::Error> {
        let mut slot = self.writer.lock().await;
        if slot.as_ref().is_some_and(|w| !w.client.is_closed()) {
            return Ok(slot);
        }
        *slot = None;
        let client = connect(&self.config, &self.url)
            .await
            .map_err(log::Error::Storage)?;
        let (open_group, append_group, why, take_own) = futures::try_join!(
            client.prepare(SQL_OPEN_GROUP),
            client.prepare(SQL_APPEND_GROUP),
            client.prepare(SQL_WHY),
            client.prepare(SQL_TAKE_OWN),
        )
        .map_err(|e| self.storage("preparing the writer's statements", &e))?;
        *slot = Some(Writer {
            client,
            open_group,
            append_group,
            why,
            take_own,
        });
        Ok(slot)
    }

    async fn schema_version(&self) -> Result<Option<i32>, log::Error> {
        // Its own connection: the reader's statements cannot be prepared before the tables exist.
        let client = connect(&self.config, &self.url)
            .await
            .map_err(log::Error::Storage)?;
        let exists = client
            .query_one(
                "SELECT to_regclass('waymark_schema_migrations') IS NOT NULL",
                &[],
            )
            .await
            .map_err(|e| self.storage("reading the schema version", &e))?;
        // A server without fsync acknowledges commits it may lose: said at every open.
        if let Ok(row) = client.query_one("SHOW fsync", &[]).await {
            let fsync: String = row.get(0);
            if fsync == "on" {
                tracing::info!("store {}: the server flushes its WAL (fsync=on)", self.url);
            } else {
                tracing::warn!(
                    "store {}: the server runs with fsync={fsync}: commits it acknowledges can be lost \
                     in a crash of its machine; set fsync=on in its postgresql.conf",
                    self.url
                );
            }
        }
        if !exists.get::<_, bool>(0) {
            return Ok(None);
        }
        let row = client
            .query_one("SELECT max(version) FROM waymark_schema_migrations", &[])
            .await
            .map_err(|e| self.storage("reading the schema version", &e))?;
        Ok(row.get(0))
    }

    async fn take_own_open(
        &self,
        owner: String,
        ttl: i64,
    ) -> Result<Vec<(RunId, i64)>, log::Error> {
        let mut slot = self.writer().await?;
        let w = slot.as_mut().expect("connected");
        let rows = w
            .client
            .query(
                "UPDATE waymark_runs SET epoch = epoch + 1, lease_expires_at = now() + $2::int8 * interval '1 millisecond', \
                 updated_at = now() WHERE owner = $1 AND open RETURNING run, epoch",
                &[&owner, &ttl],
            )
            .await
            .map_err(|e| self.storage("taking over this daemon's own runs", &e))?;
        Ok(rows
            .iter()
            .map(|r| (RunId(r.get::<_, Uuid>(0)), r.get::<_, i64>(1)))
            .collect())
    }

    async fn take_over(&self, owner: String, ttl: i64, run: RunId) -> Result<i64, log::Error> {
        let mut slot = self.writer().await?;
        let w = slot.as_mut().expect("connected");
        let row = w
            .client
            .query_opt(
                "UPDATE waymark_runs SET owner = $1, epoch = epoch + 1, \
                 lease_expires_at = now() + $2::int8 * interval '1 millisecond', updated_at = now() \
                 WHERE run = $3 RETURNING epoch",
                &[&owner, &ttl, &run.0],
            )
            .await
            .map_err(|e| self.storage(&format!("taking over run {run}"), &e))?;
        row.map(|r| r.get(0)).ok_or(log::Error::UnknownRun(run))
    }

    async fn scan_run(&self, run: RunId) -> Result<Vec<(u64, Vec<u8>)>, log::Error> {
        let r = self.reader().await?;
        let params: [&(dyn ToSql + Sync); 1] = [&run.0];
        // `last_seq` first, the records after it, one statement at a time: each statement is its
        // own snapshot, and a commit between the two must not look like lost records. Records up
        // to `last_seq` were committed with it, so the later read holds them (and perhaps more);
        // read the other way round, a commit in between showed `last_seq` past the records read.
        let last = r
            .client
            .query_opt(&r.last_seq, &params)
            .await
            .map_err(|e| self.storage(&format!("reading run {run}"), &e))?;
        let rows = r
            .client
            .query(&r.scan, &params)
            .await
            .map_err(|e| self.storage(&format!("reading run {run}"), &e))?;
        let records: Vec<(u64, Vec<u8>)> = rows
            .iter()
            .map(|row| (row.get::<_, i64>(0) as u64, row.get::<_, Vec<u8>>(1)))
            .collect();
        if let Some(last) = last {
            let last_seq: i64 = last.get(0);
            let stored_end = records.last().map_or(-1, |(s, _)| *s as i64);
            if stored_end < last_seq {
                return Err(lost(run, stored_end, last_seq));
            }
        }
        Ok(records)
    }

    async fn last(&self, run: RunId) -> Result<Option<(u64, Vec<u8>)>, log::Error> {
        let r = self.reader().await?;
        let row = r
            .client
            .query_opt(&r.last, &[&run.0])
            .await
            .map_err(|e| self.storage(&format!("reading the end of run {run}"), &e))?;
        Ok(row.map(|row| (row.get::<_, i64>(0) as u64, row.get::<_, Vec<u8>>(1))))
    }

    async fn runs(&self, open_only: bool) -> Result<Vec<RunId>, log::Error> {
        let r = self.reader().await?;
        let st = if open_only { &r.open_runs } else { &r.all_runs };
        let rows = r
            .client
            .query(st, &[])
            .await
            .map_err(|e| self.storage("listing runs", &e))?;
        Ok(rows
            .iter()
            .map(|row| RunId(row.get::<_, Uuid>(0)))
            .collect())
    }

    async fn damage(&self) -> Result<Vec<String>, log::Error> {
        let r = self.reader().await?;
        let rows = r
            .client
            .query(
                "SELECT r.run, r.last_seq, w.max_seq FROM waymark_runs r \
                 LEFT JOIN (SELECT run, max(seq) AS max_seq FROM waymark_records GROUP BY run) w ON w.run = r.run \
                 WHERE w.max_seq IS DISTINCT FROM r.last_seq ORDER BY r.run",
                &[],
            )
            .await
            .map_err(|e| self.storage("checking every run's last record", &e))?;
        Ok(rows
            .iter()
            .map(|row| {
                let run = RunId(row.get::<_, Uuid>(0));
                let last_seq: i64 = row.get(1);
                let max_seq: Option<i64> = row.get(2);
                lost(run, max_seq.unwrap_or(-1), last_seq).to_string()
            })
            .collect())
    }

    async fn raw_put(
        &self,
        run: RunId,
        seq: u64,
        bytes: Option<Vec<u8>>,
    ) -> Result<(), log::Error> {
        let r = self.reader().await?;
        let seq = seq_i64(seq);
        let result = match bytes {
            Some(b) => {
                r.client
                    .execute(
                        "INSERT INTO waymark_records (run, seq, bytes) VALUES ($1, $2, $3) \
                         ON CONFLICT (run, seq) DO UPDATE SET bytes = excluded.bytes",
                        &[&run.0, &seq, &b],
                    )
                    .await
            }
            None => {
                r.client
                    .execute(
                        "DELETE FROM waymark_records WHERE run = $1 AND seq = $2",
                        &[&run.0, &seq],
                    )
                    .await
            }
        };
        result
            .map(|_| ())
            .map_err(|e| self.storage(&format!("raw write of run {run}, event #{seq}"), &e))
    }

    async fn commit(&self, req: CommitRequest) -> Result<CommitOutcome, log::Error> {
        let mut slot = self.writer().await?;
        let w = slot.as_mut().expect("connected");
        let mut retries = 0;
        loop {
            match commit_once(w, &req).await {
                Ok(mut outcome) => {
                    outcome.retries = retries;
                    return Ok(outcome);
                }
                Err(e) => {
                    // Leave the connection out of any transaction whatever happened.
                    let _ = w.client.batch_execute("ROLLBACK").await;
                    if is_retryable(&e) && retries < RETRIES {
                        retries += 1;
                        let jitter = u64::from(Uuid::new_v4().as_bytes()[0]) % 20;
                        tokio::time::sleep(Duration::from_millis(5 * u64::from(retries) + jitter))
                            .await;
                        continue;
                    }
                    return Err(self.storage("committing a group of appends", &e));
                }
            }
        }
    }
}

/// The error for a run whose stored records end at `stored_end` (-1: none) before `last_seq`.
fn lost(run: RunId, stored_end: i64, last_seq: i64) -> log::Error {
    let first = (stored_end + 1) as u64;
    log::Error::Lost {
        run,
        seq: first,
        detail: format!(
            "records #{first} to #{last_seq} are missing from the store (waymark_runs.last_seq is {last_seq}, \
             waymark_records ends at {}); they were deleted outside waymark: restore them from a backup of the \
             database; the run cannot be resumed until then",
            if stored_end < 0 { "no record".to_owned() } else { format!("#{stored_end}") }
        ),
    }
}

/// One run's part of a group commit.
#[derive(Debug)]
struct RunPart {
    run: RunId,
    first_seq: u64,
    last_seq: u64,
    closes: bool,
    /// The epoch held when the group was staged (`None`: none held).
    epoch: Option<i64>,
    /// What it claims (a run opened by this group).
    claims: Claims,
}

struct CommitRequest {
    owner: String,
    ttl: i64,
    takeover_own: bool,
    parts: Vec<RunPart>,
    records: Vec<(RunId, u64, Vec<u8>)>,
}

#[derive(Default)]
struct CommitOutcome {
    /// Runs committed, with the epoch now held for each.
    accepted: Vec<(RunId, i64)>,
    /// Runs refused, with why.
    refused: Vec<(RunId, log::Error)>,
    records: u64,
    retries: u32,
}

/// One try of a group commit: `BEGIN`, [`SQL_OPEN_GROUP`], [`SQL_APPEND_GROUP`] and `COMMIT` in
/// one round trip; when runs
/// were refused, a second one reads their rows to say why. An error is returned only when the
/// group did not commit.
async fn commit_once(
    w: &mut Writer,
    req: &CommitRequest,
) -> Result<CommitOutcome, tokio_postgres::Error> {
    let mut epochs: HashMap<RunId, i64> = HashMap::new();
    let (new, stored): (Vec<&RunPart>, Vec<&RunPart>) =
        req.parts.iter().partition(|p| p.first_seq == 0);
    // Runs appended to without an epoch: a restarted daemon's own runs (closed ones, which the
    // takeover at open leaves alone) are taken with a new epoch first (a statement of its own:
    // the takeover stands whether or not the group commits).
    let unheld: Vec<Uuid> = stored
        .iter()
        .filter(|p| p.epoch.is_none())
        .map(|p| p.run.0)
        .collect();
    if req.takeover_own && !unheld.is_empty() {
        for row in w
            .client
            .query(&w.take_own, &[&req.owner, &req.ttl, &unheld])
            .await?
        {
            epochs.insert(RunId(row.get::<_, Uuid>(0)), row.get::<_, i64>(1));
        }
    }
    for p in &stored {
        if let Some(e) = p.epoch {
            epochs.insert(p.run, e);
        }
    }
    let new_runs: Vec<Uuid> = new.iter().map(|p| p.run.0).collect();
    let new_last: Vec<i64> = new.iter().map(|p| seq_i64(p.last_seq)).collect();
    let new_closes: Vec<bool> = new.iter().map(|p| p.closes).collect();
    let clusters: Vec<Option<String>> = new.iter().map(|p| p.claims.cluster.clone()).collect();
    let fire_keys: Vec<Option<String>> = new.iter().map(|p| p.claims.fire_key.clone()).collect();
    let st_runs: Vec<Uuid> = stored.iter().map(|p| p.run.0).collect();
    // A run with no epoch gets -1, which no row holds: refused, and named below.
    let st_epochs: Vec<i64> = stored
        .iter()
        .map(|p| epochs.get(&p.run).copied().unwrap_or(-1))
        .collect();
    let st_prev: Vec<i64> = stored.iter().map(|p| seq_i64(p.first_seq) - 1).collect();
    let st_last: Vec<i64> = stored.iter().map(|p| seq_i64(p.last_seq)).collect();
    let st_closes: Vec<bool> = stored.iter().map(|p| p.closes).collect();
    let is_new: std::collections::HashSet<RunId> = new.iter().map(|p| p.run).collect();
    let (new_recs, st_recs): (Vec<_>, Vec<_>) =
        req.records.iter().partition(|r| is_new.contains(&r.0));
    let columns = |recs: &[&(RunId, u64, Vec<u8>)]| {
        let runs: Vec<Uuid> = recs.iter().map(|r| r.0 .0).collect();
        let seqs: Vec<i64> = recs.iter().map(|r| seq_i64(r.1)).collect();
        let bytes: Vec<Vec<u8>> = recs.iter().map(|r| r.2.clone()).collect();
        (runs, seqs, bytes)
    };
    let (open_rec_runs, open_rec_seqs, open_rec_bytes) = columns(&new_recs);
    let (append_rec_runs, append_rec_seqs, append_rec_bytes) = columns(&st_recs);
    let open_params: [&(dyn ToSql + Sync); 10] = [
        &req.owner,
        &req.ttl,
        &new_runs,
        &new_last,
        &new_closes,
        &clusters,
        &fire_keys,
        &open_rec_runs,
        &open_rec_seqs,
        &open_rec_bytes,
    ];
    let append_params: [&(dyn ToSql + Sync); 10] = [
        &req.owner,
        &req.ttl,
        &st_runs,
        &st_epochs,
        &st_prev,
        &st_last,
        &st_closes,
        &append_rec_runs,
        &append_rec_seqs,
        &append_rec_bytes,
    ];
    let opened = async {
        if new.is_empty() {
            Ok(Vec::new())
        } else {
            w.client.query(&w.open_group, &open_params).await
        }
    };
    let appended = async {
        if stored.is_empty() {
            Ok(Vec::new())
        } else {
            w.client.query(&w.append_group, &append_params).await
        }
    };
    // BEGIN, the two statements, COMMIT: sent together, one round trip. COMMIT answers once the
    // WAL is flushed (synchronous_commit=on); if a statement failed, its error is what try_join
    // returns (the COMMIT of an aborted transaction rolls it back).
    let ((), opened, appended, ()) = futures::try_join!(
        w.client.batch_execute("BEGIN"),
        opened,
        appended,
        w.client.batch_execute("COMMIT"),
    )?;
    let mut outcome = CommitOutcome::default();
    let mut ok: std::collections::HashSet<RunId> = std::collections::HashSet::new();
    for (rows, opening) in [(opened, true), (appended, false)] {
        if let Some(first) = rows.first() {
            outcome.records += u64::try_from(first.get::<_, i64>(1)).unwrap_or(0);
        }
        for row in rows {
            let run = RunId(row.get::<_, Uuid>(0));
            ok.insert(run);
            let epoch = if opening {
                1
            } else {
                epochs.get(&run).copied().unwrap_or(-1)
            };
            outcome.accepted.push((run, epoch));
        }
    }
    let refused: Vec<&RunPart> = req.parts.iter().filter(|p| !ok.contains(&p.run)).collect();
    if refused.is_empty() {
        return Ok(outcome);
    }
    // Why (after the commit, for the message only): the refused runs' rows as they are now.
    let refused_ids: Vec<Uuid> = refused.iter().map(|p| p.run.0).collect();
    let rows: HashMap<RunId, tokio_postgres::Row> = match w
        .client
        .query(&w.why, &[&refused_ids])
        .await
    {
        Ok(rows) => rows
            .into_iter()
            .map(|r| (RunId(r.get::<_, Uuid>(0)), r))
            .collect(),
        Err(e) => {
            // The group committed: this error must not make it look as if it had not.
            for p in refused {
                outcome.refused.push((
                        p.run,
                        log::Error::Storage(format!(
                            "the store refused the records of run {} (fenced, or its history moved), and \
                             reading why failed: {}",
                            p.run,
                            describe(&e)
                        )),
                    ));
            }
            return Ok(outcome);
        }
    };
    for p in refused {
        let row = rows.get(&p.run);
        if row.is_none() && p.first_seq == 0 && p.claims != Claims::default() {
            outcome.refused.push((p.run, claimed(w, p).await));
            continue;
        }
        let held = epochs.get(&p.run).copied();
        outcome
            .refused
            .push((p.run, refusal(&req.owner, p, held, row)));
    }
    Ok(outcome)
}

/// A new run whose row was not inserted, and which has none: what it claims is taken. Names the
/// run holding it.
async fn claimed(w: &Writer, p: &RunPart) -> log::Error {
    let holders = w
        .client
        .query(
            "SELECT run, cluster, holds_cluster, fire_key FROM waymark_runs \
             WHERE (holds_cluster AND cluster = $1) OR fire_key = $2",
            &[&p.claims.cluster, &p.claims.fire_key],
        )
        .await;
    let mut taken = Vec::new();
    for row in holders.iter().flatten() {
        let holder = RunId(row.get::<_, Uuid>(0));
        let cluster: Option<String> = row.get(1);
        let fire_key: Option<String> = row.get(3);
        if row.get::<_, bool>(2) && cluster.is_some() && cluster == p.claims.cluster {
            taken.push(format!(
                "cluster {} is held by run {holder} (one maintenance run per cluster); wait until it ends, \
                 or resolve it if it needs an operator",
                cluster.unwrap_or_default()
            ));
        }
        if fire_key.is_some() && fire_key == p.claims.fire_key {
            taken.push(format!(
                "fire time {} already started run {holder}; nothing to do",
                fire_key.unwrap_or_default()
            ));
        }
    }
    if taken.is_empty() {
        taken.push(format!(
            "what it claims ({:?}) was taken by a run that has since let it go; start it again",
            p.claims
        ));
    }
    log::Error::Claimed {
        run: p.run,
        detail: taken.join("; "),
    }
}

/// Why the store refused a run's records, from its row as the transaction saw it.
fn refusal(
    me: &str,
    p: &RunPart,
    held: Option<i64>,
    row: Option<&tokio_postgres::Row>,
) -> log::Error {
    let run = p.run;
    let Some(row) = row else {
        return log::Error::Lost {
            run,
            seq: 0,
            detail: format!(
                "the store has no waymark_runs row for this run although this daemon's log held its history up to #{}; \
                 it was deleted outside waymark: restore it from a backup of the database",
                p.first_seq.saturating_sub(1)
            ),
        };
    };
    let owner: Option<String> = row.get(1);
    let epoch: i64 = row.get(2);
    let last_seq: i64 = row.get(3);
    let max_seq: Option<i64> = row.get(4);
    let ours = owner.as_deref() == Some(me) && held == Some(epoch);
    if !ours {
        let by = owner.map_or_else(
            || "owned by no daemon (imported into the store)".to_owned(),
            |o| format!("owned by daemon {o} since epoch {epoch}"),
        );
        let mine = held.map_or_else(
            || format!("this daemon ({me}) holds no epoch for it"),
            |h| format!("this daemon ({me}) held epoch {h}"),
        );
        return log::Error::Fenced {
            run,
            detail: format!("{by} ({mine}); stopped driving it: the owner drives it now"),
        };
    }
    let prev = seq_i64(p.first_seq) - 1;
    if max_seq.unwrap_or(-1) < last_seq && max_seq.unwrap_or(-1) == prev {
        return lost(run, prev, last_seq);
    }
    log::Error::Chain {
        run,
        seq: p.first_seq,
        detail: format!(
            "the store's history ends at #{last_seq}, this daemon's tail was at #{prev}: another writer appended \
             under the same epoch or a repair changed it; the run stops here and resumes from what is stored"
        ),
    }
}

async fn migrate_on(config: &Config, url: &str) -> Result<Vec<i32>, Error> {
    let schema = |detail: String| Error::Schema {
        url: url.to_owned(),
        detail,
    };
    let mut client = connect(config, url)
        .await
        .map_err(|detail| Error::Connect {
            url: url.to_owned(),
            detail,
        })?;
    let fail = |what: &str, e: &tokio_postgres::Error| schema(format!("{what}: {}", describe(e)));
    let tx = client
        .transaction()
        .await
        .map_err(|e| fail("starting the migration", &e))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS waymark_migration_lock (id integer PRIMARY KEY); \
         INSERT INTO waymark_migration_lock VALUES (1) ON CONFLICT DO NOTHING",
    )
    .await
    .map_err(|e| fail("creating the migration lock", &e))?;
    tx.query(
        "SELECT id FROM waymark_migration_lock WHERE id = 1 FOR UPDATE",
        &[],
    )
    .await
    .map_err(|e| fail("taking the migration lock", &e))?;
    // The first statement of the first script creates waymark_schema_migrations.
    let bootstrap = statements(MIGRATIONS[0].2).swap_remove(0);
    tx.batch_execute(&bootstrap)
        .await
        .map_err(|e| fail("creating waymark_schema_migrations", &e))?;
    let applied: HashMap<i32, i64> = tx
        .query(
            "SELECT version, checksum FROM waymark_schema_migrations",
            &[],
        )
        .await
        .map_err(|e| fail("reading the applied migrations", &e))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if let Some(newest) = applied.keys().max() {
        if *newest > SCHEMA_VERSION {
            return Err(schema(format!(
                "has schema version {newest}, newer than this waymark knows (up to {SCHEMA_VERSION}); run a newer waymark"
            )));
        }
    }
    let mut done = Vec::new();
    for (version, name, script) in MIGRATIONS {
        let checksum = i64::from(crc32fast::hash(script.as_bytes()));
        match applied.get(version) {
            Some(c) if *c == checksum => continue,
            Some(c) => {
                return Err(schema(format!(
                    "migration {name} was applied with checksum {c}, but this waymark's script has {checksum}: \
                     the script was edited after release; restore it"
                )))
            }
            None => {}
        }
        for statement in statements(script) {
            tx.batch_execute(&statement).await.map_err(|e| {
                fail(
                    &format!("migration {name}, `{}`", first_line(&statement)),
                    &e,
                )
            })?;
        }
        tx.execute(
            "INSERT INTO waymark_schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[version, name, &checksum],
        )
        .await
        .map_err(|e| fail(&format!("recording migration {name}"), &e))?;
        done.push(*version);
    }
    tx.commit()
        .await
        .map_err(|e| fail("committing the migration", &e))?;
    Ok(done)
}

/// A script's statements: comment lines dropped, split at semicolons.
fn statements(script: &str) -> Vec<String> {
    let text: String = script
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

impl Backend for PgBackend {
    fn scan_run(&self, run: RunId) -> Result<Vec<(u64, Vec<u8>)>, log::Error> {
        self.call(move |c| async move { c.scan_run(run).await })
    }

    fn last(&self, run: RunId) -> Result<Option<(u64, Vec<u8>)>, log::Error> {
        self.call(move |c| async move { c.last(run).await })
    }

    fn open_runs(&self) -> Result<Vec<RunId>, log::Error> {
        self.call(|c| async move { c.runs(true).await })
    }

    fn all_runs(&self) -> Result<Vec<RunId>, log::Error> {
        self.call(|c| async move { c.runs(false).await })
    }

    fn commit(&self, batch: WriteBatch) -> Result<(), log::Error> {
        match self.commit_checked(batch)?.into_iter().next() {
            None => Ok(()),
            Some((_, e)) => Err(e),
        }
    }

    fn commit_checked(&self, batch: WriteBatch) -> Result<Vec<(RunId, log::Error)>, log::Error> {
        if batch.records.is_empty() {
            return Ok(Vec::new());
        }
        let mut parts: Vec<RunPart> = Vec::new();
        let mut index: HashMap<RunId, usize> = HashMap::new();
        {
            let leases = self.leases();
            for (run, seq, _) in &batch.records {
                if let Some(&i) = index.get(run) {
                    parts[i].last_seq = *seq;
                } else {
                    index.insert(*run, parts.len());
                    parts.push(RunPart {
                        run: *run,
                        first_seq: *seq,
                        last_seq: *seq,
                        closes: batch.closed.contains(run),
                        epoch: leases.get(run).copied(),
                        claims: Claims::default(),
                    });
                }
            }
        }
        if let Some(hook) = &self.inner.options.claims {
            for (run, seq, bytes) in &batch.records {
                if *seq != 0 {
                    continue;
                }
                // The log encoded this record a moment ago: it decodes.
                if let Ok(record) = waymark_engine::codec::decode(*run, 0, bytes) {
                    parts[index[run]].claims = (hook.0)(&record.event);
                }
            }
        }
        let request = CommitRequest {
            owner: self.inner.options.daemon.clone(),
            ttl: ttl_ms(&self.inner.options),
            takeover_own: self.inner.options.takeover_own,
            parts,
            records: batch.records,
        };
        let outcome = self.call(move |c| async move { c.commit(request).await })?;
        {
            let mut leases = self.leases();
            for (run, epoch) in &outcome.accepted {
                leases.insert(*run, *epoch);
            }
            for (run, e) in &outcome.refused {
                if matches!(e, log::Error::Fenced { .. }) {
                    leases.remove(run);
                }
            }
        }
        {
            let mut stats = self.inner.stats.lock().expect("pg stats lock");
            if outcome.records > 0 {
                stats.commits += 1;
            }
            stats.records += outcome.records;
            stats.refused_runs += outcome.refused.len() as u64;
            stats.retries += u64::from(outcome.retries);
        }
        Ok(outcome.refused)
    }

    fn damage(&self) -> Vec<String> {
        match self.call(|c| async move { c.damage().await }) {
            Ok(lines) => lines,
            Err(e) => vec![format!("the damage check could not run: {e}")],
        }
    }

    fn raw_put(&self, run: RunId, seq: u64, bytes: Option<Vec<u8>>) -> Result<(), log::Error> {
        self.call(move |c| async move { c.raw_put(run, seq, bytes).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_with_a_password_is_refused_without_showing_it() {
        let err =
            client_config("postgres://ops:hunter2@db.example:5432/waymark", None).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("passfile") && msg.contains("PGPASSFILE"),
            "{msg}"
        );
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn tls_is_refused_with_what_to_do() {
        let msg = client_config("postgres://ops@db.example/waymark?sslmode=require", None)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("sslmode=disable"), "{msg}");
    }

    #[test]
    fn the_password_comes_from_the_named_passfile_and_commits_are_synchronous() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pass = dir.path().join("pass");
        std::fs::write(&pass, "db.example:5433:waymark:ops:s3cret\n").unwrap();
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = client_config(
            "postgres://ops@db.example:5433/waymark?options=-c%20search_path%3Dt1",
            Some(&pass),
        )
        .unwrap();
        assert_eq!(config.get_password(), Some(&b"s3cret"[..]));
        let options = config.get_options().unwrap();
        assert!(
            options.contains("synchronous_commit=on") && options.contains("search_path"),
            "{options}"
        );
    }

    /// The backend on a private server, end to end through the engine's `Log`: migrate, open
    /// (refused before the migration), append from a runtime, read back, reopen.
    #[test]
    fn a_log_on_a_private_server_migrates_appends_and_reads_back() {
        use waymark_engine::event::{Event, Payload};
        use waymark_engine::log::{EventLog, Log};
        let server = test_server::TestServer::start().unwrap();
        let schema = server.create_schema().unwrap();
        let url = server.url(&schema);
        let mut options = Options::new("smoke");
        options.password_file = Some(server.passfile().to_path_buf());
        let refused = PgBackend::open(&url, options.clone())
            .unwrap_err()
            .to_string();
        assert!(refused.contains("waymark migrate"), "{refused}");
        assert_eq!(
            PgBackend::migrate(&url, Some(server.passfile())).unwrap(),
            vec![1]
        );
        assert!(PgBackend::migrate(&url, Some(server.passfile()))
            .unwrap()
            .is_empty());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let run = RunId::new();
        let started = Event::RunStarted {
            workflow: "w".into(),
            version: 1,
            input: Payload::null(),
            started_by: "test".into(),
        };
        {
            let log = Log::new(PgBackend::open(&url, options.clone()).unwrap());
            let recs = rt.block_on(log.append(run, vec![started.clone()])).unwrap();
            assert_eq!(recs[0].seq, 0);
            assert_eq!(log.read(run).unwrap(), recs);
            assert_eq!(log.open_runs().unwrap(), vec![run]);
            assert_eq!(log.backend().epoch(run), Some(1));
        }
        let log = Log::new(PgBackend::open(&url, options).unwrap());
        assert_eq!(log.backend().epoch(run), Some(2), "taken over at open");
        let more = rt.block_on(log.append(run, vec![started])).unwrap();
        assert_eq!(more[0].seq, 1);
        assert_eq!(log.read(run).unwrap().len(), 2);
    }

    #[test]
    fn the_first_migration_splits_into_its_statements() {
        let s = statements(MIGRATIONS[0].2);
        assert!(s.iter().all(|s| s.contains("IF NOT EXISTS")), "{s:?}");
        assert!(s
            .iter()
            .any(|s| s.starts_with("CREATE TABLE IF NOT EXISTS waymark_records")));
        assert_eq!(s.len(), 9, "{s:?}");
    }
}
