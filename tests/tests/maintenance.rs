//! `yb-maintenance` end to end: the `waymark` binary against the sandbox estate running as its own
//! process; the engine process killed with SIGKILL at step boundaries and at random instants;
//! failure at each runbook step compensated; an unhealthy cluster refused before any effect; the
//! approval gate; inventory validation.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use waymark_engine::event::Event;
use waymark_engine::log::EventLog;
use waymark_sandbox::estate::Estate;
use waymark_sandbox::{read_effects, Effect};
use waymark_tests::SplitMix;
use waymark_workflows::inventory::{Error as InventoryError, Inventory};

use crate::util::{sandbox, temp_dir, wait_until, waymark, SandboxProcess};

fn count(effects: &[Effect], system: &str, target: &str, action: &str) -> usize {
    effects
        .iter()
        .filter(|e| e.system == system && e.target == target && e.action == action)
        .count()
}

fn estate(dir: &Path) -> Estate {
    serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap()
}

/// Traffic weights (zone A, zone B) and `MirrorMaker2` replicas, read from the sandbox's state.
fn traffic_and_replication(st: &Estate) -> ((i32, i32), u32) {
    let listener = st
        .elb
        .listener_arn(waymark_sandbox::elb::LOAD_BALANCER)
        .unwrap()
        .to_owned();
    let weights = st.elb.weights(&listener).unwrap();
    let tg = |z: &str| {
        st.elb
            .target_group_arn(&waymark_sandbox::elb::target_group_name(z))
            .unwrap()
            .to_owned()
    };
    let a = weights.get(&tg("A")).copied().unwrap_or(0);
    let b = weights.get(&tg("B")).copied().unwrap_or(0);
    ((a, b), st.k8s.deployments["prod/mirrormaker2"].replicas)
}

/// The end state of a complete run, and no effect twice: every server restarted once, every
/// tserver leader-blacklisted and removed once (and the blacklist empty), and the invariant
/// monitor never saw two tservers or two masters down, nor a forward to a group without a
/// healthy target.
pub(crate) fn check_completed_estate(dir: &Path) {
    let effects = read_effects(dir);
    let st = estate(dir);
    let inv = waymark_sandbox::read_invariants(dir).expect("invariants.json");
    assert!(inv.max_tservers_down <= 1, "{inv:?}");
    assert!(inv.max_masters_down <= 1, "{inv:?}");
    assert_eq!(inv.forwards_to_unhealthy, 0, "{inv:?}");
    // Step 1 moves every forward that carries the zones' traffic (the listener and its
    // `/waymark/*` rule) before MirrorMaker2 stops: never replication off with traffic in B.
    assert_eq!(inv.mirrormaker_off_while_traffic_in_b, 0, "{inv:?}");
    assert!(st.yb.blacklist.is_empty(), "{:?}", st.yb.blacklist);
    for n in &st.spec.nodes {
        for action in ["blacklist-add", "blacklist-remove"] {
            let server = format!("{}:9100", n.name);
            assert_eq!(
                effects
                    .iter()
                    .filter(|e| e.target == "yb-admin/leader_blacklist"
                        && e.action == action
                        && e.details["server"] == server.as_str())
                    .count(),
                1,
                "{action} {server} exactly once"
            );
        }
    }
    for n in &st.spec.nodes {
        let want_master = usize::from(n.master);
        assert_eq!(
            count(&effects, "ssh", &format!("{}/yb-master", n.name), "restart"),
            want_master,
            "yb-master on {}",
            n.name
        );
        assert_eq!(
            count(
                &effects,
                "ssh",
                &format!("{}/yb-tserver", n.name),
                "restart"
            ),
            1,
            "yb-tserver on {}",
            n.name
        );
    }
    assert_eq!(
        count(&effects, "k8s", "prod/fp", "rollout"),
        1,
        "one rollout of fp"
    );
    assert_eq!(
        count(&effects, "k8s", "prod/fp-async", "rollout"),
        1,
        "one rollout of fp-async"
    );
    assert_eq!(
        count(&effects, "k8s", "prod/mirrormaker2", "scale"),
        2,
        "MirrorMaker2 scaled down and back once"
    );
    let registers = effects
        .iter()
        .filter(|e| e.system == "elb" && e.action == "register")
        .count();
    assert_eq!(registers, 1, "the new node registered once");
    let modifies = effects
        .iter()
        .filter(|e| e.system == "elb" && e.action.starts_with("modify"))
        .count();
    assert_eq!(
        modifies, 4,
        "traffic moved to A and back to B, once each, on the listener and on its rule"
    );
    let listener = st
        .elb
        .listener_arn(waymark_sandbox::elb::LOAD_BALANCER)
        .unwrap()
        .to_owned();
    let rule = st
        .elb
        .rule_arn(&listener, waymark_sandbox::elb::RULE_PRIORITY)
        .unwrap()
        .to_owned();
    assert_eq!(
        st.elb.weights(&rule),
        st.elb.weights(&listener),
        "the /waymark/* rule is back as the listener"
    );
    assert_eq!(
        traffic_and_replication(&st),
        ((0, 100), 2),
        "traffic 100% in zone B, MirrorMaker2 at its 2 replicas"
    );
    let b = st
        .elb
        .target_group_arn(&waymark_sandbox::elb::yb_target_group_name("B"))
        .unwrap()
        .to_owned();
    assert!(
        st.elb.registered(&b).contains(&st.spec.new_target),
        "the new node is in the zone-B target group"
    );
}

#[test]
fn full_run_restarts_every_node_exactly_once_and_restores_traffic_and_replication() {
    let dir = temp_dir();
    let sb = SandboxProcess::start(&dir.path().join("estate"), 10);
    let out = waymark(&dir.path().join("data"))
        .args(["run", "yb-maintenance", "--inventory"])
        .arg(sb.dir.join("inventory.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("completed"), "{stdout}");
    check_completed_estate(&sb.dir);
    let verify = waymark(&dir.path().join("data"))
        .arg("verify")
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let run = stdout.lines().next().unwrap().trim().to_owned();
    let replay = waymark(&dir.path().join("data"))
        .args(["replay", &run])
        .output()
        .unwrap();
    assert!(
        replay.status.success()
            && String::from_utf8_lossy(&replay.stdout).contains("deterministic"),
        "{}",
        String::from_utf8_lossy(&replay.stdout)
    );
}

/// Spawns `waymark run` (first) or `waymark resume` with stderr piped.
fn engine_process(data: &Path, inventory: &Path, first: bool) -> Child {
    let mut c = waymark(data);
    if first {
        c.args(["run", "yb-maintenance", "--inventory"])
            .arg(inventory);
    } else {
        c.arg("resume");
    }
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn event_seq(line: &str) -> Option<u64> {
    let rest = line.split_once(" #")?.1;
    rest.split_whitespace().next()?.parse().ok()
}

fn run_is_finished(data: &Path) -> bool {
    let log = waymark_engine::open_log(data).unwrap();
    let runs = log.runs().unwrap();
    !runs.is_empty() && log.open_runs().unwrap().is_empty()
}

#[test]
fn sigkill_after_every_step_completion_then_resume_ends_the_same_with_no_duplicate_effect() {
    let dir = temp_dir();
    let sb = SandboxProcess::start(&dir.path().join("estate"), 10);
    let data = dir.path().join("data");
    let inventory = sb.dir.join("inventory.toml");
    let mut newest_seen: Option<u64> = None;
    let mut kills = 0;
    for round in 0..400 {
        let mut child = engine_process(&data, &inventory, round == 0);
        let stderr = child.stderr.take().unwrap();
        let mut killed = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let Some(seq) = event_seq(&line) else {
                continue;
            };
            if newest_seen.is_some_and(|n| seq <= n) {
                continue; // replayed history, printed again on resume
            }
            newest_seen = Some(seq);
            if line.contains(": completed ->") {
                child.kill().unwrap();
                killed = true;
                break;
            }
        }
        let status = child.wait().unwrap();
        if killed {
            kills += 1;
        } else {
            assert!(status.success(), "engine process failed: {status}");
        }
        if run_is_finished(&data) {
            break;
        }
    }
    assert!(kills >= 40, "only {kills} kills at step boundaries");
    eprintln!("step-boundary kills: {kills}");
    check_completed_estate(&sb.dir);
    let log = waymark_engine::open_log(&data).unwrap();
    let run = log.runs().unwrap()[0];
    let history = log.read(run).unwrap();
    assert!(matches!(
        history.last().unwrap().event,
        Event::RunCompleted { .. }
    ));
    let interrupted = history
        .iter()
        .filter(|r| matches!(r.event, Event::AttemptInterrupted { .. }))
        .count();
    eprintln!("attempts recorded as interrupted: {interrupted}");
}

#[test]
#[allow(clippy::zombie_processes)] // `try_wait` reaps the children that exit by themselves
fn sigkill_at_random_instants_inside_steps_then_resume_ends_the_same() {
    let seed = std::env::var("WAYMARK_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()) ^ 0x9e37_79b9);
    eprintln!("random kill seed: {seed} (set WAYMARK_CRASH_SEED to replay)");
    let mut rng = SplitMix(seed);
    let dir = temp_dir();
    // The sandbox's default time scale (0.02): a stopped tserver stays ALIVE at the master for
    // 1.2 s, eight poll intervals, and bootstraps over time: the kills land while the lag is on.
    let sb = SandboxProcess::start(&dir.path().join("estate"), 1);
    let data = dir.path().join("data");
    let inventory = sb.dir.join("inventory.toml");
    let mut kills = 0;
    let started = Instant::now();
    for round in 0..200 {
        let mut child = engine_process(&data, &inventory, round == 0);
        let deadline = Instant::now() + Duration::from_millis(100 + rng.below(700));
        let mut exited = None;
        while Instant::now() < deadline {
            if let Some(s) = child.try_wait().unwrap() {
                exited = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(s) = exited {
            assert!(s.success(), "engine process failed: {s}");
        } else {
            child.kill().unwrap();
            child.wait().unwrap();
            kills += 1;
        }
        if run_is_finished(&data) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "no end after {kills} kills (seed {seed})"
        );
    }
    assert!(run_is_finished(&data), "run did not finish (seed {seed})");
    assert!(kills >= 5, "only {kills} random kills (seed {seed})");
    eprintln!("random kills: {kills}");
    check_completed_estate(&sb.dir);
}

#[test]
fn failure_at_each_step_after_traffic_moved_is_compensated_with_the_cause_in_history() {
    let dir = temp_dir();
    let children: Vec<(u8, std::path::PathBuf, Child)> = (1..=9u8)
        .map(|step| {
            let data = dir.path().join(format!("step{step}"));
            let child = waymark(&data)
                .args(["demo", "--faster", "10", "--fail-at", &step.to_string()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (step, data, child)
        })
        .collect();
    for (step, data, child) in children {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(1),
            "step {step}: the run must fail\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let st = estate(&data.join("sandbox"));
        // Step 7's fault leaves the fp rollout stuck: step 1's compensation looks first
        // (yb-maintenance v4), finds fp not Available and keeps traffic in zone A; MirrorMaker2
        // is restored all the same and the run needs an operator.
        let traffic = if step == 7 { (100, 0) } else { (0, 100) };
        assert_eq!(
            traffic_and_replication(&st),
            (traffic, 2),
            "step {step}: traffic where it is safe and MirrorMaker2 restored\n{stdout}"
        );
        let log = waymark_engine::open_log(&data).unwrap();
        let run = log.runs().unwrap()[0];
        let history: Vec<Event> = log
            .read(run)
            .unwrap()
            .into_iter()
            .map(|r| r.event)
            .collect();
        let reason = history
            .iter()
            .find_map(|e| match e {
                Event::CompensationStarted { reason, .. } => Some(reason.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("step {step}: no compensation in the history"));
        assert!(
            reason.contains(&format!("\"{step}. ")),
            "step {step}: the cause names the step: {reason}"
        );
        let Some(Event::RunFailed { error }) = history.last() else {
            panic!("step {step}: the run ends failed: {:?}", history.last());
        };
        assert_eq!(
            error.contains("COMPENSATION INCOMPLETE"),
            step == 7,
            "step {step}: {error}"
        );
        if step == 7 {
            assert!(
                error.contains("traffic NOT moved back to zone B")
                    && error.contains("prod/fp is not Available"),
                "step 7: the snapshot names the check that failed: {error}"
            );
        }
        let effects = read_effects(&data.join("sandbox"));
        if step == 6 {
            let b = st
                .elb
                .target_group_arn(&waymark_sandbox::elb::yb_target_group_name("B"))
                .unwrap()
                .to_owned();
            assert!(
                !st.elb.registered(&b).contains(&st.spec.new_target),
                "step 6: no half-registered target left"
            );
        }
        if step <= 2 {
            assert_eq!(
                effects.iter().filter(|e| e.system == "ssh").count(),
                0,
                "step {step}: no node touched"
            );
        }
    }
}

/// `waymark run` to its end on a fresh data directory (the process has the test AWS
/// credentials): (exit code, output, the run's events).
async fn run_to_end(inventory: &Path) -> (Option<i32>, String, Vec<Event>) {
    let data = temp_dir();
    let data_dir = data.path().to_owned();
    let inventory = inventory.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        waymark(&data_dir)
            .args(["run", "yb-maintenance", "--inventory"])
            .arg(inventory)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let log = waymark_engine::open_log(data.path()).unwrap();
    let run = log.runs().unwrap()[0];
    let events = log
        .read(run)
        .unwrap()
        .into_iter()
        .map(|r| r.event)
        .collect();
    (
        out.status.code(),
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        events,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_cluster_stops_the_run_before_any_effect() {
    // A real master reports a stopped tserver DEAD, and its tablets under-replicated (by
    // location), only once its heartbeat is older than the unresponsive timeout (issue 11): each
    // case stops yb-a-3 and waits for that before the run.
    for (case, seen) in [
        ("dead tserver", "DEAD"),
        ("under-replicated tablets", "under-replicated"),
    ] {
        let (dir, sb) = sandbox(1).await;
        let out = waymark_sandbox::yb::exec(sb.shared(), "yb-a-3", "systemctl stop yb-tserver");
        assert_eq!(out.exit, 0);
        let inv = Inventory::load(&dir.path().join("inventory.toml")).unwrap();
        let mut rounds = 0;
        while inv
            .masters()
            .tservers()
            .await
            .unwrap()
            .iter()
            .any(|t| t.host == "yb-a-3" && t.alive)
        {
            rounds += 1;
            assert!(rounds < 3000, "{case}: the master never marked yb-a-3 DEAD");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let before = read_effects(dir.path()).len();
        let (code, output, events) = run_to_end(&dir.path().join("inventory.toml")).await;
        assert_eq!(code, Some(1), "{case}: the run must be refused\n{output}");
        let Some(Event::RunRefused { reasons }) = events.last() else {
            panic!(
                "{case}: the run ends refused: {:?}\n{output}",
                events.last()
            )
        };
        let why = reasons.join("; ");
        assert!(
            why.contains("the cluster fails the node gate, nothing was changed"),
            "{case}: {why}"
        );
        assert!(why.contains(seen), "{case}: {why}");
        assert!(why.contains("yb-a-3"), "{case}: names the node: {why}");
        assert_eq!(
            read_effects(dir.path()).len(),
            before,
            "{case}: no effect on the estate"
        );
    }
}

/// The events of `run` as the daemon on `data` serves them.
fn daemon_history(data: &Path, run: &str) -> Vec<Event> {
    let (code, body) = crate::util::http_unix(
        &data.join("waymark.sock"),
        "GET",
        &format!("/v1/runs/{run}/history"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    rows.into_iter()
        .map(|r| serde_json::from_value(r["event"].clone()).unwrap())
        .collect()
}

/// With `require_approval`, the run waits (pre-flight and node gate passed, nothing changed) until
/// an operator approves; after the approval it looks at the cluster again, and only then does
/// step 1 run; the run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_gate_holds_the_first_change_until_approved() {
    let (dir, _sb) = sandbox(10).await;
    let path = dir.path().join("inventory.toml");
    let text =
        inventory_text(dir.path()).replace("require_approval = false", "require_approval = true");
    std::fs::write(&path, text).unwrap();
    let data = temp_dir();
    let data_dir = data.path().to_owned();
    let daemon = tokio::task::spawn_blocking(move || {
        crate::fixtures::daemon::DaemonProcess::start(&data_dir, &[])
    })
    .await
    .unwrap();
    let before = read_effects(dir.path()).len();
    let cli = |args: Vec<String>| {
        let data = data.path().to_owned();
        tokio::task::spawn_blocking(move || waymark(&data).args(args).output().unwrap())
    };
    let out = cli(vec![
        "start".into(),
        "yb-maintenance".into(),
        "--detach".into(),
        "--inventory".into(),
        path.display().to_string(),
    ])
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let run = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    // Waiting for approval: its signal wait begins once the checks before it passed.
    wait_until(
        Duration::from_secs(60),
        "the run waits for approval",
        || {
            daemon_history(data.path(), &run)
                .iter()
                .any(|e| matches!(e, Event::SignalWaitStarted { name, .. } if name == "approve"))
        },
    )
    .await;
    let waiting = daemon_history(data.path(), &run);
    assert!(
        !waiting
            .iter()
            .any(|e| matches!(e, Event::StepScheduled { label, .. } if label.starts_with("1."))),
        "nothing of step 1 before the approval: {waiting:#?}"
    );
    assert_eq!(
        read_effects(dir.path()).len(),
        before,
        "no effect before the approval"
    );
    let out = cli(vec!["signal".into(), run.clone(), "approve".into()])
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = cli(vec!["attach".into(), run.clone()]).await.unwrap();
    assert!(
        out.status.success(),
        "the approved run completes: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let history = daemon_history(data.path(), &run);
    let consumed = history
        .iter()
        .position(|e| matches!(e, Event::SignalConsumed { name, .. } if name == "approve"))
        .expect("approve consumed");
    let labels_after: Vec<&str> = history[consumed..]
        .iter()
        .filter_map(|e| match e {
            Event::StepScheduled { label, .. } => Some(label.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        labels_after[0].starts_with("node gate before any change"),
        "the cluster is looked at again right after the approval: {labels_after:?}"
    );
    assert!(
        !history[..consumed]
            .iter()
            .any(|e| matches!(e, Event::StepScheduled { label, .. } if label.starts_with("1."))),
        "approval consumed before step 1"
    );
    daemon.sigterm();
}

fn inventory_text(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("inventory.toml")).unwrap()
}

#[tokio::test]
async fn invalid_inventories_are_refused_naming_file_key_and_problem() {
    let (dir, _sb) = sandbox(10).await;
    let good = inventory_text(dir.path());
    let file = dir.path().join("inventory.toml");
    let cases: Vec<(String, &str, &str)> = vec![
        (
            good.replace("[cluster]", "[cluster]\ncolour = \"blue\""),
            "line",
            "unknown field `colour`",
        ),
        (
            good.replace("namespace = \"prod\"\n", ""),
            "line",
            "missing field `namespace`",
        ),
        (
            good.replacen("zone = \"A\"", "zone = \"C\"", 1),
            "yugabyte.nodes[0].zone",
            "\"C\" is not a zone",
        ),
        (
            good.replacen(
                "master_http = \"127.0.0.1:",
                "master_http = \"127.0.0.1:x",
                1,
            ),
            "master_http",
            "is not a number",
        ),
        (
            good.replace("endpoint_url = \"http://", "endpoint_url = \"ftp://"),
            "aws.endpoint_url",
            "not an http(s) URL",
        ),
        // issue 11: the node gates' settings.
        (
            good.replace("idle_readings = 3", "idle_readings = 0"),
            "gates.idle_readings",
            "0 is out of range: give 1 to 100",
        ),
        (
            good.replace("[yugabyte]\n", "[yugabyte]\nrestart_zones = [\"C\"]\n"),
            "yugabyte.restart_zones[0]",
            "\"C\" is the zone of no node",
        ),
        (
            good.replace(
                "[yugabyte]\n",
                "[yugabyte]\ncerts_dir = \"/certs;reboot\"\n",
            ),
            "yugabyte.certs_dir",
            "not an absolute path",
        ),
        (
            good.replace(
                "[yugabyte]\n",
                "[yugabyte]\nignore_tservers = [\"yb-rr-1:9000\"]\n",
            ),
            "yugabyte.ignore_tservers[0]",
            "not a host as the cluster lists it",
        ),
    ];
    for (text, key, problem) in cases {
        let err: InventoryError = Inventory::parse(&file, &text).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with(&file.display().to_string()), "{msg}");
        assert!(
            msg.contains(key) && msg.contains(problem),
            "expected {key} / {problem}: {msg}"
        );
    }
    let missing = dir.path().join("nope.toml");
    let err = Inventory::load(&missing).unwrap_err().to_string();
    assert!(
        err.contains("nope.toml") && err.contains("cannot read"),
        "{err}"
    );
    std::fs::write(
        dir.path().join("bad-known-hosts.toml"),
        good.replace(
            "known_hosts = \"known_hosts\"",
            "known_hosts = \"missing_hosts\"",
        ),
    )
    .unwrap();
    let err = Inventory::load(&dir.path().join("bad-known-hosts.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ssh.known_hosts") && err.contains("does not exist"),
        "{err}"
    );
    // The CLI refuses to start a run on an invalid inventory, with exit code 2.
    let out = waymark(&dir.path().join("data"))
        .args(["run", "yb-maintenance", "--inventory"])
        .arg(dir.path().join("bad-known-hosts.toml"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !dir.path().join("data").join("log").exists() || {
            let log = waymark_engine::open_log(&dir.path().join("data")).unwrap();
            log.runs().unwrap().is_empty()
        }
    );
}

#[test]
fn plan_reads_the_estate_and_changes_nothing() {
    let dir = temp_dir();
    let sb = SandboxProcess::start(&dir.path().join("estate"), 10);
    let before = read_effects(&sb.dir).len();
    let out = waymark(&dir.path().join("data"))
        .args(["plan", "yb-maintenance", "--inventory"])
        .arg(sb.dir.join("inventory.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("health gate: PASSES now"), "{text}");
    assert!(
        text.contains("switch traffic to zone A") && text.contains("A=0 B=100 -> A=100 B=0"),
        "{text}"
    );
    assert!(
        text.contains("scale prod/mirrormaker2 to 0") && text.contains("2 -> 0"),
        "{text}"
    );
    // Masters restart leader last: the last step-3 line is the leader.
    let masters: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("3."))
        .collect();
    assert_eq!(masters.len(), 3, "{text}");
    assert!(
        masters[2].contains("leader") && !masters[0].contains("leader ->"),
        "{text}"
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.trim_start().starts_with("4."))
            .count(),
        6,
        "{text}"
    );
    assert_eq!(read_effects(&sb.dir).len(), before, "plan changed nothing");
    let json = waymark(&dir.path().join("data"))
        .args(["plan", "yb-maintenance", "--output", "json", "--inventory"])
        .arg(sb.dir.join("inventory.toml"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["health"]["Ok"]["passed"], true, "{v}");
    assert!(v["actions"].as_array().unwrap().len() >= 15);
}

#[test]
fn example_inventory_in_the_repo_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/inventory.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let inv = Inventory::parse(&path, &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(inv.cluster.name, "prod-yb");
    assert_eq!(
        inv.yugabyte
            .nodes
            .iter()
            .filter(|n| n.master_http.is_some())
            .count(),
        3
    );
}
