//! Keeps the collector threads alive. A collector that panics is restarted on the
//! same thread with a fresh state after a backoff (1 s, doubling to 60 s; back to
//! 1 s once a run has lasted a minute), and the panic is counted, logged and shown
//! in `/api/status` and `/metrics`. `last_success` tells readers how stale the
//! published snapshot is, whatever happened to the thread.

use std::{
    panic::AssertUnwindSafe,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::health::SupervisorView;

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A run this long resets the backoff: the panic was not a crash loop.
const STABLE_RUN: Duration = Duration::from_secs(60);

/// Environment variable naming a collector (`node`, `containers` or `vms`) to panic once,
/// in its third cycle: the hook the supervision test uses. Only the service's own
/// environment can set it, which only root controls.
pub const INJECT_PANIC_ENV: &str = "HORCRUX_INJECT_PANIC";

/// What the supervisor knows of one collector; shared with the HTTP layer.
#[derive(Debug, Default)]
pub struct CollectorStatus {
    panics: AtomicU64,
    last_panic: Mutex<Option<String>>,
    /// Unix seconds of the last published cycle (0: none yet).
    last_success: AtomicU64,
    injected: std::sync::atomic::AtomicBool,
}

impl CollectorStatus {
    pub fn succeeded(&self, unix: u64) {
        self.last_success.store(unix, Ordering::Relaxed);
    }

    pub fn view(&self) -> SupervisorView {
        SupervisorView {
            panics: self.panics.load(Ordering::Relaxed),
            last_panic: self
                .last_panic
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            last_success: Some(self.last_success.load(Ordering::Relaxed)).filter(|&t| t > 0),
        }
    }

    /// Panics once, in cycle 3, when [`INJECT_PANIC_ENV`] names `collector`.
    pub fn maybe_inject_panic(&self, collector: &str, cycle: u64) {
        if cycle == 3
            && std::env::var(INJECT_PANIC_ENV).is_ok_and(|name| name == collector)
            && !self.injected.swap(true, Ordering::Relaxed)
        {
            panic!("panic injected by {INJECT_PANIC_ENV}");
        }
    }
}

/// Runs `run` (one collector lifetime: it builds its state and loops) on a named
/// thread, restarting it after a panic, until it returns.
pub fn spawn(
    name: &'static str,
    status: std::sync::Arc<CollectorStatus>,
    mut run: impl FnMut() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("{name}-collector"))
        .spawn(move || {
            let mut backoff = FIRST_BACKOFF;
            loop {
                let started = Instant::now();
                let Err(payload) = std::panic::catch_unwind(AssertUnwindSafe(&mut run)) else {
                    return;
                };
                let message = panic_message(payload.as_ref());
                if started.elapsed() >= STABLE_RUN {
                    backoff = FIRST_BACKOFF;
                }
                status.panics.fetch_add(1, Ordering::Relaxed);
                *status
                    .last_panic
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(message.clone());
                tracing::error!(
                    collector = name,
                    restart_in_seconds = backoff.as_secs(),
                    "collector panicked: {message}"
                );
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        })
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic payload".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    #[test]
    fn a_panicking_run_is_restarted_and_counted() {
        let status = Arc::new(CollectorStatus::default());
        let runs = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&runs);
        let thread = spawn("test", Arc::clone(&status), move || {
            if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("first run fails");
            }
        })
        .expect("spawn");
        thread.join().expect("the supervisor itself never panics");
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        let view = status.view();
        assert_eq!(view.panics, 1);
        assert_eq!(view.last_panic.as_deref(), Some("first run fails"));
    }
}
