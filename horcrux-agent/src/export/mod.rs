//! Push export: each `[[remote_write]]` ([`remote_write`]) and `[[otlp]]`
//! ([`otlp`]) target appends every published snapshot to its disk queue
//! ([`queue`]) and sends the queue in order to the receiver, retrying what the
//! protocol calls transient (connection errors; remote_write: 5xx and 429; OTLP:
//! 429, 502, 503, 504) with backoff and dropping (counted) what the receiver
//! refuses for good. Every target has its own thread, queue and figures: one slow
//! or failing receiver never holds another. Like every consumer, an exporter only
//! reads snapshots.

pub mod otlp;
pub mod queue;
pub mod remote_write;

use std::{
    path::Path,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::Serialize;

use crate::{
    catalog::{self, Scope},
    catalog::{Kind, Unit, Value, Visitor},
    clock,
    config::{Protocol, PushAuth, PushTarget},
    http::AppState,
};
use queue::Queue;
use remote_write::SeriesBuilder;

/// Decompressed bytes per request at most (several queued records are joined
/// until this is reached; a larger record goes alone).
const BATCH_BYTES: usize = 4 << 20;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// `Retry-After` is honoured up to this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// A refusal's body is kept (for status and the log) up to this many bytes.
const ERROR_BODY_BYTES: usize = 512;

/// One target's figures, updated by its thread and read by `/api/status` and
/// `/metrics`.
#[derive(Debug, Default)]
pub struct TargetStatus {
    pub protocol: Protocol,
    pub name: String,
    pub url: String,
    samples_queued: AtomicU64,
    samples_sent: AtomicU64,
    samples_retried: AtomicU64,
    dropped_rejected: AtomicU64,
    dropped_queue_full: AtomicU64,
    queue_samples: AtomicU64,
    queue_bytes: AtomicU64,
    corrupt_bytes: AtomicU64,
    requests: AtomicU64,
    sent_bytes: AtomicU64,
    last_success: AtomicU64,
    last_error: Mutex<Option<LastError>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastError {
    pub timestamp: u64,
    pub message: String,
}

/// A target's figures at one instant.
#[derive(Debug, Clone, Serialize)]
pub struct ExportView {
    pub protocol: Protocol,
    pub name: String,
    pub url: String,
    /// Samples appended to the queue since start.
    pub samples_queued: u64,
    pub samples_sent: u64,
    /// Samples in requests that failed and were sent again.
    pub samples_retried: u64,
    /// Samples dropped, by reason: `rejected` (a 4xx other than 429) or
    /// `queue_full` (the oldest segments went to keep within the disk budget).
    pub samples_dropped: DroppedView,
    /// Samples on disk not yet acknowledged.
    pub queue_samples: u64,
    pub queue_bytes: u64,
    /// Damaged queue bytes found and skipped at start-up.
    pub corrupt_bytes: u64,
    pub requests: u64,
    /// Request bodies as sent (snappy-compressed).
    pub sent_bytes: u64,
    /// Unix seconds of the last acknowledged request (`None`: none yet).
    pub last_success: Option<u64>,
    pub last_error: Option<LastError>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DroppedView {
    pub rejected: u64,
    pub queue_full: u64,
}

impl TargetStatus {
    pub fn new(target: &PushTarget) -> Self {
        Self {
            protocol: target.protocol,
            name: target.name.clone(),
            url: target.url.clone(),
            ..Self::default()
        }
    }

    pub fn view(&self) -> ExportView {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ExportView {
            protocol: self.protocol,
            name: self.name.clone(),
            url: self.url.clone(),
            samples_queued: load(&self.samples_queued),
            samples_sent: load(&self.samples_sent),
            samples_retried: load(&self.samples_retried),
            samples_dropped: DroppedView {
                rejected: load(&self.dropped_rejected),
                queue_full: load(&self.dropped_queue_full),
            },
            queue_samples: load(&self.queue_samples),
            queue_bytes: load(&self.queue_bytes),
            corrupt_bytes: load(&self.corrupt_bytes),
            requests: load(&self.requests),
            sent_bytes: load(&self.sent_bytes),
            last_success: Some(load(&self.last_success)).filter(|at| *at > 0),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    fn error(&self, message: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(LastError {
            timestamp: clock::unix_seconds(),
            message,
        });
    }

    fn queue_figures(&self, queue: &Queue) {
        self.queue_samples
            .store(queue.queued_samples(), Ordering::Relaxed);
        self.queue_bytes
            .store(queue.queued_bytes(), Ordering::Relaxed);
    }
}

/// Starts one thread per target. A target whose queue or client cannot be set up
/// is logged and reported in its status; the others run.
pub fn spawn_all(state: &Arc<AppState>, statuses: &[Arc<TargetStatus>]) {
    let started_unix = clock::unix_seconds().saturating_sub(state.started.elapsed().as_secs());
    for (target, status) in state.config.exports.iter().zip(statuses) {
        let dir = state
            .config
            .storage_path
            .join(target.protocol.name())
            .join(&target.queue_dir);
        let encoder = match target.protocol {
            Protocol::RemoteWrite => Encoder::RemoteWrite(SeriesBuilder::new(&target.labels)),
            Protocol::Otlp => Encoder::Otlp(otlp::MetricsBuilder::new(
                &crate::collector::hostname(),
                &target.labels,
                started_unix,
            )),
        };
        let started =
            Exporter::new(target.clone(), &dir, encoder, Arc::clone(status)).and_then(|exporter| {
                let state = Arc::clone(state);
                std::thread::Builder::new()
                    .name(format!(
                        "hx-push-{}",
                        target.queue_dir.chars().take(7).collect::<String>()
                    ))
                    .spawn(move || exporter.run(state))
                    .map_err(|error| format!("starting its thread: {error}"))
            });
        if let Err(error) = started {
            tracing::error!(target = %target.name, protocol = target.protocol.name(), "push target not started: {error}");
            status.error(format!("not started: {error}"));
        }
    }
}

struct Exporter {
    target: PushTarget,
    queue: Queue,
    client: reqwest::Client,
    status: Arc<TargetStatus>,
    series: Encoder,
    /// The collection time (Unix seconds) of the last snapshot sampled from the
    /// node, container and VM collectors.
    sampled: [Option<u64>; 3],
}

/// What turns snapshots into queue records, per protocol.
enum Encoder {
    RemoteWrite(SeriesBuilder),
    Otlp(otlp::MetricsBuilder),
}

impl Encoder {
    fn stamp(&mut self, timestamp_ms: i64) {
        match self {
            Self::RemoteWrite(series) => series.stamp(timestamp_ms),
            Self::Otlp(metrics) => metrics.stamp(timestamp_ms),
        }
    }

    /// The samples visited from now on are `scope`'s (remote_write marks a
    /// scope's vanished series stale; OTLP has no staleness marker).
    fn scope(&mut self, scope: Scope) -> &mut Self {
        if let Self::RemoteWrite(series) = self {
            series.scope(scope);
        }
        self
    }

    /// The record for the queue (snappy-compressed) and its sample count.
    fn finish(&mut self) -> (Vec<u8>, u64) {
        match self {
            Self::RemoteWrite(series) => series.finish(),
            Self::Otlp(metrics) => {
                let (request, points) = metrics.finish();
                (otlp::compress(&request), points)
            }
        }
    }
}

impl Visitor for Encoder {
    fn family(&mut self, name: &str, help: &'static str, kind: Kind, unit: Unit) {
        match self {
            Self::RemoteWrite(series) => series.family(name, help, kind, unit),
            Self::Otlp(metrics) => metrics.family(name, help, kind, unit),
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: Value<'_>) {
        match self {
            Self::RemoteWrite(series) => series.sample(name, labels, value),
            Self::Otlp(metrics) => metrics.sample(name, labels, value),
        }
    }
}

/// How a request ended, for good.
enum Delivery {
    Acknowledged,
    Rejected,
}

impl Exporter {
    fn new(
        target: PushTarget,
        dir: &Path,
        series: Encoder,
        status: Arc<TargetStatus>,
    ) -> Result<Self, String> {
        let (queue, recovery) = Queue::open(dir, target.queue_max_bytes)
            .map_err(|error| format!("queue {}: {error}", dir.display()))?;
        if recovery.corrupt_bytes > 0 || recovery.cursor_reset {
            tracing::warn!(
                target = %target.name,
                intact_records = recovery.records,
                damaged_bytes = recovery.corrupt_bytes,
                cursor_reset = recovery.cursor_reset,
                "push queue recovered with damage"
            );
            status.error(format!(
                "queue recovered {} intact records; {} damaged bytes skipped{}",
                recovery.records,
                recovery.corrupt_bytes,
                if recovery.cursor_reset {
                    "; cursor lost, resending from the oldest record"
                } else {
                    ""
                }
            ));
        } else if recovery.unsent_samples > 0 {
            tracing::info!(
                target = %target.name,
                samples = recovery.unsent_samples,
                "push queue holds unsent samples from before the restart"
            );
        }
        status
            .corrupt_bytes
            .store(recovery.corrupt_bytes, Ordering::Relaxed);
        status.queue_figures(&queue);
        let mut client = reqwest::Client::builder()
            .user_agent(concat!("horcrux/", env!("CARGO_PKG_VERSION")))
            .timeout(target.timeout)
            .connect_timeout(target.timeout.min(Duration::from_secs(10)))
            // A redirect would resend credentials elsewhere; Prometheus does not follow either.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &target.tls_ca_file {
            let pem = std::fs::read(ca)
                .map_err(|error| format!("tls_ca_file {}: {error}", ca.display()))?;
            for certificate in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|error| format!("tls_ca_file {}: {error}", ca.display()))?
            {
                client = client.add_root_certificate(certificate);
            }
        }
        let client = client
            .build()
            .map_err(|error| format!("HTTP client: {error}"))?;
        Ok(Self {
            series,
            target,
            queue,
            client,
            status,
            sampled: [None; 3],
        })
    }

    fn run(mut self, state: Arc<AppState>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(target = %self.target.name, "push runtime: {error}");
                self.status.error(format!("not started: {error}"));
                return;
            }
        };
        runtime.block_on(async move {
            let mut node = state.node.clone();
            let mut containers = state.containers.clone();
            let mut vms = state.vms.clone();
            let mut pushes = tokio::time::interval(self.target.interval);
            pushes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sending = None;
            loop {
                let idle = sending.is_none();
                let delivery = async {
                    match &mut sending {
                        Some((_, request)) => request.await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    Ok(()) = node.changed() => {
                        let snapshot = node.borrow_and_update().clone();
                        if let Some(snapshot) = snapshot {
                            let agent = state.agent_view(
                                Some(&snapshot),
                                containers.borrow().as_deref(),
                                vms.borrow().as_deref(),
                            );
                            self.sample(0, snapshot.at.unix, |series| {
                                catalog::NODE.visit(std::iter::once(&snapshot.node), series.scope(Scope::Node));
                                catalog::AGENT.visit(std::iter::once(&agent), series.scope(Scope::Agent));
                            });
                        }
                    }
                    Ok(()) = containers.changed() => {
                        let snapshot = containers.borrow_and_update().clone();
                        if let Some(snapshot) = snapshot {
                            self.sample(1, snapshot.at.unix, |series| {
                                catalog::CONTAINER.visit(snapshot.containers.iter(), series.scope(Scope::Container));
                            });
                        }
                    }
                    Ok(()) = vms.changed() => {
                        let snapshot = vms.borrow_and_update().clone();
                        if let Some(snapshot) = snapshot {
                            self.sample(2, snapshot.at.unix, |series| {
                                catalog::VM.visit(snapshot.vms.iter(), series.scope(Scope::Vm));
                            });
                        }
                    }
                    _ = pushes.tick() => {
                        // Synced every interval, also while a request is retried
                        // through an outage.
                        if let Err(error) = self.queue.sync() {
                            tracing::error!(target = %self.target.name, "push queue sync: {error}");
                            self.status.error(format!("queue sync: {error}"));
                        }
                        if idle {
                            sending = self.next_request();
                        }
                    }
                    delivery = delivery => {
                        if let Some((batch, _)) = sending.take() {
                            let acknowledged = self.delivered(&batch, delivery);
                            // A backlog (an outage, a restart) drains at once, not a
                            // batch per interval.
                            if acknowledged {
                                sending = self.next_request();
                            }
                        }
                    }
                }
            }
        });
    }

    /// Appends one published snapshot's samples to the queue, stamped with its
    /// collection time; a snapshot republished with the same stamp is not sampled
    /// twice (a receiver refuses a second value at one timestamp).
    fn sample(&mut self, scope: usize, at: u64, visit: impl FnOnce(&mut Encoder)) {
        if self.sampled[scope] == Some(at) {
            return;
        }
        self.sampled[scope] = Some(at);
        let at_ms = at as i64 * 1000;
        self.series.stamp(at_ms);
        visit(&mut self.series);
        let (request, samples) = self.series.finish();
        match self.queue.append(samples, at_ms, &request) {
            Ok(dropped) => {
                self.status
                    .samples_queued
                    .fetch_add(samples, Ordering::Relaxed);
                if dropped > 0 {
                    self.status
                        .dropped_queue_full
                        .fetch_add(dropped, Ordering::Relaxed);
                    tracing::warn!(
                        target = %self.target.name,
                        samples = dropped,
                        budget = self.target.queue_max_bytes,
                        "push queue full: dropped its oldest segment"
                    );
                }
            }
            Err(error) => {
                tracing::error!(target = %self.target.name, "push queue append: {error}");
                self.status.error(format!("queue append: {error}"));
            }
        }
        self.status.queue_figures(&self.queue);
    }

    /// The next queued batch and its delivery, if anything is queued.
    #[allow(clippy::type_complexity)]
    fn next_request(
        &mut self,
    ) -> Option<(
        queue::Batch,
        std::pin::Pin<Box<dyn std::future::Future<Output = Delivery>>>,
    )> {
        let batch = match self.queue.peek(BATCH_BYTES) {
            Ok(batch) => batch?,
            Err(error) => {
                tracing::error!(target = %self.target.name, "push queue read: {error}");
                self.status.error(format!("queue read: {error}"));
                return None;
            }
        };
        let body = match self.target.protocol {
            Protocol::RemoteWrite => remote_write::join(&batch.payloads),
            Protocol::Otlp => otlp::join(&batch.payloads),
        };
        let delivery = deliver(
            self.client.clone(),
            self.target.clone(),
            body,
            batch.samples,
            Arc::clone(&self.status),
        );
        Some((batch, Box::pin(delivery)))
    }

    /// Moves the queue past a batch that ended for good; whether it was
    /// acknowledged.
    fn delivered(&mut self, batch: &queue::Batch, delivery: Delivery) -> bool {
        let acknowledged = matches!(delivery, Delivery::Acknowledged);
        let counter = if acknowledged {
            &self.status.samples_sent
        } else {
            &self.status.dropped_rejected
        };
        counter.fetch_add(batch.samples, Ordering::Relaxed);
        if let Err(error) = self.queue.acknowledge(batch) {
            tracing::error!(target = %self.target.name, "push queue cursor: {error}");
            self.status.error(format!("queue cursor: {error}"));
        }
        self.status.queue_figures(&self.queue);
        acknowledged
    }
}

/// POSTs one body until the receiver acknowledges it (2xx) or refuses it for good
/// (a 4xx other than 429); connection errors, 5xx and 429 are retried with
/// exponential backoff (429's `Retry-After` honoured).
async fn deliver(
    client: reqwest::Client,
    target: PushTarget,
    body: Vec<u8>,
    samples: u64,
    status: Arc<TargetStatus>,
) -> Delivery {
    let body = bytes::Bytes::from(body);
    let mut backoff = MIN_BACKOFF;
    loop {
        status.requests.fetch_add(1, Ordering::Relaxed);
        let wait = match send(&client, &target, body.clone()).await {
            Ok(response) if response.status().is_success() => {
                status
                    .sent_bytes
                    .fetch_add(body.len() as u64, Ordering::Relaxed);
                status
                    .last_success
                    .store(clock::unix_seconds(), Ordering::Relaxed);
                return Delivery::Acknowledged;
            }
            Ok(response) => {
                let code = response.status();
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|value| value.to_str().ok()?.trim().parse::<u64>().ok())
                    .map(|seconds| Duration::from_secs(seconds).min(MAX_RETRY_AFTER));
                let text = error_body(response).await;
                let message = format!("HTTP {code}: {text}");
                status.error(message.clone());
                let retryable = match target.protocol {
                    Protocol::RemoteWrite => code.is_server_error() || code.as_u16() == 429,
                    // The OTLP/HTTP specification's retryable codes.
                    Protocol::Otlp => matches!(code.as_u16(), 429 | 502 | 503 | 504),
                };
                if !retryable {
                    tracing::warn!(target = %target.name, samples, "push refused: {message}");
                    return Delivery::Rejected;
                }
                retry_after.filter(|_| code.as_u16() == 429)
            }
            Err(error) => {
                status.error(error);
                None
            }
        };
        status.samples_retried.fetch_add(samples, Ordering::Relaxed);
        tokio::time::sleep(wait.unwrap_or(backoff)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn send(
    client: &reqwest::Client,
    target: &PushTarget,
    body: bytes::Bytes,
) -> Result<reqwest::Response, String> {
    let request = client
        .post(&target.url)
        .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
        .body(body);
    let request = match target.protocol {
        Protocol::RemoteWrite => request
            .header(reqwest::header::CONTENT_ENCODING, "snappy")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0"),
        Protocol::Otlp => request,
    };
    let request = match &target.auth {
        PushAuth::None => request,
        PushAuth::Bearer { token_file } => request.bearer_auth(read_secret(token_file)?),
        PushAuth::Basic {
            username,
            password_file,
        } => request.basic_auth(username, Some(read_secret(password_file)?)),
    };
    request
        .send()
        .await
        .map_err(|error| crate::error::chain(&error))
}

/// A credentials file, trimmed; read per request so rotation needs no restart.
fn read_secret(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_owned())
        .map_err(|error| format!("reading {}: {error}", path.display()))
}

/// The start of a refusal's body (read no further: a receiver's error page can be
/// large).
async fn error_body(mut response: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < ERROR_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    bytes.truncate(ERROR_BODY_BYTES);
    String::from_utf8_lossy(&bytes)
        .trim()
        .replace(['\n', '\r'], " ")
}
