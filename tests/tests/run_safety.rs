//! issue 12: run-level safety. Every test runs the real `waymark` binary against a sandbox that
//! lags like a real cluster, changes the estate mid-run through the sandbox's own state (as an
//! operator or a failure would), and asserts from what the sandbox recorded (`state.json`,
//! `effects.jsonl`, the invariant monitor's `invariants.json`).
//!
//! - step 1's compensation looks first: with zone B unhealthy, or the weights changed by hand
//!   since step 1, it leaves traffic where it is, `MirrorMaker2` is still restored, and the run
//!   ends `needs-operator` (listed by `waymark ls --state needs-operator`) with the snapshot of
//!   what it saw; the monitor never sees a forward to a group without a healthy target;
//! - the control: with zone B healthy and the weights untouched, a failure at step 6 (the cluster
//!   healthy by then) compensates fully (traffic back to zone B) and the run is not
//!   `needs-operator`.

use std::path::Path;
use std::time::Duration;

use waymark_engine::event::Event;
use waymark_engine::log::EventLog;
use waymark_sandbox::estate::Estate;
use waymark_sandbox::estate::{Fault, FaultKind, Faults};
use waymark_sandbox::{read_effects, read_invariants, Effect, Sandbox, Scenario};
use waymark_workflows::inventory::Inventory;

use crate::fixtures::daemon::DaemonProcess;
use crate::maintenance::check_completed_estate;
use crate::node_gates::{lagging, set_inventory_key};
use crate::util::{http_unix, temp_dir, wait_until, waymark};

fn estate(dir: &Path) -> Estate {
    serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap()
}

fn tg(st: &Estate, zone: &str) -> String {
    st.elb
        .target_group_arn(&waymark_sandbox::elb::target_group_name(zone))
        .unwrap()
        .to_owned()
}

fn listener(st: &Estate) -> String {
    st.elb
        .listener_arn(waymark_sandbox::elb::LOAD_BALANCER)
        .unwrap()
        .to_owned()
}

/// Traffic weights (zone A, zone B) of the traffic listener.
fn weights(st: &Estate) -> (i32, i32) {
    let w = st.elb.weights(&listener(st)).unwrap();
    (
        w.get(&tg(st, "A")).copied().unwrap_or(0),
        w.get(&tg(st, "B")).copied().unwrap_or(0),
    )
}

/// Sets the traffic listener's weights by hand, as an operator in the AWS console would.
fn set_weights_by_hand(sb: &Sandbox, a: i32, b: i32) {
    sb.shared().mutate(|st| {
        let (ta, tb) = (tg(st, "A"), tg(st, "B"));
        let arn = listener(st);
        let l = st.elb.listeners.iter_mut().find(|l| l.arn == arn).unwrap();
        for g in &mut l.default_actions[0].target_groups {
            if g.target_group_arn == ta {
                g.weight = a;
            } else if g.target_group_arn == tb {
                g.weight = b;
            }
        }
    });
}

/// A run that fails at yb-a-2's tserver (it bootstraps far longer than `node_timeout_secs`),
/// after `mid_run` was applied once step 1 had moved traffic to zone A. Returns (success,
/// output, data dir).
async fn failing_run_with(
    dir: &Path,
    sb: &Sandbox,
    mid_run: impl FnOnce(&Sandbox),
) -> (bool, String, tempfile::TempDir) {
    sb.shared()
        .apply(&Scenario::SlowBootstrap {
            node: "yb-a-2".into(),
            factor: 200.0,
        })
        .unwrap();
    set_inventory_key(dir, "gates", "node_timeout_secs", "2");
    set_inventory_key(dir, "gates", "health_timeout_secs", "5");
    run_failing_after_step_1(dir, sb, mid_run).await
}

/// `waymark run` with the sandbox as set up, applying `mid_run` once step 1 moved traffic.
async fn run_failing_after_step_1(
    dir: &Path,
    sb: &Sandbox,
    mid_run: impl FnOnce(&Sandbox),
) -> (bool, String, tempfile::TempDir) {
    set_inventory_key(dir, "gates", "retry_attempts", "1");
    let before = read_effects(dir).len();
    let data = temp_dir();
    let child = waymark(&data.path().join("data"))
        .args(["run", "yb-maintenance", "--inventory"])
        .arg(dir.join("inventory.toml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn waymark run");
    wait_until(Duration::from_secs(120), "step 1 moved traffic", || {
        read_effects(dir)
            .iter()
            .skip(before)
            .any(|e| e.action == "modify-listener")
    })
    .await;
    mid_run(sb);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        data,
    )
}

/// `waymark ls --state needs-operator` on `data`.
async fn needs_operator_listing(data: &Path) -> String {
    let data = data.join("data");
    let out = tokio::task::spawn_blocking(move || {
        waymark(&data)
            .args(["ls", "--state", "needs-operator"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_no_forward_to_unhealthy(dir: &Path, log: &str) {
    let got = read_invariants(dir).expect("invariants.json");
    assert_eq!(
        got.forwards_to_unhealthy, 0,
        "never a forward to a target group without a healthy target: {got:?}\n{log}"
    );
}

/// No forward of the run's listener to a group without a healthy target. (The sandbox's
/// `/waymark/*` rule, which the inventory does not name, keeps forwarding to zone B whatever the
/// run does: when zone B fails, the monitor counts that rule's forward, not the run's.)
fn assert_no_forward_by_the_run_to_unhealthy(dir: &Path, log: &str) {
    let got = read_invariants(dir).expect("invariants.json");
    let listener = listener(&estate(dir));
    let by_the_run: Vec<_> = got
        .violations
        .iter()
        .filter(|v| v.what.contains(&format!("{listener} ->")))
        .collect();
    assert!(
        by_the_run.is_empty(),
        "the run's listener never forwards to a group without a healthy target: {by_the_run:?}\n{got:?}\n{log}"
    );
}

/// Zone B loses every healthy target after step 1; the run then fails at a node. The old
/// compensation moved traffic back to zone B anyway (a forward to a group with no healthy
/// target); now traffic stays in zone A, `MirrorMaker2` is restored, and the run ends
/// `needs-operator` with the snapshot naming the failed check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_b_unhealthy_mid_run_keeps_traffic_in_zone_a_and_needs_an_operator() {
    let (dir, sb) = lagging(0.05).await;
    let (ok, log, data) = failing_run_with(dir.path(), &sb, |sb| {
        sb.shared().apply(&Scenario::ZoneBUnhealthy).unwrap();
    })
    .await;
    assert!(!ok, "the run fails at yb-a-2:\n{log}");
    assert!(log.contains("COMPENSATION INCOMPLETE"), "{log}");
    assert!(log.contains("traffic NOT moved back to zone B"), "{log}");
    assert!(
        log.contains("zone B's target group") && log.contains("no healthy target"),
        "the snapshot names the failed check:\n{log}"
    );
    let st = estate(dir.path());
    assert_eq!(weights(&st), (100, 0), "traffic stays in zone A:\n{log}");
    assert_eq!(
        st.k8s.deployments["prod/mirrormaker2"].replicas, 2,
        "MirrorMaker2 is restored all the same:\n{log}"
    );
    assert!(st.yb.blacklist.is_empty(), "{:?}", st.yb.blacklist);
    assert_no_forward_by_the_run_to_unhealthy(dir.path(), &log);
    let listed = needs_operator_listing(data.path()).await;
    assert!(
        listed.contains("needs-operator"),
        "ls lists the run:\n{listed}"
    );
}

/// An operator changes the weights by hand after step 1 (50/50); the run then fails at a node.
/// The old compensation overwrote the operator's weights; now they are left as they are and the
/// run ends `needs-operator`, its snapshot saying the weights are not what step 1 set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_changed_by_hand_mid_run_are_left_alone_and_need_an_operator() {
    let (dir, sb) = lagging(0.05).await;
    let (ok, log, data) =
        failing_run_with(dir.path(), &sb, |sb| set_weights_by_hand(sb, 50, 50)).await;
    assert!(!ok, "the run fails at yb-a-2:\n{log}");
    assert!(log.contains("COMPENSATION INCOMPLETE"), "{log}");
    assert!(log.contains("changed them by hand"), "{log}");
    let st = estate(dir.path());
    assert_eq!(
        weights(&st),
        (50, 50),
        "the operator's weights stay:\n{log}"
    );
    assert_eq!(st.k8s.deployments["prod/mirrormaker2"].replicas, 2, "{log}");
    assert_no_forward_to_unhealthy(dir.path(), &log);
    let listed = needs_operator_listing(data.path()).await;
    assert!(
        listed.contains("needs-operator"),
        "ls lists the run:\n{listed}"
    );
}

/// The control: the same failure with zone B healthy and the weights untouched compensates
/// fully (traffic back to the weights before the run) and the run does not need an operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compensation_moves_traffic_back_when_zone_b_can_take_it() {
    let (dir, sb) = lagging(0.05).await;
    let before = weights(&estate(dir.path()));
    sb.shared().set_faults(Faults {
        rules: vec![Fault {
            system: "elb".into(),
            matching: "RegisterTargets".into(),
            kind: FaultKind::Status(500),
            remaining: None,
        }],
    });
    let (ok, log, data) = run_failing_after_step_1(dir.path(), &sb, |_| {}).await;
    assert!(!ok, "the run fails at step 6:\n{log}");
    assert!(log.contains("6. register"), "{log}");
    assert!(!log.contains("COMPENSATION INCOMPLETE"), "{log}");
    let st = estate(dir.path());
    assert_eq!(
        weights(&st),
        before,
        "traffic back as before the run:\n{log}"
    );
    assert_eq!(st.k8s.deployments["prod/mirrormaker2"].replicas, 2, "{log}");
    assert_no_forward_to_unhealthy(dir.path(), &log);
    let listed = needs_operator_listing(data.path()).await;
    assert!(!listed.contains("needs-operator"), "{listed}");
    // Step 2's compensation waits until MirrorMaker2 is Available before the next compensation
    // (traffic back to zone B) runs: in the sandbox a scaled-up pod is ready `pod_ready_ms` after
    // the scale, so the traffic change comes at least that long after it.
    let effects = read_effects(dir.path());
    // The scale-up is the first scale of MirrorMaker2 to 2 after its scale to 0 (a later PATCH
    // to the same value, if any, changes nothing and must not be taken as the scale-up).
    let mm2 = |e: &&Effect| e.target == "prod/mirrormaker2" && e.action == "scale";
    let down = effects
        .iter()
        .rposition(|e| mm2(&e) && e.details["to"] == 0)
        .expect("MirrorMaker2 scaled to 0");
    let scaled_up = effects[down..]
        .iter()
        .find(|e| mm2(e) && e.details["to"] == 2)
        .expect("MirrorMaker2 scaled back");
    assert_eq!(scaled_up.details["to"], 2, "{scaled_up:?}");
    let traffic_back = effects
        .iter()
        .rfind(|e| e.action == "modify-listener")
        .expect("traffic moved back");
    let ready_ms = st.spec.scaled().pod_ready_ms;
    assert!(
        (traffic_back.time - scaled_up.time).num_milliseconds() >= ready_ms,
        "traffic moved back {} ms after MirrorMaker2 was scaled up, before its pods could be ready ({ready_ms} ms); MirrorMaker2 effects: {:?}\n{log}",
        (traffic_back.time - scaled_up.time).num_milliseconds(),
        effects.iter().filter(mm2).map(|e| (e.time, e.details.clone())).collect::<Vec<_>>()
    );
}

/// A wait whose deadline passes (yb-a-2 bootstraps far longer than `node_timeout_secs`) fails
/// once, final, although the inventory allows 4 attempts: one deadline, not one per retry. The
/// compensation follows: yb-a-2 leaves the leader blacklist, `MirrorMaker2` is back, and (the node
/// gate still failing) traffic stays in zone A for an operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_reaches_its_deadline_fails_once_then_compensates() {
    let (dir, sb) = lagging(0.05).await;
    sb.shared()
        .apply(&Scenario::SlowBootstrap {
            node: "yb-a-2".into(),
            factor: 200.0,
        })
        .unwrap();
    set_inventory_key(dir.path(), "gates", "node_timeout_secs", "2");
    set_inventory_key(dir.path(), "gates", "health_timeout_secs", "3");
    set_inventory_key(dir.path(), "gates", "retry_attempts", "4");
    let data = temp_dir();
    let inventory = dir.path().join("inventory.toml");
    let data_dir = data.path().join("data");
    let out = tokio::task::spawn_blocking(move || {
        waymark(&data_dir)
            .args(["run", "yb-maintenance", "--inventory"])
            .arg(inventory)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{log}");
    let wait = "4. wait until yb-tserver on yb-a-2 is ready";
    let attempts: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(wait) && l.contains(": attempt ") && l.contains(" started"))
        .collect();
    assert_eq!(
        attempts.len(),
        1,
        "one attempt, one deadline: {attempts:?}\n{log}"
    );
    assert!(
        log.lines().any(|l| l.contains(wait)
            && l.contains("attempt 1 failed (not retryable)")
            && l.contains("deadline")),
        "the deadline is final:\n{log}"
    );
    let st = estate(dir.path());
    assert!(st.yb.blacklist.is_empty(), "{:?}\n{log}", st.yb.blacklist);
    assert_eq!(st.k8s.deployments["prod/mirrormaker2"].replicas, 2, "{log}");
    assert_eq!(weights(&st), (100, 0), "{log}");
    assert!(log.contains("COMPENSATION INCOMPLETE"), "{log}");
    assert_no_forward_to_unhealthy(dir.path(), &log);
}

/// `MirrorMaker2` does not become ready again: the run fails at step 6 (ELB refuses the
/// registration), step 2's compensation scales it back and waits until Available within its one
/// deadline, which passes: the compensation is incomplete, the run ends `needs-operator` naming
/// `MirrorMaker2`, and the other compensations (traffic back to a healthy zone B) still ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrormaker_not_becoming_ready_ends_the_run_needs_operator() {
    let (dir, sb) = lagging(0.05).await;
    set_inventory_key(dir.path(), "gates", "rollout_timeout_secs", "2");
    sb.shared().apply(&Scenario::MirrormakerNotReady).unwrap();
    sb.shared().set_faults(Faults {
        rules: vec![Fault {
            system: "elb".into(),
            matching: "RegisterTargets".into(),
            kind: FaultKind::Status(500),
            remaining: None,
        }],
    });
    let (ok, log, data) = run_failing_after_step_1(dir.path(), &sb, |_| {}).await;
    assert!(!ok, "the run fails at step 6:\n{log}");
    assert!(log.contains("COMPENSATION INCOMPLETE"), "{log}");
    assert!(
        log.contains("prod/mirrormaker2 did not reach 2 replicas within its deadline"),
        "{log}"
    );
    let st = estate(dir.path());
    assert_eq!(st.k8s.deployments["prod/mirrormaker2"].replicas, 2, "{log}");
    assert_eq!(
        weights(&st),
        (0, 100),
        "zone B could take the traffic:\n{log}"
    );
    assert_no_forward_to_unhealthy(dir.path(), &log);
    let listed = needs_operator_listing(data.path()).await;
    assert!(
        listed.contains("needs-operator"),
        "ls lists the run:\n{listed}"
    );
}

/// The events of the one run of `data` (a `waymark` data directory no process holds).
fn history(data: &Path) -> Vec<Event> {
    let log = waymark_engine::open_log(data).unwrap();
    let runs = log.runs().unwrap();
    assert_eq!(runs.len(), 1, "one run in {}", data.display());
    log.read(runs[0])
        .unwrap()
        .into_iter()
        .map(|r| r.event)
        .collect()
}

/// `waymark run` to its end on a fresh data directory: (success, output, data directory).
async fn run_to_end(dir: &Path) -> (bool, String, tempfile::TempDir) {
    let data = temp_dir();
    let data_dir = data.path().join("data");
    let inventory = dir.join("inventory.toml");
    let out = tokio::task::spawn_blocking(move || {
        waymark(&data_dir)
            .args(["run", "yb-maintenance", "--inventory"])
            .arg(inventory)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        out.status.success(),
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        data,
    )
}

/// A run that must be refused before any change: it ends `RunRefused` whose reasons name every
/// word of `words`, no compensation ran, the sandbox recorded no effect, no step changed
/// anything, and the monitor never saw a forward to a group without a healthy target. Returns
/// the reasons.
async fn refused_before_any_change(dir: &Path, words: &[&str]) -> String {
    let before = read_effects(dir).len();
    let (ok, log, data) = run_to_end(dir).await;
    assert!(!ok, "the run must be refused:\n{log}");
    let events = history(&data.path().join("data"));
    let Some(Event::RunRefused { reasons }) = events.last() else {
        panic!("the run ends refused: {:?}\n{log}", events.last());
    };
    let reasons = reasons.join("\n");
    for w in words {
        assert!(reasons.contains(w), "the refusal names {w:?}:\n{reasons}");
    }
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::CompensationStarted { .. })),
        "nothing to compensate:\n{log}"
    );
    let changes: Vec<Effect> = read_effects(dir).into_iter().skip(before).collect();
    assert_eq!(changes, Vec::<Effect>::new(), "no effect:\n{log}");
    assert_no_forward_to_unhealthy(dir, &log);
    reasons
}

/// `waymark plan yb-maintenance` on the sandbox's inventory: stdout.
async fn plan(dir: &Path) -> String {
    let data = temp_dir();
    let data_dir = data.path().join("data");
    let inventory = dir.join("inventory.toml");
    let out = tokio::task::spawn_blocking(move || {
        waymark(&data_dir)
            .args(["plan", "yb-maintenance", "--inventory"])
            .arg(inventory)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The SSH address (`127.0.0.1:PORT`) of a node in the sandbox's inventory.
fn node_ssh(dir: &Path, node: &str) -> String {
    let inv = Inventory::load(&dir.join("inventory.toml")).unwrap();
    inv.yugabyte
        .nodes
        .iter()
        .find(|n| n.name == node)
        .unwrap()
        .ssh
        .clone()
}

/// Pre-flight: a node whose host key `known_hosts` lacks is found before step 1 (the old run
/// found it at step 3 or 4, with traffic in zone A and `MirrorMaker2` off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_host_key_unknown_refuses_before_any_change() {
    let (dir, _sb) = lagging(0.05).await;
    let ssh = node_ssh(dir.path(), "yb-b-3");
    let (ip, port) = ssh.split_once(':').unwrap();
    let path = dir.path().join("known_hosts");
    let text = std::fs::read_to_string(&path).unwrap();
    let kept: String = text
        .lines()
        .filter(|l| !l.starts_with(&format!("[{ip}]:{port} ")))
        .flat_map(|l| [l, "\n"])
        .collect();
    assert!(kept.len() < text.len(), "the line of yb-b-3 was in {text}");
    std::fs::write(&path, kept).unwrap();
    refused_before_any_change(dir.path(), &["pre-flight ssh yb-b-3", "unknown host"]).await;
}

/// Pre-flight: a TLS cluster and an inventory without `certs_dir` (yb-admin and yb-ts-cli would
/// fail at step 4's blacklist or step 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_tls_certs_missing_refuses_before_any_change() {
    let (dir, sb) = lagging(0.05).await;
    sb.shared()
        .apply(&Scenario::Tls {
            certs_dir: "/home/yugabyte/yugabyte-tls-config".into(),
        })
        .unwrap();
    refused_before_any_change(
        dir.path(),
        &[
            "pre-flight yb tools on yb-a-1",
            "certs_dir_name",
            "yugabyte.certs_dir",
        ],
    )
    .await;
}

/// Pre-flight: a TLS cluster whose inventory names `certs_dir`, but the directory is missing on
/// one tserver node other than yb-admin's (yb-b-3, a tserver only). The run calls `yb-ts-cli`
/// there after restarting its tserver; the pre-flight runs that very line on that node (the old
/// pre-flight asked only yb-admin's node and passed; the run then stopped at yb-b-3 with traffic
/// moved). Every other node's yb-ts-cli check passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_certs_missing_on_one_tserver_refuses_before_any_change() {
    let (dir, sb) = lagging(0.05).await;
    let certs = "/home/yugabyte/yugabyte-tls-config";
    sb.shared()
        .apply(&Scenario::Tls {
            certs_dir: certs.into(),
        })
        .unwrap();
    sb.shared()
        .apply(&Scenario::CertsMissing {
            node: "yb-b-3".into(),
        })
        .unwrap();
    set_inventory_key(dir.path(), "yugabyte", "certs_dir", &format!("\"{certs}\""));
    let reasons = refused_before_any_change(
        dir.path(),
        &[
            "pre-flight yb-ts-cli on yb-b-3",
            "-certs_dir_name",
            "No such file or directory",
            "yugabyte.certs_dir",
        ],
    )
    .await;
    assert_eq!(
        reasons.lines().count(),
        1,
        "only yb-b-3 fails (the other tservers' yb-ts-cli and yb-admin answer with the certificates):\n{reasons}"
    );
    let report = plan(dir.path()).await;
    for node in ["yb-a-1", "yb-a-2", "yb-a-3", "yb-b-1", "yb-b-2"] {
        assert!(
            report.contains(&format!("PASS yb-ts-cli on {node}")),
            "plan shows yb-ts-cli checked on {node}:\n{report}"
        );
    }
    assert!(
        report.contains("FAIL yb-ts-cli on yb-b-3"),
        "plan shows the failure:\n{report}"
    );
}

/// Pre-flight: Kubernetes RBAC does not let the run scale `MirrorMaker2` (step 2 would fail after
/// traffic moved; step 2's compensation would fail the same way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_rbac_denied_refuses_before_any_change_and_plan_shows_it() {
    let (dir, sb) = lagging(0.05).await;
    sb.shared()
        .apply(&Scenario::RbacDenied {
            verb: "patch".into(),
            deployment: "mirrormaker2".into(),
            subresource: Some("scale".into()),
        })
        .unwrap();
    let shown = plan(dir.path()).await;
    assert!(
        shown.contains("pre-flight: FAILS now")
            && shown.contains("FAIL Kubernetes RBAC on prod/mirrormaker2")
            && shown.contains("PASS Kubernetes RBAC on prod/fp:")
            && shown.contains("PASS ssh yb-a-1"),
        "waymark plan shows the pre-flight:\n{shown}"
    );
    refused_before_any_change(
        dir.path(),
        &[
            "Kubernetes RBAC on prod/mirrormaker2",
            "cannot patch deployments/scale",
        ],
    )
    .await;
}

/// Pre-flight: step 6's target is no tserver of this cluster (here: the inventory names no node
/// for it and no node has its address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_register_target_not_a_tserver_refuses_before_any_change() {
    let (dir, _sb) = lagging(0.05).await;
    let path = dir.path().join("inventory.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let without: String = text
        .lines()
        .filter(|l| !l.starts_with("node = "))
        .flat_map(|l| [l, "\n"])
        .collect();
    assert!(without.len() < text.len(), "register.node was set: {text}");
    std::fs::write(&path, without).unwrap();
    refused_before_any_change(
        dir.path(),
        &["register target 10.20.2.14", "no node of the inventory"],
    )
    .await;
}

/// Pre-flight: `MirrorMaker2` already at 0 replicas (0 would be recorded as the state to restore).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_mirrormaker_already_at_zero_refuses_before_any_change() {
    let (dir, sb) = lagging(0.05).await;
    sb.shared().mutate(|st| {
        st.k8s
            .deployments
            .get_mut("prod/mirrormaker2")
            .unwrap()
            .replicas = 0;
    });
    refused_before_any_change(
        dir.path(),
        &["MirrorMaker2 prod/mirrormaker2 replicas", "0 replicas"],
    )
    .await;
}

/// Approval: nobody approves within `approval_timeout_secs`: the run ends `refused`, nothing
/// changed (before, it waited forever holding the cluster).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_not_given_in_time_refuses_the_run() {
    let (dir, _sb) = lagging(0.05).await;
    set_inventory_key(dir.path(), "gates", "require_approval", "true");
    set_inventory_key(dir.path(), "run", "approval_timeout_secs", "1");
    refused_before_any_change(
        dir.path(),
        &["no operator approved the run within run.approval_timeout_secs (1 s)"],
    )
    .await;
}

/// `waymark replay RUN` on `data` (no process holds it): succeeds and reports the run
/// deterministic (no false divergence for the approval's wait, approved or timed out).
async fn replay_is_deterministic(data: &Path, run: &str) {
    let (ok, out) = cli(data, &["replay", run]).await;
    assert!(ok, "replay of {run} reports no divergence:\n{out}");
    assert!(
        out.contains("deterministic") && !out.contains("NOT deterministic"),
        "{out}"
    );
}

/// The one run of `data` (no process holds it).
fn only_run_id(data: &Path) -> String {
    let log = waymark_engine::open_log(data).unwrap();
    let runs = log.runs().unwrap();
    assert_eq!(runs.len(), 1, "one run in {}", data.display());
    runs[0].to_string()
}

/// Approval with a deadline, replayed: a run refused because nobody approved in time replays
/// without divergence (before, `waymark replay` reported the approval's signal wait, which
/// never ended, as missing from the history).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_timed_out_run_replays_without_divergence() {
    let (dir, _sb) = lagging(0.05).await;
    set_inventory_key(dir.path(), "gates", "require_approval", "true");
    set_inventory_key(dir.path(), "run", "approval_timeout_secs", "1");
    let (ok, log, data) = run_to_end(dir.path()).await;
    assert!(!ok, "the run must be refused:\n{log}");
    let data = data.path().join("data");
    let events = history(&data);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::SignalWaitTimedOut { .. })),
        "the wait timed out:\n{log}"
    );
    assert!(
        matches!(events.last(), Some(Event::RunRefused { reasons }) if reasons.join(" ").contains("no operator approved the run")),
        "{:?}",
        events.last()
    );
    replay_is_deterministic(&data, &only_run_id(&data)).await;
}

/// `run.approver_must_differ`: the run is started by alice (`USER=alice`), which stops at the
/// approval; alice's own `approve` is journaled as ignored (a recorded note naming her) and the
/// run waits on; bob's `approve` lets it go on to the end. Both signals are sent while the run's
/// process is stopped (the direct mode holds the data directory), then `waymark resume`
/// continues it; `waymark replay` of the approved run reports no divergence. (Before: the run
/// was refused at once, whoever approved.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approver_must_differ_ignores_the_starters_approve_and_takes_another_operators() {
    let (dir, _sb) = lagging(0.05).await;
    set_inventory_key(dir.path(), "gates", "require_approval", "true");
    set_inventory_key(dir.path(), "run", "approver_must_differ", "true");
    set_inventory_key(dir.path(), "run", "approval_timeout_secs", "86400");
    let tmp = temp_dir();
    let data = tmp.path().join("data");
    let mut command = waymark(&data);
    command
        .env("USER", "alice")
        .args(["run", "yb-maintenance", "--inventory"])
        .arg(dir.path().join("inventory.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    // Progress (event lines) goes to stderr.
    let stdout = child.stderr.take().unwrap();
    // Until the run says it waits for the approval (the wait and its deadline are durable
    // before it says so); then its process is stopped.
    let seen = tokio::task::spawn_blocking(move || {
        use std::io::BufRead as _;
        let mut seen = String::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap_or_default();
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("waiting for signal \"approve\"") {
                return (true, seen);
            }
        }
        (false, seen)
    })
    .await
    .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(seen.0, "the run waits for approval:\n{}", seen.1);
    let run = only_run_id(&data);
    let as_user = |user: &str, args: &[&str]| {
        let mut c = waymark(&data);
        c.env("USER", user).args(args);
        c
    };
    for (user, args) in [
        ("alice", ["signal", run.as_str(), "approve"]),
        ("bob", ["signal", run.as_str(), "approve"]),
    ] {
        let mut c = as_user(user, &args);
        let out = tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap();
        assert!(out.status.success(), "{user}: {out:?}");
    }
    let mut c = as_user("alice", &["resume", run.as_str()]);
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the run completes after bob's approve:\n{text}"
    );
    let events = history(&data);
    let notes: Vec<&String> = events
        .iter()
        .filter_map(|e| match e {
            Event::ValueRecorded {
                kind: waymark_engine::event::RecordedKind::Note,
                value,
                ..
            } => Some(value),
            _ => None,
        })
        .collect();
    assert_eq!(notes.len(), 1, "one approve ignored: {notes:?}");
    assert!(
        notes[0].starts_with("approve from alice (uid ")
            && notes[0].contains("ignored: run.approver_must_differ is set"),
        "{}",
        notes[0]
    );
    let taken = events
        .iter()
        .filter(|e| matches!(e, Event::SignalConsumed { name, .. } if name == "approve"))
        .count();
    assert_eq!(taken, 2, "alice's approve, then bob's");
    assert!(
        matches!(events.last(), Some(Event::RunCompleted { .. })),
        "{:?}\n{text}",
        events.last()
    );
    check_completed_estate(dir.path());
    replay_is_deterministic(&data, &run).await;
}

/// The run's overall deadline (`run.max_duration_secs` from the run's recorded start; the
/// deadline of `run.finish_by` is the same code, unit test `maintenance::tests::
/// the_run_deadline_is_the_earlier_of_finish_by_and_max_duration`) passes while yb-a-2
/// bootstraps without end: the wait, cut to what is left of the run, fails once at the deadline
/// (not after `node_timeout_secs` = 600 s), and the run compensates: `MirrorMaker2` back, the
/// blacklist empty, never a forward to a group without a healthy target. Nothing here depends on
/// the machine's speed but the margin: the deadline counts from the run's own start (not from
/// when the test wrote it), and yb-a-2's restart bootstraps for minutes (its first start, long
/// before the run, is done: the knob slows every start by the factor); only a machine needing
/// more than 120 s for the pre-flight and the nodes before yb-a-2 would fail this test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runs_deadline_stops_it_and_it_compensates() {
    let (dir, sb) = lagging(0.05).await;
    sb.shared()
        .apply(&Scenario::SlowBootstrap {
            node: "yb-a-2".into(),
            factor: 200.0,
        })
        .unwrap();
    set_inventory_key(dir.path(), "gates", "node_timeout_secs", "600");
    set_inventory_key(dir.path(), "gates", "health_timeout_secs", "5");
    set_inventory_key(dir.path(), "run", "max_duration_secs", "120");
    let (ok, log, data) = run_to_end(dir.path()).await;
    assert!(!ok, "{log}");
    let events = history(&data.path().join("data"));
    let reason = events
        .iter()
        .find_map(|e| match e {
            Event::CompensationStarted { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the run compensates:\n{log}"));
    assert!(
        reason.contains("the run's deadline") && reason.contains("run.max_duration_secs = 120"),
        "the cause is the run's deadline: {reason}"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::StepScheduled { label, .. } if label.starts_with("5."))),
        "no step after the deadline:\n{log}"
    );
    let st = estate(dir.path());
    assert!(st.yb.blacklist.is_empty(), "{:?}\n{log}", st.yb.blacklist);
    assert_eq!(st.k8s.deployments["prod/mirrormaker2"].replicas, 2, "{log}");
    assert_no_forward_to_unhealthy(dir.path(), &log);
}

/// `waymark CMD...` on `data` to its end, off the async runtime: (success, stdout + stderr).
async fn cli(data: &Path, args: &[&str]) -> (bool, String) {
    let mut command = waymark(data);
    command.args(args);
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The history of `run` as the daemon on `socket` serves it.
fn daemon_history(socket: &Path, run: &str) -> Vec<Event> {
    let (code, body) = http_unix(socket, "GET", &format!("/v1/runs/{run}/history"), None);
    assert_eq!(code, 200, "{body}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    rows.into_iter()
        .map(|r| serde_json::from_value(r["event"].clone()).unwrap())
        .collect()
}

/// Whether a step of `h` was scheduled and has not ended.
fn step_in_flight(h: &[Event]) -> bool {
    h.iter().enumerate().any(|(i, e)| match e {
        Event::StepScheduled { step, .. } => !h[i..].iter().any(|later| {
            matches!(later, Event::StepCompleted { step: s, .. } | Event::StepFailed { step: s, .. } if s == step)
        }),
        _ => false,
    })
}

/// `hold` on the runbook (through the daemon, as an operator sends it): sent while step 3
/// restarts the masters, the run stops after the step in flight: no step is started and nothing
/// is done while the cluster settles, no compensation begins, the run does not end and its cluster stays
/// locked (another start is refused); `resume` finishes it, every node restarted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_during_step_3_stops_after_the_current_step_and_resume_finishes() {
    let (dir, sb) = lagging(0.05).await;
    let data = temp_dir();
    let data_dir = data.path().to_owned();
    let daemon = tokio::task::spawn_blocking(move || DaemonProcess::start(&data_dir, &[]))
        .await
        .unwrap();
    let inventory = dir.path().join("inventory.toml");
    let inventory = inventory.to_str().unwrap();
    let (ok, out) = cli(
        data.path(),
        &[
            "start",
            "yb-maintenance",
            "--detach",
            "--inventory",
            inventory,
        ],
    )
    .await;
    assert!(ok, "{out}");
    let run = out.lines().next().unwrap().trim().to_owned();
    let socket = data.path().join("waymark.sock");
    wait_until(
        Duration::from_secs(120),
        "step 3 restarted a yb-master",
        || {
            read_effects(dir.path())
                .iter()
                .any(|e| e.target.ends_with("/yb-master") && e.action == "restart")
        },
    )
    .await;
    let (ok, out) = cli(
        data.path(),
        &["hold", &run, "--reason", "a test holds the run"],
    )
    .await;
    assert!(ok, "{out}");
    wait_until(Duration::from_secs(120), "the step in flight ended", || {
        !step_in_flight(&daemon_history(&socket, &run))
    })
    .await;
    let held = daemon_history(&socket, &run);
    let effects_held = read_effects(dir.path()).len();
    // Wait on the cluster, not on a clock: until every master and tserver serves again (the
    // sandbox's ground truth), the held run must not start anything.
    wait_until(Duration::from_secs(120), "the cluster settles", || {
        sb.shared().read(|st| {
            let t = st.truth(chrono::Utc::now().timestamp_millis());
            t.tservers_down.is_empty() && t.masters_down.is_empty()
        })
    })
    .await;
    let still = daemon_history(&socket, &run);
    // Held, the workflow code may still finish a wait it was in (its settle timer, a look at
    // the recorded clock): no step, attempt or compensation is journaled.
    let started_while_held: Vec<&Event> = still[held.len()..]
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::StepScheduled { .. }
                    | Event::AttemptStarted { .. }
                    | Event::CompensationStarted { .. }
            )
        })
        .collect();
    assert!(
        started_while_held.is_empty(),
        "nothing started while held: {started_while_held:?}"
    );
    assert_eq!(
        read_effects(dir.path()).len(),
        effects_held,
        "no effect while held"
    );
    assert!(
        !still.iter().any(|e| matches!(
            e,
            Event::CompensationStarted { .. }
                | Event::RunCompleted { .. }
                | Event::RunFailed { .. }
                | Event::RunCancelled { .. }
                | Event::RunRefused { .. }
        )),
        "no compensation, no end: {still:#?}"
    );
    let (ok, out) = cli(
        data.path(),
        &[
            "start",
            "yb-maintenance",
            "--detach",
            "--inventory",
            inventory,
        ],
    )
    .await;
    assert!(!ok, "the held run keeps its cluster locked:\n{out}");
    let (ok, out) = cli(data.path(), &["signal", &run, "resume"]).await;
    assert!(ok, "{out}");
    let (ok, out) = cli(data.path(), &["attach", &run]).await;
    assert!(ok, "the resumed run completes:\n{out}");
    check_completed_estate(dir.path());
    daemon.sigterm();
}
