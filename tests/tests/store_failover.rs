//! Several daemons on one store (issue 15): `Engine::relinquish`, the primitive a daemon uses when
//! another daemon took one of its runs over; then `waymark daemon` processes sharing one private
//! `PostgreSQL` server (two daemons `a` and `b`, their own data directories, `--lease-ttl 2s`, one
//! sandbox estate): failover after a SIGKILL, and split-brain after a SIGSTOP past the lease.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use waymark_engine::log::memory::MemoryBackend;
use waymark_engine::log::{EventLog, Log};
use waymark_engine::{Engine, Payload, RunOutcome};

use crate::util::{wait_until, wf};

/// Sets its flag when dropped: tells that an activity's future was dropped, not left running.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A run whose step `block` never finishes on its own: relinquished, its driver and the
/// activity in flight are dropped, the run is no longer active, nothing is appended (not even by
/// the engine's shutdown, which journals an interruption only for runs it still drives), and a
/// new driver can be started on the same history (the new owner's resume).
#[tokio::test]
async fn relinquish_drops_the_driver_and_its_activity_and_appends_nothing() {
    let log = Arc::new(Log::new(MemoryBackend::new()));
    let started = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicBool::new(false));
    let engine = {
        let (started, dropped) = (started.clone(), dropped.clone());
        Engine::builder(log.clone())
            .workflow_dyn(wf("blocks", 1, |ctx| async move {
                let () = ctx.step("block", &()).await?;
                Ok(Payload::null())
            }))
            .activity_fn("block", move |_ctx, _input| {
                started.fetch_add(1, Ordering::SeqCst);
                let guard = DropFlag(dropped.clone());
                async move {
                    let _guard = guard;
                    futures::future::pending::<()>().await;
                    Ok(Payload::null())
                }
            })
            .build()
    };
    let run = engine
        .start_named("blocks", Payload::null(), "test")
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the activity started", || {
        started.load(Ordering::SeqCst) == 1
    })
    .await;
    let before = log.read(run).unwrap().len();
    assert!(
        engine.relinquish(run, "lease lost"),
        "a driven run is relinquished"
    );
    assert!(
        !engine.active_runs().contains(&run),
        "the run is no longer active"
    );
    wait_until(
        Duration::from_secs(10),
        "the activity's future dropped",
        || dropped.load(Ordering::SeqCst),
    )
    .await;
    assert!(
        !engine.relinquish(run, "again"),
        "a run not driven is not relinquished twice"
    );
    engine.shutdown().await;
    let after: Vec<&str> = log
        .read(run)
        .unwrap()
        .iter()
        .map(|r| r.event.kind())
        .collect();
    assert_eq!(
        after.len(),
        before,
        "nothing appended after relinquish: {after:?}"
    );
    assert_eq!(after.last(), Some(&"AttemptStarted"), "{after:?}");
    assert_eq!(started.load(Ordering::SeqCst), 1);
}

/// What waiters see: the run's driver stopped with the reason given, and the engine can drive
/// the run again later (a lease taken back).
#[tokio::test]
async fn a_relinquished_run_can_be_resumed_by_the_same_engine() {
    let log = Arc::new(Log::new(MemoryBackend::new()));
    let started = Arc::new(AtomicUsize::new(0));
    let engine = {
        let started = started.clone();
        Engine::builder(log.clone())
            .workflow_dyn(wf("blocks", 1, |ctx| async move {
                let () = ctx.step("block", &()).await?;
                Ok(Payload::null())
            }))
            .activity_fn("block", move |_ctx, _input| {
                let n = started.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        futures::future::pending::<()>().await;
                    }
                    Ok(Payload::null())
                }
            })
            .build()
    };
    let run = engine
        .start_named("blocks", Payload::null(), "test")
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the first attempt started", || {
        started.load(Ordering::SeqCst) == 1
    })
    .await;
    let waiter = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.wait(run).await })
    };
    // The waiter must be waiting on the driver before it is relinquished.
    tokio::task::yield_now().await;
    assert!(engine.relinquish(run, "run R: lease lost to daemon b"));
    match waiter.await.unwrap() {
        Ok(RunOutcome::Stopped(why)) => assert_eq!(why, "run R: lease lost to daemon b"),
        Ok(other) => panic!("the driver stopped with {other:?}"),
        // The waiter had not subscribed yet: it read the log, where the run is unfinished.
        Err(waymark_engine::runtime::Error::NotActive(r)) => assert_eq!(r, run),
        Err(e) => panic!("{e}"),
    }
    engine.resume(run).unwrap();
    match engine.wait(run).await.unwrap() {
        RunOutcome::Completed(_) => {}
        other => panic!("the resumed run ended with {other:?}"),
    }
    let kinds: Vec<&str> = log
        .read(run)
        .unwrap()
        .iter()
        .map(|r| r.event.kind())
        .collect();
    assert!(
        kinds.contains(&"AttemptInterrupted"),
        "the resume journaled the dropped attempt as interrupted: {kinds:?}"
    );
    assert_eq!(started.load(Ordering::SeqCst), 2);
}

// Several `waymark daemon` processes on one PostgreSQL store.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::OnceLock;

use waymark_engine::event::Event;
use waymark_engine::RunId;
use waymark_sandbox::read_effects;
use waymark_store_pg::test_server::TestServer;
use waymark_store_pg::PgBackend;

use crate::util::{eventually_blocking, http_unix, temp_dir, waymark, SandboxProcess};

/// One private server for the whole test binary (each test gets its own schema).
fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        TestServer::start().unwrap_or_else(|e| {
            panic!("starting a private PostgreSQL server (apt-get install postgresql): {e}")
        })
    })
}

/// A fresh schema on the private server, migrated with `waymark migrate`.
struct SharedStore {
    url: String,
    passfile: PathBuf,
}

impl SharedStore {
    fn new(scratch: &Path) -> SharedStore {
        let server = server();
        let schema = server.create_schema().expect("a schema of this test");
        let store = SharedStore {
            url: server.url(&schema),
            passfile: server.passfile().to_owned(),
        };
        let out = store
            .waymark(&scratch.join("migrate"))
            .arg("migrate")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && said.contains("schema at version"),
            "waymark migrate: {said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        store
    }

    fn args(&self) -> Vec<OsString> {
        vec![
            "--store".into(),
            self.url.clone().into(),
            "--store-password-file".into(),
            self.passfile.clone().into(),
        ]
    }

    /// `waymark --data-dir DATA --store URL --store-password-file FILE`.
    fn waymark(&self, data: &Path) -> std::process::Command {
        let mut c = waymark(data);
        c.args(self.args());
        c
    }

    /// A backend that only reads (and reads the owner of runs): it takes over nothing.
    fn observer(&self) -> (PgBackend, waymark_engine::log::Log<PgBackend>) {
        let mut options = waymark_store_pg::Options::new("observer");
        options.takeover_own = false;
        options.password_file = Some(self.passfile.clone());
        let backend = PgBackend::open(&self.url, options).expect("open the store to observe it");
        let log = waymark_engine::log::Log::new(backend.clone());
        (backend, log)
    }
}

/// `waymark daemon` on a shared store, its stderr in a file, killed when dropped.
struct Daemon {
    child: Child,
    data: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn start(root: &Path, name: &str, store: &SharedStore) -> Daemon {
        Daemon::start_with_ttl(root, name, store, "2s")
    }

    fn start_with_ttl(root: &Path, name: &str, store: &SharedStore, ttl: &str) -> Daemon {
        let data = root.join(format!("daemon-{name}"));
        std::fs::create_dir_all(&data).unwrap();
        let log = root.join(format!("daemon-{name}.log"));
        let child = store
            .waymark(&data)
            .args(["daemon", "--daemon-id", name, "--lease-ttl", ttl])
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
            .spawn()
            .expect("spawn waymark daemon");
        let sock = data.join("waymark.sock");
        let mut daemon = Daemon { child, data, log };
        eventually_blocking(
            Duration::from_secs(60),
            &format!("daemon {name} answering on {}", sock.display()),
            || {
                if let Ok(Some(status)) = daemon.child.try_wait() {
                    panic!("daemon {name} exited ({status}): {}", daemon.logged());
                }
                std::os::unix::net::UnixStream::connect(&sock).ok()
            },
        );
        daemon
    }

    fn logged(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: i32) {
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on a child this test spawned and has not reaped.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.child.id());
    }

    fn sigkill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A stopped process must be continued to die of SIGKILL's delivery promptly.
        let _ = self.child.kill();
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on our own child (possibly already reaped: then ESRCH, ignored).
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGCONT);
        }
        let _ = self.child.wait();
    }
}

fn start_detached(data: &Path, inventory: &Path) -> RunId {
    let out = waymark(data)
        .args(["start", "yb-maintenance", "--detach", "--inventory"])
        .arg(inventory)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    RunId(id.parse().unwrap_or_else(|e| panic!("run id {id:?}: {e}")))
}

fn kinds(log: &dyn EventLog, run: RunId) -> Vec<&'static str> {
    log.read(run)
        .map(|h| h.iter().map(|r| r.event.kind()).collect())
        .unwrap_or_default()
}

/// Waits until the run is well into the runbook with an attempt in flight (its last record
/// an `AttemptStarted`): a daemon stopped now leaves that attempt without a result.
fn wait_for_an_attempt_in_flight(log: &dyn EventLog, run: RunId) -> usize {
    eventually_blocking(
        Duration::from_secs(180),
        &format!("run {run} 30 records in, with an attempt in flight"),
        || {
            let k = kinds(log, run);
            (k.len() >= 30 && k.last() == Some(&"AttemptStarted")).then_some(k.len())
        },
    )
}

fn wait_for_completion(log: &dyn EventLog, run: RunId, daemons: &[&Daemon]) {
    eventually_blocking(
        Duration::from_secs(300),
        &format!("run {run} completed"),
        || {
            let history = log.read(run).ok()?;
            match history.last().map(|r| &r.event) {
                Some(Event::RunCompleted { .. }) => Some(()),
                Some(e) if e.is_terminal() || e.kind() == "CompensationStarted" => {
                    let logs: Vec<String> = daemons.iter().map(|d| d.logged()).collect();
                    panic!("run {run} ended otherwise: {e:?}\n{}", logs.join("\n---\n"))
                }
                _ => None,
            }
        },
    );
}

/// Every yb-tserver restarted exactly once, and the runbook's nine restarts in all.
fn assert_effects_exactly_once(estate: &Path) {
    let effects = read_effects(estate);
    for n in ["yb-a-1", "yb-a-2", "yb-a-3", "yb-b-1", "yb-b-2", "yb-b-3"] {
        let c = effects
            .iter()
            .filter(|e| e.target == format!("{n}/yb-tserver") && e.action == "restart")
            .count();
        assert_eq!(c, 1, "yb-tserver on {n} restarted exactly once");
    }
    let restarts = effects
        .iter()
        .filter(|e| e.system == "ssh" && e.action == "restart")
        .count();
    assert_eq!(restarts, 9, "the runbook's nine restarts, none twice");
}

fn assert_verify_clean(store: &SharedStore, scratch: &Path) {
    let out = store
        .waymark(&scratch.join("verify"))
        .arg("verify")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("0 with faults"),
        "waymark verify --store: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Failover: the owner of a run is killed mid-attempt; the other daemon takes the run over once
/// the lease expired (epoch 2), journals the attempt as interrupted, re-attempts it under the
/// same idempotency key and finishes the run: every effect once, one verifying history.
#[test]
fn a_killed_owners_run_is_taken_over_by_the_other_daemon_and_finished_once() {
    let dir = temp_dir();
    let store = SharedStore::new(dir.path());
    let estate = SandboxProcess::start(&dir.path().join("estate"), 10);
    let a = Daemon::start(dir.path(), "a", &store);
    let b = Daemon::start(dir.path(), "b", &store);
    let (observer, log) = store.observer();
    let run = start_detached(&a.data, &estate.dir.join("inventory.toml"));
    wait_for_an_attempt_in_flight(&log, run);
    assert_eq!(
        observer.owner(run).unwrap(),
        Some((Some("a".to_owned()), 1)),
        "the daemon that started the run owns it"
    );
    a.sigkill();
    wait_for_completion(&log, run, &[&b]);
    assert_eq!(
        observer.owner(run).unwrap(),
        Some((Some("b".to_owned()), 2)),
        "b took the run over with the next epoch"
    );
    let k = kinds(&log, run);
    assert!(
        k.contains(&"AttemptInterrupted"),
        "the killed attempt is journaled as interrupted: {k:?}"
    );
    assert!(
        b.logged().contains(&format!("{run}")),
        "b says it took the run over: {}",
        b.logged()
    );
    assert_effects_exactly_once(&estate.dir);
    assert_verify_clean(&store, dir.path());
}

/// Split-brain: the owner is paused (SIGSTOP) past its lease, the other daemon takes the run
/// over and goes on; when the old owner wakes, the store's fence refuses its appends (an
/// operator's signal sent to it is refused naming the new owner, and counted in its
/// `waymark_runs_fenced_total`), it stops driving the run, never gets it back, and the run
/// finishes once.
#[test]
fn a_paused_owner_is_fenced_when_it_wakes_and_the_run_finishes_once() {
    let dir = temp_dir();
    let store = SharedStore::new(dir.path());
    let estate = SandboxProcess::start(&dir.path().join("estate"), 10);
    let a = Daemon::start(dir.path(), "a", &store);
    let b = Daemon::start(dir.path(), "b", &store);
    let (observer, log) = store.observer();
    let run = start_detached(&a.data, &estate.dir.join("inventory.toml"));
    let at_stop = wait_for_an_attempt_in_flight(&log, run);
    a.signal(libc::SIGSTOP);
    eventually_blocking(
        Duration::from_secs(60),
        "b owning the run and appending to it",
        || {
            let owner = observer.owner(run).ok()??;
            (owner.0.as_deref() == Some("b") && kinds(&log, run).len() > at_stop).then_some(())
        },
    );
    a.signal(libc::SIGCONT);
    // An append by the old owner: refused by the fence, whichever way a learnt it lost the run.
    let out = waymark(&a.data)
        .args(["hold", &run.to_string(), "--reason", "split-brain probe"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("fenced") && err.contains("daemon b"),
        "a's append is refused naming the owner: {err}"
    );
    eventually_blocking(
        Duration::from_secs(30),
        "a saying it stopped driving the run",
        || {
            let logged = a.logged();
            logged
                .lines()
                .any(|l| l.contains(&run.to_string()) && l.contains("stopped driving it"))
                .then_some(())
        },
    );
    let (code, metrics) = http_unix(&a.data.join("waymark.sock"), "GET", "/metrics", None);
    assert_eq!(code, 200, "{metrics}");
    assert!(
        metrics.contains("waymark_runs_fenced_total{daemon=\"a\"} 1"),
        "{metrics}"
    );
    wait_for_completion(&log, run, &[&a, &b]);
    assert_eq!(
        observer.owner(run).unwrap(),
        Some((Some("b".to_owned()), 2)),
        "a never took the run back"
    );
    assert_effects_exactly_once(&estate.dir);
    assert_verify_clean(&store, dir.path());
}

/// The configuration's refusals, each saying what to do: a store whose schema was never
/// migrated ("run `waymark migrate`"), a URL holding a password (never repeated), a daemon name
/// a live daemon holds, and the embedded store's commands that have no meaning on a shared one.
#[test]
fn a_store_is_refused_unmigrated_with_a_password_in_its_url_or_under_a_name_in_use() {
    let dir = temp_dir();
    let server = server();
    let bare = SharedStore {
        url: server.url(&server.create_schema().unwrap()),
        passfile: server.passfile().to_owned(),
    };
    let out = bare
        .waymark(&dir.path().join("unmigrated"))
        .arg("daemon")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("waymark migrate"), "{err}");
    let ls = bare
        .waymark(&dir.path().join("unmigrated"))
        .arg("ls")
        .output()
        .unwrap();
    assert!(
        !ls.status.success() && String::from_utf8_lossy(&ls.stderr).contains("waymark migrate"),
        "{}",
        String::from_utf8_lossy(&ls.stderr)
    );

    let out = waymark(&dir.path().join("pw"))
        .args([
            "--store",
            "postgres://waymark:hunter2@127.0.0.1:1/waymark",
            "ls",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--store-password-file") && !err.contains("hunter2"),
        "{err}"
    );

    let store = SharedStore::new(dir.path());
    let _a = Daemon::start(dir.path(), "a", &store);
    let second = dir.path().join("second-a");
    let out = store
        .waymark(&second)
        .args(["daemon", "--daemon-id", "a", "--lease-ttl", "2s"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("\"a\" is in use by a live daemon") && err.contains("--daemon-id"),
        "{err}"
    );

    for command in [&["resume"][..], &["recover"][..]] {
        let out = store
            .waymark(&dir.path().join("cli"))
            .args(command)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command:?}: {err}");
        assert!(err.contains("does not take --store"), "{err}");
    }
}

/// `waymark store import` copies the data directory's runs into the store byte for byte (an open
/// run stays open there, owned by no daemon, its lease expired: the first daemon to scan takes
/// it), a second import leaves them alone, and `waymark store export` copies them into a fresh
/// data directory byte for byte, where `verify` finds them whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_import_and_export_move_histories_byte_for_byte() {
    use waymark_engine::log::Backend;
    let dir = temp_dir();
    let store = SharedStore::new(dir.path());
    let local = dir.path().join("local");
    let (done, open) = {
        let log = waymark_engine::open_log(&local).unwrap();
        let engine = Engine::builder(log.clone())
            .workflow_dyn(wf("one-step", 1, |ctx| async move {
                let n: u32 = ctx.step("echo", &1).await?;
                Ok(Payload::encode(&n).unwrap())
            }))
            .workflow_dyn(wf("blocks", 1, |ctx| async move {
                let () = ctx.step("block", &()).await?;
                Ok(Payload::null())
            }))
            .activity_fn("echo", |_ctx, input| async move { Ok(input) })
            .activity_fn("block", |_ctx, _input| async move {
                futures::future::pending::<()>().await;
                Ok(Payload::null())
            })
            .build();
        let done = engine
            .start_named("one-step", Payload::null(), "test")
            .await
            .unwrap();
        assert!(matches!(
            engine.wait(done).await.unwrap(),
            RunOutcome::Completed(_)
        ));
        let open = engine
            .start_named("blocks", Payload::null(), "test")
            .await
            .unwrap();
        wait_until(
            Duration::from_secs(10),
            "the blocking attempt started",
            || kinds(log.as_ref(), open).last() == Some(&"AttemptStarted"),
        )
        .await;
        engine.shutdown().await;
        (done, open)
    };
    let raw_local = |run| {
        let log = waymark_engine::open_log(&local).unwrap();
        log.backend().scan_run(run).unwrap()
    };
    let (local_done, local_open) = (raw_local(done), raw_local(open));

    let import = store
        .waymark(&local)
        .args(["store", "import"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&import.stdout);
    assert!(
        import.status.success() && said.starts_with("2 runs (") && said.contains("0 not moved"),
        "{said}{}",
        String::from_utf8_lossy(&import.stderr)
    );
    let (observer, _log) = store.observer();
    assert_eq!(
        observer.scan_run(done).unwrap(),
        local_done,
        "byte for byte"
    );
    assert_eq!(
        observer.scan_run(open).unwrap(),
        local_open,
        "byte for byte"
    );
    assert_eq!(
        observer.open_runs().unwrap(),
        vec![open],
        "the open run stays open"
    );
    assert_eq!(
        observer.owner(open).unwrap(),
        Some((None, 0)),
        "owned by no daemon"
    );

    let again = store
        .waymark(&local)
        .args(["store", "import"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&again.stdout);
    assert!(
        again.status.success() && said.starts_with("0 runs") && said.contains("2 already there"),
        "{said}"
    );

    let back = dir.path().join("back");
    let export = store
        .waymark(&back)
        .args(["store", "export"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&export.stdout);
    assert!(
        export.status.success() && said.starts_with("2 runs ("),
        "{said}{}",
        String::from_utf8_lossy(&export.stderr)
    );
    {
        let log = waymark_engine::open_log(&back).unwrap();
        assert_eq!(log.backend().scan_run(done).unwrap(), local_done);
        assert_eq!(log.backend().scan_run(open).unwrap(), local_open);
        assert_eq!(log.open_runs().unwrap(), vec![open]);
    }
    let verify = waymark(&back).arg("verify").output().unwrap();
    let said = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && said.starts_with("2 runs") && said.contains("0 with faults"),
        "{said}"
    );
}

/// The cluster lock across daemons: starts for one cluster sent at once to two daemons admit
/// exactly one run (the store lets one `RunStarted` claim the cluster), the others are told the
/// cluster is held; once that run has ended, a start through the other daemon succeeds (the
/// ended run's claim is released when the histories say the cluster is free).
#[test]
fn two_daemons_starting_runs_on_one_cluster_admit_one() {
    let dir = temp_dir();
    let store = SharedStore::new(dir.path());
    let estate = SandboxProcess::start(&dir.path().join("estate"), 10);
    let a = Daemon::start(dir.path(), "a", &store);
    let b = Daemon::start(dir.path(), "b", &store);
    let inventory = estate.dir.join("inventory.toml");
    let gate = Arc::new(std::sync::Barrier::new(6));
    let starts: Vec<_> = [&a.data, &a.data, &a.data, &b.data, &b.data, &b.data]
        .into_iter()
        .map(|data| {
            let (data, inventory, gate) = (data.clone(), inventory.clone(), gate.clone());
            std::thread::spawn(move || {
                let mut command = waymark(&data);
                command
                    .args(["start", "yb-maintenance", "--detach", "--inventory"])
                    .arg(&inventory);
                gate.wait();
                command.output().unwrap()
            })
        })
        .collect();
    let outputs: Vec<_> = starts.into_iter().map(|t| t.join().unwrap()).collect();
    let started: Vec<String> = outputs
        .iter()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .collect();
    assert_eq!(started.len(), 1, "exactly one start admitted: {outputs:?}");
    for o in outputs.iter().filter(|o| !o.status.success()) {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("already has run") || err.contains("is held by run"),
            "{err}"
        );
    }
    let (_observer, log) = store.observer();
    assert_eq!(log.runs().unwrap().len(), 1, "one run in the store");
    let first = RunId(started[0].parse().unwrap());
    wait_for_completion(&log, first, &[&a, &b]);
    // The ended run still holds its claim in the store until a start finds the cluster free.
    let second = start_detached(&b.data, &inventory);
    assert_ne!(second, first);
    assert_eq!(log.runs().unwrap().len(), 2);
}

impl Daemon {
    /// Starts `name` again after a kill: its name is refused while the killed incarnation's
    /// heartbeat is younger than the lease, so the start is retried until the name is free.
    fn restart(root: &Path, name: &str, store: &SharedStore) -> Daemon {
        eventually_blocking(
            Duration::from_secs(60),
            &format!("daemon {name} restarting once its name is free"),
            || {
                let data = root.join(format!("daemon-{name}"));
                let out = store
                    .waymark(&data)
                    .args(["daemon", "--daemon-id", name, "--lease-ttl", "2s"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn waymark daemon");
                let mut child = out;
                let sock = data.join("waymark.sock");
                loop {
                    if let Ok(Some(status)) = child.try_wait() {
                        let mut err = String::new();
                        let _ = std::io::Read::read_to_string(
                            &mut child.stderr.take().unwrap(),
                            &mut err,
                        );
                        assert!(
                            err.contains("is in use by a live daemon"),
                            "daemon {name} exited ({status}): {err}"
                        );
                        return None;
                    }
                    if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                // Serving: its stderr goes on to a file from here (the pipe is drained by a
                // thread so that the daemon never blocks on it).
                let log = root.join(format!("daemon-{name}.log"));
                let mut pipe = child.stderr.take().unwrap();
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap();
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut pipe, &mut file);
                });
                Some(Daemon { child, data, log })
            },
        )
    }
}

/// SIGKILL torture on the shared store (bounded: it stops at its 8th kill, or when the run
/// ended): at random instants (0-2 s apart, on a slower estate so that several kills land
/// within one run) `a`, `b` or both are killed and restarted under the same names; in the end
/// the run completed, every effect happened once, every history verifies and no run is open.
#[test]
fn sigkill_torture_of_both_daemons_at_random_instants() {
    use waymark_engine::log::Backend;
    let seed = std::env::var("WAYMARK_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("shared-store kill seed: {seed} (set WAYMARK_CRASH_SEED to replay)");
    let mut rng = waymark_tests::SplitMix(seed);
    let dir = temp_dir();
    let store = SharedStore::new(dir.path());
    let estate = SandboxProcess::start(&dir.path().join("estate"), 2);
    let mut daemons = [
        Some(Daemon::start(dir.path(), "a", &store)),
        Some(Daemon::start(dir.path(), "b", &store)),
    ];
    let (observer, log) = store.observer();
    let run = start_detached(
        &daemons[0].as_ref().unwrap().data,
        &estate.dir.join("inventory.toml"),
    );
    let mut kills = 0;
    while kills < 8 {
        std::thread::sleep(Duration::from_millis(rng.below(2000)));
        if log
            .read(run)
            .ok()
            .and_then(|h| h.last().map(|r| r.event.is_terminal()))
            == Some(true)
        {
            break;
        }
        let victims: &[usize] = match rng.below(3) {
            0 => &[0],
            1 => &[1],
            _ => &[0, 1],
        };
        for &v in victims {
            daemons[v].take().unwrap().sigkill();
            kills += 1;
        }
        for &v in victims {
            daemons[v] = Some(Daemon::restart(dir.path(), ["a", "b"][v], &store));
        }
    }
    eprintln!("kills: {kills}");
    let [a, b] = &daemons;
    wait_for_completion(&log, run, &[a.as_ref().unwrap(), b.as_ref().unwrap()]);
    assert!(observer.open_runs().unwrap().is_empty(), "no run left open");
    assert_effects_exactly_once(&estate.dir);
    assert_verify_clean(&store, dir.path());
}

/// `waymark schedule ls --output json` through the daemon serving `data`.
fn schedule_names(data: &Path) -> Vec<String> {
    let out = waymark(data)
        .args(["schedule", "ls", "--output", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "schedule ls: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    rows.iter()
        .map(|r| r["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The runs in the store started by schedule `name`, by their `started_by` (one per fire time).
fn scheduled_runs(log: &dyn EventLog, name: &str) -> Vec<(String, RunId)> {
    let prefix = format!("schedule {name} (fire time ");
    let mut runs = Vec::new();
    for run in log.runs().unwrap() {
        if let Some(Event::RunStarted { started_by, .. }) = log
            .read(run)
            .ok()
            .and_then(|h| h.first().map(|r| r.event.clone()))
        {
            if started_by.starts_with(&prefix) {
                runs.push((started_by, run));
            }
        }
    }
    runs
}

/// The schedule book is the store's (issue 15): a schedule added through daemon a is listed by
/// daemon b; both tick it, and its fire time starts exactly one run across them (the fire-time
/// claim); removed through b, a no longer lists it. Waits for the next minute's fire time.
#[test]
fn a_schedule_added_through_one_daemon_is_every_daemons_and_fires_once() {
    let dir = temp_dir();
    let store = SharedStore::new(dir.path());
    let estate = SandboxProcess::start(&dir.path().join("estate"), 10);
    let a = Daemon::start(dir.path(), "a", &store);
    let b = Daemon::start(dir.path(), "b", &store);
    let add = waymark(&a.data)
        .args([
            "schedule",
            "add",
            "every-minute",
            "--workflow",
            "yb-maintenance",
            "--cron",
            "* * * * *",
            "--window",
            "30m",
            "--inventory",
        ])
        .arg(estate.dir.join("inventory.toml"))
        .output()
        .unwrap();
    assert!(
        add.status.success(),
        "schedule add through a: {}",
        String::from_utf8_lossy(&add.stderr)
    );
    assert_eq!(
        schedule_names(&b.data),
        ["every-minute"],
        "b lists the schedule added through a"
    );
    assert!(
        !a.data.join("schedules.json").exists(),
        "with --store the book is not a daemon's file"
    );
    let (_observer, log) = store.observer();
    let (fire, first) = eventually_blocking(
        Duration::from_secs(150),
        "the schedule's first fire time starting a run",
        || scheduled_runs(&log, "every-minute").into_iter().next(),
    );
    // Both daemons tick the shared book (every 5 s) and raced for that fire time; once the
    // schedule is removed no tick starts anything new, and every fire time that started a run
    // must have started exactly one.
    let rm = waymark(&b.data)
        .args(["schedule", "rm", "every-minute"])
        .output()
        .unwrap();
    assert!(
        rm.status.success(),
        "schedule rm through b: {}",
        String::from_utf8_lossy(&rm.stderr)
    );
    assert!(
        schedule_names(&a.data).is_empty(),
        "a no longer lists the schedule removed through b"
    );
    let runs = scheduled_runs(&log, "every-minute");
    let mut fire_times: Vec<&String> = runs.iter().map(|(by, _)| by).collect();
    fire_times.sort();
    let before = fire_times.len();
    fire_times.dedup();
    assert_eq!(
        before,
        fire_times.len(),
        "each fire time started exactly one run across both daemons: {runs:?}\n{}\n---\n{}",
        a.logged(),
        b.logged()
    );
    assert!(
        runs.contains(&(fire.clone(), first)),
        "{fire} started {first}: {runs:?}"
    );
}

/// A daemon restarted on the same host after its process died reclaims its name at once, not
/// after the lease (60 s here); a name whose holder's process is alive, or that is held from
/// another host, is still refused.
#[test]
fn a_restarted_daemon_reclaims_its_name_at_once_unless_its_holder_lives_or_is_elsewhere() {
    let dir = temp_dir();
    let store = SharedStore::new(dir.path());
    let a = Daemon::start_with_ttl(dir.path(), "a", &store, "60s");
    a.sigkill();
    // Serves (Daemon::start fails the test if it exits refusing the name).
    let a = Daemon::start_with_ttl(dir.path(), "a", &store, "60s");
    drop(a);

    let ttl = Duration::from_secs(60);
    let here = waymark_cli::store::hostname();
    let dead_pid = {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    };
    let register = |name: &str, host: &str, pid: u32| {
        waymark_store_pg::PgBackend::register_daemon(
            &store.url,
            Some(&store.passfile),
            &waymark_store_pg::Identity {
                name: name.to_owned(),
                incarnation: uuid::Uuid::new_v4(),
                host: host.to_owned(),
                pid,
                api: None,
            },
            ttl,
        )
    };
    register("c", &here, dead_pid).expect("a free name");
    register("c", &here, std::process::id())
        .expect("its holder's process on this host is gone: reclaimed at once");
    let live = register("c", &here, dead_pid)
        .expect_err("its holder (this test's own process) is alive")
        .to_string();
    assert!(live.contains("is in use by a live daemon"), "{live}");
    register("d", "another-host", dead_pid).expect("a free name");
    let elsewhere = register("d", &here, std::process::id())
        .expect_err("held from another host: its pid says nothing here")
        .to_string();
    assert!(
        elsewhere.contains("is in use by a live daemon") && elsewhere.contains("another-host"),
        "{elsewhere}"
    );
}

/// The shared book's optimistic concurrency: a save at the version read wins and moves the
/// version on; a save at a stale version (or a first save when a book exists) is refused.
#[test]
fn the_shared_schedule_book_is_saved_only_at_the_version_read() {
    let dir = temp_dir();
    let store = SharedStore::new(dir.path());
    let (backend, _log) = store.observer();
    assert_eq!(backend.schedule_book().unwrap(), None, "no book yet");
    assert_eq!(
        backend.save_schedule_book(None, "one".into()).unwrap(),
        Some(1)
    );
    assert_eq!(
        backend.save_schedule_book(None, "lost".into()).unwrap(),
        None,
        "a second first save is refused"
    );
    assert_eq!(
        backend.save_schedule_book(Some(1), "two".into()).unwrap(),
        Some(2)
    );
    assert_eq!(
        backend.save_schedule_book(Some(1), "stale".into()).unwrap(),
        None,
        "a save at a stale version is refused"
    );
    assert_eq!(
        backend.schedule_book().unwrap(),
        Some((2, "two".to_owned())),
        "the refused saves changed nothing"
    );
}

/// Edits through two daemons at once lose none: each save that finds the book changed reads it
/// again and redoes its edit.
#[test]
fn concurrent_schedule_adds_through_two_daemons_are_all_kept() {
    let dir = temp_dir();
    let store = SharedStore::new(dir.path());
    let estate = SandboxProcess::start(&dir.path().join("estate"), 10);
    let a = Daemon::start(dir.path(), "a", &store);
    let b = Daemon::start(dir.path(), "b", &store);
    let inventory = estate.dir.join("inventory.toml");
    let gate = Arc::new(std::sync::Barrier::new(8));
    let adds: Vec<_> = (0..8)
        .map(|i| {
            let data = if i % 2 == 0 { &a.data } else { &b.data };
            let mut command = waymark(data);
            command
                .args(["schedule", "add", &format!("yearly-{i}")])
                .args(["--workflow", "yb-maintenance", "--cron", "0 3 1 1 *"])
                .arg("--inventory")
                .arg(&inventory);
            let gate = gate.clone();
            std::thread::spawn(move || {
                gate.wait();
                command.output().unwrap()
            })
        })
        .collect();
    for add in adds {
        let out = add.join().unwrap();
        assert!(
            out.status.success(),
            "schedule add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let expected: Vec<String> = (0..8).map(|i| format!("yearly-{i}")).collect();
    let mut through_a = schedule_names(&a.data);
    through_a.sort();
    let mut through_b = schedule_names(&b.data);
    through_b.sort();
    assert_eq!(through_a, expected, "a lists every schedule added");
    assert_eq!(through_b, expected, "b lists every schedule added");
}
