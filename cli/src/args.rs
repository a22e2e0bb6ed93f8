//! The command line's definition (clap): every command, its arguments and its help.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Shown after `--help`.
pub const AFTER_HELP: &str = "\
Examples:
  waymark demo                                   # the seed runbook against a simulated estate
  waymark plan yb-maintenance --inventory inv.toml
  waymark run yb-maintenance --inventory inv.toml
  waymark ls --state running
  waymark history RUN --output mermaid
  waymark signal RUN cancel --reason 'window closed'
  waymark hold RUN --reason 'zone B alarms: looking first'
  waymark resolve RUN --note 'weights and MirrorMaker2 restored by hand'
  waymark verify

Exit codes: 0 ok; 1 the run or check ended badly (failed, cancelled, suspended, refused, verify
fault, replay divergence); 2 bad usage or input (invalid inventory, unknown run); 3 the data
directory is unusable (in use by another process, damaged).";

/// Durable maintenance runbooks: every step journaled, never lost, never done twice.
#[derive(Parser, Debug)]
#[command(name = "waymark", version, long_about = None, after_help = AFTER_HELP)]
pub struct Cli {
    /// Where runs are journaled (default: ~/.local/share/waymark)
    #[arg(long, global = true, env = "WAYMARK_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Journal runs in this Postgres database instead of the data directory, shared by
    /// several daemons: postgres://USER@HOST:PORT/DATABASE, never with a password (see
    /// --store-password-file). Create its schema with waymark migrate.
    #[arg(long, global = true, env = "WAYMARK_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// The password of --store, from this owner-only file in libpq's passfile format
    /// (HOST:PORT:DATABASE:USER:PASSWORD); default: PGPASSFILE, then ~/.pgpass.
    #[arg(long, global = true, value_name = "FILE")]
    pub store_password_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats of listings.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people.
    Text,
    /// For programs.
    Json,
}

/// Output formats of `history`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum HistoryOutput {
    /// One line per event.
    Text,
    /// The records as JSON.
    Json,
    /// A Mermaid sequence diagram of the systems the run touched.
    Mermaid,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon: owns the data directory, resumes unfinished runs, runs schedules, serves
    /// the CLI on the data directory's waymark.sock (owner-only) and optionally on TCP with a token.
    Daemon {
        /// Also serve the API (and /metrics) over TCP: a port (bound on 127.0.0.1) or an
        /// address. Plaintext HTTP: keep it on loopback or put it behind TLS termination.
        #[arg(long, value_name = "PORT|ADDR", requires = "token_file", value_parser = waymark_cli::daemon::parse_listen)]
        listen_tcp: Option<std::net::SocketAddr>,
        /// File holding the bearer token TCP clients must send (16+ characters; owned by the
        /// daemon's user, mode 600).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// The folder TCP clients may name inventories in when adding schedules (without it,
        /// only unix-socket clients may add schedules).
        #[arg(long, value_name = "DIR")]
        inventory_dir: Option<PathBuf>,
        /// Serve the web UI (runs, live timelines, approve/hold/resume/cancel) here: a port
        /// (bound on 127.0.0.1) or an address. The one-time login URL (the address with a
        /// token) is printed on stdout when it is a terminal, else written to the owner-only
        /// file web-login-url in the data directory; waymark web-login prints a new one. From a
        /// laptop or phone, use an SSH tunnel.
        #[arg(long, value_name = "PORT|ADDR", value_parser = waymark_cli::daemon::parse_listen)]
        http: Option<std::net::SocketAddr>,
        /// Allow --http on an address other than loopback (plain HTTP: only behind TLS
        /// termination).
        #[arg(long, requires = "http")]
        http_allow_remote: bool,
        /// Tell a webhook about every run's transitions (approval needed, failed, compensated,
        /// needs-operator, suspended, refused, completed): FORMAT:file:PATH or FORMAT:env:VAR,
        /// FORMAT slack or json; the URL is read from that file or variable, never given here.
        /// Repeatable. Deliveries are journaled in the data directory (notifications.jsonl).
        #[arg(long, value_name = "WEBHOOK")]
        notify: Vec<waymark_cli::notify::Webhook>,
        /// With --store: this daemon's name, the owner written on the runs it drives; two live
        /// daemons never share one [default: the host name].
        #[arg(long, value_name = "NAME")]
        daemon_id: Option<String>,
        /// With --store: how long this daemon's hold on a run lasts without renewal (renewed
        /// every third of it); another daemon takes a run over once its lease expired, e.g. 15s,
        /// 1m [default: 15s; at least 2s].
        #[arg(long, value_name = "DURATION", value_parser = parse_lease_ttl)]
        lease_ttl: Option<std::time::Duration>,
    },
    /// Create or upgrade the schema of the Postgres store named by --store (or its variable);
    /// applying it twice changes nothing. Daemons refuse a store whose schema is older than
    /// theirs.
    Migrate,
    /// Move histories between the data directory's own log and the Postgres store of --store,
    /// each run copied byte for byte and read back verified.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Start a run in the daemon and follow it (Ctrl-C or a lost connection only detaches; the
    /// run goes on).
    Start {
        /// Workflow name (yb-maintenance).
        workflow: String,
        /// Inventory file describing the estate.
        #[arg(long, value_name = "FILE")]
        inventory: PathBuf,
        /// Print the run id and return at once.
        #[arg(long)]
        detach: bool,
        /// One line per event instead of the live checklist (the default on a terminal).
        #[arg(long)]
        events: bool,
    },
    /// Show a run's history so far, then follow it live (through the daemon).
    Attach {
        /// Run id (a unique prefix is enough).
        run: String,
        /// One line per event instead of the live checklist (the default on a terminal).
        #[arg(long)]
        events: bool,
    },
    /// Scheduled maintenance (kept by the daemon).
    Schedule {
        #[command(subcommand)]
        command: ScheduleCommand,
    },
    /// Start a run and follow it in the foreground, without a daemon, until it ends (Ctrl-C leaves
    /// it interrupted: waymark resume continues it).
    Run {
        /// Workflow name (yb-maintenance).
        workflow: String,
        /// Inventory file describing the estate.
        #[arg(long, value_name = "FILE")]
        inventory: PathBuf,
        /// One line per event instead of the live checklist (the default on a terminal).
        #[arg(long)]
        events: bool,
    },
    /// Continue runs left unfinished (all of them, or one), following them to the end.
    Resume {
        /// Run id (default: every unfinished run).
        run: Option<String>,
        /// One line per event instead of the live checklist (the default on a terminal).
        #[arg(long)]
        events: bool,
    },
    /// Read the live estate and print every action a run would take; changes nothing.
    Plan {
        /// Workflow name (yb-maintenance).
        workflow: String,
        /// Inventory file.
        #[arg(long, value_name = "FILE")]
        inventory: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Run the seed runbook against a simulated estate on loopback (no external service needed).
    #[cfg(feature = "sandbox")]
    Demo {
        /// Make the sandbox fail this runbook step (1-9) persistently: shows retries, then
        /// compensation bringing traffic and replication back to zone B.
        #[arg(long, value_name = "STEP")]
        fail_at: Option<u8>,
        /// Divide every simulated delay (restarts, replication, rollouts) by this factor.
        #[arg(long, default_value_t = 1)]
        faster: u64,
        /// Multiply every simulated duration by F (1.0: the real systems' durations, a 60 s
        /// heartbeat timeout lasts 60 s); default 0.02 divided by --faster.
        #[arg(long, value_name = "F")]
        time_scale: Option<f64>,
        /// One line per event instead of the live checklist (the default on a terminal).
        #[arg(long)]
        events: bool,
    },
    /// Explore a workflow on the simulated estate in simulated time: every crash point of the
    /// engine process and every fault of every system at every step that touches it, each
    /// execution checked against the runbook's invariants; violations are shrunk to a minimal
    /// reproduction. The last line reads "explored N schedules, V violations"; exit 0 only when
    /// V is 0.
    #[cfg(feature = "sandbox")]
    Simulate {
        /// Workflow name (yb-maintenance).
        workflow: String,
        /// Crash points: all (every append boundary, before and after its flush, and right
        /// after each effect on the estate, one crash each), N (every combination of up to N
        /// stacked crashes) or 0.
        #[arg(long, default_value = "all")]
        crashes: String,
        /// Schedules stacking a fault and a crash: none, all (every crash point of each
        /// transient fault's retry and of each persistent fault's compensation) or N (a
        /// deterministic sample of about N: every k-th of all).
        #[arg(long, default_value = "none", value_name = "all|none|N")]
        combined: String,
        /// Faults: all, none, or a comma-separated list of SYSTEM (ssh, yb-admin, yb, k8s, elb)
        /// or SYSTEM.KIND (refused, timeout, 5xx, throttle, cut, wrong-answer, slow); unless
        /// none, also the estate's scenarios (a slow bootstrap, zone B unhealthy, weights
        /// changed by hand).
        #[arg(long, default_value = "all")]
        faults: String,
        /// The seed of every random choice; with --replay, a reproduction a violation printed
        /// (SEED/SCHEDULE).
        #[arg(long, default_value = "0")]
        seed: String,
        /// Wall-clock budget (90s, 10m, 1h): no new schedule starts once it is spent.
        #[arg(long, value_name = "DURATION")]
        budget: Option<String>,
        /// Run only the schedule of --seed and print its full history.
        #[arg(long)]
        replay: bool,
        /// The estate's folder, emptied before each execution (default: a new folder in the
        /// temp directory, removed at the end).
        #[arg(long, value_name = "DIR")]
        work_dir: Option<PathBuf>,
    },
    /// Print a new one-time login URL of the daemon's web UI (daemon --http), asked of the
    /// daemon over its owner-only socket: it logs one browser in; the previous URL stops
    /// working, sessions stay.
    WebLogin,
    /// List runs.
    Ls {
        /// Only runs in this state (running, held, compensating, suspended, completed, failed,
        /// cancelled, refused, needs-operator, damaged).
        #[arg(long)]
        state: Option<String>,
        /// Only runs of this workflow.
        #[arg(long)]
        workflow: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Summary of one run: state, steps, attempts, durations, current step.
    Show {
        /// Run id (a unique prefix is enough).
        run: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// The full event history of a run.
    History {
        /// Run id (a unique prefix is enough).
        run: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = HistoryOutput::Text)]
        output: HistoryOutput,
    },
    /// Re-execute a run's workflow code against its history without touching the estate, and
    /// report whether it is deterministic (divergences shown side by side).
    Replay {
        /// Run id (a unique prefix is enough).
        run: String,
    },
    /// Check checksums and hash chains of one run or of the whole log; exits 1 on any fault.
    Verify {
        /// Run id (default: every run).
        run: Option<String>,
    },
    /// Send a signal to a run: approve, pause, hold, resume, or cancel (which compensates).
    Signal {
        /// Run id (a unique prefix is enough).
        run: String,
        /// The signal.
        #[arg(value_parser = ["approve", "pause", "hold", "resume", "cancel"])]
        signal: String,
        /// Why (recorded in the history).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Hold a run where it stands: it stops after the step in flight and waits for an operator.
    ///
    /// Unlike pause, a hold starts nothing while it lasts: no new step or attempt, and no
    /// compensation either (a step that fails under a hold has its failure journaled and the
    /// rollback waits). The run stays unfinished, so its cluster stays locked. Next: waymark
    /// signal RUN resume (goes on where it stopped) or waymark signal RUN cancel (compensates).
    /// Pause only holds attempts: a failure under a pause still starts the compensation.
    Hold {
        /// Run id (a unique prefix is enough).
        run: String,
        /// Why (journaled with your name; shown by ls and show).
        #[arg(long)]
        reason: String,
    },
    /// Free the cluster of a run that ended with COMPENSATION INCOMPLETE (state needs-operator),
    /// after checking and repairing the estate by hand; the note is journaled with your name.
    Resolve {
        /// Run id (a unique prefix is enough).
        run: String,
        /// What you checked or repaired (recorded in the history).
        #[arg(long)]
        note: String,
    },
    /// Salvage a damaged event log: copy every record that verifies into a fresh store, keep the
    /// damaged one beside it (log.damaged-TIME in the data directory), and say which runs lost
    /// what. Needs the data directory to itself: stop the daemon first.
    Recover,
    /// The simulated estate.
    #[cfg(feature = "sandbox")]
    Sandbox {
        #[command(subcommand)]
        command: SandboxCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, ...).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
}

/// `--lease-ttl`: a duration like 15s or 1m, at least 2 s (renewed every third of it).
fn parse_lease_ttl(text: &str) -> Result<std::time::Duration, String> {
    let ttl = waymark_cli::schedule::parse_duration(text).map_err(|e| e.to_string())?;
    if ttl < std::time::Duration::from_secs(2) {
        return Err(format!(
            "{text}: too short; a lease must last at least 2s (it is renewed every third of it)"
        ));
    }
    Ok(ttl)
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Copy every run of the data directory's log into the store (runs it already has are left
    /// alone); open runs are owned by no daemon there, and the first daemon to scan takes them
    /// over. Stop the data directory's daemon first.
    Import,
    /// Copy every run of the store into the data directory's log (runs it already has are left
    /// alone). Stop the daemons of the store first if its open runs are to be driven from the
    /// data directory.
    Export,
}

#[derive(Subcommand, Debug)]
pub enum ScheduleCommand {
    /// Add a schedule: runs WORKFLOW on INVENTORY at each CRON time (5 fields, in --timezone,
    /// default UTC), starting only within WINDOW of that time and never while its cluster has a
    /// run going.
    ///
    /// DST: a time in the hour skipped when clocks go forward fires once, when that hour ends
    /// (02:30 on the spring-forward day of Europe/Berlin fires at 03:00); a time in the
    /// hour repeated when clocks go back fires once, at its first occurrence.
    Add {
        /// Schedule name.
        name: String,
        /// Workflow name.
        #[arg(long)]
        workflow: String,
        /// Inventory file.
        #[arg(long, value_name = "FILE")]
        inventory: PathBuf,
        /// Cron expression, e.g. "0 3 * * 2" (Tuesdays 03:00 in --timezone).
        #[arg(long)]
        cron: String,
        /// The IANA time zone the cron expression is read in, e.g. Europe/Berlin or
        /// US/Pacific [default: UTC].
        #[arg(long, value_name = "ZONE")]
        timezone: Option<String>,
        /// Tell a webhook about the transitions of the runs this schedule starts:
        /// FORMAT:file:PATH or FORMAT:env:VAR (FORMAT slack or json; the daemon reads the URL
        /// there). Repeatable.
        #[arg(long, value_name = "WEBHOOK")]
        notify: Vec<waymark_cli::notify::Webhook>,
        /// How long after its time a run may still start, e.g. 30m, 2h [default: 1h].
        #[arg(long)]
        window: Option<String>,
        /// When its cluster is busy at that time: skip the run, or queue it (within its window).
        #[arg(long, value_parser = ["skip", "queue"], default_value = "skip")]
        overlap: String,
        /// Times missed while the daemon was down: none, or only the latest (if its window is open).
        #[arg(long = "catch-up", value_parser = ["none", "latest"], default_value = "none")]
        catch_up: String,
    },
    /// List schedules.
    Ls {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Remove a schedule.
    Rm {
        /// Schedule name.
        name: String,
    },
    /// Stop a schedule from starting runs.
    Pause {
        /// Schedule name.
        name: String,
    },
    /// Let a paused schedule start runs again (missed times are not made up).
    Unpause {
        /// Schedule name.
        name: String,
    },
}

#[cfg(feature = "sandbox")]
#[derive(Subcommand, Debug)]
pub enum SandboxCommand {
    /// Start the sandbox estate in this process and keep it up until interrupted; writes
    /// DIR/inventory.toml once it is listening.
    Up {
        /// Folder for its state, keys, effects.jsonl and inventory.toml.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Divide every simulated delay by this factor (tests use fast estates).
        #[arg(long, default_value_t = 1)]
        faster: u64,
        /// Multiply every simulated duration by F (1.0: the real systems' durations); default
        /// 0.02 divided by --faster.
        #[arg(long, value_name = "F")]
        time_scale: Option<f64>,
    },
}
