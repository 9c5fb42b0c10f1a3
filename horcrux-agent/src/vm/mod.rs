//! Data sources for virtual machines: QEMU processes in `/proc` ([`qemu`]), their
//! QMP monitors ([`qmp`]) and the libvirt daemon ([`libvirt`]). The VM collector
//! ([`crate::collector::vms`]) joins them into [`crate::model::VmMetrics`].

pub mod libvirt;
pub mod qemu;
pub mod qmp;
