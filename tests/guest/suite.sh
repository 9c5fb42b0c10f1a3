#!/bin/sh
# The guest suite (`cargo xtask guest-test`): runs as root inside a Debian guest with
# systemd as PID 1 and pure cgroup v2. It installs the agent as the README documents,
# then checks the service, its sandbox, and its figures against the guest kernel's
# own counters. One line per check on the results port: `ok NAME DETAIL` or
# `not ok NAME DETAIL`; `info …` lines carry figures, `# …` lines diagnostics;
# `done` ends the report.

set -u
# udev names the port once virtio_console is loaded, which can trail multi-user.target.
i=0
while [ ! -e /dev/virtio-ports/results ] && [ "$i" -lt 600 ]; do
    sleep 0.1
    i=$((i + 1))
done
exec 3> /dev/virtio-ports/results
SHARE=/mnt/horcrux
MIB=1048576
CGROUPS=/sys/fs/cgroup/system.slice

ok() { echo "ok $*" >&3; }
not_ok() { echo "not ok $*" >&3; }
info() { echo "info $*" >&3; }
# check NAME DETAIL COMMAND...: one result line from COMMAND's exit status.
check() {
    name=$1 detail=$2
    shift 2
    if "$@"; then ok "$name $detail"; else not_ok "$name $detail"; fi
}
# The agent's API on PORT (default: the service's 8006).
api() { curl -sf --max-time 20 "http://127.0.0.1:${PORT:-8006}$1"; }
# wait_until SECONDS COMMAND...: true once COMMAND succeeds within SECONDS.
wait_until() {
    limit=$1
    shift
    waited=0
    while [ "$waited" -lt "$limit" ]; do
        "$@" && return 0
        sleep 1
        waited=$((waited + 1))
    done
    return 1
}
ready() { api /readyz > /dev/null; }
# holds A OP B: a numeric comparison.
holds() { awk -v a="$1" -v b="$3" "BEGIN { exit !(a $2 b) }"; }
# within A B PERCENT: |A - B| <= PERCENT% of B.
within() {
    awk -v a="$1" -v b="$2" -v p="$3" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= b * p / 100) }'
}
both() { "$1" && "$2"; }
journal_tail() {
    journalctl -u "$1" --no-pager 2> /dev/null | tail -n 15 | sed 's/^/# /' >&3
}
# A Docker-like 64-hex id: `docker-<id>.scope` under system.slice is the cgroup
# Docker's systemd driver creates.
new_id() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }
# scope ID PROPERTIES... -- COMMAND: runs COMMAND in the scope, in the background.
scope() {
    id=$1
    shift
    systemd-run --quiet --scope --unit="docker-$id" --slice=system.slice "$@" > /dev/null 2>&1 &
    wait_until 30 test -d "$CGROUPS/docker-$id.scope"
}
container() { api "/api/containers/$1/metrics"; }
discovered() { container "$1" > /dev/null; }
# next_cycle ID AFTER: the container's metrics from a cycle stamped after AFTER, in
# $snapshot.
next_cycle() {
    snapshot=$(container "$1") && [ "$(echo "$snapshot" | jq '.timestamp // 0')" -gt "$2" ]
}
# fresh_snapshot ID: waits for a container cycle that starts after this call.
fresh_snapshot() {
    wait_until 60 discovered "$1" || return 1
    since=$(container "$1" | jq .timestamp)
    wait_until 60 next_cycle "$1" "${since:-0}"
}
io_stat() { # io_stat ID FIELD: FIELD summed over the scope's devices in io.stat
    tr ' ' '\n' < "$CGROUPS/docker-$1.scope/io.stat" |
        awk -F= -v key="$2" '$1 == key { sum += $2 } END { print sum + 0 }'
}

# settled_writes ID MIB: waits until the scope has written MIB MiB (io.stat), then for
# two container cycles after the writes ended; $wbytes and $snapshot hold the result.
settled_writes() {
    written() { [ "$(io_stat "$1" wbytes)" -ge $(($2 * MIB)) ]; }
    wait_until 120 written "$1" "$2"
    sleep 3
    fresh_snapshot "$1"
    fresh_snapshot "$1"
    wbytes=$(io_stat "$1" wbytes)
}

suite_started=$(cut -d' ' -f1 /proc/uptime)
info "boot $suite_started s of guest time to multi-user.target"
info "kernel $(uname -r) cgroup $(stat -fc %T /sys/fs/cgroup)" \
    "controllers $(tr ' ' , < /sys/fs/cgroup/cgroup.controllers)" \
    "btf $(test -e /sys/kernel/btf/vmlinux && echo yes || echo no)" \
    "psi $(test -r /proc/pressure/memory && echo yes || echo no)"

# --- The service, installed as the README says ------------------------------------
install -m 755 "$SHARE/horcrux-agent" /usr/local/bin/
install -m 644 "$SHARE/horcrux-agent.service" /etc/systemd/system/
systemctl daemon-reload
started=$(date +%s)
if systemctl enable --now horcrux-agent 2> /dev/null; then
    ok "service-started active in $(($(date +%s) - started)) s"
else
    not_ok "service-started $(systemctl is-active horcrux-agent)"
    journal_tail horcrux-agent
fi
check ready "/readyz answers 200" wait_until 180 ready
check journal "journalctl -u horcrux-agent has the agent's log" \
    sh -c 'journalctl -u horcrux-agent --no-pager | grep -q "horcrux-agent serving"'

# Every sandboxing option of the unit file in force, as systemd reports it and as
# the process shows it.
sandbox_ok=yes
for key in NoNewPrivileges ProtectSystem ProtectHome PrivateTmp PrivateDevices \
    PrivateMounts PrivateIPC ProtectKernelTunables ProtectKernelModules ProtectKernelLogs \
    ProtectControlGroups ProtectClock ProtectHostname RestrictRealtime RestrictSUIDSGID \
    LockPersonality MemoryDenyWriteExecute RemoveIPC; do
    wanted=$(sed -n "s/^$key=//p" "$SHARE/horcrux-agent.service" | tail -n 1)
    actual=$(systemctl show -p "$key" --value horcrux-agent)
    if [ "$wanted" != "$actual" ]; then
        sandbox_ok=no
        info "sandbox $key: the unit says '$wanted', systemd has '$actual'"
    fi
done
pid=$(systemctl show -p MainPID --value horcrux-agent)
status_of() { awk -v key="$1:" '$1 == key { print $2 }' "/proc/$pid/status"; }
expect_status() {
    [ "$(status_of "$1")" = "$2" ] || {
        sandbox_ok=no
        info "sandbox $1 is $(status_of "$1"), not $2"
    }
}
expect_status NoNewPrivs 1
expect_status Seccomp 2
# Bounding set: dac_read_search (2), sys_ptrace (19), perfmon (38), bpf (39). Once
# its programs are attached the agent keeps the first two, and CAP_BPF where reading
# its maps needs it (before 6.5 with unprivileged BPF disabled).
expect_status CapBnd 000000c000080004
kernel_before_6_5() { uname -r | awk -F. '{ exit !($1 < 6 || ($1 == 6 && $2 < 5)) }'; }
if kernel_before_6_5 && [ "$(cat /proc/sys/kernel/unprivileged_bpf_disabled)" != 0 ]; then
    expect_status CapEff 0000008000080004
else
    expect_status CapEff 0000000000080004
fi
awk '$5 == "/" { print $6 }' "/proc/$pid/mountinfo" | grep -q '^ro' || {
    sandbox_ok=no
    info "sandbox: / is writable in the service's mount namespace"
}
check sandbox "every option of the unit in force (systemctl show, /proc/PID/status)" \
    [ "$sandbox_ok" = yes ]

attached=$(api /api/status | jq '.ebpf.attached_programs')
programs=$(api /api/status | jq '.ebpf.programs | length')
check ebpf-attached "$attached of $programs programs attached (layouts from this kernel's BTF)" \
    [ "$attached" = "$programs" ]
[ "$attached" = "$programs" ] ||
    api /api/status | jq -c '.ebpf.programs[] | {name, state, error}' | sed 's/^/# /' >&3

# The filesystems are the guest's own, read through PID 1 despite the unit's namespace.
node=$(api /api/monitoring/node/metrics)
root_fs() { echo "$node" | jq -r "[.filesystems[] | select(.mount_point == \"/\")][0].$1"; }
df_size=$(df -B1 --output=size / | tail -n 1 | tr -d ' ')
check filesystems "/ is $(root_fs device) $(root_fs fs_type), $(root_fs size_bytes) bytes (df: $df_size)" \
    [ "$(root_fs size_bytes)" = "$df_size" ]

# --- Containers: Docker-like systemd scopes ---------------------------------------
busy=$(new_id)
scope "$busy" -p CPUQuota=50% -p MemoryMax=256M sh -c 'while :; do :; done'
check discovered "a docker-<id>.scope under system.slice is a container" \
    wait_until 60 discovered "$busy"
sleep 12
# The agent's reading bracketed by two of the kernel's: the first container cycle
# that starts after `before` was read.
usage_usec() { awk '$1 == "usage_usec" { print $2 }' "$CGROUPS/docker-$busy.scope/cpu.stat"; }
before=$(usage_usec)
fresh_snapshot "$busy"
after=$(usage_usec)
agent_usec=$(echo "$snapshot" | jq '.cpu.usage_seconds_total * 1000000 | floor')
in_bracket() { [ "$before" -le "$agent_usec" ] && [ "$agent_usec" -le "$after" ]; }
check cpu "agent $agent_usec µs within cpu.stat [$before, $after]" in_bracket
limit=$(echo "$snapshot" | jq .cpu.limit_cores)
check cpu-limit "$limit CPUs (CPUQuota=50%)" holds "$limit" == 0.5
memory_kernel=$(cat "$CGROUPS/docker-$busy.scope/memory.current")
memory_agent=$(echo "$snapshot" | jq .memory_usage_bytes)
memory_limit=$(echo "$snapshot" | jq .memory_limit_bytes)
memory_close() { within "$memory_agent" "$memory_kernel" 25; }
limit_right() { [ "$memory_limit" = 268435456 ]; }
check memory "agent $memory_agent bytes, memory.current $memory_kernel, limit $memory_limit" \
    both memory_close limit_right
oncpu_usec=$(echo "$snapshot" | jq '(.ebpf.sched.oncpu_ns // 0) / 1000 | floor')
switches=$(echo "$snapshot" | jq '(.ebpf.sched.voluntary_switches // 0) + (.ebpf.sched.involuntary_switches // 0)')
runq=$(echo "$snapshot" | jq '.ebpf.sched.runq_latency.count // 0')
oncpu_close() { within "$oncpu_usec" "$agent_usec" 5; }
sched_seen() { [ "$switches" -gt 0 ] && [ "$runq" -gt 0 ]; }
check sched "eBPF on-CPU $oncpu_usec µs vs cpu.stat $agent_usec µs (5%), $switches switches, $runq run-queue samples" \
    both oncpu_close sched_seen

# O_DIRECT: 64 MiB charged to the writer's cgroup, as io.stat and eBPF count it.
direct=$(new_id)
scope "$direct" sh -c 'dd if=/dev/zero of=/var/tmp/direct.bin bs=1M count=64 oflag=direct status=none; exec sleep 3600'
settled_writes "$direct" 64
agent_write=$(echo "$snapshot" | jq .block_write_bytes)
ebpf_write=$(echo "$snapshot" | jq '.ebpf.blkio.write_bytes // 0')
source=$(echo "$snapshot" | jq -r .block_io.source)
info "direct io.stat_wbytes $wbytes agent $agent_write ($source) ebpf $ebpf_write"
check direct-io-stat "agent $agent_write bytes = io.stat wbytes $wbytes" [ "$agent_write" = "$wbytes" ]
ebpf_matches() { within "$ebpf_write" $((64 * MIB)) 1 && within "$ebpf_write" "$wbytes" 1; }
check direct-io-ebpf "eBPF $ebpf_write bytes within 1% of 64 MiB and of io.stat $wbytes" ebpf_matches

# Buffered writes and sync: cgroup v2 writeback charges the flusher's I/O to the
# cgroup that dirtied the pages; io.stat and eBPF (the bio's blkcg) agree.
buffered=$(new_id)
scope "$buffered" sh -c 'dd if=/dev/zero of=/var/tmp/buffered.bin bs=1M count=32 status=none; sync; exec sleep 3600'
settled_writes "$buffered" 32
ebpf_write=$(echo "$snapshot" | jq '.ebpf.blkio.write_bytes // 0')
info "writeback io.stat_wbytes $wbytes ebpf $ebpf_write"
check writeback "eBPF $ebpf_write bytes within 2% of io.stat wbytes $wbytes (32 MiB dirtied)" \
    within "$ebpf_write" "$wbytes" 2
# The owner's view (pages' memory cgroup) agrees with the kernel's where cgroup
# writeback charges the owner, as here.
owned_write=$(echo "$snapshot" | jq '.ebpf.blkio.writeback_bytes // 0')
dirtied=$(echo "$snapshot" | jq '.ebpf.blkio.dirtied_bytes // 0')
owner_view() { within "$owned_write" "$wbytes" 2 && within "$dirtied" $((32 * MIB)) 2; }
check writeback-owner "written back for it $owned_write bytes vs io.stat $wbytes (2%), dirtied $dirtied of 32 MiB" \
    owner_view

# PSI: a workload whose anonymous memory nearly fills its limit, reading files
# through what is left, stalls on reclaim (no OOM: page cache is reclaimable).
pressured=$(new_id)
echo 3 > /proc/sys/vm/drop_caches
scope "$pressured" -p MemoryMax=32M -p MemorySwapMax=0 sh -c \
    'stress-ng --quiet --vm 1 --vm-bytes 20M --vm-keep --timeout 600 &
     while :; do cat /usr/bin/* /usr/lib/x86_64-linux-gnu/* > /dev/null 2>&1; done'
memory_some() { awk '$1 == "some" { sub("total=", "", $5); print $5 }' "$CGROUPS/docker-$pressured.scope/memory.pressure"; }
stalled() { [ "$(memory_some)" -gt 0 ]; }
wait_until 60 stalled
fresh_snapshot "$pressured"
agent_some=$(echo "$snapshot" | jq '.pressure.memory.some.total_us // -1')
agent_avg10=$(echo "$snapshot" | jq '.pressure.memory.some.avg10 // -1')
kernel_some=$(memory_some)
psi_right() {
    [ "$agent_some" -gt 0 ] && [ "$agent_some" -le "$kernel_some" ] &&
        holds "$agent_avg10" '>' 0 && holds "$agent_avg10" '<=' 100
}
check psi "memory some: agent $agent_some µs (avg10 $agent_avg10%), memory.pressure $kernel_some µs after" \
    psi_right

# OOM: a scope limited to 32 MiB whose dd allocates 64 MiB once told to. The eBPF
# OOM family names the victim and the scope (on v2 its memory css is the scope's
# own), as the kernel's memory.events counts it.
oomed=$(new_id)
scope "$oomed" -p MemoryMax=32M -p MemorySwapMax=0 -p OOMPolicy=continue sh -c \
    "while [ ! -e /tmp/go-$oomed ]; do sleep 0.2; done; dd if=/dev/zero of=/dev/null bs=64M count=1; exec sleep 3600"
wait_until 60 discovered "$oomed"
touch "/tmp/go-$oomed"
oom_listed() { [ "$(container "$oomed" | jq '.oom_kills | length')" -ge 1 ]; }
wait_until 30 oom_listed
kill_json=$(container "$oomed" | jq -c '.oom_kills[0] | {comm, constraint, rss_bytes, cgroup}')
kernel_kills=$(awk '$1 == "oom_kill" { print $2 }' "$CGROUPS/docker-$oomed.scope/memory.events")
counted=$(api /metrics | grep "^horcrux_container_oom_kills_total{name=\"$oomed\"" | awk '{ print $2 }')
info "oom kill $kill_json memory.events oom_kill $kernel_kills counted $counted"
oom_right() {
    [ "$(echo "$kill_json" | jq -r .comm)" = dd ] &&
        [ "$(echo "$kill_json" | jq -r .constraint)" = memcg ] &&
        [ "$kernel_kills" = 1 ] && [ "$counted" = 1 ]
}
check oom-kill "dd killed in its scope: the agent's kill and count = memory.events oom_kill 1" \
    oom_right

# --- Crash, restart, watchdog ------------------------------------------------------
first_pid=$(systemctl show -p MainPID --value horcrux-agent)
restarts=$(systemctl show -p NRestarts --value horcrux-agent)
systemctl kill -s SEGV horcrux-agent
restarted() {
    now=$(systemctl show -p MainPID --value horcrux-agent)
    [ "$now" != 0 ] && [ "$now" != "$first_pid" ] && systemctl is-active -q horcrux-agent
}
check segv-restart "SIGSEGV: restarted by systemd" wait_until 180 restarted
check segv-ready "serving again" wait_until 180 ready
check segv-journal "the crash is in the journal" \
    sh -c 'journalctl -u horcrux-agent --no-pager | grep -q "status=11/SEGV"'

# --- Unprivileged ---------------------------------------------------------------
: > /tmp/empty.toml
chmod 644 /tmp/empty.toml
setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all --bounding-set=-all \
    /usr/local/bin/horcrux-agent --config /tmp/empty.toml --listen 127.0.0.1:8007 \
    > /tmp/unprivileged.log 2>&1 &
unprivileged=$!
PORT=8007
check unprivileged-ready "as nobody without capabilities: serving" wait_until 180 ready
failed=$(api /api/status | jq '[.ebpf.programs[] | select(.state == "failed" and .error != null)] | length')
memory=$(api /api/monitoring/node/metrics | jq .memory_usage)
degrades() { [ "$failed" = "$programs" ] && holds "$memory" '>' 0; }
check unprivileged-degrades "$failed programs failed with their reason, node metrics served" degrades
kill "$unprivileged"
systemd-run --quiet --unit=horcrux-capabilities -p User=nobody \
    -p "AmbientCapabilities=CAP_BPF CAP_PERFMON CAP_DAC_READ_SEARCH CAP_SYS_PTRACE" \
    /usr/local/bin/horcrux-agent --config /tmp/empty.toml --listen 127.0.0.1:8008
PORT=8008
check capabilities-ready "as nobody with the unit's capabilities: serving" wait_until 180 ready
attached=$(api /api/status | jq '.ebpf.attached_programs')
check capabilities-ebpf "$attached of $programs programs attached" [ "$attached" = "$programs" ]
check capabilities-containers "the containers are seen" wait_until 60 discovered "$busy"
systemctl stop horcrux-capabilities
PORT=8006

# The watchdog held through all of this: the only restart is the SIGSEGV one.
watchdog=$(systemctl show -p WatchdogUSec --value horcrux-agent)
final_restarts=$(systemctl show -p NRestarts --value horcrux-agent)
check watchdog "WatchdogSec $watchdog, restarts $restarts -> $final_restarts" \
    [ "$final_restarts" = $((restarts + 1)) ]
journal_tail horcrux-agent
info "suite $(awk -v start="$suite_started" '{ printf "%.0f", $1 - start }' /proc/uptime) s of guest time"
echo done >&3
