//! The one wait helper of the activities: [`PollUntil::poll_until`] on the activity
//! [`Context`] looks at something every `interval` until it is ready, within one [`Deadline`].
//!
//! - **One deadline per wait**: [`Deadline::after_scheduling`] counts from when the step was
//!   first scheduled (journaled in [`Context::scheduled_at`]), so an attempt retried after an
//!   error, or resumed after a restart, waits only for what is left of it.
//! - **Transient errors are looks, not failures**: an error whose [`Transient::is_transient`] is
//!   true (a timeout, a 5xx, throttling, an election in progress) is retried at the next look
//!   within the same deadline; it becomes the last observation. Any other error ends the wait
//!   at once ([`WaitError::Failed`]), for the activity to classify.
//! - **The deadline is final**: the last look happens at the deadline; if it is not ready, the
//!   wait fails with [`Timeout`], which names what was awaited, the deadline and the last
//!   observation. Activities report it as not retryable (another attempt would only wait again).
//! - Each pending look heartbeats its observation; a cancelled run ends the wait
//!   ([`WaitError::Cancelled`]).
//! - **Time is the engine's**: deadlines are read on the context's clock ([`Context::now`]) and
//!   waited for on tokio's time (`waymark_engine::clock::monotonic_now`, `tokio::time::sleep`),
//!   never on the system clock: on paused time (a test, the simulation) an hour's wait passes in
//!   simulated time.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use waymark_engine::activity::Context;
use waymark_engine::clock::monotonic_now;

/// What one look found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Poll<T> {
    /// The condition holds: the wait returns this.
    Ready(T),
    /// Not yet: what was seen (heartbeated, and quoted if the deadline passes).
    Pending(String),
}

/// An error of one look: whether the next look may succeed where this one failed (within the
/// same attempt, on the same connection).
pub trait Transient {
    /// True for errors worth another look inside the deadline.
    fn is_transient(&self) -> bool;
}

/// When a wait ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    /// The wait's whole timeout (the input's).
    pub timeout: Duration,
    /// When it passes (the engine's clock for [`Deadline::after_scheduling`]).
    pub at: DateTime<Utc>,
    /// What was left of it when this value was made.
    pub remaining: Duration,
}

impl Deadline {
    /// The deadline `timeout` after the step was first scheduled: an attempt retried or resumed
    /// later gets only what is left of it (nothing once it passed: one last look).
    pub fn after_scheduling(ctx: &Context, timeout: Duration) -> Self {
        let at = add_saturating(ctx.scheduled_at, timeout);
        let remaining = (at - ctx.now()).to_std().unwrap_or(Duration::ZERO);
        Deadline {
            timeout,
            at,
            remaining: remaining.min(timeout),
        }
    }

    /// The deadline `timeout` from now on the context's clock (a wait inside a step that has
    /// its own deadline).
    pub fn after(ctx: &Context, timeout: Duration) -> Self {
        Deadline {
            timeout,
            at: add_saturating(ctx.now(), timeout),
            remaining: timeout,
        }
    }
}

fn add_saturating(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A wait that reached its deadline.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} not reached by its deadline {} ({timeout:?} after the step was first scheduled; final, not retried); last observation: {last}", .at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))]
pub struct Timeout {
    /// What was awaited.
    pub what: String,
    /// The deadline.
    pub at: DateTime<Utc>,
    /// The wait's whole timeout.
    pub timeout: Duration,
    /// How long this attempt waited.
    pub waited: Duration,
    /// The last observation (a pending state, or the last transient error).
    pub last: String,
}

/// Why [`PollUntil::poll_until`] returned without the condition.
#[derive(Debug, thiserror::Error)]
pub enum WaitError<E> {
    /// The deadline passed.
    #[error(transparent)]
    Timeout(Timeout),
    /// A look failed with an error that is not transient.
    #[error(transparent)]
    Failed(E),
    /// The run was cancelled while waiting.
    #[error("cancelled while waiting for {0}")]
    Cancelled(String),
}

/// The wait helper, on the activity context (an extension trait: the context is the engine's).
pub trait PollUntil {
    /// Calls `look` until it returns [`Poll::Ready`], every `interval` (at least 10 ms), until
    /// `deadline`; see the module documentation for errors and the final look.
    fn poll_until<T, E, F, Fut>(
        &self,
        what: &str,
        deadline: Deadline,
        interval: Duration,
        look: F,
    ) -> impl Future<Output = Result<T, WaitError<E>>> + Send
    where
        T: Send,
        E: Transient + std::fmt::Display + Send,
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = Result<Poll<T>, E>> + Send;
}

impl PollUntil for Context {
    async fn poll_until<T, E, F, Fut>(
        &self,
        what: &str,
        deadline: Deadline,
        interval: Duration,
        mut look: F,
    ) -> Result<T, WaitError<E>>
    where
        T: Send,
        E: Transient + std::fmt::Display + Send,
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = Result<Poll<T>, E>> + Send,
    {
        let start = monotonic_now();
        let end = start + deadline.remaining;
        let interval = interval.max(Duration::from_millis(10));
        loop {
            let last = match look().await {
                Ok(Poll::Ready(v)) => return Ok(v),
                Ok(Poll::Pending(seen)) => seen,
                Err(e) if e.is_transient() => format!("{e} (transient; looking again)"),
                Err(e) => return Err(WaitError::Failed(e)),
            };
            let now = monotonic_now();
            if now >= end {
                return Err(WaitError::Timeout(Timeout {
                    what: what.to_owned(),
                    at: deadline.at,
                    timeout: deadline.timeout,
                    waited: now - start,
                    last,
                }));
            }
            self.heartbeat(Some(format!("{what}: {last}")));
            // The last look happens at the deadline itself, not up to one interval before it.
            if !self.sleep(interval.min(end - now)).await {
                return Err(WaitError::Cancelled(what.to_owned()));
            }
        }
    }
}

impl Transient for crate::ssh::Error {
    /// Only what another command over the same session may fix: a command that timed out, a
    /// failure its caller called retryable. A lost connection ends the attempt (the engine's
    /// retry opens a new session).
    fn is_transient(&self) -> bool {
        match self {
            crate::ssh::Error::CommandTimeout { .. } => true,
            crate::ssh::Error::CommandFailed { retryable, .. } => *retryable,
            _ => false,
        }
    }
}

impl Transient for crate::elb::Error {
    /// Every call is its own HTTP request: whatever another attempt may fix, another look may.
    fn is_transient(&self) -> bool {
        self.is_retryable()
    }
}

impl Transient for crate::k8s::Error {
    /// What another attempt may fix (5xx, 429, 409, transport errors): each read is its own
    /// request.
    fn is_transient(&self) -> bool {
        match self {
            crate::k8s::Error::Api { code, .. } => *code >= 500 || *code == 429 || *code == 409,
            crate::k8s::Error::Transport { .. } => true,
            _ => false,
        }
    }
}

impl Transient for crate::yb::Error {
    /// The master API's errors (unreachable, bad answer, no leader during an election); an SSH
    /// error as [`crate::ssh::Error`] says. A yb-admin failure is not: it is more often the
    /// command's settings (flags, certificates) than a moment, so it ends the attempt and the
    /// engine's retry policy decides, as before.
    fn is_transient(&self) -> bool {
        match self {
            crate::yb::Error::Unreachable { .. }
            | crate::yb::Error::BadAnswer { .. }
            | crate::yb::Error::NoLeader(_) => true,
            crate::yb::Error::Ssh(e) => e.is_transient(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use waymark_engine::clock::TokioClock;
    use waymark_engine::event::{RunId, StepRef};

    use super::*;

    #[derive(Debug)]
    struct LookError {
        transient: bool,
    }

    impl std::fmt::Display for LookError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "look failed (transient: {})", self.transient)
        }
    }

    impl Transient for LookError {
        fn is_transient(&self) -> bool {
            self.transient
        }
    }

    /// A context on paused time: its clock moves with tokio's.
    fn ctx() -> Context {
        let clock = TokioClock::starting_at(
            DateTime::parse_from_rfc3339("2026-01-05T02:00:00Z")
                .unwrap()
                .to_utc(),
        );
        Context::detached_on(RunId::new(), StepRef::Workflow(0), 1, Arc::new(clock))
    }

    #[tokio::test(start_paused = true)]
    async fn returns_when_ready_after_pending_looks() {
        let looks = Arc::new(AtomicU32::new(0));
        let l = looks.clone();
        let start = monotonic_now();
        let got: Result<u32, WaitError<LookError>> = ctx()
            .poll_until(
                "three looks",
                Deadline::after(&ctx(), Duration::from_secs(60)),
                Duration::from_secs(1),
                move || {
                    let l = l.clone();
                    async move {
                        let n = l.fetch_add(1, Ordering::SeqCst) + 1;
                        Ok(if n == 3 {
                            Poll::Ready(n)
                        } else {
                            Poll::Pending(format!("look {n}"))
                        })
                    }
                },
            )
            .await;
        assert_eq!(got.expect("ready"), 3);
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(2),
            "one interval between looks"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_within_the_one_deadline() {
        let looks = Arc::new(AtomicU32::new(0));
        let l = looks.clone();
        let got = ctx()
            .poll_until(
                "a flaky answer",
                Deadline::after(&ctx(), Duration::from_secs(10)),
                Duration::from_secs(1),
                move || {
                    let l = l.clone();
                    async move {
                        let n = l.fetch_add(1, Ordering::SeqCst) + 1;
                        if n < 4 {
                            Err(LookError { transient: true })
                        } else {
                            Ok(Poll::Ready("up"))
                        }
                    }
                },
            )
            .await;
        assert_eq!(got.expect("ready after three transient errors"), "up");
        assert_eq!(looks.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn other_errors_end_the_wait_at_once() {
        let looks = Arc::new(AtomicU32::new(0));
        let l = looks.clone();
        let got: Result<(), _> = ctx()
            .poll_until(
                "a broken answer",
                Deadline::after(&ctx(), Duration::from_secs(10)),
                Duration::from_secs(1),
                move || {
                    let l = l.clone();
                    async move {
                        l.fetch_add(1, Ordering::SeqCst);
                        Err(LookError { transient: false })
                    }
                },
            )
            .await;
        assert!(matches!(
            got,
            Err(WaitError::Failed(LookError { transient: false }))
        ));
        assert_eq!(looks.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_timeout_names_what_the_deadline_and_the_last_observation() {
        let looks = Arc::new(AtomicU32::new(0));
        let l = looks.clone();
        let deadline = Deadline::after(&ctx(), Duration::from_millis(2500));
        let start = monotonic_now();
        let got: Result<(), _> = ctx()
            .poll_until(
                "unit yb-tserver active",
                deadline,
                Duration::from_secs(1),
                move || {
                    let l = l.clone();
                    async move {
                        let n = l.fetch_add(1, Ordering::SeqCst) + 1;
                        if n == 3 {
                            Err(LookError { transient: true })
                        } else {
                            Ok(Poll::Pending(format!("deactivating (look {n})")))
                        }
                    }
                },
            )
            .await;
        let Err(WaitError::<LookError>::Timeout(t)) = got else {
            panic!("expected a timeout, got {got:?}");
        };
        // Looks at 0 s, 1 s, 2 s and the last one at the deadline (2.5 s), not after it.
        assert_eq!(looks.load(Ordering::SeqCst), 4);
        assert_eq!(start.elapsed(), Duration::from_millis(2500));
        assert_eq!(t.waited, Duration::from_millis(2500));
        assert_eq!(t.at, deadline.at);
        let message = t.to_string();
        assert!(message.contains("unit yb-tserver active"), "{message}");
        assert!(message.contains("deactivating (look 4)"), "{message}");
        assert!(
            message.contains(
                &deadline
                    .at
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ),
            "{message}"
        );
        assert!(message.contains("final, not retried"), "{message}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_error_at_the_deadline_is_the_last_observation() {
        let got: Result<(), _> = ctx()
            .poll_until(
                "target healthy",
                Deadline::after(&ctx(), Duration::from_secs(1)),
                Duration::from_secs(1),
                || async { Err(LookError { transient: true }) },
            )
            .await;
        let Err(WaitError::<LookError>::Timeout(t)) = got else {
            panic!("expected a timeout, got {got:?}");
        };
        assert!(
            t.last.contains("look failed (transient: true)"),
            "{}",
            t.last
        );
    }

    /// Over one SSH session, only what another command may fix is a look: a lost connection
    /// ends the attempt (the engine's retry opens a new session) instead of spinning to the
    /// deadline on a dead one.
    #[test]
    fn ssh_errors_are_transient_only_when_the_session_may_still_serve() {
        use crate::ssh::Error;
        let addr = || "h:22".to_owned();
        let timeout = Error::CommandTimeout {
            addr: addr(),
            command: "systemctl show".into(),
            ms: 1,
        };
        let lost = Error::ConnectionLost {
            addr: addr(),
            command: "systemctl show".into(),
            reason: "eof".into(),
        };
        let failed = |retryable| Error::CommandFailed {
            addr: addr(),
            command: "yb-ts-cli is_server_ready".into(),
            exit_status: 1,
            signal: String::new(),
            stderr: String::new(),
            retryable,
        };
        assert!(timeout.is_transient());
        assert!(failed(true).is_transient());
        assert!(!failed(false).is_transient());
        assert!(!lost.is_transient());
        assert!(lost.is_retryable(), "the engine still retries the attempt");
        let yb_lost = crate::yb::Error::Ssh(Error::ConnectionLost {
            addr: addr(),
            command: "x".into(),
            reason: "eof".into(),
        });
        assert!(!yb_lost.is_transient());
        assert!(crate::yb::Error::NoLeader(vec!["m1".into()]).is_transient());
    }

    /// One deadline per wait: an attempt that starts after the deadline passed (a retry, a
    /// resume) looks once and times out; it does not wait a whole timeout again.
    #[tokio::test(start_paused = true)]
    async fn a_deadline_counted_from_scheduling_is_not_renewed_by_a_later_attempt() {
        let mut late = ctx();
        late.scheduled_at = late.now() - chrono::Duration::seconds(120);
        let deadline = Deadline::after_scheduling(&late, Duration::from_secs(60));
        assert_eq!(deadline.remaining, Duration::ZERO);
        assert_eq!(
            deadline.at,
            late.scheduled_at + chrono::Duration::seconds(60)
        );
        let looks = Arc::new(AtomicU32::new(0));
        let l = looks.clone();
        let start = monotonic_now();
        let got: Result<(), WaitError<LookError>> = late
            .poll_until("rollout", deadline, Duration::from_secs(1), move || {
                let l = l.clone();
                async move {
                    l.fetch_add(1, Ordering::SeqCst);
                    Ok(Poll::Pending("1 of 3 updated".into()))
                }
            })
            .await;
        assert!(matches!(got, Err(WaitError::Timeout(_))), "{got:?}");
        assert_eq!(looks.load(Ordering::SeqCst), 1, "one last look");
        assert_eq!(start.elapsed(), Duration::ZERO);

        let mut midway = ctx();
        midway.scheduled_at = midway.now() - chrono::Duration::seconds(45);
        let left = Deadline::after_scheduling(&midway, Duration::from_secs(60)).remaining;
        assert_eq!(
            left,
            Duration::from_secs(15),
            "on the context's clock, exactly"
        );
    }
}
