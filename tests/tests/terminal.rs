//! What an operator sees in a terminal (issue 14): `waymark demo` under a pseudo-terminal draws
//! the runbook as a live checklist (the nine steps, the current one with its sub-step, a
//! spinner and its elapsed time), read back through a VT100 emulator; piped, it prints event
//! lines, no value cut in the middle, and follow-up commands that run as printed.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use waymark_cli::view::checklist::{fraction, Checklist};
use waymark_cli::view::summarise;
use waymark_engine::event::{Event, StepRef};

use crate::util::{temp_dir, wait_exit, waymark_bin};

const ROWS: u16 = 60;
const COLS: u16 = 200;

/// A pseudo-terminal pair (libc `openpty`): the side `waymark` writes to, and ours.
fn openpty() -> (OwnedFd, OwnedFd) {
    let mut master = -1;
    let mut slave = -1;
    let size = libc::winsize {
        ws_row: ROWS,
        ws_col: COLS,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    #[allow(unsafe_code)]
    // SAFETY: openpty writes two new descriptors into the two integers; the name buffer and
    // termios are null (not wanted), the window size points to a live struct.
    let rc = unsafe {
        libc::openpty(
            &raw mut master,
            &raw mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &raw const size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    #[allow(unsafe_code)]
    // SAFETY: both descriptors were just opened by openpty and are owned by nobody else.
    unsafe {
        (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave))
    }
}

const TITLES: [&str; 9] = [
    "1. switch traffic to zone A",
    "2. stop MirrorMaker2",
    "3. restart yb-master on every node",
    "4. restart yb-tserver on every node",
    "5. wait for load balancing",
    "6. register the new node in the target group",
    "7. restart fp and fp-async",
    "8. start MirrorMaker2 at the recorded replicas",
    "9. switch traffic back to zone B",
];

const SPINNER: &str = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏";

/// A screen in the middle of the run: every runbook step listed, one of them marked current
/// (`▸`), and the current sub-step on a spinner line with its elapsed time.
fn is_live_checklist(screen: &str) -> bool {
    TITLES.iter().all(|t| screen.contains(t))
        && screen
            .lines()
            .any(|l| TITLES.iter().any(|t| l.starts_with(&format!("▸ {t}"))))
        && screen.lines().any(|l| {
            let l = l.trim_start();
            l.chars().next().is_some_and(|c| SPINNER.contains(c)) && l.contains(" s")
        })
}

#[test]
fn on_a_terminal_the_demo_is_a_live_checklist_of_the_nine_steps() {
    let dir = temp_dir();
    let (master, slave) = openpty();
    let child = Command::new(waymark_bin())
        .args(["--data-dir"])
        .arg(dir.path().join("demo"))
        .args(["demo", "--faster", "4"])
        .env("TERM", "xterm-256color")
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave))
        .spawn()
        .expect("spawn waymark demo");
    // Our copy of the terminal's side is closed: reading ends (EIO) once the child exits.
    let screens: Arc<Mutex<(Option<String>, String, usize)>> =
        Arc::new(Mutex::new((None, String::new(), 0)));
    let seen = screens.clone();
    let reader = std::thread::spawn(move || {
        let size = |n: u16| std::num::NonZero::new(n).expect("a screen size");
        let mut parser = vt100::Parser::new(size(ROWS), size(COLS), 0);
        let mut master = std::fs::File::from(master);
        let mut buf = [0u8; 8192];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            parser.process(&buf[..n]);
            // Row by row: indicatif pads its lines to the width, which the emulator would
            // otherwise join as wrapped lines.
            let screen = parser
                .screen()
                .rows(0, COLS)
                .map(|r| r.trim_end().to_owned())
                .collect::<Vec<_>>()
                .join("\n");
            let mut s = seen.lock().unwrap();
            if is_live_checklist(&screen) {
                s.2 += 1;
                if s.0.is_none() {
                    s.0 = Some(screen.clone());
                }
            }
            s.1 = screen;
        }
    });
    let (status, _, _) = wait_exit(child, Duration::from_secs(240));
    reader.join().unwrap();
    let (live, last, frames) = screens.lock().unwrap().clone();
    assert!(status.success(), "demo failed; last screen:\n{last}");
    let live = live.unwrap_or_else(|| panic!("no screen showed the live checklist; last:\n{last}"));
    assert!(
        frames >= 2,
        "the checklist was redrawn as the run went: {frames}\n{live}"
    );
    // One current step, marked once.
    assert_eq!(
        live.lines()
            .filter(|l| l.trim_start().starts_with('▸'))
            .count(),
        1,
        "{live}"
    );
    // At the end: every step done and collapsed, the outcome, no event lines.
    for t in TITLES {
        assert!(
            last.lines().any(|l| l.starts_with(&format!("✔ {t}"))),
            "{t} done:\n{last}"
        );
    }
    assert!(last.contains("run completed"), "{last}");
    assert!(!last.contains("attempt 1 started"), "{last}");
    assert!(
        !last.lines().any(|l| l.starts_with("    ✔")),
        "sub-steps collapsed once done:\n{last}"
    );
}

#[test]
fn piped_the_demo_prints_event_lines_and_commands_that_run_as_printed() {
    let dir = temp_dir();
    let data = dir.path().join("demo data");
    let child = Command::new(waymark_bin())
        .arg("--data-dir")
        .arg(&data)
        .args(["demo", "--faster", "10"])
        .env("PATH", "/usr/bin:/bin")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (status, out, err) = wait_exit(child, Duration::from_secs(240));
    assert!(status.success(), "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "no terminal codes in a pipe:\n{err}"
    );
    assert!(!err.contains('▸'), "{err}");
    for expected in [
        "#0    run started",
        ": scheduled",
        "attempt 1 started",
        "completed ->",
    ] {
        assert!(err.contains(expected), "{expected}:\n{err}");
    }
    // Every output shown is whole JSON, or a summary: never a value cut in the middle.
    for line in err.lines().filter(|l| l.contains(": completed -> ")) {
        let shown = line.split(": completed -> ").nth(1).unwrap();
        assert!(
            serde_json::from_str::<serde_json::Value>(shown).is_ok() || !shown.starts_with("{\""),
            "an output cut mid-value: {line}"
        );
    }
    let run = out.lines().next().unwrap().trim().to_owned();
    // `waymark` is not on this PATH: the commands name the binary itself, runnable as printed.
    let show = err
        .lines()
        .map(str::trim)
        .find(|l| l.ends_with(&format!("show {run}")))
        .unwrap_or_else(|| panic!("no show command:\n{err}"));
    assert!(!show.starts_with("waymark "), "{show}");
    assert!(err.contains("cargo install --path cli --locked"), "{err}");
    let ran = Command::new("sh")
        .args(["-c", show])
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&ran.stdout);
    assert!(
        ran.status.success(),
        "{show}: {}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert!(text.contains("state     completed"), "{text}");
    // `show` groups the steps under their runbook step.
    for t in TITLES {
        assert!(text.contains(t), "{t} in show:\n{text}");
    }
}

#[test]
fn large_outputs_are_summarised_not_cut() {
    let short = r#"{"passed":true}"#;
    assert_eq!(summarise(short), short);
    let long = serde_json::json!({
        "checks": (0..40).map(|i| format!("check {i} passed")).collect::<Vec<_>>(),
        "node": "yb-a-1",
        "message": "x".repeat(300),
    })
    .to_string();
    let s = summarise(&long);
    assert_eq!(
        s,
        "{checks: [40 items], message: <text, 300 characters>, node: \"yb-a-1\"}"
    );
}

#[test]
fn a_wait_reports_its_fraction_and_retries_show_in_place() {
    assert_eq!(
        fraction("load balancer 42.4% done (7 of 12 moves remaining)"),
        Some((42, 100))
    );
    assert_eq!(
        fraction("deployment fp: 1 of 3 replicas Available"),
        Some((1, 3))
    );
    assert_eq!(fraction("waiting for the leader"), None);

    let at = chrono::Utc::now();
    let mut c = Checklist::new("yb-maintenance");
    let step = StepRef::Workflow(4);
    c.apply(
        at,
        &Event::StepScheduled {
            step,
            activity: "k8s.scale_and_wait".into(),
            label: "2. stop MirrorMaker2 mirrormaker2".into(),
            input: waymark_engine::Payload("{}".into()),
            compensation: None,
        },
    );
    c.apply(at, &Event::AttemptStarted { step, attempt: 1 });
    c.apply(
        at,
        &Event::AttemptFailed {
            step,
            attempt: 1,
            error: "HTTP 500 from the API".into(),
            retryable: true,
            next_retry_at: Some(at),
        },
    );
    c.apply(at, &Event::AttemptStarted { step, attempt: 2 });
    c.progress("2. stop MirrorMaker2 mirrormaker2", "1 of 2 pods gone");
    let board = c.board(at + chrono::TimeDelta::seconds(3));
    let current = board.current.unwrap();
    assert!(current.contains("attempt 2"), "{current}");
    assert!(current.contains("HTTP 500 from the API"), "{current}");
    assert!(current.contains("3.0 s"), "{current}");
    let wait = board.wait.unwrap();
    assert_eq!((wait.pos, wait.len), (1, 2));
    assert!(board
        .above
        .iter()
        .any(|l| l.starts_with("▸ 2. stop MirrorMaker2")));
    // Runbook steps with nothing done before the current one are shown as skipped.
    assert!(
        board.above[1].starts_with("- 1. switch traffic to zone A"),
        "{:?}",
        board.above
    );
    assert!(board
        .below
        .iter()
        .any(|l| l.starts_with("· 9. switch traffic back to zone B")));
}

/// `waymark daemon --http` started by hand on a terminal prints its one-time login URL there
/// (and leaves no file of it: only a stdout that is not a terminal gets the file).
#[test]
fn on_a_terminal_the_daemon_prints_its_login_url_and_writes_no_file() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let (master, slave) = openpty();
    let child = crate::util::waymark(&data)
        .args(["daemon", "--http", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(slave))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn waymark daemon");
    let daemon = crate::fixtures::daemon::DaemonProcess { child };
    let (tx, rx) = std::sync::mpsc::channel();
    // The reader ends when the daemon is gone (EIO on the terminal's side).
    std::thread::spawn(move || {
        let mut master = std::fs::File::from(master);
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if let Some(line) = seen.lines().find(|l| l.contains("/?token=")) {
                let _ = tx.send(line.trim().to_owned());
                return;
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the login URL on the terminal (safety limit)");
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(
        !data.join("web-login-url").exists(),
        "no file when the URL went to a terminal"
    );
    daemon.sigkill();
}
