//! Kubernetes activities over `kube`: read and scale a Deployment through its `scale`
//! subresource, `kubectl rollout restart` with kubectl's own annotation, and `kubectl rollout
//! status` with kubectl's exact rules.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::{Deserialize, Serialize};
use serde_json::json;
use waymark_engine::activity::{self, Activity, Context};
use waymark_engine::runtime::EngineBuilder;

use crate::wait::{Deadline, Poll as WaitPoll, PollUntil, WaitError};

/// Annotation `kubectl rollout restart` sets (not kube-rs's `kube.kubernetes.io/restartedAt`).
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// Errors of the Kubernetes activities.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable client configuration.
    #[error("Kubernetes: cannot build a client ({context}): {detail}; check the kubeconfig file and context name, or run in-cluster")]
    Config {
        /// Which kubeconfig/context was asked for.
        context: String,
        /// What failed.
        detail: String,
    },
    /// The API answered with an error status.
    #[error(
        "Kubernetes: {verb} deployment {target}: API answered {code} {reason}: {message}{hint}"
    )]
    Api {
        /// What was being done.
        verb: &'static str,
        /// `namespace/name`.
        target: String,
        /// HTTP status.
        code: u16,
        /// Kubernetes reason.
        reason: String,
        /// Message.
        message: String,
        /// What to check.
        hint: &'static str,
    },
    /// The API could not be reached.
    #[error("Kubernetes: {verb} deployment {target}: cannot reach the API server ({detail}); check the cluster URL in the kubeconfig and the network")]
    Transport {
        /// What was being done.
        verb: &'static str,
        /// `namespace/name`.
        target: String,
        /// What failed.
        detail: String,
    },
    /// `kubectl rollout restart` refuses paused Deployments.
    #[error("Kubernetes: deployment {0} is paused; kubectl rollout restart refuses paused deployments: resume it (kubectl rollout resume) first")]
    Paused(String),
    /// The rollout hit its progress deadline.
    #[error("Kubernetes: deployment {target} exceeded its progress deadline: {message}; check the new pods (kubectl describe deployment, kubectl get events)")]
    ProgressDeadline {
        /// `namespace/name`.
        target: String,
        /// The Progressing condition's message.
        message: String,
    },
    /// The rollout did not finish in time.
    #[error("Kubernetes: deployment {target} rollout not finished after {waited:?} (the wait's deadline; final, not retried): {last}")]
    RolloutTimeout {
        /// `namespace/name`.
        target: String,
        /// How long it waited.
        waited: Duration,
        /// The last status line.
        last: String,
    },
    /// The run was cancelled while waiting.
    #[error("Kubernetes: wait for deployment {0} cancelled")]
    Cancelled(String),
}

impl From<Error> for activity::Error {
    fn from(e: Error) -> Self {
        let retryable = match &e {
            Error::Api { code, .. } => *code >= 500 || *code == 429 || *code == 409,
            Error::Transport { .. } => true,
            // A wait's deadline is final (issue 12): another attempt would only wait again.
            Error::RolloutTimeout { .. }
            | Error::Config { .. }
            | Error::Paused(_)
            | Error::ProgressDeadline { .. }
            | Error::Cancelled(_) => false,
        };
        activity::Error {
            message: e.to_string(),
            retryable,
        }
    }
}

/// How to reach the cluster: kubeconfig inference with an optional context, or an explicit file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    /// A kubeconfig file; default: `$KUBECONFIG`, `~/.kube/config`, then in-cluster.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// A context of that kubeconfig; default: its current context.
    #[serde(default)]
    pub context: Option<String>,
    /// Per-request timeout, seconds (default 30).
    #[serde(default)]
    pub request_timeout_secs: Option<u64>,
}

impl Connection {
    fn describe(&self) -> String {
        format!(
            "kubeconfig {}, context {}",
            self.kubeconfig
                .as_ref()
                .map_or_else(|| "(inferred)".to_owned(), |p| p.display().to_string()),
            self.context.as_deref().unwrap_or("(current)")
        )
    }

    /// This connection with its context named: the kubeconfig's current context when the
    /// connection names none. Unchanged when a context is named, or when there is no kubeconfig
    /// and the process runs in a cluster (in-cluster configuration has no context). A workflow
    /// resolves its connection once when a run starts ([`ResolveConnection`]) so that switching
    /// the kubeconfig's current context mid-run cannot send later steps to another cluster.
    pub fn resolved(&self) -> Result<Connection, Error> {
        if self.context.is_some() {
            return Ok(self.clone());
        }
        let err = |detail: String| Error::Config {
            context: self.describe(),
            detail,
        };
        let kubeconfig = match &self.kubeconfig {
            Some(path) => Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?,
            None => match Kubeconfig::read() {
                Ok(kc) => kc,
                Err(_) if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
                    return Ok(self.clone());
                }
                Err(e) => {
                    return Err(err(format!(
                        "no kubeconfig ($KUBECONFIG, ~/.kube/config: {e}) and not running in a cluster; set kubernetes.kubeconfig and kubernetes.context in the inventory"
                    )))
                }
            },
        };
        match kubeconfig.current_context.filter(|c| !c.is_empty()) {
            Some(context) => Ok(Connection {
                context: Some(context),
                ..self.clone()
            }),
            None => Err(err(
                "the kubeconfig has no current-context; set kubernetes.context in the inventory"
                    .into(),
            )),
        }
    }

    /// A client for this connection.
    pub async fn client(&self) -> Result<kube::Client, Error> {
        let err = |detail: String| Error::Config {
            context: self.describe(),
            detail,
        };
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let mut config = match &self.kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
                kube::Config::from_custom_kubeconfig(kc, &options)
                    .await
                    .map_err(|e| err(e.to_string()))?
            }
            None if self.context.is_some() => kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|e| err(e.to_string()))?,
            None => kube::Config::infer()
                .await
                .map_err(|e| err(e.to_string()))?,
        };
        let timeout = Duration::from_secs(self.request_timeout_secs.unwrap_or(30));
        config.connect_timeout = Some(timeout.min(Duration::from_secs(10)));
        config.read_timeout = Some(timeout);
        config.write_timeout = Some(timeout);
        // Retries belong to the engine (journaled, with the step's policy), not hidden in the client.
        config.default_retry = false;
        trust_nothing_over_plain_http(&mut config);
        kube::Client::try_from(config).map_err(|e| err(e.to_string()))
    }
}

/// A cluster reached over plain HTTP (no proxy: every request goes to the cluster URL) never
/// makes a TLS connection, yet kube builds the client's TLS configuration anyway, and with no CA
/// in the kubeconfig that means loading and parsing the whole system CA bundle, for every client
/// (a sixth of a simulated run's CPU: every Kubernetes activity builds one). Such a
/// configuration gets an empty trust store instead, which no connection ever consults. HTTPS
/// clusters are untouched: their kubeconfig's CA, or the system's roots when it names none.
fn trust_nothing_over_plain_http(config: &mut kube::Config) {
    if config.root_cert.is_none()
        && config.proxy_url.is_none()
        && config.cluster_url.scheme_str() == Some("http")
    {
        config.root_cert = Some(Vec::new());
    }
}

/// A Deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRef {
    /// How to reach its cluster.
    pub connection: Connection,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl DeploymentRef {
    fn target(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Runs one API call with the connection's request timeout (kube's own read timeout does not
    /// cover every stall, e.g. a server that accepts and never answers).
    async fn call<T>(
        &self,
        verb: &'static str,
        fut: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, Error> {
        let limit = Duration::from_secs(self.connection.request_timeout_secs.unwrap_or(30));
        match tokio::time::timeout(limit, fut).await {
            Ok(r) => r.map_err(|e| self.map(verb, e)),
            Err(_) => Err(Error::Transport {
                verb,
                target: self.target(),
                detail: format!("no answer within {limit:?}"),
            }),
        }
    }

    /// One look at the Deployment: what `kubectl rollout status` would conclude now
    /// ([`rollout_status`]); `Done` means every replica updated and Available.
    pub async fn read_rollout_status(&self) -> Result<RolloutStatus, Error> {
        let api = self.api().await?;
        let dep = self.call("read", api.get(&self.name)).await?;
        Ok(rollout_status(&dep))
    }

    /// What `kubectl auth can-i VERB deployments[/SUBRESOURCE] NAME -n NAMESPACE` answers: a
    /// `SelfSubjectAccessReview` of the connection's user (read-only: the API server creates
    /// nothing). `Ok(Err(reason))` when RBAC does not allow it.
    pub async fn can_i(
        &self,
        verb: &str,
        subresource: Option<&str>,
    ) -> Result<Result<(), String>, Error> {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some("apps".into()),
                    resource: Some("deployments".into()),
                    subresource: subresource.map(str::to_owned),
                    verb: Some(verb.to_owned()),
                    namespace: Some(self.namespace.clone()),
                    name: Some(self.name.clone()),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let api: Api<SelfSubjectAccessReview> = Api::all(self.connection.client().await?);
        let out = self
            .call(
                "review access to",
                api.create(&kube::api::PostParams::default(), &review),
            )
            .await?;
        let status = out.status.unwrap_or_default();
        if status.allowed {
            Ok(Ok(()))
        } else {
            Ok(Err(status
                .reason
                .or(status.evaluation_error)
                .unwrap_or_else(|| "denied".to_owned())))
        }
    }

    async fn api(&self) -> Result<Api<Deployment>, Error> {
        Ok(Api::namespaced(
            self.connection.client().await?,
            &self.namespace,
        ))
    }

    fn map(&self, verb: &'static str, e: kube::Error) -> Error {
        match e {
            kube::Error::Api(s) => Error::Api {
                verb,
                target: self.target(),
                code: s.code,
                reason: s.reason.clone(),
                message: s.message.clone(),
                hint: match s.code {
                    404 => "; check the namespace and name in the inventory",
                    401 | 403 => "; check the credentials and RBAC of the kubeconfig user",
                    _ => "",
                },
            },
            other => Error::Transport {
                verb,
                target: self.target(),
                detail: other.to_string(),
            },
        }
    }
}

/// `spec.replicas` of a Deployment (read through the scale subresource).
pub struct ReadReplicas;

impl Activity for ReadReplicas {
    const NAME: &'static str = "k8s.read_replicas";
    type Input = DeploymentRef;
    type Output = i32;

    async fn run(&self, _ctx: Context, d: DeploymentRef) -> Result<i32, activity::Error> {
        let api = d.api().await?;
        let scale = d.call("read scale of", api.get_scale(&d.name)).await?;
        Ok(scale.spec.and_then(|s| s.replicas).unwrap_or(0))
    }
}

/// Input of [`Scale`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleInput {
    /// Which Deployment.
    pub deployment: DeploymentRef,
    /// Wanted `spec.replicas`.
    pub replicas: i32,
}

/// Output of [`Scale`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleOutput {
    /// `spec.replicas` found before (after a crash and retry this is already the wanted value:
    /// record the count with [`ReadReplicas`] in an earlier step to restore it later).
    pub previous: i32,
    /// Whether this call changed it.
    pub changed: bool,
}

/// Sets `spec.replicas` through the `scale` subresource; a no-op when it already has that value.
pub struct Scale;

impl Activity for Scale {
    const NAME: &'static str = "k8s.scale";
    type Input = ScaleInput;
    type Output = ScaleOutput;

    async fn run(&self, _ctx: Context, input: ScaleInput) -> Result<ScaleOutput, activity::Error> {
        let d = &input.deployment;
        let api = d.api().await?;
        let current = d
            .call("read scale of", api.get_scale(&d.name))
            .await?
            .spec
            .and_then(|s| s.replicas)
            .unwrap_or(0);
        if current == input.replicas {
            return Ok(ScaleOutput {
                previous: current,
                changed: false,
            });
        }
        d.call(
            "scale",
            api.patch_scale(
                &d.name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "replicas": input.replicas } })),
            ),
        )
        .await?;
        Ok(ScaleOutput {
            previous: current,
            changed: true,
        })
    }
}

/// Input of [`ScaleAndWait`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleAndWaitInput {
    /// The scale.
    pub scale: ScaleInput,
    /// The one deadline of the wait, seconds (a wait that times out is final).
    pub timeout_secs: u64,
    /// Poll interval, ms.
    pub poll_ms: u64,
}

/// Whether a Deployment has reached `replicas`: for 0, no pod left (none running, none
/// terminating); above 0, the rollout done ([`rollout_status`]) with `replicas` Available.
/// `Err` holds what is still missing.
pub fn scaled_to(d: &Deployment, replicas: i32) -> Result<(), String> {
    let status = d.status.clone().unwrap_or_default();
    let running = status.replicas.unwrap_or(0);
    let terminating = status.terminating_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if replicas == 0 {
        if running == 0 && terminating == 0 {
            return Ok(());
        }
        return Err(format!(
            "{running} pods still running, {terminating} terminating"
        ));
    }
    match rollout_status(d) {
        RolloutStatus::Done(_) if available >= replicas => Ok(()),
        RolloutStatus::Done(_) => Err(format!("{available} of {replicas} replicas Available")),
        RolloutStatus::Waiting(m) | RolloutStatus::Failed(m) => {
            Err(format!("{available} of {replicas} replicas Available: {m}"))
        }
    }
}

/// `k8s.scale_and_wait`: [`Scale`], then waits until the Deployment has reached the replicas
/// ([`scaled_to`]: scaled to 0, every pod gone; above 0, every replica Available) within one
/// deadline counted from the step's first scheduling ([`crate::wait`]). A wait that passes its
/// deadline fails, not retryable (another attempt would only wait again); transient errors of
/// one look are retried within the deadline, others end the attempt.
pub struct ScaleAndWait;

impl Activity for ScaleAndWait {
    const NAME: &'static str = "k8s.scale_and_wait";
    type Input = ScaleAndWaitInput;
    type Output = ScaleOutput;

    async fn run(
        &self,
        ctx: Context,
        input: ScaleAndWaitInput,
    ) -> Result<ScaleOutput, activity::Error> {
        let out = Scale.run(ctx.clone(), input.scale.clone()).await?;
        let d = &input.scale.deployment;
        let api = d.api().await?;
        // One deadline, counted from when the step was first scheduled (the scale included).
        let deadline = Deadline::after_scheduling(&ctx, Duration::from_secs(input.timeout_secs));
        let what = format!("{} at {} replicas", d.target(), input.scale.replicas);
        let looked: Result<(), WaitError<Error>> = ctx
            .poll_until(
                &what,
                deadline,
                Duration::from_millis(input.poll_ms),
                || async {
                    let dep = d.call("read", api.get(&d.name)).await?;
                    Ok(match scaled_to(&dep, input.scale.replicas) {
                        Ok(()) => WaitPoll::Ready(()),
                        Err(missing) => WaitPoll::Pending(missing),
                    })
                },
            )
            .await;
        match looked {
            Ok(()) => Ok(out),
            Err(WaitError::Timeout(t)) => Err(activity::Error::fatal(format!(
                "Kubernetes: {} did not reach {} replicas within its deadline of {} s ({t}); check its pods (kubectl -n {} describe deployment {})",
                d.target(),
                input.scale.replicas,
                input.timeout_secs,
                d.namespace,
                d.name
            ))),
            Err(WaitError::Failed(e)) => Err(e.into()),
            Err(WaitError::Cancelled(_)) => Err(Error::Cancelled(d.target()).into()),
        }
    }
}

/// Input of [`RolloutRestart`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartInput {
    /// Which Deployment.
    pub deployment: DeploymentRef,
    /// The annotation value (RFC 3339), from the workflow's recorded clock so that a retried
    /// restart patches the same value and triggers no second rollout.
    pub restarted_at: String,
}

/// Output of [`RolloutRestart`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartOutput {
    /// Whether this call patched the template (false: it already had this restart).
    pub patched: bool,
    /// `metadata.generation` after.
    pub generation: i64,
}

/// `kubectl rollout restart`: sets `spec.template.metadata.annotations
/// ["kubectl.kubernetes.io/restartedAt"]` with a strategic-merge patch; refuses a paused Deployment.
pub struct RolloutRestart;

impl Activity for RolloutRestart {
    const NAME: &'static str = "k8s.rollout_restart";
    type Input = RestartInput;
    type Output = RestartOutput;

    async fn run(
        &self,
        _ctx: Context,
        input: RestartInput,
    ) -> Result<RestartOutput, activity::Error> {
        let d = &input.deployment;
        let api = d.api().await?;
        let current = d.call("read", api.get(&d.name)).await?;
        let spec = current.spec.clone();
        if spec.paused == Some(true) {
            return Err(Error::Paused(d.target()).into());
        }
        let existing = spec
            .template
            .metadata
            .and_then(|m| m.annotations)
            .and_then(|a| a.get(RESTARTED_AT).cloned());
        if existing.as_deref() == Some(input.restarted_at.as_str()) {
            return Ok(RestartOutput {
                patched: false,
                generation: current.metadata.generation.unwrap_or(0),
            });
        }
        let patch = json!({ "spec": { "template": { "metadata": { "annotations": { RESTARTED_AT: input.restarted_at } } } } });
        let after = d
            .call(
                "restart",
                api.patch(&d.name, &PatchParams::default(), &Patch::Strategic(patch)),
            )
            .await?;
        Ok(RestartOutput {
            patched: true,
            generation: after.metadata.generation.unwrap_or(0),
        })
    }
}

/// What `kubectl rollout status` concludes from one look at a Deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RolloutStatus {
    /// Finished, with kubectl's message.
    Done(String),
    /// Not yet, with kubectl's message.
    Waiting(String),
    /// `ProgressDeadlineExceeded`.
    Failed(String),
}

/// kubectl's rules (`rollout_status.go`): first wait until the controller has observed the
/// current generation; then a `ProgressDeadlineExceeded` Progressing condition fails; then wait
/// while updated < spec replicas, while old replicas are terminating (replicas > updated), and
/// while available < updated. Pure.
pub fn rollout_status(d: &Deployment) -> RolloutStatus {
    let name = d.metadata.name.clone().unwrap_or_default();
    let generation = d.metadata.generation.unwrap_or(0);
    let status = d.status.clone().unwrap_or_default();
    if generation > status.observed_generation.unwrap_or(0) {
        return RolloutStatus::Waiting(
            "Waiting for deployment spec update to be observed...".into(),
        );
    }
    if let Some(c) = status.conditions.as_ref().and_then(|cs| {
        cs.iter()
            .find(|c| c.type_.as_deref() == Some("Progressing"))
    }) {
        if c.reason.as_deref() == Some("ProgressDeadlineExceeded") {
            return RolloutStatus::Failed(format!(
                "deployment {name:?} exceeded its progress deadline"
            ));
        }
    }
    let want = d.spec.replicas.unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let replicas = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < want {
        return RolloutStatus::Waiting(format!(
            "Waiting for deployment {name:?} rollout to finish: {updated} out of {want} new replicas have been updated..."
        ));
    }
    if replicas > updated {
        return RolloutStatus::Waiting(format!(
            "Waiting for deployment {name:?} rollout to finish: {} old replicas are pending termination...",
            replicas - updated
        ));
    }
    if available < updated {
        return RolloutStatus::Waiting(format!(
            "Waiting for deployment {name:?} rollout to finish: {available} of {updated} updated replicas are available..."
        ));
    }
    RolloutStatus::Done(format!("deployment {name:?} successfully rolled out"))
}

/// Input of [`WaitRollout`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitRolloutInput {
    /// Which Deployment.
    pub deployment: DeploymentRef,
    /// Give up after this long (retryable), seconds.
    pub timeout_secs: u64,
    /// Poll interval, ms.
    pub poll_ms: u64,
}

/// `kubectl rollout status`, heartbeating kubectl's status line while it waits.
pub struct WaitRollout;

impl Activity for WaitRollout {
    const NAME: &'static str = "k8s.wait_rollout";
    type Input = WaitRolloutInput;
    type Output = String;

    async fn run(&self, ctx: Context, input: WaitRolloutInput) -> Result<String, activity::Error> {
        let d = &input.deployment;
        let api = d.api().await?;
        // One deadline, counted from when the step was first scheduled: a retried or resumed
        // attempt waits only for what is left of it; transient errors are looked past within it.
        let deadline = Deadline::after_scheduling(&ctx, Duration::from_secs(input.timeout_secs));
        let what = format!("deployment {} rolled out", d.target());
        let looked = ctx
            .poll_until(
                &what,
                deadline,
                Duration::from_millis(input.poll_ms),
                || async {
                    let dep = d.call("read", api.get(&d.name)).await?;
                    match rollout_status(&dep) {
                        RolloutStatus::Done(msg) => Ok(WaitPoll::Ready(msg)),
                        RolloutStatus::Waiting(msg) => Ok(WaitPoll::Pending(msg)),
                        RolloutStatus::Failed(_) => Err(Error::ProgressDeadline {
                            target: d.target(),
                            message: dep
                                .status
                                .and_then(|s| s.conditions)
                                .and_then(|cs| {
                                    cs.into_iter()
                                        .find(|c| c.type_.as_deref() == Some("Progressing"))
                                })
                                .and_then(|c| c.message)
                                .unwrap_or_default(),
                        }),
                    }
                },
            )
            .await;
        match looked {
            Ok(msg) => Ok(msg),
            Err(WaitError::Timeout(t)) => Err(Error::RolloutTimeout {
                target: d.target(),
                waited: t.timeout,
                last: t.last,
            }
            .into()),
            Err(WaitError::Failed(e)) => Err(e.into()),
            Err(WaitError::Cancelled(_)) => Err(Error::Cancelled(d.target()).into()),
        }
    }
}

/// `k8s.resolve_connection`: the connection with its context named ([`Connection::resolved`]).
/// Reads the kubeconfig only; non-retryable when it has no usable context.
pub struct ResolveConnection;

impl Activity for ResolveConnection {
    const NAME: &'static str = "k8s.resolve_connection";
    type Input = Connection;
    type Output = Connection;

    async fn run(&self, _ctx: Context, conn: Connection) -> Result<Connection, activity::Error> {
        Ok(conn.resolved()?)
    }
}

/// Registers the Kubernetes activities.
pub fn register(b: EngineBuilder) -> EngineBuilder {
    b.activity(ReadReplicas)
        .activity(Scale)
        .activity(ScaleAndWait)
        .activity(RolloutRestart)
        .activity(WaitRollout)
        .activity(ResolveConnection)
}
