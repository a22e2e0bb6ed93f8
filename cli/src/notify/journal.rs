//! The delivery journal, `DATA_DIR/notifications.jsonl`: one JSON object per line, each line
//! appended and `fdatasync`'d before the notifier goes on (the file's creation is made durable
//! by an `fsync` of its folder). It records, per webhook, from when it is served (`since`: older
//! transitions are history, never sent), every attempt's result, and the deliveries that are
//! done (`delivered`, or `gave_up` after the retries), so that after a crash (SIGKILL included)
//! the notifier sends exactly the transitions not yet done. No URL is ever written here.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One line of the journal.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "entry", rename_all = "snake_case")]
pub enum Entry {
    /// A webhook is served from `at` on: transitions before it are not sent to it.
    Since {
        /// The webhook (its text: format and where its URL is kept).
        webhook: String,
        /// From when.
        at: DateTime<Utc>,
    },
    /// An attempt that did not deliver (it will be retried, or given up).
    AttemptFailed {
        /// The delivery (`RUN/SEQ/KIND WEBHOOK`).
        delivery: String,
        /// Which attempt.
        attempt: u32,
        /// What went wrong (status or error; never the URL).
        error: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The receiver accepted it (2xx).
    Delivered {
        /// The delivery.
        delivery: String,
        /// The HTTP status.
        status: u16,
        /// Attempts it took.
        attempts: u32,
        /// When.
        at: DateTime<Utc>,
    },
    /// Not delivered, for good (a 4xx answer, or retries exhausted): not tried again.
    GaveUp {
        /// The delivery.
        delivery: String,
        /// The last error.
        error: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// Every transition of this ended run is done for every webhook: never read again.
    Settled {
        /// The run.
        run: String,
    },
}

/// Why the journal could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading, writing or syncing it failed.
    #[error("notification journal {path}: cannot {action}: {source}; check the data directory's disk and permissions")]
    Io {
        /// The journal file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// The journal, loaded, and open for appends.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    since: BTreeMap<String, DateTime<Utc>>,
    done: BTreeSet<String>,
    settled: BTreeSet<String>,
    /// Every entry in order (for tests and `waymark` listings).
    entries: Vec<Entry>,
}

impl Journal {
    /// Opens (creating) the journal at `path`. A last line cut by a crash is ignored (the
    /// append it belonged to was never acknowledged) and a newline is added before the next.
    pub fn open(path: &Path) -> Result<Journal, Error> {
        let io_err = |action: &'static str| {
            let path = path.to_owned();
            move |source| Error::Io {
                path,
                action,
                source,
            }
        };
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(io_err("open"))?;
        if !existed {
            file.sync_all().map_err(io_err("fsync"))?;
            if let Some(folder) = path.parent() {
                File::open(folder)
                    .and_then(|d| d.sync_all())
                    .map_err(io_err("fsync the folder of"))?;
            }
        }
        let mut j = Journal {
            path: path.to_owned(),
            file: file.try_clone().map_err(io_err("open"))?,
            since: BTreeMap::new(),
            done: BTreeSet::new(),
            settled: BTreeSet::new(),
            entries: Vec::new(),
        };
        let mut text = Vec::new();
        io::Read::read_to_end(&mut file, &mut text).map_err(io_err("read"))?;
        for line in io::BufReader::new(&text[..]).lines() {
            let line = line.map_err(io_err("read"))?;
            if let Ok(e) = serde_json::from_str::<Entry>(&line) {
                j.fold(e);
            }
        }
        if !text.is_empty() && !text.ends_with(b"\n") {
            j.file.write_all(b"\n").map_err(io_err("write"))?;
        }
        Ok(j)
    }

    fn fold(&mut self, e: Entry) {
        match &e {
            Entry::Since { webhook, at } => {
                self.since.entry(webhook.clone()).or_insert(*at);
            }
            Entry::Delivered { delivery, .. } | Entry::GaveUp { delivery, .. } => {
                self.done.insert(delivery.clone());
            }
            Entry::Settled { run } => {
                self.settled.insert(run.clone());
            }
            Entry::AttemptFailed { .. } => {}
        }
        self.entries.push(e);
    }

    /// Appends `e` durably (written and `fdatasync`'d) before returning.
    pub fn append(&mut self, e: Entry) -> Result<(), Error> {
        let mut line = serde_json::to_vec(&e).expect("journal entries serialise");
        line.push(b'\n');
        let path = self.path.clone();
        self.file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
            .map_err(|source| Error::Io {
                path,
                action: "append to",
                source,
            })?;
        self.fold(e);
        Ok(())
    }

    /// From when `webhook` is served, if it has been seen before.
    pub fn since(&self, webhook: &str) -> Option<DateTime<Utc>> {
        self.since.get(webhook).copied()
    }

    /// Whether a delivery is done (delivered or given up).
    pub fn is_done(&self, delivery: &str) -> bool {
        self.done.contains(delivery)
    }

    /// Whether a run is settled.
    pub fn is_settled(&self, run: &str) -> bool {
        self.settled.contains(run)
    }

    /// Every entry, in order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}
