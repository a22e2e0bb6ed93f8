//! One test per bug found.

use waymark_engine::event::{Event, Payload};
use waymark_engine::log::EventLog;
use waymark_engine::RunId;

use crate::util::temp_dir;

/// sled 0.34.7 picks an unfinished `snap.N.generating` file (left by a SIGKILL during a
/// snapshot) over the last complete snapshot and refuses to open. Found by the random-kill test.
#[tokio::test]
async fn log_opens_after_a_kill_during_a_sled_snapshot() {
    let dir = temp_dir();
    let run = RunId::new();
    {
        let log = waymark_engine::open_sled_log(dir.path()).unwrap();
        log.append(
            run,
            vec![Event::RunStarted {
                workflow: "w".into(),
                version: 1,
                input: Payload::null(),
                started_by: "t".into(),
            }],
        )
        .await
        .unwrap();
    }
    // What a killed snapshot writer leaves: a truncated file that sorts after every real one.
    std::fs::write(
        dir.path()
            .join("events.sled/snap.FFFFFFFFFFFFFFFF.generating"),
        b"partial snapsh",
    )
    .unwrap();
    let log =
        waymark_engine::open_sled_log(dir.path()).expect("opens despite the unfinished snapshot");
    assert_eq!(log.read(run).unwrap().len(), 1);
}

/// sled 0.34.7 writes its `conf` in two writes; a kill between them made a new log unopenable.
/// The log is now created aside and renamed into place; leftovers are cleaned up.
#[test]
fn log_creation_killed_halfway_leaves_nothing_that_blocks_the_next_open() {
    let dir = temp_dir();
    let leftover = dir.path().join("events.sled.creating-4242");
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(
        leftover.join("conf"),
        b"segment_size: 524288\nuse_compression: false\nversion: 0.34\n",
    )
    .unwrap();
    drop(waymark_engine::open_sled_log(dir.path()).expect("a fresh log opens"));
    assert!(!leftover.exists(), "the unfinished creation was removed");
}

/// Two processes on one data dir: the second is told who to talk to instead of failing obscurely.
#[test]
fn second_opener_is_told_the_log_is_in_use() {
    let dir = temp_dir();
    let _first = waymark_engine::open_sled_log(dir.path()).unwrap();
    let Err(err) = waymark_engine::open_sled_log(dir.path()) else {
        panic!("second open should fail")
    };
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
}
