//! Kernel structure layout from BTF. Rust eBPF has no CO-RE relocations, so the
//! agent reads the offsets of the members its programs follow from the running
//! kernel's BTF (`/sys/kernel/btf/vmlinux`) and hands them to the programs as a
//! global. Every member is checked for size, so a kernel whose layout changed is
//! refused with an error naming the member rather than read wrongly.

use std::path::Path;

use btfparse::{Offset, TypeInformation, TypeVariant};
use horcrux_common::{CgroupPath, KernelLayout};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
const POINTER: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("reading {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("parsing kernel BTF: {0}")]
    Parse(String),
    #[error("type `{0}` is not in the kernel's BTF")]
    MissingType(String),
    #[error("`{ty}.{member}` is not in the kernel's BTF ({reason})")]
    MissingMember {
        ty: String,
        member: String,
        reason: String,
    },
    #[error("`{ty}.{member}` is {size} bytes, expected {expected}")]
    UnexpectedSize {
        ty: String,
        member: String,
        size: usize,
        expected: usize,
    },
    #[error("`{ty}.{member}` is a bitfield")]
    Bitfield { ty: String, member: String },
    #[error("enum `{ty}` has no value `{value}`")]
    MissingEnumValue { ty: String, value: String },
    #[error("tracepoint `{tracepoint}` does not have the arguments the program reads: {reason}")]
    TracepointArguments { tracepoint: String, reason: String },
}

/// Which hierarchy a controller's cgroups (CPU, memory) are named in on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupTree {
    /// cgroup2: the task's own cgroup2 directory (`css_set.dfl_cgrp`).
    Unified,
    /// v1 or hybrid: the task's cgroup in that controller's own hierarchy.
    V1Controller,
}

/// The parsed kernel BTF.
pub struct KernelBtf {
    types: TypeInformation,
}

struct Bytes(Vec<u8>);

impl btfparse::Readable for Bytes {
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let source = start
            .checked_add(buffer.len())
            .and_then(|end| self.0.get(start..end))
            .ok_or_else(|| btfparse::Error::new(btfparse::ErrorKind::EOF, "read past the end"))?;
        buffer.copy_from_slice(source);
        Ok(())
    }
}

fn btf_error(error: &btfparse::Error) -> String {
    format!("{:?}: {}", error.kind(), error.message())
}

impl KernelBtf {
    pub fn from_file(path: &Path) -> Result<Self, LayoutError> {
        let bytes = std::fs::read(path).map_err(|error| LayoutError::Read {
            path: path.display().to_string(),
            reason: error.to_string(),
        })?;
        Self::parse(bytes)
    }

    pub fn parse(bytes: Vec<u8>) -> Result<Self, LayoutError> {
        let types = TypeInformation::new(&Bytes(bytes))
            .map_err(|error| LayoutError::Parse(btf_error(&error)))?;
        Ok(Self { types })
    }

    fn type_id(&self, name: &str) -> Result<u32, LayoutError> {
        self.types
            .id_of(name)
            .ok_or_else(|| LayoutError::MissingType(name.into()))
    }

    /// Type id and byte offset of `member` (a path such as `subsys[2]` or
    /// `css.cgroup`) in struct `ty`.
    fn locate(&self, ty: &str, member: &str) -> Result<(u32, u64), LayoutError> {
        let missing = |error: btfparse::Error| LayoutError::MissingMember {
            ty: ty.into(),
            member: member.into(),
            reason: btf_error(&error),
        };
        let (member_type, offset) = self
            .types
            .offset_of(self.type_id(ty)?, member)
            .map_err(missing)?;
        match offset {
            Offset::ByteOffset(offset) => Ok((member_type, offset as u64)),
            Offset::BitOffsetAndSize(..) => Err(LayoutError::Bitfield {
                ty: ty.into(),
                member: member.into(),
            }),
        }
    }

    /// Byte offset of `member` in struct `ty`, checked to be `size` bytes wide.
    pub fn member(&self, ty: &str, member: &str, size: usize) -> Result<u64, LayoutError> {
        let (member_type, offset) = self.locate(ty, member)?;
        let actual =
            self.types
                .size_of(member_type)
                .map_err(|error| LayoutError::MissingMember {
                    ty: ty.into(),
                    member: member.into(),
                    reason: btf_error(&error),
                })?;
        if actual != size {
            return Err(LayoutError::UnexpectedSize {
                ty: ty.into(),
                member: member.into(),
                size: actual,
                expected: size,
            });
        }
        Ok(offset)
    }

    /// Offset of a member whose size does not matter (an embedded struct).
    fn embedded(&self, ty: &str, member: &str) -> Result<u64, LayoutError> {
        self.locate(ty, member).map(|(_, offset)| offset)
    }

    /// The value of an enumerator of enum `ty`.
    pub fn enum_value(&self, ty: &str, value: &str) -> Result<u32, LayoutError> {
        let missing = || LayoutError::MissingEnumValue {
            ty: ty.into(),
            value: value.into(),
        };
        let Some(TypeVariant::Enum(enumeration)) = self.types.from_id(self.type_id(ty)?) else {
            return Err(LayoutError::MissingType(format!("enum {ty}")));
        };
        let found = enumeration
            .named_value_list()
            .iter()
            .find(|named| named.name == value)
            .ok_or_else(missing)?;
        match found.value {
            btfparse::Integer32Value::Unsigned(value) => Ok(value),
            btfparse::Integer32Value::Signed(value) => u32::try_from(value).map_err(|_| missing()),
        }
    }

    /// The value of an enumerator in any enum, named or not (the kernel declares
    /// some, like `MM_ANONPAGES`, in anonymous enums).
    pub fn enumerator(&self, value: &str) -> Result<u32, LayoutError> {
        let missing = || LayoutError::MissingEnumValue {
            ty: "(any)".into(),
            value: value.into(),
        };
        let found = self.types.get().values().find_map(|ty| match ty {
            TypeVariant::Enum(enumeration) => enumeration
                .named_value_list()
                .iter()
                .find(|named| named.name == value)
                .map(|named| named.value),
            _ => None,
        });
        match found.ok_or_else(missing)? {
            btfparse::Integer32Value::Unsigned(value) => Ok(value),
            btfparse::Integer32Value::Signed(value) => u32::try_from(value).map_err(|_| missing()),
        }
    }

    /// The size of struct `ty`.
    fn size_of(&self, ty: &str) -> Result<u64, LayoutError> {
        self.types
            .size_of(self.type_id(ty)?)
            .map(|size| size as u64)
            .map_err(|error| LayoutError::Parse(btf_error(&error)))
    }

    /// The names of the types a `tp_btf` tracepoint passes, after the hidden
    /// context pointer (`btf_trace_<name>` is a pointer to its prototype).
    pub fn tracepoint_arguments(&self, tracepoint: &str) -> Result<Vec<String>, LayoutError> {
        let error = |reason: &str| LayoutError::TracepointArguments {
            tracepoint: tracepoint.into(),
            reason: reason.into(),
        };
        let typedef = self.type_id(&format!("btf_trace_{tracepoint}"))?;
        let prototype = self
            .types
            .pointee_tid(typedef)
            .map_err(|e| error(&btf_error(&e)))?;
        let Some(TypeVariant::FuncProto(prototype)) = self.types.from_id(prototype) else {
            return Err(error("not a function prototype"));
        };
        Ok(prototype
            .parameter_list()
            .iter()
            .skip(1)
            .map(|parameter| self.type_name(parameter.tid()))
            .collect())
    }

    /// A readable name for a type: `task_struct *`, `bool`, `unsigned int`.
    fn type_name(&self, id: u32) -> String {
        match self.types.from_id(id) {
            Some(TypeVariant::Ptr(pointer)) => format!("{} *", self.type_name(*pointer.tid())),
            Some(TypeVariant::Const(inner)) => self.type_name(*inner.tid()),
            Some(TypeVariant::Volatile(inner)) => self.type_name(*inner.tid()),
            _ => self.types.name_of(id).unwrap_or_else(|| "?".into()),
        }
    }

    fn expect_arguments(&self, tracepoint: &str, expected: &[&str]) -> Result<(), LayoutError> {
        let actual = self.tracepoint_arguments(tracepoint)?;
        if actual.len() < expected.len()
            || actual
                .iter()
                .zip(expected)
                .any(|(actual, expected)| actual != expected)
        {
            return Err(LayoutError::TracepointArguments {
                tracepoint: tracepoint.into(),
                reason: format!(
                    "expected ({}), found ({})",
                    expected.join(", "),
                    actual.join(", ")
                ),
            });
        }
        Ok(())
    }

    /// How `css_set` leads to a cgroup: directly (`dfl_cgrp`) or through the state
    /// of controller `subsystem` (an enumerator of `cgroup_subsys_id`).
    fn cgroup_path(&self, subsystem: Option<&str>) -> Result<CgroupPath, LayoutError> {
        Ok(match subsystem {
            None => CgroupPath {
                css_set_offset: self.member("css_set", "dfl_cgrp", POINTER)?,
                through_css: 0,
            },
            Some(subsystem) => {
                let index = self.enum_value("cgroup_subsys_id", subsystem)?;
                CgroupPath {
                    css_set_offset: self.member("css_set", &format!("subsys[{index}]"), POINTER)?,
                    through_css: 1,
                }
            }
        })
    }

    /// Everything the scheduler programs read: task → css_set → cgroup → kernfs id.
    pub fn resolve_sched(
        &self,
        cpu: CgroupTree,
        layout: &mut KernelLayout,
    ) -> Result<(), LayoutError> {
        self.expect_arguments("sched_wakeup", &["task_struct *"])?;
        self.expect_arguments("sched_wakeup_new", &["task_struct *"])?;
        self.expect_arguments(
            "sched_switch",
            &["bool", "task_struct *", "task_struct *", "unsigned int"],
        )?;
        self.resolve_cgroup_common(layout)?;
        layout.task_pid = self.member("task_struct", "pid", 4)?;
        layout.task_runtime = self.member("task_struct", "se.sum_exec_runtime", 8)?;
        layout.task_slice_start_runtime =
            self.member("task_struct", "se.prev_sum_exec_runtime", 8)?;
        layout.cpu_cgroup = self.cgroup_path(match cpu {
            CgroupTree::Unified => None,
            CgroupTree::V1Controller => Some("cpu_cgrp_id"),
        })?;
        Ok(())
    }

    /// Everything the block programs read: request → disk, operation, size, and
    /// request → bio → blkcg_gq → blkcg → cgroup → kernfs id.
    pub fn resolve_block(&self, layout: &mut KernelLayout) -> Result<(), LayoutError> {
        self.expect_arguments("block_rq_complete", &["request *"])?;
        self.resolve_request(layout)?;
        layout.io_cgroup = self.cgroup_path(Some("io_cgrp_id"))?;
        layout.request_data_len = self.member("request", "__data_len", 4)?;
        layout.bio_blkg = self.member("bio", "bi_blkg", POINTER)?;
        layout.blkg_blkcg = self.member("blkcg_gq", "blkcg", POINTER)?;
        layout.blkcg_css = self.embedded("blkcg", "css")?;
        layout.op_read = self.enum_value("req_op", "REQ_OP_READ")?;
        layout.op_flush = self.enum_value("req_op", "REQ_OP_FLUSH")?;
        layout.op_discard = self.enum_value("req_op", "REQ_OP_DISCARD")?;
        Ok(())
    }

    /// An issued request's disk, operation and first bio (block and writeback).
    fn resolve_request(&self, layout: &mut KernelLayout) -> Result<(), LayoutError> {
        self.expect_arguments("block_rq_issue", &["request *"])?;
        self.resolve_cgroup_common(layout)?;
        layout.request_q = self.member("request", "q", POINTER)?;
        layout.request_bio = self.member("request", "bio", POINTER)?;
        layout.request_cmd_flags = self.member("request", "cmd_flags", 4)?;
        layout.request_start_time_ns = self.member("request", "start_time_ns", 8)?;
        layout.request_queue_disk = self.member("request_queue", "disk", POINTER)?;
        layout.gendisk_major = self.member("gendisk", "major", 4)?;
        layout.gendisk_first_minor = self.member("gendisk", "first_minor", 4)?;
        layout.op_write = self.enum_value("req_op", "REQ_OP_WRITE")?;
        Ok(())
    }

    /// How a memory cgroup is reached: from a task (its memory css, in v1 and v2
    /// alike the `mem_cgroup` its memory is charged to), and from a `mem_cgroup`
    /// (its css's cgroup, named in the memory controller's hierarchy).
    fn resolve_memory_cgroup(&self, layout: &mut KernelLayout) -> Result<(), LayoutError> {
        self.resolve_cgroup_common(layout)?;
        layout.memory_css = self.cgroup_path(Some("memory_cgrp_id"))?.css_set_offset;
        layout.memcg_css = self.embedded("mem_cgroup", "css")?;
        Ok(())
    }

    /// Everything the writeback programs read: a folio's flags, size and memcg
    /// (dirtied), a write request's bios → first page → its folio's memcg (written
    /// back). The folio is read at the offsets of the `struct page` it overlays,
    /// which is checked.
    pub fn resolve_writeback(
        &self,
        page_size: u64,
        layout: &mut KernelLayout,
    ) -> Result<(), LayoutError> {
        self.expect_arguments("writeback_dirty_folio", &["folio *", "address_space *"])?;
        self.resolve_request(layout)?;
        self.resolve_memory_cgroup(layout)?;
        layout.request_next_bio = self.member("bio", "bi_next", POINTER)?;
        layout.bio_io_vec = self.member("bio", "bi_io_vec", POINTER)?;
        layout.bio_iter_idx = self.member("bio", "bi_iter.bi_idx", 4)?;
        layout.bio_iter_size = self.member("bio", "bi_iter.bi_size", 4)?;
        layout.bio_vec_page = self.member("bio_vec", "bv_page", POINTER)?;
        layout.bio_vec_size = self.size_of("bio_vec")?;
        layout.page_flags = self.member("page", "flags", 8)?;
        layout.page_compound_head = self.member("page", "compound_head", 8)?;
        layout.page_mapping = self.member("page", "mapping", POINTER)?;
        layout.page_memcg_data = self.member("page", "memcg_data", 8)?;
        for (member, page_offset) in [
            ("flags", layout.page_flags),
            ("memcg_data", layout.page_memcg_data),
        ] {
            let folio_offset = self.member("folio", member, 8)?;
            if folio_offset != page_offset {
                return Err(LayoutError::MissingMember {
                    ty: "folio".into(),
                    member: member.into(),
                    reason: format!(
                        "at {folio_offset}, not at the {page_offset} of its struct page"
                    ),
                });
            }
        }
        // Renamed from `_folio_nr_pages` in Linux 6.16.
        layout.folio_nr_pages = self
            .member("folio", "_nr_pages", 4)
            .or_else(|_| self.member("folio", "_folio_nr_pages", 4))?;
        layout.page_head_mask = 1 << self.enum_value("pageflags", "PG_head")?;
        layout.memcg_data_flags =
            u64::from(self.enum_value("page_memcg_data_flags", "__NR_MEMCG_DATA_FLAGS")?) - 1;
        layout.memcg_data_kmem =
            u64::from(self.enum_value("page_memcg_data_flags", "MEMCG_DATA_KMEM")?);
        layout.page_size = page_size;
        Ok(())
    }

    /// Everything the OOM program reads: the victim's ids, name, memory cgroup and
    /// resident pages, and the memory page counters up from its cgroup.
    pub fn resolve_oom(
        &self,
        page_size: u64,
        layout: &mut KernelLayout,
    ) -> Result<(), LayoutError> {
        self.expect_arguments("mark_victim", &["task_struct *"])?;
        self.resolve_memory_cgroup(layout)?;
        layout.task_pid = self.member("task_struct", "pid", 4)?;
        layout.memcg_memory = self.embedded("mem_cgroup", "memory")?;
        layout.page_counter_usage = self.member("page_counter", "usage", 8)?;
        layout.page_counter_max = self.member("page_counter", "max", 8)?;
        layout.page_counter_parent = self.member("page_counter", "parent", POINTER)?;
        // PAGE_COUNTER_MAX (a macro): LONG_MAX / PAGE_SIZE on 64-bit kernels.
        layout.page_counter_unlimited = i64::MAX as u64 / page_size.max(1);
        // Two charge batches (MEMCG_CHARGE_BATCH, 64 pages) and a 2 MiB huge page.
        layout.oom_limit_slack_pages = 2 * 64 + (2 << 20) / page_size.max(1);
        layout.task_tgid = self.member("task_struct", "tgid", 4)?;
        layout.task_comm = self.member("task_struct", "comm", 16)?;
        layout.task_mm = self.member("task_struct", "mm", POINTER)?;
        for (counter, offset) in [
            ("MM_FILEPAGES", &mut layout.mm_file_pages),
            ("MM_ANONPAGES", &mut layout.mm_anon_pages),
            ("MM_SHMEMPAGES", &mut layout.mm_shmem_pages),
        ] {
            let index = self.enumerator(counter)?;
            // Per-CPU counters since Linux 6.2; an array of atomics before.
            *offset = self
                .member("mm_struct", &format!("rss_stat[{index}].count"), 8)
                .or_else(|_| self.member("mm_struct", &format!("rss_stat.count[{index}]"), 8))?;
        }
        Ok(())
    }

    fn resolve_cgroup_common(&self, layout: &mut KernelLayout) -> Result<(), LayoutError> {
        layout.task_cgroups = self.member("task_struct", "cgroups", POINTER)?;
        layout.css_cgroup = self.member("cgroup_subsys_state", "cgroup", POINTER)?;
        layout.cgroup_kn = self.member("cgroup", "kn", POINTER)?;
        layout.kernfs_node_id = self.member("kernfs_node", "id", 8)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn kernel_btf() -> Option<KernelBtf> {
        if !Path::new(VMLINUX_BTF).exists() {
            eprintln!("SKIPPED: {VMLINUX_BTF} is missing (kernel built without BTF)");
            return None;
        }
        Some(KernelBtf::from_file(VMLINUX_BTF.as_ref()).expect("this kernel's BTF parses"))
    }

    /// Member bit offsets and enumerator values as bpftool reads them, an
    /// independent BTF reader: (type, member) → value.
    fn bpftool_dump() -> Option<HashMap<(String, String), u64>> {
        let output = std::process::Command::new("bpftool")
            .args(["btf", "dump", "file", VMLINUX_BTF, "format", "raw"])
            .output()
            .ok()
            .filter(|output| output.status.success());
        let Some(output) = output else {
            eprintln!(
                "SKIPPED the bpftool comparison: bpftool is not installed (cargo xtask setup)"
            );
            return None;
        };
        let mut values = HashMap::new();
        let mut current: Option<String> = None;
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            if let Some(member) = line.strip_prefix('\t') {
                let Some(ty) = &current else { continue };
                let mut parts = member.split_whitespace();
                let name = parts.next().unwrap_or("").trim_matches('\'').to_owned();
                let value = parts.find_map(|part| {
                    part.strip_prefix("bits_offset=")
                        .or_else(|| part.strip_prefix("val="))
                        .and_then(|value| value.parse().ok())
                });
                if let Some(value) = value {
                    values.entry((ty.clone(), name)).or_insert(value);
                }
            } else {
                // "[12] STRUCT 'task_struct' size=…" or "[7] ENUM 'req_op' …"
                current = line
                    .split('\'')
                    .nth(1)
                    .filter(|_| line.contains(" STRUCT ") || line.contains(" ENUM "))
                    .map(str::to_owned);
            }
        }
        Some(values)
    }

    #[test]
    fn resolves_this_kernels_layout_as_bpftool_reads_it() {
        let Some(btf) = kernel_btf() else { return };
        let mut v1 = KernelLayout::default();
        btf.resolve_sched(CgroupTree::V1Controller, &mut v1)
            .expect("scheduler layout (v1)");
        btf.resolve_block(&mut v1).expect("block layout");
        let mut unified = KernelLayout::default();
        btf.resolve_sched(CgroupTree::Unified, &mut unified)
            .expect("scheduler layout (cgroup2)");
        assert_eq!(unified.cpu_cgroup.through_css, 0);
        assert_eq!(v1.cpu_cgroup.through_css, 1);

        let Some(bpftool) = bpftool_dump() else {
            return;
        };
        let bytes = |ty: &str, member: &str| {
            bpftool
                .get(&(ty.to_owned(), member.to_owned()))
                .unwrap_or_else(|| panic!("bpftool has no direct member {ty}.{member}"))
                / 8
        };
        let value = |ty: &str, name: &str| bpftool[&(ty.to_owned(), name.to_owned())];
        for (ty, member, resolved) in [
            ("task_struct", "pid", v1.task_pid),
            ("task_struct", "cgroups", v1.task_cgroups),
            ("cgroup_subsys_state", "cgroup", v1.css_cgroup),
            ("cgroup", "kn", v1.cgroup_kn),
            ("kernfs_node", "id", v1.kernfs_node_id),
            ("css_set", "dfl_cgrp", unified.cpu_cgroup.css_set_offset),
            ("request", "q", v1.request_q),
            ("request", "bio", v1.request_bio),
            ("request", "cmd_flags", v1.request_cmd_flags),
            ("request", "__data_len", v1.request_data_len),
            ("request", "start_time_ns", v1.request_start_time_ns),
            ("request_queue", "disk", v1.request_queue_disk),
            ("gendisk", "major", v1.gendisk_major),
            ("gendisk", "first_minor", v1.gendisk_first_minor),
            ("bio", "bi_blkg", v1.bio_blkg),
            ("blkcg_gq", "blkcg", v1.blkg_blkcg),
            ("blkcg", "css", v1.blkcg_css),
        ] {
            assert_eq!(resolved, bytes(ty, member), "{ty}.{member}");
        }
        let subsys = bytes("css_set", "subsys");
        assert_eq!(
            v1.cpu_cgroup.css_set_offset,
            subsys + 8 * value("cgroup_subsys_id", "cpu_cgrp_id")
        );
        assert_eq!(
            v1.io_cgroup.css_set_offset,
            subsys + 8 * value("cgroup_subsys_id", "io_cgrp_id")
        );
        // The writeback and OOM families' direct members.
        let mut owners = KernelLayout::default();
        btf.resolve_writeback(4096, &mut owners)
            .expect("writeback layout");
        btf.resolve_oom(4096, &mut owners).expect("OOM layout");
        for (ty, member, resolved) in [
            ("bio", "bi_next", owners.request_next_bio),
            ("bio", "bi_io_vec", owners.bio_io_vec),
            ("bio_vec", "bv_page", owners.bio_vec_page),
            ("page", "flags", owners.page_flags),
            ("page", "memcg_data", owners.page_memcg_data),
            ("mem_cgroup", "css", owners.memcg_css),
            ("mem_cgroup", "memory", owners.memcg_memory),
            ("page_counter", "usage", owners.page_counter_usage),
            ("page_counter", "max", owners.page_counter_max),
            ("page_counter", "parent", owners.page_counter_parent),
            ("task_struct", "tgid", owners.task_tgid),
            ("task_struct", "comm", owners.task_comm),
            ("task_struct", "mm", owners.task_mm),
        ] {
            assert_eq!(resolved, bytes(ty, member), "{ty}.{member}");
        }
        assert_eq!(
            owners.memory_css,
            subsys + 8 * value("cgroup_subsys_id", "memory_cgrp_id")
        );
        assert_eq!(owners.page_head_mask, 1 << value("pageflags", "PG_head"));
        for (name, resolved) in [
            ("REQ_OP_READ", v1.op_read),
            ("REQ_OP_WRITE", v1.op_write),
            ("REQ_OP_FLUSH", v1.op_flush),
            ("REQ_OP_DISCARD", v1.op_discard),
        ] {
            assert_eq!(u64::from(resolved), value("req_op", name), "{name}");
        }
    }

    #[test]
    fn a_missing_or_changed_member_is_a_clear_error() {
        let Some(btf) = kernel_btf() else { return };
        let message = |result: Result<u64, LayoutError>| result.unwrap_err().to_string();
        assert_eq!(
            message(btf.member("task_struct", "no_such_member", 4))
                .split(" (")
                .next(),
            Some("`task_struct.no_such_member` is not in the kernel's BTF")
        );
        assert_eq!(
            message(btf.member("task_struct", "pid", 8)),
            "`task_struct.pid` is 4 bytes, expected 8"
        );
        assert_eq!(
            message(btf.member("no_such_struct", "x", 4)),
            "type `no_such_struct` is not in the kernel's BTF"
        );
        assert_eq!(
            btf.enum_value("req_op", "REQ_OP_NOPE")
                .unwrap_err()
                .to_string(),
            "enum `req_op` has no value `REQ_OP_NOPE`"
        );
        assert_eq!(
            btf.tracepoint_arguments("sched_switch").unwrap(),
            ["bool", "task_struct *", "task_struct *", "unsigned int"]
        );
        let error = btf
            .expect_arguments("sched_switch", &["task_struct *"])
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("tracepoint `sched_switch` does not have the arguments"),
            "{error}"
        );
    }

    #[test]
    fn malformed_btf_is_an_error_not_a_panic() {
        assert!(KernelBtf::parse(Vec::new()).is_err());
        assert!(KernelBtf::parse(vec![0x9f, 0xeb, 1, 0, 24, 0, 0, 0]).is_err());
        let Ok(real) = std::fs::read(VMLINUX_BTF) else {
            eprintln!("SKIPPED the truncation cases: no kernel BTF");
            return;
        };
        // Cut in the header, the type section and the string section.
        for length in [4, 23, 24, 100, real.len() / 3, real.len() - 1] {
            let _ = KernelBtf::parse(real[..length].to_vec());
        }
    }
}
