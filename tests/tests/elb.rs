//! `ELBv2` activities: one conformance suite run against a real `moto_server` (started here on a
//! free loopback port, its estate made by `tests/fixtures/moto_setup.py`) and against the
//! sandbox's `ELBv2` (its seed estate, and the same script's estate made through boto3); then
//! injected faults against the sandbox, and no secret in any output, error or sandbox file.
//!
//! The SDK gets static test credentials through `ElbClient::with_credentials` (no process-wide
//! environment variable: the tests run in parallel threads).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use waymark_activities::elb::{
    Credentials, DeregisterTarget, DeregisterTargetInput, ElbClient, ElbConnection, Error,
    ReadTrafficWeights, ReadTrafficWeightsInput, RegisterTarget, RegisterTargetInput,
    SetTrafficWeights, SetTrafficWeightsInput, TrafficSource, Weights,
};
use waymark_engine::{activity, Activity};
use waymark_sandbox::elb::target_group_name;
use waymark_sandbox::{Fault, FaultKind, Faults, Sandbox, Shared};

use crate::fixtures::moto::Moto;
use crate::util::{activity_ctx, closed_port, sandbox};

const ACCESS_KEY_ID: &str = "AKIAWAYMARKTEST0001";
/// The secret that must never show up anywhere.
const SECRET: &str = "waymark-test-secret-7f3c9a1e5b2d46808e1f";
const REGION: &str = "us-east-1";
/// The IP target the runbook registers.
const TARGET: &str = "10.20.2.14";

fn credentials() -> Credentials {
    Credentials::new(ACCESS_KEY_ID, SECRET, None, None, "waymark-tests")
}

async fn client(conn: &ElbConnection) -> ElbClient {
    ElbClient::with_credentials(conn, credentials())
        .await
        .expect("ELBv2 client")
}

fn conn(endpoint: &str) -> ElbConnection {
    ElbConnection::new(REGION, Some(endpoint.to_owned()))
}

/// The resources a suite works on.
#[derive(Clone, Debug, Deserialize)]
struct Arns {
    #[serde(rename = "target_group_a")]
    tg_a: String,
    #[serde(rename = "target_group_b")]
    tg_b: String,
    listener: String,
    rule: String,
}

impl Arns {
    fn weights(&self, a: i32, b: i32) -> BTreeMap<String, i32> {
        BTreeMap::from([(self.tg_a.clone(), a), (self.tg_b.clone(), b)])
    }
}

fn setup_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/moto_setup.py")
}

/// Runs `moto_setup.py` against `endpoint` (boto3 talks to it) and reads the ARNs it prints.
fn run_setup_script(endpoint: &str, extra: &[&str]) -> Arns {
    let out = Command::new("python3")
        .arg(setup_script())
        .arg(endpoint)
        .arg(REGION)
        .args(extra)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_DEFAULT_REGION", REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("python3 runs (moto[server] brings it with boto3)");
    assert!(
        out.status.success(),
        "moto_setup.py against {endpoint} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "moto_setup.py printed no ARNs ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn sandbox_arns(sb: &Sandbox) -> Arns {
    sb.shared().read(|e| {
        let listener = e
            .elb
            .listener_arn(waymark_sandbox::elb::LOAD_BALANCER)
            .expect("seed listener")
            .to_owned();
        Arns {
            tg_a: e
                .elb
                .target_group_arn(&target_group_name("A"))
                .expect("seed target group A")
                .to_owned(),
            tg_b: e
                .elb
                .target_group_arn(&target_group_name("B"))
                .expect("seed target group B")
                .to_owned(),
            rule: e
                .elb
                .rule_arn(&listener, waymark_sandbox::elb::RULE_PRIORITY)
                .expect("seed rule")
                .to_owned(),
            listener,
        }
    })
}

fn sandbox_endpoint(sb: &Sandbox) -> String {
    format!("http://{}", sb.endpoints().elb)
}

/// How many effects of `action` on `target` the sandbox recorded.
fn effects(shared: &Shared, action: &str, target: &str) -> usize {
    shared
        .effects()
        .iter()
        .filter(|e| e.system == "elb" && e.action == action && e.target == target)
        .count()
}

fn register_input(conn: &ElbConnection, tg: &str, target: &str) -> RegisterTargetInput {
    RegisterTargetInput {
        conn: conn.clone(),
        target_group_arn: tg.to_owned(),
        target_id: target.to_owned(),
        port: Some(5433),
        availability_zone: None,
        timeout_secs: 30,
        poll_ms: 20,
    }
}

fn fatal(e: Error) -> activity::Error {
    let e = activity::Error::from(e);
    assert!(
        !e.retryable,
        "expected a fatal error, got a retryable one: {e}"
    );
    e
}

fn retryable(e: Error) -> activity::Error {
    let e = activity::Error::from(e);
    assert!(
        e.retryable,
        "expected a retryable error, got a fatal one: {e}"
    );
    e
}

/// The conformance suite: what must hold against AWS-compatible `ELBv2` APIs. `effects_of` is
/// the sandbox's effect log (moto has none).
async fn conformance(conn: &ElbConnection, arns: &Arns, target: &str, effects_of: Option<&Shared>) {
    let c = client(conn).await;
    conform_targets(&c, conn, arns, target, effects_of).await;
    conform_weights(&c, conn, arns, effects_of).await;
    conform_not_found(&c, conn, arns, target).await;
}

/// Register and deregister: each effect once, then no-ops.
async fn conform_targets(
    c: &ElbClient,
    conn: &ElbConnection,
    arns: &Arns,
    target: &str,
    effects_of: Option<&Shared>,
) {
    let ctx = activity_ctx();
    // Register: once, then a no-op.
    let input = register_input(conn, &arns.tg_a, target);
    let first = RegisterTarget
        .run_with(c, &ctx, &input)
        .await
        .expect("register");
    assert_eq!(first.state, "healthy");
    assert!(
        !first.already,
        "first registration must call RegisterTargets"
    );
    let progress = ctx.last_progress().expect("register heartbeats");
    assert!(
        progress.contains(target) && progress.contains("healthy"),
        "{progress}"
    );
    let second = RegisterTarget
        .run_with(c, &ctx, &input)
        .await
        .expect("register again");
    assert!(
        second.already,
        "second registration must find the target registered"
    );
    assert_eq!(second.state, "healthy");
    if let Some(shared) = effects_of {
        assert_eq!(
            effects(shared, "register", &arns.tg_a),
            1,
            "exactly one RegisterTargets"
        );
    }

    // A compensation that keeps a healthy target leaves it registered.
    let keep = DeregisterTargetInput {
        keep_if_healthy: true,
        ..input.compensation()
    };
    let out = DeregisterTarget
        .run_with(c, &ctx, &keep)
        .await
        .expect("keep healthy");
    assert!(out.was_registered && out.kept, "{out:?}");

    // Deregister (the compensation): once, then a no-op.
    let undo = input.compensation();
    let out = DeregisterTarget
        .run_with(c, &ctx, &undo)
        .await
        .expect("deregister");
    assert!(out.was_registered);
    let out = DeregisterTarget
        .run_with(c, &ctx, &undo)
        .await
        .expect("deregister again");
    assert!(!out.was_registered, "second deregistration must be a no-op");
    if let Some(shared) = effects_of {
        assert_eq!(
            effects(shared, "deregister", &arns.tg_a),
            1,
            "exactly one DeregisterTargets"
        );
    }
    // A never registered target is not registered: deregistering it is a no-op.
    let never = DeregisterTargetInput {
        target_id: "10.20.1.99".into(),
        ..undo.clone()
    };
    let out = DeregisterTarget
        .run_with(c, &ctx, &never)
        .await
        .expect("deregister unknown");
    assert!(!out.was_registered);
}

/// Weights of the listener and of the rule: switch to zone A, no-op when equal, restore what
/// was read.
async fn conform_weights(
    c: &ElbClient,
    conn: &ElbConnection,
    arns: &Arns,
    effects_of: Option<&Shared>,
) {
    let ctx = activity_ctx();
    for (source, action) in [
        (
            TrafficSource::Listener(arns.listener.clone()),
            "modify-listener",
        ),
        (TrafficSource::Rule(arns.rule.clone()), "modify-rule"),
    ] {
        let modified = || effects_of.map(|s| effects(s, action, source_arn(&source)));
        let read = ReadTrafficWeightsInput {
            conn: conn.clone(),
            source: source.clone(),
        };
        let before = ReadTrafficWeights
            .run_with(c, &ctx, &read)
            .await
            .expect("read weights");
        assert_eq!(before.by_target_group, arns.weights(0, 100), "{source:?}");
        let modified_before = modified();

        let switch = SetTrafficWeightsInput {
            conn: conn.clone(),
            source: source.clone(),
            weights: arns.weights(100, 0),
        };
        let out = SetTrafficWeights
            .run_with(c, &ctx, &switch)
            .await
            .expect("set weights");
        assert!(out.changed);
        assert_eq!(out.before, before);
        assert_eq!(
            out.after.by_target_group,
            arns.weights(100, 0),
            "read back after the change"
        );
        let now = ReadTrafficWeights
            .run_with(c, &ctx, &read)
            .await
            .expect("read weights");
        assert_eq!(now.by_target_group, arns.weights(100, 0));
        assert_eq!(modified(), modified_before.map(|n| n + 1));

        let again = SetTrafficWeights
            .run_with(c, &ctx, &switch)
            .await
            .expect("set again");
        assert!(!again.changed, "equal weights must not call the API");
        assert_eq!(again.before.by_target_group, arns.weights(100, 0));
        assert_eq!(again.after, again.before);
        assert_eq!(
            modified(),
            modified_before.map(|n| n + 1),
            "no call when equal"
        );

        // The compensation restores the weights read before the change.
        let restore = SetTrafficWeightsInput {
            weights: before.by_target_group.clone(),
            ..switch.clone()
        };
        let out = SetTrafficWeights
            .run_with(c, &ctx, &restore)
            .await
            .expect("restore");
        assert!(out.changed);
        assert_eq!(out.after, before);
        let now = ReadTrafficWeights
            .run_with(c, &ctx, &read)
            .await
            .expect("read weights");
        assert_eq!(now, before);
    }
}

/// Unknown resources: fatal, naming `ELBv2` and the resource; nothing changes.
async fn conform_not_found(c: &ElbClient, conn: &ElbConnection, arns: &Arns, target: &str) {
    let ctx = activity_ctx();
    let gone_tg = format!("{}0", arns.tg_a);
    let e = RegisterTarget
        .run_with(c, &ctx, &register_input(conn, &gone_tg, target))
        .await
        .expect_err("unknown target group");
    let e = fatal(e);
    assert!(
        e.message.contains("ELBv2") && e.message.contains(&gone_tg) && e.message.contains(target),
        "{e}"
    );
    let gone_listener = TrafficSource::Listener(format!("{}0", arns.listener));
    let e = ReadTrafficWeights
        .run_with(
            c,
            &ctx,
            &ReadTrafficWeightsInput {
                conn: conn.clone(),
                source: gone_listener.clone(),
            },
        )
        .await
        .expect_err("unknown listener");
    let e = fatal(e);
    assert!(
        e.message.contains("ELBv2") && e.message.contains(source_arn(&gone_listener)),
        "{e}"
    );
    let set_gone = SetTrafficWeightsInput {
        conn: conn.clone(),
        source: TrafficSource::Listener(arns.listener.clone()),
        weights: BTreeMap::from([(gone_tg.clone(), 100), (arns.tg_b.clone(), 0)]),
    };
    let e = SetTrafficWeights
        .run_with(c, &ctx, &set_gone)
        .await
        .expect_err("unknown target group");
    let e = fatal(e);
    assert!(
        e.message.contains("ELBv2") && e.message.contains(&gone_tg),
        "{e}"
    );
    let weights = ReadTrafficWeights
        .run_with(
            c,
            &ctx,
            &ReadTrafficWeightsInput {
                conn: conn.clone(),
                source: TrafficSource::Listener(arns.listener.clone()),
            },
        )
        .await
        .expect("read weights");
    assert_eq!(
        weights.by_target_group,
        arns.weights(0, 100),
        "a refused change changes nothing"
    );
}

fn source_arn(s: &TrafficSource) -> &str {
    match s {
        TrafficSource::Listener(a) | TrafficSource::Rule(a) => a,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_moto() {
    let moto = Moto::start().await;
    let arns = run_setup_script(&moto.endpoint, &[]);
    conformance(&conn(&moto.endpoint), &arns, TARGET, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_sandbox_seed_estate() {
    let (_dir, sb) = sandbox(1).await;
    let arns = sandbox_arns(&sb);
    conformance(
        &conn(&sandbox_endpoint(&sb)),
        &arns,
        TARGET,
        Some(sb.shared()),
    )
    .await;
    sb.stop();
}

/// The sandbox answers boto3 as moto does: the fixture script builds its estate there too
/// (`CreateLoadBalancer`, `CreateTargetGroup`, `CreateListener`, `CreateRule` parsed by
/// botocore), and the suite holds on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_sandbox_estate_made_by_boto3() {
    let (_dir, sb) = sandbox(1).await;
    let endpoint = sandbox_endpoint(&sb);
    let script_endpoint = endpoint.clone();
    let arns = tokio::task::spawn_blocking(move || {
        run_setup_script(&script_endpoint, &["--no-ec2", "--prefix", "t-"])
    })
    .await
    .expect("setup script");
    assert!(
        arns.tg_a
            .contains("targetgroup/t-aws-useast1-prod-a-yb-ext-prod/"),
        "{arns:?}"
    );
    assert_eq!(effects(sb.shared(), "create-rule", &arns.rule), 1);
    conformance(&conn(&endpoint), &arns, "10.20.1.7", Some(sb.shared())).await;
    sb.stop();
}

/// The sandbox environment of one fault test.
struct FaultEnv {
    _dir: tempfile::TempDir,
    sb: Sandbox,
    conn: ElbConnection,
    client: ElbClient,
    arns: Arns,
}

async fn fault_env() -> FaultEnv {
    let (dir, sb) = sandbox(1).await;
    let conn = conn(&sandbox_endpoint(&sb));
    let client = client(&conn).await;
    let arns = sandbox_arns(&sb);
    FaultEnv {
        _dir: dir,
        sb,
        conn,
        client,
        arns,
    }
}

impl FaultEnv {
    fn fault(&self, matching: &str, kind: FaultKind, remaining: Option<u32>) {
        self.sb.shared().set_faults(Faults {
            rules: vec![Fault {
                system: "elb".into(),
                matching: matching.into(),
                kind,
                remaining,
            }],
        });
    }

    fn read_input(&self) -> ReadTrafficWeightsInput {
        ReadTrafficWeightsInput {
            conn: self.conn.clone(),
            source: TrafficSource::Listener(self.arns.listener.clone()),
        }
    }

    async fn read(&self) -> Result<Weights, Error> {
        ReadTrafficWeights
            .run_with(&self.client, &activity_ctx(), &self.read_input())
            .await
    }

    async fn register(&self) -> Result<waymark_activities::elb::RegisterTargetOutput, Error> {
        RegisterTarget
            .run_with(
                &self.client,
                &activity_ctx(),
                &register_input(&self.conn, &self.arns.tg_a, TARGET),
            )
            .await
    }
}

#[tokio::test]
async fn server_errors_are_retryable_and_name_elbv2_and_the_target() {
    let env = fault_env().await;
    for (status, code) in [(500, "InternalFailure"), (503, "ServiceUnavailable")] {
        env.fault("DescribeTargetHealth", FaultKind::Status(status), None);
        let e = retryable(env.register().await.expect_err("5xx"));
        assert!(e.message.contains("ELBv2"), "{e}");
        assert!(
            e.message.contains(TARGET) && e.message.contains(&env.arns.tg_a),
            "{e}"
        );
        assert!(
            e.message.contains(&format!("HTTP {status}")) && e.message.contains(code),
            "{e}"
        );
    }
    env.fault("DescribeListeners", FaultKind::Status(500), None);
    let e = retryable(env.read().await.expect_err("5xx"));
    assert!(
        e.message.contains("ELBv2") && e.message.contains(&env.arns.listener),
        "{e}"
    );
    assert_eq!(
        effects(env.sb.shared(), "register", &env.arns.tg_a),
        0,
        "nothing registered"
    );
    env.sb.stop();
}

#[tokio::test]
async fn throttling_is_retryable() {
    let env = fault_env().await;
    env.fault("RegisterTargets", FaultKind::Throttle, None);
    let e = retryable(env.register().await.expect_err("throttled"));
    assert!(
        e.message.contains("ELBv2") && e.message.contains("Throttling"),
        "{e}"
    );
    assert!(
        e.message.contains(TARGET) && e.message.contains(&env.arns.tg_a),
        "{e}"
    );
    env.sb.stop();
}

#[tokio::test]
async fn a_fault_that_passes_lets_the_next_attempt_succeed() {
    let env = fault_env().await;
    env.fault("ModifyListener", FaultKind::Status(500), Some(1));
    let input = SetTrafficWeightsInput {
        conn: env.conn.clone(),
        source: TrafficSource::Listener(env.arns.listener.clone()),
        weights: env.arns.weights(100, 0),
    };
    let ctx = activity_ctx();
    retryable(
        SetTrafficWeights
            .run_with(&env.client, &ctx, &input)
            .await
            .expect_err("first attempt"),
    );
    let out = SetTrafficWeights
        .run_with(&env.client, &ctx, &input)
        .await
        .expect("second attempt");
    assert!(out.changed);
    assert_eq!(out.after.by_target_group, env.arns.weights(100, 0));
    assert_eq!(
        effects(env.sb.shared(), "modify-listener", &env.arns.listener),
        1
    );
    env.sb.stop();
}

#[tokio::test]
async fn connection_refused_is_retryable() {
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let conn = conn(&endpoint);
    let c = client(&conn).await;
    let input = ReadTrafficWeightsInput {
        conn: conn.clone(),
        source: TrafficSource::Listener(
            "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/net/yb-ext/1/2".into(),
        ),
    };
    let e = retryable(
        ReadTrafficWeights
            .run_with(&c, &activity_ctx(), &input)
            .await
            .expect_err("refused"),
    );
    assert!(
        e.message.contains("ELBv2") && e.message.contains(&endpoint),
        "{e}"
    );
    assert!(e.message.contains("listener/net/yb-ext/1/2"), "{e}");
}

#[tokio::test]
async fn a_slow_answer_times_out_retryably() {
    let mut env = fault_env().await;
    env.conn.call_timeout_ms = Some(300);
    env.client = client(&env.conn).await;
    env.fault("DescribeListeners", FaultKind::Delay(10_000), None);
    let e = retryable(env.read().await.expect_err("timeout"));
    assert!(
        e.message.contains("ELBv2") && e.message.contains("no answer"),
        "{e}"
    );
    assert!(e.message.contains(&env.arns.listener), "{e}");
    env.sb.stop();
}

#[tokio::test]
async fn a_dropped_connection_is_retryable() {
    let env = fault_env().await;
    env.fault("DescribeListeners", FaultKind::Drop, None);
    let e = retryable(env.read().await.expect_err("dropped"));
    assert!(
        e.message.contains("ELBv2") && e.message.contains(&env.arns.listener),
        "{e}"
    );
    env.sb.stop();
}

#[tokio::test]
async fn a_target_that_stays_unhealthy_fails_without_retry_with_the_reason() {
    let env = fault_env().await;
    env.sb.shared().mutate(|st| {
        st.elb.failing_targets.insert(TARGET.to_owned());
    });
    let input = RegisterTargetInput {
        timeout_secs: 1,
        poll_ms: 50,
        ..register_input(&env.conn, &env.arns.tg_a, TARGET)
    };
    let ctx = activity_ctx();
    let e = fatal(
        RegisterTarget
            .run_with(&env.client, &ctx, &input)
            .await
            .expect_err("unhealthy"),
    );
    assert!(
        e.message.contains("ELBv2") && e.message.contains(TARGET),
        "{e}"
    );
    assert!(
        e.message.contains("unhealthy") && e.message.contains("Target.FailedHealthChecks"),
        "{e}"
    );
    let progress = ctx.last_progress().expect("heartbeats");
    assert!(progress.contains("unhealthy"), "{progress}");
    env.sb.stop();
}

/// One deadline per wait (issue 10): registration's wait for `healthy` counts from the step's
/// first scheduling, so an attempt that starts after it passed (a retry, a resume) looks once
/// and fails, not retryable, naming the deadline and the state it saw; it does not wait a whole
/// timeout again (before: 30 s more of polling).
#[tokio::test]
async fn the_healthy_wait_has_one_deadline_from_the_first_scheduling() {
    let env = fault_env().await;
    env.sb.shared().mutate(|st| st.elb.initial_ms = 3_600_000);
    // A fault that only counts: every DescribeTargetHealth call takes one from `remaining`.
    env.fault("DescribeTargetHealth", FaultKind::Delay(0), Some(1000));
    let mut ctx = activity_ctx();
    ctx.scheduled_at = chrono::Utc::now() - chrono::Duration::seconds(60);
    let input = RegisterTargetInput {
        timeout_secs: 30,
        ..register_input(&env.conn, &env.arns.tg_a, TARGET)
    };
    let e = fatal(
        RegisterTarget
            .run_with(&env.client, &ctx, &input)
            .await
            .expect_err("not healthy by the deadline"),
    );
    for needle in ["initial", "deadline", "final, not retried", TARGET] {
        assert!(e.message.contains(needle), "lacks {needle:?}: {e}");
    }
    assert_eq!(
        env.sb.shared().faults().rules[0].remaining,
        Some(998),
        "one look before registering, one last look at the deadline that had passed"
    );
    assert_eq!(effects(env.sb.shared(), "register", &env.arns.tg_a), 1);
    env.sb.stop();
}

#[tokio::test]
async fn sandbox_targets_pass_through_initial_before_healthy() {
    let env = fault_env().await;
    // A target registered by hand is `initial` until the sandbox's registration delay ends.
    let tg = env.arns.tg_b.clone();
    env.sb.shared().mutate(|st| {
        st.elb.initial_ms = 60_000;
        let group = st
            .elb
            .target_groups
            .iter_mut()
            .find(|t| t.arn == tg)
            .unwrap();
        group.targets.push(waymark_sandbox::elb::Target {
            id: "10.20.2.20".into(),
            port: 5433,
            availability_zone: None,
            registered_at_ms: chrono::Utc::now().timestamp_millis(),
        });
    });
    let input = RegisterTargetInput {
        timeout_secs: 0,
        ..register_input(&env.conn, &tg, "10.20.2.20")
    };
    let e = fatal(
        RegisterTarget
            .run_with(&env.client, &activity_ctx(), &input)
            .await
            .expect_err("still initial"),
    );
    assert!(
        e.message.contains("initial") && e.message.contains("Elb.RegistrationInProgress"),
        "{e}"
    );
    assert_eq!(
        effects(env.sb.shared(), "register", &tg),
        0,
        "already registered: no call"
    );
    env.sb.shared().mutate(|st| st.elb.initial_ms = 0);
    let out = RegisterTarget
        .run_with(&env.client, &activity_ctx(), &input)
        .await
        .expect("healthy");
    assert_eq!(out.state, "healthy");
    assert!(out.already);
    env.sb.stop();
}

#[tokio::test]
async fn invalid_input_is_fatal_before_any_call() {
    // Through `Activity::run` (the standard credentials chain is never asked: no call is made).
    let input = ReadTrafficWeightsInput {
        conn: ElbConnection::new(REGION, Some("ftp://127.0.0.1:1".into())),
        source: TrafficSource::Rule(
            "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/x".into(),
        ),
    };
    let e = ReadTrafficWeights
        .run(activity_ctx(), input)
        .await
        .expect_err("bad endpoint");
    assert!(!e.retryable, "{e}");
    assert!(
        e.message.contains("ELBv2") && e.message.contains("ftp://127.0.0.1:1"),
        "{e}"
    );

    let env = fault_env().await;
    for weights in [
        BTreeMap::new(),
        env.arns.weights(1000, 0),
        env.arns.weights(-1, 100),
    ] {
        let input = SetTrafficWeightsInput {
            conn: env.conn.clone(),
            source: TrafficSource::Listener(env.arns.listener.clone()),
            weights,
        };
        let e = fatal(
            SetTrafficWeights
                .run_with(&env.client, &activity_ctx(), &input)
                .await
                .expect_err("invalid weights"),
        );
        assert!(
            e.message.contains("ELBv2") && e.message.contains(&env.arns.listener),
            "{e}"
        );
    }
    assert_eq!(
        effects(env.sb.shared(), "modify-listener", &env.arns.listener),
        0
    );
    env.sb.stop();
}

#[tokio::test]
async fn no_secret_in_any_output_error_or_sandbox_file() {
    let env = fault_env().await;
    let mut texts: Vec<String> = vec![format!("{:?}", env.client), format!("{:?}", credentials())];
    let ctx = activity_ctx();
    let reg = register_input(&env.conn, &env.arns.tg_a, TARGET);
    let set = SetTrafficWeightsInput {
        conn: env.conn.clone(),
        source: TrafficSource::Rule(env.arns.rule.clone()),
        weights: env.arns.weights(100, 0),
    };
    texts.push(serde_json::to_string(&reg).unwrap());
    texts.push(serde_json::to_string(&set).unwrap());
    // Successes.
    let out = RegisterTarget
        .run_with(&env.client, &ctx, &reg)
        .await
        .expect("register");
    texts.push(serde_json::to_string(&out).unwrap());
    let out = SetTrafficWeights
        .run_with(&env.client, &ctx, &set)
        .await
        .expect("set");
    texts.push(serde_json::to_string(&out).unwrap());
    let out = DeregisterTarget
        .run_with(&env.client, &ctx, &reg.compensation())
        .await
        .expect("deregister");
    texts.push(serde_json::to_string(&out).unwrap());
    texts.push(ctx.last_progress().unwrap_or_default());
    // Failures of every kind.
    for kind in [
        FaultKind::Status(500),
        FaultKind::Status(403),
        FaultKind::Throttle,
        FaultKind::Drop,
    ] {
        env.fault("", kind, None);
        let e = env.read().await.expect_err("fault");
        texts.push(format!("{e:?}"));
        texts.push(activity::Error::from(e).message);
    }
    env.fault("", FaultKind::Delay(5_000), None);
    let slow = ElbConnection {
        call_timeout_ms: Some(200),
        ..env.conn.clone()
    };
    let e = ReadTrafficWeights
        .run_with(&client(&slow).await, &ctx, &env.read_input())
        .await
        .expect_err("timeout");
    texts.push(format!("{e:?}"));
    env.sb.shared().set_faults(Faults::default());
    let refused = conn(&format!("http://127.0.0.1:{}", closed_port()));
    let e = ReadTrafficWeights
        .run_with(&client(&refused).await, &ctx, &env.read_input())
        .await
        .expect_err("refused");
    texts.push(format!("{e:?}"));
    let e = RegisterTarget
        .run_with(
            &env.client,
            &ctx,
            &register_input(
                &env.conn,
                "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/nope/1",
                TARGET,
            ),
        )
        .await
        .expect_err("not found");
    texts.push(format!("{e:?}"));
    for file in [
        "state.json",
        "effects.jsonl",
        "faults.json",
        "endpoints.json",
    ] {
        texts.push(std::fs::read_to_string(env.sb.shared().dir().join(file)).unwrap_or_default());
    }
    for t in &texts {
        assert!(!t.contains(SECRET), "the secret leaked into: {t}");
    }
    assert!(
        texts.iter().any(|t| t.contains("ELBv2")),
        "the texts were collected"
    );
    env.sb.stop();
}

/// Without `moto_server` the suite fails (in CI or not), saying how to install it: never a skip.
#[tokio::test]
async fn a_missing_moto_server_fails_saying_how_to_install_it() {
    use futures::FutureExt as _;
    let panic = std::panic::AssertUnwindSafe(Moto::start_program("moto_server-not-installed-here"))
        .catch_unwind()
        .await
        .expect_err("a missing moto_server must fail the test");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("moto_server-not-installed-here is not installed"),
        "{message}"
    );
    assert!(message.contains("pip install 'moto[server]'"), "{message}");
}

/// Sends one raw HTTP/1.1 request to the sandbox's `ELBv2` and returns the answer's text.
async fn raw_post(sb: &Sandbox, headers: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(sb.endpoints().elb)
        .await
        .expect("connect");
    let request = format!(
        "POST / HTTP/1.1\r\nHost: elb\r\nContent-Type: application/x-www-form-urlencoded\r\n{headers}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    answer
}

/// Errors come as AWS shapes them: `<ErrorResponse>` in the `ELBv2` namespace with the status.
#[tokio::test]
async fn sandbox_errors_have_the_aws_shape() {
    let (_dir, sb) = sandbox(1).await;
    let auth = "Authorization: AWS4-HMAC-SHA256 Credential=AKIAWAYMARKTEST0001/20260101/us-east-1/elasticloadbalancing/aws4_request, SignedHeaders=host, Signature=00\r\n";
    let answer = raw_post(&sb, "", "Action=DescribeTargetGroups&Version=2015-12-01").await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        answer.contains("<Code>MissingAuthenticationToken</Code>"),
        "{answer}"
    );
    let answer = raw_post(
        &sb,
        auth,
        "Action=DescribeTargetGroups&Version=2015-12-01&Names.member.1=nope",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains(
            "<ErrorResponse xmlns=\"http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/\">\
             <Error><Type>Sender</Type><Code>TargetGroupNotFound</Code>\
             <Message>One or more target groups not found</Message></Error><RequestId>"
        ),
        "{answer}"
    );
    let answer = raw_post(&sb, auth, "Action=DescribeTargetGroups&Version=2015-12-01").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("<DescribeTargetGroupsResponse xmlns=\"http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/\"><DescribeTargetGroupsResult><TargetGroups><member>"), "{answer}");
    assert!(
        answer.contains("<TargetGroupName>aws-useast1-prod-b-yb-ext-prod</TargetGroupName>"),
        "{answer}"
    );
    let answer = raw_post(&sb, auth, "Action=DeleteEverything&Version=2015-12-01").await;
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("<Code>InvalidAction</Code>"),
        "{answer}"
    );
    sb.shared().set_faults(Faults {
        rules: vec![Fault {
            system: "elb".into(),
            matching: "DescribeTargetGroups".into(),
            kind: FaultKind::Status(503),
            remaining: Some(1),
        }],
    });
    let answer = raw_post(&sb, auth, "Action=DescribeTargetGroups&Version=2015-12-01").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("<Type>Receiver</Type><Code>ServiceUnavailable</Code>"),
        "{answer}"
    );
    sb.stop();
}
