//! `waymark-powerfs`: the power-loss filesystem as its own process, for trying things by hand.
//!
//! `waymark-powerfs BACKING MOUNTPOINT` mounts and then reads commands on standard input, one a
//! line: `cut drop`, `cut tear SEED`, `cut pages SEED PER_MILLE` (power cut, then exit) or
//! `unmount` (sync everything, unmount, exit). End of input unmounts cleanly.

use std::io::BufRead;
use std::path::PathBuf;

use waymark_powerfs::{CutMode, Options, PowerFs};

fn parse_cut(words: &[&str]) -> Result<CutMode, String> {
    let num = |i: usize, what: &str| -> Result<u64, String> {
        words
            .get(i)
            .ok_or_else(|| format!("`cut {}` needs {what}", words[0]))?
            .parse()
            .map_err(|e| format!("{what}: {e}"))
    };
    match words.first().copied() {
        Some("drop") => Ok(CutMode::DropAll),
        Some("tear") => Ok(CutMode::TearLastWrite {
            seed: num(1, "SEED")?,
        }),
        Some("pages") => Ok(CutMode::RandomPages {
            seed: num(1, "SEED")?,
            per_mille: num(2, "PER_MILLE")? as u32,
        }),
        _ => Err("cut modes: `drop`, `tear SEED`, `pages SEED PER_MILLE`".into()),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: waymark-powerfs BACKING MOUNTPOINT  (then `cut drop|tear SEED|pages SEED PER_MILLE` or `unmount` on stdin)");
        std::process::exit(2);
    }
    let fs = match PowerFs::mount(
        &PathBuf::from(&args[1]),
        &PathBuf::from(&args[2]),
        &Options::default(),
    ) {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("waymark-powerfs: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("waymark-powerfs: {} mounted on {}", args[1], args[2]);
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some("cut") => match parse_cut(&words[1..]) {
                Ok(mode) => {
                    match fs.cut(mode) {
                        Ok(report) => println!("cut: {report:?}"),
                        Err(e) => {
                            eprintln!("waymark-powerfs: {e}");
                            std::process::exit(1);
                        }
                    }
                    return;
                }
                Err(e) => eprintln!("waymark-powerfs: {e}"),
            },
            Some("unmount") => break,
            Some(other) => eprintln!("waymark-powerfs: unknown command `{other}` (cut, unmount)"),
            None => {}
        }
    }
    if let Err(e) = fs.unmount() {
        eprintln!("waymark-powerfs: {e}");
        std::process::exit(1);
    }
}
