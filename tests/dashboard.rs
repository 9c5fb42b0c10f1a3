//! The web dashboard in a real browser: headless Chromium driven through chromedriver's
//! W3C WebDriver API. Numbers on the page must change as WebSocket messages arrive,
//! CPU must rise under load, a container and a VM started during the test must
//! appear, their detail views must open (a VM's with per-vCPU bars and steal, a
//! container's with an OOM kill as it happens), and
//! the page must fit a phone's width.
// Each #[tokio::test] runs on its own runtime: holding the serial guard across
// awaits blocks only other tests, which is its purpose.
#![allow(clippy::await_holding_lock)]

mod common;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine;
use common::Agent;
use horcrux_test_support::cgroup::TestCgroup;
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let profile = tempfile::tempdir().expect("profile dir");
        // Flags for a closed network: no background connections, no sandbox as root.
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
        ];
        let mut args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args}
        }}});
        let deadline = Instant::now() + Duration::from_secs(30);
        let session = loop {
            if let Ok(response) = http
                .post(format!("{base}/session"))
                .json(&capabilities)
                .send()
                .await
            {
                let body: Value = response.json().await.expect("session JSON");
                break body["value"]["sessionId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no session: {body}"))
                    .to_owned();
            }
            assert!(Instant::now() < deadline, "chromedriver did not answer");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        Browser {
            driver,
            base,
            session,
            http,
            _profile: profile,
        }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        // chromedriver reads a JSON object body on every command, GETs included.
        let body = if body.is_null() { json!({}) } else { body };
        let response = self
            .http
            .request(method, url)
            .json(&body)
            .send()
            .await
            .expect("WebDriver request");
        let body: Value = response.json().await.expect("WebDriver JSON");
        body["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    async fn run(&self, script: &str) -> Value {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        )
        .await
    }

    /// Polls `script` until `accept` takes its result (20 s at most).
    async fn wait_for(&self, what: &str, script: &str, accept: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let value = self.run(script).await;
            if accept(&value) {
                return value;
            }
            assert!(Instant::now() < deadline, "{what}: last value {value}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until the dashboard says its WebSocket is live.
    async fn wait_live(&self) {
        self.wait_for(
            "connection state",
            "return document.querySelector('#connection').dataset.state",
            |v| v == "live",
        )
        .await;
    }

    async fn screenshot(&self, path: &Path) {
        let encoded = self
            .command(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(
                encoded
                    .as_str()
                    .unwrap_or_else(|| panic!("screenshot: {encoded}")),
            )
            .expect("base64");
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session makes chromedriver quit its Chromium.
        let _ = Command::new("curl")
            .args([
                "-s",
                "-m",
                "10",
                "-X",
                "DELETE",
                &format!("{}/session/{}", self.base, self.session),
            ])
            .stdout(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // Should the session not have ended, no Chromium of this profile survives.
        let _ = Command::new("pkill")
            .args(["-f", &self._profile.path().display().to_string()])
            .status();
    }
}

fn number(value: &Value) -> Option<f64> {
    value.as_str()?.split_whitespace().next()?.parse().ok()
}

fn require_browser() {
    assert!(
        Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
        "chromium and chromium-driver are not installed: `cargo xtask setup` installs them"
    );
}

/// An agent with history and a 1 s container interval, and a browser showing its
/// dashboard live.
async fn dashboard() -> (Agent, Browser) {
    require_browser();
    let agent = Agent::start("[monitoring]\nvm_metrics_interval = 1\nenable_history = true\n");
    agent.wait_for_cycles(2).await;
    let browser = Browser::start().await;
    browser.open(&agent.url("/")).await;
    browser.wait_live().await;
    (agent, browser)
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_updates_live_in_a_real_browser() {
    let (_agent, browser) = dashboard().await;

    // Numbers change as WebSocket messages arrive: the sample time moves on.
    let stamp = "return Number(document.querySelector('#updated').dataset.timestamp || 0)";
    let first = browser
        .wait_for("first sample", stamp, |v| v.as_u64() > Some(0))
        .await;
    browser
        .wait_for("a later sample", stamp, |v| v.as_u64() > first.as_u64())
        .await;

    // CPU shown on the page rises while the test keeps every CPU busy.
    let burner = common::CpuBurner::start();
    let cpu = browser
        .wait_for(
            "CPU under load",
            "return document.querySelector('#cpu-value').textContent",
            |v| number(v).is_some_and(|percent| percent >= 80.0),
        )
        .await;
    drop(burner);
    assert!(
        cpu.as_str().is_some_and(|text| text.ends_with('%')),
        "{cpu}"
    );

    browser
        .screenshot(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png"))
        .await;

    // Phone width: nothing wider than the screen (the table scrolls inside its panel).
    browser
        .command(
            reqwest::Method::POST,
            "/window/rect",
            json!({"width": 390, "height": 844}),
        )
        .await;
    let overflow = browser
        .wait_for(
            "phone layout",
            "return document.documentElement.scrollWidth - window.innerWidth",
            |v| v.as_i64().is_some(),
        )
        .await;
    assert!(
        overflow.as_i64() <= Some(0),
        "page overflows a phone screen by {overflow} px"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: creates cgroups"]
async fn a_new_container_appears_and_its_detail_view_opens() {
    let (_agent, browser) = dashboard().await;
    let mut cgroup = TestCgroup::new();
    cgroup.run("exec sleep 60", "");
    let short = cgroup.id[..12].to_owned();
    let find_row = format!(
        "return document.querySelector('#containers tbody').textContent.includes('{short}')"
    );
    browser
        .wait_for("new container row", &find_row, |v| v == true)
        .await;
    browser
        .run(&format!(
            "document.querySelector('tr[data-id=\"{}\"]').click()",
            cgroup.id
        ))
        .await;
    browser
        .wait_for(
            "detail view",
            "return document.querySelector('#detail-body').textContent",
            |v| v.as_str().is_some_and(|text| text.contains("working set")),
        )
        .await;
    // An OOM kill in the open container shows in its detail as it happens.
    cgroup.write(
        "memory",
        "memory.limit_in_bytes",
        &(64u64 << 20).to_string(),
    );
    cgroup.run(
        "dd if=/dev/zero of=/dev/null bs=128M count=1; exec sleep 60",
        "",
    );
    browser
        .wait_for(
            "the OOM kill in the detail view",
            "return document.querySelector('#detail-body .oom-kills').textContent",
            |v| {
                v.as_str()
                    .is_some_and(|text| text.contains("dd") && text.contains("memcg"))
            },
        )
        .await;
    // Search filters the table.
    let filter = "const s = document.querySelector('#search'); s.value = 'no-such-container'; \
                  s.dispatchEvent(new Event('input')); return document.querySelector('#containers tbody').textContent";
    assert!(
        browser
            .run(filter)
            .await
            .as_str()
            .is_some_and(|text| text.contains("no containers"))
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: runs a KVM guest"]
async fn a_vm_appears_and_its_detail_shows_per_vcpu_bars_and_steal() {
    let _serial = horcrux_test_support::vm::serial();
    let qemu = horcrux_test_support::vm::Qemu::kvm(
        "hx-dashboard",
        horcrux_test_support::vm::HALT,
        2,
        true,
    );
    let (_agent, browser) = dashboard().await;
    browser
        .wait_for(
            "the VM's row",
            "return document.querySelector('#vms tbody').textContent",
            |v| v.as_str().is_some_and(|text| text.contains("hx-dashboard")),
        )
        .await;
    browser
        .run("document.querySelector('#vms tr[data-id=\"hx-dashboard\"]').click()")
        .await;
    // Two halting vCPUs (no CPU taken from the other tests): a bar each, sized.
    let widths = browser
        .wait_for(
            "per-vCPU bars",
            "return [...document.querySelectorAll('#detail-body .vcpu .used')].map((bar) => bar.style.width)",
            |v| {
                v.as_array().is_some_and(|bars| {
                    bars.len() == 2 && bars.iter().all(|w| w.as_str().is_some_and(|w| w.ends_with('%')))
                })
            },
        )
        .await;
    let detail = browser
        .run("return document.querySelector('#detail-body').textContent")
        .await;
    let text = detail.as_str().unwrap_or_default();
    for wanted in ["vCPU 0", "vCPU 1", "steal", "exits", "host RSS"] {
        assert!(
            text.contains(wanted),
            "no {wanted:?} in the VM detail: {text}"
        );
    }
    assert!(
        browser
            .run("return document.querySelector('#detail-title').textContent")
            .await
            .as_str()
            .is_some_and(|title| title.contains("qemu")),
        "{widths}"
    );
    drop(qemu);
    browser
        .wait_for(
            "the VM's row to go",
            "return document.querySelector('#vms tbody').textContent",
            |v| v.as_str().is_some_and(|text| text.contains("no VMs")),
        )
        .await;
}

/// Serves one HTML page from another origin (a second loopback port), as any web
/// page a browser on the node might load.
/// After a restart, the charts start with the history from before it (read back
/// from the history file).
#[tokio::test(flavor = "multi_thread")]
async fn charts_show_the_history_from_before_a_restart() {
    require_browser();
    let storage = tempfile::tempdir().expect("storage");
    let config = format!(
        "[monitoring]\nenable_history = true\n[storage]\npath = \"{}\"\n",
        storage.path().display()
    );
    let mut first = Agent::start(&config);
    first.wait_for_cycles(8).await;
    assert!(first.terminate(), "clean exit");
    let restarted_at = horcrux_agent::clock::unix_seconds();
    let agent = Agent::start(&config);
    agent.wait_for_cycles(1).await;
    let browser = Browser::start().await;
    browser.open(&agent.url("/")).await;
    browser.wait_live().await;
    let earlier = browser
        .wait_for(
            "points from before the restart",
            &format!("return state.series.memory.filter((p) => p.t < {restarted_at}).length"),
            |v| v.as_u64() >= Some(6),
        )
        .await;
    assert!(earlier.as_u64() >= Some(6), "{earlier}");
}

/// A remote_write target whose receiver is down shows as failing, with its backlog.
#[tokio::test(flavor = "multi_thread")]
async fn the_header_shows_a_failing_export_target() {
    require_browser();
    let storage = tempfile::tempdir().expect("storage");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("port");
    let agent = Agent::start(&format!(
        "[storage]\npath = \"{}\"\n[[remote_write]]\nname = \"central\"\n\
         url = \"http://{closed}/api/v1/write\"\ninterval = 1\n",
        storage.path().display()
    ));
    agent.wait_for_cycles(2).await;
    let browser = Browser::start().await;
    browser.open(&agent.url("/")).await;
    browser.wait_live().await;
    let text = browser
        .wait_for(
            "a failing export",
            "const e = document.querySelector('#export'); \
             return e.hidden || e.dataset.failing !== 'true' ? null : e.textContent",
            |v| v.as_str().is_some_and(|text| text.contains("queued")),
        )
        .await;
    let text = text.as_str().unwrap_or_default();
    assert!(
        text.starts_with("export: central: failing (") && text.contains("samples queued"),
        "{text}"
    );
}

async fn serve_page(html: String) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).await;
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
                html.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn with_auth_on_the_dashboard_logs_in_once_and_other_sites_cannot_read_the_socket() {
    require_browser();
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let token = dir.path().join("token");
    std::fs::write(&token, "dashboard-token-77").expect("token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let agent = Agent::start(&format!(
        "[server]\nbearer_token_file = {:?}\n",
        token.display().to_string()
    ));
    let browser = Browser::start().await;
    // The token given once: the agent answers with a session cookie, and the page
    // goes live over the WebSocket with it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::Client::new()
        .get(agent.url("/readyz"))
        .bearer_auth("dashboard-token-77")
        .send()
        .await
        .map_or(true, |response| response.status() != 200)
    {
        assert!(Instant::now() < deadline, "agent never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser.open(&agent.url("/?token=dashboard-token-77")).await;
    browser.wait_live().await;
    // A page from another origin tries to read the agent's WebSocket (the browser
    // even sends the session cookie: 127.0.0.1 on another port is the same site).
    let page = format!(
        "<!doctype html><title>waiting</title><script>\
         const ws = new WebSocket('ws://{}/ws');\
         ws.onopen = () => {{ document.title = 'open'; }};\
         ws.onmessage = () => {{ document.title = 'read'; }};\
         ws.onerror = () => {{ if (document.title === 'waiting') document.title = 'refused'; }};\
         ws.onclose = () => {{ if (document.title === 'waiting') document.title = 'refused'; }};\
         </script>",
        agent.addr
    );
    let port = serve_page(page).await;
    browser.open(&format!("http://127.0.0.1:{port}/")).await;
    let title = browser
        .wait_for("cross-site socket", "return document.title", |v| {
            v != "waiting"
        })
        .await;
    assert_eq!(title, "refused");
}
