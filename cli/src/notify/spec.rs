//! Where a notification goes: a [`Webhook`] names its payload shape and where its URL is kept
//! (a file or an environment variable), never the URL itself, so that a schedule book, a
//! command line, an event log or an output never holds the secret a webhook URL is.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The shape of the JSON a webhook receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Format {
    /// Slack's incoming-webhook payload (`{"text": ..., "blocks": [...]}`); also what
    /// Mattermost and Rocket.Chat accept.
    Slack,
    /// Waymark's own shape: every field of the transition as JSON.
    Json,
}

/// Where a webhook's URL is read from, each time it is used.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum UrlSource {
    /// A file holding the URL (surrounding whitespace ignored).
    File(PathBuf),
    /// An environment variable of the daemon holding the URL.
    Env(String),
}

/// A webhook target: `FORMAT:file:PATH` or `FORMAT:env:VARIABLE`, FORMAT `slack` or `json`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Webhook {
    /// The payload shape.
    pub format: Format,
    /// Where its URL is kept.
    pub url: UrlSource,
}

/// Why a webhook could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The text is not `FORMAT:file:PATH` or `FORMAT:env:VARIABLE`.
    #[error("webhook {text:?}: {problem}; write FORMAT:file:PATH or FORMAT:env:VARIABLE with FORMAT slack or json (the URL itself never goes on the command line)")]
    Invalid {
        /// What was given.
        text: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Its URL could not be read (the URL is never part of the message).
    #[error("webhook {webhook}: {problem}")]
    Url {
        /// The webhook, as text (no secret in it).
        webhook: String,
        /// What went wrong.
        problem: String,
    },
}

impl Webhook {
    /// Reads the URL now (a file may be rotated, a variable set, while the daemon runs). A file
    /// must be the daemon's user's and owner-only (as the token file,
    /// [`crate::secret_file::check_owner_only`]); the URL must be `http://` or `https://`.
    pub fn read_url(&self) -> Result<String, Error> {
        let fail = |problem: String| Error::Url {
            webhook: self.to_string(),
            problem,
        };
        let url = match &self.url {
            UrlSource::File(path) => {
                // A webhook URL is a secret (whoever has it may post to the channel): its file
                // gets the token file's checks.
                crate::secret_file::check_owner_only(path, "webhook URL file").map_err(fail)?;
                std::fs::read_to_string(path)
                    .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?
            }
            UrlSource::Env(name) => std::env::var(name).map_err(|_| {
                fail(format!(
                    "the daemon's environment has no variable {name} (set it before starting the daemon)"
                ))
            })?,
        };
        let url = url.trim().to_owned();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(fail(
                "the URL it holds does not start with http:// or https://".to_owned(),
            ));
        }
        Ok(url)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Slack => "slack",
            Format::Json => "json",
        })
    }
}

impl fmt::Display for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.url {
            UrlSource::File(path) => write!(f, "{}:file:{}", self.format, path.display()),
            UrlSource::Env(name) => write!(f, "{}:env:{name}", self.format),
        }
    }
}

impl FromStr for Webhook {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let fail = |problem: &str| Error::Invalid {
            text: text.to_owned(),
            problem: problem.to_owned(),
        };
        if text.contains("://") {
            return Err(fail(
                "this looks like a URL: put it in a file (mode 600) or an environment variable and name that",
            ));
        }
        let mut parts = text.splitn(3, ':');
        let (Some(format), Some(kind), Some(rest)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(fail("expected three parts separated by ':'"));
        };
        let format = match format {
            "slack" => Format::Slack,
            "json" => Format::Json,
            _ => return Err(fail("unknown format (slack or json)")),
        };
        let url = match kind {
            "file" if !rest.is_empty() => {
                let path = PathBuf::from(rest);
                if !path.is_absolute() {
                    return Err(fail(
                        "the file must be an absolute path (the daemon's working folder differs)",
                    ));
                }
                UrlSource::File(path)
            }
            "env"
                if !rest.is_empty()
                    && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                UrlSource::Env(rest.to_owned())
            }
            "file" | "env" => return Err(fail("empty or invalid file path or variable name")),
            _ => return Err(fail("the URL comes from `file` or `env`")),
        };
        Ok(Webhook { format, url })
    }
}

impl Serialize for Webhook {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Webhook {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}
