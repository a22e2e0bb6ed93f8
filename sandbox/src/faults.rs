//! Injected faults: what a simulated system does instead of answering ([`FaultKind`]), the rules
//! that say when ([`Fault`], [`Faults`]), and the [`catalogue`] of what each system can show,
//! for an explorer that tries them all. Plain data, below the estate that holds the rules and the
//! servers that act them out.
//!
//! Systems: `ssh` (the SSH host of a node: at connection, request `NODE`; per command, request
//! `NODE COMMAND`), `yb-admin` (the `yb-admin` and `yb-ts-cli` commands run over SSH, request
//! `NODE COMMAND`), `yb` (a yb-master's HTTP API, request `NODE GET /api/v1/ENDPOINT`), `k8s`
//! (request `METHOD NAMESPACE/NAME[/scale[ replicas=N]]`, `POST selfsubjectaccessreviews`) and
//! `elb` (the AWS action and its parameters).

use serde::{Deserialize, Serialize};

/// The systems faults apply to, in the order of [`catalogue`].
pub const SYSTEMS: [&str; 5] = ["ssh", "yb-admin", "yb", "k8s", "elb"];

/// The delay of the catalogue's [`FaultKind::Delay`] (slow, but inside every caller's timeout).
pub const SLOW_MS: u64 = 2_000;

/// An injected fault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// One of [`SYSTEMS`].
    pub system: String,
    /// Applies when the request (HTTP method and path, AWS action, SSH command, node name) contains
    /// this text; empty matches everything of the system.
    pub matching: String,
    /// What happens.
    pub kind: FaultKind,
    /// How many more times it fires (a transient fault: it clears after that many requests);
    /// `None`: every time (a persistent fault).
    pub remaining: Option<u32>,
}

/// How a fault shows. Unless said otherwise the request is not carried out (no effect).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultKind {
    /// The connection is reset at once, nothing answered: HTTP, a TCP reset as soon as the
    /// request is read; SSH, matched at connection, the TCP connection closed before the banner,
    /// matched on a command, the session disconnected before it runs.
    Refused,
    /// No answer ever: the connection stays open and silent until the caller's own timeout.
    Timeout,
    /// Answer with this HTTP status (5xx, 403, 429; for AWS a 400/429 is `Throttling`).
    Status(u16),
    /// Throttling: Kubernetes 429 `TooManyRequests`, AWS 400 `Throttling`, a yb-master 503
    /// (`Service Unavailable`, its answer to an overloaded web server); SSH as `sshd`'s
    /// `MaxStartups` (the connection closed right after it was accepted); `yb-admin` exits 1
    /// with the RPC layer's `Service unavailable` message.
    Throttle,
    /// The request IS carried out (its effect happens), then the connection breaks mid-answer:
    /// HTTP, the answer is cut after its first bytes; SSH, the session disconnects before the
    /// command's output and exit status are sent.
    Cut,
    /// A well-formed answer with the wrong content, not carried out: HTTP 200 with an HTML
    /// error page where JSON or XML is expected; SSH, exit 0 with output that is not the
    /// command's.
    WrongAnswer,
    /// Carried out and answered, this many ms later (slow).
    Delay(u64),
    /// Close the connection without answering, not carried out (as [`FaultKind::Refused`] once
    /// connected; kept for existing fault files).
    Drop,
    /// SSH and `yb-admin`: the command exits with this status, printing the text on stderr, not
    /// carried out.
    Exit(u32, String),
}

impl FaultKind {
    /// A short name (`refused`, `timeout`, `5xx`, `throttle`, `cut`, `wrong-answer`, `slow`,
    /// `drop`, `exit`), for reports.
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Refused => "refused",
            FaultKind::Timeout => "timeout",
            FaultKind::Status(_) => "5xx",
            FaultKind::Throttle => "throttle",
            FaultKind::Cut => "cut",
            FaultKind::WrongAnswer => "wrong-answer",
            FaultKind::Delay(_) => "slow",
            FaultKind::Drop => "drop",
            FaultKind::Exit(..) => "exit",
        }
    }

    /// Whether the request is carried out despite the fault ([`FaultKind::Cut`],
    /// [`FaultKind::Delay`]).
    pub fn carried_out(&self) -> bool {
        matches!(self, FaultKind::Cut | FaultKind::Delay(_))
    }
}

/// The injected faults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Faults {
    /// Rules, first match wins.
    pub rules: Vec<Fault>,
}

impl Faults {
    /// The first rule of `system` matching `request` that `applies` and still fires, counted
    /// down; `None` when no rule applies.
    pub fn take(
        &mut self,
        system: &str,
        request: &str,
        applies: impl Fn(&Fault) -> bool,
    ) -> Option<FaultKind> {
        let rule = self.rules.iter_mut().find(|r| {
            r.system == system
                && request.contains(&r.matching)
                && r.remaining != Some(0)
                && applies(r)
        })?;
        if let Some(n) = rule.remaining.as_mut() {
            *n -= 1;
        }
        Some(rule.kind.clone())
    }
}

/// Every fault kind each system can show, system by system in the order of [`SYSTEMS`]: refused,
/// timeout, a 5xx (SSH and `yb-admin`: the command fails), throttle, cut mid-answer, wrong
/// answer, slow ([`SLOW_MS`]). An explorer makes each a [`Fault`] with the `matching` of a step's
/// requests and `remaining: Some(k)` (transient) or `None` (persistent).
pub fn catalogue() -> Vec<(String, FaultKind)> {
    let mut all = Vec::new();
    for system in SYSTEMS {
        let failure = match system {
            "ssh" => FaultKind::Exit(
                1,
                "Job for the unit failed because the control process exited with error code.\n"
                    .into(),
            ),
            "yb-admin" => {
                FaultKind::Exit(1, "Error: Timed out waiting for the master leader\n".into())
            }
            "yb" | "elb" => FaultKind::Status(503),
            _ => FaultKind::Status(500),
        };
        for kind in [
            FaultKind::Refused,
            FaultKind::Timeout,
            failure,
            FaultKind::Throttle,
            FaultKind::Cut,
            FaultKind::WrongAnswer,
            FaultKind::Delay(SLOW_MS),
        ] {
            all.push((system.to_owned(), kind));
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_has_every_kind_for_every_system() {
        let all = catalogue();
        for system in SYSTEMS {
            let names: Vec<&str> = all
                .iter()
                .filter(|(s, _)| s == system)
                .map(|(_, k)| k.name())
                .collect();
            let failure = if system.starts_with("yb-") || system == "ssh" {
                "exit"
            } else {
                "5xx"
            };
            assert_eq!(
                names,
                [
                    "refused",
                    "timeout",
                    failure,
                    "throttle",
                    "cut",
                    "wrong-answer",
                    "slow"
                ],
                "{system}"
            );
        }
    }

    #[test]
    fn a_transient_fault_clears_after_k_requests_a_persistent_one_never() {
        let rule = |remaining| Fault {
            system: "k8s".into(),
            matching: "PATCH".into(),
            kind: FaultKind::Throttle,
            remaining,
        };
        let mut faults = Faults {
            rules: vec![rule(Some(2))],
        };
        assert_eq!(faults.take("k8s", "GET prod/fp", |_| true), None);
        assert_eq!(
            faults.take("k8s", "PATCH prod/fp", |_| true),
            Some(FaultKind::Throttle)
        );
        assert_eq!(
            faults.take("k8s", "PATCH prod/fp", |_| true),
            Some(FaultKind::Throttle)
        );
        assert_eq!(faults.take("k8s", "PATCH prod/fp", |_| true), None);
        let mut faults = Faults {
            rules: vec![rule(None)],
        };
        for _ in 0..100 {
            assert_eq!(
                faults.take("k8s", "PATCH prod/fp", |_| true),
                Some(FaultKind::Throttle)
            );
        }
    }
}
