//! Host-key checking against an OpenSSH `known_hosts` file (plain or hashed `|1|` entries).

use russh::keys::{HashAlg, PublicKey};

use super::{Error, SshTarget};

/// Keys `known_hosts` records for one host, with their line numbers.
pub(super) struct KnownKeys {
    entries: Vec<(usize, PublicKey)>,
    file_exists: bool,
}

fn same_key_type(a: &PublicKey, b: &PublicKey) -> bool {
    let (a, b) = (a.algorithm(), b.algorithm());
    a == b || (a.is_rsa() && b.is_rsa())
}

/// Reads the entries of `path` for `host`/`port` (plain or hashed names).
pub(super) fn known_keys(target: &SshTarget) -> Result<KnownKeys, Error> {
    let path = &target.known_hosts;
    let unreadable = |reason: String| Error::KnownHosts {
        addr: target.addr(),
        known_hosts: path.display().to_string(),
        reason,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(KnownKeys {
                entries: Vec::new(),
                file_exists: false,
            })
        }
        Err(e) => return Err(unreadable(e.to_string())),
    };
    let entries = russh::keys::known_hosts::known_host_keys_path(&target.host, target.port, path)
        .map_err(|e| {
        unreadable(format!(
            "an entry for `{}` does not parse: {e}",
            target.known_hosts_pattern()
        ))
    })?;
    // russh counts lines skipping those that start with `#`; map its numbers to the file's lines.
    let physical: Vec<usize> = text
        .split_inclusive('\n')
        .enumerate()
        .filter(|(_, l)| !l.starts_with('#'))
        .map(|(i, _)| i + 1)
        .collect();
    let entries = entries
        .into_iter()
        .map(|(n, k)| (physical.get(n.wrapping_sub(1)).copied().unwrap_or(n), k))
        .collect();
    Ok(KnownKeys {
        entries,
        file_exists: true,
    })
}

impl KnownKeys {
    /// The host-key algorithms to ask for: types already known for this host first (as OpenSSH
    /// does), so that a host with several keys presents the one we can check.
    pub(super) fn preferred_algorithms(&self) -> Vec<russh::keys::Algorithm> {
        let all = russh::Preferred::DEFAULT.key.to_vec();
        let known = |a: &russh::keys::Algorithm| {
            self.entries
                .iter()
                .any(|(_, k)| &k.algorithm() == a || (a.clone().is_rsa() && k.algorithm().is_rsa()))
        };
        let (mut first, rest): (Vec<_>, Vec<_>) = all.into_iter().partition(known);
        first.extend(rest);
        first
    }

    /// Checks the key the server presented.
    pub(super) fn verify(&self, target: &SshTarget, key: &PublicKey) -> Result<(), Error> {
        if self
            .entries
            .iter()
            .any(|(_, k)| k.key_data() == key.key_data())
        {
            return Ok(());
        }
        let presented = format!(
            "{} key {}",
            key.algorithm().as_str(),
            key.fingerprint(HashAlg::Sha256)
        );
        let pattern = target.known_hosts_pattern();
        let known_hosts = target.known_hosts.display().to_string();
        let add = format!(
            "ssh-keyscan -p {} {} >> {known_hosts}",
            target.port, target.host
        );
        let changed: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, k)| same_key_type(k, key))
            .map(|(line, _)| line.to_string())
            .collect();
        if !changed.is_empty() {
            return Err(Error::HostKeyChanged {
                addr: target.addr(),
                lines: changed.join(", "),
                presented,
                fix: format!("remove the old entry (`ssh-keygen -R '{pattern}' -f {known_hosts}`) and add the new one (`{add}`)"),
                known_hosts,
            });
        }
        if !target.strict_host_key_checking {
            tracing::warn!(
                "SSH to {}: accepting unknown host key ({presented}) because strict_host_key_checking is off",
                target.addr()
            );
            return Ok(());
        }
        let note = if !self.file_exists {
            format!("no entry for `{pattern}` (the file does not exist)")
        } else if self.entries.is_empty() {
            format!("no entry for `{pattern}`")
        } else {
            let others: Vec<String> = self
                .entries
                .iter()
                .map(|(line, k)| format!("{} on line {line}", k.algorithm().as_str()))
                .collect();
            format!(
                "no {} key for `{pattern}` (only {})",
                key.algorithm().as_str(),
                others.join(", ")
            )
        };
        Err(Error::UnknownHost {
            addr: target.addr(),
            known_hosts,
            note,
            presented,
            add,
        })
    }
}
