//! `waymark demo`: the seed runbook against the sandbox estate, started in this process.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use waymark_engine::Payload;
use waymark_sandbox::{read_effects, Fault, FaultKind, Faults, Sandbox};
use waymark_workflows::maintenance::steps::{self, Step};
use waymark_workflows::Inventory;

use waymark_cli::exit::{usage, ExitStatus};
use waymark_cli::paths::{open_log, operator};
use waymark_cli::view::{outcome_line, outcome_status};

use super::target::engine;
use super::watch::{follow, Display};

/// The fault that makes runbook step `step` fail, and how long it lasts (`None` only for a
/// step the demo has no fault for: the unit test checks every step of the runbook has one).
fn fault_for_step(step: Step) -> Option<Fault> {
    let f = |system: &str, matching: &str, kind: FaultKind, remaining: Option<u32>| Fault {
        system: system.into(),
        matching: matching.into(),
        kind,
        remaining,
    };
    Some(match step {
        steps::SWITCH_TO_ZONE_A => f("elb", "offerup-zone-a=100", FaultKind::Throttle, None),
        steps::STOP_MIRRORMAKER => f(
            "k8s",
            "PATCH prod/mirrormaker2/scale",
            FaultKind::Status(500),
            None,
        ),
        // The connection drops on the restart command (the restart never runs): retried, then
        // compensated. A `Job ... failed` exit is not retried (the activity treats it as final).
        // (`sudo systemctl`: the pre-flight's `sudo -n -l systemctl restart ...` only lists.)
        steps::RESTART_MASTERS => f(
            "ssh",
            "sudo systemctl restart yb-master",
            FaultKind::Drop,
            None,
        ),
        steps::RESTART_TSERVERS => f(
            "ssh",
            "sudo systemctl restart yb-tserver",
            FaultKind::Drop,
            None,
        ),
        // Step 5's own yb-admin call (steps 1 and 4 run yb-admin too: the tools check and the
        // leader blacklist).
        steps::WAIT_FOR_LOAD_BALANCING => f(
            "ssh",
            "get_is_load_balancer_idle",
            FaultKind::Exit(1, "Error: Timed out waiting for the master leader\n".into()),
            None,
        ),
        steps::REGISTER_NEW_NODE => f("elb", "RegisterTargets", FaultKind::Status(500), None),
        steps::RESTART_SERVICES => f("k8s", "stuck prod/fp", FaultKind::Status(500), None),
        // Steps 8 and 9 fail for all their attempts; the compensation, which makes the same kind
        // of call, then gets through.
        steps::START_MIRRORMAKER => f(
            "k8s",
            "PATCH prod/mirrormaker2/scale replicas=2",
            FaultKind::Status(500),
            Some(4),
        ),
        steps::SWITCH_BACK_TO_ZONE_B => {
            f("elb", "offerup-zone-b=100", FaultKind::Throttle, Some(5))
        }
        _ => return None,
    })
}

/// `waymark demo [--fail-at STEP]`.
pub async fn demo(
    data_dir: &Path,
    fail_at: Option<u8>,
    faster: u64,
    time_scale: Option<f64>,
    display: Display,
) -> anyhow::Result<ExitStatus> {
    let spec = super::sandbox::spec(faster, time_scale)?;
    // The runbook's one step table (`maintenance::steps`) says which steps exist.
    let fail_at = match fail_at {
        None => None,
        Some(s) => Some(steps::by_number(s).ok_or_else(|| {
            usage(format!(
                "--fail-at takes a step of the runbook, not {s}: {}",
                steps::ALL
                    .iter()
                    .map(|st| format!("{st} ({})", st.title))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?),
    };
    let fault = match fail_at {
        None => None,
        Some(step) => Some(fault_for_step(step).ok_or_else(|| {
            usage(format!(
                "--fail-at {step}: the demo has no fault for step {step} ({})",
                step.title
            ))
        })?),
    };
    let sandbox_dir = data_dir.join("sandbox");
    let sb = Sandbox::start(&sandbox_dir, &spec)
        .await
        .with_context(|| format!("starting the sandbox estate in {}", sandbox_dir.display()))?;
    waymark_workflows::sandbox::write_inventory(&sandbox_dir, sb.description())
        .with_context(|| format!("writing inventory.toml in {}", sandbox_dir.display()))?;
    if let Some(f) = &fault {
        eprintln!(
            "demo: the sandbox will fail runbook step {} ({} fault on {:?})",
            fail_at.map_or_else(String::new, |s| format!("{s}, {}", s.title)),
            f.system,
            f.matching
        );
        sb.shared().set_faults(Faults {
            rules: vec![f.clone()],
        });
    } else {
        sb.shared().set_faults(Faults::default());
    }
    let inventory_path = sandbox_dir.join("inventory.toml");
    let inv = Inventory::load(&inventory_path)?;
    eprintln!(
        "demo: sandbox estate up ({} nodes, {} yb-masters, Kubernetes, ELBv2 on loopback); inventory {}",
        inv.yugabyte.nodes.len(),
        sb.endpoints().yb_masters.len(),
        inventory_path.display()
    );
    let log = open_log(data_dir)?;
    let engine = engine(log);
    let run = engine
        .start_named(
            "yb-maintenance",
            Payload::encode(&inv)?,
            &format!("{} via demo", operator()),
        )
        .await?;
    println!("{run}");
    let outcome = follow(&engine, run, display).await?;
    println!("{}", outcome_line(run, &outcome));

    let effects = read_effects(&sandbox_dir);
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for e in &effects {
        *counts
            .entry((e.system.clone(), e.action.clone()))
            .or_default() += 1;
    }
    let (weights, replicas) = sb.shared().read(|st| {
        let listener = st
            .elb
            .listener_arn(waymark_sandbox::elb::LOAD_BALANCER)
            .map(str::to_owned);
        let w = listener
            .and_then(|l| st.elb.weights(&l))
            .unwrap_or_default();
        let r: Vec<(String, u32)> = st
            .k8s
            .deployments
            .values()
            .map(|d| (d.name.clone(), d.replicas))
            .collect();
        (w, r)
    });
    eprintln!("\nestate after the run:");
    for (arn, w) in &weights {
        let zone = if *arn == inv.traffic.zone_a_target_group_arn {
            "zone A"
        } else if *arn == inv.traffic.zone_b_target_group_arn {
            "zone B"
        } else {
            "other"
        };
        eprintln!("  traffic weight {zone}: {w}");
    }
    for (name, r) in replicas {
        eprintln!("  deployment {name}: {r} replicas");
    }
    eprintln!("  effects on the estate (sandbox/effects.jsonl):");
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::UTF8_FULL_CONDENSED)
        .set_header(["SYSTEM", "ACTION", "CALLS"]);
    for ((system, action), n) in counts {
        table.add_row([system, action, n.to_string()]);
    }
    for line in table.lines() {
        eprintln!("    {line}");
    }
    let found = std::env::var_os("PATH").and_then(|p| first_on_path(&p, "waymark"));
    let w = invocation(std::env::current_exe().ok().as_deref(), found.as_deref());
    let dd = shell_word(&data_dir.display().to_string());
    eprintln!("\nhistory: {dd} (run {run})");
    match (&found, w == "waymark") {
        (_, true) => {}
        (Some(other), false) => eprintln!(
            "(`waymark` on your PATH is {}, not this binary: the commands name this binary)",
            other.display()
        ),
        (None, false) => eprintln!(
            "(`waymark` is not on your PATH: the commands name this binary; \
             `cargo install --path cli --locked` installs it)"
        ),
    }
    for args in [
        format!("show {run}"),
        format!("history {run}"),
        format!("history {run} --output mermaid"),
        format!("replay {run}"),
        "verify".to_owned(),
    ] {
        eprintln!("  {w} --data-dir {dd} {args}");
    }
    sb.stop();
    Ok(outcome_status(&outcome))
}

/// The file a POSIX shell runs for `name`: the first executable regular file of that name in
/// the `PATH` folders, in order (an empty entry is the working folder).
fn first_on_path(path: &std::ffi::OsStr, name: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::split_paths(path).find_map(|dir| {
        let dir = if dir.as_os_str().is_empty() {
            std::path::PathBuf::from(".")
        } else {
            dir
        };
        let candidate = dir.join(name);
        std::fs::metadata(&candidate)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .then_some(candidate)
    })
}

/// How to run this binary (`me`) in a printed command: `waymark` when the `waymark` the shell
/// would run (`found`, [`first_on_path`]) is this binary, else this binary's own path (`cargo
/// run` leaves it in `target/`; an older install may come first on the PATH), quoted for a
/// POSIX shell.
fn invocation(me: Option<&std::path::Path>, found: Option<&std::path::Path>) -> String {
    let Some(me) = me.and_then(|m| std::fs::canonicalize(m).ok()) else {
        return "waymark".to_owned();
    };
    if found.is_some_and(|f| std::fs::canonicalize(f).is_ok_and(|f| f == me)) {
        "waymark".to_owned()
    } else {
        shell_word(&me.display().to_string())
    }
}

/// `text` as one word for a POSIX shell: as it is when it needs no quoting, else single-quoted.
fn shell_word(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+,:@%=".contains(c));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::Path;

    use waymark_workflows::maintenance::steps;

    use super::{fault_for_step, first_on_path, invocation};

    /// `--fail-at` takes exactly the runbook's steps (its one step table), and each has a fault.
    #[test]
    fn every_runbook_step_has_a_fault() {
        for step in steps::ALL {
            assert!(
                fault_for_step(step).is_some(),
                "no demo fault for step {step} ({})",
                step.title
            );
        }
    }

    fn executable(path: &Path) {
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// The shell runs the first `waymark` on the PATH: when that one is another binary (an
    /// older install), the printed commands name this one, even if a later PATH folder holds
    /// it too.
    #[test]
    fn the_first_waymark_on_the_path_decides_and_another_one_gets_this_binarys_path() {
        let root =
            std::env::temp_dir().join(format!("waymark-demo-invocation-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (old, mine, plain, me_dir) = (
            root.join("old"),
            root.join("mine"),
            root.join("plain"),
            root.join("build dir"),
        );
        for d in [&old, &mine, &plain, &me_dir] {
            std::fs::create_dir_all(d).unwrap();
        }
        let me = me_dir.join("waymark");
        executable(&me);
        executable(&old.join("waymark"));
        std::os::unix::fs::symlink(&me, mine.join("waymark")).unwrap();
        // Not executable: the shell passes it by.
        std::fs::write(plain.join("waymark"), "").unwrap();
        let path = |dirs: &[&Path]| std::env::join_paths(dirs).unwrap();

        let found = first_on_path(&path(&[&plain, &old, &mine]), "waymark");
        assert_eq!(found.as_deref(), Some(old.join("waymark").as_path()));
        let w = invocation(Some(&me), found.as_deref());
        let canonical = std::fs::canonicalize(&me).unwrap().display().to_string();
        assert_eq!(w, format!("'{canonical}'"), "this binary's path, quoted");

        let found = first_on_path(&path(&[&plain, &mine, &old]), "waymark");
        assert_eq!(found.as_deref(), Some(mine.join("waymark").as_path()));
        assert_eq!(invocation(Some(&me), found.as_deref()), "waymark");

        assert_eq!(first_on_path(&path(&[&plain]), "waymark"), None);
        assert_eq!(invocation(Some(&me), None), format!("'{canonical}'"));
        let _ = std::fs::remove_dir_all(&root);
    }
}
