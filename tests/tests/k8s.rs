//! Kubernetes activities against the sandbox API server, and kubectl's rollout-status rules on
//! hand-built Deployments (stale observedGeneration, deadline exceeded, old replicas terminating).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use serde_json::json;
use waymark_activities::k8s::{
    self, rollout_status, Connection, DeploymentRef, ReadReplicas, RestartInput, RolloutRestart,
    RolloutStatus, Scale, ScaleInput, WaitRollout, WaitRolloutInput,
};
use waymark_engine::Activity;
use waymark_sandbox::{read_effects, Fault, FaultKind, Faults};

use crate::util::{activity_ctx, closed_port, sandbox, wait_until};

fn dep(dir: &std::path::Path, name: &str) -> DeploymentRef {
    DeploymentRef {
        connection: Connection {
            kubeconfig: Some(dir.join("kubeconfig")),
            context: Some("sandbox".into()),
            request_timeout_secs: Some(2),
        },
        namespace: "prod".into(),
        name: name.into(),
    }
}

fn effects(dir: &std::path::Path, target: &str, action: &str) -> usize {
    read_effects(dir)
        .iter()
        .filter(|e| e.system == "k8s" && e.target == target && e.action == action)
        .count()
}

#[tokio::test]
async fn scale_reports_the_previous_count_and_is_a_no_op_when_already_there() {
    let (dir, _sb) = sandbox(10).await;
    let mm = dep(dir.path(), "mirrormaker2");
    assert_eq!(
        ReadReplicas.run(activity_ctx(), mm.clone()).await.unwrap(),
        2
    );
    let input = ScaleInput {
        deployment: mm.clone(),
        replicas: 0,
    };
    let first = Scale.run(activity_ctx(), input.clone()).await.unwrap();
    assert_eq!((first.previous, first.changed), (2, true));
    let again = Scale.run(activity_ctx(), input).await.unwrap();
    assert_eq!((again.previous, again.changed), (0, false));
    assert_eq!(effects(dir.path(), "prod/mirrormaker2", "scale"), 1);
    assert_eq!(ReadReplicas.run(activity_ctx(), mm).await.unwrap(), 0);
}

#[tokio::test]
async fn rollout_restart_uses_kubectl_annotation_once_and_waits_with_kubectl_rules() {
    let (dir, _sb) = sandbox(10).await;
    let fp = dep(dir.path(), "fp");
    let input = RestartInput {
        deployment: fp.clone(),
        restarted_at: "2026-11-25T03:00:00Z".into(),
    };
    let first = RolloutRestart
        .run(activity_ctx(), input.clone())
        .await
        .unwrap();
    assert!(first.patched);
    let retried = RolloutRestart.run(activity_ctx(), input).await.unwrap();
    assert!(!retried.patched, "same timestamp: no second rollout");
    assert_eq!(effects(dir.path(), "prod/fp", "rollout"), 1);
    let d: Deployment = kube::Api::namespaced(fp.connection.client().await.unwrap(), "prod")
        .get("fp")
        .await
        .unwrap();
    let ann = d.spec.template.metadata.unwrap().annotations.unwrap();
    assert_eq!(
        ann.get(k8s::RESTARTED_AT).map(String::as_str),
        Some("2026-11-25T03:00:00Z")
    );
    let ctx = activity_ctx();
    let done = WaitRollout
        .run(
            ctx.clone(),
            WaitRolloutInput {
                deployment: fp,
                timeout_secs: 30,
                poll_ms: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(done, "deployment \"fp\" successfully rolled out");
    assert!(
        ctx.last_progress()
            .unwrap_or_default()
            .contains("Waiting for deployment"),
        "heartbeats carried kubectl's status line"
    );
}

#[tokio::test]
async fn stuck_rollout_fails_without_retry_on_progress_deadline() {
    let (dir, sb) = sandbox(10).await;
    sb.shared().set_faults(Faults {
        rules: vec![Fault {
            system: "k8s".into(),
            matching: "stuck prod/fp-async".into(),
            kind: FaultKind::Status(500),
            remaining: None,
        }],
    });
    let d = dep(dir.path(), "fp-async");
    RolloutRestart
        .run(
            activity_ctx(),
            RestartInput {
                deployment: d.clone(),
                restarted_at: "t1".into(),
            },
        )
        .await
        .unwrap();
    let err = WaitRollout
        .run(
            activity_ctx(),
            WaitRolloutInput {
                deployment: d,
                timeout_secs: 30,
                poll_ms: 10,
            },
        )
        .await
        .unwrap_err();
    assert!(!err.retryable, "{err}");
    assert!(
        err.message.contains("progress deadline") && err.message.contains("prod/fp-async"),
        "{err}"
    );
}

#[tokio::test]
async fn paused_deployment_is_refused_like_kubectl() {
    let (dir, _sb) = sandbox(10).await;
    let d = dep(dir.path(), "fp");
    let api: kube::Api<Deployment> =
        kube::Api::namespaced(d.connection.client().await.unwrap(), "prod");
    api.patch(
        "fp",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": {"paused": true}})),
    )
    .await
    .unwrap();
    let err = RolloutRestart
        .run(
            activity_ctx(),
            RestartInput {
                deployment: d,
                restarted_at: "t".into(),
            },
        )
        .await
        .unwrap_err();
    assert!(!err.retryable && err.message.contains("paused"), "{err}");
    assert_eq!(effects(dir.path(), "prod/fp", "rollout"), 0);
}

#[tokio::test]
async fn api_faults_are_classified_and_named() {
    let (dir, sb) = sandbox(10).await;
    let d = dep(dir.path(), "fp");
    sb.shared().set_faults(Faults {
        rules: vec![Fault {
            system: "k8s".into(),
            matching: "GET prod/fp/scale".into(),
            kind: FaultKind::Status(503),
            remaining: Some(1),
        }],
    });
    let e = ReadReplicas
        .run(activity_ctx(), d.clone())
        .await
        .unwrap_err();
    assert!(
        e.retryable
            && e.message.contains("Kubernetes")
            && e.message.contains("prod/fp")
            && e.message.contains("503"),
        "{e}"
    );
    assert_eq!(
        ReadReplicas.run(activity_ctx(), d.clone()).await.unwrap(),
        3,
        "the fault fired once: the client did not retry behind the engine's back"
    );

    sb.shared().set_faults(Faults {
        rules: vec![Fault {
            system: "k8s".into(),
            matching: "GET prod/fp/scale".into(),
            kind: FaultKind::Throttle,
            remaining: Some(1),
        }],
    });
    let e = ReadReplicas
        .run(activity_ctx(), d.clone())
        .await
        .unwrap_err();
    assert!(e.retryable && e.message.contains("429"), "throttling: {e}");

    sb.shared().set_faults(Faults {
        rules: vec![Fault {
            system: "k8s".into(),
            matching: "GET prod/fp/scale".into(),
            kind: FaultKind::Delay(5000),
            remaining: Some(1),
        }],
    });
    let mut slow = d.clone();
    slow.connection.request_timeout_secs = Some(1);
    let e = ReadReplicas.run(activity_ctx(), slow).await.unwrap_err();
    assert!(
        e.retryable && e.message.contains("cannot reach the API server"),
        "{e}"
    );

    let missing = DeploymentRef {
        name: "nope".into(),
        ..d.clone()
    };
    let e = ReadReplicas.run(activity_ctx(), missing).await.unwrap_err();
    assert!(
        !e.retryable && e.message.contains("404") && e.message.contains("prod/nope"),
        "{e}"
    );

    let kubeconfig = dir.path().join("refused-kubeconfig");
    let text = std::fs::read_to_string(dir.path().join("kubeconfig"))
        .unwrap()
        .replace(
            &sb.endpoints().k8s.port().to_string(),
            &closed_port().to_string(),
        );
    std::fs::write(&kubeconfig, text).unwrap();
    let mut refused = d;
    refused.connection.kubeconfig = Some(kubeconfig);
    let e = ReadReplicas.run(activity_ctx(), refused).await.unwrap_err();
    assert!(
        e.retryable && e.message.contains("cannot reach the API server"),
        "{e}"
    );

    let bad_context = DeploymentRef {
        connection: Connection {
            kubeconfig: Some(dir.path().join("kubeconfig")),
            context: Some("prod-typo".into()),
            request_timeout_secs: None,
        },
        namespace: "prod".into(),
        name: "fp".into(),
    };
    let e = ReadReplicas
        .run(activity_ctx(), bad_context)
        .await
        .unwrap_err();
    assert!(!e.retryable && e.message.contains("prod-typo"), "{e}");
}

fn deployment(generation: i64, status: &serde_json::Value) -> Deployment {
    serde_json::from_value(json!({
        "metadata": { "name": "fp", "generation": generation },
        "spec": { "replicas": 3, "selector": {}, "template": {} },
        "status": status,
    }))
    .unwrap()
}

#[test]
fn rollout_status_follows_kubectl_rules_in_order() {
    let cases = [
        (
            deployment(5, &json!({ "observedGeneration": 4, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3 })),
            RolloutStatus::Waiting("Waiting for deployment spec update to be observed...".into()),
        ),
        (
            deployment(5, &json!({ "observedGeneration": 5, "replicas": 4, "updatedReplicas": 1, "availableReplicas": 1,
                "conditions": [{ "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded" }] })),
            RolloutStatus::Failed("deployment \"fp\" exceeded its progress deadline".into()),
        ),
        (
            deployment(5, &json!({ "observedGeneration": 5, "replicas": 4, "updatedReplicas": 2, "availableReplicas": 2 })),
            RolloutStatus::Waiting("Waiting for deployment \"fp\" rollout to finish: 2 out of 3 new replicas have been updated...".into()),
        ),
        (
            deployment(5, &json!({ "observedGeneration": 5, "replicas": 4, "updatedReplicas": 3, "availableReplicas": 3 })),
            RolloutStatus::Waiting("Waiting for deployment \"fp\" rollout to finish: 1 old replicas are pending termination...".into()),
        ),
        (
            deployment(5, &json!({ "observedGeneration": 5, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 2 })),
            RolloutStatus::Waiting("Waiting for deployment \"fp\" rollout to finish: 2 of 3 updated replicas are available...".into()),
        ),
        (
            deployment(5, &json!({ "observedGeneration": 5, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3 })),
            RolloutStatus::Done("deployment \"fp\" successfully rolled out".into()),
        ),
    ];
    for (d, expected) in cases {
        assert_eq!(rollout_status(&d), expected);
    }
}

#[tokio::test]
async fn sandbox_rollout_passes_through_stale_generation_and_terminating_replicas() {
    let (dir, _sb) = sandbox(1).await;
    let d = dep(dir.path(), "fp");
    let api: kube::Api<Deployment> =
        kube::Api::namespaced(d.connection.client().await.unwrap(), "prod");
    RolloutRestart
        .run(
            activity_ctx(),
            RestartInput {
                deployment: d,
                restarted_at: "t2".into(),
            },
        )
        .await
        .unwrap();
    // Every phase the rollout goes through, as `kubectl rollout status` words it, recorded by a
    // watcher until it is done.
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let watcher = tokio::spawn({
        let seen = seen.clone();
        async move {
            loop {
                let status = rollout_status(&api.get("fp").await.unwrap());
                let key = match &status {
                    RolloutStatus::Waiting(m) if m.contains("spec update") => "stale-generation",
                    RolloutStatus::Waiting(m) if m.contains("new replicas") => "updating",
                    RolloutStatus::Waiting(m) if m.contains("pending termination") => "terminating",
                    RolloutStatus::Waiting(_) => "available",
                    RolloutStatus::Done(_) => "done",
                    RolloutStatus::Failed(m) => panic!("{m}"),
                };
                seen.lock().unwrap().insert(key);
                if key == "done" {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    wait_until(
        Duration::from_secs(120),
        "the rollout of fp to be done",
        || watcher.is_finished(),
    )
    .await;
    watcher.await.expect("the watcher saw no failed rollout");
    let seen = seen.lock().unwrap().clone();
    for phase in ["updating", "terminating", "done"] {
        assert!(seen.contains(phase), "phase {phase} seen: {seen:?}");
    }
}
