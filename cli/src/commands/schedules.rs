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
            timezone,
            notify,
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
                timezone,
                notify,
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
                Output::Text => print!("{}", schedule_table(&list)),
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

/// `schedule ls` as a table: the next fire time in the schedule's zone and in UTC, then each
/// schedule's last failure and webhooks under the table.
fn schedule_table(list: &[serde_json::Value]) -> String {
    use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
    let t = |s: &serde_json::Value, k: &str| s[k].as_str().unwrap_or_default().to_owned();
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header([
            "NAME",
            "WORKFLOW",
            "CRON",
            "ZONE",
            "NEXT (ZONE)",
            "NEXT (UTC)",
            "WINDOW",
            "OVERLAP",
            "CATCH-UP",
            "PAUSED",
        ]);
    let when = |text: String| {
        chrono::DateTime::parse_from_rfc3339(&text)
            .map_or(text, |t| t.format("%a %Y-%m-%d %H:%M %:z").to_string())
    };
    let mut notes = String::new();
    for s in list {
        table.add_row([
            t(s, "name"),
            t(s, "workflow"),
            t(s, "cron"),
            s["timezone"].as_str().unwrap_or("UTC").to_owned(),
            when(t(s, "next_local")),
            when(t(s, "next")),
            t(s, "window"),
            t(s, "overlap"),
            t(s, "catch_up"),
            if s["paused"].as_bool() == Some(true) {
                "yes".to_owned()
            } else {
                "no".to_owned()
            },
        ]);
        let f = &s["last_failure"];
        if let Some(message) = f["message"].as_str() {
            notes.push_str(&format!(
                "{}: last failure at {} (fire time {}): {message}\n",
                t(s, "name"),
                f["at"].as_str().unwrap_or_default(),
                f["fire_time"].as_str().unwrap_or_default()
            ));
        }
        for w in s["notify"].as_array().into_iter().flatten() {
            notes.push_str(&format!(
                "{}: notifies {}\n",
                t(s, "name"),
                w.as_str().unwrap_or_default()
            ));
        }
    }
    format!("{table}\n{notes}")
}
