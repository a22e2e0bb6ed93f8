//! Webhook notifications: an operator is told when a run needs approval, failed, was
//! compensated, needs an operator, was suspended or refused, or completed.
//!
//! - [`spec`]: a [`Webhook`] names its payload shape (Slack-compatible or Waymark's JSON) and
//!   where its URL is kept (a file or an environment variable, read at each delivery), never
//!   the URL: no secret reaches a command line, a schedule book, the event log or an output.
//! - [`transition`]: the transitions of a run, read from its history (pure), and the payloads.
//! - [`journal`]: the daemon's durable delivery journal (`DATA_DIR/notifications.jsonl`).
//! - [`run_notifier`]: the daemon's notifier task. It reads the histories of the runs not yet
//!   settled at each tick, and hands every transition not yet done to its webhook's lane: one
//!   task per webhook, delivering in order (per run, transitions in history order), each POST
//!   retried with exponential backoff (the `backoff` crate) on a network error, a 5xx, 408 or
//!   429, given up on another 4xx or after [`RetrySettings::max_elapsed`]. It never blocks a
//!   run: runs journal their events whatever the webhooks do.
//!
//! **Exactly once per transition, across crashes.** Every attempt's result is journaled; a
//! delivery is journaled `delivered` (fdatasync'd) right after its 2xx, and a transition that
//! is journaled done is never sent again, across restarts and SIGKILL. What no sender can make
//! atomic is the instant between the receiver's 2xx and that fdatasync: a crash exactly there
//! sends it again after the restart. Each delivery therefore carries an idempotency key,
//! `RUN/SEQ/KIND` (the `Idempotency-Key` header, and the `idempotency_key` field of the JSON
//! shape), the same for every attempt and every restart, so a receiver that keeps the keys it
//! has seen acts exactly once per transition; Slack does not dedupe, so it sees a duplicate
//! only after a crash in that window. A design choice: at-least-once with a stable key, since
//! "at most once" (journal before sending) would lose a transition a crash interrupts.
//!
//! Which webhooks hear about a run: the daemon's (`waymark daemon --notify WEBHOOK`) for every
//! run, a schedule's (`schedule add --notify WEBHOOK`) and the run's inventory's (`[notify]
//! webhooks`, read from the run's input) for every transition of that run. A daemon webhook is served from the first daemon start that names it (journaled
//! `since`): older transitions are history, not sent.

pub mod journal;
pub mod spec;
pub mod transition;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backoff::backoff::Backoff as _;
use chrono::Utc;
use http_body_util::Full;
use hyper::body::Bytes;
use waymark_engine::event::Record;
use waymark_engine::log::SharedLog;
use waymark_engine::RunId;

pub use journal::{Entry, Journal};
pub use spec::{Format, UrlSource, Webhook};
pub use transition::{payload, transitions, Kind, RunFacts, Transition};

/// How deliveries are retried.
#[derive(Clone, Debug)]
pub struct RetrySettings {
    /// The first delay.
    pub initial: Duration,
    /// The longest delay between attempts.
    pub max_interval: Duration,
    /// After this long, a delivery is given up (journaled `gave_up`).
    pub max_elapsed: Duration,
    /// Each attempt's time limit.
    pub attempt_timeout: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            initial: Duration::from_millis(500),
            max_interval: Duration::from_secs(60),
            max_elapsed: Duration::from_secs(6 * 3600),
            attempt_timeout: Duration::from_secs(15),
        }
    }
}

/// The notifier's settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Webhooks told about every run.
    pub webhooks: Vec<Webhook>,
    /// The journal file.
    pub journal: PathBuf,
    /// How often histories are looked at.
    pub tick: Duration,
    /// Retries.
    pub retry: RetrySettings,
}

/// The webhooks of one run besides the daemon's (a schedule's), from what started it.
pub type RunTargets = Arc<dyn Fn(&RunFacts) -> Vec<Webhook> + Send + Sync>;

/// One delivery for a lane.
struct Job {
    delivery: String,
    transition: Transition,
    facts: RunFacts,
}

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

fn client() -> Client {
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match builder.with_native_roots() {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(
                "webhooks: no CA certificates found ({e}); https:// webhooks will fail until the system's CA store is installed"
            );
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            )
        }
    };
    let connector = builder.https_or_http().enable_http1().build();
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector)
}

/// A delivery's name in the journal: the transition's key and the webhook.
pub fn delivery_name(t: &Transition, webhook: &Webhook) -> String {
    format!("{} {webhook}", t.key())
}

/// Whether an attempt's failure may be retried.
enum AttemptError {
    Retry(String),
    Final(String),
}

async fn attempt(
    client: &Client,
    webhook: &Webhook,
    body: &serde_json::Value,
    key: &str,
    timeout: Duration,
) -> Result<u16, AttemptError> {
    let url = webhook
        .read_url()
        .map_err(|e| AttemptError::Retry(e.to_string()))?;
    let request = hyper::Request::post(url.as_str())
        .header("content-type", "application/json")
        .header("user-agent", concat!("waymark/", env!("CARGO_PKG_VERSION")))
        .header("idempotency-key", key)
        .body(Full::from(body.to_string()))
        .map_err(|_| {
            AttemptError::Final(format!("webhook {webhook}: its URL is not a valid URL"))
        })?;
    let answer = tokio::time::timeout(timeout, client.request(request)).await;
    // Errors name the webhook by where its URL is kept, never by the URL.
    let response = match answer {
        Err(_) => {
            return Err(AttemptError::Retry(format!(
                "no answer within {} s",
                timeout.as_secs()
            )))
        }
        Ok(Err(e)) => {
            let mut text = e.to_string();
            if let Some(source) = std::error::Error::source(&e) {
                text.push_str(&format!(": {source}"));
            }
            return Err(AttemptError::Retry(
                text.replace(url.as_str(), "(webhook URL)"),
            ));
        }
        Ok(Ok(r)) => r,
    };
    let status = response.status().as_u16();
    match status {
        200..=299 => Ok(status),
        408 | 429 | 500..=599 => Err(AttemptError::Retry(format!("HTTP {status}"))),
        _ => Err(AttemptError::Final(format!(
            "HTTP {status} (not retried: check the webhook's URL and format)"
        ))),
    }
}

/// One webhook's lane: its deliveries in order, each retried until done.
async fn lane(
    webhook: Webhook,
    mut jobs: tokio::sync::mpsc::UnboundedReceiver<Job>,
    journal: Arc<Mutex<Journal>>,
    retry: RetrySettings,
) {
    let client = client();
    let record = |e: Entry| {
        if let Err(err) = journal.lock().expect("journal lock").append(e) {
            tracing::error!("{err}");
        }
    };
    while let Some(job) = jobs.recv().await {
        let body = payload(webhook.format, &job.transition, &job.facts);
        let key = job.transition.key();
        let mut backoff = backoff::ExponentialBackoff {
            initial_interval: retry.initial,
            current_interval: retry.initial,
            max_interval: retry.max_interval,
            max_elapsed_time: Some(retry.max_elapsed),
            ..backoff::ExponentialBackoff::default()
        };
        backoff.reset();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match attempt(&client, &webhook, &body, &key, retry.attempt_timeout).await {
                Ok(status) => {
                    tracing::info!(delivery = %job.delivery, status, "notification delivered");
                    record(Entry::Delivered {
                        delivery: job.delivery.clone(),
                        status,
                        attempts,
                        at: Utc::now(),
                    });
                    break;
                }
                Err(AttemptError::Final(error)) => {
                    tracing::warn!(delivery = %job.delivery, "notification not delivered, not retried: {error}");
                    record(Entry::GaveUp {
                        delivery: job.delivery.clone(),
                        error,
                        at: Utc::now(),
                    });
                    break;
                }
                Err(AttemptError::Retry(error)) => {
                    record(Entry::AttemptFailed {
                        delivery: job.delivery.clone(),
                        attempt: attempts,
                        error: error.clone(),
                        at: Utc::now(),
                    });
                    if let Some(delay) = backoff.next_backoff() {
                        tracing::warn!(delivery = %job.delivery, "notification attempt {attempts} failed ({error}); retrying in {delay:?}");
                        tokio::time::sleep(delay).await;
                    } else {
                        record(Entry::GaveUp {
                            delivery: job.delivery.clone(),
                            error: format!("{error} (gave up after {attempts} attempts)"),
                            at: Utc::now(),
                        });
                        break;
                    }
                }
            }
        }
    }
}

/// The webhooks a run's own input names (an inventory's `[notify] webhooks`, validated when
/// the run started); an entry that does not parse is skipped with a warning.
fn inventory_webhooks(run: RunId, records: &[Record]) -> Vec<Webhook> {
    let Some(waymark_engine::event::Event::RunStarted { input, .. }) =
        records.first().map(|r| &r.event)
    else {
        return Vec::new();
    };
    let Ok(value) = serde_json::from_str::<serde_json::Value>(&input.0) else {
        return Vec::new();
    };
    value["notify"]["webhooks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| {
            let text = w.as_str()?;
            match text.parse::<Webhook>() {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!("notifications: run {run}: its inventory's {e}");
                    None
                }
            }
        })
        .collect()
}

/// The notifier's memory between ticks.
struct Notifier {
    log: SharedLog,
    settings: Settings,
    targets: RunTargets,
    journal: Arc<Mutex<Journal>>,
    lanes: BTreeMap<String, tokio::sync::mpsc::UnboundedSender<Job>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    handed: BTreeSet<String>,
    /// Ended runs with nothing to send (no webhook): not read again by this process.
    quiet: BTreeSet<RunId>,
}

impl Notifier {
    fn lane_for(&mut self, webhook: &Webhook) -> tokio::sync::mpsc::UnboundedSender<Job> {
        let name = webhook.to_string();
        if let Some(tx) = self.lanes.get(&name) {
            return tx.clone();
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.tasks.push(tokio::spawn(lane(
            webhook.clone(),
            rx,
            self.journal.clone(),
            self.settings.retry.clone(),
        )));
        self.lanes.insert(name, tx.clone());
        tx
    }

    /// From when `webhook` is served (journaled the first time it is seen).
    fn since(&self, webhook: &Webhook) -> Option<chrono::DateTime<Utc>> {
        served_since(&mut self.journal.lock().expect("journal lock"), webhook)
    }

    fn look(&mut self) {
        let runs = match self.log.runs() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("notifications: cannot list the runs: {e}");
                return;
            }
        };
        for run in runs {
            if self.quiet.contains(&run)
                || self
                    .journal
                    .lock()
                    .expect("journal lock")
                    .is_settled(&run.to_string())
            {
                continue;
            }
            let Ok(records) = self.log.read(run) else {
                continue;
            };
            self.look_at(run, &records);
        }
    }

    fn look_at(&mut self, run: RunId, records: &[Record]) {
        let ended = records.last().is_some_and(|r| {
            r.event.is_terminal()
                || matches!(r.event, waymark_engine::event::Event::RunResolved { .. })
        });
        let facts = RunFacts::of(records);
        // The daemon's webhooks (served since they were first configured), then the
        // schedule's (every transition of the runs it starts).
        let mut webhooks: Vec<(Webhook, bool)> = self
            .settings
            .webhooks
            .iter()
            .map(|w| (w.clone(), true))
            .collect();
        for w in (self.targets)(&facts)
            .into_iter()
            .chain(inventory_webhooks(run, records))
        {
            if !webhooks.iter().any(|(known, _)| *known == w) {
                webhooks.push((w, false));
            }
        }
        if webhooks.is_empty() {
            if ended {
                self.quiet.insert(run);
            }
            return;
        }
        let mut all_done = true;
        for t in transitions(records) {
            for (w, daemon_wide) in &webhooks {
                if *daemon_wide {
                    let Some(since) = self.since(w) else {
                        all_done = false;
                        continue;
                    };
                    if t.at < since {
                        continue;
                    }
                }
                let delivery = delivery_name(&t, w);
                if self
                    .journal
                    .lock()
                    .expect("journal lock")
                    .is_done(&delivery)
                {
                    continue;
                }
                all_done = false;
                if self.handed.insert(delivery.clone()) {
                    let _ = self.lane_for(w).send(Job {
                        delivery,
                        transition: t.clone(),
                        facts: facts.clone(),
                    });
                }
            }
        }
        if ended && all_done {
            let entry = Entry::Settled {
                run: run.to_string(),
            };
            if let Err(e) = self.journal.lock().expect("journal lock").append(entry) {
                tracing::error!("{e}");
            }
        }
    }
}

/// From when `webhook` is served: journaled (`since`, now) the first time it is seen.
fn served_since(journal: &mut Journal, webhook: &Webhook) -> Option<chrono::DateTime<Utc>> {
    let name = webhook.to_string();
    if let Some(at) = journal.since(&name) {
        return Some(at);
    }
    // In whole milliseconds, as records keep their time: a transition written in the same
    // millisecond, after this, must not read as older.
    let now = Utc::now();
    let at = chrono::DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now);
    match journal.append(Entry::Since { webhook: name, at }) {
        Ok(()) => Some(at),
        Err(e) => {
            tracing::error!("{e}");
            None
        }
    }
}

/// The notifier, opened: its journal read, and each daemon webhook's `since` journaled.
pub struct Opened {
    settings: Settings,
    journal: Arc<Mutex<Journal>>,
}

impl Opened {
    /// Opens the journal and journals when each of the daemon's webhooks is first served.
    /// `None` (the error logged): notifications are off. The daemon opens it before it resumes
    /// or starts any run: a run of this daemon start can end within milliseconds, and a
    /// transition written before its webhook's `since` would never be sent.
    pub fn open(settings: Settings) -> Option<Opened> {
        let mut journal = match Journal::open(&settings.journal) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!("notifications are off: {e}");
                return None;
            }
        };
        for w in &settings.webhooks {
            served_since(&mut journal, w);
        }
        Some(Opened {
            settings,
            journal: Arc::new(Mutex::new(journal)),
        })
    }
}

/// Runs the notifier until `stop` turns true: at each tick, every transition of every run not
/// yet settled that some webhook has not had is handed to that webhook's lane.
pub async fn run_notifier(
    opened: Opened,
    log: SharedLog,
    targets: RunTargets,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Opened { settings, journal } = opened;
    let tick = settings.tick;
    let mut n = Notifier {
        log,
        settings,
        targets,
        journal,
        lanes: BTreeMap::new(),
        tasks: Vec::new(),
        handed: BTreeSet::new(),
        quiet: BTreeSet::new(),
    };
    loop {
        n.look();
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    for t in n.tasks {
        t.abort();
    }
}
