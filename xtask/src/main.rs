//! Developer tasks: `cargo xtask <setup|build-ebpf|build|run|test|bench|bench-ebpf>`.
//!
//! `setup` makes a fresh machine able to build and test Horcrux: the nightly
//! toolchain's `rust-src`, `bpf-linker` built against that toolchain's own libLLVM,
//! and the Debian packages the tests compare against. Every step checks first, so
//! running it again costs a few seconds.

mod bench_churn;
mod bench_ebpf;
mod bench_http;
mod guest;

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// What the tests run or compare against: `free`/`uptime` (procps), `ip` (iproute2),
/// `df` (coreutils), real container runtimes and a busybox-static image root,
/// Prometheus and promtool, Chromium and chromedriver for the dashboard test,
/// bpftool (an independent BTF reader) and taskset (util-linux) for the eBPF tests,
/// bindfs (a FUSE daemon to stop) for the hung-mount test, openssl (a test CA) and
/// systemd (`systemd-analyze` checks the unit) for the network-security tests.
const TEST_PACKAGES: &[&str] = &[
    "bpftool",
    "util-linux",
    "procps",
    "iproute2",
    "coreutils",
    "python3",
    "busybox-static",
    "docker.io",
    "podman",
    "qemu-system-x86",
    "libvirt-daemon-system",
    "libvirt-daemon-system-sysv",
    "libvirt-clients",
    "runc",
    "lxc",
    "prometheus",
    "victoria-metrics",
    "chromium",
    "chromium-driver",
    "curl",
    "bindfs",
    "openssl",
    "systemd",
];
/// The Python package the OTLP test receiver decodes requests with.
const OTLP_PROTO: &str = "opentelemetry-proto==1.45.2";
/// What the benchmarks run: node_exporter (the collection-cost reference); perf
/// (sched pipe), fio, hackbench (rt-tests) and the libbpf-tools references
/// (runqlat, biolatency) for the eBPF overhead.
const BENCH_PACKAGES: &[&str] = &[
    "prometheus-node-exporter",
    "linux-perf",
    "fio",
    "rt-tests",
    "libbpf-tools",
    "curl",
];
/// Debian's hook that lets the installer start services; "101" forbids it. The tests
/// start the daemons they need themselves, privately, and stop them.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

type Result<T = ()> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let mut args = env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let outcome = match task.as_str() {
        "setup" => setup(),
        "build-ebpf" => ensure_toolchain().and_then(|()| build_ebpf()),
        "build" => {
            ensure_toolchain().and_then(|()| cargo(&["build", "--release", "-p", "horcrux-agent"]))
        }
        "run" => ensure_toolchain().and_then(|()| run(&rest)),
        "test" => setup().and_then(|()| test(&rest)),
        "bless" => bless(),
        "guest-test" => guest::parse_kernels(&rest).and_then(|kernels| guest::run(&kernels)),
        "vm-image" => guest::vm_image().map(|dir| println!("{}", dir.display())),
        "bench" => setup()
            .and_then(|()| ensure_packages(BENCH_PACKAGES))
            .and_then(|()| cargo(&["bench", "-p", "horcrux-agent"])),
        "bench-ebpf" => setup()
            .and_then(|()| ensure_packages(BENCH_PACKAGES))
            .and_then(|()| cargo(&["build", "--release", "-p", "horcrux-agent"]))
            .and_then(|()| {
                let rounds = rest.first().map(|rounds| rounds.parse::<usize>());
                match rounds {
                    None => bench_ebpf::run(bench_ebpf::DEFAULT_ROUNDS),
                    Some(Ok(rounds)) if rounds > 0 => bench_ebpf::run(rounds),
                    Some(_) => Err("bench-ebpf takes a number of rounds (default 7)".into()),
                }
            }),
        "bench-http" => setup()
            .and_then(|()| ensure_packages(&["wrk", "python3-websocket", "openssl"]))
            .and_then(|()| cargo(&["build", "--release", "-p", "horcrux-agent"]))
            .and_then(|()| bench_http::run()),
        "bench-churn" => setup()
            .and_then(|()| cargo(&["build", "--release", "-p", "horcrux-agent"]))
            .and_then(|()| {
                let number = |index: usize, default: u64| match rest.get(index) {
                    None => Ok(default),
                    Some(text) => text
                        .parse::<u64>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| "bench-churn takes MINUTES and CONTAINERS".to_owned()),
                };
                bench_churn::run(
                    number(0, bench_churn::DEFAULT_MINUTES)?,
                    number(1, bench_churn::DEFAULT_CONTAINERS as u64)? as usize,
                )
            }),
        _ => Err(usage()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask {task}: {message}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> String {
    "usage: cargo xtask <task>\n\
     \x20 setup        install rust-src (nightly), bpf-linker and the test packages (idempotent)\n\
     \x20 build-ebpf   build the eBPF programs\n\
     \x20 build        build the agent (release), eBPF programs embedded\n\
     \x20 run [-- ARGS] build and run the agent as root (via sudo when not root)\n\
     \x20 test         formatting, clippy, every test (unit, fixture, live, end-to-end, eBPF) and the guest suite\n\
     \x20 guest-test [--kernel 6.1|backports|all]  the suite in a QEMU guest: systemd, pure cgroup v2, Debian's kernels (root)\n\
     \x20 vm-image     the kernel and workload initramfs the VM tests boot (root; cargo xtask test builds it)\n\
     \x20 bless        regenerate docs/metrics.md and the golden outputs (tests/golden/) after a reviewed change\n\
     \x20 bench        collection-cycle benchmark\n\
     \x20 bench-ebpf [ROUNDS]  overhead of the eBPF programs vs detached and vs libbpf-tools (root)\n\
     \x20 bench-churn [MINUTES] [CONTAINERS]  the agent under a churning container population (root)\n\
     \x20 bench-http   requests/s and p99 of the HTTP surface, plain vs TLS + token, with WebSocket load"
        .into()
}

/// Rewrites the generated files their tests compare against: `docs/metrics.md` (from
/// the metric catalog) and `tests/golden/` (the outputs over the fixture trees).
fn bless() -> Result {
    status(
        Command::new(cargo_binary())
            .args(["test", "-p", "horcrux-agent", "--lib", "--test", "golden"])
            .env("HORCRUX_BLESS", "1")
            .current_dir(workspace_root()),
    )
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn status(command: &mut Command) -> Result {
    let shown = format!("{command:?}");
    eprintln!("xtask: running {shown}");
    match command.status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("{shown} failed with {status}")),
        Err(error) => Err(format!("{shown} could not start: {error}")),
    }
}

fn succeeds(command: &mut Command) -> bool {
    command.output().is_ok_and(|output| output.status.success())
}

fn stdout_of(command: &mut Command) -> Result<String> {
    let output = command
        .output()
        .map_err(|error| format!("{command:?} could not start: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn cargo_binary() -> OsString {
    env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

fn cargo(args: &[&str]) -> Result {
    status(
        Command::new(cargo_binary())
            .args(args)
            .current_dir(workspace_root()),
    )
}

fn nightly(tool: &str) -> Command {
    let mut command = Command::new("rustup");
    command.args(["run", "nightly", tool]);
    command
}

/// Everything the tests need: the eBPF toolchain, the Debian packages and the
/// OTLP test receiver's Python package.
fn setup() -> Result {
    ensure_toolchain()?;
    ensure_packages(TEST_PACKAGES)?;
    ensure_otlp_proto()
}

/// The official OpenTelemetry protobuf definitions for Python, which the OTLP
/// test's receiver decodes with, in `target/python` (not the system's Python).
fn ensure_otlp_proto() -> Result {
    let target = workspace_root().join("target/python");
    if target.join("opentelemetry/proto").exists() {
        return Ok(());
    }
    status(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg("--target")
            .arg(&target)
            .arg(OTLP_PROTO),
    )
}

/// What building the agent with its eBPF programs needs.
fn ensure_toolchain() -> Result {
    ensure_nightly()?;
    ensure_bpf_linker()
}

fn ensure_nightly() -> Result {
    if !succeeds(nightly("rustc").arg("--version")) {
        status(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let installed = stdout_of(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if !installed.lines().any(|line| line.starts_with("rust-src")) {
        status(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// bpf-linker links against the nightly toolchain's own libLLVM, so the LLVM it
/// uses always matches the rustc that emits the bitcode.
fn ensure_bpf_linker() -> Result {
    let version = nightly("bpf-linker").arg("--version").output();
    if version.is_ok_and(|out| {
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)
    }) {
        return Ok(());
    }
    let sysroot = stdout_of(nightly("rustc").args(["--print", "sysroot"]))?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let (library, major) = fs::read_dir(&lib_dir)
        .map_err(|error| format!("reading {}: {error}", lib_dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find_map(|path| {
            // libLLVM.so.<major>.<minor>-rust-<version>
            let name = path.file_name()?.to_str()?;
            let major = name
                .strip_prefix("libLLVM.so.")?
                .split(['.', '-'])
                .next()?
                .parse::<u32>()
                .ok()?;
            Some((path.clone(), major))
        })
        .ok_or_else(|| format!("no libLLVM.so.<version> in {}", lib_dir.display()))?;
    let prefix = workspace_root().join("target/llvm-prefix");
    let link = prefix.join("lib/libLLVM.so");
    fs::create_dir_all(prefix.join("lib"))
        .map_err(|error| format!("creating {}: {error}", prefix.display()))?;
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&library, &link)
        .map_err(|error| format!("linking {}: {error}", link.display()))?;
    status(
        Command::new(cargo_binary())
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--force",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )
}

fn ensure_packages(packages: &[&str]) -> Result {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| {
            !stdout_of(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
                .is_ok_and(|state| state.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        return Err(format!(
            "missing Debian packages {missing:?}: run `sudo cargo xtask setup` or install them"
        ));
    }
    status(Command::new("apt-get").arg("update").arg("-q"))?;
    let own_policy = !Path::new(POLICY_RC_D).exists();
    if own_policy {
        write_executable(
            POLICY_RC_D,
            "#!/bin/sh\n# horcrux xtask setup: install services, start none\nexit 101\n",
        )?;
    }
    let installed = status(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
    if own_policy {
        let _ = fs::remove_file(POLICY_RC_D);
    }
    installed
}

fn write_executable(path: &str, text: &str) -> Result {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, text)
        .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(0o755)))
        .map_err(|error| format!("writing {path}: {error}"))
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|text| {
        text.lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

fn build_ebpf() -> Result {
    status(
        nightly("cargo")
            .args(["build", "--release"])
            .current_dir(workspace_root().join("horcrux-ebpf"))
            .env_remove("RUSTUP_TOOLCHAIN"),
    )?;
    eprintln!("xtask: eBPF object at horcrux-ebpf/target/bpfel-unknown-none/release/horcrux-ebpf");
    Ok(())
}

fn run(args: &[String]) -> Result {
    cargo(&["build", "--release", "-p", "horcrux-agent"])?;
    let binary = workspace_root().join("target/release/horcrux-agent");
    let agent_args = args.strip_prefix(&["--".to_owned()]).unwrap_or(args);
    let mut command = if is_root() {
        Command::new(&binary)
    } else {
        // Loading eBPF programs and reading every cgroup need root.
        let mut sudo = Command::new("sudo");
        sudo.arg(&binary);
        sudo
    };
    status(command.args(agent_args))
}

fn test(args: &[String]) -> Result {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    let mut test = vec!["test", "--workspace"];
    test.extend(args.iter().map(String::as_str));
    // Root-only tests are `#[ignore = "needs root: …"]`: a non-root run lists them
    // as ignored; as root (CI) they run too, the VM tests with their guest image.
    if is_root() {
        guest::vm_image()?;
        if !args.iter().any(|arg| arg == "--") {
            test.push("--");
        }
        test.push("--include-ignored");
    }
    cargo(&test)?;
    // The systemd + cgroup v2 host, with bookworm's kernel (`guest-test --kernel all`
    // adds backports).
    if is_root() {
        guest::run(&[guest::Kernel::Bookworm])
    } else {
        eprintln!("xtask: the guest suite (cargo xtask guest-test) needs root: not run");
        Ok(())
    }
}
