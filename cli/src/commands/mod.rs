//! One function per command (each returns the exit status); `dispatch` picks it.

#[cfg(feature = "sandbox")]
mod demo;
mod inspect;
mod recover;
mod runs;
#[cfg(feature = "sandbox")]
mod sandbox;
mod schedules;
#[cfg(feature = "sandbox")]
mod simulate;
mod store;
mod target;
mod watch;
mod web;

use std::path::PathBuf;

use waymark_cli::exit::{usage, ExitStatus};
use waymark_cli::store::Store;

use self::watch::Display;

#[cfg(feature = "sandbox")]
use crate::args::SandboxCommand;
use crate::args::{Cli, Command};

/// Runs a command on `data_dir` and `store`.
pub async fn dispatch(
    command: Command,
    data_dir: PathBuf,
    store: Store,
) -> anyhow::Result<ExitStatus> {
    if store.is_shared() {
        refuse_on_shared_store(&command)?;
    }
    match command {
        Command::Run {
            workflow,
            inventory,
            events,
        } => runs::run(&data_dir, &workflow, &inventory, Display::choose(events)).await,
        Command::Resume { run, events } => {
            runs::resume(&data_dir, run.as_deref(), Display::choose(events)).await
        }
        Command::Plan {
            workflow,
            inventory,
            output,
        } => runs::plan(&workflow, &inventory, output).await,
        #[cfg(feature = "sandbox")]
        Command::Demo {
            fail_at,
            faster,
            time_scale,
            events,
        } => {
            demo::demo(
                &data_dir,
                fail_at,
                faster,
                time_scale,
                Display::choose(events),
            )
            .await
        }
        #[cfg(feature = "sandbox")]
        Command::Simulate {
            workflow,
            crashes,
            combined,
            faults,
            seed,
            budget,
            replay,
            work_dir,
        } => {
            simulate::simulate(&simulate::Request {
                workflow,
                crashes,
                combined,
                faults,
                seed,
                budget,
                replay,
                work_dir,
            })
            .await
        }
        Command::Ls {
            state,
            workflow,
            output,
        } => {
            inspect::ls(
                &data_dir,
                &store,
                state.as_deref(),
                workflow.as_deref(),
                output,
            )
            .await
        }
        Command::Show { run, output } => inspect::show(&data_dir, &store, &run, output).await,
        Command::History { run, output } => inspect::history(&data_dir, &store, &run, output).await,
        Command::Replay { run } => inspect::replay(&data_dir, &store, &run).await,
        Command::Verify { run } => inspect::verify(&data_dir, &store, run.as_deref()).await,
        Command::Store { command } => store::command(&data_dir, &store, &command),
        Command::Migrate => {
            let line = waymark_cli::store::migrate(&store)?;
            println!("{line}");
            Ok(ExitStatus::Success)
        }
        Command::Start {
            workflow,
            inventory,
            detach,
            events,
        } => {
            runs::start(
                &data_dir,
                &workflow,
                &inventory,
                detach,
                Display::choose(events),
            )
            .await
        }
        Command::Attach { run, events } => {
            runs::attach(&data_dir, &store, &run, Display::choose(events)).await
        }
        Command::Daemon {
            listen_tcp,
            token_file,
            inventory_dir,
            http,
            http_allow_remote,
            notify,
            daemon_id,
            lease_ttl,
        } => {
            if !store.is_shared() && (daemon_id.is_some() || lease_ttl.is_some()) {
                return Err(usage(
                    "--daemon-id and --lease-ttl name this daemon among others sharing a store: \
                     they need --store postgres://... (or WAYMARK_STORE)",
                ));
            }
            waymark_cli::daemon::run(waymark_cli::daemon::Options {
                data_dir,
                tcp: listen_tcp,
                token_file,
                inventory_dir,
                http,
                http_allow_remote,
                notify,
                tick: std::time::Duration::from_secs(5),
                store,
                daemon_id: daemon_id.unwrap_or_else(waymark_cli::store::hostname),
                lease_ttl: lease_ttl.unwrap_or(waymark_cli::daemon::DEFAULT_LEASE_TTL),
            })
            .await
        }
        Command::Schedule { command } => schedules::command(&data_dir, command).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "waymark", &mut std::io::stdout());
            Ok(ExitStatus::Success)
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
            Ok(ExitStatus::Success)
        }
        Command::Signal {
            run,
            signal,
            reason,
        } => inspect::signal(&data_dir, &store, &run, &signal, reason).await,
        Command::Hold { run, reason } => {
            inspect::signal(&data_dir, &store, &run, "hold", Some(reason)).await
        }
        Command::Resolve { run, note } => inspect::resolve(&data_dir, &store, &run, &note).await,
        Command::Recover => recover::recover(&data_dir),
        Command::WebLogin => web::login(&data_dir).await,
        #[cfg(feature = "sandbox")]
        Command::Sandbox {
            command:
                SandboxCommand::Up {
                    dir,
                    faster,
                    time_scale,
                },
        } => sandbox::up(&dir, faster, time_scale).await,
    }
}

/// Commands that drive runs in this process or repair the data directory's own log have no
/// meaning on a shared store: they are refused with what to do instead.
fn refuse_on_shared_store(command: &Command) -> anyhow::Result<()> {
    let instead = match command {
        Command::Run { .. } | Command::Resume { .. } => {
            "runs on a shared store are driven by daemons (which hold their leases): start one \
             with `waymark daemon --store URL` and use `waymark start`"
        }
        Command::Recover => {
            "waymark recover salvages the data directory's own log; a PostgreSQL store is \
             repaired with the database's own tools (`waymark verify --store URL` names what is \
             damaged)"
        }
        _ => return Ok(()),
    };
    Err(usage(format!(
        "this command does not take --store: {instead}"
    )))
}
