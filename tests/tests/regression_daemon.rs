//! Regression tests of issue 8 for the daemon and the CLI: the per-cluster lock (atomic, failing
//! closed, also in the foreground, held by runs that need an operator), server-side inventory
//! validation, schedule start failures, token file and TCP hardening, startup order, ordered
//! follow streams, damaged runs in listings and metrics, log colours, help texts, `plan`'s exit.
//! The daemon runs in this process ([`InProcessDaemon`]) except in the test of its log's colours
//! (which stops the process with SIGTERM).

use std::future::IntoFuture as _;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use futures::future::BoxFuture;
use waymark_engine::event::{CompensationSpec, Event, Payload, StepRef};
use waymark_engine::log::{Backend, EventLog};
use waymark_engine::workflow::{self, DynWorkflow};
use waymark_engine::{Engine, RunId, WorkflowContext};
use waymark_workflows::Inventory;

use crate::fixtures::daemon::{DaemonProcess, DaemonSettings, InProcessDaemon};
use crate::util::{eventually, http_unix, temp_dir, wait_exit, waymark, SandboxProcess};

/// The sandbox's inventory, loaded (paths resolved).
fn sandbox_inventory(sb: &SandboxProcess) -> Inventory {
    Inventory::load(&sb.dir.join("inventory.toml")).expect("sandbox inventory loads")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Writes a run's history straight into the log of `data` (no engine, no driver).
fn write_run(data: &Path, events: Vec<Event>) -> RunId {
    let run = RunId::new();
    runtime().block_on(async {
        let log = waymark_engine::open_log(data).unwrap();
        log.append(run, events).await.unwrap();
    });
    run
}

fn started(inv: &Inventory) -> Event {
    Event::RunStarted {
        workflow: "yb-maintenance".into(),
        version: 1,
        input: Payload::encode(inv).unwrap(),
        started_by: "test (uid 0)".into(),
    }
}

/// An unfinished run of `inv`'s cluster: started, its first step in flight.
fn unfinished_run(data: &Path, inv: &Inventory) -> RunId {
    write_run(
        data,
        vec![
            started(inv),
            Event::StepScheduled {
                step: StepRef::Workflow(0),
                activity: "test.noop".into(),
                label: "noop".into(),
                input: Payload::null(),
                compensation: None,
            },
            Event::AttemptStarted {
                step: StepRef::Workflow(0),
                attempt: 1,
            },
        ],
    )
}

/// Flips a byte inside record `seq` of `run`, so that its history no longer loads.
fn damage(data: &Path, run: RunId, seq: u64) {
    let log = waymark_engine::open_log(data).unwrap();
    let raw = log.backend().scan_run(run).unwrap();
    let (s, mut bytes) = raw
        .into_iter()
        .find(|(s, _)| *s == seq)
        .expect("record to damage");
    let last = bytes.len() - 2;
    bytes[last] ^= 0x20;
    log.backend().raw_put(run, s, Some(bytes)).unwrap();
    assert!(log.read(run).is_err(), "the damaged history must not load");
}

/// A run that failed, and whose compensation never completed: COMPENSATION INCOMPLETE.
fn needs_operator_run(data: &Path, inv: &Inventory) -> RunId {
    let step = |p| StepRef::Workflow(p);
    write_run(
        data,
        vec![
            started(inv),
            Event::StepScheduled {
                step: step(0),
                activity: "elb.set_weights".into(),
                label: "traffic to zone A".into(),
                input: Payload::null(),
                compensation: Some(CompensationSpec {
                    activity: "elb.set_weights".into(),
                    input: Payload::null(),
                    label: "traffic back to zone B".into(),
                }),
            },
            Event::AttemptStarted {
                step: step(0),
                attempt: 1,
            },
            Event::StepCompleted {
                step: step(0),
                output: Payload::null(),
            },
            Event::StepScheduled {
                step: step(1),
                activity: "k8s.scale".into(),
                label: "scale".into(),
                input: Payload::null(),
                compensation: None,
            },
            Event::AttemptStarted {
                step: step(1),
                attempt: 1,
            },
            Event::AttemptFailed {
                step: step(1),
                attempt: 1,
                error: "boom".into(),
                retryable: false,
                next_retry_at: None,
            },
            Event::StepFailed {
                step: step(1),
                error: "boom".into(),
            },
            Event::CompensationStarted {
                reason: "scale failed".into(),
                cancelled: false,
            },
            Event::StepScheduled {
                step: StepRef::Compensation(0),
                activity: "elb.set_weights".into(),
                label: "traffic back to zone B".into(),
                input: Payload::null(),
                compensation: None,
            },
            Event::AttemptStarted {
                step: StepRef::Compensation(0),
                attempt: 1,
            },
            Event::AttemptFailed {
                step: StepRef::Compensation(0),
                attempt: 1,
                error: "ELB unreachable".into(),
                retryable: false,
                next_retry_at: None,
            },
            Event::StepFailed {
                step: StepRef::Compensation(0),
                error: "ELB unreachable".into(),
            },
            Event::RunFailed {
                error: "scale failed; COMPENSATION INCOMPLETE, operator action needed: traffic back to zone B".into(),
            },
        ],
    )
}

fn start_body(inv: &Inventory) -> String {
    serde_json::json!({ "workflow": "yb-maintenance", "inventory": inv }).to_string()
}

fn ls_json(data: &Path) -> Vec<serde_json::Value> {
    let out = waymark(data)
        .args(["ls", "--output", "json"])
        .output()
        .unwrap();
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap_or_default()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A `yb-maintenance` that only waits for an approval: the daemon's lock is what is tested, and
/// these runs stay unfinished (holding their cluster) whatever the estate.
fn waiting_engine(log: waymark_engine::log::SharedLog) -> Engine {
    Engine::builder(log)
        .workflow_dyn(crate::util::wf("yb-maintenance", 4, |ctx| async move {
            let note: String = ctx.wait_for_signal("approve").await?;
            Ok(Payload::encode(&note).unwrap())
        }))
        .build()
}

/// Issue 8, item 1 (daemon): the busy check released its lock before awaiting `start_named`, so
/// simultaneous `POST /v1/runs` for one cluster could all pass. 16 simultaneous starts, in 4
/// rounds (a fresh cluster each): exactly one run per cluster.
#[test]
fn simultaneous_api_starts_for_one_cluster_start_exactly_one_run() {
    let dir = temp_dir();
    let sb = SandboxProcess::start(&dir.path().join("estate"), 10);
    let data = dir.path().join("data");
    let daemon = InProcessDaemon::start_with(
        &data,
        DaemonSettings {
            engine: Some(Box::new(waiting_engine)),
            ..DaemonSettings::default()
        },
    );
    let sock = daemon.socket.clone();
    let mut inv = sandbox_inventory(&sb);
    for round in 0..4 {
        inv.cluster.name = format!("race-{round}");
        let body = Arc::new(start_body(&inv));
        let barrier = Arc::new(Barrier::new(16));
        let answers: Vec<(u16, String)> = (0..16)
            .map(|_| {
                let (sock, body, barrier) = (sock.clone(), body.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    http_unix(&sock, "POST", "/v1/runs", Some(&body))
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let ok = answers.iter().filter(|(c, _)| *c == 200).count();
        assert_eq!(ok, 1, "round {round}: one start succeeds: {answers:?}");
        for (code, body) in answers.iter().filter(|(c, _)| *c != 200) {
            assert_eq!(*code, 409, "{body}");
            assert!(body.contains(&inv.cluster.name), "{body}");
        }
    }
    let per_cluster = ls_json(&data)
        .iter()
        .filter(|r| r["workflow"] == "yb-maintenance")
        .count();
    assert_eq!(per_cluster, 4, "one run per round in the log");
}

/// Issue 8, item 1 (fail closed): an unfinished run whose history does not load counted as "no
/// run" and left its cluster free. It now holds every cluster (its own is unknown), with a
/// message naming it.
#[test]
fn an_unfinished_run_whose_history_does_not_load_keeps_clusters_locked() {
    let dir = temp_dir();
    let sb = SandboxProcess::start(&dir.path().join("estate"), 10);
    let data = dir.path().join("data");
    let mut inv = sandbox_inventory(&sb);
    let damaged = unfinished_run(&data, &inv);
    damage(&data, damaged, 1);
    let _daemon = InProcessDaemon::start(&data);
    inv.gates.require_approval = true;
    let (code, body) = http_unix(
        &data.join("waymark.sock"),
        "POST",
        "/v1/runs",
        Some(&start_body(&inv)),
    );
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains(&damaged.to_string()) && body.contains("waymark verify"),
        "{body}"
    );
}

/// Issue 8, item 1 (foreground): `waymark run` without a daemon never looked for an unfinished
/// run of the same cluster, so running `run` again instead of `resume` started a second one.
#[test]
fn foreground_run_refuses_while_the_cluster_has_an_unfinished_run() {
    let dir = temp_dir();
    let sb = SandboxProcess::start(&dir.path().join("estate"), 10);
    let data = dir.path().join("data");
    let inv = sandbox_inventory(&sb);
    let earlier = unfinished_run(&data, &inv);
    let child = waymark(&data)
        .args(["run", "yb-maintenance", "--inventory"])
        .arg(sb.dir.join("inventory.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (status, _, err) = wait_exit(child, Duration::from_secs(120));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(&earlier.to_string()) && err.contains(&format!("waymark resume {earlier}")),
        "names the run and how to resume it: {err}"
    );
    let log = waymark_engine::open_log(&data).unwrap();
    assert_eq!(log.runs().unwrap(), vec![earlier], "no second run started");
}

/// Issue 8, item 6 (daemon/CLI): a run that ended with COMPENSATION INCOMPLETE was terminal and
/// freed its cluster. It now holds it (shown as `needs-operator`) until `waymark resolve`, which
/// journals the operator and the note.
#[test]
fn a_needs_operator_run_holds_its_cluster_until_resolved() {
    let dir = temp_dir();
    let sb = SandboxProcess::start(&dir.path().join("estate"), 10);
    let data = dir.path().join("data");
    let mut inv = sandbox_inventory(&sb);
    let run = needs_operator_run(&data, &inv);
    // Direct mode: listed distinctly, and the foreground run refuses.
    let rows = ls_json(&data);
    assert_eq!(rows[0]["state"], "needs-operator", "{rows:?}");
    let refused = waymark(&data)
        .args(["run", "yb-maintenance", "--inventory"])
        .arg(sb.dir.join("inventory.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("waymark resolve {run}")), "{err}");
    // Through the daemon: the start is refused until the run is resolved.
    let _daemon = InProcessDaemon::start_with(
        &data,
        DaemonSettings {
            engine: Some(Box::new(waiting_engine)),
            ..DaemonSettings::default()
        },
    );
    let sock = data.join("waymark.sock");
    inv.gates.require_approval = true;
    let (code, body) = http_unix(&sock, "POST", "/v1/runs", Some(&start_body(&inv)));
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("resolve"), "{body}");
    let empty_note = waymark(&data)
        .args(["resolve", &run.to_string(), "--note", " "])
        .output()
        .unwrap();
    assert_eq!(empty_note.status.code(), Some(2), "a note is required");
    let resolved = waymark(&data)
        .args([
            "resolve",
            &run.to_string()[..13],
            "--note",
            "weights 0/100 and MM2 at 3 restored by hand",
        ])
        .output()
        .unwrap();
    assert!(
        resolved.status.success(),
        "{}",
        String::from_utf8_lossy(&resolved.stderr)
    );
    let history = waymark(&data)
        .args(["history", &run.to_string(), "--output", "json"])
        .output()
        .unwrap();
    let h: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
    let last = &h.as_array().unwrap().last().unwrap()["event"]["RunResolved"];
    assert!(last["by"].as_str().unwrap().contains("uid"), "{last}");
    assert_eq!(last["note"], "weights 0/100 and MM2 at 3 restored by hand");
    assert_eq!(ls_json(&data)[0]["state"], "failed");
    let again = waymark(&data)
        .args(["resolve", &run.to_string(), "--note", "twice"])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2), "already resolved");
    let (code, body) = http_unix(&sock, "POST", "/v1/runs", Some(&start_body(&inv)));
    assert_eq!(code, 200, "the cluster is free again: {body}");
}

/// Issue 8, item 2 (daemon): `POST /v1/runs` deserialised the inventory without validating it
/// (an inventory the CLI refuses reached the workflow). The daemon validates it and says why.
#[test]
fn the_daemon_validates_the_inventory_it_is_sent() {
    let dir = temp_dir();
    let sb = SandboxProcess::start(&dir.path().join("estate"), 10);
    let data = dir.path().join("data");
    let _daemon = InProcessDaemon::start(&data);
    let mut inv = sandbox_inventory(&sb);
    inv.cluster.name = "  ".into();
    let (code, body) = http_unix(
        &data.join("waymark.sock"),
        "POST",
        "/v1/runs",
        Some(&start_body(&inv)),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("cluster.name"), "{body}");
    assert!(ls_json(&data).is_empty(), "no run started");
}

fn schedule_ls(data: &Path) -> serde_json::Value {
    let out = waymark(data)
        .args(["schedule", "ls", "--output", "json"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Issue 8, item 7: a fire time was marked handled before its run started, and a failed start
/// was only logged. Now the failure is shown by `schedule ls` and, with `overlap = queue`, the
/// fire time stays queued. (Waits for the next minute's fire time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_start_that_fails_is_kept_queued_and_shown() {
    let dir = temp_dir();
    let sb = SandboxProcess::start(&dir.path().join("estate"), 10);
    let data = dir.path().join("data");
    let _daemon = InProcessDaemon::start(&data);
    let inventory = sb.dir.join("scheduled.toml");
    std::fs::copy(sb.dir.join("inventory.toml"), &inventory).unwrap();
    let add = waymark(&data)
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
            "--overlap",
            "queue",
            "--inventory",
        ])
        .arg(&inventory)
        .output()
        .unwrap();
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    // The inventory goes away before the fire time: the start fails.
    std::fs::remove_file(&inventory).unwrap();
    let row = eventually(
        Duration::from_secs(100),
        "the failed start shown by `schedule ls`",
        || {
            let v = schedule_ls(&data);
            (!v[0]["last_failure"].is_null()).then(|| v[0].clone())
        },
    )
    .await;
    let failure = &row["last_failure"];
    assert!(
        failure["message"]
            .as_str()
            .unwrap()
            .contains("scheduled.toml"),
        "{failure}"
    );
    assert!(failure["at"].as_str().is_some() && failure["fire_time"].as_str().is_some());
    assert_eq!(row["queued"], 1, "the fire time stays queued: {row}");
    assert!(ls_json(&data).is_empty(), "no run started");
    let text = waymark(&data).args(["schedule", "ls"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("last failure"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
}

fn write_token(dir: &Path, mode: u32) -> PathBuf {
    let token = dir.join("token");
    std::fs::write(&token, "s3cr3t-token-for-waymark-tests\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(mode)).unwrap();
    token
}

fn http_tcp(addr: &str, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, resp)
}

/// Issue 8, item 10: a token file others can read was accepted; a bare port bound as given;
/// TCP clients could make the daemon read any path through `schedule add`.
#[test]
fn token_file_mode_loopback_default_and_tcp_schedule_paths_are_checked() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let token = write_token(dir.path(), 0o644);
    // `--listen-tcp 0`: a bare port.
    let bare_port = waymark_cli::daemon::parse_listen("0").unwrap();
    let settings = |inventory_dir: Option<PathBuf>| DaemonSettings {
        tcp: Some(bare_port),
        token_file: Some(token.clone()),
        inventory_dir,
        ..DaemonSettings::default()
    };
    let Err(err) = InProcessDaemon::try_start(&data, settings(None)) else {
        panic!("a token file others can read was accepted");
    };
    assert!(
        err.contains(&format!("chmod 600 {}", token.display())),
        "{err}"
    );
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let inventories = dir.path().join("inventories");
    std::fs::create_dir_all(&inventories).unwrap();
    let daemon = InProcessDaemon::start_with(&data, settings(Some(inventories.clone())));
    let served = daemon.tcp.expect("serves TCP");
    assert!(
        served.ip().is_loopback(),
        "a bare port binds loopback: {served}"
    );
    let addr = served.to_string();
    let auth = "Authorization: Bearer s3cr3t-token-for-waymark-tests\r\n";
    let (code, body) = http_tcp(
        &addr,
        &format!("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n"),
    );
    assert_eq!(code, 200, "a bare port is served on 127.0.0.1: {body}");
    for path in [
        "/etc/passwd",
        &format!("{}/../token", inventories.display()),
    ] {
        let add = serde_json::json!({
            "name": "probe", "workflow": "yb-maintenance", "inventory": path,
            "cron": "0 3 * * 2", "window": null, "overlap": "skip", "catch_up": "none",
        })
        .to_string();
        let (code, body) = http_tcp(
            &addr,
            &format!(
                "POST /v1/schedules HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{add}",
                add.len()
            ),
        );
        assert_eq!(code, 403, "{path}: {body}");
        assert!(body.contains("--inventory-dir"), "{body}");
        assert!(!body.contains("root:"), "{body}");
    }
}

/// Issue 8, item 12: the daemon resumed runs before checking its token, schedules and
/// listeners, so a bad setting exited with drivers mid-attempt. Now nothing is resumed.
#[test]
fn a_bad_setting_exits_before_any_run_is_resumed() {
    let dir = temp_dir();
    let sb = SandboxProcess::start(&dir.path().join("estate"), 10);
    let data = dir.path().join("data");
    let run = unfinished_run(&data, &sandbox_inventory(&sb));
    let short = dir.path().join("short-token");
    std::fs::write(&short, "too-short").unwrap();
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
    let good = write_token(dir.path(), 0o600);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let schedules = data.join("schedules.json");
    let tcp = |addr: &str, token: &Path| DaemonSettings {
        tcp: Some(waymark_cli::daemon::parse_listen(addr).unwrap()),
        token_file: Some(token.to_owned()),
        ..DaemonSettings::default()
    };
    for (what, settings, schedules_text) in [
        ("short token", tcp("0", &short), None),
        ("TCP address in use", tcp(&taken_addr, &good), None),
        (
            "corrupt schedules file",
            DaemonSettings::default(),
            Some("{ not json"),
        ),
    ] {
        if let Some(t) = schedules_text {
            std::fs::write(&schedules, t).unwrap();
        }
        let Err(err) = InProcessDaemon::try_start(&data, settings) else {
            panic!("{what}: the daemon started");
        };
        assert!(!err.is_empty(), "{what}: says why");
        // Resuming the run would have journaled its attempt in flight as interrupted.
        let log = waymark_engine::open_log(&data).unwrap();
        assert_eq!(
            log.read(run).unwrap().len(),
            3,
            "{what}: the run was not touched ({err})"
        );
    }
}

type Body = Arc<
    dyn Fn(WorkflowContext, Payload) -> BoxFuture<'static, Result<Payload, workflow::Error>>
        + Send
        + Sync,
>;

struct FnWorkflow(Body);

impl DynWorkflow for FnWorkflow {
    fn name(&self) -> &'static str {
        "fan-out"
    }
    fn version(&self) -> u32 {
        1
    }
    fn call(
        self: Arc<Self>,
        ctx: WorkflowContext,
        input: Payload,
    ) -> BoxFuture<'static, Result<Payload, workflow::Error>> {
        (self.0)(ctx, input)
    }
}

/// Issue 8, item 13 (CLI part): `follow_lines` dropped every record with `seq <= last` and
/// ignored a lagging broadcast, so `attach` could silently miss events. 500 parallel steps
/// (1,500 records, more than the broadcast holds) while the follower's reader is stalled and the
/// run still going: every record is delivered once, in sequence order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follow_delivers_every_event_in_order_under_many_parallel_steps() {
    let body: Body = Arc::new(move |ctx: WorkflowContext, _| {
        Box::pin(async move {
            let () = ctx.step("gate", &()).await?;
            let steps: Vec<_> = (0..500u32)
                .map(|i| ctx.step::<u32, u32>("echo", &i).into_future())
                .collect();
            let outs = futures::future::try_join_all(steps).await?;
            let () = ctx.step("hold", &()).await?;
            Ok(Payload::encode(&outs.len()).unwrap())
        })
    });
    let gate = Arc::new(tokio::sync::Notify::new());
    let hold = Arc::new(tokio::sync::Notify::new());
    let waits_for = |n: &Arc<tokio::sync::Notify>| {
        let n = n.clone();
        move |_, input| {
            let n = n.clone();
            async move {
                n.notified().await;
                Ok(input)
            }
        }
    };
    let log = waymark_engine::memory_log();
    let engine = Engine::builder(log.clone())
        .workflow_dyn(Arc::new(FnWorkflow(body)))
        .activity_fn("gate", waits_for(&gate))
        .activity_fn("hold", waits_for(&hold))
        .activity_fn("echo", |_, input| async move { Ok(input) })
        .build();
    let run = engine
        .start_named("fan-out", Payload::null(), "test")
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let follower = {
        let engine = engine.clone();
        tokio::spawn(async move { waymark_cli::follow::follow_lines(&engine, run, tx).await })
    };
    // The follower has subscribed once its first line arrives; then its reader stalls while
    // every parallel step runs (the run itself then waits at "hold": it is still going).
    let mut lines = vec![rx.recv().await.unwrap()];
    gate.notify_one();
    let completed = || {
        log.read(run)
            .unwrap()
            .iter()
            .filter(|r| matches!(r.event, Event::StepCompleted { .. }))
            .count()
    };
    crate::util::wait_until(Duration::from_secs(120), "500 parallel steps done", || {
        completed() > 500
    })
    .await;
    let reader = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            lines.push(line);
        }
        lines
    });
    hold.notify_one();
    engine.wait(run).await.unwrap();
    follower.await.unwrap().unwrap();
    let lines = reader.await.unwrap();
    let seqs: Vec<u64> = lines
        .iter()
        .filter_map(|l| match l {
            waymark_cli::follow::FollowLine::Event(e) => Some(e.seq),
            _ => None,
        })
        .collect();
    let total = log.read(run).unwrap().len() as u64;
    assert!(total > 1500, "{total} records");
    assert_eq!(
        seqs,
        (0..total).collect::<Vec<_>>(),
        "every record once, in order"
    );
    assert!(matches!(
        lines.last(),
        Some(waymark_cli::follow::FollowLine::End { code: 0, .. })
    ));
}

/// Issue 8, item 13: records arriving out of order are put back in order, a gap is filled from
/// the history, and duplicates of what the history already delivered are dropped.
#[test]
fn in_order_reorders_fills_gaps_and_drops_duplicates() {
    use waymark_cli::follow::InOrder;
    let mut h = waymark_engine::testing::HistoryBuilder::new("w", 1, "null");
    for i in 0..6 {
        h.scheduled(i, "a", "null");
    }
    let records = h.build();
    let seqs = |v: Vec<waymark_engine::Record>| v.iter().map(|r| r.seq).collect::<Vec<_>>();
    let mut order = InOrder::after(None);
    assert_eq!(seqs(order.fill(records[..3].to_vec())), vec![0, 1, 2]);
    assert_eq!(seqs(order.accept(records[1].clone())), Vec::<u64>::new());
    assert_eq!(seqs(order.accept(records[4].clone())), Vec::<u64>::new());
    assert!(order.has_gap());
    assert_eq!(seqs(order.accept(records[3].clone())), vec![3, 4]);
    assert_eq!(seqs(order.accept(records[7].clone())), Vec::<u64>::new());
    assert_eq!(
        seqs(order.fill(records.clone())),
        (5..13).collect::<Vec<_>>()
    );
    assert!(!order.has_gap());
    assert_eq!(order.last(), Some(12));
}

/// Issue 8, item 15 (metrics): damaged runs were left out of `/metrics` and listed apart by
/// `ls`. They are counted (`waymark_runs_damaged`) and listed with state `damaged`.
#[test]
fn damaged_runs_are_counted_by_metrics_and_listed_by_ls() {
    let dir = temp_dir();
    let sb = SandboxProcess::start(&dir.path().join("estate"), 10);
    let data = dir.path().join("data");
    let run = needs_operator_run(&data, &sandbox_inventory(&sb));
    damage(&data, run, 2);
    let token = write_token(dir.path(), 0o600);
    let daemon = InProcessDaemon::start_with(&data, DaemonSettings::tcp(&token));
    let addr = daemon.tcp.expect("serves TCP").to_string();
    let (code, body) = http_tcp(
        &addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Authorization: Bearer s3cr3t-token-for-waymark-tests\r\n\r\n",
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("waymark_runs_damaged 1"), "{body}");
    assert!(body.contains("waymark_runs{state=\"damaged\"} 1"), "{body}");
    let rows = ls_json(&data);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["run"], run.to_string());
    assert_eq!(rows[0]["state"], "damaged");
}

/// Issue 8, item 17: the daemon's log, redirected to a file or journald, was full of ANSI colour
/// codes. Colour is used only when stderr is a terminal.
#[test]
fn the_daemon_log_has_no_colour_codes_when_stderr_is_not_a_terminal() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let daemon = DaemonProcess::start(&data, &[]);
    let log = daemon.sigterm();
    assert!(log.contains("serving"), "{log}");
    assert!(!log.contains('\u{1b}'), "escape codes in: {log:?}");
}

/// Issue 8, item 17: `--help` showed clippy's doc-markdown backticks around
/// `WAYMARK_DATA_DIR` in its text; and `waymark resolve` is documented.
#[test]
fn help_texts_render_cleanly_and_document_resolve() {
    let dir = temp_dir();
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["resolve", "--help"],
        &["daemon", "--help"],
        &["start", "--help"],
        &["ls", "--help"],
        &["hold", "--help"],
    ] {
        let out = waymark(dir.path()).args(args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {text}");
        assert!(
            !text.contains('`'),
            "Markdown backticks in {args:?}: {text}"
        );
    }
    let help = waymark(dir.path()).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("resolve"));
}

/// Issue 8, item 17: `waymark sandbox up` did not say which AWS settings `waymark run` needs
/// against it; it prints the exports.
#[test]
fn sandbox_up_prints_the_aws_exports_it_needs() {
    let dir = temp_dir();
    let mut child = std::process::Command::new(crate::util::waymark_bin())
        .args(["sandbox", "up", "--faster", "10", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let found = loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l.contains("export AWS_ACCESS_KEY_ID=") => break Some(l),
            Ok(l) => seen.push(l),
            Err(_) => break None,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let line = found.unwrap_or_else(|| panic!("no export line in {seen:?}"));
    for var in ["AWS_SECRET_ACCESS_KEY=", "AWS_REGION="] {
        assert!(line.contains(var), "{line}");
    }
}

/// Issue 8, item 18: `waymark plan` exited 0 when it reported an inventory node "not in the
/// cluster"; scripts could not notice. It exits 1 and says so.
#[test]
fn plan_exits_non_zero_when_an_inventory_node_is_not_in_the_cluster() {
    let dir = temp_dir();
    let sb = SandboxProcess::start(&dir.path().join("estate"), 10);
    let text = std::fs::read_to_string(sb.dir.join("inventory.toml")).unwrap();
    let ok = waymark(dir.path())
        .args(["plan", "yb-maintenance", "--inventory"])
        .arg(sb.dir.join("inventory.toml"))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "a matching inventory plans fine: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // One more tserver node, unknown to the cluster.
    let start = text.find("[[yugabyte.nodes]]").expect("a node table");
    let end = text[start + 1..]
        .find("\n[")
        .map_or(text.len(), |i| start + 1 + i + 1);
    let first = &text[start..end];
    let name = first
        .lines()
        .find_map(|l| l.strip_prefix("name = "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let extra: String = first
        .replace(&format!("\"{name}\""), "\"yb-z-9\"")
        .lines()
        .filter(|l| !l.starts_with("master_"))
        .fold(String::new(), |mut s, l| {
            s.push_str(l);
            s.push('\n');
            s
        });
    let inventory = sb.dir.join("extra-node.toml");
    std::fs::write(&inventory, format!("{text}\n{extra}")).unwrap();
    let out = waymark(dir.path())
        .args(["plan", "yb-maintenance", "--inventory"])
        .arg(&inventory)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{err}{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        err.contains("yb-z-9") && err.contains("not in the cluster"),
        "{err}"
    );
}

/// Issue 8, item 17: without AWS credentials, the AWS SDK's credential-chain warnings were
/// printed raw (with ANSI escapes) into the output. They are filtered (the ELB activity reports
/// the missing credentials itself) unless `WAYMARK_LOG` names an `aws` target.
#[test]
fn aws_credential_chain_warnings_are_not_printed_raw() {
    let dir = temp_dir();
    let sb = SandboxProcess::start(&dir.path().join("estate"), 10);
    let out = waymark(dir.path())
        .args(["plan", "yb-maintenance", "--inventory"])
        .arg(sb.dir.join("inventory.toml"))
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("aws_config"), "{err}");
    assert!(!err.contains('\u{1b}'), "{err:?}");
}

/// Issue 12 (daemon): a schedule's window was only a limit for starting. The daemon now puts
/// the end of the window (fire time + window) in the run's input as `run.finish_by`, the
/// workflow's deadline for finishing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_run_must_finish_by_the_end_of_its_window() {
    use waymark_cli::schedule::{CatchUp, NewSchedule, Overlap, ScheduleBook};
    let dir = temp_dir();
    let sb = SandboxProcess::start(&dir.path().join("estate"), 10);
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let inventory = sb.dir.join("inventory.toml");
    // A schedule last looked at two minutes ago: the first tick finds a fire time in its window.
    let mut book = ScheduleBook::default();
    book.add(
        NewSchedule {
            name: "every-minute".into(),
            workflow: "yb-maintenance".into(),
            inventory: inventory.clone(),
            cluster: sandbox_inventory(&sb).cluster.name,
            cron: "* * * * *".into(),
            window: Some(Duration::from_secs(30 * 60)),
            overlap: Overlap::Skip,
            catch_up: CatchUp::None,
            timezone: None,
            notify: Vec::new(),
        },
        chrono::Utc::now() - chrono::TimeDelta::minutes(2),
    )
    .unwrap();
    book.save(&waymark_cli::paths::schedules_path(&data))
        .unwrap();
    let _daemon = InProcessDaemon::start_with(
        &data,
        DaemonSettings {
            engine: Some(Box::new(waiting_engine)),
            ..DaemonSettings::default()
        },
    );
    let started = eventually(
        Duration::from_secs(60),
        "the schedule's run started",
        || {
            let out = waymark(&data)
                .args(["history", "--output", "json"])
                .arg(ls_json(&data).first()?["run"].as_str()?)
                .output()
                .ok()?;
            let h: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            h[0]["event"]["RunStarted"].as_object().cloned()
        },
    )
    .await;
    let by = started["started_by"].as_str().unwrap();
    let fire_time = by
        .split_once("(fire time ")
        .and_then(|(_, t)| t.strip_suffix(')'))
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .unwrap_or_else(|| panic!("the fire time in {by:?}"));
    let input: Inventory = serde_json::from_str(started["input"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("the run's input is an inventory ({e}): {started:?}"));
    assert_eq!(
        input.run.finish_by,
        Some(fire_time.to_utc() + chrono::TimeDelta::minutes(30)),
        "finish_by is the end of the fire time's window; started by {by}"
    );
}

/// Issue 12 (CLI): `ls`, `show` and `/metrics` knew nothing of held and refused runs. A held run
/// (unfinished, its cluster locked) and a refused run (ended, nothing changed) are listed with
/// their states and reasons, `ls --state held|refused` filters them, and `/metrics` counts them
/// and names the refused run's reasons.
#[test]
fn held_and_refused_runs_are_listed_shown_and_exported_with_their_reasons() {
    let dir = temp_dir();
    let sb = SandboxProcess::start(&dir.path().join("estate"), 10);
    let data = dir.path().join("data");
    let inv = sandbox_inventory(&sb);
    let refused = write_run(
        &data,
        vec![
            started(&inv),
            Event::RunRefused {
                reasons: vec![
                    "pre-flight: zone A target group has no healthy target".into(),
                    "pre-flight: MirrorMaker2 has 0 replicas".into(),
                ],
            },
        ],
    );
    let held = write_run(
        &data,
        vec![
            started(&inv),
            Event::SignalReceived {
                name: "hold".into(),
                payload: Payload::encode(&"zone B alarms: looking first").unwrap(),
                sent_by: "alice (uid 1000)".into(),
            },
        ],
    );
    let ls_state = |state: &str| {
        let out = waymark(&data)
            .args(["ls", "--state", state, "--output", "json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let rows = ls_state("refused");
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    assert_eq!(rows[0]["run"], refused.to_string());
    let reason = rows[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("no healthy target") && reason.contains("0 replicas"),
        "{reason}"
    );
    let rows = ls_state("held");
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    assert_eq!(rows[0]["run"], held.to_string());
    assert_eq!(
        rows[0]["reason"], "held by alice (uid 1000): zone B alarms: looking first",
        "{rows}"
    );
    let show = waymark(&data)
        .args(["show", &held.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        text.contains("state     held") && text.contains("zone B alarms"),
        "{text}"
    );
    let token = write_token(dir.path(), 0o600);
    let daemon = InProcessDaemon::start_with(
        &data,
        DaemonSettings {
            engine: Some(Box::new(waiting_engine)),
            ..DaemonSettings::tcp(&token)
        },
    );
    let (code, body) = http_tcp(
        &daemon.tcp.unwrap().to_string(),
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Authorization: Bearer s3cr3t-token-for-waymark-tests\r\n\r\n",
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("waymark_runs{state=\"held\"} 1"), "{body}");
    assert!(body.contains("waymark_runs{state=\"refused\"} 1"), "{body}");
    assert!(
        body.contains(&format!(
            "waymark_run_refused{{run=\"{refused}\",reason=\"pre-flight: zone A target group has no healthy target; pre-flight: MirrorMaker2 has 0 replicas\"}} 1"
        )),
        "{body}"
    );
}

/// Issue 12 (CLI): there was no way to stop a run where it stands without compensating.
/// `waymark hold RUN --reason` journals a `hold` signal with the operator (through the daemon
/// here), and the run is then listed `held`, its cluster still locked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_journals_the_operator_and_the_reason_and_the_run_stays_locked() {
    let dir = temp_dir();
    let sb = SandboxProcess::start(&dir.path().join("estate"), 10);
    let data = dir.path().join("data");
    let daemon = InProcessDaemon::start_with(
        &data,
        DaemonSettings {
            engine: Some(Box::new(waiting_engine)),
            ..DaemonSettings::default()
        },
    );
    let inv = sandbox_inventory(&sb);
    let (code, body) = http_unix(&daemon.socket, "POST", "/v1/runs", Some(&start_body(&inv)));
    assert_eq!(code, 200, "{body}");
    let run: serde_json::Value = serde_json::from_str(&body).unwrap();
    let run = run["run"].as_str().unwrap().to_owned();
    let help = waymark(&data).args(["hold", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for what in ["pause", "compensation", "locked", "resume", "cancel"] {
        assert!(help.contains(what), "hold --help explains {what}: {help}");
    }
    let out = waymark(&data)
        .args(["hold", &run[..13], "--reason", "zone B alarms"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = eventually(Duration::from_secs(30), "the run listed held", || {
        ls_json(&data).into_iter().find(|r| r["state"] == "held")
    })
    .await;
    assert_eq!(row["run"], run.as_str());
    let reason = row["reason"].as_str().unwrap();
    assert!(
        reason.contains("uid") && reason.ends_with(": zone B alarms"),
        "{reason}"
    );
    // Still its cluster's run: another start is refused.
    let (code, body) = http_unix(&daemon.socket, "POST", "/v1/runs", Some(&start_body(&inv)));
    assert_eq!(code, 409, "{body}");
    assert!(body.contains(&run), "{body}");
}

/// Issue 12 (CLI): without a daemon, `waymark hold` journals the signal straight into the data
/// directory's log, as the other signals do; the run is then listed `held`.
#[test]
fn hold_without_a_daemon_is_journaled_in_the_data_directory() {
    let dir = temp_dir();
    let sb = SandboxProcess::start(&dir.path().join("estate"), 10);
    let data = dir.path().join("data");
    let run = unfinished_run(&data, &sandbox_inventory(&sb));
    let out = waymark(&data)
        .args(["hold", &run.to_string(), "--reason", "change freeze"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = waymark_engine::open_log(&data).unwrap();
    let last = log.read(run).unwrap().last().unwrap().event.clone();
    assert!(
        matches!(&last, Event::SignalReceived { name, sent_by, .. } if name == "hold" && sent_by.contains("uid")),
        "{last:?}"
    );
    drop(log);
    let rows = ls_json(&data);
    assert_eq!(rows[0]["state"], "held", "{rows:?}");
    assert!(
        rows[0]["reason"]
            .as_str()
            .is_some_and(|r| r.ends_with(": change freeze")),
        "{rows:?}"
    );
}
