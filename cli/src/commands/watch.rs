//! Watching a run as it goes: its events (and throttled progress) to stderr, from the engine in
//! this process or from a daemon's follow stream.

use std::time::{Duration, Instant};

use waymark_cli::client::Client;
use waymark_cli::exit::ExitStatus;
use waymark_cli::follow::{follow_lines, FollowLine};
use waymark_cli::view::{self, Labels};
use waymark_engine::{Engine, RunId, RunOutcome};

/// Prints one line of a follow stream (events and throttled progress to stderr). Returns the
/// end line's outcome and exit code when the stream ends.
pub struct Printer {
    labels: Labels,
    last_progress: Instant,
}

impl Default for Printer {
    fn default() -> Self {
        Printer {
            labels: Labels::default(),
            last_progress: Instant::now()
                .checked_sub(Duration::from_secs(10))
                .unwrap_or_else(Instant::now),
        }
    }
}

impl Printer {
    /// Prints `line`; returns `(outcome line, exit code)` at the end of the stream.
    pub fn print(&mut self, line: FollowLine) -> Option<(String, ExitStatus)> {
        match line {
            FollowLine::Event(r) => {
                eprintln!("{}", view::line(r.seq, r.at, &r.event, &mut self.labels));
            }
            FollowLine::Progress { label, message } => {
                if self.last_progress.elapsed() >= Duration::from_millis(900) {
                    eprintln!("             ... {label}: {message}");
                    self.last_progress = Instant::now();
                }
            }
            FollowLine::End { outcome, code } => {
                return Some((outcome, ExitStatus::from_code(u64::from(code))));
            }
        }
        None
    }
}

/// Prints a run's history so far, then its new events and progress live, until it stops or the
/// operator presses Ctrl-C (the run then stays unfinished; `waymark resume` continues it).
pub async fn follow(engine: &Engine, run: RunId) -> anyhow::Result<RunOutcome> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let producer = follow_lines(engine, run, tx);
    tokio::pin!(producer);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut printer = Printer::default();
    loop {
        tokio::select! {
            outcome = &mut producer => {
                while let Ok(line) = rx.try_recv() {
                    printer.print(line);
                }
                return Ok(outcome?.unwrap_or(RunOutcome::Stopped("the follower stopped".into())));
            }
            Some(line) = rx.recv() => {
                printer.print(line);
            }
            _ = &mut ctrl_c => {
                eprintln!("interrupted: run {run} stays unfinished where it stands; `waymark resume {run}` continues it");
                engine.shutdown().await;
                return Ok(RunOutcome::Stopped("interrupted by the operator".into()));
            }
        }
    }
}

/// Follows a run through the daemon, printing events and progress; Ctrl-C only detaches.
pub async fn attach_daemon(c: &Client, run: &str) -> anyhow::Result<ExitStatus> {
    let mut printer = Printer::default();
    let mut code = None;
    let follow = c.follow(run, |line| match printer.print(line) {
        Some((outcome, c)) => {
            println!("{outcome}");
            code = Some(c);
            false
        }
        None => true,
    });
    tokio::select! {
        r = follow => r?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("detached; the run goes on in the daemon (`waymark attach {run}` to follow it again)");
            return Ok(ExitStatus::Success);
        }
    }
    if let Some(status) = code {
        Ok(status)
    } else {
        eprintln!("the daemon closed the stream before the run ended; `waymark attach {run}` to follow it again");
        Ok(ExitStatus::Failure)
    }
}
