//! What the commands the SSH hosts run do on the shared estate: `systemctl [--no-block]
//! restart|start|stop|show|is-active` for the yb units, `yb-admin`, `yb-ts-cli is_server_ready`
//! and `curl` of a tserver's metrics; the command line split as a POSIX shell splits it
//! ([`shell_words`]). Mutations are recorded as effects.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::DateTime;
use serde_json::json;

use super::model::{Kind, Phase, State, PLACEMENT, TABLE};
use crate::estate::Shared;

/// What a command run over SSH printed and returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit status.
    pub exit: u32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl ExecOutput {
    fn ok(stdout: impl Into<String>) -> Self {
        ExecOutput {
            exit: 0,
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }
    fn fail(exit: u32, stderr: impl Into<String>) -> Self {
        ExecOutput {
            exit,
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }
}

fn unit_kind(unit: &str) -> Option<Kind> {
    match unit.trim_end_matches(".service") {
        "yb-master" => Some(Kind::Master),
        "yb-tserver" => Some(Kind::TServer),
        _ => None,
    }
}

/// Splits a command line into words as a POSIX shell does: blanks separate words; single quotes
/// keep everything literal; double quotes keep everything but `\` before `$`, `` ` ``, `"`, `\`
/// and newline; a backslash outside quotes escapes the next character. Expansions (`$`, `` ` ``,
/// globs) and operators (`;`, `|`, `&`, redirections) are not supported: such a line is refused.
pub fn shell_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => word.push(x),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(x @ ('$' | '`' | '"' | '\\')) => word.push(x),
                            Some('\n') => {}
                            Some(x) => {
                                word.push('\\');
                                word.push(x);
                            }
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(x @ ('$' | '`')) => {
                            return Err(format!("expansion `{x}` is not supported"))
                        }
                        Some(x) => word.push(x),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(x) => word.push(x),
                    None => word.push('\\'),
                }
            }
            ';' | '|' | '&' | '<' | '>' | '$' | '`' | '(' | ')' | '*' | '?' => {
                return Err(format!("`{c}` is not supported by the sandbox shell"));
            }
            other => {
                in_word = true;
                word.push(other);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Runs a command line on `node` the way its shell would, blocking the calling thread as long as
/// the command would take (a blocking `systemctl restart` waits for the graceful stop). For tests
/// on the wall clock only: the SSH hosts, and anything on paused time, use [`exec_nowait`] and
/// wait on tokio's time.
pub fn exec(shared: &Shared, node: &str, command: &str) -> ExecOutput {
    let (out, block_ms) = exec_nowait(shared, node, command);
    if block_ms > 0 {
        std::thread::sleep(Duration::from_millis(block_ms));
    }
    out
}

/// Runs a command line on `node`: `systemctl [--no-block] restart|start|stop|show|is-active UNIT`
/// (optionally behind `sudo`) for `yb-master` / `yb-tserver`; `yb-admin` (`-master_addresses`,
/// `-certs_dir_name`; `get_is_load_balancer_idle`, `get_load_move_completion`,
/// `change_leader_blacklist ADD|REMOVE H:9100`, `get_leader_blacklist_completion`,
/// `get_universe_config` (its `leaderBlacklist`), `list_all_masters`, `list_all_tablet_servers`); `yb-ts-cli --server_address=H:9100
/// is_server_ready`; `curl [-s] [-f] http://H:9000/prometheus-metrics` (a tserver's
/// `follower_lag_ms` per tablet it follows). The line is split as a POSIX shell splits it ([`shell_words`]). Mutations are
/// recorded as effects. Returns the output and how long the command runs (ms) before it answers.
/// Injected faults are applied by the caller (the SSH host), once per command.
pub fn exec_nowait(shared: &Shared, node: &str, command: &str) -> (ExecOutput, u64) {
    let words = match shell_words(command) {
        Ok(w) => w,
        Err(e) => {
            return (
                ExecOutput::fail(2, format!("sandbox shell on {node}: {e}: {command}\n")),
                0,
            )
        }
    };
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let words: &[&str] = match words.first() {
        Some(&"sudo") => {
            // `sudo [-n] [-l] COMMAND...`: the sandbox's sudoers lets the SSH user run
            // `systemctl` (and the yb tools) without a password; `-l COMMAND` lists whether it
            // may, as `sudo -l` does, and runs nothing.
            let options = words[1..].iter().take_while(|w| w.starts_with('-')).count();
            let command = &words[1 + options..];
            if words[1..=options].contains(&"-l") {
                let allowed = command
                    .first()
                    .is_some_and(|p| p.rsplit('/').next() == Some("systemctl"));
                return if allowed {
                    (
                        ExecOutput::ok(format!("/usr/bin/systemctl {}\n", command[1..].join(" "))),
                        0,
                    )
                } else {
                    (ExecOutput::fail(1, String::new()), 0)
                };
            }
            command
        }
        _ => &words,
    };
    let program = words.first().map(|p| p.rsplit('/').next().unwrap_or(p));
    match program {
        Some("systemctl") => systemctl(shared, node, &words[1..]),
        Some("yb-admin") => (yb_admin(shared, node, &words[1..]), 0),
        Some("yb-ts-cli") => (yb_ts_cli(shared, node, &words[1..]), 0),
        Some("curl") => (curl(shared, &words[1..]), 0),
        Some(other) => (
            ExecOutput::fail(127, format!("bash: line 1: {other}: command not found\n")),
            0,
        ),
        None => (ExecOutput::ok(""), 0),
    }
}

fn systemctl(shared: &Shared, node: &str, args: &[&str]) -> (ExecOutput, u64) {
    let mut props: Vec<String> = Vec::new();
    let mut rest = Vec::new();
    let mut no_block = false;
    let mut i = 0;
    while i < args.len() {
        let a = args[i];
        if a == "-p" || a == "--property" {
            if let Some(p) = args.get(i + 1) {
                props.extend(p.split(',').map(str::to_owned));
            }
            i += 2;
            continue;
        }
        if let Some(p) = a.strip_prefix("--property=") {
            props.extend(p.split(',').map(str::to_owned));
        } else if a == "--no-block" {
            no_block = true;
        } else if !a.starts_with('-') {
            rest.push(a);
        }
        i += 1;
    }
    let (Some(verb), Some(unit)) = (rest.first(), rest.get(1)) else {
        return (
            ExecOutput::fail(1, "systemctl: expected a verb and a unit\n"),
            0,
        );
    };
    let unit_name = if unit.ends_with(".service") {
        (*unit).to_owned()
    } else {
        format!("{unit}.service")
    };
    let Some(kind) = unit_kind(unit) else {
        // As systemd answers for a unit it does not know.
        let out = match *verb {
            "show" => ExecOutput::ok("InvocationID=\nActiveState=inactive\nLoadState=not-found\n"),
            "is-active" => ExecOutput {
                exit: 4,
                stdout: "inactive\n".into(),
                stderr: String::new(),
            },
            _ => ExecOutput::fail(
                5,
                format!("Failed to {verb} {unit_name}: Unit {unit_name} not found.\n"),
            ),
        };
        return (out, 0);
    };
    let now = shared.now_ms();
    match *verb {
        "restart" | "start" | "stop" => {
            let block = shared.mutate(|st| st.yb.systemctl_act(node, kind, verb, now));
            let Some(block) = block else {
                return (
                    ExecOutput::fail(
                        5,
                        format!("Failed to {verb} {unit_name}: Unit {unit_name} not found.\n"),
                    ),
                    0,
                );
            };
            let flag = if no_block { " --no-block" } else { "" };
            shared.record_effect(
                "ssh",
                &format!("{node}/{}", kind.unit()),
                verb,
                json!({ "command": format!("systemctl{flag} {verb} {unit}") }),
            );
            let wait = if no_block { 0 } else { block.max(0) as u64 };
            (ExecOutput::ok(""), wait)
        }
        "is-active" => {
            let out = shared.read(|st| match st.yb.server(node, kind) {
                Some(s) => {
                    let state = active_state(st.yb.phase(s, now)).0;
                    ExecOutput {
                        exit: if state == "active" { 0 } else { 3 },
                        stdout: format!("{state}\n"),
                        stderr: String::new(),
                    }
                }
                None => ExecOutput {
                    exit: 4,
                    stdout: "inactive\n".into(),
                    stderr: String::new(),
                },
            });
            (out, 0)
        }
        "show" => (show(shared, node, kind, &unit_name, &props, now), 0),
        other => (
            ExecOutput::fail(1, format!("Unknown command verb {other}.\n")),
            0,
        ),
    }
}

/// (`ActiveState`, `SubState`) of a unit in `phase`.
fn active_state(phase: Phase) -> (&'static str, &'static str) {
    match phase {
        Phase::Stopping => ("deactivating", "stop-sigterm"),
        Phase::Stopped => ("inactive", "dead"),
        _ => ("active", "running"),
    }
}

fn show(
    shared: &Shared,
    node: &str,
    kind: Kind,
    unit_name: &str,
    props: &[String],
    now: i64,
) -> ExecOutput {
    shared.read(|st| {
        let Some(s) = st.yb.server(node, kind) else {
            return ExecOutput::ok("InvocationID=\nActiveState=inactive\nLoadState=not-found\n");
        };
        let phase = st.yb.phase(s, now);
        let (active, sub) = active_state(phase);
        // While the stop of a restart runs, the unit still shows the run being stopped.
        let (id, pid, since) = match phase {
            Phase::Stopped => (String::new(), 0, s.stop_until_ms),
            Phase::Stopping => (
                s.prev_invocation_id.clone(),
                s.prev_pid,
                s.prev_started_at_ms,
            ),
            _ => (s.invocation_id.clone(), s.main_pid, s.started_at_ms),
        };
        let all: BTreeMap<&str, String> = [
            ("Id", unit_name.to_owned()),
            ("InvocationID", id),
            ("MainPID", pid.to_string()),
            ("ActiveState", active.into()),
            ("SubState", sub.into()),
            ("LoadState", "loaded".into()),
            (
                "ActiveEnterTimestampMonotonic",
                ((since - st.yb.boot_ms).max(0) * 1000).to_string(),
            ),
            (
                "ActiveEnterTimestamp",
                DateTime::from_timestamp_millis(since)
                    .map(|t| t.format("%a %Y-%m-%d %H:%M:%S UTC").to_string())
                    .unwrap_or_default(),
            ),
        ]
        .into_iter()
        .collect();
        let keys: Vec<String> = if props.is_empty() {
            all.keys().map(|k| (*k).to_owned()).collect()
        } else {
            props.to_vec()
        };
        let mut out = String::new();
        for k in keys {
            if let Some(v) = all.get(k.as_str()) {
                out.push_str(&format!("{k}={v}\n"));
            }
        }
        ExecOutput::ok(out)
    })
}

/// Flags (`-name value`, `--name=value`, `-name=value`) and the other words of a yb tool's line.
fn tool_args<'a>(args: &[&'a str]) -> (BTreeMap<String, String>, Vec<&'a str>) {
    const VALUED: [&str; 5] = [
        "master_addresses",
        "certs_dir_name",
        "timeout_ms",
        "server_address",
        "init_master_addrs",
    ];
    let mut flags = BTreeMap::new();
    let mut rest = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i];
        if let Some(f) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) {
            if let Some((k, v)) = f.split_once('=') {
                flags.insert(k.to_owned(), v.to_owned());
            } else if VALUED.contains(&f) {
                flags.insert(
                    f.to_owned(),
                    args.get(i + 1).copied().unwrap_or("").to_owned(),
                );
                i += 1;
            } else {
                flags.insert(f.to_owned(), String::new());
            }
        } else {
            rest.push(a);
        }
        i += 1;
    }
    (flags, rest)
}

/// A TLS cluster refuses a client without the right `-certs_dir_name`; on a node whose
/// certificates directory is missing, the tool cannot even load it.
fn tls_refusal(
    st: &State,
    node: &str,
    flags: &BTreeMap<String, String>,
    peer: &str,
) -> Option<ExecOutput> {
    if let Some(d) = flags.get("certs_dir_name") {
        if st.certs_missing_on.contains(node) {
            return Some(ExecOutput::fail(
                1,
                format!(
                    "Error: IO error (yb/rpc/secure_stream.cc:112): {d}/ca.crt: \
                     No such file or directory (system error 2)\n"
                ),
            ));
        }
    }
    let wanted = st.tls_certs_dir.as_deref()?;
    match flags.get("certs_dir_name").map(String::as_str) {
        Some(d) if d == wanted => None,
        Some(d) => Some(ExecOutput::fail(
            1,
            format!(
                "Error: Network error (yb/rpc/secure_stream.cc:867): Handshake failed with {peer}: \
                 certificate verify failed: no CA certificate in {d} matches the cluster's \
                 (the cluster's certificates are in {wanted})\n"
            ),
        )),
        None => Some(ExecOutput::fail(
            1,
            format!(
                "Error: Network error (yb/rpc/inbound_call.cc:93): Connection to {peer} closed: \
                 the cluster uses TLS (node-to-node and client-to-node encryption); \
                 pass -certs_dir_name DIR with the cluster's CA certificate\n"
            ),
        )),
    }
}

fn yb_admin(shared: &Shared, node: &str, args: &[&str]) -> ExecOutput {
    let now = shared.now_ms();
    let (flags, rest) = tool_args(args);
    let Some(cmd) = rest.first().copied() else {
        return ExecOutput::fail(1, "yb-admin: no command given\n");
    };
    let addresses = flags
        .get("master_addresses")
        .cloned()
        .unwrap_or_else(|| "localhost:7100".into());
    let check = shared.read(|st| {
        if let Some(refused) = tls_refusal(&st.yb, node, &flags, &addresses) {
            return Err(refused);
        }
        let reachable = addresses.split(',').any(|a| {
            let host = a.rsplit_once(':').map_or(a, |(h, _)| h);
            a.ends_with(":7100")
                && st
                    .yb
                    .server(host, Kind::Master)
                    .is_some_and(|m| m.process_running(now))
        });
        if !reachable || st.yb.leader.is_empty() {
            return Err(ExecOutput::fail(
                1,
                format!(
                    "Error: Timed out (yb/rpc/rpc.cc:224): Could not locate the leader master: \
                     Unable to establish connection to leader master at [{addresses}]. \
                     Please verify the addresses.\n"
                ),
            ));
        }
        Ok(())
    });
    if let Err(out) = check {
        return out;
    }
    match cmd {
        "get_is_load_balancer_idle" => shared.read(|st| {
            ExecOutput::ok(format!(
                "Idle = {}\n",
                u8::from(st.yb.load_balancer_idle(now))
            ))
        }),
        "get_load_move_completion" => shared.read(|st| {
            let (pct, remaining, total) = st.yb.load_moves(now);
            ExecOutput::ok(format!(
                "Percent complete = {pct:.2} : {remaining} remaining out of {total}\n"
            ))
        }),
        "get_leader_blacklist_completion" => shared.read(|st| {
            let remaining = st
                .yb
                .tablets
                .iter()
                .filter(|t| t.leader.as_ref().is_some_and(|l| st.yb.blacklist.contains(l)))
                .count() as u32;
            let total = st.yb.blacklist_total.max(remaining);
            let pct = if total == 0 {
                100.0
            } else {
                100.0 * f64::from(total - remaining) / f64::from(total)
            };
            ExecOutput::ok(format!(
                "Percent complete = {pct:.2} : {remaining} remaining out of {total}\n"
            ))
        }),
        "change_leader_blacklist" => {
            let (Some(op), Some(server)) = (rest.get(1), rest.get(2)) else {
                return ExecOutput::fail(
                    1,
                    "Usage: change_leader_blacklist ADD|REMOVE <ip_addr>:<port> [<ip_addr>:<port>]...\n",
                );
            };
            let host = server.rsplit_once(':').map_or(*server, |(h, _)| h).to_owned();
            let done = shared.mutate(|st| {
                if st.yb.server(&host, Kind::TServer).is_none() {
                    return Err(format!(
                        "Error: Invalid argument: no tablet server {server} in the cluster\n"
                    ));
                }
                match *op {
                    "ADD" => {
                        st.yb.blacklist.insert(host.clone());
                    }
                    "REMOVE" => {
                        st.yb.blacklist.remove(&host);
                    }
                    other => {
                        return Err(format!(
                            "Error: Invalid argument: {other}: expected ADD or REMOVE\n"
                        ))
                    }
                }
                let on = st
                    .yb
                    .tablets
                    .iter()
                    .filter(|t| t.leader.as_ref().is_some_and(|l| st.yb.blacklist.contains(l)))
                    .count() as u32;
                st.yb.blacklist_total = on;
                Ok(())
            });
            match done {
                Ok(()) => {
                    shared.record_effect(
                        "ssh",
                        "yb-admin/leader_blacklist",
                        &format!("blacklist-{}", op.to_lowercase()),
                        json!({ "server": server }),
                    );
                    ExecOutput::ok("")
                }
                Err(e) => ExecOutput::fail(1, e),
            }
        }
        "get_universe_config" => shared.read(|st| {
            let hosts: Vec<serde_json::Value> = st
                .yb
                .blacklist
                .iter()
                .map(|h| json!({ "host": h, "port": 9100 }))
                .collect();
            ExecOutput::ok(format!(
                "{}\n",
                json!({
                    "version": 1,
                    "leaderBlacklist": { "hosts": hosts },
                    "clusterUuid": PLACEMENT,
                })
            ))
        }),
        "list_all_masters" => shared.read(|st| {
            let mut out = String::from("Master UUID                      \tRPC Host/Port        \tState    \tRole\n");
            for m in st.yb.servers.iter().filter(|s| s.kind == Kind::Master) {
                let running = m.process_running(now);
                out.push_str(&format!(
                    "{:<32} \t{:<20} \t{:<8} \t{}\n",
                    if running { m.uuid.as_str() } else { "UNKNOWN_UUID" },
                    format!("{}:7100", m.node),
                    if running { "ALIVE" } else { "DEAD" },
                    if !running {
                        "UNKNOWN_ROLE"
                    } else if m.node == st.yb.leader {
                        "LEADER"
                    } else {
                        "FOLLOWER"
                    }
                ));
            }
            ExecOutput::ok(out)
        }),
        "list_all_tablet_servers" => shared.read(|st| {
            let t = &st.yb.timing;
            let mut out = String::from(
                "Tablet Server UUID               RPC Host/Port        Heartbeat delay      Status   Reads/s  Writes/s Uptime   SST total size  SST uncomp size SST #files      Memory\n",
            );
            for s in st.yb.servers.iter().filter(|s| s.kind == Kind::TServer) {
                let hb = (now - s.last_heartbeat(now, t)).max(0) as f64 / 1000.0;
                let alive = s.reported_alive(now, t);
                out.push_str(&format!(
                    "{:<32} {:<20} {:<20} {:<8} 0.00     0.00     {:<8} 1.00 GB         1.20 GB         12              512.00 MB\n",
                    s.uuid,
                    format!("{}:9100", s.node),
                    format!("{hb:.2}s"),
                    if alive { "ALIVE" } else { "DEAD" },
                    if alive { s.reported_uptime_s(now, t) } else { 0 },
                ));
            }
            ExecOutput::ok(out)
        }),
        other => ExecOutput::fail(1, format!("Invalid operation {other}\n")),
    }
}

fn yb_ts_cli(shared: &Shared, node: &str, args: &[&str]) -> ExecOutput {
    let now = shared.now_ms();
    let (flags, rest) = tool_args(args);
    let address = flags
        .get("server_address")
        .cloned()
        .unwrap_or_else(|| "localhost:9100".into());
    let host = address
        .rsplit_once(':')
        .map_or(address.as_str(), |(h, _)| h)
        .to_owned();
    match rest.first().copied() {
        Some("is_server_ready") => shared.read(|st| {
            if let Some(refused) = tls_refusal(&st.yb, node, &flags, &address) {
                return refused;
            }
            let Some(s) = st.yb.server(&host, Kind::TServer) else {
                return ExecOutput::fail(
                    1,
                    format!("Error: Network error: could not resolve {address}: no tserver on {host}\n"),
                );
            };
            if !s.process_running(now) {
                return ExecOutput::fail(
                    1,
                    format!(
                        "Error: Network error (yb/util/net/socket.cc:540): connect to {address}: \
                         Connection refused (system error 111)\n"
                    ),
                );
            }
            let n = st.yb.replicas_on(&host);
            let running = s.running_tablets(now, &st.yb.timing, n);
            let not_running = n - running;
            if not_running == 0 {
                ExecOutput::ok("Tablet server is ready\n")
            } else {
                ExecOutput {
                    exit: 1,
                    stdout: format!("Tablet server is not ready: {not_running} tablets not yet running\n"),
                    stderr: format!(
                        "Error: Illegal state: {not_running} tablets are not yet running on {address}\n"
                    ),
                }
            }
        }),
        Some(other) => ExecOutput::fail(1, format!("Invalid command: {other}\n")),
        None => ExecOutput::fail(1, "yb-ts-cli: no command given\n"),
    }
}

/// `curl http://HOST:9000/prometheus-metrics` from a node: the tserver's `follower_lag_ms` for
/// every tablet it follows (Prometheus text), as its web server exports it.
fn curl(shared: &Shared, args: &[&str]) -> ExecOutput {
    let now = shared.now_ms();
    let Some(url) = args.iter().find(|a| !a.starts_with('-')) else {
        return ExecOutput::fail(2, "curl: no URL specified!\n");
    };
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = authority.rsplit_once(':').unwrap_or((authority, "80"));
    shared.read(|st| {
        let yb = &st.yb;
        let refused = || {
            ExecOutput::fail(
                7,
                format!("curl: (7) Failed to connect to {host} port {port}: Connection refused\n"),
            )
        };
        let Some(s) = yb.server(host, Kind::TServer).filter(|_| port == "9000") else {
            return refused();
        };
        if !s.process_running(now) {
            return refused();
        }
        if path != "prometheus-metrics" {
            return ExecOutput::ok(String::new());
        }
        let n = yb.replicas_on(host);
        let lag = s.follower_lag_ms(now, &yb.timing, n);
        let mut out = String::from("# TYPE follower_lag_ms gauge\n");
        for t in yb
            .tablets
            .iter()
            .filter(|t| t.replicas.iter().any(|r| r == host))
            .filter(|t| t.leader.as_deref() != Some(host))
        {
            out.push_str(&format!(
                "follower_lag_ms{{table_id=\"{TABLE}\",tablet_id=\"{}\",metric_type=\"tablet\",exported_instance=\"{host}:9000\"}} {lag} {now}\n",
                t.id
            ));
        }
        ExecOutput::ok(out)
    })
}
