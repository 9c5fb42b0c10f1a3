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

/// Where CPU work is charged on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuCgroups {
    /// cgroup2: the task's own cgroup2 directory (`css_set.dfl_cgrp`).
    Unified,
    /// v1 or hybrid: the task's cgroup in the cpu controller's hierarchy.
    V1CpuController,
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

    /// Byte offset of `member` (a path such as `subsys[2]` or `css.cgroup`) in
    /// struct `ty`, checked to be `size` bytes wide.
    pub fn member(&self, ty: &str, member: &str, size: usize) -> Result<u64, LayoutError> {
        let (member_type, offset) =
            self.types
                .offset_of(self.type_id(ty)?, member)
                .map_err(|error| LayoutError::MissingMember {
                    ty: ty.into(),
                    member: member.into(),
                    reason: btf_error(&error),
                })?;
        let Offset::ByteOffset(offset) = offset else {
            return Err(LayoutError::Bitfield {
                ty: ty.into(),
                member: member.into(),
            });
        };
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
        Ok(offset as u64)
    }

    /// Offset of a member whose size does not matter (an embedded struct).
    fn embedded(&self, ty: &str, member: &str) -> Result<u64, LayoutError> {
        let (_, offset) = self
            .types
            .offset_of(self.type_id(ty)?, member)
            .map_err(|error| LayoutError::MissingMember {
                ty: ty.into(),
                member: member.into(),
                reason: btf_error(&error),
            })?;
        match offset {
            Offset::ByteOffset(offset) => Ok(offset as u64),
            Offset::BitOffsetAndSize(..) => Err(LayoutError::Bitfield {
                ty: ty.into(),
                member: member.into(),
            }),
        }
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
        cpu: CpuCgroups,
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
        layout.cpu_cgroup = self.cgroup_path(match cpu {
            CpuCgroups::Unified => None,
            CpuCgroups::V1CpuController => Some("cpu_cgrp_id"),
        })?;
        Ok(())
    }

    /// Everything the block programs read: request → disk, operation, size, and
    /// request → bio → blkcg_gq → blkcg → cgroup → kernfs id.
    pub fn resolve_block(&self, layout: &mut KernelLayout) -> Result<(), LayoutError> {
        self.expect_arguments("block_rq_issue", &["request *"])?;
        self.expect_arguments("block_rq_complete", &["request *"])?;
        self.resolve_cgroup_common(layout)?;
        layout.io_cgroup = self.cgroup_path(Some("io_cgrp_id"))?;
        layout.request_q = self.member("request", "q", POINTER)?;
        layout.request_bio = self.member("request", "bio", POINTER)?;
        layout.request_cmd_flags = self.member("request", "cmd_flags", 4)?;
        layout.request_data_len = self.member("request", "__data_len", 4)?;
        layout.request_queue_disk = self.member("request_queue", "disk", POINTER)?;
        layout.gendisk_major = self.member("gendisk", "major", 4)?;
        layout.gendisk_first_minor = self.member("gendisk", "first_minor", 4)?;
        layout.bio_blkg = self.member("bio", "bi_blkg", POINTER)?;
        layout.blkg_blkcg = self.member("blkcg_gq", "blkcg", POINTER)?;
        layout.blkcg_css = self.embedded("blkcg", "css")?;
        layout.op_read = self.enum_value("req_op", "REQ_OP_READ")?;
        layout.op_write = self.enum_value("req_op", "REQ_OP_WRITE")?;
        layout.op_flush = self.enum_value("req_op", "REQ_OP_FLUSH")?;
        layout.op_discard = self.enum_value("req_op", "REQ_OP_DISCARD")?;
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
