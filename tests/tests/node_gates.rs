//! issue 11, part 2: node gates as strict as `YugabyteDB` Anywhere's rolling restart. Every test
//! runs the real `waymark` binary (`waymark run yb-maintenance`) against a sandbox that lags like
//! a real cluster, and reads what the sandbox itself recorded: the invariant monitor's
//! `invariants.json` (ground truth, not the APIs) and the effects (`effects.jsonl`).
//!
//! - the full runbook never has two tservers or two masters down, nor a forward to a group
//!   without a healthy target, and each tserver is leader-blacklisted and removed exactly once;
//! - the same runbook with the test-only `gates.legacy_unsafe_gates_for_tests` (the version-2
//!   gates) has two tservers down at once: the proof that the old gates were unsafe;
//! - each scenario knob stops the run before any change (or at the node), naming the node and the
//!   check, with the estate left as it was.

use std::path::Path;
use std::time::Duration;

use waymark_sandbox::{read_effects, read_invariants, Effect, Invariants, Sandbox, Scenario, Spec};

use crate::maintenance::check_completed_estate;
use crate::util::{temp_dir, wait_until, waymark};

/// A sandbox at time scale `scale` in a temp dir.
pub(crate) async fn lagging(scale: f64) -> (tempfile::TempDir, Sandbox) {
    let dir = temp_dir();
    let sb = Sandbox::start(dir.path(), &Spec::default().with_time_scale(scale))
        .await
        .expect("sandbox starts");
    waymark_workflows::sandbox::write_inventory(dir.path(), sb.description())
        .expect("sandbox inventory written");
    (dir, sb)
}

/// Sets `key = value` (TOML text) in `[section]` of the sandbox's `inventory.toml`.
pub(crate) fn set_inventory_key(dir: &Path, section: &str, key: &str, value: &str) {
    let path = dir.join("inventory.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let header = format!("[{section}]");
    let at = lines
        .iter()
        .position(|l| l.trim() == header)
        .unwrap_or_else(|| panic!("no {header} in {text}"));
    let end = lines[at + 1..]
        .iter()
        .position(|l| l.trim_start().starts_with('['))
        .map_or(lines.len(), |i| at + 1 + i);
    let line = format!("{key} = {value}");
    match lines[at + 1..end]
        .iter()
        .position(|l| l.split('=').next().is_some_and(|k| k.trim() == key))
    {
        Some(i) => lines[at + 1 + i] = line,
        None => lines.insert(at + 1, line),
    }
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
}

/// Appends `text` to the sandbox's `inventory.toml`.
fn append_inventory(dir: &Path, text: &str) {
    let path = dir.join("inventory.toml");
    let mut body = std::fs::read_to_string(&path).unwrap();
    body.push_str(text);
    std::fs::write(&path, body).unwrap();
}

/// `waymark run yb-maintenance` on the sandbox in `dir` (run by a blocking task, so the
/// in-process sandbox keeps serving): (success, stdout and stderr).
async fn run(dir: &Path) -> (bool, String) {
    let data = temp_dir();
    let inventory = dir.join("inventory.toml");
    let out = tokio::task::spawn_blocking(move || {
        let out = waymark(&data.path().join("data"))
            .args(["run", "yb-maintenance", "--inventory"])
            .arg(inventory)
            .output()
            .expect("waymark run");
        drop(data);
        out
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
    )
}

fn invariants(dir: &Path) -> Invariants {
    read_invariants(dir).expect("DIR/invariants.json is written from the start")
}

/// The effects that change the estate (the sandbox's own set-up is recorded before the test).
fn changes(dir: &Path, before: usize) -> Vec<Effect> {
    read_effects(dir).into_iter().skip(before).collect()
}

fn blacklist(effects: &[Effect], action: &str, server: &str) -> usize {
    effects
        .iter()
        .filter(|e| {
            e.target == "yb-admin/leader_blacklist"
                && e.action == action
                && e.details["server"] == server
        })
        .count()
}

/// The invariants every run must hold, whatever it ends with.
fn assert_one_server_down_at_most(dir: &Path, log: &str) {
    let got = invariants(dir);
    assert!(
        got.max_tservers_down <= 1,
        "at most one tserver down at any moment: {got:?}\n{log}"
    );
    assert!(
        got.max_masters_down <= 1,
        "at most one master down at any moment: {got:?}\n{log}"
    );
    assert_eq!(
        got.forwards_to_unhealthy, 0,
        "never a forward to a target group without a healthy target: {got:?}\n{log}"
    );
}

/// The full runbook against a cluster whose lag is many poll intervals long (time scale 0.05: a
/// tserver stops for 250 ms, starts for 150 ms, bootstraps 1.2 s, its followers lag 500 ms more;
/// the gates poll every 150 ms) completes with every server restarted once and never two down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_runbook_on_a_lagging_cluster_never_has_two_servers_down() {
    let (dir, _sb) = lagging(0.05).await;
    let (ok, log) = run(dir.path()).await;
    assert!(ok, "the run completes:\n{log}");
    check_completed_estate(dir.path());
    let got = invariants(dir.path());
    assert_eq!(got.max_tservers_down, 1, "{got:?}");
    assert_eq!(got.max_masters_down, 1, "{got:?}");
    assert_eq!(got.forwards_to_unhealthy, 0, "{got:?}");
    let effects = read_effects(dir.path());
    for node in ["yb-a-1", "yb-a-2", "yb-a-3", "yb-b-1", "yb-b-2", "yb-b-3"] {
        let server = format!("{node}:9100");
        assert_eq!(blacklist(&effects, "blacklist-add", &server), 1, "{server}");
        assert_eq!(
            blacklist(&effects, "blacklist-remove", &server),
            1,
            "{server}"
        );
    }
    let st: waymark_sandbox::estate::Estate =
        serde_json::from_slice(&std::fs::read(dir.path().join("state.json")).unwrap()).unwrap();
    assert!(st.yb.blacklist.is_empty(), "{:?}", st.yb.blacklist);
}

/// The proof that the old gates were unsafe: the same runbook with the version-2 gates (the
/// test-only knob) on a cluster lagging as above (time scale 0.1) restarts the next tserver while
/// the previous one still bootstraps; the monitor records two tservers down at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_gates_let_two_tservers_be_down_at_once() {
    let (dir, _sb) = lagging(0.1).await;
    set_inventory_key(dir.path(), "gates", "legacy_unsafe_gates_for_tests", "true");
    let data = temp_dir();
    let mut child = waymark(&data.path().join("data"))
        .args(["run", "yb-maintenance", "--inventory"])
        .arg(dir.path().join("inventory.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn waymark run");
    let mut finished = None;
    wait_until(
        Duration::from_secs(240),
        "two tservers down, or the run's end",
        || {
            if finished.is_none() {
                finished = child.try_wait().unwrap();
            }
            finished.is_some()
                || read_invariants(dir.path()).is_some_and(|i| i.max_tservers_down >= 2)
        },
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let got = invariants(dir.path());
    assert!(
        got.max_tservers_down >= 2,
        "the legacy gates had at most {} tserver down (run ended: {finished:?}): {got:?}",
        got.max_tservers_down
    );
    assert!(
        got.violations
            .iter()
            .any(|v| v.what.contains("yb-tservers down at once")),
        "{got:?}"
    );
}

/// A run that must stop before any change: it is refused, its message names `words`, the sandbox
/// recorded no effect, and the invariant monitor's record did not move (no server went down, no
/// forward was made).
async fn stops_before_any_change(dir: &Path, words: &[&str]) -> String {
    let before = read_effects(dir).len();
    let record = invariants(dir);
    let (ok, log) = run(dir).await;
    assert!(!ok, "the run must stop:\n{log}");
    assert!(
        log.contains("REFUSED before changing anything"),
        "the run is refused (issue 12):\n{log}"
    );
    for w in words {
        assert!(log.contains(w), "the message names {w:?}:\n{log}");
    }
    assert_eq!(
        changes(dir, before),
        Vec::<Effect>::new(),
        "no effect on the estate:\n{log}"
    );
    let after = invariants(dir);
    assert_eq!(
        (
            after.max_tservers_down,
            after.max_masters_down,
            after.forwards_to_unhealthy
        ),
        (
            record.max_tservers_down,
            record.max_masters_down,
            record.forwards_to_unhealthy
        ),
        "the monitor saw nothing change:\n{after:?}\n{log}"
    );
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tserver_the_inventory_lacks_stops_the_run_before_any_change() {
    let (dir, sb) = lagging(0.05).await;
    sb.shared()
        .apply(&Scenario::UnlistedNode {
            node: "yb-b-4".into(),
            zone: "B".into(),
        })
        .unwrap();
    stops_before_any_change(
        dir.path(),
        &["tserver set", "yb-b-4", "not in the inventory"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_the_cluster_lacks_stops_the_run_before_any_change() {
    let (dir, _sb) = lagging(0.05).await;
    let ssh = std::fs::read_to_string(dir.path().join("inventory.toml"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("ssh = ").map(str::to_owned))
        .unwrap();
    append_inventory(
        dir.path(),
        &format!(
            "\n[[yugabyte.nodes]]\nname = \"yb-b-9\"\nzone = \"B\"\nssh = {ssh}\naddress = \"yb-b-9\"\n"
        ),
    );
    stops_before_any_change(dir.path(), &["tserver set", "yb-b-9", "not in the cluster"]).await;
}

/// A stale DEAD read replica stops the run, naming it; listed in `yugabyte.ignore_tservers`, the
/// node gate passes (`waymark plan` says so, and changes nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_dead_read_replica_stops_the_run_unless_the_inventory_ignores_it() {
    let (dir, sb) = lagging(0.05).await;
    sb.shared()
        .apply(&Scenario::StaleDeadReadReplica {
            node: "yb-rr-1".into(),
        })
        .unwrap();
    stops_before_any_change(dir.path(), &["yb-rr-1", "DEAD", "ignore_tservers"]).await;
    set_inventory_key(dir.path(), "yugabyte", "ignore_tservers", "[\"yb-rr-1\"]");
    let before = read_effects(dir.path()).len();
    let data = temp_dir();
    let inventory = dir.path().join("inventory.toml");
    let out = tokio::task::spawn_blocking(move || {
        waymark(&data.path().join("data"))
            .args(["plan", "yb-maintenance", "--inventory"])
            .arg(inventory)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("node gate: PASSES now"), "{stdout}");
    assert_eq!(
        read_effects(dir.path()).len(),
        before,
        "plan changed nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_already_down_stops_the_run_before_any_change() {
    let (dir, sb) = lagging(0.05).await;
    sb.shared()
        .apply(&Scenario::MasterDown {
            node: "yb-a-1".into(),
        })
        .unwrap();
    stops_before_any_change(
        dir.path(),
        &["master yb-a-1", "/api/v1/masters reports an error"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_b_unhealthy_stops_the_run_before_any_change() {
    let (dir, sb) = lagging(0.05).await;
    sb.shared().apply(&Scenario::ZoneBUnhealthy).unwrap();
    stops_before_any_change(dir.path(), &["zone B's target group", "no healthy target"]).await;
}

/// A TLS cluster: without `yugabyte.certs_dir` the run stops before any change, naming the node
/// and the tool; with it, every `yb-admin` and `yb-ts-cli` call passes `-certs_dir_name` and the
/// run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cluster_needs_the_certs_dir_for_every_yb_tool_call() {
    let (dir, sb) = lagging(0.01).await;
    sb.shared()
        .apply(&Scenario::Tls {
            certs_dir: "/opt/yugabyte/certs".into(),
        })
        .unwrap();
    stops_before_any_change(dir.path(), &["yb-admin", "yb-a-1", "TLS", "certs_dir"]).await;
    set_inventory_key(
        dir.path(),
        "yugabyte",
        "certs_dir",
        "\"/opt/yugabyte/certs\"",
    );
    let (ok, log) = run(dir.path()).await;
    assert!(ok, "with the certificates the run completes:\n{log}");
    check_completed_estate(dir.path());
    assert_one_server_down_at_most(dir.path(), &log);
}

/// A node that bootstraps far longer than `node_timeout_secs`: the run stops at that node (its
/// readiness wait names it and `is_server_ready`), restarts no other tserver, and its
/// compensation removes it from the leader blacklist and puts traffic and `MirrorMaker2` back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bootstrap_stops_the_run_at_the_node_and_compensates() {
    let (dir, sb) = lagging(0.05).await;
    sb.shared()
        .apply(&Scenario::SlowBootstrap {
            node: "yb-a-2".into(),
            factor: 200.0,
        })
        .unwrap();
    set_inventory_key(dir.path(), "gates", "node_timeout_secs", "2");
    set_inventory_key(dir.path(), "gates", "retry_attempts", "1");
    let before = read_effects(dir.path()).len();
    let (ok, log) = run(dir.path()).await;
    assert!(!ok, "the run must stop at yb-a-2:\n{log}");
    assert!(log.contains("yb-a-2"), "{log}");
    assert!(log.contains("is_server_ready"), "{log}");
    let effects = changes(dir.path(), before);
    let restarted: Vec<&str> = effects
        .iter()
        .filter(|e| e.action == "restart" && e.target.ends_with("/yb-tserver"))
        .map(|e| e.target.as_str())
        .collect();
    assert_eq!(
        restarted,
        ["yb-a-1/yb-tserver", "yb-a-2/yb-tserver"],
        "no tserver after the slow one is restarted:\n{log}"
    );
    assert_eq!(blacklist(&effects, "blacklist-add", "yb-a-2:9100"), 1);
    assert_eq!(
        blacklist(&effects, "blacklist-remove", "yb-a-2:9100"),
        1,
        "the compensation removes it from the leader blacklist"
    );
    let st: waymark_sandbox::estate::Estate =
        serde_json::from_slice(&std::fs::read(dir.path().join("state.json")).unwrap()).unwrap();
    assert!(st.yb.blacklist.is_empty(), "{:?}", st.yb.blacklist);
    assert_eq!(
        st.k8s.deployments["prod/mirrormaker2"].replicas, 2,
        "MirrorMaker2 back at its replicas"
    );
    assert_one_server_down_at_most(dir.path(), &log);
}

/// `restart_zones` makes the nodes explicit: `waymark plan` lists the order (masters leader
/// last), the nodes left alone, the gates and the expected duration, and a run restarts only the
/// listed zone's servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_zones_limit_the_nodes_and_plan_lists_order_gates_and_duration() {
    let (dir, _sb) = lagging(0.01).await;
    set_inventory_key(dir.path(), "yugabyte", "restart_zones", "[\"B\"]");
    let before = read_effects(dir.path()).len();
    let data = temp_dir();
    let inventory = dir.path().join("inventory.toml");
    let out = tokio::task::spawn_blocking(move || {
        waymark(&data.path().join("data"))
            .args(["plan", "yb-maintenance", "--inventory"])
            .arg(inventory)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains(
            "order: yb-master on yb-b-1, yb-master on yb-b-2, yb-tserver on yb-b-1, yb-tserver on yb-b-2, yb-tserver on yb-b-3\n"
        ),
        "zone B only, the leader master (yb-b-2) last:\n{plan}"
    );
    assert!(
        plan.contains("not restarted (zone not in restart_zones): yb-a-1 (zone A), yb-a-2 (zone A), yb-a-3 (zone A)"),
        "{plan}"
    );
    for gate in [
        "masters and tservers exactly the inventory's",
        "leader blacklist ADD",
        "is_server_ready 0 tablets not running",
        "consecutive idle readings",
        "settle 180 ms",
    ] {
        assert!(
            plan.contains(gate),
            "the plan names the gate {gate:?}:\n{plan}"
        );
    }
    assert!(
        plan.contains("expected duration: 5 node restarts"),
        "{plan}"
    );
    assert_eq!(
        read_effects(dir.path()).len(),
        before,
        "plan changed nothing"
    );

    let (ok, log) = run(dir.path()).await;
    assert!(ok, "{log}");
    let restarted: Vec<String> = changes(dir.path(), before)
        .into_iter()
        .filter(|e| e.action == "restart")
        .map(|e| e.target)
        .collect();
    assert_eq!(
        restarted,
        [
            "yb-b-1/yb-master",
            "yb-b-2/yb-master",
            "yb-b-1/yb-tserver",
            "yb-b-2/yb-tserver",
            "yb-b-3/yb-tserver"
        ],
        "{log}"
    );
    assert_one_server_down_at_most(dir.path(), &log);
}
