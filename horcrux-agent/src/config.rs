//! `/etc/horcrux/horcrux.toml`: the spec's `[monitoring]` keys, `[server] listen` and
//! `[[alerts]]` rules. Unknown keys and invalid values are errors that name the key
//! and its line.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    ops::{Range, RangeInclusive},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

use crate::{
    alerts::{Comparison, Rule, RuleScope},
    catalog,
    collector::containers::ContainerSettings,
};

pub const DEFAULT_PATH: &str = "/etc/horcrux/horcrux.toml";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8006";
/// The system libvirt daemon, as `virsh` connects to it by default as root.
pub const DEFAULT_LIBVIRT_URI: &str = "qemu:///system";
/// `[storage] path`: the push queues (and what else must survive a restart).
pub const DEFAULT_STORAGE_PATH: &str = "/var/lib/horcrux";

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub node_metrics_interval: Duration,
    pub vm_metrics_interval: Duration,
    pub enable_history: bool,
    pub history_retention: Duration,
    pub max_ws_clients: usize,
    pub containers: ContainerSettings,
    pub server: ServerSecurity,
    /// `[ebpf] enabled`: load the eBPF programs (needs CAP_BPF and CAP_PERFMON).
    pub ebpf_enabled: bool,
    /// `[ebpf] families`: which program families to attach (default: all).
    pub ebpf_families: Vec<crate::ebpf::Family>,
    /// `[vms] libvirt_uri`: the libvirt daemon to read, read-only (`None`: `""`,
    /// libvirt is not read).
    pub libvirt_uri: Option<String>,
    pub alerts: Vec<Rule>,
    /// `[storage] path`.
    pub storage_path: PathBuf,
    /// `[storage] history_checkpoint_interval`: how often history is written to
    /// `<path>/history.dat` (with `enable_history`).
    pub history_checkpoint_interval: Duration,
    /// `[storage] history_max_bytes`: the history file's budget.
    pub history_max_bytes: u64,
    /// `[[remote_write]]` and `[[otlp]]` targets, each with its own queue under
    /// `storage_path`.
    pub exports: Vec<PushTarget>,
}

/// What a push target speaks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Prometheus remote_write 1.0 (`[[remote_write]]`).
    #[default]
    RemoteWrite,
    /// OTLP/HTTP protobuf metrics (`[[otlp]]`).
    Otlp,
}

impl Protocol {
    /// The config table, the `protocol` label and the queue directory's parent.
    pub fn name(self) -> &'static str {
        match self {
            Self::RemoteWrite => "remote_write",
            Self::Otlp => "otlp",
        }
    }

    /// The key naming the receiver, and the key of the labels added to what is sent.
    fn keys(self) -> (&'static str, &'static str) {
        match self {
            Self::RemoteWrite => ("url", "external_labels"),
            Self::Otlp => ("endpoint", "resource_attributes"),
        }
    }
}

/// One `[[remote_write]]` or `[[otlp]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTarget {
    pub protocol: Protocol,
    /// `name`, or the URL: the `target` label of the export metrics.
    pub name: String,
    /// The queue's directory under `[storage] path`/<protocol>: `name`, or a hash
    /// of the URL.
    pub queue_dir: String,
    /// `url` (remote_write) or `endpoint` (OTLP).
    pub url: String,
    /// Seconds between samplings of the latest snapshots (and pushes).
    pub interval: Duration,
    /// Per request.
    pub timeout: Duration,
    pub auth: PushAuth,
    /// PEM CAs trusted for an https URL besides the system's.
    pub tls_ca_file: Option<PathBuf>,
    /// `external_labels` (remote_write) or `resource_attributes` (OTLP).
    pub labels: Vec<(String, String)>,
    pub queue_max_bytes: u64,
}

/// How a push target authenticates the agent; secrets live in files, re-read per
/// request (so a rotated token needs no restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushAuth {
    None,
    Bearer {
        token_file: PathBuf,
    },
    Basic {
        username: String,
        password_file: PathBuf,
    },
}

/// `[server]`: who may talk to the agent, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSecurity {
    /// Both set: HTTPS only.
    pub tls: Option<TlsFiles>,
    /// `Authorization: Bearer <token>` with the token in this file.
    pub bearer_token_file: Option<PathBuf>,
    /// user → bcrypt hash, as node_exporter's web config.
    pub basic_auth_users: BTreeMap<String, String>,
    /// Origins allowed on `/ws` besides the agent's own.
    pub allowed_origins: Vec<String>,
    /// Host names accepted besides the listen address, localhost and the node's names.
    pub allowed_hosts: Vec<String>,
    pub allow_unauthenticated_remote: bool,
    /// Concurrent connections at most; more are closed at once.
    pub max_connections: usize,
}

impl ServerSecurity {
    pub fn authenticates(&self) -> bool {
        self.bearer_token_file.is_some() || !self.basic_auth_users.is_empty()
    }
}

impl Default for ServerSecurity {
    fn default() -> Self {
        Self {
            tls: None,
            bearer_token_file: None,
            basic_auth_users: BTreeMap::new(),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            allow_unauthenticated_remote: false,
            max_connections: 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Set: clients must present a certificate signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8006)),
            node_metrics_interval: Duration::from_secs(5),
            vm_metrics_interval: Duration::from_secs(10),
            enable_history: false,
            history_retention: Duration::from_secs(86_400),
            max_ws_clients: 100,
            containers: ContainerSettings::default(),
            server: ServerSecurity::default(),
            ebpf_enabled: true,
            ebpf_families: crate::ebpf::Family::ALL.to_vec(),
            libvirt_uri: Some(DEFAULT_LIBVIRT_URI.to_owned()),
            alerts: Vec::new(),
            storage_path: PathBuf::from(DEFAULT_STORAGE_PATH),
            history_checkpoint_interval: Duration::from_secs(60),
            history_max_bytes: 256 << 20,
            exports: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config {path}, line {line}: `{key}` {reason}")]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        reason: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    monitoring: Monitoring,
    #[serde(default)]
    server: Server,
    #[serde(default)]
    ebpf: EbpfSection,
    #[serde(default)]
    vms: VmsSection,
    #[serde(default)]
    alerts: Vec<AlertSection>,
    #[serde(default)]
    storage: StorageSection,
    #[serde(default)]
    remote_write: Vec<Spanned<PushSection>>,
    #[serde(default)]
    otlp: Vec<Spanned<PushSection>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StorageSection {
    path: Option<Spanned<PathBuf>>,
    history_checkpoint_interval: Option<Spanned<u64>>,
    history_max_bytes: Option<Spanned<u64>>,
}

/// `[[remote_write]]` (`url`, `external_labels`) and `[[otlp]]` (`endpoint`,
/// `resource_attributes`); the rest is common.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushSection {
    url: Option<Spanned<String>>,
    endpoint: Option<Spanned<String>>,
    name: Option<Spanned<String>>,
    interval: Option<Spanned<u64>>,
    timeout: Option<Spanned<u64>>,
    bearer_token_file: Option<Spanned<PathBuf>>,
    basic_auth_username: Option<Spanned<String>>,
    basic_auth_password_file: Option<Spanned<PathBuf>>,
    tls_ca_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    external_labels: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    resource_attributes: BTreeMap<String, Spanned<String>>,
    queue_max_bytes: Option<Spanned<u64>>,
}

impl PushSection {
    /// The receiver's URL (`url` or `endpoint`, as `protocol` names it).
    fn url(&self, protocol: Protocol) -> Option<&Spanned<String>> {
        match protocol {
            Protocol::RemoteWrite => self.url.as_ref(),
            Protocol::Otlp => self.endpoint.as_ref(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertSection {
    name: Spanned<String>,
    metric: Spanned<String>,
    /// `node` (default) or `container`.
    scope: Option<Spanned<String>>,
    /// For container rules: a glob over container ids and names.
    target: Option<Spanned<String>>,
    op: Spanned<String>,
    threshold: Spanned<f64>,
    #[serde(rename = "for")]
    for_seconds: Option<Spanned<u64>>,
    severity: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Monitoring {
    node_metrics_interval: Option<Spanned<u64>>,
    vm_metrics_interval: Option<Spanned<u64>>,
    enable_history: Option<bool>,
    history_retention: Option<Spanned<u64>>,
    max_ws_clients: Option<Spanned<u64>>,
    max_containers: Option<Spanned<u64>>,
    max_containers_per_user: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Server {
    listen: Option<Spanned<String>>,
    tls_cert_file: Option<Spanned<PathBuf>>,
    tls_key_file: Option<Spanned<PathBuf>>,
    tls_client_ca_file: Option<Spanned<PathBuf>>,
    bearer_token_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    allowed_origins: Vec<Spanned<String>>,
    #[serde(default)]
    allowed_hosts: Vec<Spanned<String>>,
    allow_unauthenticated_remote: Option<bool>,
    max_connections: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EbpfSection {
    enabled: Option<bool>,
    families: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmsSection {
    libvirt_uri: Option<Spanned<String>>,
}

const INTERVAL_SECONDS: RangeInclusive<u64> = 1..=3600;
const RETENTION_SECONDS: RangeInclusive<u64> = 60..=31 * 86_400;
const WS_CLIENTS: RangeInclusive<u64> = 1..=100_000;
const CONTAINERS: RangeInclusive<u64> = 1..=100_000;
const CONNECTIONS: RangeInclusive<u64> = 16..=65_536;
const PUSH_INTERVAL_SECONDS: RangeInclusive<u64> = 1..=3600;
const PUSH_TIMEOUT_SECONDS: RangeInclusive<u64> = 1..=300;
const QUEUE_BYTES: RangeInclusive<u64> = (64 << 10)..=(1 << 40);
const DEFAULT_QUEUE_BYTES: u64 = 256 << 20;
const CHECKPOINT_SECONDS: RangeInclusive<u64> = 10..=3600;

impl Config {
    /// Loads `path`. A missing file at the default path means defaults; a missing
    /// file that was asked for explicitly is an error.
    pub fn load(path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && !explicit => {
                Ok(Self::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: File = toml::from_str(text).map_err(|error| ConfigError::Syntax {
            path: path.to_owned(),
            message: error.to_string().trim_end().to_owned(),
        })?;
        let invalid = |key: &str, span: Range<usize>, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            line: line_of(text, span.start),
            key: key.to_owned(),
            reason,
        };
        let bounded =
            |key: &str, value: &Option<Spanned<u64>>, range: RangeInclusive<u64>, default: u64| {
                match value {
                    None => Ok(default),
                    Some(spanned) if range.contains(spanned.get_ref()) => Ok(*spanned.get_ref()),
                    Some(spanned) => Err(invalid(
                        key,
                        spanned.span(),
                        format!(
                            "must be between {} and {} (got {})",
                            range.start(),
                            range.end(),
                            spanned.get_ref()
                        ),
                    )),
                }
            };
        let defaults = Self::default();
        let monitoring = &file.monitoring;
        let seconds = |key, value, range, default: Duration| {
            bounded(key, value, range, default.as_secs()).map(Duration::from_secs)
        };
        Ok(Self {
            listen: match &file.server.listen {
                None => defaults.listen,
                Some(spanned) => spanned.get_ref().parse().map_err(|_| {
                    invalid(
                        "server.listen",
                        spanned.span(),
                        format!("must be ADDRESS:PORT (got {:?})", spanned.get_ref()),
                    )
                })?,
            },
            node_metrics_interval: seconds(
                "monitoring.node_metrics_interval",
                &monitoring.node_metrics_interval,
                INTERVAL_SECONDS,
                defaults.node_metrics_interval,
            )?,
            vm_metrics_interval: seconds(
                "monitoring.vm_metrics_interval",
                &monitoring.vm_metrics_interval,
                INTERVAL_SECONDS,
                defaults.vm_metrics_interval,
            )?,
            enable_history: monitoring.enable_history.unwrap_or(defaults.enable_history),
            history_retention: seconds(
                "monitoring.history_retention",
                &monitoring.history_retention,
                RETENTION_SECONDS,
                defaults.history_retention,
            )?,
            max_ws_clients: bounded(
                "monitoring.max_ws_clients",
                &monitoring.max_ws_clients,
                WS_CLIENTS,
                defaults.max_ws_clients as u64,
            )? as usize,
            containers: ContainerSettings {
                max_containers: bounded(
                    "monitoring.max_containers",
                    &monitoring.max_containers,
                    CONTAINERS,
                    defaults.containers.max_containers as u64,
                )? as usize,
                max_containers_per_user: bounded(
                    "monitoring.max_containers_per_user",
                    &monitoring.max_containers_per_user,
                    CONTAINERS,
                    defaults.containers.max_containers_per_user as u64,
                )? as usize,
            },
            server: server_security(&file.server, &invalid, &bounded)?,
            ebpf_enabled: file.ebpf.enabled.unwrap_or(defaults.ebpf_enabled),
            ebpf_families: match &file.ebpf.families {
                None => defaults.ebpf_families,
                Some(names) => names
                    .get_ref()
                    .iter()
                    .map(|name| {
                        crate::ebpf::Family::from_name(name).ok_or_else(|| {
                            invalid(
                                "ebpf.families",
                                names.span(),
                                format!(
                                    "unknown family {name:?} (known: sched, block, writeback, oom)"
                                ),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?,
            },
            libvirt_uri: match &file.vms.libvirt_uri {
                None => defaults.libvirt_uri,
                Some(uri) if uri.get_ref().is_empty() => None,
                Some(uri) if uri.get_ref().contains('\0') || uri.get_ref().len() > 1024 => {
                    return Err(invalid(
                        "vms.libvirt_uri",
                        uri.span(),
                        "must be a libvirt URI (no NUL byte, at most 1024 bytes)".into(),
                    ));
                }
                Some(uri) => Some(uri.get_ref().clone()),
            },
            alerts: file
                .alerts
                .iter()
                .enumerate()
                .map(|(index, section)| alert_rule(section, &file.alerts[..index], &invalid))
                .collect::<Result<_, _>>()?,
            storage_path: match &file.storage.path {
                None => defaults.storage_path,
                Some(path) if path.get_ref().is_absolute() => path.get_ref().clone(),
                Some(path) => {
                    return Err(invalid(
                        "storage.path",
                        path.span(),
                        "must be an absolute path".into(),
                    ));
                }
            },
            history_checkpoint_interval: seconds(
                "storage.history_checkpoint_interval",
                &file.storage.history_checkpoint_interval,
                CHECKPOINT_SECONDS,
                defaults.history_checkpoint_interval,
            )?,
            history_max_bytes: bounded(
                "storage.history_max_bytes",
                &file.storage.history_max_bytes,
                QUEUE_BYTES,
                defaults.history_max_bytes,
            )?,
            exports: [
                (Protocol::RemoteWrite, &file.remote_write),
                (Protocol::Otlp, &file.otlp),
            ]
            .into_iter()
            .flat_map(|(protocol, sections)| {
                sections
                    .iter()
                    .enumerate()
                    .map(move |(index, section)| (protocol, section, &sections[..index]))
            })
            .map(|(protocol, section, earlier)| {
                push_target(protocol, section, earlier, &invalid, &bounded)
            })
            .collect::<Result<_, _>>()?,
        })
    }
}

/// Checks `[server]`'s security keys (files are checked at start-up, not here).
fn server_security(
    server: &Server,
    invalid: &impl Fn(&str, Range<usize>, String) -> ConfigError,
    bounded: &impl Fn(&str, &Option<Spanned<u64>>, RangeInclusive<u64>, u64) -> Result<u64, ConfigError>,
) -> Result<ServerSecurity, ConfigError> {
    let file = |value: &Option<Spanned<PathBuf>>| value.as_ref().map(|path| path.get_ref().clone());
    let tls = match (&server.tls_cert_file, &server.tls_key_file) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.get_ref().clone(),
            key: key.get_ref().clone(),
            client_ca: file(&server.tls_client_ca_file),
        }),
        (None, None) => {
            if let Some(ca) = &server.tls_client_ca_file {
                return Err(invalid(
                    "server.tls_client_ca_file",
                    ca.span(),
                    "needs server.tls_cert_file and server.tls_key_file".into(),
                ));
            }
            None
        }
        (Some(one), None) | (None, Some(one)) => {
            let missing = if server.tls_cert_file.is_none() {
                "server.tls_cert_file"
            } else {
                "server.tls_key_file"
            };
            return Err(invalid(
                missing,
                one.span(),
                "is needed too: TLS takes both a certificate and its key".into(),
            ));
        }
    };
    let mut basic_auth_users = BTreeMap::new();
    for (user, hash) in &server.basic_auth_users {
        if user.is_empty() || user.contains(':') || bcrypt_cost(hash.get_ref()).is_none() {
            return Err(invalid(
                &format!("server.basic_auth_users.{user}"),
                hash.span(),
                "must be a user name without ':' and a bcrypt hash ($2a$, $2b$ or $2y$, cost 4..=31)"
                    .into(),
            ));
        }
        basic_auth_users.insert(user.clone(), hash.get_ref().clone());
    }
    let mut allowed_origins = Vec::new();
    for origin in &server.allowed_origins {
        let text = origin.get_ref().trim_end_matches('/');
        let well_formed = text.split_once("://").is_some_and(|(scheme, host)| {
            matches!(scheme, "http" | "https") && !host.is_empty() && !host.contains('/')
        });
        if !well_formed {
            return Err(invalid(
                "server.allowed_origins",
                origin.span(),
                format!("{text:?} is not an origin (scheme://host[:port])"),
            ));
        }
        allowed_origins.push(text.to_ascii_lowercase());
    }
    let allowed_hosts = server
        .allowed_hosts
        .iter()
        .map(|host| host.get_ref().to_ascii_lowercase())
        .collect();
    let defaults = ServerSecurity::default();
    Ok(ServerSecurity {
        tls,
        bearer_token_file: file(&server.bearer_token_file),
        basic_auth_users,
        allowed_origins,
        allowed_hosts,
        allow_unauthenticated_remote: server
            .allow_unauthenticated_remote
            .unwrap_or(defaults.allow_unauthenticated_remote),
        max_connections: bounded(
            "server.max_connections",
            &server.max_connections,
            CONNECTIONS,
            defaults.max_connections as u64,
        )? as usize,
    })
}

/// Checks one `[[remote_write]]` or `[[otlp]]` table; `earlier` are the tables of
/// its kind before it (URLs and names must be unique: each names a queue
/// directory).
fn push_target(
    protocol: Protocol,
    table: &Spanned<PushSection>,
    earlier: &[Spanned<PushSection>],
    invalid: &impl Fn(&str, Range<usize>, String) -> ConfigError,
    bounded: &impl Fn(&str, &Option<Spanned<u64>>, RangeInclusive<u64>, u64) -> Result<u64, ConfigError>,
) -> Result<PushTarget, ConfigError> {
    let kind = protocol.name();
    let key = |name: &str| format!("{kind}.{name}");
    let (url_key, labels_key) = protocol.keys();
    let section = table.get_ref();
    let other = match protocol {
        Protocol::RemoteWrite => [
            ("endpoint", section.endpoint.as_ref().map(Spanned::span)),
            (
                "resource_attributes",
                section
                    .resource_attributes
                    .values()
                    .next()
                    .map(Spanned::span),
            ),
        ],
        Protocol::Otlp => [
            ("url", section.url.as_ref().map(Spanned::span)),
            (
                "external_labels",
                section.external_labels.values().next().map(Spanned::span),
            ),
        ],
    };
    for (name, span) in other {
        if let Some(span) = span {
            return Err(invalid(
                &key(name),
                span,
                format!("is not a [[{kind}]] key (use {url_key} and {labels_key})"),
            ));
        }
    }
    let Some(url_spanned) = section.url(protocol) else {
        return Err(invalid(&key(url_key), table.span(), "is required".into()));
    };
    let url = url_spanned.get_ref();
    let parsed = reqwest::Url::parse(url).ok().filter(|parsed| {
        matches!(parsed.scheme(), "http" | "https")
            && parsed.host_str().is_some_and(|host| !host.is_empty())
    });
    let Some(parsed) = parsed else {
        return Err(invalid(
            &key(url_key),
            url_spanned.span(),
            format!("must be an http:// or https:// URL (got {url:?})"),
        ));
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            &key(url_key),
            url_spanned.span(),
            "must not hold credentials: use basic_auth_username and basic_auth_password_file"
                .into(),
        ));
    }
    if earlier
        .iter()
        .any(|other| other.get_ref().url(protocol).map(Spanned::get_ref) == Some(url))
    {
        return Err(invalid(
            &key(url_key),
            url_spanned.span(),
            format!("{url:?} is configured twice"),
        ));
    }
    let name = match &section.name {
        None => None,
        Some(name) => {
            let text = name.get_ref();
            let well_formed = (1..=64).contains(&text.len())
                && !text.starts_with('.')
                && text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            let taken = earlier
                .iter()
                .any(|other| other.get_ref().name.as_ref().map(Spanned::get_ref) == Some(text));
            if !well_formed || taken {
                return Err(invalid(
                    &key("name"),
                    name.span(),
                    format!(
                        "must be unique, 1 to 64 of A-Z a-z 0-9 _ - . and not start with a dot (got {text:?})"
                    ),
                ));
            }
            Some(text.clone())
        }
    };
    let auth = match (
        &section.bearer_token_file,
        &section.basic_auth_username,
        &section.basic_auth_password_file,
    ) {
        (None, None, None) => PushAuth::None,
        (Some(token), None, None) => PushAuth::Bearer {
            token_file: token.get_ref().clone(),
        },
        (None, Some(username), Some(password)) => PushAuth::Basic {
            username: username.get_ref().clone(),
            password_file: password.get_ref().clone(),
        },
        (Some(token), _, _) => {
            return Err(invalid(
                &key("bearer_token_file"),
                token.span(),
                "cannot be combined with basic_auth_*".into(),
            ));
        }
        (None, Some(username), None) => {
            return Err(invalid(
                &key("basic_auth_password_file"),
                username.span(),
                "is needed with basic_auth_username".into(),
            ));
        }
        (None, None, Some(password)) => {
            return Err(invalid(
                &key("basic_auth_username"),
                password.span(),
                "is needed with basic_auth_password_file".into(),
            ));
        }
    };
    let mut labels = Vec::new();
    let configured = match protocol {
        Protocol::RemoteWrite => &section.external_labels,
        Protocol::Otlp => &section.resource_attributes,
    };
    for (label, value) in configured {
        // Prometheus label names for remote_write; OTLP attribute keys are any
        // non-empty string (`deployment.environment`).
        let well_formed = match protocol {
            Protocol::RemoteWrite => {
                label
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !label.starts_with("__")
            }
            Protocol::Otlp => !label.is_empty() && !label.chars().any(char::is_control),
        };
        if !well_formed || value.get_ref().is_empty() {
            return Err(invalid(
                &key(&format!("{labels_key}.{label}")),
                value.span(),
                match protocol {
                    Protocol::RemoteWrite => {
                        "must be a Prometheus label name (not starting with __) with a non-empty value"
                    }
                    Protocol::Otlp => "must be a non-empty key with a non-empty value",
                }
                .into(),
            ));
        }
        labels.push((label.clone(), value.get_ref().clone()));
    }
    Ok(PushTarget {
        protocol,
        queue_dir: name.clone().unwrap_or_else(|| {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(url.as_bytes());
            digest[..8]
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect()
        }),
        name: name.unwrap_or_else(|| url.clone()),
        url: url.clone(),
        interval: Duration::from_secs(bounded(
            &key("interval"),
            &section.interval,
            PUSH_INTERVAL_SECONDS,
            15,
        )?),
        timeout: Duration::from_secs(bounded(
            &key("timeout"),
            &section.timeout,
            PUSH_TIMEOUT_SECONDS,
            30,
        )?),
        auth,
        tls_ca_file: section
            .tls_ca_file
            .as_ref()
            .map(|file| file.get_ref().clone()),
        labels,
        queue_max_bytes: bounded(
            &key("queue_max_bytes"),
            &section.queue_max_bytes,
            QUEUE_BYTES,
            DEFAULT_QUEUE_BYTES,
        )?,
    })
}

/// The cost of a bcrypt hash (`$2b$10$` + 53 characters of salt and hash).
pub fn bcrypt_cost(hash: &str) -> Option<u32> {
    let rest = hash
        .strip_prefix("$2a$")
        .or_else(|| hash.strip_prefix("$2b$"))
        .or_else(|| hash.strip_prefix("$2y$"))?;
    let (cost, digest) = rest.split_once('$')?;
    let cost: u32 = cost.parse().ok().filter(|cost| (4..=31).contains(cost))?;
    (digest.len() == 53).then_some(cost)
}

const SEVERITIES: [&str; 3] = ["info", "warning", "critical"];

/// Checks one `[[alerts]]` table; `earlier` are the tables before it (names must be unique).
fn alert_rule(
    section: &AlertSection,
    earlier: &[AlertSection],
    invalid: &impl Fn(&str, Range<usize>, String) -> ConfigError,
) -> Result<Rule, ConfigError> {
    let name = section.name.get_ref().trim();
    if name.is_empty()
        || earlier
            .iter()
            .any(|other| other.name.get_ref().trim() == name)
    {
        return Err(invalid(
            "alerts.name",
            section.name.span(),
            format!("must be non-empty and unique (got {name:?})"),
        ));
    }
    let scope = match section.scope.as_ref().map(|scope| scope.get_ref().as_str()) {
        None | Some("node") => {
            if let Some(target) = &section.target {
                return Err(invalid(
                    "alerts.target",
                    target.span(),
                    "only applies to scope = \"container\" or \"vm\"".into(),
                ));
            }
            RuleScope::Node
        }
        Some("container") => RuleScope::Container {
            pattern: section
                .target
                .as_ref()
                .map(|target| target.get_ref().clone()),
        },
        Some("vm") => RuleScope::Vm {
            pattern: section
                .target
                .as_ref()
                .map(|target| target.get_ref().clone()),
        },
        Some(other) => {
            let span = section.scope.as_ref().map_or(0..0, Spanned::span);
            return Err(invalid(
                "alerts.scope",
                span,
                format!("must be \"node\", \"container\" or \"vm\" (got {other:?})"),
            ));
        }
    };
    let metric =
        catalog::series_name(scope.scope(), section.metric.get_ref()).ok_or_else(|| {
            let valid = catalog::series_names(scope.scope());
            invalid(
                "alerts.metric",
                section.metric.span(),
                format!(
                    "{:?} is not one of {}",
                    section.metric.get_ref(),
                    valid.join(", ")
                ),
            )
        })?;
    let op = Comparison::parse(section.op.get_ref()).ok_or_else(|| {
        invalid(
            "alerts.op",
            section.op.span(),
            format!("must be >, >=, < or <= (got {:?})", section.op.get_ref()),
        )
    })?;
    let threshold = *section.threshold.get_ref();
    if !threshold.is_finite() {
        return Err(invalid(
            "alerts.threshold",
            section.threshold.span(),
            "must be a finite number".into(),
        ));
    }
    let for_seconds = section
        .for_seconds
        .as_ref()
        .map_or(0, |seconds| *seconds.get_ref());
    if for_seconds > 86_400 {
        let span = section.for_seconds.as_ref().map_or(0..0, Spanned::span);
        return Err(invalid(
            "alerts.for",
            span,
            format!("must be at most 86400 seconds (got {for_seconds})"),
        ));
    }
    let severity = section
        .severity
        .as_ref()
        .map_or("warning", |severity| severity.get_ref().as_str());
    if !SEVERITIES.contains(&severity) {
        let span = section.severity.as_ref().map_or(0..0, Spanned::span);
        return Err(invalid(
            "alerts.severity",
            span,
            format!("must be info, warning or critical (got {severity:?})"),
        ));
    }
    Ok(Rule {
        name: name.to_owned(),
        metric,
        scope,
        op,
        threshold,
        for_seconds,
        severity: severity.to_owned(),
    })
}

/// 1-based line number of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |before| before.matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_gives_spec_defaults() {
        let config = parse("").expect("valid");
        assert_eq!(config, Config::default());
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.node_metrics_interval, Duration::from_secs(5));
        assert_eq!(config.vm_metrics_interval, Duration::from_secs(10));
        assert_eq!(config.max_ws_clients, 100);
    }

    #[test]
    fn reads_every_spec_key() {
        let config = parse(
            "[monitoring]\nnode_metrics_interval = 1\nvm_metrics_interval = 30\nenable_history = true\n\
             history_retention = 3600\nmax_ws_clients = 7\n[server]\nlisten = \"0.0.0.0:9000\"\n",
        )
        .expect("valid");
        assert_eq!(config.node_metrics_interval, Duration::from_secs(1));
        assert_eq!(config.vm_metrics_interval, Duration::from_secs(30));
        assert!(config.enable_history);
        assert_eq!(config.history_retention, Duration::from_secs(3600));
        assert_eq!(config.max_ws_clients, 7);
        assert_eq!(config.listen.port(), 9000);
    }

    #[test]
    fn invalid_value_names_key_and_line() {
        let error = parse("[monitoring]\n\nnode_metrics_interval = 0\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("line 3"), "{error}");
        assert!(
            error.contains("monitoring.node_metrics_interval"),
            "{error}"
        );
    }

    #[test]
    fn ebpf_families_are_checked_by_name() {
        assert_eq!(
            parse("").unwrap().ebpf_families,
            crate::ebpf::Family::ALL.to_vec()
        );
        let config = parse("[ebpf]\nfamilies = [\"sched\", \"oom\"]\n").unwrap();
        assert_eq!(
            config.ebpf_families,
            [crate::ebpf::Family::Sched, crate::ebpf::Family::Oom]
        );
        let error = parse("[ebpf]\n\nfamilies = [\"sched\", \"disk\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("line 3")
                && error.contains("ebpf.families")
                && error.contains("\"disk\""),
            "{error}"
        );
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let error = parse("[monitoring]\nnode_metrics_interval = 5\nnode_interval = 5\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("node_interval"), "{error}");
        assert!(error.contains("line 3"), "{error}");
    }

    #[test]
    fn wrong_type_and_bad_listen_are_errors() {
        let error = parse("[monitoring]\nmax_ws_clients = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("line 2") && error.contains("max_ws_clients"),
            "{error}"
        );
        let error = parse("[server]\nlisten = \"localhost\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("server.listen") && error.contains("line 2"),
            "{error}"
        );
    }

    #[test]
    fn reads_alert_rules() {
        let config = parse(
            "[[alerts]]\nname = \"high-cpu\"\nmetric = \"cpu_usage\"\nop = \">\"\nthreshold = 90\nfor = 30\n\
             [[alerts]]\nname = \"web-memory\"\nmetric = \"memory_usage_bytes\"\nscope = \"container\"\n\
             target = \"web-*\"\nop = \">=\"\nthreshold = 1e9\nseverity = \"critical\"\n",
        )
        .expect("valid");
        assert_eq!(config.alerts.len(), 2);
        assert_eq!(
            (
                config.alerts[0].for_seconds,
                config.alerts[0].severity.as_str()
            ),
            (30, "warning")
        );
        assert_eq!(
            config.alerts[1].scope,
            RuleScope::Container {
                pattern: Some("web-*".into())
            }
        );
        assert_eq!(config.alerts[1].op, Comparison::AtLeast);
    }

    #[test]
    fn bad_alert_rules_name_key_and_line() {
        let base = "[[alerts]]\nname = \"a\"\nmetric = \"cpu_usage\"\nop = \">\"\nthreshold = 1\n";
        for (extra, key, line) in [
            ("severity = \"loud\"\n", "alerts.severity", "line 6"),
            ("scope = \"pod\"\n", "alerts.scope", "line 6"),
            ("target = \"x\"\n", "alerts.target", "line 6"),
            ("oops = 1\n", "oops", "line 6"),
        ] {
            let error = parse(&format!("{base}{extra}")).unwrap_err().to_string();
            assert!(
                error.contains(key) && error.contains(line),
                "{key}: {error}"
            );
        }
        let error = parse(&base.replace("cpu_usage", "cpu_usage_percent"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("alerts.metric")
                && error.contains("line 3")
                && error.contains("memory_usage"),
            "{error}"
        );
        let error = parse(&base.replace("\">\"", "\"!=\""))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("alerts.op") && error.contains("line 4"),
            "{error}"
        );
        let error = parse(&format!("{base}{base}")).unwrap_err().to_string();
        assert!(
            error.contains("alerts.name") && error.contains("line 7"),
            "{error}"
        );
    }

    #[test]
    fn reads_remote_write_targets() {
        let config = parse(
            "[storage]\npath = \"/srv/horcrux\"\n\
             [[remote_write]]\nurl = \"http://prometheus:9090/api/v1/write\"\ninterval = 5\n\
             external_labels = { instance = \"node-1\" }\nbearer_token_file = \"/etc/token\"\n\
             [[remote_write]]\nname = \"vm\"\nurl = \"https://vm:8428/api/v1/write\"\n\
             basic_auth_username = \"u\"\nbasic_auth_password_file = \"/etc/p\"\nqueue_max_bytes = 1048576\n\
             [[otlp]]\nendpoint = \"http://collector:4318/v1/metrics\"\n\
             resource_attributes = { \"deployment.environment\" = \"prod\" }\n",
        )
        .expect("valid");
        assert_eq!(config.storage_path, Path::new("/srv/horcrux"));
        let [first, second, otlp] = config.exports.as_slice() else {
            panic!("three targets: {:?}", config.exports);
        };
        assert_eq!(first.name, "http://prometheus:9090/api/v1/write");
        assert_eq!(first.queue_dir.len(), 16);
        assert_eq!(first.interval, Duration::from_secs(5));
        assert_eq!(first.queue_max_bytes, DEFAULT_QUEUE_BYTES);
        assert_eq!(first.labels, [("instance".into(), "node-1".into())]);
        assert_eq!(first.protocol, Protocol::RemoteWrite);
        assert_eq!(
            first.auth,
            PushAuth::Bearer {
                token_file: "/etc/token".into()
            }
        );
        assert_eq!(
            (second.name.as_str(), second.queue_dir.as_str()),
            ("vm", "vm")
        );
        assert_eq!(second.interval, Duration::from_secs(15));
        assert_eq!(second.queue_max_bytes, 1 << 20);
        assert_eq!(otlp.protocol, Protocol::Otlp);
        assert_eq!(otlp.url, "http://collector:4318/v1/metrics");
        assert_eq!(
            otlp.labels,
            [("deployment.environment".into(), "prod".into())]
        );
    }

    #[test]
    fn bad_remote_write_tables_name_key_and_line() {
        let base = "[[remote_write]]\nurl = \"http://p:9090/api/v1/write\"\n";
        for (extra, key, line) in [
            ("interval = 0\n", "remote_write.interval", "line 3"),
            (
                "queue_max_bytes = 10\n",
                "remote_write.queue_max_bytes",
                "line 3",
            ),
            ("name = \"../x\"\n", "remote_write.name", "line 3"),
            (
                "external_labels = { __x = \"1\" }\n",
                "remote_write.external_labels.__x",
                "line 3",
            ),
            (
                "basic_auth_username = \"u\"\n",
                "remote_write.basic_auth_password_file",
                "line 3",
            ),
            ("headers = 1\n", "headers", "line 3"),
            (base, "remote_write.url", "line 4"),
        ] {
            let error = parse(&format!("{base}{extra}")).unwrap_err().to_string();
            assert!(
                error.contains(key) && error.contains(line),
                "{key}: {error}"
            );
        }
        for url in ["ftp://p/x", "p:9090", "http://user:pw@p/x"] {
            let error = parse(&format!("[[remote_write]]\nurl = {url:?}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("remote_write.url") && error.contains("line 2"),
                "{error}"
            );
        }
        for (text, key, line) in [
            (
                "[[otlp]]\nurl = \"http://c:4318/v1/metrics\"\n",
                "otlp.url",
                "line 2",
            ),
            ("[[otlp]]\ninterval = 5\n", "otlp.endpoint", "line 1"),
            (
                "[[remote_write]]\nurl = \"http://p/w\"\nresource_attributes = { a = \"b\" }\n",
                "remote_write.resource_attributes",
                "line 3",
            ),
        ] {
            let error = parse(text).unwrap_err().to_string();
            assert!(
                error.contains(key) && error.contains(line),
                "{key}: {error}"
            );
        }
        let error = parse("[storage]\nhistory_checkpoint_interval = 5\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("storage.history_checkpoint_interval") && error.contains("line 2"),
            "{error}"
        );
        let error = parse("[storage]\npath = \"var/lib\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("storage.path") && error.contains("line 2"),
            "{error}"
        );
    }

    #[test]
    fn missing_default_file_means_defaults_but_explicit_one_is_an_error() {
        let missing = Path::new("/nonexistent/horcrux.toml");
        assert_eq!(
            Config::load(missing, false).expect("defaults"),
            Config::default()
        );
        assert!(Config::load(missing, true).is_err());
    }
}
