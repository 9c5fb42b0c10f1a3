//! The eBPF publisher: owns the loaded programs and reads their maps whenever a
//! consumer samples them, so each consumer (the node collector, the container
//! collector) gets counters read at the start of its own cycle and computes its
//! interval figures (rates, p99) over its own interval, whatever the other's.
//! Each read is also published (`watch`) for `/api/status` and `/metrics`.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::watch;

use super::{
    EbpfPrograms, EbpfStatus,
    counters::{EbpfCounters, idle_devices},
};
use crate::procfs::diskstats;

/// Two consumers sampling within this share one read of the maps.
const SHARED_READ: Duration = Duration::from_millis(50);

/// One read of the maps.
#[derive(Debug)]
pub struct EbpfSnapshot {
    pub counters: EbpfCounters,
    pub status: EbpfStatus,
    pub read_at: Instant,
}

pub struct EbpfSampler {
    /// The programs and their last read (none before the first).
    programs: Mutex<(EbpfPrograms, Option<Arc<EbpfSnapshot>>)>,
    attached: bool,
    latest: watch::Sender<Option<Arc<EbpfSnapshot>>>,
}

/// A sample and the errors its read met (empty when it was shared).
pub struct Sample {
    pub snapshot: Arc<EbpfSnapshot>,
    pub errors: Vec<String>,
}

impl EbpfSampler {
    pub fn new(programs: EbpfPrograms) -> Self {
        let attached = programs.any_attached();
        let status = programs.status();
        // Until the first read, the status alone (programs attached or why not).
        let (latest, _) = watch::channel(Some(Arc::new(EbpfSnapshot {
            counters: EbpfCounters::default(),
            status,
            read_at: Instant::now(),
        })));
        Self {
            programs: Mutex::new((programs, None)),
            attached,
            latest,
        }
    }

    /// Whether any program is attached (otherwise there are no counters to sample).
    pub fn attached(&self) -> bool {
        self.attached
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<EbpfSnapshot>>> {
        self.latest.subscribe()
    }

    /// Reads the maps now (or shares a read finished within [`SHARED_READ`]).
    pub fn sample(&self) -> Sample {
        let mut guard = self
            .programs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (programs, last_read) = &mut *guard;
        if let Some(last) = last_read
            && last.read_at.elapsed() < SHARED_READ
        {
            return Sample {
                snapshot: Arc::clone(last),
                errors: Vec::new(),
            };
        }
        // Devices idle in /proc/diskstats: completions the programs never saw are
        // counted on them (see `counters::BlockSource`).
        let idle = std::fs::read_to_string("/proc/diskstats")
            .ok()
            .and_then(|text| diskstats::parse(&text).ok())
            .map(|disks| idle_devices(disks.iter().map(|d| (d.major, d.minor, d.in_flight))))
            .unwrap_or_default();
        let (counters, errors) = programs.read(&idle);
        let snapshot = Arc::new(EbpfSnapshot {
            counters,
            status: programs.status(),
            read_at: Instant::now(),
        });
        *last_read = Some(Arc::clone(&snapshot));
        self.latest.send_replace(Some(Arc::clone(&snapshot)));
        Sample { snapshot, errors }
    }
}
