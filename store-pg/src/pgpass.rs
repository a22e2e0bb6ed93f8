//! The password of a connection, from a passfile in libpq's format (`~/.pgpass`, `PGPASSFILE`,
//! or a file named by the operator), because tokio-postgres reads none of them and a password
//! must never be on the command line (a URL is visible in `ps`) or in the log.
//!
//! Format (libpq, "The Password File"): one `hostname:port:database:username:password` per line,
//! `*` matches anything in the first four fields, `\:` and `\\` escape a colon and a backslash,
//! lines starting with `#` are comments, the first matching line wins. As libpq does, a file that
//! its group or others may read is ignored (with a warning naming it); a file owned by another
//! user is ignored too.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What a connection is made to, as the passfile's first four fields match it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name, or `localhost` for a Unix socket (libpq's rule).
    pub host: String,
    /// Port number.
    pub port: u16,
    /// Database name.
    pub database: String,
    /// User name.
    pub user: String,
}

/// Where a passfile comes from: the operator's file first, then `PGPASSFILE`, then `~/.pgpass`.
pub fn passfile_path(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("PGPASSFILE") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass"))
}

/// The password for `target` from the passfile at `path`: `Ok(None)` when the file is missing
/// or has no matching line. A file the operator named explicitly that cannot be used is an error
/// saying why; `~/.pgpass` or `PGPASSFILE` with loose permissions is skipped with a warning, as
/// libpq does.
pub fn lookup(path: &Path, target: &Target, explicit: bool) -> Result<Option<String>, String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(None),
        Err(e) => return Err(format!("password file {}: {e}", path.display())),
    };
    let loose = meta.mode() & 0o077 != 0;
    let foreign = meta.uid() != own_uid();
    if loose || foreign {
        let why = if loose {
            format!(
                "its group or others may read it (mode {:o}); run `chmod 600 {}`",
                meta.mode() & 0o777,
                path.display()
            )
        } else {
            format!(
                "it belongs to uid {}, not to this process (uid {})",
                meta.uid(),
                own_uid()
            )
        };
        if explicit {
            return Err(format!("password file {} refused: {why}", path.display()));
        }
        tracing::warn!("password file {} ignored: {why}", path.display());
        return Ok(None);
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("password file {}: {e}", path.display()))?;
    Ok(find(&text, target))
}

/// The first line of `text` that matches `target`, its password field unescaped.
pub fn find(text: &str, target: &Target) -> Option<String> {
    let port = target.port.to_string();
    let wanted = [
        target.host.as_str(),
        port.as_str(),
        target.database.as_str(),
        target.user.as_str(),
    ];
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split(line);
        if fields.len() < 5 {
            continue;
        }
        let matches = wanted
            .iter()
            .zip(&fields)
            .all(|(want, field)| field == "*" || field == want);
        if matches {
            // A password holding unescaped colons keeps them (libpq joins the rest).
            return Some(fields[4..].join(":"));
        }
    }
    None
}

/// Splits a line on unescaped colons, undoing `\:` and `\\`.
fn split(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    fields.last_mut().expect("one field").push(next);
                }
            }
            ':' => fields.push(String::new()),
            c => fields.last_mut().expect("one field").push(c),
        }
    }
    fields
}

fn own_uid() -> u32 {
    #[allow(unsafe_code)]
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe {
        libc::getuid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn target() -> Target {
        Target {
            host: "db.example".into(),
            port: 5433,
            database: "waymark".into(),
            user: "ops".into(),
        }
    }

    #[test]
    fn the_first_matching_line_wins_with_wildcards_and_escapes() {
        let text = "# comment\n\
                    other:5433:waymark:ops:nope\n\
                    db.example:*:waymark:ops:pa\\:ss\\\\word\n\
                    *:*:*:*:fallback\n";
        assert_eq!(find(text, &target()).as_deref(), Some("pa:ss\\word"));
        let other = Target {
            user: "someone".into(),
            ..target()
        };
        assert_eq!(find(text, &other).as_deref(), Some("fallback"));
        assert_eq!(find("db.example:5433:waymark:ops\n", &target()), None);
    }

    #[test]
    fn a_file_others_may_read_is_refused_when_named_and_skipped_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        std::fs::write(&path, "*:*:*:*:secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = lookup(&path, &target(), true).unwrap_err();
        assert!(
            err.contains("chmod 600") && !err.contains("secret"),
            "{err}"
        );
        assert_eq!(lookup(&path, &target(), false).unwrap(), None);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            lookup(&path, &target(), true).unwrap().as_deref(),
            Some("secret")
        );
        assert_eq!(
            lookup(&dir.path().join("missing"), &target(), false).unwrap(),
            None
        );
    }
}
