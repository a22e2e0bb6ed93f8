//! What the web pages show, computed from the log: the list of runs (with cluster and
//! operator), a run's summary with its input (secrets redacted), the events of its history and
//! the Mermaid diagram the run page draws as SVG.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{json, Value};
use waymark_engine::core::RunState;
use waymark_engine::event::Event;
use waymark_engine::log::EventLog;
use waymark_engine::{Payload, RunId};

use crate::api::{self, FollowLine};
use crate::view;

/// Keys whose values the web UI never shows (an inventory holds paths and addresses, never
/// secrets; this holds even if one is added by mistake).
const SECRET_WORDS: [&str; 6] = [
    "secret",
    "password",
    "passwd",
    "token",
    "credential",
    "private_key",
];

/// Replaces the value of every key that names a secret with `"(redacted)"`, at any depth.
pub fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let key = k.to_ascii_lowercase();
                if SECRET_WORDS.iter().any(|w| key.contains(w)) {
                    *v = Value::String("(redacted)".into());
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

fn redact_payload(p: &Payload) -> Payload {
    match serde_json::from_str::<Value>(&p.0) {
        Ok(mut v) => {
            redact(&mut v);
            Payload(v.to_string())
        }
        Err(_) => Payload("\"(not JSON)\"".into()),
    }
}

/// A follow line as the web UI receives it: inputs redacted.
pub fn redact_line(line: FollowLine) -> FollowLine {
    match line {
        FollowLine::Event(mut row) => {
            match &mut row.event {
                Event::RunStarted { input, .. } | Event::StepScheduled { input, .. } => {
                    *input = redact_payload(input);
                }
                _ => {}
            }
            if let Event::StepScheduled {
                compensation: Some(c),
                ..
            } = &mut row.event
            {
                c.input = redact_payload(&c.input);
            }
            FollowLine::Event(row)
        }
        other => other,
    }
}

fn cluster_of(st: &RunState) -> Option<String> {
    let v: Value = serde_json::from_str(&st.input.0).ok()?;
    v.pointer("/cluster/name")?.as_str().map(str::to_owned)
}

/// The list page's rows as last computed, each with the version of the run it was computed
/// from ([`RunRows::runs`]): a page refreshes every few seconds per open tab, and a run's
/// history is read again only when it changed.
#[derive(Default)]
pub struct RunRows {
    rows: Mutex<HashMap<RunId, (Option<u64>, Value)>>,
}

impl RunRows {
    /// The list page's rows, newest first: run, workflow, state (and why), cluster, operator,
    /// started, duration. `version(run)` is the run's last sequence number appended since the
    /// daemon started (`None`: unchanged since then; [`crate::daemon::Metrics::last_appended`]):
    /// a run whose version is the one its row was computed from is not read again (a finished
    /// run never is). The version is taken before the run is read, so an append meanwhile
    /// makes the row stale for one refresh at most, never wrong for longer. A run whose
    /// history does not load is listed as damaged (and read again next time). Synchronous
    /// reads: call it off the async runtime (`spawn_blocking`).
    pub fn runs(
        &self,
        log: &dyn EventLog,
        version: impl Fn(RunId) -> Option<u64>,
    ) -> anyhow::Result<Value> {
        let all = log.runs()?;
        let mut cache = self.rows.lock().expect("run rows lock");
        // Runs no longer in the log (none today; a pruned log one day) leave the cache.
        let listed: std::collections::HashSet<RunId> = all.iter().copied().collect();
        cache.retain(|run, _| listed.contains(run));
        let mut rows = Vec::with_capacity(all.len());
        for run in all {
            let now = version(run);
            if let Some((seen, row)) = cache.get(&run) {
                if *seen == now {
                    rows.push(row.clone());
                    continue;
                }
            }
            let loaded = log
                .read(run)
                .map_err(anyhow::Error::from)
                .and_then(|r| Ok(RunState::from_records(&r)?));
            match loaded {
                Ok(st) => {
                    let row = row(run, &st);
                    cache.insert(run, (now, row.clone()));
                    rows.push(row);
                }
                Err(e) => {
                    cache.remove(&run);
                    rows.push(json!({
                        "run": run.to_string(), "workflow": "?", "state": api::DAMAGED,
                        "reason": format!("{e:#}"), "cluster": null, "operator": "?",
                        "started_at": null, "updated_at": null, "duration_s": null, "finished": true,
                    }));
                }
            }
        }
        rows.reverse();
        Ok(json!({ "runs": rows, "states": api::STATES }))
    }
}

fn row(run: RunId, st: &RunState) -> Value {
    json!({
        "run": run.to_string(),
        "workflow": st.workflow,
        "version": st.version,
        "state": view::state_name(st),
        "reason": view::state_reason(st),
        "cluster": cluster_of(st),
        "operator": st.started_by,
        "started_at": st.started_at.to_rfc3339(),
        "updated_at": st.updated_at.to_rfc3339(),
        "duration_s": (st.updated_at - st.started_at).num_milliseconds() as f64 / 1000.0,
        "finished": st.status.is_terminal(),
    })
}

/// The run page's data: `show`'s summary, the cluster, the input (secrets redacted), and the
/// Mermaid diagram of the systems it touched.
pub fn run(log: &dyn EventLog, id: RunId) -> anyhow::Result<Value> {
    let records = log.read(id)?;
    let st = RunState::from_records(&records)?;
    let mut summary = view::summary(&st, &records);
    let mut input: Value = serde_json::from_str(&st.input.0).unwrap_or(Value::Null);
    redact(&mut input);
    summary["cluster"] = json!(cluster_of(&st));
    summary["input"] = input;
    summary["mermaid"] = json!(view::mermaid(records.iter().map(|r| &r.event)));
    summary["finished"] = json!(st.status.is_terminal());
    Ok(summary)
}

/// A follow line as one server-sent event (`data: JSON`, blank line).
pub fn sse_frame(line: &FollowLine) -> String {
    let json = serde_json::to_string(line).unwrap_or_else(|e| {
        serde_json::to_string(&FollowLine::Progress {
            label: "web".into(),
            message: format!("an event could not be encoded: {e}"),
        })
        .unwrap_or_default()
    });
    format!("data: {json}\n\n")
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn secret_keys_are_redacted_at_any_depth() {
        let mut v = serde_json::json!({
            "cluster": {"name": "c1"},
            "notify": [{"webhook_token": "abc", "url_file": "/etc/w"}],
            "aws": {"Secret_Access_Key": "x", "profile": "p"},
            "ssh": {"key_file": "/k"}
        });
        redact(&mut v);
        assert_eq!(v["notify"][0]["webhook_token"], "(redacted)");
        assert_eq!(v["notify"][0]["url_file"], "/etc/w");
        assert_eq!(v["aws"]["Secret_Access_Key"], "(redacted)");
        assert_eq!(v["aws"]["profile"], "p");
        assert_eq!(v["ssh"]["key_file"], "/k");
        assert_eq!(v["cluster"]["name"], "c1");
    }

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use futures::future::BoxFuture;
    use waymark_engine::event::{Event, Record};
    use waymark_engine::log::memory::MemoryBackend;
    use waymark_engine::log::{self, EventLog, Log};
    use waymark_engine::{Payload, RunId};

    use super::RunRows;
    use crate::daemon::MeteredLog;

    /// A log that counts the reads of each run's history.
    struct CountingLog {
        inner: Arc<dyn EventLog>,
        reads: Mutex<Vec<RunId>>,
        listings: AtomicUsize,
    }

    impl EventLog for CountingLog {
        fn append(
            &self,
            run: RunId,
            events: Vec<Event>,
        ) -> BoxFuture<'static, Result<Vec<Record>, log::Error>> {
            self.inner.append(run, events)
        }
        fn read(&self, run: RunId) -> Result<Vec<Record>, log::Error> {
            self.reads.lock().unwrap().push(run);
            self.inner.read(run)
        }
        fn open_runs(&self) -> Result<Vec<RunId>, log::Error> {
            self.inner.open_runs()
        }
        fn runs(&self) -> Result<Vec<RunId>, log::Error> {
            self.listings.fetch_add(1, Ordering::Relaxed);
            self.inner.runs()
        }
    }

    fn started(cluster: &str) -> Event {
        Event::RunStarted {
            workflow: "yb-maintenance".into(),
            version: 1,
            input: Payload(format!(r#"{{"cluster":{{"name":"{cluster}"}}}}"#)),
            started_by: "alice".into(),
        }
    }

    #[tokio::test]
    async fn the_run_list_rereads_only_the_runs_appended_to_since_it_was_computed() {
        let counting = Arc::new(CountingLog {
            inner: Arc::new(Log::new(MemoryBackend::new())),
            reads: Mutex::new(Vec::new()),
            listings: AtomicUsize::new(0),
        });
        // Two runs already in the log when the daemon starts (appended around the metered log).
        let (old_done, old_open) = (RunId::new(), RunId::new());
        counting
            .append(old_done, vec![started("c1")])
            .await
            .unwrap();
        counting
            .append(
                old_done,
                vec![Event::RunCompleted {
                    output: Payload("null".into()),
                }],
            )
            .await
            .unwrap();
        counting
            .append(old_open, vec![started("c2")])
            .await
            .unwrap();
        let (log, metrics) = MeteredLog::wrap(counting.clone());
        let new = RunId::new();
        log.append(new, vec![started("c3")]).await.unwrap();
        let rows = RunRows::default();
        let list = |expect_reads: &[RunId]| {
            counting.reads.lock().unwrap().clear();
            let v = rows
                .runs(log.as_ref(), |r| metrics.last_appended(r))
                .unwrap();
            let mut read = counting.reads.lock().unwrap().clone();
            read.sort();
            let mut expected = expect_reads.to_vec();
            expected.sort();
            assert_eq!(read, expected);
            v
        };
        let first = list(&[old_done, old_open, new]);
        assert_eq!(first["runs"].as_array().unwrap().len(), 3);
        // Nothing changed: nothing is read again.
        let second = list(&[]);
        assert_eq!(first, second);
        // One run moves on: only it is read again, and its row shows it.
        log.append(
            old_open,
            vec![Event::RunFailed {
                error: "boom".into(),
            }],
        )
        .await
        .unwrap();
        let third = list(&[old_open]);
        let row = third["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["run"] == old_open.to_string())
            .unwrap()
            .clone();
        assert_eq!(row["finished"], true, "{row}");
        assert_eq!(row["cluster"], "c2", "{row}");
        let fourth = list(&[]);
        assert_eq!(third, fourth);
        assert_eq!(counting.listings.load(Ordering::Relaxed), 4);
    }
}
