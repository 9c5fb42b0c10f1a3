//! `cargo xtask bench-http`: what TLS and authentication cost the HTTP surface. The
//! release agent runs plain, then with TLS (a test CA made by `openssl`) and a bearer
//! token; in each, `wrk` loads `/api/monitoring/node/metrics` and `/metrics` for 15 s
//! (2 threads, 50 connections), first alone, then with 100 WebSocket clients
//! streaming (Python's websocket-client). Requests per second and p99 latency, side
//! by side in one run.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{Result, stdout_of, workspace_root};

const AGENT_ADDRESS: &str = "127.0.0.1:18097";
const TOKEN: &str = "bench-token-5d2e";
const WEBSOCKET_CLIENTS: usize = 100;

/// 100 clients that read the WebSocket until killed.
const STREAMER: &str = r#"
import ssl, sys, threading, websocket
url, token, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
headers = [f"Authorization: Bearer {token}"] if token else []
sockets = [websocket.create_connection(url, header=headers, suppress_origin=True,
                                       sslopt={"cert_reqs": ssl.CERT_NONE})
           for _ in range(count)]
def stream(ws):
    while True:
        ws.recv()
for ws in sockets:
    threading.Thread(target=stream, args=(ws,), daemon=True).start()
print("connected", flush=True)
threading.Event().wait()
"#;

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run() -> Result {
    let dir = std::env::temp_dir().join("horcrux-bench-http");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    certificates(&dir)?;
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).map_err(|error| error.to_string())?;
    set_mode(&token, 0o600)?;
    set_mode(&dir.join("server.key"), 0o600)?;
    let modes = [
        ("plain HTTP", String::new(), "http", None),
        (
            "TLS + bearer token",
            format!(
                "[server]\ntls_cert_file = {:?}\ntls_key_file = {:?}\nbearer_token_file = {:?}\n",
                dir.join("server.pem").display().to_string(),
                dir.join("server.key").display().to_string(),
                token.display().to_string()
            ),
            "https",
            Some(TOKEN),
        ),
    ];
    println!("| mode | endpoint | WebSocket clients | requests/s | p99 |");
    println!("|---|---|---|---|---|");
    for (mode, config, scheme, token) in modes {
        let config_path = dir.join("horcrux.toml");
        std::fs::write(
            &config_path,
            format!("[monitoring]\nvm_metrics_interval = 1\nmax_ws_clients = 200\n{config}"),
        )
        .map_err(|error| error.to_string())?;
        let binary = workspace_root().join("target/release/horcrux-agent");
        let _agent = Running(
            Command::new(&binary)
                .arg("--config")
                .arg(&config_path)
                .args(["--listen", AGENT_ADDRESS, "--node-metrics-interval", "1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|error| format!("starting {}: {error}", binary.display()))?,
        );
        wait_ready(scheme, token)?;
        for clients in [0, WEBSOCKET_CLIENTS] {
            let mut streamers = (clients > 0)
                .then(|| {
                    let ws_scheme = if scheme == "https" { "wss" } else { "ws" };
                    // Debian's interpreter, which has python3-websocket.
                    Command::new("/usr/bin/python3")
                        .args(["-c", STREAMER])
                        .arg(format!("{ws_scheme}://{AGENT_ADDRESS}/ws"))
                        .arg(token.unwrap_or(""))
                        .arg(clients.to_string())
                        .stdout(Stdio::piped())
                        .spawn()
                        .map(Running)
                })
                .transpose()
                .map_err(|error| format!("starting the WebSocket clients: {error}"))?;
            if let Some(streamers) = &mut streamers {
                // Every client is connected before the load starts, or this fails.
                use std::io::BufRead;
                let mut line = String::new();
                let stdout = streamers.0.stdout.take().ok_or("no streamer output")?;
                std::io::BufReader::new(stdout)
                    .read_line(&mut line)
                    .map_err(|error| error.to_string())?;
                if line.trim() != "connected" {
                    return Err("the WebSocket clients could not all connect".into());
                }
            }
            std::thread::sleep(Duration::from_secs(2));
            for endpoint in ["/api/monitoring/node/metrics", "/metrics"] {
                let (rate, p99) = wrk(&format!("{scheme}://{AGENT_ADDRESS}{endpoint}"), token)?;
                println!("| {mode} | `{endpoint}` | {clients} | {rate:.0} | {p99} |");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|error| format!("{}: {error}", path.display()))
}

/// A CA and a certificate for 127.0.0.1 signed by it.
fn certificates(dir: &Path) -> Result {
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n")
        .map_err(|error| error.to_string())?;
    for args in [
        "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=bench-ca",
        "req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1",
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile san.ext",
    ] {
        stdout_of(
            Command::new("openssl")
                .args(args.split(' '))
                .current_dir(dir)
                .stderr(Stdio::null()),
        )?;
    }
    Ok(())
}

fn wait_ready(scheme: &str, token: Option<&str>) -> Result {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let mut curl = Command::new("curl");
        curl.args(["-skf", &format!("{scheme}://{AGENT_ADDRESS}/readyz")]);
        if let Some(token) = token {
            curl.args(["-H", &format!("Authorization: Bearer {token}")]);
        }
        if stdout_of(&mut curl).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err("the agent did not become ready within 60 s".into())
}

/// Requests per second and the 99th percentile latency (as wrk prints it).
fn wrk(url: &str, token: Option<&str>) -> Result<(f64, String)> {
    let mut command = Command::new("wrk");
    command.args(["-t2", "-c50", "-d15s", "--latency"]);
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let output = stdout_of(command.arg(url))?;
    let rate = output
        .lines()
        .find_map(|line| line.trim().strip_prefix("Requests/sec:"))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| format!("no Requests/sec in wrk's output:\n{output}"))?;
    let p99 = output
        .lines()
        .find_map(|line| line.trim().strip_prefix("99%"))
        .map(|value| value.trim().to_owned())
        .ok_or_else(|| format!("no 99% latency in wrk's output:\n{output}"))?;
    Ok((rate, p99))
}
