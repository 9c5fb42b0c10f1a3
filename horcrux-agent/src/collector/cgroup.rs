//! A cgroup's counters as the model's [`CgroupUsage`], with CPU and block rates
//! from the rate cache: what containers and VMs share. Rates are kept per cgroup
//! path, so two targets never mix their samples.

use std::{
    collections::{BTreeMap, HashMap},
    time::Instant,
};

use crate::{
    cgroup::{files::DeviceIo, stats::ContainerCounters},
    model::{
        BlockIoTotals, CgroupUsage, ContainerBlockIo, ContainerCpu, ContainerDeviceIo,
        ContainerMemory, ContainerPids, ContainerThrottling,
    },
    rates::{Decrease, RateTracker},
};

pub struct CgroupRates {
    /// usage, user, system CPU nanoseconds, by cgroup path.
    cpu_time: RateTracker<String, 3>,
    /// read bytes, write bytes, by cgroup path.
    block_bytes: RateTracker<String, 2>,
}

impl Default for CgroupRates {
    fn default() -> Self {
        Self {
            cpu_time: RateTracker::new(Decrease::Reset),
            block_bytes: RateTracker::new(Decrease::Reset),
        }
    }
}

impl CgroupRates {
    /// Starts a cycle: paths not observed in it are forgotten at the next.
    pub fn begin(&mut self, now: Instant) {
        self.cpu_time.begin(now);
        self.block_bytes.begin(now);
    }

    /// The usage of the cgroup at `path`; why a family is missing goes to `unavailable`.
    pub fn usage(
        &mut self,
        path: &str,
        counters: &mut ContainerCounters,
        device_names: &HashMap<(u32, u32), String>,
        unavailable: &mut BTreeMap<&'static str, String>,
    ) -> CgroupUsage {
        let cpu = available(unavailable, "cpu", taken(&mut counters.cpu)).map(|cpu| {
            let rates = self
                .cpu_time
                .observe(
                    path.to_owned(),
                    [
                        cpu.usage_ns,
                        cpu.user_ns.unwrap_or(0),
                        cpu.system_ns.unwrap_or(0),
                    ],
                )
                .map(|deltas| deltas.per_second().map(|ns_per_second| ns_per_second / 1e7));
            ContainerCpu {
                usage_percent: rates.map(|[usage, _, _]| usage),
                user_percent: rates
                    .filter(|_| cpu.user_ns.is_some())
                    .map(|[_, user, _]| user),
                system_percent: rates
                    .filter(|_| cpu.system_ns.is_some())
                    .map(|[_, _, system]| system),
                usage_seconds_total: seconds(cpu.usage_ns),
                user_seconds_total: cpu.user_ns.map(seconds),
                system_seconds_total: cpu.system_ns.map(seconds),
                limit_cores: cpu.limit_cores,
                throttling: cpu.throttling.map(|throttling| ContainerThrottling {
                    periods_total: throttling.periods,
                    throttled_periods_total: throttling.throttled_periods,
                    throttled_seconds_total: seconds(throttling.throttled_ns),
                }),
            }
        });
        let memory = available(unavailable, "memory", taken(&mut counters.memory)).map(|memory| {
            ContainerMemory {
                usage_bytes: memory.usage,
                limit_bytes: memory.limit,
                working_set_bytes: memory.working_set(),
                anon_bytes: memory.anon,
                file_bytes: memory.file,
                active_file_bytes: memory.active_file,
                inactive_file_bytes: memory.inactive_file,
                kernel_bytes: memory.kernel,
                slab_bytes: memory.slab,
                swap_bytes: memory.swap,
                oom_events_total: memory.oom_events,
                oom_kills_total: memory.oom_kills,
                limit_hits_total: memory.limit_hits,
            }
        });
        let block_io =
            available(unavailable, "block_io", taken(&mut counters.block_io)).map(|block| {
                let devices: Vec<ContainerDeviceIo> = block
                    .devices
                    .iter()
                    .map(|io| ContainerDeviceIo {
                        device: device_names.get(&(io.major, io.minor)).cloned(),
                        major: io.major,
                        minor: io.minor,
                        counters: block_io_totals(io),
                    })
                    .collect();
                let totals = devices
                    .iter()
                    .fold(BlockIoTotals::default(), |sum, device| {
                        let d = &device.counters;
                        BlockIoTotals {
                            read_bytes_total: sum.read_bytes_total + d.read_bytes_total,
                            write_bytes_total: sum.write_bytes_total + d.write_bytes_total,
                            discard_bytes_total: sum.discard_bytes_total + d.discard_bytes_total,
                            reads_total: sum.reads_total + d.reads_total,
                            writes_total: sum.writes_total + d.writes_total,
                            discards_total: sum.discards_total + d.discards_total,
                        }
                    });
                let rates = self
                    .block_bytes
                    .observe(
                        path.to_owned(),
                        [totals.read_bytes_total, totals.write_bytes_total],
                    )
                    .map(|deltas| deltas.per_second());
                ContainerBlockIo {
                    source: block.source,
                    totals,
                    read_bytes_per_second: rates.map(|[read, _]| read),
                    write_bytes_per_second: rates.map(|[_, write]| write),
                    devices,
                }
            });
        let pids =
            available(unavailable, "pids", taken(&mut counters.pids)).map(|pids| ContainerPids {
                current: pids.current,
                limit: pids.limit,
            });
        let pressure = available(unavailable, "pressure", taken(&mut counters.pressure));
        CgroupUsage {
            cpu,
            memory,
            block_io,
            pids,
            pressure,
        }
    }
}

/// Moves a family's result out (the caller keeps the processes, state and errors).
fn taken<T>(result: &mut Result<T, String>) -> Result<T, String> {
    std::mem::replace(result, Err(String::new()))
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn block_io_totals(io: &DeviceIo) -> BlockIoTotals {
    BlockIoTotals {
        read_bytes_total: io.read_bytes,
        write_bytes_total: io.write_bytes,
        discard_bytes_total: io.discard_bytes,
        reads_total: io.reads,
        writes_total: io.writes,
        discards_total: io.discards,
    }
}

/// Records why a family is missing and turns the result into an option.
pub fn available<T>(
    unavailable: &mut BTreeMap<&'static str, String>,
    family: &'static str,
    result: Result<T, String>,
) -> Option<T> {
    result
        .map_err(|reason| unavailable.insert(family, reason))
        .ok()
}
