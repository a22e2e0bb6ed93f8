//! The daemon and the operator CLI: detach and re-attach, a daemon killed with SIGKILL (and one
//! stopped with SIGTERM) resuming its run, API security, no secret in history, verify and metrics.
//! The daemon runs in this process ([`InProcessDaemon`]) except where a test kills it or it
//! drives a whole maintenance run ([`DaemonProcess`]; see `fixtures/daemon.rs` for why).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use waymark_engine::event::Event;
use waymark_engine::log::EventLog;
use waymark_sandbox::read_effects;

use crate::fixtures::daemon::{DaemonProcess, DaemonSettings, InProcessDaemon};
use crate::util::{eventually, temp_dir, waymark, SandboxProcess};

fn start_detached(data: &Path, inventory: &Path) -> String {
    let out = waymark(data)
        .args(["start", "yb-maintenance", "--detach", "--inventory"])
        .arg(inventory)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Attaches and waits for the end; returns (exit code, stdout).
fn attach_to_end(data: &Path, run: &str) -> (Option<i32>, String) {
    let out = waymark(data).args(["attach", run]).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn events_so_far(data: &Path, run: &str) -> usize {
    let out = waymark(data)
        .args(["history", run, "--output", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array().map_or(0, Vec::len)
}

async fn wait_for_events(data: &Path, run: &str, n: usize) {
    eventually(
        Duration::from_secs(60),
        &format!("run {run} reaching {n} events"),
        || (events_so_far(data, run) >= n).then_some(()),
    )
    .await;
}

fn restarts(estate: &Path) -> usize {
    read_effects(estate)
        .iter()
        .filter(|e| e.system == "ssh" && e.action == "restart")
        .count()
}

#[test]
fn client_disconnects_mid_run_and_a_new_client_reattaches_and_sees_the_end() {
    let dir = temp_dir();
    let sb = SandboxProcess::start(&dir.path().join("estate"), 10);
    let data = dir.path().join("data");
    // A process: its run goes through the ELB steps (AWS credentials in its environment).
    let _daemon = DaemonProcess::start(&data, &[]);
    // A client that follows the run, killed mid-run: the run must go on.
    let mut client = waymark(&data)
        .args(["start", "yb-maintenance", "--inventory"])
        .arg(sb.dir.join("inventory.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut run = String::new();
    BufReader::new(client.stdout.take().unwrap())
        .read_line(&mut run)
        .unwrap();
    let run = run.trim().to_owned();
    let mut lines = BufReader::new(client.stderr.take().unwrap()).lines();
    // Wait until the client has printed a few live events, then cut it off.
    let mut seen = 0;
    for line in lines.by_ref() {
        if line.unwrap().contains(" #") {
            seen += 1;
        }
        if seen >= 10 {
            break;
        }
    }
    client.kill().unwrap();
    client.wait().unwrap();
    let (code, out) = attach_to_end(&data, &run);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("completed"), "{out}");
    assert_eq!(restarts(&sb.dir), 9, "every yb process restarted once");
    let ls = waymark(&data)
        .args(["ls", "--state", "completed", "--output", "json"])
        .output()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(rows[0]["run"], run.as_str());
    assert!(
        rows[0]["started_by"].as_str().unwrap().contains("uid"),
        "the peer is recorded as the operator"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_killed_with_sigkill_mid_run_resumes_it_on_restart() {
    let dir = temp_dir();
    let sb = SandboxProcess::start(&dir.path().join("estate"), 10);
    let data = dir.path().join("data");
    let daemon = DaemonProcess::start(&data, &[]);
    let run = start_detached(&data, &sb.dir.join("inventory.toml"));
    wait_for_events(&data, &run, 40).await;
    daemon.sigkill();
    let _daemon = DaemonProcess::start(&data, &[]);
    let (code, out) = attach_to_end(&data, &run);
    assert_eq!(code, Some(0), "{out}");
    for n in ["yb-a-1", "yb-a-2", "yb-a-3", "yb-b-1", "yb-b-2", "yb-b-3"] {
        let c = read_effects(&sb.dir)
            .iter()
            .filter(|e| e.target == format!("{n}/yb-tserver") && e.action == "restart")
            .count();
        assert_eq!(c, 1, "yb-tserver on {n} restarted exactly once");
    }
    assert_eq!(restarts(&sb.dir), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_journals_in_flight_attempts_as_interrupted_and_the_next_start_finishes() {
    let dir = temp_dir();
    // Real-speed estate: after a tserver restart the health gate waits until the new process has
    // been up for a second (the master reports a restarted server ALIVE at once, issue 11), so a
    // wait is still in flight when the daemon gets SIGTERM.
    let sb = SandboxProcess::start(&dir.path().join("estate"), 1);
    // No settle timer between nodes (issue 11): a wait seen in flight is then followed by another
    // step, never by a timer, when the SIGTERM arrives.
    let inventory = sb.dir.join("inventory.toml");
    let text = std::fs::read_to_string(&inventory).unwrap();
    let text: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("settle_ms = ") {
                "settle_ms = 0".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect();
    std::fs::write(&inventory, text.join("\n") + "\n").unwrap();
    let data = dir.path().join("data");
    let daemon = DaemonProcess::start(&data, &[]);
    let run = start_detached(&data, &inventory);
    eventually(
        Duration::from_secs(60),
        "a wait for a restarted server in flight",
        || {
            let out = waymark(&data)
                .args(["show", &run, "--output", "json"])
                .output()
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let waiting_for_a_server = v["steps"].as_array().into_iter().flatten().any(|s| {
                s["status"] == "running"
                    && s["label"]
                        .as_str()
                        // The longest wait of a node (issue 11): its tablets bootstrapping.
                        .is_some_and(|l| {
                            l.contains("is_server_ready") || l.contains("health gate after")
                        })
            });
            waiting_for_a_server.then_some(())
        },
    )
    .await;
    let said = daemon.sigterm();
    assert!(said.contains("interrupted"), "{said}");
    {
        let log = waymark_engine::open_log(&data).unwrap();
        let id = log.runs().unwrap()[0];
        let h = log.read(id).unwrap();
        assert!(
            h.iter()
                .any(|r| matches!(r.event, Event::AttemptInterrupted { .. })),
            "the attempt in flight is journaled as interrupted; daemon said: {said}; history ends: {:?}",
            h.iter().rev().take(6).map(|r| r.event.kind()).collect::<Vec<_>>()
        );
        assert!(log.open_runs().unwrap().contains(&id));
    }
    let _daemon = DaemonProcess::start(&data, &[]);
    let (code, out) = attach_to_end(&data, &run);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(restarts(&sb.dir), 9);
}

#[test]
fn socket_is_owner_only_and_other_users_are_refused() {
    let dir = temp_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    let _daemon = InProcessDaemon::start(&data);
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mode = std::fs::metadata(data.join("waymark.sock"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "socket mode");
    // `nobody` tries to use it, with a copy of the binary it can execute (issue 8, item 16: the
    // target dir may sit in a home folder `nobody` cannot enter).
    let (_bin_dir, bin) = crate::util::waymark_bin_for_everyone();
    let out = std::process::Command::new(&bin)
        .arg("--data-dir")
        .arg(&data)
        .arg("ls")
        .uid(65534)
        .gid(65534)
        .env("HOME", "/tmp")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn http(addr: &str, request: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, resp)
}

#[test]
fn tcp_api_needs_the_token_and_serves_metrics_with_it() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cr3t-token-for-waymark-tests\n").unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let daemon = InProcessDaemon::start_with(&data, DaemonSettings::tcp(&token_file));
    let addr = daemon.tcp.expect("serves TCP").to_string();
    let req =
        |auth: &str| format!("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n");
    let (code, _) = http(&addr, &req(""));
    assert_eq!(code, 401, "no token");
    let (code, _) = http(
        &addr,
        &req("Authorization: Bearer wrong-token-wrong-token\r\n"),
    );
    assert_eq!(code, 401, "wrong token");
    let (code, body) = http(
        &addr,
        &req("Authorization: Bearer s3cr3t-token-for-waymark-tests\r\n"),
    );
    assert_eq!(code, 200, "{body}");
    for metric in [
        "waymark_runs{state=\"running\"}",
        "waymark_steps_total",
        "waymark_retries_total",
        "waymark_compensations_total",
        "waymark_append_seconds_bucket",
    ] {
        assert!(body.contains(metric), "{metric} in {body}");
    }
    let (code, body) = http(
        &addr,
        "GET /v1/runs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 401, "{body}");
}

#[test]
fn no_secret_reaches_the_history_or_the_output() {
    let dir = temp_dir();
    let sb = SandboxProcess::start(&dir.path().join("estate"), 10);
    let data = dir.path().join("data");
    let out = waymark(&data)
        .args(["run", "yb-maintenance", "--inventory"])
        .arg(sb.dir.join("inventory.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap()
        .to_owned();
    let history = waymark(&data)
        .args(["history", &run, "--output", "json"])
        .output()
        .unwrap();
    let key = std::fs::read_to_string(sb.dir.join("id_ed25519")).unwrap();
    let key_body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    for (what, text) in [
        (
            "history",
            String::from_utf8_lossy(&history.stdout).into_owned(),
        ),
        (
            "run stdout",
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ),
        (
            "run stderr",
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
    ] {
        assert!(
            !text.contains("waymark-test-secret-not-real"),
            "AWS secret in {what}"
        );
        assert!(
            !key_body.is_empty() && !text.contains(&key_body[..40]),
            "SSH private key in {what}"
        );
    }
    assert!(
        String::from_utf8_lossy(&history.stdout).contains("id_ed25519"),
        "the key's path (not the key) is in the input"
    );
}

#[test]
fn verify_fails_on_an_edited_log_naming_run_and_position() {
    let dir = temp_dir();
    let sb = SandboxProcess::start(&dir.path().join("estate"), 10);
    let data = dir.path().join("data");
    let out = waymark(&data)
        .args(["run", "yb-maintenance", "--inventory"])
        .arg(sb.dir.join("inventory.toml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let ok = waymark(&data).arg("verify").output().unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    // Edit one record in place: change a byte inside its body.
    let run = {
        let log = waymark_engine::open_log(&data).unwrap();
        let run = log.runs().unwrap()[0];
        let raw = waymark_engine::log::Backend::scan_run(log.backend(), run).unwrap();
        let (seq, mut bytes) = raw[7].clone();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x20;
        waymark_engine::log::Backend::raw_put(log.backend(), run, seq, Some(bytes)).unwrap();
        run
    };
    let bad = waymark(&data).arg("verify").output().unwrap();
    let stdout = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&run.to_string()) && stdout.contains("event #7"),
        "{stdout}"
    );
}

#[test]
fn schedules_are_kept_by_the_daemon_and_validated() {
    let dir = temp_dir();
    let sb = SandboxProcess::start(&dir.path().join("estate"), 10);
    let data = dir.path().join("data");
    let daemon = InProcessDaemon::start(&data);
    let inventory = sb.dir.join("inventory.toml");
    let add = |name: &str, cron: &str, window: &str| {
        waymark(&data)
            .args([
                "schedule",
                "add",
                name,
                "--workflow",
                "yb-maintenance",
                "--cron",
                cron,
                "--window",
                window,
                "--overlap",
                "queue",
                "--catch-up",
                "latest",
                "--inventory",
            ])
            .arg(&inventory)
            .output()
            .unwrap()
    };
    let ok = add("tuesdays", "0 3 * * 2", "90m");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = add("broken", "61 3 * * *", "1h");
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("61 3 * * *"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let dup = add("tuesdays", "0 4 * * 2", "1h");
    assert_eq!(
        dup.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&dup.stderr)
    );
    let pause = waymark(&data)
        .args(["schedule", "pause", "tuesdays"])
        .output()
        .unwrap();
    assert!(pause.status.success());
    let ls = waymark(&data)
        .args(["schedule", "ls", "--output", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["paused"], true);
    assert_eq!(v[0]["cluster"], "sandbox-yb");
    assert_eq!(v[0]["window"], "1h30m");
    // The daemon persists them: a restarted daemon still has the schedule.
    daemon.stop();
    let _daemon = InProcessDaemon::start(&data);
    let ls = waymark(&data)
        .args(["schedule", "ls", "--output", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(v[0]["name"], "tuesdays");
    let rm = waymark(&data)
        .args(["schedule", "rm", "tuesdays"])
        .output()
        .unwrap();
    assert!(rm.status.success());
    let ls = waymark(&data)
        .args(["schedule", "ls", "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&ls.stdout).unwrap(),
        serde_json::json!([])
    );
}

#[test]
fn help_completions_and_man_page_come_from_the_cli_definition() {
    let dir = temp_dir();
    let help = waymark(dir.path()).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    for cmd in [
        "daemon", "start", "attach", "schedule", "run", "resume", "plan", "demo", "history",
        "replay", "verify", "signal",
    ] {
        assert!(text.contains(cmd), "--help lists {cmd}: {text}");
    }
    assert!(text.contains("Exit codes"), "{text}");
    let bash = waymark(dir.path())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(
        bash.status.success() && String::from_utf8_lossy(&bash.stdout).contains("complete -F"),
        "bash completion"
    );
    let man = waymark(dir.path()).arg("man").output().unwrap();
    assert!(
        man.status.success() && String::from_utf8_lossy(&man.stdout).contains(".TH waymark"),
        "man page"
    );
}
