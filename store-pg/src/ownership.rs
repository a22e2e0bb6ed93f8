//! Several daemons on one store (`ARCHITECTURE.md`, "`PostgreSQL` store"; design section 4): a
//! daemon's name held by one live incarnation at a time, the renewal of the leases of the runs a
//! daemon drives, the takeover of runs whose lease expired, and the release of a daemon's leases
//! when it stops cleanly. Every time is the database's `now()`, so the daemons' clocks may
//! disagree. The loop that calls these lives in the daemon (`waymark_cli::daemon::ownership`).

use std::time::Duration;

use uuid::Uuid;
use waymark_engine::event::RunId;
use waymark_engine::log;

use super::{
    check_version, client_config, connect, describe, on_private_runtime, ttl_ms, Error, PgBackend,
};

/// Takes over at most this many runs per scan (the rest at the next scan).
const TAKEOVER_BATCH: i64 = 64;

/// Whether process `pid` exists on this host (`kill(pid, 0)`; a process of another user counts).
/// A pid that cannot name one process (0 or negative) counts as alive: never reclaimed.
fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return true;
    }
    #[allow(unsafe_code)]
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Who a daemon is, as written in `waymark_daemons`.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Its name (`--daemon-id`), the owner written on its runs.
    pub name: String,
    /// This process's incarnation (new at every start).
    pub incarnation: Uuid,
    /// The host it runs on.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// Where its API answers, if anywhere others can reach (for messages naming the owner).
    pub api: Option<String>,
}

impl PgBackend {
    /// Claims the daemon name of `identity` in the store at `url` before the store is opened
    /// with it (which takes over the open runs of that name): refused while another incarnation
    /// of the name sent a heartbeat within `ttl`, so two live daemons never share a name (and
    /// never take each other's runs as their own).
    pub fn register_daemon(
        url: &str,
        password_file: Option<&std::path::Path>,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<(), Error> {
        let config = client_config(url, password_file)?;
        let identity = identity.clone();
        let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let url_owned = url.to_owned();
        on_private_runtime(move || async move {
            let connect_error = |detail: String| Error::Connect {
                url: url_owned.clone(),
                detail,
            };
            let client = connect(&config, &url_owned).await.map_err(connect_error)?;
            // The schema first: an unmigrated store is named as such, not as a missing table.
            let migrated = client
                .query_one(
                    "SELECT to_regclass('waymark_schema_migrations') IS NOT NULL",
                    &[],
                )
                .await
                .map_err(|e| {
                    connect_error(format!("reading the schema version: {}", describe(&e)))
                })?
                .get::<_, bool>(0);
            let version: Option<i32> = if migrated {
                client
                    .query_one("SELECT max(version) FROM waymark_schema_migrations", &[])
                    .await
                    .map_err(|e| {
                        connect_error(format!("reading the schema version: {}", describe(&e)))
                    })?
                    .get(0)
            } else {
                None
            };
            check_version(&url_owned, version)?;
            let pid = i32::try_from(identity.pid).unwrap_or(i32::MAX);
            let claimed = client
                .query(
                    "INSERT INTO waymark_daemons (name, incarnation, host, pid, api, heartbeat_at, started_at) \
                     VALUES ($1, $2, $3, $4, $5, now(), now()) \
                     ON CONFLICT (name) DO UPDATE SET incarnation = excluded.incarnation, host = excluded.host, \
                       pid = excluded.pid, api = excluded.api, heartbeat_at = now(), started_at = now() \
                     WHERE waymark_daemons.heartbeat_at < now() - $6::int8 * interval '1 millisecond' \
                     RETURNING incarnation",
                    &[
                        &identity.name,
                        &identity.incarnation,
                        &identity.host,
                        &pid,
                        &identity.api,
                        &ttl,
                    ],
                )
                .await
                .map_err(|e| connect_error(format!("registering the daemon: {}", describe(&e))))?;
            if !claimed.is_empty() {
                return Ok(());
            }
            let holder = client
                .query_opt(
                    "SELECT host, pid, (extract(epoch from (now() - heartbeat_at)) * 1000)::int8, \
                       incarnation FROM waymark_daemons WHERE name = $1",
                    &[&identity.name],
                )
                .await
                .map_err(|e| connect_error(format!("registering the daemon: {}", describe(&e))))?;
            // A restarted daemon: the name's incarnation ran on this host as a process that is
            // gone, so nobody renews its leases; the name is reclaimed at once (conditional on
            // that incarnation, so two restarts at once cannot both win) instead of after ttl.
            if let Some(r) = &holder {
                let (host, old_pid, old): (String, i32, Uuid) = (r.get(0), r.get(1), r.get(3));
                if host == identity.host && (old_pid == pid || !pid_alive(old_pid)) {
                    let reclaimed = client
                        .execute(
                            "UPDATE waymark_daemons SET incarnation = $2, host = $3, pid = $4, api = $5, \
                               heartbeat_at = now(), started_at = now() \
                             WHERE name = $1 AND incarnation = $6",
                            &[
                                &identity.name,
                                &identity.incarnation,
                                &identity.host,
                                &pid,
                                &identity.api,
                                &old,
                            ],
                        )
                        .await
                        .map_err(|e| {
                            connect_error(format!("registering the daemon: {}", describe(&e)))
                        })?;
                    if reclaimed == 1 {
                        tracing::info!(
                            daemon = %identity.name,
                            old_pid,
                            "reclaimed the daemon name: its previous process on this host is gone"
                        );
                        return Ok(());
                    }
                }
            }
            let who = holder.map_or_else(String::new, |r| {
                format!(
                    " (host {}, pid {}, last heartbeat {} ms ago)",
                    r.get::<_, String>(0),
                    r.get::<_, i32>(1),
                    r.get::<_, i64>(2)
                )
            });
            Err(Error::Config {
                url: url_owned.clone(),
                detail: format!(
                    "daemon name {:?} is in use by a live daemon{who}; give this daemon another \
                     name (--daemon-id), or stop that one first (its name is free {} ms after \
                     its last heartbeat, or at once for a restart on the same host once its \
                     process is gone)",
                    identity.name, ttl
                ),
            })
        })
    }

    /// Renews the leases this daemon holds on `runs` (the runs it drives) and the heartbeat of
    /// `incarnation`; returns the runs among them that another daemon holds now, each with who
    /// holds it, and forgets their epochs (their appends are refused from now on anyway). A run
    /// this daemon holds no epoch for is left out.
    pub fn renew(
        &self,
        runs: &[RunId],
        incarnation: Uuid,
    ) -> Result<Vec<(RunId, String)>, log::Error> {
        let me = self.inner.options.daemon.clone();
        let ttl = ttl_ms(&self.inner.options);
        let held: Vec<(RunId, i64)> = {
            let leases = self.leases();
            runs.iter()
                .filter_map(|r| leases.get(r).map(|e| (*r, *e)))
                .collect()
        };
        let asked = held.clone();
        let (renewed, rows) = self.call(move |c| async move {
            let guard = c.writer().await?;
            let w = guard.as_ref().expect("writer connected");
            let ids: Vec<Uuid> = asked.iter().map(|(r, _)| r.0).collect();
            let epochs: Vec<i64> = asked.iter().map(|(_, e)| *e).collect();
            let renewed = w
                .client
                .query(
                    "UPDATE waymark_runs r SET lease_expires_at = now() + $2::int8 * interval '1 millisecond' \
                     FROM unnest($3::uuid[], $4::int8[]) AS d(run, epoch) \
                     WHERE r.run = d.run AND r.epoch = d.epoch AND r.owner = $1 RETURNING r.run",
                    &[&me, &ttl, &ids, &epochs],
                )
                .await
                .map_err(|e| c.storage("renewing leases", &e))?;
            w.client
                .execute(
                    "UPDATE waymark_daemons SET heartbeat_at = now() WHERE name = $1 AND incarnation = $2",
                    &[&me, &incarnation],
                )
                .await
                .map_err(|e| c.storage("sending the daemon's heartbeat", &e))?;
            let renewed: std::collections::HashSet<Uuid> =
                renewed.iter().map(|r| r.get::<_, Uuid>(0)).collect();
            let lost: Vec<Uuid> = ids.into_iter().filter(|r| !renewed.contains(r)).collect();
            let rows = if lost.is_empty() {
                Vec::new()
            } else {
                w.client
                    .query(
                        "SELECT run, owner, epoch FROM waymark_runs WHERE run = ANY($1::uuid[])",
                        &[&lost],
                    )
                    .await
                    .map_err(|e| c.storage("reading who holds the runs whose lease was lost", &e))?
                    .iter()
                    .map(|r| {
                        (
                            RunId(r.get::<_, Uuid>(0)),
                            r.get::<_, Option<String>>(1),
                            r.get::<_, i64>(2),
                        )
                    })
                    .collect()
            };
            Ok((renewed, rows))
        })?;
        let me = &self.inner.options.daemon;
        let mut lost = Vec::new();
        let mut leases = self.leases();
        for (run, epoch) in held {
            if renewed.contains(&run.0) {
                continue;
            }
            let detail = match rows.iter().find(|(r, _, _)| *r == run) {
                Some((_, Some(owner), now)) => format!(
                    "owned by daemon {owner} since epoch {now} (this daemon, {me}, held epoch {epoch})"
                ),
                Some((_, None, now)) => format!(
                    "owned by no daemon at epoch {now} (this daemon, {me}, held epoch {epoch})"
                ),
                None => format!("no longer in the store (this daemon, {me}, held epoch {epoch})"),
            };
            leases.remove(&run);
            lost.push((run, detail));
        }
        Ok(lost)
    }

    /// Takes over open runs whose lease expired (a bounded number per call), each with a new
    /// epoch, owner this daemon; returns them. Two daemons scanning at once serialise on each
    /// run's row: the second finds the lease no longer expired and takes nothing.
    pub fn take_over_expired(&self) -> Result<Vec<RunId>, log::Error> {
        let me = self.inner.options.daemon.clone();
        let ttl = ttl_ms(&self.inner.options);
        let taken = self.call(move |c| async move {
            let guard = c.writer().await?;
            let w = guard.as_ref().expect("writer connected");
            let rows = w
                .client
                .query(
                    "UPDATE waymark_runs SET owner = $1, epoch = epoch + 1, updated_at = now(), \
                       lease_expires_at = now() + $2::int8 * interval '1 millisecond' \
                     WHERE run IN (SELECT run FROM waymark_runs WHERE open AND lease_expires_at < now() \
                                   ORDER BY run LIMIT $3) \
                       AND open AND lease_expires_at < now() \
                     RETURNING run, epoch",
                    &[&me, &ttl, &TAKEOVER_BATCH],
                )
                .await
                .map_err(|e| c.storage("taking over runs whose lease expired", &e))?;
            Ok(rows
                .iter()
                .map(|r| (RunId(r.get::<_, Uuid>(0)), r.get::<_, i64>(1)))
                .collect::<Vec<_>>())
        })?;
        let mut leases = self.leases();
        let mut runs: Vec<RunId> = Vec::with_capacity(taken.len());
        for (run, epoch) in taken {
            leases.insert(run, epoch);
            runs.push(run);
        }
        runs.sort();
        Ok(runs)
    }

    /// A daemon that stops cleanly: its leases end now (another daemon takes its open runs at
    /// its next scan instead of after the lease) and its name is free at once.
    pub fn release(&self, incarnation: Uuid) -> Result<(), log::Error> {
        let me = self.inner.options.daemon.clone();
        self.call(move |c| async move {
            let guard = c.writer().await?;
            let w = guard.as_ref().expect("writer connected");
            w.client
                .execute(
                    "UPDATE waymark_runs SET lease_expires_at = now() WHERE owner = $1 AND open",
                    &[&me],
                )
                .await
                .map_err(|e| c.storage("releasing the daemon's leases", &e))?;
            w.client
                .execute(
                    "UPDATE waymark_daemons SET heartbeat_at = '-infinity' WHERE name = $1 AND incarnation = $2",
                    &[&me, &incarnation],
                )
                .await
                .map_err(|e| c.storage("releasing the daemon's name", &e))?;
            Ok(())
        })?;
        self.leases().clear();
        Ok(())
    }

    /// Lets go of `cluster` where ended runs still hold it in the store (the claim is released
    /// lazily: a run's closing record does not know whether it leaves the run needing an
    /// operator). Only closed runs are released, never an open one (a run another daemon started
    /// meanwhile keeps its claim): call it once the histories say no run, ended or not, holds
    /// the cluster. Returns how many claims were released.
    pub fn release_cluster(&self, cluster: &str) -> Result<u64, log::Error> {
        let cluster = cluster.to_owned();
        self.call(move |c| async move {
            let guard = c.writer().await?;
            let w = guard.as_ref().expect("writer connected");
            w.client
                .execute(
                    "UPDATE waymark_runs SET holds_cluster = false, updated_at = now() \
                     WHERE cluster = $1 AND holds_cluster AND NOT open",
                    &[&cluster],
                )
                .await
                .map_err(|e| c.storage("releasing a cluster held by ended runs", &e))
        })
    }

    /// The owner and epoch of `run` as stored (`None`: no such run), for tools and tests.
    pub fn owner(&self, run: RunId) -> Result<Option<(Option<String>, i64)>, log::Error> {
        self.call(move |c| async move {
            let reader = c.reader().await?;
            let row = reader
                .client
                .query_opt(
                    "SELECT owner, epoch FROM waymark_runs WHERE run = $1",
                    &[&run.0],
                )
                .await
                .map_err(|e| c.storage("reading a run's owner", &e))?;
            Ok(row.map(|r| (r.get::<_, Option<String>>(0), r.get::<_, i64>(1))))
        })
    }

    /// The shared schedule book: its version and its text (JSON, as the schedules file holds
    /// it); `None` while no daemon saved one.
    pub fn schedule_book(&self) -> Result<Option<(i64, String)>, log::Error> {
        self.call(move |c| async move {
            let reader = c.reader().await?;
            let row = reader
                .client
                .query_opt(
                    "SELECT version, book FROM waymark_schedules WHERE id = 1",
                    &[],
                )
                .await
                .map_err(|e| c.storage("reading the schedule book", &e))?;
            Ok(row.map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1))))
        })
    }

    /// Saves the shared schedule book if it is still at version `read` (`None`: no book was
    /// saved yet) - optimistic concurrency. Returns the new version, or `None` when another
    /// daemon saved first (reload it, redo the edit, save again).
    pub fn save_schedule_book(
        &self,
        read: Option<i64>,
        book: String,
    ) -> Result<Option<i64>, log::Error> {
        self.call(move |c| async move {
            let guard = c.writer().await?;
            let w = guard.as_ref().expect("writer connected");
            let row = match read {
                None => {
                    w.client
                        .query_opt(
                            "INSERT INTO waymark_schedules (id, version, book) VALUES (1, 1, $1) \
                         ON CONFLICT (id) DO NOTHING RETURNING version",
                            &[&book],
                        )
                        .await
                }
                Some(version) => {
                    w.client
                        .query_opt(
                            "UPDATE waymark_schedules SET version = version + 1, book = $2 \
                         WHERE id = 1 AND version = $1 RETURNING version",
                            &[&version, &book],
                        )
                        .await
                }
            }
            .map_err(|e| c.storage("saving the schedule book", &e))?;
            Ok(row.map(|r| r.get::<_, i64>(0)))
        })
    }
}
