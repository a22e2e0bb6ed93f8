//! Webhook notifications (issue 14): a local HTTP receiver sees each transition's payload, in
//! order, exactly once, across daemon SIGKILLs (one while a delivery was being refused); the
//! webhook URL (a secret) never reaches the journal, the event log or the daemon's output.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use waymark_workflows::Inventory;

use crate::util::{
    eventually_blocking, http_unix, temp_dir, waymark, DaemonProcess, SandboxProcess,
};

/// What the receiver saw: the path, the `Idempotency-Key` header, the body, and whether it
/// accepted it (200) or refused it (503).
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    key: String,
    body: serde_json::Value,
    accepted: bool,
}

/// A webhook receiver on loopback: answers 200 while `accept` is true, 503 otherwise, and
/// records every request.
struct Receiver {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    accept: Arc<Mutex<bool>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let accept = Arc::new(Mutex::new(true));
        let (s, a) = (seen.clone(), accept.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                    continue;
                }
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_owned();
                let (mut length, mut key) = (0usize, String::new());
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':') {
                        match name.to_ascii_lowercase().as_str() {
                            "content-length" => length = value.trim().parse().unwrap(),
                            "idempotency-key" => value.trim().clone_into(&mut key),
                            _ => {}
                        }
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let accepted = *a.lock().unwrap();
                s.lock().unwrap().push(Seen {
                    path,
                    key,
                    body: serde_json::from_slice(&body).unwrap_or_default(),
                    accepted,
                });
                let status = if accepted {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Receiver { port, seen, accept }
    }

    /// A `json:file:` webhook of this receiver at `/{name}/SECRET`: its URL in the owner-only
    /// file `DIR/{name}-url`.
    fn json_hook(&self, dir: &Path, name: &str) -> String {
        let file = dir.join(format!("{name}-url"));
        std::fs::write(
            &file,
            format!("http://127.0.0.1:{}/{name}/{SECRET}", self.port),
        )
        .unwrap();
        owner_only(&file);
        format!("json:file:{}", file.display())
    }

    fn set_accept(&self, accept: bool) {
        *self.accept.lock().unwrap() = accept;
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The accepted deliveries to `path`: (idempotency key, transition name).
    fn accepted(&self, path: &str) -> Vec<(String, String)> {
        self.seen()
            .into_iter()
            .filter(|s| s.accepted && s.path == path)
            .map(|s| {
                let kind = s.key.rsplit('/').next().unwrap_or_default().to_owned();
                (s.key, kind)
            })
            .collect()
    }
}

/// The secret part of the webhook URLs: must never appear outside the URL file and variable.
const SECRET: &str = "T0KEN-b9e1f0c2-never-logged";

/// Makes a webhook URL file owner-only, as the daemon requires of it.
fn owner_only(file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
}

struct Daemon {
    process: DaemonProcess,
    stderr: PathBuf,
}

fn start_daemon(data: &Path, url_file: &Path, port: u16, n: u32) -> Daemon {
    let stderr = data.with_file_name(format!("daemon-{n}.stderr"));
    let child = waymark(data)
        .arg("daemon")
        .arg("--notify")
        .arg(format!("json:file:{}", url_file.display()))
        .args(["--notify", "slack:env:WAYMARK_TEST_SLACK_HOOK"])
        .env(
            "WAYMARK_TEST_SLACK_HOOK",
            format!("http://127.0.0.1:{port}/slack/{SECRET}"),
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("spawn waymark daemon");
    let sock = data.join("waymark.sock");
    eventually_blocking(
        Duration::from_secs(30),
        "the daemon answering on its socket",
        || std::os::unix::net::UnixStream::connect(&sock).ok(),
    );
    Daemon {
        process: DaemonProcess { child },
        stderr,
    }
}

fn journal(data: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(data.join("notifications.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn journaled(data: &Path, entry: &str, transition: &str) -> usize {
    journal(data)
        .iter()
        .filter(|e| {
            e["entry"] == entry
                && e["delivery"]
                    .as_str()
                    .is_some_and(|d| d.contains(&format!("/{transition} ")))
        })
        .count()
}

#[test]
fn each_transition_reaches_the_receiver_once_in_order_across_daemon_sigkills() {
    let dir = temp_dir();
    let sb = SandboxProcess::start(&dir.path().join("estate"), 10);
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let receiver = Receiver::start();
    let url_file = dir.path().join("hook-url");
    std::fs::write(
        &url_file,
        format!("http://127.0.0.1:{}/json/{SECRET}\n", receiver.port),
    )
    .unwrap();
    owner_only(&url_file);
    let json_path = format!("/json/{SECRET}");
    let slack_path = format!("/slack/{SECRET}");

    // A run that waits for approval: "approval-needed" goes to both webhooks.
    let daemon = start_daemon(&data, &url_file, receiver.port, 1);
    let mut inv = Inventory::load(&sb.dir.join("inventory.toml")).unwrap();
    inv.gates.require_approval = true;
    let body = serde_json::json!({ "workflow": "yb-maintenance", "inventory": inv }).to_string();
    let (code, answer) = http_unix(&data.join("waymark.sock"), "POST", "/v1/runs", Some(&body));
    assert_eq!(code, 200, "{answer}");
    let run = serde_json::from_str::<serde_json::Value>(&answer).unwrap()["run"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually_blocking(
        Duration::from_secs(60),
        "approval-needed delivered to both webhooks and journaled",
        || (journaled(&data, "delivered", "approval-needed") == 2).then_some(()),
    );
    // Killed after those deliveries were journaled: they must not be sent again.
    receiver.set_accept(false);
    daemon.process.sigkill();

    // Restarted, the run is cancelled while the receiver refuses: the "compensated"
    // deliveries fail (journaled), and the daemon is killed again before any succeeds.
    let daemon = start_daemon(&data, &url_file, receiver.port, 2);
    let cancel = waymark(&data)
        .args(["signal", &run, "cancel", "--reason", "notification test"])
        .output()
        .unwrap();
    assert!(
        cancel.status.success(),
        "{}",
        String::from_utf8_lossy(&cancel.stderr)
    );
    // Waited for in the journal, not at the receiver: a lane journals a refusal only after it
    // has read the 503 (and synced the journal), so the receiver sees it first.
    eventually_blocking(
        Duration::from_secs(60),
        "refused attempts of the compensated notification on both webhooks, journaled",
        || {
            let refused = |p: &str| {
                receiver
                    .seen()
                    .iter()
                    .any(|s| !s.accepted && s.path == p && s.key.ends_with("/compensated"))
            };
            let failed = journal(&data)
                .iter()
                .filter(|e| e["entry"] == "attempt_failed")
                .filter_map(|e| e["delivery"].as_str().map(str::to_owned))
                .filter(|d| d.contains("/compensated "))
                .collect::<Vec<_>>();
            let journaled_for = |format: &str| {
                failed
                    .iter()
                    .any(|d| d.contains(&format!("/compensated {format}:")))
            };
            (refused(&json_path)
                && refused(&slack_path)
                && journaled_for("json")
                && journaled_for("slack"))
            .then_some(())
        },
    );
    daemon.process.sigkill();
    assert_eq!(
        journaled(&data, "delivered", "compensated"),
        0,
        "nothing was accepted yet"
    );
    assert!(journaled(&data, "attempt_failed", "compensated") >= 2);

    // Restarted with the receiver accepting: the pending deliveries go out, once.
    receiver.set_accept(true);
    let daemon = start_daemon(&data, &url_file, receiver.port, 3);
    eventually_blocking(
        Duration::from_secs(60),
        "the run settled in the journal (every delivery done)",
        || {
            journal(&data)
                .iter()
                .any(|e| e["entry"] == "settled" && e["run"] == run.as_str())
                .then_some(())
        },
    );
    let stderr3 = daemon.stderr.clone();
    drop(daemon);

    for path in [&json_path, &slack_path] {
        // Journaled as delivered before the first kill: never even attempted again.
        let approval_requests = receiver
            .seen()
            .iter()
            .filter(|s| s.path == *path && s.key.ends_with("/approval-needed"))
            .count();
        assert_eq!(approval_requests, 1, "{path}");
        let accepted = receiver.accepted(path);
        let kinds: Vec<&str> = accepted.iter().map(|(_, k)| k.as_str()).collect();
        assert_eq!(
            kinds,
            ["approval-needed", "compensated"],
            "{path}: each transition once, in order: {accepted:?}"
        );
        assert!(accepted.iter().all(|(key, _)| key.starts_with(&run)));
    }
    // The two shapes.
    let seen = receiver.seen();
    let json = seen
        .iter()
        .find(|s| s.accepted && s.path == json_path && s.key.ends_with("/compensated"))
        .unwrap();
    assert_eq!(json.body["transition"], "compensated", "{:?}", json.body);
    assert_eq!(json.body["run"], run.as_str());
    assert_eq!(json.body["idempotency_key"], json.key.as_str());
    assert_eq!(json.body["cluster"], inv.cluster.name.as_str());
    assert!(json.body["detail"]
        .as_str()
        .unwrap()
        .contains("notification test"));
    let slack = seen
        .iter()
        .find(|s| s.accepted && s.path == slack_path && s.key.ends_with("/approval-needed"))
        .unwrap();
    assert!(
        slack.body["text"]
            .as_str()
            .unwrap()
            .contains("needs approval"),
        "{:?}",
        slack.body
    );
    assert!(slack.body["blocks"].is_array());

    // The secret stays in its file and variable.
    let journal_text = std::fs::read_to_string(data.join("notifications.jsonl")).unwrap();
    assert!(!journal_text.contains(SECRET), "{journal_text}");
    let history = waymark(&data)
        .args(["history", &run, "--output", "json"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&history.stdout).contains(SECRET));
    for n in 1..=3 {
        let err =
            std::fs::read_to_string(data.with_file_name(format!("daemon-{n}.stderr"))).unwrap();
        assert!(!err.contains(SECRET), "daemon {n} logged the URL: {err}");
    }
    assert!(std::fs::read_to_string(stderr3)
        .unwrap()
        .contains("notification delivered"));
}

/// A webhook URL on the command line is refused (it would land in shell history and `ps`),
/// and a daemon whose webhook URL cannot be read does not start.
#[test]
fn webhook_urls_never_come_from_the_command_line_and_bad_ones_stop_the_daemon() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let out = waymark(&data)
        .args(["daemon", "--notify", "https://hooks.example/T0/B0/secret"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("looks like a URL"), "{err}");

    let out = waymark(&data)
        .args([
            "daemon",
            "--notify",
            "json:env:WAYMARK_TEST_NO_SUCH_VARIABLE",
        ])
        .env_remove("WAYMARK_TEST_NO_SUCH_VARIABLE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("WAYMARK_TEST_NO_SUCH_VARIABLE"), "{err}");
    assert!(!data.join("waymark.sock").exists());

    // A URL file others may read gets the token file's check and its wording; the URL is
    // never in the message.
    let url_file = dir.path().join("hook-url");
    std::fs::write(&url_file, format!("https://hooks.example/{SECRET}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&url_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    // (A daemon that took the file would serve on: the safety limit ends it as a failure.)
    let child = waymark(&data)
        .args(["daemon", "--notify"])
        .arg(format!("json:file:{}", url_file.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (status, _, err) = crate::util::wait_exit(child, Duration::from_secs(60));
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "the webhook URL file {} is readable by others (mode 644): `chmod 600 {}`",
            url_file.display(),
            url_file.display()
        )),
        "{err}"
    );
    assert!(!err.contains(SECRET), "{err}");
    assert!(!data.join("waymark.sock").exists());
}

/// A schedule's webhooks hear about the runs that schedule starts, and only those; the
/// daemon's hear about every run. (In-process daemon; a `yb-maintenance` that completes at once.)
#[test]
fn a_schedules_webhook_hears_about_its_runs_only() {
    use waymark_cli::schedule::{NewSchedule, ScheduleBook};
    use waymark_engine::{Engine, Payload};

    use crate::fixtures::daemon::{DaemonSettings, InProcessDaemon};

    let dir = temp_dir();
    let sb = SandboxProcess::start(&dir.path().join("estate"), 10);
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let receiver = Receiver::start();
    let hook = |name: &str| {
        receiver
            .json_hook(dir.path(), name)
            .parse::<waymark_cli::notify::Webhook>()
            .unwrap()
    };
    let inventory = sb.dir.join("inventory.toml");
    let inv = Inventory::load(&inventory).unwrap();
    // One fire time, a minute ago, and the next one a day later: with `* * * * *` a minute
    // boundary during the test started a second scheduled run.
    let fire = chrono::Utc::now() - chrono::TimeDelta::minutes(1);
    let mut book = ScheduleBook::default();
    book.add(
        NewSchedule {
            name: "daily".into(),
            workflow: "yb-maintenance".into(),
            inventory: inventory.clone(),
            cluster: inv.cluster.name.clone(),
            cron: {
                use chrono::Timelike as _;
                format!("{} {} * * *", fire.minute(), fire.hour())
            },
            window: Some(Duration::from_secs(30 * 60)),
            notify: vec![hook("schedule")],
            ..NewSchedule::default()
        },
        chrono::Utc::now() - chrono::TimeDelta::minutes(2),
    )
    .unwrap();
    book.save(&waymark_cli::paths::schedules_path(&data))
        .unwrap();
    let daemon = InProcessDaemon::start_with(
        &data,
        DaemonSettings {
            notify: vec![hook("daemon")],
            engine: Some(Box::new(|log| {
                Engine::builder(log)
                    .workflow_dyn(crate::util::wf("yb-maintenance", 5, |_ctx| async move {
                        Ok(Payload::encode(&"done").unwrap())
                    }))
                    .build()
            })),
            ..DaemonSettings::default()
        },
    );
    let schedule_path = format!("/schedule/{SECRET}");
    let daemon_path = format!("/daemon/{SECRET}");
    let scheduled = eventually_blocking(
        Duration::from_secs(60),
        "the scheduled run's completion at the schedule's webhook",
        || receiver.accepted(&schedule_path).first().cloned(),
    );
    assert_eq!(scheduled.1, "completed");
    let body = serde_json::json!({ "workflow": "yb-maintenance", "inventory": inv }).to_string();
    let (code, answer) = http_unix(&data.join("waymark.sock"), "POST", "/v1/runs", Some(&body));
    assert_eq!(code, 200, "{answer}");
    let by_api = serde_json::from_str::<serde_json::Value>(&answer).unwrap()["run"]
        .as_str()
        .unwrap()
        .to_owned();
    let settled = |run: &str| {
        journal(&data)
            .iter()
            .any(|e| e["entry"] == "settled" && e["run"] == run)
    };
    let scheduled_run = scheduled.0.split('/').next().unwrap().to_owned();
    eventually_blocking(
        Duration::from_secs(60),
        "both runs settled in the journal",
        || (settled(&scheduled_run) && settled(&by_api)).then_some(()),
    );
    daemon.stop();
    let runs_of = |path: &str| -> Vec<String> {
        receiver
            .accepted(path)
            .into_iter()
            .map(|(key, _)| key.split('/').next().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        runs_of(&schedule_path),
        std::slice::from_ref(&scheduled_run)
    );
    let mut both = runs_of(&daemon_path);
    both.sort();
    let mut expected = vec![scheduled_run, by_api];
    expected.sort();
    assert_eq!(both, expected);
}

/// A run that ends the moment the daemon starts (resumed with the signal it waits for already
/// journaled) is told to a webhook that this start names for the first time: the webhook's
/// `since` is journaled before any run is resumed or started, in whole milliseconds as records
/// keep their time. (The CI of `167e859` lost a scheduled run's `completed` this way. With
/// `since` journaled after the resume, this test fails every time; a first version of it, with
/// a due timer, also failed 5 times in 7 while `since` kept nanoseconds: a record of the same
/// millisecond read as older.)
#[test]
fn a_run_that_ends_as_the_daemon_starts_is_told_to_a_new_daemon_webhook() {
    use waymark_engine::log::SharedLog;
    use waymark_engine::{Engine, Payload};

    use crate::fixtures::daemon::{DaemonSettings, InProcessDaemon};

    let dir = temp_dir();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let workflow = || {
        crate::util::wf("go", 1, |ctx| async move {
            let (): () = ctx.wait_for_signal("go").await?;
            Ok(Payload::encode(&"done").unwrap())
        })
    };
    // A run left open by an engine that stopped, then its signal journaled with no driver (as
    // `waymark signal` does without a daemon): it can only end once resumed.
    let run = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let log: SharedLog = waymark_engine::open_log(&data).unwrap();
        let engine = Engine::builder(log.clone())
            .workflow_dyn(workflow())
            .build();
        let run = engine
            .start_named("go", Payload::null(), "t")
            .await
            .unwrap();
        engine.shutdown().await;
        let idle = Engine::builder(log.clone()).build();
        idle.signal(run, "go", Payload::encode(&()).unwrap(), "t")
            .await
            .unwrap();
        assert!(
            log.open_runs().unwrap().contains(&run),
            "the run is left open"
        );
        run
    });
    let receiver = Receiver::start();
    let hook = receiver
        .json_hook(dir.path(), "daemon")
        .parse::<waymark_cli::notify::Webhook>()
        .unwrap();
    let daemon = InProcessDaemon::start_with(
        &data,
        DaemonSettings {
            notify: vec![hook],
            engine: Some(Box::new(move |log| {
                Engine::builder(log).workflow_dyn(workflow()).build()
            })),
            ..DaemonSettings::default()
        },
    );
    let path = format!("/daemon/{SECRET}");
    let told = eventually_blocking(
        Duration::from_secs(60),
        "the resumed run's completion at the daemon's new webhook",
        || receiver.accepted(&path).first().cloned(),
    );
    daemon.stop();
    assert_eq!(told.1, "completed");
    assert_eq!(told.0.split('/').next().unwrap(), run.to_string());
}

/// An inventory's `[notify] webhooks` hear about the runs of that inventory, and only those
/// (issue 14: per inventory); the daemon's hear about the others too. An inventory naming a URL
/// instead of a file or a variable is refused, and the URL appears nowhere in the answer.
#[test]
fn an_inventorys_webhook_hears_about_its_runs_only() {
    use waymark_engine::{Engine, Payload};

    use crate::fixtures::daemon::{DaemonSettings, InProcessDaemon};

    let dir = temp_dir();
    let sb = SandboxProcess::start(&dir.path().join("estate"), 10);
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let receiver = Receiver::start();
    let hook_file = |name: &str| receiver.json_hook(dir.path(), name);
    let inv = Inventory::load(&sb.dir.join("inventory.toml")).unwrap();
    let mut with_hook = inv.clone();
    with_hook.notify.webhooks = vec![hook_file("inventory")];
    let daemon = InProcessDaemon::start_with(
        &data,
        DaemonSettings {
            notify: vec![hook_file("daemon").parse().unwrap()],
            engine: Some(Box::new(|log| {
                Engine::builder(log)
                    .workflow_dyn(crate::util::wf("yb-maintenance", 5, |_ctx| async move {
                        Ok(Payload::encode(&"done").unwrap())
                    }))
                    .build()
            })),
            ..DaemonSettings::default()
        },
    );
    let socket = data.join("waymark.sock");
    let start = |inv: &Inventory| {
        let body =
            serde_json::json!({ "workflow": "yb-maintenance", "inventory": inv }).to_string();
        let (code, answer) = http_unix(&socket, "POST", "/v1/runs", Some(&body));
        assert_eq!(code, 200, "{answer}");
        serde_json::from_str::<serde_json::Value>(&answer).unwrap()["run"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let settled = |run: &str| {
        journal(&data)
            .iter()
            .any(|e| e["entry"] == "settled" && e["run"] == run)
    };
    let with = start(&with_hook);
    eventually_blocking(Duration::from_secs(60), "the first run settled", || {
        settled(&with).then_some(())
    });
    let without = start(&inv);
    eventually_blocking(Duration::from_secs(60), "the second run settled", || {
        settled(&without).then_some(())
    });

    let mut with_url = inv.clone();
    with_url.notify.webhooks = vec![format!("https://hooks.example.com/{SECRET}")];
    let body =
        serde_json::json!({ "workflow": "yb-maintenance", "inventory": with_url }).to_string();
    let (code, answer) = http_unix(&socket, "POST", "/v1/runs", Some(&body));
    daemon.stop();
    assert_ne!(
        code, 200,
        "an inventory with a webhook URL is refused: {answer}"
    );
    assert!(answer.contains("notify.webhooks"), "{answer}");
    assert!(
        !answer.contains(SECRET),
        "the URL is not repeated: {answer}"
    );

    let runs_of = |path: &str| -> Vec<(String, String)> {
        receiver
            .accepted(path)
            .into_iter()
            .map(|(key, kind)| (key.split('/').next().unwrap().to_owned(), kind))
            .collect()
    };
    let inventory_hook = runs_of(&format!("/inventory/{SECRET}"));
    assert_eq!(
        inventory_hook,
        vec![(with.clone(), "completed".to_owned())],
        "the inventory's webhook hears its run's transitions only"
    );
    // The daemon's webhook (served from before the daemon resumes or starts any run) hears
    // both runs, the one without `[notify]` too.
    let mut daemon_runs: Vec<String> = runs_of(&format!("/daemon/{SECRET}"))
        .into_iter()
        .map(|(run, _)| run)
        .collect();
    daemon_runs.sort();
    let mut both = vec![with.clone(), without.clone()];
    both.sort();
    assert_eq!(daemon_runs, both);
}

/// Which transitions a history holds, from canned histories (pure).
#[test]
fn transitions_are_read_from_histories() {
    use waymark_cli::notify::{transitions, Kind};
    use waymark_engine::event::{Event, Payload, StepRef};
    use waymark_engine::testing::{canned, HistoryBuilder};

    let kinds = |h: &HistoryBuilder| -> Vec<(u64, Kind)> {
        transitions(&h.build())
            .into_iter()
            .map(|t| (t.seq, t.kind))
            .collect()
    };
    // Failed at step 2, one of two compensations done: failed, then needs-operator.
    let mut h = canned::compensating_halfway();
    let end = h.build().len() as u64;
    h.push(Event::RunFailed {
        error: "restart failed".into(),
    });
    assert_eq!(kinds(&h), [(11, Kind::Failed), (end, Kind::NeedsOperator)]);
    // Both compensations done: failed, then compensated.
    let mut h = canned::compensating_halfway();
    h.push(Event::StepScheduled {
        step: StepRef::Compensation(1),
        activity: "traffic.undo".into(),
        label: "undo traffic".into(),
        input: Payload("\"A\"".into()),
        compensation: None,
    });
    h.push(Event::AttemptStarted {
        step: StepRef::Compensation(1),
        attempt: 1,
    });
    h.push(Event::StepCompleted {
        step: StepRef::Compensation(1),
        output: Payload("null".into()),
    });
    let end = h.build().len() as u64;
    h.push(Event::RunFailed {
        error: "restart failed".into(),
    });
    assert_eq!(kinds(&h), [(11, Kind::Failed), (end, Kind::Compensated)]);
    // With require_approval: the first timer is the approval's; later ones (settle) are not.
    let mut h = HistoryBuilder::new(
        "yb-maintenance",
        5,
        r#"{"cluster":{"name":"yb-1"},"gates":{"require_approval":true}}"#,
    );
    let t = h.time(9);
    h.push(Event::TimerStarted {
        position: 1,
        fire_at: t,
    });
    h.push(Event::SignalConsumed {
        position: 0,
        name: "approve".into(),
    });
    h.push(Event::TimerStarted {
        position: 2,
        fire_at: t,
    });
    h.push(Event::RunCompleted {
        output: Payload("null".into()),
    });
    assert_eq!(kinds(&h), [(1, Kind::ApprovalNeeded), (4, Kind::Completed)]);
    // Without it, a timer is only a timer; a refusal is told.
    let mut h = HistoryBuilder::new("yb-maintenance", 5, r#"{"cluster":{"name":"yb-1"}}"#);
    h.push(Event::TimerStarted {
        position: 1,
        fire_at: t,
    });
    h.push(Event::RunRefused {
        reasons: vec!["pre-flight: ssh".into()],
    });
    assert_eq!(kinds(&h), [(2, Kind::Refused)]);
}

/// `schedule add --notify`: the webhook is checked where the daemon will read it (its files, its
/// environment), and TCP clients may not name one at all (they would pick the daemon's files).
#[test]
fn schedule_webhooks_are_checked_by_the_daemon_and_refused_over_tcp() {
    use std::os::unix::fs::PermissionsExt;

    use crate::fixtures::daemon::{DaemonSettings, InProcessDaemon};

    let dir = temp_dir();
    let data = dir.path().join("data");
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cr3t-token-for-notify-tests").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The inventory inside --inventory-dir, so that only the webhook is in question.
    let inventories = dir.path().join("inventories");
    std::fs::create_dir_all(&inventories).unwrap();
    let inventory = inventories.join("inv.toml");
    std::fs::write(&inventory, "").unwrap();
    let daemon = InProcessDaemon::start_with(
        &data,
        DaemonSettings {
            inventory_dir: Some(inventories.clone()),
            ..DaemonSettings::tcp(&token)
        },
    );
    let missing = dir.path().join("no-such-hook-url");
    let body = serde_json::json!({
        "name": "nightly", "workflow": "yb-maintenance", "inventory": inventory,
        "cron": "0 3 * * 2", "window": null, "overlap": "skip", "catch_up": "none",
        "timezone": "America/Los_Angeles",
        "notify": [format!("json:file:{}", missing.display())],
    })
    .to_string();
    let (code, answer) = http_unix(
        &data.join("waymark.sock"),
        "POST",
        "/v1/schedules",
        Some(&body),
    );
    assert_eq!(code, 400, "{answer}");
    assert!(answer.contains(&missing.display().to_string()), "{answer}");

    let mut tcp = std::net::TcpStream::connect(daemon.tcp.unwrap()).unwrap();
    write!(
        tcp,
        "POST /v1/schedules HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Authorization: Bearer s3cr3t-token-for-notify-tests\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        answer.contains("TCP clients may not name webhooks"),
        "{answer}"
    );
    daemon.stop();
}

/// An inventory sent over TCP may not name webhooks either: they name the daemon's files and
/// environment variables, which a TCP client must not pick (as for a schedule's webhooks).
#[test]
fn an_inventory_naming_webhooks_is_refused_over_tcp() {
    use std::os::unix::fs::PermissionsExt;

    use crate::fixtures::daemon::{DaemonSettings, InProcessDaemon};

    let dir = temp_dir();
    let data = dir.path().join("data");
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cr3t-token-for-notify-tests").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let daemon = InProcessDaemon::start_with(&data, DaemonSettings::tcp(&token));
    // A real inventory (its files exist), so that only the webhook is in question.
    let sb = SandboxProcess::start(&dir.path().join("estate"), 10);
    let mut inv = Inventory::load(&sb.dir.join("inventory.toml")).unwrap();
    inv.notify.webhooks = vec!["json:env:HOOK_URL".to_owned()];
    let body = serde_json::json!({ "workflow": "yb-maintenance", "inventory": inv }).to_string();
    let mut tcp = std::net::TcpStream::connect(daemon.tcp.unwrap()).unwrap();
    write!(
        tcp,
        "POST /v1/runs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Authorization: Bearer s3cr3t-token-for-notify-tests\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        answer.contains("TCP clients may not name webhooks"),
        "{answer}"
    );
    let (code, runs) = http_unix(&data.join("waymark.sock"), "GET", "/v1/runs", None);
    assert_eq!(code, 200, "{runs}");
    assert!(
        !runs.contains("yb-maintenance"),
        "a refused start starts nothing: {runs}"
    );
    daemon.stop();
}
