//! History across restarts: the agent writes its history to `<storage>/history.dat`
//! every `history_checkpoint_interval` and at shutdown, and reads it back at
//! start-up; a damaged file gives back every record that checks out.

mod common;

use std::{path::Path, time::Duration};

use common::Agent;
use nix::sys::signal::Signal;

fn config(storage: &Path) -> String {
    format!(
        "[monitoring]\nenable_history = true\nhistory_retention = 3600\n\
         [storage]\npath = \"{}\"\nhistory_checkpoint_interval = 10\n",
        storage.display()
    )
}

/// The node's memory history: (Unix seconds, value).
async fn memory_history(agent: &Agent) -> Vec<(u64, f64)> {
    let (status, body) = agent
        .get("/api/monitoring/node/history?metric=memory_usage&range=3600")
        .await;
    assert_eq!(status, 200, "{body}");
    body["points"]
        .as_array()
        .expect("points")
        .iter()
        .filter_map(|point| Some((point["timestamp"].as_u64()?, point["value"].as_f64()?)))
        .collect()
}

fn contains_all(after: &[(u64, f64)], before: &[(u64, f64)]) -> Result<(), String> {
    for point in before {
        if !after.contains(point) {
            return Err(format!("{point:?} is missing after the restart"));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn history_survives_a_restart_and_a_kill_loses_at_most_one_interval() {
    let storage = tempfile::tempdir().expect("storage");
    let config = config(storage.path());
    let mut agent = Agent::start(&config);
    agent.wait_for_cycles(12).await;
    let before = memory_history(&agent).await;
    assert!(before.len() >= 10, "{before:?}");
    assert!(agent.terminate(), "clean exit");

    let mut agent = Agent::start(&config);
    let status = agent.wait_for_cycles(1).await;
    let restored = &status["history_file"]["restored"];
    assert!(restored["series"].as_u64() >= Some(5), "{status}");
    assert_eq!(restored["damaged_bytes"], 0, "{status}");
    let after = memory_history(&agent).await;
    contains_all(&after, &before).unwrap_or_else(|error| panic!("{error}: {after:?}"));

    // Killed outright 15 s later: the 10 s checkpoint holds all but the last seconds.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let before_kill = memory_history(&agent).await;
    assert!(agent.exit_on(Signal::SIGKILL).is_some());
    let agent = Agent::start(&config);
    agent.wait_for_cycles(1).await;
    let after_kill = memory_history(&agent).await;
    let newest_before = before_kill.last().map_or(0, |point| point.0);
    let kept: Vec<(u64, f64)> = before_kill
        .iter()
        .copied()
        .filter(|(at, _)| *at + 11 < newest_before)
        .collect();
    assert!(kept.len() > before.len(), "{kept:?}");
    contains_all(&after_kill, &kept).unwrap_or_else(|error| panic!("{error}: {after_kill:?}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_history_file_gives_back_what_checks_out() {
    let storage = tempfile::tempdir().expect("storage");
    let config = config(storage.path());
    let mut agent = Agent::start(&config);
    agent.wait_for_cycles(5).await;
    assert!(agent.terminate(), "clean exit");
    let path = storage.path().join("history.dat");
    let mut bytes = std::fs::read(&path).expect("history file");
    // The file's records are sorted by scope, then name: damage one in the
    // middle and tear the last.
    let middle = bytes.len() / 2;
    for byte in &mut bytes[middle..middle + 8] {
        *byte ^= 0xa5;
    }
    bytes.truncate(bytes.len() - 10);
    std::fs::write(&path, &bytes).expect("damage");
    let scan_records = |bytes: &[u8]| horcrux_agent::records::scan(bytes, b"HXHIST01");
    let intact = scan_records(&bytes).records.len() as u64;

    let agent = Agent::start(&config);
    let status = agent.wait_for_cycles(1).await;
    let restored = &status["history_file"]["restored"];
    assert!(restored["damaged_bytes"].as_u64() > Some(10), "{status}");
    assert_eq!(restored["series"].as_u64(), Some(intact), "{status}");
    assert!(intact >= 3, "{intact} intact records");
    // The rewrite at the next checkpoint (or shutdown) is whole again.
    drop(agent);
}
