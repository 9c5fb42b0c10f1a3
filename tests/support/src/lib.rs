//! What the tests (`tests/*.rs`) and the benchmarks share: container-like cgroups
//! with workloads for live tests ([`cgroup`]), real QEMU guests, their QMP
//! monitors and libvirt ([`vm`]), and deterministic mutation fuzzing for the
//! parser tests ([`mutate`]).

pub mod cgroup;
pub mod mutate;
pub mod vm;
