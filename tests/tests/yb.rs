//! `YugabyteDB` activities against the sandbox's yb-masters: leader, tservers, health gate,
//! a restarted server coming back, a leader change, faults.

use std::time::Duration;

use waymark_activities::yb::{
    self, FindLeader, HealthCheck, HealthInput, ListTServers, Masters, ServerBackInput, ServerKind,
    WaitHealthy, WaitServerBack,
};
use waymark_engine::Activity;
use waymark_sandbox::yb::Kind;
use waymark_sandbox::{Fault, FaultKind, Faults};

use crate::util::{activity_ctx, closed_port, sandbox, wait_until};

fn masters(sb: &waymark_sandbox::Sandbox) -> Masters {
    Masters {
        http: sb
            .endpoints()
            .yb_masters
            .values()
            .map(ToString::to_string)
            .collect(),
        request_timeout_ms: Some(1000),
    }
}

fn master_node(sb: &waymark_sandbox::Sandbox, addr: &str) -> String {
    sb.endpoints()
        .yb_masters
        .iter()
        .find(|(_, a)| a.to_string() == addr)
        .map(|(n, _)| n.clone())
        .unwrap()
}

fn health(m: &Masters) -> HealthInput {
    HealthInput {
        masters: m.clone(),
        min_uptime_seconds: 0,
        timeout_secs: 30,
        poll_ms: 20,
    }
}

#[tokio::test]
async fn healthy_cluster_passes_the_gate() {
    let (_dir, sb) = sandbox(10).await;
    let m = masters(&sb);
    let ts = ListTServers.run(activity_ctx(), m.clone()).await.unwrap();
    assert_eq!(ts.len(), 6);
    assert!(ts.iter().all(|t| t.alive && t.uptime_seconds >= 3600));
    let report = HealthCheck
        .run(
            activity_ctx(),
            HealthInput {
                min_uptime_seconds: 60,
                ..health(&m)
            },
        )
        .await
        .unwrap();
    assert!(report.passed, "{:?}", report.problems);
}

#[tokio::test]
async fn restarted_tserver_is_dead_then_back_and_the_gate_waits_for_replication() {
    let (_dir, sb) = sandbox(4).await;
    let m = masters(&sb);
    // A real master reports a stopped tserver DEAD only once its last heartbeat is older than
    // the unresponsive timeout (issue 11): stop it, wait for that, then start it again.
    let out = waymark_sandbox::yb::exec(sb.shared(), "yb-a-2", "sudo systemctl stop yb-tserver");
    assert_eq!(out.exit, 0, "{out:?}");
    wait_until(
        Duration::from_secs(60),
        "the leader master's view to mark yb-a-2 DEAD",
        || {
            sb.shared().read(|st| {
                let now = chrono::Utc::now().timestamp_millis();
                st.yb
                    .server("yb-a-2", Kind::TServer)
                    .is_some_and(|t| !t.reported_alive(now, &st.yb.timing))
            })
        },
    )
    .await;
    assert!(
        ListTServers
            .run(activity_ctx(), m.clone())
            .await
            .unwrap()
            .iter()
            .any(|t| t.host == "yb-a-2" && !t.alive),
        "the master API reports yb-a-2 DEAD"
    );
    let report = HealthCheck.run(activity_ctx(), health(&m)).await.unwrap();
    assert!(!report.passed);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("yb-a-2") && p.contains("DEAD")),
        "{:?}",
        report.problems
    );
    let out = waymark_sandbox::yb::exec(sb.shared(), "yb-a-2", "sudo systemctl start yb-tserver");
    assert_eq!(out.exit, 0, "{out:?}");
    let back = WaitServerBack
        .run(
            activity_ctx(),
            ServerBackInput {
                masters: m.clone(),
                host: "yb-a-2".into(),
                kind: ServerKind::TServer,
                timeout_secs: 30,
                poll_ms: 20,
            },
        )
        .await
        .unwrap();
    assert!(back.contains("ALIVE"), "{back}");
    let ctx = activity_ctx();
    let healthy = WaitHealthy.run(ctx.clone(), health(&m)).await.unwrap();
    assert!(healthy.passed);
    assert!(
        healthy.most_recent_uptime < 3600,
        "the restarted server's uptime counts"
    );
}

#[tokio::test]
async fn restarting_the_leader_master_moves_leadership() {
    let (_dir, sb) = sandbox(4).await;
    let m = masters(&sb);
    let leader = FindLeader.run(activity_ctx(), m.clone()).await.unwrap();
    let node = master_node(&sb, &leader);
    let out = waymark_sandbox::yb::exec(sb.shared(), &node, "systemctl restart yb-master");
    assert_eq!(out.exit, 0);
    let new_leader = FindLeader.run(activity_ctx(), m.clone()).await.unwrap();
    assert_ne!(
        new_leader, leader,
        "another master leads while {node} restarts"
    );
    let back = WaitServerBack
        .run(
            activity_ctx(),
            ServerBackInput {
                masters: m,
                host: node.clone(),
                kind: ServerKind::Master,
                timeout_secs: 30,
                poll_ms: 20,
            },
        )
        .await
        .unwrap();
    assert!(back.contains("FOLLOWER"), "{back}");
}

#[tokio::test]
async fn master_faults_are_retryable_and_named() {
    let (_dir, sb) = sandbox(10).await;
    let m = masters(&sb);
    sb.shared().set_faults(Faults {
        rules: vec![Fault {
            system: "yb".into(),
            matching: "health-check".into(),
            kind: FaultKind::Status(500),
            remaining: None,
        }],
    });
    let e = HealthCheck
        .run(activity_ctx(), health(&m))
        .await
        .unwrap_err();
    assert!(
        e.retryable && e.message.contains("yb-master") && e.message.contains("HTTP 500"),
        "{e}"
    );
    sb.shared().set_faults(Faults {
        rules: vec![Fault {
            system: "yb".into(),
            matching: "tablet-servers".into(),
            kind: FaultKind::Delay(3000),
            remaining: None,
        }],
    });
    let e = ListTServers.run(activity_ctx(), m).await.unwrap_err();
    assert!(e.retryable && e.message.contains("no answer within"), "{e}");
    let refused = Masters {
        http: vec![format!("127.0.0.1:{}", closed_port())],
        request_timeout_ms: Some(500),
    };
    let e = FindLeader.run(activity_ctx(), refused).await.unwrap_err();
    assert!(
        e.retryable && e.message.contains("check that the master runs"),
        "{e}"
    );
    let unknown = WaitServerBack
        .run(
            activity_ctx(),
            ServerBackInput {
                masters: masters(&sb),
                host: "yb-z-9".into(),
                kind: ServerKind::TServer,
                timeout_secs: 5,
                poll_ms: 20,
            },
        )
        .await;
    // The tablet-servers fault is still on: the wait keeps polling until its deadline, which is
    // final (issue 12: one deadline per wait, not one per retry).
    let e = unknown.unwrap_err();
    assert!(!e.retryable && e.message.contains("deadline"), "{e:?}");
}

#[test]
fn yb_admin_output_parses() {
    assert_eq!(
        yb::parse_load_move_completion("Percent complete = 66.67 : 4 remaining out of 12\n"),
        Some((66.67, 4, 12))
    );
    assert_eq!(yb::parse_is_idle("Idle = 1\n"), Some(true));
    assert_eq!(yb::parse_is_idle("Idle = 0\n"), Some(false));
    assert_eq!(yb::parse_is_idle("Error: timed out\n"), None);
}

/// issue 11: what the node gates read from `yb-admin`, the tserver's metrics and the master.
#[test]
fn node_gate_outputs_parse() {
    assert_eq!(
        yb::parse_leader_blacklist(
            "Config: \n{\"version\":3,\"leaderBlacklist\":{\"hosts\":[{\"host\":\"10.0.0.2\",\"port\":9100}]}}\n"
        ),
        Some(vec!["10.0.0.2:9100".to_owned()])
    );
    assert_eq!(
        yb::parse_leader_blacklist("{\"version\":1}"),
        Some(Vec::new())
    );
    assert_eq!(yb::parse_leader_blacklist("Error: timed out"), None);
    let metrics = "# TYPE follower_lag_ms gauge\n\
        follower_lag_ms{table_id=\"t\",tablet_id=\"a\"} 120 1700000000000\n\
        follower_lag_ms{table_id=\"t\",tablet_id=\"b\"} 4500 1700000000000\n\
        other_metric{x=\"y\"} 99999 1\n";
    assert_eq!(yb::parse_max_follower_lag_ms(metrics), 4500);
    assert_eq!(yb::parse_max_follower_lag_ms(""), 0);
    let ts = |host: &str, alive: bool, tablets: u64, leaders: u64| yb::TServer {
        host: host.into(),
        web: format!("{host}:9000"),
        alive,
        uptime_seconds: 10,
        time_since_hb_sec: 0.1,
        uuid: String::new(),
        zone: "A".into(),
        tablets,
        leaders,
    };
    assert_eq!(
        yb::unbalanced_leaders(&[
            ts("a", true, 6, 2),
            ts("b", true, 6, 2),
            ts("c", false, 6, 0)
        ]),
        None,
        "a DEAD server does not count"
    );
    let why = yb::unbalanced_leaders(&[ts("a", true, 6, 4), ts("b", true, 6, 0)]).unwrap();
    assert!(why.contains("tserver b leads none"), "{why}");
    assert_eq!(
        yb::unbalanced_leaders(&[
            ts("a", true, 6, 5),
            ts("b", true, 6, 1),
            ts("rr", true, 0, 0)
        ]),
        None,
        "how even the rest is, the load balancer judges; a server holding no tablet leads none"
    );
    // Every yb tool call carries the certificates when the cluster uses TLS, every value quoted.
    assert_eq!(
        yb::yb_admin_line(
            "/yb/bin/yb-admin",
            &["m1:7100".into(), "m2:7100".into()],
            Some("/opt/certs dir"),
            &["change_leader_blacklist", "ADD", "h1:9100"],
        ),
        "/yb/bin/yb-admin -master_addresses m1:7100,m2:7100 -certs_dir_name '/opt/certs dir' change_leader_blacklist ADD h1:9100"
    );
    assert_eq!(
        yb::yb_ts_cli_ready_line("/yb/bin/yb-ts-cli", Some("/c"), "h1"),
        "/yb/bin/yb-ts-cli -certs_dir_name /c '--server_address=h1:9100' is_server_ready"
    );
    assert_eq!(
        yb::yb_ts_cli_ready_line("/yb/bin/yb-ts-cli", None, "::1"),
        "/yb/bin/yb-ts-cli '--server_address=[::1]:9100' is_server_ready"
    );
}

/// issue 11, step 5: `Idle = 1` alone is not enough. With a tserver left on the leader blacklist
/// (a REMOVE that never ran), the load balancer is idle (it may move nothing onto that server)
/// while the server leads none of its tablets: one idle reading (the old gate) passes, the new
/// wait (consecutive readings, balanced leaders) does not, and says which server leads none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancer_wait_wants_balanced_leaders_not_one_idle_reading() {
    let (dir, _sb) = sandbox(10).await;
    let inv =
        waymark_workflows::Inventory::load(&dir.path().join("inventory.toml")).expect("inventory");
    let (node, admin) = inv.yb_admin().expect("a master node");
    let target = inv.ssh_target(node);
    let out = waymark_activities::ssh::run(
        &target,
        &admin.line(&["change_leader_blacklist", "ADD", "yb-a-2:9100"]),
    )
    .await
    .unwrap();
    assert_eq!(out.exit_status, 0, "{out:?}");
    let input = |idle_readings: u32, masters: Option<Masters>| yb::LoadBalancerInput {
        ssh: target.clone(),
        yb_admin: admin.yb_admin.clone(),
        master_rpc: admin.master_rpc.clone(),
        timeout_secs: 2,
        poll_ms: 20,
        certs_dir: None,
        idle_readings,
        masters,
    };
    // The old gate: one `Idle = 1` once the leaders have left yb-a-2.
    let old = yb::WaitLoadBalancer
        .run(activity_ctx(), input(1, None))
        .await
        .expect("one idle reading passes");
    assert!(old.contains("idle"), "{old}");
    let e = yb::WaitLoadBalancer
        .run(activity_ctx(), input(3, Some(inv.masters())))
        .await
        .expect_err("leaders are not balanced");
    assert!(
        !e.retryable,
        "a wait that reaches its deadline is final (issue 12): {e:?}"
    );
    assert!(
        e.message.contains("tserver yb-a-2 leads none"),
        "{}",
        e.message
    );
    // Back off the blacklist, the load balancer gives it leaders back and the wait passes.
    let out = waymark_activities::ssh::run(
        &target,
        &admin.line(&["change_leader_blacklist", "REMOVE", "yb-a-2:9100"]),
    )
    .await
    .unwrap();
    assert_eq!(out.exit_status, 0, "{out:?}");
    let done = yb::WaitLoadBalancer
        .run(
            activity_ctx(),
            yb::LoadBalancerInput {
                timeout_secs: 60,
                ..input(3, Some(inv.masters()))
            },
        )
        .await
        .expect("balanced");
    assert!(done.contains("3 consecutive readings"), "{done}");
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// issue 11, per node: right after a restart the master still reports the old process (ALIVE,
/// its old uptime), so "back" proves nothing; the new-process wait holds until the uptime is
/// younger than the restart, and even then the server bootstraps: only `is_server_ready` (and
/// the follower lag) says it serves. The sandbox's ground truth shows each stage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_process_then_ready_each_gate_sees_what_the_one_before_cannot() {
    // The graceful stop lasts 1 s, start-up 0.6 s, each tablet's bootstrap 0.8 s.
    let dir = crate::util::temp_dir();
    let sb = waymark_sandbox::Sandbox::start(
        dir.path(),
        &waymark_sandbox::Spec::default().with_time_scale(0.2),
    )
    .await
    .unwrap();
    waymark_workflows::sandbox::write_inventory(dir.path(), sb.description()).unwrap();
    let inv =
        waymark_workflows::Inventory::load(&dir.path().join("inventory.toml")).expect("inventory");
    let m = inv.masters();
    let node = inv
        .yugabyte
        .nodes
        .iter()
        .find(|n| n.name == "yb-a-3")
        .unwrap();
    // Bootstrap held back until the test lets it go (so no assertion below depends on timing).
    let slow = |factor: f64| waymark_sandbox::Scenario::SlowBootstrap {
        node: "yb-a-3".into(),
        factor,
    };
    sb.shared().apply(&slow(1e9)).unwrap();
    let restarted_at_ms = now_ms();
    let out = waymark_activities::ssh::run(
        &inv.ssh_target(node),
        "sudo systemctl restart yb-tserver --no-block",
    )
    .await
    .unwrap();
    assert_eq!(out.exit_status, 0, "{out:?}");
    let seen = m.tservers().await.unwrap();
    let t = seen.iter().find(|t| t.host == "yb-a-3").unwrap();
    assert!(
        t.alive && t.uptime_seconds > 60,
        "the master still reports the old process: {t:?}"
    );
    let back = WaitServerBack
        .run(
            activity_ctx(),
            ServerBackInput {
                masters: m.clone(),
                host: "yb-a-3".into(),
                kind: ServerKind::TServer,
                timeout_secs: 30,
                poll_ms: 10,
            },
        )
        .await
        .unwrap();
    assert!(
        back.contains("ALIVE"),
        "the old wait passes at once: {back}"
    );
    let new = yb::WaitNewProcess
        .run(
            activity_ctx(),
            yb::NewProcessInput {
                masters: m.clone(),
                host: "yb-a-3".into(),
                kind: ServerKind::TServer,
                restarted_at_ms,
                old_instance_seqno: 0,
                timeout_secs: 30,
                poll_ms: 10,
            },
        )
        .await
        .unwrap();
    assert!(new.contains("new process ALIVE"), "{new}");
    assert!(
        sb.shared()
            .read(|st| st.yb.tservers_down(now_ms()))
            .contains(&"yb-a-3".to_owned()),
        "the new process is up but still bootstraps its tablets"
    );
    sb.shared().apply(&slow(1.0)).unwrap();
    let ready = yb::WaitServerReady
        .run(
            activity_ctx(),
            yb::ServerReadyInput {
                ssh: inv.ssh_target(node),
                yb_ts_cli: inv.yb_ts_cli(),
                certs_dir: None,
                host: "yb-a-3".into(),
                max_follower_lag_ms: 2000,
                timeout_secs: 30,
                poll_ms: 10,
            },
        )
        .await
        .unwrap();
    assert!(ready.contains("0 tablets not running"), "{ready}");
    assert!(
        sb.shared()
            .read(|st| st.yb.tservers_down(now_ms()))
            .is_empty(),
        "ready means serving"
    );
}
