//! `cargo xtask guest-test [--kernel 6.1|backports|all]` (root): the mainstream host,
//! for real. A Debian bookworm guest (systemd as PID 1, pure cgroup v2) boots under
//! QEMU with Debian's own kernel packages, and `tests/guest/suite.sh` runs inside it:
//! it installs the release agent with `packaging/horcrux-agent.service` as the README
//! documents and checks the service, its sandbox, and its figures against the
//! guest kernel's own counters.
//!
//! - Kernels: bookworm's `linux-image-amd64` (6.1) and bookworm-backports' (fetched
//!   with a throwaway apt configuration; the system's sources are left alone),
//!   unpacked with `dpkg-deb -x`; a busybox initramfs loads the modules the root
//!   filesystem needs.
//! - Root filesystem: `mmdebstrap --variant=minbase` plus systemd and the suite's
//!   tools, made into an ext4 image with `mke2fs -d` (no loop device). Kernels and
//!   image are cached under [`cache_dir`], keyed by their inputs, so a second run
//!   on the same machine boots at once.
//! - The agent, the unit and the suite reach the guest over a read-only 9p share;
//!   results come back over a virtio-serial port, one `ok`/`not ok` line a check.
//! - Acceleration: `/dev/kvm` is tried with a short boot probe and used only if the
//!   guest gets through; otherwise TCG (this machine's KVM is PVM, which cannot run
//!   Debian's kernels).

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{Result, cargo, ensure_packages, is_root, status, stdout_of, workspace_root};

/// What building and booting the guest needs on the host.
pub const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "mmdebstrap",
    "e2fsprogs",
    "cpio",
    "kmod",
    "busybox-static",
    "xz-utils",
];

/// The guest's packages besides minbase: systemd as PID 1 and what the suite runs.
const GUEST_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "kmod",
    "iproute2",
    "procps",
    "curl",
    "jq",
    "stress-ng",
];

/// Changes whenever the image recipe below changes, so a cached image is rebuilt.
const RECIPE: &str = "guest-image-4";
const MIRROR: &str = "http://deb.debian.org/debian";
/// The longest a boot with the whole suite may take under TCG.
const BOOT_TIMEOUT: Duration = Duration::from_secs(20 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// bookworm's `linux-image-amd64` (6.1).
    Bookworm,
    /// bookworm-backports' `linux-image-amd64` (6.12 when measured).
    Backports,
}

impl Kernel {
    fn suite(self) -> &'static str {
        match self {
            Self::Bookworm => "bookworm",
            Self::Backports => "bookworm-backports",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Bookworm => "6.1 (bookworm)",
            Self::Backports => "backports",
        }
    }
}

/// `--kernel 6.1|backports|all` (default 6.1).
pub fn parse_kernels(args: &[String]) -> Result<Vec<Kernel>> {
    let choice = match args {
        [] => "6.1",
        [flag, value] if flag == "--kernel" => value.as_str(),
        _ => return Err("guest-test takes [--kernel 6.1|backports|all]".into()),
    };
    match choice {
        "6.1" | "bookworm" => Ok(vec![Kernel::Bookworm]),
        "backports" => Ok(vec![Kernel::Backports]),
        "all" => Ok(vec![Kernel::Bookworm, Kernel::Backports]),
        other => Err(format!("unknown kernel {other:?}: 6.1, backports or all")),
    }
}

/// Where kernels and images are kept between runs: outside the checkout, so a CI
/// run on a fresh clone of the same machine reuses them.
fn cache_dir() -> PathBuf {
    std::env::var_os("HORCRUX_GUEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/horcrux-guest"))
}

pub fn run(kernels: &[Kernel]) -> Result {
    if !is_root() {
        return Err("guest-test builds a root filesystem and boots QEMU: run it as root".into());
    }
    ensure_packages(PACKAGES)?;
    cargo(&["build", "--release", "-p", "horcrux-agent"])?;
    let cache = cache_dir();
    create_dir(&cache)?;
    let mut fetched = Vec::new();
    for &kernel in kernels {
        fetched.push((kernel, fetch_kernel(kernel, &cache)?));
    }
    let image = root_image(&cache, &fetched)?;
    let share = prepare_share()?;
    let mut failures = Vec::new();
    for (kernel, files) in &fetched {
        let started = Instant::now();
        let outcome = boot_again_after_an_early_panic(files, &image, &share);
        let seconds = started.elapsed().as_secs();
        match outcome {
            Ok(report) => {
                println!("{report}");
                let failed = report
                    .lines()
                    .filter(|line| line.starts_with("not ok"))
                    .count();
                let passed = report.lines().filter(|line| line.starts_with("ok")).count();
                let complete = report.lines().any(|line| line == "done");
                let verdict = if failed == 0 && complete {
                    "PASS"
                } else {
                    "FAIL"
                };
                println!(
                    "guest-test {} ({}): {verdict}: {passed} passed, {failed} failed{} in {seconds} s",
                    kernel.label(),
                    files.version,
                    if complete { "" } else { ", suite incomplete" }
                );
                if verdict == "FAIL" {
                    failures.push(kernel.label());
                }
            }
            Err(error) => {
                println!("guest-test {}: FAIL: {error}", kernel.label());
                failures.push(kernel.label());
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("failed on {}", failures.join(", ")))
    }
}

/// Modules the VM tests' guest loads: its disk, its NIC, and the balloon.
const VM_MODULES: &[&str] = &["virtio_pci", "virtio_blk", "virtio_net", "virtio_balloon"];

/// `cargo xtask vm-image` (root): the kernel and workload initramfs the VM tests
/// (`tests/vms.rs`) boot, bookworm's kernel with `tests/vm/guest-init.sh` as
/// `/init`. Kept in the cache and linked as `target/vm-image/{vmlinuz,initrd.img}`,
/// where the tests look.
pub fn vm_image() -> Result<PathBuf> {
    if !is_root() {
        return Err("vm-image unpacks a kernel package: run it as root".into());
    }
    ensure_packages(PACKAGES)?;
    let cache = cache_dir();
    create_dir(&cache)?;
    let kernel = fetch_kernel(Kernel::Bookworm, &cache)?;
    let script = std::fs::read_to_string(workspace_root().join("tests/vm/guest-init.sh"))
        .map_err(|error| format!("reading tests/vm/guest-init.sh: {error}"))?;
    let mut hasher = DefaultHasher::new();
    (&script, VM_MODULES).hash(&mut hasher);
    let initrd = kernel
        .tree
        .join(format!("vm-initrd-{:016x}.img", hasher.finish()));
    if !initrd.exists() {
        build_busybox_initramfs(
            &kernel.tree,
            &kernel.version,
            VM_MODULES,
            &initrd,
            |modules| script.replace("@MODULES@", modules),
        )?;
    }
    let target = workspace_root().join("target/vm-image");
    create_dir(&target)?;
    for (link, file) in [("vmlinuz", &kernel.vmlinuz), ("initrd.img", &initrd)] {
        let link = target.join(link);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(file, &link)
            .map_err(|error| format!("linking {}: {error}", link.display()))?;
    }
    Ok(target)
}

/// One kernel package unpacked: its image, its modules and the initramfs made for it.
struct KernelFiles {
    version: String,
    vmlinuz: PathBuf,
    /// The unpacked package (`lib/modules/VERSION` inside).
    tree: PathBuf,
    initrd: PathBuf,
}

/// Downloads (once) and unpacks `kernel`'s current package; builds its initramfs.
fn fetch_kernel(kernel: Kernel, cache: &Path) -> Result<KernelFiles> {
    let apt_dir = cache.join(format!("apt-{}", kernel.suite()));
    let sources = apt_dir.join("sources.list");
    create_dir(&apt_dir.join("lists/partial"))?;
    create_dir(&apt_dir.join("archives/partial"))?;
    std::fs::write(&sources, format!("deb {MIRROR} {} main\n", kernel.suite()))
        .map_err(|error| format!("writing {}: {error}", sources.display()))?;
    // A throwaway configuration: only this suite, lists and caches of its own.
    let apt_options = |command: &mut Command| {
        command.args([
            "-o",
            &format!("Dir::Etc::SourceList={}", sources.display()),
            "-o",
            "Dir::Etc::SourceParts=/dev/null",
            "-o",
            &format!("Dir::State::Lists={}", apt_dir.join("lists").display()),
            "-o",
            &format!("Dir::Cache={}", apt_dir.display()),
            "-o",
            &format!(
                "Dir::Cache::Archives={}",
                apt_dir.join("archives").display()
            ),
        ]);
    };
    let mut update = Command::new("apt-get");
    apt_options(&mut update);
    status(update.args(["-q", "update"]))?;
    let mut depends = Command::new("apt-cache");
    apt_options(&mut depends);
    let depends = stdout_of(depends.args(["depends", "linux-image-amd64"]))?;
    let package = depends
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: "))
        .find(|name| name.starts_with("linux-image-") && !name.contains("unsigned"))
        .ok_or_else(|| format!("no kernel package in: {depends}"))?
        .to_owned();
    let tree = cache.join(format!("kernel-{package}"));
    if !tree.join("boot").exists() {
        let download = cache.join(format!("download-{package}"));
        create_dir(&download)?;
        let mut get = Command::new("apt-get");
        apt_options(&mut get);
        status(
            get.args(["-q", "download", &package])
                .current_dir(&download),
        )?;
        let deb = single_file(&download, ".deb")?;
        let unpacking = cache.join(format!("unpacking-{package}"));
        let _ = std::fs::remove_dir_all(&unpacking);
        status(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacking))?;
        rename(&unpacking, &tree)?;
    }
    let vmlinuz = std::fs::read_dir(tree.join("boot"))
        .map_err(|error| format!("reading the kernel package: {error}"))?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or("no vmlinuz in the kernel package")?;
    let version = vmlinuz
        .file_name()
        .map(|name| {
            name.to_string_lossy()
                .trim_start_matches("vmlinuz-")
                .to_owned()
        })
        .ok_or("vmlinuz without a version")?;
    status(Command::new("depmod").arg("-b").arg(&tree).arg(&version))?;
    let initrd = tree.join("initrd.img");
    if !initrd.exists() {
        build_initramfs(&tree, &version, &initrd)?;
    }
    Ok(KernelFiles {
        version,
        vmlinuz,
        tree,
        initrd,
    })
}

/// The modules needed to mount the root filesystem, in load order.
/// (`crc32c` is what ext4 asks the crypto API for at mount, by module alias.)
const ROOT_MODULES: &[&str] = &["virtio_pci", "virtio_blk", "crc32c", "ext4"];

/// The initramfs of the systemd guest: loads the root filesystem's modules, waits
/// for `/dev/vda`, mounts it and hands over to systemd.
fn build_initramfs(tree: &Path, version: &str, initrd: &Path) -> Result {
    build_busybox_initramfs(tree, version, ROOT_MODULES, initrd, |modules| {
        format!(
            "#!/bin/busybox sh\n\
             /bin/busybox --install -s /bin\n\
             mount -t proc proc /proc\n\
             mount -t sysfs sysfs /sys\n\
             mount -t devtmpfs devtmpfs /dev\n\
             for module in {modules}; do insmod /modules/$module; done\n\
             tries=0\n\
             while [ ! -b /dev/vda ] && [ $tries -lt 300 ]; do sleep 0.1; tries=$((tries+1)); done\n\
             mount -t ext4 /dev/vda /root || {{ echo 'initramfs: no root filesystem'; poweroff -f; }}\n\
             umount /proc /sys\n\
             mount --move /dev /root/dev\n\
             exec switch_root /root /sbin/init\n"
        )
    })
}

/// A busybox initramfs with `modules` (and what they depend on) under `/modules`;
/// `init` gets their names in load order and returns the `/init` script.
fn build_busybox_initramfs(
    tree: &Path,
    version: &str,
    modules: &[&str],
    initrd: &Path,
    init: impl Fn(&str) -> String,
) -> Result {
    let staging = initrd.with_extension("staging");
    let _ = std::fs::remove_dir_all(&staging);
    for dir in ["bin", "dev", "proc", "sys", "root", "modules"] {
        create_dir(&staging.join(dir))?;
    }
    std::fs::copy("/bin/busybox", staging.join("bin/busybox"))
        .map_err(|error| format!("copying busybox: {error}"))?;
    let depends = stdout_of(
        Command::new("modprobe")
            .arg("-d")
            .arg(tree)
            .args(["-S", version, "-a", "--show-depends"])
            .args(modules),
    )?;
    let mut order = Vec::new();
    for line in depends.lines() {
        let Some(module) = line.strip_prefix("insmod ") else {
            continue;
        };
        let module = Path::new(module.split_whitespace().next().unwrap_or(module));
        // modprobe prints paths below the base directory; keep each module once.
        let source = if module.starts_with(tree) {
            module.to_path_buf()
        } else {
            tree.join(module.strip_prefix("/").unwrap_or(module))
        };
        let name = source
            .file_name()
            .map(|name| name.to_string_lossy().trim_end_matches(".xz").to_owned())
            .ok_or("module without a name")?;
        if order.contains(&name) {
            continue;
        }
        let target = staging.join("modules").join(&name);
        if source.extension().is_some_and(|ext| ext == "xz") {
            let output = Command::new("xz")
                .arg("-dc")
                .arg(&source)
                .output()
                .map_err(|error| format!("xz: {error}"))?;
            std::fs::write(&target, output.stdout)
                .map_err(|error| format!("writing {}: {error}", target.display()))?;
        } else {
            std::fs::copy(&source, &target)
                .map_err(|error| format!("copying {}: {error}", source.display()))?;
        }
        order.push(name);
    }
    let init = init(&order.join(" "));
    write_file(&staging.join("init"), &init, 0o755)?;
    let archive = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet | gzip -1")
        .current_dir(&staging)
        .output()
        .map_err(|error| format!("cpio: {error}"))?;
    if !archive.status.success() {
        return Err("building the initramfs failed".into());
    }
    std::fs::write(initrd, archive.stdout)
        .map_err(|error| format!("writing {}: {error}", initrd.display()))?;
    let _ = std::fs::remove_dir_all(&staging);
    Ok(())
}

/// The guest's root filesystem image with every fetched kernel's modules: built
/// once per recipe and kernel set, then reused (QEMU opens it with `snapshot=on`).
fn root_image(cache: &Path, kernels: &[(Kernel, KernelFiles)]) -> Result<PathBuf> {
    let mut hasher = DefaultHasher::new();
    (RECIPE, GUEST_PACKAGES).hash(&mut hasher);
    let rootfs = cache.join(format!("rootfs-{:016x}", hasher.finish()));
    if !rootfs.join("etc/os-release").exists() {
        let building = rootfs.with_extension("building");
        let _ = std::fs::remove_dir_all(&building);
        let started = Instant::now();
        status(
            Command::new("mmdebstrap")
                .args(["--variant=minbase", "--quiet"])
                .arg(format!("--include={}", GUEST_PACKAGES.join(",")))
                .args(["bookworm"])
                .arg(&building)
                .arg(MIRROR),
        )?;
        configure_rootfs(&building)?;
        rename(&building, &rootfs)?;
        eprintln!(
            "xtask: guest root filesystem built in {} s",
            started.elapsed().as_secs()
        );
    }
    let mut versions: Vec<&str> = kernels
        .iter()
        .map(|(_, files)| files.version.as_str())
        .collect();
    versions.sort_unstable();
    versions.hash(&mut hasher);
    let image = cache.join(format!("root-{:016x}.img", hasher.finish()));
    if !image.exists() {
        for (_, files) in kernels {
            let modules = rootfs.join("lib/modules").join(&files.version);
            if !modules.exists() {
                create_dir(&rootfs.join("lib/modules"))?;
                status(
                    Command::new("cp")
                        .arg("-a")
                        .arg(files.tree.join("lib/modules").join(&files.version))
                        .arg(&modules),
                )?;
            }
        }
        let building = image.with_extension("building");
        let _ = std::fs::remove_file(&building);
        status(
            Command::new("mke2fs")
                .args(["-q", "-t", "ext4", "-L", "root", "-d"])
                .arg(&rootfs)
                .arg(&building)
                .arg("2G"),
        )?;
        rename(&building, &image)?;
        prune(cache, &[&rootfs, &image])?;
    }
    Ok(image)
}

/// Removes root filesystems and images of earlier recipes or kernel sets.
fn prune(cache: &Path, keep: &[&Path]) -> Result {
    let entries = std::fs::read_dir(cache)
        .map_err(|error| format!("reading {}: {error}", cache.display()))?;
    for path in entries.flatten().map(|entry| entry.path()) {
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned());
        let built =
            name.is_some_and(|name| name.starts_with("rootfs-") || name.starts_with("root-"));
        if built && !keep.contains(&path.as_path()) {
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(|error| format!("removing {}: {error}", path.display()))?;
        }
    }
    Ok(())
}

/// What the guest needs besides its packages: the suite service that mounts the
/// share, runs the suite and powers off; a hostname; accounting on for every unit
/// (`io.stat` and `cpu.stat` for the scopes the suite makes).
fn configure_rootfs(root: &Path) -> Result {
    write_file(&root.join("etc/hostname"), "horcrux-guest\n", 0o644)?;
    write_file(
        &root.join("etc/systemd/system/horcrux-guest-suite.service"),
        "[Unit]\n\
         Description=Horcrux guest suite\n\
         After=multi-user.target\n\
         SuccessAction=poweroff-force\n\
         FailureAction=poweroff-force\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         ExecStartPre=/bin/mkdir -p /mnt/horcrux\n\
         ExecStartPre=/bin/mount -t 9p -o trans=virtio,version=9p2000.L,ro horcrux /mnt/horcrux\n\
         ExecStart=/bin/sh /mnt/horcrux/suite.sh\n\
         StandardOutput=journal+console\n\
         StandardError=journal+console\n\
         TimeoutStartSec=infinity\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        0o644,
    )?;
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    create_dir(&wants)?;
    let link = wants.join("horcrux-guest-suite.service");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("../horcrux-guest-suite.service", &link)
        .map_err(|error| format!("enabling the suite service: {error}"))?;
    write_file(
        &root.join("etc/systemd/system.conf.d/accounting.conf"),
        "[Manager]\nDefaultCPUAccounting=yes\nDefaultIOAccounting=yes\nDefaultMemoryAccounting=yes\n",
        0o644,
    )?;
    Ok(())
}

/// The read-only share the guest mounts: the release agent, the unit as shipped,
/// and the suite.
fn prepare_share() -> Result<PathBuf> {
    let root = workspace_root();
    let share = root.join("target/guest-share");
    let _ = std::fs::remove_dir_all(&share);
    create_dir(&share)?;
    for (from, to) in [
        ("target/release/horcrux-agent", "horcrux-agent"),
        ("packaging/horcrux-agent.service", "horcrux-agent.service"),
        ("tests/guest/suite.sh", "suite.sh"),
    ] {
        std::fs::copy(root.join(from), share.join(to))
            .map_err(|error| format!("copying {from}: {error}"))?;
    }
    Ok(share)
}

struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where a boot of `kernel` leaves the suite's results and the console log.
fn run_files(kernel: &KernelFiles) -> Result<(PathBuf, PathBuf)> {
    let run_dir = workspace_root().join("target/guest-run");
    create_dir(&run_dir)?;
    Ok((
        run_dir.join(format!("results-{}.txt", kernel.version)),
        run_dir.join(format!("console-{}.log", kernel.version)),
    ))
}

/// [`boot`], and once more when the guest kernel panicked before the suite reported
/// anything, so before any of ours ran: under TCG, Debian's 6.12 once died at boot
/// patching its own code (`Oops: int3` in `sched_clock_cpu`, just after
/// `sched_clock: Marking stable`). A panic once the suite has started still fails.
fn boot_again_after_an_early_panic(
    kernel: &KernelFiles,
    image: &Path,
    share: &Path,
) -> Result<String> {
    let report = boot(kernel, image, share)?;
    let (_, console) = run_files(kernel)?;
    let panicked =
        std::fs::read_to_string(&console).is_ok_and(|text| text.contains("Kernel panic"));
    if !report.trim().is_empty() || !panicked {
        return Ok(report);
    }
    let kept = console.with_extension("panic.log");
    rename(&console, &kept)?;
    eprintln!(
        "xtask: the guest kernel panicked before the suite started (console: {}); booting again",
        kept.display()
    );
    boot(kernel, image, share)
}

/// Boots the guest with `kernel` and returns what the suite reported.
fn boot(kernel: &KernelFiles, image: &Path, share: &Path) -> Result<String> {
    let (results, console) = run_files(kernel)?;
    let _ = std::fs::remove_file(&results);
    let accel = if kvm_boots(kernel, image) {
        "kvm"
    } else {
        "tcg"
    };
    eprintln!(
        "xtask: booting {} under {accel} (console: {})",
        kernel.version,
        console.display()
    );
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(guest_args(kernel, image, accel, &console))
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=horcrux,security_model=none,readonly=on",
            share.display()
        ))
        .args(["-device", "virtio-serial-pci", "-chardev"])
        .arg(format!("file,id=results,path={}", results.display()))
        .args(["-device", "virtserialport,chardev=results,name=results"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let mut running = Qemu(
        qemu.spawn()
            .map_err(|error| format!("starting qemu-system-x86_64: {error}"))?,
    );
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        if let Ok(Some(_)) = running.0.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no poweroff within {} min (console: {})",
                BOOT_TIMEOUT.as_secs() / 60,
                console.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut report = String::new();
    std::fs::File::open(&results)
        .and_then(|mut file| file.read_to_string(&mut report))
        .map_err(|error| format!("no results ({error}); console: {}", console.display()))?;
    Ok(report)
}

fn guest_args(kernel: &KernelFiles, image: &Path, accel: &str, console: &Path) -> Vec<String> {
    vec![
        "-accel".into(),
        accel.into(),
        "-m".into(),
        "2048".into(),
        "-smp".into(),
        "2".into(),
        "-kernel".into(),
        kernel.vmlinuz.display().to_string(),
        "-initrd".into(),
        kernel.initrd.display().to_string(),
        "-append".into(),
        "console=ttyS0 panic=-1 systemd.show_status=0".into(),
        "-drive".into(),
        format!("file={},format=raw,if=virtio,snapshot=on", image.display()),
        "-display".into(),
        "none".into(),
        "-serial".into(),
        format!("file:{}", console.display()),
        "-no-reboot".into(),
        "-nic".into(),
        "none".into(),
        "-vga".into(),
        "none".into(),
    ]
}

/// Whether `/dev/kvm` boots this kernel: a short boot with the console watched for
/// the kernel's own banner of userspace starting. PVM's KVM (this machine) hangs or
/// fails on Debian's kernels, so anything short of that means TCG.
fn kvm_boots(kernel: &KernelFiles, image: &Path) -> bool {
    if !Path::new("/dev/kvm").exists() {
        return false;
    }
    let console = std::env::temp_dir().join("horcrux-kvm-probe.log");
    let _ = std::fs::remove_file(&console);
    let Ok(child) = Command::new("qemu-system-x86_64")
        .args(guest_args(kernel, image, "kvm", &console))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let _probe = Qemu(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        if text.contains("Run /init as init process") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    false
}

fn single_file(dir: &Path, suffix: &str) -> Result<PathBuf> {
    std::fs::read_dir(dir)
        .map_err(|error| format!("reading {}: {error}", dir.display()))?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.to_string_lossy().ends_with(suffix))
        .ok_or_else(|| format!("no {suffix} file in {}", dir.display()))
}

fn create_dir(dir: &Path) -> Result {
    std::fs::create_dir_all(dir).map_err(|error| format!("creating {}: {error}", dir.display()))
}

fn rename(from: &Path, to: &Path) -> Result {
    std::fs::rename(from, to)
        .map_err(|error| format!("moving {} to {}: {error}", from.display(), to.display()))
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        create_dir(parent)?;
    }
    std::fs::write(path, text).map_err(|error| format!("writing {}: {error}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|error| format!("chmod {}: {error}", path.display()))
}
