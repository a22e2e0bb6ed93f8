//! Where runs are journaled: the embedded store of the data directory (the default), or a
//! `PostgreSQL` database several daemons share (`--store postgres://...` or `WAYMARK_STORE`).
//!
//! The URL never carries the password: it would be on the command line (visible in `ps`) and in
//! logs. The password comes from `--store-password-file FILE`, else `PGPASSFILE`, else
//! `~/.pgpass` (libpq's format, owner-only). [`Store::display`] is the only form of the URL
//! that is ever printed or logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use waymark_engine::log::{Log, SharedLog};
use waymark_store_pg::{Identity, PgBackend};

/// The store of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    /// The data directory's own log (segment files), one process at a time.
    Embedded,
    /// A `PostgreSQL` database, shared by several daemons.
    Postgres {
        /// `postgres://user@host:port/database[?options]`, without a password.
        url: String,
        /// The passfile named by `--store-password-file` (else `PGPASSFILE`, `~/.pgpass`).
        password_file: Option<PathBuf>,
    },
}

impl Store {
    /// The store of `--store` / `WAYMARK_STORE` (none: embedded) and `--store-password-file`.
    /// A URL of another scheme, or one holding a password, is refused with what to do.
    pub fn from_args(url: Option<&str>, password_file: Option<PathBuf>) -> Result<Store, String> {
        let Some(url) = url.map(str::trim).filter(|u| !u.is_empty()) else {
            if let Some(f) = password_file {
                return Err(format!(
                    "--store-password-file {} needs --store postgres://... (or WAYMARK_STORE): \
                     the embedded store has no password",
                    f.display()
                ));
            }
            return Ok(Store::Embedded);
        };
        let key_value = !url.contains("://") && url.contains('=');
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .or(key_value.then_some(""))
            .ok_or_else(|| {
                format!(
                    "--store {}: not a PostgreSQL URL; use postgres://USER@HOST:PORT/DATABASE \
                     or libpq's key=value form (or leave --store and WAYMARK_STORE unset for the \
                     data directory's own log)",
                    redact(url)
                )
            })?;
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if userinfo.contains(':') {
                return Err(format!(
                    "--store {}: the URL holds a password, which would be visible in `ps` and \
                     in logs; remove it and put it in an owner-only passfile \
                     (HOST:PORT:DATABASE:USER:PASSWORD) named by --store-password-file or \
                     PGPASSFILE",
                    redact(url)
                ));
            }
        }
        if url.contains("password=") {
            return Err(format!(
                "--store {}: the URL holds a password option; put the password in an owner-only \
                 passfile named by --store-password-file or PGPASSFILE instead",
                redact(url)
            ));
        }
        Ok(Store::Postgres {
            url: url.to_owned(),
            password_file,
        })
    }

    /// What may be printed or logged of the store: `embedded`, or the URL with any password
    /// removed.
    pub fn display(&self) -> String {
        match self {
            Store::Embedded => "the data directory's own log".to_owned(),
            Store::Postgres { url, .. } => redact(url),
        }
    }

    /// Whether runs live in a database shared by several daemons.
    pub fn is_shared(&self) -> bool {
        matches!(self, Store::Postgres { .. })
    }
}

/// Who opens a shared store.
#[derive(Debug, Clone)]
pub enum Opener {
    /// A command that reads (and may send a signal, which the owner's fence refuses unless
    /// this is the owner): takes over nothing.
    Command,
    /// A daemon: its name claimed in the store first (refused while another live daemon holds
    /// it), then the open runs of that name taken over (a restarted daemon).
    Daemon {
        /// Its identity.
        identity: Identity,
        /// Its lease's length.
        lease_ttl: Duration,
    },
}

/// A store opened: the log the engine writes through, and the shared store itself when it is
/// one (for the daemon's leases).
pub struct Opened {
    /// The event log.
    pub log: SharedLog,
    /// The `PostgreSQL` backend under `log` (clones share its connections and leases).
    pub shared: Option<PgBackend>,
}

/// Opens the store of a command or daemon on `data_dir`: the data directory's own log (its lock
/// held; what recovery found reported), or the `PostgreSQL` store (its schema checked: an older
/// one is refused with "run `waymark migrate`").
pub fn open(data_dir: &Path, store: &Store, opener: &Opener) -> anyhow::Result<Opened> {
    match store {
        Store::Embedded => Ok(Opened {
            log: crate::paths::open_log(data_dir)?,
            shared: None,
        }),
        Store::Postgres { url, password_file } => {
            let mut options = waymark_store_pg::Options::new(match opener {
                Opener::Command => format!("waymark-cli-{}", std::process::id()),
                Opener::Daemon { identity, .. } => identity.name.clone(),
            });
            options.password_file.clone_from(password_file);
            match opener {
                Opener::Command => options.takeover_own = false,
                Opener::Daemon {
                    identity,
                    lease_ttl,
                } => {
                    options.lease_ttl = *lease_ttl;
                    options.claims = Some(waymark_store_pg::ClaimsHook(Arc::new(claims_of)));
                    PgBackend::register_daemon(url, password_file.as_deref(), identity, *lease_ttl)
                        .map_err(anyhow::Error::from)?;
                }
            }
            let backend = PgBackend::open(url, options)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("opening the store {}", redact(url)))?;
            for line in waymark_engine::log::Backend::damage(&backend) {
                eprintln!("waymark: {line}");
            }
            Ok(Opened {
                log: Arc::new(Log::new(backend.clone())),
                shared: Some(backend),
            })
        }
    }
}

/// What a new run claims in a shared store, with its `RunStarted`: the cluster of its inventory
/// (one maintenance run per cluster across every daemon) and, for a run a schedule started, its
/// fire time (`started_by` names the schedule and the time: one run per fire time).
pub fn claims_of(first: &waymark_engine::Event) -> waymark_store_pg::Claims {
    let waymark_engine::Event::RunStarted {
        input, started_by, ..
    } = first
    else {
        return waymark_store_pg::Claims::default();
    };
    waymark_store_pg::Claims {
        cluster: input
            .decode::<waymark_workflows::Inventory>()
            .ok()
            .map(|inv| inv.cluster.name),
        fire_key: started_by
            .starts_with("schedule ")
            .then(|| started_by.clone()),
    }
}

/// `waymark migrate`: creates or upgrades the schema of a `PostgreSQL` store; returns what was
/// applied, as a line for the operator.
pub fn migrate(store: &Store) -> anyhow::Result<String> {
    let Store::Postgres { url, password_file } = store else {
        return Err(crate::exit::usage(
            "waymark migrate needs --store postgres://USER@HOST:PORT/DATABASE (or WAYMARK_STORE): \
             the data directory's own log needs no migration",
        ));
    };
    let applied = PgBackend::migrate(url, password_file.as_deref())?;
    Ok(if applied.is_empty() {
        format!(
            "store {}: schema already at version {} (nothing applied)",
            redact(url),
            waymark_store_pg::SCHEMA_VERSION
        )
    } else {
        format!(
            "store {}: applied migration(s) {:?}; schema at version {}",
            redact(url),
            applied,
            waymark_store_pg::SCHEMA_VERSION
        )
    })
}

/// This host's name (the default `--daemon-id`).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    #[allow(unsafe_code)]
    // SAFETY: the buffer is valid for its length; gethostname(2) writes at most that much.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    if name.is_empty() {
        "waymark".to_owned()
    } else {
        name
    }
}

/// `url` with the password of its user info and any `password=` option replaced by `***`.
pub fn redact(url: &str) -> String {
    if !url.contains("://") {
        // libpq's key=value form.
        return url
            .split_whitespace()
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(" ");
    }
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    if scheme.is_empty() {
        format!("{authority}{tail}")
    } else {
        format!("{scheme}://{authority}{tail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_url_is_the_embedded_store() {
        assert_eq!(Store::from_args(None, None), Ok(Store::Embedded));
        assert_eq!(Store::from_args(Some(" "), None), Ok(Store::Embedded));
        let e = Store::from_args(None, Some("/pw".into())).unwrap_err();
        assert!(e.contains("needs --store"), "{e}");
    }

    #[test]
    fn a_postgres_url_without_password_is_taken() {
        let s = Store::from_args(
            Some("postgres://waymark@db:5432/waymark"),
            Some("/pw".into()),
        )
        .unwrap();
        assert_eq!(
            s,
            Store::Postgres {
                url: "postgres://waymark@db:5432/waymark".into(),
                password_file: Some("/pw".into())
            }
        );
        assert_eq!(s.display(), "postgres://waymark@db:5432/waymark");
        assert!(Store::from_args(Some("postgresql://h/db"), None)
            .unwrap()
            .is_shared());
        assert!(
            Store::from_args(Some("host=h port=5 user=w dbname=d"), None)
                .unwrap()
                .is_shared()
        );
    }

    #[test]
    fn a_password_in_the_url_is_refused_and_never_repeated() {
        for url in [
            "postgres://waymark:s3cret@db/waymark",
            "postgres://db/waymark?user=w&password=s3cret",
            "host=db user=w password=s3cret",
        ] {
            let e = Store::from_args(Some(url), None).unwrap_err();
            assert!(e.contains("passfile"), "{e}");
            assert!(!e.contains("s3cret"), "the password is not repeated: {e}");
        }
    }

    #[test]
    fn another_scheme_is_refused() {
        let e = Store::from_args(Some("mysql://u:pw@h/db"), None).unwrap_err();
        assert!(e.contains("not a PostgreSQL URL"), "{e}");
        assert!(!e.contains("pw@"), "{e}");
    }
}
