//! Files that hold secrets (the TCP bearer token, a webhook's URL, the web UI's login URL):
//! the check that such a file is the daemon's user's and owner-only, as ssh wants of private
//! keys, and the owner-only write of one.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Checks that `file` (called `what` in the message, e.g. "token file") belongs to this
/// process's effective user and that neither its group nor others may read or write it. The
/// error says what is wrong and the commands that fix it.
pub fn check_owner_only(file: &Path, what: &str) -> Result<(), String> {
    let meta = std::fs::metadata(file)
        .map_err(|e| format!("reading the {what} {}: {e}", file.display()))?;
    #[allow(unsafe_code)]
    // SAFETY: geteuid(2) has no preconditions.
    let own = unsafe { libc::geteuid() };
    if meta.uid() != own {
        return Err(format!(
            "the {what} {} belongs to uid {}, not to the daemon's user (uid {own}): \
             `chown {own} {}` and `chmod 600 {}`",
            file.display(),
            meta.uid(),
            file.display(),
            file.display()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "the {what} {} is readable by others (mode {:o}): `chmod 600 {}`",
            file.display(),
            meta.mode() & 0o777,
            file.display()
        ));
    }
    Ok(())
}

/// Writes `text` to `file`, mode 0600 from its creation (never readable by others, whatever the
/// umask): into a fresh file beside it, then renamed over it, so that a reader sees the old
/// content or the new one.
pub fn write_owner_only(file: &Path, text: &str) -> std::io::Result<()> {
    let fresh = file.with_extension(format!("writing-{}", std::process::id()));
    let _ = std::fs::remove_file(&fresh);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&fresh)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&fresh, file)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&fresh);
    }
    written
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::{check_owner_only, write_owner_only};

    #[test]
    fn an_owner_only_file_passes_and_a_group_readable_one_is_refused_with_the_fix() {
        let dir = std::env::temp_dir().join(format!("waymark-secret-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        write_owner_only(&file, "s3cret").unwrap();
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "s3cret");
        check_owner_only(&file, "thing").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = check_owner_only(&file, "thing").unwrap_err();
        assert!(
            e.contains("the thing") && e.contains("mode 640") && e.contains("chmod 600"),
            "{e}"
        );
        assert!(!e.contains("s3cret"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
