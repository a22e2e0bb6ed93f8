//! `waymark web-login`: a new one-time login URL of the daemon's web UI, asked of the daemon
//! over its owner-only socket (`POST /v1/web/login-url`).

use std::path::Path;

use waymark_cli::client::Client;
use waymark_cli::exit::{usage, ExitStatus};

/// Prints a new login URL of the web UI of the daemon serving `data_dir` (the previous one
/// stops working; sessions stay).
pub async fn login(data_dir: &Path) -> anyhow::Result<ExitStatus> {
    let Some(client) = Client::connect(data_dir).await? else {
        return Err(usage(format!(
            "no daemon serves {}: start one with a web UI (`waymark daemon --data-dir {} --http PORT`)",
            data_dir.display(),
            data_dir.display()
        )));
    };
    let answer: serde_json::Value = client
        .json(hyper::Method::POST, "/v1/web/login-url", None)
        .await?;
    let Some(url) = answer["url"].as_str() else {
        anyhow::bail!("the daemon's answer names no URL: {answer}");
    };
    println!("{url}");
    eprintln!("waymark: open it once in your browser: it logs one browser in, then is used up");
    Ok(ExitStatus::Success)
}
