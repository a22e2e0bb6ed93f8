//! `waymark schedule add|ls|rm|pause|unpause`: through the daemon when one serves the data
//! directory (it keeps the schedules), else on `DATA_DIR/schedules.json` for the next daemon start.

use std::path::Path;

use chrono::Utc;
use hyper::Method;
use waymark_cli::api::{new_schedule, schedule_rows, ScheduleAddRequest};
use waymark_cli::client::Client;
use waymark_cli::exit::ExitStatus;
use waymark_cli::paths::schedules_path;
use waymark_cli::schedule::ScheduleBook;

use crate::args::{Output, ScheduleCommand};

/// Runs a schedule command.
pub async fn command(data_dir: &Path, command: ScheduleCommand) -> anyhow::Result<ExitStatus> {
    let client = Client::connect(data_dir).await?;
    let path = schedules_path(data_dir);
    match command {
        ScheduleCommand::Add {
            name,
            workflow,
            inventory,
            cron,
            window,
            overlap,
            catch_up,
        } => {
            let inventory = std::path::absolute(&inventory)?;
            let body = ScheduleAddRequest {
                name: name.clone(),
                workflow,
                inventory,
                cron,
                window,
                overlap,
                catch_up,
            };
            if let Some(c) = client {
                let _: serde_json::Value = c
                    .json(
                        Method::POST,
                        "/v1/schedules",
                        Some(serde_json::to_value(&body)?),
                    )
                    .await?;
            } else {
                std::fs::create_dir_all(data_dir)?;
                let mut book = ScheduleBook::load(&path)?;
                book.add(new_schedule(&body)?, Utc::now())?;
                book.save(&path)?;
                eprintln!(
                    "no daemon serves {}: saved for its next start",
                    data_dir.display()
                );
            }
            println!("schedule {name} added");
        }
        ScheduleCommand::Ls { output } => {
            let list: Vec<serde_json::Value> = match client {
                Some(c) => c.json(Method::GET, "/v1/schedules", None).await?,
                None => schedule_rows(&ScheduleBook::load(&path)?),
            };
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                Output::Text => {
                    println!(
                        "{:<16} {:<16} {:<14} {:<6} {:<6} {:<7} {:<7} NEXT",
                        "NAME", "WORKFLOW", "CRON", "WINDOW", "OVERLAP", "CATCHUP", "PAUSED"
                    );
                    for s in list {
                        let t = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
                        println!(
                            "{:<16} {:<16} {:<14} {:<6} {:<6} {:<7} {:<7} {}",
                            t("name"),
                            t("workflow"),
                            t("cron"),
                            t("window"),
                            t("overlap"),
                            t("catch_up"),
                            s["paused"],
                            t("next")
                        );
                        let f = &s["last_failure"];
                        if let Some(message) = f["message"].as_str() {
                            println!(
                                "  last failure at {} (fire time {}): {message}",
                                f["at"].as_str().unwrap_or_default(),
                                f["fire_time"].as_str().unwrap_or_default()
                            );
                        }
                    }
                }
            }
        }
        ScheduleCommand::Rm { name } => {
            if let Some(c) = client {
                let _: serde_json::Value = c
                    .json(Method::DELETE, &format!("/v1/schedules/{name}"), None)
                    .await?;
            } else {
                let mut book = ScheduleBook::load(&path)?;
                book.remove(&name)?;
                book.save(&path)?;
            }
            println!("schedule {name} removed");
        }
        ScheduleCommand::Pause { name } => set_paused(client, &path, &name, true).await?,
        ScheduleCommand::Unpause { name } => set_paused(client, &path, &name, false).await?,
    }
    Ok(ExitStatus::Success)
}

async fn set_paused(
    client: Option<Client>,
    path: &Path,
    name: &str,
    paused: bool,
) -> anyhow::Result<()> {
    let verb = if paused { "pause" } else { "unpause" };
    if let Some(c) = client {
        let _: serde_json::Value = c
            .json(Method::POST, &format!("/v1/schedules/{name}/{verb}"), None)
            .await?;
    } else {
        let mut book = ScheduleBook::load(path)?;
        book.set_paused(name, paused, Utc::now())?;
        book.save(path)?;
    }
    println!("schedule {name} {verb}d");
    Ok(())
}
