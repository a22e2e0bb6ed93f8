//! Watching a run as it goes, from the engine in this process or from a daemon's follow stream:
//! on a terminal, the runbook as a live checklist (indicatif: the steps done and to come, the
//! current sub-step with a spinner, its elapsed time and retries in place, the current wait's
//! progress as a bar); otherwise, or with `--events`, one line per event (and throttled
//! progress) on stderr.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use waymark_cli::client::Client;
use waymark_cli::exit::ExitStatus;
use waymark_cli::follow::{follow_lines, FollowLine};
use waymark_cli::view::checklist::{Board, Checklist};
use waymark_cli::view::{self, Labels};
use waymark_engine::{Engine, RunId, RunOutcome};

/// How a run is watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Display {
    /// One line per event (pipes, logs, `--events`).
    Events,
    /// The live checklist (a terminal).
    Checklist,
}

impl Display {
    /// The checklist when stdout and stderr are terminals (and `TERM` is not `dumb`) and
    /// `--events` was not given; event lines otherwise.
    pub fn choose(events: bool) -> Display {
        let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
        if !events && !dumb && std::io::stderr().is_terminal() && std::io::stdout().is_terminal() {
            Display::Checklist
        } else {
            Display::Events
        }
    }
}

/// The live checklist's bars: above the current sub-step, its spinner, the wait's bar, below.
struct Live {
    list: Checklist,
    above: ProgressBar,
    spinner: ProgressBar,
    wait: ProgressBar,
    wait_shown: bool,
    below: ProgressBar,
}

fn text_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg}").expect("a valid template")
}

impl Live {
    fn new() -> Live {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let above = multi.add(ProgressBar::new(0).with_style(text_style()));
        let spinner = multi.add(
            ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("  {spinner:.cyan} {msg}")
                    .expect("a valid template")
                    .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ "),
            ),
        );
        spinner.enable_steady_tick(Duration::from_millis(120));
        let wait = multi.add(ProgressBar::new(0).with_style(text_style()));
        let below = multi.add(ProgressBar::new(0).with_style(text_style()));
        Live {
            list: Checklist::new(""),
            above,
            spinner,
            wait,
            wait_shown: false,
            below,
        }
    }

    /// Redraws from the checklist (every line cut to the terminal's width: a wrapped line
    /// would break the redraw).
    fn refresh(&mut self) {
        let board: Board = self.list.board(chrono::Utc::now());
        let width = usize::from(console::Term::stderr().size().1).max(20);
        let fit = |lines: &[String]| {
            lines
                .iter()
                .map(|l| console::truncate_str(l, width, "…").into_owned())
                .collect::<Vec<_>>()
                .join("\n")
        };
        self.above.set_message(fit(&board.above));
        self.spinner.set_message(
            board
                .current
                .map(|c| console::truncate_str(&c, width.saturating_sub(4), "…").into_owned())
                .unwrap_or_default(),
        );
        match board.wait {
            Some(w) if w.len > 0 => {
                if !self.wait_shown {
                    self.wait.set_style(
                        ProgressStyle::with_template(
                            "    [{bar:30.cyan/blue}] {pos}/{len} {wide_msg}",
                        )
                        .expect("a valid template")
                        .progress_chars("=> "),
                    );
                    self.wait_shown = true;
                }
                self.wait.set_length(w.len);
                self.wait.set_position(w.pos);
                self.wait.set_message(w.message);
            }
            other => {
                if self.wait_shown {
                    self.wait.set_style(text_style());
                    self.wait_shown = false;
                }
                let text = other.map_or(String::new(), |w| format!("    {}", w.message));
                self.wait
                    .set_message(console::truncate_str(&text, width, "…").into_owned());
            }
        }
        self.below.set_message(fit(&board.below));
    }

    /// Leaves the final checklist on the screen.
    fn finish(&mut self) {
        self.refresh();
        self.spinner.finish_and_clear();
        self.wait.finish_and_clear();
        self.below.finish_and_clear();
        self.above.finish();
    }
}

/// Shows one follow stream: event lines or the live checklist.
pub struct Printer {
    labels: Labels,
    last_progress: Instant,
    live: Option<Live>,
}

impl Printer {
    /// A printer for `display`.
    pub fn new(display: Display) -> Printer {
        Printer {
            labels: Labels::default(),
            last_progress: Instant::now()
                .checked_sub(Duration::from_secs(10))
                .unwrap_or_else(Instant::now),
            live: (display == Display::Checklist).then(Live::new),
        }
    }

    /// Takes `line`; returns `(outcome line, exit code)` at the end of the stream.
    pub fn print(&mut self, line: FollowLine) -> Option<(String, ExitStatus)> {
        if let Some(live) = &mut self.live {
            match line {
                FollowLine::Event(r) => live.list.apply(r.at, &r.event),
                FollowLine::Progress { label, message } => live.list.progress(&label, &message),
                FollowLine::End { outcome, code } => {
                    live.finish();
                    return Some((outcome, ExitStatus::from_code(u64::from(code))));
                }
            }
            live.refresh();
            return None;
        }
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

    /// Redraws the live checklist (elapsed times move on between events).
    pub fn tick(&mut self) {
        if let Some(live) = &mut self.live {
            live.refresh();
        }
    }

    /// Stops drawing (before a message about leaving), the checklist left as it stands.
    pub fn stop(&mut self) {
        if let Some(live) = &mut self.live {
            live.finish();
        }
        self.live = None;
    }
}

/// Prints a run's history so far, then its new events and progress live, until it stops or the
/// operator presses Ctrl-C (the run then stays unfinished; `waymark resume` continues it).
pub async fn follow(engine: &Engine, run: RunId, display: Display) -> anyhow::Result<RunOutcome> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let producer = follow_lines(engine, run, tx);
    tokio::pin!(producer);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut printer = Printer::new(display);
    let mut redraw = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            outcome = &mut producer => {
                while let Ok(line) = rx.try_recv() {
                    printer.print(line);
                }
                printer.stop();
                return Ok(outcome?.unwrap_or(RunOutcome::Stopped("the follower stopped".into())));
            }
            Some(line) = rx.recv() => {
                printer.print(line);
            }
            _ = redraw.tick() => printer.tick(),
            _ = &mut ctrl_c => {
                printer.stop();
                eprintln!("interrupted: run {run} stays unfinished where it stands; `waymark resume {run}` continues it");
                engine.shutdown().await;
                return Ok(RunOutcome::Stopped("interrupted by the operator".into()));
            }
        }
    }
}

/// Follows a run through the daemon, printing events and progress; Ctrl-C only detaches.
pub async fn attach_daemon(c: &Client, run: &str, display: Display) -> anyhow::Result<ExitStatus> {
    let printer = std::sync::Arc::new(std::sync::Mutex::new(Printer::new(display)));
    let code = std::cell::Cell::new(None);
    let p = printer.clone();
    let follow = c.follow(run, |line| {
        match p.lock().expect("printer lock").print(line) {
            Some((outcome, c)) => {
                println!("{outcome}");
                code.set(Some(c));
                false
            }
            None => true,
        }
    });
    tokio::pin!(follow);
    let mut redraw = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            r = &mut follow => {
                r?;
                break;
            }
            _ = redraw.tick() => printer.lock().expect("printer lock").tick(),
            _ = tokio::signal::ctrl_c() => {
                printer.lock().expect("printer lock").stop();
                eprintln!("detached; the run goes on in the daemon (`waymark attach {run}` to follow it again)");
                return Ok(ExitStatus::Success);
            }
        }
    }
    printer.lock().expect("printer lock").stop();
    if let Some(status) = code.take() {
        Ok(status)
    } else {
        eprintln!("the daemon closed the stream before the run ended; `waymark attach {run}` to follow it again");
        Ok(ExitStatus::Failure)
    }
}
