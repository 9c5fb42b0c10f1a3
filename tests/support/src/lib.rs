//! What the tests (`tests/*.rs`) and the benchmarks share: container-like cgroups
//! with workloads for live tests ([`cgroup`]), and deterministic mutation fuzzing
//! for the parser tests ([`mutate`]).

pub mod cgroup;
pub mod mutate;
