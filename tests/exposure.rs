//! Network-facing security with real clients: authentication on every route, TLS and
//! client certificates (a CA made with `openssl` in the test, checked by `curl`),
//! `Host` and `Origin` checks, slow and greedy clients, refused unsafe starts, and
//! the capabilities the agent keeps.

mod common;

use std::{
    io::{Read, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine;
use common::Agent;
use serde_json::Value;

const TOKEN: &str = "test-token-4f1c9b";

/// Writes `text` to `dir/name` with `mode`.
fn file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

fn toml_path(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// `curl` status code for `url` (0 when the connection or TLS failed).
fn curl(args: &[&str], url: &str) -> u16 {
    let output = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "10"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Waits until the agent answers `/readyz` with these credentials.
async fn wait_ready_with(agent: &Agent, authorization: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = client
            .get(agent.url("/readyz"))
            .header("Authorization", authorization)
            .send()
            .await
            .is_ok_and(|response| response.status() == 200);
        if ready {
            return;
        }
        assert!(Instant::now() < deadline, "agent never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn every_route_needs_credentials() {
    let dir = tempfile::tempdir().expect("temp dir");
    let token = file(dir.path(), "token", &format!("{TOKEN}\n"), 0o600);
    let hash = bcrypt::hash("prometheus-pw", 4).expect("bcrypt");
    let agent = Agent::start(&format!(
        "[server]\nbearer_token_file = {}\n[server.basic_auth_users]\nprometheus = {hash:?}\n",
        toml_path(&token)
    ));
    let bearer = format!("Bearer {TOKEN}");
    wait_ready_with(&agent, &bearer).await;
    let basic = |credentials: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        )
    };
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let status = async |path: &str, authorization: Option<&str>| {
        let mut request = client.get(agent.url(path));
        if let Some(value) = authorization {
            request = request.header("Authorization", value);
        }
        request.send().await.expect("request").status().as_u16()
    };
    for path in [
        "/",
        "/dashboard/app.js",
        "/api/status",
        "/api/monitoring/node/metrics",
        "/api/containers",
        "/api/alerts",
        "/metrics",
        "/healthz",
        "/readyz",
        "/ws",
        "/no-such-path",
    ] {
        assert_eq!(status(path, None).await, 401, "{path} without credentials");
        assert_eq!(
            status(path, Some("Bearer wrong")).await,
            401,
            "{path} with a wrong token"
        );
        assert_eq!(
            status(path, Some(&basic("prometheus:wrong"))).await,
            401,
            "{path} with a wrong password"
        );
        for good in [bearer.clone(), basic("prometheus:prometheus-pw")] {
            let code = status(path, Some(&good)).await;
            assert!(
                code != 401 && code != 403,
                "{path} with valid credentials: {code}"
            );
        }
    }
    let challenge = client
        .get(agent.url("/api/status"))
        .send()
        .await
        .expect("request");
    assert!(
        challenge
            .headers()
            .get("www-authenticate")
            .is_some_and(|value| value.to_str().is_ok_and(|v| v.starts_with("Basic"))),
        "a browser is asked for basic credentials"
    );
    // The token given once to the dashboard becomes a same-site session cookie.
    let login = client
        .get(agent.url(&format!("/?token={TOKEN}")))
        .send()
        .await
        .expect("login");
    assert_eq!(login.status().as_u16(), 303);
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|value| value.to_str().ok())
        .expect("a session cookie")
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().expect("name=value").to_owned();
    let with_cookie = client
        .get(agent.url("/api/status"))
        .header("Cookie", &session)
        .send()
        .await
        .expect("request");
    assert_eq!(with_cookie.status().as_u16(), 200);
    let wrong_login = client
        .get(agent.url("/?token=nope"))
        .send()
        .await
        .expect("request");
    assert_eq!(wrong_login.status().as_u16(), 401);
}

/// A test CA, a server certificate for 127.0.0.1 and a client certificate, made
/// with the `openssl` command line.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let run = |args: &str| {
            let status = Command::new("sh")
                .arg("-c")
                .arg(format!("openssl {args}"))
                .current_dir(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl");
            assert!(status.success(), "openssl {args}");
        };
        run(
            "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=horcrux-test-ca",
        );
        std::fs::write(
            dir.path().join("san.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .expect("ext");
        for name in ["server", "client"] {
            run(&format!(
                "req -newkey rsa:2048 -nodes -keyout {name}.key -out {name}.csr -subj /CN={name}"
            ));
            run(&format!(
                "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out {name}.pem -days 2 -extfile san.ext"
            ));
        }
        for key in ["ca.key", "server.key", "client.key"] {
            std::fs::set_permissions(dir.path().join(key), std::fs::Permissions::from_mode(0o600))
                .expect("chmod");
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

#[tokio::test]
async fn tls_and_client_certificates_are_enforced() {
    let pki = Pki::new();
    let token = file(pki.dir.path(), "token", TOKEN, 0o600);
    let tls = format!(
        "[server]\ntls_cert_file = {:?}\ntls_key_file = {:?}\nbearer_token_file = {}\n",
        pki.path("server.pem"),
        pki.path("server.key"),
        toml_path(&token)
    );
    let auth = format!("Authorization: Bearer {TOKEN}");
    let agent = Agent::start(&tls);
    let https = format!("https://{}/api/status", agent.addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    while curl(&["--cacert", &pki.path("ca.pem"), "-H", &auth], &https) != 200 {
        assert!(Instant::now() < deadline, "HTTPS never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        curl(&["--cacert", &pki.path("ca.pem")], &https),
        401,
        "TLS does not replace authentication"
    );
    assert_eq!(
        curl(&[], &format!("http://{}/api/status", agent.addr)),
        0,
        "no plain HTTP on a TLS port"
    );
    assert_eq!(
        curl(&[], &https),
        0,
        "an unknown CA is refused by the client"
    );

    let mutual = Agent::start(&format!(
        "{tls}tls_client_ca_file = {:?}\n",
        pki.path("ca.pem")
    ));
    let https = format!("https://{}/api/status", mutual.addr);
    let with_certificate = [
        "--cacert",
        &pki.path("ca.pem"),
        "--cert",
        &pki.path("client.pem"),
        "--key",
        &pki.path("client.key"),
        "-H",
        &auth,
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    while curl(&with_certificate, &https) != 200 {
        assert!(Instant::now() < deadline, "mTLS never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        curl(&["--cacert", &pki.path("ca.pem"), "-H", &auth], &https),
        0,
        "no client certificate, no connection"
    );
}

#[tokio::test]
async fn foreign_hosts_and_cross_site_websockets_are_refused() {
    let agent = Agent::start("[server]\nallowed_origins = [\"https://grafana.example\"]\n");
    agent.wait_ready().await;
    let client = reqwest::Client::new();
    let with_host = async |host: &str| {
        client
            .get(agent.url("/api/status"))
            .header("Host", host)
            .send()
            .await
            .expect("request")
            .status()
            .as_u16()
    };
    assert_eq!(with_host("attacker.example").await, 421, "DNS rebinding");
    assert_eq!(with_host("attacker.example:8006").await, 421);
    assert_eq!(
        with_host(&format!("localhost:{}", agent.addr.port())).await,
        200
    );
    assert_eq!(with_host(&agent.addr.to_string()).await, 200);

    let handshake = async |origin: Option<&str>| {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = agent.ws_url().into_client_request().expect("request");
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("Origin", origin.parse().expect("header"));
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok(_) => 101,
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                response.status().as_u16()
            }
            Err(error) => panic!("{error}"),
        }
    };
    assert_eq!(handshake(Some("http://evil.example")).await, 403);
    assert_eq!(
        handshake(Some(&format!("http://127.0.0.1:{}", agent.addr.port() + 1))).await,
        403
    );
    assert_eq!(
        handshake(Some(&format!("http://{}", agent.addr))).await,
        101
    );
    assert_eq!(handshake(Some("https://grafana.example")).await, 101);
    assert_eq!(
        handshake(None).await,
        101,
        "non-browser clients send no Origin"
    );

    let page = client.get(agent.url("/")).send().await.expect("dashboard");
    let header = |name: &str| {
        page.headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(header("content-security-policy").contains("frame-ancestors 'none'"));
    assert!(!header("content-security-policy").contains("unsafe-inline"));
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(header("referrer-policy"), "no-referrer");
}

/// Raises this process's open-file limit for thousands of client sockets.
fn raise_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_and_greedy_clients_cannot_lock_others_out() {
    raise_file_limit();
    const HALF_OPEN: usize = 2_000;
    let mut agent = Agent::start("[monitoring]\nmax_ws_clients = 2\n");
    agent.wait_ready().await;
    let (_, before) = agent.get("/api/status").await;
    let node_cycles = |status: &Value| status["collectors"]["node"]["cycles"].as_u64().unwrap_or(0);
    // Slowloris: a request head that never ends, from thousands of connections.
    let addr = agent.addr;
    let half_open: Vec<std::net::TcpStream> = tokio::task::spawn_blocking(move || {
        (0..HALF_OPEN)
            .filter_map(|_| {
                let mut stream = std::net::TcpStream::connect(addr).ok()?;
                stream
                    .write_all(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                    .ok()?;
                Some(stream)
            })
            .collect()
    })
    .await
    .expect("connect");
    assert!(
        half_open.len() > HALF_OPEN / 2,
        "{} half-open",
        half_open.len()
    );
    // A keep-alive connection that made one request and then idles.
    let mut idle = std::net::TcpStream::connect(addr).expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .expect("request");
    let mut first = [0u8; 1024];
    let answered = idle.read(&mut first).expect("response");
    assert!(String::from_utf8_lossy(&first[..answered]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    // A legitimate client polls every second, each time on a new connection.
    let mut slowest = Duration::ZERO;
    for _ in 0..12 {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        let asked = Instant::now();
        let response = client
            .get(agent.url("/api/status"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("a poll is answered under attack");
        assert_eq!(response.status(), 200);
        slowest = slowest.max(asked.elapsed());
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(asked.elapsed())).await;
    }
    eprintln!(
        "slowest poll under {} half-open connections: {slowest:?}",
        half_open.len()
    );
    assert!(slowest < Duration::from_secs(1), "slowest poll {slowest:?}");
    // Every half-open connection is closed by the header-read timeout (10 s), or
    // earlier to make room.
    let still_open = tokio::task::spawn_blocking(move || {
        let wait = Duration::from_secs(11).saturating_sub(started.elapsed());
        std::thread::sleep(wait);
        half_open
            .into_iter()
            .chain(std::iter::once(idle))
            .filter(|stream| {
                let mut stream = stream;
                let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                let mut buffer = [0u8; 512];
                // Closed: end of file or a reset. Open: a read timeout.
                matches!(stream.read(&mut buffer), Err(error)
                    if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
            })
            .count()
    })
    .await
    .expect("check");
    assert_eq!(
        still_open, 0,
        "half-open connections outlived the header timeout"
    );
    let (_, after) = agent.get("/api/status").await;
    assert!(
        node_cycles(&after) >= node_cycles(&before) + 10,
        "collection slowed: {} → {} node cycles",
        node_cycles(&before),
        node_cycles(&after)
    );

    // A client frame beyond 64 KiB closes the WebSocket.
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (mut socket, _) = tokio_tungstenite::connect_async(agent.ws_url())
        .await
        .expect("WebSocket");
    let _ = socket.send(Message::Text("x".repeat(1 << 20).into())).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match socket.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert_eq!(closed, Ok(true), "a 1 MiB frame must close the connection");

    // max_ws_clients + 1 is refused; abrupt disconnects give the places back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut clients = Vec::new();
    for _ in 0..2 {
        clients.push(
            tokio_tungstenite::connect_async(agent.ws_url())
                .await
                .expect("WebSocket")
                .0,
        );
    }
    match tokio_tungstenite::connect_async(agent.ws_url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503)
        }
        other => panic!("a third client: {:?}", other.map(|_| ())),
    }
    for client in clients {
        // Dropped without a close frame: the TCP connection just ends.
        drop(client);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, status) = agent.get("/api/status").await;
        if status["websocket"]["clients"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "WebSocket places not given back: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(agent.is_running());
}

/// Runs the agent binary with `config` and extra arguments; returns its exit code and
/// standard error once it exits (10 s at most).
fn start_and_exit(config: &str, args: &[&str]) -> (Option<i32>, String) {
    let file = tempfile::NamedTempFile::new().expect("config");
    std::fs::write(file.path(), config).expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_horcrux-agent"))
        .arg("--config")
        .arg(file.path())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr);
    (status.code(), stderr)
}

#[test]
fn unsafe_starts_are_refused_naming_the_key_or_file() {
    let (code, stderr) = start_and_exit("", &["--listen", "0.0.0.0:0"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("allow_unauthenticated_remote"), "{stderr}");

    let dir = tempfile::tempdir().expect("temp dir");
    let token = file(dir.path(), "token", TOKEN, 0o644);
    let (code, stderr) = start_and_exit(
        &format!("[server]\nbearer_token_file = {}\n", toml_path(&token)),
        &["--listen", "127.0.0.1:0"],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&token.display().to_string()) && stderr.contains("readable"),
        "{stderr}"
    );

    // A TLS key every user can read; then a private key with a broken certificate.
    let key = file(dir.path(), "tls.key", "not a key", 0o644);
    let cert = file(dir.path(), "tls.crt", "not a certificate", 0o644);
    let tls = format!(
        "[server]\ntls_cert_file = {}\ntls_key_file = {}\n",
        toml_path(&cert),
        toml_path(&key)
    );
    let (code, stderr) = start_and_exit(&tls, &["--listen", "127.0.0.1:0"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("tls.key") && stderr.contains("readable"),
        "{stderr}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (code, stderr) = start_and_exit(&tls, &["--listen", "127.0.0.1:0"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("tls.crt"), "{stderr}");

    let (code, stderr) = start_and_exit(
        "[server]\ntls_cert_file = \"/nonexistent.pem\"\n",
        &["--listen", "127.0.0.1:0"],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("server.tls_key_file"), "{stderr}");
}

#[tokio::test]
#[ignore = "needs root: starts with root's capabilities and checks what it keeps"]
async fn only_the_kept_capabilities_remain_after_start() {
    let agent = Agent::start("");
    agent.wait_ready().await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned()
    };
    // CAP_DAC_READ_SEARCH (2) and CAP_SYS_PTRACE (19).
    let kept = format!("{:016x}", (1u64 << 2) | (1u64 << 19));
    assert_eq!(field("CapEff:"), kept);
    assert_eq!(field("CapPrm:"), kept);
    assert_eq!(field("CapBnd:"), kept);
    assert_eq!(field("CapAmb:"), "0000000000000000");
    assert_eq!(field("NoNewPrivs:"), "1");
    let (_, api) = agent.get("/api/status").await;
    assert_eq!(
        api["security"]["capabilities"],
        serde_json::json!(["CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE"])
    );
    // Still everything: the programs attached before the drop, and the metrics flow.
    assert_eq!(api["ebpf"]["attached_programs"], 8, "{}", api["ebpf"]);
    let (code, node) = agent.get("/api/monitoring/node/metrics").await;
    assert_eq!(code, 200);
    assert!(
        node["filesystems"]
            .as_array()
            .is_some_and(|fs| !fs.is_empty())
    );
    assert!(node["ebpf"]["sched"].is_object(), "{}", node["ebpf"]);
}

#[test]
fn the_unit_is_hardened_and_valid() {
    let unit = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/horcrux-agent.service"
    );
    let output = Command::new("systemd-analyze")
        .args(["security", "--offline=true", unit])
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let text = String::from_utf8_lossy(&output.stdout);
    let score: f64 = text
        .lines()
        .find_map(|line| {
            line.split("exposure level for horcrux-agent.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    eprintln!("systemd-analyze security: {score}");
    assert!(score <= 2.5, "exposure {score}:\n{text}");
    // verify wants the binary at ExecStart: check a copy pointing at the test build.
    let dir = tempfile::tempdir().expect("temp dir");
    let text = std::fs::read_to_string(unit).expect("unit").replace(
        "/usr/local/bin/horcrux-agent",
        env!("CARGO_BIN_EXE_horcrux-agent"),
    );
    let copy = dir.path().join("horcrux-agent.service");
    std::fs::write(&copy, text).expect("write");
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze verify");
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "{complaints}");
    assert!(
        !complaints.contains("horcrux-agent.service:"),
        "{complaints}"
    );
}
