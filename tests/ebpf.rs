//! eBPF: the embedded program loads, attaches to `sched/sched_switch` and counts
//! every context switch, checked against the kernel's own counter (`ctxt` in
//! `/proc/stat`) over the same interval. Also checks that the agent mounts tracefs
//! when it is missing. Needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN to mount).

mod common;

use std::{
    io::{Read, Write},
    path::Path,
    time::Duration,
};

use common::Agent;

const TRACEFS: &str = "/sys/kernel/tracing";

/// (eBPF context switches, /proc/stat context switches) from one collection cycle.
async fn counters_from_one_cycle(agent: &Agent) -> (u64, u64) {
    loop {
        let (_, before) = agent.get("/api/status").await;
        let (_, metrics) = agent.get("/api/monitoring/node/metrics").await;
        let (_, after) = agent.get("/api/status").await;
        let cycle = |status: &serde_json::Value| status["collectors"]["node"]["cycles"].as_u64();
        if cycle(&before) == cycle(&after) {
            let program = &after["ebpf"]["programs"][0];
            return (
                program["counters"]["context_switches"]
                    .as_u64()
                    .expect("eBPF counter"),
                metrics["processes"]["context_switches_total"]
                    .as_u64()
                    .expect("ctxt"),
            );
        }
    }
}

/// `round_trips` pipe ping-pongs between two threads: each blocks on every read.
fn ping_pong(round_trips: usize) {
    let (mut to_child_read, mut to_child_write) = std::io::pipe().expect("pipe");
    let (mut to_parent_read, mut to_parent_write) = std::io::pipe().expect("pipe");
    let echo = std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        for _ in 0..round_trips {
            to_child_read.read_exact(&mut byte).expect("read");
            to_parent_write.write_all(&byte).expect("write");
        }
    });
    let mut byte = [7u8; 1];
    for _ in 0..round_trips {
        to_child_write.write_all(&byte).expect("write");
        to_parent_read.read_exact(&mut byte).expect("read");
    }
    echo.join().expect("echo thread");
}

#[tokio::test(flavor = "multi_thread")]
async fn context_switch_program_attaches_and_matches_the_kernel_counter() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "SKIPPED: loading eBPF programs needs root (CAP_BPF, CAP_PERFMON); CI runs as root"
        );
        return;
    }
    // Take tracefs away (if nothing holds it) to prove the agent mounts it.
    let _ = nix::mount::umount(TRACEFS);

    let agent = Agent::start("");
    let status = agent.wait_for_cycles(1).await;
    assert_eq!(
        status["ebpf"]["embedded"], true,
        "the agent was built without eBPF programs: run `cargo xtask setup` and rebuild"
    );
    let program = &status["ebpf"]["programs"][0];
    assert_eq!(program["state"], "attached", "{program}");
    assert_eq!(program["attach_point"], "tracepoint/sched/sched_switch");
    assert!(
        Path::new(TRACEFS)
            .join("events/sched/sched_switch")
            .is_dir(),
        "tracefs mounted"
    );

    let (ebpf_start, kernel_start) = counters_from_one_cycle(&agent).await;
    let load = tokio::task::spawn_blocking(|| ping_pong(50_000));
    load.await.expect("ping-pong");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (ebpf_end, kernel_end) = counters_from_one_cycle(&agent).await;

    let ebpf = ebpf_end - ebpf_start;
    let kernel = kernel_end.saturating_sub(kernel_start);
    eprintln!("context switches over the interval: eBPF {ebpf}, /proc/stat {kernel}");
    assert!(
        kernel >= 100_000,
        "50k round trips cause at least 100k switches, kernel saw {kernel}"
    );
    let ratio = ebpf as f64 / kernel as f64;
    assert!(
        (0.98..=1.02).contains(&ratio),
        "eBPF {ebpf} vs kernel {kernel} (ratio {ratio:.4})"
    );
}
