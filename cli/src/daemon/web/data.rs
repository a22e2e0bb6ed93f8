//! What the web pages show, computed from the log: the list of runs (with cluster and
//! operator), a run's summary with its input (secrets redacted), the events of its history and
//! the Mermaid diagram the run page draws as SVG.

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

/// The list page's rows, newest first: run, workflow, state (and why), cluster, operator,
/// started, duration. A run whose history does not load is listed as damaged.
pub fn runs(log: &dyn EventLog) -> anyhow::Result<Value> {
    let mut rows = Vec::new();
    for run in log.runs()? {
        let loaded = log
            .read(run)
            .map_err(anyhow::Error::from)
            .and_then(|r| Ok(RunState::from_records(&r)?));
        rows.push(match loaded {
            Ok(st) => json!({
                "run": run.to_string(),
                "workflow": st.workflow,
                "version": st.version,
                "state": view::state_name(&st),
                "reason": view::state_reason(&st),
                "cluster": cluster_of(&st),
                "operator": st.started_by,
                "started_at": st.started_at.to_rfc3339(),
                "updated_at": st.updated_at.to_rfc3339(),
                "duration_s": (st.updated_at - st.started_at).num_milliseconds() as f64 / 1000.0,
                "finished": st.status.is_terminal(),
            }),
            Err(e) => json!({
                "run": run.to_string(), "workflow": "?", "state": api::DAMAGED,
                "reason": format!("{e:#}"), "cluster": null, "operator": "?",
                "started_at": null, "updated_at": null, "duration_s": null, "finished": true,
            }),
        });
    }
    rows.reverse();
    Ok(json!({ "runs": rows, "states": api::STATES }))
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
}
