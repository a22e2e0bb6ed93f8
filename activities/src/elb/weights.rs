//! Weighted forwards: `elb.read_traffic_weights` and `elb.set_traffic_weights` on a listener's
//! default actions or a rule's actions (checked first, verified by reading back).

use std::collections::BTreeMap;

use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, ForwardActionConfig, TargetGroupTuple,
};
use serde::{Deserialize, Serialize};
use waymark_engine::activity::{self, Activity, Context};

use super::{ElbClient, ElbConnection, Error, SYSTEM};

impl ElbClient {
    /// The actions of a listener (its default actions) or of a rule.
    async fn actions(&self, source: &TrafficSource) -> Result<Vec<Action>, Error> {
        let label = source.label();
        match source {
            TrafficSource::Listener(arn) => {
                let out = self
                    .client
                    .describe_listeners()
                    .listener_arns(arn)
                    .send()
                    .await
                    .map_err(|e| self.site("DescribeListeners", &label).error(&e))?;
                let listener = out
                    .listeners()
                    .iter()
                    .find(|l| l.listener_arn() == Some(arn.as_str()))
                    .ok_or_else(|| Error::NotFound {
                        operation: "DescribeListeners",
                        target: label.clone(),
                        endpoint: self.endpoint.clone(),
                        region: self.region.clone(),
                        detail: "ListenerNotFound: the answer does not describe this listener"
                            .into(),
                    })?;
                Ok(listener.default_actions().to_vec())
            }
            TrafficSource::Rule(arn) => {
                let out = self
                    .client
                    .describe_rules()
                    .rule_arns(arn)
                    .send()
                    .await
                    .map_err(|e| self.site("DescribeRules", &label).error(&e))?;
                let rule = out
                    .rules()
                    .iter()
                    .find(|r| r.rule_arn() == Some(arn.as_str()))
                    .ok_or_else(|| Error::NotFound {
                        operation: "DescribeRules",
                        target: label.clone(),
                        endpoint: self.endpoint.clone(),
                        region: self.region.clone(),
                        detail: "RuleNotFound: the answer does not describe this rule".into(),
                    })?;
                Ok(rule.actions().to_vec())
            }
        }
    }

    /// The weights of the listener's or rule's first forward action.
    pub async fn weights(&self, source: &TrafficSource) -> Result<Weights, Error> {
        let actions = self.actions(source).await?;
        forward_weights(&actions)
            .map(|by_target_group| Weights { by_target_group })
            .ok_or_else(|| Error::NoForwardAction {
                target: source.label(),
                endpoint: self.endpoint.clone(),
            })
    }

    async fn check_target_groups_exist(
        &self,
        source: &TrafficSource,
        arns: &BTreeMap<String, i32>,
    ) -> Result<(), Error> {
        let label = format!(
            "target groups {} of {}",
            arns.keys().cloned().collect::<Vec<_>>().join(", "),
            source.label()
        );
        let out = self
            .client
            .describe_target_groups()
            .set_target_group_arns(Some(arns.keys().cloned().collect()))
            .send()
            .await
            .map_err(|e| self.site("DescribeTargetGroups", &label).error(&e))?;
        let missing: Vec<&String> = arns
            .keys()
            .filter(|arn| {
                !out.target_groups()
                    .iter()
                    .any(|tg| tg.target_group_arn() == Some(arn.as_str()))
            })
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::NotFound {
                operation: "DescribeTargetGroups",
                target: label,
                endpoint: self.endpoint.clone(),
                region: self.region.clone(),
                detail: format!("TargetGroupNotFound: not described: {missing:?}"),
            })
        }
    }

    async fn set_actions(&self, source: &TrafficSource, actions: Vec<Action>) -> Result<(), Error> {
        let label = source.label();
        match source {
            TrafficSource::Listener(arn) => {
                self.client
                    .modify_listener()
                    .listener_arn(arn)
                    .set_default_actions(Some(actions))
                    .send()
                    .await
                    .map_err(|e| self.site("ModifyListener", &label).error(&e))?;
            }
            TrafficSource::Rule(arn) => {
                self.client
                    .modify_rule()
                    .rule_arn(arn)
                    .set_actions(Some(actions))
                    .send()
                    .await
                    .map_err(|e| self.site("ModifyRule", &label).error(&e))?;
            }
        }
        Ok(())
    }
}
/// Where traffic weights live: a listener's default actions or a rule's actions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrafficSource {
    /// A listener ARN.
    Listener(String),
    /// A listener rule ARN.
    Rule(String),
}

impl TrafficSource {
    /// `listener ARN` or `rule ARN`, as messages name it.
    pub fn label(&self) -> String {
        match self {
            TrafficSource::Listener(arn) => format!("listener {arn}"),
            TrafficSource::Rule(arn) => format!("rule {arn}"),
        }
    }
}

/// The weights of a forward action.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weights {
    /// Weight per target group ARN.
    pub by_target_group: BTreeMap<String, i32>,
}

/// The weights of the first forward action (a forward to one target group without a
/// `ForwardConfig` counts as weight 1), `None` without a forward action.
fn forward_weights(actions: &[Action]) -> Option<BTreeMap<String, i32>> {
    let forward = actions
        .iter()
        .find(|a| a.r#type() == Some(&ActionTypeEnum::Forward))?;
    let groups = forward
        .forward_config()
        .map(ForwardActionConfig::target_groups)
        .unwrap_or_default();
    if groups.is_empty() {
        return forward
            .target_group_arn()
            .map(|arn| BTreeMap::from([(arn.to_owned(), 1)]));
    }
    Some(
        groups
            .iter()
            .filter_map(|g| Some((g.target_group_arn()?.to_owned(), g.weight().unwrap_or(1))))
            .collect(),
    )
}

/// `actions` with the first forward action's target groups replaced by `weights` (its
/// stickiness and order kept, every other action unchanged).
fn with_weights(actions: &[Action], weights: &BTreeMap<String, i32>) -> Vec<Action> {
    let mut replaced = false;
    actions
        .iter()
        .map(|a| {
            if replaced || a.r#type() != Some(&ActionTypeEnum::Forward) {
                return a.clone();
            }
            replaced = true;
            let config = ForwardActionConfig::builder()
                .set_target_groups(Some(
                    weights
                        .iter()
                        .map(|(arn, w)| {
                            TargetGroupTuple::builder()
                                .target_group_arn(arn)
                                .weight(*w)
                                .build()
                        })
                        .collect(),
                ))
                .set_target_group_stickiness_config(
                    a.forward_config()
                        .and_then(|c| c.target_group_stickiness_config())
                        .cloned(),
                )
                .build();
            Action::builder()
                .r#type(ActionTypeEnum::Forward)
                .set_order(a.order())
                .forward_config(config)
                .build()
        })
        .collect()
}

/// Input of [`ReadTrafficWeights`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadTrafficWeightsInput {
    /// Where.
    pub conn: ElbConnection,
    /// The listener or rule.
    pub source: TrafficSource,
}

/// `elb.read_traffic_weights`: the target groups and weights of a listener's or rule's forward
/// action (read before a change, to restore them as its compensation).
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadTrafficWeights;

impl ReadTrafficWeights {
    /// Runs with an existing client (explicit credentials).
    pub async fn run_with(
        &self,
        client: &ElbClient,
        ctx: &Context,
        input: &ReadTrafficWeightsInput,
    ) -> Result<Weights, Error> {
        let weights = client.weights(&input.source).await?;
        ctx.heartbeat(Some(format!(
            "{SYSTEM} {}: {:?}",
            input.source.label(),
            weights.by_target_group
        )));
        Ok(weights)
    }
}

impl Activity for ReadTrafficWeights {
    const NAME: &'static str = "elb.read_traffic_weights";
    type Input = ReadTrafficWeightsInput;
    type Output = Weights;

    async fn run(&self, ctx: Context, input: Self::Input) -> Result<Self::Output, activity::Error> {
        let client = ElbClient::connect(&input.conn).await?;
        Ok(self.run_with(&client, &ctx, &input).await?)
    }
}

/// Input of [`SetTrafficWeights`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetTrafficWeightsInput {
    /// Where.
    pub conn: ElbConnection,
    /// The listener or rule.
    pub source: TrafficSource,
    /// The wanted weight of each target group (0..=999); the forward action gets exactly these.
    pub weights: BTreeMap<String, i32>,
}

/// Output of [`SetTrafficWeights`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetTrafficWeightsOutput {
    /// The weights found.
    pub before: Weights,
    /// The weights read back (equal to the wanted ones).
    pub after: Weights,
    /// Whether `ModifyListener` / `ModifyRule` was called.
    pub changed: bool,
}

/// `elb.set_traffic_weights`: sets the weights of a listener's or rule's forward action.
///
/// Reads the current weights first and calls nothing when they already are the wanted ones.
/// Otherwise checks that every target group exists, replaces the forward action's target groups
/// (keeping its stickiness and the other actions), and reads back: a read-back that differs is a
/// retryable failure.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetTrafficWeights;

impl SetTrafficWeights {
    /// Runs with an existing client (explicit credentials).
    pub async fn run_with(
        &self,
        client: &ElbClient,
        ctx: &Context,
        input: &SetTrafficWeightsInput,
    ) -> Result<SetTrafficWeightsOutput, Error> {
        let label = input.source.label();
        validate_weights(&label, &input.weights)?;
        let actions = client.actions(&input.source).await?;
        let before = Weights {
            by_target_group: forward_weights(&actions).ok_or_else(|| Error::NoForwardAction {
                target: label.clone(),
                endpoint: client.endpoint.clone(),
            })?,
        };
        if before.by_target_group == input.weights {
            ctx.heartbeat(Some(format!(
                "{SYSTEM} {label}: already {:?}",
                input.weights
            )));
            return Ok(SetTrafficWeightsOutput {
                after: before.clone(),
                before,
                changed: false,
            });
        }
        client
            .check_target_groups_exist(&input.source, &input.weights)
            .await?;
        tracing::info!(key = %ctx.idempotency_key(), "{SYSTEM}: {label}: weights {:?} -> {:?}", before.by_target_group, input.weights);
        client
            .set_actions(&input.source, with_weights(&actions, &input.weights))
            .await?;
        let after = client.weights(&input.source).await?;
        if after.by_target_group != input.weights {
            return Err(Error::ReadBackDiffers {
                target: label,
                endpoint: client.endpoint.clone(),
                wanted: input.weights.clone(),
                read: after.by_target_group,
            });
        }
        ctx.heartbeat(Some(format!(
            "{SYSTEM} {label}: {:?}",
            after.by_target_group
        )));
        Ok(SetTrafficWeightsOutput {
            before,
            after,
            changed: true,
        })
    }
}

fn validate_weights(label: &str, weights: &BTreeMap<String, i32>) -> Result<(), Error> {
    let invalid = |problem: &str| Error::InvalidWeights {
        target: label.to_owned(),
        weights: weights.clone(),
        problem: problem.to_owned(),
    };
    if weights.is_empty() {
        return Err(invalid(
            "no target group given; give at least one target group ARN with its weight",
        ));
    }
    if weights.values().any(|w| !(0..=999).contains(w)) {
        return Err(invalid("every weight must be between 0 and 999"));
    }
    if weights.len() > 5 {
        return Err(invalid("a forward action takes at most 5 target groups"));
    }
    Ok(())
}

impl Activity for SetTrafficWeights {
    const NAME: &'static str = "elb.set_traffic_weights";
    type Input = SetTrafficWeightsInput;
    type Output = SetTrafficWeightsOutput;

    async fn run(&self, ctx: Context, input: Self::Input) -> Result<Self::Output, activity::Error> {
        let client = ElbClient::connect(&input.conn).await?;
        Ok(self.run_with(&client, &ctx, &input).await?)
    }
}
