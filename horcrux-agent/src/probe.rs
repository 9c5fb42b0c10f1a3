//! Blocking work with a deadline. Some reads can hang for good: `statvfs` on a
//! network mount whose server is gone or a FUSE mount whose daemon stopped, a
//! runtime's metadata file on such a mount, `/proc/<pid>/cmdline` of a process
//! stuck in a page fault. A [`Prober`] runs each on a small pool of worker threads
//! and waits at most its timeout. A probe that times out leaves its key *stuck*:
//! later probes of that key are skipped at once (reported as stale) until the hung
//! call returns, so one dead mount costs one timeout, not one per cycle, and never
//! more than [`MAX_WORKERS`] threads.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex, PoisonError,
        mpsc::{self, RecvTimeoutError, SyncSender},
    },
    time::Duration,
};

/// Worker threads at most: stuck ones included.
pub const MAX_WORKERS: usize = 16;
const WORKER_STACK: usize = 256 * 1024;

/// Work that returns how to deliver its answer: the worker makes itself available
/// again before delivering, so a caller that probes again at once reuses it.
type Job = Box<dyn FnOnce() -> Box<dyn FnOnce() + Send> + Send>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe<T> {
    Done(T),
    /// No answer within the timeout (now stuck), or an earlier probe of the same key
    /// is still stuck, or every worker is.
    Stale,
}

impl<T> Probe<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Probe<U> {
        match self {
            Probe::Done(value) => Probe::Done(f(value)),
            Probe::Stale => Probe::Stale,
        }
    }
}

#[derive(Default)]
struct Shared {
    /// Keys whose probe has not returned.
    pending: Mutex<HashSet<String>>,
    idle: Mutex<Vec<SyncSender<Job>>>,
    workers: Mutex<usize>,
}

#[derive(Clone)]
pub struct Prober {
    shared: Arc<Shared>,
    timeout: Duration,
}

impl Prober {
    pub fn new(timeout: Duration) -> Self {
        Self {
            shared: Arc::default(),
            timeout,
        }
    }

    /// Runs `work` on a worker, waiting at most the timeout.
    pub fn run<T: Send + 'static>(
        &self,
        key: &str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Probe<T> {
        if !lock(&self.shared.pending).insert(key.to_owned()) {
            return Probe::Stale;
        }
        let (result_tx, result_rx) = mpsc::sync_channel(1);
        let shared = Arc::clone(&self.shared);
        let owned_key = key.to_owned();
        let job: Job = Box::new(move || {
            let value = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            // Cleared before the answer is sent: a caller that got it may probe the
            // same key again at once.
            lock(&shared.pending).remove(&owned_key);
            Box::new(move || {
                // A panicked probe sends nothing: its caller sees a stale answer.
                if let Ok(value) = value {
                    let _ = result_tx.send(value);
                }
            })
        });
        if !self.submit(job) {
            lock(&self.shared.pending).remove(key);
            return Probe::Stale;
        }
        match result_rx.recv_timeout(self.timeout) {
            Ok(value) => Probe::Done(value),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => Probe::Stale,
        }
    }

    /// Keys whose probe has not returned: the stale ones.
    pub fn stuck(&self) -> Vec<String> {
        let mut keys: Vec<String> = lock(&self.shared.pending).iter().cloned().collect();
        keys.sort();
        keys
    }

    /// Hands `job` to an idle worker, or a new one while under [`MAX_WORKERS`].
    fn submit(&self, mut job: Job) -> bool {
        while let Some(worker) = lock(&self.shared.idle).pop() {
            match worker.send(job) {
                Ok(()) => return true,
                // That worker is gone (it cannot be, but then try another).
                Err(mpsc::SendError(returned)) => job = returned,
            }
        }
        {
            let mut workers = lock(&self.shared.workers);
            if *workers >= MAX_WORKERS {
                return false;
            }
            *workers += 1;
        }
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(1);
        let shared = Arc::clone(&self.shared);
        let own_sender = job_tx.clone();
        let spawned = std::thread::Builder::new()
            .name("probe".into())
            .stack_size(WORKER_STACK)
            .spawn(move || {
                while let Ok(job) = job_rx.recv() {
                    let deliver = job();
                    lock(&shared.idle).push(own_sender.clone());
                    deliver();
                }
            });
        if spawned.is_err() {
            *lock(&self.shared.workers) -= 1;
            return false;
        }
        job_tx.send(job).is_ok()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn answers_come_back_and_workers_are_reused() {
        let prober = Prober::new(Duration::from_secs(5));
        for round in 0..100 {
            assert_eq!(prober.run("k", move || round * 2), Probe::Done(round * 2));
        }
        assert_eq!(*lock(&prober.shared.workers), 1);
    }

    #[test]
    fn a_hung_probe_is_stale_until_it_returns() {
        let prober = Prober::new(Duration::from_millis(50));
        let (release_tx, release_rx) = channel::<()>();
        let hung = prober.run("mount", move || release_rx.recv().is_ok());
        assert_eq!(hung, Probe::Stale);
        // Skipped at once while the first call hangs; other keys still work.
        let started = std::time::Instant::now();
        assert_eq!(prober.run("mount", || true), Probe::Stale);
        assert!(started.elapsed() < Duration::from_millis(40));
        assert_eq!(prober.stuck(), ["mount"]);
        assert_eq!(prober.run("other", || 7), Probe::Done(7));
        release_tx.send(()).expect("release");
        let recovered = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            prober.run("mount", || true) == Probe::Done(true)
        });
        assert!(recovered);
        assert!(prober.stuck().is_empty());
    }

    #[test]
    fn stuck_workers_are_capped() {
        let prober = Prober::new(Duration::from_millis(10));
        let (_hold, release) = channel::<()>();
        let release = Arc::new(Mutex::new(release));
        for index in 0..MAX_WORKERS + 4 {
            let release = Arc::clone(&release);
            let _ = prober.run(&format!("m{index}"), move || {
                let _ = lock(&release).recv();
            });
        }
        assert_eq!(*lock(&prober.shared.workers), MAX_WORKERS);
        assert_eq!(prober.run("fresh", || 1), Probe::Stale);
    }
}
