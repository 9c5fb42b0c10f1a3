//! Data source: the system libvirt daemon (`qemu:///system`), read-only.
//!
//! `libvirt.so.0` is loaded at run time (`dlopen`), not linked: one agent binary
//! runs on hosts with and without libvirt, builds without libvirt's headers, and a
//! host without it gets a status line ("libvirt.so.0 not found"), not a failed
//! start. The few functions used are in every libvirt since 1.2.8.
//!
//! One call per cycle, `virConnectGetAllDomainStats`, gives every domain's state,
//! CPU, balloon, vCPU, interface, block and KVM figures. Lifecycle events
//! (`virConnectDomainEventRegisterAny`) arrive on the default event loop, run on a
//! thread of its own, and are passed on at once as [`DomainEvent`]s.

use std::{
    ffi::{CStr, CString, c_char, c_int, c_uint, c_void},
    sync::mpsc::Sender,
};

use crate::model::{GuestMemory, KvmStats, NetworkTotals, VmDisk, VmInterface, VmState};

const LIBRARY: &CStr = c"libvirt.so.0";
const VIR_DOMAIN_EVENT_ID_LIFECYCLE: c_int = 0;
const VIR_UUID_STRING_BUFLEN: usize = 37;
/// Domains and parameters taken per call at most (a hostile daemon is not
/// expected, but a huge host should not make one cycle unbounded).
const MAX_DOMAINS: usize = 10_000;
const MAX_PARAMS: usize = 100_000;

type Connect = *mut c_void;
type Domain = *mut c_void;
type LifecycleCallback = unsafe extern "C" fn(Connect, Domain, c_int, c_int, *mut c_void) -> c_int;
type FreeCallback = unsafe extern "C" fn(*mut c_void);
type ErrorHandler = unsafe extern "C" fn(*mut c_void, *mut c_void);

#[repr(C)]
struct TypedParameter {
    field: [c_char; 80],
    kind: c_int,
    value: ParameterValue,
}

#[repr(C)]
union ParameterValue {
    i: c_int,
    ui: c_uint,
    l: i64,
    ul: u64,
    d: f64,
    b: c_char,
    s: *const c_char,
}

#[repr(C)]
struct StatsRecord {
    domain: Domain,
    params: *const TypedParameter,
    nparams: c_int,
}

/// The entry points used, resolved once.
struct Api {
    open_read_only: unsafe extern "C" fn(*const c_char) -> Connect,
    close: unsafe extern "C" fn(Connect) -> c_int,
    is_alive: unsafe extern "C" fn(Connect) -> c_int,
    all_domain_stats:
        unsafe extern "C" fn(Connect, c_uint, *mut *mut *mut StatsRecord, c_uint) -> c_int,
    free_stats: unsafe extern "C" fn(*mut *mut StatsRecord),
    domain_name: unsafe extern "C" fn(Domain) -> *const c_char,
    domain_uuid: unsafe extern "C" fn(Domain, *mut c_char) -> c_int,
    last_error: unsafe extern "C" fn() -> *const c_char,
    set_error_func: unsafe extern "C" fn(*mut c_void, Option<ErrorHandler>),
    event_register_default: unsafe extern "C" fn() -> c_int,
    event_run_default: unsafe extern "C" fn() -> c_int,
    register_event: unsafe extern "C" fn(
        Connect,
        Domain,
        c_int,
        LifecycleCallback,
        *mut c_void,
        Option<FreeCallback>,
    ) -> c_int,
    set_keep_alive: unsafe extern "C" fn(Connect, c_int, c_uint) -> c_int,
}

impl Api {
    fn load() -> Result<Self, String> {
        // SAFETY: dlopen with a constant name; the handle is never closed, so the
        // symbols below stay valid for the life of the process.
        let handle = unsafe { libc::dlopen(LIBRARY.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(format!(
                "{} not found (libvirt is not installed)",
                LIBRARY.to_string_lossy()
            ));
        }
        let symbol = |name: &CStr| -> Result<*mut c_void, String> {
            // SAFETY: the handle is valid and the name NUL-terminated.
            let pointer = unsafe { libc::dlsym(handle, name.as_ptr()) };
            if pointer.is_null() {
                Err(format!("libvirt lacks {}", name.to_string_lossy()))
            } else {
                Ok(pointer)
            }
        };
        // SAFETY: each symbol is libvirt's public function of that C signature.
        unsafe {
            Ok(Self {
                open_read_only: function(symbol(c"virConnectOpenReadOnly")?),
                close: function(symbol(c"virConnectClose")?),
                is_alive: function(symbol(c"virConnectIsAlive")?),
                all_domain_stats: function(symbol(c"virConnectGetAllDomainStats")?),
                free_stats: function(symbol(c"virDomainStatsRecordListFree")?),
                domain_name: function(symbol(c"virDomainGetName")?),
                domain_uuid: function(symbol(c"virDomainGetUUIDString")?),
                last_error: function(symbol(c"virGetLastErrorMessage")?),
                set_error_func: function(symbol(c"virSetErrorFunc")?),
                event_register_default: function(symbol(c"virEventRegisterDefaultImpl")?),
                event_run_default: function(symbol(c"virEventRunDefaultImpl")?),
                register_event: function(symbol(c"virConnectDomainEventRegisterAny")?),
                set_keep_alive: function(symbol(c"virConnectSetKeepAlive")?),
            })
        }
    }

    fn last_error(&self) -> String {
        // SAFETY: returns a thread-local string libvirt owns, or NULL.
        let message = unsafe { (self.last_error)() };
        if message.is_null() {
            "unknown libvirt error".into()
        } else {
            // SAFETY: NUL-terminated, valid until the next libvirt call on this thread.
            unsafe { CStr::from_ptr(message) }
                .to_string_lossy()
                .into_owned()
        }
    }
}

/// libvirt loaded, its event loop running, and (while the daemon answers) a
/// read-only connection to the system daemon.
pub struct Libvirt {
    api: &'static Api,
    uri: CString,
    connection: Option<Connect>,
    events: Sender<DomainEvent>,
}

// SAFETY: libvirt connections may be used from any thread (libvirt's documented
// thread safety); the connection is only used by the thread that owns `Libvirt`.
unsafe impl Send for Libvirt {}

/// A domain's lifecycle event: its new state (`None`: undefined, gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainEvent {
    pub name: String,
    pub uuid: String,
    pub state: Option<VmState>,
}

impl Libvirt {
    /// Loads libvirt and starts its event loop; connects on the first [`Self::stats`].
    pub fn load(uri: &str, events: Sender<DomainEvent>) -> Result<Self, String> {
        let api = API
            .get_or_init(|| {
                let api = Api::load()?;
                // SAFETY: a NULL handler silences libvirt's default print to stderr
                // (errors are read with virGetLastErrorMessage instead).
                unsafe { (api.set_error_func)(std::ptr::null_mut(), Some(ignore_error)) };
                // SAFETY: registers libvirt's own poll loop; called once.
                if unsafe { (api.event_register_default)() } != 0 {
                    return Err(format!("libvirt event loop: {}", api.last_error()));
                }
                Ok(api)
            })
            .as_ref()
            .map_err(Clone::clone)?;
        static LOOP: std::sync::Once = std::sync::Once::new();
        LOOP.call_once(|| {
            let run = api.event_run_default;
            let spawned = std::thread::Builder::new()
                .name("libvirt-events".into())
                .spawn(move || {
                    loop {
                        // SAFETY: runs one iteration of the loop registered above.
                        if unsafe { run() } != 0 {
                            std::thread::sleep(std::time::Duration::from_secs(1));
                        }
                    }
                });
            if let Err(error) = spawned {
                tracing::warn!("libvirt events unavailable: {error}");
            }
        });
        let uri = CString::new(uri).map_err(|_| "a libvirt URI with a NUL byte".to_owned())?;
        Ok(Self {
            api,
            uri,
            connection: None,
            events,
        })
    }

    /// Every domain's figures (defined and running), connecting first if needed.
    pub fn stats(&mut self) -> Result<Vec<LibvirtDomain>, String> {
        let connection = self.connection()?;
        let mut records: *mut *mut StatsRecord = std::ptr::null_mut();
        // SAFETY: stats 0 = every group the daemon supports, flags 0 = every domain;
        // libvirt allocates the NULL-terminated list, freed below.
        let count = unsafe { (self.api.all_domain_stats)(connection, 0, &mut records, 0) };
        if count < 0 {
            let error = self.api.last_error();
            self.disconnect();
            return Err(format!("virConnectGetAllDomainStats: {error}"));
        }
        let mut domains = Vec::new();
        for index in 0..(count as usize).min(MAX_DOMAINS) {
            // SAFETY: `records` holds `count` valid records.
            let record = unsafe { &**records.add(index) };
            let (name, uuid) = self.identity(record.domain);
            let params = (0..(record.nparams.max(0) as usize).min(MAX_PARAMS))
                // SAFETY: `params` holds `nparams` parameters.
                .filter_map(|at| parameter(unsafe { &*record.params.add(at) }))
                .collect::<Vec<_>>();
            domains.push(LibvirtDomain::from_params(name, uuid, &params));
        }
        if !records.is_null() {
            // SAFETY: the list libvirt returned, freed once.
            unsafe { (self.api.free_stats)(records) };
        }
        Ok(domains)
    }

    /// The open connection, or a new one (events registered on it).
    fn connection(&mut self) -> Result<Connect, String> {
        if let Some(connection) = self.connection {
            // SAFETY: a connection we opened and have not closed.
            if unsafe { (self.api.is_alive)(connection) } == 1 {
                return Ok(connection);
            }
            self.disconnect();
        }
        // SAFETY: NUL-terminated URI; NULL on failure.
        let connection = unsafe { (self.api.open_read_only)(self.uri.as_ptr()) };
        if connection.is_null() {
            return Err(format!(
                "cannot connect to {}: {}",
                self.uri.to_string_lossy(),
                self.api.last_error()
            ));
        }
        // A daemon that stops answering is noticed within 15 s.
        // SAFETY: valid connection; needs the event loop, which runs.
        unsafe { (self.api.set_keep_alive)(connection, 5, 3) };
        let sender = Box::into_raw(Box::new(self.events.clone())).cast::<c_void>();
        // SAFETY: `lifecycle` has the lifecycle callback's signature; libvirt owns
        // `sender` from here and frees it with `free_sender`.
        let registered = unsafe {
            (self.api.register_event)(
                connection,
                std::ptr::null_mut(),
                VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                lifecycle,
                sender,
                Some(free_sender),
            )
        };
        if registered < 0 {
            tracing::warn!("libvirt lifecycle events: {}", self.api.last_error());
            // SAFETY: not registered, so still ours to free.
            unsafe { free_sender(sender) };
        }
        self.connection = Some(connection);
        Ok(connection)
    }

    fn disconnect(&mut self) {
        if let Some(connection) = self.connection.take() {
            // SAFETY: closed once; registered callbacks go with it.
            unsafe { (self.api.close)(connection) };
        }
    }

    fn identity(&self, domain: Domain) -> (String, String) {
        domain_identity(self.api, domain)
    }

    pub fn uri(&self) -> std::borrow::Cow<'_, str> {
        self.uri.to_string_lossy()
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        self.disconnect();
    }
}

fn domain_identity(api: &Api, domain: Domain) -> (String, String) {
    // SAFETY: a valid domain; the name belongs to it.
    let name = unsafe { (api.domain_name)(domain) };
    let name = if name.is_null() {
        String::new()
    } else {
        // SAFETY: NUL-terminated, valid while the domain is.
        unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .chars()
            .take(256)
            .collect()
    };
    let mut uuid = [0 as c_char; VIR_UUID_STRING_BUFLEN];
    // SAFETY: the buffer has VIR_UUID_STRING_BUFLEN bytes, as the call requires.
    let uuid = if unsafe { (api.domain_uuid)(domain, uuid.as_mut_ptr()) } == 0 {
        // SAFETY: libvirt wrote a NUL-terminated string into the buffer.
        unsafe { CStr::from_ptr(uuid.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    } else {
        String::new()
    };
    (name, uuid)
}

/// A symbol's address as the function pointer type `F`.
///
/// # Safety
/// `F` must be a function pointer of the symbol's C signature.
unsafe fn function<F: Copy>(pointer: *mut c_void) -> F {
    assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>());
    // SAFETY: same size (checked); the caller vouches for the signature.
    unsafe { std::mem::transmute_copy(&pointer) }
}

unsafe extern "C" fn ignore_error(_: *mut c_void, _: *mut c_void) {}

unsafe extern "C" fn free_sender(sender: *mut c_void) {
    // SAFETY: `sender` came from Box::into_raw of this type, freed once.
    drop(unsafe { Box::from_raw(sender.cast::<Sender<DomainEvent>>()) });
}

unsafe extern "C" fn lifecycle(
    _: Connect,
    domain: Domain,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    let Some(Ok(api)) = API.get() else {
        return 0;
    };
    // SAFETY: `opaque` is the Sender registered with this callback, alive until
    // `free_sender`.
    let sender = unsafe { &*opaque.cast::<Sender<DomainEvent>>() };
    let (name, uuid) = domain_identity(api, domain);
    let _ = sender.send(DomainEvent {
        name,
        uuid,
        state: event_state(event, detail),
    });
    0
}

/// libvirt, loaded once per process (the event callback reads it from here).
static API: std::sync::OnceLock<Result<Api, String>> = std::sync::OnceLock::new();

/// A lifecycle event and its detail as the state the domain is now in.
fn event_state(event: c_int, detail: c_int) -> Option<VmState> {
    Some(match (event, detail) {
        (0, _) => VmState::Shutoff,       // defined
        (1, _) => return None,            // undefined
        (2 | 4, _) => VmState::Running,   // started, resumed
        (3, 1 | 7) => VmState::Migrating, // suspended: migrated, post-copy
        (3, _) => VmState::Paused,
        (5, 2) => VmState::Crashed, // stopped: crashed
        (5, _) => VmState::Shutoff,
        (6, _) => VmState::Shutdown,
        (7, _) => VmState::Pmsuspended,
        (8, _) => VmState::Crashed,
        _ => VmState::Blocked,
    })
}

/// One typed parameter's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Number(u64),
    Signed(i64),
    Float(f64),
    Text(String),
}

fn parameter(raw: &TypedParameter) -> Option<(String, Param)> {
    // SAFETY: `field` is a NUL-terminated array (libvirt guarantees the NUL).
    let field = unsafe { CStr::from_ptr(raw.field.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: the union member read is the one `kind` names.
    let value = unsafe {
        match raw.kind {
            1 => Param::Signed(i64::from(raw.value.i)),
            2 => Param::Number(u64::from(raw.value.ui)),
            3 => Param::Signed(raw.value.l),
            4 => Param::Number(raw.value.ul),
            5 => Param::Float(raw.value.d),
            6 => Param::Number(u64::from(raw.value.b != 0)),
            7 if !raw.value.s.is_null() => Param::Text(
                CStr::from_ptr(raw.value.s)
                    .to_string_lossy()
                    .chars()
                    .take(1024)
                    .collect(),
            ),
            _ => return None,
        }
    };
    Some((field, value))
}

/// One domain's figures from its stats record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LibvirtDomain {
    pub name: String,
    pub uuid: String,
    pub state: Option<VmState>,
    pub cpu_time_ns: Option<u64>,
    pub balloon_current_bytes: Option<u64>,
    pub balloon_maximum_bytes: Option<u64>,
    pub guest_memory: Option<GuestMemory>,
    /// vCPU index, on-CPU ns, run-queue delay ns, KVM statistics.
    pub vcpus: Vec<LibvirtVcpu>,
    pub disks: Vec<VmDisk>,
    pub interfaces: Vec<VmInterface>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LibvirtVcpu {
    pub index: u32,
    pub time_ns: Option<u64>,
    pub delay_ns: Option<u64>,
    pub kvm: Option<KvmStats>,
}

impl LibvirtDomain {
    pub fn from_params(name: String, uuid: String, params: &[(String, Param)]) -> Self {
        let number = |key: &str| {
            params.iter().find_map(|(field, value)| match value {
                Param::Number(n) if field == key => Some(*n),
                Param::Signed(n) if field == key => u64::try_from(*n).ok(),
                _ => None,
            })
        };
        let text = |key: &str| {
            params.iter().find_map(|(field, value)| match value {
                Param::Text(text) if field == key => Some(text.clone()),
                _ => None,
            })
        };
        let kib = |key: &str| number(key).map(|kib| kib.saturating_mul(1024));
        let state = number("state.state").map(|state| match (state, number("state.reason")) {
            (1, _) => VmState::Running,
            (3, Some(2)) => VmState::Migrating,
            (3, _) => VmState::Paused,
            (4, _) => VmState::Shutdown,
            (5, _) => VmState::Shutoff,
            (6, _) => VmState::Crashed,
            (7, _) => VmState::Pmsuspended,
            _ => VmState::Blocked,
        });
        let guest = GuestMemory {
            available_bytes: kib("balloon.available"),
            unused_bytes: kib("balloon.unused"),
            usable_bytes: kib("balloon.usable"),
            disk_caches_bytes: kib("balloon.disk_caches"),
            swap_in_bytes_total: kib("balloon.swap_in"),
            swap_out_bytes_total: kib("balloon.swap_out"),
            major_faults_total: number("balloon.major_fault"),
            minor_faults_total: number("balloon.minor_fault"),
        };
        let vcpus = (0..number("vcpu.maximum").unwrap_or(0).min(1024) as u32)
            .map(|index| {
                let prefix = format!("vcpu.{index}.");
                let mut kvm = KvmStats::default();
                let mut has_kvm = false;
                for (field, value) in params {
                    if let (Some(stat), Param::Number(value)) = (
                        field
                            .strip_prefix(&prefix)
                            .and_then(|rest| rest.strip_suffix(".sum")),
                        value,
                    ) {
                        super::qmp::set_kvm_stat(&mut kvm, stat, *value);
                        has_kvm = true;
                    }
                }
                LibvirtVcpu {
                    index,
                    time_ns: number(&format!("{prefix}time")),
                    delay_ns: number(&format!("{prefix}delay")),
                    kvm: has_kvm.then_some(kvm),
                }
            })
            .collect();
        let disks = (0..number("block.count").unwrap_or(0).min(1024))
            .filter_map(|index| {
                let key = |suffix: &str| format!("block.{index}.{suffix}");
                let count = |suffix: &str| number(&key(suffix)).unwrap_or(0);
                let seconds = |suffix: &str| count(suffix) as f64 / 1e9;
                Some(VmDisk {
                    device: text(&key("name"))?,
                    read_ops_total: count("rd.reqs"),
                    write_ops_total: count("wr.reqs"),
                    flush_ops_total: count("fl.reqs"),
                    read_bytes_total: count("rd.bytes"),
                    write_bytes_total: count("wr.bytes"),
                    read_time_seconds_total: seconds("rd.times"),
                    write_time_seconds_total: seconds("wr.times"),
                    flush_time_seconds_total: seconds("fl.times"),
                    allocation_bytes: number(&key("allocation")),
                    capacity_bytes: number(&key("capacity")),
                })
            })
            .collect();
        let interfaces = (0..number("net.count").unwrap_or(0).min(1024))
            .filter_map(|index| {
                let count = |suffix: &str| number(&format!("net.{index}.{suffix}")).unwrap_or(0);
                Some(VmInterface {
                    device: text(&format!("net.{index}.name"))?,
                    // libvirt reports the guest's side already.
                    counters: NetworkTotals {
                        rx_bytes_total: count("rx.bytes"),
                        rx_packets_total: count("rx.pkts"),
                        rx_errors_total: count("rx.errs"),
                        rx_dropped_total: count("rx.drop"),
                        tx_bytes_total: count("tx.bytes"),
                        tx_packets_total: count("tx.pkts"),
                        tx_errors_total: count("tx.errs"),
                        tx_dropped_total: count("tx.drop"),
                    },
                })
            })
            .collect();
        Self {
            name,
            uuid,
            state,
            cpu_time_ns: number("cpu.time"),
            balloon_current_bytes: kib("balloon.current"),
            balloon_maximum_bytes: kib("balloon.maximum"),
            guest_memory: (guest != GuestMemory::default()).then_some(guest),
            vcpus,
            disks,
            interfaces,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(text: &str) -> Vec<(String, Param)> {
        text.lines()
            .filter_map(|line| line.trim().split_once('='))
            .map(|(key, value)| {
                let value = value
                    .parse()
                    .map(Param::Number)
                    .unwrap_or_else(|_| Param::Text(value.to_owned()));
                (key.to_owned(), value)
            })
            .collect()
    }

    #[test]
    fn domstats_records_become_domains() {
        // As `virsh domstats` printed them for a running domain here.
        let domain = LibvirtDomain::from_params(
            "hx-spin".into(),
            "u".into(),
            &params(
                "state.state=1\nstate.reason=1\ncpu.time=2201126000\n\
                 balloon.current=65536\nballoon.maximum=65536\nballoon.rss=44456\n\
                 vcpu.current=2\nvcpu.maximum=2\nvcpu.0.state=1\nvcpu.0.time=5850000000\n\
                 vcpu.0.delay=7716342\nvcpu.0.exits.sum=36550\nvcpu.0.halt_wait_ns.sum=0\n\
                 vcpu.0.guest_mode.cur=0\nvcpu.1.time=0\nvcpu.1.halt_exits.sum=1\n\
                 net.count=1\nnet.0.name=vnet0\nnet.0.rx.bytes=100\nnet.0.tx.pkts=3\n\
                 block.count=1\nblock.0.name=vda\nblock.0.rd.reqs=1\nblock.0.rd.bytes=512\n\
                 block.0.wr.times=2000000000\nblock.0.capacity=1048576",
            ),
        );
        assert_eq!(domain.state, Some(VmState::Running));
        assert_eq!(domain.cpu_time_ns, Some(2201126000));
        assert_eq!(domain.balloon_current_bytes, Some(64 << 20));
        assert_eq!(
            domain.guest_memory, None,
            "rss is the host's, not the guest's"
        );
        assert_eq!(domain.vcpus.len(), 2);
        assert_eq!(domain.vcpus[0].delay_ns, Some(7716342));
        assert_eq!(domain.vcpus[0].kvm.map(|kvm| kvm.exits), Some(36550));
        assert_eq!(domain.vcpus[1].kvm.map(|kvm| kvm.halt_exits), Some(1));
        assert_eq!(domain.disks[0].device, "vda");
        assert_eq!(domain.disks[0].read_bytes_total, 512);
        assert_eq!(domain.disks[0].write_time_seconds_total, 2.0);
        assert_eq!(domain.disks[0].capacity_bytes, Some(1 << 20));
        assert_eq!(domain.interfaces[0].device, "vnet0");
        assert_eq!(domain.interfaces[0].counters.rx_bytes_total, 100);
        assert_eq!(domain.interfaces[0].counters.tx_packets_total, 3);
    }

    #[test]
    fn inactive_and_hostile_records_are_survived() {
        let domain = LibvirtDomain::from_params(
            "off".into(),
            "u".into(),
            &params("state.state=5\nstate.reason=1\nvcpu.maximum=99999999\nblock.count=3"),
        );
        assert_eq!(domain.state, Some(VmState::Shutoff));
        assert_eq!(domain.vcpus.len(), 1024);
        assert!(domain.disks.is_empty(), "blocks without names are skipped");
    }

    #[test]
    fn lifecycle_events_map_to_states() {
        assert_eq!(event_state(3, 0), Some(VmState::Paused));
        assert_eq!(event_state(3, 1), Some(VmState::Migrating));
        assert_eq!(event_state(4, 0), Some(VmState::Running));
        assert_eq!(event_state(5, 2), Some(VmState::Crashed));
        assert_eq!(event_state(5, 0), Some(VmState::Shutoff));
        assert_eq!(event_state(1, 0), None);
    }
}
