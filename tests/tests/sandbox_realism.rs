//! issue 11, part 1: the sandbox lags like a real cluster. Every test drives the sandbox through
//! its real protocols (SSH commands run by the SSH activity, the yb-master HTTP API, the `ELBv2`
//! query API through the AWS SDK of the activities, the Kubernetes API, the admin API) and reads
//! the invariant monitor's `invariants.json`, which the sandbox feeds from its own ground truth.
//! The last tests run today's per-node gate against a lagging sandbox and show it letting two
//! tservers be down at once (and, as a control, not without the lag).
//!
//! issue 13: the sandbox on paused tokio time (`Clock::simulated`, in memory, seeded): real
//! durations pass in simulated time, every fault kind of every system shows to its client, the
//! same seed and calls give the same answers and effects.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waymark_activities::elb::{
    Credentials, ElbClient, ElbConnection, SetTrafficWeights, SetTrafficWeightsInput, TrafficSource,
};
use waymark_activities::ssh::{
    self, CommandOutput, RestartInput, ShowInput, SystemdRestart, SystemdShow,
};
use waymark_activities::yb::{
    HealthInput, Masters, ServerBackInput, ServerKind, WaitHealthy, WaitServerBack,
};
use waymark_engine::Activity;
use waymark_sandbox::elb::{target_group_name, yb_target_group_name, YB_LOAD_BALANCER};
use waymark_sandbox::{
    read_invariants, Clock, Fault, FaultKind, Faults, Invariants, Options, Sandbox, Spec, Timing,
};
use waymark_workflows::inventory::Inventory;

use crate::util::{activity_ctx, temp_dir};

/// A sandbox at time scale `scale` in a temp dir, and its inventory.
async fn lagging(scale: f64) -> (tempfile::TempDir, Sandbox, Inventory) {
    let dir = temp_dir();
    let sb = Sandbox::start(dir.path(), &Spec::default().with_time_scale(scale))
        .await
        .expect("sandbox starts");
    waymark_workflows::sandbox::write_inventory(dir.path(), sb.description()).unwrap();
    let inv = Inventory::load(&dir.path().join("inventory.toml")).expect("sandbox inventory");
    (dir, sb, inv)
}

/// Runs `command` on `node` over SSH (the SSH activity's client, the sandbox's SSH host).
async fn on(inv: &Inventory, node: &str, command: &str) -> CommandOutput {
    let n = inv
        .yugabyte
        .nodes
        .iter()
        .find(|n| n.name == node)
        .unwrap_or_else(|| panic!("no node {node} in the inventory"));
    ssh::run(&inv.ssh_target(n), command)
        .await
        .unwrap_or_else(|e| panic!("ssh {node} `{command}`: {e}"))
}

/// One HTTP/1.1 request on loopback: (status, body).
async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

async fn master_get(sb: &Sandbox, node: &str, path: &str) -> (u16, Value) {
    let addr = sb.endpoints().yb_masters[node].to_string();
    let (status, body) = http(&addr, "GET", path, &[], "").await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// An `ELBv2` query-API call (any `AWS4-HMAC-SHA256` authorization is accepted): (status, XML).
async fn elb_call(sb: &Sandbox, params: &[(&str, &str)]) -> (u16, String) {
    let body = params
        .iter()
        .map(|(k, v)| format!("{k}={}", v.replace('/', "%2F").replace(':', "%3A")))
        .collect::<Vec<_>>()
        .join("&");
    http(
        &sb.endpoints().elb.to_string(),
        "POST",
        "/",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            (
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDTEST/20260101/us-east-1/elasticloadbalancing/aws4_request, SignedHeaders=host, Signature=0",
            ),
        ],
        &format!("Version=2015-12-01&{body}"),
    )
    .await
}

fn target_state(xml: &str, id: &str) -> Option<String> {
    let at = xml.find(&format!("<Id>{id}</Id>"))?;
    let rest = &xml[at..];
    let s = rest.find("<State>")? + "<State>".len();
    let e = rest[s..].find("</State>")?;
    Some(rest[s..s + e].to_owned())
}

async fn admin_scenario(sb: &Sandbox, knob: &Value) {
    let (status, body) = http(
        &sb.endpoints().admin.to_string(),
        "POST",
        "/scenario",
        &[("Content-Type", "application/json")],
        &knob.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{knob}: {body}");
}

async fn admin_invariants(sb: &Sandbox) -> Invariants {
    let (status, body) = http(
        &sb.endpoints().admin.to_string(),
        "GET",
        "/invariants",
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("invariants JSON")
}

fn invariants(dir: &Path) -> Invariants {
    read_invariants(dir).expect("DIR/invariants.json is written from the start")
}

/// The leader's `/api/v1/tablet-servers` entry of `host`.
async fn tserver_entry(inv: &Inventory, host: &str) -> Option<(bool, f64, u64)> {
    let ts = inv.masters().tservers().await.ok()?;
    let t = ts.into_iter().find(|t| t.host == host)?;
    Some((t.alive, t.time_since_hb_sec, t.uptime_seconds))
}

#[test]
fn sandbox_shell_splits_posix_quoting() {
    let words = waymark_sandbox::yb::shell_words(
        r"'/usr/bin/yb-admin' '-master_addresses' '10.0.0.1:7100,10.0.0.2:7100' get_is_load_balancer_idle",
    )
    .unwrap();
    assert_eq!(
        words,
        [
            "/usr/bin/yb-admin",
            "-master_addresses",
            "10.0.0.1:7100,10.0.0.2:7100",
            "get_is_load_balancer_idle"
        ]
    );
    assert_eq!(
        waymark_sandbox::yb::shell_words(r#"'it'\''s' "a \"b\"" c\ d"#).unwrap(),
        ["it's", "a \"b\"", "c d"]
    );
    for hostile in ["a; rm -rf /", "$(id)", "`id`", "a | b", "'open"] {
        assert!(
            waymark_sandbox::yb::shell_words(hostile).is_err(),
            "{hostile} must be refused, not run"
        );
    }
}

/// A stopped tserver: the master keeps it ALIVE (its heartbeat aging) until the scaled
/// unresponsive timeout, while the monitor counts it down from the moment its stop began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_tserver_stays_alive_at_the_master_until_the_timeout_while_the_monitor_counts_it_down(
) {
    // 60 s timeout -> 6 s; graceful stop 5 s -> 0.5 s.
    let (dir, _sb, inv) = lagging(0.1).await;
    let out = on(&inv, "yb-a-2", "sudo systemctl stop yb-tserver").await;
    assert_eq!(out.exit_status, 0, "{out:?}");
    let (alive, hb, uptime) = tserver_entry(&inv, "yb-a-2").await.unwrap();
    assert!(alive, "a real master still says ALIVE right after the stop");
    assert!(uptime >= 3600, "with the old process's uptime ({uptime} s)");
    assert!(
        hb >= 0.4,
        "but its heartbeat is as old as the stop ({hb} s)"
    );
    let health = inv.masters().health(1).await.unwrap();
    assert!(
        health.dead_nodes.is_empty(),
        "not in dead_nodes yet: {health:?}"
    );
    let inv_now = invariants(dir.path());
    assert_eq!(inv_now.now.tservers_down, ["yb-a-2"], "{inv_now:?}");
    assert_eq!(inv_now.max_tservers_down, 1);
    // Only after the timeout without heartbeat does the master say DEAD.
    let mut last = (true, 0.0);
    let mut rounds = 0;
    while last.0 {
        rounds += 1;
        assert!(
            rounds < 3000,
            "the master never marked yb-a-2 DEAD: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        if let Some((alive, hb, _)) = tserver_entry(&inv, "yb-a-2").await {
            last = (alive, hb);
        }
    }
    assert!(
        last.1 >= 6.0,
        "DEAD only once the heartbeat is older than the scaled 60 s timeout: {} s",
        last.1
    );
    let health = inv.masters().health(1).await.unwrap();
    assert_eq!(health.dead_nodes.len(), 1, "{health:?}");
    assert!(
        health.under_replicated_tablets > 0,
        "location view: replicas on a DEAD node: {health:?}"
    );
}

/// `systemctl restart` blocks for the graceful stop, as systemd does: afterwards the unit is
/// active with a new `InvocationID`; with `--no-block` it answers at once, the unit still
/// `deactivating` with the old `InvocationID`. At time scale 1.0 (real durations: a 3 s master
/// stop, a 5 s tserver stop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemctl_restart_blocks_for_the_graceful_stop_unless_no_block() {
    let (_dir, _sb, inv) = lagging(1.0).await;
    let show = "systemctl show -p InvocationID,ActiveState yb-tserver";
    let before = on(&inv, "yb-a-2", show).await.stdout;
    let out = on(
        &inv,
        "yb-a-2",
        "sudo systemctl --no-block restart yb-tserver",
    )
    .await;
    assert_eq!(out.exit_status, 0, "{out:?}");
    let during = on(&inv, "yb-a-2", show).await.stdout;
    assert!(during.contains("ActiveState=deactivating"), "{during}");
    assert_eq!(
        before.lines().find(|l| l.starts_with("InvocationID=")),
        during.lines().find(|l| l.starts_with("InvocationID=")),
        "the old run is still being stopped"
    );
    let is_active = on(&inv, "yb-a-2", "systemctl is-active yb-tserver").await;
    assert_eq!(
        (is_active.exit_status, is_active.stdout.trim()),
        (3, "deactivating")
    );

    let show = "systemctl show -p InvocationID,ActiveState yb-master";
    let before = on(&inv, "yb-a-1", show).await.stdout;
    let out = on(&inv, "yb-a-1", "sudo systemctl restart yb-master").await;
    assert_eq!(out.exit_status, 0, "{out:?}");
    let after = on(&inv, "yb-a-1", show).await.stdout;
    assert!(after.contains("ActiveState=active"), "{after}");
    assert_ne!(
        before, after,
        "a new run once the blocking restart returned"
    );
}

/// After `systemctl restart` returns, the new process bootstraps its tablets over time:
/// `yb-ts-cli is_server_ready` reports tablets not running (non-zero exit) before it reports
/// ready; meanwhile `tablet-under-replication` sees it and `health-check` does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_tserver_bootstraps_over_time_and_only_the_running_view_sees_it() {
    let (dir, sb, inv) = lagging(0.05).await;
    let before = on(&inv, "yb-a-3", "systemctl show -p InvocationID yb-tserver").await;
    let out = on(&inv, "yb-a-3", "sudo systemctl restart yb-tserver").await;
    assert_eq!(out.exit_status, 0, "{out:?}");
    let after = on(&inv, "yb-a-3", "systemctl show -p InvocationID yb-tserver").await;
    assert_ne!(before.stdout, after.stdout, "a new run of the unit");
    let ready_cmd =
        "'/home/yugabyte/bin/yb-ts-cli' '--server_address=yb-a-3:9100' 'is_server_ready'";
    let first = on(&inv, "yb-a-3", ready_cmd).await;
    assert_ne!(
        first.exit_status, 0,
        "not ready right after the restart: {first:?}"
    );
    let mut counts = Vec::new();
    let mut running_view_saw_it = false;
    let mut location_view_clean_meanwhile = false;
    let mut lag_while_bootstrapping = false;
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 2000, "yb-a-3 never became ready: {counts:?}");
        let out = on(&inv, "yb-a-3", ready_cmd).await;
        let leader = inv.masters().leader().await.unwrap();
        let node = inv
            .yugabyte
            .nodes
            .iter()
            .find(|n| n.master_http.as_deref() == Some(leader.as_str()))
            .unwrap()
            .name
            .clone();
        let (_, ur_leader) = master_get(&sb, &node, "/api/v1/tablet-under-replication").await;
        let (_, hc) = master_get(&sb, &node, "/api/v1/health-check").await;
        let running_view = ur_leader["underreplicated_tablets"]
            .as_array()
            .map_or(0, Vec::len);
        let location_view = hc["under_replicated_tablets"]
            .as_array()
            .map_or(0, Vec::len);
        if out.exit_status == 0 {
            assert!(out.stdout.contains("ready"), "{out:?}");
            break;
        }
        if let Some(n) = out
            .stdout
            .split_whitespace()
            .find_map(|w| w.parse::<u32>().ok())
        {
            counts.push(n);
        }
        let metrics = on(
            &inv,
            "yb-a-1",
            "curl -s http://yb-a-3:9000/prometheus-metrics",
        )
        .await;
        if metrics.exit_status == 0 && lags(&metrics.stdout).iter().any(|&l| l > 0) {
            lag_while_bootstrapping = true;
        }
        if running_view > 0 {
            running_view_saw_it = true;
            if location_view == 0 {
                location_view_clean_meanwhile = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !counts.is_empty(),
        "is_server_ready reported tablets not yet running"
    );
    assert!(counts.iter().all(|&n| n > 0), "{counts:?}");
    assert!(
        counts.windows(2).all(|w| w[1] <= w[0]),
        "the count only goes down: {counts:?}"
    );
    assert!(
        running_view_saw_it,
        "tablet-under-replication counted the bootstrapping replicas"
    );
    assert!(
        location_view_clean_meanwhile,
        "health-check (replica locations) stayed clean while they bootstrapped"
    );
    assert!(
        lag_while_bootstrapping,
        "its followers lag while it bootstraps"
    );
    // Its followers catch up after it is ready.
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 3000, "the followers on yb-a-3 never caught up");
        let m = on(
            &inv,
            "yb-a-1",
            "curl -s http://yb-a-3:9000/prometheus-metrics",
        )
        .await;
        assert_eq!(m.exit_status, 0, "{m:?}");
        let l = lags(&m.stdout);
        assert!(!l.is_empty(), "{}", m.stdout);
        if l.iter().all(|&x| x == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(invariants(dir.path()).max_tservers_down, 1);
}

/// `follower_lag_ms` values of a Prometheus text page.
fn lags(page: &str) -> Vec<u64> {
    page.lines()
        .filter(|l| l.starts_with("follower_lag_ms{"))
        .filter_map(|l| {
            l.rsplit_once("} ")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// Stopping the leader master: a new leader is elected (is-leader 200 on exactly one master,
/// 503 on the others), and the stopped master stays in `/api/v1/masters` with an `error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_leader_master_is_replaced_and_listed_with_an_error() {
    let (dir, sb, inv) = lagging(0.02).await;
    let m: Masters = inv.masters();
    let leader_addr = m.leader().await.unwrap();
    let leader = inv
        .yugabyte
        .nodes
        .iter()
        .find(|n| n.master_http.as_deref() == Some(leader_addr.as_str()))
        .unwrap()
        .name
        .clone();
    let out = on(&inv, &leader, "sudo systemctl stop yb-master").await;
    assert_eq!(out.exit_status, 0, "{out:?}");
    let others: Vec<String> = inv
        .yugabyte
        .nodes
        .iter()
        .filter(|n| n.master_http.is_some() && n.name != leader)
        .map(|n| n.name.clone())
        .collect();
    let mut statuses = BTreeMap::new();
    let mut rounds = 0;
    while statuses.values().filter(|&&c| c == 200).count() != 1 {
        rounds += 1;
        assert!(rounds < 2000, "no new leader master: {statuses:?}");
        statuses.clear();
        for o in &others {
            let (code, _) = master_get(&sb, o, "/api/v1/is-leader").await;
            statuses.insert(o.clone(), code);
        }
    }
    assert_eq!(
        statuses.values().filter(|&&c| c == 503).count(),
        others.len() - 1,
        "followers answer 503: {statuses:?}"
    );
    let (code, masters) = master_get(&sb, &others[0], "/api/v1/masters").await;
    assert_eq!(code, 200);
    let list = masters["masters"].as_array().unwrap();
    assert_eq!(
        list.len(),
        3,
        "the stopped master is still listed: {masters}"
    );
    let stopped = list
        .iter()
        .find(|e| e["registration"]["private_rpc_addresses"][0]["host"] == leader.as_str())
        .unwrap();
    assert!(stopped.get("error").is_some(), "{stopped}");
    assert!(stopped.get("role").is_none(), "{stopped}");
    let roles: Vec<&str> = list.iter().filter_map(|e| e["role"].as_str()).collect();
    assert_eq!(
        roles.iter().filter(|r| **r == "LEADER").count(),
        1,
        "{roles:?}"
    );
    assert_eq!(invariants(dir.path()).now.masters_down, [leader]);
}

/// yb-admin: `-master_addresses` must name a live master; the leader blacklist drains leaders
/// off a node and the load balancer is busy, then idle, after its removal; a TLS cluster refuses
/// a client without `-certs_dir_name`. Commands arrive single-quoted, as the activities send them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yb_admin_addresses_blacklist_load_balancer_and_tls() {
    // One leader move every 2 s -> 0.2 s.
    let (_dir, sb, inv) = lagging(0.1).await;
    let masters = inv.master_rpc().join(",");
    let admin = |cmd: &str, extra: &str| {
        format!("'/home/yugabyte/bin/yb-admin' '-master_addresses' '{masters}' {extra}{cmd}")
    };
    let out = on(&inv, "yb-a-1", &admin("'list_all_masters'", "")).await;
    assert_eq!(out.exit_status, 0, "{out:?}");
    assert_eq!(out.stdout.matches(":7100").count(), 3, "{}", out.stdout);
    assert!(out.stdout.contains("LEADER"), "{}", out.stdout);
    let out = on(&inv, "yb-a-1", &admin("list_all_tablet_servers", "")).await;
    assert_eq!(out.stdout.matches(":9100").count(), 6, "{}", out.stdout);
    let wrong = on(
        &inv,
        "yb-a-1",
        "'/home/yugabyte/bin/yb-admin' -master_addresses yb-a-2:7100 list_all_masters",
    )
    .await;
    assert_ne!(wrong.exit_status, 0, "yb-a-2 runs no master: {wrong:?}");
    assert!(wrong.stderr.contains("yb-a-2:7100"), "{wrong:?}");

    let out = on(
        &inv,
        "yb-a-1",
        &admin("change_leader_blacklist ADD yb-a-2:9100", ""),
    )
    .await;
    assert_eq!(out.exit_status, 0, "{out:?}");
    let mut last = String::new();
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 2000, "blacklist never completed: {last}");
        last = on(
            &inv,
            "yb-a-1",
            &admin("get_leader_blacklist_completion", ""),
        )
        .await
        .stdout;
        if last.contains("Percent complete = 100") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, ts) = master_get(&sb, "yb-b-2", "/api/v1/tablet-servers").await;
    let entry = &ts[waymark_sandbox::yb::PLACEMENT]["yb-a-2:9000"];
    assert_eq!(
        entry["user_tablets_leaders"], 0,
        "leaders moved off yb-a-2: {entry}"
    );
    let out = on(
        &inv,
        "yb-a-1",
        &admin("change_leader_blacklist REMOVE yb-a-2:9100", ""),
    )
    .await;
    assert_eq!(out.exit_status, 0, "{out:?}");
    let busy = on(&inv, "yb-a-1", &admin("get_is_load_balancer_idle", "")).await;
    assert_eq!(
        busy.stdout.trim(),
        "Idle = 0",
        "leaders must move back first"
    );
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 2000, "load balancer never idle");
        let idle = on(&inv, "yb-a-1", &admin("get_is_load_balancer_idle", "")).await;
        if idle.stdout.trim() == "Idle = 1" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, ts) = master_get(&sb, "yb-b-2", "/api/v1/tablet-servers").await;
    let entry = &ts[waymark_sandbox::yb::PLACEMENT]["yb-a-2:9000"];
    assert!(
        entry["user_tablets_leaders"].as_u64().unwrap() > 0,
        "{entry}"
    );

    admin_scenario(
        &sb,
        &json!({"knob": "tls", "certs_dir": "/opt/yugabyte/certs"}),
    )
    .await;
    let refused = on(&inv, "yb-a-1", &admin("get_is_load_balancer_idle", "")).await;
    assert_ne!(refused.exit_status, 0, "{refused:?}");
    assert!(refused.stderr.contains("certs_dir_name"), "{refused:?}");
    let ok = on(
        &inv,
        "yb-a-1",
        &admin(
            "get_is_load_balancer_idle",
            "'-certs_dir_name' '/opt/yugabyte/certs' ",
        ),
    )
    .await;
    assert_eq!(ok.exit_status, 0, "{ok:?}");
    let ts_cli = on(
        &inv,
        "yb-a-1",
        "yb-ts-cli --server_address=yb-a-1:9100 is_server_ready",
    )
    .await;
    assert_ne!(
        ts_cli.exit_status, 0,
        "yb-ts-cli needs the certs too: {ts_cli:?}"
    );
}

/// `ELBv2`: a registered target is `initial` until interval x healthy threshold, a deregistered
/// one `draining` for the deregistration delay; a network load balancer refuses a weighted
/// forward (through the AWS SDK of the activities); the monitor counts a forward to a target
/// group with no healthy target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elb_health_checks_draining_nlb_refusal_and_unhealthy_forward() {
    // initial: 10 s x 3 -> 0.6 s; draining: 300 s -> 6 s.
    let (dir, sb, inv) = lagging(0.02).await;
    let tg = sb.shared().read(|st| {
        st.elb
            .target_group_arn(&yb_target_group_name("B"))
            .unwrap()
            .to_owned()
    });
    let target = "10.20.2.99";
    let target_params = [
        ("TargetGroupArn", tg.as_str()),
        ("Targets.member.1.Id", target),
    ];
    let (code, body) = elb_call(
        &sb,
        &[&[("Action", "RegisterTargets")][..], &target_params[..]].concat(),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let health = || {
        let params: Vec<(&str, &str)> = [
            &[("Action", "DescribeTargetHealth")][..],
            &target_params[..],
        ]
        .concat();
        let sb = &sb;
        async move { target_state(&elb_call(sb, &params).await.1, target) }
    };
    assert_eq!(health().await.as_deref(), Some("initial"));
    let mut state = None;
    let mut rounds = 0;
    while state.as_deref() != Some("healthy") {
        rounds += 1;
        assert!(rounds < 3000, "never healthy: {state:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
        let s = health().await;
        assert!(matches!(s.as_deref(), Some("initial" | "healthy")), "{s:?}");
        state = s;
    }
    let (code, body) = elb_call(
        &sb,
        &[&[("Action", "DeregisterTargets")][..], &target_params[..]].concat(),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(health().await.as_deref(), Some("draining"));
    let mut rounds = 0;
    while health().await.as_deref() == Some("draining") {
        rounds += 1;
        assert!(rounds < 5000, "draining never ended");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(health().await.as_deref(), Some("unused"));

    // A weighted forward on the network load balancer: AWS refuses it, so does the sandbox.
    let (nlb_listener, tg_a) = sb.shared().read(|st| {
        (
            st.elb.listener_arn(YB_LOAD_BALANCER).unwrap().to_owned(),
            st.elb
                .target_group_arn(&yb_target_group_name("A"))
                .unwrap()
                .to_owned(),
        )
    });
    let conn = ElbConnection::new(waymark_sandbox::elb::REGION, inv.aws.endpoint_url.clone());
    let client = ElbClient::with_credentials(
        &conn,
        Credentials::new(
            "AKIDSANDBOXTEST",
            "sandbox-secret-not-real",
            None,
            None,
            "tests",
        ),
    )
    .await
    .unwrap();
    let refused = SetTrafficWeights
        .run_with(
            &client,
            &activity_ctx(),
            &SetTrafficWeightsInput {
                conn: conn.clone(),
                source: TrafficSource::Listener(nlb_listener.clone()),
                weights: BTreeMap::from([(tg.clone(), 50), (tg_a.clone(), 50)]),
            },
        )
        .await
        .expect_err("a network load balancer has no weighted forward");
    assert!(
        refused.to_string().contains("InvalidConfigurationRequest")
            || refused.to_string().contains("network"),
        "{refused}"
    );
    let unchanged = sb
        .shared()
        .read(|st| st.elb.weights(&nlb_listener).unwrap());
    assert_eq!(unchanged, BTreeMap::from([(tg.clone(), 1)]));

    // Zone B unhealthy while the application load balancer forwards there: counted.
    assert_eq!(invariants(dir.path()).forwards_to_unhealthy, 0);
    admin_scenario(&sb, &json!({"knob": "zone_b_unhealthy"})).await;
    let got = admin_invariants(&sb).await;
    assert_eq!(
        got.forwards_to_unhealthy, 2,
        "the listener and its rule: {got:?}"
    );
    assert!(
        got.now
            .unhealthy_forwards
            .iter()
            .any(|f| f.contains(&target_group_name("B"))),
        "{got:?}"
    );
}

/// Kubernetes: scaling `MirrorMaker2` to 0 terminates its pods over the grace period (status
/// counts them); while traffic is in zone B that is a violation the monitor counts; the scale-up
/// is Available only once the pods are ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_scale_down_terminates_over_time_and_scale_up_waits_for_ready_pods() {
    // termination 30 s -> 0.6 s, pod ready 20 s -> 0.4 s.
    let (dir, sb, _inv) = lagging(0.02).await;
    let k8s = sb.endpoints().k8s.to_string();
    let scale = |n: u32| {
        let k8s = k8s.clone();
        async move {
            http(
                &k8s,
                "PATCH",
                "/apis/apps/v1/namespaces/prod/deployments/mirrormaker2/scale",
                &[("Content-Type", "application/merge-patch+json")],
                &json!({"spec": {"replicas": n}}).to_string(),
            )
            .await
        }
    };
    let status = || {
        let k8s = k8s.clone();
        async move {
            let (_, body) = http(
                &k8s,
                "GET",
                "/apis/apps/v1/namespaces/prod/deployments/mirrormaker2",
                &[],
                "",
            )
            .await;
            let v: Value = serde_json::from_str(&body).unwrap();
            v["status"].clone()
        }
    };
    let (code, body) = scale(0).await;
    assert_eq!(code, 200, "{body}");
    let s = status().await;
    assert_eq!(s["availableReplicas"], 0, "{s}");
    assert_eq!(s["replicas"], 2, "terminating pods are still counted: {s}");
    assert_eq!(s["terminatingReplicas"], 2, "{s}");
    let mut seen = vec![2];
    let mut rounds = 0;
    while *seen.last().unwrap() > 0 {
        rounds += 1;
        assert!(rounds < 5000, "pods never terminated: {seen:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
        let r = status().await["replicas"].as_u64().unwrap();
        if r != *seen.last().unwrap() {
            seen.push(r);
        }
    }
    assert_eq!(seen, [2, 1, 0], "status.replicas falls one pod at a time");
    let got = invariants(dir.path());
    assert_eq!(
        got.mirrormaker_off_while_traffic_in_b, 1,
        "traffic is in zone B: {got:?}"
    );

    let (code, _) = scale(2).await;
    assert_eq!(code, 200);
    let s = status().await;
    assert_eq!(
        (s["replicas"].as_u64(), s["availableReplicas"].as_u64()),
        (Some(2), Some(0)),
        "{s}"
    );
    let available = s["conditions"][0].clone();
    assert_eq!(available["type"], "Available");
    assert_eq!(
        available["status"], "False",
        "not Available before the pods are ready: {s}"
    );
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 5000, "never available");
        let s = status().await;
        if s["conditions"][0]["status"] == "True" {
            assert_eq!(s["availableReplicas"], 2, "{s}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The scenario knobs, each visible where a gate would look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_knobs_show_in_the_real_views() {
    let (dir, sb, inv) = lagging(0.02).await;
    admin_scenario(
        &sb,
        &json!({"knob": "unlisted_node", "node": "yb-b-4", "zone": "B"}),
    )
    .await;
    admin_scenario(
        &sb,
        &json!({"knob": "stale_dead_read_replica", "node": "yb-rr-1"}),
    )
    .await;
    admin_scenario(&sb, &json!({"knob": "master_down", "node": "yb-a-1"})).await;
    admin_scenario(
        &sb,
        &json!({"knob": "slow_bootstrap", "node": "yb-b-3", "factor": 20.0}),
    )
    .await;
    let (code, body) = http(
        &sb.endpoints().admin.to_string(),
        "POST",
        "/scenario",
        &[("Content-Type", "application/json")],
        &json!({"knob": "master_down", "node": "yb-a-2"}).to_string(),
    )
    .await;
    assert_eq!(code, 400, "yb-a-2 runs no master: {body}");
    assert!(body.contains("yb-a-2"), "{body}");

    let ts = inv.masters().tservers().await.unwrap();
    let hosts: Vec<&str> = ts.iter().map(|t| t.host.as_str()).collect();
    assert!(hosts.contains(&"yb-b-4"), "{hosts:?}");
    assert!(
        inv.yugabyte.nodes.iter().all(|n| n.name != "yb-b-4"),
        "the inventory does not list it"
    );
    let rr = ts.iter().find(|t| t.host == "yb-rr-1").unwrap();
    assert!(!rr.alive, "a stale read replica is DEAD: {rr:?}");
    let (_, raw) = master_get(&sb, "yb-b-2", "/api/v1/tablet-servers").await;
    assert!(
        raw[waymark_sandbox::yb::READ_REPLICA_PLACEMENT]["yb-rr-1:9000"].is_object(),
        "{raw}"
    );
    let (_, masters) = master_get(&sb, "yb-b-2", "/api/v1/masters").await;
    let down = masters["masters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["registration"]["private_rpc_addresses"][0]["host"] == "yb-a-1")
        .unwrap();
    assert!(down.get("error").is_some(), "{down}");
    let got = invariants(dir.path());
    assert_eq!(got.max_masters_down, 1, "{got:?}");
    assert_eq!(
        got.max_tservers_down, 0,
        "a read replica is not a primary tserver: {got:?}"
    );

    // The slow node is still bootstrapping long after a normal one is ready.
    on(
        &inv,
        "yb-b-3",
        "sudo systemctl --no-block restart yb-tserver",
    )
    .await;
    on(
        &inv,
        "yb-a-3",
        "sudo systemctl --no-block restart yb-tserver",
    )
    .await;
    let ready = |node: &'static str| {
        let inv = inv.clone();
        async move {
            on(
                &inv,
                node,
                &format!("yb-ts-cli --server_address={node}:9100 is_server_ready"),
            )
            .await
            .exit_status
                == 0
        }
    };
    let mut rounds = 0;
    while !ready("yb-a-3").await {
        rounds += 1;
        assert!(rounds < 5000, "yb-a-3 never ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!ready("yb-b-3").await, "yb-b-3 bootstraps 20 times slower");
}

/// The seed estate at real durations but without the lag: every stop, start-up, bootstrap and
/// election 1 ms, pods and health checks 5 ms.
fn no_lag() -> Spec {
    Spec {
        timing: Timing {
            tserver_stop_ms: 1,
            master_stop_ms: 1,
            startup_ms: 1,
            bootstrap_ms_per_tablet: 1,
            follower_lag_ms: 1,
            election_ms: 1,
            load_balancer_move_ms: 1,
            pod_ready_ms: 5,
            pod_termination_ms: 5,
            health_check_interval_ms: 5,
            ..Timing::default()
        },
        ..Spec::default().with_time_scale(1.0)
    }
}

/// Today's per-node gate sequence for the tservers (`yb-maintenance` v2, step 4), step by step
/// through its activities: record the `InvocationID`, restart, wait until the master says ALIVE,
/// the health gate with the inventory's settings. Stops once the monitor saw two tservers down.
async fn todays_tserver_gates(dir: &Path, inv: &Inventory) -> Invariants {
    let g = inv.gates.clone();
    for node in inv.yugabyte.nodes.iter().filter(|n| n.tserver) {
        let target = inv.ssh_target(node);
        let before = SystemdShow
            .run(
                activity_ctx(),
                ShowInput {
                    target: target.clone(),
                    unit: "yb-tserver".into(),
                    use_sudo: inv.ssh.use_sudo,
                },
            )
            .await
            .unwrap();
        SystemdRestart
            .run(
                activity_ctx(),
                RestartInput {
                    target,
                    unit: "yb-tserver".into(),
                    use_sudo: inv.ssh.use_sudo,
                    expected_invocation_id: before.invocation_id,
                    timeout_secs: g.node_timeout_secs,
                    poll_ms: g.poll_ms,
                },
            )
            .await
            .unwrap();
        WaitServerBack
            .run(
                activity_ctx(),
                ServerBackInput {
                    masters: inv.masters(),
                    host: node.address.clone(),
                    kind: ServerKind::TServer,
                    timeout_secs: g.node_timeout_secs,
                    poll_ms: g.poll_ms,
                },
            )
            .await
            .unwrap();
        let report = WaitHealthy
            .run(
                activity_ctx(),
                HealthInput {
                    masters: inv.masters(),
                    min_uptime_seconds: g.min_uptime_seconds,
                    timeout_secs: g.health_timeout_secs,
                    poll_ms: g.poll_ms,
                },
            )
            .await
            .unwrap();
        assert!(report.passed, "today's gate passed for {}", node.name);
        if invariants(dir).max_tservers_down >= 2 {
            break;
        }
    }
    invariants(dir)
}

/// The proof (issue 11): today's per-node gate, run against a sandbox whose lag is many poll
/// intervals long (time scale 0.1: a restarted tserver heartbeats 0.8 s after the restart began
/// and bootstraps 2.4 s more; the gates poll every 150 ms), passes on data from before the
/// restart (the master still says ALIVE with the old uptime) or on an uptime of one second, and
/// the next tserver is stopped while the previous one still bootstraps: the monitor records two
/// tservers down at once. (The `yb-maintenance` v2 binary, run end to end against this sandbox,
/// showed the same; part 2 of the issue replaces the workflow's gates, so the proof drives the
/// old sequence through the activities.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn todays_per_node_gate_lets_two_tservers_be_down_at_once_on_a_lagging_cluster() {
    let (dir, _sb, inv) = lagging(0.1).await;
    assert_eq!(invariants(dir.path()).max_tservers_down, 0);
    let got = todays_tserver_gates(dir.path(), &inv).await;
    assert!(got.max_tservers_down >= 2, "{got:?}");
    let at = got.max_tservers_down_at.clone().unwrap();
    assert!(at.what.contains(", "), "two named tservers: {at:?}");
    assert!(
        got.violations
            .iter()
            .any(|v| v.what.contains("yb-tservers down at once")),
        "{got:?}"
    );
}

/// Its control: the same gate sequence on a sandbox without the lag never has two down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn todays_per_node_gate_without_the_lag_never_has_two_tservers_down() {
    let dir = temp_dir();
    let sb = Sandbox::start(dir.path(), &no_lag())
        .await
        .expect("sandbox starts");
    waymark_workflows::sandbox::write_inventory(dir.path(), sb.description()).unwrap();
    let inv = Inventory::load(&dir.path().join("inventory.toml")).unwrap();
    let got = todays_tserver_gates(dir.path(), &inv).await;
    assert_eq!(got.max_tservers_down, 1, "{got:?}");
}

/// A restart issued before a crash may still be stopping the recorded process when the restart
/// step is retried (a `--no-block` restart returns during the graceful stop, and the process that
/// issued it can die then). The retry waits for the restart in flight instead of restarting the
/// unit a second time. Found by the SIGKILL torture at the sandbox's default time scale: a
/// yb-tserver restarted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_retried_while_the_first_still_stops_the_unit_restarts_it_once() {
    let (dir, _sb, inv) = lagging(0.2).await;
    let node = inv
        .yugabyte
        .nodes
        .iter()
        .find(|n| n.name == "yb-a-2")
        .expect("yb-a-2");
    let target = inv.ssh_target(node);
    let before = SystemdShow
        .run(
            activity_ctx(),
            ShowInput {
                target: target.clone(),
                unit: "yb-tserver".into(),
                use_sudo: true,
            },
        )
        .await
        .unwrap();
    // The attempt before the crash.
    let out = on(
        &inv,
        "yb-a-2",
        "sudo systemctl --no-block restart yb-tserver",
    )
    .await;
    assert_eq!(out.exit_status, 0, "{out:?}");
    // The retried attempt, while the recorded process is still stopping.
    let retried = SystemdRestart
        .run(
            activity_ctx(),
            RestartInput {
                target,
                unit: "yb-tserver".into(),
                use_sudo: true,
                expected_invocation_id: before.invocation_id.clone(),
                timeout_secs: 60,
                poll_ms: 20,
            },
        )
        .await
        .unwrap();
    assert!(!retried.restarted, "{retried:?}");
    assert_ne!(retried.invocation_id_after, before.invocation_id);
    let restarts = waymark_sandbox::read_effects(dir.path())
        .iter()
        .filter(|e| e.target == "yb-a-2/yb-tserver" && e.action == "restart")
        .count();
    assert_eq!(restarts, 1, "the unit was restarted once");
}

// ---- issue 13: the sandbox on simulated time, and every fault kind of every system ----

/// The simulated epoch of the paused-time tests.
fn epoch() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339("2026-03-01T02:00:00Z")
        .expect("epoch")
        .with_timezone(&chrono::Utc)
}

/// A sandbox at real durations (time scale 1.0) on a simulated clock, in memory, seeded, in a
/// temp dir; and its inventory. Call it on a paused runtime.
async fn simulated(seed: u64) -> (tempfile::TempDir, Sandbox, Inventory) {
    let dir = temp_dir();
    let options = Options {
        clock: Clock::simulated(epoch()),
        seed: Some(seed),
        in_memory: true,
        tick_ms: Some(100),
    };
    let sb = Sandbox::start_with(dir.path(), &Spec::default().with_time_scale(1.0), &options)
        .await
        .expect("sandbox starts");
    waymark_workflows::sandbox::write_inventory(dir.path(), sb.description()).unwrap();
    let inv = Inventory::load(&dir.path().join("inventory.toml")).expect("sandbox inventory");
    (dir, sb, inv)
}

/// Simulated seconds since `since`.
fn simulated_secs(since: tokio::time::Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

/// A stopped tserver at real durations on paused time: the leader master keeps it ALIVE with a
/// heartbeat age that grows with simulated time, and calls it DEAD only after 60 s without a
/// heartbeat; the in-memory sandbox writes no state, effect or monitor file, yet answers both
/// from memory.
#[tokio::test(start_paused = true)]
async fn on_paused_time_a_stopped_tserver_ages_alive_then_is_dead_after_60_simulated_seconds() {
    let wall = std::time::Instant::now();
    let (dir, sb, inv) = simulated(7).await;
    let stop = tokio::time::Instant::now();
    // Blocks for the graceful stop (5 s, simulated); heartbeats stop when it begins.
    let out = on(&inv, "yb-a-2", "sudo systemctl stop yb-tserver").await;
    assert_eq!(out.exit_status, 0, "{out:?}");
    assert!(
        simulated_secs(stop) >= 5.0,
        "the stop blocked for the graceful stop"
    );
    let (alive, first_hb, uptime) = tserver_entry(&inv, "yb-a-2").await.expect("listed");
    assert!(alive, "ALIVE right after the stop");
    assert!(uptime >= 3600, "with the old process's uptime ({uptime} s)");
    assert!(
        first_hb >= 5.0,
        "heartbeat as old as the stop: {first_hb} s"
    );
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (alive, hb, _) = tserver_entry(&inv, "yb-a-2").await.expect("listed");
    assert!(alive, "still ALIVE 25 s after the stop began");
    assert!(
        hb >= first_hb + 20.0,
        "the heartbeat age grows with simulated time: {first_hb} s, then {hb} s"
    );
    let mut last = (alive, hb);
    while last.0 {
        assert!(
            simulated_secs(stop) < 120.0,
            "the master never marked yb-a-2 DEAD: {last:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (alive, hb, _) = tserver_entry(&inv, "yb-a-2").await.expect("listed");
        last = (alive, hb);
    }
    let dead_after = simulated_secs(stop);
    assert!(
        (60.0..62.0).contains(&dead_after),
        "DEAD once 60 s passed without a heartbeat, not before: {dead_after} s"
    );
    assert!(last.1 >= 60.0, "{last:?}");
    let health = inv.masters().health(1).await.expect("health");
    assert_eq!(health.dead_nodes.len(), 1, "{health:?}");
    // In memory: the monitor and the effects answer, no file is written.
    let invariants = sb.shared().invariants();
    assert_eq!(invariants.max_tservers_down, 1, "{invariants:?}");
    assert_eq!(invariants.now.tservers_down, ["yb-a-2"], "{invariants:?}");
    let effects = sb.shared().effects();
    assert!(
        effects
            .iter()
            .any(|e| e.target == "yb-a-2/yb-tserver" && e.action == "stop"),
        "{effects:?}"
    );
    let stamped = effects[0].time.timestamp_millis() - epoch().timestamp_millis();
    assert!(
        (0..1_000).contains(&stamped),
        "effects are stamped on the simulated clock (the stop began at its start): {effects:?}"
    );
    for file in [
        "state.json",
        "effects.jsonl",
        "invariants.json",
        "faults.json",
    ] {
        assert!(
            !dir.path().join(file).exists(),
            "{file} written in memory mode"
        );
    }
    eprintln!(
        "a tserver DEAD after {dead_after:.1} s simulated, in {:?} of wall time",
        wall.elapsed()
    );
}

/// What the client of a request saw.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    /// The connection was reset (RST), nothing answered.
    Reset,
    /// Closed without a byte of answer.
    Closed,
    /// No answer within the client's timeout.
    Silent,
    /// Some bytes, then the connection ended: an incomplete HTTP answer.
    Cut(usize),
    /// A complete answer: status and body.
    Answer(u16, String),
}

/// The raw HTTP client's timeout (simulated).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// One HTTP/1.1 request, classified by what came back (a timeout of [`CLIENT_TIMEOUT`]).
async fn raw_http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> Seen {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Length: {}\r\n",
            body.len()
        );
        if method == "PATCH" {
            req.push_str("Content-Type: application/merge-patch+json\r\n");
        } else if method == "POST" {
            req.push_str(
                "Content-Type: application/x-www-form-urlencoded\r\nAuthorization: \
                 AWS4-HMAC-SHA256 Credential=AKIDTEST/20260101/us-east-1/elasticloadbalancing/\
                 aws4_request, SignedHeaders=host, Signature=0\r\n",
            );
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).await.expect("send");
        let mut raw = Vec::new();
        match s.read_to_end(&mut raw).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && raw.is_empty() => {
                Seen::Reset
            }
            Err(e) => panic!(
                "{method} {path}: read failed after {} bytes: {e}",
                raw.len()
            ),
            Ok(_) if raw.is_empty() => Seen::Closed,
            Ok(_) => {
                let text = String::from_utf8_lossy(&raw).into_owned();
                let Some((head, rest)) = text.split_once("\r\n\r\n") else {
                    return Seen::Cut(raw.len());
                };
                let lower = head.to_ascii_lowercase();
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                let length = lower
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if lower.contains("transfer-encoding: chunked") {
                    if !rest.ends_with("0\r\n\r\n") {
                        return Seen::Cut(raw.len());
                    }
                    return Seen::Answer(status, dechunk(rest));
                }
                match length {
                    Some(n) if rest.len() < n => Seen::Cut(raw.len()),
                    _ => Seen::Answer(status, rest.to_owned()),
                }
            }
        }
    };
    tokio::time::timeout(CLIENT_TIMEOUT, exchange)
        .await
        .unwrap_or(Seen::Silent)
}

/// One probe of a system: what its client saw, and how long it took (simulated).
#[derive(Debug)]
struct Probe {
    seen: Seen,
    took: Duration,
    /// The client's own timeout for what the fault delays (the SSH probe's: to connect, or the
    /// command's for `yb-admin`).
    timeout: Duration,
}

/// What a client sees of one request to `system` (the requests the faults below match).
async fn probe(sb: &Sandbox, inv: &Inventory, system: &str) -> Probe {
    let start = tokio::time::Instant::now();
    let mut timeout = CLIENT_TIMEOUT;
    let seen = match system {
        "k8s" => {
            raw_http(
                sb.endpoints().k8s,
                "GET",
                "/apis/apps/v1/namespaces/prod/deployments/fp",
                "",
            )
            .await
        }
        "yb" => {
            raw_http(
                sb.endpoints().yb_masters["yb-a-1"],
                "GET",
                "/api/v1/tablet-servers",
                "",
            )
            .await
        }
        "elb" => {
            raw_http(
                sb.endpoints().elb,
                "POST",
                "/",
                "Version=2015-12-01&Action=DescribeLoadBalancers",
            )
            .await
        }
        "ssh" | "yb-admin" => {
            let command = if system == "ssh" {
                "systemctl is-active yb-tserver".to_owned()
            } else {
                format!(
                    "'/home/yugabyte/bin/yb-admin' -master_addresses {} list_all_masters",
                    inv.master_rpc().join(",")
                )
            };
            let node = &inv
                .yugabyte
                .nodes
                .iter()
                .find(|n| n.name == "yb-a-1")
                .expect("yb-a-1");
            let target = inv.ssh_target(node);
            timeout = Duration::from_millis(if system == "ssh" {
                target.connect_timeout_ms
            } else {
                target.command_timeout_ms
            });
            match ssh::run(&target, &command).await {
                // An SSH answer: the exit status as the status, stdout and stderr as the body.
                Ok(out) => Seen::Answer(
                    u16::try_from(out.exit_status).unwrap_or(u16::MAX),
                    format!("{}{}", out.stdout, out.stderr),
                ),
                Err(ssh::Error::ConnectTimeout { .. } | ssh::Error::CommandTimeout { .. }) => {
                    Seen::Silent
                }
                Err(_) => Seen::Closed,
            }
        }
        other => panic!("no probe for system {other}"),
    };
    Probe {
        seen,
        took: start.elapsed(),
        timeout,
    }
}

/// The request text each system's probe is matched by.
fn probe_matching(system: &str) -> &'static str {
    match system {
        "k8s" => "GET prod/fp",
        "yb" => "GET /api/v1/tablet-servers",
        "elb" => "DescribeLoadBalancers",
        "ssh" => "yb-a-1",
        _ => "list_all_masters",
    }
}

/// Whether `probe` is a normal answer of `system`.
fn normal(system: &str, probe: &Probe) -> bool {
    match (&probe.seen, system) {
        (Seen::Answer(200, body), "k8s") => body.contains("\"kind\":\"Deployment\""),
        (Seen::Answer(200, body), "yb") => body.contains("\"status\":\"ALIVE\""),
        (Seen::Answer(200, body), "elb") => body.contains("<DescribeLoadBalancersResponse"),
        (Seen::Answer(0, body), "ssh") => body == "active\n",
        (Seen::Answer(0, body), "yb-admin") => body.matches(":7100").count() == 3,
        _ => false,
    }
}

/// Whether `probe` shows fault `kind` of `system` as its client would see it.
fn shows(system: &str, kind: &FaultKind, probe: &Probe) -> bool {
    let ssh_like = system == "ssh" || system == "yb-admin";
    match kind {
        FaultKind::Refused | FaultKind::Cut if ssh_like => probe.seen == Seen::Closed,
        FaultKind::Refused => probe.seen == Seen::Reset,
        // Silent until the client's own timeout.
        FaultKind::Timeout => probe.seen == Seen::Silent && probe.took >= probe.timeout,
        FaultKind::Status(code) => matches!(&probe.seen, Seen::Answer(c, _) if c == code),
        FaultKind::Exit(code, stderr) => {
            probe.seen == Seen::Answer(u16::try_from(*code).unwrap_or(0), stderr.clone())
        }
        FaultKind::Throttle => match (system, &probe.seen) {
            ("k8s", Seen::Answer(429, body)) => body.contains("TooManyRequests"),
            ("elb", Seen::Answer(400, body)) => body.contains("<Code>Throttling</Code>"),
            ("yb", Seen::Answer(503, _)) | ("ssh", Seen::Closed) => true,
            ("yb-admin", Seen::Answer(1, body)) => body.contains("Service unavailable"),
            _ => false,
        },
        FaultKind::Cut => matches!(probe.seen, Seen::Cut(n) if n > 0),
        FaultKind::WrongAnswer if ssh_like => {
            matches!(&probe.seen, Seen::Answer(0, _)) && !normal(system, probe)
        }
        FaultKind::WrongAnswer => {
            matches!(&probe.seen, Seen::Answer(200, body) if body.starts_with("<html>"))
        }
        FaultKind::Delay(ms) => normal(system, probe) && probe.took >= Duration::from_millis(*ms),
        FaultKind::Drop => matches!(probe.seen, Seen::Closed | Seen::Reset),
    }
}

/// Every fault kind of the catalogue, for every system, on paused time: the client sees it
/// (refused, timeout, 5xx or a failed command, throttle, cut mid-answer, wrong answer, slow)
/// exactly `k` times for a transient fault of `k`, then the normal answer again; a persistent
/// fault keeps showing.
#[tokio::test(start_paused = true)]
async fn every_fault_kind_of_every_system_shows_to_its_client_and_a_transient_one_clears_after_k() {
    let (_dir, sb, inv) = simulated(11).await;
    for system in waymark_sandbox::faults::SYSTEMS {
        let first = probe(&sb, &inv, system).await;
        assert!(
            normal(system, &first),
            "{system} without a fault: {first:?}"
        );
    }
    let mut shown = Vec::new();
    for (system, kind) in waymark_sandbox::catalogue() {
        // Transient: k = 2.
        sb.shared().set_faults(Faults {
            rules: vec![Fault {
                system: system.clone(),
                matching: probe_matching(&system).into(),
                kind: kind.clone(),
                remaining: Some(2),
            }],
        });
        for attempt in 1..=2 {
            let p = probe(&sb, &inv, &system).await;
            assert!(
                shows(&system, &kind, &p),
                "{system} {kind:?}, attempt {attempt} of 2: the client saw {p:?}"
            );
            if !kind.carried_out() {
                assert!(!normal(&system, &p), "{system} {kind:?}: {p:?}");
            }
        }
        let after = probe(&sb, &inv, &system).await;
        assert!(
            normal(&system, &after) && after.took < Duration::from_millis(500),
            "{system} {kind:?} cleared after 2: {after:?}"
        );
        shown.push(format!("{system}:{}", kind.name()));
    }
    // Persistent: still there after many requests.
    sb.shared().set_faults(Faults {
        rules: vec![Fault {
            system: "k8s".into(),
            matching: probe_matching("k8s").into(),
            kind: FaultKind::Status(500),
            remaining: None,
        }],
    });
    for _ in 0..5 {
        let p = probe(&sb, &inv, "k8s").await;
        assert!(shows("k8s", &FaultKind::Status(500), &p), "{p:?}");
    }
    assert_eq!(shown.len(), 35, "{shown:?}");
    eprintln!("faults shown: {}", shown.join(" "));
}

/// A cut answer still carries the request out (the effect happens, the answer is lost), for a
/// Kubernetes scale and for a `systemctl restart` over SSH; a refused one does not.
#[tokio::test(start_paused = true)]
async fn a_cut_answer_carries_the_request_out_a_refused_one_does_not() {
    let (_dir, sb, inv) = simulated(3).await;
    let k8s = sb.endpoints().k8s;
    let scale = |n: u32| async move {
        let body = format!("{{\"spec\":{{\"replicas\":{n}}}}}");
        raw_http(
            k8s,
            "PATCH",
            "/apis/apps/v1/namespaces/prod/deployments/fp/scale",
            &body,
        )
        .await
    };
    let fault = |system: &str, matching: &str, kind: FaultKind| Faults {
        rules: vec![Fault {
            system: system.into(),
            matching: matching.into(),
            kind,
            remaining: Some(1),
        }],
    };
    let scales = || {
        sb.shared()
            .effects()
            .iter()
            .filter(|e| e.system == "k8s" && e.target == "prod/fp")
            .count()
    };
    sb.shared()
        .set_faults(fault("k8s", "PATCH prod/fp/scale", FaultKind::Refused));
    assert_eq!(scale(4).await, Seen::Reset);
    assert_eq!(scales(), 0, "refused: not carried out");
    sb.shared()
        .set_faults(fault("k8s", "PATCH prod/fp/scale", FaultKind::Cut));
    assert!(matches!(scale(4).await, Seen::Cut(_)));
    assert_eq!(scales(), 1, "cut: carried out, {:?}", sb.shared().effects());
    let replicas = sb
        .shared()
        .read(|st| st.k8s.deployments["prod/fp"].replicas);
    assert_eq!(replicas, 4);

    let node = inv
        .yugabyte
        .nodes
        .iter()
        .find(|n| n.name == "yb-a-3")
        .expect("yb-a-3");
    let restarts = || {
        sb.shared()
            .effects()
            .iter()
            .filter(|e| e.target == "yb-a-3/yb-tserver" && e.action == "restart")
            .count()
    };
    sb.shared().set_faults(fault(
        "ssh",
        "systemctl restart yb-tserver",
        FaultKind::Refused,
    ));
    let r = ssh::run(&inv.ssh_target(node), "sudo systemctl restart yb-tserver").await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(restarts(), 0, "refused: not carried out");
    sb.shared()
        .set_faults(fault("ssh", "systemctl restart yb-tserver", FaultKind::Cut));
    let r = ssh::run(&inv.ssh_target(node), "sudo systemctl restart yb-tserver").await;
    assert!(r.is_err(), "the answer is lost: {r:?}");
    assert_eq!(restarts(), 1, "cut: carried out");
}

/// The same seed and the same calls at the same simulated times give the same answers (the
/// `ELBv2` request ids included) and the same effects, timestamps and all.
#[tokio::test(start_paused = true)]
async fn the_same_seed_and_calls_give_the_same_answers_and_effects() {
    async fn session(seed: u64) -> (Vec<Seen>, Vec<waymark_sandbox::Effect>) {
        let (_dir, sb, inv) = simulated(seed).await;
        let mut answers = vec![probe(&sb, &inv, "elb").await.seen];
        let out = on(&inv, "yb-b-3", "sudo systemctl restart yb-tserver").await;
        answers.push(Seen::Answer(0, format!("{out:?}")));
        tokio::time::sleep(Duration::from_secs(30)).await;
        answers.push(probe(&sb, &inv, "yb").await.seen);
        answers.push(probe(&sb, &inv, "elb").await.seen);
        let effects = sb.shared().effects();
        sb.stop();
        (answers, effects)
    }
    let one = session(42).await;
    let two = session(42).await;
    let three = session(43).await;
    assert_eq!(one.0, two.0, "same seed, same answers");
    assert_eq!(one.1.len(), 1, "one restart: {:?}", one.1);
    assert_eq!(one.1, two.1, "same effects at the same simulated times");
    assert_ne!(
        one.0[0], three.0[0],
        "another seed, other ELBv2 request ids"
    );
}
