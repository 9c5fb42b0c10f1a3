//! Least privilege. Loading and attaching the eBPF programs needs CAP_BPF and
//! CAP_PERFMON (and root's memlock on older kernels); everything after needs only to
//! read other users' `/proc` entries and every cgroup. So once the programs are
//! attached, before any other thread exists (capabilities are per thread and
//! inherited), the agent keeps [`KEPT`] and drops every other capability from the
//! effective, permitted, inheritable, ambient and bounding sets, and sets
//! `no_new_privs`.

use caps::{CapSet, Capability, CapsHashSet};

/// - CAP_DAC_READ_SEARCH: read every cgroup file and `/proc` entry whatever its mode;
/// - CAP_SYS_PTRACE: other users' `/proc/<pid>/exe`, `ns/net`, and `/proc/1/root`
///   (the host's filesystems when the service runs in its own mount namespace).
pub const KEPT: [Capability; 2] = [Capability::CAP_DAC_READ_SEARCH, Capability::CAP_SYS_PTRACE];

/// Kernels before 6.5 refuse every `bpf()` command without CAP_BPF when
/// `kernel.unprivileged_bpf_disabled` is set, reading maps included.
fn map_reads_need_cap_bpf() -> bool {
    let release = nix::sys::utsname::uname()
        .ok()
        .and_then(|name| name.release().to_str().map(str::to_owned))
        .unwrap_or_default();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|part| part.parse::<u32>().ok());
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    let disabled = std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
        .is_ok_and(|value| value.trim() != "0");
    version < (6, 5) && disabled
}

/// Drops to [`KEPT`] (plus CAP_BPF where map reads need it and programs are
/// attached). Returns the capabilities kept; an agent that holds none (not root)
/// has nothing to drop.
pub fn drop_to_runtime(ebpf_attached: bool) -> Result<Vec<String>, String> {
    let mut kept: CapsHashSet = KEPT.into_iter().collect();
    if ebpf_attached && map_reads_need_cap_bpf() {
        kept.insert(Capability::CAP_BPF);
    }
    let permitted = caps::read(None, CapSet::Permitted).map_err(|error| error.to_string())?;
    let kept: CapsHashSet = kept.intersection(&permitted).copied().collect();
    if permitted.contains(&Capability::CAP_SETPCAP) {
        for capability in caps::all() {
            if !kept.contains(&capability) {
                caps::drop(None, CapSet::Bounding, capability).map_err(|error| {
                    format!("dropping {capability} from the bounding set: {error}")
                })?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|error| format!("clearing ambient: {error}"))?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new())
        .map_err(|error| format!("clearing inheritable: {error}"))?;
    caps::set(None, CapSet::Effective, &kept).map_err(|error| format!("effective: {error}"))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(|error| format!("permitted: {error}"))?;
    // SAFETY: prctl with these arguments only sets a flag on the calling thread.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!("no_new_privs: {}", std::io::Error::last_os_error()));
    }
    Ok(effective())
}

/// The calling thread's effective capabilities, by name, sorted.
pub fn effective() -> Vec<String> {
    let mut names: Vec<String> = caps::read(None, CapSet::Effective)
        .map(|set| set.iter().map(|cap| cap.to_string()).collect())
        .unwrap_or_default();
    names.sort();
    names
}
