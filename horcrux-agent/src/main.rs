use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use horcrux_agent::config::{self, Config};

/// eBPF-assisted kernel metrics agent: node, container and eBPF metrics over REST,
/// WebSocket and Prometheus.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Config file (TOML). A missing file at the default path means defaults.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Address and port to serve on [default: 127.0.0.1:8006]; overrides `[server] listen`.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// Seconds between node collections; overrides `monitoring.node_metrics_interval`.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    node_metrics_interval: Option<u64>,
    /// Seconds between container/VM collections; overrides `monitoring.vm_metrics_interval`.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    vm_metrics_interval: Option<u64>,
    /// Maximum concurrent WebSocket clients; overrides `monitoring.max_ws_clients`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    max_ws_clients: Option<u64>,
}

impl Args {
    /// The config file, with the command line's overrides applied.
    fn load_config(&self) -> Result<Config, config::ConfigError> {
        let path = self
            .config
            .clone()
            .unwrap_or_else(|| config::DEFAULT_PATH.into());
        let mut config = Config::load(&path, self.config.is_some())?;
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(seconds) = self.node_metrics_interval {
            config.node_metrics_interval = Duration::from_secs(seconds);
        }
        if let Some(seconds) = self.vm_metrics_interval {
            config.vm_metrics_interval = Duration::from_secs(seconds);
        }
        if let Some(clients) = self.max_ws_clients {
            config.max_ws_clients = clients as usize;
        }
        Ok(config)
    }
}

/// Serving beyond loopback without TLS and authentication needs an explicit opt-in,
/// and gets a warning at every start.
fn check_exposure(config: &Config) -> Result<(), String> {
    let server = &config.server;
    if config.listen.ip().is_loopback() || (server.tls.is_some() && server.authenticates()) {
        return Ok(());
    }
    if server.allow_unauthenticated_remote {
        tracing::warn!(
            listen = %config.listen,
            "serving a non-loopback address without TLS and authentication \
             (server.allow_unauthenticated_remote = true): anyone who can reach it reads every metric"
        );
        return Ok(());
    }
    Err(format!(
        "server.listen = {} is not a loopback address: serving the network needs TLS \
         (server.tls_cert_file, server.tls_key_file) and authentication \
         (server.bearer_token_file or server.basic_auth_users), or \
         server.allow_unauthenticated_remote = true",
        config.listen
    ))
}

fn main() -> ExitCode {
    horcrux_agent::crash::die_on_sent_sigsegv();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let config = match args.load_config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("horcrux-agent: {error}");
            return ExitCode::from(2);
        }
    };
    if let Err(message) = check_exposure(&config) {
        eprintln!("horcrux-agent: {message}");
        return ExitCode::from(2);
    }
    // Before any thread: load eBPF, then drop the capabilities only that needed.
    let prepared = horcrux_agent::prepare(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("horcrux-agent: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // SIGHUP reloads the same file, with the same command-line overrides.
    let reload = move || args.load_config();
    match runtime.block_on(horcrux_agent::run(config, prepared, reload)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("horcrux-agent: {error}");
            if error.is_configuration() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
